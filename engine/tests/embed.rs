//! The local embedder: text-only writes become vector- and hybrid-searchable, query texts are
//! embedded, a backlog survives a restart and drains, and the built-in BERT encoder matches
//! an independent numpy computation of all-MiniLM-L6-v2.

use engram::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn options(embedder: Option<Arc<dyn Embedder>>) -> Options {
    Options { retention_sweep_interval_ms: None, embedder, ..Options::default() }
}

fn hashing() -> Option<Arc<dyn Embedder>> {
    Some(Arc::new(HashingEmbedder::new(64)))
}

fn say(db: &Engram, tenant: &str, session: &str, text: &str) -> AppendResult {
    db.append(tenant, "alice", session, vec![NewEvent::message(Role::User, text)], AppendOptions::default())
        .expect("append")
}

#[test]
fn text_only_writes_become_vector_and_hybrid_searchable() {
    let db = Engram::open_in_memory(options(hashing())).expect("open");
    db.create_tenant("acme", TenantConfig { embedder: EmbedderKind::Local, ..TenantConfig::default() })
        .expect("tenant");
    assert_eq!(db.get_tenant("acme").expect("get").vector_dim, Some(64));
    say(&db, "acme", "chat", "the red bicycle is in the garage");
    say(&db, "acme", "chat", "we talked about quarterly revenue");
    let last = say(&db, "acme", "chat", "my favourite fruit is mango");
    db.put_memory("acme", "alice", NewMemory::fact("Alice rides a red bicycle to work")).expect("memory");
    // A text-only query is embedded: every hit carries a vector score.
    let q = SearchQuery { text: Some("red bicycle".into()), min_seq: Some(last.change_seq), ..SearchQuery::default() };
    let found = db.search("acme", &SearchQuery { consistent: true, ..q }).expect("search");
    assert!(found.hits.len() >= 2, "{found:?}");
    assert!(found.hits.iter().all(|h| h.scores.vector.is_some()), "{found:?}");
    // The derived vectors are in the records, marked as derived.
    let history = db.history("acme", "alice", "chat", &HistoryQuery::default()).expect("history");
    assert!(history.events.iter().all(|e| e.embedding.as_ref().is_some_and(|v| v.len() == 64)));
    // Vector search alone finds the text written without a vector.
    let v = HashingEmbedder::new(64).embed(&["mango fruit"]).expect("embed").remove(0);
    let by_vector =
        db.search("acme", &SearchQuery { vector: Some(v), k: 1, ..SearchQuery::default() }).expect("search");
    match &by_vector.hits[0].item {
        HitItem::Event { event, .. } => assert_eq!(event.text.as_deref(), Some("my favourite fruit is mango")),
        other => panic!("expected the mango turn, got {other:?}"),
    }
    let stats = db.embedder_stats().expect("stats");
    assert_eq!((stats.model.as_str(), stats.dim), ("hashing", 64));
    assert!(stats.embedded >= 4, "{stats:?}");
    // A caller's own vectors are kept as they are; the default tenant, without the
    // embedder, gets no derived vectors.
    say(&db, DEFAULT_TENANT, "chat", "no vector for me");
    db.wait_for_indexes().expect("indexed");
    let plain = db.history(DEFAULT_TENANT, "alice", "chat", &HistoryQuery::default()).expect("history");
    assert!(plain.events[0].embedding.is_none());
}

#[test]
fn switching_a_tenant_to_local_embeds_what_it_holds_and_bad_choices_are_refused() {
    let db = Engram::open_in_memory(options(hashing())).expect("open");
    db.create_tenant("acme", TenantConfig::default()).expect("tenant");
    for i in 0..50 {
        say(&db, "acme", "chat", &format!("turn {i} about gardening"));
    }
    let t = db.set_tenant_embedder("acme", EmbedderKind::Local).expect("switch");
    assert_eq!((t.embedder, t.vector_dim), (EmbedderKind::Local, Some(64)));
    // k = 50 makes both rankings hold every turn, so every hit has its vector score.
    let query = SearchQuery { text: Some("gardening".into()), consistent: true, k: 50, ..SearchQuery::default() };
    let found = db.search("acme", &query).expect("search");
    assert_eq!(found.hits.len(), 50);
    assert!(found.hits.iter().all(|h| h.scores.vector.is_some()), "{found:?}");
    let history = db.history("acme", "alice", "chat", &HistoryQuery::default()).expect("history");
    assert!(history.events.iter().all(|e| e.embedding.is_some()), "every stored turn got a vector");

    // A tenant with vectors of another dimension cannot switch.
    db.create_tenant("other", TenantConfig { vector_dim: Some(3), ..TenantConfig::default() }).expect("tenant");
    match db.set_tenant_embedder("other", EmbedderKind::Local) {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "embedder"),
        other => panic!("expected invalid argument, got {other:?}"),
    }
    // Refused inside the write (the dimension is only known there), with a retention change
    // in the same update: neither lands, and nothing is written.
    let before = db.last_change_seq();
    let ttl = RetentionPolicy { ttl_ms: Some(60_000), ..RetentionPolicy::default() };
    match db.update_tenant("other", Some(ttl), Some(EmbedderKind::Local)) {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "embedder"),
        other => panic!("expected invalid argument, got {other:?}"),
    }
    let other = db.get_tenant("other").expect("tenant");
    assert_eq!((other.retention.ttl_ms, other.embedder, other.vector_dim), (None, EmbedderKind::None, Some(3)));
    assert_eq!(db.last_change_seq(), before, "a refused update wrote nothing");
    let bad = TenantConfig { embedder: EmbedderKind::Local, vector_dim: Some(3), ..TenantConfig::default() };
    assert!(matches!(db.create_tenant("third", bad), Err(Error::InvalidArgument { .. })));
    // Without a model, `local` is refused.
    let none = Engram::open_in_memory(options(None)).expect("open");
    let local = TenantConfig { embedder: EmbedderKind::Local, ..TenantConfig::default() };
    match none.create_tenant("acme", local) {
        Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "embedder"),
        other => panic!("expected invalid argument, got {other:?}"),
    }
}

