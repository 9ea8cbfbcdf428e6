//! Context assembly latency, next to what it is built from, measured in the same run:
//! - `context`: an 8k-token context for a 10k-event session with 1k memories of its
//!   identity, with a query (two searches, the recent turns, token counting);
//! - `context, no retrieval`: the same without memories and older events;
//! - baselines: reading the same number of newest events with `history`, and the two
//!   searches alone.
//!
//! ```text
//! cargo run --release -p engram-benches --bin context-bench -- [--events 10000] [--memories 1000] [--budget 8192]
//! ```

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use anyhow::Result;
use clap::Parser;
use engram::{
    AppendOptions, ContextRequest, DEFAULT_TENANT, Engram, EventKind, HistoryQuery, NewEvent, NewMemory, Options, Role,
    SearchOver, SearchQuery,
};
use engram_benches::Rng;
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    #[arg(long, default_value_t = 1_000)]
    memories: usize,
    #[arg(long, default_value_t = 8192)]
    budget: u32,
    /// Calls timed per measurement.
    #[arg(long, default_value_t = 300)]
    calls: usize,
}

const T: &str = DEFAULT_TENANT;

const WORDS: &[&str] = &[
    "database",
    "migration",
    "schema",
    "deploy",
    "budget",
    "invoice",
    "meeting",
    "flight",
    "hotel",
    "recipe",
    "garden",
    "python",
    "rust",
    "kubernetes",
    "latency",
    "customer",
    "refund",
    "contract",
    "holiday",
    "birthday",
    "doctor",
    "weather",
    "report",
    "dashboard",
    "alert",
    "backup",
    "restore",
    "password",
    "laptop",
    "printer",
    "coffee",
    "train",
    "project",
    "deadline",
    "review",
    "design",
    "release",
    "ticket",
    "sprint",
    "roadmap",
    "pricing",
    "marketing",
];

/// Sentences of random words from `WORDS`.
fn sentence(rng: &mut Rng, words: usize) -> String {
    let mut s = String::new();
    for i in 0..words {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[(rng.next_u64() % WORDS.len() as u64) as usize]);
        if rng.next_u64().is_multiple_of(3) {
            s.push_str(" and the");
        }
    }
    s.push('.');
    s
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)].as_secs_f64() * 1e3;
    (at(0.5), at(0.99))
}

fn time<T>(n: usize, mut f: impl FnMut(usize) -> T) -> (f64, f64) {
    for i in 0..n.min(20) {
        std::hint::black_box(f(i));
    }
    let samples = (0..n)
        .map(|i| {
            let started = Instant::now();
            std::hint::black_box(f(i));
            started.elapsed()
        })
        .collect();
    percentiles(samples)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let db = Engram::open(dir.path(), Options { retention_sweep_interval_ms: None, ..Options::default() })?;
    let mut rng = Rng(42);
    let started = Instant::now();
    let mut batch = Vec::new();
    for i in 0..args.events {
        let event = match i % 10 {
            4 => NewEvent {
                call_id: Some(format!("call-{i}")),
                name: Some("run_query".into()),
                ..NewEvent::with_data(EventKind::ToolCall, json!({"sql": sentence(&mut rng, 8)}))
            },
            5 => NewEvent {
                kind: Some(EventKind::ToolResult),
                call_id: Some(format!("call-{}", i - 1)),
                text: Some((0..12).map(|_| sentence(&mut rng, 25)).collect::<Vec<_>>().join("\n")),
                ..NewEvent::default()
            },
            0 | 2 | 7 | 9 => NewEvent::message(Role::User, sentence(&mut rng, 20)),
            _ => NewEvent::message(Role::Assistant, sentence(&mut rng, 40)),
        };
        batch.push(event);
        if batch.len() == 500 {
            db.append(T, "alice", "work", std::mem::take(&mut batch), AppendOptions::default())?;
        }
    }
    if !batch.is_empty() {
        db.append(T, "alice", "work", batch, AppendOptions::default())?;
    }
    for _ in 0..args.memories {
        db.put_memory(T, "alice", NewMemory::fact(sentence(&mut rng, 15)))?;
    }
    db.wait_for_indexes()?;
    println!(
        "setup: {} events, {} memories, indexed in {:.1} s; budget {} tokens, {} calls each",
        args.events,
        args.memories,
        started.elapsed().as_secs_f64(),
        args.budget,
        args.calls
    );

    let queries: Vec<String> = (0..50).map(|_| sentence(&mut rng, 6)).collect();
    let request = |i: usize| ContextRequest {
        query: Some(queries[i % queries.len()].clone()),
        ..ContextRequest::with_budget(args.budget)
    };
    let sample = db.context(T, "alice", "work", &request(0))?;
    let recent = sample.pieces.iter().filter(|p| p.section == engram::ContextSection::Recent).count();
    println!(
        "one context: {} messages, {} tokens ({} recent events, {} retrieved pieces, {} dropped)",
        sample.messages.len(),
        sample.total_tokens,
        recent,
        sample.pieces.iter().filter(|p| p.because == engram::IncludedBecause::Relevant).count(),
        sample.dropped.len()
    );

    let (p50, p99) = time(args.calls, |i| db.context(T, "alice", "work", &request(i)).unwrap());
    println!("{:<44} p50 {p50:>7.2} ms  p99 {p99:>7.2} ms", "context (query, memories, older events)");
    let no_retrieval = ContextRequest { memories_k: 0, related_k: 0, ..ContextRequest::with_budget(args.budget) };
    let (n50, n99) = time(args.calls, |_| db.context(T, "alice", "work", &no_retrieval).unwrap());
    println!("{:<44} p50 {n50:>7.2} ms  p99 {n99:>7.2} ms", "context, no retrieval");
    let bare = ContextRequest { approvals_lookback: 0, ..no_retrieval.clone() };
    let (b50, b99) = time(args.calls, |_| db.context(T, "alice", "work", &bare).unwrap());
    println!("{:<44} p50 {b50:>7.2} ms  p99 {b99:>7.2} ms", "context, no retrieval, no approvals lookback");
    let (h50, h99) = time(args.calls, |_| db.history(T, "alice", "work", &HistoryQuery::last(recent.max(1))).unwrap());
    println!("{:<44} p50 {h50:>7.2} ms  p99 {h99:>7.2} ms", format!("baseline: history of the newest {recent} events"));
    let (s50, s99) = time(args.calls, |i| {
        let q = SearchQuery {
            text: Some(queries[i % queries.len()].clone()),
            identity: Some("alice".into()),
            ..SearchQuery::default()
        };
        let m = db.search(T, &SearchQuery { over: SearchOver::Memories, k: 8, ..q.clone() }).unwrap();
        let e = db.search(T, &SearchQuery { over: SearchOver::Events, k: 24, ..q }).unwrap();
        (m, e)
    });
    println!("{:<44} p50 {s50:>7.2} ms  p99 {s99:>7.2} ms", "baseline: the two searches alone");
    println!(
        "ratios (p50): context / (history + searches) {:.2}x; no-retrieval context / history {:.2}x",
        p50 / (h50 + s50),
        n50 / h50
    );
    Ok(())
}
