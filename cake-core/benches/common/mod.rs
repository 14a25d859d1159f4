//! Inputs shared by the benchmarks: deterministic pseudo-random values and tensors on the
//! burn-flex CPU backend.
#![allow(dead_code)]

use burn::tensor::{Tensor, TensorData};
use burn_flex::Flex;

/// The benchmarked backend.
pub type B = Flex;

/// Deterministic pseudo-random values in [-1, 1).
pub use cake_kernels::testing::pseudo_random as values;

/// A tensor of [`values`] times `scale`.
pub fn tensor3(shape: [usize; 3], seed: u64, scale: f32) -> Tensor<B, 3> {
    let data: Vec<f32> = values(shape.iter().product(), seed)
        .into_iter()
        .map(|v| v * scale)
        .collect();
    Tensor::from_data(TensorData::new(data, shape), &Default::default())
}
