//! `editbench run SWEEP.yaml`: the grid of cells on one backend, resumable (finished cells are
//! skipped by id), shardable (`--shard I/N`), one failing cell recorded and skipped unless
//! `--fail-fast`; and `editbench merge`, which combines shard directories.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use editbench_datasets::downstream::TaskSet;
use editbench_datasets::rng::SplitMix64;
use editbench_datasets::{consistency, load as load_dataset, DatasetSource, Record, Selection};
use editbench_editing::context::ContextTemplates;
use editbench_editing::hparams::TemplateKind;
use editbench_editing::score::perplexity;
use editbench_editing::stats::{model_sha256, paragraphs, sampled_indices, StatsSource};
use editbench_editing::targets::TargetCache;
use editbench_editing::{EditRequest, EditSession, Editor};
use editbench_metrics::answers::{AnswerOptions, UneditedAnswers};
use editbench_metrics::{evaluate, summarize, GenerationOptions, Metric, MetricRow, Stage, TfIdf};
use editbench_models::{BackendKind, BackendTask, LanguageModel};
use editbench_report::read_manifest;
use faer::Mat;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::downstream::{self, DownstreamSpec};
use crate::output::{
    carry_summaries, cell_record_path, cell_rows_path, final_rows, finished, rebuild, result_row,
    summarized, write_atomic, write_cell_rows, CellRecord, ResultRow,
};
use crate::provenance::{self, Segment};
use crate::resume::{self, Progress, Resume};
use crate::sweep::{Cell, DegradationSpec, Plan, PromptForm, Protocol};

/// Edits whose targets are searched together when filling the [`TargetCache`].
const TARGET_CHUNK: usize = 16;

pub struct RunOptions {
    pub out: PathBuf,
    /// `(i, n)`: run the cells whose grid index is `i` modulo `n`.
    pub shard: Option<(usize, usize)>,
    /// Run only the cells with these ids (all when empty).
    pub cells: Vec<String>,
    pub fail_fast: bool,
    /// Cells run at a time, each on one thread with its own copy of the model (cpu backend).
    pub jobs: usize,
    /// Rounds each sequential cell runs in this invocation before it is paused at a checkpoint.
    pub max_rounds: Option<usize>,
    /// Let a binary built from changed code write into results/committed/ (recorded).
    pub allow_dirty: bool,
}

/// Parses `I/N` (0 ≤ I < N).
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let parsed =
        s.split_once('/').and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
    match parsed {
        Some((i, n)) if n > 0 && i < n => Ok((i, n)),
        _ => bail!("--shard {s}: expected I/N with 0 ≤ I < N, e.g. 0/4"),
    }
}

impl RunOptions {
    /// Whether the cell at grid index `i` is in this invocation's shard and `--cells` selection.
    fn selects(&self, i: usize, cell: &Cell) -> bool {
        self.shard.is_none_or(|(s, n)| i % n == s)
            && (self.cells.is_empty() || self.cells.contains(&cell.id))
    }
}

/// Refuses a `--cells` id that is not in the grid (a typo would otherwise run nothing).
fn check_cell_ids(plan: &Plan, ids: &[String]) -> Result<()> {
    if let Some(bad) = ids.iter().find(|id| plan.cells.iter().all(|c| &c.id != *id)) {
        let known: Vec<&str> = plan.cells.iter().map(|c| c.id.as_str()).collect();
        bail!(
            "--cells {bad}: no such cell in {} (its cells: {}; `--dry-run` lists them)",
            plan.path.display(),
            known.join(", ")
        );
    }
    Ok(())
}

