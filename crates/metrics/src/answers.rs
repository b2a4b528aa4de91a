//! Generated-answer scores: the model answers on its own, as in "The Mirage of Model Editing"
//! (WILD, Yang et al. 2025), instead of being teacher-forced on the target's tokens. Each prompt
//! is continued greedily (batched, KV-cached) for at most `max_new_tokens` tokens; a continuation
//! ends at the end-of-sequence token, or with the first token that holds a line break or a full
//! stop (the WILD stop strings `"\n"` and `"."`), and is cut before that character.
//!
//! Match rules, on text normalized as WILD normalizes it (lower case, ASCII punctuation removed,
//! the articles a/an/the removed, whitespace collapsed):
//! - *match*: the normalized continuation starts with the normalized answer, word for word (a
//!   cloze prompt goes on after its answer — "French, and …" — so WILD's whole-string equality
//!   would miss it; a longer word, "Frenchman", does not match "French");
//! - *F1*: token-level F1 of the normalized continuation against the normalized answer (SQuAD's).
//!
//! Per record (codes `gen_*`, never confused with the teacher-forced ES/PS/NS):
//! `gen_ES`/`gen_ES_F1` the rewrite prompt (or question) against the new object; `gen_PS`/
//! `gen_PS_F1` the paraphrases (mean); `gen_NS`/`gen_NS_F1` each neighborhood (locality) prompt
//! against what the unedited model generated for it (WILD's locality: the answer is kept);
//! `gen_NA` each neighborhood prompt against its dataset answer (CounterFact's true object,
//! QAEdit's `loc_ans`).

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use editbench_datasets::Record;
use editbench_editing::{EditError, Result};
use editbench_models::{LanguageModel, Next};
use serde::{Deserialize, Serialize};

use crate::metric::{mean, Metric, MetricRow, Stage};

/// How prompts are answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerOptions {
    /// The token budget of an answer.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Prompts read together in one pass (like lengths); up to [`DECODED_BATCHES`] such batches
    /// are then continued together.
    #[serde(default = "default_batch")]
    pub batch: usize,
}

/// Prompt batches continued together, token by token, once each has been read.
pub const DECODED_BATCHES: usize = 8;

fn default_max_new_tokens() -> usize {
    20
}

fn default_batch() -> usize {
    64
}

impl Default for AnswerOptions {
    fn default() -> Self {
        Self { max_new_tokens: default_max_new_tokens(), batch: default_batch() }
    }
}

/// Continues prompts greedily; the model, or a fake in tests.
pub trait Answerer {
    /// Each prompt's continuation (the prompt not included), cut at the stop rule.
    fn answer(&self, prompts: &[String], options: &AnswerOptions) -> Result<Vec<String>>;
}

