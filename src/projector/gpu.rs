//! The projector on a CUDA device: the fused front kernel and the exact
//! GELU kernel (kernels/projector.cu), cuBLASLt for the Linears, and on
//! Hopper the crate's own Linear with the GELU in its epilogue
//! (kernels/projector_hopper.cu).
//!
//! Per forward: front (shuffle + LayerNorm) → `[rows, 4C]`; GEMM 1 →
//! `[rows, H1]`; bias + exact GELU in place (or cuBLASLt's fused
//! bias + GELU epilogue for [`GeluMode::CublasLtApproximate`], or GEMM 1,
//! bias and exact GELU in the sm_90a Linear for
//! [`GeluMode::ExactErfHopperLinear`]); GEMM 2 with the bias epilogue →
//! `[rows, H2]`. Everything is queued on the GPU's
//! stream; nothing synchronises.

use super::{FrontLaunch, GeluMode, ProjectorConfig, WeightLens, front_launch, hopper};
use crate::abi::{NVLM_PROJECTOR_MAX_THREADS, NvlmBiasGelu, NvlmProjectorFront};
use crate::cuda::{Gpu, KernelModule, allow_dynamic_smem, driver_error};
use crate::dtype::{Dtype, TensorElement};
use crate::error::{Error, Result};
use crate::gemm::{Epilogue, Gemm, LinearShape, check_linear, check_operand_alignment};
use crate::hopper::{TensorMap, check_entry_registers, require_sm90a};
use cudarc::cublaslt::{CudaBlasLT, Matmul};
use cudarc::driver::{
    CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use std::sync::{Arc, OnceLock};

/// A projector's weights on the device, in the checkpoint's layout and
/// dtype: `mlp1.0` LayerNorm `[4C]`, `mlp1.1` Linear `[H1, 4C]` (+ `[H1]`),
/// `mlp1.3` Linear `[H2, H1]` (+ `[H2]`).
pub struct ProjectorWeights<'a, T> {
    pub ln_gamma: CudaView<'a, T>,
    pub ln_beta: CudaView<'a, T>,
    pub w1: CudaView<'a, T>,
    pub b1: Option<CudaView<'a, T>>,
    pub w2: Option<CudaView<'a, T>>,
    pub b2: Option<CudaView<'a, T>>,
}

impl<T> ProjectorWeights<'_, T> {
    pub fn lens(&self) -> WeightLens {
        WeightLens {
            ln_gamma: self.ln_gamma.len(),
            ln_beta: self.ln_beta.len(),
            w1: self.w1.len(),
            b1: self.b1.as_ref().map(|b| b.len()),
            w2: self.w2.as_ref().map(|w| w.len()),
            b2: self.b2.as_ref().map(|b| b.len()),
        }
    }

    /// The weights that are present, each with its name.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, &CudaView<'_, T>)> {
        [
            ("LayerNorm weight", Some(&self.ln_gamma)),
            ("LayerNorm bias", Some(&self.ln_beta)),
            ("Linear 1 weight", Some(&self.w1)),
            ("Linear 1 bias", self.b1.as_ref()),
            ("Linear 2 weight", self.w2.as_ref()),
            ("Linear 2 bias", self.b2.as_ref()),
        ]
        .into_iter()
        .filter_map(|(what, w)| w.map(|w| (what, w)))
    }
}

/// The projector's own kernels, usable without cuBLASLt.
pub struct ProjectorKernels {
    gpu: Arc<Gpu>,
    /// The sm_90a Linear's CTA pairs the GPU runs at once, asked on first use.
    linear_cluster_slots: OnceLock<u32>,
}

