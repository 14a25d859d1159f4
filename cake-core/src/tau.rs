//! Preference temperatures per model and cache size, as data: the published table
//! shipped with the crate (`tau_defaults.json`), or a table file of the same format (as
//! `cake tune` writes it), with a fallback of `1.0 / 1.0` for models the published table
//! lacks.
//!
//! The format (JSON; `source` is free text and optional):
//!
//! ```json
//! {
//!   "source": "CAKE (ICLR 2025), published preference temperatures",
//!   "entries": [
//!     { "model": "Llama-3.1-8B-Instruct", "cache_size": 128, "tau1": 1.6, "tau2": 0.6 }
//!   ]
//! }
//! ```
//!
//! Every entry needs a non-empty `model`, a `cache_size` above 0 and positive finite
//! temperatures; a (model, cache size) pair appears once; unknown keys are errors.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The embedded table.
const TABLE: &str = include_str!("tau_defaults.json");

/// One published `(model, C) -> (tau1, tau2)` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TauEntry {
    /// Model name as published (Hugging Face repository name without the owner).
    pub model: String,
    /// Cache size C the values were tuned for.
    pub cache_size: usize,
    /// Entropy temperature.
    pub tau1: f64,
    /// Variance temperature.
    pub tau2: f64,
}

/// A table of temperatures: the published one, or a file in its format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TauTable {
    /// Where the values come from (free text).
    #[serde(default)]
    pub source: String,
    /// The entries, at least one.
    pub entries: Vec<TauEntry>,
}

impl TauTable {
    /// The table shipped with the crate.
    pub fn published() -> Self {
        // The table is part of the crate and checked by a unit test, so it always parses.
        Self::parse(TABLE, "tau_defaults.json").unwrap_or(Self {
            source: String::new(),
            entries: Vec::new(),
        })
    }

    /// Parses and validates the JSON `text` of a table; `origin` (a file name) is what
    /// errors name.
    ///
    /// # Errors
    /// [`ConfigError::TauFile`] saying what is wrong and where (line and column of a
    /// syntax error, or the entry at fault).
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let bad = |reason: String| ConfigError::TauFile {
            path: origin.to_string(),
            reason,
        };
        let table: Self = serde_json::from_str(text).map_err(|e| {
            bad(format!(
                "{e}; expected {{\"source\": \"...\", \"entries\": [{{\"model\", \"cache_size\", \"tau1\", \"tau2\"}}]}}"
            ))
        })?;
        table.validate().map_err(bad)?;
        Ok(table)
    }

    /// Reads and validates a table file.
    ///
    /// # Errors
    /// [`ConfigError::Io`] when the file cannot be read, [`ConfigError::TauFile`] when it
    /// is not a valid table.
    pub fn from_path(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Checks every entry; the reason names the entry (1-based) and the fix.
    fn validate(&self) -> Result<(), String> {
        if self.entries.is_empty() {
            return Err(
                "`entries` is empty: give at least one {model, cache_size, tau1, tau2}".into(),
            );
        }
        for (i, e) in self.entries.iter().enumerate() {
            let at = format!(
                "entry {} ({:?}, cache_size {})",
                i + 1,
                e.model,
                e.cache_size
            );
            if e.model.trim().is_empty() {
                return Err(format!("entry {}: `model` is empty: name the model", i + 1));
            }
            if e.cache_size == 0 {
                return Err(format!("{at}: `cache_size` must be at least 1"));
            }
            for (name, value) in [("tau1", e.tau1), ("tau2", e.tau2)] {
                if !(value.is_finite() && value > 0.0) {
                    return Err(format!(
                        "{at}: {name} = {value} must be a positive finite number"
                    ));
                }
            }
            if let Some(j) = self.entries[..i].iter().position(|o| {
                o.cache_size == e.cache_size && normalise_name(&o.model) == normalise_name(&e.model)
            }) {
                return Err(format!(
                    "{at} repeats entry {}: keep one entry per model and cache size",
                    j + 1
                ));
            }
        }
        Ok(())
    }

    /// Pretty JSON in the shipped table's format (one entry per line), newline-terminated.
    pub fn to_json(&self) -> String {
        let mut text = String::from("{\n");
        text.push_str(&format!(
            "  \"source\": {},\n  \"entries\": [\n",
            serde_json::Value::from(self.source.as_str())
        ));
        let lines: Vec<String> = self
            .entries
            .iter()
            .map(|e| {
                format!(
                    "    {{ \"model\": {}, \"cache_size\": {}, \"tau1\": {}, \"tau2\": {} }}",
                    serde_json::Value::from(e.model.as_str()),
                    e.cache_size,
                    serde_json::Value::from(e.tau1),
                    serde_json::Value::from(e.tau2)
                )
            })
            .collect();
        text.push_str(&lines.join(",\n"));
        text.push_str("\n  ]\n}\n");
        text
    }

    /// Whether the table has an entry for `model` (matched as [`lookup_tau`] does).
    pub fn has_model(&self, model: &str) -> bool {
        let wanted = normalise_name(model);
        self.entries
            .iter()
            .any(|e| normalise_name(&e.model) == wanted)
    }

    /// The entry for `model` at the cache size nearest `cache_size` (ties: the smaller);
    /// `None` when the model is not in the table.
    pub fn nearest(&self, model: &str, cache_size: usize) -> Option<&TauEntry> {
        let wanted = normalise_name(model);
        self.entries
            .iter()
            .filter(|e| normalise_name(&e.model) == wanted)
            .min_by_key(|e| (e.cache_size.abs_diff(cache_size), e.cache_size))
    }
}

