//! The host side of the one-launch kernels (v2 to v4): per image shape,
//! every coefficient table in one blob, each target's pass order and
//! shared-memory layout, and the launch parameters.

use super::{PreprocessKernel, Target};
use crate::abi::{NVLM_FUSED_PREPROCESS_THREADS, NvlmFusedPreprocess, NvlmFusedTarget};
use crate::dtype::TensorElement;
use crate::preprocess::coeffs::AxisCoefficients;
use crate::preprocess::cpu::{Passes, PillowVersion, normalization_tables};
use crate::preprocess::{PixelFormat, Preprocessor, TilePlan};
use cudarc::driver::LaunchConfig;

/// Side of a v2–v4 patch in output pixels (kernels/preprocess.cu).
pub(super) const PATCH: u32 = 32;
/// v2's shared memory per block: the staged intermediate of one chunk of a
/// patch's window (256 samples of RGB, 768 of grey).
pub(super) const SLAB_BYTES: u32 = 24 * 1024;
/// v3's shared memory per block, the slab and the staged input: two blocks
/// (as many as the registers allow) fit an SM of sm_80 (164 KiB) or sm_90.
pub(super) const STAGED_SMEM_BYTES: u32 = 64 * 1024;

/// Bytes after the last staged row, for v4's first pass. Its last word
/// read for a window starts at a multiple of 4 no further than the window's
/// end + 3, so at most at `round_up4(window)` ≤ the pitch: it ends at most 4
/// bytes past its row. Those bytes are the next row's, or for the last row
/// this slack's (8, a word to spare); all meet zero weights.
pub(super) const STAGE_READ_SLACK: u64 = 8;

/// How v3 lays out one target's chunk in shared memory (the `chunk_samples`
/// and `stage_*` fields of `NvlmFusedTarget`; all zero: v2's first pass).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct StagedLayout {
    pub(super) chunk_samples: u32,
    pub(super) stage_rows: u32,
    pub(super) stage_pitch: u32,
    pub(super) stage_offset: u32,
}

impl StagedLayout {
    /// The largest chunk whose slab and staged input fit in `budget` bytes.
    /// Horizontal first, the staged rows are the chunk's samples (the first
    /// pass's lanes) and the pitch an odd number of words, so the lanes'
    /// byte loads fall in 32 different banks; so is the slab's row pitch,
    /// `32 C + 4` bytes, which the kernel computes the same way. Vertical
    /// first, the staged rows are the patch's widest window along F and
    /// the lanes read along a row.
    pub(super) fn plan(axes: &FusedAxes, channels: u32, budget: u32) -> StagedLayout {
        let window_f = widest_window(&axes.first);
        let window_s = widest_window(&axes.second);
        let layout = |n: u32| {
            if axes.vertical_first {
                StagedLayout {
                    chunk_samples: n,
                    stage_rows: window_f,
                    stage_pitch: n.next_multiple_of(4),
                    stage_offset: (n * PATCH * channels).next_multiple_of(16),
                }
            } else {
                let mut pitch = window_f.next_multiple_of(4);
                if (pitch / 4).is_multiple_of(2) {
                    pitch += 4;
                }
                StagedLayout {
                    chunk_samples: n,
                    stage_rows: n,
                    stage_pitch: pitch,
                    stage_offset: (n * (PATCH * channels + 4)).next_multiple_of(16),
                }
            }
        };
        // Per sample each order needs a slab row and a staged row of the
        // window, give or take the padding: start there and shrink to fit.
        let per_sample = u64::from(channels) * u64::from(PATCH + 4 + window_f);
        let mut n = (u64::from(budget) / per_sample).min(u64::from(window_s)) as u32;
        while n > 0 && layout(n).bytes(channels) > u64::from(budget) {
            n -= 1;
        }
        if n == 0 {
            return StagedLayout::default();
        }
        layout(n)
    }

