//! The downstream tasks of the paper's official code (`glue_eval/` of
//! scalable-model-editing/unified-model-editing), which measure what editing does to a model's
//! general abilities: few-shot prompts written as its `*_eval.py` write them, and the words whose
//! log-probabilities decide the answer (algo §8.3).
//!
//! Each task file is a JSON array (the official `.pkl` written as JSON). As in the official code,
//! its first [`SHOT_POOL`] items are the pool of few-shot examples and the test items follow them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};

/// Items at the start of a task file that hold the few-shot examples (`FEW_SHOT_TEST_SPLIT`).
pub const SHOT_POOL: usize = 10;

/// One downstream task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Sst2,
    Mrpc,
    Cola,
    Rte,
    Nli,
    Mmlu,
    SentimentAnalysis,
    Dialogue,
}

impl Task {
    pub const ALL: [Task; 8] = [
        Self::Sst2,
        Self::Mrpc,
        Self::Cola,
        Self::Rte,
        Self::Nli,
        Self::Mmlu,
        Self::SentimentAnalysis,
        Self::Dialogue,
    ];

    /// The task's name, which is also its file's stem.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sst2 => "sst2",
            Self::Mrpc => "mrpc",
            Self::Cola => "cola",
            Self::Rte => "rte",
            Self::Nli => "nli",
            Self::Mmlu => "mmlu",
            Self::SentimentAnalysis => "sentiment_analysis",
            Self::Dialogue => "dialogue",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The answer word of each label value (label `i` is answered by word `i`). RTE keeps the
    /// official code's mapping (label 0 → "False"), although GLUE's label 0 is `entailment`.
    pub fn label_words(self) -> &'static [&'static str] {
        match self {
            Self::Sst2 | Self::SentimentAnalysis => &["negative", "positive"],
            Self::Mrpc | Self::Cola => &["No", "Yes"],
            Self::Rte | Self::Nli => &["False", "True"],
            Self::Mmlu | Self::Dialogue => &["A", "B", "C", "D"],
        }
    }

    /// Accuracy of guessing uniformly among the label words.
    pub fn chance(self) -> f64 {
        1.0 / self.label_words().len() as f64
    }

    /// `item` as a few-shot example (its answer included, ending with a line break).
    fn shot(self, f: &Item) -> ItemResult<String> {
        let answer = self.label_words()[self.label(f)?];
        Ok(match self {
            Self::Sst2 => format!("Review : {}\nSentiment : {answer}\n", f.string("sentence")?),
            Self::Cola => {
                format!("{COLA}Sentence: {}\nAnswer: {answer}\n", f.string("sentence")?)
            }
            Self::Mrpc => format!("{}Answer: {answer}\n", self.pair(f)?),
            Self::Rte => format!("{}answer: {answer}\n", self.pair(f)?),
            Self::Nli | Self::Mmlu | Self::SentimentAnalysis => {
                format!("{} {answer}\n", self.question(f)?)
            }
            Self::Dialogue => format!("{} {answer}\n\n", self.question(f)?),
        })
    }

    /// `item` as the question that the answer word follows. As in the official code, a question
    /// is not always written as its few-shot examples are (SST-2 has no space after `Review :`,
    /// CoLA ends with `Answer: ` and its answer word brings a second space).
    fn question(self, f: &Item) -> ItemResult<String> {
        Ok(match self {
            Self::Sst2 => format!("Review :{}\nSentiment :", f.string("sentence")?),
            Self::Cola => format!("{COLA}Sentence: {}\nAnswer: ", f.string("sentence")?),
            Self::Mrpc => format!("{}Answer:", self.pair(f)?),
            Self::Rte => format!("{}answer:", self.pair(f)?),
            Self::Nli => format!(
                "{} entails the {} True or False? Answer:",
                f.string("sentence1")?,
                f.string("sentence2")?
            ),
            Self::Mmlu => {
                let choices = lettered(&f.strings("choices", 4)?, " ");
                format!("Question: {}\n{choices}Answer:", f.string("question")?)
            }
            Self::SentimentAnalysis => format!("{SENTIMENT} {} answer:", f.string("sentence")?),
            Self::Dialogue => {
                let options = lettered(&f.strings("options", 4)?, "");
                let article = f.string("article")?;
                format!(
                    "Q: Given the following: {article}\nWhich choice is correct?\n{options}Answer:"
                )
            }
        })
    }

    /// The two sentences of MRPC and RTE, as both their shots and questions begin.
    fn pair(self, f: &Item) -> ItemResult<String> {
        let (one, two) = (f.string("sentence1")?, f.string("sentence2")?);
        Ok(if self == Self::Rte {
            format!("{one}\nquestion: {two} True or False?\n")
        } else {
            format!("{MRPC}Sentence 1: {one}\nSentence 2: {two}\n")
        })
    }

    /// The item's label value.
    fn label(self, f: &Item) -> ItemResult<usize> {
        let words = self.label_words();
        let label = match self {
            Self::Nli => match f.string("label")?.as_str() {
                "entailment" => 1,
                _ => 0,
            },
            Self::SentimentAnalysis => f.string("label")?.parse().map_err(|_| bad_label(f))?,
            Self::Dialogue => {
                let letter = f.string("answers")?;
                words.iter().position(|w| *w == letter).ok_or_else(|| bad_label(f))?
            }
            Self::Mmlu => f.index("answer")?,
            _ => f.index("label")?,
        };
        if label >= words.len() {
            return Err(bad_label(f));
        }
        Ok(label)
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

const COLA: &str = "Is this sentence linguistically acceptable?\n";
const MRPC: &str = "Are the sentences paraphrases of each other.\n";
const SENTIMENT: &str = "For each snippet of text,label the sentiment of the text as positive or \
                         negative.The answer should be exact 'positive' or 'negative'. text:";

/// `(A)<sep>first\n(B)<sep>second\n…`.
fn lettered(choices: &[String], sep: &str) -> String {
    choices.iter().zip('A'..).map(|(c, letter)| format!("({letter}){sep}{c}\n")).collect()
}

/// One test item: the whole prompt (few-shot context and question) and its label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskItem {
    pub prompt: String,
    pub label: usize,
}

