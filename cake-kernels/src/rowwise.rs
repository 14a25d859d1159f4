//! Row-wise kernels of the decoder layer on f32 rows: RMS normalisation, the residual add,
//! the rotary embedding and SwiGLU's gate, threaded over rows on rayon's global pool.

use crate::simd;
use rayon::prelude::*;

/// Rows per task of the row-wise kernels.
const ROWS_PER_TASK: usize = 16;

/// RMS normalisation of each `weight.len()`-wide row of `x` into a new buffer:
/// `weight * (x / sqrt(mean(x^2) + eps))`, in transformers' order of operations. The
/// threads write the rows straight into the buffer's spare capacity (zero-filling it first
/// was a pass over the activations on one thread while the others waited).
///
/// # Panics
/// When `x` is not whole rows of `weight.len()` (which must be positive).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let width = weight.len();
    assert!(
        width > 0 && x.len().is_multiple_of(width),
        "x must be whole rows of the weight's width"
    );
    let task = ROWS_PER_TASK * width;
    let mut out = Vec::with_capacity(x.len());
    out.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(task)
        .zip(x.par_chunks(task))
        .for_each(|(out, x)| {
            for (row, dst) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
                let mean_sq = simd::dot(row, row) / width as f32;
                let inv = 1.0 / (mean_sq + eps).sqrt();
                for ((o, &v), &w) in dst.iter_mut().zip(row).zip(weight) {
                    o.write(w * (v * inv));
                }
            }
        });
    // SAFETY: the chunks cover the first `x.len()` entries, whole rows each (checked
    // above), and every entry of every row was written.
    unsafe { out.set_len(x.len()) };
    out
}

/// `x += y` element by element, threads over blocks (the residual connections).
///
/// # Panics
/// When the lengths differ.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "x and y must have the same length");
    const BLOCK: usize = 1 << 14;
    let add = |(x, y): (&mut [f32], &[f32])| {
        for (a, &b) in x.iter_mut().zip(y) {
            *a += b;
        }
    };
    if x.len() <= BLOCK {
        add((x, y));
    } else {
        x.par_chunks_mut(BLOCK)
            .zip(y.par_chunks(BLOCK))
            .for_each(add);
    }
}

/// Rotary embedding ("rotate half" layout), in place, of `heads` heads of width `d` in
/// each row of `x`: row `i` (stride `row_stride`, heads starting at `offset`) turns by the
/// angles whose cosines and sines are row `i` of `cos` and `sin` (`[rows, d / 2]`, see
/// [`crate::layers::HostTables`]).
pub fn rope_in_place(
    x: &mut [f32],
    row_stride: usize,
    offset: usize,
    heads: usize,
    (cos, sin): (&[f32], &[f32]),
) {
    let rows = x.len() / row_stride.max(1);
    let half = cos.len() / rows.max(1);
    if half == 0 {
        return;
    }
    let d = 2 * half;
    x.par_chunks_mut(ROWS_PER_TASK * row_stride)
        .zip(cos.par_chunks(ROWS_PER_TASK * half))
        .zip(sin.par_chunks(ROWS_PER_TASK * half))
        .for_each(|((rows, cos), sin)| {
            for ((row, cos), sin) in rows
                .chunks_exact_mut(row_stride)
                .zip(cos.chunks_exact(half))
                .zip(sin.chunks_exact(half))
            {
                for h in 0..heads {
                    let at = offset + h * d;
                    let (x1, x2) = row[at..at + d].split_at_mut(half);
                    for j in 0..half {
                        let (a, b) = (x1[j], x2[j]);
                        x1[j] = a * cos[j] + (-b) * sin[j];
                        x2[j] = b * cos[j] + a * sin[j];
                    }
                }
            }
        });
}

/// SwiGLU's middle: rows of `gate_up` are `[gate (inter) | up (inter)]`; writes
/// `silu(gate) * up` rows of width `inter` into `out`, vectorised ([`simd::silu_mul`],
/// whose `exp` is within 2e-7 relative of libm's) and threaded over blocks of rows.
pub fn silu_mul(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    if inter == 0 {
        return;
    }
    out.par_chunks_mut(ROWS_PER_TASK * inter)
        .zip(gate_up.par_chunks(ROWS_PER_TASK * 2 * inter))
        .for_each(|(out, gate_up)| {
            for (row, dst) in gate_up
                .chunks_exact(2 * inter)
                .zip(out.chunks_exact_mut(inter))
            {
                let (gate, up) = row.split_at(inter);
                simd::silu_mul(gate, up, dst);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_by_hand() {
        let x = [3.0, 4.0, 0.0, 0.0, 1.0, 1.0];
        let w = [1.0, 2.0, 0.5];
        let out = rms_norm(&x, &w, 0.0);
        // Row 0: mean square 25/3.
        let inv = 1.0 / (25.0f32 / 3.0).sqrt();
        assert!((out[0] - 3.0 * inv).abs() < 1e-6);
        assert!((out[1] - 8.0 * inv).abs() < 1e-6);
        assert_eq!(out[2], 0.0);
        // Row 1: mean square 2/3.
        let inv = 1.0 / (2.0f32 / 3.0).sqrt();
        assert!((out[4] - 2.0 * inv).abs() < 1e-6 && (out[5] - 0.5 * inv).abs() < 1e-6);
    }

    #[test]
    fn add_assign_adds_every_element() {
        for n in [0, 5, (1 << 14) + 3, 3 << 14] {
            let mut x: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
            let y: Vec<f32> = (0..n).map(|i| 1.0 - i as f32).collect();
            let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
            add_assign(&mut x, &y);
            assert_eq!(x, want, "{n} elements");
        }
    }

    #[test]
    fn rope_rotates_pairs_by_position() {
        // One head of width 4 at position 2: pairs (0, 2) and (1, 3) rotate by 2*f.
        let (a, b) = (2.0f32 * 1.0, 2.0f32 * 0.5);
        let mut x = vec![9.0, 1.0, 2.0, 3.0, 4.0];
        rope_in_place(&mut x, 5, 1, 1, (&[a.cos(), b.cos()], &[a.sin(), b.sin()]));
        assert_eq!(x[0], 9.0);
        assert!((x[1] - (1.0 * a.cos() - 3.0 * a.sin())).abs() < 1e-6);
        assert!((x[3] - (3.0 * a.cos() + 1.0 * a.sin())).abs() < 1e-6);
        assert!((x[2] - (2.0 * b.cos() - 4.0 * b.sin())).abs() < 1e-6);
        assert!((x[4] - (4.0 * b.cos() + 2.0 * b.sin())).abs() < 1e-6);
    }

    #[test]
    fn silu_mul_by_hand() {
        let gate_up = [0.0, 2.0, 5.0, 7.0];
        let mut out = [1.0; 2];
        silu_mul(&gate_up, 2, &mut out);
        assert_eq!(out[0], 0.0);
        let silu2 = 2.0 / (1.0 + (-2.0f32).exp());
        assert!((out[1] - silu2 * 7.0).abs() < 1e-5);
    }
}
