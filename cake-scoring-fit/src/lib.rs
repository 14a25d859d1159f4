//! Fitted score functions for static CAKE budgets (`docs/algorithm.md`, section 9).
//!
//! Instead of measuring every layer's preference `P_l` on each prompt, a model's layer
//! preferences are fitted once offline:
//!
//! 1. **Collect** ([`collect`], [`pca`], [`io`]): per calibration sample and layer (and
//!    optionally KV head), the preference `P_l` and its parts, the normalised share
//!    `P_l / sum P`, and the PCA spread of the key and value states; stored as JSONL or CSV.
//! 2. **Fit** ([`poly`], [`cv`]): a polynomial of the normalised layer index `x in [0, 1]`
//!    to the shares, degree chosen by k-fold cross-validation over samples.
//! 3. **Generalise** ([`generalise`]): leave one dataset out, report MSE and Spearman.
//! 4. **Output** ([`score_file`], [`report`], [`plot`]): the `cake-score-function/1` JSON
//!    file read by `cake-core`'s `Static` allocator, a Markdown report and a plot
//!    ([`plot`] also holds the chart setup the `cake` command's charts share).
//!
//! Linear algebra (covariance eigenvalues, least squares) uses `faer`.

#![warn(missing_docs)]

pub mod collect;
pub mod cv;
pub mod error;
pub mod generalise;
pub mod io;
pub mod pca;
pub mod plot;
pub mod poly;
pub mod report;
pub mod score_file;

pub use collect::{
    LayerMeasurement, LayerStatsRow, StatsCollector, normalised_layer, sample_rows,
    shares_from_preferences,
};
pub use cv::{DegreeSelection, fold_assignment, select_degree_cv};
pub use error::{FitError, Result};
pub use generalise::{HeldOutReport, average_ranks, leave_one_dataset_out, spearman};
pub use io::{CSV_HEADER, read_csv, read_jsonl, write_csv, write_jsonl};
pub use pca::{
    DEFAULT_PCA_TOP_K, PcaSummary, covariance_eigenvalues, pca_summary, pca_summary_layer,
    pca_summary_per_head,
};
pub use plot::plot_fit;
pub use poly::{MAX_DEGREE, Poly, fit_polynomial, mean_squared_error};
pub use report::{FitConfig, FitReport, HeadFit, fit_score_function, rows_for_head};
pub use score_file::{PcaSettings, SCORE_FUNCTION_FORMAT, ScoreFunctionFile};
