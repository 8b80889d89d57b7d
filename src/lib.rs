//! nvlm-vision: the vision path of NVLM-1.0 and InternVL models.
//!
//! Today the crate holds the dynamic-high-resolution preprocessing stage on
//! the CPU ([`preprocess`]): the tile planner, tile tags, a Pillow-exact
//! bicubic resize and torchvision-exact normalisation. It is the reference the
//! GPU kernels are tested against, and the default path on machines without a
//! GPU.

pub mod abi;
pub mod attention;
pub mod cuda;
pub mod dtype;
pub mod error;
pub mod gemm;
pub mod hopper;
pub mod preprocess;
pub mod projector;

pub use error::{Error, Result};
