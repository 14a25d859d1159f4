//! Resolved settings: defaults < `cake.toml` (or `--config FILE`) < `CAKE_*` environment
//! variables < command-line flags, all flat keys (`cache_size = 256`, `CAKE_CACHE_SIZE=256`,
//! `--cache-size 256`).
//!
//! One typed struct, [`PolicyArgs`], is every layer: clap fills it from the flags and
//! serde from the file and from each variable, so a key is declared once and an unknown
//! key is rejected the same way in the file and in the environment. The layers merge
//! field by field; the result becomes a [`PolicySpec`] validated once.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cake_core::{
    AllocatorKind, DecodeEviction, HeadBudgets, Method, PolicyConfig, PolicySpec, ScorerKind,
};
use cake_longbench::QuestionProtocol;
use cake_models::weights::WeightFormat;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::exit::{UsageError, usage_bail, usage_ensure};

/// Policy settings, one layer of them: every key is optional (unset keys fall through to
/// the layer below).
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyArgs {
    /// Model (file and environment only; commands take `--model`).
    #[arg(skip)]
    pub model: Option<String>,
    /// Method [default: cake]
    #[arg(long, ignore_case = true)]
    pub policy: Option<Method>,
    /// Layer-budget allocator (overrides the method's)
    #[arg(long, ignore_case = true)]
    pub allocator: Option<AllocatorKind>,
    /// Token scorer (overrides the method's)
    #[arg(long, ignore_case = true)]
    pub scorer: Option<ScorerKind>,
    /// Score-function file for `--allocator static` or `--head-budgets static` (written by
    /// `cake fit`; per-head shares need `cake fit --per-head`)
    #[arg(long, value_name = "FILE")]
    pub score_fn: Option<PathBuf>,
    /// Temperature table (JSON, the published table's format; written by `cake tune`)
    /// used instead of the published temperatures when --tau1/--tau2 are unset
    #[arg(long, value_name = "FILE")]
    pub tau_file: Option<PathBuf>,
    /// Cache size C: average tokens kept per layer, window included [default: 1024]
    #[arg(long)]
    pub cache_size: Option<usize>,
    /// Cache size as a fraction of the prompt, in (0, 1] (instead of --cache-size)
    #[arg(long)]
    pub ratio: Option<f64>,
    /// Observation / recent window w, always kept [default: 32]
    #[arg(long)]
    pub window: Option<usize>,
    /// Entropy temperature of the layer preference [default: the model's published value
    /// at the effective cache size, else 1.0]
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
    /// Layer-by-layer eviction during prefill (file and environment; the flag is
    /// --no-cascading) [default: true]
    #[arg(skip)]
    pub cascading: Option<bool>,
    /// Evict all layers once after prefill instead of layer by layer (cascading)
    #[arg(long)]
    #[serde(skip)]
    pub no_cascading: bool,
    /// Decoding-time eviction: policy (fixed size) or none (cache grows) [default: policy]
    #[arg(long, ignore_case = true)]
    pub decode_evict: Option<DecodeEviction>,
    /// Amortised decoding eviction: hold up to budget + window + N tokens, then drop N + 1
    /// at once [default: 0, the paper's one token per step]
    #[arg(long, value_name = "N")]
    pub decode_slack: Option<usize>,
    /// How a layer's budget reaches its KV heads, each storing only its own kept rows:
    /// none (every head keeps the layer's budget), preference (CAKE's preference per KV
    /// head, the budget shared over all layer x head pairs), adakv (layer budgets, split
    /// by the heads' pooled scores with a floor per head), static (per-head shares of a
    /// `cake fit --per-head` score function, --score-fn) [default: none]
    #[arg(long, ignore_case = true)]
    pub head_budgets: Option<HeadBudgets>,
    /// AdaKV's floor: with --head-budgets adakv, each KV head keeps at least this fraction
    /// of its layer's budget, in [0, 1] [default: 0.2]
    #[arg(long, value_name = "FRACTION")]
    pub head_floor: Option<f64>,
    /// Sink ablation, for every policy: always keep the first N prompt tokens in every
    /// layer and KV head, inside the layer's budget (0 = the paper's rule) [default: 0]
    #[arg(long, value_name = "N")]
    pub sink: Option<usize>,
    /// StreamingLLM attention sinks (the streaming scorer's own parameter) [default: 4]
    #[arg(long)]
    pub sinks: Option<usize>,
    /// PyramidKV's beta: how steeply budgets fall with depth [default: 20]
    #[arg(long)]
    pub beta: Option<f64>,
    /// How a GGUF model's matrices are held: `stored` keeps the file's quantised blocks
    /// and reads them in place (about 4-7x less weight memory, faster decoding on the CPU);
    /// `stored-int8` also quantises the activations to int8 for integer dot products
    /// (llama.cpp's scheme: faster still, logits move slightly); `f32` dequantises
    /// them at load (the parity-tested path) [default: f32]
    #[arg(long, value_name = "f32|stored|stored-int8", value_parser = parse_weights)]
    pub weights: Option<WeightFormat>,
    /// Where the question goes, `in-prompt` or `after-compression` (file and environment;
    /// `cake pred` and `cake tune` take `--question`, other commands ignore it).
    #[arg(skip)]
    pub question: Option<QuestionProtocol>,
    /// Settings file (default: ./cake.toml when present)
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

/// `--weights`' value.
fn parse_weights(text: &str) -> Result<WeightFormat, String> {
    text.parse()
}

/// The flags of a run over several head-budget `modes`: when they include `static` and
/// `--head-budgets` is not given, the base settings take `static`, so that a `--score-fn`
/// meant for those configurations validates (each configuration then sets its own mode,
/// see [`Settings::with_head_budgets`]).
pub fn policy_for_modes(flags: &PolicyArgs, modes: &[HeadBudgets]) -> PolicyArgs {
    let mut flags = flags.clone();
    if flags.head_budgets.is_none() && modes.contains(&HeadBudgets::Static) {
        flags.head_budgets = Some(HeadBudgets::Static);
    }
    flags
}

/// `CAKE_*` variables that are not settings (read elsewhere).
const NOT_SETTINGS: [&str; 6] = [
    "CAKE_MEMORY_LIMIT",
    "CAKE_PROGRESS_EVERY",
    "CAKE_CACHE_DIR",
    "CAKE_PYTHON",
    "CAKE_PLOT_FONT",
    "CAKE_GIT_REVISION",
];

impl PolicyArgs {
    /// This layer over `lower`: each key set here wins.
    fn over(self, lower: Self) -> Self {
        Self {
            model: self.model.or(lower.model),
            policy: self.policy.or(lower.policy),
            allocator: self.allocator.or(lower.allocator),
            scorer: self.scorer.or(lower.scorer),
            score_fn: self.score_fn.or(lower.score_fn),
            tau_file: self.tau_file.or(lower.tau_file),
            cache_size: self.cache_size.or(lower.cache_size),
            ratio: self.ratio.or(lower.ratio),
            window: self.window.or(lower.window),
            tau1: self.tau1.or(lower.tau1),
            tau2: self.tau2.or(lower.tau2),
            gamma: self.gamma.or(lower.gamma),
            pool_kernel: self.pool_kernel.or(lower.pool_kernel),
            cascading: (self.no_cascading.then_some(false))
                .or(self.cascading)
                .or(lower.cascading),
            no_cascading: false,
            decode_evict: self.decode_evict.or(lower.decode_evict),
            decode_slack: self.decode_slack.or(lower.decode_slack),
            head_budgets: self.head_budgets.or(lower.head_budgets),
            head_floor: self.head_floor.or(lower.head_floor),
            sink: self.sink.or(lower.sink),
            sinks: self.sinks.or(lower.sinks),
            beta: self.beta.or(lower.beta),
            weights: self.weights.or(lower.weights),
            question: self.question.or(lower.question),
            config: self.config.or(lower.config),
        }
    }

    /// The layer of a settings file; errors name the file, the line and the key.
    fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read settings file {}", path.display()))?;
        let layer = toml::from_str(&text).map_err(|e| {
            UsageError(format!(
                "settings file {}: {}",
                path.display(),
                e.to_string().trim_end()
            ))
        })?;
        Ok(layer)
    }

    /// The layer of the `CAKE_*` environment variables (`CAKE_CACHE_SIZE=256`); an
    /// unknown or malformed variable is an error that names it.
    fn from_env() -> Result<Self> {
        let mut layer = Self::default();
        for (key, value) in std::env::vars_os() {
            let Some(key) = key.to_str() else { continue };
            let Some(name) = key.strip_prefix("CAKE_") else {
                continue;
            };
            if NOT_SETTINGS.contains(&key) {
                continue;
            }
            let Some(value) = value.to_str() else {
                usage_bail!("environment variable {key} is not valid UTF-8");
            };
            let one = |value: toml::Value| {
                toml::Table::from_iter([(name.to_ascii_lowercase(), value)]).try_into::<Self>()
            };
            // A number or boolean where the key takes one, else the text itself.
            let parsed = one(scalar(value)).or_else(|_| one(toml::Value::String(value.into())));
            let parsed = parsed.map_err(|e| {
                UsageError(format!(
                    "environment variable {key}={value}: {} (unset it or fix the value)",
                    e.to_string().trim_end()
                ))
            })?;
            layer = parsed.over(layer);
        }
        Ok(layer)
    }
}

