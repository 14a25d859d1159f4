//! Result folders named by their configuration, with a manifest next to the results.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cake_longbench::Shard;
use serde::Serialize;

use crate::exit::usage_bail;

/// Everything needed to say how a result was produced.
#[derive(Debug, Serialize)]
pub struct Manifest<'a, C: Serialize> {
    /// The fully resolved configuration (defaults < file < env < flags).
    pub config: &'a C,
    /// `git rev-parse` of the source the binary was built from (`-dirty` if modified).
    pub git_revision: &'static str,
    /// Versions of the crates that produced the result.
    pub crate_versions: CrateVersions,
    /// The command line.
    pub command: Vec<String>,
}

/// Versions of this workspace and of its numeric backend.
#[derive(Debug, Serialize)]
pub struct CrateVersions {
    /// cake-cli (all workspace crates share it).
    pub cake: &'static str,
    /// The pinned Burn version.
    pub burn: &'static str,
}

impl<'a, C: Serialize> Manifest<'a, C> {
    /// A manifest for `config` and the current process.
    pub fn new(config: &'a C) -> Self {
        Self {
            config,
            git_revision: env!("CAKE_GIT_REVISION"),
            crate_versions: CrateVersions {
                cake: env!("CARGO_PKG_VERSION"),
                burn: "0.21.0",
            },
            command: std::env::args().collect(),
        }
    }

    /// Writes `run.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        self.write_to(&dir.join("run.json"), &dir.join("run.json.partial"))
    }

    /// Writes the manifest of shard `shard` of a run into `dir`: `shards/run.shard-I-of-N.json`
    /// and `run.json` (the folder's identity for `cake eval`; every shard writes the same
    /// configuration). Each shard writes through temporary files of its own, so shards
    /// running at once never trip over each other.
    pub fn write_shard(&self, dir: &Path, shard: Shard) -> Result<()> {
        let own = shard.manifest_file(dir);
        let mut partial = own.clone().into_os_string();
        partial.push(".partial");
        self.write_to(&own, Path::new(&partial))?;
        let partial = dir.join(format!("run.json.partial.{}", shard.tag()));
        self.write_to(&dir.join("run.json"), &partial)
    }

    fn write_to(&self, path: &Path, partial: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        // Written aside then renamed over: a kill never leaves a truncated manifest.
        std::fs::write(partial, text + "\n")
            .and_then(|()| std::fs::rename(partial, path))
            .with_context(|| {
                format!(
                    "cannot write {}: check that the output folder is writable",
                    path.display()
                )
            })
    }
}

/// An exclusive hold on a result folder, released when dropped (or when the process
/// dies: the operating system drops the file lock). Two `cake pred` runs on one
/// configuration would interleave their lines; the second one fails instead.
#[derive(Debug)]
pub struct FolderLock {
    _file: std::fs::File,
}

/// Locks `dir` for this process through `dir/.lock`, which names the holder (process id
/// and command line). Fails when another process holds it, naming that process.
pub fn lock_folder(dir: &Path) -> Result<FolderLock> {
    lock_file(&dir.join(".lock"), &dir.display().to_string())
}

/// Locks shard `shard` of the run folder `dir` through `dir/shards/shard-I-of-N.lock`
/// (creating `dir/shards`): shards of one configuration run at once, each holding only its
/// own lock and writing only its own files; a second run of the same shard fails.
pub fn lock_shard(dir: &Path, shard: Shard) -> Result<FolderLock> {
    let shards = Shard::shards_dir(dir);
    std::fs::create_dir_all(&shards).with_context(|| {
        format!(
            "cannot create {}: choose a writable --out",
            shards.display()
        )
    })?;
    lock_file(
        &shard.lock_file(dir),
        &format!("shard {shard} of {}", dir.display()),
    )
}

/// Locks the lock file `path` (created if needed) for this process and writes the holder
/// into it; `what` names what it guards in the error when another process holds it.
fn lock_file(path: &Path, what: &str) -> Result<FolderLock> {
    use std::io::{Read, Seek, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot create the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            usage_bail!(
                "{what} is in use by another run ({}): wait for it to finish, or choose another --out",
                holder.trim()
            );
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    let holder = format!(
        "process {}: {}\n",
        std::process::id(),
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(holder.as_bytes()))
        .and_then(|()| file.flush())
        .with_context(|| format!("cannot write the lock file {}", path.display()))?;
    Ok(FolderLock { _file: file })
}

/// A stable 64-bit FNV-1a hash of `text` (folder names must not change between builds).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `<out>/<label>-<hash of config>`: a readable label plus a hash of the whole resolved
/// configuration, so two different configurations never share (or overwrite) a folder and
/// rerunning the same one resumes it.
pub fn folder_for(out: &Path, label: &str, config: &impl Serialize) -> Result<PathBuf> {
    let json = serde_json::to_string(config)?;
    let safe: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = out.join(format!("{safe}-{:08x}", fnv1a(&json) as u32));
    std::fs::create_dir_all(&dir).with_context(|| {
        format!(
            "cannot create output folder {}: choose a writable --out",
            dir.display()
        )
    })?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_differ_by_config_and_repeat_for_the_same_config() {
        let out = tempfile::tempdir().unwrap();
        let a = folder_for(out.path(), "cake c128", &serde_json::json!({"c": 128})).unwrap();
        let b = folder_for(out.path(), "cake c128", &serde_json::json!({"c": 256})).unwrap();
        let a2 = folder_for(out.path(), "cake c128", &serde_json::json!({"c": 128})).unwrap();
        assert_ne!(a, b);
        assert_eq!(a, a2);
        assert!(
            a.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("cake_c128-")
        );
    }

    #[test]
    fn a_locked_folder_refuses_a_second_holder_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_folder(dir.path()).unwrap();
        let err = lock_folder(dir.path()).unwrap_err().to_string();
        assert!(err.contains("in use by another run (process "), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        assert!(lock_folder(dir.path()).is_ok());
    }

    #[test]
    fn shards_lock_only_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let whole = lock_folder(dir.path()).unwrap();
        let zero = Shard::new(0, 2).unwrap();
        let a = lock_shard(dir.path(), zero).unwrap();
        let b = lock_shard(dir.path(), Shard::new(1, 2).unwrap()).unwrap();
        let err = lock_shard(dir.path(), zero).unwrap_err().to_string();
        assert!(
            err.contains("shard 0/2 of") && err.contains("in use"),
            "{err}"
        );
        drop((whole, a, b));
        assert!(lock_shard(dir.path(), zero).is_ok());
    }

    #[test]
    fn shard_manifests_use_their_own_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({"c": 1});
        let shard = Shard::new(1, 2).unwrap();
        lock_shard(dir.path(), shard).unwrap();
        Manifest::new(&config)
            .write_shard(dir.path(), shard)
            .unwrap();
        assert!(dir.path().join("run.json").is_file());
        assert!(dir.path().join("shards/run.shard-1-of-2.json").is_file());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.contains("partial")), "{names:?}");
    }

    #[test]
    fn fnv1a_matches_reference_values() {
        // Reference values of 64-bit FNV-1a: "" -> cbf29ce484222325, "a" -> af63dc4c8601ec8c.
        assert_eq!(fnv1a(""), 0xcbf29ce484222325);
        assert_eq!(fnv1a("a"), 0xaf63dc4c8601ec8c);
    }
}
