//! Second-moment statistics `C = E[k kᵀ]` of the keys entering the edited projection (algo §2),
//! from a text corpus: one pass collects every requested layer and stops at the highest; batches
//! are length-sorted so little padding is computed, and padded positions never enter `C`. Per
//! batch the lower block triangle of `KᵀK` is computed by GEMMs on the backend; the running sum is
//! kept in f64 on the host, added in batch order. On the CPU backend batches run side by side
//! ([`concurrent_passes`]).
//!
//! Results are cached as safetensors keyed by the model's weights, layer, corpus, sample count and
//! maximum length; a cache whose key or checksum does not match is recomputed, never used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use editbench_models::backend::{concurrent_passes, side_by_side};
use editbench_models::{Hooks, LanguageModel, Padding, WeightDType};
use faer::Mat;
use indicatif::{ProgressBar, ProgressStyle};
use safetensors::tensor::{Dtype, TensorView};
use sha2::{Digest, Sha256};

use crate::error::{EditError, Result};
use crate::hparams::{Sampler, Samples, StatsHparams};
use crate::keys::host;
use crate::tensor_file::{f64_bytes, f64_matrix, write_atomic};
use editbench_datasets::rng::{PythonRandom, SplitMix64};

/// Bump when the statistics' definition changes, so old caches are not used.
const CACHE_VERSION: u32 = 1;

/// `Σ k kᵀ` and the number of keys, for one layer.
#[derive(Debug, Clone)]
pub struct KeyMoments {
    pub sum: Mat<f64>,
    pub count: u64,
}

impl KeyMoments {
    /// `C = Σ k kᵀ / N` (uncentred).
    pub fn covariance(&self) -> Mat<f64> {
        &self.sum * faer::Scale(1.0 / self.count as f64)
    }
}

/// Where statistics come from and where they are cached.
#[derive(Debug, Clone)]
pub struct StatsSource {
    pub corpus: PathBuf,
    pub hparams: StatsHparams,
    /// `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

/// SHA-256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    editbench_datasets::file_sha256(path).map_err(|e| EditError::file(path, e))
}

/// A hash of a model's weights: the file itself, or every file of a checkpoint directory.
pub fn model_sha256(path: &Path) -> Result<String> {
    if !path.is_dir() {
        return file_sha256(path);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| EditError::file(path, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "safetensors")
                || p.file_name().is_some_and(|n| n == "config.json")
        })
        .collect();
    files.sort();
    let mut hasher = Sha256::new();
    for f in files {
        hasher.update(file_sha256(&f)?.as_bytes());
    }
    Ok(hex::encode(hasher.finalize()))
}

impl StatsSource {
    /// The moments of every layer in `layers`, from the cache where valid, computed otherwise
    /// (all missing layers in one pass over the corpus).
    pub fn moments<B: Backend>(
        &self,
        model: &LanguageModel<B>,
        layers: &[usize],
    ) -> Result<BTreeMap<usize, KeyMoments>> {
        let keys = self.cache_keys(model, layers)?;
        let mut found = BTreeMap::new();
        let mut missing = Vec::new();
        for (&layer, key) in layers.iter().zip(&keys) {
            match self.cache_path(key).filter(|p| p.exists()).map(|p| read_cache(&p, key)) {
                Some(Ok(m)) => {
                    tracing::info!("layer {layer}: key statistics from cache ({} tokens)", m.count);
                    found.insert(layer, m);
                }
                Some(Err(why)) => {
                    tracing::warn!("layer {layer}: statistics cache not used ({why}); recomputing");
                    missing.push(layer);
                }
                None => missing.push(layer),
            }
        }
        if !missing.is_empty() {
            let computed = collect_moments(model, &missing, &self.corpus, &self.hparams)?;
            for (layer, m) in computed {
                let key = &keys[layers.iter().position(|&l| l == layer).expect("requested layer")];
                if let Some(path) = self.cache_path(key) {
                    write_cache(&path, key, &m)?;
                }
                found.insert(layer, m);
            }
        }
        Ok(found)
    }

