//! CPU reference of image preprocessing (see shaders/image.wgsl for the policy).

use crate::ops::image::Resample;

/// PIL's filters and their supports: the triangle (bilinear) and Keys' cubic with a = -0.5
/// (bicubic).
fn filter(kind: Resample, x: f64) -> f64 {
    let t = x.abs();
    match kind {
        Resample::Bilinear => f64::max(0.0, 1.0 - t),
        Resample::Bicubic => {
            let a = -0.5;
            if t < 1.0 {
                ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
            } else if t < 2.0 {
                (((t - 5.0) * t + 8.0) * t - 4.0) * a
            } else {
                0.0
            }
        }
    }
}

/// One axis of PIL's resampling: for output index o, the input window and its coefficients in
/// PIL's fixed point (22 fractional bits, rounded half away from zero).
fn taps(o: usize, len: usize, out_len: usize, kind: Resample) -> Vec<(usize, i64)> {
    let scale = len as f64 / out_len as f64;
    let fscale = scale.max(1.0);
    let support = fscale
        * match kind {
            Resample::Bilinear => 1.0,
            Resample::Bicubic => 2.0,
        };
    let center = (o as f64 + 0.5) * scale;
    let lo = (center - support + 0.5).floor().max(0.0) as usize;
    let hi = ((center + support + 0.5).floor() as usize).min(len);
    let w: Vec<f64> = (lo..hi)
        .map(|i| filter(kind, (i as f64 - center + 0.5) / fscale))
        .collect();
    let sum: f64 = w.iter().sum();
    (lo..hi)
        .zip(w)
        .map(|(i, x)| {
            let v = x / sum * (1u64 << 22) as f64;
            (i, (v + if v < 0.0 { -0.5 } else { 0.5 }).trunc() as i64)
        })
        .collect()
}

/// Σ coefficient · value + ½, shifted back, clipped to 8 bits: PIL's 8-bit accumulation.
fn fixed(acc: i64) -> f64 {
    ((acc + (1 << 21)) >> 22).clamp(0, 255) as f64
}

/// RGBA8 pixels (r in the low byte) [h, w] -> [out_h, out_w, 3] in 0..=255, as PIL resizes them
/// with `kind` (pass order included: see `ops::image::vertical_first`).
pub fn resize(
    rgba: &[u32],
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
    kind: Resample,
) -> Vec<f64> {
    let mut cur: Vec<f64> = rgba
        .iter()
        .flat_map(|p| (0..3).map(move |c| ((p >> (8 * c)) & 255) as f64))
        .collect();
    let horizontal = |src: &[f64], ch: usize, cw: usize| -> Vec<f64> {
        let mut out = vec![0.0; ch * out_w * 3];
        for y in 0..ch {
            for ox in 0..out_w {
                for c in 0..3 {
                    let acc: i64 = taps(ox, cw, out_w, kind)
                        .iter()
                        .map(|&(x, k)| k * src[(y * cw + x) * 3 + c] as i64)
                        .sum();
                    out[(y * out_w + ox) * 3 + c] = fixed(acc);
                }
            }
        }
        out
    };
    let vertical = |src: &[f64], ch: usize, cw: usize| -> Vec<f64> {
        let mut out = vec![0.0; out_h * cw * 3];
        for oy in 0..out_h {
            for x in 0..cw {
                for c in 0..3 {
                    let acc: i64 = taps(oy, ch, out_h, kind)
                        .iter()
                        .map(|&(y, k)| k * src[(y * cw + x) * 3 + c] as i64)
                        .sum();
                    out[(oy * cw + x) * 3 + c] = fixed(acc);
                }
            }
        }
        out
    };
    if crate::ops::image::vertical_first(h, w, out_h, out_w) {
        cur = vertical(&cur, h, w);
        if w != out_w {
            cur = horizontal(&cur, out_h, w);
        }
    } else {
        if w != out_w {
            cur = horizontal(&cur, h, w);
        }
        if h != out_h {
            cur = vertical(&cur, h, out_w);
        }
    }
    cur
}

/// [h, w, 3] pixels -> [patches, 3·patch²] normalised vectors ordered (channel, row, column).
pub fn normalize_patchify(
    pix: &[f64],
    h: usize,
    w: usize,
    patch: usize,
    rescale: f64,
    mean: [f64; 3],
    std: [f64; 3],
) -> Vec<f64> {
    let mut out = vec![];
    for py in 0..h / patch {
        for px in 0..w / patch {
            for ch in 0..3 {
                for dy in 0..patch {
                    for dx in 0..patch {
                        let v = pix[((py * patch + dy) * w + px * patch + dx) * 3 + ch];
                        out.push((v * rescale - mean[ch]) / std[ch]);
                    }
                }
            }
        }
    }
    out
}
