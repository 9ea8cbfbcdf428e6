use crate::{Batch, BatchOp, Direction, EntryIter, ReadView, Result, RocksOptions, Space, StorageError, Store};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, IteratorMode, Options,
    ReadOptions, ReadTier, SnapshotWithThreadMode, WriteBatch, WriteOptions,
};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// The RocksDB [`Store`]: one column family per [`Space`]. Writes go to the WAL unsynced;
/// [`Store::sync`] syncs the WAL (RocksDB's `FlushWAL(sync=true)`), so concurrent writers
/// can share one fsync.
pub struct RocksStore {
    db: DB,
    /// Unsynced writes (a sync is [`Store::sync`]): made once, not per write.
    write_options: WriteOptions,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore").field("path", &self.db.path()).finish()
    }
}

impl RocksStore {
    /// Opens (creating if needed) the store at `path`.
    ///
    /// # Errors
    /// [`StorageError::Locked`] when another process holds the directory; I/O or corruption
    /// errors from RocksDB.
    pub fn open(path: &Path, options: &RocksOptions) -> Result<Self> {
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let cf_options = |space: Space| {
            let mut o = Options::default();
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_bloom_filter(10.0, false);
            o.set_block_based_table_factory(&table);
            o.set_compression_type(DBCompressionType::Lz4);
            o.set_write_buffer_size(options.write_buffer_bytes);
            ColumnFamilyDescriptor::new(space.name(), o)
        };
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_paranoid_checks(true);
        db_options.set_max_background_jobs(2);
        // Obsolete files are deleted, and retired memtables freed, by background threads,
        // not by whichever reader drops the last reference (it may be on an async thread).
        db_options.set_avoid_unnecessary_blocking_io(true);
        db_options.set_keep_log_file_num(4);
        let descriptors = Space::ALL.into_iter().map(cf_options).collect::<Vec<_>>();
        let db = DB::open_cf_descriptors(&db_options, path, descriptors)?;
        let mut write_options = WriteOptions::default();
        write_options.set_sync(false);
        Ok(RocksStore { db, write_options })
    }

    fn cf(&self, space: Space) -> &ColumnFamily {
        match self.db.cf_handle(space.name()) {
            Some(cf) => cf,
            // Every space's column family is created by `open`.
            None => unreachable!("column family {} missing after open", space.name()),
        }
    }

    /// The RocksDB handle, for checkpoints and figures.
    pub fn db(&self) -> &DB {
        &self.db
    }
}

/// One batched `MultiGet` of `keys` (in any order) with `ro`, values in the keys' order.
fn get_many(
    db: &DB,
    cf: &impl rocksdb::AsColumnFamilyRef,
    keys: &[&[u8]],
    ro: &ReadOptions,
) -> Result<Vec<Option<Vec<u8>>>> {
    db.batched_multi_get_cf_opt(cf, keys.iter().copied(), false, ro)
        .into_iter()
        .map(|value| Ok(value?.map(|v| v.to_vec())))
        .collect()
}

fn read_options(start: &[u8], end: Option<&[u8]>) -> ReadOptions {
    let mut ro = ReadOptions::default();
    ro.set_iterate_lower_bound(start.to_vec());
    if let Some(end) = end {
        ro.set_iterate_upper_bound(end.to_vec());
    }
    ro
}

fn mode(direction: Direction) -> IteratorMode<'static> {
    match direction {
        Direction::Forward => IteratorMode::Start,
        Direction::Reverse => IteratorMode::End,
    }
}

/// [`ReadView::visit`] on RocksDB: `open` makes a raw iterator bounded by the read options,
/// which is walked in `direction`, lending each entry.
fn visit_raw<'a, D: rocksdb::DBAccess + 'a>(
    start: &[u8],
    end: Option<&[u8]>,
    direction: Direction,
    visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    open: impl FnOnce(ReadOptions) -> rocksdb::DBRawIteratorWithThreadMode<'a, D>,
) -> Result<()> {
    if end.is_some_and(|end| end <= start) {
        return Ok(());
    }
    let mut iter = open(read_options(start, end));
    match direction {
        Direction::Forward => iter.seek_to_first(),
        Direction::Reverse => iter.seek_to_last(),
    }
    while let Some((key, value)) = iter.item() {
        if !visit(key, value) {
            return Ok(());
        }
        match direction {
            Direction::Forward => iter.next(),
            Direction::Reverse => iter.prev(),
        }
    }
    iter.status()?;
    Ok(())
}

fn entries<'a, I>(iter: I) -> EntryIter<'a>
where
    I: Iterator<Item = std::result::Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>> + 'a,
{
    Box::new(iter.map(|r| r.map(|(k, v)| (k.into_vec(), v.into_vec())).map_err(StorageError::from)))
}

impl ReadView for RocksStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_pinned_cf(self.cf(space), key)?.map(|v| v.to_vec()))
    }

    fn get_many(&self, space: Space, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        get_many(&self.db, self.cf(space), keys, &ReadOptions::default())
    }

    fn scan<'a>(&'a self, space: Space, start: &[u8], end: Option<&[u8]>, direction: Direction) -> EntryIter<'a> {
        if end.is_some_and(|end| end <= start) {
            return Box::new(std::iter::empty());
        }
        entries(self.db.iterator_cf_opt(self.cf(space), read_options(start, end), mode(direction)))
    }

    fn visit(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        direction: Direction,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        visit_raw(start, end, direction, visit, |ro| self.db.raw_iterator_cf_opt(self.cf(space), ro))
    }
}

