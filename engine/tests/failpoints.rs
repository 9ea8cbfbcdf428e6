//! Crash and reopen at each named failpoint (cargo feature `failpoints`, on in `./dev test`):
//! a child process writes (durable appends with text and vectors, a retention sweep
//! running) until the armed point aborts it; the parent reopens the data directory and
//! checks that every acknowledged write is there, that `verify` passes including the
//! agreement of the indexes with storage, and that the indexes hold every stored event.
//! The child is this same test binary, re-run with `ENGRAM_FP_CHILD` set.

#![cfg(feature = "failpoints")]

use engram::{
    AppendOptions, DEFAULT_TENANT, Engram, HistoryQuery, IndexOptions, NewEvent, Options, RetentionPolicy, Role,
    SearchQuery,
};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

const SESSIONS: u64 = 3;
/// Each point with the hit that aborts (late enough that there is something to lose).
const POINTS: &[(&str, u64)] = &[
    ("after-commit", 6),
    ("text-commit", 3),
    ("vector-snapshot", 3),
    ("changelog-truncate", 2),
    ("retention-sweep", 4),
];

fn options() -> Options {
    let index =
        IndexOptions { text_commit_interval_ms: 1, vector_snapshot_every_changes: 1, ..IndexOptions::default() };
    Options { retention_sweep_interval_ms: Some(20), index, ..Options::default() }
}

fn child(dir: &str) -> ! {
    let db = Engram::open(dir, options()).expect("child open");
    // A TTL no event reaches: every sweep visits (and commits for) every session.
    let ttl = RetentionPolicy { ttl_ms: Some(3_600_000), ..RetentionPolicy::default() };
    db.set_tenant_retention(DEFAULT_TENANT, ttl).expect("retention");
    let stdout = std::io::stdout();
    for i in 0..400u64 {
        let s = i % SESSIONS;
        let event = NewEvent {
            embedding: Some(vec![1.0, i as f32]),
            ..NewEvent::message(Role::User, format!("entry {i} word{i}"))
        };
        let r =
            db.append(DEFAULT_TENANT, "fp", &format!("s{s}"), vec![event], AppendOptions::default()).expect("append");
        let mut out = stdout.lock();
        writeln!(out, "ack {s} {}", r.last_seq).expect("stdout");
        out.flush().expect("flush");
        std::thread::sleep(std::time::Duration::from_millis(3));
    }
    // Never reached when the point is hit.
    std::process::exit(0)
}

#[test]
fn every_failpoint_crashes_and_the_store_and_indexes_converge() {
    if let Ok(dir) = std::env::var("ENGRAM_FP_CHILD") {
        child(&dir);
    }
    for (point, at) in POINTS {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args(["every_failpoint_crashes_and_the_store_and_indexes_converge", "--exact", "--nocapture"])
            .env("ENGRAM_FP_CHILD", dir.path())
            .env("ENGRAM_FAILPOINTS", format!("{point}@{at}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("line");
            let Some(rest) = line.strip_prefix("ack ") else { continue };
            let parts: Vec<u64> = rest.split(' ').map(|p| p.parse().expect("number")).collect();
            acked.insert(parts[0], parts[1]);
        }
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{point}: the child was never stopped by its failpoint");
        assert!(stderr.contains(&format!("failpoint {point}: aborting")), "{point}: {stderr}");

        let db = Engram::open(dir.path(), options()).expect("reopen");
        for (s, last) in &acked {
            let head = db.get_session(DEFAULT_TENANT, "fp", &format!("s{s}")).expect("session").head_seq;
            assert!(head >= *last, "{point}: s{s} lost acknowledged events ({head} < {last})");
        }
        db.wait_for_indexes().expect("indexes catch up");
        let report = db.verify().expect("verify");
        assert!(report.is_ok() && report.index_checked, "{point}: {:?}", report.problems);
        let stored: usize = (0..SESSIONS)
            .filter_map(|s| {
                db.history(DEFAULT_TENANT, "fp", &format!("s{s}"), &HistoryQuery { limit: 1000, ..Default::default() })
                    .ok()
            })
            .map(|page| page.events.len())
            .sum();
        let stats = db.index_stats().expect("stats");
        assert_eq!((stats.text_docs, stats.vectors.points), (stored as u64, stored as u64), "{point}: {stats:?}");
        let found = db.search(DEFAULT_TENANT, &SearchQuery { k: 1000, ..SearchQuery::text("entry") }).expect("search");
        assert_eq!(found.hits.len(), stored, "{point}");
    }
}
