//! Reading records from the three JSON layouts in use, with errors that name the file, the record
//! and the field.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};
use crate::record::{Dataset, DatasetKind, Probe, Record, Rewrite};

/// The JSON layout of a records file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// ROME's CounterFact / multi-CounterFact records (`requested_rewrite`, `paraphrase_prompts`, …).
    Rome,
    /// MEND's zsRE records (`src`, `answers`, `rephrase`, `loc`, `loc_ans`).
    Mend,
    /// EasyEdit's flat records (`prompt`, `target_new`, `ground_truth`, `rephrase_prompt`,
    /// `locality_prompt`, `locality_ground_truth`, `subject`).
    Easyedit,
    /// QAEdit's records (`id`, `prompt`, `target`, `subject`, `rephrase`, `locality`: a list of
    /// `{loc, loc_ans}`); `case_id` is a record's position in the file, as `id` repeats.
    Qaedit,
}

/// A records file and how to read it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSource {
    pub kind: DatasetKind,
    pub path: PathBuf,
    /// Detected from the first record when absent.
    #[serde(default)]
    pub format: Option<Format>,
    /// When given, the file must have this SHA-256.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// Published checksums of known files, by file name: a file with one of these names and another
/// hash is reported (it is not the published file).
const PUBLISHED: [(&str, &str); 4] = [
    ("counterfact.json", "d017056125178a13728594e66a801357a8db9ed7973a7425554bb4271de9fc6f"),
    ("counterfact_dev.json", "73ae24aca529de3d6c72841095d6e140b84d3d7e35618f7406979182479b38df"),
    (
        "counterfact_easyedit.json",
        "91781adf8bfa17b59bb7e1289734f8a5ff0fce7f1fbb6803207f9b884d5d3992",
    ),
    ("zsre_mend_train_1k.json", "99cc940a952bef3cb83f0f46384934c0b7084d658be82ab41c939998f2e1c63f"),
];

/// The published SHA-256 of a known file name.
pub fn published_sha256(path: &Path) -> Option<&'static str> {
    let name = path.file_name()?.to_str()?;
    PUBLISHED.iter().find(|(n, _)| *n == name).map(|(_, h)| *h)
}

/// SHA-256 of a file, hex.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Every record of `source`, in file order.
pub fn load(source: &DatasetSource) -> Result<Dataset> {
    let path = source.path.as_path();
    let bytes = std::fs::read(path).map_err(|e| DataError::file(path, e))?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    if let Some(expected) = &source.sha256 {
        if !expected.eq_ignore_ascii_case(&sha256) {
            return Err(DataError::file(path, format!("sha256 is {sha256}, expected {expected}")));
        }
    }
    if let Some(published) = published_sha256(path).filter(|h| *h != sha256) {
        tracing::warn!(
            "{}: sha256 {sha256} differs from the published file of that name ({published})",
            path.display()
        );
    }
    let items: Vec<Value> = serde_json::from_slice(&bytes)
        .map_err(|e| DataError::file(path, format!("not a JSON array of records: {e}")))?;
    let format = match source.format {
        Some(f) => f,
        None => detect(items.first()).ok_or_else(|| DataError::file(path, "cannot tell the format from the first record (expected `requested_rewrite` (rome), `src`+`answers` (mend), `prompt`+`target_new` (easyedit) or `prompt`+`target`+`locality` (qaedit)); set `format`"))?,
    };
    if format == Format::Mend && source.kind != DatasetKind::Zsre {
        return Err(DataError::file(
            path,
            format!(
                "MEND-format records are zsRE, but the dataset kind is `{}`",
                source.kind.name()
            ),
        ));
    }
    let records = items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let fields = Fields { item };
            let record = match format {
                Format::Rome => rome(&fields),
                Format::Mend => mend(&fields, index),
                Format::Easyedit => easyedit(&fields, index),
                Format::Qaedit => qaedit(&fields, index),
            };
            record.map_err(|message| DataError::Record {
                path: path.to_path_buf(),
                index,
                case_id: item.get("case_id").and_then(Value::as_u64),
                message,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Dataset { kind: source.kind, records, sha256 })
}

fn detect(first: Option<&Value>) -> Option<Format> {
    let has = |key: &str| first.is_some_and(|v| v.get(key).is_some());
    if has("requested_rewrite") {
        Some(Format::Rome)
    } else if has("src") && has("answers") {
        Some(Format::Mend)
    } else if has("prompt") && has("target_new") {
        Some(Format::Easyedit)
    } else if has("prompt") && has("target") && has("locality") {
        Some(Format::Qaedit)
    } else {
        None
    }
}

/// Typed access to one record's fields by dotted path; errors name the path.
struct Fields<'a> {
    item: &'a Value,
}

