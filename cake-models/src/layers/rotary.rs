//! Rotary position embedding in the "rotate half" layout, with Llama-3 frequency scaling.
//!
//! The generic path rotates with [`RopeTables`]; the CPU fast path rotates in place with
//! [`cake_kernels::rope_in_place`] from the cosines and sines of [`RopeTables::host`], the
//! same angles computed once per forward pass for every layer.

use std::cell::OnceCell;

use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::config::{Llama3RopeScaling, RopeConfig};

/// Rotary position embedding in the Hugging Face "rotate half" layout.
#[derive(Debug, Clone)]
pub struct Rotary {
    /// Inverse frequencies `[d / 2]`, computed in f32 exactly as transformers does.
    inv_freq: Vec<f32>,
}

impl Rotary {
    /// Frequencies for a head width `head_dim` (even).
    pub fn new(head_dim: usize, rope: &RopeConfig) -> Self {
        let theta = rope.theta as f32;
        let mut inv_freq: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1.0 / theta.powf(i as f32 / head_dim as f32))
            .collect();
        if let Some(factors) = &rope.freq_factors {
            // llama.cpp's rotation: theta_i = position * base^(-2i/d) / factor_i.
            for (f, factor) in inv_freq.iter_mut().zip(factors) {
                *f /= factor;
            }
        } else if let Some(scaling) = &rope.llama3 {
            llama3_scale(&mut inv_freq, scaling);
        }
        Self { inv_freq }
    }

    /// Inverse frequencies `[d / 2]`.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// Tables for positions `start..start + n`, laid out for `heads` query heads and
    /// `kv_heads` KV heads (see [`RopeTables`]); built on first use.
    pub fn tables<B: Backend>(
        &self,
        start: usize,
        n: usize,
        heads: usize,
        kv_heads: usize,
        device: &B::Device,
    ) -> RopeTables<B> {
        RopeTables {
            inv_freq: self.inv_freq.clone(),
            start,
            n,
            heads,
            kv_heads,
            device: device.clone(),
            built: OnceCell::new(),
            host: OnceCell::new(),
        }
    }
}

/// Rotary tables for one forward pass, shaped so that rotating a projection `[n, h * d]`
/// (viewed as `[n * h, d]`) is one small matmul and two same-shape products of contiguous
/// tensors: `x * cos + rotate_half(x) * sin` with `rotate_half(x) = x @ R`, the order of
/// operations transformers uses. Built on first use: the CPU fast path rotates from the
/// frequencies alone and never builds them.
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    inv_freq: Vec<f32>,
    start: usize,
    n: usize,
    heads: usize,
    kv_heads: usize,
    device: B::Device,
    built: OnceCell<Built<B>>,
    host: OnceCell<HostTables>,
}

/// `cos(angle)` and `sin(angle)` of `angle = position * inv_freq[j]` (f32, as transformers
/// computes it), `[n, d / 2]` each: what [`cake_kernels::rope_in_place`] rotates by.
#[derive(Debug, Clone, Default)]
pub struct HostTables {
    /// `[n, d / 2]`
    pub cos: Vec<f32>,
    /// `[n, d / 2]`
    pub sin: Vec<f32>,
}

/// The tensors of [`RopeTables`].
#[derive(Debug, Clone)]
struct Built<B: Backend> {
    /// `[n * H, d]` cosines for the queries.
    q_cos: Tensor<B, 2>,
    /// `[n * H, d]` sines for the queries.
    q_sin: Tensor<B, 2>,
    /// `[n * Hkv, d]` cosines for the keys.
    k_cos: Tensor<B, 2>,
    /// `[n * Hkv, d]` sines for the keys.
    k_sin: Tensor<B, 2>,
    /// `[d, d]` signed permutation `R` of "rotate half".
    rotate: Tensor<B, 2>,
}

impl<B: Backend> RopeTables<B> {
    /// Inverse frequencies `[d / 2]`.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// Absolute position of the first row.
    pub fn start(&self) -> usize {
        self.start
    }

    /// The cosines and sines of the CPU fast path, computed on first use and shared by every
    /// layer of the forward pass.
    pub fn host(&self) -> &HostTables {
        self.host.get_or_init(|| {
            let half = self.inv_freq.len();
            let (mut cos, mut sin) = (vec![0.0; self.n * half], vec![0.0; self.n * half]);
            for (i, (cos, sin)) in cos
                .chunks_exact_mut(half.max(1))
                .zip(sin.chunks_exact_mut(half.max(1)))
                .enumerate()
            {
                let pos = (self.start + i) as f32;
                for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(&self.inv_freq) {
                    let angle = pos * f;
                    *c = angle.cos();
                    *s = angle.sin();
                }
            }
            HostTables { cos, sin }
        })
    }

    fn built(&self) -> &Built<B> {
        self.built.get_or_init(|| self.build())
    }

