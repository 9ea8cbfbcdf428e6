//! A safe matrix product over the `gemm` crate, for the BERT encoder.
//!
//! `gemm` takes raw pointers and strides; this module checks that every element the product
//! touches lies inside the slices it was given, so the one `unsafe` call is sound for any
//! arguments. Matrices are row-major views with explicit strides, which lets a caller
//! multiply by a transposed matrix or by one attention head's columns without copying;
//! dense layers' weights are packed once at load ([`Packed`]).
#![allow(unsafe_code)]

/// A read-only matrix: element `(r, c)` is `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> Mat<'a> {
    /// A contiguous row-major `rows × cols` matrix at the start of `data`.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The transpose, as a view of the same elements.
    pub fn t(self) -> Self {
        Mat { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    /// One past the largest index an element of the view has (0 for an empty view).
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            return 0;
        }
        extent(self.rows, self.row_stride, self.cols, self.col_stride)
    }
}

/// `dst = scale · a · b`, or `dst += scale · a · b` when `accumulate`; `dst` is row-major
/// with rows `dst_stride` apart and `a.rows × b.cols` elements used. One thread.
///
/// # Panics
/// When the shapes disagree or a view reaches past its slice.
pub(super) fn matmul(dst: &mut [f32], dst_stride: usize, a: Mat<'_>, b: Mat<'_>, scale: f32, accumulate: bool) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    let (m, n) = (a.rows, b.cols);
    assert!(a.extent() <= a.data.len() && b.extent() <= b.data.len(), "an operand reaches past its slice");
    let dst_extent = if m == 0 || n == 0 { 0 } else { extent(m, dst_stride, n, 1) };
    assert!(dst_extent <= dst.len() && (m <= 1 || dst_stride >= n), "the destination is too small or overlaps itself");
    // SAFETY: the asserts above keep every element read inside `a.data` and `b.data` and
    // every element written inside `dst`, whose rows do not overlap; `dst` is borrowed
    // mutably, so it aliases neither operand.
    unsafe { product(dst.as_mut_ptr(), dst_stride, a, b, scale, accumulate) }
}

/// `(rows - 1) · row_stride + (cols - 1) · col_stride + 1` for non-empty shapes; an overflow
/// panics (wrapping would let a bounds check pass on a view that does not fit).
fn extent(rows: usize, row_stride: usize, cols: usize, col_stride: usize) -> usize {
    (rows - 1)
        .checked_mul(row_stride)
        .zip((cols - 1).checked_mul(col_stride))
        .and_then(|(a, b)| a.checked_add(b))
        .and_then(|e| e.checked_add(1))
        .expect("a matrix view's extent overflows usize")
}

/// `gemm` on raw parts.
///
/// # Safety
/// `a` and `b` must lie inside their slices; `dst` must be valid for writes of
/// `a.rows × b.cols` elements with rows `dst_stride ≥ b.cols` apart, written by no one else
/// meanwhile, and not overlap `a` or `b`.
unsafe fn product(dst: *mut f32, dst_stride: usize, a: Mat<'_>, b: Mat<'_>, scale: f32, accumulate: bool) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                // SAFETY: row r of dst is valid for n writes (the caller's contract).
                unsafe { std::slice::from_raw_parts_mut(dst.add(r * dst_stride), n) }.fill(0.0);
            }
        }
        return;
    }
    let stride = |s: usize| isize::try_from(s).expect("stride fits isize");
    // SAFETY: the caller's contract is gemm's.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            stride(dst_stride),
            accumulate,
            a.data.as_ptr(),
            stride(a.col_stride),
            stride(a.row_stride),
            b.data.as_ptr(),
            stride(b.col_stride),
            stride(b.row_stride),
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Outputs per panel of a [`Packed`] weight: 64 (four AVX-512 registers of f32) is the
/// height of gemm's micro-kernel, and divides every BERT width.
const PANEL: usize = 64;

/// Products smaller than this many multiply-adds run on the calling thread.
const PARALLEL_WORK: usize = 1 << 20;

