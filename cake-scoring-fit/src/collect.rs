//! Per-layer calibration statistics: what a model run yields, turned into rows.
//!
//! The model side computes, for each layer `l` of one calibration sample, the CAKE
//! preference parts (`H_l` spatial entropy, `V_l` temporal variance, `P_l = H_l^(1/tau1) *
//! V_l^(1/tau2)`, see `docs/algorithm.md` section 2, with `cake-core`'s statistics) and the
//! PCA summaries of the layer's key and value states ([`crate::pca`]): a [`StatsCollector`]
//! passed to a model's prefill as its `KvCompressor` measures them. [`sample_rows`] turns
//! one sample's layers into [`LayerStatsRow`]s, adding the normalised preference share.

use burn::tensor::{Tensor, backend::Backend};
use cake_core::stats::{layer_preference, window_attention};
use cake_core::{CacheError, KvCompressor, LayerCache, PrefillLayer};
use serde::{Deserialize, Serialize};

use crate::error::{FitError, Result};
use crate::pca::{PcaSummary, pca_summary_layer, pca_summary_per_head};

/// What a model run measured for one layer (or one KV head of one layer) of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerMeasurement {
    /// Layer preference `P_l` (non-negative).
    pub preference: f64,
    /// Spatial dispersion `H_l` (entropy part of the preference).
    pub entropy: f64,
    /// Temporal shift `V_l` (variance part of the preference).
    pub variance: f64,
    /// PCA summary of the layer's (or head's) key states.
    pub key_pca: PcaSummary,
    /// PCA summary of the layer's (or head's) value states.
    pub value_pca: PcaSummary,
}

impl LayerMeasurement {
    /// A measurement from `cake-core`'s preference parts: `P_l = H_l^(1/tau1) * V_l^(1/tau2)`
    /// (0 when `H_l` or `V_l` is not positive, as in `cake_core::LayerPreference::score`).
    pub fn from_parts(
        parts: cake_core::LayerPreference,
        tau1: f64,
        tau2: f64,
        key_pca: PcaSummary,
        value_pca: PcaSummary,
    ) -> Self {
        Self {
            preference: parts.score(tau1, tau2),
            entropy: parts.entropy,
            variance: parts.variance,
            key_pca,
            value_pca,
        }
    }
}

/// One row of the statistics file: one sample x one layer (x one KV head when `kv_head` is set).
/// The fields, in this order and with the PCA summaries' in line, are the CSV columns
/// ([`crate::CSV_HEADER`]): keep the two in step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerStatsRow {
    /// Dataset the calibration sample comes from (e.g. `"narrativeqa"`).
    pub dataset: String,
    /// Identifier of the sample within its dataset (LongBench `_id` or an index).
    pub sample_id: String,
    /// Number of decoder layers of the model.
    pub num_layers: usize,
    /// Layer index, `0..num_layers`.
    pub layer: usize,
    /// KV head for per-head rows; `None` for whole-layer rows.
    pub kv_head: Option<usize>,
    /// Layer preference `P_l`.
    pub preference: f64,
    /// Spatial dispersion `H_l`.
    pub entropy: f64,
    /// Temporal shift `V_l`.
    pub variance: f64,
    /// `P_l / sum_l' P_l'` over the sample's layers (for the same KV head on per-head rows).
    pub share: f64,
    /// PCA summary of the key states.
    pub key_pca: PcaSummary,
    /// PCA summary of the value states.
    pub value_pca: PcaSummary,
}

impl LayerStatsRow {
    /// Normalised layer index `layer / (num_layers - 1)` in [0, 1] (0 for a one-layer model).
    pub fn x(&self) -> f64 {
        normalised_layer(self.layer, self.num_layers)
    }

