//! Resolved settings: defaults < `cake.toml` (or `--config FILE`) < `CAKE_*` environment
//! variables < command-line flags, all flat keys (`cache_size = 256`, `CAKE_CACHE_SIZE=256`,
//! `--cache-size 256`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use cake_core::{AllocatorKind, Policy, PolicyConfig, ScorerKind, Static};
use clap::Args;
use serde::{Deserialize, Serialize};

/// Policy options shared by every command.
#[derive(Debug, Clone, Default, Args)]
pub struct PolicyArgs {
    /// Method: full, streaming, h2o, tova, snapkv, pyramidkv or cake [default: cake]
    #[arg(long)]
    pub policy: Option<String>,
    /// Layer-budget allocator (overrides the policy's): uniform, pyramid, preference, static
    #[arg(long)]
    pub allocator: Option<String>,
    /// Token scorer (overrides the policy's): streaming, h2o, tova, snapkv, cake
    #[arg(long)]
    pub scorer: Option<String>,
    /// Score-function file for `--allocator static` (written by `cake fit`)
    #[arg(long, value_name = "FILE")]
    pub score_fn: Option<PathBuf>,
    /// Cache size C: average tokens kept per layer, window included [default: 1024]
    #[arg(long)]
    pub cache_size: Option<usize>,
    /// Cache size as a fraction of the prompt, in (0, 1] (instead of --cache-size)
    #[arg(long)]
    pub ratio: Option<f64>,
    /// Observation / recent window w, always kept [default: 32]
    #[arg(long)]
    pub window: Option<usize>,
    /// Entropy temperature of the layer preference [default: the model's published value, else 1.0]
    #[arg(long)]
    pub tau1: Option<f64>,
    /// Variance temperature of the layer preference [default: as tau1]
    #[arg(long)]
    pub tau2: Option<f64>,
    /// Weight of the variance term of CAKE's indicator [default: 200]
    #[arg(long)]
    pub gamma: Option<f64>,
    /// Width of the average pooling over key positions [default: 5]
    #[arg(long)]
    pub pool_kernel: Option<usize>,
    /// Evict all layers once after prefill instead of layer by layer (cascading)
    #[arg(long)]
    pub no_cascading: bool,
    /// Decoding-time eviction: policy (fixed size) or none (cache grows) [default: policy]
    #[arg(long)]
    pub decode_evict: Option<String>,
    /// Amortised decoding eviction: hold up to budget + window + N tokens, then drop N + 1
    /// at once [default: 0, the paper's one token per step]
    #[arg(long, value_name = "N")]
    pub decode_slack: Option<usize>,
    /// StreamingLLM attention sinks [default: 4]
    #[arg(long)]
    pub sinks: Option<usize>,
    /// Settings file (default: ./cake.toml when present)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The non-policy part of the resolved settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settings {
    /// Model: a name (`smollm2-135m`, `qwen2.5-coder-0.5b`), a GGUF file or a HF folder.
    pub model: Option<String>,
    /// Preset method name.
    pub policy: String,
    /// Allocator override.
    pub allocator: Option<String>,
    /// Scorer override.
    pub scorer: Option<String>,
    /// Score-function file of the static allocator.
    pub score_fn: Option<PathBuf>,
    /// Everything that tunes the policy.
    #[serde(skip_deserializing)]
    pub cache: PolicyConfig,
}

/// Keys of [`Settings`] read from the layered sources (besides [`PolicyConfig`]'s).
const SETTINGS_KEYS: [&str; 5] = ["model", "policy", "allocator", "scorer", "score_fn"];

/// The field names of [`PolicyConfig`].
fn policy_keys() -> Vec<String> {
    let mut keys = match serde_json::to_value(PolicyConfig::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    };
    // Serialised only when set (see PolicyConfig::decode_slack).
    keys.push("decode_slack".to_string());
    keys
}

/// Rejects unknown keys of a settings file, naming the file and the known keys.
fn check_file_keys(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read settings file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let known = policy_keys();
    for key in table.keys() {
        if !SETTINGS_KEYS.contains(&key.as_str()) && !known.contains(key) {
            bail!(
                "{}: unknown key `{key}`; known keys: {}, {}",
                path.display(),
                SETTINGS_KEYS.join(", "),
                known.join(", ")
            );
        }
    }
    Ok(())
}

