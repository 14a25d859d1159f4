//! `cake bench`: prefill latency, decode latency per token and K/V memory, full cache vs
//! policies, at several context lengths; on a real model or random weights of any shape.
//! The methods' decoding steps interleave (one step of each in turn), so that the decode
//! ratios hold on a machine whose speed drifts while it runs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use cake_core::{Compressor, HeadBudgets, Method, PolicySpec};
use cake_models::config::decoder_config;
use cake_models::generate::{Generation, GenerationConfig, GenerationOutput, argmax};
use cake_models::model::kv_bytes;
use cake_models::weights::RandomWeights;
use cake_models::{DecoderConfig, Model};
use serde::Serialize;

use super::{median, median_ms, paired_ratio};
#[cfg(not(all(feature = "cuda", feature = "wgpu")))]
use crate::exit::usage_bail;
use crate::exit::usage_ensure;
use crate::plots::{LatencyVsContext, render};
use crate::run_dir::{Manifest, folder_for};
use crate::session::Session;
use crate::settings::{PolicyArgs, Settings, policy_for_modes};

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
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cake",
        ignore_case = true
    )]
    pub policies: Vec<Method>,
    /// Head-budget modes each policy runs with (see --head-budgets), e.g. none,preference:
    /// per-head against layer-only budgets at equal total, side by side
    #[arg(long, value_delimiter = ',', ignore_case = true, value_name = "MODES")]
    pub head_budget_modes: Vec<HeadBudgets>,
    /// Prefills timed per method, in rounds interleaved across methods (the full cache
    /// first, the others' order rotating; the median is reported, and "prefill vs full" is
    /// the median of each round's ratio to the full cache's prefill), so that prefill ratios
    /// hold on a machine whose speed drifts
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub prefill_rounds: usize,
    /// Decoding steps timed per method, interleaved across methods (the median is reported)
    #[arg(long, default_value_t = 16)]
    pub decode_steps: usize,
    /// Batch sizes (e.g. 1,4,16,64): instead of the latency table, the aggregate decoding
    /// throughput of this many sequences decoded together, per method and context, beside
    /// its bound (weights once plus every sequence's K/V at the measured bandwidth, or the
    /// multiply-adds at the measured matrix-product peak, whichever is larger)
    #[arg(long, value_delimiter = ',', value_name = "SIZES")]
    pub batch: Vec<usize>,
    /// A K/V memory budget (e.g. 2G, 512M): how many sequences of each context fit in it
    /// under each method, and the throughput measured at those batch sizes
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub kv_memory: Option<u64>,
    /// Compute backend (cuda and wgpu need a build with --features cuda or --features wgpu)
    #[arg(long, value_enum, default_value_t = BackendKind::Cpu, ignore_case = true)]
    pub backend: BackendKind,
    /// Write bench.json, bench.md and a latency plot into a folder here (with --batch:
    /// batch.json and batch.md)
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
    /// The method's policy, typed: what the table finds the full cache's row by (`policy`
    /// is its label, for people). Not serialised.
    #[serde(skip)]
    pub spec: PolicySpec,
    /// Prefill wall time.
    pub prefill_ms: f64,
    /// Prompt tokens per second.
    pub prefill_tokens_per_s: f64,
    /// Prefill time over the full cache's: the median over rounds of this method's prefill
    /// divided by the full cache's in the same round (paired, so that a machine's drift
    /// between rounds cancels); 1 for the full cache.
    pub prefill_vs_full: f64,
    /// Median decode step.
    pub decode_ms_per_token: f64,
    /// Decode speed over the full cache's: the median over decoding steps of the full
    /// cache's step time over this method's at the same step index. Each step of every
    /// method runs right after the other methods' same step, so the pair sees the same
    /// machine; when a shared machine's speed changes phase during the run, the ratio of
    /// the two medians can land between phases and this does not. 1 for the full cache.
    pub decode_speedup: f64,
    /// Largest K/V bytes held during prefill.
    pub kv_bytes_peak_prefill: usize,
    /// K/V bytes held after the prefill (what decoding attends over).
    pub kv_bytes_after_prefill: usize,
    /// Largest K/V bytes held after any decoding step (equal memory: a compressing
    /// policy never holds more than C x L tokens per KV head).
    pub kv_bytes_peak_decode: usize,
    /// Bytes-moved bound of one decoding step: (weights + K/V held after prefill) read at
    /// the measured bandwidth; `None` when the bandwidth was not measured (GPU backends).
    pub decode_bound_ms: Option<f64>,
    /// The read bandwidth of the bound: the median of the probes taken between this
    /// context's decoding steps (GB/s); `None` on GPU backends.
    pub read_bandwidth_gb_s: Option<f64>,
    /// Decode time over its bytes-moved bound, step by step: the median over the decoding
    /// steps of each step's time over the bound at the bandwidth of the probe taken nearest
    /// in time to it. A shared machine's bandwidth can change phase within a run (one
    /// 2-core EPYC moves between about 33 and 55-60 GB/s); `decode_ms_per_token /
    /// decode_bound_ms` then divides the median step of one phase by a bound from the
    /// other's probes, and this does not. `None` on GPU backends.
    pub decode_vs_bound: Option<f64>,
}

