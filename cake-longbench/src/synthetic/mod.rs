//! The offline synthetic suite: long-context tasks in LongBench's JSONL format, generated
//! deterministically from a seed, for several prompt lengths and answer depths.
//!
//! Each task is registered like a LongBench dataset (`data/synthetic_tasks.json`: prompt
//! template, metric, maximum generation length), so prediction and evaluation treat both
//! alike. Records carry `length` = tokens of the filled prompt (chat template excluded)
//! as counted by the [`PromptTokenizer`] in [`SuiteConfig`] (token-accurate with the
//! model's tokenizer; an estimate with [`crate::ApproxTokenizer`]), and `depth` = where the
//! answer sits in the context (0 = start, 1 = end; `null` for passage counting).
//!
//! Tasks: `synth_passkey` (single needle), `synth_multikey` (the asked key among
//! distractor keys), `synth_multivalue` (all values of one key), `synth_kv` (UUID
//! key-value retrieval), `synth_passage_retrieval` (which paragraph an extract comes
//! from), `synth_passage_count` (unique paragraphs among duplicates), `synth_vartrack`
//! (chains of variable assignments) and `synth_fewshot` (labelled examples, made-up
//! labels, scored like trec).

pub mod rng;
mod tasks;

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::prompt::{PromptError, PromptTokenizer, fill_template};
use crate::record::{LongBenchRecord, NeedleSpan};
use crate::registry::{self, RegistryError};
use rng::SplitMix64;

pub use tasks::TASKS;

/// Longest filler "sentence": longer ones are split at a comma, semicolon or space, so
/// that a needle can be placed close to any depth.
const MAX_SENTENCE_CHARS: usize = 240;

/// Longest passage of the passage tasks (about 100 tokens of English).
pub const MAX_PASSAGE_CHARS: usize = 400;

/// Filler text split into paragraphs and sentences.
#[derive(Debug, Clone, PartialEq)]
pub struct Haystack {
    /// Paragraphs (internal whitespace collapsed), in text order.
    pub paragraphs: Vec<String>,
    /// Sentences of all paragraphs, in text order.
    pub sentences: Vec<String>,
    /// Passages: runs of consecutive sentences of one paragraph, at most
    /// [`MAX_PASSAGE_CHARS`] long (a longer single sentence stays whole). The passage tasks
    /// number these, so the context can be sized finely.
    pub passages: Vec<String>,
}

impl Haystack {
    /// Split a text (paragraphs separated by blank lines) into a haystack. Paragraphs under
    /// 80 characters (titles, headings) are left out.
    pub fn from_text(text: &str) -> Result<Self, SuiteError> {
        let paragraphs: Vec<String> = text
            .replace("\r\n", "\n")
            .split("\n\n")
            .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|p| p.chars().count() >= 80)
            .collect();
        let mut sentences = Vec::new();
        let mut passages = Vec::new();
        for p in &paragraphs {
            let mut current = String::new();
            for s in split_sentences(p) {
                if !current.is_empty()
                    && current.chars().count() + 1 + s.chars().count() > MAX_PASSAGE_CHARS
                {
                    passages.push(std::mem::take(&mut current));
                }
                if !current.is_empty() {
                    current.push(' ');
                }
                current.push_str(&s);
                sentences.push(s);
            }
            if !current.is_empty() {
                passages.push(current);
            }
        }
        // Distinct passages only (the counting task relies on it), in text order.
        let mut seen = std::collections::HashSet::new();
        passages.retain(|p| seen.insert(p.clone()));
        if paragraphs.len() < 8 || sentences.len() < 40 {
            return Err(SuiteError::HaystackTooSmall {
                paragraphs: paragraphs.len(),
                sentences: sentences.len(),
            });
        }
        Ok(Self {
            paragraphs,
            sentences,
            passages,
        })
    }

    /// The committed Moby-Dick excerpt (chapters 1-2), for offline tests.
    pub fn excerpt() -> Self {
        // The excerpt is compiled in and long enough; this cannot fail (checked by tests).
        // The file starts with a two-line source note, then a blank line, then the text.
        let text = crate::haystack::MOBY_DICK_EXCERPT
            .split_once("\n\n")
            .map_or(crate::haystack::MOBY_DICK_EXCERPT, |(_, t)| t);
        Self::from_text(text).unwrap_or_else(|e| panic!("embedded excerpt: {e}"))
    }
}

