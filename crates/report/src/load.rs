//! Reading results directories (the cells' raw rows `cells/<id>.csv.gz`, or for runs committed
//! before rows were kept only `summary.csv` and `curves.csv`; `timings.csv`, `manifest.json`) and
//! paper numbers,
//! and aggregating them: per table row and stage, every metric's mean ± standard error over records
//! (S derived), through `editbench_metrics::summarize`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use editbench_metrics::{
    counted_rows, edits_after, round_summaries, summarize, Metric, MetricRow, Stage,
};
use serde::Deserialize;

use crate::rows::{cell_rows_path, manifest_cell_ids, read_gz_csv, ResultRow};

/// What identifies a row of the paper's tables: every grid axis but the seed (cells that differ
/// only in their seed are one row, with the spread across seeds).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowKey {
    pub model: String,
    pub method: String,
    pub distribution: String,
    /// The edited layers, `-`-separated, where the run has several layer choices for one method
    /// and distribution; `""` otherwise (and for a paper's numbers).
    pub layers: String,
    pub batch_size: usize,
}

impl RowKey {
    fn new(model: &str, method: &str, distribution: &str, layers: &str, batch_size: usize) -> Self {
        let owned = |s: &str| s.to_string();
        RowKey {
            model: owned(model),
            method: owned(method),
            distribution: owned(distribution),
            layers: owned(layers),
            batch_size,
        }
    }
}

/// One metric of one table row (×100, or as measured for PPL and DWNORM).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Mean over records (and over seeds, when there are several).
    pub mean: f64,
    /// Standard error over records (with several seeds: their mean).
    pub stderr: Option<f64>,
    /// Records (rows) per seed.
    pub n: usize,
    /// With several seeds: the standard deviation of the per-seed means, and the number of seeds.
    pub seeds: Option<(f64, usize)>,
}

/// What the solves reported for the cells of one table row.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SolverNote {
    /// Largest condition estimate of the systems solved.
    pub max_condition: Option<f64>,
    /// Whether any solve fell back to a pseudo-inverse.
    pub pseudo_inverse: bool,
}

/// Sequential curves: per row, per number of edits applied, each metric over the rows measured
/// then.
pub type Curves = BTreeMap<RowKey, BTreeMap<usize, BTreeMap<Metric, Summary>>>;

/// One results directory (or a paper's numbers), aggregated.
#[derive(Debug, Clone)]
pub struct Run {
    pub label: String,
    pub source: PathBuf,
    /// Post-edit metrics per table row.
    pub post: BTreeMap<RowKey, BTreeMap<Metric, Summary>>,
    /// The unedited model's metrics per model.
    pub pre: BTreeMap<String, BTreeMap<Metric, Summary>>,
    /// Sequential curves.
    pub curves: Curves,
    /// Seconds per phase per cell (`cell label`, phase, seconds).
    pub timings: Vec<(String, String, f64)>,
    /// Condition estimates and pseudo-inverse use per table row (from `cells/*.json`).
    pub solver: BTreeMap<RowKey, SolverNote>,
    /// When scores rest on a sample of the edited records: `(scored, edited)` per cell.
    pub sample: Option<(usize, usize)>,
    /// Whether the tables come from the cells' raw rows (not from a summary.csv committed
    /// before raw rows were kept; false for a paper's numbers).
    pub from_rows: bool,
    /// The run's `manifest.json` (none for a paper's numbers).
    pub manifest: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct TimingLine {
    cell_id: String,
    phase: String,
    seconds: f64,
}

/// Every row of a CSV file with a header, errors naming the file and line.
pub fn read_csv<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let mut r =
        csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    r.deserialize()
        .enumerate()
        .map(|(i, row)| row.with_context(|| format!("{}: line {}", path.display(), i + 2)))
        .collect()
}

/// Per metric of `stage`: the summaries of each seed's rows, combined ([`combine_seeds`]).
fn to_summary(per_seed: &BTreeMap<u64, Vec<MetricRow>>, stage: Stage) -> BTreeMap<Metric, Summary> {
    let mut by_metric: BTreeMap<Metric, Vec<editbench_metrics::Summary>> = BTreeMap::new();
    for rows in per_seed.values() {
        for s in summarize(rows).into_iter().filter(|s| s.stage == stage) {
            by_metric.entry(s.metric).or_default().push(s);
        }
    }
    combine_seeds(by_metric)
}