    fn build(&self) -> Built<B> {
        let (n, device) = (self.n, &self.device);
        let half = self.inv_freq.len();
        let d = 2 * half;
        // [n, d]: cat(freqs, freqs) per position, as transformers builds `emb`, from the
        // same [n, d / 2] cosines and sines as the CPU fast path.
        let twice = |table: &[f32]| -> Vec<f32> {
            table
                .chunks_exact(half.max(1))
                .flat_map(|row| row.iter().chain(row).copied())
                .collect()
        };
        let host = self.host();
        let (cos, sin) = (twice(&host.cos), twice(&host.sin));
        // [n * h, d]: row p * h + i is position p (the same for each of the h heads).
        let per_head = |table: &[f32], h: usize| -> Tensor<B, 2> {
            let rows: Vec<f32> = table
                .chunks_exact(d)
                .flat_map(|row| std::iter::repeat_n(row, h).flatten().copied())
                .collect();
            Tensor::from_data(TensorData::new(rows, [n * h, d]), device)
        };
        // [d, d]: x @ R = cat(-x2, x1), exactly (one +-1 term per column).
        let mut rotate = vec![0.0f32; d * d];
        for j in 0..half {
            rotate[(half + j) * d + j] = -1.0; // out[j] = -x[half + j]
            rotate[j * d + half + j] = 1.0; // out[half + j] = x[j]
        }
        Built {
            q_cos: per_head(&cos, self.heads),
            q_sin: per_head(&sin, self.heads),
            k_cos: per_head(&cos, self.kv_heads),
            k_sin: per_head(&sin, self.kv_heads),
            rotate: Tensor::from_data(TensorData::new(rotate, [d, d]), device),
        }
    }

    /// Rotates query projections `[n, H * d]` -> `[n * H, d]`.
    pub fn rotate_queries(&self, x: Tensor<B, 2>, head_dim: usize) -> Tensor<B, 2> {
        let t = self.built();
        self.rotate_rows(x, head_dim, &t.q_cos, &t.q_sin)
    }

    /// Rotates key projections `[n, Hkv * d]` -> `[n * Hkv, d]`.
    pub fn rotate_keys(&self, x: Tensor<B, 2>, head_dim: usize) -> Tensor<B, 2> {
        let t = self.built();
        self.rotate_rows(x, head_dim, &t.k_cos, &t.k_sin)
    }

    /// `[n, h * d]` -> `[n * h, d]` rotated by the matching `[n * h, d]` tables.
    fn rotate_rows(
        &self,
        x: Tensor<B, 2>,
        d: usize,
        cos: &Tensor<B, 2>,
        sin: &Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let [n, width] = x.dims();
        // [n * h, d]
        let x = x.reshape([n * width / d, d]);
        let rotated = x.clone().matmul(self.built().rotate.clone());
        x * cos.clone() + rotated * sin.clone()
    }
}

/// Llama-3.1 frequency scaling (transformers' `_compute_llama3_parameters`, in f32):
/// long wavelengths are divided by `factor`, short ones kept, the band between smoothed.
fn llama3_scale(inv_freq: &mut [f32], s: &Llama3RopeScaling) {
    let old_len = s.original_max_position_embeddings as f32;
    let (factor, low, high) = (
        s.factor as f32,
        s.low_freq_factor as f32,
        s.high_freq_factor as f32,
    );
    let low_freq_wavelen = old_len / low;
    let high_freq_wavelen = old_len / high;
    for f in inv_freq.iter_mut() {
        let wavelen = 2.0 * std::f32::consts::PI / *f;
        let scaled = if wavelen > low_freq_wavelen {
            *f / factor
        } else {
            *f
        };
        // Between the two wavelengths, bounds included (NaN-free inputs).
        let medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
        *f = if medium {
            let smooth = (old_len / wavelen - low) / (high - low);
            (1.0 - smooth) * scaled / factor + smooth * scaled
        } else {
            scaled
        };
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::Cpu;

    /// The 2-D rotary layout equals the textbook rotate-half formula.
    #[test]
    fn rope_tables_match_rotate_half() {
        let device = Default::default();
        let rope = RopeConfig {
            theta: 10_000.0,
            llama3: None,
            freq_factors: None,
        };
        let rotary = Rotary::new(8, &rope);
        let (n, heads, d) = (3, 2, 8);
        let tables = rotary.tables::<Cpu>(5, n, heads, 1, &device);
        let x: Vec<f32> = (0..n * heads * d)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let out = tables.rotate_queries(
            Tensor::from_data(TensorData::new(x.clone(), [n, heads * d]), &device),
            d,
        );
        let out: Vec<f32> = out.into_data().into_vec().unwrap();
        for p in 0..n {
            for hd in 0..heads {
                let row = &x[(p * heads + hd) * d..][..d];
                for j in 0..d {
                    let f = rotary.inv_freq()[j % (d / 2)];
                    let angle = (5 + p) as f32 * f;
                    let rotated = if j < d / 2 {
                        -row[j + d / 2]
                    } else {
                        row[j - d / 2]
                    };
                    let expected = row[j] * angle.cos() + rotated * angle.sin();
                    let got = out[(p * heads + hd) * d + j];
                    assert!(
                        (got - expected).abs() < 1e-6,
                        "p {p} h {hd} j {j}: {got} vs {expected}"
                    );
                }
            }
        }
    }
}
