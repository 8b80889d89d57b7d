//! The projector on a GPU against the f64 CPU reference: the fused front
//! kernel, the bias + exact GELU kernel, the cuBLASLt GEMM wrapper, the
//! sm_90a Linear (tests named `*hopper*`, skipped on other GPUs), the
//! whole projector for every variant, NVLM-D-72B at model shapes on
//! sampled rows, and a measurement of what cuBLASLt's GELU epilogue
//! computes. Without a GPU each test prints "skipped" and passes.

mod common;

use common::gpu::{
    assert_refused_as_of_device_1, gpu_or_skip, hopper_or_skip, two_devices_or_skip,
};
use common::projector_checks::{check_bias_gelu_output, check_front_output};
use common::{Rng, SameBitsEveryRun};
use cudarc::driver::{CudaSlice, DeviceRepr};
use half::{bf16, f16};
use nvlm_vision::Error;
use nvlm_vision::dtype::{Dtype, TensorElement};
use nvlm_vision::gemm::{Epilogue, Gemm, LinearShape};
use nvlm_vision::projector::cpu::{self, HostWeights, gelu_erf, gelu_tanh};
use nvlm_vision::projector::gpu::{Projector, ProjectorKernels, ProjectorWeights};
use nvlm_vision::projector::hopper::TileWidth;
use nvlm_vision::projector::{GeluMode, ProjectorConfig, PsVersion};
use std::sync::Arc;

/// The 16-bit element types, with what the tests need beyond the crate's.
trait Half: TensorElement + DeviceRepr {
    fn to_f64(self) -> f64;
    fn nan() -> Self;
    /// Relative spacing of the type near 1 (2^-8 for bf16, 2^-11 for f16
    /// counting the implicit bit: half an ulp is the rounding error).
    const EPS: f64;
}

impl Half for bf16 {
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn nan() -> Self {
        bf16::NAN
    }
    const EPS: f64 = 1.0 / 256.0;
}

impl Half for f16 {
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn nan() -> Self {
        f16::NAN
    }
    const EPS: f64 = 1.0 / 2048.0;
}

fn uniform(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale)
        .collect()
}

/// `values` rounded to T: the device copy and the f32 values it holds.
fn to_device<T: Half>(gpu: &nvlm_vision::cuda::Gpu, values: &[f32]) -> (CudaSlice<T>, Vec<f32>) {
    let narrow: Vec<T> = values.iter().map(|&v| T::from_f32(v)).collect();
    let exact = narrow.iter().map(|&v| v.to_f64() as f32).collect();
    (gpu.stream().clone_htod(&narrow).unwrap(), exact)
}

fn poisoned<T: Half>(gpu: &nvlm_vision::cuda::Gpu, n: usize) -> CudaSlice<T> {
    gpu.stream().clone_htod(&vec![T::nan(); n]).unwrap()
}

fn download<T: Half>(gpu: &nvlm_vision::cuda::Gpu, s: &CudaSlice<T>) -> Vec<f64> {
    gpu.stream().synchronize().unwrap();
    gpu.stream()
        .clone_dtoh(s)
        .unwrap()
        .into_iter()
        .map(|v| v.to_f64())
        .collect()
}

/// ‖out − ref‖ / ‖ref‖ and max |out − ref|, after asserting every element
/// was written (no NaN from the poison).
fn compare(what: &str, out: &[f64], reference: &[f64]) -> (f64, f64) {
    assert_eq!(out.len(), reference.len(), "{what}: lengths");
    let unwritten = out.iter().filter(|v| !v.is_finite()).count();
    assert_eq!(
        unwritten, 0,
        "{what}: {unwritten} elements not written (NaN poison)"
    );
    let (mut diff2, mut ref2, mut max_abs) = (0.0, 0.0, 0.0f64);
    for (o, r) in out.iter().zip(reference) {
        diff2 += (o - r) * (o - r);
        ref2 += r * r;
        max_abs = max_abs.max((o - r).abs());
    }
    let rel = (diff2 / ref2).sqrt();
    eprintln!("{what}: rel {rel:.2e}, max abs {max_abs:.2e}");
    (rel, max_abs)
}

/// [`compare`], then ‖out − ref‖ / ‖ref‖ < `tol` and max |out − ref| ≤
/// 2·`tol`·max |ref|: the norm alone would hide a few wrong elements among
/// many. Each test's `tol` is a few roundings of its type, and one
/// rounding moves an element by at most one ulp, 2·EPS of its magnitude.
fn assert_close(what: &str, out: &[f64], reference: &[f64], tol: f64) {
    let (rel, max_abs) = compare(what, out, reference);
    assert!(rel < tol, "{what}: rel {rel:e} (tolerance {tol:e})");
    let largest = reference.iter().fold(0.0f64, |m, r| m.max(r.abs()));
    assert!(
        max_abs <= 2.0 * tol * largest,
        "{what}: max abs {max_abs:e} > 2 x {tol:e} x max |ref| {largest:e}"
    );
}

fn small_config(c: usize, cls: bool, ps: PsVersion) -> ProjectorConfig {
    ProjectorConfig {
        name: "test",
        vit_hidden: c,
        grid_side: 32,
        cls_token: cls,
        ps_version: ps,
        ln_eps: 1e-5,
        linear1_out: 72,
        linear2_out: Some(40),
        bias: false,
        gelu: GeluMode::ExactErf,
    }
}

fn front_case<T: Half>(
    gpu: &Arc<nvlm_vision::cuda::Gpu>,
    rng: &mut Rng,
    cfg: &ProjectorConfig,
    tiles: usize,
    offset: usize,
) {
    let kernels = ProjectorKernels::new(gpu.clone());
    let n_in = tiles * cfg.tokens_per_tile() * cfg.vit_hidden;
    // A per-tile offset so the mean is far from 0 (LayerNorm must subtract it).
    let raw: Vec<f32> = uniform(rng, offset + n_in, 3.0)
        .iter()
        .map(|v| v + 1.5)
        .collect();
    let (input, in_vals) = to_device::<T>(gpu, &raw);
    let (gamma, gamma_vals) = to_device::<T>(gpu, &uniform(rng, cfg.row_width(), 2.0));
    let (beta, beta_vals) = to_device::<T>(gpu, &uniform(rng, cfg.row_width(), 1.0));
    let n_out = cfg.output_rows(tiles) * cfg.row_width();
    // Poison before and after the output view, to see writes outside it.
    let mut out = poisoned::<T>(gpu, offset + n_out + 8);
    kernels
        .front(
            cfg,
            &input.slice(offset..),
            tiles,
            &gamma.slice(..),
            &beta.slice(..),
            &mut out.slice_mut(offset..offset + n_out),
        )
        .unwrap();
    let got = download(gpu, &out);
    let w = HostWeights {
        ln_gamma: gamma_vals,
        ln_beta: beta_vals,
        w1: vec![],
        b1: None,
        w2: None,
        b2: None,
    };
    let reference = cpu::front(cfg, &in_vals[offset..], tiles, &w);
    let what = format!(
        "front {:?} C={} cls={} {:?} tiles={tiles} offset={offset}",
        T::DTYPE,
        cfg.vit_hidden,
        cfg.cls_token,
        cfg.ps_version
    );
    let view = &got[offset..offset + n_out];
    compare(&what, view, &reference);
    check_front_output(&what, view, &reference, T::EPS, cfg.row_width());
    assert!(
        got[..offset]
            .iter()
            .chain(&got[offset + n_out..])
            .all(|v| v.is_nan()),
        "{what}: wrote outside its view"
    );
}

