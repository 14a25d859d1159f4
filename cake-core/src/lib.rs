//! CAKE (Cascading and Adaptive KV cache Eviction) math, generic over Burn's `Backend`.
//!
//! This crate holds no model and does no IO beyond reading score-function files: models
//! (see `cake-models`) compute attention and hand the tensors here through the
//! [`KvCompressor`] hooks. A [`Policy`] pairs an [`Allocator`] (how many tokens each layer
//! keeps) with a [`Scorer`] (which ones); a [`PolicyCompressor`] runs it through the hooks.
//! A [`PolicySpec`] describes a policy by value (as flags and settings files do) and is
//! the one factory of compressors, `full` included.
//!
//! ```ignore
//! let spec = PolicySpec { method: Method::Cake, ..PolicySpec::default() };
//! let mut compressor = spec.compressor::<B>("Llama-3.1-8B-Instruct", num_layers)?;
//! model.prefill(&prompt, &mut caches, &mut compressor, PrefillLogits::Last)?;
//! if let Some(report) = compressor.report(&caches) {
//!     println!("{}", report.to_json());
//! }
//! ```

/// A function's whole body: returns `$body` (a call of an `#[inline(always)]` function)
/// compiled for AVX2 when the processor has it, so that its vectorised loops use 8-wide
/// registers (the crate is built for the baseline x86-64, SSE2); the arithmetic, and so the
/// bits, are the same either way.
macro_rules! with_avx2 {
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            #[target_feature(enable = "avx2")]
            unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: the processor supports AVX2 (checked above).
            return unsafe { avx2(|| $body) };
        }
        $body
    }};
}

pub mod allocator;
pub mod budget;
pub mod cache;
pub mod cascade;
pub mod compressor;
pub mod error;
pub mod heads;
#[cfg(feature = "flex")]
pub mod host;
mod names;
pub mod policy;
pub mod replay;
pub mod score_function;
pub mod scorer;
pub mod spec;
pub mod stats;
pub mod tau;

pub use allocator::{
    Allocator, AllocatorKind, LayerPreference, Preference, Pyramid, Static, Uniform,
};
pub use budget::{BudgetPlan, allocate_budgets};
pub use cache::{HeadSpan, LayerCache, MAX_RUNS, RowRun};
pub use cascade::{
    CompressionReport, LayerReport, PolicyCompressor, evict_heads_to_budgets, evict_to_budget,
};
pub use compressor::{DecodeStep, KeepAll, KvCompressor, PrefillLayer};
pub use error::{CacheError, ConfigError};
pub use heads::HeadBudgets;
pub use policy::{DecodeEviction, Method, Policy, PolicyConfig};
pub use replay::{PrefillRecorder, replay_prefill};
pub use score_function::ScoreFunction;
pub use scorer::{Cake, H2o, Scorer, ScorerKind, SnapKv, Streaming, Tova};
pub use spec::{Compressor, PolicySpec};
pub use tau::{TauEntry, TauFile, TauLookup, TauSource, TauTable, lookup_tau};
