//! `cake eval`: scores of a prediction folder, or of a folder of runs side by side.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cake_core::{Method, PolicySpec};
use cake_longbench::eval::{
    BUCKETS, DatasetScore, EvalResult, bucket_of, evaluate_dir, read_predictions, score_record,
};
use cake_longbench::pytext::py_round2;
use cake_longbench::registry;
use cake_longbench::shard::{Shard, find_shard_sets, merge_set};
use cake_longbench::stats::{
    BootstrapConfig, bootstrap_mean, bootstrap_mean_of_means, paired_bootstrap,
    paired_bootstrap_of_means,
};
use serde::Serialize;

use crate::exit::usage_ensure;
use crate::plots::{NeedleHeatmap, ScoreVsCacheSize, render};
use crate::run_dir::lock_shard;

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
    /// Per dataset, the score with its bootstrap interval over records (plain scores only;
    /// none with `--e`).
    pub intervals: BTreeMap<String, ScoreInterval>,
    /// [`Self::average`] with its interval (each dataset's records resampled on their own).
    pub average_interval: Option<ScoreInterval>,
    /// Per length bucket (LongBench-E's `0-4k`, `4-8k`, `8k+`): the average over the
    /// datasets with records in that bucket, with its interval (plain scores only).
    pub by_length: BTreeMap<String, ScoreInterval>,
    /// Paired differences, this run minus a reference run on the same records (`cake` at
    /// the same cache size, the full cache).
    pub paired: Vec<Comparison>,
    /// Per dataset, each record's `_id` and score (0..1), for the paired differences.
    #[serde(skip)]
    records: BTreeMap<String, (Vec<String>, Vec<f64>)>,
    /// The policy the run's `run.json` states, with its variant ([`read_spec`]); `None`
    /// for a folder without one (named by its folder, never a reference run).
    #[serde(skip)]
    spec: Option<(PolicySpec, String)>,
}

impl RunScore {
    /// The run's variant ([`read_spec`]); a folder without `run.json` counts as the
    /// default one.
    fn variant(&self) -> &str {
        self.spec.as_ref().map_or("", |(_, v)| v.as_str())
    }

    /// Whether this run is a `reference` run of the paired differences, by its typed spec
    /// (never by its label: a folder without `run.json` named `full` is no full cache).
    fn is(&self, reference: Reference) -> bool {
        let Some((spec, _)) = &self.spec else {
            return false;
        };
        match reference {
            Reference::Full => spec.keeps_all(),
            // The labels `cake (tuned taus)`, `cake (heads ...)` and `allocator+scorer`
            // name other configurations, compared with this one.
            Reference::Cake => {
                spec.method == Method::Cake
                    && spec.allocator.is_none()
                    && spec.scorer.is_none()
                    && spec.tau_file.is_none()
                    && spec.cache.head_budgets.is_none()
            }
        }
    }
}

/// The runs every other run is compared with, record by record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reference {
    /// CAKE with its own allocator and scorer, the published temperatures and layer-only
    /// budgets, at the same cache size.
    Cake,
    /// The full cache.
    Full,
}

/// The bootstrap every interval of `cake eval` uses: 1000 resamples, seed 2025, 95%.
pub fn bootstrap() -> BootstrapConfig {
    BootstrapConfig::default()
}

/// A score (0-100) with its percentile bootstrap interval, rounded to 2 decimals.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ScoreInterval {
    /// The point estimate, as in result.json (unchanged by the bootstrap).
    pub score: f64,
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
    /// Records resampled (over all datasets for an average).
    pub records: usize,
}

/// A difference of scores (this run minus the reference, 0-100 scale) on the same records,
/// with its paired bootstrap interval, rounded to 2 decimals.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Difference {
    /// Mean of the per-record differences, x100.
    pub difference: f64,
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
    /// Records paired (over all datasets for an average).
    pub records: usize,
}

/// One run compared with a reference run, record by record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Policy of the reference run (`cake` or `full`).
    pub reference: String,
    /// Cache size of the reference run (`None` for the full cache).
    pub reference_cache_size: Option<usize>,
    /// Folder name of the reference run.
    pub reference_dir: String,
    /// Per dataset present in both runs with the same records (same `_id`s in order).
    pub datasets: BTreeMap<String, Difference>,
    /// Over those datasets: the difference of the averages (each dataset weighs the same).
    pub average: Option<Difference>,
    /// Datasets of both runs left out because their records differ.
    pub skipped: Vec<String>,
    /// Which reference run this is (`reference` is its label).
    #[serde(skip)]
    against: Reference,
}

/// The `_uncertainty` entry of a run's result.json.
#[derive(Debug, Clone, Serialize)]
pub struct Uncertainty {
    /// How the intervals are computed.
    pub method: &'static str,
    /// Confidence level.
    pub level: f64,
    /// Bootstrap resamples.
    pub resamples: usize,
    /// Seed of the SplitMix64 stream.
    pub seed: u64,
    /// Per dataset.
    pub datasets: BTreeMap<String, ScoreInterval>,
    /// The average over the datasets.
    pub average: Option<ScoreInterval>,
    /// Paired differences against reference runs.
    pub paired: Vec<Comparison>,
}

