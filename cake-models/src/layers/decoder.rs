//! The pre-norm decoder layer.

use burn::tensor::{Tensor, backend::Backend};
#[cfg(feature = "flex")]
use cake_core::host;
use cake_core::{CacheError, LayerCache};

#[cfg(feature = "flex")]
use cake_kernels as kernels;

use super::{AfterAttend, Attention, AttentionOutput, AttentionRequest, Mlp, RmsNorm, RopeTables};
use crate::model::AttentionRow;

/// Pre-norm decoder layer: `x + attn(norm(x))`, then `x + mlp(norm(x))`.
#[derive(Debug, Clone)]
pub struct DecoderLayer<B: Backend> {
    /// Norm before attention.
    pub input_norm: RmsNorm<B>,
    /// Self-attention.
    pub attention: Attention<B>,
    /// Norm before the MLP.
    pub post_attention_norm: RmsNorm<B>,
    /// Feed-forward.
    pub mlp: Mlp<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// `x`: `[S, hidden]` at positions `start..start + S` -> the layer's output
    /// `[S, hidden]` (`[n, hidden]`, the last rows, when `request.last_rows` is `Some(n)`)
    /// and the attention's output with what `request` asked of it; appends
    /// this layer's keys/values to `cache` and runs `after` on it once attended (see
    /// [`AfterAttend`]).
    ///
    /// # Errors
    /// When the cache rejects the new rows, or what `after` returns.
    pub fn forward(
        &self,
        x: Tensor<B, 2>,
        start: usize,
        rope: &RopeTables<B>,
        cache: &mut LayerCache<B>,
        request: AttentionRequest,
        after: AfterAttend<'_, B>,
    ) -> Result<(Tensor<B, 2>, AttentionOutput<B>), CacheError> {
        let attn = self.attention.forward(
            self.input_norm.forward(x.clone()),
            start,
            rope,
            cache,
            request,
            after,
        )?;
        let [s, _] = x.dims();
        let [n, _] = attn.output.dims();
        // [n, hidden]: the rows whose output was asked for (all of them unless
        // `request.last_rows` said otherwise).
        let x = if n < s { x.narrow(0, s - n, n) } else { x };
        let x = residual(x, &attn.output);
        let mlp = self
            .mlp
            .forward(self.post_attention_norm.forward(x.clone()));
        Ok((residual(x, &mlp), attn))
    }

    /// A batched decoding step: `x` `[R, hidden]` holds one new token of each of the R
    /// sequences of `rows` (see [`Attention::forward_batch`]); the norms, projections and
    /// MLP run over the R rows at once, the attention, cache append and hook per row.
    /// Returns the layer's output `[R, hidden]`.
    ///
    /// # Errors
    /// As [`Attention::forward_batch`].
    pub fn forward_batch(
        &self,
        x: Tensor<B, 2>,
        rows: &mut [AttentionRow<'_, B>],
    ) -> Result<Tensor<B, 2>, CacheError> {
        // [R, hidden]
        let attn = self
            .attention
            .forward_batch(self.input_norm.forward(x.clone()), rows)?;
        let x = residual(x, &attn);
        // [R, hidden]
        let mlp = self
            .mlp
            .forward(self.post_attention_norm.forward(x.clone()));
        Ok(residual(x, &mlp))
    }
}

/// `x + y` (same shape): on the CPU path in `x`'s own buffer, threads over blocks (Burn's
/// add ran on one thread while the others waited); elsewhere, or when `x`'s buffer is
/// shared or strided, Burn's add. The same bits either way.
fn residual<B: Backend>(x: Tensor<B, 2>, y: &Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    if x.dims() == y.dims()
        && let Some(y_host) = host::flex(y)
        && let Some(ys) = host::contiguous(&y_host)
    {
        let (x, ran) = host::write_in_place(x, |xs| kernels::add_assign(xs, ys));
        return if ran { x } else { x + y.clone() };
    }
    x + y.clone()
}
