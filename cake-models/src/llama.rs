//! Llama (Llama 2, Llama 3/3.1 with `llama3` rope scaling, SmolLM2, ...): the shared
//! decoder with no biases and full causal attention.

use serde::Deserialize;

use crate::config::{Architecture, BaseConfig, ConfigError, DecoderConfig};

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
