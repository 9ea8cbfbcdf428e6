//! Crash test, after RocksDB's: a writer performs seeded random operations in durable mode
//! (appends with idempotency keys and expected heads, forks, state compare-and-set, memory
//! puts and updates, forget) and the harness kills it with SIGKILL at seeded random moments,
//! often with an operation in flight. The oracle lives in this process and survives every
//! kill. After each kill the harness reopens the data directory and checks:
//! - the store equals the acknowledged trace, or the acknowledged trace plus the one
//!   operation in flight: it is a prefix of the attempted trace, every acknowledged
//!   operation is present and nothing that was never attempted is;
//! - sequences are contiguous (the model's sessions are `1..=head` by construction);
//! - the indexes catch up: each session's newest turn and each memory's current text are
//!   found by text and by vector, and nothing of a forgotten identity is found;
//! - the append in flight, retried with its idempotency key, returns the first call's
//!   sequence numbers if it had landed, and lands once if it had not.
//!
//! Two writers run the same trace generator: this test binary re-run as a child process on
//! the library (`ENGRAM_CRASH_CHILD`, one JSON operation per stdin line, one JSON answer
//! per stdout line), and `engram serve` driven over HTTP, the server being what is killed.
//! `ENGRAM_CRASH_CYCLES` (default 100) sets the number of kills; `ENGRAM_TEST_SEED` replays
//! the trace (not the kill timing); `ENGRAM_CRASH_DIR` keeps the data directories there.

mod common;

use common::rng::{Rng, test_seed};
use engram::{DEFAULT_TENANT, Engram, IndexOptions, Options};
use engram_client::{ApiError, Embedded, EngramApi, ErrorCode, Remote};
use engram_core::model::{
    AppendOptions, HistoryQuery, HitItem, ListQuery, NewEvent, NewMemory, Role, SearchOver, SearchQuery, SessionConfig,
    StatePrecondition, StateScope,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const IDENTITIES: u64 = 3;
const STATE_KEYS: u64 = 2;
const MEMORIES: u64 = 3;

/// One attempted operation; the child protocol carries it as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Op {
    Append {
        identity: String,
        session: String,
        texts: Vec<String>,
        expected_head: u64,
        key: String,
    },
    Fork {
        identity: String,
        source: String,
        at: u64,
        fork: String,
    },
    /// Compare-and-set: `version` 0 means "must not exist".
    PutState {
        identity: String,
        session: String,
        key: String,
        value: String,
        version: u64,
    },
    PutMemory {
        identity: String,
        id: String,
        text: String,
    },
    UpdateMemory {
        identity: String,
        id: String,
        text: String,
    },
    Forget {
        identity: String,
    },
}

/// What an acknowledged operation answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Ack {
    Appended { first: u64, last: u64, deduplicated: bool },
    Forked { head: u64 },
    State { version: u64 },
    Memory { version: u64 },
    Forgot,
}

/// Each text carries a unique token `w<n>`; its vector is a direction of its own: 8
/// components hashed from `n`, so that no two texts' vectors tie.
fn vector_of(text: &str) -> Vec<f32> {
    let n: u64 = text.rsplit('w').next().and_then(|n| n.parse().ok()).expect("a text ends in w<n>");
    Rng(n).vector(8)
}

fn token_of(text: &str) -> &str {
    text.rsplit(' ').next().expect("token")
}

