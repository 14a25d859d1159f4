//! One module per subcommand.

pub mod bench;
pub mod diagnose;
pub mod eval;
pub mod fit;
pub mod generate;
pub mod inspect;
pub mod pred;
pub mod suite;
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

/// Bytes as MiB with two decimals.
pub fn mib(bytes: usize) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        assert_eq!(median_ms(&ms(&[5, 1, 3])), 3.0);
        assert_eq!(median_ms(&ms(&[4, 1, 3, 2])), 2.5);
        assert_eq!(median_ms(&[]), 0.0);
        assert_eq!(mib(3 * 1024 * 1024 / 2), "1.50 MiB");
    }
}