impl ProjectorKernels {
    pub fn new(gpu: Arc<Gpu>) -> Self {
        ProjectorKernels {
            gpu,
            linear_cluster_slots: OnceLock::new(),
        }
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Queues the front: `out[rows, 4C]` = LayerNorm(pixel_shuffle(input
    /// without CLS)), `input` `[tiles, tokens_per_tile, C]`. `out` may be
    /// longer than `rows · 4C`.
    pub fn front<T: TensorElement + DeviceRepr>(
        &self,
        cfg: &ProjectorConfig,
        input: &CudaView<'_, T>,
        tiles: usize,
        gamma: &CudaView<'_, T>,
        beta: &CudaView<'_, T>,
        out: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        cfg.check_front(tiles, input.len(), gamma.len(), beta.len())?;
        let rows = cfg.output_rows(tiles);
        let need = rows * cfg.row_width();
        if out.len() < need {
            return Err(Error::BufferTooShort {
                what: "projector front output (elements)",
                len: out.len(),
                needed: need,
            });
        }
        self.gpu.check_own_buffer(input, "projector input")?;
        self.gpu.check_own_buffer(gamma, "LayerNorm weight")?;
        self.gpu.check_own_buffer(beta, "LayerNorm bias")?;
        self.gpu.check_own_buffer(out, "projector front output")?;
        self.gpu.check_capturable("the projector front")?;
        let stream = self.gpu.stream();
        // The guards live until the launch is queued, so cudarc records
        // the kernel's reads and writes for work on other streams.
        let (input_addr, _input_read) = input.device_ptr(stream);
        let (gamma_addr, _gamma_read) = gamma.device_ptr(stream);
        let (beta_addr, _beta_read) = beta.device_ptr(stream);
        let (out_addr, _out_write) = out.device_ptr_mut(stream);
        let addrs = [input_addr, gamma_addr, beta_addr, out_addr];
        let (params, launch, kernel) = front_plan(cfg, T::DTYPE, addrs, rows)?;
        let f = self.gpu.function(KernelModule::Projector, &kernel)?;
        // SAFETY: check_front and the length check above bound every index
        // the kernel forms (rows blocks, 4C columns, tokens of the tiles);
        // front_launch picked the 16-byte kernel only for C % 8 == 0 and
        // 16-byte aligned addresses.
        unsafe { stream.launch_builder(&f).arg(&params).launch(launch) }
            .map_err(driver_error(&kernel))?;
        Ok(())
    }

    /// Queues `data[rows, cols] = gelu?(data + bias?)` in place (exact erf
    /// GELU). `bias` has `cols` elements.
    pub fn bias_gelu<T: TensorElement + DeviceRepr>(
        &self,
        data: &mut CudaViewMut<'_, T>,
        rows: usize,
        cols: usize,
        bias: Option<&CudaView<'_, T>>,
        gelu: bool,
    ) -> Result<()> {
        let name = check_bias_gelu(T::DTYPE, (rows, cols), data.len(), bias.map(|b| b.len()))?;
        self.gpu.check_own_buffer(data, "bias + GELU data")?;
        if let Some(bias) = bias {
            self.gpu.check_own_buffer(bias, "bias + GELU bias")?;
        }
        self.gpu.check_capturable("bias + GELU")?;
        let stream = self.gpu.stream();
        // Guards held until the launch is queued, as in `front`.
        let (data_addr, _data_write) = data.device_ptr_mut(stream);
        let bias_read = bias.map(|b| b.device_ptr(stream));
        let bias_addr = bias_read.as_ref().map_or(0, |(a, _)| *a);
        let (params, launch, kernel) =
            bias_gelu_plan(name, [data_addr, bias_addr], rows, cols, gelu);
        let f = self.gpu.function(KernelModule::Projector, &kernel)?;
        // SAFETY: the kernel touches data[0..count) and bias[0..cols),
        // both checked above; the 16-byte kernel only for aligned buffers
        // and cols % 8 == 0.
        unsafe { stream.launch_builder(&f).arg(&params).launch(launch) }
            .map_err(driver_error(&kernel))?;
        Ok(())
    }
}

impl ProjectorKernels {
    /// Queues `y = gelu?(x · wᵀ + bias)` (exact erf GELU) with the sm_90a
    /// Linear (kernels/projector_hopper.cu), row-major, `w` `[n, k]` as
    /// PyTorch stores it: the bias and the GELU act on the f32 sums, which
    /// are rounded once. Needs compute capability 9.0; what else it cannot
    /// take is listed at [`super::hopper::plan`]. `y` may be longer than
    /// `m·n`. The tiles' width is [`Self::linear_hopper_width`]'s.
    pub fn linear_hopper<T: TensorElement + DeviceRepr>(
        &self,
        x: &CudaView<'_, T>,
        w: &CudaView<'_, T>,
        bias: Option<&CudaView<'_, T>>,
        y: &mut CudaViewMut<'_, T>,
        shape: LinearShape,
        gelu: bool,
    ) -> Result<()> {
        let width = self.linear_hopper_width(shape)?;
        self.linear_hopper_tiled(x, w, bias, y, shape, gelu, width)
    }

    /// The sm_90a Linear's tile width for `shape` on this GPU: the one that
    /// fills its waves better ([`hopper::TileWidth::for_shape`]). Needs
    /// compute capability 9.0.
    pub fn linear_hopper_width(&self, shape: LinearShape) -> Result<hopper::TileWidth> {
        let slots = self.linear_hopper_cluster_slots()?;
        Ok(hopper::TileWidth::for_shape(shape, slots))
    }

    /// How many of the sm_90a Linear's CTA pairs this GPU runs at once
    /// (`cuOccupancyMaxActiveClusters`; 66 where every one of 132 SMs
    /// holds a CTA), asked once. Needs compute capability 9.0.
    pub fn linear_hopper_cluster_slots(&self) -> Result<u32> {
        require_sm90a(&self.gpu, "the sm_90a Linear")?;
        if let Some(&slots) = self.linear_cluster_slots.get() {
            return Ok(slots);
        }
        // Every entry holds one CTA an SM, hence the same pairs.
        let probe = hopper::plan(
            Dtype::Bf16,
            [0; 4],
            LinearShape { m: 1, n: 2, k: 8 },
            false,
            hopper::TileWidth::Wide,
        )?;
        let f = self
            .gpu
            .function(KernelModule::ProjectorHopper, &probe.kernel)?;
        allow_dynamic_smem(&f, probe.config.shared_mem_bytes)?;
        // The occupancy query runs in the thread's current context and
        // binds none itself; `function` made ours current.
        let slots = f
            .occupancy_max_active_clusters(probe.config, self.gpu.stream())
            .map_err(driver_error("cuOccupancyMaxActiveClusters"))?;
        Ok(*self.linear_cluster_slots.get_or_init(|| slots))
    }

    /// [`Self::linear_hopper`] in tiles of `width`, whatever fills the GPU
    /// better: for comparing the widths.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_hopper_tiled<T: TensorElement + DeviceRepr>(
        &self,
        x: &CudaView<'_, T>,
        w: &CudaView<'_, T>,
        bias: Option<&CudaView<'_, T>>,
        y: &mut CudaViewMut<'_, T>,
        shape: LinearShape,
        gelu: bool,
        width: hopper::TileWidth,
    ) -> Result<()> {
        check_linear(shape, x.len(), w.len(), bias.map(|b| b.len()), y.len())?;
        self.gpu.check_own_buffer(x, "sm_90a Linear x")?;
        self.gpu.check_own_buffer(w, "sm_90a Linear w")?;
        if let Some(bias) = bias {
            self.gpu.check_own_buffer(bias, "sm_90a Linear bias")?;
        }
        self.gpu.check_own_buffer(y, "sm_90a Linear y")?;
        self.gpu.check_capturable("the sm_90a Linear")?;
        let stream = self.gpu.stream();
        // Guards held until the launch is queued, as in `front`.
        let (x_addr, _x_read) = x.device_ptr(stream);
        let (w_addr, _w_read) = w.device_ptr(stream);
        let bias_read = bias.map(|b| b.device_ptr(stream));
        let bias_addr = bias_read.as_ref().map_or(0, |(a, _)| *a);
        let (y_addr, _y_write) = y.device_ptr_mut(stream);
        let launch = hopper::plan(
            T::DTYPE,
            [x_addr, w_addr, bias_addr, y_addr],
            shape,
            gelu,
            width,
        )?;
        require_sm90a(&self.gpu, "the sm_90a Linear")?;
        let x_map = TensorMap::tiled(&self.gpu, &launch.x)?;
        let w_map = TensorMap::tiled(&self.gpu, &launch.w)?;
        let f = self
            .gpu
            .function(KernelModule::ProjectorHopper, &launch.kernel)?;
        check_entry_registers(&f, &launch.kernel, hopper::ENTRY_REGISTERS_NEEDED)?;
        allow_dynamic_smem(&f, launch.config.shared_mem_bytes)?;
        // SAFETY: the tensor maps describe exactly the checked x [m, k] and
        // w [n, k] (TMA reads only inside them); the kernel stores y only
        // at rows < m and columns < n and reads bias only at columns < n,
        // all checked against the buffers' lengths above.
        unsafe {
            stream
                .launch_builder(&f)
                .arg(&x_map)
                .arg(&w_map)
                .arg(&launch.params)
                .launch(launch.config)
        }
        .map_err(driver_error(&launch.kernel))?;
        Ok(())
    }
}

/// The front launch for `rows` output rows over the `[input, gamma, beta,
/// out]` device addresses (checked by the caller): parameters, grid and
/// kernel. Made without a device so that the host emulation runs exactly
/// this launch.
pub(super) fn front_plan(
    cfg: &ProjectorConfig,
    dtype: Dtype,
    addrs: [u64; 4],
    rows: usize,
) -> Result<(NvlmProjectorFront, LaunchConfig, String)> {
    let aligned = addrs.iter().all(|a| a % 16 == 0);
    let FrontLaunch { kernel, threads } = front_launch(cfg, dtype, aligned)?;
    let params = NvlmProjectorFront {
        input: addrs[0],
        gamma: addrs[1],
        beta: addrs[2],
        out: addrs[3],
        channels: cfg.vit_hidden as u32,
        grid_side: cfg.grid_side as u32,
        tokens_per_tile: cfg.tokens_per_tile() as u32,
        first_token: u32::from(cfg.cls_token),
        transpose: u32::from(cfg.ps_version == super::PsVersion::V1),
        rows: rows as u32,
        row_width: cfg.row_width() as u32,
        eps: cfg.ln_eps,
    };
    let launch = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    Ok((params, launch, kernel))
}

/// The bias + GELU launch over `[data, bias]` device addresses (bias 0:
/// none) of a checked `[rows, cols]` matrix of dtype `name`.
/// Every check [`ProjectorKernels::bias_gelu`] makes before it launches: a
/// 16-bit type (else `Unsupported`), a non-empty `[rows, cols]` whose
/// element count fits usize and `cols` a u32 (else `InvalidShape`), at least
/// that many elements of data (else `BufferTooShort`), and a bias, if any,
/// of `cols` elements. Returns the kernel name's type part.
pub fn check_bias_gelu(
    dtype: Dtype,
    (rows, cols): (usize, usize),
    data_len: usize,
    bias_len: Option<usize>,
) -> Result<&'static str> {
    let name = match dtype {
        Dtype::Bf16 => "bf16",
        Dtype::F16 => "f16",
        Dtype::F32 => return Err(Error::Unsupported("bias_gelu takes bf16 or f16".into())),
    };
    let count = rows
        .checked_mul(cols)
        .filter(|&n| n > 0 && u32::try_from(cols).is_ok());
    let Some(count) = count else {
        return Err(Error::InvalidShape(format!(
            "bias_gelu: [{rows}, {cols}] is empty, overflows, or has more than {} columns",
            u32::MAX
        )));
    };
    if data_len < count {
        return Err(Error::BufferTooShort {
            what: "bias_gelu data (elements)",
            len: data_len,
            needed: count,
        });
    }
    if let Some(len) = bias_len
        && len != cols
    {
        return Err(Error::InvalidShape(format!(
            "bias_gelu: bias has {len} elements, expected {cols}"
        )));
    }
    Ok(name)
}

pub(super) fn bias_gelu_plan(
    name: &str,
    [data_addr, bias_addr]: [u64; 2],
    rows: usize,
    cols: usize,
    gelu: bool,
) -> (NvlmBiasGelu, LaunchConfig, String) {
    let count = rows * cols;
    let vector =
        cols.is_multiple_of(8) && data_addr.is_multiple_of(16) && bias_addr.is_multiple_of(16);
    let kernel = format!("bias_gelu_{name}_{}", if vector { "v8" } else { "s1" });
    let params = NvlmBiasGelu {
        data: data_addr,
        bias: bias_addr,
        count: count as u64,
        cols: cols as u32,
        gelu: u32::from(gelu),
    };
    let chunks = count / if vector { 8 } else { 1 };
    // Grid-stride: a few waves of blocks are enough for a stream.
    let threads = NVLM_PROJECTOR_MAX_THREADS;
    let blocks = chunks.div_ceil(threads as usize).min(132 * 32) as u32;
    let launch = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    (params, launch, kernel)
}

/// Intermediates of one forward for up to `tiles` tiles.
pub struct ProjectorWorkspace<T> {
    front: CudaSlice<T>,
    /// Linear 1's output; none for a one-layer projector.
    hidden: Option<CudaSlice<T>>,
}

impl<T: DeviceRepr> ProjectorWorkspace<T> {
    /// Queues a fill of every intermediate with `byte` on the workspace's
    /// stream. With 0xFF (NaN in bf16, f16 and f32) a test shows that a
    /// forward writes every intermediate element it reads: one left
    /// unwritten reaches the output as NaN.
    pub fn fill_bytes(&mut self, byte: u8) -> Result<()> {
        for buffer in std::iter::once(&mut self.front).chain(self.hidden.as_mut()) {
            let stream = buffer.stream().clone();
            crate::cuda::bind_context(stream.context())?;
            let bytes = buffer.num_bytes();
            let (address, _record) = buffer.device_ptr_mut(&stream);
            // SAFETY: `bytes` bytes at `address` are this live buffer's,
            // written in the order of its own stream.
            unsafe {
                cudarc::driver::result::memset_d8_async(address, byte, bytes, stream.cu_stream())
            }
            .map_err(driver_error("fill the projector workspace"))?;
        }
        Ok(())
    }
}

/// The whole projector on one GPU.
pub struct Projector {
    pub config: ProjectorConfig,
    kernels: ProjectorKernels,
    gemm: Gemm,
}

impl Projector {
    /// Checks the config and loads cuBLASLt (an error without it).
    pub fn new(config: ProjectorConfig, gpu: Arc<Gpu>) -> Result<Projector> {
        config.validate()?;
        if config.gelu == GeluMode::ExactErfHopperLinear && config.linear2_out.is_some() {
            require_sm90a(&gpu, "GeluMode::ExactErfHopperLinear")?;
        }
        let gemm = Gemm::new(&gpu)?;
        Ok(Projector {
            config,
            kernels: ProjectorKernels::new(gpu),
            gemm,
        })
    }

