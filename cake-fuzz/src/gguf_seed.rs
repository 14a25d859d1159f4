//! GGUF files built by the rules of the format (magic, version 3, counts, typed metadata,
//! tensor table, aligned data; <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>),
//! and a scanner that lists the size, count and type fields of a GGUF image so the mutator
//! can aim extreme values at them.

use crate::mutate::Field;

/// A metadata value of a built GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// `uint32` (type 4).
    U32(u32),
    /// `int32` (type 5).
    I32(i32),
    /// `float32` (type 6).
    F32(f32),
    /// `bool` (type 7).
    Bool(bool),
    /// `string` (type 8).
    Str(String),
    /// `uint64` (type 10).
    U64(u64),
    /// `array` of strings.
    StrArray(Vec<String>),
    /// `array` of `int32`.
    I32Array(Vec<i32>),
}

/// One tensor of a built GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// GGUF name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions, innermost first (as GGUF lists them).
    pub dims: Vec<u64>,
    /// GGML type id (0 F32, 1 F16, 8 Q8_0, ...).
    pub ty: u32,
    /// The tensor's bytes; may be shorter than the dimensions imply (for corrupt files).
    pub data: Vec<u8>,
}

/// A GGUF file under construction.
#[derive(Debug, Clone, Default)]
pub struct GgufBuilder {
    /// Metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    /// Tensors in file order.
    pub tensors: Vec<TensorEntry>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl GgufBuilder {
    /// Adds a metadata entry.
    pub fn meta(mut self, key: &str, value: MetaValue) -> Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Adds a tensor.
    pub fn tensor(mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> Self {
        self.tensors.push(TensorEntry {
            name: name.to_string(),
            dims: dims.to_vec(),
            ty,
            data,
        });
        self
    }

    /// The file image (version 3, alignment 32).
    pub fn to_bytes(&self) -> Vec<u8> {
        const ALIGN: usize = 32;
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            let (ty, body): (u32, Vec<u8>) = match value {
                MetaValue::U32(v) => (4, v.to_le_bytes().to_vec()),
                MetaValue::I32(v) => (5, v.to_le_bytes().to_vec()),
                MetaValue::F32(v) => (6, v.to_le_bytes().to_vec()),
                MetaValue::Bool(v) => (7, vec![u8::from(*v)]),
                MetaValue::Str(s) => {
                    let mut b = Vec::new();
                    put_str(&mut b, s);
                    (8, b)
                }
                MetaValue::U64(v) => (10, v.to_le_bytes().to_vec()),
                MetaValue::StrArray(items) => {
                    let mut b = 8u32.to_le_bytes().to_vec();
                    b.extend_from_slice(&(items.len() as u64).to_le_bytes());
                    for s in items {
                        put_str(&mut b, s);
                    }
                    (9, b)
                }
                MetaValue::I32Array(items) => {
                    let mut b = 5u32.to_le_bytes().to_vec();
                    b.extend_from_slice(&(items.len() as u64).to_le_bytes());
                    for v in items {
                        b.extend_from_slice(&v.to_le_bytes());
                    }
                    (9, b)
                }
            };
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&body);
        }
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.data.len()).div_ceil(ALIGN) * ALIGN;
        }
        out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
        let data_start = out.len();
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off, 0);
            out.extend_from_slice(&t.data);
        }
        out
    }
}

/// Deterministic filler bytes (tensor values; any bit pattern is a valid input).
fn filler(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) & 0x3f)
        .collect()
}

/// Bytes of an F32 tensor of `n` small values.
fn f32_data(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| ((i % 17) as f32 * 0.01 - 0.08).to_le_bytes())
        .collect()
}

