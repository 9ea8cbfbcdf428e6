//! `Store::cached_snapshot` reads only what is in memory: on RocksDB a read that needs a
//! file fails with `NotCached` (never a short or empty answer) and marks the view; once
//! a plain read has brought the blocks into the cache, the cached view answers as a plain
//! snapshot does.

use engram_storage::{Batch, Direction, MemoryStore, ReadView, RocksStore, Space, StorageError, Store};

fn key(i: u32) -> Vec<u8> {
    format!("k{i:06}").into_bytes()
}

fn entries(view: &dyn ReadView) -> engram_storage::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    view.visit(Space::Data, b"k", Some(b"l"), Direction::Forward, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        true
    })?;
    Ok(out)
}

/// A store of 2,000 entries of 100 bytes, reopened: the data is in table files and the
/// block cache is empty.
fn cold_store() -> (tempfile::TempDir, RocksStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = RocksStore::open(dir.path(), &Default::default()).expect("open");
        let mut batch = Batch::new();
        for i in 0..2000 {
            batch.put(Space::Data, key(i), vec![i as u8; 100]);
        }
        store.write(batch).expect("write");
    }
    let store = RocksStore::open(dir.path(), &Default::default()).expect("reopen");
    (dir, store)
}

#[test]
fn a_cached_snapshot_never_reads_files_and_says_so() {
    let (_dir, store) = cold_store();
    let cold = store.cached_snapshot(1 << 20);
    assert!(!cold.missed_cache());
    assert!(matches!(cold.get(Space::Data, &key(7)), Err(StorageError::NotCached(_))));
    assert!(cold.missed_cache());
    let cold = store.cached_snapshot(1 << 20);
    assert!(matches!(entries(&*cold), Err(StorageError::NotCached(_))), "a scan stops with an error, not short");
    assert!(matches!(cold.get(Space::Data, &key(7)), Err(StorageError::NotCached(_))), "the scan read nothing in");
    assert!(cold.missed_cache());
    // Batched lookups too (RocksDB's `MultiGet` alone would read the file).
    let cold = store.cached_snapshot(1 << 20);
    let many = cold.get_many(Space::Data, &[&key(1600), &key(1601)]);
    assert!(matches!(many, Err(StorageError::NotCached(_))), "{many:?}");
    assert!(cold.missed_cache());
    let cold = store.cached_snapshot(1 << 20);
    assert!(cold.scan(Space::Data, b"k", Some(b"l"), Direction::Reverse).any(|e| e.is_err()));
    assert!(cold.missed_cache());

    // A plain read brings the blocks in; then the cached view answers the same.
    let all = entries(&*store.snapshot()).expect("plain read");
    assert_eq!(all.len(), 2000);
    let warm = store.cached_snapshot(1 << 20);
    assert_eq!(entries(&*warm).expect("cached read"), all);
    assert_eq!(warm.get(Space::Data, &key(7)).expect("get"), Some(vec![7u8; 100]));
    assert_eq!(
        warm.get_many(Space::Data, &[&key(1), &key(2)]).expect("get_many"),
        [Some(vec![1u8; 100]), Some(vec![2u8; 100])]
    );
    // Keys no file holds are answered from the filters, and new writes from the memtable.
    assert_eq!(warm.get(Space::Data, b"zzz").expect("get"), None);
    let mut batch = Batch::new();
    batch.put(Space::Meta, b"fresh".to_vec(), b"v".to_vec());
    store.write(batch).expect("write");
    assert_eq!(store.cached_snapshot(1 << 20).get(Space::Meta, b"fresh").expect("get"), Some(b"v".to_vec()));
    assert!(!warm.missed_cache());
}

