//! Scoring prediction files the way LongBench's `eval.py` does.
//!
//! Per record: first line only for trec / triviaqa / samsum / lsht (and synthetic tasks
//! that declare it), the maximum of the metric over the gold answers. Per dataset:
//! `round(100 * total / n, 2)` with Python's float `round`; for LongBench-E, per length
//! bucket (`length` < 4000, < 8000, else) `round(100 * np.mean(bucket), 2)`, which is
//! NumPy's rounding (`rint(x * 100) / 100`) over NumPy's pairwise sum. An empty bucket is
//! NaN in Python (written as `NaN` into result.json); here it is `None` (`null`).
//! Like `eval.py`, `all_classes` is taken from the last line of a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::metrics::MetricError;
use crate::predict::PredictionLine;
use crate::pytext;
use crate::registry::{self, DatasetSpec, ENGLISH_16, RegistryError};

/// Bucket names of LongBench-E.
pub const BUCKETS: [&str; 3] = ["0-4k", "4-8k", "8k+"];

/// Evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Cannot read the folder or a file.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A prediction line is not valid.
    #[error(
        "{path}:{line}: not a prediction line ({source}); expected {{\"pred\", \"answers\", \"all_classes\", \"length\"}}"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Parse error.
        source: serde_json::Error,
    },
    /// A file name is not a known dataset.
    #[error("{path}: {source}")]
    UnknownDataset {
        /// The file.
        path: PathBuf,
        /// Lookup error (lists known names).
        source: RegistryError,
    },
    /// A metric could not score a record (the Python code would raise here).
    #[error("{dataset}, record {index}: {source}")]
    Metric {
        /// Dataset.
        dataset: String,
        /// 0-based record index.
        index: usize,
        /// Cause.
        source: MetricError,
    },
    /// Nothing to score.
    #[error("{what}: no predictions to score")]
    Empty {
        /// File or dataset.
        what: String,
    },
    /// Shard files of a sharded run cannot be merged (missing, incomplete, inconsistent).
    #[error("{path}: {message}")]
    Shards {
        /// The file or folder at fault.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// Predictions, answers and lengths differ in count.
    #[error("{dataset}: {predictions} predictions but {answers} answer lists / lengths")]
    LengthMismatch {
        /// Dataset.
        dataset: String,
        /// Number of predictions.
        predictions: usize,
        /// Number of answer lists or lengths.
        answers: usize,
    },
}

/// Score of one record: the metric's maximum over the gold answers (0 when none).
pub fn score_record(
    spec: &DatasetSpec,
    prediction: &str,
    answers: &[String],
    all_classes: Option<&[String]>,
) -> Result<f64, MetricError> {
    let prediction = if spec.first_line_only {
        pytext::first_line(prediction)
    } else {
        prediction
    };
    let mut best = 0.0f64;
    for gold in answers {
        // Python's max(score, new) keeps the first of equal values; NaN never occurs.
        let s = spec.metric.score(prediction, gold, all_classes)?;
        if s > best {
            best = s;
        }
    }
    Ok(best)
}

/// Score of every record (0..1, [`score_record`]) in order.
///
/// # Errors
/// [`EvalError::LengthMismatch`] when the slices differ in length; [`EvalError::Metric`]
/// when a metric fails on a record.
pub fn record_scores(
    spec: &DatasetSpec,
    predictions: &[String],
    answers: &[Vec<String>],
    all_classes: Option<&[String]>,
) -> Result<Vec<f64>, EvalError> {
    if predictions.len() != answers.len() {
        return Err(EvalError::LengthMismatch {
            dataset: spec.name.clone(),
            predictions: predictions.len(),
            answers: answers.len(),
        });
    }
    predictions
        .iter()
        .zip(answers)
        .enumerate()
        .map(|(index, (p, a))| {
            score_record(spec, p, a, all_classes).map_err(|source| EvalError::Metric {
                dataset: spec.name.clone(),
                index,
                source,
            })
        })
        .collect()
}

/// `eval.py`'s `scorer`: the dataset score, x100, rounded to 2 decimals.
pub fn score_predictions(
    spec: &DatasetSpec,
    predictions: &[String],
    answers: &[Vec<String>],
    all_classes: Option<&[String]>,
) -> Result<f64, EvalError> {
    let scores = record_scores(spec, predictions, answers, all_classes)?;
    plain_score(spec, &scores)
}

/// The dataset score of per-record scores: `round(100 * total / n, 2)`.
fn plain_score(spec: &DatasetSpec, scores: &[f64]) -> Result<f64, EvalError> {
    if scores.is_empty() {
        return Err(EvalError::Empty {
            what: spec.name.clone(),
        });
    }
    let total = scores.iter().fold(0.0, |acc, s| acc + s);
    Ok(pytext::py_round2(100.0 * total / scores.len() as f64))
}

