//! The projector kernels' own source run on the CPU (src/host_emulation.rs,
//! tests/host_emulation/projector_on_cpu.cpp): the launches
//! [`super::gpu::front_plan`] and [`super::gpu::bias_gelu_plan`] make,
//! under the address sanitizer (and the thread sanitizer for the front's
//! block reductions), against the CPU reference with the GPU suite's
//! tolerances: the f64 value rounded once to the dtype, up to f32
//! statistics.

#[path = "../../tests/common/projector_checks.rs"]
mod projector_checks;

use super::cpu::{self, HostWeights, gelu_erf};
use super::gpu::{bias_gelu_plan, front_plan};
use super::*;
use crate::abi::{NvlmBiasGelu, NvlmProjectorFront};
use crate::dtype::TensorElement;
use crate::host_emulation::{self, LaunchFile, Memory};
use cudarc::driver::LaunchConfig;
use half::{bf16, f16};
use std::mem::offset_of;
use std::path::Path;

/// A 16-bit element and half its ulp at 1 (the rounding error bound).
trait Half: TensorElement {
    const EPS: f64;
    const NAME: &'static str;
    fn to_f64(self) -> f64;
}

impl Half for bf16 {
    const EPS: f64 = 1.0 / 256.0;
    const NAME: &'static str = "bf16";
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
}

impl Half for f16 {
    const EPS: f64 = 1.0 / 2048.0;
    const NAME: &'static str = "f16";
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
}

/// Deterministic values in [-scale, scale), already rounded to `T`.
fn values<T: Half>(seed: &mut u64, n: usize, scale: f32, shift: f32) -> (Vec<T>, Vec<f32>) {
    let data: Vec<T> = (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            let unit = (*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            T::from_f32(unit * scale + shift)
        })
        .collect();
    let exact = data.iter().map(|v| v.to_f64() as f32).collect();
    (data, exact)
}

fn config(c: usize, side: usize, cls: bool, ps: PsVersion) -> ProjectorConfig {
    ProjectorConfig {
        name: "emulated",
        vit_hidden: c,
        grid_side: side,
        cls_token: cls,
        ps_version: ps,
        ln_eps: 1e-5,
        linear1_out: 8,
        linear2_out: None,
        bias: false,
        gelu: GeluMode::ExactErf,
    }
}

/// The launch file of the front `front_plan` makes for `rows` output rows
/// (addresses: input, gamma, beta, out), and its kernel's name.
fn front_launch(
    cfg: &ProjectorConfig,
    dtype: Dtype,
    addrs: [u64; 4],
    rows: usize,
    memory: &Memory,
) -> (Vec<u8>, String) {
    let (params, launch, kernel) = front_plan(cfg, dtype, addrs, rows).unwrap();
    (front_file(&kernel, &params, launch, memory), kernel)
}

/// The launch file of the front `kernel` with `params`.
fn front_file(
    kernel: &str,
    params: &NvlmProjectorFront,
    launch: LaunchConfig,
    memory: &Memory,
) -> Vec<u8> {
    LaunchFile {
        kernel,
        config: launch,
        // SAFETY: abi.h's structs have no padding.
        params: unsafe { host_emulation::param_bytes(params) },
        pointers: &[
            offset_of!(NvlmProjectorFront, input),
            offset_of!(NvlmProjectorFront, gamma),
            offset_of!(NvlmProjectorFront, beta),
            offset_of!(NvlmProjectorFront, out),
        ],
        maps: &[],
        memory,
    }
    .bytes()
}

