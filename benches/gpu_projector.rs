//! The projector on a GPU, 7 tiles, bf16, NVLM-D-72B and 34B dims, the
//! same work `scripts/peer_projector.py` times in torch eager:
//!
//! - `nvlm-front`: pixel_shuffle + LayerNorm (one kernel);
//! - `nvlm-exact-gelu`: the whole projector with the exact erf GELU;
//! - `nvlm-cublaslt-gelu`: the whole projector with cuBLASLt's fused GELU
//!   epilogue (approximate);
//! - `cublaslt-gemms-only`: the two GEMMs alone (the floor of the rest);
//! - on compute capability 9.0 (unless `NVLM_VISION_BENCH_SKIP_HOPPER` is
//!   set), the crate's sm_90a Linear
//!   (kernels/projector_hopper.cu): `nvlm-hopper-linear`, the whole
//!   projector with Linear 1 + exact GELU in it; `linear1-hopper-gelu`
//!   against `linear1-cublaslt-gelu-pass` (cuBLASLt, then the GELU kernel:
//!   what it replaces) and against `linear1-hopper-gelu-n256` (the 256-wide
//!   tile, whichever width the GPU's waves pick for the row before);
//!   `linear2-hopper` against `linear2-cublaslt` (a plain GEMM: its main
//!   loop against cuBLAS's).
//!
//! Inputs rotate among sets larger than L2. Skips without a GPU. Both
//! configurations' portable ids run before any sm_90a one: a fault there
//! (which ends the process) cannot lose them.

mod common;

use common::{DeviceGroup, bench_hopper, device_time, gpu_or_skip};
use criterion::{Criterion, criterion_group, criterion_main};
use cudarc::driver::CudaSlice;
use half::bf16;
use nvlm_vision::cuda::Gpu;
use nvlm_vision::gemm::{Epilogue, LinearShape};
use nvlm_vision::projector::gpu::{Projector, ProjectorWeights};
use nvlm_vision::projector::hopper::TileWidth;
use nvlm_vision::projector::{GeluMode, ProjectorConfig};
use std::sync::Arc;

const TILES: usize = 7;
/// Input sets: 4 × 46 MB (NVLM-D) is more than an H100's or H200's 50 MB L2.
const INPUT_SETS: usize = 4;

/// Uniform values in [-scale, scale] (xorshift; the values only need to be
/// non-trivial), on the device.
fn random(gpu: &Gpu, n: usize, scale: f32, seed: u64) -> CudaSlice<bf16> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let host: Vec<bf16> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            bf16::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale)
        })
        .collect();
    gpu.stream().clone_htod(&host).expect("copy to device")
}

/// Which of a configuration's ids to run.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    /// The front, the whole projector (exact and approximate GELU) and the
    /// cuBLASLt GEMMs alone.
    Portable,
    /// The sm_90a Linear and the per-GEMM ids it is compared with (only
    /// where `bench_hopper` allows).
    Hopper,
}

