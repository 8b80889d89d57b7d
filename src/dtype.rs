//! Element types of the tensors the crate writes.

use half::{bf16, f16};

/// A tensor element type, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    Bf16,
    F16,
}

impl Dtype {
    /// Parses "f32", "bf16" or "f16".
    pub fn parse(name: &str) -> Option<Dtype> {
        match name {
            "f32" => Some(Dtype::F32),
            "bf16" => Some(Dtype::Bf16),
            "f16" => Some(Dtype::F16),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }

    pub fn size_bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 | Dtype::F16 => 2,
        }
    }
}

/// A Rust type the crate writes tensors of. Narrow types are the
/// round-to-nearest-even of the f32 result, as torch's `.to(dtype)`.
/// `Pod` lets callers view a tensor as bytes (`bytemuck::cast_slice`).
pub trait TensorElement: bytemuck::Pod + Default + Send + Sync {
    const DTYPE: Dtype;
    fn from_f32(v: f32) -> Self;
}

impl TensorElement for f32 {
    const DTYPE: Dtype = Dtype::F32;
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl TensorElement for bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl TensorElement for f16 {
    const DTYPE: Dtype = Dtype::F16;
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}
