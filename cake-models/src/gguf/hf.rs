//! The Hugging Face view of a GGUF file: `config.json` values and HF-named f32 tensors.
//!
//! Mirrors transformers' GGUF loader (`modeling_gguf_pytorch_utils.py`, `integrations/ggml.py`):
//! the same config keys, the same tensor names, and the same reverse permutation of the
//! Llama-family q/k projection rows that llama.cpp's converter applied for its rotary layout.

use cake_kernels::PackedRows;
use serde_json::{Map, Value as Json, json};

use super::{GgufError, GgufFile, TensorInfo, dequantize};

/// How a GGUF architecture maps onto a Hugging Face one.
struct HfArch {
    /// `architectures[0]` in config.json.
    class: &'static str,
    /// `model_type` in config.json.
    model_type: &'static str,
    /// Whether llama.cpp permuted the q/k rows (Llama and Mistral; not Qwen2).
    permuted_qk: bool,
}

impl GgufFile {
    fn hf_arch(&self) -> Result<HfArch, GgufError> {
        let arch = self.architecture()?;
        let name = self
            .metadata
            .get_str("general.name")
            .unwrap_or_default()
            .to_ascii_lowercase();
        match arch {
            "llama" if name.contains("mistral") => Ok(HfArch {
                class: "MistralForCausalLM",
                model_type: "mistral",
                permuted_qk: true,
            }),
            "llama" => Ok(HfArch {
                class: "LlamaForCausalLM",
                model_type: "llama",
                permuted_qk: true,
            }),
            "mistral" => Ok(HfArch {
                class: "MistralForCausalLM",
                model_type: "mistral",
                permuted_qk: true,
            }),
            "qwen2" => Ok(HfArch {
                class: "Qwen2ForCausalLM",
                model_type: "qwen2",
                permuted_qk: false,
            }),
            other => Err(GgufError::UnsupportedArchitecture(other.to_string())),
        }
    }

    /// `(query heads, key/value heads)` from `{arch}.attention.head_count[_kv]`.
    fn head_counts(&self) -> Result<(usize, usize), GgufError> {
        let arch = self.architecture()?;
        let heads = self
            .metadata
            .get_u32(&format!("{arch}.attention.head_count"))? as usize;
        let kv = match self
            .metadata
            .get_u32(&format!("{arch}.attention.head_count_kv"))
        {
            Ok(kv) => kv as usize,
            Err(GgufError::MissingKey { .. }) => heads,
            Err(e) => return Err(e),
        };
        Ok((heads, kv))
    }

