//! Launching the sm_90a flash-attention kernel (kernels/attention_hopper.cu):
//! a TMA tensor map per input, then the launch. The caller
//! ([`super::flash_attention_with`]) has run every check and holds the
//! buffers.

use super::gpu::DeviceTensors;
use super::{AttentionElement, AttentionKernel, AttentionLayout};
use crate::abi::{
    NVLM_HOPPER_ATTENTION_CONSUMER_REGISTERS, NVLM_HOPPER_ATTENTION_PRODUCER_REGISTERS,
    NVLM_HOPPER_ATTENTION_QUERY_ROWS, NVLM_HOPPER_ATTENTION_SMEM_BYTES_D64,
    NVLM_HOPPER_ATTENTION_SMEM_BYTES_D128, NVLM_HOPPER_ATTENTION_THREADS, NvlmHopperAttention,
};
use crate::cuda::{Gpu, KernelModule, allow_dynamic_smem, driver_error};
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::hopper::{TensorMap, TiledTensor, TmaElement, TmaSwizzle, check_entry_registers};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Keys per K/V tile and head_dim columns per 128-byte swizzle atom, as the
/// kernel's boxes.
const KEY_ROWS: u32 = 128;
const ATOM_COLUMNS: u32 = 64;

/// The fewest registers a thread the kernel may be built with: the
/// consumers' `setmaxnreg.inc` takes the registers the producer's `.dec`
/// gave back, out of the block's allocation at launch (kernels/abi.h).
const ENTRY_REGISTERS_NEEDED: u32 = (NVLM_HOPPER_ATTENTION_PRODUCER_REGISTERS * 128
    + 2 * 128 * NVLM_HOPPER_ATTENTION_CONSUMER_REGISTERS)
    .div_ceil(NVLM_HOPPER_ATTENTION_THREADS);

/// The 4-D tensor (d, X, Y, batch) TMA reads for one input, X and Y being
/// its token and head dimensions in increasing stride order (packed qkv has
/// heads inside tokens, torch's [B, H, N, D] the reverse), with boxes of 64
/// d x `box_rows` tokens. Returns it and whether X is the token dimension
/// (1) or not (0). Public as `attention::hopper_input_tensor`, for the
/// self-test of exactly these maps (`tests/gpu_hopper_primitives.rs`) and
/// for callers who launch the kernel with their own code.
pub fn input_tensor<T: AttentionElement>(
    address: u64,
    layout: &AttentionLayout,
    box_rows: u32,
) -> Result<(TiledTensor<4>, u32)> {
    let element = match T::DTYPE {
        Dtype::Bf16 => TmaElement::Bf16,
        Dtype::F16 => TmaElement::F16,
        Dtype::F32 => return Err(Error::Unsupported("f32 attention".into())),
    };
    // A dimension of size 1 never moves; give it a stride past the whole
    // tensor (a multiple of 16 bytes) so that it sorts outermost.
    let beyond = layout
        .span()
        .ok_or_else(|| Error::InvalidShape(format!("{layout:?} overflows")))?
        .next_multiple_of(8);
    let stride = |size: usize, stride: usize| if size > 1 { stride } else { beyond };
    let tokens = (layout.tokens, stride(layout.tokens, layout.strides[1]));
    let heads = (layout.heads, stride(layout.heads, layout.strides[2]));
    let batch = (layout.batch, stride(layout.batch, layout.strides[0]));
    let tokens_inner = tokens.1 <= heads.1;
    let (x, y, box_x, box_y) = if tokens_inner {
        (tokens, heads, box_rows, 1)
    } else {
        (heads, tokens, 1, box_rows)
    };
    let bytes = |elements: usize| 2 * elements as u64;
    let tensor = TiledTensor {
        address: address + bytes(layout.offset),
        element,
        dims: [layout.head_dim, x.0, y.0, batch.0].map(|d| d as u64),
        strides_bytes: [2, bytes(x.1), bytes(y.1), bytes(batch.1)],
        box_dims: [ATOM_COLUMNS, box_x, box_y, 1],
        swizzle: TmaSwizzle::B128,
    };
    tensor.check()?;
    Ok((tensor, u32::from(tokens_inner)))
}

/// Everything one launch needs apart from the GPU: what the tensor maps
/// describe, the parameters, the grid and the kernel. Made without a
/// device, so that the host emulation runs exactly this launch.
#[derive(Debug)]
pub(super) struct HopperLaunch {
    /// q, k, v.
    pub inputs: [TiledTensor<4>; 3],
    pub params: NvlmHopperAttention,
    pub config: LaunchConfig,
    pub kernel: String,
}

