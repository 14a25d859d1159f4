//! Host kernels on f32 slices for the CPU backend: SIMD primitives, matrix products (GEMV for
//! decoding, tiled GEMM for prefill, and both on weights packed as GGUF stores them),
//! grouped-query attention over ragged per-head caches,
//! the row-wise kernels of a decoder layer (RMS norm, rotary embedding, SwiGLU), the small
//! spinning thread pool of a decoding step, and read-bandwidth probes.
//!
//! Nothing here knows tensors or models: every kernel takes slices and shapes. `cake-core`
//! (feature `flex`) and `cake-models` call these on the CPU backend's buffers; other
//! backends never reach them.

pub mod alloc;
pub mod attention;
#[cfg(target_arch = "x86_64")]
mod flash;
mod gemm;
mod gemv;
pub mod pool;
pub mod probe;
pub mod quant;
pub mod rowwise;
pub mod simd;
pub mod testing;

pub use alloc::{LineAligned, tune_allocator, tune_threads};
pub use attention::{
    AttentionShape, DecodeQuery, KvRows, RowRun, Visible, attention, decode_attention_batch,
    packed_starts, probabilities,
};
pub use gemm::{gemm, gemm_new, gemm_silu_mul};
pub use gemv::{gemv, gemv_rows};
pub use probe::{BandwidthProbe, read_bandwidth};
pub use quant::{BlockFormat, BlockKernels, PackError, PackedMatrix, PackedRows};
pub use rowwise::{add_assign, rms_norm, rope_in_place, silu_mul};