    /// Checks the row's invariants (layer in range, finite non-negative statistics, share in [0, 1]).
    pub fn validate(&self) -> Result<()> {
        if self.num_layers == 0 || self.layer >= self.num_layers {
            return Err(FitError::InvalidValue(format!(
                "layer {} is out of range for num_layers {}",
                self.layer, self.num_layers
            )));
        }
        for (name, v) in [
            ("preference", self.preference),
            ("entropy", self.entropy),
            ("variance", self.variance),
            ("share", self.share),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(FitError::InvalidValue(format!(
                    "{name} must be finite and >= 0, got {v}"
                )));
            }
        }
        if self.share > 1.0 + 1e-9 {
            return Err(FitError::InvalidValue(format!(
                "share must be <= 1, got {}",
                self.share
            )));
        }
        for (name, p) in [("key_pca", &self.key_pca), ("value_pca", &self.value_pca)] {
            let ok = p.top_k >= 1
                && p.explained_variance_top_k.is_finite()
                && (0.0..=1.0 + 1e-9).contains(&p.explained_variance_top_k)
                && p.spectral_entropy.is_finite()
                && p.spectral_entropy >= 0.0;
            if !ok {
                return Err(FitError::InvalidValue(format!(
                    "{name} is not a valid PCA summary: {p:?}"
                )));
            }
        }
        Ok(())
    }
}

/// Normalised layer index `layer / (num_layers - 1)`; 0 when `num_layers <= 1`.
pub fn normalised_layer(layer: usize, num_layers: usize) -> f64 {
    if num_layers <= 1 {
        0.0
    } else {
        layer as f64 / (num_layers - 1) as f64
    }
}

/// Preference shares `P_l / sum P`. All-zero preferences give uniform shares (no layer is
/// preferred). Errors on an empty slice and on negative or non-finite preferences.
pub fn shares_from_preferences(preferences: &[f64]) -> Result<Vec<f64>> {
    if preferences.is_empty() {
        return Err(FitError::NotEnoughData("no layer preferences".into()));
    }
    if let Some((l, p)) = preferences
        .iter()
        .enumerate()
        .find(|(_, p)| !p.is_finite() || **p < 0.0)
    {
        return Err(FitError::InvalidValue(format!(
            "preference of layer {l} must be finite and >= 0, got {p}"
        )));
    }
    let total: f64 = preferences.iter().sum();
    if !total.is_finite() {
        return Err(FitError::InvalidValue(
            "sum of preferences overflows".into(),
        ));
    }
    if total == 0.0 {
        return Ok(vec![1.0 / preferences.len() as f64; preferences.len()]);
    }
    Ok(preferences.iter().map(|p| p / total).collect())
}

/// Rows for one sample: `layers[l]` is layer `l`'s measurement (all layers of the model, in
/// order). Shares are normalised over these layers. `kv_head` marks per-head rows (call once
/// per head with that head's measurements).
pub fn sample_rows(
    dataset: &str,
    sample_id: &str,
    kv_head: Option<usize>,
    layers: &[LayerMeasurement],
) -> Result<Vec<LayerStatsRow>> {
    let prefs: Vec<f64> = layers.iter().map(|m| m.preference).collect();
    let shares = shares_from_preferences(&prefs)?;
    layers
        .iter()
        .zip(shares)
        .enumerate()
        .map(|(layer, (m, share))| {
            let row = LayerStatsRow {
                dataset: dataset.to_owned(),
                sample_id: sample_id.to_owned(),
                num_layers: layers.len(),
                layer,
                kv_head,
                preference: m.preference,
                entropy: m.entropy,
                variance: m.variance,
                share,
                key_pca: m.key_pca,
                value_pca: m.value_pca,
            };
            row.validate()?;
            Ok(row)
        })
        .collect()
}

