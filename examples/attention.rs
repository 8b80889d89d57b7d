//! InternViT self-attention on the GPU, read straight out of the packed qkv
//! buffer `[tiles, 1025, 3, heads, head_dim]` the qkv GEMM writes, timed
//! with CUDA events and checked on a few rows against the f64 reference.
//!
//! cargo run --release --example attention -- [--model 6b|300m] [--tiles N]
//!     [--kernel portable|hopper]
//!
//! Needs a CUDA GPU; `--kernel hopper` needs compute capability 9.0.

use cudarc::driver::sys::CUevent_flags;
use half::bf16;
use nvlm_vision::attention::{
    AttentionKernel, AttentionLayout, AttentionTensor, QkvPart, attention_row_f64,
    attention_row_same_precision, default_scale, flash_attention_with,
};
use nvlm_vision::cuda::Gpu;
use std::process::ExitCode;

const USAGE: &str = "usage: attention [--model 6b|300m] [--tiles N] [--kernel portable|hopper]

  --model   InternViT-6B (25 heads of 128, NVLM's real heads) or
            InternViT-300M (16 heads of 64); default 6b
  --tiles   images in the batch, 1 to 13 (default 7: 6 tiles + thumbnail)
  --kernel  portable (mma.sync, sm_80 and newer; the default) or hopper
            (wgmma and TMA, compute capability 9.0)";

/// A ViT tile's tokens: 32 x 32 patches of 14 px, and CLS.
const TOKENS: usize = 1025;
/// Timed launches; the median is reported.
const RUNS: usize = 20;

struct Args {
    heads: usize,
    head_dim: usize,
    tiles: usize,
    kernel: AttentionKernel,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut parsed = Args {
        heads: 25,
        head_dim: 128,
        tiles: 7,
        kernel: AttentionKernel::Portable,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match (flag.as_str(), value.as_str()) {
            ("--model", "6b") => (parsed.heads, parsed.head_dim) = (25, 128),
            ("--model", "300m") => (parsed.heads, parsed.head_dim) = (16, 64),
            ("--tiles", n) => {
                parsed.tiles = n
                    .parse()
                    .ok()
                    .filter(|t| (1..=13).contains(t))
                    .ok_or(format!("--tiles {n}: a count from 1 to 13"))?
            }
            ("--kernel", "portable") => parsed.kernel = AttentionKernel::Portable,
            ("--kernel", "hopper") => parsed.kernel = AttentionKernel::Hopper,
            _ => return Err(format!("{flag} {value}: not an option")),
        }
    }
    Ok(parsed)
}

/// Uniform values in [-amplitude, amplitude) from a xorshift stream: never
/// zeros, which would time faster than real activations.
fn uniform(len: usize, amplitude: f32, seed: &mut u64) -> Vec<bf16> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            let unit = (*seed >> 40) as f32 / (1u64 << 24) as f32;
            bf16::from_f32((2.0 * unit - 1.0) * amplitude)
        })
        .collect()
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let gpu = Gpu::new(0)?;
    let stream = gpu.stream();
    let (b, n, h, d) = (args.tiles, TOKENS, args.heads, args.head_dim);
    // At ±2, q and k give D^-0.5-scaled scores of spread ~1: a softmax
    // neither flat nor one-hot.
    let qkv = uniform(b * n * 3 * h * d, 2.0, &mut 0x9E37_79B9_7F4A_7C15);
    let part = |p| AttentionLayout::packed_qkv(b, n, h, d, p);
    let out_layout = AttentionLayout::contiguous(b, n, h, d);
    let qkv_dev = stream.clone_htod(&qkv)?;
    // NaN until written, so a row the kernel missed shows in the check.
    let mut out_dev = stream.clone_htod(&vec![bf16::NAN; b * n * h * d])?;
    let mut attend = || {
        flash_attention_with(
            args.kernel,
            &gpu,
            AttentionTensor::new(&qkv_dev, part(QkvPart::Q)),
            AttentionTensor::new(&qkv_dev, part(QkvPart::K)),
            AttentionTensor::new(&qkv_dev, part(QkvPart::V)),
            AttentionTensor::new(&mut out_dev, out_layout),
            None,
            None,
        )
    };
    // The first call loads the kernels.
    attend()?;
    let event = || {
        gpu.context()
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
    };
    let (start, end) = (event()?, event()?);
    let mut times_us = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        start.record(stream)?;
        attend()?;
        end.record(stream)?;
        times_us.push(f64::from(start.elapsed_ms(&end)?) * 1e3);
    }
    times_us.sort_by(f64::total_cmp);
    let median_us = times_us[RUNS / 2];
    let flops = 4.0 * (b * h * n * n * d) as f64;
    println!(
        "{:?} kernel, B{b} H{h} D{d} N{n} bf16: {median_us:.1} µs (median of {RUNS}), {:.0} TFLOP/s",
        args.kernel,
        flops / median_us * 1e-6
    );

    let out: Vec<bf16> = stream.clone_dtoh(&out_dev)?;
    let (q, k, v) = (
        AttentionTensor::new(&qkv[..], part(QkvPart::Q)),
        AttentionTensor::new(&qkv[..], part(QkvPart::K)),
        AttentionTensor::new(&qkv[..], part(QkvPart::V)),
    );
    let scale = default_scale(d);
    let (mut kernel_error, mut naive_error) = (0f64, 0f64);
    // CLS, the first patch, a middle token, and the last tile's last token
    // in its last head.
    let rows = [
        (0, 0, 0),
        (0, 1, h / 2),
        (b / 2, n / 2, 1),
        (b - 1, n - 1, h - 1),
    ];
    for row in rows {
        let (want, _) = attention_row_f64(&q, &k, &v, row, f64::from(scale))?;
        let naive = attention_row_same_precision(&q, &k, &v, row, scale)?;
        let at = out_layout.index(row.0, row.1, row.2, 0);
        for ((got, naive), want) in out[at..at + d].iter().zip(&naive).zip(&want) {
            let got = f64::from(got.to_f32());
            if !got.is_finite() {
                return Err(format!("row {row:?} holds {got}").into());
            }
            kernel_error = kernel_error.max((got - want).abs());
            naive_error = naive_error.max((f64::from(naive.to_f32()) - want).abs());
        }
    }
    println!(
        "largest error on {} rows against the f64 reference: {kernel_error:.2e} \
         (a naive bf16 attention: {naive_error:.2e})",
        rows.len()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("attention: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attention: {e}");
            ExitCode::FAILURE
        }
    }
}
