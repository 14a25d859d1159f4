//! The decoder shared by Llama, Mistral and Qwen2: embedding, decoder layers, final norm and
//! output head, with explicit absolute positions and one [`LayerCache`] per layer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::{Tensor, TensorData, backend::Backend};
use cake_core::{CacheError, DecodeStep, KvCompressor, LayerCache, PrefillLayer};
use cake_kernels::PackedMatrix;

use crate::config::DecoderConfig;
use crate::layers::{
    AfterAttend, Attention, AttentionRequest, DecoderLayer, Linear, LinearWeight, Mlp, RmsNorm,
    RopeTables, Rotary,
};
use crate::weights::layout::StackedLinear;
use crate::weights::{
    HostTensor, TensorSpec, WeightError, WeightFormat, WeightLayout, WeightSource,
};

/// A call the model cannot serve (bad tokens, positions or caches).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    /// A cache operation failed (a compressor's bug, or caches of another model).
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Prefill of zero tokens.
    #[error("the prompt is empty: give at least one token")]
    EmptyPrompt,
    /// A token id outside the vocabulary.
    #[error("token id {token} is outside the vocabulary (size {vocab_size})")]
    TokenOutOfRange {
        /// The id.
        token: u32,
        /// Vocabulary size.
        vocab_size: usize,
    },
    /// The caches slice does not have one cache per layer.
    #[error("expected {expected} layer caches (one per decoder layer), got {got}")]
    CacheCount {
        /// Number of layers.
        expected: usize,
        /// Number of caches given.
        got: usize,
    },
    /// Prefill into caches that already hold tokens.
    #[error("prefill needs empty caches (use Model::new_caches)")]
    CachesNotEmpty,
    /// Decoding at a position not after every cached token.
    #[error("decode position {position} is not after the last cached position {last}")]
    PositionNotAfterCache {
        /// Requested position.
        position: usize,
        /// Largest cached position.
        last: usize,
    },
    /// A batched decoding step of no sequences.
    #[error("the batch is empty: give at least one sequence")]
    EmptyBatch,
}

/// Which prefill logits to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefillLogits {
    /// Only the last prompt position: `[1, vocab]`.
    Last,
    /// Every prompt position: `[S, vocab]`.
    All,
}

/// What a prefill leaves for decoding: the logits and the prefill's measurements. `L` is
/// how the logits are held: [`Model::prefill`] returns the `[1, vocab]` or `[S, vocab]`
/// tensor (see [`PrefillLogits`]); a [`crate::generate::Generation`] keeps the next-token
/// logits `[vocab]` on the host, which policy sweeps copy to decode several policies from
/// one prefill.
#[derive(Debug, Clone, PartialEq)]
pub struct Prefilled<L> {
    /// Prompt length S (the first generated token sits at position S).
    pub prompt_len: usize,
    /// The logits.
    pub logits: L,
    /// Prefill wall time (in a generation, including reading the logits back).
    pub prefill_time: Duration,
    /// Largest total K/V bytes held by all caches at any point of the prefill (measured
    /// after each layer's append, before the compressor runs).
    pub kv_bytes_peak_prefill: usize,
}

impl<L> Prefilled<L> {
    /// The same prefill with its logits converted by `f` (e.g. read back to the host); the
    /// wall time then includes `f`'s.
    pub fn map_logits<M>(self, f: impl FnOnce(L) -> M) -> Prefilled<M> {
        let start = Instant::now();
        let logits = f(self.logits);
        Prefilled {
            prompt_len: self.prompt_len,
            logits,
            prefill_time: self.prefill_time + start.elapsed(),
            kv_bytes_peak_prefill: self.kv_bytes_peak_prefill,
        }
    }
}

/// One sequence of a batched decoding step ([`Model::forward_decode_batch`]): its new
/// token, the token's absolute position, and the sequence's own caches and compressor
/// (any policy, cache size or head-budget mode; caches of any length, ragged included).
pub struct DecodeRow<'a, B: Backend> {
    /// The token fed at `position`.
    pub token: u32,
    /// Absolute position, after every position the caches hold.
    pub position: usize,
    /// One cache per decoder layer.
    pub caches: &'a mut [LayerCache<B>],
    /// The sequence's compressor: its decoding hooks run on its own caches.
    pub compressor: &'a mut dyn KvCompressor<B>,
}