/// The front over `tiles` tiles, the input starting `offset` elements into
/// its buffer (an offset that breaks 16-byte alignment takes the scalar
/// kernel). Returns the kernel's name.
fn front_case<T: Half>(
    exe: &Path,
    cfg: &ProjectorConfig,
    tiles: usize,
    offset: usize,
    seed: u64,
) -> String {
    let mut seed = seed | 1;
    let n_in = tiles * cfg.tokens_per_tile() * cfg.vit_hidden;
    // Shifted so the mean is far from 0: LayerNorm must subtract it.
    let (input, input_f32) = values::<T>(&mut seed, offset + n_in, 3.0, 1.5);
    let (gamma, gamma_f32) = values::<T>(&mut seed, cfg.row_width(), 2.0, 0.0);
    let (beta, beta_f32) = values::<T>(&mut seed, cfg.row_width(), 1.0, 0.0);
    let rows = cfg.output_rows(tiles);
    let n_out = rows * cfg.row_width();
    let mut memory = Memory::default();
    let addrs = [
        memory.put(&input) + 2 * offset as u64,
        memory.put(&gamma),
        memory.put(&beta),
        memory.put(&vec![T::from_f32(f32::NAN); n_out + 8]),
    ];
    let (file, kernel) = front_launch(cfg, T::DTYPE, addrs, rows, &memory);
    let got: Vec<T> = Memory::get(&host_emulation::run(exe, &file), addrs[3], n_out + 8);
    let w = HostWeights {
        ln_gamma: gamma_f32,
        ln_beta: beta_f32,
        w1: vec![],
        b1: None,
        w2: None,
        b2: None,
    };
    let want = cpu::front(cfg, &input_f32[offset..], tiles, &w);
    let what = format!(
        "{kernel} C={} {:?} cls={} tiles={tiles}",
        cfg.vit_hidden, cfg.ps_version, cfg.cls_token
    );
    let got_f64: Vec<f64> = got[..n_out].iter().map(|g| g.to_f64()).collect();
    projector_checks::check_front_output(&what, &got_f64, &want, T::EPS, cfg.row_width());
    assert!(
        got[n_out..].iter().all(|v| v.to_f64().is_nan()),
        "{what}: wrote past its rows"
    );
    kernel
}

