//! Both backends against a reference model (a sorted map per key space): seeded random
//! batches of puts, deletes and range deletes, snapshots kept while later writes land,
//! compactions (RocksDB: tombstones and range deletes reach the table files) and reopens.
//! Every get, scan (both directions, random bounds) and snapshot read must equal the model.

#[path = "../../engine/tests/support/rng.rs"]
#[allow(dead_code)]
mod rng;

use engram_storage::{Batch, Direction, MemoryStore, ReadView, RocksStore, Space, Store};
use std::collections::BTreeMap;

/// The model: per space (in `Space::ALL` order), key -> value.
type Model = [BTreeMap<Vec<u8>, Vec<u8>>; 3];

fn space_index(space: Space) -> usize {
    Space::ALL.iter().position(|s| *s == space).unwrap_or(0)
}

fn random_key(rng: &mut rng::Rng) -> Vec<u8> {
    // A small alphabet and short keys: shared prefixes, bounds that hit keys, and the
    // bytes 0x00 and 0xFF that sit at the ends of the order.
    const ALPHABET: [u8; 5] = [0x00, b'a', b'b', b'c', 0xFF];
    (0..1 + rng.below(4)).map(|_| ALPHABET[rng.below(5) as usize]).collect()
}

/// A random batch, applied to `model` as the store must apply it (in order).
fn random_batch(rng: &mut rng::Rng, model: &mut Model, serial: &mut u32) -> Batch {
    let mut batch = Batch::new();
    for _ in 0..1 + rng.below(12) {
        let space = Space::ALL[rng.below(3) as usize];
        let map = &mut model[space_index(space)];
        match rng.below(10) {
            0..=5 => {
                *serial += 1;
                let key = random_key(rng);
                let value = serial.to_be_bytes().repeat(1 + rng.below(3) as usize);
                map.insert(key.clone(), value.clone());
                batch.put(space, key, value);
            }
            6..=8 => {
                let key = random_key(rng);
                map.remove(&key);
                batch.delete(space, key);
            }
            _ => {
                let (a, b) = (random_key(rng), random_key(rng));
                let (start, end) = if a <= b { (a, b) } else { (b, a) };
                map.retain(|k, _| !(start <= *k && *k < end));
                batch.delete_range(space, start, end);
            }
        }
    }
    batch
}

/// Every read of `view` answers what `model` holds.
fn check(view: &dyn ReadView, model: &Model, rng: &mut rng::Rng, context: &str) {
    for space in Space::ALL {
        let map = &model[space_index(space)];
        let all: Vec<_> = view.scan(space, &[], None, Direction::Forward).collect::<Result<_, _>>().expect("scan");
        let expected: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(all, expected, "{context}: full scan of {space:?}");
        let reversed: Vec<_> = view.scan(space, &[], None, Direction::Reverse).collect::<Result<_, _>>().expect("scan");
        assert_eq!(
            reversed,
            expected.iter().rev().cloned().collect::<Vec<_>>(),
            "{context}: reverse scan of {space:?}"
        );
        for _ in 0..20 {
            let start = random_key(rng);
            let end = (rng.below(3) != 0).then(|| random_key(rng));
            let direction = if rng.below(2) == 0 { Direction::Forward } else { Direction::Reverse };
            let got: Vec<_> =
                view.scan(space, &start, end.as_deref(), direction).collect::<Result<_, _>>().expect("scan");
            let mut want: Vec<_> = map
                .iter()
                .filter(|(k, _)| **k >= start && end.as_ref().is_none_or(|e| *k < e))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if direction == Direction::Reverse {
                want.reverse();
            }
            assert_eq!(got, want, "{context}: {space:?} {start:?}..{end:?} {direction:?}");
            let key = random_key(rng);
            assert_eq!(view.get(space, &key).expect("get"), map.get(&key).cloned(), "{context}: get {key:?}");
        }
    }
}

/// Runs `steps` random batches on `store`, checking it and its snapshots against the
/// model; `reopen` (RocksDB) closes and reopens the store now and then.
fn run(mut store: Box<dyn Store>, rng: &mut rng::Rng, steps: usize, reopen: Option<&dyn Fn() -> Box<dyn Store>>) {
    let mut model: Model = Default::default();
    let mut serial = 0;
    for step in 0..steps {
        // A snapshot taken now must keep answering for this state after the next writes.
        let kept = (rng.below(4) == 0).then(|| model.clone());
        let snapshot = kept.as_ref().map(|_| store.snapshot());
        for _ in 0..1 + rng.below(3) {
            store.write(random_batch(rng, &mut model, &mut serial)).expect("write");
        }
        check(&*store, &model, rng, &format!("step {step}"));
        // A compaction (tombstones and range deletes reach the table files) while the
        // snapshot may still need what they cover.
        if rng.below(8) == 0 {
            let space = Space::ALL[rng.below(3) as usize];
            store.compact_range(space, &[], None).expect("compact");
            check(&*store, &model, rng, &format!("compaction after step {step}"));
        }
        if let (Some(snapshot), Some(kept)) = (&snapshot, &kept) {
            check(&**snapshot, kept, rng, &format!("snapshot before step {step}"));
        }
        drop(snapshot);
        if let Some(reopen) = reopen.filter(|_| rng.below(10) == 0) {
            drop(store);
            store = reopen();
            check(&*store, &model, rng, &format!("reopen after step {step}"));
        }
    }
}

#[test]
fn the_memory_store_follows_the_model() {
    let mut rng = rng::Rng::seeded("the_memory_store_follows_the_model");
    run(Box::new(MemoryStore::new()), &mut rng, 300, None);
}

#[test]
fn rocksdb_follows_the_model_across_compactions_and_reopens() {
    let mut rng = rng::Rng::seeded("rocksdb_follows_the_model_across_compactions_and_reopens");
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || -> Box<dyn Store> { Box::new(RocksStore::open(dir.path(), &Default::default()).expect("open")) };
    run(open(), &mut rng, 150, Some(&open));
}
