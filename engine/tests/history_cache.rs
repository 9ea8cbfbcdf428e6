//! The history tail cache against the store path: the same seeded random operations run on
//! a store with the cache off, with its default budget, and with a budget small enough to
//! evict all the time; every result and every history read must be the same. Then readers
//! racing writers: a cached read never shows less than a write its reader already saw.
//! Replay a failure with `ENGRAM_TEST_SEED=<seed> cargo test --test history_cache`.

#[path = "support/rng.rs"]
#[allow(dead_code)]
mod rng;

use engram::storage::MemoryStore;
use engram::*;
use rng::Rng;
use std::collections::BTreeMap;
use std::sync::Arc;

const T: &str = DEFAULT_TENANT;
const IDENTITIES: [&str; 2] = ["ada", "bob"];
const SESSIONS: [&str; 4] = ["s0", "s1", "s2", "f0"];

fn open(clock: &Arc<ManualClock>, history_cache_bytes: usize) -> Engram {
    let options =
        Options { retention_sweep_interval_ms: None, clock: clock.clone(), history_cache_bytes, ..Options::default() };
    Engram::with_store(Arc::new(MemoryStore::new()), options).expect("open")
}

fn event(rng: &mut Rng, n: u64) -> NewEvent {
    let text = match rng.below(40) {
        // Above the inline limit: stored as a blob.
        0 => "b".repeat(limits::BLOB_INLINE_MAX_BYTES + 1 + rng.below(100) as usize),
        _ => format!("turn {n} {}", "x".repeat(rng.below(300) as usize)),
    };
    match rng.below(4) {
        0 => NewEvent {
            kind: Some(EventKind::ToolCall),
            name: Some("search".into()),
            data: Some(serde_json::json!({ "q": n })),
            ..NewEvent::default()
        },
        1 => NewEvent::message(Role::Assistant, text),
        _ => NewEvent::message(Role::User, text),
    }
}

fn query(rng: &mut Rng, head: u64) -> HistoryQuery {
    let near = |rng: &mut Rng| head.saturating_sub(rng.below(300)) + rng.below(3);
    let mut q = match rng.below(3) {
        0 => HistoryQuery::last(1 + rng.below(150) as usize),
        1 => HistoryQuery { limit: 1 + rng.below(60) as usize, order: Order::Asc, ..HistoryQuery::default() },
        _ => HistoryQuery { limit: 1 + rng.below(200) as usize, ..HistoryQuery::last(1) },
    };
    if rng.below(3) == 0 {
        q.after = Some(near(rng));
    }
    if rng.below(3) == 0 {
        q.before = Some(near(rng));
    }
    if rng.below(6) == 0 {
        q.as_of = Some(near(rng));
    }
    if rng.below(6) == 0 {
        q.kinds = vec![EventKind::Message];
    }
    if rng.below(8) == 0 {
        q.roles = vec![Role::Assistant];
    }
    q
}

/// The same call on every store; their answers, compared as text (errors included).
fn same<R: std::fmt::Debug>(dbs: &[Engram], what: &str, call: impl Fn(&Engram) -> R) -> R {
    let mut results: Vec<R> = dbs.iter().map(call).collect();
    let first = format!("{:?}", results[0]);
    for (i, other) in results.iter().enumerate().skip(1) {
        assert_eq!(format!("{other:?}"), first, "{what}: store {i} differs from the uncached one");
    }
    results.swap_remove(0)
}

