//! Errors of model loading and running. Every variant names the file and, where there is one, the
//! tensor or field, so a user can tell which part of a checkpoint is wrong.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    // The cause is part of the message and not also a `source`, so an error chain prints it once.
    #[error("{path}: {}", io_message(cause))]
    Io { path: PathBuf, cause: std::io::Error },
    #[error("{path}: invalid JSON: {cause}")]
    Json { path: PathBuf, cause: serde_json::Error },
    #[error("{path}: field `{field}`: {message}")]
    Config { path: PathBuf, field: String, message: String },
    #[error("{path}: unknown architecture `{found}` (supported: {supported})")]
    UnknownArchitecture { path: PathBuf, found: String, supported: &'static str },
    #[error("{path}: tensor `{tensor}` is missing")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    Shape { path: PathBuf, tensor: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{path}: tensor `{tensor}` has unsupported type {dtype} (supported: {supported})")]
    UnsupportedDtype { path: PathBuf, tensor: String, dtype: String, supported: &'static str },
    #[error("{path}: malformed file: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("backend `{0}` is not compiled into this build (rebuild with `--features {0}`)")]
    BackendNotCompiled(&'static str),
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, ModelError>;

/// An I/O error in words a user acts on ("no such file or directory", not "entity not found").
fn io_message(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), cause: source }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Format { path: path.into(), message: message.into() }
    }
    pub(crate) fn config(
        path: impl Into<PathBuf>,
        field: &str,
        message: impl Into<String>,
    ) -> Self {
        Self::Config { path: path.into(), field: field.to_string(), message: message.into() }
    }
}
