//! `cake tune`: grid search of CAKE's preference temperatures on calibration records.
//!
//! For every cache size C and every grid point (tau1, tau2[, gamma]) CAKE answers the
//! calibration records; the predictions are scored as `cake eval` scores them and the
//! objective is the average suite score (mean over datasets of the dataset score, 2
//! decimals). The best point per C (ties: the smallest tau1, then tau2, then gamma) goes
//! into a temperature table in the published table's format (`taus.json`, read back with
//! `--tau-file`), and every point's score into `tune.md` / `tune.json`.
//!
//! Each grid point is one configuration of a policy sweep (`cake pred`'s
//! [`predict_configurations`]): every prompt is prefilled once with the full cache and each
//! configuration replays the recorded prefill hooks on a copy of it, then decodes. The
//! predictions live in `<out>/runs/<config folder>/` and are resumed on a rerun.
//!
//! `--sink 0,4,8,16` adds the sink ablation as an axis (`PolicyConfig::sink`): every grid
//! point runs at each N, `tune.md` gives the best calibration average per (C, N), and the
//! chosen point names its N. This is the way to choose N: on calibration records only,
//! never on the evaluation's.
//!
//! The calibration records must not be the evaluation records: write them with another
//! seed (`cake suite --out calib --seed 1`; the evaluation suite defaults to seed 0).
//! Synthetic ids do not depend on the seed, so `--eval-data DIR` compares the records'
//! text (input and context) and warns on overlap.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cake_core::{AllocatorKind, Method, TauEntry, TauTable};
use cake_longbench::eval::evaluate_dir;
use cake_longbench::record::read_dataset;
use serde::Serialize;

use super::eval::suite_average;
use super::pred::{self, DataArgs, predict_configurations};
use crate::exit::{usage_bail, usage_ensure};
use crate::session::Session;
use crate::settings::{PolicyArgs, Settings};

/// Arguments of `cake tune`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub data: DataArgs,
    /// Cache sizes C to tune for, e.g. 64,128,256
    #[arg(long, value_delimiter = ',', required = true)]
    pub cache_sizes: Vec<usize>,
    /// Grid of the entropy temperature tau1
    #[arg(long, value_delimiter = ',', default_value = "0.5,1,2,4")]
    pub tau1: Vec<f64>,
    /// Grid of the variance temperature tau2
    #[arg(long, value_delimiter = ',', default_value = "0.5,1,2")]
    pub tau2: Vec<f64>,
    /// Grid of gamma, the variance weight of CAKE's indicator [default: the settings'
    /// gamma alone]; the table keeps only the temperatures, the report names the best gamma
    #[arg(long, value_delimiter = ',')]
    pub gamma: Vec<f64>,
    /// Grid of the sink ablation N (the first N prompt tokens always kept, inside the
    /// budget), e.g. 0,4,8,16 [default: the settings' sink alone, 0]; tune.md gives the
    /// best average per C and N, the table keeps only the temperatures
    #[arg(long, value_delimiter = ',', value_name = "N")]
    pub sink: Vec<usize>,
    /// Use only the first N records of each dataset
    #[arg(long)]
    pub max_samples: Option<usize>,
    /// Prompt budget in tokens (middle truncation) [default: as `cake pred`]
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Evaluation data folder: warn when a calibration record (same input and context)
    /// is also in it
    #[arg(long, value_name = "DIR")]
    pub eval_data: Option<PathBuf>,
    /// Output folder: taus.json, tune.md, tune.json, runs/ (predictions, resumable)
    #[arg(long)]
    pub out: PathBuf,
    /// Observation / recent window w [default: 32]
    #[arg(long)]
    pub window: Option<usize>,
    /// Width of the average pooling over key positions [default: 5]
    #[arg(long)]
    pub pool_kernel: Option<usize>,
    /// Evict all layers once after prefill instead of layer by layer (cascading)
    #[arg(long)]
    pub no_cascading: bool,
    /// Settings file (default: ./cake.toml when present)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// One grid point at one cache size, and its score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GridPoint {
    /// Cache size C.
    pub cache_size: usize,
    /// Entropy temperature.
    pub tau1: f64,
    /// Variance temperature.
    pub tau2: f64,
    /// Variance weight of the indicator.
    pub gamma: f64,
    /// Sink ablation: the first `sink` prompt tokens always kept (0: the paper's rule).
    pub sink: usize,
    /// The objective: mean over datasets of the dataset score, 2 decimals (`None` when
    /// no dataset has a plain score).
    pub average: Option<f64>,
    /// Per-dataset scores (0-100, as in result.json).
    pub scores: BTreeMap<String, f64>,
    /// The run folder of its predictions, relative to the output folder.
    pub dir: String,
}

