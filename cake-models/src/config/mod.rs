//! Model configuration: the fields of a Hugging Face `config.json` shared by every
//! supported architecture, and the resolved [`DecoderConfig`] the common decoder is built from.
//!
//! Both config.json dialects are read: the classic one (`rope_theta` + `rope_scaling`) and
//! the transformers 5 one (`rope_parameters` holding the theta and the scaling).
//!
//! Each architecture has its own file with its `config.json` struct and what sets it apart
//! from the shared decoder: [`llama`], [`mistral`], [`qwen2`]; [`decoder_config`] picks one
//! by `architectures` / `model_type`.

pub mod llama;
pub mod mistral;
pub mod qwen2;

use serde::Deserialize;

pub use llama::{Llama3RopeScaling, LlamaConfig};
pub use mistral::MistralConfig;
pub use qwen2::Qwen2Config;

/// Most decoder layers a config may declare. Per-layer tables (sliding windows, caches) are
/// sized from `num_hidden_layers` before any weight is read, so a corrupt count must be
/// refused here rather than allocated; released models have at most a few hundred layers.
pub const MAX_LAYERS: usize = 1 << 12;

/// Fields of `config.json` common to Llama, Mistral and Qwen2 (flattened into each
/// architecture's own config struct).
#[derive(Debug, Clone, Deserialize)]
pub struct BaseConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (defaults to the query heads: no GQA).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width (defaults to `hidden_size / num_attention_heads`).
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Longest context the model was trained for.
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    /// Whether the output head reuses the input embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// RoPE base, classic dialect.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// RoPE scaling, classic dialect.
    #[serde(default)]
    pub rope_scaling: Option<RopeScalingJson>,
    /// RoPE base and scaling, transformers 5 dialect.
    #[serde(default)]
    pub rope_parameters: Option<RopeScalingJson>,
    /// Beginning-of-sequence token id.
    #[serde(default)]
    pub bos_token_id: Option<TokenIds>,
    /// End-of-sequence token id(s).
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
}

/// One token id or a list of them (config.json allows both for `eos_token_id`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// The `rope_scaling` / `rope_parameters` object of config.json.
#[derive(Debug, Clone, Deserialize)]
pub struct RopeScalingJson {
    /// `rope_type` (or the older `type`): `default`, `llama3`, ...
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    /// RoPE base (transformers 5 dialect only).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Llama-3 scaling factor.
    #[serde(default)]
    pub factor: Option<f64>,
    /// Llama-3 low-frequency factor.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// Llama-3 high-frequency factor.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// Llama-3 original training context.
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

/// Rotary embedding parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// Base of the frequencies.
    pub theta: f64,
    /// Optional Llama-3 frequency scaling.
    pub llama3: Option<Llama3RopeScaling>,
    /// Per-frequency divisors `[d / 2]` of the inverse frequencies, as a GGUF file stores
    /// Llama-3 scaling (llama.cpp's `rope_freqs.weight`: 1 for short wavelengths, `factor`
    /// for long ones, smoothed between). Replaces `llama3` when present.
    pub freq_factors: Option<Vec<f32>>,
}

/// Which decoder architecture a config describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM`.
    Llama,
    /// `MistralForCausalLM`.
    Mistral,
    /// `Qwen2ForCausalLM`.
    Qwen2,
}

/// Everything the shared decoder needs, resolved from an architecture's config.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    /// Source architecture.
    pub architecture: Architecture,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Query heads H.
    pub num_heads: usize,
    /// Key/value heads Hkv (H is a multiple of it).
    pub num_kv_heads: usize,
    /// Per-head width d.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Rotary embedding.
    pub rope: RopeConfig,
    /// Whether q/k/v projections have biases (Qwen2).
    pub qkv_bias: bool,
    /// Whether the output head is the transposed input embedding.
    pub tie_word_embeddings: bool,
    /// Per layer: the sliding attention window (a query at position p sees keys at
    /// positions `p - w < j <= p`), or `None` for full causal attention.
    pub sliding_window: Vec<Option<usize>>,
    /// Longest context the model was trained for, if stated.
    pub max_position_embeddings: Option<usize>,
    /// Beginning-of-sequence token, if stated.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (possibly empty).
    pub eos_token_ids: Vec<u32>,
}

