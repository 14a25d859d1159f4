//! Prefill and decode throughput of a model on the CPU backend.
//!
//! ```text
//! cargo run --release -p cake-models --example speed -- [MODEL] [PREFILL_LENS] [DECODE_STEPS] [WEIGHTS] [DECODE_AFTER]
//! ```
//! MODEL: a HF folder or .gguf (default: the project's default model); PREFILL_LENS: comma
//! separated prompt lengths (default 512,2048); DECODE_STEPS: decoding steps (default 64);
//! WEIGHTS: `f32` (default) or `stored` (GGUF matrices kept packed); DECODE_AFTER: the
//! prompt length decoding starts after (default 512). Prompts are deterministic
//! pseudo-random token ids, the same as `tools/fixtures/speed_transformers.py` and
//! `speed_llamacpp.py` use, so the three can be compared (`tools/speed_vs_llamacpp.sh`).

use std::time::Instant;

use cake_core::KeepAll;
use cake_models::Cpu;
use cake_models::load::load_as;
use cake_models::weights::WeightFormat;

#[global_allocator]
static ALLOC: cake_kernels::LineAligned = cake_kernels::LineAligned;

/// Token `i` of the benchmark prompt: a fixed linear-congruential sequence in `[100, 10100)`.
fn prompt(len: usize) -> Vec<u32> {
    (0..len as u64)
        .map(|i| (100 + (i * 2_654_435_761 + 12_345) % 10_000) as u32)
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    cake_kernels::tune_allocator();
    cake_kernels::tune_threads();
    let args: Vec<String> = std::env::args().collect();
    let path = cake_models::fetch::resolve_model(
        args.get(1).map(String::as_str).filter(|s| !s.is_empty()),
    )?;
    let lens: Vec<usize> = args
        .get(2)
        .map_or("512,2048", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let steps: usize = args.get(3).map_or(Ok(64), |s| s.parse())?;
    let format: WeightFormat = args.get(4).map_or(Ok(WeightFormat::F32), |s| s.parse())?;
    let after: usize = args.get(5).map_or(Ok(512), |s| s.parse())?;
    let device = Default::default();
    let t = Instant::now();
    let model = load_as::<Cpu>(&path, &device, format)?.model;
    println!(
        "model {} loaded in {:.2}s ({} weights)",
        path.display(),
        t.elapsed().as_secs_f64(),
        format.name()
    );
    if let Some(rss) = cake_models::rss_bytes() {
        println!(
            "resident after load: {:.1} MB (weights read per decoding step: {:.1} MB)",
            rss as f64 / 1e6,
            model.decode_weight_bytes() as f64 / 1e6
        );
    }
    // Warm-up (thread pool, allocator).
    model
        .forward_prefill(&prompt(64), &mut model.new_caches(), &mut KeepAll)?
        .into_data();
    for &len in &lens {
        let mut caches = model.new_caches();
        let t = Instant::now();
        model
            .forward_prefill(&prompt(len), &mut caches, &mut KeepAll)?
            .into_data();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "prefill {len:>6} tokens: {secs:>7.3}s  {:>8.1} tokens/s",
            len as f64 / secs
        );
    }
    let mut caches = model.new_caches();
    let p = prompt(after);
    model
        .forward_prefill(&p, &mut caches, &mut KeepAll)?
        .into_data();
    let t = Instant::now();
    for step in 0..steps {
        let token = p[step % p.len()];
        model
            .forward_decode(token, p.len() + step, &mut caches, &mut KeepAll)?
            .into_data();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "decode {steps} steps after {after}: {:.2} ms/token  {:.1} tokens/s",
        secs * 1e3 / steps as f64,
        steps as f64 / secs
    );
    Ok(())
}
