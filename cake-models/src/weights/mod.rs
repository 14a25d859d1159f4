//! Where model weights come from: a [`WeightSource`] hands out tensors by their Hugging Face
//! name as f32 host data, so one model constructor serves every file format.
//!
//! Safetensors folders are read with the `safetensors` crate (0.7, the version burn-store
//! itself uses) rather than burn-store's module mapping: burn-store applies a file onto an
//! already-initialised Burn `Module`, while this crate's decoder is assembled directly from
//! named tensors (transposing projections to `[in, out]` on the way) so that safetensors
//! folders and GGUF files feed the very same constructor.
//!
//! Which names and shapes a model asks for is written once, in [`layout`]; [`RandomWeights`]
//! serves that table with random values.

pub mod layout;
mod random;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use cake_kernels::PackedRows;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

pub use layout::{TensorSpec, WeightLayout};
pub use random::RandomWeights;

/// How a loaded model keeps its weights (serialised `f32` / `stored` / `stored-int8`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    /// Every weight dequantised to f32 (the parity-tested path, and every backend's).
    #[default]
    F32,
    /// Matrices stay in the block format the file stores them in (Q8_0, Q4_0/1, Q5_0/1,
    /// Q4_K, Q5_K, Q6_K) on the CPU backend; other tensors and other backends use f32.
    Stored,
    /// As [`WeightFormat::Stored`], and every product quantises its activations to int8,
    /// 32 values per f32 scale, and takes integer dot products (AVX-512 VNNI where the
    /// processor has it, with the same bits elsewhere): llama.cpp's scheme. Each row's
    /// result has the bits of that row alone, so a sequence's output does not depend on
    /// the batch it decodes in. Faster, not bit-faithful to the f32 model: the
    /// activations' rounding moves the logits (see `docs/models.md`).
    #[serde(rename = "stored-int8")]
    StoredInt8,
}

impl WeightFormat {
    /// The name users type (`f32`, `stored`, `stored-int8`).
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Stored => "stored",
            WeightFormat::StoredInt8 => "stored-int8",
        }
    }

    /// Whether matrices stay packed as stored.
    pub fn packs(self) -> bool {
        self != WeightFormat::F32
    }
}

impl std::str::FromStr for WeightFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(WeightFormat::F32),
            "stored" => Ok(WeightFormat::Stored),
            "stored-int8" => Ok(WeightFormat::StoredInt8),
            _ => Err(format!(
                "unknown weight format {s:?}: use f32, stored or stored-int8"
            )),
        }
    }
}

/// A tensor on the host: PyTorch-order shape and row-major f32 data.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Shape in PyTorch order (e.g. `[out, in]` for a linear weight).
    pub shape: Vec<usize>,
    /// Row-major values, `shape.iter().product()` of them.
    pub data: Vec<f32>,
}

/// A weight that cannot be read or does not fit the model.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    /// A file could not be opened or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// A safetensors file is corrupt or truncated.
    #[error("{path} is not a valid safetensors file: {source}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// Parser error.
        source: safetensors::SafeTensorError,
    },
    /// `model.safetensors.index.json` cannot be read or is not JSON.
    #[error(transparent)]
    File(#[from] crate::file::FileError),
    /// `model.safetensors.index.json` is malformed.
    #[error("{path}: {message}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No weight file in a folder.
    #[error(
        "{0} holds neither model.safetensors nor model.safetensors.index.json (a Hugging Face model folder is expected)"
    )]
    NoWeights(PathBuf),
    /// The model needs a tensor the source lacks.
    #[error("tensor {name} is missing from {origin}")]
    Missing {
        /// HF tensor name.
        name: String,
        /// Source description.
        origin: String,
    },
    /// A tensor has the wrong shape for the config.
    #[error("tensor {name} in {origin} has shape {got:?}, the config implies {expected:?}")]
    Shape {
        /// HF tensor name.
        name: String,
        /// Shape the config implies.
        expected: Vec<usize>,
        /// Shape in the file.
        got: Vec<usize>,
        /// Source description.
        origin: String,
    },
    /// A tensor's element type is not a float type this loader reads.
    #[error("tensor {name} in {origin} has dtype {dtype}; only F32, F16 and BF16 are supported")]
    Dtype {
        /// HF tensor name.
        name: String,
        /// Its dtype.
        dtype: String,
        /// Source description.
        origin: String,
    },
    /// Packed parts of one matrix do not fit together.
    #[error("tensor {name} in {origin}: {message}")]
    Packed {
        /// HF tensor name (the first part's).
        name: String,
        /// Source description.
        origin: String,
        /// What does not fit.
        message: String,
    },
    /// A GGUF tensor could not be read or dequantised.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
}

/// Something that hands out weights by Hugging Face tensor name.
pub trait WeightSource {
    /// Human-readable origin for error messages (a path).
    fn origin(&self) -> String;
    /// Whether the tensor exists.
    fn contains(&self, name: &str) -> bool;
    /// Reads one tensor as f32 (it may be released from the source afterwards).
    fn take(&mut self, name: &str) -> Result<HostTensor, WeightError>;

    /// Reads one weight as stored when the source keeps it packed in a block format (GGUF
    /// files' quantised matrices); `None` when it is not packed, to be read with
    /// [`WeightSource::take`] instead.
    fn take_packed(&mut self, name: &str) -> Result<Option<PackedRows>, WeightError> {
        let _ = name;
        Ok(None)
    }

    /// Reads one tensor and checks its shape.
    fn take_shaped(&mut self, name: &str, expected: &[usize]) -> Result<HostTensor, WeightError> {
        let tensor = self.take(name)?;
        if tensor.shape != expected {
            return Err(WeightError::Shape {
                name: name.to_string(),
                expected: expected.to_vec(),
                got: tensor.shape,
                origin: self.origin(),
            });
        }
        Ok(tensor)
    }
}

