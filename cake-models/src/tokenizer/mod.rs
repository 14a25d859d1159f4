//! Tokenizer and chat template, from a Hugging Face folder or rebuilt from GGUF metadata.
//!
//! A Hugging Face folder gives `tokenizer.json` (read by the `tokenizers` crate) and
//! `tokenizer_config.json` (chat template, special tokens). A GGUF file has neither: its
//! `tokenizer.ggml.*` metadata (vocabulary, merges, token types, special ids, pre-tokenizer
//! name) is turned into the same `tokenizer.json` structure the model was published with, and
//! its `tokenizer.chat_template` is rendered the way transformers renders it (Jinja with
//! `trim_blocks` and `lstrip_blocks`, `raise_exception`, `strftime_now`, Python-style `tojson`).
//!
//! This file holds the [`Tokenizer`] type, its errors, `tokenizer.json` loading, encoding,
//! decoding and token ids; `gguf.rs` rebuilds the byte-level BPE tokenizer from GGUF
//! metadata, `chat.rs` renders chat templates ([`ChatMessage`]) and `stream.rs` turns
//! generated ids into text as they come ([`TextStreamer`]).

mod chat;
mod gguf;
mod stream;

use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value as Json};

use crate::file::{FileError, read_json, read_text};
use crate::gguf::GgufError;

pub use chat::{ChatMessage, MAX_TEMPLATE_EXTENT};
pub use stream::TextStreamer;

/// Everything that can go wrong loading or using a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read, or a JSON file is malformed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The `tokenizers` crate rejected a tokenizer or failed to encode/decode.
    #[error("tokenizer error ({context}): {message}")]
    Tokenizers {
        /// What was being done.
        context: String,
        /// The library's message.
        message: String,
    },
    /// GGUF metadata is missing or malformed.
    #[error("GGUF tokenizer metadata: {0}")]
    Gguf(#[from] GgufError),
    /// A tokenizer kind this loader cannot rebuild.
    #[error("{0}")]
    Unsupported(String),
    /// The chat template failed to compile or render.
    #[error("chat template error: {0}")]
    Template(String),
}

/// Special token strings handed to chat templates (`bos_token`, `eos_token`, ...).
#[derive(Debug, Clone, Default, Serialize)]
struct SpecialTokens {
    bos_token: Option<String>,
    eos_token: Option<String>,
    unk_token: Option<String>,
    pad_token: Option<String>,
}

/// A text tokenizer with its chat template and stop tokens.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    special: SpecialTokens,
    bos_token_id: Option<u32>,
    eos_token_ids: Vec<u32>,
}

fn tk_err(context: &str) -> impl FnOnce(tokenizers::Error) -> TokenizerError + '_ {
    move |e| TokenizerError::Tokenizers {
        context: context.to_string(),
        message: e.to_string(),
    }
}

/// Builds a `tokenizers` tokenizer from a parsed `tokenizer.json` (or one rebuilt from GGUF
/// metadata).
///
/// `tokenizers` 0.22 deserialises some parts through `.expect()`: a syntax error inside the
/// `decoder` object (`decoders/mod.rs`) or a malformed `Precompiled` normalizer
/// (`normalizers/mod.rs`) panics instead of failing. Parsing the text to a JSON value first
/// (done by the caller) rules out the syntax errors; a panic that still escapes is turned
/// into an error here, so a corrupt file never takes the process down.
fn tokenizer_from_json(json: Json, path: &Path) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let error = |message: String| TokenizerError::Tokenizers {
        context: path.display().to_string(),
        message,
    };
    check_added_tokens(&json).map_err(error)?;
    guarded(&path.display().to_string(), move || {
        serde_json::from_value::<tokenizers::Tokenizer>(json)
    })?
    .map_err(|e| error(e.to_string()))
}

/// Longest added (special) token accepted, in bytes. `tokenizers` matches added tokens with
/// an Aho-Corasick automaton whose construction takes time quadratic in a token's length
/// when the token repeats one character (a 64 KiB token takes minutes); real special
/// tokens are a few dozen bytes.
pub const MAX_ADDED_TOKEN_BYTES: usize = 1024;

