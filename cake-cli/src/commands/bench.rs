//! `cake bench`: prefill latency, decode latency per token and K/V memory, full cache vs
//! policies, at several context lengths; on a real model or random weights of any shape.

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use cake_models::config::decoder_config;
use cake_models::generate::{GenerationConfig, Sampling};
use cake_models::weights::{HostTensor, WeightError, WeightSource};
use cake_models::{DecoderConfig, Model};
use serde::Serialize;

use super::median_ms;
use crate::plots::{LatencyVsContext, render};
use crate::run_dir::{Manifest, folder_for};
use crate::session::{Session, generate_with_policy};
use crate::settings::{PolicyArgs, Settings};

/// Arguments of `cake bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model: smollm2-135m (default), qwen2.5-coder-0.5b, a .gguf file or a HF folder
    #[arg(long, conflicts_with = "random_weights")]
    pub model: Option<String>,
    /// Build a model of this config.json's shape with random weights (e.g.
    /// cake-cli/data/llama-3.1-8b.config.json) instead of loading one
    #[arg(long, value_name = "CONFIG")]
    pub random_weights: Option<PathBuf>,
    /// Context lengths (prompt tokens)
    #[arg(long, value_delimiter = ',', default_value = "512,2048")]
    pub context: Vec<usize>,
    /// Methods compared with the full cache
    #[arg(long, value_delimiter = ',', default_value = "cake")]
    pub policies: Vec<String>,
    /// Decoding steps timed per run (the median is reported)
    #[arg(long, default_value_t = 16)]
    pub decode_steps: usize,
    /// cpu, or cuda (needs a build with --features cuda)
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Write bench.json, bench.md and a latency plot into a folder here
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// One measured (context, method) cell.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    /// Prompt tokens.
    pub context: usize,
    /// Method label.
    pub policy: String,
    /// Prefill wall time.
    pub prefill_ms: f64,
    /// Prompt tokens per second.
    pub prefill_tokens_per_s: f64,
    /// Median decode step.
    pub decode_ms_per_token: f64,
    /// Largest K/V bytes held during prefill.
    pub kv_bytes_peak_prefill: usize,
    /// K/V bytes held after the prefill (what decoding attends over).
    pub kv_bytes_after_prefill: usize,
    /// Bytes-moved bound of one decoding step: (weights + K/V held after prefill) read at
    /// the measured bandwidth; `None` when the bandwidth was not measured (GPU backends).
    pub decode_bound_ms: Option<f64>,
}

/// Runs `cake bench`.
pub fn run(args: Args) -> Result<()> {
    match args.backend.as_str() {
        "cpu" => bench_on::<cake_models::Cpu>(&args, &Default::default()),
        #[cfg(feature = "cuda")]
        "cuda" => bench_on::<cake_models::Cuda>(&args, &Default::default()),
        #[cfg(not(feature = "cuda"))]
        "cuda" => anyhow::bail!(
            "this `cake` was built without CUDA: rebuild with `cargo build --release -p cake-cli --features cuda`"
        ),
        other => anyhow::bail!("unknown backend `{other}`: use cpu or cuda"),
    }
}

