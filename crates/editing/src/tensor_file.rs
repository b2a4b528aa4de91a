//! f64 matrices as little-endian bytes and atomic file writes: what the statistics cache, the
//! checkpoints of sequential editing and the target cache store.

use std::collections::HashMap;
use std::path::Path;

use faer::Mat;
use safetensors::tensor::TensorView;

use crate::error::{EditError, Result};

/// `m` row-major as little-endian f64 bytes.
pub(crate) fn f64_bytes(m: &Mat<f64>) -> Vec<u8> {
    (0..m.nrows()).flat_map(|i| (0..m.ncols()).flat_map(move |j| m[(i, j)].to_le_bytes())).collect()
}

/// The `rows × cols` matrix whose row-major little-endian f64 bytes are `bytes`.
pub(crate) fn f64_matrix(rows: usize, cols: usize, bytes: &[u8]) -> Mat<f64> {
    let values: Vec<f64> =
        bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
    Mat::from_fn(rows, cols, |i, j| values[i * cols + j])
}

/// Writes `tensors` with `metadata` to `path` atomically ([`replace_file`]).
pub(crate) fn write_atomic<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (String, TensorView<'a>)>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    replace_file(path, |tmp| {
        safetensors::serialize_to_file(tensors, Some(metadata), tmp)
            .map_err(|e| EditError::file(tmp, e))
    })
}

/// Writes `path` through a temporary file (filled by `write`) renamed into place, its directory
/// created, so an interrupted write leaves the previous file.
pub(crate) fn replace_file(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| EditError::file(dir, e))?;
    }
    let tmp = path.with_extension("partial");
    write(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| EditError::file(path, e))
}
