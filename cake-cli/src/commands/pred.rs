//! `cake pred`: LongBench-format predictions for every (policy, cache size) asked for,
//! one folder per configuration, resumable.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use burn::tensor::backend::Backend;
use cake_core::{Compressor, HeadBudgets, KeepAll, Method, PolicySpec};
use cake_longbench::predict::{predict_dataset, predict_sweep};
use cake_longbench::record::{DataError, LongBenchRecord, read_dataset};
use cake_longbench::registry;
use cake_longbench::{
    BoxError, GenerationOutcome, QuestionProtocol, Shard, ShardIndex, SplitPrompt, StopRule,
    SweepGenerator,
};
use cake_models::generate::{Generation, PrefillSnapshot};
use cake_models::tokenizer::TextStreamer;
use cake_models::{Model, Prefilled};

use crate::exit::usage_ensure;
use crate::progress::Progress;
use crate::run_dir::{FolderLock, Manifest, folder_for, lock_folder, lock_shard};
use crate::session::{PolicyGenerator, PolicySweep, Session, greedy_config};
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
    /// Where the question goes: in-prompt (the paper's protocol: the question is inside
    /// the compressed prompt) or after-compression (kvpress's: the context is prefilled
    /// and compressed first, then the question is read against the compressed cache
    /// without being compressed); settings key `question`. After-compression runs get
    /// their own folders (`...-qafter-...`) and decode a sweep's configurations one at a
    /// time. `cake fit` ignores it [default: in-prompt]
    #[arg(long, value_name = "PROTOCOL")]
    pub question: Option<QuestionProtocol>,
}

impl DataArgs {
    /// `policy` (a command's policy flags) with this command's `--question`, as the
    /// flags layer of [`Settings::resolve`].
    pub fn flags(&self, policy: &PolicyArgs) -> PolicyArgs {
        PolicyArgs {
            question: self.question.or(policy.question),
            ..policy.clone()
        }
    }

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
    /// More configurations of the same sweep, sharing its prefill: settings files (the
    /// `cake.toml` keys, e.g. `tau_file = "tune/taus.json"`, `sink = 16`, `allocator =
    /// "static"`) whose keys override this run's settings; each runs at every
    /// --cache-sizes, with its own `policy` (default: the run's). A variant cannot set the
    /// model, the weights or the question
    #[arg(long, value_delimiter = ',', value_name = "FILES")]
    pub variants: Vec<PathBuf>,
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
        &args
            .data
            .flags(&policy_for_modes(&args.policy, &args.head_budget_modes)),
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
/// resuming works the same way. With the question read after compression (every
/// configuration's `question`), each prompt's context part is prefilled once and each
/// configuration reads the question and decodes alone ([`QuestionAfterSweep`]).
pub fn predict_configurations<B: Backend>(
    session: &Session<B>,
    configs: &[Settings],
    args: &Args,
    datasets: &[String],
) -> Result<SweepRun> {
    let max_length = max_length(session, args.max_length)?;
    let question = configs.first().map(|s| s.question).unwrap_or_default();
    usage_ensure!(
        configs.iter().all(|s| s.question == question),
        "the configurations of one sweep read the question the same way: run each --question protocol on its own"
    );
    if question == QuestionProtocol::AfterCompression && args.data.batch.is_some() {
        eprintln!(
            "warning: --batch does not apply to --question after-compression: its configurations decode one at a time"
        );
    }
    let mut dirs = Vec::new();
    let mut locks = Vec::new();
    for settings in configs {
        let dir = folder_for(&args.out, &settings.label(), settings)?;
        locks.push(open_run(&dir, settings, args.shard)?);
        dirs.push(dir);
    }
    let mut sweep = match question {
        QuestionProtocol::InPrompt => Sweep::InPrompt(
            PolicySweep::new(session, configs)
                .with_max_batch(args.data.batch.map(NonZeroUsize::get)),
        ),
        QuestionProtocol::AfterCompression => {
            Sweep::AfterCompression(QuestionAfterSweep::new(session, configs))
        }
    };
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
            sweep.generator(),
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
        progress.finish(format!("{} prefills so far", sweep.prefills()));
    }
    drop(locks);
    Ok(SweepRun {
        dirs,
        prefills: sweep.prefills(),
    })
}

