//! Fuzzing of cake's file parsers on stable Rust: seeded structural mutation over a corpus
//! of real files, one target per parser (GGUF, safetensors, `config.json`, tokenizer folder
//! and chat template, LongBench records, prediction files, settings TOML, score-function
//! JSON).
//!
//! Every execution is reproducible from `(seed, target, index)`. Panics are caught
//! ([`runner`]), executions are timed (hangs), and the binary installs [`CapAllocator`],
//! which refuses any single allocation above 256 MiB, so a size taken from an untrusted
//! header before it is checked shows up as an out-of-memory finding instead of a machine
//! running out of memory. Findings that end a process (refused allocations, stack
//! overflows, killed hangs) are recovered by running the executions in worker processes
//! ([`worker`]).

#![warn(missing_docs)]

pub mod alloc;
pub mod gguf_seed;
pub mod mutate;
pub mod rng;
pub mod runner;
pub mod targets;
pub mod worker;

pub use alloc::CapAllocator;
pub use runner::{Finding, FindingKind, RunOptions, Stats, run};
pub use targets::{TARGET_NAMES, Target, target};
pub use worker::{SuperviseOptions, supervise};