fn bench_on<B: Backend>(args: &Args, device: &B::Device) -> Result<()> {
    let base = Settings::resolve(&args.policy, args.model.as_deref())?;
    anyhow::ensure!(
        !args.context.is_empty(),
        "give at least one --context length"
    );
    anyhow::ensure!(
        args.context.iter().all(|&c| c > 0),
        "--context lengths must be positive"
    );
    let (model, name, eos) = match &args.random_weights {
        Some(path) => {
            let config = read_config(path)?;
            let mut weights = RandomWeights::new(&config);
            let model = Model::<B>::from_weights(&config, &mut weights, device)?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            (model, name, Vec::new())
        }
        None => {
            let session = Session::<B>::open(base.model.as_deref(), device)?;
            let eos = session.tokenizer.eos_token_ids();
            (session.model, session.name, eos)
        }
    };
    // The CPU backend's decode is memory-bound: measure what memory can deliver.
    let bandwidth = cake_core::host::is_flex::<B>().then(|| {
        let bytes_per_s = cake_core::host::read_bandwidth(512 << 20, 5);
        eprintln!(
            "read bandwidth {:.1} GB/s; weights read per decoding step {:.1} MB",
            bytes_per_s / 1e9,
            model.decode_weight_bytes() as f64 / 1e6
        );
        bytes_per_s
    });
    let weight_bytes = model.decode_weight_bytes();
    let mut methods = vec!["full".to_string()];
    methods.extend(args.policies.iter().filter(|p| *p != "full").cloned());
    let steps = args.decode_steps.max(1);
    let config = GenerationConfig {
        max_new_tokens: steps + 1,
        min_new_tokens: steps + 1,
        sampling: Sampling::Greedy,
        stop_strings: Vec::new(),
    };
    // Warm-up: first-use allocations and kernel compilation are not measured.
    let warm = prompt_tokens(64.min(args.context[0]), model.config().vocab_size);
    generate_with_policy(&model, &name, &base_full(&base), &warm, &config, &eos, None)?;
    let mut rows = Vec::new();
    for &context in &args.context {
        let prompt = prompt_tokens(context, model.config().vocab_size);
        for method in &methods {
            let mut settings = base.clone();
            settings.policy = method.clone();
            let (output, _) =
                generate_with_policy(&model, &name, &settings, &prompt, &config, &eos, None)?;
            let prefill_s = output.prefill_time.as_secs_f64();
            let row = BenchRow {
                context,
                policy: if method == "full" {
                    "full".into()
                } else {
                    settings.label()
                },
                prefill_ms: prefill_s * 1e3,
                prefill_tokens_per_s: context as f64 / prefill_s.max(1e-9),
                decode_ms_per_token: median_ms(&output.decode_step_times),
                kv_bytes_peak_prefill: output.kv_bytes_peak_prefill,
                kv_bytes_after_prefill: output.kv_bytes_after_prefill,
                decode_bound_ms: bandwidth
                    .map(|bw| (weight_bytes + output.kv_bytes_after_prefill) as f64 / bw * 1e3),
            };
            eprintln!(
                "context {context:>6} {:<24} prefill {:>9.1} ms  decode {:>7.2} ms/token",
                row.policy, row.prefill_ms, row.decode_ms_per_token
            );
            rows.push(row);
        }
    }
    let table = markdown(&name, &args.backend, &rows);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{table}");
    }
    if let Some(out) = &args.out {
        let dir = folder_for(
            out,
            &format!("bench-{name}"),
            &(&base, &args.context, steps),
        )?;
        Manifest::new(&base).write(&dir)?;
        std::fs::write(dir.join("bench.json"), serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("cannot write into {}", dir.display()))?;
        std::fs::write(dir.join("bench.md"), &table)?;
        let series = methods
            .iter()
            .map(|m| {
                let label = rows
                    .iter()
                    .find(|r| r.policy == *m || r.policy.starts_with(&format!("{m}-")))
                    .map_or(m.clone(), |r| r.policy.clone());
                let ms = args
                    .context
                    .iter()
                    .map(|&c| {
                        rows.iter()
                            .find(|r| r.context == c && r.policy == label)
                            .map_or(0.0, |r| r.decode_ms_per_token)
                    })
                    .collect();
                (label, ms)
            })
            .collect();
        let chart = LatencyVsContext {
            title: format!("decode latency: {name} ({})", args.backend),
            contexts: args.context.clone(),
            series,
        };
        render(&chart, &dir.join("decode_latency"))?;
        eprintln!("wrote {}", dir.display());
    }
    Ok(())
}

fn base_full(base: &Settings) -> Settings {
    let mut s = base.clone();
    s.policy = "full".into();
    s
}

