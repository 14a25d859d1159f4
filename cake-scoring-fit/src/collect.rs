//! Per-layer calibration statistics: what a model run yields, turned into rows.
//!
//! The model side computes, for each layer `l` of one calibration sample, the CAKE
//! preference parts (`H_l` spatial entropy, `V_l` temporal variance, `P_l = H_l^(1/tau1) *
//! V_l^(1/tau2)`, see `cake-algorithm.md` section 2, with `cake-core`'s statistics) and the
//! PCA summaries of the layer's key and value states ([`crate::pca`]). [`sample_rows`] turns
//! one sample's layers into [`LayerStatsRow`]s, adding the normalised preference share.

use serde::{Deserialize, Serialize};

use crate::error::{FitError, Result};
use crate::pca::PcaSummary;

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