/// A task's test items with their few-shot context.
#[derive(Debug, Clone)]
pub struct TaskSet {
    pub task: Task,
    pub few_shot: usize,
    pub items: Vec<TaskItem>,
    /// SHA-256 of the task file.
    pub sha256: String,
}

/// The file of `task` in the folder `dir` (`<dir>/<task>.json`).
pub fn task_path(dir: &Path, task: Task) -> PathBuf {
    dir.join(format!("{}.json", task.name()))
}

/// `n` test items of `task` from `path`, each after the first `few_shot` examples of the pool.
pub fn load_task(task: Task, path: &Path, few_shot: usize, n: usize) -> Result<TaskSet> {
    if few_shot > SHOT_POOL {
        return Err(DataError::file(
            path,
            format!("few_shot is {few_shot}; the official split keeps {SHOT_POOL} examples"),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| DataError::file(path, e))?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let values: Vec<Value> = serde_json::from_slice(&bytes)
        .map_err(|e| DataError::file(path, format!("not a JSON array of task items: {e}")))?;
    if values.len() < SHOT_POOL + n {
        let tests = values.len().saturating_sub(SHOT_POOL);
        return Err(DataError::file(
            path,
            format!("n is {n}, but the file has {tests} test items"),
        ));
    }
    let context = (0..few_shot)
        .map(|i| at(path, i, task.shot(&Item(&values[i]))))
        .collect::<Result<String>>()?;
    let items = (SHOT_POOL..SHOT_POOL + n)
        .map(|i| {
            let item = Item(&values[i]);
            let question = at(path, i, task.question(&item))?;
            let label = at(path, i, task.label(&item))?;
            Ok(TaskItem { prompt: format!("{context}{question}"), label })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(TaskSet { task, few_shot, items, sha256 })
}

type ItemResult<T> = std::result::Result<T, String>;

/// `r`, its error naming the file and the item.
fn at<T>(path: &Path, index: usize, r: ItemResult<T>) -> Result<T> {
    r.map_err(|message| DataError::Record {
        path: path.to_path_buf(),
        index,
        case_id: None,
        message,
    })
}

/// Typed access to one task item's fields; errors name the field.
struct Item<'a>(&'a Value);

impl Item<'_> {
    fn value(&self, key: &str) -> ItemResult<&Value> {
        self.0.get(key).ok_or_else(|| format!("missing field `{key}`"))
    }

    fn string(&self, key: &str) -> ItemResult<String> {
        match self.value(key)? {
            Value::String(s) => Ok(s.clone()),
            other => Err(format!("field `{key}` must be a string, found {other}")),
        }
    }

    fn index(&self, key: &str) -> ItemResult<usize> {
        let v = self.value(key)?;
        v.as_u64()
            .map(|i| i as usize)
            .ok_or_else(|| format!("field `{key}` must be a non-negative integer, found {v}"))
    }

    fn strings(&self, key: &str, n: usize) -> ItemResult<Vec<String>> {
        let items = self.value(key)?.as_array().filter(|a| a.len() == n);
        let items = items.ok_or_else(|| format!("field `{key}` must be a list of {n} strings"))?;
        items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("field `{key}` must be a list of {n} strings"))
    }
}

fn bad_label(f: &Item) -> String {
    let label = ["label", "answer", "answers"].iter().find_map(|k| f.0.get(*k));
    format!("unknown label {}", label.map_or("(none)".to_string(), Value::to_string))
}