/// What `manifest.json` records about a run.
fn manifest(
    plan: &Plan,
    opts: &RunOptions,
    sets: &[String],
    dataset_sha256: &str,
    model_hashes: &[String],
    stats_keys: &[String],
) -> serde_json::Value {
    json!({
        "sweep_file": plan.path.display().to_string(),
        "sweep_sha256": plan.sha256,
        "sweep_text": plan.text,
        "sets": sets,
        "sweep": plan.sweep,
        "cells": plan.cells,
        "shard": opts.shard.map(|(i, n)| format!("{i}/{n}")),
        "editbench_version": env!("CARGO_PKG_VERSION"),
        "git_revision": crate::provenance::revision(),
        "git_commit": provenance::COMMIT,
        "cargo_features": provenance::features(),
        "allow_dirty": opts.allow_dirty,
        "models": plan.sweep.models.iter().zip(model_hashes).map(|(m, h)| json!({ "name": m.label(), "path": m.path.display().to_string(), "sha256": h })).collect::<Vec<_>>(),
        "dataset": { "path": plan.sweep.dataset.path.display().to_string(), "sha256": dataset_sha256 },
        "stats_cache_keys": stats_keys,
        "backend": plan.backend.to_string(),
        "machine": { "os": std::env::consts::OS, "arch": std::env::consts::ARCH, "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                     "hostname": std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default() },
    })
}

/// The fields two manifests must share for their cells to belong to one sweep.
fn identity(m: &serde_json::Value) -> serde_json::Value {
    json!({ "sweep_sha256": m["sweep_sha256"], "sets": m["sets"], "cells": m["cells"], "models": m["models"].as_array().map(|a| a.iter().map(|x| x["sha256"].clone()).collect::<Vec<_>>()), "dataset": m["dataset"]["sha256"] })
}

/// The records a cell edits: the selection's first `n_edits`; refused when a `case_id` (a results
/// key) repeats.
pub fn records(plan: &Plan) -> Result<(Vec<Record>, String)> {
    let d = &plan.sweep.dataset;
    let data = load_dataset(&DatasetSource {
        kind: d.kind,
        path: d.path.clone(),
        format: d.format,
        sha256: d.sha256.clone(),
    })?;
    let selected = d.selection.apply(&data.records)?;
    if selected.len() < d.n_edits {
        bail!(
            "dataset: the selection holds {} records but n_edits is {}",
            selected.len(),
            d.n_edits
        );
    }
    let records = Selection::First(d.n_edits).apply(&selected)?;
    let found = consistency(&records);
    if let Some(id) = found.duplicate_case_ids.first() {
        bail!("dataset {}: case_id {id} occurs more than once among the edited records; results are keyed by case_id, so make them unique", d.path.display());
    }
    for line in found.describe() {
        tracing::warn!("dataset {}: {line}", d.path.display());
    }
    Ok((records, data.sha256))
}

pub fn run(plan: Plan, sets: &[String], opts: RunOptions) -> Result<()> {
    if opts.jobs == 0 {
        bail!("--jobs 0: at least one cell must run at a time");
    }
    if opts.jobs > 1 && plan.backend != BackendKind::Cpu {
        bail!(
            "--jobs {}: cells run side by side on the cpu backend only (this sweep runs on {:?})",
            opts.jobs,
            plan.backend
        );
    }
    check_cell_ids(&plan, &opts.cells)?;
    provenance::check_committed(&opts.out, opts.allow_dirty)?;
    let (records, dataset_sha256) = records(&plan)?;
    let model_hashes = plan
        .sweep
        .models
        .iter()
        .map(|m| model_sha256(&m.path))
        .collect::<editbench_editing::Result<Vec<_>>>()?;
    let manifest_path = opts.out.join("manifest.json");
    let mut stats_keys = Vec::new();
    if let Ok(text) = std::fs::read_to_string(&manifest_path) {
        let old: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("reading {}", manifest_path.display()))?;
        let new = manifest(&plan, &opts, sets, &dataset_sha256, &model_hashes, &[]);
        if identity(&old) == identity(&new) {
            stats_keys =
                serde_json::from_value(old["stats_cache_keys"].clone()).unwrap_or_default();
        } else if holds_results(&opts.out) {
            bail!("{} holds results of another sweep (different sweep file, --set, models or dataset); choose another --out", opts.out.display());
        } else {
            tracing::warn!(
                "{}: replacing the manifest of a run that finished no cell",
                opts.out.display()
            );
        }
    }
    write_atomic(
        &manifest_path,
        serde_json::to_string_pretty(&manifest(
            &plan,
            &opts,
            sets,
            &dataset_sha256,
            &model_hashes,
            &stats_keys,
        ))?
        .as_bytes(),
    )?;
    let summarized = summarized(&opts.out, &plan.cells);
    let done = |id: &str| summarized.contains(&id) || finished(&opts.out, id).is_some();
    let mut pending: Vec<usize> = (0..plan.cells.len())
        .filter(|&i| opts.selects(i, &plan.cells[i]) && !done(&plan.cells[i].id))
        .collect();
    // Smallest batches first (grid order within a batch size): every method's cheap cells land
    // before the long ones, so an interrupted sweep already compares all methods at small B.
    pending.sort_by_key(|&i| plan.cells[i].batch_size);
    let selected = (0..plan.cells.len()).filter(|&i| opts.selects(i, &plan.cells[i])).count();
    eprintln!(
        "{} cells in the grid, {selected} selected, {} to run ({} already finished)",
        plan.cells.len(),
        pending.len(),
        selected - pending.len()
    );
    let scored = scored_cases(&plan, &records);
    let backend = plan.backend;
    let (failures, paused) = backend.run(SweepTask {
        plan: &plan,
        opts: &opts,
        records,
        scored,
        pending,
        sets,
        dataset_sha256,
        model_hashes,
    })??;
    if paused > 0 {
        eprintln!("{paused} sequential cell(s) paused by --max-rounds; their checkpoints are in {}; rerun to continue them", opts.out.join("checkpoints").display());
    }
    if failures > 0 {
        bail!(
            "{failures} cell(s) failed; their errors are in {}/cells/*.json (rerun to retry them)",
            opts.out.display()
        );
    }
    Ok(())
}

/// The case ids `eval.sample` scores: a seeded sample of the edited records (or the first ones),
/// the same in every cell; `None` scores all.
fn scored_cases(plan: &Plan, records: &[Record]) -> Option<BTreeSet<u64>> {
    let sample = plan.sweep.eval.as_ref()?.sample?;
    let mut ids: Vec<u64> = records.iter().map(|r| r.case_id).collect();
    if !sample.first {
        SplitMix64::new(sample.seed).shuffle(&mut ids);
    }
    Some(ids.into_iter().take(sample.n).collect())
}

/// The records of `records` that `scored` (the `eval.sample` case ids) keeps; all without one.
fn sampled(records: &[Record], scored: Option<&BTreeSet<u64>>) -> Vec<Record> {
    records.iter().filter(|r| in_sample(r, scored)).cloned().collect()
}

/// Whether `record` is scored: every record when no sample is drawn.
fn in_sample(record: &Record, scored: Option<&BTreeSet<u64>>) -> bool {
    scored.is_none_or(|s| s.contains(&record.case_id))
}

/// Whether `batch` holds a scored record.
fn holds_scored(batch: &[Record], scored: Option<&BTreeSet<u64>>) -> bool {
    batch.iter().any(|record| in_sample(record, scored))
}

/// The held-out texts of the perplexity measurement, tokenized: `texts` drawn (seeded) from the
/// given file, or from the statistics corpus without the paragraphs the statistics read. Which
/// paragraphs were drawn is written to `record` (JSON).
fn held_out_texts<B: burn::tensor::backend::Backend>(
    model: &LanguageModel<B>,
    plan: &Plan,
    m: usize,
    spec: &DegradationSpec,
    record: &Path,
) -> Result<Vec<Vec<u32>>> {
    let path = spec.path.clone().unwrap_or_else(|| plan.sweep.stats.corpus.clone());
    let texts = paragraphs(&path)?;
    let excluded: BTreeSet<usize> = match spec.path {
        Some(_) => BTreeSet::new(),
        None => sampled_indices(texts.len(), &plan.stats_hparams(m)).into_iter().collect(),
    };
    let mut candidates: Vec<usize> = (0..texts.len()).filter(|i| !excluded.contains(i)).collect();
    SplitMix64::new(spec.seed).shuffle(&mut candidates);
    candidates.truncate(spec.texts);
    let tokenizer = model.tokenizer()?;
    let tokens = candidates
        .iter()
        .map(|&i| {
            let mut ids = tokenizer.encode(&texts[i])?;
            ids.truncate(spec.max_length);
            Ok(ids)
        })
        .collect::<Result<Vec<Vec<u32>>>>()?;
    let count: usize = tokens.iter().map(|t| t.len().saturating_sub(1)).sum();
    let described = json!({ "path": path.display().to_string(), "paragraph_indices": candidates, "excluded_statistics_paragraphs": excluded.len(), "predicted_tokens": count });
    write_atomic(record, serde_json::to_string_pretty(&described)?.as_bytes())?;
    tracing::info!(
        "perplexity on {} held-out texts of {} ({count} tokens)",
        tokens.len(),
        path.display()
    );
    Ok(tokens)
}

