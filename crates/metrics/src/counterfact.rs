//! CounterFact's probability metrics (algo §8.1): for each prompt the mean token NLLs of the new
//! and the true object; success is the right one being more likely, magnitude the difference of
//! `P = exp(−mean NLL)`, accuracy every target token being the top prediction.

use std::ops::Range;

use editbench_datasets::Record;
use editbench_editing::score::Continuation;
use editbench_editing::Result;

use crate::metric::{mean, Metric, MetricRow, PairBatch, Scorer, Stage};

/// The queued prompts of one record: ranges into the scored pairs.
struct Queued {
    rewrite: (Range<usize>, Range<usize>),
    paraphrase: (Range<usize>, Range<usize>),
    /// (new, expected) per neighborhood prompt.
    neighborhood: Vec<(Range<usize>, Range<usize>)>,
}

/// ES EM PS PM NS NM EA PA NA of every record, all prompts scored in batched passes.
pub fn counterfact_rows(
    scorer: &impl Scorer,
    records: &[Record],
    stage: Stage,
) -> Result<Vec<MetricRow>> {
    let mut batch = PairBatch::new();
    let queued: Vec<Queued> = records
        .iter()
        .map(|r| {
            let (new, truth) = (&r.rewrite.target_new, &r.rewrite.target_true);
            let prompt = r.rewrite.prompt_text();
            Queued {
                rewrite: (batch.push([prompt.clone()], new), batch.push([prompt], truth)),
                paraphrase: (
                    batch.push(r.paraphrase_prompts.clone(), new),
                    batch.push(r.paraphrase_prompts.clone(), truth),
                ),
                neighborhood: r
                    .neighborhood
                    .iter()
                    .map(|p| {
                        (
                            batch.push([p.prompt.clone()], new),
                            batch.push([p.prompt.clone()], &p.answer),
                        )
                    })
                    .collect(),
            }
        })
        .collect();
    let scored = batch.score(scorer)?;
    let mut rows = Vec::new();
    for (record, q) in records.iter().zip(queued) {
        let pairs =
            |(new, other): (Range<usize>, Range<usize>)| -> Vec<(&Continuation, &Continuation)> {
                scored[new].iter().zip(&scored[other]).collect()
            };
        let rewrite = pairs(q.rewrite);
        let paraphrase = pairs(q.paraphrase);
        let neighborhood: Vec<_> = q.neighborhood.into_iter().flat_map(pairs).collect();
        let mut push = |metric: Metric, value: Option<f64>| {
            if let Some(value) = value {
                rows.push(MetricRow { case_id: record.case_id, stage, metric, value });
            }
        };
        for (metric_s, metric_m, metric_a, group, new_wins) in [
            (Metric::ES, Metric::EM, Metric::EA, &rewrite, true),
            (Metric::PS, Metric::PM, Metric::PA, &paraphrase, true),
            (Metric::NS, Metric::NM, Metric::NA, &neighborhood, false),
        ] {
            // (the expected continuation, the other one)
            let oriented: Vec<(&Continuation, &Continuation)> = group
                .iter()
                .map(|&(new, other)| if new_wins { (new, other) } else { (other, new) })
                .collect();
            push(
                metric_s,
                mean(
                    oriented.iter().map(|(want, other)| {
                        f64::from(u8::from(want.mean_nll() < other.mean_nll()))
                    }),
                ),
            );
            push(
                metric_m,
                mean(
                    oriented
                        .iter()
                        .map(|(want, other)| (-want.mean_nll()).exp() - (-other.mean_nll()).exp()),
                ),
            );
            push(
                metric_a,
                mean(oriented.iter().map(|(want, _)| f64::from(u8::from(want.all_argmax())))),
            );
        }
    }
    Ok(rows)
}