/// Per metric: one seed's summary, or the mean over seeds with the spread of the per-seed means.
fn combine_seeds(
    by_metric: BTreeMap<Metric, Vec<editbench_metrics::Summary>>,
) -> BTreeMap<Metric, Summary> {
    by_metric
        .into_iter()
        .map(|(metric, seeds)| {
            let k = seeds.len() as f64;
            let mean = seeds.iter().map(|s| s.mean).sum::<f64>() / k;
            let stderrs: Vec<f64> = seeds.iter().filter_map(|s| s.stderr).collect();
            let stderr =
                (!stderrs.is_empty()).then(|| stderrs.iter().sum::<f64>() / stderrs.len() as f64);
            let spread = (seeds.len() > 1).then(|| {
                (
                    (seeds.iter().map(|s| (s.mean - mean).powi(2)).sum::<f64>() / (k - 1.0)).sqrt(),
                    seeds.len(),
                )
            });
            (metric, Summary { mean, stderr, n: seeds[0].n, seeds: spread })
        })
        .collect()
}

/// Warns, naming them, about cells the manifest lists that have no raw rows (a sweep still
/// running, failed cells).
fn warn_missing_cells(dir: &Path, manifest: &serde_json::Value, lines: &[ResultRow]) {
    let seen: BTreeSet<&str> = lines.iter().map(|l| l.cell_id.as_str()).collect();
    let ids = manifest_cell_ids(manifest);
    let missing: Vec<&str> =
        ids.iter().map(String::as_str).filter(|id| !seen.contains(id)).collect();
    if !missing.is_empty() {
        tracing::warn!("{}: {} of the {} cells in manifest.json have no rows in cells/ (still running or failed): {}", dir.display(), missing.len(), ids.len(), missing.join(", "));
    }
}

/// Whether `dir`'s tables come from raw rows: some cell has them and every cell summary.csv
/// lists does (runs committed before rows were kept have only summary.csv).
fn has_rows(dir: &Path, manifest: &serde_json::Value) -> Result<bool> {
    let with_rows = |id: &str| cell_rows_path(dir, id).is_file();
    if !manifest_cell_ids(manifest).iter().any(|id| with_rows(id)) {
        return Ok(false);
    }
    let path = dir.join("summary.csv");
    if !path.is_file() {
        return Ok(true);
    }
    Ok(read_csv::<SummaryLine>(&path)?.iter().all(|l| with_rows(&l.cell_id)))
}

/// Per table row, the largest condition estimate and any pseudo-inverse use of its finished cells.
fn solver_notes(dir: &Path, keys: &BTreeMap<String, RowKey>) -> BTreeMap<RowKey, SolverNote> {
    let mut notes: BTreeMap<RowKey, SolverNote> = BTreeMap::new();
    for (cell, key) in keys {
        let Ok(text) = std::fs::read_to_string(dir.join("cells").join(format!("{cell}.json")))
        else {
            continue;
        };
        let Ok(record) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
        // Records written for runs committed before cells kept their solver's outcome say nothing.
        if record["outcome"].is_null() {
            continue;
        }
        let note = notes.entry(key.clone()).or_default();
        if let Some(c) = record["outcome"]["max_condition_estimate"].as_f64() {
            note.max_condition = Some(note.max_condition.map_or(c, |m| m.max(c)));
        }
        note.pseudo_inverse |= record["outcome"]["used_pseudo_inverse"].as_bool() == Some(true);
    }
    notes
}

