//! The prediction loop: build each record's prompt, let a [`Generator`] answer, and append
//! one line per record to `<out>/<dataset>.jsonl`, flushed to disk line by line.
//!
//! Lines are `{"pred", "answers", "all_classes", "length", "_id", "depth"}`; LongBench's
//! `eval.py` reads the first four and ignores the rest. Resuming is exact: the complete
//! lines already in the file must be the first records of the dataset, in order (checked
//! through `_id`); they are skipped, and a torn last line (a crash mid-write) is cut off
//! and redone. A record is therefore never lost and never written twice.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::prompt::{
    PromptError, PromptTokenizer, QuestionProtocol, SplitPrompt, build_prompt, build_split_prompt,
};
use crate::record::{DataError, LongBenchRecord};
use crate::registry::DatasetSpec;

/// Boxed error from a generator.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// When generation must stop (besides the model's end-of-sequence tokens and
/// `max_new_tokens`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StopRule {
    /// A token that decodes to a newline also ends generation (samsum). As in LongBench,
    /// the newline token is part of the output.
    pub stop_on_newline: bool,
    /// End tokens (EOS, and the newline when `stop_on_newline`) are suppressed until this
    /// many tokens were generated (`min_length = prompt + 1` in LongBench's samsum call).
    pub min_new_tokens: usize,
}

impl StopRule {
    /// The rule a dataset asks for.
    pub fn for_dataset(spec: &DatasetSpec) -> Self {
        Self {
            stop_on_newline: spec.stop_on_newline,
            min_new_tokens: spec.min_new_tokens,
        }
    }
}

/// What a generator returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GenerationOutcome {
    /// Generated text, special tokens skipped.
    pub text: String,
    /// Tokens in the prompt as the model saw it.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub new_tokens: usize,
}

/// A model that answers prompts (greedy decoding in LongBench).
pub trait Generator {
    /// Generate at most `max_new_tokens` tokens after `prompt`, obeying `stop`.
    fn generate(
        &mut self,
        prompt: &str,
        max_new_tokens: usize,
        stop: &StopRule,
    ) -> Result<GenerationOutcome, BoxError>;
}

/// Several configurations answering the same records (a policy sweep). For each record
/// the loop calls [`SweepGenerator::prepare`] once with the prompt, then
/// [`SweepGenerator::generate_many`] once with every configuration that still lacks the
/// record, so an implementation can share work between configurations (one prefill per
/// prompt, one batched decode for all configurations).
pub trait SweepGenerator {
    /// Number of configurations (one prediction file each).
    fn configurations(&self) -> usize;

    /// Called once per record that some configuration still needs, before its
    /// generations (under [`QuestionProtocol::InPrompt`], see
    /// [`SweepGenerator::question`]).
    fn prepare(&mut self, prompt: &str) -> Result<(), BoxError>;

    /// Where the question goes: the loop builds and prepares each prompt accordingly
    /// ([`SweepGenerator::prepare`] for [`QuestionProtocol::InPrompt`], the default;
    /// [`SweepGenerator::prepare_split`] for [`QuestionProtocol::AfterCompression`]).
    fn question(&self) -> QuestionProtocol {
        QuestionProtocol::InPrompt
    }

    /// [`SweepGenerator::prepare`] for a generator whose [`SweepGenerator::question`] is
    /// [`QuestionProtocol::AfterCompression`]: the prompt with the place where its question
    /// part starts ([`crate::prompt::build_split_prompt`]). The default refuses: a
    /// generator that reads the question after compression must say how.
    fn prepare_split(&mut self, prompt: &SplitPrompt) -> Result<(), BoxError> {
        let _ = prompt;
        Err("this generator reads the question inside the prompt only (in-prompt)".into())
    }

    /// Configuration `configuration`'s answer to the prompt last prepared.
    fn generate(
        &mut self,
        configuration: usize,
        max_new_tokens: usize,
        stop: &StopRule,
    ) -> Result<GenerationOutcome, BoxError>;

    /// The answers of `configurations` (increasing, distinct) to the prompt last prepared,
    /// in the order of `configurations`; each must equal
    /// [`SweepGenerator::generate`]'s for its configuration. The loop writes them in that
    /// order and stops at the first error, so the results after an `Err` may be left out.
    ///
    /// The default calls [`SweepGenerator::generate`] for each configuration in turn and
    /// stops after the first error (as one call per configuration did); an implementation
    /// may decode them together instead.
    fn generate_many(
        &mut self,
        configurations: &[usize],
        max_new_tokens: usize,
        stop: &StopRule,
    ) -> Vec<Result<GenerationOutcome, BoxError>> {
        generate_each(self, configurations, max_new_tokens, stop)
    }
}

