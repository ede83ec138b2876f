//! Half-precision weights: the f16 tensors a model loaded with `Precision::HalfWeights` holds, and
//! the products and lookups that read them. A kernel widens each f16 element exactly, so every
//! product over f16 weights must give the same bits as the same product over those weights widened
//! to f32, on every path a product can take (the buffer kernels, the image kernels reading an
//! rgba16float image, few rows with and without held images, K in chunks), and a lookup in an f16
//! table the rows of the widened table; no other kernel takes an f16 tensor.

mod common;
use amad::gpu::{DType, Gpu};
use amad::half::{f16_to_f32, f32_to_f16};
use amad::ops::matmul::matmul;
use amad::rng::Rng;
use amad::Tensor;
use common::*;

/// `n` random halves (as bits) and their values.
fn halves(rng: &mut Rng, n: usize) -> (Vec<u16>, Vec<f32>) {
    let bits: Vec<u16> = rng
        .vec(n, 1.0)
        .iter()
        .map(|&x| f32_to_f16(x as f32))
        .collect();
    let wide = bits.iter().map(|&h| f16_to_f32(h)).collect();
    (bits, wide)
}

/// One product x · op(W) (+ bias) with W as f16 and as its widened f32 values, on `g`: the two
/// results, and the kernels the f16 one ran.
fn both(
    g: &Gpu,
    seed: u64,
    (batch, m, n, k): (usize, usize, usize, usize),
    tb: bool,
    bias: bool,
    hold: bool,
) -> (Vec<f32>, Vec<f32>, Vec<&'static str>) {
    let mut rng = Rng::new(seed);
    let x = upload_on(g, &[batch, m, k], &rng.vec(batch * m * k, 1.0));
    let w_shape = if tb { [n, k] } else { [k, n] };
    let (bits, wide) = halves(&mut rng, k * n);
    let w16 = Tensor::from_f16_bits(g, &w_shape, &bits).unwrap();
    let w32 = Tensor::from_slice(g, &w_shape, &wide).unwrap();
    let bv = upload_on(g, &[n], &rng.vec(n, 1.0));
    let product = |w: &Tensor| {
        let held = hold.then(|| g.hold_images(std::slice::from_ref(w)));
        let out = run_on(g, |s| {
            Ok(vec![matmul(s, &x, w, false, tb, bias.then_some(&bv))?])
        });
        drop(held);
        out.into_iter().next().unwrap()
    };
    let mut half = vec![];
    let ran = kernels_run(g, || half = product(&w16));
    (half, product(&w32), ran)
}

#[test]
fn products_over_half_weights_give_the_bits_of_their_widened_values() {
    // (batch, m, n, k): tiles with edges and a K remainder, a long K (chunked), widths that no
    // vec4 kernel takes or whose rows of C are not whole vec4s, and few rows (one token, beams).
    // On images both operands' rows must be a multiple of 256 bytes (B's: 128 f16 elements).
    let shapes = [
        (2, 70, 128, 37),
        (1, 33, 256, 1028),
        (1, 9, 37, 30),
        (1, 40, 37, 128),
        (1, 40, 128, 256),
        (1, 1, 128, 2048),
        (1, 3, 40, 64),
    ];
    let mut ran_all = std::collections::BTreeSet::new();
    // Buffers (the GPU path, tiles staged in workgroup memory or not), images with and without the
    // subgroup kernel (CPU adapters).
    for (images, subgroup, shared) in [
        (false, false, false),
        (false, false, true),
        (true, false, false),
        (true, true, false),
    ] {
        let g = own_device(images);
        g.set_subgroup_matmul(subgroup);
        g.set_shared_matmul(shared);
        for (i, &shape) in shapes.iter().enumerate() {
            for tb in [false, true] {
                for bias in [false, true] {
                    for hold in [false, true] {
                        let what = format!(
                            "{shape:?} tb={tb} bias={bias} hold={hold} images={images} \
                             subgroup={subgroup} shared={shared}"
                        );
                        let (half, wide, ran) = both(&g, i as u64, shape, tb, bias, hold);
                        same_bits(&what, &half, &wide);
                        ran_all.extend(ran);
                    }
                }
            }
        }
    }
    let mut want = vec![
        "matmul",
        "matmul_vec4",
        "matmul_shared",
        "matmul_image",
        "matmul_rows",
        "matmul_rows_image",
    ];
    if gpu()
        .device
        .features()
        .contains(amad::gpu::wgpu::Features::SUBGROUP)
    {
        want.extend(["matmul_subgroup", "matmul_subgroup_cells"]);
    }
    for k in want {
        assert!(ran_all.contains(k), "{k} never ran: {ran_all:?}");
    }
}