/// A config.json that cannot describe a supported model.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not valid JSON or a field has the wrong type.
    #[error("config.json is not a valid {arch} config: {source}")]
    Json {
        /// Architecture being parsed.
        arch: &'static str,
        /// Parser error (names the field and line).
        source: serde_json::Error,
    },
    /// `architectures` / `model_type` names no supported architecture.
    #[error(
        "unsupported architecture {0:?}: expected LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM"
    )]
    UnknownArchitecture(String),
    /// The numbers do not fit together.
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl BaseConfig {
    /// Resolves the shared fields into a [`DecoderConfig`] with no biases and no sliding
    /// window; architectures then adjust what differs.
    pub fn decoder(&self, architecture: Architecture) -> Result<DecoderConfig, ConfigError> {
        let heads = self.num_attention_heads;
        let kv_heads = self.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(ConfigError::Invalid(format!(
                "num_attention_heads ({heads}) must be a positive multiple of num_key_value_heads ({kv_heads})"
            )));
        }
        let head_dim = match self.head_dim {
            Some(d) => d,
            None if self.hidden_size.is_multiple_of(heads) => self.hidden_size / heads,
            None => {
                return Err(ConfigError::Invalid(format!(
                    "hidden_size ({}) is not a multiple of num_attention_heads ({heads}) and head_dim is not set",
                    self.hidden_size
                )));
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(ConfigError::Invalid(format!(
                "head_dim ({head_dim}) must be even and positive for rotary embeddings"
            )));
        }
        for (name, value) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("vocab_size", self.vocab_size),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be positive")));
            }
        }
        if self.num_hidden_layers > MAX_LAYERS {
            return Err(ConfigError::Invalid(format!(
                "num_hidden_layers ({}) is larger than {MAX_LAYERS}",
                self.num_hidden_layers
            )));
        }
        Ok(DecoderConfig {
            architecture,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            rms_norm_eps: self.rms_norm_eps,
            vocab_size: self.vocab_size,
            rope: self.rope()?,
            qkv_bias: false,
            tie_word_embeddings: self.tie_word_embeddings,
            sliding_window: vec![None; self.num_hidden_layers],
            max_position_embeddings: self.max_position_embeddings,
            bos_token_id: self
                .bos_token_id
                .as_ref()
                .and_then(|b| b.to_vec().first().copied()),
            eos_token_ids: self
                .eos_token_id
                .as_ref()
                .map(TokenIds::to_vec)
                .unwrap_or_default(),
        })
    }

    /// RoPE theta and scaling from either config dialect (default theta 10000).
    fn rope(&self) -> Result<RopeConfig, ConfigError> {
        let params = self.rope_parameters.as_ref();
        let theta = self
            .rope_theta
            .or_else(|| params.and_then(|p| p.rope_theta))
            .unwrap_or(10_000.0);
        let scaling = self.rope_scaling.as_ref().or(params);
        let llama3 = match scaling {
            Some(s) => match s.rope_type.as_deref() {
                None | Some("default") => None,
                Some("llama3") => Some(Llama3RopeScaling::from_json(s)?),
                Some(other) => {
                    return Err(ConfigError::Invalid(format!(
                        "rope scaling type {other:?} is not supported (supported: default, llama3)"
                    )));
                }
            },
            None => None,
        };
        Ok(RopeConfig {
            theta,
            llama3,
            freq_factors: None,
        })
    }
}

/// Reads the architecture named by a config.json value (`architectures[0]`, else `model_type`).
pub fn architecture_of(json: &serde_json::Value) -> Result<Architecture, ConfigError> {
    let name = json
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str())
        .or_else(|| json.get("model_type").and_then(|m| m.as_str()))
        .unwrap_or("<missing>");
    match name {
        "LlamaForCausalLM" | "llama" => Ok(Architecture::Llama),
        "MistralForCausalLM" | "mistral" => Ok(Architecture::Mistral),
        "Qwen2ForCausalLM" | "qwen2" => Ok(Architecture::Qwen2),
        other => Err(ConfigError::UnknownArchitecture(other.to_string())),
    }
}

/// Parses a config.json value of any supported architecture into a [`DecoderConfig`].
pub fn decoder_config(json: &serde_json::Value) -> Result<DecoderConfig, ConfigError> {
    match architecture_of(json)? {
        Architecture::Llama => LlamaConfig::from_json(json)?.decoder(),
        Architecture::Mistral => MistralConfig::from_json(json)?.decoder(),
        Architecture::Qwen2 => Qwen2Config::from_json(json)?.decoder(),
    }
}
