//! Integer products of packed rows with int8 activations ([`super::QuantizedRows`]) on
//! AVX-512 (F, BW, VL) with VNNI and VBMI: the arithmetic of [`super::q8`], whose portable
//! code gives the very same bits.
//!
//! A packed row is read sixteen 32-value blocks at a time, one block per 32-bit lane
//! ([`super::q8::lane_of`]): loads and shuffles (a 4 x 4 transposition of 16-byte rows, or
//! `vpermt2d` picks for the K-quants) put dword `t` of each block's values in register `t`
//! (of 8), so that it holds values `4t..4t + 4` of every block as signed bytes, the layout
//! the activations are stored in (as unsigned `q + 128`). `vpdpbusd` then sums each
//! block's products in its own lane (exact integers, less `128 sum w`), and the scales and
//! mins of the sixteen blocks apply lane by lane. The weights of a group are decoded once
//! and multiplied with every activation row, two weight rows at a time.
//!
//! Only [`dot_with`] enables the processor features: the helpers are `#[inline(always)]`
//! functions (a `#[target_feature]` function cannot be, and LLVM left some of them
//! out of line, each returning its registers through memory), so each is inlined into it
//! and its intrinsics run with its features.

use std::arch::x86_64::*;

use super::BlockFormat;
use super::q8::{LANES, QuantizedRows, XGroup, lane_of, tail_slot};

/// Whether the processor runs these kernels.
pub(super) fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512vnni")
        && std::is_x86_feature_detected!("avx512vbmi")
}

/// `out[s m + r] = row_r . xs[s]` for the `m` packed rows in `rows` and the rows of `xs`.
///
/// # Safety
/// [`available`] must hold; `rows` must be whole rows covering `xs.cols()` values and
/// `out` hold one value per packed row and activation row.
pub(super) unsafe fn dot(format: BlockFormat, rows: &[u8], xs: &QuantizedRows, out: &mut [f32]) {
    let row_bytes = format.row_bytes(xs.cols()).unwrap_or(0);
    debug_assert!(row_bytes > 0 && rows.len().is_multiple_of(row_bytes));
    debug_assert_eq!(out.len(), rows.len() / row_bytes * xs.rows());
    let w = Rows {
        at: rows.as_ptr(),
        bytes: row_bytes,
        count: rows.len() / row_bytes,
    };
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match format {
            BlockFormat::Q8_0 => dot_with::<Q8_0>(w, xs, out),
            BlockFormat::Q4_0 => dot_with::<Small<false, false>>(w, xs, out),
            BlockFormat::Q4_1 => dot_with::<Small<true, false>>(w, xs, out),
            BlockFormat::Q5_0 => dot_with::<Small<false, true>>(w, xs, out),
            BlockFormat::Q5_1 => dot_with::<Small<true, true>>(w, xs, out),
            BlockFormat::Q4K => dot_with::<Q45K<false>>(w, xs, out),
            BlockFormat::Q5K => dot_with::<Q45K<true>>(w, xs, out),
            BlockFormat::Q6K => dot_with::<Q6K>(w, xs, out),
        }
    }
}

/// Consecutive packed rows.
#[derive(Clone, Copy)]
struct Rows {
    /// The first row's bytes.
    at: *const u8,
    /// Bytes per row.
    bytes: usize,
    /// Rows.
    count: usize,
}

/// Packed rows multiplied together: each group of 16 blocks of the activations (of up to
/// 16 rows, 8 KiB) stays in the L1 cache while it serves this many packed rows.
const WEIGHT_ROWS: usize = 4;

/// Sixteen blocks of a packed row in registers, lane `k` block [`lane_of`]`(k)`.
struct Group {
    /// Values `4t..4t + 4` of each block, signed, in register `t`.
    w: [__m512i; 8],
    /// Scales.
    dw: __m512,
    /// Mins (formats with one).
    mw: __m512,
    /// Q6_K's scales of values 0..16 and 16..32.
    sc: [__m512i; 2],
    /// `128 sum w` over each block (in `[0]`), or for Q6_K over its values 0..16 and
    /// 16..32: what the activations' offset of 128 adds to `sum (q + 128) w`.
    offset: [__m512i; 2],
}

/// A block format as the integer kernels read it (see [`super::q8`] for the arithmetic).
trait IntBlocks {
    /// Bytes of sixteen 32-value blocks.
    const GROUP_BYTES: usize;
    /// Whether blocks have a min.
    const MIN: bool = false;
    /// Q6_K: signed scales per 16 values.
    const SIX: bool = false;
    /// Decodes the sixteen blocks of `at` (absent ones hold what zero bytes decode to);
    /// [`Group::offset`] is left to [`decode`].
    ///
    /// # Safety
    /// Inlined into [`dot_with`] (its features); the blocks of `at` are readable.
    unsafe fn decode(at: &Blocks) -> Group;
}