/// Bytes the bandwidth probe reads: far beyond any last-level cache.
const PROBE_BYTES: usize = 512 << 20;
/// Passes per bandwidth sample (the best counts).
const PROBE_ROUNDS: usize = 3;
/// Bandwidth samples per context, spread over its decoding steps (plus one after them):
/// a shared machine's bandwidth moves between phases during a run, and a bound from one
/// probe taken before it can be far from what the steps saw.
const BANDWIDTH_SAMPLES: usize = 16;

/// The compute backends `cake bench` runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// burn-flex on the CPU, with the host kernels.
    Cpu,
    /// burn-cuda (a build with `--features cuda`).
    Cuda,
    /// burn-wgpu: Vulkan, Metal or DX12, whichever adapter wgpu ranks first (a build with
    /// `--features wgpu`).
    Wgpu,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
            BackendKind::Wgpu => "wgpu",
        })
    }
}

/// Runs `cake bench`.
pub fn run(args: Args) -> Result<()> {
    match args.backend {
        BackendKind::Cpu => bench_on::<cake_models::Cpu>(&args, &Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => bench_on::<cake_models::Cuda>(&args, &Default::default()),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => usage_bail!(
            "this `cake` was built without CUDA: rebuild with `cargo build --release -p cake-cli --features cuda`"
        ),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            let device = cake_models::WgpuDevice::default();
            let Some(adapter) = cake_models::wgpu_adapter(&device) else {
                anyhow::bail!(
                    "wgpu found no adapter: install a Vulkan driver (on Debian and Ubuntu, `mesa-vulkan-drivers` runs it on the CPU)"
                );
            };
            eprintln!("wgpu adapter {adapter}");
            bench_on::<cake_models::Wgpu>(&args, &device)
        }
        #[cfg(not(feature = "wgpu"))]
        BackendKind::Wgpu => usage_bail!(
            "this `cake` was built without wgpu: rebuild with `cargo build --release -p cake-cli --features wgpu`"
        ),
    }
}

