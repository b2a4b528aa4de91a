use std::path::PathBuf;

use crate::solver::SolveError;

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error(transparent)]
    Model(#[from] editbench_models::ModelError),
    #[error("layer {layer}: {error}")]
    Solve { layer: usize, error: SolveError },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, EditError>;

impl EditError {
    pub fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Self::File { path: path.into(), message: message.to_string() }
    }
}