/// [`SweepGenerator::generate_many`]'s default: [`SweepGenerator::generate`] for each of
/// `configurations` in turn, stopping after the first error. For implementations that
/// decode together only sometimes (a batch of one, a failed batch).
pub fn generate_each<S: SweepGenerator + ?Sized>(
    sweep: &mut S,
    configurations: &[usize],
    max_new_tokens: usize,
    stop: &StopRule,
) -> Vec<Result<GenerationOutcome, BoxError>> {
    let mut results = Vec::with_capacity(configurations.len());
    for &configuration in configurations {
        let result = sweep.generate(configuration, max_new_tokens, stop);
        let failed = result.is_err();
        results.push(result);
        if failed {
            break;
        }
    }
    results
}

/// One [`Generator`] as a sweep of one configuration.
struct Single<'a, G: ?Sized> {
    generator: &'a mut G,
    prompt: String,
}

impl<G: Generator + ?Sized> SweepGenerator for Single<'_, G> {
    fn configurations(&self) -> usize {
        1
    }

    fn prepare(&mut self, prompt: &str) -> Result<(), BoxError> {
        prompt.clone_into(&mut self.prompt);
        Ok(())
    }

    fn generate(
        &mut self,
        _: usize,
        max_new_tokens: usize,
        stop: &StopRule,
    ) -> Result<GenerationOutcome, BoxError> {
        self.generator.generate(&self.prompt, max_new_tokens, stop)
    }
}

/// One line of a prediction file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionLine {
    /// The model's answer.
    pub pred: String,
    /// Gold answers (copied from the record).
    pub answers: Vec<String>,
    /// Class labels (copied from the record).
    pub all_classes: Option<Vec<String>>,
    /// Record length (copied from the record).
    pub length: u64,
    /// Record id (extra field, used to resume safely).
    #[serde(rename = "_id", default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Answer depth of synthetic records (extra field, for depth x length heatmaps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<f64>,
}

/// Progress of the loop, reported after every record.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress<'a> {
    /// The configuration (0 outside sweeps).
    pub configuration: usize,
    /// 0-based index of the record in the dataset.
    pub index: usize,
    /// Record id.
    pub id: &'a str,
    /// Whether it was already in the file (skipped) rather than generated now.
    pub resumed: bool,
    /// The generation, when one ran.
    pub outcome: Option<&'a GenerationOutcome>,
    /// Whether the prompt's middle was cut out.
    pub truncated: bool,
}

/// What a prediction run did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PredictSummary {
    /// Records found already complete in the file and skipped.
    pub resumed: usize,
    /// Records generated in this run.
    pub generated: usize,
    /// Of those, prompts whose middle was cut out.
    pub truncated: usize,
    /// Bytes of a torn last line that were cut off before resuming.
    pub repaired_bytes: u64,
    /// Prompt tokens over all generated records.
    pub prompt_tokens: usize,
    /// New tokens over all generated records.
    pub new_tokens: usize,
}

/// The prediction loop failed.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    /// Reading the dataset failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A prompt could not be built.
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// File system error on the prediction file.
    #[error("prediction file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A complete line of an existing prediction file is not valid.
    #[error(
        "{path}:{line}: existing prediction line is not valid JSON ({source}); move the file away to start over"
    )]
    CorruptLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Parse error.
        source: serde_json::Error,
    },
    /// The existing file does not belong to this dataset's records.
    #[error(
        "{path}:{line}: holds record {found:?} but the dataset's record {line} is {expected:?}; the file belongs to other data, move it away to start over"
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Id in the file.
        found: String,
        /// Id expected at that position.
        expected: String,
    },
    /// The file has more complete lines than the dataset has records.
    #[error("{path} has {lines} predictions but the dataset has only {records} records")]
    TooManyLines {
        /// The file.
        path: PathBuf,
        /// Complete lines in the file.
        lines: usize,
        /// Records in the dataset.
        records: usize,
    },
    /// `max_length` is too small to hold any prompt.
    #[error("max_length must be at least 2 tokens (got {0})")]
    MaxLength(usize),
    /// The generator failed.
    #[error("generation failed on record {index} ({id}): {source}")]
    Generation {
        /// 0-based record index.
        index: usize,
        /// Record id.
        id: String,
        /// Cause.
        source: BoxError,
    },
}

