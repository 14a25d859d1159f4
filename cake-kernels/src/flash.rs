//! The tiled (flash) attention on AVX-512, for head widths that are a multiple of 16:
//! the prefill's output-only attention without the `gemm` crate's per-call packing.
//!
//! - Each KV head's keys are packed once per call into panels of 32 keys, `[d][32]`
//!   (the projections' GEMM layout), so a score tile is the GEMM's own micro-kernel:
//!   12 stacked query rows (scaled by `1 / sqrt(d)` as they are stacked) broadcast
//!   against two vectors of 32 keys, stored straight into the tile.
//! - The weighted values need no packing: a value row is `d / 16` vectors, and 6 stacked
//!   query rows broadcast their probabilities against them (24 accumulators for d = 64,
//!   the output block kept in registers over a whole key tile).
//! - The tiling is [`crate::attention::attention`]'s portable flash kernel's: tasks per
//!   (KV head, block of queries) with the group's query heads stacked, key tiles with an
//!   online softmax. Sums differ from it only by float reordering.

use std::arch::x86_64::{
    __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_storeu_ps,
};

use rayon::prelude::*;

use crate::attention::{Inputs, KvRows, Online, QueryBlock, SharedOut};
use crate::gemm::avx512::{PANEL, Panels, TILE_ROWS, pack, tile};
use crate::simd;

/// Stacked query rows (queries x heads of a group) per task.
const QUERY_ROWS: usize = 128;
/// Keys per tile (whole panels): a `[128, 256]` score tile stays in L2.
const KEY_TILE: usize = 8 * PANEL;
/// Stacked query rows per block of the weighted values.
const VALUE_ROWS: usize = 6;
/// Vectors of 16 output columns per block of the weighted values.
const VALUE_VECTORS: usize = 4;

/// Whether this path serves heads of width `dim`: AVX-512F and `dim` a multiple of 16.
pub(crate) fn serves(dim: usize) -> bool {
    dim > 0 && dim.is_multiple_of(16) && std::is_x86_feature_detected!("avx512f")
}

/// The attention output `[S, H, d]` of `input` into `out`, over `values` (module docs).
///
/// # Safety
/// [`serves`] must hold for the head width, and the shapes must be those
/// [`crate::attention::attention`] checks.
pub(crate) unsafe fn attention(input: Inputs<'_>, values: KvRows<'_>, out: &mut [f32]) {
    let Inputs { keys, shape, .. } = input;
    let (s, h, hkv, d) = (shape.queries, shape.heads, shape.kv_heads, shape.dim);
    let (group, scale) = (input.group(), input.scale());
    // Rows each KV head's queries can reach, and its first panel in `packed`.
    let reach: Vec<usize> = (0..hkv)
        .map(|kv| (0..s).map(|i| (input.visible)(kv, i).1).max().unwrap_or(0))
        .collect();
    let first_panel: Vec<usize> = reach
        .iter()
        .scan(0, |at, &r| {
            let first = *at;
            *at += r.div_ceil(PANEL);
            Some(first)
        })
        .collect();
    let panels: usize = reach.iter().map(|r| r.div_ceil(PANEL)).sum();
    // [panels][d][PANEL]: every KV head's keys, 32 at a time.
    let mut packed = Panels::zeroed(panels * d * PANEL);
    packed
        .par_chunks_mut(d * PANEL)
        .enumerate()
        .for_each(|(p, panel)| {
            let kv = first_panel.partition_point(|&f| f <= p) - 1;
            let j0 = (p - first_panel[kv]) * PANEL;
            let j1 = (j0 + PANEL).min(reach[kv]);
            // SAFETY: the processor has AVX-512F (the caller's); rows j0..j1 of head kv.
            unsafe { pack(keys.packed(kv, j0, j1), d, panel) };
        });
    let packed: &[f32] = &packed;
    let block_rows = (QUERY_ROWS / group).max(1);
    let blocks = s.div_ceil(block_rows);
    let out_ptr = SharedOut(out.as_mut_ptr());
    (0..hkv * blocks).into_par_iter().for_each(|task| {
        // The queries times the score scale.
        let QueryBlock {
            kv,
            i0,
            rows,
            ranges,
            lo,
            hi,
            stacked,
        } = input.query_block(task, block_rows, scale);
        let m = rows * group;
        let mut state = Online::new(m, d);
        // [m, KEY_TILE] scores, then probabilities, of one key tile: the thread's buffer
        // from its previous task (every entry read is written first in this task: the
        // tiles fill whole panels of the first `n` columns, the softmax reads those `n`).
        let mut buffer = SCORES.take();
        if buffer.len() < m * KEY_TILE {
            buffer = vec![0.0f32; QUERY_ROWS.max(m) * KEY_TILE];
        }
        let scores = &mut buffer[..m * KEY_TILE];
        for k0 in (lo / PANEL * PANEL..hi).step_by(KEY_TILE) {
            let n = KEY_TILE.min(hi - k0);
            for r0 in (0..m).step_by(TILE_ROWS) {
                let width = TILE_ROWS.min(m - r0);
                for p in 0..n.div_ceil(PANEL) {
                    let at = (first_panel[kv] + k0 / PANEL + p) * d * PANEL;
                    // SAFETY: AVX-512F (the caller's); `width` stacked rows of d, a whole
                    // panel (k0 + 32 p < hi <= reach[kv]), and `width` rows of the score
                    // tile from column 32 p.
                    unsafe {
                        tile(
                            width,
                            d,
                            &stacked[r0 * d..],
                            &packed[at..at + d * PANEL],
                            (scores.as_mut_ptr().add(r0 * KEY_TILE + p * PANEL), KEY_TILE),
                        )
                    };
                }
            }
            for (pr, row) in scores.chunks_exact_mut(KEY_TILE).enumerate() {
                state.absorb(
                    pr,
                    &mut row[..n],
                    k0,
                    ranges[pr / group],
                    simd::exp_sub_wide,
                );
            }
            // SAFETY: AVX-512F (the caller's); probabilities [m, n] at row stride
            // KEY_TILE, values k0..k0+n of head kv ([n, d]), the [m, d] accumulator.
            unsafe {
                weighted_values(
                    m,
                    n,
                    d,
                    scores,
                    values.packed(kv, k0, k0 + n),
                    &mut state.acc,
                )
            };
        }
        SCORES.set(buffer);
        // SAFETY: this task alone writes the rows i0..i0+rows of the heads of `kv`.
        unsafe { state.write(out_ptr, (i0, kv * group), (h, group)) };
    });
}

