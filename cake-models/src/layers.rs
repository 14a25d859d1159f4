//! Building blocks shared by every architecture: linear projection, RMSNorm, rotary
//! embedding (with Llama-3 frequency scaling), SwiGLU MLP, grouped-query attention over a
//! [`LayerCache`], and the decoder layer that combines them.
//!
//! Everything works on one sequence (no batch dimension) in the backend's float type.

use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Tensor, TensorData, activation, backend::Backend};
use cake_core::LayerCache;

use crate::config::{Llama3RopeScaling, RopeConfig};

/// Largest number of attention scores (`H x query block x keys`) materialised at once;
/// bounds prefill memory at long contexts (64 Mi floats = 256 MiB in f32).
const MAX_SCORE_ELEMENTS: usize = 1 << 26;
/// Upper bound of a query block, so that causal prefill skips most future keys.
const MAX_QUERY_BLOCK: usize = 256;

/// `y = x W + b` with `W` stored `[in, out]` (the transpose of PyTorch's layout).
#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    /// `[in, out]`
    pub weight: Tensor<B, 2>,
    /// `[out]`
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    /// `x`: `[S, in]` -> `[S, out]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let y = x.matmul(self.weight.clone());
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze_dim::<2>(0),
            None => y,
        }
    }
}

/// Root-mean-square normalisation: `x / sqrt(mean(x^2) + eps) * weight`.
#[derive(Debug, Clone)]
pub struct RmsNorm<B: Backend> {
    /// `[hidden]`
    pub weight: Tensor<B, 1>,
    /// Added to the mean square.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// `x`: `[S, hidden]` -> `[S, hidden]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        // [S, 1]
        let inv_rms = (x.clone().powi_scalar(2).mean_dim(1) + self.eps)
            .sqrt()
            .recip();
        x * inv_rms * self.weight.clone().unsqueeze_dim::<2>(0)
    }
}

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
        if let Some(scaling) = &rope.llama3 {
            llama3_scale(&mut inv_freq, scaling);
        }
        Self { inv_freq }
    }

    /// Inverse frequencies `[d / 2]`.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// Tables for positions `start..start + n`, laid out for `heads` query heads and
    /// `kv_heads` KV heads (see [`RopeTables`]).
    pub fn tables<B: Backend>(
        &self,
        start: usize,
        n: usize,
        heads: usize,
        kv_heads: usize,
        device: &B::Device,
    ) -> RopeTables<B> {
        let half = self.inv_freq.len();
        let d = 2 * half;
        // [n, d]: cat(freqs, freqs) per position, as transformers builds `emb`.
        let mut cos = Vec::with_capacity(n * d);
        let mut sin = Vec::with_capacity(n * d);
        for pos in start..start + n {
            let angles: Vec<f32> = self.inv_freq.iter().map(|&f| pos as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
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
        RopeTables {
            q_cos: per_head(&cos, heads),
            q_sin: per_head(&sin, heads),
            k_cos: per_head(&cos, kv_heads),
            k_sin: per_head(&sin, kv_heads),
            rotate: Tensor::from_data(TensorData::new(rotate, [d, d]), device),
        }
    }
}

/// Rotary tables for one forward pass, shaped so that rotating a projection `[n, h * d]`
/// (viewed as `[n * h, d]`) is one small matmul and two same-shape products of contiguous
/// tensors: `x * cos + rotate_half(x) * sin` with `rotate_half(x) = x @ R`, the order of
/// operations transformers uses. (Broadcasting 3-D products are the CPU backend's slow,
/// element-by-element path; this layout made SmolLM2's prefill about 1.5x faster.)
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
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
    /// Rotates query projections `[n, H * d]` -> `[n * H, d]`.
    pub fn rotate_queries(&self, x: Tensor<B, 2>, head_dim: usize) -> Tensor<B, 2> {
        self.rotate_rows(x, head_dim, &self.q_cos, &self.q_sin)
    }

    /// Rotates key projections `[n, Hkv * d]` -> `[n * Hkv, d]`.
    pub fn rotate_keys(&self, x: Tensor<B, 2>, head_dim: usize) -> Tensor<B, 2> {
        self.rotate_rows(x, head_dim, &self.k_cos, &self.k_sin)
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
        let rotated = x.clone().matmul(self.rotate.clone());
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

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct Mlp<B: Backend> {
    /// `[hidden, inter]`
    pub gate: Linear<B>,
    /// `[hidden, inter]`
    pub up: Linear<B>,
    /// `[inter, hidden]`
    pub down: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// `x`: `[S, hidden]` -> `[S, hidden]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let gate = activation::silu(self.gate.forward(x.clone()));
        self.down.forward(gate * self.up.forward(x))
    }
}

/// Grouped-query self-attention whose keys/values live in a [`LayerCache`], one row per
/// KV head (no repeated copies for the G query heads of a group).
#[derive(Debug, Clone)]
pub struct Attention<B: Backend> {
    /// `[hidden, H * d]`
    pub q: Linear<B>,
    /// `[hidden, Hkv * d]`
    pub k: Linear<B>,
    /// `[hidden, Hkv * d]`
    pub v: Linear<B>,
    /// `[H * d, hidden]`
    pub o: Linear<B>,
    /// Query heads H.
    pub num_heads: usize,
    /// Key/value heads Hkv.
    pub num_kv_heads: usize,
    /// Head width d.
    pub head_dim: usize,
    /// Sliding window (keys at `p - w < j <= p`), or full causal attention.
    pub window: Option<usize>,
}

impl<B: Backend> Attention<B> {
    /// Projects `x`: `[S, hidden]` at absolute positions `start..start + S`, rotates,
    /// appends the new keys/values to `cache`, attends over everything the cache holds
    /// (masked by the cached positions) and returns the output `[S, hidden]` together with
    /// the post-RoPE queries `[H, S, d]` (for the KV-compression hooks).
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        start: usize,
        rope: &RopeTables<B>,
        cache: &mut LayerCache<B>,
    ) -> (Tensor<B, 2>, Tensor<B, 3>) {
        let [s, _] = x.dims();
        let (h, hkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        // [S * H, d] -> [H, S, d]
        let q = rope
            .rotate_queries(self.q.forward(x.clone()), d)
            .reshape([s, h, d])
            .swap_dims(0, 1);
        // [S * Hkv, d] -> [Hkv, S, d]
        let k = rope
            .rotate_keys(self.k.forward(x.clone()), d)
            .reshape([s, hkv, d])
            .swap_dims(0, 1);
        let v = self.v.forward(x).reshape([s, hkv, d]).swap_dims(0, 1);
        cache.append(k, v, start);
        // [H, S, d]
        let out = self.attend(q.clone(), start, cache);
        let out = out.swap_dims(0, 1).reshape([s, h * d]);
        (self.o.forward(out), q)
    }

    /// Exact softmax attention of queries `q`: `[H, S, d]` at positions `start..start+S`
    /// over the cached keys/values (`[Hkv, L, d]`), causal by cached position and limited
    /// to the sliding window if any. Processes blocks of queries so that at most
    /// [`MAX_SCORE_ELEMENTS`] scores exist at once, and gives each block only the key
    /// range it can see. Returns `[H, S, d]`.
    pub fn attend(&self, q: Tensor<B, 3>, start: usize, cache: &LayerCache<B>) -> Tensor<B, 3> {
        if let Some(out) = self.attend_fused(q.clone(), start, cache) {
            return out;
        }
        let [h, s, d] = q.dims();
        let hkv = self.num_kv_heads;
        let g = h / hkv;
        let (Some(keys), Some(values)) = (cache.keys(), cache.values()) else {
            unreachable!("attend is only called after appending to the cache")
        };
        let positions = cache.positions();
        let len = cache.len();
        let device = q.device();
        let scale = 1.0 / (d as f64).sqrt();
        // [Hkv, G, S, d]: query heads h = kv * G + g share KV head kv.
        let q = (q * scale).reshape([hkv, g, s, d]);
        let block = (MAX_SCORE_ELEMENTS / (h * len).max(1)).clamp(1, MAX_QUERY_BLOCK);
        let mut outputs = Vec::with_capacity(s.div_ceil(block));
        for q0 in (0..s).step_by(block) {
            let c = block.min(s - q0);
            let (p_first, p_last) = (start + q0, start + q0 + c - 1);
            // Visible key index range: positions are ascending per head.
            let lo = match self.window {
                Some(w) if p_first >= w => positions
                    .iter()
                    .map(|p| p.partition_point(|&j| j <= p_first - w))
                    .min()
                    .unwrap_or(0),
                _ => 0,
            };
            let hi = positions
                .iter()
                .map(|p| p.partition_point(|&j| j <= p_last))
                .max()
                .unwrap_or(0);
            let n = hi - lo;
            // [Hkv, G*c, d]
            let qc = q.clone().narrow(2, q0, c).reshape([hkv, g * c, d]);
            // [Hkv, n, d]
            let kc = keys.clone().narrow(1, lo, n);
            let vc = values.clone().narrow(1, lo, n);
            // [Hkv, G, c, n]
            let mut scores = qc.matmul(kc.swap_dims(1, 2)).reshape([hkv, g, c, n]);
            if let Some(bias) = self.mask_bias(positions, lo, hi, p_first, c, &device) {
                scores = scores + bias;
            }
            let probs = activation::softmax(scores, 3).reshape([hkv, g * c, n]);
            // [Hkv, G, c, d]
            outputs.push(probs.matmul(vc).reshape([hkv, g, c, d]));
        }
        Tensor::cat(outputs, 2).reshape([h, s, d])
    }

    /// The backend's fused attention (flash attention on the CPU backend: one pass, online
    /// softmax, memory bounded by tiles) for multi-token queries in the two common shapes: a
    /// fresh causal prefill (every KV head caches exactly the positions `start..start+S` of
    /// the queries, no window cutting in) and queries that see every cached key.
    /// The G query heads of a group read their KV head through a transient broadcast copy;
    /// the cache itself is never repeated. Returns `None` for any other shape (evicted
    /// caches with a mask, sliding windows that cut), which [`Attention::attend`] handles.
    fn attend_fused(
        &self,
        q: Tensor<B, 3>,
        start: usize,
        cache: &LayerCache<B>,
    ) -> Option<Tensor<B, 3>> {
        let [h, s, d] = q.dims();
        let (hkv, len) = (self.num_kv_heads, cache.len());
        let positions = cache.positions();
        let q_last = start + s - 1;
        let in_window = |j: usize| self.window.is_none_or(|w| j + w > q_last);
        let all_visible = positions
            .iter()
            .flatten()
            .all(|&j| j <= start && in_window(j));
        let fresh_causal = len == s
            && positions
                .iter()
                .all(|p| p.first() == Some(&start) && p.last() == Some(&q_last))
            && in_window(start);
        // Single-query decoding is faster through the plain matmul path (measured with
        // examples/speed.rs: the fused kernel's per-call set-up dominates at S = 1).
        if s == 1 || !(all_visible || fresh_causal) {
            return None;
        }
        let (keys, values) = (cache.keys()?, cache.values()?);
        // [1, H, len, d]: KV head kv serves query heads kv*G..(kv+1)*G.
        let repeat = |t: &Tensor<B, 3>| {
            t.clone()
                .unsqueeze_dim::<4>(1)
                .expand([hkv, h / hkv, len, d])
                .reshape([1, h, len, d])
        };
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: !all_visible,
        };
        let (q, k, v) = (q.reshape([1, h, s, d]), repeat(keys), repeat(values));
        if all_visible || s <= CAUSAL_QUERY_BLOCK {
            return Some(attention_over_heads(q, k, v, options).reshape([h, s, d]));
        }
        // Causal prefill in query blocks: block q0..q0+c sees keys 0..q0+c (causal offset
        // q0), so the kernel skips the masked upper triangle (about half the work).
        let blocks: Vec<Tensor<B, 4>> = (0..s)
            .step_by(CAUSAL_QUERY_BLOCK)
            .map(|q0| {
                let c = CAUSAL_QUERY_BLOCK.min(s - q0);
                attention_over_heads(
                    q.clone().narrow(2, q0, c),
                    k.clone().narrow(2, 0, q0 + c),
                    v.clone().narrow(2, 0, q0 + c),
                    options,
                )
            })
            .collect();
        Some(Tensor::cat(blocks, 2).reshape([h, s, d]))
    }

    /// Additive mask `[Hkv or 1, 1, c, n]` (0 or -inf) for queries at `p_first..p_first+c`
    /// over key indices `lo..hi`, or `None` when every key is visible to every query.
    fn mask_bias(
        &self,
        positions: &[Vec<usize>],
        lo: usize,
        hi: usize,
        p_first: usize,
        c: usize,
        device: &B::Device,
    ) -> Option<Tensor<B, 4>> {
        let visible = |q: usize, j: usize| j <= q && self.window.is_none_or(|w| j + w > q);
        let p_last = p_first + c - 1;
        let all_visible = positions.iter().all(|p| {
            p[lo..hi]
                .iter()
                .all(|&j| visible(p_first, j) && visible(p_last, j))
        });
        if all_visible {
            return None;
        }
        let same = positions.iter().all(|p| p[lo..hi] == positions[0][lo..hi]);
        let heads = if same { 1 } else { positions.len() };
        let n = hi - lo;
        let mut bias = Vec::with_capacity(heads * c * n);
        for p in &positions[..heads] {
            for q in p_first..=p_last {
                bias.extend(p[lo..hi].iter().map(|&j| {
                    if visible(q, j) {
                        0.0f32
                    } else {
                        f32::NEG_INFINITY
                    }
                }));
            }
        }
        Some(Tensor::from_data(
            TensorData::new(bias, [heads, 1, c, n]),
            device,
        ))
    }
}

