//! The CPU backend's tensors seen as host memory, and the eviction statistics computed on
//! them with the kernels of `cake-kernels` (cargo feature `flex`).
//!
//! The CPU backend (burn-flex) keeps every tensor in a reference-counted host buffer.
//! Recognising it *by type* (the tensor primitive's `TypeId`, never a backend name) lets
//! the cache write appended rows in place and lets kernels read the buffers without a
//! copy. Every function returns `None` for any other backend or dtype, and callers then
//! take the generic Burn path.

use std::any::Any;

use burn::tensor::{Bytes, DType, Tensor, TensorData, TensorPrimitive, backend::Backend};
use burn_flex::{FlexTensor, Layout};
use cake_kernels::{AttentionShape, KvRows, attention, simd};

/// The host tensor behind `t` (a cheap handle: the buffer is shared, not copied), when
/// `B` is the CPU backend and `t` is an unquantised f32 tensor.
pub fn flex<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Option<FlexTensor> {
    into_flex(t.clone())
}

/// As [`flex`], consuming `t` (so that the buffer may be uniquely owned).
pub fn into_flex<B: Backend, const D: usize>(t: Tensor<B, D>) -> Option<FlexTensor> {
    if !is_flex::<B>() {
        return None;
    }
    let TensorPrimitive::Float(primitive) = t.into_primitive() else {
        return None;
    };
    let any: Box<dyn Any> = Box::new(primitive);
    let tensor = *any.downcast::<FlexTensor>().ok()?;
    (tensor.dtype() == DType::F32).then_some(tensor)
}

/// Wraps a host tensor back into `Tensor<B, D>`; `None` unless `B` is the CPU backend.
pub fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Option<Tensor<B, D>> {
    let any: Box<dyn Any> = Box::new(t);
    let primitive = *any.downcast::<B::FloatTensorPrimitive>().ok()?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(primitive)))
}

/// True when `B`'s float tensors are host tensors.
pub fn is_flex<B: Backend>() -> bool {
    std::any::TypeId::of::<B::FloatTensorPrimitive>() == std::any::TypeId::of::<FlexTensor>()
}

/// The f32 elements of a host tensor whose layout is contiguous (a zero-copy view), or
/// `None` for strided views.
pub fn contiguous(t: &FlexTensor) -> Option<&[f32]> {
    t.as_slice::<f32>()
}

/// Runs `f` on the f32 buffer of `t` when `B` is the CPU backend, `t` is contiguous and
/// nothing else holds its buffer, writing in place; returns `t` (unchanged if `f` did not
/// run) and whether `f` ran.
pub fn write_in_place<B: Backend, const D: usize>(
    t: Tensor<B, D>,
    f: impl FnOnce(&mut [f32]),
) -> (Tensor<B, D>, bool) {
    if !is_flex::<B>() {
        return (t, false);
    }
    let Some(mut host) = flex(&t) else {
        return (t, false);
    };
    drop(t); // `host` is now the only handle, if nobody else shares the buffer.
    let layout: Layout = host.layout().clone();
    let ran = match (layout.is_contiguous() && layout.start_offset() == 0)
        .then(|| host.try_storage_mut::<f32>())
        .flatten()
    {
        Some(buffer) => {
            f(buffer);
            true
        }
        None => false,
    };
    match from_flex::<B, D>(host) {
        Some(t) => (t, ran),
        // Unreachable: `is_flex` held, so the primitive type is FlexTensor.
        None => unreachable!("a host tensor converts back to its own backend"),
    }
}

