//! Context templates (spec §3.1): short texts `"<context>. {}"` in front of the request prompt, so
//! that keys and targets generalise beyond the bare prompt.

use std::path::Path;

use burn::tensor::backend::Backend;
use editbench_models::{Hooks, LanguageModel, Padding};
use serde::{Deserialize, Serialize};

use crate::error::{EditError, Result};
use crate::hparams::{Method, TemplateKind};
use crate::rng::SplitMix64;

/// The seed words MEMIT-style templates are sampled from.
const SEED_WORDS: [&str; 5] = ["The", "Therefore", "Because", "I", "You"];
/// Sampling keeps the `TOP_K` most likely next tokens.
const TOP_K: usize = 5;

/// Templates in groups; each template holds one `{}` for the request prompt. Keys are averaged
/// within each group, then over groups (spec §3.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextTemplates {
    pub groups: Vec<Vec<String>>,
}

impl ContextTemplates {
    /// The templates `method` uses: MEMIT/EMMET/AlphaEdit `[["{}"], 5 × 10 tokens]`; ROME one
    /// group `["{}", 10 × 5 tokens, 10 × 10 tokens]` (a flat mean over 21).
    pub fn for_method<B: Backend>(model: &LanguageModel<B>, method: Method, kind: TemplateKind, seed: u64) -> Result<Self> {
        let bare = vec!["{}".to_string()];
        if kind == TemplateKind::Fixed {
            let fixed: Vec<String> = SEED_WORDS.iter().map(|w| format!("{w}. {{}}")).collect();
            return Ok(match method {
                Method::Rome => Self { groups: vec![[bare, fixed].concat()] },
                _ => Self { groups: vec![bare, fixed] },
            });
        }
        let mut rng = SplitMix64::new(seed);
        Ok(match method {
            Method::Rome => {
                let start = ["<|endoftext|>"; 10];
                let short = sample(model, &start, 5, &mut rng)?;
                let long = sample(model, &start, 10, &mut rng)?;
                Self { groups: vec![[bare, short, long].concat()] }
            }
            _ => Self { groups: vec![bare, sample(model, &SEED_WORDS, 10, &mut rng)?] },
        })
    }

    pub fn count(&self) -> usize {
        self.groups.iter().map(Vec::len).sum()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("templates serialise");
        std::fs::write(path, text).map_err(|e| EditError::file(path, e))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EditError::file(path, e))?;
        let templates: Self = serde_json::from_str(&text).map_err(|e| EditError::file(path, e))?;
        if templates.groups.iter().flatten().any(|t| t.matches("{}").count() != 1) {
            return Err(EditError::file(path, "every template needs exactly one `{}`"));
        }
        Ok(templates)
    }
}

/// One sample per start text, top-k sampled until `max_len` tokens in total (prompt included),
/// each turned into a template `"<text>. {}"` with braces in the text replaced by spaces.
fn sample<B: Backend>(model: &LanguageModel<B>, starts: &[&str], max_len: usize, rng: &mut SplitMix64) -> Result<Vec<String>> {
    let tokenizer = model.tokenizer()?;
    let mut seqs = starts.iter().map(|s| tokenizer.encode(s)).collect::<editbench_models::Result<Vec<_>>>()?;
    let vocab = model.dims.vocab_size;
    while let Some(longest) = seqs.iter().map(Vec::len).max().filter(|_| seqs.iter().any(|s| s.len() < max_len)) {
        let batch = model.batch(&seqs, Padding::Left)?;
        let last: Vec<usize> = (0..seqs.len()).map(|row| row * longest + longest - 1).collect();
        let logits = model.forward(&batch, &Hooks { logits_at: Some(last), ..Hooks::default() }).logits.expect("full pass");
        let logits = logits.into_data().to_vec::<f32>().map_err(|e| EditError::Input(format!("{e:?}")))?;
        for (row, seq) in seqs.iter_mut().enumerate() {
            if seq.len() < max_len {
                seq.push(top_k_sample(&logits[row * vocab..(row + 1) * vocab], rng));
            }
        }
    }
    seqs.iter()
        .map(|ids| {
            let text = tokenizer.decode(ids)?.replace("\n\n", " ").replace(['{', '}'], " ");
            Ok(format!("{}. {{}}", text.trim()))
        })
        .collect()
}

/// Draws from the softmax restricted to the `TOP_K` largest logits.
fn top_k_sample(logits: &[f32], rng: &mut SplitMix64) -> u32 {
    let mut best: Vec<(usize, f32)> = logits.iter().copied().enumerate().collect();
    best.select_nth_unstable_by(TOP_K - 1, |a, b| b.1.total_cmp(&a.1));
    best.truncate(TOP_K);
    best.sort_by(|a, b| b.1.total_cmp(&a.1));
    let max = best[0].1;
    let weights: Vec<f64> = best.iter().map(|&(_, l)| ((l - max) as f64).exp()).collect();
    let mut u = rng.next_f64() * weights.iter().sum::<f64>();
    for (&(id, _), w) in best.iter().zip(&weights) {
        if u < *w {
            return id as u32;
        }
        u -= w;
    }
    best[TOP_K - 1].0 as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_sampling_only_draws_the_k_most_likely() {
        let logits: Vec<f32> = (0..100).map(|i| i as f32 / 10.0).collect();
        let mut rng = SplitMix64::new(3);
        for _ in 0..200 {
            assert!(top_k_sample(&logits, &mut rng) >= 95);
        }
    }
}