/// Fused attention of `[1, H, S, d]` queries over `[1, H, L, d]` keys/values, split into
/// groups of heads computed on separate host threads when the backend is the CPU backend
/// (its fused kernel runs one head after another on one thread) and the work is large
/// enough to pay for the threads. Other backends get one call: they parallelise inside.
/// Heads are independent, so the result is the same as one call. Returns `[1, H, S, d]`.
fn attention_over_heads<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    options: AttentionModuleOptions,
) -> Tensor<B, 4> {
    let [_, h, s, _] = q.dims();
    let len = k.dims()[2];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let worth_it = h * s * len >= MIN_SPLIT_ATTENTION_SCORES;
    if threads < 2 || h < 2 || !worth_it || B::name(&q.device()) != "flex" {
        return burn::tensor::module::attention(q, k, v, None, None, options);
    }
    let chunk = h.div_ceil(threads.min(h));
    let outputs: Vec<Tensor<B, 4>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..h)
            .step_by(chunk)
            .map(|h0| {
                let n = chunk.min(h - h0);
                let (q, k, v) = (
                    q.clone().narrow(1, h0, n),
                    k.clone().narrow(1, h0, n),
                    v.clone().narrow(1, h0, n),
                );
                scope.spawn(move || burn::tensor::module::attention(q, k, v, None, None, options))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|e| std::panic::resume_unwind(e))
            })
            .collect()
    });
    Tensor::cat(outputs, 1)
}

