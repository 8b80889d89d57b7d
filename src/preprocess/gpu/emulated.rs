//! Without a GPU, every kernel version is checked against the CPU
//! reference: a line-for-line Rust model of v2's `preprocess_fused` run
//! on the launch's blob and params (the tables, the pass order, the
//! identity tables, the patch and block layout, the chunking), and the
//! kernels' own source (v1 to v4) compiled for the CPU with the address
//! sanitizer (tests/host_emulation/preprocess_on_cpu.cpp: one thread
//! per CUDA thread, __syncthreads as a barrier), which executes their
//! indexing and shared-memory layout, and with the thread sanitizer,
//! which checks their barriers. v1 runs the host's own plan of its
//! launches ([`TwoPassV1`]), so its pass order and intermediate are
//! checked with it.
use super::fused::{FusedAxes, PATCH, widest_window};
use super::*;
use crate::abi::{
    NVLM_FUSED_PREPROCESS_THREADS, NvlmFusedPreprocess, NvlmFusedTarget, NvlmIntermediate,
    NvlmResamplePass, NvlmTileWrite,
};
use crate::host_emulation::{self, LaunchFile, Memory};
use crate::preprocess::DhrConfig;
use crate::preprocess::coeffs::AxisCoefficients;
use crate::preprocess::cpu::{Passes, PillowVersion};
use std::mem::offset_of;
use std::path::{Path, PathBuf};

const GROUP: u32 = 4;
const ROUNDING: i32 = 1 << 21;

fn clip8(acc: i32) -> u8 {
    (acc >> 22).clamp(0, 255) as u8
}

