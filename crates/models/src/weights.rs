//! Named tensors read from a checkpoint one at a time, converted to f32 on the host.
//!
//! Files are memory-mapped and each tensor is converted on its own, so peak host memory while
//! loading is the model on its device plus one tensor in f32.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Tensor, TensorData};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;

use crate::dtype::WeightDType;
use crate::error::{ModelError, Result};

/// A tensor on the host in row-major f32, with its shape as the checkpoint stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A checkpoint that hands out tensors by their Hugging Face name.
pub trait TensorSource {
    /// The file or directory named in error messages.
    fn path(&self) -> &Path;
    /// The tensor called `name`, or `None` if the checkpoint has none of that name.
    fn get(&self, name: &str) -> Result<Option<HostTensor>>;
    /// The dtype the weight matrices and embedding tables read from this source are kept in.
    fn weight_dtype(&self) -> WeightDType {
        WeightDType::F32
    }
}

/// `source` with its weight matrices and embedding tables kept in `dtype`.
pub struct InDType<'a> {
    pub source: &'a dyn TensorSource,
    pub dtype: WeightDType,
}

impl TensorSource for InDType<'_> {
    fn path(&self) -> &Path {
        self.source.path()
    }

    fn get(&self, name: &str) -> Result<Option<HostTensor>> {
        self.source.get(name)
    }

    fn weight_dtype(&self) -> WeightDType {
        self.dtype
    }
}

impl HostTensor {
    /// The transpose of a matrix (`[r, c]` → `[c, r]`).
    pub fn transposed(&self) -> HostTensor {
        let [r, c] = [self.shape[0], self.shape[1]];
        let mut data = vec![0.0; r * c];
        for (i, row) in self.data.chunks_exact(c).enumerate() {
            for (j, &x) in row.iter().enumerate() {
                data[j * r + i] = x;
            }
        }
        HostTensor { shape: vec![c, r], data }
    }

    pub fn into_tensor<B: Backend, const D: usize>(self, device: &B::Device) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(self.data, self.shape), device)
    }
}

/// Reads `name` from `source` and checks its shape.
pub fn fetch(source: &dyn TensorSource, name: &str, shape: &[usize]) -> Result<HostTensor> {
    fetch_optional(source, name, shape)?.ok_or_else(|| ModelError::MissingTensor {
        path: source.path().to_path_buf(),
        tensor: name.to_string(),
    })
}

/// Like [`fetch`], for tensors a checkpoint may leave out (an untied `lm_head`).
pub fn fetch_optional(
    source: &dyn TensorSource,
    name: &str,
    shape: &[usize],
) -> Result<Option<HostTensor>> {
    let Some(host) = source.get(name)? else { return Ok(None) };
    if host.shape != shape {
        return Err(ModelError::Shape {
            path: source.path().to_path_buf(),
            tensor: name.to_string(),
            expected: shape.to_vec(),
            found: host.shape,
        });
    }
    Ok(Some(host))
}

/// Reads `name`, checks its shape and puts it on `device`.
pub fn load_tensor<B: Backend, const D: usize>(
    source: &dyn TensorSource,
    name: &str,
    shape: [usize; D],
    device: &B::Device,
) -> Result<Tensor<B, D>> {
    Ok(fetch(source, name, &shape)?.into_tensor(device))
}

struct Shard {
    path: PathBuf,
    map: Mmap,
    header_len: usize,
    metadata: Metadata,
}

/// A Hugging Face checkpoint directory: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`. Tensors may be stored as f32, f16 or bf16.
pub struct SafetensorsSource {
    dir: PathBuf,
    shards: Vec<Shard>,
    shard_of: HashMap<String, usize>,
}

const INDEX_FILE: &str = "model.safetensors.index.json";
const SINGLE_FILE: &str = "model.safetensors";

impl SafetensorsSource {
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join(INDEX_FILE);
        let weight_map =
            if index_path.exists() { Some(read_weight_map(&index_path)?) } else { None };
        let files: Vec<PathBuf> = match &weight_map {
            Some(map) => {
                let mut names: Vec<&String> = map.values().collect();
                names.sort();
                names.dedup();
                names.into_iter().map(|f| dir.join(f)).collect()
            }
            None => vec![dir.join(SINGLE_FILE)],
        };
        let mut shards = Vec::with_capacity(files.len());
        let mut shard_of = HashMap::new();
        for path in files {
            let shard = open_shard(path)?;
            for name in shard.metadata.tensors().into_keys() {
                shard_of.insert(name, shards.len());
            }
            shards.push(shard);
        }
        // Every tensor the index promises must be in the shard it names.
        for (tensor, file) in weight_map.into_iter().flatten() {
            if !shard_of.contains_key(&tensor) {
                return Err(ModelError::MissingTensor { path: dir.join(file), tensor });
            }
        }
        Ok(Self { dir: dir.to_path_buf(), shards, shard_of })
    }

    /// The dtype every tensor is stored in (`None` if they differ or are not f32, f16 or bf16).
    pub fn stored_dtype(&self) -> Option<WeightDType> {
        let mut dtypes = self
            .shards
            .iter()
            .flat_map(|s| s.metadata.tensors().into_values().map(|info| info.dtype));
        let first = dtypes.next()?;
        if !dtypes.all(|d| d == first) {
            return None;
        }
        match first {
            Dtype::F32 => Some(WeightDType::F32),
            Dtype::F16 => Some(WeightDType::F16),
            Dtype::BF16 => Some(WeightDType::BF16),
            _ => None,
        }
    }
}

fn read_weight_map(index_path: &Path) -> Result<HashMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index_path).map_err(|e| ModelError::io(index_path, e))?;
    let index: Index = serde_json::from_str(&text)
        .map_err(|cause| ModelError::Json { path: index_path.to_path_buf(), cause })?;
    Ok(index.weight_map)
}

fn open_shard(path: PathBuf) -> Result<Shard> {
    let file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
    // SAFETY: the map is read-only and the file is not modified by this process while mapped.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
    let (header_len, metadata) = SafeTensors::read_metadata(&map)
        .map_err(|e| ModelError::format(&path, format!("not a complete safetensors file ({e})")))?;
    Ok(Shard { path, map, header_len, metadata })
}

impl TensorSource for SafetensorsSource {
    fn path(&self) -> &Path {
        &self.dir
    }

    fn get(&self, name: &str) -> Result<Option<HostTensor>> {
        let Some(&i) = self.shard_of.get(name) else { return Ok(None) };
        let shard = &self.shards[i];
        let info = shard.metadata.info(name).expect("name indexed from this shard's metadata");
        let start = 8 + shard.header_len + info.data_offsets.0;
        let bytes = &shard.map[start..8 + shard.header_len + info.data_offsets.1];
        let data = match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::UnsupportedDtype {
                    path: shard.path.clone(),
                    tensor: name.to_string(),
                    dtype: format!("{other:?}"),
                    supported: "F32, F16, BF16",
                })
            }
        };
        Ok(Some(HostTensor { shape: info.shape.clone(), data }))
    }
}
