//! GGML tensor types and their dequantisation to f32 (bit layouts as in ggml-quants.c).

use std::fmt;

use half::{bf16, f16};

use super::GgufError;

/// Elements per K-quant super-block.
const QK_K: usize = 256;

/// A GGML element type, by its id in the GGUF tensor table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half float.
    F16,
    /// 4-bit, 32 per block, scale only.
    Q4_0,
    /// 4-bit, 32 per block, scale and min.
    Q4_1,
    /// 5-bit, 32 per block, scale only.
    Q5_0,
    /// 5-bit, 32 per block, scale and min.
    Q5_1,
    /// 8-bit, 32 per block, scale only.
    Q8_0,
    /// 8-bit with block sums (an intermediate format; not dequantised).
    Q8_1,
    /// K-quant, 2-bit, 256 per super-block.
    Q2K,
    /// K-quant, 3-bit.
    Q3K,
    /// K-quant, 4-bit.
    Q4K,
    /// K-quant, 5-bit.
    Q5K,
    /// K-quant, 6-bit.
    Q6K,
    /// K-quant, 8-bit (an intermediate format; not dequantised).
    Q8K,
    /// 8-bit integer.
    I8,
    /// 16-bit integer.
    I16,
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// 64-bit float.
    F64,
    /// bfloat16.
    BF16,
}

/// The types [`dequantize`] accepts, for error messages.
pub(super) const SUPPORTED: &str =
    "F32, F16, BF16, F64, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

impl GgmlType {
    /// The type with GGML id `id`, if this loader knows its block layout.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            30 => BF16,
            _ => return None,
        })
    }

    /// `(elements per block, bytes per block)`.
    pub fn block(self) -> (u64, u64) {
        use GgmlType::*;
        match self {
            F32 | I32 => (1, 4),
            F16 | BF16 | I16 => (1, 2),
            I8 => (1, 1),
            F64 | I64 => (1, 8),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            Q8_1 => (32, 36),
            Q2K => (256, 84),
            Q3K => (256, 110),
            Q4K => (256, 144),
            Q5K => (256, 176),
            Q6K => (256, 210),
            Q8K => (256, 292),
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GgmlType::*;
        let s = match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2K => "Q2_K",
            Q3K => "Q3_K",
            Q4K => "Q4_K",
            Q5K => "Q5_K",
            Q6K => "Q6_K",
            Q8K => "Q8_K",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            BF16 => "BF16",
        };
        f.write_str(s)
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantises `data` (whole blocks of type `ty`) to f32; `name` is used in errors.
pub fn dequantize(ty: GgmlType, data: &[u8], name: &str) -> Result<Vec<f32>, GgufError> {
    let (block, block_bytes) = ty.block();
    let (block, block_bytes) = (block as usize, block_bytes as usize);
    if !data.len().is_multiple_of(block_bytes) {
        return Err(GgufError::Corrupt {
            path: name.into(),
            what: format!(
                "{} bytes of {ty} data is not a whole number of {block_bytes}-byte blocks",
                data.len()
            ),
        });
    }
    let mut out = Vec::with_capacity(data.len() / block_bytes * block);
    let blocks = data.chunks_exact(block_bytes);
    use GgmlType::*;
    match ty {
        F32 => out.extend(blocks.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        F16 => out.extend(blocks.map(|b| f16_at(b, 0))),
        BF16 => out.extend(blocks.map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        F64 => {
            out.extend(blocks.map(|b| f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32))
        }
        Q4_0 => blocks.for_each(|b| q4_0(b, &mut out)),
        Q4_1 => blocks.for_each(|b| q4_1(b, &mut out)),
        Q5_0 => blocks.for_each(|b| q5_0(b, &mut out)),
        Q5_1 => blocks.for_each(|b| q5_1(b, &mut out)),
        Q8_0 => blocks.for_each(|b| q8_0(b, &mut out)),
        Q2K => blocks.for_each(|b| q2_k(b, &mut out)),
        Q3K => blocks.for_each(|b| q3_k(b, &mut out)),
        Q4K => blocks.for_each(|b| q4_k(b, &mut out)),
        Q5K => blocks.for_each(|b| q5_k(b, &mut out)),
        Q6K => blocks.for_each(|b| q6_k(b, &mut out)),
        Q8_1 | Q8K | I8 | I16 | I32 | I64 => {
            return Err(GgufError::UnsupportedType {
                name: name.to_string(),
                ty,
                supported: SUPPORTED,
            });
        }
    }
    Ok(out)
}

/// Q4_0: `d: f16, qs: [u8; 16]`; x = (nibble - 8) * d, low nibbles first.
fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|&q| ((q & 0xF) as i32 - 8) as f32 * d));
    out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
}

