//! The derived indexes and search: BM25 order, exact and HNSW vector search, hybrid fusion,
//! filters and isolation, read-your-writes, deletion reaching the indexes, and catch-up or
//! rebuild after reopening.

use engram::storage;
use engram::*;
use serde_json::json;
use std::sync::Arc;

#[allow(dead_code)]
#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

const T: &str = DEFAULT_TENANT;

fn options() -> Options {
    Options { retention_sweep_interval_ms: None, ..Options::default() }
}

fn mem() -> Engram {
    Engram::open_in_memory(options()).expect("open")
}

fn say(db: &Engram, identity: &str, session: &str, text: &str) -> AppendResult {
    db.append(T, identity, session, vec![NewEvent::message(Role::User, text)], AppendOptions::default())
        .expect("append")
}

fn with_vector(text: &str, v: Vec<f32>) -> NewEvent {
    NewEvent { embedding: Some(v), ..NewEvent::message(Role::User, text) }
}

fn consistent(mut q: SearchQuery) -> SearchQuery {
    q.consistent = true;
    q
}

fn event_texts(results: &SearchResults) -> Vec<String> {
    results
        .hits
        .iter()
        .map(|h| match &h.item {
            HitItem::Event { event, .. } => event.text.clone().unwrap_or_default(),
            HitItem::Memory { memory, .. } => memory.text.clone(),
        })
        .collect()
}

fn event_seqs(results: &SearchResults) -> Vec<u64> {
    results
        .hits
        .iter()
        .filter_map(|h| match &h.item {
            HitItem::Event { event, .. } => Some(event.seq),
            HitItem::Memory { .. } => None,
        })
        .collect()
}

#[test]
fn a_search_right_after_an_append_finds_the_turn() {
    let db = mem();
    let r = say(&db, "alice", "s", "my favourite colour is turquoise");
    let q = SearchQuery { min_seq: Some(r.change_seq), ..SearchQuery::text("turquoise") };
    let found = db.search(T, &q).expect("search");
    assert_eq!(event_texts(&found), vec!["my favourite colour is turquoise"]);
    assert!(found.indexed_seq >= r.change_seq);
    let again = say(&db, "alice", "s", "turquoise again");
    let found = db.search(T, &consistent(SearchQuery::text("turquoise"))).expect("search");
    assert_eq!(found.hits.len(), 2);
    assert!(found.indexed_seq >= again.change_seq);
}

#[test]
fn bm25_orders_a_fixed_corpus() {
    let db = mem();
    for text in [
        "the cat sat on the mat",
        "dogs and cats are pets; a cat purrs, a cat sleeps",
        "stock markets fell sharply today",
        "a cat",
        "nothing to see here",
    ] {
        say(&db, "alice", "s", text);
    }
    let found = db.search(T, &consistent(SearchQuery::text("cat"))).expect("search");
    // Term frequency and length normalization: the short doc with the term first, then the
    // one that repeats it, then the longer single mention. Stemming matches "cats".
    assert_eq!(
        event_texts(&found),
        vec!["a cat", "dogs and cats are pets; a cat purrs, a cat sleeps", "the cat sat on the mat"]
    );
    let scores: Vec<f32> = found.hits.iter().map(|h| h.score).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert!(found.hits.iter().all(|h| h.scores.text.is_some() && h.scores.vector.is_none()));
    // Two words: the document with both ranks first.
    let found = db.search(T, &consistent(SearchQuery::text("stock cat"))).expect("search");
    assert_eq!(found.hits.len(), 4);
    let found = db.search(T, &consistent(SearchQuery::text("markets today"))).expect("search");
    assert_eq!(event_texts(&found), vec!["stock markets fell sharply today"]);
    // Query syntax characters are plain words, never a parse error.
    assert!(db.search(T, &consistent(SearchQuery::text("cat AND (\"mat:"))).expect("search").hits.len() >= 3);
    assert!(db.search(T, &consistent(SearchQuery::text("...,;"))).expect("search").hits.is_empty());
}

