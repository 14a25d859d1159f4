//! [`PolicySpec`]: a whole KV-cache policy described by value (what the command line and
//! settings files say), validated once and built into a [`Compressor`] by one factory.
//!
//! ```
//! use cake_core::{AllocatorKind, Compressor, ConfigError, LayerCache, Method, PolicySpec};
//!
//! type B = burn_flex::Flex;
//! let spec = PolicySpec { method: Method::Cake, ..PolicySpec::default() };
//! spec.validate()?;
//! assert_eq!(spec.label(), "cake-c1024-w32");
//! // What a model's prefill and decoding steps call (see `cake-models`' `Model::prefill`).
//! let compressor = spec.compressor::<B>("Llama-3.1-8B-Instruct", 32)?;
//! assert!(matches!(compressor, Compressor::Policy(_)));
//! // The full cache is a spec too: its compressor keeps everything and reports nothing.
//! let full = PolicySpec::new(Method::Full).compressor::<B>("Llama-3.1-8B-Instruct", 32)?;
//! let caches: Vec<LayerCache<B>> = (0..32).map(|_| LayerCache::new()).collect();
//! assert!(full.report(&caches).is_none());
//! // The static allocator needs its score-function file: refused before any model runs.
//! let no_file = PolicySpec { allocator: Some(AllocatorKind::Static), ..spec };
//! assert!(matches!(no_file.validate(), Err(ConfigError::StaticNeedsFile)));
//! # Ok::<(), ConfigError>(())
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::LayerCache;
use crate::allocator::{AllocatorKind, Static};
use crate::cascade::{CompressionReport, PolicyCompressor};
use crate::compressor::{DecodeStep, KvCompressor, PrefillLayer};
use crate::error::{CacheError, ConfigError};
use crate::heads::HeadBudgets;
use crate::policy::{DEFAULT_HEAD_FLOOR, Method, Policy, PolicyConfig, build_scorer};
use crate::score_function::ScoreFunction;
use crate::scorer::ScorerKind;
use crate::tau::TauFile;

/// A policy by value: a method, optional overrides of its allocator or scorer, the
/// static allocator's score-function file, and the tuning. Serialises with the keys of
/// the settings file (`policy`, `allocator`, `scorer`, `score_fn`, `tau_file`, `cache`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// The method; `full` keeps everything.
    #[serde(rename = "policy")]
    pub method: Method,
    /// Replaces the method's allocator (an ablation such as CAKE allocation with SnapKV
    /// scores).
    pub allocator: Option<AllocatorKind>,
    /// Replaces the method's scorer.
    pub scorer: Option<ScorerKind>,
    /// Score-function file of the static allocator (written by `cake fit`).
    pub score_fn: Option<PathBuf>,
    /// Temperature table file (the published table's format, e.g. written by `cake
    /// tune`) that replaces the published table for unset temperatures. Not serialised
    /// when unset, so that settings written before it existed keep their identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tau_file: Option<PathBuf>,
    /// Everything that tunes the policy.
    #[serde(default)]
    pub cache: PolicyConfig,
}

impl PolicySpec {
    /// The spec of a method with default tuning.
    pub fn new(method: Method) -> Self {
        Self {
            method,
            ..Self::default()
        }
    }

