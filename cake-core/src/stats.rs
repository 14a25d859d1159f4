//! Window statistics as tensor functions generic over Burn's `Backend`
//! (`docs/algorithm.md`, sections 1-3), plus the host-side top-k used by eviction.
//!
//! All softmaxes run in f32 whatever the backend's float type.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::{
    Bool, DType, ElementConversion, IndexingUpdateOp, Int, Tensor, TensorData, activation::softmax,
    backend::Backend, module::avg_pool1d,
};

use crate::allocator::LayerPreference;

/// Softmax attention of `queries` over `keys` with grouped-query sharing.
///
/// `queries`: `[H, n, d]`, `keys`: `[Hkv, S, d]`, `H = G * Hkv`, query head `h` reads KV
/// head `h / G`. Scores are scaled by `1 / sqrt(d)` and softmaxed over keys in f32.
/// With `causal_from = Some(p)`, query row `i` sits at key index `p + i` and cannot see
/// keys after it; `None` lets every query see every key (a decoding query).
/// Returns `[H, n, S]` (f32). On the CPU backend this runs the host attention kernel
/// (the model's own), elsewhere [`attention_generic`].
pub fn attention<B: Backend>(
    queries: Tensor<B, 3>,
    keys: Tensor<B, 3>,
    causal_from: Option<usize>,
) -> Tensor<B, 3> {
    #[cfg(feature = "flex")]
    if let Some(probs) = crate::host::attention_probabilities(&queries, &keys, causal_from) {
        return probs;
    }
    attention_generic(queries, keys, causal_from)
}

/// [`attention`] by Burn tensor operations (every backend; the reference of the CPU
/// backend's host kernel in the tests).
pub fn attention_generic<B: Backend>(
    queries: Tensor<B, 3>,
    keys: Tensor<B, 3>,
    causal_from: Option<usize>,
) -> Tensor<B, 3> {
    let [heads, n, dim] = queries.dims();
    let [kv_heads, len, _] = keys.dims();
    let group = heads / kv_heads.max(1);
    let scale = 1.0 / (dim as f64).sqrt();
    // [Hkv, G * n, d]: query head h = kv * G + g, rows ordered (g, i).
    let q = queries.cast(DType::F32).reshape([kv_heads, group * n, dim]);
    // [Hkv, d, S]
    let k = keys.cast(DType::F32).swap_dims(1, 2);
    // [H * n, S]: 2-D from here on (the CPU backend's broadcasting 3-D ops run element
    // by element; its 2-D ones run row by row).
    let scores = q.matmul(k).mul_scalar(scale).reshape([heads * n, len]);
    let scores = match causal_from {
        // Only the keys after `first` can be hidden from some query: mask that tail alone.
        Some(first) if first + 1 < len => {
            let tail = len - first - 1;
            let device = scores.device();
            // Row h * n + i is query i (at key index first + i); tail column t is key first + 1 + t.
            let mask: Vec<bool> = (0..heads)
                .flat_map(|_| (0..n).flat_map(move |i| (0..tail).map(move |t| t >= i)))
                .collect();
            // [H * n, tail]
            let mask =
                Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, [heads * n, tail]), &device);
            let visible = scores.clone().narrow(1, 0, first + 1);
            let masked = scores
                .narrow(1, first + 1, tail)
                .mask_fill(mask, f32::NEG_INFINITY);
            Tensor::cat(vec![visible, masked], 1)
        }
        _ => scores,
    };
    softmax(scores, 1).reshape([heads, n, len])
}

/// Window attention `A[h, q, j]` of the last `window` queries over all `S` keys,
/// causal inside the last `w x w` block (section 1).
///
/// `queries`: `[H, S, d]` post-RoPE, `keys`: `[Hkv, S, d]`. The window is clamped to
/// `S`. Returns `[H, w, S]`.
pub fn window_attention<B: Backend>(
    queries: Tensor<B, 3>,
    keys: Tensor<B, 3>,
    window: usize,
) -> Tensor<B, 3> {
    let [_, s_q, _] = queries.dims();
    let [_, len, _] = keys.dims();
    let w = window.min(s_q).min(len);
    // [H, w, d]
    let last = queries.narrow(1, s_q - w, w);
    attention(last, keys, Some(len - w))
}

