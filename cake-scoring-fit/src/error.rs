//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong while collecting statistics, fitting, or reading and
/// writing the crate's files. File errors name the file (and line where there is one).
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line of a JSONL statistics file is not a valid row.
    #[error("{path}:{line}: invalid statistics row: {message}")]
    InvalidRow {
        /// The file.
        path: PathBuf,
        /// 1-based line (JSONL) or record line (CSV, header is line 1).
        line: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A score-function JSON file is malformed or inconsistent.
    #[error("{path}: invalid score-function file: {message}")]
    InvalidScoreFile {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A state matrix does not have the shape it claims.
    #[error("state matrix of {len} values does not have shape {shape:?}")]
    BadShape {
        /// Number of values supplied.
        len: usize,
        /// The claimed shape.
        shape: Vec<usize>,
    },
    /// PCA needs at least two tokens (the covariance uses n - 1).
    #[error("PCA needs at least 2 tokens, got {0}")]
    TooFewTokens(usize),
    /// A state matrix has zero variance in every direction (all tokens identical).
    #[error(
        "state matrix has zero total variance: every token has the same state, PCA is undefined"
    )]
    ZeroVariance,
    /// An input value is NaN or infinite, or negative where it must not be.
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// Not enough data for the requested operation.
    #[error("not enough data: {0}")]
    NotEnoughData(String),
    /// Rows that must agree (same model, same PCA setting) do not.
    #[error("inconsistent rows: {0}")]
    Inconsistent(String),
    /// A polynomial degree outside the supported range.
    #[error("polynomial degree {0} is not supported (use 0..=8 for fits, 1..=8 for selection)")]
    BadDegree(usize),
    /// The linear-algebra backend reported a failure.
    #[error("linear algebra failed: {0}")]
    Linalg(String),
    /// A layer of a model run could not be measured ([`crate::StatsCollector`]).
    #[error("cannot measure layer {layer}: {message}")]
    Measure {
        /// The layer.
        layer: usize,
        /// What went wrong.
        message: String,
    },
    /// Drawing the plot failed.
    #[error("{path}: cannot draw plot: {message}")]
    Plot {
        /// The output file.
        path: PathBuf,
        /// The backend's message.
        message: String,
    },
}

/// Shorthand for results with [`FitError`].
pub type Result<T, E = FitError> = std::result::Result<T, E>;