/// The generator of a sweep, by question protocol.
enum Sweep<'a, B: Backend> {
    /// The question inside the compressed prompt.
    InPrompt(PolicySweep<'a, B>),
    /// The question read after compression.
    AfterCompression(QuestionAfterSweep<'a, B>),
}

impl<'a, B: Backend> Sweep<'a, B> {
    /// The generator the prediction loop drives.
    fn generator(&mut self) -> &mut dyn SweepGenerator {
        match self {
            Sweep::InPrompt(sweep) => sweep,
            Sweep::AfterCompression(sweep) => sweep,
        }
    }

    /// Prefills run so far.
    fn prefills(&self) -> usize {
        match self {
            Sweep::InPrompt(sweep) => sweep.prefills,
            Sweep::AfterCompression(sweep) => sweep.prefills,
        }
    }
}

/// A [`SweepGenerator`] for `--question after-compression`
/// ([`QuestionProtocol::AfterCompression`]) over a [`Session`]. Each prompt comes split
/// ([`cake_longbench::build_split_prompt`]); its text is tokenized whole, as in-prompt runs
/// tokenize it, and its tokens are split where the question part starts (the tokens that
/// begin at or after the question's first byte: a token straddling the boundary stays with
/// the context), so both protocols read the same token ids. The context tokens are
/// prefilled once with the full cache (a [`PrefillSnapshot`]); each configuration then
/// compresses that prefill with its policy ([`PrefillSnapshot::resume`]), reads the question
/// tokens against the compressed cache ([`read_question`]) and decodes. Configurations are
/// decoded one at a time (`--batch` does not apply: a batch resumes from the snapshot
/// itself).
pub struct QuestionAfterSweep<'a, B: Backend> {
    session: &'a Session<B>,
    configs: &'a [Settings],
    snapshot: Option<PrefillSnapshot<B>>,
    question: Vec<u32>,
    /// Prefills (of context parts) run so far.
    pub prefills: usize,
}

impl<'a, B: Backend> QuestionAfterSweep<'a, B> {
    /// A sweep of `configs` over `session`, reading each question after compression.
    pub fn new(session: &'a Session<B>, configs: &'a [Settings]) -> Self {
        Self {
            session,
            configs,
            snapshot: None,
            question: Vec::new(),
            prefills: 0,
        }
    }
}

impl<B: Backend> SweepGenerator for QuestionAfterSweep<'_, B> {
    fn configurations(&self) -> usize {
        self.configs.len()
    }

    fn question(&self) -> QuestionProtocol {
        QuestionProtocol::AfterCompression
    }

    fn prepare(&mut self, _: &str) -> Result<(), BoxError> {
        Err("--question after-compression reads split prompts only".into())
    }

    fn prepare_split(&mut self, prompt: &SplitPrompt) -> Result<(), BoxError> {
        self.snapshot = None;
        let (context, question) = split_ids(self.session, prompt)?;
        self.snapshot = Some(PrefillSnapshot::capture_with(
            &self.session.model,
            &context,
            crate::session::sweep_recorder(self.configs),
        )?);
        self.question = question;
        self.prefills += 1;
        Ok(())
    }

    fn generate(
        &mut self,
        configuration: usize,
        max_new_tokens: usize,
        stop: &StopRule,
    ) -> Result<GenerationOutcome, BoxError> {
        let session = self.session;
        let model = &session.model;
        let snapshot = self
            .snapshot
            .as_ref()
            .ok_or("generate called before prepare_split")?;
        let settings = self
            .configs
            .get(configuration)
            .ok_or("no such configuration")?;
        let compressor = settings
            .spec
            .compressor::<B>(&session.name, model.num_layers())?;
        let run = snapshot.resume(model, compressor)?;
        let mut run = read_question(run, model, &self.question)?
            .with_config(greedy_config(max_new_tokens, stop))
            .with_eos(session.tokenizer.eos_token_ids())
            .with_text(TextStreamer::new(&session.tokenizer, true), |_: &str| {});
        let output = run.decode()?;
        Ok(GenerationOutcome {
            text: output.text.unwrap_or_default(),
            prompt_tokens: snapshot.prefilled().prompt_len + self.question.len(),
            new_tokens: output.tokens.len(),
        })
    }
}