struct SweepTask<'a> {
    plan: &'a Plan,
    opts: &'a RunOptions,
    records: Vec<Record>,
    scored: Option<BTreeSet<u64>>,
    pending: Vec<usize>,
    sets: &'a [String],
    dataset_sha256: String,
    model_hashes: Vec<String>,
}

impl BackendTask for SweepTask<'_> {
    /// Cells failed and cells paused by `--max-rounds`.
    type Output = Result<(usize, usize)>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<(usize, usize)> {
        let (plan, opts) = (self.plan, self.opts);
        let grid = ProgressBar::new(self.pending.len() as u64).with_message("cells");
        grid.set_style(
            ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed} < {eta}]")
                .expect("valid template"),
        );
        let reference = match plan.sweep.generation.as_ref().and_then(|g| g.reference.as_ref()) {
            Some(files) => Some(TfIdf::load(files)?),
            None => {
                if plan.sweep.generation.is_some() {
                    tracing::warn!(
                        "generation: no reference files given; RS is skipped (GE is computed)"
                    );
                }
                None
            }
        };
        let mut stats_keys = Vec::new();
        let (mut failures, mut paused) = (0, 0);
        for (m, spec) in plan.sweep.models.iter().enumerate() {
            let cells: Vec<&Cell> =
                self.pending.iter().map(|&i| &plan.cells[i]).filter(|c| c.model == m).collect();
            if cells.is_empty() {
                continue;
            }
            let label = spec.label();
            let load = || {
                LanguageModel::<B::InnerBackend>::load_as(&spec.path, spec.dtype, &device)
                    .with_context(|| format!("loading {}", spec.path.display()))
            };
            let mut model = load()?;
            let shared_path = opts.out.join("shared").join(format!("{label}.json"));
            let mut seconds: BTreeMap<String, f64> = std::fs::read_to_string(&shared_path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            let mut key = format!(
                "{label}-{}-{}-{}",
                &self.model_hashes[m][..12],
                &self.dataset_sha256[..12],
                self.records.len()
            );
            let records = model_records(&self.records, plan.sweep.dataset.prompts, &model)?;
            if plan.sweep.dataset.prompts == PromptForm::Chat {
                key += "-chat";
            }
            if let Some(eval) = &plan.sweep.eval {
                key += &format!(
                    "-eval{}",
                    &hex::encode(Sha256::digest(serde_json::to_string(eval)?.as_bytes()))[..8]
                );
            }
            let degradation = plan.sweep.eval.as_ref().and_then(|e| e.degradation.as_ref());
            let held_out = degradation
                .map(|d| {
                    held_out_texts(
                        &model,
                        plan,
                        m,
                        d,
                        &opts.out.join("held-out").join(format!("{label}.json")),
                    )
                })
                .transpose()?;
            let tasks = plan
                .sweep
                .eval
                .as_ref()
                .and_then(|e| e.downstream.as_ref())
                .map(DownstreamSpec::load)
                .transpose()?;
            let (pre, unedited) = pre_rows(
                &model,
                plan,
                &opts.out.join("pre"),
                &key,
                &sampled(&records, self.scored.as_ref()),
                (held_out.as_deref(), tasks.as_deref()),
                &mut seconds,
            )?;

            let mut layers: Vec<usize> = cells
                .iter()
                .filter(|c| c.method.needs_statistics())
                .flat_map(|c| c.layers.clone())
                .collect();
            layers.sort_unstable();
            layers.dedup();
            let source = StatsSource {
                corpus: plan.sweep.stats.corpus.clone(),
                hparams: plan.stats_hparams(m),
                cache_dir: Some(plan.sweep.stats.cache.clone()),
            };
            let t = Instant::now();
            stats_keys.extend(source.cache_keys(&model, &layers)?);
            let covariances: BTreeMap<usize, Mat<f64>> = source
                .moments(&model, &layers)?
                .iter()
                .map(|(&l, moments)| (l, moments.covariance()))
                .collect();
            seconds.insert("stats".into(), t.elapsed().as_secs_f64());
            write_atomic(&shared_path, serde_json::to_string_pretty(&seconds)?.as_bytes())?;

            let requests: Vec<EditRequest> = records.iter().map(EditRequest::from).collect();
            let ctx = CellContext {
                plan,
                out: &opts.out,
                label: &label,
                records: &records,
                // The generation options are each cell's (seeded by it).
                eval: CellEval {
                    pre: &pre,
                    scored: self.scored.as_ref(),
                    held_out: held_out.as_deref(),
                    generation: None,
                    answers: answers(plan, &unedited),
                    downstream: tasks.as_deref(),
                },
                covariances: &covariances,
                reference: reference.as_ref(),
                templates: Mutex::new(HashMap::new()),
                target_cache: Arc::new(Mutex::new(
                    TargetCache::new(requests, TARGET_CHUNK).persisted_in(opts.out.join("targets")),
                )),
                max_rounds: opts.max_rounds,
                machine: (plan.backend.to_string(), format!("{device:?}"), opts.allow_dirty),
            };
            let mut finish = |cell: &Cell, record: Option<CellRecord>| -> Result<()> {
                let Some(record) = record else {
                    paused += 1;
                    grid.inc(1);
                    return Ok(());
                };
                write_atomic(
                    &cell_record_path(&opts.out, &cell.id),
                    serde_json::to_string_pretty(&record)?.as_bytes(),
                )?;
                rebuild(&opts.out, &plan.cells, plan.sweep.protocol)?;
                grid.inc(1);
                if let Some(error) = record.error {
                    failures += 1;
                    if opts.fail_fast {
                        bail!("cell {} failed (--fail-fast): {error}", cell.id);
                    }
                }
                Ok(())
            };
            let jobs = opts.jobs.clamp(1, cells.len());
            if jobs == 1 {
                for cell in cells {
                    grid.set_message(format!(
                        "{} {} {} B={}",
                        cell.model_name, cell.method, cell.distribution, cell.batch_size
                    ));
                    finish(cell, ctx.run::<B>(&mut model, cell))?;
                }
            } else {
                grid.set_message(format!("cells, {jobs} at a time"));
                let models = std::iter::once(Ok(model))
                    .chain((1..jobs).map(|_| load()))
                    .collect::<Result<Vec<_>>>()?;
                run_side_by_side::<B>(&ctx, models, &cells, finish)?;
            }
        }
        grid.finish_and_clear();
        if !stats_keys.is_empty() {
            let manifest = manifest(
                plan,
                opts,
                self.sets,
                &self.dataset_sha256,
                &self.model_hashes,
                &stats_keys,
            );
            write_atomic(
                &opts.out.join("manifest.json"),
                serde_json::to_string_pretty(&manifest)?.as_bytes(),
            )?;
        }
        rebuild(&opts.out, &plan.cells, plan.sweep.protocol)?;
        Ok((failures, paused))
    }
}

