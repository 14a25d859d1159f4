//! Dot products of packed rows with f32 activations on AVX-512 (F, BW, VL) with F16C: each
//! block is dequantised in registers (the reference's values, the scale's multiply and the
//! min's add fused) and multiplied into 16-lane f32 sums. No activation is requantised, so
//! a product differs from the f32 model's only by rounding order.

use std::arch::x86_64::*;

use super::BlockFormat;
use super::blocks::scale_min_k4;

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
            BlockFormat::Q8_0 => q8_0(w, x, n),
            BlockFormat::Q4_0 => q4_0(w, x, n),
            BlockFormat::Q4_1 => q4_1(w, x, n),
            BlockFormat::Q5_0 => q5::<false>(w, x, n),
            BlockFormat::Q5_1 => q5::<true>(w, x, n),
            BlockFormat::Q4K => q45_k::<false>(w, x, n),
            BlockFormat::Q5K => q45_k::<true>(w, x, n),
            BlockFormat::Q6K => q6_k(w, x, n),
        }
    }
}

/// The two f16 values at `p` as f32, in lanes 0 and 1.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
#[inline]
unsafe fn f16_pair(p: *const u8) -> __m128 {
    // SAFETY: the caller's block holds four bytes at `p`.
    _mm_cvtph_ps(_mm_cvtsi32_si128(unsafe {
        std::ptr::read_unaligned(p as *const i32)
    }))
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

/// Sixteen f32 activations at `p`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
#[inline]
unsafe fn load(p: *const f32) -> __m512 {
    // SAFETY: the caller's activations hold sixteen values at `p`.
    unsafe { _mm512_loadu_ps(p) }
}

/// Q8_0 (34-byte blocks: d, 32 signed bytes).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn q8_0(w: *const u8, x: *const f32, n: usize) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 2];
    for b in 0..n {
        // SAFETY: block b and its 32 activations lie inside the caller's row and x.
        unsafe {
            let (p, x) = (w.add(34 * b), x.add(32 * b));
            let d = f16_all(p);
            let lo = _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(2) as *const __m128i));
            let hi = _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(18) as *const __m128i));
            let t = _mm512_mul_ps(_mm512_cvtepi32_ps(lo), load(x));
            let t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), load(x.add(16)), t);
            acc[b & 1] = _mm512_fmadd_ps(t, d, acc[b & 1]);
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
}

/// Q4_0 (18-byte blocks: d, 16 bytes of nibbles; value (q - 8) d).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn q4_0(w: *const u8, x: *const f32, n: usize) -> f32 {
    let (nibble, eight) = (_mm512_set1_epi32(0xF), _mm512_set1_epi32(8));
    let mut acc = [_mm512_setzero_ps(); 2];
    for b in 0..n {
        // SAFETY: block b and its 32 activations lie inside the caller's row and x.
        unsafe {
            let (p, x) = (w.add(18 * b), x.add(32 * b));
            let d = f16_all(p);
            let q = bytes16(p.add(2));
            let lo = _mm512_sub_epi32(_mm512_and_si512(q, nibble), eight);
            let hi = _mm512_sub_epi32(_mm512_srli_epi32(q, 4), eight);
            let t = _mm512_mul_ps(_mm512_cvtepi32_ps(lo), load(x));
            let t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), load(x.add(16)), t);
            acc[b & 1] = _mm512_fmadd_ps(t, d, acc[b & 1]);
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
}

/// Q4_1 (20-byte blocks: d, m, 16 bytes of nibbles; value q d + m).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn q4_1(w: *const u8, x: *const f32, n: usize) -> f32 {
    let nibble = _mm512_set1_epi32(0xF);
    let mut acc = [_mm512_setzero_ps(); 2];
    for b in 0..n {
        // SAFETY: block b and its 32 activations lie inside the caller's row and x.
        unsafe {
            let (p, x) = (w.add(20 * b), x.add(32 * b));
            let dm = f16_pair(p);
            let d = _mm512_broadcastss_ps(dm);
            let m = _mm512_broadcastss_ps(_mm_movehdup_ps(dm));
            let q = bytes16(p.add(4));
            let lo = _mm512_cvtepi32_ps(_mm512_and_si512(q, nibble));
            let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(q, 4));
            acc[0] = _mm512_fmadd_ps(_mm512_fmadd_ps(lo, d, m), load(x), acc[0]);
            acc[1] = _mm512_fmadd_ps(_mm512_fmadd_ps(hi, d, m), load(x.add(16)), acc[1]);
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
}

