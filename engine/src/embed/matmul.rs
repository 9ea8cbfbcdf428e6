//! A safe matrix product over the `gemm` crate, for the BERT encoder.
//!
//! `gemm` takes raw pointers and strides; this module checks that every element the product
//! touches lies inside the slices it was given, so the one `unsafe` call is sound for any
//! arguments. Matrices are row-major views with explicit strides, which lets a caller
//! multiply by a transposed weight or by one attention head's columns without copying.
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
        (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
    }
}

/// Whether a product may be split across threads (`gemm` still runs small ones on one).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Threads {
    One,
    All,
}

/// `dst = scale · a · b`, or `dst += scale · a · b` when `accumulate`; `dst` is row-major
/// with rows `dst_stride` apart and `a.rows × b.cols` elements used.
///
/// # Panics
/// When the shapes disagree or a view reaches past its slice.
pub(super) fn matmul(
    dst: &mut [f32],
    dst_stride: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    scale: f32,
    accumulate: bool,
    threads: Threads,
) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert!(a.extent() <= a.data.len() && b.extent() <= b.data.len(), "an operand reaches past its slice");
    let dst_extent = if m == 0 || n == 0 { 0 } else { (m - 1) * dst_stride + n };
    assert!(dst_extent <= dst.len() && (m <= 1 || dst_stride >= n), "the destination is too small or overlaps itself");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_stride..r * dst_stride + n].fill(0.0);
            }
        }
        return;
    }
    let parallelism = match threads {
        Threads::One => gemm::Parallelism::None,
        Threads::All => gemm::Parallelism::Rayon(0),
    };
    let stride = |s: usize| isize::try_from(s).expect("stride fits isize");
    // SAFETY: the asserts above keep every element gemm reads inside `a.data` and `b.data`
    // and every element it writes inside `dst`, and distinct rows of `dst` do not overlap;
    // `dst` is borrowed mutably, so it cannot alias either operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
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
            parallelism,
        );
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

    #[test]
    fn products_match_a_plain_loop_for_strided_and_transposed_views() {
        let data: Vec<f32> = (0..20_000).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        for &(m, n, k) in &[(1, 1, 1), (3, 5, 7), (20, 384, 32), (65, 17, 130), (2, 0, 3), (4, 3, 0)] {
            let a = Mat::rows(&data, m, k);
            // b as the transpose of an n × k row-major matrix: the layout of a dense weight.
            let b = Mat::rows(&data[100..], n, k).t();
            let want = naive(a, b);
            for threads in [Threads::One, Threads::All] {
                let mut got = vec![7.0; m * n];
                matmul(&mut got, n, a, b, 1.0, false, threads);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-3 * (1.0 + w.abs()), "{m}x{n}x{k}: {g} vs {w}");
                }
                // Accumulating and scaling: dst + 0.5 · a · b.
                matmul(&mut got, n, a, b, 0.5, true, threads);
                for (g, w) in got.iter().zip(&want) {
                    assert!((g - 1.5 * w).abs() <= 2e-3 * (1.0 + w.abs()), "{m}x{n}x{k}: {g} vs {}", 1.5 * w);
                }
            }
        }
        // A strided destination: one head's columns of a wider matrix.
        let a = Mat::rows(&data, 4, 8);
        let b = Mat::rows(&data[50..], 8, 3);
        let mut wide = [0.0; 4 * 10];
        matmul(&mut wide[2..], 10, a, b, 1.0, false, Threads::One);
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
        matmul(&mut out, 2, Mat::rows(&data, 2, 6), Mat::rows(&data, 6, 2), 1.0, false, Threads::One);
    }
}
