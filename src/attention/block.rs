//! InternViT's attention sub-layer for engines:
//! `proj(attention(qk_norm(qkv(x))))` on `[batch · tokens, hidden]` rows
//! (the norm before it and the `ls1` scale and residual after it are the
//! engine's). qkv and proj run in cuBLASLt ([`crate::gemm`]); qk-RMSNorm
//! (InternViT-6B) and flash attention are this crate's kernels, reading q,
//! k and v straight out of the packed qkv rows.
//!
//! NVLM's InternViT-6B checkpoint pads 25 heads to 32 (`qkv` is
//! `Linear(3200, 3·4096)`, `proj` is `Linear(4096, 3200)`). Only the 25
//! real heads are computed; when the proj weight still has the padded
//! input width, the dummy heads' columns of its input are zeros. That is
//! what Megatron, which trained NVLM, gives them (it zeroes the dummy
//! heads' output); vLLM attends over them, so the two agree only while the
//! checkpoint's dummy v rows (or proj columns) are zero, which REFERENCE.md
//! §4's "an engine can slice them away" takes as given and no test here
//! can check without the checkpoint.

use super::gpu::{DeviceTensors, check_aligned};
use super::{
    AttentionElement, AttentionKernel, AttentionLayout, AttentionTensor, QkvPart, QkvRows,
    check_qk_rms_norm, default_scale, flash_attention_with, qk_rms_norm,
};
use crate::cuda::{Gpu, driver_error};
use crate::error::{Error, Result};
use crate::gemm::{Epilogue, Gemm, LinearShape, check_operand_alignment};
use crate::hopper::require_sm90a;
use cudarc::cublaslt::{CudaBlasLT, Matmul};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, ValidAsZeroBits};
use std::sync::Arc;

/// The shape of one InternViT attention sub-layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionBlockConfig {
    /// Model width C.
    pub hidden: usize,
    /// Heads computed.
    pub heads: usize,
    /// Heads in the qkv weight's rows (NVLM's checkpoint: 32 for 25 real).
    pub heads_padded: usize,
    pub head_dim: usize,
    /// InternViT-6B's RMSNorm of q and k over all heads, with its eps.
    pub qk_norm_eps: Option<f32>,
    pub qkv_bias: bool,
    pub proj_bias: bool,
    /// Heads the proj weight's input covers: `heads` (the caller sliced the
    /// dummy heads away) or `heads_padded`.
    pub proj_input_heads: usize,
}

impl AttentionBlockConfig {
    /// InternViT-6B-448px (25 × 128, qk-RMSNorm eps 1e-6, no qkv bias).
    pub fn internvit_6b() -> Self {
        AttentionBlockConfig {
            hidden: 3200,
            heads: 25,
            heads_padded: 25,
            head_dim: 128,
            qk_norm_eps: Some(1e-6),
            qkv_bias: false,
            proj_bias: true,
            proj_input_heads: 25,
        }
    }

    /// InternViT-6B as NVLM's checkpoint stores it: 7 dummy heads in the
    /// qkv, q/k-norm and proj weights.
    pub fn nvlm_internvit_6b() -> Self {
        AttentionBlockConfig {
            heads_padded: 32,
            proj_input_heads: 32,
            ..Self::internvit_6b()
        }
    }

    /// InternViT-300M-448px (16 × 64, qkv bias, no qk-norm).
    pub fn internvit_300m() -> Self {
        AttentionBlockConfig {
            hidden: 1024,
            heads: 16,
            heads_padded: 16,
            head_dim: 64,
            qk_norm_eps: None,
            qkv_bias: true,
            proj_bias: true,
            proj_input_heads: 16,
        }
    }

    /// Width of the qkv rows: `3 · heads_padded · head_dim`.
    pub fn qkv_width(&self) -> usize {
        3 * self.heads_padded * self.head_dim
    }

