use burn::tensor::backend::Backend;
use editbench_datasets::downstream::Task;
use editbench_editing::request::after_prompt;
use editbench_editing::score::{teacher_forced, Continuation};
use editbench_editing::{EditError, Result};
use editbench_models::LanguageModel;
use serde::{Deserialize, Serialize};

/// Whether a row was measured on the unedited model or after the edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Pre,
    Post,
}

impl Stage {
    pub fn code(self) -> &'static str {
        match self {
            Self::Pre => "pre",
            Self::Post => "post",
        }
    }
}

/// The metric codes of the results files (serialized as their codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Metric {
    /// Efficacy score: `P(new) > P(true)` on the rewrite prompt.
    ES,
    /// Efficacy magnitude: `P(new) − P(true)` on the rewrite prompt.
    EM,
    /// Paraphrase score: fraction of paraphrases with `P(new) > P(true)`.
    PS,
    /// Paraphrase magnitude: mean `P(new) − P(true)` over paraphrases.
    PM,
    /// Neighborhood score: fraction of neighborhood prompts with `P(true) > P(new)`.
    NS,
    /// Neighborhood magnitude: mean `P(true) − P(new)` over neighborhood prompts.
    NM,
    /// Efficacy accuracy: every token of the new target is the top prediction.
    EA,
    /// Paraphrase accuracy (new target, every token top-1), mean over paraphrases.
    PA,
    /// Neighborhood accuracy (true target, every token top-1), mean over neighborhood prompts.
    NA,
    /// Score: harmonic mean of ES, PS, NS (CounterFact) or of the three zsRE accuracies; derived
    /// by [`crate::summarize`], never stored per record.
    S,
    /// Generation entropy (fluency), bits.
    GE,
    /// Reference score (consistency): TF-IDF cosine to texts about the new object.
    RS,
    /// Perplexity of the edited model on held-out text (`exp` of the mean token NLL); one row per
    /// measured model state, `case_id` 0. Not scaled by 100.
    PPL,
    /// Frobenius norm `‖W − W₀‖_F` of the accumulated update of one edited layer; the row's
    /// `case_id` holds the layer. Not scaled by 100.
    DWNORM,
    /// `‖W − W₀‖_F / ‖W₀‖_F` of one edited layer (`case_id`: the layer), ×100 (percent).
    DWREL,
    RewriteAcc,
    ParaphraseAcc,
    NeighborhoodAcc,
    /// Generated efficacy: the greedy answer to the rewrite prompt starts with the new object
    /// (crate::answers).
    GenES,
    /// Token F1 of the greedy answer to the rewrite prompt against the new object.
    GenESF1,
    /// Generated generalization: fraction of paraphrases answered with the new object.
    GenPS,
    GenPSF1,
    /// Generated locality: fraction of neighborhood prompts answered as the unedited model did.
    GenNS,
    GenNSF1,
    /// Fraction of neighborhood prompts answered with their dataset answer.
    GenNA,
    /// Harmonic mean of gen_ES, gen_PS, gen_NS; derived by [`crate::summarize`].
    GenS,
    /// A downstream task's item answered right (code `ds_<task>`; `case_id`: the item's position
    /// among the task's test items): its mean is the task's accuracy (crate::downstream).
    Downstream(Task),
}

impl From<Metric> for String {
    fn from(m: Metric) -> String {
        m.code().to_string()
    }
}

impl TryFrom<String> for Metric {
    type Error = String;
    fn try_from(code: String) -> std::result::Result<Self, String> {
        Metric::from_code(&code).ok_or_else(|| format!("unknown metric `{code}`"))
    }
}

impl Metric {
    /// Every metric but the downstream tasks' (one per [`Task`]).
    pub const ALL: [Metric; 26] = [
        Self::ES,
        Self::EM,
        Self::PS,
        Self::PM,
        Self::NS,
        Self::NM,
        Self::EA,
        Self::PA,
        Self::NA,
        Self::S,
        Self::GE,
        Self::RS,
        Self::PPL,
        Self::DWNORM,
        Self::DWREL,
        Self::RewriteAcc,
        Self::ParaphraseAcc,
        Self::NeighborhoodAcc,
        Self::GenES,
        Self::GenESF1,
        Self::GenPS,
        Self::GenPSF1,
        Self::GenNS,
        Self::GenNSF1,
        Self::GenNA,
        Self::GenS,
    ];

