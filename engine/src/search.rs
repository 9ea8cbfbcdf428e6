//! Search: full-text, vector or hybrid, over events and memories of one tenant.
//!
//! Each retriever returns candidates from its index; the rankings are fused (reciprocal
//! rank or weighted normalized scores); every candidate is then read back from a storage
//! snapshot, so a hit always carries the current record and nothing deleted, expired or
//! superseded is returned even if an index has not caught up with its removal yet.

use crate::codec;
use crate::db::Engram;
use crate::directory::load_session;
use crate::error::{Error, Result};
use crate::events::{lineage, to_event};
use crate::index::{DocKey, Indexes, Scope, meta_term};
use crate::memories::to_memory;
use crate::retention::Effective;
use crate::tenants::{load_tenant, tenant_metric};
use engram_core::keys;
use engram_core::limits;
use engram_core::model::{Fusion, HitItem, ScoreBreakdown, SearchHit, SearchQuery, SearchResults};
use engram_core::records::{EventRecord, MemoryRecord, SessionRecord};
use engram_core::validate;
use engram_storage::{ReadView, Space};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Longest search text, in bytes.
pub const MAX_SEARCH_TEXT_BYTES: usize = 64 * 1024;
/// Largest `hnsw_ef` a search may ask for.
pub const MAX_HNSW_EF: usize = 10_000;
/// Most sessions one search may name.
pub const MAX_SEARCH_SESSIONS: usize = 64;
/// Each retriever returns this many candidates per wanted hit (at least 20), so that hits
/// dropped on read-back (deleted, expired) and fusion still leave `k`.
const OVERFETCH: usize = 3;

impl Engram {
    /// Searches one tenant's events and memories by text (BM25), by vector, or both
    /// (hybrid, fused as `query.fusion` says). Hits come best first, each with its score
    /// breakdown and the record it points at.
    ///
    /// Indexes are derived and catch up in the background (a write is usually searchable
    /// within `IndexOptions::text_commit_interval_ms`); give `min_seq` (an append's
    /// `change_seq`) or `consistent: true` to read your writes.
    ///
    /// # Errors
    /// `InvalidArgument` naming the field (no text and no vector, a vector of the wrong
    /// dimension, NaN, `k` out of range, sessions without an identity...), `NotFound` for the
    /// tenant, identity scope sessions, `IndexLag` when a read-your-writes wait ran out,
    /// `Index` when indexing is disabled or failing.
    pub fn search(&self, tenant: &str, query: &SearchQuery) -> Result<SearchResults> {
        check_query(query)?;
        let indexes = self.indexes()?;
        let snapshot = self.inner.store.snapshot();
        let view: &dyn ReadView = &*snapshot;
        let tenant_record = load_tenant(view, tenant)?;
        if let Some(v) = &query.vector {
            let dim = (tenant_record.vector_dim > 0).then_some(tenant_record.vector_dim);
            validate::vector("vector", v, dim, tenant_metric(&tenant_record))?;
        }
        // A tenant with the local embedder: a text-only query is embedded too (hybrid), and
        // reading your writes includes the vectors derived from them.
        let embedding =
            self.inner.embedding.get().filter(|e| crate::embed::embeddable(&tenant_record, e.model().dim()));
        let derived_query;
        let query = match (embedding, &query.text, &query.vector) {
            (Some(e), Some(text), None) => match e.model().embed(&[text.as_str()]) {
                Ok(mut v) if v.len() == 1 && v[0].iter().all(|x| x.is_finite()) => {
                    derived_query = SearchQuery { vector: v.pop(), ..query.clone() };
                    &derived_query
                }
                // The model failed on this query: a text-only search still answers.
                _ => query,
            },
            _ => query,
        };
        let newest = self.inner.acknowledged_seq();
        let wanted = match (query.min_seq, query.consistent) {
            (Some(seq), _) if seq > self.last_change_seq() => {
                return Err(Error::invalid(
                    "min_seq",
                    format!("is {seq}, past the newest change {}", self.last_change_seq()),
                ));
            }
            // `consistent` asks for every write: a `min_seq` below the newest asks for less.
            (Some(seq), true) => seq.max(newest),
            (Some(seq), false) => seq,
            (None, true) => newest,
            (None, false) => 0,
        };
        let wanted = match embedding {
            Some(e) if wanted > 0 => {
                let max_wait = Duration::from_millis(self.inner.options.index.max_wait_ms);
                wanted.max(e.wait_for(wanted, max_wait)?)
            }
            _ => wanted,
        };
        let indexed_seq = if wanted > 0 { indexes.wait_for(wanted)? } else { indexes.visible() };
        let scope = resolve_scope(view, tenant, query)?;
        let fetch = (query.k * OVERFETCH).max(20);
        let text_hits = match &query.text {
            Some(text) => indexes.text_searcher().search(text, &scope, fetch)?,
            None => Vec::new(),
        };
        let vector_hits = match &query.vector {
            Some(v) if tenant_record.vector_dim > 0 => indexes.vectors().search(v, &scope, fetch, query.hnsw_ef)?.0,
            _ => Vec::new(),
        };
        let hybrid = query.text.is_some() && query.vector.is_some();
        let mut fused = fuse(text_hits, vector_hits, query.fusion, hybrid);
        // Best first; ties in a fixed order so the same state gives the same answer.
        fused.sort_by(|(ka, a), (kb, b)| b.fused.total_cmp(&a.fused).then_with(|| ka.cmp(kb)));
        let now_ms = self.inner.now_ms();
        let mut reader = ReadBack {
            view,
            tenant,
            tenant_record: &tenant_record,
            sessions: HashMap::new(),
            loaded: HashMap::new(),
            now_ms,
        };
        let mut hits = Vec::with_capacity(fused.len());
        let mut loaded_upto = 0;
        for (i, (key, scores)) in fused.iter().enumerate() {
            // Without recency the fused order is final: read back only until `k` are found.
            if query.recency_half_life_ms.is_none() && hits.len() == query.k {
                break;
            }
            if i == loaded_upto {
                // The hits still wanted (all, with recency), in two batched lookups.
                let wanted = match query.recency_half_life_ms {
                    Some(_) => fused.len() - i,
                    None => query.k - hits.len(),
                };
                loaded_upto = (i + wanted).min(fused.len());
                reader.load(fused[i..loaded_upto].iter().map(|(key, _)| key))?;
            }
            let mut scores = scores.clone();
            let Some((item, ts_ms)) = reader.read(key)? else { continue };
            if let Some(half_life) = query.recency_half_life_ms {
                let age = (now_ms - ts_ms).max(0) as f64;
                scores.recency = Some(0.5f64.powf(age / half_life as f64) as f32);
            }
            let score = scores.fused * scores.recency.unwrap_or(1.0);
            hits.push((key.clone(), SearchHit { score, scores, item }));
        }
        hits.sort_by(|(ka, a), (kb, b)| b.score.total_cmp(&a.score).then_with(|| ka.cmp(kb)));
        hits.truncate(query.k);
        Ok(SearchResults { hits: hits.into_iter().map(|(_, h)| h).collect(), indexed_seq })
    }

