//! Each metric on hand-computed cases, through a fake scorer with known token probabilities.

use std::collections::HashMap;

use editbench_datasets::{Probe, Record, Rewrite};
use editbench_editing::score::Continuation;
use editbench_metrics::{counterfact_rows, summarize, zsre_rows, Metric, MetricRow, Scorer, Stage};

/// Token log-probabilities and top-1 flags per (prompt, target).
struct Fake(HashMap<(String, String), Continuation>);

impl Fake {
    fn new(entries: &[(&str, &str, &[f64], &[bool])]) -> Self {
        Self(
            entries
                .iter()
                .map(|&(p, t, probs, top)| {
                    (
                        (p.to_string(), t.to_string()),
                        Continuation {
                            logprobs: probs.iter().map(|p| p.ln()).collect(),
                            argmax: top.to_vec(),
                        },
                    )
                })
                .collect(),
        )
    }
}

impl Scorer for Fake {
    fn score(&self, pairs: &[(String, String)]) -> editbench_editing::Result<Vec<Continuation>> {
        Ok(pairs
            .iter()
            .map(|p| self.0.get(p).unwrap_or_else(|| panic!("unexpected pair {p:?}")).clone())
            .collect())
    }
}

fn record(case_id: u64, paraphrases: &[&str], neighbors: &[&str]) -> Record {
    Record {
        case_id,
        rewrite: Rewrite {
            prompt: "{} speaks".into(),
            subject: "Anna".into(),
            relation_id: None,
            target_new: "English".into(),
            target_new_id: None,
            target_true: "French".into(),
        },
        paraphrase_prompts: paraphrases.iter().map(|s| s.to_string()).collect(),
        neighborhood: neighbors
            .iter()
            .map(|p| Probe { prompt: p.to_string(), answer: "French".into() })
            .collect(),
        attribute_prompts: vec![],
        generation_prompts: vec![],
    }
}

fn value(rows: &[MetricRow], metric: Metric) -> f64 {
    rows.iter().find(|r| r.metric == metric).unwrap_or_else(|| panic!("no {metric:?}")).value
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-12, "{a} vs {b}");
}

#[test]
fn counterfact_metrics_by_hand() {
    let y = true;
    let n = false;
    let fake = Fake::new(&[
        // rewrite: P(new) = √(0.5·0.8) = 0.6325 (mean NLL of two tokens), P(true) = 0.3.
        ("Anna speaks", " English", &[0.5, 0.8], &[y, y]),
        ("Anna speaks", " French", &[0.3], &[n]),
        // paraphrase 1: new wins (0.4 vs 0.2), but its first token is not top-1.
        ("P1", " English", &[0.4, 0.4], &[n, y]),
        ("P1", " French", &[0.2], &[n]),
        // paraphrase 2: true wins (0.1 vs 0.7).
        ("P2", " English", &[0.1, 0.1], &[n, n]),
        ("P2", " French", &[0.7], &[y]),
        // neighbours: N1 keeps the truth (0.9 vs 0.05); N2 flipped (0.2 vs 0.6).
        ("N1", " English", &[0.05, 0.05], &[n, n]),
        ("N1", " French", &[0.9], &[y]),
        ("N2", " English", &[0.6, 0.6], &[y, y]),
        ("N2", " French", &[0.2], &[n]),
    ]);
    let rows =
        counterfact_rows(&fake, &[record(7, &["P1", "P2"], &["N1", "N2"])], Stage::Post).unwrap();
    assert!(rows.iter().all(|r| r.case_id == 7 && r.stage == Stage::Post));
    close(value(&rows, Metric::ES), 1.0);
    close(value(&rows, Metric::EM), (0.5f64 * 0.8).sqrt() - 0.3);
    close(value(&rows, Metric::EA), 1.0);
    close(value(&rows, Metric::PS), 0.5);
    close(value(&rows, Metric::PM), ((0.4 - 0.2) + (0.1 - 0.7)) / 2.0);
    close(value(&rows, Metric::PA), 0.0);
    close(value(&rows, Metric::NS), 0.5);
    close(value(&rows, Metric::NM), ((0.9 - 0.05) + (0.2 - 0.6)) / 2.0);
    close(value(&rows, Metric::NA), 0.5);
    assert_eq!(rows.len(), 9, "S is derived in the summary, not stored per record");
}

#[test]
fn zsre_token_accuracy_by_hand() {
    let mut r = record(3, &["Who does Anna speak to?"], &[]);
    r.rewrite.prompt = "What does {} speak?".into();
    r.neighborhood =
        vec![Probe { prompt: "nq question: who?".into(), answer: "Walter Sobchak".into() }];
    let fake = Fake::new(&[
        ("What does Anna speak?", " English", &[0.5, 0.5, 0.5], &[true, true, false]),
        ("Who does Anna speak to?", " English", &[0.5, 0.5, 0.5], &[false, true, false]),
        ("nq question: who?", " Walter Sobchak", &[0.5, 0.5], &[false, false]),
    ]);
    let rows = zsre_rows(&fake, &[r], Stage::Pre).unwrap();
    close(value(&rows, Metric::RewriteAcc), 2.0 / 3.0);
    close(value(&rows, Metric::ParaphraseAcc), 1.0 / 3.0);
    close(value(&rows, Metric::NeighborhoodAcc), 0.0);
}

#[test]
fn summary_means_standard_errors_and_score() {
    let row = |case_id, metric, value| MetricRow { case_id, stage: Stage::Post, metric, value };
    let rows = [
        row(1, Metric::ES, 1.0),
        row(2, Metric::ES, 0.0),
        row(3, Metric::ES, 1.0),
        row(4, Metric::ES, 1.0),
        row(1, Metric::PS, 0.5),
        row(2, Metric::PS, 0.5),
        row(3, Metric::PS, 0.5),
        row(4, Metric::PS, 0.5),
        row(1, Metric::NS, 0.2),
        row(2, Metric::NS, 0.4),
        row(3, Metric::NS, 0.6),
        row(4, Metric::NS, 0.8),
    ];
    let summary = summarize(&rows);
    let get = |m| *summary.iter().find(|s| s.metric == m).unwrap();
    close(get(Metric::ES).mean, 75.0);
    // sample sd of (1, 0, 1, 1) = 0.5; / √4 = 0.25 → 25 on the ×100 scale.
    close(get(Metric::ES).stderr.unwrap(), 25.0);
    close(get(Metric::PS).stderr.unwrap(), 0.0);
    close(get(Metric::NS).mean, 50.0);
    close(get(Metric::S).mean, 3.0 / (1.0 / 75.0 + 1.0 / 50.0 + 1.0 / 50.0));
    assert_eq!(get(Metric::S).stderr, None);
    assert_eq!(get(Metric::S).n, 4);
    assert!(summary.iter().all(|s| s.stage == Stage::Post));
    assert_eq!(Metric::from_code("neighborhood_acc"), Some(Metric::NeighborhoodAcc));
    assert_eq!(Metric::from_code("XX"), None);
}
