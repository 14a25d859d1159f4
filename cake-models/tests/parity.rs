//! Numerical parity with Hugging Face transformers on the tiny random-weight fixtures made
//! by `tools/fixtures/gen_tiny_models.py` (Llama with llama3 rope scaling, sharded f32;
//! Mistral with a sliding window of 8 over a 22-token input, f32; Qwen2 with q/k/v biases
//! and tied embeddings, bf16). The expected logits come from torch in f32.

use std::path::PathBuf;

use burn::tensor::{Tensor, backend::Backend};
use cake_core::KeepAll;
use cake_models::{Cpu, PrefillLogits, load};

/// Max abs logit difference allowed against torch (f32 on both sides).
const TOL: f32 = 1e-4;

struct Expected {
    input_ids: Vec<u32>,
    /// `[S][vocab]`
    logits: Vec<Vec<f32>>,
    greedy: Vec<u32>,
}

fn fixture(name: &str) -> (PathBuf, Expected) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tiny")
        .join(name);
    let text = std::fs::read_to_string(dir.join("expected.json")).expect("fixture expected.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("fixture JSON");
    let ids = |key: &str| -> Vec<u32> {
        json[key]
            .as_array()
            .expect(key)
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect()
    };
    let logits = json["logits"]
        .as_array()
        .expect("logits")
        .iter()
        .map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|v| v.as_f64().expect("f") as f32)
                .collect()
        })
        .collect();
    (
        dir,
        Expected {
            input_ids: ids("input_ids"),
            logits,
            greedy: ids("greedy_tokens"),
        },
    )
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("f32 logits")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
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
    let mut caches = model.new_caches();
    let prefill = model
        .prefill(
            &exp.input_ids,
            &mut caches,
            &mut KeepAll,
            PrefillLogits::All,
        )
        .expect("prefill");
    let vocab = model.config().vocab_size;
    assert_eq!(prefill.logits.dims(), [exp.input_ids.len(), vocab]);
    let got = to_vec(prefill.logits);
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
