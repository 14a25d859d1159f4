//! Layer-budget allocators: how the shared budget `B_total` is split among layers.
//!
//! An [`Allocator`] only produces relative shares; [`crate::budget::allocate_budgets`]
//! turns them into integers with the section-4 invariants. A new method is a new impl.

use std::fmt::Debug;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::score_function::ScoreFunction;

/// The two parts of a layer's preference (`docs/algorithm.md`, section 2).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LayerPreference {
    /// Spatial dispersion `H_l = -sum A_p ln(A_p + 1e-10)`.
    pub entropy: f64,
    /// Temporal shift `V_l = sum_{h,j} var_q A_p` (unbiased over the window queries).
    pub variance: f64,
}

impl LayerPreference {
    /// `ln P_l = ln(H_l) / tau1 + ln(V_l) / tau2`, or `None` when `H_l` or `V_l` is not
    /// positive (then `P_l = 0`). Working in logs avoids overflow of `H^(1/tau1)`.
    pub fn log_score(&self, tau1: f64, tau2: f64) -> Option<f64> {
        (self.entropy > 0.0 && self.variance > 0.0)
            .then(|| self.entropy.ln() / tau1 + self.variance.ln() / tau2)
    }

    /// `P_l = H_l^(1/tau1) * V_l^(1/tau2)` (may overflow to infinity for small taus; the
    /// allocator itself uses [`LayerPreference::log_score`]).
    pub fn score(&self, tau1: f64, tau2: f64) -> f64 {
        self.log_score(tau1, tau2).map_or(0.0, f64::exp)
    }
}

/// Splits the shared budget among layers.
pub trait Allocator: Debug + Send + Sync {
    /// Short name, as [`AllocatorKind`] parses it (`FromStr`).
    fn name(&self) -> &'static str;

    /// True when [`Allocator::shares`] reads the layers' preferences (so the compressor
    /// must measure them).
    fn needs_preference(&self) -> bool {
        false
    }

    /// Relative shares of layers `0..preferences.len()` of a model with `num_layers`
    /// layers (during a cascade only the first layers are seen). `preferences[l]` is
    /// `Some` for every seen layer when [`Allocator::needs_preference`] is true.
    fn shares(&self, num_layers: usize, preferences: &[Option<LayerPreference>]) -> Vec<f64>;
}

/// The same share for every layer (SnapKV, H2O, TOVA, StreamingLLM budgets).
#[derive(Debug, Clone, Copy, Default)]
pub struct Uniform;

impl Allocator for Uniform {
    fn name(&self) -> &'static str {
        "uniform"
    }

    fn shares(&self, _: usize, preferences: &[Option<LayerPreference>]) -> Vec<f64> {
        vec![1.0; preferences.len()]
    }
}

/// PyramidKV's linear schedule: more cache in low layers.
///
/// With `x = C - w`, PyramidKV gives layer 0 `2x - x/beta` tokens and layer `L - 1`
/// `x/beta`, linearly in between, so the mean is `x`. Only the ratios matter here:
/// `share_l = (2 - 1/beta) - l * (2 - 2/beta) / (L - 1)`.
#[derive(Debug, Clone, Copy)]
pub struct Pyramid {
    /// Ratio of the mean budget to the last layer's budget (PyramidKV: 20).
    pub beta: f64,
}

impl Default for Pyramid {
    fn default() -> Self {
        Self { beta: 20.0 }
    }
}

impl Allocator for Pyramid {
    fn name(&self) -> &'static str {
        "pyramid"
    }

    fn shares(&self, num_layers: usize, preferences: &[Option<LayerPreference>]) -> Vec<f64> {
        let top = 2.0 - 1.0 / self.beta;
        let bottom = 1.0 / self.beta;
        let step = if num_layers > 1 {
            (top - bottom) / (num_layers - 1) as f64
        } else {
            0.0
        };
        (0..preferences.len())
            .map(|l| top - l as f64 * step)
            .collect()
    }
}

/// CAKE's layer preferences `P_l = H_l^(1/tau1) * V_l^(1/tau2)`.
#[derive(Debug, Clone, Copy)]
pub struct Preference {
    /// Temperature of the entropy term.
    pub tau1: f64,
    /// Temperature of the variance term.
    pub tau2: f64,
}

impl Default for Preference {
    fn default() -> Self {
        Self {
            tau1: 1.0,
            tau2: 1.0,
        }
    }
}

impl Allocator for Preference {
    fn name(&self) -> &'static str {
        "preference"
    }

    fn needs_preference(&self) -> bool {
        true
    }

    /// Shares `exp(ln P_l - max ln P)`: the ratios of `P_l` without overflow. A layer
    /// with no measured or no positive preference gets share 0.
    fn shares(&self, _: usize, preferences: &[Option<LayerPreference>]) -> Vec<f64> {
        let logs: Vec<Option<f64>> = preferences
            .iter()
            .map(|p| p.and_then(|p| p.log_score(self.tau1, self.tau2)))
            .collect();
        let max = logs
            .iter()
            .flatten()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        logs.iter()
            .map(|l| l.map_or(0.0, |l| (l - max).exp()))
            .collect()
    }
}

/// Fixed per-layer shares, e.g. from a fitted score function (`docs/algorithm.md`,
/// section 9): no window statistics at run time.
#[derive(Debug, Clone, PartialEq)]
pub struct Static {
    layer_shares: Vec<f64>,
    head_shares: Option<Vec<Vec<f64>>>,
}

