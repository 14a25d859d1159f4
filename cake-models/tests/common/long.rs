//! Logits parity with torch on any backend: the JSON fixtures' readers, and the 2048-token
//! check of `fixtures/long/` (`tools/fixtures/gen_long_parity.py`), used by `parity.rs` on
//! the CPU backend and by `wgpu_backend.rs`.

use std::path::PathBuf;

use burn::tensor::{Tensor, backend::Backend};
use cake_core::{KeepAll, LayerCache};
use cake_models::{Model, PrefillLogits};

use super::tiny;

/// Max abs logit difference allowed against torch (f32 on both sides).
pub const TOL: f32 = 1e-4;

/// The integers of the array `json[key]`.
pub fn json_ints(json: &serde_json::Value, key: &str) -> Vec<u64> {
    json[key]
        .as_array()
        .expect(key)
        .iter()
        .map(|v| v.as_u64().expect("integer"))
        .collect()
}

/// The rows of logits `json["logits"]`: `[rows][vocab]`.
pub fn json_logits(json: &serde_json::Value) -> Vec<Vec<f32>> {
    json["logits"]
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
        .collect()
}

/// A tensor's values as f32.
pub fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("f32 logits")
}

/// The largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Prefills `ids` with the full cache: the logits of every position `[S * vocab]` and
/// the caches.
pub fn prefill_all<B: Backend>(model: &Model<B>, ids: &[u32]) -> (Vec<f32>, Vec<LayerCache<B>>) {
    let mut caches = model.new_caches();
    let prefill = model
        .prefill(ids, &mut caches, &mut KeepAll, PrefillLogits::All)
        .expect("prefill");
    (to_vec(prefill.logits), caches)
}

/// Logits rows of a long-context fixture (`tools/fixtures/gen_long_parity.py`): a
/// 2048-token input and torch's logits at selected positions.
pub struct LongExpected {
    /// The 2048 input ids.
    pub input_ids: Vec<u32>,
    /// The probed positions.
    pub positions: Vec<usize>,
    /// `[positions][vocab]`
    pub logits: Vec<Vec<f32>>,
    /// The whole fixture.
    pub json: serde_json::Value,
}

/// `fixtures/long`.
pub fn long_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/long")
}

/// The fixture `fixtures/long/<name>.json`.
pub fn long_fixture(name: &str) -> LongExpected {
    let path = long_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).expect("long fixture");
    let json: serde_json::Value = serde_json::from_str(&text).expect("long fixture JSON");
    LongExpected {
        input_ids: json_ints(&json, "input_ids")
            .into_iter()
            .map(|i| i as u32)
            .collect(),
        positions: json_ints(&json, "positions")
            .into_iter()
            .map(|p| p as usize)
            .collect(),
        logits: json_logits(&json),
        json,
    }
}

/// Prefills the 2048 tokens (full cache) and compares the logits at the fixture's
/// positions; returns the largest difference.
pub fn long_logits_diff<B: Backend>(model: &Model<B>, exp: &LongExpected) -> f32 {
    let (got, _) = prefill_all(model, &exp.input_ids);
    let vocab = model.config().vocab_size;
    exp.positions
        .iter()
        .zip(&exp.logits)
        .map(|(&p, want)| max_abs_diff(&got[p * vocab..(p + 1) * vocab], want))
        .fold(0.0, f32::max)
}

/// Asserts the model's logits at the fixture's probed positions are within [`TOL`].
pub fn assert_long_logits<B: Backend>(what: &str, model: &Model<B>, exp: &LongExpected) {
    let diff = long_logits_diff(model, exp);
    assert!(
        diff <= TOL,
        "{what}: max abs logit diff {diff} > {TOL} over 2048 positions"
    );
}

/// The tiny model `folder` on `device` gives torch's logits of `fixtures/long/<fixture_name>`.
pub fn check_long_logits<B: Backend>(folder: &str, fixture_name: &str, device: &B::Device) {
    let exp = long_fixture(fixture_name);
    assert_eq!(exp.input_ids.len(), 2048);
    let model = tiny::<B>(folder, device);
    assert_long_logits(fixture_name, &model, &exp);
}
