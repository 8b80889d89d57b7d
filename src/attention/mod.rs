//! InternViT attention: a flash-attention forward for sm_80 and newer
//! (`kernels/attention.cu`), InternViT-6B's qk-RMSNorm, and their CPU
//! references.
//!
//! Tensors are `[batch, tokens, heads, head_dim]` views with element strides
//! for batch, token and head (head_dim contiguous), so q, k and v can be
//! read straight out of InternViT's packed qkv buffer `[B, N, 3, H, D]`
//! ([`AttentionLayout::packed_qkv`]) and the output written in the layout
//! the output projection reads. Every check on shapes, strides, alignment
//! and buffer lengths ([`check_flash_attention`], [`check_qk_rms_norm`]) is
//! pure host code that runs before any launch.
//!
//! ```
//! use half::bf16;
//! use nvlm_vision::attention::{AttentionLayout, AttentionTensor, QkvPart, attention_f64, default_scale};
//! // InternViT's packed qkv [B, N, 3, H, D], here 1 tile of 5 tokens, 2 heads of 64.
//! let (b, n, h, d) = (1, 5, 2, 64);
//! let qkv: Vec<bf16> = (0..b * n * 3 * h * d).map(|i| bf16::from_f32((i % 7) as f32 / 7.0)).collect();
//! let view = |part| AttentionTensor::new(&qkv[..], AttentionLayout::packed_qkv(b, n, h, d, part));
//! let (out, lse) = attention_f64(&view(QkvPart::Q), &view(QkvPart::K), &view(QkvPart::V), default_scale(d).into())?;
//! assert_eq!((out.len(), lse.len()), (b * n * h * d, b * h * n)); // [B, N, H, D] and [B, H, N]
//! // On a GPU: nvlm_vision::attention::flash_attention(&gpu, q, k, v, out, lse, None) with
//! // the same layouts over device buffers.
//! # Ok::<(), nvlm_vision::Error>(())
//! ```

mod block;
mod cpu;
#[cfg(test)]
mod emulated;
mod gpu;
mod hopper;

pub use block::{
    AttentionBlock, AttentionBlockConfig, AttentionBlockWeights, AttentionBlockWorkspace,
    BlockWeightLens, check_attention_block,
};
pub use cpu::{
    attention_block_reference, attention_f64, attention_row_f64, attention_row_same_precision,
    attention_same_precision, qk_rms_norm_reference,
};
pub use gpu::{AttentionKernel, flash_attention, flash_attention_with, qk_rms_norm};
pub use hopper::input_tensor as hopper_input_tensor;

use crate::dtype::TensorElement;
use crate::error::{Error, Result};
use half::{bf16, f16};

/// Head dims the flash-attention kernels are compiled for.
pub const SUPPORTED_HEAD_DIMS: [usize; 2] = [64, 128];

/// Grid limits of the launch: heads on gridDim.y, batch on gridDim.z, and
/// token counts held in `int` by the kernels, which round them up to whole
/// tiles (`len + 127` at most) in `int` too.
const MAX_GRID_YZ: usize = 65_535;
const MAX_TOKENS: usize = i32::MAX as usize - 127;

/// A 16-bit element type the attention kernels take (bf16 or f16).
pub trait AttentionElement: TensorElement + cudarc::driver::DeviceRepr {
    /// The kernel-name suffix (`flash_attention_<suffix>_d128`).
    const KERNEL_SUFFIX: &'static str;
    fn to_f32(self) -> f32;
}

impl AttentionElement for bf16 {
    const KERNEL_SUFFIX: &'static str = "bf16";
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

impl AttentionElement for f16 {
    const KERNEL_SUFFIX: &'static str = "f16";
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// Where a `[batch, tokens, heads, head_dim]` tensor lives in a flat buffer:
/// element `(b, n, h, d)` is at
/// `offset + b * strides[0] + n * strides[1] + h * strides[2] + d`.
/// The stride of a dimension of size 1 is never used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionLayout {
    pub batch: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Elements before element (0, 0, 0, 0).
    pub offset: usize,
    /// Element strides of batch, token and head.
    pub strides: [usize; 3],
}

/// Which third of a packed qkv buffer a view reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkvPart {
    Q = 0,
    K = 1,
    V = 2,
}

