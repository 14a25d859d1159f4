//! The top-level loader: a Hugging Face model folder (or, see [`load`], a GGUF file) to a
//! ready [`Model`].

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;

use crate::config::{ConfigError, DecoderConfig, decoder_config};
use crate::file::{FileError, read_json};
use crate::gguf::GgufFile;
use crate::model::{Model, runs_packed};
use crate::weights::{SafetensorsFolder, WeightError, WeightFormat, WeightLayout};

/// A model that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The path does not exist or is neither a folder nor a `.gguf` file.
    #[error("{0} is neither a Hugging Face model folder nor a .gguf file")]
    NotAModel(PathBuf),
    /// config.json cannot be read or is not JSON.
    #[error(transparent)]
    File(#[from] FileError),
    /// config.json does not describe a supported model.
    #[error("{path}: {source}")]
    Config {
        /// The config file (or GGUF file).
        path: PathBuf,
        /// What is wrong.
        source: ConfigError,
    },
    /// A GGUF file cannot be parsed or its metadata describes no supported model.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    /// The weights cannot be read or do not fit the config.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// The weights need more memory than the budget allows.
    #[error(
        "{path}: the model needs {needed} bytes of weights, more than the memory budget of {budget} bytes ({source_of_budget}); free memory or raise {MEMORY_LIMIT_VAR}"
    )]
    TooLarge {
        /// The model file or folder.
        path: PathBuf,
        /// Bytes of weights as they would be held.
        needed: u64,
        /// The budget.
        budget: u64,
        /// Where the budget came from (the variable or `/proc/meminfo`).
        source_of_budget: String,
    },
    /// [`MEMORY_LIMIT_VAR`] is set to something that is not a size (a usage error).
    #[error("{0}")]
    MemoryLimit(String),
}

/// Environment variable that sets the memory budget of a load, in bytes (`K`, `M`, `G`
/// suffixes allowed, powers of 1024); without it the budget is the system's available
/// memory (`MemAvailable` in `/proc/meminfo`), and where that is unknown nothing is checked.
pub const MEMORY_LIMIT_VAR: &str = "CAKE_MEMORY_LIMIT";

/// Bytes of the f32 host copy of every weight `config` implies (saturating: a config that
/// claims absurd sizes yields `u64::MAX`, never an overflow). A lower bound of what a load
/// holds at its peak (a fused projection briefly exists as parts and as the stack).
pub fn weight_bytes(config: &DecoderConfig) -> u64 {
    WeightLayout::new(config)
        .tensors()
        .iter()
        .map(|t| {
            t.shape
                .iter()
                .fold(4u64, |acc, &d| acc.saturating_mul(d as u64))
        })
        .fold(0u64, u64::saturating_add)
}

/// The memory budget of a load and where it came from: [`MEMORY_LIMIT_VAR`], else
/// `MemAvailable`; `None` when neither is known.
pub fn memory_budget() -> Result<Option<(u64, String)>, String> {
    if let Ok(text) = std::env::var(MEMORY_LIMIT_VAR) {
        return parse_bytes(&text)
            .map(|b| Some((b, MEMORY_LIMIT_VAR.to_string())))
            .ok_or_else(|| {
                format!("{MEMORY_LIMIT_VAR}={text:?} is not a size in bytes (e.g. 8G, 512M)")
            });
    }
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|rest| rest.trim().strip_suffix("kB"))
                .and_then(|kb| kb.trim().parse::<u64>().ok())
        });
    Ok(available.map(|kb| (kb.saturating_mul(1024), "available memory".to_string())))
}

/// `123`, `8K`, `512M`, `8G` (powers of 1024) as bytes.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_uppercase()),
        _ => (text, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        'T' => 40,
        _ => return None,
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()?
        .checked_mul(1u64 << shift)
}

/// Bytes the weights of a GGUF file take once loaded in `format`: the stored bytes of every
/// matrix that stays packed, four bytes per value for the rest.
pub fn gguf_weight_bytes(file: &GgufFile, format: WeightFormat) -> u64 {
    file.tensors()
        .iter()
        .filter(|t| t.name != "rope_freqs.weight")
        .map(|t| match (format, t.ty.block_format(), t.dims.len()) {
            (format, Some(_), 2) if format.packs() => t.size,
            _ => t.n_elements().saturating_mul(4),
        })
        .fold(0u64, u64::saturating_add)
}

