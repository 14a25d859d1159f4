//! Llama (Llama 2, Llama 3/3.1, SmolLM2, ...): the shared decoder with no biases and full
//! causal attention on every layer.
//!
//! What is Llama's own: projections never have biases (`attention_bias = true` is refused),
//! no layer slides, and Llama 3.1 scales the RoPE frequencies (`rope_scaling.rope_type =
//! "llama3"` with `factor`, `low_freq_factor`, `high_freq_factor` and
//! `original_max_position_embeddings`, read by the shared [`BaseConfig`] into the
//! [`Llama3RopeScaling`] defined below, which [`Rotary`](crate::layers::Rotary) applies).
//! Llama 2 and SmolLM2 use plain RoPE.
//!
//! # Shapes
//! Examples: SmolLM2-135M (the default model) | Llama-3.1-8B.
//! - hidden size: `hidden_size` (576 | 4096)
//! - layers: `num_hidden_layers` (30 | 32)
//! - query heads H: `num_attention_heads` (9 | 32)
//! - KV heads Hkv: `num_key_value_heads`, H a multiple of it (3 | 8)
//! - head_dim d: `head_dim`, else `hidden_size / H` (64 | 128)
//! - MLP: SwiGLU, `hidden -> 2 x intermediate_size -> hidden` (1536 | 14336)
//! - vocabulary: `vocab_size` (49152 | 128256); output head tied to the embedding when
//!   `tie_word_embeddings` (SmolLM2) or separate (Llama-3.1-8B)
//!
//! # Layers
//! The shared decoder ([`Model`](crate::model::Model)) as it is: every
//! [`DecoderLayer`](crate::layers::DecoderLayer) is RMSNorm, grouped-query
//! [`Attention`](crate::layers::Attention) (fused QKV without bias, full causal mask) with
//! [`Rotary`](crate::layers::Rotary) embeddings, RMSNorm, and the SwiGLU
//! [`Mlp`](crate::layers::Mlp) (`crate::layers::{attention, rotary, mlp, decoder}`).

use serde::Deserialize;

use super::{Architecture, BaseConfig, ConfigError, DecoderConfig, RopeScalingJson};

/// `config.json` of a `LlamaForCausalLM`.
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    /// Fields shared with the other architectures (rope scaling included).
    #[serde(flatten)]
    pub base: BaseConfig,
    /// Bias on q/k/v/o projections (false for every released Llama).
    #[serde(default)]
    pub attention_bias: bool,
}

impl LlamaConfig {
    /// Deserialises a config.json value.
    pub fn from_json(json: &serde_json::Value) -> Result<Self, ConfigError> {
        Self::deserialize(json).map_err(|source| ConfigError::Json {
            arch: "Llama",
            source,
        })
    }

    /// The shared-decoder configuration.
    pub fn decoder(&self) -> Result<DecoderConfig, ConfigError> {
        if self.attention_bias {
            return Err(ConfigError::Invalid(
                "Llama with attention_bias = true is not supported".into(),
            ));
        }
        self.base.decoder(Architecture::Llama)
    }
}

/// Llama-3.1 frequency scaling of RoPE (`rope_type: "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    /// Divisor of the low frequencies.
    pub factor: f64,
    /// Wavelengths above `original_max / low_freq_factor` are divided by `factor`.
    pub low_freq_factor: f64,
    /// Wavelengths below `original_max / high_freq_factor` are kept.
    pub high_freq_factor: f64,
    /// Training context of the unscaled model.
    pub original_max_position_embeddings: usize,
}

impl Llama3RopeScaling {
    /// Reads the four `llama3` fields of a `rope_scaling` / `rope_parameters` object.
    pub fn from_json(s: &RopeScalingJson) -> Result<Self, ConfigError> {
        let missing =
            |field: &str| ConfigError::Invalid(format!("llama3 rope scaling needs `{field}`"));
        let scaling = Llama3RopeScaling {
            factor: s.factor.ok_or_else(|| missing("factor"))?,
            low_freq_factor: s
                .low_freq_factor
                .ok_or_else(|| missing("low_freq_factor"))?,
            high_freq_factor: s
                .high_freq_factor
                .ok_or_else(|| missing("high_freq_factor"))?,
            original_max_position_embeddings: s
                .original_max_position_embeddings
                .ok_or_else(|| missing("original_max_position_embeddings"))?,
        };
        if scaling.high_freq_factor <= scaling.low_freq_factor {
            return Err(ConfigError::Invalid(
                "llama3 rope scaling needs high_freq_factor > low_freq_factor".into(),
            ));
        }
        Ok(scaling)
    }
}
