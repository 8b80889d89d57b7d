//! The projector (InternVL's `mlp1` after `pixel_shuffle`): the InternViT
//! last hidden state `[T, tokens, C]` → `[T · 256, H_out]` LLM embeddings.
//!
//! ```text
//! drop CLS → pixel_shuffle(0.5) → LayerNorm(4C) → Linear1 → GELU → Linear2
//! ```
//!
//! One configurable projector covers NVLM-D-72B, NVLM-D 34B, InternVL2/2.5
//! and NVLM-X's one-layer projection ([`ProjectorConfig`] presets). On the
//! GPU ([`gpu`]) the first three steps are one memory-bound kernel, the
//! Linears are cuBLASLt GEMMs ([`crate::gemm`]) and the exact GELU is a small
//! element-wise kernel, or, on Hopper, Linear 1 and its GELU are one kernel
//! of the crate's own ([`hopper`], [`GeluMode::ExactErfHopperLinear`]).
//! [`cpu`] is the f64 reference.
//!
//! Every shape is checked by [`ProjectorConfig::check_forward`], a pure
//! function, before anything touches a device.

pub mod cpu;
#[cfg(test)]
mod emulated;
pub mod gpu;
pub mod hopper;

use crate::dtype::Dtype;
use crate::error::{Error, Result};

/// InternVL's `ps_version`: v1 leaves the shuffled grid transposed, v2
/// swaps it back (REFERENCE.md §5). Public InternVL2/2.5 config.json files
/// say "v2"; the presets use v2 for NVLM-D too, which was not re-checked
/// against its config.json here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsVersion {
    V1,
    V2,
}

/// Which GELU follows Linear 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeluMode {
    /// `x/2 · (1 + erf(x/√2))`, torch's `nn.GELU()`, which the models use:
    /// a separate element-wise kernel after the GEMM (whose epilogue adds
    /// the bias before rounding, as torch's Linear does).
    ExactErf,
    /// cuBLASLt's GELU epilogue fused into GEMM 1. NVIDIA documents it as
    /// an approximation; `tests/gpu_projector.rs` measures which one.
    CublasLtApproximate,
    /// The exact GELU in the epilogue of the crate's own sm_90a Linear
    /// (kernels/projector_hopper.cu) for Linear 1: no separate pass; the
    /// bias and the GELU act on the f32 sums, rounded once. Linear 2 stays
    /// on cuBLASLt. Needs compute capability 9.0 (`Projector::new` says so
    /// otherwise) and 4C % 8 == 0 (`forward` says so before any launch).
    ExactErfHopperLinear,
}

/// The shape of one projector. Weights follow PyTorch's layout: Linear
/// weights `[out, in]` row-major, LayerNorm gamma and beta `[4C]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectorConfig {
    pub name: &'static str,
    /// C, the vision encoder's hidden size.
    pub vit_hidden: usize,
    /// The side of the patch grid: 448 px / patch 14 = 32.
    pub grid_side: usize,
    /// The encoder's output has a CLS token first (InternViT: yes); the
    /// projector skips it.
    pub cls_token: bool,
    pub ps_version: PsVersion,
    pub ln_eps: f32,
    /// Output features of Linear 1.
    pub linear1_out: usize,
    /// Output features of Linear 2; `None` for a one-layer projection
    /// (LayerNorm then Linear 1, no GELU).
    pub linear2_out: Option<usize>,
    /// The Linears have biases.
    pub bias: bool,
    pub gelu: GeluMode,
}

impl ProjectorConfig {
    /// NVLM-D-72B (HF `nvidia/NVLM-D-72B`): InternViT-6B (C = 3200), mlp1
    /// LayerNorm(12800, eps 1e-5), 12800 → 29568 → 8192, no biases
    /// (vLLM's `nvlm_d.py` builds it as `LayerNorm(4C)`, `Linear(4C,
    /// llm intermediate, bias=False)`, `GELU()`, `Linear(.., llm hidden,
    /// bias=False)`; Qwen2-72B's intermediate and hidden sizes).
    pub fn nvlm_d_72b() -> Self {
        ProjectorConfig {
            name: "NVLM-D-72B",
            vit_hidden: 3200,
            grid_side: 32,
            cls_token: true,
            ps_version: PsVersion::V2,
            ln_eps: 1e-5,
            linear1_out: 29568,
            linear2_out: Some(8192),
            bias: false,
            gelu: GeluMode::ExactErf,
        }
    }