#[test]
fn every_vector_finds_itself_exactly_and_through_hnsw() {
    let mut rng = Rng::seeded("every_vector_finds_itself");
    let mut opts = options();
    opts.index.vector.exact_max = 300;
    let db = Engram::open_in_memory(opts).expect("open");
    let dim = 24;
    let mut vectors = Vec::new();
    for chunk in 0..10 {
        let events: Vec<NewEvent> = (0..100)
            .map(|i| {
                let v = rng.vector(dim);
                vectors.push(v.clone());
                with_vector(&format!("point {}", chunk * 100 + i), v)
            })
            .collect();
        db.append(T, &format!("user-{}", chunk % 3), "s", events, AppendOptions::default()).expect("append");
    }
    db.wait_for_indexes().expect("wait");
    db.wait_for_vector_graphs().expect("graphs");
    let stats = db.index_stats().expect("stats");
    assert_eq!(stats.vectors.points, 1000);
    assert_eq!(stats.vectors.graphs, 1, "a graph past exact_max");
    for (i, v) in vectors.iter().enumerate() {
        let found = db.search(T, &SearchQuery { k: 1, over: SearchOver::Events, ..SearchQuery::vector(v.clone()) });
        let found = found.expect("search");
        assert_eq!(event_texts(&found), vec![format!("point {i}")], "vector {i} through HNSW");
        // One identity (about 333 points, over exact_max) and one small scope.
        let identity = format!("user-{}", (i / 100) % 3);
        let scoped = SearchQuery { k: 1, identity: Some(identity), ..SearchQuery::vector(v.clone()) };
        let found = db.search(T, &scoped).expect("search");
        assert_eq!(event_texts(&found), vec![format!("point {i}")], "vector {i} in its identity");
        let hit = &found.hits[0];
        assert!((hit.scores.vector.expect("vector score") - 1.0).abs() < 1e-4, "cosine of itself");
    }
}

#[test]
fn deletes_past_the_tombstone_ratio_rebuild_the_graph() {
    let mut rng = Rng::seeded("tombstone_rebuild");
    let mut opts = options();
    opts.index.vector.exact_max = 100;
    let db = Engram::open_in_memory(opts).expect("open");
    let dim = 16;
    let mut kept = Vec::new();
    for session in ["keep", "drop"] {
        let events: Vec<NewEvent> = (0..200)
            .map(|i| {
                let v = rng.vector(dim);
                if session == "keep" {
                    kept.push(v.clone());
                }
                with_vector(&format!("{session} {i}"), v)
            })
            .collect();
        db.append(T, "alice", session, events, AppendOptions::default()).expect("append");
    }
    db.wait_for_indexes().expect("wait");
    db.wait_for_vector_graphs().expect("graphs");
    assert_eq!(db.index_stats().expect("stats").vectors.graph_points, 400);
    db.delete_session(T, "alice", "drop").expect("delete");
    db.wait_for_indexes().expect("wait");
    db.wait_for_vector_graphs().expect("graphs");
    let stats = db.index_stats().expect("stats").vectors;
    assert_eq!((stats.points, stats.graph_points), (200, 200), "rebuilt without the tombstones: {stats:?}");
    for (i, v) in kept.iter().enumerate() {
        let found = db.search(T, &SearchQuery { k: 1, ..SearchQuery::vector(v.clone()) }).expect("search");
        assert_eq!(event_texts(&found), vec![format!("keep {i}")]);
    }
}

#[test]
fn hnsw_recall_at_10_is_at_least_095_of_exact() {
    let mut rng = Rng::seeded("hnsw_recall");
    let dim = 32;
    let n = 4000;
    let data: Vec<Vec<f32>> = (0..n).map(|_| rng.vector(dim)).collect();
    let load = |exact_max: usize| {
        let mut opts = options();
        opts.index.vector.exact_max = exact_max;
        let db = Engram::open_in_memory(opts).expect("open");
        for (c, chunk) in data.chunks(500).enumerate() {
            let events = chunk.iter().enumerate().map(|(i, v)| with_vector(&format!("{}", c * 500 + i), v.clone()));
            db.append(T, "alice", "s", events.collect(), AppendOptions::default()).expect("append");
        }
        db.wait_for_indexes().expect("wait");
        db.wait_for_vector_graphs().expect("graphs");
        db
    };
    let exact = load(usize::MAX);
    let hnsw = load(100);
    assert_eq!(hnsw.index_stats().expect("stats").vectors.graphs, 1);
    let mut found = 0;
    let queries = 100;
    for _ in 0..queries {
        let q = SearchQuery { k: 10, ..SearchQuery::vector(rng.vector(dim)) };
        let truth = event_seqs(&exact.search(T, &q).expect("exact"));
        let approx = event_seqs(&hnsw.search(T, &q).expect("hnsw"));
        found += approx.iter().filter(|s| truth.contains(s)).count();
    }
    let recall = found as f64 / (queries * 10) as f64;
    eprintln!("recall@10 = {recall:.3}");
    assert!(recall >= 0.95, "recall@10 {recall}");
}

