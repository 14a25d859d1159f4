//! The speed work must not change what CAKE keeps: on a fixed ~2K-token prompt with the
//! default settings, the budgets of every cascade stage, the positions each KV head keeps
//! after 32 decoding steps (with decoding-time eviction) and the greedy text equal the
//! report committed before the host kernels, the capacity-based cache and the fused
//! projections landed (`fixtures/report_default.json`, see its `produced_by`).
//!
//! Uses the embedded default model (SmolLM2-135M-Instruct, fetched with pip).

mod common;

use std::path::PathBuf;

use common::{cake, success};
use serde_json::Value;

#[test]
fn default_cake_run_keeps_the_committed_tokens() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures.join("report_default.json")).unwrap(),
    )
    .unwrap();
    let out = success(
        cake()
            .current_dir(tempfile::tempdir().unwrap().path())
            .args([
                "generate",
                "--max-new-tokens",
                "32",
                "--json",
                "--prompt-file",
            ])
            .arg(fixtures.join("report_prompt.txt")),
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let report = &got["report"];
    assert_eq!(report["prompt_len"], expected["prompt_len"]);
    let budgets: Vec<&Value> = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["budget"])
        .collect();
    let want_budgets: Vec<&Value> = expected["budgets"].as_array().unwrap().iter().collect();
    assert_eq!(budgets, want_budgets, "final budgets");
    assert_eq!(
        report["stage_budgets"], expected["stage_budgets"],
        "cascade stages"
    );
    for (layer, (got, want)) in report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(expected["kept_positions"].as_array().unwrap())
        .enumerate()
    {
        assert_eq!(
            &got["kept_positions"], want,
            "kept positions of layer {layer}"
        );
    }
    assert_eq!(got["text"], expected["text"], "greedy text");
}