    /// NVLM-D 34B (Megatron): 12800 → 20480 → 7168, no biases.
    pub fn nvlm_d_34b() -> Self {
        ProjectorConfig {
            name: "NVLM-D-34B",
            linear1_out: 20480,
            linear2_out: Some(7168),
            ..Self::nvlm_d_72b()
        }
    }

    /// InternVL2/2.5 with InternViT-300M (C = 1024): 4096 → H → H with
    /// biases; H = 4096 is InternVL2-8B's LLM (internlm2_5-7b-chat,
    /// `llm_config.hidden_size` in its public config.json).
    pub fn internvl2_300m(llm_hidden: usize) -> Self {
        ProjectorConfig {
            name: "InternVL2-300M",
            vit_hidden: 1024,
            grid_side: 32,
            cls_token: true,
            ps_version: PsVersion::V2,
            ln_eps: 1e-5, // nn.LayerNorm's default, as InternVL's mlp1 builds it
            linear1_out: llm_hidden,
            linear2_out: Some(llm_hidden),
            bias: true,
            gelu: GeluMode::ExactErf,
        }
    }

    /// InternVL2/2.5 with InternViT-6B (C = 3200): 12800 → H → H with
    /// biases; H = 6144 is InternVL2-26B's LLM (internlm2-chat-20b).
    pub fn internvl2_6b(llm_hidden: usize) -> Self {
        ProjectorConfig {
            name: "InternVL2-6B",
            vit_hidden: 3200,
            ..Self::internvl2_300m(llm_hidden)
        }
    }

    /// NVLM-X's one-layer projection, 12800 → `llm_hidden` (8192 for its
    /// Qwen2-72B LLM). NVLM-X's weights are not public, so its LayerNorm
    /// and bias choice here follow NVLM-D (LayerNorm first, no bias):
    /// unverified.
    pub fn nvlm_x(llm_hidden: usize) -> Self {
        ProjectorConfig {
            name: "NVLM-X",
            linear1_out: llm_hidden,
            linear2_out: None,
            ..Self::nvlm_d_72b()
        }
    }

    /// 4C: the LayerNorm width and Linear 1's input features.
    pub fn row_width(&self) -> usize {
        4 * self.vit_hidden
    }

    /// Encoder tokens per tile: side², plus the CLS token.
    pub fn tokens_per_tile(&self) -> usize {
        self.grid_side * self.grid_side + usize::from(self.cls_token)
    }

    /// Output rows (image tokens): `tiles · (side/2)²`.
    pub fn output_rows(&self, tiles: usize) -> usize {
        tiles * (self.grid_side / 2) * (self.grid_side / 2)
    }

    /// Features per output row.
    pub fn output_width(&self) -> usize {
        self.linear2_out.unwrap_or(self.linear1_out)
    }

