//! Aggregation of per-record rows: mean ± standard error of each metric ×100 (the papers' scale;
//! perplexity and update norms as they are, `Metric::scale`),
//! and the score S, the harmonic mean of the success metrics' means.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::metric::{Metric, MetricRow, Stage};

/// One metric of one stage over a set of records, ×100.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub stage: Stage,
    pub metric: Metric,
    pub mean: f64,
    /// Standard error of the mean (sample standard deviation / √n); absent for S and n = 1.
    pub stderr: Option<f64>,
    /// Records the mean is over.
    pub n: usize,
}

/// The mean of `values` and its standard error (sample standard deviation over √n; `None` for
/// fewer than two values), unscaled. `values` must not be empty.
pub fn mean_stderr(values: &[f64]) -> (f64, Option<f64>) {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    let stderr = (n > 1).then(|| {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
            / (n as f64).sqrt()
    });
    (mean, stderr)
}

/// Means of every (stage, metric) in `rows`, plus S wherever its three inputs are present:
/// harmonic mean of ES, PS, NS (CounterFact) or of rewrite, paraphrase and neighborhood accuracy
/// (zsRE).
pub fn summarize(rows: &[MetricRow]) -> Vec<Summary> {
    let mut groups: BTreeMap<(Stage, Metric), Vec<f64>> = BTreeMap::new();
    for r in rows.iter().filter(|r| !matches!(r.metric, Metric::S | Metric::GenS)) {
        groups.entry((r.stage, r.metric)).or_default().push(r.value);
    }
    let mut out: Vec<Summary> = groups
        .into_iter()
        .map(|((stage, metric), values)| {
            let (mean, stderr) = mean_stderr(&values);
            let stderr = stderr.map(|se| se * metric.scale());
            Summary { stage, metric, mean: mean * metric.scale(), stderr, n: values.len() }
        })
        .collect();
    for stage in [Stage::Pre, Stage::Post] {
        let families = [
            (Metric::S, [Metric::ES, Metric::PS, Metric::NS]),
            (Metric::S, [Metric::RewriteAcc, Metric::ParaphraseAcc, Metric::NeighborhoodAcc]),
            (Metric::GenS, [Metric::GenES, Metric::GenPS, Metric::GenNS]),
        ];
        for (score, parts) in families {
            let found: Vec<&Summary> = parts
                .iter()
                .filter_map(|m| out.iter().find(|s| s.stage == stage && s.metric == *m))
                .collect();
            if found.len() == 3 {
                let n = found.iter().map(|s| s.n).min().expect("three");
                out.push(Summary {
                    stage,
                    metric: score,
                    mean: harmonic_mean(found.iter().map(|s| s.mean)),
                    stderr: None,
                    n,
                });
            }
        }
    }
    out.sort_by_key(|s| (s.stage, s.metric));
    out
}

/// `n / Σ 1/xᵢ`; 0 when any value is 0.
fn harmonic_mean(values: impl Iterator<Item = f64>) -> f64 {
    let values: Vec<f64> = values.collect();
    if values.iter().any(|&v| v <= 0.0) {
        return 0.0;
    }
    values.len() as f64 / values.iter().map(|v| 1.0 / v).sum::<f64>()
}

/// The rows a cell's summary is over, from its `(round, row)` pairs: per (case, stage, metric) the
/// latest round's, since in the sequential protocol a record is scored again after later rounds;
/// with `every_batch` (the independent protocol, where each round is its own batch written into the
/// unedited model) every round's, so the perplexity and update norms of several measured batches
/// are all counted.
pub fn counted_rows(
    rows: impl IntoIterator<Item = (usize, MetricRow)>,
    every_batch: bool,
) -> Vec<MetricRow> {
    let mut latest: BTreeMap<(usize, u64, Stage, Metric), (usize, MetricRow)> = BTreeMap::new();
    for (round, row) in rows {
        let batch = if every_batch { round } else { 0 };
        let slot =
            latest.entry((batch, row.case_id, row.stage, row.metric)).or_insert((round, row));
        if round >= slot.0 {
            *slot = (round, row);
        }
    }
    latest.into_values().map(|(_, row)| row).collect()
}

/// A sequential run's curve: per round, the summaries of the post-edit rows measured after it
/// (the records edited so far, perplexity, update norms).
pub fn round_summaries(
    rows: impl IntoIterator<Item = (usize, MetricRow)>,
) -> BTreeMap<usize, Vec<Summary>> {
    let mut by_round: BTreeMap<usize, Vec<MetricRow>> = BTreeMap::new();
    for (round, row) in rows.into_iter().filter(|(_, r)| r.stage == Stage::Post) {
        by_round.entry(round).or_default().push(row);
    }
    by_round.into_iter().map(|(round, rows)| (round, summarize(&rows))).collect()
}

/// Records edited after `round` rounds of `batch_size` edits in a cell of `n_edits` (the last
/// round may be short): the x position of a sequential curve's point.
pub fn edits_after(round: usize, batch_size: usize, n_edits: usize) -> usize {
    (round * batch_size).min(n_edits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_rows_keep_every_batch_or_the_latest_round() {
        let row = |case_id, metric, value| MetricRow { case_id, stage: Stage::Post, metric, value };
        let rows = [
            (1, row(0, Metric::PPL, 20.0)),
            (2, row(0, Metric::PPL, 30.0)),
            (3, row(0, Metric::PPL, 40.0)),
            (3, row(7, Metric::ES, 1.0)),
        ];
        let ppl = |every_batch| -> Vec<f64> {
            counted_rows(rows, every_batch)
                .iter()
                .filter(|r| r.metric == Metric::PPL)
                .map(|r| r.value)
                .collect()
        };
        assert_eq!(ppl(true), [20.0, 30.0, 40.0]);
        assert_eq!(ppl(false), [40.0]);
        assert_eq!(counted_rows(rows, false).len(), 2);
    }

    #[test]
    fn round_summaries_average_each_rounds_post_edit_rows_only() {
        let row = |stage, metric, value| MetricRow { case_id: 0, stage, metric, value };
        let rows = [
            (0, row(Stage::Pre, Metric::ES, 0.0)),
            (1, row(Stage::Post, Metric::ES, 1.0)),
            (2, row(Stage::Post, Metric::ES, 1.0)),
            (2, row(Stage::Post, Metric::ES, 0.0)),
            (2, row(Stage::Post, Metric::PPL, 30.0)),
        ];
        let curve = round_summaries(rows);
        assert_eq!(
            curve.keys().copied().collect::<Vec<_>>(),
            [1, 2],
            "the unedited rows are no round of the curve"
        );
        let mean = |round, metric| {
            curve[&round].iter().find(|s| s.metric == metric).map(|s| (s.mean, s.n))
        };
        assert_eq!(mean(1, Metric::ES), Some((100.0, 1)));
        assert_eq!(mean(2, Metric::ES), Some((50.0, 2)));
        assert_eq!(mean(2, Metric::PPL), Some((30.0, 1)));
    }
}
