//! Token scorers: which prompt tokens a layer keeps (higher score = kept).
//!
//! A [`Scorer`] rates every cached token of one layer per KV head; eviction keeps the
//! best-rated tokens outside the recent window (the window is always kept). Scores are
//! stored on the [`crate::LayerCache`] so that later cascade stages re-rank survivors.
//!
//! Decoding (section 6): when a layer must drop a token, the non-window tokens are
//! re-scored from the new query's attention over the cache. Choices per scorer:
//! - `cake`, `snapkv`: the new query's attention, group-averaged, pooled over the
//!   non-window tokens (a single query has no variance, so CAKE's indicator reduces to
//!   its mean term);
//! - `tova`: the new query's attention averaged over all heads of the layer (no pooling);
//! - `h2o`: accumulates: stored score + the new query's attention (group-averaged), every
//!   step, as Heavy-Hitter Oracle sums attention over all queries seen;
//! - `streaming`: position based, the sinks first then the most recent.

use std::fmt::Debug;

use burn::tensor::{Bool, Tensor, TensorData, backend::Backend};

use crate::stats::{attention, cake_indicator, group_mean, pool_prefix};

/// What a scorer sees after a layer's prefill.
#[derive(Debug)]
pub struct PrefillInput<'a, B: Backend> {
    /// Post-RoPE prompt queries `[H, S, d]`.
    pub queries: &'a Tensor<B, 3>,
    /// The layer's prompt keys `[Hkv, S, d]`.
    pub keys: &'a Tensor<B, 3>,
    /// Window attention `[H, w, S]`, present when [`Scorer::needs_window_attention`].
    pub window_attention: Option<&'a Tensor<B, 3>>,
    /// The window w actually used (at most S).
    pub window: usize,
    /// H2O's scores when the caller already has them ([`crate::PrefillLayer`]'s).
    pub attention_sums: Option<&'a Tensor<B, 2>>,
}

impl<B: Backend> PrefillInput<'_, B> {
    /// KV heads of the layer.
    fn kv_heads(&self) -> usize {
        self.keys.dims()[0]
    }

    /// Scores that keep the most recent prompt tokens (after `sinks` first ones), `[Hkv, S]`:
    /// what a scorer falls back to without window attention.
    fn recency(&self, sinks: usize) -> Tensor<B, 2> {
        let [kv, len, _] = self.keys.dims();
        recency(&vec![(0..len).collect(); kv], sinks, &self.keys.device())
    }
}

/// What a scorer sees at a decoding step of one layer.
#[derive(Debug)]
pub struct DecodeInput<'a, B: Backend> {
    /// The new query's attention over the cache `[H, 1, n]` (the new token included),
    /// present when [`Scorer::needs_window_attention`].
    pub attention: Option<&'a Tensor<B, 3>>,
    /// The scores stored on the cache `[Hkv, n]` (rows appended since scoring are 0);
    /// after a decoding step's eviction, kept only for a scorer that
    /// [`Scorer::accumulates`].
    pub stored: Option<Tensor<B, 2>>,
    /// Absolute positions of the cached tokens per KV head `[Hkv][n]`.
    pub positions: &'a [Vec<usize>],
    /// Recent window w: the last w cached tokens are never candidates.
    pub window: usize,
    /// Device of the cache.
    pub device: &'a B::Device,
}

/// Rates a layer's tokens; the highest-rated ones are kept.
pub trait Scorer<B: Backend>: Debug + Send + Sync {
    /// Short name, as [`ScorerKind`] parses it (`FromStr`).
    fn name(&self) -> &'static str;

    /// True when the scorer reads attention (all but streaming).
    fn needs_window_attention(&self) -> bool {
        true
    }

    /// True when the scores must be updated at every decoding step, not only when a
    /// token is dropped (H2O's running sums). Only such scorers' decoding scores are
    /// stored on the cache ([`DecodeInput::stored`] at the next step): the others rank
    /// each step by fresh scores, which the cache then drops.
    fn accumulates(&self) -> bool {
        false
    }

