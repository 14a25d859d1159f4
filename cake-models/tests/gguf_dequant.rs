//! Dequantisation of every supported GGML block type against the Python `gguf` package.
//!
//! `fixtures/gguf/blocks.json` holds raw blocks (quantised from random data with
//! `gguf.quants.quantize` where the package can, hand-packed random K-quant blocks otherwise)
//! and the values `gguf.quants.dequantize` returns for them
//! (generator: tools/fixtures/gen_gguf_fixtures.py).

use cake_models::gguf::{GgmlType, GgufError, dequantize};
use serde_json::Value;

fn blocks() -> serde_json::Map<String, Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/gguf/blocks.json");
    let text = std::fs::read_to_string(path).expect("fixture blocks.json");
    serde_json::from_str::<Value>(&text)
        .expect("valid JSON")
        .as_object()
        .expect("object")
        .clone()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn check(type_name: &str) {
    let all = blocks();
    let entry = &all[type_name];
    let id = entry["type_id"].as_u64().expect("type_id") as u32;
    let ty = GgmlType::from_id(id).expect("known type");
    assert_eq!(ty.to_string(), type_name);
    let bytes = unhex(entry["hex"].as_str().expect("hex"));
    let expected: Vec<f32> = entry["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|v| v.as_f64().expect("number") as f32)
        .collect();
    let got = dequantize(ty, &bytes, "fixture").expect("dequantize");
    assert_eq!(got.len(), expected.len(), "{type_name}: element count");
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        // Both sides compute in f32 in the same order; allow one rounding step of slack.
        assert!(
            (g - e).abs() <= 1e-6 * e.abs().max(1.0),
            "{type_name}[{i}]: got {g}, gguf.dequantize gives {e}"
        );
    }
}

#[test]
fn f16() {
    check("F16");
}
#[test]
fn bf16() {
    check("BF16");
}
#[test]
fn q4_0() {
    check("Q4_0");
}
#[test]
fn q4_1() {
    check("Q4_1");
}
#[test]
fn q5_0() {
    check("Q5_0");
}
#[test]
fn q5_1() {
    check("Q5_1");
}
#[test]
fn q8_0() {
    check("Q8_0");
}
#[test]
fn q2_k() {
    check("Q2_K");
}
#[test]
fn q3_k() {
    check("Q3_K");
}
#[test]
fn q4_k() {
    check("Q4_K");
}
#[test]
fn q5_k() {
    check("Q5_K");
}
#[test]
fn q6_k() {
    check("Q6_K");
}

#[test]
fn q8_0_hand_computed() {
    // d = 0.5 (f16 0x3800), qs = [-128, -1, 0, 1, 127, 0...]: values = qs * 0.5.
    let mut block = vec![0x00, 0x38];
    let mut qs = [0i8; 32];
    qs[..5].copy_from_slice(&[-128, -1, 0, 1, 127]);
    block.extend(qs.iter().map(|&q| q as u8));
    let v = dequantize(GgmlType::Q8_0, &block, "hand").expect("dequantize");
    assert_eq!(&v[..5], &[-64.0, -0.5, 0.0, 0.5, 63.5]);
}

#[test]
fn q4_0_hand_computed() {
    // d = 2.0 (f16 0x4000); byte 0 = 0xF0: low nibble 0 -> (0-8)*2 = -16 at index 0,
    // high nibble 15 -> (15-8)*2 = 14 at index 16; other bytes 0x88 -> 0.
    let mut block = vec![0x00, 0x40, 0xF0];
    block.extend([0x88u8; 15]);
    let v = dequantize(GgmlType::Q4_0, &block, "hand").expect("dequantize");
    assert_eq!(v[0], -16.0);
    assert_eq!(v[16], 14.0);
    assert!(
        v.iter()
            .enumerate()
            .all(|(i, &x)| i == 0 || i == 16 || x == 0.0)
    );
}

#[test]
fn partial_block_is_an_error() {
    let err = dequantize(GgmlType::Q4K, &[0u8; 143], "w").unwrap_err();
    assert!(matches!(err, GgufError::Corrupt { .. }), "{err}");
}

#[test]
fn unsupported_type_is_named() {
    let err = dequantize(GgmlType::Q8K, &[0u8; 292], "blk.0.x").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("blk.0.x") && msg.contains("Q8_K"), "{msg}");
}