impl AttentionLayout {
    /// A contiguous `[batch, tokens, heads, head_dim]` tensor.
    pub fn contiguous(batch: usize, tokens: usize, heads: usize, head_dim: usize) -> Self {
        AttentionLayout {
            batch,
            tokens,
            heads,
            head_dim,
            offset: 0,
            strides: [tokens * heads * head_dim, heads * head_dim, head_dim],
        }
    }

    /// A contiguous `[batch, heads, tokens, head_dim]` tensor (torch's
    /// SDPA layout): tokens inside heads.
    pub fn heads_outer(batch: usize, tokens: usize, heads: usize, head_dim: usize) -> Self {
        AttentionLayout {
            strides: [heads * tokens * head_dim, head_dim, tokens * head_dim],
            ..Self::contiguous(batch, tokens, heads, head_dim)
        }
    }

    /// The q, k or v view of a contiguous packed `[batch, tokens, 3, heads,
    /// head_dim]` buffer (InternViT's qkv Linear output, reshaped).
    pub fn packed_qkv(
        batch: usize,
        tokens: usize,
        heads: usize,
        head_dim: usize,
        part: QkvPart,
    ) -> Self {
        let row = 3 * heads * head_dim;
        AttentionLayout {
            batch,
            tokens,
            heads,
            head_dim,
            offset: part as usize * heads * head_dim,
            strides: [tokens * row, row, head_dim],
        }
    }

    /// Buffer index of element `(b, n, h, d)` (no bounds check; valid for
    /// a layout that passed the checks).
    pub fn index(&self, b: usize, n: usize, h: usize, d: usize) -> usize {
        self.offset + b * self.strides[0] + n * self.strides[1] + h * self.strides[2] + d
    }

    /// The dims (size, stride) that have more than one element, head_dim
    /// last with stride 1.
    fn extents(&self) -> [(usize, usize); 4] {
        [
            (self.batch, self.strides[0]),
            (self.tokens, self.strides[1]),
            (self.heads, self.strides[2]),
            (self.head_dim, 1),
        ]
    }

    /// Elements the buffer must hold: the largest index + 1, or `None` on
    /// overflow (of usize, or of the kernels' int64 offsets).
    pub fn span(&self) -> Option<usize> {
        let mut last = self.offset;
        for (size, stride) in self.extents() {
            last = last.checked_add(size.checked_sub(1)?.checked_mul(stride)?)?;
        }
        let span = last.checked_add(1)?;
        // The kernels form byte offsets in int64.
        (span.checked_mul(2)? <= i64::MAX as usize).then_some(span)
    }

    fn check_nonempty(&self, what: &str) -> Result<()> {
        if self.batch == 0 || self.tokens == 0 || self.heads == 0 || self.head_dim == 0 {
            return Err(Error::InvalidShape(format!(
                "{what}: every dimension must be at least 1, got [batch {}, tokens {}, heads {}, head_dim {}]",
                self.batch, self.tokens, self.heads, self.head_dim
            )));
        }
        Ok(())
    }

    /// True when no two elements share an index: the dims sorted by stride
    /// each step over the whole span of the smaller ones.
    fn is_non_overlapping(&self) -> bool {
        let mut dims: Vec<(usize, usize)> = self
            .extents()
            .into_iter()
            .filter(|&(size, _)| size > 1)
            .collect();
        dims.sort_by_key(|&(_, stride)| stride);
        // Elements spanned by one step of the dims so far: the next dim's
        // stride must be at least that.
        let mut covered = 1usize;
        for (size, stride) in dims {
            if stride < covered {
                return false;
            }
            match stride
                .checked_mul(size - 1)
                .and_then(|s| s.checked_add(covered))
            {
                Some(span) => covered = span,
                None => return false,
            }
        }
        true
    }
}

/// A tensor: its buffer (a host slice, a device slice) and its layout.
#[derive(Debug, Clone, Copy)]
pub struct AttentionTensor<S> {
    pub data: S,
    pub layout: AttentionLayout,
}

impl<S> AttentionTensor<S> {
    pub fn new(data: S, layout: AttentionLayout) -> Self {
        AttentionTensor { data, layout }
    }
}

/// The softmax scale InternViT uses, `head_dim^-0.5`.
pub fn default_scale(head_dim: usize) -> f32 {
    (head_dim as f64).powf(-0.5) as f32
}

