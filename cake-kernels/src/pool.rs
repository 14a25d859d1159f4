//! A small fork-join pool for the decoding kernels (the GEMV and the split-key attention).
//!
//! A decoding step runs some two hundred short parallel regions (one per projection and per
//! attention), each reading a few MB of weights or cache. Through rayon, each region paid
//! its join and the wake-up of a sleeping worker (about 12 us for a region that computes for
//! 2), and the memory streams restarted cold: the step's GEMVs read 21-25 GB/s where one
//! large GEMV reads 30. Here the workers spin for a while after each job (a decoding step's
//! next region comes within microseconds), then park, so a region costs a few atomic
//! operations.
//!
//! - The caller never waits for a worker that has not started: a worker *joins* a job
//!   before it claims a task, the caller closes the job once every task is claimed, and it
//!   waits only for the workers that joined. A worker the operating system has descheduled
//!   (another process on the core) misses the job instead of stalling it: without this,
//!   one busy process beside a run made it ten times slower.
//! - One job at a time: [`run`] from a second caller, or from inside a task, runs the tasks
//!   on the calling thread instead (same results, no deadlock).
//! - A panicking task is caught on whichever thread ran it and re-raised by [`run`] once
//!   every thread has left the job (whose data live on the caller's stack).
//! - Tasks are claimed one by one from a shared counter, so uneven tasks balance.
//! - The workers are the rayon pool's size less the caller (`RAYON_NUM_THREADS` applies),
//!   started on first use; with one thread everything runs on the caller.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next job before it parks.
const SPIN: Duration = Duration::from_micros(200);

/// One published job: `tasks` calls of `f`, claimed through `next`.
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    /// The first panic of a task, re-raised by [`run`] once every thread has left the job.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

/// [`Pool::state`]: the job's epoch in the high 32 bits, then the closed flag, then the
/// number of workers inside the job.
const EPOCH_SHIFT: u32 = 32;
/// Set by the caller once every task is claimed: no worker joins after it.
const CLOSED: u64 = 1 << 31;
/// The workers inside the job.
const JOINED: u64 = CLOSED - 1;

/// The epoch of a [`Pool::state`] word.
fn epoch(state: u64) -> u64 {
    state >> EPOCH_SHIFT
}

/// State shared by the caller and the workers.
struct Pool {
    /// Epoch (bumped once per job), closed flag and joined workers, one word so that a
    /// worker joins only an open job, atomically.
    state: AtomicU64,
    /// The current job (valid for a worker that joined it, until it leaves).
    job: AtomicPtr<Job>,
    /// Per worker: parked (or about to park) and must be unparked for a new epoch.
    sleeping: Vec<AtomicBool>,
    threads: Vec<Thread>,
    /// Set by the caller of [`run`] for the whole job.
    busy: AtomicBool,
    /// Memory an idle worker requests into the caches ([`prefetch_while_idle`]): its
    /// address and length, and a count bumped once both are written.
    hint_at: AtomicUsize,
    hint_bytes: AtomicUsize,
    hint_serial: AtomicU64,
}

// SAFETY: the raw job pointer is only dereferenced while the job it points to is alive: a
// worker dereferences it only after joining the open job, and `run` closes the job and
// waits until every worker that joined has left before returning.
unsafe impl Send for Pool {}
unsafe impl Sync for Pool {}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let workers = rayon::current_num_threads().saturating_sub(1);
        // The workers need the pool's address, and the pool their handles: each waits on
        // its own channel until the pool is in place.
        let mut threads = Vec::with_capacity(workers);
        let mut started = Vec::with_capacity(workers);
        for id in 0..workers {
            let (ready, wait) = std::sync::mpsc::channel::<&'static Pool>();
            let handle = std::thread::Builder::new()
                .name(format!("cake-decode-{id}"))
                .spawn(move || {
                    if let Ok(pool) = wait.recv() {
                        worker(pool, id);
                    }
                });
            match handle {
                Ok(handle) => {
                    threads.push(handle.thread().clone());
                    started.push(ready);
                }
                // No thread: fewer workers (the caller does their share).
                Err(_) => break,
            }
        }
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            state: AtomicU64::new(CLOSED),
            job: AtomicPtr::new(std::ptr::null_mut()),
            sleeping: (0..threads.len()).map(|_| AtomicBool::new(false)).collect(),
            threads,
            busy: AtomicBool::new(false),
            hint_at: AtomicUsize::new(0),
            hint_bytes: AtomicUsize::new(0),
            hint_serial: AtomicU64::new(0),
        }));
        for ready in started {
            let _ = ready.send(pool);
        }
        pool
    })
}

