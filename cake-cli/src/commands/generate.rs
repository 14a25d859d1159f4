//! `cake generate`: one compressed generation, streamed, with timing and memory.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use cake_models::generate::{GenerationConfig, Sampling};

use super::{median_ms, mib};
use crate::exit::{usage_bail, usage_ensure};
use crate::plots::{LayerBudgets, render};
use crate::session::Session;
use crate::settings::{PolicyArgs, Settings};

/// Arguments of `cake generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model: smollm2-135m (default), qwen2.5-coder-0.5b, a .gguf file or a HF folder
    #[arg(long)]
    model: Option<String>,
    /// The prompt text
    #[arg(
        long,
        conflicts_with = "prompt_file",
        required_unless_present = "prompt_file"
    )]
    prompt: Option<String>,
    /// Read the prompt from this file
    #[arg(long, value_name = "FILE")]
    prompt_file: Option<PathBuf>,
    /// Wrap the prompt in the model's chat template
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sample with top-p (seeded) instead of greedy decoding
    #[arg(long)]
    top_p: Option<f32>,
    /// Sampling temperature (with --top-p)
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Sampling seed (with --top-p)
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the per-layer compression report (budgets, kept positions, preferences) here
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Print the result as JSON instead of streaming text
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    policy: PolicyArgs,
}

/// Runs `cake generate`.
pub fn run(args: Args) -> Result<()> {
    let settings = Settings::resolve(&args.policy, args.model.as_deref())?;
    let text = match (&args.prompt, &args.prompt_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the prompt file {}", path.display()))?,
        (None, None) => usage_bail!("give --prompt TEXT or --prompt-file FILE"),
    };
    usage_ensure!(
        !text.trim().is_empty(),
        "the prompt is empty: give some text"
    );
    let device = Default::default();
    let session =
        Session::<cake_models::Cpu>::open_as(settings.model.as_deref(), settings.weights, &device)?;
    let prompt = session.render_prompt(&text, args.chat)?;
    let ids = session.encode(&prompt)?;
    let config = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        min_new_tokens: 0,
        sampling: match args.top_p {
            Some(p) => Sampling::TopP {
                p,
                temperature: args.temperature,
                seed: args.seed,
            },
            None => Sampling::Greedy,
        },
        stop_strings: Vec::new(),
    };
    let json = args.json;
    let mut stdout = std::io::stdout();
    let mut on_text = |piece: &str| {
        if !json {
            let _ = write!(stdout, "{piece}");
            let _ = stdout.flush();
        }
    };
    let (output, report) = session.generate(&ids, &settings, &config, &mut on_text)?;
    if let (Some(path), Some(report)) = (&args.report, &report) {
        std::fs::write(path, report.to_json())
            .with_context(|| format!("cannot write the report {}", path.display()))?;
        let chart = LayerBudgets {
            title: format!("{}: tokens kept per layer", settings.label()),
            kept: report.layers.iter().map(|l| l.held).collect(),
        };
        let stem = path
            .file_stem()
            .map_or("report".into(), |s| s.to_string_lossy());
        render(&chart, &path.with_file_name(format!("{stem}_budgets")))?;
    }
    let prompt_len = output.prompt_len;
    let total_tokens = prompt_len + output.tokens.len();
    let full_bytes = total_tokens * session.kv_bytes_per_token();
    let prefill_s = output.prefill_time.as_secs_f64();
    let decode_ms = median_ms(&output.decode_step_times);
    if json {
        let value = serde_json::json!({
            "model": session.name,
            "policy": settings.label(),
            "text": output.text,
            "prompt_tokens": prompt_len,
            "new_tokens": output.tokens.len(),
            "prefill_ms": prefill_s * 1e3,
            "prefill_tokens_per_s": prompt_len as f64 / prefill_s.max(1e-9),
            "decode_ms_per_token_median": decode_ms,
            "kv_bytes_full_cache": full_bytes,
            "kv_bytes_peak_prefill": output.kv_bytes_peak_prefill,
            "kv_bytes_after_prefill": output.kv_bytes_after_prefill,
            "kv_bytes_peak_decode": report.as_ref().map(|r| r.decode_peak_bytes),
            "kv_bytes_peak": output.kv_bytes_peak,
            "report": report,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!();
    eprintln!(
        "\n[{}] {} | prompt {prompt_len} tokens, {} new",
        session.name,
        settings.label(),
        output.tokens.len()
    );
    eprintln!(
        "prefill {:.1} ms ({:.0} tok/s) | decode {decode_ms:.2} ms/token (median, {:.1} tok/s)",
        prefill_s * 1e3,
        prompt_len as f64 / prefill_s.max(1e-9),
        1e3 / decode_ms.max(1e-9)
    );
    // The compressor's meter sees each layer's new token before its eviction.
    let decode_peak = report
        .as_ref()
        .map(|r| format!(", peak during decoding {}", mib(r.decode_peak_bytes)))
        .unwrap_or_default();
    eprintln!(
        "K/V memory: full cache {} | this run: peak during prefill {}, after prefill {}{decode_peak}, peak {}",
        mib(full_bytes),
        mib(output.kv_bytes_peak_prefill),
        mib(output.kv_bytes_after_prefill),
        mib(output.kv_bytes_peak)
    );
    Ok(())
}
