//! A policy = a layer-budget [`Allocator`] x a token [`Scorer`], with its configuration
//! (`cake-algorithm.md`, section 8).

use std::sync::Arc;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::allocator::{Allocator, AllocatorKind, Preference, Pyramid, Uniform};
use crate::budget::BudgetPlan;
use crate::error::ConfigError;
use crate::scorer::{Cake, H2o, Scorer, ScorerKind, SnapKv, Streaming, Tova};
use crate::tau::{TauLookup, TauSource, lookup_tau};

/// Whether layers drop tokens while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecodeEviction {
    /// Keep each layer at `budget_l + w` tokens by dropping the lowest-scored one
    /// (section 6).
    #[default]
    Policy,
    /// Never evict during decoding: the caches grow.
    None,
}

/// Everything that tunes a policy. `Default` gives the paper's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// C: average tokens kept per layer, window included (ignored when `ratio` is set).
    pub cache_size: usize,
    /// When set, C = round(ratio * S) for a prompt of S tokens, in `(0, 1]`.
    pub ratio: Option<f64>,
    /// w: the observation / recent window, always kept.
    pub window: usize,
    /// Entropy temperature; `None`: the model's published value (see
    /// [`PolicyConfig::with_model_defaults`]), else 1.0.
    pub tau1: Option<f64>,
    /// Variance temperature; `None` as for `tau1`.
    pub tau2: Option<f64>,
    /// Weight of the variance term of CAKE's indicator.
    pub gamma: f64,
    /// Width of the average pooling over key positions (odd; 1 = none).
    pub pool_kernel: usize,
    /// Evict layer by layer during prefill (bounded memory) instead of once at the end.
    pub cascading: bool,
    /// Decoding-time eviction.
    pub decode_evict: DecodeEviction,
    /// Amortised decoding eviction: a layer may hold up to `budget + w + decode_slack`
    /// tokens and then drops `decode_slack + 1` at once (0, the default, is the paper's
    /// one-token-per-step rule). Not serialised when 0, so that settings written before
    /// it existed keep their identity.
    #[serde(skip_serializing_if = "is_zero")]
    pub decode_slack: usize,
    /// StreamingLLM's attention sinks.
    pub sinks: usize,
    /// PyramidKV's beta.
    pub beta: f64,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            cache_size: 1024,
            ratio: None,
            window: 32,
            tau1: None,
            tau2: None,
            gamma: 200.0,
            pool_kernel: 5,
            cascading: true,
            decode_evict: DecodeEviction::Policy,
            decode_slack: 0,
            sinks: 4,
            beta: 20.0,
        }
    }
}