/// What every cell of one model reads: the sweep, the unedited model's rows, the statistics, the
/// context templates (made on first use) and the target cache.
struct CellContext<'a> {
    plan: &'a Plan,
    out: &'a Path,
    label: &'a str,
    records: &'a [Record],
    eval: CellEval<'a>,
    covariances: &'a BTreeMap<usize, Mat<f64>>,
    reference: Option<&'a TfIdf>,
    templates: Mutex<HashMap<(bool, TemplateKind, u64, Option<PathBuf>), ContextTemplates>>,
    target_cache: Arc<Mutex<TargetCache>>,
    /// `--max-rounds`: rounds a sequential cell runs in this invocation.
    max_rounds: Option<usize>,
    /// Backend, device and `--allow-dirty`, for each cell's provenance.
    machine: (String, String, bool),
}

impl CellContext<'_> {
    /// Runs `cell` on `model` (restored afterwards); its rows are written, and its record returned
    /// (with the error where it failed); `None` when `--max-rounds` paused it.
    fn run<B: AutodiffBackend>(
        &self,
        model: &mut LanguageModel<B::InnerBackend>,
        cell: &Cell,
    ) -> Option<CellRecord> {
        let started = Instant::now();
        let (backend, device, allow_dirty) = &self.machine;
        let segment = Segment::begin(backend, device, None, *allow_dirty);
        let result =
            self.edit_and_score::<B>(model, cell, segment.clone()).and_then(|run| match run {
                CellRun::Finished(rows, seconds, outcome, provenance) => {
                    write_cell_rows(self.out, &cell.id, &rows)?;
                    tracing::info!(
                        "{}",
                        finished_line(
                            cell,
                            started.elapsed().as_secs_f64(),
                            &rows,
                            self.plan.sweep.protocol
                        )
                    );
                    Ok(Some((seconds, outcome, provenance)))
                }
                CellRun::Paused(done) => {
                    tracing::info!(
                        "cell {} paused after round {done} (--max-rounds); a rerun continues it",
                        cell.id
                    );
                    Ok(None)
                }
            });
        match result {
            Ok(Some((seconds, outcome, provenance))) => {
                Some(CellRecord { cell: cell.clone(), error: None, seconds, outcome, provenance })
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!(
                    "cell {} ({} {} B={}) failed: {e:#}",
                    cell.id,
                    cell.method,
                    cell.distribution,
                    cell.batch_size
                );
                let seconds = [("total".to_string(), started.elapsed().as_secs_f64())].into();
                Some(CellRecord {
                    cell: cell.clone(),
                    error: Some(format!("{e:#}")),
                    seconds,
                    outcome: json!(null),
                    provenance: vec![segment.end(0)],
                })
            }
        }
    }

    fn edit_and_score<B: AutodiffBackend>(
        &self,
        model: &mut LanguageModel<B::InnerBackend>,
        cell: &Cell,
        segment: Segment,
    ) -> Result<CellRun> {
        let plan = self.plan;
        // ROME's templates differ from the others'; from a file, fixed or sampled per method.
        let h = &cell.hparams;
        let key = (cell.method.is_rank_one(), h.templates, cell.seed, h.template_file.clone());
        let templates = {
            let mut made = self.templates.lock().expect("templates lock");
            if !made.contains_key(&key) {
                let t = ContextTemplates::for_hparams(model, cell.method, h)?;
                let kind = match &h.template_file {
                    Some(file) => file
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    None => {
                        serde_json::to_value(h.templates)?.as_str().unwrap_or_default().to_string()
                    }
                };
                let path = self.out.join("templates").join(format!(
                    "{}-{}-{kind}-seed{}.json",
                    self.label,
                    if key.0 { "rome" } else { "memit" },
                    cell.seed
                ));
                write_atomic(&path, serde_json::to_string_pretty(&t)?.as_bytes())?;
                made.insert(key.clone(), t);
            }
            made[&key].clone()
        };
        let covs: BTreeMap<usize, Mat<f64>> = cell
            .layers
            .iter()
            .filter(|_| cell.method.needs_statistics())
            .map(|l| (*l, self.covariances[l].clone()))
            .collect();
        let generation = plan.sweep.generation.as_ref().map(|g| GenerationOptions {
            max_len: g.max_len,
            interval: g.interval,
            seed: cell.seed,
            batch: 32,
            reference: self.reference.cloned(),
        });
        let editor = || {
            Ok::<_, anyhow::Error>(
                Editor::new(
                    cell.method,
                    cell.distribution,
                    cell.hparams.clone(),
                    templates.clone(),
                    covs.clone(),
                )?
                .with_target_cache(self.target_cache.clone()),
            )
        };
        let eval = CellEval { generation: generation.as_ref(), ..self.eval };
        let resume = (plan.sweep.protocol == Protocol::Sequential)
            .then(|| Resume::new(self.out, cell, self.max_rounds));
        run_cell::<B>(model, plan, cell, editor, self.records, &eval, resume.as_ref(), segment)
    }
}

