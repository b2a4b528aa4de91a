//! One record type for every benchmark: the rewrite, and the probes its metrics score.

use serde::{Deserialize, Serialize};

/// Which benchmark a file holds; decides which metrics apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    /// CounterFact (Meng et al. 2022).
    Counterfact,
    /// Multi-CounterFact (MEMIT): CounterFact's format, filtered for conflicting edits.
    Mcf,
    /// zsRE question answering (MEND's split, as evaluated by ROME/MEMIT).
    Zsre,
    /// QAEdit (WILD, Yang et al. 2025): real-world questions; scored as zsRE is.
    Qaedit,
}

impl DatasetKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Counterfact => "counterfact",
            Self::Mcf => "mcf",
            Self::Zsre => "zsre",
            Self::Qaedit => "qaedit",
        }
    }
}

/// The requested edit: `prompt` with its `{}` filled by `subject` should continue with
/// `target_new` instead of `target_true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rewrite {
    pub prompt: String,
    pub subject: String,
    /// Wikidata property (CounterFact), when known.
    pub relation_id: Option<String>,
    pub target_new: String,
    /// Wikidata id of the new object (CounterFact), when known.
    pub target_new_id: Option<String>,
    pub target_true: String,
}

impl Rewrite {
    /// The prompt with the subject filled in.
    pub fn prompt_text(&self) -> String {
        self.prompt.replacen("{}", &self.subject, 1)
    }
}

/// A prompt and the answer expected after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub prompt: String,
    pub answer: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub case_id: u64,
    pub rewrite: Rewrite,
    /// Rephrasings of the rewrite prompt (generalisation).
    pub paraphrase_prompts: Vec<String>,
    /// Prompts about other subjects whose answer must not change (specificity). In CounterFact
    /// the answer is the record's true object.
    pub neighborhood: Vec<Probe>,
    /// Prompts about other subjects that have the new object (CounterFact; unused by the metrics).
    pub attribute_prompts: Vec<String>,
    /// Open-ended prompts about the subject (CounterFact's generation tests).
    pub generation_prompts: Vec<String>,
}

impl Record {
    /// The record with every prompt (the rewrite's template, paraphrases, neighborhood, attribute
    /// and generation prompts) passed through `f`, e.g. into a chat template.
    pub fn map_prompts<E>(&self, f: impl Fn(&str) -> Result<String, E>) -> Result<Self, E> {
        let all = |prompts: &[String]| prompts.iter().map(|p| f(p)).collect::<Result<Vec<_>, E>>();
        let neighborhood = self
            .neighborhood
            .iter()
            .map(|p| Ok(Probe { prompt: f(&p.prompt)?, answer: p.answer.clone() }))
            .collect::<Result<Vec<_>, E>>()?;
        Ok(Self {
            case_id: self.case_id,
            rewrite: Rewrite { prompt: f(&self.rewrite.prompt)?, ..self.rewrite.clone() },
            paraphrase_prompts: all(&self.paraphrase_prompts)?,
            neighborhood,
            attribute_prompts: all(&self.attribute_prompts)?,
            generation_prompts: all(&self.generation_prompts)?,
        })
    }
}

/// Records of one benchmark, with where they came from.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub kind: DatasetKind,
    pub records: Vec<Record>,
    /// SHA-256 of the file the records were read from.
    pub sha256: String,
}
