//! The files of a results directory: per-cell raw rows (`cells/<id>.csv.gz`) and records
//! (`cells/<id>.json`), and the aggregates rebuilt from them (`summary.csv`, `timings.csv`; for
//! the sequential protocol `curves.csv`, the summaries after each round). Every write goes to a temporary file
//! first and is renamed into place, so a killed run leaves whole files only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use editbench_metrics::{
    counted_rows, edits_after, round_summaries, summarize, Metric, MetricRow, Stage, Summary,
};
pub use editbench_report::rows::{cell_rows_path, ResultRow};
use editbench_report::rows::{gzip, read_gz_csv};
use serde::{Deserialize, Serialize};

use crate::sweep::{Cell, Protocol};

/// The raw row of `row`, measured on `cell` after `round` rounds.
pub fn result_row(cell: &Cell, round: usize, row: &MetricRow) -> ResultRow {
    ResultRow {
        cell_id: cell.id.clone(),
        model: cell.model_name.clone(),
        method: cell.method.to_string(),
        distribution: cell.distribution.to_string(),
        layers: layers_label(&cell.layers),
        batch_size: cell.batch_size,
        n_edits: cell.n_edits,
        seed: cell.seed,
        round,
        case_id: row.case_id,
        stage: row.stage,
        metric: row.metric.code().to_string(),
        value: row.value,
    }
}

pub fn layers_label(layers: &[usize]) -> String {
    layers.iter().map(usize::to_string).collect::<Vec<_>>().join("-")
}

/// What a finished (or failed) cell leaves in `cells/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellRecord {
    pub cell: Cell,
    /// `None` when the cell succeeded.
    pub error: Option<String>,
    /// Seconds per phase (keys, targets, solve, eval).
    pub seconds: BTreeMap<String, f64>,
    /// Adam steps per edit, largest condition estimate, pseudo-inverse use.
    pub outcome: serde_json::Value,
    /// Per invocation that ran part of the cell: revision, build, machine, times (none in
    /// records written before it was kept).
    #[serde(default)]
    pub provenance: Vec<crate::provenance::Segment>,
}

/// Writes `bytes` to `path` through a temporary file in the same directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp =
        dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("out")));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

pub const RESULT_COLUMNS: [&str; 13] = [
    "cell_id",
    "model",
    "method",
    "distribution",
    "layers",
    "batch_size",
    "n_edits",
    "seed",
    "round",
    "case_id",
    "stage",
    "metric",
    "value",
];
const SUMMARY_COLUMNS: [&str; 13] = [
    "cell_id",
    "model",
    "method",
    "distribution",
    "layers",
    "batch_size",
    "n_edits",
    "seed",
    "stage",
    "metric",
    "mean",
    "stderr",
    "n",
];
const TIMING_COLUMNS: [&str; 3] = ["cell_id", "phase", "seconds"];
const CURVE_COLUMNS: [&str; 14] = [
    "cell_id",
    "model",
    "method",
    "distribution",
    "layers",
    "batch_size",
    "n_edits",
    "seed",
    "round",
    "edits",
    "metric",
    "mean",
    "stderr",
    "n",
];

/// `rows` as CSV, after a header line of `columns` when given (written even when there are no rows).
pub fn csv_bytes<T: Serialize>(rows: &[T], columns: Option<&[&str]>) -> Result<Vec<u8>> {
    let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
    if let Some(columns) = columns {
        w.write_record(columns)?;
    }
    for r in rows {
        w.serialize(r)?;
    }
    Ok(w.into_inner()?)
}

/// Writes a cell's raw rows (gzip'd CSV with a header).
pub fn write_cell_rows(dir: &Path, id: &str, rows: &[ResultRow]) -> Result<()> {
    write_atomic(&cell_rows_path(dir, id), &gzip(&csv_bytes(rows, Some(&RESULT_COLUMNS))?)?)
}

/// A cell's raw rows.
fn read_cell_rows(dir: &Path, id: &str) -> Result<Vec<ResultRow>> {
    read_gz_csv(&cell_rows_path(dir, id))
}

pub fn cell_record_path(dir: &Path, id: &str) -> PathBuf {
    dir.join("cells").join(format!("{id}.json"))
}

/// The record of a cell that finished without error, if any.
pub fn finished(dir: &Path, id: &str) -> Option<CellRecord> {
    succeeded(dir, id).filter(|_| cell_rows_path(dir, id).is_file())
}

