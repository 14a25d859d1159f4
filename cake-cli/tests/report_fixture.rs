//! The speed work must not change what CAKE keeps: on a fixed ~2K-token prompt with the
//! default settings, the budgets of every cascade stage, the positions each KV head keeps
//! after 32 decoding steps (with decoding-time eviction) and the greedy text equal the
//! report committed before the host kernels, the capacity-based cache and the fused
//! projections landed (`fixtures/report_default.json`, see its `produced_by`), except for
//! the cascade-stage ties its `float_ties` lists (one token moved between two layers of one
//! stage when the layer preference's sums became exact; see `float_ties_why`), and the
//! positions of the layers `equal_memory_layers` lists, regenerated when decoding budgets
//! stopped growing past C x L (see `equal_memory_why`): the test checks that those layers
//! hold fewer positions than before, all of them among the prompt's.
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
    // The committed stages, with the documented float ties applied: each moves one token
    // between two layers of one stage (the stage's total stays), nothing else.
    let mut want_stages = expected["stage_budgets"].clone();
    let ties = expected["float_ties"].as_array().unwrap();
    for tie in ties {
        let (stage, layer) = (
            tie["stage"].as_u64().unwrap(),
            tie["layer"].as_u64().unwrap(),
        );
        let entry = &mut want_stages[stage as usize][layer as usize];
        assert_eq!(
            *entry, tie["committed"],
            "tie at stage {stage}, layer {layer}"
        );
        let (committed, now) = (
            tie["committed"].as_i64().unwrap(),
            tie["now"].as_i64().unwrap(),
        );
        assert_eq!((committed - now).abs(), 1, "a tie moves one token");
        *entry = tie["now"].clone();
    }
    let total = |stage: &Value| -> u64 {
        stage
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap())
            .sum()
    };
    for (got, want) in want_stages
        .as_array()
        .unwrap()
        .iter()
        .zip(expected["stage_budgets"].as_array().unwrap())
    {
        assert_eq!(total(got), total(want), "a tie keeps its stage's total");
    }
    assert_eq!(report["stage_budgets"], want_stages, "cascade stages");
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
    let regenerated = expected["equal_memory_layers"].as_array().unwrap();
    assert!(!regenerated.is_empty());
    let prompt_len = expected["prompt_len"].as_u64().unwrap();
    for layer in regenerated {
        let heads = expected["kept_positions"][layer.as_u64().unwrap() as usize]
            .as_array()
            .unwrap();
        for head in heads {
            let head = head.as_array().unwrap();
            assert_eq!(
                head.len() as u64,
                prompt_len,
                "layer {layer}: budget + window"
            );
        }
    }
    let kept: usize = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["kept_positions"][0].as_array().unwrap().len())
        .sum();
    assert!(
        kept <= 1024 * 30,
        "{kept} kept rows of KV head 0 exceed C x L"
    );
    assert_eq!(got["text"], expected["text"], "greedy text");
}
