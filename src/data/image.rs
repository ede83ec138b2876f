//! Decoding user images: PNG, JPEG, WebP, BMP and the first frame of a GIF, of any size and aspect.
//!
//! Policy, as ViTImageProcessor does it: the whole image is resized to the model's square input
//! (aspect not kept, nothing cropped); that resize runs on the GPU (shaders/image.wgsl). Alpha is
//! flattened onto white. Images larger than `MAX_SIDE` on a side are first shrunk on the CPU
//! (aspect kept), so that any image fits the GPU's buffer limits; the final resize is unaffected
//! in practice, since the model sees 64×64.

use crate::error::{Error, Result};

/// Longest side uploaded to the GPU.
pub const MAX_SIDE: u32 = 2048;

/// An RGBA8 image packed one pixel per u32 (r in the low byte), alpha already flattened.
#[derive(Clone, Debug, PartialEq)]
pub struct Pixels {
    pub width: usize,
    pub height: usize,
    pub rgba: Vec<u32>,
}

/// The formats `decode` reads, as messages name them.
pub const READABLE: &str = "PNG, JPEG, WebP, GIF or BMP";

/// Decodes an image file's bytes; `name` labels errors.
pub fn decode(bytes: &[u8], name: &str) -> Result<Pixels> {
    let format = image::guess_format(bytes)
        .map_err(|_| Error::Invalid(format!("{name}: not an image amad can read ({READABLE})")))?;
    if !matches!(
        format,
        image::ImageFormat::Png
            | image::ImageFormat::Jpeg
            | image::ImageFormat::WebP
            | image::ImageFormat::Gif
            | image::ImageFormat::Bmp
    ) {
        return Err(Error::Invalid(format!(
            "{name}: {format:?} images are not supported (use {READABLE})"
        )));
    }
    // For a GIF this is its first frame.
    // The decoder checks its size against its memory limit (512 MB) before allocating, so a
    // small file that claims a huge image is refused here.
    let img = image::load_from_memory_with_format(bytes, format).map_err(|e| match e {
        image::ImageError::Limits(_) => Error::Invalid(format!(
            "{name}: the image is too large to decode (more than 512 MB of pixels); shrink it first"
        )),
        e => Error::Invalid(format!(
            "{name}: corrupt or unreadable {format:?} image ({e})"
        )),
    })?;
    let img = if img.width().max(img.height()) > MAX_SIDE {
        img.resize(MAX_SIDE, MAX_SIDE, image::imageops::FilterType::Triangle)
    } else {
        img
    };
    let rgba = img.to_rgba8();
    let (w, h) = rgba.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::Invalid(format!("{name}: the image is empty")));
    }
    let flatten = |c: u8, a: u8| ((c as u32 * a as u32 + 255 * (255 - a as u32) + 127) / 255) as u8;
    let packed = rgba
        .pixels()
        .map(|p| {
            let [r, g, b, a] = p.0;
            u32::from_le_bytes([flatten(r, a), flatten(g, a), flatten(b, a), 255])
        })
        .collect();
    Ok(Pixels {
        width: w as usize,
        height: h as usize,
        rgba: packed,
    })
}

/// A warning for an image that decodes but is incomplete, or None. A JPEG cut short in its
/// compressed data still decodes (the missing part comes out grey), so its caption would describe
/// a damaged image without a word: its last scan (SOS marker) must be followed by the end-of-image
/// marker. Markers cannot occur inside the compressed data (a 0xFF byte there is stuffed as
/// FF 00), and an embedded thumbnail's markers come before the main image's scans.
pub fn warning(bytes: &[u8], name: &str) -> Option<String> {
    if image::guess_format(bytes).ok()? != image::ImageFormat::Jpeg {
        return None;
    }
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA])?;
    let ended = bytes[last_scan..].windows(2).any(|w| w == [0xFF, 0xD9]);
    (!ended).then(|| {
        format!(
            "{name}: the JPEG file ends early (no end-of-image marker after its last scan), so \
             part of the image is missing and the caption is of what decoded"
        )
    })
}