    /// One JSON description per layer of everything the statistics depend on.
    pub fn cache_keys<B: Backend>(
        &self,
        model: &LanguageModel<B>,
        layers: &[usize],
    ) -> Result<Vec<String>> {
        let model_hash = model_sha256(&model.path)?;
        let corpus_hash = file_sha256(&self.corpus)?;
        Ok(layers
            .iter()
            .map(|layer| {
                let mut key = serde_json::json!({
                    "version": CACHE_VERSION, "model_sha256": model_hash, "layer": layer, "corpus_sha256": corpus_hash,
                    "samples": self.hparams.samples, "max_length": self.hparams.max_length, "seed": self.hparams.seed,
                    "sampler": self.hparams.sampler.to_string(), "accumulation": "f64",
                });
                if matches!(self.hparams.samples, Samples::Auto(_)) {
                    key["keys_per_dim"] = self.hparams.keys_per_dim.into();
                }
                // Only for half-precision weights, so every f32 cache stays valid.
                if model.dtype() != WeightDType::F32 {
                    key["weight_dtype"] = serde_json::json!(model.dtype());
                }
                key.to_string()
            })
            .collect())
    }

    fn cache_path(&self, key: &str) -> Option<PathBuf> {
        let digest = hex::encode(Sha256::digest(key.as_bytes()));
        self.cache_dir.as_ref().map(|dir| dir.join(format!("stats-{}.safetensors", &digest[..24])))
    }
}

fn read_cache(path: &Path, key: &str) -> std::result::Result<KeyMoments, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| format!("corrupt file: {e}"))?;
    let meta = metadata.metadata().as_ref().ok_or("no metadata")?;
    if meta.get("key").map(String::as_str) != Some(key) {
        return Err("written for other settings".into());
    }
    let st =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| format!("corrupt file: {e}"))?;
    let view = st.tensor("sum").map_err(|e| e.to_string())?;
    if hex::encode(Sha256::digest(view.data())) != *meta.get("checksum").ok_or("no checksum")? {
        return Err("checksum mismatch".into());
    }
    let count = meta.get("count").and_then(|c| c.parse().ok()).ok_or("no count")?;
    Ok(KeyMoments { sum: f64_matrix(view.shape()[0], view.shape()[1], view.data()), count })
}

fn write_cache(path: &Path, key: &str, m: &KeyMoments) -> Result<()> {
    let bytes = f64_bytes(&m.sum);
    let checksum = hex::encode(Sha256::digest(&bytes));
    let view = TensorView::new(Dtype::F64, vec![m.sum.nrows(), m.sum.ncols()], &bytes)
        .expect("shape matches the data");
    let metadata = std::collections::HashMap::from([
        ("key".to_string(), key.to_string()),
        ("count".to_string(), m.count.to_string()),
        ("checksum".to_string(), checksum),
    ]);
    write_atomic(path, [("sum".to_string(), view)], metadata)
}

/// The texts of a corpus file: a `.jsonl` file (what Hugging Face `datasets` writes with
/// `to_json`) or a `.json` array holds one object per text with a `text` field; any other file one
/// text per line.
pub fn corpus_texts(corpus: &Path) -> Result<Vec<String>> {
    let content = std::fs::read_to_string(corpus).map_err(|e| EditError::file(corpus, e))?;
    let field = |v: &serde_json::Value, at: String| {
        v.get("text")
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| EditError::file(corpus, format!("{at}: no string field `text`")))
    };
    match corpus.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => content
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                let v: serde_json::Value = serde_json::from_str(l)
                    .map_err(|e| EditError::file(corpus, format!("line {}: {e}", i + 1)))?;
                field(&v, format!("line {}", i + 1))
            })
            .collect(),
        Some("json") => {
            let items: Vec<serde_json::Value> = serde_json::from_str(&content).map_err(|e| {
                EditError::file(
                    corpus,
                    format!("expected a JSON array of {{\"text\": ...}} objects: {e}"),
                )
            })?;
            items.iter().enumerate().map(|(i, v)| field(v, format!("record {i}"))).collect()
        }
        _ => Ok(content.lines().map(|l| l.trim_end_matches('\r').to_string()).collect()),
    }
}

