//! Borrowed input images and PIL's `convert('RGB')` for the formats we take.

use crate::error::{Error, Result};
use crate::preprocess::plan::check_image_size;

/// Pixel layouts accepted as input, all 8 bits per channel, interleaved.
///
/// Each converts to RGB exactly as PIL's `Image.convert('RGB')` does:
/// RGBA and LA drop alpha (no premultiplication, no blending onto a
/// background); L and LA replicate the grey value into R, G and B.
/// Not taken: 16-bit, palette (`P`), CMYK, YCbCr, `I`/`F` modes. Convert those
/// to one of these first (PIL's rules for them differ by mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    Rgb8,
    Rgba8,
    L8,
    La8,
}

impl PixelFormat {
    /// Bytes per pixel in the input buffer.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelFormat::Rgb8 => 3,
            PixelFormat::Rgba8 => 4,
            PixelFormat::L8 => 1,
            PixelFormat::La8 => 2,
        }
    }

    /// Distinct colour channels after `convert('RGB')`: 3, or 1 for grey
    /// formats, whose R, G and B are equal and so are resized once.
    pub fn colour_channels(self) -> usize {
        match self {
            PixelFormat::Rgb8 | PixelFormat::Rgba8 => 3,
            PixelFormat::L8 | PixelFormat::La8 => 1,
        }
    }

    /// Parses a PIL mode name ("RGB", "RGBA", "L", "LA").
    pub fn from_pil_mode(mode: &str) -> Result<PixelFormat> {
        match mode {
            "RGB" => Ok(PixelFormat::Rgb8),
            "RGBA" => Ok(PixelFormat::Rgba8),
            "L" => Ok(PixelFormat::L8),
            "LA" => Ok(PixelFormat::La8),
            other => Err(Error::UnsupportedFormat(format!(
                "PIL mode {other:?}; supported: RGB, RGBA, L, LA (8 bits per channel)"
            ))),
        }
    }
}

/// A borrowed 8-bit image: `height` rows of `width` pixels, row `y` starting
/// at byte `y * stride`. Padding between rows is never read.
#[derive(Debug, Clone, Copy)]
pub struct ImageView<'a> {
    data: &'a [u8],
    width: u32,
    height: u32,
    stride: usize,
    format: PixelFormat,
}

impl<'a> ImageView<'a> {
    /// Validates the size, stride and buffer length; borrows, never copies.
    pub fn new(
        data: &'a [u8],
        width: u32,
        height: u32,
        stride: usize,
        format: PixelFormat,
    ) -> Result<Self> {
        check_image_size(width, height)?;
        let row_bytes = width as usize * format.bytes_per_pixel();
        if stride < row_bytes {
            return Err(Error::StrideTooSmall {
                stride,
                min_stride: row_bytes,
            });
        }
        let needed = (height as usize - 1)
            .checked_mul(stride)
            .and_then(|n| n.checked_add(row_bytes))
            .ok_or(Error::BufferTooShort {
                what: "image",
                len: data.len(),
                needed: usize::MAX,
            })?;
        if data.len() < needed {
            return Err(Error::BufferTooShort {
                what: "image",
                len: data.len(),
                needed,
            });
        }
        // Keep only the bytes the image spans, so `data()` is exactly what a
        // copy (to a GPU, say) must carry.
        Ok(ImageView {
            data: &data[..needed],
            width,
            height,
            stride,
            format,
        })
    }

    /// A tightly packed image (`stride = width * bytes_per_pixel`).
    pub fn packed(data: &'a [u8], width: u32, height: u32, format: PixelFormat) -> Result<Self> {
        Self::new(
            data,
            width,
            height,
            width as usize * format.bytes_per_pixel(),
            format,
        )
    }

    pub fn width(&self) -> u32 {
        self.width
    }
    pub fn height(&self) -> u32 {
        self.height
    }
    pub fn stride(&self) -> usize {
        self.stride
    }
    pub fn format(&self) -> PixelFormat {
        self.format
    }
    /// The bytes the image spans: `stride * (height - 1) + row_bytes`,
    /// without any padding after the last row.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Row `y`, exactly `width * bytes_per_pixel` bytes.
    pub fn row(&self, y: usize) -> &'a [u8] {
        let start = y * self.stride;
        &self.data[start..start + self.width as usize * self.format.bytes_per_pixel()]
    }

    /// `convert('RGB')` into a new packed RGB buffer.
    pub fn to_rgb(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.width as usize * self.height as usize * 3);
        let bpp = self.format.bytes_per_pixel();
        for y in 0..self.height as usize {
            for px in self.row(y).chunks_exact(bpp) {
                match self.format {
                    PixelFormat::Rgb8 | PixelFormat::Rgba8 => out.extend_from_slice(&px[..3]),
                    PixelFormat::L8 | PixelFormat::La8 => out.extend_from_slice(&[px[0]; 3]),
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_follows_pil() {
        let rgba = [10, 20, 30, 0, 40, 50, 60, 255];
        let view = ImageView::packed(&rgba, 2, 1, PixelFormat::Rgba8).unwrap();
        assert_eq!(view.to_rgb(), [10, 20, 30, 40, 50, 60]);
        let la = [7, 0, 9, 128];
        let view = ImageView::packed(&la, 2, 1, PixelFormat::La8).unwrap();
        assert_eq!(view.to_rgb(), [7, 7, 7, 9, 9, 9]);
    }

    #[test]
    fn stride_padding_is_skipped() {
        // 2x2 L image with 3 bytes per row; the padding byte must not appear.
        let data = [1, 2, 99, 3, 4];
        let view = ImageView::new(&data, 2, 2, 3, PixelFormat::L8).unwrap();
        assert_eq!(view.to_rgb(), [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]);
    }

    #[test]
    fn rejects_bad_buffers() {
        let data = [0u8; 12];
        assert_eq!(
            ImageView::new(&data, 2, 2, 5, PixelFormat::Rgb8).unwrap_err(),
            Error::StrideTooSmall {
                stride: 5,
                min_stride: 6
            }
        );
        assert_eq!(
            ImageView::new(&data, 2, 2, 7, PixelFormat::Rgb8).unwrap_err(),
            Error::BufferTooShort {
                what: "image",
                len: 12,
                needed: 13
            }
        );
        assert!(matches!(
            ImageView::packed(&data, 0, 2, PixelFormat::L8).unwrap_err(),
            Error::InvalidImageSize { .. }
        ));
        let msg = PixelFormat::from_pil_mode("P").unwrap_err().to_string();
        assert!(
            msg.contains("\"P\"") && msg.contains("RGB, RGBA, L, LA"),
            "{msg}"
        );
        // A stride so large the needed length overflows usize.
        assert!(matches!(
            ImageView::new(&data, 1, 3, usize::MAX / 2, PixelFormat::L8).unwrap_err(),
            Error::BufferTooShort { .. }
        ));
    }
}
