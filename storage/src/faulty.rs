use crate::{Batch, Direction, EntryIter, ReadView, Result, Space, StorageError, Store};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Switches of a [`FaultyStore`], shared with the test that flips them.
#[derive(Debug, Default)]
pub struct Faults {
    /// Fail every `sync` while set.
    pub fail_sync: AtomicBool,
    /// Fail every `write` while set.
    pub fail_write: AtomicBool,
    /// Fail the write after this many more succeed (0: off).
    pub fail_write_after: AtomicU64,
    /// Syncs that reached the inner store.
    pub syncs: AtomicU64,
    /// Sleep this long in every sync (a slow disk), in milliseconds.
    pub sync_delay_ms: AtomicU64,
}

/// Wraps a store and injects I/O errors where the [`Faults`] say: the seam for testing that
/// a failed sync poisons the handle and that nothing acknowledged is lost.
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    faults: Arc<Faults>,
}

impl<S: Store> FaultyStore<S> {
    pub fn new(inner: S) -> (Self, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        (FaultyStore { inner, faults: Arc::clone(&faults) }, faults)
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Store> ReadView for FaultyStore<S> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(space, key)
    }

    fn scan<'a>(&'a self, space: Space, start: &[u8], end: Option<&[u8]>, direction: Direction) -> EntryIter<'a> {
        self.inner.scan(space, start, end, direction)
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn write(&self, batch: Batch) -> Result<()> {
        if self.faults.fail_write.load(Ordering::SeqCst) {
            return Err(StorageError::Io("injected write failure".into()));
        }
        let countdown = self.faults.fail_write_after.load(Ordering::SeqCst);
        if countdown > 0 {
            if countdown == 1 {
                self.faults.fail_write.store(true, Ordering::SeqCst);
            }
            self.faults.fail_write_after.store(countdown - 1, Ordering::SeqCst);
        }
        self.inner.write(batch)
    }

    fn sync(&self) -> Result<()> {
        if self.faults.fail_sync.load(Ordering::SeqCst) {
            return Err(StorageError::Io("injected sync failure".into()));
        }
        let delay_ms = self.faults.sync_delay_ms.load(Ordering::SeqCst);
        if delay_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        }
        self.faults.syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.sync()
    }

    fn snapshot(&self) -> Box<dyn ReadView + '_> {
        self.inner.snapshot()
    }

    fn cached_snapshot(&self, budget: usize) -> Box<dyn ReadView + '_> {
        self.inner.cached_snapshot(budget)
    }

    fn checkpoint(&self, path: &std::path::Path) -> Result<()> {
        self.inner.checkpoint(path)
    }
}
