//! Numerical parity with Hugging Face transformers on the tiny random-weight fixtures made
//! by `tools/fixtures/gen_tiny_models.py` (Llama with llama3 rope scaling, sharded f32;
//! Mistral with a sliding window of 8 over a 22-token input, f32; Qwen2 with q/k/v biases
//! and tied embeddings, bf16). The expected logits come from torch in f32.

mod common;

use std::path::PathBuf;

use cake_core::KeepAll;
use cake_models::{Cpu, load};
use common::long::{
    TOL, assert_long_logits, check_long_logits, json_ints, json_logits, long_dir, long_fixture,
    long_logits_diff, max_abs_diff, prefill_all, to_vec,
};

struct Expected {
    input_ids: Vec<u32>,
    /// `[S][vocab]`
    logits: Vec<Vec<f32>>,
    greedy: Vec<u32>,
}

fn fixture(name: &str) -> (PathBuf, Expected) {
    let dir = common::tiny_dir(name);
    let text = std::fs::read_to_string(dir.join("expected.json")).expect("fixture expected.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("fixture JSON");
    let ids = |key: &str| -> Vec<u32> {
        json_ints(&json, key)
            .into_iter()
            .map(|i| i as u32)
            .collect()
    };
    (
        dir,
        Expected {
            input_ids: ids("input_ids"),
            logits: json_logits(&json),
            greedy: ids("greedy_tokens"),
        },
    )
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 { (i, x) } else { best }
        })
        .0 as u32
}

/// Full-prompt logits match torch at every position.
fn check_prefill_logits(name: &str) {
    let (dir, exp) = fixture(name);
    let device = Default::default();
    let loaded = load::<Cpu>(&dir, &device).expect("load fixture");
    let model = loaded.model;
    let (got, caches) = prefill_all(&model, &exp.input_ids);
    let vocab = model.config().vocab_size;
    assert_eq!(got.len(), exp.input_ids.len() * vocab);
    let want: Vec<f32> = exp.logits.iter().flatten().copied().collect();
    let diff = max_abs_diff(&got, &want);
    assert!(diff <= TOL, "{name}: max abs logit diff {diff} > {TOL}");
    // The prefill caches every prompt token once per KV head.
    for cache in &caches {
        assert_eq!(cache.len(), exp.input_ids.len());
        assert_eq!(cache.num_kv_heads(), model.config().num_kv_heads);
    }
}

/// Prefill of the first half, then one decode step per remaining token: each step's logits
/// equal torch's full-recompute logits of that position.
fn check_decode_matches_full_recompute(name: &str) {
    let (dir, exp) = fixture(name);
    let device = Default::default();
    let model = load::<Cpu>(&dir, &device).expect("load fixture").model;
    let split = exp.input_ids.len() / 2;
    let mut caches = model.new_caches();
    let last = model
        .forward_prefill(&exp.input_ids[..split], &mut caches, &mut KeepAll)
        .expect("prefill");
    let diff = max_abs_diff(&to_vec(last), &exp.logits[split - 1]);
    assert!(diff <= TOL, "{name}: prefill last-position diff {diff}");
    for pos in split..exp.input_ids.len() {
        let logits = model
            .forward_decode(exp.input_ids[pos], pos, &mut caches, &mut KeepAll)
            .expect("decode");
        let diff = max_abs_diff(&to_vec(logits), &exp.logits[pos]);
        assert!(
            diff <= TOL,
            "{name}: decode at position {pos} differs from full recompute by {diff}"
        );
    }
}

/// 16 greedy tokens (prefill + cached decoding) equal torch's greedy tokens.
fn check_greedy(name: &str) {
    let (dir, exp) = fixture(name);
    let device = Default::default();
    let model = load::<Cpu>(&dir, &device).expect("load fixture").model;
    let mut caches = model.new_caches();
    let mut logits = to_vec(
        model
            .forward_prefill(&exp.input_ids, &mut caches, &mut KeepAll)
            .expect("prefill"),
    );
    let mut tokens = Vec::new();
    for step in 0..exp.greedy.len() {
        let token = argmax(&logits);
        tokens.push(token);
        let pos = exp.input_ids.len() + step;
        logits = to_vec(
            model
                .forward_decode(token, pos, &mut caches, &mut KeepAll)
                .expect("decode"),
        );
    }
    assert_eq!(tokens, exp.greedy, "{name}: greedy tokens");
}