#[test]
fn cached_reads_equal_store_reads_under_random_operations() {
    let mut rng = Rng::seeded("history cache differential");
    let clock = ManualClock::new(1_000_000);
    let dbs = [open(&clock, 0), open(&clock, Options::default().history_cache_bytes), open(&clock, 1 << 20)];
    let mut heads: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut reads = 0;
    for step in 0..1500 {
        let who = IDENTITIES[rng.below(2) as usize];
        let session = SESSIONS[rng.below(3) as usize];
        let head = heads.get(&(who, session)).copied().unwrap_or(0);
        match rng.below(100) {
            0..=29 => {
                let most = if rng.below(3) == 0 { 40 } else { 3 };
                let n = 1 + rng.below(most);
                let events: Vec<NewEvent> = (0..n).map(|i| event(&mut rng, head + i)).collect();
                let options = AppendOptions {
                    expected_head: (rng.below(5) == 0).then(|| head + rng.below(2)),
                    idempotency_key: (rng.below(5) == 0).then(|| format!("k{}", rng.below(4))),
                };
                let what = format!("step {step}: append {n} to {who}/{session}");
                if let Ok(r) = same(&dbs, &what, |db| db.append(T, who, session, events.clone(), options.clone())) {
                    heads.insert((who, session), r.last_seq.max(head));
                }
            }
            30..=33 => {
                let seq = rng.below(head + 2);
                let _ =
                    same(&dbs, &format!("step {step}: delete event {seq}"), |db| db.delete_event(T, who, session, seq));
            }
            34..=36 => {
                let policy = RetentionPolicy {
                    ttl_ms: (rng.below(3) == 0).then(|| 1000 * (1 + rng.below(20))),
                    kind_ttl_ms: match rng.below(4) {
                        0 => BTreeMap::from([(EventKind::ToolCall, 1000 * (1 + rng.below(10)))]),
                        _ => BTreeMap::new(),
                    },
                    keep_last: (rng.below(2) == 0).then(|| 1 + rng.below(200)),
                };
                let _ = same(&dbs, &format!("step {step}: retention {policy:?}"), |db| {
                    db.set_session_retention(T, who, session, policy.clone()).map(|s| s.id)
                });
            }
            37 => {
                let policy = RetentionPolicy {
                    ttl_ms: (rng.below(2) == 0).then(|| 1000 * (5 + rng.below(30))),
                    ..RetentionPolicy::default()
                };
                let _ = same(&dbs, &format!("step {step}: tenant retention"), |db| {
                    db.set_tenant_retention(T, policy.clone()).map(|t| t.name)
                });
            }
            38..=41 => clock.advance_ms(500 * rng.below(6) as i64),
            42 => {
                let _ = same(&dbs, &format!("step {step}: sweep"), |db| db.sweep_retention().map(|r| r.events_removed));
            }
            43 | 44 => {
                let at = (rng.below(2) == 0).then(|| rng.below(head + 1));
                let what = format!("step {step}: fork {who}/{session}");
                let forked = same(&dbs, &what, |db| {
                    let _ = db.delete_session(T, who, "f0");
                    db.fork_session(T, who, session, at, "f0", SessionConfig::default()).map(|s| s.head_seq)
                });
                if let Ok(fork_head) = forked {
                    heads.insert((who, "f0"), fork_head);
                }
            }
            45 if rng.below(4) == 0 => {
                let _ = same(&dbs, &format!("step {step}: delete {who}/{session}"), |db| {
                    db.delete_session(T, who, session).map(|r| r.events)
                });
                heads.remove(&(who, session));
            }
            46 if rng.below(16) == 0 => {
                let _ = same(&dbs, &format!("step {step}: forget {who}"), |db| {
                    db.forget_identity(T, who).map(|r| r.events)
                });
                heads.retain(|(w, _), _| *w != who);
            }
            _ => {
                // Reads: mostly of the session just written, sometimes of the fork.
                let session = if rng.below(5) == 0 { "f0" } else { session };
                let head = heads.get(&(who, session)).copied().unwrap_or(0);
                for _ in 0..3 {
                    let q = query(&mut rng, head);
                    let what = format!("step {step}: history {who}/{session} {q:?}");
                    let page = same(&dbs, &what, |db| db.history(T, who, session, &q));
                    // As JSON: the bytes serde_json writes for the page.
                    let want_json =
                        page.as_ref().map(|p| serde_json::to_string(p).expect("serializes")).map_err(|e| e.to_string());
                    for (i, db) in dbs.iter().enumerate() {
                        let json = db.history_json(T, who, session, &q);
                        let json = json.map(|b| String::from_utf8(b).expect("UTF-8")).map_err(|e| e.to_string());
                        assert_eq!(json, want_json, "{what}: JSON, store {i}");
                        match db.history_cached_json(T, who, session, &q) {
                            Ok(None) => {}
                            Ok(Some(b)) => {
                                let got = String::from_utf8(b).expect("UTF-8");
                                assert_eq!(Ok(got), want_json.clone(), "{what}: cached JSON, store {i}");
                            }
                            Err(e) => {
                                assert_eq!(Err(e.to_string()), want_json.clone(), "{what}: cached JSON, store {i}")
                            }
                        }
                    }
                    // From memory: the same page, or none (the cache can answer more).
                    for (i, db) in dbs.iter().enumerate() {
                        match db.history_cached(T, who, session, &q) {
                            Ok(None) => {}
                            Ok(Some(p)) => assert_eq!(
                                Ok(p),
                                page.as_ref().map_err(|e| e.to_string()).cloned(),
                                "{what}: cached, store {i}"
                            ),
                            Err(e) => assert_eq!(
                                Err(e.to_string()),
                                page.as_ref().map(|_| ()).map_err(|e| e.to_string()),
                                "{what}: cached, store {i}"
                            ),
                        }
                    }
                    reads += 1;
                }
            }
        }
    }
    assert!(reads > 1000, "the run read history {reads} times");
    let [off, default, small] = dbs.map(|db| db.history_cache_stats());
    assert_eq!((off.budget_bytes, off.sessions, off.bytes, off.hits), (0, 0, 0, 0), "{off:?}");
    for stats in [default, small] {
        assert!(stats.hits > 0 && stats.misses > 0 && stats.bytes <= stats.budget_bytes, "{stats:?}");
    }
    assert!(small.hits <= default.hits, "a smaller cache answers no more: {small:?} against {default:?}");
}

