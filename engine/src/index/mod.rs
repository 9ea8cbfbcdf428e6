//! The derived indexes and the applier that keeps them up to date.
//!
//! RocksDB is the only source of truth. One background thread (`engram-indexer`) reads the
//! changelog after the indexes' applied mark, loads the current state of what each change
//! touched, and updates the full-text index ([`text`]) and the vector index ([`vector`]).
//! Applying "the current state of the keys a change names" makes replays harmless: an index
//! that replays a change it already holds ends in the same state.
//!
//! Marks: `applied` (both indexes updated in memory; vectors are searchable at once),
//! `text_visible` (the last full-text commit, with its mark as commit payload), and
//! `vector_saved` (the mark in the last vector snapshot). The changelog is truncated below
//! the lowest persisted mark. On open, each index catches up from its persisted mark; a
//! missing or damaged index, or one whose mark is older than the oldest changelog entry, is
//! rebuilt from a storage snapshot.

pub mod faults;
mod graph;
mod simd;
pub(crate) mod text;
pub mod vector;

use crate::codec;
use crate::db::{Engram, Inner};
use crate::error::{Error, Result};
use crate::events::to_event;
use crate::tenants::tenant_metric;
use engram_core::admin::{IndexMarks, IndexStats};
use engram_core::keys;
use engram_core::model::{Change, ChangeOp, JsonMap, Metric, SearchOver};
use engram_core::records::{EventRecord, IdentityRecord, MemoryRecord, SessionRecord, TenantRecord};
use engram_storage::{Direction, ReadView, Space};
pub use faults::{IoFaults, IoOp};
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
pub use vector::VectorTuning;

/// Changes applied per step of the applier.
const BATCH: usize = 1024;
const VECTOR_SNAPSHOT_FILE: &str = "vectors.snap";
const TEXT_DIR: &str = "text";

/// How the derived indexes run.
#[derive(Clone, Debug)]
pub struct IndexOptions {
    /// Run the indexes (and search). Off: nothing is indexed and the changelog is kept.
    pub enabled: bool,
    /// Where the index files live; `None`: `<data dir>/index` for [`Engram::open`], memory
    /// for other stores.
    pub dir: Option<PathBuf>,
    /// How long new text may wait before a full-text commit makes it searchable.
    pub text_commit_interval_ms: u64,
    /// A vector snapshot is written when this many changes were applied since the last, or
    /// `vector_snapshot_interval_ms` passed with any.
    pub vector_snapshot_every_changes: u64,
    pub vector_snapshot_interval_ms: u64,
    /// The longest a read-your-writes search waits for the indexes.
    pub max_wait_ms: u64,
    pub vector: VectorTuning,
    /// Failing file operations, for tests of a failing disk ([`IoFaults`]); `None` in use.
    pub io_faults: Option<Arc<IoFaults>>,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            enabled: true,
            dir: None,
            text_commit_interval_ms: 500,
            vector_snapshot_every_changes: 50_000,
            vector_snapshot_interval_ms: 60_000,
            max_wait_ms: 10_000,
            vector: VectorTuning::default(),
            io_faults: None,
        }
    }
}

/// What an index holds of one event or memory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum DocKey {
    Event { identity: Arc<str>, session: Arc<str>, seq: u64 },
    Memory { identity: Arc<str>, id: Arc<str> },
}

#[derive(Clone, Debug)]
pub(crate) struct IndexDoc {
    pub(crate) tenant: String,
    pub(crate) key: DocKey,
    /// Event kind or memory kind, as stored.
    pub(crate) kind: i32,
    /// 0 when none (and for memories).
    pub(crate) role: i32,
    pub(crate) ts_ms: i64,
    pub(crate) change_seq: u64,
    pub(crate) text: String,
    pub(crate) meta_terms: Vec<String>,
    pub(crate) vector: Option<Vec<f32>>,
}

