//! Launching the attention kernels (kernels/attention.cu). All checks run
//! on the host before the launch; the kernels are queued on the GPU's
//! stream and these functions return without waiting for them.

use super::{
    AttentionElement, AttentionLayout, AttentionTensor, QkvRows, check_flash_attention,
    check_qk_rms_norm, default_scale,
};
use crate::abi::{
    NVLM_FLASH_ATTENTION_THREADS, NVLM_QK_RMS_NORM_THREADS, NvlmAttentionTensor,
    NvlmFlashAttention, NvlmQkRmsNorm,
};
use crate::cuda::{Gpu, KernelModule, allow_dynamic_smem, driver_error};
use crate::error::{Error, Result};
use crate::hopper::require_sm90a;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

/// Query rows per block (8 warps of 16) and keys per K/V tile, as in the kernel.
const BLOCK_M: usize = 128;
const BLOCK_N: usize = 64;

/// Dynamic shared memory of the flash kernel: two stages of a K and a V
/// tile (Q borrows the second stage while it is read into registers).
fn flash_smem_bytes(head_dim: usize) -> usize {
    2 * 2 * BLOCK_N * head_dim * 2
}

pub(super) fn check_aligned(addr: u64, what: &str) -> Result<()> {
    if !addr.is_multiple_of(16) {
        return Err(Error::InvalidShape(format!(
            "{what}: device address {addr:#x} must be 16-byte aligned"
        )));
    }
    Ok(())
}

fn tensor_params(addr: u64, layout: &AttentionLayout) -> NvlmAttentionTensor {
    // Strides of size-1 dims are never used; zero keeps them in range.
    let stride = |size: usize, stride: usize| if size > 1 { stride as i64 } else { 0 };
    NvlmAttentionTensor {
        ptr: addr + 2 * layout.offset as u64,
        stride_batch: stride(layout.batch, layout.strides[0]),
        stride_token: stride(layout.tokens, layout.strides[1]),
        stride_head: stride(layout.heads, layout.strides[2]),
    }
}

/// `out = softmax(q·kᵀ·scale)·v` per (batch, head), non-causal, no mask,
/// on bf16 or f16 tensors with f32 accumulation; q `[B, Nq, H, D]`, k and
/// v `[B, Nkv, H, D]`, out `[B, Nq, H, D]`, D 64 or 128, any Nq and Nkv.
/// `scale` defaults to `D^-0.5`. With `lse`, also writes the natural-log
/// sum-exp of each row's scaled scores as f32 `[B, H, Nq]`.
///
/// q, k and v may be views of one buffer (InternViT's packed qkv, see
/// [`AttentionLayout::packed_qkv`]). Every bad input is an `Err` before the
/// launch ([`check_flash_attention`], plus the 16-byte alignment of the
/// device addresses). The kernel is queued on `gpu.stream()`.
///
/// Runs [`AttentionKernel::Portable`]; [`flash_attention_with`] picks.
pub fn flash_attention<T: AttentionElement>(
    gpu: &Gpu,
    q: AttentionTensor<&impl DevicePtr<T>>,
    k: AttentionTensor<&impl DevicePtr<T>>,
    v: AttentionTensor<&impl DevicePtr<T>>,
    out: AttentionTensor<&mut impl DevicePtrMut<T>>,
    lse: Option<&mut CudaSlice<f32>>,
    scale: Option<f32>,
) -> Result<()> {
    flash_attention_with(AttentionKernel::Portable, gpu, q, k, v, out, lse, scale)
}

/// Which flash-attention kernel runs. All compute the same function and
/// take the same inputs; every check runs before any launches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// kernels/attention.cu: mma.sync, cp.async; sm_80 and newer.
    Portable,
    /// kernels/attention_hopper.cu: TMA, wgmma, warp specialisation, each
    /// tile's softmax overlapped with the previous tile's P·V; compute
    /// capability 9.0 only (`Err(Unsupported)` elsewhere).
    Hopper,
    /// The Hopper kernel without that overlap (its v1), kept to measure
    /// what the overlap buys; compute capability 9.0 only.
    HopperSerial,
    /// The Hopper kernel with its two consumer warpgroups taking turns to
    /// issue their matrix work (its v3, ping-pong), so one's softmax runs
    /// under the other's GEMMs; compute capability 9.0 only.
    HopperPingPong,
    /// [`AttentionKernel::Hopper`] on a persistent grid (its v4): one CTA
    /// per SM walks the (query tile, head, batch) items, loading the next
    /// item's tiles while the current one finishes; compute capability 9.0
    /// only.
    HopperPersistent,
}

