//! Linear projections and RMS normalisation.

#[cfg(feature = "flex")]
use burn::tensor::TensorData;
use burn::tensor::{Tensor, backend::Backend};
#[cfg(feature = "flex")]
use cake_core::host;

#[cfg(feature = "flex")]
use cake_kernels as kernels;

/// `y = x W^T + b` with `W` stored `[out, in]` (PyTorch's layout): at decoding each
/// output is a contiguous dot product, the layout a GEMV reads at memory speed.
#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    /// `[out, in]`
    pub weight: Tensor<B, 2>,
    /// `[out]`
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    /// `x`: `[S, in]` -> `[S, out]`. On the CPU backend one row runs the threaded GEMV and
    /// more rows the host GEMM ([`kernels::gemm`]); anything else one matrix product (the
    /// transposed weight is a view, not a copy).
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        if let Some(y) = self.forward_host(&x) {
            return y;
        }
        let y = x.matmul(self.weight.clone().transpose());
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze_dim::<2>(0),
            None => y,
        }
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Without the CPU backend there is no host path.
    #[cfg(not(feature = "flex"))]
    fn forward_host(&self, _: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        None
    }

    /// `[S, in]` -> `[S, out]` on the host buffers: [`kernels::gemv`] for one row,
    /// [`kernels::gemm`] for more; `None` on other backends or layouts.
    #[cfg(feature = "flex")]
    fn forward_host(&self, x: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        let (w, xs) = host_buffers(&self.weight, x)?;
        let (w, xs) = (host::contiguous(&w)?, host::contiguous(&xs)?);
        let bias = match &self.bias {
            Some(b) => Some(host::flex(b)?),
            None => None,
        };
        let bias = match &bias {
            Some(b) => Some(host::contiguous(b)?),
            None => None,
        };
        let [rows, inp] = x.dims();
        let out = self.out_features();
        let y = if rows > 1 && inp > 0 {
            kernels::gemm_new(w, xs, inp, bias)
        } else {
            let mut y = vec![0.0f32; rows * out];
            if rows == 1 {
                kernels::gemv(w, xs, bias, &mut y);
            } else if let Some(b) = bias {
                for y in y.chunks_exact_mut(out) {
                    y.copy_from_slice(b);
                }
            }
            y
        };
        Some(Tensor::from_data(
            TensorData::new(y, [rows, out]),
            &self.weight.device(),
        ))
    }
}

impl<B: Backend> Linear<B> {
    /// SwiGLU's middle fused into this projection, for a weight `[2 inter, in]` of gate
    /// rows then up rows and no bias: `x` `[S, in]` -> `silu(gate) * up` `[S, inter]`, with
    /// the bits of [`Linear::forward`] then [`kernels::silu_mul`] ([`kernels::gemm_silu_mul`]).
    /// `None` for one row (the decoding GEMV's), off the CPU backend, or where that
    /// kernel does not run.
    #[cfg(feature = "flex")]
    pub fn forward_silu_mul_host(&self, x: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        let [rows, inp] = x.dims();
        if rows < 2 || inp == 0 || self.bias.is_some() {
            return None;
        }
        let (w, xs) = host_buffers(&self.weight, x)?;
        let (w, xs) = (host::contiguous(&w)?, host::contiguous(&xs)?);
        let y = kernels::gemm_silu_mul(w, xs, inp)?;
        let inter = y.len() / rows;
        Some(Tensor::from_data(
            TensorData::new(y, [rows, inter]),
            &self.weight.device(),
        ))
    }
}

/// The CPU fast path's operands: a weight's host buffer as stored (`None` unless it is
/// contiguous, never copied) and the activations `x`, made contiguous where they are not;
/// `None` off the CPU backend.
#[cfg(feature = "flex")]
fn host_buffers<B: Backend, const D: usize>(
    weight: &Tensor<B, D>,
    x: &Tensor<B, 2>,
) -> Option<(burn_flex::FlexTensor, burn_flex::FlexTensor)> {
    let w = host::flex(weight)?;
    host::contiguous(&w)?;
    Some((w, host::flex(x)?.to_contiguous()))
}

/// Root-mean-square normalisation: `weight * (x / sqrt(mean(x^2) + eps))`.
#[derive(Debug, Clone)]
pub struct RmsNorm<B: Backend> {
    /// `[hidden]`
    pub weight: Tensor<B, 1>,
    /// Added to the mean square.
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    /// `x`: `[S, hidden]` -> `[S, hidden]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        if let Some(y) = self.forward_host(&x) {
            return y;
        }
        // [S, 1]
        let inv_rms = (x.clone().powi_scalar(2).mean_dim(1) + self.eps)
            .sqrt()
            .recip();
        x * inv_rms * self.weight.clone().unsqueeze_dim::<2>(0)
    }

    /// Without the CPU backend there is no host path.
    #[cfg(not(feature = "flex"))]
    fn forward_host(&self, _: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        None
    }

    /// The CPU fast path: one pass per row on the host buffer.
    #[cfg(feature = "flex")]
    fn forward_host(&self, x: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        let (w, xs) = host_buffers(&self.weight, x)?;
        let (w, xs) = (host::contiguous(&w)?, host::contiguous(&xs)?);
        let out = kernels::rms_norm(xs, w, self.eps as f32);
        Some(Tensor::from_data(
            TensorData::new(out, x.dims()),
            &x.device(),
        ))
    }
}