/// The latency/memory table with ratios to the full cache at the same context, and each
/// decode figure next to its bytes-moved bound (weights + K/V held, at the measured
/// bandwidth).
pub fn markdown(model: &str, backend: &str, rows: &[BenchRow]) -> String {
    use std::fmt::Write as _;
    let mut md = format!(
        "model `{model}`, backend {backend}\n\n| context | method | prefill ms | prefill tok/s | decode ms/token | bound ms | x bound | decode speed-up | bound speed-up | peak K/V MiB (prefill) | K/V MiB after prefill | K/V vs full |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let or_dash =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    for row in rows {
        let full = rows
            .iter()
            .find(|r| r.context == row.context && r.policy == "full");
        let speedup = full.map_or(1.0, |f| {
            f.decode_ms_per_token / row.decode_ms_per_token.max(1e-9)
        });
        let bound_speedup = full
            .and_then(|f| f.decode_bound_ms.zip(row.decode_bound_ms))
            .map(|(f, r)| f / r.max(1e-9));
        let memory = full.map_or(1.0, |f| {
            row.kv_bytes_after_prefill as f64 / f.kv_bytes_after_prefill.max(1) as f64
        });
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.0} | {:.2} | {} | {} | {:.2}x | {} | {:.2} | {:.2} | {:.1}% |",
            row.context,
            row.policy,
            row.prefill_ms,
            row.prefill_tokens_per_s,
            row.decode_ms_per_token,
            or_dash(row.decode_bound_ms, 2),
            or_dash(
                row.decode_bound_ms
                    .map(|b| row.decode_ms_per_token / b.max(1e-9)),
                2
            ),
            speedup,
            bound_speedup.map_or("-".to_string(), |b| format!("{b:.2}x")),
            row.kv_bytes_peak_prefill as f64 / 1048576.0,
            row.kv_bytes_after_prefill as f64 / 1048576.0,
            memory * 100.0
        );
    }
    md
}

/// `n` deterministic token ids spread over the vocabulary (latency does not depend on
/// which tokens).
fn prompt_tokens(n: usize, vocab: usize) -> Vec<u32> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) % vocab.max(1) as u64) as u32
        })
        .collect()
}

fn read_config(path: &std::path::Path) -> Result<DecoderConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    decoder_config(&json)
        .with_context(|| format!("{} is not a supported config.json", path.display()))
}

/// Weights drawn uniformly from [-0.03, 0.03] (norms are 1), with the shapes a config asks
/// for: speed does not depend on the values.
struct RandomWeights {
    config: DecoderConfig,
    state: u64,
}

impl RandomWeights {
    fn new(config: &DecoderConfig) -> Self {
        Self {
            config: config.clone(),
            state: 0x2545_f491_4f6c_dd1d,
        }
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let c = &self.config;
        let (h, q, kv, i) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
            c.intermediate_size,
        );
        let bias = name.ends_with(".bias");
        let shape = match name.rsplit('.').nth(1)? {
            "embed_tokens" | "lm_head" => vec![c.vocab_size, h],
            "q_proj" if bias => vec![q],
            "k_proj" | "v_proj" if bias => vec![kv],
            "q_proj" => vec![q, h],
            "k_proj" | "v_proj" => vec![kv, h],
            "o_proj" => vec![h, q],
            "gate_proj" | "up_proj" => vec![i, h],
            "down_proj" => vec![h, i],
            "input_layernorm" | "post_attention_layernorm" | "norm" => vec![h],
            _ => return None,
        };
        Some(shape)
    }
}

impl WeightSource for RandomWeights {
    fn origin(&self) -> String {
        "random weights".into()
    }

    fn contains(&self, name: &str) -> bool {
        match name {
            "lm_head.weight" => !self.config.tie_word_embeddings,
            n if n.ends_with(".bias") => self.config.qkv_bias,
            n => self.shape(n).is_some(),
        }
    }

    fn take(&mut self, name: &str) -> Result<HostTensor, WeightError> {
        let Some(shape) = self.shape(name) else {
            return Err(WeightError::Missing {
                name: name.to_string(),
                origin: self.origin(),
            });
        };
        let n: usize = shape.iter().product();
        let data = if name.contains("norm") {
            vec![1.0; n]
        } else {
            (0..n)
                .map(|_| {
                    self.state ^= self.state << 13;
                    self.state ^= self.state >> 7;
                    self.state ^= self.state << 17;
                    ((self.state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.06
                })
                .collect()
        };
        Ok(HostTensor { shape, data })
    }
}
