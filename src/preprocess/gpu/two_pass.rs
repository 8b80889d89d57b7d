//! The host side of v1: per resize target, an optional first pass into a
//! uint8 intermediate and the pass that writes the tiles, each with its own
//! tables.

use super::{Source, Target};
use crate::abi::{NvlmIntermediate, NvlmResamplePass, NvlmTileWrite};
use crate::cuda::driver_error;
use crate::error::{Error, Result};
use crate::preprocess::PixelFormat;
use crate::preprocess::coeffs::AxisCoefficients;
use crate::preprocess::cpu::{Passes, PillowVersion};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, LaunchConfig};
use std::sync::Arc;

/// One v1 resize of an image into one target's tiles, planned on the host
/// (no device involved, so the host emulation runs the same plan): a first
/// pass into a uint8 intermediate when the resize takes two, then the pass
/// that resamples, normalises and writes the tiles.
pub(super) struct TwoPassV1 {
    pub(super) target: Target,
    pub(super) first: Option<V1Pass>,
    pub(super) last: V1Pass,
}

/// One v1 pass: the axis it resamples and the size it makes.
pub(super) struct V1Pass {
    pub(super) axis: AxisCoefficients,
    pub(super) vertical: bool,
    pub(super) size: (u32, u32),
}

/// Where a v1 resize's buffers are on the device; the first pass's tables
/// and the intermediate are 0 for a one-pass resize.
pub(super) struct V1Buffers {
    /// (first, count, coeffs) of each pass's axis table.
    pub(super) first_tables: [u64; 3],
    pub(super) last_tables: [u64; 3],
    pub(super) intermediate: u64,
    pub(super) out: u64,
    /// The normalisation table, `[3][256]` of the tensor's dtype.
    pub(super) table: u64,
}

/// The params of a v1 resize's launches, in launch order.
pub(super) struct V1Launches {
    pub(super) intermediate: Option<NvlmIntermediate>,
    pub(super) tiles: NvlmTileWrite,
}

/// A v1 pass's axis (true: vertical) and the size it makes.
type PassShape = (bool, (u32, u32));

/// The passes v1 runs to resize `in_w`x`in_h` to `out_w`x`out_h`, in
/// Pillow's order: the first, when there are two, and the last.
fn pass_shapes(
    pillow: PillowVersion,
    (in_w, in_h): (u32, u32),
    (out_w, out_h): (u32, u32),
) -> (Option<PassShape>, PassShape) {
    let out = (out_w, out_h);
    match pillow.passes(in_w, in_h, out_w, out_h) {
        Passes::VerticalThenHorizontal => (Some((true, (in_w, out_h))), (false, out)),
        Passes::HorizontalThenVertical => (Some((false, (out_w, in_h))), (true, out)),
        Passes::Vertical => (None, (true, out)),
        Passes::Horizontal => (None, (false, out)),
        // Pillow copies; an identity pass is exact (each weight row is
        // a single 1.0 at the centre), so the last pass can do the copy.
        Passes::Copy => (None, (false, out)),
    }
}

impl TwoPassV1 {
    pub(super) fn new(
        pillow: PillowVersion,
        (in_w, in_h): (u32, u32),
        target: Target,
    ) -> TwoPassV1 {
        let (out_w, out_h) = target.size;
        let pass = |(vertical, size): PassShape| V1Pass {
            axis: if vertical {
                AxisCoefficients::bicubic(in_h, out_h)
            } else {
                AxisCoefficients::bicubic(in_w, out_w)
            },
            vertical,
            size,
        };
        let (first, last) = pass_shapes(pillow, (in_w, in_h), target.size);
        TwoPassV1 {
            target,
            first: first.map(pass),
            last: pass(last),
        }
    }

    /// The first pass's launch, if any, and the last's.
    pub(super) fn launch_configs(&self) -> Result<(Option<LaunchConfig>, LaunchConfig)> {
        let first = self
            .first
            .as_ref()
            .map(|p| launch_config(p.size))
            .transpose()?;
        Ok((first, launch_config(self.last.size)?))
    }

    /// The intermediate's bytes (colour channels only), for a two-pass resize.
    pub(super) fn intermediate_len(&self, format: PixelFormat) -> Option<usize> {
        self.first
            .as_ref()
            .map(|pass| pass.size.0 as usize * pass.size.1 as usize * format.colour_channels())
    }

    pub(super) fn params(
        &self,
        image: &Source,
        at: &V1Buffers,
        elem_bytes: u32,
        tile_size: u32,
    ) -> V1Launches {
        let channels = image.format.colour_channels() as u32;
        let source = Plane {
            addr: image.addr,
            stride: image.stride as u64,
            width: image.width,
            height: image.height,
            bpp: image.format.bytes_per_pixel() as u32,
        };
        let intermediate = self.first.as_ref().map(|pass| NvlmIntermediate {
            pass: pass.params(&source, at.first_tables, channels),
            dst: at.intermediate,
        });
        let last_source = match &self.first {
            Some(pass) => Plane {
                addr: at.intermediate,
                stride: u64::from(pass.size.0 * channels),
                width: pass.size.0,
                height: pass.size.1,
                bpp: channels,
            },
            None => source,
        };
        V1Launches {
            intermediate,
            tiles: NvlmTileWrite {
                pass: self.last.params(&last_source, at.last_tables, channels),
                out: at.out,
                table: at.table,
                elem_bytes,
                tile_size,
                tiles_across: self.target.tiles_across,
                first_output: self.target.first_output,
            },
        }
    }
}

