//! Behaviour of every library operation, on the in-memory backend and on RocksDB.

use engram::storage::{FaultyStore, MemoryStore, ReadView, Space, Store};
use engram::*;
use serde_json::json;
use std::sync::Arc;

const T: &str = DEFAULT_TENANT;

/// Indexing is off here: these tests read the changelog, which the indexer truncates.
/// `tests/search.rs` covers the indexes.
fn options(clock: &Arc<ManualClock>) -> Options {
    Options {
        clock: clock.clone(),
        retention_sweep_interval_ms: None,
        index: IndexOptions { enabled: false, ..IndexOptions::default() },
        ..Options::default()
    }
}

fn mem() -> (Engram, Arc<ManualClock>) {
    let clock = ManualClock::new(1_700_000_000_000);
    (Engram::open_in_memory(options(&clock)).expect("open"), clock)
}

fn msg(role: Role, text: &str) -> NewEvent {
    NewEvent::message(role, text)
}

fn texts(page: &HistoryPage) -> Vec<String> {
    page.events.iter().map(|e| e.text.clone().unwrap_or_default()).collect()
}

fn append(db: &Engram, session: &str, items: &[&str]) -> AppendResult {
    let events = items.iter().map(|t| msg(Role::User, t)).collect();
    db.append(T, "alice", session, events, AppendOptions::default()).expect("append")
}

#[test]
fn append_assigns_contiguous_sequences_from_one() {
    let (db, _) = mem();
    let a = append(&db, "s", &["a", "b"]);
    let b = append(&db, "s", &["c"]);
    assert_eq!((a.first_seq, a.last_seq, b.first_seq, b.last_seq), (1, 2, 3, 3));
    assert!(b.change_seq > a.change_seq);
    let page = db.history(T, "alice", "s", &HistoryQuery::default()).expect("history");
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(texts(&page), vec!["a", "b", "c"]);
    assert_eq!(page.head_seq, 3);
    assert_eq!(db.get_session(T, "alice", "s").expect("session").head_seq, 3);
}

#[test]
fn expected_head_mismatch_is_a_conflict_that_writes_nothing() {
    let (db, _) = mem();
    append(&db, "s", &["a"]);
    let before = db.last_change_seq();
    let err = db
        .append(
            T,
            "alice",
            "s",
            vec![msg(Role::User, "x")],
            AppendOptions { expected_head: Some(0), ..Default::default() },
        )
        .expect_err("conflict");
    assert_eq!(err, Error::HeadMismatch { expected: 0, actual: 1 });
    assert_eq!(db.last_change_seq(), before);
    let ok = db
        .append(
            T,
            "alice",
            "s",
            vec![msg(Role::User, "y")],
            AppendOptions { expected_head: Some(1), ..Default::default() },
        )
        .expect("append");
    assert_eq!(ok.first_seq, 2);
}

#[test]
fn idempotent_retry_returns_original_sequences_and_writes_nothing() {
    let (db, _) = mem();
    let opts = AppendOptions { idempotency_key: Some("req-1".into()), ..Default::default() };
    let first = db.append(T, "alice", "s", vec![msg(Role::User, "a"), msg(Role::User, "b")], opts.clone()).expect("1");
    append(&db, "s", &["c"]);
    let before = db.last_change_seq();
    let retry = db.append(T, "alice", "s", vec![msg(Role::User, "a"), msg(Role::User, "b")], opts.clone()).expect("2");
    assert!(retry.deduplicated);
    assert_eq!((retry.first_seq, retry.last_seq), (first.first_seq, first.last_seq));
    assert_eq!(db.last_change_seq(), before);
    assert_eq!(db.history(T, "alice", "s", &HistoryQuery::default()).expect("h").events.len(), 3);
    let other = db.append(T, "alice", "s", vec![msg(Role::User, "different")], opts).expect_err("reuse");
    assert!(matches!(other, Error::Conflict(_)), "{other:?}");
}

