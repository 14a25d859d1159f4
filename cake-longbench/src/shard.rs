//! Sharded prediction runs (`cake pred --shard I/N`) and merging their files.
//!
//! A record belongs to shard `fnv1a64(_id) % N` (64-bit FNV-1a of the id's UTF-8 bytes,
//! written here so the partition never changes between builds). Shard `I/N` of a
//! configuration folder `DIR` writes, for every dataset:
//!
//! - `DIR/shards/<dataset>.shard-I-of-N.jsonl`: its records' prediction lines, exactly as
//!   an unsharded run writes them, in dataset order (resumable like a plain file);
//! - `DIR/shards/<dataset>.shard-I-of-N.index.json`: a [`ShardIndex`], the position in the
//!   dataset (0-based) and `_id` of each of those records, and the dataset's record count.
//!   It is written (atomically) before the first prediction, since it depends on the
//!   dataset only.
//!
//! The shard files live in a sub-folder so that LongBench's `eval.py`, which scores every
//! `*.jsonl` of a folder, never mistakes them for datasets. [`merge_set`] restores the
//! global order from the index files: it places each shard line at its recorded position
//! and writes `DIR/<dataset>.jsonl`, byte for byte what an unsharded run writes. It
//! refuses missing shards, incomplete ones and files that do not match their index.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::eval::EvalError;
use crate::predict::PredictionLine;
use crate::record::LongBenchRecord;

/// Sub-folder of a configuration folder that holds the shard files.
pub const SHARDS_DIR: &str = "shards";

/// 64-bit FNV-1a of `bytes` (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A `--shard I/N` value that is not of that form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid shard {given:?}: expected I/N with integers 0 <= I < N and N >= 1 (e.g. 0/4 for the first of four)"
)]
pub struct ShardParseError {
    /// The text given.
    pub given: String,
}

/// Shard `index` of `count`: the records whose id hashes to `index` modulo `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard {
    index: usize,
    count: usize,
}

impl Shard {
    /// Shard `index` of `count`.
    ///
    /// # Errors
    /// When `count` is 0 or `index >= count`.
    pub fn new(index: usize, count: usize) -> Result<Self, ShardParseError> {
        if count == 0 || index >= count {
            return Err(ShardParseError {
                given: format!("{index}/{count}"),
            });
        }
        Ok(Self { index, count })
    }

    /// `I` of `I/N`.
    pub fn index(&self) -> usize {
        self.index
    }

    /// `N` of `I/N`.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The shard of `count` that record id `id` belongs to.
    pub fn of_id(id: &str, count: usize) -> usize {
        (fnv1a64(id.as_bytes()) % count.max(1) as u64) as usize
    }

    /// Whether the record with id `id` belongs to this shard.
    pub fn contains(&self, id: &str) -> bool {
        Self::of_id(id, self.count) == self.index
    }

    /// `shard-I-of-N`, the tag in this shard's file names.
    pub fn tag(&self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }

    /// `DIR/shards`.
    pub fn shards_dir(dir: &Path) -> PathBuf {
        dir.join(SHARDS_DIR)
    }

    /// `DIR/shards/<dataset>.shard-I-of-N.jsonl`.
    pub fn predictions_file(&self, dir: &Path, dataset: &str) -> PathBuf {
        Self::shards_dir(dir).join(format!("{dataset}.{}.jsonl", self.tag()))
    }

    /// `DIR/shards/<dataset>.shard-I-of-N.index.json`.
    pub fn index_file(&self, dir: &Path, dataset: &str) -> PathBuf {
        Self::shards_dir(dir).join(format!("{dataset}.{}.index.json", self.tag()))
    }

    /// `DIR/shards/shard-I-of-N.lock`, the lock this shard's runs take.
    pub fn lock_file(&self, dir: &Path) -> PathBuf {
        Self::shards_dir(dir).join(format!("{}.lock", self.tag()))
    }

    /// `DIR/shards/run.shard-I-of-N.json`, this shard's run manifest.
    pub fn manifest_file(&self, dir: &Path) -> PathBuf {
        Self::shards_dir(dir).join(format!("run.{}.json", self.tag()))
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = ShardParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ShardParseError {
            given: s.to_string(),
        };
        let (i, n) = s.trim().split_once('/').ok_or_else(err)?;
        let parse = |t: &str| {
            // Plain decimal digits only (no sign, no spaces inside).
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            t.parse::<usize>().map_err(|_| err())
        };
        Self::new(parse(i)?, parse(n)?).map_err(|_| err())
    }
}

