//! The per-layer key/value cache that every model and every policy share.
//!
//! # Storage
//! Keys and values live in one buffer each, `[rows, d]`, split into one region per KV head:
//! head `h` owns rows `start_h..start_h + capacity_h`, of which the first `len_h` are valid
//! ([`HeadSpan`]). Heads hold their own number of rows (per-head budgets): the bytes held
//! are the sum over heads, and each head's region is sized by its own count, so a head
//! that keeps few tokens really frees memory (no masking of a full-size cache).
//!
//! Appending writes the new rows into each head's spare capacity (in place on the CPU
//! backend, a `slice_assign` elsewhere). A head's region grows by whole blocks of
//! [`GROWTH_BLOCK`] rows (and at least a quarter of its size) only when it is full, so a
//! decoding step costs one row write per head instead of a copy of the whole cache.
//! Eviction compacts each head's kept rows to the front of its region (only rows after
//! the first evicted one move) and gives memory back by shrinking regions when much more
//! than a block would stay unused (on the CPU backend inside the same buffer, whose tail
//! is then released: no new memory is touched). Heads holding the same count get the same
//! capacity, so the common layer-budget case is a plain `[Hkv, capacity, d]` layout.
//!
//! On the CPU backend an eviction that would leave few gaps moves nothing: the evicted
//! rows stay behind as gaps between [`RowRun`]s (at most [`MAX_RUNS`] per head), which the
//! host kernels skip, and new rows are written after the last run. The gaps are closed in
//! one move when a head's region fills up, when a later eviction would leave more runs,
//! before a multi-row append, or when memory is given back. A decoding step of CAKE then
//! costs no row moves (one every few dozen steps instead of one per step); the rows keep
//! their order, so every kernel reads them in the same order as compacted and computes the
//! same bits.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend, s};

use crate::error::CacheError;

/// Rows per KV head that buffers grow (and are rounded) by.
pub const GROWTH_BLOCK: usize = 128;

/// Most runs of consecutive rows a KV head may be split into by gaps (see
/// [`LayerCache::runs`]) before the next eviction closes them. More runs close the gaps
/// less often (64 took the `append_and_evict_rows` benchmark at Llama-3.1-8B's shape from
/// 10.8 to 6.8 us), but the decode attention reads shorter runs more slowly: on a 2-core
/// EPYC, CAKE's decode at 512 tokens and C = 256 was no faster end to end with 64.
pub const MAX_RUNS: usize = 16;

/// The host kernels read a head's runs as the cache stores them, so with the `flex` feature
/// the cache uses the kernels' own type (the same two fields).
#[cfg(feature = "flex")]
pub use cake_kernels::RowRun;

/// A stretch of one KV head's rows that sit one after another in its region: rows
/// `row..` (indices among the head's rows, in position order) from region row `offset`,
/// up to the next run's `row`.
#[cfg(not(feature = "flex"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRun {
    /// Index of the run's first row among the head's rows.
    pub row: usize,
    /// Where it sits, in rows from the head's region start ([`HeadSpan::start`]).
    pub offset: usize,
}

/// Where one KV head's rows live in the layer's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeadSpan {
    /// First row of the head's region.
    pub start: usize,
    /// Valid rows (cached tokens) of the head (gaps left by eviction not counted).
    pub len: usize,
    /// Rows the region holds before it must grow.
    pub capacity: usize,
}

/// Keys and values of one decoder layer, stored per KV head (no GQA repetition).
///
/// `positions[h]` holds the absolute position of each of the `len_h` cached tokens of KV
/// head `h` (heads keep their own tokens, and with per-head budgets their own number of
/// them); `scores`, when present, is `[Hkv, len]` with `len` the longest head's count:
/// row `h`'s first `len_h` entries are the surviving eviction scores of head `h`'s tokens
/// (the rest is padding), so that a later cascade stage re-ranks survivors with the
/// scores they were selected by.
///
/// Eviction moves the kept rows together and shrinks the buffers: evicted memory is
/// released, never masked. (On the CPU backend a few evicted rows may stay behind as gaps
/// inside a head's region, see [`LayerCache::runs`]: never read, never counted in
/// [`LayerCache::bytes`], closed before the region would grow.)
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    /// `[rows, d]`
    keys: Option<Tensor<B, 2>>,
    /// `[rows, d]`
    values: Option<Tensor<B, 2>>,
    heads: Vec<HeadSpan>,
    /// Per head, its runs when eviction left gaps (empty: its rows are contiguous).
    runs: Vec<Vec<RowRun>>,
    positions: Vec<Vec<usize>>,
    scores: Option<Tensor<B, 2>>,
}

impl<B: Backend> Default for LayerCache<B> {
    fn default() -> Self {
        Self::new()
    }
}

/// `n` rounded up to a whole number of growth blocks.
fn round_up(n: usize) -> usize {
    n.div_ceil(GROWTH_BLOCK).max(1) * GROWTH_BLOCK
}

impl<B: Backend> LayerCache<B> {
    /// An empty cache.
    pub fn new() -> Self {
        Self {
            keys: None,
            values: None,
            heads: Vec::new(),
            runs: Vec::new(),
            positions: Vec::new(),
            scores: None,
        }
    }

