//! LongBench v1 JSONL records, read one line at a time.
//!
//! A data folder holds `<dataset>.jsonl` files (as in LongBench's `data.zip` or the
//! synthetic suite's output). Each line is one record with the fields below.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One LongBench record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LongBenchRecord {
    /// The question / query / instruction (may be empty, e.g. for summarisation).
    pub input: String,
    /// The long context.
    pub context: String,
    /// Gold answers; the score is the maximum over them.
    pub answers: Vec<String>,
    /// Context length: words (English) or characters (Chinese) in LongBench; tokens of the
    /// filled prompt in the synthetic suite.
    pub length: u64,
    /// Dataset name.
    pub dataset: String,
    /// "en" or "zh".
    pub language: String,
    /// Class labels for the classification datasets, null elsewhere.
    pub all_classes: Option<Vec<String>>,
    /// Record id.
    #[serde(rename = "_id")]
    pub id: String,
    /// Relative position (0 = start, 1 = end) of the answer in the context; only the
    /// synthetic suite sets it (LongBench's tools ignore the extra field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<f64>,
    /// Where the answer-bearing "needle" sits in `context`, for the synthetic tasks with
    /// one (passkey, multi-key, key-value, few-shot); left out of the JSON when `None`, and
    /// ignored by readers that do not know it (LongBench's `pred.py` and `eval.py` read
    /// only the fields they use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needle: Option<NeedleSpan>,
}

/// The needle of a synthetic record: its text and its place in the record's `context`, in
/// characters (Unicode scalar values, as Python indexes a `str`:
/// `context[char_start:char_end] == text`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeedleSpan {
    /// The needle's text.
    pub text: String,
    /// First character of the needle in `context`.
    pub char_start: usize,
    /// One past its last character.
    pub char_end: usize,
}

impl NeedleSpan {
    /// The span of the first occurrence of `text` in `context`, if any.
    pub fn find(context: &str, text: &str) -> Option<Self> {
        let byte = context.find(text)?;
        let char_start = context[..byte].chars().count();
        Some(Self {
            text: text.to_string(),
            char_start,
            char_end: char_start + text.chars().count(),
        })
    }

    /// The needle's byte range in `context`, checked: `None` when the span lies outside
    /// the context or does not hold `text` there.
    pub fn byte_range(&self, context: &str) -> Option<std::ops::Range<usize>> {
        if self.char_start > self.char_end {
            return None;
        }
        let mut bytes = context
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(context.len()));
        let start = bytes.nth(self.char_start)?;
        let end = if self.char_end == self.char_start {
            start
        } else {
            bytes.nth(self.char_end - self.char_start - 1)?
        };
        (context.get(start..end) == Some(self.text.as_str())).then_some(start..end)
    }
}

/// Reading a data file failed.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The dataset file does not exist.
    #[error(
        "no data file {path}: expected <data dir>/<dataset>.jsonl (LongBench's data.zip layout or `generate_suite` output)"
    )]
    Missing {
        /// Path looked for.
        path: PathBuf,
    },
    /// An I/O error while reading.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A line is not a valid LongBench record.
    #[error(
        "{path}:{line}: not a LongBench record ({source}); each line must be a JSON object with input, context, answers, length, dataset, language, all_classes and _id"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Parse error.
        source: serde_json::Error,
    },
}

/// Streaming reader over the records of one JSONL file.
pub struct RecordReader {
    path: PathBuf,
    lines: std::io::Lines<BufReader<File>>,
    line: usize,
}

impl RecordReader {
    /// Open `path` for reading.
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                DataError::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                DataError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            lines: BufReader::new(file).lines(),
            line: 0,
        })
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Iterator for RecordReader {
    type Item = Result<LongBenchRecord, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let text = match self.lines.next()? {
                Ok(t) => t,
                Err(source) => {
                    return Some(Err(DataError::Io {
                        path: self.path.clone(),
                        source,
                    }));
                }
            };
            self.line += 1;
            if text.trim().is_empty() {
                continue; // blank lines (e.g. a trailing one) carry no record
            }
            return Some(
                serde_json::from_str(&text).map_err(|source| DataError::Malformed {
                    path: self.path.clone(),
                    line: self.line,
                    source,
                }),
            );
        }
    }
}

/// Path of a dataset's file in a data folder: `<dir>/<dataset>.jsonl`.
pub fn dataset_path(dir: &Path, dataset: &str) -> PathBuf {
    dir.join(format!("{dataset}.jsonl"))
}

/// Stream the records of `<dir>/<dataset>.jsonl`.
pub fn read_dataset(dir: &Path, dataset: &str) -> Result<RecordReader, DataError> {
    RecordReader::open(&dataset_path(dir, dataset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_records_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trec.jsonl");
        let mut f = File::create(&path).unwrap();
        let good = r#"{"input":"q","context":"c","answers":["Food"],"length":12,"dataset":"trec","language":"en","all_classes":["Food","Date"],"_id":"x1"}"#;
        writeln!(f, "{good}").unwrap();
        writeln!(f).unwrap();
        writeln!(f, r#"{{"input":"q","context":"c"}}"#).unwrap();
        drop(f);
        let mut reader = read_dataset(dir.path(), "trec").unwrap();
        let first = reader.next().unwrap().unwrap();
        assert_eq!(first.id, "x1");
        assert_eq!(
            first.all_classes.as_deref(),
            Some(&["Food".to_string(), "Date".to_string()][..])
        );
        let err = reader.next().unwrap().unwrap_err().to_string();
        assert!(err.contains("trec.jsonl:3"), "{err}");
        assert!(reader.next().is_none());
        let missing = read_dataset(dir.path(), "qasper")
            .err()
            .unwrap()
            .to_string();
        assert!(missing.contains("qasper.jsonl"), "{missing}");
    }
}
