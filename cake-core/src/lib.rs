//! CAKE (Cascading and Adaptive KV cache Eviction) math, generic over Burn's `Backend`.
//!
//! This crate holds no model and does no IO beyond reading score-function files: models
//! (see `cake-models`) compute attention and hand the tensors here through the
//! [`KvCompressor`] hooks.

pub mod cache;
pub mod compressor;

pub use cache::LayerCache;
pub use compressor::{KeepAll, KvCompressor};