    /// Checks the whole spec: the tuning, the overrides against the method, and that the
    /// static allocator has its file (the file itself is read by [`PolicySpec::compressor`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.cache.validate()?;
        if self.method == Method::Full
            && (self.allocator.is_some()
                || self.scorer.is_some()
                || !self.cache.head_budgets.is_none())
        {
            return Err(ConfigError::FullHasNoParts);
        }
        let static_heads = self.cache.head_budgets == HeadBudgets::Static;
        match (self.allocator, &self.score_fn) {
            (Some(AllocatorKind::Static), None) => Err(ConfigError::StaticNeedsFile),
            (_, None) if static_heads => Err(ConfigError::StaticHeadsNeedFile),
            (Some(AllocatorKind::Static), Some(_)) | (_, None) => Ok(()),
            (_, Some(_)) if static_heads => Ok(()),
            (_, Some(_)) => Err(ConfigError::ScoreFunctionUnused),
        }
    }

    /// The allocator and scorer that run, overrides applied; `None` for `full`.
    pub fn kinds(&self) -> Option<(AllocatorKind, ScorerKind)> {
        let (allocator, scorer) = self.method.kinds()?;
        Some((
            self.allocator.unwrap_or(allocator),
            self.scorer.unwrap_or(scorer),
        ))
    }

    /// True for the full cache (nothing is ever evicted).
    pub fn keeps_all(&self) -> bool {
        self.kinds().is_none()
    }

    /// The policy's name: the method (`cake`, `full`), or `allocator+scorer` when either
    /// is overridden (`static+cake`, `preference+snapkv`).
    pub fn name(&self) -> String {
        match (self.allocator, self.scorer, self.kinds()) {
            (None, None, _) | (_, _, None) => self.method.to_string(),
            (_, _, Some((allocator, scorer))) => format!("{allocator}+{scorer}"),
        }
    }

    /// A short label for folder names and tables, e.g. `cake-c256-w32`,
    /// `preference+snapkv-r0.1-w32-oneshot`, `snapkv-c64-w32-sink8` (the sink ablation).
    pub fn label(&self) -> String {
        let mut label = self.name();
        let c = &self.cache;
        match c.ratio {
            Some(r) => label.push_str(&format!("-r{r}")),
            None => label.push_str(&format!("-c{}", c.cache_size)),
        }
        label.push_str(&format!("-w{}", c.window));
        if !c.cascading {
            label.push_str("-oneshot");
        }
        if c.decode_slack > 0 {
            label.push_str(&format!("-slack{}", c.decode_slack));
        }
        if !c.head_budgets.is_none() {
            label.push_str(&format!("-heads-{}", c.head_budgets));
            if c.head_budgets == HeadBudgets::AdaKv && c.head_floor != DEFAULT_HEAD_FLOOR {
                label.push_str(&format!("{}", c.head_floor));
            }
        }
        if c.sink > 0 {
            label.push_str(&format!("-sink{}", c.sink));
        }
        label
    }

    /// The policy for a model named `model` (unset temperatures come from its published
    /// values, or from the `tau_file` table when set, at each prompt's effective cache
    /// size) with `num_layers` layers; `None` for `full`. Reads the static allocator's
    /// score-function file and the temperature file.
    pub fn policy<B: Backend>(
        &self,
        model: &str,
        num_layers: usize,
    ) -> Result<Option<Policy<B>>, ConfigError> {
        self.validate()?;
        let Some((allocator, scorer)) = self.kinds() else {
            return Ok(None);
        };
        let function = match &self.score_fn {
            Some(path) => Some(ScoreFunction::from_path(path)?),
            None => None,
        };
        let mut policy = match (self.allocator, self.scorer, &function) {
            (Some(AllocatorKind::Static), _, Some(function)) => {
                let allocator = Static::from_score_function(function, num_layers)?;
                let scorer = build_scorer::<B>(scorer, &self.cache);
                Policy::new(Arc::new(allocator), scorer, self.cache.clone())?
            }
            (None, None, _) => Policy::preset(self.method, &self.cache)?,
            _ => Policy::from_kinds(allocator, scorer, self.cache.clone())?,
        };
        if self.cache.head_budgets == HeadBudgets::Static
            && let (Some(function), Some(path)) = (&function, &self.score_fn)
        {
            let statics = Static::from_score_function(function, num_layers)?;
            let Some(shares) = statics.head_shares() else {
                return Err(ConfigError::NoHeadShares {
                    path: path.display().to_string(),
                });
            };
            policy = policy.with_head_shares(shares.to_vec());
        }
        Ok(Some(match &self.tau_file {
            Some(path) => policy.with_tau_file(model, TauFile::read(path)?)?,
            None => policy.with_published_taus(model),
        }))
    }

    /// The compressor this spec describes for a model named `model` with `num_layers`
    /// layers: [`Compressor::KeepAll`] for `full`, else the policy's.
    pub fn compressor<B: Backend>(
        &self,
        model: &str,
        num_layers: usize,
    ) -> Result<Compressor<B>, ConfigError> {
        Ok(match self.policy(model, num_layers)? {
            None => Compressor::KeepAll,
            Some(policy) => Compressor::Policy(Box::new(PolicyCompressor::new(policy, num_layers))),
        })
    }
}

/// What a [`PolicySpec`] builds: the full cache (as [`crate::KeepAll`]), or a policy run
/// through the hooks.
#[derive(Debug, Clone)]
pub enum Compressor<B: Backend> {
    /// Keeps everything.
    KeepAll,
    /// Evicts with a policy.
    Policy(Box<PolicyCompressor<B>>),
}

impl<B: Backend> Compressor<B> {
    /// What the policy did to the current prompt (`None` for the full cache).
    pub fn report(&self, caches: &[LayerCache<B>]) -> Option<CompressionReport> {
        match self {
            Compressor::KeepAll => None,
            Compressor::Policy(compressor) => Some(compressor.report(caches)),
        }
    }

    /// Rows appended to every KV head after the prefill without the decoding hooks (a
    /// question read after compression) stay while decoding: see
    /// [`PolicyCompressor::keep_appended`]. Nothing to do for the full cache.
    pub fn keep_appended(&mut self, tokens: usize) {
        if let Compressor::Policy(compressor) = self {
            compressor.keep_appended(tokens);
        }
    }

    /// The policy's hooks; `None` for the full cache, whose hooks do nothing.
    fn policy_hooks(&mut self) -> Option<&mut PolicyCompressor<B>> {
        match self {
            Compressor::KeepAll => None,
            Compressor::Policy(compressor) => Some(compressor),
        }
    }
}

