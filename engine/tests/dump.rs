//! Dump and restore: JSON lines out, the same store back. `dump -> restore -> dump` is
//! byte-identical and searches answer alike; filters select; a forgotten identity leaves
//! nothing in a dump; malformed dumps are typed errors naming the line.

use engram::*;
use serde_json::json;

const T: &str = DEFAULT_TENANT;

fn options() -> Options {
    Options { retention_sweep_interval_ms: None, ..Options::default() }
}

fn dump(db: &Engram, filter: &DumpFilter) -> String {
    let mut out = Vec::new();
    db.dump(filter, &mut out).expect("dump");
    String::from_utf8(out).expect("utf-8")
}

fn trip_events() -> Vec<NewEvent> {
    vec![
        NewEvent { embedding: Some(vec![1.0, 0.5]), ..NewEvent::message(Role::User, "where is the ferry to Oban") },
        NewEvent {
            name: Some("timetable".into()),
            call_id: Some("c1".into()),
            ..NewEvent::with_data(EventKind::ToolCall, json!({"route": "Oban ferry"}))
        },
        NewEvent::message(Role::Tool, "x".repeat(40_000)),
    ]
}

/// A store with every kind of record: two tenants, forks, blobs, tool calls, vectors,
/// idempotency keys, state of both scopes, memories with history and a deletion.
fn populate(db: &Engram) {
    db.create_tenant("acme", TenantConfig { vector_dim: Some(2), ..TenantConfig::default() }).expect("tenant");
    let opts = AppendOptions { idempotency_key: Some("req-1".into()), ..AppendOptions::default() };
    db.append(T, "alice", "trip", trip_events(), opts).expect("append");
    db.fork_session(T, "alice", "trip", Some(2), "trip-b", SessionConfig::default()).expect("fork");
    db.append(T, "alice", "trip-b", vec![NewEvent::message(Role::User, "and the bus?")], AppendOptions::default())
        .expect("append");
    db.append("acme", "bob", "s", vec![NewEvent::message(Role::User, "acme ferry notes")], AppendOptions::default())
        .expect("append");
    db.put_state(
        T,
        StateScope::Session { identity: "alice", session: "trip" },
        "plan",
        json!({"day": 2}),
        StatePrecondition::None,
    )
    .expect("state");
    db.put_state(
        T,
        StateScope::Identity { identity: "alice" },
        "prefs",
        json!({"lang": "gd"}),
        StatePrecondition::None,
    )
    .expect("state");
    let m = db
        .put_memory(T, "alice", NewMemory { embedding: Some(vec![0.2, 0.9]), ..NewMemory::fact("likes ferries") })
        .expect("memory");
    db.update_memory(T, "alice", &m.id, NewMemory::fact("loves ferries")).expect("update");
    let gone = db.put_memory(T, "alice", NewMemory::fact("temporary")).expect("memory");
    db.delete_memory(T, "alice", &gone.id).expect("delete");
    db.append(T, "carol", "c", vec![NewEvent::message(Role::User, "carol's ferry secret")], AppendOptions::default())
        .expect("append");
}

/// The hits in order. (Scores may differ: BM25 statistics of the original index still count
/// deleted documents until its segments merge; the restored index is built fresh.)
fn search_keys(db: &Engram, tenant: &str, q: &SearchQuery) -> Vec<(String, u64, String)> {
    db.search(tenant, q)
        .expect("search")
        .hits
        .iter()
        .map(|h| match &h.item {
            HitItem::Event { identity, event } => (identity.clone(), event.seq, event.session.clone()),
            HitItem::Memory { identity, memory } => (identity.clone(), memory.version, memory.id.clone()),
        })
        .collect()
}

