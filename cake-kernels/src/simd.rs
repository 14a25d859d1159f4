//! Vector primitives of the host kernels: dot product, `y += a * x`, scaling, and a
//! numerically safe softmax with a vectorised `exp`.
//!
//! Each has an AVX2 + FMA body, chosen at run time when the processor has both, and a
//! portable scalar body (the reference the tests compare against). Results of the two
//! differ only by float reordering (and `exp`'s last bit).

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::silu_mul16;

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// `sum_i a[i] * b[i]` over the common length.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the processor supports AVX2 and FMA (checked above).
        return unsafe { x86::dot(a, b) };
    }
    scalar::dot(a, b)
}

/// Four dot products of rows `w[r * n..(r + 1) * n]` (`r < 4`, `n = x.len()`) with `x`:
/// one pass over `x` serves four weight rows (the GEMV's inner kernel).
pub fn dot4(w: &[f32], x: &[f32]) -> [f32; 4] {
    let n = x.len();
    assert!(w.len() >= 4 * n, "four rows of x.len()");
    dot4_at(w, [0, n, 2 * n, 3 * n], x)
}

/// [`dot4`] over four rows anywhere in `w`: row `r` is `w[at[r]..at[r] + x.len()]`, each
/// with [`dot_chain`]'s arithmetic.
///
/// # Panics
/// When a row lies outside `w`.
pub fn dot4_at(w: &[f32], at: [usize; 4], x: &[f32]) -> [f32; 4] {
    let n = x.len();
    assert!(
        at.iter()
            .all(|&a| a.checked_add(n).is_some_and(|end| end <= w.len())),
        "four rows of x.len() inside w"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: as in `dot`; every row lies in `w` (checked above).
        return unsafe { x86::dot4_at(w, at, x) };
    }
    at.map(|a| scalar::dot(&w[a..a + n], x))
}

/// One row of [`dot4`]: `w . x` (`w.len() >= x.len()`) with its arithmetic (eight lane
/// sums, each one chain of fused multiply-adds, then the horizontal sum and the tail).
pub fn dot_chain(w: &[f32], x: &[f32]) -> f32 {
    assert!(w.len() >= x.len(), "a row of x.len()");
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: as in `dot`; `w` holds a row of `x.len()` (checked above).
        return unsafe { x86::dot_chain(w, x) };
    }
    scalar::dot(&w[..x.len()], x)
}

/// `out[j] = rows[j] . x` for the `out.len()` rows of `rows` (`[n, d]`, `d = x.len()`):
/// the rows of whole fours with [`dot4`]'s arithmetic per row, the rest with [`dot`]'s.
///
/// The rows of whole fours are read as four long sequential streams, one per quarter of
/// them, a row of each quarter at a time. One stream (a row after another, each one chain
/// of multiply-adds) waits on the chain: one 8-wide FMA per 4 cycles reads 8 bytes a cycle,
/// about 21 GB/s a core at 2.6 GHz, under what a 2-core EPYC reads in its fast phases.
/// Four chains at once lift that limit, and quarters keep each stream long, which the
/// hardware prefetchers follow better than [`dot4`]'s four adjacent rows (streams of one
/// row each). Measured with the `gemv_bandwidth` example on a 2-core EPYC: see
/// `host::gemv`.
pub fn matvec(rows: &[f32], x: &[f32], out: &mut [f32]) {
    let d = x.len();
    assert!(rows.len() >= out.len() * d, "rows [out.len(), x.len()]");
    let quarter = out.len() / 4;
    for j in 0..quarter {
        let at = [0, 1, 2, 3].map(|q| (q * quarter + j) * d);
        for (q, v) in dot4_at(rows, at, x).into_iter().enumerate() {
            out[q * quarter + j] = v;
        }
    }
    for (j, o) in out.iter_mut().enumerate().skip(4 * quarter) {
        *o = dot(&rows[j * d..(j + 1) * d], x);
    }
}

/// `out[c] += sum_j weights[j] * rows[j * d + c]` (`d = out.len()`, `rows`: `[n, d]`,
/// `n = weights.len()`): the attention's weighted sum of value rows, with the output
/// held in registers over all rows instead of read and written once per row.
pub fn weighted_sum(out: &mut [f32], weights: &[f32], rows: &[f32]) {
    let d = out.len();
    assert!(
        rows.len() >= weights.len() * d,
        "one row of out.len() per weight"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: as in `dot`; `rows` holds `weights.len()` rows of `d` (checked above).
        return unsafe { x86::weighted_sum(out, weights, rows) };
    }
    scalar::weighted_sum(out, weights, rows)
}

/// How far ahead of the rows they read the decoding attention's kernels request rows into
/// L2: 8 KiB. The hardware prefetcher alone left one core reading a cache of Llama-3.1-8B's
/// shape at 10 GB/s. The requests run on past a chunk's last row where the caller's slice
/// does (a decode task's later chunks). Alternated on a 2-core EPYC (`attention_bandwidth`,
/// SmolLM2-135M at 8K tokens, tasks of several chunks): 8 KiB ahead read 32.5-36.5 GB/s in
/// the machine's fast phases against 28-31 for 4 KiB and 26-29 for none; 16 and 32 KiB no
/// better than 8. The value rows are requested by the value pass itself, not while the keys
/// are scored: both at once read slower than one after the other.
const AHEAD_BYTES: usize = 8192;

/// [`matvec`] for the `G = queries.len() / d` queries of one KV head's group at once
/// (`rows`: `[n, d]`, `out`: `[G, n]`, row `g` for query `g`): each key row is read once
/// for up to four queries instead of once per query, with the same bits per (row, query) as
/// [`matvec`] (the same lane-wise sums and horizontal sum, where AVX-512 offers the
/// registers), the rows requested into L2 `AHEAD_BYTES` (8 KiB) ahead of the reads.
pub fn matvec_group(rows: &[f32], queries: &[f32], d: usize, out: &mut [f32]) {
    let group = queries.len() / d.max(1);
    let n = out.len() / group.max(1);
    assert!(
        queries.len() == group * d && out.len() == group * n && rows.len() >= n * d,
        "rows [n, d], queries [G, d], out [G, n]"
    );
    matvec_group_in(rows, Packed(d), queries, d, out);
}

/// [`matvec_group`] over rows that need not be contiguous: row `j` is
/// `data[at[j]..at[j] + d]` (`out`: `[G, at.len()]`). Each (row, query) gets the bits
/// [`matvec_group`] gives it at the same index `j` of packed rows, wherever the row sits.
///
/// # Panics
/// When a row lies outside `data` or the lengths disagree.
pub fn matvec_group_listed(data: &[f32], at: &[usize], queries: &[f32], d: usize, out: &mut [f32]) {
    let group = queries.len() / d.max(1);
    assert!(
        queries.len() == group * d && out.len() == group * at.len(),
        "queries [G, d], out [G, at.len()]"
    );
    matvec_group_in(data, Listed::new(data, at, d), queries, d, out);
}