/// Split a paragraph after `.`, `!` or `?` (and closing quotes) followed by a space; split
/// sentences longer than [`MAX_SENTENCE_CHARS`] further.
fn split_sentences(paragraph: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = paragraph.char_indices().collect();
    for (k, &(_, c)) in chars.iter().enumerate() {
        if !matches!(c, '.' | '!' | '?') {
            continue;
        }
        let mut end_k = k + 1;
        while end_k < chars.len() && matches!(chars[end_k].1, '"' | '\'' | '”' | '’' | ')') {
            end_k += 1;
        }
        if end_k < chars.len() && chars[end_k].1 == ' ' {
            let end = chars[end_k].0;
            out.push(paragraph[start..end].to_string());
            start = end + 1;
        }
    }
    if start < paragraph.len() {
        out.push(paragraph[start..].to_string());
    }
    out.into_iter()
        .flat_map(|s| split_long(&s))
        .filter(|s| !s.trim().is_empty())
        .collect()
}

fn split_long(sentence: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = sentence;
    while rest.chars().count() > MAX_SENTENCE_CHARS {
        let limit = rest
            .char_indices()
            .nth(MAX_SENTENCE_CHARS)
            .map_or(rest.len(), |(i, _)| i);
        let window = &rest[..limit];
        let cut = [", ", "; ", " "]
            .iter()
            .find_map(|sep| window.rfind(sep).filter(|&p| p > 40).map(|p| p + sep.len()));
        let Some(cut) = cut else { break };
        out.push(rest[..cut].trim_end().to_string());
        rest = &rest[cut..];
    }
    out.push(rest.to_string());
    out
}

/// What to generate.
pub struct SuiteConfig<'a> {
    /// Seed; the same seed gives byte-identical files.
    pub seed: u64,
    /// Target prompt lengths in tokens (e.g. 1024, 2048, 4096, 8192). Each record's filled
    /// prompt has at most this many tokens and as many as the filler allows.
    pub lengths: Vec<usize>,
    /// Answer depths in [0, 1].
    pub depths: Vec<f64>,
    /// Records per (length, depth) cell.
    pub samples_per_cell: usize,
    /// Tokenizer that measures lengths.
    pub tokenizer: &'a dyn PromptTokenizer,
    /// Filler text.
    pub haystack: &'a Haystack,
    /// Tasks to generate (names from [`TASKS`]).
    pub tasks: Vec<String>,
}

impl<'a> SuiteConfig<'a> {
    /// Defaults: seed 0, lengths 1K/2K/4K/8K, depths 0, .25, .5, .75, 1, one sample per
    /// cell, all tasks.
    pub fn new(tokenizer: &'a dyn PromptTokenizer, haystack: &'a Haystack) -> Self {
        Self {
            seed: 0,
            lengths: vec![1024, 2048, 4096, 8192],
            depths: vec![0.0, 0.25, 0.5, 0.75, 1.0],
            samples_per_cell: 1,
            tokenizer,
            haystack,
            tasks: TASKS.iter().map(|t| t.to_string()).collect(),
        }
    }
}