type FieldResult<T> = std::result::Result<T, String>;

impl Fields<'_> {
    fn value(&self, path: &str) -> FieldResult<&Value> {
        path.split('.').try_fold(self.item, |v, key| {
            v.get(key).ok_or_else(|| format!("missing field `{path}`"))
        })
    }

    fn string(&self, path: &str) -> FieldResult<String> {
        match self.value(path)? {
            Value::String(s) => Ok(s.clone()),
            other => Err(format!("field `{path}` must be a string, found {other}")),
        }
    }

    fn strings(&self, path: &str) -> FieldResult<Vec<String>> {
        let Value::Array(items) = self.value(path)? else {
            return Err(format!("field `{path}` must be a list of strings"));
        };
        items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("field `{path}` must be a list of strings, found {v}"))
            })
            .collect()
    }

    fn optional_string(&self, path: &str) -> FieldResult<Option<String>> {
        match self.value(path) {
            Err(_) | Ok(Value::Null) => Ok(None),
            Ok(_) => self.string(path).map(Some),
        }
    }

    fn case_id(&self, index: usize) -> FieldResult<u64> {
        match self.item.get("case_id") {
            None => Ok(index as u64),
            Some(v) => v.as_u64().ok_or_else(|| {
                format!("field `case_id` must be a non-negative integer, found {v}")
            }),
        }
    }
}

/// `prompt` with `subject` replaced by `{}`; the subject must occur in it.
fn template(prompt: &str, subject: &str, field: &str) -> FieldResult<String> {
    if subject.trim().is_empty() {
        return Err("field `subject` is empty".into());
    }
    if prompt.contains("{}") {
        return Ok(prompt.to_string());
    }
    if !prompt.contains(subject) {
        return Err(format!("subject `{subject}` does not occur in `{field}` `{prompt}`"));
    }
    Ok(prompt.replacen(subject, "{}", 1))
}

fn non_empty(value: String, field: &str) -> FieldResult<String> {
    if value.trim().is_empty() {
        Err(format!("field `{field}` is empty"))
    } else {
        Ok(value)
    }
}

fn rome(f: &Fields) -> FieldResult<Record> {
    let subject = f.string("requested_rewrite.subject")?;
    let prompt =
        template(&f.string("requested_rewrite.prompt")?, &subject, "requested_rewrite.prompt")?;
    let target_true = non_empty(
        f.string("requested_rewrite.target_true.str")?,
        "requested_rewrite.target_true.str",
    )?;
    Ok(Record {
        case_id: f
            .value("case_id")?
            .as_u64()
            .ok_or("field `case_id` must be a non-negative integer")?,
        rewrite: Rewrite {
            prompt,
            subject,
            relation_id: f.optional_string("requested_rewrite.relation_id")?,
            target_new: non_empty(
                f.string("requested_rewrite.target_new.str")?,
                "requested_rewrite.target_new.str",
            )?,
            target_new_id: f.optional_string("requested_rewrite.target_new.id")?,
            target_true: target_true.clone(),
        },
        paraphrase_prompts: f.strings("paraphrase_prompts")?,
        neighborhood: f
            .strings("neighborhood_prompts")?
            .into_iter()
            .map(|prompt| Probe { prompt, answer: target_true.clone() })
            .collect(),
        attribute_prompts: f.strings("attribute_prompts").unwrap_or_default(),
        generation_prompts: f.strings("generation_prompts").unwrap_or_default(),
    })
}

