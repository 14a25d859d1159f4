//! Spread of key/value states measured by PCA.
//!
//! The states of one layer (or one KV head) are an `[n_tokens, d]` matrix. PCA centres the
//! rows (subtracts the mean state) and takes the eigenvalues of the sample covariance
//! `Xc^T Xc / (n - 1)`, computed with `faer`'s self-adjoint eigensolver. When there are
//! fewer tokens than dimensions the `n x n` Gram matrix `Xc Xc^T / (n - 1)` is used
//! instead: it has the same non-zero eigenvalues and is smaller.

use faer::{Mat, Side};
use serde::{Deserialize, Serialize};

use crate::error::{FitError, Result};

/// Default number of leading principal components whose explained variance is reported.
pub const DEFAULT_PCA_TOP_K: usize = 4;

/// How spread out a set of states is, from the covariance eigenvalues `lambda_1 >= ... >= lambda_d`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PcaSummary {
    /// Number of leading components `k` used for `explained_variance_top_k`.
    pub top_k: usize,
    /// `sum_{i<=k} lambda_i / sum_i lambda_i`, in [0, 1] (1 when `k >= d`).
    pub explained_variance_top_k: f64,
    /// Shannon entropy (nats) of the normalised spectrum `p_i = lambda_i / sum lambda`, over
    /// all eigenvalues (terms with `p_i = 0` count 0). 0 for one direction, `ln(d)` for an
    /// isotropic spread.
    pub spectral_entropy: f64,
}

impl PcaSummary {
    /// Summarises a covariance spectrum (any order; tiny negative values from rounding are
    /// treated as 0).
    pub fn from_eigenvalues(eigenvalues: &[f64], top_k: usize) -> Result<Self> {
        if top_k == 0 {
            return Err(FitError::InvalidValue(
                "PCA top_k must be at least 1".into(),
            ));
        }
        if let Some(bad) = eigenvalues.iter().find(|v| !v.is_finite()) {
            return Err(FitError::InvalidValue(format!(
                "non-finite eigenvalue {bad}"
            )));
        }
        let mut spectrum: Vec<f64> = eigenvalues.iter().map(|&v| v.max(0.0)).collect();
        spectrum.sort_by(|a, b| b.total_cmp(a));
        let total: f64 = spectrum.iter().sum();
        if total <= 0.0 {
            return Err(FitError::ZeroVariance);
        }
        let top: f64 = spectrum.iter().take(top_k).sum();
        let spectral_entropy = spectrum
            .iter()
            .map(|&v| v / total)
            .filter(|&p| p > 0.0)
            .map(|p| -p * p.ln())
            .sum();
        Ok(Self {
            top_k,
            explained_variance_top_k: (top / total).min(1.0),
            spectral_entropy,
        })
    }
}

/// Eigenvalues (descending) of the sample covariance of the rows of `states`, a row-major
/// `[n_tokens, dim]` matrix. Returns `min(n_tokens, dim)` values.
pub fn covariance_eigenvalues(states: &[f32], n_tokens: usize, dim: usize) -> Result<Vec<f64>> {
    if n_tokens.checked_mul(dim) != Some(states.len()) || dim == 0 {
        return Err(FitError::BadShape {
            len: states.len(),
            shape: vec![n_tokens, dim],
        });
    }
    if n_tokens < 2 {
        return Err(FitError::TooFewTokens(n_tokens));
    }
    if let Some(pos) = states.iter().position(|v| !v.is_finite()) {
        return Err(FitError::InvalidValue(format!(
            "state value at token {}, dim {} is {}",
            pos / dim,
            pos % dim,
            states[pos]
        )));
    }
    // Column means in f64.
    let mut mean = vec![0.0f64; dim];
    for row in states.chunks_exact(dim) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    for m in &mut mean {
        *m /= n_tokens as f64;
    }
    // Centred states, [n_tokens, dim].
    let xc = Mat::<f64>::from_fn(n_tokens, dim, |i, j| {
        f64::from(states[i * dim + j]) - mean[j]
    });
    let scale = 1.0 / (n_tokens as f64 - 1.0);
    // [dim, dim] covariance, or the [n, n] Gram matrix when that is smaller.
    let gram = if n_tokens < dim {
        &xc * xc.transpose()
    } else {
        xc.transpose() * &xc
    };
    let gram = gram * faer::Scale(scale);
    let mut eig = gram
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(|e| FitError::Linalg(format!("self-adjoint eigenvalues: {e:?}")))?;
    eig.sort_by(|a, b| b.total_cmp(a));
    Ok(eig)
}

/// PCA summary of a row-major `[n_tokens, dim]` state matrix (one layer or one KV head).
pub fn pca_summary(
    states: &[f32],
    n_tokens: usize,
    dim: usize,
    top_k: usize,
) -> Result<PcaSummary> {
    let eig = covariance_eigenvalues(states, n_tokens, dim)?;
    PcaSummary::from_eigenvalues(&eig, top_k)
}

/// One PCA summary per KV head of a layer's states stored as `[kv_heads, n_tokens, head_dim]`
/// (the layout of `cake_core::LayerCache`).
pub fn pca_summary_per_head(
    states: &[f32],
    kv_heads: usize,
    n_tokens: usize,
    head_dim: usize,
    top_k: usize,
) -> Result<Vec<PcaSummary>> {
    let per_head = n_tokens * head_dim;
    if kv_heads == 0 || kv_heads.checked_mul(per_head) != Some(states.len()) {
        return Err(FitError::BadShape {
            len: states.len(),
            shape: vec![kv_heads, n_tokens, head_dim],
        });
    }
    states
        .chunks_exact(per_head)
        .map(|head| pca_summary(head, n_tokens, head_dim, top_k))
        .collect()
}

/// PCA summary of a whole layer whose states are stored as `[kv_heads, n_tokens, head_dim]`:
/// each token is the concatenation of its KV heads' states, i.e. the matrix
/// `[n_tokens, kv_heads * head_dim]`.
pub fn pca_summary_layer(
    states: &[f32],
    kv_heads: usize,
    n_tokens: usize,
    head_dim: usize,
    top_k: usize,
) -> Result<PcaSummary> {
    let per_head = n_tokens * head_dim;
    if kv_heads == 0 || kv_heads.checked_mul(per_head) != Some(states.len()) {
        return Err(FitError::BadShape {
            len: states.len(),
            shape: vec![kv_heads, n_tokens, head_dim],
        });
    }
    let width = kv_heads * head_dim;
    // [kv_heads, n, d] -> [n, kv_heads * d]
    let mut tokens = vec![0.0f32; states.len()];
    for (h, head) in states.chunks_exact(per_head).enumerate() {
        for (t, row) in head.chunks_exact(head_dim).enumerate() {
            tokens[t * width + h * head_dim..t * width + (h + 1) * head_dim].copy_from_slice(row);
        }
    }
    pca_summary(&tokens, n_tokens, width, top_k)
}