#[test]
fn dump_restore_dump_is_identical_and_searches_agree() {
    let a_dir = tempfile::tempdir().expect("tempdir");
    let b_dir = tempfile::tempdir().expect("tempdir");
    let a = Engram::open(a_dir.path(), options()).expect("open a");
    populate(&a);
    let first = dump(&a, &DumpFilter::default());
    let header: serde_json::Value = serde_json::from_str(first.lines().next().expect("header")).expect("json");
    assert_eq!((header["engram_dump"].as_u64(), header["format_version"].as_u64()), (Some(2), Some(1)));
    assert_eq!(header["schema"]["event"]["key"], json!(["tenant", "identity", "session", "seq"]));
    assert!(header["schema"]["event"]["record"].as_array().is_some_and(|f| f.contains(&json!("embedding"))));
    for kind in [
        "tenant",
        "identity",
        "session",
        "event",
        "idempotency",
        "blob_ref",
        "session_state",
        "identity_state",
        "memory",
        "memory_version",
        "blob",
    ] {
        assert!(first.contains(&format!("\"type\":\"{kind}\"")), "no {kind} line");
    }
    let b = Engram::open(b_dir.path(), options()).expect("open b");
    let stats = b.restore_dump(&mut first.as_bytes()).expect("restore");
    assert_eq!(stats.records as usize, first.lines().count() - 2, "all lines but the header and the trailer");
    let second = dump(&b, &DumpFilter::default());
    assert_eq!(first, second, "dump -> restore -> dump differs");
    assert!(b.verify().expect("verify").is_ok());
    // The restored store answers like the original: history, blobs, forks, idempotency.
    let page = b.history(T, "alice", "trip-b", &HistoryQuery::default()).expect("history");
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    let opts = AppendOptions { idempotency_key: Some("req-1".into()), ..AppendOptions::default() };
    let retry = b.append(T, "alice", "trip", trip_events(), opts).expect("retry");
    assert!(retry.deduplicated);
    for (tenant, q) in [
        (T, SearchQuery { consistent: true, k: 20, ..SearchQuery::text("ferry") }),
        (T, SearchQuery { consistent: true, vector: Some(vec![1.0, 0.4]), ..SearchQuery::text("ferry Oban") }),
        ("acme", SearchQuery { consistent: true, ..SearchQuery::text("ferry") }),
    ] {
        assert_eq!(search_keys(&a, tenant, &q), search_keys(&b, tenant, &q), "{q:?}");
    }
}

#[test]
fn filters_select_and_forgotten_identities_leave_nothing() {
    let db = Engram::open_in_memory(options()).expect("open");
    populate(&db);
    let alice =
        dump(&db, &DumpFilter { tenant: Some(T.into()), identity: Some("alice".into()), ..DumpFilter::default() });
    assert!(alice.contains("ferry to Oban") && !alice.contains("carol") && !alice.contains("acme ferry"));
    let session = dump(
        &db,
        &DumpFilter { identity: Some("alice".into()), session: Some("trip-b".into()), ..DumpFilter::default() },
    );
    assert!(
        session.contains("and the bus") && !session.contains("loves ferries") && !session.contains("ferry to Oban")
    );
    let tools = dump(&db, &DumpFilter { kinds: vec![EventKind::ToolCall], no_vectors: true, ..DumpFilter::default() });
    assert!(tools.contains("timetable") && !tools.contains("where is the ferry"));
    assert!(!tools.contains("[0.2,0.9]") && tools.contains("\"embedding\":[]"), "vectors left in");
    let no_blobs = dump(&db, &DumpFilter { no_blobs: true, ..DumpFilter::default() });
    assert!(!no_blobs.contains("\"type\":\"blob\"") && no_blobs.contains("\"blob_sha256\""));
    let other = Engram::open_in_memory(options()).expect("open");
    assert!(matches!(other.restore_dump(&mut no_blobs.as_bytes()), Err(Error::InvalidArgument { .. })));
    db.forget_identity(T, "carol").expect("forget");
    let all = dump(&db, &DumpFilter::default());
    assert!(!all.contains("carol"), "a forgotten identity left something in the dump");
}

