//! Qwen2 / Qwen2.5: the shared decoder with q/k/v biases, usually tied embeddings, and
//! sliding-window layers only when `use_sliding_window` is set.
//!
//! What is Qwen2's own: biases on the q, k and v projections (not on o), and the
//! sliding-window fields `use_sliding_window`, `sliding_window`, `max_window_layers` (layers
//! from that index on slide) or, in transformers 5 configs, `layer_types`. Released Qwen2.5
//! models set `use_sliding_window = false`: full attention everywhere. RoPE is plain, with
//! `rope_theta` 1000000.
//!
//! # Shapes
//! Examples: Qwen2.5-Coder-0.5B-Instruct | Qwen2.5-7B-Instruct.
//! - hidden size: `hidden_size` (896 | 3584)
//! - layers: `num_hidden_layers` (24 | 28)
//! - query heads H: `num_attention_heads` (14 | 28)
//! - KV heads Hkv: `num_key_value_heads` (2 | 4)
//! - head_dim d: `hidden_size / H` (64 | 128)
//! - q/k/v biases: `[H d]`, `[Hkv d]`, `[Hkv d]`
//! - MLP: SwiGLU, `hidden -> 2 x intermediate_size -> hidden` (4864 | 18944)
//! - vocabulary: `vocab_size` (151936 | 152064); output head tied to the embedding in the
//!   0.5B config, separate in the 7B one
//!
//! # Layers
//! The shared decoder ([`Model`](crate::model::Model)) with `qkv_bias` set: every
//! [`DecoderLayer`](crate::layers::DecoderLayer) is RMSNorm, grouped-query
//! [`Attention`](crate::layers::Attention) (fused QKV with its bias; per-layer window) with
//! [`Rotary`](crate::layers::Rotary) embeddings, RMSNorm, and the SwiGLU
//! [`Mlp`](crate::layers::Mlp) (`crate::layers::{attention, rotary, mlp, decoder}`).

use serde::Deserialize;

use super::{Architecture, BaseConfig, ConfigError, DecoderConfig};

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