#[test]
fn front_matches_cpu_both_ps_versions_cls_and_dtypes() {
    let Some(gpu) = gpu_or_skip("front_matches_cpu_both_ps_versions_cls_and_dtypes") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("front_matches_cpu");
    for ps in [PsVersion::V1, PsVersion::V2] {
        for cls in [true, false] {
            // 16-byte path (C % 8 == 0: 1, 1, 2, 4, 8 chunks per thread) and
            // the scalar path (odd C).
            for (c, tiles) in [
                (8, 2),
                (200, 3),
                (1024, 2),
                (1600, 1),
                (3200, 2),
                (7, 3),
                (13, 2),
            ] {
                let cfg = small_config(c, cls, ps);
                front_case::<bf16>(&gpu, &mut rng, &cfg, tiles, 0);
                front_case::<f16>(&gpu, &mut rng, &cfg, tiles, 0);
            }
        }
    }
}

#[test]
fn front_misaligned_views_take_the_scalar_path_or_are_refused() {
    let Some(gpu) = gpu_or_skip("front_misaligned_views_take_the_scalar_path_or_are_refused")
    else {
        return;
    };
    let mut rng = Rng::from_env_or_time("front_misaligned");
    // An input view starting one element in: not 16-byte aligned.
    let cfg = small_config(64, true, PsVersion::V2);
    front_case::<bf16>(&gpu, &mut rng, &cfg, 2, 1);
    front_case::<f16>(&gpu, &mut rng, &cfg, 1, 3);
    // C = 3200 has no scalar kernel: refused before any launch.
    let cfg = small_config(3200, true, PsVersion::V2);
    let kernels = ProjectorKernels::new(gpu.clone());
    let n_in = cfg.tokens_per_tile() * 3200;
    let input = poisoned::<bf16>(&gpu, n_in + 1);
    let gamma = poisoned::<bf16>(&gpu, 12800);
    let mut out = poisoned::<bf16>(&gpu, 256 * 12800);
    let r = kernels.front(
        &cfg,
        &input.slice(1..),
        1,
        &gamma.slice(..),
        &gamma.slice(..),
        &mut out.slice_mut(..),
    );
    assert!(
        matches!(r, Err(Error::Unsupported(ref m)) if m.contains("16-byte aligned")),
        "{r:?}"
    );
}

/// `data[rows, cols] = gelu?(data + bias?)` in place in `T` against the
/// f64 values of its inputs; 8 NaN elements after the view stay NaN.
fn bias_gelu_case<T: Half>(
    gpu: &Arc<nvlm_vision::cuda::Gpu>,
    kernels: &ProjectorKernels,
    rng: &mut Rng,
    (rows, cols): (usize, usize),
    with_bias: bool,
    gelu: bool,
) {
    let n = rows * cols;
    let mut raw = uniform(rng, n, 5.0);
    raw.extend([f32::NAN; 8]);
    let (mut data, x) = to_device::<T>(gpu, &raw);
    let (bias, b) = to_device::<T>(gpu, &uniform(rng, cols, 1.0));
    kernels
        .bias_gelu(
            &mut data.slice_mut(..n),
            rows,
            cols,
            with_bias.then(|| bias.slice(..)).as_ref(),
            gelu,
        )
        .unwrap();
    let got = download(gpu, &data);
    let what = format!(
        "bias_gelu {:?} [{rows}, {cols}] bias={with_bias} gelu={gelu}",
        T::DTYPE
    );
    check_bias_gelu_output(
        &what,
        &got[..n],
        (&x[..n], with_bias.then_some(&b[..])),
        gelu.then_some(gelu_erf as fn(f64) -> f64),
        T::EPS,
    );
    assert!(
        got[n..].iter().all(|v| v.is_nan()),
        "{what}: wrote past its rows"
    );
}

#[test]
fn bias_gelu_matches_cpu() {
    let Some(gpu) = gpu_or_skip("bias_gelu_matches_cpu") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("bias_gelu");
    let kernels = ProjectorKernels::new(gpu.clone());
    // cols % 8 == 0 (16-byte path) and odd cols (scalar path).
    for shape in [(37, 64), (5, 29568 / 8), (13, 7), (3, 1)] {
        for (with_bias, gelu) in [(true, true), (true, false), (false, true)] {
            bias_gelu_case::<bf16>(&gpu, &kernels, &mut rng, shape, with_bias, gelu);
            bias_gelu_case::<f16>(&gpu, &kernels, &mut rng, shape, with_bias, gelu);
        }
    }
}

/// Runs `launch` three times, each into a fresh NaN-poisoned buffer of
/// `len` elements, and asserts that every run wrote every element and that
/// all runs agree bit for bit: a result that moves between runs is a race,
/// which the error rule passes when it is small.
fn assert_same_bits_every_run(
    gpu: &nvlm_vision::cuda::Gpu,
    what: &str,
    len: usize,
    mut launch: impl FnMut(&mut CudaSlice<bf16>),
) {
    let mut bits = SameBitsEveryRun::new(what.to_string());
    for run in 0..3 {
        let mut out = poisoned::<bf16>(gpu, len);
        launch(&mut out);
        let got: Vec<bf16> = gpu.stream().clone_dtoh(&out).unwrap();
        assert!(
            got.iter().all(|v| !v.is_nan()),
            "{what}: run {run} left elements unwritten"
        );
        bits.check(run, got.iter().map(|v| v.to_bits()).collect());
    }
}

/// The front (the 16-byte and the scalar kernel) and bias + GELU give the
/// same bits on every run.
#[test]
fn front_and_bias_gelu_give_the_same_bits_on_every_run() {
    let test = "front_and_bias_gelu_give_the_same_bits_on_every_run";
    let Some(gpu) = gpu_or_skip(test) else {
        return;
    };
    let mut rng = Rng::from_env_or_time(test);
    let kernels = ProjectorKernels::new(gpu.clone());
    for (c, tiles) in [(3200, 2), (13, 3)] {
        let cfg = small_config(c, true, PsVersion::V2);
        let n_in = tiles * cfg.tokens_per_tile() * c;
        let (input, _) = to_device::<bf16>(&gpu, &uniform(&mut rng, n_in, 3.0));
        let (gamma, _) = to_device::<bf16>(&gpu, &uniform(&mut rng, cfg.row_width(), 2.0));
        let (beta, _) = to_device::<bf16>(&gpu, &uniform(&mut rng, cfg.row_width(), 1.0));
        let len = cfg.output_rows(tiles) * cfg.row_width();
        assert_same_bits_every_run(&gpu, &format!("front C={c}"), len, |out| {
            kernels
                .front(
                    &cfg,
                    &input.slice(..),
                    tiles,
                    &gamma.slice(..),
                    &beta.slice(..),
                    &mut out.slice_mut(..),
                )
                .unwrap()
        });
    }
    let (rows, cols) = (300, 1000);
    let (data, _) = to_device::<bf16>(&gpu, &uniform(&mut rng, rows * cols, 5.0));
    let (bias, _) = to_device::<bf16>(&gpu, &uniform(&mut rng, cols, 1.0));
    assert_same_bits_every_run(&gpu, "bias + GELU", rows * cols, |out| {
        gpu.stream().memcpy_dtod(&data, out).unwrap();
        kernels
            .bias_gelu(
                &mut out.slice_mut(..),
                rows,
                cols,
                Some(&bias.slice(..)),
                true,
            )
            .unwrap()
    });
}

