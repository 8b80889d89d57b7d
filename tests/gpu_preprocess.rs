//! The CUDA preprocessing kernels (every `PreprocessKernel` version) against
//! the CPU reference, byte for byte.
//! Without a usable GPU these print "skipped: no CUDA device" and pass;
//! with `NVLM_VISION_REQUIRE_GPU=1` they fail instead.

mod common;

use common::Rng;
use common::decode::decode_file;
use common::gpu::gpu_or_skip;
use cudarc::driver::{CudaSlice, DeviceRepr};
use half::{bf16, f16};
use nvlm_vision::Error;
use nvlm_vision::cuda::Gpu;
use nvlm_vision::dtype::TensorElement;
use nvlm_vision::preprocess::{
    CudaPreprocessor, DhrConfig, ImageView, PillowVersion, PinnedImage, PixelFormat, PixelValues,
    PreprocessKernel, Preprocessor, TilePlan,
};
use std::sync::Arc;

/// Runs the CPU path and every kernel version on `view` and asserts equal
/// bits and a fully written, NaN-poisoned device output.
fn check<T: TensorElement + DeviceRepr>(
    gpu: &Arc<Gpu>,
    pre: Preprocessor,
    view: &ImageView<'_>,
    what: &str,
) {
    let want = pre.run::<T>(view).unwrap();
    for kernel in PreprocessKernel::ALL {
        let cuda = CudaPreprocessor::new(pre, gpu.clone()).with_kernel(kernel);
        check_run(gpu, &cuda, view, &want, what);
    }
}

/// `cuda.run_into(view)` into a NaN-poisoned tensor equals `want` (the CPU
/// path's output), bit for bit.
fn check_run<T: TensorElement + DeviceRepr>(
    gpu: &Arc<Gpu>,
    cuda: &CudaPreprocessor,
    view: &ImageView<'_>,
    want: &PixelValues<T>,
    what: &str,
) {
    let poison = vec![T::from_f32(f32::NAN); want.plan.tensor_len()];
    let mut out = gpu.stream().clone_htod(&poison).unwrap();
    cuda.run_into(view, &want.plan, &mut out).unwrap();
    let got: Vec<T> = gpu.stream().clone_dtoh(&out).unwrap();
    let (got, want_bytes): (&[u8], &[u8]) =
        (bytemuck::cast_slice(&got), bytemuck::cast_slice(&want.data));
    if let Some(i) = got.iter().zip(want_bytes).position(|(a, b)| a != b) {
        panic!(
            "{what} {:?} {:?}: first differing byte {i} of {}",
            T::DTYPE,
            cuda.kernel,
            got.len()
        );
    }
}

/// One image of a batch: its plan and its f32 tensor on the device equal
/// the CPU path's, bit for bit.
fn check_batch_output(
    gpu: &Arc<Gpu>,
    pre: Preprocessor,
    view: &ImageView<'_>,
    plan: &TilePlan,
    out: &CudaSlice<f32>,
    what: &str,
) {
    let want = pre.run::<f32>(view).unwrap();
    let what = format!(
        "{}x{} {:?} {what}",
        view.width(),
        view.height(),
        view.format()
    );
    assert_eq!(*plan, want.plan, "{what}");
    let got: Vec<f32> = gpu.stream().clone_dtoh(out).unwrap();
    if let Some(i) = got
        .iter()
        .zip(&want.data)
        .position(|(a, b)| a.to_bits() != b.to_bits())
    {
        panic!("{what}: first differing element {i} of {}", got.len());
    }
}

/// A NaN-filled f32 output tensor on the device for each image size.
fn poisoned_outputs(
    gpu: &Arc<Gpu>,
    pre: Preprocessor,
    sizes: impl Iterator<Item = (u32, u32)>,
) -> Vec<CudaSlice<f32>> {
    sizes
        .map(|(w, h)| {
            let len = pre.plan(w, h).unwrap().tensor_len();
            gpu.stream().clone_htod(&vec![f32::NAN; len]).unwrap()
        })
        .collect()
}

