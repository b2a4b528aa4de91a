//! Which records a run uses, and the checks a batch of edits needs: the same subject and relation
//! asked to take two different objects cannot both be memorised (MCF's filter).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{DataError, Result};
use crate::record::Record;
use crate::rng::SplitMix64;

/// Written `all`, `{first: N}`, `{sample: {n: N, seed: S}}` or `{ids: [...]}` in files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub enum Selection {
    All,
    /// The first `n` records in file order.
    First(usize),
    /// `n` records drawn without replacement, in the drawn order.
    Sample {
        n: usize,
        seed: u64,
    },
    /// These case ids, in this order.
    Ids(Vec<u64>),
}

const SELECTION_FORMS: &str = "`all`, {first: N}, {sample: {n: N, seed: S}} or {ids: [ID, ...]}";

impl TryFrom<Value> for Selection {
    type Error = String;
    fn try_from(v: Value) -> std::result::Result<Self, String> {
        let bad = || format!("selection must be {SELECTION_FORMS}, found {v}");
        let count = |x: &Value| x.as_u64().map(|n| n as usize).ok_or_else(bad);
        match &v {
            Value::String(s) if s == "all" => Ok(Self::All),
            Value::Object(map) if map.len() == 1 => {
                let (key, x) = map.iter().next().expect("one entry");
                match key.as_str() {
                    "first" => Ok(Self::First(count(x)?)),
                    "sample" => {
                        let field =
                            |name: &str| x.get(name).and_then(Value::as_u64).ok_or_else(bad);
                        if x.as_object().is_some_and(|m| m.keys().any(|k| k != "n" && k != "seed"))
                        {
                            return Err(bad());
                        }
                        Ok(Self::Sample { n: field("n")? as usize, seed: field("seed")? })
                    }
                    "ids" => x
                        .as_array()
                        .and_then(|ids| ids.iter().map(Value::as_u64).collect::<Option<Vec<_>>>())
                        .map(Self::Ids)
                        .ok_or_else(bad),
                    _ => Err(bad()),
                }
            }
            _ => Err(bad()),
        }
    }
}

impl From<Selection> for Value {
    fn from(s: Selection) -> Value {
        match s {
            Selection::All => json!("all"),
            Selection::First(n) => json!({ "first": n }),
            Selection::Sample { n, seed } => json!({ "sample": { "n": n, "seed": seed } }),
            Selection::Ids(ids) => json!({ "ids": ids }),
        }
    }
}

impl Selection {
    pub fn apply(&self, records: &[Record]) -> Result<Vec<Record>> {
        let too_many = |n: usize| {
            DataError::Selection(format!(
                "{n} records requested but the dataset has {}",
                records.len()
            ))
        };
        Ok(match self {
            Self::All => records.to_vec(),
            Self::First(n) if *n > records.len() => return Err(too_many(*n)),
            Self::First(n) => records[..*n].to_vec(),
            Self::Sample { n, .. } if *n > records.len() => return Err(too_many(*n)),
            Self::Sample { n, seed } => {
                let mut order: Vec<usize> = (0..records.len()).collect();
                SplitMix64::new(*seed).shuffle(&mut order);
                order[..*n].iter().map(|&i| records[i].clone()).collect()
            }
            Self::Ids(ids) => {
                let by_id: HashMap<u64, &Record> = records.iter().map(|r| (r.case_id, r)).collect();
                let missing: Vec<String> =
                    ids.iter().filter(|id| !by_id.contains_key(id)).map(u64::to_string).collect();
                if !missing.is_empty() {
                    return Err(DataError::Selection(format!(
                        "case ids not in the dataset: {}",
                        missing.join(", ")
                    )));
                }
                ids.iter().map(|id| by_id[id].clone()).collect()
            }
        })
    }
}

/// Problems within a set of records that will be edited together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Consistency {
    /// Case ids that occur more than once.
    pub duplicate_case_ids: Vec<u64>,
    /// Groups of case ids asking for the same (subject, relation, new object).
    pub duplicate_edits: Vec<Vec<u64>>,
    /// Groups of case ids asking the same (subject, relation) for different new objects.
    pub conflicts: Vec<Vec<u64>>,
}

impl Consistency {
    pub fn is_clean(&self) -> bool {
        self.duplicate_case_ids.is_empty()
            && self.duplicate_edits.is_empty()
            && self.conflicts.is_empty()
    }

    /// One line per kind of problem found.
    pub fn describe(&self) -> Vec<String> {
        let groups =
            |g: &[Vec<u64>]| g.iter().map(|ids| format!("{ids:?}")).collect::<Vec<_>>().join(" ");
        let mut lines = Vec::new();
        if !self.duplicate_case_ids.is_empty() {
            lines.push(format!("duplicate case ids: {:?}", self.duplicate_case_ids));
        }
        if !self.duplicate_edits.is_empty() {
            lines.push(format!(
                "identical edits (same subject, relation and new object): {}",
                groups(&self.duplicate_edits)
            ));
        }
        if !self.conflicts.is_empty() {
            lines.push(format!(
                "conflicting edits (same subject and relation, different new objects): {}",
                groups(&self.conflicts)
            ));
        }
        lines
    }
}

/// Duplicates and conflicts among `records`. The relation is the Wikidata property when known,
/// otherwise the prompt template.
pub fn consistency(records: &[Record]) -> Consistency {
    let mut ids: BTreeMap<u64, usize> = BTreeMap::new();
    let mut by_fact: BTreeMap<(&str, &str), BTreeMap<&str, Vec<u64>>> = BTreeMap::new();
    for r in records {
        *ids.entry(r.case_id).or_default() += 1;
        let relation = r.rewrite.relation_id.as_deref().unwrap_or(&r.rewrite.prompt);
        by_fact
            .entry((r.rewrite.subject.as_str(), relation))
            .or_default()
            .entry(r.rewrite.target_new.as_str())
            .or_default()
            .push(r.case_id);
    }
    let mut out = Consistency {
        duplicate_case_ids: ids.into_iter().filter(|&(_, n)| n > 1).map(|(id, _)| id).collect(),
        ..Default::default()
    };
    for targets in by_fact.into_values() {
        out.duplicate_edits.extend(targets.values().filter(|ids| ids.len() > 1).cloned());
        if targets.len() > 1 {
            out.conflicts.push(targets.into_values().flatten().collect());
        }
    }
    out
}