/// `kernel`: which version of the Hopper kernel (v1 `HopperSerial`, v2
/// `Hopper`, v3 `HopperPingPong`, v4 `HopperPersistent`, whose grid is at
/// most `multiprocessors` CTAs).
pub(super) fn plan<T: AttentionElement>(
    t: &DeviceTensors<'_>,
    scale: f32,
    kernel: AttentionKernel,
    multiprocessors: u32,
) -> Result<HopperLaunch> {
    let version = match kernel {
        AttentionKernel::HopperSerial => "serial_",
        AttentionKernel::Hopper => "",
        AttentionKernel::HopperPingPong => "pingpong_",
        AttentionKernel::HopperPersistent => "persistent_",
        AttentionKernel::Portable => {
            return Err(Error::Unsupported(
                "the portable attention kernel has no Hopper launch".into(),
            ));
        }
    };
    let (q, k, out) = (t.q.1, t.k.1, t.out.1);
    let (q_tensor, q_tokens_inner) = input_tensor::<T>(t.q.0, q, NVLM_HOPPER_ATTENTION_QUERY_ROWS)?;
    let (k_tensor, k_tokens_inner) = input_tensor::<T>(t.k.0, k, KEY_ROWS)?;
    let (v_tensor, v_tokens_inner) = input_tensor::<T>(t.v.0, t.v.1, KEY_ROWS)?;
    if k_tokens_inner != v_tokens_inner {
        return Err(Error::Unsupported(
            "the Hopper attention kernel needs k and v with the same order of token and head strides"
                .into(),
        ));
    }
    let smem_bytes = match q.head_dim {
        64 => NVLM_HOPPER_ATTENTION_SMEM_BYTES_D64,
        128 => NVLM_HOPPER_ATTENTION_SMEM_BYTES_D128,
        d => {
            return Err(Error::Unsupported(format!(
                "Hopper attention for head_dim {d}"
            )));
        }
    };
    let params = NvlmHopperAttention {
        o: t.out.0 + 2 * out.offset as u64,
        lse: t.lse,
        // A size-1 dimension's stride multiplies index 0 only.
        o_batch_stride: out.strides[0] as i64,
        o_token_stride: out.strides[1] as i64,
        o_head_stride: out.strides[2] as i64,
        // Checked: batch and heads <= 65535, tokens < 2^31 - 127.
        batch: q.batch as u32,
        heads: q.heads as u32,
        q_len: q.tokens as u32,
        kv_len: k.tokens as u32,
        softmax_scale: scale,
        q_tokens_inner,
        kv_tokens_inner: k_tokens_inner,
        reserved: 0,
    };
    let q_tiles = q.tokens.div_ceil(NVLM_HOPPER_ATTENTION_QUERY_ROWS as usize) as u32;
    // The kernel numbers its (query tile, head, batch) items in int.
    let items = u64::from(q_tiles) * q.heads as u64 * q.batch as u64;
    if items > MAX_ITEMS {
        return Err(Error::Unsupported(format!(
            "Hopper attention over {items} tiles of 128 queries (at most {MAX_ITEMS})"
        )));
    }
    let items = items as u32;
    let grid_dim = if kernel == AttentionKernel::HopperPersistent {
        // Checked: tokens >= 1.
        let short_last_tile = (q.tokens - 1) % (NVLM_HOPPER_ATTENTION_QUERY_ROWS as usize) < 64;
        (
            persistent_grid(items, q_tiles, short_last_tile, multiprocessors),
            1,
            1,
        )
    } else {
        (q_tiles, q.heads as u32, q.batch as u32)
    };
    Ok(HopperLaunch {
        inputs: [q_tensor, k_tensor, v_tensor],
        params,
        config: LaunchConfig {
            grid_dim,
            block_dim: (NVLM_HOPPER_ATTENTION_THREADS, 1, 1),
            shared_mem_bytes: smem_bytes,
        },
        kernel: format!(
            "attention_hopper_{}d{}_{}",
            version,
            q.head_dim,
            T::KERNEL_SUFFIX
        ),
    })
}

/// The most (query tile, head, batch) items a launch may have: the kernel
/// counts them, and steps past the last, in 32-bit ints.
const MAX_ITEMS: u64 = 1 << 30;

