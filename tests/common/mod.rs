//! Shared test helpers: one GPU device for the whole test binary, a seeded RNG, closeness checks
//! and central finite differences.
#![allow(dead_code)]

use amad::{Gpu, Step, Tensor};

// Finite differences use eps = 1e-6 in f64: truncation error ~eps² and rounding ~1e-16/eps,
// both far below 1e-7, so 1e-6 relative (plus 1e-8 absolute) separates a right gradient from a
// wrong one by orders of magnitude.
pub const FD_EPS: f64 = 1e-6;
pub const FD_ATOL: f64 = 1e-8;
pub const FD_RTOL: f64 = 1e-6;
use std::sync::OnceLock;

/// The test device (lavapipe in CI). Tests in one binary share it, as an application would.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        pollster::block_on(Gpu::new())
            .expect("a GPU adapter (on Linux: apt-get install mesa-vulkan-drivers)")
    })
}

/// A device of the calling test's own with image operands on or off (see
/// [`Gpu::image_operands`]), so that counting the images it creates is not disturbed by other
/// tests.
pub fn own_device(images: bool) -> Gpu {
    let g = pollster::block_on(Gpu::new()).expect("a GPU adapter");
    g.set_image_operands(images);
    g
}

/// The matmul kernel that image products take on `g` with the subgroup matmul on: the subgroup
/// kernel on a device with subgroup operations (lavapipe has them; every such CPU adapter must
/// take it), else the image kernel, with a note that the subgroup kernel goes untested there.
pub fn subgroup_matmul_kernel(g: &Gpu) -> &'static str {
    let has = g.device.features().contains(wgpu::Features::SUBGROUP);
    assert_eq!(g.subgroup_matmul(), has && g.image_operands());
    if has {
        "matmul_subgroup"
    } else {
        eprintln!(
            "note: {} has no subgroups; the subgroup matmul is not tested",
            g.describe()
        );
        "matmul_image"
    }
}

/// The kernel entry points a closure dispatched on `g`.
pub fn kernels_run(g: &Gpu, f: impl FnOnce()) -> Vec<&'static str> {
    let profile = g
        .profile(|| {
            f();
            Ok(())
        })
        .unwrap();
    profile.keys().copied().collect()
}

/// Records with `f`, submits, and reads back the tensors it returns.
pub fn run(f: impl FnOnce(&mut Step) -> amad::Result<Vec<Tensor>>) -> Vec<Vec<f32>> {
    run_on(gpu(), f)
}

/// [`run`] on a given device.
pub fn run_on(g: &Gpu, f: impl FnOnce(&mut Step) -> amad::Result<Vec<Tensor>>) -> Vec<Vec<f32>> {
    let mut step = g.step();
    let outs = f(&mut step).expect("recording failed");
    step.submit().expect("submit failed");
    outs.iter()
        .map(|t| pollster::block_on(t.read(g)).expect("readback failed"))
        .collect()
}

pub fn upload(shape: &[usize], data: &[f64]) -> Tensor {
    upload_on(gpu(), shape, data)
}

/// [`upload`] to a given device.
pub fn upload_on(g: &Gpu, shape: &[usize], data: &[f64]) -> Tensor {
    let v: Vec<f32> = data.iter().map(|&x| x as f32).collect();
    Tensor::from_slice(g, shape, &v).unwrap()
}

pub fn upload_u32(shape: &[usize], data: &[u32]) -> Tensor {
    Tensor::from_u32(gpu(), shape, data).unwrap()
}

/// Asserts that two results are the same bits, naming how many elements differ and the first.
pub fn same_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let differ: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect();
    if let Some(&i) = differ.first() {
        panic!(
            "{what}: {} of {} elements differ, the first at {i}: {} against {}",
            differ.len(),
            got.len(),
            got[i],
            want[i]
        );
    }
}

/// Asserts |got - want| <= atol + rtol·|want| elementwise, naming the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0.0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs() - (atol + rtol * w.abs());
        assert!(!(g as f64).is_nan(), "{what}: NaN at {i}");
        // A NaN reference would pass every comparison below.
        assert!(!w.is_nan(), "{what}: the reference is NaN at {i}");
        if err > worst.1 {
            worst = (i, err);
        }
    }
    let i = worst.0;
    assert!(
        worst.1 <= 0.0,
        "{what}: element {i}: got {} want {} (atol {atol}, rtol {rtol})",
        got[i],
        want[i]
    );
}

/// Same check between two f64 vectors (reference backward against finite differences).
pub fn assert_close64(what: &str, got: &[f64], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= atol + rtol * b.abs(),
            "{what}: element {i}: analytic {a} finite-difference {b}"
        );
    }
}

