//! Uncertainty of scores that are means over records: a seeded percentile bootstrap.
//!
//! A LongBench dataset score is `100 * mean` of per-record scores, so its uncertainty is
//! that of a mean: resample the records with replacement `resamples` times, take the mean
//! of each resample, and report the `(1 - level) / 2` and `(1 + level) / 2` percentiles of
//! those means (linear interpolation between order statistics, NumPy's default). An
//! average over datasets resamples each dataset's records on their own (stratified) and
//! averages the dataset means, exactly as the point estimate does. Two policies evaluated
//! on the same records are compared by a paired bootstrap: the same resampled record
//! indices for both, i.e. a bootstrap of the per-record differences.
//!
//! Results are reproducible byte for byte: the random stream is SplitMix64
//! ([`crate::synthetic::rng::SplitMix64`], written here, independent of the `rand` crate's
//! version) seeded with [`BootstrapConfig::seed`], and indices are drawn in a fixed order
//! (resample by resample, group by group, record by record).

use serde::{Deserialize, Serialize};

use crate::synthetic::rng::SplitMix64;

/// Resamples drawn by default.
pub const DEFAULT_RESAMPLES: usize = 1000;
/// Seed of the random stream by default.
pub const DEFAULT_SEED: u64 = 2025;
/// Confidence level by default (a 95% interval).
pub const DEFAULT_LEVEL: f64 = 0.95;

/// How a bootstrap is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BootstrapConfig {
    /// Number of resamples (at least 1).
    pub resamples: usize,
    /// Seed of the SplitMix64 stream.
    pub seed: u64,
    /// Confidence level in (0, 1), e.g. 0.95.
    pub level: f64,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        Self {
            resamples: DEFAULT_RESAMPLES,
            seed: DEFAULT_SEED,
            level: DEFAULT_LEVEL,
        }
    }
}

/// A point estimate with its bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// The statistic on the data as given (not resampled).
    pub estimate: f64,
    /// Lower percentile of the resampled statistic.
    pub low: f64,
    /// Upper percentile of the resampled statistic.
    pub high: f64,
}

impl Interval {
    /// Every field multiplied by `factor` (e.g. 100 for LongBench's percent scale; a
    /// positive factor keeps `low <= high`).
    pub fn scaled(self, factor: f64) -> Self {
        Self {
            estimate: self.estimate * factor,
            low: self.low * factor,
            high: self.high * factor,
        }
    }

    /// Whether `x` lies in `[low, high]`.
    pub fn contains(&self, x: f64) -> bool {
        self.low <= x && x <= self.high
    }

    /// `high - low`.
    pub fn width(&self) -> f64 {
        self.high - self.low
    }
}

/// A bootstrap could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    /// No values (or a group without values) to resample.
    #[error("nothing to resample: a group has no values")]
    Empty,
    /// Paired samples must have one value per record on both sides.
    #[error("paired samples differ in length ({left} vs {right} records)")]
    LengthMismatch {
        /// Values on the left.
        left: usize,
        /// Values on the right.
        right: usize,
    },
    /// The configuration is out of range.
    #[error("bootstrap needs at least 1 resample and a level in (0, 1) (got {resamples}, {level})")]
    Config {
        /// Resamples asked for.
        resamples: usize,
        /// Level asked for.
        level: f64,
    },
}

/// The `q`-quantile (`q` in [0, 1]) of ascending `sorted` values, interpolating linearly
/// between order statistics (NumPy's default `linear` method: position `q * (n - 1)`).
/// NaN when `sorted` is empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let Some(last) = sorted.len().checked_sub(1) else {
        return f64::NAN;
    };
    let h = q.clamp(0.0, 1.0) * last as f64;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(last);
    let frac = h - lo as f64;
    if frac == 0.0 || sorted[hi] == sorted[lo] {
        sorted[lo]
    } else {
        sorted[lo] + (sorted[hi] - sorted[lo]) * frac
    }
}

/// Sum in index order, divided by the count (the same arithmetic for the estimate and
/// every resample, so that equal values give exactly equal means).
fn mean_of(values: impl Iterator<Item = f64>, n: usize) -> f64 {
    values.fold(0.0, |acc, v| acc + v) / n as f64
}

/// Bootstrap of the mean of `values`.
///
/// # Errors
/// [`StatsError::Empty`] without values; [`StatsError::Config`] for a bad configuration.
pub fn bootstrap_mean(values: &[f64], config: &BootstrapConfig) -> Result<Interval, StatsError> {
    bootstrap_mean_of_means(&[values], config)
}