/// Q4_1: `d: f16, m: f16, qs: [u8; 16]`; x = nibble * d + m.
fn q4_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[4..20];
    out.extend(qs.iter().map(|&q| (q & 0xF) as f32 * d + m));
    out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
}

/// The 5-bit values of a Q5 block: nibbles plus one high bit each from `qh`.
fn q5_values(qh: u32, qs: &[u8]) -> [u8; 32] {
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
fn q5_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    out.extend(
        q5_values(qh, &b[6..22])
            .iter()
            .map(|&q| (q as i32 - 16) as f32 * d),
    );
}

/// Q5_1: `d: f16, m: f16, qh: u32, qs: [u8; 16]`; x = q5 * d + m.
fn q5_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    out.extend(q5_values(qh, &b[8..24]).iter().map(|&q| q as f32 * d + m));
}

/// Q8_0: `d: f16, qs: [i8; 32]`; x = q * d.
fn q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    out.extend(b[2..34].iter().map(|&q| (q as i8) as f32 * d));
}

/// Scale and min `j` (0..8) of a Q4_K / Q5_K block, packed as 6 bits in `scales[12]`.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
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

/// Q2_K: `scales: [u8; 16], qs: [u8; 64], d: f16, dmin: f16`; 16 groups of 16 two-bit values.
fn q2_k(b: &[u8], out: &mut Vec<f32>) {
    let scales = &b[0..16];
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let mut is = 0;
    for half in 0..2 {
        let q = &b[16 + 32 * half..16 + 32 * (half + 1)];
        for shift in [0, 2, 4, 6] {
            for part in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * (sc & 0xF) as f32;
                let ml = dmin * (sc >> 4) as f32;
                out.extend(
                    q[16 * part..16 * (part + 1)]
                        .iter()
                        .map(|&x| dl * ((x >> shift) & 3) as f32 - ml),
                );
            }
        }
    }
}

/// Q3_K: `hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16`; 16 groups of 16 three-bit values.
fn q3_k(b: &[u8], out: &mut Vec<f32>) {
    let hmask = &b[0..32];
    let raw = &b[96..108];
    let d_all = f16_at(b, 108);
    // Unpack 16 six-bit scales (ggml's kmask1/kmask2 shuffle).
    let mut aux = [0u32; 4];
    for (i, a) in aux.iter_mut().take(3).enumerate() {
        *a = u32::from_le_bytes([raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]]);
    }
    let (kmask1, kmask2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
    let tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
    aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
    aux[0] = (aux[0] & kmask2) | ((tmp & kmask1) << 4);
    aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
    let scales: Vec<i8> = aux
        .iter()
        .flat_map(|a| a.to_le_bytes())
        .map(|s| s as i8)
        .collect();

    let mut m: u8 = 1;
    let mut is = 0;
    for half in 0..2 {
        let q = &b[32 + 32 * half..32 + 32 * (half + 1)];
        for shift in [0, 2, 4, 6] {
            for part in 0..2 {
                let dl = d_all * (scales[is] as i32 - 32) as f32;
                is += 1;
                let range = 16 * part..16 * (part + 1);
                out.extend(q[range.clone()].iter().zip(&hmask[range]).map(|(&x, &h)| {
                    let low = ((x >> shift) & 3) as i32;
                    dl * (low - if h & m != 0 { 0 } else { 4 }) as f32
                }));
            }
            m <<= 1;
        }
    }
}

/// Q4_K: `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`; 8 groups of 32 four-bit values.
fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    for (chunk, q) in b[16..144].chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        out.extend(q.iter().map(|&x| d1 * (x & 0xF) as f32 - m1));
        out.extend(q.iter().map(|&x| d2 * (x >> 4) as f32 - m2));
    }
}

/// Q5_K: `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`.
fn q5_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    for (chunk, q) in b[48..176].chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        out.extend(
            q.iter()
                .zip(qh)
                .map(|(&x, &h)| d1 * ((x & 0xF) + if h & u1 != 0 { 16 } else { 0 }) as f32 - m1),
        );
        out.extend(
            q.iter()
                .zip(qh)
                .map(|(&x, &h)| d2 * ((x >> 4) + if h & u2 != 0 { 16 } else { 0 }) as f32 - m2),
        );
    }
}

/// Q6_K: `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`; 16 groups of 16 six-bit values.
fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 208);
    let start = out.len();
    out.resize(start + QK_K, 0.0);
    let y = &mut out[start..];
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