/// The token ids of a split prompt's context part and question part: the whole text
/// tokenized as [`Session::encode`] does (special tokens added), cut before the first
/// token that starts at or after the question's first byte and follows every token that
/// starts before it (a token straddling the boundary stays with the context; tokens
/// without text, such as an added BOS, stay where they are).
///
/// # Errors
/// When the tokenizer fails, or when either part has no token.
pub fn split_ids<B: Backend>(
    session: &Session<B>,
    prompt: &SplitPrompt,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let text = prompt.prompt.text.as_str();
    let encoding = session
        .tokenizer
        .inner()
        .encode(text, true)
        .map_err(|e| anyhow!("cannot tokenize the prompt: {e}"))?;
    let ids = encoding.get_ids();
    anyhow::ensure!(
        ids == session.encode(text)?.as_slice(),
        "the tokenizer's ids with offsets differ from its plain ids"
    );
    let at = encoding
        .get_offsets()
        .iter()
        .rposition(|&(start, end)| start < end && start < prompt.question_start)
        .map_or(0, |i| i + 1);
    anyhow::ensure!(
        at > 0 && at < ids.len(),
        "the prompt's context part or question part has no token (split at byte {} of {})",
        prompt.question_start,
        text.len()
    );
    Ok((ids[..at].to_vec(), ids[at..].to_vec()))
}

/// Reads `question` (token ids) against the caches of `run`, a generation right after its
/// prefill (or [`PrefillSnapshot::resume`]) whose compressor has compressed the context,
/// and returns the generation ready to decode the answer ([`Generation::decode`]).
///
/// The question tokens go through the decoding path one token at a time
/// ([`Model::forward_decode`], at the positions after the context): no API prefills a
/// chunk of tokens against a non-empty cache (`Model::prefill` fills empty caches). Their
/// steps run with [`KeepAll`]'s hooks, so decoding-time eviction does not apply to them:
/// the question is read, not compressed, and every head's cache grows by its token count.
/// The compressor is then told to keep those rows ([`Compressor::keep_appended`]): decoding
/// follows the paper's rule (`docs/algorithm.md`, section 6: one token dropped per
/// generated token, the size fixed), at the size the head held after the question. The
/// first answer token comes from the last question token's logits.
///
/// # Errors
/// When `run` has no prefill, or the model rejects a question token.
pub fn read_question<'m, B: Backend>(
    run: Generation<'m, B, Compressor<B>>,
    model: &'m Model<B>,
    question: &[u32],
) -> Result<Generation<'m, B, Compressor<B>>> {
    let prefilled = run
        .prefilled()
        .cloned()
        .ok_or_else(|| anyhow!("no prefill to read the question after"))?;
    let (mut compressor, mut caches) = run.into_parts();
    let mut last = None;
    for (i, &token) in question.iter().enumerate() {
        let position = prefilled.prompt_len + i;
        last = Some(model.forward_decode(token, position, &mut caches, &mut KeepAll)?);
    }
    let logits = match last {
        Some(logits) => logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| anyhow!("cannot read the question's logits: {e:?}"))?,
        None => prefilled.logits.clone(),
    };
    compressor.keep_appended(question.len());
    let prefilled = Prefilled {
        prompt_len: prefilled.prompt_len + question.len(),
        logits,
        ..prefilled
    };
    Ok(Generation::new(model)
        .with_compressor(compressor)
        .with_prefill(caches, prefilled))
}

