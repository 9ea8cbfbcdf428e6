//! Stored values: arbitrary bytes read as a framed value of any record type are a value or
//! a corruption error, never a panic. And a record that decodes but says nonsense (counts,
//! enums, heads, hashes no write would produce), stored in place of a real one, makes every
//! read of the store answer or fail with a typed error, again never a panic; so does
//! reopening the store over it.

#![no_main]

use engram::storage::{MemoryStore, Space, frame};
use engram::{
    AppendOptions, DEFAULT_TENANT as T, DumpFilter, Engram, HistoryQuery, IndexOptions, ListQuery, NewEvent, NewMemory,
    Options, Role, SearchQuery, StatePrecondition, StateScope,
};

/// Read-your-writes searches wait at most 200 ms for indexes a damaged record may stall.
fn options() -> Options {
    Options { index: IndexOptions { max_wait_ms: 200, ..IndexOptions::default() }, ..Options::default() }
}
use engram_core::keys;
use engram_core::records::{
    ChangeRecord, EventRecord, FormatRecord, IdempotencyRecord, IdentityRecord, MemoryRecord, SeqRecord, SessionRecord,
    StateRecord, TenantRecord,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::sync::Arc;

fn decode_as<M: Message + Default>(bytes: &[u8]) {
    if let Ok(m) = frame::decode::<M>(bytes) {
        // Compared as bytes: a NaN in a float field is not equal to itself.
        let encoded = frame::encode(&m);
        let again = frame::decode::<M>(&encoded).expect("a re-encoded value decodes");
        assert_eq!(frame::encode(&again), encoded, "a decoded value re-encodes to itself");
    }
}

/// A store with one of everything, for a record to be replaced in.
fn seeded() -> (Arc<MemoryStore>, Engram) {
    let store = Arc::new(MemoryStore::new());
    let db = Engram::with_store(store.clone(), options()).expect("open");
    let event = NewEvent { embedding: Some(vec![1.0, 0.0]), ..NewEvent::message(Role::User, "hello there") };
    let opts = AppendOptions { idempotency_key: Some("k".into()), ..AppendOptions::default() };
    db.append(T, "alice", "s", vec![event], opts).expect("append");
    db.put_memory(T, "alice", NewMemory { id: Some("m".into()), ..NewMemory::fact("likes tea") }).expect("memory");
    db.update_memory(T, "alice", "m", NewMemory::fact("likes green tea")).expect("update");
    let scope = StateScope::Session { identity: "alice", session: "s" };
    db.put_state(T, scope, "k", serde_json::json!({"a": 1}), StatePrecondition::None).expect("state");
    (store, db)
}

/// Every read there is, each allowed to fail but not to panic.
fn read_everything(db: &Engram) {
    let _ = db.list_identities(T, &ListQuery::default());
    let _ = db.get_identity(T, "alice");
    let _ = db.list_sessions(T, "alice", &ListQuery::default());
    let _ = db.get_session(T, "alice", "s");
    let _ = db.history(T, "alice", "s", &HistoryQuery::default());
    let _ = db.history(T, "alice", "s", &HistoryQuery::last(10));
    let _ = db.list_memories(T, "alice", &ListQuery::default());
    let _ = db.get_memory(T, "alice", "m");
    let _ = db.memory_history(T, "alice", "m");
    let _ = db.list_state(T, StateScope::Session { identity: "alice", session: "s" });
    let _ = db.search(T, &SearchQuery { consistent: true, ..SearchQuery::text("tea hello") });
    let _ = db.changes(0, 100);
    let _ = db.verify();
    let _ = db.inspect();
    let _ = db.dump(&DumpFilter::default(), &mut std::io::sink());
    let _ = db.append(T, "alice", "s", vec![NewEvent::message(Role::User, "more")], AppendOptions::default());
    let _ = db.forget_identity(T, "alice");
}

fn replace<M: Message + Default>(payload: &[u8], space: Space, key: &[u8]) -> bool {
    let Ok(record) = M::decode(payload) else { return false };
    let (store, db) = seeded();
    store.put_raw(space, key, frame::encode(&record));
    read_everything(&db);
    drop(db);
    if let Ok(db) = Engram::with_store(store, options()) {
        read_everything(&db);
    }
    true
}

fuzz_target!(|data: &[u8]| {
    decode_as::<EventRecord>(data);
    decode_as::<SessionRecord>(data);
    decode_as::<MemoryRecord>(data);
    decode_as::<TenantRecord>(data);
    decode_as::<ChangeRecord>(data);
    decode_as::<StateRecord>(data);
    let Some((&which, payload)) = data.split_first() else { return };
    let event = keys::event(T, "alice", "s", 1);
    let state = keys::state(&keys::session_state_prefix(T, "alice", "s"), "k");
    match which % 10 {
        0 => replace::<EventRecord>(payload, Space::Data, &event),
        1 => replace::<SessionRecord>(payload, Space::Data, &keys::session_dir(T, "alice", "s")),
        2 => replace::<IdentityRecord>(payload, Space::Data, &keys::identity_dir(T, "alice")),
        3 => replace::<MemoryRecord>(payload, Space::Data, &keys::memory(T, "alice", "m")),
        4 => replace::<MemoryRecord>(payload, Space::Data, &keys::memory_history(T, "alice", "m", 1)),
        5 => replace::<StateRecord>(payload, Space::Data, &state),
        6 => replace::<IdempotencyRecord>(payload, Space::Data, &keys::idempotency(T, "alice", "s", "k")),
        7 => replace::<TenantRecord>(payload, Space::Meta, &keys::meta::tenant(T)),
        8 => replace::<ChangeRecord>(payload, Space::Log, &keys::change(1)),
        _ => match which % 3 {
            0 => replace::<FormatRecord>(payload, Space::Meta, keys::meta::FORMAT),
            _ => replace::<SeqRecord>(payload, Space::Meta, keys::meta::LAST_CHANGE_SEQ),
        },
    };
});
