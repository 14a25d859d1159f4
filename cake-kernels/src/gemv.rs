//! The threaded GEMV of a decoding step (`y = W x + b` for one token's activations).

use crate::attention::SharedOut;
use crate::simd;

/// Most output rows per GEMV task: large enough to amortise scheduling.
const GEMV_MAX_ROWS_PER_TASK: usize = 128;

/// `y = W x + b` with `W` row-major `[out, in]` (each output a contiguous dot product),
/// `x`: `[in]`, `y`: `[out]`, split over the decoding pool's threads ([`crate::pool`]) by
/// output rows: at least eight tasks per thread, so that matrices of a few hundred rows (a
/// small model's output projection) still keep every thread busy to the end. Each task
/// reads its rows as four streams ([`simd::matvec`]): on a 2-core EPYC (`gemv_bandwidth`,
/// alternated), SmolLM2-135M's GEMVs read 46.6-52.3 GB/s against a 50-57 GB/s probe in the
/// machine's fast phases, where one stream of one FMA chain read 39.4-40.8 against 55-56.
///
/// Once done, it asks the pool's idle worker to request into the caches the first
/// `HINT_BYTES` (1 MiB) of the weights that followed these last time (a decoding step runs its
/// projections in the same order every step), while the caller runs the step's serial work
/// in between. On a 2-core EPYC (`gemv_bandwidth --serial-us 15`, alternated), SmolLM2-135M's
/// GEMVs with 15 us of serial work after each took 14.2-15.8 ms against 14.8-18.3 without.
pub fn gemv(w: &[f32], x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let inp = x.len();
    debug_assert_eq!(w.len(), y.len() * inp);
    let next = follow(w.as_ptr() as *const u8, std::mem::size_of_val(w));
    let tasks = 8 * rayon::current_num_threads();
    let rows = y.len().div_ceil(tasks).next_multiple_of(4);
    let rows = rows.clamp(4, GEMV_MAX_ROWS_PER_TASK);
    let n = y.len();
    let dst = SharedOut(y.as_mut_ptr());
    crate::pool::run(n.div_ceil(rows), &|c| {
        let o0 = c * rows;
        // SAFETY: task c alone writes outputs o0..o0 + len of y.
        let out = unsafe { std::slice::from_raw_parts_mut(dst.ptr().add(o0), rows.min(n - o0)) };
        simd::matvec(&w[o0 * inp..(o0 + out.len()) * inp], x, out);
        if let Some(b) = bias {
            for (y, &b) in out.iter_mut().zip(&b[o0..]) {
                *y += b;
            }
        }
    });
    request(next);
}

/// Records that this thread's decoding step now reads the `bytes` of weights at `at`;
/// returns the weights that followed them last time (see [`gemv`]).
pub(crate) fn follow(at: *const u8, bytes: usize) -> Option<(usize, usize)> {
    NEXT_WEIGHTS.with(|n| n.borrow_mut().follow(at as usize, bytes))
}

/// Asks the pool's idle worker to request the first [`HINT_BYTES`] of `next` (from
/// [`follow`]) into the caches.
pub(crate) fn request(next: Option<(usize, usize)>) {
    if let Some((at, bytes)) = next {
        crate::pool::prefetch_while_idle(at as *const u8, bytes.min(HINT_BYTES));
    }
}

/// `ys = xs W^T + b` for a few activation rows `xs` (`[n, in]`, batched decoding) with `W`
/// row-major `[out, in]`: each weight row is read from memory once and multiplied with
/// every activation row, four at a time ([`simd::dot4_at`] with the activations as its
/// rows), threaded over output rows on the decoding pool like [`gemv`]. `ys`: `[n, out]`.
///
/// # Panics
/// When the shapes do not fit.
pub fn gemv_rows(w: &[f32], xs: &[f32], inp: usize, bias: Option<&[f32]>, ys: &mut [f32]) {
    assert!(inp > 0 && w.len().is_multiple_of(inp) && xs.len().is_multiple_of(inp));
    let (out, n) = (w.len() / inp, xs.len() / inp);
    assert!(ys.len() == n * out && bias.is_none_or(|b| b.len() == out));
    let next = follow(w.as_ptr() as *const u8, std::mem::size_of_val(w));
    let tasks = 8 * rayon::current_num_threads();
    let rows = out
        .div_ceil(tasks)
        .next_multiple_of(4)
        .clamp(4, GEMV_MAX_ROWS_PER_TASK);
    let dst = SharedOut(ys.as_mut_ptr());
    crate::pool::run(out.div_ceil(rows), &|c| {
        let (r0, r1) = (c * rows, ((c + 1) * rows).min(out));
        block_times(&w[r0 * inp..r1 * inp], xs, inp, |r, s, dot| {
            let b = bias.map_or(0.0, |b| b[r0 + r]);
            // SAFETY: output (s, r0 + r) is written by the one task owning row r0 + r.
            unsafe { *dst.ptr().add(s * out + r0 + r) = dot + b };
        });
    });
    request(next);
}

