//! Launchers for `shaders/image.wgsl`: resize (PIL's bilinear, bit for bit), rescale, normalise,
//! cut into patches.
//! Preprocessing has no backward: pixels are inputs, never learned.

use super::{groups, u32_of};
use crate::error::{shape_err, Result};
use crate::gpu::{Access::Read as R, Access::ReadWrite as W, DType, Kernel, Step, Tensor};

pub const UNPACK: Kernel = Kernel::new("image", "unpack_rgb", &[R, W]);
pub const RESIZE_H: Kernel = Kernel::new("image", "resize_h", &[R, W]);
pub const RESIZE_V: Kernel = Kernel::new("image", "resize_v", &[R, W]);
pub const PATCHIFY: Kernel = Kernel::new("image", "normalize_patchify", &[R, W]);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default)]
struct Params {
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    patch: u32,
    /// The shader's filter: 0 bilinear, 1 bicubic.
    filter: u32,
    _pad: u32,
    rescale: f32,
    mean: [f32; 4],
    std: [f32; 4],
}

/// PIL's resampling filters that ViTImageProcessor's `resample` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// PIL.Image.BILINEAR (2), ViTImageProcessor's default.
    Bilinear,
    /// PIL.Image.BICUBIC (3).
    Bicubic,
}

/// How ViTImageProcessor prepares an image (the fields of preprocessor_config.json).
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// The model's input size (height, width).
    pub size: (usize, usize),
    pub resize: bool,
    pub resample: Resample,
    pub patch: usize,
    pub rescale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Whether PIL (Pillow 13) resizes vertically first: when the height shrinks more than twice as
/// much as the width, in relative terms. The order changes the 8-bit rounding between passes.
pub fn vertical_first(in_h: usize, in_w: usize, out_h: usize, out_w: usize) -> bool {
    in_h > out_h && (in_h - out_h) * out_w > 2 * in_w.saturating_sub(out_w) * out_h
}

/// Resizes RGBA8 pixels (u32 [h, w], r in the low byte) to [out_h, out_w, 3] values in 0..=255,
/// bit for bit as PIL's resize with `filter` (see the shader).
pub fn resize(
    step: &mut Step,
    rgba: &Tensor,
    out_h: usize,
    out_w: usize,
    filter: Resample,
) -> Result<Tensor> {
    let s = rgba.shape();
    if rgba.dtype() != DType::U32 || s.len() != 2 {
        return shape_err(
            "resize",
            format!("pixels must be u32 [h, w], got {:?} {s:?}", rgba.dtype()),
        );
    }
    if out_h == 0 || out_w == 0 {
        return shape_err("resize", format!("cannot resize to {out_h}×{out_w}"));
    }
    let (h, w) = (s[0], s[1]);
    let dims = |in_h, in_w, oh, ow| -> Result<Params> {
        let u = |x| u32_of("resize", "size", x);
        Ok(Params {
            in_h: u(in_h)?,
            in_w: u(in_w)?,
            out_h: u(oh)?,
            out_w: u(ow)?,
            filter: (filter == Resample::Bicubic) as u32,
            ..Default::default()
        })
    };
    let mut cur = step.empty(&[h, w, 3])?;
    step.dispatch_linear(
        &UNPACK,
        &dims(h, w, h, w)?,
        &[rgba, &cur],
        groups(cur.numel(), 256),
    )?;
    let (mut ch, mut cw) = (h, w);
    let horizontal = |step: &mut Step, cur: &Tensor, ch: usize, cw: usize| -> Result<Tensor> {
        let next = step.empty(&[ch, out_w, 3])?;
        step.dispatch_linear(
            &RESIZE_H,
            &dims(ch, cw, ch, out_w)?,
            &[cur, &next],
            groups(next.numel(), 256),
        )?;
        Ok(next)
    };
    let vertical = |step: &mut Step, cur: &Tensor, ch: usize, cw: usize| -> Result<Tensor> {
        let next = step.empty(&[out_h, cw, 3])?;
        step.dispatch_linear(
            &RESIZE_V,
            &dims(ch, cw, out_h, cw)?,
            &[cur, &next],
            groups(next.numel(), 256),
        )?;
        Ok(next)
    };
    // As PIL, a dimension that does not change gets no pass.
    if vertical_first(h, w, out_h, out_w) {
        cur = vertical(step, &cur, ch, cw)?;
        ch = out_h;
        if cw != out_w {
            cur = horizontal(step, &cur, ch, cw)?;
        }
    } else {
        if cw != out_w {
            cur = horizontal(step, &cur, ch, cw)?;
            cw = out_w;
        }
        if ch != out_h {
            cur = vertical(step, &cur, ch, cw)?;
        }
    }
    Ok(cur)
}

/// From resized pixels [h, w, 3] (0..=255) to normalised patch vectors
/// [(h/patch)·(w/patch), 3·patch²], each ordered (channel, row, column).
pub fn normalize_patchify(step: &mut Step, pixels: &Tensor, cfg: &Preprocess) -> Result<Tensor> {
    let s = pixels.shape();
    let pt = cfg.patch;
    if s.len() != 3 || s[2] != 3 || pt == 0 || !s[0].is_multiple_of(pt) || !s[1].is_multiple_of(pt)
    {
        return shape_err(
            "patchify",
            format!("pixels {s:?} are not [h, w, 3] with h and w multiples of the patch size {pt}"),
        );
    }
    if cfg.std.contains(&0.0) {
        return shape_err("patchify", "image_std has a zero entry");
    }
    let p = Params {
        out_h: s[0] as u32,
        out_w: s[1] as u32,
        patch: pt as u32,
        rescale: cfg.rescale,
        mean: [cfg.mean[0], cfg.mean[1], cfg.mean[2], 0.0],
        std: [cfg.std[0], cfg.std[1], cfg.std[2], 1.0],
        ..Default::default()
    };
    let out = step.empty(&[(s[0] / pt) * (s[1] / pt), 3 * pt * pt])?;
    step.dispatch_linear(&PATCHIFY, &p, &[pixels, &out], groups(out.numel(), 256))?;
    Ok(out)
}

/// The whole preprocessing: resize to `cfg.size` (or, where do_resize is false, check that the
/// image has that size), then normalise and cut into patches.
pub fn preprocess(step: &mut Step, rgba: &Tensor, cfg: &Preprocess) -> Result<Tensor> {
    let (h, w) = (rgba.shape()[0], rgba.shape().get(1).copied().unwrap_or(0));
    if !cfg.resize && (h, w) != cfg.size {
        return shape_err(
            "preprocess",
            format!(
                "the image is {w}×{h}, and this model's preprocessor_config.json does not resize \
                 (do_resize false): give it {}×{} images",
                cfg.size.1, cfg.size.0
            ),
        );
    }
    let pixels = resize(step, rgba, cfg.size.0, cfg.size.1, cfg.resample)?;
    normalize_patchify(step, &pixels, cfg)
}