#[test]
fn hybrid_search_fuses_and_explains_each_hit() {
    let db = mem();
    let events = vec![
        with_vector("the launch is on friday", vec![1.0, 0.0, 0.0]),
        with_vector("groceries: milk and eggs", vec![0.0, 1.0, 0.0]),
        with_vector("friday dinner with sam", vec![0.0, 0.0, 1.0]),
    ];
    db.append(T, "alice", "s", events, AppendOptions::default()).expect("append");
    let q = SearchQuery {
        text: Some("friday".into()),
        fusion: Fusion::Rrf { k: 60.0 },
        ..consistent(SearchQuery::vector(vec![0.9, 0.1, 0.0]))
    };
    let found = db.search(T, &q).expect("search");
    // BM25 prefers the shorter "friday dinner with sam"; the vector puts the launch first
    // and the dinner last: fused, the launch wins.
    assert_eq!(event_texts(&found)[0], "the launch is on friday");
    let top = &found.hits[0].scores;
    assert_eq!((top.text_rank, top.vector_rank), (Some(2), Some(1)));
    assert!((top.fused - (1.0 / 62.0 + 1.0 / 61.0)).abs() < 1e-6, "rrf with k = 60: {}", top.fused);
    for hit in &found.hits {
        let b = &hit.scores;
        let expected = b.text_rank.map_or(0.0, |r| 1.0 / (60.0 + r as f32))
            + b.vector_rank.map_or(0.0, |r| 1.0 / (60.0 + r as f32));
        assert!((b.fused - expected).abs() < 1e-6);
        assert_eq!(hit.score, b.fused);
    }
    let default = db.search(T, &SearchQuery { fusion: Fusion::default(), ..q.clone() }).expect("search");
    let top = &default.hits[0].scores;
    // Weighted 0.4: the launch is 1.0 by vector and (bm25 - min) / (max - min) by text.
    assert_eq!(Fusion::default(), Fusion::Weighted { alpha: 0.4 });
    assert!(top.fused >= 0.4 && top.fused <= 1.0, "{top:?}");
    let weighted = SearchQuery { fusion: Fusion::Weighted { alpha: 1.0 }, ..q.clone() };
    let found = db.search(T, &weighted).expect("search");
    assert_eq!(found.hits[0].scores.fused, 1.0, "alpha 1: the best vector normalizes to 1");
    let text_only = SearchQuery { fusion: Fusion::Weighted { alpha: 0.0 }, ..q };
    let found = db.search(T, &text_only).expect("search");
    assert_eq!(event_texts(&found)[0], "friday dinner with sam", "alpha 0: the text ranking alone");
    assert_eq!(found.hits[0].scores.fused, 1.0);
}

#[test]
fn recency_decay_prefers_newer_items_by_half_life() {
    let clock = ManualClock::new(1_000_000_000);
    let db = Engram::open_in_memory(Options { clock: clock.clone(), ..options() }).expect("open");
    say(&db, "alice", "s", "meeting notes old");
    clock.advance_ms(3_600_000);
    say(&db, "alice", "s", "meeting notes new");
    let q = SearchQuery { recency_half_life_ms: Some(3_600_000), ..consistent(SearchQuery::text("meeting notes")) };
    let found = db.search(T, &q).expect("search");
    assert_eq!(event_texts(&found), vec!["meeting notes new", "meeting notes old"]);
    let old = found.hits[1].scores.recency.expect("recency");
    assert!((old - 0.5).abs() < 1e-3, "one half-life old: {old}");
    assert_eq!(found.hits[0].scores.recency, Some(1.0));
}