impl V1Pass {
    pub(super) fn params(
        &self,
        src: &Plane,
        [first, count, coeffs]: [u64; 3],
        channels: u32,
    ) -> NvlmResamplePass {
        NvlmResamplePass {
            src: src.addr,
            src_stride: src.stride,
            first,
            count,
            coeffs,
            src_width: src.width,
            src_height: src.height,
            src_bpp: src.bpp,
            channels,
            dst_width: self.size.0,
            dst_height: self.size.1,
            taps: self.axis.taps,
            vertical: u32::from(self.vertical),
        }
    }
}

/// The device copy of one axis table (v1).
pub(super) struct DeviceAxis {
    pub(super) first: CudaSlice<u32>,
    pub(super) count: CudaSlice<u32>,
    pub(super) coeffs: CudaSlice<i32>,
}

impl DeviceAxis {
    pub(super) fn upload(axis: &AxisCoefficients, stream: &Arc<CudaStream>) -> Result<DeviceAxis> {
        let copy = driver_error("copy table");
        Ok(DeviceAxis {
            first: stream.clone_htod(&axis.first).map_err(&copy)?,
            count: stream.clone_htod(&axis.count).map_err(&copy)?,
            coeffs: stream.clone_htod(&axis.coeffs).map_err(&copy)?,
        })
    }

    pub(super) fn addresses(&self, stream: &CudaStream) -> [u64; 3] {
        [
            device_addr(&self.first, stream),
            device_addr(&self.count, stream),
            device_addr(&self.coeffs, stream),
        ]
    }
}

pub(super) const BLOCK: (u32, u32) = (32, 8);
/// CUDA's cap on gridDim.y. A v1 pass has at most 163 840 rows (20 480
/// rows of blocks) within the plan's limits: a last pass makes at most 64
/// tiles' rows of 2 048, and a horizontal first pass keeps the input's
/// height, which Pillow 12 does only for `in_h <= 100 in_w` (so
/// `in_h^2 <= 100 MAX_PIXELS`) or `out_h >= in_h`, and Pillow 13 only for
/// `in_h - out_h <= 2 (in_w - out_w)`. The test below checks the extremes.
const MAX_GRID_Y: u32 = 65535;

/// The launch of a v1 pass that makes `w`x`h` pixels: one thread each.
fn launch_config((w, h): (u32, u32)) -> Result<LaunchConfig> {
    let rows_of_blocks = h.div_ceil(BLOCK.1);
    if rows_of_blocks > MAX_GRID_Y {
        return Err(Error::InvalidShape(format!(
            "a v1 pass of {h} rows needs {rows_of_blocks} rows of blocks, past CUDA's {MAX_GRID_Y}"
        )));
    }
    Ok(LaunchConfig {
        grid_dim: (w.div_ceil(BLOCK.0), rows_of_blocks, 1),
        block_dim: (BLOCK.0, BLOCK.1, 1),
        shared_mem_bytes: 0,
    })
}

/// A pass's source: `height` rows of `width` pixels of `bpp` bytes.
#[derive(Clone, Copy)]
pub(super) struct Plane {
    pub(super) addr: u64,
    pub(super) stride: u64,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) bpp: u32,
}

/// The address of a buffer only this stream uses (v1's tables and
/// intermediate), so no event needs recording after the launch.
pub(super) fn device_addr<T>(slice: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (addr, _sync) = slice.device_ptr(stream);
    addr
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::{
        DhrConfig, MAX_PIXELS, MAX_SIDE, MAX_TILE_SIZE, MAX_TILES_LIMIT, TilePlan,
    };

    /// The images with the most rows a v1 pass can take: the tallest for
    /// each width (up to MAX_SIDE and MAX_PIXELS), around the widths where
    /// Pillow 12 and 13 change order, with the largest tiles and tile
    /// counts, keep every pass within gridDim.y's cap.
    #[test]
    fn every_pass_within_the_plan_limits_fits_the_grid() {
        let mut widths: Vec<u32> = (0..=20).map(|e| 1 << e).collect();
        // Pillow 12 goes horizontal first up to in_h = 100 in_w, so at
        // MAX_PIXELS its tallest such input is 1638 wide; Pillow 13's is
        // near 2 in_w + the tallest output.
        widths.extend([1637, 1638, 1639, 1640, 2047, 2049, 40_000, 65_535]);
        let mut tallest_pass = 0;
        for in_w in widths {
            let in_h = (MAX_PIXELS / u64::from(in_w)).min(u64::from(MAX_SIDE)) as u32;
            for (tile_size, max_tiles) in [(MAX_TILE_SIZE, MAX_TILES_LIMIT), (448, 12), (32, 64)] {
                let config = DhrConfig {
                    tile_size,
                    max_tiles,
                    ..DhrConfig::NVLM_D
                };
                let plan = TilePlan::new(in_w, in_h, &config).unwrap();
                for pillow in [PillowVersion::V12, PillowVersion::V13] {
                    for target in Target::of(&plan) {
                        let (first, last) = pass_shapes(pillow, (in_w, in_h), target.size);
                        for (_, size) in first.into_iter().chain([last]) {
                            tallest_pass = tallest_pass.max(size.1);
                            if let Err(e) = launch_config(size) {
                                panic!("{in_w}x{in_h} to {:?} ({pillow:?}): {e}", target.size);
                            }
                        }
                    }
                }
            }
        }
        // The extremes reached what the bound on MAX_GRID_Y says.
        assert!(tallest_pass > 131_072, "tallest pass {tallest_pass} rows");
        // And a pass past the grid's rows would be refused, not launched.
        let rows = MAX_GRID_Y * BLOCK.1;
        assert!(launch_config((1, rows)).is_ok());
        match launch_config((1, rows + 1)) {
            Err(Error::InvalidShape(m)) => assert!(m.contains("past CUDA's 65535"), "{m}"),
            other => panic!("a pass of {} rows gave {other:?}", rows + 1),
        }
    }
}