/// `preprocess_fused` for every block, threads run one after another
/// between barriers. The slab is poisoned before each chunk so a read
/// of an entry the first pass did not write shows up as a wrong byte.
/// Returns the most chunks any patch took, horizontal-first targets
/// then vertical-first ones.
fn model(launch: &FusedLaunch, src: &[u8], out: &mut [f32]) -> [u32; 2] {
    let mut most_chunks = [0; 2];
    let p = &launch.params;
    let word = |offset: u64, i: u64| launch.blob[(offset / 4 + i) as usize];
    let c_n = p.channels as usize;
    let table: Vec<f32> = (0..768u64)
        .map(|i| f32::from_bits(word(p.table, i)))
        .collect();
    let mut slab = vec![0u8; p.smem_bytes as usize];
    for block in 0..launch.blocks {
        let second = p.num_targets == 2 && block >= p.target[1].first_block;
        let t = if second { p.target[1] } else { p.target[0] };
        let vf = t.vertical_first != 0;
        let patch = block - t.first_block;
        let across = t.out_width.div_ceil(PATCH);
        let (x0, y0) = ((patch % across) * PATCH, (patch / across) * PATCH);
        let (f0, s0) = if vf { (y0, x0) } else { (x0, y0) };
        let nf = PATCH.min(if vf { t.out_height } else { t.out_width } - f0);
        let ns = PATCH.min(if vf { t.out_width } else { t.out_height } - s0);
        let first_s = |s: u32| word(t.first_s, s.into());
        let count_s = |s: u32| word(t.count_s, s.into());
        let w0 = first_s(s0);
        let w1 = first_s(s0 + ns - 1) + count_s(s0 + ns - 1);
        let rows = p.smem_bytes / (PATCH * p.channels);
        let index = |s_local: u32, f_local: u32| {
            (if vf {
                f_local * rows + s_local
            } else {
                s_local * PATCH + f_local
            }) as usize
                * c_n
        };
        let mut acc = vec![[[ROUNDING; 3]; GROUP as usize]; NVLM_FUSED_PREPROCESS_THREADS as usize];
        let chunks = &mut most_chunks[usize::from(vf)];
        *chunks = (*chunks).max((w1 - w0).div_ceil(rows));
        let mut c0 = w0;
        while c0 < w1 {
            let n = rows.min(w1 - c0);
            slab.fill(0xA5);
            for tid in 0..NVLM_FUSED_PREPROCESS_THREADS {
                let mut i = tid;
                while i < n * PATCH {
                    let (f_local, s_local) = if vf {
                        (i / n, i % n)
                    } else {
                        (i % PATCH, i / PATCH)
                    };
                    i += NVLM_FUSED_PREPROCESS_THREADS;
                    if f_local >= nf {
                        continue;
                    }
                    let (f, s) = (f0 + f_local, c0 + s_local);
                    let start = word(t.first_f, f.into());
                    let mut a = [ROUNDING; 3];
                    for tap in 0..word(t.count_f, f.into()) {
                        let out_f = if vf { t.out_height } else { t.out_width };
                        let w = word(t.coeffs_f, u64::from(tap) * u64::from(out_f) + u64::from(f))
                            as i32;
                        let (row, col) = if vf {
                            (start + tap, s)
                        } else {
                            (s, start + tap)
                        };
                        let px = row as usize * p.src_stride as usize + (col * p.src_bpp) as usize;
                        for c in 0..c_n {
                            a[c] += i32::from(src[px + c]) * w;
                        }
                    }
                    for c in 0..c_n {
                        slab[index(s_local, f_local) + c] = clip8(a[c]);
                    }
                }
            }
            for tid in 0..NVLM_FUSED_PREPROCESS_THREADS {
                let (x, y) = (x0 + (tid % 8) * GROUP, y0 + tid / 8);
                if y >= t.out_height {
                    continue;
                }
                for j in 0..GROUP {
                    if x + j >= t.out_width {
                        continue;
                    }
                    let (s, f_local) = if vf { (x + j, y - y0) } else { (y, x + j - x0) };
                    let fs = first_s(s);
                    for r in fs.max(c0)..(fs + count_s(s)).min(c0 + n) {
                        let w = word(
                            t.coeffs_s,
                            u64::from(s) * u64::from(t.taps_s) + u64::from(r - fs),
                        ) as i32;
                        for c in 0..c_n {
                            acc[tid as usize][j as usize][c] +=
                                i32::from(slab[index(r - c0, f_local) + c]) * w;
                        }
                    }
                }
            }
            c0 += rows;
        }
        let ts = p.tile_size;
        for tid in 0..NVLM_FUSED_PREPROCESS_THREADS {
            let (x, y) = (x0 + (tid % 8) * GROUP, y0 + tid / 8);
            for j in 0..GROUP {
                if y >= t.out_height || x + j >= t.out_width {
                    continue;
                }
                let tile = t.first_output + (y / ts) * t.tiles_across + (x + j) / ts;
                let within = (y % ts) * ts + (x + j) % ts;
                for c in 0..3 {
                    let u = clip8(acc[tid as usize][j as usize][c.min(c_n - 1)]);
                    let at = ((tile * 3 + c as u32) * ts * ts + within) as usize;
                    out[at] = table[c * 256 + usize::from(u)];
                }
            }
        }
    }
    most_chunks
}

/// Runs the kernel source on the CPU (`exe`) with every output byte
/// poisoned first; returns the output tensor's bytes.
fn emulate(exe: &Path, launch: &FusedLaunch, image: &[u8], out_bytes: usize) -> Vec<u8> {
    let mut memory = Memory::default();
    let blob = memory.put(&launch.blob);
    let src = memory.put(image);
    let out = memory.put(&vec![0xFFu8; out_bytes]);
    let params = launch.relocated(blob, src, out);
    let target = |i: usize, field: usize| {
        offset_of!(NvlmFusedPreprocess, target) + i * size_of::<NvlmFusedTarget>() + field
    };
    let mut pointers = vec![
        offset_of!(NvlmFusedPreprocess, src),
        offset_of!(NvlmFusedPreprocess, out),
        offset_of!(NvlmFusedPreprocess, table),
    ];
    for i in 0..2 {
        pointers.extend(
            [
                offset_of!(NvlmFusedTarget, first_f),
                offset_of!(NvlmFusedTarget, count_f),
                offset_of!(NvlmFusedTarget, coeffs_f),
                offset_of!(NvlmFusedTarget, first_s),
                offset_of!(NvlmFusedTarget, count_s),
                offset_of!(NvlmFusedTarget, coeffs_s),
            ]
            .map(|field| target(i, field)),
        );
    }
    let file = LaunchFile {
        kernel: launch.entry,
        config: launch.config(),
        // SAFETY: abi.h's structs have no padding.
        params: unsafe { host_emulation::param_bytes(&params) },
        pointers: &pointers,
        maps: &[],
        memory: &memory,
    }
    .bytes();
    Memory::get(&host_emulation::run(exe, &file), out, out_bytes)
}

