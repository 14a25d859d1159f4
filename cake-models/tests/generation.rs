//! The generation loop on the tiny Llama fixture: greedy equals torch's greedy tokens, EOS
//! and `min_new_tokens` behave as documented, seeded top-p is reproducible, text streams.

mod common;

use std::path::PathBuf;

use cake_models::generate::{GenerateError, Generation, GenerationConfig, Sampling, StopReason};
use cake_models::{Cpu, Model, load};

fn tiny_llama() -> (Model<Cpu>, Vec<u32>, Vec<u32>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny/llama");
    let json = common::fixture_json("tiny/llama/expected.json");
    let model = load::<Cpu>(&dir, &Default::default()).unwrap().model;
    (
        model,
        common::ids(&json["input_ids"]),
        common::ids(&json["greedy_tokens"]),
    )
}

fn greedy(max_new_tokens: usize, min_new_tokens: usize) -> GenerationConfig {
    GenerationConfig::greedy(max_new_tokens, min_new_tokens)
}

#[test]
fn greedy_generation_matches_torch_and_reports_timing() {
    let (model, prompt, expected) = tiny_llama();
    let out = Generation::new(&model)
        .with_config(greedy(16, 0))
        .generate(&prompt)
        .unwrap();
    assert_eq!(out.tokens, expected);
    assert_eq!(out.stop_reason, StopReason::MaxNewTokens);
    assert_eq!(out.prompt_len, prompt.len());
    // The first token comes from the prefill; 15 decode steps produce the other 15.
    assert_eq!(out.decode_step_times.len(), 15);
    // Full cache: 3 layers x 2 KV heads x 16 dims x (K and V) x 4 bytes per token.
    let per_token = 3 * 2 * 16 * 2 * 4;
    assert_eq!(out.kv_bytes_after_prefill, prompt.len() * per_token);
    assert_eq!(out.kv_bytes_peak, (prompt.len() + 15) * per_token);
}

#[test]
fn eos_stops_and_min_new_tokens_suppresses_it() {
    let (model, prompt, expected) = tiny_llama();
    let eos = [expected[3]];
    let out = Generation::new(&model)
        .with_config(greedy(16, 0))
        .with_eos(eos.to_vec())
        .generate(&prompt)
        .unwrap();
    assert_eq!(out.stop_reason, StopReason::Eos);
    assert_eq!(out.tokens, expected[..3]);

    let out = Generation::new(&model)
        .with_config(greedy(16, 5))
        .with_eos(eos.to_vec())
        .generate(&prompt)
        .unwrap();
    assert_eq!(out.tokens[..3], expected[..3]);
    assert_ne!(
        out.tokens[3], expected[3],
        "EOS is suppressed before min_new_tokens"
    );
    assert!(out.tokens.len() >= 5);
}

#[test]
fn seeded_top_p_is_reproducible() {
    let (model, prompt, _) = tiny_llama();
    let config = |seed| GenerationConfig {
        max_new_tokens: 12,
        min_new_tokens: 0,
        sampling: Sampling::TopP {
            p: 0.9,
            temperature: 1.0,
            seed,
        },
        stop_strings: vec![],
    };
    let a = Generation::new(&model)
        .with_config(config(3))
        .generate(&prompt)
        .unwrap();
    let b = Generation::new(&model)
        .with_config(config(3))
        .generate(&prompt)
        .unwrap();
    assert_eq!(a.tokens, b.tokens);
    let others: Vec<Vec<u32>> = (4..8)
        .map(|seed| {
            Generation::new(&model)
                .with_config(config(seed))
                .generate(&prompt)
                .unwrap()
                .tokens
        })
        .collect();
    assert!(
        others.iter().any(|t| *t != a.tokens),
        "different seeds should sample differently"
    );
}