    /// Shared memory the layout uses, with 8 bytes after the staged rows
    /// that v4's word reads may touch (times zero weights).
    pub(super) fn bytes(&self, channels: u32) -> u64 {
        u64::from(self.stage_offset)
            + u64::from(channels * self.stage_rows) * u64::from(self.stage_pitch)
            + STAGE_READ_SLACK
    }
}

/// The most input samples the outputs of one 32-output patch read along
/// `axis` (first and end are monotone in the output).
pub(super) fn widest_window(axis: &AxisCoefficients) -> u32 {
    (0..axis.out_size)
        .step_by(PATCH as usize)
        .map(|o0| {
            let last = (o0 + PATCH).min(axis.out_size) as usize - 1;
            axis.first[last] + axis.count[last] - axis.first[o0 as usize]
        })
        .max()
        .unwrap_or(0)
}

/// The host side of one v2, v3 or v4 launch: every table in one blob of 32-bit
/// words, and the parameters with addresses as byte offsets into the blob
/// (the image and output addresses zero) until [`FusedLaunch::relocated`].
pub(super) struct FusedLaunch {
    pub(super) entry: &'static str,
    pub(super) blob: Vec<u32>,
    pub(super) params: NvlmFusedPreprocess,
    pub(super) blocks: u32,
}

impl FusedLaunch {
    /// `kernel`: [`PreprocessKernel::FusedV2`], [`PreprocessKernel::StagedV3`]
    /// or [`PreprocessKernel::StagedDp4aV4`].
    pub(super) fn new<T: TensorElement>(
        kernel: PreprocessKernel,
        pre: &Preprocessor,
        plan: &TilePlan,
        (width, height): (u32, u32),
        stride: usize,
        format: PixelFormat,
    ) -> FusedLaunch {
        let (staged, word_taps, entry) = match kernel {
            PreprocessKernel::FusedV2 => (false, false, "preprocess_fused"),
            PreprocessKernel::StagedV3 => (true, false, "preprocess_staged"),
            PreprocessKernel::StagedDp4aV4 => (true, true, "preprocess_staged_dp4a"),
            PreprocessKernel::TwoPassV1 => unreachable!("v1 is not a fused launch"),
        };
        let tables = normalization_tables::<T>(pre.normalization.mean, pre.normalization.std);
        let table_bytes: Vec<u8> = tables
            .iter()
            .flat_map(|t| bytemuck::cast_slice::<T, u8>(t).iter().copied())
            .collect();
        let mut blob = Blob::default();
        let table = blob.push(&table_bytes);
        let mut params = NvlmFusedPreprocess {
            table,
            src_stride: stride as u64,
            src_bpp: format.bytes_per_pixel() as u32,
            channels: format.colour_channels() as u32,
            elem_bytes: T::DTYPE.size_bytes() as u32,
            tile_size: plan.tile_size,
            smem_bytes: if staged {
                STAGED_SMEM_BYTES
            } else {
                SLAB_BYTES
            },
            ..Default::default()
        };
        let mut blocks = 0u32;
        let targets = Target::of(plan);
        params.num_targets = targets.len() as u32;
        for (slot, target) in params.target.iter_mut().zip(&targets) {
            let (out_w, out_h) = target.size;
            let axes = FusedAxes::new(pre.pillow, (width, height), target.size);
            let stage = if staged {
                StagedLayout::plan(&axes, params.channels, STAGED_SMEM_BYTES)
            } else {
                StagedLayout::default()
            };
            // v4's staged horizontal-first pass reads its weights as byte
            // planes (kernels/preprocess.cu, first_pass_words).
            let coeffs_f = if word_taps && stage.chunk_samples != 0 && !axes.vertical_first {
                byte_planes(&axes.first)
            } else {
                tap_major(&axes.first)
            };
            *slot = NvlmFusedTarget {
                first_f: blob.push_words(&axes.first.first),
                count_f: blob.push_words(&axes.first.count),
                coeffs_f: blob.push_words(&coeffs_f),
                first_s: blob.push_words(&axes.second.first),
                count_s: blob.push_words(&axes.second.count),
                coeffs_s: blob.push_words(bytemuck::cast_slice(&axes.second.coeffs)),
                taps_f: axes.first.taps,
                taps_s: axes.second.taps,
                out_width: out_w,
                out_height: out_h,
                vertical_first: u32::from(axes.vertical_first),
                first_block: blocks,
                tiles_across: target.tiles_across,
                first_output: target.first_output,
                chunk_samples: stage.chunk_samples,
                stage_rows: stage.stage_rows,
                stage_pitch: stage.stage_pitch,
                stage_offset: stage.stage_offset,
            };
            blocks += out_w.div_ceil(PATCH) * out_h.div_ceil(PATCH);
        }
        FusedLaunch {
            entry,
            blob: blob.words,
            params,
            blocks,
        }
    }