/// A `KvCompressor` that keeps every token and measures each layer of a prefill: its
/// preference parts over the last `window` queries and the PCA spread of its key and value
/// states, for the whole layer and, when asked, for each KV head (with the group of query
/// heads that read it).
///
/// Run one prefill per calibration sample with a fresh collector, then turn it into rows
/// with [`StatsCollector::into_rows`]. A layer that cannot be measured does not fail the
/// model call: the first such error is kept and returned by `into_rows`.
#[derive(Debug)]
pub struct StatsCollector {
    window: usize,
    top_k: usize,
    taus: (f64, f64),
    per_head: bool,
    /// Whole-layer measurements, one per layer.
    layers: Vec<LayerMeasurement>,
    /// `heads[l][h]`: KV head `h` of layer `l` (empty unless `per_head`).
    heads: Vec<Vec<LayerMeasurement>>,
    error: Option<FitError>,
}

impl StatsCollector {
    /// A collector over the last `window` queries, recording `top_k` principal components
    /// and `P_l = H_l^(1/tau1) * V_l^(1/tau2)` with `taus = (tau1, tau2)`; also per KV head
    /// when `per_head`.
    pub fn new(window: usize, top_k: usize, taus: (f64, f64), per_head: bool) -> Self {
        Self {
            window,
            top_k,
            taus,
            per_head,
            layers: Vec::new(),
            heads: Vec::new(),
            error: None,
        }
    }

    /// Whole-layer measurements so far, layer 0 first.
    pub fn layers(&self) -> &[LayerMeasurement] {
        &self.layers
    }

    /// KV head `head`'s measurement in every layer so far (empty without `per_head`).
    pub fn head(&self, head: usize) -> Vec<LayerMeasurement> {
        self.heads
            .iter()
            .filter_map(|layer| layer.get(head).copied())
            .collect()
    }

    /// The sample's rows ([`sample_rows`]): every layer, then, with `per_head`, every
    /// layer of KV head 0, 1, ..; or the first error met while measuring.
    pub fn into_rows(self, dataset: &str, sample_id: &str) -> Result<Vec<LayerStatsRow>> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let mut rows = sample_rows(dataset, sample_id, None, &self.layers)?;
        let kv_heads = self.heads.first().map_or(0, Vec::len);
        for h in 0..kv_heads {
            rows.extend(sample_rows(dataset, sample_id, Some(h), &self.head(h))?);
        }
        Ok(rows)
    }

    /// Measurements of one layer: the whole layer, then each KV head when `per_head`.
    fn measure<B: Backend>(
        &self,
        queries: Tensor<B, 3>,
        cache: &LayerCache<B>,
    ) -> Result<(LayerMeasurement, Vec<LayerMeasurement>)> {
        let (Some(keys), Some(values)) = (cache.keys(), cache.values()) else {
            return Err(FitError::NotEnoughData("the layer cached nothing".into()));
        };
        let [kv_heads, len, dim] = keys.dims();
        // [H, w, S]
        let attn = window_attention(queries, keys.clone(), self.window);
        let (tau1, tau2) = self.taus;
        let key_states = host(keys)?;
        let value_states = host(values)?;
        let layer = LayerMeasurement::from_parts(
            layer_preference(&attn),
            tau1,
            tau2,
            pca_summary_layer(&key_states, kv_heads, len, dim, self.top_k)?,
            pca_summary_layer(&value_states, kv_heads, len, dim, self.top_k)?,
        );
        if !self.per_head {
            return Ok((layer, Vec::new()));
        }
        let group = attn.dims()[0] / kv_heads;
        let key_pca = pca_summary_per_head(&key_states, kv_heads, len, dim, self.top_k)?;
        let value_pca = pca_summary_per_head(&value_states, kv_heads, len, dim, self.top_k)?;
        let heads = (0..kv_heads)
            .map(|h| {
                // [G, w, S]: the query heads that read KV head h
                let group_attn = attn.clone().narrow(0, h * group, group);
                LayerMeasurement::from_parts(
                    layer_preference(&group_attn),
                    tau1,
                    tau2,
                    key_pca[h],
                    value_pca[h],
                )
            })
            .collect();
        Ok((layer, heads))
    }
}

