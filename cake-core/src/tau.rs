//! Published preference temperatures per model and cache size, shipped as data
//! (`tau_defaults.json`), with a fallback of `1.0 / 1.0` for other models.

use serde::{Deserialize, Serialize};

/// The embedded table.
const TABLE: &str = include_str!("tau_defaults.json");

/// One published `(model, C) -> (tau1, tau2)` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TauEntry {
    /// Model name as published (Hugging Face repository name without the owner).
    pub model: String,
    /// Cache size C the values were tuned for.
    pub cache_size: usize,
    /// Entropy temperature.
    pub tau1: f64,
    /// Variance temperature.
    pub tau2: f64,
}

#[derive(Deserialize)]
struct Table {
    entries: Vec<TauEntry>,
}

/// Where looked-up temperatures came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TauSource {
    /// The published entry for this model at the nearest published cache size.
    Published {
        /// The table's model name.
        model: String,
        /// The published cache size used.
        cache_size: usize,
    },
    /// The model is not in the table: `1.0 / 1.0`.
    Fallback,
    /// Given explicitly by the user.
    User,
}

/// Temperatures and their origin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TauLookup {
    /// Entropy temperature.
    pub tau1: f64,
    /// Variance temperature.
    pub tau2: f64,
    /// Where they came from.
    pub source: TauSource,
}

/// The published entries.
pub fn published() -> Vec<TauEntry> {
    // The table is part of the crate and checked by a unit test, so it always parses.
    serde_json::from_str::<Table>(TABLE).map_or_else(|_| Vec::new(), |t| t.entries)
}

/// Lower-cased last path component without a `meta-` prefix or a `-hf` suffix.
fn normalise_name(name: &str) -> String {
    let base = name.trim().rsplit(['/', '\\']).next().unwrap_or(name);
    let lower = base.to_ascii_lowercase();
    let lower = lower.strip_suffix("-hf").unwrap_or(&lower);
    lower.strip_prefix("meta-").unwrap_or(lower).to_string()
}

/// Temperatures for `model` (a Hugging Face name or path; matched case-insensitively on
/// the last path component) at cache size `cache_size`, from the nearest published cache
/// size (ties: the smaller); `1.0 / 1.0` with [`TauSource::Fallback`] for other models.
pub fn lookup_tau(model: &str, cache_size: usize) -> TauLookup {
    let wanted = normalise_name(model);
    published()
        .into_iter()
        .filter(|e| normalise_name(&e.model) == wanted)
        .min_by_key(|e| (e.cache_size.abs_diff(cache_size), e.cache_size))
        .map_or(
            TauLookup {
                tau1: 1.0,
                tau2: 1.0,
                source: TauSource::Fallback,
            },
            |e| TauLookup {
                tau1: e.tau1,
                tau2: e.tau2,
                source: TauSource::Published {
                    model: e.model,
                    cache_size: e.cache_size,
                },
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_parses_with_all_published_values() {
        assert_eq!(published().len(), 8);
    }

    #[test]
    fn lookup_nearest_and_fallback() {
        for (model, cache_size, taus) in [
            ("meta-llama/Meta-Llama-3.1-8B-Instruct", 1024, (1.6, 0.4)),
            ("Qwen/Qwen2.5-7B-Instruct", 256, (0.4, 0.6)),
            ("meta-llama/Llama-2-7b-chat-hf", 128, (0.9, 2.3)),
            ("meta-llama/Llama-2-7b-chat", 2048, (1.9, 1.8)),
            // |576 - 128| = 448 < |576 - 1024| = 448? equal -> the smaller, 128.
            ("Mistral-7B-Instruct-v0.3", 576, (1.0, 0.8)),
        ] {
            let t = lookup_tau(model, cache_size);
            assert_eq!((t.tau1, t.tau2), taus, "{model} at {cache_size}");
        }
        for (model, cache_size) in [("Llama-2-13b-chat", 128), ("SmolLM2-135M-Instruct", 1024)] {
            assert_eq!(lookup_tau(model, cache_size).source, TauSource::Fallback);
        }
    }
}
