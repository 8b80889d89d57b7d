//! Hopper-only host pieces: TMA tensor maps (`cuTensorMapEncodeTiled`),
//! checked before the driver sees them, and the compute-capability gate for
//! sm_90a kernels.

use crate::cuda::Gpu;
use crate::error::{Error, Result};
use cudarc::driver::DeviceRepr;
use cudarc::driver::sys::{
    CUresult, CUtensorMap, CUtensorMapDataType, CUtensorMapFloatOOBfill, CUtensorMapInterleave,
    CUtensorMapL2promotion, CUtensorMapSwizzle,
};

/// Element types a tensor map describes here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmaElement {
    U8,
    Bf16,
    F16,
    F32,
}

impl TmaElement {
    pub fn size_bytes(self) -> u64 {
        match self {
            TmaElement::U8 => 1,
            TmaElement::Bf16 | TmaElement::F16 => 2,
            TmaElement::F32 => 4,
        }
    }

    fn driver(self) -> CUtensorMapDataType {
        match self {
            TmaElement::U8 => CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
            TmaElement::Bf16 => CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            TmaElement::F16 => CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
            TmaElement::F32 => CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
        }
    }
}

/// How TMA lays a box out in shared memory; must match the reader's (e.g.
/// the wgmma descriptor's) swizzle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmaSwizzle {
    None,
    B32,
    B64,
    B128,
}

impl TmaSwizzle {
    /// The largest inner box row, in bytes, the swizzle pattern allows.
    fn span_bytes(self) -> Option<u64> {
        match self {
            TmaSwizzle::None => None,
            TmaSwizzle::B32 => Some(32),
            TmaSwizzle::B64 => Some(64),
            TmaSwizzle::B128 => Some(128),
        }
    }

    fn driver(self) -> CUtensorMapSwizzle {
        match self {
            TmaSwizzle::None => CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_NONE,
            TmaSwizzle::B32 => CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_32B,
            TmaSwizzle::B64 => CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_64B,
            TmaSwizzle::B128 => CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
        }
    }
}

/// A 2-D row-major tensor in device memory as TMA sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiled2d {
    /// Device address of element (0, 0).
    pub address: u64,
    pub element: TmaElement,
    /// Elements per row (the contiguous dimension).
    pub width: u64,
    pub rows: u64,
    /// Bytes between rows.
    pub row_stride_bytes: u64,
    /// The box one copy moves: (elements along a row, rows).
    pub box_width: u32,
    pub box_rows: u32,
    pub swizzle: TmaSwizzle,
}

impl Tiled2d {
    /// The driver's rules for a tiled tensor map, checked here so that a
    /// violation is an error naming the field instead of an opaque
    /// CUDA_ERROR_INVALID_VALUE.
    pub fn check(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidShape(format!("TMA tensor map: {what}")));
        let elem = self.element.size_bytes();
        if !self.address.is_multiple_of(16) {
            return bad(format!(
                "address {:#x} is not 16-byte aligned",
                self.address
            ));
        }
        for (name, dim) in [("width", self.width), ("rows", self.rows)] {
            if dim == 0 || dim > 1 << 32 {
                return bad(format!("{name} {dim} is outside 1..=2^32"));
            }
        }
        if !self.row_stride_bytes.is_multiple_of(16) || self.row_stride_bytes >= 1 << 40 {
            return bad(format!(
                "row stride {} bytes is not a multiple of 16 below 2^40",
                self.row_stride_bytes
            ));
        }
        if self.row_stride_bytes < self.width * elem {
            return bad(format!(
                "row stride {} bytes is shorter than a row ({} bytes)",
                self.row_stride_bytes,
                self.width * elem
            ));
        }
        for (name, dim) in [("box width", self.box_width), ("box rows", self.box_rows)] {
            if !(1..=256).contains(&dim) {
                return bad(format!("{name} {dim} is outside 1..=256"));
            }
        }
        let box_row_bytes = u64::from(self.box_width) * elem;
        if !box_row_bytes.is_multiple_of(16) {
            return bad(format!(
                "a box row is {box_row_bytes} bytes, not a multiple of 16"
            ));
        }
        if let Some(span) = self.swizzle.span_bytes()
            && box_row_bytes > span
        {
            return bad(format!(
                "a box row of {box_row_bytes} bytes exceeds the {span}-byte swizzle span"
            ));
        }
        Ok(())
    }
}