/// The record of a cell that succeeded, whether or not its per-record rows are there.
fn succeeded(dir: &Path, id: &str) -> Option<CellRecord> {
    let text = std::fs::read_to_string(cell_record_path(dir, id)).ok()?;
    let record: CellRecord = serde_json::from_str(&text).ok()?;
    record.error.is_none().then_some(record)
}

/// The cells among `cells` that succeeded but have only their aggregates in `dir` (one read of
/// summary.csv; none where it is missing or unreadable): results committed before raw rows were
/// kept have `cells/<id>.json` and the cell's lines of summary.csv, curves.csv and timings.csv
/// only. Such cells count as finished for runs and merges.
pub fn summarized<'a>(dir: &Path, cells: &'a [Cell]) -> Vec<&'a str> {
    let listed: BTreeSet<String> = kept_lines(dir, SUMMARY, &|_| true)
        .unwrap_or_default()
        .iter()
        .map(|l| l[0].to_string())
        .collect();
    let only_summaries = |id: &str| {
        listed.contains(id) && !cell_rows_path(dir, id).is_file() && succeeded(dir, id).is_some()
    };
    cells.iter().map(|c| c.id.as_str()).filter(|id| only_summaries(id)).collect()
}

/// An aggregate file and its columns.
type Aggregate = (&'static str, &'static [&'static str]);
const SUMMARY: Aggregate = ("summary.csv", &SUMMARY_COLUMNS);
const CURVES: Aggregate = ("curves.csv", &CURVE_COLUMNS);
const TIMINGS: Aggregate = ("timings.csv", &TIMING_COLUMNS);

/// The lines of an aggregate file in `dir` whose `cell_id` passes `keep` (none when the file is
/// missing); refused when its columns are not the expected ones.
pub fn kept_lines(
    dir: &Path,
    (file, columns): Aggregate,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Vec<csv::StringRecord>> {
    let path = dir.join(file);
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let mut reader =
        csv::Reader::from_path(&path).with_context(|| format!("reading {}", path.display()))?;
    let header = reader.headers().with_context(|| format!("reading {}", path.display()))?.clone();
    if !header.iter().eq(columns.iter().copied()) {
        anyhow::bail!(
            "{}: columns {:?}, expected {columns:?}",
            path.display(),
            header.iter().collect::<Vec<_>>()
        );
    }
    let mut out = Vec::new();
    for line in reader.records() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if keep(&line[0]) {
            out.push(line);
        }
    }
    Ok(out)
}

/// Appends `lines` to CSV bytes.
fn append_lines(bytes: &mut Vec<u8>, lines: &[csv::StringRecord]) -> Result<()> {
    let mut w = csv::WriterBuilder::new().has_headers(false).from_writer(Vec::new());
    for l in lines {
        w.write_record(l)?;
    }
    bytes.extend(w.into_inner()?);
    Ok(())
}

/// Gives `out` the aggregate lines of the summarized cells `ids` of `source` (their records are
/// copied by the caller) and `source`'s shared timings, replacing the lines `out` had for them, so
/// that the next rebuild of `out` carries them.
pub fn carry_summaries(out: &Path, source: &Path, ids: &[&str]) -> Result<()> {
    for agg in [SUMMARY, CURVES, TIMINGS] {
        let (file, columns) = agg;
        let shared = |c: &str| agg == TIMINGS && c.starts_with("shared:");
        let incoming = kept_lines(source, agg, &|c| ids.contains(&c) || shared(c))?;
        if incoming.is_empty() {
            continue;
        }
        let replaced =
            |c: &str| ids.contains(&c) || incoming.iter().any(|l| shared(c) && &l[0] == c);
        let mut bytes = csv_bytes::<ResultRow>(&[], Some(columns))?;
        append_lines(&mut bytes, &kept_lines(out, agg, &|c| !replaced(c))?)?;
        append_lines(&mut bytes, &incoming)?;
        write_atomic(&out.join(file), &bytes)?;
    }
    Ok(())
}

/// What a rebuild keeps of `dir`'s aggregates: the lines of the summarized cells `ids`, and the
/// shared timings of models whose `shared/` file is not there (both absent from per-record rows).
fn carried(
    dir: &Path,
    ids: &[&str],
    shared: &BTreeMap<String, BTreeMap<String, f64>>,
) -> Result<[Vec<csv::StringRecord>; 3]> {
    let of_cells = |c: &str| ids.contains(&c);
    let timing = |c: &str| {
        of_cells(c) || c.strip_prefix("shared:").is_some_and(|label| !shared.contains_key(label))
    };
    // Without summarized cells nothing is kept from summary.csv and curves.csv (a damaged file is
    // rebuilt from the raw rows, not read).
    let of = |agg: Aggregate| {
        if ids.is_empty() {
            Ok(Vec::new())
        } else {
            kept_lines(dir, agg, &of_cells)
        }
    };
    Ok([of(SUMMARY)?, of(CURVES)?, kept_lines(dir, TIMINGS, &timing)?])
}

/// One line of `summary.csv`: a metric of a cell, mean ± standard error over records, ×100.
#[derive(Debug, Clone, Serialize)]
struct SummaryRow<'a> {
    cell_id: &'a str,
    model: &'a str,
    method: &'a str,
    distribution: &'a str,
    layers: &'a str,
    batch_size: usize,
    n_edits: usize,
    seed: u64,
    stage: Stage,
    metric: &'static str,
    mean: f64,
    stderr: Option<f64>,
    n: usize,
}

impl<'a> SummaryRow<'a> {
    fn new(f: &'a ResultRow, s: &Summary) -> Self {
        SummaryRow {
            cell_id: &f.cell_id,
            model: &f.model,
            method: &f.method,
            distribution: &f.distribution,
            layers: &f.layers,
            batch_size: f.batch_size,
            n_edits: f.n_edits,
            seed: f.seed,
            stage: s.stage,
            metric: s.metric.code(),
            mean: s.mean,
            stderr: s.stderr,
            n: s.n,
        }
    }
}

/// One line of `curves.csv`: a post-edit metric of a sequential cell after `round` rounds
/// (`edits` records edited so far), mean ± standard error over the rows measured then, ×100.
#[derive(Debug, Clone, Serialize)]
struct CurveRow<'a> {
    cell_id: &'a str,
    model: &'a str,
    method: &'a str,
    distribution: &'a str,
    layers: &'a str,
    batch_size: usize,
    n_edits: usize,
    seed: u64,
    round: usize,
    edits: usize,
    metric: &'static str,
    mean: f64,
    stderr: Option<f64>,
    n: usize,
}