    pub fn kernels(&self) -> &ProjectorKernels {
        &self.kernels
    }

    pub fn gemm(&self) -> &Gemm {
        &self.gemm
    }

    /// Device memory for the intermediates of up to `tiles` tiles:
    /// `rows · 4C` elements, plus `rows · H1` for a two-layer projector.
    pub fn workspace<T: TensorElement + DeviceRepr>(
        &self,
        tiles: usize,
    ) -> Result<ProjectorWorkspace<T>> {
        let rows = self.config.output_rows(tiles);
        let stream = self.kernels.gpu.stream();
        // SAFETY: every forward writes these before reading them.
        let front = unsafe { stream.alloc::<T>(rows * self.config.row_width()) }
            .map_err(driver_error("alloc projector front"))?;
        let hidden = match self.config.linear2_out {
            Some(_) => Some(
                unsafe { stream.alloc::<T>(rows * self.config.linear1_out) }
                    .map_err(driver_error("alloc projector hidden"))?,
            ),
            None => None,
        };
        Ok(ProjectorWorkspace { front, hidden })
    }

    /// Queues the projector: `input` `[tiles, tokens_per_tile, C]` →
    /// `out` `[tiles · (side/2)², output_width]` (row-major; `out` may be
    /// longer). Every shape is checked before the first launch.
    pub fn forward<T>(
        &self,
        input: &CudaView<'_, T>,
        tiles: usize,
        weights: &ProjectorWeights<'_, T>,
        ws: &mut ProjectorWorkspace<T>,
        out: &mut CudaViewMut<'_, T>,
    ) -> Result<()>
    where
        T: TensorElement + DeviceRepr,
        CudaBlasLT: Matmul<T>,
    {
        let cfg = &self.config;
        cfg.check_forward(tiles, input.len(), &weights.lens(), out.len())?;
        let rows = cfg.output_rows(tiles);
        let (h1, k1) = (cfg.linear1_out, cfg.row_width());
        let hidden_need = cfg.linear2_out.map_or(0, |_| rows * h1);
        let hidden_len = ws.hidden.as_ref().map_or(0, |h| h.len());
        if ws.front.len() < rows * k1 || hidden_len < hidden_need {
            return Err(Error::BufferTooShort {
                what: "projector workspace (elements; make it with this projector's workspace(tiles))",
                len: ws.front.len() + hidden_len,
                needed: rows * k1 + hidden_need,
            });
        }
        let gemm1 = LinearShape {
            m: rows,
            n: h1,
            k: k1,
        };
        check_linear(
            gemm1,
            rows * k1,
            weights.w1.len(),
            weights.b1.as_ref().map(|b| b.len()),
            rows * h1,
        )?;
        let gemm2 = cfg.linear2_out.map(|h2| LinearShape {
            m: rows,
            n: h2,
            k: h1,
        });
        if let (Some(s), Some(w2)) = (gemm2, &weights.w2) {
            check_linear(
                s,
                rows * h1,
                w2.len(),
                weights.b2.as_ref().map(|b| b.len()),
                out.len(),
            )?;
        }
        // Every buffer in this GPU's context, before the first launch.
        let gpu = &self.kernels.gpu;
        for (what, w) in weights.named() {
            gpu.check_own_buffer(w, what)?;
        }
        gpu.check_own_buffer(input, "projector input")?;
        gpu.check_own_buffer(&ws.front, "projector workspace")?;
        if let Some(hidden) = &ws.hidden {
            gpu.check_own_buffer(hidden, "projector workspace")?;
        }
        gpu.check_own_buffer(out, "projector output")?;
        gpu.check_capturable("the projector")?;
        // The GEMMs' operands that the caller supplies (the workspace's are
        // whole allocations), checked before the front's launch.
        let stream = self.kernels.gpu.stream();
        let address = |v: &CudaView<'_, T>| v.device_ptr(stream).0;
        let mut gemm_operands = vec![
            ("Linear 1 weight", address(&weights.w1)),
            ("out", out.device_ptr_mut(stream).0),
        ];
        gemm_operands.extend(weights.b1.as_ref().map(|b| ("Linear 1 bias", address(b))));
        gemm_operands.extend(weights.w2.as_ref().map(|w| ("Linear 2 weight", address(w))));
        gemm_operands.extend(weights.b2.as_ref().map(|b| ("Linear 2 bias", address(b))));
        check_operand_alignment(&gemm_operands)?;
        // The sm_90a Linear's own limits (k % 8, even n, alignment), also
        // before the front's launch.
        if cfg.gelu == GeluMode::ExactErfHopperLinear
            && let Some(hidden) = &ws.hidden
        {
            hopper::plan(
                T::DTYPE,
                [
                    ws.front.device_ptr(stream).0,
                    address(&weights.w1),
                    weights.b1.as_ref().map_or(0, address),
                    hidden.device_ptr(stream).0,
                ],
                gemm1,
                true,
                self.kernels.linear_hopper_width(gemm1)?,
            )?;
        }

        let mut front = ws.front.slice_mut(..rows * k1);
        self.kernels.front(
            cfg,
            input,
            tiles,
            &weights.ln_gamma,
            &weights.ln_beta,
            &mut front,
        )?;
        let front = front.slice(..);
        let b1 = weights.b1.as_ref();
        let (Some(shape2), Some(w2)) = (gemm2, &weights.w2) else {
            // One layer: Linear 1 (+ bias) straight into the output.
            return self
                .gemm
                .linear(&front, &weights.w1, b1, out, gemm1, Epilogue::None);
        };
        let hidden = ws
            .hidden
            .as_mut()
            .expect("checked above: hidden_len >= rows * h1 > 0");
        let mut hidden = hidden.slice_mut(..rows * h1);
        match cfg.gelu {
            GeluMode::ExactErf => {
                // The bias in cuBLASLt's epilogue, before the output is
                // rounded, then the GELU: torch's Linear + GELU roundings.
                self.gemm
                    .linear(&front, &weights.w1, b1, &mut hidden, gemm1, Epilogue::None)?;
                self.kernels.bias_gelu(&mut hidden, rows, h1, None, true)?;
            }
            GeluMode::CublasLtApproximate => {
                self.gemm.linear(
                    &front,
                    &weights.w1,
                    b1,
                    &mut hidden,
                    gemm1,
                    Epilogue::CublasGelu,
                )?;
            }
            GeluMode::ExactErfHopperLinear => {
                self.kernels
                    .linear_hopper(&front, &weights.w1, b1, &mut hidden, gemm1, true)?;
            }
        }
        let hidden = hidden.slice(..);
        self.gemm.linear(
            &hidden,
            w2,
            weights.b2.as_ref(),
            out,
            shape2,
            Epilogue::None,
        )
    }
}
