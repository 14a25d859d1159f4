//! Building blocks shared by every architecture, one file each: linear projection and
//! RMSNorm, rotary embedding (with Llama-3 frequency scaling), the SwiGLU MLP,
//! grouped-query attention over a [`cake_core::LayerCache`], and the decoder layer that
//! combines them.
//!
//! Everything works on one sequence (no batch dimension) in the backend's float type. On
//! the CPU backend the layers run the host kernels of [`cake_kernels`] (chosen by type);
//! every other backend runs the generic Burn code.

mod attention;
mod decoder;
mod linear;
mod mlp;
mod rotary;

pub use attention::{AfterAttend, Attention, AttentionOutput, AttentionRequest};
pub use decoder::DecoderLayer;
pub use linear::{Linear, LinearWeight, RmsNorm};
pub use mlp::Mlp;
pub use rotary::{HostTables, RopeTables, Rotary};