/// Stratified bootstrap of the mean over groups of each group's mean (e.g. the average
/// over datasets of per-dataset scores): every resample draws each group's values from
/// that group only, as many as it has. With one group this is [`bootstrap_mean`].
///
/// # Errors
/// [`StatsError::Empty`] without groups or with an empty group; [`StatsError::Config`]
/// for a bad configuration.
pub fn bootstrap_mean_of_means(
    groups: &[&[f64]],
    config: &BootstrapConfig,
) -> Result<Interval, StatsError> {
    if config.resamples == 0 || !(config.level > 0.0 && config.level < 1.0) {
        return Err(StatsError::Config {
            resamples: config.resamples,
            level: config.level,
        });
    }
    if groups.is_empty() || groups.iter().any(|g| g.is_empty()) {
        return Err(StatsError::Empty);
    }
    let g = groups.len();
    let estimate = mean_of(
        groups
            .iter()
            .map(|values| mean_of(values.iter().copied(), values.len())),
        g,
    );
    let mut rng = SplitMix64::new(config.seed);
    let mut stats: Vec<f64> = (0..config.resamples)
        .map(|_| {
            let means = groups.iter().map(|values| {
                let n = values.len();
                mean_of((0..n).map(|_| values[rng.below(n)]), n)
            });
            // Collected first: `mean_of` folds lazily and the draws must happen in order.
            let means: Vec<f64> = means.collect();
            mean_of(means.into_iter(), g)
        })
        .collect();
    stats.sort_by(f64::total_cmp);
    let tail = (1.0 - config.level) / 2.0;
    Ok(Interval {
        estimate,
        low: percentile(&stats, tail),
        high: percentile(&stats, 1.0 - tail),
    })
}

/// Paired bootstrap of `mean(a) - mean(b)` for two scorings of the same records
/// (`a[i]` and `b[i]` belong to record `i`): every resample draws the same record indices
/// for both sides, which is the bootstrap of the mean of the differences `a[i] - b[i]`.
/// Identical inputs give exactly 0 with a zero-width interval.
///
/// # Errors
/// [`StatsError::LengthMismatch`] when the sides differ in length, [`StatsError::Empty`]
/// without records, [`StatsError::Config`] for a bad configuration.
pub fn paired_bootstrap(
    a: &[f64],
    b: &[f64],
    config: &BootstrapConfig,
) -> Result<Interval, StatsError> {
    paired_bootstrap_of_means(&[(a, b)], config)
}