    /// Width of the proj input: `proj_input_heads · head_dim`.
    pub fn proj_input(&self) -> usize {
        self.proj_input_heads * self.head_dim
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| {
            Err(Error::InvalidConfig(format!(
                "attention block {self:?}: {m}"
            )))
        };
        if self.hidden == 0 || self.heads == 0 || self.head_dim == 0 {
            return bad("hidden, heads and head_dim must be at least 1".into());
        }
        if self.heads > self.heads_padded {
            return bad("heads must be at most heads_padded".into());
        }
        if self.proj_input_heads != self.heads && self.proj_input_heads != self.heads_padded {
            return bad("proj_input_heads must be heads or heads_padded".into());
        }
        if let Some(eps) = self.qk_norm_eps
            && !(eps.is_finite() && eps >= 0.0)
        {
            return bad(format!("qk-norm eps {eps} must be finite and >= 0"));
        }
        // The GEMMs take int dimensions; the weights' element counts must
        // not overflow.
        let gemm_dim = |d: Option<usize>| d.filter(|&d| d <= i32::MAX as usize);
        let qkv_width = gemm_dim(
            self.head_dim
                .checked_mul(3)
                .and_then(|d| d.checked_mul(self.heads_padded)),
        );
        let proj_input = gemm_dim(self.proj_input_heads.checked_mul(self.head_dim));
        let weights_fit = qkv_width
            .zip(proj_input)
            .zip(gemm_dim(Some(self.hidden)))
            .is_some_and(|((q, p), h)| q.checked_mul(h).is_some() && p.checked_mul(h).is_some());
        if !weights_fit {
            return bad(format!(
                "hidden, qkv width and proj input must be at most {} (the GEMMs' int dimensions)",
                i32::MAX
            ));
        }
        Ok(())
    }
}

/// Element counts of the weights a caller supplies, in PyTorch's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockWeightLens {
    /// `qkv.weight` `[3·heads_padded·D, C]`.
    pub qkv_weight: usize,
    pub qkv_bias: Option<usize>,
    /// `q_norm.weight`, `k_norm.weight` `[heads_padded·D]` (6B).
    pub q_norm: Option<usize>,
    pub k_norm: Option<usize>,
    /// `proj.weight` `[C, proj_input_heads·D]`.
    pub proj_weight: usize,
    pub proj_bias: Option<usize>,
}

impl BlockWeightLens {
    /// The lengths `cfg` expects.
    pub fn expected(cfg: &AttentionBlockConfig) -> Self {
        let norm = cfg.qk_norm_eps.map(|_| cfg.heads_padded * cfg.head_dim);
        BlockWeightLens {
            qkv_weight: cfg.qkv_width() * cfg.hidden,
            qkv_bias: cfg.qkv_bias.then_some(cfg.qkv_width()),
            q_norm: norm,
            k_norm: norm,
            proj_weight: cfg.hidden * cfg.proj_input(),
            proj_bias: cfg.proj_bias.then_some(cfg.hidden),
        }
    }
}

/// Every check [`AttentionBlock::forward`] makes on lengths before it
/// queues work: the config, each weight's presence and exact length, `x`
/// of exactly `batch · tokens · hidden` elements (at most 2^31 - 1 rows,
/// the GEMMs' int), an output and workspace at least as long as they must
/// be (`BufferTooShort`), and the qk-norm and attention kernels' own limits
/// on the derived shapes and layouts.
pub fn check_attention_block(
    cfg: &AttentionBlockConfig,
    weights: &BlockWeightLens,
    (batch, tokens): (usize, usize),
    x_len: usize,
    out_len: usize,
    workspace: (usize, usize),
) -> Result<()> {
    cfg.validate()?;
    let want = BlockWeightLens::expected(cfg);
    if *weights != want {
        return Err(Error::InvalidShape(format!(
            "attention block weights {weights:?} do not match the config's {want:?}"
        )));
    }
    let rows = batch
        .checked_mul(tokens)
        .filter(|&r| r > 0 && r <= i32::MAX as usize)
        .ok_or_else(|| {
            Error::InvalidShape(format!(
                "batch {batch} x tokens {tokens}: empty or past the GEMMs' {} rows",
                i32::MAX
            ))
        })?;
    if x_len != rows * cfg.hidden {
        return Err(Error::InvalidShape(format!(
            "x has {x_len} elements, expected batch {batch} x tokens {tokens} x hidden {}",
            cfg.hidden
        )));
    }
    for (what, len, needed) in [
        (
            "attention block output (elements)",
            out_len,
            rows * cfg.hidden,
        ),
        (
            "attention block qkv workspace (elements)",
            workspace.0,
            rows * cfg.qkv_width(),
        ),
        (
            "attention block attended workspace (elements)",
            workspace.1,
            rows * cfg.proj_input(),
        ),
    ] {
        if len < needed {
            return Err(Error::BufferTooShort { what, len, needed });
        }
    }
    if let Some(eps) = cfg.qk_norm_eps {
        check_qk_rms_norm(
            &norm_rows(cfg, rows),
            workspace.0,
            [want.q_norm, want.k_norm].map(|n| n.unwrap_or(0)),
            eps,
        )?;
    }
    let (q, k, v, o) = layouts(cfg, batch, tokens);
    super::check_flash_attention(
        &q,
        &k,
        &v,
        &o,
        [workspace.0, workspace.0, workspace.0, workspace.1],
        None,
        default_scale(cfg.head_dim),
    )
}

