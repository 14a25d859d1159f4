//! Packed rows on AVX-512 (F, BW, VL) with F16C. Each format's blocks are dequantised in
//! registers by one function ([`Blocks::values`]), with the reference's arithmetic (every
//! multiply and add rounded on its own, so the very bits of [`super::blocks::dequantize`]);
//! a dot product multiplies those values into 16-lane f32 sums and a dequantisation stores
//! them. No activation is requantised, so a product differs from the f32 model's only by
//! summation order.

use std::arch::x86_64::*;

use super::BlockFormat;
use super::blocks::{f16_at, scale_min_k4};

/// Whether the processor runs these kernels.
pub(super) fn available() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("f16c")
}

/// `row . x` for `format`.
///
/// # Safety
/// [`available`] must hold, `x.len()` must be a multiple of the format's block elements and
/// `row` must hold at least `x.len() / elems` blocks.
pub(super) unsafe fn dot(format: BlockFormat, row: &[u8], x: &[f32]) -> f32 {
    let n = x.len() / format.block_elems();
    debug_assert!(row.len() >= n * format.block_bytes());
    let (w, x) = (row.as_ptr(), x.as_ptr());
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match format {
            BlockFormat::Q8_0 => dot_with::<Q8_0>(w, x, n),
            BlockFormat::Q4_0 => dot_with::<Q4<false>>(w, x, n),
            BlockFormat::Q4_1 => dot_with::<Q4<true>>(w, x, n),
            BlockFormat::Q5_0 => dot_with::<Q5<false>>(w, x, n),
            BlockFormat::Q5_1 => dot_with::<Q5<true>>(w, x, n),
            BlockFormat::Q4K => dot_with::<Q45K<false>>(w, x, n),
            BlockFormat::Q5K => dot_with::<Q45K<true>>(w, x, n),
            BlockFormat::Q6K => dot_with::<Q6K>(w, x, n),
        }
    }
}

/// Dequantises whole blocks of `format` into `out`, with the reference's bits.
///
/// # Safety
/// [`available`] must hold; `out` must hold exactly the values of `blocks`' whole blocks.
pub(super) unsafe fn dequantize(format: BlockFormat, blocks: &[u8], out: &mut [f32]) {
    let n = blocks.len() / format.block_bytes();
    debug_assert_eq!(out.len(), n * format.block_elems());
    let (w, y) = (blocks.as_ptr(), out.as_mut_ptr());
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match format {
            BlockFormat::Q8_0 => unpack_with::<Q8_0>(w, y, n),
            BlockFormat::Q4_0 => unpack_with::<Q4<false>>(w, y, n),
            BlockFormat::Q4_1 => unpack_with::<Q4<true>>(w, y, n),
            BlockFormat::Q5_0 => unpack_with::<Q5<false>>(w, y, n),
            BlockFormat::Q5_1 => unpack_with::<Q5<true>>(w, y, n),
            BlockFormat::Q4K => unpack_with::<Q45K<false>>(w, y, n),
            BlockFormat::Q5K => unpack_with::<Q45K<true>>(w, y, n),
            BlockFormat::Q6K => unpack_with::<Q6K>(w, y, n),
        }
    }
}

/// One block format in registers.
trait Blocks {
    /// Bytes per block.
    const BYTES: usize;
    /// The block's values, 16 per vector, in order.
    type Values: AsRef<[__m512]>;
    /// Dequantises the block at `p`.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL and F16C; `p` points at a whole block.
    unsafe fn values(p: *const u8) -> Self::Values;

    /// Adds the block at `p` times its activations at `x` into the two 16-lane sums
    /// (their total is the dot product): by default its [`Blocks::values`]; formats whose
    /// scale factors out of the block override it with fewer operations.
    ///
    /// # Safety
    /// As [`Blocks::values`]; `x` points at the block's activations.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    #[inline]
    unsafe fn dot_block(p: *const u8, x: *const f32, acc: &mut [__m512; 2]) {
        // SAFETY: the caller's contract.
        unsafe {
            let values = Self::values(p);
            for (i, &v) in values.as_ref().iter().enumerate() {
                acc[i & 1] = _mm512_fmadd_ps(v, _mm512_loadu_ps(x.add(16 * i)), acc[i & 1]);
            }
        }
    }
}