    /// Appends `n` new tokens to every KV head, at absolute positions
    /// `start_pos..start_pos + n`.
    ///
    /// `keys`, `values`: `[Hkv, n, d]` (any layout). When the cache carries scores, the
    /// new rows get score 0 (policies that rank them re-score after appending, see
    /// [`LayerCache::set_scores`]; accumulating ones such as H2O add to it).
    ///
    /// # Errors
    /// When the shapes disagree with each other or with what the cache holds.
    pub fn append(
        &mut self,
        keys: Tensor<B, 3>,
        values: Tensor<B, 3>,
        start_pos: usize,
    ) -> Result<(), CacheError> {
        let [heads, n, dim] = keys.dims();
        if values.dims() != [heads, n, dim] {
            return Err(CacheError::Shape(format!(
                "keys {:?} and values {:?} differ",
                keys.dims(),
                values.dims()
            )));
        }
        if let Some(k) = &self.keys {
            let (h, d) = (self.heads.len(), k.dims()[1]);
            if (h, d) != (heads, dim) {
                return Err(CacheError::Shape(format!(
                    "appending [{heads}, {n}, {dim}] rows to a cache of {h} heads of width {d}"
                )));
            }
        }
        if n == 0 {
            return Ok(());
        }
        if self.positions.is_empty() {
            self.positions = vec![Vec::new(); heads];
            self.heads = vec![HeadSpan::default(); heads];
            self.runs = vec![Vec::new(); heads];
        }
        // The prefill kernels read each head's rows as one slice.
        if n > 1 && self.has_gaps() {
            self.settle();
        }
        self.reserve(n, dim, &keys.device());
        for head in &mut self.positions {
            head.extend(start_pos..start_pos + n);
        }
        let at: Vec<usize> = (0..heads)
            .map(|h| self.heads[h].start + self.extent(h))
            .collect();
        self.keys = self.keys.take().map(|buf| write_rows(buf, keys, &at));
        self.values = self.values.take().map(|buf| write_rows(buf, values, &at));
        for head in &mut self.heads {
            head.len += n;
        }
        let new_len = self.len();
        self.scores = self.scores.take().map(|old| {
            // Each head's new rows follow its own count: rebuild when heads are ragged.
            let device = old.device();
            if !self.is_ragged() {
                Tensor::cat(vec![old, Tensor::zeros([heads, n], &device)], 1)
            } else {
                let lens: Vec<usize> = self.heads.iter().map(|h| h.len - n).collect();
                pad_rows(old, &lens, new_len)
            }
        });
        Ok(())
    }

    /// Makes room for `n` more rows in every head, growing a full head's region by blocks
    /// (at least a quarter of its capacity, so that appends stay amortised O(1), and one
    /// spare block, so that the decoding steps right after a prefill write in place).
    fn reserve(&mut self, n: usize, dim: usize, device: &B::Device) {
        let fits = |cache: &Self| {
            cache.keys.is_some()
                && (0..cache.heads.len()).all(|h| cache.extent(h) + n <= cache.heads[h].capacity)
        };
        if fits(self) {
            return;
        }
        // A head whose region filled up with gaps, or whose rows moved toward its end,
        // settles them at its start before anything grows.
        self.settle();
        if fits(self) {
            return;
        }
        let capacities = self
            .heads
            .iter()
            .map(|h| {
                if h.len + n <= h.capacity && self.keys.is_some() {
                    h.capacity
                } else {
                    round_up((h.len + n).max(h.capacity + h.capacity / 4)) + GROWTH_BLOCK
                }
            })
            .collect();
        self.relayout(capacities, dim, device);
    }

    /// Moves every head's valid rows into new buffers whose regions have `capacities`.
    fn relayout(&mut self, capacities: Vec<usize>, dim: usize, device: &B::Device) {
        let fresh = regions(&self.heads, &capacities);
        let rows = fresh.iter().map(|h| h.capacity).sum();
        let old_heads = std::mem::replace(&mut self.heads, fresh);
        let new_heads = &self.heads;
        let grow = |old: Option<Tensor<B, 2>>| {
            let buffer = zeroed_rows::<B>(rows, dim, device);
            match old {
                Some(old) => copy_regions(buffer, &old, &old_heads, new_heads),
                None => buffer,
            }
        };
        self.keys = Some(grow(self.keys.take()));
        self.values = Some(grow(self.values.take()));
    }

    /// Cached keys `[Hkv, len, d]` (a view of the buffer when the heads' regions are
    /// equal), or `None` when empty or when heads hold different counts (see
    /// [`LayerCache::head_keys`]).
    pub fn keys(&self) -> Option<Tensor<B, 3>> {
        self.uniform_view(self.keys.as_ref())
    }

    /// Cached values `[Hkv, len, d]`, as [`LayerCache::keys`].
    pub fn values(&self) -> Option<Tensor<B, 3>> {
        self.uniform_view(self.values.as_ref())
    }