/// A results directory written by `editbench run` or `editbench merge` — or only its summary:
/// without raw rows (runs committed before they were kept) the table rows come from summary.csv
/// (each cell's means ± standard errors) and the sequential curves from curves.csv.
pub fn load_run(dir: &Path) -> Result<Run> {
    let manifest = read_manifest(dir)?;
    let from_rows = has_rows(dir, &manifest)?;
    for file in [if from_rows { None } else { Some("summary.csv") }, Some("timings.csv")]
        .into_iter()
        .flatten()
    {
        if !dir.join(file).is_file() {
            bail!(
                "{}: not a results directory ({file} is missing, and no cell has raw rows)",
                dir.display()
            );
        }
    }
    let cells = if from_rows {
        cells_from_rows(dir, &manifest)?
    } else {
        cells_from_summaries(dir, &manifest)?
    };
    let Cells { keys, seeds, post, pre, curves } = cells;
    let label_of = |cell: &str| {
        keys.get(cell)
            .map(|k| format!("{} {} B={} s{}", k.method, k.distribution, k.batch_size, seeds[cell]))
            .unwrap_or_else(|| cell.to_string())
    };
    let timings = read_csv::<TimingLine>(&dir.join("timings.csv"))?
        .into_iter()
        .map(|t| (label_of(&t.cell_id), t.phase, t.seconds))
        .collect();
    Ok(Run {
        label: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string()),
        source: dir.to_path_buf(),
        post,
        pre,
        curves,
        timings,
        solver: solver_notes(dir, &keys),
        from_rows,
        sample: manifest["sweep"]["eval"]["sample"]["n"].as_u64().map(|n| {
            (n as usize, manifest["sweep"]["dataset"]["n_edits"].as_u64().unwrap_or(0) as usize)
        }),
        manifest: Some(manifest),
    })
}

/// A run's cells: per cell its table row and seed; per row the post-edit summaries, per model the
/// unedited ones, and sequential curves.
struct Cells {
    keys: BTreeMap<String, RowKey>,
    seeds: BTreeMap<String, u64>,
    post: BTreeMap<RowKey, BTreeMap<Metric, Summary>>,
    pre: BTreeMap<String, BTreeMap<Metric, Summary>>,
    curves: Curves,
}

/// Layers are part of a row only where they are an axis of the run (several choices for one
/// method and distribution); otherwise rows match other runs' and a paper's by the rest.
fn drop_layers_unless_an_axis(keys: &mut BTreeMap<String, RowKey>) {
    let mut choices: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    for k in keys.values() {
        choices
            .entry((k.model.clone(), k.method.clone(), k.distribution.clone()))
            .or_default()
            .insert(k.layers.clone());
    }
    if choices.values().all(|c| c.len() == 1) {
        keys.values_mut().for_each(|k| k.layers.clear());
    }
}

/// A results directory's `manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("manifest.json");
    if !path.is_file() {
        bail!("{}: not a results directory (manifest.json is missing)", dir.display());
    }
    serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("parsing {}", path.display()))
}

/// The raw rows of every cell of the manifest that has them, in grid order.
pub(crate) fn raw_lines(dir: &Path, manifest: &serde_json::Value) -> Result<Vec<ResultRow>> {
    let mut lines: Vec<ResultRow> = Vec::new();
    for id in manifest_cell_ids(manifest) {
        let path = cell_rows_path(dir, &id);
        if path.is_file() {
            lines.extend(read_gz_csv::<ResultRow>(&path)?);
        }
    }
    if lines.is_empty() {
        bail!("{}: no cell has raw rows (cells/<id>.csv.gz); run the sweep first", dir.display());
    }
    Ok(lines)
}