/// With only some blocks in the cache, a scan that reaches a cold one fails: it never
/// ends early as if the range ended there.
#[test]
fn a_partly_cached_scan_fails_instead_of_ending_early() {
    let (_dir, store) = cold_store();
    // Warm the first entries only (a few blocks of ~4 KiB).
    let mut seen = 0;
    store
        .snapshot()
        .visit(Space::Data, b"k", Some(b"l"), Direction::Forward, &mut |_, _| {
            seen += 1;
            seen < 50
        })
        .expect("warm");
    let view = store.cached_snapshot(1 << 20);
    assert_eq!(view.get(Space::Data, &key(3)).expect("a warm key"), Some(vec![3u8; 100]));
    assert!(matches!(entries(&*view), Err(StorageError::NotCached(_))));
    assert!(view.missed_cache());
    for direction in [Direction::Forward, Direction::Reverse] {
        let view = store.cached_snapshot(1 << 20);
        let scanned: Vec<_> = view.scan(Space::Data, b"k", Some(b"l"), direction).collect();
        assert!(scanned.last().is_some_and(|e| e.is_err()), "{direction:?}: ends with the error");
        assert!(view.missed_cache());
    }
}

/// A run of deleted entries longer than a cached view will step over is a miss too (a
/// budget of returned bytes would not count them).
#[test]
fn a_cached_scan_gives_up_on_a_long_run_of_deleted_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RocksStore::open(dir.path(), &Default::default()).expect("open");
    let mut batch = Batch::new();
    for i in 0..3000 {
        batch.put(Space::Data, key(i), vec![1]);
    }
    store.write(batch).expect("write");
    let mut batch = Batch::new();
    for i in 0..2999 {
        batch.delete(Space::Data, key(i));
    }
    store.write(batch).expect("delete");
    let view = store.cached_snapshot(1 << 20);
    assert!(matches!(entries(&*view), Err(StorageError::NotCached(_))));
    assert!(view.missed_cache());
    assert_eq!(entries(&*store.snapshot()).expect("plain"), [(key(2999), vec![1])]);
}

/// Past its budget of bytes a cached view fails as on a miss, on every backend.
#[test]
fn a_cached_view_stops_at_its_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rocks = RocksStore::open(dir.path(), &Default::default()).expect("open");
    let memory = MemoryStore::new();
    let stores: [&dyn Store; 2] = [&rocks, &memory];
    for store in stores {
        let mut batch = Batch::new();
        for i in 0..100 {
            batch.put(Space::Data, key(i), vec![0; 93]);
        }
        store.write(batch).expect("write");
        // Each entry is 7 + 93 bytes: 50 fit in 5,000.
        let view = store.cached_snapshot(5_000);
        let mut n = 0;
        let r = view.visit(Space::Data, b"k", Some(b"l"), Direction::Forward, &mut |_, _| {
            n += 1;
            true
        });
        assert!(matches!(r, Err(StorageError::NotCached(_))), "{r:?}");
        assert_eq!(n, 50);
        assert!(view.missed_cache());
        assert!(view.get(Space::Data, &key(1)).is_err(), "a spent budget stays spent");
        let view = store.cached_snapshot(5_000);
        assert_eq!(view.scan(Space::Data, b"k", Some(b"l"), Direction::Reverse).take_while(|e| e.is_ok()).count(), 50);
        assert!(view.missed_cache());
        let view = store.cached_snapshot(5_000);
        assert_eq!(view.get(Space::Data, &key(1)).expect("get"), Some(vec![0; 93]));
        assert!(!view.missed_cache());
        assert!(
            view.get_many(
                Space::Data,
                &(0..60).map(key).collect::<Vec<_>>().iter().map(Vec::as_slice).collect::<Vec<_>>()
            )
            .is_err()
        );
        assert!(view.missed_cache());
    }
}

#[test]
fn the_memory_store_has_everything_in_memory() {
    let store = MemoryStore::new();
    let mut batch = Batch::new();
    batch.put(Space::Data, key(1), b"one".to_vec());
    store.write(batch).expect("write");
    let view = store.cached_snapshot(1 << 20);
    assert_eq!(entries(&*view).expect("read"), [(key(1), b"one".to_vec())]);
    assert!(!view.missed_cache());
}
