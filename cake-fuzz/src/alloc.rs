//! A global allocator that refuses oversized requests: any single allocation above the cap
//! (256 MiB by default) is recorded as an out-of-memory finding and not performed. It
//! returns null, so the process aborts through `handle_alloc_error`; the supervisor
//! ([`crate::worker`]) reads the finding from the shared page and restarts the worker.
//!
//! It catches what fuzzing is after, an allocation sized from an untrusted header (a count
//! or length read from the file and used before it is checked), without needing the
//! machine to actually run out of memory. It also keeps, per thread, the largest request
//! seen since the last [`reset_peak_request`], so a test can assert that parsing a hostile
//! header allocated nothing large.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Default cap on a single allocation request: 256 MiB (the largest file a target reads is
/// 1 MiB; nothing a correct parser does with it comes near this).
pub const DEFAULT_CAP: usize = 256 << 20;

static CAP: AtomicUsize = AtomicUsize::new(DEFAULT_CAP);
static REFUSED: AtomicU64 = AtomicU64::new(0);
static LAST_REFUSED: AtomicUsize = AtomicUsize::new(0);
/// The shared page's out-of-memory slot (see [`crate::worker::SharedState`]), if any.
static REPORT: AtomicPtr<u64> = AtomicPtr::new(std::ptr::null_mut());

thread_local! {
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

/// The capping allocator; install it with `#[global_allocator]`.
#[derive(Debug, Default, Clone, Copy)]
pub struct CapAllocator;

impl CapAllocator {
    fn admit(size: usize) -> bool {
        let _ = PEAK.try_with(|p| {
            if size > p.get() {
                p.set(size);
            }
        });
        if size <= CAP.load(Ordering::Relaxed) {
            return true;
        }
        REFUSED.fetch_add(1, Ordering::Relaxed);
        LAST_REFUSED.store(size, Ordering::Relaxed);
        let slot = REPORT.load(Ordering::Acquire);
        if !slot.is_null() {
            // SAFETY: `set_report_slot` registered a pointer to a live, 8-byte aligned u64
            // of a mapping that stays mapped for the rest of the process.
            unsafe { slot.write_volatile(size as u64) };
        }
        false
    }
}

// SAFETY: every method forwards to `System` with the same layout, or returns null (which
// `GlobalAlloc` allows for any request).
unsafe impl GlobalAlloc for CapAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !Self::admit(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from `System` with `layout`; forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Sets the cap on a single allocation request, in bytes.
pub fn set_cap(bytes: usize) {
    CAP.store(bytes, Ordering::Relaxed);
}

/// The cap on a single allocation request, in bytes.
pub fn cap() -> usize {
    CAP.load(Ordering::Relaxed)
}

/// Requests refused so far (only observable when the caller survives them, as
/// `Vec::try_reserve` does).
pub fn refused() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

/// Size of the last refused request.
pub fn last_refused() -> usize {
    LAST_REFUSED.load(Ordering::Relaxed)
}

/// Forgets this thread's largest request.
pub fn reset_peak_request() {
    PEAK.with(|p| p.set(0));
}

/// The largest allocation this thread requested since [`reset_peak_request`] (only
/// counted while [`CapAllocator`] is the global allocator).
pub fn peak_request() -> usize {
    PEAK.with(Cell::get)
}

/// Registers where a refused request's size is written (a slot of the shared page).
///
/// # Safety
/// `slot` must be null or point to an 8-byte aligned `u64` that stays valid and writable
/// for the rest of the process.
pub unsafe fn set_report_slot(slot: *mut u64) {
    REPORT.store(slot, Ordering::Release);
}
