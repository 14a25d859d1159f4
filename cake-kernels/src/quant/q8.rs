//! Activations quantised to int8 ([`QuantizedRows`]) and the portable integer products of
//! packed rows with them: the reference the AVX-512 VNNI kernels ([`super::vnni`]) are
//! tested against, bit for bit.
//!
//! Each 32-value block of an activation row is stored as GGML's Q8_0 stores it, but with
//! an f32 scale: `d = max|x| / 127`, `q = round(x * (127 / max|x|))` with ties to even (a
//! zero block gives `d = 0` and `q = 0`), so `|x - q d| <= (d / 2) (1 + 2^-14)` (the
//! `2^-14` covers the rounding of `127 / max|x|`, of `x` times it and of `d`). Activations
//! must be finite.
//!
//! A packed row meets the activations a 32-value block at a time (a K-quant super-block is
//! eight of them): block `b` of the row has signed integer values `w` (within -128..=127)
//! with a scale `dw` and, in the formats with a min, a min `mw`, so that its values are
//! `dw w + mw`. The dot product of the block with block `b` of an activation row is then
//! `(dw d) S + mw (d sum q)` with the exact integer `S = sum w q`. The block terms are
//! summed in a fixed order: block `b` into lane [`lane_of`]`(b % 16)` of sixteen f32 sums,
//! `lane = fma(dw * d, S as f32, lane)` and then, with a min, `lane = fma(mw, d * sum q as
//! f32, lane)` (fused multiply-adds, each rounded once), the lanes then pairwise
//! ([`reduce16`]). The integer kernels compute the very same operations.
//!
//! Signed values: Q8_0's bytes as they are; Q4_0's nibbles less 8, Q5_0's 5-bit values less
//! 16; Q4_1, Q5_1, Q4_K and Q5_K's unsigned values as they are; Q6_K's 6-bit values less 32,
//! and its signed 8-bit scales apply per 16 values: `S = sc_0 sum_{i<16} w q + sc_1
//! sum_{i>=16} w q`, with `dw` the super-block's scale. Q4_K and Q5_K blocks are their groups
//! of 32: `dw = d sc` and `mw = -(dmin m)` (both exact in f32). (The VNNI kernels multiply
//! unsigned activations `q + 128` with the signed values and take `128 sum w`, a property of
//! the weights alone, off again: the same `S`.)

use super::BlockFormat;
use super::blocks::{f16_at, q5_values, scale_min_k4};

/// Values per activation block.
pub const Q8_BLOCK: usize = 32;

/// Blocks the integer kernels take side by side, one per 32-bit lane.
pub(crate) const LANES: usize = 16;

/// Blocks per packed row in the integer kernels' decoded group of a last, partial group of
/// `valid` blocks: 4 or 8 when that many hold them all (the activations' values are then
/// stored 4 or 2 times, [`QuantizedRows`]), else 16.
pub(crate) const fn tail_slot(valid: usize) -> usize {
    if valid <= 4 {
        4
    } else if valid <= 8 {
        8
    } else {
        16
    }
}

/// The lane of block `k` of a group of 16 (its own inverse): block `4q + b` is in lane
/// `4b + q`, the order a 4 x 4 transposition of 16-byte rows leaves them in.
pub(crate) const fn lane_of(k: usize) -> usize {
    4 * (k % 4) + k / 4
}

/// A cache line of quantised values, each stored as `q + 128` (unsigned).
#[repr(C, align(64))]
#[derive(Clone, Copy, PartialEq)]
pub(crate) struct Line(pub(crate) [u8; 64]);

