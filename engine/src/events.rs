//! Appending events and reading history.

use crate::blobs::{self, BlobLedger};
use crate::codec;
use crate::db::{Engram, Tx};
use crate::directory::{ensure_session, load_session, put_session};
use crate::error::{Error, Result};
use crate::retention::{Effective, trim_keep_last};
use crate::tail::{self, Lookup, Tail, Wait};
use crate::tenants::{load_tenant, tenant_metric};
use engram_core::json;
use engram_core::keys;
use engram_core::limits;
use engram_core::model::{
    AppendOptions, AppendResult, BlobRef, ChangeOp, Event, EventKind, HistoryPage, HistoryQuery, NewEvent, Order, Role,
};
use engram_core::records::{BlobRecord, EventRecord, IdempotencyRecord, SessionRecord, TenantRecord, float_bytes};
use engram_core::validate;
use engram_storage::{Direction, ReadView, Space};
use sha2::{Digest, Sha256};

/// An event checked and encoded, waiting for its sequence number.
struct Prepared {
    record: EventRecord,
    /// The embedding as given (the record holds its bytes), checked in the transaction
    /// against the tenant's dimension.
    vector: Vec<f32>,
    /// Text moved to a blob: its hash and bytes.
    blob: Option<([u8; 32], String)>,
}

fn prepare(events: Vec<NewEvent>) -> Result<Vec<Prepared>> {
    if events.is_empty() {
        return Err(Error::invalid("events", "must hold at least one event"));
    }
    if events.len() > limits::MAX_BATCH_EVENTS {
        return Err(Error::invalid(
            "events",
            format!("holds {} events; the limit is {}", events.len(), limits::MAX_BATCH_EVENTS),
        ));
    }
    let mut total_bytes = 0usize;
    let mut out = Vec::with_capacity(events.len());
    for (i, e) in events.into_iter().enumerate() {
        let field = |name: &str| format!("events[{i}].{name}");
        let kind = e.kind.ok_or_else(|| Error::invalid(field("kind"), "is required"))?;
        if kind == EventKind::Message && e.role.is_none() {
            return Err(Error::invalid(field("role"), "is required for a message"));
        }
        if e.text.is_none() && e.data.is_none() {
            return Err(Error::invalid(field("text"), "an event needs text or data"));
        }
        if let Some(text) = &e.text {
            validate::len(&field("text"), text.len(), limits::MAX_TEXT_BYTES)?;
            total_bytes += text.len();
        }
        let data_json = match &e.data {
            Some(v) => Some(validate::json(&field("data"), v, limits::MAX_JSON_BYTES)?),
            None => None,
        };
        let metadata_json = match &e.metadata {
            Some(m) => validate::metadata(&field("metadata"), m)?,
            None => String::new(),
        };
        for (name, value) in [("name", &e.name), ("call_id", &e.call_id)] {
            if let Some(v) = value {
                if v.is_empty() {
                    return Err(Error::invalid(field(name), "must not be empty"));
                }
                validate::len(&field(name), v.len(), limits::MAX_NAME_BYTES)?;
            }
        }
        if e.timestamp_ms.is_some_and(|ts| ts < 0) {
            return Err(Error::invalid(field("timestamp_ms"), "must not be negative"));
        }
        let embedding = e.embedding.unwrap_or_default();
        total_bytes += data_json.as_ref().map_or(0, String::len) + metadata_json.len() + embedding.len() * 4;
        let (text, blob) = match e.text {
            Some(text) if text.len() > limits::BLOB_INLINE_MAX_BYTES => {
                (None, Some((blobs::sha256(text.as_bytes()), text)))
            }
            other => (other, None),
        };
        let record = EventRecord {
            seq: 0,
            kind: kind as i32,
            role: e.role.map_or(0, |r| r as i32),
            text,
            data_json,
            embedding: float_bytes(&embedding),
            metadata_json,
            token_count: e.token_count,
            timestamp_ms: e.timestamp_ms.unwrap_or(-1),
            created_at_ms: 0,
            blob_sha256: blob.as_ref().map(|(sha, _)| sha.to_vec()),
            blob_len: blob.as_ref().map_or(0, |(_, t)| t.len() as u64),
            name: e.name,
            call_id: e.call_id,
            change_seq: 0,
            embedding_derived: false,
        };
        out.push(Prepared { record, vector: embedding, blob });
    }
    if total_bytes > limits::MAX_BATCH_BYTES {
        return Err(Error::invalid(
            "events",
            format!("total {total_bytes} bytes; the limit is {}", limits::MAX_BATCH_BYTES),
        ));
    }
    Ok(out)
}