/// Where the sixteen blocks of a group lie: block `k` is block `k % slot` of the group in
/// packed row `k / slot` (a row's last, partial group of at most 4 or 8 blocks shares a
/// decoded group with the next rows', [`tail_slot`]), present when `k % slot < valid` and
/// that row is one of `rows`.
#[derive(Clone, Copy)]
struct Blocks {
    /// The group in the first packed row.
    at: *const u8,
    /// Bytes from one packed row to the next.
    stride: usize,
    /// Packed rows.
    rows: usize,
    /// log2 of the blocks per row (`slot`: 4, 8 or 16).
    slot_bits: u32,
    /// Blocks present in each row.
    valid: usize,
}

/// What an absent block is read from: zeros, as many as any block's reads reach.
static ZEROS: Aligned = Aligned([0; 256]);

/// [`ZEROS`]' bytes, on a cache line.
#[repr(align(64))]
struct Aligned([u8; 256]);

impl Blocks {
    /// Where block `k` of `bytes` (a 32-value block, or with `per_block` 8, a K-quant
    /// super-block starting at block `k`) is; [`ZEROS`] when absent.
    fn find(&self, k: usize, bytes: usize, per_block: usize) -> *const u8 {
        let (row, j) = (k >> self.slot_bits, k & ((1 << self.slot_bits) - 1));
        if j < self.valid && row < self.rows {
            self.at
                .wrapping_add(row * self.stride + j / per_block * bytes)
        } else {
            ZEROS.0.as_ptr()
        }
    }

    /// Where 32-value block `k` (of `bytes`) is.
    fn block(&self, k: usize, bytes: usize) -> *const u8 {
        self.find(k, bytes, 1)
    }

    /// Where K-quant super-block `sb` (0 or 1, blocks `8 sb..`, of `bytes`) is.
    fn super_block(&self, sb: usize, bytes: usize) -> *const u8 {
        self.find(8 * sb, bytes, 8)
    }
}

/// [`IntBlocks::decode`] with the offsets of the activations.
///
/// # Safety
/// As [`IntBlocks::decode`].
#[inline(always)]
unsafe fn decode<K: IntBlocks>(at: &Blocks) -> Group {
    // SAFETY: the caller's blocks and features.
    unsafe {
        let mut group = K::decode(at);
        let ones = _mm512_set1_epi8(1);
        let mut sums = [_mm512_setzero_si512(); 2];
        for (t, &w) in group.w.iter().enumerate() {
            sums[t / 4] = _mm512_dpbusd_epi32(sums[t / 4], ones, w);
        }
        group.offset = if K::SIX {
            [
                _mm512_slli_epi32::<7>(sums[0]),
                _mm512_slli_epi32::<7>(sums[1]),
            ]
        } else {
            let sum = _mm512_add_epi32(sums[0], sums[1]);
            [_mm512_slli_epi32::<7>(sum), _mm512_setzero_si512()]
        };
        group
    }
}

/// A decoded group and the `per` packed rows it serves.
struct Pack {
    /// The group.
    group: Group,
    /// Packed rows.
    per: usize,
}

impl Pack {
    /// Decodes the group `g` of packed rows `first..first + per` (those below `m`) of `w`.
    ///
    /// # Safety
    /// Inlined into [`dot_with`] (its features); `g` is a group of the rows, `valid` its
    /// blocks and `slot` their [`tail_slot`] (16 for a whole group).
    #[inline(always)]
    unsafe fn new<K: IntBlocks>(
        w: Rows,
        g: usize,
        (first, m): (usize, usize),
        slot: usize,
        valid: usize,
    ) -> Self {
        let per = LANES / slot;
        let at = Blocks {
            at: w.at.wrapping_add(first * w.bytes + g * K::GROUP_BYTES),
            stride: w.bytes,
            rows: per.min(m - first),
            slot_bits: slot.trailing_zeros(),
            valid,
        };
        Self {
            // SAFETY: the caller's rows, group and features.
            group: unsafe { decode::<K>(&at) },
            per,
        }
    }

    /// Adds the terms of an activation row (its sums `int` with this group, scales `d`
    /// and scaled sums `dsum`) to the sums `acc` of the packed rows `first..` (those below
    /// `acc.len()`; to zeros instead for the first group), in the lanes of `mask` (all
    /// without one). Packed row `i`'s sums, scales and mins are moved to the lanes of its
    /// blocks first ([`PERMS`]).
    ///
    /// # Safety
    /// Inlined into [`dot_with`] (its features).
    #[inline(always)]
    unsafe fn add<K: IntBlocks>(
        &self,
        (int, d, dsum): (__m512, __m512, __m512),
        first: usize,
        acc: &mut [__m512],
        (first_group, mask): (bool, Option<__mmask16>),
    ) {
        for i in 0..self.per.min(acc.len().saturating_sub(first)) {
            let acc = &mut acc[first + i];
            let (mut int, mut dw, mut mw) = (int, self.group.dw, self.group.mw);
            // SAFETY: the caller's features.
            unsafe {
                if i > 0 {
                    let at = vector(PERMS[self.per / 2][i]);
                    int = _mm512_permutexvar_ps(at, int);
                    dw = _mm512_permutexvar_ps(at, dw);
                    mw = _mm512_permutexvar_ps(at, mw);
                }
                let fma = |a, b, c| match mask {
                    Some(mask) => _mm512_mask3_fmadd_ps(a, b, c, mask),
                    None => _mm512_fmadd_ps(a, b, c),
                };
                let sum = if first_group {
                    _mm512_setzero_ps()
                } else {
                    *acc
                };
                *acc = fma(_mm512_mul_ps(dw, d), int, sum);
                if K::MIN {
                    *acc = fma(mw, dsum, *acc);
                }
            }
        }
    }
}

