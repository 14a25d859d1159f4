//! Rebuilding a byte-level BPE tokenizer from the `tokenizer.ggml.*` metadata of a GGUF file:
//! the vocabulary respelled in GPT-2's byte alphabet, the merges, the added tokens, and the
//! normalizer / pre-tokenizer the published `tokenizer.json` uses for `tokenizer.ggml.pre`.

use serde_json::{Map, Value as Json, json};

use super::{SpecialTokens, Tokenizer, TokenizerError};
use crate::gguf::{GgufError, GgufFile};

impl Tokenizer {
    /// Rebuilds the tokenizer from the `tokenizer.ggml.*` metadata of a GGUF file.
    ///
    /// Supports byte-level BPE vocabularies (`tokenizer.ggml.model = gpt2`: GPT-2, SmolLM2,
    /// Qwen2, Llama 3, ...), with the pre-tokenizer named by `tokenizer.ggml.pre`.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        let md = file.metadata();
        let model = md.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::Unsupported(format!(
                "{}: GGUF tokenizer model `{model}` is not supported (only byte-level BPE, `gpt2`); \
                 use a Hugging Face model folder with tokenizer.json instead",
                file.path().display()
            )));
        }
        let pre = md.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let tokens = md.get_str_array("tokenizer.ggml.tokens")?;
        let merges = md.get_str_array("tokenizer.ggml.merges")?;
        let token_types = match md.get("tokenizer.ggml.token_type") {
            Some(_) => md.get_int_array("tokenizer.ggml.token_type")?,
            None => Vec::new(),
        };
        let id = |key: &str| -> Result<Option<u32>, TokenizerError> {
            match md.get_u32(key) {
                Ok(id) if (id as usize) < tokens.len() => Ok(Some(id)),
                Ok(id) => Err(TokenizerError::Unsupported(format!(
                    "{key} = {id} is outside the vocabulary of {} tokens",
                    tokens.len()
                ))),
                Err(GgufError::MissingKey { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let eot = id("tokenizer.ggml.eot_token_id")?;
        let unk = id("tokenizer.ggml.unknown_token_id")?;
        let pad = id("tokenizer.ggml.padding_token_id")?;
        let add_bos = match md.get_bool("tokenizer.ggml.add_bos_token") {
            Ok(b) => b,
            Err(GgufError::MissingKey { .. }) => false,
            Err(e) => return Err(e.into()),
        };

        let tokenizer_json = byte_level_bpe_json(
            &tokens,
            &merges,
            &token_types,
            pre,
            if add_bos { bos } else { None },
        )?;
        let inner = super::tokenizer_from_json(tokenizer_json, file.path())?;

        let name = |id: Option<u32>| id.map(|i| tokens[i as usize].to_string());
        let special = SpecialTokens {
            bos_token: name(bos),
            eos_token: name(eos),
            unk_token: name(unk),
            pad_token: name(pad),
        };
        let chat_template = match md.get_str("tokenizer.chat_template") {
            Ok(t) => Some(t.to_string()),
            Err(GgufError::MissingKey { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let eom = id("tokenizer.ggml.eom_token_id")?;
        // End-of-generation ids as llama.cpp collects them: EOS, EOT, EOM, then every token
        // spelled like a known end-of-turn marker.
        let mut eos_token_ids: Vec<u32> = Vec::new();
        let by_text = tokens
            .iter()
            .enumerate()
            .filter(|(_, t)| EOG_TEXTS.contains(t))
            .map(|(i, _)| i as u32);
        for candidate in [eos, eot, eom].into_iter().flatten().chain(by_text) {
            if !eos_token_ids.contains(&candidate) {
                eos_token_ids.push(candidate);
            }
        }
        Ok(Tokenizer {
            inner,
            chat_template,
            special,
            bos_token_id: bos,
            eos_token_ids,
        })
    }
}

/// GPT-2's byte -> printable character table (`bytes_to_unicode`).
fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    table
}

/// Pre-tokenizer split regexes by `tokenizer.ggml.pre` (as llama.cpp and transformers map them).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split_then_byte_level(regex: &str) -> Json {
    json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
        byte_level(false),
    ]})
}

/// `(normalizer, pre_tokenizer)` of the published tokenizer.json for a `tokenizer.ggml.pre` name.
fn pre_tokenizer_for(pre: &str) -> (Json, Json) {
    match pre {
        // SmolLM / SmolLM2: every digit on its own, then GPT-2's byte-level split.
        "smollm" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
        ),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => {
            (json!({"type": "NFC"}), split_then_byte_level(QWEN2_SPLIT))
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe" => {
            (Json::Null, split_then_byte_level(LLAMA3_SPLIT))
        }
        "gpt-4o" | "llama4" => (Json::Null, split_then_byte_level(GPT4O_SPLIT)),
        // "default", "gpt2" and anything else: GPT-2's own regex inside ByteLevel.
        _ => (Json::Null, byte_level(true)),
    }
}

/// Token texts llama.cpp treats as end of generation (`llama-vocab.cpp`, `special_eog_ids`).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

/// GGUF token type of control tokens (`<|im_start|>`), matched whole and special.
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF token type of user-defined tokens, matched whole but not special.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// A `tokenizer.json` value for a byte-level BPE vocabulary from GGUF metadata.
fn byte_level_bpe_json(
    tokens: &[&str],
    merges: &[&str],
    token_types: &[i64],
    pre: &str,
    bos: Option<u32>,
) -> Result<Json, TokenizerError> {
    let table = byte_to_char();
    let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));

    let mut vocab = Map::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        // Tokens llama.cpp stored as raw text (outside the byte alphabet) get the byte spelling.
        let spelled = if in_alphabet(token) {
            token.to_string()
        } else {
            token.bytes().map(|b| table[b as usize]).collect()
        };
        vocab.insert(spelled, json!(id));
    }
    let mut merge_pairs = Vec::with_capacity(merges.len());
    for (i, merge) in merges.iter().enumerate() {
        let (a, b) = merge.split_once(' ').ok_or_else(|| {
            TokenizerError::Unsupported(format!(
                "tokenizer.ggml.merges[{i}] = {merge:?} is not two tokens"
            ))
        })?;
        merge_pairs.push(json!([a, b]));
    }

    let mut added = Vec::new();
    for (id, (token, &ty)) in tokens.iter().zip(token_types).enumerate() {
        let special = match ty {
            TOKEN_TYPE_CONTROL if in_alphabet(token) => true,
            TOKEN_TYPE_USER_DEFINED => false,
            _ => continue,
        };
        added.push(json!({
            "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": special,
        }));
    }

    let post_processor = match bos {
        Some(bos) => {
            let bos_token = tokens[bos as usize];
            json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos_token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos_token, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos_token, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos_token: {"id": bos_token, "ids": [bos], "tokens": [bos_token]}},
            })
        }
        None => Json::Null,
    };
    let (normalizer, pre_tokenizer) = pre_tokenizer_for(pre);
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merge_pairs,
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = byte_to_char();
        // bytes_to_unicode(): space (32) -> 'Ġ' (U+0120), newline (10) -> 'Ċ' (U+010A), 'A' -> 'A'.
        assert_eq!(t[32], 'Ġ');
        assert_eq!(t[10], 'Ċ');
        assert_eq!(t[b'A' as usize], 'A');
    }
}