/// A zeroed `[rows, dim]` f32 host tensor in one allocation whose pages the system zeroes
/// when they are first touched (`calloc`), or `None` unless `B` is the CPU backend (or
/// `rows * dim` is not a multiple of 4).
///
/// Burn's own `zeros` builds its buffer as bytes and then copies it into an allocation
/// aligned for any element, which writes every page twice; a cache buffer of several
/// megabytes made that way costs more than the rows later written into it. This one
/// allocates 16-byte units, already so aligned.
pub fn zeros<B: Backend>(rows: usize, dim: usize) -> Option<Tensor<B, 2>> {
    let n = rows.checked_mul(dim)?;
    if !is_flex::<B>() || !n.is_multiple_of(4) {
        return None;
    }
    let bytes = Bytes::from_elems(vec![0u128; n / 4]);
    let tensor = FlexTensor::new(bytes, Layout::contiguous([rows, dim].into()), DType::F32);
    from_flex(tensor)
}

/// Runs `f` on the f32 buffer of a uniquely owned contiguous `[rows, dim]` host tensor,
/// then keeps its first `keep` rows in the same allocation (the allocator releases the
/// tail: no new memory is touched and nothing is copied). Gives the tensor back
/// untouched (`Err`, `f` not run) when that is not possible: another backend, a shared
/// or strided buffer, one not allocated in 16-byte units, or `keep > rows`.
pub fn rewrite_and_truncate<B: Backend>(
    t: Tensor<B, 2>,
    keep: usize,
    f: impl FnOnce(&mut [f32]),
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    let [rows, dim] = t.dims();
    let Some(host) = into_flex(t.clone()) else {
        return Err(t);
    };
    let total = rows * dim;
    let units = keep * dim / 4;
    let fits = host.layout().is_contiguous()
        && host.layout().start_offset() == 0
        && keep <= rows
        && (keep * dim).is_multiple_of(4)
        && host.bytes().len() == total * 4;
    drop(t);
    if !fits || !host.is_unique() {
        return Err(from_flex(host).unwrap_or_else(|| unreachable!("a host tensor")));
    }
    let layout = host.layout().clone();
    let arc = host.data_arc();
    drop(host);
    let bytes = match std::sync::Arc::try_unwrap(arc) {
        Ok(bytes) => bytes,
        Err(arc) => {
            let back = FlexTensor::from_arc(arc, layout, DType::F32);
            return Err(from_flex(back).unwrap_or_else(|| unreachable!("a host tensor")));
        }
    };
    let mut units_vec = match bytes.try_into_vec::<u128>() {
        Ok(v) => v,
        Err(bytes) => {
            let back = FlexTensor::new(bytes, layout, DType::F32);
            return Err(from_flex(back).unwrap_or_else(|| unreachable!("a host tensor")));
        }
    };
    // SAFETY: the `u128` units are plain bytes, 16-aligned; `total` f32 fill them exactly
    // (`bytes().len() == total * 4` above), and f32 has no invalid bit patterns.
    let floats =
        unsafe { std::slice::from_raw_parts_mut(units_vec.as_mut_ptr().cast::<f32>(), total) };
    f(floats);
    units_vec.truncate(units);
    units_vec.shrink_to_fit();
    let tensor = FlexTensor::new(
        Bytes::from_elems(units_vec),
        Layout::contiguous([keep, dim].into()),
        DType::F32,
    );
    Ok(from_flex(tensor).unwrap_or_else(|| unreachable!("a host tensor")))
}

/// Rows `[Hkv, len, d]` of a host tensor as a buffer and the rows between two heads (a
/// strided view when the rows are contiguous, else a contiguous copy kept in `hold`).
fn kv_data<'a>(t: &'a FlexTensor, hold: &'a mut Option<FlexTensor>) -> Option<(&'a [f32], usize)> {
    let layout = t.layout();
    let dims = layout.shape().to_vec();
    let [heads, len, dim] = dims[..] else {
        return None;
    };
    let strides = layout.strides();
    let rows_in_place = strides[2] == 1
        && strides[1] == dim as isize
        && strides[0] >= 0
        && (strides[0] as usize).is_multiple_of(dim.max(1));
    if rows_in_place {
        let data = &t.storage::<f32>()[layout.start_offset()..];
        let head_rows = if heads > 1 {
            strides[0] as usize / dim.max(1)
        } else {
            len
        };
        let needed = (heads.saturating_sub(1) * head_rows + len) * dim;
        return (data.len() >= needed).then_some((data, head_rows));
    }
    let copy = hold.insert(t.to_contiguous());
    Some((copy.as_slice::<f32>()?, len))
}