/// Every size in `sizes` in a rotating pixel format with padded rows, three
/// tile limits, a random Pillow version, all three dtypes.
fn check_random_images(gpu: &Arc<Gpu>, rng: &mut Rng, sizes: &[(u32, u32)]) {
    let formats = [
        PixelFormat::Rgb8,
        PixelFormat::Rgba8,
        PixelFormat::L8,
        PixelFormat::La8,
    ];
    for (n, &(w, h)) in sizes.iter().enumerate() {
        let format = formats[n % 4];
        let stride = w as usize * format.bytes_per_pixel() + rng.range(0, 9) as usize;
        let pixels = rng.bytes(stride * h as usize);
        let view = ImageView::new(&pixels, w, h, stride, format).unwrap();
        for max_tiles in [1 + n as u32 % 12, 6, 12] {
            let pillow = if rng.range(0, 1) == 0 {
                PillowVersion::V12
            } else {
                PillowVersion::V13
            };
            let pre = Preprocessor {
                config: DhrConfig {
                    max_tiles,
                    ..DhrConfig::NVLM_D
                },
                pillow,
                ..Default::default()
            };
            let what = format!("{w}x{h} {format:?} max {max_tiles} {pillow:?}");
            check::<f32>(gpu, pre, &view, &what);
            check::<bf16>(gpu, pre, &view, &what);
            check::<f16>(gpu, pre, &view, &what);
        }
    }
}

/// `cuda.run_into(view)` against the CPU path with `cuda`'s own settings.
fn check_one<T: TensorElement + DeviceRepr>(
    gpu: &Arc<Gpu>,
    cuda: &CudaPreprocessor,
    view: &ImageView<'_>,
    what: &str,
) {
    let want = cuda.preprocessor.run::<T>(view).unwrap();
    check_run(gpu, cuda, view, &want, what);
}

/// v2–v4 keep each recent shape's tables on the device: one preprocessor
/// meets new content of a shape it has seen, the same size with another
/// stride, format, dtype, kernel or Pillow order, more shapes than it keeps,
/// and the first shape again; every output equals the CPU path's.
#[test]
fn kept_tables_serve_only_their_own_shape() {
    let Some(gpu) = gpu_or_skip("kept_tables_serve_only_their_own_shape") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("gpu kept_tables");
    let mut cuda = CudaPreprocessor::new(Preprocessor::default(), gpu.clone());
    // Tall enough that Pillow 13 resizes the thumbnail vertical-first
    // (the height shrinks more than twice the width) and Pillow 12 does
    // not: the two orders' tables differ.
    let (w, h) = (rng.range(500, 600), rng.range(800, 900));
    let image = |rng: &mut Rng, format: PixelFormat, pad: usize| {
        let stride = w as usize * format.bytes_per_pixel() + pad;
        (rng.bytes(stride * h as usize), stride, format)
    };
    let cases = [
        image(&mut rng, PixelFormat::Rgb8, 0),
        image(&mut rng, PixelFormat::Rgb8, 0),
        image(&mut rng, PixelFormat::Rgb8, 3),
        image(&mut rng, PixelFormat::Rgba8, 0),
        image(&mut rng, PixelFormat::L8, 0),
    ];
    for kernel in [
        PreprocessKernel::FusedV2,
        PreprocessKernel::StagedV3,
        PreprocessKernel::StagedDp4aV4,
    ] {
        cuda.kernel = kernel;
        for pillow in [PillowVersion::V12, PillowVersion::V13] {
            cuda.preprocessor.pillow = pillow;
            for (n, (pixels, stride, format)) in cases.iter().enumerate() {
                let view = ImageView::new(pixels, w, h, *stride, *format).unwrap();
                let what = format!("{w}x{h} case {n} {format:?} stride {stride} {pillow:?}");
                check_one::<f32>(&gpu, &cuda, &view, &what);
                check_one::<bf16>(&gpu, &cuda, &view, &what);
            }
        }
    }
    // More shapes than are kept, then the first one again.
    cuda.kernel = PreprocessKernel::default();
    for extra in 1..=10 {
        let (pw, ph) = (w + extra, h + 2 * extra);
        let pixels = rng.bytes((pw * ph * 3) as usize);
        let view = ImageView::packed(&pixels, pw, ph, PixelFormat::Rgb8).unwrap();
        check_one::<f32>(&gpu, &cuda, &view, &format!("{pw}x{ph}"));
    }
    let (pixels, stride, format) = &cases[0];
    let view = ImageView::new(pixels, w, h, *stride, *format).unwrap();
    check_one::<f32>(&gpu, &cuda, &view, "the first shape after eviction");
}

