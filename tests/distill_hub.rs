//! Distilling from Hub captioners: from the tiny random BPE teacher (tests/fixtures/hub_tiny) on
//! crops of photos, through the CLI as a user runs it, and a few steps from a random teacher of
//! nlpconnect/vit-gpt2-image-captioning's full shape into the default 3-head student.

mod common;
use amad::distill::{memory, DistillConfig};
use amad::model::captioner::Captioner;
use amad::model::{Config, Layout, Model, Precision, StudentShape};
use common::*;
use serde_json::Value;
use std::path::Path;

/// Two crops of each fixture photo (left and right halves) and their mirror images: 12 PNGs.
fn photo_crops(dir: &Path) {
    for name in ["astronaut", "chelsea", "coffee"] {
        let img = image::open(format!("{PHOTOS}/{name}.png"))
            .unwrap()
            .to_rgb8();
        let (w, h) = img.dimensions();
        for (i, x) in [0, w / 2].into_iter().enumerate() {
            let crop = image::imageops::crop_imm(&img, x, 0, w / 2, h).to_image();
            crop.save(dir.join(format!("{name}-{i}.png"))).unwrap();
            image::imageops::flip_horizontal(&crop)
                .save(dir.join(format!("{name}-{i}-flip.png")))
                .unwrap();
        }
    }
}