/// Q5_0 (22-byte blocks: d, qh, nibbles; value (q5 - 16) d) and, with `MIN`, Q5_1
/// (24-byte blocks: d, m, qh, nibbles; value q5 d + m). Bit j of qh is the fifth bit of
/// value j.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn q5<const MIN: bool>(w: *const u8, x: *const f32, n: usize) -> f32 {
    let (bytes, qh_at) = if MIN { (24, 4) } else { (22, 2) };
    let (nibble, sixteen) = (_mm512_set1_epi32(0xF), _mm512_set1_epi32(16));
    let mut acc = [_mm512_setzero_ps(); 2];
    for b in 0..n {
        // SAFETY: block b and its 32 activations lie inside the caller's row and x.
        unsafe {
            let (p, x) = (w.add(bytes * b), x.add(32 * b));
            let qh = std::ptr::read_unaligned(p.add(qh_at) as *const u32);
            let q = bytes16(p.add(qh_at + 4));
            let lo = _mm512_and_si512(q, nibble);
            let lo = _mm512_mask_or_epi32(lo, qh as u16, lo, sixteen);
            let hi = _mm512_srli_epi32(q, 4);
            let hi = _mm512_mask_or_epi32(hi, (qh >> 16) as u16, hi, sixteen);
            if MIN {
                let dm = f16_pair(p);
                let d = _mm512_broadcastss_ps(dm);
                let m = _mm512_broadcastss_ps(_mm_movehdup_ps(dm));
                let lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), d, m);
                let hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), d, m);
                acc[0] = _mm512_fmadd_ps(lo, load(x), acc[0]);
                acc[1] = _mm512_fmadd_ps(hi, load(x.add(16)), acc[1]);
            } else {
                let d = f16_all(p);
                let lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(lo, sixteen));
                let hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(hi, sixteen));
                let t = _mm512_mul_ps(lo, load(x));
                let t = _mm512_fmadd_ps(hi, load(x.add(16)), t);
                acc[b & 1] = _mm512_fmadd_ps(t, d, acc[b & 1]);
            }
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
}