/// The qkv rows the qk-norm runs over: every token of the batch.
fn norm_rows(cfg: &AttentionBlockConfig, rows: usize) -> QkvRows {
    QkvRows {
        tokens: rows,
        heads_padded: cfg.heads_padded,
        heads_real: cfg.heads,
        head_dim: cfg.head_dim,
    }
}

/// q, k and v views of the packed qkv rows (the real heads only), and the
/// attention output laid out as the proj input rows.
pub(super) fn layouts(
    cfg: &AttentionBlockConfig,
    batch: usize,
    tokens: usize,
) -> (
    AttentionLayout,
    AttentionLayout,
    AttentionLayout,
    AttentionLayout,
) {
    let part = |p| AttentionLayout {
        heads: cfg.heads,
        ..AttentionLayout::packed_qkv(batch, tokens, cfg.heads_padded, cfg.head_dim, p)
    };
    let row = cfg.proj_input();
    let out = AttentionLayout {
        batch,
        tokens,
        heads: cfg.heads,
        head_dim: cfg.head_dim,
        offset: 0,
        strides: [tokens * row, row, cfg.head_dim],
    };
    (part(QkvPart::Q), part(QkvPart::K), part(QkvPart::V), out)
}

/// The sub-layer's weights in PyTorch's layout and the activations' dtype:
/// device views for [`AttentionBlock::forward`], host slices for
/// [`super::attention_block_reference`].
pub struct AttentionBlockWeights<W> {
    pub qkv_weight: W,
    pub qkv_bias: Option<W>,
    pub q_norm: Option<W>,
    pub k_norm: Option<W>,
    pub proj_weight: W,
    pub proj_bias: Option<W>,
}

impl<W> AttentionBlockWeights<W> {
    /// Element counts, given how to measure one buffer.
    pub fn lens(&self, len: impl Fn(&W) -> usize) -> BlockWeightLens {
        BlockWeightLens {
            qkv_weight: len(&self.qkv_weight),
            qkv_bias: self.qkv_bias.as_ref().map(&len),
            q_norm: self.q_norm.as_ref().map(&len),
            k_norm: self.k_norm.as_ref().map(&len),
            proj_weight: len(&self.proj_weight),
            proj_bias: self.proj_bias.as_ref().map(&len),
        }
    }

    /// The weights that are present, each with its name.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, &W)> {
        [
            ("qkv weight", Some(&self.qkv_weight)),
            ("qkv bias", self.qkv_bias.as_ref()),
            ("q norm", self.q_norm.as_ref()),
            ("k norm", self.k_norm.as_ref()),
            ("proj weight", Some(&self.proj_weight)),
            ("proj bias", self.proj_bias.as_ref()),
        ]
        .into_iter()
        .filter_map(|(what, w)| w.map(|w| (what, w)))
    }
}

/// The intermediates of one forward: the qkv rows and the attention output.
pub struct AttentionBlockWorkspace<T> {
    pub qkv: CudaSlice<T>,
    pub attended: CudaSlice<T>,
}

