//! The tail cache: the newest events of recently read sessions, decoded, in memory, so
//! that reading the end of a conversation (what an agent does before every model call)
//! needs no storage read, and an append to a cached session lands in its tail as well.
//!
//! Derived from the store, and never ahead of it or behind it:
//! - every write goes through `Inner::write`, which locks the shards of the sessions its
//!   batch touches *before* the store write ([`TailCache::begin`]) and brings their tails up
//!   to date after it ([`TailWrite::apply`]): a reader sees a session's tail wholly before
//!   or wholly after a write, and never a tail that lacks a write a snapshot already shows;
//! - a tail is filled from a snapshot; every write moves the generation of the shards it
//!   touches, and a fill whose shard moved since its ticket (taken under the shard's lock,
//!   before the snapshot) is dropped;
//! - what a tail cannot follow exactly drops it: a range delete (the tails of its
//!   identity, or all when it spans more), a tenant's record (that tenant's tails), an
//!   appended event whose text is a blob, a record that does not decode, a failed write.
//!   Forks are never cached (their history reads their parents').
//!
//! Lookups from an async thread (`history_cached`) only try a shard's lock: a write holds
//! it across the store write, and they must not wait on I/O.
//!
//! A tail holds every stored event of its session with a sequence `>= from`, expired ones
//! too: expiry and the query's filters are applied at read time, exactly as on the store
//! path. A read the tail cannot answer from what it holds goes to the store, and so does a
//! session's first read lately: its second fills the tail (see `Doorkeeper`).
//!
//! Memory: the budget ([`crate::Options::history_cache_bytes`]) is split across
//! [`SHARDS`]; a shard over its share drops other tails, in no particular order. Sizes are
//! estimates: about twice each event's content (decoded, and as JSON) plus a fixed
//! overhead, see [`event_bytes`].

use crate::codec;
use crate::events::event_from_record;
use crate::retention::Effective;
use engram_core::keys;
use engram_core::model::{Event, HistoryPage, HistoryQuery, Order};
use engram_core::records::{EventRecord, SessionRecord, TenantRecord};
use engram_storage::{Batch, BatchOp, Space};
use parking_lot::{RwLock, RwLockWriteGuard};
use prost::Message;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Shards of the cache: readers of different shards never meet, a write locks only the
/// shards of the sessions it touches.
pub(crate) const SHARDS: usize = 16;

/// Events a tail keeps at least: a first read of a session reads this many (the page it
/// asked for and one more, when that is more), so a short page costs a little more once.
pub(crate) const TAIL_EVENTS: usize = 32;

/// The oldest sequence a tail of `cap` events of a session whose head is `head` can hold.
pub(crate) fn tail_from(head: u64, cap: usize) -> u64 {
    head.saturating_sub(cap as u64 - 1).max(1)
}

/// The events a tail for a page of `limit` keeps: the page and one more (to know whether
/// there are more), at least [`TAIL_EVENTS`].
pub(crate) fn tail_cap(limit: usize) -> usize {
    limit.saturating_add(1).max(TAIL_EVENTS)
}

/// Fixed cost counted per cached event, besides its stored size.
const EVENT_OVERHEAD_BYTES: usize = std::mem::size_of::<Cached>() + 64;

type Hasher = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// See the module documentation.
pub(crate) struct TailCache {
    /// Empty when the cache is off.
    shards: Vec<RwLock<Shard>>,
    shard_budget: usize,
    budget_bytes: usize,
    doorkeeper: Doorkeeper,
    /// Each shard's bytes and tails, as of its last change: read without its lock (by
    /// [`TailCache::stats`], which may run on an async thread while a write holds one).
    published: Vec<(AtomicUsize, AtomicUsize)>,
    /// Lookups answered from a tail, and not.
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What the history tail cache holds and how often it answered
/// ([`crate::Engram::history_cache_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryCacheStats {
    /// The configured budget ([`crate::Options::history_cache_bytes`]; 0: off).
    pub budget_bytes: u64,
    /// Estimated bytes held now.
    pub bytes: u64,
    /// Sessions with a tail now.
    pub sessions: u64,
    /// History reads answered from a tail since open.
    pub hits: u64,
    /// Lookups that found no tail, or one without the events the read needed (a read that
    /// `history_cached` cannot answer and `history` then reads counts twice).
    pub misses: u64,
}