    /// Scores of all `S` prompt tokens, `[Hkv, S]`; only the first `S - w` are compared.
    fn prefill_scores(&self, input: &PrefillInput<'_, B>) -> Tensor<B, 2>;

    /// Scores of all `n` cached tokens at a decoding step, `[Hkv, n]`; only the first
    /// `n - w` are compared.
    fn decode_scores(&self, input: DecodeInput<'_, B>) -> Tensor<B, 2>;
}

/// Group-averaged attention of one new query, pooled over the non-window tokens:
/// `[H, 1, n] -> [Hkv, n]`.
fn decode_attention_scores<B: Backend>(
    input: &DecodeInput<'_, B>,
    kernel: usize,
) -> Option<Tensor<B, 2>> {
    let attn = input.attention?;
    let [heads, _, n] = attn.dims();
    let kv = input.positions.len().max(1);
    let candidates = n.saturating_sub(input.window);
    let attn = attn.clone().reshape([heads, n]);
    #[cfg(feature = "flex")]
    if kv < heads
        && let Some(scores) = crate::host::pooled_group_mean(&attn, kv, candidates, kernel)
    {
        return Some(scores);
    }
    // [H, n] -> [Hkv, n]
    let scores = group_mean(attn, kv);
    Some(pool_prefix(scores, candidates, kernel))
}

/// Fallback when a scorer got no attention: recency `[Hkv, n]` (position as score).
fn recency<B: Backend>(positions: &[Vec<usize>], sinks: usize, device: &B::Device) -> Tensor<B, 2> {
    let heads = positions.len();
    let n = positions.first().map_or(0, Vec::len);
    let data: Vec<f32> = positions
        .iter()
        .flatten()
        .map(|&p| if p < sinks { SINK_SCORE } else { p as f32 })
        .collect();
    Tensor::from_data(TensorData::new(data, [heads, n]), device)
}

/// Score of an attention sink in [`Streaming`]: above every position.
const SINK_SCORE: f32 = 1e30;

/// Lowest score of a pinned sink (see [`pin_sinks`]): above every score a scorer gives
/// (attention probabilities and their sums, positions as recency scores, and
/// [`Streaming`]'s own sinks at `1e30`).
const PINNED_SCORE: f32 = 2e30;

/// Step between the scores of consecutive pinned sinks: far above the rounding unit of
/// f32 near [`PINNED_SCORE`] (about `2e23`), so the scores stay strictly ordered.
const PINNED_STEP: f32 = 1e25;

/// The sink ablation (`PolicyConfig::sink`, section 8 of `docs/algorithm.md`): `scores`
/// (`[Hkv, n]`, as a scorer gives them, column `i` of head `h` scoring the token at
/// `positions[h][i]`) with every token at a position below `sink` scored above anything a
/// scorer gives, earlier positions higher. Every selection ranks by the scores (the
/// prefill's top-k, the cascade's re-ranking by stored scores, AdaKV's pooled ranking and
/// the decoding step's lowest score), so the first `sink` prompt tokens take the first
/// places of each head's budget: they are kept while the budget allows, earliest first,
/// and the budget still bounds what the head holds. `sink = 0` returns `scores` untouched
/// (the paper's rule, bit for bit).
///
/// Works on the scores' device: only the positions (host data) are read, never the
/// scores. Positions are ascending per head (see [`crate::LayerCache::positions`]), so
/// the sinks are a prefix of each row; only that prefix is rewritten. Rows may be padded
/// past their head's positions (ragged heads); the padding is left alone.
pub fn pin_sinks<B: Backend>(
    scores: Tensor<B, 2>,
    positions: &[Vec<usize>],
    sink: usize,
) -> Tensor<B, 2> {
    if sink == 0 {
        return scores;
    }
    let [heads, width] = scores.dims();
    if positions.len() != heads {
        return scores;
    }
    let counts: Vec<usize> = positions
        .iter()
        .map(|p| p.partition_point(|&x| x < sink).min(width))
        .collect();
    let prefix = counts.iter().copied().max().unwrap_or(0);
    if prefix == 0 {
        return scores;
    }
    let mut mask = Vec::with_capacity(heads * prefix);
    let mut values = Vec::with_capacity(heads * prefix);
    for (row, &count) in positions.iter().zip(&counts) {
        for &p in &row[..count] {
            mask.push(true);
            values.push(PINNED_SCORE + (sink - p).min(1 << 20) as f32 * PINNED_STEP);
        }
        mask.resize(mask.len() + prefix - count, false);
        values.resize(values.len() + prefix - count, 0.0);
    }
    let device = scores.device();
    let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, [heads, prefix]), &device);
    let values = Tensor::<B, 2>::from_data(TensorData::new(values, [heads, prefix]), &device);
    let pinned = scores.clone().narrow(1, 0, prefix).mask_where(mask, values);
    scores.slice_assign([0..heads, 0..prefix], pinned)
}

