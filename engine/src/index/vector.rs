//! The vector index: per tenant, every vector in one arena with the fields search filters
//! on. Small scopes are searched exactly (a scan of the scope's points); a tenant with more
//! than `exact_max` live points also gets an HNSW graph, built (and extended) by hnsw_rs in
//! the background and frozen into flat arrays that searches walk, with the scope filter
//! applied inside the walk (see `graph.rs`). hnsw_rs cannot delete: deleted points are
//! tombstones the filter skips, and the graph is rebuilt in the background once tombstones
//! pass a ratio of it.
//!
//! The index persists as one snapshot file (a framed, checksummed prost message holding its
//! applied changelog mark); the graph is not persisted but rebuilt after open.

use super::faults::{self, IoFaults, IoOp};
use super::graph::FlatGraph;
use super::simd::{self, Kernel};
use super::{DocKey, IndexDoc, Removal, Scope};
use crate::error::{Error, Result};
use engram_core::admin::VectorStats;
use engram_core::model::{Metric, SearchOver};
use engram_storage::frame;
use hnsw_rs::prelude::{Distance, Hnsw};
use parking_lot::{Mutex, RwLock};
use std::collections::{BinaryHeap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Tombstones (deleted points still in a graph) past this share of it trigger a rebuild.
const TOMBSTONE_RATIO: f64 = 0.25;
/// Points added after a graph was frozen are scanned exactly; past this many (or a 32nd of
/// the graph, so refreezing stays linear in total), the graph is frozen again in the
/// background.
const REFREEZE_TAIL: u32 = 4096;
const HNSW_MAX_LAYER: usize = 16;

/// Tuning of the vector index.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VectorTuning {
    /// Scopes with at most this many points are searched exactly; a tenant with more live
    /// points gets an HNSW graph.
    pub exact_max: usize,
    /// HNSW neighbours per node (M).
    pub hnsw_m: usize,
    pub hnsw_ef_construction: usize,
    /// Candidates explored per search (at least `k`).
    pub hnsw_ef_search: usize,
}

impl Default for VectorTuning {
    fn default() -> Self {
        VectorTuning { exact_max: 20_000, hnsw_m: 16, hnsw_ef_construction: 200, hnsw_ef_search: 128 }
    }
}

/// Distances hnsw_rs sees: non-negative, smaller is nearer. Cosine vectors are stored
/// normalized, so cosine is `1 - dot`; a raw dot product goes through softplus(-dot).
#[derive(Clone, Copy, Debug)]
struct MetricDistance(Metric);

impl Distance<f32> for MetricDistance {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        let d = match self.0 {
            Metric::L2 => l2_squared(a, b),
            Metric::Dot => softplus(-dot(a, b)),
            _ => (1.0 - dot(a, b)).max(0.0),
        };
        // hnsw_rs panics on NaN; vectors are validated finite with a finite norm, so this is
        // only a guard.
        if d.is_nan() { f32::MAX } else { d }
    }
}

fn softplus(x: f32) -> f32 {
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

/// The dot product, in sixteen independent lanes so the compiler vectorizes it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, ra) = a.as_chunks::<16>();
    let (cb, rb) = b.as_chunks::<16>();
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// The squared Euclidean distance, vectorized like [`dot`].
pub fn l2_squared(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, ra) = a.as_chunks::<8>();
    let (cb, rb) = b.as_chunks::<8>();
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..8 {
            let d = x[i] - y[i];
            acc[i] += d * d;
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| (x - y) * (x - y)).sum();
    acc.iter().sum::<f32>() + tail
}

