//! Captioning end to end: a checkpoint directory with all four files, image decoding, and the
//! `amad caption` and `amad loss` commands run as a user runs them.

mod common;
use amad::data::image::{decode, MAX_SIDE};
use amad::model::captioner::Captioner;
use amad::model::{preprocessor, Model, Tokenizer};
use common::*;
use std::path::{Path, PathBuf};

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny");

/// The tiny model with a 30-token vocabulary (4 special + 26 words) and 16×16 preprocessing.
fn captioner_dir(tag: &str) -> PathBuf {
    let dir = temp_dir(tag);
    write_captioner(&dir);
    dir
}

fn write_captioner(dir: &Path) {
    let words: Vec<String> = (b'a'..=b'z').map(|c| format!("w{}", c as char)).collect();
    let c = Captioner {
        model: Model::load(gpu(), Path::new(TINY)).unwrap(),
        tokenizer: Tokenizer::new(&words),
        preprocess: preprocessor::default_for(16, 4),
        generation: amad::model::generate::Generation::default(),
    };
    pollster::block_on(c.save(gpu(), dir)).unwrap();
}

fn image(w: u32, h: u32, seed: u8) -> image::RgbaImage {
    image::RgbaImage::from_fn(w, h, |x, y| {
        image::Rgba([
            (x * 7) as u8 ^ seed,
            (y * 5) as u8,
            seed,
            if x % 3 == 0 { 128 } else { 255 },
        ])
    })
}

#[test]
fn a_checkpoint_directory_round_trips() {
    let dir = captioner_dir("roundtrip");
    for f in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer.json",
    ] {
        assert!(dir.join(f).exists(), "{f} was not written");
    }
    let back = Captioner::load(gpu(), &dir).unwrap();
    // AMAD_KEEP_SAVED=DIR also writes it there for tests/fixtures/check_transformers_loads.py.
    if let Ok(keep) = std::env::var("AMAD_KEEP_SAVED") {
        std::fs::create_dir_all(&keep).unwrap();
        write_captioner(Path::new(&keep));
    }
    assert_eq!(back.tokenizer.len(), 30);
    assert_eq!(back.preprocess, preprocessor::default_for(16, 4));
    assert_eq!(
        back.tokenizer
            .decode(&back.tokenizer.encode("wa WB, wz! unknown")),
        "wa wb wz"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn decoding_flattens_alpha_and_shrinks_huge_images() {
    let mut png = vec![];
    image(4, 2, 9)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let px = decode(&png, "a.png").unwrap();
    assert_eq!((px.width, px.height), (4, 2));
    // Pixel (0, 0) has alpha 128: its colour is blended halfway to white, and alpha becomes 255.
    let [r, _, _, a] = px.rgba[0].to_le_bytes();
    assert_eq!(a, 255);
    assert_eq!(r, ((9u32 * 128 + 255 * 127 + 127) / 255) as u8);
    let mut huge = vec![];
    image(3 * MAX_SIDE, 10, 1)
        .write_to(
            &mut std::io::Cursor::new(&mut huge),
            image::ImageFormat::Png,
        )
        .unwrap();
    let px = decode(&huge, "huge.png").unwrap();
    assert_eq!(
        px.width, MAX_SIDE as usize,
        "the longest side is shrunk to MAX_SIDE"
    );
    let err = decode(b"hello, I am text", "fake.png")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fake.png") && err.contains("not an image"),
        "{err}"
    );
    let err = decode(&png[..png.len() / 2], "cut.png")
        .unwrap_err()
        .to_string();
    assert!(err.contains("cut.png") && err.contains("corrupt"), "{err}");
}

/// A JPEG of `w` × `h` (RGB: JPEG has no alpha).
fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let mut out = vec![];
    image::DynamicImage::ImageRgba8(image(w, h, 3))
        .to_rgb8()
        .write_to(
            &mut std::io::Cursor::new(&mut out),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    out
}