    fn uniform_view(&self, buffer: Option<&Tensor<B, 2>>) -> Option<Tensor<B, 3>> {
        let buffer = buffer?;
        if self.is_ragged() || self.is_empty() {
            return None;
        }
        if self.has_gaps() {
            let rows = (0..self.heads.len())
                .filter_map(|h| self.head_view(Some(buffer), h))
                .collect();
            return Some(Tensor::stack(rows, 0));
        }
        let (heads, len, dim) = (self.heads.len(), self.len(), buffer.dims()[1]);
        let capacity = self.heads[0].capacity;
        let strided = self
            .heads
            .iter()
            .enumerate()
            .all(|(h, span)| span.capacity == capacity && span.start == h * capacity);
        if strided {
            // [rows, d] -> [Hkv, capacity, d] -> [Hkv, len, d]
            return Some(
                buffer
                    .clone()
                    .reshape([heads, capacity, dim])
                    .narrow(1, 0, len),
            );
        }
        let rows = self
            .heads
            .iter()
            .map(|span| buffer.clone().narrow(0, span.start, len))
            .collect();
        Some(Tensor::stack(rows, 0))
    }

    /// Keys of KV head `head`, `[len_h, d]` (a view), or `None` when empty or out of range.
    pub fn head_keys(&self, head: usize) -> Option<Tensor<B, 2>> {
        self.head_view(self.keys.as_ref(), head)
    }

    /// Values of KV head `head`, `[len_h, d]`, as [`LayerCache::head_keys`].
    pub fn head_values(&self, head: usize) -> Option<Tensor<B, 2>> {
        self.head_view(self.values.as_ref(), head)
    }

    /// Head `head`'s rows `[len_h, d]`: a view, or with gaps the runs' views joined.
    fn head_view(&self, buffer: Option<&Tensor<B, 2>>, head: usize) -> Option<Tensor<B, 2>> {
        let span = self.heads.get(head).filter(|s| s.len > 0)?;
        let buffer = buffer?;
        let runs = &self.runs[head];
        if runs.is_empty() {
            return Some(buffer.clone().narrow(0, span.start, span.len));
        }
        let pieces = runs
            .iter()
            .enumerate()
            .map(|(r, run)| {
                let end = runs.get(r + 1).map_or(span.len, |next| next.row);
                buffer
                    .clone()
                    .narrow(0, span.start + run.offset, end - run.row)
            })
            .collect();
        Some(Tensor::cat(pieces, 0))
    }

    /// The whole key and value buffers, `[rows, d]` each, where KV head `h`'s valid rows
    /// are `spans()[h].start..+len`, or where [`LayerCache::runs`] says when eviction
    /// left gaps; `None` when nothing was ever cached. For kernels that read the cache in
    /// place.
    pub fn buffers(&self) -> Option<(&Tensor<B, 2>, &Tensor<B, 2>)> {
        self.keys.as_ref().zip(self.values.as_ref())
    }

    /// Each KV head's region in [`LayerCache::buffers`].
    pub fn spans(&self) -> &[HeadSpan] {
        &self.heads
    }

    /// Per KV head, the runs its rows are split into when eviction left gaps in its region
    /// (the CPU backend's decoding eviction, see the module doc), in row order; an empty
    /// list when the head's rows are contiguous from its region start.
    pub fn runs(&self) -> &[Vec<RowRun>] {
        &self.runs
    }

    /// True when some KV head's rows have gaps between them.
    fn has_gaps(&self) -> bool {
        self.runs.iter().any(|r| !r.is_empty())
    }

    /// Rows of head `h`'s region in use: its rows and the gaps between them.
    fn extent(&self, h: usize) -> usize {
        match self.runs.get(h).and_then(|r| r.last()) {
            Some(last) => last.offset + self.heads[h].len - last.row,
            None => self.heads[h].len,
        }
    }

    /// Region rows (offsets from the head's start) of head `h`'s rows `rows` (ascending).
    fn region_rows(&self, h: usize, rows: &[usize]) -> Vec<usize> {
        let runs = &self.runs[h];
        let mut r = 0;
        rows.iter()
            .map(|&i| {
                while r + 1 < runs.len() && runs[r + 1].row <= i {
                    r += 1;
                }
                runs.get(r).map_or(i, |run| run.offset + i - run.row)
            })
            .collect()
    }