#[test]
fn bad_input_names_the_field_and_changes_nothing() {
    let (db, _) = mem();
    let before = db.last_change_seq();
    let cases: Vec<(Vec<NewEvent>, &str)> = vec![
        (vec![], "events"),
        (
            vec![NewEvent { kind: Some(EventKind::Message), text: Some("x".into()), ..Default::default() }],
            "events[0].role",
        ),
        (vec![NewEvent { text: Some("x".into()), ..Default::default() }], "events[0].kind"),
        (
            vec![msg(Role::User, "ok"), NewEvent { kind: Some(EventKind::Custom), ..Default::default() }],
            "events[1].text",
        ),
        (vec![NewEvent { embedding: Some(vec![1.0, f32::NAN]), ..msg(Role::User, "x") }], "events[0].embedding[1]"),
        (vec![msg(Role::User, &"x".repeat(limits::MAX_TEXT_BYTES + 1))], "events[0].text"),
        (vec![NewEvent { timestamp_ms: Some(-5), ..msg(Role::User, "x") }], "events[0].timestamp_ms"),
    ];
    for (events, field) in cases {
        match db.append(T, "alice", "s", events, AppendOptions::default()) {
            Err(Error::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected invalid {field}, got {other:?}"),
        }
    }
    let too_many = vec![msg(Role::User, "x"); limits::MAX_BATCH_EVENTS + 1];
    assert!(matches!(
        db.append(T, "alice", "s", too_many, AppendOptions::default()),
        Err(Error::InvalidArgument { .. })
    ));
    for (identity, session) in [("", "s"), ("a b", "s"), ("alice", "s/1"), ("alice", &"x".repeat(129)[..])] {
        let r = db.append(T, identity, session, vec![msg(Role::User, "x")], AppendOptions::default());
        assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{identity:?}/{session:?}: {r:?}");
    }
    assert!(matches!(
        db.append("nope", "alice", "s", vec![msg(Role::User, "x")], AppendOptions::default()),
        Err(Error::NotFound { .. })
    ));
    assert_eq!(db.last_change_seq(), before);
    assert!(matches!(db.get_session(T, "alice", "s"), Err(Error::NotFound { .. })));
}

#[test]
fn vector_dimension_is_fixed_by_the_first_vector_or_the_tenant() {
    let (db, _) = mem();
    let with = |v: Vec<f32>| NewEvent { embedding: Some(v), ..msg(Role::User, "x") };
    db.append(T, "alice", "s", vec![with(vec![1.0, 0.0, 0.0])], AppendOptions::default()).expect("first vector");
    assert_eq!(db.get_tenant(T).expect("tenant").vector_dim, Some(3));
    let err = db.append(T, "alice", "s", vec![with(vec![1.0, 0.0])], AppendOptions::default()).expect_err("dim");
    assert!(matches!(err, Error::InvalidArgument { ref field, .. } if field == "events[0].embedding"), "{err:?}");
    db.create_tenant("acme", TenantConfig { vector_dim: Some(2), metric: Some(Metric::Dot), ..Default::default() })
        .expect("tenant");
    db.append("acme", "bob", "s", vec![with(vec![0.0, 0.0])], AppendOptions::default()).expect("dot allows zeros");
    assert!(db.append("acme", "bob", "s", vec![with(vec![1.0, 2.0, 3.0])], AppendOptions::default()).is_err());
    let m =
        db.put_memory("acme", "bob", NewMemory { embedding: Some(vec![f32::INFINITY, 0.0]), ..NewMemory::fact("x") });
    assert!(matches!(m, Err(Error::InvalidArgument { .. })));
}

#[test]
fn history_pages_both_ways_and_filters() {
    let (db, _) = mem();
    let mut events = Vec::new();
    for i in 1..=10 {
        let role = if i % 2 == 0 { Role::Assistant } else { Role::User };
        events.push(msg(role, &format!("t{i}")));
    }
    events.push(NewEvent { call_id: Some("c1".into()), ..NewEvent::with_data(EventKind::ToolCall, json!({"q": 1})) });
    db.append(T, "alice", "s", events, AppendOptions::default()).expect("append");

    let mut seen = Vec::new();
    let mut q = HistoryQuery { limit: 4, ..Default::default() };
    loop {
        let page = db.history(T, "alice", "s", &q).expect("page");
        seen.extend(page.events.iter().map(|e| e.seq));
        match page.next_cursor {
            Some(c) => q.after = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, (1..=11).collect::<Vec<_>>());

    let mut seen = Vec::new();
    let mut q = HistoryQuery { limit: 3, order: Order::Desc, ..Default::default() };
    loop {
        let page = db.history(T, "alice", "s", &q).expect("page");
        seen.extend(page.events.iter().map(|e| e.seq));
        match page.next_cursor {
            Some(c) => q.before = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, (1..=11).rev().collect::<Vec<_>>());

    let last = db.history(T, "alice", "s", &HistoryQuery::last(2)).expect("last");
    assert_eq!(last.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![11, 10]);

    let users =
        db.history(T, "alice", "s", &HistoryQuery { roles: vec![Role::User], ..Default::default() }).expect("roles");
    assert_eq!(texts(&users), vec!["t1", "t3", "t5", "t7", "t9"]);
    let tools = db
        .history(T, "alice", "s", &HistoryQuery { kinds: vec![EventKind::ToolCall], ..Default::default() })
        .expect("k");
    assert_eq!(tools.events.len(), 1);
    assert_eq!(tools.events[0].data, Some(json!({"q": 1})));
    assert_eq!(tools.events[0].call_id.as_deref(), Some("c1"));

    let as_of = db.history(T, "alice", "s", &HistoryQuery { as_of: Some(4), ..Default::default() }).expect("as_of");
    assert_eq!(as_of.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert_eq!(as_of.head_seq, 4);
    let range = db
        .history(T, "alice", "s", &HistoryQuery { after: Some(2), before: Some(5), ..Default::default() })
        .expect("r");
    assert_eq!(range.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
    assert!(matches!(
        db.history(T, "alice", "s", &HistoryQuery { limit: 0, ..Default::default() }),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(db.history(T, "alice", "nope", &HistoryQuery::default()), Err(Error::NotFound { .. })));
}

#[test]
fn forks_share_a_prefix_without_copying_and_diverge() {
    let (db, _) = mem();
    append(&db, "main", &["a", "b", "c"]);
    let fork = db.fork_session(T, "alice", "main", Some(2), "alt", SessionConfig::default()).expect("fork");
    assert_eq!(fork.head_seq, 2);
    assert_eq!(fork.forked_from, Some(("main".to_string(), 2)));
    let r = append(&db, "alt", &["x"]);
    assert_eq!(r.first_seq, 3);
    append(&db, "main", &["d"]);
    let alt = db.history(T, "alice", "alt", &HistoryQuery::default()).expect("alt");
    assert_eq!(texts(&alt), vec!["a", "b", "x"]);
    assert_eq!(alt.events[0].session, "main");
    assert_eq!(alt.events[2].session, "alt");
    let main = db.history(T, "alice", "main", &HistoryQuery::default()).expect("main");
    assert_eq!(texts(&main), vec!["a", "b", "c", "d"]);
    let alt_desc = db.history(T, "alice", "alt", &HistoryQuery::last(10)).expect("desc");
    assert_eq!(texts(&alt_desc), vec!["x", "b", "a"]);
    // A fork of a fork.
    db.fork_session(T, "alice", "alt", None, "alt2", SessionConfig::default()).expect("fork2");
    append(&db, "alt2", &["y"]);
    let alt2 = db.history(T, "alice", "alt2", &HistoryQuery::default()).expect("alt2");
    assert_eq!(texts(&alt2), vec!["a", "b", "x", "y"]);
    // Physically nothing was copied: main holds 4 events, alt 1, alt2 1.
    let receipt = db.delete_session(T, "alice", "alt2").expect("delete alt2");
    assert_eq!(receipt.events, 1);
    assert!(matches!(
        db.fork_session(T, "alice", "main", Some(9), "bad", SessionConfig::default()),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        db.fork_session(T, "alice", "main", None, "alt", SessionConfig::default()),
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(db.delete_session(T, "alice", "main"), Err(Error::Conflict(_))));
    db.delete_session(T, "alice", "alt").expect("delete alt");
    assert_eq!(db.delete_session(T, "alice", "main").expect("delete main").events, 4);
}

#[test]
fn state_documents_compare_and_set() {
    let (db, _) = mem();
    let scope = StateScope::Session { identity: "alice", session: "s" };
    assert_eq!(db.get_state(T, scope, "task").expect("get"), None);
    let v1 = db.put_state(T, scope, "task", json!({"step": 1}), StatePrecondition::Absent).expect("create");
    assert_eq!(v1.version, 1);
    let dup = db.put_state(T, scope, "task", json!({"step": 9}), StatePrecondition::Absent).expect_err("exists");
    assert_eq!(dup, Error::VersionMismatch { expected: None, actual: Some(1) });
    let v2 = db.put_state(T, scope, "task", json!({"step": 2}), StatePrecondition::Version(1)).expect("cas");
    assert_eq!(v2.version, 2);
    let stale = db.put_state(T, scope, "task", json!({"step": 3}), StatePrecondition::Version(1)).expect_err("stale");
    assert_eq!(stale, Error::VersionMismatch { expected: Some(1), actual: Some(2) });
    assert_eq!(db.get_state(T, scope, "task").expect("get").map(|d| d.value), Some(json!({"step": 2})));
    let ident = StateScope::Identity { identity: "alice" };
    db.put_state(T, ident, "prefs", json!({"lang": "fr"}), StatePrecondition::None).expect("identity state");
    assert_eq!(db.list_state(T, ident).expect("list").len(), 1);
    assert_eq!(db.list_state(T, scope).expect("list")[0].key, "task");
    assert!(matches!(
        db.delete_state(T, scope, "task", StatePrecondition::Version(1)),
        Err(Error::VersionMismatch { .. })
    ));
    assert!(db.delete_state(T, scope, "task", StatePrecondition::Version(2)).expect("delete"));
    assert!(!db.delete_state(T, scope, "task", StatePrecondition::None).expect("gone"));
    let big = json!("x".repeat(limits::MAX_JSON_BYTES));
    assert!(matches!(db.put_state(T, scope, "big", big, StatePrecondition::None), Err(Error::InvalidArgument { .. })));
}

#[test]
fn memories_supersede_and_keep_their_history() {
    let (db, clock) = mem();
    let m1 = db
        .put_memory(T, "alice", NewMemory { id: Some("home".into()), ..NewMemory::fact("Alice lives in Lyon") })
        .expect("put");
    assert_eq!((m1.version, m1.valid_to_ms), (1, None));
    assert!(matches!(
        db.put_memory(T, "alice", NewMemory { id: Some("home".into()), ..NewMemory::fact("x") }),
        Err(Error::AlreadyExists { .. })
    ));
    clock.advance_ms(1000);
    let m2 = db.update_memory(T, "alice", "home", NewMemory::fact("Alice lives in Turin")).expect("update");
    assert_eq!(m2.version, 2);
    assert_eq!(db.get_memory(T, "alice", "home").expect("get").text, "Alice lives in Turin");
    let history = db.memory_history(T, "alice", "home").expect("history");
    assert_eq!(
        history.iter().map(|m| (m.version, m.text.as_str())).collect::<Vec<_>>(),
        vec![(1, "Alice lives in Lyon"), (2, "Alice lives in Turin")]
    );
    assert_eq!(history[0].valid_to_ms, Some(m2.recorded_at_ms));
    let auto = db
        .put_memory(T, "alice", NewMemory { importance: Some(0.9), ..NewMemory::fact("likes trains") })
        .expect("auto id");
    assert!(auto.id.starts_with("mem_"));
    let page = db.list_memories(T, "alice", &ListQuery::default()).expect("list");
    assert_eq!(page.items.len(), 2);
    let deleted = db.delete_memory(T, "alice", "home").expect("delete");
    assert!(deleted.deleted);
    assert!(matches!(db.get_memory(T, "alice", "home"), Err(Error::NotFound { .. })));
    assert_eq!(db.memory_history(T, "alice", "home").expect("history").len(), 2);
    assert_eq!(db.list_memories(T, "alice", &ListQuery::default()).expect("list").items.len(), 1);
    let again = db
        .put_memory(T, "alice", NewMemory { id: Some("home".into()), ..NewMemory::fact("back in Lyon") })
        .expect("re-put");
    assert_eq!(again.version, 3);
    assert!(
        matches!(db.put_memory(T, "alice", NewMemory { importance: Some(2.0), ..NewMemory::fact("x") }), Err(Error::InvalidArgument { ref field, .. }) if field == "importance")
    );
    assert!(matches!(db.put_memory(T, "alice", NewMemory::fact("")), Err(Error::InvalidArgument { .. })));
}

#[test]
fn identities_and_sessions_list_with_cursor_and_metadata_filter() {
    let (db, _) = mem();
    for i in 0..7 {
        let mut metadata = JsonMap::new();
        metadata.insert("team".into(), json!(if i % 2 == 0 { "red" } else { "blue" }));
        db.create_session(T, "alice", &format!("s{i}"), SessionConfig { metadata, ..Default::default() })
            .expect("create");
        db.create_identity(T, &format!("user{i}"), JsonMap::new()).expect("identity");
    }
    assert!(matches!(db.create_session(T, "alice", "s0", SessionConfig::default()), Err(Error::AlreadyExists { .. })));
    let mut ids = Vec::new();
    let mut q = ListQuery { limit: 3, ..Default::default() };
    loop {
        let page = db.list_sessions(T, "alice", &q).expect("page");
        ids.extend(page.items.iter().map(|s| s.id.clone()));
        match page.next_cursor {
            Some(c) => q.after = Some(c),
            None => break,
        }
    }
    assert_eq!(ids, (0..7).map(|i| format!("s{i}")).collect::<Vec<_>>());
    let mut filter = JsonMap::new();
    filter.insert("team".into(), json!("red"));
    let red = db.list_sessions(T, "alice", &ListQuery { metadata: filter, ..Default::default() }).expect("filter");
    assert_eq!(red.items.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), vec!["s0", "s2", "s4", "s6"]);
    let identities = db.list_identities(T, &ListQuery::default()).expect("identities");
    assert_eq!(identities.items.len(), 8);
    assert_eq!(db.get_identity(T, "user3").expect("get").id, "user3");
}

#[test]
fn large_texts_are_stored_once_as_blobs_and_go_with_their_last_reference() {
    let (db, _) = mem();
    let big = "tool output line\n".repeat(4000);
    let ev = || NewEvent { kind: Some(EventKind::ToolResult), text: Some(big.clone()), ..Default::default() };
    db.append(T, "alice", "s1", vec![ev(), ev()], AppendOptions::default()).expect("append");
    db.append(T, "bob", "s1", vec![ev()], AppendOptions::default()).expect("append");
    let page = db.history(T, "alice", "s1", &HistoryQuery::default()).expect("history");
    let blob = page.events[0].blob.clone().expect("blob ref");
    assert_eq!(page.events[0].text.as_deref(), Some(big.as_str()));
    assert_eq!(blob.len_bytes, big.len() as u64);
    assert_eq!(db.get_blob(T, &blob.sha256).expect("blob"), big.as_bytes());
    let receipt = db.forget_identity(T, "alice").expect("forget alice");
    assert_eq!((receipt.events, receipt.blobs_deleted), (2, 0), "bob still references the blob");
    assert!(db.get_blob(T, &blob.sha256).is_ok());
    let receipt = db.delete_session(T, "bob", "s1").expect("delete");
    assert_eq!(receipt.blobs_deleted, 1);
    let changes = db.changes(0, 1000).expect("changes");
    let of_s1 = changes.iter().filter(|c| c.identity == "bob" && c.session == "s1").collect::<Vec<_>>();
    assert_eq!(of_s1.len(), 1, "only the delete names the session: {of_s1:?}");
    assert_eq!((of_s1[0].op, receipt.changelog_entries), (ChangeOp::SessionDeleted, 1));
    assert!(matches!(db.get_blob(T, &blob.sha256), Err(Error::NotFound { .. })));
    assert!(matches!(db.get_blob(T, "zz"), Err(Error::InvalidArgument { .. })));
}

/// `verify` checks that blob references add up: a session's count against its events, a
/// blob's count against its tenant's sessions.
#[test]
fn verify_finds_blob_references_that_do_not_add_up() {
    use engram_core::keys::{KeyKind, decode_data};
    use engram_core::records::{BlobRecord, BlobRefRecord};
    let store = Arc::new(MemoryStore::new());
    let db = Engram::with_store(store.clone(), options(&ManualClock::new(0))).expect("open");
    let big = "tool output line\n".repeat(4000);
    let ev = || NewEvent { kind: Some(EventKind::ToolResult), text: Some(big.clone()), ..Default::default() };
    db.append(T, "alice", "s1", vec![ev(), ev(), msg(Role::User, "small")], AppendOptions::default()).expect("a");
    db.append(T, "bob", "s1", vec![ev()], AppendOptions::default()).expect("b");
    db.delete_event(T, "alice", "s1", 1).expect("delete one reference");
    let clean = db.verify().expect("verify");
    assert!(clean.problems.is_empty(), "{:?}", clean.problems);
    let find = |wanted: KeyKind, identity: &str| {
        store
            .scan(Space::Data, &[], None, engram::storage::Direction::Forward)
            .map(|entry| entry.expect("scan").0)
            .find(|key| decode_data(key).is_ok_and(|(kind, parts)| kind == wanted && parts.identity == identity))
            .expect("key")
    };
    let reasons = |db: &Engram| db.verify().expect("verify").problems.into_iter().map(|p| p.reason).collect::<Vec<_>>();
    // Alice's session says 2 references, one event names the blob: both checks see it.
    let alice_ref = find(KeyKind::BlobRef, "alice");
    let original = store.get(Space::Data, &alice_ref).expect("get").expect("present");
    store.put_raw(Space::Data, &alice_ref, engram::storage::frame::encode(&BlobRefRecord { count: 2 }));
    let found = reasons(&db);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].contains("1 event(s) name blob") && found[0].contains("the session counts 2"), "{found:?}");
    assert!(found[1].contains("blob counts 2 reference(s); its tenant's sessions hold 3"), "{found:?}");
    store.put_raw(Space::Data, &alice_ref, original);
    assert!(reasons(&db).is_empty());
    // A blob that counts a reference no session holds.
    let blob_key = find(KeyKind::Blob, "");
    let mut blob: BlobRecord =
        engram::storage::frame::decode(&store.get(Space::Data, &blob_key).expect("get").expect("blob"))
            .expect("decode");
    blob.refcount += 1;
    store.put_raw(Space::Data, &blob_key, engram::storage::frame::encode(&blob));
    let found = reasons(&db);
    assert_eq!(found, vec!["blob counts 3 reference(s); its tenant's sessions hold 2".to_string()]);
    // A session reference to a blob that is gone.
    let mut gone = engram::storage::Batch::new();
    gone.delete(Space::Data, blob_key);
    store.write(gone).expect("delete the blob");
    let found = reasons(&db);
    assert!(found.iter().any(|r| r.contains("which is missing")), "{found:?}");
}

#[test]
fn forget_removes_everything_of_an_identity_and_nothing_else() {
    let (db, _) = mem();
    for who in ["alice", "bob"] {
        db.append(
            T,
            who,
            "s1",
            vec![msg(Role::User, "hello"), msg(Role::Assistant, "hi")],
            AppendOptions { idempotency_key: Some("k".into()), ..Default::default() },
        )
        .expect("a");
        db.append(T, who, "s2", vec![msg(Role::User, "again")], AppendOptions::default()).expect("b");
        db.put_memory(T, who, NewMemory::fact("likes tea")).expect("m");
        db.put_state(T, StateScope::Identity { identity: who }, "prefs", json!(1), StatePrecondition::None).expect("s");
        db.put_state(
            T,
            StateScope::Session { identity: who, session: "s1" },
            "task",
            json!(1),
            StatePrecondition::None,
        )
        .expect("s");
    }
    db.update_memory(
        T,
        "alice",
        &db.list_memories(T, "alice", &ListQuery::default()).expect("l").items[0].id,
        NewMemory::fact("likes coffee"),
    )
    .expect("u");
    let alice_memory = db.list_memories(T, "alice", &ListQuery::default()).expect("l").items[0].id.clone();
    let named = |who: &str| db.changes(0, 1000).expect("changes").into_iter().filter(|c| c.identity == who).count();
    let (alice_changes, bob_changes) = (named("alice"), named("bob"));
    assert!(alice_changes >= 6, "{alice_changes}");
    let entries = db.changes(0, 1000).expect("changes").len();
    let receipt = db.forget_identity(T, "alice").expect("forget");
    assert_eq!(
        (receipt.sessions, receipt.events, receipt.memory_versions, receipt.state_docs, receipt.idempotency_keys),
        (2, 3, 2, 2, 1)
    );
    // The changelog keeps nothing of alice but the forget itself (the indexes read it).
    assert_eq!(receipt.changelog_entries, alice_changes as u64);
    assert_eq!((named("alice"), named("bob")), (1, bob_changes));
    // Redacted in place: every sequence is still there, contiguous, for the indexes.
    let after = db.changes(0, 1000).expect("changes");
    assert_eq!(after.len(), entries + 1);
    assert!(after.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    let redacted = after.iter().filter(|c| c.op == ChangeOp::Redacted).collect::<Vec<_>>();
    assert_eq!(redacted.len(), alice_changes);
    assert!(redacted.iter().all(|c| c.tenant.is_empty() && c.key.is_empty() && c.seqs.is_empty()), "{redacted:?}");
    assert!(matches!(db.memory_history(T, "alice", &alice_memory), Err(Error::NotFound { .. })));
    assert!(receipt.change_seq > 0);
    assert!(matches!(db.get_identity(T, "alice"), Err(Error::NotFound { .. })));
    assert!(matches!(db.history(T, "alice", "s1", &HistoryQuery::default()), Err(Error::NotFound { .. })));
    assert!(matches!(db.list_sessions(T, "alice", &ListQuery::default()), Err(Error::NotFound { .. })));
    assert!(db.list_memories(T, "alice", &ListQuery::default()).expect("l").items.is_empty());
    assert_eq!(db.get_state(T, StateScope::Identity { identity: "alice" }, "prefs").expect("g"), None);
    assert_eq!(
        db.list_identities(T, &ListQuery::default())
            .expect("l")
            .items
            .iter()
            .map(|i| i.id.as_str())
            .collect::<Vec<_>>(),
        vec!["bob"]
    );
    assert_eq!(db.history(T, "bob", "s1", &HistoryQuery::default()).expect("bob").events.len(), 2);
    assert!(matches!(db.forget_identity(T, "alice"), Err(Error::NotFound { .. })));
    let changes = db.changes(0, 1000).expect("changes");
    let last = changes.last().expect("change");
    assert_eq!((last.op, last.identity.as_str()), (ChangeOp::IdentityForgotten, "alice"));
}

#[test]
fn tenants_are_isolated() {
    let (db, _) = mem();
    db.create_tenant("a", TenantConfig::default()).expect("a");
    db.create_tenant("b", TenantConfig::default()).expect("b");
    assert!(matches!(db.create_tenant("a", TenantConfig::default()), Err(Error::AlreadyExists { .. })));
    db.append("a", "alice", "s", vec![msg(Role::User, "secret of a")], AppendOptions::default()).expect("a");
    assert!(matches!(db.history("b", "alice", "s", &HistoryQuery::default()), Err(Error::NotFound { .. })));
    assert!(db.list_identities("b", &ListQuery::default()).expect("list").items.is_empty());
    assert!(matches!(db.forget_identity("b", "alice"), Err(Error::NotFound { .. })));
    db.append("b", "alice", "s", vec![msg(Role::User, "b's own")], AppendOptions::default()).expect("b");
    assert_eq!(texts(&db.history("a", "alice", "s", &HistoryQuery::default()).expect("a")), vec!["secret of a"]);
    let receipt = db.delete_tenant("a").expect("delete");
    assert_eq!((receipt.sessions, receipt.events), (1, 1));
    let of_a = db.changes(0, 1000).expect("changes").into_iter().filter(|c| c.tenant == "a").collect::<Vec<_>>();
    assert_eq!(of_a.iter().map(|c| c.op).collect::<Vec<_>>(), vec![ChangeOp::TenantDeleted]);
    assert_eq!(receipt.changelog_entries, 2, "the tenant's creation and its append");
    assert!(matches!(db.get_tenant("a"), Err(Error::NotFound { .. })));
    assert_eq!(texts(&db.history("b", "alice", "s", &HistoryQuery::default()).expect("b")), vec!["b's own"]);
    let page = db.list_tenants(&ListQuery::default()).expect("tenants");
    assert_eq!(page.items.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), vec!["b", "default"]);
    assert_eq!(page.next_cursor, None);
}

/// Each documented limit, one past it: an `InvalidArgument` naming the field, and nothing
/// written.
#[test]
fn every_limit_is_checked_before_writing_and_names_its_field() {
    let (db, _) = mem();
    append(&db, "s", &["first"]);
    let before = db.last_change_seq();
    let expect_field = |result: Result<()>, field: &str| match result {
        Err(Error::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected invalid {field}, got {other:?}"),
    };
    let map = |n: usize, value_bytes: usize| -> serde_json::Map<String, serde_json::Value> {
        (0..n).map(|i| (format!("k{i}"), json!("v".repeat(value_bytes)))).collect()
    };
    let append_one = |e: NewEvent| db.append(T, "alice", "s", vec![e], AppendOptions::default()).map(drop);
    let long_id = "x".repeat(limits::MAX_ID_BYTES + 1);
    expect_field(
        db.append(T, &long_id, "s", vec![msg(Role::User, "x")], AppendOptions::default()).map(drop),
        "identity",
    );
    expect_field(
        db.append(T, "alice", &long_id, vec![msg(Role::User, "x")], AppendOptions::default()).map(drop),
        "session",
    );
    let retry = AppendOptions { idempotency_key: Some(long_id.clone()), ..AppendOptions::default() };
    expect_field(db.append(T, "alice", "s", vec![msg(Role::User, "x")], retry).map(drop), "idempotency_key");
    let too_many_keys = NewEvent { metadata: Some(map(limits::MAX_METADATA_KEYS + 1, 1)), ..msg(Role::User, "x") };
    expect_field(append_one(too_many_keys), "events[0].metadata");
    let too_big = NewEvent { metadata: Some(map(1, limits::MAX_METADATA_BYTES)), ..msg(Role::User, "x") };
    expect_field(append_one(too_big), "events[0].metadata");
    let wide = NewEvent { embedding: Some(vec![0.5; limits::MAX_VECTOR_DIM + 1]), ..msg(Role::User, "x") };
    expect_field(append_one(wide), "events[0].embedding");
    let big = json!("x".repeat(limits::MAX_JSON_BYTES));
    let data = NewEvent { kind: Some(EventKind::ToolResult), data: Some(big), ..NewEvent::default() };
    expect_field(append_one(data), "events[0].data");
    for (name, event) in [
        ("events[0].name", NewEvent { name: Some("n".repeat(limits::MAX_NAME_BYTES + 1)), ..msg(Role::Tool, "x") }),
        (
            "events[0].call_id",
            NewEvent { call_id: Some("c".repeat(limits::MAX_NAME_BYTES + 1)), ..msg(Role::Tool, "x") },
        ),
    ] {
        expect_field(append_one(event), name);
    }
    let batch = vec![msg(Role::User, "x"); limits::MAX_BATCH_EVENTS + 1];
    expect_field(db.append(T, "alice", "s", batch, AppendOptions::default()).map(drop), "events");
    // Each text under its own limit, together over the batch's.
    let text = "t".repeat(limits::MAX_TEXT_BYTES);
    let heavy = vec![msg(Role::User, &text); limits::MAX_BATCH_BYTES / limits::MAX_TEXT_BYTES + 1];
    expect_field(db.append(T, "alice", "s", heavy, AppendOptions::default()).map(drop), "events");
    let session_meta = SessionConfig { metadata: map(1, limits::MAX_METADATA_BYTES), ..SessionConfig::default() };
    expect_field(db.create_session(T, "alice", "fat", session_meta).map(drop), "metadata");
    let scope = StateScope::Session { identity: "alice", session: "s" };
    let doc = json!("x".repeat(limits::MAX_JSON_BYTES));
    expect_field(db.put_state(T, scope, "big", doc, StatePrecondition::None).map(drop), "value");
    expect_field(db.put_state(T, scope, &long_id, json!(1), StatePrecondition::None).map(drop), "key");
    let long_memory = NewMemory::fact("m".repeat(MAX_MEMORY_TEXT_BYTES + 1));
    expect_field(db.put_memory(T, "alice", long_memory).map(drop), "text");
    let sources = vec![EventRef { session: "s".into(), seq: 1 }; MAX_MEMORY_SOURCES + 1];
    expect_field(db.put_memory(T, "alice", NewMemory { sources, ..NewMemory::fact("x") }).map(drop), "sources");
    let filters = ListQuery { metadata: map(limits::MAX_FILTERS + 1, 1), ..ListQuery::default() };
    expect_field(db.list_sessions(T, "alice", &filters).map(drop), "metadata");
    let page = ListQuery { limit: limits::MAX_PAGE_LIMIT + 1, ..ListQuery::default() };
    expect_field(db.list_identities(T, &page).map(drop), "limit");
    let page = HistoryQuery { limit: limits::MAX_PAGE_LIMIT + 1, ..HistoryQuery::default() };
    expect_field(db.history(T, "alice", "s", &page).map(drop), "limit");
    assert_eq!(db.last_change_seq(), before, "a refused call wrote something");
    // Forks nest `MAX_FORK_DEPTH` sessions deep (the root and its chain of forks).
    let mut source = "s".to_string();
    for depth in 1..limits::MAX_FORK_DEPTH {
        let fork = format!("f{depth}");
        db.fork_session(T, "alice", &source, None, &fork, SessionConfig::default()).expect("fork within the limit");
        source = fork;
    }
    let deepest = db.last_change_seq();
    expect_field(
        db.fork_session(T, "alice", &source, None, "one-too-deep", SessionConfig::default()).map(drop),
        "source",
    );
    assert_eq!(db.last_change_seq(), deepest);
    assert!(db.history(T, "alice", &source, &HistoryQuery::default()).is_ok(), "the deepest fork reads");
}

#[test]
fn tenants_list_in_pages_and_by_metadata() {
    let (db, _) = mem();
    for (name, plan) in [("acme", "pro"), ("beta", "free"), ("corp", "pro"), ("dyn", "pro")] {
        let metadata = json!({ "plan": plan }).as_object().cloned().expect("object");
        db.create_tenant(name, TenantConfig { metadata, ..TenantConfig::default() }).expect("create");
    }
    let names = |page: &Page<Tenant>| page.items.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    let first = db.list_tenants(&ListQuery { limit: 2, ..ListQuery::default() }).expect("first");
    assert_eq!(names(&first), vec!["acme", "beta"]);
    assert_eq!(first.next_cursor.as_deref(), Some("beta"));
    let rest = db.list_tenants(&ListQuery { after: first.next_cursor, limit: 10, ..ListQuery::default() });
    let rest = rest.expect("rest");
    assert_eq!(names(&rest), vec!["corp", "default", "dyn"]);
    assert_eq!(rest.next_cursor, None);
    let pro = json!({ "plan": "pro" }).as_object().cloned().expect("object");
    let query = ListQuery { limit: 2, metadata: pro.clone(), ..ListQuery::default() };
    let first = db.list_tenants(&query).expect("pro");
    assert_eq!(names(&first), vec!["acme", "corp"]);
    let rest = db.list_tenants(&ListQuery { after: first.next_cursor, ..query }).expect("pro rest");
    assert_eq!(names(&rest), vec!["dyn"]);
    assert!(matches!(
        db.list_tenants(&ListQuery { limit: 0, ..ListQuery::default() }),
        Err(Error::InvalidArgument { field, .. }) if field == "limit"
    ));
}

#[test]
fn retention_ttl_hides_then_sweeps_and_keep_last_trims_on_append() {
    let (db, clock) = mem();
    let mut kind_ttl_ms = std::collections::BTreeMap::new();
    kind_ttl_ms.insert(EventKind::ToolResult, 1_000);
    db.set_tenant_retention(T, RetentionPolicy { ttl_ms: Some(10_000), kind_ttl_ms, keep_last: None })
        .expect("tenant policy");
    let tool = NewEvent { kind: Some(EventKind::ToolResult), text: Some("out".into()), ..Default::default() };
    db.append(T, "alice", "s", vec![msg(Role::User, "q"), tool], AppendOptions::default()).expect("append");
    clock.advance_ms(1_500);
    append(&db, "s", &["later"]);
    let page = db.history(T, "alice", "s", &HistoryQuery::default()).expect("history");
    assert_eq!(texts(&page), vec!["q", "later"], "tool result past its 1 s TTL is hidden");
    let report = db.sweep_retention().expect("sweep");
    assert_eq!(report.events_removed, 1);
    clock.advance_ms(9_000);
    assert_eq!(texts(&db.history(T, "alice", "s", &HistoryQuery::default()).expect("h")), vec!["later"]);
    assert_eq!(db.sweep_retention().expect("sweep").events_removed, 1);
    clock.advance_ms(2_000);
    assert_eq!(db.sweep_retention().expect("sweep").events_removed, 1);
    assert!(db.history(T, "alice", "s", &HistoryQuery::default()).expect("h").events.is_empty());
    assert_eq!(db.get_session(T, "alice", "s").expect("s").head_seq, 3, "sequence numbers are never reused");

    db.create_session(
        T,
        "alice",
        "capped",
        SessionConfig { retention: RetentionPolicy { keep_last: Some(3), ..Default::default() }, ..Default::default() },
    )
    .expect("capped");
    append(&db, "capped", &["1", "2"]);
    append(&db, "capped", &["3", "4"]);
    append(&db, "capped", &["5", "6", "7", "8"]);
    assert_eq!(texts(&db.history(T, "alice", "capped", &HistoryQuery::default()).expect("h")), vec!["6", "7", "8"]);
    let s = db
        .set_session_retention(T, "alice", "capped", RetentionPolicy { keep_last: Some(1), ..Default::default() })
        .expect("set");
    assert_eq!(s.retention.keep_last, Some(1));
    assert_eq!(texts(&db.history(T, "alice", "capped", &HistoryQuery::default()).expect("h")), vec!["8"]);
    assert!(matches!(
        db.set_session_retention(T, "alice", "capped", RetentionPolicy { keep_last: Some(0), ..Default::default() }),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn changelog_reads_from_a_sequence_and_truncates() {
    let (db, _) = mem();
    let start = db.last_change_seq();
    append(&db, "s", &["a", "b"]);
    db.put_state(T, StateScope::Identity { identity: "alice" }, "k", json!(1), StatePrecondition::None).expect("state");
    let changes = db.changes(start, 10).expect("changes");
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0].op, ChangeOp::EventsAppended);
    assert_eq!(changes[0].seqs, vec![1, 2]);
    assert_eq!(changes[1].op, ChangeOp::StatePut);
    assert!(changes[0].seq < changes[1].seq);
    let removed = db.truncate_changelog(changes[1].seq).expect("truncate");
    assert!(removed >= 1);
    let rest = db.changes(0, 10).expect("rest");
    assert_eq!(rest.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![changes[1].seq]);
}

#[test]
fn a_failed_sync_poisons_the_handle() {
    let (store, faults) = FaultyStore::new(MemoryStore::new());
    let clock = ManualClock::new(0);
    let db = Engram::with_store(Arc::new(store), options(&clock)).expect("open");
    append(&db, "s", &["durable"]);
    let synced = db.last_change_seq();
    assert_eq!(db.changes(0, 100).expect("changes").last().map(|c| c.seq), Some(synced));
    faults.fail_sync.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = db.append(T, "alice", "s", vec![msg(Role::User, "x")], AppendOptions::default()).expect_err("sync fails");
    assert!(matches!(err, Error::Poisoned(_)), "{err:?}");
    // The append was written but never synced: a crash may lose it and give its sequence
    // to another change, so the changelog does not show it.
    assert_eq!(db.last_change_seq(), synced);
    assert_eq!(db.changes(0, 100).expect("changes").last().map(|c| c.seq), Some(synced));
    assert!(db.changes(synced, 100).expect("changes").is_empty());
    faults.fail_sync.store(false, std::sync::atomic::Ordering::SeqCst);
    let again =
        db.append(T, "alice", "s", vec![msg(Role::User, "y")], AppendOptions::default()).expect_err("still poisoned");
    assert!(matches!(again, Error::Poisoned(_)));
    assert!(matches!(db.put_memory(T, "alice", NewMemory::fact("z")), Err(Error::Poisoned(_))));
    assert!(db.history(T, "alice", "s", &HistoryQuery::default()).is_ok(), "reads still work");
}

#[test]
fn a_failed_write_poisons_and_leaves_no_partial_state() {
    let (store, faults) = FaultyStore::new(MemoryStore::new());
    let db = Engram::with_store(Arc::new(store), options(&ManualClock::new(0))).expect("open");
    faults.fail_write.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(
        db.append(T, "alice", "s", vec![msg(Role::User, "x")], AppendOptions::default()),
        Err(Error::Io(_))
    ));
    assert!(matches!(db.get_session(T, "alice", "s"), Err(Error::NotFound { .. })));
    assert!(matches!(
        db.append(T, "alice", "s", vec![msg(Role::User, "x")], AppendOptions::default()),
        Err(Error::Poisoned(_))
    ));
}

#[test]
fn a_flipped_byte_in_a_stored_value_is_a_corruption_error() {
    let store = Arc::new(MemoryStore::new());
    let db = Engram::with_store(store.clone(), options(&ManualClock::new(0))).expect("open");
    append(&db, "s", &["precious"]);
    let key = engram_core_keys_event();
    let mut bytes = store.get(Space::Data, &key).expect("get").expect("present");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20;
    store.put_raw(Space::Data, &key, bytes);
    let err = db.history(T, "alice", "s", &HistoryQuery::default()).expect_err("corrupt");
    assert!(matches!(err, Error::Corruption { ref key, .. } if key.contains("alice")), "{err:?}");
    assert!(!err.is_user_error());
}

/// Found by the `value_decode` fuzz target: a session head far above its stored events
/// (here a damaged record; a long deleted or expired stretch is the same shape) made a
/// newest-first read step down through the empty stretch window by window, for hours.
#[test]
fn newest_first_history_seeks_over_a_stretch_with_nothing_stored() {
    use engram::storage::frame;
    use engram_core::records::SessionRecord;
    let store = Arc::new(MemoryStore::new());
    let db = Engram::with_store(store.clone(), options(&ManualClock::new(0))).expect("open");
    append(&db, "s", &["first", "second"]);
    let key = engram_core::keys::session_dir(T, "alice", "s");
    let stored = store.get(Space::Data, &key).expect("get").expect("session");
    let mut record: SessionRecord = frame::decode(&stored).expect("decode");
    record.head_seq = 1 << 48;
    store.put_raw(Space::Data, &key, frame::encode(&record));
    let page = db.history(T, "alice", "s", &HistoryQuery::last(10)).expect("history");
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 1]);
    let q = HistoryQuery { before: Some(2), ..HistoryQuery::last(10) };
    let page = db.history(T, "alice", "s", &q).expect("history");
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1]);
}

/// The key of event 1 of alice/s in the default tenant, built by hand from the documented
/// layout (tenant, 'I', identity, 'S', session, 'E', seq) so the test also pins the format.
fn engram_core_keys_event() -> Vec<u8> {
    let mut k = Vec::new();
    for (tag, part) in [(None, T), (Some(b'I'), "alice"), (Some(b'S'), "s")] {
        if let Some(tag) = tag {
            k.push(tag);
        }
        k.extend_from_slice(part.as_bytes());
        k.extend_from_slice(&[0, 1]);
    }
    k.push(b'E');
    k.extend_from_slice(&1u64.to_be_bytes());
    k
}

#[test]
fn concurrent_appenders_get_contiguous_distinct_sequences() {
    let (db, _) = mem();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                for i in 0..50 {
                    let key = format!("t{t}-{i}");
                    let opts = AppendOptions { idempotency_key: Some(key.clone()), ..Default::default() };
                    let r = db.append(T, "alice", "s", vec![msg(Role::User, &key)], opts.clone()).expect("append");
                    // Retry every call once, as a client that lost the response would.
                    let again = db.append(T, "alice", "s", vec![msg(Role::User, &key)], opts).expect("retry");
                    assert_eq!(r.first_seq, again.first_seq);
                    got.push(r.first_seq);
                }
                got
            })
        })
        .collect();
    let mut all: Vec<u64> = threads.into_iter().flat_map(|t| t.join().expect("thread")).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=400).collect::<Vec<_>>());
    let mut q = HistoryQuery { limit: 1000, ..Default::default() };
    q.order = Order::Asc;
    assert_eq!(db.history(T, "alice", "s", &q).expect("history").events.len(), 400);
}