async fn execute(api: &dyn EngramApi, op: &Op) -> Result<Ack, ApiError> {
    Ok(match op {
        Op::Append { identity, session, texts, expected_head, key } => {
            let events = texts
                .iter()
                .map(|t| NewEvent { embedding: Some(vector_of(t)), ..NewEvent::message(Role::User, t.clone()) })
                .collect();
            let options = AppendOptions { expected_head: Some(*expected_head), idempotency_key: Some(key.clone()) };
            let r = api.append(identity, session, events, options).await?;
            Ack::Appended { first: r.first_seq, last: r.last_seq, deduplicated: r.deduplicated }
        }
        Op::Fork { identity, source, at, fork } => {
            let s = api.fork_session(identity, source, Some(*at), fork, SessionConfig::default()).await?;
            Ack::Forked { head: s.head_seq }
        }
        Op::PutState { identity, session, key, value, version } => {
            let scope = StateScope::Session { identity, session };
            let pre = if *version == 0 { StatePrecondition::Absent } else { StatePrecondition::Version(*version) };
            let doc = api.put_state(scope, key, serde_json::Value::String(value.clone()), pre).await?;
            Ack::State { version: doc.version }
        }
        Op::PutMemory { identity, id, text } => {
            let memory =
                NewMemory { id: Some(id.clone()), embedding: Some(vector_of(text)), ..NewMemory::fact(text.clone()) };
            Ack::Memory { version: api.put_memory(identity, memory).await?.version }
        }
        Op::UpdateMemory { identity, id, text } => {
            let memory = NewMemory { embedding: Some(vector_of(text)), ..NewMemory::fact(text.clone()) };
            Ack::Memory { version: api.update_memory(identity, id, memory).await?.version }
        }
        Op::Forget { identity } => {
            api.forget_identity(identity).await?;
            Ack::Forgot
        }
    })
}

/// What the store should hold: the acknowledged trace applied in order.
#[derive(Clone, Debug, Default, PartialEq)]
struct Model {
    /// (identity, session) -> texts; event `seq` is at index `seq - 1`.
    sessions: BTreeMap<(String, String), Vec<String>>,
    /// (identity, session, key) -> (version, value).
    state: BTreeMap<(String, String, String), (u64, String)>,
    /// (identity, memory id) -> the text of each version, oldest first.
    memories: BTreeMap<(String, String), Vec<String>>,
}

/// What the trace generator and the checks remember beyond the store's observable content.
#[derive(Clone, Debug, Default)]
struct Oracle {
    model: Model,
    /// (identity, session, key) -> the sequence numbers that append got.
    idempotency: BTreeMap<(String, String, String), (u64, u64)>,
    /// (identity, fork) -> the fork point: events up to it are the source's.
    forked_at: BTreeMap<(String, String), u64>,
    /// Tokens of forgotten texts: no search may find them again.
    forgotten: Vec<String>,
}

impl Oracle {
    /// Applies `op` as the store must, and returns what the store must answer.
    fn apply(&mut self, op: &Op) -> Ack {
        let m = &mut self.model;
        match op {
            Op::Append { identity, session, texts, expected_head, key } => {
                let idem = (identity.clone(), session.clone(), key.clone());
                if let Some(&(first, last)) = self.idempotency.get(&idem) {
                    return Ack::Appended { first, last, deduplicated: true };
                }
                let events = m.sessions.entry((identity.clone(), session.clone())).or_default();
                assert_eq!(events.len() as u64, *expected_head, "the generator only appends at the head");
                let first = events.len() as u64 + 1;
                events.extend(texts.iter().cloned());
                let last = events.len() as u64;
                self.idempotency.insert(idem, (first, last));
                Ack::Appended { first, last, deduplicated: false }
            }
            Op::Fork { identity, source, at, fork } => {
                let inherited = m.sessions[&(identity.clone(), source.clone())][..*at as usize].to_vec();
                m.sessions.insert((identity.clone(), fork.clone()), inherited);
                self.forked_at.insert((identity.clone(), fork.clone()), *at);
                Ack::Forked { head: *at }
            }
            Op::PutState { identity, session, key, value, version } => {
                let slot = (identity.clone(), session.clone(), key.clone());
                assert_eq!(m.state.get(&slot).map_or(0, |s| s.0), *version, "the generator only writes current");
                m.state.insert(slot, (version + 1, value.clone()));
                Ack::State { version: version + 1 }
            }
            Op::PutMemory { identity, id, text } | Op::UpdateMemory { identity, id, text } => {
                let versions = m.memories.entry((identity.clone(), id.clone())).or_default();
                versions.push(text.clone());
                Ack::Memory { version: versions.len() as u64 }
            }
            Op::Forget { identity } => {
                let forgotten = &mut self.forgotten;
                let mut forget = |texts: Vec<String>| forgotten.extend(texts.iter().map(|t| token_of(t).to_string()));
                for (_, texts) in extract(&mut m.sessions, |(i, _)| i == identity) {
                    forget(texts);
                }
                for (_, versions) in extract(&mut m.memories, |(i, _)| i == identity) {
                    forget(versions);
                }
                extract(&mut m.state, |(i, _, _)| i == identity);
                extract(&mut self.idempotency, |(i, _, _)| i == identity);
                extract(&mut self.forked_at, |(i, _)| i == identity);
                Ack::Forgot
            }
        }
    }

