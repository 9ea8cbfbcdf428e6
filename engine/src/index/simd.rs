//! Scores of a query against vectors stored as 8-bit codes with a scale per vector
//! (`v ≈ scale · code`): for dot products the query is itself held as 16-bit integers
//! ([`Query`]) and `q · code` is an exact integer sum; for L2, `|q - scale · code|²` in
//! `f32`. The exact scan's first pass and the graph walk use them.
//!
//! A code is a quarter of an `f32`, and multiplying 16-bit by 8-bit integers takes a third
//! of the instructions of widening bytes to floats. That needs instructions baseline
//! x86-64 lacks (AVX2 or AVX-512BW), so the kernel is picked at run time, once per scan
//! ([`Kernel::detect`]), with a portable fallback that gives the same results (the same
//! integers; L2 up to rounding).
//!
//! One of the two modules of the workspace with `unsafe` code (the other is the encoder's
//! gemm wrapper, `embed/matmul.rs`): the intrinsics' loads take raw pointers, and calling a
//! `#[target_feature]` function is sound only on a CPU that has the feature.
#![allow(unsafe_code)]

/// A vector's 8-bit codes and their scale: `code[i] = round(v[i] / scale)`, with `scale`
/// the largest magnitude over 127 (zero codes and scale for a zero vector).
pub(crate) fn quantize(v: &[f32], codes: &mut [i8]) -> f32 {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = max / 127.0;
    if !(scale > 0.0 && scale.is_finite()) {
        codes.fill(0);
        return 0.0;
    }
    for (c, x) in codes.iter_mut().zip(v) {
        *c = (x / scale).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// A query as the kernels take it: zero-padded to whole [`BLOCK`]s, and for dot products
/// also as 16-bit integers `ints` with `q ≈ scale · ints`, within `error` (an upper bound
/// of `|q - scale · ints|`).
pub(crate) struct Query {
    floats: Vec<f32>,
    ints: Vec<i16>,
    scale: f32,
    pub(crate) error: f32,
}

/// `|v|` computed in f64: no underflow or overflow for any `f32` vector.
pub(crate) fn norm_f64(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

impl Query {
    /// `q` (any length up to `limits::MAX_VECTOR_DIM`), padded.
    pub(crate) fn new(q: &[f32]) -> Query {
        let mut floats = q.to_vec();
        floats.resize(q.len().next_multiple_of(BLOCK), 0.0);
        // The largest integer such that no sum of `len` products with codes (|code| <= 127)
        // can overflow an i32: the kernels' sums are then exact.
        let top = (i32::MAX as usize / (floats.len().max(1) * 127)).min(i16::MAX as usize) as f32;
        let max = q.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = max / top;
        let mut ints = vec![0i16; floats.len()];
        if !(scale > 0.0 && scale.is_finite()) {
            // All zeros: the error is the whole query (its norm in f64, so a tiny query's
            // does not underflow).
            return Query { error: (norm_f64(q) as f32).next_up().next_up(), floats, ints, scale: 0.0 };
        }
        for (i, x) in ints.iter_mut().zip(q) {
            *i = (x / scale).round().clamp(-top, top) as i16;
        }
        // In f64 each `scale · int` is exact (24 + 16 bits): one step up covers the rest.
        let e2: f64 = ints.iter().zip(q).map(|(i, x)| (f64::from(scale) * f64::from(*i) - f64::from(*x)).powi(2)).sum();
        Query { error: (e2.sqrt() as f32).next_up().next_up(), floats, ints, scale }
    }
}

/// The widest kernel's block: stored vectors padded to a multiple of it need no remainder
/// handling.
pub(crate) const BLOCK: usize = 64;

/// Which implementation of the kernels this CPU runs. Only [`Kernel::detect`] (and, in
/// tests, `available`) make one, so holding a SIMD kernel proves the CPU has its features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Kernel(Kind);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// AVX-512F and BW: 32 codes per multiply.
    Avx512,
    /// AVX2 with FMA: eight codes widened per instruction.
    Avx2,
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU supports (feature detection is cached by std).
    pub(crate) fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") {
                return Kernel(Kind::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Kernel(Kind::Avx2);
            }
        }
        Kernel(Kind::Portable)
    }

    /// Every kernel this CPU can run (tests compare them).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Kernel> {
        let mut out = vec![Kernel(Kind::Portable)];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                out.push(Kernel(Kind::Avx2));
            }
            if has!("avx512f") && has!("avx512bw") {
                out.push(Kernel(Kind::Avx512));
            }
        }
        out
    }

    /// For each id, `scale · (q · code)` (computed as `scale · q.scale · (q.ints · code)`),
    /// or `|q - scale · code|²` when `l2`, where `code` is that id's
    /// `codes[id * len..][..len]` (`len` the padded query's length) and `scale` is
    /// `scales[id]`. Appends to `out`, one per id.
    ///
    /// One call per scan keeps the loop inside the feature-enabled code, so the per-vector
    /// work inlines.
    ///
    /// # Panics
    /// When an id's codes or scale are out of range.
    pub(crate) fn scores(self, q: &Query, codes: &[i8], scales: &[f32], ids: &[u32], l2: bool, out: &mut Vec<f32>) {
        let dim = q.floats.len();
        // `Query::new` pads to whole blocks; the kernels' loads rely on it.
        assert!(dim.is_multiple_of(BLOCK) && q.ints.len() == dim, "the query is not padded to whole blocks");
        let end = ids.iter().map(|id| *id as usize + 1).max().unwrap_or(0);
        assert!(end * dim <= codes.len() && end <= scales.len(), "a point's codes are out of range");
        out.reserve(ids.len());
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: only `detect`/`available` build an `Avx512` kernel, after detecting
            // AVX-512F and BW; every id's codes are in range (checked above) and `Query`
            // pads to whole blocks.
            Kind::Avx512 => unsafe { x86::scores_avx512(q, codes, scales, ids, l2, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: only `detect`/`available` build an `Avx2` kernel, after detecting AVX2
            // and FMA; ids are in range and `Query` pads to whole blocks.
            Kind::Avx2 => unsafe { x86::scores_avx2(q, codes, scales, ids, l2, out) },
            _ => {
                for &id in ids {
                    let (c, scale) = (&codes[id as usize * dim..][..dim], scales[id as usize]);
                    out.push(if l2 {
                        portable_l2(&q.floats, c, scale)
                    } else {
                        scale * (q.scale * portable_dot(&q.ints, c) as f32)
                    });
                }
            }
        }
    }
}