/// The largest images v1's source runs for on the CPU, in f32 and in
/// bf16. v1 runs a block per 32x8 pixels of each pass, and the emulation
/// pays a barrier of 256 threads per block: the multi-megapixel strips
/// that make v2 and v3 chunk took 11-17 s each (v1 has no chunking),
/// and bf16 changes v1's stores only.
const V1_F32_PIXELS: u64 = 1 << 20;
const V1_BF16_PIXELS: u64 = 1 << 17;

/// Runs v1's kernel source on the CPU (`exe`) as `run_v1` launches it:
/// target after target, each [`TwoPassV1`]'s launches in order, the
/// output and every intermediate poisoned first. Returns the output
/// tensor's bytes.
fn emulate_v1<T: TensorElement + bytemuck::Pod>(
    exe: &Path,
    pre: &Preprocessor,
    plan: &TilePlan,
    image: &ImageView,
    out_len: usize,
) -> Vec<u8> {
    let mut memory = Memory::default();
    let n = pre.normalization;
    let table = memory.put(&normalization_tables::<T>(n.mean, n.std).concat());
    let source = Source {
        addr: memory.put(image.data()),
        width: image.width(),
        height: image.height(),
        stride: image.stride(),
        format: image.format(),
    };
    let out_bytes = out_len * size_of::<T>();
    let out = memory.put(&vec![0xFFu8; out_bytes]);
    for target in Target::of(plan) {
        let resize = TwoPassV1::new(pre.pillow, (source.width, source.height), target);
        let (intermediate_config, tiles_config) = resize.launch_configs().unwrap();
        let mut tables = |axis: &AxisCoefficients| {
            [
                memory.put(&axis.first),
                memory.put(&axis.count),
                memory.put(&axis.coeffs),
            ]
        };
        let first_tables = resize.first.as_ref().map_or([0; 3], |p| tables(&p.axis));
        let last_tables = tables(&resize.last.axis);
        let intermediate = resize
            .intermediate_len(source.format)
            .map_or(0, |len| memory.put(&vec![0xFFu8; len]));
        let launches = resize.params(
            &source,
            &V1Buffers {
                first_tables,
                last_tables,
                intermediate,
                out,
                table,
            },
            T::DTYPE.size_bytes() as u32,
            pre.config.tile_size,
        );
        // The device addresses in a pass, at `base` in the params.
        let pass_pointers = |base: usize| {
            [
                offset_of!(NvlmResamplePass, src),
                offset_of!(NvlmResamplePass, first),
                offset_of!(NvlmResamplePass, count),
                offset_of!(NvlmResamplePass, coeffs),
            ]
            .map(|field| base + field)
        };
        if let Some(params) = &launches.intermediate {
            let mut pointers = pass_pointers(offset_of!(NvlmIntermediate, pass)).to_vec();
            pointers.push(offset_of!(NvlmIntermediate, dst));
            let file = LaunchFile {
                kernel: "resample_to_intermediate",
                config: intermediate_config.expect("a first pass has a launch"),
                // SAFETY: abi.h's structs have no padding.
                params: unsafe { host_emulation::param_bytes(params) },
                pointers: &pointers,
                maps: &[],
                memory: &memory,
            };
            memory.set_from_run(&host_emulation::run(exe, &file.bytes()));
        }
        let mut pointers = pass_pointers(offset_of!(NvlmTileWrite, pass)).to_vec();
        pointers.extend([
            offset_of!(NvlmTileWrite, out),
            offset_of!(NvlmTileWrite, table),
        ]);
        let file = LaunchFile {
            kernel: "resample_to_tiles",
            config: tiles_config,
            // SAFETY: as above.
            params: unsafe { host_emulation::param_bytes(&launches.tiles) },
            pointers: &pointers,
            maps: &[],
            memory: &memory,
        };
        memory.set_from_run(&host_emulation::run(exe, &file.bytes()));
    }
    Memory::get(memory.image(), out, out_bytes)
}