/// Where a kernel finds the rows it reads in its data: row `j` starts at element `at(j)`.
pub trait RowTable: Copy {
    /// Element offset of row `j`.
    fn at(self, j: usize) -> usize;

    /// Where to request data `lead` elements ahead of row `j`'s start into the caches, or
    /// `None` when that lies past the rows.
    fn ahead(self, j: usize, lead: usize) -> Option<usize>;
}

/// Rows back to back, each this many elements (the data ends where the rows do).
#[derive(Debug, Clone, Copy)]
pub struct Packed(pub usize);

impl RowTable for Packed {
    #[inline(always)]
    fn at(self, j: usize) -> usize {
        j * self.0
    }

    #[inline(always)]
    fn ahead(self, j: usize, lead: usize) -> Option<usize> {
        Some(j * self.0 + lead)
    }
}

/// Rows at listed element offsets, each `dim` elements (the data holds more than the rows:
/// requests ahead stop at the last row, as they stop at the end of packed rows).
#[derive(Debug, Clone, Copy)]
struct Listed<'a> {
    at: &'a [usize],
    dim: usize,
}

impl<'a> Listed<'a> {
    /// Rows of `dim` at offsets `at` in `data`.
    ///
    /// # Panics
    /// When a row lies outside `data` (the kernels read them unchecked).
    fn new(data: &[f32], at: &'a [usize], dim: usize) -> Self {
        assert!(
            at.iter().max().is_none_or(|&a| a + dim <= data.len()),
            "rows inside data"
        );
        Self { at, dim }
    }
}

impl RowTable for Listed<'_> {
    #[inline(always)]
    fn at(self, j: usize) -> usize {
        self.at[j]
    }

    #[inline(always)]
    fn ahead(self, j: usize, lead: usize) -> Option<usize> {
        let rows = lead.div_ceil(self.dim.max(1));
        self.at.get(j + rows).copied()
    }
}

/// The body of [`matvec_group`] and [`matvec_group_listed`]: the caller checked that
/// `queries` is `[G, d]`, `out` `[G, n]` and that rows `0..n` of `rows` lie in `data`.
fn matvec_group_in<R: RowTable>(data: &[f32], rows: R, queries: &[f32], d: usize, out: &mut [f32]) {
    let group = queries.len() / d.max(1);
    let n = out.len() / group.max(1);
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() && std::is_x86_feature_detected!("avx512vl") {
        // Groups of four where they divide evenly (Llama and Mistral's G = 4 in one pass
        // over the rows), else of three (16 or 12 accumulators of the 32 registers).
        let step = if group.is_multiple_of(4) { 4 } else { 3 };
        for g0 in (0..group).step_by(step) {
            let heads = step.min(group - g0);
            let q = &queries[g0 * d..(g0 + heads) * d];
            let o = &mut out[g0 * n..(g0 + heads) * n];
            // The rows ahead are requested once, with the first heads.
            let ahead = g0 == 0;
            // SAFETY: AVX2, FMA and AVX-512VL (checked above); `rows` places n rows of d
            // in `data`, `q` holds `heads` queries of d and `o` `heads` rows of n (checked
            // by the caller).
            unsafe {
                match heads {
                    4 => x86::matvec_heads::<4, R>(data, rows, q, d, o, ahead),
                    3 => x86::matvec_heads::<3, R>(data, rows, q, d, o, ahead),
                    2 => x86::matvec_heads::<2, R>(data, rows, q, d, o, ahead),
                    _ => x86::matvec_heads::<1, R>(data, rows, q, d, o, ahead),
                }
            }
        }
        return;
    }
    // `matvec`'s arithmetic per row index.
    let quads = n / 4 * 4;
    for (q, o) in queries.chunks_exact(d).zip(out.chunks_exact_mut(n)) {
        for (j, o) in o.iter_mut().enumerate() {
            let row = &data[rows.at(j)..rows.at(j) + d];
            *o = if j < quads {
                dot_chain(row, q)
            } else {
                dot(row, q)
            };
        }
    }
}

/// [`weighted_sum`] for the `G = out.len() / d` query heads of one KV head's group at
/// once (`out`: `[G, d]`, `weights`: `[G, n]`, `rows`: `[n, d]`): each value row is read
/// once for up to four heads, with the same bits per output as [`weighted_sum`] (one fused
/// multiply-add chain per output over the rows in order).
pub fn weighted_sum_group(out: &mut [f32], weights: &[f32], rows: &[f32], d: usize) {
    let group = out.len() / d.max(1);
    let n = weights.len() / group.max(1);
    assert!(
        out.len() == group * d && weights.len() == group * n && rows.len() >= n * d,
        "out [G, d], weights [G, n], rows [n, d]"
    );
    weighted_sum_group_in(out, weights, rows, Packed(d), d);
}

/// [`weighted_sum_group`] over rows that need not be contiguous: row `j` is
/// `data[at[j]..at[j] + d]` (`weights`: `[G, at.len()]`), with the same bits as
/// [`weighted_sum_group`] over the same rows packed.
///
/// # Panics
/// When a row lies outside `data` or the lengths disagree.
pub fn weighted_sum_group_listed(
    out: &mut [f32],
    weights: &[f32],
    data: &[f32],
    at: &[usize],
    d: usize,
) {
    let group = out.len() / d.max(1);
    assert!(
        out.len() == group * d && weights.len() == group * at.len(),
        "out [G, d], weights [G, at.len()]"
    );
    weighted_sum_group_in(out, weights, data, Listed::new(data, at, d), d);
}