#[test]
fn rocksdb_store_survives_reopen_and_refuses_a_second_opener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(5);
    {
        let db = Engram::open(dir.path(), options(&clock)).expect("open");
        append(&db, "s", &["one", "two"]);
        db.put_memory(T, "alice", NewMemory { id: Some("m".into()), ..NewMemory::fact("fact") }).expect("memory");
        db.fork_session(T, "alice", "s", Some(1), "f", SessionConfig::default()).expect("fork");
        assert!(matches!(Engram::open(dir.path(), options(&clock)), Err(Error::Locked(_))));
    }
    let db = Engram::open(dir.path(), options(&clock)).expect("reopen");
    assert_eq!(texts(&db.history(T, "alice", "s", &HistoryQuery::default()).expect("h")), vec!["one", "two"]);
    assert_eq!(texts(&db.history(T, "alice", "f", &HistoryQuery::default()).expect("h")), vec!["one"]);
    assert_eq!(db.get_memory(T, "alice", "m").expect("m").text, "fact");
    let next = append(&db, "s", &["three"]);
    assert_eq!(next.first_seq, 3);
    let seq_before = db.last_change_seq();
    drop(db);
    let db = Engram::open(dir.path(), options(&clock)).expect("reopen 2");
    assert_eq!(db.last_change_seq(), seq_before, "the changelog sequence continues across reopen");
}

