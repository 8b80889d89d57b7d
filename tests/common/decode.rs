//! Image file decoding shared by the tests and the `preprocess` example.
//! JPEG goes through libjpeg-turbo's decoder (the `mozjpeg` crate), which
//! gives the same pixels as Pillow's; other formats through `image`.

use nvlm_vision::preprocess::PixelFormat;
use std::path::Path;

/// A decoded 8-bit image, packed rows.
pub struct Decoded {
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    pub pixels: Vec<u8>,
}

pub fn decode_file(path: &Path) -> Result<Decoded, String> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ext == "jpg" || ext == "jpeg" {
        decode_jpeg(path)
    } else {
        decode_with_image(path)
    }
}

fn decode_jpeg(path: &Path) -> Result<Decoded, String> {
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    let bytes = std::fs::read(path).map_err(err)?;
    let started = mozjpeg::Decompress::new_mem(&bytes).map_err(err)?;
    let (width, height) = (started.width() as u32, started.height() as u32);
    let (format, pixels) = match started.image().map_err(err)? {
        mozjpeg::decompress::Format::Gray(mut d) => {
            let px: Vec<u8> = d.read_scanlines().map_err(err)?;
            d.finish().map_err(err)?;
            (PixelFormat::L8, px)
        }
        mozjpeg::decompress::Format::RGB(mut d) => {
            let px: Vec<[u8; 3]> = d.read_scanlines().map_err(err)?;
            d.finish().map_err(err)?;
            (PixelFormat::Rgb8, px.into_flattened())
        }
        mozjpeg::decompress::Format::CMYK(_) => {
            return Err(format!("{}: CMYK JPEG is not supported", path.display()));
        }
    };
    Ok(Decoded {
        width,
        height,
        format,
        pixels,
    })
}

fn decode_with_image(path: &Path) -> Result<Decoded, String> {
    let img = image::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (width, height) = (img.width(), img.height());
    let (format, pixels) = match img {
        image::DynamicImage::ImageRgb8(i) => (PixelFormat::Rgb8, i.into_raw()),
        image::DynamicImage::ImageRgba8(i) => (PixelFormat::Rgba8, i.into_raw()),
        image::DynamicImage::ImageLuma8(i) => (PixelFormat::L8, i.into_raw()),
        image::DynamicImage::ImageLumaA8(i) => (PixelFormat::La8, i.into_raw()),
        other => {
            return Err(format!(
                "{}: {:?} images are not supported (8-bit RGB, RGBA, L, LA only)",
                path.display(),
                other.color()
            ));
        }
    };
    Ok(Decoded {
        width,
        height,
        format,
        pixels,
    })
}
