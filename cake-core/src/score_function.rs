//! Reader of fitted score-function files (`cake-score-function/1`), the input of the
//! [`crate::allocator::Static`] allocator.
//!
//! ```json
//! { "format": "cake-score-function/1", "model": "SmolLM2-135M-Instruct",
//!   "num_layers": 30, "num_kv_heads": 3, "degree": 3, "domain": [0.0, 1.0],
//!   "coefficients": [0.1, 0.2, -0.1, 0.05], "head_coefficients": null }
//! ```
//! `share(x) = sum_i c_i x^i` (ascending powers) with `x = layer / (num_layers - 1)`;
//! `head_coefficients`, when not null, is one polynomial per KV head. Other fields are
//! ignored: `cake-scoring-fit`, which writes these files, follows them with its fit report
//! (its `ScoreFunctionFile` is this struct, flattened, plus those fields), so this struct
//! and [`ScoreFunction::validate`] are the one definition of the format.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::allocator::normalise;
use crate::error::ConfigError;

/// The format tag of score-function files.
pub const SCORE_FUNCTION_FORMAT: &str = "cake-score-function/1";

/// Most layers a score-function file may declare (the shares are tabulated per layer).
pub const MAX_LAYERS: usize = 1 << 12;
/// Most per-KV-head polynomials a score-function file may hold (the head shares are
/// tabulated per layer and head).
pub const MAX_KV_HEADS: usize = 1 << 10;
/// Largest score-function file read (fitted files are a few kilobytes).
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// A fitted polynomial of the normalised layer index giving each layer's budget share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreFunction {
    /// Must be [`SCORE_FUNCTION_FORMAT`].
    pub format: String,
    /// Model the function was fitted for (informational).
    #[serde(default)]
    pub model: String,
    /// Decoder layers of that model.
    pub num_layers: usize,
    /// KV heads per layer of that model.
    #[serde(default)]
    pub num_kv_heads: usize,
    /// Polynomial degree (`coefficients.len() - 1`).
    pub degree: usize,
    /// Input range of the fit (informational; inputs are `layer / (L - 1)` in `[0, 1]`).
    #[serde(default)]
    pub domain: Option<[f64; 2]>,
    /// Layer-share polynomial, ascending powers.
    pub coefficients: Vec<f64>,
    /// Optional per-KV-head polynomials, ascending powers.
    #[serde(default)]
    pub head_coefficients: Option<Vec<Vec<f64>>>,
}

