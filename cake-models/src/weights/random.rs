//! Random weights of any shape, for timing models that are not at hand.

use std::collections::HashMap;

use super::{HostTensor, TensorSpec, WeightError, WeightLayout, WeightSource};
use crate::config::DecoderConfig;

/// Weights with the names and shapes a [`DecoderConfig`] asks for ([`WeightLayout`]):
/// RMSNorm weights are 1, everything else is drawn uniformly from [-0.03, 0.03] by a fixed
/// xorshift stream, so the same config always gives the same model. For speed
/// measurements (`cake bench --random-weights`): speed does not depend on the values.
///
/// ```
/// use cake_models::config::decoder_config;
/// use cake_models::weights::RandomWeights;
/// use cake_models::{Cpu, Model};
///
/// let config = decoder_config(&serde_json::json!({
///     "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
///     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
///     "rms_norm_eps": 1e-5, "vocab_size": 100,
/// }))?;
/// let model = Model::<Cpu>::from_weights(&config, &mut RandomWeights::new(&config), &Default::default())?;
/// assert_eq!(model.num_layers(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct RandomWeights {
    /// Every tensor the config implies, by name.
    shapes: HashMap<String, Vec<usize>>,
    state: u64,
}

impl RandomWeights {
    /// Weights for `config`.
    pub fn new(config: &DecoderConfig) -> Self {
        Self {
            shapes: WeightLayout::new(config)
                .tensors()
                .into_iter()
                .map(|TensorSpec { name, shape }| (name, shape))
                .collect(),
            state: 0x2545_f491_4f6c_dd1d,
        }
    }
}

impl WeightSource for RandomWeights {
    fn origin(&self) -> String {
        "random weights".into()
    }

    fn contains(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    fn take(&mut self, name: &str) -> Result<HostTensor, WeightError> {
        let Some(shape) = self.shapes.get(name).cloned() else {
            return Err(WeightError::Missing {
                name: name.to_string(),
                origin: self.origin(),
            });
        };
        let n: usize = shape.iter().product();
        let data = if name.contains("norm") {
            vec![1.0; n]
        } else {
            (0..n)
                .map(|_| {
                    self.state ^= self.state << 13;
                    self.state ^= self.state >> 7;
                    self.state ^= self.state << 17;
                    ((self.state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.06
                })
                .collect()
        };
        Ok(HostTensor { shape, data })
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use cake_core::KeepAll;
    use serde_json::json;

    use super::*;
    use crate::config::decoder_config;
    use crate::{Cpu, Model};

    /// Passes [`RandomWeights`] through, recording what the loader asks for.
    struct Recorder {
        inner: RandomWeights,
        taken: Vec<TensorSpec>,
    }

    impl WeightSource for Recorder {
        fn origin(&self) -> String {
            self.inner.origin()
        }
        fn contains(&self, name: &str) -> bool {
            self.inner.contains(name)
        }
        fn take(&mut self, name: &str) -> Result<HostTensor, WeightError> {
            let tensor = self.inner.take(name)?;
            self.taken.push(TensorSpec {
                name: name.to_string(),
                shape: tensor.shape.clone(),
            });
            Ok(tensor)
        }
    }

    /// 2 layers, hidden 64, 4 query heads and 2 KV heads of width 16, MLP 128, vocabulary 100.
    fn tiny(architecture: &str, tied: bool) -> DecoderConfig {
        decoder_config(&json!({
            "architectures": [architecture], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-6, "vocab_size": 100, "tie_word_embeddings": tied,
        }))
        .expect("tiny config")
    }

    #[test]
    fn tiny_models_load_from_random_weights_with_the_shapes_the_loader_expects() {
        for (architecture, tied) in [
            ("LlamaForCausalLM", true),
            ("LlamaForCausalLM", false),
            ("Qwen2ForCausalLM", false),
        ] {
            let config = tiny(architecture, tied);
            let mut source = Recorder {
                inner: RandomWeights::new(&config),
                taken: Vec::new(),
            };
            let model = Model::<Cpu>::from_weights(&config, &mut source, &Default::default())
                .unwrap_or_else(|e| panic!("{architecture}: {e}"));
            assert_eq!(model.num_layers(), 2);

            // Every tensor the loader took (shape-checked by `take_shaped`) is the table's,
            // in the table's order, and nothing else.
            let taken = &source.taken;
            assert_eq!(
                taken,
                &WeightLayout::new(&config).tensors(),
                "{architecture}"
            );

            // The table against shapes written out by hand.
            let shape = |n: &str| taken.iter().find(|t| t.name == n).map(|t| t.shape.clone());
            let bias = config.qkv_bias;
            let hand: [(&str, Option<Vec<usize>>); 12] = [
                ("self_attn.q_proj.weight", Some(vec![64, 64])),
                ("self_attn.k_proj.weight", Some(vec![32, 64])),
                ("self_attn.v_proj.weight", Some(vec![32, 64])),
                ("self_attn.o_proj.weight", Some(vec![64, 64])),
                ("mlp.gate_proj.weight", Some(vec![128, 64])),
                ("mlp.up_proj.weight", Some(vec![128, 64])),
                ("mlp.down_proj.weight", Some(vec![64, 128])),
                ("input_layernorm.weight", Some(vec![64])),
                ("post_attention_layernorm.weight", Some(vec![64])),
                ("self_attn.q_proj.bias", bias.then(|| vec![64])),
                ("self_attn.k_proj.bias", bias.then(|| vec![32])),
                ("self_attn.v_proj.bias", bias.then(|| vec![32])),
            ];
            for l in 0..2 {
                for (name, want) in &hand {
                    let name = format!("model.layers.{l}.{name}");
                    assert_eq!(&shape(&name), want, "{architecture} {name}");
                }
            }
            assert_eq!(shape("model.embed_tokens.weight"), Some(vec![100, 64]));
            assert_eq!(shape("model.norm.weight"), Some(vec![64]));
            assert_eq!(shape("lm_head.weight"), (!tied).then(|| vec![100, 64]));
            let per_layer = 9 + if bias { 3 } else { 0 };
            assert_eq!(taken.len(), 2 * per_layer + 2 + usize::from(!tied));

            let logits = model
                .forward_prefill(&[1, 2, 3], &mut model.new_caches(), &mut KeepAll)
                .expect("prefill");
            let logits: Vec<f32> = logits.into_data().to_vec().expect("f32 logits");
            assert_eq!(logits.len(), 100);
            assert!(logits.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn random_weights_are_deterministic_with_unit_norms() {
        let config = tiny("LlamaForCausalLM", false);
        let (mut a, mut b) = (RandomWeights::new(&config), RandomWeights::new(&config));
        let name = "model.layers.0.self_attn.q_proj.weight";
        let (x, y) = (a.take(name).expect("q"), b.take(name).expect("q"));
        assert_eq!(x, y);
        assert!(x.data.iter().all(|v| v.abs() <= 0.03));
        let norm = a.take("model.norm.weight").expect("norm");
        assert!(norm.data.iter().all(|&v| v == 1.0));
        assert!(!a.contains("model.layers.2.mlp.up_proj.weight"));
        assert!(!RandomWeights::new(&tiny("LlamaForCausalLM", true)).contains("lm_head.weight"));
    }
}
