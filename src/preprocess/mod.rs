//! Stage 1: DHR preprocessing, image → `pixel_values [T, 3, 448, 448]`.
//!
//! ```
//! use nvlm_vision::preprocess::{ImageView, PixelFormat, Preprocessor};
//! let (w, h) = (640, 480);
//! let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
//! let image = ImageView::packed(&rgb, w as u32, h as u32, PixelFormat::Rgb8)?;
//! let out = Preprocessor::default().run::<f32>(&image)?;
//! assert_eq!(out.plan.tensor_shape(), [7, 3, 448, 448]); // 3x2 tiles + thumbnail
//! # Ok::<(), nvlm_vision::Error>(())
//! ```

mod coeffs;
mod cpu;
mod gpu;
mod image;
mod plan;
pub mod tags;

pub use coeffs::{AxisCoefficients, PRECISION_BITS};
pub use cpu::{Interleaved, PillowVersion, normalize_value};
pub use gpu::{CudaPreprocessor, DeviceImage, PinnedImage, PreprocessKernel};
pub use image::{ImageView, PixelFormat};
pub use plan::{
    DhrConfig, Grid, MAX_PIXELS, MAX_SIDE, MAX_TILE_SIZE, MAX_TILES_LIMIT, Rect, TilePlan,
    candidate_grids, check_image_size,
};

use crate::dtype::TensorElement;
use crate::error::{Error, Result};

/// Mean and std of `T.Normalize`, per RGB channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// ImageNet statistics, used by InternVL and NVLM.
    pub const IMAGENET: Normalization = Normalization {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };

    pub fn validate(&self) -> Result<()> {
        for c in 0..3 {
            let (m, s) = (self.mean[c], self.std[c]);
            if !m.is_finite() || !s.is_finite() || s == 0.0 {
                return Err(Error::InvalidNormalization(format!(
                    "channel {c}: mean {m} and std {s} must be finite, std non-zero"
                )));
            }
        }
        Ok(())
    }
}

impl Default for Normalization {
    fn default() -> Self {
        Normalization::IMAGENET
    }
}

/// Resizes an image to `out_w`×`out_h` as PIL's `image.convert('RGB').resize(
/// (out_w, out_h), BICUBIC)`, returning packed RGB.
pub fn resize_rgb(
    image: &ImageView<'_>,
    out_w: u32,
    out_h: u32,
    pillow: PillowVersion,
) -> Result<Interleaved<3>> {
    check_image_size(out_w, out_h)?;
    Ok(match image.format().colour_channels() {
        3 => cpu::resize_channels::<3>(image, out_w, out_h, pillow),
        _ => {
            let grey = cpu::resize_channels::<1>(image, out_w, out_h, pillow);
            Interleaved {
                width: out_w,
                height: out_h,
                data: grey.data.iter().flat_map(|&v| [v; 3]).collect(),
            }
        }
    })
}

/// The output of [`Preprocessor::run`]: the plan and its `[T, 3, tile, tile]` tensor.
#[derive(Debug, Clone)]
pub struct PixelValues<T> {
    pub plan: TilePlan,
    pub data: Vec<T>,
}

/// DHR preprocessing on the CPU: plan, Pillow-exact resize, crop, thumbnail,
/// normalise.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Preprocessor {
    pub config: DhrConfig,
    pub pillow: PillowVersion,
    pub normalization: Normalization,
}

/// The resized images every output tile is cut from.
struct Sources<const C: usize> {
    grid: Interleaved<C>,
    thumbnail: Option<Interleaved<C>>,
}

impl<const C: usize> Sources<C> {
    fn new(image: &ImageView<'_>, plan: &TilePlan, pillow: PillowVersion) -> Self {
        let (w, h) = plan.resized;
        let t = plan.tile_size;
        Sources {
            grid: cpu::resize_channels::<C>(image, w, h, pillow),
            thumbnail: plan
                .thumbnail
                .then(|| cpu::resize_channels::<C>(image, t, t, pillow)),
        }
    }

    /// `(image, rect)` for each output tile in tensor order, thumbnail last.
    fn tiles<'s>(
        &'s self,
        plan: &'s TilePlan,
    ) -> impl Iterator<Item = (&'s Interleaved<C>, Rect)> + 's {
        let t = plan.tile_size;
        let whole = Rect {
            x: 0,
            y: 0,
            width: t,
            height: t,
        };
        plan.tiles
            .iter()
            .map(|&r| (&self.grid, r))
            .chain(self.thumbnail.iter().map(move |th| (th, whole)))
    }
}

