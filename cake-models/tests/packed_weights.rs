//! Weights kept packed as the GGUF file stores them (`WeightFormat::Stored`): the packed
//! rows hold exactly the values the f32 load dequantises (q/k rows un-permuted, every
//! format of the tiny fixture), and the real default model computes what its f32 load
//! computes, up to rounding order.

mod common;

use std::path::Path;

use cake_core::KeepAll;
use cake_models::generate::{Generation, GenerationConfig};
use cake_models::gguf::GgufFile;
use cake_models::load::{gguf_weight_bytes, load_as};
use cake_models::weights::WeightFormat;
use cake_models::{Cpu, Model};

/// Every packable matrix of the tiny fixture (Q4_K q and Q6_K k rows permuted by
/// llama.cpp, Q5_K, Q4_0, Q5_0, Q5_1, Q4_1, Q8_0) dequantises from its packed rows to the
/// very values of the f32 load; the other types are not packed.
#[test]
fn packed_rows_hold_the_f32_loads_values() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/gguf/tiny.gguf");
    let file = GgufFile::open(&path).expect("tiny.gguf");
    let mut packed = Vec::new();
    for info in file.tensors() {
        let Ok(hf) = cake_models::gguf::hf_name(&info.name) else {
            continue;
        };
        let rows = file.hf_packed(&hf).expect("readable");
        let expect_packed = info.ty.block_format().is_some() && info.dims.len() == 2;
        assert_eq!(rows.is_some(), expect_packed, "{}: {}", info.name, info.ty);
        let Some(rows) = rows else { continue };
        let matrix = cake_kernels::PackedMatrix::new(vec![rows]).expect("one part");
        let (shape, values) = file.hf_tensor(&hf).expect("f32 load");
        assert_eq!(vec![matrix.rows(), matrix.cols()], shape, "{}", info.name);
        assert_eq!(matrix.dequantize(), values, "{} ({})", info.name, info.ty);
        packed.push(info.ty.to_string());
    }
    packed.sort();
    packed.dedup();
    assert_eq!(
        packed,
        [
            "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"
        ]
    );
}

/// The model at `path` loaded twice: weights as f32, then as stored.
fn both_ways(path: &Path) -> (Model<Cpu>, Model<Cpu>) {
    let device = Default::default();
    let load = |format| load_as::<Cpu>(path, &device, format).expect("load").model;
    (load(WeightFormat::F32), load(WeightFormat::Stored))
}

/// Checks that the stored model reads under `share` of the f32 model's bytes per step and
/// that `prompt`'s logits agree within 1e-4 of the largest; returns the stored logits.
fn agree(dense: &Model<Cpu>, packed: &Model<Cpu>, prompt: &[u32], share: f64) -> Vec<f32> {
    let (dense_step, packed_step) = (dense.decode_weight_bytes(), packed.decode_weight_bytes());
    assert!(
        (packed_step as f64) < share * dense_step as f64,
        "{packed_step} vs {dense_step}"
    );
    let (a, b) = (
        prefill_logits(dense, prompt),
        prefill_logits(packed, prompt),
    );
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(&b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    eprintln!("f32 vs stored: max |logit diff| {diff} (max |logit| {scale})");
    assert!(
        diff <= 1e-4 * scale.max(1.0),
        "f32 vs stored: {diff} (|max| {scale})"
    );
    b
}

fn prefill_logits(model: &Model<Cpu>, prompt: &[u32]) -> Vec<f32> {
    let mut caches = model.new_caches();
    let logits = model
        .forward_prefill(prompt, &mut caches, &mut KeepAll)
        .expect("prefill");
    logits.into_data().to_vec::<f32>().expect("f32 logits")
}

/// SmolLM2-135M-Instruct (Q4_1, its embedding and tied head Q8_0) kept packed: the weights
/// take the file's bytes, not four per value; the prompt's logits stay within rounding of
/// the f32 load's and of transformers' (the fixture), and greedy decoding (the packed
/// GEMV) gives transformers' tokens.
#[test]
fn smollm2_stored_computes_what_f32_computes() {
    let path = cake_models::fetch::resolve_model(Some("smollm2-135m")).expect("SmolLM2 GGUF");
    let json = common::fixture_json("smollm2_reference.json");
    let ids = |k: &str| common::ids(&json[k]);
    let (prompt, probe, greedy) = (ids("input_ids"), ids("probe_ids"), ids("greedy_tokens"));
    let want: Vec<f32> = serde_json::from_value(json["probe_logits"].clone()).expect("logits");

    let (dense, packed) = both_ways(&path);
    let file = GgufFile::open(&path).expect("GGUF");
    let stored = gguf_weight_bytes(&file, WeightFormat::Stored) as f64;
    let f32_bytes = gguf_weight_bytes(&file, WeightFormat::F32) as f64;
    assert!(stored < 0.3 * f32_bytes, "{stored} vs {f32_bytes}");
    // A step reads every matrix but the embedding's rows: here the tied head is the embedding.
    let b = agree(&dense, &packed, &prompt, 0.3);
    let to_fixture = probe
        .iter()
        .zip(&want)
        .map(|(&i, &w)| (b[i as usize] - w).abs())
        .fold(0.0, f32::max);
    assert!(to_fixture <= 2e-3, "stored vs transformers: {to_fixture}");

    let config = GenerationConfig::greedy(greedy.len(), 0);
    let out = Generation::new(&packed)
        .with_config(config)
        .generate(&prompt)
        .expect("generate");
    assert_eq!(out.tokens, greedy);
}

/// Qwen2.5-Coder-0.5B (Q5_0, Q8_0, Q6_K and Q4_K matrices; QKV fused from parts of
/// different formats in some layers) kept packed: the stored bytes are the file's, each
/// prompt's logits stay within rounding of the f32 load's, and the three chat prompts
/// continue with transformers' 32 greedy tokens, as the f32 load does (`qwen_gguf.rs`).
#[test]
fn qwen_stored_continues_as_transformers_does() {
    let path = cake_models::fetch::resolve_model(Some("qwen2.5-coder-0.5b")).expect("fetch Qwen");
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tokenizer/qwen2.5-coder-0.5b.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).expect("fixture")).expect("json");
    let (dense, packed) = both_ways(&path);
    let cases = json["greedy"].as_array().expect("cases");
    assert_eq!(cases.len(), 3);
    for case in cases {
        let prompt = common::ids(&case["prompt_ids"]);
        let want = common::ids(&case["argmax_32_ids"]);
        agree(&dense, &packed, &prompt, 0.35);
        let out = Generation::new(&packed)
            .with_config(GenerationConfig::greedy(32, 32))
            .generate(&prompt)
            .expect("generate");
        assert_eq!(out.tokens, want, "prompt {:?}", case["messages"]);
    }
}