/// Small and odd sizes, cheap enough for compute-sanitizer.
#[test]
fn random_images_equal_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("random_images_equal_the_cpu_reference") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("gpu random_images");
    let mut sizes = vec![
        (1, 1),
        (1, 4000),
        (4000, 1),
        (3, 2),
        (448, 448),
        (896, 448),
        (20, 4000),
    ];
    sizes.extend((0..12).map(|_| (rng.range(1, 700), rng.range(1, 700))));
    check_random_images(&gpu, &mut rng, &sizes);
}

/// Camera-sized images: too slow under compute-sanitizer, which skips them.
#[test]
fn random_large_images_equal_the_cpu_reference_at_model_shapes() {
    let Some(gpu) = gpu_or_skip("random_large_images_equal_the_cpu_reference_at_model_shapes")
    else {
        return;
    };
    let mut rng = Rng::from_env_or_time("gpu random_large_images");
    let sizes: Vec<_> = (0..8)
        .map(|_| (rng.range(700, 4000), rng.range(700, 4000)))
        .collect();
    check_random_images(&gpu, &mut rng, &sizes);
}

#[test]
fn every_tile_count_equals_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("every_tile_count_equals_the_cpu_reference") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("gpu every_tile_count");
    for tiles in 1..=12u32 {
        // An image whose shape is exactly `tiles`x1 forces that grid.
        let (w, h) = (tiles * rng.range(40, 120), rng.range(40, 120));
        let pixels = rng.bytes((w * h * 3) as usize);
        let view = ImageView::packed(&pixels, w, h, PixelFormat::Rgb8).unwrap();
        let pre = Preprocessor {
            config: DhrConfig {
                min_tiles: tiles,
                max_tiles: tiles,
                ..DhrConfig::NVLM_D
            },
            ..Default::default()
        };
        check::<f32>(&gpu, pre, &view, &format!("{tiles} tiles"));
    }
}

/// Downscales whose second-pass window spans several of v2's and v3's
/// shared-memory chunks, in both pass orders, one-pass and copy targets,
/// tile sizes that are not multiples of the 32-pixel patch or of the
/// 4-pixel stores, and a strip whose thumbnail window is too wide for v3
/// to stage (it takes v2's first pass).
#[test]
fn extreme_and_odd_shapes_equal_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("extreme_and_odd_shapes_equal_the_cpu_reference") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("gpu extreme_and_odd_shapes");
    let cases: &[(u32, u32, u32)] = &[
        (200, 9000, 448),
        (9000, 200, 448),
        (1000, 5000, 32),
        (5000, 1000, 32),
        (1344, 896, 448),
        (900, 448, 448),
        (448, 900, 448),
        (97, 61, 30),
        (500, 333, 61),
        (60000, 4, 32),
    ];
    for &(w, h, tile_size) in cases {
        for format in [PixelFormat::Rgb8, PixelFormat::L8] {
            let pixels = rng.bytes((w * h) as usize * format.bytes_per_pixel());
            let view = ImageView::packed(&pixels, w, h, format).unwrap();
            for pillow in [PillowVersion::V12, PillowVersion::V13] {
                let pre = Preprocessor {
                    config: DhrConfig {
                        tile_size,
                        ..DhrConfig::NVLM_D
                    },
                    pillow,
                    ..Default::default()
                };
                let what = format!("{w}x{h} tile {tile_size} {format:?} {pillow:?}");
                check::<f32>(&gpu, pre, &view, &what);
                check::<bf16>(&gpu, pre, &view, &what);
            }
        }
    }
}

