//! Context templates (algo §3.1): short texts `"<context>. {}"` in front of the request prompt, so
//! that keys and targets generalise beyond the bare prompt.

use std::path::Path;

use burn::tensor::backend::Backend;
use editbench_datasets::rng::SplitMix64;
use editbench_models::LanguageModel;
use serde::{Deserialize, Serialize};

use crate::error::{EditError, Result};
use crate::hparams::{MethodHparams, TemplateKind};
use crate::methods::Method;
use crate::sampling::sample_top_k;

/// The seed words MEMIT-style templates are sampled from.
const SEED_WORDS: [&str; 5] = ["The", "Therefore", "Because", "I", "You"];

/// Templates in groups; each template holds one `{}` for the request prompt. Keys are averaged
/// within each group, then over groups (algo §3.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContextTemplates {
    pub groups: Vec<Vec<String>>,
}

impl ContextTemplates {
    /// The templates `h` asks for: from its `template_file`, else fixed or sampled ([`Self::for_method`]).
    pub fn for_hparams<B: Backend>(
        model: &LanguageModel<B>,
        method: Method,
        h: &MethodHparams,
    ) -> Result<Self> {
        match &h.template_file {
            Some(path) => Self::load(path, method),
            None => Self::for_method(model, method, h.templates, h.template_seed),
        }
    }

    /// The templates `method` uses: MEMIT/EMMET/AlphaEdit `[["{}"], 5 × 10 tokens]`; ROME one
    /// group `["{}", 10 × 5 tokens, 10 × 10 tokens]` (a flat mean over 21).
    pub fn for_method<B: Backend>(
        model: &LanguageModel<B>,
        method: Method,
        kind: TemplateKind,
        seed: u64,
    ) -> Result<Self> {
        let bare = vec!["{}".to_string()];
        if kind == TemplateKind::Fixed {
            let fixed: Vec<String> = SEED_WORDS.iter().map(|w| format!("{w}. {{}}")).collect();
            let groups =
                if method.is_rank_one() { vec![[bare, fixed].concat()] } else { vec![bare, fixed] };
            return Ok(Self { groups });
        }
        if !method.is_rank_one() {
            return Ok(Self { groups: vec![bare, sample(model, &SEED_WORDS, 10, seed)?] });
        }
        let start = ["<|endoftext|>"; 10];
        let short = sample(model, &start, 5, seed)?;
        let long = sample(model, &start, 10, seed.wrapping_add(start.len() as u64))?;
        Ok(Self { groups: vec![[bare, short, long].concat()] })
    }

    /// The bare prompt alone: ROME's `k_p`.
    pub fn bare() -> Self {
        Self { groups: vec![vec!["{}".to_string()]] }
    }

    pub fn count(&self) -> usize {
        self.groups.iter().map(Vec::len).sum()
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("templates serialise");
        std::fs::write(path, text).map_err(|e| EditError::file(path, e))
    }

    /// Templates from a JSON file: `{"groups": [[...], ...]}` (what [`Self::save`] writes), or the
    /// official run's file (`data/reference/context_templates.json`: `memit_emmet` groups and the
    /// flat `rome` list), from which `method`'s templates are taken.
    pub fn load(path: &Path, method: Method) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| EditError::file(path, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| EditError::file(path, e))?;
        let official = if method.is_rank_one() { "rome" } else { "memit_emmet" };
        let parsed = match (value.get("groups"), value.get(official)) {
            (Some(groups), _) => serde_json::from_value(groups.clone()),
            (None, Some(rome)) if method.is_rank_one() => {
                serde_json::from_value(rome.clone()).map(|flat| vec![flat])
            }
            (None, Some(groups)) => serde_json::from_value(groups.clone()),
            (None, None) => {
                return Err(EditError::file(
                    path,
                    format!("expected a `groups` list (or the official file's `{official}`)"),
                ))
            }
        };
        let groups: Vec<Vec<String>> = parsed.map_err(|e| EditError::file(path, e))?;
        if groups.is_empty()
            || groups.iter().any(Vec::is_empty)
            || groups.iter().flatten().any(|t| t.matches("{}").count() != 1)
        {
            return Err(EditError::file(
                path,
                "every template group needs templates, each with exactly one `{}`",
            ));
        }
        Ok(Self { groups })
    }
}

/// One sample per start text, top-k sampled until `max_len` tokens in total (prompt included),
/// each turned into a template `"<text>. {}"` with braces in the text replaced by spaces.
/// Row `i` is drawn with seed `seed + i`.
fn sample<B: Backend>(
    model: &LanguageModel<B>,
    starts: &[&str],
    max_len: usize,
    seed: u64,
) -> Result<Vec<String>> {
    let tokenizer = model.tokenizer()?;
    let starts =
        starts.iter().map(|s| tokenizer.encode(s)).collect::<editbench_models::Result<Vec<_>>>()?;
    let mut rngs: Vec<SplitMix64> =
        (0..starts.len() as u64).map(|i| SplitMix64::new(seed.wrapping_add(i))).collect();
    sample_top_k(model, starts, max_len, &mut rngs)?
        .iter()
        .map(|ids| {
            let text = tokenizer.decode(ids)?.replace("\n\n", " ").replace(['{', '}'], " ");
            Ok(format!("{}. {{}}", text.trim()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_official_template_file_gives_each_method_its_templates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(&path, r#"{"source": "x", "memit_emmet": [["{}"], ["A. {}", "B. {}"]], "rome": ["{}", "C. {}"]}"#).unwrap();
        assert_eq!(
            ContextTemplates::load(&path, Method::Emmet).unwrap().groups,
            vec![vec!["{}"], vec!["A. {}", "B. {}"]]
        );
        assert_eq!(
            ContextTemplates::load(&path, Method::Rome).unwrap().groups,
            vec![vec!["{}", "C. {}"]]
        );
        let saved = dir.path().join("s.json");
        ContextTemplates { groups: vec![vec!["{}".into()]] }.save(&saved).unwrap();
        assert_eq!(ContextTemplates::load(&saved, Method::Rome).unwrap(), ContextTemplates::bare());
        for bad in [r#"{"rome": ["no braces"]}"#, r#"{"groups": []}"#, r#"{"other": 1}"#, "[1"] {
            std::fs::write(&path, bad).unwrap();
            let err = ContextTemplates::load(&path, Method::Rome).unwrap_err().to_string();
            assert!(err.contains("t.json"), "{bad}: {err}");
        }
    }
}