/// [`Cells`] from the cells' raw rows: every record's rows.
fn cells_from_rows(dir: &Path, manifest: &serde_json::Value) -> Result<Cells> {
    let lines = raw_lines(dir, manifest)?;
    warn_missing_cells(dir, manifest, &lines);
    let sequential = manifest["sweep"]["protocol"] == "sequential";
    let mut unknown: BTreeMap<String, usize> = BTreeMap::new();
    // Per cell its (round, row) pairs, and every round's values for curves.
    let mut cell_rows: BTreeMap<String, Vec<(usize, MetricRow)>> = BTreeMap::new();
    let mut keys: BTreeMap<String, RowKey> = BTreeMap::new();
    let mut seeds: BTreeMap<String, u64> = BTreeMap::new();
    let mut n_edits: BTreeMap<String, usize> = BTreeMap::new();
    for l in &lines {
        let Some(metric) = Metric::from_code(&l.metric) else {
            *unknown.entry(l.metric.clone()).or_default() += 1;
            continue;
        };
        n_edits.insert(l.cell_id.clone(), l.n_edits);
        seeds.insert(l.cell_id.clone(), l.seed);
        keys.entry(l.cell_id.clone()).or_insert_with(|| {
            RowKey::new(&l.model, &l.method, &l.distribution, &l.layers, l.batch_size)
        });
        cell_rows.entry(l.cell_id.clone()).or_default().push((
            l.round,
            MetricRow { case_id: l.case_id, stage: l.stage, metric, value: l.value },
        ));
    }
    for (code, n) in &unknown {
        tracing::warn!("{}: skipped {n} rows with unknown metric code `{code}`", dir.display());
    }
    drop_layers_unless_an_axis(&mut keys);
    let mut curves = Curves::new();
    for (cell, rows) in cell_rows.iter().filter(|_| scored_rounds(manifest)) {
        let key = &keys[cell];
        for (round, summaries) in round_summaries(rows.iter().copied()) {
            let point = curves
                .entry(key.clone())
                .or_default()
                .entry(edits_after(round, key.batch_size, n_edits[cell]))
                .or_default();
            point.extend(summaries.iter().map(|s| {
                (s.metric, Summary { mean: s.mean, stderr: s.stderr, n: s.n, seeds: None })
            }));
        }
    }
    let mut by_row: BTreeMap<RowKey, BTreeMap<u64, Vec<MetricRow>>> = BTreeMap::new();
    let mut pre_rows: BTreeMap<String, BTreeMap<u64, Vec<MetricRow>>> = BTreeMap::new();
    let mut pre_seen: BTreeMap<String, String> = BTreeMap::new();
    // Per cell the rows its summary is over: every batch in the independent protocol, the latest
    // round in the sequential one (a record is scored again after later rounds).
    for (cell, rows) in cell_rows {
        let key = &keys[&cell];
        for row in counted_rows(rows, !sequential) {
            match row.stage {
                Stage::Post => by_row
                    .entry(key.clone())
                    .or_default()
                    .entry(seeds[&cell])
                    .or_default()
                    .push(row),
                // The unedited rows are the same in every cell of a model: take one cell's.
                Stage::Pre
                    if *pre_seen.entry(key.model.clone()).or_insert_with(|| cell.clone())
                        == cell =>
                {
                    pre_rows.entry(key.model.clone()).or_default().entry(0).or_default().push(row)
                }
                Stage::Pre => {}
            }
        }
    }
    let post = by_row.into_iter().map(|(k, rows)| (k, to_summary(&rows, Stage::Post))).collect();
    let pre = pre_rows.into_iter().map(|(m, rows)| (m, to_summary(&rows, Stage::Pre))).collect();
    Ok(Cells { keys, seeds, post, pre, curves })
}

/// Whether a run has sequential curves: the sequential protocol with rounds before the last
/// scored (`eval_every_round`, `eval_every`).
fn scored_rounds(manifest: &serde_json::Value) -> bool {
    let sweep = &manifest["sweep"];
    sweep["protocol"] == "sequential"
        && (sweep["eval_every_round"] == true || sweep["eval_every"].is_u64())
}

#[derive(Debug, Deserialize)]
struct CurveLine {
    cell_id: String,
    edits: usize,
    metric: String,
    mean: f64,
    stderr: Option<f64>,
    n: usize,
}

/// Sequential curves from `curves.csv` (each sequential cell's summaries after every round), for
/// the cells of `keys`; none when the file is absent (a run from before it was written).
fn curves_from_file(dir: &Path, keys: &BTreeMap<String, RowKey>) -> Result<Curves> {
    let path = dir.join("curves.csv");
    let mut curves = Curves::new();
    if !path.is_file() {
        tracing::warn!(
            "{}: no curves.csv, so no sequential curves (rerun `editbench run` on it to write one)",
            dir.display()
        );
        return Ok(curves);
    }
    for (i, l) in read_csv::<CurveLine>(&path)?.into_iter().enumerate() {
        let Some(metric) = Metric::from_code(&l.metric) else { continue };
        let Some(key) = keys.get(&l.cell_id) else {
            bail!(
                "{}: line {}: cell {} has no summary in summary.csv",
                path.display(),
                i + 2,
                l.cell_id
            );
        };
        curves
            .entry(key.clone())
            .or_default()
            .entry(l.edits)
            .or_default()
            .insert(metric, Summary { mean: l.mean, stderr: l.stderr, n: l.n, seeds: None });
    }
    Ok(curves)
}

#[derive(Debug, Deserialize)]
struct SummaryLine {
    cell_id: String,
    model: String,
    method: String,
    distribution: String,
    layers: String,
    batch_size: usize,
    seed: u64,
    stage: Stage,
    metric: String,
    mean: f64,
    stderr: Option<f64>,
    n: usize,
}

