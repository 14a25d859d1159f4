//! Crash safety of `cake pred`: runs killed with SIGKILL at seeded random moments (while
//! starting, while generating, while writing) and resumed lose no prediction line, write
//! none twice, repair a torn last line, are not blocked by the dead run's folder lock, and
//! end byte-identical to an uninterrupted run.
//!
//! Two commands take turns: a one-pass sweep (`--policies full,cake --cache-sizes 12`, two
//! folders) and a single configuration (`--policy snapkv --cache-size 10`). Each kill comes
//! after a delay drawn uniformly over the time the run still needs (measured on the
//! uninterrupted reference). A command whose run finished before its kill is checked
//! against the reference and its folders are deleted, and the command's expected duration
//! shrinks by a fifth, so that later kills land in real work again whatever the load of the
//! machine was during the reference. SIGKILL never cuts a single small `write` to a file,
//! so every fourth kill the test also tears a line itself, for the next resume to repair.
//!
//! `KILL_RESUME_SEED=N` replays another sequence of kills (`CAKE_*` variables are
//! settings of the binary).
#![cfg(unix)]

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cake_longbench::synthetic::rng::SplitMix64;
use common::{cake_process, tiny_model, write_records};

const DATASETS: [&str; 2] = ["synth_passkey", "synth_kv"];
const RECORDS: usize = 8;
const KILLS: usize = 20;
/// Seed of the kill delays (override with `KILL_RESUME_SEED`).
const SEED: u64 = 0x00c0_ffee_cafe;
/// SIGKILL.
const SIGKILL: i32 = 9;

/// One `cake pred` command line (beyond the shared arguments) and what it writes.
struct Job {
    name: &'static str,
    args: &'static [&'static str],
    /// Its configuration folders under `preds/`.
    folders: Vec<String>,
    /// Wall time of its uninterrupted run (process start to exit).
    duration: Duration,
}

/// Everything both trees share: the model, the records, and where logs go.
struct Setup {
    model: PathBuf,
    data: PathBuf,
    logs: PathBuf,
}