fn request_hash(events: &[NewEvent], options: &AppendOptions) -> Result<Vec<u8>> {
    let bytes = serde_json::to_vec(&(events, options.expected_head))
        .map_err(|e| Error::invalid("events", format!("cannot be serialized: {e}")))?;
    Ok(Sha256::digest(&bytes).to_vec())
}

/// Checks vectors against the tenant's dimension, fixing it on the first vector.
fn check_vectors(tenant: &mut TenantRecord, prepared: &[Prepared]) -> Result<bool> {
    let metric = tenant_metric(tenant);
    let mut fixed_now = false;
    for (i, p) in prepared.iter().enumerate() {
        if p.vector.is_empty() {
            continue;
        }
        let dim = (tenant.vector_dim > 0).then_some(tenant.vector_dim);
        validate::vector(&format!("events[{i}].embedding"), &p.vector, dim, metric)?;
        if dim.is_none() {
            tenant.vector_dim = p.vector.len() as u32;
            fixed_now = true;
        }
    }
    Ok(fixed_now)
}

/// How many bytes of stored records (keys and values) [`Engram::history_cached`] reads
/// before it gives up: about 700 turns of 300 bytes, a fraction of a millisecond.
pub const CACHED_READ_BUDGET_BYTES: usize = 256 * 1024;

impl Engram {
    /// Appends events to a session atomically, creating the identity and session if they
    /// do not exist. Sequence numbers start at 1 and are contiguous per session.
    ///
    /// With `expected_head`, the append happens only if the session's head is that value.
    /// With an `idempotency_key`, a retry of the same request returns the first call's
    /// sequence numbers (`deduplicated: true`) and writes nothing. In durable mode it returns
    /// once the write is synced.
    ///
    /// # Errors
    /// `InvalidArgument` naming the field for bad input (nothing written), `HeadMismatch`,
    /// `Conflict` when the idempotency key was used for a different request, `NotFound` for
    /// the tenant, `Poisoned` after an earlier storage failure.
    pub fn append(
        &self,
        tenant: &str,
        identity: &str,
        session: &str,
        events: Vec<NewEvent>,
        options: AppendOptions,
    ) -> Result<AppendResult> {
        validate::id("identity", identity)?;
        validate::id("session", session)?;
        if let Some(key) = &options.idempotency_key {
            validate::id("idempotency_key", key)?;
        }
        let request_sha256 = match &options.idempotency_key {
            Some(_) => request_hash(&events, &options)?,
            None => Vec::new(),
        };
        let prepared = prepare(events)?;
        let (mut result, seq) =
            self.inner.commit(|tx| append_tx(tx, tenant, identity, session, prepared, &options, request_sha256))?;
        if !result.deduplicated {
            result.change_seq = seq;
        }
        Ok(result)
    }

    /// Reads a session's history: a page of events in `query.order`, after/before a
    /// sequence, as of an earlier head, filtered by kind and role. A fork's history starts
    /// with the events it inherits. Events past their retention are not returned. Reads a
    /// consistent snapshot.
    pub fn history(&self, tenant: &str, identity: &str, session: &str, query: &HistoryQuery) -> Result<HistoryPage> {
        self.history_as::<AsPage>(tenant, identity, session, query)
    }

    /// [`Engram::history`] as JSON, the bytes `serde_json` writes for the page. From the
    /// tail cache, each event's JSON is written once and kept.
    pub fn history_json(&self, tenant: &str, identity: &str, session: &str, query: &HistoryQuery) -> Result<Vec<u8>> {
        self.history_as::<AsJson>(tenant, identity, session, query)
    }

