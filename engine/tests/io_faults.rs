//! I/O fault injection on the files the indexes write themselves (full-text index
//! directory, vector snapshots), after SQLite's I/O-error tests: for each kind of file
//! operation, the n-th one fails once or, like a dead disk, from then on. Each run checks:
//! - every append is still acknowledged (storage is the truth; the indexes are derived);
//! - a failed write or sync poisons the indexes: read-your-writes searches and
//!   `wait_for_indexes` fail with the typed `IndexPoisoned` error, plain searches still
//!   answer, the stats say why;
//! - after a reopen without faults (or a reindex once the disk is healed) the indexes hold
//!   every acknowledged event and `verify` passes: nothing acknowledged is lost.

use engram::{
    AppendOptions, DEFAULT_TENANT, Engram, Error, HistoryQuery, IndexOptions, IoFaults, IoOp, NewEvent, Options, Role,
    SearchQuery,
};
use std::collections::BTreeSet;
use std::sync::Arc;

const SESSIONS: u64 = 2;
const EVENTS: u64 = 48;

fn options(faults: Option<Arc<IoFaults>>) -> Options {
    let index = IndexOptions {
        text_commit_interval_ms: 1,
        vector_snapshot_every_changes: 4,
        max_wait_ms: 10_000,
        io_faults: faults,
        ..IndexOptions::default()
    };
    Options { retention_sweep_interval_ms: None, index, ..Options::default() }
}

/// Appends `EVENTS` events with text and vectors, waiting for the indexes now and then so
/// that commits and snapshots happen in between. Every append must be acknowledged.
fn workload(db: &Engram) {
    for i in 0..EVENTS {
        let event =
            NewEvent { embedding: Some(vec![1.0, i as f32]), ..NewEvent::message(Role::User, format!("entry {i}")) };
        let session = format!("s{}", i % SESSIONS);
        db.append(DEFAULT_TENANT, "io", &session, vec![event], AppendOptions::default())
            .unwrap_or_else(|e| panic!("append {i} was refused while only an index file failed: {e}"));
        if i % 8 == 7 {
            // Poisoned or not, the write path does not care.
            let _ = db.wait_for_indexes();
        }
    }
}

/// The indexes hold exactly the stored events, and search finds each.
fn assert_complete(db: &Engram, context: &str) {
    db.wait_for_indexes().unwrap_or_else(|e| panic!("{context}: the indexes do not catch up: {e}"));
    let stored: u64 = (0..SESSIONS)
        .map(|s| {
            let q = HistoryQuery { limit: 1000, ..HistoryQuery::default() };
            db.history(DEFAULT_TENANT, "io", &format!("s{s}"), &q).expect("history").events.len() as u64
        })
        .sum();
    assert_eq!(stored, EVENTS, "{context}: storage lost acknowledged events");
    let stats = db.index_stats().expect("stats");
    assert_eq!((stats.text_docs, stats.vectors.points), (EVENTS, EVENTS), "{context}: {stats:?}");
    assert_eq!(stats.poisoned, None, "{context}");
    let found = db.search(DEFAULT_TENANT, &SearchQuery { k: 1000, ..SearchQuery::text("entry") }).expect("search");
    assert_eq!(found.hits.len() as u64, EVENTS, "{context}");
    let report = db.verify().expect("verify");
    assert!(report.is_ok() && report.index_checked, "{context}: {:?}", report.problems);
}

/// Checks a store whose planned fault has tripped: poisoned with typed errors, or (a failure
/// tantivy absorbed, such as a background merge's) complete. Returns whether it poisoned.
fn assert_poisoned_or_complete(db: &Engram, context: &str) -> bool {
    match db.wait_for_indexes() {
        Ok(_) => {
            assert_complete(db, context);
            false
        }
        Err(Error::IndexPoisoned(reason)) => {
            let stats = db.index_stats().expect("stats");
            assert_eq!(stats.poisoned.as_deref(), Some(reason.as_str()), "{context}");
            let consistent = SearchQuery { consistent: true, ..SearchQuery::text("entry") };
            let err = db.search(DEFAULT_TENANT, &consistent).expect_err("a read-your-writes search cannot be served");
            assert!(matches!(err, Error::IndexPoisoned(_)), "{context}: {err:?}");
            db.search(DEFAULT_TENANT, &SearchQuery::text("entry")).expect("a plain search answers");
            true
        }
        Err(e) => panic!("{context}: an index file failure surfaced as {e:?}, not IndexPoisoned"),
    }
}

const KINDS: [IoOp; 6] = [IoOp::Open, IoOp::Write, IoOp::Sync, IoOp::AtomicWrite, IoOp::Rename, IoOp::SyncDir];

#[test]
fn a_failing_index_file_poisons_the_indexes_and_loses_nothing_acknowledged() {
    let mut poisoned_by: BTreeSet<IoOp> = BTreeSet::new();
    for kind in KINDS {
        for (nth, sticky) in [(1, false), (3, true), (6, false)] {
            let context = format!("{kind:?} #{nth}{}", if sticky { " and after" } else { "" });
            let dir = tempfile::tempdir().expect("tempdir");
            let faults = IoFaults::new();
            {
                let db = Engram::open(dir.path(), options(Some(faults.clone()))).expect("open");
                faults.fail(Some(kind), nth, sticky);
                workload(&db);
                assert_eq!(faults.tripped(), Some(kind), "{context}: the workload never reached the fault");
                if assert_poisoned_or_complete(&db, &context) {
                    poisoned_by.insert(kind);
                }
                // Closing a poisoned store writes no index file.
            }
            let db = Engram::open(dir.path(), options(None)).expect("reopen");
            assert_complete(&db, &format!("{context}, reopened"));
        }
    }
    // Every kind of failure, syncs included, stops the indexes in at least one place.
    assert_eq!(poisoned_by, KINDS.into_iter().collect(), "kinds that poisoned");
}

#[test]
fn a_reindex_after_the_disk_heals_brings_a_poisoned_index_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = IoFaults::new();
    let db = Engram::open(dir.path(), options(Some(faults.clone()))).expect("open");
    faults.fail(Some(IoOp::Sync), 2, true);
    workload(&db);
    assert!(matches!(db.wait_for_indexes(), Err(Error::IndexPoisoned(_))), "a dead disk poisons");
    // Still dead: the reindex fails with the same typed error and stays poisoned.
    assert!(matches!(db.reindex(), Err(Error::IndexPoisoned(_))));
    assert!(db.index_stats().expect("stats").poisoned.is_some());
    faults.heal();
    db.reindex().expect("a reindex on a healed disk");
    assert_complete(&db, "after reindex");
    // And the indexes apply new writes again.
    let event = NewEvent::message(Role::User, "after the storm");
    db.append(DEFAULT_TENANT, "io", "late", vec![event], AppendOptions::default()).expect("append");
    let found = db
        .search(DEFAULT_TENANT, &SearchQuery { consistent: true, ..SearchQuery::text("storm") })
        .expect("a read-your-writes search");
    assert_eq!(found.hits.len(), 1);
}
