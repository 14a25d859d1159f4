//! Grouped-query attention on f32 slices (row-block for several queries, split-key for
//! one) reading the cache buffers in place; CAKE's window statistics use the same kernel.
//!
//! The decoding kernels (the one-query attention and [`crate::gemv`]) run on the small spinning
//! pool of [`crate::pool`]; the others on rayon's global pool (the one the CPU backend's
//! matrix products use).

use rayon::prelude::*;

use crate::simd;

/// A run of a KV head's rows that sit together in its region after evictions left gaps:
/// rows `row..` (up to the next run's `row`) are at region rows `offset..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRun {
    /// Index of the run's first row among the head's rows.
    pub row: usize,
    /// Where it sits, in rows from the head's region start.
    pub offset: usize,
}

/// A raw pointer that rayon tasks may share because each writes a disjoint part.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: every use writes disjoint index ranges from different tasks (see call sites).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// Keys or values of one layer as the cache stores them: KV head `h`'s row `j` is
/// `data[(starts[h] + j) * dim ..][..dim]`, or, where eviction left gaps in the head's
/// region, at the region row its [`RowRun`] gives. Heads may hold different numbers of
/// rows (per-head budgets); the queries' visible ranges never reach past a head's own rows.
#[derive(Debug, Clone, Copy)]
pub struct KvRows<'a> {
    /// The buffer (every head's region).
    pub data: &'a [f32],
    /// First row of each KV head's region.
    pub starts: &'a [usize],
    /// Per KV head, its runs when its rows have gaps (`LayerCache::runs`); an empty list,
    /// or no entry, when they are contiguous. Only a decoding step (one query) reads rows
    /// across gaps.
    pub runs: &'a [Vec<RowRun>],
    /// Rows of the longest head: the width of a probability row `[H, S, len]`.
    pub len: usize,
    /// Head width d.
    pub dim: usize,
}

impl KvRows<'_> {
    /// Element offset of row `row` of KV head `head` (whose rows are contiguous).
    pub(crate) fn offset(&self, head: usize, row: usize) -> usize {
        (self.starts[head] + row) * self.dim
    }

    /// True when `other`'s rows sit at the same places (the keys and values of one cache).
    pub(crate) fn same_layout(&self, other: &KvRows<'_>) -> bool {
        self.starts == other.starts && self.runs == other.runs && self.dim == other.dim
    }

    /// True when no KV head's rows have gaps.
    pub(crate) fn contiguous(&self) -> bool {
        self.runs.iter().all(Vec::is_empty)
    }

    /// Region row of row `row` of KV head `head`.
    fn placed(&self, head: usize, row: usize) -> usize {
        let runs = self.runs.get(head).map_or(&[][..], Vec::as_slice);
        let r = runs.partition_point(|run| run.row <= row);
        match r.checked_sub(1).map(|r| runs[r]) {
            Some(run) => run.offset + row - run.row,
            None => row,
        }
    }

    /// Rows `from..to` of KV head `head`, `[to - from, d]` contiguous, or `None` when a
    /// gap lies between them (see [`KvRows::listed`]).
    pub(crate) fn rows(&self, head: usize, from: usize, to: usize) -> Option<&[f32]> {
        let first = self.placed(head, from);
        if to > from + 1 && self.placed(head, to - 1) != first + (to - 1 - from) {
            return None;
        }
        let at = (self.starts[head] + first) * self.dim;
        Some(&self.data[at..at + (to - from) * self.dim])
    }

    /// The element offsets in `data` of rows `from..to` of KV head `head`, wherever they
    /// sit.
    pub(crate) fn listed(&self, head: usize, from: usize, to: usize) -> Vec<usize> {
        let runs = self.runs.get(head).map_or(&[][..], Vec::as_slice);
        let (start, dim) = (self.starts[head], self.dim);
        // The run holding `from`, then each run in turn.
        let mut r = runs.partition_point(|run| run.row <= from).max(1) - 1;
        (from..to)
            .map(|row| {
                while runs.get(r + 1).is_some_and(|next| next.row <= row) {
                    r += 1;
                }
                let at = runs.get(r).map_or(row, |run| run.offset + row - run.row);
                (start + at) * dim
            })
            .collect()
    }

    /// Rows `from..to` of KV head `head` of a cache without gaps.
    ///
    /// # Panics
    /// When a gap lies between them: only the decoding kernel reads across gaps (the
    /// cache closes them before a multi-row append).
    pub(crate) fn packed(&self, head: usize, from: usize, to: usize) -> &[f32] {
        match self.rows(head, from, to) {
            Some(rows) => rows,
            None => panic!("rows {from}..{to} of KV head {head} span a gap"),
        }
    }
}

/// Row starts `0, len, 2 len, ..` of `heads` KV heads stored back to back.
pub fn packed_starts(heads: usize, len: usize) -> Vec<usize> {
    (0..heads).map(|h| h * len).collect()
}

/// The shape of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    /// Queries S.
    pub queries: usize,
    /// Query heads H.
    pub heads: usize,
    /// KV heads Hkv (H is a multiple).
    pub kv_heads: usize,
    /// Head width d.
    pub dim: usize,
}

/// Query rows per prefill task (a multiple of the matrix kernels' tiles).
const QUERY_BLOCK: usize = 64;
/// Stacked query rows (queries x heads of a group) per task of the tiled (flash) kernel.
const FLASH_QUERY_BLOCK: usize = 128;
/// Keys per tile of the tiled kernel: a `[128, 256]` score tile stays in L2.
const FLASH_KEY_TILE: usize = 256;
/// Most keys per partial result of the one-query attention (a head's rows are split into
/// [`even_chunk`]s; a task runs one or more, [`chunks_per_task`]).
const KEY_CHUNK: usize = 256;

/// The range of cached rows `lo..hi` that query `i` sees in KV head `kv`:
/// `visible(kv, i)`. Cached positions ascend, so causal and sliding-window masks are
/// ranges.
pub type Visible<'a> = &'a (dyn Fn(usize, usize) -> (usize, usize) + Sync);

