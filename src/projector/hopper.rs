//! Launching the sm_90a Linear (kernels/projector_hopper.cu): `y[m, n] =
//! act(x[m, k] · w[n, k]ᵀ + bias[n])`, act the exact erf GELU or none, in
//! PyTorch's `nn.Linear` layout as [`crate::gemm::Gemm::linear`], with the
//! bias and the GELU applied to the f32 sums and the result rounded once.
//! [`plan`] makes the launch without a device (the host emulation runs
//! exactly it); [`super::gpu::ProjectorKernels::linear_hopper`] queues it.

use crate::abi::{
    NVLM_HOPPER_LINEAR_BLOCK_K, NVLM_HOPPER_LINEAR_BLOCK_M, NVLM_HOPPER_LINEAR_BLOCK_N_NARROW,
    NVLM_HOPPER_LINEAR_BLOCK_N_WIDE, NVLM_HOPPER_LINEAR_CLUSTER_M,
    NVLM_HOPPER_LINEAR_CONSUMER_REGISTERS, NVLM_HOPPER_LINEAR_PRODUCER_REGISTERS,
    NVLM_HOPPER_LINEAR_SMEM_BYTES_NARROW, NVLM_HOPPER_LINEAR_SMEM_BYTES_WIDE,
    NVLM_HOPPER_LINEAR_THREADS, NvlmHopperLinear,
};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::gemm::LinearShape;
use crate::hopper::{Tiled2d, TmaElement, TmaSwizzle};
use cudarc::driver::LaunchConfig;

/// The fewest registers a thread the kernel may be built with (its
/// setmaxnreg hand-over, kernels/abi.h).
pub(super) const ENTRY_REGISTERS_NEEDED: u32 = (NVLM_HOPPER_LINEAR_PRODUCER_REGISTERS * 128
    + 2 * 128 * NVLM_HOPPER_LINEAR_CONSUMER_REGISTERS)
    .div_ceil(NVLM_HOPPER_LINEAR_THREADS);

/// The width of the kernel's output tiles, in output features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileWidth {
    /// 256 (entries `linear_hopper_n256_*`).
    Wide,
    /// 224 (entries `linear_hopper_n224_*`): NVLM-D-72B's 29568 features
    /// are 132 × 224, whole waves on a 132-SM GPU.
    Narrow,
}

impl TileWidth {
    pub fn columns(self) -> u32 {
        match self {
            TileWidth::Wide => NVLM_HOPPER_LINEAR_BLOCK_N_WIDE,
            TileWidth::Narrow => NVLM_HOPPER_LINEAR_BLOCK_N_NARROW,
        }
    }

    fn shared_mem_bytes(self) -> u32 {
        match self {
            TileWidth::Wide => NVLM_HOPPER_LINEAR_SMEM_BYTES_WIDE,
            TileWidth::Narrow => NVLM_HOPPER_LINEAR_SMEM_BYTES_NARROW,
        }
    }

    /// The width that finishes `shape` soonest when `cluster_slots` CTA
    /// pairs run at once (`cuOccupancyMaxActiveClusters`): a wave of tiles
    /// takes time in proportion to the width, so the fewer
    /// `waves × width` wins, ties to the wide tile (PERF.md, projector
    /// v2.1).
    pub fn for_shape(shape: LinearShape, cluster_slots: u32) -> TileWidth {
        let slots = cluster_slots.max(1) as usize;
        let pairs = shape
            .m
            .div_ceil(NVLM_HOPPER_LINEAR_BLOCK_M as usize)
            .div_ceil(NVLM_HOPPER_LINEAR_CLUSTER_M as usize);
        let time = |width: TileWidth| {
            let columns = width.columns() as usize;
            (pairs * shape.n.div_ceil(columns)).div_ceil(slots) * columns
        };
        if time(TileWidth::Narrow) < time(TileWidth::Wide) {
            TileWidth::Narrow
        } else {
            TileWidth::Wide
        }
    }
}

/// Everything one launch needs apart from the GPU.
#[derive(Debug)]
pub struct HopperLinearLaunch {
    /// x `[m, k]` and w `[n, k]` as the kernel's TMA reads them.
    pub x: Tiled2d,
    pub w: Tiled2d,
    pub params: NvlmHopperLinear,
    pub config: LaunchConfig,
    pub kernel: String,
}

