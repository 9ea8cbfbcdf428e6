//! HTTP server benchmark: N concurrent keep-alive connections appending turns and reading
//! the newest 50 of a session over loopback, next to redis-server (LPUSH and LRANGE_100 via
//! redis-benchmark, same connection count, same run, the reads taking turns with Redis's
//! in [`ROUNDS`] rounds) when it is installed; plus the server's added latency over the
//! same call made in process.
//!
//! The load generator is a bare HTTP/1.1 client ([`Conn`]): it writes each request in one
//! write (reads: built once per connection) and reads the response's headers and
//! `Content-Length` body, as light on its side as redis-benchmark is on Redis's (the two
//! share the machine with the server they drive).
//!
//! ```text
//! cargo run --release -p engram-benches --bin http-bench -- [--connections 16] [--seconds 5]
//! ```

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use anyhow::Result;
use clap::Parser;
use engram::{AppendOptions, DEFAULT_TENANT, HistoryQuery, NewEvent, Role};
use engram_benches::{TURN_BYTES, turn};
use serde_json::json;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
struct Args {
    /// Concurrent connections (each its own session).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Duration of each timed run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Turns in each session before the history reads.
    #[arg(long, default_value_t = 1000)]
    history_events: u64,
    /// Serve in durable mode (each append synced) instead of buffered.
    #[arg(long)]
    durable: bool,
    /// The server's history tail cache, in bytes (0: off, every read goes to RocksDB).
    #[arg(long)]
    history_cache_bytes: Option<usize>,
    /// Append results as JSON lines here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn summarize(mut latencies: Vec<Duration>, elapsed: Duration) -> Figures {
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Figures {
        ops_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pick(0.50).as_secs_f64() * 1e3,
        p99_ms: pick(0.99).as_secs_f64() * 1e3,
    }
}

/// Runs `op(connection, i)` on `connections` tasks for `seconds`.
async fn load<F, Fut>(connections: usize, seconds: f64, op: F) -> Figures
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    op(c, i).await;
                    latencies.push(t.elapsed());
                    i += 1;
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    summarize(all, started.elapsed())
}

/// A bare keep-alive HTTP/1.1 connection, one request at a time.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Conn { stream, buf: Vec::with_capacity(64 * 1024) }
    }

    /// Sends `request` and reads the whole response: its status and body length.
    async fn call(&mut self, request: &[u8]) -> (u16, usize) {
        self.stream.write_all(request).await.unwrap();
        self.buf.clear();
        let head_len = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            self.fill().await;
        };
        let head = std::str::from_utf8(&self.buf[..head_len]).unwrap();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let body_len: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().unwrap())
            })
            .expect("a Content-Length response");
        while self.buf.len() < head_len + body_len {
            self.fill().await;
        }
        assert_eq!(self.buf.len(), head_len + body_len, "one response at a time");
        (status, body_len)
    }

    async fn fill(&mut self) {
        self.buf.reserve(32 * 1024);
        let n = self.stream.read_buf(&mut self.buf).await.unwrap();
        assert!(n > 0, "the server closed the connection");
    }
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

/// A GET of `path(c)` for each connection `c`, built once.
fn per_connection(connections: usize, path: impl Fn(usize) -> String) -> impl Fn(usize, u64) -> Vec<u8> + Clone {
    let requests: std::sync::Arc<Vec<Vec<u8>>> = std::sync::Arc::new((0..connections).map(|c| get(&path(c))).collect());
    move |c, _| requests[c].clone()
}

fn post_json(path: &str, body: &serde_json::Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Sends `request(connection, i)` on `connections` connections for `seconds`, each
/// response expected to have `status`.
async fn load_http<F>(addr: SocketAddr, connections: usize, seconds: f64, status: u16, request: F) -> Figures
where
    F: Fn(usize, u64) -> Vec<u8> + Send + Sync + Clone + 'static,
{
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(tokio::sync::Mutex::new(Conn::open(addr).await));
    }
    let conns = std::sync::Arc::new(conns);
    load(connections, seconds, move |c, i| {
        let (conns, request) = (conns.clone(), request.clone());
        async move {
            let bytes = request(c, i);
            let (got, _) = conns[c].lock().await.call(&bytes).await;
            assert_eq!(got, status);
        }
    })
    .await
}

fn print(name: &str, f: Figures) {
    println!("{name:<44} {:>10.0} ops/s   p50 {:>7.3} ms   p99 {:>7.3} ms", f.ops_per_sec, f.p50_ms, f.p99_ms);
}

/// A redis-server on a spare port, no persistence, stopped when dropped.
struct Redis {
    server: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// `None` when redis-server is not installed.
    fn start() -> Option<Redis> {
        let port = 16379;
        let dir = tempfile::tempdir().ok()?;
        let server = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .ok()?;
        std::thread::sleep(Duration::from_millis(300));
        Some(Redis { server, port, _dir: dir })
    }