/// The corpus (photos up to 4000 px): skipped under compute-sanitizer.
#[test]
fn corpus_equals_the_cpu_reference_at_model_shapes() {
    let Some(gpu) = gpu_or_skip("corpus_equals_the_cpu_reference_at_model_shapes") else {
        return;
    };
    let dir = common::fixture_dir().join("images");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    for path in names {
        let img = decode_file(&path).unwrap();
        let view = ImageView::packed(&img.pixels, img.width, img.height, img.format).unwrap();
        for pillow in [PillowVersion::V12, PillowVersion::V13] {
            check::<f32>(
                &gpu,
                Preprocessor {
                    pillow,
                    ..Default::default()
                },
                &view,
                &path.display().to_string(),
            );
        }
    }
}

/// A batch through the pinned staging buffers: sizes that grow and shrink
/// (so the buffers are reallocated while the other one is in flight), all
/// formats, strided rows, every kernel version.
#[test]
fn batches_equal_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("batches_equal_the_cpu_reference") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("gpu batches");
    let formats = [
        PixelFormat::Rgb8,
        PixelFormat::Rgba8,
        PixelFormat::L8,
        PixelFormat::La8,
    ];
    let sizes = [
        (640, 480),
        (33, 2000),
        (1920, 1080),
        (7, 5),
        (1500, 1000),
        (448, 448),
        (1200, 901),
    ];
    let images: Vec<(Vec<u8>, u32, u32, usize, PixelFormat)> = sizes
        .iter()
        .enumerate()
        .map(|(n, &(w, h))| {
            let format = formats[n % 4];
            let stride = w as usize * format.bytes_per_pixel() + rng.range(0, 5) as usize;
            (rng.bytes(stride * h as usize), w, h, stride, format)
        })
        .collect();
    let views: Vec<ImageView<'_>> = images
        .iter()
        .map(|(p, w, h, stride, format)| ImageView::new(p, *w, *h, *stride, *format).unwrap())
        .collect();
    let pre = Preprocessor::default();
    for kernel in PreprocessKernel::ALL {
        let cuda = CudaPreprocessor::new(pre, gpu.clone()).with_kernel(kernel);
        // Twice, so the second batch reuses the buffers the first one made.
        for round in 0..2 {
            let sizes = views.iter().map(|v| (v.width(), v.height()));
            let mut outs = poisoned_outputs(&gpu, pre, sizes);
            let plans = cuda.run_batch_into(&views, &mut outs).unwrap();
            for ((view, plan), out) in views.iter().zip(&plans).zip(&outs) {
                let what = format!("{kernel:?} round {round}");
                check_batch_output(&gpu, pre, view, plan, out, &what);
            }
        }
    }
}

