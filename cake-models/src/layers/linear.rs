//! Linear projections and RMS normalisation.

use std::sync::Arc;

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
#[cfg(feature = "flex")]
use cake_core::host;
use cake_kernels::PackedMatrix;
#[cfg(feature = "flex")]
use cake_kernels::quant::MULTI_VECTOR_ROWS;

#[cfg(feature = "flex")]
use cake_kernels as kernels;

/// Activation rows quantised and multiplied at once with int8 activations (a prefill's
/// rows go in chunks of this many, whose activations stay in the caches while every
/// weight row meets them).
#[cfg(feature = "flex")]
const INT8_CHUNK_ROWS: usize = 4 * MULTI_VECTOR_ROWS;

/// A linear layer's weight `[out, in]`: a dense tensor on the backend, or blocks packed as
/// the file stores them (CPU backend only, read in place by the packed kernels of
/// [`cake_kernels::quant`]).
#[derive(Debug, Clone)]
pub enum LinearWeight<B: Backend> {
    /// `[out, in]`
    Dense(Tensor<B, 2>),
    /// `[out, in]` packed, with the device the outputs go to.
    Packed {
        /// The packed rows.
        matrix: Arc<PackedMatrix>,
        /// Where outputs are made.
        device: B::Device,
        /// Whether every product quantises its activations to int8 and takes integer dot
        /// products (`WeightFormat::StoredInt8`).
        int8_activations: bool,
    },
}

impl<B: Backend> LinearWeight<B> {
    /// Rows (output features).
    pub fn rows(&self) -> usize {
        match self {
            LinearWeight::Dense(w) => w.dims()[0],
            LinearWeight::Packed { matrix, .. } => matrix.rows(),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            LinearWeight::Dense(w) => w.shape().num_elements() * w.dtype().size(),
            LinearWeight::Packed { matrix, .. } => matrix.bytes(),
        }
    }

    /// The weight as a dense tensor (a cheap handle when dense; dequantised when packed).
    pub fn to_dense(&self) -> Tensor<B, 2> {
        match self {
            LinearWeight::Dense(w) => w.clone(),
            LinearWeight::Packed { matrix, device, .. } => Tensor::from_data(
                TensorData::new(matrix.dequantize(), [matrix.rows(), matrix.cols()]),
                device,
            ),
        }
    }

    /// Rows `ids` as `[ids.len(), in]` (an embedding lookup). `ids` must be in range.
    pub fn select_rows(&self, ids: &[u32]) -> Tensor<B, 2> {
        match self {
            LinearWeight::Dense(w) => {
                let device = w.device();
                let ids: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
                let n = ids.len();
                let ids: Tensor<B, 1, Int> = Tensor::from_data(TensorData::new(ids, [n]), &device);
                w.clone().select(0, ids)
            }
            LinearWeight::Packed { matrix, device, .. } => {
                let cols = matrix.cols();
                let mut out = vec![0.0f32; ids.len() * cols];
                for (&id, out) in ids.iter().zip(out.chunks_exact_mut(cols.max(1))) {
                    matrix.dequantize_rows(id as usize, id as usize + 1, out);
                }
                Tensor::from_data(TensorData::new(out, [ids.len(), cols]), device)
            }
        }
    }
}