/// One sequence of a batched decoding step at one layer
/// ([`crate::layers::Attention::forward_batch`],
/// [`crate::layers::DecoderLayer::forward_batch`]): its one new token's absolute position
/// and rotary tables, its own cache of the layer, whether its hook wants the attention
/// probabilities, and the hook itself (its compressor's decoding step).
pub struct AttentionRow<'r, B: Backend> {
    /// Absolute position of the row's token (after every position `cache` holds).
    pub position: usize,
    /// Rotary tables of that one position (`Rotary::tables(position, 1, ..)`).
    pub rope: &'r RopeTables<B>,
    /// The sequence's cache of this layer.
    pub cache: &'r mut LayerCache<B>,
    /// Hand `after` the attention probabilities `[H, 1, len]`.
    pub probabilities: bool,
    /// Run on the sequence's cache once its token attended (see [`AfterAttend`]).
    pub after: AfterAttend<'r, B>,
}

/// A decoder-only transformer (Llama / Mistral / Qwen2 family) on backend `B`.
#[derive(Debug, Clone)]
pub struct Model<B: Backend> {
    config: DecoderConfig,
    /// `[vocab, hidden]`
    embed: LinearWeight<B>,
    layers: Vec<DecoderLayer<B>>,
    norm: RmsNorm<B>,
    /// `[vocab, hidden]` (the embedding itself when tied).
    lm_head: Linear<B>,
    rotary: Rotary,
    device: B::Device,
}

impl<B: Backend> Model<B> {
    /// Builds the model from Hugging Face-named weights (`model.embed_tokens.weight`,
    /// `model.layers.{i}.self_attn.q_proj.weight`, ...: the [`WeightLayout`] of `config`),
    /// checking every shape. A tied output head is used when the config says so or `lm_head.weight`
    /// is absent and the config does not contradict it.
    pub fn from_weights(
        config: &DecoderConfig,
        source: &mut dyn WeightSource,
        device: &B::Device,
    ) -> Result<Self, WeightError> {
        Self::from_weights_as(config, source, device, WeightFormat::F32)
    }