/// Caller-filled pinned images, every kernel: each round's outputs equal
/// the CPU path on the bytes the images held when the round was queued,
/// though image 0 is rewritten (through `bytes_mut`, which waits for its
/// copy) right after the first round is queued.
#[test]
fn pinned_batches_equal_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("pinned_batches_equal_the_cpu_reference") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("gpu pinned batches");
    let formats = [
        PixelFormat::Rgb8,
        PixelFormat::Rgba8,
        PixelFormat::L8,
        PixelFormat::La8,
    ];
    let sizes = [(640, 480), (33, 2000), (1920, 1080), (7, 5), (1200, 901)];
    let mut images: Vec<PinnedImage> = sizes
        .iter()
        .enumerate()
        .map(|(n, &(w, h))| PinnedImage::new(&gpu, w, h, formats[n % 4]).unwrap())
        .collect();
    let pre = Preprocessor::default();
    for kernel in PreprocessKernel::ALL {
        let cuda = CudaPreprocessor::new(pre, gpu.clone()).with_kernel(kernel);
        for image in &mut images {
            let bytes = image.bytes_mut().unwrap();
            let fresh = rng.bytes(bytes.len());
            bytes.copy_from_slice(&fresh);
        }
        let mut queued: Vec<Vec<u8>> = images
            .iter()
            .map(|i| i.view().unwrap().data().to_vec())
            .collect();
        for round in 0..2 {
            let sizes = images.iter().map(|i| (i.width(), i.height()));
            let mut outs = poisoned_outputs(&gpu, pre, sizes);
            let refs: Vec<&PinnedImage> = images.iter().collect();
            let plans = cuda.run_pinned_batch_into(&refs, &mut outs).unwrap();
            let queued_now = queued.clone();
            if round == 0 {
                let bytes = images[0].bytes_mut().unwrap();
                let fresh = rng.bytes(bytes.len());
                bytes.copy_from_slice(&fresh);
                queued[0] = fresh;
            }
            for (n, (plan, out)) in plans.iter().zip(&outs).enumerate() {
                let image = &images[n];
                let (w, h, format) = (image.width(), image.height(), image.format());
                let view = ImageView::packed(&queued_now[n], w, h, format).unwrap();
                let what = format!("pinned {kernel:?} round {round}");
                check_batch_output(&gpu, pre, &view, plan, out, &what);
            }
        }
    }
}

/// With cudarc's event tracking off (an engine ordering its streams
/// itself), `bytes_mut` still waits for the copy out of a pinned image: the
/// last image of a batch, whose copy is queued behind the kernel of the
/// image two before it, is rewritten as soon as the batch is queued, and
/// the output is still that of the bytes it held then.
#[test]
fn pinned_images_wait_for_their_copies_without_event_tracking() {
    let Some(gpu) = gpu_or_skip("pinned_images_wait_for_their_copies_without_event_tracking")
    else {
        return;
    };
    // SAFETY: this test's context object is its own (gpu_or_skip makes one
    // per test), and the crate orders its staging copies with its own events.
    unsafe { gpu.context().disable_event_tracking() };
    assert!(!gpu.context().is_managing_stream_synchronization());
    let mut rng = Rng::from_env_or_time("gpu pinned without tracking");
    let sizes = [(4032, 3024), (1920, 1080), (4032, 3024)];
    let mut images: Vec<PinnedImage> = sizes
        .iter()
        .map(|&(w, h)| PinnedImage::new(&gpu, w, h, PixelFormat::Rgb8).unwrap())
        .collect();
    let mut queued = Vec::new();
    for image in &mut images {
        let bytes = image.bytes_mut().unwrap();
        bytes.copy_from_slice(&rng.bytes(bytes.len()));
        queued.push(bytes.to_vec());
    }
    let pre = Preprocessor::default();
    let cuda = CudaPreprocessor::new(pre, gpu.clone());
    let mut outs = poisoned_outputs(&gpu, pre, sizes.iter().copied());
    let refs: Vec<&PinnedImage> = images.iter().collect();
    let plans = cuda.run_pinned_batch_into(&refs, &mut outs).unwrap();
    let last = images.last_mut().unwrap();
    last.bytes_mut().unwrap().fill(0x5a);
    for (n, (plan, out)) in plans.iter().zip(&outs).enumerate() {
        let (w, h) = sizes[n];
        let view = ImageView::packed(&queued[n], w, h, PixelFormat::Rgb8).unwrap();
        check_batch_output(&gpu, pre, &view, plan, out, "pinned, no event tracking");
    }
}

/// Two 4032×3024 images and then the 1920×1080 image the tests below
/// rewrite: the large ones' copies and kernels put milliseconds of work
/// ahead of the last one's copy.
const BEHIND_LARGE_IMAGES: [(u32, u32); 3] = [(4032, 3024), (4032, 3024), (1920, 1080)];