/// Q4_K (144-byte super-blocks of 256: d, dmin, 12 bytes of 6-bit scales and mins, 128 bytes
/// of nibbles) and, with `HIGH`, Q5_K (176 bytes: the same plus 32 bytes of fifth bits
/// before the nibbles). Group g of 32 values is `(q d sc_g) - (dmin m_g)`; the 32 bytes of
/// chunk c hold group 2c in their low nibbles and group 2c + 1 in their high ones.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn q45_k<const HIGH: bool>(w: *const u8, x: *const f32, n: usize) -> f32 {
    let (bytes, qs_at) = if HIGH { (176, 48) } else { (144, 16) };
    let nibble = _mm512_set1_epi32(0xF);
    let sixteen = _mm512_set1_epi32(16);
    let mut acc = [_mm512_setzero_ps(); 2];
    for b in 0..n {
        // SAFETY: super-block b and its 256 activations lie inside the caller's row and x.
        unsafe {
            let (p, x) = (w.add(bytes * b), x.add(256 * b));
            let block = std::slice::from_raw_parts(p, bytes);
            let dm = f16_pair(p);
            let (d, dmin) = (_mm_cvtss_f32(dm), _mm_cvtss_f32(_mm_movehdup_ps(dm)));
            let high = if HIGH {
                _mm256_loadu_si256(p.add(16) as *const __m256i)
            } else {
                _mm256_setzero_si256()
            };
            for c in 0..4 {
                let qa = bytes16(p.add(qs_at + 32 * c));
                let qb = bytes16(p.add(qs_at + 32 * c + 16));
                for (g, shift) in [(2 * c, 0), (2 * c + 1, 4)] {
                    let (sc, m) = scale_min_k4(g, &block[4..16]);
                    let (scale, min) = (_mm512_set1_ps(d * sc), _mm512_set1_ps(dmin * m));
                    let shift = _mm512_set1_epi32(shift);
                    let mut a = _mm512_and_si512(_mm512_srlv_epi32(qa, shift), nibble);
                    let mut bq = _mm512_and_si512(_mm512_srlv_epi32(qb, shift), nibble);
                    if HIGH {
                        let bit = _mm256_set1_epi8((1u8 << g) as i8);
                        let k = _mm256_test_epi8_mask(high, bit);
                        a = _mm512_mask_or_epi32(a, k as u16, a, sixteen);
                        bq = _mm512_mask_or_epi32(bq, (k >> 16) as u16, bq, sixteen);
                    }
                    let xg = x.add(32 * g);
                    let va = _mm512_fmsub_ps(_mm512_cvtepi32_ps(a), scale, min);
                    let vb = _mm512_fmsub_ps(_mm512_cvtepi32_ps(bq), scale, min);
                    acc[0] = _mm512_fmadd_ps(va, load(xg), acc[0]);
                    acc[1] = _mm512_fmadd_ps(vb, load(xg.add(16)), acc[1]);
                }
            }
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
}

/// Q6_K (210-byte super-blocks of 256: 128 bytes of low nibbles, 64 of high bit pairs, 16
/// signed scales, d). Each half n of 128 values takes ql[64n..], qh[32n..], scales[8n..];
/// value l + 32k of the half (k < 4, l < 32) is `(q - 32) d scales[l / 16 + 2k]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn q6_k(w: *const u8, x: *const f32, n: usize) -> f32 {
    let (nibble, three, off) = (
        _mm512_set1_epi32(0xF),
        _mm512_set1_epi32(3),
        _mm512_set1_epi32(32),
    );
    let mut acc = [_mm512_setzero_ps(); 2];
    for b in 0..n {
        // SAFETY: super-block b and its 256 activations lie inside the caller's row and x.
        unsafe {
            let (p, x) = (w.add(210 * b), x.add(256 * b));
            let d = _mm_cvtss_f32(f16_pair(p.add(208)));
            for half in 0..2 {
                let (ql, qh) = (p.add(64 * half), p.add(128 + 32 * half));
                let sc = p.add(192 + 8 * half) as *const i8;
                let x = x.add(128 * half);
                for l in [0, 16] {
                    let a = bytes16(ql.add(l));
                    let bq = bytes16(ql.add(l + 32));
                    let h = bytes16(qh.add(l));
                    let quads = [
                        (_mm512_and_si512(a, nibble), h),
                        (_mm512_and_si512(bq, nibble), _mm512_srli_epi32(h, 2)),
                        (_mm512_srli_epi32(a, 4), _mm512_srli_epi32(h, 4)),
                        (_mm512_srli_epi32(bq, 4), _mm512_srli_epi32(h, 6)),
                    ];
                    for (k, (low, high)) in quads.into_iter().enumerate() {
                        let q = _mm512_or_si512(
                            low,
                            _mm512_slli_epi32(_mm512_and_si512(high, three), 4),
                        );
                        let q = _mm512_cvtepi32_ps(_mm512_sub_epi32(q, off));
                        let scale = _mm512_set1_ps(d * *sc.add(l / 16 + 2 * k) as f32);
                        let t = _mm512_mul_ps(q, load(x.add(l + 32 * k)));
                        acc[k & 1] = _mm512_fmadd_ps(t, scale, acc[k & 1]);
                    }
                }
            }
        }
    }
    _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
}

/// Dequantises whole blocks of `format` into `out` with the reference's arithmetic (each
/// multiply and add rounded on its own, so the very bits of [`super::blocks::dequantize`]).
///
/// # Safety
/// [`available`] must hold; `out` must hold exactly the values of `blocks`' whole blocks.
pub(super) unsafe fn dequantize(format: BlockFormat, blocks: &[u8], out: &mut [f32]) {
    let (elems, bytes) = (format.block_elems(), format.block_bytes());
    debug_assert_eq!(out.len(), blocks.len() / bytes * elems);
    let n = blocks.len() / bytes;
    let (w, y) = (blocks.as_ptr(), out.as_mut_ptr());
    // SAFETY: the caller's contract, passed on.
    unsafe {
        match format {
            BlockFormat::Q8_0 => unpack_q8_0(w, y, n),
            BlockFormat::Q4_0 => unpack_q4::<false>(w, y, n),
            BlockFormat::Q4_1 => unpack_q4::<true>(w, y, n),
            BlockFormat::Q5_0 => unpack_q5::<false>(w, y, n),
            BlockFormat::Q5_1 => unpack_q5::<true>(w, y, n),
            BlockFormat::Q4K => unpack_q45_k::<false>(w, y, n),
            BlockFormat::Q5K => unpack_q45_k::<true>(w, y, n),
            BlockFormat::Q6K => unpack_q6_k(w, y, n),
        }
    }
}