    /// [`Engram::history`] from memory only: `None` when the answer needs reading a file,
    /// or reading more than [`CACHED_READ_BUDGET_BYTES`] of stored records (then call
    /// `history`). It never waits on I/O and its work is bounded, so a short page can be
    /// read on an async runtime's thread instead of being handed to a blocking pool.
    /// Errors are those of `history`.
    pub fn history_cached(
        &self,
        tenant: &str,
        identity: &str,
        session: &str,
        query: &HistoryQuery,
    ) -> Result<Option<HistoryPage>> {
        self.history_cached_as::<AsPage>(tenant, identity, session, query)
    }

    /// [`Engram::history_cached`] as JSON (see [`Engram::history_json`]).
    pub fn history_cached_json(
        &self,
        tenant: &str,
        identity: &str,
        session: &str,
        query: &HistoryQuery,
    ) -> Result<Option<Vec<u8>>> {
        self.history_cached_as::<AsJson>(tenant, identity, session, query)
    }

    /// The session's tail answers, or the ticket of a fill (see [`Lookup`]); the key of
    /// the session and the time the read goes by.
    fn look_up<F: Form>(
        &self,
        tenant: &str,
        identity: &str,
        session: &str,
        query: &HistoryQuery,
        wait: Wait,
    ) -> Result<(Lookup<F::Out>, Vec<u8>, i64)> {
        check_history_args(tenant, identity, session, query)?;
        let dir_key = keys::session_dir(tenant, identity, session);
        let now_ms = self.inner.now_ms();
        let cap = tail::tail_cap(query.limit);
        let lookup = self.inner.tails.read(&dir_key, wait, cap, |tail| F::from_tail(tail, query, now_ms));
        Ok((lookup, dir_key, now_ms))
    }

    fn history_as<F: Form>(&self, tenant: &str, identity: &str, session: &str, query: &HistoryQuery) -> Result<F::Out> {
        // The ticket comes before the snapshot: a write after it (in this shard) turns
        // the fill away.
        let (fill, dir_key, now_ms) = match self.look_up::<F>(tenant, identity, session, query, Wait::Yes)? {
            (Lookup::Page(page), ..) => return Ok(page),
            (Lookup::Miss { fill }, dir_key, now_ms) => (fill, dir_key, now_ms),
        };
        let snapshot = self.inner.store.snapshot();
        let max_tail = fill.map(|_| self.inner.tails.max_tail_bytes());
        let (page, tail) = history_in(&*snapshot, tenant, identity, session, query, now_ms, max_tail)?;
        if let (Some(ticket), Some(tail)) = (fill, tail) {
            self.inner.tails.insert(ticket, dir_key, tail, Wait::Yes);
        }
        Ok(F::from_page(page))
    }

    fn history_cached_as<F: Form>(
        &self,
        tenant: &str,
        identity: &str,
        session: &str,
        query: &HistoryQuery,
    ) -> Result<Option<F::Out>> {
        // Never waits for a shard a write holds: that is a miss.
        let (fill, dir_key, now_ms) = match self.look_up::<F>(tenant, identity, session, query, Wait::No)? {
            (Lookup::Page(page), ..) => return Ok(Some(page)),
            (Lookup::Miss { fill }, dir_key, now_ms) => (fill, dir_key, now_ms),
        };
        if let Some(ticket) = fill {
            let max_tail = Some(self.inner.tails.max_tail_bytes());
            let read = self.cached(|view| history_in(view, tenant, identity, session, query, now_ms, max_tail))?;
            if let Some((page, tail)) = read {
                if let Some(tail) = tail {
                    self.inner.tails.insert(ticket, dir_key, tail, Wait::No);
                }
                return Ok(Some(F::from_page(page)));
            }
            // The fill took the read past its budget: read the page alone.
        }
        let read = self.cached(|view| history_in(view, tenant, identity, session, query, now_ms, None))?;
        Ok(read.map(|(page, _)| F::from_page(page)))
    }

