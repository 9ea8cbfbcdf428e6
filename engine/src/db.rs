//! The handle, opening a data directory, and the commit path.
//!
//! Every mutating call runs as one transaction ([`Tx`]) under the commit lock: it reads the
//! latest state, builds one [`Batch`] holding its records, secondary keys and exactly one
//! changelog entry, and writes it unsynced. In durable mode the caller then waits in
//! [`Inner::sync_to`]: one thread syncs the write-ahead log for every write made so far, the
//! others find their write already covered (group commit). A failed write or sync poisons
//! the handle.

use crate::codec;
use crate::error::{Error, Result};
use crate::index::Indexes;
use crate::options::{Durability, Options};
use crate::tail::TailCache;
use engram_core::keys;
use engram_core::model::{Change, ChangeOp};
use engram_core::records::{ChangeRecord, FORMAT_VERSION, FormatRecord, SeqRecord};
#[cfg(feature = "rocksdb")]
use engram_storage::RocksStore;
use engram_storage::{Batch, BatchOp, MemoryStore, ReadView, Space, Store};
use parking_lot::{Condvar, Mutex};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

/// An open Engram store. Cheap to clone (a shared handle); every method is thread-safe and
/// blocking. Dropping the last clone stops the background work and closes the store.
///
/// # Examples
/// ```
/// use engram::{Engram, Options, NewEvent, Role, HistoryQuery, DEFAULT_TENANT};
/// let dir = tempfile::tempdir()?;
/// let db = Engram::open(dir.path(), Options::default())?;
/// db.append(DEFAULT_TENANT, "alice", "chat-1", vec![
///     NewEvent::message(Role::User, "What is the capital of France?"),
///     NewEvent::message(Role::Assistant, "Paris."),
/// ], Default::default())?;
/// let page = db.history(DEFAULT_TENANT, "alice", "chat-1", &HistoryQuery::default())?;
/// assert_eq!(page.events.len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Engram {
    /// Held by the caller's handles only (declared first, so it drops before `inner`): when
    /// the last one goes, the background threads stop before the store closes, so the data
    /// directory is free as soon as the drop returns.
    _open: Option<Arc<OpenGuard>>,
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
struct OpenGuard(std::sync::Weak<Inner>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.stop_workers();
        }
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) options: Options,
    /// Held while a transaction reads and writes.
    commit: Mutex<CommitState>,
    /// The newest events of recently read sessions; every write updates it.
    pub(crate) tails: TailCache,
    /// The last changelog sequence written (not necessarily synced).
    written_seq: AtomicU64,
    /// The last changelog sequence known durable (the group-commit mark waiters watch).
    synced_seq: AtomicU64,
    /// Held by the one thread syncing; the others wait for `synced_seq` to pass theirs.
    syncing: Mutex<()>,
    poisoned: Mutex<Option<String>>,
    is_poisoned: AtomicBool,
    worker: Mutex<Option<Worker>>,
    listeners: Listeners,
    /// The derived indexes, when enabled.
    pub(crate) indexes: std::sync::OnceLock<Arc<Indexes>>,
    /// The local embedder's worker, when a model is loaded.
    pub(crate) embedding: std::sync::OnceLock<Arc<crate::embed::Embedding>>,
    /// Last field, so it drops after the store: tells [`Engram::close`] the store closed.
    closed: Closed,
}

/// Set once the store behind it has closed (see [`Engram::close`]).
#[derive(Debug, Default)]
struct Closed(Arc<(Mutex<bool>, Condvar)>);

impl Drop for Closed {
    fn drop(&mut self) {
        let (done, cvar) = &*self.0;
        *done.lock() = true;
        cvar.notify_all();
    }
}

/// Callbacks told the changelog sequence of every committed write.
#[derive(Default)]
struct Listeners(parking_lot::RwLock<Vec<Listener>>);

type Listener = Box<dyn Fn(&Committed<'_>) + Send + Sync>;

/// What a commit listener is told: the changelog sequence of a write and where it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed<'a> {
    pub seq: u64,
    pub tenant: &'a str,
    /// Empty for tenant-wide writes.
    pub identity: &'a str,
    /// Empty for writes that are not one session's.
    pub session: &'a str,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Listeners({})", self.0.read().len())
    }
}