/// Generating the suite failed.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    /// The filler text is too short to build contexts from.
    #[error(
        "haystack too small ({paragraphs} paragraphs, {sentences} sentences); need at least 8 and 40"
    )]
    HaystackTooSmall {
        /// Paragraphs found.
        paragraphs: usize,
        /// Sentences found.
        sentences: usize,
    },
    /// A task name is not a synthetic task.
    #[error("unknown synthetic task {name:?}; known tasks: {known}")]
    UnknownTask {
        /// The name.
        name: String,
        /// Known names.
        known: String,
    },
    /// Bad configuration.
    #[error("invalid suite configuration: {0}")]
    Config(String),
    /// The target length cannot hold even the smallest prompt of a task.
    #[error(
        "{task}: target length {length} tokens is below the {needed} tokens its smallest prompt needs"
    )]
    LengthTooSmall {
        /// Task.
        task: String,
        /// Target length.
        length: usize,
        /// Tokens of the smallest prompt.
        needed: usize,
    },
    /// The haystack has too few distinct passages for the target length.
    #[error(
        "{task}: the haystack has {available} distinct passages, too few to reach {length} tokens; use a larger haystack (fetch_haystack)"
    )]
    NotEnoughPassages {
        /// Task.
        task: String,
        /// Target length.
        length: usize,
        /// Passages available.
        available: usize,
    },
    /// Registry lookup failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Template filling failed.
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// Writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// The variable part of a record for a given number of filler units.
#[derive(Debug, Clone)]
pub(crate) struct Draft {
    pub context: String,
    pub input: String,
    pub answers: Vec<String>,
    pub all_classes: Option<Vec<String>>,
    /// The needle's text, for tasks with one contiguous answer-bearing span (it occurs
    /// once in the context).
    pub needle: Option<String>,
}

/// One generated file.
#[derive(Debug, Clone, PartialEq)]
pub struct SuiteFile {
    /// Task name.
    pub task: String,
    /// Path of `<task>.jsonl`.
    pub path: PathBuf,
    /// Records written.
    pub records: usize,
}

/// Generate one task's records.
pub fn generate_task(
    task: &str,
    config: &SuiteConfig<'_>,
) -> Result<Vec<LongBenchRecord>, SuiteError> {
    validate(config)?;
    let spec = registry::lookup(task)?;
    if !spec.synthetic {
        return Err(unknown_task(task));
    }
    let builder = tasks::builder(task).ok_or_else(|| unknown_task(task))?;
    let mut out = Vec::new();
    let depths: Vec<Option<f64>> = if builder.uses_depth {
        config.depths.iter().map(|&d| Some(d)).collect()
    } else {
        vec![None]
    };
    for &length in &config.lengths {
        for (di, depth) in depths.iter().enumerate() {
            for sample in 0..config.samples_per_cell {
                let cell = [
                    task.as_bytes(),
                    &length.to_le_bytes(),
                    &di.to_le_bytes(),
                    &sample.to_le_bytes(),
                ];
                let cell_seed = SplitMix64::for_cell(config.seed, &cell).next_u64();
                let build = |units: usize| {
                    (builder.build)(config.haystack, cell_seed, units, depth.unwrap_or(0.0))
                };
                let (draft, tokens) = fit(task, &spec.prompt, length, config.tokenizer, &build)?;
                let depth_tag =
                    depth.map_or_else(|| "na".to_string(), |d| format!("{:.0}", d * 100.0));
                let needle = draft
                    .needle
                    .as_deref()
                    .and_then(|text| NeedleSpan::find(&draft.context, text));
                out.push(LongBenchRecord {
                    input: draft.input,
                    context: draft.context,
                    answers: draft.answers,
                    length: tokens as u64,
                    dataset: task.to_string(),
                    language: "en".into(),
                    all_classes: draft.all_classes,
                    id: format!("{task}-{length}-d{depth_tag}-{sample}"),
                    depth: *depth,
                    needle,
                });
            }
        }
    }
    Ok(out)
}

