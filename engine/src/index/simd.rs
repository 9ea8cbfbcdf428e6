//! Dot products and squared distances between an `f32` query and a vector stored as IEEE
//! half floats (`u16` bits), for the exact scan's first pass.
//!
//! The scan is bound by memory bandwidth: half floats halve the bytes it streams. Converting
//! halves to floats fast needs instructions that baseline x86-64 lacks (F16C or AVX-512),
//! so the kernel is picked at run time, once per scan ([`HalfKernel::detect`]), with a
//! portable fallback that gives the same results up to rounding.
//!
//! This is the only module of the workspace with `unsafe` code: the intrinsics' loads take
//! raw pointers, and calling a `#[target_feature]` function is sound only on a CPU that has
//! the feature.
#![allow(unsafe_code)]

/// The IEEE half-float bits nearest to `x` (round to nearest even; out of range becomes an
/// infinity).
pub(crate) fn to_half(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

pub(crate) fn from_half(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// The widest kernel's block: stored vectors padded to a multiple of it need no remainder
/// handling.
pub(crate) const BLOCK: usize = 32;

/// Which implementation of the half-float kernels this CPU runs. Only [`HalfKernel::detect`]
/// (and, in tests, `available`) make one, so holding a SIMD kernel proves the CPU has its
/// features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HalfKernel(Kind);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// AVX-512F: sixteen halves per conversion.
    Avx512,
    /// AVX2 with FMA and F16C: eight halves per conversion.
    Avx2,
    Portable,
}

impl HalfKernel {
    /// The fastest kernel this CPU supports (feature detection is cached by std).
    pub(crate) fn detect() -> HalfKernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return HalfKernel(Kind::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return HalfKernel(Kind::Avx2);
            }
        }
        HalfKernel(Kind::Portable)
    }

    /// Every kernel this CPU can run (tests compare them).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<HalfKernel> {
        let mut out = vec![HalfKernel(Kind::Portable)];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                out.push(HalfKernel(Kind::Avx2));
            }
            if has!("avx512f") {
                out.push(HalfKernel(Kind::Avx512));
            }
        }
        out
    }

    /// For each id, `q · v` (or `|q - v|²` when `l2`) where `v` is that id's stored vector:
    /// `halves[id * q.len()..][..q.len()]`. Appends to `out`, one per id.
    ///
    /// One call per scan keeps the loop inside the feature-enabled code, so the per-vector
    /// work inlines.
    ///
    /// # Panics
    /// When an id's vector is out of `halves`.
    pub(crate) fn scores(self, q: &[f32], halves: &[u16], ids: &[u32], l2: bool, out: &mut Vec<f32>) {
        let dim = q.len();
        let end = ids.iter().map(|id| (*id as usize + 1) * dim).max().unwrap_or(0);
        assert!(end <= halves.len(), "a point's vector is out of range");
        out.reserve(ids.len());
        match self.0 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: only `detect`/`available` build an `Avx512` kernel, after detecting
            // AVX-512F; every id's vector is in range (checked above).
            Kind::Avx512 => unsafe { x86::scores_avx512(q, halves, ids, l2, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: only `detect`/`available` build an `Avx2` kernel, after detecting AVX2,
            // FMA and F16C; ids are in range.
            Kind::Avx2 => unsafe { x86::scores_avx2(q, halves, ids, l2, out) },
            _ => {
                for &id in ids {
                    let h = &halves[id as usize * dim..][..dim];
                    out.push(if l2 { portable_l2(q, h) } else { portable_dot(q, h) });
                }
            }
        }
    }
}

fn portable_dot(q: &[f32], h: &[u16]) -> f32 {
    let mut acc = [0f32; 8];
    let (cq, rq) = q.as_chunks::<8>();
    let (ch, rh) = h.as_chunks::<8>();
    for (x, y) in cq.iter().zip(ch) {
        for i in 0..8 {
            acc[i] += x[i] * from_half(y[i]);
        }
    }
    acc.iter().sum::<f32>() + rq.iter().zip(rh).map(|(x, y)| x * from_half(*y)).sum::<f32>()
}

