//! The per-layer key/value cache that every model and every policy share.
//!
//! # Storage
//! Keys and values live in buffers of `capacity` rows per KV head, `[Hkv, capacity, d]`,
//! of which the first `len` rows per head are valid. Appending writes the new rows into
//! the spare capacity (in place on the CPU backend, a `slice_assign` elsewhere) and grows
//! the buffers by whole blocks of [`GROWTH_BLOCK`] rows (and at least a quarter of their
//! size) only when they are full, so a decoding step costs one row write instead of a
//! copy of the whole cache. Eviction compacts the kept rows to the front of the same
//! buffers (only rows after the first evicted one move) and gives memory back by
//! shrinking the buffers when much more than a block would stay unused.
//!
//! Rows are addressed per KV head (head `h`'s rows start at `h * capacity`), so heads
//! could hold different row counts; today every head holds `len` rows (per-head budgets
//! are future work, see the crate README).

use burn::tensor::{Int, Tensor, TensorData, backend::Backend, s};

use crate::error::CacheError;

/// Rows per KV head that buffers grow (and are rounded) by.
pub const GROWTH_BLOCK: usize = 128;

/// Keys and values of one decoder layer, stored per KV head (no GQA repetition).
///
/// `positions[h]` holds the absolute position of each of the `len` cached tokens of KV
/// head `h` (heads may keep different tokens after eviction, but always the same number of
/// them); `scores`, when present, is `[Hkv, len]`: the surviving eviction scores of the
/// cached tokens, so that a later cascade stage re-ranks survivors with the scores they
/// were selected by.
///
/// Eviction moves the kept rows together and shrinks the buffers: evicted memory is
/// released, never masked.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    /// `[Hkv, capacity, d]`
    keys: Option<Tensor<B, 3>>,
    /// `[Hkv, capacity, d]`
    values: Option<Tensor<B, 3>>,
    len: usize,
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
            len: 0,
            positions: Vec::new(),
            scores: None,
        }
    }

    /// Appends `n` new tokens whose absolute positions are `start_pos..start_pos + n`.
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
            let [h, _, d] = k.dims();
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
        }
        for head in &mut self.positions {
            head.extend(start_pos..start_pos + n);
        }
        let len = self.len;
        self.reserve(len + n, heads, dim, &keys.device());
        self.keys = self.keys.take().map(|buf| write_rows(buf, keys, len));
        self.values = self.values.take().map(|buf| write_rows(buf, values, len));
        self.len += n;
        self.scores = self.scores.take().map(|old| {
            let device = old.device();
            Tensor::cat(vec![old, Tensor::zeros([heads, n], &device)], 1)
        });
        Ok(())
    }

    /// Makes room for `rows` rows per head, growing by blocks (at least a quarter of the
    /// current capacity, so that appends stay amortised O(1), and one spare block, so that
    /// the decoding steps right after a prefill write in place).
    fn reserve(&mut self, rows: usize, heads: usize, dim: usize, device: &B::Device) {
        let capacity = self.capacity();
        if rows <= capacity {
            return;
        }
        let new_capacity = round_up(rows.max(capacity + capacity / 4)) + GROWTH_BLOCK;
        self.resize(new_capacity, heads, dim, device);
    }

    /// Moves the valid rows into new buffers of `capacity` rows per head.
    fn resize(&mut self, capacity: usize, heads: usize, dim: usize, device: &B::Device) {
        let len = self.len;
        let grow = |old: Option<Tensor<B, 3>>| {
            let fresh = Tensor::<B, 3>::zeros([heads, capacity, dim], device);
            match old {
                Some(old) if len > 0 => write_rows(fresh, old.narrow(1, 0, len), 0),
                _ => fresh,
            }
        };
        self.keys = Some(grow(self.keys.take()));
        self.values = Some(grow(self.values.take()));
    }

    /// Cached keys `[Hkv, len, d]` (a view of the buffer), or `None` when empty.
    pub fn keys(&self) -> Option<Tensor<B, 3>> {
        self.keys.as_ref().map(|k| k.clone().narrow(1, 0, self.len))
    }

    /// Cached values `[Hkv, len, d]` (a view of the buffer), or `None` when empty.
    pub fn values(&self) -> Option<Tensor<B, 3>> {
        self.values
            .as_ref()
            .map(|v| v.clone().narrow(1, 0, self.len))
    }

    /// The whole key and value buffers, `[Hkv, capacity, d]` each, of which the first
    /// [`LayerCache::len`] rows per head are valid; `None` when nothing was ever cached.
    /// For kernels that read the cache in place.
    pub fn buffers(&self) -> Option<(&Tensor<B, 3>, &Tensor<B, 3>)> {
        self.keys.as_ref().zip(self.values.as_ref())
    }

    /// Number of cached tokens per KV head.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Rows per KV head the buffers can hold before growing.
    pub fn capacity(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.dims()[1])
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of KV heads (0 when empty).
    pub fn num_kv_heads(&self) -> usize {
        self.positions.len()
    }

    /// Absolute positions of the cached tokens, per KV head: `[Hkv][len]`, ascending.
    pub fn positions(&self) -> &[Vec<usize>] {
        &self.positions
    }

    /// Surviving eviction scores `[Hkv, len]`, if the cache has been scored.
    pub fn scores(&self) -> Option<&Tensor<B, 2>> {
        self.scores.as_ref()
    }

    /// Attaches eviction scores `[Hkv, len]` to the cached tokens.
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

    /// Bytes of the key and value rows held (`2 * Hkv * len * d` elements of the
    /// backend's float type): what the policy keeps.
    pub fn bytes(&self) -> usize {
        let Some(keys) = &self.keys else { return 0 };
        let [heads, _, dim] = keys.dims();
        2 * heads * self.len * dim * keys.dtype().size()
    }

    /// Bytes allocated by the buffers (held rows plus spare capacity).
    pub fn allocated_bytes(&self) -> usize {
        let count = |t: &Option<Tensor<B, 3>>| t.as_ref().map_or(0, |t| t.shape().num_elements());
        let elem = self.keys.as_ref().map_or(0, |k| k.dtype().size());
        (count(&self.keys) + count(&self.values)) * elem
    }

    /// Keeps, for every KV head `h`, the rows `keep[h]` (indices into the current cache,
    /// strictly ascending, the same count for every head) and releases all others.
    ///
    /// # Errors
    /// When there is not one list per head, the heads keep different counts, or an index
    /// is out of range, repeated or out of order; the cache is then unchanged.
    pub fn retain(&mut self, keep: &[Vec<usize>]) -> Result<(), CacheError> {
        let heads = self.num_kv_heads();
        let len = self.len;
        if keep.len() != heads {
            return Err(CacheError::Retain(format!(
                "{} keep lists for {heads} KV heads",
                keep.len()
            )));
        }
        let kept = keep.first().map_or(0, Vec::len);
        if keep.iter().any(|k| k.len() != kept) {
            return Err(CacheError::Retain("KV heads keep different counts".into()));
        }
        for k in keep {
            if k.windows(2).any(|w| w[0] >= w[1]) {
                return Err(CacheError::Retain(
                    "kept indices must be strictly ascending".into(),
                ));
            }
            if let Some(&i) = k.last().filter(|&&i| i >= len) {
                return Err(CacheError::Retain(format!(
                    "kept index {i} out of range (cache holds {len})"
                )));
            }
        }
        // Rows before the first evicted one stay where they are.
        let first_moved = keep
            .iter()
            .map(|k| k.iter().enumerate().take_while(|&(i, &j)| i == j).count())
            .min()
            .unwrap_or(0);
        if first_moved == kept && kept == len {
            return Ok(());
        }
        if let (Some(k), Some(v)) = (self.keys.take(), self.values.take()) {
            self.keys = Some(compact_rows(k, keep, first_moved));
            self.values = Some(compact_rows(v, keep, first_moved));
        }
        self.scores = self.scores.take().map(|s| gather_scores(s, keep, len));
        self.positions = keep
            .iter()
            .zip(&self.positions)
            .map(|(k, pos)| k.iter().map(|&i| pos[i]).collect())
            .collect();
        self.len = kept;
        // Give memory back when more than two blocks would stay unused.
        let capacity = self.capacity();
        if capacity > round_up(kept) + 2 * GROWTH_BLOCK
            && let Some(k) = &self.keys
        {
            let [heads, _, dim] = k.dims();
            let device = k.device();
            self.resize(round_up(kept) + GROWTH_BLOCK, heads, dim, &device);
        }
        Ok(())
    }
}