    /// What the history tail cache holds and how often it answered.
    pub fn history_cache_stats(&self) -> crate::HistoryCacheStats {
        self.inner.tails.stats()
    }

    /// Runs `read` on a cached snapshot (see [`Engram::history_cached`]): `None` when any
    /// of its reads missed (needed a file or went past the budget), whatever `read` made
    /// of that; the caller reads again from files.
    pub(crate) fn cached<T>(&self, read: impl FnOnce(&dyn ReadView) -> Result<T>) -> Result<Option<T>> {
        let snapshot = self.inner.store.cached_snapshot(CACHED_READ_BUDGET_BYTES);
        let result = read(&*snapshot);
        if snapshot.missed_cache() {
            return Ok(None);
        }
        result.map(Some)
    }
}

/// A history page read from `view`, and, given the most a tail may take (`max_tail`),
/// the session's tail for the cache when it can have one (the page comes from it when it
/// can).
fn history_in(
    view: &dyn ReadView,
    tenant: &str,
    identity: &str,
    session: &str,
    query: &HistoryQuery,
    now_ms: i64,
    max_tail: Option<usize>,
) -> Result<(HistoryPage, Option<Tail>)> {
    let tenant_record = load_tenant(view, tenant)?;
    let record = load_session(view, tenant, identity, session)?;
    let cap = tail::tail_cap(query.limit);
    let tail = match max_tail {
        Some(max_bytes) if record.parent.is_none() && reads_the_tail(query, record.head_seq, cap) => {
            // A tail that cannot be read (an event that does not decode, past the page)
            // is no reason to fail a page the store path can answer.
            read_tail(view, tenant, identity, &tenant_record, &record, cap, max_bytes).ok().flatten()
        }
        _ => None,
    };
    let page = match tail.as_ref().and_then(|t| t.serve(query, now_ms)) {
        Some(page) => page,
        None => read_history(view, tenant, &tenant_record, identity, record, query, now_ms)?,
    };
    Ok((page, tail))
}

/// What a history read gives: the page, or its JSON.
trait Form {
    type Out;
    fn from_tail(tail: &Tail, query: &HistoryQuery, now_ms: i64) -> Option<Self::Out>;
    fn from_page(page: HistoryPage) -> Self::Out;
}

struct AsPage;

impl Form for AsPage {
    type Out = HistoryPage;
    fn from_tail(tail: &Tail, query: &HistoryQuery, now_ms: i64) -> Option<HistoryPage> {
        tail.serve(query, now_ms)
    }
    fn from_page(page: HistoryPage) -> HistoryPage {
        page
    }
}

struct AsJson;

impl Form for AsJson {
    type Out = Vec<u8>;
    fn from_tail(tail: &Tail, query: &HistoryQuery, now_ms: i64) -> Option<Vec<u8>> {
        tail.serve_json(query, now_ms)
    }
    fn from_page(page: HistoryPage) -> Vec<u8> {
        json::history_page(&page)
    }
}

fn check_history_args(tenant: &str, identity: &str, session: &str, query: &HistoryQuery) -> Result<()> {
    validate::id("identity", identity)?;
    validate::id("session", session)?;
    validate::page_limit("limit", query.limit)?;
    validate::id("tenant", tenant)?;
    Ok(())
}

/// Whether `query` reads among the newest `cap` sequences of a session whose head is
/// `head` (a tail of that size may answer it; a read further back is left to the store).
fn reads_the_tail(query: &HistoryQuery, head: u64, cap: usize) -> bool {
    let from = tail::tail_from(head, cap);
    match query.order {
        Order::Asc => query.after.map_or(1, |a| a.saturating_add(1)) >= from,
        Order::Desc => query.before.map_or(head, |b| b.saturating_sub(1)) >= from,
    }
}

