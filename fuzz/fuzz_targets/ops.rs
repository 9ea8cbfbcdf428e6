//! Operation sequences against the reference model (`engine/tests/support/model.rs`, the
//! same model the model test uses): the fuzzer's bytes choose the operations, and every
//! result and every read must agree with the model.

#![no_main]

#[allow(dead_code)]
#[path = "../../engine/tests/support/model.rs"]
mod model;

use engram::storage::MemoryStore;
use engram::{Engram, IndexOptions, ManualClock, Options};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use model::Op;
use std::sync::Arc;

/// One operation read from the fuzzer's bytes, in the ranges the model's strategy draws
/// (two identities, three sessions, small ids and counts).
fn op(u: &mut Unstructured<'_>) -> Result<Op> {
    let who = u.choose_index(2)?;
    let session = u.choose_index(3)?;
    Ok(match u.choose_index(13)? {
        0 | 1 => {
            let texts = (0..1 + u.choose_index(3)?).map(|_| u.arbitrary()).collect::<Result<_>>()?;
            let head = if u.arbitrary()? { Some(u.int_in_range(-1..=1)?) } else { None };
            let idem = if u.arbitrary()? { Some(u.int_in_range(0..=3)?) } else { None };
            Op::Append { who, session, texts, head, idem }
        }
        2 => Op::Fork { who, source: session, back: u.int_in_range(0..=3)?, target: u.choose_index(3)? },
        3 => Op::DeleteSession { who, session },
        4 => {
            let ttl_s = if u.arbitrary()? { Some(u.int_in_range(1..=4)?) } else { None };
            let keep_last = if u.arbitrary()? { Some(u.int_in_range(1..=4)?) } else { None };
            Op::SetRetention { who, session, ttl_s, keep_last }
        }
        5 => Op::Advance { seconds: u.int_in_range(1..=3)? },
        6 => Op::Sweep,
        7 => {
            let session = if u.arbitrary()? { Some(session) } else { None };
            let pre = match u.choose_index(3)? {
                0 => None,
                1 => Some(None),
                _ => Some(Some(u.int_in_range(0..=3)?)),
            };
            Op::PutState { who, session, key: u.int_in_range(0..=1)?, value: u.arbitrary()?, pre }
        }
        8 => Op::PutMemory { who, id: u.int_in_range(0..=2)?, text: u.arbitrary()? },
        9 => Op::UpdateMemory { who, id: u.int_in_range(0..=2)?, text: u.arbitrary()? },
        10 => Op::DeleteMemory { who, id: u.int_in_range(0..=2)? },
        11 => Op::Forget { who },
        _ => Op::Reopen,
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < 64 {
        match op(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    let store = Arc::new(MemoryStore::new());
    let open = |clock: &Arc<ManualClock>| {
        // The model reads no index: leave them out, for speed.
        let index = IndexOptions { enabled: false, ..IndexOptions::default() };
        Engram::with_store(store.clone(), Options { index, ..model::options(clock) })
    };
    if let Err(e) = model::run(&open, ops) {
        panic!("Engram and the model disagree: {e}");
    }
});
