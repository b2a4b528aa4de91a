//! Sequential cells continue where they stopped. After every round but the last, a sequential
//! cell's state is saved as a [`Checkpoint`] in `checkpoints/<cell id>.safetensors`: the edited
//! layers' weights, AlphaEdit's and ENCORE's earlier keys, and the rows and totals measured so far.
//! A rerun restores it and goes on from the next round, ending with the rows of a run that never
//! stopped. `--max-rounds N` stops every sequential cell after N rounds of one invocation, so a
//! cell longer than a batch job's time limit is run in pieces.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use editbench_editing::checkpoint::Checkpoint;
use editbench_editing::{EditSession, Editor};
use editbench_models::LanguageModel;
use serde::{Deserialize, Serialize};

use crate::output::{csv_bytes, ResultRow, RESULT_COLUMNS};
use crate::provenance::Segment;
use crate::sweep::Cell;

/// Where a sequential cell keeps its checkpoint, and how many rounds this invocation may run.
pub struct Resume {
    pub path: PathBuf,
    pub max_rounds: Option<usize>,
}

impl Resume {
    pub fn new(out: &Path, cell: &Cell, max_rounds: Option<usize>) -> Self {
        Self { path: out.join("checkpoints").join(format!("{}.safetensors", cell.id)), max_rounds }
    }
}

/// What a cell has measured so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Progress {
    #[serde(skip)]
    pub rows: Vec<ResultRow>,
    /// Seconds per phase (keys, targets, solve, eval), summed over the invocations.
    pub seconds: BTreeMap<String, f64>,
    /// Adam steps per edit.
    pub steps: Vec<usize>,
    /// Largest condition estimate of the systems solved.
    pub condition: Option<f64>,
    pub pinv: bool,
    /// Rounds written into the model.
    pub rounds_done: usize,
    /// The rounds after which an earlier invocation stopped and this cell was resumed.
    pub resumed_after: Vec<usize>,
    /// The provenance of each invocation that ran rounds of this cell, up to its checkpoint.
    #[serde(default)]
    pub segments: Vec<Segment>,
}

impl Progress {
    /// A cell before its first round: the unedited model's `rows`, every phase at 0 s.
    pub fn new(rows: Vec<ResultRow>) -> Self {
        let seconds = ["keys", "targets", "solve", "eval"]
            .into_iter()
            .map(|p| (p.to_string(), 0.0))
            .collect();
        Self { rows, seconds, ..Self::default() }
    }

    pub fn add_seconds(&mut self, phase: &str, seconds: f64) {
        *self.seconds.entry(phase.to_string()).or_default() += seconds;
    }
}

/// Saves `progress` of `cell` (of `rounds` rounds) with what `session` and `editor` have written
/// into `model`.
pub fn save<B: Backend>(
    resume: &Resume,
    model: &LanguageModel<B>,
    session: &EditSession<B>,
    editor: &Editor,
    cell: &Cell,
    rounds: usize,
    progress: &Progress,
) -> Result<()> {
    let notes = BTreeMap::from([
        ("cell_id".to_string(), cell.id.clone()),
        ("rounds".to_string(), rounds.to_string()),
        ("progress".to_string(), serde_json::to_string(progress)?),
        ("rows".to_string(), String::from_utf8(csv_bytes(&progress.rows, Some(&RESULT_COLUMNS))?)?),
        ("git_revision".to_string(), crate::provenance::revision()),
    ]);
    Checkpoint::take(model, session, editor, notes)?.write(&resume.path)?;
    Ok(())
}

/// The progress of `cell` saved in its checkpoint, with the checkpoint's weights and earlier keys
/// written into `model` (unedited) and `editor` (new); `None` when there is no checkpoint. A
/// checkpoint that cannot be read or belongs to other settings is set aside (renamed
/// `*.unusable`, with a warning) and the cell starts from its first round.
pub fn restore<B: Backend>(
    resume: &Resume,
    model: &mut LanguageModel<B>,
    session: &mut EditSession<B>,
    editor: &mut Editor,
    cell: &Cell,
    rounds: usize,
) -> Result<Option<Progress>> {
    if !resume.path.is_file() {
        return Ok(None);
    }
    let restored =
        Checkpoint::read(&resume.path).map_err(anyhow::Error::from).and_then(|checkpoint| {
            let progress = progress_of(&checkpoint, cell, rounds)?;
            checkpoint.restore(model, session, editor)?;
            Ok(progress)
        });
    match restored {
        Ok(progress) => {
            tracing::info!(
                "cell {}: resumed after round {} of {rounds} from {}",
                cell.id,
                progress.rounds_done,
                resume.path.display()
            );
            Ok(Some(progress))
        }
        Err(e) => {
            let aside = resume.path.with_extension("unusable");
            std::fs::rename(&resume.path, &aside)
                .with_context(|| format!("moving {} aside", resume.path.display()))?;
            tracing::warn!(
                "cell {}: checkpoint not used ({e:#}); moved to {}; starting from the first round",
                cell.id,
                aside.display()
            );
            Ok(None)
        }
    }
}

/// The progress a checkpoint's notes hold, checked against `cell` and its `rounds`.
fn progress_of(checkpoint: &Checkpoint, cell: &Cell, rounds: usize) -> Result<Progress> {
    let note = |name: &str| checkpoint.notes.get(name).with_context(|| format!("no `{name}` note"));
    if *note("cell_id")? != cell.id || *note("rounds")? != rounds.to_string() {
        anyhow::bail!("written for cell {} of {} rounds", note("cell_id")?, note("rounds")?);
    }
    let mut progress: Progress =
        serde_json::from_str(note("progress")?).context("the `progress` note")?;
    let mut reader = csv::Reader::from_reader(note("rows")?.as_bytes());
    progress.rows =
        reader.deserialize().collect::<std::result::Result<_, _>>().context("the `rows` note")?;
    if progress.rounds_done == 0 || progress.rounds_done >= rounds {
        anyhow::bail!("{} rounds done of {rounds}", progress.rounds_done);
    }
    progress.resumed_after.push(progress.rounds_done);
    Ok(progress)
}
