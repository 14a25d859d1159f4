//! The top-level loader: a Hugging Face model folder (or, see [`load`], a GGUF file) to a
//! ready [`Model`].

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;

use crate::config::{ConfigError, DecoderConfig, decoder_config};
use crate::gguf::GgufFile;
use crate::model::Model;
use crate::weights::{SafetensorsFolder, WeightError};

/// A model that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The path does not exist or is neither a folder nor a `.gguf` file.
    #[error("{0} is neither a Hugging Face model folder nor a .gguf file")]
    NotAModel(PathBuf),
    /// config.json cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// config.json is not JSON.
    #[error("{path} is not valid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Parser error (with line and column).
        source: serde_json::Error,
    },
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
    let text = std::fs::read_to_string(&path).map_err(|source| LoadError::Io {
        path: path.clone(),
        source,
    })?;
    let config_json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| LoadError::Json {
            path: path.clone(),
            source,
        })?;
    let config =
        decoder_config(&config_json).map_err(|source| LoadError::Config { path, source })?;
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
    let model = Model::from_weights(&config, &mut file, device)?;
    Ok(LoadedModel {
        model,
        config,
        config_json,
    })
}

/// Loads a model from a Hugging Face folder or a `.gguf` file.
pub fn load<B: Backend>(path: &Path, device: &B::Device) -> Result<LoadedModel<B>, LoadError> {
    let _span = tracing::info_span!("load", path = %path.display()).entered();
    if path.is_dir() {
        load_hf_dir(path, device)
    } else if path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        load_gguf(path, device)
    } else {
        Err(LoadError::NotAModel(path.to_path_buf()))
    }
}