/// What `tune.json` holds.
#[derive(Debug, Serialize)]
struct Report<'a> {
    model: &'a str,
    data_dir: String,
    datasets: &'a [String],
    max_samples: Option<usize>,
    objective: &'static str,
    tie_break: &'static str,
    grid: Grid<'a>,
    prefills: usize,
    points: &'a [GridPoint],
    best: Vec<&'a GridPoint>,
    table: &'static str,
}

#[derive(Debug, Serialize)]
struct Grid<'a> {
    cache_sizes: &'a [usize],
    tau1: &'a [f64],
    tau2: &'a [f64],
    gamma: &'a [f64],
    sink: &'a [usize],
}

const OBJECTIVE: &str =
    "mean over datasets of the dataset score (as cake eval's average), rounded to 2 decimals";
const TIE_BREAK: &str = "the smallest tau1, then tau2, then gamma, then sink";
const TABLE_FILE: &str = "taus.json";

/// Runs `cake tune`.
pub fn run(args: Args) -> Result<()> {
    let tau1 = grid_axis("--tau1", &args.tau1)?;
    let tau2 = grid_axis("--tau2", &args.tau2)?;
    let mut sizes = args.cache_sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let layer = PolicyArgs {
        policy: Some(Method::Cake),
        window: args.window,
        pool_kernel: args.pool_kernel,
        no_cascading: args.no_cascading,
        config: args.config.clone(),
        ..PolicyArgs::default()
    };
    let base = Settings::resolve(&args.data.flags(&layer), args.data.model.as_deref())?;
    usage_ensure!(
        base.spec.cache.ratio.is_none(),
        "cake tune tunes at fixed cache sizes (--cache-sizes): unset `ratio` in the settings"
    );
    usage_ensure!(
        matches!(base.spec.kinds(), Some((AllocatorKind::Preference, _))),
        "cake tune tunes the preference allocator's temperatures: unset `allocator` in the settings (it is {:?})",
        base.spec.allocator
    );
    let gamma = if args.gamma.is_empty() {
        vec![base.spec.cache.gamma]
    } else {
        grid_axis("--gamma", &args.gamma)?
    };
    let sinks = if args.sink.is_empty() {
        vec![base.spec.cache.sink]
    } else {
        let mut sinks = args.sink.clone();
        sinks.sort_unstable();
        sinks.dedup();
        sinks
    };
    let axes = Axes {
        tau1: &tau1,
        tau2: &tau2,
        gamma: &gamma,
        sink: &sinks,
    };
    let configs = grid_settings(&base, &sizes, &axes)?;
    let pred_args = pred::Args {
        data: args.data.clone(),
        policies: Vec::new(),
        cache_sizes: Vec::new(),
        head_budget_modes: Vec::new(),
        variants: Vec::new(),
        max_length: args.max_length,
        max_samples: args.max_samples,
        out: args.out.join("runs"),
        no_sweep: false,
        shard: None,
        policy: PolicyArgs::default(),
    };
    let datasets = args.data.dataset_names()?;
    if let Some(eval) = &args.eval_data {
        for warning in overlap_warnings(&args.data.data_dir, eval, &datasets, args.max_samples)? {
            eprintln!("warning: {warning}");
        }
    }
    let device = Default::default();
    let session =
        Session::<cake_models::Cpu>::open_as(base.model.as_deref(), base.weights, &device)?;
    eprintln!(
        "tuning {} grid point(s) x {} cache size(s) on {} dataset(s), one prefill per prompt",
        configs.len() / sizes.len(),
        sizes.len(),
        datasets.len()
    );
    let sweep = predict_configurations(&session, &configs, &pred_args, &datasets)?;
    let mut points = Vec::with_capacity(configs.len());
    for (settings, dir) in configs.iter().zip(&sweep.dirs) {
        let result =
            evaluate_dir(dir, false).with_context(|| format!("cannot score {}", dir.display()))?;
        let cache = &settings.spec.cache;
        let (t1, t2) = cache.taus();
        points.push(GridPoint {
            cache_size: cache.cache_size,
            tau1: t1,
            tau2: t2,
            gamma: cache.gamma,
            sink: cache.sink,
            average: suite_average(&result.scores),
            scores: result
                .scores
                .iter()
                .filter_map(|(name, s)| match s {
                    cake_longbench::DatasetScore::Plain(v) => Some((name.clone(), *v)),
                    cake_longbench::DatasetScore::Buckets(_) => None,
                })
                .collect(),
            dir: dir
                .strip_prefix(&args.out)
                .unwrap_or(dir)
                .display()
                .to_string(),
        });
    }
    let best = best_points(&points);
    let table = TauTable {
        source: format!(
            "cake tune on {} ({}; {} records per dataset at most), objective: {OBJECTIVE}",
            args.data.data_dir.display(),
            datasets.join(", "),
            args.max_samples
                .map_or("all".to_string(), |n| n.to_string())
        ),
        entries: best
            .iter()
            .map(|p| TauEntry {
                model: session.name.clone(),
                cache_size: p.cache_size,
                tau1: p.tau1,
                tau2: p.tau2,
            })
            .collect(),
    };
    let report = Report {
        model: &session.name,
        data_dir: args.data.data_dir.display().to_string(),
        datasets: &datasets,
        max_samples: args.max_samples,
        objective: OBJECTIVE,
        tie_break: TIE_BREAK,
        grid: Grid {
            cache_sizes: &sizes,
            tau1: &tau1,
            tau2: &tau2,
            gamma: &gamma,
            sink: &sinks,
        },
        prefills: sweep.prefills,
        points: &points,
        best: best.clone(),
        table: TABLE_FILE,
    };
    let markdown = tune_markdown(&session.name, &points, &best, &axes);
    let write = |name: &str, text: String| {
        let path = args.out.join(name);
        std::fs::write(&path, text).with_context(|| {
            format!(
                "cannot write {}: check that --out is writable",
                path.display()
            )
        })
    };
    write(TABLE_FILE, table.to_json())?;
    write("tune.json", serde_json::to_string_pretty(&report)? + "\n")?;
    write("tune.md", markdown.clone())?;
    print!("{markdown}");
    eprintln!(
        "wrote {} (use: --tau-file {}), tune.md and tune.json",
        args.out.join(TABLE_FILE).display(),
        args.out.join(TABLE_FILE).display()
    );
    Ok(())
}