    /// The config itself: non-zero sizes, an even grid, a usable epsilon,
    /// and sizes the kernels' 32-bit row indices hold.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| {
            Err(Error::InvalidShape(format!(
                "projector {}: {why}",
                self.name
            )))
        };
        if self.vit_hidden == 0 || self.linear1_out == 0 || self.linear2_out == Some(0) {
            return bad("zero-sized dimension".into());
        }
        if self.grid_side == 0 || !self.grid_side.is_multiple_of(2) {
            return bad(format!(
                "grid side {} must be even and non-zero (pixel_shuffle 0.5)",
                self.grid_side
            ));
        }
        if !(self.ln_eps.is_finite() && self.ln_eps > 0.0) {
            return bad(format!(
                "LayerNorm eps {} must be finite and positive",
                self.ln_eps
            ));
        }
        // Checked here, so that row_width and tokens_per_tile cannot overflow.
        let row_width = self.vit_hidden.checked_mul(4);
        let tokens_per_tile = self.grid_side.checked_mul(self.grid_side);
        let too_big = [
            row_width,
            Some(self.linear1_out),
            Some(self.output_width()),
            tokens_per_tile.and_then(|t| t.checked_add(1)),
        ]
        .iter()
        .any(|&d| d.is_none_or(|d| d > i32::MAX as usize));
        if too_big {
            return bad("a dimension exceeds i32::MAX".into());
        }
        Ok(())
    }

    /// Every check of one forward call, before any launch: `input_len`
    /// elements of `[tiles, tokens_per_tile, C]`, weights of the lengths
    /// their `[out, in]` shapes need (biases present exactly when the
    /// config has them), and an output of at least
    /// `[output_rows, output_width]` elements.
    pub fn check_forward(
        &self,
        tiles: usize,
        input_len: usize,
        w: &WeightLens,
        out_len: usize,
    ) -> Result<()> {
        self.check_front(tiles, input_len, w.ln_gamma, w.ln_beta)?;
        let named = |what: &str, len: usize, shape: &[usize]| -> Result<()> {
            let need: usize = shape.iter().product();
            if len == need {
                Ok(())
            } else {
                Err(Error::InvalidShape(format!(
                    "projector {}: {what} has {len} elements, expected {shape:?} = {need}",
                    self.name
                )))
            }
        };
        let (h1, k1) = (self.linear1_out, self.row_width());
        named("Linear 1 weight [out, in]", w.w1, &[h1, k1])?;
        self.check_optional("Linear 1 bias", w.b1, self.bias, h1)?;
        match (self.linear2_out, w.w2) {
            (Some(h2), Some(len)) => {
                named("Linear 2 weight [out, in]", len, &[h2, h1])?;
                self.check_optional("Linear 2 bias", w.b2, self.bias, h2)?;
            }
            (Some(_), None) => {
                return self.shape_error("Linear 2 weight is missing (two-layer projector)");
            }
            (None, Some(_)) => {
                return self.shape_error("a Linear 2 weight was given to a one-layer projector");
            }
            (None, None) if w.b2.is_some() => {
                return self.shape_error("a Linear 2 bias was given to a one-layer projector");
            }
            (None, None) => {}
        }
        let need = self.output_rows(tiles) * self.output_width();
        if out_len < need {
            return Err(Error::BufferTooShort {
                what: "projector output (elements)",
                len: out_len,
                needed: need,
            });
        }
        Ok(())
    }

    /// The front's checks: the config, the input's token count, LayerNorm
    /// parameter lengths.
    pub fn check_front(
        &self,
        tiles: usize,
        input_len: usize,
        gamma_len: usize,
        beta_len: usize,
    ) -> Result<()> {
        self.validate()?;
        if tiles == 0 {
            return self.shape_error("zero tiles");
        }
        let c = self.vit_hidden;
        if !input_len.is_multiple_of(c) {
            return self.shape_error(&format!(
                "input has {input_len} elements, not a multiple of C = {c} (wrong C?)"
            ));
        }
        let tokens = input_len / c;
        let need = tiles.checked_mul(self.tokens_per_tile());
        if need != Some(tokens) {
            return self.shape_error(&format!(
                "input has {tokens} tokens of C = {c}, expected {tiles} tiles x {} tokens = {}{}",
                self.tokens_per_tile(),
                need.map_or("more than usize holds".into(), |n| n.to_string()),
                if self.cls_token {
                    " (with CLS)"
                } else {
                    " (no CLS)"
                }
            ));
        }
        if self.output_rows(tiles) > i32::MAX as usize {
            return self.shape_error(&format!(
                "{tiles} tiles: too many output rows for one launch"
            ));
        }
        for (what, len) in [("LayerNorm gamma", gamma_len), ("LayerNorm beta", beta_len)] {
            if len != self.row_width() {
                return self.shape_error(&format!(
                    "{what} has {len} elements, expected 4C = {}",
                    self.row_width()
                ));
            }
        }
        Ok(())
    }

    fn check_optional(
        &self,
        what: &str,
        len: Option<usize>,
        expected: bool,
        need: usize,
    ) -> Result<()> {
        match (len, expected) {
            (Some(len), true) if len != need => {
                self.shape_error(&format!("{what} has {len} elements, expected [{need}]"))
            }
            (Some(_), true) | (None, false) => Ok(()),
            (None, true) => self.shape_error(&format!("{what} is missing (the config has biases)")),
            (Some(_), false) => {
                self.shape_error(&format!("{what} was given but the config has no biases"))
            }
        }
    }

    fn shape_error(&self, why: &str) -> Result<()> {
        Err(Error::InvalidShape(format!(
            "projector {}: {why}",
            self.name
        )))
    }
}