/// The corpus's paragraphs: its non-empty texts, in file order.
pub fn paragraphs(corpus: &Path) -> Result<Vec<String>> {
    let texts: Vec<String> =
        corpus_texts(corpus)?.into_iter().filter(|l| !l.trim().is_empty()).collect();
    if texts.is_empty() {
        return Err(EditError::file(corpus, "no non-empty texts"));
    }
    Ok(texts)
}

/// Indices of the paragraphs the statistics may read, in the sampler's order: a shuffle of all
/// `n` indices, the first `samples` of it (all of it with `samples: auto`, which stops on its own).
pub fn sampled_indices(n: usize, h: &StatsHparams) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    match h.sampler {
        Sampler::Seeded => SplitMix64::new(h.seed).shuffle(&mut order),
        Sampler::Reference => PythonRandom::new(REFERENCE_SAMPLER_SEED).shuffle(&mut order),
    }
    if let Samples::Count(samples) = h.samples {
        order.truncate(samples);
    }
    order
}

/// The seed of the official code's `FixedRandomSubsetSampler`.
const REFERENCE_SAMPLER_SEED: u64 = 1;

/// The sampled paragraphs, tokenized and truncated, longest first.
fn sampled_paragraphs<B: Backend>(
    model: &LanguageModel<B>,
    corpus: &Path,
    h: &StatsHparams,
) -> Result<Vec<Vec<u32>>> {
    let texts = paragraphs(corpus)?;
    let lines: Vec<&str> =
        sampled_indices(texts.len(), h).into_iter().map(|i| texts[i].as_str()).collect();
    let tokenizer = model.tokenizer()?;
    let max_length = h.max_length.min(model.dims.max_positions);
    // With `auto`, paragraphs are taken in order until the keys wanted are there.
    let wanted = match h.samples {
        Samples::Count(_) => usize::MAX,
        Samples::Auto(_) => (h.keys_per_dim * model.dims.intermediate_size as f64).ceil() as usize,
    };
    let (mut seqs, mut tokens) = (Vec::new(), 0);
    for line in &lines {
        if tokens >= wanted {
            break;
        }
        let mut ids = tokenizer.encode(line)?;
        ids.truncate(max_length);
        tokens += ids.len();
        seqs.push(ids);
    }
    if tokens < wanted && wanted != usize::MAX {
        tracing::warn!("{}: the whole corpus gives {tokens} keys, fewer than the {wanted} `samples: auto` wants", corpus.display());
    }
    seqs.sort_by_key(|s| std::cmp::Reverse(s.len()));
    Ok(seqs)
}

/// Consecutive runs of (length-sorted) sequences whose padded size stays within `budget` tokens.
fn pack(seqs: &[Vec<u32>], budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut batches = Vec::new();
    let mut start = 0;
    while start < seqs.len() {
        let width = seqs[start].len();
        let n = (budget / width.max(1)).max(1);
        let end = (start + n).min(seqs.len());
        batches.push(start..end);
        start = end;
    }
    batches
}

/// One pass over the corpus accumulating `Σ k kᵀ` for every layer in `layers`.
pub fn collect_moments<B: Backend>(
    model: &LanguageModel<B>,
    layers: &[usize],
    corpus: &Path,
    h: &StatsHparams,
) -> Result<BTreeMap<usize, KeyMoments>> {
    let seqs = sampled_paragraphs(model, corpus, h)?;
    let total: u64 = seqs.iter().map(|s| s.len() as u64).sum();
    let d = model.dims.intermediate_size;
    let mut sums: BTreeMap<usize, Vec<f64>> =
        layers.iter().map(|&l| (l, vec![0.0; d * d])).collect();
    let bar = ProgressBar::new(total).with_message(format!("key statistics, layers {layers:?}"));
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} tokens, {per_sec}, eta {eta}")
            .expect("valid template"),
    );
    let started = Instant::now();
    let grams_of =
        |range: &std::ops::Range<usize>| batch_grams(model, &seqs[range.clone()], layers);
    side_by_side(
        &pack(&seqs, h.batch_tokens),
        concurrent_passes::<B>(&model.device()),
        grams_of,
        |range, grams| {
            for (layer, blocks) in grams {
                add_lower_gram(&blocks, sums.get_mut(&layer).expect("a requested layer"));
            }
            bar.inc(seqs[range.clone()].iter().map(Vec::len).sum::<usize>() as u64);
        },
    )?;
    bar.finish_and_clear();
    tracing::info!(
        "key statistics for layers {layers:?}: {total} tokens in {:.1} s ({:.0} tokens/s)",
        started.elapsed().as_secs_f64(),
        total as f64 / started.elapsed().as_secs_f64()
    );
    Ok(sums
        .into_iter()
        .map(|(l, s)| {
            (
                l,
                KeyMoments {
                    sum: Mat::from_fn(d, d, |i, j| s[i.max(j) * d + i.min(j)]),
                    count: total,
                },
            )
        })
        .collect())
}