/// The GPU and [`BEHIND_LARGE_IMAGES`] in page-locked memory, filled with
/// random bytes, with the bytes the last one holds; `None` when `test`
/// skips.
fn pinned_behind_large_images(test: &str) -> Option<(Arc<Gpu>, Vec<PinnedImage>, Vec<u8>)> {
    let gpu = gpu_or_skip(test)?;
    let mut rng = Rng::from_env_or_time(test);
    let mut images: Vec<PinnedImage> = BEHIND_LARGE_IMAGES
        .iter()
        .map(|&(w, h)| PinnedImage::new(&gpu, w, h, PixelFormat::Rgb8).unwrap())
        .collect();
    for image in &mut images {
        let bytes = image.bytes_mut().unwrap();
        bytes.copy_from_slice(&rng.bytes(bytes.len()));
    }
    let last = images[2].view().unwrap().data().to_vec();
    Some((gpu, images, last))
}

/// `run_into` from page-locked memory (a `PinnedImage::view`): the copy,
/// queued behind the large images' work, reads the bytes by DMA after the
/// call has returned, so `run_into` waits for it; rewriting the image as
/// soon as it returns leaves the output that of the old bytes.
#[test]
fn a_pinned_view_may_be_rewritten_once_run_into_returns() {
    let test = "a_pinned_view_may_be_rewritten_once_run_into_returns";
    let Some((gpu, mut images, last)) = pinned_behind_large_images(test) else {
        return;
    };
    let (pre, sizes) = (Preprocessor::default(), BEHIND_LARGE_IMAGES);
    let cuda = CudaPreprocessor::new(pre, gpu.clone());
    let mut busy = poisoned_outputs(&gpu, pre, sizes[..2].iter().copied());
    let refs: Vec<&PinnedImage> = images[..2].iter().collect();
    cuda.run_pinned_batch_into(&refs, &mut busy).unwrap();
    let mut outs = poisoned_outputs(&gpu, pre, sizes[2..].iter().copied());
    let plan = pre.plan(sizes[2].0, sizes[2].1).unwrap();
    cuda.run_into(&images[2].view().unwrap(), &plan, &mut outs[0])
        .unwrap();
    images[2].bytes_mut().unwrap().fill(0x5a);
    let (w, h) = sizes[2];
    let view = ImageView::packed(&last, w, h, PixelFormat::Rgb8).unwrap();
    check_batch_output(&gpu, pre, &view, &plan, &outs[0], "pinned view, run_into");
}

/// One pinned image copied by two preprocessors, each on its own copy
/// stream: the first's copy waits behind the large images, the second's
/// runs at once. `bytes_mut` must wait for both, so rewriting the image as
/// soon as it returns leaves both outputs those of the old bytes.
#[test]
fn a_pinned_image_copied_by_two_preprocessors_waits_for_both_copies() {
    let test = "a_pinned_image_copied_by_two_preprocessors_waits_for_both_copies";
    let Some((gpu, mut images, last)) = pinned_behind_large_images(test) else {
        return;
    };
    let (pre, sizes) = (Preprocessor::default(), BEHIND_LARGE_IMAGES);
    let (first, second) = (
        CudaPreprocessor::new(pre, gpu.clone()),
        CudaPreprocessor::new(pre, gpu.clone()),
    );
    let mut outs = poisoned_outputs(&gpu, pre, sizes.iter().copied());
    let refs: Vec<&PinnedImage> = images.iter().collect();
    let plans = first.run_pinned_batch_into(&refs, &mut outs).unwrap();
    let mut again = poisoned_outputs(&gpu, pre, sizes[2..].iter().copied());
    second
        .run_pinned_batch_into(&[&images[2]], &mut again)
        .unwrap();
    images[2].bytes_mut().unwrap().fill(0x5a);
    let (w, h) = sizes[2];
    let view = ImageView::packed(&last, w, h, PixelFormat::Rgb8).unwrap();
    check_batch_output(&gpu, pre, &view, &plans[2], &outs[2], "first preprocessor");
    check_batch_output(
        &gpu,
        pre,
        &view,
        &plans[2],
        &again[0],
        "second preprocessor",
    );
}