/// A filtered dump carries some of a blob's references: its import counts just those, so
/// it verifies clean and deleting what came along deletes the blob.
#[test]
fn a_filtered_dump_of_shared_blobs_imports_with_its_own_counts() {
    let db = Engram::open_in_memory(options()).expect("open");
    let big = "the full timetable, every ferry of the week\n".repeat(500);
    let output =
        |text: &str| NewEvent { kind: Some(EventKind::ToolResult), text: Some(text.into()), ..NewEvent::default() };
    for (who, session) in [("alice", "a1"), ("alice", "a2"), ("bob", "b1")] {
        let events = vec![NewEvent::message(Role::User, "timetable?"), output(&big)];
        db.append(T, who, session, events, AppendOptions::default()).expect("append");
    }
    let filters = [
        DumpFilter { identity: Some("alice".into()), ..DumpFilter::default() },
        DumpFilter { identity: Some("alice".into()), session: Some("a2".into()), ..DumpFilter::default() },
        // The blob's events are left out: so are their references and the blob.
        DumpFilter { kinds: vec![EventKind::Message], ..DumpFilter::default() },
    ];
    for filter in filters {
        let text = dump(&db, &filter);
        let copy = Engram::open_in_memory(options()).expect("open");
        copy.restore_dump(&mut text.as_bytes()).expect("restore");
        let report = copy.verify().expect("verify");
        assert!(report.problems.is_empty(), "{filter:?}: {:?}", report.problems);
        for identity in copy.list_identities(T, &ListQuery::default()).expect("identities").items {
            copy.forget_identity(T, &identity.id).expect("forget");
        }
        let left = dump(&copy, &DumpFilter::default());
        assert!(!left.contains("\"type\":\"blob"), "{filter:?}: a blob outlived its references");
    }
}

#[test]
fn malformed_dumps_are_refused_with_the_line() {
    let db = Engram::open_in_memory(options()).expect("open");
    let invalid = |text: &str, line: &str| match db.restore_dump(&mut text.as_bytes()) {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, line, "{text}"),
        other => panic!("{text}: {other:?}"),
    };
    invalid("", "line 1");
    invalid("{\"engram_dump\": 9, \"format_version\": 1, \"schema\": {}, \"filter\": {}}\n", "line 1");
    let header = "{\"engram_dump\": 1, \"format_version\": 1, \"schema\": {}, \"filter\": {}}\n";
    invalid(&format!("{header}not json\n"), "line 2");
    invalid(
        &format!("{header}{{\"type\": \"spaceship\", \"key\": {{\"tenant\": \"default\"}}, \"record\": {{}}}}\n"),
        "line 2",
    );
    // A record that exists already is a conflict.
    db.append(T, "alice", "s", vec![NewEvent::message(Role::User, "hi")], AppendOptions::default()).expect("append");
    let mut out = Vec::new();
    db.dump(&DumpFilter { identity: Some("alice".into()), ..DumpFilter::default() }, &mut out).expect("dump");
    assert!(matches!(db.restore_dump(&mut out.as_slice()), Err(Error::Conflict(_))));
}