/// Bucket of a LongBench-E length.
pub fn bucket_of(length: u64) -> &'static str {
    if length < 4000 {
        BUCKETS[0]
    } else if length < 8000 {
        BUCKETS[1]
    } else {
        BUCKETS[2]
    }
}

/// `eval.py`'s `scorer_e`: per-bucket scores; `None` for an empty bucket (NaN in Python).
pub fn score_predictions_e(
    spec: &DatasetSpec,
    predictions: &[String],
    answers: &[Vec<String>],
    lengths: &[u64],
    all_classes: Option<&[String]>,
) -> Result<BTreeMap<String, Option<f64>>, EvalError> {
    if lengths.len() != predictions.len() {
        return Err(EvalError::LengthMismatch {
            dataset: spec.name.clone(),
            predictions: predictions.len(),
            answers: lengths.len(),
        });
    }
    let scores = record_scores(spec, predictions, answers, all_classes)?;
    Ok(bucket_scores(&scores, lengths))
}

/// Per-bucket scores of per-record scores and their lengths.
fn bucket_scores(scores: &[f64], lengths: &[u64]) -> BTreeMap<String, Option<f64>> {
    let mut buckets: BTreeMap<&str, Vec<f64>> = BUCKETS.iter().map(|&b| (b, Vec::new())).collect();
    for (s, &len) in scores.iter().zip(lengths) {
        buckets.entry(bucket_of(len)).or_default().push(*s);
    }
    buckets
        .into_iter()
        .map(|(b, v)| {
            let value =
                (!v.is_empty()).then(|| pytext::numpy_round2(100.0 * pytext::numpy_mean(&v)));
            (b.to_string(), value)
        })
        .collect()
}

/// Score of one dataset in a result: a number, or per-bucket numbers for LongBench-E.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DatasetScore {
    /// LongBench score (0-100, 2 decimals).
    Plain(f64),
    /// LongBench-E scores per bucket (`None` when the bucket is empty).
    Buckets(BTreeMap<String, Option<f64>>),
}

/// The evaluation of a prediction folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Per dataset, as in LongBench's result.json.
    pub scores: BTreeMap<String, DatasetScore>,
    /// Mean of the English-16 datasets (per bucket for LongBench-E: bucket means over the
    /// datasets that have that bucket), `None` unless all 16 were evaluated.
    pub english16_average: Option<DatasetScore>,
    /// English-16 datasets that had no prediction file.
    pub english16_missing: Vec<String>,
    /// Number of scored predictions per dataset.
    pub counts: BTreeMap<String, usize>,
    /// Per dataset, every record's score (0..1, the maximum over its answers) in file
    /// order: the data of the bootstrap intervals ([`crate::stats`]).
    #[serde(default)]
    pub record_scores: BTreeMap<String, Vec<f64>>,
    /// Per dataset, every record's `_id` in file order (empty when a line has none): two
    /// runs are compared record by record only when these agree.
    #[serde(default)]
    pub record_ids: BTreeMap<String, Vec<String>>,
    /// Per dataset, every record's `length` in file order (LongBench-E's buckets, and the
    /// per-length tables of `cake eval`).
    #[serde(default)]
    pub record_lengths: BTreeMap<String, Vec<u64>>,
}