/// Rows of activations quantised to int8, 32 values per block with an f32 scale each (as
/// GGML's Q8_0, module docs), with the per-block sums of `q` (the formats with a min need
/// `d sum q`). Built once ([`quantize_rows`]) and multiplied with any packed matrix of the
/// same width ([`super::PackedMatrix::gemv_quantized`]).
///
/// The values are kept as `q + 128` (unsigned bytes, as `vpdpbusd` takes them), in the
/// order the integer kernels read them: blocks are taken in groups of 16 (the last padded
/// with zero blocks), group by group, each group row by row (so that a group of every row
/// fits the L1 cache while the kernels use it for several weight rows). Row `s` of group
/// `g` is 8 cache lines, line `t` holding values `4t..4t + 4` of block `16 g + k` in lane
/// `l = 4 (k % 4) + k / 4`, bytes `4l..4l + 4` (the per-block scales and sums are in the
/// same order). A last group of at most 8 (4) blocks holds its values twice (four times):
/// block `k`'s also in the lanes of blocks `k + 8` (`k + 4`, `k + 8`, `k + 12`), as the
/// kernels decode such a group for 2 (4) weight rows at once.
#[derive(Clone, PartialEq)]
pub struct QuantizedRows {
    rows: usize,
    cols: usize,
    groups: usize,
    /// `groups * rows * 8` lines.
    q: Vec<Line>,
    /// Per padded block (`groups * rows * 16`): `d`.
    d: Vec<f32>,
    /// Per padded block: `sum q`.
    sum: Vec<i32>,
    /// Per padded block: `d * sum q as f32`.
    dsum: Vec<f32>,
}

impl std::fmt::Debug for QuantizedRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantizedRows")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish_non_exhaustive()
    }
}

/// One group of 16 blocks of the activation rows, as the kernels read it: row `s` is lines
/// `8s..8s + 8` and entries `16s..16s + 16` of the per-block arrays.
#[derive(Clone, Copy)]
pub(crate) struct XGroup<'a> {
    /// The lines of values.
    pub(crate) q: &'a [Line],
    /// Scales.
    pub(crate) d: &'a [f32],
    /// `d * sum q` per block.
    pub(crate) dsum: &'a [f32],
}

/// Quantises `xs` (`[n, cols]` row-major, `cols` a multiple of 32) to int8 blocks.
///
/// # Panics
/// When `cols` is zero or not whole blocks, or `xs` is not whole rows.
pub fn quantize_rows(xs: &[f32], cols: usize) -> QuantizedRows {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw") {
        let mut out = QuantizedRows::empty(xs, cols);
        // SAFETY: the processor has AVX-512 F and BW (checked).
        unsafe { out.fill_avx512(xs) };
        return out;
    }
    quantize_rows_portable(xs, cols)
}

/// [`quantize_rows`] without SIMD (the same bits).
pub(crate) fn quantize_rows_portable(xs: &[f32], cols: usize) -> QuantizedRows {
    let mut out = QuantizedRows::empty(xs, cols);
    out.fill(xs);
    out
}

impl QuantizedRows {
    /// The rows of `xs` (of `cols` values) as zero blocks.
    ///
    /// # Panics
    /// As [`quantize_rows`].
    fn empty(xs: &[f32], cols: usize) -> Self {
        assert!(
            cols > 0 && cols.is_multiple_of(Q8_BLOCK) && xs.len().is_multiple_of(cols),
            "{} values are not rows of {cols}, whole blocks of {Q8_BLOCK}",
            xs.len()
        );
        let rows = xs.len() / cols;
        let groups = cols.div_ceil(LANES * Q8_BLOCK);
        let blocks = rows * groups * LANES;
        QuantizedRows {
            rows,
            cols,
            groups,
            q: vec![Line([0x80; 64]); rows * groups * 8],
            d: vec![0.0; blocks],
            sum: vec![0; blocks],
            dsum: vec![0.0; blocks],
        }
    }

    /// Stores the blocks of `xs` quantised by [`quantize_block`] (the layout of
    /// [`QuantizedRows`]).
    fn fill(&mut self, xs: &[f32]) {
        let (rows, blocks) = (self.rows, self.cols / Q8_BLOCK);
        for (s, x) in xs.chunks_exact(self.cols).enumerate() {
            for (b, x) in x.chunks_exact(Q8_BLOCK).enumerate() {
                let Quantized { d, q, sum } = quantize_block(x.try_into().expect("a block"));
                let (at, lane) = (b / LANES * rows + s, lane_of(b % LANES));
                let lines = &mut self.q[8 * at..8 * at + 8];
                // A last, partial group is stored once per packed row the kernels decode
                // it for.
                let slot = tail_slot((blocks - b / LANES * LANES).min(LANES));
                for copy in (b % LANES..LANES).step_by(slot) {
                    let lane = lane_of(copy);
                    for (line, four) in lines.iter_mut().zip(q.chunks_exact(4)) {
                        line.0[4 * lane..4 * lane + 4].copy_from_slice(four);
                    }
                }
                let at = LANES * at + lane;
                self.d[at] = d;
                self.sum[at] = sum;
                self.dsum[at] = d * sum as f32;
            }
        }
    }