impl Store for RocksStore {
    fn write(&self, batch: Batch) -> Result<()> {
        // Sized up front: a batch's encoding is its keys and values plus a few bytes per
        // operation (tag, column family, two lengths) and a 12-byte header.
        let mut wb = WriteBatch::with_capacity_bytes(12 + batch.size_bytes() + 16 * batch.len());
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { space, key, value } => wb.put_cf(self.cf(space), key, value),
                BatchOp::Delete { space, key } => wb.delete_cf(self.cf(space), key),
                BatchOp::DeleteRange { space, start, end } => wb.delete_range_cf(self.cf(space), start, end),
            }
        }
        self.db.write_opt(wb, &self.write_options)?;
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    fn snapshot(&self) -> Box<dyn ReadView + '_> {
        Box::new(RocksSnapshot {
            store: self,
            snapshot: self.db.snapshot(),
            cached: false,
            missed: AtomicBool::new(false),
        })
    }

    fn cached_snapshot(&self, budget: usize) -> Box<dyn ReadView + '_> {
        let snapshot =
            RocksSnapshot { store: self, snapshot: self.db.snapshot(), cached: true, missed: AtomicBool::new(false) };
        Box::new(crate::budget::Budgeted::new(Box::new(snapshot), budget))
    }

    fn compact_range(&self, space: Space, start: &[u8], end: Option<&[u8]>) -> Result<()> {
        self.db.compact_range_cf(self.cf(space), Some(start), end);
        Ok(())
    }

    fn checkpoint(&self, path: &Path) -> Result<()> {
        // Flushes the memtables, then hard-links the SST files and copies the rest.
        rocksdb::checkpoint::Checkpoint::new(&self.db)?.create_checkpoint(path)?;
        Ok(())
    }

    fn properties(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for space in Space::ALL {
            for prop in ["rocksdb.estimate-num-keys", "rocksdb.total-sst-files-size", "rocksdb.cur-size-all-mem-tables"]
            {
                if let Ok(Some(v)) = self.db.property_int_value_cf(self.cf(space), prop) {
                    out.push((format!("{}.{}", space.name(), prop), v.to_string()));
                }
            }
        }
        out
    }
}

/// See [`RocksSnapshot::tiered`].
const MAX_SKIPPED_KEYS: u64 = 1024;

struct RocksSnapshot<'a> {
    store: &'a RocksStore,
    snapshot: SnapshotWithThreadMode<'a, DB>,
    /// Reads only memtables and the block cache (`ReadTier::BlockCache`).
    cached: bool,
    /// A read needed a file (RocksDB's `Incomplete`).
    missed: AtomicBool,
}

impl RocksSnapshot<'_> {
    /// `ro` with this view's tier. A cached view also gives up (`Incomplete`) on a run of
    /// more than [`MAX_SKIPPED_KEYS`] deleted or overwritten entries, which no budget of
    /// returned bytes would count, and leaves the files an iterator's cleanup may free to
    /// a background thread.
    fn tiered(&self, mut ro: ReadOptions) -> ReadOptions {
        if self.cached {
            ro.set_read_tier(ReadTier::BlockCache);
            ro.set_max_skippable_internal_keys(MAX_SKIPPED_KEYS);
            ro.set_background_purge_on_iterator_cleanup(true);
        }
        ro
    }

    /// `e` as a storage error, noting a read that needed a file.
    fn note(&self, e: impl Into<StorageError>) -> StorageError {
        let e = e.into();
        if matches!(e, StorageError::NotCached(_)) {
            self.missed.store(true, Ordering::Relaxed);
        }
        e
    }
}

impl ReadView for RocksSnapshot<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let ro = self.tiered(ReadOptions::default());
        let value = self.snapshot.get_pinned_cf_opt(self.store.cf(space), key, ro).map_err(|e| self.note(e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn get_many(&self, space: Space, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        if self.cached {
            // RocksDB's batched `MultiGet` reads a block missing from the cache without
            // checking the read tier (`block_based_table_reader_sync_and_async.h`); key by
            // key, each `Get` keeps to it.
            return keys.iter().map(|key| self.get(space, key)).collect();
        }
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&self.snapshot);
        get_many(&self.store.db, self.store.cf(space), keys, &ro)
    }

    fn scan<'a>(&'a self, space: Space, start: &[u8], end: Option<&[u8]>, direction: Direction) -> EntryIter<'a> {
        if end.is_some_and(|end| end <= start) {
            return Box::new(std::iter::empty());
        }
        let ro = self.tiered(read_options(start, end));
        let iter = self.snapshot.iterator_cf_opt(self.store.cf(space), ro, mode(direction));
        Box::new(iter.map(|r| r.map(|(k, v)| (k.into_vec(), v.into_vec())).map_err(|e| self.note(e))))
    }

    fn missed_cache(&self) -> bool {
        self.missed.load(Ordering::Relaxed)
    }

    fn visit(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        direction: Direction,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        visit_raw(start, end, direction, visit, |ro| {
            self.snapshot.raw_iterator_cf_opt(self.store.cf(space), self.tiered(ro))
        })
        .map_err(|e| self.note(e))
    }
}
