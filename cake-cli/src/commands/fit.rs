//! `cake fit`: measure layer preferences and K/V spread on calibration prompts, fit a
//! polynomial score function of the layer index, and write the file
//! `--allocator static --score-fn FILE` reads (`cake-algorithm.md` section 9).

use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::tensor::{Tensor, backend::Backend};
use cake_core::stats::{layer_preference, window_attention};
use cake_core::{CacheError, KvCompressor, LayerCache, PrefillLayer};
use cake_longbench::prompt::build_prompt;
use cake_longbench::record::read_dataset;
use cake_longbench::registry;
use cake_models::PrefillLogits;
use cake_scoring_fit::{
    FitConfig, LayerMeasurement, LayerStatsRow, fit_score_function, pca_summary_layer,
    pca_summary_per_head, plot_fit, rows_for_head, sample_rows, write_csv, write_jsonl,
};
use indicatif::ProgressBar;

use crate::session::Session;
use crate::settings::{PolicyArgs, Settings};

/// Arguments of `cake fit`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder of LongBench-format `<dataset>.jsonl` calibration files (e.g. `cake suite`)
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Datasets to use (default: every known `<name>.jsonl` in --data-dir)
    #[arg(long, value_delimiter = ',')]
    pub datasets: Vec<String>,
    /// Model: smollm2-135m (default), qwen2.5-coder-0.5b, a .gguf file or a HF folder
    #[arg(long)]
    pub model: Option<String>,
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

/// Records each layer's preference parts and K/V PCA during a prefill (keeps everything).
struct StatsCollector {
    window: usize,
    top_k: usize,
    taus: (f64, f64),
    per_head: bool,
    /// Whole-layer measurements, one per layer.
    layers: Vec<LayerMeasurement>,
    /// `heads[l][h]`: KV head `h` of layer `l` (empty unless `per_head`).
    heads: Vec<Vec<LayerMeasurement>>,
    error: Option<anyhow::Error>,
}

impl StatsCollector {
    /// Measurements of one layer: the whole layer, then each KV head when `per_head`.
    fn measure<B: Backend>(
        &self,
        queries: Tensor<B, 3>,
        cache: &LayerCache<B>,
    ) -> Result<(LayerMeasurement, Vec<LayerMeasurement>)> {
        let (Some(keys), Some(values)) = (cache.keys(), cache.values()) else {
            anyhow::bail!("layer cached nothing");
        };
        let [kv_heads, len, dim] = keys.dims();
        // [H, w, S]
        let attn = window_attention(queries, keys.clone(), self.window);
        let (tau1, tau2) = self.taus;
        let key_states = host(&keys)?;
        let value_states = host(&values)?;
        let layer = LayerMeasurement::from_parts(
            layer_preference(&attn),
            tau1,
            tau2,
            pca_summary_layer(&key_states, kv_heads, len, dim, self.top_k)?,
            pca_summary_layer(&value_states, kv_heads, len, dim, self.top_k)?,
        );
        if !self.per_head {
            return Ok((layer, Vec::new()));
        }
        let group = attn.dims()[0] / kv_heads;
        let key_pca = pca_summary_per_head(&key_states, kv_heads, len, dim, self.top_k)?;
        let value_pca = pca_summary_per_head(&value_states, kv_heads, len, dim, self.top_k)?;
        let heads = (0..kv_heads)
            .map(|h| {
                // [G, w, S]: the query heads that read KV head h
                let group_attn = attn.clone().narrow(0, h * group, group);
                LayerMeasurement::from_parts(
                    layer_preference(&group_attn),
                    tau1,
                    tau2,
                    key_pca[h],
                    value_pca[h],
                )
            })
            .collect();
        Ok((layer, heads))
    }
}

/// A `[Hkv, S, d]` K/V tensor copied to the host.
fn host<B: Backend>(t: &Tensor<B, 3>) -> Result<Vec<f32>> {
    t.clone()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("cannot read K/V back: {e:?}"))
}

impl<B: Backend> KvCompressor<B> for StatsCollector {
    fn after_prefill_layer(
        &mut self,
        step: PrefillLayer<B>,
        caches: &mut [LayerCache<B>],
    ) -> Result<(), CacheError> {
        if self.error.is_some() {
            return Ok(());
        }
        let layer = step.layer;
        match self.measure(step.queries, &caches[layer]) {
            Ok((whole, heads)) => {
                self.layers.push(whole);
                self.heads.push(heads);
            }
            Err(e) => self.error = Some(e.context(format!("layer {layer}"))),
        }
        Ok(())
    }
}

/// Runs `cake fit`.
pub fn run(args: Args) -> Result<()> {
    let settings = Settings::resolve(&args.policy, args.model.as_deref())?;
    let device = Default::default();
    let session = Session::<cake_models::Cpu>::open(settings.model.as_deref(), &device)?;
    std::fs::create_dir_all(&args.out).with_context(|| {
        format!(
            "cannot create {}: choose a writable --out",
            args.out.display()
        )
    })?;
    let taus = settings.cache.resolve_tau(&session.name);
    let datasets = if args.datasets.is_empty() {
        super::pred::known_datasets(&args.data_dir)?
    } else {
        args.datasets.clone()
    };
    let mut rows: Vec<LayerStatsRow> = Vec::new();
    for name in &datasets {
        let spec = registry::lookup(name)?;
        let records: Vec<_> = read_dataset(&args.data_dir, name)?
            .take(args.max_samples)
            .collect::<Result<_, _>>()?;
        let bar = ProgressBar::new(records.len() as u64);
        bar.set_message(name.clone());
        for record in &records {
            let prompt = build_prompt(record, spec, &session, args.max_length)?;
            let ids = session.encode(&prompt.text)?;
            let mut collector = StatsCollector {
                window: settings.cache.window,
                top_k: args.top_k,
                taus: (taus.tau1, taus.tau2),
                per_head: args.per_head,
                layers: Vec::new(),
                heads: Vec::new(),
                error: None,
            };
            let mut caches = session.model.new_caches();
            session
                .model
                .prefill(&ids, &mut caches, &mut collector, PrefillLogits::Last)?;
            if let Some(error) = collector.error {
                return Err(error.context(format!("measuring {name} record {}", record.id)));
            }
            rows.extend(sample_rows(name, &record.id, None, &collector.layers)?);
            if args.per_head {
                for h in 0..session.config().num_kv_heads {
                    let head: Vec<LayerMeasurement> =
                        collector.heads.iter().map(|layer| layer[h]).collect();
                    rows.extend(sample_rows(name, &record.id, Some(h), &head)?);
                }
            }
            bar.inc(1);
        }
        bar.finish();
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