/// The attention sub-layer on one GPU.
pub struct AttentionBlock {
    pub config: AttentionBlockConfig,
    pub kernel: AttentionKernel,
    gpu: Arc<Gpu>,
    gemm: Gemm,
}

impl AttentionBlock {
    /// Checks the config and the device (a Hopper kernel needs compute
    /// capability 9.0) and loads cuBLASLt (an error without it).
    pub fn new(
        config: AttentionBlockConfig,
        kernel: AttentionKernel,
        gpu: Arc<Gpu>,
    ) -> Result<Self> {
        config.validate()?;
        if kernel.is_hopper() {
            require_sm90a(&gpu, "the Hopper attention kernel")?;
        }
        let gemm = Gemm::new(&gpu)?;
        Ok(AttentionBlock {
            config,
            kernel,
            gpu,
            gemm,
        })
    }

    /// A workspace for up to `batch · tokens` rows.
    pub fn workspace<T: AttentionElement>(
        &self,
        batch: usize,
        tokens: usize,
    ) -> Result<AttentionBlockWorkspace<T>> {
        let rows = batch * tokens;
        let stream = self.gpu.stream();
        // SAFETY: forward writes every element it later reads (the qkv
        // GEMM fills qkv; attention fills the real heads of `attended` and
        // forward zeroes the dummy columns).
        let alloc = |n: usize| unsafe { stream.alloc::<T>(n) }.map_err(driver_error("alloc"));
        Ok(AttentionBlockWorkspace {
            qkv: alloc(rows * self.config.qkv_width())?,
            attended: alloc(rows * self.config.proj_input())?,
        })
    }

