//! The tensors a [`DecoderConfig`] implies, by Hugging Face name with their PyTorch-order
//! shapes: the one table the loader ([`Model::from_weights`](crate::model::Model::from_weights))
//! and [`RandomWeights`](super::RandomWeights) both read.
//!
//! Per layer `i` (`model.layers.{i}.` omitted; H query heads, Hkv KV heads of width d):
//!
//! | tensor | shape |
//! |---|---|
//! | `self_attn.q_proj.weight` (`.bias` with `qkv_bias`) | `[H d, hidden]` (`[H d]`) |
//! | `self_attn.k_proj.weight`, `self_attn.v_proj.weight` (`.bias` with `qkv_bias`) | `[Hkv d, hidden]` (`[Hkv d]`) |
//! | `self_attn.o_proj.weight` | `[hidden, H d]` |
//! | `mlp.gate_proj.weight`, `mlp.up_proj.weight` | `[intermediate, hidden]` |
//! | `mlp.down_proj.weight` | `[hidden, intermediate]` |
//! | `input_layernorm.weight`, `post_attention_layernorm.weight` | `[hidden]` |
//!
//! then `model.embed_tokens.weight` `[vocab, hidden]`, `model.norm.weight` `[hidden]` and,
//! unless the head is tied to the embedding, `lm_head.weight` `[vocab, hidden]`.

use crate::config::DecoderConfig;

/// Name of the token embedding, `[vocab, hidden]`.
pub const EMBED_TOKENS: &str = "model.embed_tokens.weight";
/// Name of the final RMSNorm's weight, `[hidden]`.
pub const FINAL_NORM: &str = "model.norm.weight";

/// One tensor: its Hugging Face name and PyTorch-order shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorSpec {
    /// Hugging Face name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// Shape in PyTorch order (`[out, in]` for a projection).
    pub shape: Vec<usize>,
}

impl TensorSpec {
    fn new(name: impl Into<String>, shape: Vec<usize>) -> Self {
        Self {
            name: name.into(),
            shape,
        }
    }
}

/// One projection: `{name}.weight` is `[rows, inputs]`, `{name}.bias` is `[rows]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    /// Name without the `.weight` / `.bias` suffix, e.g. `model.layers.0.self_attn.q_proj`.
    pub name: String,
    /// Output width.
    pub rows: usize,
    /// Input width.
    pub inputs: usize,
}

impl Projection {
    /// The weight, `[rows, inputs]`.
    pub fn weight(&self) -> TensorSpec {
        TensorSpec::new(
            format!("{}.weight", self.name),
            vec![self.rows, self.inputs],
        )
    }

    /// The bias, `[rows]`.
    pub fn bias(&self) -> TensorSpec {
        TensorSpec::new(format!("{}.bias", self.name), vec![self.rows])
    }
}

/// Projections of the same input that the loader stacks into one linear layer (fused QKV,
/// gate/up), in output order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackedLinear {
    /// The projections, all with the same `inputs`.
    pub parts: Vec<Projection>,
    /// Whether every part has a bias.
    pub bias: bool,
}

impl StackedLinear {
    fn new(parts: &[(String, usize)], inputs: usize, bias: bool) -> Self {
        Self {
            parts: parts
                .iter()
                .map(|(name, rows)| Projection {
                    name: name.clone(),
                    rows: *rows,
                    inputs,
                })
                .collect(),
            bias,
        }
    }

    /// Output width of the stack.
    pub fn rows(&self) -> usize {
        self.parts.iter().map(|p| p.rows).sum()
    }

    /// Input width.
    pub fn inputs(&self) -> usize {
        self.parts.first().map_or(0, |p| p.inputs)
    }

    /// Its tensors in the order the loader reads them: each part's weight, then its bias.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        self.parts
            .iter()
            .flat_map(|p| std::iter::once(p.weight()).chain(self.bias.then(|| p.bias())))
            .collect()
    }
}