#[test]
fn front_source_on_the_cpu_matches_the_reference() {
    let Some(exe) = host_emulation::emulator("projector_on_cpu", "address") else {
        return;
    };
    // Both pixel-shuffle versions, with and without CLS; the 16-byte
    // kernels at 1, 2, 4 and 8 chunks per thread (C = 8 and 200, 1024, 1600, 3200)
    // and the scalar one (odd C, and a misaligned input view).
    let base = host_emulation::fresh_seed("front_source_on_the_cpu_matches_the_reference");
    let mut kernels = std::collections::BTreeSet::new();
    for (i, (c, ps, cls, offset)) in [
        (8, PsVersion::V1, true, 0),
        (200, PsVersion::V2, false, 0),
        (1024, PsVersion::V1, false, 0),
        (1600, PsVersion::V2, true, 0),
        (3200, PsVersion::V2, true, 0),
        (7, PsVersion::V1, true, 0),
        (13, PsVersion::V2, false, 0),
        (64, PsVersion::V2, true, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let cfg = config(c, 4, cls, ps);
        let seed = base.wrapping_add(2 * i as u64);
        kernels.insert(front_case::<bf16>(&exe, &cfg, 2, offset, seed));
        kernels.insert(front_case::<f16>(
            &exe,
            &cfg,
            1,
            offset,
            seed.wrapping_add(1),
        ));
    }
    assert_eq!(kernels.len(), 10, "every front kernel ran: {kernels:?}");
}

/// The memory of the planted-fault tests: a bf16 front (C = 64, 4×4
/// tokens a tile) with two tiles of input and one tile of output, NaN.
/// Returns the config, the memory and the addresses (input, gamma, beta,
/// out).
fn planted_front_memory(seed: u64) -> (ProjectorConfig, Memory, [u64; 4]) {
    let cfg = config(64, 4, false, PsVersion::V1);
    let mut seed = seed;
    let n_in = 2 * cfg.tokens_per_tile() * cfg.vit_hidden;
    let (input, _) = values::<bf16>(&mut seed, n_in, 3.0, 1.5);
    let (gamma, _) = values::<bf16>(&mut seed, cfg.row_width(), 2.0, 0.0);
    let (beta, _) = values::<bf16>(&mut seed, cfg.row_width(), 1.0, 0.0);
    let mut memory = Memory::default();
    let addrs = [
        memory.put(&input),
        memory.put(&gamma),
        memory.put(&beta),
        memory.put(&vec![bf16::NAN; cfg.output_rows(1) * cfg.row_width()]),
    ];
    (cfg, memory, addrs)
}

/// The emulator's guard bands between buffers: a front told of a tile more
/// than its output buffer holds writes that tile's finite rows past the
/// buffer. The address sanitizer stops the first such write (the bands
/// are poisoned for it); under the thread sanitizer the run fails after the
/// grid, having found a band changed.
#[test]
fn a_write_outside_every_buffer_fails_the_emulated_run() {
    for (sanitizer, expected) in [
        ("address", "use-after-poison"),
        ("thread", "outside every buffer"),
    ] {
        let Some(exe) = host_emulation::emulator("projector_on_cpu", sanitizer) else {
            return;
        };
        let (cfg, mut memory, addrs) = planted_front_memory(11);
        // A buffer after the output, as long as the overflow, so that it
        // starts in a guard band and stays inside the memory (past it the
        // address sanitizer would stop it as a heap overflow).
        memory.put(&vec![bf16::ZERO; cfg.output_rows(1) * cfg.row_width()]);
        let (file, _) = front_launch(&cfg, bf16::DTYPE, addrs, cfg.output_rows(2), &memory);
        host_emulation::assert_run_stops(&exe, &file, expected);
    }
}

/// The guard bands are poisoned for the address sanitizer: a front whose
/// input address is one guard band early reads the band (and no buffer
/// changes, so only the sanitizer can see it).
#[test]
fn a_read_outside_every_buffer_fails_the_emulated_run() {
    let Some(exe) = host_emulation::emulator("projector_on_cpu", "address") else {
        return;
    };
    let (cfg, memory, addrs) = planted_front_memory(17);
    let rows = cfg.output_rows(1);
    let (mut params, launch, kernel) = front_plan(&cfg, bf16::DTYPE, addrs, rows).unwrap();
    params.input -= host_emulation::GUARD_BYTES as u64;
    let file = front_file(&kernel, &params, launch, &memory);
    host_emulation::assert_run_stops(&exe, &file, "use-after-poison");
}

/// What the GPU faults on, a 16-byte load off its alignment, stops the
/// emulation too (its undefined-behaviour sanitizer): the 16-byte front
/// kernel given an input 2 bytes past the aligned address it was chosen
/// for.
#[test]
fn a_misaligned_vector_load_fails_the_emulated_run() {
    let Some(exe) = host_emulation::emulator("projector_on_cpu", "address") else {
        return;
    };
    let (cfg, memory, addrs) = planted_front_memory(13);
    let rows = cfg.output_rows(1);
    let (mut params, launch, kernel) = front_plan(&cfg, bf16::DTYPE, addrs, rows).unwrap();
    let misaligned = addrs.map(|a| a + 2);
    let scalar = front_plan(&cfg, bf16::DTYPE, misaligned, rows).unwrap().2;
    assert_ne!(kernel, scalar, "the 16-byte kernel was not chosen");
    params.input += 2;
    let file = front_file(&kernel, &params, launch, &memory);
    host_emulation::assert_run_stops(&exe, &file, "misaligned address");
}

/// A GPU runs a grid's blocks in no set order, and the emulator runs each
/// grid in launch order and again in reverse: a front whose output aliases
/// its input has blocks that read tokens another block has overwritten (the
/// first row's block writes tokens 0 to 3 of the input, and the third row's
/// reads tokens 2 and 3 in v1's transposed order), so the two orders leave
/// different memory.
#[test]
fn blocks_that_read_what_other_blocks_write_fail_the_emulated_run() {
    for sanitizer in ["address", "thread"] {
        let Some(exe) = host_emulation::emulator("projector_on_cpu", sanitizer) else {
            return;
        };
        let (cfg, memory, addrs) = planted_front_memory(19);
        let rows = cfg.output_rows(1);
        let (mut params, launch, kernel) = front_plan(&cfg, bf16::DTYPE, addrs, rows).unwrap();
        params.out = params.input;
        let file = front_file(&kernel, &params, launch, &memory);
        host_emulation::assert_run_stops(&exe, &file, "after it ran in reverse");
    }
}

#[test]
fn front_source_on_the_cpu_has_no_data_race() {
    let Some(exe) = host_emulation::emulator("projector_on_cpu", "thread") else {
        return;
    };
    let seed = host_emulation::fresh_seed("front_source_on_the_cpu_has_no_data_race");
    front_case::<bf16>(&exe, &config(200, 4, true, PsVersion::V2), 1, 0, seed);
}

fn bias_gelu_case<T: Half>(
    exe: &Path,
    (rows, cols): (usize, usize),
    bias: bool,
    gelu: bool,
    seed: u64,
) -> String {
    let mut seed = seed | 1;
    let (data, x) = values::<T>(&mut seed, rows * cols, 5.0, 0.0);
    let (bias_data, b) = values::<T>(&mut seed, cols, 1.0, 0.0);
    let mut memory = Memory::default();
    let data_at = memory.put(&data);
    let bias_at = if bias { memory.put(&bias_data) } else { 0 };
    let (params, launch, kernel) = bias_gelu_plan(T::NAME, [data_at, bias_at], rows, cols, gelu);
    let file = LaunchFile {
        kernel: &kernel,
        config: launch,
        // SAFETY: abi.h's structs have no padding.
        params: unsafe { host_emulation::param_bytes(&params) },
        pointers: &[
            offset_of!(NvlmBiasGelu, data),
            offset_of!(NvlmBiasGelu, bias),
        ],
        maps: &[],
        memory: &memory,
    }
    .bytes();
    let got: Vec<T> = Memory::get(&host_emulation::run(exe, &file), data_at, rows * cols);
    let got: Vec<f64> = got.iter().map(|g| g.to_f64()).collect();
    projector_checks::check_bias_gelu_output(
        &format!("{kernel} [{rows}, {cols}] bias={bias} gelu={gelu}"),
        &got,
        (&x, bias.then_some(&b[..])),
        gelu.then_some(gelu_erf as fn(f64) -> f64),
        T::EPS,
    );
    kernel
}

#[test]
fn bias_gelu_source_on_the_cpu_matches_the_reference() {
    let Some(exe) = host_emulation::emulator("projector_on_cpu", "address") else {
        return;
    };
    let base = host_emulation::fresh_seed("bias_gelu_source_on_the_cpu_matches_the_reference");
    let mut kernels = std::collections::BTreeSet::new();
    for (i, (shape, bias, gelu)) in [
        ((37, 64), true, true),
        ((5, 3696), true, false),
        ((13, 7), false, true),
        ((3, 1), true, true),
    ]
    .into_iter()
    .enumerate()
    {
        kernels.insert(bias_gelu_case::<bf16>(
            &exe,
            shape,
            bias,
            gelu,
            base.wrapping_add(2 * i as u64),
        ));
        kernels.insert(bias_gelu_case::<f16>(
            &exe,
            shape,
            bias,
            gelu,
            base.wrapping_add(2 * i as u64 + 1),
        ));
    }
    assert_eq!(kernels.len(), 4, "every bias_gelu kernel ran: {kernels:?}");
}

/// The sm_90a Linear ([`super::hopper::plan`]) in tiles of `width` on
/// `[m, n, k]`, against the f64 sums of the dtype-rounded inputs (+ bias,
/// GELU) rounded once to the dtype; `y` poisoned, every element of `[m, n]`
/// written and nothing past it. Returns the kernel's name.
fn hopper_linear_case<T: Half>(
    exe: &Path,
    (m, n, k): (usize, usize, usize),
    width: super::hopper::TileWidth,
    bias: bool,
    gelu: bool,
    seed: u64,
) -> String {
    use super::hopper;
    use crate::abi::NvlmHopperLinear;
    use crate::gemm::LinearShape;
    use crate::host_emulation::EmulatedTensorMap;
    let mut seed = seed | 1;
    let (x, x_f32) = values::<T>(&mut seed, m * k, 1.0, 0.0);
    let (w, w_f32) = values::<T>(&mut seed, n * k, 1.0, 0.0);
    let (b, b_f32) = values::<T>(&mut seed, n, 1.0, 0.0);
    let mut memory = Memory::default();
    let x_at = memory.put(&x);
    let w_at = memory.put(&w);
    let bias_at = if bias { memory.put(&b) } else { 0 };
    let tail = 64;
    let y_at = memory.put(&vec![T::from_f32(f32::NAN); m * n + tail]);
    let shape = LinearShape { m, n, k };
    let launch = hopper::plan(T::DTYPE, [x_at, w_at, bias_at, y_at], shape, gelu, width).unwrap();
    let file = LaunchFile {
        kernel: &launch.kernel,
        config: launch.config,
        // SAFETY: abi.h's structs have no padding.
        params: unsafe { host_emulation::param_bytes(&launch.params) },
        pointers: &[
            offset_of!(NvlmHopperLinear, y),
            offset_of!(NvlmHopperLinear, bias),
        ],
        maps: &[
            EmulatedTensorMap::of(&launch.x),
            EmulatedTensorMap::of(&launch.w),
        ],
        memory: &memory,
    }
    .bytes();
    let got: Vec<T> = Memory::get(&host_emulation::run(exe, &file), y_at, m * n + tail);
    let what = format!("{} [{m}, {n}, {k}] bias={bias} gelu={gelu}", launch.kernel);
    for row in 0..m {
        for col in 0..n {
            let (mut sum, mut magnitude) = (0.0f64, 0.0f64);
            for i in 0..k {
                let p = f64::from(x_f32[row * k + i]) * f64::from(w_f32[col * k + i]);
                sum += p;
                magnitude += p.abs();
            }
            if bias {
                sum += f64::from(b_f32[col]);
                magnitude += f64::from(b_f32[col]).abs();
            }
            let want = if gelu { gelu_erf(sum) } else { sum };
            let g = got[row * n + col].to_f64();
            // One rounding to the dtype, plus f32 accumulation.
            let bound = T::EPS * want.abs() + 1e-5 * magnitude;
            assert!(
                (g - want).abs() <= bound,
                "{what}: y[{row}][{col}] = {g}, expected {want}"
            );
        }
    }
    assert!(
        got[m * n..].iter().all(|v| v.to_f64().is_nan()),
        "{what}: wrote past [m, n]"
    );
    launch.kernel
}

#[test]
fn hopper_linear_source_on_the_cpu_matches_the_reference() {
    use super::hopper::TileWidth::{Narrow, Wide};
    let Some(exe) = host_emulation::emulator("projector_hopper_on_cpu", "address") else {
        return;
    };
    let mut kernels = std::collections::BTreeSet::new();
    // Partial tiles in m (a pair's second CTA partly or wholly past m), n
    // (8 columns of a second tile) and k (8 columns of a last step); more
    // k steps than stages, so the ring wraps.
    let cases = [
        ((130, 264, 328), Wide, true, true),
        ((300, 18, 72), Wide, false, false),
        ((64, 512, 8), Wide, true, false),
        ((257, 256, 648), Wide, true, true),
        // The narrow tile: 232 columns are a whole tile and 8 of the
        // next; 448 are two whole tiles.
        ((130, 232, 328), Narrow, true, true),
        ((257, 448, 72), Narrow, false, false),
    ];
    // The dtypes alternate.
    let base = host_emulation::fresh_seed("hopper_linear_source_on_the_cpu_matches_the_reference");
    for (i, (shape, width, bias, gelu)) in (0u64..).zip(cases) {
        let seed = base.wrapping_add(i);
        kernels.insert(if i % 2 == 0 {
            hopper_linear_case::<bf16>(&exe, shape, width, bias, gelu, seed)
        } else {
            hopper_linear_case::<f16>(&exe, shape, width, bias, gelu, seed)
        });
    }
    assert_eq!(
        kernels.len(),
        4,
        "both dtypes at both widths ran: {kernels:?}"
    );
}

#[test]
fn hopper_linear_source_on_the_cpu_has_no_data_race() {
    let Some(exe) = host_emulation::emulator("projector_hopper_on_cpu", "thread") else {
        return;
    };
    // 6 k steps through 4 stages: every stage is refilled, by both CTAs.
    let seed = host_emulation::fresh_seed("hopper_linear_source_on_the_cpu_has_no_data_race");
    for width in [
        super::hopper::TileWidth::Wide,
        super::hopper::TileWidth::Narrow,
    ] {
        hopper_linear_case::<bf16>(&exe, (200, 40, 384), width, true, true, seed);
    }
}

/// A longer search than the two tests above: random `[m, n, k]` (k a
/// multiple of 8, n of 2, as the plan requires), widths, bias and GELU.
/// Run by hand: `NVLM_VISION_EMULATED_CASES=<n> cargo test --lib
/// random_shapes -- --ignored --nocapture` (default 8; `NVLM_VISION_SEED`
/// repeats a draw).
#[test]
#[ignore = "minutes; run by hand"]
fn hopper_linear_source_on_random_shapes_matches_the_reference() {
    use super::hopper::TileWidth::{Narrow, Wide};
    let Some(exe) = host_emulation::emulator("projector_hopper_on_cpu", "address") else {
        return;
    };
    let (count, seed) = host_emulation::random_search(
        "hopper_linear_source_on_random_shapes_matches_the_reference",
    );
    let mut draws = host_emulation::Draws::new(seed);
    let mut below = |n| draws.below(n);
    for i in 0..count {
        let shape = (1 + below(400), 2 * (1 + below(300)), 8 * (1 + below(100)));
        let width = [Wide, Narrow][below(2)];
        let (bias, gelu) = (below(2) == 0, below(2) == 0);
        let draw = seed.wrapping_add(i);
        let kernel = if below(2) == 0 {
            hopper_linear_case::<bf16>(&exe, shape, width, bias, gelu, draw)
        } else {
            hopper_linear_case::<f16>(&exe, shape, width, bias, gelu, draw)
        };
        eprintln!("{kernel} {shape:?} {width:?} bias={bias} gelu={gelu}: ok");
    }
}