/// Runs `cells` `models.len()` at a time, each on one thread with its own copy of the model: two
/// lone target searches side by side do ~1.6× the work of one on two threads (their products are
/// too small to share a core), batched ones ~1.1×. Each record goes to `finish` as its cell ends.
fn run_side_by_side<B: AutodiffBackend>(
    ctx: &CellContext<'_>,
    models: Vec<LanguageModel<B::InnerBackend>>,
    cells: &[&Cell],
    finish: impl FnMut(&Cell, Option<CellRecord>) -> Result<()> + Send,
) -> Result<()> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let finish = Mutex::new((finish, None::<anyhow::Error>));
    std::thread::scope(|s| {
        for (w, mut model) in models.into_iter().enumerate() {
            let (next, finish) = (&next, &finish);
            s.spawn(move || {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(move |_| format!("cell-{w}"))
                    .build()
                    .expect("a thread for a cell");
                pool.install(|| loop {
                    // After a failure under --fail-fast no worker takes another cell.
                    if finish.lock().expect("finish lock").1.is_some() {
                        break;
                    }
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(cell) = cells.get(i) else { break };
                    let record = ctx.run::<B>(&mut model, cell);
                    let mut state = finish.lock().expect("finish lock");
                    let (finish, error) = &mut *state;
                    if error.is_some() {
                        break;
                    }
                    if let Err(e) = finish(cell, record) {
                        *error = Some(e);
                        break;
                    }
                });
            });
        }
    });
    match finish.into_inner().expect("finish lock").1 {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Seconds between two progress lines of an independent cell in the log.
const BATCH_LOG_SECONDS: u64 = 60;

/// A progress line of an independent cell: `done` of its `total` batches (in this invocation),
/// with the time they took and the time left at that pace (a batch system's log has no bar).
fn log_batches(cell: &Cell, done: usize, total: usize, took: std::time::Duration) {
    let left = took.as_secs_f64() / done as f64 * (total - done) as f64;
    tracing::info!(
        "cell {}: {done} of {total} batches in {:.0} s, about {left:.0} s left",
        cell.id,
        took.as_secs_f64()
    );
}

/// One log line per finished cell (a batch system's log shows the sweep's progress): id, method,
/// distribution, B, seconds and the headline post-edit means ×100.
fn finished_line(cell: &Cell, seconds: f64, rows: &[ResultRow], protocol: Protocol) -> String {
    format!(
        "cell {} done: {} {} layers {:?} B={} in {seconds:.0} s; {}",
        cell.id,
        cell.method,
        cell.distribution,
        cell.layers,
        cell.batch_size,
        final_scores(rows, protocol)
    )
}

/// Mean scores of the rows a cell's summary is over ([`final_rows`]: every batch in the
/// independent protocol, each record's latest round in the sequential one).
fn final_scores(rows: &[ResultRow], protocol: Protocol) -> String {
    let summaries = summarize(&final_rows(rows, protocol));
    let scores: Vec<String> = [Metric::ES, Metric::PS, Metric::NS, Metric::RewriteAcc, Metric::PPL]
        .iter()
        .filter_map(|&metric| {
            summaries.iter().find(|s| s.stage == Stage::Post && s.metric == metric)
        })
        .map(|s| {
            if s.metric == Metric::PPL {
                format!("PPL {:.2}", s.mean)
            } else {
                format!("{} {:.1}", s.metric.code(), s.mean)
            }
        })
        .collect();
    scores.join(", ")
}

/// The generated-answer options of a sweep, with the unedited model's answers.
fn answers<'a>(
    plan: &'a Plan,
    unedited: &'a UneditedAnswers,
) -> Option<(&'a AnswerOptions, &'a UneditedAnswers)> {
    plan.sweep.eval.as_ref().and_then(|e| e.answers.as_ref()).map(|o| (o, unedited))
}

/// The unedited model's rows and its answers to the neighborhood prompts (with `eval.answers`),
/// computed once per model and dataset (`key`) and kept in `dir`.
fn pre_rows<B: burn::tensor::backend::Backend>(
    model: &LanguageModel<B>,
    plan: &Plan,
    dir: &Path,
    key: &str,
    records: &[Record],
    (held_out, tasks): (Option<&[Vec<u32>]>, Option<&[TaskSet]>),
    seconds: &mut BTreeMap<String, f64>,
) -> Result<(Vec<MetricRow>, UneditedAnswers)> {
    let generation = plan.sweep.generation.as_ref().map(|g| GenerationOptions {
        max_len: g.max_len,
        interval: g.interval,
        seed: 0,
        batch: 32,
        reference: None,
    });
    let path = dir.join(format!("{key}{}.json", if generation.is_some() { "-gen" } else { "" }));
    let answers_path = dir.join(format!("{key}-answers.json"));
    if let Ok(text) = std::fs::read_to_string(&path) {
        let unedited = std::fs::read_to_string(&answers_path)
            .ok()
            .and_then(|t| serde_json::from_str::<UneditedAnswers>(&t).ok());
        let wanted = plan.sweep.eval.as_ref().is_some_and(|e| e.answers.is_some());
        match (serde_json::from_str::<Vec<MetricRow>>(&text), unedited) {
            (Ok(rows), Some(unedited)) => return Ok((rows, unedited)),
            (Ok(rows), None) if !wanted => return Ok((rows, UneditedAnswers::new())),
            _ => tracing::warn!(
                "{}: unreadable or incomplete; recomputing the unedited model's scores",
                path.display()
            ),
        }
    }
    let t = Instant::now();
    let mut rows =
        evaluate(model, plan.sweep.dataset.kind, records, Stage::Pre, generation.as_ref())?;
    let mut unedited = UneditedAnswers::new();
    if let Some(options) = plan.sweep.eval.as_ref().and_then(|e| e.answers.as_ref()) {
        let (answer_rows, answers) =
            editbench_metrics::answers::answer_rows(model, records, Stage::Pre, options, None)?;
        rows.extend(answer_rows);
        unedited = answers;
        write_atomic(&answers_path, serde_json::to_string(&unedited)?.as_bytes())?;
    }
    if let Some(texts) = held_out {
        rows.push(MetricRow {
            case_id: 0,
            stage: Stage::Pre,
            metric: Metric::PPL,
            value: perplexity(model, texts)?,
        });
    }
    if let Some(tasks) = tasks {
        rows.extend(downstream_rows(model, tasks, Stage::Pre)?);
    }
    seconds.insert("eval_pre".into(), t.elapsed().as_secs_f64());
    write_atomic(&path, serde_json::to_string(&rows)?.as_bytes())?;
    Ok((rows, unedited))
}

/// The records as `model` is asked them: unchanged, or with every prompt in its chat template.
fn model_records<B: burn::tensor::backend::Backend>(
    records: &[Record],
    form: PromptForm,
    model: &LanguageModel<B>,
) -> Result<Vec<Record>> {
    if form == PromptForm::Bare {
        return Ok(records.to_vec());
    }
    let chat = model.tokenizer()?.chat.as_ref().with_context(|| {
        format!("dataset.prompts is chat, but {} has no chat template", model.path.display())
    })?;
    Ok(records.iter().map(|r| r.map_prompts(|p| chat.user_turn(p))).collect::<Result<_, _>>()?)
}