/// Row blocks the Gram matrix `KᵀK` of a batch is computed in: block `i` (rows `i·d/n..(i+1)·d/n`)
/// against the columns up to its end, i.e. the lower block triangle, 10/16 of the full product's
/// FLOPs for 4 blocks. The upper triangle is the mirror image.
const GRAM_BLOCKS: usize = 4;

/// The non-empty row blocks of a `d × d` Gram matrix.
fn gram_blocks(d: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let bound = move |i: usize| i * d / GRAM_BLOCKS;
    (0..GRAM_BLOCKS).map(move |i| bound(i)..bound(i + 1)).filter(|rows| !rows.is_empty())
}

/// FLOPs [`lower_gram`] spends per key of dimension `d`.
pub fn gram_flops_per_key(d: usize) -> f64 {
    gram_blocks(d).map(|rows| 2.0 * (rows.len() * rows.end) as f64).sum()
}

/// One forward pass over `seqs`: for each of `layers`, [`lower_gram`] of its keys at the real
/// (not padding) tokens.
fn batch_grams<B: Backend>(
    model: &LanguageModel<B>,
    seqs: &[Vec<u32>],
    layers: &[usize],
) -> Result<Vec<(usize, LowerGram)>> {
    let batch = model.batch(seqs, Padding::Right)?;
    let trace = model.forward(&batch, &Hooks::capture_only(layers));
    let ([b, t], d) = (batch.ids.dims(), model.dims.intermediate_size);
    let real: Vec<i64> =
        (0..b * t).filter(|i| (i % t) < batch.lengths[i / t]).map(|i| i as i64).collect();
    let count = real.len();
    let real = Tensor::<B, 1, Int>::from_data(TensorData::new(real, [count]), &model.device());
    layers
        .iter()
        .map(|&layer| {
            Ok((
                layer,
                lower_gram(
                    trace.layers[&layer].key.clone().reshape([b * t, d]).select(0, real.clone()),
                )?,
            ))
        })
        .collect()
}

/// The lower block triangle of `KᵀK` (`K: [n, d]`), as `(rows, values)` per row block: rows
/// `rows` against columns `0..rows.end`, row-major.
struct LowerGram {
    d: usize,
    blocks: Vec<(std::ops::Range<usize>, Vec<f32>)>,
}

/// [`LowerGram`] of `keys: [n, d]`, computed on the backend, read back to the host.
fn lower_gram<B: Backend>(keys: Tensor<B, 2>) -> Result<LowerGram> {
    let [n, d] = keys.dims();
    let blocks = gram_blocks(d)
        .map(|rows| {
            let left = keys.clone().slice([0..n, rows.clone()]).transpose();
            Ok((rows.clone(), host(left.matmul(keys.clone().slice([0..n, 0..rows.end])))?))
        })
        .collect::<Result<_>>()?;
    Ok(LowerGram { d, blocks })
}