/// The newest stored events of `record` (not a fork), up to `cap`, expired ones too: a
/// [`Tail`] for the cache. `None` once they pass `max_bytes` (before any blob is read).
fn read_tail(
    view: &dyn ReadView,
    tenant: &str,
    identity: &str,
    tenant_record: &TenantRecord,
    record: &SessionRecord,
    cap: usize,
    max_bytes: usize,
) -> Result<Option<Tail>> {
    let from = tail::tail_from(record.head_seq, cap);
    let start = keys::event(tenant, identity, &record.id, from);
    let end = keys::prefix_end(&keys::events_prefix(tenant, identity, &record.id));
    let mut events = Vec::with_capacity(cap.min(record.head_seq as usize));
    let mut rec = EventRecord::default();
    let mut total = 0;
    codec::visit_bytes(view, Space::Data, &start, end.as_deref(), Direction::Forward, |key, bytes| {
        codec::decode_into(key, bytes, &mut rec)?;
        let size = tail::event_bytes(&rec);
        total += size;
        if total > max_bytes {
            return Ok(false);
        }
        events.push((to_event(view, tenant, &record.id, key, std::mem::take(&mut rec))?, size));
        Ok(true)
    })?;
    if total > max_bytes {
        return Ok(None);
    }
    Ok(Some(Tail::new(tenant_record.clone(), record.clone(), events, from, cap)))
}

impl Engram {
    /// Deletes one event of a session (the sequence number is not reused: the history has a
    /// gap there, as after retention). Its index entries and, with its last reference, its
    /// blob go too. Returns the event as it was.
    ///
    /// # Errors
    /// `NotFound` for the session or the event, `Conflict` for an event a fork inherits
    /// (delete it in the session that holds it: it is shared with every fork of it).
    pub fn delete_event(&self, tenant: &str, identity: &str, session: &str, seq: u64) -> Result<Event> {
        validate::id("identity", identity)?;
        validate::id("session", session)?;
        let (event, _) = self.inner.commit(|tx| {
            load_tenant(tx.view(), tenant)?;
            let mut record = load_session(tx.view(), tenant, identity, session)?;
            if seq == 0 || seq > record.head_seq {
                return Err(Error::not_found("event", format!("{session}#{seq}")));
            }
            if let Some(parent) = record.parent.as_ref().filter(|_| seq <= record.fork_seq) {
                return Err(Error::Conflict(format!(
                    "event {seq} is inherited from session {parent:?}: delete it there (every fork of it shares it)"
                )));
            }
            let key = keys::event(tenant, identity, session, seq);
            let stored: EventRecord = codec::get(tx.view(), Space::Data, &key)?
                .ok_or_else(|| Error::not_found("event", format!("{session}#{seq}")))?;
            let event = to_event(tx.view(), tenant, session, &key, stored.clone())?;
            let mut ledger = BlobLedger::new(tenant);
            crate::retention::remove_event(tx, &mut ledger, identity, &mut record, &stored)?;
            ledger.flush(&mut tx.batch);
            record.updated_at_ms = tx.now_ms;
            put_session(tx, tenant, identity, &record);
            tx.record_change(ChangeOp::EventsRemoved, tenant, identity, session).removed = vec![seq];
            Ok(event)
        })?;
        Ok(event)
    }
}

