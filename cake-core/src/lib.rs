//! CAKE (Cascading and Adaptive KV cache Eviction) math, generic over Burn's `Backend`.
//!
//! This crate holds no model and does no IO beyond reading score-function files: models
//! (see `cake-models`) compute attention and hand the tensors here through the
//! [`KvCompressor`] hooks. A [`Policy`] pairs an [`Allocator`] (how many tokens each layer
//! keeps) with a [`Scorer`] (which ones); a [`PolicyCompressor`] runs it through the hooks.
//! A [`PolicySpec`] describes a policy by value (as flags and settings files do) and is
//! the one factory of compressors, `full` included.
//!
//! A model's prefill appends each layer's keys and values to that layer's cache and then
//! calls the compressor's hook with the layer's queries; here random tensors stand in for
//! a model's (`cake-models` runs the same hooks from a real one):
//!
//! ```
//! use burn::tensor::{Distribution, Tensor};
//! use cake_core::{KvCompressor, LayerCache, Method, PolicyConfig, PolicySpec, PrefillLayer};
//!
//! type B = burn_flex::Flex;
//! let (layers, heads, kv_heads, prompt, dim) = (4, 4, 2, 96, 8);
//! let spec = PolicySpec {
//!     method: Method::Cake,
//!     cache: PolicyConfig { cache_size: 32, window: 8, ..PolicyConfig::default() },
//!     ..PolicySpec::default()
//! };
//! let mut compressor = spec.compressor::<B>("Llama-3.1-8B-Instruct", layers)?;
//! let random = |shape: [usize; 3]| {
//!     Tensor::<B, 3>::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
//! };
//! let mut caches: Vec<LayerCache<B>> = (0..layers).map(|_| LayerCache::new()).collect();
//! for layer in 0..layers {
//!     // Keys and values `[Hkv, S, d]` at positions 0..S, then the hook with the queries.
//!     caches[layer].append(random([kv_heads, prompt, dim]), random([kv_heads, prompt, dim]), 0)?;
//!     let queries = random([heads, prompt, dim]);
//!     compressor.after_prefill_layer(PrefillLayer::new(layer, queries), &mut caches[..=layer])?;
//! }
//! compressor.after_prefill(&mut caches)?;
//! // The layers share a budget of C = 32 tokens each on average.
//! let kept: usize = caches.iter().map(LayerCache::len).sum();
//! assert!(kept <= 32 * layers && kept < prompt * layers);
//! if let Some(report) = compressor.report(&caches) {
//!     println!("{}", report.to_json());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
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