impl<'a> CurveRow<'a> {
    fn new(f: &'a ResultRow, round: usize, s: &Summary) -> Self {
        CurveRow {
            cell_id: &f.cell_id,
            model: &f.model,
            method: &f.method,
            distribution: &f.distribution,
            layers: &f.layers,
            batch_size: f.batch_size,
            n_edits: f.n_edits,
            seed: f.seed,
            round,
            edits: edits_after(round, f.batch_size, f.n_edits),
            metric: s.metric.code(),
            mean: s.mean,
            stderr: s.stderr,
            n: s.n,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct TimingRow<'a> {
    cell_id: &'a str,
    phase: &'a str,
    seconds: f64,
}

/// Seconds of the phases shared by a model's cells (statistics, unedited scores), by model.
fn shared_seconds(dir: &Path) -> Result<BTreeMap<String, BTreeMap<String, f64>>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir.join("shared")).into_iter().flatten().flatten() {
        let path = entry.path();
        let Some(label) = path.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
            continue;
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        out.insert(
            label,
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?,
        );
    }
    Ok(out)
}

/// Rebuilds `summary.csv` and `timings.csv` (and for the sequential protocol `curves.csv`) from
/// the raw rows of the finished cells among `cells` (in their order, edited under `protocol`)
/// and the shared timings.
pub fn rebuild(dir: &Path, cells: &[Cell], protocol: Protocol) -> Result<usize> {
    let mut timings: Vec<(String, String, f64)> = Vec::new();
    let shared = shared_seconds(dir)?;
    let summarized = summarized(dir, cells);
    let [kept_summary, kept_curves, kept_timings] = carried(dir, &summarized, &shared)?;
    for (label, phases) in shared {
        timings.extend(phases.into_iter().map(|(p, s)| (format!("shared:{label}"), p, s)));
    }
    let mut done = summarized.len();
    let sequential = protocol == Protocol::Sequential;
    // Per finished cell with rows: its first row (the cell's columns), summaries and, in the
    // sequential protocol, its summaries after each round.
    let mut aggregates = Vec::new();
    for cell in cells {
        let Some(record) = finished(dir, &cell.id) else { continue };
        done += 1;
        let rows = read_cell_rows(dir, &cell.id)?;
        timings.extend(record.seconds.iter().map(|(p, s)| (cell.id.clone(), p.clone(), *s)));
        let Some(first) = rows.first().cloned() else { continue };
        let curve = if sequential { round_summaries(metric_rows(&rows)) } else { BTreeMap::new() };
        aggregates.push((first, summarize(&final_rows(&rows, protocol)), curve));
    }
    let summary: Vec<SummaryRow> = aggregates
        .iter()
        .flat_map(|(f, cell, _)| cell.iter().map(move |s| SummaryRow::new(f, s)))
        .collect();
    let timing_rows: Vec<TimingRow> =
        timings.iter().map(|(c, p, s)| TimingRow { cell_id: c, phase: p, seconds: *s }).collect();
    remove_stale_results(dir)?;
    let mut summary = csv_bytes(&summary, Some(&SUMMARY_COLUMNS))?;
    append_lines(&mut summary, &kept_summary)?;
    write_atomic(&dir.join("summary.csv"), &summary)?;
    let mut timings = csv_bytes(&timing_rows, Some(&TIMING_COLUMNS))?;
    append_lines(&mut timings, &kept_timings)?;
    write_atomic(&dir.join("timings.csv"), &timings)?;
    if sequential {
        let curve_rows: Vec<CurveRow> = aggregates
            .iter()
            .flat_map(|(f, _, curve)| {
                curve.iter().flat_map(move |(round, summaries)| {
                    summaries.iter().map(move |s| CurveRow::new(f, *round, s))
                })
            })
            .collect();
        let mut curves = csv_bytes(&curve_rows, Some(&CURVE_COLUMNS))?;
        append_lines(&mut curves, &kept_curves)?;
        write_atomic(&dir.join("curves.csv"), &curves)?;
    }
    Ok(done)
}