    /// Moves every head's rows to the start of its region, one after another: closes the
    /// gaps eviction left and makes the rows before a head's first row (spare since rows
    /// moved toward the region's end) usable by appends again. Nothing else changes.
    fn settle(&mut self) {
        // Each piece (a run of rows) moves from `from.start` to `to.start`, `len` rows.
        let mut from = Vec::new();
        let mut to = Vec::new();
        let mut begin = 0;
        for (h, span) in self.heads.iter_mut().enumerate() {
            let runs = std::mem::take(&mut self.runs[h]);
            let whole = [RowRun { row: 0, offset: 0 }];
            let pieces = if runs.is_empty() {
                &whole[..]
            } else {
                &runs[..]
            };
            for (r, run) in pieces.iter().enumerate() {
                let end = pieces.get(r + 1).map_or(span.len, |next| next.row);
                let piece = |start| HeadSpan {
                    start,
                    len: end - run.row,
                    capacity: 0,
                };
                if end > run.row {
                    from.push(piece(span.start + run.offset));
                    to.push(piece(begin + run.row));
                }
            }
            span.capacity += span.start - begin;
            span.start = begin;
            begin += span.capacity;
        }
        if from.iter().zip(&to).all(|(a, b)| a.start == b.start) {
            return;
        }
        let settle = |buffer: Option<Tensor<B, 2>>| {
            let buffer = buffer?;
            let dim = buffer.dims()[1];
            // Every piece lands at or before where it is read, and after the pieces
            // before it: in place, first to last (the pieces already in place stay).
            #[cfg(feature = "flex")]
            let buffer = match crate::host::write_in_place(buffer, |data| {
                for (a, b) in from.iter().zip(&to).filter(|(a, b)| a.start != b.start) {
                    data.copy_within(a.start * dim..(a.start + a.len) * dim, b.start * dim);
                }
            }) {
                (buffer, true) => return Some(buffer),
                (buffer, false) => buffer,
            };
            // Shared with someone else: every piece into a new buffer.
            let fresh = zeroed_rows::<B>(buffer.dims()[0], dim, &buffer.device());
            Some(copy_regions(fresh, &buffer, &from, &to))
        };
        self.keys = settle(self.keys.take());
        self.values = settle(self.values.take());
    }

    /// Cached tokens of the longest KV head (every head's count unless per-head budgets
    /// made them ragged).
    pub fn len(&self) -> usize {
        self.heads.iter().map(|h| h.len).max().unwrap_or(0)
    }

    /// Cached tokens of each KV head.
    pub fn head_lens(&self) -> Vec<usize> {
        self.heads.iter().map(|h| h.len).collect()
    }

    /// Key rows held, summed over KV heads (as many value rows).
    pub fn rows(&self) -> usize {
        self.heads.iter().map(|h| h.len).sum()
    }

    /// True when KV heads hold different numbers of tokens.
    pub fn is_ragged(&self) -> bool {
        self.heads.windows(2).any(|w| w[0].len != w[1].len)
    }

