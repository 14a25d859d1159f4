//! The contract between a model and a KV-cache policy: the model calls these hooks at
//! fixed points of prefill and decoding, the policy decides what each layer keeps.

use burn::tensor::{Tensor, backend::Backend};

use crate::{CacheError, LayerCache};

/// What a model hands a compressor after one layer's prefill.
#[derive(Debug, Clone)]
pub struct PrefillLayer<B: Backend> {
    /// The layer index (layers are prefilled in order `0, 1, .., L-1`).
    pub layer: usize,
    /// The layer's post-RoPE prompt queries, `[H, S, d]` (unscaled; the attention scale
    /// is `1 / sqrt(d)`).
    pub queries: Tensor<B, 3>,
    /// H2O's prefill scores, when the caller already has them: every prompt query's
    /// attention summed over the queries and averaged over each KV head's query group,
    /// `[Hkv, S]`. A policy sweep computes them once per prompt
    /// ([`crate::PrefillRecorder::with_attention_sums`]) instead of once per H2O policy;
    /// `None` makes the scorer compute them.
    pub attention_sums: Option<Tensor<B, 2>>,
}

impl<B: Backend> PrefillLayer<B> {
    /// Layer `layer`'s hook input with its prompt `queries` (`[H, S, d]`).
    pub fn new(layer: usize, queries: Tensor<B, 3>) -> Self {
        Self {
            layer,
            queries,
            attention_sums: None,
        }
    }
}

/// What a model hands a compressor after one layer of a decoding step.
#[derive(Debug, Clone)]
pub struct DecodeStep<B: Backend> {
    /// The layer index.
    pub layer: usize,
    /// The new token's post-RoPE query, `[H, 1, d]`.
    pub query: Tensor<B, 3>,
    /// The new token's attention probabilities over the cache it just attended (the new
    /// token included), `[H, 1, len]`: present when
    /// [`KvCompressor::wants_decode_attention`] asked for them, so that a compressor never
    /// recomputes the attention the model already did.
    pub attention: Option<Tensor<B, 3>>,
}

/// Hooks a model calls while it fills its per-layer caches.
///
/// The model owns the caches (one [`LayerCache`] per decoder layer) and always computes
/// exact attention over whatever they hold; a compressor only removes rows from them.
/// Errors end the model call that ran the hook.
///
/// Compressors are `Send`: the CPU path runs a decoding step's hook on one thread while
/// the layer's output projection starts on the others.
pub trait KvCompressor<B: Backend>: Send {
    /// Called during prefill right after layer `step.layer` appended the prompt's
    /// keys/values (absolute positions `0..S`) to `caches[step.layer]` and computed its
    /// exact output. `caches` holds layers `0..=layer` (later layers are not filled yet),
    /// so a cascading policy may evict earlier layers here.
    fn after_prefill_layer(
        &mut self,
        step: PrefillLayer<B>,
        caches: &mut [LayerCache<B>],
    ) -> Result<(), CacheError>;

    /// Called once after the last layer of the prefill (all `caches` filled). Does
    /// nothing by default.
    fn after_prefill(&mut self, caches: &mut [LayerCache<B>]) -> Result<(), CacheError> {
        let _ = caches;
        Ok(())
    }

    /// Asked during decoding before layer `layer` appends the new token to `cache` (so
    /// the layer will then hold `cache.len() + 1` tokens): should
    /// [`DecodeStep::attention`] carry the probabilities? Defaults to no (they cost a
    /// little memory traffic).
    fn wants_decode_attention(&self, layer: usize, cache: &LayerCache<B>) -> bool {
        let _ = (layer, cache);
        false
    }

    /// Called during decoding after layer `step.layer` appended one new token to `cache`
    /// and attended. Does nothing by default.
    fn after_decode_step(
        &mut self,
        step: DecodeStep<B>,
        cache: &mut LayerCache<B>,
    ) -> Result<(), CacheError> {
        let _ = (step, cache);
        Ok(())
    }
}

/// A borrowed compressor works as the compressor itself (e.g. to keep it after a
/// generation that took it).
impl<B: Backend, C: KvCompressor<B> + ?Sized> KvCompressor<B> for &mut C {
    fn after_prefill_layer(
        &mut self,
        step: PrefillLayer<B>,
        caches: &mut [LayerCache<B>],
    ) -> Result<(), CacheError> {
        (**self).after_prefill_layer(step, caches)
    }

    fn after_prefill(&mut self, caches: &mut [LayerCache<B>]) -> Result<(), CacheError> {
        (**self).after_prefill(caches)
    }

    fn wants_decode_attention(&self, layer: usize, cache: &LayerCache<B>) -> bool {
        (**self).wants_decode_attention(layer, cache)
    }

    fn after_decode_step(
        &mut self,
        step: DecodeStep<B>,
        cache: &mut LayerCache<B>,
    ) -> Result<(), CacheError> {
        (**self).after_decode_step(step, cache)
    }
}

/// The full cache: keeps everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeepAll;

impl<B: Backend> KvCompressor<B> for KeepAll {
    fn after_prefill_layer(
        &mut self,
        _: PrefillLayer<B>,
        _: &mut [LayerCache<B>],
    ) -> Result<(), CacheError> {
        Ok(())
    }
}