/// The launch in tiles of `width` over `[x, w, bias, y]` device addresses
/// (bias 0: none) of a `shape` whose buffer lengths the caller has checked
/// ([`crate::gemm::check_linear`]). Refuses, naming the reason, what the
/// kernel cannot take: f32, k not a multiple of 8 (TMA reads rows of
/// 16-byte multiples), odd n (the output is stored in pairs), x or w not
/// 16-byte aligned, y or the bias not 4-byte aligned, more than 65535
/// tiles of output features.
pub fn plan(
    dtype: Dtype,
    [x_addr, w_addr, bias_addr, y_addr]: [u64; 4],
    shape: LinearShape,
    gelu: bool,
    width: TileWidth,
) -> Result<HopperLinearLaunch> {
    let (element, suffix) = match dtype {
        Dtype::Bf16 => (TmaElement::Bf16, "bf16"),
        Dtype::F16 => (TmaElement::F16, "f16"),
        Dtype::F32 => {
            return Err(Error::Unsupported(
                "the sm_90a Linear takes bf16 or f16, not f32".into(),
            ));
        }
    };
    let LinearShape { m, n, k } = shape;
    let unsupported = |why: String| {
        Err(Error::Unsupported(format!(
            "sm_90a Linear {shape:?}: {why}"
        )))
    };
    if m == 0 || n == 0 || k == 0 || [m, n, k].iter().any(|&d| d > i32::MAX as usize) {
        return Err(Error::InvalidShape(format!(
            "sm_90a Linear {shape:?}: every dimension must be in 1..=i32::MAX"
        )));
    }
    if !k.is_multiple_of(8) {
        return unsupported(format!(
            "k = {k} is not a multiple of 8 (TMA reads rows of x and w in 16-byte multiples)"
        ));
    }
    if !n.is_multiple_of(2) {
        return unsupported(format!("n = {n} is odd (the output is stored in pairs)"));
    }
    for (what, address, align) in [
        ("x", x_addr, 16),
        ("w", w_addr, 16),
        ("y", y_addr, 4),
        ("bias", bias_addr, 4),
    ] {
        if !address.is_multiple_of(align) {
            return unsupported(format!(
                "{what} at {address:#x} is not {align}-byte aligned"
            ));
        }
    }
    let columns = width.columns();
    let n_tiles = n.div_ceil(columns as usize);
    if n_tiles > 65535 {
        return unsupported(format!(
            "{n_tiles} tiles of {columns} output features (at most 65535)"
        ));
    }
    let m_tiles = m
        .div_ceil(NVLM_HOPPER_LINEAR_BLOCK_M as usize)
        .next_multiple_of(NVLM_HOPPER_LINEAR_CLUSTER_M as usize);
    let row_bytes = 2 * k as u64;
    let matrix = |address: u64, rows: usize, box_rows: u32| {
        let tensor = Tiled2d::matrix(
            address,
            element,
            (k as u64, rows as u64, row_bytes),
            (NVLM_HOPPER_LINEAR_BLOCK_K, box_rows),
            TmaSwizzle::B128,
        );
        tensor.check().map(|()| tensor)
    };
    let x = matrix(x_addr, m, NVLM_HOPPER_LINEAR_BLOCK_M)?;
    // Each CTA of a pair loads its part of the w tile.
    let w = matrix(w_addr, n, columns / NVLM_HOPPER_LINEAR_CLUSTER_M)?;
    Ok(HopperLinearLaunch {
        x,
        w,
        params: NvlmHopperLinear {
            y: y_addr,
            bias: bias_addr,
            m: m as u32,
            n: n as u32,
            k: k as u32,
            gelu: u32::from(gelu),
        },
        config: LaunchConfig {
            grid_dim: (m_tiles as u32, n_tiles as u32, 1),
            block_dim: (NVLM_HOPPER_LINEAR_THREADS, 1, 1),
            shared_mem_bytes: width.shared_mem_bytes(),
        },
        kernel: format!("linear_hopper_n{columns}_{suffix}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRS: [u64; 4] = [1 << 20, 2 << 20, 3 << 20, 4 << 20];

    fn shape(m: usize, n: usize, k: usize) -> LinearShape {
        LinearShape { m, n, k }
    }

    #[test]
    fn grid_covers_the_output_in_whole_pairs() {
        // NVLM-D-72B's Linear 1 at 7 tiles: 14 x 115.5 wide tiles, or
        // 14 x 132 narrow ones.
        let nvlm = shape(1792, 29568, 12800);
        let launch = plan(Dtype::Bf16, ADDRS, nvlm, true, TileWidth::Wide).unwrap();
        assert_eq!(launch.config.grid_dim, (14, 116, 1));
        assert_eq!(launch.kernel, "linear_hopper_n256_bf16");
        assert_eq!(launch.w.box_dims, [64, 128]);
        assert_eq!(launch.x.box_dims, [64, 128]);
        assert_eq!(launch.params.gelu, 1);
        assert_eq!(launch.config.shared_mem_bytes, 197696);
        let narrow = plan(Dtype::Bf16, ADDRS, nvlm, true, TileWidth::Narrow).unwrap();
        assert_eq!(narrow.config.grid_dim, (14, 132, 1));
        assert_eq!(narrow.kernel, "linear_hopper_n224_bf16");
        assert_eq!(narrow.w.box_dims, [64, 112]);
        assert_eq!(narrow.config.shared_mem_bytes, 181312);
        // 3 row tiles round up to 2 pairs; one thumbnail's 256 rows are a pair.
        let odd = plan(Dtype::F16, ADDRS, shape(300, 8, 8), false, TileWidth::Wide).unwrap();
        assert_eq!(odd.config.grid_dim, (4, 1, 1));
        assert_eq!(odd.kernel, "linear_hopper_n256_f16");
        assert_eq!(
            plan(Dtype::Bf16, ADDRS, shape(256, 8, 8), false, TileWidth::Wide)
                .unwrap()
                .config
                .grid_dim,
            (2, 1, 1)
        );
        assert_eq!(ENTRY_REGISTERS_NEEDED, 168);
    }

    #[test]
    fn the_tile_width_fills_the_waves() {
        use TileWidth::{Narrow, Wide};
        // (m, n, CTA pairs at once, width, why); 66 pairs on 132 SMs.
        let cases = [
            (
                1792,
                29568,
                66,
                Narrow,
                "72B: 14 waves of 224 against 13 of 256",
            ),
            (
                1792,
                20480,
                66,
                Narrow,
                "34B: 10 waves of 224 against 9 of 256",
            ),
            (
                1792,
                4096,
                66,
                Wide,
                "InternVL: 2 waves of 256 against 3 of 224",
            ),
            (
                256,
                66 * 224,
                66,
                Narrow,
                "one wave either way: narrower tiles end sooner",
            ),
            (
                256,
                1792,
                1,
                Wide,
                "8 waves of 224 = 7 of 256: ties go to 256",
            ),
            (
                1792,
                29568,
                65,
                Wide,
                "72B on 65 pairs: 15 waves of 224 against 13 of 256",
            ),
            (
                256,
                512,
                0,
                Wide,
                "no pairs reported counts as one: 3 tiles against 2",
            ),
        ];
        for (m, n, slots, width, why) in cases {
            assert_eq!(TileWidth::for_shape(shape(m, n, 64), slots), width, "{why}");
        }
    }

    #[test]
    fn every_linear_entry_has_the_registers_its_setmaxnreg_needs() {
        crate::hopper::assert_entry_registers("linear_hopper_", 4, ENTRY_REGISTERS_NEEDED);
    }

    #[test]
    fn what_the_kernel_cannot_take_is_refused_by_name() {
        let refused = |dtype, addrs, s: LinearShape, needle: &str| {
            let err = plan(dtype, addrs, s, true, TileWidth::Wide).unwrap_err();
            assert!(err.to_string().contains(needle), "{s:?}: {err}");
        };
        refused(Dtype::F32, ADDRS, shape(8, 8, 8), "not f32");
        refused(
            Dtype::Bf16,
            ADDRS,
            shape(8, 8, 12),
            "k = 12 is not a multiple of 8",
        );
        refused(Dtype::Bf16, ADDRS, shape(8, 7, 8), "n = 7 is odd");
        refused(Dtype::Bf16, ADDRS, shape(0, 8, 8), "1..=i32::MAX");
        refused(Dtype::Bf16, ADDRS, shape(8, 1 << 31, 8), "1..=i32::MAX");
        refused(
            Dtype::Bf16,
            ADDRS,
            shape(8, 65536 * 256, 8),
            "65536 tiles of 256",
        );
        for (operand, offset, needle) in [
            (0, 8, "x at 0x100008 is not 16-byte aligned"),
            (2, 2, "bias at 0x300002 is not 4-byte aligned"),
            (3, 2, "y at 0x400002 is not 4-byte aligned"),
        ] {
            let mut addrs = ADDRS;
            addrs[operand] += offset;
            refused(Dtype::Bf16, addrs, shape(8, 8, 8), needle);
        }
    }
}