    /// Queues `out[batch·tokens, hidden] = proj(attention(qk_norm(qkv(x))))`
    /// on the GPU's stream. Every check ([`check_attention_block`]) runs
    /// before anything is queued.
    pub fn forward<T>(
        &self,
        weights: &AttentionBlockWeights<CudaView<'_, T>>,
        x: &CudaView<'_, T>,
        (batch, tokens): (usize, usize),
        workspace: &mut AttentionBlockWorkspace<T>,
        out: &mut CudaViewMut<'_, T>,
    ) -> Result<()>
    where
        T: AttentionElement + ValidAsZeroBits,
        CudaBlasLT: Matmul<T>,
    {
        let cfg = &self.config;
        check_attention_block(
            cfg,
            &weights.lens(|w| w.len()),
            (batch, tokens),
            x.len(),
            out.len(),
            (workspace.qkv.len(), workspace.attended.len()),
        )?;
        // Every buffer in this GPU's context, before anything is queued.
        for (what, w) in weights.named() {
            self.gpu.check_own_buffer(w, what)?;
        }
        self.gpu.check_own_buffer(x, "x")?;
        self.gpu.check_own_buffer(&workspace.qkv, "workspace qkv")?;
        self.gpu
            .check_own_buffer(&workspace.attended, "workspace attended")?;
        self.gpu.check_own_buffer(out, "out")?;
        self.gpu.check_capturable("the attention block")?;
        let stream = self.gpu.stream();
        // The GEMMs' operands that the caller supplies (the workspace's are
        // whole allocations), checked here so a bad one fails before the
        // first launch rather than at the second GEMM.
        let address = |v: &CudaView<'_, T>| v.device_ptr(stream).0;
        let mut gemm_operands = vec![
            ("x", address(x)),
            ("qkv weight", address(&weights.qkv_weight)),
            ("proj weight", address(&weights.proj_weight)),
            ("out", out.device_ptr_mut(stream).0),
        ];
        gemm_operands.extend(weights.qkv_bias.as_ref().map(|b| ("qkv bias", address(b))));
        gemm_operands.extend(
            weights
                .proj_bias
                .as_ref()
                .map(|b| ("proj bias", address(b))),
        );
        check_operand_alignment(&gemm_operands)?;
        for (norm, what) in [(&weights.q_norm, "q norm"), (&weights.k_norm, "k norm")] {
            if let Some(norm) = norm {
                check_aligned(address(norm), what)?;
            }
        }
        let rows = batch * tokens;
        let (q, k, v, o) = layouts(cfg, batch, tokens);
        if self.kernel.is_hopper() {
            // Its tensor maps' limits, on the workspace the kernel will read.
            let qkv_address = workspace.qkv.device_ptr(stream).0;
            let tensors = DeviceTensors {
                q: (qkv_address, &q),
                k: (qkv_address, &k),
                v: (qkv_address, &v),
                out: (workspace.attended.device_ptr(stream).0, &o),
                lse: 0,
            };
            super::hopper::plan::<T>(
                &tensors,
                default_scale(cfg.head_dim),
                self.kernel,
                self.gpu.multiprocessor_count(),
            )?;
        }
        let mut qkv = workspace.qkv.slice_mut(..rows * cfg.qkv_width());
        self.gemm.linear(
            x,
            &weights.qkv_weight,
            weights.qkv_bias.as_ref(),
            &mut qkv,
            LinearShape {
                m: rows,
                n: cfg.qkv_width(),
                k: cfg.hidden,
            },
            Epilogue::None,
        )?;
        if let (Some(eps), Some(q_norm), Some(k_norm)) =
            (cfg.qk_norm_eps, &weights.q_norm, &weights.k_norm)
        {
            qk_rms_norm(
                &self.gpu,
                &mut qkv,
                &norm_rows(cfg, rows),
                q_norm,
                k_norm,
                eps,
            )?;
        }
        let mut attended = workspace.attended.slice_mut(..rows * cfg.proj_input());
        if cfg.proj_input_heads > cfg.heads {
            stream
                .memset_zeros(&mut attended)
                .map_err(driver_error("zero the dummy heads' columns"))?;
        }
        flash_attention_with(
            self.kernel,
            &self.gpu,
            AttentionTensor::new(&qkv, q),
            AttentionTensor::new(&qkv, k),
            AttentionTensor::new(&qkv, v),
            AttentionTensor::new(&mut attended, o),
            None,
            None,
        )?;
        self.gemm.linear(
            &attended.as_view(),
            &weights.proj_weight,
            weights.proj_bias.as_ref(),
            out,
            LinearShape {
                m: rows,
                n: cfg.hidden,
                k: cfg.proj_input(),
            },
            Epilogue::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> AttentionBlockConfig {
        AttentionBlockConfig {
            hidden: 96,
            heads: 2,
            heads_padded: 3,
            head_dim: 64,
            qk_norm_eps: Some(1e-6),
            qkv_bias: false,
            proj_bias: true,
            proj_input_heads: 3,
        }
    }

    fn check(
        cfg: &AttentionBlockConfig,
        w: BlockWeightLens,
        x: usize,
        out: usize,
        ws: (usize, usize),
    ) -> Result<()> {
        check_attention_block(cfg, &w, (2, 5), x, out, ws)
    }

    #[test]
    fn presets_validate_and_a_valid_call_passes() {
        for cfg in [
            AttentionBlockConfig::internvit_6b(),
            AttentionBlockConfig::nvlm_internvit_6b(),
            AttentionBlockConfig::internvit_300m(),
        ] {
            cfg.validate().unwrap();
        }
        let cfg = small();
        let rows = 10;
        check(
            &cfg,
            BlockWeightLens::expected(&cfg),
            rows * 96,
            rows * 96,
            (rows * cfg.qkv_width(), rows * cfg.proj_input()),
        )
        .unwrap();
    }

    #[test]
    fn every_bad_input_is_an_error_naming_it() {
        let cfg = small();
        let rows = 10;
        let w = BlockWeightLens::expected(&cfg);
        let ws = (rows * cfg.qkv_width(), rows * cfg.proj_input());
        let err = |r: Result<()>| format!("{:?}", r.expect_err("accepted a bad input"));
        assert!(
            err(check(
                &AttentionBlockConfig { heads: 4, ..cfg },
                w,
                960,
                960,
                ws
            ))
            .contains("heads_padded")
        );
        assert!(
            err(check(
                &AttentionBlockConfig {
                    proj_input_heads: 1,
                    ..cfg
                },
                w,
                960,
                960,
                ws
            ))
            .contains("proj_input_heads")
        );
        assert!(
            err(check(
                &AttentionBlockConfig {
                    qk_norm_eps: Some(f32::NAN),
                    ..cfg
                },
                w,
                960,
                960,
                ws
            ))
            .contains("eps")
        );
        assert!(
            err(check(
                &cfg,
                BlockWeightLens { q_norm: None, ..w },
                960,
                960,
                ws
            ))
            .contains("do not match")
        );
        assert!(
            err(check(
                &cfg,
                BlockWeightLens {
                    proj_weight: 96 * 128,
                    ..w
                },
                960,
                960,
                ws
            ))
            .contains("do not match")
        );
        assert!(err(check(&cfg, w, 959, 960, ws)).contains("x has 959"));
        assert!(err(check(&cfg, w, 960, 959, ws)).contains("output"));
        assert!(err(check(&cfg, w, 960, 960, (ws.0 - 1, ws.1))).contains("qkv workspace"));
        assert!(err(check(&cfg, w, 960, 960, (ws.0, ws.1 - 1))).contains("attended workspace"));
        let d80 = AttentionBlockConfig {
            head_dim: 80,
            ..cfg
        };
        let ws80 = (rows * d80.qkv_width(), rows * d80.proj_input());
        assert!(matches!(
            check(&d80, BlockWeightLens::expected(&d80), 960, 960, ws80),
            Err(Error::Unsupported(_))
        ));
    }

    /// Empty, overflowing and past-the-GEMMs configs are `InvalidConfig`,
    /// not a panic on overflow.
    #[test]
    fn configs_empty_or_past_the_gemms_int_are_rejected() {
        let cfg = small();
        for (bad, needle) in [
            (AttentionBlockConfig { hidden: 0, ..cfg }, "at least 1"),
            (AttentionBlockConfig { heads: 0, ..cfg }, "at least 1"),
            (AttentionBlockConfig { head_dim: 0, ..cfg }, "at least 1"),
            (
                AttentionBlockConfig {
                    head_dim: 1 << 62,
                    ..cfg
                },
                "int dimensions",
            ),
            (
                AttentionBlockConfig {
                    hidden: 1 << 31,
                    ..cfg
                },
                "int dimensions",
            ),
            (
                AttentionBlockConfig {
                    head_dim: 1 << 29,
                    ..cfg
                },
                "int dimensions",
            ),
        ] {
            match bad.validate() {
                Err(Error::InvalidConfig(m)) => assert!(m.contains(needle), "{m}"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    /// Rows are bounded by the GEMMs' int, and with qk-norm by its kernel's
    /// token limit (2^31 - 128): 64 x 33 554 431 rows (2^31 - 64) pass
    /// without qk-norm and fail with it.
    #[test]
    fn rows_past_the_gemms_or_the_qk_norm_are_rejected() {
        let lens = |cfg: &AttentionBlockConfig, rows: usize| {
            (
                rows * cfg.hidden,
                (rows * cfg.qkv_width(), rows * cfg.proj_input()),
            )
        };
        let cfg = small();
        let w = BlockWeightLens::expected(&cfg);
        for (batch, tokens) in [(0, 5), (usize::MAX, 2), (1 << 16, 1 << 15)] {
            let (x, ws) = lens(&cfg, 1);
            match check_attention_block(&cfg, &w, (batch, tokens), x, x, ws) {
                Err(Error::InvalidShape(m)) => assert!(m.contains("rows"), "{m}"),
                other => panic!("batch {batch} x tokens {tokens} gave {other:?}"),
            }
        }
        let (batch, tokens) = (64, 33_554_431);
        let plain = AttentionBlockConfig {
            qk_norm_eps: None,
            ..cfg
        };
        let (x, ws) = lens(&plain, batch * tokens);
        let plain_w = BlockWeightLens::expected(&plain);
        check_attention_block(&plain, &plain_w, (batch, tokens), x, x, ws).unwrap();
        match check_attention_block(&cfg, &w, (batch, tokens), x, x, ws) {
            Err(Error::InvalidShape(m)) => assert!(m.contains("qkv rows"), "{m}"),
            other => panic!("qk-norm over 2^31 - 64 rows gave {other:?}"),
        }
    }
}
