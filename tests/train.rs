//! The training workflow: a run interrupted and resumed ends exactly where an uninterrupted run
//! does; a non-finite loss stops the run with a message and leaves the last good checkpoint.

mod common;
use amad::model::captioner::Captioner;
use amad::model::{preprocessor, Config, Model, Optimizer};
use amad::ops::optim::AdamW;
use amad::train::{run_loop, train_captioner, RunOptions, ShapeTargets, Source};
use common::*;
use std::path::{Path, PathBuf};

/// A one-layer captioner of the scene vocabulary with (width, heads) in both stacks.
fn captioner((width, heads): (usize, usize), seed: u64) -> amad::Result<Captioner> {
    let tokenizer = amad::data::captions::tokenizer();
    let cfg = Config::sized(tokenizer.len(), 16, (1, width, heads), (1, width, heads));
    Ok(Captioner {
        model: Model::new(gpu(), cfg, seed)?,
        tokenizer,
        preprocess: preprocessor::default_for(64, 8),
        generation: amad::model::generate::Generation::default(),
    })
}

fn tiny() -> amad::Result<Captioner> {
    captioner((16, 2), 3)
}

fn tiny_student() -> amad::Result<Captioner> {
    captioner((8, 2), 4)
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("amad-train-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    d
}

fn opts(until: Option<u64>) -> RunOptions {
    RunOptions {
        steps: 6,
        until,
        batch: 4,
        lr: 3e-3,
        warmup: 2,
        decay_to: 0.1,
        checkpoint_every: 2,
        max_norm: 1.0,
        eval_every: 0,
        eval_n: 0,
    }
}

fn weights(d: &Path) -> Vec<Vec<f32>> {
    let c = Captioner::load(gpu(), d).unwrap();
    c.model
        .weights
        .tensors
        .iter()
        .map(|t| pollster::block_on(t.read(gpu())).unwrap())
        .collect()
}

/// The losses logged under `name`, step by step.
fn term(d: &Path, name: &str) -> Vec<f64> {
    std::fs::read_to_string(d.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["losses"][name]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// Trains 6 steps whole and 4 + 2 with a restart between (at a checkpoint, with the same
/// command), with the shape loss `shape_loss`; checks both end alike and training lowered `name`.
fn resumed_and_whole(tag: &str, shape_loss: Option<ShapeTargets>, names: &[&str]) {
    let (a, b) = (dir(&format!("{tag}-whole")), dir(&format!("{tag}-resumed")));
    train_captioner(gpu(), &a, &opts(None), shape_loss, tiny).unwrap();
    train_captioner(gpu(), &b, &opts(Some(4)), shape_loss, tiny).unwrap();
    train_captioner(gpu(), &b, &opts(None), shape_loss, || {
        panic!("a resumed run must not start afresh")
    })
    .unwrap();
    for name in names {
        assert_eq!(
            term(&a, name),
            term(&b, name),
            "the same batches and {name} losses, step by step"
        );
        assert!(
            term(&a, name)[5] < term(&a, name)[0],
            "training lowered {name}: {:?}",
            term(&a, name)
        );
    }
    assert_eq!(weights(&a), weights(&b), "the same final weights");
    std::fs::remove_dir_all(a).ok();
    std::fs::remove_dir_all(b).ok();
}

/// A run killed after its last checkpoint has logged steps that its resumption takes again: those
/// lines go, each step is logged once, and the clock continues instead of restarting at 0.
#[test]
fn a_resumed_run_logs_each_step_once_and_continues_the_clock() {
    let d = dir("log-once");
    train_captioner(gpu(), &d, &opts(Some(4)), None, tiny).unwrap();
    let log = d.join("metrics.jsonl");
    let mut text = std::fs::read_to_string(&log).unwrap();
    // Steps 5 and 6 as a run killed before its next checkpoint would have left them.
    text.push_str("{\"step\":5,\"seconds\":99.0,\"losses\":{}}\n{\"step\":6,\"seconds\":99.5,\"losses\":{}}\n");
    std::fs::write(&log, text).unwrap();
    train_captioner(gpu(), &d, &opts(None), None, || panic!("resumed")).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<u64> = lines.iter().map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
    let seconds: Vec<f64> = lines
        .iter()
        .map(|v| v["seconds"].as_f64().unwrap())
        .collect();
    assert!(
        seconds.windows(2).all(|w| w[0] <= w[1]) && seconds[5] < 99.0,
        "the clock continues from step 4's: {seconds:?}"
    );
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    resumed_and_whole("plain", None, &["ce"]);
}

#[test]
fn a_resumed_run_with_the_shape_loss_continues_its_head() {
    // The shape loss of steps 5 and 6 depends on the head's weights and moments, so equal logs
    // mean the head was saved and restored exactly.
    resumed_and_whole("shapes", Some(targets(1)), &["ce", "shape", "total"]);
}

#[test]
fn a_resumed_run_with_sub_cell_shape_labels_continues_its_head() {
    resumed_and_whole("sub-cells", Some(targets(2)), &["ce", "shape", "total"]);
}

/// `--shape-loss 5 --shape-cells cells`.
fn targets(cells: usize) -> ShapeTargets {
    ShapeTargets { weight: 5.0, cells }
}

#[test]
fn a_run_resumed_with_the_other_shape_loss_setting_is_refused() {
    let d = dir("switch");
    train_captioner(gpu(), &d, &opts(Some(2)), Some(targets(1)), tiny).unwrap();
    let err = train_captioner(gpu(), &d, &opts(None), Some(targets(2)), tiny)
        .err()
        .expect("resuming with other sub-cells is refused")
        .to_string();
    assert!(err.contains("--shape-cells"), "{err}");
    let err = train_captioner(gpu(), &d, &opts(None), None, tiny)
        .err()
        .expect("resuming without the shape loss is refused")
        .to_string();
    assert!(err.contains("--shape-loss"), "{err}");
    let d2 = dir("switch-back");
    train_captioner(gpu(), &d2, &opts(Some(2)), None, tiny).unwrap();
    let err = train_captioner(gpu(), &d2, &opts(None), Some(targets(1)), tiny)
        .err()
        .expect("resuming with the shape loss is refused")
        .to_string();
    assert!(err.contains("--shape-loss 0"), "{err}");
    // Sub-cells that do not divide the 8-pixel patches: refused before anything is written.
    let d3 = dir("bad-cells");
    let err = train_captioner(gpu(), &d3, &opts(None), Some(targets(3)), tiny)
        .err()
        .expect("3 does not divide the patch size")
        .to_string();
    assert!(err.contains("--shape-cells") && !d3.exists(), "{err}");
    std::fs::remove_dir_all(d).ok();
    std::fs::remove_dir_all(d2).ok();
}

/// `amad train-teacher --shape-loss 0 --shape-cells 2` asks for labels of a loss it turns off:
/// refused with a message naming both, before anything is written.
#[test]
fn sub_cells_without_the_shape_loss_are_refused() {
    let d = dir("cells-without-loss");
    // Runs `amad train-teacher --out d --shape-loss 0 ARGS…`: whether it succeeded, and its stderr.
    let without_loss = |args: &[&str]| {
        let base = [
            "train-teacher",
            "--out",
            d.to_str().unwrap(),
            "--shape-loss",
            "0",
        ];
        let out = amad_cli(base.iter().chain(args));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Short, so that a build without the check fails this test quickly.
    let (ok, err) = without_loss(&[
        "--shape-cells",
        "2",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--until",
        "1",
    ]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("--shape-cells 2") && err.contains("--shape-loss 0") && !d.exists(),
        "{err}"
    );
    // `--shape-loss 0` alone is not refused for the default sub-cells: the run gets past that
    // check to the unknown option, which is reported instead (and nothing is trained).
    let (ok, err) = without_loss(&["--no-such-option"]);
    assert!(
        !ok && err.contains("--no-such-option") && !err.contains("turns that loss off"),
        "{err}"
    );
}

#[test]
fn a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint() {
    let d = dir("nan");
    std::fs::create_dir_all(&d).unwrap();
    let c = tiny().unwrap();
    let mut opt = Optimizer::new(gpu(), &c.model.layout, AdamW::default(), 1.0).unwrap();
    let o = RunOptions {
        steps: 10,
        ..opts(None)
    };
    let report = amad::train::Reporting {
        names: &["ce"],
        validation: &Source::Scenes,
    };
    let err = run_loop(gpu(), &c, &mut opt, None, &o, &d, 0, &report, |_, step| {
        // Steps 0-4 report a loss; step 5 a NaN.
        amad::Tensor::from_slice(gpu(), &[1], &[if step == 5 { f32::NAN } else { 1.0 }])
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("step 6") && err.contains("NaN") && err.contains("from step 4"),
        "{err}"
    );
    assert!(err.contains("is the last good one"), "{err}");
    assert_eq!(term(&d, "ce").len(), 5, "nothing logged for the bad step");
    // The checkpoint of step 4 loads and resumes.
    Captioner::load(gpu(), &d).unwrap();
    let mut opt = Optimizer::new(gpu(), &c.model.layout, AdamW::default(), 1.0).unwrap();
    assert_eq!(
        amad::train::restore(gpu(), &c, &mut opt, None, &d).unwrap(),
        4
    );
    // Resumed from step 4 and the loss at once not finite: that checkpoint gave it, and the
    // message says so instead of sending the user back to it.
    let err = run_loop(gpu(), &c, &mut opt, None, &o, &d, 4, &report, |_, _| {
        amad::Tensor::from_slice(gpu(), &[1], &[f32::INFINITY])
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("step 5") && err.contains("from step 4") && err.contains("gave this loss"),
        "{err}"
    );
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn the_learning_rate_warms_up_and_decays() {
    let o = RunOptions {
        steps: 100,
        until: None,
        batch: 1,
        lr: 1.0,
        warmup: 10,
        decay_to: 0.1,
        checkpoint_every: 10,
        max_norm: 1.0,
        eval_every: 0,
        eval_n: 0,
    };
    let lr = |o: &RunOptions, s| amad::train::learning_rate(o, s);
    assert!((lr(&o, 0) - 0.1).abs() < 1e-6 && (lr(&o, 9) - 1.0).abs() < 1e-6);
    assert!(lr(&o, 10) > lr(&o, 50) && lr(&o, 50) > lr(&o, 99) && (lr(&o, 99) - 0.1).abs() < 0.01);
    // Halfway through the decay the cosine is at its middle: (1 + 0.1) / 2.
    assert!((lr(&o, 55) - 0.55).abs() < 1e-6, "{}", lr(&o, 55));
    // Decay to zero: the same curve, ending at 0 instead of 0.1.
    let to_zero = RunOptions {
        decay_to: 0.0,
        ..o.clone()
    };
    assert!((lr(&to_zero, 55) - 0.5).abs() < 1e-6 && lr(&to_zero, 100) == 0.0);
    assert!(lr(&to_zero, 99) < 1e-3 && lr(&to_zero, 99) > 0.0);
    assert_eq!(
        lr(&to_zero, 5),
        lr(&o, 5),
        "the warm-up does not depend on the decay"
    );
    for bad in [-0.1, 1.5, f32::NAN] {
        let err = RunOptions {
            decay_to: bad,
            ..o.clone()
        }
        .check()
        .unwrap_err()
        .to_string();
        assert!(err.contains("between 0 and 1"), "{bad}: {err}");
    }
    assert!(o.check().is_ok() && to_zero.check().is_ok());
}

#[test]
fn distillation_runs_through_the_same_loop() {
    use amad::distill::DistillConfig;
    let d = dir("distill");
    let teacher = tiny().unwrap();
    let o = RunOptions {
        steps: 3,
        ..opts(None)
    };
    let student = || captioner((8, 1), 4);
    let o = RunOptions {
        eval_every: 3,
        eval_n: 4,
        ..o
    };
    amad::train::distill_captioner(
        gpu(),
        &teacher,
        &d,
        &o,
        &DistillConfig::default(),
        &Source::Scenes,
        student,
    )
    .unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(d.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "three steps and one evaluation");
    let eval = &lines[3]["eval"];
    assert_eq!(lines[3]["step"], 3);
    assert_eq!(eval["n"], 4);
    assert!(
        (0.0..=1.0).contains(&eval["truth"].as_f64().unwrap()),
        "{eval}"
    );
    for l in &lines[..3] {
        for term in ["ce", "kd", "attn", "total"] {
            assert!(l["losses"][term].as_f64().unwrap().is_finite(), "{l}");
        }
    }
    let back = Captioner::load(gpu(), &d).unwrap();
    assert_eq!(
        back.model.cfg.encoder.hidden_size, 8,
        "the checkpoint is the student"
    );
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn distilling_from_own_images_uses_the_teachers_captions_and_skips_bad_files() {
    use amad::data::scenes::{Scene, Split};
    use amad::distill::DistillConfig;
    use amad::train::batch::ImageTargets;
    let d = dir("images");
    let teacher = tiny().unwrap();
    let png = |i: u64| {
        let s = Scene::generate(Split::Test, i);
        let mut out = std::io::Cursor::new(vec![]);
        image::RgbImage::from_raw(64, 64, s.render())
            .unwrap()
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    };
    let files = vec![
        ("a.png".to_string(), png(0)),
        ("notes.png".to_string(), b"not an image".to_vec()),
        ("b.png".to_string(), png(1)),
    ];
    let none = Default::default();
    let (t, skipped) = pollster::block_on(ImageTargets::caption(
        gpu(),
        &teacher,
        &files,
        &none,
        |_, _| {},
    ))
    .unwrap();
    assert_eq!(t.names, ["a.png", "b.png"]);
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].contains("notes.png"), "{skipped:?}");
    // The targets are the teacher's own captions, decoded as its checkpoint asks.
    for (i, name) in t.names.iter().enumerate() {
        let pixels =
            amad::data::image::decode(&files.iter().find(|f| &f.0 == name).unwrap().1, name)
                .unwrap();
        let own = pollster::block_on(teacher.caption(gpu(), &pixels, teacher.generation)).unwrap();
        assert_eq!(t.captions[i], own);
    }
    let o = RunOptions {
        steps: 2,
        ..opts(None)
    };
    amad::train::distill_captioner(
        gpu(),
        &teacher,
        &d,
        &o,
        &DistillConfig::default(),
        &Source::Images {
            train: Box::new(t),
            held_out: Box::default(),
        },
        tiny_student,
    )
    .unwrap();
    // The alignment weights of the last step: per pair, each teacher head's row sums to 1.
    let a: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("alignment.json")).unwrap()).unwrap();
    assert_eq!(a["step"], 2);
    eprintln!("{a}");
    let pairs = a["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 3, "encoder, decoder self and cross: {a}");
    for p in pairs {
        let rows = p["weights"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "two teacher heads");
        for r in rows {
            let sum: f64 = r
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .sum();
            assert!((sum - 1.0).abs() < 1e-5, "{p}");
        }
    }
    let err = pollster::block_on(ImageTargets::caption(
        gpu(),
        &teacher,
        &files[1..2],
        &none,
        |_, _| {},
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("none of the 1 files"), "{err}");
    std::fs::remove_dir_all(d).ok();
}

/// Generated scenes reach a model of any input size: for 64×64 models the scenes are patchified
/// as one stacked image, for other sizes each is resized; both must give what an image file of
/// the scene would give, and a 32×32 model must evaluate on scenes (it used to stop at a shape
/// check in the final validation of `amad distill`).
#[test]
fn scenes_reach_models_of_any_input_size() {
    use amad::data::image::Pixels;
    use amad::data::scenes::{Scene, Split, SIZE};
    let scenes: Vec<Scene> = (0..3)
        .map(|i| Scene::generate(Split::Validation, i))
        .collect();
    for side in [64, 32, 48] {
        let mut c = captioner((16, 2), 5).unwrap();
        c.preprocess = preprocessor::default_for(side, 8);
        let got = amad::train::batch::scene_patches(gpu(), &scenes, &c.preprocess).unwrap();
        let got = pollster::block_on(got.read(gpu())).unwrap();
        let mut want = vec![];
        for s in &scenes {
            let rgb = s.render();
            let pixels = Pixels {
                width: SIZE,
                height: SIZE,
                rgba: rgb
                    .chunks(3)
                    .map(|p| p[0] as u32 | (p[1] as u32) << 8 | (p[2] as u32) << 16 | 255 << 24)
                    .collect(),
            };
            let p = c.patches(gpu(), &pixels).unwrap();
            want.extend(pollster::block_on(p.read(gpu())).unwrap());
        }
        let want: Vec<f64> = want.iter().map(|&v| v as f64).collect();
        assert_close(
            &format!("scene patches at {side}×{side}"),
            &got,
            &want,
            1e-6,
            1e-6,
        );
    }
    let tokenizer = amad::data::captions::tokenizer();
    let mut cfg = Config::sized(tokenizer.len(), 16, (1, 16, 2), (1, 16, 2));
    cfg.encoder.image_size = 32;
    let c = Captioner {
        model: Model::new(gpu(), cfg, 6).unwrap(),
        tokenizer,
        preprocess: preprocessor::default_for(32, 8),
        generation: amad::model::generate::Generation::default(),
    };
    let generation = amad::model::generate::Generation::default();
    let e = pollster::block_on(amad::train::evaluate(
        gpu(),
        &c,
        Split::Validation,
        3,
        generation,
    ))
    .unwrap();
    assert_eq!(e.n, 3);
}

/// Training steps give the same bits whether kernels read their operands from images (the
/// default on CPU adapters, with the subgroup matmul where the device has subgroups), from images
/// without the subgroup matmul, or from storage buffers: each image kernel adds the same terms in
/// the same order as its buffer twin, and the GELU in the subgroup matmul's store is the GELU
/// kernel's function on the same values. Rows 64 wide (256 bytes) and heads of 16 take every image
/// path.
#[test]
fn training_steps_give_the_same_bits_from_images_and_from_buffers() {
    let mut results = vec![];
    for (images, subgroup) in [(true, true), (true, false), (false, false)] {
        let g = own_device(images);
        g.set_subgroup_matmul(subgroup);
        let matmul = if subgroup {
            subgroup_matmul_kernel(&g)
        } else {
            "matmul_image"
        };
        let cfg = Config::sized(64, 16, (2, 64, 4), (2, 64, 4));
        let model = Model::new(&g, cfg, 5).unwrap();
        let mut opt = Optimizer::new(&g, &model.layout, AdamW::default(), 1.0).unwrap();
        let mut rng = amad::rng::Rng::new(9);
        let (e, batch) = (&model.cfg.encoder, 3);
        let patches: Vec<f32> = (0..batch * e.patches() * e.patch_dim())
            .map(|_| rng.uniform() as f32)
            .collect();
        let ids: Vec<u32> = (0..batch * 16).map(|_| rng.below(64) as u32).collect();
        let patches =
            amad::Tensor::from_slice(&g, &[batch, e.patches(), e.patch_dim()], &patches).unwrap();
        let tids = amad::Tensor::from_u32(&g, &[batch, 16], &ids).unwrap();
        let labels = amad::Tensor::from_u32(&g, &[batch * 16], &ids).unwrap();
        let mut losses = vec![];
        let mut train_step = || {
            let mut s = g.step();
            let loss = model
                .train_step(&mut s, &mut opt, &patches, &tids, &labels, |_, _| Ok(None))
                .unwrap();
            s.submit().unwrap();
            losses.push(pollster::block_on(loss.read(&g)).unwrap());
        };
        train_step();
        let ran = kernels_run(&g, train_step);
        let from_images: Vec<_> = ran
            .iter()
            .filter(|k| k.ends_with("_image") || **k == "matmul_subgroup")
            .copied()
            .collect();
        let mut want = vec![
            "attention_apply_image",
            "attention_dscores_image",
            "attention_scores_image",
            "layernorm_bwd_params_image",
            "layernorm_bwd_x_image",
            "layernorm_fwd_image",
            matmul,
            "sum_columns_image",
        ];
        // The subgroup matmul applies the MLPs' GELU in its store; the image matmul leaves it to
        // the GELU kernels.
        if matmul != "matmul_subgroup" {
            want.extend(["gelu_bwd_image", "gelu_fwd_image"]);
        }
        want.sort();
        if images {
            assert_eq!(from_images, want);
        } else {
            assert!(from_images.is_empty(), "{from_images:?}");
        }
        let w: Vec<Vec<f32>> = model
            .weights
            .tensors
            .iter()
            .map(|t| pollster::block_on(t.read(&g)).unwrap())
            .collect();
        results.push((losses, w));
    }
    for (i, path) in [(1, "images without the subgroup matmul"), (2, "buffers")] {
        assert!(
            results[0].0 == results[i].0,
            "losses with subgroups {:?}, from {path} {:?}",
            &results[0].0,
            &results[i].0
        );
        assert!(
            results[0].1 == results[i].1,
            "the weights after two steps differ between subgroups and {path}"
        );
    }
}
