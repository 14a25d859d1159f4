//! The fitted score-function file (`cake-score-function/1`) that `cake-core`'s `Static`
//! allocator reads.
//!
//! The format is defined once, by `cake_core::ScoreFunction` (the fields the allocator
//! reads, and their validation); a [`ScoreFunctionFile`] is that struct followed by the
//! fit's report fields (PCA settings, datasets, CV errors, held-out results), which the
//! allocator ignores and reports and plots use.
//!
//! `share(x) = sum_i c_i x^i` (ascending powers) with `x = layer / (num_layers - 1)`;
//! `head_coefficients` holds one polynomial of the same degree per KV head, or is null.

use std::collections::BTreeMap;
use std::path::Path;

use cake_core::ScoreFunction;
pub use cake_core::score_function::SCORE_FUNCTION_FORMAT;
use serde::{Deserialize, Serialize};

use crate::error::{FitError, Result};
use crate::generalise::HeldOutReport;
use crate::poly::Poly;

/// PCA settings used while collecting the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PcaSettings {
    /// Number of leading components in the explained-variance statistic.
    pub top_k: usize,
}

/// Contents of a score-function file: the function `cake-core` reads, then the fit report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreFunctionFile {
    /// The function (`format` .. `head_coefficients`, written first); a fitted file
    /// always has its model, KV heads and the domain `[0, 1]`.
    #[serde(flatten)]
    pub function: ScoreFunction,
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
            coefficients: self.function.coefficients.clone(),
        }
    }

    /// Raw fitted share of every layer (not clamped or normalised).
    pub fn raw_layer_shares(&self) -> Vec<f64> {
        self.function.raw_layer_values()
    }

    /// Checks the invariants the reader relies on ([`ScoreFunction::validate`]) and the
    /// domain `[0, 1]`.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.function.validate()?;
        if self.function.domain != Some([0.0, 1.0]) {
            return Err(format!(
                "domain is {:?}, expected [0.0, 1.0]",
                self.function.domain
            ));
        }
        Ok(())
    }

    /// Writes the file as pretty JSON (after validating it).
    pub fn save(&self, path: &Path) -> Result<()> {
        let invalid = |message: String| FitError::InvalidScoreFile {
            path: path.to_path_buf(),
            message,
        };
        self.validate().map_err(invalid)?;
        let text = serde_json::to_string_pretty(self).map_err(|e| invalid(e.to_string()))?;
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
