//! CPU DHR preprocessing, one thread, the same work `scripts/bench_pillow.py`
//! times for Pillow + torchvision arithmetic: NVLM-D config (max 6 tiles +
//! thumbnail), uint8 RGB in, normalised f32 tensor out.

mod common;

use common::noise;
use criterion::{Criterion, criterion_group, criterion_main};
use nvlm_vision::preprocess::{ImageView, PillowVersion, PixelFormat, Preprocessor};
use std::hint::black_box;

/// The sizes of REFERENCE.md's anchor table.
const SIZES: [(u32, u32); 3] = [(4032, 3024), (1920, 1080), (640, 480)];

fn dhr(c: &mut Criterion) {
    let mut group = c.benchmark_group("dhr_cpu_f32_nvlm_d");
    group.sample_size(20);
    for (w, h) in SIZES {
        let pixels = noise(w as usize * h as usize * 3, 0);
        let view = ImageView::packed(&pixels, w, h, PixelFormat::Rgb8).unwrap();
        for pillow in [PillowVersion::V12, PillowVersion::V13] {
            let pre = Preprocessor {
                pillow,
                ..Default::default()
            };
            let plan = pre.plan(w, h).unwrap();
            let mut out = vec![0f32; plan.tensor_len()];
            group.bench_function(format!("{w}x{h}/{pillow:?}"), |b| {
                b.iter(|| pre.run_into(black_box(&view), &plan, &mut out).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, dhr);
criterion_main!(benches);
