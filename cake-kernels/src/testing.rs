//! Deterministic inputs for the kernels' tests, benchmarks and examples.

/// `n` pseudo-random values in [-1, 1) from `seed` (xorshift64), the same for a given seed
/// on every machine.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
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
