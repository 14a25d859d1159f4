//! The `cake` command-line tool: CAKE-compressed generation, LongBench-format predictions
//! and scores, benchmarks and inspection. It only wires the workspace crates together.

mod commands;
mod exit;
mod plots;
mod progress;
mod run_dir;
mod session;
mod settings;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Bounded, adaptive KV cache (CAKE) for Llama, Mistral and Qwen2 models.
///
/// Models: a known name (smollm2-135m, the default; qwen2.5-coder-0.5b,
/// qwen2.5-coder-1.5b), a GGUF file or a Hugging Face folder. Settings: defaults <
/// cake.toml (or --config) < CAKE_* variables < flags.
///
/// Exit codes: 0 success, 1 internal error, 2 usage (flags, settings, busy output folder),
/// 3 bad input data (datasets, prediction or score-function files), 4 bad model files.
#[derive(Debug, Parser)]
#[command(name = "cake", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate an answer with a compressed cache, streaming it; then print timing and memory.
    Generate(commands::generate::Args),
    /// Show which layers and KV heads kept a record's needle: diagnosis.json and a picture.
    Diagnose(commands::diagnose::Args),
    /// Write LongBench-format predictions (resumable) for datasets or the synthetic suite.
    Pred(commands::pred::Args),
    /// Score a folder of predictions: result.json and a Markdown table.
    Eval(commands::eval::Args),
    /// Measure prefill and decode latency and K/V memory, full cache vs policies.
    Bench(commands::bench::Args),
    /// Show a model's architecture, heads, K/V bytes per token, chat template and taus.
    Inspect(commands::inspect::Args),
    /// Fit a static score function of the layer index from calibration prompts.
    ///
    /// The calibration records (--data-dir) must not be the evaluation records: write them
    /// with another seed, e.g. `cake suite --out calib --seed 1`.
    Fit(commands::fit::Args),
    /// Write the offline synthetic suite (LongBench JSONL format) into a folder.
    Suite(commands::suite::Args),
    /// Grid-search CAKE's temperatures per cache size on calibration data; write a table.
    ///
    /// The calibration records (--data-dir) must not be the evaluation records: write them
    /// with another seed, e.g. `cake suite --out calib --seed 1`.
    Tune(commands::tune::Args),
}

/// Large buffers start on a cache line (the kernels' vector loads then never straddle two).
#[global_allocator]
static ALLOC: cake_kernels::LineAligned = cake_kernels::LineAligned;

fn main() -> ExitCode {
    cake_kernels::tune_allocator();
    cake_kernels::tune_threads();
    // Spans (load, prefill per layer, eviction, decode) with their durations on stderr,
    // chosen by RUST_LOG (e.g. RUST_LOG=cake_models=debug); silent by default.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => commands::generate::run(args),
        Command::Diagnose(args) => commands::diagnose::run(args),
        Command::Pred(args) => commands::pred::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Suite(args) => commands::suite::run(args),
        Command::Fit(args) => commands::fit::run(args),
        Command::Tune(args) => commands::tune::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(exit::code(&error))
        }
    }
}