/// For 2 and 4 packed rows ([`Blocks`]), the permutations moving the sums of packed row `i`
/// (block `j` in lane `lane_of(j + i slot)` = `lane_of(j) + i slot / 4`) to the lanes of
/// the blocks (`lane_of(j)`).
const PERMS: [[[i32; 16]; 4]; 3] = {
    let mut out = [[[0; 16]; 4]; 3];
    let mut per = 1;
    while per <= 4 {
        let width = 4 / per;
        let mut i = 0;
        while i < per {
            let mut lane = 0;
            while lane < 16 {
                let from = if lane % 4 < width {
                    lane + i * width
                } else {
                    lane
                };
                out[per / 2][i][lane] = from as i32;
                lane += 1;
            }
            i += 1;
        }
        per *= 2;
    }
    out
};

/// `out[s m + r] = w_r . xs[s]` over the `m` packed rows `w` (the blocks of `xs.cols()`
/// values each): [`WEIGHT_ROWS`] packed rows by up to 16 activation rows at a time, group
/// by group, each packed group decoded once for them all and multiplied two at a time
/// (each load of activations serving both). A last group of at most 8 (4) blocks is
/// decoded and multiplied for 2 (4) packed rows at once.
///
/// # Safety
/// As [`dot`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")]
unsafe fn dot_with<K: IntBlocks>(w: Rows, xs: &QuantizedRows, out: &mut [f32]) {
    let (n, blocks) = (xs.rows(), xs.cols() / 32);
    let mut acc = [[_mm512_setzero_ps(); WEIGHT_ROWS]; LANES];
    for r0 in (0..w.count).step_by(WEIGHT_ROWS) {
        let m = WEIGHT_ROWS.min(w.count - r0);
        let w = Rows {
            at: w.at.wrapping_add(r0 * w.bytes),
            ..w
        };
        for s0 in (0..n).step_by(LANES) {
            let ns = LANES.min(n - s0);
            for g in 0..xs.groups() {
                let valid = (blocks - LANES * g).min(LANES);
                let acc = &mut acc[..ns];
                // SAFETY: group g of the packed rows below m; the rows s0..s0 + ns of xs.
                unsafe {
                    if valid == LANES {
                        multiply_group::<K, true>(w, (g, valid), m, xs, s0, acc);
                    } else {
                        multiply_group::<K, false>(w, (g, valid), m, xs, s0, acc);
                    }
                }
            }
            for (s, acc) in acc[..ns].iter().enumerate() {
                for (r, &acc) in acc[..m].iter().enumerate() {
                    // SAFETY: inlined here.
                    out[(s0 + s) * w.count + r0 + r] = unsafe { sum16(acc) };
                }
            }
        }
    }
}

/// Adds group `g` (of `valid` blocks; `WHOLE` when 16) of the packed rows `w` below `m`
/// times the activation rows `s0..s0 + acc.len()` of `xs` to their sums `acc[s][r]`
/// (zeros, not what `acc` holds, for group 0).
///
/// # Safety
/// Inlined into [`dot_with`] (its features); `g` is a group of the rows, `valid` its
/// blocks; the activation rows are rows of `xs`.
#[inline(always)]
unsafe fn multiply_group<K: IntBlocks, const WHOLE: bool>(
    w: Rows,
    (g, valid): (usize, usize),
    m: usize,
    xs: &QuantizedRows,
    s0: usize,
    acc: &mut [[__m512; WEIGHT_ROWS]],
) {
    let (x, slot) = (xs.group(g), tail_slot(valid));
    let mask = if WHOLE { None } else { Some(MASKS[valid]) };
    let per = LANES / slot;
    let packs = m.div_ceil(per);
    // SAFETY (all below): the caller's rows, group and features.
    let pack = |p: usize| unsafe { Pack::new::<K>(w, g, (p * per, m), slot, valid) };
    for p in (0..packs).step_by(2) {
        if p + 1 < packs {
            let two = [pack(p), pack(p + 1)];
            for (s, acc) in acc.iter_mut().enumerate() {
                let groups = [&two[0].group, &two[1].group];
                unsafe {
                    let terms = accumulate::<K, 2>(groups, x, s0 + s);
                    for (q, (pack, terms)) in two.iter().zip(terms).enumerate() {
                        pack.add::<K>(terms, (p + q) * per, &mut acc[..m], (g == 0, mask));
                    }
                }
            }
        } else {
            let one = pack(p);
            for (s, acc) in acc.iter_mut().enumerate() {
                unsafe {
                    let [terms] = accumulate::<K, 1>([&one.group], x, s0 + s);
                    one.add::<K>(terms, p * per, &mut acc[..m], (g == 0, mask));
                }
            }
        }
    }
}