impl AttentionKernel {
    /// Whether this kernel needs compute capability 9.0 (sm_90a).
    pub fn is_hopper(self) -> bool {
        matches!(
            self,
            AttentionKernel::Hopper
                | AttentionKernel::HopperSerial
                | AttentionKernel::HopperPingPong
                | AttentionKernel::HopperPersistent
        )
    }
}

/// [`flash_attention`] on the kernel of your choice.
#[allow(clippy::too_many_arguments)]
pub fn flash_attention_with<T: AttentionElement>(
    kernel: AttentionKernel,
    gpu: &Gpu,
    q: AttentionTensor<&impl DevicePtr<T>>,
    k: AttentionTensor<&impl DevicePtr<T>>,
    v: AttentionTensor<&impl DevicePtr<T>>,
    out: AttentionTensor<&mut impl DevicePtrMut<T>>,
    lse: Option<&mut CudaSlice<f32>>,
    scale: Option<f32>,
) -> Result<()> {
    let head_dim = q.layout.head_dim;
    let scale = scale.unwrap_or_else(|| default_scale(head_dim));
    check_flash_attention(
        &q.layout,
        &k.layout,
        &v.layout,
        &out.layout,
        [q.data.len(), k.data.len(), v.data.len(), out.data.len()],
        lse.as_ref().map(|l| l.len()),
        scale,
    )?;
    gpu.check_own_buffer(q.data, "q")?;
    gpu.check_own_buffer(k.data, "k")?;
    gpu.check_own_buffer(v.data, "v")?;
    gpu.check_own_buffer(out.data, "out")?;
    if let Some(lse) = &lse {
        gpu.check_own_buffer(*lse, "lse")?;
    }
    if kernel.is_hopper() {
        require_sm90a(gpu, "the Hopper attention kernel")?;
    }
    gpu.check_capturable("flash attention")?;
    let stream = gpu.stream();
    let (q_addr, _q_sync) = q.data.device_ptr(stream);
    let (k_addr, _k_sync) = k.data.device_ptr(stream);
    let (v_addr, _v_sync) = v.data.device_ptr(stream);
    let (o_addr, _o_sync) = out.data.device_ptr_mut(stream);
    for (addr, what) in [(q_addr, "q"), (k_addr, "k"), (v_addr, "v"), (o_addr, "out")] {
        check_aligned(addr, what)?;
    }
    let (lse_addr, _lse_sync) = match lse {
        Some(buf) => {
            let (addr, sync) = buf.device_ptr_mut(stream);
            (addr, Some(sync))
        }
        None => (0, None),
    };
    let device = DeviceTensors {
        q: (q_addr, &q.layout),
        k: (k_addr, &k.layout),
        v: (v_addr, &v.layout),
        out: (o_addr, &out.layout),
        lse: lse_addr,
    };
    match kernel {
        AttentionKernel::Portable => launch_portable::<T>(gpu, &device, scale),
        hopper => super::hopper::launch::<T>(gpu, &device, scale, hopper),
    }
}