/// `sum_i w_i x_i` over `n` blocks of `K` at `w` and their values at `x`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn dot_with<K: Blocks>(w: *const u8, x: *const f32, n: usize) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 2];
    let elems = std::mem::size_of::<K::Values>() / std::mem::size_of::<f32>();
    for b in 0..n {
        // SAFETY: block b and its activations lie inside the caller's row and x.
        unsafe { K::dot_block(w.add(K::BYTES * b), x.add(elems * b), &mut acc) };
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
}

/// Stores the values of `n` blocks of `K` at `w` to `y`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn unpack_with<K: Blocks>(w: *const u8, y: *mut f32, n: usize) {
    let mut y = y;
    for b in 0..n {
        // SAFETY: block b and its outputs lie inside the caller's buffers.
        unsafe {
            let values = K::values(w.add(K::BYTES * b));
            for &v in values.as_ref() {
                _mm512_storeu_ps(y, v);
                y = y.add(16);
            }
        }
    }
}

/// The f16 value at `p` as f32 in every lane.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
#[inline]
unsafe fn f16_all(p: *const u8) -> __m512 {
    // SAFETY: the caller's block holds two bytes at `p`.
    let h = unsafe { std::ptr::read_unaligned(p as *const u16) } as i32;
    _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(h)))
}

/// Sixteen bytes at `p` widened to 32-bit lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
#[inline]
unsafe fn bytes16(p: *const u8) -> __m512i {
    // SAFETY: the caller's block holds sixteen bytes at `p`.
    _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(p as *const __m128i) })
}

/// `q d` or, with a min, `q d + m` (each rounded on its own, as the reference computes).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
#[inline]
fn scaled(q: __m512i, d: __m512, m: Option<__m512>) -> __m512 {
    let v = _mm512_mul_ps(_mm512_cvtepi32_ps(q), d);
    match m {
        Some(m) => _mm512_add_ps(v, m),
        None => v,
    }
}

/// `d (lo . x[..16] + hi . x[16..]) + m sum(x)` into `acc` for a 32-value block of integer
/// values `lo`, `hi`, scale `d` and optional min `m`: the scale multiplies once per block,
/// not once per value.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
#[inline]
unsafe fn dot32(
    (lo, hi): (__m512i, __m512i),
    d: __m512,
    m: Option<__m512>,
    x: *const f32,
    acc: &mut [__m512; 2],
) {
    // SAFETY: the caller's block has 32 activations at `x`.
    let (x0, x1) = unsafe { (_mm512_loadu_ps(x), _mm512_loadu_ps(x.add(16))) };
    let t = _mm512_mul_ps(_mm512_cvtepi32_ps(lo), x0);
    let t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), x1, t);
    acc[0] = _mm512_fmadd_ps(t, d, acc[0]);
    if let Some(m) = m {
        acc[1] = _mm512_fmadd_ps(_mm512_add_ps(x0, x1), m, acc[1]);
    }
}

/// Q8_0: 34-byte blocks of d and 32 signed bytes; value `q d`.
struct Q8_0;

impl Blocks for Q8_0 {
    const BYTES: usize = 34;
    type Values = [__m512; 2];

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    unsafe fn values(p: *const u8) -> [__m512; 2] {
        // SAFETY: a whole block at `p`.
        let (d, (lo, hi)) = unsafe { (f16_all(p), Self::ints(p)) };
        [scaled(lo, d, None), scaled(hi, d, None)]
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    #[inline]
    unsafe fn dot_block(p: *const u8, x: *const f32, acc: &mut [__m512; 2]) {
        // SAFETY: the caller's contract; the features are the callers'.
        unsafe { dot32(Self::ints(p), f16_all(p), None, x, acc) }
    }
}

impl Q8_0 {
    /// The 32 signed bytes of the block at `p`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    #[inline]
    unsafe fn ints(p: *const u8) -> (__m512i, __m512i) {
        // SAFETY: a whole block at `p`.
        unsafe {
            (
                _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(2) as *const __m128i)),
                _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(18) as *const __m128i)),
            )
        }
    }
}