/// A table read from a file, with its path (for reports).
#[derive(Debug, Clone, PartialEq)]
pub struct TauFile {
    /// The file as given.
    pub path: PathBuf,
    /// Its validated contents.
    pub table: TauTable,
}

impl TauFile {
    /// Reads and validates `path` (see [`TauTable::from_path`]).
    ///
    /// # Errors
    /// As [`TauTable::from_path`].
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        Ok(Self {
            path: path.to_path_buf(),
            table: TauTable::from_path(path)?,
        })
    }

    /// Checks that the file has temperatures for `model`.
    ///
    /// # Errors
    /// [`ConfigError::TauFile`] listing the models it has.
    pub fn require_model(&self, model: &str) -> Result<(), ConfigError> {
        if self.table.has_model(model) {
            return Ok(());
        }
        let mut models: Vec<&str> = self
            .table
            .entries
            .iter()
            .map(|e| e.model.as_str())
            .collect();
        models.dedup();
        Err(ConfigError::TauFile {
            path: self.path.display().to_string(),
            reason: format!(
                "no entry for model {model:?} (it has {}): add entries for it (e.g. with `cake tune --model {model}`), or drop --tau-file",
                models.join(", ")
            ),
        })
    }

    /// Temperatures for `model` at `cache_size` from this file (nearest cache size, ties:
    /// the smaller); `1.0 / 1.0` with [`TauSource::Fallback`] when the model is not in
    /// it (see [`TauFile::require_model`]).
    pub fn lookup(&self, model: &str, cache_size: usize) -> TauLookup {
        self.table
            .nearest(model, cache_size)
            .map_or(TauLookup::fallback(), |e| TauLookup {
                tau1: e.tau1,
                tau2: e.tau2,
                source: TauSource::File {
                    path: self.path.display().to_string(),
                    model: e.model.clone(),
                    cache_size: e.cache_size,
                },
            })
    }
}

/// Where looked-up temperatures came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TauSource {
    /// The published entry for this model at the nearest published cache size.
    Published {
        /// The table's model name.
        model: String,
        /// The published cache size used.
        cache_size: usize,
    },
    /// The entry of a table file (`--tau-file`) at the nearest cache size it has.
    File {
        /// The file.
        path: String,
        /// The file's model name.
        model: String,
        /// The file's cache size used.
        cache_size: usize,
    },
    /// The model is not in the table: `1.0 / 1.0`.
    Fallback,
    /// Given explicitly by the user.
    User,
}

/// Temperatures and their origin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TauLookup {
    /// Entropy temperature.
    pub tau1: f64,
    /// Variance temperature.
    pub tau2: f64,
    /// Where they came from.
    pub source: TauSource,
}

impl TauLookup {
    /// `tau1 = tau2 = 1`, for a model no table lists.
    pub fn fallback() -> Self {
        Self {
            tau1: 1.0,
            tau2: 1.0,
            source: TauSource::Fallback,
        }
    }
}

/// The published entries.
pub fn published() -> Vec<TauEntry> {
    TauTable::published().entries
}

/// Lower-cased last path component without a `meta-` prefix or a `-hf` suffix.
fn normalise_name(name: &str) -> String {
    let base = name.trim().rsplit(['/', '\\']).next().unwrap_or(name);
    let lower = base.to_ascii_lowercase();
    let lower = lower.strip_suffix("-hf").unwrap_or(&lower);
    lower.strip_prefix("meta-").unwrap_or(lower).to_string()
}