impl Settings {
    /// Resolves defaults < settings file < `CAKE_*` environment < flags; `model_flag` is
    /// the command's `--model`.
    pub fn resolve(args: &PolicyArgs, model_flag: Option<&str>) -> Result<Self> {
        let mut defaults = serde_json::to_value(PolicyConfig::default())?;
        if let serde_json::Value::Object(map) = &mut defaults {
            map.insert("policy".into(), "cake".into());
            map.retain(|_, v| !v.is_null());
        }
        let defaults = toml::to_string(&defaults).context("cannot encode the defaults")?;
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(&defaults, config::FileFormat::Toml));
        let file = match &args.config {
            Some(path) if !path.exists() => bail!(
                "settings file {} does not exist: check --config",
                path.display()
            ),
            Some(path) => Some(path.clone()),
            None => Some(PathBuf::from("cake.toml")).filter(|p| p.exists()),
        };
        if let Some(path) = &file {
            check_file_keys(path)?;
            builder = builder.add_source(config::File::from(path.as_path()));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("CAKE")
                .prefix_separator("_")
                .try_parsing(true),
        );
        let overrides: [(&str, Option<config::Value>); 15] = [
            ("model", model_flag.map(Into::into)),
            ("policy", args.policy.clone().map(Into::into)),
            ("allocator", args.allocator.clone().map(Into::into)),
            ("scorer", args.scorer.clone().map(Into::into)),
            (
                "score_fn",
                args.score_fn
                    .as_ref()
                    .map(|p| p.display().to_string().into()),
            ),
            ("cache_size", args.cache_size.map(|v| (v as u64).into())),
            ("ratio", args.ratio.map(Into::into)),
            ("window", args.window.map(|v| (v as u64).into())),
            ("tau1", args.tau1.map(Into::into)),
            ("tau2", args.tau2.map(Into::into)),
            ("gamma", args.gamma.map(Into::into)),
            ("pool_kernel", args.pool_kernel.map(|v| (v as u64).into())),
            ("decode_evict", args.decode_evict.clone().map(Into::into)),
            ("decode_slack", args.decode_slack.map(|v| (v as u64).into())),
            ("sinks", args.sinks.map(|v| (v as u64).into())),
        ];
        for (key, value) in overrides {
            if let Some(value) = value {
                builder = builder.set_override(key, value)?;
            }
        }
        if args.no_cascading {
            builder = builder.set_override("cascading", false)?;
        }
        let merged = builder.build().context("cannot merge settings")?;
        let all: serde_json::Map<String, serde_json::Value> = merged
            .try_deserialize()
            .context("invalid settings (flags, CAKE_* variables or settings file)")?;
        let pick = |keys: &[String]| -> serde_json::Value {
            all.iter()
                .filter(|(k, _)| keys.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let settings_keys: Vec<String> = SETTINGS_KEYS.iter().map(|s| s.to_string()).collect();
        let mut settings: Settings = serde_json::from_value(pick(&settings_keys))
            .context("invalid settings: model, policy, allocator, scorer or score_fn")?;
        settings.cache = serde_json::from_value(pick(&policy_keys()))
            .context("invalid policy settings (cache_size, window, tau1, ...)")?;
        settings.cache.validate().map_err(|e| {
            anyhow::anyhow!("{e} (set it with a flag, a CAKE_* variable or the settings file)")
        })?;
        settings.check_names()?;
        Ok(settings)
    }

    /// Fails on an unknown policy, allocator or scorer name before any model is loaded.
    pub fn check_names(&self) -> Result<()> {
        if !cake_core::PRESETS.contains(&self.policy.as_str()) {
            bail!(
                "unknown policy `{}`; known policies: {}",
                self.policy,
                cake_core::PRESETS.join(", ")
            );
        }
        if let Some(a) = &self.allocator {
            a.parse::<AllocatorKind>()?;
        }
        if let Some(s) = &self.scorer {
            s.parse::<ScorerKind>()?;
        }
        Ok(())
    }

    /// A short label for folder names, e.g. `cake-c256-w32`.
    pub fn label(&self) -> String {
        // An override names both halves; the other one comes from the preset.
        let base = preset_kinds(&self.policy).ok();
        let mut label = match (&self.allocator, &self.scorer) {
            (None, None) => self.policy.clone(),
            (a, s) => format!(
                "{}+{}",
                a.clone()
                    .or_else(|| base.map(|(a, _)| a.to_string()))
                    .unwrap_or_default(),
                s.clone()
                    .or_else(|| base.map(|(_, s)| s.to_string()))
                    .unwrap_or_default()
            ),
        };
        match self.cache.ratio {
            Some(r) => label.push_str(&format!("-r{r}")),
            None => label.push_str(&format!("-c{}", self.cache.cache_size)),
        }
        label.push_str(&format!("-w{}", self.cache.window));
        if !self.cache.cascading {
            label.push_str("-oneshot");
        }
        if self.cache.decode_slack > 0 {
            label.push_str(&format!("-slack{}", self.cache.decode_slack));
        }
        label
    }

    /// The policy these settings describe for a model named `model_name` with
    /// `num_layers` layers (temperatures filled from the published table).
    pub fn policy<B: Backend>(&self, model_name: &str, num_layers: usize) -> Result<Policy<B>> {
        let (config, _) = self.cache.clone().with_model_defaults(model_name);
        let policy = match (&self.allocator, &self.scorer) {
            (None, None) => Policy::preset(&self.policy, &config)?,
            (allocator, scorer) => {
                let base = preset_kinds(&self.policy)?;
                let allocator: AllocatorKind = match allocator {
                    Some(a) => a.parse()?,
                    None => base.0,
                };
                let scorer: ScorerKind = match scorer {
                    Some(s) => s.parse()?,
                    None => base.1,
                };
                if allocator == AllocatorKind::Static {
                    let Some(path) = &self.score_fn else {
                        bail!(
                            "--allocator static needs --score-fn FILE (write one with `cake fit`)"
                        );
                    };
                    let function = cake_core::ScoreFunction::from_path(path)?;
                    let allocator = Static::from_score_function(&function, num_layers)?;
                    let scorer = cake_core::policy::build_scorer::<B>(scorer, &config);
                    Policy::new(Arc::new(allocator), scorer, config)?
                } else {
                    Policy::from_kinds(allocator, scorer, config)?
                }
            }
        };
        Ok(policy)
    }
}

/// The allocator and scorer of a preset, for overriding one of them.
fn preset_kinds(name: &str) -> Result<(AllocatorKind, ScorerKind)> {
    cake_core::policy::preset_kinds(name).ok_or_else(|| {
        anyhow::anyhow!(
            "--allocator/--scorer override the parts of a method; `{name}` has none: use one of streaming, h2o, tova, snapkv, pyramidkv, cake"
        )
    })
}
