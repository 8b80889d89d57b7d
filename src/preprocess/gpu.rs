//! DHR preprocessing on a CUDA device (kernels/preprocess.cu, v1).
//!
//! The host computes the plan and Pillow's coefficient tables exactly as the
//! CPU path does; the kernels run the same integer passes, so the output is
//! meant to equal [`Preprocessor::run`] byte for byte. Per resize target
//! (the grid, then the thumbnail): an optional first pass into a packed uint8
//! intermediate, then a last pass that writes normalised tiles.

use crate::abi::{NvlmIntermediate, NvlmResamplePass, NvlmTileWrite};
use crate::cuda::{Gpu, KernelModule, driver_error};
use crate::dtype::TensorElement;
use crate::error::Result;
use crate::preprocess::coeffs::AxisCoefficients;
use crate::preprocess::cpu::{Passes, normalization_tables};
use crate::preprocess::{ImageView, Preprocessor, TilePlan};
use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use std::sync::Arc;

const BLOCK: (u32, u32) = (32, 8);
/// gridDim.y cap; the kernels stride over the remaining rows.
const MAX_GRID_Y: u32 = 65535;

/// [`Preprocessor`]'s work on a GPU.
pub struct CudaPreprocessor {
    pub preprocessor: Preprocessor,
    gpu: Arc<Gpu>,
}

/// The device copy of one axis table.
struct DeviceAxis {
    first: CudaSlice<u32>,
    count: CudaSlice<u32>,
    coeffs: CudaSlice<i32>,
    host: AxisCoefficients,
}

impl CudaPreprocessor {
    pub fn new(preprocessor: Preprocessor, gpu: Arc<Gpu>) -> Self {
        CudaPreprocessor { preprocessor, gpu }
    }

    /// Copies `image` (host memory) to the device, preprocesses it and
    /// returns the plan and the `[T, 3, tile, tile]` tensor on the device.
    pub fn run<T: TensorElement + DeviceRepr>(
        &self,
        image: &ImageView<'_>,
    ) -> Result<(TilePlan, CudaSlice<T>)> {
        let plan = self.preprocessor.plan(image.width(), image.height())?;
        let stream = self.gpu.stream();
        // SAFETY: every element is written by run_into before it returns Ok.
        let mut out = unsafe { stream.alloc::<T>(plan.tensor_len()) }
            .map_err(driver_error("alloc output"))?;
        self.run_into(image, &plan, &mut out)?;
        Ok((plan, out))
    }