#[test]
fn filters_scope_by_identity_session_kind_role_time_metadata_and_as_of() {
    let clock = ManualClock::new(10_000);
    let db = Engram::open_in_memory(Options { clock: clock.clone(), ..options() }).expect("open");
    let tagged = |text: &str, role: Role, topic: &str| NewEvent {
        metadata: Some(json!({"topic": topic}).as_object().expect("object").clone()),
        ..NewEvent::message(role, text)
    };
    db.append(T, "alice", "a1", vec![tagged("apple pie recipe", Role::User, "food")], AppendOptions::default())
        .expect("append");
    clock.advance_ms(1000);
    let mid = db
        .append(T, "alice", "a2", vec![tagged("apple stock price", Role::Assistant, "money")], AppendOptions::default())
        .expect("append");
    clock.advance_ms(1000);
    db.append(T, "bob", "b1", vec![tagged("apple orchard visit", Role::User, "food")], AppendOptions::default())
        .expect("append");
    db.append(
        T,
        "alice",
        "a1",
        vec![NewEvent {
            name: Some("lookup".into()),
            call_id: Some("c1".into()),
            ..NewEvent::with_data(EventKind::ToolCall, json!({"query": "apple nutrition"}))
        }],
        AppendOptions::default(),
    )
    .expect("append");
    db.put_memory(T, "alice", NewMemory::fact("alice likes apple pie")).expect("memory");
    let base = consistent(SearchQuery { k: 50, ..SearchQuery::text("apple") });
    let count = |q: SearchQuery| db.search(T, &q).expect("search").hits.len();
    assert_eq!(count(base.clone()), 5);
    assert_eq!(count(SearchQuery { identity: Some("alice".into()), ..base.clone() }), 4);
    assert_eq!(count(SearchQuery { identity: Some("bob".into()), ..base.clone() }), 1);
    assert_eq!(count(SearchQuery { identity: Some("carol".into()), ..base.clone() }), 0);
    let a1 = SearchQuery { identity: Some("alice".into()), sessions: vec!["a1".into()], ..base.clone() };
    assert_eq!(count(SearchQuery { over: SearchOver::Events, ..a1.clone() }), 2, "pie and the tool call");
    assert_eq!(count(SearchQuery { over: SearchOver::Memories, ..base.clone() }), 1);
    assert_eq!(count(SearchQuery { kinds: vec![EventKind::ToolCall], over: SearchOver::Events, ..base.clone() }), 1);
    assert_eq!(count(SearchQuery { roles: vec![Role::Assistant], over: SearchOver::Events, ..base.clone() }), 1);
    assert_eq!(count(SearchQuery { memory_kinds: vec![MemoryKind::Preference], ..base.clone() }), 4);
    let food = json!({"topic": "food"}).as_object().expect("object").clone();
    assert_eq!(count(SearchQuery { metadata: food, ..base.clone() }), 2);
    assert_eq!(count(SearchQuery { from_ms: Some(11_000), to_ms: Some(12_000), ..base.clone() }), 1);
    assert_eq!(count(SearchQuery { as_of: Some(mid.change_seq), ..base.clone() }), 2);
    // Another tenant sees none of it.
    db.create_tenant("other", TenantConfig::default()).expect("tenant");
    let found = db.search("other", &base).expect("search");
    assert!(found.hits.is_empty());
    assert!(matches!(db.search("missing", &base), Err(Error::NotFound { .. })));
}

#[test]
fn a_fork_searches_what_it_inherits_and_not_what_came_after() {
    let db = mem();
    say(&db, "alice", "main", "zebra one");
    say(&db, "alice", "main", "zebra two");
    db.fork_session(T, "alice", "main", Some(1), "fork", SessionConfig::default()).expect("fork");
    say(&db, "alice", "fork", "zebra three");
    let q = |session: &str| {
        consistent(SearchQuery {
            identity: Some("alice".into()),
            sessions: vec![session.into()],
            ..SearchQuery::text("zebra")
        })
    };
    let mut fork = event_texts(&db.search(T, &q("fork")).expect("fork"));
    fork.sort();
    assert_eq!(fork, vec!["zebra one", "zebra three"]);
    let mut main = event_texts(&db.search(T, &q("main")).expect("main"));
    main.sort();
    assert_eq!(main, vec!["zebra one", "zebra two"]);
    assert!(matches!(db.search(T, &q("nope")), Err(Error::NotFound { .. })));
}

#[test]
fn deletion_reaches_the_indexes() {
    let db = mem();
    let v = |x: f32| vec![x, 1.0 - x, 0.5];
    db.append(T, "alice", "s", vec![with_vector("secret walrus", v(0.9))], AppendOptions::default()).expect("a");
    db.append(T, "alice", "gone", vec![with_vector("walrus in a session", v(0.8))], AppendOptions::default())
        .expect("a");
    db.append(T, "bob", "s", vec![with_vector("bob walrus", v(0.1))], AppendOptions::default()).expect("a");
    let m = db
        .put_memory(T, "alice", NewMemory { embedding: Some(v(0.7)), ..NewMemory::fact("walrus memory v1") })
        .expect("memory");
    db.update_memory(T, "alice", &m.id, NewMemory::fact("seal memory v2")).expect("update");
    let text = consistent(SearchQuery { k: 20, ..SearchQuery::text("walrus") });
    let vector = consistent(SearchQuery { k: 20, ..SearchQuery::vector(v(0.9)) });
    assert_eq!(db.search(T, &text).expect("s").hits.len(), 3, "the superseded memory text is gone");
    assert_eq!(db.search(T, &vector).expect("s").hits.len(), 3, "the new version has no vector");
    db.delete_session(T, "alice", "gone").expect("delete");
    assert_eq!(db.search(T, &text).expect("s").hits.len(), 2);
    let seal = consistent(SearchQuery::text("seal"));
    assert_eq!(db.search(T, &seal).expect("s").hits.len(), 1);
    db.delete_memory(T, "alice", &m.id).expect("delete memory");
    assert!(db.search(T, &seal).expect("s").hits.is_empty());
    db.forget_identity(T, "alice").expect("forget");
    let left = db.search(T, &text).expect("s");
    assert_eq!(event_texts(&left), vec!["bob walrus"]);
    let left = db.search(T, &vector).expect("s");
    assert_eq!(event_texts(&left), vec!["bob walrus"]);
    // Nothing of alice is left in either index, not just hidden on read-back.
    let stats = db.index_stats().expect("stats");
    assert_eq!((stats.text_docs, stats.vectors.points), (1, 1));
}

