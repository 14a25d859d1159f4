//! PCA on matrices with known spectra, numpy parity, layouts and bad input.

use cake_scoring_fit::{
    FitError, PcaSummary, covariance_eigenvalues, pca_summary, pca_summary_layer,
    pca_summary_per_head,
};
use serde::Deserialize;

/// Sylvester Hadamard entry `H_8[i][j] = (-1)^popcount(i & j)`.
fn hadamard(i: usize, j: usize) -> f64 {
    if (i & j).count_ones().is_multiple_of(2) {
        1.0
    } else {
        -1.0
    }
}

/// `[8, 4]` states with covariance `Q diag(lambda) Q^T` exactly (up to f32 rounding), plus
/// a constant offset per dimension that centring must remove.
///
/// Derivation: the columns `z_j = H_8[:, j + 1]`, j = 0..4, are mutually orthogonal, have
/// mean 0 and `|z_j|^2 = 8`. With `X = Z diag(a) Q^T` and `Q = H_4 / 2` (orthogonal),
/// `X^T X / (n - 1) = Q diag(8 a_j^2 / 7) Q^T`, so `a_j = sqrt(7 lambda_j / 8)` gives the
/// covariance eigenvalues `lambda`.
fn known_spectrum(lambda: [f64; 4]) -> Vec<f32> {
    let a: Vec<f64> = lambda.iter().map(|l| (7.0 * l / 8.0).sqrt()).collect();
    let offset = [10.0, -3.0, 0.5, 7.0];
    let mut x = Vec::new();
    for i in 0..8 {
        for (c, off) in offset.iter().enumerate() {
            let v: f64 = (0..4)
                .map(|j| hadamard(i, j + 1) * a[j] * hadamard(c, j) / 2.0)
                .sum();
            x.push((v + off) as f32);
        }
    }
    x
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn recovers_a_known_spectrum_after_centring() {
    let x = known_spectrum([4.0, 2.0, 1.0, 0.5]);
    let eig = covariance_eigenvalues(&x, 8, 4).unwrap();
    for (got, want) in eig.iter().zip([4.0, 2.0, 1.0, 0.5]) {
        assert!(close(*got, want, 1e-5), "{eig:?}");
    }
    // Top-2 explained variance: (4 + 2) / 7.5 = 0.8.
    let s = pca_summary(&x, 8, 4, 2).unwrap();
    assert!(close(s.explained_variance_top_k, 0.8, 1e-6), "{s:?}");
    // p = [8, 4, 2, 1] / 15: -sum p ln p = 1.1369165918330009 (numpy).
    assert!(
        close(s.spectral_entropy, 1.136_916_591_833_000_9, 1e-6),
        "{s:?}"
    );
    // k >= d explains everything.
    let all = pca_summary(&x, 8, 4, 4).unwrap();
    assert!(close(all.explained_variance_top_k, 1.0, 1e-12));
    let more = pca_summary(&x, 8, 4, 9).unwrap();
    assert!(close(more.explained_variance_top_k, 1.0, 1e-12));
}

#[test]
fn isotropic_and_rank_one_extremes() {
    // Isotropic: lambda = 1 each -> top-k explains k/4, entropy ln 4.
    let x = known_spectrum([1.0; 4]);
    let s = pca_summary(&x, 8, 4, 1).unwrap();
    assert!(close(s.explained_variance_top_k, 0.25, 1e-6), "{s:?}");
    assert!(close(s.spectral_entropy, 4f64.ln(), 1e-6), "{s:?}");
    // Rank one: every token is t * u -> one non-zero eigenvalue, entropy 0.
    let u = [1.0f32, -2.0, 0.5];
    let x: Vec<f32> = (0..6).flat_map(|t| u.map(|v| v * t as f32)).collect();
    let s = pca_summary(&x, 6, 3, 1).unwrap();
    assert!(close(s.explained_variance_top_k, 1.0, 1e-9), "{s:?}");
    assert!(s.spectral_entropy < 1e-9, "{s:?}");
}

#[test]
fn two_tokens_have_one_direction() {
    // Rows u, v: covariance (u - v)(u - v)^T / 2 -> one eigenvalue |u - v|^2 / 2.
    // u - v = (1, 2, 2, 0, 0, 0) -> |u - v|^2 = 9 -> 4.5. Uses the Gram path (n < d).
    let x = [
        2.0f32, 2.0, 3.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0,
    ];
    let eig = covariance_eigenvalues(&x, 2, 6).unwrap();
    assert_eq!(eig.len(), 2);
    assert!(close(eig[0], 4.5, 1e-12) && eig[1].abs() < 1e-12, "{eig:?}");
}

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    n_tokens: usize,
    dim: usize,
    top_k: usize,
    states: Vec<f32>,
    eigenvalues_desc: Vec<f64>,
    explained_variance_top_k: f64,
    spectral_entropy: f64,
}

