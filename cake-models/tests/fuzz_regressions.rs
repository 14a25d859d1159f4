//! Minimised inputs from `cake-fuzz` runs that crashed, hung or tried to allocate from an
//! untrusted size; each must now fail with an error, quickly and without a large allocation.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cake_models::config::{ConfigError, MAX_LAYERS, decoder_config};
use cake_models::file::FileError;
use cake_models::tokenizer::{MAX_ADDED_TOKEN_BYTES, Tokenizer, TokenizerError};
use serde_json::{Value as Json, json};

fn hf_tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tokenizer/hf_tiny")
}

fn tiny_tokenizer_json() -> Json {
    let text = std::fs::read_to_string(hf_tiny().join("tokenizer.json")).expect("fixture");
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// A tokenizer folder holding `tokenizer.json` = `text` (and no other file).
fn folder_with(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("tokenizer.json"), text).expect("write");
    dir
}

fn config(layers: Json, arch: &str) -> Json {
    json!({
        "architectures": [arch], "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": layers, "num_attention_heads": 4, "rms_norm_eps": 1e-5,
        "vocab_size": 256,
    })
}

#[test]
fn config_layer_count_from_the_file_is_bounded() {
    // cake-fuzz `config` (OOM): 2^40 layers made `decoder_config` allocate a 16 TiB
    // per-layer sliding-window table; u64::MAX layers overflowed its capacity (panic).
    for (layers, arch) in [
        (json!(1u64 << 40), "MistralForCausalLM"),
        (json!(u64::MAX), "Qwen2ForCausalLM"),
        (json!(MAX_LAYERS + 1), "LlamaForCausalLM"),
    ] {
        let err = decoder_config(&config(layers.clone(), arch)).unwrap_err();
        assert!(
            matches!(err, ConfigError::Invalid(ref m) if m.contains("num_hidden_layers")),
            "{layers}: {err}"
        );
    }
    let ok = decoder_config(&config(json!(MAX_LAYERS), "MistralForCausalLM")).expect("at the cap");
    assert_eq!(ok.sliding_window.len(), MAX_LAYERS);
}