fn bench_on<B: Backend>(args: &Args, device: &B::Device) -> Result<()> {
    let base = Settings::resolve(
        &policy_for_modes(&args.policy, &args.head_budget_modes),
        args.model.as_deref(),
    )?;
    usage_ensure!(
        !args.context.is_empty(),
        "give at least one --context length"
    );
    usage_ensure!(
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
            let session = Session::<B>::open_as(base.model.as_deref(), base.weights, device)?;
            let eos = session.tokenizer.eos_token_ids();
            (session.model, session.name, eos)
        }
    };
    // The CPU backend's decode is memory-bound: measure what memory can deliver, between
    // the decoding steps of each context (see `BANDWIDTH_SAMPLES`).
    let probe =
        cake_core::host::is_flex::<B>().then(|| cake_kernels::BandwidthProbe::new(PROBE_BYTES));
    if probe.is_some() {
        eprintln!(
            "weights read per decoding step {:.1} MB",
            model.decode_weight_bytes() as f64 / 1e6
        );
    }
    let weight_bytes = model.decode_weight_bytes();
    let modes = if args.head_budget_modes.is_empty() {
        vec![base.spec.cache.head_budgets]
    } else {
        args.head_budget_modes.clone()
    };
    let full = base.with_head_budgets(HeadBudgets::None);
    let mut configs = vec![full.with_method(Method::Full, base.spec.cache.cache_size)?];
    for &method in args.policies.iter().filter(|&&m| m != Method::Full) {
        for &mode in &modes {
            let settings = base.with_head_budgets(mode);
            configs.push(settings.with_method(method, base.spec.cache.cache_size)?);
        }
    }
    let steps = args.decode_steps.max(1);
    let config = GenerationConfig::greedy(steps + 1, steps + 1);
    // Warm-up: first-use allocations and kernel compilation are not measured.
    let warm = prompt_tokens(64.min(args.context[0]), model.config().vocab_size);
    timed_run(&model, &name, &configs[0], &warm, &config, &eos)?;
    if !args.batch.is_empty() || args.kv_memory.is_some() {
        return throughput(args, &model, &name, &configs, steps);
    }
    let mut rows = Vec::new();
    for &context in &args.context {
        let prompt = prompt_tokens(context, model.config().vocab_size);
        // Every method prefills, then their decoding steps interleave (one step of each in
        // turn, the order rotating), so that a machine's drifting speed (other tenants, clock
        // changes) weighs on every method alike and the decode ratios can be trusted.
        let rounds = args.prefill_rounds.max(1);
        let mut prefill_times = vec![Vec::with_capacity(rounds); configs.len()];
        let mut last: Vec<Option<Decoder<B>>> = configs.iter().map(|_| None).collect();
        for round in 0..rounds {
            for i in prefill_order(round, configs.len()) {
                last[i] = None; // the previous round's caches go before the next prefill
                let decoder = Decoder::prefill(&model, &name, &configs[i], &prompt)?;
                prefill_times[i].push(decoder.prefill_time);
                last[i] = Some(decoder);
            }
        }
        let mut decoders: Vec<Decoder<B>> = last.into_iter().flatten().collect();
        // Bandwidth samples spread over the decoding steps (none inside a timed step).
        let every = steps.div_ceil(BANDWIDTH_SAMPLES).max(1);
        // (bandwidth, when it was measured) of each probe.
        let mut probes: Vec<(f64, Instant)> = Vec::new();
        let mut measure = |probe: &cake_kernels::BandwidthProbe| {
            let start = Instant::now();
            let bandwidth = probe.measure(PROBE_ROUNDS);
            probes.push((bandwidth, start + start.elapsed() / 2));
        };
        for step in 0..steps {
            if let Some(probe) = probe.as_ref().filter(|_| step % every == 0) {
                measure(probe);
            }
            for k in 0..decoders.len() {
                let i = (step + k) % decoders.len();
                decoders[i].step()?;
            }
        }
        if let Some(probe) = &probe {
            measure(probe);
        }
        let samples: Vec<f64> = probes.iter().map(|&(b, _)| b).collect();
        let bandwidth = (!samples.is_empty()).then(|| median(&samples));
        if let Some(bw) = bandwidth {
            let (low, high) = samples
                .iter()
                .fold((f64::INFINITY, 0.0f64), |(l, h), &b| (l.min(b), h.max(b)));
            eprintln!(
                "context {context:>6}: read bandwidth {:.1} GB/s (median of {} probes between decoding steps, {:.1}-{:.1})",
                bw / 1e9,
                samples.len(),
                low / 1e9,
                high / 1e9
            );
        }
        for (d, times) in decoders.iter().zip(&prefill_times) {
            let prefill_s = median_ms(times) / 1e3;
            // configs[0] is the full cache: each round's prefill over the full cache's in
            // that round, and each decoding step's speed-up over the full cache's step of
            // the same index (the two ran back to back).
            let full_steps = &decoders[0].step_times;
            let row = BenchRow {
                context,
                policy: d.label.clone(),
                spec: d.spec.clone(),
                prefill_ms: prefill_s * 1e3,
                prefill_tokens_per_s: context as f64 / prefill_s.max(1e-9),
                prefill_vs_full: paired_ratio(times, &prefill_times[0]),
                decode_ms_per_token: median_ms(&d.step_times),
                decode_speedup: paired_ratio(full_steps, &d.step_times),
                kv_bytes_peak_prefill: d.kv_bytes_peak_prefill,
                kv_bytes_after_prefill: d.kv_bytes_after_prefill,
                kv_bytes_peak_decode: d.kv_bytes_peak_decode,
                decode_bound_ms: bandwidth
                    .map(|bw| (weight_bytes + d.kv_bytes_after_prefill) as f64 / bw * 1e3),
                read_bandwidth_gb_s: bandwidth.map(|bw| bw / 1e9),
                decode_vs_bound: (!probes.is_empty()).then(|| {
                    let bytes = (weight_bytes + d.kv_bytes_after_prefill) as f64;
                    let ratios: Vec<f64> = d
                        .step_times
                        .iter()
                        .zip(&d.step_starts)
                        .map(|(time, &at)| {
                            let bound = bytes / nearest(&probes, at).max(1.0);
                            time.as_secs_f64() / bound.max(1e-12)
                        })
                        .collect();
                    median(&ratios)
                }),
            };
            eprintln!(
                "context {context:>6} {:<24} prefill {:>9.1} ms  decode {:>7.2} ms/token",
                row.policy, row.prefill_ms, row.decode_ms_per_token
            );
            rows.push(row);
        }
    }
    let table = markdown(&name, &args.backend.to_string(), &rows);
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
        let series = configs
            .iter()
            .map(|settings| {
                let label = run_label(settings);
                let ms = args
                    .context
                    .iter()
                    .map(|&c| {
                        rows.iter()
                            .find(|r| r.context == c && r.spec == settings.spec)
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

/// `--kv-memory`'s value: bytes with an optional K, M, G or T suffix (powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    cake_models::load::parse_bytes(text)
        .ok_or_else(|| format!("{text:?} is not a size in bytes (e.g. 2G, 512M)"))
}

/// Most sequences a `--kv-memory` budget's batch is measured with.
const MAX_FITTED_BATCH: usize = 256;

/// `cake bench --batch` / `--kv-memory`: the batched-throughput tables.
fn throughput<B: Backend>(
    args: &Args,
    model: &Model<B>,
    name: &str,
    configs: &[Settings],
    steps: usize,
) -> Result<()> {
    use super::throughput::{Machine, markdown, measure, sequences_fitting};
    usage_ensure!(
        args.batch.iter().all(|&b| b > 0),
        "--batch sizes must be positive"
    );
    let machine = cake_core::host::is_flex::<B>().then(|| Machine::measure(PROBE_BYTES));
    if let Some(m) = machine {
        eprintln!(
            "read bandwidth {:.1} GB/s, matrix-product peak {:.1} G multiply-adds/s (f32), {:.1} G (int8, for --weights stored-int8)",
            m.bandwidth / 1e9,
            m.macs_per_s / 1e9,
            m.int8_macs_per_s / 1e9
        );
    }
    let c = model.config();
    let per_token = 2 * c.num_layers * c.num_kv_heads * c.head_dim * std::mem::size_of::<f32>();
    let available = cake_models::load::memory_budget()
        .ok()
        .flatten()
        .map(|(bytes, _)| bytes);
    // Whether `batch` full caches of `context` (+ the decoded tokens) fit in memory.
    let fits = |context: usize, batch: usize| {
        available.is_none_or(|a| (per_token * (context + steps + 2) * batch) as u64 <= a / 10 * 9)
    };
    let mut rows = Vec::new();
    let mut fitted = Vec::new();
    for &context in &args.context {
        let prompt = prompt_tokens(context, c.vocab_size);
        for settings in configs {
            let label = run_label(settings);
            for &batch in &args.batch {
                if !fits(context, batch) {
                    eprintln!(
                        "context {context:>6} {label:<24} batch {batch:>4}: skipped (its K/V might not fit in memory)"
                    );
                    continue;
                }
                let row = measure(
                    model, name, settings, &label, &prompt, batch, steps, machine,
                )?;
                eprintln!(
                    "context {context:>6} {label:<24} batch {batch:>4}: {:.2} ms/step, {:.1} tokens/s",
                    row.step_ms, row.tokens_per_s
                );
                rows.push(row);
            }
            if let Some(budget) = args.kv_memory {
                let one = measure(model, name, settings, &label, &prompt, 1, 1, None)?;
                let n = sequences_fitting(budget, one.kv_bytes_per_sequence, per_token, steps)
                    .min(MAX_FITTED_BATCH);
                let row = if n > 0 && fits(context, n) {
                    Some(measure(
                        model, name, settings, &label, &prompt, n, steps, machine,
                    )?)
                } else {
                    None
                };
                eprintln!(
                    "context {context:>6} {label:<24} {n} sequences fit in {budget} bytes of K/V{}",
                    row.as_ref().map_or(String::new(), |r| format!(
                        ": {:.1} tokens/s",
                        r.tokens_per_s
                    ))
                );
                fitted.push((context, settings, label, one.kv_bytes_per_sequence, n, row));
            }
        }
    }
    let mut table = if rows.is_empty() {
        String::new()
    } else {
        markdown(name, &rows)
    };
    if let Some(budget) = args.kv_memory {
        use std::fmt::Write as _;
        let _ = write!(
            table,
            "
K/V budget {:.2} GiB

| context | method | K/V MiB per sequence | sequences that fit | tokens/s at that batch | x full's sequences | x full's tokens/s |
|---:|---|---:|---:|---:|---:|---:|
",
            budget as f64 / (1u64 << 30) as f64
        );
        for (context, _, label, per_sequence, n, row) in &fitted {
            let full = fitted
                .iter()
                .find(|f| f.0 == *context && f.1.spec.method == Method::Full);
            let tps = row.as_ref().map(|r| r.tokens_per_s);
            let vs = |a: f64, b: f64| format!("{:.2}", a / b.max(1e-12));
            let _ = writeln!(
                table,
                "| {context} | {label} | {:.1} | {n} | {} | {} | {} |",
                *per_sequence as f64 / (1u64 << 20) as f64,
                tps.map_or("-".into(), |t| format!("{t:.1}")),
                full.map_or("-".into(), |f| vs(*n as f64, f.4 as f64)),
                full.and_then(|f| f.5.as_ref())
                    .zip(tps)
                    .map_or("-".into(), |(f, t)| vs(t, f.tokens_per_s)),
            );
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{table}");
    }
    if let Some(out) = &args.out {
        let key = (&args.context, &args.batch, args.kv_memory, steps);
        let dir = folder_for(out, &format!("batch-{name}"), &key)?;
        if let Some(first) = configs.first() {
            Manifest::new(first).write(&dir)?;
        }
        std::fs::write(dir.join("batch.json"), serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("cannot write into {}", dir.display()))?;
        std::fs::write(dir.join("batch.md"), &table)
            .with_context(|| format!("cannot write into {}", dir.display()))?;
        eprintln!("wrote {}", dir.join("batch.md").display());
    }
    Ok(())
}

/// The bandwidth of the probe taken nearest in time to `at` (`probes` is not empty).
fn nearest(probes: &[(f64, Instant)], at: Instant) -> f64 {
    let gap = |when: Instant| {
        if when > at { when - at } else { at - when }
    };
    probes
        .iter()
        .min_by_key(|&&(_, when)| gap(when))
        .map_or(0.0, |&(bandwidth, _)| bandwidth)
}

/// A configuration's row label: `full`, or the policy's label (`cake-c1024-w32`).
fn run_label(settings: &Settings) -> String {
    if settings.spec.keeps_all() {
        settings.spec.name()
    } else {
        settings.label()
    }
}

/// One generation without text (the prompt is random tokens): its timings and memory.
fn timed_run<B: Backend>(
    model: &Model<B>,
    name: &str,
    settings: &Settings,
    prompt: &[u32],
    config: &GenerationConfig,
    eos: &[u32],
) -> Result<GenerationOutput> {
    let compressor = settings.spec.compressor::<B>(name, model.num_layers())?;
    let mut run = Generation::new(model)
        .with_compressor(compressor)
        .with_config(config.clone())
        .with_eos(eos.to_vec());
    Ok(run.generate(prompt)?)
}

/// One method's greedy decoding after its prefill, stepped from outside so that several
/// methods' steps can interleave.
struct Decoder<'a, B: Backend> {
    label: String,
    spec: PolicySpec,
    run: Generation<'a, B, Compressor<B>>,
    /// Next-token logits.
    logits: Vec<f32>,
    /// Absolute position of the next token fed.
    position: usize,
    prefill_time: Duration,
    kv_bytes_peak_prefill: usize,
    kv_bytes_after_prefill: usize,
    /// Largest K/V bytes held after a decoding step (measured outside the step times).
    kv_bytes_peak_decode: usize,
    /// Wall time of each step: the forward of one token and reading back its logits.
    step_times: Vec<Duration>,
    /// When each step began.
    step_starts: Vec<Instant>,
}

impl<'a, B: Backend> Decoder<'a, B> {
    /// Prefills `prompt` with the method of `settings`.
    fn prefill(
        model: &'a Model<B>,
        name: &str,
        settings: &Settings,
        prompt: &[u32],
    ) -> Result<Self> {
        let compressor = settings.spec.compressor::<B>(name, model.num_layers())?;
        let mut run = Generation::new(model).with_compressor(compressor);
        let prefilled = run.prefill(prompt)?.clone();
        Ok(Self {
            label: run_label(settings),
            spec: settings.spec.clone(),
            kv_bytes_after_prefill: kv_bytes(run.caches()),
            kv_bytes_peak_decode: 0,
            run,
            logits: prefilled.logits,
            position: prefilled.prompt_len,
            prefill_time: prefilled.prefill_time,
            kv_bytes_peak_prefill: prefilled.kv_bytes_peak_prefill,
            step_times: Vec::new(),
            step_starts: Vec::new(),
        })
    }

    /// Feeds the greedy next token (EOS included: a benchmark decodes a fixed count).
    fn step(&mut self) -> Result<()> {
        let token = argmax(&self.logits);
        let start = Instant::now();
        self.logits = self.run.step(token, self.position)?;
        self.step_times.push(start.elapsed());
        self.step_starts.push(start);
        self.position += 1;
        self.kv_bytes_peak_decode = self.kv_bytes_peak_decode.max(kv_bytes(self.run.caches()));
        Ok(())
    }
}

/// The latency/memory table with ratios to the full cache at the same context, and each
/// decode figure next to its bytes-moved bound (weights + K/V held, at the measured
/// bandwidth).
pub fn markdown(model: &str, backend: &str, rows: &[BenchRow]) -> String {
    use std::fmt::Write as _;
    let mut md = format!(
        "model `{model}`, backend {backend}\n\n| context | method | prefill ms | prefill tok/s | prefill vs full | decode ms/token | bound ms | x bound | decode speed-up | bound speed-up | peak K/V MiB (prefill) | K/V MiB after prefill | peak K/V MiB (decoding) | K/V vs full |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let or_dash =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    for row in rows {
        let full = rows
            .iter()
            .find(|r| r.context == row.context && r.spec.keeps_all());
        let speedup = row.decode_speedup;
        let bound_speedup = full
            .and_then(|f| f.decode_bound_ms.zip(row.decode_bound_ms))
            .map(|(f, r)| f / r.max(1e-9));
        let memory = full.map_or(1.0, |f| {
            row.kv_bytes_after_prefill as f64 / f.kv_bytes_after_prefill.max(1) as f64
        });
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.0} | {:+.1}% | {:.2} | {} | {} | {:.2}x | {} | {:.2} | {:.2} | {:.2} | {:.1}% |",
            row.context,
            row.policy,
            row.prefill_ms,
            row.prefill_tokens_per_s,
            (row.prefill_vs_full - 1.0) * 100.0,
            row.decode_ms_per_token,
            or_dash(row.decode_bound_ms, 2),
            or_dash(row.decode_vs_bound, 2),
            speedup,
            bound_speedup.map_or("-".to_string(), |b| format!("{b:.2}x")),
            row.kv_bytes_peak_prefill as f64 / 1048576.0,
            row.kv_bytes_after_prefill as f64 / 1048576.0,
            row.kv_bytes_peak_decode as f64 / 1048576.0,
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

/// The order in which round `round` prefills `n` configurations: the full cache (0) first,
/// the others rotating from round to round. No configuration runs twice in a row across a
/// round boundary, so one burst of another tenant's load can slow at most one of a
/// method's rounds relative to the full cache (a plain rotation of two methods runs
/// full, m | m, full | full, m, and a burst over `m | m` skews two of three rounds).
fn prefill_order(round: usize, n: usize) -> impl Iterator<Item = usize> {
    let others = n.saturating_sub(1);
    (0..n.min(1)).chain((0..others).map(move |k| 1 + (round + k) % others))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full cache opens every round, the others rotate, and no configuration runs
    /// twice in a row across rounds.
    #[test]
    fn prefill_rounds_open_with_the_full_cache_and_rotate_the_rest() {
        let order = |n: usize, rounds: usize| -> Vec<usize> {
            (0..rounds).flat_map(|r| prefill_order(r, n)).collect()
        };
        assert_eq!(order(2, 3), [0, 1, 0, 1, 0, 1]);
        assert_eq!(order(3, 3), [0, 1, 2, 0, 2, 1, 0, 1, 2]);
        assert_eq!(order(4, 2), [0, 1, 2, 3, 0, 2, 3, 1]);
        assert_eq!(order(1, 2), [0, 0]);
        assert_eq!(order(0, 2), Vec::<usize>::new());
        for n in 2..6 {
            let seq = order(n, 7);
            assert!(seq.windows(2).all(|w| w[0] != w[1]), "{n}: {seq:?}");
            for r in 0..7 {
                let mut round: Vec<usize> = prefill_order(r, n).collect();
                round.sort();
                assert_eq!(round, (0..n).collect::<Vec<_>>());
            }
        }
    }

    /// The table's ratios to the full cache take the full cache's row by its spec: a
    /// policy's row labelled `full` is not it, and the full cache's row counts whatever
    /// its label.
    #[test]
    fn the_full_cache_row_is_found_by_its_spec_not_its_label() {
        let row = |policy: &str, method: Method, kv: usize, bound_ms: f64| BenchRow {
            context: 64,
            policy: policy.into(),
            spec: PolicySpec::new(method),
            prefill_ms: 1.0,
            prefill_tokens_per_s: 64e3,
            prefill_vs_full: 1.0,
            decode_ms_per_token: 1.0,
            decode_speedup: 1.0,
            kv_bytes_peak_prefill: kv,
            kv_bytes_after_prefill: kv,
            kv_bytes_peak_decode: kv,
            decode_bound_ms: Some(bound_ms),
            read_bandwidth_gb_s: None,
            decode_vs_bound: None,
        };
        let rows = [
            row("full", Method::Cake, 1024, 0.5),
            row("reference", Method::Full, 4096, 2.0),
        ];
        let md = markdown("m", "cpu", &rows);
        let line = |label: &str| {
            let start = format!("| 64 | {label} |");
            md.lines()
                .find(|l| l.starts_with(&start))
                .unwrap()
                .to_string()
        };
        // K/V vs full, last column; bound speed-up, the tenth.
        let cells = |label: &str| -> Vec<String> {
            line(label)
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        };
        assert_eq!(cells("full")[14], "25.0%", "{md}");
        assert_eq!(cells("full")[10], "4.00x", "{md}");
        assert_eq!(cells("reference")[14], "100.0%", "{md}");
        assert_eq!(cells("reference")[10], "1.00x", "{md}");
    }

    /// Each step takes the probe nearest in time, before or after it.
    #[test]
    fn a_step_takes_the_nearest_probe() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let probes = [(1.0, ms(10)), (2.0, ms(20)), (3.0, ms(30))];
        assert_eq!(nearest(&probes, t0), 1.0);
        assert_eq!(nearest(&probes, ms(14)), 1.0);
        assert_eq!(nearest(&probes, ms(16)), 2.0);
        assert_eq!(nearest(&probes, ms(26)), 3.0);
        assert_eq!(nearest(&probes, ms(500)), 3.0);
    }
}