/// Removes a `results.csv` left by an older editbench (all rows in one uncompressed file): the
/// rows are in `cells/` now, and a stale copy would disagree with them.
fn remove_stale_results(dir: &Path) -> Result<()> {
    let path = dir.join("results.csv");
    if path.is_file() {
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        tracing::info!(
            "{}: removed results.csv of an older editbench (rows are in cells/*.csv.gz)",
            dir.display()
        );
    }
    Ok(())
}

/// A cell's rows with a known metric code, as `(round, row)` pairs.
fn metric_rows(rows: &[ResultRow]) -> impl Iterator<Item = (usize, MetricRow)> + '_ {
    rows.iter().filter_map(|r| {
        Metric::from_code(&r.metric).map(|metric| {
            (r.round, MetricRow { case_id: r.case_id, stage: r.stage, metric, value: r.value })
        })
    })
}

/// The rows of one cell that its summary is over (`counted_rows`: every batch in the independent
/// protocol, the latest round in the sequential one).
pub fn final_rows(rows: &[ResultRow], protocol: Protocol) -> Vec<MetricRow> {
    counted_rows(metric_rows(rows), protocol == Protocol::Independent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(round: usize, case_id: u64, metric: &str, value: f64) -> ResultRow {
        let (cell_id, model, method, distribution, layers) =
            ("c".into(), "m".into(), "emmet".into(), "single".into(), "4".into());
        ResultRow {
            cell_id,
            model,
            method,
            distribution,
            layers,
            batch_size: 16,
            n_edits: 64,
            seed: 0,
            round,
            case_id,
            stage: Stage::Post,
            metric: metric.into(),
            value,
        }
    }

    #[test]
    fn a_summary_averages_every_batch_in_the_independent_protocol_and_the_last_round_in_the_sequential_one(
    ) {
        // Perplexity after three sampled batches (rounds 1, 2, 3), and one record scored in round 2.
        let rows = [
            row(1, 0, "PPL", 10.0),
            row(2, 0, "PPL", 20.0),
            row(3, 0, "PPL", 60.0),
            row(2, 7, "ES", 1.0),
        ];
        let ppl = |protocol| {
            let summary = summarize(&final_rows(&rows, protocol));
            let s = summary.into_iter().find(|s| s.metric == Metric::PPL).expect("a PPL summary");
            (s.mean, s.n)
        };
        assert_eq!(ppl(Protocol::Independent), (30.0, 3));
        assert_eq!(ppl(Protocol::Sequential), (60.0, 1));
        assert_eq!(
            final_rows(&rows, Protocol::Independent)
                .iter()
                .filter(|r| r.metric == Metric::ES)
                .count(),
            1
        );
    }
}