/// Softmax attention, exact up to float reordering, of queries `q` (`[S, H, d]`
/// row-major, post-RoPE, unscaled) over cached `keys`, with query head `h` reading KV
/// head `h / G` and query `i` seeing the rows `visible(kv, i)`.
///
/// With `output = Some((values, out))`, writes the attention output `[S, H, d]` into
/// `out`; with `probs` (`[H, S, len]`), the attention probabilities (zero outside each
/// query's range). Either may be skipped.
pub fn attention(
    q: &[f32],
    keys: KvRows<'_>,
    shape: AttentionShape,
    visible: Visible<'_>,
    output: Option<(KvRows<'_>, &mut [f32])>,
    probs: Option<&mut [f32]>,
) {
    check(q, &keys, shape, &output, &probs);
    let input = Inputs {
        q,
        keys,
        shape,
        visible,
    };
    match (output, probs) {
        (output, probs) if shape.queries == 1 => decode_attention(
            &mut [DecodeQuery {
                q,
                keys,
                shape,
                visible,
                output,
                probs,
            }],
            None,
        ),
        #[cfg(target_arch = "x86_64")]
        (Some((values, out)), None) if crate::flash::serves(shape.dim) => {
            // SAFETY: `serves` checked AVX-512F; the shapes were checked above.
            unsafe { crate::flash::attention(input, values, out) }
        }
        (Some(output), None) => flash_attention(input, output),
        (output, probs) => block_attention(input, output, probs),
    }
}

/// The attention probabilities `[H, S, len]` of several queries `q` (`[S, H, d]`) over
/// `keys`, every KV head holding `keys.len` rows, query `i` of KV head `kv` seeing the
/// rows `visible(kv, i)`: what [`attention`] writes into `probs`, up to float reordering,
/// but built for wide probability rows (CAKE's window statistics, `[H * w, S]`).
///
/// - With AVX-512 (and `d` a multiple of 16), per KV head its G query heads' queries are
///   stacked head-major (scaled by `1 / sqrt(d)`), so that their scores over the head's
///   keys are the `[G, S, len]` block of the result, written once by the GEMM's
///   micro-kernel and never zero-filled first (`flash::scores`); then each row's softmax
///   over its visible range, zero outside, threaded over rows.
/// - Elsewhere, [`attention`] into a zeroed buffer.
///
/// # Panics
/// When the shapes do not fit (as [`attention`]), or a KV head holds fewer than `keys.len`
/// rows.
pub fn probabilities(
    q: &[f32],
    keys: KvRows<'_>,
    shape: AttentionShape,
    visible: Visible<'_>,
) -> Vec<f32> {
    let AttentionShape {
        queries: s,
        heads: h,
        kv_heads: hkv,
        dim: d,
    } = shape;
    assert_eq!(q.len(), s * h * d, "queries [S, H, d]");
    assert!(hkv > 0 && h.is_multiple_of(hkv), "H a multiple of Hkv");
    assert!(keys.starts.len() >= hkv, "a start per KV head");
    let (group, len) = (h / hkv, keys.len);
    let total = h * s * len;
    #[cfg(target_arch = "x86_64")]
    if crate::flash::serves(d) && total > 0 {
        for kv in 0..hkv {
            assert!(
                keys.offset(kv, len) <= keys.data.len(),
                "len rows per KV head"
            );
        }
        let scale = 1.0 / (d as f32).sqrt();
        // Per KV head [G S, d]: row g * S + i is query i of head kv * G + g, scaled.
        let mut stacked = Vec::with_capacity(h * s * d);
        for head in 0..h {
            for i in 0..s {
                let at = (i * h + head) * d;
                stacked.extend(q[at..at + d].iter().map(|&x| x * scale));
            }
        }
        let mut probs = Vec::with_capacity(total);
        // SAFETY: `serves` checked AVX-512F and d; `stacked` holds Hkv G S rows of d, each KV
        // head len rows (checked above), and `probs` has capacity for the H S len floats
        // `scores` writes, each once, before the length is set.
        unsafe {
            crate::flash::scores(&stacked, keys, (group * s, hkv), probs.as_mut_ptr());
            probs.set_len(total);
        }
        probs.par_chunks_mut(len).enumerate().for_each(|(row, p)| {
            let (head, i) = (row / s, row % s);
            let (a, b) = visible(head / group, i);
            let b = b.min(len);
            let a = a.min(b);
            p[..a].fill(0.0);
            p[b..].fill(0.0);
            simd::softmax(&mut p[a..b]);
        });
        return probs;
    }
    let mut probs = vec![0.0f32; total];
    attention(q, keys, shape, visible, None, Some(&mut probs));
    probs
}

/// What every attention kernel reads (checked by [`attention`]).
#[derive(Clone, Copy)]
pub(crate) struct Inputs<'a> {
    /// Queries `[S, H, d]`.
    pub(crate) q: &'a [f32],
    pub(crate) keys: KvRows<'a>,
    pub(crate) shape: AttentionShape,
    pub(crate) visible: Visible<'a>,
}

impl Inputs<'_> {
    /// Query heads per KV head, G.
    pub(crate) fn group(&self) -> usize {
        self.shape.heads / self.shape.kv_heads
    }

    /// The score scale `1 / sqrt(d)`.
    pub(crate) fn scale(&self) -> f32 {
        1.0 / (self.shape.dim as f32).sqrt()
    }

    /// The key ranges `visible(kv, i)` of queries `i0..i0 + rows`, and their union `lo..hi`.
    pub(crate) fn block_ranges(
        &self,
        kv: usize,
        i0: usize,
        rows: usize,
    ) -> (Vec<(usize, usize)>, usize, usize) {
        let ranges: Vec<(usize, usize)> = (i0..i0 + rows).map(|i| (self.visible)(kv, i)).collect();
        let lo = ranges.iter().map(|r| r.0).min().unwrap_or(0);
        let hi = ranges.iter().map(|r| r.1).max().unwrap_or(0).max(lo);
        (ranges, lo, hi)
    }
}

/// One task of the tiled kernels: KV head `kv`'s queries `i0..i0 + rows` (for the G query
/// heads that share it), their key ranges and the ranges' union `lo..hi`.
pub(crate) struct QueryBlock {
    pub(crate) kv: usize,
    pub(crate) i0: usize,
    pub(crate) rows: usize,
    pub(crate) ranges: Vec<(usize, usize)>,
    pub(crate) lo: usize,
    pub(crate) hi: usize,
    /// `[rows * G, d]`: row `r * G + g` is query `i0 + r` of head `kv * G + g`, times the
    /// factor given to [`Inputs::query_block`].
    pub(crate) stacked: Vec<f32>,
}

impl Inputs<'_> {
    /// Task `task` of the tiled kernels, blocks of `block_rows` queries per KV head, the
    /// queries stacked times `factor`.
    pub(crate) fn query_block(&self, task: usize, block_rows: usize, factor: f32) -> QueryBlock {
        let (s, h, d) = (self.shape.queries, self.shape.heads, self.shape.dim);
        let (group, blocks) = (self.group(), s.div_ceil(block_rows));
        let (kv, i0) = (task / blocks, task % blocks * block_rows);
        let rows = block_rows.min(s - i0);
        let (ranges, lo, hi) = self.block_ranges(kv, i0, rows);
        let mut stacked = Vec::with_capacity(rows * group * d);
        for r in 0..rows {
            let at = ((i0 + r) * h + kv * group) * d;
            stacked.extend(self.q[at..at + group * d].iter().map(|&x| x * factor));
        }
        QueryBlock {
            kv,
            i0,
            rows,
            ranges,
            lo,
            hi,
            stacked,
        }
    }
}

