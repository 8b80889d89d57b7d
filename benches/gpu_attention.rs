//! Flash attention on the GPU at InternViT's shapes (N = 1025, bf16), q/k/v
//! read straight from the packed qkv buffer `[B, N, 3, H, D]` as the model
//! produces it, output `[B, N, H, D]`. The same cases as
//! `scripts/peer_attention.py` (torch SDPA per backend); the run's summary
//! (scripts/gpu_summary.py) gives TFLOP/s, 4·B·H·N²·D per call, from the
//! ids' case names. The N = 1024 cases measure what the 1025 tail costs
//! (ideal: (1025/1024)² = +0.2%). Runs the portable kernel, and on compute
//! capability 9.0 the Hopper kernel's four versions (`nvlm-hopper-serial`
//! v1, `nvlm-hopper` v2, `nvlm-hopper-pingpong` v3,
//! `nvlm-hopper-persistent` v4) unless `NVLM_VISION_BENCH_SKIP_HOPPER` is
//! set. Skips without a GPU.

mod common;

use common::{DeviceGroup, bench_hopper, device_time, gpu_or_skip};
use criterion::{Criterion, criterion_group, criterion_main};
use half::bf16;
use nvlm_vision::attention::{
    AttentionKernel, AttentionLayout, AttentionTensor, QkvPart, flash_attention_with,
};

/// (batch, heads, head_dim, tokens): InternViT-6B (25 x 128) and -300M
/// (16 x 64) at 7 tiles (NVLM-D's maximum) and 13 (InternVL's), 1025 tokens
/// per tile; and 1024 tokens, the same work without the 1-token tail.
const CASES: [(usize, usize, usize, usize); 6] = [
    (7, 25, 128, 1025),
    (13, 25, 128, 1025),
    (7, 16, 64, 1025),
    (13, 16, 64, 1025),
    (7, 25, 128, 1024),
    (7, 16, 64, 1024),
];
/// Input sets rotate until they span this many bytes, so no call finds its
/// inputs in the previous call's L2 (50 MiB on an H100).
const ROTATION_BYTES: usize = 160 << 20;

fn attention(c: &mut Criterion) {
    let Some(gpu) = gpu_or_skip("gpu_attention") else {
        return;
    };
    let mut kernels = vec![(AttentionKernel::Portable, "nvlm-portable")];
    if bench_hopper(&gpu, "the Hopper attention bench") {
        kernels.extend([
            (AttentionKernel::HopperSerial, "nvlm-hopper-serial"),
            (AttentionKernel::Hopper, "nvlm-hopper"),
            (AttentionKernel::HopperPingPong, "nvlm-hopper-pingpong"),
            (AttentionKernel::HopperPersistent, "nvlm-hopper-persistent"),
        ]);
    }
    let stream = gpu.stream();
    let mut group = DeviceGroup::new(c, "attention");
    group.group.sample_size(20);
    // Every case on one kernel before the next: the Hopper kernel, last,
    // cannot take the portable kernel's numbers with it if it fails.
    for &(kernel, name) in &kernels {
        for (batch, heads, head_dim, tokens) in CASES {
            let case = format!("B{batch}_H{heads}_D{head_dim}_N{tokens}");
            let packed_len = batch * tokens * 3 * heads * head_dim;
            let sets = (ROTATION_BYTES / (packed_len * 2)).max(1) + 1;
            // Random values (never zeros: they can run faster than real data).
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ packed_len as u64;
            let host: Vec<bf16> = (0..packed_len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    bf16::from_f32((x >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0)
                })
                .collect();
            let qkv: Vec<_> = (0..sets)
                .map(|_| stream.clone_htod(&host).unwrap())
                .collect();
            let out_layout = AttentionLayout::contiguous(batch, tokens, heads, head_dim);
            let mut outs: Vec<_> = (0..sets)
                .map(|_| {
                    stream
                        .alloc_zeros::<bf16>(out_layout.span().unwrap())
                        .unwrap()
                })
                .collect();
            let part = |p| AttentionLayout::packed_qkv(batch, tokens, heads, head_dim, p);
            group.bench(&format!("{name}/{case}"), |iters| {
                device_time(&gpu, iters, |i| {
                    let s = i as usize % sets;
                    flash_attention_with(
                        kernel,
                        &gpu,
                        AttentionTensor::new(&qkv[s], part(QkvPart::Q)),
                        AttentionTensor::new(&qkv[s], part(QkvPart::K)),
                        AttentionTensor::new(&qkv[s], part(QkvPart::V)),
                        AttentionTensor::new(&mut outs[s], out_layout),
                        None,
                        None,
                    )
                    .expect("flash_attention");
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, attention);
criterion_main!(benches);