fn normalize(v: &mut [f32]) {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// The similarity reported to callers (higher is nearer).
fn similarity(metric: Metric, q: &[f32], v: &[f32]) -> f32 {
    match metric {
        Metric::L2 => 1.0 / (1.0 + l2_squared(q, v).sqrt()),
        _ => dot(q, v),
    }
}

type Graph = Hnsw<'static, f32, MetricDistance>;

const NO_SESSION: u32 = u32::MAX;

#[derive(Clone, Debug)]
struct PointMeta {
    identity: u32,
    /// `NO_SESSION` for a memory.
    session: u32,
    seq: u64,
    memory: Option<Arc<str>>,
    kind: i32,
    role: i32,
    ts_ms: i64,
    change_seq: u64,
    meta: Box<[u64]>,
}

/// `Points::flags` bits.
const LIVE: u8 = 1;
const MEMORY: u8 = 2;

#[derive(Default)]
struct Points {
    dim: usize,
    /// Every point's vector, `dim` floats each (normalized for cosine).
    data: Vec<f32>,
    /// The same vectors as 8-bit codes, `code_stride` per point (zero-padded), each point's
    /// vector close to `scale · code`: what the exact scan streams first (see `scan`) and
    /// what graph walks compare.
    codes: Vec<i8>,
    /// Per point, the scale of its codes.
    scale: Vec<f32>,
    /// Per point, an upper bound of `|scale · code - data|`.
    residual: Vec<f32>,
    /// Per point, an upper bound of `|data|`.
    norm: Vec<f32>,
    meta: Vec<PointMeta>,
    /// Per point, `LIVE` and `MEMORY` bits: what most scans filter on, packed apart from
    /// `meta` so a scan of a whole identity reads one byte per point.
    flags: Vec<u8>,
    /// Per point, its identity (`meta.identity`, packed the same way; fixed at insert).
    owner: Vec<u32>,
    /// Live points.
    alive: usize,
    names: Vec<Arc<str>>,
    name_ids: HashMap<Arc<str>, u32>,
    by_identity: HashMap<u32, Vec<u32>>,
    events: HashMap<(u32, u32, u64), u32>,
    memories: HashMap<(u32, Arc<str>), u32>,
    graph: Option<Arc<Graph>>,
    /// A frozen copy of `graph` (or of the graph it replaced) that searches walk.
    flat: Option<Arc<FlatGraph>>,
    /// A background freeze of `graph` is running.
    freezing: bool,
    /// Points in `graph` and tombstones among them.
    graph_points: usize,
    graph_dead: usize,
    building: bool,
}

impl Points {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(id) = self.name_ids.get(name) {
            return *id;
        }
        let id = self.names.len() as u32;
        let name: Arc<str> = name.into();
        self.names.push(Arc::clone(&name));
        self.name_ids.insert(name, id);
        id
    }

    fn vector(&self, id: u32) -> &[f32] {
        let start = id as usize * self.dim;
        &self.data[start..start + self.dim]
    }

    /// Codes per point in `codes`: the dimension rounded up to a whole number of kernel
    /// blocks, zero-padded, so the kernels never handle a remainder.
    fn code_stride(&self) -> usize {
        self.dim.next_multiple_of(simd::BLOCK)
    }

    /// Stores a new live point; returns its id.
    fn insert(&mut self, v: &[f32], meta: PointMeta) -> u32 {
        debug_assert_eq!(v.len(), self.dim);
        let id = self.meta.len() as u32;
        self.data.extend_from_slice(v);
        let start = self.codes.len();
        self.codes.resize(start + self.code_stride(), 0);
        let codes = &mut self.codes[start..start + self.dim];
        let scale = simd::quantize(v, codes);
        // In f64 every `scale · code` is exact (24 + 8 bits), so only the sum and the square
        // root round: one step up covers them at these sizes.
        let r2: f64 =
            codes.iter().zip(v).map(|(c, x)| (f64::from(scale) * f64::from(*c) - f64::from(*x)).powi(2)).sum();
        self.residual.push((r2.sqrt() as f32).next_up().next_up());
        self.scale.push(scale);
        self.norm.push((simd::norm_f64(v) as f32).next_up());
        let identity = meta.identity;
        self.flags.push(if meta.memory.is_some() { LIVE | MEMORY } else { LIVE });
        self.owner.push(identity);
        match &meta.memory {
            Some(m) => self.memories.insert((identity, m.clone()), id),
            None => self.events.insert((identity, meta.session, meta.seq), id),
        };
        self.meta.push(meta);
        self.alive += 1;
        self.by_identity.entry(identity).or_default().push(id);
        id
    }

    /// The `k` points among `ids` in `scope` nearest to `q`, nearest first: exactly the
    /// points (and similarities) a scan of the `f32` vectors gives, while streaming mostly
    /// a quarter of the bytes.
    ///
    /// The first pass reads the 8-bit codes. The gap between a point's score on its codes
    /// and its `f32` score is bounded, from the stored residual and norm and the rounding of
    /// an f32 sum of `dim` terms, so each point gets an interval sure to hold its `f32`
    /// score. A point whose upper end is below the k-th largest lower end has k points
    /// surely at least as good and is dropped. The second pass scores the remaining
    /// candidates (a few times k) on their `f32` vectors.
    fn scan(&self, metric: Metric, q: &[f32], ids: &[u32], scope: &Compiled, k: usize) -> Vec<(u32, f32)> {
        if k == 0 {
            return Vec::new();
        }
        let kernel = Kernel::detect();
        let query = simd::Query::new(q);
        let bounds = Bounds::new(self.dim, q, &query);
        // Blocks of ids keep the scratch buffers in L1.
        const BLOCK: usize = 256;
        let (mut block, mut scores) = (Vec::with_capacity(BLOCK), Vec::with_capacity(BLOCK));
        let mut lows = KthLargest::new(k);
        // (upper end, id) of every point not yet known to be out of the top k.
        let mut candidates: Vec<(f32, u32)> = Vec::with_capacity(8 * k);
        for ids in ids.chunks(BLOCK) {
            block.clear();
            block.extend(ids.iter().copied().filter(|id| scope.matches(self, *id)));
            scores.clear();
            kernel.scores(&query, &self.codes, &self.scale, &block, metric == Metric::L2, &mut scores);
            for (&id, &score) in block.iter().zip(&scores) {
                let (low, high) = self.bounds(&bounds, metric, id, score);
                lows.offer(low);
                if high >= lows.floor() {
                    candidates.push((high, id));
                }
            }
        }
        // The k-th largest lower end: k points score at least this much.
        let floor = lows.kth();
        let candidates = candidates.into_iter().filter(|(high, _)| *high >= floor).map(|(_, id)| id);
        let mut heap = BinaryHeap::with_capacity(k + 1);
        for id in candidates {
            let s = similarity(metric, q, self.vector(id));
            if heap.len() < k {
                heap.push(Candidate(s, id));
            } else if heap.peek().is_some_and(|worst| s > worst.0) {
                heap.pop();
                heap.push(Candidate(s, id));
            }
        }
        heap.into_sorted_vec().into_iter().map(|Candidate(s, id)| (id, s)).collect()
    }

    /// `walk`'s points (distances on the codes, as [`FlatGraph::search`] gives them) that
    /// can be among their best `k` by `f32` score, with those scores, unordered: at least
    /// `min(k, walk.len())` of them; the caller sorts and truncates. Only points whose
    /// bounds (see [`Points::bounds`]) reach the k-th best lower bound are rescored, so the
    /// best k are those of rescoring them all (for L2, up to distances that round to the
    /// same similarity).
    fn rescore(
        &self,
        metric: Metric,
        q: &[f32],
        query: &simd::Query,
        walk: Vec<(f32, u32)>,
        k: usize,
    ) -> Vec<(u32, f32)> {
        if k == 0 {
            return Vec::new();
        }
        let bounds = Bounds::new(self.dim, q, query);
        let mut lows = KthLargest::new(k);
        let l2 = metric == Metric::L2;
        let walk: Vec<(f32, u32)> = walk
            .into_iter()
            .map(|(d, id)| {
                let (low, high) = self.bounds(&bounds, metric, id, if l2 { d } else { -d });
                lows.offer(low);
                (high, id)
            })
            .collect();
        let floor = lows.kth();
        let best: Vec<u32> = walk.into_iter().filter(|(high, _)| *high >= floor).map(|(_, id)| id).collect();
        // Scattered `f32` vectors: ask for each a few ahead of its turn.
        const AHEAD: usize = 4;
        best.iter().take(AHEAD).for_each(|id| simd::prefetch(self.vector(*id)));
        best.iter()
            .enumerate()
            .map(|(i, &id)| {
                if let Some(ahead) = best.get(i + AHEAD) {
                    simd::prefetch(self.vector(*ahead));
                }
                (id, similarity(metric, q, self.vector(id)))
            })
            .collect()
    }

    /// An interval sure to hold point `id`'s `f32` score from `score`, its score on the
    /// codes (for L2, `|q - ŵ|²`). The score is the similarity, or for L2 the negated
    /// distance (which orders points as [`similarity`] does).
    fn bounds(&self, b: &Bounds, metric: Metric, id: u32, score: f32) -> (f32, f32) {
        let Bounds { gamma, tiny, q_norm, e } = *b;
        let (r, n, s) = (self.residual[id as usize], self.norm[id as usize], self.scale[id as usize]);
        let (low, high) = match metric {
            // Scored as the negated distance. `score` is |q - ŵ|² (ŵ = s · code) within a
            // relative `gamma` and an absolute `tiny`; d(q, v) is within `r` of d(q, ŵ); the
            // f32 scan's own distance is within `gamma` (and `sqrt(tiny)` from subnormals) of
            // d(q, v). Doubled margins cover the roundings of these few operations.
            Metric::L2 => {
                let lo = ((score - tiny).max(0.0) * (1.0 - 2.0 * gamma)).sqrt() - r;
                let hi = ((score + tiny) * (1.0 + 2.0 * gamma)).sqrt() + r;
                let lo = lo.max(0.0) * (1.0 - 2.0 * gamma) - tiny.sqrt();
                (-(hi * (1.0 + 2.0 * gamma) + tiny.sqrt()), -lo)
            }
            // `score` is q̂·ŵ (q̂ the integer query, within `e` of q; the integer sum exact,
            // then scaled): |q̂·ŵ - q·v| <= e |ŵ| + |q| |ŵ - v|, |ŵ| <= n + r; plus the
            // scalings' and the f32 scan's rounding, and what subnormal products lose.
            _ => {
                let slack = (q_norm + e) * (r + gamma * (2.0 * n + r)) + e * (n + r) + tiny * (1.0 + s);
                (score - slack, score + slack)
            }
        };
        // A sum that overflowed makes the point a candidate whatever it scored.
        if low.is_finite() && high.is_finite() && low <= high {
            (low, high)
        } else {
            (f32::NEG_INFINITY, f32::INFINITY)
        }
    }

    fn is_alive(&self, id: usize) -> bool {
        self.flags.get(id).is_some_and(|f| f & LIVE != 0)
    }

    fn kill(&mut self, id: u32) {
        let flags = &mut self.flags[id as usize];
        if *flags & LIVE != 0 {
            *flags &= !LIVE;
            self.alive -= 1;
            if self.graph.is_some() {
                self.graph_dead += 1;
            }
        }
    }

    fn key_of(&self, id: u32) -> DocKey {
        let p = &self.meta[id as usize];
        let identity = Arc::clone(&self.names[p.identity as usize]);
        match &p.memory {
            Some(m) => DocKey::Memory { identity, id: Arc::clone(m) },
            None => DocKey::Event { identity, session: Arc::clone(&self.names[p.session as usize]), seq: p.seq },
        }
    }
}