    /// The next operation: always one the model says must succeed.
    fn generate(&self, rng: &mut Rng, counter: &mut u64) -> Op {
        let mut text = |identity: &str| {
            *counter += 1;
            format!("{identity} says w{counter}")
        };
        let identity = format!("i{}", rng.below(IDENTITIES));
        let sessions: Vec<&String> =
            self.model.sessions.keys().filter(|(i, _)| *i == identity).map(|(_, s)| s).collect();
        let roll = rng.below(100);
        if sessions.is_empty() || roll < 50 {
            let session = match sessions.is_empty() || rng.below(4) == 0 {
                true => format!("s{}", rng.below(3)),
                false => sessions[rng.below(sessions.len() as u64) as usize].clone(),
            };
            let head = self.model.sessions.get(&(identity.clone(), session.clone())).map_or(0, |e| e.len() as u64);
            let texts = (0..1 + rng.below(3)).map(|_| text(&identity)).collect();
            return Op::Append { identity, session, texts, expected_head: head, key: format!("k{}", rng.next()) };
        }
        let session = sessions[rng.below(sessions.len() as u64) as usize].clone();
        let head = self.model.sessions[&(identity.clone(), session.clone())].len() as u64;
        match roll {
            50..=57 if head > 0 => {
                *counter += 1;
                Op::Fork { at: 1 + rng.below(head), identity, source: session, fork: format!("f{counter}") }
            }
            58..=72 => {
                let key = format!("k{}", rng.below(STATE_KEYS));
                let version =
                    self.model.state.get(&(identity.clone(), session.clone(), key.clone())).map_or(0, |s| s.0);
                Op::PutState { value: text(&identity), identity, session, key, version }
            }
            73..=95 => {
                let id = format!("m{}", rng.below(MEMORIES));
                match self.model.memories.contains_key(&(identity.clone(), id.clone())) {
                    true => Op::UpdateMemory { text: text(&identity), identity, id },
                    false => Op::PutMemory { text: text(&identity), identity, id },
                }
            }
            96.. => Op::Forget { identity },
            _ => {
                let texts = vec![text(&identity)];
                Op::Append { identity, session, texts, expected_head: head, key: format!("k{}", rng.next()) }
            }
        }
    }
}

/// Removes and returns the entries whose key matches.
fn extract<K: Ord + Clone, V>(map: &mut BTreeMap<K, V>, matches: impl Fn(&K) -> bool) -> Vec<(K, V)> {
    let keys: Vec<K> = map.keys().filter(|k| matches(k)).cloned().collect();
    keys.into_iter().map(|k| map.remove_entry(&k).expect("present")).collect()
}

/// Reads everything of the default tenant's identities back into a model.
async fn observe(api: &dyn EngramApi) -> Model {
    let mut m = Model::default();
    let all = ListQuery { limit: 1000, ..ListQuery::default() };
    for identity in api.list_identities(&all).await.expect("identities").items {
        let i = identity.id;
        for session in api.list_sessions(&i, &all).await.expect("sessions").items {
            let s = session.id;
            let mut texts = Vec::new();
            let mut after = None;
            loop {
                let q = HistoryQuery { after, limit: 1000, ..HistoryQuery::default() };
                let page = api.history(&i, &s, &q).await.expect("history");
                for e in &page.events {
                    assert_eq!(e.seq, texts.len() as u64 + 1, "{i}/{s}: sequence numbers are not contiguous");
                    texts.push(e.text.clone().expect("text"));
                }
                match page.next_cursor {
                    Some(c) => after = Some(c),
                    None => break,
                }
            }
            m.sessions.insert((i.clone(), s.clone()), texts);
            for doc in api.list_state(StateScope::Session { identity: &i, session: &s }).await.expect("state") {
                let value = doc.value.as_str().expect("string").to_string();
                m.state.insert((i.clone(), s.clone(), doc.key), (doc.version, value));
            }
        }
        for memory in api.list_memories(&i, &all).await.expect("memories").items {
            let mut versions = api.memory_history(&i, &memory.id).await.expect("memory history");
            versions.sort_by_key(|v| v.version);
            let numbers: Vec<u64> = versions.iter().map(|v| v.version).collect();
            assert_eq!(numbers, (1..=versions.len() as u64).collect::<Vec<_>>(), "{i}/{}: versions", memory.id);
            m.memories.insert((i.clone(), memory.id), versions.into_iter().map(|v| v.text).collect());
        }
    }
    m
}