/// Every post-edit score of `records` on the edited `model`: teacher-forced (and the generation
/// tests), and the generated answers with `eval.answers`.
fn post_rows<B: burn::tensor::backend::Backend>(
    model: &LanguageModel<B>,
    plan: &Plan,
    records: &[Record],
    eval: &CellEval,
) -> Result<Vec<MetricRow>> {
    let mut rows = evaluate(model, plan.sweep.dataset.kind, records, Stage::Post, eval.generation)?;
    if let Some((options, unedited)) = eval.answers {
        rows.extend(
            editbench_metrics::answers::answer_rows(
                model,
                records,
                Stage::Post,
                options,
                Some(unedited),
            )?
            .0,
        );
    }
    Ok(rows)
}

/// What a cell measures besides its edits.
#[derive(Clone, Copy)]
struct CellEval<'a> {
    /// The unedited model's rows.
    pre: &'a [MetricRow],
    /// Case ids scored (`eval.sample`); all when `None`.
    scored: Option<&'a BTreeSet<u64>>,
    /// Tokenized held-out texts: perplexity and update norms are measured when given.
    held_out: Option<&'a [Vec<u32>]>,
    generation: Option<&'a GenerationOptions>,
    /// Generated-answer options and the unedited model's neighborhood answers.
    answers: Option<(&'a AnswerOptions, &'a UneditedAnswers)>,
    /// The downstream tasks' test items (`eval.downstream`).
    downstream: Option<&'a [TaskSet]>,
}

/// Every downstream task's per-item rows on `model`.
fn downstream_rows<B: burn::tensor::backend::Backend>(
    model: &LanguageModel<B>,
    tasks: &[TaskSet],
    stage: Stage,
) -> Result<Vec<MetricRow>> {
    let scores: Vec<_> = downstream::scores(model, tasks)?.into_iter().map(|(s, _)| s).collect();
    Ok(downstream::rows(&scores, stage))
}

/// The rounds after which the downstream tasks are measured: in the independent protocol those of
/// degradation (its sample of `eval.degradation.batches` scored batches; 4, seed 0, without it);
/// in the sequential one each round that completes another
/// `every` edits (every scored round without it), and the last.
fn downstream_rounds(
    plan: &Plan,
    cell: &Cell,
    rounds: &[&[Record]],
    scored: Option<&BTreeSet<u64>>,
) -> BTreeSet<usize> {
    let Some(spec) = plan.sweep.eval.as_ref().and_then(|e| e.downstream.as_ref()) else {
        return BTreeSet::new();
    };
    let n = rounds.len();
    match (plan.sweep.protocol, spec.every) {
        (Protocol::Independent, _) => {
            let degradation = plan.sweep.eval.as_ref().and_then(|e| e.degradation.as_ref());
            let (batches, seed) = degradation.map_or((4, 0), |d| (d.batches, d.seed));
            sampled_rounds(cell, rounds, scored, batches, seed)
        }
        (Protocol::Sequential, Some(every)) => (0..n)
            .filter(|&r| {
                r + 1 == n || (r + 1) * cell.batch_size / every > r * cell.batch_size / every
            })
            .collect(),
        (Protocol::Sequential, None) => {
            (0..n).filter(|&r| plan.sweep.scores_after(r, n, cell.batch_size)).collect()
        }
    }
}

/// The rounds after which degradation is measured: in the independent protocol (each batch is its
/// own edited model) a seeded sample of `batches` of the rounds that hold a scored record (all
/// rounds without `eval.sample`), so measuring edits no batch that scoring does not; in the
/// sequential one the scored rounds.
fn degradation_rounds(
    plan: &Plan,
    cell: &Cell,
    rounds: &[&[Record]],
    scored: Option<&BTreeSet<u64>>,
) -> BTreeSet<usize> {
    let Some(spec) = plan.sweep.eval.as_ref().and_then(|e| e.degradation.as_ref()) else {
        return BTreeSet::new();
    };
    match plan.sweep.protocol {
        Protocol::Independent => sampled_rounds(cell, rounds, scored, spec.batches, spec.seed),
        Protocol::Sequential => (0..rounds.len())
            .filter(|&r| plan.sweep.scores_after(r, rounds.len(), cell.batch_size))
            .collect(),
    }
}

/// A seeded sample of `batches` of the rounds that hold a scored record.
fn sampled_rounds(
    cell: &Cell,
    rounds: &[&[Record]],
    scored: Option<&BTreeSet<u64>>,
    batches: usize,
    seed: u64,
) -> BTreeSet<usize> {
    let mut order: Vec<usize> =
        (0..rounds.len()).filter(|&r| holds_scored(rounds[r], scored)).collect();
    SplitMix64::new(seed ^ cell.seed).shuffle(&mut order);
    order.into_iter().take(batches).collect()
}

/// PPL and, per edited layer, DWNORM and DWREL of the model as `session` has edited it.
fn degradation_rows<B: burn::tensor::backend::Backend>(
    model: &LanguageModel<B>,
    session: &EditSession<B>,
    texts: &[Vec<u32>],
) -> Result<Vec<MetricRow>> {
    let mut rows = vec![MetricRow {
        case_id: 0,
        stage: Stage::Post,
        metric: Metric::PPL,
        value: perplexity(model, texts)?,
    }];
    for (layer, change, norm) in session.update_norms(model)? {
        rows.push(MetricRow {
            case_id: layer as u64,
            stage: Stage::Post,
            metric: Metric::DWNORM,
            value: change,
        });
        rows.push(MetricRow {
            case_id: layer as u64,
            stage: Stage::Post,
            metric: Metric::DWREL,
            value: change / norm,
        });
    }
    Ok(rows)
}

/// How a cell's run ended.
enum CellRun {
    /// Every round done: the rows, seconds per phase, the solver's outcome and the provenance of
    /// each segment that ran it.
    Finished(Vec<ResultRow>, BTreeMap<String, f64>, serde_json::Value, Vec<Segment>),
    /// A sequential cell stopped by `--max-rounds` after this many rounds, saved in its checkpoint.
    Paused(usize),
}

