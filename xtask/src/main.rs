//! `cargo xtask reproduce [--quick]`: builds the `cake` binary, writes the offline
//! synthetic suite, runs every policy at several cache sizes (one prefill per prompt),
//! scores them, benchmarks latency and memory, and writes `results/REPORT.md` with the
//! tables and plots.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "cake-rs project chores")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Reproduce the comparison: accuracy vs cache size per policy, needle heatmap, latency
    /// and memory; writes results/REPORT.md.
    Reproduce(Reproduce),
}

#[derive(Debug, clap::Args)]
struct Reproduce {
    /// Fewer samples, lengths and cache sizes (about 20 minutes on 2 cores)
    #[arg(long)]
    quick: bool,
    /// Also predict real LongBench JSONL files from this folder
    #[arg(long)]
    longbench: Option<PathBuf>,
    /// Output folder
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Accuracy model (must retrieve; SmolLM2-135M cannot, even with the full cache)
    #[arg(long, default_value = "qwen2.5-coder-0.5b")]
    accuracy_model: String,
    /// Latency model
    #[arg(long, default_value = "smollm2-135m")]
    latency_model: String,
    /// Weights of the accuracy model: f32 (the tables so far) or stored (packed as in
    /// the file); for every `cake pred`, `cake tune` and `cake fit` (as `CAKE_WEIGHTS`)
    #[arg(long, default_value = "f32")]
    weights: String,
    /// Predict only shard I of N of every prediction step (`cake pred --shard I/N`), then
    /// stop: commit the prediction files, run the other shards (any order, any machine),
    /// then run once without --shard to merge them (`cake eval`) and write the report.
    /// Temperatures and fitted budgets are computed by the first shard to need them and
    /// reused from `<out>/tune` and `<out>/fit` by the others
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
}

/// The sizes of a run.
struct Plan {
    policies: &'static str,
    cache_sizes: &'static str,
    lengths: &'static str,
    heatmap_lengths: &'static str,
    depths: &'static str,
    tasks: &'static str,
    heatmap_tasks: &'static str,
    samples_per_task: usize,
    bench_contexts: &'static str,
    /// Calibration records per task (suite seed 1, disjoint from the evaluation's seed 0)
    /// for `cake tune` and `cake fit`; 0 skips tuned and static CAKE.
    calibration_samples: usize,
    calibration_lengths: &'static str,
    /// Per-head budget modes CAKE also runs with (`--head-budget-modes`), each its own row
    /// (`cake (heads adakv)`); empty skips them.
    head_budget_modes: &'static str,
    /// Cache sizes at which every policy also runs with the question after compression
    /// (kvpress's protocol, `--question after-compression`); empty skips it.
    question_cache_sizes: &'static str,
    /// Sink ablation grid N tried on the calibration records (`cake tune --sink`, CAKE at
    /// the default temperatures); the best N > 0 there runs on the suite as its own row
    /// (`cake (sink N)`). Empty skips it.
    sink_grid: &'static str,
    /// Cache sizes of the sink choice on calibration records.
    sink_cache_sizes: &'static str,
    /// Cache sizes at which every policy's K/V memory (after the prefill and its peak
    /// while decoding) is measured on the accuracy model at the longest length; empty
    /// skips it.
    memory_cache_sizes: &'static str,
}

/// About 20 minutes on 2 cores: 8 tasks x 6 records at 1K tokens plus 10 needle records,
/// every policy at C = 128 (CAKE vs SnapKV and PyramidKV with intervals). Each further C
/// adds about 13 minutes (Qwen2.5-Coder-0.5B decodes about 8 tokens/s in f32 on 2 cores).
const QUICK: Plan = Plan {
    policies: "full,streaming,h2o,tova,snapkv,pyramidkv,cake",
    cache_sizes: "128",
    lengths: "1024",
    heatmap_lengths: "1024,1536",
    depths: "0,25,50,75,100",
    tasks: ALL_TASKS,
    heatmap_tasks: "synth_passkey",
    samples_per_task: 6,
    bench_contexts: "512,2048",
    calibration_samples: 0,
    calibration_lengths: "1024",
    head_budget_modes: "",
    question_cache_sizes: "",
    sink_grid: "",
    sink_cache_sizes: "",
    memory_cache_sizes: "",
};

