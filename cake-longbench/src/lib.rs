//! LongBench v1 for cake-rs: the data format, prompt templates and truncation, resumable
//! prediction files, the official metrics ported exactly, and an offline synthetic suite in
//! the same format.
//!
//! Nothing here depends on a model: prompt building takes a [`PromptTokenizer`] and the
//! prediction loop a [`Generator`], both small traits the CLI implements for a real model.

#![warn(missing_docs)]

pub mod approx_tokenizer;
pub mod eval;
pub mod haystack;
pub mod metrics;
pub mod needle;
pub mod predict;
pub mod prompt;
pub mod pytext;
pub mod record;
pub mod registry;
pub mod shard;
pub mod stats;
pub mod synthetic;

pub use approx_tokenizer::ApproxTokenizer;
pub use eval::{DatasetScore, EvalError, EvalResult, evaluate_dir};
pub use haystack::{HaystackError, HaystackSource, fetch_haystack};
pub use metrics::{Metric, MetricError};
pub use needle::{NeedleError, PromptWithNeedle, locate_needle, token_span};
pub use predict::{
    BoxError, GenerationOutcome, Generator, PredictError, PredictSummary, PredictionLine, Progress,
    StopRule, SweepGenerator, generate_each, predict_dataset, predict_sweep,
};
pub use prompt::{
    BuiltPrompt, PromptError, PromptTokenizer, QuestionProtocol, SplitPrompt,
    UnknownQuestionProtocol, build_prompt, build_split_prompt,
};
pub use record::{DataError, LongBenchRecord, NeedleSpan, read_dataset};
pub use registry::{DatasetSpec, Language, RegistryError};
pub use shard::{Shard, ShardIndex, ShardParseError};
pub use stats::{BootstrapConfig, Interval, StatsError};
pub use synthetic::{Haystack, SuiteConfig, SuiteError, SuiteFile, generate_suite, generate_task};
