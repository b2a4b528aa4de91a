//! The raw rows of a results directory: each cell's per-record measurements in
//! `cells/<id>.csv.gz` (gzip'd CSV, one file per cell, columns as `editbench rows` prints them).
//! They are what every aggregate — summary, curves, tables, figures, claims — is rebuilt from,
//! and what is committed with a run.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use editbench_metrics::Stage;
use flate2::read::GzDecoder;
use flate2::{Compression, GzBuilder};
use serde::{Deserialize, Serialize};

/// One raw row: a metric of one record of a cell (`cells/<id>.csv.gz`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    pub cell_id: String,
    pub model: String,
    pub method: String,
    pub distribution: String,
    /// Edited layers, `-`-separated.
    pub layers: String,
    pub batch_size: usize,
    pub n_edits: usize,
    pub seed: u64,
    /// Rounds of B edits applied before the measurement (0 for the unedited model).
    pub round: usize,
    pub case_id: u64,
    pub stage: Stage,
    pub metric: String,
    pub value: f64,
}

/// Where a cell's raw rows are kept.
pub fn cell_rows_path(dir: &Path, id: &str) -> PathBuf {
    dir.join("cells").join(format!("{id}.csv.gz"))
}

/// `bytes` gzip'd, byte for byte the same for the same input (no name, no time in the header).
pub fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = GzBuilder::new().mtime(0).write(Vec::new(), Compression::best());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

/// The text of a gzip'd file.
pub fn gunzip_file(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut text = String::new();
    GzDecoder::new(file)
        .read_to_string(&mut text)
        .with_context(|| format!("decompressing {}", path.display()))?;
    Ok(text)
}

/// Every row of a gzip'd CSV file with a header, errors naming the file and line.
pub fn read_gz_csv<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let text = gunzip_file(path)?;
    let mut r = csv::Reader::from_reader(text.as_bytes());
    r.deserialize()
        .enumerate()
        .map(|(i, row)| row.with_context(|| format!("{}: line {}", path.display(), i + 2)))
        .collect()
}

/// The ids of the cells `manifest.json` lists, in grid order.
pub fn manifest_cell_ids(manifest: &serde_json::Value) -> Vec<String> {
    let cells = manifest["cells"].as_array().cloned().unwrap_or_default();
    cells.iter().filter_map(|c| c["id"].as_str().map(str::to_string)).collect()
}

/// The raw rows of every cell of `dir` that has them, in the manifest's order, as one CSV text
/// (one header): what `editbench rows` prints.
pub fn all_rows_csv(dir: &Path) -> Result<String> {
    let manifest = crate::load::read_manifest(dir)?;
    let mut out = String::new();
    for id in manifest_cell_ids(&manifest) {
        let file = cell_rows_path(dir, &id);
        if !file.is_file() {
            continue;
        }
        let rows = gunzip_file(&file)?;
        let mut lines = rows.lines();
        let header = lines.next().unwrap_or_default();
        if out.is_empty() {
            out += header;
            out.push('\n');
        }
        for line in lines {
            out += line;
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_is_deterministic_and_round_trips() {
        let text = "cell_id,value\na,1\nb,2\n";
        let (a, b) = (gzip(text.as_bytes()).unwrap(), gzip(text.as_bytes()).unwrap());
        assert_eq!(a, b);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.csv.gz");
        std::fs::write(&path, &a).unwrap();
        assert_eq!(gunzip_file(&path).unwrap(), text);
    }

    #[test]
    fn a_damaged_file_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.csv.gz");
        let whole = gzip(b"cell_id,value\na,1\n").unwrap();
        std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
        let err = format!("{:#}", gunzip_file(&path).unwrap_err());
        assert!(err.contains("cut.csv.gz"), "{err}");
    }
}