/// The study: 8 tasks x 3 lengths x 10 records (240) plus 15 needle records, five cache
/// sizes, every policy, and CAKE's variants chosen or fitted on calibration records
/// (tuned temperatures, static budgets, the sink ablation) and its per-head modes, all in
/// one sweep per record; kvpress's question protocol at C = 128 and 512.
const FULL: Plan = Plan {
    policies: "full,streaming,h2o,tova,snapkv,pyramidkv,cake",
    cache_sizes: "64,128,256,512,1024",
    lengths: "2048,4096,8192",
    heatmap_lengths: "2048,4096,8192",
    depths: "0,25,50,75,100",
    tasks: ALL_TASKS,
    heatmap_tasks: "synth_passkey",
    samples_per_task: 10,
    bench_contexts: "512,2048,4096,8192",
    calibration_samples: 2,
    calibration_lengths: "2048,4096",
    head_budget_modes: "preference,adakv",
    question_cache_sizes: "128,512",
    sink_grid: "0,4,16,64",
    sink_cache_sizes: "64,128,256",
    memory_cache_sizes: "128,1024",
};

/// Every synthetic task type.
const ALL_TASKS: &str = "synth_passkey,synth_multikey,synth_multivalue,synth_kv,synth_passage_retrieval,synth_passage_count,synth_vartrack,synth_fewshot";

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Reproduce(args) => reproduce(&args),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Runs a command, echoing it; fails with its status.
fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("\n$ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn reproduce(args: &Reproduce) -> Result<()> {
    let plan = if args.quick { &QUICK } else { &FULL };
    let root = workspace_root();
    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        root.join(&args.out)
    };
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create {}: choose a writable --out", out.display()))?;
    let started = Instant::now();
    run(Command::new(env!("CARGO")).current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "cake-cli",
    ]))?;
    let cake = root.join("target/release/cake");
    let cake = || {
        let mut c = Command::new(&cake);
        c.current_dir(&root);
        c
    };
    // `cake pred` (and tune/fit) on the accuracy model, in the chosen weights, on this
    // shard.
    let predict = |command: &str| {
        let mut c = cake();
        c.args([command, "--model", &args.accuracy_model])
            .env("CAKE_WEIGHTS", &args.weights);
        if command == "pred"
            && let Some(shard) = &args.shard
        {
            c.args(["--shard", shard]);
        }
        c
    };
    let suite = out.join("suite");
    let heat_suite = out.join("suite-heatmap");
    let pred = out.join("pred");
    // The needle grid has datasets of the same names as the suite (synth_passkey): its
    // predictions live in a tree of their own.
    let heat_pred = out.join("pred-heatmap");
    let bench = out.join("bench");
    let samples = plan.samples_per_task.to_string();

    // 1. The offline synthetic suite, measured with the accuracy model's tokenizer.
    run(cake()
        .args(["suite", "--model", &args.accuracy_model, "--out"])
        .arg(&suite)
        .args([
            "--tasks",
            plan.tasks,
            "--lengths",
            plan.lengths,
            "--depths",
            "50",
        ])
        .args(["--samples", &samples]))?;
    run(cake()
        .args(["suite", "--model", &args.accuracy_model, "--out"])
        .arg(&heat_suite)
        .args([
            "--tasks",
            plan.heatmap_tasks,
            "--lengths",
            plan.heatmap_lengths,
        ])
        .args(["--depths", plan.depths, "--samples", "1"]))?;

    // 2. Calibration (seed 1: never the evaluation's records), once for all shards:
    // CAKE's temperatures tuned on it, static budgets fitted on it, and the sink ablation's
    // N chosen on it. Each becomes a variant of the main sweep below.
    let t = Instant::now();
    let mut variants: Vec<(&str, String)> = Vec::new();
    if plan.calibration_samples > 0 {
        let calib = out.join("calib");
        let tune = out.join("tune");
        let fit = out.join("fit");
        run(cake()
            .args(["suite", "--model", &args.accuracy_model, "--out"])
            .arg(&calib)
            .args(["--tasks", plan.tasks, "--lengths", plan.calibration_lengths])
            .args(["--depths", "25,75", "--seed", "1"])
            .args(["--samples", &plan.calibration_samples.to_string()]))?;
        if !tune.join("taus.json").exists() {
            run(predict("tune")
                .arg("--data-dir")
                .arg(&calib)
                .args(["--cache-sizes", plan.cache_sizes, "--window", "32"])
                .arg("--eval-data")
                .arg(&suite)
                .arg("--out")
                .arg(&tune))?;
        }
        variants.push((
            "tuned",
            format!(
                "tau_file = {:?}\n",
                setting_path(&root, &tune.join("taus.json"))?
            ),
        ));
        if !fit.join("score_function.json").exists() {
            run(predict("fit")
                .arg("--data-dir")
                .arg(&calib)
                .args(["--max-samples", "4", "--out"])
                .arg(&fit))?;
        }
        variants.push((
            "static",
            format!(
                "allocator = \"static\"\nscore_fn = {:?}\n",
                setting_path(&root, &fit.join("score_function.json"))?
            ),
        ));
        if !plan.sink_grid.is_empty() {
            let sink = out.join("sink");
            if !sink.join("tune.json").exists() {
                run(predict("tune")
                    .arg("--data-dir")
                    .arg(&calib)
                    .args(["--cache-sizes", plan.sink_cache_sizes, "--window", "32"])
                    .args(["--tau1", "1", "--tau2", "1", "--sink", plan.sink_grid])
                    .arg("--eval-data")
                    .arg(&suite)
                    .arg("--out")
                    .arg(&sink))?;
            }
            let n = chosen_sink(&sink.join("tune.json"))?;
            eprintln!("sink ablation: N = {n} (the best calibration average over C)");
            variants.push(("sink", format!("sink = {n}\n")));
        }
    }
    for mode in plan.head_budget_modes.split(',').filter(|m| !m.is_empty()) {
        variants.push((mode, format!("head_budgets = {mode:?}\n")));
    }
    // Each variant is a settings file that joins the main sweep (`cake pred --variants`):
    // it shares every prompt's prefill with the plain policies.
    let variant_dir = out.join("variants");
    let mut variant_files = Vec::new();
    for (name, text) in &variants {
        std::fs::create_dir_all(&variant_dir)
            .with_context(|| format!("cannot create {}", variant_dir.display()))?;
        let path = variant_dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        variant_files.push(path_text(&path)?);
    }

    // 3. Predictions: every policy x cache size and every variant, one prefill per prompt;
    // the needle grid; the question read after compression.
    for (data, tree, with_variants) in [(&suite, &pred, true), (&heat_suite, &heat_pred, false)] {
        merge_shards(&cake, tree, args.shard.is_some())?;
        let mut command = predict("pred");
        command
            .arg("--data-dir")
            .arg(data)
            .args([
                "--policies",
                plan.policies,
                "--cache-sizes",
                plan.cache_sizes,
            ])
            .args(["--window", "32", "--out"])
            .arg(tree);
        if with_variants && !variant_files.is_empty() {
            command.args(["--variants", &variant_files.join(",")]);
        }
        run(&mut command)?;
    }
    if let Some(longbench) = &args.longbench {
        run(predict("pred")
            .arg("--data-dir")
            .arg(longbench)
            .args([
                "--policies",
                plan.policies,
                "--cache-sizes",
                plan.cache_sizes,
            ])
            .args(["--max-samples", &samples, "--out"])
            .arg(out.join("pred-longbench")))?;
    }
    if !plan.question_cache_sizes.is_empty() {
        run(predict("pred")
            .arg("--data-dir")
            .arg(&suite)
            .args([
                "--policies",
                plan.policies,
                "--cache-sizes",
                plan.question_cache_sizes,
            ])
            .args(["--question", "after-compression", "--window", "32", "--out"])
            .arg(&pred))?;
    }
    let pred_seconds = t.elapsed().as_secs_f64();
    if let Some(shard) = &args.shard {
        eprintln!(
            "\nshard {shard} done in {pred_seconds:.0} s: commit {}, run the other shards, then run without --shard to merge them and write the report",
            out.display()
        );
        return Ok(());
    }

    // 3. Scores, the comparison table and plots.
    run(cake().arg("eval").arg(&pred))?;
    run(cake().arg("eval").arg(&heat_pred))?;
    if args.longbench.is_some() {
        run(cake().arg("eval").arg(out.join("pred-longbench")))?;
    }

    // 4. Latency and memory on the latency model.
    run(cake()
        .args([
            "bench",
            "--model",
            &args.latency_model,
            "--context",
            plan.bench_contexts,
        ])
        .args(["--policies", "cake", "--cache-size", "256", "--out"])
        .arg(&bench))?;
    // 4b. Every policy's K/V memory on the accuracy model at the longest length: after
    // the prefill and its peak while decoding (equal memory: C x L tokens per KV head).
    let longest = plan.lengths.rsplit(',').next().unwrap_or(plan.lengths);
    for c in plan.memory_cache_sizes.split(',').filter(|c| !c.is_empty()) {
        run(predict("bench")
            .args(["--context", longest, "--policies", plan.policies])
            .args(["--cache-size", c, "--window", "32", "--decode-steps", "16"])
            .args(["--prefill-rounds", "1", "--out"])
            .arg(out.join(format!("memory-c{c}"))))?;
    }

    write_report(
        &out,
        args,
        plan,
        pred_seconds,
        started.elapsed().as_secs_f64(),
    )
}

