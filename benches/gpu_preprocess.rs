//! DHR preprocessing on the GPU, every kernel version, on the sizes of
//! REFERENCE.md §7 and `scripts/peer_preprocess.py` (which times torch, PIL
//! and a device copy on the same cases): NVLM-D config (1..=6 tiles of 448
//! + thumbnail), random uint8 RGB, f32 `[T, 3, 448, 448]` out.
//!
//! Ids `preprocess/<impl>/<case>`:
//! - `nvlm-v1` .. `nvlm-v4`: each kernel on an image already on the device,
//!   of a shape met before (v2–v4 reuse the tables kept on the device). v1
//!   as written, not its kernels alone: each call builds and uploads its
//!   tables, zeroes an intermediate and synchronises once per resize
//!   target, so its time is host and GPU work in series;
//! - `nvlm-v2-first-sight`: the default kernel on a shape not met before (a
//!   new `CudaPreprocessor` each call: the host builds and uploads the
//!   tables every time);
//! - `nvlm-v2-host`: from pageable host memory, the copy included;
//! - `nvlm-v2-pinned-batch`: host images 8 at a time through
//!   `run_batch_into` (pinned staging, copies overlapping kernels), time
//!   per image; `nvlm-v2-pinned-input`: the same from caller-filled
//!   `PinnedImage`s through `run_pinned_batch_into` (no CPU copy);
//! - `h2d-copy-pageable`, `h2d-copy-pinned`: the image's bytes copied
//!   alone, the PCIe time the host-input ids are to be compared with.
//!
//! Times are CUDA-event times of calls queued back to back, rotating among
//! input and output sets larger than L2; they include any time the stream
//! waits on the host (table building, copies). Skips without a GPU.

mod common;

use common::{DeviceGroup, Sample, device_time, gpu_or_skip, noise};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use cudarc::driver::CudaSlice;
use nvlm_vision::cuda::Gpu;
use nvlm_vision::preprocess::{
    CudaPreprocessor, DeviceImage, ImageView, PinnedImage, PixelFormat, PreprocessKernel,
    Preprocessor, TilePlan,
};

const SIZES: [(u32, u32); 3] = [(4032, 3024), (1920, 1080), (640, 480)];
/// Input + output bytes the rotation spans: several times an H100/H200's L2.
const ROTATE_BYTES: usize = 256 << 20;
/// Images per `run_batch_into` call in the pinned-batch ids.
const BATCH: usize = 8;

/// One case's plan, host images and output tensors, in sets that together
/// exceed L2.
struct Inputs {
    plan: TilePlan,
    in_bytes: usize,
    hosts: Vec<Vec<u8>>,
    outs: Vec<CudaSlice<f32>>,
}

impl Inputs {
    fn new(gpu: &Gpu, pre: &Preprocessor, (w, h): (u32, u32)) -> Inputs {
        let plan = pre.plan(w, h).unwrap();
        let in_bytes = (w * h * 3) as usize;
        let out_bytes = plan.tensor_len() * 4;
        let sets = ROTATE_BYTES.div_ceil(in_bytes + out_bytes).clamp(2, 32);
        let outs = (0..sets)
            .map(|_| gpu.stream().alloc_zeros::<f32>(plan.tensor_len()).unwrap())
            .collect();
        Inputs {
            plan,
            in_bytes,
            hosts: (0..sets).map(|s| noise(in_bytes, s as u64)).collect(),
            outs,
        }
    }
}

fn views(hosts: &[Vec<u8>], (w, h): (u32, u32)) -> Vec<ImageView<'_>> {
    hosts
        .iter()
        .map(|p| ImageView::packed(p, w, h, PixelFormat::Rgb8).unwrap())
        .collect()
}