/// The scores `[Hkv, len]` of the kept tokens `keep[h]`: `[Hkv, kept]`, gathered on the
/// host buffer on the CPU backend (a decoding step evicts every step), by a device
/// `select` elsewhere.
fn gather_scores<B: Backend>(
    scores: Tensor<B, 2>,
    keep: &[Vec<usize>],
    len: usize,
) -> Tensor<B, 2> {
    let heads = keep.len();
    let kept = keep.first().map_or(0, Vec::len);
    #[cfg(feature = "flex")]
    if let Some(host) = crate::host::flex(&scores).map(|t| t.to_contiguous())
        && let Some(data) = crate::host::contiguous(&host)
    {
        let gathered: Vec<f32> = keep
            .iter()
            .enumerate()
            .flat_map(|(h, k)| k.iter().map(move |&i| data[h * len + i]))
            .collect();
        return Tensor::from_data(TensorData::new(gathered, [heads, kept]), &scores.device());
    }
    let rows = flat_rows(keep, 0, len, &scores.device());
    scores
        .reshape([heads * len])
        .select(0, rows)
        .reshape([heads, kept])
}

/// Row indices into the `[Hkv * len]` flattening of the kept rows `keep[h][from..]`.
fn flat_rows<B: Backend>(
    keep: &[Vec<usize>],
    from: usize,
    len: usize,
    device: &B::Device,
) -> Tensor<B, 1, Int> {
    let flat: Vec<i64> = keep
        .iter()
        .enumerate()
        .flat_map(|(h, k)| k[from..].iter().map(move |&i| (h * len + i) as i64))
        .collect();
    let n = flat.len();
    Tensor::from_data(TensorData::new(flat, [n]), device)
}

