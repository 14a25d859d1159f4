//! `cake eval`: scores of a prediction folder, or of a folder of runs side by side.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cake_longbench::eval::{
    DatasetScore, EvalResult, evaluate_dir, read_predictions, score_record,
};
use cake_longbench::registry;

use crate::exit::usage_ensure;
use crate::plots::{NeedleHeatmap, ScoreVsCacheSize, render};

/// Arguments of `cake eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A folder of `<dataset>.jsonl` predictions, or a folder of such run folders (as
    /// `cake pred` writes them)
    pub dir: PathBuf,
    /// LongBench-E: scores per length bucket (0-4k, 4-8k, 8k+)
    #[arg(long)]
    pub e: bool,
}

/// One scored run folder.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunScore {
    /// The run folder.
    pub dir: PathBuf,
    /// Method label.
    pub policy: String,
    /// Cache size C (`None` for the full cache or ratio runs).
    pub cache_size: Option<usize>,
    /// Per-dataset scores.
    pub scores: BTreeMap<String, DatasetScore>,
    /// Mean over the datasets present (plain scores only).
    pub average: Option<f64>,
}

/// Runs `cake eval`.
pub fn run(args: Args) -> Result<()> {
    usage_ensure!(
        args.dir.is_dir(),
        "{} is not a folder: give the --out folder of `cake pred`",
        args.dir.display()
    );
    let runs = evaluate_tree(&args.dir, args.e)?;
    usage_ensure!(
        !runs.is_empty(),
        "no prediction files (<dataset>.jsonl) in {} or its sub-folders",
        args.dir.display()
    );
    print!("{}", summary_markdown(&runs));
    Ok(())
}

/// Evaluates `dir` (if it holds predictions) and each sub-folder that does; writes
/// `result.json` + `result.md` into each run folder and, for several runs, `summary.md`,
/// `summary.json` and plots into `dir`.
pub fn evaluate_tree(dir: &Path, longbench_e: bool) -> Result<Vec<RunScore>> {
    let mut folders = vec![dir.to_path_buf()];
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    folders.extend(subdirs);
    let mut runs = Vec::new();
    for folder in folders {
        if !has_predictions(&folder) {
            continue;
        }
        let result = evaluate_dir(&folder, longbench_e)
            .with_context(|| format!("cannot evaluate {}", folder.display()))?;
        result.write_result_json(&folder.join("result.json"))?;
        std::fs::write(folder.join("result.md"), result_markdown(&result))
            .with_context(|| format!("cannot write {}", folder.join("result.md").display()))?;
        let (policy, cache_size) = run_identity(&folder);
        let plain: Vec<f64> = result
            .scores
            .values()
            .filter_map(|s| match s {
                DatasetScore::Plain(v) => Some(*v),
                DatasetScore::Buckets(_) => None,
            })
            .collect();
        let average = (!plain.is_empty())
            .then(|| (plain.iter().sum::<f64>() / plain.len() as f64 * 100.0).round() / 100.0);
        runs.push(RunScore {
            dir: folder,
            policy,
            cache_size,
            scores: result.scores,
            average,
        });
    }
    if runs.len() > 1 {
        std::fs::write(dir.join("summary.md"), summary_markdown(&runs))
            .with_context(|| format!("cannot write {}", dir.join("summary.md").display()))?;
        std::fs::write(
            dir.join("summary.json"),
            serde_json::to_string_pretty(&runs)?,
        )?;
        plot_runs(dir, &runs)?;
    }
    Ok(runs)
}

fn has_predictions(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(|e| e.ok()).any(|e| {
            let path = e.path();
            path.extension().is_some_and(|x| x == "jsonl")
                && path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(|s| registry::lookup(s).is_ok())
        })
    })
}

