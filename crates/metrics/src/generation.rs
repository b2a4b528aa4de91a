//! CounterFact's generation tests (algo §8.1): each generation prompt is continued by seeded top-5
//! sampling to 100 tokens (prompt included); GE is the n-gram entropy of the texts (prompt
//! included, as ROME/MEMIT compute it), RS their TF-IDF similarity to texts about the new object.

use std::collections::HashMap;

use burn::tensor::backend::Backend;
use editbench_datasets::rng::SplitMix64;
use editbench_datasets::Record;
use editbench_editing::sampling::sample_top_k;
use editbench_editing::Result;
use editbench_models::LanguageModel;
use indicatif::{ProgressBar, ProgressStyle};

use crate::metric::{mean, Metric, MetricRow, Stage};
use crate::reference::TfIdf;

/// Samples continuations; the model, or a fake in tests.
pub trait Generator {
    /// Each prompt continued to `max_len` tokens in total, prompt included; prompt `i` draws
    /// from a generator seeded with `seeds[i]`.
    fn sample(&self, prompts: &[String], max_len: usize, seeds: &[u64]) -> Result<Vec<String>>;
}

impl<B: Backend> Generator for LanguageModel<B> {
    fn sample(&self, prompts: &[String], max_len: usize, seeds: &[u64]) -> Result<Vec<String>> {
        let tokenizer = self.tokenizer()?;
        let starts = prompts
            .iter()
            .map(|p| tokenizer.encode(p))
            .collect::<editbench_models::Result<Vec<_>>>()?;
        let mut rngs: Vec<SplitMix64> = seeds.iter().map(|&s| SplitMix64::new(s)).collect();
        sample_top_k(self, starts, max_len, &mut rngs)?
            .iter()
            .map(|ids| Ok(tokenizer.decode(ids)?.replace("\n\n", " ")))
            .collect()
    }
}

/// How the generation tests run.
#[derive(Debug, Clone)]
pub struct GenerationOptions {
    /// Tokens per text, prompt included (the reference's `max_out_len`).
    pub max_len: usize,
    /// Only records with `case_id % interval == 0` are tested (the reference's
    /// `generation_test_interval`; 1 tests every record).
    pub interval: u64,
    pub seed: u64,
    /// Prompts sampled together in one batch.
    pub batch: usize,
    /// TF-IDF model and snippets for RS; RS is skipped without them.
    pub reference: Option<TfIdf>,
}

impl Default for GenerationOptions {
    fn default() -> Self {
        Self { max_len: 100, interval: 1, seed: 0, batch: 32, reference: None }
    }
}