    pub(crate) fn indexes(&self) -> Result<&Arc<Indexes>> {
        self.inner.indexes.get().ok_or_else(|| Error::Index("indexing is disabled (IndexOptions::enabled)".into()))
    }

    /// The local embedder's progress: its mark, backlog and rate (`None` without a model).
    pub fn embedder_stats(&self) -> Option<crate::EmbedderStats> {
        self.inner.embedding.get().map(|e| e.stats(self.last_change_seq()))
    }

    /// The indexes' marks and sizes.
    pub fn index_stats(&self) -> Result<crate::IndexStats> {
        Ok(self.indexes()?.stats())
    }

    /// Rebuilds the full-text and vector indexes from storage (`engram reindex`). Searches
    /// use the old indexes until the new ones are complete; returns once they are.
    pub fn reindex(&self) -> Result<crate::IndexStats> {
        self.indexes()?.reindex()
    }

    /// Waits until no HNSW graph build is running (tests and benchmarks use it to measure
    /// the graph rather than the exact scan it stands in for while building).
    pub fn wait_for_vector_graphs(&self) -> Result<()> {
        self.indexes()?.wait_for_graphs();
        Ok(())
    }

    /// Waits until every write acknowledged so far is searchable (bounded by
    /// `IndexOptions::max_wait_ms`); returns the searchable mark.
    pub fn wait_for_indexes(&self) -> Result<u64> {
        let mut wanted = self.inner.acknowledged_seq();
        // With a local embedder, "searchable" includes the vectors it derives from them.
        if let Some(e) = self.inner.embedding.get() {
            wanted = wanted.max(e.wait_for(wanted, Duration::from_millis(self.inner.options.index.max_wait_ms))?);
        }
        self.indexes()?.wait_for(wanted)
    }
}