    /// The factor summaries apply: 100 (the papers' percent scale) except for perplexity and
    /// update norms, which are reported as they are.
    pub fn scale(self) -> f64 {
        match self {
            Self::PPL | Self::DWNORM => 1.0,
            _ => 100.0,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::ES => "ES",
            Self::EM => "EM",
            Self::PS => "PS",
            Self::PM => "PM",
            Self::NS => "NS",
            Self::NM => "NM",
            Self::EA => "EA",
            Self::PA => "PA",
            Self::NA => "NA",
            Self::S => "S",
            Self::GE => "GE",
            Self::RS => "RS",
            Self::PPL => "PPL",
            Self::DWNORM => "DWNORM",
            Self::DWREL => "DWREL",
            Self::RewriteAcc => "rewrite_acc",
            Self::ParaphraseAcc => "paraphrase_acc",
            Self::NeighborhoodAcc => "neighborhood_acc",
            Self::GenES => "gen_ES",
            Self::GenESF1 => "gen_ES_F1",
            Self::GenPS => "gen_PS",
            Self::GenPSF1 => "gen_PS_F1",
            Self::GenNS => "gen_NS",
            Self::GenNSF1 => "gen_NS_F1",
            Self::GenNA => "gen_NA",
            Self::GenS => "gen_S",
            Self::Downstream(task) => match task {
                Task::Sst2 => "ds_sst2",
                Task::Mrpc => "ds_mrpc",
                Task::Cola => "ds_cola",
                Task::Rte => "ds_rte",
                Task::Nli => "ds_nli",
                Task::Mmlu => "ds_mmlu",
                Task::SentimentAnalysis => "ds_sentiment_analysis",
                Task::Dialogue => "ds_dialogue",
            },
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        let downstream = Task::ALL.into_iter().map(Self::Downstream);
        Self::ALL.into_iter().chain(downstream).find(|m| m.code() == code)
    }
}

/// One measured value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    pub case_id: u64,
    pub stage: Stage,
    pub metric: Metric,
    pub value: f64,
}

/// Scores target continuations under teacher forcing; the model, or a fake in tests.
pub trait Scorer {
    fn score(&self, pairs: &[(String, String)]) -> Result<Vec<Continuation>>;
}

impl<B: Backend> Scorer for LanguageModel<B> {
    fn score(&self, pairs: &[(String, String)]) -> Result<Vec<Continuation>> {
        teacher_forced(self, pairs)
    }
}

/// Scores all `pairs` in one call and hands each caller its slice back, in order.
pub(crate) struct PairBatch {
    pub pairs: Vec<(String, String)>,
}

impl PairBatch {
    pub fn new() -> Self {
        Self { pairs: Vec::new() }
    }

    /// Queues `(prompt, target)` for each prompt; returns the range of their results.
    pub fn push(
        &mut self,
        prompts: impl IntoIterator<Item = String>,
        target: &str,
    ) -> std::ops::Range<usize> {
        let start = self.pairs.len();
        self.pairs.extend(prompts.into_iter().map(|p| {
            let target = after_prompt(&p, target);
            (p, target)
        }));
        start..self.pairs.len()
    }

    pub fn score(&self, scorer: &impl Scorer) -> Result<Vec<Continuation>> {
        let scored = scorer.score(&self.pairs)?;
        if scored.len() != self.pairs.len()
            || scored.iter().any(|c| c.logprobs.is_empty() || c.logprobs.len() != c.argmax.len())
        {
            return Err(EditError::Input("the scorer returned a malformed result".into()));
        }
        Ok(scored)
    }
}

pub(crate) fn mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.into_iter().fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cached rows (the unedited scores under `pre/`) come back bit for bit, so a resumed sweep
    /// writes the same bytes as an uninterrupted one.
    #[test]
    fn rows_round_trip_through_json_exactly() {
        let mut x = 0.09666411566575489f64;
        for i in 0..2000u64 {
            x = (x * 3.7 + i as f64 * 1e-7).fract() - 0.5;
            let row = MetricRow {
                case_id: i,
                stage: Stage::Pre,
                metric: Metric::NM,
                value: x / (1.0 + i as f64),
            };
            let back: MetricRow =
                serde_json::from_str(&serde_json::to_string(&row).unwrap()).unwrap();
            assert_eq!(back.value.to_bits(), row.value.to_bits(), "{}", row.value);
        }
    }
}
