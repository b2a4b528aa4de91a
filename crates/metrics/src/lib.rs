//! The numbers of the paper's tables (algo §8), as long-format rows `(case_id, stage, metric,
//! value)` that the runner and the report aggregate without knowing what each metric means.
//!
//! Values are stored on their natural scale (success indicators and accuracies in `[0, 1]`,
//! probability differences in `[−1, 1]`, entropies in bits); [`summarize`] reports means ×100,
//! the scale the papers print.

pub mod answers;
mod counterfact;
pub mod downstream;
mod generation;
mod metric;
mod reference;
mod summary;
mod zsre;

pub use counterfact::counterfact_rows;
pub use generation::{generation_rows, ngram_entropy, word_tokens, GenerationOptions, Generator};
pub use metric::{Metric, MetricRow, Scorer, Stage};
pub use reference::{ReferenceFiles, TfIdf};
pub use summary::{counted_rows, edits_after, mean_stderr, round_summaries, summarize, Summary};
pub use zsre::zsre_rows;

use editbench_datasets::{DatasetKind, Record};
use editbench_editing::Result;

/// Every metric of `kind` for `records` on the model behind `scorer`/`generator`; generation
/// metrics only when `generation` is given.
pub fn evaluate<S: Scorer + Generator>(
    model: &S,
    kind: DatasetKind,
    records: &[Record],
    stage: Stage,
    generation: Option<&GenerationOptions>,
) -> Result<Vec<MetricRow>> {
    match kind {
        DatasetKind::Zsre | DatasetKind::Qaedit => zsre_rows(model, records, stage),
        DatasetKind::Counterfact | DatasetKind::Mcf => {
            let mut rows = counterfact_rows(model, records, stage)?;
            if let Some(options) = generation {
                rows.extend(generation_rows(model, records, stage, options)?);
            }
            Ok(rows)
        }
    }
}