/// The body of [`weighted_sum_group`] and [`weighted_sum_group_listed`]: the caller
/// checked that `out` is `[G, d]`, `weights` `[G, n]` and that rows `0..n` of `rows` lie
/// in `data`.
fn weighted_sum_group_in<R: RowTable>(
    out: &mut [f32],
    weights: &[f32],
    data: &[f32],
    rows: R,
    d: usize,
) {
    let group = out.len() / d.max(1);
    let n = weights.len() / group.max(1);
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(16) && std::is_x86_feature_detected!("avx512f") {
        for g0 in (0..group).step_by(4) {
            let heads = 4.min(group - g0);
            let o = &mut out[g0 * d..(g0 + heads) * d];
            let w = &weights[g0 * n..(g0 + heads) * n];
            // SAFETY: AVX-512F (checked above); d a multiple of 16; `o` holds `heads` rows
            // of d, `w` `heads` rows of n, `rows` places n rows of d in `data` (checked by
            // the caller).
            unsafe {
                match heads {
                    4 => x86::weighted_sum_heads::<4, R>(o, w, data, rows, d),
                    3 => x86::weighted_sum_heads::<3, R>(o, w, data, rows, d),
                    2 => x86::weighted_sum_heads::<2, R>(o, w, data, rows, d),
                    _ => x86::weighted_sum_heads::<1, R>(o, w, data, rows, d),
                }
            }
        }
        return;
    }
    // Each output is one chain over the rows in order, continued from `out`: summing
    // run by run of contiguous rows gives the same bits.
    for (o, w) in out.chunks_exact_mut(d).zip(weights.chunks_exact(n.max(1))) {
        let mut j = 0;
        while j < n {
            let start = rows.at(j);
            let mut end = j + 1;
            while end < n && rows.at(end) == start + (end - j) * d {
                end += 1;
            }
            weighted_sum(o, &w[j..end], &data[start..start + (end - j) * d]);
            j = end;
        }
    }
}

/// `y[i] += a * x[i]` over the common length.
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: as in `dot`.
        return unsafe { x86::axpy(y, a, x) };
    }
    scalar::axpy(y, a, x)
}

/// The largest value of `row`, NaN ignored (`-inf` when empty): what
/// `fold(-inf, f32::max)` gives, up to the sign of a zero maximum.
pub fn max(row: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: as in `dot`.
        return unsafe { x86::max(row) };
    }
    row.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// In place: `row = exp(row - max(row))`; returns `(max, sum of the exponentials)`.
/// An empty row returns `(-inf, 0)`.
pub fn exp_shifted(row: &mut [f32]) -> (f32, f32) {
    let max = max(row);
    if row.is_empty() || max == f32::NEG_INFINITY {
        row.fill(0.0);
        return (max, 0.0);
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: as in `dot`.
        return (max, unsafe { x86::exp_shifted(row, max) });
    }
    (max, scalar::exp_shifted(row, max))
}

/// SwiGLU's middle: `out[i] = silu(gate[i]) * up[i]` with `silu(g) = g / (1 + exp(-g))`.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: as in `dot`.
        return unsafe { x86::silu_mul(gate, up, out) };
    }
    scalar::silu_mul(gate, up, out)
}

/// In place: `row = exp(row - max)` for a given `max` (at least the row's maximum);
/// returns the sum of the exponentials.
pub fn exp_sub(row: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: as in `dot`.
        return unsafe { x86::exp_shifted(row, max) };
    }
    scalar::exp_shifted(row, max)
}

/// [`exp_sub`] in sixteen lanes where the processor has AVX-512F (else `exp_sub`
/// itself): the same exponentials, summed in another order. The tiled attention's.
pub fn exp_sub_wide(row: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the processor supports AVX-512F (checked above).
        return unsafe { x86::exp_shifted_wide(row, max) };
    }
    exp_sub(row, max)
}

/// In place: `row *= a`.
pub fn scale(row: &mut [f32], a: f32) {
    for x in row {
        *x *= a;
    }
}

/// In place softmax of `row` (empty rows stay empty).
pub fn softmax(row: &mut [f32]) {
    let (_, sum) = exp_shifted(row);
    if sum > 0.0 {
        scale(row, 1.0 / sum);
    }
}

/// The two sums of CAKE's layer preference over a block of `rows` rows of `cols` values
/// (row `r` is `data[r * stride..][..cols]`): `(sum x ln(x + 1e-10), sum over columns of
/// the unbiased variance down the rows)`, the variance `(sum x^2 - rows mean^2) / (rows -
/// 1)` clamped at 0 (0 when `rows < 2`). Sums in f32 per column block, totalled in f64.
/// With AVX-512F, sixteen columns at a time and a vector `ln` (Cephes' polynomial, within
/// about 1 ulp of `f32::ln`); elsewhere, column by column with `f32::ln`.
///
/// # Panics
/// When `data` is shorter than the block.
pub fn entropy_and_variance(data: &[f32], stride: usize, rows: usize, cols: usize) -> (f64, f64) {
    if rows == 0 || cols == 0 {
        return (0.0, 0.0);
    }
    assert!(
        data.len() >= (rows - 1) * stride + cols,
        "rows of cols at the given stride"
    );
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the processor supports AVX-512F; the block lies in `data` (checked above).
        return unsafe { x86::entropy_and_variance(data, stride, rows, cols) };
    }
    scalar::entropy_and_variance(data, stride, rows, cols)
}

/// The portable bodies (and the tests' reference).
pub mod scalar {
    /// See [`super::dot`]; eight independent partial sums.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = [0.0f32; 8];
        let (a8, b8) = (a[..n].chunks_exact(8), b[..n].chunks_exact(8));
        let tail: f32 = a8
            .remainder()
            .iter()
            .zip(b8.remainder())
            .map(|(x, y)| x * y)
            .sum();
        for (x, y) in a8.zip(b8) {
            for k in 0..8 {
                acc[k] += x[k] * y[k];
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    /// See [`super::axpy`].
    pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        for (y, x) in y.iter_mut().zip(x) {
            *y += a * x;
        }
    }

    /// See [`super::weighted_sum`].
    pub fn weighted_sum(out: &mut [f32], weights: &[f32], rows: &[f32]) {
        let d = out.len();
        for (&w, row) in weights.iter().zip(rows.chunks_exact(d.max(1))) {
            axpy(out, w, row);
        }
    }

    /// See [`super::silu_mul`].
    pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }

    /// `row = exp(row - max)`, returns the sum.
    pub fn exp_shifted(row: &mut [f32], max: f32) -> f32 {
        let mut sum = 0.0;
        for x in row {
            *x = (*x - max).exp();
            sum += *x;
        }
        sum
    }

