//! Errors of configuration, names and score-function files, and of cache operations.

/// What can be wrong with a policy's configuration or its input files.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `cache_size` is 0.
    #[error("cache_size is 0: give the tokens kept per layer (window included), e.g. 1024")]
    CacheSizeZero,
    /// `window` is 0.
    #[error("window is 0: the observation window needs at least 1 token (default 32)")]
    WindowZero,
    /// `cache_size` leaves nothing outside the window.
    #[error(
        "cache_size {cache_size} must exceed window {window}: the cache holds the window plus the selected tokens"
    )]
    CacheSizeNotAboveWindow {
        /// The configured cache size.
        cache_size: usize,
        /// The configured window.
        window: usize,
    },
    /// `ratio` outside `(0, 1]`.
    #[error("ratio {0} is outside (0, 1]: give the fraction of the prompt to keep, e.g. 0.1")]
    RatioOutOfRange(f64),
    /// `ratio` times the prompt length leaves nothing outside the window: the shared
    /// budget `(C - w) * L` would be 0.
    #[error(
        "ratio {ratio} of a {prompt_len}-token prompt gives cache size {cache_size}, which does not exceed the window {window}: nothing outside the window would be kept; raise the ratio above window / prompt length ({window}/{prompt_len}), lower the window, or give a fixed cache_size instead"
    )]
    RatioCacheNotAboveWindow {
        /// The configured ratio.
        ratio: f64,
        /// The prompt length S.
        prompt_len: usize,
        /// The cache size it gives, `round(ratio * S)`.
        cache_size: usize,
        /// The configured window.
        window: usize,
    },
    /// A temperature is not a positive finite number.
    #[error("{name} = {value} must be a positive finite number")]
    BadTemperature {
        /// `tau1` or `tau2`.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// `gamma` is negative or not finite.
    #[error("gamma = {0} must be a finite number >= 0")]
    BadGamma(f64),
    /// `beta` is below 1 or not finite.
    #[error("beta = {0} must be a finite number >= 1 (PyramidKV uses 20)")]
    BadBeta(f64),
    /// AdaKV's floor fraction is outside `[0, 1]`.
    #[error("head_floor = {0} must be a fraction in [0, 1] (AdaKV uses 0.2)")]
    BadHeadFloor(f64),
    /// Static head budgets without a score-function file.
    #[error(
        "--head-budgets static needs a score-function file with per-head polynomials: give --score-fn FILE (write one with `cake fit --per-head`)"
    )]
    StaticHeadsNeedFile,
    /// Static head budgets from a score function fitted without `--per-head`.
    #[error(
        "{path}: this score function has no per-head polynomials (head_coefficients); refit with `cake fit --per-head`, or use another --head-budgets mode"
    )]
    NoHeadShares {
        /// The score-function file.
        path: String,
    },
    /// Per-head shares for another number of KV heads than the model has.
    #[error("the score function has shares for {file_heads} KV heads, the model has {model_heads}")]
    HeadCountMismatch {
        /// KV heads in the file.
        file_heads: usize,
        /// KV heads in the model.
        model_heads: usize,
    },
    /// The pooling kernel is even or 0.
    #[error("pool_kernel = {0} must be odd (1 disables pooling; CAKE uses 5)")]
    BadPoolKernel(usize),
    /// A name that is not one of the known ones.
    #[error("unknown {what} {name:?}; valid names: {valid}")]
    UnknownName {
        /// "preset", "allocator" or "scorer".
        what: &'static str,
        /// The name given.
        name: String,
        /// The valid names, comma separated.
        valid: String,
    },
    /// The static allocator was named without a score-function file.
    #[error(
        "the static allocator needs a score-function file: give --score-fn FILE (write one with `cake fit`), or build it with Static::from_score_function"
    )]
    StaticNeedsFile,
    /// [`crate::Method::Full`] asked for as a policy.
    #[error(
        "`full` keeps every token and has no policy: use KeepAll, or PolicySpec::compressor, which gives it for `full`"
    )]
    FullIsNotAPolicy,
    /// An allocator, scorer or head-budget setting on `full`, which has none of them.
    #[error(
        "`full` keeps every token: it has no allocator, scorer or head budgets to set (drop --allocator/--scorer/--head-budgets, or pick a method such as cake)"
    )]
    FullHasNoParts,
    /// A score-function file given without the static allocator.
    #[error(
        "a score-function file is only used by the static allocator or static head budgets: add --allocator static or --head-budgets static, or drop --score-fn"
    )]
    ScoreFunctionUnused,
    /// A static table with no layer.
    #[error("static shares are empty")]
    EmptyShares,
    /// A score-function file for another layer count.
    #[error(
        "score function has {file_layers} layers but the model has {model_layers}: fit it for this model"
    )]
    LayerCountMismatch {
        /// Layers in the file.
        file_layers: usize,
        /// Layers of the model.
        model_layers: usize,
    },
    /// A score-function file that cannot be used.
    #[error("score-function file {path}: {reason}")]
    ScoreFunction {
        /// The file.
        path: String,
        /// What is wrong and where.
        reason: String,
    },
    /// A temperature table file (`--tau-file`) that cannot be used.
    #[error("temperature file {path}: {reason}")]
    TauFile {
        /// The file.
        path: String,
        /// What is wrong, where, and how to fix it.
        reason: String,
    },
    /// A file that cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A model with no layer.
    #[error("the model has 0 layers")]
    NoLayers,
}

/// A cache operation that cannot be carried out (a bug of the caller, reported instead of
/// a panic so that a library user's mistake cannot abort the process).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// Attention over a cache that holds nothing.
    #[error("the layer cache is empty: append keys and values before attending")]
    Empty,
    /// Tensors whose shapes do not fit the cache.
    #[error("cache shape mismatch: {0}")]
    Shape(String),
    /// Keep lists that `LayerCache::retain` cannot apply.
    #[error("cannot retain these rows: {0}")]
    Retain(String),
    /// A policy that cannot run on this model (e.g. static head budgets without shares
    /// for its KV heads).
    #[error("the policy cannot run: {0}")]
    Policy(String),
}
