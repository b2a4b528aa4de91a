//! Downstream abilities: `editbench downstream` scores a model on the official code's few-shot
//! tasks, and sweeps measure them after edits (`eval.downstream`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use editbench_datasets::downstream::{load_task, task_path, Task, TaskSet};
use editbench_metrics::downstream::{task_score, TaskScore};
use editbench_metrics::{Metric, MetricRow, Stage};
use editbench_models::{BackendTask, LanguageModel};
use serde::{Deserialize, Serialize};

use crate::ModelArgs;

/// Which downstream tasks a sweep measures, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownstreamSpec {
    /// The folder of the task files (`<task>.json`, the official code's `glue_eval/dataset/`
    /// pickles written as JSON).
    pub path: PathBuf,
    pub tasks: Vec<Task>,
    /// Few-shot examples before each question (the first k of the file's pool of 10).
    #[serde(default = "default_few_shot")]
    pub few_shot: usize,
    /// Test items per task.
    #[serde(default = "default_n")]
    pub n: usize,
    /// Sequential protocol: measured after every round that completes another `every` edits (and
    /// after the last); independent protocol: after each batch that degradation is measured on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<usize>,
}

fn default_few_shot() -> usize {
    3
}

fn default_n() -> usize {
    200
}

impl DownstreamSpec {
    /// The tasks' test items, read once per run.
    pub fn load(&self) -> Result<Vec<TaskSet>> {
        self.tasks
            .iter()
            .map(|&task| {
                let path = task_path(&self.path, task);
                load_task(task, &path, self.few_shot, self.n)
                    .with_context(|| format!("downstream task {task}"))
            })
            .collect()
    }
}

/// Each task's score on `model`, with its time in seconds; each is logged as it finishes.
pub fn scores<B: Backend>(
    model: &LanguageModel<B>,
    sets: &[TaskSet],
) -> Result<Vec<(TaskScore, f64)>> {
    sets.iter()
        .map(|set| {
            let t = Instant::now();
            let s = task_score(model, set)?;
            let seconds = t.elapsed().as_secs_f64();
            tracing::info!(
                "downstream {}: accuracy {:.1} % of {} (chance {:.1} %) in {seconds:.1} s",
                s.task,
                100.0 * s.accuracy,
                s.n,
                100.0 * s.chance
            );
            Ok((s, seconds))
        })
        .collect()
}

/// Per test item of each task, whether it was answered right (metric `ds_<task>`, `case_id` the
/// item's position among the test items): their mean is the task's accuracy.
pub fn rows(scores: &[TaskScore], stage: Stage) -> Vec<MetricRow> {
    scores
        .iter()
        .flat_map(|s| {
            let labels = s.labels.iter();
            labels.zip(&s.predictions).enumerate().map(move |(i, (&label, p))| MetricRow {
                case_id: i as u64,
                stage,
                metric: Metric::Downstream(s.task),
                value: f64::from(u8::from(*p == Some(label))),
            })
        })
        .collect()
}

/// `editbench downstream`: the unedited model's score on each task, beside chance.
#[derive(clap::Args)]
pub struct DownstreamArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The folder of the task files (`<task>.json`).
    #[arg(long)]
    pub data: PathBuf,
    /// Tasks, comma-separated (default: all eight).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    #[arg(long, default_value_t = 3)]
    pub few_shot: usize,
    #[arg(long, default_value_t = 200)]
    pub n: usize,
    /// Also write the scores (with every item's prediction) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl DownstreamArgs {
    /// Every chosen task scored on the unedited model (written to `--json` when given).
    fn scores<B: AutodiffBackend>(&self, device: B::Device) -> Result<Vec<(TaskScore, f64)>> {
        let spec = DownstreamSpec {
            path: self.data.clone(),
            tasks: parse_tasks(&self.tasks)?,
            few_shot: self.few_shot,
            n: self.n,
            every: None,
        };
        let sets = spec.load()?;
        let model = self.model.load::<B>(&device)?;
        let scored = scores(&model, &sets)?;
        if let Some(path) = &self.json {
            write_json(path, self, &sets, &scored)?;
        }
        Ok(scored)
    }
}

/// `editbench downstream`: the Markdown table.
pub struct DownstreamTask(pub DownstreamArgs);

impl BackendTask for DownstreamTask {
    type Output = Result<String>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<String> {
        Ok(table(&self.0.scores::<B>(device)?))
    }
}

/// Seconds one downstream checkpoint takes (every task of the run, `n` items each).
const CHECKPOINT_GOAL_SECONDS: f64 = 60.0;

/// `editbench bench downstream`: seconds per task and for the whole checkpoint, against the goal.
pub struct DownstreamBench(pub DownstreamArgs);

impl BackendTask for DownstreamBench {
    type Output = Result<serde_json::Value>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<serde_json::Value> {
        let scored = self.0.scores::<B>(device)?;
        let tasks: Vec<_> = scored
            .iter()
            .map(|(s, seconds)| {
                serde_json::json!({ "task": s.task, "n": s.n, "few_shot": s.few_shot,
                    "seconds": seconds, "seconds_per_item": seconds / s.n.max(1) as f64,
                    "accuracy": s.accuracy, "chance": s.chance, "f1": s.f1, "mcc": s.mcc })
            })
            .collect();
        let total: f64 = scored.iter().map(|(_, seconds)| seconds).sum();
        Ok(serde_json::json!({ "machine": crate::bench_all::machine(), "tasks": tasks,
            "checkpoint_seconds": total, "goal_at_most_seconds": CHECKPOINT_GOAL_SECONDS,
            "goal_met": total <= CHECKPOINT_GOAL_SECONDS }))
    }
}

/// Task names (all eight when empty).
pub fn parse_tasks(names: &[String]) -> Result<Vec<Task>> {
    if names.is_empty() {
        return Ok(Task::ALL.to_vec());
    }
    names
        .iter()
        .map(|n| {
            Task::from_name(n).with_context(|| {
                let known: Vec<&str> = Task::ALL.iter().map(|t| t.name()).collect();
                format!("unknown downstream task `{n}` (known: {})", known.join(", "))
            })
        })
        .collect()
}

/// The scores with what made them: revision, date, machine, model and each task file's sha256.
fn write_json(
    path: &Path,
    args: &DownstreamArgs,
    sets: &[TaskSet],
    scored: &[(TaskScore, f64)],
) -> Result<()> {
    let tasks: Vec<_> = sets
        .iter()
        .zip(scored)
        .map(|(set, (s, seconds))| serde_json::json!({ "sha256": set.sha256, "seconds": seconds, "score": s }))
        .collect();
    let json = serde_json::json!({
        "revision": crate::provenance::revision(), "date": crate::provenance::utc_now(),
        "machine": crate::bench_all::machine(), "model": args.model.model, "backend": args.model.backend.to_string(),
        "few_shot": args.few_shot, "n": args.n, "tasks": tasks,
    });
    crate::output::write_atomic(path, serde_json::to_string_pretty(&json)?.as_bytes())
}

/// A Markdown table: accuracy, F1 and MCC (×100) beside chance, per task.
pub fn table(scored: &[(TaskScore, f64)]) -> String {
    let mut out = String::from(
        "| task | shots | n | accuracy | chance | F1 | MCC | seconds |\n|---|---|---|---|---|---|---|---|\n",
    );
    for (s, seconds) in scored {
        out += &format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {seconds:.1} |\n",
            s.task,
            s.few_shot,
            s.n,
            100.0 * s.accuracy,
            100.0 * s.chance,
            100.0 * s.f1,
            100.0 * s.mcc
        );
    }
    out
}