/// An embedder that takes its time, to leave a backlog behind.
#[derive(Debug)]
struct Slow {
    inner: HashingEmbedder,
    calls: AtomicUsize,
}

impl Embedder for Slow {
    fn name(&self) -> &str {
        "slow"
    }

    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(40));
        self.inner.embed(texts)
    }
}

#[test]
fn a_backlog_survives_a_restart_and_drains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let slow: Arc<dyn Embedder> = Arc::new(Slow { inner: HashingEmbedder::new(64), calls: AtomicUsize::new(0) });
    {
        let db = Engram::open(dir.path(), options(Some(slow))).expect("open");
        db.create_tenant("acme", TenantConfig { embedder: EmbedderKind::Local, ..TenantConfig::default() })
            .expect("tenant");
        for chunk in 0..10 {
            let events = (0..100).map(|i| NewEvent::message(Role::User, format!("turn {chunk}-{i}"))).collect();
            db.append("acme", "alice", "chat", events, AppendOptions::default()).expect("append");
        }
        let stats = db.embedder_stats().expect("stats");
        assert!(stats.backlog_changes > 0, "the slow embedder is behind: {stats:?}");
    }
    // Reopened without a model: the backlog waits (the tenant still says local).
    {
        let db = Engram::open(dir.path(), options(None)).expect("reopen");
        say(&db, "acme", "chat", "written while no model was loaded");
        db.wait_for_indexes().expect("indexed");
    }
    // Reopened with a model: everything gets its vector.
    let db = Engram::open(dir.path(), options(hashing())).expect("reopen");
    let found = db
        .search(
            "acme",
            &SearchQuery { text: Some("no model was loaded".into()), consistent: true, ..SearchQuery::default() },
        )
        .expect("search");
    assert!(found.hits.first().is_some_and(|h| h.scores.vector.is_some()), "{found:?}");
    let mut after = None;
    let mut seen = 0;
    loop {
        let page = db
            .history("acme", "alice", "chat", &HistoryQuery { after, limit: 1000, ..HistoryQuery::default() })
            .expect("history");
        for e in &page.events {
            assert!(e.embedding.is_some(), "event {} has no vector", e.seq);
            seen += 1;
        }
        match page.next_cursor {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, 1001);
    let stats = db.embedder_stats().expect("stats");
    assert_eq!(stats.backlog_changes, 0, "{stats:?}");
    assert!(db.verify().expect("verify").is_ok());
}

#[cfg(feature = "local-embedder")]
#[path = "support/minilm.rs"]
mod minilm;
#[cfg(feature = "local-embedder")]
use minilm::minilm_dir;

#[cfg(feature = "local-embedder")]
#[test]
fn minilm_matches_an_independent_numpy_computation() {
    let model = BertEmbedder::load(&minilm_dir()).expect("load");
    assert_eq!(model.dim(), 384);
    let fixture = include_str!("fixtures/minilm_reference.jsonl");
    let cases: Vec<(String, Vec<f32>)> = fixture
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            let vector =
                v["vector"].as_array().expect("vector").iter().map(|x| x.as_f64().expect("f64") as f32).collect();
            (v["id"].as_str().expect("id").to_string(), vector)
        })
        .collect();
    // One batch of different lengths (padding must not change any vector), then one by one.
    let texts: Vec<&str> = cases.iter().map(|(t, _)| t.as_str()).collect();
    let batch = model.embed(&texts).expect("embed");
    for ((text, reference), got) in cases.iter().zip(&batch) {
        let single = model.embed(&[text.as_str()]).expect("embed").remove(0);
        for v in [got, &single] {
            let cos: f32 = v.iter().zip(reference).map(|(a, b)| a * b).sum();
            assert!(cos >= 0.999, "{text:?}: cosine {cos}");
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4);
        }
    }
    let v = model.embed(&["cat", "kitten", "stock market"]).expect("embed");
    let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert!(cos(&v[0], &v[1]) > cos(&v[0], &v[2]), "cat is nearer kitten than stock market");
    assert!(model.embed(&[]).expect("empty").is_empty());
    // A directory without a model is a clear error.
    let empty = tempfile::tempdir().expect("tempdir");
    match BertEmbedder::load(empty.path()) {
        Err(Error::InvalidArgument { field, message }) => {
            assert_eq!(field, "embedding_model");
            assert!(message.contains("config.json"), "{message}");
        }
        other => panic!("expected invalid argument, got {other:?}"),
    }
    // A config the encoder cannot run is refused with the setting named, not a panic.
    for (config, named) in [
        (r#"{"hidden_size":0,"num_hidden_layers":1,"num_attention_heads":1,"intermediate_size":4}"#, "hidden_size"),
        (
            r#"{"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":3,"intermediate_size":4}"#,
            "num_attention_heads",
        ),
        (
            r#"{"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":4,"max_position_embeddings":1}"#,
            "max_position_embeddings",
        ),
        (
            r#"{"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":4,"hidden_act":"relu"}"#,
            "hidden_act",
        ),
    ] {
        std::fs::write(empty.path().join("config.json"), config).expect("write");
        match BertEmbedder::load(empty.path()) {
            Err(Error::InvalidArgument { message, .. }) => assert!(message.contains(named), "{message}"),
            other => panic!("expected invalid argument naming {named}, got {other:?}"),
        }
    }
}