/// Whether `w` is the default weight format (serde's `skip_serializing_if`).
fn is_f32(w: &WeightFormat) -> bool {
    *w == WeightFormat::F32
}

/// A TOML scalar for an environment value: integer, float, boolean or string.
fn scalar(text: &str) -> toml::Value {
    if let Ok(i) = text.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(f) = text.parse::<f64>() {
        toml::Value::Float(f)
    } else if let Ok(b) = text.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(text.to_string())
    }
}

/// The resolved settings of a command: the model and the policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// Model: a name (`smollm2-135m`, `qwen2.5-coder-0.5b`), a GGUF file or a HF folder.
    pub model: Option<String>,
    /// How the model's matrices are held (recorded only when not the default f32, so that
    /// f32 runs' manifests stay as they were).
    #[serde(skip_serializing_if = "is_f32")]
    pub weights: WeightFormat,
    /// Where the question goes (recorded only when not the default `in-prompt`, so that
    /// the manifests and folders of in-prompt runs stay as they were; an
    /// `after-compression` run is another folder).
    #[serde(skip_serializing_if = "QuestionProtocol::is_in_prompt")]
    pub question: QuestionProtocol,
    /// The policy (serialised flat: `policy`, `allocator`, `scorer`, `score_fn`,
    /// `tau_file` when set, `cache`).
    #[serde(flatten)]
    pub spec: PolicySpec,
}