#[test]
fn lookups_in_a_half_table_give_the_rows_of_the_widened_table() {
    use amad::ops::embedding::{embedding, embedding_rows};
    let g = gpu();
    let mut rng = Rng::new(5);
    let (vocab, dim) = (70, 12);
    let (bits, wide) = halves(&mut rng, vocab * dim);
    let t16 = Tensor::from_f16_bits(g, &[vocab, dim], &bits).unwrap();
    let t32 = Tensor::from_slice(g, &[vocab, dim], &wide).unwrap();
    // Ids across the whole table, one past it (a zero row), repeated ones.
    let ids: Vec<u32> = vec![0, 69, 5, 70, 33, 5, 68, 1];
    let ids = Tensor::from_u32(g, &[2, 4], &ids).unwrap();
    let whole = |t: &Tensor| run_on(g, |s| Ok(vec![embedding(s, &ids, t)?])).remove(0);
    same_bits("lookup", &whole(&t16), &whole(&t32));
    // The same table in row blocks, as a token embedding larger than one binding is held (blocks
    // of 32 rows; parts of one buffer, as `Weights` lays them out).
    let blocks = |t: &Tensor| -> Vec<(usize, Tensor)> {
        [(0, 32), (32, 32), (64, 6)]
            .iter()
            .map(|&(r, n)| {
                (
                    r,
                    t.reshape(&[vocab * dim])
                        .unwrap()
                        .part(g, r * dim, &[n, dim])
                        .unwrap(),
                )
            })
            .collect()
    };
    let rows = |t: &Tensor| run_on(g, |s| Ok(vec![embedding_rows(s, &ids, &blocks(t))?])).remove(0);
    let ran = kernels_run(g, || {
        same_bits("lookup in row blocks", &rows(&t16), &rows(&t32))
    });
    assert!(ran.contains(&"embedding_fwd_rows"), "{ran:?}");
}

#[test]
fn no_kernel_but_a_product_or_lookup_takes_half_weights() {
    let g = gpu();
    let mut rng = Rng::new(3);
    let (bits, _) = halves(&mut rng, 64);
    let w16 = Tensor::from_f16_bits(g, &[8, 8], &bits).unwrap();
    let x = upload_on(g, &[8, 8], &rng.vec(64, 1.0));
    let mut step = g.step();
    // As A of a product (activations are f32).
    let err = matmul(&mut step, &w16, &x, false, false, None).unwrap_err();
    assert!(
        err.to_string().contains("is F16, where it takes f32"),
        "{err}"
    );
    // Into an elementwise kernel.
    let err = amad::ops::elementwise::add(&mut step, &x, &w16).unwrap_err();
    assert!(
        err.to_string().contains("is F16, where it takes f32"),
        "{err}"
    );
}