/// What the `_uncertainty` entry says about its method.
const METHOD: &str = "percentile bootstrap over records (stratified by dataset for averages; paired on record indices for differences)";

/// result.json: LongBench's `{dataset: score}` plus, for plain scores, `_uncertainty`.
#[derive(Serialize)]
struct ResultFile<'a> {
    #[serde(flatten)]
    scores: &'a BTreeMap<String, DatasetScore>,
    #[serde(rename = "_uncertainty", skip_serializing_if = "Option::is_none")]
    uncertainty: Option<Uncertainty>,
}

/// `{:.2}` of a value rounded as Python does, on the 0-100 scale.
fn percent(x: f64) -> f64 {
    py_round2(100.0 * x)
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

/// Evaluates `dir` (if it holds predictions) and each sub-folder that does, after merging
/// the shard files of sharded runs; writes `result.json` + `result.md` into each run
/// folder and, for several runs, `summary.md`, `summary.json` and plots into `dir`.
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
    let mut results = Vec::new();
    for folder in folders {
        merge_shards(&folder)?;
        if !has_predictions(&folder) {
            continue;
        }
        let result = evaluate_dir(&folder, longbench_e)
            .with_context(|| format!("cannot evaluate {}", folder.display()))?;
        runs.push(score_run(folder, &result)?);
        results.push(result);
    }
    // A variant every run shares (the whole study in `stored-int8` weights) is said once,
    // above the tables, rather than in every row.
    let shared = shared_variant(&runs);
    for run in &mut runs {
        run.policy = without_shared(&run.policy, run.variant(), &shared);
    }
    // Two folders of one (policy, C) would share a row of the summary: say so.
    for (i, a) in runs.iter().enumerate() {
        if let Some(b) = runs[..i]
            .iter()
            .find(|b| b.policy == a.policy && b.cache_size == a.cache_size)
        {
            eprintln!(
                "warning: {} and {} are both `{}` at the same cache size; the summary shows the first",
                b.dir.display(),
                a.dir.display(),
                a.policy
            );
        }
    }
    add_comparisons(&mut runs)?;
    for (run, result) in runs.iter().zip(&results) {
        write_result_json(run, result)?;
        let path = run.dir.join("result.md");
        std::fs::write(&path, result_markdown(result, &run.intervals))
            .with_context(|| format!("cannot write {}", path.display()))?;
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

/// Merges the shard files of `folder` (a sharded `cake pred`, see
/// [`cake_longbench::shard`]) into `<dataset>.jsonl`, holding every shard's lock meanwhile
/// so that a shard still predicting is never read half-way.
fn merge_shards(folder: &Path) -> Result<()> {
    let sets = find_shard_sets(folder)?;
    let mut locks = Vec::new();
    let mut locked = Vec::new();
    for set in &sets {
        for &i in &set.present {
            let shard = Shard::new(i, set.count)
                .with_context(|| format!("shard files in {}", folder.display()))?;
            if !locked.contains(&shard) {
                locks.push(lock_shard(folder, shard)?);
                locked.push(shard);
            }
        }
    }
    for set in &sets {
        let merged = merge_set(folder, set)?;
        if merged.written {
            eprintln!(
                "merged {} shards of {} into {} ({} records)",
                set.count,
                set.dataset,
                folder.join(format!("{}.jsonl", set.dataset)).display(),
                merged.records
            );
        }
    }
    drop(locks);
    Ok(())
}

/// The average of a run's plain dataset scores (the mean over datasets, rounded to 2
/// decimals): the `average` of `summary.md` and the objective of `cake tune`; `None`
/// without plain scores.
pub fn suite_average(scores: &BTreeMap<String, DatasetScore>) -> Option<f64> {
    let plain: Vec<f64> = scores
        .values()
        .filter_map(|s| match s {
            DatasetScore::Plain(v) => Some(*v),
            DatasetScore::Buckets(_) => None,
        })
        .collect();
    (!plain.is_empty())
        .then(|| (plain.iter().sum::<f64>() / plain.len() as f64 * 100.0).round() / 100.0)
}

/// A run's scores with their bootstrap intervals (plain scores only).
fn score_run(folder: PathBuf, result: &EvalResult) -> Result<RunScore> {
    let config = bootstrap();
    let spec = read_spec(&folder);
    let (policy, cache_size) = run_identity(&folder, spec.as_ref());
    let mut intervals = BTreeMap::new();
    let mut records = BTreeMap::new();
    for (name, score) in &result.scores {
        let DatasetScore::Plain(score) = score else {
            continue;
        };
        let (Some(values), Some(ids)) =
            (result.record_scores.get(name), result.record_ids.get(name))
        else {
            continue;
        };
        let interval = bootstrap_mean(values, &config)
            .with_context(|| format!("bootstrap of {name} in {}", folder.display()))?;
        intervals.insert(
            name.clone(),
            ScoreInterval {
                score: *score,
                low: percent(interval.low),
                high: percent(interval.high),
                records: values.len(),
            },
        );
        records.insert(name.clone(), (ids.clone(), values.clone()));
    }
    let average = suite_average(&result.scores);
    let average_interval = match average {
        Some(score) => {
            let groups: Vec<&[f64]> = records.values().map(|(_, v)| v.as_slice()).collect();
            let interval = bootstrap_mean_of_means(&groups, &config)
                .with_context(|| format!("bootstrap of the average of {}", folder.display()))?;
            Some(ScoreInterval {
                score,
                low: percent(interval.low),
                high: percent(interval.high),
                records: groups.iter().map(|g| g.len()).sum(),
            })
        }
        None => None,
    };
    let by_length = length_averages(&records, &result.record_lengths, &config)
        .with_context(|| format!("bootstrap per length of {}", folder.display()))?;
    Ok(RunScore {
        dir: folder,
        policy,
        cache_size,
        scores: result.scores.clone(),
        average,
        intervals,
        average_interval,
        by_length,
        paired: Vec::new(),
        records,
        spec,
    })
}

/// Per LongBench-E length bucket, the mean over datasets of each dataset's mean record
/// score in that bucket (x100, 2 decimals), with its bootstrap interval (each dataset's
/// records in the bucket resampled on their own); buckets without records are left out.
fn length_averages(
    records: &BTreeMap<String, (Vec<String>, Vec<f64>)>,
    lengths: &BTreeMap<String, Vec<u64>>,
    config: &BootstrapConfig,
) -> Result<BTreeMap<String, ScoreInterval>> {
    let mut buckets: BTreeMap<&str, Vec<Vec<f64>>> = BTreeMap::new();
    for (name, (_, values)) in records {
        let Some(lengths) = lengths.get(name).filter(|l| l.len() == values.len()) else {
            continue;
        };
        let mut mine: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for (&value, &length) in values.iter().zip(lengths) {
            mine.entry(bucket_of(length)).or_default().push(value);
        }
        for (bucket, group) in mine {
            buckets.entry(bucket).or_default().push(group);
        }
    }
    let mut out = BTreeMap::new();
    for (bucket, groups) in buckets {
        let means: Vec<f64> = groups
            .iter()
            .map(|g| g.iter().sum::<f64>() / g.len() as f64)
            .collect();
        let score = percent(means.iter().sum::<f64>() / means.len() as f64);
        let slices: Vec<&[f64]> = groups.iter().map(Vec::as_slice).collect();
        let interval = bootstrap_mean_of_means(&slices, config)?;
        out.insert(
            bucket.to_string(),
            ScoreInterval {
                score,
                low: percent(interval.low),
                high: percent(interval.high),
                records: slices.iter().map(|g| g.len()).sum(),
            },
        );
    }
    Ok(out)
}

/// Paired differences: every run but `cake`'s against `cake` at the same cache size, and
/// every run but the full cache's against the full cache (see [`Reference`]; the runs
/// are told apart by their typed specs, not by their labels).
fn add_comparisons(runs: &mut [RunScore]) -> Result<()> {
    let mut all = Vec::new();
    for (a, run) in runs.iter().enumerate() {
        let mut references = Vec::new();
        let same_variant = |r: &RunScore| r.variant() == run.variant();
        if !run.is(Reference::Cake)
            && run.cache_size.is_some()
            && let Some(b) = runs.iter().position(|r| {
                r.is(Reference::Cake) && r.cache_size == run.cache_size && same_variant(r)
            })
        {
            references.push((b, Reference::Cake));
        }
        if !run.is(Reference::Full)
            && let Some(b) = runs
                .iter()
                .position(|r| r.is(Reference::Full) && same_variant(r))
        {
            references.push((b, Reference::Full));
        }
        for (b, against) in references {
            all.push((a, compare(run, &runs[b], against)?));
        }
    }
    for (a, comparison) in all {
        runs[a].paired.push(comparison);
    }
    Ok(())
}

/// `run` minus `reference` (the `against` reference run) on the datasets both hold with
/// the same records.
fn compare(run: &RunScore, reference: &RunScore, against: Reference) -> Result<Comparison> {
    let config = bootstrap();
    let mut datasets = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut pairs: Vec<(&[f64], &[f64])> = Vec::new();
    for (name, (ids, values)) in &run.records {
        let Some((ref_ids, ref_values)) = reference.records.get(name) else {
            continue;
        };
        if ids != ref_ids {
            skipped.push(name.clone());
            continue;
        }
        let d = paired_bootstrap(values, ref_values, &config)
            .with_context(|| format!("paired bootstrap of {name}"))?;
        datasets.insert(
            name.clone(),
            Difference {
                difference: percent(d.estimate),
                low: percent(d.low),
                high: percent(d.high),
                records: values.len(),
            },
        );
        pairs.push((values, ref_values));
    }
    let average = if pairs.is_empty() {
        None
    } else {
        let d = paired_bootstrap_of_means(&pairs, &config).context("paired bootstrap")?;
        Some(Difference {
            difference: percent(d.estimate),
            low: percent(d.low),
            high: percent(d.high),
            records: pairs.iter().map(|(a, _)| a.len()).sum(),
        })
    };
    Ok(Comparison {
        reference: reference.policy.clone(),
        reference_cache_size: reference.cache_size,
        reference_dir: reference
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        datasets,
        average,
        skipped,
        against,
    })
}

/// Writes the run's result.json: LongBench's `{dataset: score}` (pretty, 4-space indent),
/// plus `_uncertainty` when there are intervals.
fn write_result_json(run: &RunScore, result: &EvalResult) -> Result<()> {
    let path = run.dir.join("result.json");
    if run.intervals.is_empty() {
        result.write_result_json(&path)?;
        return Ok(());
    }
    let config = bootstrap();
    let file = ResultFile {
        scores: &result.scores,
        uncertainty: Some(Uncertainty {
            method: METHOD,
            level: config.level,
            resamples: config.resamples,
            seed: config.seed,
            datasets: run.intervals.clone(),
            average: run.average_interval,
            paired: run.paired.clone(),
        }),
    };
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    file.serialize(&mut ser)?;
    buf.push(b'\n');
    std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))
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

/// The settings of a run folder that are not its policy but make it another configuration
/// of the same policy: the weights (`stored`) and the question protocol
/// (`after-compression`), as its `run.json` records them (absent at their defaults).
/// Runs are compared, paired, only with reference runs of the same variant.
const VARIANT_KEYS: [&str; 2] = ["weights", "question"];

/// The policy spec of a run folder, read back typed from its `run.json` (whose `config` is
/// the run's settings: the model, the [`VARIANT_KEYS`] when not at their defaults, and the
/// policy spec, flattened), with its variant (e.g. `question after-compression`, empty at
/// the defaults); `None` without a readable one.
fn read_spec(dir: &Path) -> Option<(PolicySpec, String)> {
    let text = std::fs::read_to_string(dir.join("run.json")).ok()?;
    let mut manifest = serde_json::from_str::<serde_json::Value>(&text).ok()?;
    let mut config = manifest.get_mut("config")?.take();
    let fields = config.as_object_mut()?;
    fields.remove("model");
    let variant: Vec<String> = VARIANT_KEYS
        .iter()
        .filter_map(|&key| {
            let value = fields.remove(key)?;
            Some(format!("{key} {}", value.as_str().unwrap_or_default()))
        })
        .collect();
    Some((serde_json::from_value(config).ok()?, variant.join(", ")))
}

/// (policy label, cache size) from the run's `spec` (and its variant), else from the
/// folder name.
fn run_identity(dir: &Path, spec: Option<&(PolicySpec, String)>) -> (String, Option<usize>) {
    let Some(spec) = spec else {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return (name, None);
    };
    let (spec, variant) = spec;
    let mut policy = spec.name();
    // Temperatures from a tuned table are another configuration of the same policy: keep
    // the two apart (and compare them, paired, with the published/fallback run).
    if spec.tau_file.is_some() {
        policy.push_str(" (tuned taus)");
    }
    // So are per-head budgets: `cake (heads adakv)` is compared, paired, with `cake`.
    if !spec.keeps_all() && !spec.cache.head_budgets.is_none() {
        policy.push_str(&format!(" (heads {})", spec.cache.head_budgets));
    }
    // And the sink ablation: `cake (sink 16)` keeps the first 16 prompt tokens.
    if !spec.keeps_all() && spec.cache.sink > 0 {
        policy.push_str(&format!(" (sink {})", spec.cache.sink));
    }
    // And the weights or the question protocol: `full (question after-compression)` is
    // the reference of that protocol's runs.
    if !variant.is_empty() {
        policy.push_str(&format!(" ({variant})"));
    }
    let cache_size =
        (!spec.keeps_all() && spec.cache.ratio.is_none()).then_some(spec.cache.cache_size);
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

/// `54.30 [48.10, 60.20]`.
fn fmt_interval(score: f64, low: f64, high: f64) -> String {
    format!("{score:.2} [{low:.2}, {high:.2}]")
}

/// The note under tables with intervals.
fn interval_note() -> String {
    let c = bootstrap();
    format!(
        "Brackets: {:.0}% percentile bootstrap interval over records ({} resamples, seed {}).\n",
        c.level * 100.0,
        c.resamples,
        c.seed
    )
}

/// One run's scores as a Markdown table, with their intervals where known.
pub fn result_markdown(result: &EvalResult, intervals: &BTreeMap<String, ScoreInterval>) -> String {
    let mut md = String::from("| dataset | predictions | score |\n|---|---:|---:|\n");
    for (name, score) in &result.scores {
        let count = result.counts.get(name).copied().unwrap_or(0);
        let cell = match intervals.get(name) {
            Some(i) => fmt_interval(i.score, i.low, i.high),
            None => fmt_score(score),
        };
        let _ = writeln!(md, "| {name} | {count} | {cell} |");
    }
    if let Some(avg) = &result.english16_average {
        let _ = writeln!(md, "| **English-16 average** | | {} |", fmt_score(avg));
    }
    if !intervals.is_empty() {
        md.push('\n');
        md.push_str(&interval_note());
    }
    md
}

/// The parts of the runs' variants (`weights stored-int8`, `question after-compression`)
/// that every run has; empty when a run has none or there is no run.
fn shared_variant(runs: &[RunScore]) -> Vec<String> {
    let parts = |r: &RunScore| -> Vec<String> {
        r.variant()
            .split(", ")
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    };
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    parts(first)
        .into_iter()
        .filter(|p| runs.iter().all(|r| parts(r).contains(p)))
        .collect()
}

/// `label` (ending in ` (variant)` when the variant is not empty, as [`run_identity`]
/// writes it) without the `shared` parts of its variant.
fn without_shared(label: &str, variant: &str, shared: &[String]) -> String {
    if shared.is_empty() || variant.is_empty() {
        return label.to_string();
    }
    let Some(base) = label.strip_suffix(&format!(" ({variant})")) else {
        return label.to_string();
    };
    let rest: Vec<&str> = variant
        .split(", ")
        .filter(|p| !shared.iter().any(|s| s == p))
        .collect();
    if rest.is_empty() {
        base.to_string()
    } else {
        format!("{base} ({})", rest.join(", "))
    }
}

/// Policies x cache sizes, cells = average score over the datasets of each run.
pub fn summary_markdown(runs: &[RunScore]) -> String {
    let mut sizes: Vec<usize> = runs.iter().filter_map(|r| r.cache_size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let shared = shared_variant(runs);
    let mut md = if shared.is_empty() {
        String::new()
    } else {
        format!("Every run: {}.\n\n", shared.join(", "))
    };
    md.push_str(&policy_table_header("average", &sizes));
    for policy in policies_in_order(runs.iter()) {
        let _ = write!(md, "| {policy} |");
        let mine: Vec<&RunScore> = runs.iter().filter(|r| r.policy == policy).collect();
        let cell = |r: Option<&&RunScore>| match r {
            Some(RunScore {
                average_interval: Some(i),
                ..
            }) => fmt_interval(i.score, i.low, i.high),
            _ => r
                .and_then(|r| r.average)
                .map_or("-".to_string(), |a| format!("{a:.2}")),
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
    if runs.iter().any(|r| r.average_interval.is_some()) {
        md.push('\n');
        md.push_str(&interval_note());
    }
    md.push_str(&per_length_markdown(runs, &sizes));
    md.push_str(&per_task_markdown(runs, &sizes));
    for (reference, title) in [
        (Reference::Cake, "policy - cake at the same C"),
        (Reference::Full, "policy - full cache"),
    ] {
        md.push_str(&differences_markdown(runs, &sizes, reference, title));
    }
    md
}

/// Policies x cache sizes per length bucket (`0-4k`, `4-8k`, `8k+`), when the runs' records
/// fall in more than one; empty otherwise.
fn per_length_markdown(runs: &[RunScore], sizes: &[usize]) -> String {
    let present: Vec<&str> = BUCKETS
        .iter()
        .copied()
        .filter(|b| runs.iter().any(|r| r.by_length.contains_key(*b)))
        .collect();
    if present.len() < 2 {
        return String::new();
    }
    let mut md = String::from("\n### Per length (prompt tokens)\n");
    for bucket in present {
        let _ = write!(md, "\n{bucket}:\n\n{}", policy_table_header(bucket, sizes));
        for policy in policies_in_order(runs.iter()) {
            let mine = |size: Option<usize>| {
                runs.iter()
                    .find(|r| r.policy == policy && r.cache_size == size)
            };
            let cell = |run: Option<&RunScore>| {
                run.and_then(|r| r.by_length.get(bucket))
                    .map_or("-".to_string(), |i| fmt_interval(i.score, i.low, i.high))
            };
            let _ = write!(md, "| {policy} |");
            if sizes.is_empty() {
                let _ = write!(md, " {} |", cell(mine(None)));
            } else {
                for c in sizes {
                    let _ = write!(md, " {} |", cell(mine(Some(*c)).or_else(|| mine(None))));
                }
            }
            md.push('\n');
        }
    }
    md
}

/// The paper's layout: for each cache size, policies x (datasets, average), each cell a
/// score with its interval (the full cache, which has no C, is a row of every table).
fn per_task_markdown(runs: &[RunScore], sizes: &[usize]) -> String {
    let mut datasets: Vec<&str> = runs
        .iter()
        .flat_map(|r| r.scores.keys().map(String::as_str))
        .collect();
    datasets.sort_unstable();
    datasets.dedup();
    if datasets.is_empty() {
        return String::new();
    }
    let cell = |run: &RunScore, dataset: Option<&str>| {
        let interval = match dataset {
            Some(d) => run.intervals.get(d),
            None => run.average_interval.as_ref(),
        };
        match (interval, dataset) {
            (Some(i), _) => fmt_interval(i.score, i.low, i.high),
            (None, Some(d)) => run.scores.get(d).map_or("-".into(), fmt_score),
            (None, None) => run.average.map_or("-".into(), |a| format!("{a:.2}")),
        }
    };
    let columns: Vec<Option<usize>> = if sizes.is_empty() {
        vec![None]
    } else {
        sizes.iter().copied().map(Some).collect()
    };
    let mut md = String::from("\n### Per task\n");
    for c in columns {
        let _ = write!(
            md,
            "\n{}\n\n| policy |",
            c.map_or("All runs:".to_string(), |c| format!("C = {c}:"))
        );
        for d in &datasets {
            let _ = write!(md, " {d} |");
        }
        md.push_str(" **average** |\n|---|");
        md.push_str(&"---:|".repeat(datasets.len() + 1));
        md.push('\n');
        for policy in policies_in_order(runs.iter()) {
            let mine = |size: Option<usize>| {
                runs.iter()
                    .find(|r| r.policy == policy && r.cache_size == size)
            };
            let run = mine(c).or_else(|| mine(None));
            let Some(run) = run else { continue };
            let _ = write!(md, "| {policy} |");
            for d in &datasets {
                let _ = write!(md, " {} |", cell(run, Some(d)));
            }
            let _ = writeln!(md, " {} |", cell(run, None));
        }
    }
    md
}

/// The head of a policies x cache sizes table: one column per C, or a single `column`
/// when no run has a cache size.
fn policy_table_header(column: &str, sizes: &[usize]) -> String {
    let mut md = String::from("| policy |");
    if sizes.is_empty() {
        let _ = write!(md, " {column} |\n|---|---:|\n");
    } else {
        for c in sizes {
            let _ = write!(md, " C={c} |");
        }
        md.push_str("\n|---|");
        md.push_str(&"---:|".repeat(sizes.len()));
        md.push('\n');
    }
    md
}

/// The policies of `runs`, each once, in order of first appearance.
fn policies_in_order<'a>(runs: impl Iterator<Item = &'a RunScore>) -> Vec<&'a str> {
    let mut policies: Vec<&str> = Vec::new();
    for run in runs {
        if !policies.contains(&run.policy.as_str()) {
            policies.push(&run.policy);
        }
    }
    policies
}

/// Paired differences of the averages against `reference`, policies x cache sizes; empty
/// when no run was compared with it.
fn differences_markdown(
    runs: &[RunScore],
    sizes: &[usize],
    reference: Reference,
    title: &str,
) -> String {
    let rows: Vec<(&RunScore, &Difference)> = runs
        .iter()
        .filter_map(|r| {
            let c = r.paired.iter().find(|c| c.against == reference)?;
            Some((r, c.average.as_ref()?))
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut md = format!(
        "\nPaired difference of the average score, {title} (same records; brackets: paired bootstrap interval):\n\n{}",
        policy_table_header("difference", sizes)
    );
    for policy in policies_in_order(rows.iter().map(|(run, _)| *run)) {
        let _ = write!(md, "| {policy} |");
        let mine: Vec<&(&RunScore, &Difference)> =
            rows.iter().filter(|(r, _)| r.policy == policy).collect();
        let cell = |d: Option<&&(&RunScore, &Difference)>| {
            d.map_or("-".to_string(), |(_, d)| {
                fmt_interval(d.difference, d.low, d.high)
            })
        };
        if sizes.is_empty() {
            let _ = write!(md, " {} |", cell(mine.first()));
        } else {
            for c in sizes {
                let found = mine
                    .iter()
                    .find(|(r, _)| r.cache_size == Some(*c))
                    .or_else(|| mine.iter().find(|(r, _)| r.cache_size.is_none()));
                let _ = write!(md, " {} |", cell(found));
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
        let mut intervals: Vec<Vec<Option<(f64, f64)>>> = Vec::new();
        let mut full = None;
        let mut full_interval = None;
        for run in runs {
            let bar = run.average_interval.map(|i| (i.low, i.high));
            match run.cache_size {
                None => {
                    if full.is_none() {
                        full = run.average;
                        full_interval = bar;
                    }
                }
                Some(c) => {
                    let i = sizes.iter().position(|&s| s == c).unwrap_or(0);
                    if let Some(k) = series.iter().position(|(p, _)| *p == run.policy) {
                        series[k].1[i] = run.average;
                        intervals[k][i] = bar;
                    } else {
                        let mut v = vec![None; sizes.len()];
                        v[i] = run.average;
                        series.push((run.policy.clone(), v));
                        let mut b = vec![None; sizes.len()];
                        b[i] = bar;
                        intervals.push(b);
                    }
                }
            }
        }
        let chart = ScoreVsCacheSize {
            title: "average score vs cache size (95% bootstrap intervals)".into(),
            cache_sizes: sizes,
            series,
            intervals,
            full,
            full_interval,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A run folder whose manifest holds `config` (the settings `cake pred` writes).
    fn run_with(config: serde_json::Value) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let manifest = serde_json::json!({ "config": config });
        std::fs::write(dir.path().join("run.json"), manifest.to_string()).unwrap();
        dir
    }

    /// The label and cache size of a run folder, from its manifest.
    fn identity(dir: &Path) -> (String, Option<usize>) {
        run_identity(dir, read_spec(dir).as_ref())
    }

    /// Hand-computed: each bucket averages the datasets' means of their records in it.
    #[test]
    fn length_buckets_average_the_datasets_present_in_them() {
        let ids = |n: usize| (0..n).map(|i| format!("r{i}")).collect::<Vec<_>>();
        let records = BTreeMap::from([
            ("a".to_string(), (ids(4), vec![1.0, 0.0, 1.0, 1.0])),
            ("b".to_string(), (ids(2), vec![0.0, 0.0])),
            // Lengths that do not match the records: left out, not misattributed.
            ("c".to_string(), (ids(2), vec![1.0, 1.0])),
        ]);
        let lengths = BTreeMap::from([
            ("a".to_string(), vec![2000, 2000, 5000, 9000]),
            ("b".to_string(), vec![2000, 5000]),
            ("c".to_string(), vec![2000]),
        ]);
        let by = length_averages(&records, &lengths, &bootstrap()).unwrap();
        let cell = |b: &str| (by[b].score, by[b].records);
        // 0-4k: a = (1 + 0) / 2, b = 0 -> 25; 4-8k: a = 1, b = 0 -> 50; 8k+: a alone.
        assert_eq!(cell("0-4k"), (25.0, 3));
        assert_eq!(cell("4-8k"), (50.0, 2));
        assert_eq!(cell("8k+"), (100.0, 1));
        assert_eq!((by["8k+"].low, by["8k+"].high), (100.0, 100.0));
        assert!(by["0-4k"].low <= 25.0 && by["0-4k"].high >= 25.0);
        // In the summary: a per-length table appears only with two buckets or more.
        let mut run = scored("cake-c64", None, [1.0, 0.0, 1.0, 1.0]);
        run.cache_size = Some(64);
        run.by_length = by.clone();
        let md = per_length_markdown(std::slice::from_ref(&run), &[64]);
        assert!(md.contains("4-8k:") && md.contains("| 50.00 ["), "{md}");
        run.by_length.retain(|b, _| b == "0-4k");
        assert_eq!(per_length_markdown(&[run], &[64]), "");
    }

    #[test]
    fn runs_are_identified_from_their_typed_settings() {
        let cake = |extra: serde_json::Value| {
            let mut config = serde_json::json!({
                "model": "m", "policy": "cake", "allocator": null, "scorer": null,
                "score_fn": null, "cache": cake_core::PolicyConfig::default(),
            });
            for (k, v) in extra.as_object().unwrap() {
                config[k] = v.clone();
            }
            identity(run_with(config).path())
        };
        assert_eq!(cake(serde_json::json!({})), ("cake".into(), Some(1024)));
        // Tuned temperatures are a configuration of their own, compared with `cake`.
        assert_eq!(
            cake(serde_json::json!({"tau_file": "tune/taus.json"})),
            ("cake (tuned taus)".into(), Some(1024))
        );
        // An override names both halves of the policy.
        assert_eq!(
            cake(serde_json::json!({"allocator": "static", "score_fn": "f.json"})),
            ("static+cake".into(), Some(1024))
        );
        // Per-head budgets are a configuration of their own too.
        let heads = cake_core::PolicyConfig {
            head_budgets: cake_core::HeadBudgets::AdaKv,
            ..Default::default()
        };
        assert_eq!(
            cake(serde_json::json!({"cache": heads})),
            ("cake (heads adakv)".into(), Some(1024))
        );
        // So is the sink ablation, else its row would merge with `cake`'s.
        let sink = cake_core::PolicyConfig {
            sink: 16,
            ..Default::default()
        };
        assert_eq!(
            cake(serde_json::json!({"cache": sink})),
            ("cake (sink 16)".into(), Some(1024))
        );
        // The full cache has no C; neither has a ratio run.
        assert_eq!(
            cake(serde_json::json!({"policy": "full"})),
            ("full".into(), None)
        );
        let ratio = cake_core::PolicyConfig {
            ratio: Some(0.1),
            ..Default::default()
        };
        assert_eq!(
            cake(serde_json::json!({"cache": ratio})).1,
            None,
            "a ratio run has no fixed C"
        );
        // A folder without a readable manifest is named by its folder.
        let bare = tempfile::tempdir().unwrap();
        let name = bare
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(identity(bare.path()), (name, None));
    }

    /// A run of `spec` (or, with none, a folder without `run.json`) in folder `dir`, with
    /// per-record scores on one dataset of four records.
    fn scored(dir: &str, spec: Option<PolicySpec>, scores: [f64; 4]) -> RunScore {
        scored_variant(dir, spec.map(|s| (s, String::new())), scores)
    }

    /// [`scored`] with a variant (`question after-compression`, ...).
    fn scored_variant(dir: &str, spec: Option<(PolicySpec, String)>, scores: [f64; 4]) -> RunScore {
        let (policy, cache_size) = run_identity(Path::new(dir), spec.as_ref());
        let ids = (0..4).map(|i| format!("r{i}")).collect();
        RunScore {
            dir: PathBuf::from(dir),
            policy,
            cache_size,
            scores: BTreeMap::new(),
            average: None,
            intervals: BTreeMap::new(),
            average_interval: None,
            by_length: BTreeMap::new(),
            paired: Vec::new(),
            records: BTreeMap::from([("synth_passkey".to_string(), (ids, scores.to_vec()))]),
            spec,
        }
    }

    /// The reference runs are the full cache's and plain CAKE's by their specs: a folder
    /// without `run.json` named `full` (labelled `full`, its policy unknown) is compared
    /// with the full cache, never taken for it, and tuned CAKE is compared with plain CAKE.
    #[test]
    fn reference_runs_are_found_by_their_specs_not_their_labels() {
        let at = |method: Method, cache_size: usize| PolicySpec {
            method,
            cache: cake_core::PolicyConfig {
                cache_size,
                ..Default::default()
            },
            ..PolicySpec::default()
        };
        let tuned = PolicySpec {
            tau_file: Some("taus.json".into()),
            ..at(Method::Cake, 8)
        };
        let mut runs = vec![
            scored("runs/full", None, [0.0, 0.0, 1.0, 0.0]),
            scored(
                "runs/cake-c8",
                Some(at(Method::Cake, 8)),
                [1.0, 0.0, 1.0, 1.0],
            ),
            scored(
                "runs/snapkv-c8",
                Some(at(Method::SnapKv, 8)),
                [1.0, 0.0, 0.0, 1.0],
            ),
            scored("runs/tuned-c8", Some(tuned), [1.0, 1.0, 1.0, 1.0]),
            scored("runs/z-full", Some(PolicySpec::new(Method::Full)), [1.0; 4]),
        ];
        assert_eq!(runs[0].policy, "full", "the bare folder's label collides");
        add_comparisons(&mut runs).unwrap();
        let against = |run: &RunScore| -> Vec<(Reference, String, Option<f64>)> {
            run.paired
                .iter()
                .map(|c| {
                    let d = c.average.map(|d| d.difference);
                    (c.against, c.reference_dir.clone(), d)
                })
                .collect()
        };
        let full = |d: f64| (Reference::Full, "z-full".to_string(), Some(d));
        let cake = |d: f64| (Reference::Cake, "cake-c8".to_string(), Some(d));
        assert_eq!(against(&runs[0]), [full(-75.0)]);
        assert_eq!(against(&runs[1]), [full(-25.0)]);
        assert_eq!(against(&runs[2]), [cake(-25.0), full(-50.0)]);
        assert_eq!(against(&runs[3]), [cake(25.0), full(0.0)]);
        assert_eq!(against(&runs[4]), []);
        // The summary's difference tables follow the same references.
        let md = differences_markdown(&runs, &[8], Reference::Full, "policy - full cache");
        assert!(md.contains("| cake | -25.00 ["), "{md}");
        assert!(!md.contains("| full (tuned"), "{md}");
    }

    /// Runs with the question after compression (or other weights) are their own rows and
    /// are compared with the reference runs of the same variant only.
    /// A variant part every run has is said once above the tables, not in every row; the
    /// parts that tell runs apart stay in their labels.
    #[test]
    fn a_variant_every_run_shares_leaves_the_labels() {
        let int8 = "weights stored-int8".to_string();
        let both = format!("{int8}, question after-compression");
        let cake = PolicySpec::default();
        let runs = vec![
            scored_variant("r/cake", Some((cake.clone(), int8.clone())), [1.0; 4]),
            scored_variant("r/cake-q", Some((cake.clone(), both.clone())), [1.0; 4]),
        ];
        assert_eq!(
            runs[1].policy,
            "cake (weights stored-int8, question after-compression)"
        );
        let shared = shared_variant(&runs);
        assert_eq!(shared, std::slice::from_ref(&int8));
        let labels: Vec<String> = runs
            .iter()
            .map(|r| without_shared(&r.policy, r.variant(), &shared))
            .collect();
        assert_eq!(labels, ["cake", "cake (question after-compression)"]);
        assert!(summary_markdown(&runs).starts_with("Every run: weights stored-int8.\n"));
        // A run without the part: nothing is shared, every label stays.
        let mixed = vec![
            scored_variant("r/cake", Some((cake.clone(), int8)), [1.0; 4]),
            scored_variant("r/cake-f32", Some((cake, String::new())), [1.0; 4]),
        ];
        assert!(shared_variant(&mixed).is_empty());
        assert!(summary_markdown(&mixed).starts_with("| policy |"));
    }

    #[test]
    fn variants_are_compared_with_their_own_references() {
        let after = "question after-compression".to_string();
        let config = |policy: &str, question: Option<&str>| {
            let mut config = serde_json::json!({
                "model": "m", "policy": policy, "allocator": null, "scorer": null,
                "score_fn": null, "cache": cake_core::PolicyConfig::default(),
            });
            if let Some(q) = question {
                config["question"] = q.into();
            }
            config
        };
        let dir = run_with(config("cake", Some("after-compression")));
        assert_eq!(
            identity(dir.path()),
            ("cake (question after-compression)".into(), Some(1024))
        );
        let dir = run_with(config("full", None));
        assert_eq!(identity(dir.path()), ("full".into(), None));
        let stored = run_with(serde_json::json!({
            "model": "m", "weights": "stored", "policy": "full", "allocator": null,
            "scorer": null, "score_fn": null, "cache": cake_core::PolicyConfig::default(),
        }));
        assert_eq!(
            identity(stored.path()),
            ("full (weights stored)".into(), None)
        );

        let cake = PolicySpec {
            method: Method::Cake,
            ..PolicySpec::default()
        };
        let full = PolicySpec::new(Method::Full);
        let mut runs = vec![
            scored_variant("r/full", Some((full.clone(), String::new())), [1.0; 4]),
            scored_variant(
                "r/full-q",
                Some((full, after.clone())),
                [0.0, 1.0, 1.0, 1.0],
            ),
            scored_variant("r/cake-q", Some((cake.clone(), after)), [0.0; 4]),
            scored_variant("r/cake", Some((cake, String::new())), [1.0, 1.0, 0.0, 0.0]),
        ];
        add_comparisons(&mut runs).unwrap();
        let dirs = |run: &RunScore| -> Vec<String> {
            run.paired.iter().map(|c| c.reference_dir.clone()).collect()
        };
        assert_eq!(dirs(&runs[2]), ["full-q"], "after-compression CAKE");
        assert_eq!(dirs(&runs[3]), ["full"], "in-prompt CAKE");
        assert!(dirs(&runs[1]).is_empty(), "a full cache has no reference");
    }
}