/// What a change removes from the indexes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Removal<'a> {
    Doc(&'a DocKey),
    Session { identity: &'a str, session: &'a str },
    Identity { identity: &'a str },
    Tenant,
}

/// Where and what a search may return, resolved (sessions to their physical segments).
#[derive(Clone, Debug, Default)]
pub(crate) struct Scope {
    pub(crate) tenant: String,
    pub(crate) identity: Option<String>,
    /// Physical sessions of the identity with the highest sequence each contributes
    /// (forks inherit a prefix of their parent); empty: every session.
    pub(crate) segments: Vec<(String, u64)>,
    pub(crate) over: SearchOver,
    pub(crate) kinds: Vec<i32>,
    pub(crate) roles: Vec<i32>,
    pub(crate) memory_kinds: Vec<i32>,
    pub(crate) from_ms: Option<i64>,
    pub(crate) to_ms: Option<i64>,
    pub(crate) meta_terms: Vec<String>,
    pub(crate) as_of: Option<u64>,
}

/// The metadata equality terms of a metadata object: `key \0 canonical JSON value`.
pub(crate) fn meta_terms(metadata: &JsonMap) -> Vec<String> {
    metadata.iter().map(|(k, v)| meta_term(k, v)).collect()
}

pub(crate) fn meta_term(key: &str, value: &serde_json::Value) -> String {
    format!("{key}\u{0}{value}")
}

#[derive(Debug, Default)]
struct State {
    marks: IndexMarks,
    /// The newest changelog sequence known to be written.
    written: u64,
    flush_wanted: bool,
    stop: bool,
    failure: Option<String>,
    poisoned: Option<String>,
    rebuilds: u64,
    /// The indexes must be rebuilt from storage before anything else is applied.
    needs_rebuild: bool,
}

/// The indexes of one open store.
pub(crate) struct Indexes {
    options: IndexOptions,
    dir: Option<PathBuf>,
    text: Mutex<text::TextIndex>,
    text_reader: text::TextReader,
    vectors: vector::VectorIndex,
    state: Mutex<State>,
    /// The applier waits on it for work.
    work: Condvar,
    /// Searches wait on it for marks.
    progress: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Marks each index had on open (before catch-up), and whether it had to be recreated.
    opened: Mutex<OpenedMarks>,
}

#[derive(Clone, Copy, Debug, Default)]
struct OpenedMarks {
    text: u64,
    vector: u64,
}

impl std::fmt::Debug for Indexes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Indexes").field("marks", &self.state.lock().marks).finish()
    }
}

