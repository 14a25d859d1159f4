//! Fuzzing in a child process, so that findings which end the process (a refused
//! oversized allocation aborts; so do stack overflows and executions the watchdog kills)
//! are recorded and the run goes on.
//!
//! The supervisor ([`supervise`]) starts the same binary as a worker for a range of
//! executions. Before each execution the worker copies the input and its index into a
//! shared memory-mapped page ([`SharedState`]); the capping allocator writes the size of a
//! refused request there, and the watchdog marks a kill. When a worker dies, the supervisor
//! reads the page, records the finding with its input, and starts a new worker at the next
//! execution.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapMut;

use crate::runner::{Finding, FindingKind, RunOptions, Stats};

/// Largest input the shared page holds (targets cut inputs at 1 MiB).
pub const MAX_INPUT: usize = 2 << 20;
const HEADER: usize = 64;
const MAGIC: u64 = u64::from_le_bytes(*b"cakefuzz");

const W_MAGIC: usize = 0;
const W_STATE: usize = 1;
const W_INDEX: usize = 2;
const W_LEN: usize = 3;
const W_CRASHES: usize = 4;
const W_HANGS: usize = 5;
const W_OOM: usize = 6;
const W_DONE: usize = 7;

const STATE_RUNNING: u64 = 1;
const STATE_FINISHED: u64 = 2;
const STATE_KILLED_HANG: u64 = 3;

/// The state word of the attached page, for the watchdog.
static KILL_SLOT: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());

/// The page a worker and its supervisor share: a header of eight little-endian words
/// (magic, state, execution index, input length, crashes, hangs, refused allocation size,
/// executions done) and the running input.
pub struct SharedState {
    map: MmapMut,
    base: *mut u8,
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState")
            .field("len", &self.map.len())
            .finish()
    }
}

/// What a worker left in the shared page.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Whether a worker ever attached.
    pub attached: bool,
    /// Whether it started an execution.
    pub began: bool,
    /// Whether the worker reached its last execution.
    pub finished: bool,
    /// Whether the watchdog killed the worker.
    pub killed_hang: bool,
    /// Index of the execution running (or last run).
    pub index: u64,
    /// Its input.
    pub input: Vec<u8>,
    /// Panics caught by the worker.
    pub crashes: u64,
    /// Slow executions seen by the worker.
    pub hangs: u64,
    /// Size of the refused allocation request, 0 if none.
    pub refused_allocation: u64,
    /// Executions the worker completed (set when it finishes).
    pub executions: u64,
}

impl SharedState {
    /// Creates (or clears) the page file at `path`.
    pub fn create(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len((HEADER + MAX_INPUT) as u64)?;
        Self::map(&file)
    }

