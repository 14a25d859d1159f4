//! One module per subcommand.

pub mod bench;
pub mod diagnose;
pub mod eval;
pub mod fit;
pub mod generate;
pub mod inspect;
pub mod pred;
pub mod suite;
pub mod throughput;
pub mod tune;

use std::time::Duration;

/// Median of `times` in milliseconds (0 when empty).
pub fn median_ms(times: &[Duration]) -> f64 {
    let ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e3).collect();
    median(&ms)
}

/// The median of `values` (the mean of the middle two for an even count; 0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The median over `i` of `numerator[i] / denominator[i]` (pairs measured back to back).
pub fn paired_ratio(numerator: &[Duration], denominator: &[Duration]) -> f64 {
    let ratios: Vec<f64> = numerator
        .iter()
        .zip(denominator)
        .map(|(n, d)| n.as_secs_f64() / d.as_secs_f64().max(1e-12))
        .collect();
    median(&ratios)
}

/// Bytes as MiB with two decimals.
pub fn mib(bytes: usize) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations of `v` milliseconds.
    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median_ms(&ms(&[5, 1, 3])), 3.0);
        assert_eq!(median_ms(&ms(&[4, 1, 3, 2])), 2.5);
        assert_eq!(median_ms(&[]), 0.0);
        assert_eq!(mib(3 * 1024 * 1024 / 2), "1.50 MiB");
    }

    /// Pairs are divided index by index before the median: a phase change that moves the
    /// medians apart leaves the paired ratio alone.
    #[test]
    fn a_paired_ratio_divides_step_by_step() {
        // Two slow steps then three fast ones; the method takes 10% less time in each.
        let full = ms(&[20, 20, 10, 10, 10]);
        let method = ms(&[18, 18, 9, 9, 9]);
        assert!((paired_ratio(&full, &method) - 20.0 / 18.0).abs() < 1e-12);
        // The phase change one step later for the method: the ratio of medians reads
        // 10 / 18 (0.56x); one pair reads 0.56x, the other four 1.11x.
        let method = ms(&[18, 18, 18, 9, 9]);
        assert!((paired_ratio(&full, &method) - 20.0 / 18.0).abs() < 1e-12);
        assert_eq!(paired_ratio(&[], &[]), 0.0);
    }
}