/// Temperatures for `model` (a Hugging Face name or path; matched case-insensitively on
/// the last path component) at cache size `cache_size`, from the nearest published cache
/// size (ties: the smaller); `1.0 / 1.0` with [`TauSource::Fallback`] for other models.
pub fn lookup_tau(model: &str, cache_size: usize) -> TauLookup {
    TauTable::published()
        .nearest(model, cache_size)
        .map_or(TauLookup::fallback(), |e| TauLookup {
            tau1: e.tau1,
            tau2: e.tau2,
            source: TauSource::Published {
                model: e.model.clone(),
                cache_size: e.cache_size,
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_parses_with_all_published_values() {
        assert_eq!(published().len(), 8);
        // The shipped file goes through the same validating parser as user files.
        let t = TauTable::parse(TABLE, "tau_defaults.json").unwrap();
        assert!(t.source.starts_with("CAKE"));
    }

    #[test]
    fn lookup_nearest_and_fallback() {
        for (model, cache_size, taus) in [
            ("meta-llama/Meta-Llama-3.1-8B-Instruct", 1024, (1.6, 0.4)),
            ("Qwen/Qwen2.5-7B-Instruct", 256, (0.4, 0.6)),
            ("meta-llama/Llama-2-7b-chat-hf", 128, (0.9, 2.3)),
            ("meta-llama/Llama-2-7b-chat", 2048, (1.9, 1.8)),
            // |576 - 128| = 448 < |576 - 1024| = 448? equal -> the smaller, 128.
            ("Mistral-7B-Instruct-v0.3", 576, (1.0, 0.8)),
        ] {
            let t = lookup_tau(model, cache_size);
            assert_eq!((t.tau1, t.tau2), taus, "{model} at {cache_size}");
        }
        for (model, cache_size) in [("Llama-2-13b-chat", 128), ("SmolLM2-135M-Instruct", 1024)] {
            assert_eq!(lookup_tau(model, cache_size).source, TauSource::Fallback);
        }
    }

    #[test]
    fn a_written_table_reads_back_equal_and_drives_lookups() {
        let table = TauTable {
            source: "cake tune on \"calib\"".into(),
            entries: vec![
                TauEntry {
                    model: "tiny".into(),
                    cache_size: 64,
                    tau1: 0.5,
                    tau2: 2.0,
                },
                TauEntry {
                    model: "tiny".into(),
                    cache_size: 256,
                    tau1: 4.0,
                    tau2: 1.25,
                },
            ],
        };
        let text = table.to_json();
        assert_eq!(TauTable::parse(&text, "t.json").unwrap(), table);
        // The shipped table survives the writer too.
        let published = TauTable::published();
        assert_eq!(
            TauTable::parse(&published.to_json(), "p.json").unwrap(),
            published
        );
        let dir = std::env::temp_dir().join(format!("cake-tau-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("taus.json");
        std::fs::write(&path, &text).unwrap();
        let file = TauFile::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let t = file.lookup("org/TINY", 100);
        assert_eq!((t.tau1, t.tau2), (0.5, 2.0));
        assert_eq!(
            t.source,
            TauSource::File {
                path: path.display().to_string(),
                model: "tiny".into(),
                cache_size: 64
            }
        );
        assert_eq!(file.lookup("tiny", 200).tau1, 4.0);
        assert!(file.require_model("tiny").is_ok());
        let err = file.require_model("other").unwrap_err().to_string();
        assert!(
            err.contains("taus.json") && err.contains("\"other\"") && err.contains("tiny"),
            "{err}"
        );
        assert_eq!(file.lookup("other", 64).source, TauSource::Fallback);
    }

    #[test]
    fn bad_tables_name_the_file_and_the_fix() {
        let entry = |model: &str, c: i64, t1: &str, t2: &str| {
            format!(r#"{{"model": "{model}", "cache_size": {c}, "tau1": {t1}, "tau2": {t2}}}"#)
        };
        let table = |entries: &[String]| format!(r#"{{"entries": [{}]}}"#, entries.join(","));
        for (text, needles) in [
            ("not json".to_string(), vec!["expected", "line 1"]),
            (r#"{"entries": []}"#.to_string(), vec!["`entries` is empty"]),
            (
                r#"{"entries": [], "sauce": 1}"#.to_string(),
                vec!["unknown field `sauce`"],
            ),
            (
                table(&[r#"{"model": "m", "cache_size": 64, "tau_1": 1, "tau2": 1}"#.into()]),
                vec!["unknown field `tau_1`"],
            ),
            (
                table(&[entry("m", 64, "1", "1"), entry("m", 128, "-1", "1")]),
                vec!["entry 2", "tau1 = -1", "positive finite"],
            ),
            (
                table(&[entry("m", 64, "1", "0")]),
                vec!["entry 1", "tau2 = 0"],
            ),
            (
                table(&[entry("m", 0, "1", "1")]),
                vec!["cache_size` must be"],
            ),
            (table(&[entry(" ", 64, "1", "1")]), vec!["`model` is empty"]),
            (
                table(&[entry("M", 64, "1", "1"), entry("org/m", 64, "2", "2")]),
                vec!["entry 2", "repeats entry 1"],
            ),
            (
                table(&[entry("m", -5, "1", "1")]),
                vec!["invalid value", "line 1"],
            ),
        ] {
            let err = TauTable::parse(&text, "bad.json").unwrap_err().to_string();
            assert!(err.starts_with("temperature file bad.json: "), "{err}");
            for needle in needles {
                assert!(err.contains(needle), "`{needle}` not in: {err}");
            }
        }
        let err = TauTable::from_path(Path::new("/no/taus.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/no/taus.json"), "{err}");
    }
}
