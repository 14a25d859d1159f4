//! A Hugging Face tokenizer folder (tokenizer.json + tokenizer_config.json +
//! generation_config.json) against transformers' `AutoTokenizer` on the same folder: token ids,
//! decoding, and chat-template rendering (generator: tools/fixtures/gen_tokenizer_hf_tiny.py).

mod common;

use std::path::{Path, PathBuf};

use cake_models::file::FileError;
use cake_models::tokenizer::{ChatMessage, Tokenizer, TokenizerError};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tokenizer/hf_tiny")
}

fn fixture() -> Value {
    common::fixture_json("tokenizer/hf_tiny.json")
}

fn messages(v: &Value) -> Vec<ChatMessage> {
    serde_json::from_value(v.clone()).expect("messages")
}

#[test]
fn ids_and_decoding_match_transformers() {
    let tok = Tokenizer::from_hf_dir(&dir()).expect("load");
    for p in fixture()["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, false).unwrap(),
            common::ids(&p["ids"]),
            "{text:?}"
        );
        assert_eq!(
            tok.encode(text, true).unwrap(),
            common::ids(&p["ids_special"]),
            "{text:?} with BOS"
        );
        assert_eq!(
            tok.decode(&common::ids(&p["ids"]), false).unwrap(),
            p["decoded"].as_str().unwrap()
        );
    }
}

#[test]
fn special_ids() {
    let tok = Tokenizer::from_hf_dir(&dir()).expect("load");
    let f = fixture();
    assert_eq!(
        tok.bos_token_id(),
        Some(f["bos_token_id"].as_u64().unwrap() as u32)
    );
    // eos_token "<|im_end|>" (id 4) from tokenizer_config.json, then generation_config's [4, 2].
    assert_eq!(tok.eos_token_ids(), common::ids(&f["eos_token_ids"]));
}

#[test]
fn chat_template_matches_apply_chat_template() {
    let tok = Tokenizer::from_hf_dir(&dir()).expect("load");
    assert!(tok.chat_template().is_some());
    for c in fixture()["chats"].as_array().unwrap() {
        let add_gen = c["add_generation_prompt"].as_bool().unwrap();
        let got = tok
            .apply_chat_template(&messages(&c["messages"]), add_gen)
            .unwrap();
        assert_eq!(
            got,
            c["rendered"].as_str().unwrap(),
            "generation prompt: {add_gen}"
        );
    }
}

#[test]
fn raise_exception_surfaces_the_message() {
    let tok = Tokenizer::from_hf_dir(&dir()).expect("load");
    for e in fixture()["errors"].as_array().unwrap() {
        let err = tok
            .apply_chat_template(&messages(&e["messages"]), false)
            .unwrap_err();
        assert!(matches!(err, TokenizerError::Template(_)));
        let want = e["message"].as_str().unwrap();
        assert!(err.to_string().contains(want), "{err} lacks {want:?}");
    }
}

#[test]
fn missing_folder_is_named() {
    let err = Tokenizer::from_hf_dir(Path::new("/nonexistent/model"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/model/tokenizer.json"), "{err}");
}

/// A folder holding only the fixture's tokenizer.json.
fn tokenizer_json_alone() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir().join("tokenizer.json"),
        tmp.path().join("tokenizer.json"),
    )
    .unwrap();
    tmp
}

#[test]
fn malformed_config_is_named() {
    let tmp = tokenizer_json_alone();
    std::fs::write(tmp.path().join("tokenizer_config.json"), "{ not json").unwrap();
    let err = Tokenizer::from_hf_dir(tmp.path()).unwrap_err();
    assert!(
        matches!(err, TokenizerError::File(FileError::Json { .. }))
            && err.to_string().contains("tokenizer_config.json"),
        "{err}"
    );
}

#[test]
fn plain_text_fallback_without_template() {
    let tmp = tokenizer_json_alone();
    let tok = Tokenizer::from_hf_dir(tmp.path()).expect("tokenizer.json alone is enough");
    assert!(tok.chat_template().is_none());
    let msgs = [
        ChatMessage::new("system", "Be brief."),
        ChatMessage::new("user", "Hi"),
    ];
    assert_eq!(
        tok.apply_chat_template(&msgs, true).unwrap(),
        "system: Be brief.\nuser: Hi\nassistant:"
    );
    assert_eq!(
        tok.apply_chat_template(&msgs, false).unwrap(),
        "system: Be brief.\nuser: Hi\n"
    );
}
