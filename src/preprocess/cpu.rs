//! The CPU reference: Pillow-exact bicubic resize and torchvision-exact
//! normalisation. The GPU kernel is tested against these functions byte for
//! byte; they are also the default path on machines without a GPU.

use crate::dtype::TensorElement;
use crate::preprocess::coeffs::{AxisCoefficients, ROUNDING, clip8};
use crate::preprocess::image::ImageView;
use crate::preprocess::plan::Rect;

/// Which Pillow release's pass order to reproduce. The two differ by up to
/// 20 levels on portrait downscales, so "Pillow-exact" must name one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PillowVersion {
    /// Pillow 12.x: horizontal pass first, except that `Image.resize` (in
    /// Python) runs the vertical pass first for images more than 100 times
    /// taller than wide that shrink in height. The default, because the
    /// published NVLM and InternVL checkpoints were trained with Pillow ≤ 12.
    #[default]
    V12,
    /// Pillow 13.0: the order is chosen in C, vertical first when the height
    /// shrinks by more than twice as many pixels as the width does.
    V13,
}

/// The passes a resize runs, in order: Pillow skips a pass whose axis keeps
/// its size, and the version decides the order when both run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Passes {
    Copy,
    Horizontal,
    Vertical,
    HorizontalThenVertical,
    VerticalThenHorizontal,
}

impl PillowVersion {
    /// The passes this version runs to resize `in_w`×`in_h` to `out_w`×`out_h`.
    pub(crate) fn passes(self, in_w: u32, in_h: u32, out_w: u32, out_h: u32) -> Passes {
        let vertical_first = match self {
            PillowVersion::V12 => u64::from(in_h) > 100 * u64::from(in_w) && out_h < in_h,
            PillowVersion::V13 => {
                let shrink_h = i64::from(in_h) - i64::from(out_h);
                let shrink_w = i64::from(in_w) - i64::from(out_w);
                shrink_h > 0 && shrink_h > 2 * shrink_w
            }
        };
        match (out_w != in_w, out_h != in_h) {
            (false, false) => Passes::Copy,
            (true, false) => Passes::Horizontal,
            (false, true) => Passes::Vertical,
            (true, true) if vertical_first => Passes::VerticalThenHorizontal,
            (true, true) => Passes::HorizontalThenVertical,
        }
    }
}

/// A packed 8-bit image with `C` interleaved channels (3 for RGB, 1 for grey).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interleaved<const C: usize> {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

/// Rows of pixels with `bpp` bytes each, of which the first `C` are used.
#[derive(Clone, Copy)]
struct Rows<'a> {
    data: &'a [u8],
    stride: usize,
    width: usize,
    height: usize,
    bpp: usize,
}

impl<'a> Rows<'a> {
    fn of_view(view: &ImageView<'a>) -> Self {
        Rows {
            data: view.data(),
            stride: view.stride(),
            width: view.width() as usize,
            height: view.height() as usize,
            bpp: view.format().bytes_per_pixel(),
        }
    }

    fn of_packed<const C: usize>(image: &'a Interleaved<C>) -> Self {
        let width = image.width as usize;
        Rows {
            data: &image.data,
            stride: width * C,
            width,
            height: image.height as usize,
            bpp: C,
        }
    }

    fn row(&self, y: usize) -> &'a [u8] {
        &self.data[y * self.stride..y * self.stride + self.width * self.bpp]
    }
}

/// Resizes `C` channels of `src` to `out_w`×`out_h` exactly as Pillow's
/// `Image.resize(..., BICUBIC)`. `C` must be the format's colour channels.
///
/// The arithmetic is integer, so the AVX2 build of the same code gives the
/// same bytes; it is picked at run time because it is ~1.6× faster.
pub(crate) fn resize_channels<const C: usize>(
    src: &ImageView<'_>,
    out_w: u32,
    out_h: u32,
    pillow: PillowVersion,
) -> Interleaved<C> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { resize_channels_avx2::<C>(src, out_w, out_h, pillow) };
    }
    resize_channels_portable::<C>(src, out_w, out_h, pillow)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn resize_channels_avx2<const C: usize>(
    src: &ImageView<'_>,
    out_w: u32,
    out_h: u32,
    pillow: PillowVersion,
) -> Interleaved<C> {
    resize_channels_portable::<C>(src, out_w, out_h, pillow)
}