#[test]
fn readers_racing_writers_never_go_back() {
    let seed = rng::test_seed("history cache race");
    let clock = ManualClock::new(1_000_000);
    let db = Arc::new(open(&clock, Options::default().history_cache_bytes));
    const WRITES: u64 = 1500;
    // Every fifth text is a blob, which drops the session's tail: readers fill it again
    // and again while the writer appends, the race the fill's ticket guards against.
    let text =
        |i: u64| if i % 5 == 4 { format!("{i} {}", "p".repeat(limits::BLOB_INLINE_MAX_BYTES)) } else { format!("{i}") };
    // Writers still running: readers stop when none is (also when one failed).
    let writing = std::sync::atomic::AtomicUsize::new(2);
    std::thread::scope(|scope| {
        for w in 0..2u64 {
            let (db, writing) = (db.clone(), &writing);
            scope.spawn(move || {
                struct Done<'a>(&'a std::sync::atomic::AtomicUsize);
                impl Drop for Done<'_> {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                let _done = Done(writing);
                let session = format!("s{w}");
                for i in 0..WRITES {
                    let events = vec![NewEvent::message(Role::User, text(i))];
                    let r = db.append(T, "ada", &session, events, AppendOptions::default()).expect("append");
                    // Read your own write, from the cache or not.
                    let page = db.history(T, "ada", &session, &HistoryQuery::last(5)).expect("history");
                    assert!(page.head_seq >= r.last_seq, "a read after an append missed it");
                    assert_eq!(page.events.first().map(|e| e.seq), Some(page.head_seq));
                }
            });
        }
        for r in 0..2u64 {
            let (db, writing) = (db.clone(), &writing);
            scope.spawn(move || {
                let mut rng = Rng(seed.wrapping_add(r));
                let mut seen = [0u64; 2];
                while writing.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                    let w = rng.below(2) as usize;
                    let q = HistoryQuery::last(1 + rng.below(20) as usize);
                    let session = format!("s{w}");
                    let read = match rng.below(2) {
                        0 => db.history(T, "ada", &session, &q).map(Some),
                        _ => db.history_cached(T, "ada", &session, &q),
                    };
                    let page = match read {
                        Ok(Some(page)) => page,
                        Ok(None) => continue,
                        Err(Error::NotFound { .. }) if seen[w] == 0 => continue,
                        Err(e) => panic!("history: {e}"),
                    };
                    assert!(page.head_seq >= seen[w], "head went back from {} to {}", seen[w], page.head_seq);
                    seen[w] = page.head_seq;
                    // A consistent page: the newest events, contiguous, down from the head.
                    let seqs: Vec<u64> = page.events.iter().map(|e| e.seq).collect();
                    let want: Vec<u64> = (1..=page.head_seq).rev().take(q.limit).collect();
                    assert_eq!(seqs, want, "page of {session}");
                    for e in &page.events {
                        assert_eq!(e.text.as_deref(), Some(text(e.seq - 1).as_str()), "{session} event {}", e.seq);
                    }
                }
            });
        }
    });
}