impl ScoreFunction {
    /// Reads and validates a score-function file (at most [`MAX_FILE_BYTES`]: the path
    /// comes from settings, and may name a device such as `/dev/zero`).
    pub fn from_path(path: &Path) -> Result<Self, ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_string(&mut text))
            .map_err(io)?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(ConfigError::ScoreFunction {
                path: path.display().to_string(),
                reason: format!("file is larger than {MAX_FILE_BYTES} bytes"),
            });
        }
        Self::from_json_str(&text).map_err(|e| match e {
            ConfigError::ScoreFunction { reason, .. } => ConfigError::ScoreFunction {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })
    }

    /// Parses and validates a score function from JSON text.
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let bad = |reason: String| ConfigError::ScoreFunction {
            path: "<json>".into(),
            reason,
        };
        let f: ScoreFunction = serde_json::from_str(text)
            .map_err(|e| bad(format!("invalid JSON at line {}: {e}", e.line())))?;
        f.validate().map_err(bad)?;
        Ok(f)
    }

    /// Checks the invariants the readers rely on: the format tag, 1 to [`MAX_LAYERS`]
    /// layers, at most [`MAX_KV_HEADS`] KV heads, and `degree + 1` finite coefficients in the
    /// layer polynomial and in each of the head polynomials (one per KV head, when
    /// `num_kv_heads` is given). The error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != SCORE_FUNCTION_FORMAT {
            return Err(format!(
                "format is {:?}, expected {SCORE_FUNCTION_FORMAT:?}",
                self.format
            ));
        }
        if self.num_layers == 0 {
            return Err("num_layers is 0".into());
        }
        if self.num_layers > MAX_LAYERS {
            return Err(format!(
                "num_layers is {}, more than {MAX_LAYERS}",
                self.num_layers
            ));
        }
        if self.num_kv_heads > MAX_KV_HEADS {
            return Err(format!(
                "num_kv_heads is {}, more than {MAX_KV_HEADS}",
                self.num_kv_heads
            ));
        }
        let check = |name: &str, c: &[f64]| {
            // `degree` comes from the file: `degree + 1` may overflow.
            if self.degree.checked_add(1) != Some(c.len()) {
                return Err(format!(
                    "{name} has {} values but degree {} needs {}",
                    c.len(),
                    self.degree,
                    self.degree as u128 + 1
                ));
            }
            if c.iter().any(|v| !v.is_finite()) {
                return Err(format!("{name} has a non-finite value"));
            }
            Ok(())
        };
        check("coefficients", &self.coefficients)?;
        if let Some(heads) = &self.head_coefficients {
            if heads.is_empty()
                || heads.len() > MAX_KV_HEADS
                || (self.num_kv_heads != 0 && heads.len() != self.num_kv_heads)
            {
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

    /// Normalised layer index `x = layer / (L - 1)` (0 for a one-layer model).
    pub fn x(&self, layer: usize) -> f64 {
        if self.num_layers > 1 {
            layer as f64 / (self.num_layers - 1) as f64
        } else {
            0.0
        }
    }

    /// Raw polynomial values of the layer function, one per layer (not clamped).
    pub fn raw_layer_values(&self) -> Vec<f64> {
        (0..self.num_layers)
            .map(|l| eval(&self.coefficients, self.x(l)))
            .collect()
    }

    /// Normalised per-layer shares (negatives clamp to a small epsilon, sum 1).
    pub fn layer_shares(&self) -> Vec<f64> {
        normalise(self.raw_layer_values())
    }

    /// Per-layer, per-KV-head shares `[L][Hkv]` (each head clamped to epsilon, then the
    /// whole table normalised to sum 1), when the file has head polynomials.
    pub fn head_shares(&self) -> Option<Vec<Vec<f64>>> {
        let heads = self.head_coefficients.as_ref()?;
        let flat: Vec<f64> = (0..self.num_layers)
            .flat_map(|l| heads.iter().map(move |c| eval(c, self.x(l))))
            .collect();
        let flat = normalise(flat);
        Some(flat.chunks(heads.len()).map(<[f64]>::to_vec).collect())
    }
}

/// `sum_i c_i x^i` by Horner's rule.
fn eval(coefficients: &[f64], x: f64) -> f64 {
    coefficients.iter().rev().fold(0.0, |acc, c| acc * x + c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{ "format": "cake-score-function/1", "model": "m", "num_layers": 3,
        "num_kv_heads": 2, "degree": 2, "domain": [0.0, 1.0], "coefficients": [1.0, -2.0, 2.0],
        "head_coefficients": null, "cv_error": 0.1, "extra": {"a": 1} }"#;

    #[test]
    fn evaluates_ascending_powers() {
        let f = ScoreFunction::from_json_str(FILE).unwrap();
        // x = 0, 0.5, 1 -> 1, 1 - 1 + 0.5 = 0.5, 1 - 2 + 2 = 1 -> shares 0.4, 0.2, 0.4.
        assert_eq!(f.raw_layer_values(), vec![1.0, 0.5, 1.0]);
        let s = f.layer_shares();
        assert!((s[0] - 0.4).abs() < 1e-12 && (s[1] - 0.2).abs() < 1e-12);
    }

    #[test]
    fn writes_what_it_reads() {
        let f = ScoreFunction::from_json_str(FILE).unwrap();
        let text = serde_json::to_string(&f).unwrap();
        assert!(text.contains("\"head_coefficients\":null"), "{text}");
        assert_eq!(ScoreFunction::from_json_str(&text).unwrap(), f);
    }

    #[test]
    fn rejects_bad_files() {
        let wrong_format = FILE.replace("cake-score-function/1", "other/2");
        assert!(ScoreFunction::from_json_str(&wrong_format).is_err());
        let wrong_degree = FILE.replace("\"degree\": 2", "\"degree\": 3");
        let e = ScoreFunction::from_json_str(&wrong_degree)
            .unwrap_err()
            .to_string();
        assert!(e.contains("degree 3"), "{e}");
        assert!(ScoreFunction::from_json_str("{ \"format\": ").is_err());
        let heads = FILE.replace("null", "[[1.0, 0.0, 0.0]]");
        assert!(ScoreFunction::from_json_str(&heads).is_err());
    }

    #[test]
    fn head_shares_average_into_layer_shares() {
        let text = FILE.replace("null", "[[1.0, 0.0, 0.0], [3.0, 0.0, -4.0]]");
        let f = ScoreFunction::from_json_str(&text).unwrap();
        let heads = f.head_shares().unwrap();
        // Head 1 at x = 1 is -1 -> epsilon; the others are 1, 3, 1, 2.
        assert_eq!(heads.len(), 3);
        assert!(heads[2][1] < 1e-6);
        assert!((heads[0][1] / heads[0][0] - 3.0).abs() < 1e-12);
    }
}