/// CAKE's indicator: `mean + gamma * var` of the window attention, pooled, group-averaged.
#[derive(Debug, Clone, Copy)]
pub struct Cake {
    /// Weight of the variance term (200).
    pub gamma: f64,
    /// Average-pooling width (5).
    pub pool_kernel: usize,
}

impl<B: Backend> Scorer<B> for Cake {
    fn name(&self) -> &'static str {
        "cake"
    }

    fn prefill_scores(&self, input: &PrefillInput<'_, B>) -> Tensor<B, 2> {
        match input.window_attention {
            Some(attn) => {
                cake_indicator(attn.clone(), self.gamma, self.pool_kernel, input.kv_heads())
            }
            None => input.recency(0),
        }
    }

    fn decode_scores(&self, input: DecodeInput<'_, B>) -> Tensor<B, 2> {
        decode_attention_scores(&input, self.pool_kernel)
            .unwrap_or_else(|| recency(input.positions, 0, input.device))
    }
}

/// SnapKV: window attention summed over the `w` queries, pooled, per KV head.
#[derive(Debug, Clone, Copy)]
pub struct SnapKv {
    /// Average-pooling width (5, as CAKE, so that the two compare side by side).
    pub pool_kernel: usize,
}

impl<B: Backend> Scorer<B> for SnapKv {
    fn name(&self) -> &'static str {
        "snapkv"
    }

    fn prefill_scores(&self, input: &PrefillInput<'_, B>) -> Tensor<B, 2> {
        let kv = input.kv_heads();
        let Some(attn) = input.window_attention else {
            return input.recency(0);
        };
        let [heads, w, len] = attn.dims();
        // [H, S]
        let summed = attn.clone().sum_dim(1).reshape([heads, len]);
        let pooled = pool_prefix(summed, len.saturating_sub(w), self.pool_kernel);
        group_mean(pooled, kv) // [Hkv, S]
    }

    fn decode_scores(&self, input: DecodeInput<'_, B>) -> Tensor<B, 2> {
        decode_attention_scores(&input, self.pool_kernel)
            .unwrap_or_else(|| recency(input.positions, 0, input.device))
    }
}

/// TOVA: the last query's attention, averaged over all heads of the layer, the same
/// score for every KV head.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tova;

impl<B: Backend> Scorer<B> for Tova {
    fn name(&self) -> &'static str {
        "tova"
    }

    fn prefill_scores(&self, input: &PrefillInput<'_, B>) -> Tensor<B, 2> {
        let kv = input.kv_heads();
        let Some(attn) = input.window_attention else {
            return input.recency(0);
        };
        let [_, w, len] = attn.dims();
        // [H, 1, S] -> [1, 1, S] -> [Hkv, S]
        attn.clone()
            .narrow(1, w - 1, 1)
            .mean_dim(0)
            .reshape([1, len])
            .expand([kv, len])
    }

    fn decode_scores(&self, input: DecodeInput<'_, B>) -> Tensor<B, 2> {
        let kv = input.positions.len();
        match input.attention {
            Some(attn) => {
                let n = attn.dims()[2];
                attn.clone().mean_dim(0).reshape([1, n]).expand([kv, n])
            }
            None => recency(input.positions, 0, input.device),
        }
    }
}