/// Layer preference parts from window attention `[H, w, S]` (section 2): over the keys
/// before the window `A_p = A[:, :, ..S - w]`, `H = -sum A_p ln(A_p + 1e-10)` and
/// `V = sum_{h,j} var_q A_p` (unbiased; 0 when `w < 2`). Both are 0 when `S <= w`.
pub fn layer_preference<B: Backend>(attn: &Tensor<B, 3>) -> LayerPreference {
    let [_, w, len] = attn.dims();
    let prefix = len.saturating_sub(w);
    if prefix == 0 || w == 0 {
        return LayerPreference::default();
    }

    count_readback(2);
    #[cfg(feature = "flex")]
    if let Some((entropy, variance)) = crate::host::preference_sums(attn, prefix) {
        return LayerPreference { entropy, variance };
    }
    // [H, w, S - w]
    let a = attn.clone().narrow(2, 0, prefix);
    let terms = a.clone() * a.clone().add_scalar(1e-10).log();
    let entropy = -terms.sum().into_scalar().elem::<f64>();
    let variance = if w >= 2 {
        unbiased_var(a).sum().into_scalar().elem::<f64>()
    } else {
        0.0
    };
    LayerPreference { entropy, variance }
}

/// Per-query-head statistic `mean_q A + gamma * var_q A` over the window queries
/// (unbiased variance, 0 when `w < 2`): `[H, w, N] -> [H, N]` (section 3, before pooling).
pub fn mean_plus_var<B: Backend>(attn: Tensor<B, 3>, gamma: f64) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    if let Some(stat) = crate::host::mean_plus_var(&attn, gamma) {
        return stat;
    }
    let [heads, w, n] = attn.dims();
    let out = if w >= 2 && gamma != 0.0 {
        let (var, mean) = unbiased_var_mean(attn);
        mean + var.mul_scalar(gamma)
    } else {
        attn.mean_dim(1)
    };
    out.reshape([heads, n])
}

/// Unbiased variance over axis 1 of `[H, w, N]` -> `[H, 1, N]`, with its mean.
///
/// Computed as `(sum x^2 - w * mean^2) / (w - 1)` (clamped at 0): only reductions and
/// element-wise ops on `[H, 1, N]`, about 6x faster on the CPU backend than centring with a
/// broadcast. For attention probabilities in `[0, 1]` the cancellation error is below
/// `1e-7 * mean(x^2)`, far under what eviction can notice (checked against PyTorch in
/// the tests).
pub fn unbiased_var_mean<B: Backend>(x: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 3>) {
    let w = x.dims()[1] as f64;
    let sum = x.clone().sum_dim(1);
    let sum_sq = (x.clone() * x).sum_dim(1);
    let mean = sum.div_scalar(w);
    let var = (sum_sq - mean.clone() * mean.clone() * w)
        .div_scalar((w - 1.0).max(1.0))
        .clamp_min(0.0);
    (var, mean)
}

fn unbiased_var<B: Backend>(x: Tensor<B, 3>) -> Tensor<B, 3> {
    unbiased_var_mean(x).0
}

/// 1-D average pooling along the last axis: width `kernel` (odd), stride 1, zero
/// padding `kernel / 2`, always divided by `kernel`. `[R, N] -> [R, N]`.
pub fn avg_pool<B: Backend>(scores: Tensor<B, 2>, kernel: usize) -> Tensor<B, 2> {
    let [rows, n] = scores.dims();
    if kernel <= 1 || n == 0 {
        return scores;
    }
    // [R, 1, N]
    let x = scores.reshape([rows, 1, n]);
    avg_pool1d(x, kernel, 1, kernel / 2, true, false).reshape([rows, n])
}