#[test]
fn matches_numpy_on_random_states() {
    let text = include_str!("../fixtures/pca_cases.json");
    let fixture: Fixture = serde_json::from_str(text).unwrap();
    assert_eq!(fixture.cases.len(), 3);
    for c in &fixture.cases {
        let eig = covariance_eigenvalues(&c.states, c.n_tokens, c.dim).unwrap();
        assert_eq!(eig.len(), c.n_tokens.min(c.dim), "{}", c.name);
        let scale = c.eigenvalues_desc[0];
        for (i, want) in c.eigenvalues_desc.iter().enumerate() {
            let got = eig.get(i).copied().unwrap_or(0.0);
            assert!(
                close(got, *want, 1e-9 * scale),
                "{} eigenvalue {i}: {got} vs {want}",
                c.name
            );
        }
        let s = pca_summary(&c.states, c.n_tokens, c.dim, c.top_k).unwrap();
        assert!(
            close(s.explained_variance_top_k, c.explained_variance_top_k, 1e-9),
            "{}",
            c.name
        );
        assert!(
            close(s.spectral_entropy, c.spectral_entropy, 1e-7),
            "{}: {s:?} vs {}",
            c.name,
            c.spectral_entropy
        );
    }
}

#[test]
fn per_head_and_layer_layouts() {
    // [2 heads, 8 tokens, 4 dims]: head 0 has spectrum [4, 2, 1, 0.5], head 1 is isotropic.
    let h0 = known_spectrum([4.0, 2.0, 1.0, 0.5]);
    let h1 = known_spectrum([1.0; 4]);
    let states: Vec<f32> = h0.iter().chain(&h1).copied().collect();
    let heads = pca_summary_per_head(&states, 2, 8, 4, 2).unwrap();
    assert_eq!(heads[0], pca_summary(&h0, 8, 4, 2).unwrap());
    assert_eq!(heads[1], pca_summary(&h1, 8, 4, 2).unwrap());
    // The layer view concatenates the heads per token: [8, 8].
    let tokens: Vec<f32> = (0..8)
        .flat_map(|t| {
            h0[t * 4..t * 4 + 4]
                .iter()
                .chain(&h1[t * 4..t * 4 + 4])
                .copied()
        })
        .collect();
    let layer = pca_summary_layer(&states, 2, 8, 4, 2).unwrap();
    let want = pca_summary(&tokens, 8, 8, 2).unwrap();
    assert!(close(
        layer.explained_variance_top_k,
        want.explained_variance_top_k,
        1e-12
    ));
    assert!(close(layer.spectral_entropy, want.spectral_entropy, 1e-12));
    // Total variance 7.5 + 4; heads share the Hadamard columns, so the joint spectrum is
    // not simply the union; explained top-2 must at least beat the best single direction.
    assert!(layer.explained_variance_top_k > 4.0 / 11.5);
}

#[test]
fn bad_input_is_rejected() {
    let x = known_spectrum([1.0; 4]);
    assert!(matches!(
        pca_summary(&x, 8, 5, 2),
        Err(FitError::BadShape { .. })
    ));
    assert!(matches!(
        pca_summary(&x[..4], 1, 4, 2),
        Err(FitError::TooFewTokens(1))
    ));
    assert!(matches!(
        pca_summary(&[1.0; 12], 3, 4, 2),
        Err(FitError::ZeroVariance)
    ));
    assert!(matches!(
        pca_summary(&x, 8, 4, 0),
        Err(FitError::InvalidValue(_))
    ));
    let mut nan = x.clone();
    nan[5] = f32::NAN;
    let e = pca_summary(&nan, 8, 4, 2).unwrap_err().to_string();
    assert!(e.contains("token 1, dim 1"), "{e}");
    assert!(matches!(
        pca_summary_per_head(&x, 3, 8, 4, 2),
        Err(FitError::BadShape { .. })
    ));
    assert!(PcaSummary::from_eigenvalues(&[f64::INFINITY], 1).is_err());
}