/// The sm_90a Linear, both tile widths, gives the same bits on every run.
#[test]
fn hopper_linear_gives_the_same_bits_on_every_run() {
    let test = "hopper_linear_gives_the_same_bits_on_every_run";
    let Some(gpu) = hopper_or_skip(test) else {
        return;
    };
    let mut rng = Rng::from_env_or_time(test);
    let kernels = ProjectorKernels::new(gpu.clone());
    let s = LinearShape {
        m: 257,
        n: 512,
        k: 1288,
    };
    let LinearOperands { x, w, b, .. } = linear_operands::<bf16>(&gpu, &mut rng, s);
    for width in [TileWidth::Wide, TileWidth::Narrow] {
        assert_same_bits_every_run(&gpu, &format!("sm_90a Linear {width:?}"), s.m * s.n, |y| {
            kernels
                .linear_hopper_tiled(
                    &x.slice(..),
                    &w.slice(..),
                    Some(&b.slice(..)),
                    &mut y.slice_mut(..),
                    s,
                    true,
                    width,
                )
                .unwrap()
        });
    }
}

/// A Linear's random operands on the device and, rounded to `T`, on the
/// host: x `[m, k]` in [-1, 1], w `[n, k]` scaled by sqrt(3 / k), bias `[n]`.
struct LinearOperands<T> {
    x: CudaSlice<T>,
    w: CudaSlice<T>,
    b: CudaSlice<T>,
    xv: Vec<f32>,
    wv: Vec<f32>,
    bv: Vec<f32>,
}

fn linear_operands<T: Half>(
    gpu: &nvlm_vision::cuda::Gpu,
    rng: &mut Rng,
    s: LinearShape,
) -> LinearOperands<T> {
    let scale = (3.0 / s.k as f32).sqrt();
    let (x, xv) = to_device::<T>(gpu, &uniform(rng, s.m * s.k, 1.0));
    let (w, wv) = to_device::<T>(gpu, &uniform(rng, s.n * s.k, scale));
    let (b, bv) = to_device::<T>(gpu, &uniform(rng, s.n, 1.0));
    LinearOperands {
        x,
        w,
        b,
        xv,
        wv,
        bv,
    }
}

/// The f64 `x · wᵀ (+ bias)` of those operands, row-major `[m, n]`.
fn linear_reference(xv: &[f32], wv: &[f32], bias: Option<&[f32]>, s: LinearShape) -> Vec<f64> {
    xv.chunks(s.k)
        .flat_map(|row| {
            let row: Vec<f64> = row.iter().map(|&v| f64::from(v)).collect();
            cpu::linear_row(&row, wv, bias, s.n)
        })
        .collect()
}

#[test]
fn gemm_matches_cpu_with_and_without_bias() {
    let Some(gpu) = gpu_or_skip("gemm_matches_cpu_with_and_without_bias") else {
        return;
    };
    let gemm = match Gemm::new(&gpu) {
        Ok(g) => g,
        Err(e) => panic!("a GPU without cuBLASLt: {e}"),
    };
    let mut rng = Rng::from_env_or_time("gemm");
    for s in [
        LinearShape {
            m: 37,
            n: 29,
            k: 53,
        },
        LinearShape {
            m: 256,
            n: 72,
            k: 96,
        },
    ] {
        for with_bias in [false, true] {
            let LinearOperands {
                x,
                w,
                b,
                xv,
                wv,
                bv,
            } = linear_operands::<bf16>(&gpu, &mut rng, s);
            let mut y = poisoned::<bf16>(&gpu, s.m * s.n);
            let bias = with_bias.then(|| b.slice(..));
            gemm.linear(
                &x.slice(..),
                &w.slice(..),
                bias.as_ref(),
                &mut y.slice_mut(..),
                s,
                Epilogue::None,
            )
            .unwrap();
            let got = download(&gpu, &y);
            let reference = linear_reference(&xv, &wv, with_bias.then_some(&bv[..]), s);
            assert_close(
                &format!("gemm {s:?} bias={with_bias}"),
                &got,
                &reference,
                2.0 * bf16::EPS,
            );
        }
    }
}

/// cuBLASLt's GELU epilogue on inputs it passes through exactly (x · I in
/// f32/TF32, x on a 1/64 grid), compared with the erf and tanh GELUs in
/// f64; then the crate's exact path (f16 GEMM + bias_gelu) on the same
/// grid, which must be the erf GELU.
#[test]
fn cublaslt_gelu_epilogue_is_measured_and_the_exact_path_is_erf() {
    let Some(gpu) = gpu_or_skip("cublaslt_gelu_epilogue_is_measured_and_the_exact_path_is_erf")
    else {
        return;
    };
    let gemm = Gemm::new(&gpu).unwrap();
    let s = LinearShape { m: 128, n: 8, k: 8 };
    // x in [-8, 8) step 1/64: exact in TF32 and f16 (at most 10 fraction bits).
    let xs: Vec<f32> = (0..s.m * s.k).map(|i| -8.0 + i as f32 / 64.0).collect();
    let identity: Vec<f32> = (0..64)
        .map(|i| if i % 9 == 0 { 1.0 } else { 0.0 })
        .collect();

    let stream = gpu.stream();
    let x = stream.clone_htod(&xs).unwrap();
    let w = stream.clone_htod(&identity).unwrap();
    let mut y = stream.clone_htod(&vec![f32::NAN; s.m * s.n]).unwrap();
    // f32 (TF32 operands, exact here): the epilogue's own values.
    let r = gemm.linear(
        &x.slice(..),
        &w.slice(..),
        None,
        &mut y.slice_mut(..),
        s,
        Epilogue::CublasGelu,
    );
    match r {
        Err(e) => {
            println!("cuBLASLt GELU epilogue: refused for f32 ({e}); see the f16 measurement")
        }
        Ok(()) => {
            stream.synchronize().unwrap();
            let got = stream.clone_dtoh(&y).unwrap();
            assert!(
                got.iter().all(|v| v.is_finite()),
                "cuBLASLt GELU output not written"
            );
            let (mut to_erf, mut to_tanh) = (0.0f64, 0.0f64);
            for (&x, &g) in xs.iter().zip(&got) {
                let x = f64::from(x);
                to_erf = to_erf.max((f64::from(g) - gelu_erf(x)).abs());
                to_tanh = to_tanh.max((f64::from(g) - gelu_tanh(x)).abs());
            }
            let verdict = if to_tanh < 1e-5 && to_tanh < to_erf {
                "the tanh approximation"
            } else if to_erf < 1e-5 {
                "the exact erf GELU"
            } else {
                "neither erf nor tanh GELU"
            };
            println!(
                "cuBLASLt GELU epilogue (f32 in/out, x in [-8, 8)): max |out - erf GELU| = {to_erf:.3e}, \
                 max |out - tanh GELU| = {to_tanh:.3e}: it computes {verdict}"
            );
        }
    }
    // f16 (what the approximate projector mode uses): at the points where
    // the two GELUs round to f16 values more than 2 ulps apart, which one
    // the epilogue's output is nearer to.
    let round16 = |v: f64| f16::from_f64(v).to_f64();
    let xh: Vec<f16> = xs.iter().map(|&v| f16::from_f32(v)).collect();
    let ih: Vec<f16> = identity.iter().map(|&v| f16::from_f32(v)).collect();
    let (x16, w16) = (
        stream.clone_htod(&xh).unwrap(),
        stream.clone_htod(&ih).unwrap(),
    );
    let mut y16 = poisoned::<f16>(&gpu, s.m * s.n);
    gemm.linear(
        &x16.slice(..),
        &w16.slice(..),
        None,
        &mut y16.slice_mut(..),
        s,
        Epilogue::CublasGelu,
    )
    .unwrap();
    let got16 = download(&gpu, &y16);
    let (mut nearer_erf, mut nearer_tanh) = (0, 0);
    for (&x, &g) in xs.iter().zip(&got16) {
        let (erf, tanh) = (
            round16(gelu_erf(f64::from(x))),
            round16(gelu_tanh(f64::from(x))),
        );
        // Whichever it computes, it is a GELU: within 2 ulps of one of
        // them (and written: NaN fails this), or of 0 below f16's normals.
        let slack = 4.0 * f16::EPS * erf.abs().max(tanh.abs()) + 2f64.powi(-14);
        assert!(
            (g - erf).abs().min((g - tanh).abs()) <= slack,
            "cuBLASLt GELU epilogue, f16: x = {x}: {g} is neither erf GELU {erf} nor tanh GELU {tanh}"
        );
        if (erf - tanh).abs() > 2.0 * 2.0 * f16::EPS * erf.abs().max(tanh.abs()) {
            if (g - erf).abs() < (g - tanh).abs() {
                nearer_erf += 1;
            } else {
                nearer_tanh += 1;
            }
        }
    }
    println!(
        "cuBLASLt GELU epilogue (f16 out): of {} points where erf and tanh GELU differ, \
         {nearer_erf} are nearer erf, {nearer_tanh} nearer tanh",
        nearer_erf + nearer_tanh
    );

    // The exact path: f16 GEMM (exact here) then the crate's GELU kernel.
    let kernels = ProjectorKernels::new(gpu.clone());
    let mut y = poisoned::<f16>(&gpu, s.m * s.n);
    gemm.linear(
        &x16.slice(..),
        &w16.slice(..),
        None,
        &mut y.slice_mut(..),
        s,
        Epilogue::None,
    )
    .unwrap();
    kernels
        .bias_gelu(&mut y.slice_mut(..), s.m, s.n, None, true)
        .unwrap();
    let got = download(&gpu, &y);
    let round = round16;
    let mut told_apart = 0;
    for (&x, &g) in xs.iter().zip(&got) {
        let (erf, tanh) = (gelu_erf(f64::from(x)), gelu_tanh(f64::from(x)));
        // One f16 ulp: f32 arithmetic may round to the other neighbour.
        // Plus f32's error in 0.5·x·(1 + erff(..)): for x below about -4,
        // 1 + erff(..) is a difference near 1, good to a few units of
        // 2⁻²⁴ (erff is within 2 ulp), which is several f16 subnormals.
        let ulp = (round(erf).abs() * 2.0 * f16::EPS).max(f16::MIN_POSITIVE_SUBNORMAL.to_f64());
        let f32_error = f64::from(x).abs() * 2f64.powi(-23);
        assert!(
            (g - round(erf)).abs() <= ulp + f32_error,
            "exact path at x = {x}: {g} vs erf GELU {erf} (tanh GELU {tanh})"
        );
        if (round(erf) - round(tanh)).abs() > 3.0 * ulp {
            told_apart += 1;
        }
    }
    assert!(
        told_apart > 20,
        "the grid must include points where erf and tanh GELU differ in f16 ({told_apart})"
    );
}

