//! The loaders on the project's data files and on broken ones.

use std::path::{Path, PathBuf};

use editbench_datasets::shared::shared_data;
use editbench_datasets::{
    consistency, load, DataError, DatasetKind, DatasetSource, Format, Selection,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A file of the shared data; `None` (the test recorded as skipped) without it.
fn shared(rel: &str) -> Option<PathBuf> {
    shared_data(&root(), rel)
}

/// The first 256 CounterFact dev records, shipped with the project.
fn dev_sample() -> PathBuf {
    root().join("data/counterfact/counterfact_dev_sample.json")
}

fn source(kind: DatasetKind, path: PathBuf) -> DatasetSource {
    DatasetSource { kind, path, format: None, sha256: None }
}

fn broken(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.json");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn error(kind: DatasetKind, text: &str) -> String {
    let (_dir, path) = broken(text);
    let err = load(&source(kind, path)).unwrap_err();
    assert!(matches!(err, DataError::Record { .. } | DataError::File { .. }));
    err.to_string()
}

#[test]
fn counterfact_dev_in_rome_format() {
    let Some(path) = shared("counterfact/counterfact_dev.json") else { return };
    let data = load(&source(DatasetKind::Counterfact, path)).unwrap();
    assert_eq!(data.records.len(), 2191);
    assert_eq!(data.sha256, "73ae24aca529de3d6c72841095d6e140b84d3d7e35618f7406979182479b38df");
    let first = &data.records[0];
    assert_eq!(first.case_id, 13);
    assert_eq!(first.rewrite.prompt_text(), "Ferrari F40, developed by");
    assert_eq!(
        (first.rewrite.target_new.as_str(), first.rewrite.target_true.as_str()),
        ("Microsoft", "Ferrari")
    );
    assert_eq!(first.rewrite.relation_id.as_deref(), Some("P176"));
    assert_eq!(
        (first.paraphrase_prompts.len(), first.neighborhood.len(), first.generation_prompts.len()),
        (2, 10, 10)
    );
    assert!(first.neighborhood.iter().all(|p| p.answer == "Ferrari"));
}

#[test]
fn counterfact_in_easyedit_format() {
    let Some(path) = shared("counterfact/counterfact_easyedit.json") else { return };
    let data = load(&source(DatasetKind::Counterfact, path)).unwrap();
    assert_eq!(data.records.len(), 20817);
    let first = &data.records[0];
    assert_eq!(first.case_id, 1);
    assert_eq!(first.rewrite.prompt, "The official religion of {} is");
    assert_eq!(first.rewrite.subject, "Edwin of Northumbria");
    assert_eq!(first.neighborhood[0].prompt, "The official religion of Paul is");
    assert_eq!(first.neighborhood[0].answer, "Christianity");
    assert_eq!(first.paraphrase_prompts.len(), 1);
}

#[test]
fn zsre_in_mend_format() {
    let Some(path) = shared("zsre/zsre_mend_train_1k.json") else { return };
    let data = load(&source(DatasetKind::Zsre, path)).unwrap();
    assert_eq!(data.records.len(), 1000);
    let first = &data.records[0];
    assert_eq!(first.case_id, 0);
    assert_eq!(first.rewrite.prompt, "What is the product made by {}?");
    assert_eq!(first.rewrite.target_new, "uniform");
    assert_eq!(first.paraphrase_prompts, ["What will be the product of UniFirst?"]);
    assert_eq!(
        first.neighborhood[0].prompt,
        "nq question: john goodman's character in the big lebowski?"
    );
    assert_eq!(first.neighborhood[0].answer, "Walter Sobchak");
}

#[test]
fn mend_records_must_be_zsre() {
    let (_dir, path) = broken(
        r#"[{"subject": "A", "src": "Who is A?", "answers": ["b"], "rephrase": "r", "loc": "l", "loc_ans": "x"}]"#,
    );
    let err = load(&source(DatasetKind::Counterfact, path)).unwrap_err().to_string();
    assert!(err.contains("MEND-format records are zsRE"), "{err}");
}

#[test]
fn broken_files_name_the_record_and_field() {
    let rewrite = r#""requested_rewrite": {"prompt": "{} is in", "subject": "X", "target_new": {"str": "A"}, "target_true": {"str": "B"}}"#;
    let good = format!(
        r#"{{"case_id": 7, {rewrite}, "paraphrase_prompts": [], "neighborhood_prompts": []}}"#
    );
    let cases = [
        (format!("[{good}, {{\"case_id\": 8}}]"), "record 1 (case_id 8): missing field `requested_rewrite.subject`"),
        (format!("[{good}, {}]", good.replace(r#""str": "A""#, r#""str": 3"#)), "record 1 (case_id 7): field `requested_rewrite.target_new.str` must be a string, found 3"),
        (format!("[{}]", good.replace(r#""subject": "X""#, r#""subject": "Y""#).replace("{} is in", "Z is in")), "record 0 (case_id 7): subject `Y` does not occur in `requested_rewrite.prompt`"),
        (format!("[{}]", good.replace(r#""paraphrase_prompts": []"#, r#""paraphrase_prompts": [1]"#)), "field `paraphrase_prompts` must be a list of strings, found 1"),
        (format!("[{}]", good.replace(r#""str": "B""#, r#""str": " ""#)), "field `requested_rewrite.target_true.str` is empty"),
        (format!("[{good}"), "not a JSON array of records: EOF while parsing a list at line 1"),
        ("{}".to_string(), "not a JSON array of records"),
        (r#"[{"foo": 1}]"#.to_string(), "cannot tell the format"),
    ];
    for (text, expected) in cases {
        let err = error(DatasetKind::Counterfact, &text);
        assert!(err.contains(expected), "expected `{expected}` in `{err}`");
    }
    let zsre = r#"[{"subject": "A", "src": "Who is A?", "answers": [], "rephrase": "r", "loc": "l", "loc_ans": "x"}]"#;
    assert!(error(DatasetKind::Zsre, zsre)
        .contains("record 0: field `answers` must hold a non-empty first answer"));
}

#[test]
fn a_given_sha256_must_match() {
    let mut src = source(DatasetKind::Counterfact, dev_sample());
    src.sha256 = Some("00".repeat(32));
    let err = load(&src).unwrap_err().to_string();
    assert!(err.contains("sha256 is de879f25"), "{err}");
    src.sha256 = Some("de879f2503026a94f26f525d387b7de33be9b762796515e199455db8d6aead15".into());
    src.format = Some(Format::Rome);
    assert_eq!(load(&src).unwrap().records.len(), 256);
}

#[test]
fn selections() {
    let records = load(&source(DatasetKind::Counterfact, dev_sample())).unwrap().records;
    let ids =
        |s: &Selection| s.apply(&records).unwrap().iter().map(|r| r.case_id).collect::<Vec<_>>();
    assert_eq!(ids(&Selection::First(3)), [13, 18, 37]);
    assert_eq!(ids(&Selection::Ids(vec![37, 13])), [37, 13]);
    let sample = ids(&Selection::Sample { n: 50, seed: 1 });
    assert_eq!(sample, ids(&Selection::Sample { n: 50, seed: 1 }));
    assert_ne!(sample, ids(&Selection::Sample { n: 50, seed: 2 }));
    let mut unique = sample.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 50);
    assert_eq!(ids(&Selection::All).len(), 256);
    assert!(Selection::First(3000)
        .apply(&records)
        .unwrap_err()
        .to_string()
        .contains("3000 records requested but the dataset has 256"));
    assert!(Selection::Ids(vec![13, 14])
        .apply(&records)
        .unwrap_err()
        .to_string()
        .contains("case ids not in the dataset: 14"));
}

#[test]
fn selections_read_from_their_file_forms() {
    let parse = |text: &str| serde_json::from_str::<Selection>(text).map_err(|e| e.to_string());
    assert_eq!(parse(r#""all""#).unwrap(), Selection::All);
    assert_eq!(parse(r#"{"first": 16}"#).unwrap(), Selection::First(16));
    assert_eq!(
        parse(r#"{"sample": {"n": 5, "seed": 37}}"#).unwrap(),
        Selection::Sample { n: 5, seed: 37 }
    );
    assert_eq!(parse(r#"{"ids": [13, 18]}"#).unwrap(), Selection::Ids(vec![13, 18]));
    for bad in [
        r#""some""#,
        r#"{"first": -1}"#,
        r#"{"sample": {"n": 5}}"#,
        r#"{"sample": {"n": 5, "seed": 1, "x": 2}}"#,
        r#"{"first": 1, "ids": []}"#,
    ] {
        assert!(parse(bad).unwrap_err().contains("selection must be `all`, {first: N}"), "{bad}");
    }
    let round_trip = serde_json::to_string(&Selection::Sample { n: 5, seed: 37 }).unwrap();
    assert_eq!(round_trip, r#"{"sample":{"n":5,"seed":37}}"#);
}

#[test]
fn the_dev_split_has_real_duplicates_and_conflicts() {
    let Some(path) = shared("counterfact/counterfact_dev.json") else { return };
    let records = load(&source(DatasetKind::Counterfact, path)).unwrap().records;
    // 11 (subject, relation) pairs asked for two or three objects, and one fact asked twice
    // through different prompts.
    let dev = consistency(&records);
    assert!(dev.duplicate_case_ids.is_empty());
    assert_eq!(dev.duplicate_edits, [vec![14709, 18747]]);
    assert_eq!(dev.conflicts.len(), 11);
    assert!(dev.conflicts.contains(&vec![70, 6698]));
}

#[test]
fn duplicates_and_conflicts_are_reported() {
    let records = load(&source(DatasetKind::Counterfact, dev_sample())).unwrap().records;
    assert!(consistency(&records[..3]).is_clean());
    let mut edited = records[..3].to_vec();
    let mut conflict = edited[0].clone();
    conflict.case_id = 1000;
    conflict.rewrite.target_new = "Apple".into();
    edited.push(conflict);
    edited.push(edited[1].clone());
    let report = consistency(&edited);
    assert_eq!(report.duplicate_case_ids, [18]);
    assert_eq!(report.duplicate_edits, [vec![18, 18]]);
    assert_eq!(report.conflicts, [vec![1000, 13]]);
    assert_eq!(report.describe().len(), 3);
}

/// QAEdit's records (the 16 shipped with the project): keyed by their place in the file, the
/// question is the prompt, the trailing
/// ` *` of an answer is dropped, every locality pair is a neighborhood probe.
#[test]
fn qaedit_records() {
    let path = root().join("data/qaedit/QAEdit_inter_first16.json");
    let data = load(&source(DatasetKind::Qaedit, path)).unwrap();
    assert_eq!(data.records.len(), 16);
    let first = &data.records[0];
    assert_eq!(first.case_id, 0, "keyed by place: QAEdit's ids repeat");
    assert_eq!(first.rewrite.prompt, "who has the {}?");
    assert_eq!(first.rewrite.prompt_text(), "who has the most 70 point games in nba history?");
    assert_eq!(first.rewrite.target_new, "Wilt Chamberlain");
    assert_eq!(
        first.paraphrase_prompts,
        ["Which NBA player holds the record for the most games scoring 70 points or more?"]
    );
    assert_eq!(first.neighborhood.len(), 5);
    assert_eq!(
        (first.neighborhood[3].prompt.as_str(), first.neighborhood[3].answer.as_str()),
        ("when did the us host the world cup", "1994")
    );
    assert!(data
        .records
        .iter()
        .all(|r| r.neighborhood.len() == 5 && !r.rewrite.target_new.ends_with('*')));
    let err = error(
        DatasetKind::Qaedit,
        r#"[{"id": 1, "prompt": "who is x?", "target": "y", "subject": "x", "rephrase": "r", "locality": [{"loc": "q"}]}]"#,
    );
    assert!(err.contains("locality[0]: missing field `loc_ans`"), "{err}");
}
