//! The flash-attention and qk-RMSNorm kernels against the CPU references.
//! Attention follows FlashAttention's rule: the kernel's error against the
//! f64 reference is at most twice the error of a naive same-precision
//! reference, plus a small atol; NaN never passes; NaN-poisoned outputs
//! must be fully written, and nothing outside the output's layout written.
//! Without a usable GPU these print "skipped: no CUDA device" and pass;
//! with `NVLM_VISION_REQUIRE_GPU=1` they fail instead.

mod common;

use common::gpu::{
    assert_refused_as_of_device_1, gpu_or_skip, hopper_or_skip, two_devices_or_skip,
};
use common::{Rng, SameBitsEveryRun};
use cudarc::driver::CudaSlice;
use half::{bf16, f16};
use nvlm_vision::Error;
use nvlm_vision::attention::{
    AttentionElement, AttentionKernel, AttentionLayout, AttentionTensor, QkvPart, QkvRows,
    attention_row_f64, attention_row_same_precision, check_flash_attention, default_scale,
    flash_attention, flash_attention_with, qk_rms_norm, qk_rms_norm_reference,
};
use nvlm_vision::cuda::Gpu;

/// The token counts the issue names: around the 64-key and 128-row tiles,
/// and InternViT's 1025 = 8 * 128 + 1.
const TOKENS: [usize; 8] = [1, 2, 63, 64, 65, 127, 1025, 2049];

/// Uniform in [-amplitude, amplitude).
fn uniform(rng: &mut Rng, amplitude: f32) -> f32 {
    ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amplitude
}

fn fill<T: AttentionElement>(rng: &mut Rng, n: usize, amplitude: f32) -> Vec<T> {
    (0..n)
        .map(|_| T::from_f32(uniform(rng, amplitude)))
        .collect()
}

/// Every version of the Hopper kernel.
const HOPPER_VERSIONS: [AttentionKernel; 4] = [
    AttentionKernel::HopperSerial,
    AttentionKernel::Hopper,
    AttentionKernel::HopperPingPong,
    AttentionKernel::HopperPersistent,
];

/// How a test lays out a separate (unpacked) tensor.
#[derive(Debug, Clone, Copy)]
enum Arrangement {
    /// [B, N, H, D]
    Contiguous,
    /// [B, H, N, D] through strides
    HeadsMajor,
    /// [B, N, H, D] with gaps after each head, token and batch, and an offset
    Padded,
}

fn arranged(
    rng: &mut Rng,
    how: Arrangement,
    b: usize,
    n: usize,
    h: usize,
    d: usize,
) -> AttentionLayout {
    let dense = AttentionLayout::contiguous(b, n, h, d);
    match how {
        Arrangement::Contiguous => dense,
        Arrangement::HeadsMajor => AttentionLayout::heads_outer(b, n, h, d),
        Arrangement::Padded => {
            let gap = |rng: &mut Rng| 8 * rng.range(1, 3) as usize;
            let head = d + gap(rng);
            let token = h * head + gap(rng);
            AttentionLayout {
                offset: gap(rng),
                strides: [n * token + gap(rng), token, head],
                ..dense
            }
        }
    }
}

fn pick_arrangement(rng: &mut Rng) -> Arrangement {
    [
        Arrangement::Contiguous,
        Arrangement::HeadsMajor,
        Arrangement::Padded,
    ][rng.range(0, 2) as usize]
}