fn first_difference<T: bytemuck::Pod>(got: &[u8], want: &[T]) -> Option<usize> {
    let want: &[u8] = bytemuck::cast_slice(want);
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).position(|(a, b)| a != b)
}

/// What one case exercised: the passes of its targets, those v1's
/// source ran on the CPU (in f32; and whether it ran in bf16), the most
/// chunks a v2 patch took in each pass order (horizontal first, then
/// vertical first), the same for v3's staged targets, and whether v3
/// left a target unstaged.
#[derive(Default)]
struct Coverage {
    passes: Vec<Passes>,
    v1_passes: Vec<Passes>,
    v1_bf16: bool,
    v2_chunks: [u32; 2],
    v3_chunks: [u32; 2],
    v3_unstaged: bool,
}

/// Checks one case with the model and, given `emulator`, with the
/// kernel sources on the CPU: v2, v3 and v4 in f32, v4 in bf16 (the
/// output stores, the one place the types differ, are shared code);
/// v1 in f32 up to [`V1_F32_PIXELS`], and in bf16 up to
/// [`V1_BF16_PIXELS`].
fn check(
    pre: Preprocessor,
    (w, h): (u32, u32),
    format: PixelFormat,
    pad: usize,
    seed: u64,
    emulator: Option<&PathBuf>,
) -> Coverage {
    let stride = w as usize * format.bytes_per_pixel() + pad;
    let mut x = seed | 1;
    let data: Vec<u8> = (0..stride * h as usize)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let view = ImageView::new(&data, w, h, stride, format).unwrap();
    let what = format!("{w}x{h} {format:?} {:?} {:?}", pre.pillow, pre.config);
    let want = pre.run::<f32>(&view).unwrap();
    let launch = |kernel| FusedLaunch::new::<f32>(kernel, &pre, &want.plan, (w, h), stride, format);
    let v2 = launch(PreprocessKernel::FusedV2);
    let v3 = launch(PreprocessKernel::StagedV3);
    let v4 = launch(PreprocessKernel::StagedDp4aV4);
    let mut got = vec![f32::NAN; want.data.len()];
    let v2_chunks = model(&v2, view.data(), &mut got);
    if let Some(i) = first_difference(bytemuck::cast_slice(&got), &want.data) {
        panic!("{what}: model: first differing byte {i}");
    }
    let pixels = u64::from(w) * u64::from(h);
    let mut coverage = Coverage {
        v2_chunks,
        ..Default::default()
    };
    if let Some(exe) = emulator {
        if pixels <= V1_F32_PIXELS {
            let got = emulate_v1::<f32>(exe, &pre, &want.plan, &view, want.data.len());
            if let Some(i) = first_difference(&got, &want.data) {
                panic!("{what} f32: v1 on the CPU: first differing byte {i}");
            }
            coverage.v1_passes = Target::of(&want.plan)
                .iter()
                .map(|t| pre.pillow.passes(w, h, t.size.0, t.size.1))
                .collect();
        }
        for launch in [&v2, &v3, &v4] {
            let got = emulate(exe, launch, view.data(), want.data.len() * 4);
            if let Some(i) = first_difference(&got, &want.data) {
                panic!(
                    "{what} f32: {} on the CPU: first differing byte {i}",
                    launch.entry
                );
            }
        }
        let want = pre.run::<half::bf16>(&view).unwrap();
        let v4 = FusedLaunch::new::<half::bf16>(
            PreprocessKernel::StagedDp4aV4,
            &pre,
            &want.plan,
            (w, h),
            stride,
            format,
        );
        let got = emulate(exe, &v4, view.data(), want.data.len() * 2);
        if let Some(i) = first_difference(&got, &want.data) {
            panic!(
                "{what} bf16: {} on the CPU: first differing byte {i}",
                v4.entry
            );
        }
        if pixels <= V1_BF16_PIXELS {
            let got = emulate_v1::<half::bf16>(exe, &pre, &want.plan, &view, want.data.len());
            if let Some(i) = first_difference(&got, &want.data) {
                panic!("{what} bf16: v1 on the CPU: first differing byte {i}");
            }
            coverage.v1_bf16 = true;
        }
    }
    for (target, params) in Target::of(&want.plan).iter().zip(&v3.params.target) {
        let passes = pre.pillow.passes(w, h, target.size.0, target.size.1);
        coverage.passes.push(passes);
        if params.chunk_samples == 0 {
            coverage.v3_unstaged = true;
            continue;
        }
        let axes = FusedAxes::new(pre.pillow, (w, h), target.size);
        let chunks = widest_window(&axes.second).div_ceil(params.chunk_samples);
        let order = usize::from(axes.vertical_first);
        coverage.v3_chunks[order] = coverage.v3_chunks[order].max(chunks);
    }
    coverage
}

