//! Long-run memory: N generations in one process, as a library loop, with the resident set
//! size after a warm-up and at the end (a leak per generation shows as growth).
//!
//! ```text
//! cargo run --release -p cake-models --example rss -- [N] [MODEL] [MAX_PROMPT] [NEW_TOKENS] [WARMUP]
//! ```
//! N: generations (default 1000); MODEL: a HF folder or .gguf (default: the project's
//! default model); MAX_PROMPT: longest prompt in tokens (default 160; prompts cycle through
//! lengths from a quarter of it up to it); NEW_TOKENS: tokens generated each time (default
//! 8). Generations alternate the full cache and CAKE (C = MAX_PROMPT / 4, w = 8), so both
//! the plain and the evicting paths run. WARMUP: generations before the baseline reading
//! (default `min(20, N / 5)`; glibc keeps freed memory, so the resident set climbs to the
//! working set's high-water mark first, which takes more generations on a tiny model whose
//! process is a few MiB). RSS is also printed at each tenth of the run. The run fails (exit
//! code 1) when the highest reading after the warm-up is more than 5% above the warm-up's.

use std::time::Instant;

use cake_core::{Method, PolicyConfig, PolicySpec};
use cake_models::generate::{Generation, GenerationConfig};
use cake_models::{Cpu, Model, load};

/// Resident set size in bytes (see [`cake_models::rss_bytes`]; Linux only).
fn rss_bytes() -> u64 {
    cake_models::rss_bytes().expect("/proc/self/statm (Linux)")
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Prompt `i`: `len` deterministic pseudo-random token ids below `vocab`.
fn prompt(i: usize, len: usize, vocab: usize) -> Vec<u32> {
    (0..len as u64)
        .map(|j| {
            let x = (j + 1).wrapping_mul(2_654_435_761) ^ (i as u64).wrapping_mul(40_503);
            (x % vocab as u64) as u32
        })
        .collect()
}

/// Generation `i`: even ones keep the full cache, odd ones run CAKE at C = `cache_size`.
fn generate(
    model: &Model<Cpu>,
    i: usize,
    max_prompt: usize,
    new_tokens: usize,
) -> Result<usize, Box<dyn std::error::Error>> {
    let vocab = model.config().vocab_size;
    let len = max_prompt / 4 + (i * 37) % (max_prompt - max_prompt / 4 + 1);
    let ids = prompt(i, len, vocab);
    let method = if i.is_multiple_of(2) {
        Method::Full
    } else {
        Method::Cake
    };
    let spec = PolicySpec {
        method,
        cache: PolicyConfig {
            cache_size: (max_prompt / 4).max(16),
            window: 8,
            ..Default::default()
        },
        ..Default::default()
    };
    let compressor = spec.compressor::<Cpu>("rss", model.num_layers())?;
    let out = Generation::new(model)
        .with_compressor(compressor)
        .with_config(GenerationConfig::greedy(new_tokens, new_tokens))
        .generate(&ids)?;
    Ok(out.tokens.len())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    cake_kernels::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).map_or(Ok(1000), |s| s.parse())?;
    let path = cake_models::fetch::resolve_model(
        args.get(2).map(String::as_str).filter(|s| !s.is_empty()),
    )?;
    let max_prompt: usize = args.get(3).map_or(Ok(160), |s| s.parse())?;
    let new_tokens: usize = args.get(4).map_or(Ok(8), |s| s.parse())?;
    if max_prompt < 32 {
        return Err("MAX_PROMPT must be at least 32".into());
    }
    let warmup: usize = args
        .get(5)
        .map_or(Ok(20.min(n / 5).max(1)), |s| s.parse())?;
    if warmup == 0 || warmup >= n {
        return Err("WARMUP must be in 1..N".into());
    }
    let start = Instant::now();
    let model = load::<Cpu>(&path, &Default::default())?.model;
    println!(
        "model {} loaded in {:.2}s, RSS {:.1} MiB; {n} generations, prompts of {}..={max_prompt} tokens, {new_tokens} new tokens, full / CAKE alternating",
        path.display(),
        start.elapsed().as_secs_f64(),
        mib(rss_bytes()),
        max_prompt / 4
    );
    let start = Instant::now();
    let mut after_warmup = 0;
    let (mut low, mut high) = (u64::MAX, 0);
    let mut tokens = 0;
    for i in 0..n {
        tokens += generate(&model, i, max_prompt, new_tokens)?;
        let done = i + 1;
        if done == warmup {
            after_warmup = rss_bytes();
            println!(
                "after warm-up ({warmup} generations, {:.1}s): RSS {:.1} MiB",
                start.elapsed().as_secs_f64(),
                mib(after_warmup)
            );
        }
        if done > warmup {
            let rss = rss_bytes();
            low = low.min(rss);
            high = high.max(rss);
        }
        if done.is_multiple_of((n / 10).max(1)) {
            println!(
                "{done:>6} generations, {:>7.1}s: RSS {:.1} MiB",
                start.elapsed().as_secs_f64(),
                mib(rss_bytes())
            );
        }
    }
    let end = rss_bytes();
    let growth = (end as f64 / after_warmup as f64 - 1.0) * 100.0;
    println!(
        "RSS after warm-up {:.1} MiB, after {n} generations {:.1} MiB: growth {growth:+.2}% \
         (min {:.1}, max {:.1} MiB after warm-up); {tokens} tokens in {:.1}s",
        mib(after_warmup),
        mib(end),
        mib(low.min(end)),
        mib(high.max(end)),
        start.elapsed().as_secs_f64()
    );
    let peak_growth = high.max(end) as f64 / after_warmup as f64 - 1.0;
    if peak_growth > BOUND {
        return Err(format!(
            "RSS grew {:+.2}% over the warm-up's at its highest, more than the {:.0}% bound",
            peak_growth * 100.0,
            BOUND * 100.0
        )
        .into());
    }
    println!(
        "highest RSS after warm-up {:+.2}% over the warm-up's: within the {:.0}% bound",
        peak_growth * 100.0,
        BOUND * 100.0
    );
    Ok(())
}

/// Allowed growth of the resident set over the warm-up's, at any reading after it.
const BOUND: f64 = 0.05;