    /// Rows per KV head the smallest region can hold before growing.
    pub fn capacity(&self) -> usize {
        self.heads.iter().map(|h| h.capacity).min().unwrap_or(0)
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of KV heads (0 when empty).
    pub fn num_kv_heads(&self) -> usize {
        self.positions.len()
    }

    /// Absolute positions of the cached tokens, per KV head: `[Hkv][len_h]`, ascending.
    pub fn positions(&self) -> &[Vec<usize>] {
        &self.positions
    }

    /// Surviving eviction scores `[Hkv, len]` (row `h` valid in its first `len_h`
    /// entries), if the cache has been scored.
    pub fn scores(&self) -> Option<&Tensor<B, 2>> {
        self.scores.as_ref()
    }

    /// Attaches eviction scores `[Hkv, len]` to the cached tokens (row `h`'s first `len_h`
    /// entries score head `h`'s tokens; the rest is ignored).
    ///
    /// # Errors
    /// When the shape is not `[Hkv, len]`.
    pub fn set_scores(&mut self, scores: Tensor<B, 2>) -> Result<(), CacheError> {
        if scores.dims() != [self.num_kv_heads(), self.len()] {
            return Err(CacheError::Shape(format!(
                "scores {:?} for a cache of [{}, {}] tokens",
                scores.dims(),
                self.num_kv_heads(),
                self.len()
            )));
        }
        self.scores = Some(scores);
        Ok(())
    }

    /// Drops the attached eviction scores (see [`LayerCache::set_scores`]).
    pub fn clear_scores(&mut self) {
        self.scores = None;
    }

    /// Bytes of the key and value rows held (`2 * rows * d` elements of the backend's
    /// float type, summed over heads): what the policy keeps.
    pub fn bytes(&self) -> usize {
        let Some(keys) = &self.keys else { return 0 };
        2 * self.rows() * keys.dims()[1] * keys.dtype().size()
    }

    /// Bytes allocated by the buffers (held rows plus spare capacity).
    pub fn allocated_bytes(&self) -> usize {
        let count = |t: &Option<Tensor<B, 2>>| t.as_ref().map_or(0, |t| t.shape().num_elements());
        let elem = self.keys.as_ref().map_or(0, |k| k.dtype().size());
        (count(&self.keys) + count(&self.values)) * elem
    }

    /// Rows of head `h`'s whole region: its rows before `start` (spare since eviction
    /// moved the head's rows toward the region's end) plus its capacity. Regions are laid
    /// back to back, so head `h`'s begins where head `h - 1`'s ends.
    fn region_size(&self, h: usize) -> usize {
        let begin = match h {
            0 => 0,
            _ => self.heads[h - 1].start + self.heads[h - 1].capacity,
        };
        self.heads[h].start + self.heads[h].capacity - begin
    }

    /// True when eviction compacts the buffers in place on the host (the CPU backend),
    /// where its cost is the rows moved: each head then moves whichever side of its
    /// evicted rows is shorter. Elsewhere rows move by a device `select`, whose cost does
    /// not depend on the side, and the kept rows always stay at their region's start, so
    /// that [`LayerCache::keys`] remains a zero-copy view.
    fn compacts_in_place(&self) -> bool {
        #[cfg(feature = "flex")]
        return crate::host::is_flex::<B>();
        #[cfg(not(feature = "flex"))]
        false
    }

    /// Keeps, for every KV head `h`, the rows `keep[h]` (indices into the head's current
    /// rows, strictly ascending; heads may keep different counts) and releases all others.
    ///
    /// # Errors
    /// When there is not one list per head or an index is out of range, repeated or out
    /// of order; the cache is then unchanged.
    pub fn retain(&mut self, keep: &[Vec<usize>]) -> Result<(), CacheError> {
        self.check_rows(keep, "kept")?;
        let heads = self.num_kv_heads();
        let unchanged = keep
            .iter()
            .zip(&self.heads)
            .all(|(k, span)| k.len() == span.len);
        if unchanged {
            return Ok(());
        }
        // Where the kept rows sit in their regions.
        let placed: Vec<Vec<usize>> = (0..heads).map(|h| self.region_rows(h, &keep[h])).collect();
        if self.compacts_in_place() && !self.wasteful(keep) {
            let mut runs: Vec<Vec<RowRun>> = placed.iter().map(|p| runs_of(p)).collect();
            if runs.iter().all(|r| r.len() <= MAX_RUNS) {
                // Nothing moves: the evicted rows become gaps.
                self.forget(keep);
                for ((span, k), runs) in self.heads.iter_mut().zip(keep).zip(&mut runs) {
                    span.len = k.len();
                    // Rows evicted before the first kept one leave the region's start
                    // spare (as a compaction from the front does).
                    let skip = runs.first().map_or(0, |r| r.offset);
                    span.start += skip;
                    span.capacity -= skip;
                    runs.iter_mut().for_each(|r| r.offset -= skip);
                    if runs.len() == 1 {
                        runs.clear();
                    }
                }
                self.runs = runs;
                return Ok(());
            }
        }
        self.move_kept_rows(keep, &placed);
        Ok(())
    }

    /// Drops, for every KV head `h`, its rows `dropped[h]` (indices into the head's current
    /// rows, strictly ascending): [`LayerCache::retain`] of all the other rows, for a
    /// decoding step that evicts a few tokens. On the CPU backend, when the cache carries
    /// no scores, this costs the few rows dropped rather than a pass over all the kept ones:
    /// the dropped rows become gaps (see the module doc), closed once a head would have more
    /// than [`MAX_RUNS`] runs.
    ///
    /// # Errors
    /// When there is not one list per head or an index is out of range, repeated or out of
    /// order; the cache is then unchanged.
    pub fn evict_rows(&mut self, dropped: &[Vec<usize>]) -> Result<(), CacheError> {
        self.check_rows(dropped, "dropped")?;
        if !self.compacts_in_place() || self.scores.is_some() {
            let keep: Vec<Vec<usize>> = dropped
                .iter()
                .zip(&self.heads)
                .map(|(d, span)| {
                    (0..span.len)
                        .filter(|i| d.binary_search(i).is_err())
                        .collect()
                })
                .collect();
            return self.retain(&keep);
        }
        for (h, d) in dropped.iter().enumerate() {
            if d.is_empty() {
                continue;
            }
            let span = &mut self.heads[h];
            let mut runs = std::mem::take(&mut self.runs[h]);
            if runs.is_empty() {
                runs.push(RowRun { row: 0, offset: 0 });
            }
            let mut len = span.len;
            // Last to first, so that the indices still to drop stay where they were.
            for &i in d.iter().rev() {
                let r = runs.partition_point(|run| run.row <= i) - 1;
                let run = runs[r];
                let end = runs.get(r + 1).map_or(len, |next| next.row);
                let after = RowRun {
                    row: i,
                    offset: run.offset + i - run.row + 1,
                };
                for later in &mut runs[r + 1..] {
                    later.row -= 1;
                }
                match (i == run.row, i + 1 == end) {
                    // The run held only this row.
                    (true, true) => {
                        runs.remove(r);
                    }
                    // Its first row: the run now starts one row later.
                    (true, false) => runs[r] = after,
                    // Its last row: the run ends one row earlier.
                    (false, true) => {}
                    // A row inside: the run splits around the gap.
                    (false, false) => runs.insert(r + 1, after),
                }
                self.positions[h].remove(i);
                len -= 1;
            }
            span.len = len;
            // Rows gone before the first one left leave the region's start spare.
            let skip = runs.first().map_or(0, |r| r.offset);
            span.start += skip;
            span.capacity -= skip;
            runs.iter_mut().for_each(|r| r.offset -= skip);
            if runs.len() > 1 {
                self.runs[h] = runs;
            }
        }
        if self.runs.iter().any(|r| r.len() > MAX_RUNS) {
            self.settle();
        }
        Ok(())
    }

    /// Checks lists of row indices (`what`: kept or dropped): one per head, each strictly
    /// ascending and inside the head's rows.
    fn check_rows(&self, lists: &[Vec<usize>], what: &str) -> Result<(), CacheError> {
        let heads = self.num_kv_heads();
        if lists.len() != heads {
            return Err(CacheError::Retain(format!(
                "{} lists of {what} rows for {heads} KV heads",
                lists.len()
            )));
        }
        for (rows, span) in lists.iter().zip(&self.heads) {
            if rows.windows(2).any(|w| w[0] >= w[1]) {
                return Err(CacheError::Retain(format!(
                    "{what} indices must be strictly ascending"
                )));
            }
            if let Some(&i) = rows.last().filter(|&&i| i >= span.len) {
                return Err(CacheError::Retain(format!(
                    "{what} index {i} out of range (the KV head holds {})",
                    span.len
                )));
            }
        }
        Ok(())
    }

    /// True when keeping `keep` would leave some region more than two blocks larger than
    /// its rows need: eviction then gives memory back.
    fn wasteful(&self, keep: &[Vec<usize>]) -> bool {
        (0..self.heads.len())
            .any(|h| self.region_size(h) > round_up(keep[h].len()) + 2 * GROWTH_BLOCK)
    }

    /// Drops the positions and scores of all but the rows `keep` (per head, ascending).
    fn forget(&mut self, keep: &[Vec<usize>]) {
        let new_len = keep.iter().map(Vec::len).max().unwrap_or(0);
        self.scores = self.scores.take().map(|s| gather_scores(s, keep, new_len));
        // In place: kept indices ascend, so each lands at or before where it was read.
        for (k, pos) in keep.iter().zip(&mut self.positions) {
            for (to, &from) in k.iter().enumerate() {
                pos[to] = pos[from];
            }
            pos.truncate(k.len());
        }
    }

    /// [`LayerCache::retain`] with rows that move: each head's kept rows `keep[h]` (at
    /// region rows `placed[h]`) become contiguous, and regions shrink when much would
    /// stay unused.
    fn move_kept_rows(&mut self, keep: &[Vec<usize>], placed: &[Vec<usize>]) {
        // Each head as the rows of its region in use (gaps included), of which `placed`
        // are kept.
        let used: Vec<HeadSpan> = (0..self.heads.len())
            .map(|h| HeadSpan {
                len: self.extent(h),
                ..self.heads[h]
            })
            .collect();
        let moves: Vec<Compaction> = placed
            .iter()
            .zip(&used)
            .map(|(k, span)| Compaction::plan(k, span, self.compacts_in_place()))
            .collect();
        // Where each head's rows sit once compacted inside its region.
        let compacted: Vec<HeadSpan> = used
            .iter()
            .zip(keep.iter().zip(&moves))
            .map(|(span, (k, moved))| {
                let dropped = span.len - k.len();
                match moved.from_front {
                    // The region's end stays: its first `dropped` rows are now spare.
                    true => HeadSpan {
                        start: span.start + dropped,
                        len: k.len(),
                        capacity: span.capacity - dropped,
                    },
                    false => HeadSpan {
                        len: k.len(),
                        ..*span
                    },
                }
            })
            .collect();
        // Give memory back when a region would leave more than two blocks unused: every
        // head then gets a region of its rows rounded up plus one block (never more than
        // its region had, so that the rows can move down in place).
        let shrunk = self.wasteful(keep).then(|| {
            let capacities: Vec<usize> = (0..self.heads.len())
                .map(|h| (round_up(keep[h].len()) + GROWTH_BLOCK).min(self.region_size(h)))
                .collect();
            regions(&compacted, &capacities)
        });
        if let (Some(k), Some(v)) = (self.keys.take(), self.values.take()) {
            let rows = |buffer| match &shrunk {
                Some(to) => shrink_rows(buffer, &used, &compacted, to, &moves, placed),
                None => compact_rows(buffer, &moves, placed),
            };
            self.keys = Some(rows(k));
            self.values = Some(rows(v));
        }
        self.forget(keep);
        self.heads = shrunk.unwrap_or(compacted);
        self.runs = vec![Vec::new(); self.heads.len()];
    }
}

/// The runs of rows at region rows `placed` (ascending): a new run wherever a row does
/// not sit right after the one before it.
fn runs_of(placed: &[usize]) -> Vec<RowRun> {
    placed
        .iter()
        .enumerate()
        .filter(|&(i, &at)| i == 0 || placed[i - 1] + 1 != at)
        .map(|(row, &offset)| RowRun { row, offset })
        .collect()
}

/// Scores `[Hkv, n]` whose row `h` is valid in its first `lens[h]` entries, re-laid as
/// `[Hkv, width]` with the same valid entries (new entries 0).
fn pad_rows<B: Backend>(scores: Tensor<B, 2>, lens: &[usize], width: usize) -> Tensor<B, 2> {
    let device = scores.device();
    let rows = lens
        .iter()
        .enumerate()
        .map(|(h, &len)| {
            let row = scores.clone().narrow(0, h, 1).narrow(1, 0, len.min(width));
            if len >= width {
                row
            } else {
                Tensor::cat(vec![row, Tensor::zeros([1, width - len], &device)], 1)
            }
        })
        .collect();
    Tensor::cat(rows, 0)
}

/// The scores `[Hkv, n]` of the kept tokens `keep[h]`: `[Hkv, width]` (row `h` padded
/// past `keep[h].len()`), gathered on the host buffer on the CPU backend (a decoding step
/// evicts every step), by a device `select` elsewhere.
fn gather_scores<B: Backend>(
    scores: Tensor<B, 2>,
    keep: &[Vec<usize>],
    width: usize,
) -> Tensor<B, 2> {
    let [heads, n] = scores.dims();
    // Padding entries repeat the head's first score (any valid index would do).
    let index = |h: usize, i: usize| h * n + keep[h].get(i).copied().unwrap_or(0);
    #[cfg(feature = "flex")]
    if let Some(host) = crate::host::flex(&scores).map(|t| t.to_contiguous())
        && let Some(data) = crate::host::contiguous(&host)
    {
        let mut gathered = Vec::with_capacity(heads * width);
        for (row, kept) in data.chunks_exact(n.max(1)).zip(keep).take(heads) {
            let kept = &kept[..kept.len().min(width)];
            gathered.extend(kept.iter().map(|&i| row[i]));
            gathered.extend(std::iter::repeat_n(row[0], width - kept.len()));
        }
        return Tensor::from_data(TensorData::new(gathered, [heads, width]), &scores.device());
    }
    let flat: Vec<i64> = (0..heads)
        .flat_map(|h| (0..width).map(move |i| (h, i)))
        .map(|(h, i)| index(h, i) as i64)
        .collect();
    let rows: Tensor<B, 1, Int> =
        Tensor::from_data(TensorData::new(flat, [heads * width]), &scores.device());
    scores
        .reshape([heads * n])
        .select(0, rows)
        .reshape([heads, width])
}

/// Writes `rows` (`[Hkv, n, d]`) into `buffer` (`[rows, d]`): head `h`'s rows at buffer
/// rows `at[h]..at[h] + n`; returns the buffer.
fn write_rows<B: Backend>(buffer: Tensor<B, 2>, rows: Tensor<B, 3>, at: &[usize]) -> Tensor<B, 2> {
    let [heads, n, dim] = rows.dims();
    #[cfg(feature = "flex")]
    let buffer = match crate::host::flex(&rows) {
        Some(src) => {
            let src = src.to_contiguous();
            let src = src.storage::<f32>();
            let (buffer, ran) = crate::host::write_in_place(buffer, |dst| {
                for (h, &row) in at.iter().enumerate().take(heads) {
                    let to = row * dim;
                    dst[to..to + n * dim].copy_from_slice(&src[h * n * dim..(h + 1) * n * dim]);
                }
            });
            if ran {
                return buffer;
            }
            buffer
        }
        None => buffer,
    };
    at.iter()
        .enumerate()
        .take(heads)
        .fold(buffer, |buffer, (h, &row)| {
            // [1, n, d] -> [n, d]
            let head = rows.clone().narrow(0, h, 1).reshape([n, dim]);
            buffer.slice_assign(s![row..row + n, 0..dim], head)
        })
}

/// Regions laid end to end with `capacities`, each holding `heads[h].len` rows.
fn regions(heads: &[HeadSpan], capacities: &[usize]) -> Vec<HeadSpan> {
    let mut start = 0;
    heads
        .iter()
        .zip(capacities)
        .map(|(old, &capacity)| {
            let span = HeadSpan {
                start,
                len: old.len,
                capacity,
            };
            start += capacity;
            span
        })
        .collect()
}

/// A zeroed `[rows, dim]` buffer (on the CPU backend, without Burn's second copy).
fn zeroed_rows<B: Backend>(rows: usize, dim: usize, device: &B::Device) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    if let Some(t) = crate::host::zeros::<B>(rows, dim) {
        return t;
    }
    Tensor::zeros([rows, dim], device)
}