fn check_query(q: &SearchQuery) -> Result<()> {
    if q.text.is_none() && q.vector.is_none() {
        return Err(Error::invalid("text", "a search needs text, a vector, or both"));
    }
    if let Some(text) = &q.text {
        validate::len("text", text.len(), MAX_SEARCH_TEXT_BYTES)?;
    }
    if q.k == 0 || q.k > limits::MAX_PAGE_LIMIT {
        return Err(Error::invalid("k", format!("is {}; it must be between 1 and {}", q.k, limits::MAX_PAGE_LIMIT)));
    }
    if let Some(identity) = &q.identity {
        validate::id("identity", identity)?;
    }
    if !q.sessions.is_empty() && q.identity.is_none() {
        return Err(Error::invalid("sessions", "need an identity"));
    }
    if q.sessions.len() > MAX_SEARCH_SESSIONS {
        return Err(Error::invalid(
            "sessions",
            format!("names {} sessions; the limit is {MAX_SEARCH_SESSIONS}", q.sessions.len()),
        ));
    }
    for (i, s) in q.sessions.iter().enumerate() {
        validate::id(&format!("sessions[{i}]"), s)?;
    }
    if q.metadata.len() > limits::MAX_FILTERS {
        return Err(Error::invalid(
            "metadata",
            format!("has {} filters; the limit is {}", q.metadata.len(), limits::MAX_FILTERS),
        ));
    }
    if let (Some(from), Some(to)) = (q.from_ms, q.to_ms)
        && from >= to
    {
        return Err(Error::invalid("to_ms", "must be after from_ms"));
    }
    if q.hnsw_ef.is_some_and(|ef| ef == 0 || ef > MAX_HNSW_EF) {
        return Err(Error::invalid("hnsw_ef", format!("must be between 1 and {MAX_HNSW_EF}")));
    }
    if q.recency_half_life_ms == Some(0) {
        return Err(Error::invalid("recency_half_life_ms", "must be positive"));
    }
    match q.fusion {
        Fusion::Rrf { k } if !(k.is_finite() && k >= 0.0) => {
            Err(Error::invalid("fusion.k", "must be a finite number of at least 0"))
        }
        Fusion::Weighted { alpha } if !(0.0..=1.0).contains(&alpha) => {
            Err(Error::invalid("fusion.alpha", "must be between 0 and 1"))
        }
        _ => Ok(()),
    }
}

fn resolve_scope(view: &dyn ReadView, tenant: &str, q: &SearchQuery) -> Result<Scope> {
    let mut segments: BTreeMap<String, u64> = BTreeMap::new();
    if let Some(identity) = &q.identity {
        for session in &q.sessions {
            let record = load_session(view, tenant, identity, session)?;
            let head = record.head_seq;
            for seg in lineage(view, tenant, identity, record, head)? {
                let hi = segments.entry(seg.record.id.clone()).or_insert(0);
                *hi = (*hi).max(seg.hi);
            }
        }
    }
    Ok(Scope {
        tenant: tenant.to_string(),
        identity: q.identity.clone(),
        segments: segments.into_iter().collect(),
        over: q.over,
        kinds: q.kinds.iter().map(|k| *k as i32).collect(),
        roles: q.roles.iter().map(|r| *r as i32).collect(),
        memory_kinds: q.memory_kinds.iter().map(|k| *k as i32).collect(),
        from_ms: q.from_ms,
        to_ms: q.to_ms,
        meta_terms: q.metadata.iter().map(|(k, v)| meta_term(k, v)).collect(),
        as_of: q.as_of,
    })
}

/// Combines the rankings. With one ranking its own score is the fused score.
fn fuse(
    text: Vec<(DocKey, f32)>,
    vector: Vec<(DocKey, f32)>,
    fusion: Fusion,
    hybrid: bool,
) -> Vec<(DocKey, ScoreBreakdown)> {
    let range = |list: &[(DocKey, f32)]| {
        let lo = list.iter().map(|(_, s)| *s).fold(f32::INFINITY, f32::min);
        let hi = list.iter().map(|(_, s)| *s).fold(f32::NEG_INFINITY, f32::max);
        (lo, hi)
    };
    let (text_lo, text_hi) = range(&text);
    let (vec_lo, vec_hi) = range(&vector);
    let mut by_key: BTreeMap<DocKey, ScoreBreakdown> = BTreeMap::new();
    let blank =
        || ScoreBreakdown { text: None, vector: None, text_rank: None, vector_rank: None, fused: 0.0, recency: None };
    for (rank, (key, score)) in text.into_iter().enumerate() {
        let entry = by_key.entry(key).or_insert_with(blank);
        entry.text = Some(score);
        entry.text_rank = Some(rank as u32 + 1);
    }
    for (rank, (key, score)) in vector.into_iter().enumerate() {
        let entry = by_key.entry(key).or_insert_with(blank);
        entry.vector = Some(score);
        entry.vector_rank = Some(rank as u32 + 1);
    }
    let normalize = |s: f32, lo: f32, hi: f32| if hi > lo { (s - lo) / (hi - lo) } else { 1.0 };
    for b in by_key.values_mut() {
        b.fused = if !hybrid {
            b.text.or(b.vector).unwrap_or(0.0)
        } else {
            match fusion {
                Fusion::Rrf { k } => {
                    let rrf = |rank: Option<u32>| rank.map_or(0.0, |r| 1.0 / (k + r as f32));
                    rrf(b.text_rank) + rrf(b.vector_rank)
                }
                Fusion::Weighted { alpha } => {
                    let t = b.text.map_or(0.0, |s| normalize(s, text_lo, text_hi));
                    let v = b.vector.map_or(0.0, |s| normalize(s, vec_lo, vec_hi));
                    alpha * v + (1.0 - alpha) * t
                }
            }
        };
    }
    by_key.into_iter().collect()
}

