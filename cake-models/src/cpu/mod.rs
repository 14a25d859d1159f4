//! The CPU fast path: host kernels on the CPU backend's f32 buffers.
//!
//! The model picks this path by type (see [`cake_core::host`]): when its backend keeps
//! tensors in host memory, the decoder layer runs these kernels (and the attention and
//! GEMV kernels of `cake_core::host`) on the buffers directly, with threads over heads,
//! query blocks and output rows; any other backend runs the generic Burn code of
//! [`crate::layers`], and the tests check that both agree.

pub use cake_core::host::{AttentionShape, KvRows, attention, gemv, read_bandwidth, simd};
use rayon::prelude::*;

/// Rows per task of the row-wise kernels below.
const ROWS_PER_TASK: usize = 16;

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
/// `#[global_allocator] static ALLOC: cake_models::cpu::LineAligned = cake_models::cpu::LineAligned;`.
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

/// RMS normalisation of each `weight.len()`-wide row of `x` into a new buffer:
/// `weight * (x / sqrt(mean(x^2) + eps))`, in transformers' order of operations. The
/// threads write the rows straight into the buffer's spare capacity (zero-filling it first
/// was a pass over the activations on one thread while the others waited).
///
/// # Panics
/// When `x` is not whole rows of `weight.len()` (which must be positive).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let width = weight.len();
    assert!(
        width > 0 && x.len().is_multiple_of(width),
        "x must be whole rows of the weight's width"
    );
    let task = ROWS_PER_TASK * width;
    let mut out = Vec::with_capacity(x.len());
    out.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(task)
        .zip(x.par_chunks(task))
        .for_each(|(out, x)| {
            for (row, dst) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
                let mean_sq = simd::dot(row, row) / width as f32;
                let inv = 1.0 / (mean_sq + eps).sqrt();
                for ((o, &v), &w) in dst.iter_mut().zip(row).zip(weight) {
                    o.write(w * (v * inv));
                }
            }
        });
    // SAFETY: the chunks cover the first `x.len()` entries, whole rows each (checked
    // above), and every entry of every row was written.
    unsafe { out.set_len(x.len()) };
    out
}

/// `x += y` element by element, threads over blocks (the residual connections).
///
/// # Panics
/// When the lengths differ.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "x and y must have the same length");
    const BLOCK: usize = 1 << 14;
    let add = |(x, y): (&mut [f32], &[f32])| {
        for (a, &b) in x.iter_mut().zip(y) {
            *a += b;
        }
    };
    if x.len() <= BLOCK {
        add((x, y));
    } else {
        x.par_chunks_mut(BLOCK)
            .zip(y.par_chunks(BLOCK))
            .for_each(add);
    }
}

/// Rotary embedding ("rotate half" layout), in place, of `heads` heads of width `d` in
/// each row of `x`: row `i` (stride `row_stride`, heads starting at `offset`) turns by the
/// angles whose cosines and sines are row `i` of `cos` and `sin` (`[rows, d / 2]`, see
/// [`crate::layers::HostTables`]).
pub fn rope_in_place(
    x: &mut [f32],
    row_stride: usize,
    offset: usize,
    heads: usize,
    (cos, sin): (&[f32], &[f32]),
) {
    let rows = x.len() / row_stride.max(1);
    let half = cos.len() / rows.max(1);
    if half == 0 {
        return;
    }
    let d = 2 * half;
    x.par_chunks_mut(ROWS_PER_TASK * row_stride)
        .zip(cos.par_chunks(ROWS_PER_TASK * half))
        .zip(sin.par_chunks(ROWS_PER_TASK * half))
        .for_each(|((rows, cos), sin)| {
            for ((row, cos), sin) in rows
                .chunks_exact_mut(row_stride)
                .zip(cos.chunks_exact(half))
                .zip(sin.chunks_exact(half))
            {
                for h in 0..heads {
                    let at = offset + h * d;
                    let (x1, x2) = row[at..at + d].split_at_mut(half);
                    for j in 0..half {
                        let (a, b) = (x1[j], x2[j]);
                        x1[j] = a * cos[j] + (-b) * sin[j];
                        x2[j] = b * cos[j] + a * sin[j];
                    }
                }
            }
        });
}

/// SwiGLU's middle: rows of `gate_up` are `[gate (inter) | up (inter)]`; writes
/// `silu(gate) * up` rows of width `inter` into `out`, vectorised ([`simd::silu_mul`],
/// whose `exp` is within 2e-7 relative of libm's) and threaded over blocks of rows.
pub fn silu_mul(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    if inter == 0 {
        return;
    }
    out.par_chunks_mut(ROWS_PER_TASK * inter)
        .zip(gate_up.par_chunks(ROWS_PER_TASK * 2 * inter))
        .for_each(|(out, gate_up)| {
            for (row, dst) in gate_up
                .chunks_exact(2 * inter)
                .zip(out.chunks_exact_mut(inter))
            {
                let (gate, up) = row.split_at(inter);
                simd::silu_mul(gate, up, dst);
            }
        });
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

    #[test]
    fn rms_norm_by_hand() {
        let x = [3.0, 4.0, 0.0, 0.0, 1.0, 1.0];
        let w = [1.0, 2.0, 0.5];
        let out = rms_norm(&x, &w, 0.0);
        // Row 0: mean square 25/3.
        let inv = 1.0 / (25.0f32 / 3.0).sqrt();
        assert!((out[0] - 3.0 * inv).abs() < 1e-6);
        assert!((out[1] - 8.0 * inv).abs() < 1e-6);
        assert_eq!(out[2], 0.0);
        // Row 1: mean square 2/3.
        let inv = 1.0 / (2.0f32 / 3.0).sqrt();
        assert!((out[4] - 2.0 * inv).abs() < 1e-6 && (out[5] - 0.5 * inv).abs() < 1e-6);
    }

    #[test]
    fn add_assign_adds_every_element() {
        for n in [0, 5, (1 << 14) + 3, 3 << 14] {
            let mut x: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
            let y: Vec<f32> = (0..n).map(|i| 1.0 - i as f32).collect();
            let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
            add_assign(&mut x, &y);
            assert_eq!(x, want, "{n} elements");
        }
    }

    #[test]
    fn rope_rotates_pairs_by_position() {
        // One head of width 4 at position 2: pairs (0, 2) and (1, 3) rotate by 2*f.
        let (a, b) = (2.0f32 * 1.0, 2.0f32 * 0.5);
        let mut x = vec![9.0, 1.0, 2.0, 3.0, 4.0];
        rope_in_place(&mut x, 5, 1, 1, (&[a.cos(), b.cos()], &[a.sin(), b.sin()]));
        assert_eq!(x[0], 9.0);
        assert!((x[1] - (1.0 * a.cos() - 3.0 * a.sin())).abs() < 1e-6);
        assert!((x[3] - (3.0 * a.cos() + 1.0 * a.sin())).abs() < 1e-6);
        assert!((x[2] - (2.0 * b.cos() - 4.0 * b.sin())).abs() < 1e-6);
        assert!((x[4] - (4.0 * b.cos() + 2.0 * b.sin())).abs() < 1e-6);
    }

    #[test]
    fn silu_mul_by_hand() {
        let gate_up = [0.0, 2.0, 5.0, 7.0];
        let mut out = [1.0; 2];
        silu_mul(&gate_up, 2, &mut out);
        assert_eq!(out[0], 0.0);
        let silu2 = 2.0 / (1.0 + (-2.0f32).exp());
        assert!((out[1] - silu2 * 7.0).abs() < 1e-5);
    }
}
