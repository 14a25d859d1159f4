//! Inputs shared by the benchmarks: deterministic pseudo-random values and tensors on the
//! burn-flex CPU backend.
#![allow(dead_code)]

use burn::tensor::{Tensor, TensorData};
use burn_flex::Flex;

/// The benchmarked backend.
pub type B = Flex;

/// Deterministic pseudo-random values in [-1, 1) (xorshift).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// A tensor of [`values`] times `scale`.
pub fn tensor3(shape: [usize; 3], seed: u64, scale: f32) -> Tensor<B, 3> {
    let data: Vec<f32> = values(shape.iter().product(), seed)
        .into_iter()
        .map(|v| v * scale)
        .collect();
    Tensor::from_data(TensorData::new(data, shape), &Default::default())
}