impl EvalResult {
    /// LongBench's result.json content: `{dataset: score}` (pretty, 4-space indent).
    pub fn result_json(&self) -> String {
        let mut buf = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
        // A map of plain values always serialises.
        if self.scores.serialize(&mut ser).is_err() {
            return String::from("{}");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Write [`Self::result_json`] to `path`.
    pub fn write_result_json(&self, path: &Path) -> Result<(), EvalError> {
        std::fs::write(path, self.result_json() + "\n").map_err(|source| EvalError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Read one prediction file (all lines; a torn last line is an error here).
pub fn read_predictions(path: &Path) -> Result<Vec<PredictionLine>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| EvalError::Malformed {
                path: path.to_path_buf(),
                line: i + 1,
                source,
            })
        })
        .collect()
}

/// Evaluate every `<dataset>.jsonl` in `dir` (`longbench_e`: per length bucket).
pub fn evaluate_dir(dir: &Path, longbench_e: bool) -> Result<EvalResult, EvalError> {
    let entries = std::fs::read_dir(dir).map_err(|source| EvalError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| EvalError::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            files.push(path);
        }
    }
    files.sort();
    let mut scores = BTreeMap::new();
    let mut counts = BTreeMap::new();
    let mut per_record = BTreeMap::new();
    let mut ids = BTreeMap::new();
    let mut record_lengths = BTreeMap::new();
    for path in files {
        // eval.py: dataset = filename.split('.')[0]
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let name = file_name.split('.').next().unwrap_or_default();
        let spec = registry::lookup(name).map_err(|source| EvalError::UnknownDataset {
            path: path.clone(),
            source,
        })?;
        let lines = read_predictions(&path)?;
        if lines.is_empty() {
            return Err(EvalError::Empty {
                what: path.display().to_string(),
            });
        }
        let predictions: Vec<String> = lines.iter().map(|l| l.pred.clone()).collect();
        let answers: Vec<Vec<String>> = lines.iter().map(|l| l.answers.clone()).collect();
        let all_classes = lines.last().and_then(|l| l.all_classes.clone());
        let records = record_scores(spec, &predictions, &answers, all_classes.as_deref())?;
        let lengths: Vec<u64> = lines.iter().map(|l| l.length).collect();
        let score = if longbench_e {
            DatasetScore::Buckets(bucket_scores(&records, &lengths))
        } else {
            DatasetScore::Plain(plain_score(spec, &records)?)
        };
        counts.insert(name.to_string(), lines.len());
        scores.insert(name.to_string(), score);
        per_record.insert(name.to_string(), records);
        record_lengths.insert(name.to_string(), lengths);
        ids.insert(
            name.to_string(),
            lines
                .iter()
                .map(|l| l.id.clone().unwrap_or_default())
                .collect(),
        );
    }
    let english16_missing: Vec<String> = ENGLISH_16
        .iter()
        .filter(|d| !scores.contains_key(**d))
        .map(|d| d.to_string())
        .collect();
    let english16_average = english16_missing
        .is_empty()
        .then(|| average(&scores, &ENGLISH_16));
    Ok(EvalResult {
        scores,
        english16_average,
        english16_missing,
        counts,
        record_scores: per_record,
        record_ids: ids,
        record_lengths,
    })
}

/// Plain mean of the named datasets' scores (per bucket for LongBench-E scores), rounded
/// to 2 decimals.
pub fn average(scores: &BTreeMap<String, DatasetScore>, names: &[&str]) -> DatasetScore {
    let picked: Vec<&DatasetScore> = names.iter().filter_map(|n| scores.get(*n)).collect();
    let plain: Vec<f64> = picked
        .iter()
        .filter_map(|s| {
            if let DatasetScore::Plain(v) = s {
                Some(*v)
            } else {
                None
            }
        })
        .collect();
    if plain.len() == picked.len() {
        let mean = plain.iter().sum::<f64>() / plain.len().max(1) as f64;
        return DatasetScore::Plain(pytext::py_round2(mean));
    }
    let mut out = BTreeMap::new();
    for b in BUCKETS {
        let vals: Vec<f64> = picked
            .iter()
            .filter_map(|s| match s {
                DatasetScore::Buckets(m) => m.get(b).copied().flatten(),
                DatasetScore::Plain(_) => None,
            })
            .collect();
        let mean = (!vals.is_empty())
            .then(|| pytext::py_round2(vals.iter().sum::<f64>() / vals.len() as f64));
        out.insert(b.to_string(), mean);
    }
    DatasetScore::Buckets(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_split_at_4000_and_8000() {
        assert_eq!(bucket_of(3999), "0-4k");
        assert_eq!(bucket_of(4000), "4-8k");
        assert_eq!(bucket_of(7999), "4-8k");
        assert_eq!(bucket_of(8000), "8k+");
    }

    #[test]
    fn dataset_score_hand_computed() {
        let spec = registry::lookup("passage_count").unwrap();
        // Scores 1, 0.5, 0 -> 100 * 1.5 / 3 = 50.0
        let preds = vec!["3".to_string(), "3 4".to_string(), "".to_string()];
        let answers = vec![vec!["3".to_string()]; 3];
        assert_eq!(
            score_predictions(spec, &preds, &answers, None).unwrap(),
            50.0
        );
        let e = score_predictions_e(spec, &preds, &answers, &[10, 5000, 5000], None).unwrap();
        assert_eq!(e["0-4k"], Some(100.0));
        assert_eq!(e["4-8k"], Some(25.0));
        assert_eq!(e["8k+"], None);
        assert!(matches!(
            score_predictions(spec, &[], &[], None),
            Err(EvalError::Empty { .. })
        ));
    }

    #[test]
    fn first_line_rule_applies_to_trec() {
        let spec = registry::lookup("trec").unwrap();
        let classes = vec!["Food".to_string(), "Date".to_string()];
        // Only "Food" (first line) is scored: 1 match, the gold -> 1.0.
        let s = score_record(spec, "\nFood\nDate", &["Food".to_string()], Some(&classes)).unwrap();
        assert_eq!(s, 1.0);
    }
}
