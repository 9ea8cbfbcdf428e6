//! Vectors derived from text: the [`Embedder`] trait, a deterministic hashing embedder for
//! tests, the BERT sentence encoder (feature `local-embedder`), and the worker that embeds
//! what tenants with `embedder: local` write without a vector.
//!
//! The worker follows the changelog like the indexes do, off the write path: for each
//! acknowledged change it finds the events and memories that have text and no vector,
//! embeds them in batches, and writes each vector into its record (`embedding_derived`)
//! with an `Embedded` changelog entry, which the indexes then apply. Its mark (the last
//! change it has handled) is kept in the meta space; after a restart it resumes there, and
//! the changelog is not truncated past it, so a backlog survives a crash. When its mark is
//! behind the truncated changelog (a model loaded for the first time on an old store, a
//! tenant switched to `local`), it scans storage instead.

#[cfg(feature = "local-embedder")]
pub mod bert;
#[cfg(feature = "local-embedder")]
mod matmul;

use crate::codec;
use crate::db::{Engram, Inner};
use crate::error::{Error, Result};
use engram_core::keys;
use engram_core::model::{ChangeOp, EmbedderKind};
use engram_core::records::{
    EventRecord, IdentityRecord, MemoryRecord, SeqRecord, SessionRecord, TenantRecord, float_bytes,
};
use engram_storage::{Batch, Direction, ReadView, Space};
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Turns texts into unit-length vectors of one dimension.
pub trait Embedder: Send + Sync + std::fmt::Debug {
    /// What stats and logs call the model.
    fn name(&self) -> &str;
    fn dim(&self) -> usize;
    /// One vector per text, in order.
    ///
    /// # Errors
    /// The model's failures, as [`Error::Index`].
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
}

/// A deterministic embedder with no model: signed feature hashing of the lowercased words
/// and their character trigrams. Texts that share words are near; it knows no synonyms.
/// For tests, and for trying the embedding path without a model.
#[derive(Clone, Debug)]
pub struct HashingEmbedder {
    dim: usize,
}

impl HashingEmbedder {
    pub fn new(dim: usize) -> Self {
        HashingEmbedder { dim: dim.max(2) }
    }

    fn add(&self, v: &mut [f32], feature: &str, weight: f32) {
        // A fixed hash: the same vectors on every run, machine and toolchain.
        let h = fnv1a(feature.as_bytes());
        let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
        v[(h % self.dim as u64) as usize] += sign * weight;
    }
}

impl Embedder for HashingEmbedder {
    fn name(&self) -> &str {
        "hashing"
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(texts
            .iter()
            .map(|text| {
                let mut v = vec![0f32; self.dim];
                for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
                    let word = word.to_lowercase();
                    self.add(&mut v, &word, 1.0);
                    let chars: Vec<char> = format!("#{word}#").chars().collect();
                    for tri in chars.windows(3) {
                        self.add(&mut v, &tri.iter().collect::<String>(), 0.3);
                    }
                }
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                } else {
                    v[0] = 1.0;
                }
                v
            })
            .collect())
    }
}

/// The `key` of the tenant change that switches its embedder.
pub(crate) const EMBEDDER_CHANGE_KEY: &str = "embedder";

/// Texts embedded per model call.
pub const EMBED_BATCH: usize = 32;
/// Changes read per step.
const CHANGES_PER_STEP: usize = 256;
/// The mark is written to the meta space at least this often while it moves.
const PERSIST_EVERY: Duration = Duration::from_millis(500);

/// What the embedder has done and has left to do.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct EmbedderStats {
    pub model: String,
    pub dim: u32,
    /// Every change up to this one has been handled.
    pub applied_seq: u64,
    /// The mark a restart resumes from.
    pub persisted_seq: u64,
    /// Changes written but not handled yet.
    pub backlog_changes: u64,
    /// Texts embedded since the store was opened.
    pub embedded: u64,
    /// Texts per second over the last busy stretch.
    pub per_sec: f64,
    /// Records skipped because they could not be read or the model refused their text.
    pub skipped: u64,
    pub failure: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    /// The newest acknowledged change the worker was told of.
    written: u64,
    applied: u64,
    persisted: u64,
    /// The newest `Embedded` change written for changes up to `applied`.
    produced: u64,
    stop: bool,
    embedded: u64,
    per_sec: f64,
    skipped: u64,
    failure: Option<String>,
}