    /// [`Model::from_weights`] keeping the weights in `format`: with
    /// [`WeightFormat::Stored`] on the CPU backend, every matrix the source stores packed
    /// (GGUF block formats) stays packed, the embedding included; everything else, and
    /// every matrix on other backends, is dequantised to f32.
    pub fn from_weights_as(
        config: &DecoderConfig,
        source: &mut dyn WeightSource,
        device: &B::Device,
        format: WeightFormat,
    ) -> Result<Self, WeightError> {
        let pack = (format.packs() && runs_packed::<B>()).then_some(format);
        let c = config;
        let layout = WeightLayout::new(c);
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let w = layout.layer(i);
            let attention = Attention {
                qkv: load_linear::<B>(source, &w.qkv, device, pack)?,
                o: load_linear::<B>(source, &w.o, device, pack)?,
                num_heads: c.num_heads,
                num_kv_heads: c.num_kv_heads,
                head_dim: c.head_dim,
                window: c.sliding_window.get(i).copied().flatten(),
            };
            let mlp = Mlp {
                gate_up: load_linear::<B>(source, &w.gate_up, device, pack)?,
                down: load_linear::<B>(source, &w.down, device, pack)?,
            };
            layers.push(DecoderLayer {
                input_norm: load_norm(source, &w.input_norm, c, device)?,
                attention,
                post_attention_norm: load_norm(source, &w.post_attention_norm, c, device)?,
                mlp,
            });
        }
        let embed = layout.embed_tokens();
        let embed = match packed(source, &[(&embed.name, &embed.shape)], device, pack)? {
            Some(packed) => packed,
            None => LinearWeight::Dense(host_to_tensor::<B, 2>(
                source.take_shaped(&embed.name, &embed.shape)?,
                device,
            )),
        };
        let norm = load_norm(source, &layout.final_norm(), c, device)?;
        let head = layout.lm_head();
        let lm_head = if c.tie_word_embeddings
            || head
                .parts
                .iter()
                .any(|p| !source.contains(&p.weight().name))
        {
            Linear {
                weight: embed.clone(),
                bias: None,
            }
        } else {
            load_linear::<B>(source, &head, device, pack)?
        };
        Ok(Self {
            config: config.clone(),
            embed,
            layers,
            norm,
            lm_head,
            rotary: Rotary::new(c.head_dim, &c.rope),
            device: device.clone(),
        })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Bytes of weights one decoding step reads: every layer's projections and norms and
    /// the output head (the one embedding row it looks up is not counted).
    pub fn decode_weight_bytes(&self) -> usize {
        fn bytes<B: Backend, const D: usize>(t: &Tensor<B, D>) -> usize {
            t.shape().num_elements() * t.dtype().size()
        }
        let linear = Linear::bytes;
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                linear(&l.attention.qkv)
                    + linear(&l.attention.o)
                    + linear(&l.mlp.gate_up)
                    + linear(&l.mlp.down)
                    + bytes(&l.input_norm.weight)
                    + bytes(&l.post_attention_norm.weight)
            })
            .sum();
        layers + bytes(&self.norm.weight) + linear(&self.lm_head)
    }

    /// One empty cache per layer.
    pub fn new_caches(&self) -> Vec<LayerCache<B>> {
        (0..self.layers.len()).map(|_| LayerCache::new()).collect()
    }

    /// Prefill: runs `tokens` at positions `0..S` through every layer, filling the empty
    /// `caches`, calling `compressor.after_prefill_layer` after each layer and
    /// `compressor.after_prefill` at the end. Returns the logits of the last position,
    /// `[vocab]`.
    pub fn forward_prefill(
        &self,
        tokens: &[u32],
        caches: &mut [LayerCache<B>],
        compressor: &mut dyn KvCompressor<B>,
    ) -> Result<Tensor<B, 1>, ModelError> {
        let prefill = self.prefill(tokens, caches, compressor, PrefillLogits::Last)?;
        let vocab = self.config.vocab_size;
        Ok(prefill.logits.reshape([vocab]))
    }

    /// Prefill as [`Model::forward_prefill`], choosing which logits to return and
    /// reporting the peak K/V memory.
    pub fn prefill(
        &self,
        tokens: &[u32],
        caches: &mut [LayerCache<B>],
        compressor: &mut dyn KvCompressor<B>,
        which: PrefillLogits,
    ) -> Result<Prefilled<Tensor<B, 2>>, ModelError> {
        let start = Instant::now();
        if tokens.is_empty() {
            return Err(ModelError::EmptyPrompt);
        }
        self.check_caches(caches)?;
        if caches.iter().any(|c| !c.is_empty()) {
            return Err(ModelError::CachesNotEmpty);
        }
        let s = tokens.len();
        let _span = tracing::info_span!("prefill", tokens = s).entered();
        let mut x = self.embed(tokens)?; // [S, hidden]
        let rope = self.rope_tables(0, s);
        let mut peak = 0;
        let layers = self.layers.len();
        for (l, layer) in self.layers.iter().enumerate() {
            let _layer = tracing::debug_span!("prefill_layer", layer = l).entered();
            // The last layer's output feeds only the logits: with the last logits only,
            // its projection and MLP run on the last row alone.
            let last_rows = (l + 1 == layers && which == PrefillLogits::Last).then_some(1);
            let request = AttentionRequest {
                last_rows,
                ..AttentionRequest::default()
            };
            let (y, attn) =
                layer.forward(x, 0, &rope, &mut caches[l], request, &mut |_, _, _| Ok(()))?;
            x = y;
            peak = peak.max(kv_bytes(caches));
            let step = PrefillLayer::new(l, attn.queries);
            let _hook = tracing::debug_span!("compress", layer = l).entered();
            compressor.after_prefill_layer(step, &mut caches[..=l])?;
        }
        compressor.after_prefill(caches)?;
        let [rows, _] = x.dims();
        // [1, hidden] or [S, hidden]
        let x = match which {
            PrefillLogits::Last => x.narrow(0, rows - 1, 1),
            PrefillLogits::All => x,
        };
        let logits = self.head(x);
        Ok(Prefilled {
            prompt_len: s,
            logits,
            prefill_time: start.elapsed(),
            kv_bytes_peak_prefill: peak,
        })
    }

    /// One decoding step: `token` at absolute `position` (after every cached position),
    /// appended to every layer's cache, with `compressor.after_decode_step` after each
    /// layer attended. Returns the next-token logits `[vocab]`.
    pub fn forward_decode(
        &self,
        token: u32,
        position: usize,
        caches: &mut [LayerCache<B>],
        compressor: &mut dyn KvCompressor<B>,
    ) -> Result<Tensor<B, 1>, ModelError> {
        let _span = tracing::debug_span!("decode_step", position).entered();
        self.check_decode(position, caches)?;
        let mut x = self.embed(&[token])?; // [1, hidden]
        let rope = self.rope_tables(position, 1);
        for (l, layer) in self.layers.iter().enumerate() {
            let request = AttentionRequest {
                probabilities: compressor.wants_decode_attention(l, &caches[l]),
                ..AttentionRequest::default()
            };
            // The eviction runs right after the attention, while the rows it moves are
            // still in the CPU's caches (and, on the CPU path, beside the output projection).
            let mut evict =
                |cache: &mut LayerCache<B>, q: &Tensor<B, 3>, p: Option<&Tensor<B, 3>>| {
                    let step = DecodeStep {
                        layer: l,
                        query: q.clone(),
                        attention: p.cloned(),
                    };
                    compressor.after_decode_step(step, cache)
                };
            let (y, _) = layer.forward(x, position, &rope, &mut caches[l], request, &mut evict)?;
            x = y;
        }
        Ok(self.head(x).reshape([self.config.vocab_size]))
    }

    /// One decoding step of several sequences at once: each row's `token` at its own
    /// absolute `position`, appended to its own `caches`, with its own
    /// `compressor.wants_decode_attention` / `after_decode_step` on its own caches and
    /// attention probabilities, as [`Model::forward_decode`] runs them for one sequence.
    /// The embedding, norms, projections, MLP and output head run once over the B rows
    /// (`[B, hidden]`, one matrix product each); the rotary embedding takes each row's
    /// position, and the attention, cache append and hooks run per sequence over its own
    /// cache. Returns the next-token logits `[B, vocab]`, row `b` for `rows[b]`.
    ///
    /// Row `b` gets what [`Model::forward_decode`] gives its sequence alone, up to the
    /// rounding of the B-row matrix products against one-row ones (GEMM against GEMV
    /// summation order); a batch of one row runs exactly [`Model::forward_decode`]'s code.
    ///
    /// # Errors
    /// [`ModelError::EmptyBatch`] without rows; the first row's error that
    /// [`Model::forward_decode`] would give it (checked for every row before anything
    /// runs); a cache or hook error during the step (caches may then have advanced: drop
    /// them).
    pub fn forward_decode_batch(
        &self,
        rows: &mut [DecodeRow<'_, B>],
    ) -> Result<Tensor<B, 2>, ModelError> {
        let _span = tracing::debug_span!("decode_batch", rows = rows.len()).entered();
        if rows.is_empty() {
            return Err(ModelError::EmptyBatch);
        }
        for row in rows.iter() {
            self.check_decode(row.position, row.caches)?;
        }
        let tokens: Vec<u32> = rows.iter().map(|r| r.token).collect();
        let positions: Vec<usize> = rows.iter().map(|r| r.position).collect();
        let mut x = self.embed(&tokens)?; // [B, hidden]
        // One position per row, shared by every layer.
        let ropes: Vec<RopeTables<B>> = positions.iter().map(|&p| self.rope_tables(p, 1)).collect();
        let (mut caches, mut compressors): (Vec<&mut [LayerCache<B>]>, Vec<_>) = rows
            .iter_mut()
            .map(|r| (&mut *r.caches, &mut *r.compressor))
            .unzip();
        for (l, layer) in self.layers.iter().enumerate() {
            let wants: Vec<bool> = compressors
                .iter()
                .zip(&caches)
                .map(|(c, caches)| c.wants_decode_attention(l, &caches[l]))
                .collect();
            // Each sequence's eviction, right after its attention (see `forward_decode`).
            let mut hooks: Vec<_> = compressors
                .iter_mut()
                .map(|compressor| {
                    move |cache: &mut LayerCache<B>, q: &Tensor<B, 3>, p: Option<&Tensor<B, 3>>| {
                        let step = DecodeStep {
                            layer: l,
                            query: q.clone(),
                            attention: p.cloned(),
                        };
                        compressor.after_decode_step(step, cache)
                    }
                })
                .collect();
            let mut layer_rows: Vec<AttentionRow<'_, B>> = caches
                .iter_mut()
                .zip(hooks.iter_mut())
                .zip(&ropes)
                .zip(&positions)
                .zip(&wants)
                .map(
                    |((((caches, hook), rope), &position), &probabilities)| AttentionRow {
                        position,
                        rope,
                        cache: &mut caches[l],
                        probabilities,
                        after: hook,
                    },
                )
                .collect();
            x = layer.forward_batch(x, &mut layer_rows)?; // [B, hidden]
        }
        Ok(self.head(x)) // [B, vocab]
    }

    /// Checks that a decoding step at `position` fits `caches`: one per layer, every
    /// cached position before it.
    fn check_decode(&self, position: usize, caches: &[LayerCache<B>]) -> Result<(), ModelError> {
        self.check_caches(caches)?;
        for cache in caches.iter() {
            if let Some(&last) = cache.positions().iter().filter_map(|p| p.last()).max()
                && position <= last
            {
                return Err(ModelError::PositionNotAfterCache { position, last });
            }
        }
        Ok(())
    }

    /// Rotary tables for positions `start..start + n` in this model's head layout.
    fn rope_tables(&self, start: usize, n: usize) -> RopeTables<B> {
        let c = &self.config;
        self.rotary
            .tables(start, n, c.num_heads, c.num_kv_heads, &self.device)
    }

    /// The decoder layers, in order.
    pub fn layers(&self) -> &[DecoderLayer<B>] {
        &self.layers
    }

    fn check_caches(&self, caches: &[LayerCache<B>]) -> Result<(), ModelError> {
        if caches.len() != self.layers.len() {
            return Err(ModelError::CacheCount {
                expected: self.layers.len(),
                got: caches.len(),
            });
        }
        Ok(())
    }

    /// `tokens` -> `[S, hidden]`.
    fn embed(&self, tokens: &[u32]) -> Result<Tensor<B, 2>, ModelError> {
        let vocab_size = self.config.vocab_size;
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(ModelError::TokenOutOfRange { token, vocab_size });
        }
        Ok(self.embed.select_rows(tokens))
    }

    /// Final norm and output head: `[n, hidden]` -> `[n, vocab]`.
    fn head(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.lm_head.forward(self.norm.forward(x))
    }
}