impl Static {
    /// Fixed shares, one per layer (normalised here; non-positive or non-finite values
    /// become a small epsilon).
    pub fn from_shares(shares: Vec<f64>) -> Result<Self, ConfigError> {
        if shares.is_empty() {
            return Err(ConfigError::EmptyShares);
        }
        Ok(Self {
            layer_shares: normalise(shares),
            head_shares: None,
        })
    }

    /// Shares of a fitted score function for a model with `num_layers` layers.
    ///
    /// Per-KV-head polynomials, when present, give each head a share; since every KV
    /// head of a layer keeps the same number of tokens in a [`crate::LayerCache`], the
    /// layer's share is the mean of its heads' shares (the per-head values stay
    /// available through [`Static::head_shares`] for reporting).
    pub fn from_score_function(f: &ScoreFunction, num_layers: usize) -> Result<Self, ConfigError> {
        if f.num_layers != num_layers {
            return Err(ConfigError::LayerCountMismatch {
                file_layers: f.num_layers,
                model_layers: num_layers,
            });
        }
        match f.head_shares() {
            Some(heads) => {
                let layer = heads
                    .iter()
                    .map(|h| h.iter().sum::<f64>() / h.len().max(1) as f64)
                    .collect();
                Ok(Self {
                    layer_shares: normalise(layer),
                    head_shares: Some(heads),
                })
            }
            None => Self::from_shares(f.layer_shares()),
        }
    }

    /// Normalised per-layer shares (sum 1).
    pub fn layer_shares(&self) -> &[f64] {
        &self.layer_shares
    }

    /// Per-layer, per-KV-head shares `[L][Hkv]` when the score function has them.
    pub fn head_shares(&self) -> Option<&[Vec<f64>]> {
        self.head_shares.as_deref()
    }
}

impl Allocator for Static {
    fn name(&self) -> &'static str {
        "static"
    }

    /// The fixed shares of the first `preferences.len()` layers (a layer past the end of
    /// the table gets the smallest share).
    fn shares(&self, _: usize, preferences: &[Option<LayerPreference>]) -> Vec<f64> {
        (0..preferences.len())
            .map(|l| self.layer_shares.get(l).copied().unwrap_or(SHARE_EPSILON))
            .collect()
    }
}

/// Smallest share a static table may give (negative fitted values clamp to it).
pub const SHARE_EPSILON: f64 = 1e-6;

/// Clamps to [`SHARE_EPSILON`] and divides by the sum.
pub(crate) fn normalise(mut shares: Vec<f64>) -> Vec<f64> {
    for s in &mut shares {
        if !s.is_finite() || *s < SHARE_EPSILON {
            *s = SHARE_EPSILON;
        }
    }
    let sum: f64 = shares.iter().sum();
    shares.iter_mut().for_each(|s| *s /= sum);
    shares
}

crate::names::named_enum! {
    /// The allocators by name (flags, settings files, reports).
    pub enum AllocatorKind("allocator") {
        /// [`Uniform`].
        Uniform = "uniform",
        /// [`Pyramid`].
        Pyramid = "pyramid",
        /// [`Preference`].
        Preference = "preference",
        /// [`Static`] (needs a score-function file).
        Static = "static",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pyramid_is_linear_with_mean_one() {
        // beta = 20, L = 3: top = 1.95, bottom = 0.05, step 0.95 -> 1.95, 1.0, 0.05.
        let s = Pyramid { beta: 20.0 }.shares(3, &[None; 3]);
        let expected = [1.95, 1.0, 0.05];
        for (a, b) in s.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{s:?}");
        }
    }

    #[test]
    fn preference_ratios() {
        // H = e^2, V = e^1, tau1 = 2, tau2 = 0.5 -> ln P = 1 + 2 = 3;
        // H = e, V = e -> ln P = 0.5 + 2 = 2.5; share ratio e^-0.5 = 0.60653066.
        let p = Preference {
            tau1: 2.0,
            tau2: 0.5,
        };
        let e = std::f64::consts::E;
        let prefs = [
            Some(LayerPreference {
                entropy: e * e,
                variance: e,
            }),
            Some(LayerPreference {
                entropy: e,
                variance: e,
            }),
            Some(LayerPreference {
                entropy: 0.0,
                variance: 1.0,
            }),
        ];
        let s = p.shares(3, &prefs);
        assert!((s[0] - 1.0).abs() < 1e-12);
        assert!((s[1] - 0.606_530_659_712_633_4).abs() < 1e-12);
        assert_eq!(s[2], 0.0);
        assert!((prefs[0].unwrap().score(2.0, 0.5) - 3f64.exp()).abs() < 1e-9);
    }

    #[test]
    fn static_clamps_and_normalises() {
        let s = Static::from_shares(vec![3.0, -1.0, 1.0]).unwrap();
        let sum = 4.0 + SHARE_EPSILON;
        assert!((s.layer_shares()[0] - 3.0 / sum).abs() < 1e-12);
        assert!((s.layer_shares()[1] - SHARE_EPSILON / sum).abs() < 1e-15);
    }

    #[test]
    fn names_round_trip_and_unknown_lists_valid() {
        for &(k, n) in AllocatorKind::ALL {
            assert_eq!(n.parse::<AllocatorKind>().unwrap(), k);
        }
        let err = "pyramids".parse::<AllocatorKind>().unwrap_err().to_string();
        assert!(
            err.contains("uniform, pyramid, preference, static"),
            "{err}"
        );
    }
}