#[test]
fn retention_removes_index_entries() {
    let clock = ManualClock::new(0);
    let db = Engram::open_in_memory(Options { clock: clock.clone(), ..options() }).expect("open");
    let policy = RetentionPolicy { keep_last: Some(2), ..RetentionPolicy::default() };
    db.create_session(T, "alice", "s", SessionConfig { retention: policy, ..SessionConfig::default() })
        .expect("session");
    for i in 0..5 {
        say(&db, "alice", "s", &format!("kiwi {i}"));
    }
    let found = db.search(T, &consistent(SearchQuery::text("kiwi"))).expect("search");
    let mut texts = event_texts(&found);
    texts.sort();
    assert_eq!(texts, vec!["kiwi 3", "kiwi 4"]);
    assert_eq!(db.index_stats().expect("stats").text_docs, 2);
}

#[test]
fn bad_searches_are_typed_errors() {
    let db = mem();
    db.append(T, "alice", "s", vec![with_vector("x", vec![1.0, 0.0])], AppendOptions::default()).expect("append");
    let invalid = |q: SearchQuery, field: &str| match db.search(T, &q) {
        Err(Error::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected invalid {field}, got {other:?}"),
    };
    invalid(SearchQuery::default(), "text");
    invalid(SearchQuery::vector(vec![1.0, 0.0, 0.0]), "vector");
    invalid(SearchQuery::vector(vec![f32::NAN, 0.0]), "vector[0]");
    invalid(SearchQuery { k: 0, ..SearchQuery::text("x") }, "k");
    invalid(SearchQuery { k: 1001, ..SearchQuery::text("x") }, "k");
    invalid(SearchQuery { sessions: vec!["s".into()], ..SearchQuery::text("x") }, "sessions");
    invalid(SearchQuery { identity: Some("bad id!".into()), ..SearchQuery::text("x") }, "identity");
    invalid(SearchQuery { fusion: Fusion::Weighted { alpha: 1.5 }, ..SearchQuery::text("x") }, "fusion.alpha");
    invalid(SearchQuery { from_ms: Some(5), to_ms: Some(5), ..SearchQuery::text("x") }, "to_ms");
    invalid(SearchQuery { recency_half_life_ms: Some(0), ..SearchQuery::text("x") }, "recency_half_life_ms");
    // Writes with a bad vector are refused too.
    let bad = db.append(T, "alice", "s", vec![with_vector("y", vec![1.0, 2.0, 3.0])], AppendOptions::default());
    assert!(matches!(bad, Err(Error::InvalidArgument { .. })));
}

#[test]
fn reopening_catches_up_and_a_missing_index_is_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = Engram::open(dir.path(), options()).expect("open");
        db.append(T, "alice", "s", vec![with_vector("persisted penguin", vec![1.0, 0.0])], AppendOptions::default())
            .expect("append");
        db.wait_for_indexes().expect("wait");
    }
    {
        // Written with the indexes off: the changelog holds it; the next open catches up.
        let off = Options { index: IndexOptions { enabled: false, ..IndexOptions::default() }, ..options() };
        let db = Engram::open(dir.path(), off).expect("open");
        db.append(T, "alice", "s", vec![with_vector("late penguin", vec![0.0, 1.0])], AppendOptions::default())
            .expect("append");
    }
    {
        let db = Engram::open(dir.path(), options()).expect("reopen");
        let found = db.search(T, &consistent(SearchQuery::text("penguin"))).expect("search");
        assert_eq!(found.hits.len(), 2);
        let stats = db.index_stats().expect("stats");
        assert_eq!(stats.rebuilds, 0, "caught up from the changelog");
        let found = db.search(T, &SearchQuery::vector(vec![0.0, 1.0])).expect("search");
        assert_eq!(event_texts(&found)[0], "late penguin");
    }
    // Lose the index directory (and, since it was persisted, the changelog was truncated):
    // the next open rebuilds from storage.
    std::fs::remove_dir_all(dir.path().join("index")).expect("remove");
    let db = Engram::open(dir.path(), options()).expect("reopen");
    let found = db.search(T, &consistent(SearchQuery::text("penguin"))).expect("search");
    assert_eq!(found.hits.len(), 2);
    let found = db.search(T, &SearchQuery::vector(vec![1.0, 0.0])).expect("search");
    assert_eq!(event_texts(&found)[0], "persisted penguin");
    drop(db);
    // A damaged snapshot is rebuilt too.
    std::fs::write(dir.path().join("index").join("vectors.snap"), b"garbage").expect("write");
    let db = Engram::open(dir.path(), options()).expect("reopen");
    let found = db.search(T, &consistent(SearchQuery::vector(vec![1.0, 0.0]))).expect("search");
    assert_eq!(event_texts(&found)[0], "persisted penguin");
}

