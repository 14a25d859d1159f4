//! The execution loop: derive each input from `(seed, target, index)`, run it under
//! `catch_unwind`, time it, and report panics (crashes) and slow executions (hangs). A
//! watchdog thread aborts the process when one execution runs far past the hang limit, so
//! a true infinite loop still ends (and the supervisor records it).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::mutate::{Seed, mutate};
use crate::rng;
use crate::targets::Target;
use crate::worker::SharedState;

/// What went wrong in one execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FindingKind {
    /// A panic (caught), or a process death that was neither of the others.
    Crash,
    /// An execution slower than the hang limit, or one the watchdog had to kill.
    Hang,
    /// A single allocation request above the allocator's cap.
    Oom,
}

impl FindingKind {
    /// `crash`, `hang` or `oom`.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::Crash => "crash",
            FindingKind::Hang => "hang",
            FindingKind::Oom => "oom",
        }
    }
}

/// One finding, with the input that produced it.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Crash, hang or out-of-memory.
    pub kind: FindingKind,
    /// The target.
    pub target: String,
    /// Execution index (replays with the same seed).
    pub index: u64,
    /// Seed file the input was mutated from.
    pub seed: String,
    /// Kind of that seed (what the target does with the input; `--kind` of `--replay`).
    pub seed_kind: u32,
    /// Panic message and location, duration, or the refused allocation size.
    pub message: String,
    /// The input.
    pub input: Vec<u8>,
}

impl Finding {
    /// The panic location (`file:line:col`) or the kind, to group findings by cause.
    pub fn site(&self) -> String {
        match self.kind {
            FindingKind::Crash => self
                .message
                .strip_prefix("panicked at ")
                .map(|m| m.split(':').take(3).collect::<Vec<_>>().join(":"))
                .unwrap_or_else(|| self.message.lines().next().unwrap_or("").to_string()),
            _ => self.kind.as_str().to_string(),
        }
    }

    /// Writes `<dir>/<target>/<kind>-<index>.bin` (the input) and `.txt` (the report).
    pub fn save(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let dir = dir.join(&self.target);
        std::fs::create_dir_all(&dir)?;
        let stem = dir.join(format!("{}-{}", self.kind.as_str(), self.index));
        let bin = stem.with_extension("bin");
        std::fs::write(&bin, &self.input)?;
        std::fs::write(
            stem.with_extension("txt"),
            format!(
                "target: {}\nkind: {}\nexecution: {}\nseed file: {} (kind {})\nreplay: cake-fuzz --target {} --kind {} --replay {}\n\n{}\n",
                self.target,
                self.kind.as_str(),
                self.index,
                self.seed,
                self.seed_kind,
                self.target,
                self.seed_kind,
                bin.display(),
                self.message
            ),
        )?;
        Ok(bin)
    }
}

/// Counts of one target's run.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// The target.
    pub target: String,
    /// Executions run.
    pub executions: u64,
    /// Panics and process deaths.
    pub crashes: u64,
    /// Executions over the hang limit.
    pub hangs: u64,
    /// Refused oversized allocations.
    pub ooms: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Findings kept for the report (the first few of each kind).
    pub findings: Vec<Finding>,
    /// Number of findings per `"<kind> <site>"` (panic location, or the kind).
    pub sites: BTreeMap<String, u64>,
}

impl Stats {
    /// Crashes + hangs + out-of-memory findings.
    pub fn total_findings(&self) -> u64 {
        self.crashes + self.hangs + self.ooms
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Base seed of the random streams.
    pub seed: u64,
    /// First execution index.
    pub start: u64,
    /// One past the last execution index.
    pub end: u64,
    /// An execution slower than this is a hang finding.
    pub hang_limit: Duration,
    /// An execution slower than this is killed by the watchdog (process abort).
    pub kill_after: Duration,
    /// Findings of each kind kept in [`Stats::findings`].
    pub keep: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            start: 0,
            end: 1000,
            hang_limit: Duration::from_secs(2),
            kill_after: Duration::from_secs(20),
            keep: 10,
        }
    }
}

thread_local! {
    static CATCHING: Cell<bool> = const { Cell::new(false) };
    static PANIC_MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that records the message of panics raised inside an
/// execution instead of printing them; other panics go to the previous hook.
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CATCHING.with(Cell::get) {
                let message = info.to_string();
                PANIC_MESSAGE.with(|m| *m.borrow_mut() = Some(message));
            } else {
                previous(info);
            }
        }));
    });
}

