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

/// Each task's score on `model`, with its time in seconds.
pub fn scores<B: Backend>(
    model: &LanguageModel<B>,
    sets: &[TaskSet],
) -> Result<Vec<(TaskScore, f64)>> {
    sets.iter()
        .map(|set| {
            let t = Instant::now();
            let score = task_score(model, set)?;
            Ok((score, t.elapsed().as_secs_f64()))
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

pub struct DownstreamTask(pub DownstreamArgs);

impl BackendTask for DownstreamTask {
    type Output = Result<String>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<String> {
        let args = self.0;
        let tasks = parse_tasks(&args.tasks)?;
        let spec = DownstreamSpec {
            path: args.data.clone(),
            tasks,
            few_shot: args.few_shot,
            n: args.n,
            every: None,
        };
        let sets = spec.load()?;
        let model = args.model.load::<B>(&device)?;
        let scored = scores(&model, &sets)?;
        if let Some(path) = &args.json {
            write_json(path, &scored)?;
        }
        Ok(table(&scored))
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

fn write_json(path: &Path, scored: &[(TaskScore, f64)]) -> Result<()> {
    let json: Vec<_> = scored
        .iter()
        .map(|(s, seconds)| serde_json::json!({ "score": s, "seconds": seconds }))
        .collect();
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