/// One tenant's vectors.
struct TenantVectors {
    metric: Metric,
    points: RwLock<Points>,
    /// Held while inserting into the tenant's current graph and while freezing it (reading
    /// hnsw_rs's graph while it grows could deadlock on its locks).
    graph_writes: Mutex<()>,
}

/// A scope resolved against one tenant's interned names.
struct Compiled {
    identity: Option<u32>,
    /// Events only from these sessions (when `sessions_scoped`).
    segments: Vec<(u32, u64)>,
    sessions_scoped: bool,
    over: SearchOver,
    kinds: Vec<i32>,
    roles: Vec<i32>,
    memory_kinds: Vec<i32>,
    from_ms: Option<i64>,
    to_ms: Option<i64>,
    meta: Vec<u64>,
    as_of: Option<u64>,
    /// False when the scope restricts only by identity and record type.
    filters: bool,
}

impl Compiled {
    /// `None` when the scope names something this tenant has no vector of.
    fn new(points: &Points, scope: &Scope) -> Option<Compiled> {
        let identity = match &scope.identity {
            Some(i) => Some(*points.name_ids.get(i.as_str())?),
            None => None,
        };
        let segments: Vec<(u32, u64)> =
            scope.segments.iter().filter_map(|(s, hi)| points.name_ids.get(s.as_str()).map(|id| (*id, *hi))).collect();
        let sessions_scoped = !scope.segments.is_empty();
        if sessions_scoped && segments.is_empty() && scope.over == SearchOver::Events {
            return None;
        }
        let filters = sessions_scoped
            || !scope.kinds.is_empty()
            || !scope.roles.is_empty()
            || !scope.memory_kinds.is_empty()
            || scope.from_ms.is_some()
            || scope.to_ms.is_some()
            || !scope.meta_terms.is_empty()
            || scope.as_of.is_some();
        Some(Compiled {
            filters,
            identity,
            segments,
            sessions_scoped,
            over: scope.over,
            kinds: scope.kinds.clone(),
            roles: scope.roles.clone(),
            memory_kinds: scope.memory_kinds.clone(),
            from_ms: scope.from_ms,
            to_ms: scope.to_ms,
            meta: scope.meta_terms.iter().map(|t| fnv1a(t.as_bytes())).collect(),
            as_of: scope.as_of,
        })
    }

    fn matches(&self, points: &Points, id: u32) -> bool {
        let flags = points.flags[id as usize];
        let memory = flags & MEMORY != 0;
        if flags & LIVE == 0
            || (memory && self.over == SearchOver::Events)
            || (!memory && self.over == SearchOver::Memories)
        {
            return false;
        }
        if self.identity.is_some_and(|i| i != points.owner[id as usize]) {
            return false;
        }
        if !self.filters {
            return true;
        }
        let p = &points.meta[id as usize];
        if self.from_ms.is_some_and(|t| p.ts_ms < t) || self.to_ms.is_some_and(|t| p.ts_ms >= t) {
            return false;
        }
        if self.as_of.is_some_and(|a| p.change_seq > a) || !self.meta.iter().all(|m| p.meta.contains(m)) {
            return false;
        }
        if memory {
            self.memory_kinds.is_empty() || self.memory_kinds.contains(&p.kind)
        } else {
            (!self.sessions_scoped || self.segments.iter().any(|(s, hi)| *s == p.session && p.seq <= *hi))
                && (self.kinds.is_empty() || self.kinds.contains(&p.kind))
                && (self.roles.is_empty() || self.roles.contains(&p.role))
        }
    }
}

/// What [`Points::bounds`] needs of a query.
#[derive(Clone, Copy)]
struct Bounds {
    /// Relative rounding of a float sum of `dim` products (with margin).
    gamma: f32,
    /// The absolute error subnormal products can add (bounded by the smallest normal float
    /// per term: a subnormal bound would make every bound below a slow subnormal multiply).
    tiny: f32,
    /// The query's norm, rounded up.
    q_norm: f32,
    /// How far the integer query is from the query.
    e: f32,
}

impl Bounds {
    fn new(dim: usize, q: &[f32], query: &simd::Query) -> Bounds {
        Bounds {
            gamma: 1.1 * (dim as f32 + 2.0) * f32::EPSILON,
            tiny: 4.0 * (dim as f32 + 2.0) * f32::MIN_POSITIVE,
            // In f64: an f32 `q · q` underflows for tiny queries, and the bound needs |q| r.
            q_norm: (simd::norm_f64(q) as f32).next_up().next_up(),
            e: query.error,
        }
    }
}

/// The `k`-th largest of a stream of values, in one pass that mostly only compares: values
/// above a running floor are buffered, and the buffer is cut back to its `k` largest when
/// it fills.
struct KthLargest {
    k: usize,
    top: Vec<f32>,
    floor: f32,
}

impl KthLargest {
    fn new(k: usize) -> KthLargest {
        KthLargest { k, top: Vec::with_capacity(2 * k), floor: f32::NEG_INFINITY }
    }