/// Attention probabilities `[H, n, S]` of `queries` (`[H, n, d]`) over `keys`
/// (`[Hkv, S, d]`), as [`crate::stats::attention`] defines them, by the host kernel;
/// `None` unless `B` is the CPU backend with f32 tensors.
pub fn attention_probabilities<B: Backend>(
    queries: &Tensor<B, 3>,
    keys: &Tensor<B, 3>,
    causal_from: Option<usize>,
) -> Option<Tensor<B, 3>> {
    let [heads, n, dim] = queries.dims();
    let [kv_heads, len, _] = keys.dims();
    if kv_heads == 0 || heads % kv_heads != 0 || n == 0 {
        return None;
    }
    let device = queries.device();
    // [n, H, d] contiguous: the kernel's query layout.
    let q = flex(&queries.clone().swap_dims(0, 1))?.to_contiguous();
    let q = contiguous(&q)?;
    let k = flex(keys)?;
    let mut hold = None;
    let (data, head_rows) = kv_data(&k, &mut hold)?;
    let starts = cake_kernels::packed_starts(kv_heads, head_rows);
    let rows = KvRows {
        data,
        runs: &[],
        starts: &starts,
        len,
        dim,
    };
    let shape = AttentionShape {
        queries: n,
        heads,
        kv_heads,
        dim,
    };
    let visible = |_: usize, i: usize| match causal_from {
        Some(first) => (0, (first + i + 1).min(len)),
        None => (0, len),
    };
    let probs = if n > 1 {
        cake_kernels::probabilities(q, rows, shape, &visible)
    } else {
        let mut probs = vec![0.0f32; heads * n * len];
        attention(q, rows, shape, &visible, None, Some(&mut probs));
        probs
    };
    Some(Tensor::from_data(
        TensorData::new(probs, [heads, n, len]),
        &device,
    ))
}

/// A host tensor read as rows: `(buffer, first element, row stride, rows, width)` when its
/// last axis is contiguous and its leading axes nest over rows of one stride (a
/// contiguous tensor, or one narrowed along its last axis: no copy either way).
fn strided_rows(t: &FlexTensor) -> Option<(&[f32], usize, usize, usize, usize)> {
    let layout = t.layout();
    let (dims, strides) = (layout.shape().as_slice(), layout.strides());
    let (&width, leading) = dims.split_last()?;
    let row_stride = match strides {
        [.., s, 1] => usize::try_from(*s).ok()?,
        [1] => width,
        _ => return None,
    };
    // Axis k's stride must be axis k+1's stride times its length (rows nest evenly).
    let mut expected = row_stride;
    for (k, &d) in leading.iter().enumerate().rev() {
        if usize::try_from(strides[k]).ok()? != expected && d > 1 {
            return None;
        }
        expected *= d;
    }
    let rows = leading.iter().product::<usize>();
    let data = t.storage::<f32>();
    let start = layout.start_offset();
    let needed = if rows == 0 || width == 0 {
        start
    } else {
        start + (rows - 1) * row_stride + width
    };
    (row_stride >= width && needed <= data.len()).then_some((data, start, row_stride, rows, width))
}