/// `dst = beta * lhs rhs`, or `dst += beta * lhs rhs` when `accumulate`, for `dst`
/// `[m, n]` and `lhs` `[m, k]` row-major at the given row strides, and `rhs` `[k, n]` at the
/// given (column, row) strides; single-threaded (the attention tasks are the parallelism).
/// The attention scores are `lhs` = queries, `rhs` = keys read as `[d, n]` (strides
/// `(d, 1)`); the weighted values are `lhs` = probabilities, `rhs` = values (`(1, d)`).
///
/// # Safety
/// All three matrices must lie in bounds of their buffers.
#[inline]
unsafe fn small_gemm(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    accumulate: bool,
    (lhs, lhs_rs): (*const f32, usize),
    (rhs, rhs_cs, rhs_rs): (*const f32, usize, usize),
    beta: f32,
) {
    // SAFETY: the caller's.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            1,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Several queries: one task per (query head, block of [`QUERY_BLOCK`] queries); scores
/// and weighted values are two small matrix products over the keys the block can see.
fn block_attention(
    input: Inputs<'_>,
    output: Option<(KvRows<'_>, &mut [f32])>,
    probs: Option<&mut [f32]>,
) {
    let Inputs { q, keys, shape, .. } = input;
    let (s, h, d) = (shape.queries, shape.heads, shape.dim);
    let (group, scale, len) = (input.group(), input.scale(), keys.len);
    let blocks = s.div_ceil(QUERY_BLOCK);
    let output = output.map(|(values, out)| (values, SharedOut(out.as_mut_ptr())));
    let probs_ptr = probs.map(|p| SharedOut(p.as_mut_ptr()));
    (0..h * blocks).into_par_iter().for_each(|task| {
        let (head, block) = (task / blocks, task % blocks);
        let kv = head / group;
        let i0 = block * QUERY_BLOCK;
        let rows = QUERY_BLOCK.min(s - i0);
        let (ranges, lo, hi) = input.block_ranges(kv, i0, rows);
        let n = hi - lo;
        // [rows, n]: scaled scores of the block's queries over keys lo..hi.
        let mut scores = vec![0.0f32; rows * n];
        if n > 0 {
            // SAFETY: the operands are in bounds: queries i0..i0+rows of head `head`
            // (row stride H*d), keys lo..hi of KV head `kv` read as a [d, n] matrix
            // (column stride d), and the [rows, n] destination.
            unsafe {
                small_gemm(
                    (rows, n, d),
                    (scores.as_mut_ptr(), n),
                    false,
                    (q.as_ptr().add((i0 * h + head) * d), h * d),
                    (keys.data.as_ptr().add(keys.offset(kv, lo)), d, 1),
                    scale,
                );
            }
        }
        for (r, &(a, b)) in ranges.iter().enumerate() {
            let row = &mut scores[r * n..(r + 1) * n];
            let (a, b) = (a.max(lo) - lo, b.max(a).min(hi) - lo);
            row[..a].fill(0.0);
            row[b..].fill(0.0);
            simd::softmax(&mut row[a..b]);
        }
        // SAFETY: this task alone writes query rows i0..i0+rows of head `head`: the
        // [rows, d] block at row stride H*d of `out`, and, in `probs`, rows i0..i0+rows
        // of head `head`.
        unsafe {
            match output {
                Some((values, out_ptr)) if n > 0 => small_gemm(
                    (rows, d, n),
                    (out_ptr.0.add((i0 * h + head) * d), h * d),
                    false,
                    (scores.as_ptr(), n),
                    (values.data.as_ptr().add(values.offset(kv, lo)), 1, d),
                    1.0,
                ),
                Some((_, out_ptr)) => {
                    for r in 0..rows {
                        std::ptr::write_bytes(out_ptr.0.add(((i0 + r) * h + head) * d), 0, d);
                    }
                }
                None => {}
            }
            if let Some(p) = probs_ptr {
                for r in 0..rows {
                    let dst =
                        std::slice::from_raw_parts_mut(p.0.add((head * s + i0 + r) * len), len);
                    dst.fill(0.0);
                    dst[lo..hi].copy_from_slice(&scores[r * n..(r + 1) * n]);
                }
            }
        }
    });
}

/// Several queries, output only: flash-attention tiling. One task per (KV head, block of
/// queries) stacks the block's queries of the G query heads that share the KV head into
/// one `[rows * G, d]` matrix (so each key tile is read once for the whole group), walks
/// the visible keys in tiles of [`FLASH_KEY_TILE`] with an online softmax (running max
/// and sum per query, the output rescaled when the max grows), so scores never leave the
/// cache and keys past the block's causal limit are never touched.
fn flash_attention(input: Inputs<'_>, (values, out): (KvRows<'_>, &mut [f32])) {
    let Inputs { keys, shape, .. } = input;
    let (s, h, hkv, d) = (shape.queries, shape.heads, shape.kv_heads, shape.dim);
    let (group, scale) = (input.group(), input.scale());
    let block_rows = (FLASH_QUERY_BLOCK / group).max(1);
    let blocks = s.div_ceil(block_rows);
    let out_ptr = SharedOut(out.as_mut_ptr());
    (0..hkv * blocks).into_par_iter().for_each(|task| {
        let QueryBlock {
            kv,
            i0,
            rows,
            ranges,
            lo,
            hi,
            stacked: packed,
        } = input.query_block(task, block_rows, 1.0);
        let m = rows * group;
        let mut state = Online::new(m, d);
        let mut tile = vec![0.0f32; m * FLASH_KEY_TILE];
        for k0 in (lo..hi).step_by(FLASH_KEY_TILE) {
            let n = FLASH_KEY_TILE.min(hi - k0);
            let scores = &mut tile[..m * n];
            // SAFETY: the packed [m, d] queries, keys k0..k0+n of KV head `kv` read as
            // [d, n], and the [m, n] tile.
            unsafe {
                small_gemm(
                    (m, n, d),
                    (scores.as_mut_ptr(), n),
                    false,
                    (packed.as_ptr(), d),
                    (keys.data.as_ptr().add(keys.offset(kv, k0)), d, 1),
                    scale,
                );
            }
            for (pr, row) in scores.chunks_exact_mut(n).enumerate() {
                state.absorb(pr, row, k0, ranges[pr / group], simd::exp_sub);
            }
            // SAFETY: the [m, n] probabilities, values k0..k0+n of KV head `kv` ([n, d]),
            // and the task's own [m, d] accumulator.
            unsafe {
                small_gemm(
                    (m, d, n),
                    (state.acc.as_mut_ptr(), d),
                    true,
                    (scores.as_ptr(), n),
                    (values.data.as_ptr().add(values.offset(kv, k0)), 1, d),
                    1.0,
                );
            }
        }
        // SAFETY: this task alone writes the rows i0..i0+rows of the heads of `kv`.
        unsafe { state.write(out_ptr, (i0, kv * group), (h, group)) };
    });
}

/// The online softmax of a tiled task's `m` stacked query rows (row `r * G + g` is the
/// block's query `r` of the group's head `g`): running maxima and sums, and the
/// unnormalised output `[m, d]` that the weighted values of each key tile add to.
pub(crate) struct Online {
    max: Vec<f32>,
    sum: Vec<f32>,
    /// `[m, d]` unnormalised output.
    pub(crate) acc: Vec<f32>,
    d: usize,
}

impl Online {
    /// No keys seen yet.
    pub(crate) fn new(m: usize, d: usize) -> Self {
        Online {
            max: vec![f32::NEG_INFINITY; m],
            sum: vec![0.0; m],
            acc: vec![0.0; m * d],
            d,
        }
    }

    /// Row `pr`'s scaled scores of keys `k0..k0 + row.len()` become `exp(score - max)`
    /// (with `exp` the exponential pass, returning the sum) inside the query's `range` of
    /// keys and zero outside; the row's running max grows to cover them, and its sum and
    /// output are rescaled to the new max.
    pub(crate) fn absorb(
        &mut self,
        pr: usize,
        row: &mut [f32],
        k0: usize,
        range: (usize, usize),
        exp: fn(&mut [f32], f32) -> f32,
    ) {
        let n = row.len();
        let (a, b) = (
            range.0.clamp(k0, k0 + n) - k0,
            range.1.clamp(k0, k0 + n) - k0,
        );
        if a >= b {
            row.fill(0.0);
            return;
        }
        let new_max = self.max[pr].max(simd::max(&row[a..b]));
        let correction = if self.max[pr] == f32::NEG_INFINITY {
            0.0
        } else {
            (self.max[pr] - new_max).exp()
        };
        let tile_sum = exp(&mut row[a..b], new_max);
        row[..a].fill(0.0);
        row[b..].fill(0.0);
        self.sum[pr] = self.sum[pr] * correction + tile_sum;
        if correction != 1.0 {
            simd::scale(&mut self.acc[pr * self.d..(pr + 1) * self.d], correction);
        }
        self.max[pr] = new_max;
    }

    /// Writes the normalised outputs into `out` (`[S, H, d]`): row `r * G + g` to query
    /// `i0 + r` of head `head0 + g`, for `(heads, group)` = `(H, G)`.
    ///
    /// # Safety
    /// `out` must hold `[S, H, d]` with those queries inside, and no other task may write
    /// these rows.
    pub(crate) unsafe fn write(
        &self,
        out: SharedOut,
        (i0, head0): (usize, usize),
        (heads, group): (usize, usize),
    ) {
        let d = self.d;
        for (pr, (&sum, acc)) in self.sum.iter().zip(self.acc.chunks_exact(d)).enumerate() {
            let (r, g) = (pr / group, pr % group);
            let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
            // SAFETY: the caller's.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(out.ptr().add(((i0 + r) * heads + head0 + g) * d), d)
            };
            for (o, &a) in dst.iter_mut().zip(acc) {
                *o = a * inv;
            }
        }
    }
}

