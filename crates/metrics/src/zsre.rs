//! zsRE's token-level accuracy (algo §8.2): the fraction of the answer's tokens (`" " + answer`)
//! that are the top prediction under teacher forcing, for the rewrite prompt, its paraphrase, and
//! the Natural Questions prompt against its own answer.

use editbench_datasets::Record;
use editbench_editing::Result;

use crate::metric::{mean, Metric, MetricRow, PairBatch, Scorer, Stage};

/// rewrite_acc, paraphrase_acc and neighborhood_acc of every record, batched.
pub fn zsre_rows(scorer: &impl Scorer, records: &[Record], stage: Stage) -> Result<Vec<MetricRow>> {
    let mut batch = PairBatch::new();
    let queued: Vec<_> = records
        .iter()
        .map(|r| {
            let new = &r.rewrite.target_new;
            let neighborhood: Vec<_> =
                r.neighborhood.iter().map(|p| batch.push([p.prompt.clone()], &p.answer)).collect();
            (
                batch.push([r.rewrite.prompt_text()], new),
                batch.push(r.paraphrase_prompts.clone(), new),
                neighborhood,
            )
        })
        .collect();
    let scored = batch.score(scorer)?;
    let mut rows = Vec::new();
    for (record, (rewrite, paraphrase, neighborhood)) in records.iter().zip(queued) {
        let accuracy = |ranges: Vec<std::ops::Range<usize>>| {
            mean(ranges.into_iter().flat_map(|r| scored[r].iter().map(|c| c.token_accuracy())))
        };
        for (metric, value) in [
            (Metric::RewriteAcc, accuracy(vec![rewrite])),
            (Metric::ParaphraseAcc, accuracy(vec![paraphrase])),
            (Metric::NeighborhoodAcc, accuracy(neighborhood)),
        ] {
            if let Some(value) = value {
                rows.push(MetricRow { case_id: record.case_id, stage, metric, value });
            }
        }
    }
    Ok(rows)
}