/// Central finite differences of a scalar function of x, in f64.
pub fn finite_diff(x: &[f64], eps: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xp[i];
            xp[i] = orig + eps;
            let fp = f(&xp);
            xp[i] = orig - eps;
            let fm = f(&xp);
            xp[i] = orig;
            (fp - fm) / (2.0 * eps)
        })
        .collect()
}

/// Σ w·y: turns a vector output into the scalar whose gradient w.r.t. y is w.
pub fn dot(w: &[f64], y: &[f64]) -> f64 {
    w.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// A scene object from its attributes and centre.
pub fn obj(
    shape: amad::data::scenes::Shape,
    colour: amad::data::scenes::Colour,
    size: amad::data::scenes::Size,
    x: f32,
    y: f32,
) -> amad::data::scenes::Object {
    amad::data::scenes::Object {
        shape,
        colour,
        size,
        x,
        y,
    }
}

/// The `amad` binary with `args`, ready to run (on lavapipe it needs XDG_RUNTIME_DIR).
pub fn amad_command<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_amad"));
    command.args(args).env("XDG_RUNTIME_DIR", "/tmp");
    command
}

/// Runs the `amad` binary with `args` to completion.
pub fn amad_cli<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
) -> std::process::Output {
    amad_command(args).output().unwrap()
}

/// The merges of a tokenizer.json that writes them as pairs, as merges.txt lines ("a b").
pub fn merges_lines(tokenizer: &serde_json::Value) -> Vec<String> {
    tokenizer["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()))
        .collect()
}

/// A device whose storage bindings hold at most `bytes` (WebGPU's default is 128 MiB).
pub fn capped_device(bytes: u64) -> Gpu {
    let mut g = own_device(true);
    g.limits.max_storage_buffer_binding_size = bytes;
    g
}

/// GPT-2's <|endoftext|>: start, end and padding of the Hub captioners.
pub const EOT: u32 = 50256;

/// A captioner of nlpconnect/vit-gpt2-image-captioning's shape (ViT-B/16 + 12-layer GPT-2, 50,257
/// tokens) with random weights, spread as make_hub_tiny.py spreads them so that logits are not
/// near-ties: its parameter values (in `Layout` order) and the model on `g`.
pub fn full_size_random(g: &Gpu) -> (Vec<Vec<f32>>, amad::model::Model) {
    let cfg = amad::model::Config::from_json(
        &serde_json::json!({
            "model_type": "vision-encoder-decoder",
            "decoder_start_token_id": EOT, "eos_token_id": EOT, "pad_token_id": EOT,
            "encoder": {"model_type": "vit", "image_size": 224, "patch_size": 16, "num_channels": 3,
                        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                        "intermediate_size": 3072, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
                        "qkv_bias": true},
            "decoder": {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 768,
                        "n_layer": 12, "n_head": 12, "n_inner": null, "activation_function": "gelu_new",
                        "layer_norm_epsilon": 1e-5, "add_cross_attention": true, "bos_token_id": EOT},
        })
        .to_string(),
    )
    .unwrap();
    let layout = amad::model::Layout::new(&cfg);
    let mut rng = amad::rng::Rng::new(27);
    let values: Vec<Vec<f32>> = layout
        .specs
        .iter()
        .map(|s| {
            let n: usize = s.shape.iter().product();
            let base = match s.init {
                amad::model::weights::Init::Ones => 1.0,
                _ => 0.0,
            };
            (0..n).map(|_| base + 0.1 * rng.normal() as f32).collect()
        })
        .collect();
    let weights = amad::model::Weights::from_values(g, &layout, &values).unwrap();
    let model = amad::model::Model {
        cfg,
        layout,
        weights,
    };
    (values, model)
}

/// A fresh, empty directory for the calling test: `tag` names it within the test binary.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("amad-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The tiny random Hub captioner with GPT-2's vocabulary (tests/fixtures/make_hub_tiny.py).
pub const HUB_TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hub_tiny");
/// CC0 photos from scikit-image (tests/fixtures/photos).
pub const PHOTOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/photos");

/// A fixture photo (`PHOTOS`/`photo`.png), decoded.
pub fn photo_pixels(photo: &str) -> amad::data::image::Pixels {
    let bytes = std::fs::read(std::path::Path::new(PHOTOS).join(format!("{photo}.png"))).unwrap();
    amad::data::image::decode(&bytes, photo).unwrap()
}

/// A fixture photo (`PHOTOS`/`photo`.png) as `c`'s normalised patches on `g`.
pub fn photo_patches(c: &amad::model::captioner::Captioner, g: &Gpu, photo: &str) -> Tensor {
    c.patches(g, &photo_pixels(photo)).unwrap()
}