    /// Opens the page file a supervisor created.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        if file.metadata()?.len() < (HEADER + MAX_INPUT) as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared page file is too short",
            ));
        }
        Self::map(&file)
    }

    fn map(file: &std::fs::File) -> io::Result<Self> {
        // SAFETY: the file is private to one supervisor and its one worker at a time; both
        // access the header through atomics and the input area is written only by the
        // worker while the supervisor waits.
        let mut map = unsafe { MmapMut::map_mut(file)? };
        let base = map.as_mut_ptr();
        Ok(Self { map, base })
    }

    fn word(&self, w: usize) -> &AtomicU64 {
        // SAFETY: the map is page-aligned and at least HEADER bytes long, so word `w < 8`
        // is an aligned u64 inside it, valid as long as `self` is.
        unsafe { &*(self.base.add(w * 8) as *const AtomicU64) }
    }

    /// Makes this page the one the capping allocator and the watchdog report to (call once
    /// per worker process; the page must then live until the process ends).
    pub fn attach(&'static self) {
        self.word(W_MAGIC).store(MAGIC, Ordering::Release);
        let oom = self.word(W_OOM) as *const AtomicU64 as *mut u64;
        // SAFETY: `self` is 'static, so the slot stays valid for the rest of the process.
        unsafe { crate::alloc::set_report_slot(oom) };
        KILL_SLOT.store(
            self.word(W_STATE) as *const AtomicU64 as *mut AtomicU64,
            Ordering::Release,
        );
    }

    /// Records the execution about to run and its input.
    pub fn begin(&self, index: u64, input: &[u8]) {
        let n = input.len().min(MAX_INPUT);
        // SAFETY: `n <= MAX_INPUT` bytes fit after the header; source and page do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(input.as_ptr(), self.base.add(HEADER), n) };
        self.word(W_LEN).store(n as u64, Ordering::Relaxed);
        self.word(W_INDEX).store(index, Ordering::Relaxed);
        self.word(W_STATE).store(STATE_RUNNING, Ordering::Release);
    }

    /// Records the finding counts.
    pub fn count(&self, crashes: u64, hangs: u64) {
        self.word(W_CRASHES).store(crashes, Ordering::Relaxed);
        self.word(W_HANGS).store(hangs, Ordering::Relaxed);
    }

    /// Records a completed run.
    pub fn finish(&self, executions: u64) {
        self.word(W_DONE).store(executions, Ordering::Relaxed);
        self.word(W_STATE).store(STATE_FINISHED, Ordering::Release);
    }

    /// Marks the attached page (if any) as killed by the watchdog.
    pub fn mark_killed_hang() {
        let slot = KILL_SLOT.load(Ordering::Acquire);
        if !slot.is_null() {
            // SAFETY: set by `attach` from a 'static page.
            unsafe { (*slot).store(STATE_KILLED_HANG, Ordering::Release) };
        }
    }

    /// Reads what the worker left.
    pub fn snapshot(&self) -> Snapshot {
        let get = |w| self.word(w).load(Ordering::Acquire);
        let len = (get(W_LEN) as usize).min(MAX_INPUT);
        Snapshot {
            attached: get(W_MAGIC) == MAGIC,
            began: get(W_STATE) != 0,
            finished: get(W_STATE) == STATE_FINISHED,
            killed_hang: get(W_STATE) == STATE_KILLED_HANG,
            index: get(W_INDEX),
            input: self.map[HEADER..HEADER + len].to_vec(),
            crashes: get(W_CRASHES),
            hangs: get(W_HANGS),
            refused_allocation: get(W_OOM),
            executions: get(W_DONE),
        }
    }
}

/// Supervisor settings.
#[derive(Debug, Clone)]
pub struct SuperviseOptions {
    /// The `cake-fuzz` binary (started with `--worker`).
    pub exe: PathBuf,
    /// Seed, execution range (`start` is ignored: runs start at 0), limits.
    pub run: RunOptions,
    /// Folder of saved findings (`<findings>/<target>/<kind>-<index>.bin`).
    pub findings: PathBuf,
    /// Folder in which each target's run makes its scratch folder (shared page, the
    /// workers' files); that folder is removed when the target is done.
    pub scratch: PathBuf,
}

/// Line prefix of the findings a worker prints on its standard output.
pub const FINDING_LINE: &str = "cake-fuzz-finding ";

