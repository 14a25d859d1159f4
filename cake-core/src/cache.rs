//! The per-layer key/value cache that every model and every policy share.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

/// Keys and values of one decoder layer, stored per KV head (no GQA repetition).
///
/// Shapes: keys and values are `[Hkv, len, d]`; `positions[h]` holds the absolute
/// position of each of the `len` cached tokens of KV head `h` (heads may keep different
/// tokens after eviction, but always the same number of them); `scores`, when present, is
/// `[Hkv, len]`: the surviving eviction scores of the cached tokens, so that a later
/// cascade stage re-ranks survivors with the scores they were selected by.
///
/// Eviction gathers the kept rows into new, smaller tensors: evicted memory is released,
/// never masked.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    keys: Option<Tensor<B, 3>>,
    values: Option<Tensor<B, 3>>,
    positions: Vec<Vec<usize>>,
    scores: Option<Tensor<B, 2>>,
}

impl<B: Backend> Default for LayerCache<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Backend> LayerCache<B> {
    /// An empty cache.
    pub fn new() -> Self {
        Self {
            keys: None,
            values: None,
            positions: Vec::new(),
            scores: None,
        }
    }

    /// Appends `n` new tokens whose absolute positions are `start_pos..start_pos + n`.
    ///
    /// `keys`, `values`: `[Hkv, n, d]`. When the cache carries scores, the new rows get
    /// score 0 (policies that rank them re-score after appending, see
    /// [`LayerCache::set_scores`]; accumulating ones such as H2O add to it).
    pub fn append(&mut self, keys: Tensor<B, 3>, values: Tensor<B, 3>, start_pos: usize) {
        let [heads, n, _] = keys.dims();
        if self.positions.is_empty() {
            self.positions = vec![Vec::new(); heads];
        }
        for head in &mut self.positions {
            head.extend(start_pos..start_pos + n);
        }
        self.keys = Some(match self.keys.take() {
            Some(old) => Tensor::cat(vec![old, keys], 1),
            None => keys,
        });
        self.values = Some(match self.values.take() {
            Some(old) => Tensor::cat(vec![old, values], 1),
            None => values,
        });
        self.scores = self.scores.take().map(|old| {
            let [heads, _] = old.dims();
            let device = old.device();
            Tensor::cat(vec![old, Tensor::zeros([heads, n], &device)], 1)
        });
    }

    /// Cached keys `[Hkv, len, d]`, or `None` when empty.
    pub fn keys(&self) -> Option<&Tensor<B, 3>> {
        self.keys.as_ref()
    }

    /// Cached values `[Hkv, len, d]`, or `None` when empty.
    pub fn values(&self) -> Option<&Tensor<B, 3>> {
        self.values.as_ref()
    }

    /// Number of cached tokens per KV head.
    pub fn len(&self) -> usize {
        self.positions.first().map_or(0, Vec::len)
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    pub fn set_scores(&mut self, scores: Tensor<B, 2>) {
        debug_assert_eq!(scores.dims(), [self.num_kv_heads(), self.len()]);
        self.scores = Some(scores);
    }

    /// Bytes held by the key and value tensors (element size of the backend's float type).
    pub fn bytes(&self) -> usize {
        let elem = self.keys.as_ref().map_or(0, |k| k.dtype().size());
        let count = |t: &Option<Tensor<B, 3>>| t.as_ref().map_or(0, |t| t.shape().num_elements());
        (count(&self.keys) + count(&self.values)) * elem
    }

    /// Keeps, for every KV head `h`, the rows `keep[h]` (indices into the current cache,
    /// strictly ascending, the same count for every head) and releases all others.
    ///
    /// # Panics
    /// When the heads keep different counts or an index is out of range: both are bugs of
    /// the caller (policies compute `keep`), never user input.
    pub fn retain(&mut self, keep: &[Vec<usize>]) {
        let (Some(keys), Some(values)) = (self.keys.take(), self.values.take()) else {
            return;
        };
        let [heads, len, dim] = keys.dims();
        assert_eq!(keep.len(), heads, "one keep list per KV head");
        let kept = keep.first().map_or(0, Vec::len);
        assert!(
            keep.iter().all(|k| k.len() == kept),
            "heads keep equal counts"
        );
        assert!(
            keep.iter().flatten().all(|&i| i < len),
            "kept index out of range"
        );
        let device = keys.device();
        // Row indices into the `[Hkv * len]` flattening: a contiguous row copy per kept
        // token (an index select), much cheaper than an element-wise gather.
        let flat: Vec<i64> = keep
            .iter()
            .enumerate()
            .flat_map(|(h, k)| k.iter().map(move |&i| (h * len + i) as i64))
            .collect();
        // [Hkv * kept]
        let rows: Tensor<B, 1, Int> =
            Tensor::from_data(TensorData::new(flat, [heads * kept]), &device);
        // [Hkv, len, d] -> [Hkv * len, d] -> [Hkv * kept, d] -> [Hkv, kept, d]
        let select = |t: Tensor<B, 3>| {
            t.reshape([heads * len, dim])
                .select(0, rows.clone())
                .reshape([heads, kept, dim])
        };
        self.keys = Some(select(keys));
        self.values = Some(select(values));
        self.scores = self.scores.take().map(|s| {
            s.reshape([heads * len])
                .select(0, rows.clone())
                .reshape([heads, kept])
        });
        self.positions = keep
            .iter()
            .zip(&self.positions)
            .map(|(k, pos)| k.iter().map(|&i| pos[i]).collect())
            .collect();
    }
}