/// Total K/V bytes held by `caches`.
pub fn kv_bytes<B: Backend>(caches: &[LayerCache<B>]) -> usize {
    caches.iter().map(LayerCache::bytes).sum()
}

fn host_to_tensor<B: Backend, const D: usize>(t: HostTensor, device: &B::Device) -> Tensor<B, D> {
    let mut data = weight_buffer(t.data.len());
    data.extend_from_slice(&t.data);
    drop(t.data);
    Tensor::from_data(TensorData::new(data, t.shape), device)
}

/// An empty buffer for `len` weights. On Linux, large ones ask for transparent huge pages
/// before their memory is first touched: decoding streams every weight once per token,
/// and 2 MiB pages spare the TLB misses of 4 KiB ones (a GEMV probe over a 212 MB matrix
/// read 13-15 GB/s with them against 11-12 without, single noisy runs; `madvise` is only
/// advice).
fn weight_buffer(len: usize) -> Vec<f32> {
    let buffer: Vec<f32> = Vec::with_capacity(len);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if len * 4 >= 4 << 20 {
        const HUGE: usize = 2 << 20;
        let start = buffer.as_ptr() as usize;
        let (first, end) = (start.next_multiple_of(HUGE), start + len * 4);
        if end > first + HUGE {
            let bytes = (end - first) / HUGE * HUGE;
            // SAFETY: the range lies inside the buffer's allocation; MADV_HUGEPAGE only
            // advises the kernel and never changes the memory's contents.
            unsafe {
                libc::madvise(first as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE);
            }
        }
    }
    buffer
}