#[derive(Debug)]
struct Worker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: JoinHandle<()>,
}

impl Engram {
    /// Opens (creating if needed) the data directory at `path` on RocksDB.
    ///
    /// # Errors
    /// [`Error::Locked`] if another process has it open, [`Error::UnsupportedFormat`] if it
    /// was written by an incompatible version, I/O and corruption errors.
    #[cfg(feature = "rocksdb")]
    pub fn open(path: impl AsRef<Path>, mut options: Options) -> Result<Self> {
        let store = RocksStore::open(path.as_ref(), &options.rocksdb)?;
        if options.index.dir.is_none() {
            options.index.dir = Some(crate::index::default_dir(path.as_ref()));
        }
        Self::with_store(Arc::new(store), options)
    }

    /// A store that lives in memory only (tests, scratch work).
    pub fn open_in_memory(options: Options) -> Result<Self> {
        Self::with_store(Arc::new(MemoryStore::new()), options)
    }

    /// Opens Engram over any [`Store`] backend. While it is open, Engram must be the store's
    /// only writer: transactions keep the newest tenant and session records they read in
    /// memory and would not see a write made behind their back.
    pub fn with_store(store: Arc<dyn Store>, options: Options) -> Result<Self> {
        let clock_now = options.clock.now_ms();
        let format: Option<FormatRecord> = codec::get(&*store, Space::Meta, keys::meta::FORMAT)?;
        match format {
            Some(f) if f.version != FORMAT_VERSION => {
                return Err(Error::UnsupportedFormat { found: f.version, supported: FORMAT_VERSION });
            }
            Some(_) => {}
            None => {
                let mut batch = Batch::new();
                let record = FormatRecord { version: FORMAT_VERSION, created_at_ms: clock_now };
                codec::put(&mut batch, Space::Meta, keys::meta::FORMAT.to_vec(), &record);
                store.write(batch)?;
                store.sync()?;
            }
        }
        // The newest changelog entry holds the last sequence; the meta record keeps it when
        // truncation has removed every entry.
        let kept: Option<SeqRecord> = codec::get(&*store, Space::Meta, keys::meta::LAST_CHANGE_SEQ)?;
        let newest = match store.scan(Space::Log, &[], None, engram_storage::Direction::Reverse).next() {
            Some(entry) => {
                let (key, _) = entry.map_err(Error::from)?;
                keys::decode_change(&key).map_err(|e| Error::corruption(&key, e))?
            }
            None => 0,
        };
        let last_seq = newest.max(kept.map_or(0, |r| r.seq));
        let inner = Arc::new(Inner {
            tails: TailCache::new(options.history_cache_bytes),
            store,
            options,
            commit: Mutex::new(CommitState { last: last_seq, cache: RecordCache::default() }),
            written_seq: AtomicU64::new(last_seq),
            synced_seq: AtomicU64::new(last_seq),
            syncing: Mutex::new(()),
            poisoned: Mutex::new(None),
            is_poisoned: AtomicBool::new(false),
            worker: Mutex::new(None),
            listeners: Listeners::default(),
            indexes: std::sync::OnceLock::new(),
            embedding: std::sync::OnceLock::new(),
            closed: Closed::default(),
        });
        let db = Engram { _open: Some(Arc::new(OpenGuard(Arc::downgrade(&inner)))), inner };
        if let Some(tenant) = db.inner.options.default_tenant.clone() {
            db.ensure_tenant(&tenant)?;
        }
        // The embedder before the indexer: the indexer truncates the changelog only below
        // the embedder's mark, which must be known from its first step.
        if let Some(model) = db.inner.options.embedder.clone() {
            let embedding = crate::embed::Embedding::start(model, &db)?;
            let _ = db.inner.embedding.set(embedding);
        }
        if db.inner.options.index.enabled {
            let index_options = db.inner.options.index.clone();
            let dir = index_options.dir.clone();
            let indexes = Indexes::open(index_options, dir)?;
            let _ = db.inner.indexes.set(Arc::clone(&indexes));
            indexes.start(&db);
        }
        if let Some(interval_ms) = db.inner.options.retention_sweep_interval_ms {
            db.start_retention_worker(interval_ms);
        }
        Ok(db)
    }