    fn offer(&mut self, v: f32) {
        if v > self.floor || (self.top.len() < self.k && v >= self.floor) {
            self.top.push(v);
            if self.top.len() >= 2 * self.k {
                self.floor = self.cut();
            }
        }
    }

    /// A lower bound of the k-th largest value offered so far.
    fn floor(&self) -> f32 {
        self.floor
    }

    /// The k-th largest value offered (negative infinity when fewer were).
    fn kth(&mut self) -> f32 {
        if self.k == 0 {
            f32::INFINITY
        } else if self.top.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.cut()
        }
    }

    fn cut(&mut self) -> f32 {
        let k = self.k;
        self.top.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        self.top.truncate(k);
        self.top[k - 1]
    }
}

/// A stable 64-bit hash of a metadata term (FNV-1a), so snapshots stay valid across builds.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A candidate in a top-k heap: the smallest similarity on top.
#[derive(PartialEq)]
struct Candidate(f32, u32);

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: BinaryHeap is a max-heap and we want to pop the worst; ties by id.
        other.0.total_cmp(&self.0).then_with(|| self.1.cmp(&other.1))
    }
}

/// How a search was answered (for tests and stats).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Exact,
    Hnsw,
}

#[derive(Default)]
pub(crate) struct VectorIndex {
    tenants: RwLock<HashMap<String, Arc<TenantVectors>>>,
    tuning: VectorTuning,
}

impl std::fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorIndex").field("tenants", &self.tenants.read().len()).finish()
    }
}

impl VectorIndex {
    pub(crate) fn new(tuning: VectorTuning) -> Self {
        VectorIndex { tenants: RwLock::default(), tuning }
    }

    fn tenant(&self, tenant: &str, dim: usize, metric: Metric) -> Arc<TenantVectors> {
        if let Some(t) = self.tenants.read().get(tenant) {
            return Arc::clone(t);
        }
        let mut tenants = self.tenants.write();
        Arc::clone(tenants.entry(tenant.to_string()).or_insert_with(|| {
            Arc::new(TenantVectors {
                metric,
                points: RwLock::new(Points { dim, ..Points::default() }),
                graph_writes: Mutex::new(()),
            })
        }))
    }

    /// Adds the vector of `doc` (replacing an earlier one under the same key).
    pub(crate) fn add(&self, doc: &IndexDoc, metric: Metric) {
        let Some(vector) = &doc.vector else { return };
        let tv = self.tenant(&doc.tenant, vector.len(), metric);
        let mut v = vector.clone();
        if tv.metric == Metric::Cosine {
            normalize(&mut v);
        }
        let (graph, id) = {
            let mut p = tv.points.write();
            if v.len() != p.dim {
                // The tenant's dimension is fixed before any vector is stored; a mismatch here
                // means the index is stale. The next rebuild settles it.
                return;
            }
            remove_key(&mut p, &doc.key);
            let identity = match &doc.key {
                DocKey::Event { identity, .. } | DocKey::Memory { identity, .. } => p.intern(identity),
            };
            let (session, seq, memory) = match &doc.key {
                DocKey::Event { session, seq, .. } => (p.intern(session), *seq, None),
                DocKey::Memory { id, .. } => (NO_SESSION, 0, Some(Arc::clone(id))),
            };
            let meta = PointMeta {
                identity,
                session,
                seq,
                memory,
                kind: doc.kind,
                role: doc.role,
                ts_ms: doc.ts_ms,
                change_seq: doc.change_seq,
                meta: doc.meta_terms.iter().map(|t| fnv1a(t.as_bytes())).collect(),
            };
            let id = p.insert(&v, meta);
            if p.graph.is_some() {
                p.graph_points += 1;
            }
            (p.graph.clone(), id)
        };
        match graph {
            Some(g) => {
                {
                    let _writes = tv.graph_writes.lock();
                    g.insert_slice((&v, id as usize));
                }
                // The applier adds points one at a time in id order, so every point up to
                // this one is in `g` now.
                maybe_freeze(&tv, &g, id + 1);
            }
            None => self.maybe_build(&tv),
        }
    }

    pub(crate) fn remove(&self, tenant: &str, removal: &Removal<'_>) {
        if let Removal::Tenant = removal {
            self.tenants.write().remove(tenant);
            return;
        }
        let Some(tv) = self.tenants.read().get(tenant).cloned() else { return };
        {
            let mut p = tv.points.write();
            match removal {
                Removal::Doc(key) => remove_key(&mut p, key),
                Removal::Identity { identity } => {
                    let Some(&iid) = p.name_ids.get(*identity) else { return };
                    for id in p.by_identity.remove(&iid).unwrap_or_default() {
                        p.kill(id);
                    }
                    p.events.retain(|(i, _, _), _| *i != iid);
                    p.memories.retain(|(i, _), _| *i != iid);
                }
                Removal::Session { identity, session } => {
                    let (Some(&iid), Some(&sid)) = (p.name_ids.get(*identity), p.name_ids.get(*session)) else {
                        return;
                    };
                    let ids: Vec<u32> = p.by_identity.get(&iid).cloned().unwrap_or_default();
                    for id in ids {
                        if p.meta[id as usize].session == sid {
                            p.kill(id);
                        }
                    }
                    p.events.retain(|(i, s, _), _| !(*i == iid && *s == sid));
                }
                Removal::Tenant => {}
            }
        }
        self.maybe_build(&tv);
    }

    /// Takes over `other`'s contents (a rebuilt index), in one step for searches.
    pub(crate) fn replace(&self, other: VectorIndex) {
        *self.tenants.write() = other.tenants.into_inner();
    }

    /// Starts a background graph build when a tenant is past the exact-scan size without a
    /// graph, or its graph holds too many tombstones.
    fn maybe_build(&self, tv: &Arc<TenantVectors>) {
        {
            let mut p = tv.points.write();
            let wants = match p.graph {
                None => p.alive > self.tuning.exact_max,
                Some(_) => p.graph_dead as f64 > TOMBSTONE_RATIO * p.graph_points.max(1) as f64,
            };
            if !wants || p.building {
                return;
            }
            p.building = true;
        }
        let builder = Arc::clone(tv);
        let tuning = self.tuning;
        let spawned =
            std::thread::Builder::new().name("engram-hnsw".into()).spawn(move || build_graph(&builder, tuning));
        if spawned.is_err() {
            // No thread: searches stay exact; the next write tries again.
            tv.points.write().building = false;
        }
    }