/// Pools the first `candidates` columns of `[R, N]` (zero padding at their edge, as if
/// the rest did not exist) and leaves the other columns as they are.
pub fn pool_prefix<B: Backend>(
    scores: Tensor<B, 2>,
    candidates: usize,
    kernel: usize,
) -> Tensor<B, 2> {
    let [_, n] = scores.dims();
    let candidates = candidates.min(n);
    if kernel <= 1 || candidates == 0 {
        return scores;
    }
    #[cfg(feature = "flex")]
    if let Some(pooled) = crate::host::pool_prefix(&scores, candidates, kernel) {
        return pooled;
    }
    if candidates == n {
        return avg_pool(scores, kernel);
    }
    let head = avg_pool(scores.clone().narrow(1, 0, candidates), kernel);
    let tail = scores.narrow(1, candidates, n - candidates);
    Tensor::cat(vec![head, tail], 1)
}

/// Mean over the `G = H / Hkv` query heads of each KV head: `[H, N] -> [Hkv, N]`.
pub fn group_mean<B: Backend>(scores: Tensor<B, 2>, num_kv_heads: usize) -> Tensor<B, 2> {
    let [heads, n] = scores.dims();
    let kv = num_kv_heads.max(1);
    if kv == heads {
        return scores;
    }
    #[cfg(feature = "flex")]
    if let Some(mean) = crate::host::group_mean(&scores, kv) {
        return mean;
    }
    scores
        .reshape([kv, heads / kv, n])
        .mean_dim(1)
        .reshape([kv, n])
}

/// CAKE's eviction indicator for window attention `[H, w, S]` (section 3):
/// `mean_q A + gamma * var_q A`, pooled over the `S - w` keys before the window, then
/// averaged over each KV head's query group. Returns `[Hkv, S]`; the last `w` columns
/// (the window, always kept) carry the unpooled statistic.
pub fn cake_indicator<B: Backend>(
    attn: Tensor<B, 3>,
    gamma: f64,
    kernel: usize,
    num_kv_heads: usize,
) -> Tensor<B, 2> {
    let [_, w, len] = attn.dims();
    let stat = mean_plus_var(attn, gamma); // [H, S]
    let pooled = pool_prefix(stat, len.saturating_sub(w), kernel); // [H, S]
    group_mean(pooled, num_kv_heads) // [Hkv, S]
}

/// The token [`top_k_indices`] drops when it keeps all but one of `row`: the smallest
/// score (NaN lowest) at the earliest index, found in one pass instead of a selection and
/// a sort (a decoding step). `None` for an empty row.
pub fn lowest_index(row: &[f32]) -> Option<usize> {
    with_avx2!(lowest_index_body(row))
}

#[inline(always)]
fn lowest_index_body(row: &[f32]) -> Option<usize> {
    // `total_cmp`'s order as integers (NaN as -inf), so that the minimum is a vectorised
    // pass.
    let ordered = |x: f32| {
        let x = if x.is_nan() { f32::NEG_INFINITY } else { x };
        let bits = x.to_bits() as i32;
        bits ^ (((bits >> 31) as u32) >> 1) as i32
    };
    let lowest = row.iter().map(|&x| ordered(x)).min()?;
    row.iter().position(|&x| ordered(x) == lowest)
}

/// Indices of the `k` largest values of `row`, ascending. Ties go to the later index
/// (the more recent token); NaN ranks below everything.
pub fn top_k_indices(row: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(row.len());
    let key = |i: usize| {
        if row[i].is_nan() {
            f32::NEG_INFINITY
        } else {
            row[i]
        }
    };
    if k + 1 == row.len() {
        let drop = lowest_index(row).unwrap_or(0);
        let mut kept = Vec::with_capacity(k);
        kept.extend(0..drop);
        kept.extend(drop + 1..row.len());
        return kept;
    }
    let mut idx: Vec<usize> = (0..row.len()).collect();
    // Descending by (score, index).
    let cmp = |a: &usize, b: &usize| key(*b).total_cmp(&key(*a)).then(b.cmp(a));
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, cmp);
    }
    idx.truncate(k);
    idx.sort_unstable();
    idx
}

