//! A policy = a layer-budget [`Allocator`] x a token [`Scorer`], with its configuration
//! (`docs/algorithm.md`, section 8).

use std::sync::Arc;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::allocator::{Allocator, AllocatorKind, Preference, Pyramid, Uniform};
use crate::budget::BudgetPlan;
use crate::error::ConfigError;
use crate::heads::HeadBudgets;
use crate::scorer::{Cake, H2o, Scorer, ScorerKind, SnapKv, Streaming, Tova};
use crate::tau::{TauFile, TauLookup, TauSource, lookup_tau};

crate::names::named_enum! {
    /// Whether layers drop tokens while decoding.
    #[derive(Default)]
    pub enum DecodeEviction("decoding eviction") {
        /// Keep each layer at `budget_l + w` tokens by dropping the lowest-scored one
        /// (section 6).
        #[default]
        Policy = "policy",
        /// Never evict during decoding: the caches grow.
        None = "none",
    }
}

crate::names::named_enum! {
    /// The methods of the paper's comparison (section 8): the full cache, or a preset
    /// pairing of an allocator and a scorer (see [`Method::kinds`]).
    #[derive(Default)]
    pub enum Method("method") {
        /// Keep every token (the baseline; no policy runs).
        Full = "full",
        /// StreamingLLM: uniform budgets, attention sinks plus recent tokens.
        Streaming = "streaming",
        /// H2O: uniform budgets, accumulated attention.
        H2o = "h2o",
        /// TOVA: uniform budgets, the last query's attention.
        Tova = "tova",
        /// SnapKV: uniform budgets, pooled window attention.
        SnapKv = "snapkv",
        /// PyramidKV: linearly decreasing budgets, SnapKV's scores.
        PyramidKv = "pyramidkv",
        /// CAKE: preference-proportional budgets, CAKE's indicator.
        #[default]
        Cake = "cake",
    }
}