/// [`super::q8::reduce16`] in registers: the same additions in the same order.
///
/// # Safety
/// Inlined into [`dot_with`] (its features).
#[inline(always)]
unsafe fn sum16(v: __m512) -> f32 {
    // SAFETY: the caller's features.
    unsafe {
        let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        let a = _mm256_add_ps(_mm512_castps512_ps256(v), high);
        let b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
        let c = _mm_add_ps(b, _mm_movehl_ps(b, b));
        _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)))
    }
}

/// The exact integer sums `S` (as f32) of each decoded group `w[r]` with activation row
/// `s` of the group `x`, with that row's scales and scaled sums (module docs of
/// [`super::q8`]).
///
/// # Safety
/// Inlined into [`dot_with`] (its features); `s` is a row of `x`.
#[inline(always)]
unsafe fn accumulate<K: IntBlocks, const R: usize>(
    w: [&Group; R],
    x: XGroup<'_>,
    s: usize,
) -> [(__m512, __m512, __m512); R] {
    debug_assert!(8 * s + 8 <= x.q.len());
    // SAFETY: row s has 8 lines (64 aligned bytes each) and 16 entries of each array; the
    // caller's features.
    unsafe {
        let mut sums = [[_mm512_setzero_si512(); 2]; R];
        let lines = x.q.as_ptr().add(8 * s);
        for t in 0..8 {
            let q = _mm512_load_si512(lines.add(t) as *const __m512i);
            for (sums, w) in sums.iter_mut().zip(w) {
                sums[t / 4] = _mm512_dpbusd_epi32(sums[t / 4], q, w.w[t]);
            }
        }
        let d = _mm512_loadu_ps(x.d.as_ptr().add(LANES * s));
        let dsum = if K::MIN {
            _mm512_loadu_ps(x.dsum.as_ptr().add(LANES * s))
        } else {
            _mm512_setzero_ps()
        };
        let mut out = [(d, d, dsum); R];
        for ((out, w), sums) in out.iter_mut().zip(w).zip(sums) {
            let int = if K::SIX {
                _mm512_add_epi32(
                    _mm512_mullo_epi32(_mm512_sub_epi32(sums[0], w.offset[0]), w.sc[0]),
                    _mm512_mullo_epi32(_mm512_sub_epi32(sums[1], w.offset[1]), w.sc[1]),
                )
            } else {
                _mm512_sub_epi32(_mm512_add_epi32(sums[0], sums[1]), w.offset[0])
            };
            out.0 = _mm512_cvtepi32_ps(int);
        }
        out
    }
}

/// The lanes of the first `n` blocks of a group.
const MASKS: [__mmask16; 17] = {
    let mut out = [0; 17];
    let mut n = 1;
    while n <= 16 {
        out[n] = out[n - 1] | 1 << lane_of(n - 1);
        n += 1;
    }
    out
};

/// Sixteen constants as a vector.
fn vector(a: [i32; 16]) -> __m512i {
    // SAFETY: 64 bytes of integers either way.
    unsafe { std::mem::transmute::<[i32; 16], __m512i>(a) }
}

/// Sixty-four byte constants as a vector.
fn bytes(a: [u8; 64]) -> __m512i {
    // SAFETY: 64 bytes of integers either way.
    unsafe { std::mem::transmute::<[u8; 64], __m512i>(a) }
}

/// `f(k)` for the block `k` of each lane.
const fn per_lane(f: [i32; 16]) -> [i32; 16] {
    let mut out = [0; 16];
    let mut lane = 0;
    while lane < 16 {
        out[lane] = f[lane_of(lane)];
        lane += 1;
    }
    out
}

/// The `vpmultishiftqb` control that moves bit `from[k] + step * i` of block `k`'s dword to
/// bit `to` of its byte `i` (a lane's dword is the low or high half of its qword).
const fn bit_control(from: [i32; 16], step: i32, to: i32) -> [i32; 16] {
    let from = per_lane(from);
    let mut out = [0; 16];
    let mut lane = 0;
    while lane < 16 {
        let mut i = 0;
        while i < 4 {
            let bit = 32 * (lane as i32 & 1) + from[lane] + step * i - to;
            out[lane] |= bit.rem_euclid(64) << (8 * i);
            i += 1;
        }
        lane += 1;
    }
    out
}

/// The `vpermb` indices that put bytes `at[k] + i` (i < 4) of a table in the dword of
/// block `k`.
const fn byte_picks(at: [i32; 16]) -> [u8; 64] {
    let at = per_lane(at);
    let mut out = [0; 64];
    let mut lane = 0;
    while lane < 16 {
        let mut i = 0;
        while i < 4 {
            out[4 * lane + i] = (at[lane] + i as i32) as u8;
            i += 1;
        }
        lane += 1;
    }
    out
}

/// Per block `k` of a K-quant group (two super-blocks, `k / 8` and sub-block `k % 8`):
/// `f[k % 8] + 16 * (k / 8)`.
const fn k_blocks(f: [i32; 8], sb: i32) -> [i32; 16] {
    let mut out = [0; 16];
    let mut k = 0;
    while k < 16 {
        out[k] = f[k % 8] + sb * (k / 8) as i32;
        k += 1;
    }
    out
}