/// What cake-core read back from tensors to the host: tensors and elements (scores,
/// statistics, selected indices). On a GPU backend every read back is a synchronisation
/// and a transfer, so tests count them.
///
/// Counts are kept per calling thread *with the work it hands to cake-core's worker
/// threads* ([`readbacks`]; e.g. the CPU backend's evictions of all layers at once run on
/// rayon workers, which charge the thread that asked for them), and for the whole
/// process ([`process_readbacks`]). Differences of [`readbacks`] around a call are exact
/// even while other threads (e.g. the test harness's) read back too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readbacks {
    /// Tensors read back.
    pub tensors: usize,
    /// Elements read back, all tensors together.
    pub elements: usize,
}

/// Read-back counts that several threads may add to.
#[derive(Debug, Default)]
struct Counter {
    tensors: AtomicUsize,
    elements: AtomicUsize,
}

impl Counter {
    const fn new() -> Self {
        Self {
            tensors: AtomicUsize::new(0),
            elements: AtomicUsize::new(0),
        }
    }

    fn add(&self, elements: usize) {
        self.tensors.fetch_add(1, Ordering::Relaxed);
        self.elements.fetch_add(elements, Ordering::Relaxed);
    }

    fn get(&self) -> Readbacks {
        Readbacks {
            tensors: self.tensors.load(Ordering::Relaxed),
            elements: self.elements.load(Ordering::Relaxed),
        }
    }
}

/// Every read back of the process.
static PROCESS: Counter = Counter::new();

thread_local! {
    /// This thread's account, read by [`readbacks`].
    static OWN: Arc<Counter> = Arc::new(Counter::new());
    /// The account this thread's read backs go to while it works for another thread
    /// ([`ReadbackAccount::charge`]); `None`: its own.
    static CHARGED: Cell<Option<Arc<Counter>>> = const { Cell::new(None) };
}

/// The read backs of cake-core charged to the calling thread so far: its own, and those
/// of the work cake-core ran for it on other threads (see [`Readbacks`]). Take the
/// difference around a call to count that call's.
pub fn readbacks() -> Readbacks {
    OWN.with(|own| own.get())
}

/// The read backs of cake-core on every thread of the process so far (a difference
/// around a call also counts what other threads did meanwhile).
pub fn process_readbacks() -> Readbacks {
    PROCESS.get()
}

/// The read-back account of a thread, to charge with the read backs of work done for it
/// on other threads (cake-core does so for its own parallel work; a caller that runs
/// cake-core functions on a thread pool of its own may do the same).
///
/// ```
/// use cake_core::stats::ReadbackAccount;
///
/// let account = ReadbackAccount::current();
/// let handles: Vec<_> = (0..2)
///     .map(|_| {
///         let account = account.clone();
///         std::thread::spawn(move || account.charge(|| 1 + 1))
///     })
///     .collect();
/// let sums: Vec<i32> = handles.into_iter().map(|h| h.join().unwrap()).collect();
/// assert_eq!(sums, [2, 2]);
/// ```
#[derive(Debug, Clone)]
pub struct ReadbackAccount(Arc<Counter>);

impl ReadbackAccount {
    /// The account the calling thread's read backs go to now: its own, or the one it is
    /// working for inside [`ReadbackAccount::charge`].
    pub fn current() -> Self {
        Self(charged().unwrap_or_else(|| OWN.with(Arc::clone)))
    }

    /// Runs `f` on the calling thread with its read backs charged to this account (and
    /// to the process), then restores the thread's previous account (also on a panic).
    pub fn charge<R>(&self, f: impl FnOnce() -> R) -> R {
        /// Puts the previous account back when dropped.
        struct Restore(Option<Arc<Counter>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                CHARGED.with(|c| c.set(previous));
            }
        }
        let _restore = Restore(CHARGED.with(|c| c.replace(Some(Arc::clone(&self.0)))));
        f()
    }
}

