//! One attention step through both paths, for tests that compare them.

use burn::tensor::Tensor;
use cake_core::LayerCache;
use cake_models::Cpu;
use cake_models::layers::{Attention, AttentionOutput, AttentionRequest, RopeTables};

/// Runs `x` (`[S, hidden]`, positions `start..start + S`) through the CPU fast path
/// ([`Attention::forward`], appending to `host`) and through the generic Burn path
/// ([`Attention::forward_generic`], appending to `generic`) with the same request and no
/// hook; returns the two outputs, fast path first.
pub fn host_and_generic(
    attn: &Attention<Cpu>,
    x: Tensor<Cpu, 2>,
    start: usize,
    rope: &RopeTables<Cpu>,
    (host, generic): (&mut LayerCache<Cpu>, &mut LayerCache<Cpu>),
    request: AttentionRequest,
) -> (AttentionOutput<Cpu>, AttentionOutput<Cpu>) {
    let fast = attn
        .forward(x.clone(), start, rope, host, request, &mut |_, _, _| Ok(()))
        .expect("fast path");
    let qkv = attn.qkv.forward(x);
    let slow = attn
        .forward_generic(qkv, start, rope, generic, request, &mut |_, _, _| Ok(()))
        .expect("generic path");
    (fast, slow)
}
