//! One requested edit: "{subject} <relation>" should now continue with `target_new`.

use editbench_datasets::Record;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditRequest {
    /// Identifier carried into results (CounterFact `case_id`).
    #[serde(default)]
    pub case_id: Option<u64>,
    /// Prompt template with one `{}` where the subject goes, e.g. `"The mother tongue of {} is"`.
    pub prompt: String,
    pub subject: String,
    /// The new object; [`EditRequest::target`] is how it follows the prompt.
    pub target_new: String,
    /// The true object, when known (for reporting).
    #[serde(default)]
    pub target_true: Option<String>,
}

impl EditRequest {
    /// The prompt with the subject filled in.
    pub fn prompt_text(&self) -> String {
        self.prompt.replacen("{}", &self.subject, 1)
    }

    /// `target_new` as it follows the prompt ([`after_prompt`]).
    pub fn target(&self) -> String {
        after_prompt(&self.prompt, &self.target_new)
    }

    pub fn check(&self) -> crate::Result<()> {
        if self.prompt.matches("{}").count() != 1 {
            return Err(crate::EditError::Input(format!(
                "prompt `{}` must contain exactly one `{{}}` for the subject",
                self.prompt
            )));
        }
        if self.subject.trim().is_empty() || self.target_new.trim().is_empty() {
            return Err(crate::EditError::Input("subject and target must not be empty".into()));
        }
        Ok(())
    }
}

/// `target` as it follows `prompt`: after one space (algo §8.1: the methods and the metrics score
/// `" " + object`), or directly where the prompt itself ends in whitespace — a chat template's
/// opening of the assistant's turn (`…assistant\n`), after which an answer starts at once.
pub fn after_prompt(prompt: &str, target: &str) -> String {
    if prompt.ends_with(char::is_whitespace) {
        target.trim_start().to_string()
    } else {
        format!(" {}", target.trim_start())
    }
}

impl From<&Record> for EditRequest {
    fn from(record: &Record) -> Self {
        let r = &record.rewrite;
        Self {
            case_id: Some(record.case_id),
            prompt: r.prompt.clone(),
            subject: r.subject.clone(),
            target_new: r.target_new.clone(),
            target_true: Some(r.target_true.clone()),
        }
    }
}
