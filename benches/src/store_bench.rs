//! Core store benchmarks, each next to raw RocksDB doing the equivalent work in the same
//! run, printing both rates and their ratio (and appending a JSON line to `--out`).
//!
//! ```text
//! cargo run --release -p engram-benches --bin store-bench -- [--events 1000000] [--seconds 3]
//! ```

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use anyhow::Result;
use clap::Parser;
use engram::{AppendOptions, DEFAULT_TENANT, Durability, Engram, EventKind, HistoryQuery, NewEvent, Options, Role};
use engram_benches::turn;
use engram_core::records::EventRecord;
use engram_storage::frame;
use rocksdb::{DB, IteratorMode, ReadOptions, WriteBatch, WriteOptions};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// Events stored for the history-read benchmark.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Duration of each timed append run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// History reads to time, per reader (raw scan, floor, Engram), in 10 rounds.
    #[arg(long, default_value_t = 60_000)]
    reads: u64,
    /// Which benchmarks: durable, buffered, history, dump (comma separated).
    #[arg(long, default_value = "durable,buffered,history")]
    only: String,
    /// Keep the full-text and vector indexes on during the append runs (the default
    /// configuration: they catch up on a background thread).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    indexes: bool,
    /// Append results as JSON lines here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn raw_db(path: &std::path::Path) -> DB {
    let mut o = rocksdb::Options::default();
    o.create_if_missing(true);
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    DB::open(&o, path).unwrap()
}

fn engram(path: &std::path::Path, durability: Durability, indexes: bool) -> Engram {
    let index = engram::IndexOptions { enabled: indexes, ..Default::default() };
    Engram::open(path, Options { durability, retention_sweep_interval_ms: None, index, ..Options::default() }).unwrap()
}