/// Writes `rows` (`[Hkv, n, d]`) into `buffer` (`[Hkv, capacity, d]`) at rows
/// `at..at + n` of every head; returns the buffer.
fn write_rows<B: Backend>(buffer: Tensor<B, 3>, rows: Tensor<B, 3>, at: usize) -> Tensor<B, 3> {
    let [heads, n, dim] = rows.dims();
    #[cfg(feature = "flex")]
    let buffer = {
        let capacity = buffer.dims()[1];
        let source = crate::host::flex(&rows);
        match source {
            Some(src) => {
                let src = src.to_contiguous();
                let src = src.storage::<f32>();
                let (buffer, ran) = crate::host::write_in_place(buffer, |dst| {
                    for h in 0..heads {
                        let to = (h * capacity + at) * dim;
                        dst[to..to + n * dim].copy_from_slice(&src[h * n * dim..(h + 1) * n * dim]);
                    }
                });
                if ran {
                    return buffer;
                }
                buffer
            }
            None => buffer,
        }
    };
    buffer.slice_assign(s![0..heads, at..at + n, 0..dim], rows)
}

/// Moves, in every head `h`, row `keep[h][i]` to row `i` for `i >= from` (rows before
/// `from` already sit in place); returns the buffer (same capacity).
fn compact_rows<B: Backend>(
    buffer: Tensor<B, 3>,
    keep: &[Vec<usize>],
    from: usize,
) -> Tensor<B, 3> {
    let [heads, capacity, dim] = buffer.dims();
    let kept = keep.first().map_or(0, Vec::len);
    if from >= kept {
        return buffer;
    }
    #[cfg(feature = "flex")]
    let buffer = {
        let (buffer, ran) = crate::host::write_in_place(buffer, |data| {
            for (h, k) in keep.iter().enumerate() {
                let base = h * capacity;
                // Runs of consecutive kept rows move with one copy each; ascending sources
                // sit at or after their destinations, so forward copies are safe.
                let mut i = from;
                while i < k.len() {
                    let mut end = i + 1;
                    while end < k.len() && k[end] == k[end - 1] + 1 {
                        end += 1;
                    }
                    let (src, rows) = (k[i], end - i);
                    if src != i {
                        data.copy_within(
                            (base + src) * dim..(base + src + rows) * dim,
                            (base + i) * dim,
                        );
                    }
                    i = end;
                }
            }
        });
        if ran {
            return buffer;
        }
        buffer
    };
    let device = buffer.device();
    let rows = flat_rows::<B>(keep, from, capacity, &device);
    let n = kept - from;
    // [Hkv * capacity, d] -> [Hkv * n, d] -> [Hkv, n, d]
    let moved = buffer
        .clone()
        .reshape([heads * capacity, dim])
        .select(0, rows)
        .reshape([heads, n, dim]);
    buffer.slice_assign(s![0..heads, from..kept, 0..dim], moved)
}