/// The input of execution `index`: the first executions replay the seeds unchanged (a
/// seed that fails is a finding too), the rest mutate a randomly chosen seed.
pub fn input_for(target: &dyn Target, seeds: &[Seed], seed: u64, index: u64) -> (usize, Vec<u8>) {
    if let Some(s) = usize::try_from(index).ok().filter(|&i| i < seeds.len()) {
        return (s, seeds[s].bytes.clone());
    }
    let mut rng = rng::for_execution(seed, target.name(), index);
    let s = rng.below(seeds.len());
    let mut data = seeds[s].bytes.clone();
    mutate(&mut rng, &mut data, &seeds[s], seeds, &target.mutation());
    (s, data)
}

/// Runs one input, returning the panic message if it panicked.
pub fn execute_once(target: &mut dyn Target, kind: u32, input: &[u8]) -> Result<(), String> {
    install_panic_hook();
    CATCHING.with(|c| c.set(true));
    let result = catch_unwind(AssertUnwindSafe(|| target.execute(kind, input)));
    CATCHING.with(|c| c.set(false));
    result.map_err(|payload| {
        PANIC_MESSAGE
            .with(|m| m.borrow_mut().take())
            .unwrap_or_else(|| {
                payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic with a non-string payload".into())
            })
    })
}

/// Runs executions `opts.start..opts.end` of `target` in this process. With `shared`,
/// each input is copied to the shared page before it runs (so the supervisor can recover
/// it if the process dies) and the counts are kept there. `on_finding` sees every finding.
pub fn run(
    target: &mut dyn Target,
    opts: &RunOptions,
    shared: Option<&SharedState>,
    on_finding: &mut dyn FnMut(&Finding),
) -> Stats {
    let seeds = target.seeds();
    assert!(!seeds.is_empty(), "target {} has no seeds", target.name());
    let name = target.name().to_string();
    let mut stats = Stats {
        target: name.clone(),
        ..Stats::default()
    };
    let started = Instant::now();
    // Watchdog state: start of the running execution in ns since `started` (+1; 0 = idle).
    let running_since = AtomicU64::new(0);
    let running_index = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let kill_after = opts.kill_after;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                let since = running_since.load(Ordering::Relaxed);
                if since == 0 {
                    continue;
                }
                let now = started.elapsed().as_nanos() as u64 + 1;
                if Duration::from_nanos(now.saturating_sub(since)) > kill_after {
                    SharedState::mark_killed_hang();
                    eprintln!(
                        "cake-fuzz: {name} execution {} ran over {kill_after:?}; aborting",
                        running_index.load(Ordering::Relaxed)
                    );
                    std::process::abort();
                }
            }
        });
        let mut kept = [0usize; 3];
        for index in opts.start..opts.end {
            let (s, input) = input_for(target, &seeds, opts.seed, index);
            let kind_of_seed = seeds[s].kind;
            if let Some(shared) = shared {
                shared.begin(index, &input);
            }
            running_index.store(index, Ordering::Relaxed);
            let t0 = Instant::now();
            running_since.store((t0 - started).as_nanos() as u64 + 1, Ordering::Relaxed);
            let result = execute_once(target, kind_of_seed, &input);
            let took = t0.elapsed();
            running_since.store(0, Ordering::Relaxed);
            stats.executions += 1;
            let finding = match result {
                Err(message) => Some((FindingKind::Crash, message)),
                Ok(()) if took > opts.hang_limit => Some((
                    FindingKind::Hang,
                    format!("execution took {took:?} (limit {:?})", opts.hang_limit),
                )),
                Ok(()) => None,
            };
            if let Some((kind, message)) = finding {
                match kind {
                    FindingKind::Crash => stats.crashes += 1,
                    _ => stats.hangs += 1,
                }
                if let Some(shared) = shared {
                    shared.count(stats.crashes, stats.hangs);
                }
                let finding = Finding {
                    kind,
                    target: name.clone(),
                    index,
                    seed: seeds[s].name.clone(),
                    seed_kind: kind_of_seed,
                    message,
                    input,
                };
                on_finding(&finding);
                *stats
                    .sites
                    .entry(format!("{} {}", kind.as_str(), finding.site()))
                    .or_default() += 1;
                if kept[kind as usize] < opts.keep {
                    kept[kind as usize] += 1;
                    stats.findings.push(finding);
                }
            }
        }
        done.store(true, Ordering::Relaxed);
    });
    if let Some(shared) = shared {
        shared.finish(stats.executions);
    }
    stats.elapsed = started.elapsed();
    stats
}
