//! Downstream abilities (algo §8.3): each test item of a task is answered by the label word with
//! the lowest mean token NLL after its few-shot prompt (`" " + word`, teacher-forced), as the
//! official code's `*_eval.py` pick their `answer_new`; scored by accuracy, F1 weighted by class
//! support (scikit-learn's `average='weighted'`) and Matthews' correlation coefficient (its
//! multi-class form, which is the usual MCC for two classes).

use editbench_datasets::downstream::{Task, TaskSet};
use editbench_editing::Result;
use serde::{Deserialize, Serialize};

use crate::metric::Scorer;

/// What a model scored on one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    pub task: Task,
    pub few_shot: usize,
    pub n: usize,
    pub accuracy: f64,
    pub f1: f64,
    pub mcc: f64,
    /// Accuracy of a uniform guess among the label words.
    pub chance: f64,
    /// Each item's label, and its predicted label (`None`: no unique best word, counted wrong).
    pub labels: Vec<usize>,
    pub predictions: Vec<Option<usize>>,
}

/// Scores `set` on the model behind `scorer`: every item's label words in one batch.
pub fn task_score(scorer: &impl Scorer, set: &TaskSet) -> Result<TaskScore> {
    let words = set.task.label_words();
    let pairs: Vec<(String, String)> = set
        .items
        .iter()
        .flat_map(|item| words.iter().map(|w| (item.prompt.clone(), format!(" {w}"))))
        .collect();
    let scored = scorer.score(&pairs)?;
    let predictions: Vec<Option<usize>> = scored
        .chunks(words.len())
        .map(|c| predict(&c.iter().map(|c| c.mean_nll()).collect::<Vec<_>>()))
        .collect();
    let labels: Vec<usize> = set.items.iter().map(|i| i.label).collect();
    let n = labels.len();
    let correct = labels.iter().zip(&predictions).filter(|(l, p)| Some(**l) == **p).count();
    Ok(TaskScore {
        task: set.task,
        few_shot: set.few_shot,
        n,
        accuracy: correct as f64 / n.max(1) as f64,
        f1: weighted_f1(&labels, &predictions, words.len()),
        mcc: mcc(&labels, &predictions, words.len()),
        chance: set.task.chance(),
        labels,
        predictions,
    })
}

/// The label whose word has the strictly lowest NLL. On a tie the official code answers label 0
/// for two words (`1 if p1 > p0 else 0`) and nothing for more.
pub fn predict(nll: &[f64]) -> Option<usize> {
    let best = nll.iter().copied().fold(f64::INFINITY, f64::min);
    let at: Vec<usize> = (0..nll.len()).filter(|&i| nll[i] == best).collect();
    match at.as_slice() {
        [one] => Some(*one),
        _ if nll.len() == 2 => Some(0),
        _ => None,
    }
}

/// `[true][predicted]` counts over `k` labels; a missing prediction is column `k`.
fn confusion(labels: &[usize], predictions: &[Option<usize>], k: usize) -> Vec<Vec<f64>> {
    let mut c = vec![vec![0.0; k + 1]; k + 1];
    for (&l, p) in labels.iter().zip(predictions) {
        c[l][p.unwrap_or(k)] += 1.0;
    }
    c
}

/// F1 of each label weighted by its share of the true labels.
pub fn weighted_f1(labels: &[usize], predictions: &[Option<usize>], k: usize) -> f64 {
    let c = confusion(labels, predictions, k);
    let n = labels.len() as f64;
    (0..k)
        .map(|i| {
            let support: f64 = c[i].iter().sum();
            let predicted: f64 = c.iter().map(|row| row[i]).sum();
            let f1 =
                if support + predicted > 0.0 { 2.0 * c[i][i] / (support + predicted) } else { 0.0 };
            f1 * support / n.max(1.0)
        })
        .sum()
}

/// Matthews' correlation coefficient over `k` labels (0 when it is undefined).
pub fn mcc(labels: &[usize], predictions: &[Option<usize>], k: usize) -> f64 {
    let c = confusion(labels, predictions, k);
    let s = labels.len() as f64;
    let correct: f64 = (0..=k).map(|i| c[i][i]).sum();
    let t: Vec<f64> = c.iter().map(|row| row.iter().sum()).collect();
    let p: Vec<f64> = (0..=k).map(|j| c.iter().map(|row| row[j]).sum()).collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let denominator = ((s * s - dot(&p, &p)) * (s * s - dot(&t, &t))).sqrt();
    if denominator == 0.0 {
        0.0
    } else {
        (correct * s - dot(&p, &t)) / denominator
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prediction_is_the_strictly_best_word_and_ties_follow_the_official_code() {
        assert_eq!(predict(&[0.5, 0.2]), Some(1));
        assert_eq!(predict(&[0.3, 0.3]), Some(0));
        assert_eq!(predict(&[0.9, 0.1, 0.4, 0.7]), Some(1));
        assert_eq!(predict(&[0.1, 0.1, 0.4, 0.7]), None);
    }

    /// Values from scikit-learn 1.9.1: `f1_score(y, p, average='weighted')`, `matthews_corrcoef`
    /// (a missing prediction given to it as label −1).
    #[test]
    fn f1_and_mcc_equal_scikit_learn() {
        let y = [1, 1, 0, 0, 1, 0, 1, 1];
        let p = [1, 0, 0, 1, 1, 0, 1, 1].map(Some);
        assert!((weighted_f1(&y, &p, 2) - 0.75).abs() < 1e-12);
        assert!((mcc(&y, &p, 2) - 0.4666666666666667).abs() < 1e-12);
        let y = [0, 1, 2, 3, 2, 2, 1, 0, 3];
        let p = [0, 2, 2, 3, 1, 2, 1, 0, 0].map(Some);
        assert!((weighted_f1(&y, &p, 4) - 0.6592592592592592).abs() < 1e-12);
        assert!((mcc(&y, &p, 4) - 0.5594023904871686).abs() < 1e-12);
    }

    #[test]
    fn one_predicted_class_has_zero_mcc_and_a_missing_prediction_is_its_own_class() {
        let y = [0, 1, 1, 0];
        assert_eq!(mcc(&y, &[Some(1); 4], 2), 0.0);
        let p = [Some(0), Some(1), None, Some(0)];
        assert!((weighted_f1(&y, &p, 2) - 0.8333333333333333).abs() < 1e-12);
        assert!((mcc(&y, &p, 2) - 0.6708203932499369).abs() < 1e-12);
    }
}