/// A history page read from `view` (see [`Engram::history`]); the query is checked.
pub(crate) fn read_history(
    view: &dyn ReadView,
    tenant: &str,
    tenant_record: &TenantRecord,
    identity: &str,
    record: SessionRecord,
    query: &HistoryQuery,
    now_ms: i64,
) -> Result<HistoryPage> {
    let head = query.as_of.map_or(record.head_seq, |a| a.min(record.head_seq));
    let lo = query.after.map_or(1, |a| a.saturating_add(1));
    let hi = query.before.map_or(head, |b| b.saturating_sub(1).min(head));
    let mut segments = lineage(view, tenant, identity, record, head)?;
    if query.order == Order::Desc {
        segments.reverse();
    }
    let mut events = Vec::with_capacity(query.limit.min(1024));
    let mut more = false;
    for seg in &segments {
        let (from, to) = (seg.lo.max(lo), seg.hi.min(hi));
        if from > to {
            continue;
        }
        let effective = Effective::new(tenant_record, &seg.record);
        let session_id = &seg.record.id;
        let wanted = (query.limit - events.len() + 1) as u64;
        let prefix = keys::events_prefix(tenant, identity, session_id);
        let range = |a: u64, b: u64| {
            let mut start = prefix.clone();
            keys::put_u64(&mut start, a);
            let end = match b.checked_add(1) {
                Some(next) => {
                    let mut end = prefix.clone();
                    keys::put_u64(&mut end, next);
                    Some(end)
                }
                None => keys::prefix_end(&prefix),
            };
            (start, end)
        };
        // Takes one stored event; false once the page is full (and `more` is known). Each
        // is decoded into the same record, moved out only when it makes the page.
        let mut rec = EventRecord::default();
        let mut take = |key: &[u8], bytes: &[u8]| -> Result<bool> {
            codec::decode_into(key, bytes, &mut rec)?;
            if effective.is_expired(&rec, now_ms) || !matches_filters(&rec, query) {
                return Ok(true);
            }
            if events.len() == query.limit {
                more = true;
                return Ok(false);
            }
            events.push(to_event(view, tenant, session_id, key, std::mem::take(&mut rec))?);
            Ok(true)
        };
        if query.order == Order::Asc {
            let (start, end) = range(from, to);
            codec::visit_bytes(view, Space::Data, &start, end.as_deref(), Direction::Forward, &mut take)?;
        } else {
            // Newest first, read as forward scans of windows below the top, each
            // reversed in memory: a memtable steps backwards by a skip-list search per
            // entry, forwards by one link.
            let mut top = to;
            let mut window = wanted.max(16);
            // Sized for the first window (or the range, when shorter) up to 128 entries, a
            // 64 KiB block; bigger pages grow it as they need.
            let mut batch = Entries::with_capacity(window.min(to - from + 1).min(128) as usize);
            'windows: loop {
                let bottom = top.saturating_sub(window - 1).max(from);
                let (start, end) = range(bottom, top);
                batch.clear();
                codec::visit_bytes(view, Space::Data, &start, end.as_deref(), Direction::Forward, |key, bytes| {
                    batch.push(key, bytes);
                    Ok(true)
                })?;
                for i in (0..batch.len()).rev() {
                    let (key, bytes) = batch.get(i);
                    if !take(key, bytes)? {
                        break 'windows;
                    }
                }
                if bottom <= from {
                    break;
                }
                top = bottom - 1;
                if batch.is_empty() {
                    // A stretch with nothing stored (deleted, expired): seek to the newest
                    // event below it instead of stepping through it window by window.
                    match newest_stored(view, tenant, identity, session_id, from, top)? {
                        Some(seq) => top = seq,
                        None => break,
                    }
                }
                window = window.saturating_mul(2).min(4096);
            }
        }
        if more {
            break;
        }
    }
    let next_cursor = if more { events.last().map(|e| e.seq) } else { None };
    Ok(HistoryPage { events, next_cursor, head_seq: head })
}

/// Key and value bytes of a stored event of typical size, for sizing [`Entries`].
const TYPICAL_ENTRY_BYTES: usize = 512;

/// Stored entries copied out of a scan, kept in one buffer (reused across windows).
#[derive(Default)]
struct Entries {
    bytes: Vec<u8>,
    /// Each entry's key end and value end in `bytes` (the key starts where the previous
    /// entry's value ends).
    ends: Vec<(usize, usize)>,
}