/// The best hit for `text`'s token within `scoped`, searched by text and by its vector.
async fn by_text_and_vector(api: &dyn EngramApi, scoped: SearchQuery, text: &str) -> [Vec<HitItem>; 2] {
    let scoped = SearchQuery { k: 1, ..scoped };
    let by_text = SearchQuery { text: Some(token_of(text).to_string()), ..scoped.clone() };
    let by_vector = SearchQuery { vector: Some(vector_of(text)), ..scoped };
    let mut found = [Vec::new(), Vec::new()];
    for (slot, query) in found.iter_mut().zip([by_text, by_vector]) {
        *slot = api.search(&query).await.expect("search").hits.into_iter().map(|h| h.item).collect();
    }
    found
}

/// After the indexes caught up: the newest turn of each session and the current text of
/// each memory are found, by text and by vector; nothing forgotten is.
async fn check_search(api: &dyn EngramApi, oracle: &Oracle, context: &str) {
    for ((identity, session), texts) in &oracle.model.sessions {
        let own_from = oracle.forked_at.get(&(identity.clone(), session.clone())).copied().unwrap_or(0);
        let Some(last) = texts.last().filter(|_| texts.len() as u64 > own_from) else { continue };
        let scoped = SearchQuery {
            identity: Some(identity.clone()),
            sessions: vec![session.clone()],
            over: SearchOver::Events,
            ..SearchQuery::default()
        };
        for hits in by_text_and_vector(api, scoped, last).await {
            let seqs: Vec<u64> = hits
                .iter()
                .filter_map(|h| if let HitItem::Event { event, .. } = h { Some(event.seq) } else { None })
                .collect();
            assert_eq!(seqs, vec![texts.len() as u64], "{context}: {identity}/{session} newest turn not found");
        }
    }
    for ((identity, id), versions) in &oracle.model.memories {
        let current = versions.last().expect("a version");
        let scoped =
            SearchQuery { identity: Some(identity.clone()), over: SearchOver::Memories, ..SearchQuery::default() };
        for hits in by_text_and_vector(api, scoped, current).await {
            let ids: Vec<(&str, u64)> = hits
                .iter()
                .filter_map(|h| match h {
                    HitItem::Memory { memory, .. } => Some((memory.id.as_str(), memory.version)),
                    HitItem::Event { .. } => None,
                })
                .collect();
            assert_eq!(ids, vec![(id.as_str(), versions.len() as u64)], "{context}: memory {identity}/{id}");
        }
    }
    for token in oracle.forgotten.iter().rev().take(20) {
        let found = api.search(&SearchQuery::text(token.clone())).await.expect("search");
        assert!(found.hits.is_empty(), "{context}: forgotten {token} found: {:?}", found.hits);
    }
}

/// A writer the harness can kill.
trait Writer {
    /// Runs `op` to its answer.
    fn run(&mut self, op: &Op) -> Result<Ack, ApiError>;
    /// Starts `op`, waits `delay` and kills the writer: the answer if it came in time.
    fn run_and_kill(self: Box<Self>, op: &Op, delay: Duration) -> Option<Result<Ack, ApiError>>;
}

