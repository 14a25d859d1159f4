//! Reading a model folder's small files (config, tokenizer, index): one error type that
//! names the file, for "cannot read" and for "not JSON".

use std::path::{Path, PathBuf};

/// A file that cannot be read, or is not the JSON it should be.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not valid JSON.
    #[error("{path} is not valid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error (with line and column).
        source: serde_json::Error,
    },
}

/// The whole of `path` as text.
pub fn read_text(path: &Path) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|source| FileError::Io {
        path: path.into(),
        source,
    })
}

/// `path` parsed as JSON.
pub fn read_json(path: &Path) -> Result<serde_json::Value, FileError> {
    serde_json::from_str(&read_text(path)?).map_err(|source| FileError::Json {
        path: path.into(),
        source,
    })
}
