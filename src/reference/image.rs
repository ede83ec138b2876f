//! CPU reference of image preprocessing (see shaders/image.wgsl for the policy).

/// One axis of PIL's bilinear resampling: for output index o, the input window and weights.
fn taps(o: usize, len: usize, out_len: usize) -> Vec<(usize, f64)> {
    let scale = len as f64 / out_len as f64;
    let fscale = scale.max(1.0);
    let center = (o as f64 + 0.5) * scale;
    let lo = (center - fscale + 0.5).floor().max(0.0) as usize;
    let hi = ((center + fscale + 0.5).floor() as usize).min(len);
    let w: Vec<(usize, f64)> = (lo..hi)
        .map(|i| {
            (
                i,
                f64::max(0.0, 1.0 - ((i as f64 - center + 0.5) / fscale).abs()),
            )
        })
        .collect();
    let sum: f64 = w.iter().map(|x| x.1).sum();
    w.into_iter().map(|(i, x)| (i, x / sum)).collect()
}

fn to_u8(v: f64) -> f64 {
    v.round().clamp(0.0, 255.0)
}

/// RGBA8 pixels (r in the low byte) [h, w] -> [out_h, out_w, 3] in 0..=255, rounded per pass.
pub fn resize(rgba: &[u32], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f64> {
    let mut tmp = vec![0.0; h * out_w * 3];
    for y in 0..h {
        for ox in 0..out_w {
            for ch in 0..3 {
                let v: f64 = taps(ox, w, out_w)
                    .iter()
                    .map(|&(x, k)| k * ((rgba[y * w + x] >> (8 * ch)) & 255) as f64)
                    .sum();
                tmp[(y * out_w + ox) * 3 + ch] = to_u8(v);
            }
        }
    }
    let mut out = vec![0.0; out_h * out_w * 3];
    for oy in 0..out_h {
        for ox in 0..out_w {
            for ch in 0..3 {
                let v: f64 = taps(oy, h, out_h)
                    .iter()
                    .map(|&(y, k)| k * tmp[(y * out_w + ox) * 3 + ch])
                    .sum();
                out[(oy * out_w + ox) * 3 + ch] = to_u8(v);
            }
        }
    }
    out
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