#[test]
fn tokenizer_json_with_a_syntax_error_in_the_decoder_is_an_error() {
    // cake-fuzz `tokenizer` (crash): tokenizers 0.22 deserialises the decoder with
    // `.expect("Helper")`, so `Tokenizer::from_file` panicked on this file.
    let dir = folder_with(r#"{"decoder":{"type" "ByteLevel"}}"#);
    let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(
        matches!(err, TokenizerError::File(FileError::Json { .. })),
        "{err}"
    );
}

#[test]
fn malformed_precompiled_normalizer_is_an_error() {
    // Valid JSON that tokenizers 0.22 still panics on (`.expect("Precompiled")`).
    let mut json = tiny_tokenizer_json();
    json["normalizer"] = json!({"type": "Precompiled", "precompiled_charsmap": 5});
    let dir = folder_with(&json.to_string());
    let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err();
    assert!(matches!(err, TokenizerError::Tokenizers { .. }), "{err}");
}

#[test]
fn template_naming_an_undefined_special_token_fails_to_encode() {
    // cake-fuzz `tokenizer` (crash): the post-processor's template uses `<s>`, which its
    // `special_tokens` no longer defines; tokenizers panicked in `encode` ("no entry found
    // for key", processors/template.rs).
    let mut json = tiny_tokenizer_json();
    json["post_processor"]["special_tokens"] = json!({});
    let dir = folder_with(&json.to_string());
    let tokenizer = Tokenizer::from_hf_dir(dir.path()).expect("loads");
    let err = tokenizer.encode("hello", true).unwrap_err();
    assert!(err.to_string().contains("panicked"), "{err}");
    // Without special tokens the template is not applied, and encoding works.
    assert!(tokenizer.encode("hello", false).is_ok());
}

#[test]
fn huge_added_token_is_refused_quickly() {
    // cake-fuzz `tokenizer` (hang, killed after 20 s): a 64 KiB added token of one repeated
    // character made tokenizers build its Aho-Corasick matcher in quadratic time.
    let mut json = tiny_tokenizer_json();
    json["added_tokens"][1]["content"] = json!("A".repeat(65_536));
    let dir = folder_with(&json.to_string());
    let start = Instant::now();
    let err = Tokenizer::from_hf_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains(&MAX_ADDED_TOKEN_BYTES.to_string()), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
    // At the cap it loads in well under a second.
    json["added_tokens"][1]["content"] = json!("A".repeat(MAX_ADDED_TOKEN_BYTES));
    let dir = folder_with(&json.to_string());
    let start = Instant::now();
    Tokenizer::from_hf_dir(dir.path()).expect("loads");
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// `fixtures/gguf/tiny.gguf` with the dimensions of `blk.0.attn_q.weight` (GGUF order:
/// inner, then outer; `[256, 64]` in the file) replaced by `[cols, rows]`.
fn tiny_gguf_with_q_dims(cols: u64, rows: u64) -> cake_models::gguf::GgufFile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gguf/tiny.gguf");
    let mut bytes = std::fs::read(path).expect("tiny.gguf");
    let name = b"blk.0.attn_q.weight";
    let table = bytes
        .windows(14)
        .position(|w| w == b"test.str_array")
        .expect("metadata key");
    let entry = table
        + bytes[table..]
            .windows(name.len())
            .position(|w| w == name)
            .expect("tensor entry")
        + name.len();
    // Entry: u32 n_dims = 2, then the two u64 dimensions.
    assert_eq!(bytes[entry..entry + 4], 2u32.to_le_bytes());
    assert_eq!(bytes[entry + 4..entry + 12], 256u64.to_le_bytes());
    bytes[entry + 4..entry + 12].copy_from_slice(&cols.to_le_bytes());
    bytes[entry + 12..entry + 20].copy_from_slice(&rows.to_le_bytes());
    cake_models::gguf::GgufFile::from_bytes("edited.gguf", bytes).expect("parses")
}

#[test]
fn gguf_q_projection_with_zero_rows_is_corrupt() {
    // cake-fuzz `gguf` (crash): tiny.gguf with the outer dimension of blk.0.attn_q.weight
    // set to 0 (one byte changed); un-permuting its (empty) rows divided by zero.
    let file = tiny_gguf_with_q_dims(256, 0);
    let err = file
        .hf_tensor("model.layers.0.self_attn.q_proj.weight")
        .unwrap_err();
    assert!(
        matches!(err, cake_models::gguf::GgufError::Corrupt { .. }),
        "{err}"
    );
    assert!(file.hf_tensors().any(|t| t.is_err()));
}

#[test]
fn gguf_q_projection_with_zero_columns_and_huge_rows_is_corrupt_at_once() {
    // cake-fuzz `gguf` (hang, killed after 20 s; seed 2026, execution 984353): a
    // q-projection whose inner dimension is 0 and whose outer one is huge (a multiple of
    // 2 x the heads) holds no data, and un-permuting its rows looped over the claimed count.
    let file = tiny_gguf_with_q_dims(0, 1 << 40);
    let start = Instant::now();
    let err = file
        .hf_tensor("model.layers.0.self_attn.q_proj.weight")
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(
        matches!(err, cake_models::gguf::GgufError::Corrupt { ref what, .. } if what.contains("column")),
        "{err}"
    );
}

#[test]
fn chat_template_line_past_minijinja_positions_is_an_error() {
    // cake-fuzz `tokenizer` (crash): a chat template line of 65 535 characters (here an
    // unterminated string) wrapped minijinja's 16-bit column numbers, and formatting the
    // compile error (`{e:#}`) panicked with a capacity overflow.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        hf_tiny().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .expect("copy");
    let messages = [cake_models::tokenizer::ChatMessage::new("user", "hi")];
    let template = format!("{{{{\"{}", "A".repeat(65_532));
    std::fs::write(dir.path().join("chat_template.jinja"), &template).expect("write");
    let tokenizer = Tokenizer::from_hf_dir(dir.path()).expect("loads");
    let err = tokenizer.apply_chat_template(&messages, true).unwrap_err();
    assert!(matches!(err, TokenizerError::Template(_)), "{err}");
    assert!(err.to_string().contains("65535 bytes long"), "{err}");
    // Too many lines are refused the same way; a long but representable line still
    // reports its compile error normally.
    let many = "x\n".repeat(cake_models::tokenizer::MAX_TEMPLATE_EXTENT + 1);
    std::fs::write(dir.path().join("chat_template.jinja"), many).expect("write");
    let tokenizer = Tokenizer::from_hf_dir(dir.path()).expect("loads");
    let err = tokenizer.apply_chat_template(&messages, true).unwrap_err();
    assert!(err.to_string().contains("lines"), "{err}");
    let long = format!("{{{{\"{}", "A".repeat(60_000));
    std::fs::write(dir.path().join("chat_template.jinja"), long).expect("write");
    let tokenizer = Tokenizer::from_hf_dir(dir.path()).expect("loads");
    let err = tokenizer.apply_chat_template(&messages, true).unwrap_err();
    assert!(err.to_string().contains("syntax error"), "{err}");
}