/// Checks that q `[B, Nq, H, D]`, k and v `[B, Nkv, H, D]` fit together
/// and that each layout fits in its buffer (`lens` in elements: q, k, v).
/// Shared by the CPU references and the GPU path.
fn check_inputs(
    q: &AttentionLayout,
    k: &AttentionLayout,
    v: &AttentionLayout,
    lens: [usize; 3],
) -> Result<()> {
    for (layout, what) in [(q, "q"), (k, "k"), (v, "v")] {
        layout.check_nonempty(what)?;
    }
    if (k.batch, k.heads, k.head_dim) != (q.batch, q.heads, q.head_dim)
        || (v.batch, v.heads, v.head_dim, v.tokens) != (k.batch, k.heads, k.head_dim, k.tokens)
    {
        return Err(Error::InvalidShape(format!(
            "q [B {}, N {}, H {}, D {}], k [{}, {}, {}, {}] and v [{}, {}, {}, {}] must share batch, heads and head_dim, and k and v their tokens",
            q.batch,
            q.tokens,
            q.heads,
            q.head_dim,
            k.batch,
            k.tokens,
            k.heads,
            k.head_dim,
            v.batch,
            v.tokens,
            v.heads,
            v.head_dim
        )));
    }
    for ((layout, what), len) in [(q, "q"), (k, "k"), (v, "v")].into_iter().zip(lens) {
        check_span(layout, what, len)?;
    }
    Ok(())
}

fn check_span(layout: &AttentionLayout, what: &'static str, len: usize) -> Result<()> {
    let needed = layout.span().ok_or_else(|| {
        Error::InvalidShape(format!("{what}: {layout:?} overflows the index type"))
    })?;
    if needed > len {
        return Err(Error::BufferTooShort {
            what,
            len: len * 2,
            needed: needed * 2,
        });
    }
    Ok(())
}

/// Every check [`flash_attention`] makes before it launches, on the
/// layouts and the buffer lengths (in elements) alone:
/// - shapes: no empty dimension; q, k, v, out agree (out = q's shape; k
///   and v share their tokens); batch and heads at most 65535, tokens at
///   most 2^31 - 128 (else `InvalidShape`);
/// - head_dim 64 or 128 (else `Unsupported`);
/// - 16-byte aligned rows: offsets and the strides of dimensions larger
///   than 1 are multiples of 8 elements (else `InvalidShape`); the device
///   address itself is checked at launch;
/// - the output's elements are distinct (no two (b, n, h, d) share an
///   index, else `InvalidShape`);
/// - each buffer holds the largest index its layout reaches, the LSE buffer
///   `B * H * Nq` floats (else `BufferTooShort`), and no index overflows;
/// - a finite softmax scale.
pub fn check_flash_attention(
    q: &AttentionLayout,
    k: &AttentionLayout,
    v: &AttentionLayout,
    out: &AttentionLayout,
    lens: [usize; 4],
    lse_len: Option<usize>,
    scale: f32,
) -> Result<()> {
    check_inputs(q, k, v, [lens[0], lens[1], lens[2]])?;
    out.check_nonempty("out")?;
    if (out.batch, out.tokens, out.heads, out.head_dim) != (q.batch, q.tokens, q.heads, q.head_dim)
    {
        return Err(Error::InvalidShape(format!(
            "out [B {}, N {}, H {}, D {}] must have q's shape [{}, {}, {}, {}]",
            out.batch, out.tokens, out.heads, out.head_dim, q.batch, q.tokens, q.heads, q.head_dim
        )));
    }
    if !SUPPORTED_HEAD_DIMS.contains(&q.head_dim) {
        return Err(Error::Unsupported(format!(
            "flash attention for head_dim {} (kernels exist for {SUPPORTED_HEAD_DIMS:?})",
            q.head_dim
        )));
    }
    if q.batch > MAX_GRID_YZ
        || q.heads > MAX_GRID_YZ
        || q.tokens > MAX_TOKENS
        || k.tokens > MAX_TOKENS
    {
        return Err(Error::InvalidShape(format!(
            "batch {} and heads {} must be at most {MAX_GRID_YZ}, tokens {} / {} at most {MAX_TOKENS}",
            q.batch, q.heads, q.tokens, k.tokens
        )));
    }
    for (layout, what) in [(q, "q"), (k, "k"), (v, "v"), (out, "out")] {
        let misaligned = !layout.offset.is_multiple_of(8)
            || layout
                .extents()
                .iter()
                .take(3)
                .any(|&(size, stride)| size > 1 && !stride.is_multiple_of(8));
        if misaligned {
            return Err(Error::InvalidShape(format!(
                "{what}: offset {} and strides {:?} (of dims larger than 1) must be multiples of 8 elements, so every row is 16-byte aligned",
                layout.offset, layout.strides
            )));
        }
    }
    if !out.is_non_overlapping() {
        return Err(Error::InvalidShape(format!(
            "out: strides {:?} make elements of [B {}, N {}, H {}, D {}] overlap",
            out.strides, out.batch, out.tokens, out.heads, out.head_dim
        )));
    }
    check_span(out, "out", lens[3])?;
    if let Some(len) = lse_len {
        let needed = q.batch * q.heads * q.tokens; // < span of out, cannot overflow
        if needed > len {
            return Err(Error::BufferTooShort {
                what: "lse",
                len: len * 4,
                needed: needed * 4,
            });
        }
    }
    if !scale.is_finite() {
        return Err(Error::InvalidShape(format!(
            "softmax scale {scale} must be finite"
        )));
    }
    Ok(())
}

