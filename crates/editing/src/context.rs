//! Context templates (spec §3.1): short texts `"<context>. {}"` in front of the request prompt, so
//! that keys and targets generalise beyond the bare prompt.

use std::path::Path;

use burn::tensor::backend::Backend;
use editbench_datasets::rng::SplitMix64;
use editbench_models::LanguageModel;
use serde::{Deserialize, Serialize};

use crate::error::{EditError, Result};
use crate::hparams::{Method, TemplateKind};
use crate::sampling::sample_top_k;

/// The seed words MEMIT-style templates are sampled from.
const SEED_WORDS: [&str; 5] = ["The", "Therefore", "Because", "I", "You"];

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
        Ok(match method {
            Method::Rome => {
                let start = ["<|endoftext|>"; 10];
                let short = sample(model, &start, 5, seed)?;
                let long = sample(model, &start, 10, seed.wrapping_add(start.len() as u64))?;
                Self { groups: vec![[bare, short, long].concat()] }
            }
            _ => Self { groups: vec![bare, sample(model, &SEED_WORDS, 10, seed)?] },
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
/// Row `i` is drawn with seed `seed + i`.
fn sample<B: Backend>(model: &LanguageModel<B>, starts: &[&str], max_len: usize, seed: u64) -> Result<Vec<String>> {
    let tokenizer = model.tokenizer()?;
    let starts = starts.iter().map(|s| tokenizer.encode(s)).collect::<editbench_models::Result<Vec<_>>>()?;
    let mut rngs: Vec<SplitMix64> = (0..starts.len() as u64).map(|i| SplitMix64::new(seed.wrapping_add(i))).collect();
    sample_top_k(model, starts, max_len, &mut rngs)?
        .iter()
        .map(|ids| {
            let text = tokenizer.decode(ids)?.replace("\n\n", " ").replace(['{', '}'], " ");
            Ok(format!("{}. {{}}", text.trim()))
        })
        .collect()
}