/// N edits in rounds of B on `model` (restored before returning), scored after the last round
/// (sequential) or after each batch (independent); rows of the unedited model included. A
/// sequential cell with `resume` continues from its checkpoint and saves one after every round.
fn run_cell<B: AutodiffBackend>(
    model: &mut LanguageModel<B::InnerBackend>,
    plan: &Plan,
    cell: &Cell,
    new_editor: impl FnOnce() -> Result<Editor>,
    records: &[Record],
    eval: &CellEval,
    resume: Option<&Resume>,
    segment: Segment,
) -> Result<CellRun> {
    let rounds: Vec<&[Record]> = records.chunks(cell.batch_size).collect();
    let mut session = EditSession::default();
    let mut editor = new_editor()?;
    let restored = match resume {
        Some(resume) => {
            resume::restore(resume, model, &mut session, &mut editor, cell, rounds.len())?
        }
        None => None,
    };
    let mut progress = restored.unwrap_or_else(|| {
        Progress::new(eval.pre.iter().map(|r| result_row(cell, 0, r)).collect())
    });
    let segment = Segment { rounds: resume.map(|_| [progress.rounds_done; 2]), ..segment };
    let measured = degradation_rounds(plan, cell, &rounds, eval.scored);
    let downstream_at = downstream_rounds(plan, cell, &rounds, eval.scored);
    let independent = plan.sweep.protocol == Protocol::Independent;
    let mut skipped = 0;
    let mut paused = false;
    let (started, mut logged) = (Instant::now(), Instant::now());
    let result = (|| -> Result<()> {
        let first = progress.rounds_done;
        for (r, batch) in rounds.iter().enumerate().skip(first) {
            // An independent batch is written into the unedited model and reverted: one whose
            // records are all outside the scored sample changes nothing a metric sees (degradation
            // is measured only after batches that are scored), so it is not edited.
            if independent && !holds_scored(batch, eval.scored) {
                skipped += 1;
                continue;
            }
            let round_started = Instant::now();
            let requests: Vec<EditRequest> = batch.iter().map(EditRequest::from).collect();
            let outcome = editor.apply::<B>(model, &requests, &mut session)?;
            let steps = outcome.target_steps.iter().sum::<usize>() as f64
                / outcome.target_steps.len().max(1) as f64;
            let seconds_targets = outcome.seconds_targets;
            progress.add_seconds("keys", outcome.seconds_keys);
            progress.add_seconds("targets", outcome.seconds_targets);
            progress.add_seconds("solve", outcome.seconds_solve);
            progress.steps.extend(outcome.target_steps);
            progress.condition = match (progress.condition, outcome.max_condition_estimate) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            progress.pinv |= outcome.used_pseudo_inverse;
            let scored: Option<&[Record]> = match plan.sweep.protocol {
                Protocol::Independent => Some(batch),
                Protocol::Sequential if r + 1 == rounds.len() => Some(records),
                Protocol::Sequential
                    if plan.sweep.scores_after(r, rounds.len(), cell.batch_size) =>
                {
                    Some(&records[..(r + 1) * cell.batch_size])
                }
                Protocol::Sequential => None,
            };
            let t = Instant::now();
            if let Some(scored) = scored {
                let sampled = sampled(scored, eval.scored);
                if !sampled.is_empty() {
                    progress.rows.extend(
                        post_rows(&*model, plan, &sampled, eval)?
                            .iter()
                            .map(|row| result_row(cell, r + 1, row)),
                    );
                }
            }
            if let (Some(texts), true) = (eval.held_out, measured.contains(&r)) {
                progress.rows.extend(
                    degradation_rows(model, &session, texts)?
                        .iter()
                        .map(|row| result_row(cell, r + 1, row)),
                );
            }
            if let (Some(tasks), true) = (eval.downstream, downstream_at.contains(&r)) {
                progress.rows.extend(
                    downstream_rows(model, tasks, Stage::Post)?
                        .iter()
                        .map(|row| result_row(cell, r + 1, row)),
                );
            }
            progress.add_seconds("eval", t.elapsed().as_secs_f64());
            progress.rounds_done = r + 1;
            if independent {
                session.revert(model);
                editor.reset();
                if logged.elapsed().as_secs() >= BATCH_LOG_SECONDS {
                    logged = Instant::now();
                    log_batches(cell, r + 1 - first, rounds.len() - first, started.elapsed());
                }
            } else if let (Some(resume), true) = (resume, r + 1 < rounds.len()) {
                // The checkpoint lists this invocation too, up to now: a resumed cell names
                // every invocation that ran its rounds.
                progress.segments.push(segment.clone().end(r + 1));
                let saved =
                    resume::save(resume, model, &session, &editor, cell, rounds.len(), &progress);
                progress.segments.pop();
                saved?;
                let took = round_started.elapsed().as_secs_f64();
                tracing::info!("cell {}: round {} of {} done in {took:.0} s (target search {seconds_targets:.0} s, \
                    {steps:.1} Adam steps per edit); checkpoint saved", cell.id, r + 1, rounds.len());
                if resume.max_rounds.is_some_and(|n| r + 1 - first >= n) {
                    paused = true;
                    return Ok(());
                }
            }
        }
        Ok(())
    })();
    session.revert(model);
    result?;
    if paused {
        return Ok(CellRun::Paused(progress.rounds_done));
    }
    progress.segments.push(segment.end(progress.rounds_done));
    if let Some(resume) = resume.filter(|r| r.path.is_file()) {
        std::fs::remove_file(&resume.path)
            .with_context(|| format!("removing {}", resume.path.display()))?;
    }
    let outcome = json!({ "adam_steps": progress.steps, "max_condition_estimate": progress.condition, "used_pseudo_inverse": progress.pinv, "skipped_batches": skipped,
                          "threads": rayon::current_num_threads(), "resumed_after_rounds": progress.resumed_after });
    Ok(CellRun::Finished(progress.rows, progress.seconds, outcome, progress.segments))
}

/// Whether `out` holds anything a run produced: a finished cell or the unedited model's scores.
fn holds_results(out: &Path) -> bool {
    let any = |dir: &str| {
        std::fs::read_dir(out.join(dir)).is_ok_and(|mut d| {
            d.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json")))
        })
    };
    any("cells") || any("pre")
}