/// The element counts of a projector's weights, for
/// [`ProjectorConfig::check_forward`] (the GPU path takes them from its
/// device buffers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightLens {
    pub ln_gamma: usize,
    pub ln_beta: usize,
    pub w1: usize,
    pub b1: Option<usize>,
    pub w2: Option<usize>,
    pub b2: Option<usize>,
}

impl WeightLens {
    /// The lengths `cfg` needs (what a correct caller passes).
    pub fn expected(cfg: &ProjectorConfig) -> WeightLens {
        let bias = |n: usize| cfg.bias.then_some(n);
        WeightLens {
            ln_gamma: cfg.row_width(),
            ln_beta: cfg.row_width(),
            w1: cfg.linear1_out * cfg.row_width(),
            b1: bias(cfg.linear1_out),
            w2: cfg.linear2_out.map(|h2| h2 * cfg.linear1_out),
            b2: cfg.linear2_out.and_then(bias),
        }
    }
}

/// How the front kernel is launched: which instantiation and how many
/// threads per row (one block per output row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontLaunch {
    pub kernel: String,
    pub threads: u32,
}

/// Most threads per block the front kernels are built for (their
/// `__launch_bounds__`).
const FRONT_MAX_THREADS: usize = crate::abi::NVLM_PROJECTOR_MAX_THREADS as usize;