/// Adds `gram` to `sum` (`d × d`, row-major, f64); entries above the block diagonal are left
/// alone and must be read from below.
fn add_lower_gram(gram: &LowerGram, sum: &mut [f64]) {
    let d = gram.d;
    for (rows, block) in &gram.blocks {
        for (r, values) in rows.clone().zip(block.chunks(rows.end)) {
            for (s, &g) in sum[r * d..r * d + rows.end].iter_mut().zip(values) {
                *s += g as f64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The lower block triangle of two batches' Grams, read as a symmetric matrix, equals
        /// `Σ KᵀK` computed entry by entry, whatever `d` (divisible by the block count or not).
        #[test]
        fn lower_block_gram_equals_the_full_product(n in 1usize..9, d in 1usize..11, seed in 0u64..1000) {
            let mut rng = SplitMix64::new(seed);
            let batches: Vec<Vec<f32>> = (0..2).map(|_| (0..n * d).map(|_| rng.next_f64() as f32 - 0.5).collect()).collect();
            let mut sum = vec![0.0; d * d];
            for keys in &batches {
                let keys = Tensor::<editbench_models::backend::Cpu, 2>::from_data(TensorData::new(keys.clone(), [n, d]), &Default::default());
                add_lower_gram(&lower_gram(keys).unwrap(), &mut sum);
            }
            for (i, j) in (0..d).flat_map(|i| (0..d).map(move |j| (i, j))) {
                let exact: f64 = batches.iter().flat_map(|k| (0..n).map(move |r| k[r * d + i] as f64 * k[r * d + j] as f64)).sum();
                proptest::prop_assert!((sum[i.max(j) * d + i.min(j)] - exact).abs() < 1e-5, "({i}, {j})");
            }
        }
    }

    #[test]
    fn corpora_as_lines_json_lines_and_json_arrays() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        assert_eq!(corpus_texts(&write("a.txt", "one\r\ntwo\n")).unwrap(), ["one", "two"]);
        assert_eq!(
            corpus_texts(&write(
                "b.jsonl",
                "{\"text\": \"one\", \"id\": 1}\n\n{\"text\": \"two\"}\n"
            ))
            .unwrap(),
            ["one", "two"]
        );
        assert_eq!(corpus_texts(&write("c.json", "[{\"text\": \"one\"}]")).unwrap(), ["one"]);
        let err = corpus_texts(&write("d.jsonl", "{\"text\": \"one\"}\n{\"title\": 2}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("d.jsonl: line 2: no string field `text`"), "{err}");
        let err = corpus_texts(&write("e.jsonl", "{oops\n")).unwrap_err().to_string();
        assert!(err.contains("e.jsonl: line 1: key must be a string"), "{err}");
    }

    #[test]
    fn the_reference_sampler_visits_paragraphs_in_the_official_order() {
        let h = StatsHparams {
            samples: Samples::Count(2000),
            sampler: Sampler::Reference,
            ..StatsHparams::default()
        };
        let order = sampled_indices(10_033, &h);
        assert_eq!(order.len(), 2000);
        assert_eq!(order[..10], [5820, 5297, 5591, 7577, 9552, 6372, 563, 1527, 4713, 6346]);
        let seeded = sampled_indices(
            10_033,
            &StatsHparams { samples: Samples::Count(2000), ..StatsHparams::default() },
        );
        assert_ne!(seeded[..10], order[..10]);
    }

    #[test]
    fn packing_keeps_batches_within_budget_and_covers_everything() {
        let seqs: Vec<Vec<u32>> = [9, 7, 7, 4, 2, 1].iter().map(|&n| vec![0; n]).collect();
        let batches = pack(&seqs, 16);
        assert_eq!(batches.iter().map(|r| r.len()).sum::<usize>(), 6);
        for r in &batches {
            assert!(r.len() == 1 || r.len() * seqs[r.start].len() <= 16, "{r:?}");
        }
    }

    #[test]
    fn cache_round_trips_and_rejects_other_keys_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.safetensors");
        let m = KeyMoments { sum: Mat::from_fn(3, 3, |i, j| (i * 3 + j) as f64 + 0.25), count: 7 };
        write_cache(&path, "k1", &m).unwrap();
        let back = read_cache(&path, "k1").unwrap();
        assert_eq!(back.count, 7);
        assert_eq!(back.sum, m.sum);
        assert!(read_cache(&path, "k2").unwrap_err().contains("other settings"));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xFF;
        std::fs::write(&path, bytes).unwrap();
        assert!(read_cache(&path, "k1").unwrap_err().contains("checksum"));
    }
}