/// Runs `check` on every (width, height, tile size, max tiles) case with
/// both Pillow versions and rotating formats and row padding, then
/// asserts that the cases made every pass order, the one-pass and copy
/// cases (for v1's source too, given `emulator`), and windows of
/// several chunks in both pass orders, for v2 and for v3's staged
/// targets.
fn check_cases(test: &str, cases: &[(u32, u32, u32, u32)], emulator: Option<&PathBuf>) -> Coverage {
    let formats = [
        PixelFormat::Rgb8,
        PixelFormat::Rgba8,
        PixelFormat::L8,
        PixelFormat::La8,
    ];
    let seed = host_emulation::fresh_seed(test);
    let (mut n, mut all) = (0u64, Coverage::default());
    for &(w, h, tile_size, max_tiles) in cases {
        for pillow in [PillowVersion::V12, PillowVersion::V13] {
            let pre = Preprocessor {
                config: DhrConfig {
                    tile_size,
                    max_tiles,
                    ..DhrConfig::NVLM_D
                },
                pillow,
                ..Default::default()
            };
            n += 1;
            let format = formats[n as usize % 4];
            let one = check(
                pre,
                (w, h),
                format,
                n as usize % 3,
                seed.wrapping_add(n),
                emulator,
            );
            all.passes.extend(one.passes);
            all.v1_passes.extend(one.v1_passes);
            all.v1_bf16 |= one.v1_bf16;
            all.v2_chunks = [0, 1].map(|o| all.v2_chunks[o].max(one.v2_chunks[o]));
            all.v3_chunks = [0, 1].map(|o| all.v3_chunks[o].max(one.v3_chunks[o]));
            all.v3_unstaged |= one.v3_unstaged;
        }
    }
    for passes in [
        Passes::Copy,
        Passes::Horizontal,
        Passes::Vertical,
        Passes::HorizontalThenVertical,
        Passes::VerticalThenHorizontal,
    ] {
        assert!(all.passes.contains(&passes), "no case ran {passes:?}");
        assert!(
            emulator.is_none() || all.v1_passes.contains(&passes),
            "v1's source never ran {passes:?}"
        );
    }
    assert!(
        emulator.is_none() || all.v1_bf16,
        "v1's source never ran in bf16"
    );
    for (version, chunks) in [("v2", all.v2_chunks), ("v3", all.v3_chunks)] {
        assert!(
            chunks.iter().all(|&c| c >= 3),
            "{version}: some pass order never took several chunks: {chunks:?}"
        );
    }
    all
}

#[test]
fn fused_launch_model_equals_the_cpu_reference() {
    // Upscales, tile sizes that are not multiples of the patch or of
    // 4, long strips, and the cases the emulation test runs.
    check_cases(
        "fused_launch_model_equals_the_cpu_reference",
        &[
            (640, 480, 448, 6),
            (1344, 896, 448, 6),
            (1344, 500, 448, 6),
            (900, 448, 448, 2),
            (448, 900, 448, 2),
            (200, 6000, 448, 6),
            (30, 5000, 448, 6),
            (7000, 120, 448, 6),
            (3, 2, 448, 12),
            (1, 1, 448, 6),
            (97, 61, 30, 5),
            (500, 333, 61, 6),
            (300, 20000, 448, 6),
            (1000, 5000, 32, 6),
            (5000, 1000, 32, 6),
            (60000, 4, 32, 6),
            (4, 60000, 32, 6),
        ],
        None,
    );
}