/// Claims and runs tasks of `job` until none is left. A panicking task is caught (so that
/// no thread leaves the job early), kept for [`run`] to re-raise, and ends the claiming.
///
/// # Safety
/// `job` must point to a live job whose `f` is live.
unsafe fn drain(job: *const Job) {
    // SAFETY: the caller's.
    let job = unsafe { &*job };
    loop {
        let task = job.next.fetch_add(1, Ordering::Relaxed);
        if task >= job.tasks {
            return;
        }
        // SAFETY: the caller's.
        let ran =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { (*job.f)(task) }));
        if let Err(payload) = ran {
            job.next.store(job.tasks, Ordering::Relaxed);
            if let Ok(mut first) = job.panic.lock() {
                first.get_or_insert(payload);
            }
            return;
        }
    }
}

/// Clears [`Pool::busy`] when dropped.
struct Busy<'a>(&'a AtomicBool);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Asks an idle worker of the decoding pool to request memory into the caches while the
/// caller works alone (a decoding step's serial work between two parallel regions), so that
/// the next region finds it there instead of in memory. The worker stops at the next job;
/// a newer request replaces this one. Without workers, or off x86-64, nothing happens.
///
/// The `bytes` from `at` are requested, never read: they may be freed before the worker
/// gets to them (a request for memory that is gone does nothing).
pub fn prefetch_while_idle(at: *const u8, bytes: usize) {
    let pool = pool();
    if pool.threads.is_empty() {
        return;
    }
    pool.hint_at.store(at as usize, Ordering::Relaxed);
    pool.hint_bytes.store(bytes, Ordering::Relaxed);
    pool.hint_serial.fetch_add(1, Ordering::Release);
}

/// Cache lines a worker requests between two looks at the pool's state.
const HINT_LINES: usize = 64;

