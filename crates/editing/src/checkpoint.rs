//! Checkpoints of sequential editing: what an [`Editor`] and its [`EditSession`] have written into
//! a model so far — the edited layers' current weights, for AlphaEdit and ENCORE the running
//! `Σ K_p K_pᵀ` of earlier rounds, for UltraEdit its features' running statistics — so that a run stopped between rounds continues with the same
//! model, bit for bit, as one that never stopped. The caller's own progress (rows, round) travels
//! as text in `notes`.
//!
//! One safetensors file: `weight.{layer}` (f32, `[d_out, d_in]`, the paper's `W`),
//! `previous.{layer}` (f64, `[d_in, d_in]`), `normalizer.0` (f64, `[3, width]`: the count in every
//! column, the mean, the summed squared deviations), the notes and a SHA-256 of every tensor's bytes in the
//! metadata; written to a temporary file and renamed, so an interrupted write leaves the previous
//! checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use editbench_models::LanguageModel;
use faer::Mat;
use safetensors::tensor::{Dtype, TensorView};
use sha2::{Digest, Sha256};

use crate::distribute::{EditSession, Editor};
use crate::error::{EditError, Result};
use crate::tensor_file::{f64_bytes, f64_matrix, write_atomic};
use crate::ultraedit::RunningMeanStd;

/// Metadata keys the checkpoint itself uses; `notes` may not take them.
const CHECKSUM: &str = "checksum";

/// The state of a sequential run between two rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Per edited layer, the current `W` (`[d_out, d_in]`, row-major, f32).
    pub weights: BTreeMap<usize, (Vec<usize>, Vec<f32>)>,
    /// Per layer, `Σ K_p K_pᵀ` of the keys already written (AlphaEdit, ENCORE; empty otherwise).
    pub previous: BTreeMap<usize, Mat<f64>>,
    /// UltraEdit's running statistics (none for the other methods).
    pub normalizer: Option<RunningMeanStd>,
    /// The caller's progress, kept verbatim.
    pub notes: BTreeMap<String, String>,
}

impl Checkpoint {
    /// What `session` and `editor` have written into `model`, with `notes`.
    pub fn take<B: Backend>(
        model: &LanguageModel<B>,
        session: &EditSession<B>,
        editor: &Editor,
        notes: BTreeMap<String, String>,
    ) -> Result<Self> {
        let weights = session
            .edited_layers()
            .into_iter()
            .map(|layer| {
                let w = model.mlp_out(layer).matrix();
                let shape = w.dims().to_vec();
                let data = w.into_data().to_vec::<f32>().map_err(|e| {
                    EditError::Input(format!("reading layer {layer}'s weight: {e:?}"))
                })?;
                Ok((layer, (shape, data)))
            })
            .collect::<Result<_>>()?;
        let (previous, normalizer) = (editor.previous_keys().clone(), editor.normalizer().cloned());
        Ok(Self { weights, previous, normalizer, notes })
    }

    /// Writes the checkpoint's weights into `model` (whose edited layers must still hold their
    /// original weights, which `session` records for its revert) and its earlier keys into
    /// `editor`; refused, with `model`, `session` and `editor` unchanged, when a layer or a shape
    /// does not fit them.
    pub fn restore<B: Backend>(
        &self,
        model: &mut LanguageModel<B>,
        session: &mut EditSession<B>,
        editor: &mut Editor,
    ) -> Result<()> {
        for (&layer, (shape, _)) in &self.weights {
            if layer >= model.dims.num_layers {
                return Err(EditError::Input(format!(
                    "checkpoint: layer {layer} is beyond the model's {} layers",
                    model.dims.num_layers
                )));
            }
            let expected = model.mlp_out(layer).matrix().dims().to_vec();
            if *shape != expected {
                return Err(EditError::Input(format!(
                    "checkpoint: layer {layer}'s weight is {shape:?}, the model's {expected:?}"
                )));
            }
        }
        editor.set_previous_keys(self.previous.clone())?;
        editor.set_normalizer(self.normalizer.clone());
        let device = model.device();
        for (&layer, (shape, data)) in &self.weights {
            let w = Tensor::<B, 2>::from_data(
                TensorData::new(data.clone(), [shape[0], shape[1]]),
                &device,
            );
            session.record_original(layer, model.mlp_out(layer).matrix());
            model.mlp_out_mut(layer).set_matrix(w);
        }
        Ok(())
    }