/// The account the calling thread works for inside [`ReadbackAccount::charge`].
fn charged() -> Option<Arc<Counter>> {
    CHARGED.with(|c| {
        let account = c.take();
        c.set(account.clone());
        account
    })
}

fn count_readback(elements: usize) {
    PROCESS.add(elements);
    match charged() {
        Some(account) => account.add(elements),
        None => OWN.with(|own| own.add(elements)),
    }
}

/// The kept columns, per row of `scores` (`[R, N]`), as [`top_k_indices`] picks them: the
/// `keep` best of the first `candidates` columns, ascending. The ranking runs on the
/// tensor's device, and only the smaller side of the split comes back to the host: the
/// `R x keep` kept indices, or the `R x (candidates - keep)` evicted ones (one per row
/// for the paper's one-token decoding eviction). Ties and NaN rank exactly as on the host
/// (ties go to the later index, NaN below everything), whatever order the backend's own
/// top-k gives equal values: max-pooled scores tie often, so every backend keeps the same
/// tokens.
pub fn top_k_on_device<B: Backend>(
    scores: Tensor<B, 2>,
    candidates: usize,
    keep: usize,
) -> Vec<Vec<usize>> {
    let [rows, n] = scores.dims();
    let candidates = candidates.min(n);
    let keep = keep.min(candidates);
    let evict = candidates - keep;
    if keep == 0 || evict == 0 {
        return vec![(0..keep).collect(); rows];
    }
    // [R, candidates], NaN ranked below everything.
    let ranked = scores.narrow(1, 0, candidates);
    let ranked = ranked.clone().mask_fill(ranked.is_nan(), f32::NEG_INFINITY);
    // The chosen columns, and whether they are the kept ones (else the evicted ones).
    let (chosen, k, kept) = if keep <= evict {
        (first_k(ranked, keep, Tie::Later), keep, true) // [R, keep]
    } else if evict == 1 {
        (first_min_index(ranked), 1, false) // [R, 1]
    } else {
        (first_k(ranked.neg(), evict, Tie::Earlier), evict, false) // [R, evict]
    };
    count_readback(rows * k);
    let flat: Vec<i64> = chosen
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .unwrap_or_default();
    flat.chunks(k)
        .map(|row| {
            let mut picked: Vec<usize> = row.iter().map(|&i| i.max(0) as usize).collect();
            picked.sort_unstable();
            if kept {
                return picked;
            }
            // `picked` are the evicted columns: keep the others.
            let mut evicted = picked.into_iter().peekable();
            (0..candidates)
                .filter(|&i| {
                    let out = evicted.peek() == Some(&i);
                    if out {
                        evicted.next();
                    }
                    !out
                })
                .collect()
        })
        .collect()
}

/// Which of two equal values ranks first.
#[derive(Clone, Copy)]
enum Tie {
    Earlier,
    Later,
}

/// Per row of `x` (`[R, C]`), the index of its smallest value, the lowest index among
/// equals: `[R, 1]`. (A backend's arg-min may pick any of them.)
fn first_min_index<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2, Int> {
    let [rows, cols] = x.dims();
    let min = x.clone().min_dim(1).expand([rows, cols]); // [R, C]
    let index = Tensor::<B, 1, Int>::arange(0..cols as i64, &x.device())
        .reshape([1, cols])
        .expand([rows, cols]); // [R, C]
    index
        .mask_fill(x.equal(min).bool_not(), cols as i64)
        .min_dim(1) // [R, 1]
}

