//! Decode an image, plan its DHR tiles, preprocess it, and show the result.
//!
//! cargo run --release --example preprocess -- IMAGE [options]
//!
//! Writes a contact sheet of the uint8 tiles (PNG), optionally the normalised
//! tensor as `.npy`, and prints the grid, tags and timings (or JSON).

#[path = "../tests/common/decode.rs"]
mod decode;

use cudarc::driver::DeviceRepr;
use half::{bf16, f16};
use nvlm_vision::cuda::Gpu;
use nvlm_vision::dtype::{Dtype, TensorElement};
use nvlm_vision::preprocess::tags::{PromptFormat, TileTagStyle, tile_tags};
use nvlm_vision::preprocess::{
    CudaPreprocessor, DhrConfig, ImageView, PillowVersion, Preprocessor, TilePlan,
};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

const USAGE: &str = "usage: preprocess IMAGE [--max-tiles N] [--min-tiles N] [--no-thumbnail]
       [--pillow 12|13] [--dtype f32|bf16|f16] [--device cpu|cuda]
       [--tags none|1d|2d|bbox] [--sheet PATH] [--npy PATH] [--json]

  IMAGE           JPEG, PNG or WebP (8-bit RGB, RGBA, grey, grey+alpha)
  --max-tiles N   most tiles in the grid (default 6, NVLM-D)
  --min-tiles N   fewest tiles in the grid (default 1)
  --no-thumbnail  do not append the 448x448 thumbnail
  --pillow 12|13  Pillow release whose pass order to reproduce (default 12)
  --dtype         element type of the tensor (default f32); bf16 is written to
                  .npy as uint16 bit patterns ('<u2'), numpy having no bf16
  --device        cpu (default) or cuda (GPU 0; the timing then includes
                  the copies to and from the device)
  --tags          tile tag style for the printed prompt (default 1d)
  --sheet PATH    contact sheet of the tiles (default IMAGE_STEM_tiles.png)
  --npy PATH      write the [T, 3, 448, 448] tensor as a .npy file
  --json          print a machine-readable summary instead of text";

struct Options {
    image: PathBuf,
    config: DhrConfig,
    pillow: PillowVersion,
    dtype: Dtype,
    tags: TileTagStyle,
    sheet: PathBuf,
    npy: Option<PathBuf>,
    json: bool,
    cuda: bool,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut image = None;
    let mut config = DhrConfig::NVLM_D;
    let mut pillow = PillowVersion::V12;
    let mut dtype = Dtype::F32;
    let mut tags = TileTagStyle::OneD;
    let mut sheet = None;
    let mut npy = None;
    let mut json = false;
    let mut cuda = false;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--max-tiles" => {
                config.max_tiles = value(&arg)?
                    .parse()
                    .map_err(|e| format!("--max-tiles: {e}"))?
            }
            "--min-tiles" => {
                config.min_tiles = value(&arg)?
                    .parse()
                    .map_err(|e| format!("--min-tiles: {e}"))?
            }
            "--no-thumbnail" => config.thumbnail = false,
            "--pillow" => {
                pillow = match value(&arg)?.as_str() {
                    "12" => PillowVersion::V12,
                    "13" => PillowVersion::V13,
                    other => return Err(format!("--pillow takes 12 or 13, not {other}")),
                }
            }
            "--dtype" => {
                let name = value(&arg)?;
                dtype = Dtype::parse(&name)
                    .ok_or(format!("--dtype takes f32, bf16 or f16, not {name}"))?;
            }
            "--device" => {
                cuda = match value(&arg)?.as_str() {
                    "cpu" => false,
                    "cuda" => true,
                    other => return Err(format!("--device takes cpu or cuda, not {other}")),
                }
            }
            "--tags" => {
                tags = match value(&arg)?.as_str() {
                    "none" => TileTagStyle::None,
                    "1d" => TileTagStyle::OneD,
                    "2d" => TileTagStyle::Grid2D,
                    "bbox" => TileTagStyle::BoundingBox,
                    other => return Err(format!("--tags takes none, 1d, 2d or bbox, not {other}")),
                }
            }
            "--sheet" => sheet = Some(PathBuf::from(value(&arg)?)),
            "--npy" => npy = Some(PathBuf::from(value(&arg)?)),
            "--json" => json = true,
            "-h" | "--help" => return Err(String::new()),
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            path if image.is_none() => image = Some(PathBuf::from(path)),
            extra => return Err(format!("unexpected argument {extra}")),
        }
    }
    let image: PathBuf = image.ok_or("no IMAGE given")?;
    let sheet = sheet.unwrap_or_else(|| {
        let stem = image
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        PathBuf::from(format!("{stem}_tiles.png"))
    });
    Ok(Options {
        image,
        config,
        pillow,
        dtype,
        tags,
        sheet,
        npy,
        json,
        cuda,
    })
}