/// The lanes of the second super-block of a K-quant group.
const SECOND: __mmask16 = {
    let mut out = 0;
    let mut k = 8;
    while k < 16 {
        out |= 1 << lane_of(k);
        k += 1;
    }
    out
};

/// For the sixteen blocks of `at` (of `bytes` each; zeros for absent ones): dwords `t < 4`
/// of their 16 bytes from `from`, each block in its lane ([`lane_of`]).
///
/// # Safety
/// Inlined into [`dot_with`] (its features); 16 bytes readable at `from` of each present
/// block.
#[inline(always)]
unsafe fn transpose16(at: &Blocks, bytes: usize, from: usize) -> [__m512i; 4] {
    // SAFETY: the caller's blocks (or zeros) and features.
    unsafe {
        if at.slot_bits == 4 && at.valid == LANES && at.rows > 0 {
            transpose16_at(|k| at.at.add(k * bytes + from))
        } else {
            transpose16_at(|k| at.block(k, bytes).add(from))
        }
    }
}

/// [`transpose16`] of the 16 bytes at `block(k)` for each block `k` (also how
/// [`super::quantize_rows`] stores the activations).
///
/// # Safety
/// Inlined into a function with AVX-512F ([`dot_with`]); 16 bytes readable at each
/// `block(k)`.
#[inline(always)]
pub(super) unsafe fn transpose16_at(block: impl Fn(usize) -> *const u8) -> [__m512i; 4] {
    // SAFETY: the caller's blocks and features.
    unsafe {
        let mut rows = [_mm512_setzero_si512(); 4];
        for (q, row) in rows.iter_mut().enumerate() {
            let load = |b| block(4 * q + b) as *const __m128i;
            let low = _mm256_inserti128_si256::<1>(
                _mm256_castsi128_si256(_mm_loadu_si128(load(0))),
                _mm_loadu_si128(load(1)),
            );
            let high = _mm256_inserti128_si256::<1>(
                _mm256_castsi128_si256(_mm_loadu_si128(load(2))),
                _mm_loadu_si128(load(3)),
            );
            *row = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low), high);
        }
        // Row q's 128-bit lane b is block 4q + b; its dword t goes to dword q of that
        // 128-bit lane of output t: lane 4b + q.
        let a = _mm512_unpacklo_epi32(rows[0], rows[1]);
        let b = _mm512_unpackhi_epi32(rows[0], rows[1]);
        let c = _mm512_unpacklo_epi32(rows[2], rows[3]);
        let d = _mm512_unpackhi_epi32(rows[2], rows[3]);
        [
            _mm512_unpacklo_epi64(a, c),
            _mm512_unpackhi_epi64(a, c),
            _mm512_unpacklo_epi64(b, d),
            _mm512_unpackhi_epi64(b, d),
        ]
    }
}

/// The f16 in the low half of each dword, as f32.
///
/// # Safety
/// Inlined into [`dot_with`] (its features).
#[inline(always)]
unsafe fn f16_low(v: __m512i) -> __m512 {
    // SAFETY: the caller's features.
    unsafe { _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v)) }
}

/// The f16 in the high half of each dword, as f32.
///
/// # Safety
/// Inlined into [`dot_with`] (its features).
#[inline(always)]
unsafe fn f16_high(v: __m512i) -> __m512 {
    // SAFETY: the caller's features.
    unsafe { _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(v))) }
}

/// `w | (bits & keep)`: the high bits `bits` (moved into place) joined to nibbles `w`.
///
/// # Safety
/// Inlined into [`dot_with`] (its features).
#[inline(always)]
unsafe fn join(w: __m512i, bits: __m512i, keep: i32) -> __m512i {
    // SAFETY: the caller's features.
    unsafe { _mm512_ternarylogic_epi32::<0xF8>(w, bits, _mm512_set1_epi32(keep)) }
}

/// Bits 6 and 7 of each dword's low byte, as bits 4 and 5.
///
/// # Safety
/// Inlined into [`dot_with`] (its features).
#[inline(always)]
unsafe fn top_bits(v: __m512i) -> __m512i {
    // SAFETY: the caller's features.
    unsafe { _mm512_srli_epi32::<2>(_mm512_and_si512(v, _mm512_set1_epi32(0xC0))) }
}

/// Q8_0 (34-byte blocks: d, 32 signed bytes).
struct Q8_0;

impl IntBlocks for Q8_0 {
    const GROUP_BYTES: usize = 16 * 34;

    #[inline(always)]
    unsafe fn decode(at: &Blocks) -> Group {
        // SAFETY: the caller's blocks (d at 0, values at 2..34) and features.
        unsafe {
            let head = transpose16(at, 34, 0);
            let [w0, w1, w2, w3] = transpose16(at, 34, 2);
            let [w4, w5, w6, w7] = transpose16(at, 34, 18);
            Group {
                w: [w0, w1, w2, w3, w4, w5, w6, w7],
                dw: f16_low(head[0]),
                mw: _mm512_setzero_ps(),
                sc: [_mm512_setzero_si512(); 2],
                offset: [_mm512_setzero_si512(); 2],
            }
        }
    }
}