/// The library in a child process: this test binary with `ENGRAM_CRASH_CHILD` set.
struct ChildWriter {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl ChildWriter {
    fn start(dir: &std::path::Path) -> Box<dyn Writer> {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args(["library_writer_survives_kill_9", "--exact", "--nocapture", "--test-threads=1"])
            .env("ENGRAM_CRASH_CHILD", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the writer");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Box::new(ChildWriter { child, stdin, stdout })
    }

    fn send(&mut self, op: &Op) {
        writeln!(self.stdin, "{}", serde_json::to_string(op).expect("json")).expect("send to the writer");
        self.stdin.flush().expect("flush");
    }

    /// The next answer line; `None` when the writer is gone.
    fn answer(&mut self) -> Option<Result<Ack, ApiError>> {
        let mut line = String::new();
        while self.stdout.read_line(&mut line).ok()? > 0 {
            // libtest's "test ... " may precede the first answer on its line.
            if let Some((_, json)) = line.split_once("answer ") {
                return Some(serde_json::from_str(json).expect("an answer"));
            }
            line.clear();
        }
        None
    }
}

impl Drop for ChildWriter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Writer for ChildWriter {
    fn run(&mut self, op: &Op) -> Result<Ack, ApiError> {
        self.send(op);
        self.answer().expect("the writer answers")
    }

