//! The accuracy model end to end: Qwen2.5-Coder-0.5B-Instruct (GGUF with Q5_0, Q8_0, Q6_K,
//! Q4_K and F32 tensors; Qwen2 biases) must continue three chat prompts with exactly the 32
//! greedy tokens transformers produced for the same file
//! (`tools/fixtures/gen_tokenizer_fixtures.py`, field `argmax_32_ids`: EOS not applied).

use std::path::PathBuf;

use cake_models::generate::{Generation, GenerationConfig};
use cake_models::{Architecture, Cpu, load};

#[test]
fn qwen_greedy_continuations_match_transformers() {
    let path = cake_models::fetch::resolve_model(Some("qwen2.5-coder-0.5b")).expect("fetch Qwen");
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tokenizer/qwen2.5-coder-0.5b.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let loaded = load::<Cpu>(&path, &Default::default()).expect("load Qwen GGUF");
    assert_eq!(loaded.config.architecture, Architecture::Qwen2);
    assert_eq!(
        (
            loaded.config.num_heads,
            loaded.config.num_kv_heads,
            loaded.config.qkv_bias
        ),
        (14, 2, true)
    );
    let model = loaded.model;
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let cases = json["greedy"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let prompt = ids(&case["prompt_ids"]);
        let want = ids(&case["argmax_32_ids"]);
        assert_eq!(want.len(), 32);
        let config = GenerationConfig::greedy(32, 32);
        let out = Generation::new(&model)
            .with_config(config.clone())
            .generate(&prompt)
            .unwrap();
        assert_eq!(out.tokens, want, "prompt {:?}", case["messages"]);
    }
}