/// One sequence's query of a batched decoding step ([`decode_attention_batch`]): what
/// [`attention`] takes for one query (`shape.queries` = 1).
pub struct DecodeQuery<'a> {
    /// The query `[1, H, d]`, post-RoPE, unscaled.
    pub q: &'a [f32],
    /// The sequence's cached keys.
    pub keys: KvRows<'a>,
    /// Its shape (one query).
    pub shape: AttentionShape,
    /// The rows the query sees per KV head (`visible(kv, 0)`).
    pub visible: Visible<'a>,
    /// The cached values and the output `[1, H, d]`, if wanted.
    pub output: Option<(KvRows<'a>, &'a mut [f32])>,
    /// The probabilities `[H, 1, len]`, if wanted.
    pub probs: Option<&'a mut [f32]>,
}

/// The one-query attention of several sequences, each over its own cache (a batched
/// decoding step): every sequence's split-key tasks in one job of the decoding pool, so
/// that B sequences pay one dispatch rather than B. Each sequence's output and
/// probabilities have the bits [`attention`] gives it alone (each key chunk keeps its own
/// partial result whatever the task holding it).
///
/// # Panics
/// When a query's shapes do not fit (as [`attention`]) or it has more than one query row.
pub fn decode_attention_batch(queries: &mut [DecodeQuery<'_>]) {
    for query in queries.iter() {
        assert_eq!(query.shape.queries, 1, "one query per sequence");
        check(
            query.q,
            &query.keys,
            query.shape,
            &query.output,
            &query.probs,
        );
    }
    decode_attention(queries, None);
}

/// [`attention`]'s checks of the shapes of a call.
fn check(
    q: &[f32],
    keys: &KvRows<'_>,
    shape: AttentionShape,
    output: &Option<(KvRows<'_>, &mut [f32])>,
    probs: &Option<&mut [f32]>,
) {
    let AttentionShape {
        queries: s,
        heads: h,
        dim: d,
        ..
    } = shape;
    assert_eq!(q.len(), s * h * d, "queries [S, H, d]");
    assert!(keys.starts.len() >= shape.kv_heads, "a start per KV head");
    assert!(
        s == 1 || keys.contiguous(),
        "only a decoding step reads a cache with gaps"
    );
    if let Some((values, out)) = output {
        assert_eq!(out.len(), s * h * d, "output [S, H, d]");
        assert_eq!(values.len, keys.len, "as many values as keys");
        assert!(
            s == 1 || values.contiguous(),
            "only a decoding step reads a cache with gaps"
        );
    }
    if let Some(p) = probs {
        assert_eq!(p.len(), h * s * keys.len, "probabilities [H, S, len]");
    }
}

/// A key chunk's place in a decoding step: its sequence (`item`), KV head, first row,
/// rows, and where its partial result sits in the step's buffer ([`Partial::parts`]).
#[derive(Clone, Copy)]
struct Partial {
    item: usize,
    kv: usize,
    start: usize,
    n: usize,
    at: usize,
}

/// A chunk's `(max [G], sum [G], out [G, d], exps [G, n])`, see [`Partial::parts`].
type ChunkView<'a> = (&'a [f32], &'a [f32], &'a [f32], &'a [f32]);

/// [`ChunkView`], writable.
type ChunkViewMut<'a> = (&'a mut [f32], &'a mut [f32], &'a mut [f32], &'a mut [f32]);

impl Partial {
    /// Floats of a chunk of `n` keys for `group` heads of width `d`.
    fn size(group: usize, d: usize, n: usize) -> usize {
        group * (2 + d + n)
    }

    /// `(max [G], sum [G], out [G, d], exps [G, n])` of this chunk in the call's buffer.
    fn parts<'a>(&self, buf: &'a [f32], group: usize, d: usize) -> ChunkView<'a> {
        let slot = &buf[self.at..self.at + Self::size(group, d, self.n)];
        let (max, rest) = slot.split_at(group);
        let (sum, rest) = rest.split_at(group);
        let (out, exps) = rest.split_at(group * d);
        (max, sum, out, exps)
    }

    /// [`Partial::parts`], writable.
    fn parts_mut<'a>(&self, buf: &'a mut [f32], group: usize, d: usize) -> ChunkViewMut<'a> {
        let slot = &mut buf[self.at..self.at + Self::size(group, d, self.n)];
        let (max, rest) = slot.split_at_mut(group);
        let (sum, rest) = rest.split_at_mut(group);
        let (out, exps) = rest.split_at_mut(group * d);
        (max, sum, out, exps)
    }
}