/// GE (and RS where reference texts exist) of the selected records.
pub fn generation_rows(
    generator: &impl Generator,
    records: &[Record],
    stage: Stage,
    options: &GenerationOptions,
) -> Result<Vec<MetricRow>> {
    let tested: Vec<&Record> = records
        .iter()
        .filter(|r| r.case_id % options.interval.max(1) == 0 && !r.generation_prompts.is_empty())
        .collect();
    let jobs: Vec<(usize, String, u64)> = tested
        .iter()
        .enumerate()
        .flat_map(|(k, r)| {
            r.generation_prompts
                .iter()
                .enumerate()
                .map(move |(i, p)| (k, p.clone(), text_seed(options.seed, r.case_id, i)))
        })
        .collect();
    let bar =
        ProgressBar::new(jobs.len() as u64).with_message(format!("generation ({})", stage.code()));
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} texts [{elapsed} < {eta}]")
            .expect("valid template"),
    );
    let mut texts: HashMap<usize, Vec<String>> = HashMap::new();
    for chunk in jobs.chunks(options.batch.max(1)) {
        let prompts: Vec<String> = chunk.iter().map(|j| j.1.clone()).collect();
        let seeds: Vec<u64> = chunk.iter().map(|j| j.2).collect();
        for (job, text) in chunk.iter().zip(generator.sample(&prompts, options.max_len, &seeds)?) {
            texts.entry(job.0).or_default().push(text);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let mut rows = Vec::new();
    for (k, record) in tested.iter().enumerate() {
        let texts = &texts[&k];
        let row = |metric, value| MetricRow { case_id: record.case_id, stage, metric, value };
        rows.push(row(
            Metric::GE,
            mean(texts.iter().map(|t| ngram_entropy(t))).expect("at least one text"),
        ));
        let r = &record.rewrite;
        let reference = options
            .reference
            .as_ref()
            .zip(r.relation_id.as_deref().zip(r.target_new_id.as_deref()));
        if let Some(snippets) =
            reference.and_then(|(tfidf, (rel, id))| Some(tfidf).zip(tfidf.snippets(rel, id)))
        {
            rows.push(row(
                Metric::RS,
                snippets.0.similarity(&texts.join(" "), &snippets.1.join(" ")),
            ));
        }
    }
    Ok(rows)
}

/// The seed of text `i` of a record: independent of batching and of the other records.
fn text_seed(seed: u64, case_id: u64, i: usize) -> u64 {
    let mut rng = SplitMix64::new(
        seed ^ case_id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
    );
    rng.next_u64()
}

/// The text's fluency score: `(2/3·H₂ + 4/3·H₃) / 2`, `Hₙ` the entropy in bits of its n-gram
/// frequency distribution over [`word_tokens`].
pub fn ngram_entropy(text: &str) -> f64 {
    let tokens = word_tokens(text);
    let entropy = |n: usize| {
        let mut counts: HashMap<&[String], usize> = HashMap::new();
        tokens.windows(n).for_each(|g| *counts.entry(g).or_default() += 1);
        let total = counts.values().sum::<usize>() as f64;
        counts.values().map(|&c| c as f64 / total).map(|p| -p * p.log2()).sum::<f64>()
    };
    (2.0 / 3.0 * entropy(2) + 4.0 / 3.0 * entropy(3)) / 2.0
}

/// Word tokens in the manner of NLTK's `word_tokenize` (Penn Treebank conventions): words,
/// numbers with inner `.`/`,`/`-`/`'` kept whole, other punctuation marks split off one token each,
/// clitics (`n't`, `'s`, `'re`, `'ve`, `'ll`, `'d`, `'m`) split from their word. An approximation
/// of NLTK (no sentence splitter, no quote rewriting) that agrees on ordinary prose.
pub fn word_tokens(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let inner = |i: usize| {
        ['.', ',', '-', '\''].contains(&chars[i])
            && i > 0
            && i + 1 < chars.len()
            && chars[i - 1].is_alphanumeric()
            && chars[i + 1].is_alphanumeric()
    };
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            i += 1;
        } else if chars[i].is_alphanumeric() {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || inner(i)) {
                i += 1;
            }
            split_clitic(chars[start..i].iter().collect(), &mut tokens);
        } else {
            tokens.push(chars[i].to_string());
            i += 1;
        }
    }
    tokens
}

fn split_clitic(word: String, tokens: &mut Vec<String>) {
    let lower = word.to_lowercase();
    let clitic = ["n't", "'s", "'re", "'ve", "'ll", "'d", "'m"]
        .into_iter()
        .find(|c| lower.ends_with(c) && lower.len() > c.len());
    match clitic {
        Some(c) => {
            let (stem, tail) = word.split_at(word.len() - c.len());
            tokens.push(stem.to_string());
            tokens.push(tail.to_string());
        }
        None => tokens.push(word),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn treebank_like_tokens() {
        assert_eq!(
            word_tokens("Paris isn't far, it's 1,000 km away."),
            ["Paris", "is", "n't", "far", ",", "it", "'s", "1,000", "km", "away", "."]
        );
        assert_eq!(
            word_tokens("well-known (\"quoted\")"),
            ["well-known", "(", "\"", "quoted", "\"", ")"]
        );
    }

    #[test]
    fn ngram_entropy_by_hand() {
        // "a b a b": bigrams ab, ba, ab → H₂ = −(2/3 log₂ 2/3 + 1/3 log₂ 1/3); trigrams aba, bab → H₃ = 1.
        let h2 = -(2.0 / 3.0 * (2.0f64 / 3.0).log2() + 1.0 / 3.0 * (1.0f64 / 3.0).log2());
        let expected = (2.0 / 3.0 * h2 + 4.0 / 3.0 * 1.0) / 2.0;
        assert!((ngram_entropy("a b a b") - expected).abs() < 1e-12);
        // A repeated word has one distinct n-gram: zero entropy; too short for trigrams: H₃ = 0.
        assert_eq!(ngram_entropy("x x x x"), 0.0);
        assert!((ngram_entropy("one two") - 0.0).abs() < 1e-12);
    }
}
