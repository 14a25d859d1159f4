//! Degree selection by k-fold cross-validation, folds by sample.
//!
//! All layers of one calibration sample go to the same fold (they are strongly correlated,
//! so splitting them would leak). Samples are shuffled with a seeded SplitMix64 generator
//! (deterministic across platforms and versions) and dealt round-robin into `k` folds.
//! The CV error of a degree is the pooled mean squared error over all held-out points.
//! The chosen degree follows the one-standard-error rule (Hastie, Tibshirani & Friedman,
//! *Elements of Statistical Learning*, 7.10): the smallest degree whose CV error is at most
//! the best CV error plus the standard error of the best degree's per-fold errors. This
//! avoids picking a needlessly wiggly polynomial when higher degrees only fit noise.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::collect::LayerStatsRow;
use crate::error::{FitError, Result};
use crate::poly::{MAX_DEGREE, count_distinct, fit_polynomial};

/// Result of [`select_degree_cv`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DegreeSelection {
    /// The chosen degree.
    pub degree: usize,
    /// Number of folds actually used (at most the number of samples).
    pub folds: usize,
    /// Pooled CV mean squared error per degree tried. Degrees the training folds cannot
    /// support (too few distinct layers) are left out.
    pub cv_errors: BTreeMap<usize, f64>,
    /// Standard error of the per-fold MSEs, per degree.
    pub cv_std_errors: BTreeMap<usize, f64>,
}

/// Deterministic SplitMix64 generator (Steele, Lea & Flood 2014).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Index of each row's sample (`(dataset, sample_id)` pairs numbered in order of first
/// appearance) and the number of samples.
pub(crate) fn sample_groups(rows: &[LayerStatsRow]) -> (Vec<usize>, usize) {
    let mut ids: HashMap<(&str, &str), usize> = HashMap::new();
    let groups = rows
        .iter()
        .map(|r| {
            let next = ids.len();
            *ids.entry((r.dataset.as_str(), r.sample_id.as_str()))
                .or_insert(next)
        })
        .collect();
    (groups, ids.len())
}

/// Checks that the rows form one fit target: same `num_layers`, same `kv_head`, finite shares.
pub(crate) fn check_target(rows: &[LayerStatsRow]) -> Result<()> {
    let Some(first) = rows.first() else {
        return Err(FitError::NotEnoughData("no statistics rows to fit".into()));
    };
    for r in rows {
        if r.num_layers != first.num_layers {
            return Err(FitError::Inconsistent(format!(
                "rows come from models with {} and {} layers; fit one model at a time",
                first.num_layers, r.num_layers
            )));
        }
        if r.kv_head != first.kv_head {
            return Err(FitError::Inconsistent(
                "whole-layer and per-head rows (or different heads) are mixed; select one with rows_for_head".into(),
            ));
        }
        if !r.share.is_finite() {
            return Err(FitError::InvalidValue(format!(
                "share of {}/{} layer {} is {}",
                r.dataset, r.sample_id, r.layer, r.share
            )));
        }
    }
    Ok(())
}

/// The CV fold of every row and the number of folds actually used, `min(folds, samples)`.
/// All rows of one sample (same `dataset` and `sample_id`) share a fold; samples are
/// shuffled by `seed` and dealt round-robin, so fold sizes differ by at most one sample.
pub fn fold_assignment(
    rows: &[LayerStatsRow],
    folds: usize,
    seed: u64,
) -> Result<(Vec<usize>, usize)> {
    if folds < 2 {
        return Err(FitError::InvalidValue(format!(
            "cross-validation needs at least 2 folds, got {folds}"
        )));
    }
    let (groups, n_samples) = sample_groups(rows);
    if n_samples < 2 {
        return Err(FitError::NotEnoughData(format!(
            "cross-validation needs at least 2 calibration samples, got {n_samples}"
        )));
    }
    let k = folds.min(n_samples);
    // Shuffle samples (Fisher-Yates), deal round-robin into folds.
    let mut order: Vec<usize> = (0..n_samples).collect();
    let mut rng = SplitMix64(seed);
    for i in (1..n_samples).rev() {
        // Modulo, not multiply-shift: the folds stay those of earlier releases.
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let mut fold_of_sample = vec![0; n_samples];
    for (pos, &s) in order.iter().enumerate() {
        fold_of_sample[s] = pos % k;
    }
    Ok((groups.iter().map(|&g| fold_of_sample[g]).collect(), k))
}

/// Chooses the polynomial degree in `degrees` (within 1..=8) by `folds`-fold cross-validation
/// over samples, with the fold assignment shuffled by `seed`. `rows` must be one fit target
/// (all whole-layer rows, or all rows of one KV head; see [`crate::rows_for_head`]).
pub fn select_degree_cv(
    rows: &[LayerStatsRow],
    degrees: RangeInclusive<usize>,
    folds: usize,
    seed: u64,
) -> Result<DegreeSelection> {
    check_target(rows)?;
    if degrees.is_empty() || *degrees.start() == 0 || *degrees.end() > MAX_DEGREE {
        return Err(FitError::BadDegree(if *degrees.start() == 0 {
            0
        } else {
            *degrees.end()
        }));
    }
    let (fold_of_row, k) = fold_assignment(rows, folds, seed)?;

    let mut cv_errors = BTreeMap::new();
    let mut cv_std_errors = BTreeMap::new();
    'degree: for degree in degrees {
        let (mut sse, mut count) = (0.0, 0usize);
        let mut fold_mses = Vec::with_capacity(k);
        for fold in 0..k {
            let (train, test): (Vec<_>, Vec<_>) = rows
                .iter()
                .zip(&fold_of_row)
                .partition(|(_, f)| **f != fold);
            let xs: Vec<f64> = train.iter().map(|(r, _)| r.x()).collect();
            if count_distinct(&xs) < degree + 1 {
                continue 'degree;
            }
            let ys: Vec<f64> = train.iter().map(|(r, _)| r.share).collect();
            let poly = fit_polynomial(&xs, &ys, degree)?;
            let fold_sse: f64 = test
                .iter()
                .map(|(r, _)| (poly.eval(r.x()) - r.share).powi(2))
                .sum();
            sse += fold_sse;
            count += test.len();
            fold_mses.push(fold_sse / test.len().max(1) as f64);
        }
        let mean_fold = fold_mses.iter().sum::<f64>() / k as f64;
        let var = fold_mses
            .iter()
            .map(|m| (m - mean_fold).powi(2))
            .sum::<f64>()
            / (k - 1) as f64;
        cv_errors.insert(degree, sse / count as f64);
        cv_std_errors.insert(degree, (var / k as f64).sqrt());
    }
    let Some((&best_degree, &best)) = cv_errors.iter().min_by(|a, b| a.1.total_cmp(b.1)) else {
        return Err(FitError::NotEnoughData(
            "no degree in the range can be fitted: the rows cover too few distinct layers".into(),
        ));
    };
    let threshold = best + cv_std_errors[&best_degree];
    let degree = cv_errors
        .iter()
        .find(|(_, e)| **e <= threshold)
        .map_or(best_degree, |(d, _)| *d);
    Ok(DegreeSelection {
        degree,
        folds: k,
        cv_errors,
        cv_std_errors,
    })
}