    /// [`Self::fill`] on AVX-512, with its bits, a group of 16 blocks at a time: the
    /// scales of the 16 by one vector division each (lane by lane the scalar divisions),
    /// then each block's values as [`quantize_block`] computes them (one product rounded,
    /// converted with ties to even), transposed into the lines by the kernels'
    /// [`super::vnni::transpose16_at`].
    ///
    /// # Safety
    /// AVX-512 F and BW.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn fill_avx512(&mut self, xs: &[f32]) {
        use std::arch::x86_64::*;
        let rows = self.rows;
        let mut buffer = [Line([0x80; 64]); 8];
        for (s, x) in xs.chunks_exact(self.cols).enumerate() {
            for (g, x) in x.chunks(LANES * Q8_BLOCK).enumerate() {
                let n = x.len() / Q8_BLOCK;
                let mut amax = [0.0f32; LANES];
                for (amax, x) in amax.iter_mut().zip(x.chunks_exact(Q8_BLOCK)) {
                    // SAFETY: 32 values at x.
                    let (a, b) = unsafe {
                        (
                            _mm512_loadu_ps(x.as_ptr()),
                            _mm512_loadu_ps(x.as_ptr().add(16)),
                        )
                    };
                    *amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
                }
                // SAFETY: sixteen values each way.
                let (ids, ds) = unsafe {
                    let amax = _mm512_loadu_ps(amax.as_ptr());
                    let some = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(amax, _mm512_setzero_ps());
                    let id = _mm512_maskz_div_ps(some, _mm512_set1_ps(127.0), amax);
                    let (mut ids, mut ds) = ([0.0f32; LANES], [0.0f32; LANES]);
                    _mm512_storeu_ps(ids.as_mut_ptr(), id);
                    _mm512_storeu_ps(ds.as_mut_ptr(), _mm512_div_ps(amax, _mm512_set1_ps(127.0)));
                    (ids, ds)
                };
                let bytes = buffer.as_mut_ptr() as *mut u8;
                let slot = tail_slot(n);
                let sign = _mm_set1_epi8(-128);
                for (k, x) in x.chunks_exact(Q8_BLOCK).enumerate() {
                    let id = _mm512_set1_ps(ids[k]);
                    // SAFETY: 32 values at x; block k's 32 bytes (and its copies for the
                    // packed rows of a partial group, below 16) inside the buffer.
                    let sum = unsafe {
                        let a = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x.as_ptr()), id));
                        let b = _mm512_cvtps_epi32(_mm512_mul_ps(
                            _mm512_loadu_ps(x.as_ptr().add(16)),
                            id,
                        ));
                        let (low, high) = (
                            _mm_xor_si128(_mm512_cvtepi32_epi8(a), sign),
                            _mm_xor_si128(_mm512_cvtepi32_epi8(b), sign),
                        );
                        for copy in (k..LANES).step_by(slot) {
                            _mm_storeu_si128(bytes.add(32 * copy) as *mut __m128i, low);
                            _mm_storeu_si128(bytes.add(32 * copy + 16) as *mut __m128i, high);
                        }
                        _mm512_reduce_add_epi32(_mm512_add_epi32(a, b))
                    };
                    let at = LANES * (g * rows + s) + lane_of(k);
                    self.d[at] = ds[k];
                    self.sum[at] = sum;
                    self.dsum[at] = ds[k] * sum as f32;
                }
                // Blocks past n of a partial group hold their copies, or zeros (q + 128).
                for k in n..LANES {
                    if k % slot >= n {
                        // SAFETY: inside the buffer.
                        unsafe { std::ptr::write_bytes(bytes.add(32 * k), 0x80, 32) };
                    }
                }
                // SAFETY: 32 bytes per block in the buffer; eight lines at row s of group g.
                unsafe {
                    let low = super::vnni::transpose16_at(|k| bytes.add(32 * k));
                    let high = super::vnni::transpose16_at(|k| bytes.add(32 * k + 16));
                    let lines = self.q[8 * (g * rows + s)..][..8].as_mut_ptr() as *mut __m512i;
                    for (t, v) in low.into_iter().chain(high).enumerate() {
                        _mm512_store_si512(lines.add(t), v);
                    }
                }
            }
        }
    }
}