/// Sixteen values to `p`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
#[inline]
unsafe fn store(p: *mut f32, v: __m512) {
    // SAFETY: the caller's output holds sixteen values at `p`.
    unsafe { _mm512_storeu_ps(p, v) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn unpack_q8_0(w: *const u8, y: *mut f32, n: usize) {
    for b in 0..n {
        // SAFETY: block b and its 32 outputs lie inside the caller's buffers.
        unsafe {
            let (p, y) = (w.add(34 * b), y.add(32 * b));
            let d = f16_all(p);
            let lo = _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(2) as *const __m128i));
            let hi = _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(18) as *const __m128i));
            store(y, _mm512_mul_ps(_mm512_cvtepi32_ps(lo), d));
            store(y.add(16), _mm512_mul_ps(_mm512_cvtepi32_ps(hi), d));
        }
    }
}

/// Q4_0 (`MIN` false: `(q - 8) d`) and Q4_1 (`MIN` true: `q d + m`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn unpack_q4<const MIN: bool>(w: *const u8, y: *mut f32, n: usize) {
    let (bytes, qs_at) = if MIN { (20, 4) } else { (18, 2) };
    let (nibble, eight) = (_mm512_set1_epi32(0xF), _mm512_set1_epi32(8));
    for b in 0..n {
        // SAFETY: block b and its 32 outputs lie inside the caller's buffers.
        unsafe {
            let (p, y) = (w.add(bytes * b), y.add(32 * b));
            let q = bytes16(p.add(qs_at));
            let (lo, hi) = (_mm512_and_si512(q, nibble), _mm512_srli_epi32(q, 4));
            if MIN {
                let dm = f16_pair(p);
                let d = _mm512_broadcastss_ps(dm);
                let m = _mm512_broadcastss_ps(_mm_movehdup_ps(dm));
                store(
                    y,
                    _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(lo), d), m),
                );
                store(
                    y.add(16),
                    _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(hi), d), m),
                );
            } else {
                let d = f16_all(p);
                let lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(lo, eight));
                let hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(hi, eight));
                store(y, _mm512_mul_ps(lo, d));
                store(y.add(16), _mm512_mul_ps(hi, d));
            }
        }
    }
}

/// Q5_0 (`MIN` false: `(q5 - 16) d`) and Q5_1 (`MIN` true: `q5 d + m`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn unpack_q5<const MIN: bool>(w: *const u8, y: *mut f32, n: usize) {
    let (bytes, qh_at) = if MIN { (24, 4) } else { (22, 2) };
    let (nibble, sixteen) = (_mm512_set1_epi32(0xF), _mm512_set1_epi32(16));
    for b in 0..n {
        // SAFETY: block b and its 32 outputs lie inside the caller's buffers.
        unsafe {
            let (p, y) = (w.add(bytes * b), y.add(32 * b));
            let qh = std::ptr::read_unaligned(p.add(qh_at) as *const u32);
            let q = bytes16(p.add(qh_at + 4));
            let lo = _mm512_and_si512(q, nibble);
            let lo = _mm512_mask_or_epi32(lo, qh as u16, lo, sixteen);
            let hi = _mm512_srli_epi32(q, 4);
            let hi = _mm512_mask_or_epi32(hi, (qh >> 16) as u16, hi, sixteen);
            if MIN {
                let dm = f16_pair(p);
                let d = _mm512_broadcastss_ps(dm);
                let m = _mm512_broadcastss_ps(_mm_movehdup_ps(dm));
                store(
                    y,
                    _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(lo), d), m),
                );
                store(
                    y.add(16),
                    _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(hi), d), m),
                );
            } else {
                let d = f16_all(p);
                let lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(lo, sixteen));
                let hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(hi, sixteen));
                store(y, _mm512_mul_ps(lo, d));
                store(y.add(16), _mm512_mul_ps(hi, d));
            }
        }
    }
}