/// [`Cells`] from summary.csv: each cell's summaries as `editbench run` wrote them, and the
/// sequential curves from curves.csv.
fn cells_from_summaries(dir: &Path, manifest: &serde_json::Value) -> Result<Cells> {
    let path = dir.join("summary.csv");
    let lines: Vec<SummaryLine> = read_csv(&path)?;
    if lines.is_empty() {
        bail!("{}: holds no summaries (empty or header only); run the sweep first", path.display());
    }
    let mut keys: BTreeMap<String, RowKey> = BTreeMap::new();
    let mut seeds: BTreeMap<String, u64> = BTreeMap::new();
    for l in &lines {
        seeds.insert(l.cell_id.clone(), l.seed);
        keys.entry(l.cell_id.clone()).or_insert_with(|| {
            RowKey::new(&l.model, &l.method, &l.distribution, &l.layers, l.batch_size)
        });
    }
    drop_layers_unless_an_axis(&mut keys);
    let mut post: BTreeMap<RowKey, BTreeMap<Metric, BTreeMap<u64, editbench_metrics::Summary>>> =
        BTreeMap::new();
    let mut pre: BTreeMap<String, BTreeMap<Metric, BTreeMap<u64, editbench_metrics::Summary>>> =
        BTreeMap::new();
    for l in &lines {
        let Some(metric) = Metric::from_code(&l.metric) else {
            tracing::warn!(
                "{}: skipped a summary with unknown metric code `{}`",
                path.display(),
                l.metric
            );
            continue;
        };
        let key = &keys[&l.cell_id];
        let summary = editbench_metrics::Summary {
            stage: l.stage,
            metric,
            mean: l.mean,
            stderr: l.stderr,
            n: l.n,
        };
        // The unedited summaries are the same in every cell of a model: one is kept.
        match l.stage {
            Stage::Post => post
                .entry(key.clone())
                .or_default()
                .entry(metric)
                .or_default()
                .insert(l.seed, summary),
            Stage::Pre => pre
                .entry(key.model.clone())
                .or_default()
                .entry(metric)
                .or_default()
                .insert(0, summary),
        };
    }
    let combined = |by_metric: BTreeMap<Metric, BTreeMap<u64, editbench_metrics::Summary>>| {
        combine_seeds(by_metric.into_iter().map(|(m, s)| (m, s.into_values().collect())).collect())
    };
    let curves =
        if scored_rounds(manifest) { curves_from_file(dir, &keys)? } else { BTreeMap::new() };
    Ok(Cells {
        keys,
        seeds,
        post: post.into_iter().map(|(k, s)| (k, combined(s))).collect(),
        pre: pre.into_iter().map(|(m, s)| (m, combined(s))).collect(),
        curves,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PaperLine {
    model: String,
    method: String,
    distribution: String,
    batch_size: usize,
    stage: Stage,
    metric: String,
    value: f64,
}

/// Numbers typed from a paper: CSV with columns `model,method,distribution,batch_size,stage,
/// metric,value` (values on the ×100 scale; `pre` rows give the unedited model).
pub fn load_paper(path: &Path, label: &str) -> Result<Run> {
    let mut run = Run {
        label: label.to_string(),
        source: path.to_path_buf(),
        post: BTreeMap::new(),
        pre: BTreeMap::new(),
        curves: BTreeMap::new(),
        timings: Vec::new(),
        solver: BTreeMap::new(),
        sample: None,
        from_rows: false,
        manifest: None,
    };
    for (i, l) in read_csv::<PaperLine>(path)?.into_iter().enumerate() {
        let Some(metric) = Metric::from_code(&l.metric) else {
            bail!("{}: line {}: unknown metric code `{}`", path.display(), i + 2, l.metric);
        };
        let summary = Summary { mean: l.value, stderr: None, n: 0, seeds: None };
        match l.stage {
            Stage::Pre => run.pre.entry(l.model).or_default().insert(metric, summary),
            Stage::Post => run
                .post
                .entry(RowKey::new(&l.model, &l.method, &l.distribution, "", l.batch_size))
                .or_default()
                .insert(metric, summary),
        };
    }
    Ok(run)
}