    /// The size of the tables on the device.
    pub(super) fn table_bytes(&self) -> usize {
        self.blob.len() * size_of::<u32>()
    }

    /// One block of 256 threads per patch.
    pub(super) fn config(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.blocks, 1, 1),
            block_dim: (NVLM_FUSED_PREPROCESS_THREADS, 1, 1),
            shared_mem_bytes: self.params.smem_bytes,
        }
    }

    /// The parameters with the blob's offsets turned into addresses.
    pub(super) fn relocated(&self, blob: u64, src: u64, out: u64) -> NvlmFusedPreprocess {
        let mut p = self.params;
        p.src = src;
        p.out = out;
        p.table += blob;
        for t in p.target.iter_mut().take(p.num_targets as usize) {
            for field in [
                &mut t.first_f,
                &mut t.count_f,
                &mut t.coeffs_f,
                &mut t.first_s,
                &mut t.count_s,
                &mut t.coeffs_s,
            ] {
                *field += blob;
            }
        }
        p
    }
}

/// `axis.coeffs` as v4's first pass reads them: per output, its taps in
/// groups of four (past its count, zero weights), each group as four words
/// where word `j` holds byte `j` of the four weights (lowest tap in the
/// lowest byte), at `[(4 group + j) * out_size + output]`: a warp's lanes
/// share one output, so each load is one broadcast.
pub(super) fn byte_planes(axis: &AxisCoefficients) -> Vec<u32> {
    let (taps, out) = (axis.taps as usize, axis.out_size as usize);
    let groups = taps.div_ceil(4);
    let mut words = vec![0u32; 4 * groups * out];
    for (o, row) in axis.coeffs.chunks_exact(taps).enumerate() {
        for (t, &k) in row.iter().enumerate().take(axis.count[o] as usize) {
            let (group, lane) = (t / 4, t % 4);
            for j in 0..4 {
                let byte = (k as u32 >> (8 * j)) & 0xFF;
                words[(4 * group + j) * out + o] |= byte << (8 * lane);
            }
        }
    }
    words
}

/// `axis.coeffs` transposed to `[taps][out_size]`, as 32-bit words: the
/// first pass's threads take consecutive outputs, so each tap's weights are
/// one contiguous read.
pub(super) fn tap_major(axis: &AxisCoefficients) -> Vec<u32> {
    let (taps, out) = (axis.taps as usize, axis.out_size as usize);
    let mut words = vec![0u32; taps * out];
    for (o, row) in axis.coeffs.chunks_exact(taps).enumerate() {
        for (t, &k) in row.iter().enumerate() {
            words[t * out + o] = k as u32;
        }
    }
    words
}

/// The tables of one target for v2: the first pass's axis, the second's,
/// and which is vertical. A pass Pillow skips becomes an identity table.
pub(super) struct FusedAxes {
    pub(super) first: AxisCoefficients,
    pub(super) second: AxisCoefficients,
    pub(super) vertical_first: bool,
}

