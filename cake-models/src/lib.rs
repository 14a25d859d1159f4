//! Llama, Mistral and Qwen2 on Burn, with per-layer caches from `cake-core`.
//!
//! [`load::load`] turns a Hugging Face folder or a GGUF file into a [`model::Model`], whose
//! `prefill` / `forward_decode` take explicit positions and call a
//! [`cake_core::KvCompressor`] at fixed points; [`generate::generate`] runs the
//! prefill + decode loop.

pub mod config;
#[cfg(feature = "flex")]
pub mod cpu;
pub mod fetch;
pub mod generate;
pub mod gguf;
pub mod layers;
pub mod llama;
pub mod load;
pub mod mistral;
pub mod model;
pub mod qwen2;
pub mod tokenizer;
pub mod weights;

pub use config::{Architecture, DecoderConfig};
pub use load::{LoadError, LoadedModel, load};
pub use model::{Model, ModelError, Prefill, PrefillLogits};

/// The CPU backend (burn-flex, f32).
#[cfg(feature = "flex")]
pub type Cpu = burn_flex::Flex;
/// The CPU backend's device.
#[cfg(feature = "flex")]
pub type CpuDevice = burn_flex::FlexDevice;

/// The CUDA backend (burn-cuda, f32; the driver is loaded at run time).
#[cfg(feature = "cuda")]
pub type Cuda = burn_cuda::Cuda<f32, i32>;