impl Entries {
    /// Room for `entries` events of a typical size (a turn of a few hundred bytes) in one
    /// allocation: grown from empty, the buffer of a 50-event page was reallocated ~8 times.
    fn with_capacity(entries: usize) -> Entries {
        Entries { bytes: Vec::with_capacity(entries * TYPICAL_ENTRY_BYTES), ends: Vec::with_capacity(entries) }
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    fn push(&mut self, key: &[u8], value: &[u8]) {
        self.bytes.extend_from_slice(key);
        let key_end = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.ends.push((key_end, self.bytes.len()));
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn get(&self, i: usize) -> (&[u8], &[u8]) {
        let start = if i == 0 { 0 } else { self.ends[i - 1].1 };
        let (key_end, value_end) = self.ends[i];
        (&self.bytes[start..key_end], &self.bytes[key_end..value_end])
    }
}

/// The highest sequence in `lo..=hi` with an event stored in `session`, by one reverse seek.
fn newest_stored(
    view: &dyn ReadView,
    tenant: &str,
    identity: &str,
    session: &str,
    lo: u64,
    hi: u64,
) -> Result<Option<u64>> {
    let start = keys::event(tenant, identity, session, lo);
    let end = keys::event(tenant, identity, session, hi).into_iter().chain([0]).collect::<Vec<u8>>();
    let Some(entry) = view.scan(Space::Data, &start, Some(&end), Direction::Reverse).next() else {
        return Ok(None);
    };
    let (key, _) = entry?;
    let prefix = keys::events_prefix(tenant, identity, session);
    keys::event_seq(&prefix, &key).map(Some).map_err(|e| Error::corruption(&key, e.reason))
}

fn matches_filters(rec: &EventRecord, query: &HistoryQuery) -> bool {
    (query.kinds.is_empty() || query.kinds.iter().any(|k| *k as i32 == rec.kind))
        && (query.roles.is_empty() || query.roles.iter().any(|r| *r as i32 == rec.role))
}

/// A stretch of a session's history held by one physical session.
pub(crate) struct Segment {
    pub(crate) record: SessionRecord,
    pub(crate) lo: u64,
    pub(crate) hi: u64,
}

/// The physical sessions a session's history reads, root first, each with its range.
pub(crate) fn lineage(
    view: &dyn ReadView,
    tenant: &str,
    identity: &str,
    leaf: SessionRecord,
    head: u64,
) -> Result<Vec<Segment>> {
    let mut chain = Vec::new();
    let mut cap = head;
    let mut current = leaf;
    loop {
        let parent = current.parent.clone();
        let fork_seq = current.fork_seq;
        chain.push(Segment { lo: fork_seq + 1, hi: cap, record: current });
        let Some(parent) = parent else { break };
        if chain.len() > limits::MAX_FORK_DEPTH {
            return Err(Error::corruption(
                &keys::session_dir(tenant, identity, &parent),
                "fork chain too deep or cyclic",
            ));
        }
        cap = cap.min(fork_seq);
        let key = keys::session_dir(tenant, identity, &parent);
        current = codec::get(view, Space::Data, &key)?
            .ok_or_else(|| Error::corruption(&key, "parent of a fork is missing"))?;
    }
    chain.reverse();
    Ok(chain)
}

pub(crate) fn to_event(view: &dyn ReadView, tenant: &str, session: &str, key: &[u8], r: EventRecord) -> Result<Event> {
    let blob_text = match &r.blob_sha256 {
        Some(sha) => {
            let sha_arr = blobs::sha_array(sha).ok_or_else(|| Error::corruption(key, "blob hash is not 32 bytes"))?;
            let blob_key = keys::blob(tenant, &sha_arr);
            let blob: BlobRecord = codec::get(view, Space::Data, &blob_key)?
                .ok_or_else(|| Error::corruption(key, "referenced blob is missing"))?;
            Some(String::from_utf8(blob.data).map_err(|_| Error::corruption(&blob_key, "blob text is not UTF-8"))?)
        }
        None => None,
    };
    event_from_record(session, key, r, blob_text)
}

/// The event a stored record holds, given the text of its blob when it has one.
pub(crate) fn event_from_record(session: &str, key: &[u8], r: EventRecord, blob_text: Option<String>) -> Result<Event> {
    let kind =
        EventKind::from_i32(r.kind).ok_or_else(|| Error::corruption(key, format!("unknown event kind {}", r.kind)))?;
    let role = match r.role {
        0 => None,
        v => Some(Role::from_i32(v).ok_or_else(|| Error::corruption(key, format!("unknown role {v}")))?),
    };
    let (text, blob) = match (&r.blob_sha256, blob_text) {
        (Some(sha), Some(text)) => (Some(text), Some(BlobRef { sha256: hex::encode(sha), len_bytes: r.blob_len })),
        (Some(_), None) => return Err(Error::corruption(key, "referenced blob is missing")),
        (None, _) => (r.text, None),
    };
    let data = match &r.data_json {
        Some(json) => Some(codec::json_value(key, json)?),
        None => None,
    };
    Ok(Event {
        session: session.to_string(),
        seq: r.seq,
        kind,
        role,
        text,
        data,
        embedding: codec::embedding(key, &r.embedding)?,
        metadata: codec::json_map(key, &r.metadata_json)?,
        token_count: r.token_count,
        timestamp_ms: r.timestamp_ms,
        created_at_ms: r.created_at_ms,
        name: r.name,
        call_id: r.call_id,
        blob,
    })
}

fn append_tx(
    tx: &mut Tx<'_>,
    tenant: &str,
    identity: &str,
    session: &str,
    prepared: Vec<Prepared>,
    options: &AppendOptions,
    request_sha256: Vec<u8>,
) -> Result<AppendResult> {
    let mut tenant_record = load_tenant(tx.view(), tenant)?;
    if let Some(key) = &options.idempotency_key {
        let idem_key = keys::idempotency(tenant, identity, session, key);
        if let Some(earlier) = codec::get::<IdempotencyRecord>(tx.view(), Space::Data, &idem_key)? {
            if earlier.request_sha256 != request_sha256 {
                return Err(Error::Conflict(format!("idempotency key {key:?} was used for a different request")));
            }
            return Ok(AppendResult {
                first_seq: earlier.first_seq,
                last_seq: earlier.last_seq,
                deduplicated: true,
                change_seq: 0,
            });
        }
    }
    let (mut record, _) = ensure_session(tx, tenant, identity, session)?;
    if let Some(expected) = options.expected_head.filter(|e| *e != record.head_seq) {
        return Err(Error::HeadMismatch { expected, actual: record.head_seq });
    }
    if check_vectors(&mut tenant_record, &prepared)? {
        codec::put(&mut tx.batch, Space::Meta, keys::meta::tenant(tenant), &tenant_record);
    }
    let first_seq = record.head_seq + 1;
    let mut ledger = BlobLedger::new(tenant);
    let mut written = Vec::with_capacity(prepared.len());
    for (i, p) in prepared.into_iter().enumerate() {
        let mut event = p.record;
        event.seq = first_seq + i as u64;
        event.created_at_ms = tx.now_ms;
        event.change_seq = tx.change_seq;
        if event.timestamp_ms < 0 {
            event.timestamp_ms = tx.now_ms;
        }
        if let Some((sha, text)) = &p.blob {
            ledger.add(tx.view(), identity, session, sha, text.as_bytes(), tx.now_ms)?;
        }
        codec::put(&mut tx.batch, Space::Data, keys::event(tenant, identity, session, event.seq), &event);
        written.push(event);
    }
    let last_seq = first_seq + written.len() as u64 - 1;
    record.head_seq = last_seq;
    record.stored_events += written.len() as u64;
    record.updated_at_ms = tx.now_ms;
    let removed = match Effective::new(&tenant_record, &record).keep_last {
        Some(n) => trim_keep_last(tx, &mut ledger, identity, &mut record, n, &written)?,
        None => Vec::new(),
    };
    ledger.flush(&mut tx.batch);
    put_session(tx, tenant, identity, &record);
    if let Some(key) = &options.idempotency_key {
        let idem = IdempotencyRecord { first_seq, last_seq, request_sha256, created_at_ms: tx.now_ms };
        codec::put(&mut tx.batch, Space::Data, keys::idempotency(tenant, identity, session, key), &idem);
    }
    let change = tx.record_change(ChangeOp::EventsAppended, tenant, identity, session);
    change.seqs = (first_seq..=last_seq).collect();
    change.removed = removed;
    Ok(AppendResult { first_seq, last_seq, deduplicated: false, change_seq: 0 })
}
