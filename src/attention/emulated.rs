//! The attention kernels' own source run on the CPU (src/host_emulation.rs,
//! tests/host_emulation): the launches [`super::gpu::portable_launch`] and
//! [`super::hopper::plan`] make, executed by 256 (portable) or 384 (Hopper)
//! threads per block over emulated PTX primitives, under the address
//! sanitizer and, for small cases, the thread sanitizer. Outputs are held
//! to the GPU suite's rule against the f64 reference. The primitives
//! follow the PTX ISA's text, so this checks the kernels' use of them
//! (pipelines, fragment, swizzle and descriptor arithmetic, tails, output
//! indexing), not that the hardware reads the ISA the same way: the GPU
//! suite (tests/gpu_hopper_primitives.rs first) does that.

#[path = "../../tests/common/attention_checks.rs"]
mod attention_checks;

use super::gpu::{DeviceTensors, portable_launch, rms_norm_launch};
use super::hopper;
use super::tests::Rng;
use super::*;
use crate::abi::{NvlmAttentionTensor, NvlmFlashAttention, NvlmHopperAttention, NvlmQkRmsNorm};
use crate::host_emulation::{self, EmulatedTensorMap, LaunchFile, Memory};
use half::{bf16, f16};
use std::mem::offset_of;
use std::path::Path;

/// The SM count v4's grid is planned for here: with it, each persistent
/// CTA takes several items of the cases below, short ones among them.
const EMULATED_MULTIPROCESSORS: u32 = 3;