/// A grid axis sorted and deduplicated; every value must be a positive finite number.
fn grid_axis(flag: &str, values: &[f64]) -> Result<Vec<f64>> {
    usage_ensure!(!values.is_empty(), "{flag} needs at least one value");
    for &v in values {
        if flag == "--gamma" {
            usage_ensure!(
                v.is_finite() && v >= 0.0,
                "{flag} value {v} must be a finite number >= 0"
            );
        } else {
            usage_ensure!(
                v.is_finite() && v > 0.0,
                "{flag} value {v} must be a positive finite number"
            );
        }
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.dedup();
    Ok(sorted)
}

/// The grid's axes besides the cache size, each sorted and deduplicated.
#[derive(Debug, Clone, Copy)]
struct Axes<'a> {
    tau1: &'a [f64],
    tau2: &'a [f64],
    gamma: &'a [f64],
    sink: &'a [usize],
}

/// The settings of every (C, tau1, tau2, gamma, sink), in that nesting order, validated;
/// the grid gives both temperatures, so no table is looked up.
fn grid_settings(base: &Settings, sizes: &[usize], axes: &Axes<'_>) -> Result<Vec<Settings>> {
    let mut out = Vec::new();
    for &c in sizes {
        for &t1 in axes.tau1 {
            for &t2 in axes.tau2 {
                for &g in axes.gamma {
                    for &n in axes.sink {
                        let mut s = base.clone();
                        s.spec.tau_file = None;
                        s.spec.cache.cache_size = c;
                        s.spec.cache.tau1 = Some(t1);
                        s.spec.cache.tau2 = Some(t2);
                        s.spec.cache.gamma = g;
                        s.spec.cache.sink = n;
                        if let Err(e) = s.spec.validate() {
                            usage_bail!("{e} (from --cache-sizes {c})");
                        }
                        out.push(s);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The best point of each cache size (in increasing C): the highest average; ties (and
/// points without an average, which lose to any) go to the smallest tau1, then tau2, then
/// gamma, then sink.
pub fn best_points(points: &[GridPoint]) -> Vec<&GridPoint> {
    let mut sizes: Vec<usize> = points.iter().map(|p| p.cache_size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    sizes
        .iter()
        .filter_map(|&c| {
            let mut mine: Vec<&GridPoint> = points.iter().filter(|p| p.cache_size == c).collect();
            mine.sort_by(|a, b| {
                a.tau1
                    .total_cmp(&b.tau1)
                    .then(a.tau2.total_cmp(&b.tau2))
                    .then(a.gamma.total_cmp(&b.gamma))
                    .then(a.sink.cmp(&b.sink))
            });
            let mut best: Option<&GridPoint> = None;
            for p in mine {
                let better = match best {
                    None => true,
                    Some(b) => {
                        p.average.unwrap_or(f64::NEG_INFINITY)
                            > b.average.unwrap_or(f64::NEG_INFINITY)
                    }
                };
                if better {
                    best = Some(p);
                }
            }
            best
        })
        .collect()
}

/// `tune.md`: per cache size (and gamma, and sink N), tau1 rows x tau2 columns of
/// averages, the best in bold; with several sinks, the best average per (C, N); then the
/// chosen point per C.
fn tune_markdown(
    model: &str,
    points: &[GridPoint],
    best: &[&GridPoint],
    axes: &Axes<'_>,
) -> String {
    let (tau1, tau2) = (axes.tau1, axes.tau2);
    let mut md = format!(
        "# cake tune: {model}\n\nObjective: {OBJECTIVE}; ties: {TIE_BREAK}. Rows tau1, columns tau2.\n"
    );
    let average = |p: Option<&GridPoint>| {
        p.and_then(|p| p.average)
            .map_or("-".to_string(), |a| format!("{a:.2}"))
    };
    for b in best {
        let c = b.cache_size;
        for &g in axes.gamma {
            for &n in axes.sink {
                let _ = write!(md, "\n## C={c}");
                if axes.gamma.len() > 1 {
                    let _ = write!(md, ", gamma={g}");
                }
                if axes.sink.len() > 1 {
                    let _ = write!(md, ", sink={n}");
                }
                md.push_str("\n\n| tau1 \\ tau2 |");
                for t2 in tau2 {
                    let _ = write!(md, " {t2} |");
                }
                md.push_str("\n|---|");
                md.push_str(&"---:|".repeat(tau2.len()));
                md.push('\n');
                for &t1 in tau1 {
                    let _ = write!(md, "| {t1} |");
                    for &t2 in tau2 {
                        let p = points.iter().find(|p| {
                            p.cache_size == c
                                && p.tau1 == t1
                                && p.tau2 == t2
                                && p.gamma == g
                                && p.sink == n
                        });
                        let cell = average(p);
                        if p.is_some_and(|p| std::ptr::eq(p, *b)) {
                            let _ = write!(md, " **{cell}** |");
                        } else {
                            let _ = write!(md, " {cell} |");
                        }
                    }
                    md.push('\n');
                }
            }
        }
    }
    if axes.sink.len() > 1 {
        md.push_str(
            "\n## Sink\n\nThe best calibration average per cache size and sink N (over the temperatures and gamma).\n\n| C | sink | average | tau1 | tau2 | gamma |\n|---:|---:|---:|---:|---:|---:|\n",
        );
        for b in best {
            for &n in axes.sink {
                let mine: Vec<GridPoint> = points
                    .iter()
                    .filter(|p| p.cache_size == b.cache_size && p.sink == n)
                    .cloned()
                    .collect();
                if let Some(top) = best_points(&mine).first() {
                    let _ = writeln!(
                        md,
                        "| {} | {n} | {} | {} | {} | {} |",
                        b.cache_size,
                        average(Some(top)),
                        top.tau1,
                        top.tau2,
                        top.gamma
                    );
                }
            }
        }
    }
    md.push_str(
        "\n## Chosen\n\n| C | tau1 | tau2 | gamma | sink | average |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    for b in best {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            b.cache_size,
            b.tau1,
            b.tau2,
            b.gamma,
            b.sink,
            average(Some(b))
        );
    }
    md
}

/// Hash of a record's text (input and context).
fn text_hash(input: &str, context: &str) -> u64 {
    let mut h = DefaultHasher::new();
    input.hash(&mut h);
    context.hash(&mut h);
    h.finish()
}

/// One warning per dataset whose calibration records (the first `max_samples`) share
/// their text (input and context) with a record of the same dataset in `eval`. Ids are
/// not compared: the synthetic suite's ids do not depend on its seed.
fn overlap_warnings(
    calib: &Path,
    eval: &Path,
    datasets: &[String],
    max_samples: Option<usize>,
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    for name in datasets {
        let eval_file = eval.join(format!("{name}.jsonl"));
        if !eval_file.is_file() {
            continue;
        }
        let seen: HashSet<u64> = read_dataset(eval, name)?
            .map(|r| r.map(|r| text_hash(&r.input, &r.context)))
            .collect::<Result<_, _>>()?;
        let mut shared = 0usize;
        let mut total = 0usize;
        for record in read_dataset(calib, name)?.take(max_samples.unwrap_or(usize::MAX)) {
            let record = record?;
            total += 1;
            shared += usize::from(seen.contains(&text_hash(&record.input, &record.context)));
        }
        if shared > 0 {
            warnings.push(format!(
                "{shared} of {total} calibration record(s) of {name} are also in {} (same input and context): the temperatures would be tuned on evaluation data; write the calibration suite with another seed (cake suite --out calib --seed 1)",
                eval_file.display()
            ));
        }
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(c: usize, t1: f64, t2: f64, average: Option<f64>) -> GridPoint {
        GridPoint {
            cache_size: c,
            tau1: t1,
            tau2: t2,
            gamma: 200.0,
            sink: 0,
            average,
            scores: BTreeMap::new(),
            dir: String::new(),
        }
    }

    #[test]
    fn the_best_point_per_size_is_the_argmax_and_ties_go_to_the_smallest() {
        let points = vec![
            point(128, 2.0, 1.0, Some(40.0)),
            point(128, 1.0, 2.0, Some(55.5)),
            point(128, 1.0, 0.5, Some(30.0)),
            point(64, 4.0, 0.5, Some(20.0)),
            // Ties at 20: tau1 1.0 < 4.0, then tau2 2.0 < 3.0.
            point(64, 1.0, 3.0, Some(20.0)),
            point(64, 1.0, 2.0, Some(20.0)),
            point(64, 0.5, 0.5, None),
            point(256, 0.5, 0.5, None),
        ];
        let best: Vec<(usize, f64, f64)> = best_points(&points)
            .iter()
            .map(|p| (p.cache_size, p.tau1, p.tau2))
            .collect();
        assert_eq!(best, vec![(64, 1.0, 2.0), (128, 1.0, 2.0), (256, 0.5, 0.5)]);
        // The input order does not matter.
        let mut reversed = points.clone();
        reversed.reverse();
        let again: Vec<(usize, f64, f64)> = best_points(&reversed)
            .iter()
            .map(|p| (p.cache_size, p.tau1, p.tau2))
            .collect();
        assert_eq!(again, best);
    }

    #[test]
    fn grid_axes_are_sorted_deduplicated_and_checked() {
        assert_eq!(
            grid_axis("--tau1", &[2.0, 0.5, 2.0, 1.0]).unwrap(),
            vec![0.5, 1.0, 2.0]
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = grid_axis("--tau2", &[1.0, bad]).unwrap_err().to_string();
            assert!(err.contains("--tau2") && err.contains("positive"), "{err}");
        }
        assert_eq!(grid_axis("--gamma", &[0.0]).unwrap(), vec![0.0]);
        assert!(grid_axis("--gamma", &[-1.0]).is_err());
        assert!(grid_axis("--tau1", &[]).is_err());
    }

    #[test]
    fn the_markdown_marks_the_chosen_cell() {
        let points = vec![
            point(64, 0.5, 1.0, Some(10.0)),
            point(64, 0.5, 2.0, Some(12.5)),
            point(64, 1.0, 1.0, None),
            point(64, 1.0, 2.0, Some(3.0)),
        ];
        let best = best_points(&points);
        let axes = Axes {
            tau1: &[0.5, 1.0],
            tau2: &[1.0, 2.0],
            gamma: &[200.0],
            sink: &[0],
        };
        let md = tune_markdown("m", &points, &best, &axes);
        assert!(md.contains("| 0.5 | 10.00 | **12.50** |"), "{md}");
        assert!(md.contains("| 1 | - | 3.00 |"), "{md}");
        assert!(md.contains("| 64 | 0.5 | 2 | 200 | 0 | 12.50 |"), "{md}");
        assert!(!md.contains("## Sink"), "{md}");
    }

    /// With a sink axis: one table per N, the best average per (C, N) over the
    /// temperatures, and the chosen point names its N; ties go to the smaller N (the
    /// paper's rule, 0, before any sink).
    #[test]
    fn the_sink_axis_reports_the_score_per_n() {
        let at = |t1, n, average| GridPoint {
            sink: n,
            ..point(64, t1, 1.0, Some(average))
        };
        let points = vec![
            at(0.5, 0, 10.0),
            at(1.0, 0, 20.0),
            at(0.5, 8, 30.0),
            at(1.0, 8, 25.0),
            at(0.5, 16, 30.0),
            at(1.0, 16, 5.0),
        ];
        let best = best_points(&points);
        assert_eq!((best[0].tau1, best[0].sink), (0.5, 8));
        let axes = Axes {
            tau1: &[0.5, 1.0],
            tau2: &[1.0],
            gamma: &[200.0],
            sink: &[0, 8, 16],
        };
        let md = tune_markdown("m", &points, &best, &axes);
        assert!(md.contains("## C=64, sink=8"), "{md}");
        assert!(md.contains("| 64 | 0 | 20.00 | 1 | 1 | 200 |"), "{md}");
        assert!(md.contains("| 64 | 8 | 30.00 | 0.5 | 1 | 200 |"), "{md}");
        assert!(md.contains("| 64 | 16 | 30.00 | 0.5 | 1 | 200 |"), "{md}");
        assert!(md.contains("| 64 | 0.5 | 1 | 200 | 8 | 30.00 |"), "{md}");
        // The N = 8 table marks the chosen cell; the N = 16 one (same score) does not.
        let n16 = &md[md.find("sink=16").unwrap()..];
        assert!(n16.contains("| 0.5 | 30.00 |"), "{md}");
    }

    #[test]
    fn overlapping_calibration_text_is_found_whatever_the_ids() {
        let dir = std::env::temp_dir().join(format!("cake-tune-overlap-{}", std::process::id()));
        let (calib, eval) = (dir.join("calib"), dir.join("eval"));
        std::fs::create_dir_all(&calib).unwrap();
        std::fs::create_dir_all(&eval).unwrap();
        let line = |id: &str, context: &str| {
            serde_json::json!({"input": "q", "context": context, "answers": ["a"], "length": 3,
                "dataset": "synth_kv", "language": "en", "all_classes": null, "_id": id})
            .to_string()
        };
        std::fs::write(
            calib.join("synth_kv.jsonl"),
            [line("a", "one"), line("b", "two")].join("\n") + "\n",
        )
        .unwrap();
        // Same ids, other text: no overlap. One same text under another id: overlap.
        std::fs::write(
            eval.join("synth_kv.jsonl"),
            [line("a", "three"), line("b", "four"), line("z", "two")].join("\n") + "\n",
        )
        .unwrap();
        let names = vec!["synth_kv".to_string()];
        let w = overlap_warnings(&calib, &eval, &names, None).unwrap();
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("1 of 2 calibration record(s) of synth_kv"),
            "{w:?}"
        );
        assert!(
            overlap_warnings(&calib, &eval, &names, Some(1))
                .unwrap()
                .is_empty()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
