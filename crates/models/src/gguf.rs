//! A small reader for GGUF files (llama.cpp's format): metadata, tensor directory, and
//! dequantisation of F32, F16, BF16, Q8_0, Q4_0 and Q4_1 tensors to f32.
//!
//! Tensors are served under their Hugging Face LLaMA names, with the query/key rows un-permuted
//! from llama.cpp's layout back to Hugging Face's.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

use crate::error::{ModelError, Result};
use crate::layers::RopeScaling;
use crate::llama::LlamaConfig;
use crate::weights::{HostTensor, TensorSource};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Uint(u64),
    Int(i64),
    Float(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

/// ggml tensor types this reader dequantises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
}

impl GgmlType {
    fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block).
    fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q8_0 => (32, 34),
        }
    }
}

#[derive(Debug, Clone)]
struct TensorInfo {
    /// Row-major shape (GGUF lists dimensions innermost first; this is reversed).
    shape: Vec<usize>,
    kind: GgmlType,
    start: usize,
    len: usize,
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    pub metadata: HashMap<String, Value>,
    tensors: HashMap<String, TensorInfo>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            ModelError::format(
                self.path,
                format!(
                    "truncated: needs {n} bytes at offset {}, file has {}",
                    self.pos,
                    self.bytes.len()
                ),
            )
        })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn len(&mut self) -> Result<usize> {
        let n = self.u64()?;
        usize::try_from(n).ok().filter(|&n| n <= self.bytes.len()).ok_or_else(|| {
            ModelError::format(
                self.path,
                format!(
                    "truncated or corrupt: length {n} at offset {} exceeds the file size {}",
                    self.pos,
                    self.bytes.len()
                ),
            )
        })
    }
    fn string(&mut self) -> Result<String> {
        let n = self.len()?;
        let raw = self.take(n)?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| ModelError::format(self.path, "a string is not UTF-8"))
    }
    fn value(&mut self, kind: u32) -> Result<Value> {
        Ok(match kind {
            0 => Value::Uint(self.take(1)?[0] as u64),
            1 => Value::Int(self.take(1)?[0] as i8 as i64),
            2 => Value::Uint(u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as u64),
            3 => Value::Int(i16::from_le_bytes(self.take(2)?.try_into().expect("2")) as i64),
            4 => Value::Uint(self.u32()? as u64),
            5 => Value::Int(self.u32()? as i32 as i64),
            6 => Value::Float(f32::from_bits(self.u32()?) as f64),
            7 => Value::Bool(self.take(1)?[0] != 0),
            8 => Value::String(self.string()?),
            9 => {
                let inner = self.u32()?;
                let n = self.len()?;
                (0..n).map(|_| self.value(inner)).collect::<Result<Vec<_>>>().map(Value::Array)?
            }
            10 => Value::Uint(self.u64()?),
            11 => Value::Int(self.u64()? as i64),
            12 => Value::Float(f64::from_bits(self.u64()?)),
            other => {
                return Err(ModelError::format(self.path, format!("unknown metadata type {other}")))
            }
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: read-only map of a file this process does not modify.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        let mut c = Cursor { bytes: &map, pos: 0, path };
        if c.take(4)? != b"GGUF" {
            return Err(ModelError::format(path, "not a GGUF file (bad magic)"));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::format(
                path,
                format!("GGUF version {version} is not supported (2 or 3)"),
            ));
        }
        let n_tensors = c.len()?;
        let n_kv = c.len()?;
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let kind = c.u32()?;
            metadata.insert(key, c.value(kind)?);
        }
        let mut raw = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            let dims = (0..n_dims).map(|_| c.len()).collect::<Result<Vec<_>>>()?;
            let kind = c.u32()?;
            let offset = c.len()?;
            raw.push((name, dims, kind, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            Some(Value::Uint(a)) if *a > 0 => *a as usize,
            _ => 32,
        };
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let mut tensors = HashMap::new();
        for (name, dims, kind_id, offset) in raw {
            let kind = GgmlType::from_id(kind_id).ok_or_else(|| ModelError::UnsupportedDtype {
                path: path.to_path_buf(),
                tensor: name.clone(),
                dtype: format!("ggml type {kind_id}"),
                supported: "F32, F16, BF16, Q8_0, Q4_0, Q4_1",
            })?;
            let count: usize = dims.iter().product();
            let (per_block, block_bytes) = kind.block();
            if !count.is_multiple_of(per_block) {
                return Err(ModelError::format(path, format!("tensor `{name}` has {count} elements, not a multiple of the block size {per_block}")));
            }
            let len = count / per_block * block_bytes;
            let start = data_start + offset;
            if start + len > map.len() {
                return Err(ModelError::format(
                    path,
                    format!(
                        "truncated: tensor `{name}` needs bytes {start}..{} of {}",
                        start + len,
                        map.len()
                    ),
                ));
            }
            tensors.insert(
                name,
                TensorInfo { shape: dims.into_iter().rev().collect(), kind, start, len },
            );
        }
        Ok(Self { path: path.to_path_buf(), map, metadata, tensors })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn field(&self, key: &str) -> Result<&Value> {
        self.metadata.get(key).ok_or_else(|| ModelError::config(&self.path, key, "missing"))
    }

    pub fn string(&self, key: &str) -> Result<&str> {
        match self.field(key)? {
            Value::String(s) => Ok(s),
            other => Err(ModelError::config(
                &self.path,
                key,
                format!("expected a string, found {other:?}"),
            )),
        }
    }

    pub fn uint(&self, key: &str) -> Result<u64> {
        match self.field(key)? {
            Value::Uint(v) => Ok(*v),
            Value::Int(v) if *v >= 0 => Ok(*v as u64),
            other => Err(ModelError::config(
                &self.path,
                key,
                format!("expected an unsigned integer, found {other:?}"),
            )),
        }
    }

    pub fn float(&self, key: &str) -> Result<f64> {
        match self.field(key)? {
            Value::Float(v) => Ok(*v),
            other => Err(ModelError::config(
                &self.path,
                key,
                format!("expected a float, found {other:?}"),
            )),
        }
    }

    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        match self.field(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(ModelError::config(
                        &self.path,
                        key,
                        format!("expected strings, found {other:?}"),
                    )),
                })
                .collect(),
            other => Err(ModelError::config(
                &self.path,
                key,
                format!("expected an array, found {other:?}"),
            )),
        }
    }

    /// The tensor as stored in the file (GGUF name), dequantised.
    pub fn tensor(&self, name: &str) -> Result<Option<HostTensor>> {
        let Some(info) = self.tensors.get(name) else { return Ok(None) };
        let data = dequantize(info.kind, &self.map[info.start..info.start + info.len]);
        Ok(Some(HostTensor { shape: info.shape.clone(), data }))
    }

    /// The LLaMA configuration stored in the metadata (`general.architecture = llama`).
    pub fn llama_config(&self) -> Result<LlamaConfig> {
        let arch = self.string("general.architecture")?;
        if arch != "llama" {
            return Err(ModelError::UnknownArchitecture {
                path: self.path.clone(),
                found: arch.to_string(),
                supported: "llama",
            });
        }
        let u = |k: &str| self.uint(&format!("llama.{k}")).map(|v| v as usize);
        let hidden_size = u("embedding_length")?;
        let num_heads = u("attention.head_count")?;
        let num_kv_heads = u("attention.head_count_kv").unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(ModelError::config(
                &self.path,
                "llama.attention.head_count_kv",
                format!("{num_kv_heads} does not divide {num_heads}"),
            ));
        }
        // Rescaled rotary frequencies (a scaling type, or LLaMA-3's `rope_freqs` factors) would
        // change the math; they are refused rather than ignored.
        if let Some(kind) = self.string("llama.rope.scaling.type").ok().filter(|k| *k != "none") {
            return Err(ModelError::config(
                &self.path,
                "llama.rope.scaling.type",
                format!(
                    "`{kind}` is not supported in GGUF files (use the Hugging Face checkpoint)"
                ),
            ));
        }
        if self.tensors.contains_key("rope_freqs.weight") {
            return Err(ModelError::config(&self.path, "rope_freqs.weight", "LLaMA-3 frequency scaling is not supported in GGUF files (use the Hugging Face checkpoint)"));
        }
        let embed =
            self.tensors.get("token_embd.weight").ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: "token_embd.weight".into(),
            })?;
        Ok(LlamaConfig {
            vocab_size: embed.shape[0],
            hidden_size,
            intermediate_size: u("feed_forward_length")?,
            num_layers: u("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim: u("rope.dimension_count").unwrap_or(hidden_size / num_heads),
            rms_norm_eps: self.float("llama.attention.layer_norm_rms_epsilon")?,
            rope_theta: self.float("llama.rope.freq_base").unwrap_or(10_000.0),
            rope_scaling: RopeScaling::None,
            max_position_embeddings: u("context_length")?,
            tie_word_embeddings: !self.tensors.contains_key("output.weight"),
            attention_bias: self.tensors.contains_key("blk.0.attn_q.bias"),
            output_bias: self.tensors.contains_key("blk.0.attn_output.bias"),
            mlp_bias: self.tensors.contains_key("blk.0.ffn_down.bias"),
            sliding_window: None,
        })
    }
}