/// The 32-value formats with 4 or 5 bits (layouts in [`super::avx512`]): Q4_0, Q4_1
/// (`MIN`), Q5_0 (`FIFTH`), Q5_1 (both).
struct Small<const MIN: bool, const FIFTH: bool>;

impl<const MIN: bool, const FIFTH: bool> Small<MIN, FIFTH> {
    /// Where the nibbles start (after the scale, the min and the fifth bits).
    const QS_AT: usize = if MIN { 4 } else { 2 } + if FIFTH { 4 } else { 0 };
    /// Block bytes.
    const BYTES: usize = Self::QS_AT + 16;
    /// Controls moving bit `4t + i` of qh (value `4t + i`'s fifth bit) to bit 4 of byte `i`.
    const FIFTH_BITS: [[i32; 16]; 8] = {
        let mut out = [[0; 16]; 8];
        let mut t = 0;
        while t < 8 {
            out[t] = bit_control([4 * t as i32; 16], 1, 4);
            t += 1;
        }
        out
    };
}

impl<const MIN: bool, const FIFTH: bool> IntBlocks for Small<MIN, FIFTH> {
    const GROUP_BYTES: usize = 16 * Self::BYTES;
    const MIN: bool = MIN;

    #[inline(always)]
    unsafe fn decode(at: &Blocks) -> Group {
        // SAFETY: the caller's blocks (scale, and min, at 0, then qh, nibbles at QS_AT) and
        // features.
        unsafe {
            let nibble = _mm512_set1_epi32(0x0F0F_0F0F);
            let head = transpose16(at, Self::BYTES, 0);
            let qs = transpose16(at, Self::BYTES, Self::QS_AT);
            let mut w = [nibble; 8];
            for (t, &q) in qs.iter().enumerate() {
                w[t] = _mm512_and_si512(q, nibble);
                w[t + 4] = _mm512_and_si512(_mm512_srli_epi32::<4>(q), nibble);
            }
            if FIFTH {
                // qh is dword 1 (after d and m), or bytes 2..6 (after d).
                let qh = if MIN {
                    head[1]
                } else {
                    _mm512_or_si512(
                        _mm512_srli_epi32::<16>(head[0]),
                        _mm512_slli_epi32::<16>(head[1]),
                    )
                };
                for (w, control) in w.iter_mut().zip(Self::FIFTH_BITS) {
                    let bits = _mm512_multishift_epi64_epi8(vector(control), qh);
                    *w = join(*w, bits, 0x1010_1010);
                }
            }
            if !MIN {
                let offset = _mm512_set1_epi8(if FIFTH { 16 } else { 8 });
                for w in &mut w {
                    *w = _mm512_sub_epi8(*w, offset);
                }
            }
            Group {
                w,
                dw: f16_low(head[0]),
                mw: if MIN {
                    f16_high(head[0])
                } else {
                    _mm512_setzero_ps()
                },
                sc: [_mm512_setzero_si512(); 2],
                offset: [_mm512_setzero_si512(); 2],
            }
        }
    }
}

/// The 64 bytes from `from` of super-block `sb` of `at` (of `bytes`; zeros when absent).
///
/// # Safety
/// Inlined into [`dot_with`] (its features); the bytes are readable when the super-block
/// is present.
#[inline(always)]
unsafe fn line(at: &Blocks, sb: usize, bytes: usize, from: usize) -> __m512i {
    // SAFETY: the caller's super-block (or zeros) and features.
    unsafe { _mm512_loadu_si512(at.super_block(sb, bytes).add(from) as *const __m512i) }
}

/// The 16 bytes from `from` of both super-blocks of `at` (of `bytes`; zeros when absent)
/// in the low 256 bits, then those from `more`.
///
/// # Safety
/// Inlined into [`dot_with`] (its features); the bytes are readable for the present
/// super-blocks.
#[inline(always)]
unsafe fn heads(at: &Blocks, bytes: usize, from: usize, more: usize) -> __m512i {
    let (first, second) = (at.super_block(0, bytes), at.super_block(1, bytes));
    // SAFETY: the caller's super-blocks (or zeros) and features.
    unsafe {
        let load = |p: *const u8| _mm_loadu_si128(p as *const __m128i);
        let low = _mm256_inserti128_si256::<1>(
            _mm256_castsi128_si256(load(first.add(from))),
            load(second.add(from)),
        );
        let high = _mm256_inserti128_si256::<1>(
            _mm256_castsi128_si256(load(first.add(more))),
            load(second.add(more)),
        );
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(low), high)
    }
}