/// A dump ends with a trailer (its record count and the CRC32 of what comes before it): a
/// dump cut short, damaged, miscounted or with lines after its end is refused at its end,
/// naming the line. A version 1 dump (no trailer) still restores.
#[test]
fn a_dump_cut_short_or_damaged_is_refused() {
    let a = Engram::open_in_memory(options()).expect("open a");
    populate(&a);
    let dumped = dump(&a, &DumpFilter::default());
    let lines: Vec<&str> = dumped.lines().collect();
    let n = lines.len();
    let trailer: serde_json::Value = serde_json::from_str(lines[n - 1]).expect("json");
    assert_eq!(trailer["engram_dump_end"]["records"].as_u64(), Some(n as u64 - 2), "{trailer}");
    let refused = |text: String, line: usize, says: &str| {
        let b = Engram::open_in_memory(options()).expect("open b");
        match b.restore_dump(&mut text.as_bytes()) {
            Err(Error::InvalidArgument { field, message }) => {
                assert_eq!(field, format!("line {line}"), "{message}");
                assert!(message.contains(says), "{message}");
            }
            other => panic!("expected a refusal naming line {line}, got {other:?}"),
        }
    };
    let join = |lines: &[&str]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    // Cut short: just before the trailer, and earlier; in the middle of a line, that line
    // is not JSON.
    refused(join(&lines[..n - 1]), n, "cut short (nothing was written)");
    refused(join(&lines[..n - 3]), n - 2, "cut short");
    let whole = join(&lines[..n - 1]);
    refused(whole[..whole.len() - 10].to_string(), n - 1, "EOF");
    // Damaged: one letter of an event's text changed, still valid JSON.
    let at = lines.iter().position(|l| l.contains("\"type\":\"event\"")).expect("an event line");
    let damaged = lines[at].replacen("\"text\":\"", "\"text\":\"X", 1);
    assert_ne!(damaged, lines[at]);
    let mut edited = lines.clone();
    edited[at] = &damaged;
    refused(join(&edited), n, "damaged");
    // A line dropped from the middle: counted short (and the sum differs too).
    let mut dropped = lines.clone();
    dropped.remove(at);
    refused(join(&dropped), n - 1, "counts");
    // Anything after the trailer.
    refused(format!("{dumped}{}\n", lines[at]), n + 1, "follows");

    // The same dump as version 1, without its trailer, restores.
    let v1 = join(&lines[..n - 1]).replacen("{\"engram_dump\":2", "{\"engram_dump\":1", 1);
    let b = Engram::open_in_memory(options()).expect("open b");
    let stats = b.restore_dump(&mut v1.as_bytes()).expect("a version 1 dump");
    assert_eq!(stats.records, n as u64 - 2);
    assert_eq!(dump(&b, &DumpFilter::default()), dumped, "restored from version 1, dumped as version 2");
    // Line endings are not part of the check: a copy with CRLF line ends restores.
    let c = Engram::open_in_memory(options()).expect("open c");
    c.restore_dump(&mut dumped.replace('\n', "\r\n").as_bytes()).expect("CRLF line ends");
    assert_eq!(dump(&c, &DumpFilter::default()), dumped);
}

/// A restore that fails after writing some batches leaves those records searchable (the
/// indexes are rebuilt on the way out), and names the conflict.
#[test]
fn a_restore_refused_midway_keeps_what_it_wrote_searchable() {
    let a = Engram::open_in_memory(options()).expect("open a");
    for batch in 0..2 {
        let turns = (0..600).map(|i| NewEvent::message(Role::User, format!("turn {batch}.{i} of the quokka")));
        a.append(T, "alice", "a", turns.collect(), AppendOptions::default()).expect("append");
    }
    let big = "x".repeat(40_000);
    a.append(T, "alice", "a", vec![NewEvent::message(Role::Tool, big.clone())], AppendOptions::default())
        .expect("append");
    let dumped = dump(&a, &DumpFilter::default());
    // The target holds the same large text already: its blob, which a dump writes last,
    // conflicts after the first batches of 1000 records are written.
    let b = Engram::open_in_memory(options()).expect("open b");
    b.append(T, "bob", "x", vec![NewEvent::message(Role::Tool, big)], AppendOptions::default()).expect("append");
    match b.restore_dump(&mut dumped.as_bytes()) {
        Err(Error::Conflict(message)) => assert!(message.contains("exists already"), "{message}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let kept = b.history(T, "alice", "a", &HistoryQuery { limit: 1000, ..HistoryQuery::default() }).expect("history");
    assert!((900..1201).contains(&kept.events.len()), "the first batch stays written: {}", kept.events.len());
    let query = SearchQuery { text: Some("quokka".into()), consistent: true, k: 5, ..SearchQuery::default() };
    assert_eq!(b.search(T, &query).expect("search").hits.len(), 5, "what was written is searchable");
}