/// Per row of `x` (`[R, C]`), the indices of its `k` largest values in ascending order,
/// equal values taken from the end `tie` names first: `[R, k]`.
///
/// Each value's rank (how many values of its row come before it: the larger ones, and the
/// equal ones from the preferred end) is counted by comparing it with every value of the
/// row, in chunks of columns ([`RANK_CHUNK_ELEMENTS`] comparisons at a time); the values
/// ranked below `k` are marked, and each mark is scattered to its place among the marks
/// (a running count). Exact for any `k`, and it uses neither Burn's top-k, whose CubeCL
/// kernel unrolls `k` accumulators (its compile time grows as k squared: minutes at
/// k = 64 on lavapipe, far more at the budgets of long prompts), nor its sort, which
/// reads the tensor back to the host. The work is `R x C x C` comparisons, cheap on a GPU
/// next to the prefill that made the scores.
fn first_k<B: Backend>(x: Tensor<B, 2>, k: usize, tie: Tie) -> Tensor<B, 2, Int> {
    first_k_in_chunks(x, k, tie, RANK_CHUNK_ELEMENTS)
}

/// [`first_k`] comparing at most `chunk_elements` pairs at once (at least a column).
fn first_k_in_chunks<B: Backend>(
    x: Tensor<B, 2>,
    k: usize,
    tie: Tie,
    chunk_elements: usize,
) -> Tensor<B, 2, Int> {
    let [rows, cols] = x.dims();
    let device = x.device();
    let chunk = (chunk_elements / (rows * cols).max(1)).clamp(1, cols);
    let j = Tensor::<B, 1, Int>::arange(0..cols as i64, &device).reshape([1, 1, cols]);
    let row = x.clone().reshape([rows, 1, cols]); // [R, 1, C]
    let mut marks = Vec::new();
    for from in (0..cols).step_by(chunk) {
        let m = chunk.min(cols - from);
        let xi = x
            .clone()
            .narrow(1, from, m)
            .reshape([rows, m, 1])
            .expand([rows, m, cols]);
        let xj = row.clone().expand([rows, m, cols]); // [R, m, C]
        let i =
            Tensor::<B, 1, Int>::arange(from as i64..(from + m) as i64, &device).reshape([1, m, 1]);
        // Equal values at j rank before the one at i when j is on the preferred side.
        let preferred = match tie {
            Tie::Earlier => j.clone().lower(i),
            Tie::Later => j.clone().greater(i),
        }
        .expand([rows, m, cols]); // [R, m, C]
        let before = xj
            .clone()
            .greater(xi.clone())
            .bool_or(xj.equal(xi).bool_and(preferred)); // [R, m, C]
        let rank = before.int().sum_dim(2).reshape([rows, m]); // [R, m]
        marks.push(rank.lower_elem(k as i64)); // [R, m]
    }
    let marked = Tensor::cat(marks, 1); // [R, C], k marks per row
    // Each mark's place among the marks of its row, the others to a spare column k.
    let place = marked
        .clone()
        .int()
        .cumsum(1)
        .sub_scalar(1)
        .mask_fill(marked.clone().bool_not(), k as i64); // [R, C]
    let columns = j
        .reshape([1, cols])
        .expand([rows, cols])
        .mask_fill(marked.bool_not(), 0);
    Tensor::<B, 2, Int>::zeros([rows, k + 1], &device)
        .scatter(1, place, columns, IndexingUpdateOp::Add)
        .narrow(1, 0, k) // [R, k]
}

/// Comparisons one chunk of [`first_k`] holds at once (`R x m x C`): 2^26, a few hundred
/// MB of masks at most.
const RANK_CHUNK_ELEMENTS: usize = 1 << 26;

/// `read` of a `[R, N]` tensor's values on the host, row after row: read in place from a
/// CPU tensor's contiguous buffer, else from a copy ([`to_host`]); counted as one readback
/// either way.
pub fn read_host<B: Backend, R>(t: &Tensor<B, 2>, read: impl FnOnce(&[f32]) -> R) -> R {
    #[cfg(feature = "flex")]
    if let Some(host) = crate::host::flex(t)
        && let Some(data) = crate::host::contiguous(&host)
    {
        count_readback(data.len());
        return read(data);
    }
    read(&to_host(t.clone()))
}

