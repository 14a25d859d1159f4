//! The dataset registry: the 21 LongBench v1 datasets and the synthetic tasks, each with
//! its prompt template, maximum generation length, metric and generation rules.
//!
//! All values are data files compiled into the crate (`data/`): LongBench's own
//! `dataset2prompt.json`, `dataset2maxlen.json` and `model2maxlen.json`, the rules of
//! LongBench's `pred.py` / `eval.py` per dataset (`datasets.json`), and the synthetic task
//! specs (`synthetic_tasks.json`).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

use crate::metrics::Metric;

const DATASET2PROMPT: &str = include_str!("../data/dataset2prompt.json");
const DATASET2MAXLEN: &str = include_str!("../data/dataset2maxlen.json");
const MODEL2MAXLEN: &str = include_str!("../data/model2maxlen.json");
const DATASETS: &str = include_str!("../data/datasets.json");
const SYNTHETIC_TASKS: &str = include_str!("../data/synthetic_tasks.json");

/// The 21 LongBench v1 datasets in the order of LongBench's `pred.py`.
pub const LONGBENCH_DATASETS: [&str; 21] = [
    "narrativeqa",
    "qasper",
    "multifieldqa_en",
    "multifieldqa_zh",
    "hotpotqa",
    "2wikimqa",
    "musique",
    "dureader",
    "gov_report",
    "qmsum",
    "multi_news",
    "vcsum",
    "trec",
    "triviaqa",
    "samsum",
    "lsht",
    "passage_count",
    "passage_retrieval_en",
    "passage_retrieval_zh",
    "lcc",
    "repobench-p",
];

/// The 16 English LongBench datasets whose mean is the usual "LongBench average".
pub const ENGLISH_16: [&str; 16] = [
    "narrativeqa",
    "qasper",
    "multifieldqa_en",
    "hotpotqa",
    "2wikimqa",
    "musique",
    "gov_report",
    "qmsum",
    "multi_news",
    "trec",
    "triviaqa",
    "samsum",
    "passage_count",
    "passage_retrieval_en",
    "lcc",
    "repobench-p",
];

/// The English datasets LongBench-E leaves out (it has no length-bucketed version of them).
pub const NOT_IN_LONGBENCH_E: [&str; 3] = ["narrativeqa", "musique", "qmsum"];

/// The 13 datasets of LongBench-E (the length-bucketed variant): [`ENGLISH_16`] without
/// [`NOT_IN_LONGBENCH_E`], in that order.
pub fn longbench_e() -> impl Iterator<Item = &'static str> {
    ENGLISH_16
        .into_iter()
        .filter(|name| !NOT_IN_LONGBENCH_E.contains(name))
}

/// Language of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// English.
    En,
    /// Chinese.
    Zh,
}

/// Everything `predict` and `evaluate` need to know about one dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSpec {
    /// Dataset name, also the prediction file stem (`<name>.jsonl`).
    pub name: String,
    /// Language of the data.
    pub language: Language,
    /// Prompt template with `{context}` / `{input}` placeholders (Python `str.format`).
    pub prompt: String,
    /// Maximum number of generated tokens.
    pub max_new_tokens: usize,
    /// Metric applied to each (prediction, gold answer) pair.
    pub metric: Metric,
    /// Wrap the prompt in the model's chat template (LongBench skips it for trec, triviaqa,
    /// samsum, lsht, lcc and repobench-p).
    pub chat_template: bool,
    /// Score only the first line of the prediction (trec, triviaqa, samsum, lsht).
    pub first_line_only: bool,
    /// Stop generating at a newline token (samsum).
    pub stop_on_newline: bool,
    /// Generate at least this many tokens before an end token may stop (samsum: 1).
    pub min_new_tokens: usize,
    /// Part of the English-16 average.
    pub english16: bool,
    /// A task of the offline synthetic suite rather than a LongBench dataset.
    pub synthetic: bool,
}

/// Looking a name up failed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RegistryError {
    /// No dataset or task has this name.
    #[error("unknown dataset {name:?}; known datasets: {known}")]
    UnknownDataset {
        /// The name asked for.
        name: String,
        /// Comma-separated list of known names.
        known: String,
    },
    /// No model has this name in `model2maxlen`.
    #[error(
        "unknown model {name:?} in LongBench's model2maxlen; known models: {known} (pass --max-length instead)"
    )]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// Comma-separated list of known names.
        known: String,
    },
}

/// How a dataset is generated and scored: an entry of `datasets.json`, and the same fields
/// of a synthetic task.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rules {
    metric: Metric,
    language: Language,
    chat_template: bool,
    first_line_only: bool,
    stop_on_newline: bool,
    min_new_tokens: usize,
    /// Set in `datasets.json` only (no synthetic task is part of the average).
    #[serde(default)]
    english16: bool,
}

impl Rules {
    fn into_spec(
        self,
        name: String,
        prompt: String,
        max_new_tokens: usize,
        synthetic: bool,
    ) -> DatasetSpec {
        DatasetSpec {
            name,
            language: self.language,
            prompt,
            max_new_tokens,
            metric: self.metric,
            chat_template: self.chat_template,
            first_line_only: self.first_line_only,
            stop_on_newline: self.stop_on_newline,
            min_new_tokens: self.min_new_tokens,
            english16: self.english16,
            synthetic,
        }
    }
}