/// Dword `t` of the 32-byte chunk `chunk[k % 8]` (of four) of each block's super-block,
/// from the 128 bytes `lo`, `hi` of each super-block.
///
/// # Safety
/// Inlined into [`dot_with`] (its features).
#[inline(always)]
unsafe fn chunk_dwords(lo: [__m512i; 2], hi: [__m512i; 2], at: __m512i) -> __m512i {
    // SAFETY: the caller's features.
    unsafe {
        _mm512_mask_blend_epi32(
            SECOND,
            _mm512_permutex2var_epi32(lo[0], at, hi[0]),
            _mm512_permutex2var_epi32(lo[1], at, hi[1]),
        )
    }
}

/// Q4_K and, with `HIGH`, Q5_K (layouts in [`super::avx512`]): two super-blocks per group,
/// block `k` group `k % 8` of super-block `k / 8`.
struct Q45K<const HIGH: bool>;

impl<const HIGH: bool> Q45K<HIGH> {
    /// Super-block bytes.
    const BYTES: usize = if HIGH { 176 } else { 144 };
    /// Where the nibbles start.
    const QS_AT: usize = if HIGH { 48 } else { 16 };
}

/// Dword `t` (added) of chunk `j / 2` of the nibbles, for group `j`.
const K_CHUNKS: [i32; 16] = per_lane(k_blocks([0, 0, 8, 8, 16, 16, 24, 24], 0));
/// Nibble shifts of group `j`.
const K_SHIFTS: [i32; 16] = per_lane(k_blocks([0, 4, 0, 4, 0, 4, 0, 4], 0));
/// Dword `t` of Q5_K's qh (plus `8 (t / 4) + t % 4`): its 16-byte halves are 128-bit lanes
/// 0 and 2 (first super-block), 1 and 3 (second).
const K_HIGH: [i32; 16] = per_lane(k_blocks([0; 8], 4));
/// Controls moving bit `j` of byte `i` of Q5_K's qh (value `i`'s fifth bit in group `j`)
/// to bit 4 of byte `i`.
const Q5K_BITS: [i32; 16] = bit_control(k_blocks([0, 1, 2, 3, 4, 5, 6, 7], 0), 8, 4);
/// Picks of d and dmin, and of the scale bytes (scale_min_k4: bytes j, j + 4 for groups
/// 0..4, j + 4, j - 4 and j for 4..8), from both super-blocks' first 16 bytes.
const K_DM: [u8; 64] = byte_picks(k_blocks([0; 8], 16));
/// See [`K_DM`].
const K_A: [u8; 64] = byte_picks(k_blocks([4, 5, 6, 7, 12, 13, 14, 15], 16));
/// See [`K_DM`].
const K_B: [u8; 64] = byte_picks(k_blocks([8, 9, 10, 11, 4, 5, 6, 7], 16));
/// See [`K_DM`].
const K_C: [u8; 64] = byte_picks(k_blocks([4, 5, 6, 7, 8, 9, 10, 11], 16));

impl<const HIGH: bool> IntBlocks for Q45K<HIGH> {
    const GROUP_BYTES: usize = 2 * Self::BYTES;
    const MIN: bool = true;

    #[inline(always)]
    unsafe fn decode(at: &Blocks) -> Group {
        let n = Self::BYTES;
        // SAFETY: the caller's super-blocks (d, dmin and 12 bytes of scales at 0, qh at 16
        // for Q5_K, 128 bytes of nibbles at QS_AT) and features.
        unsafe {
            let (nibble, low6, low4) = (
                _mm512_set1_epi32(0x0F0F_0F0F),
                _mm512_set1_epi32(63),
                _mm512_set1_epi32(15),
            );
            let head = heads(at, n, 0, 0);
            let lo = [line(at, 0, n, Self::QS_AT), line(at, 1, n, Self::QS_AT)];
            let hi = [
                line(at, 0, n, Self::QS_AT + 64),
                line(at, 1, n, Self::QS_AT + 64),
            ];
            let dm = _mm512_permutexvar_epi8(bytes(K_DM), head);
            let a = _mm512_permutexvar_epi8(bytes(K_A), head);
            let b = _mm512_permutexvar_epi8(bytes(K_B), head);
            let c = _mm512_permutexvar_epi8(bytes(K_C), head);
            // Groups 0..4 (in the lanes of blocks k % 8 < 4): the low 6 bits of a and b.
            let sc = _mm512_mask_blend_epi32(
                FIRST_HALF,
                _mm512_or_si512(_mm512_and_si512(a, low4), top_bits(b)),
                _mm512_and_si512(a, low6),
            );
            let m = _mm512_mask_blend_epi32(
                FIRST_HALF,
                _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi32::<4>(a), low4),
                    top_bits(c),
                ),
                _mm512_and_si512(b, low6),
            );
            let min = _mm512_mul_ps(f16_high(dm), _mm512_cvtepi32_ps(m));
            let mw = _mm512_castsi512_ps(_mm512_xor_si512(
                _mm512_castps_si512(min),
                _mm512_set1_epi32(i32::MIN),
            ));
            let qh = if HIGH {
                heads(at, n, 16, 32)
            } else {
                _mm512_setzero_si512()
            };
            let mut w = [nibble; 8];
            for (t, w) in w.iter_mut().enumerate() {
                let at = _mm512_add_epi32(vector(K_CHUNKS), _mm512_set1_epi32(t as i32));
                let q = chunk_dwords(lo, hi, at);
                *w = _mm512_and_si512(_mm512_srlv_epi32(q, vector(K_SHIFTS)), nibble);
                if HIGH {
                    let at = (8 * (t / 4) + t % 4) as i32;
                    let at = _mm512_add_epi32(vector(K_HIGH), _mm512_set1_epi32(at));
                    let h = _mm512_permutexvar_epi32(at, qh);
                    let bits = _mm512_multishift_epi64_epi8(vector(Q5K_BITS), h);
                    *w = join(*w, bits, 0x1010_1010);
                }
            }
            Group {
                w,
                dw: _mm512_mul_ps(f16_low(dm), _mm512_cvtepi32_ps(sc)),
                mw,
                sc: [_mm512_setzero_si512(); 2],
                offset: [_mm512_setzero_si512(); 2],
            }
        }
    }
}