/// Which records of a dataset one shard holds, in dataset order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardIndex {
    /// Dataset name.
    pub dataset: String,
    /// The shard, `I/N`.
    pub shard: String,
    /// Records in the dataset (after `--max-samples`), over all shards.
    pub records: usize,
    /// 0-based position in the dataset of each record of this shard, ascending.
    pub indices: Vec<usize>,
    /// `_id` of each record of this shard, in the same order.
    pub ids: Vec<String>,
}

impl ShardIndex {
    /// The records of `records` (a whole dataset, in order) that belong to `shard`: the
    /// index, and the records themselves in dataset order.
    pub fn select(
        dataset: &str,
        shard: Shard,
        records: Vec<LongBenchRecord>,
    ) -> (Self, Vec<LongBenchRecord>) {
        let total = records.len();
        let mut indices = Vec::new();
        let mut ids = Vec::new();
        let mut mine = Vec::new();
        for (i, record) in records.into_iter().enumerate() {
            if shard.contains(&record.id) {
                indices.push(i);
                ids.push(record.id.clone());
                mine.push(record);
            }
        }
        let index = Self {
            dataset: dataset.to_string(),
            shard: shard.to_string(),
            records: total,
            indices,
            ids,
        };
        (index, mine)
    }

    /// Writes the index to `path` through a temporary file renamed over it (a kill never
    /// leaves a truncated index).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string(self).map_err(std::io::Error::other)?;
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        std::fs::write(&partial, text + "\n")?;
        std::fs::rename(&partial, path)
    }
}

/// The shard files of one dataset found in a configuration folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSet {
    /// Dataset name.
    pub dataset: String,
    /// `N`, the number of shards.
    pub count: usize,
    /// Shard indices with a predictions file, ascending.
    pub present: Vec<usize>,
}

impl ShardSet {
    /// Shard indices in `0..count` without a predictions file.
    pub fn missing(&self) -> Vec<usize> {
        (0..self.count)
            .filter(|i| !self.present.contains(i))
            .collect()
    }
}

/// What [`merge_set`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    /// Records in the merged file.
    pub records: usize,
    /// Whether `<dataset>.jsonl` was (re)written; `false` when it already held the merge.
    pub written: bool,
}

fn shard_error(path: &Path, message: String) -> EvalError {
    EvalError::Shards {
        path: path.to_path_buf(),
        message,
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `(dataset, shard)` of a shard predictions file name `<dataset>.shard-I-of-N.jsonl`.
pub fn parse_file_name(name: &str) -> Option<(String, Shard)> {
    let stem = name.strip_suffix(".jsonl")?;
    let (dataset, tag) = stem.rsplit_once(".shard-")?;
    let (i, n) = tag.split_once("-of-")?;
    let shard: Shard = format!("{i}/{n}").parse().ok()?;
    (!dataset.is_empty()).then(|| (dataset.to_string(), shard))
}

/// The shard sets in `dir/shards` (none when that folder does not exist), by dataset.
///
/// # Errors
/// When the folder cannot be read, or one dataset has shard files of different counts
/// `N` (two sharded runs that do not fit together).
pub fn find_shard_sets(dir: &Path) -> Result<Vec<ShardSet>, EvalError> {
    let shards_dir = Shard::shards_dir(dir);
    if !shards_dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut found: BTreeMap<String, BTreeMap<usize, Vec<usize>>> = BTreeMap::new();
    for entry in std::fs::read_dir(&shards_dir).map_err(io_error(&shards_dir))? {
        let entry = entry.map_err(io_error(&shards_dir))?;
        let name = entry.file_name();
        let Some((dataset, shard)) = name.to_str().and_then(parse_file_name) else {
            continue;
        };
        found
            .entry(dataset)
            .or_default()
            .entry(shard.count())
            .or_default()
            .push(shard.index());
    }
    let mut sets = Vec::new();
    for (dataset, by_count) in found {
        if by_count.len() > 1 {
            let counts: Vec<String> = by_count.keys().map(|n| format!("N = {n}")).collect();
            return Err(shard_error(
                &shards_dir,
                format!(
                    "{dataset} has shard files of different shard counts ({}): keep the files of one --shard I/N split and move the others away",
                    counts.join(", ")
                ),
            ));
        }
        for (count, mut present) in by_count {
            present.sort_unstable();
            sets.push(ShardSet {
                dataset: dataset.clone(),
                count,
                present,
            });
        }
    }
    Ok(sets)
}

/// Complete lines of a shard predictions file, each with its newline.
fn shard_lines<'a>(
    path: &Path,
    bytes: &'a [u8],
    index: &ShardIndex,
) -> Result<Vec<&'a [u8]>, EvalError> {
    let mut lines = Vec::new();
    let mut start = 0;
    while start < bytes.len() {
        let Some(nl) = bytes[start..].iter().position(|&b| b == b'\n') else {
            return Err(shard_error(
                path,
                format!(
                    "shard {} of {} is incomplete (its last line is cut off): rerun that shard to finish it",
                    index.shard, index.dataset
                ),
            ));
        };
        let line = &bytes[start..start + nl + 1];
        if !line.iter().all(u8::is_ascii_whitespace) {
            lines.push(line);
        }
        start += nl + 1;
    }
    Ok(lines)
}

