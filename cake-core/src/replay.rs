//! Prefill once, compress many ways: a recorder keeps what the prefill hooks saw so that
//! any number of policies can later run the same hooks on copies of the full cache
//! (policy sweeps).

use burn::tensor::{Tensor, backend::Backend};

use crate::compressor::PrefillLayer;
use crate::scorer::{H2o, PrefillInput, Scorer};
use crate::{CacheError, KvCompressor, LayerCache};

/// A [`KvCompressor`] that keeps everything and records each layer's prompt queries (and,
/// on request, H2O's prefill scores).
///
/// Prefill outputs never depend on the policy (each layer's output is computed before its
/// hook runs and later layers read only their own cache), so replaying the recorded hooks
/// with [`replay_prefill`] on a copy of the full caches leaves exactly the caches a live
/// run of that policy would have left.
#[derive(Debug, Clone, Default)]
pub struct PrefillRecorder<B: Backend> {
    queries: Vec<Tensor<B, 3>>,
    /// H2O's prefill scores per layer, `[Hkv, S]`, when recorded.
    attention_sums: Option<Vec<Tensor<B, 2>>>,
}

impl<B: Backend> PrefillRecorder<B> {
    /// An empty recorder.
    pub fn new() -> Self {
        Self {
            queries: Vec::new(),
            attention_sums: None,
        }
    }

    /// A recorder that also computes H2O's prefill scores once per layer (every prompt
    /// query's attention, summed: the costly part of an H2O prefill), which each replayed
    /// H2O policy then takes instead of computing them again. Worth it when a sweep holds
    /// an H2O policy; the scores are the bits a live H2O prefill computes.
    pub fn with_attention_sums() -> Self {
        Self {
            queries: Vec::new(),
            attention_sums: Some(Vec::new()),
        }
    }

    /// Post-RoPE prompt queries of every layer, `[H, S, d]` each, in layer order.
    pub fn queries(&self) -> &[Tensor<B, 3>] {
        &self.queries
    }

    /// H2O's prefill scores of every layer, `[Hkv, S]` each, when recorded.
    pub fn attention_sums(&self) -> Option<&[Tensor<B, 2>]> {
        self.attention_sums.as_deref()
    }
}

impl<B: Backend> KvCompressor<B> for PrefillRecorder<B> {
    fn after_prefill_layer(
        &mut self,
        step: PrefillLayer<B>,
        caches: &mut [LayerCache<B>],
    ) -> Result<(), CacheError> {
        if let Some(sums) = &mut self.attention_sums {
            let keys = caches.get(step.layer).and_then(LayerCache::keys);
            let Some(keys) = keys else {
                return Err(CacheError::Shape(format!(
                    "layer {}: no prompt keys to record H2O's scores from",
                    step.layer
                )));
            };
            sums.truncate(step.layer);
            sums.push(H2o::default().prefill_scores(&PrefillInput {
                queries: &step.queries,
                keys: &keys,
                window_attention: None,
                window: 0,
                attention_sums: None,
            }));
        }
        self.queries.truncate(step.layer);
        self.queries.push(step.queries);
        Ok(())
    }
}

/// Runs `compressor`'s prefill hooks, in the order a live prefill calls them, on `caches`
/// (a copy of the full prompt caches) with what `recorder` recorded.
///
/// # Errors
/// What the compressor's hooks return.
pub fn replay_prefill<B: Backend>(
    compressor: &mut dyn KvCompressor<B>,
    recorder: &PrefillRecorder<B>,
    caches: &mut [LayerCache<B>],
) -> Result<(), CacheError> {
    for (layer, q) in recorder.queries().iter().enumerate() {
        let step = PrefillLayer {
            layer,
            queries: q.clone(),
            attention_sums: recorder
                .attention_sums()
                .and_then(|sums| sums.get(layer))
                .cloned(),
        };
        compressor.after_prefill_layer(step, &mut caches[..=layer])?;
    }
    compressor.after_prefill(caches)
}
