//! The reference dequantisation of each block format: bit layouts and arithmetic as in
//! ggml-quants.c (scalar, plain multiply then add, so the same bits on every machine). The
//! f32 model load dequantises with these, and the packed kernels are tested against them.

use half::f16;

use super::BlockFormat;

/// The f16 at byte `i` of `b`, as f32.
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantises whole blocks of `format` into `out`.
///
/// # Panics
/// When `blocks` is not whole blocks or `out` does not hold exactly their values.
pub fn dequantize(format: BlockFormat, blocks: &[u8], out: &mut [f32]) {
    let (elems, bytes) = (format.block_elems(), format.block_bytes());
    assert!(
        blocks.len().is_multiple_of(bytes) && out.len() == blocks.len() / bytes * elems,
        "{} bytes of {format} blocks do not fill {} values",
        blocks.len(),
        out.len()
    );
    let block: fn(&[u8], &mut [f32]) = match format {
        BlockFormat::Q8_0 => q8_0,
        BlockFormat::Q4_0 => q4_0,
        BlockFormat::Q4_1 => q4_1,
        BlockFormat::Q5_0 => q5_0,
        BlockFormat::Q5_1 => q5_1,
        BlockFormat::Q4K => q4_k,
        BlockFormat::Q5K => q5_k,
        BlockFormat::Q6K => q6_k,
    };
    for (b, out) in blocks.chunks_exact(bytes).zip(out.chunks_exact_mut(elems)) {
        block(b, out);
    }
}

/// Q4_0: `d: f16, qs: [u8; 16]`; x = (nibble - 8) * d, low nibbles first.
fn q4_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let (lo, hi) = out.split_at_mut(16);
    for ((&q, lo), hi) in b[2..18].iter().zip(lo).zip(hi) {
        *lo = ((q & 0xF) as i32 - 8) as f32 * d;
        *hi = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1: `d: f16, m: f16, qs: [u8; 16]`; x = nibble * d + m.
fn q4_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let (lo, hi) = out.split_at_mut(16);
    for ((&q, lo), hi) in b[4..20].iter().zip(lo).zip(hi) {
        *lo = (q & 0xF) as f32 * d + m;
        *hi = (q >> 4) as f32 * d + m;
    }
}

/// The 5-bit values of a Q5 block: nibbles plus one high bit each from `qh`.
pub(crate) fn q5_values(qh: u32, qs: &[u8]) -> [u8; 32] {
    let mut v = [0u8; 32];
    for j in 0..16 {
        let h0 = (((qh >> j) << 4) & 0x10) as u8;
        let h1 = ((qh >> (j + 12)) & 0x10) as u8;
        v[j] = (qs[j] & 0xF) | h0;
        v[j + 16] = (qs[j] >> 4) | h1;
    }
    v
}

/// Q5_0: `d: f16, qh: u32, qs: [u8; 16]`; x = (q5 - 16) * d.
fn q5_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (o, &q) in out.iter_mut().zip(&q5_values(qh, &b[6..22])) {
        *o = (q as i32 - 16) as f32 * d;
    }
}

/// Q5_1: `d: f16, m: f16, qh: u32, qs: [u8; 16]`; x = q5 * d + m.
fn q5_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (o, &q) in out.iter_mut().zip(&q5_values(qh, &b[8..24])) {
        *o = q as f32 * d + m;
    }
}

/// Q8_0: `d: f16, qs: [i8; 32]`; x = q * d.
fn q8_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..34]) {
        *o = (q as i8) as f32 * d;
    }
}

/// Scale and min `j` (0..8) of a Q4_K / Q5_K block, packed as 6 bits in `scales[12]`.
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (sc as f32, m as f32)
}

/// Q4_K: `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`; 8 groups of 32 four-bit values.
fn q4_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    for (chunk, (q, out)) in b[16..144]
        .chunks_exact(32)
        .zip(out.chunks_exact_mut(64))
        .enumerate()
    {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let (lo, hi) = out.split_at_mut(32);
        for ((&x, lo), hi) in q.iter().zip(lo).zip(hi) {
            *lo = d1 * (x & 0xF) as f32 - m1;
            *hi = d2 * (x >> 4) as f32 - m2;
        }
    }
}

/// Q5_K: `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`.
fn q5_k(b: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    for (chunk, (q, out)) in b[48..176]
        .chunks_exact(32)
        .zip(out.chunks_exact_mut(64))
        .enumerate()
    {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let (lo, hi) = out.split_at_mut(32);
        for (((&x, &h), lo), hi) in q.iter().zip(qh).zip(lo).zip(hi) {
            *lo = d1 * ((x & 0xF) + if h & u1 != 0 { 16 } else { 0 }) as f32 - m1;
            *hi = d2 * ((x >> 4) + if h & u2 != 0 { 16 } else { 0 }) as f32 - m2;
        }
    }
}

/// Q6_K: `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`; 16 groups of 16 six-bit values.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let y = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}
