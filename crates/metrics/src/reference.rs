//! The reference score RS (algo §8.1): TF-IDF cosine similarity between the generated texts and
//! Wikipedia snippets about other subjects that have the new object, with the vocabulary and IDF
//! weights the ROME authors fitted (`tfidf_vocab.json`, `idf.npy`) and their
//! `attribute_snippets.json`. Tokenisation follows scikit-learn's `TfidfVectorizer` defaults:
//! lower-cased runs of two or more word characters, raw counts × IDF, L2-normalised.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use editbench_editing::{EditError, Result};
use serde::Deserialize;

/// The fitted TF-IDF model and the snippets it compares against.
#[derive(Debug, Clone)]
pub struct TfIdf {
    vocab: HashMap<String, usize>,
    idf: Vec<f64>,
    /// Snippet texts by (relation id, object id).
    snippets: HashMap<(String, String), Vec<String>>,
}

/// Where the three reference files are.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceFiles {
    pub tfidf_vocab: PathBuf,
    pub idf: PathBuf,
    pub attribute_snippets: PathBuf,
}

#[derive(Deserialize)]
struct SnippetGroup {
    relation_id: String,
    target_id: String,
    samples: Vec<Snippet>,
}

#[derive(Deserialize)]
struct Snippet {
    text: String,
}

impl TfIdf {
    pub fn load(files: &ReferenceFiles) -> Result<Self> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| EditError::file(p, e));
        let vocab: HashMap<String, usize> = serde_json::from_slice(&read(&files.tfidf_vocab)?)
            .map_err(|e| EditError::file(&files.tfidf_vocab, e))?;
        let idf =
            read_npy_vector(&read(&files.idf)?).map_err(|e| EditError::file(&files.idf, e))?;
        if let Some((word, &i)) = vocab.iter().find(|(_, &i)| i >= idf.len()) {
            return Err(EditError::file(
                &files.tfidf_vocab,
                format!("`{word}` has index {i} but idf.npy has {} entries", idf.len()),
            ));
        }
        let groups: Vec<SnippetGroup> =
            serde_json::from_slice(&read(&files.attribute_snippets)?)
                .map_err(|e| EditError::file(&files.attribute_snippets, e))?;
        let mut snippets: HashMap<(String, String), Vec<String>> = HashMap::new();
        for g in groups {
            snippets
                .entry((g.relation_id, g.target_id))
                .or_default()
                .extend(g.samples.into_iter().map(|s| s.text));
        }
        Ok(Self { vocab, idf, snippets })
    }

    pub fn from_parts(
        vocab: HashMap<String, usize>,
        idf: Vec<f64>,
        snippets: HashMap<(String, String), Vec<String>>,
    ) -> Self {
        Self { vocab, idf, snippets }
    }

    /// Snippets about subjects with object `target_id` under `relation_id`.
    pub fn snippets(&self, relation_id: &str, target_id: &str) -> Option<&[String]> {
        self.snippets
            .get(&(relation_id.to_string(), target_id.to_string()))
            .map(Vec::as_slice)
            .filter(|s| !s.is_empty())
    }

    /// L2-normalised TF-IDF vector of `text`, sparse.
    fn vector(&self, text: &str) -> HashMap<usize, f64> {
        let mut v: HashMap<usize, f64> = HashMap::new();
        for word in sklearn_words(text) {
            if let Some(&i) = self.vocab.get(&word) {
                *v.entry(i).or_default() += self.idf[i];
            }
        }
        let norm = v.values().map(|x| x * x).sum::<f64>().sqrt();
        v.values_mut().for_each(|x| *x /= norm);
        v
    }

    /// Cosine similarity of the TF-IDF vectors of `a` and `b` (0 when either has no known word).
    pub fn similarity(&self, a: &str, b: &str) -> f64 {
        let (va, vb) = (self.vector(a), self.vector(b));
        va.iter().filter_map(|(i, x)| vb.get(i).map(|y| x * y)).sum()
    }
}

/// scikit-learn's default analyzer: lower case, tokens matching `(?u)\b\w\w+\b`.
fn sklearn_words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| w.chars().count() >= 2)
        .map(str::to_lowercase)
}

/// A 1-D little-endian float array from a `.npy` file (format versions 1–3).
fn read_npy_vector(bytes: &[u8]) -> std::result::Result<Vec<f64>, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header =
        std::str::from_utf8(bytes.get(start..start + header_len).ok_or("truncated header")?)
            .map_err(|e| e.to_string())?;
    let data = &bytes[start + header_len..];
    if header.contains("'fortran_order': True") {
        return Err("fortran-ordered arrays are not supported".into());
    }
    let width = if header.contains("'<f8'") {
        8
    } else if header.contains("'<f4'") {
        4
    } else {
        return Err(format!("expected a little-endian float array, header {header}"));
    };
    if !data.len().is_multiple_of(width) {
        return Err("data length is not a multiple of the element size".into());
    }
    Ok(data
        .chunks_exact(width)
        .map(|c| {
            if width == 8 {
                f64::from_le_bytes(c.try_into().expect("8 bytes"))
            } else {
                f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(values: &[f64]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({},), }}", values.len());
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        values.iter().for_each(|v| out.extend(v.to_le_bytes()));
        out
    }

    #[test]
    fn npy_vectors_round_trip() {
        assert_eq!(read_npy_vector(&npy(&[1.5, -2.0, 3.25])).unwrap(), [1.5, -2.0, 3.25]);
        assert!(read_npy_vector(b"not numpy").is_err());
    }

    #[test]
    fn tfidf_cosine_by_hand() {
        // vocab: paris 0 (idf 2), france 1 (idf 1), capital 2 (idf 3); "a" is too short to count.
        let vocab =
            [("paris", 0), ("france", 1), ("capital", 2)].map(|(w, i)| (w.to_string(), i)).into();
        let t = TfIdf::from_parts(vocab, vec![2.0, 1.0, 3.0], HashMap::new());
        // a = "Paris, France a": (2, 1, 0)/√5; b = "capital of FRANCE": (0, 1, 3)/√10.
        let expected = 1.0 / (5f64.sqrt() * 10f64.sqrt());
        assert!((t.similarity("Paris, France a", "capital of FRANCE") - expected).abs() < 1e-12);
        assert!((t.similarity("paris paris", "Paris") - 1.0).abs() < 1e-12);
        assert_eq!(t.similarity("nothing known", "Paris"), 0.0);
    }
}
