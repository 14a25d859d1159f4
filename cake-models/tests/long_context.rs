//! Prompts longer than one attention query block (256): the block-wise prefill (Mistral's
//! sliding window: several query blocks, each with its own visible key range and mask) and
//! the fused causal prefill (Llama) give the same logits as decoding the same tokens one
//! at a time from the cache.

use std::path::PathBuf;

use cake_core::KeepAll;
use cake_models::{Cpu, PrefillLogits, load};

fn check(name: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tiny")
        .join(name);
    let model = load::<Cpu>(&dir, &Default::default()).unwrap().model;
    // 600 deterministic ids in the 256-token vocabulary.
    let ids: Vec<u32> = (0..600u32).map(|i| (i * 97 + 13) % 256).collect();
    let mut caches = model.new_caches();
    let all = model
        .prefill(&ids, &mut caches, &mut KeepAll, PrefillLogits::All)
        .unwrap()
        .logits;
    let all = all.into_data().to_vec::<f32>().unwrap();
    let vocab = model.config().vocab_size;

    let mut caches = model.new_caches();
    model
        .forward_prefill(&ids[..1], &mut caches, &mut KeepAll)
        .unwrap();
    let mut worst = 0.0f32;
    for (pos, &id) in ids.iter().enumerate().skip(1) {
        let step = model
            .forward_decode(id, pos, &mut caches, &mut KeepAll)
            .unwrap();
        let step = step.into_data().to_vec::<f32>().unwrap();
        let row = &all[pos * vocab..(pos + 1) * vocab];
        worst = step
            .iter()
            .zip(row)
            .map(|(a, b)| (a - b).abs())
            .fold(worst, f32::max);
    }
    assert!(
        worst <= 1e-4,
        "{name}: block-wise prefill vs step-wise decode differ by {worst}"
    );
}

#[test]
fn mistral_windowed_prefill_over_several_query_blocks_matches_decoding() {
    check("mistral");
}

#[test]
fn llama_fused_causal_prefill_matches_decoding() {
    check("llama");
}