#[test]
fn a_vector_is_never_written_into_a_record_that_replaced_its_text() {
    let slow: Arc<dyn Embedder> = Arc::new(Slow { inner: HashingEmbedder::new(64), calls: AtomicUsize::new(0) });
    let db = Engram::open_in_memory(options(Some(slow))).expect("open");
    db.create_tenant("acme", TenantConfig { embedder: EmbedderKind::Local, ..TenantConfig::default() })
        .expect("tenant");
    // The update lands while the worker is embedding the first text.
    let m = db.put_memory("acme", "alice", NewMemory::fact("the sky is green")).expect("put");
    std::thread::sleep(Duration::from_millis(10));
    db.update_memory("acme", "alice", &m.id, NewMemory::fact("the ocean is deep")).expect("update");
    db.wait_for_indexes().expect("indexed");
    let current = db.get_memory("acme", "alice", &m.id).expect("get");
    let expected = HashingEmbedder::new(64).embed(&["the ocean is deep"]).expect("embed").remove(0);
    assert_eq!(current.embedding.as_deref(), Some(expected.as_slice()), "the vector is the new text's");
}

#[test]
fn records_restored_from_a_dump_get_their_vectors() {
    let source = tempfile::tempdir().expect("tempdir");
    {
        let db = Engram::open(source.path(), options(hashing())).expect("open");
        db.create_tenant("acme", TenantConfig { embedder: EmbedderKind::Local, ..TenantConfig::default() })
            .expect("tenant");
    }
    let mut dump = Vec::new();
    {
        // Written while no model ran: no vectors in the dump.
        let db = Engram::open(source.path(), options(None)).expect("reopen");
        for i in 0..20 {
            say(&db, "acme", "chat", &format!("restored turn {i}"));
        }
        db.dump(&DumpFilter::default(), &mut dump).expect("dump");
    }
    let target = tempfile::tempdir().expect("tempdir");
    let db = Engram::open(target.path(), Options { default_tenant: None, ..options(hashing()) }).expect("open");
    db.restore_dump(&mut dump.as_slice()).expect("restore");
    db.wait_for_indexes().expect("indexed");
    let history = db.history("acme", "alice", "chat", &HistoryQuery::default()).expect("history");
    assert_eq!(history.events.len(), 20);
    assert!(history.events.iter().all(|e| e.embedding.is_some()), "every restored turn got its vector");
}

/// The encoder runs on its own threads: with every thread of rayon's global pool held (as a
/// graph build holds them for seconds), embedding still completes.
#[cfg(feature = "local-embedder")]
#[test]
fn the_encoder_does_not_wait_for_rayon_global_pool() {
    let model = Arc::new(BertEmbedder::load(&minilm_dir()).expect("load"));
    let threads = rayon::current_num_threads();
    let (release, held) = std::sync::mpsc::channel::<()>();
    let held = Arc::new(std::sync::Mutex::new(held));
    let busy = Arc::new(AtomicUsize::new(0));
    for _ in 0..threads {
        let (held, busy) = (Arc::clone(&held), Arc::clone(&busy));
        rayon::spawn(move || {
            busy.fetch_add(1, Ordering::SeqCst);
            let _ = held.lock().expect("lock").recv();
        });
    }
    while busy.load(Ordering::SeqCst) < threads {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (done, finished) = std::sync::mpsc::channel();
    let encoder = Arc::clone(&model);
    std::thread::spawn(move || done.send(encoder.embed(&["a busy pool", "and a second text"]).map(|v| v.len())));
    let outcome = finished.recv_timeout(Duration::from_secs(120));
    for _ in 0..threads {
        release.send(()).expect("release");
    }
    match outcome {
        Ok(result) => assert_eq!(result.expect("embed"), 2),
        Err(_) => panic!("embedding waited for rayon's global pool"),
    }
}