impl FusedAxes {
    pub(super) fn new(
        pillow: PillowVersion,
        (in_w, in_h): (u32, u32),
        (out_w, out_h): (u32, u32),
    ) -> Self {
        let horizontal = || AxisCoefficients::bicubic(in_w, out_w);
        let vertical = || AxisCoefficients::bicubic(in_h, out_h);
        let (first, second, vertical_first) = match pillow.passes(in_w, in_h, out_w, out_h) {
            Passes::HorizontalThenVertical => (horizontal(), vertical(), false),
            Passes::VerticalThenHorizontal => (vertical(), horizontal(), true),
            Passes::Horizontal => (AxisCoefficients::identity(in_h), horizontal(), true),
            Passes::Vertical => (AxisCoefficients::identity(in_w), vertical(), false),
            Passes::Copy => (
                AxisCoefficients::identity(in_w),
                AxisCoefficients::identity(in_h),
                false,
            ),
        };
        FusedAxes {
            first,
            second,
            vertical_first,
        }
    }
}

/// 32-bit words, each array starting on a 16-byte boundary.
#[derive(Default)]
pub(super) struct Blob {
    pub(super) words: Vec<u32>,
}

impl Blob {
    /// Appends `words`; returns their byte offset.
    pub(super) fn push_words(&mut self, words: &[u32]) -> u64 {
        let offset = (self.words.len() * 4) as u64;
        self.words.extend_from_slice(words);
        self.words.resize(self.words.len().next_multiple_of(4), 0);
        offset
    }