    /// Makes every write acknowledged so far durable (useful in buffered mode).
    ///
    /// # Errors
    /// [`Error::Poisoned`] (and the handle becomes poisoned) if the sync fails.
    pub fn sync(&self) -> Result<()> {
        let seq = self.inner.written_seq.load(Ordering::Acquire);
        self.inner.sync_to(seq)
    }

    /// Registers `listener`, told of every write committed from now on (its changelog
    /// sequence, tenant, identity and session), once it is acknowledged (durable, in durable
    /// mode), on the writing thread. Keep it short: watchers use it to wake up.
    pub fn on_commit(&self, listener: impl Fn(&Committed<'_>) + Send + Sync + 'static) {
        self.inner.listeners.0.write().push(Box::new(listener));
    }

    /// `Ok` while the handle accepts writes; [`Error::Poisoned`] after a failed write or sync.
    pub fn check_health(&self) -> Result<()> {
        self.inner.check_poisoned()
    }

    /// The sequence of the newest changelog entry acknowledged: synced in durable mode,
    /// written in buffered mode. A change past it may still be lost to a crash (and its
    /// sequence then given to another change), so no reader is shown it.
    pub fn last_change_seq(&self) -> u64 {
        self.inner.acknowledged_seq()
    }

    /// Acknowledged changelog entries (see [`Engram::last_change_seq`]) with
    /// `seq > after`, oldest first, at most `limit`.
    pub fn changes(&self, after: u64, limit: usize) -> Result<Vec<Change>> {
        let acknowledged = self.inner.acknowledged_seq();
        if after >= acknowledged {
            return Ok(Vec::new());
        }
        let start = keys::change(after.saturating_add(1));
        let end = keys::change(acknowledged.saturating_add(1));
        let mut out = Vec::new();
        for entry in codec::scan::<ChangeRecord>(
            &*self.inner.store,
            Space::Log,
            &start,
            Some(&end),
            engram_storage::Direction::Forward,
        ) {
            if out.len() >= limit {
                break;
            }
            let (key, record) = entry?;
            out.push(change_from_record(&key, record)?);
        }
        Ok(out)
    }

    /// Removes changelog entries with `seq < below`; returns how many it removed. The
    /// indexes call this with the lowest mark they have all applied.
    pub fn truncate_changelog(&self, below: u64) -> Result<u64> {
        let end = keys::change(below);
        let mut state = self.inner.commit.lock();
        // The log changes only under the commit lock: this is what the write removes.
        let count =
            self.inner.store.scan(Space::Log, &[], Some(&end), engram_storage::Direction::Forward).count() as u64;
        if count == 0 {
            return Ok(0);
        }
        self.inner.check_poisoned()?;
        crate::failpoint::hit("changelog-truncate");
        let mut batch = Batch::new();
        batch.delete_range(Space::Log, Vec::new(), end);
        // The last sequence must survive the entries that carried it.
        codec::put(&mut batch, Space::Meta, keys::meta::LAST_CHANGE_SEQ.to_vec(), &SeqRecord { seq: state.last });
        self.inner.write(&mut state.cache, batch)?;
        Ok(count)
    }

    /// Writes a consistent online backup of the whole store to the directory `path` (which
    /// must not exist): a data directory that `Engram::open` (or `engram serve
    /// --data-dir`) opens as it is. It holds at least every write acknowledged before the
    /// call, whose last changelog sequence it returns. Writers are not stopped (RocksDB
    /// flushes its memtables and hard-links its files).
    pub fn backup(&self, path: impl AsRef<Path>) -> Result<u64> {
        let path = path.as_ref();
        if path.exists() {
            return Err(Error::AlreadyExists { what: "backup directory", id: path.display().to_string() });
        }
        let covered = self.inner.written_seq.load(Ordering::Acquire);
        self.inner.store.checkpoint(path)?;
        Ok(covered)
    }

    /// Figures of the storage backend (name, value).
    pub fn storage_properties(&self) -> Vec<(String, String)> {
        self.inner.store.properties()
    }

    fn start_retention_worker(&self, interval_ms: u64) {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let weak = Arc::downgrade(&self.inner);
        let stop_in_worker = Arc::clone(&stop);
        let spawned = std::thread::Builder::new().name("engram-retention".into()).spawn(move || {
            let (lock, cvar) = &*stop_in_worker;
            loop {
                {
                    let mut stopped = lock.lock();
                    if !*stopped {
                        cvar.wait_for(&mut stopped, std::time::Duration::from_millis(interval_ms));
                    }
                    if *stopped {
                        return;
                    }
                }
                let Some(inner) = weak.upgrade() else { return };
                let db = Engram::internal(inner);
                // A failed sweep is retried at the next interval; reads hide expired
                // events meanwhile.
                let _ = db.sweep_retention();
            }
        });
        if let Ok(handle) = spawned {
            *self.inner.worker.lock() = Some(Worker { stop, handle });
        }
    }
}

impl Engram {
    /// A handle for the store's own background threads: dropping it never closes anything.
    pub(crate) fn internal(inner: Arc<Inner>) -> Engram {
        Engram { _open: None, inner }
    }
}

impl Engram {
    /// Drops this handle and waits, at most `timeout`, until every other handle of the
    /// store has gone too and the store has closed (background threads stopped, RocksDB
    /// closed): when it returns `Ok`, the data directory is free to open again.
    ///
    /// # Errors
    /// `Locked` when other handles still hold the store after `timeout`.
    pub fn close(self, timeout: std::time::Duration) -> Result<()> {
        let closed = Arc::clone(&self.inner.closed.0);
        drop(self);
        let (done, cvar) = &*closed;
        let deadline = std::time::Instant::now() + timeout;
        let mut done = done.lock();
        while !*done {
            if cvar.wait_until(&mut done, deadline).timed_out() && !*done {
                return Err(Error::Locked("other handles still hold the store".into()));
            }
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

impl Inner {
    /// Stops the indexer (after it persists what it applied) and the retention worker.
    fn stop_workers(&self) {
        // The embedder first: its writes feed the indexes.
        if let Some(embedding) = self.embedding.get() {
            embedding.shutdown();
        }
        if let Some(indexes) = self.indexes.get() {
            indexes.shutdown();
        }
        if let Some(worker) = self.worker.lock().take() {
            let (lock, cvar) = &*worker.stop;
            *lock.lock() = true;
            cvar.notify_all();
            if worker.handle.thread().id() != std::thread::current().id() {
                let _ = worker.handle.join();
            }
        }
    }
}

pub(crate) fn change_from_record(key: &[u8], r: ChangeRecord) -> Result<Change> {
    let op = ChangeOp::from_i32(r.op).ok_or_else(|| Error::corruption(key, format!("unknown change op {}", r.op)))?;
    Ok(Change {
        seq: r.seq,
        op,
        tenant: r.tenant,
        identity: r.identity,
        session: r.session,
        seqs: r.seqs,
        removed: r.removed,
        key: r.key,
        at_ms: r.at_ms,
    })
}

/// What the commit lock guards.
#[derive(Debug)]
struct CommitState {
    /// The last changelog sequence written.
    last: u64,
    cache: RecordCache,
}

/// The newest stored value (or absence) of keys that transactions have read: the tenant
/// record and the session record an append reads, a hash lookup instead of a storage read.
/// Used and changed only under the commit lock. Every write of a transaction goes through
/// [`Inner::write`], which updates the entries of the keys it writes, so an entry is always
/// what the store holds. (The only writes that bypass it, the format record at open and the
/// embedder's mark, are of keys no transaction reads.) Snapshot reads never use it.
#[derive(Debug, Default)]
pub(crate) struct RecordCache {
    /// Per [`Space`] (in `Space::ALL` order): key -> value, `None` for a key known absent.
    spaces: [std::collections::HashMap<Vec<u8>, Option<Vec<u8>>>; 3],
    bytes: usize,
}

impl RecordCache {
    const MAX_ENTRIES: usize = 4096;
    const MAX_BYTES: usize = 4 << 20;
    /// Larger values (big state documents) are not kept.
    const MAX_VALUE_BYTES: usize = 16 << 10;

    fn space(space: Space) -> usize {
        match space {
            Space::Meta => 0,
            Space::Data => 1,
            Space::Log => 2,
        }
    }

    fn get(&self, space: Space, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.spaces[Self::space(space)].get(key)
    }

    fn entries(&self) -> usize {
        self.spaces.iter().map(|m| m.len()).sum()
    }

    fn forget(&mut self, space: Space, key: &[u8]) {
        if let Some((k, v)) = self.spaces[Self::space(space)].remove_entry(key) {
            self.bytes -= k.len() + v.map_or(0, |v| v.len());
        }
    }

    fn insert(&mut self, space: Space, key: &[u8], value: Option<Vec<u8>>) {
        if value.as_ref().is_some_and(|v| v.len() > Self::MAX_VALUE_BYTES) {
            self.forget(space, key);
            return;
        }
        // The common case, a record rewritten (a session's head): in place.
        if let Some(slot) = self.spaces[Self::space(space)].get_mut(key) {
            let old = slot.as_ref().map_or(0, Vec::len);
            let new = value.as_ref().map_or(0, Vec::len);
            if self.bytes - old + new <= Self::MAX_BYTES {
                self.bytes = self.bytes - old + new;
                *slot = value;
                return;
            }
        }
        self.forget(space, key);
        let size = key.len() + value.as_ref().map_or(0, Vec::len);
        if self.entries() >= Self::MAX_ENTRIES || self.bytes + size > Self::MAX_BYTES {
            self.clear();
        }
        self.bytes += size;
        self.spaces[Self::space(space)].insert(key.to_vec(), value);
    }

    fn clear(&mut self) {
        self.spaces.iter_mut().for_each(|m| m.clear());
        self.bytes = 0;
    }

    /// What `batch` will change in the cached keys (read before the write consumes it).
    fn changes(&self, batch: &Batch) -> Option<Vec<CachedWrite>> {
        let mut out = Vec::new();
        for op in batch.ops() {
            match op {
                BatchOp::Put { space, key, value } if self.get(*space, key).is_some() => {
                    out.push((*space, key.clone(), Some(value.clone())));
                }
                BatchOp::Delete { space, key } if self.get(*space, key).is_some() => {
                    out.push((*space, key.clone(), None));
                }
                BatchOp::Put { .. } | BatchOp::Delete { .. } => {}
                // Rare (forget, session delete, changelog truncation): start over.
                BatchOp::DeleteRange { .. } => return None,
            }
        }
        Some(out)
    }
}

/// A write to a cached key: the new value, or `None` for a delete.
type CachedWrite = (Space, Vec<u8>, Option<Vec<u8>>);

/// A transaction's reads: point reads through the [`RecordCache`], scans from the store.
pub(crate) struct TxView<'a> {
    store: &'a dyn Store,
    cache: std::cell::RefCell<&'a mut RecordCache>,
}

impl ReadView for TxView<'_> {
    fn get(&self, space: Space, key: &[u8]) -> engram_storage::Result<Option<Vec<u8>>> {
        if let Some(value) = self.cache.borrow().get(space, key) {
            return Ok(value.clone());
        }
        let value = self.store.get(space, key)?;
        self.cache.borrow_mut().insert(space, key, value.clone());
        Ok(value)
    }

    fn scan<'b>(
        &'b self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        direction: engram_storage::Direction,
    ) -> engram_storage::EntryIter<'b> {
        self.store.scan(space, start, end, direction)
    }

