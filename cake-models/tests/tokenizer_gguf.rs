//! Tokenizers rebuilt from GGUF metadata against transformers loading the same GGUF
//! (`AutoTokenizer.from_pretrained(..., gguf_file=...)`): token ids (unicode, digits, code,
//! whitespace runs, special tokens), decoding, chat-template renderings, stop ids, streaming.
//! Generator: tools/fixtures/gen_tokenizer_fixtures.py.
//!
//! Where transformers' GGUF tokenizer departs from the model's published tokenizer.json, cake
//! follows the published one (`ids_reference`): SmolLM2 splits every digit (llama.cpp's
//! `smollm` pre-tokenizer; transformers has no entry for it and merges a space run before a
//! digit differently) and Qwen2 NFC-normalises. The fixture marks those prompts
//! (`matches_reference: false`); all other prompts must equal transformers' ids exactly.

mod common;

use cake_models::fetch::resolve_model;
use cake_models::gguf::GgufFile;
use cake_models::tokenizer::{ChatMessage, TextStreamer, Tokenizer};
use serde_json::Value;

fn load(model: &str) -> Tokenizer {
    let path = resolve_model(Some(model)).unwrap_or_else(|e| panic!("resolve {model}: {e}"));
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("open {model}: {e}"));
    Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("tokenizer of {model}: {e}"))
}

fn fixture(name: &str) -> Value {
    common::fixture_json(&format!("tokenizer/{name}.json"))
}

fn check_prompts(tok: &Tokenizer, f: &Value) -> usize {
    let mut divergent = 0;
    for p in f["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let got = tok.encode(text, false).unwrap();
        assert_eq!(
            got,
            common::ids(&p["ids_reference"]),
            "{text:?}: published-tokenizer ids"
        );
        if p["matches_reference"].as_bool().unwrap() {
            assert_eq!(got, common::ids(&p["ids"]), "{text:?}: transformers ids");
            assert_eq!(
                tok.encode(text, true).unwrap(),
                common::ids(&p["ids_special"]),
                "{text:?}: with special tokens"
            );
        } else {
            divergent += 1;
        }
        assert_eq!(
            tok.decode(&got, false).unwrap(),
            p["decoded"].as_str().unwrap(),
            "{text:?}: decode"
        );
    }
    divergent
}

fn check_chats(tok: &Tokenizer, f: &Value) {
    for c in f["chats"].as_array().unwrap() {
        let msgs: Vec<ChatMessage> = serde_json::from_value(c["messages"].clone()).unwrap();
        let add_gen = c["add_generation_prompt"].as_bool().unwrap();
        let rendered = tok.apply_chat_template(&msgs, add_gen).unwrap();
        assert_eq!(
            rendered,
            c["rendered"].as_str().unwrap(),
            "chat {msgs:?} (generation prompt {add_gen})"
        );
        assert_eq!(
            tok.encode(&rendered, false).unwrap(),
            common::ids(&c["ids"]),
            "ids of chat {msgs:?}"
        );
    }
    for g in f["greedy"].as_array().unwrap() {
        let msgs: Vec<ChatMessage> = serde_json::from_value(g["messages"].clone()).unwrap();
        let rendered = tok.apply_chat_template(&msgs, true).unwrap();
        assert_eq!(rendered, g["prompt"].as_str().unwrap());
        assert_eq!(
            tok.encode(&rendered, false).unwrap(),
            common::ids(&g["prompt_ids"])
        );
    }
}

/// Token ids of the fixture's prompts and its chat renderings for one model; returns how
/// many prompts' ids differ from transformers'.
fn check_model(name: &str, fixture_name: &str) -> usize {
    let (tok, f) = (load(name), fixture(fixture_name));
    check_chats(&tok, &f);
    check_prompts(&tok, &f)
}

#[test]
fn smollm2_ids_and_chat_template_match() {
    // Only the whitespace-run-before-digits prompt differs from transformers (see module doc).
    assert_eq!(check_model("smollm2-135m", "smollm2"), 1);
}

#[test]
fn qwen_ids_and_chat_template_match() {
    // Only the decomposed-accents prompt differs (transformers skips Qwen2's NFC).
    assert_eq!(check_model("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b"), 1);
}

#[test]
fn special_ids_and_vocab() {
    let smol = load("smollm2-135m");
    let f = fixture("smollm2");
    // EOS first (transformers' eos_token_id), then the end-of-turn tokens llama.cpp adds by
    // text: <|im_end|> = 2 is EOS, <|endoftext|> = 0.
    assert_eq!(
        smol.eos_token_ids()[0],
        f["eos_token_id"].as_u64().unwrap() as u32
    );
    assert_eq!(smol.eos_token_ids(), vec![2, 0]);
    assert_eq!(smol.bos_token_id(), Some(1));
    assert_eq!(smol.vocab_size(), 49152);
    assert_eq!(smol.token_to_id("<|im_start|>"), Some(1));
    let qwen = load("qwen2.5-coder-0.5b");
    // <|im_end|>, <|endoftext|>: the same list as Qwen2.5's generation_config.json.
    assert_eq!(qwen.eos_token_ids(), vec![151645, 151643]);
    assert_eq!(qwen.vocab_size(), 151936);
    assert_eq!(qwen.token_to_id("<|endoftext|>"), Some(151643));
}

#[test]
fn streaming_reassembles_multibyte_text() {
    let tok = load("smollm2-135m");
    let text = "Unicode: héllo 日本語 🍰🚀👍🏽 done";
    let all = tok.encode(text, false).unwrap();
    let mut streamer = TextStreamer::new(&tok, true);
    let mut out = String::new();
    let mut pieces = 0;
    for &id in &all {
        if let Some(piece) = streamer.push(id).unwrap() {
            assert!(
                !piece.contains('\u{FFFD}'),
                "partial character leaked: {piece:?}"
            );
            out.push_str(&piece);
            pieces += 1;
        }
    }
    if let Some(rest) = streamer.finish().unwrap() {
        out.push_str(&rest);
    }
    assert_eq!(out, text);
    // Emoji span several byte-level tokens, so fewer pieces than tokens come out.
    assert!(
        pieces < all.len(),
        "{pieces} pieces for {} tokens",
        all.len()
    );
}
