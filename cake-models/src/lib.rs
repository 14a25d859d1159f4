//! Llama, Mistral and Qwen2 on Burn, with per-layer caches from `cake-core`.

pub mod config;
pub mod fetch;
pub mod generate;
pub mod gguf;
pub mod layers;
pub mod llama;
pub mod mistral;
pub mod model;
pub mod qwen2;
pub mod tokenizer;
pub mod weights;