/// Calls `emit(r, s, w[r] . xs[s])` for every weight row `r` of `w` and activation row `s`
/// of `xs` (rows of `inp`). On AVX-512, blocks of four weight rows by four activation rows
/// keep their sixteen sums in registers, so each load serves four multiply-adds; the rest
/// goes one weight row at a time ([`rows_times`]).
pub(crate) fn block_times(
    w: &[f32],
    xs: &[f32],
    inp: usize,
    mut emit: impl FnMut(usize, usize, f32),
) {
    let (m, n) = (w.len() / inp, xs.len() / inp);
    let mut r = 0;
    #[cfg(target_arch = "x86_64")]
    if inp.is_multiple_of(16) && std::is_x86_feature_detected!("avx512f") {
        while r + 4 <= m {
            let mut s = 0;
            while s + 4 <= n {
                // SAFETY: AVX-512F (checked); rows r..r + 4 of w and s..s + 4 of xs, each of
                // `inp` values, lie inside the slices.
                let dots =
                    unsafe { dot4x4(w.as_ptr().add(r * inp), xs.as_ptr().add(s * inp), inp) };
                for (a, row) in dots.iter().enumerate() {
                    for (b, &dot) in row.iter().enumerate() {
                        emit(r + a, s + b, dot);
                    }
                }
                s += 4;
            }
            if s < n {
                for a in r..r + 4 {
                    rows_times(&xs[s * inp..], &w[a * inp..(a + 1) * inp], |k, dot| {
                        emit(a, s + k, dot)
                    });
                }
            }
            r += 4;
        }
    }
    for a in r..m {
        rows_times(xs, &w[a * inp..(a + 1) * inp], |s, dot| emit(a, s, dot));
    }
}

/// The sixteen dot products of four weight rows at `w` with four activation rows at `x`
/// (both at row stride `inp`, a multiple of 16): `[weight row][activation row]`.
///
/// # Safety
/// AVX-512F; the four rows of `inp` values at `w` and at `x` must be readable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot4x4(w: *const f32, x: *const f32, inp: usize) -> [[f32; 4]; 4] {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 4]; 4];
    for i in (0..inp).step_by(16) {
        // SAFETY: i + 16 <= inp inside each of the caller's rows.
        unsafe {
            let xv = [0, 1, 2, 3].map(|s| _mm512_loadu_ps(x.add(s * inp + i)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let wv = _mm512_loadu_ps(w.add(r * inp + i));
                for (acc, &xv) in acc.iter_mut().zip(&xv) {
                    *acc = _mm512_fmadd_ps(wv, xv, *acc);
                }
            }
        }
    }
    acc.map(|row| row.map(|v| _mm512_reduce_add_ps(v)))
}

/// Calls `emit(s, xs[s] . row)` for every activation row `s` of `xs` (rows of
/// `row.len()`), four rows per pass over `row`.
pub(crate) fn rows_times(xs: &[f32], row: &[f32], mut emit: impl FnMut(usize, f32)) {
    let inp = row.len();
    let n = xs.len() / inp;
    let mut s = 0;
    while s + 4 <= n {
        let dots = simd::dot4_at(
            xs,
            [s * inp, (s + 1) * inp, (s + 2) * inp, (s + 3) * inp],
            row,
        );
        for (k, dot) in dots.into_iter().enumerate() {
            emit(s + k, dot);
        }
        s += 4;
    }
    for s in s..n {
        emit(s, simd::dot(&xs[s * inp..(s + 1) * inp], row));
    }
}