#[test]
fn the_changelog_is_truncated_below_the_persisted_marks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options();
    opts.index.vector_snapshot_every_changes = 1;
    let db = Engram::open(dir.path(), opts).expect("open");
    for i in 0..5 {
        say(&db, "alice", "s", &format!("entry {i}"));
    }
    db.wait_for_indexes().expect("wait");
    let stats = db.index_stats().expect("stats");
    assert_eq!(stats.marks.text_visible, db.last_change_seq());
    assert_eq!(stats.marks.vector_saved, db.last_change_seq());
    assert!(stats.marks.truncated_below > 1);
    let oldest = db.changes(0, 1).expect("changes").first().map_or(db.last_change_seq() + 1, |c| c.seq);
    assert_eq!(oldest, stats.marks.truncated_below, "entries below the mark are gone, the rest kept");
}

#[test]
fn concurrent_writers_and_searchers_agree_at_the_end() {
    let db = Arc::new(mem());
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let db = Arc::clone(&db);
            std::thread::spawn(move || {
                for i in 0..50 {
                    say(&db, &format!("user-{w}"), "s", &format!("concurrent marmot {w} {i}"));
                }
            })
        })
        .collect();
    let reader = {
        let db = Arc::clone(&db);
        std::thread::spawn(move || {
            for _ in 0..50 {
                let found = db.search(T, &SearchQuery { k: 5, ..SearchQuery::text("marmot") }).expect("search");
                assert!(found.hits.len() <= 5);
            }
        })
    };
    for w in writers {
        w.join().expect("writer");
    }
    reader.join().expect("reader");
    for w in 0..3 {
        let q = consistent(SearchQuery { k: 100, identity: Some(format!("user-{w}")), ..SearchQuery::text("marmot") });
        let found = db.search(T, &q).expect("search");
        assert_eq!(found.hits.len(), 50);
        assert!(
            found
                .hits
                .iter()
                .all(|h| matches!(&h.item, HitItem::Event { identity, .. } if *identity == format!("user-{w}")))
        );
    }
}

#[test]
fn an_index_ahead_of_its_store_is_rebuilt() {
    let a = tempfile::tempdir().expect("tempdir");
    let b = tempfile::tempdir().expect("tempdir");
    let older = b.path().join("older");
    {
        let db = Engram::open(a.path(), options()).expect("open");
        for i in 0..3 {
            say(&db, "alice", "s", &format!("heron {i}"));
        }
        db.backup(&older).expect("backup");
        for i in 3..5 {
            say(&db, "alice", "s", &format!("heron {i}"));
        }
        db.wait_for_indexes().expect("wait");
    }
    // The older store with the newer index beside it: the index holds writes the store
    // does not have, and must not be trusted.
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read_dir") {
            let entry = entry.expect("entry");
            if entry.file_type().expect("type").is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
            }
        }
    };
    copy(&a.path().join("index"), &older.join("index"));
    copy(&a.path().join("index").join("text"), &older.join("index").join("text"));
    let db = Engram::open(&older, options()).expect("open older");
    say(&db, "alice", "s", "heron new");
    let found = db.search(T, &consistent(SearchQuery { k: 20, ..SearchQuery::text("heron") })).expect("search");
    let mut texts = event_texts(&found);
    texts.sort();
    assert_eq!(texts, vec!["heron 0", "heron 1", "heron 2", "heron new"]);
    let stats = db.index_stats().expect("stats");
    assert_eq!((stats.rebuilds, stats.text_docs), (1, 4), "{stats:?}");
}