/// A random arrangement with `like`'s order of token and head strides.
fn same_order_as(rng: &mut Rng, like: Arrangement) -> Arrangement {
    match like {
        Arrangement::HeadsMajor => Arrangement::HeadsMajor,
        Arrangement::Contiguous | Arrangement::Padded => {
            [Arrangement::Contiguous, Arrangement::Padded][rng.range(0, 1) as usize]
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Case {
    batch: usize,
    n_q: usize,
    n_kv: usize,
    heads: usize,
    head_dim: usize,
    /// q, k, v as views of one packed [B, N, 3, H, D] buffer (needs n_q == n_kv).
    packed: bool,
}

/// Query rows (b, n, h) to compare: all of them when the CPU references
/// are cheap enough, else a random sample that always includes the last
/// row and the first and last rows of the last query tile.
fn rows_to_check(rng: &mut Rng, case: &Case, row_budget: usize) -> Vec<(usize, usize, usize)> {
    let total = case.batch * case.n_q * case.heads;
    if total <= row_budget {
        let mut all = Vec::with_capacity(total);
        for b in 0..case.batch {
            for n in 0..case.n_q {
                for h in 0..case.heads {
                    all.push((b, n, h));
                }
            }
        }
        return all;
    }
    let last_tile = (case.n_q - 1) / 128 * 128;
    let mut rows: Vec<(usize, usize, usize)> =
        [case.n_q - 1, last_tile, last_tile.saturating_sub(1), 0]
            .into_iter()
            .map(|n| {
                (
                    rng.range(0, case.batch as u32 - 1) as usize,
                    n,
                    rng.range(0, case.heads as u32 - 1) as usize,
                )
            })
            .collect();
    while rows.len() < row_budget {
        rows.push((
            rng.range(0, case.batch as u32 - 1) as usize,
            rng.range(0, case.n_q as u32 - 1) as usize,
            rng.range(0, case.heads as u32 - 1) as usize,
        ));
    }
    rows
}

/// Runs one case on the GPU and checks it; returns (kernel error, naive
/// error) as max-abs over the checked rows, for the log.
fn check_case<T: AttentionElement>(
    gpu: &Gpu,
    kernel: AttentionKernel,
    rng: &mut Rng,
    case: Case,
    row_budget: usize,
) -> (f64, f64) {
    let Case {
        batch: b,
        n_q,
        n_kv,
        heads: h,
        head_dim: d,
        packed,
    } = case;
    let stream = gpu.stream();
    // Host buffers, and which of them q, k and v read (packed: all one).
    let (host, layouts): (Vec<Vec<T>>, [(usize, AttentionLayout); 3]) = if packed {
        assert_eq!(n_q, n_kv);
        // q and k at amplitude 2 give scores of spread ~1 after D^-0.5: a
        // softmax that is neither flat nor one-hot.
        let mut buf: Vec<T> = fill(rng, b * n_q * 3 * h * d, 2.0);
        let v = AttentionLayout::packed_qkv(b, n_q, h, d, QkvPart::V);
        for bi in 0..b {
            for ni in 0..n_q {
                for hi in 0..h {
                    let s = v.index(bi, ni, hi, 0);
                    for x in &mut buf[s..s + d] {
                        *x = T::from_f32(x.to_f32() / 2.0);
                    }
                }
            }
        }
        let part = |p| (0, AttentionLayout::packed_qkv(b, n_q, h, d, p));
        (vec![buf], [part(QkvPart::Q), part(QkvPart::K), (0, v)])
    } else {
        let (aq, ak) = (pick_arrangement(rng), pick_arrangement(rng));
        // The Hopper kernel takes k and v with their token and head strides
        // in the same order (one tensor-map shape for both).
        let av = if kernel.is_hopper() {
            same_order_as(rng, ak)
        } else {
            pick_arrangement(rng)
        };
        let q = arranged(rng, aq, b, n_q, h, d);
        let k = arranged(rng, ak, b, n_kv, h, d);
        let v = arranged(rng, av, b, n_kv, h, d);
        let bufs = vec![
            fill(rng, q.span().unwrap(), 2.0),
            fill(rng, k.span().unwrap(), 2.0),
            fill(rng, v.span().unwrap(), 1.0),
        ];
        (bufs, [(0, q), (1, k), (2, v)])
    };
    let [(qi, q_layout), (ki, k_layout), (vi, v_layout)] = layouts;
    let arrangement = pick_arrangement(rng);
    let o_layout = arranged(rng, arrangement, b, n_q, h, d);
    let with_lse = rng.range(0, 3) != 0;
    let what = format!(
        "{kernel:?} {case:?} {:?} out {arrangement:?} lse {with_lse}",
        T::DTYPE
    );

    let dev: Vec<_> = host.iter().map(|x| stream.clone_htod(x).unwrap()).collect();
    let poison = vec![T::from_f32(f32::NAN); o_layout.span().unwrap()];
    let mut o_dev = stream.clone_htod(&poison).unwrap();
    let mut lse_dev = stream.clone_htod(&vec![f32::NAN; b * h * n_q]).unwrap();
    let scale = default_scale(d);
    flash_attention_with(
        kernel,
        gpu,
        AttentionTensor::new(&dev[qi], q_layout),
        AttentionTensor::new(&dev[ki], k_layout),
        AttentionTensor::new(&dev[vi], v_layout),
        AttentionTensor::new(&mut o_dev, o_layout),
        with_lse.then_some(&mut lse_dev),
        None,
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let out: Vec<T> = stream.clone_dtoh(&o_dev).unwrap();
    let lse: Vec<f32> = stream.clone_dtoh(&lse_dev).unwrap();

    // Every element of the layout written (finite), nothing else touched.
    let mut inside = vec![false; out.len()];
    for bi in 0..b {
        for ni in 0..n_q {
            for hi in 0..h {
                let s = o_layout.index(bi, ni, hi, 0);
                inside[s..s + d].iter_mut().for_each(|x| *x = true);
            }
        }
    }
    for (i, (x, &is_in)) in out.iter().zip(&inside).enumerate() {
        let f = x.to_f32();
        assert!(
            if is_in { f.is_finite() } else { f.is_nan() },
            "{what}: element {i} = {f} (inside layout: {is_in})"
        );
    }
    if with_lse {
        assert!(
            lse.iter().all(|x| x.is_finite()),
            "{what}: LSE not fully written"
        );
    } else {
        assert!(
            lse.iter().all(|x| x.is_nan()),
            "{what}: LSE written though not asked for"
        );
    }

    let q_t = AttentionTensor::new(&host[qi][..], q_layout);
    let k_t = AttentionTensor::new(&host[ki][..], k_layout);
    let v_t = AttentionTensor::new(&host[vi][..], v_layout);
    let mut errors = common::attention_checks::FlashErrors::new(T::DTYPE);
    for (bi, ni, hi) in rows_to_check(rng, &case, row_budget) {
        let (want, want_lse) =
            attention_row_f64(&q_t, &k_t, &v_t, (bi, ni, hi), f64::from(scale)).unwrap();
        let naive = attention_row_same_precision(&q_t, &k_t, &v_t, (bi, ni, hi), scale).unwrap();
        let s = o_layout.index(bi, ni, hi, 0);
        for ((got, nv), w) in out[s..s + d].iter().zip(&naive).zip(&want) {
            let (got, nv) = (f64::from(got.to_f32()), f64::from(nv.to_f32()));
            // NaN fails here: f64::max would drop it.
            assert!(got.is_finite(), "{what}: row ({bi}, {ni}, {hi}) has {got}");
            errors.add(got, nv, *w);
        }
        if with_lse {
            let got = f64::from(lse[(bi * h + hi) * n_q + ni]);
            let e = (got - want_lse).abs() / (1.0 + want_lse.abs());
            assert!(
                e <= 1e-4,
                "{what}: LSE row ({bi}, {ni}, {hi}) {got} vs {want_lse}"
            );
        }
    }
    errors.assert_within_rule(&what)
}

/// Random batch (1..13) and heads (1..32), shrunk until the case's
/// attention work stays small enough for the sanitizer runs.
fn random_case(rng: &mut Rng, n_q: usize, n_kv: usize, head_dim: usize, packed: bool) -> Case {
    let mut case = Case {
        batch: rng.range(1, 13) as usize,
        n_q,
        n_kv,
        heads: rng.range(1, 32) as usize,
        head_dim,
        packed,
    };
    const MAX_SCORES: usize = 6 << 20; // B * H * Nq * Nkv
    while case.batch * case.heads * n_q * n_kv > MAX_SCORES && case.batch * case.heads > 1 {
        if case.batch >= case.heads {
            case.batch = case.batch.div_ceil(2);
        } else {
            case.heads = case.heads.div_ceil(2);
        }
    }
    case
}

/// The GPU, when it runs `kernel` (the Hopper kernel needs compute
/// capability 9.0; elsewhere its tests skip).
fn gpu_for(kernel: AttentionKernel, test: &str) -> Option<std::sync::Arc<Gpu>> {
    match kernel {
        AttentionKernel::Portable => gpu_or_skip(test),
        _ => hopper_or_skip(test),
    }
}

fn random_shapes<T: AttentionElement>(kernel: AttentionKernel, test: &str) {
    let Some(gpu) = gpu_for(kernel, test) else {
        return;
    };
    let mut rng = Rng::from_env_or_time(test);
    let mut cases = Vec::new();
    // Every token count with itself (packed or not), both head dims.
    for &n in &TOKENS {
        for d in [64, 128] {
            let packed = rng.range(0, 1) == 0;
            cases.push(random_case(&mut rng, n, n, d, packed));
        }
    }
    // Cross attention: Nq != Nkv, including 1 query over 2049 keys and back.
    for (n_q, n_kv) in [(1, 2049), (2049, 1), (1025, 64), (65, 1025), (127, 2)] {
        let d = [64, 128][rng.range(0, 1) as usize];
        cases.push(random_case(&mut rng, n_q, n_kv, d, false));
    }
    for _ in 0..6 {
        let (n_q, n_kv) = (
            TOKENS[rng.range(0, 7) as usize],
            TOKENS[rng.range(0, 7) as usize],
        );
        let d = [64, 128][rng.range(0, 1) as usize];
        cases.push(random_case(&mut rng, n_q, n_kv, d, false));
    }
    for case in cases {
        let (err, naive) = check_case::<T>(&gpu, kernel, &mut rng, case, 256);
        eprintln!("{case:?}: max error {err:.2e}, naive same-precision {naive:.2e}");
    }
}

#[test]
fn random_shapes_bf16_match_the_f64_reference() {
    random_shapes::<bf16>(
        AttentionKernel::Portable,
        "random_shapes_bf16_match_the_f64_reference",
    );
}

#[test]
fn random_shapes_f16_match_the_f64_reference() {
    random_shapes::<f16>(
        AttentionKernel::Portable,
        "random_shapes_f16_match_the_f64_reference",
    );
}

#[test]
fn hopper_random_shapes_bf16_match_the_f64_reference() {
    random_shapes::<bf16>(
        AttentionKernel::Hopper,
        "hopper_random_shapes_bf16_match_the_f64_reference",
    );
}

#[test]
fn hopper_random_shapes_f16_match_the_f64_reference() {
    random_shapes::<f16>(
        AttentionKernel::Hopper,
        "hopper_random_shapes_f16_match_the_f64_reference",
    );
}

#[test]
fn hopper_serial_random_shapes_bf16_match_the_f64_reference() {
    random_shapes::<bf16>(
        AttentionKernel::HopperSerial,
        "hopper_serial_random_shapes_bf16_match_the_f64_reference",
    );
}

#[test]
fn internvit_shapes_on_sampled_rows_at_model_shapes() {
    internvit_shapes(
        AttentionKernel::Portable,
        "internvit_shapes_on_sampled_rows_at_model_shapes",
    );
}

#[test]
fn hopper_internvit_shapes_on_sampled_rows_at_model_shapes() {
    internvit_shapes(
        AttentionKernel::Hopper,
        "hopper_internvit_shapes_on_sampled_rows_at_model_shapes",
    );
}

#[test]
fn hopper_pingpong_random_shapes_f16_match_the_f64_reference() {
    random_shapes::<f16>(
        AttentionKernel::HopperPingPong,
        "hopper_pingpong_random_shapes_f16_match_the_f64_reference",
    );
}

#[test]
fn hopper_pingpong_internvit_shapes_on_sampled_rows_at_model_shapes() {
    internvit_shapes(
        AttentionKernel::HopperPingPong,
        "hopper_pingpong_internvit_shapes_on_sampled_rows_at_model_shapes",
    );
}

#[test]
fn hopper_persistent_random_shapes_bf16_match_the_f64_reference() {
    random_shapes::<bf16>(
        AttentionKernel::HopperPersistent,
        "hopper_persistent_random_shapes_bf16_match_the_f64_reference",
    );
}

#[test]
fn hopper_persistent_internvit_shapes_on_sampled_rows_at_model_shapes() {
    internvit_shapes(
        AttentionKernel::HopperPersistent,
        "hopper_persistent_internvit_shapes_on_sampled_rows_at_model_shapes",
    );
}

/// The same inputs give the same bits on every run of each kernel: a
/// result that moves between runs is a race, which the error rule passes
/// when it is small. Packed qkv at 257 tokens (2·128 + 1: both tails),
/// both head dims, with the LSE; 4 × 12 heads × 3 query tiles = 144
/// items, more than a 132-SM persistent grid's CTAs, so some walk two. Small
/// enough for the sanitizer runs.
fn same_bits_on_every_run(kernels: &[AttentionKernel], test: &str) {
    let Some(gpu) = gpu_for(kernels[0], test) else {
        return;
    };
    let mut rng = Rng::from_env_or_time(test);
    let stream = gpu.stream();
    let (batch, tokens, heads) = (4, 257, 12);
    for head_dim in [64, 128] {
        let part = |p| AttentionLayout::packed_qkv(batch, tokens, heads, head_dim, p);
        let out_layout = AttentionLayout::contiguous(batch, tokens, heads, head_dim);
        let qkv_values: Vec<bf16> = fill(&mut rng, batch * tokens * 3 * heads * head_dim, 2.0);
        let qkv = stream.clone_htod(&qkv_values).unwrap();
        let (n_out, n_lse) = (out_layout.span().unwrap(), batch * heads * tokens);
        for &kernel in kernels {
            let what = format!("{kernel:?} D{head_dim}");
            let mut out_bits = SameBitsEveryRun::new(format!("{what} outputs"));
            let mut lse_bits = SameBitsEveryRun::new(format!("{what} LSEs"));
            for run in 0..3 {
                let mut out = stream.clone_htod(&vec![bf16::NAN; n_out]).unwrap();
                let mut lse = stream.clone_htod(&vec![f32::NAN; n_lse]).unwrap();
                flash_attention_with(
                    kernel,
                    &gpu,
                    AttentionTensor::new(&qkv, part(QkvPart::Q)),
                    AttentionTensor::new(&qkv, part(QkvPart::K)),
                    AttentionTensor::new(&qkv, part(QkvPart::V)),
                    AttentionTensor::new(&mut out, out_layout),
                    Some(&mut lse),
                    None,
                )
                .unwrap_or_else(|e| panic!("{what}: {e}"));
                let out: Vec<bf16> = stream.clone_dtoh(&out).unwrap();
                let lse: Vec<f32> = stream.clone_dtoh(&lse).unwrap();
                assert!(
                    out.iter().all(|x| x.is_finite()) && lse.iter().all(|x| x.is_finite()),
                    "{what}: run {run} left an element unwritten or not finite"
                );
                out_bits.check(run, out.iter().map(|x| x.to_bits()).collect());
                lse_bits.check(run, lse.iter().map(|x| x.to_bits()).collect());
            }
        }
    }
}

#[test]
fn same_bits_on_every_run_of_the_portable_kernel() {
    same_bits_on_every_run(
        &[AttentionKernel::Portable],
        "same_bits_on_every_run_of_the_portable_kernel",
    );
}

#[test]
fn hopper_same_bits_on_every_run_of_every_version() {
    same_bits_on_every_run(
        &HOPPER_VERSIONS,
        "hopper_same_bits_on_every_run_of_every_version",
    );
}

fn internvit_shapes(kernel: AttentionKernel, test: &str) {
    let Some(gpu) = gpu_for(kernel, test) else {
        return;
    };
    let mut rng = Rng::from_env_or_time(test);
    for (heads, head_dim) in [(25, 128), (16, 64)] {
        let case = Case {
            batch: 7,
            n_q: 1025,
            n_kv: 1025,
            heads,
            head_dim,
            packed: true,
        };
        let (err, naive) = check_case::<bf16>(&gpu, kernel, &mut rng, case, 200);
        eprintln!("{case:?} bf16: max error {err:.2e}, naive same-precision {naive:.2e}");
    }
}

fn rms_norm_case<T: AttentionElement>(gpu: &Gpu, rng: &mut Rng, rows: QkvRows) {
    let stream = gpu.stream();
    let before: Vec<T> = fill(rng, rows.tokens * rows.row_len(), 3.0);
    let q_weight: Vec<T> = fill(rng, rows.heads_padded * rows.head_dim, 2.0);
    let k_weight: Vec<T> = fill(rng, rows.heads_padded * rows.head_dim, 2.0);
    let mut want = before.clone();
    qk_rms_norm_reference(&mut want, &rows, &q_weight, &k_weight, 1e-6).unwrap();
    let mut qkv = stream.clone_htod(&before).unwrap();
    let qw = stream.clone_htod(&q_weight).unwrap();
    let kw = stream.clone_htod(&k_weight).unwrap();
    qk_rms_norm(gpu, &mut qkv, &rows, &qw, &kw, 1e-6).unwrap();
    let got: Vec<T> = stream.clone_dtoh(&qkv).unwrap();
    common::attention_checks::check_qk_rms_norm(&rows, &before, &want, &got);
}

#[test]
fn qk_rms_norm_matches_the_cpu_reference() {
    let test = "qk_rms_norm_matches_the_cpu_reference";
    let Some(gpu) = gpu_or_skip(test) else {
        return;
    };
    let mut rng = Rng::from_env_or_time(test);
    let tokens = rng.range(1, 300) as usize;
    // NVLM's padded checkpoint, InternViT-6B unpadded, and an odd shape.
    for (heads_padded, heads_real, head_dim) in [(32, 25, 128), (25, 25, 128), (3, 1, 8)] {
        let rows = QkvRows {
            tokens,
            heads_padded,
            heads_real,
            head_dim,
        };
        rms_norm_case::<bf16>(&gpu, &mut rng, rows);
        rms_norm_case::<f16>(&gpu, &mut rng, rows);
    }
}

/// Bad inputs: the pure checks here, without a GPU; with one, the real
/// entry point returns the error and leaves the poisoned output alone.
#[test]
fn bad_inputs_are_rejected_before_launch() {
    let q = AttentionLayout::contiguous(2, 65, 4, 64);
    let n = q.span().unwrap();
    let odd_dim = AttentionLayout::contiguous(2, 65, 4, 80);
    let m = odd_dim.span().unwrap();
    assert!(matches!(
        check_flash_attention(&odd_dim, &odd_dim, &odd_dim, &odd_dim, [m; 4], None, 0.1),
        Err(Error::Unsupported(_))
    ));
    assert!(matches!(
        check_flash_attention(&q, &q, &q, &q, [n, n, n - 1, n], None, 0.1),
        Err(Error::BufferTooShort { what: "v", .. })
    ));
    let misaligned = AttentionLayout { offset: 3, ..q };
    assert!(matches!(
        check_flash_attention(&misaligned, &q, &q, &q, [n + 3, n, n, n], None, 0.1),
        Err(Error::InvalidShape(_))
    ));

    let Some(gpu) = gpu_or_skip("bad_inputs_are_rejected_before_launch") else {
        return;
    };
    let stream = gpu.stream();
    let mut rng = Rng::from_env_or_time("bad_inputs_are_rejected_before_launch");
    let input_values: Vec<bf16> = fill(&mut rng, n + 8, 1.0);
    let input = stream.clone_htod(&input_values).unwrap();
    let mut out = stream.clone_htod(&vec![bf16::NAN; n]).unwrap();
    let t = |layout| AttentionTensor::new(&input, layout);
    // Too short an output.
    let short_out = AttentionLayout::contiguous(2, 66, 4, 64);
    let r = flash_attention(
        &gpu,
        AttentionTensor::new(&input, short_out),
        t(q),
        t(q),
        AttentionTensor::new(&mut out, short_out),
        None,
        None,
    );
    assert!(matches!(
        r,
        Err(Error::BufferTooShort { what: "q", .. } | Error::BufferTooShort { what: "out", .. })
    ));
    // A view whose device address is 2 bytes past a 16-byte boundary.
    let shifted = input.slice(1..);
    let r = flash_attention(
        &gpu,
        AttentionTensor::new(&shifted, q),
        t(q),
        t(q),
        AttentionTensor::new(&mut out, q),
        None,
        None,
    );
    assert!(
        matches!(&r, Err(Error::InvalidShape(m)) if m.contains("16-byte")),
        "{r:?}"
    );
    // head_dim 80 has no kernel (buffers long enough, so that this is what
    // is refused).
    let odd_input = stream.clone_htod(&fill::<bf16>(&mut rng, m, 1.0)).unwrap();
    let mut odd_out = stream.clone_htod(&vec![bf16::NAN; m]).unwrap();
    let r = flash_attention(
        &gpu,
        AttentionTensor::new(&odd_input, odd_dim),
        AttentionTensor::new(&odd_input, odd_dim),
        AttentionTensor::new(&odd_input, odd_dim),
        AttentionTensor::new(&mut odd_out, odd_dim),
        None,
        None,
    );
    assert!(
        matches!(&r, Err(Error::Unsupported(m)) if m.contains("head_dim 80")),
        "{r:?}"
    );
    let odd_after: Vec<bf16> = stream.clone_dtoh(&odd_out).unwrap();
    assert!(
        odd_after.iter().all(|x| x.is_nan()),
        "a rejected head_dim 80 call wrote the output"
    );
    // Too short an LSE buffer.
    let mut lse = stream.clone_htod(&vec![f32::NAN; 2 * 4 * 65 - 1]).unwrap();
    let r = flash_attention(
        &gpu,
        t(q),
        t(q),
        t(q),
        AttentionTensor::new(&mut out, q),
        Some(&mut lse),
        None,
    );
    assert!(
        matches!(r, Err(Error::BufferTooShort { what: "lse", .. })),
        "{r:?}"
    );
    // qk-RMSNorm: heads_real > heads_padded.
    let rows = QkvRows {
        tokens: 1,
        heads_padded: 2,
        heads_real: 3,
        head_dim: 64,
    };
    let qkv_values: Vec<bf16> = fill(&mut rng, 3 * 3 * 64, 1.0);
    let mut qkv = stream.clone_htod(&qkv_values).unwrap();
    let r = qk_rms_norm(&gpu, &mut qkv, &rows, &input, &input, 1e-6);
    assert!(matches!(r, Err(Error::InvalidShape(_))), "{r:?}");

    let after: Vec<bf16> = stream.clone_dtoh(&out).unwrap();
    assert!(
        after.iter().all(|x| x.is_nan()),
        "a rejected call wrote the output"
    );
    let lse_after: Vec<f32> = stream.clone_dtoh(&lse).unwrap();
    assert!(
        lse_after.iter().all(|x| x.is_nan()),
        "a rejected call wrote the LSE"
    );
    let qkv_after: Vec<bf16> = stream.clone_dtoh(&qkv).unwrap();
    let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&qkv_after),
        bits(&qkv_values),
        "a rejected qk-RMSNorm changed qkv"
    );
}

/// The Hopper kernel reads k and v through one tensor-map shape, so it
/// refuses k and v whose token and head strides come in different orders,
/// before any launch, leaving the output as it was.
#[test]
fn hopper_k_and_v_in_different_orders_are_rejected_before_launch() {
    let test = "hopper_k_and_v_in_different_orders_are_rejected_before_launch";
    let Some(gpu) = hopper_or_skip(test) else {
        return;
    };
    let mut rng = Rng::from_env_or_time(test);
    let stream = gpu.stream();
    let tokens_outer = AttentionLayout::contiguous(2, 65, 4, 64);
    let heads_outer = AttentionLayout::heads_outer(2, 65, 4, 64);
    let n = tokens_outer.span().unwrap();
    let input = stream.clone_htod(&fill::<bf16>(&mut rng, n, 1.0)).unwrap();
    let mut out = stream.clone_htod(&vec![bf16::NAN; n]).unwrap();
    for kernel in HOPPER_VERSIONS {
        for (k, v) in [(tokens_outer, heads_outer), (heads_outer, tokens_outer)] {
            let r = flash_attention_with(
                kernel,
                &gpu,
                AttentionTensor::new(&input, tokens_outer),
                AttentionTensor::new(&input, k),
                AttentionTensor::new(&input, v),
                AttentionTensor::new(&mut out, tokens_outer),
                None,
                None,
            );
            assert!(
                matches!(&r, Err(Error::Unsupported(m)) if m.contains("same order")),
                "{kernel:?}: {r:?}"
            );
        }
    }
    let after: Vec<bf16> = stream.clone_dtoh(&out).unwrap();
    assert!(
        after.iter().all(|x| x.is_nan()),
        "a rejected call wrote the output"
    );
}

/// A buffer of another device, as any of flash attention's or
/// qk-RMSNorm's operands, is refused by name before the launch, which would
/// fault on memory the device cannot reach. Takes two GPUs.
#[test]
fn buffers_of_another_device_are_rejected_before_launch() {
    let test = "buffers_of_another_device_are_rejected_before_launch";
    let Some((gpu, other)) = two_devices_or_skip(test) else {
        return;
    };
    let mut rng = Rng::from_env_or_time(test);
    let layout = AttentionLayout::contiguous(1, 65, 2, 64);
    let n = layout.span().unwrap();
    let values: Vec<bf16> = fill(&mut rng, n, 1.0);
    let stream = gpu.stream();
    let ours = stream.clone_htod(&values).unwrap();
    let theirs = other.clone_htod(&values).unwrap();
    let mut out = stream.clone_htod(&vec![bf16::NAN; n]).unwrap();
    let mut their_out = other.clone_htod(&vec![bf16::NAN; n]).unwrap();
    let mut lse = stream.clone_htod(&vec![f32::NAN; 2 * 65]).unwrap();
    let mut their_lse = other.clone_htod(&vec![f32::NAN; 2 * 65]).unwrap();
    let refused = assert_refused_as_of_device_1;
    let t = |buffer| AttentionTensor::new(buffer, layout);
    for (slot, what) in ["q", "k", "v"].into_iter().enumerate() {
        let pick = |i| if i == slot { &theirs } else { &ours };
        let r = flash_attention(
            &gpu,
            t(pick(0)),
            t(pick(1)),
            t(pick(2)),
            AttentionTensor::new(&mut out, layout),
            Some(&mut lse),
            None,
        );
        refused(r, what);
    }
    let r = flash_attention(
        &gpu,
        t(&ours),
        t(&ours),
        t(&ours),
        AttentionTensor::new(&mut their_out, layout),
        None,
        None,
    );
    refused(r, "out");
    let r = flash_attention(
        &gpu,
        t(&ours),
        t(&ours),
        t(&ours),
        AttentionTensor::new(&mut out, layout),
        Some(&mut their_lse),
        None,
    );
    refused(r, "lse");

    let rows = QkvRows {
        tokens: 3,
        heads_padded: 2,
        heads_real: 2,
        head_dim: 64,
    };
    let qkv_values: Vec<bf16> = fill(&mut rng, rows.tokens * rows.row_len(), 1.0);
    let mut qkv = stream.clone_htod(&qkv_values).unwrap();
    let mut their_qkv = other.clone_htod(&qkv_values).unwrap();
    refused(
        qk_rms_norm(&gpu, &mut their_qkv, &rows, &ours, &ours, 1e-6),
        "qkv",
    );
    refused(
        qk_rms_norm(&gpu, &mut qkv, &rows, &theirs, &ours, 1e-6),
        "q weight",
    );
    refused(
        qk_rms_norm(&gpu, &mut qkv, &rows, &ours, &theirs, 1e-6),
        "k weight",
    );

    let out_after: Vec<bf16> = stream.clone_dtoh(&out).unwrap();
    assert!(
        out_after.iter().all(|x| x.is_nan()),
        "a refused call wrote out"
    );
    let lse_after: Vec<f32> = stream.clone_dtoh(&lse).unwrap();
    assert!(
        lse_after.iter().all(|x| x.is_nan()),
        "a refused call wrote lse"
    );
    let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let qkv_after: Vec<bf16> = stream.clone_dtoh(&qkv).unwrap();
    assert_eq!(
        bits(&qkv_after),
        bits(&qkv_values),
        "a refused qk-RMSNorm wrote qkv"
    );
    let their_out_after: Vec<bf16> = other.clone_dtoh(&their_out).unwrap();
    assert!(
        their_out_after.iter().all(|x| x.is_nan()),
        "a refused call wrote device 1's out"
    );

    // The attention block: each weight, x, the workspace and out.
    use nvlm_vision::attention::{AttentionBlock, AttentionBlockConfig, AttentionBlockWeights};
    let cfg = AttentionBlockConfig {
        hidden: 64,
        heads: 2,
        heads_padded: 2,
        head_dim: 64,
        qk_norm_eps: Some(1e-6),
        qkv_bias: true,
        proj_bias: true,
        proj_input_heads: 2,
    };
    let (batch, tokens) = (1, 65);
    let both = |rng: &mut Rng, n: usize| {
        let values: Vec<bf16> = fill(rng, n, 0.5);
        (
            stream.clone_htod(&values).unwrap(),
            other.clone_htod(&values).unwrap(),
        )
    };
    let c = cfg.hidden;
    let qkv_weight = both(&mut rng, cfg.qkv_width() * c);
    let qkv_bias = both(&mut rng, cfg.qkv_width());
    let norm = both(&mut rng, cfg.heads * cfg.head_dim);
    let proj_weight = both(&mut rng, c * cfg.proj_input());
    let proj_bias = both(&mut rng, c);
    let x = both(&mut rng, batch * tokens * c);
    let names = [
        "qkv weight",
        "qkv bias",
        "q norm",
        "k norm",
        "proj weight",
        "proj bias",
    ];
    let block = AttentionBlock::new(cfg, AttentionKernel::Portable, gpu.clone()).unwrap();
    let their_block = AttentionBlock::new(
        cfg,
        AttentionKernel::Portable,
        Gpu::from_stream(other.clone()).unwrap(),
    )
    .unwrap();
    let mut workspace = block.workspace::<bf16>(batch, tokens).unwrap();
    let mut their_workspace = their_block.workspace::<bf16>(batch, tokens).unwrap();
    let mut block_out = stream
        .clone_htod(&vec![bf16::NAN; batch * tokens * c])
        .unwrap();
    let mut their_block_out = other
        .clone_htod(&vec![bf16::NAN; batch * tokens * c])
        .unwrap();
    type Pair = (CudaSlice<bf16>, CudaSlice<bf16>);
    fn pick(theirs: bool, (ours, their): &Pair) -> cudarc::driver::CudaView<'_, bf16> {
        if theirs {
            their.as_view()
        } else {
            ours.as_view()
        }
    }
    // Device 1's weight `theirs` (by its index in `names`), or none.
    let weights = |theirs: Option<usize>| {
        let t = |i| theirs == Some(i);
        AttentionBlockWeights {
            qkv_weight: pick(t(0), &qkv_weight),
            qkv_bias: Some(pick(t(1), &qkv_bias)),
            q_norm: Some(pick(t(2), &norm)),
            k_norm: Some(pick(t(3), &norm)),
            proj_weight: pick(t(4), &proj_weight),
            proj_bias: Some(pick(t(5), &proj_bias)),
        }
    };
    // (device 1's weight, x of device 1, device 1's workspace, out of device 1)
    let mut forward = |theirs: Option<usize>, their_x: bool, their_ws: bool, their_out: bool| {
        block.forward(
            &weights(theirs),
            &pick(their_x, &x),
            (batch, tokens),
            if their_ws {
                &mut their_workspace
            } else {
                &mut workspace
            },
            &mut if their_out {
                &mut their_block_out
            } else {
                &mut block_out
            }
            .as_view_mut(),
        )
    };
    for (i, what) in names.into_iter().enumerate() {
        refused(forward(Some(i), false, false, false), what);
    }
    refused(forward(None, true, false, false), "x");
    refused(forward(None, false, true, false), "workspace qkv");
    refused(forward(None, false, false, true), "out");
    let after: Vec<bf16> = stream.clone_dtoh(&block_out).unwrap();
    assert!(
        after.iter().all(|x| x.is_nan()),
        "a refused block wrote out"
    );
    let their_after: Vec<bf16> = other.clone_dtoh(&their_block_out).unwrap();
    assert!(
        their_after.iter().all(|x| x.is_nan()),
        "a refused block wrote device 1's out"
    );
}

/// The attention sub-layer (qkv GEMM, qk-RMSNorm, flash attention, proj
/// GEMM) against the CPU reference at small random shapes, for both
/// kernels: 6B-like (qk-norm, padded heads, with and without the padded
/// proj input) and 300M-like (qkv bias), bf16 and f16. With
/// `replay_from_graph` the forward compared is a CUDA graph's replay: one
/// eager forward (cuBLASLt loads its kernels outside the capture), then
/// the forward captured on `gpu`'s stream (an engine's, whose context tracks
/// no events) and replayed into a re-poisoned output.
fn attention_block_case<T: AttentionElement + cudarc::driver::ValidAsZeroBits>(
    gpu: &std::sync::Arc<Gpu>,
    kernel: AttentionKernel,
    rng: &mut Rng,
    tolerance: f64,
    replay_from_graph: bool,
) where
    cudarc::cublaslt::CudaBlasLT: cudarc::cublaslt::Matmul<T>,
{
    use nvlm_vision::attention::{
        AttentionBlock, AttentionBlockConfig, AttentionBlockWeights, AttentionBlockWorkspace,
        attention_block_reference,
    };
    let head_dim = [64, 128][rng.range(0, 1) as usize];
    let heads = rng.range(1, 4) as usize;
    let heads_padded = heads + rng.range(0, 2) as usize;
    let qk_norm = rng.range(0, 1) == 0;
    let cfg = AttentionBlockConfig {
        hidden: 8 * rng.range(4, 24) as usize,
        heads,
        heads_padded,
        head_dim,
        qk_norm_eps: qk_norm.then_some(1e-6),
        qkv_bias: !qk_norm,
        proj_bias: true,
        proj_input_heads: if rng.range(0, 1) == 0 {
            heads
        } else {
            heads_padded
        },
    };
    let (batch, tokens) = (
        rng.range(1, 3) as usize,
        [1, 63, 65, 130][rng.range(0, 3) as usize],
    );
    let what = format!(
        "{kernel:?} {:?} {cfg:?} batch {batch} tokens {tokens}",
        T::DTYPE
    );
    let c = cfg.hidden;
    let amplitude = 1.0 / (c as f32).sqrt();
    let qkv_w: Vec<T> = fill(rng, cfg.qkv_width() * c, 2.0 * amplitude);
    let qkv_b: Vec<T> = fill(rng, cfg.qkv_width(), 0.5);
    let norm: Vec<T> = fill(rng, heads_padded * head_dim, 1.0);
    let proj_w: Vec<T> = fill(
        rng,
        c * cfg.proj_input(),
        1.0 / (cfg.proj_input() as f32).sqrt(),
    );
    let proj_b: Vec<T> = fill(rng, c, 0.5);
    let x: Vec<T> = fill(rng, batch * tokens * c, 1.0);
    let host = AttentionBlockWeights {
        qkv_weight: &qkv_w[..],
        qkv_bias: cfg.qkv_bias.then_some(&qkv_b[..]),
        q_norm: qk_norm.then_some(&norm[..]),
        k_norm: qk_norm.then_some(&norm[..]),
        proj_weight: &proj_w[..],
        proj_bias: Some(&proj_b[..]),
    };
    let want = attention_block_reference(&cfg, &host, &x, (batch, tokens)).unwrap();

    let stream = gpu.stream();
    let up = |v: &[T]| stream.clone_htod(v).unwrap();
    let (d_qkv_w, d_qkv_b, d_norm, d_proj_w, d_proj_b, d_x) = (
        up(&qkv_w),
        up(&qkv_b),
        up(&norm),
        up(&proj_w),
        up(&proj_b),
        up(&x),
    );
    let weights = AttentionBlockWeights {
        qkv_weight: d_qkv_w.as_view(),
        qkv_bias: cfg.qkv_bias.then(|| d_qkv_b.as_view()),
        q_norm: qk_norm.then(|| d_norm.as_view()),
        k_norm: qk_norm.then(|| d_norm.as_view()),
        proj_weight: d_proj_w.as_view(),
        proj_bias: Some(d_proj_b.as_view()),
    };
    let block = AttentionBlock::new(cfg, kernel, gpu.clone()).unwrap();
    let mut workspace = block.workspace::<T>(batch, tokens).unwrap();
    let poison = vec![T::from_f32(f32::NAN); batch * tokens * c];
    let mut out = stream.clone_htod(&poison).unwrap();
    // NaN intermediates too: an element the forward reads without writing
    // it reaches the output as NaN.
    let poison_workspace = |workspace: &mut AttentionBlockWorkspace<T>| {
        for buffer in [&mut workspace.qkv, &mut workspace.attended] {
            let nan = vec![T::from_f32(f32::NAN); buffer.len()];
            stream.memcpy_htod(&nan, buffer).unwrap();
        }
    };
    let forward = |out: &mut CudaSlice<T>, workspace: &mut AttentionBlockWorkspace<T>| {
        block.forward(
            &weights,
            &d_x.as_view(),
            (batch, tokens),
            workspace,
            &mut out.as_view_mut(),
        )
    };
    poison_workspace(&mut workspace);
    forward(&mut out, &mut workspace).unwrap_or_else(|e| panic!("{what}: {e}"));
    if replay_from_graph {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)
            .unwrap();
        let captured = forward(&mut out, &mut workspace);
        let graph = stream.end_capture(CUgraphInstantiate_flags(0));
        captured.unwrap_or_else(|e| panic!("{what}: captured forward: {e}"));
        let graph = graph.unwrap().expect("the capture recorded work");
        // The replay alone must write the output and every intermediate.
        stream.memcpy_htod(&poison, &mut out).unwrap();
        poison_workspace(&mut workspace);
        graph.launch().unwrap();
    }
    let got: Vec<T> = stream.clone_dtoh(&out).unwrap();
    // The proj weight, of the right length, one element into its buffer:
    // off cuBLASLt's 256-byte grid, refused before the qkv GEMM.
    let d_proj_w_buffer = up(&[&[T::from_f32(0.0)], &proj_w[..]].concat());
    let offset_proj = AttentionBlockWeights {
        proj_weight: d_proj_w_buffer.slice(1..),
        ..weights
    };
    match block.forward(
        &offset_proj,
        &d_x.as_view(),
        (batch, tokens),
        &mut workspace,
        &mut out.as_view_mut(),
    ) {
        Err(nvlm_vision::Error::InvalidShape(m)) if m.contains("proj weight at") => {}
        other => panic!("{what}: an offset proj weight gave {other:?}"),
    }
    let (mut err2, mut ref2, mut max_abs, mut largest) = (0f64, 0f64, 0f64, 0f64);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let g = f64::from(g.to_f32());
        assert!(g.is_finite(), "{what}: output {i} = {g} (unwritten or NaN)");
        err2 += (g - w).powi(2);
        ref2 += w * w;
        max_abs = max_abs.max((g - w).abs());
        largest = largest.max(w.abs());
    }
    let rel = (err2 / ref2).sqrt();
    eprintln!("{what}: relative error {rel:.2e}, max abs {max_abs:.2e}");
    assert!(
        rel <= tolerance,
        "{what}: relative error {rel:.2e} > {tolerance:.0e}"
    );
    // The norm alone would hide a few wrong elements among many.
    assert!(
        max_abs <= 2.0 * tolerance * largest,
        "{what}: max abs {max_abs:.2e} > 2 x {tolerance:.0e} x max |ref| {largest:.2e}"
    );
}