/// Eviction that also gives memory back: every head's kept rows `keep[h]` (of its rows at
/// `from[h]`) move to the smaller regions `to`. On the CPU backend they move down inside
/// the buffer itself, which then drops its tail (no new memory: every region of `to` starts
/// at or before the one it replaces and is no larger, so each row lands at or before where
/// it is read). Elsewhere the rows are compacted (`moves`, giving `compacted`) and copied
/// into a new buffer.
#[cfg_attr(not(feature = "flex"), allow(unused_variables))]
fn shrink_rows<B: Backend>(
    buffer: Tensor<B, 2>,
    from: &[HeadSpan],
    compacted: &[HeadSpan],
    to: &[HeadSpan],
    moves: &[Compaction],
    keep: &[Vec<usize>],
) -> Tensor<B, 2> {
    let dim = buffer.dims()[1];
    let rows = to.iter().map(|h| h.capacity).sum();
    #[cfg(feature = "flex")]
    let buffer = match crate::host::rewrite_and_truncate(buffer, rows, |data| {
        for ((k, a), b) in keep.iter().zip(from).zip(to) {
            for run in runs(k) {
                let src = a.start + k[run.start];
                let dst = b.start + run.start;
                if src != dst {
                    data.copy_within(src * dim..(src + run.len()) * dim, dst * dim);
                }
            }
        }
    }) {
        Ok(shrunk) => return shrunk,
        Err(buffer) => buffer,
    };
    let device = buffer.device();
    let compact = compact_rows(buffer, moves, keep);
    copy_regions(
        zeroed_rows::<B>(rows, dim, &device),
        &compact,
        compacted,
        to,
    )
}

