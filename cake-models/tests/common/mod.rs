//! Helpers shared by the integration tests (each test binary uses part of them).
#![allow(dead_code)]

pub mod attention;

use std::path::Path;

use serde_json::Value;

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