    /// redis-benchmark's figures for `tests` (its `-t`), by test name; `None` when it is
    /// not installed or printed nothing. Its CSV:
    /// `"test","rps","avg_latency_ms","min","p50","p95","p99","max"`.
    fn bench(&self, connections: usize, requests: u64, tests: &str) -> Option<Vec<(String, Figures)>> {
        let output = Command::new("redis-benchmark")
            .args(["-p", &self.port.to_string(), "-c", &connections.to_string(), "-n", &requests.to_string()])
            .args(["-t", tests, "-d", &TURN_BYTES.to_string(), "--csv"])
            .output()
            .ok()?;
        let text = String::from_utf8(output.stdout).ok()?;
        let mut out = Vec::new();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split(',').map(|c| c.trim_matches('"')).collect();
            if cols.len() < 7 {
                continue;
            }
            let num = |i: usize| cols[i].parse::<f64>().unwrap_or(f64::NAN);
            out.push((cols[0].to_string(), Figures { ops_per_sec: num(1), p50_ms: num(4), p99_ms: num(6) }));
        }
        (!out.is_empty()).then_some(out)
    }

    /// The one figure named `prefix...` of a [`Redis::bench`] run.
    fn figure(&self, connections: usize, requests: u64, test: &str, prefix: &str) -> Option<Figures> {
        let figures = self.bench(connections, requests, test)?;
        figures.into_iter().find(|(name, _)| name.starts_with(prefix)).map(|(_, f)| f)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// `run` on `redis` (when it started) on the blocking pool: redis-benchmark runs as a child
/// process the caller waits for.
async fn redis_figure(
    redis: &Option<std::sync::Arc<Redis>>,
    run: impl FnOnce(&Redis) -> Option<Figures> + Send + 'static,
) -> Result<Option<Figures>> {
    let Some(redis) = redis.clone() else { return Ok(None) };
    Ok(tokio::task::spawn_blocking(move || run(&redis)).await?)
}

/// Rounds in which Engram's history reads and Redis's LRANGE_100 take turns.
const ROUNDS: usize = 3;

/// The middle of `values` (the upper one of an even count).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let config = engram_server::Config {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse()?,
        durability: if args.durable {
            engram_server::config::Durability::Durable
        } else {
            engram_server::config::Durability::Buffered
        },
        history_cache_bytes: args.history_cache_bytes.unwrap_or(engram::Options::default().history_cache_bytes),
        ..engram_server::Config::default()
    };
    let cache = match config.history_cache_bytes {
        0 => "history cache off".to_string(),
        n => format!("history cache {} MiB", n >> 20),
    };
    let server = engram_server::start(config).await?;
    let base = server.url();
    let addr = server.local_addr();
    let mode = if args.durable { "durable" } else { "buffered" };
    println!("engram serve ({mode}, {cache}) at {base}, {} connections, {}s per run", args.connections, args.seconds);
    let mut results: Vec<(String, Figures)> = Vec::new();

    // Appends: one turn per request, each connection its own session.
    let append = |c: usize, i: u64| {
        let body = json!({"events": [{"kind": "message", "role": "user", "text": turn(i)}]});
        post_json(&format!("/v1/identities/bench/sessions/a{c}/events"), &body)
    };
    let f = load_http(addr, args.connections, args.seconds, 201, append).await;
    print("http append (1 turn)", f);
    results.push(("http_append".into(), f));
    // Redis's LPUSH is timed alone, as the reads below are: not next to the indexer still
    // taking in the appends above, or RocksDB flushing them.
    server.db().sync()?;
    server.db().wait_for_indexes()?;
    let redis = Redis::start().map(std::sync::Arc::new);
    let requests = |f: Figures| (f.ops_per_sec * args.seconds).max(50_000.0) as u64;
    let (connections, lpush_requests) = (args.connections, requests(f));
    let lpush = redis_figure(&redis, move |r| r.figure(connections, lpush_requests, "lpush", "LPUSH")).await?;
    match lpush {
        Some(lpush) => {
            print("redis LPUSH", lpush);
            println!("ratio append / redis LPUSH:            {:.2}x", f.ops_per_sec / lpush.ops_per_sec);
            results.push(("redis_LPUSH".into(), lpush));
        }
        None => println!("redis-server / redis-benchmark not found: no Redis baseline (apt-get install redis-server)"),
    }

    // History: the newest 50 of a session holding `history_events` turns.
    let db = server.db().clone();
    for c in 0..args.connections {
        let mut i = 0;
        while i < args.history_events {
            let n = 500.min(args.history_events - i);
            let turns = (i..i + n).map(|k| NewEvent::message(Role::User, turn(k))).collect();
            db.append(DEFAULT_TENANT, "bench", &format!("h{c}"), turns, AppendOptions::default())?;
            i += n;
        }
    }
    db.sync()?;
    // Reads are timed alone, as Redis's are: not next to the indexer still taking in the
    // appends above.
    let waited = Instant::now();
    db.wait_for_indexes()?;
    println!("indexes caught up with the appends in {:.2}s", waited.elapsed().as_secs_f64());
    let history =
        per_connection(args.connections, |c| format!("/v1/identities/bench/sessions/h{c}/events?order=desc&limit=50"));
    // Engram's reads and Redis's LRANGE_100 take turns, so that a slow stretch of the
    // machine (Redis's own rate swings by a third within one run here) falls on both.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let f = load_http(addr, args.connections, args.seconds, 200, history.clone()).await;
        print(&format!("http history (newest 50), round {round}"), f);
        ours.push(f);
        let lrange_requests = requests(f);
        let lrange =
            redis_figure(&redis, move |r| r.figure(connections, lrange_requests, "lrange_100", "LRANGE_100")).await?;
        if let Some(lrange) = lrange {
            print(&format!("redis LRANGE_100, round {round}"), lrange);
            theirs.push(lrange);
        }
    }
    drop(redis);
    let overall = |rounds: &[Figures]| Figures {
        ops_per_sec: rounds.iter().map(|f| f.ops_per_sec).sum::<f64>() / rounds.len() as f64,
        p50_ms: median(rounds.iter().map(|f| f.p50_ms).collect()),
        p99_ms: median(rounds.iter().map(|f| f.p99_ms).collect()),
    };
    print("http history (newest 50), mean of rounds", overall(&ours));
    results.push(("http_history_50".into(), overall(&ours)));
    if theirs.len() == ours.len() {
        let ratios: Vec<String> =
            ours.iter().zip(&theirs).map(|(a, b)| format!("{:.2}", a.ops_per_sec / b.ops_per_sec)).collect();
        print("redis LRANGE_100, mean of rounds", overall(&theirs));
        println!(
            "ratio history-50 / redis LRANGE_100:   {:.2}x (rounds: {})",
            overall(&ours).ops_per_sec / overall(&theirs).ops_per_sec,
            ratios.join(", ")
        );
        results.push(("redis_LRANGE_100".into(), overall(&theirs)));
    }

    // Added latency: one connection over HTTP vs the same call in process, one at a time.
    let embedded = engram_client::Embedded::new(db.clone(), DEFAULT_TENANT);
    let in_process = {
        let embedded = embedded.clone();
        move |_c: usize, _i: u64| {
            let embedded = embedded.clone();
            async move {
                use engram_client::EngramApi;
                embedded.history("bench", "h0", &HistoryQuery::last(50)).await.unwrap();
            }
        }
    };
    let inproc = load(1, args.seconds.min(3.0), in_process).await;
    print("embedded history (newest 50), 1 caller", inproc);
    let direct = {
        let db = db.clone();
        move |_c: usize, _i: u64| {
            let db = db.clone();
            async move {
                db.history(DEFAULT_TENANT, "bench", "h0", &HistoryQuery::last(50)).unwrap();
            }
        }
    };
    let lib = load(1, args.seconds.min(3.0), direct).await;
    print("library history (newest 50), direct call", lib);
    let http1 = load_http(addr, 1, args.seconds.min(3.0), 200, history).await;
    print("http history (newest 50), 1 connection", http1);
    println!("server overhead at p50 over the direct library call: {:.3} ms", http1.p50_ms - lib.p50_ms);
    results.push(("embedded_history_50_1".into(), inproc));
    results.push(("library_history_50_1".into(), lib));
    results.push(("http_history_50_1".into(), http1));

    // A session state document (~1 KB of JSON), 16 connections and one.
    for c in 0..args.connections {
        let scope = engram::StateScope::Session { identity: "bench", session: &format!("h{c}") };
        let plan = serde_json::json!({"steps": (0..40).map(|i| format!("step {i}: look it up")).collect::<Vec<_>>()});
        db.put_state(DEFAULT_TENANT, scope, "plan", plan, engram::StatePrecondition::None)?;
    }
    let state = per_connection(args.connections, |c| format!("/v1/identities/bench/sessions/h{c}/state/plan"));
    let f = load_http(addr, args.connections, args.seconds, 200, state.clone()).await;
    print("http state get", f);
    results.push(("http_state_get".into(), f));
    let f = load_http(addr, 1, args.seconds.min(3.0), 200, state).await;
    print("http state get, 1 connection", f);
    results.push(("http_state_get_1".into(), f));

    if let Some(path) = &args.out {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        for (name, f) in &results {
            let line = json!({"bench": name, "mode": mode, "connections": args.connections,
                "ops_per_sec": f.ops_per_sec, "p50_ms": f.p50_ms, "p99_ms": f.p99_ms});
            writeln!(file, "{line}")?;
        }
    }
    server.shutdown().await?;
    Ok(())
}