impl Method {
    /// The allocator and scorer of a method; `None` for [`Method::Full`], which keeps
    /// everything and runs no policy.
    pub fn kinds(self) -> Option<(AllocatorKind, ScorerKind)> {
        use AllocatorKind as A;
        use ScorerKind as S;
        Some(match self {
            Method::Full => return None,
            Method::Streaming => (A::Uniform, S::Streaming),
            Method::H2o => (A::Uniform, S::H2o),
            Method::Tova => (A::Uniform, S::Tova),
            Method::SnapKv => (A::Uniform, S::SnapKv),
            Method::PyramidKv => (A::Pyramid, S::SnapKv),
            Method::Cake => (A::Preference, S::Cake),
        })
    }
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
    /// How a layer's budget reaches its KV heads (section 10): `none` (every head keeps
    /// the layer's budget, the paper's rule), `preference`, `adakv` or `static`. Not
    /// serialised when `none`, so that settings written before it existed keep their
    /// identity.
    #[serde(skip_serializing_if = "HeadBudgets::is_none")]
    pub head_budgets: HeadBudgets,
    /// AdaKV's floor: with `head_budgets = adakv`, every KV head keeps at least this
    /// fraction of its layer's budget, in `[0, 1]` (0.2). Not serialised at its default.
    #[serde(skip_serializing_if = "is_default_floor")]
    pub head_floor: f64,
    /// The sink ablation, for every policy (`--sink N`): the first `sink` prompt tokens
    /// (positions `0..sink`) are kept in every layer and KV head, inside the layer's budget
    /// (they take its first places, so the budget still bounds what the layer holds; a
    /// layer whose budget is below `sink` keeps its first `budget` tokens). Applied where a
    /// scorer's scores meet the selection ([`crate::scorer::pin_sinks`]), in prefill and
    /// decoding alike. 0, the default, is the paper's rule. Not serialised when 0, so that
    /// settings written before it existed keep their identity. (Not StreamingLLM's
    /// `sinks`, which is that scorer's own parameter.)
    #[serde(skip_serializing_if = "is_zero")]
    pub sink: usize,
    /// StreamingLLM's attention sinks (the `streaming` scorer's parameter).
    pub sinks: usize,
    /// PyramidKV's beta.
    pub beta: f64,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// AdaKV's default floor fraction (`docs/algorithm.md`, section 10).
pub const DEFAULT_HEAD_FLOOR: f64 = 0.2;

fn is_default_floor(x: &f64) -> bool {
    *x == DEFAULT_HEAD_FLOOR
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
            head_budgets: HeadBudgets::None,
            head_floor: DEFAULT_HEAD_FLOOR,
            sink: 0,
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
        if !(0.0..=1.0).contains(&self.head_floor) {
            return Err(ConfigError::BadHeadFloor(self.head_floor));
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
    ///
    /// # Errors
    /// [`ConfigError::RatioCacheNotAboveWindow`] when a `ratio` gives a cache size of at
    /// most the window for this prompt (`round(ratio * S) <= w`): the budget shared by
    /// preference, `(C - w) * L`, would be 0. (A fixed `cache_size` above the window is
    /// checked by [`PolicyConfig::validate`].)
    pub fn plan(&self, prompt_len: usize, num_layers: usize) -> Result<BudgetPlan, ConfigError> {
        let cache_size = self.cache_size_for(prompt_len);
        if let Some(ratio) = self.ratio
            && cache_size <= self.window
        {
            return Err(ConfigError::RatioCacheNotAboveWindow {
                ratio,
                prompt_len,
                cache_size,
                window: self.window,
            });
        }
        Ok(BudgetPlan {
            prompt_len,
            window: self.window.min(prompt_len),
            cache_size,
            num_layers,
        })
    }

    /// The temperatures this config gives for `model`: the user's when both are set,
    /// else the published ones for the model at this cache size (missing ones filled),
    /// else 1.0 / 1.0 with [`TauSource::Fallback`].
    pub fn resolve_tau(&self, model: &str) -> TauLookup {
        self.resolve_tau_at(model, self.cache_size)
    }

    /// [`PolicyConfig::resolve_tau`] for an effective cache size `cache_size` (with a
    /// `ratio`, C is known only once the prompt is).
    pub fn resolve_tau_at(&self, model: &str, cache_size: usize) -> TauLookup {
        self.resolve_tau_in(None, model, cache_size)
    }

    /// [`PolicyConfig::resolve_tau_at`] with unset temperatures looked up in `file` (a
    /// `--tau-file` table) instead of the published table when given.
    pub fn resolve_tau_in(
        &self,
        file: Option<&TauFile>,
        model: &str,
        cache_size: usize,
    ) -> TauLookup {
        match (self.tau1, self.tau2) {
            (Some(tau1), Some(tau2)) => TauLookup {
                tau1,
                tau2,
                source: TauSource::User,
            },
            (t1, t2) => {
                let found = match file {
                    Some(file) => file.lookup(model, cache_size),
                    None => lookup_tau(model, cache_size),
                };
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

/// A layer-budget allocator paired with a token scorer, and their configuration. Every
/// policy evicts; the full cache is [`crate::KeepAll`] (see [`crate::PolicySpec`]).
#[derive(Debug, Clone)]
pub struct Policy<B: Backend> {
    name: String,
    allocator: Arc<dyn Allocator>,
    scorer: Arc<dyn Scorer<B>>,
    config: PolicyConfig,
    /// Set by [`Policy::with_published_taus`]: the model whose published temperatures
    /// fill unset ones once the effective cache size is known.
    tau_model: Option<String>,
    /// Set by [`Policy::with_tau_file`]: the table that replaces the published one.
    tau_file: Option<Arc<TauFile>>,
    /// Where the temperatures of the current prompt came from (set by
    /// [`Policy::for_cache_size`] when it looks them up).
    tau_source: Option<TauSource>,
    /// The allocator's kind when [`Policy::from_kinds`] built it from the config.
    allocator_kind: Option<AllocatorKind>,
    /// Fixed per-(layer, KV head) shares `[L][Hkv]` for `head_budgets = static`.
    head_shares: Option<Arc<Vec<Vec<f64>>>>,
}

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
            tau_model: None,
            tau_file: None,
            tau_source: None,
            allocator_kind: None,
            head_shares: None,
        })
    }

    /// A policy from allocator and scorer kinds (the static allocator needs a file: use
    /// [`Policy::new`] with [`crate::allocator::Static`], or [`crate::PolicySpec`]).
    pub fn from_kinds(
        allocator: AllocatorKind,
        scorer: ScorerKind,
        config: PolicyConfig,
    ) -> Result<Self, ConfigError> {
        let a = build_allocator(allocator, &config)?;
        let s = build_scorer::<B>(scorer, &config);
        let mut policy = Self::new(a, s, config)?;
        policy.allocator_kind = Some(allocator);
        Ok(policy)
    }

    /// A method of the paper's comparison (section 8), e.g. `Policy::preset(Method::Cake,
    /// &config)`. Cascading follows `config.cascading`. [`Method::Full`] is not a policy
    /// (it keeps everything): it gives [`ConfigError::FullIsNotAPolicy`].
    pub fn preset(method: Method, config: &PolicyConfig) -> Result<Self, ConfigError> {
        let (allocator, scorer) = method.kinds().ok_or(ConfigError::FullIsNotAPolicy)?;
        let mut policy = Self::from_kinds(allocator, scorer, config.clone())?;
        policy.name = format!("{method} ({allocator}+{scorer})");
        Ok(policy)
    }

    /// This policy with unset temperatures taken from the published table for `model`
    /// (`docs/algorithm.md` section 11), looked up at the effective cache size of each
    /// prompt (see [`Policy::for_cache_size`]).
    pub fn with_published_taus(mut self, model: &str) -> Self {
        self.tau_model = Some(model.to_string());
        self
    }

    /// [`Policy::with_published_taus`] with the table of `file` (e.g. written by `cake
    /// tune`) instead of the published one.
    ///
    /// # Errors
    /// [`ConfigError::TauFile`] when a preference allocator would look temperatures up
    /// and the file has no entry for `model` (never a silent `1.0 / 1.0`).
    pub fn with_tau_file(mut self, model: &str, file: TauFile) -> Result<Self, ConfigError> {
        let looks_up = self.allocator_kind == Some(AllocatorKind::Preference)
            && (self.config.tau1.is_none() || self.config.tau2.is_none());
        if looks_up {
            file.require_model(model)?;
        }
        self.tau_model = Some(model.to_string());
        self.tau_file = Some(Arc::new(file));
        Ok(self)
    }

    /// The policy that runs on a prompt whose effective cache size is `cache_size`: with
    /// [`Policy::with_published_taus`] and a preference allocator built from the config,
    /// unset temperatures are filled from the table at `cache_size` (so a `ratio` budget
    /// gets the temperatures of the C it yields); otherwise an unchanged copy.
    pub fn for_cache_size(&self, cache_size: usize) -> Self {
        let mut policy = self.clone();
        if let Some(model) = policy.tau_model.take()
            && self.allocator_kind == Some(AllocatorKind::Preference)
        {
            let taus = self
                .config
                .resolve_tau_in(self.tau_file.as_deref(), &model, cache_size);
            policy.config.tau1 = Some(taus.tau1);
            policy.config.tau2 = Some(taus.tau2);
            policy.allocator = Arc::new(Preference {
                tau1: taus.tau1,
                tau2: taus.tau2,
            });
            policy.tau_source = Some(taus.source);
        }
        policy
    }

    /// This policy with fixed per-(layer, KV head) shares `[L][Hkv]` (a fitted score
    /// function's, see [`crate::allocator::Static::head_shares`]), which
    /// `head_budgets = static` shares the budget by.
    pub fn with_head_shares(mut self, shares: Vec<Vec<f64>>) -> Self {
        self.head_shares = Some(Arc::new(shares));
        self
    }

    /// The fixed per-head shares, when set.
    pub fn head_shares(&self) -> Option<&[Vec<f64>]> {
        self.head_shares.as_deref().map(Vec::as_slice)
    }

    /// Where this policy's temperatures came from, once [`Policy::for_cache_size`] looked
    /// them up (`None` before, or when it had nothing to look up).
    pub fn tau_source(&self) -> Option<&TauSource> {
        self.tau_source.as_ref()
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
        let cases: [(PolicyConfig, &str); 11] = [
            (
                PolicyConfig {
                    cache_size: 0,
                    ..d.clone()
                },
                "cache_size is 0",
            ),
            (
                PolicyConfig {
                    cache_size: 32,
                    ..d.clone()
                },
                "must exceed window 32",
            ),
            (
                PolicyConfig {
                    window: 0,
                    ..d.clone()
                },
                "window is 0",
            ),
            (
                PolicyConfig {
                    ratio: Some(0.0),
                    ..d.clone()
                },
                "outside (0, 1]",
            ),
            (
                PolicyConfig {
                    ratio: Some(1.5),
                    ..d.clone()
                },
                "outside (0, 1]",
            ),
            (
                PolicyConfig {
                    ratio: Some(f64::NAN),
                    ..d.clone()
                },
                "outside",
            ),
            (
                PolicyConfig {
                    tau1: Some(0.0),
                    ..d.clone()
                },
                "tau1",
            ),
            (
                PolicyConfig {
                    tau2: Some(f64::INFINITY),
                    ..d.clone()
                },
                "tau2",
            ),
            (
                PolicyConfig {
                    gamma: -1.0,
                    ..d.clone()
                },
                "gamma",
            ),
            (
                PolicyConfig {
                    beta: 0.5,
                    ..d.clone()
                },
                "beta",
            ),
            (
                PolicyConfig {
                    pool_kernel: 4,
                    ..d.clone()
                },
                "odd",
            ),
        ];
        for (config, want) in cases {
            let message = err(config.clone());
            assert!(message.contains(want), "{config:?}: {message}");
        }
        // With a ratio the cache size is not used.
        let by_ratio = PolicyConfig {
            ratio: Some(1.0),
            cache_size: 0,
            ..d
        };
        assert!(by_ratio.validate().is_ok());
    }

    #[test]
    fn presets_and_pairs() {
        let c = PolicyConfig::default();
        for &(method, name) in Method::ALL {
            match Policy::<B>::preset(method, &c) {
                Ok(p) => assert!(p.name().starts_with(name)),
                Err(e) => assert!(method == Method::Full && e.to_string().contains("KeepAll")),
            }
        }
        let cake = Policy::<B>::preset("CAKE".parse().unwrap(), &c).unwrap();
        assert_eq!(
            (cake.allocator().name(), cake.scorer().name()),
            ("preference", "cake")
        );
        assert_eq!(cake.name(), "cake (preference+cake)");
        let pyr = Policy::<B>::preset(Method::PyramidKv, &c).unwrap();
        assert_eq!(
            (pyr.allocator().name(), pyr.scorer().name()),
            ("pyramid", "snapkv")
        );
        let e = "snap".parse::<Method>().unwrap_err().to_string();
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
        assert!(Policy::<B>::preset(Method::Cake, &bad).is_err());
    }

    #[test]
    fn published_taus_follow_the_effective_cache_size() {
        // Llama-3.1-8B-Instruct's table: C = 128 -> (1.6, 0.6); a ratio of 1/64 of an
        // 8192-token prompt is C = 128 too, whatever `cache_size` says.
        let model = "meta-llama/Llama-3.1-8B-Instruct";
        let config = PolicyConfig {
            ratio: Some(1.0 / 64.0),
            ..PolicyConfig::default()
        };
        let policy = Policy::<B>::preset(Method::Cake, &config)
            .unwrap()
            .with_published_taus(model);
        let at = policy.for_cache_size(config.cache_size_for(8192));
        assert_eq!(
            at.config().taus(),
            (
                config.resolve_tau_at(model, 128).tau1,
                config.resolve_tau_at(model, 128).tau2
            )
        );
        assert_eq!(at.config().taus(), (1.6, 0.6));
        // User temperatures are never replaced; other allocators are untouched.
        let user = PolicyConfig {
            tau1: Some(2.0),
            tau2: Some(3.0),
            ..config.clone()
        };
        let p = Policy::<B>::preset(Method::Cake, &user)
            .unwrap()
            .with_published_taus(model);
        assert_eq!(p.for_cache_size(128).config().taus(), (2.0, 3.0));
        let snap = Policy::<B>::preset(Method::SnapKv, &config)
            .unwrap()
            .with_published_taus(model);
        assert_eq!(snap.for_cache_size(128).config().tau1, None);
    }

    #[test]
    fn a_tau_file_replaces_the_published_table() {
        let model = "meta-llama/Llama-3.1-8B-Instruct";
        let file = TauFile {
            path: "my/taus.json".into(),
            table: crate::tau::TauTable::parse(
                r#"{"entries": [{"model": "Llama-3.1-8B-Instruct", "cache_size": 100, "tau1": 3.0, "tau2": 0.25}]}"#,
                "my/taus.json",
            )
            .unwrap(),
        };
        let config = PolicyConfig::default();
        let policy = Policy::<B>::preset(Method::Cake, &config)
            .unwrap()
            .with_tau_file(model, file.clone())
            .unwrap();
        assert_eq!(policy.tau_source(), None);
        let at = policy.for_cache_size(128);
        assert_eq!(at.config().taus(), (3.0, 0.25));
        assert_eq!(
            at.tau_source(),
            Some(&TauSource::File {
                path: "my/taus.json".into(),
                model: "Llama-3.1-8B-Instruct".into(),
                cache_size: 100
            })
        );
        // Without the file: the published values, and their source.
        let published = Policy::<B>::preset(Method::Cake, &config)
            .unwrap()
            .with_published_taus(model)
            .for_cache_size(128);
        assert_eq!(published.config().taus(), (1.6, 0.6));
        assert!(matches!(
            published.tau_source(),
            Some(TauSource::Published { .. })
        ));
        // A model the file lacks is an error for CAKE, not for SnapKV or user taus.
        let err = Policy::<B>::preset(Method::Cake, &config)
            .unwrap()
            .with_tau_file("Qwen2.5-7B-Instruct", file.clone())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("my/taus.json") && err.contains("Qwen2.5-7B"),
            "{err}"
        );
        assert!(
            Policy::<B>::preset(Method::SnapKv, &config)
                .unwrap()
                .with_tau_file("Qwen2.5-7B-Instruct", file.clone())
                .is_ok()
        );
        let user = PolicyConfig {
            tau1: Some(2.0),
            tau2: Some(0.5),
            ..config
        };
        let p = Policy::<B>::preset(Method::Cake, &user)
            .unwrap()
            .with_tau_file("Qwen2.5-7B-Instruct", file)
            .unwrap()
            .for_cache_size(128);
        assert_eq!(p.config().taus(), (2.0, 0.5));
        assert_eq!(p.tau_source(), Some(&TauSource::User));
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
        assert_eq!(r.plan(1000, 30).unwrap().cache_size, 100);
        assert_eq!(r.plan(1000, 30).unwrap().total(), (100 - 32) * 30);
    }

    /// A ratio whose cache size does not exceed the window for this prompt is an error
    /// naming the ratio, the prompt length and the window (it used to give a shared budget
    /// of 0 silently); one token above the window is enough.
    #[test]
    fn a_ratio_at_or_below_the_window_is_an_error() {
        let r = PolicyConfig {
            ratio: Some(0.01),
            ..PolicyConfig::default()
        };
        // round(0.01 * 1000) = 10 <= 32.
        let err = r.plan(1000, 30).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::RatioCacheNotAboveWindow {
                    prompt_len: 1000,
                    cache_size: 10,
                    window: 32,
                    ..
                }
            ),
            "{err:?}"
        );
        let message = err.to_string();
        for want in ["ratio 0.01", "1000-token prompt", "window 32", "cache_size"] {
            assert!(message.contains(want), "{message}");
        }
        // round(0.01 * 3200) = 32 = w: still nothing outside the window.
        assert!(r.plan(3200, 30).is_err());
        // round(0.01 * 3300) = 33 > w: a budget of one token per layer.
        assert_eq!(r.plan(3300, 30).unwrap().total(), 30);
        // A prompt shorter than the window: no ratio can keep anything outside it.
        let whole = PolicyConfig {
            ratio: Some(1.0),
            ..PolicyConfig::default()
        };
        assert!(whole.plan(20, 30).is_err());
        // A fixed cache size is never refused here (validate checks it).
        assert_eq!(
            PolicyConfig::default().plan(20, 30).unwrap().cache_size,
            1024
        );
    }
}