/// Preprocesses into a `T` tensor, on the GPU when `gpu` is given, and
/// returns its little-endian bytes.
fn tensor_bytes<T: TensorElement + DeviceRepr>(
    pre: &Preprocessor,
    gpu: Option<&Arc<Gpu>>,
    view: &ImageView<'_>,
) -> Result<Vec<u8>, String> {
    let data: Vec<T> = match gpu {
        None => pre.run::<T>(view).map_err(|e| e.to_string())?.data,
        Some(gpu) => {
            let cuda = CudaPreprocessor::new(*pre, gpu.clone());
            let (_, out) = cuda.run::<T>(view).map_err(|e| e.to_string())?;
            gpu.stream()
                .clone_dtoh(&out)
                .map_err(|e| format!("copy tensor to host: {e}"))?
        }
    };
    Ok(bytemuck::cast_slice(&data).to_vec())
}

/// A `.npy` (format 1.0) file: magic, header dict padded to 64 bytes, data.
fn write_npy(path: &Path, dtype: Dtype, shape: [usize; 4], data: &[u8]) -> std::io::Result<()> {
    let descr = match dtype {
        Dtype::F32 => "<f4",
        Dtype::F16 => "<f2",
        Dtype::Bf16 => "<u2",
    };
    let dims = shape.map(|d| d.to_string()).join(", ");
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({dims}), }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut file = Vec::with_capacity(10 + header.len() + data.len());
    file.extend_from_slice(b"\x93NUMPY\x01\x00");
    file.extend_from_slice(&(header.len() as u16).to_le_bytes());
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(data);
    std::fs::write(path, file)
}

