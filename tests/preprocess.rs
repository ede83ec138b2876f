//! Image preprocessing against transformers' ViTImageProcessor (PIL backend, Pillow 13): resize to
//! 64×64 (PIL's antialiased bilinear, and bicubic, in its fixed point, rounded to 8 bits per pass,
//! in its pass order), rescale, normalise.
//! tests/fixtures/make_preprocess_golden.py made the goldens for images that shrink, grow and
//! change aspect. The kernels (shaders/image.wgsl, src/ops/image.rs) also against
//! src/reference/image.rs.

mod common;
use amad::model::preprocessor::default_for;
use amad::ops::image;
use amad::ops::image::preprocess;
use amad::reference as r;
use amad::rng::Rng;
use common::*;
use safetensors::SafeTensors;

#[test]
fn matches_vit_image_processor() {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/preprocess_golden.safetensors"
    ))
    .unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let bicubic = amad::ops::image::Preprocess {
        resample: amad::ops::image::Resample::Bicubic,
        ..default_for(64, 8)
    };
    for (cfg, key) in [
        (default_for(64, 8), "pixel_values"),
        (bicubic, "pixel_values_bicubic"),
    ] {
        for i in 0..5 {
            let img = st.tensor(&format!("image.{i}")).unwrap();
            let (h, w) = (img.shape()[0], img.shape()[1]);
            let rgba: Vec<u32> = img
                .data()
                .chunks_exact(3)
                .map(|p| u32::from_le_bytes([p[0], p[1], p[2], 255]))
                .collect();
            let want_chw: Vec<f64> = st
                .tensor(&format!("{key}.{i}"))
                .unwrap()
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect();
            // [3, 64, 64] → our patch order [64 patches, (channel, row, column) of 8×8].
            let mut want = vec![];
            for py in 0..8 {
                for px in 0..8 {
                    for ch in 0..3 {
                        for dy in 0..8 {
                            for dx in 0..8 {
                                want.push(want_chw[(ch * 64 + py * 8 + dy) * 64 + px * 8 + dx]);
                            }
                        }
                    }
                }
            }
            // The CPU reference follows PIL's arithmetic exactly (f64 weights, fixed-point sums).
            let reference = amad::reference::image::resize(&rgba, h, w, 64, 64, cfg.resample);
            let reference = amad::reference::image::normalize_patchify(
                &reference,
                64,
                64,
                8,
                1.0 / 255.0,
                [0.5; 3],
                [0.5; 3],
            );
            let exact = reference
                .iter()
                .zip(&want)
                .filter(|(r, w)| (**r - **w).abs() > 1e-6)
                .count();
            assert_eq!(
                exact, 0,
                "{key} image {i} ({h}×{w}): the reference differs from PIL in {exact} values"
            );
            let t = upload_u32(&[h, w], &rgba);
            let got = run(|s| Ok(vec![preprocess(s, &t, &cfg)?]));
            // The GPU computes the filter weights in f32 before rounding them to PIL's 22-bit fixed
            // point, so a coefficient can be one unit off and a sum sitting on a rounding boundary can
            // move by one level: 1/255/0.5 = 0.0078 after normalisation, in at most 0.5% of values.
            let level = 2.0 / 255.0;
            let off = got[0]
                .iter()
                .zip(&want)
                .filter(|(g, w)| (**g as f64 - **w).abs() > 1e-4)
                .count();
            assert_close(
                &format!("image {i} ({h}×{w})"),
                &got[0],
                &want,
                level + 1e-4,
                0.0,
            );
            assert!(
                off * 200 <= want.len(),
                "{key} image {i} ({h}×{w}): {off} of {} values differ by a level",
                want.len()
            );
        }
    }
}

#[test]
fn image_resize_and_patchify() {
    let mut rng = Rng::new(12);
    // Shrinking (antialiased), growing, and a non-square aspect; PIL's bilinear and bicubic.
    let filters = [image::Resample::Bilinear, image::Resample::Bicubic];
    for (resample, (h, w)) in filters
        .iter()
        .flat_map(|&f| [(40, 50), (7, 5), (16, 16), (1, 1)].map(|s| (f, s)))
    {
        let cfg = image::Preprocess {
            size: (16, 16),
            resize: true,
            resample,
            patch: 4,
            rescale: 1.0 / 255.0,
            mean: [0.5, 0.4, 0.3],
            std: [0.5, 0.25, 0.2],
        };
        let rgba: Vec<u32> = (0..h * w).map(|_| rng.next_u64() as u32).collect();
        let pix = r::image::resize(&rgba, h, w, 16, 16, resample);
        let want = r::image::normalize_patchify(
            &pix,
            16,
            16,
            4,
            1.0 / 255.0,
            [0.5, 0.4, 0.3],
            [0.5, 0.25, 0.2],
        );
        let t = upload_u32(&[h, w], &rgba);
        let got = run(|s| {
            let pixels = image::resize(s, &t, 16, 16, resample)?;
            let patches = image::normalize_patchify(s, &pixels, &cfg)?;
            Ok(vec![pixels, patches])
        });
        // Each pass rounds to integers; f32 weights may flip a value sitting at .5 by one level.
        let off: usize = got[0]
            .iter()
            .zip(&pix)
            .filter(|(g, w)| (**g as f64 - **w).abs() > 0.0)
            .count();
        assert!(
            off * 50 <= pix.len(),
            "{resample:?} {h}x{w}: {off} of {} resized values differ",
            pix.len()
        );
        assert_close(
            &format!("{resample:?} {h}x{w} resize"),
            &got[0],
            &pix,
            1.0,
            0.0,
        );
        // One level is 1/255/std <= 0.02 after normalisation.
        assert_close(
            &format!("{resample:?} {h}x{w} patches"),
            &got[1],
            &want,
            0.021,
            0.0,
        );
    }
}