    /// A Hugging Face style `config.json` value built from the metadata.
    ///
    /// Keys: architectures, model_type, hidden_size, intermediate_size, num_hidden_layers,
    /// num_attention_heads, num_key_value_heads, head_dim (when the file states it), rms_norm_eps,
    /// rope_theta, vocab_size, max_position_embeddings, tie_word_embeddings (true when
    /// `output.weight` is absent), bos_token_id, eos_token_id, hidden_act, rope_scaling (when present).
    pub fn hf_config(&self) -> Result<Json, GgufError> {
        let hf = self.hf_arch()?;
        let arch = self.architecture()?;
        let md = &self.metadata;
        let key = |k: &str| format!("{arch}.{k}");
        let (heads, kv_heads) = self.head_counts()?;
        let hidden = md.get_u32(&key("embedding_length"))?;

        let mut c = Map::new();
        c.insert("architectures".into(), json!([hf.class]));
        c.insert("model_type".into(), json!(hf.model_type));
        c.insert("hidden_size".into(), json!(hidden));
        c.insert(
            "intermediate_size".into(),
            json!(md.get_u32(&key("feed_forward_length"))?),
        );
        c.insert(
            "num_hidden_layers".into(),
            json!(md.get_u32(&key("block_count"))?),
        );
        c.insert("num_attention_heads".into(), json!(heads));
        c.insert("num_key_value_heads".into(), json!(kv_heads));
        c.insert("hidden_act".into(), json!("silu"));
        let eps = md.get_f32(&key("attention.layer_norm_rms_epsilon"))?;
        c.insert("rms_norm_eps".into(), json!(decimal(eps)));
        // GGUF omits the frequency base when it is the llama.cpp default.
        let theta = md.get_f32(&key("rope.freq_base")).unwrap_or(10_000.0);
        c.insert("rope_theta".into(), json!(decimal(theta)));
        c.insert(
            "max_position_embeddings".into(),
            json!(md.get_u32(&key("context_length"))?),
        );
        if let Ok(head_dim) = md.get_u32(&key("attention.key_length")) {
            c.insert("head_dim".into(), json!(head_dim));
        } else if hf.model_type != "qwen2"
            && let Ok(rot) = md.get_u32(&key("rope.dimension_count"))
        {
            // transformers reads rope.dimension_count as head_dim for llama/mistral only.
            c.insert("head_dim".into(), json!(rot));
        }
        let vocab = match md.get_u32(&key("vocab_size")) {
            Ok(v) => v as usize,
            Err(GgufError::MissingKey { .. }) => match md.get("tokenizer.ggml.tokens") {
                Some(super::Value::Array(tokens)) => tokens.len(),
                _ => self.tensor_info("token_embd.weight")?.shape()[0],
            },
            Err(e) => return Err(e),
        };
        c.insert("vocab_size".into(), json!(vocab));
        let tied = !self.tensors.iter().any(|t| t.name == "output.weight");
        c.insert("tie_word_embeddings".into(), json!(tied));
        for (hf_key, gguf_key) in [
            ("bos_token_id", "tokenizer.ggml.bos_token_id"),
            ("eos_token_id", "tokenizer.ggml.eos_token_id"),
        ] {
            if let Ok(id) = md.get_u32(gguf_key) {
                c.insert(hf_key.into(), json!(id));
            }
        }
        if let Ok(window) = md.get_u32(&key("attention.sliding_window")) {
            c.insert("sliding_window".into(), json!(window));
        }
        if hf.model_type == "qwen2" {
            c.insert("use_sliding_window".into(), json!(false));
        }
        if let Ok(kind) = md.get_str(&key("rope.scaling.type"))
            && kind != "none"
        {
            let mut s = Map::new();
            s.insert("rope_type".into(), json!(kind));
            s.insert("type".into(), json!(kind));
            if let Ok(f) = md.get_f32(&key("rope.scaling.factor")) {
                s.insert("factor".into(), json!(decimal(f)));
            }
            if let Ok(n) = md.get_u32(&key("rope.scaling.original_context_length")) {
                s.insert("original_max_position_embeddings".into(), json!(n));
            }
            c.insert("rope_scaling".into(), Json::Object(s));
        }
        Ok(Json::Object(c))
    }