/// A record, the fingerprint of the version whose text was embedded, and its vector.
type Embedded = (Target, u64, Vec<f32>);

/// One record to embed.
#[derive(Clone, Debug)]
enum Target {
    Event { tenant: String, identity: String, session: String, seq: u64 },
    Memory { tenant: String, identity: String, id: String },
}

impl Target {
    fn key(&self) -> Vec<u8> {
        match self {
            Target::Event { tenant, identity, session, seq } => keys::event(tenant, identity, session, *seq),
            Target::Memory { tenant, identity, id } => keys::memory(tenant, identity, id),
        }
    }
}

/// The embedding worker of one open store.
pub(crate) struct Embedding {
    model: Arc<dyn Embedder>,
    state: Mutex<State>,
    work: Condvar,
    progress: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Embedding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedding").field("model", &self.model.name()).finish_non_exhaustive()
    }
}

impl Embedding {
    pub(crate) fn model(&self) -> &Arc<dyn Embedder> {
        &self.model
    }

    /// Reads the persisted mark and starts the worker thread.
    pub(crate) fn start(model: Arc<dyn Embedder>, db: &Engram) -> Result<Arc<Embedding>> {
        let mark: Option<SeqRecord> = codec::get(&*db.inner.store, Space::Meta, keys::meta::EMBEDDER_MARK)?;
        let mark = mark.map_or(0, |r| r.seq).min(db.last_change_seq());
        let me = Arc::new(Embedding {
            model,
            state: Mutex::new(State {
                written: db.inner.acknowledged_seq(),
                applied: mark,
                persisted: mark,
                // Vectors derived before a restart may sit in changes up to here.
                produced: db.inner.acknowledged_seq(),
                ..State::default()
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
            thread: Mutex::new(None),
        });
        let weak = Arc::downgrade(&db.inner);
        let worker = Arc::clone(&me);
        let spawned = std::thread::Builder::new().name("engram-embedder".into()).spawn(move || worker.run(&weak));
        match spawned {
            Ok(handle) => *me.thread.lock() = Some(handle),
            Err(e) => me.state.lock().failure = Some(format!("cannot start the embedder: {e}")),
        }
        Ok(me)
    }

    /// Told of every acknowledged write.
    pub(crate) fn notify(&self, seq: u64) {
        let mut st = self.state.lock();
        if seq > st.written {
            st.written = seq;
            self.work.notify_one();
        }
    }

    pub(crate) fn shutdown(&self) {
        self.state.lock().stop = true;
        self.work.notify_all();
        self.progress.notify_all();
        if let Some(handle) = self.thread.lock().take()
            && handle.thread().id() != std::thread::current().id()
        {
            let _ = handle.join();
        }
    }

    /// The mark below which the changelog may be truncated.
    pub(crate) fn persisted(&self) -> u64 {
        self.state.lock().persisted
    }

    pub(crate) fn stats(&self, last_change_seq: u64) -> EmbedderStats {
        let st = self.state.lock();
        EmbedderStats {
            model: self.model.name().to_string(),
            dim: self.model.dim() as u32,
            applied_seq: st.applied,
            persisted_seq: st.persisted,
            backlog_changes: last_change_seq.saturating_sub(st.applied),
            embedded: st.embedded,
            per_sec: st.per_sec,
            skipped: st.skipped,
            failure: st.failure.clone(),
        }
    }

    /// Waits (at most `max_wait`) until every change up to `seq` is handled; returns the
    /// newest `Embedded` change written for them (the indexes must reach it too).
    pub(crate) fn wait_for(&self, seq: u64, max_wait: Duration) -> Result<u64> {
        let deadline = Instant::now() + max_wait;
        let mut st = self.state.lock();
        while st.applied < seq {
            if st.stop || self.progress.wait_until(&mut st, deadline).timed_out() {
                if st.applied >= seq {
                    break;
                }
                return Err(Error::IndexLag { wanted: seq, indexed: st.applied });
            }
        }
        Ok(st.produced)
    }

    fn run(&self, db: &Weak<Inner>) {
        let mut last_persist = Instant::now();
        let mut backoff = Duration::from_millis(10);
        loop {
            {
                let mut st = self.state.lock();
                loop {
                    if st.stop {
                        drop(st);
                        if let Some(inner) = db.upgrade() {
                            self.persist(&Engram::internal(inner));
                        }
                        return;
                    }
                    if st.written > st.applied {
                        break;
                    }
                    if st.persisted < st.applied && last_persist.elapsed() >= PERSIST_EVERY {
                        break;
                    }
                    if self.work.wait_for(&mut st, Duration::from_secs(1)).timed_out()
                        && let Some(inner) = db.upgrade()
                    {
                        st.written = st.written.max(inner.acknowledged_seq());
                    }
                }
            }
            let Some(inner) = db.upgrade() else { return };
            let engram = Engram::internal(inner);
            match self.step(&engram) {
                Ok(()) => {
                    backoff = Duration::from_millis(10);
                    if last_persist.elapsed() >= PERSIST_EVERY {
                        self.persist(&engram);
                        last_persist = Instant::now();
                    }
                }
                Err(e) => {
                    self.state.lock().failure = Some(e.to_string());
                    self.progress.notify_all();
                    drop(engram);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Writes the mark (a meta record, not a change: it is the worker's own bookkeeping).
    /// Everything it covers was committed (and synced, in durable mode) before.
    fn persist(&self, db: &Engram) {
        let applied = self.state.lock().applied;
        let mut batch = Batch::new();
        codec::put(&mut batch, Space::Meta, keys::meta::EMBEDDER_MARK.to_vec(), &SeqRecord { seq: applied });
        if db.inner.store.write(batch).is_ok() {
            let mut st = self.state.lock();
            st.persisted = st.persisted.max(applied);
        }
    }

    /// Handles the next acknowledged changes.
    fn step(&self, db: &Engram) -> Result<()> {
        let (applied, written) = {
            let st = self.state.lock();
            (st.applied, st.written)
        };
        let mut changes = db.changes(applied, CHANGES_PER_STEP)?;
        changes.retain(|c| c.seq <= written);
        let gap = match changes.first() {
            Some(first) => first.seq != applied + 1,
            None => written > applied,
        };
        let started = Instant::now();
        let mut queue = Queue { worker: self, db, pending: Vec::with_capacity(EMBED_BATCH), done: 0 };
        let new_applied = if gap {
            // The changes since the mark are gone: find what needs a vector in storage.
            let (snapshot, seq) = db.inner.snapshot_with_seq();
            scan_targets(&*snapshot, None, self.model.dim(), &mut |t| queue.push(t))?;
            seq.min(written).max(applied)
        } else {
            let mut tenants = TenantCache::new(self.model.dim());
            let view: &dyn ReadView = &*db.inner.store;
            // Records restored from a dump (their changes name no tenant): one scan of
            // every local tenant covers them all.
            if changes.iter().any(|c| c.op == ChangeOp::Imported) {
                scan_targets(view, None, self.model.dim(), &mut |t| queue.push(t))?;
            }
            for change in &changes {
                if change.op == ChangeOp::Redacted || !tenants.local(view, &change.tenant)? {
                    continue;
                }
                match change.op {
                    ChangeOp::EventsAppended => {
                        for seq in &change.seqs {
                            queue.push(Target::Event {
                                tenant: change.tenant.clone(),
                                identity: change.identity.clone(),
                                session: change.session.clone(),
                                seq: *seq,
                            })?;
                        }
                    }
                    ChangeOp::MemoryPut => queue.push(Target::Memory {
                        tenant: change.tenant.clone(),
                        identity: change.identity.clone(),
                        id: change.key.clone(),
                    })?,
                    // A tenant switched to the local embedder: everything it holds that lacks
                    // a vector.
                    ChangeOp::TenantUpdated if change.key == EMBEDDER_CHANGE_KEY => {
                        scan_targets(view, Some(&change.tenant), self.model.dim(), &mut |t| queue.push(t))?;
                    }
                    _ => {}
                }
            }
            changes.last().map_or(applied, |c| c.seq)
        };
        queue.flush()?;
        let embedded = queue.done;
        let mut st = self.state.lock();
        st.applied = new_applied;
        st.failure = None;
        if embedded > 0 {
            st.embedded += embedded as u64;
            st.per_sec = embedded as f64 / started.elapsed().as_secs_f64().max(1e-6);
        }
        self.progress.notify_all();
        Ok(())
    }

    /// Vectors for the texts, checked: one per text, of the model's dimension, finite. A
    /// batch the model refuses is retried text by text; a text it refuses alone is skipped
    /// (and counted), so that one bad input cannot stall the worker.
    fn vectors(&self, texts: &[&str]) -> Vec<Option<Vec<f32>>> {
        let dim = self.model.dim();
        let good = |v: &Vec<f32>| v.len() == dim && v.iter().all(|x| x.is_finite());
        if let Ok(vs) = self.model.embed(texts)
            && vs.len() == texts.len()
            && vs.iter().all(good)
        {
            return vs.into_iter().map(Some).collect();
        }
        texts
            .iter()
            .map(|t| match self.model.embed(&[t]) {
                Ok(mut vs) if vs.len() == 1 && good(&vs[0]) => vs.pop(),
                _ => {
                    self.state.lock().skipped += 1;
                    None
                }
            })
            .collect()
    }

    fn embed_batch(&self, db: &Engram, batch: Vec<(Target, u64, String)>) -> Result<usize> {
        let texts: Vec<&str> = batch.iter().map(|(_, _, t)| t.as_str()).collect();
        let vectors = self.vectors(&texts);
        // One commit per session (events) or memory: a change names one place.
        let mut groups: Vec<(Vec<Embedded>, String)> = Vec::new();
        for ((target, fingerprint, _), vector) in batch.into_iter().zip(vectors) {
            let Some(vector) = vector else { continue };
            let place = match &target {
                Target::Event { tenant, identity, session, .. } => {
                    format!("e\u{0}{tenant}\u{0}{identity}\u{0}{session}")
                }
                Target::Memory { tenant, identity, id } => format!("m\u{0}{tenant}\u{0}{identity}\u{0}{id}"),
            };
            match groups.iter_mut().find(|(_, p)| *p == place) {
                Some((items, _)) => items.push((target, fingerprint, vector)),
                None => groups.push((vec![(target, fingerprint, vector)], place)),
            }
        }
        let mut written = 0;
        for (items, _) in groups {
            let (n, seq) = db.inner.commit(|tx| write_vectors(tx, &items))?;
            written += n;
            if seq > 0 {
                let mut st = self.state.lock();
                st.produced = st.produced.max(seq);
            }
        }
        Ok(written)
    }
}

/// Texts waiting for the model: at most one batch is held; a full batch is embedded and
/// written at once, so memory stays bounded however much there is to do.
struct Queue<'a> {
    worker: &'a Embedding,
    db: &'a Engram,
    pending: Vec<(Target, u64, String)>,
    done: usize,
}

impl Queue<'_> {
    fn push(&mut self, target: Target) -> Result<()> {
        if self.worker.state.lock().stop {
            // A long scan gives way to shutdown; the mark has not moved, so it resumes.
            return Err(Error::Index("the embedder is stopping".into()));
        }
        match text_to_embed(&*self.db.inner.store, &target) {
            Ok(Some((fingerprint, text))) => {
                self.pending.push((target, fingerprint, text));
                if self.pending.len() >= EMBED_BATCH {
                    self.flush()?;
                }
            }
            Ok(None) => {}
            // A record that cannot be read is `verify`'s business: skip it, count it.
            Err(_) => self.worker.state.lock().skipped += 1,
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            self.done += self.worker.embed_batch(self.db, std::mem::take(&mut self.pending))?;
        }
        Ok(())
    }
}

/// Which version of a record a vector was derived from: the changelog sequence of the
/// write that made it (a hash of its text in stores older than that field).
fn event_fingerprint(r: &EventRecord) -> u64 {
    match r.change_seq {
        0 => {
            fnv1a(r.text.as_deref().unwrap_or_default().as_bytes())
                ^ fnv1a(r.blob_sha256.as_deref().unwrap_or_default())
        }
        seq => seq,
    }
}

fn memory_fingerprint(r: &MemoryRecord) -> u64 {
    match r.change_seq {
        0 => fnv1a(r.text.as_bytes()),
        seq => seq,
    }
}

/// FNV-1a: a fixed, dependency-free hash.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The fingerprint and text of a target that still needs a vector (`None`: it has one, or
/// no text, or is gone).
fn text_to_embed(view: &dyn ReadView, target: &Target) -> Result<Option<(u64, String)>> {
    let key = target.key();
    match target {
        Target::Event { tenant, session, .. } => {
            let Some(record) = codec::get::<EventRecord>(view, Space::Data, &key)? else { return Ok(None) };
            if !record.embedding.is_empty() || (record.text.is_none() && record.blob_sha256.is_none()) {
                return Ok(None);
            }
            let fingerprint = event_fingerprint(&record);
            let event = crate::events::to_event(view, tenant, session, &key, record)?;
            Ok(event.text.filter(|t| !t.trim().is_empty()).map(|t| (fingerprint, t)))
        }
        Target::Memory { .. } => {
            let Some(record) = codec::get::<MemoryRecord>(view, Space::Data, &key)? else { return Ok(None) };
            let wanted = record.embedding.is_empty() && !record.deleted && !record.text.trim().is_empty();
            Ok(wanted.then(|| (memory_fingerprint(&record), record.text)))
        }
    }
}

/// Writes each vector into its record if the record still lacks one; records one
/// `Embedded` change for them.
fn write_vectors(tx: &mut crate::db::Tx<'_>, items: &[Embedded]) -> Result<usize> {
    let mut seqs = Vec::new();
    let mut memory = None;
    let Some((first, _, vector)) = items.first() else { return Ok(0) };
    let tenant_name = match first {
        Target::Event { tenant, .. } | Target::Memory { tenant, .. } => tenant,
    };
    // The tenant may have switched away from the local embedder, or been recreated.
    let tenant: Option<TenantRecord> = codec::get(tx.view(), Space::Meta, &keys::meta::tenant(tenant_name))?;
    if !tenant.is_some_and(|t| embeddable(&t, vector.len())) {
        return Ok(0);
    }
    for (target, fingerprint, vector) in items {
        let key = target.key();
        match target {
            Target::Event { seq, .. } => {
                let Some(mut record) = codec::get::<EventRecord>(tx.view(), Space::Data, &key)? else { continue };
                // Not a vector over a caller's, nor one derived from text a newer record replaced.
                if !record.embedding.is_empty() || event_fingerprint(&record) != *fingerprint {
                    continue;
                }
                record.embedding = float_bytes(vector);
                record.embedding_derived = true;
                codec::put(&mut tx.batch, Space::Data, key, &record);
                seqs.push(*seq);
            }
            Target::Memory { id, .. } => {
                let Some(mut record) = codec::get::<MemoryRecord>(tx.view(), Space::Data, &key)? else { continue };
                if !record.embedding.is_empty() || record.deleted || memory_fingerprint(&record) != *fingerprint {
                    continue;
                }
                record.embedding = float_bytes(vector);
                record.embedding_derived = true;
                codec::put(&mut tx.batch, Space::Data, key, &record);
                memory = Some(id.clone());
            }
        }
    }
    let written = seqs.len() + usize::from(memory.is_some());
    if written == 0 {
        return Ok(0);
    }
    let (tenant, identity, session) = match first {
        Target::Event { tenant, identity, session, .. } => (tenant.clone(), identity.clone(), session.clone()),
        Target::Memory { tenant, identity, .. } => (tenant.clone(), identity.clone(), String::new()),
    };
    let change = tx.record_change(ChangeOp::Embedded, &tenant, &identity, &session);
    change.seqs = seqs;
    change.key = memory.unwrap_or_default();
    Ok(written)
}

/// Every current event and memory (of one tenant, or of every tenant) with text, no vector,
/// and a tenant that uses the local embedder.
fn scan_targets(
    view: &dyn ReadView,
    only: Option<&str>,
    dim: usize,
    f: &mut dyn FnMut(Target) -> Result<()>,
) -> Result<()> {
    let tenants: Vec<TenantRecord> =
        codec::scan_prefix::<TenantRecord>(view, Space::Meta, &keys::meta::tenants_prefix(), Direction::Forward)
            .map(|e| e.map(|(_, t)| t))
            .collect::<Result<_>>()?;
    for tenant in tenants {
        if only.is_some_and(|name| name != tenant.name) || !embeddable(&tenant, dim) {
            continue;
        }
        let t = &tenant.name;
        for entry in
            codec::scan_prefix::<IdentityRecord>(view, Space::Data, &keys::identity_dir_prefix(t), Direction::Forward)
        {
            let (_, identity) = entry?;
            let i = &identity.id;
            for entry in codec::scan_prefix::<SessionRecord>(
                view,
                Space::Data,
                &keys::session_dir_prefix(t, i),
                Direction::Forward,
            ) {
                let (_, session) = entry?;
                let prefix = keys::events_prefix(t, i, &session.id);
                for entry in codec::scan_prefix::<EventRecord>(view, Space::Data, &prefix, Direction::Forward) {
                    let (_, event) = entry?;
                    if event.embedding.is_empty() && (event.text.is_some() || event.blob_sha256.is_some()) {
                        f(Target::Event {
                            tenant: t.clone(),
                            identity: i.clone(),
                            session: session.id.clone(),
                            seq: event.seq,
                        })?;
                    }
                }
            }
            let prefix = keys::memories_prefix(t, i);
            for entry in codec::scan_prefix::<MemoryRecord>(view, Space::Data, &prefix, Direction::Forward) {
                let (_, memory) = entry?;
                if memory.embedding.is_empty() && !memory.deleted {
                    f(Target::Memory { tenant: t.clone(), identity: i.clone(), id: memory.id })?;
                }
            }
        }
    }
    Ok(())
}

/// True for a tenant whose vectors the model derives: `embedder: local` and the model's
/// dimension (a store reopened with a model of another dimension leaves the tenant alone).
pub(crate) fn embeddable(tenant: &TenantRecord, model_dim: usize) -> bool {
    tenant.embedder == EmbedderKind::Local as i32 && tenant.vector_dim as usize == model_dim
}

/// Which tenants the model embeds for, read once per step.
struct TenantCache {
    dim: usize,
    known: HashMap<String, bool>,
}

impl TenantCache {
    fn new(dim: usize) -> Self {
        TenantCache { dim, known: HashMap::new() }
    }

    fn local(&mut self, view: &dyn ReadView, tenant: &str) -> Result<bool> {
        if let Some(&local) = self.known.get(tenant) {
            return Ok(local);
        }
        let record: Option<TenantRecord> = codec::get(view, Space::Meta, &keys::meta::tenant(tenant))?;
        let local = record.is_some_and(|r| embeddable(&r, self.dim));
        self.known.insert(tenant.to_string(), local);
        Ok(local)
    }
}