/// Whether every output is still all NaN (nothing written).
fn untouched(gpu: &Gpu, outs: &[CudaSlice<f32>]) -> bool {
    gpu.stream().synchronize().unwrap();
    outs.iter().all(|o| {
        gpu.stream()
            .clone_dtoh(o)
            .unwrap()
            .iter()
            .all(|v| v.is_nan())
    })
}

#[test]
fn batch_with_mismatched_outputs_is_an_error_before_any_copy() {
    let Some(gpu) = gpu_or_skip("batch_with_mismatched_outputs_is_an_error_before_any_copy") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("gpu batch_with_mismatched_outputs");
    let pixels = rng.bytes(30 * 20 * 3);
    let view = ImageView::packed(&pixels, 30, 20, PixelFormat::Rgb8).unwrap();
    let cuda = CudaPreprocessor::new(Preprocessor::default(), gpu.clone());
    let len = cuda.preprocessor.plan(30, 20).unwrap().tensor_len();
    let nan = |n: usize| gpu.stream().clone_htod(&vec![f32::NAN; n]).unwrap();
    let mut one = vec![nan(len)];
    assert!(matches!(
        cuda.run_batch_into(&[view, view], &mut one).unwrap_err(),
        Error::InvalidShape(_)
    ));
    let mut short = vec![nan(len), nan(len - 1)];
    assert!(matches!(
        cuda.run_batch_into(&[view, view], &mut short).unwrap_err(),
        Error::BufferTooShort { .. }
    ));
    let pinned = PinnedImage::new(&gpu, 30, 20, PixelFormat::Rgb8).unwrap();
    assert!(matches!(
        cuda.run_pinned_batch_into(&[&pinned, &pinned], &mut one)
            .unwrap_err(),
        Error::InvalidShape(_)
    ));
    assert!(matches!(
        cuda.run_pinned_batch_into(&[&pinned, &pinned], &mut short)
            .unwrap_err(),
        Error::BufferTooShort { .. }
    ));
    assert!(untouched(&gpu, &one) && untouched(&gpu, &short));
    assert!(matches!(
        PinnedImage::new(&gpu, 0, 20, PixelFormat::Rgb8),
        Err(Error::InvalidImageSize { .. })
    ));
}

#[test]
fn wrong_output_length_is_an_error_before_launch() {
    let Some(gpu) = gpu_or_skip("wrong_output_length_is_an_error_before_launch") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("gpu wrong_output_length");
    let pixels = rng.bytes(30 * 20 * 3);
    let view = ImageView::packed(&pixels, 30, 20, PixelFormat::Rgb8).unwrap();
    let cuda = CudaPreprocessor::new(Preprocessor::default(), gpu.clone());
    let plan = cuda.preprocessor.plan(30, 20).unwrap();
    let mut out = gpu
        .stream()
        .clone_htod(&vec![f32::NAN; plan.tensor_len() + 1])
        .unwrap();
    assert!(matches!(
        cuda.run_into(&view, &plan, &mut out).unwrap_err(),
        Error::BufferTooShort { .. }
    ));
    assert!(untouched(&gpu, std::slice::from_ref(&out)));
}

/// On a machine without kernels or without a driver, the GPU entry point
/// says which of the two is missing.
#[test]
fn unavailable_gpu_is_a_clear_error() {
    match Gpu::new(0) {
        Ok(_) => {}
        Err(Error::CudaUnavailable(msg)) => {
            assert!(
                msg.contains("nvcc") || msg.contains("libcuda") || msg.contains("device"),
                "{msg}"
            );
        }
        Err(other) => panic!("unexpected error kind: {other}"),
    }
}
