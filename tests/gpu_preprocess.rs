//! The CUDA preprocessing kernel against the CPU reference, byte for byte.
//! Without a usable GPU these print "skipped: no CUDA device" and pass;
//! with `NVLM_VISION_REQUIRE_GPU=1` they fail instead.

mod common;

use common::Rng;
use common::decode::decode_file;
use common::gpu::gpu_or_skip;
use cudarc::driver::DeviceRepr;
use half::{bf16, f16};
use nvlm_vision::Error;
use nvlm_vision::cuda::Gpu;
use nvlm_vision::dtype::TensorElement;
use nvlm_vision::preprocess::{
    CudaPreprocessor, DhrConfig, ImageView, PillowVersion, PixelFormat, Preprocessor,
};
use std::sync::Arc;

/// Runs both paths on `view` and asserts equal bits and a fully written,
/// NaN-poisoned device output.
fn check<T: TensorElement + DeviceRepr>(
    gpu: &Arc<Gpu>,
    pre: Preprocessor,
    view: &ImageView<'_>,
    what: &str,
) {
    let want = pre.run::<T>(view).unwrap();
    let cuda = CudaPreprocessor::new(pre, gpu.clone());
    let poison = vec![T::from_f32(f32::NAN); want.plan.tensor_len()];
    let mut out = gpu.stream().clone_htod(&poison).unwrap();
    cuda.run_into(view, &want.plan, &mut out).unwrap();
    let got: Vec<T> = gpu.stream().clone_dtoh(&out).unwrap();
    let (got, want_bytes): (&[u8], &[u8]) =
        (bytemuck::cast_slice(&got), bytemuck::cast_slice(&want.data));
    if let Some(i) = got.iter().zip(want_bytes).position(|(a, b)| a != b) {
        panic!(
            "{what} {:?}: first differing byte {i} of {}",
            T::DTYPE,
            got.len()
        );
    }
}

#[test]
fn random_images_equal_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("random_images_equal_the_cpu_reference") else {
        return;
    };
    let mut rng = Rng::from_env_or_time("gpu random_images");
    let formats = [
        PixelFormat::Rgb8,
        PixelFormat::Rgba8,
        PixelFormat::L8,
        PixelFormat::La8,
    ];
    let mut sizes = vec![
        (1, 1),
        (1, 4000),
        (4000, 1),
        (3, 2),
        (448, 448),
        (896, 448),
        (20, 4000),
    ];
    sizes.extend((0..12).map(|_| (rng.range(1, 2500), rng.range(1, 2500))));
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
            check::<f32>(&gpu, pre, &view, &what);
            check::<bf16>(&gpu, pre, &view, &what);
            check::<f16>(&gpu, pre, &view, &what);
        }
    }
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

#[test]
fn corpus_equals_the_cpu_reference() {
    let Some(gpu) = gpu_or_skip("corpus_equals_the_cpu_reference") else {
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

#[test]
fn wrong_output_length_is_an_error_before_launch() {
    let Some(gpu) = gpu_or_skip("wrong_output_length_is_an_error_before_launch") else {
        return;
    };
    let pixels = vec![9u8; 30 * 20 * 3];
    let view = ImageView::packed(&pixels, 30, 20, PixelFormat::Rgb8).unwrap();
    let cuda = CudaPreprocessor::new(Preprocessor::default(), gpu.clone());
    let plan = cuda.preprocessor.plan(30, 20).unwrap();
    let mut out = gpu
        .stream()
        .alloc_zeros::<f32>(plan.tensor_len() + 1)
        .unwrap();
    assert!(matches!(
        cuda.run_into(&view, &plan, &mut out).unwrap_err(),
        Error::BufferTooShort { .. }
    ));
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
