//! Tokenizer and chat template, from a Hugging Face folder or rebuilt from GGUF metadata.
//!
//! A Hugging Face folder gives `tokenizer.json` (read by the `tokenizers` crate) and
//! `tokenizer_config.json` (chat template, special tokens). A GGUF file has neither: its
//! `tokenizer.ggml.*` metadata (vocabulary, merges, token types, special ids, pre-tokenizer
//! name) is turned into the same `tokenizer.json` structure the model was published with, and
//! its `tokenizer.chat_template` is rendered the way transformers renders it (Jinja with
//! `trim_blocks` and `lstrip_blocks`, `raise_exception`, `strftime_now`, Python-style `tojson`).

use std::path::{Path, PathBuf};

use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json, json};

use crate::gguf::{GgufError, GgufFile};

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

/// One chat message, as passed to a chat template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
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
        let inner: tokenizers::Tokenizer =
            serde_json::from_value(tokenizer_json).map_err(|e| TokenizerError::Tokenizers {
                context: format!("tokenizer rebuilt from {}", file.path().display()),
                message: e.to_string(),
            })?;

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

    /// Renders `messages` with the model's chat template, as transformers' `apply_chat_template`
    /// with `tokenize=False`. Without a template, falls back to plain text: one `role: content`
    /// line per message, then `assistant:` when `add_generation_prompt`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let Some(source) = self.chat_template.as_deref() else {
            return Ok(plain_chat(messages, add_generation_prompt));
        };
        let env = jinja_environment();
        let template = env
            .template_from_str(source)
            .map_err(|e| TokenizerError::Template(format!("{e:#}")))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.special.bos_token.clone().unwrap_or_default(),
            eos_token => self.special.eos_token.clone().unwrap_or_default(),
            unk_token => self.special.unk_token.clone().unwrap_or_default(),
            pad_token => self.special.pad_token.clone().unwrap_or_default(),
        };
        template
            .render(ctx)
            .map_err(|e| TokenizerError::Template(format!("{e:#}")))
    }
}

/// The fallback used when a model has no chat template.
fn plain_chat(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        out.push_str(&format!("{}: {}\n", m.role, m.content));
    }
    if add_generation_prompt {
        out.push_str("assistant:");
    }
    out
}

/// A Jinja environment configured like transformers' `_compile_jinja_template`.
fn jinja_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_function("strftime_now", |format: String| strftime_utc_now(&format));
    env.add_filter(
        "tojson",
        |value: minijinja::Value, indent: Option<usize>| -> Result<String, minijinja::Error> {
            let json = serde_json::to_value(&value)
                .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
            let mut out = String::new();
            python_json(&json, indent, 0, &mut out);
            Ok(out)
        },
    );
    env
}

/// `json.dumps(value, ensure_ascii=False, indent=indent)` as Python writes it.
fn python_json(v: &Json, indent: Option<usize>, level: usize, out: &mut String) {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                python_json(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                out.push_str(&Json::String(k.clone()).to_string());
                out.push_str(": ");
                python_json(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Formats the current UTC time with the common `strftime` fields (%Y %y %m %d %B %b %H %M %S %%).
fn strftime_utc_now(format: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(secs, format)
}

fn strftime(unix_secs: i64, format: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = unix_secs.div_euclid(86_400);
    let rem = unix_secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
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

/// Turns generated token ids into text increments, holding back bytes of a character that
/// is not complete yet (so multi-byte UTF-8 characters split over tokens print whole).
#[derive(Debug)]
pub struct TextStreamer<'a> {
    tokenizer: &'a Tokenizer,
    skip_special: bool,
    ids: Vec<u32>,
    /// Start of the window decoded for context.
    prefix: usize,
    /// End of the text already emitted, in ids.
    read: usize,
}

impl<'a> TextStreamer<'a> {
    /// A streamer over `tokenizer`; `skip_special` drops special tokens from the text.
    pub fn new(tokenizer: &'a Tokenizer, skip_special: bool) -> Self {
        TextStreamer {
            tokenizer,
            skip_special,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    /// Adds one token; returns the new text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let before = self
            .tokenizer
            .decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let now = self
            .tokenizer
            .decode(&self.ids[self.prefix..], self.skip_special)?;
        if now.len() > before.len()
            && !now.ends_with('\u{FFFD}')
            && now.is_char_boundary(before.len())
        {
            let delta = now[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(Some(delta))
        } else {
            Ok(None)
        }
    }

    /// The text still held back (an incomplete character at the end), if any.
    pub fn finish(&mut self) -> Result<Option<String>, TokenizerError> {
        let before = self
            .tokenizer
            .decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let now = self
            .tokenizer
            .decode(&self.ids[self.prefix..], self.skip_special)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        if now.len() > before.len() && now.is_char_boundary(before.len()) {
            Ok(Some(now[before.len()..].to_string()))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_date() {
        // 2024-02-29 13:05:09 UTC = 1709211909 (date -u -d @1709211909).
        assert_eq!(
            strftime(1_709_211_909, "%d %b %Y %H:%M:%S %B %%"),
            "29 Feb 2024 13:05:09 February %"
        );
    }

    #[test]
    fn python_json_separators() {
        let v = json!({"a": [1, "é"], "b": {}});
        let mut out = String::new();
        python_json(&v, None, 0, &mut out);
        // json.dumps({"a": [1, "é"], "b": {}}, ensure_ascii=False)
        assert_eq!(out, r#"{"a": [1, "é"], "b": {}}"#);
    }

    #[test]
    fn byte_table_matches_gpt2() {
        let t = byte_to_char();
        // bytes_to_unicode(): space (32) -> 'Ġ' (U+0120), newline (10) -> 'Ċ' (U+010A), 'A' -> 'A'.
        assert_eq!(t[32], 'Ġ');
        assert_eq!(t[10], 'Ċ');
        assert_eq!(t[b'A' as usize], 'A');
    }
}