/// An identity and one of its sessions, as an index names them.
type SessionName = (Arc<str>, Arc<str>);

/// Reads hits back from the storage snapshot, dropping what no longer exists or is
/// expired.
struct ReadBack<'a> {
    view: &'a dyn ReadView,
    tenant: &'a str,
    tenant_record: &'a engram_core::records::TenantRecord,
    sessions: HashMap<SessionName, Option<Effective>>,
    /// Records read ahead by [`ReadBack::load`], by key, until `read` takes them.
    loaded: HashMap<Vec<u8>, Option<Vec<u8>>>,
    now_ms: i64,
}

impl ReadBack<'_> {
    /// Reads ahead what `read` will need for `hits`: their sessions' records not known yet,
    /// then their own records, each set in one batched lookup (RocksDB's `MultiGet`, about
    /// a third of a tenant-wide vector search's time as one read per record).
    fn load<'k>(&mut self, hits: impl Iterator<Item = &'k DocKey>) -> Result<()> {
        let mut sessions: Vec<(SessionName, Vec<u8>)> = Vec::new();
        let mut records: Vec<Vec<u8>> = Vec::new();
        for key in hits {
            match key {
                DocKey::Event { identity, session, seq } => {
                    let name = (Arc::clone(identity), Arc::clone(session));
                    if !self.sessions.contains_key(&name) && !sessions.iter().any(|(n, _)| *n == name) {
                        sessions.push((name, keys::session_dir(self.tenant, identity, session)));
                    }
                    records.push(keys::event(self.tenant, identity, session, *seq));
                }
                DocKey::Memory { identity, id } => records.push(keys::memory(self.tenant, identity, id)),
            }
        }
        // A failed batch is left unread: `read` then reads key by key, and an error names
        // its key.
        let dirs: Vec<&[u8]> = sessions.iter().map(|(_, dir)| dir.as_slice()).collect();
        if dirs.is_empty() {
            // Every session is known already.
        } else if let Ok(values) = self.view.get_many(Space::Data, &dirs) {
            for ((name, dir), value) in sessions.iter().zip(values) {
                let record: Option<SessionRecord> = value.map(|bytes| codec::decode(dir, &bytes)).transpose()?;
                self.sessions.insert(name.clone(), record.map(|r| Effective::new(self.tenant_record, &r)));
            }
        }
        let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        if let Ok(values) = self.view.get_many(Space::Data, &refs) {
            self.loaded.extend(records.into_iter().zip(values));
        }
        Ok(())
    }

    /// The record at `key`: from what `load` read, else from the view.
    fn record<M: prost::Message + Default>(&mut self, key: &[u8]) -> Result<Option<M>> {
        match self.loaded.remove(key) {
            Some(value) => value.map(|bytes| codec::decode(key, &bytes)).transpose(),
            None => codec::get(self.view, Space::Data, key),
        }
    }

    fn read(&mut self, key: &DocKey) -> Result<Option<(HitItem, i64)>> {
        match key {
            DocKey::Event { identity, session, seq } => {
                let name = (Arc::clone(identity), Arc::clone(session));
                let effective = match self.sessions.get(&name) {
                    Some(e) => e.clone(),
                    None => {
                        let dir = keys::session_dir(self.tenant, identity, session);
                        let record: Option<SessionRecord> = codec::get(self.view, Space::Data, &dir)?;
                        let e = record.map(|r| Effective::new(self.tenant_record, &r));
                        self.sessions.insert(name, e.clone());
                        e
                    }
                };
                let Some(effective) = effective else { return Ok(None) };
                let event_key = keys::event(self.tenant, identity, session, *seq);
                let Some(record) = self.record::<EventRecord>(&event_key)? else {
                    return Ok(None);
                };
                if effective.is_expired(&record, self.now_ms) {
                    return Ok(None);
                }
                let event = to_event(self.view, self.tenant, session, &event_key, record)?;
                let ts = event.timestamp_ms;
                Ok(Some((HitItem::Event { identity: identity.to_string(), event }, ts)))
            }
            DocKey::Memory { identity, id } => {
                let memory_key = keys::memory(self.tenant, identity, id);
                let Some(record) = self.record::<MemoryRecord>(&memory_key)? else {
                    return Ok(None);
                };
                let memory = to_memory(&memory_key, record)?;
                let ts = memory.recorded_at_ms;
                Ok(Some((HitItem::Memory { identity: identity.to_string(), memory }, ts)))
            }
        }
    }
}