/// Qwen2.5-Coder-0.5B with int8 activations in every product (`WeightFormat::StoredInt8`)
/// against `stored` (f32 activations), both fed transformers' 32 greedy tokens after
/// each chat prompt: every step's logits stay within 3% of the largest, and where the two
/// pick different tokens the f32-activation logits had a near tie (top two within 0.1;
/// measured: 96 steps, see the message).
#[test]
fn qwen_stored_int8_decodes_close_to_f32_activations() {
    let path = cake_models::fetch::resolve_model(Some("qwen2.5-coder-0.5b")).expect("fetch Qwen");
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tokenizer/qwen2.5-coder-0.5b.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).expect("fixture")).expect("json");
    let device = Default::default();
    let load = |format| load_as::<Cpu>(&path, &device, format).expect("load").model;
    let (stored, int8) = (load(WeightFormat::Stored), load(WeightFormat::StoredInt8));
    let (mut steps, mut flips, mut worst) = (0, Vec::new(), 0.0f32);
    for case in json["greedy"].as_array().expect("cases") {
        let prompt = common::ids(&case["prompt_ids"]);
        let want = common::ids(&case["argmax_32_ids"]);
        // Logits after the prompt, then after each of transformers' tokens but the last.
        let logits = |model: &Model<Cpu>| {
            let mut caches = model.new_caches();
            let host = |t: burn::tensor::TensorData| t.to_vec::<f32>().expect("f32 logits");
            let first = model
                .forward_prefill(&prompt, &mut caches, &mut KeepAll)
                .expect("prefill");
            let mut all = vec![host(first.into_data())];
            for (i, &token) in want[..want.len() - 1].iter().enumerate() {
                let next = model
                    .forward_decode(token, prompt.len() + i, &mut caches, &mut KeepAll)
                    .expect("decode");
                all.push(host(next.into_data()));
            }
            all
        };
        for (step, (a, b)) in logits(&stored).iter().zip(logits(&int8)).enumerate() {
            let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = a
                .iter()
                .zip(&b)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                d <= 0.03 * scale,
                "step {step}: max |logit diff| {d} of {scale}"
            );
            worst = worst.max(d / scale);
            let (top_a, top_b) = (argmax(a), argmax(&b));
            if top_a != top_b {
                let margin = a[top_a] - a[top_b];
                assert!(
                    margin <= 0.1,
                    "step {step}: {top_a} vs {top_b}, margin {margin}"
                );
                flips.push(margin);
            }
            steps += 1;
        }
    }
    eprintln!(
        "int8 vs f32 activations: {steps} steps, logits within {worst} of the largest, {} different picks (f32 margins {flips:?})",
        flips.len()
    );
    assert_eq!(steps, 96);
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |(i, m), (j, &x)| if x > m { (j, x) } else { (i, m) },
        )
        .0
}