/// The key of event `seq` of `identity`/`session` in the default tenant, as
/// `docs/keys.md` draws it.
fn event_key(identity: &str, session: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::new();
    for (tag, part) in [(None, T), (Some(b'I'), identity), (Some(b'S'), session)] {
        key.extend(tag);
        key.extend_from_slice(part.as_bytes());
        key.extend_from_slice(&[0, 1]);
    }
    key.push(b'E');
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

#[test]
fn what_the_cache_cannot_hold_is_read_from_storage_and_drops_stay_narrow() {
    use engram::storage::{ReadView, Space};
    let clock = ManualClock::new(1_000_000);
    let store = Arc::new(MemoryStore::new());
    let options = Options { retention_sweep_interval_ms: None, clock: clock.clone(), ..Options::default() };
    let db = Engram::with_store(store.clone(), options).expect("open");
    let turns = |n: u64| (1..=n).map(|i| NewEvent::message(Role::User, format!("{i}"))).collect::<Vec<_>>();

    // A damaged event inside the tail a page of 10 fills (the newest 32) but outside
    // what the store path reads for that page (the newest 16): the page is answered (as
    // without the cache), and no tail is kept.
    db.append(T, "ada", "damaged", turns(200), AppendOptions::default()).expect("append");
    let key = event_key("ada", "damaged", 175);
    let mut bytes = store.get(Space::Data, &key).expect("get").expect("stored");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20;
    store.put_raw(Space::Data, &key, bytes);
    // (A session's first read goes to storage; the second fills its tail.)
    for _ in 0..2 {
        let page = db.history(T, "ada", "damaged", &HistoryQuery::last(10)).expect("a page past the damage");
        assert_eq!(page.events.first().map(|e| e.seq), Some(200));
    }
    assert_eq!(db.history_cache_stats().sessions, 0);
    let err = db.history(T, "ada", "damaged", &HistoryQuery::last(150)).expect_err("a page over the damage");
    assert!(matches!(err, Error::Corruption { .. }), "{err:?}");

    // A blob bigger than a tail may take: read from storage, never kept.
    let big = "b".repeat(2 << 20);
    let events = vec![NewEvent::message(Role::Tool, big.clone()), NewEvent::message(Role::User, "after")];
    db.append(T, "ada", "blobs", events, AppendOptions::default()).expect("append");
    for _ in 0..2 {
        let page = db.history(T, "ada", "blobs", &HistoryQuery::last(2)).expect("history");
        let texts: Vec<&str> = page.events.iter().filter_map(|e| e.text.as_deref()).collect();
        assert_eq!(texts, ["after", big.as_str()]);
    }
    assert_eq!(db.history_cache_stats().sessions, 0);

    // A tenant's settings drop that tenant's tails; a session delete, its identity's.
    db.create_tenant("other", TenantConfig::default()).expect("tenant");
    for (i, (tenant, identity)) in [(T, "ada"), (T, "bob"), ("other", "ada")].into_iter().enumerate() {
        db.append(tenant, identity, "s", turns(3), AppendOptions::default()).expect("append");
        for read in 0..2 {
            assert_eq!(db.history(tenant, identity, "s", &HistoryQuery::last(3)).expect("history").events.len(), 3);
            let cached = db.history_cache_stats().sessions;
            assert_eq!(cached, (i + read) as u64, "a session's second read keeps its tail, not its first");
        }
    }
    db.append(T, "bob", "x", turns(1), AppendOptions::default()).expect("append");
    assert_eq!(db.history_cache_stats().sessions, 3);
    let policy = RetentionPolicy { ttl_ms: Some(1), ..RetentionPolicy::default() };
    db.set_tenant_retention("other", policy).expect("retention");
    assert_eq!(db.history_cache_stats().sessions, 2, "the other tenant's tail went");
    db.delete_session(T, "bob", "x").expect("delete");
    assert_eq!(db.history_cache_stats().sessions, 1, "bob's tails went, ada's stayed");
    clock.advance_ms(10);
    assert!(db.history("other", "ada", "s", &HistoryQuery::last(3)).expect("history").events.is_empty());
    assert_eq!(db.history(T, "bob", "s", &HistoryQuery::last(3)).expect("history").events.len(), 3);
    let hits = db.history_cache_stats().hits;
    assert_eq!(db.history(T, "ada", "s", &HistoryQuery::last(3)).expect("history").events.len(), 3);
    assert_eq!(db.history_cache_stats().hits, hits + 1, "ada's tail answered");
}