#[test]
fn rocksdb_detects_a_flipped_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(5);
    {
        let db = Engram::open(dir.path(), options(&clock)).expect("open");
        append(&db, "s", &["precious"]);
    }
    {
        let store = engram::storage::RocksStore::open(dir.path(), &RocksOptions::default()).expect("raw open");
        let key = engram_core_keys_event();
        let mut bytes = store.get(Space::Data, &key).expect("get").expect("present");
        bytes[6] ^= 0x01;
        let mut batch = engram::storage::Batch::new();
        batch.put(Space::Data, key, bytes);
        store.write(batch).expect("write raw");
        store.sync().expect("sync");
    }
    let db = Engram::open(dir.path(), options(&clock)).expect("reopen");
    let err = db.history(T, "alice", "s", &HistoryQuery::default()).expect_err("corrupt");
    assert!(matches!(err, Error::Corruption { .. }), "{err:?}");
}

#[test]
fn concurrent_durable_writers_share_syncs() {
    let (store, faults) = FaultyStore::new(MemoryStore::new());
    let db = Engram::with_store(Arc::new(store), options(&ManualClock::new(0))).expect("open");
    faults.sync_delay_ms.store(5, std::sync::atomic::Ordering::SeqCst);
    let before = faults.syncs.load(std::sync::atomic::Ordering::SeqCst);
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..10 {
                    let events = vec![msg(Role::User, &format!("{t}-{i}"))];
                    db.append(T, "alice", &format!("s{t}"), events, AppendOptions::default()).expect("append");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let syncs = faults.syncs.load(std::sync::atomic::Ordering::SeqCst) - before;
    // 160 acknowledged durable appends; while one sync sleeps the other writers queue
    // behind it and the next sync covers them all.
    assert!((1..=80).contains(&syncs), "{syncs} syncs for 160 appends: no group commit");
}

#[test]
fn buffered_mode_does_not_sync_until_asked() {
    let (store, faults) = FaultyStore::new(MemoryStore::new());
    let clock = ManualClock::new(0);
    let db = Engram::with_store(Arc::new(store), Options { durability: Durability::Buffered, ..options(&clock) })
        .expect("open");
    let before = faults.syncs.load(std::sync::atomic::Ordering::SeqCst);
    append(&db, "s", &["a", "b"]);
    append(&db, "s", &["c"]);
    assert_eq!(faults.syncs.load(std::sync::atomic::Ordering::SeqCst), before);
    db.sync().expect("sync");
    assert_eq!(faults.syncs.load(std::sync::atomic::Ordering::SeqCst), before + 1);
    db.sync().expect("nothing new to sync");
    assert_eq!(faults.syncs.load(std::sync::atomic::Ordering::SeqCst), before + 1);
}

#[test]
fn an_idempotent_retry_is_acknowledged_only_once_the_first_attempt_is_durable() {
    let (store, faults) = FaultyStore::new(MemoryStore::new());
    let db = Engram::with_store(Arc::new(store), options(&ManualClock::new(0))).expect("open");
    faults.sync_delay_ms.store(300, std::sync::atomic::Ordering::SeqCst);
    let opts = AppendOptions { idempotency_key: Some("k".into()), ..Default::default() };
    let first = {
        let (db, opts) = (db.clone(), opts.clone());
        std::thread::spawn(move || db.append(T, "alice", "s", vec![msg(Role::User, "x")], opts))
    };
    // Let the first attempt write and start its (slow) sync.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let syncs_before = faults.syncs.load(std::sync::atomic::Ordering::SeqCst);
    let retry = db.append(T, "alice", "s", vec![msg(Role::User, "x")], opts).expect("retry");
    assert!(retry.deduplicated);
    assert!(
        faults.syncs.load(std::sync::atomic::Ordering::SeqCst) > syncs_before,
        "the retry was acknowledged before the write it points at was synced"
    );
    assert_eq!(first.join().expect("thread").expect("first").first_seq, retry.first_seq);
}

#[test]
fn retention_ttls_beyond_the_clock_range_are_refused() {
    let (db, _) = mem();
    let huge = RetentionPolicy { ttl_ms: Some(u64::MAX), ..Default::default() };
    assert!(
        matches!(db.set_tenant_retention(T, huge), Err(Error::InvalidArgument { ref field, .. }) if field == "retention.ttl_ms")
    );
    let mut kind_ttl_ms = std::collections::BTreeMap::new();
    kind_ttl_ms.insert(EventKind::Message, u64::MAX);
    let huge = RetentionPolicy { kind_ttl_ms, ..Default::default() };
    assert!(matches!(db.set_tenant_retention(T, huge), Err(Error::InvalidArgument { .. })));
    let long = RetentionPolicy { ttl_ms: Some(i64::MAX as u64), ..Default::default() };
    db.set_tenant_retention(T, long).expect("the longest TTL");
    append(&db, "s", &["kept"]);
    assert_eq!(db.sweep_retention().expect("sweep").events_removed, 0);
    assert_eq!(texts(&db.history(T, "alice", "s", &HistoryQuery::default()).expect("h")), vec!["kept"]);
}

#[test]
fn the_changelog_sequence_survives_truncating_every_entry_and_reopening() {
    let store = Arc::new(MemoryStore::new());
    let clock = ManualClock::new(0);
    let db = Engram::with_store(store.clone(), options(&clock)).expect("open");
    append(&db, "s", &["a"]);
    append(&db, "s", &["b"]);
    let last = db.last_change_seq();
    assert!(db.truncate_changelog(last + 1).expect("truncate") >= 2);
    assert!(db.changes(0, 10).expect("changes").is_empty());
    drop(db);
    let db = Engram::with_store(store.clone(), options(&clock)).expect("reopen");
    assert_eq!(db.last_change_seq(), last);
    let next = append(&db, "s", &["c"]);
    assert_eq!(next.change_seq, last + 1);
    drop(db);
    let db = Engram::with_store(store, options(&clock)).expect("reopen again");
    assert_eq!(db.last_change_seq(), last + 1, "the newest log entry carries the sequence");
}

#[test]
fn newest_first_pages_agree_with_oldest_first_across_long_sessions() {
    let db = Engram::open_in_memory(Options::default()).expect("open");
    let events: Vec<NewEvent> = (0..300)
        .map(|i| {
            let mut e = NewEvent::message(if i % 3 == 0 { Role::User } else { Role::Assistant }, format!("turn {i}"));
            if i % 5 == 0 {
                e = NewEvent::with_data(EventKind::Custom, serde_json::json!({ "i": i }));
            }
            e
        })
        .collect();
    db.append(DEFAULT_TENANT, "a", "s", events, AppendOptions::default()).expect("append");
    db.fork_session(DEFAULT_TENANT, "a", "s", Some(150), "f", SessionConfig::default()).expect("fork");
    let more: Vec<NewEvent> = (0..40).map(|i| NewEvent::message(Role::User, format!("fork {i}"))).collect();
    db.append(DEFAULT_TENANT, "a", "f", more, AppendOptions::default()).expect("append");
    for session in ["s", "f"] {
        for (kinds, roles) in
            [(vec![], vec![]), (vec![EventKind::Message], vec![Role::User]), (vec![EventKind::Custom], vec![])]
        {
            let all =
                HistoryQuery { limit: 1000, kinds: kinds.clone(), roles: roles.clone(), ..HistoryQuery::default() };
            let asc: Vec<u64> =
                db.history(DEFAULT_TENANT, "a", session, &all).expect("asc").events.iter().map(|e| e.seq).collect();
            assert!(!asc.is_empty());
            for limit in [1, 7, 50, 333] {
                let mut walked = Vec::new();
                let mut before = None;
                loop {
                    let q = HistoryQuery {
                        limit,
                        before,
                        order: Order::Desc,
                        kinds: kinds.clone(),
                        roles: roles.clone(),
                        ..HistoryQuery::default()
                    };
                    let page = db.history(DEFAULT_TENANT, "a", session, &q).expect("desc");
                    assert!(page.events.len() <= limit);
                    walked.extend(page.events.iter().map(|e| e.seq));
                    before = page.next_cursor;
                    if before.is_none() {
                        break;
                    }
                }
                walked.reverse();
                assert_eq!(walked, asc, "{session} limit {limit} kinds {kinds:?} roles {roles:?}");
            }
        }
    }
}

#[test]
fn verify_names_undecodable_misplaced_and_orphaned_records() {
    let store = Arc::new(MemoryStore::new());
    let db = Engram::with_store(store.clone(), Options::default()).expect("open");
    db.append(DEFAULT_TENANT, "a", "s", vec![NewEvent::message(Role::User, "hi")], AppendOptions::default())
        .expect("append");
    let clean = db.verify().expect("verify");
    assert!(clean.is_ok(), "{clean:?}");
    assert_eq!(clean.by_kind.get("Event"), Some(&1));
    // An event of a session that was never created, one above the head, and a key of no
    // known shape.
    let good = store.get(Space::Data, &engram_core::keys::event(DEFAULT_TENANT, "a", "s", 1)).expect("get").expect("v");
    store.put_raw(Space::Data, &engram_core::keys::event(DEFAULT_TENANT, "a", "ghost", 1), good.clone());
    store.put_raw(Space::Data, &engram_core::keys::event(DEFAULT_TENANT, "a", "s", 9), good);
    store.put_raw(Space::Meta, b"Zzz", vec![1, 2, 3]);
    let report = db.verify().expect("verify");
    let reasons: Vec<&str> = report.problems.iter().map(|p| p.reason.as_str()).collect();
    assert_eq!(report.problems.len(), 4, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("stored under seq 9 says it is seq 1")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("does not exist")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("above its session's head")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("unknown meta key")), "{reasons:?}");
}

