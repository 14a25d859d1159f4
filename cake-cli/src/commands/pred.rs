//! `cake pred`: LongBench-format predictions for every (policy, cache size) asked for,
//! one folder per configuration, resumable.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use cake_core::{HeadBudgets, Method, PolicySpec};
use cake_longbench::predict::{predict_dataset, predict_sweep};
use cake_longbench::record::{DataError, LongBenchRecord, read_dataset};
use cake_longbench::registry;
use cake_longbench::{Shard, ShardIndex};

use crate::exit::usage_ensure;
use crate::progress::Progress;
use crate::run_dir::{FolderLock, Manifest, folder_for, lock_folder, lock_shard};
use crate::session::{PolicyGenerator, PolicySweep, Session};
use crate::settings::{PolicyArgs, Settings, policy_for_modes};

/// The records to read and the model that reads them (`cake pred`, `tune`, `fit`).
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// Folder of LongBench-format `<dataset>.jsonl` files (LongBench data, or `cake suite`)
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Datasets to use (default: every known `<name>.jsonl` in --data-dir)
    #[arg(long, value_delimiter = ',')]
    pub datasets: Vec<String>,
    /// Model: smollm2-135m (default), qwen2.5-coder-0.5b, a .gguf file or a HF folder
    #[arg(long)]
    pub model: Option<String>,
    /// Sweeps of several configurations (`cake pred`, `cake tune`): decode at most N
    /// configurations of a prompt together, in one batched forward per token [default: all
    /// of them]; 1 decodes them one at a time. `cake fit` ignores it
    #[arg(long, value_name = "N")]
    pub batch: Option<NonZeroUsize>,
}

impl DataArgs {
    /// The datasets: `--datasets` (each checked to exist in `--data-dir`), else every known
    /// `<name>.jsonl` there.
    pub fn dataset_names(&self) -> Result<Vec<String>> {
        usage_ensure!(
            self.data_dir.is_dir(),
            "--data-dir {} is not a folder (write the synthetic suite with `cake suite --out DIR`)",
            self.data_dir.display()
        );
        if !self.datasets.is_empty() {
            for name in &self.datasets {
                registry::lookup(name)?;
                let path = self.data_dir.join(format!("{name}.jsonl"));
                usage_ensure!(path.exists(), "{} does not exist", path.display());
            }
            return Ok(self.datasets.clone());
        }
        known_datasets(&self.data_dir)
    }
}