#[test]
fn a_jpeg_cut_short_decodes_with_a_warning_and_whole_files_get_none() {
    use amad::data::image::warning;
    let whole = jpeg(64, 48);
    assert_eq!(warning(&whole, "whole.jpg"), None);
    // Cut inside the compressed data: it still decodes, so only the warning tells.
    let cut = &whole[..whole.len() * 3 / 4];
    let px = decode(cut, "cut.jpg").unwrap();
    assert_eq!((px.width, px.height), (64, 48));
    let w = warning(cut, "cut.jpg").expect("a truncated JPEG gets a warning");
    assert!(w.contains("cut.jpg") && w.contains("ends early"), "{w}");
    // Bytes after the end-of-image marker (padding some cameras write) are no truncation.
    let padded = [whole.as_slice(), &[0u8; 16]].concat();
    assert_eq!(warning(&padded, "padded.jpg"), None);
    let mut png = vec![];
    image(4, 2, 9)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    assert_eq!(warning(&png, "a.png"), None);
}

#[test]
fn caption_command_captions_every_readable_image_and_reports_the_rest() {
    let dir = captioner_dir("cli");
    let imgs = temp_dir("images");
    let good = [
        ("a.png", image::ImageFormat::Png),
        ("b.jpg", image::ImageFormat::Jpeg),
        ("c.gif", image::ImageFormat::Gif),
        ("d.webp", image::ImageFormat::WebP),
        ("e.bmp", image::ImageFormat::Bmp),
    ];
    for (i, (name, format)) in good.iter().enumerate() {
        let img = image::DynamicImage::ImageRgba8(image(40 + 10 * i as u32, 30, i as u8 * 40));
        let img = if *format == image::ImageFormat::Jpeg {
            image::DynamicImage::ImageRgb8(img.to_rgb8())
        } else {
            img
        };
        img.save_with_format(imgs.join(name), *format).unwrap();
    }
    std::fs::write(imgs.join("text.png"), "this is not an image").unwrap();
    let whole = jpeg(64, 48);
    std::fs::write(imgs.join("f-cut.jpg"), &whole[..whole.len() * 3 / 4]).unwrap();
    let mut args: Vec<String> = vec![
        "caption".into(),
        "--model".into(),
        dir.display().to_string(),
        "--beam".into(),
        "2".into(),
    ];
    args.extend(good.iter().map(|(n, _)| imgs.join(n).display().to_string()));
    args.push(imgs.join("f-cut.jpg").display().to_string());
    args.push(imgs.join("text.png").display().to_string());
    args.push(imgs.join("missing.jpg").display().to_string());
    let out = amad_cli(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        6,
        "one line per readable image:\n{stdout}\n{stderr}"
    );
    assert!(
        lines[5].starts_with("f-cut.jpg\t")
            && stderr.contains("warning: ")
            && stderr.contains("f-cut.jpg: the JPEG file ends early"),
        "a truncated JPEG captions, with a warning:\n{stdout}\n{stderr}"
    );
    for ((name, _), line) in good.iter().zip(&lines) {
        let (file, caption) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("no tab in {line:?}"));
        assert_eq!(file, *name);
        assert!(
            caption
                .split(' ')
                .all(|w| w.is_empty() || (w.len() == 2 && w.starts_with('w'))),
            "{caption:?} is not words of the vocabulary"
        );
    }
    assert!(
        stderr.contains("text.png") && stderr.contains("not an image"),
        "{stderr}"
    );
    assert!(stderr.contains("missing.jpg"), "{stderr}");
    assert!(
        !out.status.success(),
        "two images failed, so the exit status says so"
    );
    std::fs::remove_dir_all(dir).ok();
    std::fs::remove_dir_all(imgs).ok();
}