/// Stored embedding bytes that are not whole `f32`s decode (prost takes any length), so
/// every reader checks them: verify names the key, history and dump fail with corruption.
#[test]
fn an_embedding_of_partial_floats_is_corruption_everywhere() {
    let store = Arc::new(MemoryStore::new());
    let options = Options { index: IndexOptions { enabled: false, ..IndexOptions::default() }, ..Options::default() };
    let db = Engram::with_store(store.clone(), options).expect("open");
    db.append(DEFAULT_TENANT, "a", "s", vec![NewEvent::message(Role::User, "hi")], AppendOptions::default())
        .expect("append");
    let key = engram_core::keys::event(DEFAULT_TENANT, "a", "s", 1);
    let bytes = store.get(Space::Data, &key).expect("get").expect("stored");
    let mut record: engram_core::records::EventRecord = engram::storage::frame::decode(&bytes).expect("decodes");
    record.embedding = vec![0, 0, 128, 63, 7];
    store.put_raw(Space::Data, &key, engram::storage::frame::encode(&record));
    let report = db.verify().expect("verify");
    let reasons: Vec<&str> = report.problems.iter().map(|p| p.reason.as_str()).collect();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains("embedding of 5 bytes is not whole f32s"), "{reasons:?}");
    let read = db.history(DEFAULT_TENANT, "a", "s", &HistoryQuery::default());
    assert!(matches!(read, Err(Error::Corruption { .. })), "{read:?}");
    let mut out = Vec::new();
    let dumped = db.dump(&DumpFilter::default(), &mut out);
    assert!(matches!(dumped, Err(Error::Corruption { .. })), "{dumped:?}");
}