    fn visit(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        direction: engram_storage::Direction,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> engram_storage::Result<()> {
        self.store.visit(space, start, end, direction, visit)
    }
}

/// One mutating call in progress: reads see the latest committed state; writes collect in
/// `batch`; `change` is its changelog entry.
pub(crate) struct Tx<'a> {
    view: TxView<'a>,
    pub(crate) batch: Batch,
    pub(crate) change: Option<ChangeRecord>,
    /// The changelog sequence this transaction will get if it writes.
    pub(crate) change_seq: u64,
    pub(crate) now_ms: i64,
}

impl Tx<'_> {
    pub(crate) fn view(&self) -> &dyn ReadView {
        &self.view
    }

    pub(crate) fn record_change(
        &mut self,
        op: ChangeOp,
        tenant: &str,
        identity: &str,
        session: &str,
    ) -> &mut ChangeRecord {
        debug_assert!(self.change.is_none(), "one changelog entry per call");
        self.change.insert(ChangeRecord {
            seq: self.change_seq,
            op: op as i32,
            tenant: tenant.to_string(),
            identity: identity.to_string(),
            session: session.to_string(),
            at_ms: self.now_ms,
            ..ChangeRecord::default()
        })
    }
}

impl Inner {
    pub(crate) fn now_ms(&self) -> i64 {
        self.options.clock.now_ms()
    }