    /// The nearest `k` points of `scope` to `query`, nearest first, with similarities.
    pub(crate) fn search(
        &self,
        query: &[f32],
        scope: &Scope,
        k: usize,
        ef: Option<usize>,
    ) -> Result<(Vec<(DocKey, f32)>, Method)> {
        let Some(tv) = self.tenants.read().get(&scope.tenant).cloned() else { return Ok((Vec::new(), Method::Exact)) };
        let p = tv.points.read();
        if query.len() != p.dim {
            return Err(Error::invalid(
                "vector",
                format!("has dimension {}; the tenant's dimension is {}", query.len(), p.dim),
            ));
        }
        let mut q = query.to_vec();
        if tv.metric == Metric::Cosine {
            normalize(&mut q);
        }
        let Some(scope) = Compiled::new(&p, scope) else { return Ok((Vec::new(), Method::Exact)) };
        if k == 0 {
            return Ok((Vec::new(), Method::Exact));
        }
        let candidates = match scope.identity {
            Some(i) => p.by_identity.get(&i).map_or(0, Vec::len),
            None => p.meta.len(),
        };
        if let Some(flat) = p.flat.as_ref().filter(|_| candidates > self.tuning.exact_max) {
            let ef = ef.unwrap_or(self.tuning.hnsw_ef_search).max(k);
            let l2 = tv.metric == Metric::L2;
            let query = simd::Query::new(&q);
            let walk = flat.search(&query, &p.codes, &p.scale, l2, ef, |id| scope.matches(&p, id));
            // The walk ranks on the 8-bit codes: rescore its best in `f32`, and add the best
            // of the points added since the graph was frozen.
            let mut hits = p.rescore(tv.metric, &q, &query, walk, k);
            let tail: Vec<u32> = (flat.upto()..p.meta.len() as u32).collect();
            hits.extend(p.scan(tv.metric, &q, &tail, &scope, k));
            hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            hits.truncate(k);
            // A filter that leaves few points can starve the walk; then the scope is small
            // enough, or rare enough, to answer exactly.
            if hits.len() >= k {
                return Ok((hits.into_iter().map(|(id, s)| (p.key_of(id), s)).collect(), Method::Hnsw));
            }
        }
        let all: Vec<u32>;
        let ids: &[u32] = match scope.identity {
            Some(i) => p.by_identity.get(&i).map_or(&[], Vec::as_slice),
            None => {
                all = (0..p.meta.len() as u32).collect();
                &all
            }
        };
        // One pass, bound by memory bandwidth (splitting it across threads measured slower
        // on two cores).
        let hits = p.scan(tv.metric, &q, ids, &scope, k).into_iter().map(|(id, s)| (p.key_of(id), s)).collect();
        Ok((hits, Method::Exact))
    }

    /// The key of every live point, by tenant.
    pub(crate) fn all_keys(&self) -> Vec<(String, DocKey)> {
        let mut out = Vec::new();
        for (tenant, tv) in self.tenants.read().iter() {
            let p = tv.points.read();
            for id in 0..p.meta.len() {
                if p.is_alive(id) {
                    out.push((tenant.clone(), p.key_of(id as u32)));
                }
            }
        }
        out
    }

    pub(crate) fn stats(&self) -> VectorStats {
        let mut s = VectorStats::default();
        for tv in self.tenants.read().values() {
            let p = tv.points.read();
            s.points += p.alive as u64;
            s.tombstones += (p.meta.len() - p.alive) as u64;
            if p.graph.is_some() {
                s.graphs += 1;
                s.graph_points += p.graph_points as u64;
            }
        }
        s
    }