fn emulator(kernel: AttentionKernel, sanitizer: &str) -> Option<std::path::PathBuf> {
    let driver = match kernel {
        AttentionKernel::Portable => "attention_on_cpu",
        _ => "attention_hopper_on_cpu",
    };
    host_emulation::emulator(driver, sanitizer)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Arrangement {
    /// q, k, v each `[B, N, H, D]`.
    Contiguous,
    /// Views of one `[B, N, 3, H, D]` buffer (needs Nq = Nkv).
    PackedQkv,
    /// q, k, v each torch's `[B, H, N, D]`: tokens inside heads.
    HeadsOuter,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    batch: usize,
    heads: usize,
    q_len: usize,
    kv_len: usize,
    head_dim: usize,
    arrangement: Arrangement,
    /// Output rows 16 elements wider than the heads: the gaps must stay.
    padded_out: bool,
    lse: bool,
    /// Inputs are uniform in [-amplitude, amplitude): at 1, D^-0.5-scaled
    /// scores spread ~0.3 and the softmax is nearly flat; at 4, it peaks
    /// and the running max moves between K/V tiles.
    amplitude: f32,
}

fn launch_file<T: AttentionElement>(
    kernel: AttentionKernel,
    tensors: &DeviceTensors<'_>,
    scale: f32,
    memory: &Memory,
) -> (Vec<u8>, String) {
    if kernel == AttentionKernel::Portable {
        let launch = portable_launch::<T>(tensors, scale);
        let pointer = |tensor: usize| tensor + offset_of!(NvlmAttentionTensor, ptr);
        let file = LaunchFile {
            kernel: &launch.kernel,
            config: launch.config,
            // SAFETY: abi.h's structs have no padding.
            params: unsafe { host_emulation::param_bytes(&launch.params) },
            pointers: &[
                pointer(offset_of!(NvlmFlashAttention, q)),
                pointer(offset_of!(NvlmFlashAttention, k)),
                pointer(offset_of!(NvlmFlashAttention, v)),
                pointer(offset_of!(NvlmFlashAttention, o)),
                offset_of!(NvlmFlashAttention, lse),
            ],
            maps: &[],
            memory,
        }
        .bytes();
        return (file, launch.kernel);
    }
    // A few CTAs, so that v4's persistent ones take several items each.
    let plan = hopper::plan::<T>(tensors, scale, kernel, EMULATED_MULTIPROCESSORS).unwrap();
    let maps: Vec<EmulatedTensorMap> = plan.inputs.iter().map(EmulatedTensorMap::of).collect();
    let file = LaunchFile {
        kernel: &plan.kernel,
        config: plan.config,
        // SAFETY: abi.h's structs have no padding.
        params: unsafe { host_emulation::param_bytes(&plan.params) },
        pointers: &[
            offset_of!(NvlmHopperAttention, o),
            offset_of!(NvlmHopperAttention, lse),
        ],
        maps: &maps,
        memory,
    }
    .bytes();
    (file, plan.kernel)
}

/// Runs `case` on the emulator and checks it; returns the kernel's and
/// the naive same-precision reference's largest error.
fn check_case<T: AttentionElement>(
    kernel: AttentionKernel,
    exe: &Path,
    case: Case,
    seed: u64,
) -> (f64, f64) {
    let Case {
        batch: b,
        heads: h,
        q_len: n_q,
        kv_len: n_kv,
        head_dim: d,
        ..
    } = case;
    let mut rng = Rng(seed);
    let mut fill = |n: usize| -> Vec<T> {
        (0..n)
            .map(|_| T::from_f32(case.amplitude * rng.unit()))
            .collect()
    };
    let mut memory = Memory::default();
    let (layouts, addresses, inputs): ([AttentionLayout; 3], [u64; 3], Vec<Vec<T>>) =
        match case.arrangement {
            Arrangement::PackedQkv => {
                assert_eq!(n_q, n_kv);
                let layout = |part| AttentionLayout::packed_qkv(b, n_q, h, d, part);
                let qkv = fill(b * n_q * 3 * h * d);
                let at = memory.put(&qkv);
                let layouts = [QkvPart::Q, QkvPart::K, QkvPart::V].map(layout);
                (layouts, [at; 3], vec![qkv.clone(), qkv.clone(), qkv])
            }
            arrangement => {
                let layout = |n| match arrangement {
                    Arrangement::HeadsOuter => AttentionLayout::heads_outer(b, n, h, d),
                    _ => AttentionLayout::contiguous(b, n, h, d),
                };
                let layouts = [layout(n_q), layout(n_kv), layout(n_kv)];
                let data: Vec<Vec<T>> = layouts.iter().map(|l| fill(l.span().unwrap())).collect();
                let addresses = [0, 1, 2].map(|i| memory.put(&data[i]));
                (layouts, addresses, data)
            }
        };
    let row = h * d + if case.padded_out { 16 } else { 0 };
    let out_layout = AttentionLayout {
        strides: [n_q * row, row, d],
        ..AttentionLayout::contiguous(b, n_q, h, d)
    };
    let poison = T::from_f32(f32::NAN);
    let out_len = out_layout.span().unwrap();
    let out_at = memory.put(&vec![poison; out_len]);
    let lse_at = if case.lse {
        memory.put(&vec![f32::NAN; b * h * n_q])
    } else {
        0
    };
    let tensors = DeviceTensors {
        q: (addresses[0], &layouts[0]),
        k: (addresses[1], &layouts[1]),
        v: (addresses[2], &layouts[2]),
        out: (out_at, &out_layout),
        lse: lse_at,
    };
    let scale = default_scale(d);
    let (file, name) = launch_file::<T>(kernel, &tensors, scale, &memory);
    let after = host_emulation::run(exe, &file);
    let what = format!("{case:?} {name}");

    for (i, input) in inputs.iter().enumerate() {
        let now: Vec<T> = Memory::get(&after, addresses[i], input.len());
        let unchanged: &[u8] = bytemuck::cast_slice(input);
        assert!(
            bytemuck::cast_slice::<T, u8>(&now) == unchanged,
            "{what}: input {i} changed"
        );
    }
    let out: Vec<T> = Memory::get(&after, out_at, out_len);
    let mut inside = vec![false; out_len];
    for (bi, ni, hi) in
        (0..b).flat_map(|x| (0..n_q).flat_map(move |y| (0..h).map(move |z| (x, y, z))))
    {
        let s = out_layout.index(bi, ni, hi, 0);
        inside[s..s + d].fill(true);
    }
    for (i, (x, is_in)) in out.iter().zip(&inside).enumerate() {
        let bits_kept = bytemuck::bytes_of(x) == bytemuck::bytes_of(&poison);
        assert!(
            if *is_in {
                x.to_f32().is_finite()
            } else {
                bits_kept
            },
            "{what}: output element {i} ({} the layout) is {}",
            if *is_in { "inside" } else { "outside" },
            x.to_f32()
        );
    }

    let view = |i: usize| AttentionTensor::new(&inputs[i][..], layouts[i]);
    let (q, k, v) = (view(0), view(1), view(2));
    let (want, want_lse) = attention_f64(&q, &k, &v, f64::from(scale)).unwrap();
    let naive = attention_same_precision(&q, &k, &v, scale).unwrap();
    let dense = AttentionLayout::contiguous(b, n_q, h, d);
    let mut errors = attention_checks::FlashErrors::new(T::DTYPE);
    for bi in 0..b {
        for ni in 0..n_q {
            for hi in 0..h {
                let (s, r) = (out_layout.index(bi, ni, hi, 0), dense.index(bi, ni, hi, 0));
                for j in 0..d {
                    errors.add(
                        f64::from(out[s + j].to_f32()),
                        f64::from(naive[r + j].to_f32()),
                        want[r + j],
                    );
                }
            }
        }
    }
    // The GPU suite's rule (FlashAttention's): twice the naive error.
    let (err, naive_err) = errors.assert_within_rule(&what);
    if case.lse {
        let lse: Vec<f32> = Memory::get(&after, lse_at, b * h * n_q);
        for (i, (got, want)) in lse.iter().zip(&want_lse).enumerate() {
            let e = (f64::from(*got) - want).abs() / (1.0 + want.abs());
            assert!(e <= 1e-4, "{what}: LSE {i} is {got}, want {want}");
        }
    }
    (err, naive_err)
}

fn case(
    (batch, heads, q_len, kv_len, head_dim): (usize, usize, usize, usize, usize),
    arrangement: Arrangement,
    padded_out: bool,
    lse: bool,
) -> Case {
    Case {
        batch,
        heads,
        q_len,
        kv_len,
        head_dim,
        arrangement,
        padded_out,
        lse,
        amplitude: 1.0,
    }
}

/// Tails of one key and one query; Nq != Nkv both ways; every input
/// arrangement (for the Hopper kernel: token- or head-inner tensor maps);
/// K/V pipelines wrapping several times; last query tiles with one active
/// warp or warpgroup; padded output rows; both dtypes and head dims. The
/// bool picks f16.
fn cases() -> [(Case, bool); 6] {
    use Arrangement::*;
    [
        (case((1, 1, 1, 1, 64), Contiguous, false, true), false),
        (case((2, 3, 65, 130, 128), HeadsOuter, false, true), true),
        (case((1, 2, 129, 129, 128), PackedQkv, true, false), false),
        (case((2, 2, 200, 63, 64), Contiguous, true, true), true),
        (case((1, 2, 257, 257, 64), PackedQkv, false, true), false),
        (case((1, 1, 1025, 1025, 64), PackedQkv, false, true), true),
    ]
}

fn matches_the_f64_reference(kernel: AttentionKernel) {
    let Some(exe) = emulator(kernel, "address") else {
        return;
    };
    let base = host_emulation::fresh_seed(&format!("{kernel:?} matches the f64 reference"));
    for (i, (case, f16)) in cases().into_iter().enumerate() {
        let seed = base.wrapping_add(i as u64);
        let (err, naive) = if f16 {
            check_case::<f16>(kernel, &exe, case, seed)
        } else {
            check_case::<bf16>(kernel, &exe, case, seed)
        };
        eprintln!("{kernel:?} {case:?} f16 {f16}: max error {err:.2e}, naive {naive:.2e}");
    }
}

/// Small cases whose K/V pipelines wrap twice or more (5+ tiles over 2
/// stages: every stage is refilled after a release) and end in a key tail.
fn has_no_data_race(kernel: AttentionKernel) {
    let Some(exe) = emulator(kernel, "thread") else {
        return;
    };
    use Arrangement::*;
    let seed = host_emulation::fresh_seed(&format!("{kernel:?} has no data race"));
    check_case::<bf16>(
        kernel,
        &exe,
        case((1, 1, 130, 600, 64), Contiguous, false, true),
        seed,
    );
    check_case::<f16>(
        kernel,
        &exe,
        case((1, 1, 65, 520, 128), HeadsOuter, true, false),
        seed.wrapping_add(1),
    );
}

/// A GPU runs a grid's blocks in no set order, and the emulator runs each
/// grid in launch order and again in reverse: an output view whose head
/// stride is 0 has the two heads' blocks write the same elements, with
/// different values, so the last block to write differs between the orders.
#[test]
fn blocks_that_write_the_same_output_fail_the_emulated_run() {
    let Some(exe) = emulator(AttentionKernel::Portable, "address") else {
        return;
    };
    let (b, n, h, d) = (1, 64, 2, 64);
    let layout = AttentionLayout::contiguous(b, n, h, d);
    let mut rng = Rng(31);
    let mut memory = Memory::default();
    let [q, k, v] = [0; 3].map(|_| {
        let data: Vec<bf16> = (0..layout.span().unwrap())
            .map(|_| bf16::from_f32(rng.unit()))
            .collect();
        memory.put(&data)
    });
    let out_layout = AttentionLayout {
        strides: [n * d, d, 0],
        ..layout
    };
    let out = memory.put(&vec![bf16::NAN; n * d]);
    let tensors = DeviceTensors {
        q: (q, &layout),
        k: (k, &layout),
        v: (v, &layout),
        out: (out, &out_layout),
        lse: 0,
    };
    let (file, _) = launch_file::<bf16>(AttentionKernel::Portable, &tensors, 0.125, &memory);
    host_emulation::assert_run_stops(&exe, &file, "after it ran in reverse");
}

#[test]
fn portable_kernel_source_on_the_cpu_matches_the_f64_reference() {
    matches_the_f64_reference(AttentionKernel::Portable);
}

#[test]
fn portable_kernel_source_on_the_cpu_has_no_data_race() {
    has_no_data_race(AttentionKernel::Portable);
}

#[test]
fn hopper_kernel_source_on_the_cpu_matches_the_f64_reference() {
    matches_the_f64_reference(AttentionKernel::Hopper);
}

#[test]
fn hopper_kernel_source_on_the_cpu_has_no_data_race() {
    has_no_data_race(AttentionKernel::Hopper);
}

#[test]
fn hopper_serial_kernel_source_on_the_cpu_matches_the_f64_reference() {
    matches_the_f64_reference(AttentionKernel::HopperSerial);
}

#[test]
fn hopper_serial_kernel_source_on_the_cpu_has_no_data_race() {
    has_no_data_race(AttentionKernel::HopperSerial);
}

#[test]
fn hopper_pingpong_kernel_source_on_the_cpu_matches_the_f64_reference() {
    matches_the_f64_reference(AttentionKernel::HopperPingPong);
}

#[test]
fn hopper_pingpong_kernel_source_on_the_cpu_has_no_data_race() {
    has_no_data_race(AttentionKernel::HopperPingPong);
}

#[test]
fn hopper_persistent_kernel_source_on_the_cpu_matches_the_f64_reference() {
    matches_the_f64_reference(AttentionKernel::HopperPersistent);
}

#[test]
fn hopper_persistent_kernel_source_on_the_cpu_has_no_data_race() {
    has_no_data_race(AttentionKernel::HopperPersistent);
}

/// A whole number in `0..n`.
fn below(rng: &mut Rng, n: usize) -> usize {
    (((rng.unit() + 1.0) * 0.5 * n as f32) as usize).min(n - 1)
}

/// A sequence length, at or next to a 64-token edge half the time (where
/// tiles, warps and warpgroups end), else anything from 1 to 300.
fn random_len(rng: &mut Rng) -> usize {
    if below(rng, 2) == 0 {
        let edge = 64 * below(rng, 5) as isize;
        let offset = [-17, -16, -15, -1, 0, 1, 15, 16, 17][below(rng, 9)];
        (edge + offset).max(1) as usize
    } else {
        1 + below(rng, 300)
    }
}

/// A random case of at most 4 heads in all (the emulator runs each CTA's
/// threads as host threads), any arrangement, amplitude 1, 2 or 4.
fn random_case(rng: &mut Rng) -> (Case, bool) {
    use Arrangement::*;
    let arrangement = [Contiguous, PackedQkv, HeadsOuter][below(rng, 3)];
    let q_len = random_len(rng);
    let kv_len = if arrangement == PackedQkv {
        q_len
    } else {
        random_len(rng)
    };
    let batch = 1 + below(rng, 2);
    let c = Case {
        amplitude: [1.0, 2.0, 4.0][below(rng, 3)],
        ..case(
            (
                batch,
                1 + below(rng, 4 / batch),
                q_len,
                kv_len,
                [64, 128][below(rng, 2)],
            ),
            arrangement,
            below(rng, 2) == 0,
            below(rng, 2) == 0,
        )
    };
    (c, below(rng, 2) == 0)
}

/// A longer search than the suite's six cases, on every kernel: run by
/// hand, `NVLM_VISION_EMULATED_CASES=<n per kernel> cargo test --lib
/// random_cases -- --ignored --nocapture` (default 8; `NVLM_VISION_SEED`
/// repeats a draw).
#[test]
#[ignore = "minutes per kernel; run by hand"]
fn random_cases_on_every_kernel_meet_the_f64_reference() {
    let (count, seed) =
        host_emulation::random_search("random_cases_on_every_kernel_meet_the_f64_reference");
    for kernel in [
        AttentionKernel::Portable,
        AttentionKernel::HopperSerial,
        AttentionKernel::Hopper,
        AttentionKernel::HopperPingPong,
        AttentionKernel::HopperPersistent,
    ] {
        let Some(exe) = emulator(kernel, "address") else {
            return;
        };
        let mut rng = Rng(seed);
        for i in 0..count {
            let (case, f16) = random_case(&mut rng);
            let draw = seed.wrapping_add(i);
            let (err, naive) = if f16 {
                check_case::<f16>(kernel, &exe, case, draw)
            } else {
                check_case::<bf16>(kernel, &exe, case, draw)
            };
            eprintln!("{kernel:?} {case:?} f16 {f16}: max error {err:.2e}, naive {naive:.2e}");
        }
    }
}

/// qk-RMSNorm over NVLM's padded rows (dummy heads and v untouched) and
/// unpadded ones, in both dtypes, within the GPU suite's two units.
fn rms_norm_case<T: AttentionElement>(exe: &Path, rows: QkvRows, seed: u64) {
    let mut rng = Rng(seed);
    let mut fill = |n: usize, amplitude: f32| -> Vec<T> {
        (0..n)
            .map(|_| T::from_f32(amplitude * rng.unit()))
            .collect()
    };
    let before = fill(rows.tokens * rows.row_len(), 3.0);
    let q_weight = fill(rows.heads_padded * rows.head_dim, 2.0);
    let k_weight = fill(rows.heads_padded * rows.head_dim, 2.0);
    let mut want = before.clone();
    qk_rms_norm_reference(&mut want, &rows, &q_weight, &k_weight, 1e-6).unwrap();
    let mut memory = Memory::default();
    let addresses = [
        memory.put(&before),
        memory.put(&q_weight),
        memory.put(&k_weight),
    ];
    let (params, config) = rms_norm_launch(&rows, addresses, 1e-6);
    let name = format!("qk_rms_norm_{}", T::KERNEL_SUFFIX);
    let file = LaunchFile {
        kernel: &name,
        config,
        // SAFETY: abi.h's structs have no padding.
        params: unsafe { host_emulation::param_bytes(&params) },
        pointers: &[
            offset_of!(NvlmQkRmsNorm, qkv),
            offset_of!(NvlmQkRmsNorm, q_weight),
            offset_of!(NvlmQkRmsNorm, k_weight),
        ],
        maps: &[],
        memory: &memory,
    }
    .bytes();
    let got: Vec<T> = Memory::get(&host_emulation::run(exe, &file), addresses[0], before.len());
    attention_checks::check_qk_rms_norm(&rows, &before, &want, &got);
}

#[test]
fn qk_rms_norm_source_on_the_cpu_matches_the_reference() {
    let Some(exe) = emulator(AttentionKernel::Portable, "address") else {
        return;
    };
    let padded = QkvRows {
        tokens: 3,
        heads_padded: 32,
        heads_real: 25,
        head_dim: 128,
    };
    let plain = QkvRows {
        tokens: 2,
        heads_padded: 3,
        heads_real: 3,
        head_dim: 64,
    };
    let seed = host_emulation::fresh_seed("qk_rms_norm_source_on_the_cpu_matches_the_reference");
    rms_norm_case::<bf16>(&exe, padded, seed);
    rms_norm_case::<f16>(&exe, plain, seed.wrapping_add(1));
}
