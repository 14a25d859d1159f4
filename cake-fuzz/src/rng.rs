//! A small deterministic random generator (SplitMix64): every execution derives its own
//! stream from `(seed, target, execution index)`, so any finding replays from those three
//! numbers alone.

/// The fuzzer's generator: the workspace's SplitMix64.
pub use cake_longbench::synthetic::rng::SplitMix64 as Rng;

/// The generator of one execution: `seed`, the target's name and the execution index
/// mixed so that neighbouring executions get unrelated streams.
pub fn for_execution(seed: u64, target: &str, index: u64) -> Rng {
    let mut h = 0xcbf2_9ce4_8422_2325u64; // FNV-1a of the target name
    for b in target.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut r = Rng::new(seed ^ h.rotate_left(17));
    let a = r.next_u64();
    Rng::new(a ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4)
            .map(|_| for_execution(1, "gguf", 7).next_u64())
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            for_execution(1, "gguf", 7).next_u64(),
            for_execution(1, "gguf", 8).next_u64()
        );
        assert_ne!(
            for_execution(1, "gguf", 7).next_u64(),
            for_execution(1, "config", 7).next_u64()
        );
        let mut r = Rng::new(3);
        assert!((0..1000).all(|_| r.below(10) < 10));
    }
}