/// [`crate::stats::layer_preference`]'s two sums over the first `prefix` keys of window
/// attention `attn` (`[H, w, S]`, a host tensor, read in place when its rows nest evenly,
/// e.g. a view of some heads): `(-sum A ln(A + 1e-10), sum over heads and keys of the
/// unbiased variance over the w queries)`, in one threaded pass over (head, block of
/// keys) by [`simd::entropy_and_variance`], the blocks' sums totalled in order in f64.
/// Equal to the Burn expressions up to float rounding (a vector `ln`, other summation
/// orders); `None` unless `attn` is a CPU-backend f32 tensor.
pub fn preference_sums<B: Backend>(attn: &Tensor<B, 3>, prefix: usize) -> Option<(f64, f64)> {
    use rayon::prelude::*;
    /// Keys per task: a `[w, 1024]` block of one head.
    const KEYS: usize = 1024;
    let [heads, w, len] = attn.dims();
    let host = flex(attn)?;
    let (data, start, stride, rows, width) = strided_rows(&host)?;
    let prefix = prefix.min(len);
    if rows != heads * w || width != len {
        return None;
    }
    if prefix == 0 || w == 0 {
        return Some((0.0, 0.0));
    }
    let blocks = prefix.div_ceil(KEYS);
    let sums: Vec<(f64, f64)> = (0..heads * blocks)
        .into_par_iter()
        .map(|task| {
            let (h, c0) = (task / blocks, task % blocks * KEYS);
            let cols = KEYS.min(prefix - c0);
            let at = start + h * w * stride + c0;
            simd::entropy_and_variance(&data[at..], stride, w, cols)
        })
        .collect();
    let (terms, variance) = sums
        .iter()
        .fold((0.0, 0.0), |(t, v), &(bt, bv)| (t + bt, v + bv));
    Some((-terms, variance))
}

/// The rows of a 2-D host tensor as one contiguous `[R * N]` vector (a copy).
fn rows2<B: Backend>(t: &Tensor<B, 2>) -> Option<Vec<f32>> {
    let host = flex(t)?.to_contiguous();
    Some(contiguous(&host)?.to_vec())
}

/// [`crate::stats::pool_prefix`] on the host: `[R, N]`, the first `candidates` columns
/// average-pooled (width `kernel`, zero padding at their edges, divided by `kernel`).
pub fn pool_prefix<B: Backend>(
    scores: &Tensor<B, 2>,
    candidates: usize,
    kernel: usize,
) -> Option<Tensor<B, 2>> {
    let [rows, n] = scores.dims();
    let data = rows2(scores)?;
    let candidates = candidates.min(n);
    let mut out = data.clone();
    for (row, dst) in data
        .chunks_exact(n.max(1))
        .zip(out.chunks_exact_mut(n.max(1)))
    {
        pool_row(row, candidates, kernel, dst);
    }
    Some(Tensor::from_data(
        TensorData::new(out, [rows, n]),
        &scores.device(),
    ))
}

/// Outputs (columns) a block of [`pool_row`] and [`mean_of_rows`] sums at once, in
/// registers: each pass over a block adds one more term to every output of the block
/// without storing and reloading them.
const SUM_BLOCK: usize = 16;

/// The [`SUM_BLOCK`] entries of `row` from `at`, as an array (so that the sums over a
/// block vectorise).
///
/// # Panics
/// When the block does not lie in `row`.
#[inline(always)]
fn block(row: &[f32], at: usize) -> &[f32; SUM_BLOCK] {
    match row[at..at + SUM_BLOCK].first_chunk() {
        Some(terms) => terms,
        None => unreachable!("a slice of SUM_BLOCK entries"),
    }
}

/// `row`'s first `candidates` entries average-pooled into `dst` (width `kernel`, zero
/// padding at the edge of the candidates, divided by `kernel`); the rest of `dst` is left.
///
/// Output `j` is the sum of `row[j - half..=j + half]` (cut at the candidates' ends), added
/// left to right as `Iterator::sum` adds, then divided by `kernel`. Where the window is
/// whole, the sums run over [`SUM_BLOCK`] outputs at once (vectorised), each output still
/// adding its window in the same order: the same bits as the plain loop.
fn pool_row(row: &[f32], candidates: usize, kernel: usize, dst: &mut [f32]) {
    with_avx2!(pool_row_body(row, candidates, kernel, dst))
}