/// A quantised block: scale, values `q + 128` and `sum q`.
struct Quantized {
    /// Scale.
    d: f32,
    /// The values, as stored.
    q: [u8; Q8_BLOCK],
    /// Their sum.
    sum: i32,
}

/// One block's scale and values (module docs).
fn quantize_block(x: &[f32; Q8_BLOCK]) -> Quantized {
    let amax = x.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
    let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    // `as` saturates; |x * id| <= 127 up to rounding, so nothing is clipped.
    let q = x.map(|v| (v * id).round_ties_even() as i8);
    Quantized {
        d: amax / 127.0,
        q: q.map(|q| q as u8 ^ 0x80),
        sum: q.iter().map(|&q| q as i32).sum(),
    }
}

impl QuantizedRows {
    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Quantised value `i` of row `s`.
    ///
    /// # Panics
    /// When out of range.
    pub fn value(&self, s: usize, i: usize) -> i8 {
        assert!(s < self.rows && i < self.cols);
        let (b, v) = (i / Q8_BLOCK, i % Q8_BLOCK);
        let line = (b / LANES * self.rows + s) * 8 + v / 4;
        (self.q[line].0[4 * lane_of(b % LANES) + v % 4] ^ 0x80) as i8
    }

    /// The scale `d` of block `b` (values `32b..32b + 32`) of row `s`.
    ///
    /// # Panics
    /// When out of range.
    pub fn scale(&self, s: usize, b: usize) -> f32 {
        self.d[self.block_at(s, b)]
    }

    /// `sum q` over block `b` of row `s`.
    ///
    /// # Panics
    /// When out of range.
    pub fn block_sum(&self, s: usize, b: usize) -> i32 {
        self.sum[self.block_at(s, b)]
    }

    /// Index of block `b` of row `s` in the per-block arrays.
    fn block_at(&self, s: usize, b: usize) -> usize {
        assert!(s < self.rows && b < self.cols / Q8_BLOCK);
        (b / LANES * self.rows + s) * LANES + lane_of(b % LANES)
    }

    /// Groups of 16 blocks per row.
    pub(crate) fn groups(&self) -> usize {
        self.groups
    }

    /// Group `g` of every row.
    pub(crate) fn group(&self, g: usize) -> XGroup<'_> {
        let (at, n) = (g * self.rows * LANES, self.rows * LANES);
        XGroup {
            q: &self.q[g * self.rows * 8..][..self.rows * 8],
            d: &self.d[at..at + n],
            dsum: &self.dsum[at..at + n],
        }
    }
}

/// The sum of sixteen lanes in the kernels' fixed order: halves added pairwise, 8 then 4,
/// 2 and 1 apart.
#[inline]
pub(crate) fn reduce16(mut lanes: [f32; LANES]) -> f32 {
    for w in [8, 4, 2, 1] {
        for i in 0..w {
            lanes[i] += lanes[i + w];
        }
    }
    lanes[0]
}

/// Block `b` (32 values) of a packed row as the integer products see it.
struct IntBlock {
    /// Signed values.
    w: [i32; 32],
    /// Scale.
    dw: f32,
    /// Min, in the formats with one.
    mw: Option<f32>,
    /// Q6_K's scales of values 0..16 and 16..32.
    sc: Option<[i32; 2]>,
}