/// `history_cached` answers as `history` when everything it reads is in memory, and says
/// `None`, not a short or empty page, when it would need a file.
#[test]
fn history_from_memory_answers_as_history_or_not_at_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_700_000_000_000);
    let queries = [
        HistoryQuery::default(),
        HistoryQuery::last(3),
        HistoryQuery { after: Some(2), limit: 2, ..HistoryQuery::default() },
        HistoryQuery { roles: vec![Role::Assistant], ..HistoryQuery::default() },
    ];
    {
        let db = Engram::open(dir.path(), options(&clock)).expect("open");
        append(&db, "chat", &["one", "two", "three", "four", "five"]);
        db.fork_session(T, "alice", "chat", Some(4), "alt", SessionConfig::default()).expect("fork");
        db.append(T, "alice", "alt", vec![msg(Role::Assistant, "six")], AppendOptions::default()).expect("append");
        for session in ["chat", "alt"] {
            for q in &queries {
                let cached = db.history_cached(T, "alice", session, q).expect("cached");
                assert_eq!(cached, Some(db.history(T, "alice", session, q).expect("history")), "{session} {q:?}");
            }
        }
        assert!(matches!(db.history_cached(T, "alice", "nope", &queries[0]), Err(Error::NotFound { .. })));
        assert!(matches!(
            db.history_cached(T, "alice", "chat", &HistoryQuery { limit: 0, ..HistoryQuery::default() }),
            Err(Error::InvalidArgument { .. })
        ));
    }
    // Reopened: the events are in table files and the block cache is cold.
    let db = Engram::open(dir.path(), options(&clock)).expect("reopen");
    assert_eq!(db.history_cached(T, "alice", "alt", &queries[0]).expect("cold"), None);
    let page = db.history(T, "alice", "alt", &queries[0]).expect("history");
    assert_eq!(page.events.len(), 5);
    assert_eq!(db.history_cached(T, "alice", "alt", &queries[0]).expect("warm"), Some(page));
}