    fn run_and_kill(mut self: Box<Self>, op: &Op, delay: Duration) -> Option<Result<Ack, ApiError>> {
        self.send(op);
        std::thread::sleep(delay);
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
        self.answer()
    }
}

/// The child side: the library in durable mode, indexes committing and snapshotting often
/// so that kills land inside full-text commits and vector snapshot writes.
fn child_main(dir: &str) -> ! {
    let index =
        IndexOptions { text_commit_interval_ms: 5, vector_snapshot_every_changes: 16, ..IndexOptions::default() };
    let options = Options { retention_sweep_interval_ms: None, index, ..Options::default() };
    let db = Engram::open(dir, options).expect("the writer opens the store");
    let api = Embedded::new(db, DEFAULT_TENANT);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut out = std::io::stdout();
    for line in std::io::stdin().lines() {
        let op: Op = serde_json::from_str(&line.expect("stdin")).expect("an operation");
        let answer = rt.block_on(execute(&api, &op));
        writeln!(out, "answer {}", serde_json::to_string(&answer).expect("json")).expect("stdout");
        out.flush().expect("flush");
    }
    std::process::exit(0)
}

/// `engram serve` on the data directory, driven over HTTP.
struct ServerWriter {
    child: Child,
    api: Arc<Remote>,
    rt: Arc<tokio::runtime::Runtime>,
}

impl ServerWriter {
    /// Starts the server on a free port; another port if that one was taken meanwhile.
    fn start(dir: &std::path::Path, rt: &Arc<tokio::runtime::Runtime>) -> Box<dyn Writer> {
        for _ in 0..5 {
            let port =
                std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
            let mut child = Command::new(env!("CARGO_BIN_EXE_engram"))
                .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
                .arg("--data-dir")
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn engram serve");
            let url = format!("http://127.0.0.1:{port}");
            let ready = url.clone() + "/readyz";
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if rt.block_on(async { reqwest::get(&ready).await.is_ok_and(|r| r.status().is_success()) }) {
                    let api = Arc::new(Remote::new(&url, None).expect("client"));
                    return Box::new(ServerWriter { child, api, rt: rt.clone() });
                }
                if child.try_wait().expect("try_wait").is_some() {
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    panic!("engram serve did not get ready in 60 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("engram serve exited at start five times (no free port?)");
    }
}

impl Drop for ServerWriter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Writer for ServerWriter {
    fn run(&mut self, op: &Op) -> Result<Ack, ApiError> {
        self.rt.block_on(execute(self.api.as_ref(), op))
    }

    fn run_and_kill(mut self: Box<Self>, op: &Op, delay: Duration) -> Option<Result<Ack, ApiError>> {
        let (api, op) = (self.api.clone(), op.clone());
        let call = self.rt.spawn(async move { execute(api.as_ref(), &op).await });
        std::thread::sleep(delay);
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
        match self.rt.block_on(call).expect("the call task") {
            Err(e) if e.code == ErrorCode::Transport => None,
            answer => Some(answer),
        }
    }
}

fn cycles() -> u64 {
    std::env::var("ENGRAM_CRASH_CYCLES").ok().and_then(|s| s.parse().ok()).unwrap_or(100)
}

fn crash_test(name: &str, start: impl Fn(&std::path::Path) -> Box<dyn Writer>) {
    let seed = test_seed(name);
    // `ENGRAM_CRASH_DIR=<dir>`: the data directory is kept there, for a failure to inspect.
    let dir = match std::env::var("ENGRAM_CRASH_DIR") {
        Ok(parent) => tempfile::Builder::new()
            .prefix(&name.replace(' ', "-"))
            .disable_cleanup(true)
            .tempdir_in(parent)
            .expect("tempdir"),
        Err(_) => tempfile::tempdir().expect("tempdir"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut rng = Rng(seed);
    let mut oracle = Oracle::default();
    let mut counter = 0;
    let (mut acked, mut landed_in_flight, mut lost_in_flight, mut retried_dedup) = (0u64, 0u64, 0u64, 0u64);
    // An append whose answer the kill swallowed: the next writer retries it first.
    let mut retry: Option<Op> = None;
    let cycles = cycles();
    for cycle in 0..cycles {
        let context = format!("{name} cycle {cycle} (seed {seed})");
        let mut writer = start(dir.path());
        let mut ops: Vec<Op> = retry.take().into_iter().collect();
        let mut preview = oracle.clone();
        for op in &ops {
            preview.apply(op);
        }
        for _ in 0..1 + rng.below(40) {
            let op = preview.generate(&mut rng, &mut counter);
            preview.apply(&op);
            ops.push(op);
        }
        let last = ops.pop().expect("an operation");
        for op in &ops {
            let want = oracle.apply(op);
            let got = writer.run(op).unwrap_or_else(|e| panic!("{context}: {op:?} failed: {e}"));
            assert_eq!(got, want, "{context}: {op:?}");
            retried_dedup += u64::from(matches!(got, Ack::Appended { deduplicated: true, .. }));
            acked += 1;
        }
        let before = oracle.clone();
        let mut after = oracle.clone();
        let want = after.apply(&last);
        let delay = Duration::from_micros(rng.below(4000));
        match writer.run_and_kill(&last, delay) {
            Some(answer) => {
                let got = answer.unwrap_or_else(|e| panic!("{context}: {last:?} failed: {e}"));
                assert_eq!(got, want, "{context}: {last:?}");
                oracle = after;
                acked += 1;
            }
            None => {
                let db = Engram::open(dir.path(), Options::default()).expect("reopen after the kill");
                let observed = rt.block_on(observe(&Embedded::new(db, DEFAULT_TENANT)));
                if observed == after.model {
                    oracle = after;
                    landed_in_flight += 1;
                } else {
                    assert_eq!(
                        observed, before.model,
                        "{context}: neither the acknowledged trace nor it plus {last:?}"
                    );
                    lost_in_flight += 1;
                }
                if matches!(last, Op::Append { .. }) {
                    retry = Some(last);
                }
            }
        }
        let db = Engram::open(dir.path(), Options::default()).expect("reopen after the kill");
        db.wait_for_indexes().expect("the indexes catch up");
        // Every stored record indexed exactly once, nothing indexed that is not stored.
        let report = db.verify().expect("verify");
        assert!(report.is_ok() && report.index_checked, "{context}: {:?}", report.problems);
        let api = Embedded::new(db, DEFAULT_TENANT);
        let observed = rt.block_on(observe(&api));
        assert_eq!(observed, oracle.model, "{context}: an acknowledged operation is missing or one was invented");
        rt.block_on(check_search(&api, &oracle, &context));
    }
    eprintln!(
        "{name}: {cycles} kills, {acked} operations acknowledged, of the unanswered {landed_in_flight} had landed and \
         {lost_in_flight} had not, {retried_dedup} retries deduplicated"
    );
    assert!(acked > cycles, "the writer acknowledged almost nothing");
    // Kills land both before and after the commit of the operation in flight: both
    // branches of the check ran (over enough cycles to make that all but certain).
    if cycles >= 50 {
        assert!(landed_in_flight > 0 && lost_in_flight > 0, "kills never landed inside an operation (seed {seed})");
    }
}

#[test]
fn library_writer_survives_kill_9() {
    if let Ok(dir) = std::env::var("ENGRAM_CRASH_CHILD") {
        child_main(&dir);
    }
    crash_test("library writer", ChildWriter::start);
}

#[test]
fn server_survives_kill_9() {
    let rt = Arc::new(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt"));
    crash_test("engram serve", |dir| ServerWriter::start(dir, &rt));
}