fn attention_block_matches(kernel: AttentionKernel, test: &str) {
    let Some(gpu) = gpu_for(kernel, test) else {
        return;
    };
    let mut rng = Rng::from_env_or_time(test);
    for _ in 0..6 {
        // Rounding to the dtype where the GPU stores (mirrored by the
        // reference) leaves the f32-vs-f64 sums and the final rounding.
        attention_block_case::<bf16>(&gpu, kernel, &mut rng, 1.5e-2, false);
        attention_block_case::<f16>(&gpu, kernel, &mut rng, 3e-3, false);
    }
}

/// The sub-layer as an engine captures it into a CUDA graph: on its own
/// stream, cudarc's event tracking off, the kernels loaded first. A capture
/// with tracking on is refused by name before anything is queued.
fn attention_block_replays(kernel: AttentionKernel, test: &str) {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let Some(gpu) = gpu_for(kernel, test) else {
        return;
    };
    let mut rng = Rng::from_env_or_time(test);
    let stream = gpu.context().new_stream().unwrap();
    let engine = Gpu::from_stream(stream.clone()).unwrap();
    engine.load_kernels().unwrap();

    let layout = AttentionLayout::contiguous(1, 65, 2, 64);
    let len = 65 * 2 * 64;
    let qkv = stream
        .clone_htod(&fill::<bf16>(&mut rng, len, 1.0))
        .unwrap();
    let mut out = stream.clone_htod(&vec![bf16::NAN; len]).unwrap();
    stream.synchronize().unwrap();
    assert!(gpu.context().is_managing_stream_synchronization());
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)
        .unwrap();
    let refused = flash_attention_with(
        kernel,
        &engine,
        AttentionTensor::new(&qkv, layout),
        AttentionTensor::new(&qkv, layout),
        AttentionTensor::new(&qkv, layout),
        AttentionTensor::new(&mut out, layout),
        None,
        None,
    );
    // An empty graph, if any: only that the capture ended matters.
    drop(stream.end_capture(CUgraphInstantiate_flags(0)));
    assert!(!engine.is_capturing().unwrap());
    match refused {
        Err(Error::Unsupported(m)) if m.contains("event tracking") => {}
        other => panic!("{test}: a capture with event tracking on gave {other:?}"),
    }

    // SAFETY: every buffer of the cases lives on the engine's one stream.
    unsafe { gpu.context().disable_event_tracking() };
    for _ in 0..2 {
        attention_block_case::<bf16>(&engine, kernel, &mut rng, 1.5e-2, true);
        attention_block_case::<f16>(&engine, kernel, &mut rng, 3e-3, true);
    }
}

#[test]
fn attention_block_replays_from_a_cuda_graph() {
    attention_block_replays(
        AttentionKernel::Portable,
        "attention_block_replays_from_a_cuda_graph",
    );
}

#[test]
fn hopper_attention_block_replays_from_a_cuda_graph() {
    attention_block_replays(
        AttentionKernel::Hopper,
        "hopper_attention_block_replays_from_a_cuda_graph",
    );
}

#[test]
fn attention_block_matches_the_cpu_reference() {
    attention_block_matches(
        AttentionKernel::Portable,
        "attention_block_matches_the_cpu_reference",
    );
}

#[test]
fn hopper_attention_block_matches_the_cpu_reference() {
    attention_block_matches(
        AttentionKernel::Hopper,
        "hopper_attention_block_matches_the_cpu_reference",
    );
}