/// Requests the hinted memory into L2, [`HINT_LINES`] at a time, until it is all requested
/// or a job (epoch) other than `seen` begins; returns whether the hint was finished.
fn follow_hint(pool: &Pool, seen: u64) -> bool {
    let (at, bytes) = (
        pool.hint_at.load(Ordering::Relaxed),
        pool.hint_bytes.load(Ordering::Relaxed),
    );
    for block in (0..bytes).step_by(64 * HINT_LINES) {
        if epoch(pool.state.load(Ordering::Relaxed)) != seen {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        for line in (block..(block + 64 * HINT_LINES).min(bytes)).step_by(64) {
            use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
            // SAFETY: a prefetch reads nothing and never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(line) as *const i8) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (at, block);
    }
    true
}

fn worker(pool: &'static Pool, id: usize) {
    let mut seen = 0u64;
    let mut hinted = 0u64;
    loop {
        // Wait for the next epoch: spin (following any hint), then park.
        let spin_start = Instant::now();
        let mut spins = 0u32;
        let mut state = pool.state.load(Ordering::SeqCst);
        while epoch(state) == seen {
            let hint = pool.hint_serial.load(Ordering::Acquire);
            if hint != hinted && follow_hint(pool, seen) {
                hinted = hint;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && spin_start.elapsed() > SPIN {
                pool.sleeping[id].store(true, Ordering::SeqCst);
                if epoch(pool.state.load(Ordering::SeqCst)) == seen {
                    std::thread::park();
                }
                pool.sleeping[id].store(false, Ordering::SeqCst);
            } else {
                std::hint::spin_loop();
            }
            state = pool.state.load(Ordering::SeqCst);
        }
        seen = epoch(state);
        // Join the job while it is open (the state may move on under us: retry with the
        // word as it is now; a closed or newer job is missed, the next wait catches up).
        let joined = loop {
            if epoch(state) != seen || state & CLOSED != 0 {
                break false;
            }
            match pool.state.compare_exchange_weak(
                state,
                state + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break true,
                Err(now) => state = now,
            }
        };
        if !joined {
            continue;
        }
        let job = pool.job.load(Ordering::SeqCst);
        // SAFETY: the job was published before its epoch, and its caller waits for every
        // worker that joined it to leave (the decrement below) before it returns.
        unsafe { drain(job) };
        pool.state.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs `f(0)`, .., `f(tasks - 1)` on the calling thread and the pool's workers and returns
/// when all have returned. Each task runs exactly once; which thread runs it is unspecified.
pub fn run(tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    if tasks == 0 {
        return;
    }
    let pool = pool();
    let free = tasks > 1
        && !pool.threads.is_empty()
        && pool
            .busy
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
    if !free {
        // Busy (another caller, or a task of this job) or nothing to share: serially.
        (0..tasks).for_each(f);
        return;
    }
    let _busy = Busy(&pool.busy);
    // SAFETY (lifetime): the job and `f` outlive every use: this function returns only once
    // the job is closed and no worker is inside it (every worker that joined has left
    // `drain`, and none can join any more).
    let f: *const (dyn Fn(usize) + Sync + 'static) = unsafe {
        std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync)>(f)
    };
    let job = Job {
        f,
        tasks,
        next: AtomicUsize::new(0),
        panic: Mutex::new(None),
    };
    pool.job
        .store((&job as *const Job).cast_mut(), Ordering::SeqCst);
    // The previous job is closed and empty (its caller saw to it): open the next epoch.
    let previous = pool.state.load(Ordering::SeqCst);
    debug_assert_eq!(previous & !(u64::MAX << EPOCH_SHIFT), CLOSED);
    pool.state
        .store((epoch(previous) + 1) << EPOCH_SHIFT, Ordering::SeqCst);
    for (sleeping, thread) in pool.sleeping.iter().zip(&pool.threads) {
        if sleeping.load(Ordering::SeqCst) {
            thread.unpark();
        }
    }
    // SAFETY: `job` is alive here.
    unsafe { drain(&job) };
    // Every task is claimed: close the job, then wait for the workers inside it (running
    // their last tasks, or about to find none left). They finish within microseconds unless
    // descheduled: then give up the core.
    let mut state = pool.state.fetch_or(CLOSED, Ordering::SeqCst) | CLOSED;
    let mut spins = 0u32;
    while state & JOINED != 0 {
        spins = spins.saturating_add(1);
        if spins > 4096 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
        state = pool.state.load(Ordering::SeqCst);
    }
    let panic = job.panic.lock().ok().and_then(|mut first| first.take());
    if let Some(payload) = panic {
        std::panic::resume_unwind(payload);
    }
}

/// `[f(0), .., f(tasks - 1)]` computed by [`run`].
pub fn map<T: Send>(tasks: usize, f: &(dyn Fn(usize) -> T + Sync)) -> Vec<T> {
    let mut out: Vec<std::mem::MaybeUninit<T>> = Vec::with_capacity(tasks);
    let slots = Slots(out.as_mut_ptr());
    run(tasks, &|i| {
        // SAFETY: task i alone writes slot i, within the capacity reserved above.
        unsafe { slots.ptr().add(i).write(std::mem::MaybeUninit::new(f(i))) };
    });
    // SAFETY: `run` ran every task once, so all `tasks` slots are initialised.
    unsafe {
        out.set_len(tasks);
        let mut out = std::mem::ManuallyDrop::new(out);
        Vec::from_raw_parts(out.as_mut_ptr().cast::<T>(), tasks, out.capacity())
    }
}

/// The output slots of [`map`], shared by its tasks (each writes its own).
struct Slots<T>(*mut std::mem::MaybeUninit<T>);
// SAFETY: tasks write disjoint slots (see `map`).
unsafe impl<T: Send> Send for Slots<T> {}
unsafe impl<T: Send> Sync for Slots<T> {}

impl<T> Slots<T> {
    /// The first slot (a method, so that closures capture the whole `Sync` wrapper).
    fn ptr(&self) -> *mut std::mem::MaybeUninit<T> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_and_jobs_nest_and_overlap() {
        for tasks in [0, 1, 2, 3, 17, 1000] {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            run(tasks, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "{tasks}"
            );
        }
        assert_eq!(map(5, &|i| i * i), vec![0, 1, 4, 9, 16]);
        // Requests for memory that is not there (freed, or never mapped) change nothing.
        prefetch_while_idle(64 as *const u8, 1 << 20);
        std::thread::sleep(Duration::from_millis(1));
        assert_eq!(map(5, &|i| i + 2), vec![2, 3, 4, 5, 6]);
        // A task that runs a job of its own (served serially), and jobs from several
        // threads at once.
        let nested = map(4, &|i| map(3, &|j| i * 10 + j).iter().sum::<usize>());
        assert_eq!(nested, vec![3, 33, 63, 93]);
        // A panicking task reaches the caller once every thread has left the job, and the
        // pool serves the next job.
        let caught = std::panic::catch_unwind(|| {
            run(64, &|i| {
                if i == 5 {
                    panic!("task five");
                }
            })
        });
        assert!(caught.is_err());
        assert_eq!(map(3, &|i| i + 1), vec![1, 2, 3]);
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|t| s.spawn(move || map(100, &|i| i + t).iter().sum::<usize>()))
                .collect();
            for (t, h) in handles.into_iter().enumerate() {
                assert_eq!(h.join().unwrap(), 4950 + 100 * t);
            }
        });
    }
}