/// A small Llama (`qwen2 = false`) or Qwen2 GGUF with a byte-level BPE tokenizer, a chat
/// template and one tensor of each of F32, F16 and Q8_0: header-dense, so that most
/// mutations land in the metadata and the tensor table.
pub fn small_model(qwen2: bool) -> Vec<u8> {
    let arch = if qwen2 { "qwen2" } else { "llama" };
    let mut tokens: Vec<String> = "abcdehlo0123456789".chars().map(String::from).collect();
    tokens.extend(
        ["Ġ", "he", "ll", "llo", "hello", "Ġhello", "Ċ"]
            .iter()
            .map(|s| s.to_string()),
    );
    let first_special = tokens.len();
    tokens.extend(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
            .iter()
            .map(|s| s.to_string()),
    );
    let vocab = tokens.len();
    let mut types = vec![1i32; vocab];
    for t in &mut types[first_special..] {
        *t = 3;
    }
    let merges = ["h e", "l l", "ll o", "he llo", "Ġ hello"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = 32u64;
    let template = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
    let mut b = GgufBuilder::default()
        .meta("general.architecture", MetaValue::Str(arch.into()))
        .meta("general.name", MetaValue::Str(format!("fuzz-{arch}")))
        .meta("general.alignment", MetaValue::U32(32))
        .meta(&key("context_length"), MetaValue::U32(256))
        .meta(&key("embedding_length"), MetaValue::U32(hidden as u32))
        .meta(&key("feed_forward_length"), MetaValue::U32(64))
        .meta(&key("block_count"), MetaValue::U32(1))
        .meta(&key("attention.head_count"), MetaValue::U32(2))
        .meta(&key("attention.head_count_kv"), MetaValue::U32(1))
        .meta(
            &key("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(1e-5),
        )
        .meta(&key("rope.freq_base"), MetaValue::F32(10_000.0))
        .meta(&key("rope.dimension_count"), MetaValue::U32(16))
        .meta("tokenizer.ggml.model", MetaValue::Str("gpt2".into()))
        .meta(
            "tokenizer.ggml.pre",
            MetaValue::Str(if qwen2 { "qwen2" } else { "smollm" }.into()),
        )
        .meta("tokenizer.ggml.tokens", MetaValue::StrArray(tokens))
        .meta("tokenizer.ggml.token_type", MetaValue::I32Array(types))
        .meta("tokenizer.ggml.merges", MetaValue::StrArray(merges))
        .meta(
            "tokenizer.ggml.bos_token_id",
            MetaValue::U32(first_special as u32),
        )
        .meta(
            "tokenizer.ggml.eos_token_id",
            MetaValue::U32(first_special as u32 + 2),
        )
        .meta("tokenizer.ggml.add_bos_token", MetaValue::Bool(!qwen2))
        .meta("tokenizer.chat_template", MetaValue::Str(template.into()));
    if !qwen2 {
        b = b
            .meta(&key("vocab_size"), MetaValue::U64(vocab as u64))
            .meta(&key("rope.scaling.type"), MetaValue::Str("none".into()));
    }
    // Q8_0: blocks of 32 values, 34 bytes each (f16 scale + 32 i8).
    let q8_0 = |rows: usize| filler(rows * (hidden as usize / 32) * 34, 7);
    b = b
        .tensor(
            "token_embd.weight",
            &[hidden, vocab as u64],
            0,
            f32_data(hidden as usize * vocab),
        )
        .tensor(
            "output_norm.weight",
            &[hidden],
            0,
            f32_data(hidden as usize),
        )
        .tensor("blk.0.attn_q.weight", &[hidden, hidden], 8, q8_0(32))
        .tensor(
            "blk.0.attn_k.weight",
            &[hidden, 16],
            1,
            filler(hidden as usize * 16 * 2, 3),
        );
    if qwen2 {
        b = b.tensor("blk.0.attn_q.bias", &[hidden], 0, f32_data(hidden as usize));
    }
    b.to_bytes()
}

/// The numeric fields of a GGUF image, found by walking its header and tensor table:
/// version, counts, string lengths, value and item types, array counts, dimension counts,
/// dimensions, tensor types and offsets. At most a few entries of each array are listed.
/// Stops quietly at the first inconsistency.
pub fn gguf_fields(bytes: &[u8]) -> Vec<Field> {
    let mut fields = Vec::new();
    let mut w = Walker { bytes, pos: 0 };
    let _ = w.walk(&mut fields);
    fields
}

struct Walker<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Walker<'_> {
    /// The next `N` bytes, recorded as one field.
    fn field<const N: usize>(&mut self, fields: &mut Vec<Field>) -> Option<[u8; N]> {
        let bytes = self.bytes.get(self.pos..self.pos + N)?.try_into().ok()?;
        fields.push(Field {
            offset: self.pos,
            width: N as u8,
        });
        self.pos += N;
        Some(bytes)
    }

    fn u32(&mut self, fields: &mut Vec<Field>) -> Option<u32> {
        self.field(fields).map(u32::from_le_bytes)
    }

    fn u64(&mut self, fields: &mut Vec<Field>) -> Option<u64> {
        self.field(fields).map(u64::from_le_bytes)
    }

    fn skip(&mut self, n: u64) -> Option<()> {
        let end = self.pos.checked_add(usize::try_from(n).ok()?)?;
        (end <= self.bytes.len()).then(|| self.pos = end)
    }

    fn string(&mut self, fields: &mut Vec<Field>) -> Option<()> {
        let len = self.u64(fields)?;
        self.skip(len)
    }

    fn value(&mut self, ty: u32, fields: &mut Vec<Field>, depth: u32) -> Option<()> {
        match ty {
            0 | 1 | 7 => self.skip(1),
            2 | 3 => self.skip(2),
            4..=6 => self.skip(4),
            10..=12 => self.skip(8),
            8 => self.string(fields),
            9 if depth < 4 => {
                let item = self.u32(fields)?;
                let count = self.u64(fields)?;
                for i in 0..count {
                    // Only the first few items' fields are worth aiming at.
                    let mut sink = Vec::new();
                    let target = if i < 4 { &mut *fields } else { &mut sink };
                    self.value(item, target, depth + 1)?;
                }
                Some(())
            }
            _ => None,
        }
    }

    fn walk(&mut self, fields: &mut Vec<Field>) -> Option<()> {
        self.skip(4)?; // magic
        self.u32(fields)?; // version
        let n_tensors = self.u64(fields)?;
        let n_kv = self.u64(fields)?;
        for _ in 0..n_kv {
            self.string(fields)?;
            let ty = self.u32(fields)?;
            self.value(ty, fields, 0)?;
        }
        for _ in 0..n_tensors {
            self.string(fields)?;
            let n_dims = self.u32(fields)?;
            for _ in 0..n_dims.min(8) {
                self.u64(fields)?;
            }
            self.u32(fields)?; // type
            self.u64(fields)?; // offset
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_models_parse() {
        for qwen2 in [false, true] {
            let bytes = small_model(qwen2);
            let f = cake_models::gguf::GgufFile::from_bytes("built.gguf", bytes.clone())
                .expect("built GGUF parses");
            assert_eq!(f.tensors().len(), 4 + usize::from(qwen2));
            for t in f.tensors() {
                f.dequantize(&t.name).expect("dequantises");
            }
            let config = f.hf_config().expect("hf config");
            cake_models::config::decoder_config(&config).expect("decoder config");
            let tok = cake_models::tokenizer::Tokenizer::from_gguf(&f).expect("tokenizer");
            let ids = tok.encode("hello hello", true).expect("encode");
            assert!(!ids.is_empty());
            assert!(gguf_fields(&bytes).len() > 40);
        }
    }
}