/// Existing complete prediction lines of a file, after cutting off a torn last line.
struct Existing {
    lines: Vec<PredictionLine>,
    repaired_bytes: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PredictError + '_ {
    move |source| PredictError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Read the complete lines of `path` and truncate the file after the last one.
/// A last line without its newline, or one that does not parse, counts as torn.
fn load_existing(path: &Path) -> Result<Existing, PredictError> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Existing {
                lines: Vec::new(),
                repaired_bytes: 0,
            });
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io_err(path))?;
    let mut lines = Vec::new();
    let mut good_end = 0usize;
    let mut start = 0usize;
    let mut line_no = 0usize;
    while start < bytes.len() {
        line_no += 1;
        let Some(nl) = bytes[start..].iter().position(|&b| b == b'\n') else {
            break; // no newline: torn
        };
        let raw = &bytes[start..start + nl];
        let next = start + nl + 1;
        let is_last = next >= bytes.len();
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            start = next;
            good_end = next;
            continue;
        }
        match serde_json::from_slice::<PredictionLine>(raw) {
            Ok(line) => {
                lines.push(line);
                good_end = next;
            }
            // A bad final line is what a crash between write and flush leaves: redo it.
            Err(_) if is_last => break,
            Err(source) => {
                return Err(PredictError::CorruptLine {
                    path: path.to_path_buf(),
                    line: line_no,
                    source,
                });
            }
        }
        start = next;
    }
    let repaired_bytes = (bytes.len() - good_end) as u64;
    if repaired_bytes > 0 {
        file.set_len(good_end as u64).map_err(io_err(path))?;
        file.sync_all().map_err(io_err(path))?;
    }
    Ok(Existing {
        lines,
        repaired_bytes,
    })
}

/// Append one line (a single write of the JSON plus its newline) and push it to disk.
fn append_line(file: &mut File, path: &Path, line: &PredictionLine) -> Result<(), PredictError> {
    let mut buf = serde_json::to_vec(line).map_err(|e| io_err(path)(std::io::Error::other(e)))?;
    buf.push(b'\n');
    file.write_all(&buf).map_err(io_err(path))?;
    file.flush().map_err(io_err(path))?;
    file.sync_data().map_err(io_err(path))
}

/// Predict every record of a dataset into `out_file`, resuming what is already there.
///
/// `records` are the dataset's records in order (e.g. [`crate::record::read_dataset`]);
/// `max_length` is the prompt budget in tokens (LongBench's `model2maxlen`); `progress`
/// is called after each record.
pub fn predict_dataset<I, T, G, P>(
    records: I,
    spec: &DatasetSpec,
    tokenizer: &T,
    generator: &mut G,
    out_file: &Path,
    max_length: usize,
    progress: P,
) -> Result<PredictSummary, PredictError>
where
    I: IntoIterator<Item = Result<LongBenchRecord, DataError>>,
    T: PromptTokenizer + ?Sized,
    G: Generator + ?Sized,
    P: FnMut(&Progress<'_>),
{
    let mut single = Single {
        generator,
        prompt: String::new(),
    };
    let files = [out_file.to_path_buf()];
    let summaries = predict_sweep(
        records,
        spec,
        tokenizer,
        &mut single,
        &files,
        max_length,
        progress,
    )?;
    Ok(summaries.into_iter().next().unwrap_or_default())
}

/// A prediction file being extended: its existing lines and the handle to append to.
struct Output<'a> {
    path: &'a Path,
    existing: Vec<PredictionLine>,
    file: File,
    summary: PredictSummary,
}

impl<'a> Output<'a> {
    /// Opens `path` for appending after cutting off a torn last line.
    fn open(path: &'a Path) -> Result<Self, PredictError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let existing = load_existing(path)?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_err(path))?;
        file.seek(SeekFrom::End(0)).map_err(io_err(path))?;
        Ok(Self {
            path,
            existing: existing.lines,
            file,
            summary: PredictSummary {
                repaired_bytes: existing.repaired_bytes,
                ..PredictSummary::default()
            },
        })
    }

    /// Whether record `index` (id `id`) is already in the file; an error when the file
    /// holds another record there.
    fn has(&self, index: usize, id: &str) -> Result<bool, PredictError> {
        let Some(done) = self.existing.get(index) else {
            return Ok(false);
        };
        match &done.id {
            Some(found) if found != id => Err(PredictError::Mismatch {
                path: self.path.to_path_buf(),
                line: index + 1,
                found: found.clone(),
                expected: id.to_string(),
            }),
            _ => Ok(true),
        }
    }
}