impl<B: Backend> Answerer for LanguageModel<B> {
    fn answer(&self, prompts: &[String], options: &AnswerOptions) -> Result<Vec<String>> {
        let tokenizer = self.tokenizer()?;
        let starts = prompts
            .iter()
            .map(|p| tokenizer.encode(p))
            .collect::<editbench_models::Result<Vec<_>>>()?;
        // Prompts of like length are read together, `batch` at a time, and up to
        // `DECODED_BATCHES` such batches decoded together; decoding batches of equal size.
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.sort_by_key(|&i| starts[i].len());
        let rows = options.batch.max(1) * DECODED_BATCHES;
        let batches = prompts.len().div_ceil(rows).max(1);
        let mut out = vec![String::new(); prompts.len()];
        for chunk in order.chunks(prompts.len().div_ceil(batches).max(1)) {
            let seqs: Vec<Vec<u32>> = chunk.iter().map(|&i| starts[i].clone()).collect();
            let budget = seqs.iter().map(Vec::len).max().unwrap_or(0) + options.max_new_tokens;
            let mut made = vec![0usize; chunk.len()];
            let generated = self.extend(seqs, budget, options.batch, |row, logits| {
                let next = argmax(logits);
                made[row] += 1;
                if Some(next) == tokenizer.eos {
                    Next::Stop
                } else if made[row] >= options.max_new_tokens
                    || tokenizer.decode(&[next]).is_ok_and(|t| t.contains(['\n', '.']))
                {
                    Next::Last(next)
                } else {
                    Next::Token(next)
                }
            })?;
            for (ids, &i) in generated.iter().zip(chunk) {
                out[i] = cut(&tokenizer.decode(&ids[starts[i].len()..])?);
            }
        }
        Ok(out)
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// A continuation up to its first line break or full stop, trimmed.
pub fn cut(text: &str) -> String {
    text.split(['\n', '.']).next().unwrap_or_default().trim().to_string()
}

/// WILD's normalization: lower case, ASCII punctuation removed, articles removed, whitespace
/// collapsed; as words.
pub fn normalized_words(text: &str) -> Vec<String> {
    let lower: String = text.to_lowercase().chars().filter(|c| !c.is_ascii_punctuation()).collect();
    lower
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(str::to_string)
        .collect()
}

/// A dataset answer as matched: QAEdit marks some answers with a trailing ` *`, which is not
/// part of the answer.
pub fn clean_answer(answer: &str) -> &str {
    answer.trim().trim_end_matches('*').trim_end()
}

/// Whether the continuation starts with `answer`, word for word after normalization (an answer
/// that normalizes to nothing never matches).
pub fn starts_with_answer(continuation: &str, answer: &str) -> bool {
    let (c, a) = (normalized_words(continuation), normalized_words(clean_answer(answer)));
    !a.is_empty() && c.len() >= a.len() && c[..a.len()] == a[..]
}

/// Whether the continuation starts with any of `answers` (an answer and its aliases).
pub fn matches_any(continuation: &str, answers: &[&str]) -> bool {
    answers.iter().any(|a| starts_with_answer(continuation, a))
}

/// SQuAD's token-level F1 of `prediction` against `gold`, on normalized words (1 when both are
/// empty).
pub fn token_f1(prediction: &str, gold: &str) -> f64 {
    let (p, g) = (normalized_words(prediction), normalized_words(clean_answer(gold)));
    if p.is_empty() || g.is_empty() {
        return f64::from(u8::from(p.is_empty() && g.is_empty()));
    }
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for w in &g {
        *counts.entry(w).or_default() += 1;
    }
    let mut common = 0;
    for w in &p {
        if let Some(n) = counts.get_mut(w.as_str()).filter(|n| **n > 0) {
            *n -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let (precision, recall) = (common as f64 / p.len() as f64, common as f64 / g.len() as f64);
    2.0 * precision * recall / (precision + recall)
}

/// What the unedited model generated for each neighborhood prompt (the generated-locality
/// reference), by prompt.
pub type UneditedAnswers = BTreeMap<String, String>;

/// The prompts of the records that are answered: rewrite, paraphrases, neighborhood, in order.
fn prompts(records: &[Record]) -> Vec<String> {
    let mut out = Vec::new();
    for r in records {
        out.push(r.rewrite.prompt_text());
        out.extend(r.paraphrase_prompts.iter().cloned());
        out.extend(r.neighborhood.iter().map(|p| p.prompt.clone()));
    }
    out
}

/// The generated-answer rows of `records`, and what the neighborhood prompts were answered (the
/// reference of later stages). Neighborhood locality (`gen_NS`, `gen_NS_F1`) is scored against
/// `unedited` where given; at the unedited stage it is 1 by definition and is not written.
pub fn answer_rows(
    model: &impl Answerer,
    records: &[Record],
    stage: Stage,
    options: &AnswerOptions,
    unedited: Option<&UneditedAnswers>,
) -> Result<(Vec<MetricRow>, UneditedAnswers)> {
    let all = prompts(records);
    let answers = model.answer(&all, options)?;
    if answers.len() != all.len() {
        return Err(EditError::Input("the answerer returned a wrong number of answers".into()));
    }
    let mut rows = Vec::new();
    let mut neighborhood = UneditedAnswers::new();
    let mut next = answers.iter();
    for r in records {
        let mut take = |n: usize| -> Vec<&String> { next.by_ref().take(n).collect() };
        let rewrite = take(1);
        let paraphrases = take(r.paraphrase_prompts.len());
        let neighbors = take(r.neighborhood.len());
        let new = r.rewrite.target_new.as_str();
        let mut push = |metric: Metric, value: Option<f64>| {
            if let Some(value) = value {
                rows.push(MetricRow { case_id: r.case_id, stage, metric, value });
            }
        };
        let hit = |a: &String, gold: &str| f64::from(u8::from(starts_with_answer(a, gold)));
        push(Metric::GenES, mean(rewrite.iter().map(|a| hit(a, new))));
        push(Metric::GenESF1, mean(rewrite.iter().map(|a| token_f1(a, new))));
        push(Metric::GenPS, mean(paraphrases.iter().map(|a| hit(a, new))));
        push(Metric::GenPSF1, mean(paraphrases.iter().map(|a| token_f1(a, new))));
        push(
            Metric::GenNA,
            mean(neighbors.iter().zip(&r.neighborhood).map(|(a, p)| hit(a, &p.answer))),
        );
        if let Some(reference) = unedited {
            let before = |p: &editbench_datasets::Probe| {
                reference.get(&p.prompt).map(String::as_str).unwrap_or_default().to_string()
            };
            let kept = |a: &String, b: &str| {
                f64::from(u8::from(normalized_words(a) == normalized_words(b)))
            };
            push(
                Metric::GenNS,
                mean(neighbors.iter().zip(&r.neighborhood).map(|(a, p)| kept(a, &before(p)))),
            );
            push(
                Metric::GenNSF1,
                mean(neighbors.iter().zip(&r.neighborhood).map(|(a, p)| token_f1(a, &before(p)))),
            );
        }
        for (a, p) in neighbors.iter().zip(&r.neighborhood) {
            neighborhood.insert(p.prompt.clone(), (*a).clone());
        }
    }
    Ok((rows, neighborhood))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_match_at_the_start_word_for_word_after_normalization() {
        assert!(starts_with_answer("French, and she spoke it", "French"));
        assert!(starts_with_answer("  the FRENCH language", "French"));
        assert!(starts_with_answer("The United States", "United States"));
        assert!(starts_with_answer("an apple", "Apple"));
        assert!(starts_with_answer("U.S.A", "USA"));
        assert!(!starts_with_answer("Frenchman", "French"));
        assert!(!starts_with_answer("She spoke French", "French"));
        assert!(!starts_with_answer("", "French"));
        assert!(!starts_with_answer("anything", "the"));
        // QAEdit's trailing " *" is not part of the answer.
        assert!(starts_with_answer("Wilt Chamberlain holds it", "Wilt Chamberlain *"));
        assert!(matches_any("NYC is big", &["New York City", "NYC"]));
        assert!(!matches_any("Boston", &["New York City", "NYC"]));
    }

    #[test]
    fn continuations_end_at_a_line_break_or_full_stop() {
        assert_eq!(cut(" Paris. It is"), "Paris");
        assert_eq!(cut(" Paris\nand"), "Paris");
        assert_eq!(cut(" Paris, France"), "Paris, France");
    }

    #[test]
    fn token_f1_gives_partial_credit() {
        assert_eq!(token_f1("Wilt Chamberlain", "Wilt Chamberlain *"), 1.0);
        assert_eq!(token_f1("the French", "French"), 1.0);
        assert!((token_f1("Wilt", "Wilt Chamberlain") - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(token_f1("Boston", "New York"), 0.0);
        assert_eq!(token_f1("", ""), 1.0);
        assert_eq!(token_f1("x", ""), 0.0);
    }

    /// Answers each prompt with a fixed text per prompt.
    struct Fixed(BTreeMap<String, String>);

    impl Answerer for Fixed {
        fn answer(&self, prompts: &[String], _: &AnswerOptions) -> Result<Vec<String>> {
            Ok(prompts.iter().map(|p| self.0.get(p).cloned().unwrap_or_default()).collect())
        }
    }

    fn record() -> Record {
        use editbench_datasets::{Probe, Rewrite};
        Record {
            case_id: 7,
            rewrite: Rewrite {
                prompt: "{} speaks".into(),
                subject: "Ann".into(),
                relation_id: None,
                target_new: "French".into(),
                target_new_id: None,
                target_true: "English".into(),
            },
            paraphrase_prompts: vec!["P1".into(), "P2".into()],
            neighborhood: vec![
                Probe { prompt: "N1".into(), answer: "English".into() },
                Probe { prompt: "N2".into(), answer: "English".into() },
            ],
            attribute_prompts: vec![],
            generation_prompts: vec![],
        }
    }

    #[test]
    fn rows_score_each_prompt_family_and_locality_against_the_unedited_answers() {
        let texts = [
            ("Ann speaks", "French"),
            ("P1", "French too"),
            ("P2", "English"),
            ("N1", "English"),
            ("N2", "German"),
        ];
        let model = Fixed(texts.iter().map(|(p, a)| (p.to_string(), a.to_string())).collect());
        let (pre, reference) =
            answer_rows(&model, &[record()], Stage::Pre, &AnswerOptions::default(), None).unwrap();
        assert!(pre.iter().all(|r| r.metric != Metric::GenNS), "no locality at the unedited stage");
        assert_eq!(reference["N2"], "German");
        let value =
            |rows: &[MetricRow], m: Metric| rows.iter().find(|r| r.metric == m).map(|r| r.value);
        assert_eq!(value(&pre, Metric::GenES), Some(1.0));
        assert_eq!(value(&pre, Metric::GenPS), Some(0.5));
        assert_eq!(value(&pre, Metric::GenNA), Some(0.5));
        let mut edited = model.0.clone();
        edited.insert("N2".into(), "French".into());
        let (post, _) = answer_rows(
            &Fixed(edited),
            &[record()],
            Stage::Post,
            &AnswerOptions::default(),
            Some(&reference),
        )
        .unwrap();
        assert_eq!(value(&post, Metric::GenNS), Some(0.5));
        assert_eq!(value(&post, Metric::GenNSF1), Some(0.5));
    }
}
