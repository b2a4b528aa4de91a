//! Reading results directories (`results.csv`, `timings.csv`, `manifest.json`) and paper numbers,
//! and aggregating them: per table row and stage, every metric's mean ± standard error over records
//! (S derived), through `editbench_metrics::summarize`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use editbench_metrics::{summarize, Metric, MetricRow, Stage};
use serde::Deserialize;

/// What identifies a row of the paper's tables.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowKey {
    pub model: String,
    pub method: String,
    pub distribution: String,
    pub batch_size: usize,
}

/// One metric of one table row (×100).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub mean: f64,
    pub stderr: Option<f64>,
    pub n: usize,
}

/// One results directory (or a paper's numbers), aggregated.
#[derive(Debug, Clone)]
pub struct Run {
    pub label: String,
    pub source: PathBuf,
    /// Post-edit metrics per table row.
    pub post: BTreeMap<RowKey, BTreeMap<Metric, Summary>>,
    /// The unedited model's metrics per model.
    pub pre: BTreeMap<String, BTreeMap<Metric, Summary>>,
    /// Sequential curves: per row, per number of edits applied, metric means.
    pub curves: BTreeMap<RowKey, BTreeMap<usize, BTreeMap<Metric, f64>>>,
    /// Seconds per phase per cell (`cell label`, phase, seconds).
    pub timings: Vec<(String, String, f64)>,
}

#[derive(Debug, Deserialize)]
struct ResultLine {
    cell_id: String,
    model: String,
    method: String,
    distribution: String,
    batch_size: usize,
    n_edits: usize,
    round: usize,
    case_id: u64,
    stage: Stage,
    metric: String,
    value: f64,
}

#[derive(Debug, Deserialize)]
struct TimingLine {
    cell_id: String,
    phase: String,
    seconds: f64,
}

/// Every row of a CSV file with a header, errors naming the file and line.
pub fn read_csv<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let mut r = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    r.deserialize().enumerate().map(|(i, row)| row.with_context(|| format!("{}: line {}", path.display(), i + 2))).collect()
}

fn to_summary(rows: &[MetricRow], stage: Stage) -> BTreeMap<Metric, Summary> {
    summarize(rows).into_iter().filter(|s| s.stage == stage).map(|s| (s.metric, Summary { mean: s.mean, stderr: s.stderr, n: s.n })).collect()
}

/// A results directory written by `editbench run` or `editbench merge`.
pub fn load_run(dir: &Path) -> Result<Run> {
    for file in ["manifest.json", "results.csv", "timings.csv"] {
        if !dir.join(file).is_file() {
            bail!("{}: not a results directory ({file} is missing)", dir.display());
        }
    }
    let lines: Vec<ResultLine> = read_csv(&dir.join("results.csv"))?;
    let mut unknown: BTreeMap<String, usize> = BTreeMap::new();
    // Per (cell, case, stage, metric): the latest round's value, and every round's for curves.
    let mut latest: BTreeMap<(String, u64, Stage, Metric), (usize, f64)> = BTreeMap::new();
    let mut keys: BTreeMap<String, RowKey> = BTreeMap::new();
    let mut rounds: BTreeMap<(String, usize, Metric), Vec<f64>> = BTreeMap::new();
    let mut n_edits: BTreeMap<String, usize> = BTreeMap::new();
    for l in &lines {
        let Some(metric) = Metric::from_code(&l.metric) else {
            *unknown.entry(l.metric.clone()).or_default() += 1;
            continue;
        };
        n_edits.insert(l.cell_id.clone(), l.n_edits);
        keys.entry(l.cell_id.clone()).or_insert_with(|| RowKey { model: l.model.clone(), method: l.method.clone(), distribution: l.distribution.clone(), batch_size: l.batch_size });
        let slot = latest.entry((l.cell_id.clone(), l.case_id, l.stage, metric)).or_insert((l.round, l.value));
        if l.round >= slot.0 {
            *slot = (l.round, l.value);
        }
        if l.stage == Stage::Post {
            rounds.entry((l.cell_id.clone(), l.round, metric)).or_default().push(l.value);
        }
    }
    for (code, n) in &unknown {
        tracing::warn!("{}: skipped {n} rows with unknown metric code `{code}`", dir.display());
    }
    let mut by_row: BTreeMap<RowKey, Vec<MetricRow>> = BTreeMap::new();
    let mut pre_rows: BTreeMap<String, Vec<MetricRow>> = BTreeMap::new();
    let mut pre_seen: BTreeMap<String, String> = BTreeMap::new();
    for ((cell, case_id, stage, metric), (_, value)) in &latest {
        let key = &keys[cell];
        let row = MetricRow { case_id: *case_id, stage: *stage, metric: *metric, value: *value };
        match stage {
            Stage::Post => by_row.entry(key.clone()).or_default().push(row),
            // The unedited rows are the same in every cell of a model: take one cell's.
            Stage::Pre if pre_seen.entry(key.model.clone()).or_insert_with(|| cell.clone()) == cell => pre_rows.entry(key.model.clone()).or_default().push(row),
            Stage::Pre => {}
        }
    }
    // Sequential curves exist when every round was scored (`eval_every_round`).
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json"))?).with_context(|| format!("parsing {}/manifest.json", dir.display()))?;
    let scored_rounds = manifest["sweep"]["protocol"] == "sequential" && manifest["sweep"]["eval_every_round"] == true;
    let mut curves: BTreeMap<RowKey, BTreeMap<usize, BTreeMap<Metric, f64>>> = BTreeMap::new();
    for ((cell, round, metric), values) in rounds.iter().filter(|_| scored_rounds) {
        let key = &keys[cell];
        let mean = values.iter().sum::<f64>() / values.len() as f64 * 100.0;
        curves.entry(key.clone()).or_default().entry((round * key.batch_size).min(n_edits[cell])).or_default().insert(*metric, mean);
    }
    let label_of = |cell: &str| keys.get(cell).map(|k| format!("{} {} B={}", k.method, k.distribution, k.batch_size)).unwrap_or_else(|| cell.to_string());
    let timings = read_csv::<TimingLine>(&dir.join("timings.csv"))?.into_iter().map(|t| (label_of(&t.cell_id), t.phase, t.seconds)).collect();
    Ok(Run {
        label: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| dir.display().to_string()),
        source: dir.to_path_buf(),
        post: by_row.into_iter().map(|(k, rows)| (k, to_summary(&rows, Stage::Post))).collect(),
        pre: pre_rows.into_iter().map(|(m, rows)| (m, to_summary(&rows, Stage::Pre))).collect(),
        curves,
        timings,
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
    let mut run = Run { label: label.to_string(), source: path.to_path_buf(), post: BTreeMap::new(), pre: BTreeMap::new(), curves: BTreeMap::new(), timings: Vec::new() };
    for (i, l) in read_csv::<PaperLine>(path)?.into_iter().enumerate() {
        let Some(metric) = Metric::from_code(&l.metric) else {
            bail!("{}: line {}: unknown metric code `{}`", path.display(), i + 2, l.metric);
        };
        let summary = Summary { mean: l.value, stderr: None, n: 0 };
        match l.stage {
            Stage::Pre => run.pre.entry(l.model).or_default().insert(metric, summary),
            Stage::Post => run.post.entry(RowKey { model: l.model, method: l.method, distribution: l.distribution, batch_size: l.batch_size }).or_default().insert(metric, summary),
        };
    }
    Ok(run)
}