/// Tiles at their grid positions, the thumbnail to the right, 8 px apart.
fn write_contact_sheet(path: &Path, plan: &TilePlan, tiles: &[u8]) -> Result<(), String> {
    const GAP: u32 = 8;
    let t = plan.tile_size;
    let cols = plan.grid.cols + u32::from(plan.thumbnail);
    let (w, h) = (cols * (t + GAP) - GAP, plan.grid.rows * (t + GAP) - GAP);
    let mut sheet = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    let tile_bytes = (t * t * 3) as usize;
    for (k, tile) in tiles.chunks_exact(tile_bytes).enumerate() {
        let (col, row) = if k < plan.tiles.len() {
            (k as u32 % plan.grid.cols, k as u32 / plan.grid.cols)
        } else {
            (plan.grid.cols, 0)
        };
        let tile = image::RgbImage::from_raw(t, t, tile.to_vec()).ok_or("tile size")?;
        image::imageops::replace(
            &mut sheet,
            &tile,
            i64::from(col * (t + GAP)),
            i64::from(row * (t + GAP)),
        );
    }
    sheet
        .save(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn run(opts: &Options) -> Result<(), String> {
    let t0 = Instant::now();
    let img = decode::decode_file(&opts.image)?;
    let decode_ms = t0.elapsed().as_secs_f64() * 1e3;
    let view = ImageView::packed(&img.pixels, img.width, img.height, img.format)
        .map_err(|e| e.to_string())?;
    let pre = Preprocessor {
        config: opts.config,
        pillow: opts.pillow,
        ..Default::default()
    };

    let gpu = if opts.cuda {
        Some(Gpu::new(0).map_err(|e| format!("--device cuda: {e}"))?)
    } else {
        None
    };
    let t1 = Instant::now();
    let tensor = match opts.dtype {
        Dtype::F32 => tensor_bytes::<f32>(&pre, gpu.as_ref(), &view)?,
        Dtype::Bf16 => tensor_bytes::<bf16>(&pre, gpu.as_ref(), &view)?,
        Dtype::F16 => tensor_bytes::<f16>(&pre, gpu.as_ref(), &view)?,
    };
    let preprocess_ms = t1.elapsed().as_secs_f64() * 1e3;

    let (plan, tiles) = pre.tiles_rgb(&view).map_err(|e| e.to_string())?;
    write_contact_sheet(&opts.sheet, &plan, &tiles)?;
    if let Some(npy) = &opts.npy {
        write_npy(npy, opts.dtype, plan.tensor_shape(), &tensor)
            .map_err(|e| format!("{}: {e}", npy.display()))?;
    }
    let tags = tile_tags(&plan, opts.tags);
    let prompt_tokens = plan.num_outputs() * PromptFormat::nvlm_d().tokens_per_tile;

    if opts.json {
        let summary = serde_json::json!({
            "image": opts.image,
            "size": [img.width, img.height],
            "format": format!("{:?}", img.format),
            "pillow": format!("{:?}", opts.pillow),
            "config": {"min_tiles": opts.config.min_tiles, "max_tiles": opts.config.max_tiles,
                       "thumbnail": opts.config.thumbnail, "tile_size": opts.config.tile_size},
            "grid": [plan.grid.cols, plan.grid.rows],
            "resized": [plan.resized.0, plan.resized.1],
            "tiles": plan.tiles.iter().map(|r| [r.x, r.y, r.width, r.height]).collect::<Vec<_>>(),
            "thumbnail": plan.thumbnail,
            "outputs": plan.num_outputs(),
            "tags": tags,
            "image_tokens": prompt_tokens,
            "tensor": {"dtype": opts.dtype.name(), "shape": plan.tensor_shape(), "npy": opts.npy},
            "sheet": opts.sheet,
            "device": if opts.cuda { "cuda" } else { "cpu" },
            "timings_ms": {"decode": decode_ms, "preprocess": preprocess_ms},
        });
        println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    } else {
        println!(
            "{}: {}x{} {:?}",
            opts.image.display(),
            img.width,
            img.height,
            img.format
        );
        println!(
            "grid {}x{} (resized to {}x{}), {} tiles{} -> tensor {:?} {}",
            plan.grid.cols,
            plan.grid.rows,
            plan.resized.0,
            plan.resized.1,
            plan.tiles.len(),
            if plan.thumbnail { " + thumbnail" } else { "" },
            plan.tensor_shape(),
            opts.dtype.name()
        );
        println!("tags: {}", tags.join(" "));
        println!("image tokens: {prompt_tokens}");
        println!(
            "decode {decode_ms:.2} ms, preprocess {preprocess_ms:.2} ms on {} ({:?} order)",
            if opts.cuda { "cuda" } else { "cpu" },
            opts.pillow
        );
        println!("contact sheet: {}", opts.sheet.display());
        if let Some(npy) = &opts.npy {
            println!("tensor: {}", npy.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match parse_args(std::env::args().skip(1)) {
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("error: {msg}\n");
            }
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
        Ok(opts) => match run(&opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(msg) => {
                eprintln!("error: {msg}");
                ExitCode::FAILURE
            }
        },
    }
}