/// The packed qkv rows of InternViT-6B's qkv Linear: `[tokens, 3,
/// heads_padded, head_dim]`, contiguous. NVLM's checkpoint pads 25 heads to
/// 32; only the first `heads_real` heads of q and k are normalised (and
/// only they enter the variance); the padding is left untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QkvRows {
    pub tokens: usize,
    pub heads_padded: usize,
    pub heads_real: usize,
    pub head_dim: usize,
}

impl QkvRows {
    /// Elements per token row (q, k and v).
    pub fn row_len(&self) -> usize {
        3 * self.heads_padded * self.head_dim
    }

    /// Normalised elements of q (and of k) per token: `heads_real * head_dim`.
    pub fn width(&self) -> usize {
        self.heads_real * self.head_dim
    }
}

/// Every check [`qk_rms_norm`] makes before it launches: a non-empty
/// shape with `heads_real <= heads_padded`, head_dim a multiple of 8 (the
/// kernel moves 16-byte vectors; else `Unsupported`), at most 2^31 - 128
/// tokens, buffers long enough (qkv `tokens * row_len`, each weight
/// `width` elements, else `BufferTooShort`), and a finite eps >= 0.
pub fn check_qk_rms_norm(
    rows: &QkvRows,
    qkv_len: usize,
    weight_lens: [usize; 2],
    eps: f32,
) -> Result<()> {
    if rows.tokens == 0
        || rows.heads_real == 0
        || rows.head_dim == 0
        || rows.heads_real > rows.heads_padded
    {
        return Err(Error::InvalidShape(format!(
            "qkv rows {rows:?}: tokens, heads_real and head_dim must be at least 1 and heads_real at most heads_padded"
        )));
    }
    if !rows.head_dim.is_multiple_of(8) {
        return Err(Error::Unsupported(format!(
            "qk-RMSNorm for head_dim {} (must be a multiple of 8)",
            rows.head_dim
        )));
    }
    let width = rows.heads_real.checked_mul(rows.head_dim);
    let needed = rows
        .tokens
        .checked_mul(rows.heads_padded)
        .zip(rows.head_dim.checked_mul(3))
        .and_then(|(x, y)| x.checked_mul(y))
        .filter(|&n| n <= (i64::MAX / 2) as usize && width.is_some_and(|w| w <= u32::MAX as usize));
    let Some(needed) = needed.filter(|_| rows.tokens <= MAX_TOKENS) else {
        return Err(Error::InvalidShape(format!(
            "qkv rows {rows:?} overflow the kernel's index types"
        )));
    };
    if needed > qkv_len {
        return Err(Error::BufferTooShort {
            what: "qkv",
            len: qkv_len * 2,
            needed: needed * 2,
        });
    }
    for (len, what) in weight_lens.into_iter().zip(["q weight", "k weight"]) {
        if len < rows.width() {
            return Err(Error::BufferTooShort {
                what,
                len: len * 2,
                needed: rows.width() * 2,
            });
        }
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::InvalidShape(format!(
            "RMSNorm eps {eps} must be finite and >= 0"
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