/// Runs all executions of `target` in worker processes, restarting after each fatal
/// finding, and returns the combined counts.
pub fn supervise(target: &str, opts: &SuperviseOptions) -> io::Result<Stats> {
    let started = Instant::now();
    // Removed on return, with what workers that died left in it.
    let scratch = tempfile::Builder::new()
        .prefix("cake-fuzz-run-")
        .tempdir_in(&opts.scratch)?;
    let page_path = scratch.path().join("page");
    let mut stats = Stats {
        target: target.to_string(),
        ..Stats::default()
    };
    let mut next = 0u64;
    let mut kept_fatal = [0usize; 3];
    while next < opts.run.end {
        let page = SharedState::create(&page_path)?;
        let output = Command::new(&opts.exe)
            .arg("--worker")
            .args(["--target", target])
            .args(["--seed", &opts.run.seed.to_string()])
            .args(["--start", &next.to_string()])
            .args(["--executions", &opts.run.end.to_string()])
            .args(["--hang-ms", &opts.run.hang_limit.as_millis().to_string()])
            .args(["--kill-ms", &opts.run.kill_after.as_millis().to_string()])
            .args(["--keep", &opts.run.keep.to_string()])
            .args(["--cap-mib", &(crate::alloc::cap() >> 20).to_string()])
            .arg("--shared")
            .arg(&page_path)
            .arg("--findings")
            .arg(&opts.findings)
            .stdin(Stdio::null())
            // A refused allocation prints a backtrace (its first frame in this workspace
            // names the site); errors do not capture backtraces (that would slow them).
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LIB_BACKTRACE", "0")
            .env(crate::targets::SCRATCH_ENV, scratch.path())
            .output()?;
        let snap = page.snapshot();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            if let Some(site) = line.strip_prefix(FINDING_LINE) {
                *stats.sites.entry(site.to_string()).or_default() += 1;
            }
        }
        stats.crashes += snap.crashes;
        stats.hangs += snap.hangs;
        if output.status.success() && snap.finished {
            stats.executions += snap.executions;
            break;
        }
        if !snap.attached || !snap.began || snap.index < next {
            return Err(io::Error::other(format!(
                "worker for {target} failed before its first execution ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        // The worker died in execution `snap.index`.
        stats.executions += snap.index + 1 - next;
        let seed = seed_of(target, opts.run.seed, snap.index);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let site = workspace_frame(&stderr);
        let tail = tail(&stderr, 6000);
        let (kind, message) = if snap.refused_allocation > 0 {
            stats.ooms += 1;
            (
                FindingKind::Oom,
                format!(
                    "refused a single allocation of {} bytes (cap {}) at {site}\n\n{tail}",
                    snap.refused_allocation,
                    crate::alloc::cap()
                ),
            )
        } else if snap.killed_hang {
            stats.hangs += 1;
            (
                FindingKind::Hang,
                format!("killed after {:?} at {site}\n\n{tail}", opts.run.kill_after),
            )
        } else {
            stats.crashes += 1;
            (
                FindingKind::Crash,
                format!("worker died ({}) at {site}\n\n{tail}", output.status),
            )
        };
        let finding = Finding {
            kind,
            target: target.to_string(),
            index: snap.index,
            seed: seed.0,
            seed_kind: seed.1,
            message,
            input: snap.input,
        };
        *stats
            .sites
            .entry(format!("{} {site}", kind.as_str()))
            .or_default() += 1;
        if kept_fatal[kind as usize] < opts.run.keep {
            kept_fatal[kind as usize] += 1;
            finding.save(&opts.findings)?;
            stats.findings.push(finding);
        }
        next = snap.index + 1;
    }
    stats.elapsed = started.elapsed();
    Ok(stats)
}

/// The seed file (name and kind) execution `index` of `target` was mutated from.
fn seed_of(target: &str, seed: u64, index: u64) -> (String, u32) {
    crate::targets::target(target)
        .map(|t| {
            let seeds = t.seeds();
            let (s, _) = crate::runner::input_for(t.as_ref(), &seeds, seed, index);
            (seeds[s].name.clone(), seeds[s].kind)
        })
        .unwrap_or_default()
}

/// The first backtrace frame in this workspace's sources (`at ./crate/src/file.rs:l:c`),
/// else the first line that says what happened.
fn workspace_frame(stderr: &str) -> String {
    let mut lines = stderr.lines().map(str::trim);
    if let Some(at) = lines.clone().find_map(|l| {
        l.strip_prefix("at ./")
            .filter(|p| !p.starts_with("cake-fuzz/"))
    }) {
        return at.to_string();
    }
    lines
        .find(|l| l.contains("panicked") || l.contains("overflowed") || l.contains("memory"))
        .unwrap_or("unknown site")
        .to_string()
}

/// The last `n` bytes of `text` (on a character boundary).
fn tail(text: &str, n: usize) -> &str {
    let mut start = text.len().saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The worker side: runs `opts.start..opts.end` of `target` with the page at `page_path`,
/// saving non-fatal findings under `findings` and printing one line per finding.
pub fn worker_main(
    target: &str,
    opts: &RunOptions,
    page_path: &Path,
    findings: &Path,
) -> io::Result<()> {
    let page: &'static SharedState = Box::leak(Box::new(SharedState::open(page_path)?));
    page.attach();
    let mut t = crate::targets::target(target)
        .ok_or_else(|| io::Error::other(format!("unknown target {target}")))?;
    let mut printed = 0usize;
    let mut saved = [0usize; 3];
    let mut error = None;
    crate::runner::run(t.as_mut(), opts, Some(page), &mut |f| {
        if printed < 1000 {
            printed += 1;
            println!("{FINDING_LINE}{} {}", f.kind.as_str(), f.site());
        }
        if saved[f.kind as usize] < opts.keep {
            saved[f.kind as usize] += 1;
            if let Err(e) = f.save(findings) {
                error = Some(e);
            }
        }
    });
    match error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The default kill limit for a hang limit: ten times it.
pub fn default_kill_after(hang_limit: Duration) -> Duration {
    hang_limit * 10
}