/// Before an unsharded prediction step into `tree`: when earlier `--shard` runs left
/// shard files there, `cake eval` merges them into whole prediction files (which the
/// unsharded `cake pred` then finds done), failing with the missing shard's name when a
/// set is incomplete. Sharded runs leave the files alone.
fn merge_shards(cake: &dyn Fn() -> Command, tree: &Path, sharded: bool) -> Result<()> {
    let has_shards = std::fs::read_dir(tree)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .any(|e| e.path().join("shards").is_dir())
        })
        .unwrap_or(false);
    if sharded || !has_shards {
        return Ok(());
    }
    run(cake().arg("eval").arg(tree))
        .context("the shards of an earlier --shard run do not merge: finish every shard first")
}

/// The sink ablation's N, chosen on calibration records only: of the grid's N > 0, the one
/// whose best calibration average (over the temperatures, here one point), averaged over
/// the cache sizes, is highest; ties go to the smallest N. Reads `cake tune`'s `tune.json`.
fn chosen_sink(tune_json: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(tune_json)
        .with_context(|| format!("cannot read {}", tune_json.display()))?;
    let report: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not cake tune's JSON", tune_json.display()))?;
    let points = report
        .get("points")
        .and_then(|p| p.as_array())
        .with_context(|| format!("{} has no `points`", tune_json.display()))?;
    // (sink, cache size) -> best average.
    let mut best: std::collections::BTreeMap<(u64, u64), f64> = Default::default();
    for p in points {
        let (Some(n), Some(c), Some(avg)) = (
            p.get("sink").and_then(|v| v.as_u64()),
            p.get("cache_size").and_then(|v| v.as_u64()),
            p.get("average").and_then(|v| v.as_f64()),
        ) else {
            continue;
        };
        let cell = best.entry((n, c)).or_insert(f64::NEG_INFINITY);
        *cell = cell.max(avg);
    }
    let mut per_sink: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    for ((n, _), avg) in best {
        per_sink.entry(n).or_default().push(avg);
    }
    per_sink
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, v)| (n, v.iter().sum::<f64>() / v.len() as f64))
        .fold(None, |acc: Option<(u64, f64)>, (n, mean)| match acc {
            Some((_, m)) if m >= mean => acc,
            _ => Some((n, mean)),
        })
        .map(|(n, _)| n as usize)
        .with_context(|| format!("{} scores no sink N > 0", tune_json.display()))
}

