//! `engram-storage`: the narrow ordered key-value interface Engram stands on.
//!
//! - [`Store`]: get, ordered range scan (both directions), atomic [`Batch`] (put, delete,
//!   range delete), [`Store::sync`] to make everything written durable, and consistent
//!   snapshots. Three key spaces ([`Space`]): metadata, data and changelog.
//! - [`RocksStore`]: the RocksDB backend (one column family per space).
//! - [`MemoryStore`]: an in-memory backend for tests; [`FaultyStore`] wraps any store and
//!   injects I/O errors.
//! - [`frame`]: every value is framed with a format byte and a CRC32; a damaged value reads
//!   back as [`StorageError::Corruption`], never as data.
//!
//! This crate knows nothing of tenants, sessions or events: only bytes in order.

mod batch;
mod budget;
mod error;
mod faulty;
pub mod frame;
mod memory;
#[cfg(feature = "rocksdb")]
mod rocks;

pub use batch::{Batch, BatchOp};
pub use error::StorageError;
pub use faulty::{Faults, FaultyStore};
pub use memory::MemoryStore;
#[cfg(feature = "rocksdb")]
pub use rocks::RocksStore;

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// The key spaces of a store. Each is ordered on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// Format version, tenants, counters.
    Meta,
    /// Everything tenants own, tenant first.
    Data,
    /// The changelog: sequence number to change.
    Log,
}

impl Space {
    pub const ALL: [Space; 3] = [Space::Meta, Space::Data, Space::Log];

    pub fn name(self) -> &'static str {
        match self {
            Space::Meta => "meta",
            Space::Data => "data",
            Space::Log => "log",
        }
    }
}

/// Scan direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Reverse,
}

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// An iterator over entries; it ends at the first error.
pub type EntryIter<'a> = Box<dyn Iterator<Item = Result<Entry>> + 'a>;

/// Reads: the live store, or a snapshot of it.
pub trait ReadView {
    /// The value at `key`, if any.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// The values at `keys`, in their order. RocksDB answers them with one batched lookup
    /// (`MultiGet`), which costs less than as many [`ReadView::get`]s.
    fn get_many(&self, space: Space, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|key| self.get(space, key)).collect()
    }

    /// Entries with `start <= key < end` (`end = None`: to the end of the space), in the
    /// given direction. Costs one seek plus the entries read.
    fn scan<'a>(&'a self, space: Space, start: &[u8], end: Option<&[u8]>, direction: Direction) -> EntryIter<'a>;

    /// True once a read of this view failed for needing a file (only views made by
    /// [`Store::cached_snapshot`]; their callers then read again from a plain snapshot).
    fn missed_cache(&self) -> bool {
        false
    }

    /// Calls `visit(key, value)` for the entries [`ReadView::scan`] would give, in order,
    /// until it returns `false`. The slices live only for the call, so a backend can lend
    /// its own buffers instead of copying every entry out (RocksDB's does).
    fn visit(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        direction: Direction,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        for entry in self.scan(space, start, end, direction) {
            let (key, value) = entry?;
            if !visit(&key, &value) {
                break;
            }
        }
        Ok(())
    }
}

/// An ordered key-value store with atomic batches and snapshots.
pub trait Store: ReadView + Send + Sync + std::fmt::Debug {
    /// Applies `batch` atomically: all of it is visible, or none. It is not necessarily
    /// durable until [`Store::sync`] returns.
    fn write(&self, batch: Batch) -> Result<()>;

    /// Makes every write that returned before this call durable. Concurrent callers may
    /// share one sync.
    fn sync(&self) -> Result<()>;

    /// A consistent point-in-time view.
    fn snapshot(&self) -> Box<dyn ReadView + '_>;

    /// A snapshot for short reads on threads that must not wait on I/O (an async
    /// runtime's), with a plain snapshot to fall back on. It reads no file: what is not in
    /// memory (RocksDB's memtables and block cache) fails with [`StorageError::NotCached`]
    /// and sets [`ReadView::missed_cache`]; so does a read past `budget` bytes of keys and
    /// values in all, which bounds the time the view can take. (RocksDB may still take its
    /// own short-held locks.) Backends that hold everything in memory give their plain
    /// snapshot under the budget.
    fn cached_snapshot(&self, budget: usize) -> Box<dyn ReadView + '_> {
        Box::new(budget::Budgeted::new(self.snapshot(), budget))
    }

    /// Asks the backend to physically drop deleted data in `[start, end)` (after a forget).
    fn compact_range(&self, _space: Space, _start: &[u8], _end: Option<&[u8]>) -> Result<()> {
        Ok(())
    }

    /// Writes a consistent copy of the whole store, as of now, to the directory `path`
    /// (which must not exist): a store that can be opened on its own.
    fn checkpoint(&self, _path: &std::path::Path) -> Result<()> {
        Err(StorageError::Io("this backend cannot write a checkpoint".into()))
    }

    /// Backend figures for operators (name, value), e.g. RocksDB's size estimates.
    fn properties(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// Tuning of the RocksDB backend.
#[derive(Clone, Debug)]
pub struct RocksOptions {
    /// Shared block cache for all column families, in bytes.
    pub block_cache_bytes: usize,
    /// Memtable size per column family, in bytes.
    pub write_buffer_bytes: usize,
}

impl Default for RocksOptions {
    fn default() -> Self {
        RocksOptions { block_cache_bytes: 64 << 20, write_buffer_bytes: 32 << 20 }
    }
}