/// Sessions looked up lately without a tail, approximately: a session's first read goes
/// to storage (as with the cache off) and marks it here; a later one fills its tail. So a
/// pass that reads many sessions once each (an export, an analysis) costs what it costs
/// without the cache and pushes no tail out. One bit per hash bucket, all cleared once
/// half of them are set.
struct Doorkeeper {
    bits: Box<[AtomicU64]>,
    marks: AtomicUsize,
}

impl Doorkeeper {
    const BITS: usize = 1 << 14;

    fn new() -> Doorkeeper {
        Doorkeeper { bits: (0..Self::BITS / 64).map(|_| AtomicU64::new(0)).collect(), marks: AtomicUsize::new(0) }
    }

    /// Whether the session hashed to `hash` was looked up since the last clearing (or one
    /// that shares its bit was); marks it. Races only move an admission by a read.
    fn seen(&self, hash: u64) -> bool {
        let bit = (hash >> 20) as usize % Self::BITS;
        let mask = 1u64 << (bit % 64);
        if self.bits[bit / 64].fetch_or(mask, Ordering::Relaxed) & mask != 0 {
            return true;
        }
        if self.marks.fetch_add(1, Ordering::Relaxed) + 1 >= Self::BITS / 2 {
            self.bits.iter().for_each(|word| word.store(0, Ordering::Relaxed));
            self.marks.store(0, Ordering::Relaxed);
        }
        false
    }
}

#[derive(Default)]
struct Shard {
    /// Moves with every write to a session of this shard.
    generation: u64,
    /// By the session's directory key.
    tails: HashMap<Vec<u8>, Tail>,
    bytes: usize,
}

/// The newest events of one session (not a fork), and what a read needs besides them.
#[derive(Debug)]
pub(crate) struct Tail {
    tenant: TenantRecord,
    session: SessionRecord,
    /// Every stored event of the session with a sequence `>= from`, oldest first.
    events: VecDeque<Cached>,
    from: u64,
    /// Events kept at most: older ones fall off the front as new ones arrive.
    cap: usize,
    bytes: usize,
}

#[derive(Debug)]
struct Cached {
    event: Event,
    /// The event as JSON, written the first time a page of it is asked for as JSON.
    json: OnceLock<Box<[u8]>>,
    /// Counts the JSON too, written or not.
    bytes: usize,
}

impl Cached {
    fn new(event: Event, bytes: usize) -> Cached {
        Cached { event, json: OnceLock::new(), bytes }
    }

    fn json(&self) -> &[u8] {
        self.json.get_or_init(|| engram_core::json::event(&self.event).into_boxed_slice())
    }
}

/// The events a page takes from a tail, oldest or newest first as asked.
struct Selection<'a> {
    events: Vec<&'a Cached>,
    next_cursor: Option<u64>,
    head_seq: u64,
}

/// A shard's generation taken before a fill's snapshot.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    shard: usize,
    generation: u64,
}

/// What one write changes in one session's tail.
enum Change {
    Session(Vec<u8>),
    SessionGone,
    Event(u64, Vec<u8>),
    EventGone(u64),
}

/// The shards a write holds across the store write, and what it will change in them.
pub(crate) struct TailWrite<'a> {
    /// Locked in shard order (a write may take several; readers take one).
    shards: Vec<(usize, RwLockWriteGuard<'a, Shard>)>,
    /// Changes to cached tails only: (shard, directory key, change).
    changes: Vec<(usize, Vec<u8>, Change)>,
    /// Tails whose directory keys start with one of these go (a range delete inside an
    /// identity: that identity's; a tenant's record: that tenant's); an empty prefix: all.
    drops: Vec<Vec<u8>>,
    shard_budget: usize,
    published: &'a [(AtomicUsize, AtomicUsize)],
}