    /// As [`Preprocessor::run_into`], into a device buffer of exactly
    /// `plan.tensor_len()` elements. Returns after the work has finished.
    pub fn run_into<T: TensorElement + DeviceRepr>(
        &self,
        image: &ImageView<'_>,
        plan: &TilePlan,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        let pre = &self.preprocessor;
        pre.check_run(
            image,
            plan,
            out.len(),
            "device output tensor (elements, must be exact)",
        )?;
        let stream = self.gpu.stream();
        let src = stream
            .clone_htod(image.data())
            .map_err(driver_error("copy image to device"))?;
        let tables = normalization_tables::<T>(pre.normalization.mean, pre.normalization.std);
        let flat: Vec<T> = tables.iter().flatten().copied().collect();
        let table = stream
            .clone_htod(&flat)
            .map_err(driver_error("copy normalisation table"))?;

        let t = plan.tile_size;
        let mut targets = vec![(plan.resized, plan.grid.cols, 0u32)];
        if plan.thumbnail {
            targets.push(((t, t), 1, plan.tiles.len() as u32));
        }
        // Each target synchronizes before returning, so `src` and `table`
        // outlive the kernels that read them.
        for ((w, h), tiles_across, first_output) in targets {
            self.resize_into_tiles(image, &src, (w, h), tiles_across, first_output, &table, out)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn resize_into_tiles<T: TensorElement + DeviceRepr>(
        &self,
        image: &ImageView<'_>,
        src: &CudaSlice<u8>,
        (out_w, out_h): (u32, u32),
        tiles_across: u32,
        first_output: u32,
        table: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        let stream = self.gpu.stream();
        let (in_w, in_h) = (image.width(), image.height());
        let channels = image.format().colour_channels() as u32;
        let source = Plane {
            addr: device_addr(src, stream),
            stride: image.stride() as u64,
            width: in_w,
            height: in_h,
            bpp: image.format().bytes_per_pixel() as u32,
        };
        let horizontal = self.upload_axis(in_w, out_w)?;
        let vertical = self.upload_axis(in_h, out_h)?;

        // (first pass, last pass): a pass is (axis, is_vertical).
        let (first, last) = match self.preprocessor.pillow.passes(in_w, in_h, out_w, out_h) {
            Passes::VerticalThenHorizontal => (Some((&vertical, true)), (&horizontal, false)),
            Passes::HorizontalThenVertical => (Some((&horizontal, false)), (&vertical, true)),
            Passes::Vertical => (None, (&vertical, true)),
            Passes::Horizontal => (None, (&horizontal, false)),
            // Pillow copies; an identity pass is exact (each weight row is
            // a single 1.0 at the centre), so the last pass can do the copy.
            Passes::Copy => (None, (&horizontal, false)),
        };

        let mut intermediate_buf: Option<CudaSlice<u8>> = None;
        let last_source = if let Some((axis, is_vertical)) = first {
            let (w, h) = if is_vertical {
                (in_w, out_h)
            } else {
                (out_w, in_h)
            };
            let buf = stream
                .alloc_zeros::<u8>((w * h * channels) as usize)
                .map_err(driver_error("alloc intermediate"))?;
            let params = NvlmIntermediate {
                pass: pass_params(&source, axis, is_vertical, channels, (w, h), stream),
                dst: device_addr(&buf, stream),
            };
            let f = self
                .gpu
                .function(KernelModule::Preprocess, "resample_to_intermediate")?;
            // SAFETY: the params describe live device buffers of the sizes the
            // kernel indexes (checked on the host above); one stream orders it.
            unsafe {
                stream
                    .launch_builder(&f)
                    .arg(&params)
                    .launch(launch_config(w, h))
            }
            .map_err(driver_error("resample_to_intermediate"))?;
            let plane = Plane {
                addr: params.dst,
                stride: u64::from(w * channels),
                width: w,
                height: h,
                bpp: channels,
            };
            intermediate_buf = Some(buf);
            plane
        } else {
            source
        };
        let (axis, is_vertical) = last;
        let params = NvlmTileWrite {
            pass: pass_params(
                &last_source,
                axis,
                is_vertical,
                channels,
                (out_w, out_h),
                stream,
            ),
            out: device_addr(out, stream),
            table: device_addr(table, stream),
            elem_bytes: T::DTYPE.size_bytes() as u32,
            tile_size: self.preprocessor.config.tile_size,
            tiles_across,
            first_output,
        };
        let f = self
            .gpu
            .function(KernelModule::Preprocess, "resample_to_tiles")?;
        // SAFETY: as above; the tensor holds every tile this target writes.
        unsafe {
            stream
                .launch_builder(&f)
                .arg(&params)
                .launch(launch_config(out_w, out_h))
        }
        .map_err(driver_error("resample_to_tiles"))?;
        // The tables and the intermediate must outlive the queued kernels.
        stream.synchronize().map_err(driver_error("synchronize"))?;
        drop((horizontal, vertical, intermediate_buf));
        Ok(())
    }

    fn upload_axis(&self, in_size: u32, out_size: u32) -> Result<DeviceAxis> {
        let stream = self.gpu.stream();
        let host = AxisCoefficients::bicubic(in_size, out_size);
        Ok(DeviceAxis {
            first: stream
                .clone_htod(&host.first)
                .map_err(driver_error("copy table"))?,
            count: stream
                .clone_htod(&host.count)
                .map_err(driver_error("copy table"))?,
            coeffs: stream
                .clone_htod(&host.coeffs)
                .map_err(driver_error("copy table"))?,
            host,
        })
    }
}

/// A source image on the device: `height` rows of `width` pixels of `bpp` bytes.
#[derive(Clone, Copy)]
struct Plane {
    addr: u64,
    stride: u64,
    width: u32,
    height: u32,
    bpp: u32,
}

fn pass_params(
    src: &Plane,
    axis: &DeviceAxis,
    vertical: bool,
    channels: u32,
    (dst_width, dst_height): (u32, u32),
    stream: &cudarc::driver::CudaStream,
) -> NvlmResamplePass {
    NvlmResamplePass {
        src: src.addr,
        src_stride: src.stride,
        first: device_addr(&axis.first, stream),
        count: device_addr(&axis.count, stream),
        coeffs: device_addr(&axis.coeffs, stream),
        src_width: src.width,
        src_height: src.height,
        src_bpp: src.bpp,
        channels,
        dst_width,
        dst_height,
        taps: axis.host.taps,
        vertical: u32::from(vertical),
    }
}

fn device_addr<T>(slice: &CudaSlice<T>, stream: &cudarc::driver::CudaStream) -> u64 {
    let (addr, _sync) = slice.device_ptr(stream);
    addr
}

fn launch_config(w: u32, h: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (w.div_ceil(BLOCK.0), h.div_ceil(BLOCK.1).min(MAX_GRID_Y), 1),
        block_dim: (BLOCK.0, BLOCK.1, 1),
        shared_mem_bytes: 0,
    }
}