/// Maximal runs of consecutive values in the ascending `k`, as index ranges into `k`.
#[cfg(feature = "flex")]
fn runs(k: &[usize]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        (i < k.len()).then(|| {
            let start = i;
            i += 1;
            while i < k.len() && k[i] == k[i - 1] + 1 {
                i += 1;
            }
            start..i
        })
    })
}

/// Copies each head's valid rows from `old` (laid out by `from`) into `buffer` (laid out
/// by `to`, same heads and counts); returns the buffer.
fn copy_regions<B: Backend>(
    buffer: Tensor<B, 2>,
    old: &Tensor<B, 2>,
    from: &[HeadSpan],
    to: &[HeadSpan],
) -> Tensor<B, 2> {
    let dim = buffer.dims()[1];
    #[cfg(feature = "flex")]
    let buffer = match crate::host::flex(old).map(|t| t.to_contiguous()) {
        Some(src) => {
            let src = src.storage::<f32>();
            let (buffer, ran) = crate::host::write_in_place(buffer, |dst| {
                for (a, b) in from.iter().zip(to) {
                    let n = a.len * dim;
                    dst[b.start * dim..b.start * dim + n]
                        .copy_from_slice(&src[a.start * dim..a.start * dim + n]);
                }
            });
            if ran {
                return buffer;
            }
            buffer
        }
        None => buffer,
    };
    from.iter()
        .zip(to)
        .filter(|(a, _)| a.len > 0)
        .fold(buffer, |buffer, (a, b)| {
            let rows = old.clone().narrow(0, a.start, a.len);
            buffer.slice_assign(s![b.start..b.start + a.len, 0..dim], rows)
        })
}