impl PolicyConfig {
    /// Checks every field; a budget larger than the prompt is not an error (the layer
    /// keeps everything).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.window == 0 {
            return Err(ConfigError::WindowZero);
        }
        match self.ratio {
            Some(r) if !(r > 0.0 && r <= 1.0) => return Err(ConfigError::RatioOutOfRange(r)),
            Some(_) => {}
            None if self.cache_size == 0 => return Err(ConfigError::CacheSizeZero),
            None if self.cache_size <= self.window => {
                return Err(ConfigError::CacheSizeNotAboveWindow {
                    cache_size: self.cache_size,
                    window: self.window,
                });
            }
            None => {}
        }
        for (name, tau) in [("tau1", self.tau1), ("tau2", self.tau2)] {
            if let Some(value) = tau
                && !(value.is_finite() && value > 0.0)
            {
                return Err(ConfigError::BadTemperature { name, value });
            }
        }
        if !(self.gamma.is_finite() && self.gamma >= 0.0) {
            return Err(ConfigError::BadGamma(self.gamma));
        }
        if !(self.beta.is_finite() && self.beta >= 1.0) {
            return Err(ConfigError::BadBeta(self.beta));
        }
        if self.pool_kernel.is_multiple_of(2) {
            return Err(ConfigError::BadPoolKernel(self.pool_kernel));
        }
        Ok(())
    }

    /// Cache size C for a prompt of `prompt_len` tokens.
    pub fn cache_size_for(&self, prompt_len: usize) -> usize {
        match self.ratio {
            Some(r) => (r * prompt_len as f64).round() as usize,
            None => self.cache_size,
        }
    }

    /// The budget plan of a prompt of `prompt_len` tokens in a model of `num_layers`.
    pub fn plan(&self, prompt_len: usize, num_layers: usize) -> BudgetPlan {
        BudgetPlan {
            prompt_len,
            window: self.window.min(prompt_len),
            cache_size: self.cache_size_for(prompt_len),
            num_layers,
        }
    }

    /// The temperatures this config gives for `model`: the user's when both are set,
    /// else the published ones for the model at this cache size (missing ones filled),
    /// else 1.0 / 1.0 with [`TauSource::Fallback`].
    pub fn resolve_tau(&self, model: &str) -> TauLookup {
        match (self.tau1, self.tau2) {
            (Some(tau1), Some(tau2)) => TauLookup {
                tau1,
                tau2,
                source: TauSource::User,
            },
            (t1, t2) => {
                let found = lookup_tau(model, self.cache_size);
                TauLookup {
                    tau1: t1.unwrap_or(found.tau1),
                    tau2: t2.unwrap_or(found.tau2),
                    source: found.source,
                }
            }
        }
    }

    /// This config with unset temperatures filled from the published table for `model`,
    /// and where they came from.
    pub fn with_model_defaults(mut self, model: &str) -> (Self, TauSource) {
        let t = self.resolve_tau(model);
        self.tau1 = Some(t.tau1);
        self.tau2 = Some(t.tau2);
        (self, t.source)
    }

    /// `(tau1, tau2)`, 1.0 for unset ones.
    pub fn taus(&self) -> (f64, f64) {
        (self.tau1.unwrap_or(1.0), self.tau2.unwrap_or(1.0))
    }
}

/// A layer-budget allocator paired with a token scorer, and their configuration.
#[derive(Debug, Clone)]
pub struct Policy<B: Backend> {
    name: String,
    allocator: Arc<dyn Allocator>,
    scorer: Arc<dyn Scorer<B>>,
    config: PolicyConfig,
    keep_all: bool,
}

/// The preset names of [`Policy::preset`].
pub const PRESETS: [&str; 7] = [
    "full",
    "streaming",
    "h2o",
    "tova",
    "snapkv",
    "pyramidkv",
    "cake",
];

impl<B: Backend> Policy<B> {
    /// Any allocator with any scorer (e.g. CAKE allocation with the SnapKV scorer).
    pub fn new(
        allocator: Arc<dyn Allocator>,
        scorer: Arc<dyn Scorer<B>>,
        config: PolicyConfig,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            name: format!("{}+{}", allocator.name(), scorer.name()),
            allocator,
            scorer,
            config,
            keep_all: false,
        })
    }

    /// A policy from allocator and scorer names (the static allocator needs a file: use
    /// [`Policy::new`] with [`crate::allocator::Static`]).
    pub fn from_kinds(
        allocator: AllocatorKind,
        scorer: ScorerKind,
        config: PolicyConfig,
    ) -> Result<Self, ConfigError> {
        let a = build_allocator(allocator, &config)?;
        let s = build_scorer::<B>(scorer, &config);
        Self::new(a, s, config)
    }

    /// A named method of the paper's comparison (section 8): `full`, `streaming`, `h2o`,
    /// `tova`, `snapkv`, `pyramidkv` or `cake`. Cascading follows `config.cascading`.
    pub fn preset(name: &str, config: &PolicyConfig) -> Result<Self, ConfigError> {
        let config = config.clone();
        let key = name.trim().to_ascii_lowercase();
        if key == "full" {
            config.validate()?;
            return Ok(Self {
                name: "full".into(),
                allocator: Arc::new(Uniform),
                scorer: Arc::new(Streaming { sinks: 0 }),
                config,
                keep_all: true,
            });
        }
        let Some((allocator, scorer)) = preset_kinds(&key) else {
            return Err(ConfigError::UnknownName {
                what: "preset",
                name: name.to_string(),
                valid: PRESETS.join(", "),
            });
        };
        let mut policy = Self::from_kinds(allocator, scorer, config)?;
        policy.name = name.trim().to_ascii_lowercase();
        policy
            .name
            .push_str(&format!(" ({}+{})", allocator.name(), scorer.name()));
        Ok(policy)
    }

    /// Display name, e.g. `cake (preference+cake)` or `uniform+snapkv`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The allocator.
    pub fn allocator(&self) -> &dyn Allocator {
        self.allocator.as_ref()
    }

    /// The scorer.
    pub fn scorer(&self) -> &dyn Scorer<B> {
        self.scorer.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// True for the full cache (nothing is ever evicted).
    pub fn keeps_all(&self) -> bool {
        self.keep_all
    }
}