/// Runs `op(thread, i)` on `threads` threads for `seconds`; returns operations per second.
fn timed(threads: usize, seconds: f64, op: impl Fn(usize, u64) + Sync) -> f64 {
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, count, op) = (&stop, &count, &op);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    op(t, i);
                    i += 1;
                }
                count.fetch_add(i, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

struct Report {
    lines: Vec<serde_json::Value>,
}

impl Report {
    fn row(&mut self, name: &str, engram: f64, raw: f64, unit: &str) {
        println!(
            "{name:<40} engram {engram:>12.0} {unit}   raw rocksdb {raw:>12.0} {unit}   ratio {:.2}",
            engram / raw
        );
        self.lines.push(
            serde_json::json!({"bench": name, "engram": engram, "raw": raw, "unit": unit, "ratio": engram / raw}),
        );
    }
}

/// The same turns in raw RocksDB and in Engram (100 sessions, appends of 1000, buffered,
/// indexes off), both synced and fully compacted.
fn load_both(events: u64) -> Result<(tempfile::TempDir, DB, tempfile::TempDir, Engram, u64)> {
    let sessions = 100u64;
    let per_session = events / sessions;
    let (raw_dir, raw) = load_raw(sessions, per_session, |_, i| turn(i).into_bytes())?;
    let dir = tempfile::tempdir()?;
    // Indexes off: these benchmarks read storage, and a million-document catch-up in the
    // background would run beside them.
    let options = Options {
        durability: Durability::Buffered,
        retention_sweep_interval_ms: None,
        index: engram::IndexOptions { enabled: false, ..Default::default() },
        ..Options::default()
    };
    let db = Engram::open(dir.path(), options)?;
    let load = Instant::now();
    for s in 0..sessions {
        let mut i = 0;
        while i < per_session {
            let n = (per_session - i).min(1000);
            let events = (i..i + n).map(|j| NewEvent::message(Role::User, turn(j))).collect();
            db.append(DEFAULT_TENANT, "bench", &format!("s{s}"), events, AppendOptions::default()).unwrap();
            i += n;
        }
    }
    db.sync()?;
    // Both stores fully compacted, so neither read runs beside a background compaction.
    db.compact_storage()?;
    let load_rate = (sessions * per_session) as f64 / load.elapsed().as_secs_f64();
    println!("loaded {} events ({load_rate:.0} events/s in batches of 1000)", sessions * per_session);
    Ok((raw_dir, raw, dir, db, sessions))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut report = Report { lines: Vec::new() };
    let only: Vec<&str> = args.only.split(',').collect();
    let mut single_sync_rate = None;
    if only.contains(&"durable") {
        for threads in [1usize, 4, 16] {
            let dir = tempfile::tempdir()?;
            let db = raw_db(dir.path());
            let raw = timed(threads, args.seconds, |t, i| {
                let mut b = WriteBatch::default();
                b.put(format!("t{t}-{i:012}"), turn(i));
                let mut wo = WriteOptions::default();
                wo.set_sync(true);
                db.write_opt(b, &wo).unwrap();
            });
            drop(db);
            let dir = tempfile::tempdir()?;
            let db = engram(dir.path(), Durability::Durable, args.indexes);
            let rate = timed(threads, args.seconds, |t, i| {
                let event = NewEvent::message(Role::User, turn(i));
                db.append(DEFAULT_TENANT, "bench", &format!("s{t}"), vec![event], AppendOptions::default()).unwrap();
            });
            report.row(&format!("durable append, {threads} writer(s) (appends/s)"), rate, raw, "op/s");
            if threads == 1 {
                single_sync_rate = Some(rate);
            } else if let Some(single) = single_sync_rate {
                println!("{:<40} {:.1}x the single-writer rate", "", rate / single);
                report.lines.push(
                    serde_json::json!({"bench": format!("durable {threads} writers vs 1"), "ratio": rate / single}),
                );
            }
        }
    }
    if only.contains(&"buffered") {
        let dir = tempfile::tempdir()?;
        let db = raw_db(dir.path());
        let raw = timed(1, args.seconds, |_, i| {
            db.put(format!("s0-{i:012}"), turn(i)).unwrap();
        });
        // The same storage work an append does: one batch of an event, the session's head
        // record and a changelog entry (sizes close to Engram's framed records).
        let raw_equivalent = timed(1, args.seconds, |_, i| {
            let mut b = WriteBatch::default();
            b.put(format!("e/default/bench/s0/{i:012}"), turn(i));
            b.put("s/default/bench/s0", [7u8; 40]);
            b.put(format!("l/{i:012}"), [9u8; 40]);
            db.write(b).unwrap();
        });
        drop(db);
        let dir = tempfile::tempdir()?;
        let db = engram(dir.path(), Durability::Buffered, args.indexes);
        let rate = timed(1, args.seconds, |_, i| {
            let event = NewEvent::message(Role::User, turn(i));
            db.append(DEFAULT_TENANT, "bench", "s0", vec![event], AppendOptions::default()).unwrap();
        });
        report.row("buffered append, 300-byte turns (op/s)", rate, raw, "op/s");
        report.row("  vs raw 3-put batches (event, head, log)", rate, raw_equivalent, "op/s");
    }
    if only.contains(&"history") {
        let (_raw_dir, raw, _dir, db, sessions) = load_both(args.events)?;
        let (_framed_dir, framed) = load_framed(args.events, sessions)?;
        let per_session = args.events / sessions;
        // Copies of the same store (checkpoints): one with the tail cache off, so every
        // read goes to RocksDB; one with a cache too small to keep a tail (1 MiB: 16 KiB
        // per tail at most, a tail of these turns takes ~48 KiB), so every read after a
        // session's first (which goes to storage) fills a tail: it reads the tail's events,
        // answers from them, keeps nothing.
        let copies = tempfile::tempdir()?;
        let copy = |name: &str, history_cache_bytes: usize| -> Result<Engram> {
            let path = copies.path().join(name);
            db.backup(&path)?;
            let index = engram::IndexOptions { enabled: false, ..Default::default() };
            Ok(Engram::open(
                path,
                Options { retention_sweep_interval_ms: None, index, history_cache_bytes, ..Options::default() },
            )?)
        };
        let uncached = copy("uncached", 0)?;
        let filling = copy("filling", 1 << 20)?;
        // The readers take turns, round by round, so that a slow stretch of the machine
        // (runs here swing by a third) falls on all of them alike.
        let rounds = HISTORY_ROUNDS;
        let per_round = args.reads.div_ceil(rounds).max(1);
        let mut took = [Duration::ZERO; 5];
        let mut round_ratios = Vec::new();
        for round in 0..rounds {
            let first = round * per_round;
            let raw_time = time_reads(first, per_round, |r| {
                let values = raw_newest(&raw, r % sessions, 50);
                assert_eq!(values.len(), 50);
            });
            let floor_time = time_reads(first, per_round, |r| {
                let mut records: Vec<EventRecord> = Vec::with_capacity(50);
                lend_newest(&framed, r % sessions, per_session, 50, |v| records.push(frame::decode(v).unwrap()));
                records.reverse();
                assert_eq!(records.len(), 50);
            });
            let last_50 = |db: &Engram, r: u64| {
                let page = db
                    .history(DEFAULT_TENANT, "bench", &format!("s{}", r % sessions), &HistoryQuery::last(50))
                    .unwrap();
                assert_eq!(page.events.len(), 50);
            };
            let store_time = time_reads(first, per_round, |r| last_50(&uncached, r));
            let engram_time = time_reads(first, per_round, |r| last_50(&db, r));
            let fill_time = time_reads(first, per_round, |r| last_50(&filling, r));
            round_ratios.push(raw_time.as_secs_f64() / store_time.as_secs_f64());
            for (total, t) in took.iter_mut().zip([raw_time, floor_time, store_time, engram_time, fill_time]) {
                *total += t;
            }
        }
        let [raw_rate, floor_rate, store_rate, rate, fill_rate] =
            took.map(|t| (rounds * per_round) as f64 / t.as_secs_f64());
        report.row(
            &format!("last-50 history read, {} events stored (reads/s)", args.events / sessions * sessions),
            store_rate,
            raw_rate,
            "op/s",
        );
        report.row("  floor: raw scan + frame check + decode", floor_rate, raw_rate, "op/s");
        report.row(&format!("  with the tail cache ({sessions} sessions, all cached)"), rate, raw_rate, "op/s");
        report.row("  a read that fills a tail (here none is kept)", fill_rate, raw_rate, "op/s");
        let kept = filling.history_cache_stats();
        assert_eq!(kept.sessions, 0, "the small cache kept a tail: {kept:?}");
        let cache = db.history_cache_stats();
        println!(
            "  tail cache: {} sessions, {:.1} MiB counted ({:.0} bytes per session), {} hits, {} misses",
            cache.sessions,
            cache.bytes as f64 / (1 << 20) as f64,
            cache.bytes as f64 / cache.sessions.max(1) as f64,
            cache.hits,
            cache.misses
        );
        round_ratios.sort_by(f64::total_cmp);
        println!(
            "  store-path history / raw per round ({rounds} rounds of {per_round} reads each): {:.2} to {:.2}, median {:.2}",
            round_ratios[0],
            round_ratios[round_ratios.len() - 1],
            round_ratios[round_ratios.len() / 2]
        );
    }
    if only.contains(&"dump") {
        let (_raw_dir, raw, dir, db, _) = load_both(args.events)?;
        let start = Instant::now();
        let (mut rows, mut bytes) = (0u64, 0u64);
        for entry in raw.iterator(IteratorMode::Start) {
            let (k, v) = entry.unwrap();
            rows += 1;
            bytes += (k.len() + v.len()) as u64;
        }
        let raw_secs = start.elapsed().as_secs_f64();
        let path = dir.path().join("dump.jsonl");
        let start = Instant::now();
        let stats =
            db.dump(&engram::DumpFilter::default(), &mut std::io::BufWriter::new(std::fs::File::create(&path)?))?;
        let dump_secs = start.elapsed().as_secs_f64();
        let size = std::fs::metadata(&path)?.len() as f64;
        report.row(
            "dump to JSON lines (records/s)",
            stats.records as f64 / dump_secs,
            rows as f64 / raw_secs,
            "rows/s",
        );
        report.row("dump to JSON lines (MB/s written)", size / dump_secs / 1e6, bytes as f64 / raw_secs / 1e6, "MB/s");
        drop(db);
        let target = tempfile::tempdir()?;
        let options = Options {
            durability: Durability::Buffered,
            retention_sweep_interval_ms: None,
            index: engram::IndexOptions { enabled: false, ..Default::default() },
            ..Options::default()
        };
        let restored = Engram::open(target.path(), options)?;
        let start = Instant::now();
        let read = restored.restore_dump(&mut std::io::BufReader::new(std::fs::File::open(&path)?))?;
        let restore_secs = start.elapsed().as_secs_f64();
        report.row(
            "restore from JSON lines, no indexes (records/s)",
            read.records as f64 / restore_secs,
            rows as f64 / raw_secs,
            "rows/s",
        );
        report.row("restore (MB/s read)", size / restore_secs / 1e6, bytes as f64 / raw_secs / 1e6, "MB/s");
    }
    if let Some(out) = args.out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(out)?;
        for line in report.lines {
            writeln!(f, "{line}")?;
        }
    }
    Ok(())
}