/// Refuses a model whose weights (`needed` bytes) exceed the memory budget, before
/// anything is allocated for them.
fn check_memory(path: &Path, needed: u64) -> Result<(), LoadError> {
    let budget = memory_budget().map_err(LoadError::MemoryLimit)?;
    match budget {
        Some((budget, source_of_budget)) if needed > budget => Err(LoadError::TooLarge {
            path: path.to_path_buf(),
            needed,
            budget,
            source_of_budget,
        }),
        _ => Ok(()),
    }
}

/// A loaded model with the configuration it was built from.
#[derive(Debug, Clone)]
pub struct LoadedModel<B: Backend> {
    /// The model.
    pub model: Model<B>,
    /// Its resolved configuration (also `model.config()`).
    pub config: DecoderConfig,
    /// The Hugging Face style config.json value it came from.
    pub config_json: serde_json::Value,
}

/// Loads a Hugging Face folder (`config.json` + `model.safetensors` or sharded
/// `model-*.safetensors` with `model.safetensors.index.json`; F32/F16/BF16) onto `device`.
pub fn load_hf_dir<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<LoadedModel<B>, LoadError> {
    let path = dir.join("config.json");
    let config_json = read_json(&path)?;
    let config =
        decoder_config(&config_json).map_err(|source| LoadError::Config { path, source })?;
    check_memory(dir, weight_bytes(&config))?;
    let mut weights = SafetensorsFolder::open(dir)?;
    let model = Model::from_weights(&config, &mut weights, device)?;
    Ok(LoadedModel {
        model,
        config,
        config_json,
    })
}

/// Loads a GGUF file (Llama / Mistral / Qwen2; every tensor type the `gguf` module
/// dequantises) onto `device`: the config comes from the GGUF metadata, the tensors are
/// dequantised to f32 one by one while the model is built.
pub fn load_gguf<B: Backend>(path: &Path, device: &B::Device) -> Result<LoadedModel<B>, LoadError> {
    load_gguf_as(path, device, WeightFormat::F32)
}

/// [`load_gguf`] keeping the weights in `format` ([`Model::from_weights_as`]).
pub fn load_gguf_as<B: Backend>(
    path: &Path,
    device: &B::Device,
    format: WeightFormat,
) -> Result<LoadedModel<B>, LoadError> {
    let mut file = GgufFile::open(path)?;
    let config_json = file.hf_config()?;
    let mut config = decoder_config(&config_json).map_err(|source| LoadError::Config {
        path: path.to_path_buf(),
        source,
    })?;
    // Llama-3 scaling travels as a tensor of per-frequency divisors, not as metadata.
    if let Some(factors) = file.rope_freq_factors(config.head_dim)? {
        config.rope.freq_factors = Some(factors);
        config.rope.llama3 = None;
    }
    let format = if runs_packed::<B>() {
        format
    } else {
        WeightFormat::F32
    };
    check_memory(path, gguf_weight_bytes(&file, format))?;
    let model = Model::from_weights_as(&config, &mut file, device, format)?;
    Ok(LoadedModel {
        model,
        config,
        config_json,
    })
}

/// Loads a model from a Hugging Face folder or a `.gguf` file.
pub fn load<B: Backend>(path: &Path, device: &B::Device) -> Result<LoadedModel<B>, LoadError> {
    load_as(path, device, WeightFormat::F32)
}

/// [`load`] keeping a GGUF file's matrices in `format` ([`WeightFormat::Stored`]: packed
/// as stored, on the CPU backend). Hugging Face folders load as f32 either way.
pub fn load_as<B: Backend>(
    path: &Path,
    device: &B::Device,
    format: WeightFormat,
) -> Result<LoadedModel<B>, LoadError> {
    let _span = tracing::info_span!("load", path = %path.display()).entered();
    if path.is_dir() {
        load_hf_dir(path, device)
    } else if path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        load_gguf_as(path, device, format)
    } else {
        Err(LoadError::NotAModel(path.to_path_buf()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes_and_reject_the_rest() {
        assert_eq!(parse_bytes("123"), Some(123));
        assert_eq!(parse_bytes(" 8k "), Some(8 << 10));
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes("8G"), Some(8 << 30));
        assert_eq!(parse_bytes("2T"), Some(2 << 40));
        for bad in ["", "G", "8X", "-1G", "1.5G", "99999999999T"] {
            assert_eq!(parse_bytes(bad), None, "{bad:?}");
        }
    }
}
