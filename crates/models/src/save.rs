//! Writing a (possibly edited) model as a Hugging Face checkpoint directory that
//! [`LanguageModel::load`] and transformers read back.
//!
//! From an HF directory only the shards holding an edited tensor are rewritten, the edited tensors
//! in f32 (so a small update is not rounded away in a bf16 checkpoint); the other files are
//! hard-linked (or copied). From a GGUF file every tensor is written in
//! f32 with a `config.json` and the tokenizer.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use burn::tensor::backend::Backend;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::error::{ModelError, Result};
use crate::model::{Architecture, LanguageModel};
use crate::weights::HostTensor;

impl<B: Backend> LanguageModel<B> {
    /// The Hugging Face name of the edited projection of `layer`.
    pub fn mlp_out_name(&self, layer: usize) -> String {
        match self.arch {
            Architecture::Llama(_) => format!("model.layers.{layer}.mlp.down_proj.weight"),
            Architecture::GptJ(_) => format!("transformer.h.{layer}.mlp.fc_out.weight"),
            Architecture::Gpt2(ref m) => format!("{}h.{layer}.mlp.c_proj.weight", m.prefix),
        }
    }

    /// Writes the model to `dir` (created; must not exist or be empty), with the edited projections
    /// of `edited_layers` taken from the model in memory.
    pub fn save_hf(&self, dir: &Path, edited_layers: &[usize]) -> Result<()> {
        if dir.exists() && fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?.next().is_some() {
            return Err(ModelError::Input(format!(
                "{}: refusing to write into a non-empty directory",
                dir.display()
            )));
        }
        let partial = dir.with_extension("partial");
        if partial.exists() {
            fs::remove_dir_all(&partial).map_err(|e| ModelError::io(&partial, e))?;
        }
        fs::create_dir_all(&partial).map_err(|e| ModelError::io(&partial, e))?;
        let mut edited = HashMap::new();
        // GPT-2's Conv1D stores `[d_in, d_out]`, the transpose of the paper's W.
        let conv1d = matches!(self.arch, Architecture::Gpt2(_));
        for &layer in edited_layers {
            let w = self.mlp_out(layer).matrix();
            let w = if conv1d { w.transpose() } else { w };
            let shape = w.dims().to_vec();
            let data =
                w.into_data().to_vec::<f32>().map_err(|e| ModelError::Input(format!("{e:?}")))?;
            edited.insert(self.mlp_out_name(layer), HostTensor { shape, data });
        }
        if self.path.is_dir() {
            self.save_from_hf_dir(&partial, &edited)?;
        } else {
            self.save_from_gguf(&partial, edited)?;
        }
        if dir.exists() {
            fs::remove_dir(dir).map_err(|e| ModelError::io(dir, e))?;
        }
        fs::rename(&partial, dir).map_err(|e| ModelError::io(dir, e))
    }

    fn save_from_hf_dir(&self, out: &Path, edited: &HashMap<String, HostTensor>) -> Result<()> {
        for entry in fs::read_dir(&self.path).map_err(|e| ModelError::io(&self.path, e))? {
            let src = entry.map_err(|e| ModelError::io(&self.path, e))?.path();
            if !src.is_file() {
                continue;
            }
            let dst = out.join(src.file_name().expect("a file has a name"));
            let bytes;
            let touched = if src.extension().is_some_and(|e| e == "safetensors") {
                bytes = fs::read(&src).map_err(|e| ModelError::io(&src, e))?;
                let st = SafeTensors::deserialize(&bytes)
                    .map_err(|e| ModelError::format(&src, e.to_string()))?;
                let (_, metadata) = SafeTensors::read_metadata(&bytes)
                    .map_err(|e| ModelError::format(&src, e.to_string()))?;
                st.names()
                    .iter()
                    .any(|n| edited.contains_key(*n))
                    .then(|| (st, metadata.metadata().clone()))
            } else {
                None
            };
            match touched {
                Some((st, metadata)) => rewrite_shard(&st, metadata, edited, &dst)?,
                None => {
                    if fs::hard_link(&src, &dst).is_err() {
                        fs::copy(&src, &dst).map_err(|e| ModelError::io(&dst, e))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn save_from_gguf(&self, out: &Path, mut edited: HashMap<String, HostTensor>) -> Result<()> {
        let Architecture::Llama(model) = &self.arch else {
            unreachable!("GGUF files hold LLaMA models")
        };
        let tensors: Vec<(String, HostTensor)> = model
            .export()?
            .into_iter()
            .map(|(name, t)| match edited.remove(&name) {
                Some(e) => (name, e),
                None => (name, t),
            })
            .collect();
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, t)| t.data.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let views = tensors
            .iter()
            .zip(&bytes)
            .map(|((name, t), b)| {
                Ok((
                    name.clone(),
                    TensorView::new(Dtype::F32, t.shape.clone(), b)
                        .map_err(|e| ModelError::format(out, e.to_string()))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let file = out.join("model.safetensors");
        safetensors::serialize_to_file(views, None, &file)
            .map_err(|e| ModelError::format(&file, e.to_string()))?;
        let config = model.hf_config(&self.dims);
        let config_path = out.join("config.json");
        fs::write(&config_path, serde_json::to_string_pretty(&config).expect("JSON"))
            .map_err(|e| ModelError::io(&config_path, e))?;
        if let Ok(tokenizer) = self.tokenizer() {
            tokenizer.save(&out.join("tokenizer.json"))?;
        }
        Ok(())
    }
}

/// Writes `st` to `dst` with the tensors named in `edited` replaced (in f32).
fn rewrite_shard(
    st: &SafeTensors<'_>,
    metadata: Option<HashMap<String, String>>,
    edited: &HashMap<String, HostTensor>,
    dst: &Path,
) -> Result<()> {
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        match edited.get(&name) {
            Some(t) if t.shape == view.shape() => owned.push((
                name,
                Dtype::F32,
                t.shape.clone(),
                t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )),
            Some(t) => {
                return Err(ModelError::Shape {
                    path: dst.to_path_buf(),
                    tensor: name,
                    expected: view.shape().to_vec(),
                    found: t.shape.clone(),
                })
            }
            None => owned.push((name, view.dtype(), view.shape().to_vec(), view.data().to_vec())),
        }
    }
    let views = owned
        .iter()
        .map(|(n, d, s, b)| {
            Ok((
                n.clone(),
                TensorView::new(*d, s.clone(), b)
                    .map_err(|e| ModelError::format(dst, e.to_string()))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize_to_file(views, metadata, dst)
        .map_err(|e| ModelError::format(dst, e.to_string()))
}
