//! Mistral: the shared decoder with an optional sliding attention window on every layer.

use serde::Deserialize;

use crate::config::{Architecture, BaseConfig, ConfigError, DecoderConfig};

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