impl Settings {
    /// Resolves defaults < settings file < `CAKE_*` environment < flags; `model_flag` is
    /// the command's `--model`. Validates the policy before any model is loaded.
    pub fn resolve(args: &PolicyArgs, model_flag: Option<&str>) -> Result<Self> {
        Self::resolve_under(args, model_flag, PolicyArgs::default())
    }

    /// A sweep variant: the keys of the settings file `path` over everything
    /// [`Settings::resolve`] merges (defaults < settings file < environment < flags <
    /// variant), validated. A variant shares the sweep's prefill, so it may not set the
    /// model, the weights or the question protocol.
    pub fn resolve_variant(
        args: &PolicyArgs,
        model_flag: Option<&str>,
        path: &Path,
    ) -> Result<Self> {
        usage_ensure!(
            path.is_file(),
            "variant file {} does not exist: check --variants",
            path.display()
        );
        let variant = PolicyArgs::from_file(path)?;
        usage_ensure!(
            variant.model.is_none() && variant.weights.is_none() && variant.question.is_none(),
            "variant file {}: a variant shares the sweep's prefill, so it cannot set `model`, `weights` or `question` (run another `cake pred` for those)",
            path.display()
        );
        Self::resolve_under(args, model_flag, variant)
            .with_context(|| format!("variant file {}", path.display()))
    }

    /// [`Settings::resolve`] with `top` over the flags.
    fn resolve_under(args: &PolicyArgs, model_flag: Option<&str>, top: PolicyArgs) -> Result<Self> {
        let file = match &args.config {
            Some(path) if !path.exists() => usage_bail!(
                "settings file {} does not exist: check --config",
                path.display()
            ),
            Some(path) => Some(path.clone()),
            None => Some(PathBuf::from("cake.toml")).filter(|p| p.exists()),
        };
        let file = match &file {
            Some(path) => PolicyArgs::from_file(path)?,
            None => PolicyArgs::default(),
        };
        let flags = PolicyArgs {
            model: model_flag.map(str::to_string),
            ..args.clone()
        };
        let settings = Self::from_layer(top.over(flags.over(PolicyArgs::from_env()?.over(file))));
        settings.spec.validate().map_err(|e| {
            UsageError(format!(
                "{e} (set it with a flag, a CAKE_* variable or the settings file)"
            ))
        })?;
        // A bad temperature file is reported before any model is loaded.
        if let Some(path) = &settings.spec.tau_file {
            cake_core::TauFile::read(path)?;
        }
        Ok(settings)
    }

