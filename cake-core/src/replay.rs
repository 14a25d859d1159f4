//! Prefill once, compress many ways: a recorder keeps what the prefill hooks saw so that
//! any number of policies can later run the same hooks on copies of the full cache
//! (policy sweeps).

use burn::tensor::{Tensor, backend::Backend};

use crate::compressor::PrefillLayer;
use crate::{CacheError, KvCompressor, LayerCache};

/// A [`KvCompressor`] that keeps everything and records each layer's prompt queries.
///
/// Prefill outputs never depend on the policy (each layer's output is computed before its
/// hook runs and later layers read only their own cache), so replaying the recorded hooks
/// with [`replay_prefill`] on a copy of the full caches leaves exactly the caches a live
/// run of that policy would have left.
#[derive(Debug, Clone, Default)]
pub struct PrefillRecorder<B: Backend> {
    queries: Vec<Tensor<B, 3>>,
}

impl<B: Backend> PrefillRecorder<B> {
    /// An empty recorder.
    pub fn new() -> Self {
        Self {
            queries: Vec::new(),
        }
    }

    /// Post-RoPE prompt queries of every layer, `[H, S, d]` each, in layer order.
    pub fn queries(&self) -> &[Tensor<B, 3>] {
        &self.queries
    }
}

impl<B: Backend> KvCompressor<B> for PrefillRecorder<B> {
    fn after_prefill_layer(
        &mut self,
        step: PrefillLayer<B>,
        _: &mut [LayerCache<B>],
    ) -> Result<(), CacheError> {
        self.queries.truncate(step.layer);
        self.queries.push(step.queries);
        Ok(())
    }
}

/// Runs `compressor`'s prefill hooks, in the order a live prefill calls them, on `caches`
/// (a copy of the full prompt caches) with the recorded `queries`.
///
/// # Errors
/// What the compressor's hooks return.
pub fn replay_prefill<B: Backend>(
    compressor: &mut dyn KvCompressor<B>,
    queries: &[Tensor<B, 3>],
    caches: &mut [LayerCache<B>],
) -> Result<(), CacheError> {
    for (layer, q) in queries.iter().enumerate() {
        let step = PrefillLayer {
            layer,
            queries: q.clone(),
        };
        compressor.after_prefill_layer(step, &mut caches[..=layer])?;
    }
    compressor.after_prefill(caches)
}