/// Refuses an output directory that holds anything but results of the sweep `manifest` describes.
fn refuse_other_results(out: &Path, manifest: &serde_json::Value) -> Result<()> {
    let Ok(mut entries) = std::fs::read_dir(out) else { return Ok(()) };
    if entries.next().is_none() {
        return Ok(());
    }
    let path = out.join("manifest.json");
    let same = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|m| identity(&m) == identity(manifest));
    if !same {
        bail!(
            "{} is not empty and holds no results of this sweep; merge into a new or empty --out",
            out.display()
        );
    }
    Ok(())
}

/// Rebuilds the aggregates of a results directory from its raw rows (what `editbench report` does
/// first); a directory with none (committed before rows were kept) is left as it is.
pub fn rebuild_from_rows(dir: &Path) -> Result<()> {
    let (cells, protocol) = grid(&read_manifest(dir)?)?;
    if !cells.iter().any(|c| finished(dir, &c.id).is_some()) {
        return Ok(());
    }
    rebuild(dir, &cells, protocol)?;
    Ok(())
}

/// What a merged manifest keeps of one source: its directory, revision, machine and, where it
/// was itself a merge, its own sources.
fn source_provenance(dir: &Path, m: &serde_json::Value) -> serde_json::Value {
    let keep = [
        "git_revision",
        "git_commit",
        "editbench_version",
        "cargo_features",
        "backend",
        "machine",
        "allow_dirty",
        "shard",
        "sources",
    ];
    let mut out = json!({ "dir": dir.display().to_string() });
    for k in keep.iter().filter(|k| !m[**k].is_null()) {
        out[*k] = m[*k].clone();
    }
    out
}

/// The grid of a results directory's manifest: its cells and the protocol they were edited in.
fn grid(manifest: &serde_json::Value) -> Result<(Vec<Cell>, Protocol)> {
    let cells = serde_json::from_value(manifest["cells"].clone()).context("manifest cells")?;
    let protocol = serde_json::from_value(manifest["sweep"]["protocol"].clone())
        .context("manifest sweep protocol")?;
    Ok((cells, protocol))
}

/// `editbench merge`: copies the cells of shard directories into `out` and rebuilds the
/// aggregates; the shards must come from the same sweep. A directory of committed results (cells
/// with only their summaries) is merged too: its cells' aggregate lines are carried over.
pub fn merge(out: &Path, dirs: &[PathBuf], allow_dirty: bool) -> Result<()> {
    if dirs.is_empty() {
        bail!("merge: give at least one results directory");
    }
    provenance::check_committed(out, allow_dirty)?;
    let manifests: Vec<serde_json::Value> =
        dirs.iter().map(|d| read_manifest(d)).collect::<Result<_>>()?;
    for (d, m) in dirs.iter().zip(&manifests).skip(1) {
        if identity(m) != identity(&manifests[0]) {
            bail!("merge: {} is from another sweep than {} (sweep file, --set, cells, models or dataset differ)", d.display(), dirs[0].display());
        }
    }
    refuse_other_results(out, &manifests[0])?;
    let (cells, protocol) = grid(&manifests[0])?;
    let mut merged = manifests[0].clone();
    merged["shard"] = json!(null);
    let mut keys: Vec<serde_json::Value> = manifests
        .iter()
        .flat_map(|m| m["stats_cache_keys"].as_array().cloned().unwrap_or_default())
        .collect();
    keys.dedup();
    merged["stats_cache_keys"] = json!(keys);
    merged["merged_from"] = json!(dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>());
    // Every source's provenance: the revision and machine each part of the merge ran on.
    let sources =
        dirs.iter().zip(&manifests).map(|(d, m)| source_provenance(d, m)).collect::<Vec<_>>();
    merged["sources"] = json!(sources);
    merged["merged_by"] =
        json!({ "git_revision": provenance::revision(), "allow_dirty": allow_dirty });
    for d in dirs {
        for sub in ["shared", "held-out"] {
            for entry in std::fs::read_dir(d.join(sub)).into_iter().flatten().flatten() {
                write_atomic(
                    &out.join(sub).join(entry.file_name()),
                    &std::fs::read(entry.path())?,
                )?;
            }
        }
    }
    // Per source, the cells it holds only summaries of, and of those the ones taken from it.
    let summarized: Vec<Vec<&str>> = dirs.iter().map(|d| summarized(d, &cells)).collect();
    let mut carried: Vec<Vec<&str>> = vec![Vec::new(); dirs.len()];
    for cell in &cells {
        let with_rows = dirs.iter().position(|d| finished(d, &cell.id).is_some());
        let Some(i) =
            with_rows.or_else(|| summarized.iter().position(|ids| ids.contains(&cell.id.as_str())))
        else {
            continue;
        };
        // Rows, then the record, copied as they are (the rebuild below reads the rows).
        let copy = |from: PathBuf, to: PathBuf| write_atomic(&to, &std::fs::read(from)?);
        if with_rows.is_some() {
            copy(cell_rows_path(&dirs[i], &cell.id), cell_rows_path(out, &cell.id))?;
        } else {
            carried[i].push(&cell.id);
        }
        copy(cell_record_path(&dirs[i], &cell.id), cell_record_path(out, &cell.id))?;
    }
    for (source, ids) in dirs.iter().zip(&carried).filter(|(_, ids)| !ids.is_empty()) {
        carry_summaries(out, source, ids)?;
    }
    write_atomic(&out.join("manifest.json"), serde_json::to_string_pretty(&merged)?.as_bytes())?;
    let done = rebuild(out, &cells, protocol)?;
    eprintln!("merged {done} of {} cells into {}", cells.len(), out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of record 0 (scored again after every round in the sequential protocol).
    fn row(round: usize, metric: &str, value: f64) -> ResultRow {
        let (cell_id, model, method, distribution, layers) =
            ("c".into(), "m".into(), "emmet".into(), "single".into(), "4".into());
        ResultRow {
            cell_id,
            model,
            method,
            distribution,
            layers,
            batch_size: 1,
            n_edits: 2,
            seed: 0,
            round,
            case_id: 0,
            stage: Stage::Post,
            metric: metric.into(),
            value,
        }
    }

    #[test]
    fn a_sequential_cell_is_logged_with_its_last_rounds_scores() {
        let rows = [row(1, "ES", 1.0), row(1, "PPL", 20.0), row(2, "ES", 0.5), row(2, "PPL", 40.0)];
        assert_eq!(final_scores(&rows, Protocol::Sequential), "ES 50.0, PPL 40.00");
        assert_eq!(final_scores(&rows, Protocol::Independent), "ES 75.0, PPL 30.00");
    }
}