/// Weights already in memory (e.g. dequantised from a GGUF file).
#[derive(Debug, Default)]
pub struct HostWeights {
    tensors: HashMap<String, HostTensor>,
    origin: String,
}

impl HostWeights {
    /// An empty set described as `origin` in errors.
    pub fn new(origin: impl Into<String>) -> Self {
        Self {
            tensors: HashMap::new(),
            origin: origin.into(),
        }
    }

    /// Adds (or replaces) a tensor.
    pub fn insert(&mut self, name: impl Into<String>, tensor: HostTensor) {
        self.tensors.insert(name.into(), tensor);
    }
}

impl WeightSource for HostWeights {
    fn origin(&self) -> String {
        self.origin.clone()
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
    fn take(&mut self, name: &str) -> Result<HostTensor, WeightError> {
        self.tensors
            .remove(name)
            .ok_or_else(|| WeightError::Missing {
                name: name.to_string(),
                origin: self.origin.clone(),
            })
    }
}

/// A Hugging Face folder's `model.safetensors`, or its shards listed by
/// `model.safetensors.index.json`; memory-mapped, F32/F16/BF16 converted to f32 on read.
pub struct SafetensorsFolder {
    dir: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    /// Tensor name -> index into `files`.
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for SafetensorsFolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFolder")
            .field("dir", &self.dir)
            .field(
                "files",
                &self.files.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .field("tensors", &self.index.len())
            .finish()
    }
}

impl SafetensorsFolder {
    /// Opens and validates every weight file of `dir` (headers are checked against the
    /// file lengths by the safetensors parser before anything is read).
    pub fn open(dir: &Path) -> Result<Self, WeightError> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if index_path.is_file() {
            let json = crate::file::read_json(&index_path)?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| WeightError::Index {
                    path: index_path.clone(),
                    message: "no `weight_map` object".into(),
                })?;
            let mut names: Vec<String> = Vec::new();
            for (tensor, file) in map {
                let file = file.as_str().ok_or_else(|| WeightError::Index {
                    path: index_path.clone(),
                    message: format!("weight_map[{tensor:?}] is not a file name"),
                })?;
                if file.contains('/') || file.contains('\\') || file.contains("..") {
                    return Err(WeightError::Index {
                        path: index_path.clone(),
                        message: format!("shard name {file:?} must be a plain file name"),
                    });
                }
                if !names.iter().any(|n| n == file) {
                    names.push(file.to_string());
                }
            }
            names.sort();
            names
        } else if single.is_file() {
            vec!["model.safetensors".to_string()]
        } else {
            return Err(WeightError::NoWeights(dir.to_path_buf()));
        };
        let mut files = Vec::with_capacity(shard_names.len());
        let mut index = HashMap::new();
        for (i, name) in shard_names.iter().enumerate() {
            let path = dir.join(name);
            let file = File::open(&path).map_err(|source| WeightError::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the map is read-only; model files are not expected to change while a
            // model loads (the same assumption every mmap-based loader makes).
            let mmap = unsafe { Mmap::map(&file) }.map_err(|source| WeightError::Io {
                path: path.clone(),
                source,
            })?;
            let parsed =
                SafeTensors::deserialize(&mmap).map_err(|source| WeightError::Safetensors {
                    path: path.clone(),
                    source,
                })?;
            for tensor in parsed.names() {
                index.insert(tensor.to_string(), i);
            }
            files.push((path, mmap));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            index,
        })
    }
}

impl WeightSource for SafetensorsFolder {
    fn origin(&self) -> String {
        self.dir.display().to_string()
    }

    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn take(&mut self, name: &str) -> Result<HostTensor, WeightError> {
        let &file = self.index.get(name).ok_or_else(|| WeightError::Missing {
            name: name.to_string(),
            origin: self.origin(),
        })?;
        let (path, mmap) = &self.files[file];
        let parsed = SafeTensors::deserialize(mmap).map_err(|source| WeightError::Safetensors {
            path: path.clone(),
            source,
        })?;
        let view = parsed
            .tensor(name)
            .map_err(|source| WeightError::Safetensors {
                path: path.clone(),
                source,
            })?;
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(WeightError::Dtype {
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                    origin: path.display().to_string(),
                });
            }
        };
        Ok(HostTensor {
            shape: view.shape().to_vec(),
            data,
        })
    }
}

/// A GGUF file's tensors under Hugging Face names, dequantised to f32 one at a time as the
/// model asks for them (q/k rows of Llama-family files already un-permuted).
impl WeightSource for crate::gguf::GgufFile {
    fn origin(&self) -> String {
        self.path().display().to_string()
    }

    fn contains(&self, name: &str) -> bool {
        crate::gguf::gguf_name(name).is_some_and(|g| self.tensor_info(&g).is_ok())
    }

    fn take_packed(&mut self, name: &str) -> Result<Option<PackedRows>, WeightError> {
        match self.hf_packed(name) {
            Ok(rows) => Ok(rows),
            Err(crate::gguf::GgufError::MissingTensor { .. }) => Err(WeightError::Missing {
                name: name.to_string(),
                origin: self.origin(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn take(&mut self, name: &str) -> Result<HostTensor, WeightError> {
        match self.hf_tensor(name) {
            Ok((shape, data)) => Ok(HostTensor { shape, data }),
            Err(crate::gguf::GgufError::MissingTensor { .. }) => Err(WeightError::Missing {
                name: name.to_string(),
                origin: self.origin(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}