fn preprocess(c: &mut Criterion) {
    let Some(gpu) = gpu_or_skip("gpu_preprocess") else {
        return;
    };
    let stream = gpu.stream();
    let pre = Preprocessor::default();
    let default = PreprocessKernel::default();
    let default_name = format!("nvlm-{}", default.name());
    let mut group = DeviceGroup::new(c, "preprocess");
    // The batch ids come last: their second (copy) stream turns on cudarc's
    // event tracking while it exists, and so host work per buffer use, which
    // the other ids must all pay or all not.
    for (w, h) in SIZES {
        let case = format!("{w}x{h}");
        let Inputs {
            plan,
            in_bytes,
            hosts,
            mut outs,
        } = Inputs::new(&gpu, &pre, (w, h));
        let sets = hosts.len();
        let views = views(&hosts, (w, h));
        let images: Vec<DeviceImage> = views
            .iter()
            .map(|v| DeviceImage::upload(&gpu, v).unwrap())
            .collect();
        // The floor's bytes: input read once, output written once.
        group
            .group
            .throughput(Throughput::Bytes((in_bytes + plan.tensor_len() * 4) as u64));
        for kernel in PreprocessKernel::ALL {
            let cuda = CudaPreprocessor::new(pre, gpu.clone()).with_kernel(kernel);
            let name = format!("nvlm-{}", kernel.name());
            group.bench(&format!("{name}/{case}"), |iters| {
                device_time(&gpu, iters, |i| {
                    let k = i as usize % sets;
                    cuda.run_device_into(&images[k], &plan, &mut outs[k])
                        .expect("preprocess");
                })
            });
        }
        // An image of a shape not met before: a new preprocessor each call,
        // so the host builds and uploads the tables every time.
        group.bench(&format!("{default_name}-first-sight/{case}"), |iters| {
            device_time(&gpu, iters, |i| {
                let k = i as usize % sets;
                CudaPreprocessor::new(pre, gpu.clone())
                    .run_device_into(&images[k], &plan, &mut outs[k])
                    .expect("preprocess");
            })
        });
        let cuda = CudaPreprocessor::new(pre, gpu.clone());
        group.bench(&format!("{default_name}-host/{case}"), |iters| {
            device_time(&gpu, iters, |i| {
                let k = i as usize % sets;
                cuda.run_into(&views[k], &plan, &mut outs[k])
                    .expect("preprocess");
            })
        });
        // The copy alone: from pageable memory (what run_into's copy
        // does) and from pinned memory (the DMA rate).
        let mut dsts: Vec<_> = (0..sets)
            .map(|_| stream.alloc_zeros::<u8>(in_bytes).unwrap())
            .collect();
        group.group.throughput(Throughput::Bytes(in_bytes as u64));
        group.bench(&format!("h2d-copy-pageable/{case}"), |iters| {
            device_time(&gpu, iters, |i| {
                let k = i as usize % sets;
                stream.memcpy_htod(&hosts[k], &mut dsts[k]).expect("copy");
            })
        });
        let pinned: Vec<_> = hosts
            .iter()
            .map(|h| {
                // SAFETY: filled from `h` before any copy reads it.
                let mut p = unsafe { gpu.context().alloc_pinned::<u8>(in_bytes) }.unwrap();
                p.as_mut_slice().unwrap().copy_from_slice(h);
                p
            })
            .collect();
        group.bench(&format!("h2d-copy-pinned/{case}"), |iters| {
            device_time(&gpu, iters, |i| {
                let k = i as usize % sets;
                stream.memcpy_htod(&pinned[k], &mut dsts[k]).expect("copy");
            })
        });
    }
    // Host images in batches: through pinned staging (the time is per
    // image, each batch's copies overlapping its kernels), and from
    // caller-filled pinned images.
    for (w, h) in SIZES {
        let case = format!("{w}x{h}");
        let Inputs {
            plan,
            in_bytes,
            hosts,
            mut outs,
        } = Inputs::new(&gpu, &pre, (w, h));
        let sets = hosts.len();
        let pinned_images: Vec<PinnedImage> = hosts
            .iter()
            .map(|bytes| {
                let mut p = PinnedImage::new(&gpu, w, h, PixelFormat::Rgb8).unwrap();
                p.bytes_mut().unwrap().copy_from_slice(bytes);
                p
            })
            .collect();
        let pinned_refs: Vec<&PinnedImage> = pinned_images.iter().collect();
        let views = views(&hosts, (w, h));
        let cuda = CudaPreprocessor::new(pre, gpu.clone());
        group
            .group
            .throughput(Throughput::Bytes((in_bytes + plan.tensor_len() * 4) as u64));
        group.bench(&format!("{default_name}-pinned-batch/{case}"), |iters| {
            in_batches(&gpu, iters, sets, |sets| {
                cuda.run_batch_into(&views[sets.clone()], &mut outs[sets])
                    .expect("preprocess");
            })
        });
        group.bench(&format!("{default_name}-pinned-input/{case}"), |iters| {
            in_batches(&gpu, iters, sets, |sets| {
                cuda.run_pinned_batch_into(&pinned_refs[sets.clone()], &mut outs[sets])
                    .expect("preprocess");
            })
        });
    }
    group.finish();
}

/// Device time of `iters` images queued by `run` in batches of up to
/// `BATCH` consecutive sets (a range of them, never wrapping past `sets`).
fn in_batches(
    gpu: &Gpu,
    iters: u64,
    sets: usize,
    mut run: impl FnMut(std::ops::Range<usize>),
) -> Sample {
    let mut done = 0u64;
    let whole = device_time(gpu, 1, |_| {
        while done < iters {
            let first = done as usize % sets;
            let n = (BATCH as u64).min(iters - done).min((sets - first) as u64) as usize;
            run(first..first + n);
            done += n as u64;
        }
    });
    // One timed call queued every image: per image, host and GPU.
    let images = iters.max(1);
    Sample {
        gpu: whole.gpu,
        calls: images,
        host_per_call: whole.host_per_call.div_f64(images as f64),
    }
}

criterion_group!(benches, preprocess);
criterion_main!(benches);