/// (policy label, cache size) from the run's `run.json`, else from the folder name.
fn run_identity(dir: &Path) -> (String, Option<usize>) {
    let manifest: Option<serde_json::Value> = std::fs::read_to_string(dir.join("run.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(config) = manifest.as_ref().map(|m| &m["config"]) else {
        return (name, None);
    };
    let policy = match (config["allocator"].as_str(), config["scorer"].as_str()) {
        (None, None) => config["policy"].as_str().unwrap_or("?").to_string(),
        (a, s) => format!(
            "{}+{}",
            a.unwrap_or(config["policy"].as_str().unwrap_or("?")),
            s.unwrap_or("default")
        ),
    };
    let cache_size = if policy == "full" || !config["cache"]["ratio"].is_null() {
        None
    } else {
        config["cache"]["cache_size"].as_u64().map(|c| c as usize)
    };
    (policy, cache_size)
}

fn fmt_score(score: &DatasetScore) -> String {
    match score {
        DatasetScore::Plain(v) => format!("{v:.2}"),
        DatasetScore::Buckets(b) => b
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.map_or("-".into(), |v| format!("{v:.2}"))))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// One run's scores as a Markdown table.
pub fn result_markdown(result: &EvalResult) -> String {
    let mut md = String::from("| dataset | predictions | score |\n|---|---:|---:|\n");
    for (name, score) in &result.scores {
        let count = result.counts.get(name).copied().unwrap_or(0);
        let _ = writeln!(md, "| {name} | {count} | {} |", fmt_score(score));
    }
    if let Some(avg) = &result.english16_average {
        let _ = writeln!(md, "| **English-16 average** | | {} |", fmt_score(avg));
    }
    md
}

/// Policies x cache sizes, cells = average score over the datasets of each run.
pub fn summary_markdown(runs: &[RunScore]) -> String {
    let mut sizes: Vec<usize> = runs.iter().filter_map(|r| r.cache_size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut policies: Vec<&str> = Vec::new();
    for run in runs {
        if !policies.contains(&run.policy.as_str()) {
            policies.push(&run.policy);
        }
    }
    let mut md = String::from("| policy |");
    if sizes.is_empty() {
        md.push_str(" average |\n|---|---:|\n");
    } else {
        for c in &sizes {
            let _ = write!(md, " C={c} |");
        }
        md.push_str("\n|---|");
        md.push_str(&"---:|".repeat(sizes.len()));
        md.push('\n');
    }
    for policy in policies {
        let _ = write!(md, "| {policy} |");
        let mine: Vec<&RunScore> = runs.iter().filter(|r| r.policy == policy).collect();
        let cell = |r: Option<&&RunScore>| {
            r.and_then(|r| r.average)
                .map_or("-".to_string(), |a| format!("{a:.2}"))
        };
        if sizes.is_empty() {
            let _ = write!(md, " {} |", cell(mine.first()));
        } else {
            for c in &sizes {
                // A run without a cache size (the full cache) fills every column.
                let run = mine
                    .iter()
                    .find(|r| r.cache_size == Some(*c))
                    .or_else(|| mine.iter().find(|r| r.cache_size.is_none()));
                let _ = write!(md, " {} |", cell(run));
            }
        }
        md.push('\n');
    }
    md
}

/// Score vs cache size per policy, and a needle heatmap per run with depth-tagged records.
fn plot_runs(dir: &Path, runs: &[RunScore]) -> Result<()> {
    let mut sizes: Vec<usize> = runs.iter().filter_map(|r| r.cache_size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    if !sizes.is_empty() {
        let mut series: Vec<(String, Vec<Option<f64>>)> = Vec::new();
        let mut full = None;
        for run in runs {
            match run.cache_size {
                None => full = full.or(run.average),
                Some(c) => {
                    let i = sizes.iter().position(|&s| s == c).unwrap_or(0);
                    if let Some(entry) = series.iter_mut().find(|(p, _)| *p == run.policy) {
                        entry.1[i] = run.average;
                    } else {
                        let mut v = vec![None; sizes.len()];
                        v[i] = run.average;
                        series.push((run.policy.clone(), v));
                    }
                }
            }
        }
        let chart = ScoreVsCacheSize {
            title: "average score vs cache size".into(),
            cache_sizes: sizes,
            series,
            full,
        };
        render(&chart, &dir.join("score_vs_cache_size"))?;
    }
    for run in runs {
        if let Some(heat) = needle_heatmap(&run.dir, &run.policy, run.cache_size)? {
            render(&heat, &run.dir.join("needle_heatmap"))?;
        }
    }
    Ok(())
}

/// Depth x length heatmap of the depth-tagged retrieval predictions of a run folder.
pub fn needle_heatmap(
    dir: &Path,
    policy: &str,
    cache_size: Option<usize>,
) -> Result<Option<NeedleHeatmap>> {
    // (length bucket, depth) -> scores
    let mut cells: BTreeMap<(usize, i64), Vec<f64>> = BTreeMap::new();
    for task in [
        "synth_passkey",
        "synth_multikey",
        "synth_multivalue",
        "synth_kv",
    ] {
        let path = dir.join(format!("{task}.jsonl"));
        if !path.exists() {
            continue;
        }
        let spec = registry::lookup(task)?;
        for line in read_predictions(&path)? {
            let Some(depth) = line.depth else { continue };
            let score = score_record(spec, &line.pred, &line.answers, line.all_classes.as_deref())?;
            // Nominal length: round to the nearest 256 tokens.
            let length = ((line.length as f64 / 256.0).round() as usize).max(1) * 256;
            cells
                .entry((length, (depth * 100.0).round() as i64))
                .or_default()
                .push(score * 100.0);
        }
    }
    if cells.is_empty() {
        return Ok(None);
    }
    let mut lengths: Vec<usize> = cells.keys().map(|k| k.0).collect();
    lengths.dedup();
    lengths.sort_unstable();
    lengths.dedup();
    let mut depths: Vec<i64> = cells.keys().map(|k| k.1).collect();
    depths.sort_unstable();
    depths.dedup();
    let scores = depths
        .iter()
        .map(|&d| {
            lengths
                .iter()
                .map(|&l| {
                    cells
                        .get(&(l, d))
                        .map(|v| v.iter().sum::<f64>() / v.len() as f64)
                })
                .collect()
        })
        .collect();
    let title = match cache_size {
        Some(c) => format!("needle retrieval: {policy}, C={c}"),
        None => format!("needle retrieval: {policy}"),
    };
    Ok(Some(NeedleHeatmap {
        title,
        lengths,
        depths: depths.iter().map(|&d| d as f64).collect(),
        scores,
    }))
}
