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
    /// The new object. A leading space is added if missing (all methods do).
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

    /// `target_new` with the leading space the methods require.
    pub fn target(&self) -> String {
        if self.target_new.starts_with(' ') {
            self.target_new.clone()
        } else {
            format!(" {}", self.target_new)
        }
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
