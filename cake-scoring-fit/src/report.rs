//! The whole fitting procedure (degree selection, final fit, generalisation, per-head fits)
//! and its report.

use std::fmt::Write as _;
use std::ops::RangeInclusive;

use cake_core::ScoreFunction;
use serde::{Deserialize, Serialize};

use crate::collect::LayerStatsRow;
use crate::cv::{DegreeSelection, select_degree_cv};
use crate::error::{FitError, Result};
use crate::generalise::{HeldOutReport, leave_one_dataset_out};
use crate::poly::{MAX_DEGREE, Poly, fit_polynomial, mean_squared_error};
use crate::score_file::{PcaSettings, SCORE_FUNCTION_FORMAT, ScoreFunctionFile};

/// Settings of [`fit_score_function`].
#[derive(Debug, Clone, PartialEq)]
pub struct FitConfig {
    /// Model name written to the file.
    pub model: String,
    /// KV heads per layer of the model.
    pub num_kv_heads: usize,
    /// Degrees tried by cross-validation (within 1..=8).
    pub degrees: RangeInclusive<usize>,
    /// Number of CV folds (samples are split, never their layers).
    pub folds: usize,
    /// Seed of the fold shuffle.
    pub seed: u64,
    /// Also fit one polynomial per KV head (needs per-head rows for every head).
    pub per_head: bool,
}

impl FitConfig {
    /// Defaults: degrees 1..=8, 5 folds, seed 0, no per-head fits.
    pub fn new(model: impl Into<String>, num_kv_heads: usize) -> Self {
        Self {
            model: model.into(),
            num_kv_heads,
            degrees: 1..=MAX_DEGREE,
            folds: 5,
            seed: 0,
            per_head: false,
        }
    }
}

/// The fit of one KV head's layer shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadFit {
    /// The KV head.
    pub kv_head: usize,
    /// Its polynomial (the degree chosen for the whole layers).
    pub poly: Poly,
    /// Mean squared error on that head's rows.
    pub fit_mse: f64,
}

/// Everything [`fit_score_function`] found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitReport {
    /// Model name.
    pub model: String,
    /// Decoder layers.
    pub num_layers: usize,
    /// KV heads per layer.
    pub num_kv_heads: usize,
    /// PCA `top_k` of the statistics.
    pub pca_top_k: usize,
    /// Datasets in the rows (sorted).
    pub datasets: Vec<String>,
    /// Number of calibration samples (whole-layer rows).
    pub samples: usize,
    /// Cross-validated degree choice.
    pub selection: DegreeSelection,
    /// Final layer-share polynomial (fitted on all whole-layer rows).
    pub poly: Poly,
    /// Its mean squared error on those rows.
    pub fit_mse: f64,
    /// Leave-one-dataset-out results (empty with a single dataset).
    pub held_out: Vec<HeldOutReport>,
    /// Per-KV-head fits (empty unless asked for).
    pub heads: Vec<HeadFit>,
}

/// The rows of one fit target: whole-layer rows (`kv_head = None`) or one KV head's rows.
pub fn rows_for_head(rows: &[LayerStatsRow], kv_head: Option<usize>) -> Vec<LayerStatsRow> {
    rows.iter()
        .filter(|r| r.kv_head == kv_head)
        .cloned()
        .collect()
}

fn fit_rows(rows: &[LayerStatsRow], degree: usize) -> Result<(Poly, f64)> {
    let xs: Vec<f64> = rows.iter().map(LayerStatsRow::x).collect();
    let ys: Vec<f64> = rows.iter().map(|r| r.share).collect();
    let poly = fit_polynomial(&xs, &ys, degree)?;
    let mse = mean_squared_error(&poly, &xs, &ys);
    Ok((poly, mse))
}

