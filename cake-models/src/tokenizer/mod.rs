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

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value as Json};

use crate::gguf::GgufError;

pub use chat::ChatMessage;
pub use stream::TextStreamer;

/// Everything that can go wrong loading or using a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A JSON file is malformed.
    #[error("{path} is not valid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
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

fn read_json(path: &Path) -> Result<Json, TokenizerError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.into(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
        path: path.into(),
        source,
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
            return Err(TokenizerError::Io {
                path: tok_path,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "tokenizer.json missing from the model folder",
                ),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| {
            TokenizerError::Tokenizers {
                context: tok_path.display().to_string(),
                message: e.to_string(),
            }
        })?;
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
            Some(
                std::fs::read_to_string(&jinja_path).map_err(|source| TokenizerError::Io {
                    path: jinja_path,
                    source,
                })?,
            )
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
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(tk_err("encode"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; `skip_special` leaves out special tokens such as `<|im_end|>`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(tk_err("decode"))
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