#[test]
fn llama_prefill_logits_match_torch() {
    check_prefill_logits("llama");
}

#[test]
fn mistral_prefill_logits_match_torch() {
    check_prefill_logits("mistral");
}

#[test]
fn qwen2_prefill_logits_match_torch() {
    check_prefill_logits("qwen2");
}

#[test]
fn llama_decode_matches_full_recompute() {
    check_decode_matches_full_recompute("llama");
}

#[test]
fn mistral_decode_matches_full_recompute() {
    check_decode_matches_full_recompute("mistral");
}

#[test]
fn qwen2_decode_matches_full_recompute() {
    check_decode_matches_full_recompute("qwen2");
}

#[test]
fn llama_greedy_matches_torch() {
    check_greedy("llama");
}

#[test]
fn mistral_greedy_matches_torch() {
    check_greedy("mistral");
}

#[test]
fn qwen2_greedy_matches_torch() {
    check_greedy("qwen2");
}

/// Llama-3 rope scaling past `original_max_position_embeddings` (64) up to position 2047.
#[test]
fn llama_logits_match_torch_at_2k_positions() {
    check_long_logits::<Cpu>("llama", "llama", &Default::default());
}

/// Mistral's sliding window (8) over 2048 positions.
#[test]
fn mistral_logits_match_torch_at_2k_positions() {
    check_long_logits::<Cpu>("mistral", "mistral", &Default::default());
}

/// Qwen2 with full attention over 2048 positions.
#[test]
fn qwen2_logits_match_torch_at_2k_positions() {
    check_long_logits::<Cpu>("qwen2", "qwen2", &Default::default());
}

/// Qwen2 with `use_sliding_window` (window 48 on layers from `max_window_layers` = 1 on):
/// the config overrides recorded in the fixture are applied to the qwen2 folder's config.
#[test]
fn qwen2_sliding_window_logits_match_torch_at_2k_positions() {
    let exp = long_fixture("qwen2_sliding");
    let dir = fixture("qwen2").0;
    let text = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("config JSON");
    let overrides = exp.json["config_overrides"].as_object().expect("overrides");
    for (key, value) in overrides {
        json[key] = value.clone();
    }
    // The saved config lists `layer_types` (all full attention), which outranks the
    // sliding-window fields; without it the rule of `max_window_layers` applies, as the
    // generator's torch model did.
    json.as_object_mut().expect("object").remove("layer_types");
    let config = cake_models::config::decoder_config(&json).expect("config");
    assert_eq!(config.sliding_window, vec![None, Some(48), Some(48)]);
    let mut weights = cake_models::weights::SafetensorsFolder::open(&dir).expect("weights");
    let model = cake_models::Model::<Cpu>::from_weights(&config, &mut weights, &Default::default())
        .expect("model");
    assert_long_logits("qwen2 sliding", &model, &exp);
}

/// A Llama-3-scaled GGUF written as llama.cpp's converter writes it (scaling only as the
/// `rope_freqs.weight` divisors, q/k permuted) gives transformers' logits of the Hugging
/// Face model, past `original_max_position_embeddings`; without the divisors it would not.
#[test]
fn llama3_scaled_gguf_matches_torch_past_the_original_context() {
    let exp = long_fixture("llama");
    let path = long_dir().join("llama.gguf");
    let device = Default::default();
    let loaded = load::<Cpu>(&path, &device).expect("load GGUF");
    let factors = loaded
        .config
        .rope
        .freq_factors
        .clone()
        .expect("rope_freqs read");
    assert_eq!(factors.len(), 8);
    assert!(factors.contains(&1.0) && factors.contains(&8.0));
    assert_long_logits("GGUF", &loaded.model, &exp);

    // Negative control: the same file with the divisors ignored is far off.
    let mut config = loaded.config.clone();
    config.rope.freq_factors = None;
    let mut file = cake_models::gguf::GgufFile::open(&path).expect("GGUF");
    let unscaled =
        cake_models::Model::<Cpu>::from_weights(&config, &mut file, &device).expect("model");
    let off = long_logits_diff(&unscaled, &exp);
    assert!(off > 100.0 * TOL, "unscaled rope should differ, got {off}");
}