/// The allocator and scorer of a compressing preset (`None` for `full` and unknown names),
/// e.g. to override one of them.
pub fn preset_kinds(name: &str) -> Option<(AllocatorKind, ScorerKind)> {
    use AllocatorKind as A;
    use ScorerKind as S;
    Some(match name {
        "streaming" => (A::Uniform, S::Streaming),
        "h2o" => (A::Uniform, S::H2o),
        "tova" => (A::Uniform, S::Tova),
        "snapkv" => (A::Uniform, S::SnapKv),
        "pyramidkv" => (A::Pyramid, S::SnapKv),
        "cake" => (A::Preference, S::Cake),
        _ => return None,
    })
}

/// The allocator of a kind with this config's parameters.
pub fn build_allocator(
    kind: AllocatorKind,
    config: &PolicyConfig,
) -> Result<Arc<dyn Allocator>, ConfigError> {
    let (tau1, tau2) = config.taus();
    Ok(match kind {
        AllocatorKind::Uniform => Arc::new(Uniform),
        AllocatorKind::Pyramid => Arc::new(Pyramid { beta: config.beta }),
        AllocatorKind::Preference => Arc::new(Preference { tau1, tau2 }),
        AllocatorKind::Static => return Err(ConfigError::StaticNeedsFile),
    })
}