/// Refuses added tokens longer than [`MAX_ADDED_TOKEN_BYTES`].
fn check_added_tokens(json: &Json) -> Result<(), String> {
    let tokens = json.get("added_tokens").and_then(Json::as_array);
    for (i, token) in tokens.into_iter().flatten().enumerate() {
        if let Some(content) = token.get("content").and_then(Json::as_str)
            && content.len() > MAX_ADDED_TOKEN_BYTES
        {
            return Err(format!(
                "added_tokens[{i}] is {} bytes long (at most {MAX_ADDED_TOKEN_BYTES} are accepted)",
                content.len()
            ));
        }
    }
    Ok(())
}

/// Runs a call into `tokenizers`, turning a panic into an error. `tokenizers` 0.22 panics
/// on some malformed files instead of failing: while loading (a syntax error inside the
/// `decoder` object, a malformed `Precompiled` normalizer) and while encoding (a
/// `TemplateProcessing` post-processor that names a special token it does not define,
/// `processors/template.rs`), so every call from here is guarded.
fn guarded<T>(context: &str, f: impl FnOnce() -> T) -> Result<T, TokenizerError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        TokenizerError::Tokenizers {
            context: context.to_string(),
            message: format!("the tokenizers crate panicked: {what}"),
        }
    })
}

/// A special-token entry of `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_string(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json` and `tokenizer_config.json` (and `generation_config.json` /
    /// `chat_template.jinja` when present) from a Hugging Face model folder.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(FileError::Io {
                path: tok_path,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "tokenizer.json missing from the model folder",
                ),
            }
            .into());
        }
        let inner = tokenizer_from_json(read_json(&tok_path)?, &tok_path)?;
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            read_json(&config_path)?
        } else {
            Json::Object(Map::new())
        };

        let special = SpecialTokens {
            bos_token: token_string(config.get("bos_token")),
            eos_token: token_string(config.get("eos_token")),
            unk_token: token_string(config.get("unk_token")),
            pad_token: token_string(config.get("pad_token")),
        };
        let jinja_path = dir.join("chat_template.jinja");
        let chat_template = if jinja_path.is_file() {
            Some(read_text(&jinja_path)?)
        } else {
            match config.get("chat_template") {
                Some(Json::String(s)) => Some(s.clone()),
                // A list of named templates: take "default", else the first.
                Some(Json::Array(named)) => named
                    .iter()
                    .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                    .or_else(|| named.first())
                    .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
                _ => None,
            }
        };

        let id_of = |t: &Option<String>| t.as_deref().and_then(|t| inner.token_to_id(t));
        let bos_token_id = id_of(&special.bos_token);
        let mut eos_token_ids: Vec<u32> = id_of(&special.eos_token).into_iter().collect();
        let gen_path = dir.join("generation_config.json");
        if gen_path.is_file() {
            let gen_config = read_json(&gen_path)?;
            let ids = match gen_config.get("eos_token_id") {
                Some(Json::Array(a)) => a.iter().filter_map(Json::as_u64).collect(),
                Some(v) => v.as_u64().into_iter().collect(),
                None => Vec::new(),
            };
            for id in ids {
                if let Ok(id) = u32::try_from(id)
                    && !eos_token_ids.contains(&id)
                {
                    eos_token_ids.push(id);
                }
            }
        }
        Ok(Tokenizer {
            inner,
            chat_template,
            special,
            bos_token_id,
            eos_token_ids,
        })
    }

    /// Token ids of `text`; `add_special_tokens` adds what the tokenizer's post-processor adds
    /// (e.g. BOS). Special tokens written in the text (`<|im_start|>`) are always matched whole.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = guarded("encode", || {
            self.inner.encode_fast(text, add_special_tokens)
        })?
        .map_err(tk_err("encode"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; `skip_special` leaves out special tokens such as `<|im_end|>`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        guarded("decode", || self.inner.decode(ids, skip_special))?.map_err(tk_err("decode"))
    }

    /// Number of ids the tokenizer knows, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The chat template source (Jinja), if the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Ids that end generation, EOS first. From a folder: `eos_token` of tokenizer_config.json,
    /// then generation_config.json's `eos_token_id`. From a GGUF: EOS, EOT, EOM, then the
    /// end-of-turn tokens llama.cpp recognises by text (`<|im_end|>`, `<|endoftext|>`, ...).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_ids.clone()
    }

    /// The BOS id, if the model has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