/// Picks the front kernel for `cfg` in `dtype`. The 16-byte path needs
/// C % 8 == 0 (each 2C-long run then starts 16-byte aligned) and 16-byte
/// aligned buffers (`aligned`); it holds a row of up to 4C = 8·8·256
/// (C ≤ 4096) in registers. Otherwise the scalar path, which holds up to
/// C = 512 (test sizes; no model has such a C). Anything else is
/// [`Error::Unsupported`]: a larger row needs a variant that stages it in
/// shared memory, which no model needs.
pub fn front_launch(cfg: &ProjectorConfig, dtype: Dtype, aligned: bool) -> Result<FrontLaunch> {
    let name = match dtype {
        Dtype::Bf16 => "bf16",
        Dtype::F16 => "f16",
        Dtype::F32 => {
            return Err(Error::Unsupported(
                "the projector kernels take bf16 or f16 (the checkpoints' dtypes), not f32".into(),
            ));
        }
    };
    let width = cfg.row_width();
    let threads_for =
        |chunks: usize, per_thread: usize| chunks.div_ceil(per_thread).next_multiple_of(32);
    if cfg.vit_hidden.is_multiple_of(8) && aligned {
        let chunks = width / 8;
        if let Some(vpt) = [1usize, 2, 4, 8]
            .into_iter()
            .find(|&v| threads_for(chunks, v) <= FRONT_MAX_THREADS)
        {
            return Ok(FrontLaunch {
                kernel: format!("projector_front_{name}_v8x{vpt}"),
                threads: threads_for(chunks, vpt) as u32,
            });
        }
        return Err(Error::Unsupported(format!(
            "projector front: C = {} > 4096 (the kernel holds one 4C row in the registers of {FRONT_MAX_THREADS} threads)",
            cfg.vit_hidden
        )));
    }
    if threads_for(width, 8) <= FRONT_MAX_THREADS {
        return Ok(FrontLaunch {
            kernel: format!("projector_front_{name}_s1x8"),
            threads: threads_for(width, 8) as u32,
        });
    }
    Err(Error::Unsupported(format!(
        "projector front: C = {} with {} needs the scalar kernel, which holds at most C = 512; \
         the 16-byte kernel needs C % 8 == 0 and 16-byte aligned input, gamma, beta and output",
        cfg.vit_hidden,
        if !cfg.vit_hidden.is_multiple_of(8) {
            "C % 8 != 0"
        } else {
            "a buffer not 16-byte aligned"
        }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ProjectorConfig {
        ProjectorConfig {
            name: "small",
            vit_hidden: 24,
            grid_side: 4,
            cls_token: true,
            ps_version: PsVersion::V2,
            ln_eps: 1e-5,
            linear1_out: 40,
            linear2_out: Some(16),
            bias: true,
            gelu: GeluMode::ExactErf,
        }
    }

    fn input_len(cfg: &ProjectorConfig, tiles: usize) -> usize {
        tiles * cfg.tokens_per_tile() * cfg.vit_hidden
    }

    fn out_len(cfg: &ProjectorConfig, tiles: usize) -> usize {
        cfg.output_rows(tiles) * cfg.output_width()
    }

    fn shape_err(r: Result<()>, needle: &str) {
        match r {
            Err(Error::InvalidShape(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
            other => panic!("expected InvalidShape({needle}), got {other:?}"),
        }
    }

    #[test]
    fn presets_have_the_reference_shapes_and_pass_their_own_checks() {
        let d72 = ProjectorConfig::nvlm_d_72b();
        assert_eq!(
            (d72.row_width(), d72.linear1_out, d72.output_width()),
            (12800, 29568, 8192)
        );
        assert_eq!(
            (d72.tokens_per_tile(), d72.output_rows(7), d72.bias),
            (1025, 1792, false)
        );
        let d34 = ProjectorConfig::nvlm_d_34b();
        assert_eq!(
            (d34.row_width(), d34.linear1_out, d34.output_width()),
            (12800, 20480, 7168)
        );
        let small_vl = ProjectorConfig::internvl2_300m(4096);
        assert_eq!(
            (small_vl.row_width(), small_vl.linear1_out, small_vl.bias),
            (4096, 4096, true)
        );
        assert_eq!(ProjectorConfig::internvl2_6b(6144).row_width(), 12800);
        let x = ProjectorConfig::nvlm_x(8192);
        assert_eq!(
            (x.row_width(), x.output_width(), x.linear2_out),
            (12800, 8192, None)
        );
        for cfg in [d72, d34, small_vl, ProjectorConfig::internvl2_6b(6144), x] {
            let lens = WeightLens::expected(&cfg);
            cfg.check_forward(3, input_len(&cfg, 3), &lens, out_len(&cfg, 3))
                .unwrap();
        }
    }

    #[test]
    fn wrong_c_is_rejected() {
        let cfg = small();
        let lens = WeightLens::expected(&cfg);
        // An encoder output of C = 48 given to a C = 24 projector.
        let len = 2 * cfg.tokens_per_tile() * 48;
        shape_err(
            cfg.check_forward(2, len, &lens, out_len(&cfg, 2)),
            "tokens of C = 24",
        );
        shape_err(
            cfg.check_forward(2, len + 1, &lens, out_len(&cfg, 2)),
            "not a multiple of C = 24",
        );
    }

    #[test]
    fn wrong_token_count_is_rejected() {
        let cfg = small();
        let lens = WeightLens::expected(&cfg);
        // Without the CLS token where the config expects it.
        let no_cls = 2 * 16 * cfg.vit_hidden;
        shape_err(
            cfg.check_forward(2, no_cls, &lens, out_len(&cfg, 2)),
            "2 tiles x 17 tokens = 34 (with CLS)",
        );
        // One tile too many.
        shape_err(
            cfg.check_forward(2, input_len(&cfg, 3), &lens, out_len(&cfg, 2)),
            "expected 2 tiles",
        );
        shape_err(cfg.check_forward(0, 0, &lens, 0), "zero tiles");
    }

    #[test]
    fn mismatched_weight_shapes_are_rejected() {
        let cfg = small();
        let good = WeightLens::expected(&cfg);
        let (i, o) = (input_len(&cfg, 1), out_len(&cfg, 1));
        let cases: [(WeightLens, &str); 9] = [
            (
                WeightLens {
                    ln_gamma: 95,
                    ..good
                },
                "LayerNorm gamma has 95",
            ),
            (
                WeightLens {
                    ln_beta: 24,
                    ..good
                },
                "LayerNorm beta has 24",
            ),
            // Transposed Linear 1 has the same length: that cannot be seen;
            // a wrong out or in can.
            (
                WeightLens {
                    w1: 41 * 96,
                    ..good
                },
                "Linear 1 weight [out, in] has 3936",
            ),
            (
                WeightLens {
                    b1: Some(16),
                    ..good
                },
                "Linear 1 bias has 16",
            ),
            (WeightLens { b1: None, ..good }, "Linear 1 bias is missing"),
            (
                WeightLens {
                    w2: Some(16 * 41),
                    ..good
                },
                "Linear 2 weight [out, in] has 656",
            ),
            (
                WeightLens { w2: None, ..good },
                "Linear 2 weight is missing",
            ),
            (
                WeightLens {
                    b2: Some(40),
                    ..good
                },
                "Linear 2 bias has 40",
            ),
            (WeightLens { b2: None, ..good }, "Linear 2 bias is missing"),
        ];
        for (lens, needle) in cases {
            shape_err(cfg.check_forward(1, i, &lens, o), needle);
        }
        let no_bias = ProjectorConfig {
            bias: false,
            ..small()
        };
        shape_err(
            no_bias.check_forward(1, i, &good, o),
            "Linear 1 bias was given",
        );
        let one_layer = ProjectorConfig {
            linear2_out: None,
            ..small()
        };
        shape_err(
            one_layer.check_forward(1, i, &good, o),
            "Linear 2 weight was given to a one-layer",
        );
        let lens = WeightLens { w2: None, ..good };
        shape_err(
            one_layer.check_forward(1, i, &lens, o),
            "Linear 2 bias was given to a one-layer",
        );
    }

    #[test]
    fn short_output_is_rejected() {
        let cfg = small();
        let lens = WeightLens::expected(&cfg);
        let need = out_len(&cfg, 2);
        let r = cfg.check_forward(2, input_len(&cfg, 2), &lens, need - 1);
        assert_eq!(
            r,
            Err(Error::BufferTooShort {
                what: "projector output (elements)",
                len: need - 1,
                needed: need
            })
        );
        cfg.check_forward(2, input_len(&cfg, 2), &lens, need + 5)
            .unwrap();
    }

    #[test]
    fn bad_configs_are_rejected() {
        shape_err(
            ProjectorConfig {
                grid_side: 5,
                ..small()
            }
            .validate(),
            "grid side 5",
        );
        shape_err(
            ProjectorConfig {
                vit_hidden: 0,
                ..small()
            }
            .validate(),
            "zero-sized",
        );
        shape_err(
            ProjectorConfig {
                linear2_out: Some(0),
                ..small()
            }
            .validate(),
            "zero-sized",
        );
        shape_err(
            ProjectorConfig {
                ln_eps: 0.0,
                ..small()
            }
            .validate(),
            "eps 0",
        );
        shape_err(
            ProjectorConfig {
                ln_eps: f32::NAN,
                ..small()
            }
            .validate(),
            "eps NaN",
        );
        shape_err(
            ProjectorConfig {
                linear1_out: 0,
                ..small()
            }
            .validate(),
            "zero-sized",
        );
        // Past the kernels' int, and sizes whose products overflow usize
        // (an error, not a panic).
        for big in [
            ProjectorConfig {
                vit_hidden: 1 << 29,
                ..small()
            },
            ProjectorConfig {
                vit_hidden: usize::MAX / 2,
                ..small()
            },
            ProjectorConfig {
                grid_side: 1 << 33,
                ..small()
            },
            ProjectorConfig {
                linear1_out: 1 << 31,
                ..small()
            },
            ProjectorConfig {
                linear2_out: Some(1 << 31),
                ..small()
            },
        ] {
            shape_err(big.validate(), "exceeds i32::MAX");
        }
    }

    /// A tile count whose token count overflows is a token mismatch, and
    /// one whose output rows pass the kernels' int (2^31 tiles of 2 x 2
    /// patches, C = 1: no buffer needed to say so) is refused.
    #[test]
    fn tile_counts_past_usize_or_the_kernels_int_are_rejected() {
        let cfg = small();
        let lens = WeightLens::expected(&cfg);
        shape_err(
            cfg.check_forward(usize::MAX / 2, input_len(&cfg, 2), &lens, out_len(&cfg, 2)),
            "more than usize holds",
        );
        let tiny = ProjectorConfig {
            vit_hidden: 1,
            grid_side: 2,
            cls_token: false,
            ..small()
        };
        shape_err(
            tiny.check_front(1 << 31, 4 << 31, 4, 4),
            "too many output rows",
        );
        tiny.check_front((1 << 31) - 1, 4 * ((1 << 31) - 1), 4, 4)
            .unwrap();
    }

    #[test]
    fn bias_gelu_refuses_f32_empty_or_overflowing_shapes_and_short_buffers() {
        use super::gpu::check_bias_gelu;
        let ok = |dtype| check_bias_gelu(dtype, (3, 5), 15, Some(5));
        assert_eq!(
            (ok(Dtype::Bf16).unwrap(), ok(Dtype::F16).unwrap()),
            ("bf16", "f16")
        );
        assert!(matches!(ok(Dtype::F32), Err(Error::Unsupported(_))));
        for shape in [(0, 5), (3, 0), (usize::MAX, 2), (1, 1 << 32)] {
            match check_bias_gelu(Dtype::Bf16, shape, usize::MAX, None) {
                Err(Error::InvalidShape(m)) => assert!(m.contains("bias_gelu: ["), "{m}"),
                other => panic!("{shape:?} gave {other:?}"),
            }
        }
        assert_eq!(
            check_bias_gelu(Dtype::Bf16, (3, 5), 14, None),
            Err(Error::BufferTooShort {
                what: "bias_gelu data (elements)",
                len: 14,
                needed: 15
            })
        );
        shape_err(
            check_bias_gelu(Dtype::F16, (3, 5), 15, Some(4)).map(|_| ()),
            "bias has 4 elements, expected 5",
        );
    }

    #[test]
    fn front_launch_picks_the_kernel_and_refuses_what_it_cannot_hold() {
        let at = |c: usize, dtype, aligned| {
            front_launch(
                &ProjectorConfig {
                    vit_hidden: c,
                    ..small()
                },
                dtype,
                aligned,
            )
        };
        // NVLM-D: 12800 / 8 = 1600 chunks, 8 per thread -> 200 -> 224 threads.
        assert_eq!(
            at(3200, Dtype::Bf16, true).unwrap(),
            FrontLaunch {
                kernel: "projector_front_bf16_v8x8".into(),
                threads: 224
            }
        );
        // InternViT-300M: 512 chunks, 2 per thread.
        assert_eq!(
            at(1024, Dtype::F16, true).unwrap(),
            FrontLaunch {
                kernel: "projector_front_f16_v8x2".into(),
                threads: 256
            }
        );
        assert_eq!(at(8, Dtype::Bf16, true).unwrap().threads, 32);
        assert_eq!(at(4096, Dtype::Bf16, true).unwrap().threads, 256);
        assert!(matches!(
            at(4104, Dtype::Bf16, true),
            Err(Error::Unsupported(_))
        ));
        // Odd C or misaligned buffers: scalar, up to C = 512.
        assert_eq!(
            at(7, Dtype::Bf16, true).unwrap(),
            FrontLaunch {
                kernel: "projector_front_bf16_s1x8".into(),
                threads: 32
            }
        );
        assert_eq!(at(512, Dtype::F16, false).unwrap().threads, 256);
        assert!(
            matches!(at(513, Dtype::F16, true), Err(Error::Unsupported(m)) if m.contains("C % 8 != 0"))
        );
        assert!(
            matches!(at(3200, Dtype::F16, false), Err(Error::Unsupported(m)) if m.contains("not 16-byte aligned"))
        );
        assert!(matches!(
            at(3200, Dtype::F32, true),
            Err(Error::Unsupported(_))
        ));
    }
}