/// Rounds the history readers take turns in.
const HISTORY_ROUNDS: u64 = 10;

/// Time taken by `read(r)` for `r` in `first..first + count`.
fn time_reads(first: u64, count: u64, mut read: impl FnMut(u64)) -> Duration {
    let start = Instant::now();
    for r in first..first + count {
        read(r);
    }
    start.elapsed()
}

/// The newest `n` values of `session` in a store keyed by [`raw_key`]: one reverse prefix
/// scan, each value copied out (as `DB::iterator` does).
fn raw_newest(db: &DB, session: u64, n: usize) -> Vec<Box<[u8]>> {
    let mut ro = ReadOptions::default();
    ro.set_iterate_lower_bound(format!("s{session:04}-").into_bytes());
    ro.set_iterate_upper_bound(format!("s{session:04}.").into_bytes());
    db.iterator_opt(IteratorMode::End, ro).take(n).map(|e| e.unwrap().1).collect()
}

/// The newest `n` values of `session` (holding `head` of them) in a store keyed by
/// [`raw_key`], oldest first, each lent to `f`: one forward scan from the `n`th newest, no
/// value copied (the cheapest way RocksDB reads them: what a floor should use).
fn lend_newest(db: &DB, session: u64, head: u64, n: u64, mut f: impl FnMut(&[u8])) {
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(format!("s{session:04}.").into_bytes());
    let mut iter = db.raw_iterator_opt(ro);
    iter.seek(raw_key(session, head.saturating_sub(n) + 1));
    while let Some(value) = iter.value() {
        f(value);
        iter.next();
    }
    iter.status().unwrap();
}

