//! Live byte-for-byte parity with Pillow 12.3.0 and 13.0.0 on freshly drawn
//! random images: plain resizes and whole DHR runs (uint8 tiles and the f32
//! tensor), every input format. Needs the pinned Python environments
//! (`scripts/setup_python.sh`); skips without them, fails under CI.

mod common;

use common::{Rng, pillow_python, run_reference};
use nvlm_vision::preprocess::{
    DhrConfig, ImageView, PillowVersion, PixelFormat, Preprocessor, resize_rgb,
};
use serde_json::json;
use std::path::PathBuf;

struct Job {
    format: PixelFormat,
    width: u32,
    height: u32,
    pixels: Vec<u8>,
    kind: Kind,
}

enum Kind {
    Resize(u32, u32),
    Dhr { config: DhrConfig, f32_tensor: bool },
}

fn pil_mode(f: PixelFormat) -> &'static str {
    match f {
        PixelFormat::Rgb8 => "RGB",
        PixelFormat::Rgba8 => "RGBA",
        PixelFormat::L8 => "L",
        PixelFormat::La8 => "LA",
    }
}

/// A size drawn from one of several families that stress different paths.
fn draw_size(rng: &mut Rng) -> (u32, u32) {
    match rng.range(0, 5) {
        0 => (rng.range(1, 8), rng.range(1, 8)),
        1 => {
            // Taller than 100x: Pillow 12's Python-level vertical-first rule.
            let w = rng.range(1, 12);
            (w, rng.range(90 * w, 4000))
        }
        2 => {
            let h = rng.range(1, 12);
            (rng.range(90 * h, 4000), h)
        }
        3 => (rng.range(300, 700), rng.range(600, 1400)), // portrait, orders differ in 13
        _ => (rng.range(1, 1500), rng.range(1, 1500)),
    }
}

fn draw_jobs(rng: &mut Rng, n: usize) -> Vec<Job> {
    let formats = [
        PixelFormat::Rgb8,
        PixelFormat::Rgba8,
        PixelFormat::L8,
        PixelFormat::La8,
    ];
    (0..n)
        .map(|i| {
            let format = formats[rng.range(0, 3) as usize];
            let (width, height) = draw_size(rng);
            let len = (width * height) as usize * format.bytes_per_pixel();
            // Half noise, half hard 0/255 blocks that drive the filter lobes into clipping.
            let pixels = if rng.range(0, 1) == 0 {
                rng.bytes(len)
            } else {
                let bits = rng.next_u64();
                (0..len)
                    .map(|k| {
                        if bits >> ((k / 7) % 64) & 1 == 1 {
                            255
                        } else {
                            0
                        }
                    })
                    .collect()
            };
            let kind = if i % 2 == 0 {
                let (ow, oh) = if rng.range(0, 1) == 0 {
                    draw_size(rng)
                } else {
                    (448, 448)
                };
                Kind::Resize(ow, oh)
            } else {
                let max_tiles = rng.range(1, 12);
                let config = DhrConfig {
                    tile_size: 448,
                    min_tiles: rng.range(1, max_tiles),
                    max_tiles,
                    thumbnail: rng.range(0, 3) != 0,
                };
                Kind::Dhr {
                    config,
                    f32_tensor: rng.range(0, 1) == 0,
                }
            };
            Job {
                format,
                width,
                height,
                pixels,
                kind,
            }
        })
        .collect()
}

fn rust_output(job: &Job, pillow: PillowVersion) -> Vec<u8> {
    let view = ImageView::packed(&job.pixels, job.width, job.height, job.format).unwrap();
    match job.kind {
        Kind::Resize(w, h) => resize_rgb(&view, w, h, pillow).unwrap().data,
        Kind::Dhr { config, f32_tensor } => {
            let pre = Preprocessor {
                config,
                pillow,
                ..Default::default()
            };
            if f32_tensor {
                bytemuck::cast_slice(&pre.run::<f32>(&view).unwrap().data).to_vec()
            } else {
                pre.tiles_rgb(&view).unwrap().1
            }
        }
    }
}

fn check_version(major: u32, pillow: PillowVersion, jobs_count: usize) {
    let test = format!("random_images_match_pillow_{major}");
    let Some(python) = pillow_python(major, &test) else {
        return;
    };
    let mut rng = Rng::from_env_or_time(&test);
    let jobs = draw_jobs(&mut rng, jobs_count);
    let dir = std::env::temp_dir().join(format!("nvlm-vision-live-{}-{major}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |i: usize, what: &str| -> PathBuf { dir.join(format!("{i}.{what}")) };
    let manifest: Vec<_> = jobs
        .iter()
        .enumerate()
        .map(|(i, job)| {
            std::fs::write(path(i, "in"), &job.pixels).unwrap();
            let mut entry = json!({
                "input": path(i, "in"), "output": path(i, "out"), "mode": pil_mode(job.format),
                "width": job.width, "height": job.height,
            });
            match job.kind {
                Kind::Resize(w, h) => {
                    entry["kind"] = json!("resize");
                    entry["out_width"] = json!(w);
                    entry["out_height"] = json!(h);
                }
                Kind::Dhr { config, f32_tensor } => {
                    entry["kind"] = json!(if f32_tensor { "dhr_f32" } else { "dhr_u8" });
                    entry["min_tiles"] = json!(config.min_tiles);
                    entry["max_tiles"] = json!(config.max_tiles);
                    entry["thumbnail"] = json!(config.thumbnail);
                }
            }
            entry
        })
        .collect();
    let manifest_path = dir.join("manifest.json");
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    run_reference(&python, &["batch", manifest_path.to_str().unwrap()]);

    let mut failures = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let want = std::fs::read(path(i, "out")).unwrap();
        let got = rust_output(job, pillow);
        if got != want {
            let first = got.iter().zip(&want).position(|(a, b)| a != b);
            failures.push(format!(
                "job {i}: {:?} {}x{} {}: lengths {} vs {}, first difference at byte {first:?}",
                job.format,
                job.width,
                job.height,
                manifest[i]["kind"],
                got.len(),
                want.len()
            ));
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        failures.is_empty(),
        "{} of {jobs_count} differ from Pillow {major}:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn random_images_match_pillow_12() {
    check_version(12, PillowVersion::V12, 60);
}

#[test]
fn random_images_match_pillow_13() {
    check_version(13, PillowVersion::V13, 60);
}