/// Decodes 32-value block `b` of `row` (module docs).
fn int_block(format: BlockFormat, row: &[u8], b: usize) -> IntBlock {
    let mut u = [0u8; 32];
    let bytes = format.block_bytes();
    let (mut mw, mut sc, mut offset) = (None, None, 0);
    let dw = match format {
        BlockFormat::Q8_0 => {
            let block = &row[bytes * b..][..bytes];
            // Two's complement bytes: `(b ^ 0x80) - 128` is `b as i8`.
            for (u, &b) in u.iter_mut().zip(&block[2..34]) {
                *u = b ^ 0x80;
            }
            offset = 128;
            f16_at(block, 0)
        }
        BlockFormat::Q4_0 | BlockFormat::Q4_1 => {
            let block = &row[bytes * b..][..bytes];
            let qs = &block[bytes - 16..];
            for j in 0..16 {
                (u[j], u[j + 16]) = (qs[j] & 0xF, qs[j] >> 4);
            }
            match format {
                BlockFormat::Q4_1 => mw = Some(f16_at(block, 2)),
                _ => offset = 8,
            }
            f16_at(block, 0)
        }
        BlockFormat::Q5_0 | BlockFormat::Q5_1 => {
            let block = &row[bytes * b..][..bytes];
            let at = bytes - 20;
            let qh = u32::from_le_bytes(block[at..at + 4].try_into().expect("four bytes"));
            u = q5_values(qh, &block[at + 4..]);
            match format {
                BlockFormat::Q5_1 => mw = Some(f16_at(block, 2)),
                _ => offset = 16,
            }
            f16_at(block, 0)
        }
        BlockFormat::Q4K | BlockFormat::Q5K => {
            let block = &row[bytes * (b / 8)..][..bytes];
            let j = b % 8;
            let high = format == BlockFormat::Q5K;
            let qs = &block[if high { 48 } else { 16 } + 32 * (j / 2)..][..32];
            for (l, u) in u.iter_mut().enumerate() {
                *u = (qs[l] >> (4 * (j & 1))) & 0xF;
                if high {
                    *u |= ((block[16 + l] >> j) & 1) << 4;
                }
            }
            let (s, m) = scale_min_k4(j, &block[4..16]);
            mw = Some(-(f16_at(block, 2) * m));
            f16_at(block, 0) * s
        }
        BlockFormat::Q6K => {
            let block = &row[bytes * (b / 8)..][..bytes];
            let (n, k) = (b % 8 / 4, b % 4);
            let ql = &block[64 * n + 32 * (k & 1)..][..32];
            let qh = &block[128 + 32 * n..][..32];
            for (l, u) in u.iter_mut().enumerate() {
                *u = ((ql[l] >> (4 * (k >> 1))) & 0xF) | (((qh[l] >> (2 * k)) & 3) << 4);
            }
            let at = 192 + 8 * n + 2 * k;
            sc = Some([block[at] as i8 as i32, block[at + 1] as i8 as i32]);
            offset = 32;
            f16_at(block, 208)
        }
    };
    let w = u.map(|u| u as i32 - offset);
    IntBlock { w, dw, mw, sc }
}

/// `out[s m + r] = row_r . xs[s]` for the `m` consecutive packed rows in `rows` and the
/// `n` rows of `xs`, with the arithmetic of the module docs. `rows` must be whole rows
/// covering `xs.cols()` values and `out` hold `n m` values.
pub(crate) fn dot_rows(format: BlockFormat, rows: &[u8], xs: &QuantizedRows, out: &mut [f32]) {
    let row_bytes = format.row_bytes(xs.cols).unwrap_or(0).max(1);
    let m = rows.len() / row_bytes;
    let mut dots = vec![0.0; xs.rows];
    for (r, row) in rows.chunks_exact(row_bytes).enumerate() {
        dot_row(format, row, xs, &mut dots);
        for (s, &dot) in dots.iter().enumerate() {
            out[s * m + r] = dot;
        }
    }
}

/// [`dot_rows`] of one packed row.
fn dot_row(format: BlockFormat, row: &[u8], xs: &QuantizedRows, out: &mut [f32]) {
    let mut sums = vec![[0.0f32; LANES]; out.len()];
    for b in 0..xs.cols / Q8_BLOCK {
        let w = int_block(format, row, b);
        let (x, lane) = (xs.group(b / LANES), lane_of(b % LANES));
        for (s, sums) in sums.iter_mut().enumerate() {
            let (lines, at) = (&x.q[8 * s..8 * s + 8], LANES * s + lane);
            let q = |i: usize| (lines[i / 4].0[4 * lane + i % 4] ^ 0x80) as i8 as i32;
            let dot = |from: usize| -> i32 { (from..from + 16).map(|i| w.w[i] * q(i)).sum() };
            let int = match w.sc {
                Some([s0, s1]) => s0 * dot(0) + s1 * dot(16),
                None => dot(0) + dot(16),
            };
            let lane = &mut sums[lane];
            *lane = (w.dw * x.d[at]).mul_add(int as f32, *lane);
            if let Some(mw) = w.mw {
                *lane = mw.mul_add(x.dsum[at], *lane);
            }
        }
    }
    for (out, sums) in out.iter_mut().zip(sums) {
        *out = reduce16(sums);
    }
}