/// A file named in a setting (`tau_file`, `score_fn`): relative to the workspace root,
/// where every `cake` command runs, when it is inside it. The setting is part of a run's
/// identity (its folder's hash), so a checkout elsewhere finds the same folders.
fn setting_path(root: &Path, path: &Path) -> Result<String> {
    path_text(path.strip_prefix(root).unwrap_or(path))
}

/// A path as UTF-8 text (for settings files and arguments).
fn path_text(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("{} is not UTF-8: choose another --out", path.display()))
}

/// First file named `name` under `dir` (one level of sub-folders).
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    let direct = dir.join(name);
    if direct.exists() {
        return Some(direct);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join(name)))
        .filter(|p| p.exists())
        .collect();
    entries.sort();
    entries.into_iter().next()
}

fn write_report(
    out: &Path,
    args: &Reproduce,
    plan: &Plan,
    pred_seconds: f64,
    total_seconds: f64,
) -> Result<()> {
    let pred = out.join("pred");
    let mut md = String::from("# cake-rs reproduction report\n\n");
    let _ = writeln!(
        md,
        "Mode: {}. Accuracy model: `{}` (weights: {}); latency model: `{}`. Synthetic suite (tasks {}, lengths {} tokens), window 32. Predictions took {:.0} s (prefill once per prompt for all configurations); the whole run {:.0} s.\n",
        if args.quick { "quick" } else { "full" },
        args.accuracy_model,
        args.weights,
        args.latency_model,
        plan.tasks,
        plan.lengths,
        pred_seconds,
        total_seconds
    );
    md.push_str(
        "## Average score on the synthetic suite (rows: policies, columns: cache size C)\n\n",
    );
    let summary = std::fs::read_to_string(pred.join("summary.md"))
        .with_context(|| format!("missing {}", pred.join("summary.md").display()))?;
    md.push_str(&summary);
    md.push_str("\n![score vs cache size](pred/score_vs_cache_size.svg)\n\n");
    if args.longbench.is_some()
        && let Ok(lb) = std::fs::read_to_string(out.join("pred-longbench/summary.md"))
    {
        md.push_str("## LongBench (given data)\n\n");
        md.push_str(&lb);
        md.push('\n');
    }
    if let Ok(tuned) = std::fs::read_to_string(out.join("tune/tune.md")) {
        md.push_str("## Tuned temperatures (calibration suite, seed 1)\n\n");
        md.push_str(
            "`cake (tuned taus)` in the tables above runs CAKE with these; `cake` with the published ones or the 1.0/1.0 fallback. `static+cake` uses budgets fitted by `cake fit` (`fit/fit.md`).\n\n",
        );
        md.push_str(&tuned);
        md.push('\n');
    }
    md.push_str("## Needle retrieval heatmaps (depth x length)\n\n");
    if let Ok(grid) = std::fs::read_to_string(out.join("pred-heatmap/summary.md")) {
        md.push_str("Passkey retrieval over the depth x length grid (`pred-heatmap/`):\n\n");
        md.push_str(&grid);
        md.push('\n');
    }
    let mut heatmaps: Vec<PathBuf> = std::fs::read_dir(out.join("pred-heatmap"))?
        .filter_map(|e| e.ok().map(|e| e.path().join("needle_heatmap.svg")))
        .filter(|p| p.exists())
        .collect();
    heatmaps.sort();
    for map in heatmaps {
        let rel = map.strip_prefix(out).unwrap_or(&map);
        let _ = writeln!(md, "![{}]({})\n", rel.display(), rel.display());
    }
    md.push_str("## Latency and K/V memory\n\n");
    match find(&out.join("bench"), "bench.md") {
        Some(path) => {
            md.push_str(&std::fs::read_to_string(&path)?);
            let plot = path.with_file_name("decode_latency.svg");
            let rel = plot.strip_prefix(out).unwrap_or(&plot);
            let _ = writeln!(md, "\n![decode latency]({})", rel.display());
        }
        None => md.push_str("(no bench results)\n"),
    }
    for c in plan.memory_cache_sizes.split(',').filter(|c| !c.is_empty()) {
        if let Some(path) = find(&out.join(format!("memory-c{c}")), "bench.md") {
            let _ = writeln!(
                md,
                "\n### K/V memory of every policy at C = {c} (`{}`, {} tokens)\n",
                args.accuracy_model,
                plan.lengths.rsplit(',').next().unwrap_or(plan.lengths)
            );
            md.push_str(&std::fs::read_to_string(&path)?);
        }
    }
    let path = out.join("REPORT.md");
    std::fs::write(&path, &md).with_context(|| format!("cannot write {}", path.display()))?;
    println!("{md}");
    eprintln!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sink_is_the_best_n_above_zero_averaged_over_cache_sizes() {
        let dir = std::env::temp_dir().join(format!("xtask-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tune.json");
        // N = 0 is best everywhere but is the paper's rule, not an ablation; N = 16 wins
        // C = 64 by 10 and loses C = 128 by 4 to N = 4; the mean decides (16: 35, 4: 32).
        // A point without an average (no records scored) is skipped.
        let point = |n: u64, c: u64, avg: Option<f64>| serde_json::json!({"sink": n, "cache_size": c, "average": avg, "tau1": 1.0});
        let points = vec![
            point(0, 64, Some(90.0)),
            point(0, 128, Some(90.0)),
            point(4, 64, Some(20.0)),
            point(4, 128, Some(44.0)),
            point(16, 64, Some(30.0)),
            point(16, 128, Some(40.0)),
            point(64, 64, None),
        ];
        std::fs::write(&file, serde_json::json!({ "points": points }).to_string()).unwrap();
        assert_eq!(chosen_sink(&file).unwrap(), 16);
        // Equal means: the smaller N.
        let tie = vec![point(4, 64, Some(30.0)), point(16, 64, Some(30.0))];
        std::fs::write(&file, serde_json::json!({ "points": tie }).to_string()).unwrap();
        assert_eq!(chosen_sink(&file).unwrap(), 4);
        // Only N = 0 scored: an error that names the file.
        let zero = vec![point(0, 64, Some(30.0))];
        std::fs::write(&file, serde_json::json!({ "points": zero }).to_string()).unwrap();
        let err = chosen_sink(&file).unwrap_err().to_string();
        assert!(err.contains("tune.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