/// The resize for any CPU; `#[inline(always)]` down the call tree so the
/// AVX2 entry point compiles all of it with AVX2.
#[inline(always)]
pub(crate) fn resize_channels_portable<const C: usize>(
    src: &ImageView<'_>,
    out_w: u32,
    out_h: u32,
    pillow: PillowVersion,
) -> Interleaved<C> {
    debug_assert_eq!(C, src.format().colour_channels());
    let rows = Rows::of_view(src);
    let (in_w, in_h) = (src.width(), src.height());
    let horizontal_axis = || AxisCoefficients::bicubic(in_w, out_w);
    let vertical_axis = || AxisCoefficients::bicubic(in_h, out_h);
    match pillow.passes(in_w, in_h, out_w, out_h) {
        Passes::Copy => copy_channels::<C>(rows),
        Passes::Horizontal => horizontal_pass::<C>(rows, &horizontal_axis()),
        Passes::Vertical => vertical_pass::<C>(rows, &vertical_axis()),
        Passes::VerticalThenHorizontal => {
            let tmp = vertical_pass::<C>(rows, &vertical_axis());
            horizontal_pass::<C>(Rows::of_packed(&tmp), &horizontal_axis())
        }
        Passes::HorizontalThenVertical => {
            let tmp = horizontal_pass::<C>(rows, &horizontal_axis());
            vertical_pass::<C>(Rows::of_packed(&tmp), &vertical_axis())
        }
    }
}

/// Both axes unchanged: Pillow returns a copy.
#[inline(always)]
fn copy_channels<const C: usize>(src: Rows<'_>) -> Interleaved<C> {
    let mut data = Vec::with_capacity(src.width * src.height * C);
    for y in 0..src.height {
        for px in src.row(y).chunks_exact(src.bpp) {
            data.extend_from_slice(&px[..C]);
        }
    }
    Interleaved {
        width: src.width as u32,
        height: src.height as u32,
        data,
    }
}

/// `ImagingResampleHorizontal_8bpc` over every row. Pillow restricts this
/// pass to the rows the vertical pass reads; for a whole-image resize that is
/// every row.
#[inline(always)]
fn horizontal_pass<const C: usize>(src: Rows<'_>, axis: &AxisCoefficients) -> Interleaved<C> {
    // A constant pixel stride lets the compiler drop bounds checks and unroll
    // the channels; this pass dominates the resize.
    match src.bpp {
        1 => horizontal_pass_bpp::<C, 1>(src, axis),
        2 => horizontal_pass_bpp::<C, 2>(src, axis),
        3 => horizontal_pass_bpp::<C, 3>(src, axis),
        4 => horizontal_pass_bpp::<C, 4>(src, axis),
        bpp => unreachable!("no pixel format has {bpp} bytes per pixel"),
    }
}

#[inline(always)]
fn horizontal_pass_bpp<const C: usize, const BPP: usize>(
    src: Rows<'_>,
    axis: &AxisCoefficients,
) -> Interleaved<C> {
    let out_w = axis.out_size as usize;
    let mut data = vec![0u8; out_w * C * src.height];
    for (y, out_row) in data.chunks_exact_mut(out_w * C).enumerate() {
        let row = src.row(y);
        for (o, out_px) in out_row.chunks_exact_mut(C).enumerate() {
            let weights = axis.weights(o);
            let start = axis.first[o] as usize * BPP;
            let taps = &row[start..start + weights.len() * BPP];
            let mut acc = [ROUNDING; C];
            for (px, &k) in taps.chunks_exact(BPP).zip(weights) {
                for c in 0..C {
                    acc[c] += i32::from(px[c]) * k;
                }
            }
            for c in 0..C {
                out_px[c] = clip8(acc[c]);
            }
        }
    }
    Interleaved {
        width: out_w as u32,
        height: src.height as u32,
        data,
    }
}