/// Dequantises `bytes` of ggml type `kind` (block layouts as in ggml's `ggml-common.h`).
pub fn dequantize(kind: GgmlType, bytes: &[u8]) -> Vec<f32> {
    let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    match kind {
        GgmlType::F32 => {
            bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        }
        GgmlType::F16 => bytes.chunks_exact(2).map(half).collect(),
        GgmlType::BF16 => {
            bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
        }
        // d: f16, then 32 signed bytes; x = d·q.
        GgmlType::Q8_0 => bytes
            .chunks_exact(34)
            .flat_map(|b| {
                let d = half(b);
                b[2..].iter().map(move |&q| d * (q as i8) as f32)
            })
            .collect(),
        // d: f16, 16 bytes of nibbles; low nibbles are elements 0..16, high nibbles 16..32; x = d·(q − 8).
        GgmlType::Q4_0 => nibbles(bytes, 18, |b| (half(b), -8.0 * half(b))),
        // d, m: f16, 16 bytes of nibbles; x = d·q + m.
        GgmlType::Q4_1 => nibbles(bytes, 20, |b| (half(b), half(&b[2..]))),
    }
}

/// 4-bit blocks of 32 elements: `scale_and_min` reads (d, m) from the block header, x = d·q + m.
fn nibbles(bytes: &[u8], block: usize, scale_and_min: impl Fn(&[u8]) -> (f32, f32)) -> Vec<f32> {
    let mut out = Vec::with_capacity(bytes.len() / block * 32);
    for b in bytes.chunks_exact(block) {
        let (d, m) = scale_and_min(b);
        let qs = &b[block - 16..];
        out.extend(qs.iter().map(|&q| d * (q & 0x0F) as f32 + m));
        out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
    }
    out
}

