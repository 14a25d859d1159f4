//! Mistral: the shared decoder with an optional sliding attention window on every layer.
//!
//! What is Mistral's own: `sliding_window` (v0.1: 4096; `null` from v0.2 on, i.e. full
//! attention), applied to every layer alike. No biases, plain RoPE (`rope_theta` 10000 in
//! v0.1, 1000000 from v0.2).
//!
//! # Shapes
//! Example: Mistral-7B-v0.1 / -Instruct-v0.3.
//! - hidden size: `hidden_size` (4096)
//! - layers: `num_hidden_layers` (32)
//! - query heads H: `num_attention_heads` (32)
//! - KV heads Hkv: `num_key_value_heads` (8)
//! - head_dim d: `head_dim`, else `hidden_size / H` (128)
//! - MLP: SwiGLU, `hidden -> 2 x intermediate_size -> hidden` (14336)
//! - vocabulary: `vocab_size` (32000 in v0.1, 32768 in v0.3); separate output head
//!
//! # Layers
//! The shared decoder ([`Model`](crate::model::Model)): every
//! [`DecoderLayer`](crate::layers::DecoderLayer) is RMSNorm, grouped-query
//! [`Attention`](crate::layers::Attention) (fused QKV without bias; with a window, a query
//! at position p sees keys at `p - w < j <= p`) with [`Rotary`](crate::layers::Rotary)
//! embeddings, RMSNorm, and the SwiGLU [`Mlp`](crate::layers::Mlp)
//! (`crate::layers::{attention, rotary, mlp, decoder}`).

use serde::Deserialize;

use super::{Architecture, BaseConfig, ConfigError, DecoderConfig};

/// `config.json` of a `MistralForCausalLM`.
#[derive(Debug, Clone, Deserialize)]
pub struct MistralConfig {
    /// Fields shared with the other architectures.
    #[serde(flatten)]
    pub base: BaseConfig,
    /// Sliding window: a query at position p attends keys at `p - w < j <= p`
    /// (`null` in v0.2+ configs: full attention).
    #[serde(default)]
    pub sliding_window: Option<usize>,
}

impl MistralConfig {
    /// Deserialises a config.json value.
    pub fn from_json(json: &serde_json::Value) -> Result<Self, ConfigError> {
        Self::deserialize(json).map_err(|source| ConfigError::Json {
            arch: "Mistral",
            source,
        })
    }

    /// The shared-decoder configuration.
    pub fn decoder(&self) -> Result<DecoderConfig, ConfigError> {
        let mut decoder = self.base.decoder(Architecture::Mistral)?;
        if self.sliding_window == Some(0) {
            return Err(ConfigError::Invalid(
                "sliding_window must be positive".into(),
            ));
        }
        decoder.sliding_window = vec![self.sliding_window; decoder.num_layers];
        Ok(decoder)
    }
}