    /// The settings a merged layer gives, defaults filling unset keys.
    fn from_layer(layer: PolicyArgs) -> Self {
        let d = PolicyConfig::default();
        let cache = PolicyConfig {
            cache_size: layer.cache_size.unwrap_or(d.cache_size),
            ratio: layer.ratio.or(d.ratio),
            window: layer.window.unwrap_or(d.window),
            tau1: layer.tau1.or(d.tau1),
            tau2: layer.tau2.or(d.tau2),
            gamma: layer.gamma.unwrap_or(d.gamma),
            pool_kernel: layer.pool_kernel.unwrap_or(d.pool_kernel),
            cascading: layer.cascading.unwrap_or(d.cascading),
            decode_evict: layer.decode_evict.unwrap_or(d.decode_evict),
            decode_slack: layer.decode_slack.unwrap_or(d.decode_slack),
            head_budgets: layer.head_budgets.unwrap_or(d.head_budgets),
            head_floor: layer.head_floor.unwrap_or(d.head_floor),
            sink: layer.sink.unwrap_or(d.sink),
            sinks: layer.sinks.unwrap_or(d.sinks),
            beta: layer.beta.unwrap_or(d.beta),
        };
        Self {
            model: layer.model,
            weights: layer.weights.unwrap_or_default(),
            question: layer.question.unwrap_or_default(),
            spec: PolicySpec {
                method: layer.policy.unwrap_or_default(),
                allocator: layer.allocator,
                scorer: layer.scorer,
                score_fn: layer.score_fn,
                tau_file: layer.tau_file,
                cache,
            },
        }
    }

    /// These settings with another method and cache size (for sweeps), validated.
    pub fn with_method(&self, method: Method, cache_size: usize) -> Result<Self> {
        let mut settings = self.clone();
        settings.spec.method = method;
        settings.spec.cache.cache_size = cache_size;
        settings.spec.validate()?;
        Ok(settings)
    }

    /// These settings with head budgets `mode`. The score-function file stays only where
    /// something uses it (the static allocator or static head budgets), so that one
    /// `--score-fn` can serve a sweep over modes.
    pub fn with_head_budgets(&self, mode: HeadBudgets) -> Self {
        let mut settings = self.clone();
        settings.spec.cache.head_budgets = mode;
        if mode != HeadBudgets::Static && settings.spec.allocator != Some(AllocatorKind::Static) {
            settings.spec.score_fn = None;
        }
        settings
    }