fn portable_l2(q: &[f32], h: &[u16]) -> f32 {
    let mut acc = [0f32; 8];
    let (cq, rq) = q.as_chunks::<8>();
    let (ch, rh) = h.as_chunks::<8>();
    for (x, y) in cq.iter().zip(ch) {
        for i in 0..8 {
            let d = x[i] - from_half(y[i]);
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f32>() + rq.iter().zip(rh).map(|(x, y)| (x - from_half(*y)).powi(2)).sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// How many vectors ahead the scan asks for (measured: 2 to 8 ahead cut a 10k x 384 scan
    /// by a sixth; 1 ahead is too late).
    const PREFETCH_AHEAD: usize = 4;

    /// Asks for every cache line of `v` (the scan would wait on them otherwise: the next
    /// vector's address is not the hardware prefetcher's guess when ids jump).
    #[inline]
    fn prefetch(v: &[u16]) {
        for line in v.chunks(32) {
            // SAFETY: a prefetch only hints; the address is inside `v`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
        }
    }

    /// # Safety
    /// The CPU has AVX-512F, and every id's vector is within `halves`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scores_avx512(q: &[f32], halves: &[u16], ids: &[u32], l2: bool, out: &mut Vec<f32>) {
        // SAFETY (both closures): the CPU has AVX-512F; `each_vector` passes `q`'s length.
        if l2 {
            each_vector(q, halves, ids, out, |h| unsafe { score_avx512::<true>(q, h) });
        } else {
            each_vector(q, halves, ids, out, |h| unsafe { score_avx512::<false>(q, h) });
        }
    }

    /// # Safety
    /// The CPU has AVX2, FMA and F16C, and every id's vector is within `halves`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn scores_avx2(q: &[f32], halves: &[u16], ids: &[u32], l2: bool, out: &mut Vec<f32>) {
        // SAFETY (both closures): the CPU has AVX2, FMA and F16C; `each_vector` passes `q`'s
        // length.
        if l2 {
            each_vector(q, halves, ids, out, |h| unsafe { score_avx2::<true>(q, h) });
        } else {
            each_vector(q, halves, ids, out, |h| unsafe { score_avx2::<false>(q, h) });
        }
    }

    /// Pushes `score(v)` for each id's stored vector `v`, asking for the vector
    /// `PREFETCH_AHEAD` ids ahead while scoring.
    #[inline(always)]
    fn each_vector(q: &[f32], halves: &[u16], ids: &[u32], out: &mut Vec<f32>, mut score: impl FnMut(&[u16]) -> f32) {
        let dim = q.len();
        let vector = |id: u32| &halves[id as usize * dim..][..dim];
        for id in ids.iter().take(PREFETCH_AHEAD) {
            prefetch(vector(*id));
        }
        for (i, &id) in ids.iter().enumerate() {
            if let Some(ahead) = ids.get(i + PREFETCH_AHEAD) {
                prefetch(vector(*ahead));
            }
            out.push(score(vector(id)));
        }
    }

    /// Runs `step` over `q` and `h` in blocks of `N` (raw pointers to `N` floats and `N`
    /// halves), the last block zero-padded, so every element goes through the vector code
    /// (zeros add nothing to a dot product or a squared distance).
    #[inline(always)]
    fn blocks<const N: usize>(q: &[f32], h: &[u16], mut step: impl FnMut(*const f32, *const u16)) {
        let n = q.len() / N * N;
        let mut i = 0;
        while i < n {
            step(q[i..i + N].as_ptr(), h[i..i + N].as_ptr());
            i += N;
        }
        if n < q.len() {
            let (mut qt, mut ht) = ([0f32; N], [0u16; N]);
            qt[..q.len() - n].copy_from_slice(&q[n..]);
            ht[..q.len() - n].copy_from_slice(&h[n..]);
            step(qt.as_ptr(), ht.as_ptr());
        }
    }

    /// `|q - h|²` when `L2`, else `q · h`.
    ///
    /// # Safety
    /// The CPU has AVX-512F, and `q.len() == h.len()`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn score_avx512<const L2: bool>(q: &[f32], h: &[u16]) -> f32 {
        let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        blocks::<32>(q, h, |qp, hp| {
            // SAFETY: `blocks` passes pointers to 32 floats and 32 halves.
            let (q0, q1, h0, h1) = unsafe {
                (
                    _mm512_loadu_ps(qp),
                    _mm512_loadu_ps(qp.add(16)),
                    _mm512_cvtph_ps(_mm256_loadu_si256(hp.cast())),
                    _mm512_cvtph_ps(_mm256_loadu_si256(hp.add(16).cast())),
                )
            };
            if L2 {
                let (d0, d1) = (_mm512_sub_ps(q0, h0), _mm512_sub_ps(q1, h1));
                s0 = _mm512_fmadd_ps(d0, d0, s0);
                s1 = _mm512_fmadd_ps(d1, d1, s1);
            } else {
                s0 = _mm512_fmadd_ps(q0, h0, s0);
                s1 = _mm512_fmadd_ps(q1, h1, s1);
            }
        });
        _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
    }

    /// `|q - h|²` when `L2`, else `q · h`.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C, and `q.len() == h.len()`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn score_avx2<const L2: bool>(q: &[f32], h: &[u16]) -> f32 {
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        blocks::<16>(q, h, |qp, hp| {
            // SAFETY: `blocks` passes pointers to 16 floats and 16 halves.
            let (q0, q1, h0, h1) = unsafe {
                (
                    _mm256_loadu_ps(qp),
                    _mm256_loadu_ps(qp.add(8)),
                    _mm256_cvtph_ps(_mm_loadu_si128(hp.cast())),
                    _mm256_cvtph_ps(_mm_loadu_si128(hp.add(8).cast())),
                )
            };
            if L2 {
                let (d0, d1) = (_mm256_sub_ps(q0, h0), _mm256_sub_ps(q1, h1));
                s0 = _mm256_fmadd_ps(d0, d0, s0);
                s1 = _mm256_fmadd_ps(d1, d1, s1);
            } else {
                s0 = _mm256_fmadd_ps(q0, h0, s0);
                s1 = _mm256_fmadd_ps(q1, h1, s1);
            }
        });
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
        for kernel in HalfKernel::available() {
            for n in 0..100 {
                let q = values(n, 1);
                let h: Vec<u16> = values(n, 7).into_iter().map(to_half).collect();
                let plain_dot: f32 = q.iter().zip(&h).map(|(x, y)| x * from_half(*y)).sum();
                let plain_l2: f32 = q.iter().zip(&h).map(|(x, y)| (x - from_half(*y)).powi(2)).sum();
                let (mut d, mut l) = (Vec::new(), Vec::new());
                kernel.scores(&q, &h, &[0], false, &mut d);
                kernel.scores(&q, &h, &[0], true, &mut l);
                let (d, l) = (d[0], l[0]);
                assert!(
                    (d - plain_dot).abs() <= 1e-4 * (1.0 + plain_dot.abs()),
                    "{kernel:?} n {n}: {d} vs {plain_dot}"
                );
                assert!((l - plain_l2).abs() <= 1e-4 * (1.0 + plain_l2), "{kernel:?} n {n}: {l} vs {plain_l2}");
            }
        }
    }

    #[test]
    fn half_conversion_rounds_to_nearest_and_saturates_to_infinity() {
        assert_eq!(from_half(to_half(0.5)), 0.5);
        assert_eq!(from_half(to_half(1.0 + 1.0 / 4096.0)), 1.0);
        assert!(from_half(to_half(1.0e6)).is_infinite());
        assert!((from_half(to_half(0.1)) - 0.1).abs() <= 0.1 / 2048.0);
    }
}