/// Host weights for `cfg` (values rounded to T) and their device copies.
struct Weights<T> {
    host: HostWeights,
    gamma: CudaSlice<T>,
    beta: CudaSlice<T>,
    w1: CudaSlice<T>,
    b1: Option<CudaSlice<T>>,
    w2: Option<CudaSlice<T>>,
    b2: Option<CudaSlice<T>>,
}

impl<T: Half> Weights<T> {
    fn random(gpu: &nvlm_vision::cuda::Gpu, rng: &mut Rng, cfg: &ProjectorConfig) -> Self {
        let (h1, k1) = (cfg.linear1_out, cfg.row_width());
        let (gamma, g) = to_device::<T>(gpu, &uniform(rng, k1, 2.0));
        let (beta, b) = to_device::<T>(gpu, &uniform(rng, k1, 1.0));
        // Uniform weights of variance 1/in keep activations near unit scale.
        let (w1, w1v) = to_device::<T>(gpu, &uniform(rng, h1 * k1, (3.0 / k1 as f32).sqrt()));
        let bias = |rng: &mut Rng, n: usize| {
            cfg.bias
                .then(|| to_device::<T>(gpu, &uniform(rng, n, 0.5)))
                .unzip()
        };
        let (b1, b1v) = bias(rng, h1);
        let (w2, w2v) = cfg
            .linear2_out
            .map(|h2| to_device::<T>(gpu, &uniform(rng, h2 * h1, (3.0 / h1 as f32).sqrt())))
            .unzip();
        let (b2, b2v) = match cfg.linear2_out {
            Some(h2) => bias(rng, h2),
            None => (None, None),
        };
        Weights {
            host: HostWeights {
                ln_gamma: g,
                ln_beta: b,
                w1: w1v,
                b1: b1v,
                w2: w2v,
                b2: b2v,
            },
            gamma,
            beta,
            w1,
            b1,
            w2,
            b2,
        }
    }

    fn views(&self) -> ProjectorWeights<'_, T> {
        ProjectorWeights {
            ln_gamma: self.gamma.slice(..),
            ln_beta: self.beta.slice(..),
            w1: self.w1.slice(..),
            b1: self.b1.as_ref().map(|b| b.slice(..)),
            w2: self.w2.as_ref().map(|w| w.slice(..)),
            b2: self.b2.as_ref().map(|b| b.slice(..)),
        }
    }
}

fn projector_case<T: Half>(
    gpu: &Arc<nvlm_vision::cuda::Gpu>,
    rng: &mut Rng,
    cfg: ProjectorConfig,
    tiles: usize,
) where
    cudarc::cublaslt::CudaBlasLT: cudarc::cublaslt::Matmul<T>,
{
    let what = format!("{} {:?} tiles={tiles} {:?}", cfg.name, T::DTYPE, cfg.gelu);
    let weights = Weights::<T>::random(gpu, rng, &cfg);
    let n_in = tiles * cfg.tokens_per_tile() * cfg.vit_hidden;
    let (input, in_vals) = to_device::<T>(gpu, &uniform(rng, n_in, 2.0));
    let projector = Projector::new(cfg.clone(), gpu.clone()).unwrap();
    let mut ws = projector.workspace::<T>(tiles).unwrap();
    // NaN intermediates: an element the forward reads without writing it
    // reaches the output as NaN.
    ws.fill_bytes(0xFF).unwrap();
    let n_out = cfg.output_rows(tiles) * cfg.output_width();
    let mut out = poisoned::<T>(gpu, n_out);
    projector
        .forward(
            &input.slice(..),
            tiles,
            &weights.views(),
            &mut ws,
            &mut out.slice_mut(..),
        )
        .unwrap();
    let got = download(gpu, &out);
    // The reference rounds to T where the GPU path stores a tensor.
    let rounded = cpu::projector(&cfg, &in_vals, tiles, &weights.host, Some(T::DTYPE));
    let exact = cpu::projector(&cfg, &in_vals, tiles, &weights.host, None);
    // The GPU's f32 accumulation flips some of the reference's roundings
    // (and the sm_90a Linear rounds once where the reference rounds the
    // product, then the GELU): a few ulps of T in norm. A wrong index,
    // layout or missing bias is O(1).
    let tol = match cfg.gelu {
        GeluMode::ExactErf | GeluMode::ExactErfHopperLinear => 4.0 * T::EPS,
        GeluMode::CublasLtApproximate => 4.0 * bf16::EPS,
    };
    assert_close(&format!("{what} vs rounded reference"), &got, &rounded, tol);
    assert_close(
        &format!("{what} vs f64 reference"),
        &got,
        &exact,
        4.0 * bf16::EPS,
    );
}