/// Merges the complete shard set `set` of configuration folder `dir` into
/// `dir/<dataset>.jsonl`, in the dataset's record order (see the module documentation).
/// The merged file is written only when it differs from the existing one, through a
/// temporary file renamed over it; `dir/shards/<dataset>.merged` lists the hashes of what
/// merges wrote, so a later merge (after the shards grew) may replace it, while a
/// plain file of other origin that differs from the merge is never overwritten.
///
/// # Errors
/// [`EvalError::Shards`] when shards are missing or incomplete, an index does not match
/// its predictions, the shards do not cover the dataset exactly once, or an existing
/// `<dataset>.jsonl` differs from the merge and was not written by one;
/// [`EvalError::Malformed`] for a line that does not parse; [`EvalError::Io`].
pub fn merge_set(dir: &Path, set: &ShardSet) -> Result<Merged, EvalError> {
    let shards_dir = Shard::shards_dir(dir);
    let missing = set.missing();
    if !missing.is_empty() {
        let names: Vec<String> = missing
            .iter()
            .map(|i| format!("{i}/{}", set.count))
            .collect();
        let present: Vec<String> = set
            .present
            .iter()
            .map(|i| format!("{i}/{}", set.count))
            .collect();
        return Err(shard_error(
            &shards_dir,
            format!(
                "cannot merge {}: shard(s) {} missing (found {}); run `cake pred --shard I/N` for each with the same settings and --out, or gather their folders here",
                set.dataset,
                names.join(", "),
                if present.is_empty() {
                    "none".to_string()
                } else {
                    present.join(", ")
                }
            ),
        ));
    }
    let mut slots: Vec<Option<Vec<u8>>> = Vec::new();
    let mut total: Option<usize> = None;
    for i in 0..set.count {
        let shard =
            Shard::new(i, set.count).map_err(|e| shard_error(&shards_dir, e.to_string()))?;
        let index_path = shard.index_file(dir, &set.dataset);
        let text = std::fs::read_to_string(&index_path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                shard_error(
                    &index_path,
                    format!(
                        "missing: shard {shard} of {} has predictions but no index; rerun that shard to write it",
                        set.dataset
                    ),
                )
            } else {
                io_error(&index_path)(source)
            }
        })?;
        let index: ShardIndex = serde_json::from_str(&text).map_err(|e| {
            shard_error(
                &index_path,
                format!("not a shard index ({e}); rerun shard {shard} to rewrite it"),
            )
        })?;
        if index.dataset != set.dataset
            || index.shard != shard.to_string()
            || index.indices.len() != index.ids.len()
        {
            return Err(shard_error(
                &index_path,
                format!(
                    "does not describe shard {shard} of {}; rerun that shard to rewrite it",
                    set.dataset
                ),
            ));
        }
        match total {
            None => {
                total = Some(index.records);
                slots = vec![None; index.records];
            }
            Some(t) if t != index.records => {
                return Err(shard_error(
                    &index_path,
                    format!(
                        "shard {shard} of {} covers a dataset of {} records but shard 0/{} one of {t} (different data or --max-samples); rerun the shards with the same data and flags",
                        set.dataset, index.records, set.count
                    ),
                ));
            }
            Some(_) => {}
        }
        let path = shard.predictions_file(dir, &set.dataset);
        let bytes = std::fs::read(&path).map_err(io_error(&path))?;
        let lines = shard_lines(&path, &bytes, &index)?;
        if lines.len() < index.indices.len() {
            return Err(shard_error(
                &path,
                format!(
                    "shard {shard} of {} is incomplete: {} of {} predictions; rerun (resume) that shard to finish it",
                    set.dataset,
                    lines.len(),
                    index.indices.len()
                ),
            ));
        }
        if lines.len() > index.indices.len() {
            return Err(shard_error(
                &path,
                format!(
                    "holds {} predictions but its index lists {} records; rerun shard {shard} to rewrite the index",
                    lines.len(),
                    index.indices.len()
                ),
            ));
        }
        for (k, line) in lines.into_iter().enumerate() {
            let parsed: PredictionLine =
                serde_json::from_slice(line).map_err(|source| EvalError::Malformed {
                    path: path.clone(),
                    line: k + 1,
                    source,
                })?;
            let expected = &index.ids[k];
            if parsed.id.as_deref().is_some_and(|id| id != expected) {
                return Err(shard_error(
                    &path,
                    format!(
                        "line {} holds record {:?} but the index says {expected:?}; rerun shard {shard} to rewrite the index",
                        k + 1,
                        parsed.id.unwrap_or_default()
                    ),
                ));
            }
            let position = index.indices[k];
            match slots.get_mut(position) {
                Some(slot @ None) => *slot = Some(line.to_vec()),
                _ => {
                    return Err(shard_error(
                        &index_path,
                        format!(
                            "record position {position} is out of range or claimed by two shards; rerun the shards with the same data and flags"
                        ),
                    ));
                }
            }
        }
    }
    let mut merged = Vec::new();
    for (position, slot) in slots.iter().enumerate() {
        let Some(line) = slot else {
            return Err(shard_error(
                &shards_dir,
                format!(
                    "no shard holds record {position} of {}; rerun the shards with the same data and flags",
                    set.dataset
                ),
            ));
        };
        merged.extend_from_slice(line);
    }
    let target = dir.join(format!("{}.jsonl", set.dataset));
    let marker = shards_dir.join(format!("{}.merged", set.dataset));
    let hash = format!("{:016x}\n", fnv1a64(&merged));
    match std::fs::read(&target) {
        Ok(existing) if existing == merged => {
            return Ok(Merged {
                records: slots.len(),
                written: false,
            });
        }
        Ok(existing) => {
            let theirs = format!("{:016x}", fnv1a64(&existing));
            let ours = std::fs::read_to_string(&marker)
                .is_ok_and(|m| m.lines().any(|line| line.trim() == theirs));
            if !ours {
                return Err(shard_error(
                    &target,
                    format!(
                        "exists and differs from the merge of its {} shards (it was not written by one): move it away to merge the shards, or move {} away to keep it",
                        set.count,
                        shards_dir.display()
                    ),
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&target)(e)),
    }
    let partial = shards_dir.join(format!("{}.jsonl.merging", set.dataset));
    std::fs::write(&partial, &merged).map_err(io_error(&partial))?;
    // The hash is appended before the rename: whichever of the old and new files a kill
    // leaves in place, the marker vouches for it.
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&marker)
        .map_err(io_error(&marker))?;
    std::io::Write::write_all(&mut file, hash.as_bytes()).map_err(io_error(&marker))?;
    drop(file);
    std::fs::rename(&partial, &target).map_err(io_error(&target))?;
    Ok(Merged {
        records: slots.len(),
        written: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn shard_parses_and_rejects_bad_forms() {
        let s: Shard = "1/4".parse().unwrap();
        assert_eq!(
            (s.index(), s.count(), s.to_string()),
            (1, 4, "1/4".to_string())
        );
        assert_eq!("0/1".parse::<Shard>().unwrap().tag(), "shard-0-of-1");
        for bad in [
            "4/4", "1/0", "-1/2", "1", "a/b", "1/2/3", "", "/2", "1/", "+1/2",
        ] {
            let e = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(e.contains("expected I/N"), "{bad}: {e}");
        }
    }

    #[test]
    fn every_id_lands_in_exactly_one_shard() {
        for n in 1..6 {
            for id in ["a", "r0", "r1", "ee3f1a", ""] {
                let owners = (0..n)
                    .filter(|&i| Shard::new(i, n).unwrap().contains(id))
                    .count();
                assert_eq!(owners, 1);
            }
        }
        // Pinned: the partition must not move between builds.
        assert_eq!(
            Shard::of_id("a", 4),
            (0xaf63_dc4c_8601_ec8c_u64 % 4) as usize
        );
    }

    #[test]
    fn file_names_round_trip() {
        let s = Shard::new(2, 3).unwrap();
        let p = s.predictions_file(Path::new("d"), "synth_kv");
        assert_eq!(p, Path::new("d/shards/synth_kv.shard-2-of-3.jsonl"));
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_file_name(name), Some(("synth_kv".to_string(), s)));
        assert_eq!(parse_file_name("synth_kv.jsonl"), None);
        assert_eq!(parse_file_name("synth_kv.shard-3-of-3.jsonl"), None);
    }

    fn line(id: &str) -> String {
        format!(
            "{{\"pred\":\"p{id}\",\"answers\":[\"x\"],\"all_classes\":null,\"length\":1,\"_id\":\"{id}\"}}\n"
        )
    }

    /// Writes the shard files of `ids` split into `n` shards; returns the unsharded file.
    fn write_shards(dir: &Path, ids: &[&str], n: usize, skip: Option<usize>) -> String {
        std::fs::create_dir_all(Shard::shards_dir(dir)).unwrap();
        for i in 0..n {
            if skip == Some(i) {
                continue;
            }
            let shard = Shard::new(i, n).unwrap();
            let records: Vec<LongBenchRecord> = ids
                .iter()
                .map(|id| {
                    serde_json::from_value(serde_json::json!({
                        "input": "", "context": "", "answers": ["x"], "length": 1,
                        "dataset": "synth_kv", "language": "en", "all_classes": null, "_id": id
                    }))
                    .unwrap()
                })
                .collect();
            let (index, mine) = ShardIndex::select("synth_kv", shard, records);
            index.write(&shard.index_file(dir, "synth_kv")).unwrap();
            let text: String = mine.iter().map(|r| line(&r.id)).collect();
            std::fs::write(shard.predictions_file(dir, "synth_kv"), text).unwrap();
        }
        ids.iter().map(|id| line(id)).collect()
    }

    #[test]
    fn merge_restores_the_dataset_order_and_refuses_incomplete_sets() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ["r0", "r1", "r2", "r3", "r4", "r5", "r6"];
        let plain = write_shards(dir.path(), &ids, 3, None);
        let sets = find_shard_sets(dir.path()).unwrap();
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].present, vec![0, 1, 2]);
        let merged = merge_set(dir.path(), &sets[0]).unwrap();
        assert_eq!(
            merged,
            Merged {
                records: 7,
                written: true
            }
        );
        let target = dir.path().join("synth_kv.jsonl");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), plain);
        // Again: nothing to do.
        assert!(!merge_set(dir.path(), &sets[0]).unwrap().written);
        // The shards grow (a run with more samples): the earlier merge is replaced.
        let more = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8"];
        let plain_more = write_shards(dir.path(), &more, 3, None);
        assert!(merge_set(dir.path(), &sets[0]).unwrap().written);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), plain_more);
        write_shards(dir.path(), &ids, 3, None);
        assert!(merge_set(dir.path(), &sets[0]).unwrap().written);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), plain);

        // A missing shard is named.
        let other = tempfile::tempdir().unwrap();
        write_shards(other.path(), &ids, 3, Some(1));
        let sets = find_shard_sets(other.path()).unwrap();
        let e = merge_set(other.path(), &sets[0]).unwrap_err().to_string();
        assert!(
            e.contains("shard(s) 1/3 missing") && e.contains("found 0/3, 2/3"),
            "{e}"
        );

        // An incomplete shard is refused, and a plain file of other origin kept.
        let shard = Shard::new(0, 3).unwrap();
        let file = shard.predictions_file(dir.path(), "synth_kv");
        let text = std::fs::read_to_string(&file).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.pop();
        std::fs::write(
            &file,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
        let sets = find_shard_sets(dir.path()).unwrap();
        let e = merge_set(dir.path(), &sets[0]).unwrap_err().to_string();
        assert!(e.contains("incomplete"), "{e}");
        std::fs::write(&file, text).unwrap();
        std::fs::write(&target, line("zz")).unwrap();
        let e = merge_set(dir.path(), &sets[0]).unwrap_err().to_string();
        assert!(e.contains("differs from the merge"), "{e}");
    }
}