/// Paired, stratified bootstrap of the difference of two averages over groups (e.g. two
/// policies' averages over datasets, each dataset's records paired): the mean over groups
/// of each group's mean difference, resampling record indices jointly within each group.
///
/// # Errors
/// As [`paired_bootstrap`], for any group.
pub fn paired_bootstrap_of_means(
    pairs: &[(&[f64], &[f64])],
    config: &BootstrapConfig,
) -> Result<Interval, StatsError> {
    let mut differences = Vec::with_capacity(pairs.len());
    for (a, b) in pairs {
        if a.len() != b.len() {
            return Err(StatsError::LengthMismatch {
                left: a.len(),
                right: b.len(),
            });
        }
        differences.push(a.iter().zip(*b).map(|(x, y)| x - y).collect::<Vec<f64>>());
    }
    let groups: Vec<&[f64]> = differences.iter().map(Vec::as_slice).collect();
    bootstrap_mean_of_means(&groups, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BootstrapConfig {
        BootstrapConfig::default()
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 1.0), 4.0);
        assert_eq!(percentile(&v, 0.5), 2.5);
        // np.percentile([1, 2, 3, 4], 25) == 1.75
        assert_eq!(percentile(&v, 0.25), 1.75);
        assert_eq!(percentile(&[7.0], 0.3), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn equal_scores_give_a_zero_width_interval_at_the_mean() {
        for v in [0.0, 0.1, 1.0 / 3.0, 1.0] {
            let values = vec![v; 7];
            let i = bootstrap_mean(&values, &config()).unwrap();
            assert_eq!(i.low, i.estimate);
            assert_eq!(i.high, i.estimate);
            assert_eq!(i.width(), 0.0);
            assert!((i.estimate - v).abs() < 1e-15);
        }
        // One record: every resample is that record.
        let i = bootstrap_mean(&[0.25], &config()).unwrap();
        assert_eq!((i.estimate, i.low, i.high), (0.25, 0.25, 0.25));
    }

    #[test]
    fn two_records_span_their_hull() {
        // Resampled means of {0, 1} are 0, 0.5, 1 with probability 1/4, 1/2, 1/4: the
        // 2.5% and 97.5% percentiles of 1000 of them are 0 and 1.
        let i = bootstrap_mean(&[0.0, 1.0], &config()).unwrap();
        assert_eq!((i.estimate, i.low, i.high), (0.5, 0.0, 1.0));
        // At the 40% level the percentiles (30% and 70%) fall on the middle value.
        let narrow = BootstrapConfig {
            level: 0.4,
            ..config()
        };
        let i = bootstrap_mean(&[0.0, 1.0], &narrow).unwrap();
        assert_eq!((i.low, i.high), (0.5, 0.5));
    }

    #[test]
    fn a_seed_gives_the_same_interval_and_another_seed_another() {
        let values: Vec<f64> = (0..50).map(|i| f64::from(i * 7 % 11) / 10.0).collect();
        let a = bootstrap_mean(&values, &config()).unwrap();
        let b = bootstrap_mean(&values, &config()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.low.to_bits(), b.low.to_bits());
        let other = BootstrapConfig {
            seed: 7,
            ..config()
        };
        let c = bootstrap_mean(&values, &other).unwrap();
        assert_eq!(a.estimate, c.estimate);
        assert!(a.low != c.low || a.high != c.high, "{a:?} vs {c:?}");
    }

    #[test]
    fn interval_contains_the_mean_and_has_the_normal_width() {
        // 200 records, half right: mean 0.5, standard error sqrt(0.25 / 200) = 0.0354; a
        // 95% interval is about 2 * 1.96 * 0.0354 = 0.139 wide.
        let values: Vec<f64> = (0..200).map(|i| f64::from(i % 2)).collect();
        let i = bootstrap_mean(&values, &config()).unwrap();
        assert_eq!(i.estimate, 0.5);
        assert!(i.contains(i.estimate), "{i:?}");
        assert!((0.12..0.16).contains(&i.width()), "{i:?}");
        // Skewed scores (one right in 30) and a few partial ones.
        for values in [
            (0..30)
                .map(|i| f64::from(u8::from(i == 3)))
                .collect::<Vec<_>>(),
            vec![0.2, 0.9, 0.5, 0.5, 1.0, 0.0, 0.33],
        ] {
            let i = bootstrap_mean(&values, &config()).unwrap();
            assert!(i.contains(i.estimate), "{values:?}: {i:?}");
            let (min, max) = values
                .iter()
                .fold((1.0f64, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            assert!(min <= i.low && i.high <= max, "{i:?}");
        }
    }

    #[test]
    fn pinned_values_for_the_default_seed() {
        // Pins the random stream and the draw order: results must not move between
        // versions (result.json is compared byte for byte across runs).
        let values: Vec<f64> = (0..20).map(|i| f64::from(i % 3) / 2.0).collect();
        let i = bootstrap_mean(&values, &config()).unwrap();
        assert_eq!(i.estimate, 0.475);
        assert_eq!((i.low, i.high), (PINNED_LOW, PINNED_HIGH), "{i:?}");
    }
    const PINNED_LOW: f64 = 0.3;
    const PINNED_HIGH: f64 = 0.650_624_999_999_999_5;

    #[test]
    fn paired_difference_of_identical_inputs_is_exactly_zero() {
        let a = [0.0, 0.5, 1.0, 0.25, 1.0 / 3.0];
        let i = paired_bootstrap(&a, &a, &config()).unwrap();
        assert_eq!((i.estimate, i.low, i.high), (0.0, 0.0, 0.0));
        let i = paired_bootstrap_of_means(&[(&a, &a), (&a[..2], &a[..2])], &config()).unwrap();
        assert_eq!((i.estimate, i.low, i.high), (0.0, 0.0, 0.0));
    }

    #[test]
    fn paired_difference_resamples_indices_jointly() {
        // b = a - 0.25 on every record: the difference is 0.25 in every resample, while
        // unpaired intervals of a and b are wide.
        let a: Vec<f64> = (0..40).map(|i| 0.25 + f64::from(i % 4) / 4.0).collect();
        let b: Vec<f64> = a.iter().map(|x| x - 0.25).collect();
        let d = paired_bootstrap(&a, &b, &config()).unwrap();
        assert_eq!((d.estimate, d.low, d.high), (0.25, 0.25, 0.25));
        assert!(bootstrap_mean(&a, &config()).unwrap().width() > 0.1);
        // Against zeros, the paired bootstrap is the bootstrap of the left side.
        let zeros = vec![0.0; a.len()];
        assert_eq!(
            paired_bootstrap(&a, &zeros, &config()).unwrap(),
            bootstrap_mean(&a, &config()).unwrap()
        );
    }

    #[test]
    fn stratified_mean_of_means_weights_groups_equally() {
        // Groups of different sizes with constant values: the average is (1 + 0) / 2, not
        // the pooled 1/4, and every resample gives it.
        let ones = [1.0];
        let zeros = [0.0, 0.0, 0.0];
        let i = bootstrap_mean_of_means(&[&ones, &zeros], &config()).unwrap();
        assert_eq!((i.estimate, i.low, i.high), (0.5, 0.5, 0.5));
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert_eq!(bootstrap_mean(&[], &config()), Err(StatsError::Empty));
        assert_eq!(
            bootstrap_mean_of_means(&[&[1.0], &[]], &config()),
            Err(StatsError::Empty)
        );
        assert_eq!(
            paired_bootstrap(&[1.0], &[1.0, 2.0], &config()),
            Err(StatsError::LengthMismatch { left: 1, right: 2 })
        );
        let bad = [
            BootstrapConfig {
                resamples: 0,
                ..config()
            },
            BootstrapConfig {
                level: 1.0,
                ..config()
            },
        ];
        for config in &bad {
            let result = bootstrap_mean(&[1.0], config);
            assert!(
                matches!(result, Err(StatsError::Config { .. })),
                "{config:?}"
            );
        }
    }
}
