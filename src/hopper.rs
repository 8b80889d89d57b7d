//! Hopper-only host pieces: TMA tensor maps (`cuTensorMapEncodeTiled`),
//! checked before the driver sees them, the compute-capability gate for
//! sm_90a kernels, and the register check of warp-specialised ones.

use crate::cuda::{Gpu, driver_error};
use crate::error::{Error, Result};
use cudarc::driver::sys::{
    CUfunction_attribute_enum, CUresult, CUtensorMap, CUtensorMapDataType, CUtensorMapFloatOOBfill,
    CUtensorMapInterleave, CUtensorMapL2promotion, CUtensorMapSwizzle,
};
use cudarc::driver::{CudaFunction, DeviceRepr};

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

    /// Where byte `offset` of a box, its rows packed densely one after
    /// another, lands in shared memory from a 1024-byte aligned start:
    /// address bits [4, 4 + b) XOR bits [7, 7 + b), b = 1, 2, 3 for the
    /// 32-, 64- and 128-byte swizzles (CUTLASS's `Swizzle<b, 4, 3>`).
    pub fn position(self, offset: u64) -> u64 {
        match self.span_bytes() {
            None => offset,
            Some(span) => offset ^ (((offset >> 7) & (span / 16 - 1)) << 4),
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

/// A rank-`R` tensor in device memory as TMA sees it, innermost dimension
/// first (the innermost must be contiguous).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TiledTensor<const R: usize> {
    /// Device address of element (0, ..., 0).
    pub address: u64,
    pub element: TmaElement,
    pub dims: [u64; R],
    /// Bytes between neighbours along each dimension; `strides_bytes[0]`
    /// must be the element size.
    pub strides_bytes: [u64; R],
    /// The box one copy moves, in elements per dimension.
    pub box_dims: [u32; R],
    pub swizzle: TmaSwizzle,
}

/// A 2-D row-major matrix: `(width, rows)` with a row stride.
pub type Tiled2d = TiledTensor<2>;

impl Tiled2d {
    /// A row-major matrix of `rows` rows of `width` elements,
    /// `row_stride_bytes` apart, moved in boxes of `box_width` x `box_rows`.
    pub fn matrix(
        address: u64,
        element: TmaElement,
        (width, rows, row_stride_bytes): (u64, u64, u64),
        (box_width, box_rows): (u32, u32),
        swizzle: TmaSwizzle,
    ) -> Tiled2d {
        TiledTensor {
            address,
            element,
            dims: [width, rows],
            strides_bytes: [element.size_bytes(), row_stride_bytes],
            box_dims: [box_width, box_rows],
            swizzle,
        }
    }
}

impl<const R: usize> TiledTensor<R> {
    /// The driver's rules for a tiled tensor map, checked here so that a
    /// violation is an error naming the field instead of an opaque
    /// CUDA_ERROR_INVALID_VALUE.
    pub fn check(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidShape(format!("TMA tensor map: {what}")));
        let elem = self.element.size_bytes();
        if !(1..=5).contains(&R) {
            return bad(format!("rank {R} is outside 1..=5"));
        }
        // The driver's rule. The CUDA Programming Guide's table of swizzle
        // requirements lists 128 bytes for a swizzled map's global address;
        // tests/gpu_hopper_primitives.rs loads a box through a map 16 bytes
        // past a 128-byte boundary, so a GPU run says whether that holds.
        if !self.address.is_multiple_of(16) {
            return bad(format!(
                "address {:#x} is not 16-byte aligned",
                self.address
            ));
        }
        for (i, &dim) in self.dims.iter().enumerate() {
            if dim == 0 || dim > 1 << 32 {
                return bad(format!("dimension {i} size {dim} is outside 1..=2^32"));
            }
        }
        if self.strides_bytes[0] != elem {
            return bad(format!(
                "the innermost stride is {} bytes, not the element size {elem}",
                self.strides_bytes[0]
            ));
        }
        for (i, &stride) in self.strides_bytes.iter().enumerate().skip(1) {
            if !stride.is_multiple_of(16) || stride >= 1 << 40 {
                return bad(format!(
                    "dimension {i} stride {stride} bytes is not a multiple of 16 below 2^40"
                ));
            }
        }
        if R > 1 && self.strides_bytes[1] < self.dims[0] * elem {
            return bad(format!(
                "dimension 1 stride {} bytes is shorter than a row ({} bytes)",
                self.strides_bytes[1],
                self.dims[0] * elem
            ));
        }
        for (i, &dim) in self.box_dims.iter().enumerate() {
            if !(1..=256).contains(&dim) {
                return bad(format!("box dimension {i} size {dim} is outside 1..=256"));
            }
        }
        let box_row_bytes = u64::from(self.box_dims[0]) * elem;
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
    /// zeros; stores outside the tensor are dropped. Taking the `Gpu` is the
    /// proof that the driver library is loaded.
    pub fn tiled<const R: usize>(_gpu: &Gpu, tensor: &TiledTensor<R>) -> Result<TensorMap> {
        tensor.check()?;
        let element_strides = [1u32; R];
        let mut map = CUtensorMap { opaque: [0; 16] };
        // SAFETY: every pointer is to a live array of R elements (the
        // driver reads R - 1 strides, skipping the innermost); the values
        // passed the driver's rules in `check`.
        let status = unsafe {
            cudarc::driver::sys::cuTensorMapEncodeTiled(
                &mut map,
                tensor.element.driver(),
                R as u32,
                tensor.address as *mut std::ffi::c_void,
                tensor.dims.as_ptr(),
                tensor.strides_bytes[1..].as_ptr(),
                tensor.box_dims.as_ptr(),
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
    let (major, minor) = gpu.compute_capability();
    if (major, minor) != (9, 0) {
        return Err(Error::Unsupported(format!(
            "{what} needs compute capability 9.0 (sm_90a); device {} is {major}.{minor}",
            gpu.context().ordinal()
        )));
    }
    Ok(())
}

/// Refuses a build of a warp-specialised kernel that starts with fewer
/// registers a thread than `needed`, what its setmaxnreg hand-over takes
/// (the consumers' `.inc` takes the registers the producer's `.dec` gave
/// back, out of the block's allocation at launch): launched, it would hang
/// rather than fail.
pub(crate) fn check_entry_registers(
    function: &CudaFunction,
    kernel: &str,
    needed: u32,
) -> Result<()> {
    // SAFETY: `function` is a kernel of a loaded module.
    let registers = unsafe {
        cudarc::driver::result::function::get_function_attribute(
            function.cu_function(),
            CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_NUM_REGS,
        )
    }
    .map_err(driver_error("cuFuncGetAttribute(registers)"))?;
    if (registers as u32) < needed {
        return Err(Error::CudaUnavailable(format!(
            "{kernel} was built with {registers} registers a thread; its setmaxnreg \
             hand-over needs at least {needed}, or it would never finish"
        )));
    }
    Ok(())
}

/// (entry, registers) of each sm_90a entry in a ptxas report.
#[cfg(test)]
pub(crate) fn sm90a_registers(report: &str) -> Vec<(String, u32)> {
    let mut entry = None;
    let mut found = Vec::new();
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            entry = rest
                .split_once("' for 'sm_90a'")
                .map(|(name, _)| name.to_string());
        } else if let (Some(name), Some(used)) = (&entry, line.split("Used ").nth(1)) {
            let registers = used.split(' ').next().unwrap().parse().unwrap();
            found.push((name.clone(), registers));
            entry = None;
        }
    }
    found
}

/// Asserts that the build has `count` sm_90a entries named `prefix*`, each
/// with at least `needed` registers at entry (their setmaxnreg hand-over);
/// skips in a build without kernels.
#[cfg(test)]
pub(crate) fn assert_entry_registers(prefix: &str, count: usize, needed: u32) {
    let Some(report) = crate::cuda::ptxas_report() else {
        println!("skipped: this build has no kernels (nvcc was not found)");
        return;
    };
    let entries: Vec<_> = sm90a_registers(report)
        .into_iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .collect();
    assert_eq!(entries.len(), count, "{entries:?}");
    for (name, registers) in entries {
        assert!(
            registers >= needed,
            "{name}: {registers} registers, setmaxnreg needs {needed}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swizzle_positions_permute_16_byte_chunks_within_each_row() {
        // Row 0 is unmoved; row 1's chunk 0 swaps with its chunk 1, and so on.
        assert_eq!(TmaSwizzle::B128.position(0), 0);
        assert_eq!(TmaSwizzle::B128.position(128), 128 + 16);
        assert_eq!(TmaSwizzle::B128.position(128 + 16 + 3), 128 + 3);
        assert_eq!(
            TmaSwizzle::B128.position(7 * 128 + 5 * 16),
            7 * 128 + 2 * 16
        );
        assert_eq!(TmaSwizzle::B64.position(7 * 128 + 5 * 16), 7 * 128 + 6 * 16);
        assert_eq!(
            TmaSwizzle::None.position(7 * 128 + 5 * 16),
            7 * 128 + 5 * 16
        );
        for swizzle in [TmaSwizzle::B32, TmaSwizzle::B64, TmaSwizzle::B128] {
            let mut seen: Vec<u64> = (0..2048).map(|o| swizzle.position(o)).collect();
            seen.sort_unstable();
            assert!(
                seen.iter().copied().eq(0..2048),
                "{swizzle:?}: not a permutation"
            );
            // The pattern repeats every 8 rows of 128 bytes.
            assert!((0..1024).all(|o| swizzle.position(o + 1024) == swizzle.position(o) + 1024));
        }
    }

    fn valid() -> Tiled2d {
        Tiled2d::matrix(
            0x7f00_0000_0000,
            TmaElement::Bf16,
            (100, 70, 208),
            (64, 32),
            TmaSwizzle::B128,
        )
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
        let with = |f: &dyn Fn(&mut Tiled2d)| {
            let mut t = valid();
            f(&mut t);
            t
        };
        rejected(with(&|t| t.address += 8), "aligned");
        rejected(with(&|t| t.dims[0] = 0), "dimension 0 size 0");
        rejected(with(&|t| t.dims[1] = (1 << 32) + 1), "dimension 1 size");
        rejected(with(&|t| t.strides_bytes[0] = 4), "innermost stride");
        rejected(with(&|t| t.strides_bytes[1] = 200), "multiple of 16");
        rejected(with(&|t| t.dims[0] = 120), "shorter than a row");
        rejected(with(&|t| t.box_dims[1] = 257), "box dimension 1 size 257");
        rejected(with(&|t| t.box_dims[0] = 0), "box dimension 0 size 0");
        rejected(with(&|t| t.box_dims[0] = 12), "not a multiple of 16");
        rejected(with(&|t| t.box_dims[0] = 72), "swizzle span");
        with(&|t| {
            t.box_dims[0] = 72;
            t.swizzle = TmaSwizzle::None;
        })
        .check()
        .unwrap();
        let rank6 = TiledTensor::<6> {
            address: 0,
            element: TmaElement::U8,
            dims: [16; 6],
            strides_bytes: [1, 16, 256, 4096, 65536, 1 << 20],
            box_dims: [16; 6],
            swizzle: TmaSwizzle::None,
        };
        match rank6.check() {
            Err(Error::InvalidShape(m)) => assert!(m.contains("rank 6"), "{m}"),
            other => panic!("rank 6 accepted: {other:?}"),
        }
    }

    #[test]
    fn no_kernel_has_its_wgmmas_serialised_or_an_arrive_injected() {
        let Some(report) = crate::cuda::ptxas_report() else {
            println!("skipped: this build has no kernels (nvcc was not found)");
            return;
        };
        // Every wgmma kernel is in the report (a test that reads nothing
        // would pass too).
        let entries = sm90a_registers(report);
        for prefix in ["attention_hopper_", "linear_hopper_", "selftest_wgmma_"] {
            assert!(
                entries.iter().any(|(name, _)| name.starts_with(prefix)),
                "no {prefix}* entry in the ptxas report"
            );
        }
        let notes: Vec<&str> = report
            .lines()
            .filter(|l| {
                l.contains("wgmma.mma_async instructions are serialized")
                    || l.contains("warpgroup.arrive is injected")
            })
            .collect();
        assert!(notes.is_empty(), "{notes:#?}");
    }
}