/// Most bytes of the next weights an idle worker requests between two GEMVs: what a
/// decoding step's serial work between them leaves time for, and what the caches hold.
const HINT_BYTES: usize = 1 << 20;

thread_local! {
    /// The GEMVs of a decoding step, in the order they last ran on this thread.
    static NEXT_WEIGHTS: std::cell::RefCell<WeightOrder> = Default::default();
}

/// The order in which a thread's GEMVs read their weights: a decoding step runs the same
/// projections in the same order every step, so the weights that followed a matrix last
/// time are the ones to request while the step's serial work runs after it.
#[derive(Default)]
struct WeightOrder {
    /// Start of the last weights read.
    last: usize,
    /// Weights start -> (start, bytes) of the weights read right after them.
    next: std::collections::HashMap<usize, (usize, usize)>,
}

impl WeightOrder {
    /// Records that the `bytes` at `at` follow the last weights; returns what followed
    /// them last time.
    fn follow(&mut self, at: usize, bytes: usize) -> Option<(usize, usize)> {
        if self.last != 0 && self.last != at {
            // Bounded: a process that loads model after model forgets the old ones.
            if self.next.len() >= 4096 {
                self.next.clear();
            }
            self.next.insert(self.last, (at, bytes));
        }
        self.last = at;
        self.next.get(&at).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.377 + seed).sin()).collect()
    }

    /// The GEMVs' weight order: after one round, each matrix names the one that followed it
    /// (the last names the first of the next round), and a new order replaces the old.
    #[test]
    fn weight_order_names_the_weights_that_came_next() {
        let mats: Vec<Vec<f32>> = (1..=3).map(|n| vec![0.0; n * 8]).collect();
        let at = |m: &Vec<f32>| (m.as_ptr() as usize, m.len() * 4);
        let mut order = WeightOrder::default();
        let mut order = |m: &Vec<f32>| order.follow(m.as_ptr() as usize, m.len() * 4);
        assert_eq!(order(&mats[0]), None);
        assert_eq!(order(&mats[1]), None);
        assert_eq!(order(&mats[2]), None);
        assert_eq!(order(&mats[0]), Some(at(&mats[1])));
        assert_eq!(order(&mats[1]), Some(at(&mats[2])));
        assert_eq!(order(&mats[2]), Some(at(&mats[0])));
        // The same matrix twice in a row is not its own successor.
        assert_eq!(order(&mats[2]), Some(at(&mats[0])));
        order(&mats[1]);
        assert_eq!(order(&mats[2]), Some(at(&mats[1])));
    }

    /// The multi-row GEMV equals one GEMV per activation row, for 1 to 9 rows, with widths
    /// the 4 x 4 blocks take (a multiple of 16) and do not.
    #[test]
    fn gemv_rows_equals_one_gemv_per_row() {
        for inp in [48, 50] {
            gemv_rows_case(70, inp);
        }
    }

    fn gemv_rows_case(out: usize, inp: usize) {
        let w = data(out * inp, 0.2);
        let b = data(out, 0.4);
        for n in 1..=9 {
            let xs = data(n * inp, 0.3 + n as f32);
            let mut ys = vec![0.0; n * out];
            gemv_rows(&w, &xs, inp, Some(&b), &mut ys);
            for s in 0..n {
                let mut y = vec![0.0; out];
                gemv(&w, &xs[s * inp..(s + 1) * inp], Some(&b), &mut y);
                for (r, (got, want)) in ys[s * out..(s + 1) * out].iter().zip(&y).enumerate() {
                    assert!((got - want).abs() < 1e-4, "{n} rows: row {s}, output {r}");
                }
            }
        }
    }

    /// The GEMV equals per-row dot products plus bias.
    #[test]
    fn gemv_matches_rows() {
        let (out, inp) = (300, 70);
        let w = data(out * inp, 0.2);
        let x = data(inp, 0.9);
        let b = data(out, 0.4);
        let mut y = vec![0.0; out];
        gemv(&w, &x, Some(&b), &mut y);
        for o in 0..out {
            let want: f64 = (0..inp)
                .map(|i| w[o * inp + i] as f64 * x[i] as f64)
                .sum::<f64>()
                + b[o] as f64;
            assert!((y[o] as f64 - want).abs() < 1e-4, "row {o}");
        }
    }
}
