//! Long-run memory on the tiny Llama fixture: many generations in one process (the full
//! cache and CAKE alternating, prompts of varying length) do not grow the resident set.
//! A leak of a cache, a compressor or a prompt's activations per generation would.
//!
//! glibc keeps freed memory for reuse (see `cake_kernels::tune_allocator`), so the resident set
//! first climbs to the working set's high-water mark; the warm-up runs every prompt length
//! the loop uses, several times, before the baseline is read. The bound then holds for the
//! highest reading of every later window, not just the last one.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::path::PathBuf;

use cake_core::{Method, PolicyConfig, PolicySpec};
use cake_models::generate::{Generation, GenerationConfig};
use cake_models::{Cpu, Model, load};

/// Prompt lengths cycle through `MIN_PROMPT..=MAX_PROMPT` (the model's context is 256).
const MIN_PROMPT: usize = 40;
const MAX_PROMPT: usize = 200;
const NEW_TOKENS: usize = 16;
/// Warm-up generations: every prompt length of the cycle, for both caches, three times.
const WARMUP: usize = 150;
/// Measured generations, in windows.
const WINDOWS: usize = 5;
const PER_WINDOW: usize = 10;
/// Allowed growth over the warm-up's resident set.
const BOUND: f64 = 0.05;

fn rss_bytes() -> u64 {
    cake_models::rss_bytes().expect("/proc/self/statm")
}

/// Generation `i`: a prompt of a length from the cycle, even ones with the full cache,
/// odd ones with CAKE at C = 24, w = 4.
fn generate(model: &Model<Cpu>, i: usize) {
    let len = MIN_PROMPT + (i * 37) % (MAX_PROMPT - MIN_PROMPT + 1);
    let ids: Vec<u32> = (0..len as u64)
        .map(|j| ((((j + 1) * 2_654_435_761) ^ (i as u64 * 40_503)) % 256) as u32)
        .collect();
    let spec = PolicySpec {
        method: if i.is_multiple_of(2) {
            Method::Full
        } else {
            Method::Cake
        },
        cache: PolicyConfig {
            cache_size: 24,
            window: 4,
            ..Default::default()
        },
        ..Default::default()
    };
    let compressor = spec.compressor::<Cpu>("tiny", model.num_layers()).unwrap();
    let out = Generation::new(model)
        .with_compressor(compressor)
        .with_config(GenerationConfig::greedy(NEW_TOKENS, NEW_TOKENS))
        .generate(&ids)
        .unwrap();
    assert_eq!(out.tokens.len(), NEW_TOKENS);
}

#[test]
fn many_generations_in_one_process_do_not_grow_the_resident_set() {
    cake_kernels::tune_allocator();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny/llama");
    let model = load::<Cpu>(&dir, &Default::default()).unwrap().model;
    for i in 0..WARMUP {
        generate(&model, i);
    }
    let baseline = rss_bytes();
    let mut peaks = Vec::new();
    let mut i = WARMUP;
    for _ in 0..WINDOWS {
        let mut peak = 0;
        for _ in 0..PER_WINDOW {
            generate(&model, i);
            i += 1;
            peak = peak.max(rss_bytes());
        }
        peaks.push(peak);
    }
    let end = rss_bytes();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let growth = |b: u64| b as f64 / baseline as f64 - 1.0;
    println!(
        "RSS after {WARMUP} warm-up generations {:.2} MiB; peaks of {WINDOWS} windows of \
         {PER_WINDOW}: {:?} MiB; after {} generations {:.2} MiB ({:+.2}%)",
        mib(baseline),
        peaks
            .iter()
            .map(|&p| format!("{:.2}", mib(p)))
            .collect::<Vec<_>>(),
        i,
        mib(end),
        growth(end) * 100.0
    );
    for (w, &peak) in peaks.iter().enumerate() {
        assert!(
            growth(peak) <= BOUND,
            "window {w}: RSS {:.2} MiB is {:+.2}% over the warm-up's {:.2} MiB",
            mib(peak),
            growth(peak) * 100.0,
            mib(baseline)
        );
    }
    assert!(growth(end) <= BOUND);
}