/// Predict every record of a dataset for every configuration of a sweep, in one pass
/// (each prompt built for the generator's [`SweepGenerator::question`] protocol):
/// configuration `k` writes `out_files[k]`, resuming what is already there (each file is
/// read once). Each record's prompt is built once and prepared once, and only when some
/// configuration still needs it; then [`SweepGenerator::generate_many`] answers it for
/// every configuration that needs it at once. `progress` is called after each (record,
/// configuration), in configuration order, once the record's generations are done.
/// The files equal those of separate [`predict_dataset`] runs with the same generations.
pub fn predict_sweep<I, T, S, P>(
    records: I,
    spec: &DatasetSpec,
    tokenizer: &T,
    generator: &mut S,
    out_files: &[PathBuf],
    max_length: usize,
    mut progress: P,
) -> Result<Vec<PredictSummary>, PredictError>
where
    I: IntoIterator<Item = Result<LongBenchRecord, DataError>>,
    T: PromptTokenizer + ?Sized,
    S: SweepGenerator + ?Sized,
    P: FnMut(&Progress<'_>),
{
    if max_length < 2 {
        return Err(PredictError::MaxLength(max_length));
    }
    let mut outputs = out_files
        .iter()
        .map(|path| Output::open(path))
        .collect::<Result<Vec<_>, _>>()?;
    let stop = StopRule::for_dataset(spec);
    let mut seen = 0usize;
    for (index, record) in records.into_iter().enumerate() {
        let record = record?;
        seen = index + 1;
        let generation_error = |source| PredictError::Generation {
            index,
            id: record.id.clone(),
            source,
        };
        // Whether each file holds the record, up to the first that holds another record
        // there: that error comes after the configurations before it are written, as with
        // one generation per configuration.
        let mut held = Vec::with_capacity(outputs.len());
        for output in &outputs {
            let has = output.has(index, &record.id);
            let mismatch = has.is_err();
            held.push(has);
            if mismatch {
                break;
            }
        }
        let needed: Vec<usize> = (0..held.len())
            .filter(|&c| matches!(held[c], Ok(false)))
            .collect();
        let mut truncated = false;
        let mut results = Vec::new().into_iter();
        if !needed.is_empty() {
            truncated = match generator.question() {
                QuestionProtocol::InPrompt => {
                    let built = build_prompt(&record, spec, tokenizer, max_length)?;
                    generator.prepare(&built.text).map_err(generation_error)?;
                    built.truncated
                }
                QuestionProtocol::AfterCompression => {
                    let split = build_split_prompt(&record, spec, tokenizer, max_length)?;
                    generator.prepare_split(&split).map_err(generation_error)?;
                    split.prompt.truncated
                }
            };
            results = generator
                .generate_many(&needed, spec.max_new_tokens, &stop)
                .into_iter();
        }
        for ((configuration, output), has) in outputs.iter_mut().enumerate().zip(held) {
            if has? {
                output.summary.resumed += 1;
                progress(&Progress {
                    configuration,
                    index,
                    id: &record.id,
                    resumed: true,
                    outcome: None,
                    truncated: false,
                });
                continue;
            }
            let outcome = results
                .next()
                .unwrap_or_else(|| {
                    Err(
                        format!("no answer from the generator for configuration {configuration}")
                            .into(),
                    )
                })
                .map_err(generation_error)?;
            let line = PredictionLine {
                pred: outcome.text.clone(),
                answers: record.answers.clone(),
                all_classes: record.all_classes.clone(),
                length: record.length,
                id: Some(record.id.clone()),
                depth: record.depth,
            };
            append_line(&mut output.file, output.path, &line)?;
            let summary = &mut output.summary;
            summary.generated += 1;
            summary.truncated += usize::from(truncated);
            summary.prompt_tokens += outcome.prompt_tokens;
            summary.new_tokens += outcome.new_tokens;
            progress(&Progress {
                configuration,
                index,
                id: &record.id,
                resumed: false,
                outcome: Some(&outcome),
                truncated,
            });
        }
    }
    for output in &outputs {
        if output.existing.len() > seen {
            return Err(PredictError::TooManyLines {
                path: output.path.to_path_buf(),
                lines: output.existing.len(),
                records: seen,
            });
        }
    }
    Ok(outputs.into_iter().map(|o| o.summary).collect())
}