/// The scale (and, with `MIN`, the min) at the start of a 32-value block.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
#[inline]
unsafe fn scale_and_min<const MIN: bool>(p: *const u8) -> (__m512, Option<__m512>) {
    if !MIN {
        // SAFETY: the caller's block starts with its f16 scale.
        return (unsafe { f16_all(p) }, None);
    }
    // SAFETY: the caller's block starts with its f16 scale and its f16 min.
    let pair = unsafe { std::ptr::read_unaligned(p as *const i32) };
    let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(pair));
    (
        _mm512_broadcastss_ps(dm),
        Some(_mm512_broadcastss_ps(_mm_movehdup_ps(dm))),
    )
}

/// The 32-value formats with 4 or 5 bits: Q4_0 (18 bytes: d, 16 bytes of nibbles; value
/// `(q - 8) d`), Q4_1 (`MIN`, 20 bytes: d, m, nibbles; value `q d + m`), Q5_0 (`FIFTH`, 22
/// bytes: d, qh, nibbles; value `(q5 - 16) d`) and Q5_1 (both, 24 bytes: d, m, qh, nibbles;
/// value `q5 d + m`). Low nibbles are values 0-15, high ones 16-31; bit j of qh is the
/// fifth bit of value j.
struct Small<const MIN: bool, const FIFTH: bool>;

/// Q4_0 and Q4_1.
type Q4<const MIN: bool> = Small<MIN, false>;
/// Q5_0 and Q5_1.
type Q5<const MIN: bool> = Small<MIN, true>;

impl<const MIN: bool, const FIFTH: bool> Small<MIN, FIFTH> {
    /// Where the fifth bits start (after the scale and min).
    const QH_AT: usize = if MIN { 4 } else { 2 };
    /// Where the nibbles start.
    const QS_AT: usize = Self::QH_AT + if FIFTH { 4 } else { 0 };

    /// The block's integer values (less 8, resp. 16, without a min), in order.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    #[inline]
    unsafe fn ints(p: *const u8) -> (__m512i, __m512i) {
        // SAFETY: a whole block at `p`.
        let q = unsafe { bytes16(p.add(Self::QS_AT)) };
        let mut lo = _mm512_and_si512(q, _mm512_set1_epi32(0xF));
        let mut hi = _mm512_srli_epi32(q, 4);
        if FIFTH {
            // SAFETY: a whole block at `p`.
            let qh = unsafe { std::ptr::read_unaligned(p.add(Self::QH_AT) as *const u32) };
            let sixteen = _mm512_set1_epi32(16);
            lo = _mm512_mask_or_epi32(lo, qh as u16, lo, sixteen);
            hi = _mm512_mask_or_epi32(hi, (qh >> 16) as u16, hi, sixteen);
        }
        if MIN {
            return (lo, hi);
        }
        let offset = _mm512_set1_epi32(if FIFTH { 16 } else { 8 });
        (_mm512_sub_epi32(lo, offset), _mm512_sub_epi32(hi, offset))
    }
}