#[test]
fn a_session_scope_holds_on_the_vector_side_too() {
    let db = mem();
    db.append(T, "alice", "a", vec![with_vector("with a vector", vec![1.0, 0.0])], AppendOptions::default())
        .expect("append");
    say(&db, "alice", "b", "text only");
    let q = SearchQuery {
        identity: Some("alice".into()),
        sessions: vec!["b".into()],
        ..consistent(SearchQuery::vector(vec![1.0, 0.0]))
    };
    assert!(db.search(T, &q).expect("search").hits.is_empty(), "session a leaked into a session b search");
    let q = SearchQuery { sessions: vec!["a".into()], ..q };
    assert_eq!(db.search(T, &q).expect("search").hits.len(), 1);
}

#[test]
fn keep_last_set_later_removes_index_entries() {
    let db = mem();
    for i in 0..5 {
        say(&db, "alice", "s", &format!("plover {i}"));
    }
    db.set_session_retention(T, "alice", "s", RetentionPolicy { keep_last: Some(1), ..RetentionPolicy::default() })
        .expect("retention");
    let found = db.search(T, &consistent(SearchQuery::text("plover"))).expect("search");
    assert_eq!(event_texts(&found), vec!["plover 4"]);
    assert_eq!(db.index_stats().expect("stats").text_docs, 1);
}

#[test]
fn overflowing_vectors_and_future_sequences_are_refused() {
    let db = mem();
    let huge = db.append(T, "alice", "s", vec![with_vector("x", vec![3e19, -3e19])], AppendOptions::default());
    assert!(matches!(huge, Err(Error::InvalidArgument { .. })), "{huge:?}");
    say(&db, "alice", "s", "fine");
    let ahead = SearchQuery { min_seq: Some(db.last_change_seq() + 5), ..SearchQuery::text("fine") };
    assert!(matches!(db.search(T, &ahead), Err(Error::InvalidArgument { field, .. }) if field == "min_seq"));
}

#[test]
fn verify_checks_that_the_indexes_agree_with_storage() {
    use engram::storage::{Batch, Space, Store};
    let store = Arc::new(MemoryStore::new());
    let db = Engram::with_store(store.clone(), options()).expect("open");
    let events = vec![with_vector("one", vec![1.0, 0.0]), NewEvent::message(Role::User, "two")];
    db.append(T, "alice", "s", events, AppendOptions::default()).expect("append");
    db.put_memory(T, "alice", NewMemory::fact("a memory")).expect("memory");
    let report = db.verify().expect("verify");
    assert!(report.is_ok() && report.index_checked, "{report:?}");
    // Remove an event behind the indexes' back: both indexes name it.
    let mut batch = Batch::new();
    batch.delete(Space::Data, engram_core::keys::event(T, "alice", "s", 1));
    store.write(batch).expect("write");
    let report = db.verify().expect("verify");
    let mut found: Vec<(String, String, String)> =
        report.problems.iter().map(|p| (p.space.clone(), p.key.clone(), p.reason.clone())).collect();
    found.sort();
    let item = "default/alice/s/event 1".to_string();
    let reason = "indexed, but not in storage".to_string();
    assert_eq!(
        found,
        vec![("index:full-text".into(), item.clone(), reason.clone()), ("index:vector".into(), item, reason)]
    );
}

#[test]
fn reindex_rebuilds_from_storage_and_keeps_answering() {
    let db = mem();
    for i in 0..20 {
        db.append(
            T,
            "alice",
            "s",
            vec![with_vector(&format!("egret {i}"), vec![1.0, i as f32])],
            AppendOptions::default(),
        )
        .expect("append");
    }
    db.wait_for_indexes().expect("wait");
    let stats = db.reindex().expect("reindex");
    assert_eq!((stats.rebuilds, stats.text_docs, stats.vectors.points), (1, 20, 20), "{stats:?}");
    assert_eq!(stats.marks.applied, db.last_change_seq());
    let found = db.search(T, &SearchQuery { k: 30, ..SearchQuery::text("egret") }).expect("search");
    assert_eq!(found.hits.len(), 20);
    let off = Engram::open_in_memory(Options {
        index: IndexOptions { enabled: false, ..IndexOptions::default() },
        ..options()
    })
    .expect("open");
    assert!(matches!(off.reindex(), Err(Error::Index(_))));
}