/// Selects the degree by CV on the whole-layer rows, fits it on all of them, runs
/// leave-one-dataset-out when there are at least two datasets, and fits every KV head at
/// the same degree when `config.per_head` (the file format has one degree).
pub fn fit_score_function(rows: &[LayerStatsRow], config: &FitConfig) -> Result<FitReport> {
    let layer_rows = rows_for_head(rows, None);
    if layer_rows.is_empty() {
        return Err(FitError::NotEnoughData(
            "no whole-layer rows (kv_head = null); collect them alongside any per-head rows".into(),
        ));
    }
    let pca_top_k = layer_rows[0].key_pca.top_k;
    if let Some(r) = rows
        .iter()
        .find(|r| r.key_pca.top_k != pca_top_k || r.value_pca.top_k != pca_top_k)
    {
        return Err(FitError::Inconsistent(format!(
            "rows use PCA top_k {pca_top_k} and {}/{} (sample {} of {}); collect with one setting",
            r.key_pca.top_k, r.value_pca.top_k, r.sample_id, r.dataset
        )));
    }
    let selection = select_degree_cv(
        &layer_rows,
        config.degrees.clone(),
        config.folds,
        config.seed,
    )?;
    let num_layers = layer_rows[0].num_layers;
    let (poly, fit_mse) = fit_rows(&layer_rows, selection.degree)?;
    let mut datasets: Vec<String> = layer_rows.iter().map(|r| r.dataset.clone()).collect();
    datasets.sort();
    datasets.dedup();
    let held_out = if datasets.len() >= 2 {
        leave_one_dataset_out(&layer_rows, selection.degree)?
    } else {
        Vec::new()
    };
    let mut heads = Vec::new();
    if config.per_head {
        if let Some(r) = rows
            .iter()
            .find(|r| r.kv_head.is_some_and(|h| h >= config.num_kv_heads))
        {
            return Err(FitError::Inconsistent(format!(
                "row has kv_head {:?} but the model has {} KV heads",
                r.kv_head, config.num_kv_heads
            )));
        }
        for kv_head in 0..config.num_kv_heads {
            let head_rows = rows_for_head(rows, Some(kv_head));
            if head_rows.is_empty() {
                return Err(FitError::NotEnoughData(format!(
                    "per-head fit asked for but there are no rows for KV head {kv_head}; collect per-head statistics"
                )));
            }
            crate::cv::check_target(&head_rows)?;
            if head_rows[0].num_layers != num_layers {
                return Err(FitError::Inconsistent(
                    "per-head rows have a different num_layers".into(),
                ));
            }
            let (poly, fit_mse) = fit_rows(&head_rows, selection.degree)?;
            heads.push(HeadFit {
                kv_head,
                poly,
                fit_mse,
            });
        }
    }
    let samples = crate::cv::sample_groups(&layer_rows).1;
    Ok(FitReport {
        model: config.model.clone(),
        num_layers,
        num_kv_heads: config.num_kv_heads,
        pca_top_k,
        datasets,
        samples,
        selection,
        poly,
        fit_mse,
        held_out,
        heads,
    })
}

impl FitReport {
    /// The score-function file for `cake-core`'s `Static` allocator.
    pub fn to_score_file(&self) -> ScoreFunctionFile {
        ScoreFunctionFile {
            function: ScoreFunction {
                format: SCORE_FUNCTION_FORMAT.to_owned(),
                model: self.model.clone(),
                num_layers: self.num_layers,
                num_kv_heads: self.num_kv_heads,
                degree: self.selection.degree,
                domain: Some([0.0, 1.0]),
                coefficients: self.poly.coefficients.clone(),
                head_coefficients: (!self.heads.is_empty()).then(|| {
                    self.heads
                        .iter()
                        .map(|h| h.poly.coefficients.clone())
                        .collect()
                }),
            },
            pca: PcaSettings {
                top_k: self.pca_top_k,
            },
            datasets: self.datasets.clone(),
            cv_errors: self
                .selection
                .cv_errors
                .iter()
                .map(|(d, e)| (d.to_string(), *e))
                .collect(),
            held_out: self.held_out.clone(),
            fit_mse: self.fit_mse,
        }
    }

    /// Markdown summary: fit, per-degree CV errors, leave-one-dataset-out table, head fits.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "## Score function: {} ({} layers, {} samples from {} datasets)\n",
            self.model,
            self.num_layers,
            self.samples,
            self.datasets.len()
        );
        let coeffs: Vec<String> = self
            .poly
            .coefficients
            .iter()
            .map(|c| format!("{c:.6e}"))
            .collect();
        let _ = writeln!(
            s,
            "Degree {} (by {}-fold CV, one-standard-error rule); fit MSE {:.3e}; coefficients (ascending) [{}]\n",
            self.selection.degree,
            self.selection.folds,
            self.fit_mse,
            coeffs.join(", ")
        );
        let _ = writeln!(s, "| degree | CV MSE | std. error |");
        let _ = writeln!(s, "|---:|---:|---:|");
        for (d, e) in &self.selection.cv_errors {
            let mark = if *d == self.selection.degree {
                " **(chosen)**"
            } else {
                ""
            };
            let se = self
                .selection
                .cv_std_errors
                .get(d)
                .copied()
                .unwrap_or(f64::NAN);
            let _ = writeln!(s, "| {d}{mark} | {e:.4e} | {se:.2e} |");
        }
        if self.held_out.is_empty() {
            let _ = writeln!(
                s,
                "\nLeave-one-dataset-out: not run (needs at least 2 datasets)."
            );
        } else {
            let _ = writeln!(s, "\n| held-out dataset | samples | MSE | Spearman |");
            let _ = writeln!(s, "|---|---:|---:|---:|");
            for h in &self.held_out {
                let rho = h
                    .spearman
                    .map_or_else(|| "n/a".to_owned(), |r| format!("{r:.3}"));
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.4e} | {} |",
                    h.dataset, h.samples, h.mse, rho
                );
            }
        }
        if !self.heads.is_empty() {
            let _ = writeln!(s, "\n| KV head | fit MSE |");
            let _ = writeln!(s, "|---:|---:|");
            for h in &self.heads {
                let _ = writeln!(s, "| {} | {:.4e} |", h.kv_head, h.fit_mse);
            }
        }
        s
    }
}
