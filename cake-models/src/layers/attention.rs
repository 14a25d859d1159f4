//! Grouped-query self-attention over a [`LayerCache`].
//!
//! # Shapes
//! - input `x`: `[S, hidden]` at absolute positions `start..start + S`
//! - fused projection: `[S, (H + 2 Hkv) d]` = queries | keys | values
//! - queries handed to the compression hooks: `[H, S, d]`, post-RoPE, unscaled
//! - cache: one `[rows, d]` buffer per keys and values, a region per KV head (heads may
//!   hold different counts, see [`LayerCache`])
//! - output: `[S, hidden]`

use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Tensor, TensorData, activation, backend::Backend};
#[cfg(feature = "flex")]
use cake_core::host;
use cake_core::{CacheError, LayerCache};

#[cfg(feature = "flex")]
use super::HostTables;
use super::{Linear, RopeTables};
use crate::model::AttentionRow;
#[cfg(feature = "flex")]
use cake_kernels::{self as kernels, AttentionShape, KvRows};

/// Largest number of attention scores (`H x query block x keys`) materialised at once by
/// the generic path; bounds prefill memory at long contexts (64 Mi floats = 256 MiB).
const MAX_SCORE_ELEMENTS: usize = 1 << 26;
/// Upper bound of a generic-path query block, so that causal prefill skips most future keys.
const MAX_QUERY_BLOCK: usize = 256;
/// Query block of the generic path's fused causal prefill.
const CAUSAL_QUERY_BLOCK: usize = 512;

/// What the caller asked the attention to hand back besides its output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttentionRequest {
    /// The attention probabilities of the queries over the cache, `[H, S, len]`
    /// (decoding: the new token's attention, which scorers rank tokens by).
    pub probabilities: bool,
    /// `Some(n)`: the output of only the last `n` (at least 1) query rows, `[n, hidden]`,
    /// as the last layer of a prefill that keeps only the last logits needs (the
    /// projection and the MLP then skip the other rows). The cache, the queries and the
    /// probabilities still cover every row, and the rows kept have the bits of a full
    /// output's (each row is computed on its own).
    pub last_rows: Option<usize>,
}

impl AttentionRequest {
    /// The first of the `s` query rows whose output is wanted.
    fn first_output_row(&self, s: usize) -> usize {
        self.last_rows.map_or(0, |n| s - n.clamp(1, s))
    }
}

/// What one attention call produced.
#[derive(Debug, Clone)]
pub struct AttentionOutput<B: Backend> {
    /// `[S, hidden]`
    pub output: Tensor<B, 2>,
    /// Post-RoPE queries `[H, S, d]`.
    pub queries: Tensor<B, 3>,
    /// `[H, S, len]` when requested.
    pub probabilities: Option<Tensor<B, 3>>,
}

/// A hook run after a layer's attention, with the layer's cache, the post-RoPE queries
/// `[H, S, d]` and the probabilities `[H, S, len]` when requested: the decoding step's
/// eviction runs here, while the rows it moves were just read by the attention (still in
/// the CPU's caches). The attention's output does not depend on what it does to the cache,
/// so on the CPU path the output projection runs on the other threads meanwhile.
#[rustfmt::skip] // rustfmt splits a `dyn FnMut(..) + Send` over eight ragged lines
pub type AfterAttend<'a, B> = &'a mut (
    dyn FnMut(&mut LayerCache<B>, &Tensor<B, 3>, Option<&Tensor<B, 3>>) -> Result<(), CacheError>
        + Send
);

/// The attention's output before the output projection (`[S - first, H d]`, the rows the
/// request asked for, as a tensor or a host buffer `O`), the post-RoPE queries `[H, S, d]`
/// and the probabilities `[H, S, len]` when requested.
type AttentionParts<B, O = Tensor<B, 2>> = (O, Tensor<B, 3>, Option<Tensor<B, 3>>);