impl<B: Backend> KvCompressor<B> for Compressor<B> {
    fn after_prefill_layer(
        &mut self,
        step: PrefillLayer<B>,
        caches: &mut [LayerCache<B>],
    ) -> Result<(), CacheError> {
        self.policy_hooks()
            .map_or(Ok(()), |c| c.after_prefill_layer(step, caches))
    }

    fn after_prefill(&mut self, caches: &mut [LayerCache<B>]) -> Result<(), CacheError> {
        self.policy_hooks()
            .map_or(Ok(()), |c| c.after_prefill(caches))
    }

    fn wants_decode_attention(&self, layer: usize, cache: &LayerCache<B>) -> bool {
        match self {
            Compressor::KeepAll => false,
            Compressor::Policy(compressor) => compressor.wants_decode_attention(layer, cache),
        }
    }

    fn after_decode_step(
        &mut self,
        step: DecodeStep<B>,
        cache: &mut LayerCache<B>,
    ) -> Result<(), CacheError> {
        self.policy_hooks()
            .map_or(Ok(()), |c| c.after_decode_step(step, cache))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn_flex::Flex;

    #[test]
    fn validation_covers_the_overrides() {
        let spec = |method, allocator, scorer, score_fn: Option<&str>| PolicySpec {
            method,
            allocator,
            scorer,
            score_fn: score_fn.map(PathBuf::from),
            tau_file: None,
            cache: PolicyConfig::default(),
        };
        assert!(spec(Method::Cake, None, None, None).validate().is_ok());
        assert!(matches!(
            spec(Method::Full, Some(AllocatorKind::Uniform), None, None).validate(),
            Err(ConfigError::FullHasNoParts)
        ));
        let mut full_with_heads = spec(Method::Full, None, None, None);
        full_with_heads.cache.head_budgets = HeadBudgets::Preference;
        assert!(matches!(
            full_with_heads.validate(),
            Err(ConfigError::FullHasNoParts)
        ));
        assert!(matches!(
            spec(Method::Cake, Some(AllocatorKind::Static), None, None).validate(),
            Err(ConfigError::StaticNeedsFile)
        ));
        assert!(matches!(
            spec(Method::Cake, None, None, Some("f.json")).validate(),
            Err(ConfigError::ScoreFunctionUnused)
        ));
        let bad = PolicySpec {
            cache: PolicyConfig {
                window: 0,
                ..PolicyConfig::default()
            },
            ..PolicySpec::default()
        };
        assert!(matches!(bad.validate(), Err(ConfigError::WindowZero)));
        // A missing file is reported with its path when the compressor is built.
        let missing = spec(
            Method::Cake,
            Some(AllocatorKind::Static),
            None,
            Some("/no/f.json"),
        );
        let err = missing.compressor::<B>("m", 4).unwrap_err().to_string();
        assert!(err.contains("/no/f.json"), "{err}");
    }

    #[test]
    fn labels_and_kinds() {
        let mut spec = PolicySpec::new(Method::Cake);
        spec.cache.cache_size = 256;
        assert_eq!(spec.label(), "cake-c256-w32");
        assert_eq!(
            spec.kinds(),
            Some((AllocatorKind::Preference, ScorerKind::Cake))
        );
        spec.scorer = Some(ScorerKind::SnapKv);
        spec.cache.ratio = Some(0.1);
        spec.cache.cascading = false;
        spec.cache.decode_slack = 8;
        assert_eq!(spec.label(), "preference+snapkv-r0.1-w32-oneshot-slack8");
        let full = PolicySpec::new(Method::Full);
        assert!(full.keeps_all());
        assert_eq!(full.label(), "full-c1024-w32");
        assert!(matches!(
            full.compressor::<B>("m", 4).unwrap(),
            Compressor::KeepAll
        ));
        let Compressor::Policy(c) = spec.compressor::<B>("m", 4).unwrap() else {
            panic!("cake must build a policy");
        };
        assert_eq!(c.policy().name(), "preference+snapkv");
    }

    #[test]
    fn serialises_with_the_settings_keys() {
        let mut spec = PolicySpec::new(Method::SnapKv);
        spec.allocator = Some(AllocatorKind::Pyramid);
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["policy"], "snapkv");
        assert_eq!(json["allocator"], "pyramid");
        assert!(json["scorer"].is_null() && json["score_fn"].is_null());
        // An unset tau_file is not written at all (run folders hash this JSON).
        assert!(json.get("tau_file").is_none());
        assert_eq!(json["cache"]["cache_size"], 1024);
        let back: PolicySpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, spec);
        spec.tau_file = Some(PathBuf::from("taus.json"));
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["tau_file"], "taus.json");
        assert_eq!(serde_json::from_value::<PolicySpec>(json).unwrap(), spec);
        // A missing file is reported with its path when the compressor is built.
        let err = spec.compressor::<B>("m", 4).unwrap_err().to_string();
        assert!(err.contains("taus.json"), "{err}");
    }
}