#[test]
fn loss_command_writes_loss_gradient_and_weights() {
    let dir = temp_dir("loss");
    let (b, h, q, k) = (1, 2, 3, 3);
    let maps: Vec<f32> = (0..b * h * q * k)
        .map(|i| [0.2f32, 0.3, 0.5][i % 3])
        .collect();
    let bytes: Vec<u8> = maps.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = |shape: Vec<usize>| {
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes).unwrap()
    };
    let input = safetensors::serialize(
        [
            ("teacher", view(vec![b, h, q, k])),
            ("student", view(vec![b, h, q, k])),
        ],
        None,
    )
    .unwrap();
    std::fs::write(dir.join("maps.safetensors"), input).unwrap();
    let (inp, outp) = (dir.join("maps.safetensors"), dir.join("out.safetensors"));
    let out = amad_cli([
        "loss",
        "--input",
        inp.to_str().unwrap(),
        "--variant",
        "token-kl",
        "--tau",
        "0.5",
        "--output",
        outp.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read(&outp).unwrap();
    let st = safetensors::SafeTensors::deserialize(&written).unwrap();
    assert_eq!(st.tensor("loss").unwrap().shape(), &[] as &[usize]);
    assert_eq!(st.tensor("grad_student").unwrap().shape(), &[b, h, q, k]);
    assert_eq!(st.tensor("weights").unwrap().shape(), &[b, h, h]);
    std::fs::remove_dir_all(dir).ok();
}

/// `amad caption … | head -1` and the like: a reader that goes away ends the program quietly
/// (as other command-line tools end, by SIGPIPE) instead of with a panic on the failed write.
#[cfg(unix)]
#[test]
fn a_closed_output_pipe_ends_the_program_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = captioner_dir("pipe");
    let imgs = temp_dir("pipe-images");
    let img = image::DynamicImage::ImageRgba8(image(40, 30, 7));
    img.save_with_format(imgs.join("a.png"), image::ImageFormat::Png)
        .unwrap();
    let mut child = amad_command(["caption", "--model", dir.to_str().unwrap()])
        .args(std::iter::repeat_n(imgs.join("a.png"), 20))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(13), "ended by SIGPIPE: {stderr}");
    std::fs::remove_dir_all(dir).ok();
    std::fs::remove_dir_all(imgs).ok();
}

/// Beam search over a batch whose images finish at different steps gives each image the caption
/// it gets alone (bundled teacher, 12 test scenes). Batched, it once failed with a prefix-length
/// mismatch as soon as one image had all its beams finished (`amad eval --beam 3`).
#[test]
fn batched_beam_search_matches_each_image_alone() {
    use amad::data::scenes::{Scene, Split};
    use amad::model::generate::Generation;
    use amad::train::batch::scene_patches;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("www/models/teacher");
    let c = Captioner::load(gpu(), &dir).unwrap();
    let scenes: Vec<Scene> = (0..12).map(|i| Scene::generate(Split::Test, i)).collect();
    let generation = Generation {
        max_new_tokens: 15,
        beams: 3,
        ..Generation::default()
    };
    let patches = scene_patches(gpu(), &scenes, &c.preprocess).unwrap();
    let batched = pollster::block_on(c.model.generate(gpu(), &patches, generation)).unwrap();
    for (i, s) in scenes.iter().enumerate() {
        let one = scene_patches(gpu(), std::slice::from_ref(s), &c.preprocess).unwrap();
        let alone = pollster::block_on(c.model.generate(gpu(), &one, generation)).unwrap();
        assert_eq!(batched[i], alone[0], "scene {i}");
    }
}

/// Where XDG_RUNTIME_DIR is unset (servers, containers, cron), amad prints no "error:" lines of
/// the Vulkan loader's, only its output.
#[test]
fn no_spurious_errors_without_xdg_runtime_dir() {
    let dir = captioner_dir("xdg");
    let imgs = temp_dir("xdg-images");
    image::DynamicImage::ImageRgba8(image(20, 20, 3))
        .save_with_format(imgs.join("a.png"), image::ImageFormat::Png)
        .unwrap();
    let out = amad_command(["caption", "--model", dir.to_str().unwrap()])
        .arg(imgs.join("a.png"))
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("XDG_RUNTIME_DIR"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("a.png\t"));
    std::fs::remove_dir_all(dir).ok();
    std::fs::remove_dir_all(imgs).ok();
}