    /// See [`super::entropy_and_variance`]; column by column.
    pub fn entropy_and_variance(
        data: &[f32],
        stride: usize,
        rows: usize,
        cols: usize,
    ) -> (f64, f64) {
        let (w, wm1) = (rows as f32, (rows as f32 - 1.0).max(1.0));
        let (mut terms, mut variance) = (0.0f64, 0.0f64);
        for c in 0..cols {
            let (mut t, mut sum, mut sum_sq) = (0.0f32, 0.0f32, 0.0f32);
            for r in 0..rows {
                let x = data[r * stride + c];
                t += x * (x + 1e-10).ln();
                sum += x;
                sum_sq = x.mul_add(x, sum_sq);
            }
            terms += f64::from(t);
            if rows >= 2 {
                let mean = sum / w;
                variance += f64::from(((sum_sq - mean * mean * w) / wm1).max(0.0));
            }
        }
        (terms, variance)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`hsum`] of four vectors at once, with its bits: the same additions of the same
    /// operands (the halves, then lanes 0 + 2 and 1 + 3, then those two), four vectors to a
    /// register instead of one.
    #[target_feature(enable = "avx2,fma")]
    fn hsum4(v: [__m256; 4]) -> __m128 {
        // [v0.lo + v0.hi | v1.lo + v1.hi] and the same for v2, v3: hsum's first additions.
        let halves = |a: __m256, b: __m256| {
            _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(a, b),
                _mm256_permute2f128_ps::<0x31>(a, b),
            )
        };
        // Lanes s0, s2, s1, s3 of each sum, so that pairwise sums give s0 + s2 and s1 + s3.
        let pairs = |s: __m256| _mm256_permute_ps::<0b11_01_10_00>(s);
        let (p01, p23) = (pairs(halves(v[0], v[1])), pairs(halves(v[2], v[3])));
        // Low lane: v0's (s0 + s2, s1 + s3), v2's; high lane: v1's, v3's.
        let h = _mm256_hadd_ps(p01, p23);
        // Low lane: v0's total, v2's total (twice); high lane: v1's, v3's.
        let t = _mm256_hadd_ps(h, h);
        let (lo, hi) = (_mm256_castps256_ps128(t), _mm256_extractf128_ps::<1>(t));
        // [v0, v1, v2, v3]
        _mm_unpacklo_ps(lo, hi)
    }

    /// Horizontal sum of the eight lanes.
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Four independent lane-wise maxima (`max_ps(x, acc)` keeps `acc` when `x` is NaN).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn max(row: &[f32]) -> f32 {
        let (n, p) = (row.len(), row.as_ptr());
        let mut acc = [_mm256_set1_ps(f32::NEG_INFINITY); 4];
        let mut i = 0;
        // SAFETY: i + 32 <= n bounds the reads.
        unsafe {
            while i + 32 <= n {
                for (k, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_max_ps(_mm256_loadu_ps(p.add(i + 8 * k)), *acc);
                }
                i += 32;
            }
        }
        let v = _mm256_max_ps(_mm256_max_ps(acc[0], acc[1]), _mm256_max_ps(acc[2], acc[3]));
        let mut lanes = [0.0f32; 8];
        // SAFETY: eight floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        lanes
            .into_iter()
            .chain(row[i..].iter().copied())
            .fold(f32::NEG_INFINITY, f32::max)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): i + 32 <= n, resp. i + 8 <= n, bounds both slices.
        unsafe {
            while i + 32 <= n {
                for (k, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_loadu_ps(pa.add(i + 8 * k));
                    let y = _mm256_loadu_ps(pb.add(i + 8 * k));
                    *acc = _mm256_fmadd_ps(x, y, *acc);
                }
                i += 32;
            }
            while i + 8 <= n {
                let x = _mm256_loadu_ps(pa.add(i));
                let y = _mm256_loadu_ps(pb.add(i));
                acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
                i += 8;
            }
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut total = hsum(sum);
        for j in i..n {
            total += a[j] * b[j];
        }
        total
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_chain(w: &[f32], x: &[f32]) -> f32 {
        let n = x.len();
        let (pw, px) = (w.as_ptr(), x.as_ptr());
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: i + 8 <= n bounds x and w (at least n long).
        unsafe {
            while i + 8 <= n {
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(pw.add(i)), _mm256_loadu_ps(px.add(i)), acc);
                i += 8;
            }
        }
        let mut out = hsum(acc);
        for j in i..n {
            out += w[j] * x[j];
        }
        out
    }

    /// Four rows of `w` starting at elements `at[r]`, each dotted with `x` as one chain.
    ///
    /// # Safety
    /// AVX2 and FMA; the caller checks `at[r] + x.len() <= w.len()` for every `r`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot4_at(w: &[f32], at: [usize; 4], x: &[f32]) -> [f32; 4] {
        let n = x.len();
        let px = x.as_ptr();
        // SAFETY: each row start lies in w (checked by the caller).
        let pw = at.map(|a| unsafe { w.as_ptr().add(a) });
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: i + 8 <= n bounds x, and row r's elements at[r] + i.. bound w.
        unsafe {
            while i + 8 <= n {
                let xv = _mm256_loadu_ps(px.add(i));
                for (r, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(_mm256_loadu_ps(pw[r].add(i)), xv, *acc);
                }
                i += 8;
            }
        }
        let mut out = [0.0f32; 4];
        for r in 0..4 {
            out[r] = hsum(acc[r]);
            for j in i..n {
                out[r] += w[at[r] + j] * x[j];
            }
        }
        out
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weighted_sum(out: &mut [f32], weights: &[f32], rows: &[f32]) {
        const TILE: usize = 64;
        let d = out.len();
        let (po, pr) = (out.as_mut_ptr(), rows.as_ptr());
        let mut c = 0;
        // SAFETY (all accesses): c + TILE <= d, resp. c + 8 <= d, bounds `out`, and row j's
        // elements j * d + c.. bound `rows` (weights.len() rows of d, checked by the caller).
        unsafe {
            // Tiles of 64 columns: eight accumulators live in registers over all rows.
            while c + TILE <= d {
                let mut acc = [_mm256_setzero_ps(); TILE / 8];
                for (k, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_loadu_ps(po.add(c + 8 * k));
                }
                for (j, &w) in weights.iter().enumerate() {
                    let wv = _mm256_set1_ps(w);
                    let row = pr.add(j * d + c);
                    for (k, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm256_fmadd_ps(wv, _mm256_loadu_ps(row.add(8 * k)), *acc);
                    }
                }
                for (k, acc) in acc.iter().enumerate() {
                    _mm256_storeu_ps(po.add(c + 8 * k), *acc);
                }
                c += TILE;
            }
            while c + 8 <= d {
                let mut acc = _mm256_loadu_ps(po.add(c));
                for (j, &w) in weights.iter().enumerate() {
                    acc =
                        _mm256_fmadd_ps(_mm256_set1_ps(w), _mm256_loadu_ps(pr.add(j * d + c)), acc);
                }
                _mm256_storeu_ps(po.add(c), acc);
                c += 8;
            }
        }
        for col in c..d {
            for (j, &w) in weights.iter().enumerate() {
                out[col] += w * rows[j * d + col];
            }
        }
    }

    /// Requests `data[from..from + len]` into L2, one request per cache line, cut at the
    /// slice's end (a prefetch reads nothing and never faults).
    #[inline(always)]
    fn request_l2(data: &[f32], from: usize, len: usize) {
        let end = (from + len).min(data.len());
        for at in (from..end).step_by(16) {
            // SAFETY: `at < data.len()`, inside the slice.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(data.as_ptr().add(at).cast()) };
        }
    }

    /// Requests the first of `n` rows, those within `lead` elements of the first, into L2
    /// all at once: the requests ahead of the reads start `lead` past the first row, so a
    /// pass would otherwise read its first rows unrequested, one miss after another.
    #[inline(always)]
    fn request_first<R: super::RowTable>(data: &[f32], rows: R, n: usize, d: usize, lead: usize) {
        for j in 0..n.min(lead.div_ceil(d.max(1))) {
            request_l2(data, rows.at(j), d);
        }
    }

    /// See [`super::matvec_group`]: `G <= 4` queries; per (row, query) the arithmetic of
    /// [`dot4`] (four rows at a time) and of [`dot`] (the rows after the last four). With
    /// `ahead`, each quad's rows [`super::AHEAD_BYTES`] further on are requested into L2.
    ///
    /// # Safety
    /// AVX2, FMA and AVX-512VL (the 32 vector registers); rows `0..n` of `rows` must lie
    /// in `data` (`d` elements each), `queries` hold `G` rows of `d` and `out` `G` rows of
    /// `n`.
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl")]
    pub unsafe fn matvec_heads<const G: usize, R: super::RowTable>(
        data: &[f32],
        rows: R,
        queries: &[f32],
        d: usize,
        out: &mut [f32],
        ahead: bool,
    ) {
        let n = out.len() / G;
        let (pw, pq) = (data.as_ptr(), queries.as_ptr());
        let lead = super::AHEAD_BYTES / 4;
        if ahead {
            request_first(data, rows, n, d, lead);
        }
        for quad in 0..n / 4 {
            if ahead && let Some(at) = rows.ahead(4 * quad, lead) {
                request_l2(data, at, 4 * d);
            }
            let at: [usize; 4] = std::array::from_fn(|r| rows.at(4 * quad + r));
            let mut acc = [[_mm256_setzero_ps(); 4]; G];
            let mut i = 0;
            // SAFETY: i + 8 <= d bounds each query, and row r's elements at[r] + i.. lie in
            // `data` (the caller's).
            unsafe {
                while i + 8 <= d {
                    let k: [__m256; 4] =
                        std::array::from_fn(|r| _mm256_loadu_ps(pw.add(at[r] + i)));
                    for (g, acc) in acc.iter_mut().enumerate() {
                        let xv = _mm256_loadu_ps(pq.add(g * d + i));
                        for (acc, &k) in acc.iter_mut().zip(&k) {
                            *acc = _mm256_fmadd_ps(k, xv, *acc);
                        }
                    }
                    i += 8;
                }
            }
            for (g, &acc) in acc.iter().enumerate() {
                let x = &queries[g * d..(g + 1) * d];
                let mut sums = [0.0f32; 4];
                // SAFETY: four floats.
                unsafe { _mm_storeu_ps(sums.as_mut_ptr(), hsum4(acc)) };
                for (r, sum) in sums.iter_mut().enumerate() {
                    for j in i..d {
                        *sum += data[at[r] + j] * x[j];
                    }
                }
                out[g * n + 4 * quad..][..4].copy_from_slice(&sums);
            }
        }
        for j in n / 4 * 4..n {
            let row = &data[rows.at(j)..rows.at(j) + d];
            for g in 0..G {
                // SAFETY: the features this function enables include `dot`'s.
                out[g * n + j] = unsafe { dot(row, &queries[g * d..(g + 1) * d]) };
            }
        }
    }

    /// See [`super::weighted_sum_group`]: `G <= 4` heads, blocks of 64 columns (16 for the
    /// rest), each output one fused multiply-add chain over the rows in order, starting
    /// from its value in `out`: [`weighted_sum`]'s arithmetic lane by lane.
    ///
    /// # Safety
    /// AVX-512F; `d` a multiple of 16; `out` must hold `G` rows of `d`, `weights` `G` rows
    /// of `n`, and rows `0..n` of `rows` must lie in `data` (`d` elements each).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weighted_sum_heads<const G: usize, R: super::RowTable>(
        out: &mut [f32],
        weights: &[f32],
        data: &[f32],
        rows: R,
        d: usize,
    ) {
        let n = weights.len() / G;
        let (po, pw, pr) = (out.as_mut_ptr(), weights.as_ptr(), data.as_ptr());
        // The first pass over the rows requests whole rows this far ahead into L2 (the
        // passes over later columns then read them there).
        let lead = (super::AHEAD_BYTES / 4).next_multiple_of(d);
        request_first(data, rows, n, d, lead);
        let mut c = 0;
        // SAFETY (all accesses): columns c.. c + 16 V <= d of G rows of `out`, of rows j < n
        // of `rows` (in `data`) and entries j < n of G rows of `weights` (the caller's).
        unsafe {
            while c + 64 <= d {
                let mut acc: [[__m512; 4]; G] = std::array::from_fn(|g| {
                    std::array::from_fn(|v| _mm512_loadu_ps(po.add(g * d + c + 16 * v)))
                });
                for j in 0..n {
                    if c == 0
                        && let Some(at) = rows.ahead(j, lead)
                    {
                        request_l2(data, at, d);
                    }
                    let row: [__m512; 4] =
                        std::array::from_fn(|v| _mm512_loadu_ps(pr.add(rows.at(j) + c + 16 * v)));
                    for (g, acc) in acc.iter_mut().enumerate() {
                        let w = _mm512_set1_ps(*pw.add(g * n + j));
                        for (acc, &x) in acc.iter_mut().zip(&row) {
                            *acc = _mm512_fmadd_ps(w, x, *acc);
                        }
                    }
                }
                for (g, acc) in acc.iter().enumerate() {
                    for (v, &a) in acc.iter().enumerate() {
                        _mm512_storeu_ps(po.add(g * d + c + 16 * v), a);
                    }
                }
                c += 64;
            }
            while c + 16 <= d {
                let mut acc: [__m512; G] =
                    std::array::from_fn(|g| _mm512_loadu_ps(po.add(g * d + c)));
                for j in 0..n {
                    if c == 0
                        && let Some(at) = rows.ahead(j, lead)
                    {
                        request_l2(data, at, d);
                    }
                    let x = _mm512_loadu_ps(pr.add(rows.at(j) + c));
                    for (g, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm512_fmadd_ps(_mm512_set1_ps(*pw.add(g * n + j)), x, *acc);
                    }
                }
                for (g, &a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(po.add(g * d + c), a);
                }
                c += 16;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        let n = y.len().min(x.len());
        let (py, px) = (y.as_mut_ptr(), x.as_ptr());
        let av = _mm256_set1_ps(a);
        let mut i = 0;
        // SAFETY: i + 8 <= n bounds both slices.
        unsafe {
            while i + 8 <= n {
                let v = _mm256_fmadd_ps(av, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
                _mm256_storeu_ps(py.add(i), v);
                i += 8;
            }
        }
        for j in i..n {
            y[j] += a * x[j];
        }
    }

    /// Inputs clamped to this range before `exp`.
    const EXP_DOMAIN: (f32, f32) = (-87.336_54, 88.376_26);
    /// ln 2 split in two for precision: `r = x - n hi - n lo`.
    const LN2_PARTS: (f32, f32) = (0.693_359_4, -2.121_944_4e-4);
    /// Cephes' polynomial for `exp(r) - 1 - r`, over `r^2`, highest degree first.
    const EXP_POLY: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];

    /// `exp` of eight lanes (Cephes' single-precision polynomial; inputs clamped to
    /// [`EXP_DOMAIN`], relative error about 2e-7).
    #[target_feature(enable = "avx2,fma")]
    fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(EXP_DOMAIN.0)),
            _mm256_set1_ps(EXP_DOMAIN.1),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_PARTS.0), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_PARTS.1), r);
        let mut p = _mm256_set1_ps(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let y = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(y, _mm256_castsi256_ps(bits))
    }

    /// [`exp8`] on sixteen lanes: the same operations lane by lane, so the same bits.
    #[target_feature(enable = "avx512f")]
    fn exp16(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(EXP_DOMAIN.0)),
            _mm512_set1_ps(EXP_DOMAIN.1),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_PARTS.0), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_PARTS.1), r);
        let mut p = _mm512_set1_ps(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let y = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(
            _mm512_cvtps_epi32(n),
            _mm512_set1_epi32(127),
        ));
        _mm512_mul_ps(y, _mm512_castsi512_ps(bits))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = out.len().min(gate.len()).min(up.len());
        let (pg, pu, po) = (gate.as_ptr(), up.as_ptr(), out.as_mut_ptr());
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        // SAFETY: i + 8 <= n bounds the three slices.
        unsafe {
            while i + 8 <= n {
                let g = _mm256_loadu_ps(pg.add(i));
                let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
                let silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
                _mm256_storeu_ps(po.add(i), _mm256_mul_ps(silu, _mm256_loadu_ps(pu.add(i))));
                i += 8;
            }
        }
        for j in i..n {
            out[j] = gate[j] / (1.0 + (-gate[j]).exp()) * up[j];
        }
    }

    /// `silu(g) * u` on sixteen lanes, lane by lane the operations (and bits) of
    /// [`silu_mul`]'s eight-lane body.
    #[target_feature(enable = "avx512f")]
    pub(crate) fn silu_mul16(g: __m512, u: __m512) -> __m512 {
        let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
        let silu = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0), e));
        _mm512_mul_ps(silu, u)
    }

    /// [`exp_shifted`] on sixteen lanes, the tail masked (no scalar `exp`), the sum in two
    /// vectors.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_shifted_wide(row: &mut [f32], max: f32) -> f32 {
        let (n, p) = (row.len(), row.as_mut_ptr());
        let m = _mm512_set1_ps(max);
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut i = 0;
        // SAFETY: the masks keep every access below n.
        unsafe {
            while i < n {
                let mask: __mmask16 = if n - i >= 16 { !0 } else { (1 << (n - i)) - 1 };
                let x = _mm512_maskz_loadu_ps(mask, p.add(i));
                let e = _mm512_maskz_mov_ps(mask, exp16(_mm512_sub_ps(x, m)));
                _mm512_mask_storeu_ps(p.add(i), mask, e);
                acc[(i / 16) % 2] = _mm512_add_ps(acc[(i / 16) % 2], e);
                i += 16;
            }
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted(row: &mut [f32], max: f32) -> f32 {
        let n = row.len();
        let p = row.as_mut_ptr();
        let m = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        // SAFETY: i + 8 <= n bounds the slice.
        unsafe {
            while i + 8 <= n {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
                _mm256_storeu_ps(p.add(i), e);
                acc = _mm256_add_ps(acc, e);
                i += 8;
            }
        }
        let mut sum = hsum(acc);
        for x in &mut row[i..] {
            *x = (*x - max).exp();
            sum += *x;
        }
        sum
    }
    /// `sqrt(1/2)`: Cephes' `logf` folds mantissas below it into `[sqrt(1/2), sqrt(2))`.
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    /// Cephes' polynomial for `ln(1 + m) - m + m^2 / 2`, over `m^3`, highest degree first.
    const LN_POLY: [f32; 9] = [
        7.037_683_6e-2,
        -1.151_461e-1,
        1.167_699_9e-1,
        -1.242_014_1e-1,
        1.424_932_3e-1,
        -1.666_805_8e-1,
        2.000_071_4e-1,
        -2.499_999_4e-1,
        3.333_333e-1,
    ];

    /// `ln` of sixteen positive, normal lanes (Cephes' single-precision `logf`: the
    /// exponent split off, the mantissa folded into `[sqrt(1/2), sqrt(2))`, a degree-9
    /// polynomial; relative error about 1e-7). Not for zero, negative, subnormal or
    /// non-finite lanes.
    #[target_feature(enable = "avx512f")]
    pub(crate) fn ln16(x: __m512) -> __m512 {
        let one = _mm512_set1_ps(1.0);
        let bits = _mm512_castps_si512(x);
        // x = m 2^e with m in [0.5, 1).
        let e = _mm512_sub_epi32(_mm512_srli_epi32::<23>(bits), _mm512_set1_epi32(126));
        let m = _mm512_castsi512_ps(_mm512_or_si512(
            _mm512_and_si512(bits, _mm512_set1_epi32(0x007f_ffff)),
            _mm512_set1_epi32(0x3f00_0000),
        ));
        let small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(m, _mm512_set1_ps(SQRT_HALF));
        let e = _mm512_cvtepi32_ps(e);
        let e = _mm512_mask_sub_ps(e, small, e, one);
        // m - 1 in [sqrt(1/2) - 1, sqrt(2) - 1).
        let m = _mm512_sub_ps(_mm512_mask_add_ps(m, small, m, m), one);
        let z = _mm512_mul_ps(m, m);
        let mut p = _mm512_set1_ps(LN_POLY[0]);
        for c in &LN_POLY[1..] {
            p = _mm512_fmadd_ps(p, m, _mm512_set1_ps(*c));
        }
        let y = _mm512_mul_ps(_mm512_mul_ps(p, m), z);
        let y = _mm512_fmadd_ps(e, _mm512_set1_ps(LN2_PARTS.1), y);
        let y = _mm512_fnmadd_ps(z, _mm512_set1_ps(0.5), y);
        _mm512_fmadd_ps(e, _mm512_set1_ps(LN2_PARTS.0), _mm512_add_ps(m, y))
    }

    /// See [`super::entropy_and_variance`]; sixteen columns at a time, the tail masked
    /// (masked lanes are zeros: no term, no variance).
    ///
    /// # Safety
    /// The block must lie in `data` (`rows >= 1`).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn entropy_and_variance(
        data: &[f32],
        stride: usize,
        rows: usize,
        cols: usize,
    ) -> (f64, f64) {
        let p = data.as_ptr();
        let (w, wm1) = (rows as f32, (rows as f32 - 1.0).max(1.0));
        let (eps, zero) = (_mm512_set1_ps(1e-10), _mm512_setzero_ps());
        let (mut terms, mut variance) = (0.0f64, 0.0f64);
        for c0 in (0..cols).step_by(16) {
            let mask: __mmask16 = if cols - c0 >= 16 {
                !0
            } else {
                (1 << (cols - c0)) - 1
            };
            let (mut t, mut sum, mut sum_sq) = (zero, zero, zero);
            for r in 0..rows {
                // SAFETY: row r's columns c0.. under the mask lie in the block (the caller's).
                let x = unsafe { _mm512_maskz_loadu_ps(mask, p.add(r * stride + c0)) };
                t = _mm512_fmadd_ps(x, ln16(_mm512_add_ps(x, eps)), t);
                sum = _mm512_add_ps(sum, x);
                sum_sq = _mm512_fmadd_ps(x, x, sum_sq);
            }
            terms += f64::from(_mm512_reduce_add_ps(t));
            if rows >= 2 {
                let mean = _mm512_div_ps(sum, _mm512_set1_ps(w));
                let centred = _mm512_sub_ps(
                    sum_sq,
                    _mm512_mul_ps(_mm512_mul_ps(mean, mean), _mm512_set1_ps(w)),
                );
                let var = _mm512_max_ps(_mm512_div_ps(centred, _mm512_set1_ps(wm1)), zero);
                variance += f64::from(_mm512_reduce_add_ps(var));
            }
        }
        (terms, variance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 + seed) * 0.731).sin() * 3.0)
            .collect()
    }

    #[test]
    fn matvec_rows_have_the_bits_of_dot4() {
        // Rows in whole fours: dot4's arithmetic row by row, whichever rows are read
        // together (quarters of them, as four streams); the rest: dot's.
        for (n, d) in [
            (4, 64),
            (8, 576),
            (7, 13),
            (6, 1536),
            (3, 40),
            (38, 20),
            (131, 64),
        ] {
            let rows = data(n * d, 0.7);
            let x = data(d, 1.9);
            let mut out = vec![0.0; n];
            matvec(&rows, &x, &mut out);
            let quads = n / 4 * 4;
            let mut want: Vec<f32> = (0..quads / 4)
                .flat_map(|q| dot4(&rows[4 * q * d..(4 * q + 4) * d], &x))
                .collect();
            want.extend((quads..n).map(|j| dot(&rows[j * d..(j + 1) * d], &x)));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&want), "{n}x{d}");
        }
    }

    /// Rows read where they sit (gaps between them) get the bits of the same rows packed:
    /// the scores per (row, query) and each output's chain over the rows in order.
    #[test]
    fn listed_rows_have_the_bits_of_packed_rows() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (group, d) in [
            (1, 64),
            (3, 64),
            (4, 128),
            (5, 64),
            (8, 128),
            (3, 20),
            (2, 48),
        ] {
            for n in [1, 3, 4, 7, 37, 256] {
                // Row j sits after j % 5 + (j % 3 == 0) as usize gaps of its own width.
                let mut at = Vec::with_capacity(n);
                let mut next = d;
                for j in 0..n {
                    next += d * (j % 5 == 2 || j % 7 == 0) as usize;
                    at.push(next);
                    next += d;
                }
                let buffer = data(next + d, 0.3);
                let packed: Vec<f32> = at.iter().flat_map(|&a| buffer[a..a + d].to_vec()).collect();
                let queries = data(group * d, 1.1);
                let (mut got, mut want) = (vec![0.0; group * n], vec![0.0; group * n]);
                matvec_group_listed(&buffer, &at, &queries, d, &mut got);
                matvec_group(&packed, &queries, d, &mut want);
                assert_eq!(bits(&got), bits(&want), "scores G={group} d={d} n={n}");
                let weights = data(group * n, 2.3);
                let start = data(group * d, 0.9);
                let (mut got, mut want) = (start.clone(), start);
                weighted_sum_group_listed(&mut got, &weights, &buffer, &at, d);
                weighted_sum_group(&mut want, &weights, &packed, d);
                assert_eq!(bits(&got), bits(&want), "sums G={group} d={d} n={n}");
            }
        }
    }

    #[test]
    fn matvec_and_weighted_sum_match_scalar() {
        for (n, d) in [
            (0, 64),
            (1, 64),
            (5, 64),
            (9, 8),
            (7, 72),
            (13, 3),
            (300, 128),
        ] {
            let rows = data(n * d, 0.3);
            let x = data(d, 1.1);
            let mut out = vec![0.0; n];
            matvec(&rows, &x, &mut out);
            for (j, &o) in out.iter().enumerate() {
                let want = scalar::dot(&rows[j * d..(j + 1) * d], &x);
                assert!(
                    (o - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "matvec {n}x{d} row {j}"
                );
            }
            let weights = data(n, 2.2);
            let (mut fast, mut slow) = (data(d, 4.0), data(d, 4.0));
            weighted_sum(&mut fast, &weights, &rows);
            scalar::weighted_sum(&mut slow, &weights, &rows);
            for (c, (u, v)) in fast.iter().zip(&slow).enumerate() {
                assert!(
                    (u - v).abs() <= 1e-4 * (1.0 + v.abs()),
                    "weighted_sum {n}x{d} col {c}"
                );
            }
        }
    }

    /// The vector `ln` is within 2 ulp-scale relative error of the f64 logarithm over the
    /// probabilities' range and beyond (powers of two, both sides of the mantissa fold).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_ln_matches_f64() {
        if !std::is_x86_feature_detected!("avx512f") {
            return;
        }
        let mut xs: Vec<f32> = (0..4000).map(|i| 1e-10f32 * 1.0113f32.powi(i)).collect();
        // Both sides of the mantissa fold at sqrt(1/2), powers of two, large and tiny normals.
        let half = std::f32::consts::FRAC_1_SQRT_2;
        xs.extend([
            1.0,
            2.0,
            0.5,
            half,
            half.next_down(),
            half.next_up(),
            std::f32::consts::SQRT_2,
            3e5,
            1e-30,
        ]);
        xs.resize(xs.len().next_multiple_of(16), 1.0);
        for chunk in xs.chunks_exact(16) {
            use std::arch::x86_64::{_mm512_loadu_ps, _mm512_storeu_ps};
            let mut out = [0.0f32; 16];
            // SAFETY: AVX-512F (checked above); 16 floats each way.
            unsafe {
                _mm512_storeu_ps(out.as_mut_ptr(), x86::ln16(_mm512_loadu_ps(chunk.as_ptr())))
            };
            for (&x, &y) in chunk.iter().zip(&out) {
                let want = f64::from(x).ln();
                let tolerance = 2.5e-7 * want.abs().max(1.0) + 1e-7;
                assert!(
                    (f64::from(y) - want).abs() <= tolerance,
                    "ln {x}: {y} vs {want}"
                );
            }
        }
    }

    /// The grouped-query decoding kernels give, head by head, the bits of the per-head
    /// ones, for groups split across their register blocks and rows and columns around
    /// every block edge.
    #[test]
    fn group_kernels_give_the_bits_of_the_per_head_ones() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (group, n, d) in [
            (1, 5, 64),
            (3, 256, 64),
            (2, 33, 16),
            (4, 7, 80),
            (7, 9, 64),
            (3, 4, 8),
            (5, 1, 32),
            (3, 9, 20),
        ] {
            let rows = data(n * d, 0.9);
            let queries = data(group * d, 2.1);
            let mut grouped = vec![0.0; group * n];
            matvec_group(&rows, &queries, d, &mut grouped);
            let mut single = vec![0.0; group * n];
            for (q, o) in queries.chunks_exact(d).zip(single.chunks_exact_mut(n)) {
                matvec(&rows, q, o);
            }
            assert_eq!(
                bits(&grouped),
                bits(&single),
                "scores G={group} n={n} d={d}"
            );
            let weights = data(group * n, 3.3);
            let mut grouped = data(group * d, 0.2);
            let mut single = grouped.clone();
            weighted_sum_group(&mut grouped, &weights, &rows, d);
            for (o, w) in single.chunks_exact_mut(d).zip(weights.chunks_exact(n)) {
                weighted_sum(o, w, &rows);
            }
            assert_eq!(
                bits(&grouped),
                bits(&single),
                "values G={group} n={n} d={d}"
            );
        }
    }

    /// The dispatched bodies equal the scalar ones up to float reordering, at lengths
    /// around every vector width.
    #[test]
    fn vector_bodies_match_scalar() {
        for n in [0, 1, 7, 8, 9, 31, 32, 33, 64, 100, 1000] {
            let (a, b) = (data(n, 0.5), data(n, 1.7));
            let (fast, slow) = (dot(&a, &b), scalar::dot(&a, &b));
            assert!(
                (fast - slow).abs() <= 1e-5 * (1.0 + slow.abs()),
                "dot n={n}"
            );

            let mut y1 = data(n, 2.0);
            let mut y2 = y1.clone();
            axpy(&mut y1, 0.37, &a);
            scalar::axpy(&mut y2, 0.37, &a);
            for (u, v) in y1.iter().zip(&y2) {
                assert!((u - v).abs() <= 1e-6 * (1.0 + v.abs()), "axpy n={n}");
            }

            let mut e1 = data(n, 3.0);
            let mut e2 = e1.clone();
            let (m1, s1) = exp_shifted(&mut e1);
            let m2 = e2.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let s2 = if n == 0 {
                0.0
            } else {
                scalar::exp_shifted(&mut e2, m2)
            };
            assert_eq!(m1, m2);
            assert!((s1 - s2).abs() <= 1e-5 * s2.max(1.0), "exp sum n={n}");
            for (u, v) in e1.iter().zip(&e2) {
                assert!(
                    (u - v).abs() <= 1e-6 * v.max(1e-30),
                    "exp n={n}: {u} vs {v}"
                );
            }
        }
    }

    /// The sixteen-lane exponentials are the eight-lane ones bit for bit (past the
    /// eight-lane body's scalar tail, within its last bit), their sum within rounding.
    #[test]
    fn wide_exponentials_are_the_narrow_ones() {
        for n in [0, 1, 8, 15, 16, 17, 40, 64, 333] {
            let mut wide = data(n, 0.4);
            let mut narrow = wide.clone();
            let max = max(&wide) + 0.5;
            let (s1, s2) = (exp_sub_wide(&mut wide, max), exp_sub(&mut narrow, max));
            assert!((s1 - s2).abs() <= 1e-6 * s2.max(1.0), "sum n={n}");
            for (i, (u, v)) in wide.iter().zip(&narrow).enumerate() {
                if i < n / 8 * 8 {
                    assert_eq!(u.to_bits(), v.to_bits(), "n={n} at {i}");
                } else {
                    assert!((u - v).abs() <= 1e-6 * v, "n={n} at {i}: {u} vs {v}");
                }
            }
        }
    }

    /// The vector maximum is the fold's, NaN ignored wherever it sits.
    #[test]
    fn max_ignores_nan_like_the_fold() {
        for n in [0, 1, 31, 32, 33, 70] {
            let mut row = data(n, 0.9);
            for nan_at in [0, n / 2, n.saturating_sub(1)] {
                if n > 0 {
                    row[nan_at] = f32::NAN;
                }
                let want = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                assert_eq!(
                    max(&row).to_bits(),
                    want.to_bits(),
                    "n={n}, NaN at {nan_at}"
                );
            }
        }
        assert_eq!(max(&[f32::NAN; 40]), f32::NEG_INFINITY);
    }

    /// The vector SwiGLU middle equals the scalar one.
    #[test]
    fn silu_mul_matches_scalar() {
        for n in [0, 5, 8, 29, 100] {
            let (g, u) = (data(n, 0.3), data(n, 1.1));
            let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
            silu_mul(&g, &u, &mut a);
            scalar::silu_mul(&g, &u, &mut b);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "n={n}: {x} vs {y}");
            }
        }
    }

    /// Softmax sums to one, handles huge and -inf scores, and keeps empty rows empty.
    #[test]
    fn softmax_is_safe() {
        let mut row = vec![1000.0, 999.0, f32::NEG_INFINITY, 998.0];
        softmax(&mut row);
        let e = [1.0f32, (-1.0f32).exp(), 0.0, (-2.0f32).exp()];
        let total: f32 = e.iter().sum();
        for (got, want) in row.iter().zip(e) {
            assert!((got - want / total).abs() < 1e-6);
        }
        let mut empty: Vec<f32> = Vec::new();
        softmax(&mut empty);
        let mut masked = vec![f32::NEG_INFINITY; 3];
        softmax(&mut masked);
        assert_eq!(masked, vec![0.0; 3]);
    }
}