/// Generate every configured task into `<dir>/<task>.jsonl` (files are replaced).
pub fn generate_suite(dir: &Path, config: &SuiteConfig<'_>) -> Result<Vec<SuiteFile>, SuiteError> {
    validate(config)?;
    std::fs::create_dir_all(dir).map_err(|source| SuiteError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    for task in &config.tasks {
        let records = generate_task(task, config)?;
        let path = crate::record::dataset_path(dir, task);
        let tmp = path.with_extension("jsonl.partial");
        let io = |source| SuiteError::Io {
            path: tmp.clone(),
            source,
        };
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
        for r in &records {
            let line = serde_json::to_string(r).map_err(|e| io(std::io::Error::other(e)))?;
            writeln!(f, "{line}").map_err(io)?;
        }
        f.flush().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(|source| SuiteError::Io {
            path: path.clone(),
            source,
        })?;
        files.push(SuiteFile {
            task: task.clone(),
            path,
            records: records.len(),
        });
    }
    Ok(files)
}

fn unknown_task(name: &str) -> SuiteError {
    SuiteError::UnknownTask {
        name: name.to_string(),
        known: TASKS.join(", "),
    }
}

fn validate(config: &SuiteConfig<'_>) -> Result<(), SuiteError> {
    if config.lengths.is_empty() || config.lengths.contains(&0) {
        return Err(SuiteError::Config(
            "lengths must be non-empty and positive".into(),
        ));
    }
    if config.depths.is_empty() || config.depths.iter().any(|d| !(0.0..=1.0).contains(d)) {
        return Err(SuiteError::Config(
            "depths must be non-empty and within [0, 1]".into(),
        ));
    }
    if config.samples_per_cell == 0 {
        return Err(SuiteError::Config(
            "samples_per_cell must be at least 1".into(),
        ));
    }
    for t in &config.tasks {
        if !TASKS.contains(&t.as_str()) {
            return Err(unknown_task(t));
        }
    }
    Ok(())
}

/// Outcome of building a draft with `units` filler units.
pub(crate) enum Built {
    /// The draft.
    Draft(Draft),
    /// More units than the haystack can supply (distinct passages); carries the maximum.
    TooManyUnits(usize),
}

/// Largest number of filler units whose filled prompt fits in `length` tokens.
fn fit(
    task: &str,
    template: &str,
    length: usize,
    tokenizer: &dyn PromptTokenizer,
    build: &dyn Fn(usize) -> Built,
) -> Result<(Draft, usize), SuiteError> {
    let measure = |units: usize| -> Result<Option<(Draft, usize)>, SuiteError> {
        match build(units) {
            Built::TooManyUnits(_) => Ok(None),
            Built::Draft(d) => {
                let rec = record_for_template(&d);
                let prompt = fill_template(template, &rec, task)?;
                let tokens = tokenizer.encode(&prompt).len();
                Ok(Some((d, tokens)))
            }
        }
    };
    let fits = |m: &Option<(Draft, usize)>| m.as_ref().is_some_and(|(_, t)| *t <= length);
    let smallest = measure(0)?;
    let Some((_, base)) = &smallest else {
        return Err(SuiteError::Config(format!(
            "{task}: the haystack cannot supply a single unit"
        )));
    };
    if *base > length {
        return Err(SuiteError::LengthTooSmall {
            task: task.into(),
            length,
            needed: *base,
        });
    }
    // Estimate tokens per unit from 8 units, then bracket and bisect.
    let per_unit = match measure(8)? {
        Some((_, t)) if t > *base => ((t - base) as f64 / 8.0).max(1.0),
        _ => 1.0,
    };
    let guess = (((length - base) as f64 / per_unit) as usize).max(1);
    let (mut lo, mut hi); // fits(lo), !fits(hi)
    let mut lo_m = smallest;
    let g = measure(guess)?;
    if fits(&g) {
        lo = guess;
        lo_m = g;
        hi = guess.saturating_mul(2).max(guess + 1);
        loop {
            let m = measure(hi)?;
            if !fits(&m) {
                break;
            }
            lo = hi;
            lo_m = m;
            hi = hi.saturating_mul(2);
            if hi > 1 << 24 {
                return Err(SuiteError::Config(format!(
                    "{task}: prompt does not grow with its filler"
                )));
            }
        }
    } else {
        lo = 0;
        hi = guess;
        let mut probe = guess / 2;
        while probe > 0 {
            let m = measure(probe)?;
            if fits(&m) {
                lo = probe;
                lo_m = m;
                break;
            }
            hi = probe;
            probe /= 2;
        }
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let m = measure(mid)?;
        if fits(&m) {
            lo = mid;
            lo_m = m;
        } else {
            hi = mid;
        }
    }
    // Passage tasks stop at the haystack's distinct passages: refuse a context far
    // shorter than asked rather than mislabel its length.
    if let Built::TooManyUnits(available) = build(lo + 1)
        && let Some((_, t)) = &lo_m
        && (*t as f64) < 0.9 * length as f64
    {
        return Err(SuiteError::NotEnoughPassages {
            task: task.into(),
            length,
            available,
        });
    }
    lo_m.ok_or_else(|| SuiteError::Config(format!("{task}: no prompt fits in {length} tokens")))
}

/// A record carrying a draft, for template filling.
fn record_for_template(d: &Draft) -> LongBenchRecord {
    LongBenchRecord {
        input: d.input.clone(),
        context: d.context.clone(),
        answers: d.answers.clone(),
        length: 0,
        dataset: String::new(),
        language: "en".into(),
        all_classes: d.all_classes.clone(),
        id: String::new(),
        depth: None,
        needle: None,
    }
}

/// Insert `items` into `units` at the boundary nearest to each item's depth (by
/// characters of the joined text), keeping the items' order for equal boundaries.
/// Returns the joined text.
pub(crate) fn insert_at_depths(units: &[String], items: &[(f64, String)], sep: &str) -> String {
    // Character offset of each boundary b (before unit b), b = 0..=units.len().
    let mut offsets = Vec::with_capacity(units.len() + 1);
    let mut acc = 0usize;
    for u in units {
        offsets.push(acc);
        acc += u.chars().count() + sep.chars().count();
    }
    offsets.push(acc);
    let total = acc as f64;
    let mut placed: Vec<(usize, usize)> = items
        .iter()
        .enumerate()
        .map(|(k, (depth, _))| {
            let target = depth * total;
            let b = offsets
                .iter()
                .enumerate()
                .min_by(|(_, a), (_, b)| {
                    (**a as f64 - target)
                        .abs()
                        .total_cmp(&(**b as f64 - target).abs())
                })
                .map_or(0, |(b, _)| b);
            (b, k)
        })
        .collect();
    placed.sort();
    let mut parts: Vec<&str> = Vec::with_capacity(units.len() + items.len());
    let mut next = placed.iter().peekable();
    for b in 0..=units.len() {
        while let Some(&&(pb, k)) = next.peek() {
            if pb != b {
                break;
            }
            parts.push(&items[k].1);
            next.next();
        }
        if b < units.len() {
            parts.push(&units[b]);
        }
    }
    parts.join(sep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_haystack_splits() {
        let h = Haystack::excerpt();
        assert!(
            h.paragraphs.len() > 20 && h.sentences.len() > 100,
            "{} {}",
            h.paragraphs.len(),
            h.sentences.len()
        );
        assert_eq!(h.sentences[0], "Call me Ishmael.");
        assert!(
            h.sentences
                .iter()
                .all(|s| s.chars().count() <= MAX_SENTENCE_CHARS)
        );
        assert!(matches!(
            Haystack::from_text("too short"),
            Err(SuiteError::HaystackTooSmall { .. })
        ));
    }

    #[test]
    fn insertion_by_depth() {
        let units: Vec<String> = (0..10).map(|i| format!("u{i}")).collect();
        let text = insert_at_depths(
            &units,
            &[(0.0, "A".into()), (1.0, "Z".into()), (0.5, "M".into())],
            " ",
        );
        assert_eq!(text, "A u0 u1 u2 u3 u4 M u5 u6 u7 u8 u9 Z");
    }
}