    /// A short label for folder names, e.g. `cake-c256-w32`, or `cake-c256-w32-qafter`
    /// with the question read after compression.
    pub fn label(&self) -> String {
        let label = self.spec.label();
        match self.question {
            QuestionProtocol::InPrompt => label,
            QuestionProtocol::AfterCompression => label + "-qafter",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_merge_key_by_key_and_defaults_fill_the_rest() {
        let file: PolicyArgs =
            toml::from_str("cache_size = 12\nwindow = 4\npolicy = \"SnapKV\"\ncascading = false")
                .unwrap();
        let flags = PolicyArgs {
            window: Some(2),
            ..PolicyArgs::default()
        };
        let s = Settings::from_layer(flags.over(file));
        assert_eq!(s.spec.method, Method::SnapKv);
        assert_eq!((s.spec.cache.cache_size, s.spec.cache.window), (12, 2));
        assert!(!s.spec.cache.cascading);
        assert_eq!(s.spec.cache.gamma, PolicyConfig::default().gamma);
        // --no-cascading beats a file's `cascading = true`.
        let file: PolicyArgs = toml::from_str("cascading = true").unwrap();
        let flags = PolicyArgs {
            no_cascading: true,
            ..PolicyArgs::default()
        };
        assert!(!Settings::from_layer(flags.over(file)).spec.cache.cascading);
        assert!(
            Settings::from_layer(PolicyArgs::default())
                .spec
                .cache
                .cascading
        );
    }

    #[test]
    fn file_and_environment_reject_unknown_keys_alike() {
        let err = toml::from_str::<PolicyArgs>("cache_sise = 1").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `cache_sise`"),
            "{err}"
        );
        let one = toml::Table::from_iter([("cache_sise".to_string(), scalar("1"))]);
        let err = one.try_into::<PolicyArgs>().unwrap_err();
        assert!(
            err.to_string().contains("unknown field `cache_sise`"),
            "{err}"
        );
        // Flags-only keys are not settings keys.
        assert!(toml::from_str::<PolicyArgs>("no_cascading = true").is_err());
        assert!(toml::from_str::<PolicyArgs>("config = \"x\"").is_err());
    }

    #[test]
    fn environment_values_take_the_key_type() {
        let one = |k: &str, v: &str| {
            let t = toml::Table::from_iter([(k.to_string(), scalar(v))]);
            t.try_into::<PolicyArgs>()
        };
        assert_eq!(one("cache_size", "256").unwrap().cache_size, Some(256));
        assert_eq!(one("tau1", "2").unwrap().tau1, Some(2.0));
        assert_eq!(one("policy", "H2O").unwrap().policy, Some(Method::H2o));
        assert_eq!(one("cascading", "false").unwrap().cascading, Some(false));
        assert!(one("cache_size", "many").is_err());
        assert!(one("policy", "magic").is_err());
    }

    /// `sink` and `question` are keys of every layer; each enters the JSON (and so the
    /// folder's hash) and the label only when not at its default.
    #[test]
    fn sink_and_question_are_settings_keys() {
        let file: PolicyArgs =
            toml::from_str("sink = 8\nquestion = \"after-compression\"").unwrap();
        let s = Settings::from_layer(PolicyArgs::default().over(file));
        assert_eq!(s.spec.cache.sink, 8);
        assert_eq!(s.question, QuestionProtocol::AfterCompression);
        assert_eq!(s.label(), "cake-c1024-w32-sink8-qafter");
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.starts_with(r#"{"model":null,"question":"after-compression","policy":"cake""#),
            "{json}"
        );
        assert!(json.contains(r#""sink":8,"sinks":4"#), "{json}");
        // Flags beat the file; the environment's text parses the same way.
        let flags = PolicyArgs {
            sink: Some(0),
            question: Some(QuestionProtocol::InPrompt),
            ..PolicyArgs::default()
        };
        let file: PolicyArgs =
            toml::from_str("sink = 8\nquestion = \"after-compression\"").unwrap();
        let s = Settings::from_layer(flags.over(file));
        assert_eq!(s.label(), "cake-c1024-w32");
        let one = |k: &str, v: &str| {
            toml::Table::from_iter([(k.to_string(), scalar(v))]).try_into::<PolicyArgs>()
        };
        assert_eq!(
            one("question", "After-Compression").unwrap().question,
            Some(QuestionProtocol::AfterCompression)
        );
        assert_eq!(one("sink", "4").unwrap().sink, Some(4));
        assert!(one("question", "later").is_err());
        assert!(one("sink", "-1").is_err());
    }

    #[test]
    fn serialises_as_before() {
        // Folder names hash this JSON: keys, order and values must stay as they were.
        let s = Settings::from_layer(PolicyArgs::default());
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"model":null,"policy":"cake","allocator":null,"scorer":null,"score_fn":null,"cache":{"cache_size":1024,"ratio":null,"window":32,"tau1":null,"tau2":null,"gamma":200.0,"pool_kernel":5,"cascading":true,"decode_evict":"policy","sinks":4,"beta":20.0}}"#
        );
        // A temperature file is a key of every layer and enters the JSON only when set.
        let file: PolicyArgs = toml::from_str("tau_file = \"t.json\"").unwrap();
        let s = Settings::from_layer(PolicyArgs::default().over(file));
        assert_eq!(s.spec.tau_file, Some(PathBuf::from("t.json")));
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.contains(r#""score_fn":null,"tau_file":"t.json","cache":"#),
            "{json}"
        );
        let t = toml::Table::from_iter([("tau_file".to_string(), scalar("e.json"))]);
        let env = t.try_into::<PolicyArgs>().unwrap();
        assert_eq!(env.tau_file, Some(PathBuf::from("e.json")));
    }
}
