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

#[test]
fn a_cached_snapshot_never_reads_files_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = RocksStore::open(dir.path(), &Default::default()).expect("open");
        let mut batch = Batch::new();
        for i in 0..2000 {
            batch.put(Space::Data, key(i), vec![i as u8; 100]);
        }
        store.write(batch).expect("write");
        store.sync().expect("sync");
    }
    // Reopened: the data is in table files and the block cache is empty.
    let store = RocksStore::open(dir.path(), &Default::default()).expect("reopen");
    let cold = store.cached_snapshot();
    assert!(!cold.missed_cache());
    assert!(matches!(cold.get(Space::Data, &key(7)), Err(StorageError::NotCached(_))));
    assert!(cold.missed_cache());
    let cold = store.cached_snapshot();
    assert!(matches!(entries(&*cold), Err(StorageError::NotCached(_))), "a scan stops with an error, not short");
    assert!(matches!(cold.get(Space::Data, &key(7)), Err(StorageError::NotCached(_))), "the scan read nothing in");
    assert!(cold.missed_cache());
    // Batched lookups too (RocksDB's `MultiGet` alone would read the file).
    let cold = store.cached_snapshot();
    let many = cold.get_many(Space::Data, &[&key(1600), &key(1601)]);
    assert!(matches!(many, Err(StorageError::NotCached(_))), "{many:?}");
    assert!(cold.missed_cache());
    let cold = store.cached_snapshot();
    assert!(cold.scan(Space::Data, b"k", Some(b"l"), Direction::Reverse).any(|e| e.is_err()));
    assert!(cold.missed_cache());

    // A plain read brings the blocks in; then the cached view answers the same.
    let all = entries(&*store.snapshot()).expect("plain read");
    assert_eq!(all.len(), 2000);
    let warm = store.cached_snapshot();
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
    assert_eq!(store.cached_snapshot().get(Space::Meta, b"fresh").expect("get"), Some(b"v".to_vec()));
    assert!(!warm.missed_cache());
}

#[test]
fn the_memory_store_has_everything_in_memory() {
    let store = MemoryStore::new();
    let mut batch = Batch::new();
    batch.put(Space::Data, key(1), b"one".to_vec());
    store.write(batch).expect("write");
    let view = store.cached_snapshot();
    assert_eq!(entries(&*view).expect("read"), [(key(1), b"one".to_vec())]);
    assert!(!view.missed_cache());
}
