//! The fitted score-function file (`cake-score-function/1`) that `cake-core`'s `Static`
//! allocator reads (`cake_core::score_function::ScoreFunction`; it ignores the metadata
//! fields, which are kept here for reports and plots).
//!
//! `share(x) = sum_i c_i x^i` (ascending powers) with `x = layer / (num_layers - 1)`;
//! `head_coefficients` holds one polynomial of the same degree per KV head, or is null.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{FitError, Result};
use crate::generalise::HeldOutReport;
use crate::poly::Poly;

/// Format tag of the file.
pub const SCORE_FUNCTION_FORMAT: &str = "cake-score-function/1";

/// PCA settings used while collecting the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PcaSettings {
    /// Number of leading components in the explained-variance statistic.
    pub top_k: usize,
}

/// Contents of a score-function file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreFunctionFile {
    /// Always [`SCORE_FUNCTION_FORMAT`].
    pub format: String,
    /// Model the statistics were collected on.
    pub model: String,
    /// Decoder layers of that model.
    pub num_layers: usize,
    /// KV heads per layer of that model.
    pub num_kv_heads: usize,
    /// Polynomial degree (`coefficients.len() - 1`).
    pub degree: usize,
    /// Domain of `x` (always `[0, 1]`).
    pub domain: [f64; 2],
    /// Layer-share polynomial, ascending powers.
    pub coefficients: Vec<f64>,
    /// One polynomial (same degree) per KV head, or `None`.
    pub head_coefficients: Option<Vec<Vec<f64>>>,
    /// PCA settings of the collected statistics.
    pub pca: PcaSettings,
    /// Calibration datasets the fit used.
    pub datasets: Vec<String>,
    /// Pooled CV mean squared error per degree tried (keys are degrees).
    pub cv_errors: BTreeMap<String, f64>,
    /// Leave-one-dataset-out results (empty with a single dataset).
    pub held_out: Vec<HeldOutReport>,
    /// Mean squared error of the final fit on all rows.
    pub fit_mse: f64,
}

impl ScoreFunctionFile {
    /// The layer polynomial.
    pub fn poly(&self) -> Poly {
        Poly {
            coefficients: self.coefficients.clone(),
        }
    }

    /// Raw fitted share of every layer (not clamped or normalised).
    pub fn raw_layer_shares(&self) -> Vec<f64> {
        let poly = self.poly();
        (0..self.num_layers)
            .map(|l| poly.eval(crate::collect::normalised_layer(l, self.num_layers)))
            .collect()
    }

    /// Checks the invariants the reader relies on.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.format != SCORE_FUNCTION_FORMAT {
            return Err(format!(
                "format is {:?}, expected {SCORE_FUNCTION_FORMAT:?}",
                self.format
            ));
        }
        if self.num_layers == 0 {
            return Err("num_layers is 0".into());
        }
        if self.domain != [0.0, 1.0] {
            return Err(format!("domain is {:?}, expected [0.0, 1.0]", self.domain));
        }
        let check = |name: &str, c: &[f64]| {
            if c.len() != self.degree + 1 {
                return Err(format!(
                    "{name} has {} values but degree {} needs {}",
                    c.len(),
                    self.degree,
                    self.degree + 1
                ));
            }
            if c.iter().any(|v| !v.is_finite()) {
                return Err(format!("{name} has a non-finite value"));
            }
            Ok(())
        };
        check("coefficients", &self.coefficients)?;
        if let Some(heads) = &self.head_coefficients {
            if heads.len() != self.num_kv_heads {
                return Err(format!(
                    "head_coefficients has {} polynomials for {} KV heads",
                    heads.len(),
                    self.num_kv_heads
                ));
            }
            for (h, c) in heads.iter().enumerate() {
                check(&format!("head_coefficients[{h}]"), c)?;
            }
        }
        Ok(())
    }

    /// Writes the file as pretty JSON (after validating it).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.validate()
            .map_err(|message| FitError::InvalidScoreFile {
                path: path.to_path_buf(),
                message,
            })?;
        let text = serde_json::to_string_pretty(self).map_err(|e| FitError::InvalidScoreFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        std::fs::write(path, text + "\n").map_err(|source| FitError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads and validates a file written by [`ScoreFunctionFile::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| FitError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |message: String| FitError::InvalidScoreFile {
            path: path.to_path_buf(),
            message,
        };
        let file: Self =
            serde_json::from_str(&text).map_err(|e| invalid(format!("line {}: {e}", e.line())))?;
        file.validate().map_err(invalid)?;
        Ok(file)
    }
}