impl<const MIN: bool, const FIFTH: bool> Blocks for Small<MIN, FIFTH> {
    const BYTES: usize = Self::QS_AT + 16;
    type Values = [__m512; 2];

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    unsafe fn values(p: *const u8) -> [__m512; 2] {
        // SAFETY: a whole block at `p`.
        let ((d, m), (lo, hi)) = unsafe { (scale_and_min::<MIN>(p), Self::ints(p)) };
        [scaled(lo, d, m), scaled(hi, d, m)]
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    #[inline]
    unsafe fn dot_block(p: *const u8, x: *const f32, acc: &mut [__m512; 2]) {
        // SAFETY: the caller's contract; the features are the callers'.
        unsafe {
            let (d, m) = scale_and_min::<MIN>(p);
            dot32(Self::ints(p), d, m, x, acc)
        }
    }
}

/// Q4_K (144-byte super-blocks of 256: d, dmin, 12 bytes of 6-bit scales and mins, 128
/// bytes of nibbles) and, with `HIGH`, Q5_K (176 bytes: the same with 32 bytes of fifth
/// bits before the nibbles). Group g of 32 values is `(d sc_g) q - (dmin m_g)`; the 32
/// bytes of chunk c hold group 2c in their low nibbles and group 2c + 1 in their high ones.
struct Q45K<const HIGH: bool>;

impl<const HIGH: bool> Blocks for Q45K<HIGH> {
    const BYTES: usize = if HIGH { 176 } else { 144 };
    type Values = [__m512; 16];

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    unsafe fn values(p: *const u8) -> [__m512; 16] {
        let qs_at = if HIGH { 48 } else { 16 };
        let (nibble, sixteen) = (_mm512_set1_epi32(0xF), _mm512_set1_epi32(16));
        let mut out = [_mm512_setzero_ps(); 16];
        // SAFETY: a whole super-block at `p`.
        unsafe {
            let block = std::slice::from_raw_parts(p, Self::BYTES);
            let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
            let high = if HIGH {
                _mm256_loadu_si256(p.add(16) as *const __m256i)
            } else {
                _mm256_setzero_si256()
            };
            for c in 0..4 {
                let halves = [
                    bytes16(p.add(qs_at + 32 * c)),
                    bytes16(p.add(qs_at + 32 * c + 16)),
                ];
                for (g, shift) in [(2 * c, 0), (2 * c + 1, 4)] {
                    let (sc, m) = scale_min_k4(g, &block[4..16]);
                    let (scale, min) = (_mm512_set1_ps(d * sc), _mm512_set1_ps(dmin * m));
                    let bits = if HIGH {
                        _mm256_test_epi8_mask(high, _mm256_set1_epi8((1u8 << g) as i8))
                    } else {
                        0
                    };
                    for (half, &q) in halves.iter().enumerate() {
                        let q = _mm512_and_si512(
                            _mm512_srlv_epi32(q, _mm512_set1_epi32(shift)),
                            nibble,
                        );
                        let q = _mm512_mask_or_epi32(q, (bits >> (16 * half)) as u16, q, sixteen);
                        let v = _mm512_mul_ps(scale, _mm512_cvtepi32_ps(q));
                        out[2 * g + half] = _mm512_sub_ps(v, min);
                    }
                }
            }
        }
        out
    }
}

/// Q6_K (210-byte super-blocks of 256: 128 bytes of low nibbles, 64 of high bit pairs, 16
/// signed scales, d). Half n of 128 values takes ql[64n..], qh[32n..], scales[8n..]; value
/// l + 32k of the half (k < 4, l < 32) is `(d scales[l / 16 + 2k]) (q - 32)`.
struct Q6K;

impl Blocks for Q6K {
    const BYTES: usize = 210;
    type Values = [__m512; 16];

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    unsafe fn values(p: *const u8) -> [__m512; 16] {
        let (nibble, three, off) = (
            _mm512_set1_epi32(0xF),
            _mm512_set1_epi32(3),
            _mm512_set1_epi32(32),
        );
        let mut out = [_mm512_setzero_ps(); 16];
        // SAFETY: a whole super-block at `p`.
        unsafe {
            let d = f16_at(std::slice::from_raw_parts(p, Self::BYTES), 208);
            for half in 0..2 {
                let (ql, qh) = (p.add(64 * half), p.add(128 + 32 * half));
                let sc = p.add(192 + 8 * half) as *const i8;
                for l in [0, 16] {
                    let (a, b, h) = (
                        bytes16(ql.add(l)),
                        bytes16(ql.add(l + 32)),
                        bytes16(qh.add(l)),
                    );
                    let quads = [
                        (_mm512_and_si512(a, nibble), h),
                        (_mm512_and_si512(b, nibble), _mm512_srli_epi32(h, 2)),
                        (_mm512_srli_epi32(a, 4), _mm512_srli_epi32(h, 4)),
                        (_mm512_srli_epi32(b, 4), _mm512_srli_epi32(h, 6)),
                    ];
                    for (k, (low, high)) in quads.into_iter().enumerate() {
                        let q = _mm512_or_si512(
                            low,
                            _mm512_slli_epi32(_mm512_and_si512(high, three), 4),
                        );
                        let q = _mm512_cvtepi32_ps(_mm512_sub_epi32(q, off));
                        let scale = _mm512_set1_ps(d * *sc.add(l / 16 + 2 * k) as f32);
                        out[8 * half + 2 * k + l / 16] = _mm512_mul_ps(scale, q);
                    }
                }
            }
        }
        out
    }
}
