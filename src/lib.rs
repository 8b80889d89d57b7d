//! nvlm-vision: the vision path of NVLM-1.0 and InternVL models.
//!
//! - [`preprocess`]: dynamic-high-resolution tiling with a Pillow-exact
//!   bicubic resize and torchvision-exact normalisation, on the CPU and on
//!   the GPU;
//! - [`attention`]: InternViT flash attention (portable and Hopper kernels),
//!   qk-RMSNorm and the attention sub-layer;
//! - [`projector`]: pixel-shuffle + LayerNorm and the `mlp1` GEMMs.
//!
//! Each GPU path has a CPU reference in its module; the kernels are
//! compiled by build.rs and loaded through [`cuda::Gpu`].

pub mod abi;
pub mod attention;
pub mod cuda;
pub mod dtype;
pub mod error;
pub mod gemm;
pub mod hopper;
#[cfg(test)]
mod hopper_selftest_emulated;
#[cfg(test)]
mod host_emulation;
// Lets unit tests include files of tests/common, which name the crate.
#[cfg(test)]
extern crate self as nvlm_vision;
pub mod preprocess;
pub mod projector;

pub use error::{Error, Result};

/// Engines share the GPU objects between threads (one per request, say):
/// each must stay `Send + Sync`. A compile-time check.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<cuda::Gpu>();
    shared::<gemm::Gemm>();
    shared::<preprocess::CudaPreprocessor>();
    shared::<preprocess::PinnedImage>();
    shared::<preprocess::DeviceImage>();
    shared::<attention::AttentionBlock>();
    shared::<projector::gpu::Projector>();
};