#[inline(always)]
fn pool_row_body(row: &[f32], candidates: usize, kernel: usize, dst: &mut [f32]) {
    let half = kernel / 2;
    let divisor = kernel as f32;
    let cut = |j: usize| {
        let (lo, hi) = (j.saturating_sub(half), (j + half + 1).min(candidates));
        row[lo..hi].iter().sum::<f32>() / divisor
    };
    // Outputs `from..to` have their whole window inside the candidates (and then
    // `from == half`).
    let from = half.min(candidates);
    let to = candidates.saturating_sub(half).max(from);
    let mut j = from;
    while j + SUM_BLOCK <= to {
        // Output `j + i` adds `row[j + i - half + t]` for t = 0, 1, ..., 2 * half.
        let mut sums = [std::iter::empty::<f32>().sum::<f32>(); SUM_BLOCK];
        for t in 0..=2 * half {
            let terms = block(row, j - half + t);
            for i in 0..SUM_BLOCK {
                sums[i] += terms[i];
            }
        }
        for (o, sum) in dst[j..j + SUM_BLOCK].iter_mut().zip(sums) {
            *o = sum / divisor;
        }
        j += SUM_BLOCK;
    }
    // The cut windows, and the whole ones past the last block.
    for j in (0..from).chain(j..candidates) {
        dst[j] = cut(j);
    }
}

/// The mean of the `group` rows of `rows` (`[group, n]`) into `dst` (`[n]`): summed in
/// row order from 0, then divided; [`SUM_BLOCK`] columns at a time.
fn mean_of_rows(rows: &[f32], group: usize, dst: &mut [f32]) {
    with_avx2!(mean_of_rows_body(rows, group, dst))
}

#[inline(always)]
fn mean_of_rows_body(rows: &[f32], group: usize, dst: &mut [f32]) {
    let n = dst.len();
    let divisor = group as f32;
    let rows = || rows.chunks_exact(n.max(1)).take(group);
    let whole = n - n % SUM_BLOCK;
    for at in (0..whole).step_by(SUM_BLOCK) {
        let mut sums = [0.0f32; SUM_BLOCK];
        for row in rows() {
            let terms = block(row, at);
            for i in 0..SUM_BLOCK {
                sums[i] += terms[i];
            }
        }
        for (o, sum) in dst[at..at + SUM_BLOCK].iter_mut().zip(sums) {
            *o = sum / divisor;
        }
    }
    for (j, o) in dst.iter_mut().enumerate().skip(whole) {
        *o = rows().fold(0.0f32, |sum, row| sum + row[j]) / divisor;
    }
}

/// A decoding step's attention scores on the host, `[H, N] -> [Hkv, N]`: the group mean
/// of [`group_mean`], then the first `candidates` columns pooled as [`pool_prefix`] pools
/// them, in one pass over the probabilities (read in place) with the same roundings, so
/// the same bits as the two calls.
pub fn pooled_group_mean<B: Backend>(
    attn: &Tensor<B, 2>,
    kv_heads: usize,
    candidates: usize,
    kernel: usize,
) -> Option<Tensor<B, 2>> {
    let [heads, n] = attn.dims();
    if kv_heads == 0 || heads % kv_heads != 0 {
        return None;
    }
    let host = flex(attn)?;
    let data = contiguous(&host)?;
    let group = heads / kv_heads;
    let candidates = candidates.min(n);
    let mut mean = vec![0.0f32; n];
    let mut out = vec![0.0f32; kv_heads * n];
    for (rows, dst) in data
        .chunks_exact((group * n).max(1))
        .zip(out.chunks_exact_mut(n.max(1)))
    {
        mean_of_rows(rows, group, &mut mean);
        dst.copy_from_slice(&mean);
        if kernel > 1 {
            pool_row(&mean, candidates, kernel, dst);
        }
    }
    Some(Tensor::from_data(
        TensorData::new(out, [kv_heads, n]),
        &attn.device(),
    ))
}