fn bench_config(c: &mut Criterion, gpu: &Arc<Gpu>, cfg: ProjectorConfig, part: Part) {
    let case = format!("{}_T{TILES}", cfg.name);
    let (k1, h1, h2) = (cfg.row_width(), cfg.linear1_out, cfg.output_width());
    let rows = cfg.output_rows(TILES);
    let gamma = random(gpu, k1, 1.0, 1);
    let beta = random(gpu, k1, 0.5, 2);
    let w1 = random(gpu, h1 * k1, (3.0 / k1 as f32).sqrt(), 3);
    let w2 = random(gpu, h2 * h1, (3.0 / h1 as f32).sqrt(), 4);
    let inputs: Vec<CudaSlice<bf16>> = (0..INPUT_SETS)
        .map(|i| {
            random(
                gpu,
                TILES * cfg.tokens_per_tile() * cfg.vit_hidden,
                2.0,
                10 + i as u64,
            )
        })
        .collect();
    let weights = ProjectorWeights {
        ln_gamma: gamma.slice(..),
        ln_beta: beta.slice(..),
        w1: w1.slice(..),
        b1: None,
        w2: Some(w2.slice(..)),
        b2: None,
    };
    let exact = Projector::new(cfg.clone(), gpu.clone()).expect("projector");
    let approx = Projector::new(
        ProjectorConfig {
            gelu: GeluMode::CublasLtApproximate,
            ..cfg.clone()
        },
        gpu.clone(),
    )
    .expect("projector");
    let mut ws = exact.workspace::<bf16>(TILES).expect("workspace");
    // SAFETY: written by the benched launches before anything reads them.
    let mut out = unsafe { gpu.stream().alloc::<bf16>(rows * h2) }.expect("alloc output");
    let mut front = unsafe { gpu.stream().alloc::<bf16>(rows * k1) }.expect("alloc front output");
    let input = |i: u64| inputs[i as usize % INPUT_SETS].slice(..);

    let gb = 2.0 * (TILES * cfg.tokens_per_tile() * cfg.vit_hidden + rows * k1) as f64 / 1e9;
    let tflop = 2.0 * rows as f64 * (k1 * h1 + h1 * h2) as f64 / 1e12;
    eprintln!(
        "{case}: front moves {:.1} MB (floor {:.1} us at 3.0 TB/s); GEMMs {:.2} TFLOP (floor {:.0} us at 686 TFLOP/s)",
        gb * 1e3,
        gb / 3.0e3 * 1e6,
        tflop,
        tflop / 686.0 * 1e6
    );

    let mut group = DeviceGroup::new(c, "projector");
    group.group.sample_size(20);
    // The GEMMs alone, on fixed activations (their content does not change
    // the GEMMs' work).
    let x = random(gpu, rows * k1, 1.0, 20);
    let mut hidden = random(gpu, rows * h1, 1.0, 21);
    if part == Part::Portable {
        group.bench(&format!("nvlm-front/{case}"), |iters| {
            device_time(gpu, iters, |i| {
                exact
                    .kernels()
                    .front(
                        &cfg,
                        &input(i),
                        TILES,
                        &weights.ln_gamma,
                        &weights.ln_beta,
                        &mut front.slice_mut(..),
                    )
                    .expect("front")
            })
        });
        for (id, projector) in [("nvlm-exact-gelu", &exact), ("nvlm-cublaslt-gelu", &approx)] {
            group.bench(&format!("{id}/{case}"), |iters| {
                device_time(gpu, iters, |i| {
                    projector
                        .forward(&input(i), TILES, &weights, &mut ws, &mut out.slice_mut(..))
                        .expect("forward")
                })
            });
        }
        group.bench(&format!("cublaslt-gemms-only/{case}"), |iters| {
            device_time(gpu, iters, |_| {
                let gemm = exact.gemm();
                gemm.linear(
                    &x.slice(..),
                    &weights.w1,
                    None,
                    &mut hidden.slice_mut(..),
                    LinearShape {
                        m: rows,
                        n: h1,
                        k: k1,
                    },
                    Epilogue::None,
                )
                .expect("gemm 1");
                gemm.linear(
                    &hidden.slice(..),
                    weights.w2.as_ref().unwrap(),
                    None,
                    &mut out.slice_mut(..),
                    LinearShape {
                        m: rows,
                        n: h2,
                        k: h1,
                    },
                    Epilogue::None,
                )
                .expect("gemm 2");
            })
        });
    }
    if part == Part::Hopper {
        let hopper = Projector::new(
            ProjectorConfig {
                gelu: GeluMode::ExactErfHopperLinear,
                ..cfg.clone()
            },
            gpu.clone(),
        )
        .expect("projector");
        group.bench(&format!("nvlm-hopper-linear/{case}"), |iters| {
            device_time(gpu, iters, |i| {
                hopper
                    .forward(&input(i), TILES, &weights, &mut ws, &mut out.slice_mut(..))
                    .expect("forward")
            })
        });
        let shape1 = LinearShape {
            m: rows,
            n: h1,
            k: k1,
        };
        let shape2 = LinearShape {
            m: rows,
            n: h2,
            k: h1,
        };
        group.bench(&format!("linear1-cublaslt-gelu-pass/{case}"), |iters| {
            device_time(gpu, iters, |_| {
                let mut h = hidden.slice_mut(..);
                exact
                    .gemm()
                    .linear(
                        &x.slice(..),
                        &weights.w1,
                        None,
                        &mut h,
                        shape1,
                        Epilogue::None,
                    )
                    .expect("gemm 1");
                exact
                    .kernels()
                    .bias_gelu(&mut h, rows, h1, None, true)
                    .expect("gelu");
            })
        });
        // The width the GPU's waves pick, and the 256-wide tile whatever
        // the GPU: what the choice buys (PERF.md, projector v2.1).
        let chosen = exact
            .kernels()
            .linear_hopper_width(shape1)
            .expect("sm_90a linear 1 width");
        for (id, width) in [
            ("linear1-hopper-gelu", chosen),
            ("linear1-hopper-gelu-n256", TileWidth::Wide),
        ] {
            group.bench(&format!("{id}/{case}"), |iters| {
                device_time(gpu, iters, |_| {
                    exact
                        .kernels()
                        .linear_hopper_tiled(
                            &x.slice(..),
                            &weights.w1,
                            None,
                            &mut hidden.slice_mut(..),
                            shape1,
                            true,
                            width,
                        )
                        .expect("sm_90a linear 1")
                })
            });
        }
        group.bench(&format!("linear2-cublaslt/{case}"), |iters| {
            device_time(gpu, iters, |_| {
                exact
                    .gemm()
                    .linear(
                        &hidden.slice(..),
                        weights.w2.as_ref().unwrap(),
                        None,
                        &mut out.slice_mut(..),
                        shape2,
                        Epilogue::None,
                    )
                    .expect("gemm 2")
            })
        });
        group.bench(&format!("linear2-hopper/{case}"), |iters| {
            device_time(gpu, iters, |_| {
                exact
                    .kernels()
                    .linear_hopper(
                        &hidden.slice(..),
                        weights.w2.as_ref().unwrap(),
                        None,
                        &mut out.slice_mut(..),
                        shape2,
                        false,
                    )
                    .expect("sm_90a linear 2")
            })
        });
    }
    group.finish();
}

fn projector(c: &mut Criterion) {
    let Some(gpu) = gpu_or_skip("gpu_projector") else {
        return;
    };
    let configs = [ProjectorConfig::nvlm_d_72b(), ProjectorConfig::nvlm_d_34b()];
    for cfg in &configs {
        bench_config(c, &gpu, cfg.clone(), Part::Portable);
    }
    if bench_hopper(&gpu, "the sm_90a Linear") {
        for cfg in configs {
            bench_config(c, &gpu, cfg, Part::Hopper);
        }
    }
}

criterion_group!(benches, projector);
criterion_main!(benches);