/// The same checks on the kernels' own source. Small tile sizes keep
/// the blocks few (each is 256 threads and a barrier per chunk on the
/// CPU) while making every pass order and several-chunk windows; the
/// 60000-pixel strip's thumbnail window is too wide for v3 to stage.
#[test]
fn fused_kernel_source_on_the_cpu_equals_the_cpu_reference() {
    let Some(exe) = host_emulation::emulator("preprocess_on_cpu", "address") else {
        return;
    };
    let coverage = check_cases(
        "fused_kernel_source_on_the_cpu_equals_the_cpu_reference",
        &[
            (640, 480, 64, 6),
            (192, 128, 64, 6),
            (150, 64, 64, 2),
            (64, 150, 64, 2),
            (3, 400, 64, 6),
            (1, 1, 64, 6),
            (97, 61, 30, 5),
            (500, 333, 61, 6),
            (7500, 1500, 32, 6),
            (1500, 7500, 32, 6), // V13 and RGB: vertical first, 6 chunks
            (60000, 4, 32, 6),
        ],
        Some(&exe),
    );
    assert!(coverage.v3_unstaged, "no target ran v3's unstaged path");
}

/// A longer search than the fixed cases: random sizes up to 2000 a side
/// (one in eight a strip 1 to 8 pixels across), tile sizes 16 to 96, 1
/// to 12 tiles with or without the thumbnail, either Pillow version,
/// every format and row padding; every version's source (v1 within its
/// size caps) against the CPU reference, byte for byte. Run by hand:
/// `NVLM_VISION_EMULATED_CASES=<n> cargo test --lib
/// kernel_source_on_random_shapes -- --ignored --nocapture` (default 8;
/// `NVLM_VISION_SEED` repeats a draw).
#[test]
#[ignore = "minutes; run by hand"]
fn kernel_source_on_random_shapes_equals_the_cpu_reference() {
    let Some(exe) = host_emulation::emulator("preprocess_on_cpu", "address") else {
        return;
    };
    let (count, seed) =
        host_emulation::random_search("kernel_source_on_random_shapes_equals_the_cpu_reference");
    let mut draws = host_emulation::Draws::new(seed);
    let mut below = |n: u32| draws.below(n as usize) as u32;
    let formats = [
        PixelFormat::Rgb8,
        PixelFormat::Rgba8,
        PixelFormat::L8,
        PixelFormat::La8,
    ];
    for i in 0..count {
        let (long, short) = (1 + below(2000), 1 + below(2000));
        let (long, short) = if below(8) == 0 {
            (long, 1 + below(8))
        } else {
            (long, short)
        };
        let (w, h) = if below(2) == 0 {
            (long, short)
        } else {
            (short, long)
        };
        let pre = Preprocessor {
            config: DhrConfig {
                tile_size: 16 + below(81),
                max_tiles: 1 + below(12),
                thumbnail: below(2) == 0,
                ..DhrConfig::NVLM_D
            },
            pillow: [PillowVersion::V12, PillowVersion::V13][below(2) as usize],
            ..Default::default()
        };
        let format = formats[below(4) as usize];
        let pad = below(4) as usize;
        let what = format!(
            "{w}x{h} {format:?} pad {pad} {:?} {:?}",
            pre.pillow, pre.config
        );
        check(pre, (w, h), format, pad, seed.wrapping_add(i), Some(&exe));
        eprintln!("{what}: ok");
    }
}

/// The slab's chunked fill and read across barriers, under the thread
/// sanitizer: both pass orders (both Pillow versions), several chunks;
/// and v1's threads, whose only writes are to the output.
#[test]
fn fused_kernel_source_on_the_cpu_has_no_data_race() {
    let Some(exe) = host_emulation::emulator("preprocess_on_cpu", "thread") else {
        return;
    };
    check_cases(
        "fused_kernel_source_on_the_cpu_has_no_data_race",
        &[
            (192, 128, 64, 6),
            (150, 64, 64, 2),
            (64, 150, 64, 2),
            // Fourth, so V13 meets RGB: vertical first, several chunks.
            (1500, 7500, 32, 6),
            (7500, 1500, 32, 6),
            // V13: vertical first in an image small enough for v1.
            (100, 300, 64, 6),
        ],
        Some(&exe),
    );
}