/// [`crate::stats::group_mean`] on the host: `[H, N] -> [Hkv, N]`, the mean over each KV
/// head's `H / Hkv` query heads.
pub fn group_mean<B: Backend>(scores: &Tensor<B, 2>, kv_heads: usize) -> Option<Tensor<B, 2>> {
    let [heads, n] = scores.dims();
    if kv_heads == 0 || heads % kv_heads != 0 {
        return None;
    }
    let host = flex(scores)?.to_contiguous();
    let data = contiguous(&host)?;
    let group = heads / kv_heads;
    let mut out = vec![0.0f32; kv_heads * n];
    for (rows, dst) in data
        .chunks_exact((group * n).max(1))
        .zip(out.chunks_exact_mut(n.max(1)))
    {
        mean_of_rows(rows, group, dst);
    }
    Some(Tensor::from_data(
        TensorData::new(out, [kv_heads, n]),
        &scores.device(),
    ))
}

/// [`crate::stats::mean_plus_var`] on the host: `[H, w, N] -> [H, N]`,
/// `mean_q A + gamma * var_q A` (unbiased, clamped at 0; the mean alone when `w < 2`).
pub fn mean_plus_var<B: Backend>(attn: &Tensor<B, 3>, gamma: f64) -> Option<Tensor<B, 2>> {
    let [heads, w, n] = attn.dims();
    let host = flex(attn)?.to_contiguous();
    let data = contiguous(&host)?;
    let mut out = vec![0.0f32; heads * n];
    let wf = w as f32;
    for (h, dst) in out.chunks_exact_mut(n.max(1)).enumerate().take(heads) {
        let block = &data[h * w * n..(h + 1) * w * n];
        let mut sum_sq = vec![0.0f32; n];
        for row in block.chunks_exact(n) {
            for ((o, q), &a) in dst.iter_mut().zip(sum_sq.iter_mut()).zip(row) {
                *o += a;
                *q += a * a;
            }
        }
        for (o, q) in dst.iter_mut().zip(&sum_sq) {
            let mean = *o / wf;
            *o = if w >= 2 && gamma != 0.0 {
                let var = ((q - mean * mean * wf) / (wf - 1.0).max(1.0)).max(0.0);
                mean + var * gamma as f32
            } else {
                mean
            };
        }
    }
    Some(Tensor::from_data(
        TensorData::new(out, [heads, n]),
        &attn.device(),
    ))
}

#[cfg(test)]
mod tests {
    use super::{pool_row, pooled_group_mean, rewrite_and_truncate, zeros};
    use burn::tensor::{Tensor, TensorData};
    use burn_flex::Flex;

    fn as_vec(t: Tensor<Flex, 2>) -> Vec<f32> {
        t.into_data().into_vec::<f32>().unwrap_or_default()
    }

    #[test]
    fn zeros_are_zero_and_shrink_in_place() {
        let t = zeros::<Flex>(6, 4).unwrap();
        assert_eq!(t.dims(), [6, 4]);
        assert_eq!(as_vec(t.clone()), vec![0.0; 24]);
        // Row r := r, then rows 1, 3, 5 move to 0..3 and the buffer keeps 3 rows.
        let shrunk = rewrite_and_truncate(t, 3, |data| {
            for (i, x) in data.iter_mut().enumerate() {
                *x = (i / 4) as f32;
            }
            for (to, from) in [(0, 1), (1, 3), (2, 5)] {
                data.copy_within(from * 4..from * 4 + 4, to * 4);
            }
        });
        let shrunk = shrunk.unwrap_or_else(|_| panic!("a fresh buffer shrinks in place"));
        assert_eq!(shrunk.dims(), [3, 4]);
        let want: Vec<f32> = [1.0, 3.0, 5.0].iter().flat_map(|&r| [r; 4]).collect();
        assert_eq!(as_vec(shrunk), want);
    }