/// The read-back of hits (a batched MultiGet on RocksDB) checks every record: a damaged
/// event found by a search is a corruption error naming its key, never returned as data,
/// on either backend.
#[test]
fn a_damaged_record_found_by_a_search_is_a_corruption_error() {
    let key = engram_core::keys::event(T, "alice", "s", 2);
    let query = consistent(SearchQuery { text: Some("precious".into()), k: 5, ..SearchQuery::default() });
    let check = |db: &Engram| {
        let err = db.search(T, &query).expect_err("corrupt");
        assert!(matches!(err, Error::Corruption { ref key, .. } if key.contains("alice")), "{err:?}");
    };
    // In memory: damage the value under the running store.
    let store = Arc::new(MemoryStore::new());
    let db = Engram::with_store(store.clone(), options()).expect("open");
    for text in ["precious one", "precious two", "precious three"] {
        say(&db, "alice", "s", text);
    }
    db.search(T, &query).expect("search before the damage");
    let mut bytes =
        engram::storage::ReadView::get(&*store, engram::storage::Space::Data, &key).expect("get").expect("present");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20;
    store.put_raw(engram::storage::Space::Data, &key, bytes);
    check(&db);
    // On RocksDB: damage it while the store is closed.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = Engram::open(dir.path(), options()).expect("open");
        for text in ["precious one", "precious two", "precious three"] {
            say(&db, "alice", "s", text);
        }
        db.wait_for_indexes().expect("indexed");
    }
    {
        let store = engram::storage::RocksStore::open(dir.path(), &RocksOptions::default()).expect("raw open");
        let mut bytes =
            engram::storage::ReadView::get(&store, engram::storage::Space::Data, &key).expect("get").expect("present");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x20;
        let mut batch = engram::storage::Batch::new();
        batch.put(engram::storage::Space::Data, key.clone(), bytes);
        store.write(batch).expect("write raw");
        store.sync().expect("sync");
    }
    check(&Engram::open(dir.path(), options()).expect("reopen"));
}

/// A store (or a snapshot of one) whose batched reads always fail, as a backend's
/// `MultiGet` might, while point reads work.
#[derive(Debug)]
struct NoBatches<V: ?Sized>(Box<V>);

impl<V: storage::ReadView + ?Sized> storage::ReadView for NoBatches<V> {
    fn get(&self, space: storage::Space, key: &[u8]) -> storage::Result<Option<Vec<u8>>> {
        self.0.get(space, key)
    }
    fn get_many(&self, _: storage::Space, _: &[&[u8]]) -> storage::Result<Vec<Option<Vec<u8>>>> {
        Err(storage::StorageError::Io("batched reads are out of order today".into()))
    }
    fn scan<'a>(
        &'a self,
        space: storage::Space,
        start: &[u8],
        end: Option<&[u8]>,
        direction: storage::Direction,
    ) -> storage::EntryIter<'a> {
        self.0.scan(space, start, end, direction)
    }
}

impl Store for NoBatches<MemoryStore> {
    fn write(&self, batch: storage::Batch) -> storage::Result<()> {
        self.0.write(batch)
    }
    fn sync(&self) -> storage::Result<()> {
        self.0.sync()
    }
    fn snapshot(&self) -> Box<dyn storage::ReadView + '_> {
        Box::new(NoBatches(self.0.snapshot()))
    }
}

/// When the batched read-back fails, search reads its hits one by one: the same answer
/// (events and memories, with recency and without), and a damaged record is still named.
#[test]
fn search_answers_the_same_when_batched_reads_fail() {
    let plain = mem();
    let degraded = Engram::with_store(Arc::new(NoBatches(Box::new(MemoryStore::new()))), options()).expect("open");
    for db in [&plain, &degraded] {
        for (identity, session, text) in
            [("alice", "a", "red apples"), ("alice", "b", "green apples"), ("bob", "a", "apples and pears")]
        {
            say(db, identity, session, text);
        }
        db.put_memory(T, "alice", NewMemory::fact("alice likes apples")).expect("memory");
    }
    for recency in [None, Some(60_000)] {
        let query = consistent(SearchQuery {
            text: Some("apples".into()),
            recency_half_life_ms: recency,
            over: SearchOver::Both,
            ..SearchQuery::default()
        });
        let (a, b) = (plain.search(T, &query).expect("search"), degraded.search(T, &query).expect("search"));
        // The two stores' clocks differ by a millisecond or so: compare what was found (with
        // recency the order can follow those milliseconds).
        let items = |r: &SearchResults| {
            let mut items: Vec<String> = r
                .hits
                .iter()
                .map(|h| match &h.item {
                    HitItem::Event { identity, event } => {
                        format!("{identity}/{}/{}: {:?}", event.session, event.seq, event.text)
                    }
                    HitItem::Memory { identity, memory } => format!("{identity} memory: {}", memory.text),
                })
                .collect();
            items.sort();
            items
        };
        assert_eq!(a.hits.len(), 4, "{a:?}");
        assert_eq!(items(&a), items(&b));
    }
}
