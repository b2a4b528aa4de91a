//! The downstream task files: prompts on hand-made items, and broken files.

use std::path::PathBuf;

use editbench_datasets::downstream::{load_task, Task, SHOT_POOL};

/// A task file of `n` items made by `item(i)`.
fn task_file(n: usize, item: impl Fn(usize) -> String) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("task.json");
    let items: Vec<String> = (0..n).map(item).collect();
    std::fs::write(&path, format!("[{}]", items.join(","))).unwrap();
    (dir, path)
}

fn sst2(i: usize) -> String {
    format!(r#"{{"sentence": "s{i}", "label": {}, "idx": {i}}}"#, i % 2)
}

#[test]
fn few_shot_examples_come_from_the_pool_and_questions_after_it() {
    let (_dir, path) = task_file(SHOT_POOL + 3, sst2);
    let set = load_task(Task::Sst2, &path, 2, 3).unwrap();
    assert_eq!(set.items.len(), 3);
    let context = "Review : s0\nSentiment : negative\nReview : s1\nSentiment : positive\n";
    assert_eq!(set.items[0].prompt, format!("{context}Review :s10\nSentiment :"));
    assert_eq!(set.items.iter().map(|i| i.label).collect::<Vec<_>>(), [0, 1, 0]);
}

#[test]
fn multiple_choice_and_string_labels() {
    let item = |i: usize| {
        format!(
            r#"{{"question": "q{i}", "subject": "x", "choices": ["a", "b", "c", "d"], "answer": {}}}"#,
            i % 4
        )
    };
    let (_dir, path) = task_file(SHOT_POOL + 1, item);
    let set = load_task(Task::Mmlu, &path, 1, 1).unwrap();
    let choices = "(A) a\n(B) b\n(C) c\n(D) d\n";
    let expected = format!("Question: q0\n{choices}Answer: A\nQuestion: q10\n{choices}Answer:");
    assert_eq!(set.items[0].prompt, expected);
    assert_eq!(set.items[0].label, 2);
    let item = |i: usize| {
        let label = ["entailment", "not_entailment"][i % 2];
        format!(r#"{{"index": "{i}", "sentence1": "a", "sentence2": "b", "label": "{label}"}}"#)
    };
    let (_dir, path) = task_file(SHOT_POOL + 2, item);
    let labels: Vec<usize> =
        load_task(Task::Nli, &path, 0, 2).unwrap().items.iter().map(|i| i.label).collect();
    assert_eq!(labels, [1, 0]);
}

#[test]
fn broken_task_files_name_the_file_the_item_and_the_field() {
    let (_dir, path) = task_file(SHOT_POOL + 2, sst2);
    let err = load_task(Task::Sst2, &path, 3, 5).unwrap_err().to_string();
    assert!(err.contains("task.json") && err.contains("n is 5") && err.contains("2 test"), "{err}");
    let err = load_task(Task::Sst2, &path, 11, 1).unwrap_err().to_string();
    assert!(err.contains("few_shot is 11"), "{err}");
    let (_dir, path) = task_file(SHOT_POOL + 2, |i| {
        if i == 11 {
            r#"{"sentence": "s", "label": 7}"#.into()
        } else {
            sst2(i)
        }
    });
    let err = load_task(Task::Sst2, &path, 0, 2).unwrap_err().to_string();
    assert!(err.contains("record 11") && err.contains("unknown label 7"), "{err}");
    let (_dir, path) = task_file(SHOT_POOL + 1, |_| r#"{"label": 1}"#.into());
    let err = load_task(Task::Sst2, &path, 0, 1).unwrap_err().to_string();
    assert!(err.contains("missing field `sentence`"), "{err}");
    let (_dir, path) =
        task_file(SHOT_POOL + 1, |_| r#"{"question": "q", "choices": ["a"], "answer": 0}"#.into());
    let err = load_task(Task::Mmlu, &path, 0, 1).unwrap_err().to_string();
    assert!(err.contains("`choices` must be a list of 4 strings"), "{err}");
}