/// A task of `synthetic_tasks.json`: its own prompt and generation length, then its rules.
#[derive(Deserialize)]
struct SyntheticSpec {
    #[allow(dead_code)]
    description: String,
    prompt: String,
    max_new_tokens: usize,
    #[serde(flatten)]
    rules: Rules,
}

struct Registry {
    specs: Vec<DatasetSpec>,
    model2maxlen: BTreeMap<String, usize>,
}

fn parse<T: for<'de> Deserialize<'de>>(what: &str, text: &str) -> T {
    // The data files are compiled in and checked by the unit tests below, so a failure here
    // is a build defect, not a user error.
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("embedded data file {what} is invalid: {e}"))
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let prompts: BTreeMap<String, String> = parse("dataset2prompt.json", DATASET2PROMPT);
        let maxlens: BTreeMap<String, usize> = parse("dataset2maxlen.json", DATASET2MAXLEN);
        let mut rules: BTreeMap<String, Rules> = parse("datasets.json", DATASETS);
        assert_eq!(
            rules.len(),
            LONGBENCH_DATASETS.len(),
            "datasets.json lists the 21 datasets"
        );
        let mut specs = Vec::new();
        for name in LONGBENCH_DATASETS {
            let r = rules
                .remove(name)
                .unwrap_or_else(|| panic!("datasets.json lacks {name}"));
            let prompt = prompts
                .get(name)
                .cloned()
                .unwrap_or_else(|| panic!("no prompt for {name}"));
            let max_new_tokens = *maxlens
                .get(name)
                .unwrap_or_else(|| panic!("no max length for {name}"));
            specs.push(r.into_spec(name.to_string(), prompt, max_new_tokens, false));
        }
        let synth: BTreeMap<String, SyntheticSpec> = parse("synthetic_tasks.json", SYNTHETIC_TASKS);
        for (name, s) in synth {
            specs.push(s.rules.into_spec(name, s.prompt, s.max_new_tokens, true));
        }
        Registry {
            specs,
            model2maxlen: parse("model2maxlen.json", MODEL2MAXLEN),
        }
    })
}

/// All datasets: the 21 LongBench datasets in LongBench's order, then the synthetic tasks
/// sorted by name.
pub fn all() -> &'static [DatasetSpec] {
    &registry().specs
}

/// The 21 LongBench v1 datasets.
pub fn longbench() -> impl Iterator<Item = &'static DatasetSpec> {
    all().iter().filter(|s| !s.synthetic)
}

/// The synthetic suite's tasks.
pub fn synthetic() -> impl Iterator<Item = &'static DatasetSpec> {
    all().iter().filter(|s| s.synthetic)
}

/// Find a dataset or synthetic task by name.
pub fn lookup(name: &str) -> Result<&'static DatasetSpec, RegistryError> {
    all()
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| RegistryError::UnknownDataset {
            name: name.to_string(),
            known: all()
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// LongBench's `model2maxlen`: the prompt budget (tokens) LongBench used for a model.
pub fn model_max_length(model: &str) -> Result<usize, RegistryError> {
    let table = &registry().model2maxlen;
    table
        .get(model)
        .copied()
        .ok_or_else(|| RegistryError::UnknownModel {
            name: model.to_string(),
            known: table.keys().cloned().collect::<Vec<_>>().join(", "),
        })
}

/// The whole `model2maxlen` table.
pub fn model2maxlen() -> &'static BTreeMap<String, usize> {
    &registry().model2maxlen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twenty_one_longbench_datasets_and_eight_synthetic_tasks() {
        assert_eq!(longbench().count(), 21);
        assert_eq!(synthetic().count(), 8);
        let en16: Vec<&str> = longbench()
            .filter(|s| s.english16)
            .map(|s| s.name.as_str())
            .collect();
        let mut want = ENGLISH_16.to_vec();
        let mut have = en16.clone();
        want.sort();
        have.sort();
        assert_eq!(have, want);
        assert_eq!(
            longbench().filter(|s| s.language == Language::Zh).count(),
            5
        );
        assert!(synthetic().all(|s| !s.english16));
        assert_eq!(longbench_e().count(), 13);
        for name in longbench_e() {
            assert!(lookup(name).is_ok());
        }
    }

    #[test]
    fn longbench_rules_match_pred_and_eval_py() {
        let no_chat: Vec<&str> = longbench()
            .filter(|s| !s.chat_template)
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(
            no_chat,
            ["trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"]
        );
        let first: Vec<&str> = longbench()
            .filter(|s| s.first_line_only)
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(first, ["trec", "triviaqa", "samsum", "lsht"]);
        let samsum = lookup("samsum").unwrap();
        assert!(
            samsum.stop_on_newline && samsum.min_new_tokens == 1 && samsum.max_new_tokens == 128
        );
        assert_eq!(lookup("gov_report").unwrap().max_new_tokens, 512);
        assert_eq!(lookup("lcc").unwrap().metric, Metric::CodeSimScore);
        assert!(
            lookup("trec")
                .unwrap()
                .prompt
                .ends_with("{context}\n{input}")
        );
    }

    #[test]
    fn unknown_names_list_the_known_ones() {
        let err = lookup("narrative").unwrap_err().to_string();
        assert!(
            err.contains("narrativeqa") && err.contains("synth_passkey"),
            "{err}"
        );
        assert_eq!(model_max_length("llama2-7b-chat-4k"), Ok(3500));
        assert!(
            model_max_length("gpt-9")
                .unwrap_err()
                .to_string()
                .contains("vicuna-v1.5-7b-16k")
        );
    }
}