/// Chunks (of at most [`KEY_CHUNK`] keys, [`even_chunk`]) per decode task: as many as leave each thread four tasks
/// or more (so that the threads finish together), at most eight. A task scores all its
/// chunks' keys, then weighs all their values, so that each is one long stream and the
/// requests ahead run on from chunk to chunk. Each chunk keeps its own partial result, so
/// the output has the bits of one task per chunk. On a 2-core EPYC (`attention_bandwidth`,
/// SmolLM2-135M at 8K tokens, alternated, requests 4 KiB ahead), eight chunks a task read
/// 26.2-31.6 GB/s in the fast phases against 22.8-25.9 for one.
fn chunks_per_task<'a>(ranges: impl Iterator<Item = &'a (usize, usize)>) -> usize {
    let chunks: usize = ranges
        .map(|&(lo, hi)| hi.saturating_sub(lo).div_ceil(KEY_CHUNK))
        .sum();
    (chunks / (4 * rayon::current_num_threads().max(1))).clamp(1, 8)
}

/// Rows per partial result of a KV head's `rows` visible keys: the fewest chunks of at
/// most [`KEY_CHUNK`] rows, made as even as a multiple of four (the score kernel's quads)
/// allows, so that a short cache's tasks are alike and the two threads finish together:
/// CAKE's 288 rows of a head at C = 256 are two chunks of 144, not 256 and 32 (on a 2-core
/// EPYC, `cake bench --context 512 --cache-size 256`, alternated: CAKE/full decode
/// 1.004-1.046, mean 1.024, in ten runs, against 0.995-1.032, mean 1.016, with 256-row
/// chunks). Each chunk still keeps its own partial result.
fn even_chunk(rows: usize) -> usize {
    let chunks = rows.div_ceil(KEY_CHUNK).max(1);
    rows.div_ceil(chunks)
        .next_multiple_of(4)
        .clamp(4, KEY_CHUNK)
}