/// Loads the projections of `linear` (`{name}.weight`, `[rows_i, in]` each, and
/// `{name}.bias` when it has biases) stacked into one `[sum rows_i, in]` linear layer, so
/// that one product computes them all (fused QKV, gate/up); outputs come in the order given.
/// With `pack`, weights the source stores packed stay packed (each part in its own format).
fn load_linear<B: Backend>(
    source: &mut dyn WeightSource,
    linear: &StackedLinear,
    device: &B::Device,
    pack: Option<WeightFormat>,
) -> Result<Linear<B>, WeightError> {
    let (out, inp, bias) = (linear.rows(), linear.inputs(), linear.bias);
    let specs: Vec<TensorSpec> = linear.parts.iter().map(|p| p.weight()).collect();
    let named: Vec<(&str, &[usize])> = specs
        .iter()
        .map(|s| (s.name.as_str(), &s.shape[..]))
        .collect();
    let packed = packed(source, &named, device, pack)?;
    // Each part's weight, then its bias (the layout's order), unless the weights are packed.
    let mut weight = Vec::new();
    if packed.is_none() {
        weight = weight_buffer(out * inp);
    }
    let mut biases = Vec::with_capacity(if bias { out } else { 0 });
    for (part, spec) in linear.parts.iter().zip(&specs) {
        if packed.is_none() {
            weight.extend_from_slice(&source.take_shaped(&spec.name, &spec.shape)?.data);
        }
        if bias {
            let spec = part.bias();
            biases.extend_from_slice(&source.take_shaped(&spec.name, &spec.shape)?.data);
        }
    }
    let bias = bias.then(|| Tensor::from_data(TensorData::new(biases, [out]), device));
    Ok(match packed {
        Some(weight) => Linear { weight, bias },
        None => Linear::dense(
            Tensor::from_data(TensorData::new(weight, [out, inp]), device),
            bias,
        ),
    })
}