/// The tensors of one decoder layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerWeights {
    /// q, k and v projections (fused QKV).
    pub qkv: StackedLinear,
    /// Output projection.
    pub o: StackedLinear,
    /// Gate and up projections of the SwiGLU MLP.
    pub gate_up: StackedLinear,
    /// Down projection.
    pub down: StackedLinear,
    /// RMSNorm before attention.
    pub input_norm: TensorSpec,
    /// RMSNorm before the MLP.
    pub post_attention_norm: TensorSpec,
}

impl LayerWeights {
    /// Its tensors in the order the loader reads them.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let mut all = Vec::new();
        for linear in [&self.qkv, &self.o, &self.gate_up, &self.down] {
            all.extend(linear.tensors());
        }
        all.push(self.input_norm.clone());
        all.push(self.post_attention_norm.clone());
        all
    }
}

/// Names and shapes of every tensor a [`DecoderConfig`] implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightLayout {
    hidden: usize,
    intermediate: usize,
    query_width: usize,
    kv_width: usize,
    vocab: usize,
    layers: usize,
    qkv_bias: bool,
    tied: bool,
}

impl WeightLayout {
    /// The layout of `config`.
    pub fn new(config: &DecoderConfig) -> Self {
        Self {
            hidden: config.hidden_size,
            intermediate: config.intermediate_size,
            query_width: config.num_heads * config.head_dim,
            kv_width: config.num_kv_heads * config.head_dim,
            vocab: config.vocab_size,
            layers: config.num_layers,
            qkv_bias: config.qkv_bias,
            tied: config.tie_word_embeddings,
        }
    }

    /// The tensors of decoder layer `i`.
    pub fn layer(&self, i: usize) -> LayerWeights {
        let (hid, inter, qd, kvd) = (
            self.hidden,
            self.intermediate,
            self.query_width,
            self.kv_width,
        );
        let name = |n: &str| format!("model.layers.{i}.{n}");
        LayerWeights {
            qkv: StackedLinear::new(
                &[
                    (name("self_attn.q_proj"), qd),
                    (name("self_attn.k_proj"), kvd),
                    (name("self_attn.v_proj"), kvd),
                ],
                hid,
                self.qkv_bias,
            ),
            o: StackedLinear::new(&[(name("self_attn.o_proj"), hid)], qd, false),
            gate_up: StackedLinear::new(
                &[(name("mlp.gate_proj"), inter), (name("mlp.up_proj"), inter)],
                hid,
                false,
            ),
            down: StackedLinear::new(&[(name("mlp.down_proj"), hid)], inter, false),
            input_norm: TensorSpec::new(name("input_layernorm.weight"), vec![hid]),
            post_attention_norm: TensorSpec::new(
                name("post_attention_layernorm.weight"),
                vec![hid],
            ),
        }
    }

    /// The token embedding, `[vocab, hidden]`.
    pub fn embed_tokens(&self) -> TensorSpec {
        TensorSpec::new(EMBED_TOKENS, vec![self.vocab, self.hidden])
    }

    /// The final RMSNorm, `[hidden]`.
    pub fn final_norm(&self) -> TensorSpec {
        TensorSpec::new(FINAL_NORM, vec![self.hidden])
    }

    /// The output head when it is not tied to the embedding: `lm_head.weight`,
    /// `[vocab, hidden]`.
    pub fn lm_head(&self) -> StackedLinear {
        StackedLinear::new(&[("lm_head".into(), self.vocab)], self.hidden, false)
    }

    /// Every tensor in the order the loader reads them: each layer's, the embedding, the
    /// final norm, then the output head unless the config ties it.
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let mut all: Vec<TensorSpec> = (0..self.layers)
            .flat_map(|i| self.layer(i).tensors())
            .collect();
        all.push(self.embed_tokens());
        all.push(self.final_norm());
        if !self.tied {
            all.extend(self.lm_head().tensors());
        }
        all
    }
}