/// `y = x W^T + b` with `W` stored `[out, in]` (PyTorch's layout): at decoding each
/// output is a contiguous dot product, the layout a GEMV reads at memory speed.
#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    /// `[out, in]`
    pub weight: LinearWeight<B>,
    /// `[out]`
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    /// A layer with a dense weight `[out, in]`.
    pub fn dense(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: LinearWeight::Dense(weight),
            bias,
        }
    }

    /// `x`: `[S, in]` -> `[S, out]`. On the CPU backend one row runs the threaded GEMV and
    /// more rows the host GEMM ([`kernels::gemm`]), on packed weights their packed
    /// counterparts; anything else one matrix product (the transposed weight is a view,
    /// not a copy).
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        if let Some(y) = self.forward_host(&x) {
            return y;
        }
        let y = x.matmul(self.weight.to_dense().transpose());
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze_dim::<2>(0),
            None => y,
        }
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.rows()
    }

    /// Bytes of the weight and bias.
    pub fn bytes(&self) -> usize {
        self.weight.bytes()
            + self
                .bias
                .as_ref()
                .map_or(0, |b| b.shape().num_elements() * b.dtype().size())
    }

    /// Without the CPU backend there is no host path.
    #[cfg(not(feature = "flex"))]
    fn forward_host(&self, _: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        None
    }

    /// `[S, in]` -> `[S, out]` on the host buffers: [`kernels::gemv`] for one row,
    /// [`kernels::gemv_rows`] for up to [`MULTI_VECTOR_ROWS`] (a batched decoding step),
    /// [`kernels::gemm`] for more, or [`PackedMatrix::gemv`] and [`PackedMatrix::matmul`]
    /// on packed weights; `None` on other backends or layouts.
    #[cfg(feature = "flex")]
    fn forward_host(&self, x: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
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
        let (y, device) = match &self.weight {
            LinearWeight::Dense(weight) => {
                let (w, xs) = host_buffers(weight, x)?;
                let (w, xs) = (host::contiguous(&w)?, host::contiguous(&xs)?);
                let y = if rows > 1 && rows <= MULTI_VECTOR_ROWS && inp > 0 {
                    // A few rows (a batched decoding step): each weight row read once.
                    let mut y = vec![0.0f32; rows * out];
                    kernels::gemv_rows(w, xs, inp, bias, &mut y);
                    y
                } else if rows > 1 && inp > 0 {
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
                (y, weight.device())
            }
            LinearWeight::Packed {
                matrix,
                device,
                int8_activations,
            } => {
                let xs = host::flex(x)?.to_contiguous();
                let xs = host::contiguous(&xs)?;
                let y = if rows == 0 {
                    Vec::new()
                } else if *int8_activations {
                    // Every product, any number of rows: each row's result has the bits of
                    // that row alone, so a sequence's output never depends on its batch.
                    let mut y = Vec::with_capacity(rows * out);
                    for xs in xs.chunks(INT8_CHUNK_ROWS * inp) {
                        y.extend(matrix.gemv_rows_int8(xs, bias));
                    }
                    y
                } else if rows == 1 {
                    let mut y = vec![0.0f32; out];
                    matrix.gemv(xs, bias, &mut y);
                    y
                } else {
                    matrix.matmul(xs, bias)
                };
                (y, device.clone())
            }
        };
        Some(Tensor::from_data(TensorData::new(y, [rows, out]), &device))
    }
}

impl<B: Backend> Linear<B> {
    /// SwiGLU's middle fused into this projection, for a weight `[2 inter, in]` of gate
    /// rows then up rows and no bias: `x` `[S, in]` -> `silu(gate) * up` `[S, inter]`, with
    /// the bits of [`Linear::forward`] then [`kernels::silu_mul`] ([`kernels::gemm_silu_mul`]).
    /// `None` for packed weights, for one row (the decoding GEMV's), off the CPU backend, or where that
    /// kernel does not run.
    #[cfg(feature = "flex")]
    pub fn forward_silu_mul_host(&self, x: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        let [rows, inp] = x.dims();
        if rows < 2 || inp == 0 || self.bias.is_some() {
            return None;
        }
        let LinearWeight::Dense(weight) = &self.weight else {
            return None;
        };
        let (w, xs) = host_buffers(weight, x)?;
        let (w, xs) = (host::contiguous(&w)?, host::contiguous(&xs)?);
        let y = kernels::gemm_silu_mul(w, xs, inp)?;
        let inter = y.len() / rows;
        Some(Tensor::from_data(
            TensorData::new(y, [rows, inter]),
            &weight.device(),
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
