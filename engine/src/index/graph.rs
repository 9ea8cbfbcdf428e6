//! A frozen copy of an HNSW graph in flat arrays, and the search walk over it.
//!
//! hnsw_rs builds and extends the graph; its own search keeps a hashed visited set of
//! `Arc`s, allocates per candidate and takes a lock per expansion, which cost more than the
//! distances. The walk here reads neighbour lists from one array (level 0) and small maps
//! (upper levels), marks visits in a bitset, and scores each expanded node's neighbours in
//! one batch on the 8-bit codes (the exact scan's kernels, with prefetch).
//!
//! A frozen graph covers the point ids below its `upto`; points added later are not in it
//! and the caller scans them exactly until the next freeze.

use super::simd::{self, Kernel, Query};
use hnsw_rs::prelude::{Distance, Hnsw};
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

/// A frozen graph.
#[derive(Debug, Default)]
pub(crate) struct FlatGraph {
    /// Level-0 neighbours, `stride` slots per point (point `i`'s at `i * stride`), unused
    /// slots [`NONE`]. A fixed block per point: the walk finds a list with one memory
    /// access, not two dependent ones (an offsets array, then the list), and can ask for
    /// the next candidate's list ahead of time. Both were cache misses the walk waited on.
    level0: Vec<u32>,
    stride: usize,
    /// Levels 1 and up (index 0 is level 1): neighbours of each point on that level.
    upper: Vec<HashMap<u32, Box<[u32]>>>,
    /// A point on the top level; `None` for an empty graph.
    entry: Option<u32>,
    /// Every live point with a smaller id is in the graph; none with this id or larger is.
    upto: u32,
}

/// An unused neighbour slot.
const NONE: u32 = u32::MAX;

/// A distance (smaller is nearer) ordered by `total_cmp`, with its point id.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Near(f32, u32);

impl Eq for Near {}

impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Near {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

impl FlatGraph {
    /// Copies the graph's links among point ids below `upto`. The caller guarantees that
    /// every point below `upto` that was live when inserted is in `graph`, and that nothing
    /// is inserted into `graph` meanwhile.
    pub(crate) fn freeze<D: Distance<f32> + Send + Sync>(graph: &Hnsw<'_, f32, D>, upto: u32) -> FlatGraph {
        let mut flat = FlatGraph { upto, ..FlatGraph::default() };
        if graph.get_nb_point() == 0 {
            return flat;
        }
        let mut level0: Vec<Box<[u32]>> = vec![Box::default(); upto as usize];
        let mut entry: Option<(u8, u32)> = None;
        let points = graph.get_point_indexation();
        let layers = (0..=usize::from(points.get_max_level_observed())).flat_map(|l| points.get_layer_iterator(l));
        for point in layers {
            let Ok(id) = u32::try_from(point.get_origin_id()) else { continue };
            if id >= upto {
                continue;
            }
            let level = point.get_point_id().0;
            if entry.is_none_or(|(l, _)| level > l) {
                entry = Some((level, id));
            }
            for (l, layer) in point.get_neighborhood_id().into_iter().enumerate() {
                let ids: Box<[u32]> =
                    layer.iter().filter_map(|n| u32::try_from(n.d_id).ok()).filter(|n| *n < upto).collect();
                if l == 0 {
                    level0[id as usize] = ids;
                } else if l <= usize::from(level) {
                    if flat.upper.len() < l {
                        flat.upper.resize_with(l, HashMap::new);
                    }
                    flat.upper[l - 1].insert(id, ids);
                }
            }
        }
        if let Some((level, id)) = entry {
            flat.upper.truncate(usize::from(level));
            flat.entry = Some(id);
        }
        flat.stride = level0.iter().map(|l| l.len()).max().unwrap_or(0).max(1);
        flat.level0 = vec![NONE; upto as usize * flat.stride];
        for (block, list) in flat.level0.chunks_exact_mut(flat.stride).zip(&level0) {
            block[..list.len()].copy_from_slice(list);
        }
        flat
    }

    /// Point `id`'s level-0 block (`stride` slots; the neighbours, then [`NONE`]s).
    fn block(&self, id: u32) -> &[u32] {
        &self.level0[id as usize * self.stride..][..self.stride]
    }

    pub(crate) fn upto(&self) -> u32 {
        self.upto
    }

    /// Up to `ef` points that `accept` takes, nearest to `q` first, as (distance, id) on
    /// the 8-bit codes (`codes`, `q.len()` per point, scaled by `scales`): `|q - v|²` when
    /// `l2`, else `-q·v`.
    pub(crate) fn search(
        &self,
        q: &Query,
        codes: &[i8],
        scales: &[f32],
        l2: bool,
        ef: usize,
        accept: impl Fn(u32) -> bool,
    ) -> Vec<(f32, u32)> {
        let Some(mut entry) = self.entry else { return Vec::new() };
        let kernel = Kernel::detect();
        let mut scores = Vec::with_capacity(64);
        let distances = |ids: &[u32], out: &mut Vec<f32>| {
            out.clear();
            kernel.scores(q, codes, scales, ids, l2, out);
            if !l2 {
                out.iter_mut().for_each(|d| *d = -*d);
            }
        };
        distances(&[entry], &mut scores);
        let mut entry_distance = scores[0];
        // Greedy descent through the upper levels.
        for level in self.upper.iter().rev() {
            while let Some(next) = level.get(&entry) {
                distances(next, &mut scores);
                let best = next.iter().zip(&scores).min_by(|a, b| a.1.total_cmp(b.1));
                match best {
                    Some((id, d)) if *d < entry_distance => (entry, entry_distance) = (*id, *d),
                    _ => break,
                }
            }
        }
        // Best-first search on level 0: `candidates` to expand (nearest first), `found` the
        // best `ef` accepted points (farthest on top).
        let mut visited = vec![0u64; (self.upto as usize).div_ceil(64)];
        let mut visit = |id: u32| {
            let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
            let seen = visited[word] & bit != 0;
            visited[word] |= bit;
            !seen
        };
        visit(entry);
        let mut candidates = BinaryHeap::from([Reverse(Near(entry_distance, entry))]);
        let mut found: BinaryHeap<Near> = BinaryHeap::with_capacity(ef + 1);
        if accept(entry) {
            found.push(Near(entry_distance, entry));
        }
        let mut fresh: Vec<u32> = Vec::with_capacity(64);
        while let Some(Reverse(Near(d, id))) = candidates.pop() {
            if found.len() >= ef && found.peek().is_some_and(|worst| d > worst.0) {
                break;
            }
            fresh.clear();
            fresh.extend(self.block(id).iter().copied().take_while(|n| *n != NONE).filter(|n| visit(*n)));
            // The nearest waiting candidate is usually the next one expanded: ask for its
            // list while this batch is scored.
            if let Some(Reverse(Near(_, next))) = candidates.peek() {
                simd::prefetch(self.block(*next));
            }
            distances(&fresh, &mut scores);
            for (&n, &d) in fresh.iter().zip(&scores) {
                let full = found.len() >= ef;
                if full && found.peek().is_some_and(|worst| d >= worst.0) {
                    continue;
                }
                candidates.push(Reverse(Near(d, n)));
                if accept(n) {
                    found.push(Near(d, n));
                    if found.len() > ef {
                        found.pop();
                    }
                }
            }
        }
        found.into_sorted_vec().into_iter().map(|Near(d, id)| (d, id)).collect()
    }
}
