//! Helpers shared by the integration tests (each test binary uses part of them).
#![allow(dead_code)]

pub mod attention;
pub mod long;
pub mod ragged;

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use cake_models::{Model, load};
use serde_json::Value;

/// The folder of the tiny random-weight model `name` (`fixtures/tiny/<name>`).
pub fn tiny_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tiny")
        .join(name)
}

/// A deterministic prompt of `n` token ids below the tiny vocabulary (256).
pub fn prompt(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + 11) % 250 + 3).collect()
}

/// The tiny model `name` (llama, mistral, qwen2) loaded onto `device`.
pub fn tiny<B: Backend>(name: &str, device: &B::Device) -> Model<B> {
    load::<B>(&tiny_dir(name), device)
        .expect("tiny model")
        .model
}

/// The JSON fixture at `fixtures/<relative>`.
pub fn fixture_json(relative: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(relative);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("JSON")
}

/// A JSON array of token ids.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of ids")
        .iter()
        .map(|x| x.as_u64().expect("an id") as u32)
        .collect()
}
