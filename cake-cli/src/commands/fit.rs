//! `cake fit`: measure layer preferences and K/V spread on calibration prompts, fit a
//! polynomial score function of the layer index, and write the file
//! `--allocator static --score-fn FILE` reads (`docs/algorithm.md` section 9).

use std::path::PathBuf;

use crate::progress::Progress;
use anyhow::{Context, Result};
use cake_longbench::prompt::build_prompt;
use cake_longbench::record::read_dataset;
use cake_longbench::registry;
use cake_models::PrefillLogits;
use cake_scoring_fit::{
    FitConfig, LayerStatsRow, StatsCollector, fit_score_function, plot_fit, rows_for_head,
    write_csv, write_jsonl,
};

use super::pred::DataArgs;
use crate::session::Session;
use crate::settings::{PolicyArgs, Settings};

/// Arguments of `cake fit`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub data: DataArgs,
    /// Calibration prompts per dataset
    #[arg(long, default_value_t = 8)]
    pub max_samples: usize,
    /// Prompt budget in tokens (middle truncation)
    #[arg(long, default_value_t = 4096)]
    pub max_length: usize,
    /// Principal components whose explained variance is recorded
    #[arg(long, default_value_t = 4)]
    pub top_k: usize,
    /// Folds of the degree cross-validation
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Also measure every KV head (its group of query heads and its own K/V states) and
    /// fit one polynomial per KV head
    #[arg(long)]
    pub per_head: bool,
    /// Output folder: stats.jsonl, stats.csv, score_function.json, fit.md, fit.svg/.png
    /// (and fit-head-H.svg per KV head with --per-head)
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Runs `cake fit`.
pub fn run(args: Args) -> Result<()> {
    let settings = Settings::resolve(&args.policy, args.data.model.as_deref())?;
    let device = Default::default();
    let session =
        Session::<cake_models::Cpu>::open_as(settings.model.as_deref(), settings.weights, &device)?;
    std::fs::create_dir_all(&args.out).with_context(|| {
        format!(
            "cannot create {}: choose a writable --out",
            args.out.display()
        )
    })?;
    // Temperatures as the policy resolves them: the `--tau-file` table when given, else the
    // published one, at each prompt's effective cache size (known only then with --ratio).
    let tau_file = match &settings.spec.tau_file {
        Some(path) => Some(cake_core::TauFile::read(path)?),
        None => None,
    };
    let datasets = args.data.dataset_names()?;
    let mut rows: Vec<LayerStatsRow> = Vec::new();
    for name in &datasets {
        let spec = registry::lookup(name)?;
        let records: Vec<_> = read_dataset(&args.data.data_dir, name)?
            .take(args.max_samples)
            .collect::<Result<_, _>>()?;
        let mut progress = Progress::new(records.len() as u64, format!("fit {name}"));
        for record in &records {
            let prompt = build_prompt(record, spec, &session, args.max_length)?;
            let ids = session.encode(&prompt.text)?;
            let cache = &settings.spec.cache;
            let taus = cache.resolve_tau_in(
                tau_file.as_ref(),
                &session.name,
                cache.cache_size_for(ids.len()),
            );
            let mut collector = StatsCollector::new(
                settings.spec.cache.window,
                args.top_k,
                (taus.tau1, taus.tau2),
                args.per_head,
            );
            let mut caches = session.model.new_caches();
            session
                .model
                .prefill(&ids, &mut caches, &mut collector, PrefillLogits::Last)?;
            rows.extend(
                collector
                    .into_rows(name, &record.id)
                    .with_context(|| format!("measuring {name} record {}", record.id))?,
            );
            progress.inc(1);
        }
        progress.finish(format!("{} records", records.len()));
    }
    write_jsonl(&args.out.join("stats.jsonl"), &rows)?;
    write_csv(&args.out.join("stats.csv"), &rows)?;
    let mut config = FitConfig::new(session.name.clone(), session.config().num_kv_heads);
    config.folds = args.folds;
    config.per_head = args.per_head;
    let report = fit_score_function(&rows, &config)?;
    report
        .to_score_file()
        .save(&args.out.join("score_function.json"))?;
    let markdown = report.to_markdown();
    std::fs::write(args.out.join("fit.md"), &markdown)?;
    let layer_rows = rows_for_head(&rows, None);
    for name in ["fit.svg", "fit.png"] {
        plot_fit(&layer_rows, &report.poly, &args.out.join(name))?;
    }
    for head in &report.heads {
        let path = args.out.join(format!("fit-head-{}.svg", head.kv_head));
        plot_fit(&rows_for_head(&rows, Some(head.kv_head)), &head.poly, &path)?;
    }
    print!("{markdown}");
    eprintln!(
        "wrote {} (use: --allocator static --score-fn {})",
        args.out.display(),
        args.out.join("score_function.json").display()
    );
    Ok(())
}