thread_local! {
    /// The calling thread's score tile, reused by its next task of [`attention`].
    static SCORES: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Panels of keys per task of [`scores`].
const SCORE_PANELS: usize = 16;

/// The scores `[H, S, len]` of `stacked` queries over every key into `probs` (written
/// once, never read): `stacked` holds, per KV head, its G heads' queries `[G S, d]`
/// head-major and already scaled, so row `r` of KV head `kv`'s block is probability row
/// `kv * G S + r`. Tasks take (KV head, [`SCORE_PANELS`] panels of 32 keys): each panel is
/// packed once and every stacked row passes over it in tiles of 12 (the GEMM's
/// micro-kernel), stored straight into the rows of `probs`.
///
/// # Safety
/// [`serves`] must hold for `d`; `stacked` must hold `Hkv G S` rows of `d`, every KV head
/// `len` rows of `keys`, and `probs` must point at `Hkv G S len` writable floats.
pub(crate) unsafe fn scores(
    stacked: &[f32],
    keys: KvRows<'_>,
    (rows, kv_heads): (usize, usize),
    probs: *mut f32,
) {
    let (len, d) = (keys.len, keys.dim);
    assert!(
        stacked.len() >= kv_heads * rows * d,
        "stacked queries per KV head"
    );
    let chunks = len.div_ceil(PANEL * SCORE_PANELS);
    let out = SharedOut(probs);
    (0..kv_heads * chunks).into_par_iter().for_each(|task| {
        let (kv, chunk) = (task / chunks, task % chunks);
        let queries = &stacked[kv * rows * d..(kv + 1) * rows * d];
        let mut panel = Panels::zeroed(d * PANEL);
        let mut partial = [[0.0f32; PANEL]; TILE_ROWS];
        let first = chunk * SCORE_PANELS * PANEL;
        for j0 in (first..len.min(first + SCORE_PANELS * PANEL)).step_by(PANEL) {
            let n = PANEL.min(len - j0);
            // SAFETY: AVX-512F (the caller's); rows j0..j0+n of head kv.
            unsafe { pack(keys.packed(kv, j0, j0 + n), d, &mut panel) };
            for r0 in (0..rows).step_by(TILE_ROWS) {
                let width = TILE_ROWS.min(rows - r0);
                // SAFETY: this task alone writes columns j0..j0+n of the rows of KV head
                // kv's block (in bounds of `probs`: the caller's); `width` stacked rows of
                // d, a packed panel of d x 32; a full panel writes 32 columns in place,
                // a partial one goes through `partial` and only its n columns are copied.
                unsafe {
                    let at = out.ptr().add((kv * rows + r0) * len + j0);
                    if n == PANEL {
                        tile(width, d, &queries[r0 * d..], &panel, (at, len));
                    } else {
                        tile(
                            width,
                            d,
                            &queries[r0 * d..],
                            &panel,
                            (partial.as_mut_ptr().cast(), PANEL),
                        );
                        for (r, sums) in partial.iter().enumerate().take(width) {
                            std::ptr::copy_nonoverlapping(sums.as_ptr(), at.add(r * len), n);
                        }
                    }
                }
            }
        }
    });
}

/// `acc[r, c] += sum_j probs[r * KEY_TILE + j] values[j * d + c]` for `r < m`, `j < n`,
/// `c < d`: blocks of [`VALUE_ROWS`] rows by [`VALUE_VECTORS`] x 16 columns.
///
/// # Safety
/// The processor must support AVX-512F; `d` must be a multiple of 16, `probs` hold `m`
/// rows of [`KEY_TILE`], `values` `n` rows of `d` and `acc` `m` rows of `d`.
#[target_feature(enable = "avx512f")]
unsafe fn weighted_values(
    m: usize,
    n: usize,
    d: usize,
    probs: &[f32],
    values: &[f32],
    acc: &mut [f32],
) {
    assert!(probs.len() >= m * KEY_TILE && values.len() >= n * d && acc.len() >= m * d);
    let (p, v, a) = (probs.as_ptr(), values.as_ptr(), acc.as_mut_ptr());
    for r0 in (0..m).step_by(VALUE_ROWS) {
        let rows = VALUE_ROWS.min(m - r0);
        for c0 in (0..d).step_by(16 * VALUE_VECTORS) {
            let vectors = VALUE_VECTORS.min((d - c0) / 16);
            // SAFETY: rows r0..r0+rows < m, columns c0..c0+16 vectors <= d (the caller's
            // lengths, checked above).
            unsafe {
                let (p, v, a) = (p.add(r0 * KEY_TILE), v.add(c0), a.add(r0 * d + c0));
                match (rows, vectors) {
                    (VALUE_ROWS, 4) => value_block::<VALUE_ROWS, 4>(n, d, p, v, a),
                    (VALUE_ROWS, 3) => value_block::<VALUE_ROWS, 3>(n, d, p, v, a),
                    (VALUE_ROWS, 2) => value_block::<VALUE_ROWS, 2>(n, d, p, v, a),
                    (VALUE_ROWS, _) => value_block::<VALUE_ROWS, 1>(n, d, p, v, a),
                    (rows, vectors) => {
                        for r in 0..rows {
                            let (p, a) = (p.add(r * KEY_TILE), a.add(r * d));
                            match vectors {
                                4 => value_block::<1, 4>(n, d, p, v, a),
                                3 => value_block::<1, 3>(n, d, p, v, a),
                                2 => value_block::<1, 2>(n, d, p, v, a),
                                _ => value_block::<1, 1>(n, d, p, v, a),
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One block of [`weighted_values`]: `R` rows by `V` vectors, accumulated in registers
/// over the `n` keys.
///
/// # Safety
/// The processor must support AVX-512F; `p` must point at `R` rows of `n` probabilities
/// (row stride [`KEY_TILE`]), `v` at `n` rows of at least `16 V` values (row stride `d`),
/// and `a` at `R` rows of `16 V` outputs (row stride `d`).
#[target_feature(enable = "avx512f")]
unsafe fn value_block<const R: usize, const V: usize>(
    n: usize,
    d: usize,
    p: *const f32,
    v: *const f32,
    a: *mut f32,
) {
    // SAFETY: the caller's bounds.
    unsafe {
        let mut sums: [[__m512; V]; R] = std::array::from_fn(|r| {
            std::array::from_fn(|c| _mm512_loadu_ps(a.add(r * d + 16 * c)))
        });
        for j in 0..n {
            let row: [__m512; V] = std::array::from_fn(|c| _mm512_loadu_ps(v.add(j * d + 16 * c)));
            for (r, sums) in sums.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*p.add(r * KEY_TILE + j));
                for (s, &x) in sums.iter_mut().zip(&row) {
                    *s = _mm512_fmadd_ps(w, x, *s);
                }
            }
        }
        for (r, sums) in sums.iter().enumerate() {
            for (c, &s) in sums.iter().enumerate() {
                _mm512_storeu_ps(a.add(r * d + 16 * c), s);
            }
        }
    }
}