    /// Appends `bytes` (zero-padded to whole words); returns their byte offset.
    pub(super) fn push(&mut self, bytes: &[u8]) -> u64 {
        let words: Vec<u32> = bytes
            .chunks(4)
            .map(|c| {
                let mut w = [0u8; 4];
                w[..c.len()].copy_from_slice(c);
                u32::from_le_bytes(w)
            })
            .collect();
        self.push_words(&words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::DhrConfig;

    /// v4's byte planes give back every tap's weight, Pillow's int32 from
    /// its four bytes, and zeros past each output's count.
    #[test]
    fn byte_planes_hold_each_weight_and_zeros_past_the_count() {
        for (input, output) in [(4032, 1344), (3024, 448), (640, 1344), (7, 3)] {
            let axis = AxisCoefficients::bicubic(input, output);
            let words = byte_planes(&axis);
            let (taps, out) = (axis.taps as usize, axis.out_size as usize);
            assert_eq!(words.len(), taps.next_multiple_of(4) * out);
            for f in 0..out {
                for t in 0..taps.next_multiple_of(4) {
                    let (group, lane) = (t / 4, t % 4);
                    let weight = (0..4).fold(0u32, |w, j| {
                        w | ((words[(4 * group + j) * out + f] >> (8 * lane)) & 0xFF) << (8 * j)
                    }) as i32;
                    let want = if t < axis.count[f] as usize {
                        axis.coeffs[f * taps + t]
                    } else {
                        0
                    };
                    assert_eq!(weight, want, "{input} -> {output}: output {f}, tap {t}");
                }
            }
        }
    }

    #[test]
    fn fused_tables_are_laid_out_on_16_byte_boundaries() {
        let pre = Preprocessor::default();
        let plan = pre.plan(4032, 3024).unwrap();
        let launch = FusedLaunch::new::<f32>(
            PreprocessKernel::FusedV2,
            &pre,
            &plan,
            (4032, 3024),
            4032 * 3,
            PixelFormat::Rgb8,
        );
        let p = launch.params;
        assert_eq!(p.num_targets, 2);
        assert_eq!(p.target[1].first_block, 42 * 28); // 1344x896 in 32x32 patches
        assert_eq!(launch.blocks, 42 * 28 + 14 * 14);
        assert_eq!(p.table, 0);
        for t in &p.target {
            for offset in [
                t.first_f, t.count_f, t.coeffs_f, t.first_s, t.count_s, t.coeffs_s,
            ] {
                assert_eq!(offset % 16, 0);
                assert!(offset < (launch.blob.len() * 4) as u64);
            }
            assert_eq!(t.vertical_first, 0, "V12, landscape: horizontal first");
        }
    }

    /// v3's layout on the bench's sizes and on extreme strips: within the
    /// budget, chunks no longer than the widest window, staged planes that
    /// hold a chunk's input, the odd-word pitches the banks need, and the
    /// chunk counts PERF.md's prediction assumed for 4032x3024.
    #[test]
    fn staged_layouts_fit_their_budget() {
        let cases = [
            (4032, 3024, 448),
            (3024, 4032, 448),
            (1920, 1080, 448),
            (640, 480, 448),
            (60000, 4, 32),
            (4, 60000, 32),
            (1 << 20, 256, 448),
        ];
        let mut unstaged = 0;
        for (w, h, tile_size) in cases {
            for pillow in [PillowVersion::V12, PillowVersion::V13] {
                for format in [PixelFormat::Rgb8, PixelFormat::L8] {
                    let pre = Preprocessor {
                        config: DhrConfig {
                            tile_size,
                            ..DhrConfig::NVLM_D
                        },
                        pillow,
                        ..Default::default()
                    };
                    let plan = pre.plan(w, h).unwrap();
                    let stride = w as usize * format.bytes_per_pixel();
                    let launch = FusedLaunch::new::<f32>(
                        PreprocessKernel::StagedV3,
                        &pre,
                        &plan,
                        (w, h),
                        stride,
                        format,
                    );
                    let c = format.colour_channels() as u32;
                    assert_eq!(launch.config().shared_mem_bytes, STAGED_SMEM_BYTES);
                    for (target, t) in Target::of(&plan).iter().zip(&launch.params.target) {
                        let what = format!("{w}x{h} {pillow:?} {format:?} -> {:?}", target.size);
                        let layout = StagedLayout {
                            chunk_samples: t.chunk_samples,
                            stage_rows: t.stage_rows,
                            stage_pitch: t.stage_pitch,
                            stage_offset: t.stage_offset,
                        };
                        if t.chunk_samples == 0 {
                            assert_eq!(layout, StagedLayout::default(), "{what}");
                            unstaged += 1;
                            continue;
                        }
                        let axes = FusedAxes::new(pillow, (w, h), target.size);
                        let (window_f, window_s) =
                            (widest_window(&axes.first), widest_window(&axes.second));
                        assert!(layout.bytes(c) <= u64::from(STAGED_SMEM_BYTES), "{what}");
                        assert!(t.chunk_samples <= window_s, "{what}");
                        let slab = if axes.vertical_first {
                            assert_eq!(t.stage_rows, window_f, "{what}");
                            assert!(t.stage_pitch >= t.chunk_samples, "{what}");
                            t.chunk_samples * PATCH * c
                        } else {
                            assert_eq!(t.stage_rows, t.chunk_samples, "{what}");
                            assert!(t.stage_pitch >= window_f, "{what}");
                            assert_eq!(t.stage_pitch % 8, 4, "{what}: an odd number of words");
                            t.chunk_samples * (PATCH * c + 4)
                        };
                        assert!(t.stage_offset >= slab && t.stage_offset % 16 == 0, "{what}");
                        if (w, h, pillow, format)
                            == (4032, 3024, PillowVersion::V12, PixelFormat::Rgb8)
                        {
                            let chunks = window_s.div_ceil(t.chunk_samples);
                            let want = if target.size == (448, 448) { 4 } else { 1 };
                            assert_eq!(chunks, want, "{what}");
                        }
                    }
                }
            }
        }
        assert!(unstaged > 0, "no case was too wide to stage");
    }
}