    /// Every tensor dequantised to f32 under its Hugging Face name, shape in PyTorch order
    /// (`[out, in]` for linears), Llama-family q/k rows un-permuted. Tensors with no HF
    /// counterpart (`rope_freqs.weight`) are skipped.
    pub fn hf_tensors(
        &self,
    ) -> impl Iterator<Item = Result<(String, Vec<usize>, Vec<f32>), GgufError>> + '_ {
        self.tensors
            .iter()
            .filter(|t| t.name != "rope_freqs.weight")
            .map(move |info| {
                let name = hf_name(&info.name)?;
                let (shape, data) = self.hf_load(info)?;
                Ok((name, shape, data))
            })
    }

    /// The rotary frequency divisors `[head_dim / 2]` of `rope_freqs.weight`, the form in
    /// which llama.cpp's converter stores Llama-3 rope scaling (its metadata carries no
    /// scaling type), or `None` when the file has no such tensor.
    ///
    /// # Errors
    /// When the tensor does not hold `head_dim / 2` finite, positive values.
    pub fn rope_freq_factors(&self, head_dim: usize) -> Result<Option<Vec<f32>>, GgufError> {
        let Ok(info) = self.tensor_info("rope_freqs.weight") else {
            return Ok(None);
        };
        let factors = dequantize(info.ty, self.tensor_bytes(info), &info.name)?;
        if factors.len() != head_dim / 2 || factors.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
            return Err(GgufError::Corrupt {
                path: self.path.clone(),
                what: format!(
                    "`rope_freqs.weight` must hold {} finite positive factors (head_dim / 2), found {} values",
                    head_dim / 2,
                    factors.len()
                ),
            });
        }
        Ok(Some(factors))
    }

    /// One tensor by Hugging Face name: `(shape, values)` as in [`GgufFile::hf_tensors`].
    pub fn hf_tensor(&self, hf: &str) -> Result<(Vec<usize>, Vec<f32>), GgufError> {
        let gguf = gguf_name(hf).ok_or_else(|| GgufError::MissingTensor {
            name: hf.to_string(),
        })?;
        let info = self.tensor_info(&gguf)?;
        self.hf_load(info)
    }

    /// One linear weight by Hugging Face name as stored, when its type stays packed
    /// ([`GgmlType::block_format`]) and it is a matrix: rows `[out]` of `[in]` values, q/k
    /// rows un-permuted as in [`GgufFile::hf_tensors`]. `None` for every other tensor.
    pub fn hf_packed(&self, hf: &str) -> Result<Option<PackedRows>, GgufError> {
        let gguf = gguf_name(hf).ok_or_else(|| GgufError::MissingTensor {
            name: hf.to_string(),
        })?;
        let info = self.tensor_info(&gguf)?;
        let shape = info.shape();
        let (Some(format), &[rows, cols]) = (info.ty.block_format(), &shape[..]) else {
            return Ok(None);
        };
        let rows =
            PackedRows::new(format, rows, cols, self.tensor_bytes(info).to_vec()).map_err(|e| {
                GgufError::Corrupt {
                    path: self.path.clone(),
                    what: format!("tensor `{}`: {e}", info.name),
                }
            })?;
        Ok(Some(
            match self.qk_heads(info, rows.rows(), !rows.data().is_empty())? {
                Some(n_head) => {
                    let total = rows.rows();
                    rows.reorder_rows(|dst| permuted_source(dst, total, n_head))
                }
                None => rows,
            },
        ))
    }

    /// For a Llama-family q or k projection whose rows llama.cpp permuted, its head count;
    /// `None` for every other tensor. `has_columns`: whether the tensor holds any values.
    fn qk_heads(
        &self,
        info: &TensorInfo,
        rows: usize,
        has_columns: bool,
    ) -> Result<Option<usize>, GgufError> {
        let is_q = info.name.contains(".attn_q.");
        let is_k = info.name.contains(".attn_k.");
        if !((is_q || is_k) && self.hf_arch()?.permuted_qk) {
            return Ok(None);
        }
        let (heads, kv_heads) = self.head_counts()?;
        let n_head = if is_q { heads } else { kv_heads };
        // `rows == 0` (a dimension of 0 in the file) would divide by zero below; empty
        // data with many rows (another dimension 0) would loop over a count the file
        // claims without data behind it.
        if n_head == 0 || rows == 0 || !rows.is_multiple_of(2 * n_head) {
            return Err(GgufError::Corrupt {
                path: self.path.clone(),
                what: format!(
                    "tensor `{}` has {rows} rows, not a multiple of 2 x {n_head} heads",
                    info.name
                ),
            });
        }
        if !has_columns {
            return Err(GgufError::Corrupt {
                path: self.path.clone(),
                what: format!(
                    "tensor `{}` has shape {:?}: a projection needs at least one column",
                    info.name,
                    info.shape()
                ),
            });
        }
        Ok(Some(n_head))
    }

    fn hf_load(&self, info: &TensorInfo) -> Result<(Vec<usize>, Vec<f32>), GgufError> {
        let shape = info.shape();
        let mut data = dequantize(info.ty, self.tensor_bytes(info), &info.name)?;
        let rows = shape.first().copied().unwrap_or(0);
        let whole_rows = !data.is_empty() && rows > 0 && data.len().is_multiple_of(rows);
        if let Some(n_head) = self.qk_heads(info, rows, whole_rows)? {
            data = unpermute_rows(&data, rows, n_head);
        }
        Ok((shape, data))
    }
}