    /// Writes the checkpoint to `path` (a temporary file renamed into place).
    pub fn write(&self, path: &Path) -> Result<()> {
        if self.notes.contains_key(CHECKSUM) {
            return Err(EditError::Input(format!("checkpoint: `{CHECKSUM}` is not a note name")));
        }
        let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (layer, (shape, data)) in &self.weights {
            tensors.push((
                format!("weight.{layer}"),
                Dtype::F32,
                shape.clone(),
                data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
        }
        for (layer, m) in &self.previous {
            tensors.push((
                format!("previous.{layer}"),
                Dtype::F64,
                vec![m.nrows(), m.ncols()],
                f64_bytes(m),
            ));
        }
        if let Some(s) = &self.normalizer {
            let stats = Mat::from_fn(3, s.mean.len(), |i, j| [s.n, s.mean[j], s.m2[j]][i]);
            tensors.push((
                "normalizer.0".into(),
                Dtype::F64,
                vec![3, s.mean.len()],
                f64_bytes(&stats),
            ));
        }
        let mut metadata: HashMap<String, String> = self.notes.clone().into_iter().collect();
        metadata.insert(
            CHECKSUM.into(),
            checksum(tensors.iter().map(|(name, _, _, bytes)| (name.as_str(), bytes.as_slice()))),
        );
        let views = tensors.iter().map(|(name, dtype, shape, bytes)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), bytes).expect("shape matches the data"),
            )
        });
        write_atomic(path, views, metadata)
    }

    /// Reads a checkpoint [`Checkpoint::write`] wrote; an unreadable, truncated or altered file is
    /// an error naming it.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| EditError::file(path, e))?;
        let corrupt =
            |what: String| EditError::file(path, format!("not a readable checkpoint ({what})"));
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let mut notes: BTreeMap<String, String> =
            header.metadata().clone().unwrap_or_default().into_iter().collect();
        let expected = notes.remove(CHECKSUM).ok_or_else(|| corrupt("no checksum".into()))?;
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let named: Vec<(String, TensorView<'_>)> = st.tensors();
        if checksum(named.iter().map(|(name, view)| (name.as_str(), view.data()))) != expected {
            return Err(corrupt("checksum mismatch".into()));
        }
        let mut checkpoint =
            Self { weights: BTreeMap::new(), previous: BTreeMap::new(), normalizer: None, notes };
        for (name, view) in named {
            let (kind, layer) = name
                .split_once('.')
                .and_then(|(k, l)| Some((k, l.parse::<usize>().ok()?)))
                .ok_or_else(|| corrupt(format!("tensor `{name}`")))?;
            let shape = view.shape().to_vec();
            match (kind, view.dtype(), shape.as_slice()) {
                ("weight", Dtype::F32, [_, _]) => {
                    let data = view
                        .data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                        .collect();
                    checkpoint.weights.insert(layer, (shape, data));
                }
                ("previous", Dtype::F64, &[r, c]) => {
                    checkpoint.previous.insert(layer, f64_matrix(r, c, view.data()));
                }
                ("normalizer", Dtype::F64, &[3, width]) if width > 0 => {
                    let m = f64_matrix(3, width, view.data());
                    let row = |i: usize| m.row(i).iter().copied().collect::<Vec<f64>>();
                    let (n, mean, m2) = (m[(0, 0)], row(1), row(2));
                    checkpoint.normalizer = Some(RunningMeanStd { n, mean, m2 });
                }
                _ => {
                    return Err(corrupt(format!("tensor `{name}` ({:?}, {shape:?})", view.dtype())))
                }
            }
        }
        Ok(checkpoint)
    }
}

/// SHA-256 over every tensor's name, length and bytes, in name order.
fn checksum<'a>(tensors: impl Iterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut sorted: Vec<(&str, &[u8])> = tensors.collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut hasher = Sha256::new();
    for (name, bytes) in sorted {
        hasher.update(name.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    hex::encode(hasher.finalize())
}
