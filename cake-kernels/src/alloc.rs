//! Process set-up for the host kernels: the allocator and the threads a program running
//! them should use.

/// Makes glibc's allocator keep freed memory for reuse instead of returning it to the
/// system after every large free (its default for blocks over 128 KiB and heap tops over
/// 128 KiB): otherwise every decoding step pays page faults and zeroing for its fresh
/// activation buffers (measured: SmolLM2 decode 80 -> 52 ms/token, prefill +15%).
/// Call once at the start of a program; a no-op elsewhere than Linux with glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; valid at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// A global allocator that starts every block of at least 64 KiB on a 64-byte cache line
/// (the system allocator, glibc's included, aligns to 16 bytes only). The kernels read
/// weights, activations and cached keys/values in 64-byte vectors: on a buffer aligned to 16
/// bytes, three loads in four straddle two cache lines, each paid twice (measured: the
/// weighted values of the tiled attention over L2-resident rows, 185 -> 206 GFLOP/s on one
/// core). Smaller blocks keep their own alignment: a decoding step's many small buffers would
/// pay for the aligned allocation's extra work (measured: 4 KiB and up made decoding 3-5%
/// slower). Install it in a program with
/// `#[global_allocator] static ALLOC: cake_kernels::LineAligned = cake_kernels::LineAligned;`.
#[derive(Debug, Clone, Copy, Default)]
pub struct LineAligned;

impl LineAligned {
    /// The layout a request is served with: `layout` aligned to a cache line when large.
    fn served(layout: std::alloc::Layout) -> std::alloc::Layout {
        const LINE: usize = 64;
        const ALIGNED_FROM: usize = 64 << 10;
        if layout.size() >= ALIGNED_FROM && layout.align() < LINE {
            std::alloc::Layout::from_size_align(layout.size(), LINE).unwrap_or(layout)
        } else {
            layout
        }
    }
}

// SAFETY: every call is forwarded to the system allocator with `served(layout)`, a pure
// function of the caller's layout, so each block is freed (or resized) with the layout it
// was allocated with; a resize that changes the served alignment moves the block itself,
// and a shrink on glibc goes to its `realloc`, whose block the system allocator frees with
// `free` as it frees its own.
unsafe impl std::alloc::GlobalAlloc for LineAligned {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract, with a layout of the same size and no smaller
        // alignment.
        unsafe { std::alloc::System.alloc(Self::served(layout)) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe { std::alloc::System.alloc_zeroed(Self::served(layout)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` was allocated with `served(layout)` (see `alloc`).
        unsafe { std::alloc::System.dealloc(ptr, Self::served(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let old = Self::served(layout);
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new = Self::served(unsafe {
            std::alloc::Layout::from_size_align_unchecked(new_size, layout.align())
        });
        // A cache buffer that the cascade shrinks in place: glibc shrinks a block without
        // moving it (the system allocator's own `realloc` of an over-aligned block would
        // move it to a new one and copy the rows kept). Should glibc move it after all, the
        // block keeps glibc's own 16-byte alignment, all the caller's layout asks for, and
        // is freed with `free` like any other (the system allocator's `dealloc` on Linux).
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        if new.align() == old.align() && layout.align() <= 16 && new_size <= layout.size() {
            // SAFETY: `ptr` is a live block of glibc's (posix_memalign'd) of at least
            // `new_size` bytes; on failure glibc leaves it untouched, as the contract asks.
            return unsafe { libc::realloc(ptr.cast(), new_size) }.cast::<u8>();
        }
        if new.align() == old.align() {
            // SAFETY: `ptr` was allocated with `old`; the caller's contract on `new_size`.
            return unsafe { std::alloc::System.realloc(ptr, old, new_size) };
        }
        // SAFETY: `new` is a valid non-zero layout (`new_size` is non-zero, the caller's);
        // both blocks hold at least the bytes copied and do not overlap.
        unsafe {
            let moved = std::alloc::System.alloc(new);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                std::alloc::System.dealloc(ptr, old);
            }
            moved
        }
    }
}

/// Makes the calling thread a worker of rayon's global pool (one of its
/// `available_parallelism` threads), so that the kernels' parallel loops started from it
/// run on it directly. Otherwise every loop is handed to the pool's own threads while the
/// caller sleeps until they finish: two thread wake-ups per kernel, a few hundred kernels
/// per decoding step. Call once, at the start of a program, on the thread that will run
/// the model; does nothing when the global pool was already started.
pub fn tune_threads() {
    // An error only means the global pool exists already: it then keeps its threads.
    let _ = rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_start_on_a_line_and_keep_their_bytes_when_resized() {
        use std::alloc::{GlobalAlloc, Layout};
        let alloc = LineAligned;
        let small = Layout::from_size_align(100, 4).unwrap();
        // SAFETY: non-zero layouts; each block is resized and freed with the layout it has.
        unsafe {
            let p = alloc.alloc(small);
            assert!(!p.is_null());
            for i in 0..100 {
                *p.add(i) = i as u8;
            }
            // 100 -> 100000 bytes: served on a line from then on, the bytes moved with it.
            let q = alloc.realloc(p, small, 100_000);
            assert_eq!(q as usize % 64, 0);
            assert!((0..100).all(|i| *q.add(i) == i as u8));
            // Shrunk above the threshold: in place, still on its line.
            let big = Layout::from_size_align(100_000, 4).unwrap();
            let q = alloc.realloc(q, big, 80_000);
            assert_eq!(q as usize % 64, 0);
            assert!((0..100).all(|i| *q.add(i) == i as u8));
            let q = alloc.realloc(q, Layout::from_size_align(80_000, 4).unwrap(), 100_000);
            assert_eq!(q as usize % 64, 0);
            assert!((0..100).all(|i| *q.add(i) == i as u8));
            // and back below the threshold.
            let r = alloc.realloc(q, big, 50);
            assert!((0..50).all(|i| *r.add(i) == i as u8));
            alloc.dealloc(r, Layout::from_size_align(50, 4).unwrap());
            let z = alloc.alloc_zeroed(big);
            assert_eq!(z as usize % 64, 0);
            assert!((0..100_000).all(|i| *z.add(i) == 0));
            alloc.dealloc(z, big);
        }
    }
}