/// `get_state_cached` answers as `get_state` from memory, and `None` when the document
/// is in a cold block.
#[test]
fn state_from_memory_answers_as_get_state_or_not_at_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_700_000_000_000);
    let scope = StateScope::Session { identity: "alice", session: "chat" };
    {
        let db = Engram::open(dir.path(), options(&clock)).expect("open");
        append(&db, "chat", &["hi"]);
        db.put_state(T, scope, "task", json!({"step": 1}), StatePrecondition::Absent).expect("put");
        let doc = db.get_state(T, scope, "task").expect("get");
        assert!(doc.is_some());
        assert_eq!(db.get_state_cached(T, scope, "task").expect("cached"), Some(doc));
        assert_eq!(db.get_state_cached(T, scope, "nothing").expect("absent"), Some(None));
        assert!(matches!(db.get_state_cached(T, scope, ""), Err(Error::InvalidArgument { .. })));
    }
    let db = Engram::open(dir.path(), options(&clock)).expect("reopen");
    assert_eq!(db.get_state_cached(T, scope, "task").expect("cold"), None);
    let doc = db.get_state(T, scope, "task").expect("get");
    assert_eq!(db.get_state_cached(T, scope, "task").expect("warm"), Some(doc));
}

/// `history_cached` gives up, rather than answering short, when only part of what it
/// needs is in memory, and when it would read more than its budget.
#[test]
fn history_from_memory_gives_up_on_cold_blocks_and_past_its_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(1_700_000_000_000);
    let turn = "x".repeat(300);
    {
        let db = Engram::open(dir.path(), options(&clock)).expect("open");
        db.append(T, "alice", "long", vec![msg(Role::Assistant, "first")], AppendOptions::default()).expect("append");
        for _ in 0..30 {
            let events = (0..100).map(|_| msg(Role::User, &turn)).collect();
            db.append(T, "alice", "long", events, AppendOptions::default()).expect("append");
        }
        // ~1 MB of turns, all in memory: a filter that must step over them all reads past
        // the budget.
        let only_assistant = HistoryQuery { roles: vec![Role::Assistant], ..HistoryQuery::default() };
        assert_eq!(db.history_cached(T, "alice", "long", &only_assistant).expect("over budget"), None);
        assert_eq!(db.history(T, "alice", "long", &only_assistant).expect("history").events.len(), 1);
        assert!(db.history_cached(T, "alice", "long", &HistoryQuery::last(50)).expect("small").is_some());
    }
    // Reopened, the newest page read once: the oldest events are still in cold blocks.
    let db = Engram::open(dir.path(), options(&clock)).expect("reopen");
    let newest = db.history(T, "alice", "long", &HistoryQuery::last(20)).expect("history");
    assert_eq!(db.history_cached(T, "alice", "long", &HistoryQuery::last(20)).expect("warm"), Some(newest));
    let oldest = HistoryQuery { limit: 20, ..HistoryQuery::default() };
    assert_eq!(db.history_cached(T, "alice", "long", &oldest).expect("cold"), None);
    assert_eq!(db.history(T, "alice", "long", &oldest).expect("history").events[0].text.as_deref(), Some("first"));
}