/// `ImagingResampleVertical_8bpc`. Accumulates whole rows at a time (the sum
/// is the same integer in any order), which keeps the inner loop contiguous.
#[inline(always)]
fn vertical_pass<const C: usize>(src: Rows<'_>, axis: &AxisCoefficients) -> Interleaved<C> {
    let row_len = src.width * C;
    let mut data = vec![0u8; row_len * axis.out_size as usize];
    let mut acc = vec![0i32; row_len];
    for (o, out_row) in data.chunks_exact_mut(row_len).enumerate() {
        acc.fill(ROUNDING);
        for (t, &k) in axis.weights(o).iter().enumerate() {
            let row = src.row(axis.first[o] as usize + t);
            if src.bpp == C {
                for (a, &p) in acc.iter_mut().zip(row) {
                    *a += i32::from(p) * k;
                }
            } else {
                for (a, px) in acc.chunks_exact_mut(C).zip(row.chunks_exact(src.bpp)) {
                    for c in 0..C {
                        a[c] += i32::from(px[c]) * k;
                    }
                }
            }
        }
        for (out, &a) in out_row.iter_mut().zip(&acc) {
            *out = clip8(a);
        }
    }
    Interleaved {
        width: src.width as u32,
        height: axis.out_size,
        data,
    }
}

/// torchvision's `ToTensor()` then `Normalize(mean, std)` for one uint8 value
/// and channel: `(u / 255 − mean) / std` in f32, IEEE division, no FMA.
#[inline]
pub fn normalize_value(u: u8, mean: f32, std: f32) -> f32 {
    (f32::from(u) / 255.0 - mean) / std
}

/// Per-channel lookup tables of [`normalize_value`] converted to `T`; a
/// uint8 input has only 256 values, so the table is exact and cheap.
pub(crate) fn normalization_tables<T: TensorElement>(
    mean: [f32; 3],
    std: [f32; 3],
) -> [[T; 256]; 3] {
    std::array::from_fn(|c| {
        std::array::from_fn(|u| T::from_f32(normalize_value(u as u8, mean[c], std[c])))
    })
}

/// Writes `rect` of `image` as `[3, rect.height, rect.width]` planes into
/// `out`, through the per-channel `tables`. Grey images feed all three planes.
pub(crate) fn write_tile_chw<const C: usize, T: TensorElement>(
    image: &Interleaved<C>,
    rect: Rect,
    tables: &[[T; 256]; 3],
    out: &mut [T],
) {
    let (w, h) = (rect.width as usize, rect.height as usize);
    debug_assert_eq!(out.len(), 3 * w * h);
    let image_w = image.width as usize;
    for (c, plane) in out.chunks_exact_mut(w * h).enumerate() {
        let src_c = c.min(C - 1);
        let table = &tables[c];
        for (y, out_row) in plane.chunks_exact_mut(w).enumerate() {
            let start = ((rect.y as usize + y) * image_w + rect.x as usize) * C;
            let src_row = &image.data[start..start + w * C];
            for (o, px) in out_row.iter_mut().zip(src_row.chunks_exact(C)) {
                *o = table[px[src_c] as usize];
            }
        }
    }
}

/// Copies `rect` of `image` as packed RGB (`[rect.height, rect.width, 3]`),
/// the bytes of `np.asarray(tile)` for the PIL tile.
pub(crate) fn write_tile_rgb<const C: usize>(image: &Interleaved<C>, rect: Rect, out: &mut [u8]) {
    let w = rect.width as usize;
    let image_w = image.width as usize;
    for (y, out_row) in out.chunks_exact_mut(w * 3).enumerate() {
        let start = ((rect.y as usize + y) * image_w + rect.x as usize) * C;
        let src_row = &image.data[start..start + w * C];
        for (o, px) in out_row.chunks_exact_mut(3).zip(src_row.chunks_exact(C)) {
            for c in 0..3 {
                o[c] = px[c.min(C - 1)];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::image::PixelFormat;

    /// The run-time-dispatched build (AVX2 where the CPU has it) and the
    /// portable build give the same bytes; Pillow parity tests cover only the
    /// one this machine dispatches to.
    #[test]
    fn dispatched_and_portable_builds_agree() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ std::process::id() as u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..40 {
            let (w, h) = (1 + (next() % 700) as u32, 1 + (next() % 700) as u32);
            let (ow, oh) = (1 + (next() % 900) as u32, 1 + (next() % 900) as u32);
            let pillow = if next() % 2 == 0 {
                PillowVersion::V12
            } else {
                PillowVersion::V13
            };
            let data: Vec<u8> = (0..w * h * 4).map(|_| next() as u8).collect();
            let view = ImageView::packed(&data, w, h, PixelFormat::Rgba8).unwrap();
            assert_eq!(
                resize_channels::<3>(&view, ow, oh, pillow),
                resize_channels_portable::<3>(&view, ow, oh, pillow),
                "{w}x{h} -> {ow}x{oh} {pillow:?}"
            );
        }
    }
}
