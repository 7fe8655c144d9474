//! Matrix products on host arrays for the bag model's dense head, sized for what it multiplies:
//! a few dozen rows by a few hundred columns, where a tensor library's per-operator dispatch,
//! allocation and thread hand-offs cost as much as the arithmetic.
//!
//! One product, `C += A · B`: `B` and `C` row-major, `A` either row-major or column-major (so
//! `Xᵀ · dY` needs no transposed copy of `X`). It is computed in tiles of 4 rows × 16 columns
//! of `C` held in registers: each step of the sum loads two 8-lane rows of `B` and broadcasts
//! four entries of `A` into eight fused multiply-adds. Compiled for AVX2 and FMA where the CPU
//! has them, else in the baseline instruction set; the order of the additions is the same in
//! both, so the results do not depend on which thread or part of a batch computes them.

/// How `A` is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `a(i, p) = a[i * ld + p]`.
    RowMajor,
    /// `a(i, p) = a[p * ld + i]` (the transpose of a row-major matrix).
    ColMajor,
}

/// The left operand: `m × k`, stored with leading dimension `ld` in `layout`.
#[derive(Debug, Clone, Copy)]
pub struct Lhs<'a> {
    pub data: &'a [f32],
    pub ld: usize,
    pub layout: Layout,
}

/// What a product does with what `C` held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Into {
    /// `C += A · B`.
    Add,
    /// `C = A · B` (what `C` held is never read).
    Overwrite,
}

/// `c[i * ldc + j] (+)= Σ_p a(i, p) · b[p * ldb + j]` for `i < m`, `j < n`, `p < k`.
///
/// # Panics
/// When a slice is shorter than the dimensions say (a bug of the caller).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    a: Lhs<'_>,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    into: Into,
) {
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for (checked above).
        #[allow(unsafe_code)]
        unsafe {
            matmul_avx2_fma(m, n, k, a, b, ldb, c, ldc, into)
        };
        return;
    }
    matmul_with(m, n, k, a, b, ldb, c, ldc, into, |acc, x, w| acc + x * w);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn matmul_avx2_fma(
    m: usize,
    n: usize,
    k: usize,
    a: Lhs<'_>,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    into: Into,
) {
    matmul_with(m, n, k, a, b, ldb, c, ldc, into, |acc, x, w| {
        x.mul_add(w, acc)
    });
}

/// Rows of `C` a tile holds.
const MR: usize = 4;
/// Columns of `C` a full tile holds (two 8-lane registers).
const NR: usize = 16;

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn matmul_with(
    m: usize,
    n: usize,
    k: usize,
    a: Lhs<'_>,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    into: Into,
    madd: impl Fn(f32, f32, f32) -> f32 + Copy,
) {
    let args = Args {
        n,
        k,
        a,
        b,
        ldb,
        ldc,
        into,
    };
    let mut row = 0;
    while row + MR <= m {
        args.rows::<MR>(row, c, madd);
        row += MR;
    }
    match m - row {
        1 => args.rows::<1>(row, c, madd),
        2 => args.rows::<2>(row, c, madd),
        3 => args.rows::<3>(row, c, madd),
        _ => {}
    }
}

/// The dimensions and operands shared by every tile of one product.
#[derive(Clone, Copy)]
struct Args<'a> {
    n: usize,
    k: usize,
    a: Lhs<'a>,
    b: &'a [f32],
    ldb: usize,
    ldc: usize,
    into: Into,
}