#[test]
fn projector_matches_cpu_for_every_variant_at_small_dims() {
    let Some(gpu) = gpu_or_skip("projector_matches_cpu_for_every_variant_at_small_dims") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("projector_small");
    // Each preset with its widths scaled down (C, H1, H2), its structure
    // (biases, layers, CLS, ps version, GELU mode) kept.
    let shrink = |cfg: ProjectorConfig, c: usize, h1: usize, h2: usize| ProjectorConfig {
        vit_hidden: c,
        linear1_out: h1,
        linear2_out: cfg.linear2_out.map(|_| h2),
        ..cfg
    };
    let variants = [
        shrink(ProjectorConfig::nvlm_d_72b(), 40, 96, 64),
        shrink(ProjectorConfig::nvlm_d_34b(), 24, 80, 56),
        shrink(ProjectorConfig::internvl2_300m(4096), 32, 72, 72),
        shrink(ProjectorConfig::internvl2_6b(6144), 48, 88, 88),
        shrink(ProjectorConfig::nvlm_x(8192), 40, 64, 0),
        // Odd sizes everywhere: scalar front, odd GEMM dims, scalar GELU.
        ProjectorConfig {
            ps_version: PsVersion::V1,
            cls_token: false,
            ..shrink(ProjectorConfig::internvl2_300m(4096), 13, 37, 29)
        },
        ProjectorConfig {
            gelu: GeluMode::CublasLtApproximate,
            ..shrink(ProjectorConfig::internvl2_300m(4096), 32, 72, 72)
        },
        ProjectorConfig {
            gelu: GeluMode::CublasLtApproximate,
            ..shrink(ProjectorConfig::nvlm_d_72b(), 40, 96, 64)
        },
    ];
    for cfg in variants {
        projector_case::<bf16>(&gpu, &mut rng, cfg.clone(), 3);
        projector_case::<f16>(&gpu, &mut rng, cfg, 2);
    }
}

/// An engine's own stream: the projector queued on it, built from the
/// stream alone and from a `Gpu` that shares its loaded modules.
#[test]
fn projector_on_an_engine_stream_matches_cpu() {
    let Some(gpu) = gpu_or_skip("projector_on_an_engine_stream_matches_cpu") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("projector_engine_stream");
    let engine_stream = gpu.context().new_stream().unwrap();
    let cfg = ProjectorConfig {
        vit_hidden: 40,
        linear1_out: 96,
        linear2_out: Some(64),
        ..ProjectorConfig::nvlm_d_72b()
    };
    let from_stream = nvlm_vision::cuda::Gpu::from_stream(engine_stream.clone()).unwrap();
    let sharing_modules = gpu.on_stream(engine_stream.clone()).unwrap();
    for on_engine in [from_stream, sharing_modules] {
        assert!(Arc::ptr_eq(on_engine.stream(), &engine_stream));
        projector_case::<bf16>(&on_engine, &mut rng, cfg.clone(), 3);
    }
    // A stream of another device's context is refused; it takes two GPUs.
    if let Some((_, other)) = two_devices_or_skip("projector_on_an_engine_stream_matches_cpu") {
        assert_eq!(
            gpu.on_stream(other).err(),
            Some(Error::OfAnotherContext {
                what: "stream",
                its_device: 1,
                gpu_device: 0
            })
        );
    }
}

/// A buffer of another device, as any operand of the projector, its
/// kernels or a GEMM, is refused by name before anything is queued (the
/// kernel would fault on memory the device cannot reach). Takes two GPUs.
#[test]
fn buffers_of_another_device_are_rejected_before_launch() {
    let test = "projector_buffers_of_another_device_are_rejected_before_launch";
    let Some((gpu, other_stream)) = two_devices_or_skip(test) else {
        return;
    };
    let other = nvlm_vision::cuda::Gpu::from_stream(other_stream).unwrap();
    let mut rng = Rng::from_env_or_time(test);
    let cfg = ProjectorConfig {
        bias: true,
        ..small_config(8, true, PsVersion::V2)
    };
    let tiles = 2;
    let n_in = tiles * cfg.tokens_per_tile() * cfg.vit_hidden;
    let n_out = cfg.output_rows(tiles) * cfg.output_width();
    let input_values = uniform(&mut rng, n_in, 2.0);
    let (ours_in, _) = to_device::<bf16>(&gpu, &input_values);
    let (theirs_in, _) = to_device::<bf16>(&other, &input_values);
    let ours_w = Weights::<bf16>::random(&gpu, &mut rng, &cfg);
    let theirs_w = Weights::<bf16>::random(&other, &mut rng, &cfg);
    let mut out = poisoned::<bf16>(&gpu, n_out);
    let mut their_out = poisoned::<bf16>(&other, n_out);
    let refused = assert_refused_as_of_device_1;

    let projector = Projector::new(cfg.clone(), gpu.clone()).unwrap();
    let mut ws = projector.workspace::<bf16>(tiles).unwrap();
    let mut their_ws = Projector::new(cfg.clone(), other.clone())
        .unwrap()
        .workspace::<bf16>(tiles)
        .unwrap();
    let forward = |input: &CudaSlice<bf16>,
                   weights: &ProjectorWeights<'_, bf16>,
                   ws: &mut nvlm_vision::projector::gpu::ProjectorWorkspace<bf16>,
                   out: &mut CudaSlice<bf16>| {
        projector.forward(&input.slice(..), tiles, weights, ws, &mut out.slice_mut(..))
    };
    // Each weight of device 1 in turn, the others ours.
    let names = [
        "LayerNorm weight",
        "LayerNorm bias",
        "Linear 1 weight",
        "Linear 1 bias",
        "Linear 2 weight",
        "Linear 2 bias",
    ];
    for (i, what) in names.into_iter().enumerate() {
        let mut w = ours_w.views();
        let t = theirs_w.views();
        match i {
            0 => w.ln_gamma = t.ln_gamma,
            1 => w.ln_beta = t.ln_beta,
            2 => w.w1 = t.w1,
            3 => w.b1 = t.b1,
            4 => w.w2 = t.w2,
            _ => w.b2 = t.b2,
        }
        refused(forward(&ours_in, &w, &mut ws, &mut out), what);
    }
    let w = ours_w.views();
    refused(
        forward(&theirs_in, &w, &mut ws, &mut out),
        "projector input",
    );
    refused(
        forward(&ours_in, &w, &mut their_ws, &mut out),
        "projector workspace",
    );
    refused(
        forward(&ours_in, &w, &mut ws, &mut their_out),
        "projector output",
    );

    // The kernels and the GEMM on their own.
    let kernels = projector.kernels();
    let rows = cfg.output_rows(tiles);
    let k1 = cfg.row_width();
    let mut front = poisoned::<bf16>(&gpu, rows * k1);
    let mut their_front = poisoned::<bf16>(&other, rows * k1);
    let (g, b) = (ours_w.gamma.slice(..), ours_w.beta.slice(..));
    let front_with = |input: &CudaSlice<bf16>,
                      gamma: &cudarc::driver::CudaView<'_, bf16>,
                      beta: &cudarc::driver::CudaView<'_, bf16>,
                      out: &mut CudaSlice<bf16>| {
        kernels.front(
            &cfg,
            &input.slice(..),
            tiles,
            gamma,
            beta,
            &mut out.slice_mut(..),
        )
    };
    let (tg, tb) = (theirs_w.gamma.slice(..), theirs_w.beta.slice(..));
    refused(
        front_with(&theirs_in, &g, &b, &mut front),
        "projector input",
    );
    refused(
        front_with(&ours_in, &tg, &b, &mut front),
        "LayerNorm weight",
    );
    refused(front_with(&ours_in, &g, &tb, &mut front), "LayerNorm bias");
    refused(
        front_with(&ours_in, &g, &b, &mut their_front),
        "projector front output",
    );
    let h1 = cfg.linear1_out;
    let (ours_b1, theirs_b1) = (ours_w.b1.as_ref().unwrap(), theirs_w.b1.as_ref().unwrap());
    let mut hidden = poisoned::<bf16>(&gpu, rows * h1);
    let mut their_hidden = poisoned::<bf16>(&other, rows * h1);
    for (theirs_data, what) in [(true, "bias + GELU data"), (false, "bias + GELU bias")] {
        let (data, bias) = match theirs_data {
            true => (&mut their_hidden, ours_b1),
            false => (&mut hidden, theirs_b1),
        };
        let r = kernels.bias_gelu(
            &mut data.slice_mut(..),
            rows,
            h1,
            Some(&bias.slice(..)),
            true,
        );
        refused(r, what);
    }
    let shape = LinearShape {
        m: rows,
        n: h1,
        k: k1,
    };
    let gemm = projector.gemm();
    let (x, tx) = (front.slice(..), their_front.slice(..));
    let (w1, tw1) = (ours_w.w1.slice(..), theirs_w.w1.slice(..));
    let (b1, tb1) = (ours_b1.slice(..), theirs_b1.slice(..));
    for (x, w, bias, theirs_y, what) in [
        (&tx, &w1, &b1, false, "GEMM x"),
        (&x, &tw1, &b1, false, "GEMM w"),
        (&x, &w1, &tb1, false, "GEMM bias"),
        (&x, &w1, &b1, true, "GEMM y"),
    ] {
        let y = if theirs_y {
            &mut their_hidden
        } else {
            &mut hidden
        };
        let r = gemm.linear(
            x,
            w,
            Some(bias),
            &mut y.slice_mut(..),
            shape,
            Epilogue::None,
        );
        refused(r, what);
    }

    for (buffer, what) in [(&out, "out"), (&front, "front"), (&hidden, "hidden")] {
        assert!(
            download(&gpu, buffer).iter().all(|v| v.is_nan()),
            "a refused call wrote {what}"
        );
    }
    for (buffer, what) in [
        (&their_out, "out"),
        (&their_front, "front"),
        (&their_hidden, "hidden"),
    ] {
        assert!(
            download(&other, buffer).iter().all(|v| v.is_nan()),
            "a refused call wrote device 1's {what}"
        );
    }
}

