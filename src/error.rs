//! The crate's one error type. Every check that can fail on user input runs
//! before any work (and, for GPU paths, before any launch) and names the
//! offending value.

use std::fmt;

/// Everything that can go wrong in nvlm-vision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// An image dimension is zero or above [`crate::preprocess::MAX_SIDE`].
    InvalidImageSize {
        width: u64,
        height: u64,
        reason: &'static str,
    },
    /// The row stride is smaller than one row of pixels.
    StrideTooSmall { stride: usize, min_stride: usize },
    /// The pixel buffer is shorter than `stride * (height - 1) + row_bytes`.
    BufferTooShort {
        what: &'static str,
        len: usize,
        needed: usize,
    },
    /// A pixel format this crate does not convert (see [`crate::preprocess::PixelFormat`]).
    UnsupportedFormat(String),
    /// A DHR configuration that no model uses and the planner refuses.
    InvalidConfig(String),
    /// A normalisation std of zero, or a non-finite mean/std.
    InvalidNormalization(String),
    /// Tensor shapes, strides or lengths that do not fit together, or a
    /// tensor too large for the kernels' index types.
    InvalidShape(String),
    /// A valid request this crate does not implement (e.g. a head_dim
    /// without a kernel).
    Unsupported(String),
    /// A GPU entry point in a build without compiled kernels (no nvcc at
    /// build time) or with a kernel it cannot run safely, or no usable CUDA
    /// driver or device.
    CudaUnavailable(String),
    /// A CUDA object made in another context than the GPU's: a stream
    /// handed to [`crate::cuda::Gpu::on_stream`], a
    /// [`crate::preprocess::PinnedImage`], device image or output tensor
    /// handed to a preprocessor, or a device buffer handed to attention,
    /// the projector or a GEMM (refused before anything is queued: a kernel
    /// would fault on memory its device cannot reach).
    OfAnotherContext {
        what: &'static str,
        its_device: usize,
        gpu_device: usize,
    },
    /// A CUDA driver call failed; the message names the call.
    Cuda(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidImageSize {
                width,
                height,
                reason,
            } => {
                write!(f, "invalid image size {width}x{height}: {reason}")
            }
            Error::StrideTooSmall { stride, min_stride } => write!(
                f,
                "row stride {stride} bytes is smaller than one row ({min_stride} bytes)"
            ),
            Error::BufferTooShort { what, len, needed } => {
                write!(f, "{what} buffer too short: {len} bytes, need {needed}")
            }
            Error::UnsupportedFormat(s) => write!(f, "unsupported pixel format: {s}"),
            Error::InvalidConfig(s) => write!(f, "invalid DHR config: {s}"),
            Error::InvalidNormalization(s) => write!(f, "invalid normalisation: {s}"),
            Error::InvalidShape(s) => write!(f, "invalid shape: {s}"),
            Error::Unsupported(s) => write!(f, "unsupported: {s}"),
            Error::CudaUnavailable(s) => write!(f, "CUDA unavailable: {s}"),
            Error::OfAnotherContext {
                what,
                its_device,
                gpu_device,
            } => write!(
                f,
                "the {what} belongs to another CUDA context (on device {its_device}) than this \
                 GPU's (on device {gpu_device})"
            ),
            Error::Cuda(s) => write!(f, "CUDA error: {s}"),
        }
    }
}

impl std::error::Error for Error {}

/// Shorthand used across the crate.
pub type Result<T> = std::result::Result<T, Error>;
