//! Cross-dataset generalisation: leave one dataset out, and Spearman rank correlation.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::collect::LayerStatsRow;
use crate::cv::check_target;
use crate::error::{FitError, Result};
use crate::poly::fit_polynomial;

/// How well a fit on all other datasets predicts one held-out dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldOutReport {
    /// The held-out dataset.
    pub dataset: String,
    /// Number of its calibration samples.
    pub samples: usize,
    /// Mean squared error of the fitted share over all its rows (sample x layer).
    pub mse: f64,
    /// Spearman rank correlation between the fitted share and the measured share (mean over
    /// its samples) across layers; `None` when either is constant (undefined).
    pub spearman: Option<f64>,
}

/// Ranks starting at 1, ties get the average of the ranks they span.
pub fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &idx in &order[i..=j] {
            ranks[idx] = rank;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman rank correlation (Pearson correlation of average ranks). `None` when the
/// lengths differ, there are fewer than 2 values, or either side is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let (ra, rb) = (average_ranks(a), average_ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - ma) * (y - mb);
        va += (x - ma).powi(2);
        vb += (y - mb).powi(2);
    }
    if va == 0.0 || vb == 0.0 {
        None
    } else {
        Some(cov / (va * vb).sqrt())
    }
}

/// For every dataset in `rows`: fit a degree-`degree` polynomial on the other datasets' rows
/// and score it on the held-out one. `rows` must be one fit target (see
/// [`crate::select_degree_cv`]) and cover at least two datasets. Reports come in dataset
/// name order.
pub fn leave_one_dataset_out(rows: &[LayerStatsRow], degree: usize) -> Result<Vec<HeldOutReport>> {
    check_target(rows)?;
    let datasets: Vec<&str> = {
        let mut d: Vec<&str> = rows.iter().map(|r| r.dataset.as_str()).collect();
        d.sort_unstable();
        d.dedup();
        d
    };
    if datasets.len() < 2 {
        return Err(FitError::NotEnoughData(format!(
            "leave-one-dataset-out needs at least 2 datasets, got {}",
            datasets.len()
        )));
    }
    datasets
        .iter()
        .map(|&held| {
            let (test, train): (Vec<&LayerStatsRow>, Vec<&LayerStatsRow>) =
                rows.iter().partition(|r| r.dataset == held);
            let xs: Vec<f64> = train.iter().map(|r| r.x()).collect();
            let ys: Vec<f64> = train.iter().map(|r| r.share).collect();
            let poly = fit_polynomial(&xs, &ys, degree)?;
            let mse = test
                .iter()
                .map(|r| (poly.eval(r.x()) - r.share).powi(2))
                .sum::<f64>()
                / test.len() as f64;
            // Mean measured share per layer of the held-out dataset.
            let mut per_layer: BTreeMap<usize, (f64, f64, usize)> = BTreeMap::new();
            for r in &test {
                let e = per_layer.entry(r.layer).or_insert((r.x(), 0.0, 0));
                e.1 += r.share;
                e.2 += 1;
            }
            let measured: Vec<f64> = per_layer.values().map(|(_, s, n)| s / *n as f64).collect();
            let fitted: Vec<f64> = per_layer.values().map(|(x, _, _)| poly.eval(*x)).collect();
            let samples: HashSet<&str> = test.iter().map(|r| r.sample_id.as_str()).collect();
            Ok(HeldOutReport {
                dataset: held.to_owned(),
                samples: samples.len(),
                mse,
                spearman: spearman(&fitted, &measured),
            })
        })
        .collect()
}