/// An engine's CUDA graph: on the engine's stream, with the kernels loaded
/// and cuBLASLt warmed up by one eager forward, a capture is refused by
/// name while cudarc tracks events, and, with tracking off, the captured
/// forward replays to the CPU reference, once more after new input is
/// written into the captured buffer.
fn projector_graph_case(gpu: &Arc<nvlm_vision::cuda::Gpu>, gelu: GeluMode, test: &str) {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let mut rng = Rng::from_env_or_time(test);
    let cfg = ProjectorConfig {
        vit_hidden: 40,
        linear1_out: 96,
        linear2_out: Some(64),
        gelu,
        ..ProjectorConfig::nvlm_d_72b()
    };
    let tiles = 3;
    let stream = gpu.context().new_stream().unwrap();
    let engine = nvlm_vision::cuda::Gpu::from_stream(stream.clone()).unwrap();
    engine.load_kernels().unwrap();
    let weights = Weights::<bf16>::random(&engine, &mut rng, &cfg);
    let n_in = tiles * cfg.tokens_per_tile() * cfg.vit_hidden;
    let (mut input, mut in_vals) = to_device::<bf16>(&engine, &uniform(&mut rng, n_in, 2.0));
    let projector = Projector::new(cfg.clone(), engine.clone()).unwrap();
    let mut ws = projector.workspace::<bf16>(tiles).unwrap();
    let n_out = cfg.output_rows(tiles) * cfg.output_width();
    let mut out = poisoned::<bf16>(&engine, n_out);
    let mut forward = |input: &CudaSlice<bf16>, out: &mut CudaSlice<bf16>| {
        projector.forward(
            &input.slice(..),
            tiles,
            &weights.views(),
            &mut ws,
            &mut out.slice_mut(..),
        )
    };
    forward(&input, &mut out).unwrap();
    stream.synchronize().unwrap();
    let capture = || {
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)
            .unwrap()
    };
    let end_capture = || stream.end_capture(CUgraphInstantiate_flags(0));

    assert!(gpu.context().is_managing_stream_synchronization());
    capture();
    let refused = forward(&input, &mut out);
    // An empty graph, if any: only that the capture ended matters.
    drop(end_capture());
    assert!(!engine.is_capturing().unwrap());
    match refused {
        Err(Error::Unsupported(m)) if m.contains("event tracking") => {}
        other => panic!("{test}: a capture with event tracking on gave {other:?}"),
    }

    // SAFETY: every buffer here lives on the engine's one stream.
    unsafe { gpu.context().disable_event_tracking() };
    capture();
    let captured = forward(&input, &mut out);
    let graph = end_capture();
    captured.unwrap_or_else(|e| panic!("{test}: captured forward: {e}"));
    let graph = graph.unwrap().expect("the capture recorded work");
    for round in 0..2 {
        if round == 1 {
            let (fresh, vals) = to_device::<bf16>(&engine, &uniform(&mut rng, n_in, 2.0));
            stream.memcpy_dtod(&fresh, &mut input).unwrap();
            in_vals = vals;
        }
        // The replay alone must write the output and every intermediate.
        stream
            .memcpy_htod(&vec![bf16::nan(); n_out], &mut out)
            .unwrap();
        ws.fill_bytes(0xFF).unwrap();
        graph.launch().unwrap();
        let got = download(&engine, &out);
        let want = cpu::projector(&cfg, &in_vals, tiles, &weights.host, Some(Dtype::Bf16));
        assert_close(
            &format!("{test} replay {round}"),
            &got,
            &want,
            4.0 * bf16::EPS,
        );
    }
}

#[test]
fn projector_replays_from_a_cuda_graph() {
    let test = "projector_replays_from_a_cuda_graph";
    let Some(gpu) = gpu_or_skip(test) else {
        return;
    };
    projector_graph_case(&gpu, GeluMode::ExactErf, test);
}

#[test]
fn projector_with_the_hopper_linear_replays_from_a_cuda_graph() {
    let test = "projector_with_the_hopper_linear_replays_from_a_cuda_graph";
    let Some(gpu) = hopper_or_skip(test) else {
        return;
    };
    projector_graph_case(&gpu, GeluMode::ExactErfHopperLinear, test);
}

#[test]
fn projector_nvlm_d_72b_sampled_rows_at_model_shapes() {
    let Some(gpu) = gpu_or_skip("projector_nvlm_d_72b_sampled_rows_at_model_shapes") else {
        return;
    };
    nvlm_d_72b_sampled_rows(&gpu, GeluMode::ExactErf);
}

#[test]
fn projector_nvlm_d_72b_sampled_rows_at_model_shapes_hopper_linear() {
    let Some(gpu) =
        hopper_or_skip("projector_nvlm_d_72b_sampled_rows_at_model_shapes_hopper_linear")
    else {
        return;
    };
    nvlm_d_72b_sampled_rows(&gpu, GeluMode::ExactErfHopperLinear);
}