/// A `[Hkv, S, d]` K/V tensor copied to the host.
fn host<B: Backend>(t: Tensor<B, 3>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| FitError::InvalidValue(format!("cannot read the K/V states back: {e:?}")))
}

impl<B: Backend> KvCompressor<B> for StatsCollector {
    fn after_prefill_layer(
        &mut self,
        PrefillLayer { layer, queries, .. }: PrefillLayer<B>,
        caches: &mut [LayerCache<B>],
    ) -> std::result::Result<(), CacheError> {
        if self.error.is_none() {
            match self.measure(queries, &caches[layer]) {
                Ok((whole, heads)) => {
                    self.layers.push(whole);
                    self.heads.push(heads);
                }
                Err(e) => {
                    self.error = Some(FitError::Measure {
                        layer,
                        message: e.to_string(),
                    })
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::TensorData;
    use burn_flex::Flex;

    use super::*;

    /// A `[a, b, c]` tensor of deterministic values in [-1, 1).
    fn tensor(shape: [usize; 3], seed: u64) -> Tensor<Flex, 3> {
        let seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let data = cake_kernels::testing::pseudo_random(shape.iter().product(), seed);
        Tensor::from_data(TensorData::new(data, shape), &Default::default())
    }

    /// Prefills `layers` layers of 4 query heads, 2 KV heads, d = 8 over 12 tokens.
    fn prefill(collector: &mut StatsCollector, layers: usize) {
        let mut caches: Vec<LayerCache<Flex>> = Vec::new();
        for layer in 0..layers {
            let seed = 3 * layer as u64;
            let mut cache = LayerCache::new();
            cache
                .append(
                    tensor([2, 12, 8], seed + 1),
                    tensor([2, 12, 8], seed + 2),
                    0,
                )
                .unwrap();
            caches.push(cache);
            let step = PrefillLayer::new(layer, tensor([4, 12, 8], seed + 3));
            collector.after_prefill_layer(step, &mut caches).unwrap();
        }
    }

    #[test]
    fn collects_layer_and_head_rows() {
        let mut collector = StatsCollector::new(4, 3, (1.0, 1.0), true);
        prefill(&mut collector, 3);
        assert_eq!(collector.layers().len(), 3);
        assert_eq!(collector.head(1).len(), 3);
        assert!(collector.head(2).is_empty(), "two KV heads");
        let layer0 = collector.layers()[0];
        assert!(
            layer0.preference > 0.0 && layer0.key_pca.top_k == 3,
            "{layer0:?}"
        );
        let rows = collector.into_rows("synth_kv", "r0").unwrap();
        // 3 whole layers, then 3 layers of each of the 2 KV heads.
        assert_eq!(rows.len(), 9);
        let heads: Vec<Option<usize>> = rows.iter().map(|r| r.kv_head).collect();
        assert_eq!(heads[..4], [None, None, None, Some(0)]);
        for head in [None, Some(0), Some(1)] {
            let total: f64 = rows
                .iter()
                .filter(|r| r.kv_head == head)
                .map(|r| r.share)
                .sum();
            assert!((total - 1.0).abs() < 1e-12, "{head:?}: {total}");
        }

        let mut layers_only = StatsCollector::new(4, 3, (1.0, 1.0), false);
        prefill(&mut layers_only, 2);
        assert_eq!(layers_only.into_rows("d", "s").unwrap().len(), 2);
    }

    #[test]
    fn an_empty_layer_is_an_error_naming_it() {
        let mut collector = StatsCollector::new(4, 3, (1.0, 1.0), false);
        prefill(&mut collector, 1);
        let mut caches = vec![LayerCache::<Flex>::new(), LayerCache::new()];
        let step = PrefillLayer::new(1, tensor([4, 12, 8], 9));
        collector.after_prefill_layer(step, &mut caches).unwrap();
        let e = collector.into_rows("d", "s").unwrap_err();
        assert!(
            matches!(e, FitError::Measure { layer: 1, .. }) && e.to_string().contains("nothing"),
            "{e}"
        );
    }
}