impl Setup {
    /// Starts `cake pred` for `job` in `work` (output `work/preds`: the relative `--out`
    /// keeps the command line, hence `run.json`, identical between the two trees).
    fn spawn(&self, work: &Path, job: &Job) -> Child {
        let log = File::create(self.log(job)).unwrap();
        cake_process()
            .current_dir(work)
            .args(["pred", "--model"])
            .arg(&self.model)
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--window", "4", "--max-length", "200", "--out", "preds"])
            .args(job.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cake starts")
    }

    fn log(&self, job: &Job) -> PathBuf {
        self.logs.join(format!("{}.log", job.name))
    }

    /// Runs `job` to completion in `work`; returns its wall time.
    fn complete(&self, work: &Path, job: &Job) -> Duration {
        let start = Instant::now();
        let status = self.spawn(work, job).wait().unwrap();
        assert!(status.success(), "{}", self.stderr(job));
        start.elapsed()
    }

    fn stderr(&self, job: &Job) -> String {
        std::fs::read_to_string(self.log(job)).unwrap_or_default()
    }
}

/// Every file under `root/preds` but the lock files (they name the holder's process id),
/// by path relative to `root/preds`.
fn snapshot(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let preds = root.join("preds");
    let Ok(folders) = std::fs::read_dir(&preds) else {
        return files;
    };
    for folder in folders {
        let folder = folder.unwrap().path();
        for file in std::fs::read_dir(&folder).unwrap() {
            let path = file.unwrap().path();
            if path.file_name().unwrap() == ".lock" {
                continue;
            }
            let rel = path
                .strip_prefix(&preds)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            files.insert(rel, std::fs::read(&path).unwrap());
        }
    }
    files
}

/// Configuration folders under `root/preds`.
fn folders(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("preds"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Asserts that no process holds a folder lock under `root/preds` (a killed run's lock
/// dies with it).
fn assert_unlocked(root: &Path, when: &str) {
    for folder in folders(root) {
        let path = root.join("preds").join(&folder).join(".lock");
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        else {
            continue; // killed before the lock file was created
        };
        match file.try_lock() {
            Ok(()) => file.unlock().unwrap(),
            Err(e) => panic!("{when}: {} is still locked: {e}", path.display()),
        }
    }
}

fn complete_lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

/// Asserts that two trees hold the same files with the same bytes.
fn assert_identical(a: &BTreeMap<String, Vec<u8>>, b: &BTreeMap<String, Vec<u8>>, when: &str) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{when}: not the same files"
    );
    for (rel, bytes) in a {
        assert!(
            bytes == &b[rel],
            "{when}: {rel} differs from the uninterrupted run"
        );
    }
}

#[test]
fn killed_and_resumed_runs_lose_nothing_and_end_identical() {
    let started = Instant::now();
    let model = tiny_model();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for dataset in DATASETS {
        write_records(&data, dataset, RECORDS);
    }
    let setup = Setup {
        model: model.path().to_path_buf(),
        data,
        logs: work.path().to_path_buf(),
    };
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();

    // The reference: each command once, uninterrupted.
    let mut jobs = [
        Job {
            name: "sweep",
            args: &["--policies", "full,cake", "--cache-sizes", "12"],
            folders: Vec::new(),
            duration: Duration::ZERO,
        },
        Job {
            name: "single",
            args: &["--policy", "snapkv", "--cache-size", "10"],
            folders: Vec::new(),
            duration: Duration::ZERO,
        },
    ];
    for job in &mut jobs {
        let before = folders(&a);
        job.duration = setup.complete(&a, job);
        job.folders = folders(&a)
            .into_iter()
            .filter(|f| !before.contains(f))
            .collect();
    }
    assert_eq!(
        jobs[0].folders.len(),
        2,
        "full once + cake: {:?}",
        jobs[0].folders
    );
    assert_eq!(jobs[1].folders.len(), 1, "{:?}", jobs[1].folders);
    let reference = snapshot(&a);
    for job in &jobs {
        for folder in &job.folders {
            for dataset in DATASETS {
                let file = &reference[&format!("{folder}/{dataset}.jsonl")];
                assert_eq!(complete_lines(file), RECORDS, "{folder}/{dataset}");
            }
        }
    }
    let reference_time = started.elapsed();

    let seed = std::env::var("KILL_RESUME_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    let mut rng = SplitMix64::new(seed);
    let mut kills = 0usize;
    let mut at_start = 0; // killed before writing a line (loading, first prefill)
    let mut between_records = 0; // killed after writing lines, last line complete
    let mut mid_write = 0; // a torn last line observed
    let mut completed = 0; // finished before the kill came
    let mut injected = 0usize; // torn lines written by the test for the next resume to repair
    let mut repaired = 0;
    let mut cycle = 0;
    // Complete lines per file before the current cycle: none may ever be lost.
    let mut lines: BTreeMap<String, usize> = BTreeMap::new();
    // Files holding a torn last line left by a kill or injected by the test, with their
    // length then.
    let mut torn_files: BTreeMap<String, usize> = BTreeMap::new();
    while kills < KILLS {
        cycle += 1;
        assert!(cycle <= 10 * KILLS, "the kills keep missing the runs");
        let job = &jobs[cycle % jobs.len()];
        // Spread the kill over the run to come: a resumed run only does what is left.
        let total = job.folders.len() * DATASETS.len() * RECORDS;
        let done: usize = lines
            .iter()
            .filter(|(rel, _)| job.folders.iter().any(|f| rel.starts_with(f.as_str())))
            .map(|(_, n)| n)
            .sum();
        let left = 1.0 - done as f64 / total as f64;
        let delay = job.duration.mul_f64(rng.unit() * (0.1 + 0.9 * left));
        let mut child = setup.spawn(&b, job);
        let spawned = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if spawned.elapsed() >= delay {
                child.kill().unwrap();
                break child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let when = format!("cycle {cycle} ({}, kill after {delay:.2?})", job.name);
        assert_unlocked(&b, &when);
        let now = snapshot(&b);
        // Whatever a run or a kill left: every prediction file is a byte prefix of the
        // reference (its complete lines are the reference's first lines, in order; a torn
        // tail is the start of the next one), and no complete line was lost.
        let mut torn_now = BTreeMap::new();
        let mut grew = false;
        for (rel, bytes) in now.iter().filter(|(rel, _)| rel.ends_with(".jsonl")) {
            let full = reference
                .get(rel)
                .unwrap_or_else(|| panic!("{when}: unexpected file {rel}"));
            assert!(
                full.starts_with(bytes),
                "{when}: {rel} is not a prefix of the uninterrupted run's file:\n{}",
                String::from_utf8_lossy(bytes)
            );
            let n = complete_lines(bytes);
            let before = lines.get(rel).copied().unwrap_or(0);
            assert!(n >= before, "{when}: {rel} lost lines ({before} -> {n})");
            grew |= n > before;
            lines.insert(rel.clone(), n);
            if !bytes.is_empty() && !bytes.ends_with(b"\n") {
                torn_now.insert(rel.clone(), bytes.len());
            }
        }
        // A torn line that is gone was repaired by this run; one that is new was left by
        // this kill.
        let mine = |rel: &String| job.folders.iter().any(|f| rel.starts_with(f.as_str()));
        let same = |(rel, len): (&String, &usize)| torn_now.get(rel) == Some(len);
        repaired += torn_files.iter().filter(|&t| !same(t)).count();
        let new_torn = torn_now
            .iter()
            .filter(|(rel, len)| torn_files.get(*rel) != Some(len))
            .count();
        // Only this job's files change.
        let changed =
            |(rel, len): (&String, &usize)| !mine(rel) && torn_files.get(rel) != Some(len);
        assert!(
            !torn_now.iter().any(changed),
            "{when}: another job's file changed"
        );
        assert!(
            torn_files.iter().filter(|t| !mine(t.0)).all(same),
            "{when}: another job's torn line changed"
        );
        torn_files = torn_now;

        if status.success() {
            // Finished before the kill: the job's folders equal the reference's. Delete
            // them so that the next kills hit work again.
            completed += 1;
            let (mut got, mut want) = (now.clone(), reference.clone());
            got.retain(|rel, _| mine(rel));
            want.retain(|rel, _| mine(rel));
            assert_identical(&want, &got, &when);
            for folder in &job.folders {
                std::fs::remove_dir_all(b.join("preds").join(folder)).unwrap();
            }
            lines.retain(|rel, _| !mine(rel));
            // The reference may have run slower than the runs now do (beside other tests):
            // aim the next kills earlier, so that they land in the work whatever the load.
            let job = &mut jobs[cycle % jobs.len()];
            job.duration = job.duration.mul_f64(0.8);
            continue;
        }
        assert_eq!(
            status.signal(),
            Some(SIGKILL),
            "{when}: the run failed by itself ({status}):\n{}",
            setup.stderr(job)
        );
        kills += 1;
        if new_torn > 0 {
            mid_write += 1;
        } else if grew {
            between_records += 1;
        } else {
            at_start += 1;
        }
        // Every fourth kill, simulate one that tore a line (a single small write is
        // practically never cut by SIGKILL): append the start of the next reference line,
        // half of it or all of it but the newline, for the next resume to cut off.
        if kills.is_multiple_of(4) {
            let target = job
                .folders
                .iter()
                .flat_map(|f| DATASETS.iter().map(move |d| format!("{f}/{d}.jsonl")));
            for rel in target {
                let have = now.get(&rel).cloned().unwrap_or_default();
                let full = &reference[&rel];
                if have.len() >= full.len() || (!have.is_empty() && !have.ends_with(b"\n")) {
                    continue;
                }
                let next_end =
                    have.len() + full[have.len()..].iter().position(|&b| b == b'\n').unwrap();
                let cut = if injected.is_multiple_of(2) {
                    have.len() + (next_end - have.len()) / 2
                } else {
                    next_end
                };
                let path = b.join("preds").join(&rel);
                let mut bytes = have.clone();
                bytes.extend_from_slice(&full[have.len()..cut]);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                torn_files.insert(rel, bytes.len());
                std::fs::write(&path, bytes).unwrap();
                injected += 1;
                break;
            }
        }
    }

    // Resume both commands to the end: the tree equals the reference, byte for byte.
    for job in &jobs {
        setup.complete(&b, job);
    }
    assert_unlocked(&b, "the end");
    repaired += torn_files.len();
    assert_identical(&reference, &snapshot(&b), "the end");
    let elapsed = started.elapsed();
    println!(
        "seed {seed:#x}: {kills} kills in {cycle} cycles ({at_start} while starting, \
         {between_records} between records, {mid_write} mid-write with a torn line), \
         {completed} runs finished before their kill, {injected} torn lines injected, \
         {repaired} torn lines repaired; reference runs {:.2?} + {:.2?}; total {elapsed:.2?} \
         (reference {reference_time:.2?})",
        jobs[0].duration, jobs[1].duration
    );
    assert_eq!(
        mid_write + injected,
        repaired,
        "every torn line is repaired"
    );
}

/// A second `cake pred` on a folder another one is writing exits with 2 and names the
/// holder's process id; the first run's file ends whole (every line one complete record,
/// none twice), equal to a run that had the folder to itself.
#[test]
fn a_second_run_on_a_held_folder_is_refused_and_names_the_holder() {
    let model = tiny_model();
    let args = |work: &Path, data: &Path| {
        let mut cmd = cake_process();
        cmd.current_dir(work)
            .args(["pred", "--model"])
            .arg(model.path())
            .arg("--data-dir")
            .arg(data)
            .args(["--window", "4", "--max-length", "200", "--out", "preds"])
            .args(["--policy", "snapkv", "--cache-size", "10"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    };
    // The first run must still be writing when the second one has finished: grow the
    // dataset until it is (the tiny model is fast).
    for records in [64, 256, 1024, 4096] {
        let work = tempfile::tempdir().unwrap();
        let data = work.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        write_records(&data, "synth_kv", records);
        let mut first = args(work.path(), &data)
            .stderr(Stdio::null())
            .spawn()
            .expect("cake starts");
        let pid = first.id().to_string();
        // Wait until the first run holds its folder (the lock file names it).
        let held = loop {
            if first.try_wait().unwrap().is_some() {
                break false;
            }
            let named = folders(work.path()).iter().any(|f| {
                std::fs::read_to_string(work.path().join("preds").join(f).join(".lock"))
                    .is_ok_and(|holder| holder.contains(&format!("process {pid}:")))
            });
            if named {
                break true;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if !held {
            continue;
        }
        let second = args(work.path(), &data).output().expect("cake runs");
        let overlapped = first.try_wait().unwrap().is_none();
        assert!(first.wait().unwrap().success());
        if !overlapped {
            continue; // the first run ended before the second one looked: inconclusive
        }
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert_eq!(second.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("in use by another run"), "{stderr}");
        assert!(stderr.contains(&format!("process {pid}:")), "{stderr}");

        // The held folder: one whole line per record, equal to a run on its own.
        let [folder] = &folders(work.path())[..] else {
            panic!("one configuration folder expected");
        };
        let written = std::fs::read(
            work.path()
                .join("preds")
                .join(folder)
                .join("synth_kv.jsonl"),
        )
        .unwrap();
        assert_eq!(complete_lines(&written), records);
        assert!(written.ends_with(b"\n"));
        let alone = tempfile::tempdir().unwrap();
        let status = args(alone.path(), &data)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let reference = std::fs::read(
            alone
                .path()
                .join("preds")
                .join(folder)
                .join("synth_kv.jsonl"),
        )
        .unwrap();
        assert!(
            written == reference,
            "the held run's file differs from a lone run's"
        );
        return;
    }
    panic!("the first run never outlasted the second, even with 4096 records");
}