/// An encoded tensor map, passed by value to a kernel parameter declared
/// `const __grid_constant__ CUtensorMap`. It holds the tensor's raw device
/// address: the caller keeps that memory alive while kernels use the map.
#[derive(Debug, Clone, Copy)]
#[repr(transparent)]
pub struct TensorMap(CUtensorMap);

// SAFETY: CUtensorMap is plain data (16 u64s), the layout the kernels declare.
unsafe impl DeviceRepr for TensorMap {}

impl TensorMap {
    /// Encodes `tensor` (checked first). Out-of-bounds box elements load as
    /// zeros; stores outside the tensor are dropped.
    pub fn tiled_2d(gpu: &Gpu, tensor: &Tiled2d) -> Result<TensorMap> {
        tensor.check()?;
        // The driver library is loadable: `gpu` exists.
        let _ = gpu;
        let dims = [tensor.width, tensor.rows];
        let strides = [tensor.row_stride_bytes];
        let boxes = [tensor.box_width, tensor.box_rows];
        let element_strides = [1u32, 1];
        let mut map = CUtensorMap { opaque: [0; 16] };
        // SAFETY: every pointer is to a live local array of the rank's
        // length (strides: rank - 1); the values passed the driver's rules
        // in `check`.
        let status = unsafe {
            cudarc::driver::sys::cuTensorMapEncodeTiled(
                &mut map,
                tensor.element.driver(),
                2,
                tensor.address as *mut std::ffi::c_void,
                dims.as_ptr(),
                strides.as_ptr(),
                boxes.as_ptr(),
                element_strides.as_ptr(),
                CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
                tensor.swizzle.driver(),
                CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
                CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        };
        if status != CUresult::CUDA_SUCCESS {
            return Err(Error::Cuda(format!("cuTensorMapEncodeTiled: {status:?}")));
        }
        Ok(TensorMap(map))
    }
}

/// `Ok` on a device that runs this build's sm_90a code (compute capability
/// 9.0 exactly: sm_90a code does not run on later architectures).
pub fn require_sm90a(gpu: &Gpu, what: &str) -> Result<()> {
    let (major, minor) = gpu.compute_capability()?;
    if (major, minor) != (9, 0) {
        return Err(Error::Unsupported(format!(
            "{what} needs compute capability 9.0 (sm_90a); device 0 is {major}.{minor}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Tiled2d {
        Tiled2d {
            address: 0x7f00_0000_0000,
            element: TmaElement::Bf16,
            width: 100,
            rows: 70,
            row_stride_bytes: 208,
            box_width: 64,
            box_rows: 32,
            swizzle: TmaSwizzle::B128,
        }
    }

    fn rejected(t: Tiled2d, needle: &str) {
        match t.check() {
            Err(Error::InvalidShape(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
            other => panic!("expected InvalidShape naming {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_map_passes() {
        valid().check().unwrap();
    }

    #[test]
    fn each_driver_rule_is_an_error_naming_it() {
        rejected(
            Tiled2d {
                address: 0x7f00_0000_0008,
                ..valid()
            },
            "aligned",
        );
        rejected(
            Tiled2d {
                width: 0,
                ..valid()
            },
            "width 0",
        );
        rejected(
            Tiled2d {
                rows: (1 << 32) + 1,
                ..valid()
            },
            "rows",
        );
        rejected(
            Tiled2d {
                row_stride_bytes: 200,
                ..valid()
            },
            "multiple of 16",
        );
        rejected(
            Tiled2d {
                width: 120,
                ..valid()
            },
            "shorter than a row",
        );
        rejected(
            Tiled2d {
                box_rows: 257,
                ..valid()
            },
            "box rows 257",
        );
        rejected(
            Tiled2d {
                box_width: 0,
                ..valid()
            },
            "box width 0",
        );
        rejected(
            Tiled2d {
                box_width: 12,
                ..valid()
            },
            "not a multiple of 16",
        );
        rejected(
            Tiled2d {
                box_width: 72,
                ..valid()
            },
            "swizzle span",
        );
        Tiled2d {
            box_width: 72,
            swizzle: TmaSwizzle::None,
            ..valid()
        }
        .check()
        .unwrap();
    }
}
