use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// A record that does not have the shape its format requires.
    #[error("{path}: record {index}{case}: {message}", case = case_id.map(|c| format!(" (case_id {c})")).unwrap_or_default())]
    Record { path: PathBuf, index: usize, case_id: Option<u64>, message: String },
    #[error("{0}")]
    Selection(String),
}

pub type Result<T> = std::result::Result<T, DataError>;

impl DataError {
    pub(crate) fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Self::File { path: path.into(), message: message.to_string() }
    }
}