/// The CPU fast path's rotated projection, split: queries `[S, H, d]`, keys and values
/// `[Hkv, S, d]`.
#[cfg(feature = "flex")]
struct HostSplit {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// S.
    rows: usize,
}

/// Grouped-query self-attention whose keys/values live in a [`LayerCache`], one row per
/// KV head (no repeated copies for the G query heads of a group).
#[derive(Debug, Clone)]
pub struct Attention<B: Backend> {
    /// `[(H + 2 Hkv) d, hidden]`: query, key and value projections fused.
    pub qkv: Linear<B>,
    /// `[hidden, H d]`
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
    /// (masked by the cached positions), runs `after` on the cache (see [`AfterAttend`];
    /// `&mut |_, _, _| Ok(())` for none) and returns the output with what `request` asked.
    ///
    /// # Errors
    /// When the cache rejects the new rows (shape mismatch), or what `after` returns.
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        start: usize,
        rope: &RopeTables<B>,
        cache: &mut LayerCache<B>,
        request: AttentionRequest,
        after: AfterAttend<'_, B>,
    ) -> Result<AttentionOutput<B>, CacheError> {
        // [S, (H + 2 Hkv) d]
        let qkv = self.qkv.forward(x);
        #[cfg(feature = "flex")]
        if let Some(host) = host::into_flex(qkv.clone()) {
            drop(qkv);
            return self.forward_host(host, start, rope.host(), cache, request, after);
        }
        self.forward_generic(qkv, start, rope, cache, request, after)
    }

    /// A batched decoding step: `x` `[R, hidden]` holds one new token of each of the R
    /// sequences in `rows` (row `r` of `x` is `rows[r]`'s token). The projections run as
    /// one product over the R rows; each row is then rotated at its own position, appended
    /// to its own cache, attends over that cache alone (the one-query attention of
    /// [`Attention::forward`], host kernel on the CPU backend, generic Burn code elsewhere)
    /// and runs its own hook. Returns the output `[R, hidden]`.
    ///
    /// Each row gets what [`Attention::forward`] of that token alone gives, up to the
    /// rounding of the R-row matrix products against one-row ones (GEMM against GEMV
    /// summation order).
    ///
    /// # Errors
    /// When a cache rejects its row, or what a hook returns (the rows before it have
    /// advanced; the step must not be retried).
    ///
    /// # Panics
    /// When `rows` does not have one row per row of `x`.
    pub fn forward_batch(
        &self,
        x: Tensor<B, 2>,
        rows: &mut [AttentionRow<'_, B>],
    ) -> Result<Tensor<B, 2>, CacheError> {
        let [r, _] = x.dims();
        assert_eq!(r, rows.len(), "one attention row per row of x");
        // [R, (H + 2 Hkv) d]
        let qkv = self.qkv.forward(x);
        #[cfg(feature = "flex")]
        if let Some(host) = host::into_flex(qkv.clone()) {
            drop(qkv);
            let (h, d) = (self.num_heads, self.head_dim);
            // [R, (H + 2 Hkv) d], each row rotated in place at its own position.
            let mut contiguous = host.to_contiguous();
            drop(host);
            // [R, H d]
            let out = self.attend_batch_host(contiguous.storage_mut::<f32>(), rows)?;
            drop(contiguous);
            let out = Tensor::from_data(TensorData::new(out, [r, h * d]), &B::Device::default());
            return Ok(self.o.forward(out));
        }
        self.forward_batch_generic(qkv, rows)
    }

    /// [`Attention::forward_batch`] on the generic Burn path (every backend; the CPU
    /// backend only in tests) from the projection `qkv` `[R, (H + 2 Hkv) d]`: each row
    /// through [`Attention::forward_generic`]'s attention over its own cache, then one
    /// output projection over the R rows. Returns `[R, hidden]`.
    ///
    /// # Errors
    /// As [`Attention::forward_batch`].
    ///
    /// # Panics
    /// When `rows` does not have one row per row of `qkv`.
    pub fn forward_batch_generic(
        &self,
        qkv: Tensor<B, 2>,
        rows: &mut [AttentionRow<'_, B>],
    ) -> Result<Tensor<B, 2>, CacheError> {
        assert_eq!(
            qkv.dims()[0],
            rows.len(),
            "one attention row per row of qkv"
        );
        let mut outs = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter_mut().enumerate() {
            let request = AttentionRequest {
                probabilities: row.probabilities,
                last_rows: None,
            };
            // [1, H d]
            let (out, _, _) = self.attend_generic(
                qkv.clone().narrow(0, i, 1),
                row.position,
                row.rope,
                row.cache,
                request,
                row.after,
            )?;
            outs.push(out);
        }
        // [R, H d] -> [R, hidden]
        Ok(self.o.forward(Tensor::cat(outs, 0)))
    }

    /// The generic Burn path (every backend; the CPU backend only in tests), running
    /// `after` as [`Attention::forward`] does.
    ///
    /// # Errors
    /// As [`Attention::forward`].
    pub fn forward_generic(
        &self,
        qkv: Tensor<B, 2>,
        start: usize,
        rope: &RopeTables<B>,
        cache: &mut LayerCache<B>,
        request: AttentionRequest,
        after: AfterAttend<'_, B>,
    ) -> Result<AttentionOutput<B>, CacheError> {
        let (out, queries, probabilities) =
            self.attend_generic(qkv, start, rope, cache, request, after)?;
        Ok(AttentionOutput {
            output: self.o.forward(out),
            queries,
            probabilities,
        })
    }

    /// [`Attention::forward_generic`] up to the output projection: the attention's output
    /// `[S - first, H d]` (the rows `request` asked for), the post-RoPE queries
    /// `[H, S, d]` and the probabilities `[H, S, len]` when requested, with `after` run.
    fn attend_generic(
        &self,
        qkv: Tensor<B, 2>,
        start: usize,
        rope: &RopeTables<B>,
        cache: &mut LayerCache<B>,
        request: AttentionRequest,
        after: AfterAttend<'_, B>,
    ) -> Result<AttentionParts<B>, CacheError> {
        let [s, _] = qkv.dims();
        let (h, hkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let part = |from: usize, width: usize| qkv.clone().narrow(1, from, width);
        // [S * H, d] -> [H, S, d]
        let q = rope
            .rotate_queries(part(0, h * d), d)
            .reshape([s, h, d])
            .swap_dims(0, 1);
        // [S * Hkv, d] -> [Hkv, S, d]
        let k = rope
            .rotate_keys(part(h * d, hkv * d), d)
            .reshape([s, hkv, d])
            .swap_dims(0, 1);
        let v = part((h + hkv) * d, hkv * d)
            .reshape([s, hkv, d])
            .swap_dims(0, 1);
        cache.append(k, v, start)?;
        // [H, S, d]
        let (out, probabilities) = self.attend(q.clone(), start, cache, request.probabilities)?;
        after(cache, &q, probabilities.as_ref())?;
        let first = request.first_output_row(s);
        // [S - first, H d]
        let out = out
            .swap_dims(0, 1)
            .reshape([s, h * d])
            .narrow(0, first, s - first);
        Ok((out, q, probabilities))
    }

    #[cfg(feature = "flex")]
    /// The CPU fast path: rotary embedding in place on the projection, rows written into
    /// the cache buffers, and [`kernels::attention`] reading them there.
    fn forward_host(
        &self,
        qkv: burn_flex::FlexTensor,
        start: usize,
        tables: &HostTables,
        cache: &mut LayerCache<B>,
        request: AttentionRequest,
        after: AfterAttend<'_, B>,
    ) -> Result<AttentionOutput<B>, CacheError> {
        let (h, d) = (self.num_heads, self.head_dim);
        // The host backend has one device.
        let device = &B::Device::default();
        // [S, width]: rotated in place in the projection's own buffer (copied on write
        // only if something else holds it).
        let mut contiguous = qkv.to_contiguous();
        drop(qkv);
        let split = self.split_host(contiguous.storage_mut::<f32>(), tables);
        drop(contiguous);
        let s = split.rows;
        let (out, queries, probabilities) = self.attend_host(split, start, cache, request)?;
        let first = request.first_output_row(s);
        let output = Tensor::from_data(TensorData::new(out, [s - first, h * d]), device);
        // The output projection (which does not read the cache), then the hook (a decoding
        // step's eviction) on this thread, while the idle worker requests the MLP's weights
        // that the projection's GEMV named (`kernels::gemv`). The two used to run side by
        // side under `rayon::join`, where a rayon thread may take the projection while the
        // pool's worker spins, three threads on two cores: on a 2-core EPYC at 512 tokens
        // and C = 256, CAKE/full decode was 1.006-1.023x (mean 1.016) that way against
        // 1.012-1.025x (mean 1.021) in this order, seven alternated runs each.
        let output = self.o.forward(output);
        after(cache, &queries, probabilities.as_ref())?;
        Ok(AttentionOutput {
            output,
            queries,
            probabilities,
        })
    }

    #[cfg(feature = "flex")]
    /// The CPU fast path's first step on the projection rows `qkv` (`[S, (H + 2 Hkv) d]`,
    /// rotated in place by `tables`): the rotated queries `[S, H, d]` and the keys and
    /// values `[Hkv, S, d]`, copied out.
    fn split_host(&self, qkv: &mut [f32], tables: &HostTables) -> HostSplit {
        let (h, hkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let width = (h + 2 * hkv) * d;
        let s = qkv.len() / width;
        assert_eq!(
            tables.cos.len(),
            s * d / 2,
            "rotary tables for the {s} rows of this pass"
        );
        // The query heads then the key heads, side by side in each row: one pass.
        kernels::rope_in_place(qkv, width, 0, h + hkv, (&tables.cos, &tables.sin));
        // Queries [S, H, d]; keys and values [Hkv, S, d].
        let mut q = Vec::with_capacity(s * h * d);
        let mut k = vec![0.0f32; hkv * s * d];
        let mut v = vec![0.0f32; hkv * s * d];
        for (i, row) in qkv.chunks_exact(width).enumerate() {
            q.extend_from_slice(&row[..h * d]);
            for kv in 0..hkv {
                let at = (kv * s + i) * d;
                k[at..at + d].copy_from_slice(&row[(h + kv) * d..(h + kv + 1) * d]);
                v[at..at + d].copy_from_slice(&row[(h + hkv + kv) * d..(h + hkv + kv + 1) * d]);
            }
        }
        HostSplit { q, k, v, rows: s }
    }

    #[cfg(feature = "flex")]
    /// The CPU fast path after [`Attention::split_host`]: appends the keys/values at
    /// positions `start..start + S` to `cache` and runs [`kernels::attention`] over the
    /// cache buffers. Returns the output rows `request` asked for (`[S - first, H d]`,
    /// host), the queries `[H, S, d]` and the probabilities `[H, S, len]` when requested.
    fn attend_host(
        &self,
        split: HostSplit,
        start: usize,
        cache: &mut LayerCache<B>,
        request: AttentionRequest,
    ) -> Result<AttentionParts<B, Vec<f32>>, CacheError> {
        let (h, d) = (self.num_heads, self.head_dim);
        let s = split.rows;
        let q = self.append_host(split, start, cache)?;
        let view = HostCache::new(cache, self.window);
        let len = cache.len();
        // Rows before `first` are attended only when their probabilities are wanted.
        let first = request.first_output_row(s);
        let attended = if request.probabilities { 0 } else { first };
        let shape = self.host_shape(s - attended);
        let visible = |kv: usize, i: usize| view.ranges.range(kv, start + attended + i);
        let mut out = vec![0.0f32; (s - attended) * h * d];
        let mut probs = request.probabilities.then(|| vec![0.0f32; h * s * len]);
        kernels::attention(
            &q[attended * h * d..],
            view.keys(),
            shape,
            &visible,
            Some((view.values(), &mut out)),
            probs.as_deref_mut(),
        );
        out.drain(..(first - attended) * h * d);
        drop(view);
        Ok((
            out,
            self.host_queries(q, s),
            self.host_probabilities(probs, s, len),
        ))
    }

    #[cfg(feature = "flex")]
    /// [`Attention::forward_batch`] on the CPU fast path, from the projection rows `qkv`
    /// (`[R, (H + 2 Hkv) d]`, one row per sequence): each row rotated at its own position
    /// and appended to its own cache, every row's attention over its own cache in one job
    /// of the decoding pool ([`kernels::decode_attention_batch`]), then each row's hook.
    /// Returns the attention outputs `[R, H d]`.
    fn attend_batch_host(
        &self,
        qkv: &mut [f32],
        rows: &mut [AttentionRow<'_, B>],
    ) -> Result<Vec<f32>, CacheError> {
        let (h, hkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let mut queries = Vec::with_capacity(rows.len());
        for (row, qkv) in rows.iter_mut().zip(qkv.chunks_exact_mut((h + 2 * hkv) * d)) {
            let split = self.split_host(qkv, row.rope.host());
            queries.push(self.append_host(split, row.position, row.cache)?);
        }
        // [R, H d]
        let mut out = vec![0.0f32; rows.len() * h * d];
        let mut probs: Vec<Option<Vec<f32>>> = rows
            .iter()
            .map(|row| row.probabilities.then(|| vec![0.0f32; h * row.cache.len()]))
            .collect();
        {
            let views: Vec<HostCache<'_>> = rows
                .iter()
                .map(|row| HostCache::new(row.cache, self.window))
                .collect();
            let visible: Vec<_> = rows
                .iter()
                .zip(&views)
                .map(|(row, view)| {
                    let position = row.position;
                    move |kv: usize, _: usize| view.ranges.range(kv, position)
                })
                .collect();
            let mut batch: Vec<kernels::DecodeQuery<'_>> = queries
                .iter()
                .zip(&views)
                .zip(&visible)
                .zip(out.chunks_exact_mut(h * d).zip(probs.iter_mut()))
                .map(
                    |(((q, view), visible), (out, probs))| kernels::DecodeQuery {
                        q,
                        keys: view.keys(),
                        shape: self.host_shape(1),
                        visible,
                        output: Some((view.values(), out)),
                        probs: probs.as_deref_mut(),
                    },
                )
                .collect();
            kernels::decode_attention_batch(&mut batch);
        }
        for ((row, q), probs) in rows.iter_mut().zip(queries).zip(probs) {
            let len = row.cache.len();
            let probabilities = self.host_probabilities(probs, 1, len);
            (row.after)(row.cache, &self.host_queries(q, 1), probabilities.as_ref())?;
        }
        Ok(out)
    }

    #[cfg(feature = "flex")]
    /// Appends the keys/values of `split` at positions `start..start + S` to `cache`;
    /// returns the queries `[S, H, d]`.
    fn append_host(
        &self,
        split: HostSplit,
        start: usize,
        cache: &mut LayerCache<B>,
    ) -> Result<Vec<f32>, CacheError> {
        let (hkv, d) = (self.num_kv_heads, self.head_dim);
        let HostSplit { q, k, v, rows: s } = split;
        // The host backend has one device.
        let device = &B::Device::default();
        let tensor3 = |data: Vec<f32>| -> Tensor<B, 3> {
            Tensor::from_data(TensorData::new(data, [hkv, s, d]), device)
        };
        cache.append(tensor3(k), tensor3(v), start)?;
        Ok(q)
    }

    #[cfg(feature = "flex")]
    /// The shape of `queries` query rows of this attention.
    fn host_shape(&self, queries: usize) -> AttentionShape {
        AttentionShape {
            queries,
            heads: self.num_heads,
            kv_heads: self.num_kv_heads,
            dim: self.head_dim,
        }
    }

    #[cfg(feature = "flex")]
    /// Host queries `[S, H, d]` as the tensor `[H, S, d]` the hooks take.
    fn host_queries(&self, q: Vec<f32>, s: usize) -> Tensor<B, 3> {
        let shape = [s, self.num_heads, self.head_dim];
        Tensor::<B, 3>::from_data(TensorData::new(q, shape), &B::Device::default()).swap_dims(0, 1)
    }

    #[cfg(feature = "flex")]
    /// Host probabilities `[H, S, len]` as a tensor.
    fn host_probabilities(
        &self,
        probs: Option<Vec<f32>>,
        s: usize,
        len: usize,
    ) -> Option<Tensor<B, 3>> {
        let shape = [self.num_heads, s, len];
        probs.map(|p| Tensor::from_data(TensorData::new(p, shape), &B::Device::default()))
    }

    /// Exact softmax attention of queries `q`: `[H, S, d]` at positions `start..start+S`
    /// over the cached keys/values (`[Hkv, L, d]`), causal by cached position and limited
    /// to the sliding window if any, in the generic Burn path. Processes blocks of queries
    /// so that at most `MAX_SCORE_ELEMENTS` (2^26) scores exist at once, and gives each block
    /// only the key range it can see. Returns `[H, S, d]` and, with `probabilities`, the
    /// attention `[H, S, L]`.
    ///
    /// # Errors
    /// When the cache is empty, when the queries are not `[H, S, d]` with this attention's
    /// H and d and S > 0, or when the cache holds another number of KV heads.
    pub fn attend(
        &self,
        q: Tensor<B, 3>,
        start: usize,
        cache: &LayerCache<B>,
        probabilities: bool,
    ) -> Result<(Tensor<B, 3>, Option<Tensor<B, 3>>), CacheError> {
        let Some((buffer, _)) = cache.buffers().filter(|_| !cache.is_empty()) else {
            return Err(CacheError::Empty);
        };
        let [h, s, d] = q.dims();
        let (hkv, width) = (cache.num_kv_heads(), buffer.dims()[1]);
        if h != self.num_heads
            || d != self.head_dim
            || s == 0
            || hkv != self.num_kv_heads
            || width != self.head_dim
        {
            return Err(CacheError::Shape(format!(
                "queries [{h}, {s}, {d}] over a cache of {hkv} KV heads of width {width}: this attention takes [{}, S > 0, {}] over {} heads of width {}",
                self.num_heads, self.head_dim, self.num_kv_heads, self.head_dim
            )));
        }
        if !cache.is_ragged() {
            if !probabilities && let Some(out) = self.attend_fused(q.clone(), start, cache) {
                return Ok((out, None));
            }
            let (Some(keys), Some(values)) = (cache.keys(), cache.values()) else {
                return Err(CacheError::Empty);
            };
            return Ok(self.attend_rows(q, start, keys, values, cache.positions(), probabilities));
        }
        // Heads with their own counts (per-head budgets): each KV head with its G query
        // heads, probabilities padded with zeros to the longest head.
        let g = h / hkv;
        let len = cache.len();
        let mut outputs = Vec::with_capacity(hkv);
        let mut all_probs = Vec::with_capacity(hkv);
        for kv in 0..hkv {
            let (Some(keys), Some(values)) = (cache.head_keys(kv), cache.head_values(kv)) else {
                return Err(CacheError::Empty);
            };
            let n = keys.dims()[0];
            let positions = &cache.positions()[kv..=kv];
            let (out, probs) = self.attend_rows(
                q.clone().narrow(0, kv * g, g),
                start,
                keys.unsqueeze_dim(0),
                values.unsqueeze_dim(0),
                positions,
                probabilities,
            );
            outputs.push(out);
            if let Some(p) = probs {
                // [G, S, n] -> [G, S, len]
                all_probs.push(if n < len {
                    let pad = Tensor::zeros([g, s, len - n], &p.device());
                    Tensor::cat(vec![p, pad], 2)
                } else {
                    p
                });
            }
        }
        let probs = probabilities.then(|| Tensor::cat(all_probs, 0));
        Ok((Tensor::cat(outputs, 0), probs))
    }

    /// [`Attention::attend`]'s blocked softmax over `keys`/`values` (`[Hk, L, d]`, with
    /// `positions[kv]` the cached positions of KV head `kv`) for queries `q`: `[G Hk, S, d]`.
    fn attend_rows(
        &self,
        q: Tensor<B, 3>,
        start: usize,
        keys: Tensor<B, 3>,
        values: Tensor<B, 3>,
        positions: &[Vec<usize>],
        probabilities: bool,
    ) -> (Tensor<B, 3>, Option<Tensor<B, 3>>) {
        let [h, s, d] = q.dims();
        let [hkv, len, _] = keys.dims();
        let g = h / hkv;
        let device = q.device();
        let scale = 1.0 / (d as f64).sqrt();
        // [Hkv, G, S, d]: query heads h = kv * G + g share KV head kv.
        let q = (q * scale).reshape([hkv, g, s, d]);
        let block = (MAX_SCORE_ELEMENTS / (h * len).max(1)).clamp(1, MAX_QUERY_BLOCK);
        let mut outputs = Vec::with_capacity(s.div_ceil(block));
        let mut all_probs = Vec::new();
        for q0 in (0..s).step_by(block) {
            let c = block.min(s - q0);
            let (p_first, p_last) = (start + q0, start + q0 + c - 1);
            // Visible key index range: positions are ascending per head.
            let lo = match (self.window, probabilities) {
                (Some(w), false) if p_first >= w => positions
                    .iter()
                    .map(|p| p.partition_point(|&j| j <= p_first - w))
                    .min()
                    .unwrap_or(0),
                _ => 0,
            };
            let hi = if probabilities {
                len
            } else {
                positions
                    .iter()
                    .map(|p| p.partition_point(|&j| j <= p_last))
                    .max()
                    .unwrap_or(0)
            };
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
            if probabilities {
                all_probs.push(probs.clone().reshape([h, c, n]));
            }
            // [Hkv, G, c, d]
            outputs.push(probs.matmul(vc).reshape([hkv, g, c, d]));
        }
        let probs = probabilities.then(|| Tensor::cat(all_probs, 1));
        (Tensor::cat(outputs, 2).reshape([h, s, d]), probs)
    }

    /// The backend's fused attention for multi-token queries in the two common shapes: a
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
        // Single-query decoding is faster through the plain matmul path.
        if s == 1 || !(all_visible || fresh_causal) {
            return None;
        }
        let (keys, values) = (cache.keys()?, cache.values()?);
        // [1, H, len, d]: KV head kv serves query heads kv*G..(kv+1)*G.
        let repeat = |t: Tensor<B, 3>| {
            t.unsqueeze_dim::<4>(1)
                .expand([hkv, h / hkv, len, d])
                .reshape([1, h, len, d])
        };
        let options = AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: !all_visible,
        };
        let (q, k, v) = (q.reshape([1, h, s, d]), repeat(keys), repeat(values));
        let attention = |q, k, v| burn::tensor::module::attention(q, k, v, None, None, options);
        if all_visible || s <= CAUSAL_QUERY_BLOCK {
            return Some(attention(q, k, v).reshape([h, s, d]));
        }
        // Causal prefill in query blocks: block q0..q0+c sees keys 0..q0+c (causal offset
        // q0), so the kernel skips the masked upper triangle (about half the work).
        let blocks: Vec<Tensor<B, 4>> = (0..s)
            .step_by(CAUSAL_QUERY_BLOCK)
            .map(|q0| {
                let c = CAUSAL_QUERY_BLOCK.min(s - q0);
                attention(
                    q.clone().narrow(2, q0, c),
                    k.clone().narrow(2, 0, q0 + c),
                    v.clone().narrow(2, 0, q0 + c),
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

#[cfg(feature = "flex")]
/// A cache's host buffers and visible ranges, borrowed for one attention call.
struct HostCache<'a> {
    keys: burn_flex::FlexTensor,
    values: burn_flex::FlexTensor,
    starts: Vec<usize>,
    runs: &'a [Vec<kernels::RowRun>],
    len: usize,
    dim: usize,
    ranges: VisibleRanges<'a>,
}

#[cfg(feature = "flex")]
impl<'a> HostCache<'a> {
    /// The buffers of `cache`, which holds rows (the CPU backend's host buffers).
    fn new<B: Backend>(cache: &'a LayerCache<B>, window: Option<usize>) -> Self {
        let Some((kb, vb)) = cache.buffers() else {
            unreachable!("the cache holds the rows just appended")
        };
        let (Some(keys), Some(values)) = (host::flex(kb), host::flex(vb)) else {
            unreachable!("a host backend's cache lives in host buffers")
        };
        Self {
            keys,
            values,
            starts: cache.spans().iter().map(|span| span.start).collect(),
            runs: cache.runs(),
            len: cache.len(),
            dim: kb.dims()[1],
            ranges: VisibleRanges::new(cache.positions(), window),
        }
    }

    fn rows<'b>(&'b self, t: &'b burn_flex::FlexTensor) -> KvRows<'b> {
        let Some(data) = host::contiguous(t) else {
            unreachable!("cache buffers are contiguous")
        };
        KvRows {
            data,
            starts: &self.starts,
            runs: self.runs,
            len: self.len,
            dim: self.dim,
        }
    }

    /// The keys as the kernels read them.
    fn keys(&self) -> KvRows<'_> {
        self.rows(&self.keys)
    }

    /// The values as the kernels read them.
    fn values(&self) -> KvRows<'_> {
        self.rows(&self.values)
    }
}

#[cfg(feature = "flex")]
/// The row range each query sees in each KV head, from the heads' ascending cached
/// positions: causal (`j <= p`) and, with a sliding window `w`, `j > p - w`. Heads whose
/// positions are consecutive answer by arithmetic, the others by binary search.
struct VisibleRanges<'a> {
    positions: &'a [Vec<usize>],
    /// Per head: the first position when the head's positions are consecutive.
    consecutive_from: Vec<Option<usize>>,
    window: Option<usize>,
}

#[cfg(feature = "flex")]
impl<'a> VisibleRanges<'a> {
    fn new(positions: &'a [Vec<usize>], window: Option<usize>) -> Self {
        let consecutive_from = positions
            .iter()
            .map(|p| match (p.first(), p.last()) {
                (Some(&a), Some(&b)) if b - a + 1 == p.len() => Some(a),
                _ => None,
            })
            .collect();
        Self {
            positions,
            consecutive_from,
            window,
        }
    }

    /// Rows `lo..hi` of KV head `kv` visible to a query at absolute position `p`.
    fn range(&self, kv: usize, p: usize) -> (usize, usize) {
        let pos = &self.positions[kv];
        // Number of cached positions `<= x`.
        let count = |x: usize| match self.consecutive_from[kv] {
            Some(first) => (x + 1).saturating_sub(first).min(pos.len()),
            None => pos.partition_point(|&j| j <= x),
        };
        let hi = count(p);
        let lo = match self.window {
            Some(w) if p >= w => count(p - w),
            _ => 0,
        };
        (lo.min(hi), hi)
    }
}