/// Raw RocksDB holding, under [`raw_key`]s, the value Engram stores for each of the same
/// turns: a framed (format version, CRC32) protobuf `EventRecord`. Reading it back and
/// checking and decoding every value is the least any store of checksummed records does;
/// the "floor" row measures that next to the raw scan (read the cheapest way: see
/// [`lend_newest`]).
fn load_framed(events: u64, sessions: u64) -> Result<(tempfile::TempDir, DB)> {
    let per_session = events / sessions;
    load_raw(sessions, per_session, |s, i| {
        frame::encode(&EventRecord {
            seq: i,
            kind: EventKind::Message as i32,
            role: Role::User as i32,
            text: Some(turn(i)),
            timestamp_ms: -1,
            created_at_ms: 1_700_000_000_000 + i as i64,
            change_seq: s * per_session + i,
            ..EventRecord::default()
        })
    })
}

/// A raw RocksDB holding `value(session, seq)` under [`raw_key`] for `per_session` events
/// of each session (batches of 1000), flushed and fully compacted.
fn load_raw(sessions: u64, per_session: u64, value: impl Fn(u64, u64) -> Vec<u8>) -> Result<(tempfile::TempDir, DB)> {
    let dir = tempfile::tempdir()?;
    let db = raw_db(dir.path());
    for s in 0..sessions {
        let mut b = WriteBatch::default();
        for i in 1..=per_session {
            b.put(raw_key(s, i), value(s, i));
            if b.len() == 1000 {
                db.write(std::mem::take(&mut b)).unwrap();
            }
        }
        db.write(b).unwrap();
    }
    db.flush().unwrap();
    db.compact_range::<&[u8], &[u8]>(None, None);
    Ok((dir, db))
}

fn raw_key(session: u64, seq: u64) -> Vec<u8> {
    let mut k = format!("s{session:04}-").into_bytes();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}