fn log_lines(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_student_distils_from_the_tiny_bpe_teacher_on_photo_crops() {
    let (images, out) = (temp_dir("crops"), temp_dir("out"));
    photo_crops(&images);
    let run_with = |steps: &str, extra: &[&str]| {
        let mut args = vec![
            "distill",
            "--teacher",
            HUB_TINY,
            "--images",
            images.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            steps,
            "--batch",
            "4",
            "--lr",
            "3e-3",
            "--warmup",
            "3",
            "--eval-every",
            "15",
            "--val-fraction",
            "0.25",
            "--checkpoint-every",
            "15",
        ];
        args.extend(extra);
        amad_cli(args)
    };
    let run = |steps: &str| run_with(steps, &[]);
    let r = run("30");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(err.contains("9 images to train on, 3 held out"), "{err}");
    // The caption loss falls (a mean of 10.6 over the first 5 steps, 8.9 over the last 5 when
    // this was written; a fall of 1 nat is far outside step-to-step noise of about 0.2) and KD,
    // now summed per row by a workgroup, is never negative.
    let lines = log_lines(&out);
    let term = |name: &str| -> Vec<f64> {
        lines
            .iter()
            .filter_map(|l| l["losses"][name].as_f64())
            .collect()
    };
    let (ce, kd) = (term("ce"), term("kd"));
    assert_eq!(ce.len(), 30);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&ce[25..]) < mean(&ce[..5]) - 1.0,
        "the caption loss did not fall: {ce:?}"
    );
    assert!(kd.iter().all(|&k| k >= 0.0), "{kd:?}");
    // Validation is agreement with the teacher on the held-out photos.
    let evals: Vec<&Value> = lines.iter().filter(|l| l.get("eval").is_some()).collect();
    assert_eq!(evals.len(), 2, "{evals:?}");
    assert_eq!(evals[0]["eval"]["split"], "held-out images");
    assert_eq!(evals[0]["eval"]["n"], 3);
    // The student is a checkpoint of the teacher's kind: its tokenizer, special tokens, image
    // geometry and preprocessing, with fewer heads on both sides.
    let (tc, sc) = (
        json(&Path::new(HUB_TINY).join("config.json")),
        json(&out.join("config.json")),
    );
    for key in ["decoder_start_token_id", "eos_token_id", "pad_token_id"] {
        assert_eq!(sc[key], tc[key], "{key}");
    }
    assert_eq!(sc["encoder"]["image_size"], tc["encoder"]["image_size"]);
    assert_eq!(sc["encoder"]["patch_size"], tc["encoder"]["patch_size"]);
    assert_eq!(sc["encoder"]["num_attention_heads"], 2, "teacher: 3");
    assert_eq!(sc["decoder"]["n_head"], 2, "teacher: 4");
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        std::fs::read(Path::new(HUB_TINY).join("tokenizer.json")).unwrap()
    );
    let gen = json(&out.join("generation_config.json"));
    assert_eq!(gen["decoder_start_token_id"], 50256);
    assert_eq!(gen["num_beams"], 1);
    // It captions through `amad caption` as through the library.
    let student = Captioner::load(gpu(), &out).unwrap();
    let photo = format!("{PHOTOS}/coffee.png");
    let px = amad::data::image::decode(&std::fs::read(&photo).unwrap(), "coffee").unwrap();
    let own = pollster::block_on(student.caption(gpu(), &px, student.generation)).unwrap();
    let cli = amad_cli(["caption", "--model", out.to_str().unwrap(), &photo]);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&cli.stdout).trim_end(),
        format!("coffee.png\t{own}")
    );
    // The teacher's captions are kept: a resumed run captions nothing again.
    let read_targets = || std::fs::read_to_string(out.join("targets.jsonl")).unwrap();
    let targets = read_targets();
    assert_eq!(targets.lines().count(), 12);
    let r = run("31");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(
        err.contains("captions 0 files") && err.contains("12 captions reused"),
        "{err}"
    );
    assert_eq!(read_targets(), targets);
    // The captions are this teacher's: the same teacher at half precision is another teacher,
    // and the run its captions trained is not resumed with it; nothing in OUT changes.
    let checkpoint = std::fs::read(out.join("model.safetensors")).unwrap();
    let r = run_with("32", &["--teacher-half-weights"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "{err}");
    assert!(
        err.contains("another teacher captioned") && err.contains("give a new --out"),
        "{err}"
    );
    assert_eq!(read_targets(), targets);
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        checkpoint
    );
    // With no run to resume, that teacher captions the images again and keeps its own captions.
    std::fs::remove_file(out.join("train_state.safetensors")).unwrap();
    let r = run_with("1", &["--teacher-half-weights"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{err}");
    assert!(
        err.contains("captions 12 files") && err.contains("(0 captions reused"),
        "{err}"
    );
    let half = read_targets();
    assert_eq!(half.lines().count(), 12);
    assert_ne!(half, targets);
    std::fs::remove_dir_all(images).ok();
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn too_few_photos_and_a_batch_over_the_device_are_refused_with_what_would_do() {
    let (images, out) = (temp_dir("few"), temp_dir("few-out"));
    std::fs::copy(format!("{PHOTOS}/coffee.png"), images.join("coffee.png")).unwrap();
    std::fs::write(images.join("notes.txt"), "not an image").unwrap();
    let distill = |extra: &[&str]| {
        let mut args = vec![
            "distill",
            "--teacher",
            HUB_TINY,
            "--images",
            images.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "2",
        ];
        args.extend(extra);
        amad_cli(args)
    };
    // Generated scenes speak another vocabulary than a Hub teacher's.
    let r = amad_cli([
        "distill",
        "--teacher",
        HUB_TINY,
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        err.contains("scene vocabulary") && err.contains("--images DIR"),
        "{err}"
    );
    let r = distill(&[]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        err.contains("notes.txt") && err.contains("skipped"),
        "{err}"
    );
    assert!(
        err.contains("1 readable image is too few") && err.contains("validation share to 0"),
        "{err}"
    );
    // A second photo gives one to train on and one to hold out; then a batch whose logits cannot
    // fit one binding is refused before the run starts, with the batch that would fit.
    std::fs::copy(format!("{PHOTOS}/chelsea.png"), images.join("chelsea.png")).unwrap();
    let r = distill(&["--batch", "100000"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        err.contains("a distillation batch of 100000 does not fit")
            && err.contains("max_storage_buffer_binding_size")
            && err.contains("or less fits"),
        "{err}"
    );
    assert!(!out.join("config.json").exists(), "nothing started");
    // A student checkpoint of another teacher is refused by what differs, before any captioning.
    let bundled = concat!(env!("CARGO_MANIFEST_DIR"), "/www/models/student");
    let r = distill(&["--student-init", bundled]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(
        err.contains("not a student of this teacher")
            && err.contains("vocab_size 34 (the teacher's: 50257)"),
        "{err}"
    );
    assert!(
        !err.contains("the teacher captions"),
        "refused before any captioning: {err}"
    );
    std::fs::remove_dir_all(images).ok();
    std::fs::remove_dir_all(out).ok();
}

/// The estimate names what breaks the limit and finds the largest batch within it; under
/// WebGPU's default 128 MiB bindings a ViT-B/GPT-2 teacher's logits limit the batch.
#[test]
fn the_memory_estimate_finds_the_largest_batch_that_fits() {
    let teacher =
        Config::from_json(&std::fs::read_to_string(format!("{HUB_TINY}/config.json")).unwrap())
            .unwrap();
    let student = Config::student_of(&teacher, &StudentShape::default_for(&teacher));
    let cfg = DistillConfig::default();
    let binding = 128u64 << 20;
    let e = memory::estimate((&teacher, Precision::F32), &student, &cfg, 8, 20);
    // The logits' gradient, its rows padded from 50,257 to 50,304 for the backward's products.
    assert_eq!(e.largest.bytes, 8 * 20 * 50304 * 4, "{e:?}");
    // A teacher with half-precision weights needs two bytes less for each of those weights.
    let half = memory::estimate((&teacher, Precision::HalfWeights), &student, &cfg, 8, 20);
    let layout = Layout::new(&teacher);
    let halved: usize = (layout.half_weights().iter())
        .map(|&i| layout.specs[i].shape.iter().product::<usize>())
        .sum();
    assert!(halved > 0);
    assert_eq!(e.total() - half.total(), 2 * halved as u64);
    let err = memory::check(
        (&teacher, Precision::F32),
        &student,
        &cfg,
        64,
        20,
        binding,
        None,
    )
    .unwrap_err()
    .to_string();
    // 33 × 20 × 50304 × 4 bytes = 132.8 MB ≤ 134.2 MB; 34 is over.
    assert!(
        err.contains("logits") && err.contains("a batch of 33 or less fits"),
        "{err}"
    );
    // A total over what the device has available is refused too.
    let total = memory::estimate((&teacher, Precision::F32), &student, &cfg, 4, 20).total();
    let err = memory::check(
        (&teacher, Precision::F32),
        &student,
        &cfg,
        8,
        20,
        binding,
        Some(total),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("in all") && err.contains("a batch of 4 or less fits"),
        "{err}"
    );
    assert!(memory::check(
        (&teacher, Precision::F32),
        &student,
        &cfg,
        4,
        20,
        binding,
        Some(total)
    )
    .is_ok());
}

/// A few steps from a random teacher of nlpconnect's full shape (239 M parameters, 12 heads,
/// 197 image tokens, 50,257 tokens; its embedding in row blocks under 128 MiB bindings) into the
/// default student, 4 × 192 × 3 + 2 × 192 × 3: every term finite and in range, the alignment
/// weights 12 × 3 per paired layer, and the student's weights moved.
#[test]
fn a_full_size_teacher_distils_into_a_three_head_student() {
    let g = capped_device(128 << 20);
    let (_, teacher) = full_size_random(&g);
    let shape = StudentShape::default_for(&teacher.cfg);
    assert_eq!(
        shape,
        StudentShape {
            encoder: (4, 192, 3),
            decoder: (2, 192, 3),
        }
    );
    let student = Model::new(&g, Config::student_of(&teacher.cfg, &shape), 2).unwrap();
    // 13.2 M parameters, three quarters of them the embedding.
    let n = student.layout.param_count();
    assert!((12_000_000..14_000_000).contains(&n), "{n}");
    let (b, len) = (2, 6);
    let mut rng = amad::rng::Rng::new(5);
    let patches: Vec<f32> = (0..b * 196 * 768).map(|_| rng.normal() as f32).collect();
    let ids: Vec<u32> = (0..b * len)
        .map(|i| {
            if i % len == 0 {
                EOT
            } else {
                rng.below(50257) as u32
            }
        })
        .collect();
    // Targets: the next ids, the last of the second caption padding.
    let mut labels: Vec<u32> = (0..b * len)
        .map(|i| if (i + 1) % len == 0 { EOT } else { ids[i + 1] })
        .collect();
    labels[b * len - 1] = amad::ops::loss::IGNORE;
    let valid = labels
        .iter()
        .map(|&l| l != amad::ops::loss::IGNORE)
        .collect();
    let patches = amad::Tensor::from_slice(&g, &[b, 196, 768], &patches).unwrap();
    let batch = amad::distill::Batch {
        teacher_patches: patches.clone(),
        student_patches: patches,
        ids: amad::Tensor::from_u32(&g, &[b, len], &ids).unwrap(),
        labels: amad::Tensor::from_u32(&g, &[b * len], &labels).unwrap(),
        valid,
    };
    let before = pollster::block_on(student.weights.tensors[student.layout.wte].read(&g)).unwrap();
    let mut opt =
        amad::model::Optimizer::new(&g, &student.layout, amad::ops::optim::AdamW::default(), 1.0)
            .unwrap();
    let cfg = DistillConfig::default();
    for _ in 0..2 {
        let mut s = g.step();
        let out = amad::distill::distill_step(&mut s, &teacher, &student, &mut opt, &batch, &cfg)
            .unwrap();
        s.submit().unwrap();
        let terms = pollster::block_on(out.terms.read(&g)).unwrap();
        let [ce, kd, attn, total] = terms[..] else {
            panic!("{terms:?}")
        };
        // A random student over 50,257 tokens: cross-entropy near ln 50257 = 10.8.
        assert!((9.0..13.0).contains(&ce), "{terms:?}");
        assert!(
            kd >= 0.0 && attn.is_finite() && total.is_finite(),
            "{terms:?}"
        );
        // Encoder pairs 4, decoder self 2, cross 2.
        assert_eq!(out.weights.len(), 8);
        for p in &out.weights {
            assert_eq!(p.weights.shape(), [b, 12, 3]);
            let w = pollster::block_on(p.weights.read(&g)).unwrap();
            for row in w.chunks(3) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
            }
        }
    }
    let after = pollster::block_on(student.weights.tensors[student.layout.wte].read(&g)).unwrap();
    assert!(before.iter().zip(&after).any(|(a, b)| a != b));
}

/// scripts/experiment_photos.sh end to end on the tiny teacher and the fixture photos, one seed
/// of two steps: every method runs, the teacher captions the photos once, and the report has a
/// row of agreement scores per method.
#[test]
fn the_photo_experiment_runs_every_method_and_writes_its_report() {
    let out = temp_dir("experiment");
    let root = env!("CARGO_MANIFEST_DIR");
    let r = std::process::Command::new("bash")
        .arg(format!("{root}/scripts/experiment_photos.sh"))
        .args([HUB_TINY, PHOTOS])
        .env("OUT", &out)
        .env("STEPS", "2")
        .env("BATCH", "2")
        .env("SEEDS", "1")
        .env("VAL_FRACTION", "0.34")
        .env("XDG_RUNTIME_DIR", "/tmp")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&r.stdout);
    assert!(
        r.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&r.stderr)
    );
    let methods = [
        "ce",
        "kd",
        "one-to-one",
        "amad-mse",
        "amad-kl",
        "amad-token",
    ];
    let mut captioned = 0;
    for m in methods {
        let log = std::fs::read_to_string(out.join(format!("{m}-s1.log"))).unwrap();
        if !log.contains("captions 0 files") {
            captioned += 1;
        }
    }
    assert_eq!(captioned, 1, "the teacher captions the photos once");
    let report = std::fs::read_to_string(out.join("results.md")).unwrap();
    for m in methods {
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("| {m} | 1 | ")))
            .unwrap_or_else(|| panic!("no row for {m}:\n{report}"));
        // BLEU-4, CIDEr-D and ROUGE-L of the last validation, each a number.
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        for c in &cells[3..6] {
            c.parse::<f64>()
                .unwrap_or_else(|_| panic!("{m}: {c:?} in {row}"));
        }
    }
    assert!(report.contains("on 1 held-out photo."), "{report}");
    std::fs::remove_dir_all(out).ok();
}