/// Row-major host copy of a 2-D tensor as f32.
pub fn to_host<B: Backend>(t: Tensor<B, 2>) -> Vec<f32> {
    count_readback(t.shape().num_elements());
    #[cfg(feature = "flex")]
    if let Some(host) = crate::host::flex(&t)
        && let Some(data) = crate::host::contiguous(&host)
    {
        return data.to_vec(); // a copy of the host buffer, no conversion
    }
    t.cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::lowest_index;

    /// The ranking's chunks do not change its marks: one column at a time, a few, and the
    /// whole row at once give the same indices, with heavy ties (three distinct values)
    /// and both tie rules, and they are the definition's (sort by value, then by the
    /// preferred index).
    #[test]
    fn first_k_is_the_same_in_any_chunks() {
        use super::{Tie, first_k_in_chunks};
        use burn::tensor::{Tensor, TensorData};
        type B = burn_flex::Flex;
        let (rows, cols) = (3, 40);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 13) % 7 % 3) as f32)
            .collect();
        let x = Tensor::<B, 2>::from_data(
            TensorData::new(values.clone(), [rows, cols]),
            &Default::default(),
        );
        for tie in [Tie::Earlier, Tie::Later] {
            for k in [1, 5, 17, 39, 40] {
                let read = |chunk: usize| {
                    first_k_in_chunks(x.clone(), k, tie, chunk)
                        .into_data()
                        .convert::<i64>()
                        .into_vec::<i64>()
                        .unwrap()
                };
                let whole = read(usize::MAX);
                assert_eq!(read(1), whole, "k {k}");
                assert_eq!(read(rows * cols * 7), whole, "k {k}");
                for r in 0..rows {
                    let row = &values[r * cols..(r + 1) * cols];
                    let mut order: Vec<usize> = (0..cols).collect();
                    order.sort_by(|&a, &b| {
                        row[b].total_cmp(&row[a]).then(match tie {
                            Tie::Earlier => a.cmp(&b),
                            Tie::Later => b.cmp(&a),
                        })
                    });
                    let mut want: Vec<i64> = order[..k].iter().map(|&i| i as i64).collect();
                    want.sort_unstable();
                    assert_eq!(&whole[r * k..(r + 1) * k], &want[..], "row {r}, k {k}");
                }
            }
        }
    }

    /// The definition `lowest_index` vectorises: the first minimum in `total_cmp`'s order,
    /// NaN counted as minus infinity.
    fn lowest_plain(row: &[f32]) -> Option<usize> {
        let key = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
        let lowest = row.iter().map(|&x| key(x)).min_by(|a, b| a.total_cmp(b))?;
        row.iter().position(|&x| key(x).total_cmp(&lowest).is_eq())
    }

    #[test]
    fn lowest_index_is_the_first_minimum_with_nan_lowest() {
        assert_eq!(lowest_index(&[]), None);
        let specials = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e-30,
        ];
        for n in [1, 2, 7, 8, 9, 16, 17, 33, 300] {
            for seed in 0..40u32 {
                let row: Vec<f32> = (0..n as u32)
                    .map(|i| {
                        let x = (i ^ (seed << 8)).wrapping_mul(2_654_435_761) >> 7;
                        match x % 5 {
                            0 => specials[(x as usize / 5) % specials.len()],
                            _ => ((x % 97) as f32 - 48.0) * 0.25,
                        }
                    })
                    .collect();
                assert_eq!(lowest_index(&row), lowest_plain(&row), "{row:?}");
            }
        }
        // -0.0 ranks below 0.0, and ties go to the earliest index.
        assert_eq!(lowest_index(&[0.0, -0.0, -0.0]), Some(1));
        assert_eq!(lowest_index(&[2.0, f32::NAN, 1.0, f32::NAN]), Some(1));
    }
}
