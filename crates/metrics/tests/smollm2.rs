//! The metrics on the real small model: the unedited SmolLM2's CounterFact scores against the
//! reference implementation's (measured once with the official code), and batched scoring equal
//! to scoring one record at a time. Needs `scripts/fetch_smollm2.sh`; the zsRE part needs the
//! shared data.

use std::path::{Path, PathBuf};

use editbench_datasets::shared::shared_data;
use editbench_datasets::{load, Dataset, DatasetKind, DatasetSource, Record};
use editbench_metrics::{counterfact_rows, summarize, zsre_rows, Metric, MetricRow, Stage};
use editbench_models::LanguageModel;

type Cpu = editbench_models::backend::Cpu;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn model() -> LanguageModel<Cpu> {
    let path = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/fetch_smollm2.sh", path.display());
    LanguageModel::load(&path, &Default::default()).unwrap()
}

fn dataset(kind: DatasetKind, path: PathBuf) -> Dataset {
    load(&DatasetSource { kind, path, format: None, sha256: None }).unwrap()
}

/// The first 256 CounterFact dev records, shipped with the project.
fn counterfact() -> Dataset {
    dataset(DatasetKind::Counterfact, root().join("data/counterfact/counterfact_dev_sample.json"))
}

fn sorted(mut rows: Vec<MetricRow>) -> Vec<MetricRow> {
    rows.sort_by_key(|r| (r.case_id, r.metric));
    rows
}

fn assert_same(batched: &[MetricRow], single: &[MetricRow]) {
    assert_eq!(batched.len(), single.len());
    for (a, b) in batched.iter().zip(single) {
        assert_eq!((a.case_id, a.metric), (b.case_id, b.metric));
        assert!((a.value - b.value).abs() < 1e-4, "{a:?} vs {b:?}");
    }
}

#[test]
fn unedited_counterfact_scores_match_the_reference() {
    let model = model();
    let records = &counterfact().records[..16];
    let summary = summarize(&counterfact_rows(&model, records, Stage::Pre).unwrap());
    let mean = |m: Metric| summary.iter().find(|s| s.metric == m).unwrap().mean;
    // The official code's "pre" row for the first 16 records, run on this model.
    let reference = [
        (Metric::ES, 50.0),
        (Metric::PS, 40.6),
        (Metric::NS, 54.4),
        (Metric::S, 47.6),
        (Metric::EM, -2.8),
        (Metric::PM, -6.7),
        (Metric::NM, 3.0),
        (Metric::EA, 0.0),
        (Metric::PA, 0.0),
        (Metric::NA, 1.2),
    ];
    for (metric, expected) in reference {
        eprintln!("{:>3}: {:6.2} (reference {expected})", metric.code(), mean(metric));
        assert!(
            (mean(metric) - expected).abs() < 0.1,
            "{}: {} vs reference {expected}",
            metric.code(),
            mean(metric)
        );
    }
}

#[test]
fn batched_scoring_equals_one_record_at_a_time() {
    let model = model();
    let one_by_one = |records: &[Record], f: &dyn Fn(&[Record]) -> Vec<MetricRow>| {
        sorted(records.chunks(1).flat_map(f).collect())
    };
    let cf = &counterfact().records[..4];
    let score_cf = |r: &[Record]| counterfact_rows(&model, r, Stage::Pre).unwrap();
    assert_same(&sorted(score_cf(cf)), &one_by_one(cf, &score_cf));
    let Some(path) = shared_data(&root(), "zsre/zsre_mend_train_1k.json") else { return };
    let zsre = &dataset(DatasetKind::Zsre, path).records[..4];
    let score_zsre = |r: &[Record]| zsre_rows(&model, r, Stage::Pre).unwrap();
    let batched = sorted(score_zsre(zsre));
    assert_eq!(batched.len(), 12);
    assert_same(&batched, &one_by_one(zsre, &score_zsre));
}