/// Arguments of `cake pred`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub data: DataArgs,
    /// Several methods in one run (each gets its folder), e.g. full,snapkv,cake
    #[arg(long, value_delimiter = ',', ignore_case = true)]
    pub policies: Vec<Method>,
    /// Several cache sizes in one run, e.g. 64,128,256,512
    #[arg(long, value_delimiter = ',')]
    pub cache_sizes: Vec<usize>,
    /// Several head-budget modes in one run (each method and cache size with each), e.g.
    /// none,preference,adakv (see --head-budgets)
    #[arg(long, value_delimiter = ',', ignore_case = true, value_name = "MODES")]
    pub head_budget_modes: Vec<HeadBudgets>,
    /// Prompt budget in tokens (middle truncation) [default: LongBench's model2maxlen, else
    /// the model's context minus 512, at most 7500]
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Predict only the first N records of each dataset
    #[arg(long)]
    pub max_samples: Option<usize>,
    /// Output folder; each configuration writes into its own sub-folder
    #[arg(long)]
    pub out: PathBuf,
    /// With several configurations, prefill each prompt separately per configuration
    /// instead of once for all (same files, slower; for checking)
    #[arg(long)]
    pub no_sweep: bool,
    /// Predict only shard I of N (0 <= I < N): the records whose `_id` hashes (FNV-1a) to I
    /// modulo N, into `<folder>/shards/<dataset>.shard-I-of-N.jsonl`; run every I (e.g. as a
    /// Slurm array or Kubernetes indexed job) into one --out, then `cake eval` merges them
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Runs `cake pred`.
pub fn run(args: Args) -> Result<()> {
    let base = Settings::resolve(
        &policy_for_modes(&args.policy, &args.head_budget_modes),
        args.data.model.as_deref(),
    )?;
    let datasets = args.data.dataset_names()?;
    usage_ensure!(
        args.data.batch.is_none() || !args.no_sweep,
        "--batch decodes a sweep's configurations together and --no-sweep runs them one by one: give one of them"
    );
    let configs = configurations(&base, &args)?;
    let device = Default::default();
    let session =
        Session::<cake_models::Cpu>::open_as(base.model.as_deref(), base.weights, &device)?;
    let start = Instant::now();
    if configs.len() > 1 && !args.no_sweep {
        predict_configurations(&session, &configs, &args, &datasets)?;
    } else {
        for settings in &configs {
            predict_run(&session, settings, &args, &datasets)?;
        }
    }
    eprintln!(
        "{} configuration(s) in {:.1} s",
        configs.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What [`predict_configurations`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepRun {
    /// The folder of each configuration, in the order given.
    pub dirs: Vec<PathBuf>,
    /// Prompts prefilled (once each, whatever the number of configurations; records every
    /// configuration already had are not prefilled).
    pub prefills: usize,
}

/// Every configuration at once, in one pass per dataset: each prompt is prefilled once and
/// every configuration that still lacks the record decodes from a copy of that prefill,
/// `--batch` of them at a time in one batch (default: all). The files equal separate runs'
/// (same writer, same generations up to the rounding of batched matrix products), and
/// resuming works the same way.
pub fn predict_configurations<B: Backend>(
    session: &Session<B>,
    configs: &[Settings],
    args: &Args,
    datasets: &[String],
) -> Result<SweepRun> {
    let max_length = max_length(session, args.max_length)?;
    let mut dirs = Vec::new();
    let mut locks = Vec::new();
    for settings in configs {
        let dir = folder_for(&args.out, &settings.label(), settings)?;
        locks.push(open_run(&dir, settings, args.shard)?);
        dirs.push(dir);
    }
    let mut sweep =
        PolicySweep::new(session, configs).with_max_batch(args.data.batch.map(NonZeroUsize::get));
    for name in datasets {
        let spec = registry::lookup(name)?;
        let (records, count) = dataset_records(args, name, &dirs)?;
        let total = count * configs.len();
        let mut progress = Progress::new(total as u64, format!("sweep x{} {name}", configs.len()));
        let start = Instant::now();
        let mut tokens = 0usize;
        let files: Vec<PathBuf> = dirs
            .iter()
            .map(|d| prediction_file(d, name, args.shard))
            .collect();
        predict_sweep(
            records,
            spec,
            session,
            &mut sweep,
            &files,
            max_length,
            |step| {
                if let Some(outcome) = step.outcome {
                    tokens += outcome.new_tokens;
                }
                let rate = tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
                progress.set_message(format!("{rate:.1} new tok/s"));
                progress.inc(1);
            },
        )
        .with_context(|| format!("predicting {name} into {}", args.out.display()))?;
        progress.finish(format!("{} prefills so far", sweep.prefills));
    }
    drop(locks);
    Ok(SweepRun {
        dirs,
        prefills: sweep.prefills,
    })
}

/// Every (method, cache size) configuration asked for, in order, validated.
pub fn configurations(base: &Settings, args: &Args) -> Result<Vec<Settings>> {
    let methods = if args.policies.is_empty() {
        vec![base.spec.method]
    } else {
        args.policies.clone()
    };
    let sizes = if args.cache_sizes.is_empty() {
        vec![base.spec.cache.cache_size]
    } else {
        args.cache_sizes.clone()
    };
    let modes = if args.head_budget_modes.is_empty() {
        vec![base.spec.cache.head_budgets]
    } else {
        args.head_budget_modes.clone()
    };
    let mut out = Vec::new();
    for &method in &methods {
        // The full cache depends on none of the policy's tuning (cache size, window,
        // temperatures, head budgets): one run, under the default tuning, so that its
        // folder is the same whatever sizes or tuning a command sweeps.
        if method == Method::Full {
            out.push(Settings {
                model: base.model.clone(),
                weights: base.weights,
                spec: PolicySpec::new(Method::Full),
            });
            continue;
        }
        for &size in &sizes {
            for &mode in &modes {
                let settings = base.with_head_budgets(mode);
                out.push(settings.with_method(method, size).map_err(|e| {
                    crate::exit::UsageError(format!(
                        "{e} (from --policies / --cache-sizes / --head-budget-modes)"
                    ))
                })?);
            }
        }
    }
    Ok(out)
}

/// Stems of the known `<dataset>.jsonl` files in `dir`, sorted.
pub fn known_datasets(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let path = e.path();
            let stem = path.file_stem()?.to_str()?.to_string();
            (path.extension()? == "jsonl" && registry::lookup(&stem).is_ok()).then_some(stem)
        })
        .collect();
    names.sort();
    usage_ensure!(
        !names.is_empty(),
        "no known <dataset>.jsonl in {}: create the synthetic suite there with `cake suite --out {}` or copy LongBench's data/*.jsonl into it",
        dir.display(),
        dir.display()
    );
    Ok(names)
}

/// The prompt budget for a model: `--max-length`, else LongBench's `model2maxlen` entry,
/// else the model's context less 512 tokens for the answer (between 256 and 7500).
///
/// # Errors
/// A usage error when `--max-length` exceeds the model's context (`max_position_embeddings`):
/// prompts are truncated in the middle to this budget, never run past the context.
pub fn max_length<B: Backend>(session: &Session<B>, flag: Option<usize>) -> Result<usize> {
    let context = session.config().max_position_embeddings;
    if let (Some(flag), Some(context)) = (flag, context) {
        usage_ensure!(
            flag <= context,
            "--max-length {flag} exceeds the context of {} ({context} tokens, max_position_embeddings): use at most {context}",
            session.name
        );
    }
    Ok(flag
        .or_else(|| registry::model_max_length(&session.name).ok())
        .unwrap_or_else(|| context.unwrap_or(8192).saturating_sub(512).clamp(256, 7500)))
}

/// Predicts every dataset for one configuration into its folder; returns the folder.
pub fn predict_run<B: Backend>(
    session: &Session<B>,
    settings: &Settings,
    args: &Args,
    datasets: &[String],
) -> Result<PathBuf> {
    let max_length = max_length(session, args.max_length)?;
    let dir = folder_for(&args.out, &settings.label(), settings)?;
    let _lock = open_run(&dir, settings, args.shard)?;
    for name in datasets {
        let spec = registry::lookup(name)?;
        let (records, total) = dataset_records(args, name, std::slice::from_ref(&dir))?;
        let mut progress = Progress::new(total as u64, format!("{} {name}", settings.label()));
        let mut generator = PolicyGenerator { session, settings };
        let start = Instant::now();
        let mut tokens = 0usize;
        let out_file = prediction_file(&dir, name, args.shard);
        let summary = predict_dataset(
            records,
            spec,
            session,
            &mut generator,
            &out_file,
            max_length,
            |step| {
                if let Some(outcome) = step.outcome {
                    tokens += outcome.prompt_tokens + outcome.new_tokens;
                }
                let rate = tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
                progress.set_message(format!("{rate:.0} tok/s"));
                progress.inc(1);
            },
        )
        .with_context(|| format!("predicting {name} into {}", out_file.display()))?;
        progress.finish(format!(
            "{} new, {} resumed, {} truncated",
            summary.generated, summary.resumed, summary.truncated
        ));
    }
    Ok(dir)
}

/// Locks a configuration folder for this run and writes its manifest: the whole folder
/// (`.lock`, `run.json`) for an unsharded run; only the shard's lock and manifest (plus the
/// shared `run.json`) for a shard, so that the shards of a configuration run at once.
fn open_run(dir: &Path, settings: &Settings, shard: Option<Shard>) -> Result<FolderLock> {
    let manifest = Manifest::new(settings);
    match shard {
        None => {
            let lock = lock_folder(dir)?;
            manifest.write(dir)?;
            Ok(lock)
        }
        Some(shard) => {
            let lock = lock_shard(dir, shard)?;
            manifest.write_shard(dir, shard)?;
            Ok(lock)
        }
    }
}

/// The prediction file of dataset `name` in configuration folder `dir`: `<name>.jsonl`, or
/// the shard's `shards/<name>.shard-I-of-N.jsonl`.
fn prediction_file(dir: &Path, name: &str, shard: Option<Shard>) -> PathBuf {
    match shard {
        None => dir.join(format!("{name}.jsonl")),
        Some(shard) => shard.predictions_file(dir, name),
    }
}

/// Records of a dataset, as the prediction loop takes them.
type Records = Box<dyn Iterator<Item = Result<LongBenchRecord, DataError>>>;

/// The records of dataset `name` this run predicts and their number (for the progress
/// bar): the first `--max-samples`, streamed; for a shard, those of them that belong to it,
/// after writing the shard's index (positions and ids in the dataset, from which
/// `cake eval` restores the dataset order when merging) into every folder of `dirs`.
fn dataset_records(args: &Args, name: &str, dirs: &[PathBuf]) -> Result<(Records, usize)> {
    let records =
        read_dataset(&args.data.data_dir, name)?.take(args.max_samples.unwrap_or(usize::MAX));
    let Some(shard) = args.shard else {
        let count = count_records(&args.data.data_dir, name, args.max_samples);
        return Ok((Box::new(records), count));
    };
    let all = records.collect::<Result<Vec<_>, _>>()?;
    let (index, mine) = ShardIndex::select(name, shard, all);
    for dir in dirs {
        let path = shard.index_file(dir, name);
        index.write(&path).with_context(|| {
            format!(
                "cannot write the shard index {}: check that --out is writable",
                path.display()
            )
        })?;
    }
    let count = mine.len();
    Ok((Box::new(mine.into_iter().map(Ok)), count))
}

/// Records in `<dir>/<name>.jsonl` (non-empty lines), capped at `max`; for the progress bar.
fn count_records(dir: &Path, name: &str, max: Option<usize>) -> usize {
    let n = std::fs::read_to_string(dir.join(format!("{name}.jsonl")))
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0);
    n.min(max.unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    /// The configurations of `cake pred ARGS` under the base settings `cake pred` resolves.
    fn configs(args: &[&str]) -> Vec<Settings> {
        let cli = Cli::try_parse_from(
            ["pred", "--data-dir", "data", "--out", "out"]
                .iter()
                .chain(args),
        )
        .unwrap();
        let policy = policy_for_modes(&cli.args.policy, &cli.args.head_budget_modes);
        let base = Settings::resolve(&policy, None).unwrap();
        configurations(&base, &cli.args).unwrap()
    }

    /// The full cache runs once, under the same settings (so into the same folder)
    /// whatever cache sizes, window or head-budget modes the sweep names.
    #[test]
    fn the_full_cache_runs_once_under_settings_that_ignore_the_sweep() {
        let a = configs(&["--policies", "full,cake", "--cache-sizes", "128,256"]);
        let b = configs(&[
            "--policies",
            "cake,full",
            "--cache-sizes",
            "256",
            "--window",
            "8",
            "--head-budget-modes",
            "none,adakv",
        ]);
        let full = |c: &[Settings]| {
            let runs: Vec<String> = c
                .iter()
                .filter(|s| s.spec.method == Method::Full)
                .map(|s| serde_json::to_string(s).unwrap())
                .collect();
            assert_eq!(runs.len(), 1, "{runs:?}");
            runs[0].clone()
        };
        assert_eq!(full(&a), full(&b));
        // Every other configuration keeps the sweep's values.
        let cake: Vec<(usize, usize, HeadBudgets)> = b
            .iter()
            .filter(|s| s.spec.method == Method::Cake)
            .map(|s| {
                (
                    s.spec.cache.cache_size,
                    s.spec.cache.window,
                    s.spec.cache.head_budgets,
                )
            })
            .collect();
        assert_eq!(
            cake,
            [(256, 8, HeadBudgets::None), (256, 8, HeadBudgets::AdaKv)]
        );
        assert_eq!(a.len(), 3);
    }

    /// A scorer or allocator override applies to the methods that have one; the full
    /// cache, which has none, runs beside them instead of failing the sweep.
    #[test]
    fn overrides_leave_the_full_cache_alone() {
        let runs = configs(&["--policies", "full,cake", "--scorer", "h2o"]);
        let methods: Vec<(Method, Option<cake_core::ScorerKind>)> = runs
            .iter()
            .map(|s| (s.spec.method, s.spec.scorer))
            .collect();
        assert_eq!(
            methods,
            [
                (Method::Full, None),
                (Method::Cake, Some(cake_core::ScorerKind::H2o))
            ]
        );
    }
}