impl Preprocessor {
    pub fn new(config: DhrConfig, pillow: PillowVersion, normalization: Normalization) -> Self {
        Preprocessor {
            config,
            pillow,
            normalization,
        }
    }

    /// The tile plan for a `width`×`height` image.
    pub fn plan(&self, width: u32, height: u32) -> Result<TilePlan> {
        TilePlan::new(width, height, &self.config)
    }

    /// Plans and preprocesses `image` into a new tensor.
    pub fn run<T: TensorElement>(&self, image: &ImageView<'_>) -> Result<PixelValues<T>> {
        let plan = self.plan(image.width(), image.height())?;
        let mut data = vec![T::default(); plan.tensor_len()];
        self.run_into(image, &plan, &mut data)?;
        Ok(PixelValues { plan, data })
    }

    /// Preprocesses `image` into `out`, which must hold `plan.tensor_len()`
    /// elements; `plan` must be this preprocessor's plan for the image.
    pub fn run_into<T: TensorElement>(
        &self,
        image: &ImageView<'_>,
        plan: &TilePlan,
        out: &mut [T],
    ) -> Result<()> {
        self.check_run(
            (image.width(), image.height()),
            plan,
            out.len(),
            "output tensor (elements, must be exact)",
        )?;
        let tables =
            cpu::normalization_tables::<T>(self.normalization.mean, self.normalization.std);
        match image.format().colour_channels() {
            3 => {
                normalize_tiles::<3, T>(&Sources::new(image, plan, self.pillow), plan, &tables, out)
            }
            _ => {
                normalize_tiles::<1, T>(&Sources::new(image, plan, self.pillow), plan, &tables, out)
            }
        }
        Ok(())
    }

    /// The uint8 RGB tiles, `[T, tile, tile, 3]`: the bytes of
    /// `np.asarray(tile)` for each PIL tile, thumbnail last.
    pub fn tiles_rgb(&self, image: &ImageView<'_>) -> Result<(TilePlan, Vec<u8>)> {
        let plan = self.plan(image.width(), image.height())?;
        let tile_bytes = 3 * (plan.tile_size as usize).pow(2);
        let mut out = vec![0u8; plan.num_outputs() * tile_bytes];
        match image.format().colour_channels() {
            3 => rgb_tiles::<3>(&Sources::new(image, &plan, self.pillow), &plan, &mut out),
            _ => rgb_tiles::<1>(&Sources::new(image, &plan, self.pillow), &plan, &mut out),
        }
        Ok((plan, out))
    }

    /// The checks every run makes before any work, CPU or GPU: valid
    /// normalisation, `plan` being this preprocessor's plan for an image of
    /// `(width, height)`, and an output of exactly `plan.tensor_len()` elements.
    pub(crate) fn check_run(
        &self,
        (width, height): (u32, u32),
        plan: &TilePlan,
        out_len: usize,
        what: &'static str,
    ) -> Result<()> {
        self.normalization.validate()?;
        let expected = self.plan(width, height)?;
        if *plan != expected {
            return Err(Error::InvalidConfig(format!(
                "the plan given is for a {}x{} image with grid {:?}, not this preprocessor's plan for {}x{}",
                plan.image.0, plan.image.1, plan.grid, width, height
            )));
        }
        if out_len != plan.tensor_len() {
            return Err(Error::BufferTooShort {
                what,
                len: out_len,
                needed: plan.tensor_len(),
            });
        }
        Ok(())
    }
}

fn normalize_tiles<const C: usize, T: TensorElement>(
    sources: &Sources<C>,
    plan: &TilePlan,
    tables: &[[T; 256]; 3],
    out: &mut [T],
) {
    let tile_len = 3 * (plan.tile_size as usize).pow(2);
    for ((image, rect), chunk) in sources.tiles(plan).zip(out.chunks_exact_mut(tile_len)) {
        cpu::write_tile_chw(image, rect, tables, chunk);
    }
}

fn rgb_tiles<const C: usize>(sources: &Sources<C>, plan: &TilePlan, out: &mut [u8]) {
    let tile_len = 3 * (plan.tile_size as usize).pow(2);
    for ((image, rect), chunk) in sources.tiles(plan).zip(out.chunks_exact_mut(tile_len)) {
        cpu::write_tile_rgb(image, rect, chunk);
    }
}
