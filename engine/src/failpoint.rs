//! Named crash points for tests (cargo feature `failpoints`; without it `hit` is empty).
//!
//! `ENGRAM_FAILPOINTS=name[@n],...` arms points: the `n`th time (first by default) the
//! process reaches an armed point it aborts on the spot, like `kill -9` there: nothing is
//! flushed, no destructor runs. Points: `after-commit` (a write is in RocksDB, synced in
//! durable mode, not yet acknowledged nor handed to the indexes), `text-commit` (inside a
//! full-text commit, before tantivy writes its meta), `vector-snapshot` (the new snapshot
//! is written and synced under its temporary name, not yet renamed), `changelog-truncate`
//! (before the truncating write), `retention-sweep` (between two sessions of a sweep).

#[cfg(feature = "failpoints")]
pub(crate) fn hit(name: &str) {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static ARMED: OnceLock<HashMap<String, (u64, AtomicU64)>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        let spec = std::env::var("ENGRAM_FAILPOINTS").unwrap_or_default();
        spec.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| match s.split_once('@') {
                Some((n, at)) => (n.to_string(), (at.parse().unwrap_or(1), AtomicU64::new(0))),
                None => (s.to_string(), (1, AtomicU64::new(0))),
            })
            .collect()
    });
    if let Some((at, count)) = armed.get(name)
        && count.fetch_add(1, Ordering::SeqCst) + 1 == *at
    {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn hit(_name: &str) {}
