//! GGML tensor types and their dequantisation to f32 (bit layouts as in ggml-quants.c; the
//! formats that can stay packed are dequantised by `cake_kernels::quant::blocks`).

use std::fmt;

use cake_kernels::BlockFormat;
use half::{bf16, f16};

use super::GgufError;

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

    /// The block format a linear weight of this type stays packed in, when it can.
    pub fn block_format(self) -> Option<BlockFormat> {
        use GgmlType::*;
        Some(match self {
            Q4_0 => BlockFormat::Q4_0,
            Q4_1 => BlockFormat::Q4_1,
            Q5_0 => BlockFormat::Q5_0,
            Q5_1 => BlockFormat::Q5_1,
            Q8_0 => BlockFormat::Q8_0,
            Q4K => BlockFormat::Q4K,
            Q5K => BlockFormat::Q5K,
            Q6K => BlockFormat::Q6K,
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
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4K | Q5K | Q6K => {
            let format = ty
                .block_format()
                .unwrap_or_else(|| unreachable!("a packed type"));
            out.resize(data.len() / block_bytes * block, 0.0);
            cake_kernels::quant::blocks::dequantize(format, data, &mut out);
        }
        Q2K => blocks.for_each(|b| q2_k(b, &mut out)),
        Q3K => blocks.for_each(|b| q3_k(b, &mut out)),
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