/// Device addresses (of element 0 of each buffer) and layouts of a checked
/// flash-attention call.
pub(super) struct DeviceTensors<'a> {
    pub q: (u64, &'a AttentionLayout),
    pub k: (u64, &'a AttentionLayout),
    pub v: (u64, &'a AttentionLayout),
    pub out: (u64, &'a AttentionLayout),
    /// 0 without an LSE output.
    pub lse: u64,
}

/// A launch of the portable kernel, made without a device so that the
/// host emulation runs exactly this launch.
pub(super) struct PortableLaunch {
    pub params: NvlmFlashAttention,
    pub config: LaunchConfig,
    pub kernel: String,
}

pub(super) fn portable_launch<T: AttentionElement>(
    t: &DeviceTensors<'_>,
    scale: f32,
) -> PortableLaunch {
    let (q_layout, head_dim) = (t.q.1, t.q.1.head_dim);
    let smem = flash_smem_bytes(head_dim) as u32;
    PortableLaunch {
        params: NvlmFlashAttention {
            q: tensor_params(t.q.0, t.q.1),
            k: tensor_params(t.k.0, t.k.1),
            v: tensor_params(t.v.0, t.v.1),
            o: tensor_params(t.out.0, t.out.1),
            lse: t.lse,
            // Checked: heads <= 65535, tokens < 2^31 - 127.
            heads: q_layout.heads as i32,
            q_len: q_layout.tokens as i32,
            kv_len: t.k.1.tokens as i32,
            scale_log2: scale * std::f32::consts::LOG2_E,
        },
        config: LaunchConfig {
            grid_dim: (
                q_layout.tokens.div_ceil(BLOCK_M) as u32,
                q_layout.heads as u32,
                q_layout.batch as u32,
            ),
            block_dim: (NVLM_FLASH_ATTENTION_THREADS, 1, 1),
            shared_mem_bytes: smem,
        },
        kernel: format!("flash_attention_{}_d{head_dim}", T::KERNEL_SUFFIX),
    }
}

fn launch_portable<T: AttentionElement>(
    gpu: &Gpu,
    t: &DeviceTensors<'_>,
    scale: f32,
) -> Result<()> {
    let launch = portable_launch::<T>(t, scale);
    let function = gpu.function(KernelModule::Attention, &launch.kernel)?;
    allow_dynamic_smem(&function, launch.config.shared_mem_bytes)?;
    // SAFETY: check_flash_attention bounded every index the kernel forms by
    // the buffers' lengths, the addresses are 16-byte aligned, out does not
    // overlap itself, and the stream orders the launch after the buffers'
    // writers (the caller's device_ptr guards live until after the launch).
    unsafe {
        gpu.stream()
            .launch_builder(&function)
            .arg(&launch.params)
            .launch(launch.config)
    }
    .map_err(driver_error(&launch.kernel))?;
    Ok(())
}

/// The qk-RMSNorm launch for the `[qkv, q weight, k weight]` device
/// addresses.
pub(super) fn rms_norm_launch(
    rows: &QkvRows,
    [qkv, q_weight, k_weight]: [u64; 3],
    eps: f32,
) -> (NvlmQkRmsNorm, LaunchConfig) {
    let params = NvlmQkRmsNorm {
        qkv,
        q_weight,
        k_weight,
        token_stride: rows.row_len() as i64,
        part_stride: (rows.heads_padded * rows.head_dim) as i64,
        width: rows.width() as u32,
        eps,
    };
    let config = LaunchConfig {
        grid_dim: (rows.tokens as u32, 1, 1),
        block_dim: (NVLM_QK_RMS_NORM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    (params, config)
}

/// InternViT-6B's qk-RMSNorm in place on the packed qkv rows `[tokens, 3,
/// heads_padded, head_dim]` (the qkv Linear's output): for q and for k of
/// each token, `weight * (x * rsqrt(mean(x²) + eps)).to(dtype)` over the
/// first `heads_real` heads, the mean in f32; NVLM's dummy heads and v are
/// untouched. `q_weight` and `k_weight` hold at least `heads_real *
/// head_dim` elements (the first ones are used). Checks as
/// [`check_qk_rms_norm`], plus 16-byte aligned device addresses; queued on
/// `gpu.stream()`.
pub fn qk_rms_norm<T: AttentionElement>(
    gpu: &Gpu,
    qkv: &mut impl DevicePtrMut<T>,
    rows: &QkvRows,
    q_weight: &impl DevicePtr<T>,
    k_weight: &impl DevicePtr<T>,
    eps: f32,
) -> Result<()> {
    check_qk_rms_norm(rows, qkv.len(), [q_weight.len(), k_weight.len()], eps)?;
    gpu.check_own_buffer(qkv, "qkv")?;
    gpu.check_own_buffer(q_weight, "q weight")?;
    gpu.check_own_buffer(k_weight, "k weight")?;
    gpu.check_capturable("qk-RMSNorm")?;
    let name = format!("qk_rms_norm_{}", T::KERNEL_SUFFIX);
    let function = gpu.function(KernelModule::Attention, &name)?;
    let stream = gpu.stream();
    let (qkv_addr, _qkv_sync) = qkv.device_ptr_mut(stream);
    let (qw_addr, _qw_sync) = q_weight.device_ptr(stream);
    let (kw_addr, _kw_sync) = k_weight.device_ptr(stream);
    for (addr, what) in [
        (qkv_addr, "qkv"),
        (qw_addr, "q weight"),
        (kw_addr, "k weight"),
    ] {
        check_aligned(addr, what)?;
    }
    let (params, config) = rms_norm_launch(rows, [qkv_addr, qw_addr, kw_addr], eps);
    // SAFETY: check_qk_rms_norm bounded the rows and weights by the
    // buffers' lengths; head_dim % 8 == 0 and aligned addresses make every
    // 16-byte access aligned; one block owns each token row.
    unsafe { stream.launch_builder(&function).arg(&params).launch(config) }
        .map_err(driver_error(&name))?;
    Ok(())
}