/// The lanes of the blocks `k` with `k % 8 < 4`.
const FIRST_HALF: __mmask16 = {
    let mut out = 0;
    let mut k = 0;
    while k < 16 {
        if k % 8 < 4 {
            out |= 1 << lane_of(k);
        }
        k += 1;
    }
    out
};

/// Q6_K (layout in [`super::avx512`]): two super-blocks per group, block `k` the 32 values
/// `32 (k % 8)..` of super-block `k / 8` (half `n = k % 8 / 4`, quarter `k % 4`).
struct Q6K;

/// Dword `t` (added) of the 32 bytes of ql of block `k`: chunk `2n + (k % 2)`.
const Q6K_CHUNKS: [i32; 16] = per_lane(k_blocks([0, 8, 0, 8, 16, 24, 16, 24], 0));
/// Nibble shifts of block `k`: the high nibbles for quarters 2 and 3.
const Q6K_SHIFTS: [i32; 16] = per_lane(k_blocks([0, 0, 4, 4, 0, 0, 4, 4], 0));
/// Dword `t` (added) of the 32 bytes of qh of half `n`, in both super-blocks' 64 bytes.
const Q6K_HIGH: [i32; 16] = per_lane(k_blocks([0, 0, 0, 0, 8, 8, 8, 8], 16));
/// Controls moving bits `2 (k % 4)` and up of qh byte `i` to bits 4 and 5 of byte `i`.
const Q6K_BITS: [i32; 16] = bit_control(k_blocks([0, 2, 4, 6, 0, 2, 4, 6], 0), 8, 4);
/// Picks of the two scales of each block (bytes `8n + 2 (k % 4)` and up of the 16 at 192)
/// and of d (bytes 14 and 15 of the 16 at 194, in the high 256 bits) as the high half of
/// the dword.
const Q6K_SCALES: [u8; 64] = byte_picks(k_blocks([0, 2, 4, 6, 8, 10, 12, 14], 16));
/// See [`Q6K_SCALES`].
const Q6K_D: [u8; 64] = byte_picks(k_blocks([44; 8], 16));

impl IntBlocks for Q6K {
    const GROUP_BYTES: usize = 2 * 210;
    const SIX: bool = true;

    #[inline(always)]
    unsafe fn decode(at: &Blocks) -> Group {
        // SAFETY: the caller's super-blocks (ql at 0, qh at 128, scales at 192, d at 208)
        // and features.
        unsafe {
            let nibble = _mm512_set1_epi32(0x0F0F_0F0F);
            let lo = [line(at, 0, 210, 0), line(at, 1, 210, 0)];
            let hi = [line(at, 0, 210, 64), line(at, 1, 210, 64)];
            let qh = [line(at, 0, 210, 128), line(at, 1, 210, 128)];
            let head = heads(at, 210, 192, 194);
            let sc = _mm512_permutexvar_epi8(bytes(Q6K_SCALES), head);
            let d = f16_high(_mm512_permutexvar_epi8(bytes(Q6K_D), head));
            let mut w = [nibble; 8];
            for (t, w) in w.iter_mut().enumerate() {
                let at = _mm512_add_epi32(vector(Q6K_CHUNKS), _mm512_set1_epi32(t as i32));
                let low = _mm512_srlv_epi32(chunk_dwords(lo, hi, at), vector(Q6K_SHIFTS));
                let at = _mm512_add_epi32(vector(Q6K_HIGH), _mm512_set1_epi32(t as i32));
                let high = _mm512_permutex2var_epi32(qh[0], at, qh[1]);
                let q = join(
                    _mm512_and_si512(low, nibble),
                    _mm512_multishift_epi64_epi8(vector(Q6K_BITS), high),
                    0x3030_3030,
                );
                *w = _mm512_sub_epi8(q, _mm512_set1_epi8(32));
            }
            Group {
                w,
                dw: d,
                mw: _mm512_setzero_ps(),
                sc: [
                    _mm512_srai_epi32::<24>(_mm512_slli_epi32::<24>(sc)),
                    _mm512_srai_epi32::<24>(_mm512_slli_epi32::<16>(sc)),
                ],
                offset: [_mm512_setzero_si512(); 2],
            }
        }
    }
}