/// H2O (Heavy-Hitter Oracle): attention column sums over all prompt queries (causal),
/// group-averaged, unpooled. Computed in query chunks of at most `chunk_elements`
/// attention entries so that memory stays bounded.
#[derive(Debug, Clone, Copy)]
pub struct H2o {
    /// Largest attention chunk `[H, rows, keys]` materialised at once, in elements.
    pub chunk_elements: usize,
}

impl Default for H2o {
    fn default() -> Self {
        Self {
            chunk_elements: 1 << 24,
        }
    }
}

impl H2o {
    /// Column sums of the causal attention of all `S` queries, `[H, S]`.
    pub fn column_sums<B: Backend>(
        &self,
        queries: &Tensor<B, 3>,
        keys: &Tensor<B, 3>,
    ) -> Tensor<B, 2> {
        let [heads, s_q, _] = queries.dims();
        let [_, len, _] = keys.dims();
        let rows = (self.chunk_elements / (heads * len).max(1)).clamp(1, s_q.max(1));
        let offset = len - s_q.min(len); // queries sit at the last s_q key positions
        let mut acc = Tensor::<B, 2>::zeros([heads, len], &keys.device());
        let mut start = 0;
        while start < s_q {
            let n = rows.min(s_q - start);
            let visible = offset + start + n; // keys 0..visible can be seen by this chunk
            let q = queries.clone().narrow(1, start, n); // [H, n, d]
            let k = keys.clone().narrow(1, 0, visible); // [Hkv, visible, d]
            let attn = attention(q, k, Some(offset + start)); // [H, n, visible]
            let sums = attn.sum_dim(1).reshape([heads, visible]); // [H, visible]
            let sums = if visible < len {
                Tensor::cat(
                    vec![sums, Tensor::zeros([heads, len - visible], &keys.device())],
                    1,
                )
            } else {
                sums
            };
            acc = acc + sums;
            start += n;
        }
        acc
    }
}

impl<B: Backend> Scorer<B> for H2o {
    fn name(&self) -> &'static str {
        "h2o"
    }

    fn accumulates(&self) -> bool {
        true
    }

    /// The given [`PrefillInput::attention_sums`] when present (a sweep's, computed once
    /// with the default chunking, which gives the same bits), else computed here.
    fn prefill_scores(&self, input: &PrefillInput<'_, B>) -> Tensor<B, 2> {
        if let Some(sums) = input.attention_sums {
            return sums.clone();
        }
        let kv = input.keys.dims()[0];
        group_mean(self.column_sums(input.queries, input.keys), kv)
    }

    fn decode_scores(&self, input: DecodeInput<'_, B>) -> Tensor<B, 2> {
        let Some(fresh) = decode_attention_scores(&input, 1) else {
            return recency(input.positions, 0, input.device);
        };
        match input.stored {
            Some(stored) => stored + fresh,
            None => fresh,
        }
    }
}

/// StreamingLLM: the first `sinks` tokens, then the most recent ones.
#[derive(Debug, Clone, Copy)]
pub struct Streaming {
    /// Attention sinks always kept (4).
    pub sinks: usize,
}

impl Default for Streaming {
    fn default() -> Self {
        Self { sinks: 4 }
    }
}

impl<B: Backend> Scorer<B> for Streaming {
    fn name(&self) -> &'static str {
        "streaming"
    }

    fn needs_window_attention(&self) -> bool {
        false
    }

    fn prefill_scores(&self, input: &PrefillInput<'_, B>) -> Tensor<B, 2> {
        input.recency(self.sinks)
    }

    fn decode_scores(&self, input: DecodeInput<'_, B>) -> Tensor<B, 2> {
        recency(input.positions, self.sinks, input.device)
    }
}

crate::names::named_enum! {
    /// The scorers by name (flags, settings files, reports).
    pub enum ScorerKind("scorer") {
        /// [`Streaming`].
        Streaming = "streaming",
        /// [`H2o`].
        H2o = "h2o",
        /// [`Tova`].
        Tova = "tova",
        /// [`SnapKv`].
        SnapKv = "snapkv",
        /// [`Cake`].
        Cake = "cake",
    }
}