/// An f32 as the f64 with the same shortest decimal spelling (`1e-5`, not `9.99999974e-6`).
fn decimal(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

/// Undoes llama.cpp's q/k permutation: within each head, row `2*i + j` of the file becomes
/// row `j*half + i` (`half` = head_dim / 2). Same as transformers' `_reverse_permute_weights`:
/// `w.reshape(n_head, half, 2, cols).swapaxes(1, 2)`.
pub(super) fn unpermute_rows(data: &[f32], rows: usize, n_head: usize) -> Vec<f32> {
    let cols = data.len() / rows;
    let mut out = vec![0.0; data.len()];
    for (dst, out) in out.chunks_exact_mut(cols).enumerate() {
        let src = permuted_source(dst, rows, n_head);
        out.copy_from_slice(&data[src * cols..(src + 1) * cols]);
    }
    out
}

/// The row of a llama.cpp-permuted q/k projection (`rows` rows, `n_head` heads) that holds
/// row `dst` of the Hugging Face order: within a head, HF row `j*half + i` is stored at
/// `2*i + j`.
fn permuted_source(dst: usize, rows: usize, n_head: usize) -> usize {
    let half = rows / n_head / 2;
    let (head, within) = (dst / (2 * half), dst % (2 * half));
    let (j, i) = (within / half, within % half);
    head * 2 * half + 2 * i + j
}

/// Per-layer GGUF suffix -> HF suffix.
const LAYER_NAMES: &[(&str, &str)] = &[
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_q.bias", "self_attn.q_proj.bias"),
    ("attn_k.bias", "self_attn.k_proj.bias"),
    ("attn_v.bias", "self_attn.v_proj.bias"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
];

/// Whole-model GGUF name -> HF name.
const GLOBAL_NAMES: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// The Hugging Face name of a GGUF tensor name.
pub fn hf_name(gguf: &str) -> Result<String, GgufError> {
    if let Some((_, hf)) = GLOBAL_NAMES.iter().find(|(g, _)| *g == gguf) {
        return Ok(hf.to_string());
    }
    let unknown = || GgufError::UnknownTensorName(gguf.to_string());
    let rest = gguf.strip_prefix("blk.").ok_or_else(unknown)?;
    let (layer, suffix) = rest.split_once('.').ok_or_else(unknown)?;
    let layer: usize = layer.parse().map_err(|_| unknown())?;
    let (_, hf) = LAYER_NAMES
        .iter()
        .find(|(g, _)| *g == suffix)
        .ok_or_else(unknown)?;
    Ok(format!("model.layers.{layer}.{hf}"))
}

/// The GGUF name of a Hugging Face tensor name, if it has one.
pub fn gguf_name(hf: &str) -> Option<String> {
    if let Some((g, _)) = GLOBAL_NAMES.iter().find(|(_, h)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (g, _) = LAYER_NAMES.iter().find(|(_, h)| *h == suffix)?;
    Some(format!("blk.{layer}.{g}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_one_head_by_hand() {
        // One head of 4 rows (half = 2), 2 columns. File row 2*i + j holds HF row j*2 + i:
        // file rows [r0, r1, r2, r3] = HF rows [0, 2, 1, 3], so HF order is [r0, r2, r1, r3].
        let data = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5];
        let out = unpermute_rows(&data, 4, 1);
        assert_eq!(out, vec![0.0, 0.5, 2.0, 2.5, 1.0, 1.5, 3.0, 3.5]);
    }

    #[test]
    fn names_round_trip() {
        for g in [
            "token_embd.weight",
            "output.weight",
            "output_norm.weight",
            "blk.12.attn_k.bias",
            "blk.3.ffn_down.weight",
        ] {
            let hf = hf_name(g).expect("known");
            assert_eq!(gguf_name(&hf).as_deref(), Some(g));
        }
        assert_eq!(
            hf_name("blk.0.attn_q.weight").expect("q"),
            "model.layers.0.self_attn.q_proj.weight"
        );
        assert!(hf_name("blk.x.attn_q.weight").is_err());
        assert!(hf_name("mystery.weight").is_err());
    }
}
