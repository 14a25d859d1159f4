//! Qwen2 / Qwen2.5: the shared decoder with q/k/v biases, usually tied embeddings, and
//! sliding-window layers only when `use_sliding_window` is set.

use serde::Deserialize;

use crate::config::{Architecture, BaseConfig, ConfigError, DecoderConfig};

/// `config.json` of a `Qwen2ForCausalLM`.
#[derive(Debug, Clone, Deserialize)]
pub struct Qwen2Config {
    /// Fields shared with the other architectures (`tie_word_embeddings` included).
    #[serde(flatten)]
    pub base: BaseConfig,
    /// Whether some layers use a sliding window.
    #[serde(default)]
    pub use_sliding_window: bool,
    /// The window of sliding layers.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Layers from this index on slide (when `layer_types` is absent).
    #[serde(default)]
    pub max_window_layers: Option<usize>,
    /// transformers 5: per layer `"full_attention"` or `"sliding_attention"`.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
}

impl Qwen2Config {
    /// Deserialises a config.json value.
    pub fn from_json(json: &serde_json::Value) -> Result<Self, ConfigError> {
        Self::deserialize(json).map_err(|source| ConfigError::Json {
            arch: "Qwen2",
            source,
        })
    }

    /// The shared-decoder configuration (transformers' rule: a layer slides when
    /// `use_sliding_window` and its index is at least `max_window_layers`, or when
    /// `layer_types` says `sliding_attention`).
    pub fn decoder(&self) -> Result<DecoderConfig, ConfigError> {
        let mut decoder = self.base.decoder(Architecture::Qwen2)?;
        decoder.qkv_bias = true;
        let window = if self.use_sliding_window {
            self.sliding_window
        } else {
            None
        };
        if window == Some(0) {
            return Err(ConfigError::Invalid(
                "sliding_window must be positive".into(),
            ));
        }
        let layers = decoder.num_layers;
        decoder.sliding_window = match (&self.layer_types, window) {
            (_, None) => vec![None; layers],
            (Some(types), Some(w)) => {
                if types.len() != layers {
                    return Err(ConfigError::Invalid(format!(
                        "layer_types has {} entries for {layers} layers",
                        types.len()
                    )));
                }
                types
                    .iter()
                    .map(|t| (t == "sliding_attention").then_some(w))
                    .collect()
            }
            (None, Some(w)) => {
                let first = self.max_window_layers.unwrap_or(0);
                (0..layers).map(|l| (l >= first).then_some(w)).collect()
            }
        };
        Ok(decoder)
    }
}
