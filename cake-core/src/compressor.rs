//! The contract between a model and a KV-cache policy: the model calls these hooks at
//! fixed points of prefill and decoding, the policy decides what each layer keeps.

use burn::tensor::{Tensor, backend::Backend};

use crate::LayerCache;

/// Hooks a model calls while it fills its per-layer caches.
///
/// The model owns the caches (one [`LayerCache`] per decoder layer) and always computes
/// exact attention over whatever they hold; a compressor only removes rows from them.
pub trait KvCompressor<B: Backend> {
    /// Called during prefill right after layer `layer` appended the prompt's keys/values
    /// (absolute positions `0..S`) to `caches[layer]` and computed its exact output.
    ///
    /// `queries`: the layer's post-RoPE prompt queries, `[H, S, d]` (unscaled; the
    /// attention scale is `1 / sqrt(d)`). `caches`: layers `0..=layer` (later layers are
    /// not filled yet), so a cascading policy may evict earlier layers here.
    fn after_prefill_layer(
        &mut self,
        layer: usize,
        queries: Tensor<B, 3>,
        caches: &mut [LayerCache<B>],
    );

    /// Called once after the last layer of the prefill (all `caches` filled).
    fn after_prefill(&mut self, caches: &mut [LayerCache<B>]);

    /// Called during decoding after layer `layer` appended one new token to `cache` and
    /// attended with `query`, `[H, 1, d]` post-RoPE.
    fn after_decode_step(&mut self, layer: usize, query: Tensor<B, 3>, cache: &mut LayerCache<B>);
}

/// The full cache: keeps everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeepAll;

impl<B: Backend> KvCompressor<B> for KeepAll {
    fn after_prefill_layer(&mut self, _: usize, _: Tensor<B, 3>, _: &mut [LayerCache<B>]) {}
    fn after_prefill(&mut self, _: &mut [LayerCache<B>]) {}
    fn after_decode_step(&mut self, _: usize, _: Tensor<B, 3>, _: &mut LayerCache<B>) {}
}