impl Args<'_> {
    /// Rows `first..first + R` of `C`, across every column.
    #[inline(always)]
    fn rows<const R: usize>(
        &self,
        first: usize,
        c: &mut [f32],
        madd: impl Fn(f32, f32, f32) -> f32 + Copy,
    ) {
        let mut col = 0;
        while col + NR <= self.n {
            self.tile::<R, NR>(first, col, c, madd);
            col += NR;
        }
        if col + 8 <= self.n {
            self.tile::<R, 8>(first, col, c, madd);
            col += 8;
        }
        while col < self.n {
            self.tile::<R, 1>(first, col, c, madd);
            col += 1;
        }
    }

    /// The `R × W` block of `C` at (`first`, `col`): loaded, summed into in registers, stored.
    #[inline(always)]
    fn tile<const R: usize, const W: usize>(
        &self,
        first: usize,
        col: usize,
        c: &mut [f32],
        madd: impl Fn(f32, f32, f32) -> f32 + Copy,
    ) {
        let (k, ldb, ldc) = (self.k, self.ldb, self.ldc);
        let mut acc = [[0f32; W]; R];
        if self.into == Into::Add {
            for (r, acc) in acc.iter_mut().enumerate() {
                let start = (first + r) * ldc + col;
                acc.copy_from_slice(&c[start..start + W]);
            }
        }
        let b = &self.b[col..];
        match self.a.layout {
            Layout::RowMajor => {
                let rows: [&[f32]; R] = std::array::from_fn(|r| {
                    let start = (first + r) * self.a.ld;
                    &self.a.data[start..start + k]
                });
                for p in 0..k {
                    let w: &[f32; W] = row_of(b, p * ldb);
                    for (acc, row) in acc.iter_mut().zip(&rows) {
                        let x = row[p];
                        for (acc, &w) in acc.iter_mut().zip(w) {
                            *acc = madd(*acc, x, w);
                        }
                    }
                }
            }
            Layout::ColMajor => {
                let ld = self.a.ld;
                for p in 0..k {
                    let w: &[f32; W] = row_of(b, p * ldb);
                    let xs: &[f32; R] = row_of(self.a.data, p * ld + first);
                    for (acc, &x) in acc.iter_mut().zip(xs) {
                        for (acc, &w) in acc.iter_mut().zip(w) {
                            *acc = madd(*acc, x, w);
                        }
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let start = (first + r) * ldc + col;
            c[start..start + W].copy_from_slice(acc);
        }
    }
}

/// The `N` values of `data` from `start`.
#[inline(always)]
fn row_of<const N: usize>(data: &[f32], start: usize) -> &[f32; N] {
    match data[start..start + N].try_into() {
        Ok(row) => row,
        Err(_) => unreachable!("a slice of N values is an array of N"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product computed one scalar at a time, in f64.
    fn reference(m: usize, n: usize, k: usize, a: &Lhs<'_>, b: &[f32], ldb: usize) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let x = match a.layout {
                        Layout::RowMajor => a.data[i * a.ld + p],
                        Layout::ColMajor => a.data[p * a.ld + i],
                    };
                    c[i * n + j] += f64::from(x) * f64::from(b[p * ldb + j]);
                }
            }
        }
        c
    }

    fn values(count: usize, seed: u32) -> Vec<f32> {
        (0..count)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000)
            .map(|v| v as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn every_shape_and_layout_matches_the_reference() {
        for (m, n, k) in [
            (1, 1, 1),
            (4, 16, 3),
            (5, 25, 7),
            (7, 8, 1),
            (9, 41, 13),
            (64, 150, 128),
        ] {
            for layout in [Layout::RowMajor, Layout::ColMajor] {
                // Leading dimensions wider than the matrices, as padded buffers have.
                let (lda, ldb, ldc) = match layout {
                    Layout::RowMajor => (k + 2, n + 3, n + 1),
                    Layout::ColMajor => (m + 2, n + 3, n + 1),
                };
                let a_rows = if layout == Layout::RowMajor { m } else { k };
                let a_data = values(a_rows * lda, 1);
                let b = values(k * ldb, 2);
                let start = values(m * ldc, 3);
                let mut c = start.clone();
                let a = Lhs {
                    data: &a_data,
                    ld: lda,
                    layout,
                };
                matmul(m, n, k, a, &b, ldb, &mut c, ldc, Into::Add);
                let expected = reference(m, n, k, &a, &b, ldb);
                let mut overwritten = start.clone();
                matmul(m, n, k, a, &b, ldb, &mut overwritten, ldc, Into::Overwrite);
                for i in 0..m {
                    for j in 0..ldc {
                        let got = c[i * ldc + j];
                        if j >= n {
                            assert_eq!(got, start[i * ldc + j], "padding at ({i}, {j}) changed");
                            assert_eq!(overwritten[i * ldc + j], start[i * ldc + j]);
                            continue;
                        }
                        let want = expected[i * n + j] + f64::from(start[i * ldc + j]);
                        assert!(
                            (f64::from(got) - want).abs() < 1e-4,
                            "{m}×{n}×{k} {layout:?} ({i}, {j}): {got} against {want}"
                        );
                        let got = overwritten[i * ldc + j];
                        let want = expected[i * n + j];
                        assert!(
                            (f64::from(got) - want).abs() < 1e-4,
                            "{m}×{n}×{k} {layout:?} overwrite ({i}, {j}): {got} against {want}"
                        );
                    }
                }
            }
        }
    }
}