/// How one KV head's kept rows move inside its region when others are evicted.
///
/// The kept rows stay in order. Either the rows before the first evicted one stay put and
/// the later kept rows move down to follow them (`from_front == false`, the region's start
/// kept), or the rows after the last evicted one stay put and the earlier kept rows move
/// up to meet them (`from_front == true`, the head's first row moves up by the number
/// evicted). Only the rows of `keep[moved]` change place, to region rows `to..`.
#[derive(Debug, Clone)]
struct Compaction {
    from_front: bool,
    /// Buffer row of the head's current first row.
    start: usize,
    /// Indices into `keep` of the rows that move.
    moved: std::ops::Range<usize>,
    /// Buffer row the first moved row lands on.
    to: usize,
}

impl Compaction {
    /// The cheaper of the two moves when `shortest` (else always the first), for a head
    /// at `span` keeping its rows `keep` (strictly ascending, in range).
    fn plan(keep: &[usize], span: &HeadSpan, shortest: bool) -> Self {
        let (n, m) = (span.len, keep.len());
        let unmoved = keep
            .iter()
            .enumerate()
            .take_while(|&(i, &j)| i == j)
            .count();
        let settled = keep
            .iter()
            .rev()
            .enumerate()
            .take_while(|&(i, &j)| j == n - 1 - i)
            .count();
        if shortest && settled > unmoved {
            Self {
                from_front: true,
                start: span.start,
                moved: 0..m - settled,
                to: span.start + n - m,
            }
        } else {
            Self {
                from_front: false,
                start: span.start,
                moved: unmoved..m,
                to: span.start + unmoved,
            }
        }
    }
}

/// Moves every head's rows as its [`Compaction`] says (row `keep[h][i]` of the head to
/// buffer row `to + i - moved.start`); returns the buffer (same size).
fn compact_rows<B: Backend>(
    buffer: Tensor<B, 2>,
    moves: &[Compaction],
    keep: &[Vec<usize>],
) -> Tensor<B, 2> {
    let dim = buffer.dims()[1];
    #[cfg(feature = "flex")]
    let buffer = {
        let (buffer, ran) = crate::host::write_in_place(buffer, |data| {
            for (k, plan) in keep.iter().zip(moves) {
                // Runs of consecutive kept rows move with one copy each. Moving down,
                // sources sit at or after their destinations: copy the runs first to
                // last. Moving up, they sit at or before them: copy last to first.
                let moved = &k[plan.moved.clone()];
                let mut runs: Vec<std::ops::Range<usize>> = runs(moved).collect();
                if plan.from_front {
                    runs.reverse();
                }
                for run in runs {
                    let src = plan.start + moved[run.start];
                    let dst = plan.to + run.start;
                    if src != dst {
                        data.copy_within(src * dim..(src + run.len()) * dim, dst * dim);
                    }
                }
            }
        });
        if ran {
            return buffer;
        }
        buffer
    };
    let device = buffer.device();
    keep.iter()
        .zip(moves)
        .filter(|(_, plan)| !plan.moved.is_empty())
        .fold(buffer, |buffer, (k, plan)| {
            let flat: Vec<i64> = k[plan.moved.clone()]
                .iter()
                .map(|&i| (plan.start + i) as i64)
                .collect();
            let n = flat.len();
            let rows: Tensor<B, 1, Int> = Tensor::from_data(TensorData::new(flat, [n]), &device);
            // [n, d]
            let moved = buffer.clone().select(0, rows);
            buffer.slice_assign(s![plan.to..plan.to + n, 0..dim], moved)
        })
}