impl Indexes {
    /// Opens (or creates) the indexes in `dir` (memory when `None`).
    pub(crate) fn open(options: IndexOptions, dir: Option<PathBuf>) -> Result<Arc<Indexes>> {
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir).map_err(|e| Error::Index(format!("{}: {e}", dir.display())))?;
        }
        let text_dir = dir.as_ref().map(|d| d.join(TEXT_DIR));
        let (text, text_mark) = text::TextIndex::open(text_dir.as_deref(), options.io_faults.as_ref())?;
        let (vectors, vector_mark) =
            match dir.as_ref().and_then(|d| vector::VectorIndex::load(&d.join(VECTOR_SNAPSHOT_FILE), options.vector)) {
                Some(loaded) => loaded,
                None => (vector::VectorIndex::new(options.vector), 0),
            };
        let text_reader = text.reader();
        let marks = IndexMarks {
            applied: text_mark.min(vector_mark),
            text_visible: text_mark,
            vector_saved: vector_mark,
            truncated_below: 0,
        };
        Ok(Arc::new(Indexes {
            options,
            dir,
            text: Mutex::new(text),
            text_reader,
            vectors,
            state: Mutex::new(State { marks, ..State::default() }),
            work: Condvar::new(),
            progress: Condvar::new(),
            thread: Mutex::new(None),
            opened: Mutex::new(OpenedMarks { text: text_mark, vector: vector_mark }),
        }))
    }

    /// Starts the applier thread of `db`.
    pub(crate) fn start(self: &Arc<Self>, db: &Engram) {
        {
            let opened = *self.opened.lock();
            let mut st = self.state.lock();
            st.written = db.inner.acknowledged_seq();
            // Marks past the store's newest change: the index holds writes the store lost
            // (a power loss before a sync, or an index beside an older copy of the store).
            if opened.text.max(opened.vector) > db.last_change_seq() {
                st.needs_rebuild = true;
                // Nothing is searchable until the rebuild says so.
                st.marks = IndexMarks::default();
            }
        }
        let weak = Arc::downgrade(&db.inner);
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new().name("engram-indexer".into()).spawn(move || me.run(&weak));
        match spawned {
            Ok(handle) => *self.thread.lock() = Some(handle),
            Err(e) => self.state.lock().failure = Some(format!("cannot start the indexer: {e}")),
        }
    }

    /// Told of every committed write.
    pub(crate) fn notify(&self, seq: u64) {
        let mut st = self.state.lock();
        if seq > st.written {
            st.written = seq;
            self.work.notify_one();
        }
    }

    /// Stops the applier after it persists what it applied. Called when the store closes.
    pub(crate) fn shutdown(&self) {
        {
            let mut st = self.state.lock();
            st.stop = true;
            self.work.notify_all();
        }
        if let Some(handle) = self.thread.lock().take()
            && handle.thread().id() != std::thread::current().id()
        {
            let _ = handle.join();
        }
    }

    pub(crate) fn stats(&self) -> IndexStats {
        let (marks, rebuilds, failure, poisoned) = {
            let st = self.state.lock();
            (st.marks, st.rebuilds, st.failure.clone(), st.poisoned.clone())
        };
        let (text_docs, vectors) = (self.text_reader.num_docs(), self.vectors.stats());
        IndexStats { marks, rebuilds, failure, poisoned, text_docs, vectors }
    }

    pub(crate) fn wait_for_graphs(&self) {
        self.vectors.wait_for_graphs();
    }

    pub(crate) fn text_searcher(&self) -> text::TextSearcher {
        self.text_reader.searcher()
    }

    pub(crate) fn vectors(&self) -> &vector::VectorIndex {
        &self.vectors
    }

    /// Returns once every change up to `seq` is searchable (both indexes), or fails with
    /// [`Error::IndexLag`] after `max_wait_ms`. Returns the searchable mark.
    pub(crate) fn wait_for(&self, seq: u64) -> Result<u64> {
        let deadline = Instant::now() + Duration::from_millis(self.options.max_wait_ms);
        let mut st = self.state.lock();
        loop {
            let visible = st.marks.text_visible.min(st.marks.applied);
            if visible >= seq {
                return Ok(visible);
            }
            if let Some(reason) = &st.poisoned {
                return Err(Error::IndexPoisoned(reason.clone()));
            }
            if let Some(reason) = &st.failure {
                return Err(Error::Index(reason.clone()));
            }
            st.flush_wanted = true;
            self.work.notify_one();
            if self.progress.wait_until(&mut st, deadline).timed_out() {
                let indexed = st.marks.text_visible.min(st.marks.applied);
                if indexed >= seq {
                    return Ok(indexed);
                }
                return Err(Error::IndexLag { wanted: seq, indexed });
            }
        }
    }

    /// Rebuilds both indexes from storage now and returns once the new ones are searchable.
    pub(crate) fn reindex(&self) -> Result<IndexStats> {
        let mut st = self.state.lock();
        let before = st.rebuilds;
        st.needs_rebuild = true;
        // A rebuild writes every file anew: it is how a poisoned index comes back.
        st.poisoned = None;
        self.work.notify_one();
        while st.rebuilds == before {
            // Poisoned with the request consumed: the rebuild itself failed.
            if let Some(reason) = st.poisoned.as_ref().filter(|_| !st.needs_rebuild) {
                return Err(Error::IndexPoisoned(reason.clone()));
            }
            if st.stop {
                return Err(Error::Index("the store is closing".into()));
            }
            let stopped = self.thread.try_lock().is_some_and(|t| t.as_ref().is_none_or(JoinHandle::is_finished));
            if stopped {
                return Err(Error::Index("the indexer is not running".into()));
            }
            let timed_out = self.progress.wait_for(&mut st, Duration::from_secs(1)).timed_out();
            // A failing rebuild keeps retrying: report it rather than wait forever.
            if let Some(reason) = st.failure.clone().filter(|_| timed_out && st.needs_rebuild) {
                return Err(Error::Index(reason));
            }
        }
        drop(st);
        Ok(self.stats())
    }

    /// The searchable mark now.
    pub(crate) fn visible(&self) -> u64 {
        let st = self.state.lock();
        st.marks.text_visible.min(st.marks.applied)
    }

    fn run(&self, db: &Weak<Inner>) {
        let mut last_commit = Instant::now();
        let mut last_snapshot = Instant::now();
        let mut backoff = Duration::from_millis(10);
        loop {
            {
                let mut st = self.state.lock();
                loop {
                    if st.stop {
                        drop(st);
                        self.persist_on_stop();
                        return;
                    }
                    // Poisoned: nothing more is written until a reindex asks for a rebuild.
                    let poisoned = st.poisoned.is_some() && !st.needs_rebuild;
                    let behind = !poisoned && (st.written > st.marks.applied || st.needs_rebuild);
                    let text_pending = !poisoned && st.marks.text_visible < st.marks.applied;
                    if behind || (text_pending && st.flush_wanted) {
                        break;
                    }
                    let commit_due = text_pending
                        && last_commit.elapsed() >= Duration::from_millis(self.options.text_commit_interval_ms);
                    if commit_due {
                        break;
                    }
                    let wait = if text_pending {
                        Duration::from_millis(self.options.text_commit_interval_ms)
                    } else {
                        Duration::from_secs(1)
                    };
                    if self.work.wait_for(&mut st, wait).timed_out() && !text_pending {
                        // Also catch writes made before the listener saw them.
                        if let Some(inner) = db.upgrade() {
                            st.written = st.written.max(inner.acknowledged_seq());
                        }
                    }
                }
            }
            let Some(inner) = db.upgrade() else { return };
            let engram = Engram::internal(inner);
            let rebuilding = self.state.lock().needs_rebuild;
            match self.step(&engram, &mut last_commit, &mut last_snapshot) {
                Ok(()) => backoff = Duration::from_millis(10),
                Err(Error::IndexPoisoned(reason)) => {
                    // A file of the index could not be written or synced: stop here, with
                    // the persisted marks (and the changelog after them) where they were, so
                    // that a reopen catches up from what is surely on disk.
                    let mut st = self.state.lock();
                    st.poisoned = Some(reason);
                    // A failed rebuild is done with; a reindex asked for during a failing
                    // step still runs (it is how a poisoned index comes back).
                    if rebuilding {
                        st.needs_rebuild = false;
                    }
                    self.progress.notify_all();
                }
                Err(e) => {
                    // Reading storage failed (index file failures poison, above): keep the
                    // reason for searches and retry with a growing pause.
                    self.state.lock().failure = Some(e.to_string());
                    self.progress.notify_all();
                    drop(engram);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Applies one batch of changes, commits and snapshots when due, truncates the log.
    fn step(&self, db: &Engram, last_commit: &mut Instant, last_snapshot: &mut Instant) -> Result<()> {
        // Only acknowledged changes: in durable mode one not yet synced may still be lost,
        // and a persisted mark must never cover it.
        let (applied, written, needs_rebuild) = {
            let st = self.state.lock();
            (st.marks.applied, st.written, st.needs_rebuild)
        };
        let mut changes = db.changes(applied, BATCH)?;
        changes.retain(|c| c.seq <= written);
        let gap = match changes.first() {
            Some(first) => first.seq != applied + 1,
            None => written > applied,
        };
        if gap || needs_rebuild {
            self.state.lock().needs_rebuild = true;
            return self.rebuild(db);
        }
        let opened = *self.opened.lock();
        let mut tenants = TenantCache::default();
        let mut text = self.text.lock();
        for change in &changes {
            self.apply(db, &mut text, &mut tenants, change, opened)?;
        }
        let new_applied = changes.last().map_or(applied, |c| c.seq);
        let flush_wanted = self.state.lock().flush_wanted;
        let interval = Duration::from_millis(self.options.text_commit_interval_ms);
        let text_visible = self.state.lock().marks.text_visible;
        let commit = new_applied > text_visible && (flush_wanted || last_commit.elapsed() >= interval);
        if commit {
            text.commit(new_applied).map_err(poison)?;
            *last_commit = Instant::now();
        }
        drop(text);
        let vector_saved = self.state.lock().marks.vector_saved;
        let saved = match &self.dir {
            None => new_applied,
            Some(dir) => {
                let due = new_applied.saturating_sub(vector_saved) >= self.options.vector_snapshot_every_changes
                    || (new_applied > vector_saved
                        && last_snapshot.elapsed() >= Duration::from_millis(self.options.vector_snapshot_interval_ms));
                if !due {
                    vector_saved
                } else {
                    let faults = self.options.io_faults.as_deref();
                    self.vectors.save(&dir.join(VECTOR_SNAPSHOT_FILE), new_applied, faults).map_err(poison)?;
                    *last_snapshot = Instant::now();
                    new_applied
                }
            }
        };
        // Truncate below what both indexes have persisted, before the new marks are published.
        let text_persisted = if commit { new_applied } else { text_visible };
        // And below the embedder's mark: the changes after it are its backlog.
        let embedder = db.inner.embedding.get().map_or(u64::MAX, |e| e.persisted());
        let below = text_persisted.min(saved).min(embedder) + 1;
        let truncated_below = self.state.lock().marks.truncated_below;
        let truncated_below = if below > truncated_below.max(1) {
            db.truncate_changelog(below)?;
            below
        } else {
            truncated_below
        };
        let mut st = self.state.lock();
        st.marks.applied = new_applied;
        if commit {
            st.marks.text_visible = new_applied;
            st.flush_wanted = false;
        }
        st.failure = None;
        st.marks.vector_saved = saved;
        st.marks.truncated_below = truncated_below;
        self.progress.notify_all();
        Ok(())
    }

    fn apply(
        &self,
        db: &Engram,
        text: &mut text::TextIndex,
        tenants: &mut TenantCache,
        change: &Change,
        opened: OpenedMarks,
    ) -> Result<()> {
        let to_text = change.seq > opened.text;
        let to_vectors = change.seq > opened.vector;
        let view: &dyn ReadView = &*db.inner.store;
        let (tenant, identity, session) = (&change.tenant, &change.identity, &change.session);
        let mut remove = |removal: Removal<'_>| {
            if to_text {
                text.remove(tenant, &removal);
            }
            if to_vectors {
                self.vectors.remove(tenant, &removal);
            }
        };
        match change.op {
            ChangeOp::EventsAppended | ChangeOp::EventsRemoved | ChangeOp::SessionUpdated => {
                if !change.removed.is_empty() {
                    let (identity, session): (Arc<str>, Arc<str>) = (identity.as_str().into(), session.as_str().into());
                    for seq in &change.removed {
                        let (identity, session) = (Arc::clone(&identity), Arc::clone(&session));
                        remove(Removal::Doc(&DocKey::Event { identity, session, seq: *seq }));
                    }
                }
                if change.op == ChangeOp::EventsAppended {
                    for seq in &change.seqs {
                        let key = keys::event(tenant, identity, session, *seq);
                        let Some(record) = codec::get::<EventRecord>(view, Space::Data, &key)? else { continue };
                        let Some(metric) = tenants.metric(view, tenant)? else { continue };
                        let doc = event_doc(view, tenant, identity, session, &key, record)?;
                        self.add(text, &doc, metric, to_text, to_vectors)?;
                    }
                }
            }
            ChangeOp::Embedded if change.key.is_empty() => {
                for seq in &change.seqs {
                    let key = keys::event(tenant, identity, session, *seq);
                    let Some(record) = codec::get::<EventRecord>(view, Space::Data, &key)? else { continue };
                    let Some(metric) = tenants.metric(view, tenant)? else { continue };
                    let doc = event_doc(view, tenant, identity, session, &key, record)?;
                    // The text is indexed already: only the vector is new.
                    self.add(text, &doc, metric, false, to_vectors)?;
                }
            }
            ChangeOp::Embedded => {
                let key = keys::memory(tenant, identity, &change.key);
                if let Some(record) = codec::get::<MemoryRecord>(view, Space::Data, &key)?
                    && let Some(metric) = tenants.metric(view, tenant)?
                {
                    self.add(text, &memory_doc(tenant, identity, &key, record)?, metric, false, to_vectors)?;
                }
            }
            ChangeOp::SessionDeleted => remove(Removal::Session { identity, session }),
            ChangeOp::IdentityForgotten => remove(Removal::Identity { identity }),
            ChangeOp::TenantDeleted => {
                remove(Removal::Tenant);
                tenants.forget(tenant);
            }
            ChangeOp::MemoryPut | ChangeOp::MemoryDeleted => {
                let doc_key = DocKey::Memory { identity: identity.as_str().into(), id: change.key.as_str().into() };
                remove(Removal::Doc(&doc_key));
                let key = keys::memory(tenant, identity, &change.key);
                if let Some(record) = codec::get::<MemoryRecord>(view, Space::Data, &key)?
                    && let Some(metric) = tenants.metric(view, tenant)?
                {
                    self.add(text, &memory_doc(tenant, identity, &key, record)?, metric, to_text, to_vectors)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn add(
        &self,
        text: &mut text::TextIndex,
        doc: &IndexDoc,
        metric: Metric,
        to_text: bool,
        to_vectors: bool,
    ) -> Result<()> {
        if to_text && !doc.text.is_empty() {
            text.add(doc).map_err(poison)?;
        }
        if to_vectors {
            self.vectors.add(doc, metric);
        }
        Ok(())
    }

    /// Rebuilds both indexes from a consistent storage snapshot. Searches keep the old
    /// indexes until the new ones are complete; a failed rebuild is discarded and retried.
    fn rebuild(&self, db: &Engram) -> Result<()> {
        let mut text = self.text.lock();
        let result = self.rebuild_into(db, &mut text);
        if result.is_err() {
            // Failing too only leaves the writer to be repaired at its next use.
            let _ = text.rollback();
        }
        result.map_err(poison)
    }

    fn rebuild_into(&self, db: &Engram, text: &mut text::TextIndex) -> Result<()> {
        let (snapshot, seq) = db.inner.snapshot_with_seq();
        let view: &dyn ReadView = &*snapshot;
        text.clear()?;
        let vectors = vector::VectorIndex::new(self.options.vector);
        for_each_doc(view, |doc, metric| add_to(text, &vectors, &doc, metric))?;
        if let Some(dir) = &self.dir {
            vectors.save(&dir.join(VECTOR_SNAPSHOT_FILE), seq, self.options.io_faults.as_deref())?;
        }
        text.commit(seq)?;
        self.vectors.replace(vectors);
        *self.opened.lock() = OpenedMarks { text: seq, vector: seq };
        let mut st = self.state.lock();
        st.marks.applied = seq;
        st.marks.text_visible = seq;
        st.marks.vector_saved = seq;
        st.needs_rebuild = false;
        st.rebuilds += 1;
        st.failure = None;
        self.progress.notify_all();
        Ok(())
    }

    /// On close: commit what was applied and write the vector snapshot, so the next open
    /// has little to catch up. Never lowers a persisted mark.
    fn persist_on_stop(&self) {
        let (applied, text_visible, needs_rebuild, poisoned) = {
            let st = self.state.lock();
            (st.marks.applied, st.marks.text_visible, st.needs_rebuild, st.poisoned.is_some())
        };
        if needs_rebuild || poisoned {
            return;
        }
        let text_ok = applied <= text_visible || self.text.lock().commit(applied).is_ok();
        let vector_ok = match &self.dir {
            Some(dir) if self.state.lock().marks.vector_saved < applied => {
                self.vectors.save(&dir.join(VECTOR_SNAPSHOT_FILE), applied, self.options.io_faults.as_deref()).is_ok()
            }
            _ => true,
        };
        let mut st = self.state.lock();
        if text_ok {
            st.marks.text_visible = applied;
        }
        if vector_ok {
            st.marks.vector_saved = applied;
        }
    }
}

/// An index file write failed: the applier stops (see [`Error::IndexPoisoned`]).
fn poison(e: Error) -> Error {
    match e {
        Error::Index(reason) => Error::IndexPoisoned(reason),
        other => other,
    }
}

/// Calls `f` with every event and current memory the store holds, as the indexes see it,
/// with its tenant's metric.
fn for_each_doc(view: &dyn ReadView, mut f: impl FnMut(IndexDoc, Metric) -> Result<()>) -> Result<()> {
    let tenants = keys::meta::tenants_prefix();
    for tenant_entry in codec::scan_prefix::<TenantRecord>(view, Space::Meta, &tenants, Direction::Forward) {
        let (_, tenant_record) = tenant_entry?;
        let tenant = tenant_record.name.clone();
        let metric = tenant_metric(&tenant_record);
        let identities = keys::identity_dir_prefix(&tenant);
        for identity_entry in codec::scan_prefix::<IdentityRecord>(view, Space::Data, &identities, Direction::Forward) {
            let identity = identity_entry?.1.id;
            let sessions = keys::session_dir_prefix(&tenant, &identity);
            for session_entry in codec::scan_prefix::<SessionRecord>(view, Space::Data, &sessions, Direction::Forward) {
                let session = session_entry?.1.id;
                let prefix = keys::events_prefix(&tenant, &identity, &session);
                for event in codec::scan_prefix::<EventRecord>(view, Space::Data, &prefix, Direction::Forward) {
                    let (key, record) = event?;
                    f(event_doc(view, &tenant, &identity, &session, &key, record)?, metric)?;
                }
            }
            let memories = keys::memories_prefix(&tenant, &identity);
            for memory in codec::scan_prefix::<MemoryRecord>(view, Space::Data, &memories, Direction::Forward) {
                let (key, record) = memory?;
                f(memory_doc(&tenant, &identity, &key, record)?, metric)?;
            }
        }
    }
    Ok(())
}

/// A disagreement between an index and storage, found by [`Indexes::check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Disagreement {
    pub(crate) index: &'static str,
    pub(crate) item: String,
    pub(crate) reason: &'static str,
}

impl Indexes {
    /// Compares both indexes with what `view` holds: every indexed item must exist, once;
    /// every stored item with text (vector) must be in the full-text (vector) index. Exact
    /// when `view` is the state the indexes have applied (no concurrent writes).
    pub(crate) fn check(&self, view: &dyn ReadView) -> Result<Vec<Disagreement>> {
        let mut want_text: BTreeSet<(String, DocKey)> = BTreeSet::new();
        let mut want_vectors: BTreeSet<(String, DocKey)> = BTreeSet::new();
        for_each_doc(view, |doc, _| {
            if doc.vector.is_some() {
                want_vectors.insert((doc.tenant.clone(), doc.key.clone()));
            }
            if !doc.text.is_empty() {
                want_text.insert((doc.tenant, doc.key));
            }
            Ok(())
        })?;
        let mut out = Vec::new();
        let indexed = [("full-text", self.text_reader.all_keys()?), ("vector", self.vectors.all_keys())];
        for ((index, found), want) in indexed.into_iter().zip([&want_text, &want_vectors]) {
            let mut seen: BTreeSet<&(String, DocKey)> = BTreeSet::new();
            for item in &found {
                let reason = if !want.contains(item) {
                    "indexed, but not in storage"
                } else if !seen.insert(item) {
                    "indexed more than once"
                } else {
                    continue;
                };
                out.push(Disagreement { index, item: render(item), reason });
            }
            for item in want.iter().filter(|w| !seen.contains(w)) {
                out.push(Disagreement { index, item: render(item), reason: "in storage, but not indexed" });
            }
        }
        Ok(out)
    }
}

fn render((tenant, key): &(String, DocKey)) -> String {
    match key {
        DocKey::Event { identity, session, seq } => format!("{tenant}/{identity}/{session}/event {seq}"),
        DocKey::Memory { identity, id } => format!("{tenant}/{identity}/memory {id}"),
    }
}

/// Adds `doc` to both indexes (a rebuild's).
fn add_to(text: &mut text::TextIndex, vectors: &vector::VectorIndex, doc: &IndexDoc, metric: Metric) -> Result<()> {
    if !doc.text.is_empty() {
        text.add(doc)?;
    }
    vectors.add(doc, metric);
    Ok(())
}

/// Tenant metrics read once per step.
#[derive(Default)]
struct TenantCache(HashMap<String, Option<Metric>>);

impl TenantCache {
    fn metric(&mut self, view: &dyn ReadView, tenant: &str) -> Result<Option<Metric>> {
        if let Some(m) = self.0.get(tenant) {
            return Ok(*m);
        }
        let record: Option<TenantRecord> = codec::get(view, Space::Meta, &keys::meta::tenant(tenant))?;
        let metric = record.as_ref().map(tenant_metric);
        self.0.insert(tenant.to_string(), metric);
        Ok(metric)
    }

    fn forget(&mut self, tenant: &str) {
        self.0.remove(tenant);
    }
}

/// The text an event is found by: its text, tool name and the strings in its data.
fn event_text(text: Option<&str>, name: Option<&str>, data: Option<&serde_json::Value>) -> String {
    let mut out = String::new();
    let mut push = |s: &str| {
        if !s.is_empty() {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(s);
        }
    };
    if let Some(t) = text {
        push(t);
    }
    if let Some(n) = name {
        push(n);
    }
    fn strings<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::String(s) => out.push(s),
            serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    if let Some(d) = data {
        let mut found = Vec::new();
        strings(d, &mut found);
        found.into_iter().for_each(&mut push);
    }
    out
}

fn event_doc(
    view: &dyn ReadView,
    tenant: &str,
    identity: &str,
    session: &str,
    key: &[u8],
    record: EventRecord,
) -> Result<IndexDoc> {
    let change_seq = record.change_seq;
    let (kind, role) = (record.kind, record.role);
    let event = to_event(view, tenant, session, key, record)?;
    Ok(IndexDoc {
        tenant: tenant.to_string(),
        key: DocKey::Event { identity: identity.into(), session: session.into(), seq: event.seq },
        kind,
        role,
        ts_ms: event.timestamp_ms,
        change_seq,
        text: event_text(event.text.as_deref(), event.name.as_deref(), event.data.as_ref()),
        meta_terms: meta_terms(&event.metadata),
        vector: event.embedding,
    })
}

fn memory_doc(tenant: &str, identity: &str, key: &[u8], record: MemoryRecord) -> Result<IndexDoc> {
    let metadata = codec::json_map(key, &record.metadata_json)?;
    Ok(IndexDoc {
        tenant: tenant.to_string(),
        key: DocKey::Memory { identity: identity.into(), id: record.id.into() },
        kind: record.kind,
        role: 0,
        ts_ms: record.recorded_at_ms,
        change_seq: record.change_seq,
        text: record.text,
        meta_terms: meta_terms(&metadata),
        vector: codec::embedding(key, &record.embedding)?,
    })
}

/// The default index directory of a data directory.
#[cfg(feature = "rocksdb")]
pub(crate) fn default_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("index")
}