/// A dense layer's weight `W` (`[out, in]`, as checkpoints store it) laid out for
/// `x · Wᵀ`: in panels of [`PANEL`] outputs, each `[in, PANEL]` and contiguous.
///
/// gemm reads such a panel as one sequential stream. Read in place from a plain `[in, out]`
/// transpose instead, every step down the inner dimension jumps a whole row, past what the
/// hardware prefetcher follows, and a short text (a few dozen rows of `x`) then spends most
/// of its time waiting on the weight; repacking it per call costs as much as the product.
pub(super) struct Packed {
    data: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint column ranges of one destination to rayon tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl Packed {
    /// Packs the `[outputs, inputs]` row-major `weight`.
    ///
    /// # Panics
    /// When `weight` does not have `inputs × outputs` elements.
    pub fn new(weight: &[f32], inputs: usize, outputs: usize) -> Packed {
        assert_eq!(weight.len(), inputs * outputs, "weight is not [outputs, inputs]");
        let mut data = Vec::with_capacity(weight.len());
        for first in (0..outputs).step_by(PANEL) {
            let width = PANEL.min(outputs - first);
            for i in 0..inputs {
                data.extend((first..first + width).map(|o| weight[o * inputs + i]));
            }
        }
        Packed { data, inputs, outputs }
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// `dst = x · Wᵀ` for the `rows × inputs` row-major `x`; `dst` is `rows × outputs`.
    /// Panels run in parallel when the product is large enough.
    ///
    /// # Panics
    /// When `x` or `dst` is too short.
    pub fn product(&self, x: &[f32], rows: usize, dst: &mut [f32]) {
        let size = |width: usize| rows.checked_mul(width).expect("matrix size overflows usize");
        assert!(x.len() >= size(self.inputs) && dst.len() >= size(self.outputs), "an operand is too short");
        let x = Mat::rows(x, rows, self.inputs);
        let out = SendPtr(dst.as_mut_ptr());
        let panel = |p: usize| {
            let first = p * PANEL;
            let width = PANEL.min(self.outputs - first);
            let w = Mat::rows(&self.data[first * self.inputs..], self.inputs, width);
            let out = &out;
            // SAFETY: panel p writes columns first..first + width of each of the `rows` rows
            // of dst (stride outputs), inside `dst` by the assert above; panels' columns are
            // disjoint, so concurrent panels never write the same element, and `dst` is
            // borrowed mutably for the whole call. `x` and the panel lie inside their slices.
            unsafe { product(out.0.add(first), self.outputs, x, w, 1.0, false) }
        };
        let panels = self.outputs.div_ceil(PANEL);
        if size(self.inputs).saturating_mul(self.outputs) < PARALLEL_WORK {
            (0..panels).for_each(panel);
        } else {
            use rayon::prelude::*;
            (0..panels).into_par_iter().for_each(panel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: Mat<'_>, b: Mat<'_>) -> Vec<f32> {
        let mut out = vec![0.0; a.rows * b.cols];
        for r in 0..a.rows {
            for c in 0..b.cols {
                out[r * b.cols + c] = (0..a.cols)
                    .map(|i| a.data[r * a.row_stride + i * a.col_stride] * b.data[i * b.row_stride + c * b.col_stride])
                    .sum();
            }
        }
        out
    }

    fn close(got: &[f32], want: &[f32], factor: f32) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - factor * w).abs() <= 2e-3 * (1.0 + w.abs()), "{g} vs {}", factor * w);
        }
    }

    #[test]
    fn products_match_a_plain_loop_for_strided_and_transposed_views() {
        let data: Vec<f32> = (0..60_000).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        for &(m, n, k) in &[(1, 1, 1), (3, 5, 7), (20, 384, 32), (65, 17, 130), (36, 200, 40), (2, 0, 3), (4, 3, 0)] {
            let a = Mat::rows(&data, m, k);
            // b as the transpose of an n × k row-major matrix: the layout of a dense weight.
            let b = Mat::rows(&data[100..], n, k).t();
            let want = naive(a, b);
            let mut got = vec![7.0; m * n];
            matmul(&mut got, n, a, b, 1.0, false);
            close(&got, &want, 1.0);
            // Accumulating and scaling: dst + 0.5 · a · b.
            matmul(&mut got, n, a, b, 0.5, true);
            close(&got, &want, 1.5);
            // The same weight packed, in parallel panels or not (a ragged last panel too).
            if n > 0 {
                let weight = &data[100..100 + n * k];
                for rows in [m, 300] {
                    let x = &data[..rows * k];
                    let mut got = vec![7.0; rows * n];
                    Packed::new(weight, k, n).product(x, rows, &mut got);
                    close(&got, &naive(Mat::rows(x, rows, k), Mat::rows(weight, n, k).t()), 1.0);
                }
            }
        }
        // A strided destination: one head's columns of a wider matrix.
        let a = Mat::rows(&data, 4, 8);
        let b = Mat::rows(&data[50..], 8, 3);
        let mut wide = [0.0; 4 * 10];
        matmul(&mut wide[2..], 10, a, b, 1.0, false);
        let want = naive(a, b);
        for r in 0..4 {
            assert_eq!(wide[r * 10..r * 10 + 2], [0.0, 0.0]);
            for c in 0..3 {
                assert!((wide[r * 10 + 2 + c] - want[r * 3 + c]).abs() < 1e-3);
            }
            assert!(wide[r * 10 + 5..r * 10 + 10].iter().all(|&x| x == 0.0));
        }
    }

    #[test]
    #[should_panic(expected = "reaches past")]
    fn a_view_past_its_slice_is_refused() {
        let data = vec![0.0; 10];
        let mut out = vec![0.0; 4];
        matmul(&mut out, 2, Mat::rows(&data, 2, 6), Mat::rows(&data, 6, 2), 1.0, false);
    }
}
