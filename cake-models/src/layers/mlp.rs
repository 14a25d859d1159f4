//! The SwiGLU feed-forward block.

#[cfg(feature = "flex")]
use burn::tensor::TensorData;
use burn::tensor::{Tensor, activation, backend::Backend};
#[cfg(feature = "flex")]
use cake_core::host;

use super::Linear;
#[cfg(feature = "flex")]
use cake_kernels as kernels;

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`, with the gate and up projections
/// fused into one product.
#[derive(Debug, Clone)]
pub struct Mlp<B: Backend> {
    /// `[2 * inter, hidden]`: the gate rows, then the up rows.
    pub gate_up: Linear<B>,
    /// `[hidden, inter]`
    pub down: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// `x`: `[S, hidden]` -> `[S, hidden]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        // [S, inter] straight from the fused product where the CPU kernel serves it.
        #[cfg(feature = "flex")]
        if let Some(hidden) = self.gate_up.forward_silu_mul_host(&x) {
            return self.down.forward(hidden);
        }
        // [S, 2 * inter]
        let gate_up = self.gate_up.forward(x);
        let [s, width] = gate_up.dims();
        let inter = width / 2;
        let hidden = match Self::silu_mul_host(&gate_up) {
            Some(h) => h,
            None => {
                let gate = gate_up.clone().narrow(1, 0, inter);
                let up = gate_up.narrow(1, inter, inter);
                activation::silu(gate) * up
            }
        };
        debug_assert_eq!(hidden.dims(), [s, inter]);
        self.down.forward(hidden)
    }

    /// Without the CPU backend there is no host path.
    #[cfg(not(feature = "flex"))]
    fn silu_mul_host(_: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        None
    }

    /// `[S, 2 * inter]` -> `[S, inter]` on the host buffer.
    #[cfg(feature = "flex")]
    fn silu_mul_host(gate_up: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        let [s, width] = gate_up.dims();
        let host = host::flex(gate_up)?.to_contiguous();
        let data = host::contiguous(&host)?;
        let mut out = vec![0.0f32; s * width / 2];
        kernels::silu_mul(data, width / 2, &mut out);
        Some(Tensor::from_data(
            TensorData::new(out, [s, width / 2]),
            &gate_up.device(),
        ))
    }
}