/// MEND zsRE as ROME/MEMIT evaluate it (algo §8.2): the edit inserts the first ground-truth
/// answer; the neighborhood is the Natural Questions prompt with `?` appended, `nq question: `
/// prefix kept.
fn mend(f: &Fields, index: usize) -> FieldResult<Record> {
    let subject = f.string("subject")?;
    let answers = f.strings("answers")?;
    let answer = answers
        .first()
        .filter(|a| !a.trim().is_empty())
        .ok_or("field `answers` must hold a non-empty first answer")?;
    Ok(Record {
        case_id: f.case_id(index)?,
        rewrite: Rewrite {
            prompt: template(&f.string("src")?, &subject, "src")?,
            subject,
            relation_id: None,
            target_new: answer.clone(),
            target_new_id: None,
            target_true: "<|endoftext|>".into(),
        },
        paraphrase_prompts: vec![f.string("rephrase")?],
        neighborhood: vec![Probe {
            prompt: format!("{}?", f.string("loc")?),
            answer: non_empty(f.string("loc_ans")?, "loc_ans")?,
        }],
        attribute_prompts: Vec::new(),
        generation_prompts: Vec::new(),
    })
}

/// QAEdit: the question is the rewrite prompt (its subject replaced by `{}`), `target` the new
/// answer without the trailing ` *` some answers carry; `rephrase` the paraphrase; each
/// `locality` pair a neighborhood probe answered by `loc_ans`. There is no old answer: the
/// teacher-forced scores are zsRE's token accuracies, which do not use one.
fn qaedit(f: &Fields, index: usize) -> FieldResult<Record> {
    let subject = f.string("subject")?;
    let target = f.string("target")?;
    let target = target.trim().trim_end_matches('*').trim_end().to_string();
    let Value::Array(pairs) = f.value("locality")? else {
        return Err("field `locality` must be a list of {loc, loc_ans}".into());
    };
    let neighborhood = pairs
        .iter()
        .enumerate()
        .map(|(i, pair)| {
            let p = Fields { item: pair };
            let field = |name: &str| p.string(name).map_err(|e| format!("locality[{i}]: {e}"));
            Ok(Probe {
                prompt: non_empty(field("loc")?, "loc")?,
                answer: non_empty(field("loc_ans")?, "loc_ans")?,
            })
        })
        .collect::<FieldResult<Vec<_>>>()?;
    Ok(Record {
        // QAEdit's `id` repeats (37 ids twice in its 1k file), so a record is keyed by its place.
        case_id: index as u64,
        rewrite: Rewrite {
            prompt: template(&f.string("prompt")?, &subject, "prompt")?,
            subject,
            relation_id: None,
            target_new: non_empty(target, "target")?,
            target_new_id: None,
            target_true: "<|endoftext|>".into(),
        },
        paraphrase_prompts: vec![non_empty(f.string("rephrase")?, "rephrase")?],
        neighborhood,
        attribute_prompts: Vec::new(),
        generation_prompts: Vec::new(),
    })
}

fn easyedit(f: &Fields, index: usize) -> FieldResult<Record> {
    let subject = f.string("subject")?;
    let neighborhood = match f.optional_string("locality_prompt")? {
        Some(prompt) => vec![Probe {
            prompt,
            answer: non_empty(f.string("locality_ground_truth")?, "locality_ground_truth")?,
        }],
        None => Vec::new(),
    };
    Ok(Record {
        case_id: f.case_id(index)?,
        rewrite: Rewrite {
            prompt: template(&f.string("prompt")?, &subject, "prompt")?,
            subject,
            relation_id: f.optional_string("relation_id")?,
            target_new: non_empty(f.string("target_new")?, "target_new")?,
            target_new_id: None,
            target_true: non_empty(f.string("ground_truth")?, "ground_truth")?,
        },
        paraphrase_prompts: f.optional_string("rephrase_prompt")?.into_iter().collect(),
        neighborhood,
        attribute_prompts: Vec::new(),
        generation_prompts: Vec::new(),
    })
}