/// NVLM-D-72B at 7 tiles: every output element written, and sampled rows
/// against the reference.
fn nvlm_d_72b_sampled_rows(gpu: &Arc<nvlm_vision::cuda::Gpu>, gelu: GeluMode) {
    let gpu = gpu.clone();
    let mut rng = Rng::from_env_or_time("projector_72b");
    let cfg = ProjectorConfig {
        gelu,
        ..ProjectorConfig::nvlm_d_72b()
    };
    let tiles = 7;
    let weights = Weights::<bf16>::random(&gpu, &mut rng, &cfg);
    let n_in = tiles * cfg.tokens_per_tile() * cfg.vit_hidden;
    let (input, in_vals) = to_device::<bf16>(&gpu, &uniform(&mut rng, n_in, 2.0));
    let projector = Projector::new(cfg.clone(), gpu.clone()).unwrap();
    let mut ws = projector.workspace::<bf16>(tiles).unwrap();
    let width = cfg.output_width();
    let mut out = poisoned::<bf16>(&gpu, cfg.output_rows(tiles) * width);
    projector
        .forward(
            &input.slice(..),
            tiles,
            &weights.views(),
            &mut ws,
            &mut out.slice_mut(..),
        )
        .unwrap();
    let got = download(&gpu, &out);
    let unwritten = got.iter().filter(|v| !v.is_finite()).count();
    assert_eq!(
        unwritten, 0,
        "NVLM-D-72B {gelu:?}: {unwritten} output elements not written"
    );
    // First and last rows of the first and last tiles, and a random row of
    // every 128-row block (a GEMM's CTA tile in m): a block computed wrong
    // cannot hide between the samples.
    let mut rows = vec![0, 255, 256, 1791];
    rows.extend((0..1792 / 128).map(|b| rng.range(b * 128, b * 128 + 127) as usize));
    let reference = cpu::projector_rows(&cfg, &in_vals, &weights.host, &rows, Some(Dtype::Bf16));
    let sampled: Vec<f64> = rows
        .iter()
        .flat_map(|&r| got[r * width..(r + 1) * width].iter().copied())
        .collect();
    assert_close(
        &format!("NVLM-D-72B {gelu:?} rows {rows:?}"),
        &sampled,
        &reference,
        4.0 * bf16::EPS,
    );
}

/// The sm_90a Linear in tiles of `width` on `[m, n, k]` against the f64
/// reference (+ bias, exact GELU): one rounding of T in norm; `y` poisoned
/// past `[m, n]` stays poisoned.
fn hopper_linear_case<T: Half>(
    gpu: &Arc<nvlm_vision::cuda::Gpu>,
    kernels: &ProjectorKernels,
    rng: &mut Rng,
    s: LinearShape,
    width: TileWidth,
    with_bias: bool,
    gelu: bool,
) {
    let what = format!(
        "sm_90a Linear {:?} {s:?} {width:?} bias={with_bias} gelu={gelu}",
        T::DTYPE
    );
    let LinearOperands {
        x,
        w,
        b,
        xv,
        wv,
        bv,
    } = linear_operands::<T>(gpu, rng, s);
    let tail = 64;
    let mut y = poisoned::<T>(gpu, s.m * s.n + tail);
    let bias = with_bias.then(|| b.slice(..));
    kernels
        .linear_hopper_tiled(
            &x.slice(..),
            &w.slice(..),
            bias.as_ref(),
            &mut y.slice_mut(..),
            s,
            gelu,
            width,
        )
        .unwrap();
    let got = download(gpu, &y);
    let reference: Vec<f64> = linear_reference(&xv, &wv, with_bias.then_some(&bv[..]), s)
        .into_iter()
        .map(|v| if gelu { gelu_erf(v) } else { v })
        .collect();
    assert_close(&what, &got[..s.m * s.n], &reference, 2.0 * T::EPS);
    assert!(
        got[s.m * s.n..].iter().all(|v| v.is_nan()),
        "{what}: wrote past [m, n]"
    );
}

#[test]
fn hopper_linear_matches_cpu() {
    let Some(gpu) = hopper_or_skip("hopper_linear_matches_cpu") else {
        return;
    };
    let kernels = ProjectorKernels::new(gpu.clone());
    let mut rng = Rng::from_env_or_time("hopper_linear");
    // Partial tiles in m (a pair's second CTA partly or wholly past m), n
    // (of both widths) and k; one element pair; more k steps than stages;
    // NVLM-D's k.
    let shapes = [
        (130, 264, 328),
        (300, 18, 72),
        (1, 2, 8),
        (257, 512, 1288),
        (256, 264, 12800),
        (130, 232, 328),
    ];
    for (i, (m, n, k)) in shapes.into_iter().enumerate() {
        let s = LinearShape { m, n, k };
        let (bias, gelu) = (i % 2 == 0, i != 1);
        for width in [TileWidth::Wide, TileWidth::Narrow] {
            hopper_linear_case::<bf16>(&gpu, &kernels, &mut rng, s, width, bias, gelu);
            hopper_linear_case::<f16>(&gpu, &kernels, &mut rng, s, width, !bias, gelu);
        }
    }
}

/// The width `linear_hopper` picks comes from the GPU's cluster slots, as
/// `TileWidth::for_shape` computes it (unit-tested on the CPU: 66 pairs, a
/// 132-SM H100/H200's prediction, give NVLM-D-72B's Linear 1 the 224-wide
/// tile, PERF.md projector v2.1). The slots themselves are the driver's
/// (`cuOccupancyMaxActiveClusters`), never read before: printed, and held
/// only to what the SM count allows.
#[test]
fn hopper_linear_width_follows_the_gpus_cluster_slots() {
    let Some(gpu) = hopper_or_skip("hopper_linear_width_follows_the_gpus_cluster_slots") else {
        return;
    };
    let kernels = ProjectorKernels::new(gpu.clone());
    let slots = kernels.linear_hopper_cluster_slots().unwrap();
    let sms = gpu.multiprocessor_count();
    for shape in [
        // NVLM-D-72B's Linear 1, and InternVL's 4096 features.
        LinearShape {
            m: 1792,
            n: 29568,
            k: 12800,
        },
        LinearShape {
            m: 1792,
            n: 4096,
            k: 4096,
        },
    ] {
        let width = kernels.linear_hopper_width(shape).unwrap();
        eprintln!("{sms} SMs, {slots} CTA pairs at once: {shape:?} in {width:?} tiles");
        assert_eq!(width, TileWidth::for_shape(shape, slots));
    }
    assert!(slots >= 1 && slots <= sms / 2, "{slots} pairs on {sms} SMs");
}

/// What the sm_90a Linear cannot take is an Err before any launch.
#[test]
fn hopper_linear_refuses_what_it_cannot_take() {
    let Some(gpu) = hopper_or_skip("hopper_linear_refuses_what_it_cannot_take") else {
        return;
    };
    let kernels = ProjectorKernels::new(gpu.clone());
    let mut rng = Rng::from_env_or_time("hopper_linear_refuses");
    let (x, _) = to_device::<bf16>(&gpu, &uniform(&mut rng, 8 * 24 + 8, 1.0));
    let (w, _) = to_device::<bf16>(&gpu, &uniform(&mut rng, 8 * 24, 1.0));
    let mut y = poisoned::<bf16>(&gpu, 64);
    let mut run = |x_view: cudarc::driver::CudaView<'_, bf16>, w_len: usize, s: LinearShape| {
        kernels
            .linear_hopper(
                &x_view,
                &w.slice(..w_len),
                None,
                &mut y.slice_mut(..),
                s,
                true,
            )
            .unwrap_err()
    };
    // k = 12: rows of 24 bytes, which TMA cannot read.
    let err = run(x.slice(..8 * 12), 8 * 12, LinearShape { m: 8, n: 8, k: 12 });
    assert!(err.to_string().contains("not a multiple of 8"), "{err}");
    let err = run(x.slice(..8 * 24), 7 * 24, LinearShape { m: 8, n: 7, k: 24 });
    assert!(err.to_string().contains("odd"), "{err}");
    // An x view one element into its buffer: off TMA's 16-byte grid.
    let err = run(
        x.slice(1..1 + 8 * 24),
        8 * 24,
        LinearShape { m: 8, n: 8, k: 24 },
    );
    assert!(err.to_string().contains("x at"), "{err}");
    let err = run(
        x.slice(..8 * 24),
        8 * 24 - 1,
        LinearShape { m: 8, n: 8, k: 24 },
    );
    assert!(matches!(err, Error::InvalidShape(_)), "{err}");
    assert!(download(&gpu, &y).iter().all(|v| v.is_nan()));
}