/// Undoes llama.cpp's reordering of query/key rows: within each head, GGUF interleaves the two
/// rotary halves (row `2j + s` holds Hugging Face row `s·hd/2 + j`).
pub fn unpermute_rows(t: &HostTensor, heads: usize) -> HostTensor {
    let [rows, cols] = [t.shape[0], t.shape[1]];
    let hd = rows / heads;
    let mut data = vec![0.0; t.data.len()];
    for h in 0..heads {
        for j in 0..hd / 2 {
            for s in 0..2 {
                let src = (h * hd + 2 * j + s) * cols;
                let dst = (h * hd + s * hd / 2 + j) * cols;
                data[dst..dst + cols].copy_from_slice(&t.data[src..src + cols]);
            }
        }
    }
    HostTensor { shape: t.shape.clone(), data }
}

/// A GGUF LLaMA file seen through Hugging Face tensor names.
pub struct GgufLlamaSource<'a> {
    pub file: &'a GgufFile,
    pub num_heads: usize,
    pub num_kv_heads: usize,
}

/// The GGUF name of a Hugging Face LLaMA tensor.
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let short = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{short}.{kind}"))
}

impl TensorSource for GgufLlamaSource<'_> {
    fn path(&self) -> &Path {
        self.file.path()
    }

    fn get(&self, name: &str) -> Result<Option<HostTensor>> {
        let Some(gguf) = gguf_name(name) else { return Ok(None) };
        let Some(t) = self.file.tensor(&gguf)? else { return Ok(None) };
        Ok(Some(match gguf.rsplit('.').nth(1) {
            Some("attn_q") if t.shape.len() == 2 => unpermute_rows(&t, self.num_heads),
            Some("attn_k") if t.shape.len() == 2 => unpermute_rows(&t, self.num_kv_heads),
            _ => t,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q8_0_is_scale_times_signed_byte() {
        let mut block = f16_bytes(0.5).to_vec();
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let x = dequantize(GgmlType::Q8_0, &block);
        assert_eq!(x.len(), 32);
        assert_eq!(x[0], -8.0);
        assert_eq!(x[31], 7.5);
    }

    #[test]
    fn q4_blocks_put_low_nibbles_first() {
        let qs: Vec<u8> = (0..16).map(|i| (i as u8) | ((15 - i as u8) << 4)).collect();
        let mut q4_0 = f16_bytes(2.0).to_vec();
        q4_0.extend(&qs);
        let x = dequantize(GgmlType::Q4_0, &q4_0);
        assert_eq!(&x[..3], &[-16.0, -14.0, -12.0]);
        assert_eq!(x[16], 14.0);
        let mut q4_1 = f16_bytes(0.25).to_vec();
        q4_1.extend(f16_bytes(-1.0));
        q4_1.extend(&qs);
        let x = dequantize(GgmlType::Q4_1, &q4_1);
        assert_eq!(x[1], -0.75);
        assert_eq!(x[16], 2.75);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: reshape(heads, 2, hd/2, cols).swapaxes(1, 2); HF row s·hd/2 + j → GGUF row 2j + s.
        let (heads, hd, cols) = (2, 4, 3);
        let hf: Vec<f32> = (0..heads * hd * cols).map(|x| x as f32).collect();
        let mut gguf = vec![0.0; hf.len()];
        for h in 0..heads {
            for s in 0..2 {
                for j in 0..hd / 2 {
                    let src = (h * hd + s * hd / 2 + j) * cols;
                    let dst = (h * hd + 2 * j + s) * cols;
                    gguf[dst..dst + cols].copy_from_slice(&hf[src..src + cols]);
                }
            }
        }
        let back = unpermute_rows(&HostTensor { shape: vec![heads * hd, cols], data: gguf }, heads);
        assert_eq!(back.data, hf);
    }

    #[test]
    fn hf_names_map_to_gguf_names() {
        assert_eq!(
            gguf_name("model.layers.7.mlp.down_proj.weight").as_deref(),
            Some("blk.7.ffn_down.weight")
        );
        assert_eq!(
            gguf_name("model.layers.0.self_attn.o_proj.weight").as_deref(),
            Some("blk.0.attn_output.weight")
        );
        assert_eq!(gguf_name("lm_head.weight").as_deref(), Some("output.weight"));
        assert_eq!(gguf_name("model.layers.0.mlp.nope.weight"), None);
    }
}