#[test]
fn one_event_can_be_deleted_leaving_a_gap() {
    let (db, _) = mem();
    append(&db, "chat", &["one", "two", "three"]);
    let big = "b".repeat(40_000);
    let r = db.append(T, "alice", "chat", vec![msg(Role::Tool, &big)], AppendOptions::default()).expect("append");
    let gone = db.delete_event(T, "alice", "chat", 2).expect("delete");
    assert_eq!(gone.text.as_deref(), Some("two"));
    let page = db.history(T, "alice", "chat", &HistoryQuery::default()).expect("history");
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 3, 4]);
    // The next append continues after the head: sequence numbers are never reused.
    assert_eq!(append(&db, "chat", &["five"]).first_seq, 5);
    assert!(matches!(db.delete_event(T, "alice", "chat", 2), Err(Error::NotFound { .. })));
    assert!(matches!(db.delete_event(T, "alice", "chat", 0), Err(Error::NotFound { .. })));
    assert!(matches!(db.delete_event(T, "alice", "chat", 99), Err(Error::NotFound { .. })));
    assert!(matches!(db.delete_event(T, "alice", "nope", 1), Err(Error::NotFound { .. })));
    // The last reference to a blob takes the blob with it.
    let sha =
        db.history(T, "alice", "chat", &HistoryQuery::default()).expect("h").events[2].blob.clone().expect("blob");
    db.delete_event(T, "alice", "chat", r.first_seq).expect("delete blob event");
    assert!(matches!(db.get_blob(T, &sha.sha256), Err(Error::NotFound { .. })));
    // A fork's inherited events belong to the session that holds them.
    db.fork_session(T, "alice", "chat", Some(3), "alt", SessionConfig::default()).expect("fork");
    assert!(matches!(db.delete_event(T, "alice", "alt", 1), Err(Error::Conflict(_))));
    let changes = db.changes(0, 1000).expect("changes");
    assert!(changes.iter().any(|c| c.op == ChangeOp::EventsRemoved && c.removed == [2]));
    assert!(db.verify().expect("verify").is_ok());
}

#[test]
fn session_metadata_can_be_replaced() {
    let (db, _) = mem();
    append(&db, "chat", &["hi"]);
    let mut metadata = JsonMap::new();
    metadata.insert("topic".into(), json!("travel"));
    let s = db.set_session_metadata(T, "alice", "chat", metadata.clone()).expect("metadata");
    assert_eq!(s.metadata, metadata);
    assert_eq!(db.get_session(T, "alice", "chat").expect("get").metadata, metadata);
    let too_big: JsonMap = (0..100).map(|i| (format!("k{i}"), json!(i))).collect();
    assert!(matches!(
        db.set_session_metadata(T, "alice", "chat", too_big),
        Err(Error::InvalidArgument { field, .. }) if field == "metadata"
    ));
    assert!(matches!(db.set_session_metadata(T, "alice", "nope", JsonMap::new()), Err(Error::NotFound { .. })));
}

#[test]
fn close_waits_for_the_other_handles_and_frees_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Engram::open(dir.path(), Options::default()).expect("open");
    let held = db.clone();
    // Another handle still open: closing gives up after the timeout.
    let timed_out = db.clone().close(std::time::Duration::from_millis(20));
    assert!(matches!(timed_out, Err(Error::Locked(_))), "{timed_out:?}");
    let holder = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(held);
    });
    db.close(std::time::Duration::from_secs(10)).expect("closed once the other handle went");
    holder.join().expect("holder");
    // The directory is free at once.
    Engram::open(dir.path(), Options::default()).expect("reopen right after close");
}

#[test]
fn a_tenant_update_refused_in_part_changes_nothing() {
    let (db, _) = mem();
    let ttl = RetentionPolicy { ttl_ms: Some(60_000), ..Default::default() };
    // No local embedder is loaded, so switching to it is refused: the TTL must not land.
    match db.update_tenant(T, Some(ttl.clone()), Some(EmbedderKind::Local)) {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "embedder"),
        other => panic!("expected the embedder refused, got {other:?}"),
    }
    let tenant = db.get_tenant(T).expect("tenant");
    assert_eq!((tenant.retention.ttl_ms, tenant.embedder), (None, EmbedderKind::None));
    assert!(matches!(db.update_tenant(T, None, None), Err(Error::InvalidArgument { .. })));
    let updated = db.update_tenant(T, Some(ttl), Some(EmbedderKind::None)).expect("both");
    assert_eq!((updated.retention.ttl_ms, updated.embedder), (Some(60_000), EmbedderKind::None));
    assert!(matches!(db.update_tenant("nobody", None, Some(EmbedderKind::None)), Err(Error::NotFound { .. })));
}