/// One query per sequence: split-key ("flash decoding") tasks per (sequence, KV head, span
/// of key chunks), all in one job of the decoding pool, each chunk serving the KV head's G
/// query heads from one read of its rows; merged exactly per sequence. `chunks` fixes the
/// chunks per task (the tests'); `None` takes [`chunks_per_task`].
fn decode_attention(queries: &mut [DecodeQuery<'_>], chunks: Option<usize>) {
    let ranges: Vec<Vec<(usize, usize)>> = queries
        .iter()
        .map(|query| {
            (0..query.shape.kv_heads)
                .map(|kv| (query.visible)(kv, 0))
                .collect()
        })
        .collect();
    let per_task = chunks
        .unwrap_or_else(|| chunks_per_task(ranges.iter().flatten()))
        .max(1);
    // (sequence, KV head, first row, end row, rows per chunk) of each task.
    let tasks: Vec<(usize, usize, usize, usize, usize)> = ranges
        .iter()
        .enumerate()
        .flat_map(|(item, heads)| {
            heads.iter().enumerate().flat_map(move |(kv, &(lo, hi))| {
                let chunk = even_chunk(hi.saturating_sub(lo));
                let span = chunk * per_task;
                (lo..hi.max(lo))
                    .step_by(span)
                    .map(move |a| (item, kv, a, (a + span).min(hi), chunk))
            })
        })
        .collect();
    let steps: Vec<Step<'_>> = queries.iter().map(Step::new).collect();
    // Every chunk's partial result, task after task, in one buffer that this thread keeps
    // from call to call (taken out while in use, so a nested call gets its own).
    let mut size = 0;
    let parts: Vec<Vec<Partial>> = tasks
        .iter()
        .map(|&(item, kv, a, b, chunk)| {
            (a..b)
                .step_by(chunk)
                .map(|c| {
                    let n = (c + chunk).min(b) - c;
                    let part = Partial {
                        item,
                        kv,
                        start: c,
                        n,
                        at: size,
                    };
                    size += Partial::size(steps[item].group, steps[item].d, n);
                    part
                })
                .collect()
        })
        .collect();
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if buf.len() < size {
        buf.resize(size, 0.0);
    }
    let shared = SharedOut(buf.as_mut_ptr());
    crate::pool::run(tasks.len(), &|task| {
        let mine = &parts[task];
        let (Some(first), Some(last)) = (mine.first(), mine.last()) else {
            return;
        };
        let step = &steps[first.item];
        let (from, to) = (
            first.at,
            last.at + Partial::size(step.group, step.d, last.n),
        );
        // SAFETY: task `task` alone touches its chunks' floats from..to of `buf`, which
        // holds `size` >= to of them and outlives the run.
        let slot = unsafe { std::slice::from_raw_parts_mut(shared.ptr().add(from), to - from) };
        let (.., b, _) = tasks[task];
        // The task's chunks, placed in its own slot.
        let local: Vec<Partial> = mine
            .iter()
            .map(|p| Partial {
                at: p.at - from,
                ..*p
            })
            .collect();
        // All the task's keys, then all its values: two long streams.
        let listed: Vec<Option<Vec<usize>>> =
            local.iter().map(|p| step.score(p, slot, b)).collect();
        for (part, listed) in local.iter().zip(listed) {
            // Each output starts from 0 (the buffer holds the last call's).
            part.parts_mut(slot, step.group, step.d).2.fill(0.0);
            step.weigh(part, slot, listed, b);
        }
    });
    for (item, query) in queries.iter_mut().enumerate() {
        let step = &steps[item];
        let partials: Vec<(&Partial, ChunkView<'_>)> = parts
            .iter()
            .flatten()
            .filter(|p| p.item == item)
            .map(|p| (p, p.parts(&buf, step.group, step.d)))
            .collect();
        merge(&partials, query, step.group);
    }
    SCRATCH.with(|s| *s.borrow_mut() = buf);
}

/// One sequence's inputs to [`decode_attention`]'s tasks.
struct Step<'a> {
    q: &'a [f32],
    keys: KvRows<'a>,
    values: Option<KvRows<'a>>,
    group: usize,
    d: usize,
    scale: f32,
}

impl<'a> Step<'a> {
    fn new(query: &DecodeQuery<'a>) -> Self {
        let shape = query.shape;
        Step {
            q: query.q,
            keys: query.keys,
            values: query.output.as_ref().map(|(values, _)| *values),
            group: shape.heads / shape.kv_heads,
            d: shape.dim,
            scale: 1.0 / (shape.dim as f32).sqrt(),
        }
    }

    /// A chunk's scores, max and exponentials; its rows are read from a slice that runs on
    /// to `until` (the task's last row), so that requests ahead run on into the next chunk.
    /// Returns the rows' offsets where the chunk spans a gap.
    fn score(&self, part: &Partial, buf: &mut [f32], until: usize) -> Option<Vec<usize>> {
        let (group, d) = (self.group, self.d);
        let (kv, a, n) = (part.kv, part.start, part.n);
        let b = a + n;
        let (max, sum, _, exps) = part.parts_mut(buf, group, d);
        // Scores of the chunk's keys for the G query heads of the group, each key row read
        // once for up to four of them. Where eviction left gaps, the rows are read where
        // they sit, with the same bits per row.
        let queries = &self.q[kv * group * d..(kv + 1) * group * d];
        let keys = &self.keys;
        let listed = match keys.rows(kv, a, until).or_else(|| keys.rows(kv, a, b)) {
            Some(rows) => {
                simd::matvec_group(rows, queries, d, exps);
                None
            }
            None => {
                let at = keys.listed(kv, a, b);
                simd::matvec_group_listed(keys.data, &at, queries, d, exps);
                Some(at)
            }
        };
        for scores in exps.chunks_exact_mut(n.max(1)) {
            simd::scale(scores, self.scale);
        }
        for g in 0..group {
            (max[g], sum[g]) = simd::exp_shifted(&mut exps[g * n..(g + 1) * n]);
        }
        listed
    }

    /// Weighted values of the group's heads, each value row read once for up to four, the
    /// outputs in registers over the chunk.
    fn weigh(&self, part: &Partial, buf: &mut [f32], listed: Option<Vec<usize>>, until: usize) {
        let Some(values) = &self.values else { return };
        let (kv, a, b) = (part.kv, part.start, part.start + part.n);
        let (_, _, out, exps) = part.parts_mut(buf, self.group, self.d);
        match values.rows(kv, a, until).or_else(|| values.rows(kv, a, b)) {
            Some(rows) => simd::weighted_sum_group(out, exps, rows, self.d),
            None => {
                // The values' rows sit where the keys' do when both come from one cache.
                let at = match listed {
                    Some(at) if values.same_layout(&self.keys) => at,
                    _ => values.listed(kv, a, b),
                };
                simd::weighted_sum_group_listed(out, exps, values.data, &at, self.d);
            }
        }
    }
}

/// One sequence's output and probabilities from its chunks' partial results: per query
/// head, each chunk rescaled by `exp(max_chunk - max_all)`.
fn merge(partials: &[(&Partial, ChunkView<'_>)], query: &mut DecodeQuery<'_>, group: usize) {
    let (h, d, len) = (query.shape.heads, query.shape.dim, query.keys.len);
    let mut probs = query.probs.as_deref_mut();
    if let Some(p) = probs.as_deref_mut() {
        p.fill(0.0);
    }
    let mut out = query.output.as_mut().map(|(_, out)| &mut **out);
    for head in 0..h {
        let (kv, g) = (head / group, head % group);
        let mine = || partials.iter().filter(move |(p, _)| p.kv == kv);
        let max = mine()
            .map(|(_, (m, ..))| m[g])
            .fold(f32::NEG_INFINITY, f32::max);
        let mut o = out.as_deref_mut().map(|o| &mut o[head * d..(head + 1) * d]);
        if let Some(o) = o.as_deref_mut() {
            o.fill(0.0);
        }
        if max == f32::NEG_INFINITY {
            continue;
        }
        let total: f32 = mine()
            .map(|(_, (m, s, ..))| s[g] * (m[g] - max).exp())
            .sum();
        for (p, (m, _, part_out, exps)) in mine() {
            let w = (m[g] - max).exp() / total;
            if let Some(o) = o.as_deref_mut() {
                simd::axpy(o, w, &part_out[g * d..(g + 1) * d]);
            }
            if let Some(dst) = probs.as_deref_mut() {
                let n = p.n;
                let dst = &mut dst[head * len + p.start..][..n];
                for (x, &e) in dst.iter_mut().zip(&exps[g * n..(g + 1) * n]) {
                    *x = e * w;
                }
            }
        }
    }
}

thread_local! {
    /// [`decode_attention`]'s partial results, kept from call to call on the calling
    /// thread: about `G * Hkv * len` floats, the size of a step's probabilities. Four
    /// vectors per chunk (some hundred chunks a layer at 8K tokens, allocated on the
    /// workers and freed on the caller) cost more than their arithmetic, and a buffer per
    /// task, freed each call, made the allocator give its memory back and fault it in again.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain attention in f64 with per-query ranges, `[S, H, d]` out and `[H, S, len]`
    /// probabilities.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        shape: AttentionShape,
        len: usize,
        visible: &dyn Fn(usize, usize) -> (usize, usize),
    ) -> (Vec<f32>, Vec<f32>) {
        let AttentionShape {
            queries: s,
            heads: h,
            kv_heads: hkv,
            dim: d,
        } = shape;
        let g = h / hkv;
        let mut out = vec![0.0; s * h * d];
        let mut probs = vec![0.0; h * s * len];
        for head in 0..h {
            let kv = head / g;
            for i in 0..s {
                let (lo, hi) = visible(kv, i);
                let qi = &q[(i * h + head) * d..][..d];
                let scores: Vec<f64> = (lo..hi)
                    .map(|j| {
                        let kj = &k[(kv * len + j) * d..][..d];
                        qi.iter()
                            .zip(kj)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let total: f64 = e.iter().sum();
                for (t, j) in (lo..hi).enumerate() {
                    let p = e[t] / total;
                    probs[(head * s + i) * len + j] = p as f32;
                    for c in 0..d {
                        out[(i * h + head) * d + c] +=
                            (p * v[(kv * len + j) * d + c] as f64) as f32;
                    }
                }
            }
        }
        (out, probs)
    }

    fn data(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.377 + seed).sin()).collect()
    }

    fn check(s: usize, h: usize, hkv: usize, d: usize, len: usize, window: Option<usize>) {
        let shape = AttentionShape {
            queries: s,
            heads: h,
            kv_heads: hkv,
            dim: d,
        };
        let q = data(s * h * d, 0.1);
        let k = data(hkv * len * d, 0.7);
        let v = data(hkv * len * d, 1.3);
        // Queries sit at the last S of the len cached positions; head kv lost its first kv rows.
        let visible = |kv: usize, i: usize| {
            let p = len - s + i;
            let lo = window.map_or(0, |w| (p + 1).saturating_sub(w)).max(kv);
            (lo.min(p + 1), p + 1)
        };
        let starts = packed_starts(hkv, len);
        let rows = |data| KvRows {
            data,
            runs: &[],
            starts: &starts,
            len,
            dim: d,
        };
        let run = |out: &mut [f32], probs: Option<&mut [f32]>| {
            let values = Some((rows(&v), out));
            attention(&q, rows(&k), shape, &visible, values, probs);
        };
        let close = |what: &str, got: &[f32], want: &[f32], tolerance: f32| {
            for (a, b) in got.iter().zip(want) {
                let (a, b) = (*a, *b);
                assert!(
                    (a - b).abs() < tolerance,
                    "{what} {a} vs {b} (s={s} len={len})"
                );
            }
        };
        let mut out = vec![0.0; s * h * d];
        let mut probs = vec![0.0; h * s * len];
        run(&mut out, Some(&mut probs));
        let (want_out, want_probs) = reference(&q, &k, &v, shape, len, &visible);
        close("out", &out, &want_out, 2e-5);
        close("prob", &probs, &want_probs, 2e-6);
        // Output only: the tiled kernel for several queries.
        let mut tiled = vec![0.0; s * h * d];
        run(&mut tiled, None);
        close("tiled out", &tiled, &want_out, 2e-5);
        // Probabilities only, built for wide rows (every head holds `len` rows).
        let wide = probabilities(&q, rows(&k), shape, &visible);
        assert_eq!(wide.len(), want_probs.len());
        close("wide prob", &wide, &want_probs, 2e-6);
    }

    /// Row-block, tiled and split-key attention equal the f64 reference, with GQA, causal
    /// and sliding-window ranges, and per-head ranges.
    #[test]
    fn attention_matches_reference() {
        check(1, 6, 2, 16, 1, None);
        check(1, 6, 2, 16, 700, None);
        check(1, 4, 4, 8, 600, Some(100));
        check(70, 6, 3, 16, 70, None);
        check(130, 4, 1, 32, 300, Some(50));
        check(300, 2, 1, 16, 900, None);
        check(260, 2, 2, 8, 1000, Some(300));
        // Head widths of whole vectors take the AVX-512 tiled kernel where there is one:
        // SmolLM2's heads, and a width of four vectors and one.
        check(100, 9, 3, 64, 400, None);
        check(45, 4, 2, 80, 45, Some(40));
        // CAKE's window statistics: 32 queries over keys that are not whole panels.
        check(32, 9, 3, 64, 1061, None);
        check(5, 2, 1, 16, 33, None);
    }

    /// A decoding step over rows with gaps between them (as eviction leaves them) gives
    /// the bits of the same rows packed: output and probabilities, with chunks that start
    /// and end inside runs, and with a head whose rows start past its region's start.
    #[test]
    fn decoding_across_gaps_has_the_bits_of_packed_rows() {
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        for (h, hkv, d, len) in [
            (9, 3, 64, 300),
            (32, 8, 128, 600),
            (6, 2, 16, 700),
            (4, 4, 8, 259),
        ] {
            let shape = AttentionShape {
                queries: 1,
                heads: h,
                kv_heads: hkv,
                dim: d,
            };
            // Head kv: runs at rows 0, 5 + 29 kv and 255 + kv, after gaps of kv, 3 and 1 rows.
            let runs: Vec<Vec<RowRun>> = (0..hkv)
                .map(|kv| {
                    let (r1, r2) = (5 + 29 * kv, 255 + kv);
                    vec![
                        RowRun { row: 0, offset: kv },
                        RowRun {
                            row: r1,
                            offset: kv + r1 + 3,
                        },
                        RowRun {
                            row: r2,
                            offset: kv + r2 + 4,
                        },
                    ]
                })
                .collect();
            let region = len + hkv + 4;
            let starts: Vec<usize> = (0..hkv).map(|kv| kv * region).collect();
            let (k, v) = (data(hkv * region * d, 0.7), data(hkv * region * d, 1.3));
            let gapped = |data| KvRows {
                data,
                starts: &starts,
                runs: &runs,
                len,
                dim: d,
            };
            // Where row j of head kv sits, by hand (keys and values share the layout).
            let at: Vec<usize> = (0..hkv)
                .flat_map(|kv| (0..len).map(move |j| (kv, j)))
                .map(|(kv, j)| {
                    let gaps = kv + 3 * (j >= 5 + 29 * kv) as usize + (j >= 255 + kv) as usize;
                    (kv * region + j + gaps) * d
                })
                .collect();
            let pack = |buffer: &[f32]| -> Vec<f32> {
                at.iter().flat_map(|&a| buffer[a..a + d].to_vec()).collect()
            };
            let (pk, pv) = (pack(&k), pack(&v));
            let packed_starts = packed_starts(hkv, len);
            let packed = |data| KvRows {
                data,
                starts: &packed_starts,
                runs: &[],
                len,
                dim: d,
            };
            let q = data(h * d, 0.1);
            let visible = |kv: usize, _: usize| (kv, len);
            let (mut out, mut probs) = (vec![0.0; h * d], vec![0.0; h * len]);
            let output = Some((gapped(&v), &mut out[..]));
            attention(&q, gapped(&k), shape, &visible, output, Some(&mut probs));
            let (mut want, mut want_probs) = (vec![0.0; h * d], vec![0.0; h * len]);
            let output = Some((packed(&pv), &mut want[..]));
            attention(
                &q,
                packed(&pk),
                shape,
                &visible,
                output,
                Some(&mut want_probs),
            );
            assert!(same(&out, &want), "output H={h} d={d} len={len}");
            assert!(
                same(&probs, &want_probs),
                "probabilities H={h} d={d} len={len}"
            );
        }
    }

    /// Even chunks: the fewest of at most `KEY_CHUNK` rows (so as many as before), a
    /// multiple of four, and the last short of the others by at most the rounding (four
    /// rows a chunk).
    #[test]
    fn even_chunks_split_a_head_into_as_few_alike_chunks_as_fit() {
        assert_eq!(even_chunk(288), 144);
        assert_eq!(even_chunk(610), 204);
        assert_eq!(even_chunk(257), 132);
        assert_eq!(even_chunk(256), 256);
        assert_eq!(even_chunk(8192), 256);
        assert_eq!(even_chunk(30), 32);
        assert_eq!(even_chunk(0), 4);
        for rows in 1..40_000 {
            let chunk = even_chunk(rows);
            let count = rows.div_ceil(chunk);
            assert_eq!(count, rows.div_ceil(KEY_CHUNK), "{rows} rows");
            assert!(chunk.is_multiple_of(4) && chunk <= KEY_CHUNK, "{rows} rows");
            let last = rows - (count - 1) * chunk;
            assert!(
                chunk - last <= 4 * count,
                "{rows} rows: last chunk {last} of {chunk}"
            );
        }
    }

    /// A batched decoding step gives each sequence the bits of its step alone: three
    /// sequences of different lengths, one with gaps, one without output, one without
    /// probabilities.
    #[test]
    fn a_batched_decoding_step_has_each_sequences_bits() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let (h, hkv, d) = (6, 2, 32);
        let shape = AttentionShape {
            queries: 1,
            heads: h,
            kv_heads: hkv,
            dim: d,
        };
        let gaps = vec![
            vec![
                RowRun { row: 0, offset: 0 },
                RowRun {
                    row: 90,
                    offset: 93,
                },
            ],
            Vec::new(),
        ];
        // (len, runs, output wanted, probabilities wanted)
        let cases: [(usize, &[Vec<RowRun>], bool, bool); 3] = [
            (700, &[], true, true),
            (300, &gaps, true, false),
            (41, &[], false, true),
        ];
        let inputs: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(i, &(len, _, _, _))| {
                let region = len + 4;
                let seed = i as f32;
                (
                    data(h * d, 0.2 + seed),
                    data(hkv * region * d, 0.4 + seed),
                    data(hkv * region * d, 1.7 + seed),
                    (0..hkv).map(|kv| kv * region).collect::<Vec<usize>>(),
                )
            })
            .collect();
        let visible = |kv: usize, _: usize| (kv, 41 - kv);
        let visible_long = |kv: usize, _: usize| (2 * kv, 300 - kv);
        let visible_longest = |kv: usize, _: usize| (0, 700 - 5 * kv);
        let sees: [Visible<'_>; 3] = [&visible_longest, &visible_long, &visible];
        let run = |items: &[usize]| -> Vec<(Vec<u32>, Vec<u32>)> {
            let mut outs: Vec<(Vec<f32>, Vec<f32>)> = items
                .iter()
                .map(|&i| (vec![f32::NAN; h * d], vec![f32::NAN; h * cases[i].0]))
                .collect();
            let mut queries: Vec<DecodeQuery<'_>> = items
                .iter()
                .zip(outs.iter_mut())
                .map(|(&i, (out, probs))| {
                    let (len, runs, want_out, want_probs) = cases[i];
                    let (q, k, v, starts) = &inputs[i];
                    let rows = |data| KvRows {
                        data,
                        starts,
                        runs,
                        len,
                        dim: d,
                    };
                    DecodeQuery {
                        q,
                        keys: rows(k),
                        shape,
                        visible: sees[i],
                        output: want_out.then(|| (rows(v), &mut out[..])),
                        probs: want_probs.then_some(&mut probs[..]),
                    }
                })
                .collect();
            decode_attention_batch(&mut queries);
            drop(queries);
            outs.iter().map(|(o, p)| (bits(o), bits(p))).collect()
        };
        let together = run(&[0, 1, 2]);
        for (i, together) in together.iter().enumerate() {
            assert_eq!(*together, run(&[i])[0], "sequence {i}");
        }
        // The comparison can fail: another sequence's result differs.
        assert_ne!(together[0], together[1]);
    }

    /// A decoding step's output and probabilities have the same bits whatever the chunks
    /// per task: over packed rows and over rows with gaps, with heads of different lengths.
    #[test]
    fn decode_tasks_of_several_chunks_have_the_bits_of_one() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let (h, hkv, d, len) = (9, 3, 64, 2100);
        let shape = AttentionShape {
            queries: 1,
            heads: h,
            kv_heads: hkv,
            dim: d,
        };
        let region = len + 8;
        let starts: Vec<usize> = (0..hkv).map(|kv| kv * region).collect();
        let (k, v) = (data(hkv * region * d, 0.4), data(hkv * region * d, 1.7));
        let q = data(h * d, 0.2);
        // Head kv sees rows 3 kv .. len - 100 kv: chunks that end short of KEY_CHUNK.
        let visible = |kv: usize, _: usize| (3 * kv, len - 100 * kv);
        // Packed, then with gaps in heads 0 and 2 (a run after 2 gap rows at rows 700 and 1300).
        let gaps: Vec<Vec<RowRun>> = vec![
            vec![
                RowRun { row: 0, offset: 0 },
                RowRun {
                    row: 700,
                    offset: 702,
                },
            ],
            Vec::new(),
            vec![
                RowRun { row: 0, offset: 0 },
                RowRun {
                    row: 1300,
                    offset: 1302,
                },
            ],
        ];
        for runs in [&[][..], &gaps[..]] {
            let rows = |data| KvRows {
                data,
                starts: &starts,
                runs,
                len,
                dim: d,
            };
            let step = |chunks: usize| {
                let (mut out, mut probs) = (vec![0.0; h * d], vec![0.0; h * len]);
                decode_attention(
                    &mut [DecodeQuery {
                        q: &q,
                        keys: rows(&k),
                        shape,
                        visible: &visible,
                        output: Some((rows(&v), &mut out)),
                        probs: Some(&mut probs),
                    }],
                    Some(chunks),
                );
                (bits(&out), bits(&probs))
            };
            let one = step(1);
            for chunks in [2, 3, 8] {
                assert_eq!(
                    step(chunks),
                    one,
                    "{chunks} chunks a task, gaps: {}",
                    !runs.is_empty()
                );
            }
        }
    }
}