    /// Waits until no graph build or freeze is running (tests and benchmarks).
    pub(crate) fn wait_for_graphs(&self) {
        loop {
            let building = self.tenants.read().values().any(|t| {
                let p = t.points.read();
                p.building || p.freezing
            });
            if !building {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Writes the snapshot file atomically (temporary file, sync, rename, sync directory).
    pub(crate) fn save(&self, path: &Path, mark: u64, faults: Option<&IoFaults>) -> Result<()> {
        let mut snapshot = SnapshotRecord { mark, tenants: Vec::new() };
        for (name, tv) in self.tenants.read().iter() {
            let p = tv.points.read();
            let mut t =
                TenantSnapshot { tenant: name.clone(), dim: p.dim as u32, metric: tv.metric as i32, points: vec![] };
            for (id, m) in p.meta.iter().enumerate().filter(|(id, _)| p.is_alive(*id)) {
                t.points.push(PointSnapshot {
                    identity: p.names[m.identity as usize].to_string(),
                    session: if m.session == NO_SESSION {
                        String::new()
                    } else {
                        p.names[m.session as usize].to_string()
                    },
                    seq: m.seq,
                    memory: m.memory.as_deref().map(str::to_string),
                    kind: m.kind,
                    role: m.role,
                    ts_ms: m.ts_ms,
                    change_seq: m.change_seq,
                    meta: m.meta.to_vec(),
                    vector: p.vector(id as u32).to_vec(),
                });
            }
            snapshot.tenants.push(t);
        }
        let bytes = frame::encode(&snapshot);
        write_atomically(path, &bytes, faults)
            .map_err(|e| Error::Index(format!("vector snapshot {}: {e}", path.display())))
    }

    /// Loads a snapshot; `None` when it is missing or damaged (then the caller rebuilds).
    pub(crate) fn load(path: &Path, tuning: VectorTuning) -> Option<(VectorIndex, u64)> {
        let bytes = std::fs::read(path).ok()?;
        let snapshot: SnapshotRecord = frame::decode(&bytes).ok()?;
        let index = VectorIndex::new(tuning);
        for t in snapshot.tenants {
            let metric = Metric::from_i32(t.metric)?;
            let tv = index.tenant(&t.tenant, t.dim as usize, metric);
            let mut p = tv.points.write();
            for point in t.points {
                if point.vector.len() != p.dim {
                    return None;
                }
                let identity = p.intern(&point.identity);
                let (session, memory) = match point.memory {
                    Some(m) => (NO_SESSION, Some(Arc::<str>::from(m))),
                    None => (p.intern(&point.session), None),
                };
                let meta = PointMeta {
                    identity,
                    session,
                    seq: point.seq,
                    memory,
                    kind: point.kind,
                    role: point.role,
                    ts_ms: point.ts_ms,
                    change_seq: point.change_seq,
                    meta: point.meta.into_boxed_slice(),
                };
                p.insert(&point.vector, meta);
            }
            drop(p);
            index.maybe_build(&tv);
        }
        Some((index, snapshot.mark))
    }
}

fn remove_key(p: &mut Points, key: &DocKey) {
    let found = match key {
        DocKey::Event { identity, session, seq } => {
            match (p.name_ids.get(&**identity).copied(), p.name_ids.get(&**session).copied()) {
                (Some(i), Some(s)) => p.events.remove(&(i, s, *seq)),
                _ => None,
            }
        }
        DocKey::Memory { identity, id } => match p.name_ids.get(&**identity).copied() {
            Some(i) => p.memories.remove(&(i, Arc::clone(id))),
            None => None,
        },
    };
    if let Some(id) = found {
        p.kill(id);
    }
}

/// Builds a graph over the live points, then installs it (catching up with points added
/// meanwhile under the write lock).
fn build_graph(tv: &TenantVectors, tuning: VectorTuning) {
    const CHUNK: usize = 2048;
    let expected = tv.points.read().alive;
    let graph = Arc::new(Graph::new(
        tuning.hnsw_m,
        expected.max(1024),
        HNSW_MAX_LAYER,
        tuning.hnsw_ef_construction,
        MetricDistance(tv.metric),
    ));
    let mut next = 0usize;
    let mut inserted: Vec<usize> = Vec::with_capacity(expected);
    loop {
        let chunk: Vec<(Vec<f32>, usize)> = {
            let p = tv.points.read();
            if p.meta.len().saturating_sub(next) < CHUNK {
                break;
            }
            let end = next + CHUNK;
            let chunk = (next..end).filter(|id| p.is_alive(*id)).map(|id| (p.vector(id as u32).to_vec(), id)).collect();
            next = end;
            chunk
        };
        let refs: Vec<(&[f32], usize)> = chunk.iter().map(|(v, id)| (v.as_slice(), *id)).collect();
        graph.parallel_insert_slice(&refs);
        inserted.extend(refs.iter().map(|(_, id)| *id));
    }
    let mut p = tv.points.write();
    for id in next..p.meta.len() {
        if p.is_alive(id) {
            graph.insert_slice((p.vector(id as u32), id));
            inserted.push(id);
        }
    }
    // Points deleted while the graph was built are tombstones in it too.
    p.graph_dead = inserted.iter().filter(|id| !p.is_alive(**id)).count();
    p.graph_points = inserted.len();
    p.graph = Some(Arc::clone(&graph));
    let upto = p.meta.len() as u32;
    drop(p);
    // Searches stay exact (or on the previous frozen graph) until the freeze is in.
    let flat = {
        let _writes = tv.graph_writes.lock();
        FlatGraph::freeze(&graph, upto)
    };
    let mut p = tv.points.write();
    if p.graph.as_ref().is_some_and(|g| Arc::ptr_eq(g, &graph)) {
        p.flat = Some(Arc::new(flat));
    }
    p.building = false;
}

/// Freezes `graph` again in the background once `upto` (every point below it is in the
/// graph) is `REFREEZE_TAIL` past the frozen copy's.
fn maybe_freeze(tv: &Arc<TenantVectors>, graph: &Arc<Graph>, upto: u32) {
    {
        let mut p = tv.points.write();
        let frozen = p.flat.as_ref().map_or(0, |f| f.upto());
        let current = p.graph.as_ref().is_some_and(|g| Arc::ptr_eq(g, graph));
        if !current || p.building || p.freezing || upto.saturating_sub(frozen) < REFREEZE_TAIL.max(frozen / 32) {
            return;
        }
        p.freezing = true;
    }
    let (tv, graph) = (Arc::clone(tv), Arc::clone(graph));
    let spawned = std::thread::Builder::new().name("engram-hnsw-freeze".into()).spawn({
        let tv = Arc::clone(&tv);
        move || {
            let flat = {
                let _writes = tv.graph_writes.lock();
                FlatGraph::freeze(&graph, upto)
            };
            let mut p = tv.points.write();
            let newer = p.flat.as_ref().is_none_or(|f| f.upto() < upto);
            if newer && p.graph.as_ref().is_some_and(|g| Arc::ptr_eq(g, &graph)) {
                p.flat = Some(Arc::new(flat));
            }
            p.freezing = false;
        }
    });
    if spawned.is_err() {
        // No thread: the tail stays exact; a later add tries again.
        tv.points.write().freezing = false;
    }
}

fn write_atomically(path: &Path, bytes: &[u8], faults: Option<&IoFaults>) -> std::io::Result<()> {
    let tmp: PathBuf = path.with_extension("tmp");
    {
        faults::check(faults, IoOp::Open, &tmp)?;
        let mut f = std::fs::File::create(&tmp)?;
        faults::check(faults, IoOp::Write, &tmp)?;
        f.write_all(bytes)?;
        faults::check(faults, IoOp::Sync, &tmp)?;
        f.sync_all()?;
    }
    crate::failpoint::hit("vector-snapshot");
    faults::check(faults, IoOp::Rename, path)?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        faults::check(faults, IoOp::SyncDir, dir)?;
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[derive(Clone, PartialEq, ::prost::Message)]
struct SnapshotRecord {
    /// The applied changelog mark the snapshot holds everything up to.
    #[prost(uint64, tag = "1")]
    mark: u64,
    #[prost(message, repeated, tag = "2")]
    tenants: Vec<TenantSnapshot>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
struct TenantSnapshot {
    #[prost(string, tag = "1")]
    tenant: String,
    #[prost(uint32, tag = "2")]
    dim: u32,
    #[prost(int32, tag = "3")]
    metric: i32,
    #[prost(message, repeated, tag = "4")]
    points: Vec<PointSnapshot>,
}

#[derive(Clone, PartialEq, ::prost::Message)]
struct PointSnapshot {
    #[prost(string, tag = "1")]
    identity: String,
    #[prost(string, tag = "2")]
    session: String,
    #[prost(uint64, tag = "3")]
    seq: u64,
    #[prost(string, optional, tag = "4")]
    memory: Option<String>,
    #[prost(int32, tag = "5")]
    kind: i32,
    #[prost(int32, tag = "6")]
    role: i32,
    #[prost(int64, tag = "7")]
    ts_ms: i64,
    #[prost(uint64, tag = "8")]
    change_seq: u64,
    #[prost(fixed64, repeated, tag = "9")]
    meta: Vec<u64>,
    #[prost(float, repeated, tag = "10")]
    vector: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_rng as rng;

    fn meta(identity: u32, seq: u64) -> PointMeta {
        PointMeta {
            identity,
            session: 0,
            seq,
            memory: None,
            kind: 0,
            role: 0,
            ts_ms: 0,
            change_seq: seq,
            meta: Box::new([]),
        }
    }

    fn doc(identity: &str, seq: u64, vector: Vec<f32>) -> IndexDoc {
        IndexDoc {
            tenant: "t".into(),
            key: DocKey::Event { identity: identity.into(), session: "s".into(), seq },
            kind: 0,
            role: 0,
            ts_ms: 0,
            change_seq: seq,
            text: String::new(),
            meta_terms: Vec::new(),
            vector: Some(vector),
        }
    }

    fn seq_of(key: &DocKey) -> u64 {
        match key {
            DocKey::Event { seq, .. } => *seq,
            DocKey::Memory { .. } => u64::MAX,
        }
    }

    /// Past `exact_max`, searches walk the frozen graph (and scan the points added since it
    /// was frozen): every point finds itself, in the whole tenant and in its identity, a
    /// deleted point is never returned, and the graph is frozen again as it grows.
    #[test]
    fn the_frozen_graph_walk_finds_every_point_including_ones_added_after_the_freeze() {
        let mut rng = rng::Rng::seeded("the_frozen_graph_walk");
        let tuning = VectorTuning { exact_max: 200, hnsw_ef_construction: 64, ..VectorTuning::default() };
        let index = VectorIndex::new(tuning);
        let dim = 16;
        let identity = |seq: u64| if seq.is_multiple_of(3) { "a" } else { "b" };
        let mut vectors = Vec::new();
        let first = 3000u64;
        for seq in 1..=first {
            vectors.push(rng.vector(dim));
            index.add(&doc(identity(seq), seq, vectors[seq as usize - 1].clone()), Metric::Cosine);
        }
        index.wait_for_graphs();
        let frozen = |index: &VectorIndex| {
            let tv = index.tenants.read().get("t").cloned().expect("tenant");
            let p = tv.points.read();
            p.flat.as_ref().map(|f| f.upto())
        };
        // The build started at exact_max and froze what it had; later points are the tail.
        let before = frozen(&index).expect("a frozen graph");
        // Added after the freeze: found through the exact tail until the next freeze.
        let more = 600u64;
        for seq in first + 1..=first + more {
            vectors.push(rng.vector(dim));
            index.add(&doc(identity(seq), seq, vectors[seq as usize - 1].clone()), Metric::Cosine);
        }
        index.remove("t", &Removal::Doc(&DocKey::Event { identity: identity(7).into(), session: "s".into(), seq: 7 }));
        let check = |index: &VectorIndex, vectors: &[Vec<f32>]| {
            for (i, v) in vectors.iter().enumerate() {
                let seq = i as u64 + 1;
                let tenant = Scope { tenant: "t".into(), over: SearchOver::Both, ..Scope::default() };
                let (hits, method) = index.search(v, &tenant, 1, None).expect("search");
                assert_eq!(method, Method::Hnsw);
                let own = Scope { identity: Some(identity(seq).into()), ..tenant };
                let (in_identity, _) = index.search(v, &own, 3, None).expect("search");
                if seq == 7 {
                    assert!(hits.iter().chain(&in_identity).all(|(k, _)| seq_of(k) != 7), "a deleted point came back");
                    continue;
                }
                assert_eq!(hits.iter().map(|(k, _)| seq_of(k)).collect::<Vec<_>>(), vec![seq], "point {seq}");
                assert_eq!(seq_of(&in_identity[0].0), seq, "point {seq} in its identity");
                for (k, _) in &in_identity {
                    assert_eq!(identity(seq_of(k)), identity(seq), "a hit from another identity");
                }
            }
        };
        check(&index, &vectors);
        // Past REFREEZE_TAIL new points, the graph is frozen again.
        let target = first + more + u64::from(REFREEZE_TAIL);
        for seq in first + more + 1..=target {
            vectors.push(rng.vector(dim));
            index.add(&doc(identity(seq), seq, vectors[seq as usize - 1].clone()), Metric::Cosine);
        }
        index.wait_for_graphs();
        assert!(frozen(&index).is_some_and(|upto| upto > before), "frozen again: {:?}", frozen(&index));
        check(&index, &vectors);
    }

    /// Rescoring a walk's points gives exactly the best k of them by their `f32` scores,
    /// near-ties included: which points are rescored follows from the codes' error bounds,
    /// not from a count.
    #[test]
    fn rescoring_a_walk_keeps_its_best_k_in_f32() {
        let mut rng = rng::Rng::seeded("rescoring_a_walk_keeps_its_best_k_in_f32");
        let kernel = Kernel::detect();
        for metric in [Metric::Dot, Metric::L2] {
            let mut points = Points { dim: 24, ..Points::default() };
            // Clusters of near-duplicates: the codes cannot order a cluster's points.
            let centers: Vec<Vec<f32>> = (0..6).map(|_| rng.vector(24)).collect();
            for i in 0..900 {
                let v: Vec<f32> = centers[i % centers.len()].iter().map(|c| c + 1e-4 * rng.unit()).collect();
                points.insert(&v, meta(0, i as u64 + 1));
            }
            let ids: Vec<u32> = (0..900).collect();
            for (n, center) in centers.iter().enumerate() {
                let q: Vec<f32> = center.iter().map(|c| c + 1e-3 * rng.unit()).collect();
                let query = simd::Query::new(&q);
                let mut scores = Vec::new();
                kernel.scores(&query, &points.codes, &points.scale, &ids, metric == Metric::L2, &mut scores);
                // As the walk gives them: distances on the codes, nearest first.
                let mut walk: Vec<(f32, u32)> =
                    ids.iter().zip(&scores).map(|(id, s)| (if metric == Metric::L2 { *s } else { -*s }, *id)).collect();
                walk.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                let by_score = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
                let mut got = points.rescore(metric, &q, &query, walk, 40);
                got.sort_by(by_score);
                got.truncate(40);
                let mut want: Vec<(u32, f32)> =
                    ids.iter().map(|id| (*id, similarity(metric, &q, points.vector(*id)))).collect();
                want.sort_by(by_score);
                want.truncate(40);
                assert_eq!(got, want, "{metric:?}, query near center {n}");
            }
            // A walk shorter than k comes back whole; an empty one, empty.
            let q = centers[0].clone();
            let query = simd::Query::new(&q);
            let short: Vec<(f32, u32)> = vec![(0.5, 7), (0.25, 3)];
            let mut got: Vec<u32> =
                points.rescore(metric, &q, &query, short, 40).into_iter().map(|(id, _)| id).collect();
            got.sort_unstable();
            assert_eq!(got, vec![3, 7], "{metric:?}");
            assert!(points.rescore(metric, &q, &query, Vec::new(), 40).is_empty());
            assert!(points.rescore(metric, &q, &query, vec![(0.5, 7)], 0).is_empty());
        }
    }

    /// A vector with one component far larger than the rest (its codes keep little of the
    /// rest) still finds itself: the walk's best candidates are rescored in `f32`.
    #[test]
    fn the_graph_walk_finds_vectors_of_uneven_magnitudes() {
        let mut rng = rng::Rng::seeded("the_graph_walk_finds_vectors_of_uneven_magnitudes");
        let tuning = VectorTuning { exact_max: 100, hnsw_ef_construction: 64, ..VectorTuning::default() };
        let index = VectorIndex::new(tuning);
        let vectors: Vec<Vec<f32>> = (0..1200)
            .map(|i| {
                let mut v = rng.vector(8);
                if i % 5 == 0 {
                    v[0] = 1e5 + 1e3 * rng.unit();
                }
                v
            })
            .collect();
        for (i, v) in vectors.iter().enumerate() {
            index.add(&doc("a", i as u64 + 1, v.clone()), Metric::L2);
        }
        index.wait_for_graphs();
        // Reloaded from its snapshot, the graph is built over every point at once, so the
        // frozen graph covers them all (no exact tail).
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vectors.snap");
        index.save(&path, 1, None).expect("save");
        let (index, _) = VectorIndex::load(&path, tuning).expect("load");
        index.wait_for_graphs();
        let covered = index.tenants.read().get("t").and_then(|t| t.points.read().flat.as_ref().map(|f| f.upto()));
        assert_eq!(covered, Some(vectors.len() as u32));
        let tenant = Scope { tenant: "t".into(), over: SearchOver::Both, ..Scope::default() };
        for (i, v) in vectors.iter().enumerate() {
            let (hits, method) = index.search(v, &tenant, 1, None).expect("search");
            assert_eq!(method, Method::Hnsw);
            assert_eq!(seq_of(&hits[0].0), i as u64 + 1, "point {i}");
        }
    }

    #[test]
    fn kth_largest_matches_a_sort() {
        let mut rng = rng::Rng::seeded("kth_largest_matches_a_sort");
        for _ in 0..500 {
            let n = rng.below(300) as usize;
            let mut values: Vec<f32> = (0..n).map(|_| (rng.below(50) as f32) - 25.0).collect();
            if n > 0 && rng.below(4) == 0 {
                values[0] = f32::NEG_INFINITY;
            }
            let k = 1 + rng.below(40) as usize;
            let mut kth = KthLargest::new(k);
            values.iter().for_each(|v| kth.offer(*v));
            let got = kth.kth();
            values.sort_by(|a, b| b.total_cmp(a));
            let want = values.get(k - 1).copied().unwrap_or(f32::NEG_INFINITY);
            assert_eq!(got.to_bits(), want.to_bits(), "n {n}, k {k}");
        }
    }

    /// The two-pass scan (8-bit codes, then `f32` for the candidates) must give exactly
    /// what scoring every point in `f32` gives, also when many vectors are closer together
    /// than the codes' precision, span magnitudes from subnormal to huge, or are zero.
    #[test]
    fn the_scan_returns_exactly_the_f32_top_k() {
        let mut rng = rng::Rng::seeded("the_scan_returns_exactly_the_f32_top_k");
        for round in 0..60 {
            let metric = [Metric::Cosine, Metric::Dot, Metric::L2][round % 3];
            let dim = [384, 3, 50, 37, 16][round % 5];
            let mut points = Points { dim, ..Points::default() };
            points.intern("a");
            points.intern("b");
            let n = 1 + rng.below(700) as usize;
            let centers: Vec<Vec<f32>> = (0..1 + rng.below(4)).map(|_| rng.vector(dim)).collect();
            for seq in 0..n as u64 {
                let center = &centers[rng.below(centers.len() as u64) as usize];
                // Near-duplicates: noise far below the codes' resolution, or near it.
                let noise = [1e-5, 1e-3, 0.1][rng.below(3) as usize];
                let mut v: Vec<f32> = center.iter().map(|c| c + noise * rng.unit()).collect();
                match rng.below(24) {
                    0 if metric != Metric::Cosine => v[0] = 1e6 * rng.unit(),
                    1 => v.iter_mut().for_each(|x| *x *= 1e-6),
                    2 if metric != Metric::Cosine => v.iter_mut().for_each(|x| *x *= 1e-40),
                    3 if metric != Metric::Cosine => v.fill(0.0),
                    4 if metric != Metric::Cosine => v.iter_mut().for_each(|x| *x *= 1e15),
                    // Exactly its codes (no residual), one code step from its neighbours:
                    // what separates them is within the query's own quantization error.
                    5..=9 if metric != Metric::Cosine => {
                        let mut codes = vec![0i8; dim];
                        let scale = simd::quantize(center, &mut codes);
                        let i = rng.below(dim as u64) as usize;
                        codes[i] = codes[i].saturating_add(rng.below(3) as i8 - 1);
                        v = codes.iter().map(|c| scale * f32::from(*c)).collect();
                    }
                    _ => {}
                }
                if metric == Metric::Cosine {
                    normalize(&mut v);
                }
                points.insert(&v, meta(rng.below(2) as u32, seq));
            }
            let mut q = centers[0].iter().map(|c| c + 0.01 * rng.unit()).collect::<Vec<f32>>();
            if metric == Metric::Cosine {
                normalize(&mut q);
            }
            // A query so small that `q · q` underflows in f32.
            if metric == Metric::Dot && rng.below(3) == 0 {
                q.iter_mut().for_each(|x| *x *= 1e-25);
            }
            let identity = (rng.below(2) == 0).then(|| ["a", "b"][rng.below(2) as usize].to_string());
            let scope = Scope { identity, over: SearchOver::Both, ..Scope::default() };
            let scope = Compiled::new(&points, &scope).expect("names interned");
            let k = 1 + rng.below(25) as usize;
            let ids: Vec<u32> = (0..n as u32).collect();

            let got = points.scan(metric, &q, &ids, &scope, k);
            let mut want: Vec<(u32, f32)> = ids
                .iter()
                .filter(|id| scope.matches(&points, **id))
                .map(|id| (*id, similarity(metric, &q, points.vector(*id))))
                .collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            want.truncate(k);
            let scores = |hits: &[(u32, f32)]| hits.iter().map(|(_, s)| s.to_bits()).collect::<Vec<_>>();
            assert_eq!(scores(&got), scores(&want), "round {round}: {metric:?}, dim {dim}, n {n}, k {k}");
            for (id, s) in &got {
                assert_eq!(similarity(metric, &q, points.vector(*id)).to_bits(), s.to_bits());
                assert!(scope.matches(&points, *id));
            }
        }
    }

    #[test]
    fn dot_and_l2_match_the_plain_loops() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32).sin()).collect();
        let plain_dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let plain_l2: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
        assert!((dot(&a, &b) - plain_dot).abs() < 1e-3);
        assert!((l2_squared(&a, &b) - plain_l2).abs() < 1e-3);
    }

    #[test]
    fn distances_are_never_negative() {
        let d = MetricDistance(Metric::Dot);
        assert!(d.eval(&[100.0, 100.0], &[100.0, 100.0]) >= 0.0);
        assert!(d.eval(&[-100.0], &[100.0]) >= 0.0);
        let c = MetricDistance(Metric::Cosine);
        assert!(c.eval(&[1.0, 0.0], &[1.0, 0.0]) >= 0.0);
    }
}