/// The scorer of a kind with this config's parameters.
pub fn build_scorer<B: Backend>(kind: ScorerKind, config: &PolicyConfig) -> Arc<dyn Scorer<B>> {
    match kind {
        ScorerKind::Streaming => Arc::new(Streaming {
            sinks: config.sinks,
        }),
        ScorerKind::H2o => Arc::new(H2o::default()),
        ScorerKind::Tova => Arc::new(Tova),
        ScorerKind::SnapKv => Arc::new(SnapKv {
            pool_kernel: config.pool_kernel,
        }),
        ScorerKind::Cake => Arc::new(Cake {
            gamma: config.gamma,
            pool_kernel: config.pool_kernel,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn_flex::Flex;

    fn err(config: PolicyConfig) -> String {
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn validation_names_the_problem() {
        let d = PolicyConfig::default();
        assert!(d.validate().is_ok());
        assert!(
            err(PolicyConfig {
                cache_size: 0,
                ..d.clone()
            })
            .contains("cache_size is 0")
        );
        assert!(
            err(PolicyConfig {
                cache_size: 32,
                ..d.clone()
            })
            .contains("must exceed window 32")
        );
        assert!(
            err(PolicyConfig {
                window: 0,
                ..d.clone()
            })
            .contains("window is 0")
        );
        assert!(
            err(PolicyConfig {
                ratio: Some(0.0),
                ..d.clone()
            })
            .contains("outside (0, 1]")
        );
        assert!(
            err(PolicyConfig {
                ratio: Some(1.5),
                ..d.clone()
            })
            .contains("outside (0, 1]")
        );
        assert!(
            err(PolicyConfig {
                ratio: Some(f64::NAN),
                ..d.clone()
            })
            .contains("outside")
        );
        // With a ratio the cache size is not used.
        assert!(
            PolicyConfig {
                ratio: Some(1.0),
                cache_size: 0,
                ..d.clone()
            }
            .validate()
            .is_ok()
        );
        assert!(
            err(PolicyConfig {
                tau1: Some(0.0),
                ..d.clone()
            })
            .contains("tau1")
        );
        assert!(
            err(PolicyConfig {
                tau2: Some(f64::INFINITY),
                ..d.clone()
            })
            .contains("tau2")
        );
        assert!(
            err(PolicyConfig {
                gamma: -1.0,
                ..d.clone()
            })
            .contains("gamma")
        );
        assert!(
            err(PolicyConfig {
                beta: 0.5,
                ..d.clone()
            })
            .contains("beta")
        );
        assert!(
            err(PolicyConfig {
                pool_kernel: 4,
                ..d.clone()
            })
            .contains("odd")
        );
    }

    #[test]
    fn presets_and_pairs() {
        let c = PolicyConfig::default();
        for name in PRESETS {
            let p = Policy::<B>::preset(name, &c).unwrap();
            assert!(p.name().starts_with(name));
        }
        let cake = Policy::<B>::preset("CAKE", &c).unwrap();
        assert_eq!(
            (cake.allocator().name(), cake.scorer().name()),
            ("preference", "cake")
        );
        let pyr = Policy::<B>::preset("pyramidkv", &c).unwrap();
        assert_eq!(
            (pyr.allocator().name(), pyr.scorer().name()),
            ("pyramid", "snapkv")
        );
        let e = Policy::<B>::preset("snap", &c).unwrap_err().to_string();
        assert!(
            e.contains("full, streaming, h2o, tova, snapkv, pyramidkv, cake"),
            "{e}"
        );
        let ablation = Policy::<B>::from_kinds(
            "preference".parse().unwrap(),
            "snapkv".parse().unwrap(),
            c.clone(),
        )
        .unwrap();
        assert_eq!(ablation.name(), "preference+snapkv");
        assert!(matches!(
            Policy::<B>::from_kinds(AllocatorKind::Static, ScorerKind::Cake, c.clone()),
            Err(ConfigError::StaticNeedsFile)
        ));
        let e = "heavy".parse::<ScorerKind>().unwrap_err().to_string();
        assert!(e.contains("streaming, h2o, tova, snapkv, cake"), "{e}");
        let bad = PolicyConfig { window: 0, ..c };
        assert!(Policy::<B>::preset("cake", &bad).is_err());
    }

    #[test]
    fn config_serde_and_model_taus() {
        let c: PolicyConfig =
            serde_json::from_str(r#"{"cache_size": 128, "decode_evict": "none"}"#).unwrap();
        assert_eq!(
            (c.cache_size, c.window, c.decode_evict),
            (128, 32, DecodeEviction::None)
        );
        assert!(serde_json::from_str::<PolicyConfig>(r#"{"cache": 1}"#).is_err());
        let (c, source) = c.with_model_defaults("meta-llama/Llama-3.1-8B-Instruct");
        assert_eq!((c.tau1, c.tau2), (Some(1.6), Some(0.6)));
        assert!(matches!(
            source,
            TauSource::Published {
                cache_size: 128,
                ..
            }
        ));
        let user = PolicyConfig {
            tau1: Some(2.0),
            tau2: Some(3.0),
            ..PolicyConfig::default()
        };
        assert_eq!(
            user.resolve_tau("Llama-3.1-8B-Instruct").source,
            TauSource::User
        );
        let half = PolicyConfig {
            tau1: Some(2.0),
            ..PolicyConfig::default()
        };
        let t = half.resolve_tau("Qwen2.5-7B-Instruct");
        assert_eq!((t.tau1, t.tau2), (2.0, 0.6));
        assert_eq!(
            PolicyConfig::default().resolve_tau("SmolLM2-135M").source,
            TauSource::Fallback
        );
        // Ratio budgets.
        let r = PolicyConfig {
            ratio: Some(0.1),
            ..PolicyConfig::default()
        };
        assert_eq!(r.plan(1000, 30).cache_size, 100);
        assert_eq!(r.plan(1000, 30).total(), (100 - 32) * 30);
    }
}