/// Query block of the fused causal prefill (a multiple of the kernel's key tiles).
const CAUSAL_QUERY_BLOCK: usize = 512;

/// Smallest `H x S x L` for which [`attention_over_heads`] uses several threads.
const MIN_SPLIT_ATTENTION_SCORES: usize = 1 << 20;

/// Pre-norm decoder layer: `x + attn(norm(x))`, then `x + mlp(norm(x))`.
#[derive(Debug, Clone)]
pub struct DecoderLayer<B: Backend> {
    /// Norm before attention.
    pub input_norm: RmsNorm<B>,
    /// Self-attention.
    pub attention: Attention<B>,
    /// Norm before the MLP.
    pub post_attention_norm: RmsNorm<B>,
    /// Feed-forward.
    pub mlp: Mlp<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// `x`: `[S, hidden]` at positions `start..start + S` -> (`[S, hidden]`, post-RoPE
    /// queries `[H, S, d]`); appends this layer's keys/values to `cache`.
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        start: usize,
        rope: &RopeTables<B>,
        cache: &mut LayerCache<B>,
    ) -> (Tensor<B, 2>, Tensor<B, 3>) {
        let (attn, q) =
            self.attention
                .forward(self.input_norm.forward(x.clone()), start, rope, cache);
        let x = x + attn;
        let x = x.clone() + self.mlp.forward(self.post_attention_norm.forward(x));
        (x, q)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::tensor::Distribution;

    use super::*;
    use crate::Cpu;

    /// Splitting the heads over threads gives exactly the single-call result, causal or not.
    #[test]
    fn attention_split_over_heads_equals_one_call() {
        let device = Default::default();
        let (h, s, len, d) = (9, 400, 400, 16);
        assert!(h * s * len >= MIN_SPLIT_ATTENTION_SCORES);
        let q = Tensor::<Cpu, 4>::random([1, h, s, d], Distribution::Default, &device);
        let k = Tensor::<Cpu, 4>::random([1, h, len, d], Distribution::Default, &device);
        let v = Tensor::<Cpu, 4>::random([1, h, len, d], Distribution::Default, &device);
        for is_causal in [true, false] {
            let options = AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal,
            };
            let one = burn::tensor::module::attention(
                q.clone(),
                k.clone(),
                v.clone(),
                None,
                None,
                options,
            );
            let split = attention_over_heads(q.clone(), k.clone(), v.clone(), options);
            assert_eq!(split.dims(), [1, h, s, d]);
            let one: Vec<f32> = one.into_data().into_vec().unwrap();
            let split: Vec<f32> = split.into_data().into_vec().unwrap();
            assert_eq!(one, split);
        }
    }

    /// The 2-D rotary layout equals the textbook rotate-half formula.
    #[test]
    fn rope_tables_match_rotate_half() {
        let device = Default::default();
        let rope = RopeConfig {
            theta: 10_000.0,
            llama3: None,
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