/// Whether a lookup may wait for a shard a write holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Wait (a blocking read).
    Yes,
    /// Count a held shard as a miss (a read on an async thread: a write holds its shard
    /// across the store write).
    No,
}

/// What a lookup found.
pub(crate) enum Lookup<T> {
    Page(T),
    /// Not answered here. `fill`: no tail is cached (and the session was looked up before,
    /// see `Doorkeeper`), or a smaller one than the read needs; fill one from a snapshot
    /// taken after this, with this ticket. `None` when a tail big enough is cached but
    /// cannot answer (it would be filled the same), on a session's first lookup, when the
    /// cache is off, or the shard was busy.
    Miss {
        fill: Option<Ticket>,
    },
}

impl std::fmt::Debug for TailWrite<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TailWrite").field("shards", &self.shards.len()).field("drops", &self.drops).finish()
    }
}

impl std::fmt::Debug for TailCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TailCache")
            .field("shards", &self.shards.len())
            .field("shard_budget", &self.shard_budget)
            .finish()
    }
}

impl TailCache {
    /// A cache of about `budget_bytes`; 0 turns it off.
    pub(crate) fn new(budget_bytes: usize) -> TailCache {
        let shard_budget = budget_bytes / SHARDS;
        let shards = if shard_budget == 0 { Vec::new() } else { (0..SHARDS).map(|_| RwLock::default()).collect() };
        TailCache {
            shards,
            shard_budget,
            budget_bytes,
            doorkeeper: Doorkeeper::new(),
            published: (0..SHARDS).map(|_| (AtomicUsize::new(0), AtomicUsize::new(0))).collect(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The most a tail may take (a fill stops reading past it).
    pub(crate) fn max_tail_bytes(&self) -> usize {
        self.shard_budget / 4
    }

    fn shard_of(&self, dir_key: &[u8]) -> usize {
        self.shard_of_hash(Hasher::default().hash_one(dir_key))
    }

    fn shard_of_hash(&self, hash: u64) -> usize {
        (hash % self.shards.len() as u64) as usize
    }

    /// What `serve` makes of the tail of the session whose directory key is `dir_key`
    /// (a page, or `None` when it cannot answer), or a miss (see [`Lookup::Miss`]; a tail
    /// that cannot answer is filled again only when it keeps fewer than `cap` events).
    pub(crate) fn read<T>(
        &self,
        dir_key: &[u8],
        wait: Wait,
        cap: usize,
        serve: impl FnOnce(&Tail) -> Option<T>,
    ) -> Lookup<T> {
        if self.shards.is_empty() {
            return Lookup::Miss { fill: None };
        }
        let hash = Hasher::default().hash_one(dir_key);
        let index = self.shard_of_hash(hash);
        let lookup = match wait {
            Wait::Yes => Some(self.shards[index].read()),
            Wait::No => self.shards[index].try_read(),
        }
        .map_or(Lookup::Miss { fill: None }, |shard| {
            let ticket = Ticket { shard: index, generation: shard.generation };
            match shard.tails.get(dir_key) {
                Some(tail) => match serve(tail) {
                    Some(page) => Lookup::Page(page),
                    None => Lookup::Miss { fill: (tail.cap < cap).then_some(ticket) },
                },
                // A session's first read lately is left to storage (see `Doorkeeper`).
                None => Lookup::Miss { fill: self.doorkeeper.seen(hash).then_some(ticket) },
            }
        });
        let counter = if matches!(lookup, Lookup::Page(_)) { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        lookup
    }

    /// Keeps `tail`, unless a write reached its shard since `ticket` was taken, or it is
    /// too big (over [`TailCache::max_tail_bytes`]).
    pub(crate) fn insert(&self, ticket: Ticket, dir_key: Vec<u8>, tail: Tail, wait: Wait) {
        if tail.bytes > self.max_tail_bytes() {
            return;
        }
        let Some(mut shard) = (match wait {
            Wait::Yes => Some(self.shards[ticket.shard].write()),
            Wait::No => self.shards[ticket.shard].try_write(),
        }) else {
            return;
        };
        if shard.generation != ticket.generation {
            return;
        }
        shard.remove(&dir_key);
        shard.bytes += tail.bytes;
        shard.tails.insert(dir_key.clone(), tail);
        shard.shrink_to(self.shard_budget, &dir_key);
        publish(&self.published[ticket.shard], &shard);
    }

    /// Locks the shards of every session `batch` writes and moves their generations. Call
    /// before the store write, then [`TailWrite::apply`].
    pub(crate) fn begin(&self, batch: &Batch) -> TailWrite<'_> {
        let mut write = TailWrite {
            shards: Vec::new(),
            changes: Vec::new(),
            drops: Vec::new(),
            shard_budget: self.shard_budget,
            published: &self.published,
        };
        if self.shards.is_empty() {
            return write;
        }
        let mut touched = Vec::new();
        for op in batch.ops() {
            let (key, value) = match op {
                BatchOp::Put { space: Space::Data, key, value } => (key, Some(value)),
                BatchOp::Delete { space: Space::Data, key } => (key, None),
                BatchOp::Put { space: Space::Meta, key, .. } | BatchOp::Delete { space: Space::Meta, key }
                    if key.first() == Some(&keys::meta::TENANT) =>
                {
                    // The tenant's record (retention, vectors): its tails, whose keys
                    // start with the encoded tenant, as the record's key does after its tag.
                    write.drops.push(key[1..].to_vec());
                    continue;
                }
                BatchOp::DeleteRange { space: Space::Data, start, end } => {
                    write.drops.push(keys::identity_range(start, end).map_or_else(Vec::new, <[u8]>::to_vec));
                    continue;
                }
                BatchOp::DeleteRange { space: Space::Meta, .. } => {
                    write.drops.push(Vec::new());
                    continue;
                }
                BatchOp::Put { .. } | BatchOp::Delete { .. } | BatchOp::DeleteRange { .. } => continue,
            };
            if let Some((dir, seq)) = keys::history_key(key) {
                touched.push((self.shard_of(&dir), dir, seq, value));
            }
        }
        let mut wanted: Vec<usize> = if !write.drops.is_empty() {
            (0..self.shards.len()).collect()
        } else {
            touched.iter().map(|(shard, ..)| *shard).collect()
        };
        wanted.sort_unstable();
        wanted.dedup();
        write.shards = wanted.into_iter().map(|i| (i, self.shards[i].write())).collect();
        for (_, shard) in &mut write.shards {
            shard.generation += 1;
        }
        for (shard, dir, seq, value) in touched {
            let cached = write.shard(shard).tails.contains_key(&dir);
            if !cached {
                continue;
            }
            let change = match (seq, value) {
                (None, Some(v)) => Change::Session(v.clone()),
                (None, None) => Change::SessionGone,
                (Some(seq), Some(v)) => Change::Event(seq, v.clone()),
                (Some(seq), None) => Change::EventGone(seq),
            };
            write.changes.push((shard, dir, change));
        }
        write
    }

    /// Takes no lock.
    pub(crate) fn stats(&self) -> HistoryCacheStats {
        let (bytes, sessions) = self.published.iter().fold((0, 0), |(b, n), (bytes, tails)| {
            (b + bytes.load(Ordering::Relaxed), n + tails.load(Ordering::Relaxed))
        });
        HistoryCacheStats {
            budget_bytes: self.budget_bytes as u64,
            bytes: bytes as u64,
            sessions: sessions as u64,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

impl TailWrite<'_> {
    fn shard(&mut self, index: usize) -> &mut Shard {
        let at = self.shards.binary_search_by_key(&index, |(i, _)| *i).expect("the shard was locked");
        &mut self.shards[at].1
    }

    /// Brings the locked tails up to date with the write, or, when it failed (`written`
    /// false: the store may hold some of it), drops every tail it touched.
    pub(crate) fn apply(mut self, written: bool) {
        let drops = std::mem::take(&mut self.drops);
        for (_, shard) in &mut self.shards {
            shard.drop_prefixes(&drops);
        }
        for (index, dir, change) in std::mem::take(&mut self.changes) {
            let shard = self.shard(index);
            let Some(tail) = shard.tails.get_mut(&dir) else { continue };
            let before = tail.bytes;
            if written && tail.apply(&dir, change) {
                shard.bytes = shard.bytes - before + tail.bytes;
            } else {
                shard.remove(&dir);
            }
        }
        let budget = self.shard_budget;
        for (index, shard) in &mut self.shards {
            shard.shrink_to(budget, &[]);
            publish(&self.published[*index], shard);
        }
    }
}

/// Records a shard's figures for [`TailCache::stats`] (under its write lock).
fn publish(to: &(AtomicUsize, AtomicUsize), shard: &Shard) {
    to.0.store(shard.bytes, Ordering::Relaxed);
    to.1.store(shard.tails.len(), Ordering::Relaxed);
}

impl Shard {
    fn remove(&mut self, dir_key: &[u8]) {
        if let Some(tail) = self.tails.remove(dir_key) {
            self.bytes -= tail.bytes;
        }
    }

    /// Drops the tails whose keys start with any of `prefixes`.
    fn drop_prefixes(&mut self, prefixes: &[Vec<u8>]) {
        if prefixes.is_empty() {
            return;
        }
        let bytes = &mut self.bytes;
        self.tails.retain(|key, tail| {
            let keep = !prefixes.iter().any(|p| key.starts_with(p));
            if !keep {
                *bytes -= tail.bytes;
            }
            keep
        });
    }

    /// Drops tails other than `keep` until the shard is within `budget`.
    fn shrink_to(&mut self, budget: usize, keep: &[u8]) {
        while self.bytes > budget {
            let Some(victim) = self.tails.keys().find(|k| k.as_slice() != keep).cloned() else { return };
            self.remove(&victim);
        }
    }
}

/// What a stored event costs in the cache, about: decoded, and written as JSON.
pub(crate) fn event_bytes(r: &EventRecord) -> usize {
    let strings = [r.text.as_ref(), r.data_json.as_ref(), r.name.as_ref(), r.call_id.as_ref()];
    let content = strings.iter().map(|s| s.map_or(0, String::len)).sum::<usize>()
        + r.metadata_json.len()
        // As JSON numbers, a float takes about three times its four bytes.
        + 3 * r.embedding.len()
        + usize::try_from(r.blob_len).unwrap_or(usize::MAX);
    EVENT_OVERHEAD_BYTES.saturating_add(content.saturating_mul(2))
}

impl Tail {
    /// A tail of `session` holding `events` (with their [`event_bytes`]), oldest first:
    /// every stored event with a sequence `>= from`.
    pub(crate) fn new(
        tenant: TenantRecord,
        session: SessionRecord,
        events: Vec<(Event, usize)>,
        from: u64,
        cap: usize,
    ) -> Tail {
        debug_assert!(session.parent.is_none(), "forks are not cached");
        debug_assert!(events.len() <= cap);
        let events: VecDeque<Cached> = events.into_iter().map(|(event, bytes)| Cached::new(event, bytes)).collect();
        let bytes = std::mem::size_of::<Tail>()
            + tenant.encoded_len()
            + session.encoded_len()
            + events.iter().map(|c| c.bytes).sum::<usize>();
        Tail { tenant, session, events, from, cap, bytes }
    }

    /// Applies one write; false when the tail cannot follow it (drop it).
    fn apply(&mut self, dir_key: &[u8], change: Change) -> bool {
        match change {
            Change::Session(bytes) => match codec::decode::<SessionRecord>(dir_key, &bytes) {
                Ok(record) if record.parent.is_none() => {
                    self.bytes = self.bytes - self.session.encoded_len() + record.encoded_len();
                    self.session = record;
                    true
                }
                _ => false,
            },
            Change::SessionGone => false,
            Change::Event(seq, _) if seq < self.from => true,
            Change::Event(seq, bytes) => {
                let Ok(record) = codec::decode::<EventRecord>(dir_key, &bytes) else { return false };
                if record.seq != seq || record.blob_sha256.is_some() {
                    return false;
                }
                let size = event_bytes(&record);
                let Ok(event) = event_from_record(&self.session.id, dir_key, record, None) else { return false };
                let cached = Cached::new(event, size);
                self.bytes += size;
                match self.events.binary_search_by_key(&seq, |c| c.event.seq) {
                    Ok(i) => self.bytes -= std::mem::replace(&mut self.events[i], cached).bytes,
                    Err(i) => self.events.insert(i, cached),
                }
                while self.events.len() > self.cap {
                    let Some(oldest) = self.events.pop_front() else { break };
                    self.bytes -= oldest.bytes;
                    self.from = oldest.event.seq + 1;
                }
                true
            }
            Change::EventGone(seq) => {
                if let Ok(i) = self.events.binary_search_by_key(&seq, |c| c.event.seq)
                    && let Some(gone) = self.events.remove(i)
                {
                    self.bytes -= gone.bytes;
                }
                true
            }
        }
    }

    /// The page `query` reads, as the store path would read it at the same moment; `None`
    /// when it needs events older than the tail holds.
    pub(crate) fn serve(&self, query: &HistoryQuery, now_ms: i64) -> Option<HistoryPage> {
        let Selection { events, next_cursor, head_seq } = self.select(query, now_ms)?;
        Some(HistoryPage { events: events.into_iter().map(|c| c.event.clone()).collect(), next_cursor, head_seq })
    }

    /// [`Tail::serve`] as JSON ([`engram_core::json::history_page`]'s bytes), from each
    /// event's JSON written once.
    pub(crate) fn serve_json(&self, query: &HistoryQuery, now_ms: i64) -> Option<Vec<u8>> {
        let Selection { events, next_cursor, head_seq } = self.select(query, now_ms)?;
        Some(engram_core::json::history_page_of_written(events.iter().map(|c| c.json()), next_cursor, head_seq))
    }

    /// The events of the page `query` reads, as the store path would read it at the same
    /// moment; `None` when it needs events older than the tail holds.
    fn select(&self, query: &HistoryQuery, now_ms: i64) -> Option<Selection<'_>> {
        let head = query.as_of.map_or(self.session.head_seq, |a| a.min(self.session.head_seq));
        let lo = query.after.map_or(1, |a| a.saturating_add(1));
        let hi = query.before.map_or(head, |b| b.saturating_sub(1).min(head));
        let effective = Effective::new(&self.tenant, &self.session);
        let wanted = |e: &Event| {
            !effective.is_expired_at(e.kind as i32, e.created_at_ms, now_ms)
                && (query.kinds.is_empty() || query.kinds.contains(&e.kind))
                && (query.roles.is_empty() || e.role.is_some_and(|r| query.roles.contains(&r)))
        };
        // Every stored event in `lo..` is here.
        let holds_all = self.from <= lo;
        let mut events = Vec::with_capacity(query.limit.min(self.events.len()));
        let mut more = false;
        if lo <= hi {
            match query.order {
                Order::Asc => {
                    if !holds_all {
                        return None;
                    }
                    let start = self.events.partition_point(|c| c.event.seq < lo);
                    for c in self.events.range(start..).take_while(|c| c.event.seq <= hi) {
                        if !wanted(&c.event) {
                            continue;
                        }
                        if events.len() == query.limit {
                            more = true;
                            break;
                        }
                        events.push(c);
                    }
                }
                Order::Desc => {
                    let end = self.events.partition_point(|c| c.event.seq <= hi);
                    let mut answered = holds_all;
                    for c in self.events.range(..end).rev() {
                        if c.event.seq < lo {
                            answered = true;
                            break;
                        }
                        if !wanted(&c.event) {
                            continue;
                        }
                        if events.len() == query.limit {
                            more = true;
                            answered = true;
                            break;
                        }
                        events.push(c);
                    }
                    if !answered {
                        return None;
                    }
                }
            }
        }
        let next_cursor = if more { events.last().map(|c| c.event.seq) } else { None };
        Some(Selection { events, next_cursor, head_seq: head })
    }
}
