//! Statistics files: JSONL (one [`LayerStatsRow`] object per line) and CSV (one row per line,
//! flat columns named in [`CSV_HEADER`]). Readers validate every row and name the file and
//! line of the first bad one.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use crate::collect::LayerStatsRow;
use crate::error::{FitError, Result};

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

// A CSV row is a `LayerStatsRow` by position: serde writes its fields in declaration order,
// the PCA summaries' fields in line (the csv crate flattens a struct inside a record), and
// reads them back the same way. The columns are therefore `CSV_HEADER` exactly when the
// struct's fields are in that order; the header is written and checked by name (see the
// test `csv_columns_are_the_named_fields`).

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
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(BufWriter::new(file));
    w.write_record(CSV_HEADER).map_err(|e| csv_err(path, e))?;
    for row in rows {
        w.serialize(row).map_err(|e| csv_err(path, e))?;
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
        // By position: the header was checked above.
        let row: LayerStatsRow = record
            .deserialize(None)
            .map_err(|e| invalid(e.to_string()))?;
        row.validate().map_err(|e| invalid(e.to_string()))?;
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::pca::PcaSummary;

    /// Every CSV column holds the row's field of its name (a reordered field of
    /// `LayerStatsRow` would still read back, under another column's name).
    #[test]
    fn csv_columns_are_the_named_fields() {
        let pca = |base: f64| PcaSummary {
            top_k: base as usize,
            explained_variance_top_k: base / 100.0,
            spectral_entropy: base / 10.0,
        };
        let row = LayerStatsRow {
            dataset: "narrativeqa".into(),
            sample_id: "s7".into(),
            num_layers: 32,
            layer: 5,
            kv_head: Some(3),
            preference: 0.25,
            entropy: 1.5,
            variance: 0.125,
            share: 0.0625,
            key_pca: pca(4.0),
            value_pca: pca(6.0),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.csv");
        write_csv(&path, std::slice::from_ref(&row)).unwrap();
        let mut reader = csv::Reader::from_path(&path).unwrap();
        let columns: Vec<HashMap<String, String>> = reader
            .deserialize()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        let want: HashMap<String, String> = [
            ("dataset", "narrativeqa"),
            ("sample_id", "s7"),
            ("num_layers", "32"),
            ("layer", "5"),
            ("kv_head", "3"),
            ("preference", "0.25"),
            ("entropy", "1.5"),
            ("variance", "0.125"),
            ("share", "0.0625"),
            ("key_pca_top_k", "4"),
            ("key_pca_explained_variance_top_k", "0.04"),
            ("key_pca_spectral_entropy", "0.4"),
            ("value_pca_top_k", "6"),
            ("value_pca_explained_variance_top_k", "0.06"),
            ("value_pca_spectral_entropy", "0.6"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(columns, vec![want]);
        assert_eq!(read_csv(&path).unwrap(), vec![row.clone()]);
        // A whole-layer row leaves `kv_head` empty.
        let layer_row = LayerStatsRow {
            kv_head: None,
            ..row
        };
        write_csv(&path, std::slice::from_ref(&layer_row)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .starts_with("narrativeqa,s7,32,5,,")
        );
        assert_eq!(read_csv(&path).unwrap(), vec![layer_row]);
    }
}