#[test]
fn a_model_with_half_weights_computes_on_its_rounded_weights() {
    use amad::model::captioner::Captioner;
    use amad::model::generate::Generation;
    use amad::model::{Model, Precision, Weights};
    let dir = std::path::Path::new(HUB_TINY);
    // Both kinds of device: images and the subgroup kernel (CPU adapters), and storage buffers.
    for images in [true, false] {
        let g = own_device(images);
        let full = Captioner::load(&g, dir).unwrap();
        let half = Captioner::load_as(&g, dir, Precision::HalfWeights).unwrap();
        let layout = &full.model.layout;
        let halved = layout.half_weights();
        for (i, t) in half.model.weights.tensors.iter().enumerate() {
            let want = if halved.contains(&i) {
                DType::F16
            } else {
                DType::F32
            };
            assert_eq!(t.dtype(), want, "{}", layout.specs[i].name);
        }
        // The same model in f32 with those weights rounded to f16, as the half model holds
        // them (read back, they are exactly those values).
        let values = pollster::block_on(full.model.weights.values(&g)).unwrap();
        let rounded: Vec<Vec<f32>> = values
            .iter()
            .enumerate()
            .map(|(i, v)| match halved.contains(&i) {
                true => v.iter().map(|&x| f16_to_f32(f32_to_f16(x))).collect(),
                false => v.clone(),
            })
            .collect();
        let held = pollster::block_on(half.model.weights.values(&g)).unwrap();
        for (i, (a, b)) in held.iter().zip(&rounded).enumerate() {
            same_bits(&layout.specs[i].name, a, b);
        }
        let twin = Model {
            cfg: full.model.cfg.clone(),
            layout: layout.clone(),
            weights: Weights::from_values(&g, layout, &rounded).unwrap(),
        };
        let ids = Tensor::from_u32(&g, &[1, 6], &[50256, 64, 582, 10311, 257, 6769]).unwrap();
        let (mut worst, mut largest): (f32, f32) = (0.0, 0.0);
        for photo in ["astronaut", "coffee", "chelsea"] {
            let px = photo_patches(&full, &g, photo);
            let logits = |m: &Model| {
                run_on(&g, |s| Ok(vec![m.forward(s, &px, &ids)?.logits().clone()])).remove(0)
            };
            let (h, t, f) = (logits(&half.model), logits(&twin), logits(&full.model));
            same_bits(&format!("{photo} logits, images={images}"), &h, &t);
            largest = f.iter().fold(largest, |m, x| m.max(x.abs()));
            worst = f
                .iter()
                .zip(&h)
                .fold(worst, |w, (a, b)| w.max((a - b).abs()));
            // Generation reads the weights through other kernels (a few rows, held images).
            let caption =
                |m: &Model| pollster::block_on(m.generate(&g, &px, Generation::default())).unwrap();
            let ids = caption(&half.model);
            assert_eq!(ids, caption(&twin), "{photo} caption");
            assert_eq!(
                ids,
                caption(&full.model),
                "{photo}: the f32 model's caption"
            );
        }
        // Against the f32 model the logits move by the weights' rounding only (half precision
        // keeps 11 significant bits): by under 1% of the largest logit here (a wrong weight would
        // move them by as much as the logits themselves).
        eprintln!("images={images}: logits up to {largest:.2}, moved by at most {worst:.2e}");
        assert!(worst > 0.0 && worst < 0.01 * largest, "moved by {worst}");
    }
}

#[test]
fn a_model_with_half_weights_refuses_to_train() {
    use amad::model::captioner::Captioner;
    use amad::model::Precision;
    let g = gpu();
    let dir = std::path::Path::new(HUB_TINY);
    let half = Captioner::load_as(g, dir, Precision::HalfWeights).unwrap();
    let err = half.model.check_trainable().unwrap_err().to_string();
    assert!(err.contains("half-precision weights"), "{err}");
}

/// `amad caption --half-weights` captions as the f32 model does (the test above finds the same
/// tokens), and `amad distill --teacher-half-weights` teaches a student from a teacher so held:
/// every loss term finite, the student trained in f32.
#[test]
fn the_cli_captions_and_teaches_with_half_weights() {
    let photo = format!("{PHOTOS}/astronaut.png");
    let caption = |extra: &[&str]| {
        let mut args = vec!["caption", "--model", HUB_TINY, &photo];
        args.extend(extra);
        let r = amad_cli(&args);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8(r.stdout).unwrap()
    };
    assert_eq!(caption(&["--half-weights"]), caption(&[]));
    let (images, out) = (temp_dir("half_photos"), temp_dir("half_out"));
    for name in ["astronaut", "coffee", "chelsea"] {
        let from = std::path::Path::new(PHOTOS).join(format!("{name}.png"));
        std::fs::copy(&from, images.join(format!("{name}.png"))).unwrap();
        std::fs::copy(&from, images.join(format!("{name}_again.png"))).unwrap();
    }
    let r = amad_cli([
        "distill",
        "--teacher",
        HUB_TINY,
        "--teacher-half-weights",
        "--images",
        images.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "3",
        "--batch",
        "2",
        "--val-fraction",
        "0.34",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("losses").is_some())
        .collect();
    assert_eq!(steps.len(), 3, "{log}");
    for s in &steps {
        for term in ["ce", "kd", "attn", "total"] {
            let x = s["losses"][term].as_f64().unwrap();
            assert!(x.is_finite() && x >= 0.0, "{term} = {x} in {s}");
        }
    }
    let student = amad::model::Model::load(gpu(), &out).unwrap();
    assert_eq!(student.precision(), amad::model::Precision::F32);
    std::fs::remove_dir_all(images).ok();
    std::fs::remove_dir_all(out).ok();
}