/// The weights `parts` (name and `[rows, in]` shape each) stacked by rows as one packed
/// matrix, when `pack` names a packing format and the source stores every part packed;
/// `None` otherwise.
fn packed<B: Backend>(
    source: &mut dyn WeightSource,
    parts: &[(&str, &[usize])],
    device: &B::Device,
    pack: Option<WeightFormat>,
) -> Result<Option<LinearWeight<B>>, WeightError> {
    let Some(format) = pack else {
        return Ok(None);
    };
    let mut rows = Vec::with_capacity(parts.len());
    for &(name, shape) in parts {
        let Some(part) = source.take_packed(name)? else {
            return Ok(None);
        };
        let got = vec![part.rows(), part.cols()];
        if got != shape {
            return Err(WeightError::Shape {
                name: name.to_string(),
                expected: shape.to_vec(),
                got,
                origin: source.origin(),
            });
        }
        rows.push(part);
    }
    let matrix = PackedMatrix::new(rows).map_err(|e| WeightError::Packed {
        name: parts.first().map_or_else(String::new, |p| p.0.to_string()),
        origin: source.origin(),
        message: e.to_string(),
    })?;
    Ok(Some(LinearWeight::Packed {
        matrix: Arc::new(matrix),
        device: device.clone(),
        int8_activations: format == WeightFormat::StoredInt8,
    }))
}

/// Whether weights can stay packed on backend `B` (only the CPU backend has packed kernels).
#[cfg_attr(not(feature = "flex"), allow(clippy::extra_unused_type_parameters))]
pub(crate) fn runs_packed<B: Backend>() -> bool {
    #[cfg(feature = "flex")]
    return cake_core::host::is_flex::<B>();
    #[cfg(not(feature = "flex"))]
    false
}

fn load_norm<B: Backend>(
    source: &mut dyn WeightSource,
    spec: &TensorSpec,
    config: &DecoderConfig,
    device: &B::Device,
) -> Result<RmsNorm<B>, WeightError> {
    let w = source.take_shaped(&spec.name, &spec.shape)?;
    Ok(RmsNorm {
        weight: host_to_tensor::<B, 1>(w, device),
        eps: config.rms_norm_eps,
    })
}