/// Every (method, cache size) configuration asked for, in order, validated; then each
/// `--variants` file's at every cache size.
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
            // It reads the question as the sweep's policies do (its own folder per
            // protocol), so that they are compared with the full cache read the same way.
            out.push(Settings {
                model: base.model.clone(),
                weights: base.weights,
                question: base.question,
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
    for path in &args.variants {
        let variant = Settings::resolve_variant(
            &args
                .data
                .flags(&policy_for_modes(&args.policy, &args.head_budget_modes)),
            args.data.model.as_deref(),
            path,
        )?;
        add_variant(&mut out, &variant, &args.cache_sizes)?;
    }
    Ok(out)
}

/// Appends `variant` at each of `sizes` (its own cache size when none are given; once for
/// the full cache), skipping a configuration the sweep already has.
fn add_variant(configs: &mut Vec<Settings>, variant: &Settings, sizes: &[usize]) -> Result<()> {
    let mut add = |settings: Settings| {
        if !configs.contains(&settings) {
            configs.push(settings);
        }
    };
    if variant.spec.keeps_all() || sizes.is_empty() {
        add(variant.clone());
        return Ok(());
    }
    for &size in sizes {
        add(variant
            .with_method(variant.spec.method, size)
            .map_err(|e| {
                crate::exit::UsageError(format!("{e} (a --variants file at C = {size})"))
            })?);
    }
    Ok(())
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
    if settings.question == QuestionProtocol::AfterCompression {
        let run = predict_configurations(session, std::slice::from_ref(settings), args, datasets)?;
        return run
            .dirs
            .into_iter()
            .next()
            .context("no run folder for the configuration");
    }
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
        let base = Settings::resolve(&cli.args.data.flags(&policy), None).unwrap();
        configurations(&base, &cli.args).unwrap()
    }

    /// A tiny random-weight Llama folder (cake-models' parity fixture) with the byte-level
    /// tokenizer of the end-to-end tests.
    fn tiny_session() -> (tempfile::TempDir, Session<cake_models::Cpu>) {
        let dir = tempfile::tempdir().unwrap();
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        for entry in std::fs::read_dir(root.join("../cake-models/fixtures/tiny/llama")).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
        std::fs::copy(
            root.join("tests/fixtures/byte_tokenizer.json"),
            dir.path().join("tokenizer.json"),
        )
        .unwrap();
        let session = Session::open(dir.path().to_str(), &Default::default()).unwrap();
        (dir, session)
    }

    /// `--question after-compression` on the tiny model (3 layers, 2 KV heads): the prompt's
    /// tokens split where its question starts are the in-prompt tokens; the context alone
    /// is compressed (at most C x L rows per KV head after its prefill), the question's
    /// tokens are then appended whole to every head (not compressed), and decoding holds
    /// each head at that size (the full cache grows by the fed tokens).
    #[test]
    fn the_question_is_read_after_compression_without_being_compressed() {
        let (_dir, session) = tiny_session();
        let model = &session.model;
        let (layers, kv) = (model.num_layers(), session.config().num_kv_heads);
        let spec = registry::lookup("synth_kv").unwrap();
        let record = LongBenchRecord {
            input: "What is key k7?".into(),
            context: "{\"k1\": \"v1\", \"k7\": \"v777\", \"k9\": \"v9\"}".into(),
            answers: vec!["v777".into()],
            length: 10,
            dataset: "synth_kv".into(),
            language: "en".into(),
            all_classes: None,
            id: "kv-7".into(),
            depth: None,
            needle: None,
        };
        let split = cake_longbench::build_split_prompt(&record, spec, &session, 240).unwrap();
        let (context, question) = split_ids(&session, &split).unwrap();
        assert_eq!(
            [context.clone(), question.clone()].concat(),
            session.encode(&split.prompt.text).unwrap()
        );
        // The byte-level tokenizer: one token per byte of the question part.
        assert_eq!(question.len(), split.question().len());
        // The chat template's tail (the generation prompt) is part of the question.
        assert_eq!(
            split.question(),
            "\n\nOnly give me the value and do not output any other words.\n\nQuestion: What is key k7?\nAnswer:\nassistant:"
        );
        let (s, q) = (context.len(), question.len());
        let snapshot = PrefillSnapshot::capture(model, &context).unwrap();
        let c = 16;
        for method in [Method::Cake, Method::SnapKv, Method::H2o, Method::Full] {
            let mut policy = PolicySpec::new(method);
            policy.cache.cache_size = c;
            policy.cache.window = 4;
            let compressor = policy.compressor(&session.name, layers).unwrap();
            let run = snapshot.resume(model, compressor).unwrap();
            let lens = |caches: &[cake_core::LayerCache<cake_models::Cpu>]| -> Vec<usize> {
                caches.iter().flat_map(|c| c.head_lens()).collect()
            };
            let before = lens(run.caches());
            let rows: usize = before.iter().sum();
            if method == Method::Full {
                assert_eq!(rows, s * layers * kv);
            } else {
                assert!(s > c && rows <= c * layers * kv, "{method}: {rows}");
            }
            let run = read_question(run, model, &question).unwrap();
            let grown: Vec<usize> = before.iter().map(|n| n + q).collect();
            assert_eq!(lens(run.caches()), grown, "{method}");
            for cache in run.caches() {
                for kept in cache.positions() {
                    assert_eq!(kept[kept.len() - q..], (s..s + q).collect::<Vec<_>>()[..]);
                }
            }
            assert_eq!(run.prefilled().unwrap().prompt_len, s + q);
            let steps = 5;
            let mut run = run.with_config(cake_models::generate::GenerationConfig::greedy(
                steps, steps,
            ));
            let output = run.decode().unwrap();
            assert_eq!(output.tokens.len(), steps);
            let after = lens(run.caches());
            let want: Vec<usize> = match method {
                // The last token is sampled, not fed.
                Method::Full => grown.iter().map(|n| n + steps - 1).collect(),
                _ => grown.clone(),
            };
            assert_eq!(after, want, "{method}");
        }
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
    fn variants_join_the_sweep_at_every_cache_size_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let sink = file("sink.toml", "sink = 16\n");
        let heads = file("heads.toml", "head_budgets = \"adakv\"\n");
        let snap = file("snap.toml", "policy = \"snapkv\"\n");
        let same = file("same.toml", "window = 32\n");
        let variants = [sink, heads, snap, same].join(",");
        let runs = configs(&[
            "--policies",
            "full,cake",
            "--cache-sizes",
            "64,128",
            "--window",
            "32",
            "--variants",
            &variants,
        ]);
        let described: Vec<(Method, usize, usize, HeadBudgets)> = runs
            .iter()
            .map(|s| {
                let c = &s.spec.cache;
                (s.spec.method, c.cache_size, c.sink, c.head_budgets)
            })
            .collect();
        let (none, adakv) = (HeadBudgets::None, HeadBudgets::AdaKv);
        let full = runs[0].spec.cache.cache_size;
        assert_eq!(
            described,
            [
                (Method::Full, full, 0, none),
                (Method::Cake, 64, 0, none),
                (Method::Cake, 128, 0, none),
                (Method::Cake, 64, 16, none),
                (Method::Cake, 128, 16, none),
                (Method::Cake, 64, 0, adakv),
                (Method::Cake, 128, 0, adakv),
                (Method::SnapKv, 64, 0, none),
                (Method::SnapKv, 128, 0, none),
                // `same.toml` repeats the sweep's own settings: nothing is added twice.
            ]
        );
        // A variant may not change what the prefill is shared over, and must exist.
        let refused = |path: &str| {
            let cli =
                Cli::try_parse_from(["pred", "--data-dir", "d", "--out", "o", "--variants", path])
                    .unwrap();
            let base = Settings::resolve(&cli.args.data.flags(&cli.args.policy), None).unwrap();
            format!("{:#}", configurations(&base, &cli.args).unwrap_err())
        };
        let err = refused(&file("model.toml", "weights = \"stored\"\n"));
        assert!(
            err.contains("model.toml") && err.contains("weights"),
            "{err}"
        );
        let err = refused(&dir.path().join("nope.toml").display().to_string());
        assert!(
            err.contains("nope.toml") && err.contains("--variants"),
            "{err}"
        );
    }

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