/// Q4_K and, with `HIGH`, Q5_K: group g is `(d sc_g) q - (dmin m_g)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn unpack_q45_k<const HIGH: bool>(w: *const u8, y: *mut f32, n: usize) {
    let (bytes, qs_at) = if HIGH { (176, 48) } else { (144, 16) };
    let (nibble, sixteen) = (_mm512_set1_epi32(0xF), _mm512_set1_epi32(16));
    for b in 0..n {
        // SAFETY: super-block b and its 256 outputs lie inside the caller's buffers.
        unsafe {
            let (p, y) = (w.add(bytes * b), y.add(256 * b));
            let block = std::slice::from_raw_parts(p, bytes);
            let d = super::blocks::f16_at(block, 0);
            let dmin = super::blocks::f16_at(block, 2);
            let high = if HIGH {
                _mm256_loadu_si256(p.add(16) as *const __m256i)
            } else {
                _mm256_setzero_si256()
            };
            for c in 0..4 {
                let qa = bytes16(p.add(qs_at + 32 * c));
                let qb = bytes16(p.add(qs_at + 32 * c + 16));
                for (g, shift) in [(2 * c, 0), (2 * c + 1, 4)] {
                    let (sc, m) = scale_min_k4(g, &block[4..16]);
                    let (scale, min) = (_mm512_set1_ps(d * sc), _mm512_set1_ps(dmin * m));
                    let shift = _mm512_set1_epi32(shift);
                    let mut a = _mm512_and_si512(_mm512_srlv_epi32(qa, shift), nibble);
                    let mut bq = _mm512_and_si512(_mm512_srlv_epi32(qb, shift), nibble);
                    if HIGH {
                        let bit = _mm256_set1_epi8((1u8 << g) as i8);
                        let k = _mm256_test_epi8_mask(high, bit);
                        a = _mm512_mask_or_epi32(a, k as u16, a, sixteen);
                        bq = _mm512_mask_or_epi32(bq, (k >> 16) as u16, bq, sixteen);
                    }
                    let yg = y.add(32 * g);
                    store(
                        yg,
                        _mm512_sub_ps(_mm512_mul_ps(scale, _mm512_cvtepi32_ps(a)), min),
                    );
                    store(
                        yg.add(16),
                        _mm512_sub_ps(_mm512_mul_ps(scale, _mm512_cvtepi32_ps(bq)), min),
                    );
                }
            }
        }
    }
}

/// Q6_K: value l + 32k of half n is `(d scales[l / 16 + 2k]) (q - 32)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
unsafe fn unpack_q6_k(w: *const u8, y: *mut f32, n: usize) {
    let (nibble, three, off) = (
        _mm512_set1_epi32(0xF),
        _mm512_set1_epi32(3),
        _mm512_set1_epi32(32),
    );
    for b in 0..n {
        // SAFETY: super-block b and its 256 outputs lie inside the caller's buffers.
        unsafe {
            let (p, y) = (w.add(210 * b), y.add(256 * b));
            let d = super::blocks::f16_at(std::slice::from_raw_parts(p, 210), 208);
            for half in 0..2 {
                let (ql, qh) = (p.add(64 * half), p.add(128 + 32 * half));
                let sc = p.add(192 + 8 * half) as *const i8;
                let y = y.add(128 * half);
                for l in [0, 16] {
                    let a = bytes16(ql.add(l));
                    let bq = bytes16(ql.add(l + 32));
                    let h = bytes16(qh.add(l));
                    let quads = [
                        (_mm512_and_si512(a, nibble), h),
                        (_mm512_and_si512(bq, nibble), _mm512_srli_epi32(h, 2)),
                        (_mm512_srli_epi32(a, 4), _mm512_srli_epi32(h, 4)),
                        (_mm512_srli_epi32(bq, 4), _mm512_srli_epi32(h, 6)),
                    ];
                    for (k, (low, high)) in quads.into_iter().enumerate() {
                        let q = _mm512_or_si512(
                            low,
                            _mm512_slli_epi32(_mm512_and_si512(high, three), 4),
                        );
                        let q = _mm512_cvtepi32_ps(_mm512_sub_epi32(q, off));
                        let scale = _mm512_set1_ps(d * *sc.add(l / 16 + 2 * k) as f32);
                        store(y.add(l + 32 * k), _mm512_mul_ps(scale, q));
                    }
                }
            }
        }
    }
}