/// --init-from-teacher: on a side as wide as the teacher's, student layer j starts as the teacher
/// layer the losses pair it with, whatever the head counts; a student narrower on both sides is
/// refused with the width that would do.
#[test]
fn a_student_as_wide_as_its_teacher_starts_from_its_paired_layers() {
    let teacher = Captioner::load(gpu(), Path::new(HUB_TINY)).unwrap();
    // One layer per side, with 2 heads (the teacher: 2 layers, 3 and 4 heads).
    let shape = StudentShape {
        encoder: (1, 48, 2),
        decoder: (1, 32, 2),
    };
    let cfg = Config::student_of(&teacher.model.cfg, &shape);
    let (student, copied) = pollster::block_on(amad::distill::init::from_teacher(
        gpu(),
        &teacher.model,
        cfg,
        3,
    ))
    .unwrap();
    assert_eq!(copied, student.layout.specs.len(), "every tensor fits");
    let values = |m: &Model| pollster::block_on(m.weights.values(gpu())).unwrap();
    let (t, s) = (values(&teacher.model), values(&student));
    let find = |m: &Model, name: &str| {
        m.layout
            .specs
            .iter()
            .position(|x| x.name == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    // Student layer 0 of 1 pairs with teacher layer round(1 · 2 / 1) − 1 = 1.
    for (sn, tn) in [
        (
            "encoder.encoder.layer.0.attention.attention.qkv.weight",
            "encoder.encoder.layer.1.attention.attention.qkv.weight",
        ),
        (
            "decoder.transformer.h.0.crossattention.c_attn.weight",
            "decoder.transformer.h.1.crossattention.c_attn.weight",
        ),
        (
            "decoder.transformer.wte.weight",
            "decoder.transformer.wte.weight",
        ),
        ("enc_to_dec_proj.weight", "enc_to_dec_proj.weight"),
    ] {
        assert_eq!(
            s[find(&student, sn)],
            t[find(&teacher.model, tn)],
            "{sn} from {tn}"
        );
    }
    let narrow = Config::student_of(
        &teacher.model.cfg,
        &StudentShape {
            encoder: (1, 24, 2),
            decoder: (1, 16, 2),
        },
    );
    let err = pollster::block_on(amad::distill::init::from_teacher(
        gpu(),
        &teacher.model,
        narrow,
        3,
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("--student-width 48"), "{err}");
    // Through the CLI it is refused before the teacher captions anything.
    let out = temp_dir("narrow");
    let r = amad_cli([
        "distill",
        "--teacher",
        HUB_TINY,
        "--images",
        PHOTOS,
        "--out",
        out.to_str().unwrap(),
        "--student-width",
        "24,16",
        "--init-from-teacher",
    ]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("--student-width 48"),
        "{err}"
    );
    assert!(!out.join("targets.jsonl").exists(), "{err}");
    std::fs::remove_dir_all(out).ok();
}