/// v4's grid: one CTA per SM (168 registers × 384 threads fill an SM's
/// register file, so one is all that fits), at most one per item. Items go
/// to CTAs round-robin, query tile fastest; when a head's last query tile
/// is short (one active consumer, a shorter item), a grid sharing a factor
/// with the tiles per head would give all the short items to some CTAs
/// (at N = 1025, 9 tiles and 132 SMs: a third of them), so the grid
/// shrinks to the nearest size coprime with it (131).
fn persistent_grid(items: u32, q_tiles: u32, short_last_tile: bool, multiprocessors: u32) -> u32 {
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let mut grid = multiprocessors.clamp(1, items.max(1));
    if short_last_tile && items > grid {
        while grid > 1 && gcd(grid, q_tiles) != 1 {
            grid -= 1;
        }
    }
    grid
}

pub(super) fn launch<T: AttentionElement>(
    gpu: &Gpu,
    t: &DeviceTensors<'_>,
    scale: f32,
    kernel: AttentionKernel,
) -> Result<()> {
    let plan = plan::<T>(t, scale, kernel, gpu.multiprocessor_count())?;
    let maps = plan
        .inputs
        .iter()
        .map(|tensor| TensorMap::tiled(gpu, tensor))
        .collect::<Result<Vec<_>>>()?;
    let function = gpu.function(KernelModule::AttentionHopper, &plan.kernel)?;
    check_entry_registers(&function, &plan.kernel, ENTRY_REGISTERS_NEEDED)?;
    allow_dynamic_smem(&function, plan.config.shared_mem_bytes)?;
    // SAFETY: the tensor maps describe the checked q, k and v (TMA reads
    // only inside them); the output indices are bounded by the checked
    // layout and length; the caller holds the buffers' stream guards until
    // the launch is queued.
    unsafe {
        gpu.stream()
            .launch_builder(&function)
            .arg(&maps[0])
            .arg(&maps[1])
            .arg(&maps[2])
            .arg(&plan.params)
            .launch(plan.config)
    }
    .map_err(driver_error(&plan.kernel))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{ENTRY_REGISTERS_NEEDED, persistent_grid};
    use crate::attention::AttentionKernel;
    use crate::error::Error;

    #[test]
    fn too_many_query_tiles_is_an_error_before_launch() {
        use crate::attention::AttentionLayout;
        use crate::attention::gpu::DeviceTensors;
        // 2^23 query tiles of two heads in each of 65535 batches: a layout
        // TMA could map, with more items than the kernel counts.
        let layout = AttentionLayout::contiguous(65535, 1 << 30, 2, 128);
        let tensors = DeviceTensors {
            q: (1 << 20, &layout),
            k: (1 << 20, &layout),
            v: (1 << 20, &layout),
            out: (1 << 20, &layout),
            lse: 0,
        };
        for kernel in [AttentionKernel::Hopper, AttentionKernel::HopperPersistent] {
            let err = super::plan::<half::bf16>(&tensors, 1.0, kernel, 132).unwrap_err();
            assert!(
                matches!(&err, Error::Unsupported(m) if m.contains("tiles of 128 queries")),
                "{err:?}"
            );
        }
    }

    #[test]
    fn persistent_grids_spread_the_short_items() {
        // N = 1025 (9 query tiles, the last one row) at B7 H25 on 132 SMs.
        assert_eq!(persistent_grid(9 * 25 * 7, 9, true, 132), 131);
        // N = 1024: no short items, every SM.
        assert_eq!(persistent_grid(8 * 25 * 7, 8, false, 132), 132);
        // Fewer items than SMs: one CTA each.
        assert_eq!(persistent_grid(9, 9, true, 132), 9);
        assert_eq!(persistent_grid(0, 1, true, 132), 1);
        for (items, q_tiles) in [(9 * 25 * 7, 9), (3 * 16 * 13, 3), (6, 3)] {
            for sms in 1..140 {
                let grid = persistent_grid(items, q_tiles, true, sms);
                assert!(grid >= 1 && grid <= sms.max(1));
                if items > grid {
                    // Every CTA sees every residue of the query tile.
                    let mut seen = vec![0u32; q_tiles as usize];
                    for item in (0..items).step_by(grid as usize) {
                        seen[(item % q_tiles) as usize] += 1;
                    }
                    if items >= grid * q_tiles {
                        assert!(
                            seen.iter().all(|&n| n > 0),
                            "{items} {q_tiles} {sms}: {seen:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_hopper_attention_entry_has_the_registers_its_setmaxnreg_needs() {
        assert_eq!(ENTRY_REGISTERS_NEEDED, 168);
        // v1 to v4, head_dim 64 and 128, bf16 and f16.
        crate::hopper::assert_entry_registers("attention_hopper_", 16, ENTRY_REGISTERS_NEEDED);
    }
}
