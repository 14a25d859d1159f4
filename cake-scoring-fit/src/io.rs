//! Statistics files: JSONL (one [`LayerStatsRow`] object per line) and CSV (one row per line,
//! flat columns named in [`CSV_HEADER`]). Readers validate every row and name the file and
//! line of the first bad one.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::collect::LayerStatsRow;
use crate::error::{FitError, Result};
use crate::pca::PcaSummary;

/// Column names of the CSV statistics file, in order.
pub const CSV_HEADER: [&str; 15] = [
    "dataset",
    "sample_id",
    "num_layers",
    "layer",
    "kv_head",
    "preference",
    "entropy",
    "variance",
    "share",
    "key_pca_top_k",
    "key_pca_explained_variance_top_k",
    "key_pca_spectral_entropy",
    "value_pca_top_k",
    "value_pca_explained_variance_top_k",
    "value_pca_spectral_entropy",
];

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FitError + '_ {
    move |source| FitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes rows as JSONL, one object per line.
pub fn write_jsonl(path: &Path, rows: &[LayerStatsRow]) -> Result<()> {
    let mut out = BufWriter::new(File::create(path).map_err(io_err(path))?);
    for row in rows {
        let line = serde_json::to_string(row)
            .map_err(|e| FitError::InvalidValue(format!("cannot serialise row: {e}")))?;
        writeln!(out, "{line}").map_err(io_err(path))?;
    }
    out.flush().map_err(io_err(path))
}

/// Reads a JSONL statistics file. Blank lines are skipped; any other line must be a valid row.
pub fn read_jsonl(path: &Path) -> Result<Vec<LayerStatsRow>> {
    let reader = BufReader::new(File::open(path).map_err(io_err(path))?);
    let mut rows = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(io_err(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let invalid = |message: String| FitError::InvalidRow {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let row: LayerStatsRow = serde_json::from_str(&line).map_err(|e| {
            invalid(format!(
                "{e}; expected an object with the fields of LayerStatsRow (see CSV_HEADER)"
            ))
        })?;
        row.validate().map_err(|e| invalid(e.to_string()))?;
        rows.push(row);
    }
    Ok(rows)
}

/// Flat CSV form of a row.
#[derive(Serialize, Deserialize)]
struct CsvRow {
    dataset: String,
    sample_id: String,
    num_layers: usize,
    layer: usize,
    kv_head: Option<usize>,
    preference: f64,
    entropy: f64,
    variance: f64,
    share: f64,
    key_pca_top_k: usize,
    key_pca_explained_variance_top_k: f64,
    key_pca_spectral_entropy: f64,
    value_pca_top_k: usize,
    value_pca_explained_variance_top_k: f64,
    value_pca_spectral_entropy: f64,
}

impl From<&LayerStatsRow> for CsvRow {
    fn from(r: &LayerStatsRow) -> Self {
        Self {
            dataset: r.dataset.clone(),
            sample_id: r.sample_id.clone(),
            num_layers: r.num_layers,
            layer: r.layer,
            kv_head: r.kv_head,
            preference: r.preference,
            entropy: r.entropy,
            variance: r.variance,
            share: r.share,
            key_pca_top_k: r.key_pca.top_k,
            key_pca_explained_variance_top_k: r.key_pca.explained_variance_top_k,
            key_pca_spectral_entropy: r.key_pca.spectral_entropy,
            value_pca_top_k: r.value_pca.top_k,
            value_pca_explained_variance_top_k: r.value_pca.explained_variance_top_k,
            value_pca_spectral_entropy: r.value_pca.spectral_entropy,
        }
    }
}

impl From<CsvRow> for LayerStatsRow {
    fn from(r: CsvRow) -> Self {
        Self {
            dataset: r.dataset,
            sample_id: r.sample_id,
            num_layers: r.num_layers,
            layer: r.layer,
            kv_head: r.kv_head,
            preference: r.preference,
            entropy: r.entropy,
            variance: r.variance,
            share: r.share,
            key_pca: PcaSummary {
                top_k: r.key_pca_top_k,
                explained_variance_top_k: r.key_pca_explained_variance_top_k,
                spectral_entropy: r.key_pca_spectral_entropy,
            },
            value_pca: PcaSummary {
                top_k: r.value_pca_top_k,
                explained_variance_top_k: r.value_pca_explained_variance_top_k,
                spectral_entropy: r.value_pca_spectral_entropy,
            },
        }
    }
}

fn csv_err(path: &Path, e: csv::Error) -> FitError {
    let line = e.position().map_or(0, |p| p.line() as usize);
    match e.into_kind() {
        csv::ErrorKind::Io(source) => FitError::Io {
            path: path.to_path_buf(),
            source,
        },
        kind => FitError::InvalidRow {
            path: path.to_path_buf(),
            line,
            message: format!("{kind:?}"),
        },
    }
}

/// Writes rows as CSV with the header [`CSV_HEADER`]; `kv_head` is empty for whole-layer rows.
pub fn write_csv(path: &Path, rows: &[LayerStatsRow]) -> Result<()> {
    let file = File::create(path).map_err(io_err(path))?;
    let mut w = csv::Writer::from_writer(BufWriter::new(file));
    if rows.is_empty() {
        w.write_record(CSV_HEADER).map_err(|e| csv_err(path, e))?;
    }
    for row in rows {
        w.serialize(CsvRow::from(row))
            .map_err(|e| csv_err(path, e))?;
    }
    w.flush().map_err(io_err(path))
}

/// Reads a CSV statistics file written by [`write_csv`] (the header must be [`CSV_HEADER`]).
pub fn read_csv(path: &Path) -> Result<Vec<LayerStatsRow>> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut r = csv::Reader::from_reader(BufReader::new(file));
    let header = r.headers().map_err(|e| csv_err(path, e))?.clone();
    if header.iter().ne(CSV_HEADER.iter().copied()) {
        return Err(FitError::InvalidRow {
            path: path.to_path_buf(),
            line: 1,
            message: format!(
                "header is {:?}; expected {}",
                header.iter().collect::<Vec<_>>(),
                CSV_HEADER.join(",")
            ),
        });
    }
    let mut rows = Vec::new();
    for record in r.records() {
        let record = record.map_err(|e| csv_err(path, e))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        let invalid = |message: String| FitError::InvalidRow {
            path: path.to_path_buf(),
            line,
            message,
        };
        let flat: CsvRow = record
            .deserialize(Some(&header))
            .map_err(|e| invalid(e.to_string()))?;
        let row = LayerStatsRow::from(flat);
        row.validate().map_err(|e| invalid(e.to_string()))?;
        rows.push(row);
    }
    Ok(rows)
}