    fn check_poisoned(&self) -> Result<()> {
        if self.is_poisoned.load(Ordering::Acquire) {
            let reason = self.poisoned.lock().clone().unwrap_or_default();
            return Err(Error::Poisoned(reason));
        }
        Ok(())
    }

    fn poison(&self, reason: String) {
        let mut p = self.poisoned.lock();
        if p.is_none() {
            *p = Some(reason);
        }
        self.is_poisoned.store(true, Ordering::Release);
    }

    /// Writes `batch` and brings `cache` up to date with it: the one way a transaction
    /// writes.
    fn write(&self, cache: &mut RecordCache, batch: Batch) -> Result<()> {
        let changes = cache.changes(&batch);
        let tails = self.tails.begin(&batch);
        if let Err(e) = self.store.write(batch) {
            tails.apply(false);
            cache.clear();
            self.poison(format!("write failed: {e}"));
            return Err(Error::from(e));
        }
        match changes {
            Some(changes) => {
                for (space, key, value) in changes {
                    cache.insert(space, &key, value);
                }
            }
            None => cache.clear(),
        }
        tails.apply(true);
        Ok(())
    }

    /// Runs `body` as one transaction and commits what it built. Returns its value and the
    /// changelog sequence (0 when it wrote nothing).
    pub(crate) fn commit<T>(&self, body: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<(T, u64)> {
        let (value, change) = {
            let mut state = self.commit.lock();
            self.check_poisoned()?;
            let CommitState { last, cache } = &mut *state;
            let mut tx = Tx {
                view: TxView { store: &*self.store, cache: std::cell::RefCell::new(cache) },
                batch: Batch::new(),
                change: None,
                change_seq: *last + 1,
                now_ms: self.now_ms(),
            };
            let value = body(&mut tx)?;
            let Tx { mut batch, change, .. } = tx;
            let Some(change) = change else {
                debug_assert!(batch.is_empty(), "a write without a changelog entry");
                // Nothing written, but the answer may rest on writes not yet synced (an
                // idempotent retry finding the first attempt): wait for them too.
                let covering = *last;
                drop(state);
                if self.options.durability == Durability::Durable {
                    self.sync_to(covering)?;
                }
                return Ok((value, 0));
            };
            let seq = change.seq;
            codec::put(&mut batch, Space::Log, keys::change(seq), &change);
            self.write(cache, batch)?;
            *last = seq;
            self.written_seq.store(seq, Ordering::Release);
            (value, change)
        };
        let seq = change.seq;
        if self.options.durability == Durability::Durable {
            self.sync_to(seq)?;
        }
        crate::failpoint::hit("after-commit");
        let committed = Committed { seq, tenant: &change.tenant, identity: &change.identity, session: &change.session };
        for listener in self.listeners.0.read().iter() {
            listener(&committed);
        }
        if let Some(indexes) = self.indexes.get() {
            indexes.notify(seq);
        }
        if let Some(embedding) = self.embedding.get() {
            embedding.notify(seq);
        }
        Ok((value, seq))
    }

    /// The newest changelog sequence acknowledged to its caller: synced in durable mode,
    /// written in buffered mode. Nothing derived may persist a mark past it.
    pub(crate) fn acknowledged_seq(&self) -> u64 {
        match self.options.durability {
            Durability::Durable => self.synced_seq.load(Ordering::Acquire),
            Durability::Buffered => self.written_seq.load(Ordering::Acquire),
        }
    }

    /// A consistent snapshot of the store and the last changelog sequence it holds.
    pub(crate) fn snapshot_with_seq(&self) -> (Box<dyn ReadView + '_>, u64) {
        let state = self.commit.lock();
        (self.store.snapshot(), state.last)
    }

    /// Returns once every change up to `seq` is durable. One thread syncs the log for every
    /// write made so far; the others yield until the durable mark passes theirs (a sync
    /// blocks in the kernel, so yielding waiters cost little, and none of them needs a
    /// lock handoff to learn it is done). A waiter that has yielded `SPIN_YIELDS` times
    /// (a slow disk) blocks on the sync lock instead of burning a core.
    pub(crate) fn sync_to(&self, seq: u64) -> Result<()> {
        const SPIN_YIELDS: u32 = 256;
        let mut yields = 0;
        loop {
            if self.synced_seq.load(Ordering::Acquire) >= seq {
                return Ok(());
            }
            self.check_poisoned()?;
            let _syncing = match self.syncing.try_lock() {
                Some(guard) => guard,
                None if yields < SPIN_YIELDS => {
                    yields += 1;
                    std::thread::yield_now();
                    continue;
                }
                None => self.syncing.lock(),
            };
            if self.synced_seq.load(Ordering::Acquire) >= seq {
                return Ok(());
            }
            // A sync that failed while this thread waited poisoned the handle: a later sync
            // that succeeds says nothing of the writes it should have covered (the kernel
            // may have dropped their pages), so none of them is acknowledged.
            self.check_poisoned()?;
            let target = self.written_seq.load(Ordering::Acquire);
            debug_assert!(target >= seq, "syncing for a write that has not happened");
            if let Err(e) = self.store.sync() {
                let reason = format!("sync failed: {e}");
                self.poison(reason.clone());
                return Err(Error::Poisoned(reason));
            }
            self.synced_seq.fetch_max(target, Ordering::AcqRel);
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_cache_follows_writes_and_stays_bounded() {
        let mut cache = RecordCache::default();
        cache.insert(Space::Data, b"session", Some(vec![1]));
        cache.insert(Space::Data, b"idempotency", None);
        cache.insert(Space::Meta, b"session", Some(vec![9]));

        let mut batch = Batch::new();
        batch.put(Space::Data, b"session".to_vec(), vec![2]);
        batch.put(Space::Data, b"idempotency".to_vec(), vec![3]);
        batch.put(Space::Data, b"event".to_vec(), vec![4]);
        batch.delete(Space::Meta, b"session".to_vec());
        let changes = cache.changes(&batch).expect("no range delete");
        // Only keys the cache holds; an uncached key written stays uncached.
        assert_eq!(
            changes,
            vec![
                (Space::Data, b"session".to_vec(), Some(vec![2])),
                (Space::Data, b"idempotency".to_vec(), Some(vec![3])),
                (Space::Meta, b"session".to_vec(), None),
            ]
        );
        batch.delete_range(Space::Log, Vec::new(), b"z".to_vec());
        assert_eq!(cache.changes(&batch), None, "a range delete empties the cache");

        // Bounded by entries and bytes; big values are not kept.
        cache.insert(Space::Data, b"big", Some(vec![0; RecordCache::MAX_VALUE_BYTES + 1]));
        assert!(cache.get(Space::Data, b"big").is_none());
        for i in 0..3 * RecordCache::MAX_ENTRIES {
            cache.insert(Space::Data, format!("k{i}").as_bytes(), Some(vec![0; 1000]));
            assert!(cache.entries() <= RecordCache::MAX_ENTRIES);
            assert!(cache.bytes <= RecordCache::MAX_BYTES);
        }
        let total: usize =
            cache.spaces.iter().flat_map(|m| m.iter()).map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len)).sum();
        assert_eq!(cache.bytes, total);
    }

    #[test]
    fn transactions_read_what_the_last_one_wrote() {
        use engram_core::model::{AppendOptions, NewEvent, Role};
        let db = Engram::open_in_memory(Options::default()).expect("open");
        let t = crate::DEFAULT_TENANT;
        let append = |text: &str| {
            db.append(t, "alice", "s", vec![NewEvent::message(Role::User, text)], AppendOptions::default())
                .expect("append")
        };
        assert_eq!(append("one").first_seq, 1);
        assert_eq!(append("two").first_seq, 2, "the cached session record moved on");
        db.delete_session(t, "alice", "s").expect("delete");
        assert_eq!(append("again").first_seq, 1, "a deleted session starts over");
        db.forget_identity(t, "alice").expect("forget");
        assert_eq!(append("after forget").first_seq, 1);
        let expected = AppendOptions { expected_head: Some(1), ..Default::default() };
        let next = vec![NewEvent::message(Role::User, "three")];
        assert_eq!(db.append(t, "alice", "s", next, expected).expect("expected head").first_seq, 2);
    }
}