fn portable_dot(q: &[i16], c: &[i8]) -> i32 {
    q.iter().zip(c).map(|(x, y)| i32::from(*x) * i32::from(*y)).sum()
}

fn portable_l2(q: &[f32], c: &[i8], scale: f32) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in q.as_chunks::<8>().0.iter().zip(c.as_chunks::<8>().0) {
        for i in 0..8 {
            let d = (-scale).mul_add(f32::from(y[i]), x[i]);
            acc[i] += d * d;
        }
    }
    acc.iter().sum()
}

/// Asks the CPU to load the cache lines of `data` (a hint: no effect on results).
#[inline]
pub(crate) fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        let start = data.as_ptr().cast::<i8>();
        let end = start.wrapping_add(std::mem::size_of_val(data));
        // From the cache line holding the first byte: an unaligned slice touches one more
        // line than its length says.
        let mut line = start.wrapping_sub(start as usize % 64);
        while line < end {
            // SAFETY: `_mm_prefetch` is SSE (baseline on x86_64) and only a hint: it reads
            // nothing and cannot fault, whatever the address.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line) };
            line = line.wrapping_add(64);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    // Asks for every cache line of a vector's codes ahead of scoring it: the next vector's
    // address is not the hardware prefetcher's guess when ids jump.
    use super::{Query, prefetch};
    use std::arch::x86_64::*;

    /// How many vectors ahead the scan asks for (a 10k x 384 scan, p50: 0.43-0.46 ms at 4
    /// ahead, 0.41-0.44 at 8, 0.43-0.45 at 16).
    const PREFETCH_AHEAD: usize = 8;

    /// # Safety
    /// The CPU has AVX-512F and BW, every id's codes and scale are in range, and the query
    /// is whole blocks of [`BLOCK`].
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn scores_avx512(
        q: &Query,
        codes: &[i8],
        scales: &[f32],
        ids: &[u32],
        l2: bool,
        out: &mut Vec<f32>,
    ) {
        // SAFETY (both closures): the CPU has AVX-512F and BW; `each_vector` passes the
        // query's length in codes.
        if l2 {
            each_vector(q, codes, scales, ids, out, |c, s| unsafe { l2_avx512(&q.floats, c, s) });
        } else {
            each_vector(q, codes, scales, ids, out, |c, s| s * (q.scale * unsafe { dot_avx512(&q.ints, c) } as f32));
        }
    }

    /// # Safety
    /// The CPU has AVX2 and FMA, every id's codes and scale are in range, and the query is
    /// whole blocks of [`BLOCK`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scores_avx2(
        q: &Query,
        codes: &[i8],
        scales: &[f32],
        ids: &[u32],
        l2: bool,
        out: &mut Vec<f32>,
    ) {
        // SAFETY (both closures): the CPU has AVX2 and FMA; `each_vector` passes the query's
        // length in codes.
        if l2 {
            each_vector(q, codes, scales, ids, out, |c, s| unsafe { l2_avx2(&q.floats, c, s) });
        } else {
            each_vector(q, codes, scales, ids, out, |c, s| s * (q.scale * unsafe { dot_avx2(&q.ints, c) } as f32));
        }
    }

    /// Pushes `score(codes, scale)` for each id, asking for the codes `PREFETCH_AHEAD` ids
    /// ahead while scoring.
    #[inline(always)]
    fn each_vector(
        q: &Query,
        codes: &[i8],
        scales: &[f32],
        ids: &[u32],
        out: &mut Vec<f32>,
        mut score: impl FnMut(&[i8], f32) -> f32,
    ) {
        let dim = q.floats.len();
        let vector = |id: u32| &codes[id as usize * dim..][..dim];
        for id in ids.iter().take(PREFETCH_AHEAD) {
            prefetch(vector(*id));
        }
        for (i, &id) in ids.iter().enumerate() {
            if let Some(ahead) = ids.get(i + PREFETCH_AHEAD) {
                prefetch(vector(*ahead));
            }
            out.push(score(vector(id), scales[id as usize]));
        }
    }

    /// `q · c`, exact (the caller's query integers keep every sum inside an i32).
    ///
    /// # Safety
    /// The CPU has AVX-512F and BW, `q.len() == c.len()`, a multiple of 64.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn dot_avx512(q: &[i16], c: &[i8]) -> i32 {
        let (mut s0, mut s1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        for (qb, cb) in q.chunks_exact(64).zip(c.chunks_exact(64)) {
            // SAFETY: each chunk holds 64 integers and 64 codes.
            unsafe {
                let c0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(cb.as_ptr().cast()));
                let c1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(cb.as_ptr().add(32).cast()));
                s0 = _mm512_add_epi32(s0, _mm512_madd_epi16(_mm512_loadu_si512(qb.as_ptr().cast()), c0));
                s1 = _mm512_add_epi32(s1, _mm512_madd_epi16(_mm512_loadu_si512(qb.as_ptr().add(32).cast()), c1));
            }
        }
        _mm512_reduce_add_epi32(_mm512_add_epi32(s0, s1))
    }

    /// `|q - scale · c|²`.
    ///
    /// # Safety
    /// The CPU has AVX-512F, `q.len() == c.len()`, a multiple of 32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn l2_avx512(q: &[f32], c: &[i8], scale: f32) -> f32 {
        let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let scale_v = _mm512_set1_ps(scale);
        for (qb, cb) in q.chunks_exact(32).zip(c.chunks_exact(32)) {
            // SAFETY: each chunk holds 32 floats and 32 codes.
            let (q0, q1, c0, c1) = unsafe {
                (
                    _mm512_loadu_ps(qb.as_ptr()),
                    _mm512_loadu_ps(qb.as_ptr().add(16)),
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(cb.as_ptr().cast()))),
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(cb.as_ptr().add(16).cast()))),
                )
            };
            let (d0, d1) = (_mm512_fnmadd_ps(scale_v, c0, q0), _mm512_fnmadd_ps(scale_v, c1, q1));
            s0 = _mm512_fmadd_ps(d0, d0, s0);
            s1 = _mm512_fmadd_ps(d1, d1, s1);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
    }

    /// `q · c`, exact.
    ///
    /// # Safety
    /// The CPU has AVX2, `q.len() == c.len()`, a multiple of 32.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn dot_avx2(q: &[i16], c: &[i8]) -> i32 {
        let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for (qb, cb) in q.chunks_exact(32).zip(c.chunks_exact(32)) {
            // SAFETY: each chunk holds 32 integers and 32 codes.
            unsafe {
                let c0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(cb.as_ptr().cast()));
                let c1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(cb.as_ptr().add(16).cast()));
                s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(_mm256_loadu_si256(qb.as_ptr().cast()), c0));
                s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(_mm256_loadu_si256(qb.as_ptr().add(16).cast()), c1));
            }
        }
        let mut lanes = [0i32; 8];
        // SAFETY: `lanes` holds eight integers.
        unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), _mm256_add_epi32(s0, s1)) };
        lanes.iter().sum()
    }

    /// `|q - scale · c|²`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA, `q.len() == c.len()`, a multiple of 16.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn l2_avx2(q: &[f32], c: &[i8], scale: f32) -> f32 {
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let scale_v = _mm256_set1_ps(scale);
        for (qb, cb) in q.chunks_exact(16).zip(c.chunks_exact(16)) {
            // SAFETY: each chunk holds 16 floats and 16 codes.
            let (q0, q1, c0, c1) = unsafe {
                (
                    _mm256_loadu_ps(qb.as_ptr()),
                    _mm256_loadu_ps(qb.as_ptr().add(8)),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(cb.as_ptr().cast()))),
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(cb.as_ptr().add(8).cast()))),
                )
            };
            let (d0, d1) = (_mm256_fnmadd_ps(scale_v, c0, q0), _mm256_fnmadd_ps(scale_v, c1, q1));
            s0 = _mm256_fmadd_ps(d0, d0, s0);
            s1 = _mm256_fmadd_ps(d1, d1, s1);
        }
        sum8(_mm256_add_ps(s0, s1))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn sum8(v: __m256) -> f32 {
        let mut out = [0f32; 8];
        // SAFETY: `out` holds eight floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        out.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + seed as f32) * 0.37).sin() * 2.0).collect()
    }

    #[test]
    fn every_kernel_matches_the_plain_loop_on_every_length() {
        for kernel in Kernel::available() {
            for n in 0..100usize {
                let stride = n.next_multiple_of(BLOCK);
                let q = Query::new(&values(n, 1));
                let v = values(n, 7);
                let mut codes = vec![0i8; stride];
                let scale = quantize(&v, &mut codes[..n]);
                let decoded: Vec<f32> = codes.iter().map(|c| scale * f32::from(*c)).collect();
                let plain_dot: f32 = q.floats.iter().zip(&decoded).map(|(x, y)| x * y).sum();
                let plain_l2: f32 = q.floats.iter().zip(&decoded).map(|(x, y)| (x - y).powi(2)).sum();
                let (mut d, mut l) = (Vec::new(), Vec::new());
                kernel.scores(&q, &codes, &[scale], &[0], false, &mut d);
                kernel.scores(&q, &codes, &[scale], &[0], true, &mut l);
                let (d, l) = (d[0], l[0]);
                // The integer query moves a dot product by at most its error times |v̂|.
                let decoded_norm = decoded.iter().map(|x| x * x).sum::<f32>().sqrt();
                assert!(
                    (d - plain_dot).abs() <= q.error * decoded_norm + 1e-5 * (1.0 + plain_dot.abs()),
                    "{kernel:?} n {n}: {d} vs {plain_dot}"
                );
                assert!((l - plain_l2).abs() <= 1e-4 * (1.0 + plain_l2), "{kernel:?} n {n}: {l} vs {plain_l2}");
            }
        }
    }

    #[test]
    fn integer_queries_stay_within_their_error_and_never_overflow() {
        for len in [1, 3, 384, 4096] {
            let q: Vec<f32> = values(len, 3).into_iter().map(|x| x * 1e3).collect();
            let query = Query::new(&q);
            let e2: f32 = q.iter().zip(&query.ints).map(|(x, i)| (x - query.scale * f32::from(*i)).powi(2)).sum();
            assert!(e2.sqrt() <= query.error * 1.0001, "len {len}");
            // The largest sum the kernels can meet fits an i32.
            let worst: i64 = query.ints.iter().map(|i| i64::from(i.unsigned_abs()) * 127).sum();
            assert!(worst <= i64::from(i32::MAX), "len {len}");
            let codes = vec![127i8; query.floats.len()];
            for kernel in Kernel::available() {
                let mut out = Vec::new();
                kernel.scores(&query, &codes, &[1.0], &[0], false, &mut out);
                let want: i64 = query.ints.iter().map(|i| i64::from(*i) * 127).sum();
                let want = query.scale * want as f32;
                assert!((out[0] - want).abs() <= 1e-5 * want.abs(), "{kernel:?} len {len}: {} vs {want}", out[0]);
            }
        }
    }

    #[test]
    fn codes_round_to_the_nearest_step_of_the_scale() {
        let v = [0.5f32, -1.0, 0.25, 0.0];
        let mut codes = [0i8; 4];
        let scale = quantize(&v, &mut codes);
        assert_eq!(scale, 1.0 / 127.0);
        assert_eq!(codes, [64, -127, 32, 0]);
        for (x, c) in v.iter().zip(codes) {
            assert!((x - scale * f32::from(c)).abs() <= scale / 2.0);
        }
        assert_eq!(quantize(&[0.0; 4], &mut codes), 0.0);
        assert_eq!(codes, [0; 4]);
    }
}