    #[test]
    fn a_shared_buffer_is_given_back_untouched() {
        let t = zeros::<Flex>(4, 4).unwrap();
        let other = t.clone();
        let back = rewrite_and_truncate(t, 2, |data| data.fill(1.0));
        let back = back
            .err()
            .unwrap_or_else(|| panic!("a shared buffer cannot shrink"));
        assert_eq!(back.dims(), [4, 4]);
        assert_eq!(as_vec(back), vec![0.0; 16]);
        assert_eq!(as_vec(other), vec![0.0; 16]);
        // More rows than it has, or not in 16-byte units: not in place either.
        let t = zeros::<Flex>(4, 4).unwrap();
        assert!(rewrite_and_truncate(t, 5, |_| ()).is_err());
        let t = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![0f32; 6], [3, 2]),
            &Default::default(),
        );
        assert!(rewrite_and_truncate(t, 1, |_| ()).is_err());
        assert!(zeros::<Flex>(3, 3).is_none());
    }

    /// The definition `pool_row` vectorises: each output's window summed on its own.
    fn pool_row_plain(row: &[f32], candidates: usize, kernel: usize, dst: &mut [f32]) {
        let half = kernel / 2;
        for (j, o) in dst[..candidates].iter_mut().enumerate() {
            let lo = j.saturating_sub(half);
            let hi = (j + half + 1).min(candidates);
            *o = row[lo..hi].iter().sum::<f32>() / kernel as f32;
        }
    }

    #[test]
    fn pool_row_gives_the_bits_of_the_plain_loop() {
        // Values of mixed magnitudes, so that a reordered sum would round differently.
        let row: Vec<f32> = (0..300u32)
            .map(|i| {
                let x = i.wrapping_mul(2_654_435_761) >> 8;
                (x % 1000) as f32 * 10f32.powi((x % 7) as i32 - 3)
            })
            .collect();
        for kernel in 1..=8 {
            for candidates in (0..=20).chain([150, 299, 300]) {
                let mut fast = vec![-1.0f32; row.len()];
                let mut plain = fast.clone();
                pool_row(&row, candidates, kernel, &mut fast);
                pool_row_plain(&row, candidates, kernel, &mut plain);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&fast),
                    bits(&plain),
                    "kernel {kernel}, candidates {candidates}"
                );
            }
        }
    }

    /// Values of mixed magnitudes, so that a reordered sum would round differently.
    fn mixed(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let x = (i ^ seed).wrapping_mul(2_654_435_761) >> 8;
                (x % 1000) as f32 * 10f32.powi((x % 7) as i32 - 3)
            })
            .collect()
    }

    #[test]
    fn pooled_group_mean_gives_the_bits_of_its_definition() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        // Lengths on both sides of the blocks of 16, groups of 1 to 4, kernels 1 to 7.
        for (heads, kv) in [(9, 3), (4, 1), (8, 8), (8, 2)] {
            let group = heads / kv;
            for n in [1, 2, 15, 16, 17, 31, 33, 40, 289] {
                let probs = mixed(heads * n, n as u32);
                let t = Tensor::<Flex, 2>::from_data(
                    TensorData::new(probs.clone(), [heads, n]),
                    &Default::default(),
                );
                for kernel in [1, 3, 5, 7] {
                    let candidates = n.saturating_sub(3);
                    let got = as_vec(pooled_group_mean(&t, kv, candidates, kernel).unwrap());
                    let mut want = Vec::new();
                    for g in 0..kv {
                        // The mean: summed from 0 in row order, then divided.
                        let mean: Vec<f32> = (0..n)
                            .map(|j| {
                                let rows = g * group..(g + 1) * group;
                                rows.fold(0.0f32, |s, r| s + probs[r * n + j]) / group as f32
                            })
                            .collect();
                        let mut row = mean.clone();
                        if kernel > 1 {
                            pool_row_plain(&mean, candidates, kernel, &mut row);
                        }
                        want.extend(row);
                    }
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "{heads}/{kv} heads, n {n}, k {kernel}"
                    );
                }
            }
        }
    }
}