#[test]
fn projector_with_the_hopper_linear_matches_cpu() {
    let Some(gpu) = hopper_or_skip("projector_with_the_hopper_linear_matches_cpu") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("projector_hopper_linear");
    for cfg in [
        ProjectorConfig::nvlm_d_72b(),
        ProjectorConfig::internvl2_300m(4096),
    ] {
        let cfg = ProjectorConfig {
            vit_hidden: 40,
            linear1_out: 96,
            linear2_out: Some(64),
            gelu: GeluMode::ExactErfHopperLinear,
            ..cfg
        };
        projector_case::<bf16>(&gpu, &mut rng, cfg.clone(), 3);
        projector_case::<f16>(&gpu, &mut rng, cfg, 2);
    }
}

/// A config the sm_90a Linear cannot take (4C = 52, not a multiple of 8)
/// is an Err before the front's launch: the output stays poisoned.
#[test]
fn projector_with_the_hopper_linear_refuses_before_any_launch() {
    let Some(gpu) = hopper_or_skip("projector_with_the_hopper_linear_refuses_before_any_launch")
    else {
        return;
    };
    let mut rng = Rng::from_env_or_time("projector_hopper_refuses");
    let cfg = ProjectorConfig {
        vit_hidden: 13,
        linear1_out: 24,
        linear2_out: Some(8),
        gelu: GeluMode::ExactErfHopperLinear,
        ..ProjectorConfig::internvl2_300m(4096)
    };
    let weights = Weights::<bf16>::random(&gpu, &mut rng, &cfg);
    let projector = Projector::new(cfg.clone(), gpu.clone()).unwrap();
    let mut ws = projector.workspace::<bf16>(1).unwrap();
    let (input, _) = to_device::<bf16>(
        &gpu,
        &uniform(&mut rng, cfg.tokens_per_tile() * cfg.vit_hidden, 1.0),
    );
    let mut out = poisoned::<bf16>(&gpu, cfg.output_rows(1) * 8);
    let err = projector
        .forward(
            &input.slice(..),
            1,
            &weights.views(),
            &mut ws,
            &mut out.slice_mut(..),
        )
        .unwrap_err();
    assert!(err.to_string().contains("not a multiple of 8"), "{err}");
    assert!(download(&gpu, &out).iter().all(|v| v.is_nan()));
}

/// Bad inputs on the GPU path: an Err, and the output left as it was.
#[test]
fn projector_bad_inputs_fail_before_any_launch() {
    let Some(gpu) = gpu_or_skip("projector_bad_inputs_fail_before_any_launch") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("projector_bad_inputs");
    let cfg = ProjectorConfig {
        vit_hidden: 16,
        linear1_out: 24,
        linear2_out: Some(8),
        ..ProjectorConfig::internvl2_300m(4096)
    };
    let weights = Weights::<bf16>::random(&gpu, &mut rng, &cfg);
    let projector = Projector::new(cfg.clone(), gpu.clone()).unwrap();
    let mut ws = projector.workspace::<bf16>(2).unwrap();
    let n_in = 2 * cfg.tokens_per_tile() * 16;
    let (input, _) = to_device::<bf16>(&gpu, &uniform(&mut rng, n_in + 16, 1.0));
    let n_out = cfg.output_rows(2) * 8;
    let mut out = poisoned::<bf16>(&gpu, n_out);
    let good = weights.views();
    let mut run =
        |input_len: usize, tiles: usize, w: &ProjectorWeights<'_, bf16>, out_len: usize| {
            let r = projector.forward(
                &input.slice(..input_len),
                tiles,
                w,
                &mut ws,
                &mut out.slice_mut(..out_len),
            );
            assert!(r.is_err(), "expected an error");
            r.unwrap_err()
        };
    assert!(
        matches!(run(n_in + 16, 2, &good, n_out), Error::InvalidShape(m) if m.contains("tokens"))
    );
    assert!(
        matches!(run(n_in, 3, &good, n_out), Error::InvalidShape(m) if m.contains("expected 3 tiles"))
    );
    let short_w1 = ProjectorWeights {
        w1: weights.w1.slice(1..),
        ..weights.views()
    };
    assert!(
        matches!(run(n_in, 2, &short_w1, n_out), Error::InvalidShape(m) if m.contains("Linear 1 weight"))
    );
    let no_bias = ProjectorWeights {
        b2: None,
        ..weights.views()
    };
    assert!(
        matches!(run(n_in, 2, &no_bias, n_out), Error::InvalidShape(m) if m.contains("Linear 2 bias is missing"))
    );
    assert!(matches!(
        run(n_in, 2, &good, n_out - 1),
        Error::BufferTooShort { .. }
    ));
    // A Linear 2 weight of the right length starting one element into its
    // buffer: a GEMM operand off cuBLASLt's 256-byte grid, refused before
    // the front's launch.
    let w2_len = weights.w2.as_ref().unwrap().len();
    let (w2_buffer, _) = to_device::<bf16>(&gpu, &uniform(&mut rng, w2_len + 1, 0.1));
    let offset_w2 = ProjectorWeights {
        w2: Some(w2_buffer.slice(1..)),
        ..weights.views()
    };
    assert!(
        matches!(run(n_in, 2, &offset_w2, n_out), Error::InvalidShape(m) if m.contains("Linear 2 weight at"))
    );
    // More tiles than the workspace holds.
    let n_in3 = 3 * cfg.tokens_per_tile() * 16;
    let (input3, _) = to_device::<bf16>(&gpu, &uniform(&mut rng, n_in3, 1.0));
    let mut out3 = poisoned::<bf16>(&gpu, cfg.output_rows(3) * 8);
    let r = projector.forward(
        &input3.slice(..),
        3,
        &good,
        &mut ws,
        &mut out3.slice_mut(..),
    );
    assert!(
        matches!(r, Err(Error::BufferTooShort { what, .. }) if what.contains("workspace")),
        "{r:?}"
    );
    // The front alone, into one element too few.
    let kernels = ProjectorKernels::new(gpu.clone());
    let front_len = cfg.output_rows(2) * cfg.row_width();
    let mut front_out = poisoned::<bf16>(&gpu, front_len);
    let r = kernels.front(
        &cfg,
        &input.slice(..n_in),
        2,
        &good.ln_gamma,
        &good.ln_beta,
        &mut front_out.slice_mut(..front_len - 1),
    );
    assert!(
        matches!(r, Err(Error::BufferTooShort { what, .. }) if what.contains("front output")),
        "{r:?}"
    );
    // Nothing was launched: the outputs are still all poison.
    assert!(download(&gpu, &out).iter().all(|v| v.is_nan()));
    assert!(download(&gpu, &out3).iter().all(|v| v.is_nan()));
    assert!(download(&gpu, &front_out).iter().all(|v| v.is_nan()));
}