#[test]
fn stop_string_cuts_text_and_streaming_delivers_it() {
    let (model, prompt, expected) = tiny_llama();
    // A toy decoder: token t -> "<t>".
    let decode = |t: &[u32]| t.iter().map(|x| format!("<{x}>")).collect::<String>();
    let piece = |t: u32| format!("<{t}>");
    let stop = format!("<{}>", expected[4]);
    let mut streamed = String::new();
    let mut on_text = |s: &str| streamed.push_str(s);
    let config = GenerationConfig {
        stop_strings: vec![stop],
        ..greedy(16, 0)
    };
    let out = Generation::new(&model)
        .with_config(config)
        .with_text(piece, &mut on_text)
        .generate(&prompt)
        .unwrap();
    assert_eq!(out.stop_reason, StopReason::StopString);
    assert_eq!(out.tokens, expected[..5]);
    let want = decode(&expected[..4]);
    assert_eq!(out.text.as_deref(), Some(want.as_str()));
    assert_eq!(streamed, want);
}

#[test]
fn bad_requests_are_errors() {
    let (model, prompt, _) = tiny_llama();
    let err = Generation::new(&model)
        .with_config(greedy(4, 0))
        .generate(&[])
        .unwrap_err();
    assert!(matches!(
        err,
        GenerateError::Model(cake_models::ModelError::EmptyPrompt)
    ));
    let err = Generation::new(&model)
        .with_config(greedy(4, 5))
        .generate(&prompt)
        .unwrap_err();
    assert!(matches!(err, GenerateError::Config(_)));
    let err = Generation::new(&model)
        .with_config(greedy(4, 0))
        .generate(&[300])
        .unwrap_err();
    assert!(matches!(
        err,
        GenerateError::Model(cake_models::ModelError::TokenOutOfRange { token: 300, .. })
    ));
    let config = GenerationConfig {
        stop_strings: vec!["x".into()],
        ..greedy(4, 0)
    };
    assert!(
        Generation::new(&model)
            .with_config(config.clone())
            .generate(&prompt)
            .is_err()
    );
}

/// One `Generation` answers one prompt after another: each `generate` starts from fresh
/// caches (the compressor starts over at each prefill), so every output equals a fresh
/// generation's, text included.
#[test]
fn a_generation_answers_one_prompt_after_another() {
    use cake_core::{LayerCache, Method, PolicyConfig, PolicySpec};
    let (model, prompt, expected) = tiny_llama();
    let other: Vec<u32> = prompt.iter().rev().copied().collect();
    for method in [Method::Full, Method::Cake] {
        let spec = PolicySpec {
            method,
            cache: PolicyConfig {
                cache_size: 8,
                window: 2,
                ..PolicyConfig::default()
            },
            ..PolicySpec::default()
        };
        let compressor = || spec.compressor::<Cpu>("tiny", model.num_layers()).unwrap();
        let piece = |t: u32| format!("<{t}>");
        let positions = |caches: &[LayerCache<Cpu>]| -> Vec<Vec<Vec<usize>>> {
            caches.iter().map(|c| c.positions().to_vec()).collect()
        };
        // Each prompt's output and kept positions, from a generation of its own.
        let fresh = |ids: &[u32]| {
            let mut run = Generation::new(&model)
                .with_compressor(compressor())
                .with_config(greedy(12, 12))
                .with_text(piece, |_: &str| {});
            let out = run.generate(ids).unwrap();
            (out, positions(run.caches()))
        };
        let mut run = Generation::new(&model)
            .with_compressor(compressor())
            .with_config(greedy(12, 12))
            .with_text(piece, |_: &str| {});
        for ids in [&prompt, &other, &prompt] {
            let out = run.generate(ids).unwrap();
            let (want, kept) = fresh(ids);
            assert_eq!(out.tokens, want.tokens, "{method}");
            assert_eq!(out.text, want.text, "{method}");
            assert_eq!(out.prompt_len, ids.len());
            assert_eq!(
                (
                    out.kv_bytes_peak_prefill,
                    out.kv_bytes_after_prefill,
                    out.kv_bytes_peak
                ),
                (
                    want.kv_bytes_peak_prefill,
                    want.kv_bytes_after_prefill,
                    want.kv_bytes_peak
                ),
                "{method}"
            );
            assert_eq!(positions(run.caches()), kept, "{method}");
        }
        if method == Method::Full {
            assert_eq!(run.generate(&prompt).unwrap().tokens[..], expected[..12]);
        }
    }
}
