//! Synthetic statistics rows shared by the integration tests.
#![allow(dead_code)]

use cake_scoring_fit::{LayerStatsRow, PcaSummary, Poly};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A plausible PCA summary (values do not matter for the fit).
pub const PCA: PcaSummary = PcaSummary {
    top_k: 4,
    explained_variance_top_k: 0.5,
    spectral_entropy: 2.0,
};

/// One row with the given share.
pub fn row(
    dataset: &str,
    sample: usize,
    num_layers: usize,
    layer: usize,
    kv_head: Option<usize>,
    share: f64,
) -> LayerStatsRow {
    LayerStatsRow {
        dataset: dataset.to_owned(),
        sample_id: format!("s{sample}"),
        num_layers,
        layer,
        kv_head,
        preference: share * 100.0,
        entropy: 10.0,
        variance: 0.1,
        share,
        key_pca: PCA,
        value_pca: PCA,
    }
}

/// Standard normal by Box-Muller.
pub fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// `samples` samples per dataset, each layer's share = `truth(x)` + N(0, noise^2).
pub fn synthetic_rows(
    datasets: &[&str],
    samples: usize,
    num_layers: usize,
    truth: &Poly,
    noise: f64,
    seed: u64,
) -> Vec<LayerStatsRow> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rows = Vec::new();
    for d in datasets {
        for s in 0..samples {
            for l in 0..num_layers {
                let x = l as f64 / (num_layers - 1) as f64;
                rows.push(row(
                    d,
                    s,
                    num_layers,
                    l,
                    None,
                    truth.eval(x) + noise * normal(&mut rng),
                ));
            }
        }
    }
    rows
}
