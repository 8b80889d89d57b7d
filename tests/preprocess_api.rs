//! The preprocessing API's contracts beyond Pillow parity: dtype conversion,
//! normalisation arithmetic, full writes, and errors before any work.

mod common;

use approx::assert_relative_eq;
use common::Rng;
use half::{bf16, f16};
use nvlm_vision::Error;
use nvlm_vision::preprocess::{
    DhrConfig, ImageView, Normalization, PillowVersion, PixelFormat, Preprocessor, normalize_value,
    resize_rgb,
};

fn random_image(rng: &mut Rng, w: u32, h: u32, format: PixelFormat) -> Vec<u8> {
    rng.bytes((w * h) as usize * format.bytes_per_pixel())
}

#[test]
fn normalisation_is_torchvision_arithmetic_and_close_to_exact() {
    let n = Normalization::IMAGENET;
    for c in 0..3 {
        for u in 0..=255u8 {
            let v = normalize_value(u, n.mean[c], n.std[c]);
            // torchvision: x = u8.float().div(255); (x - mean) / std, all f32.
            let x = u as f32 / 255f32;
            assert_eq!(v.to_bits(), ((x - n.mean[c]) / n.std[c]).to_bits());
            let exact = (u as f64 / 255.0 - n.mean[c] as f64) / n.std[c] as f64;
            assert_relative_eq!(v as f64, exact, epsilon = 1e-6, max_relative = 1e-6);
        }
    }
}

#[test]
fn narrow_dtypes_are_the_rounded_f32_tensor_and_fully_written() {
    let mut rng = Rng::from_env_or_time("narrow_dtypes");
    let (w, h) = (rng.range(200, 900), rng.range(200, 900));
    let pixels = random_image(&mut rng, w, h, PixelFormat::Rgb8);
    let view = ImageView::packed(&pixels, w, h, PixelFormat::Rgb8).unwrap();
    let pre = Preprocessor::default();
    let plan = pre.plan(w, h).unwrap();

    let mut f32s = vec![f32::NAN; plan.tensor_len()];
    pre.run_into(&view, &plan, &mut f32s).unwrap();
    assert!(
        f32s.iter().all(|v| v.is_finite()),
        "f32 tensor not fully written"
    );

    let mut bf16s = vec![bf16::NAN; plan.tensor_len()];
    pre.run_into(&view, &plan, &mut bf16s).unwrap();
    let mut f16s = vec![f16::NAN; plan.tensor_len()];
    pre.run_into(&view, &plan, &mut f16s).unwrap();
    for ((&a, &b), &c) in f32s.iter().zip(&bf16s).zip(&f16s) {
        assert_eq!(b.to_bits(), bf16::from_f32(a).to_bits());
        assert_eq!(c.to_bits(), f16::from_f32(a).to_bits());
    }
}

#[test]
fn grey_input_feeds_all_three_channels_with_their_own_statistics() {
    let mut rng = Rng::from_env_or_time("grey_input");
    let (w, h) = (rng.range(50, 500), rng.range(50, 500));
    let grey = random_image(&mut rng, w, h, PixelFormat::L8);
    let rgb: Vec<u8> = grey.iter().flat_map(|&v| [v; 3]).collect();
    let pre = Preprocessor {
        pillow: PillowVersion::V13,
        ..Default::default()
    };
    let from_grey = pre
        .run::<f32>(&ImageView::packed(&grey, w, h, PixelFormat::L8).unwrap())
        .unwrap();
    let from_rgb = pre
        .run::<f32>(&ImageView::packed(&rgb, w, h, PixelFormat::Rgb8).unwrap())
        .unwrap();
    assert_eq!(from_grey.data, from_rgb.data);
}

#[test]
fn strided_input_equals_packed_input() {
    let mut rng = Rng::from_env_or_time("strided_input");
    let (w, h) = (rng.range(1, 300), rng.range(1, 300));
    let fmt = PixelFormat::Rgba8;
    let row = w as usize * 4;
    let stride = row + rng.range(1, 64) as usize;
    let mut strided = rng.bytes(stride * h as usize);
    let packed: Vec<u8> = strided
        .chunks(stride)
        .flat_map(|r| r[..row].to_vec())
        .collect();
    // Padding bytes must not matter: scramble them after taking the packed copy.
    for r in strided.chunks_mut(stride) {
        r[row..].fill(0xAB);
    }
    let a = resize_rgb(
        &ImageView::new(&strided, w, h, stride, fmt).unwrap(),
        448,
        448,
        PillowVersion::V12,
    )
    .unwrap();
    let b = resize_rgb(
        &ImageView::packed(&packed, w, h, fmt).unwrap(),
        448,
        448,
        PillowVersion::V12,
    )
    .unwrap();
    assert_eq!(a, b);
}

/// Each error comes before any output is written: the outputs, poisoned
/// with NaN, are still all NaN after it.
#[test]
fn bad_inputs_are_errors_before_any_work() {
    let mut rng = Rng::from_env_or_time("bad_inputs_are_errors_before_any_work");
    let pixels = random_image(&mut rng, 64, 64, PixelFormat::Rgb8);
    let view = ImageView::packed(&pixels, 64, 64, PixelFormat::Rgb8).unwrap();
    let pre = Preprocessor::default();
    let plan = pre.plan(64, 64).unwrap();
    let untouched = |out: &[f32]| out.iter().all(|v| v.is_nan());

    let mut short = vec![f32::NAN; plan.tensor_len() - 1];
    assert_eq!(
        pre.run_into(&view, &plan, &mut short).unwrap_err(),
        Error::BufferTooShort {
            what: "output tensor (elements, must be exact)",
            len: plan.tensor_len() - 1,
            needed: plan.tensor_len()
        }
    );
    assert!(untouched(&short), "written before the error");

    let other_plan = pre.plan(1000, 300).unwrap();
    let mut out = vec![f32::NAN; other_plan.tensor_len()];
    let err = pre.run_into(&view, &other_plan, &mut out).unwrap_err();
    assert!(err.to_string().contains("1000x300"), "{err}");
    assert!(untouched(&out), "written before the error");

    let bad_norm = Preprocessor {
        normalization: Normalization {
            std: [0.2, 0.0, 0.2],
            ..Normalization::IMAGENET
        },
        ..pre
    };
    let err = bad_norm.run::<f32>(&view).unwrap_err();
    assert!(
        matches!(err, Error::InvalidNormalization(ref m) if m.contains("channel 1")),
        "{err}"
    );

    let bad_config = Preprocessor {
        config: DhrConfig {
            max_tiles: 0,
            ..DhrConfig::NVLM_D
        },
        ..pre
    };
    assert!(matches!(
        bad_config.run::<f32>(&view).unwrap_err(),
        Error::InvalidConfig(_)
    ));

    assert!(matches!(
        resize_rgb(&view, 0, 5, PillowVersion::V12).unwrap_err(),
        Error::InvalidImageSize {
            width: 0,
            height: 5,
            ..
        }
    ));
    // An overflow-sized image is refused from its size alone, before the
    // buffer is looked at.
    assert!(matches!(
        ImageView::packed(&pixels, u32::MAX, u32::MAX, PixelFormat::Rgb8).unwrap_err(),
        Error::InvalidImageSize { .. }
    ));
}
