//! The native training loop: checkpoints on disk, a progress line on stderr, a JSONL log.

use super::*;
use crate::gpu::Tensor;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// The optimiser's state beside the checkpoint: moments and the step count.
const STATE: &str = "train_state.safetensors";

/// Whether `dir` holds a run's checkpoint, so that a run started on it resumes.
pub fn resumes(dir: &Path) -> bool {
    dir.join(STATE).exists()
}

/// Writes the captioner and the optimiser state (with the shape head, if any) into `dir`; `step`
/// steps are done.
pub async fn checkpoint(
    gpu: &Gpu,
    c: &Captioner,
    opt: &Optimizer,
    head: Option<&ShapeLoss>,
    step: u64,
    dir: &Path,
) -> Result<()> {
    c.save(gpu, dir).await?;
    let out = optimizer_state(gpu, c, opt.moments(), step, head).await?;
    // Write then rename, so an interrupted write never leaves a half state behind.
    let tmp = dir.join(format!("{STATE}.tmp"));
    std::fs::write(&tmp, out).map_err(|e| Error::Invalid(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, dir.join(STATE))
        .map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))
}

/// Restores the optimiser state (and the shape head, if any) saved in `dir`; returns the steps
/// done.
pub fn restore(
    gpu: &Gpu,
    c: &Captioner,
    opt: &mut Optimizer,
    head: Option<&mut ShapeLoss>,
    dir: &Path,
) -> Result<u64> {
    let path = dir.join(STATE);
    let bytes =
        std::fs::read(&path).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    restore_state(gpu, c, opt, head, &bytes, &path.display().to_string())
}

/// Prepares the metrics log for a run that starts after `start` steps: a run killed after its last
/// checkpoint logged steps that its resumption takes again, so the lines past `start` go (the file
/// is rewritten whole, then renamed over the old one). Returns the seconds the kept lines had
/// run, so that the clock continues.
fn trim_log(path: &Path, start: u64) -> Result<f64> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(0.0);
    };
    let bad = |e: std::io::Error| Error::Invalid(format!("{}: {e}", path.display()));
    let mut kept = String::new();
    let mut clock = 0.0f64;
    let mut dropped = false;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        if v.get("step")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
            > start
        {
            dropped = true;
            continue;
        }
        if let Some(s) = v.get("seconds").and_then(serde_json::Value::as_f64) {
            clock = clock.max(s);
        }
        kept.push_str(line);
        kept.push('\n');
    }
    if dropped {
        let tmp = path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, kept).map_err(bad)?;
        std::fs::rename(&tmp, path).map_err(bad)?;
    }
    Ok(clock)
}

/// One line of the metrics log and the progress line.
pub struct Progress {
    pub step: u64,
    pub terms: Vec<(&'static str, f32)>,
    pub lr: f32,
}

/// Runs `record` for steps `start..opts.steps`, each one submission that returns its loss terms
/// (the last term is the total); checkpoints (with the shape head `head`, when training has one),
/// logs as `report` says, shows progress, validates every `opts.eval_every` steps, and stops on a
/// non-finite loss.
#[allow(clippy::too_many_arguments)]
pub fn run_loop(
    gpu: &Gpu,
    c: &Captioner,
    opt: &mut Optimizer,
    head: Option<&ShapeLoss>,
    opts: &RunOptions,
    dir: &Path,
    start: u64,
    report: &Reporting,
    mut record: impl FnMut(&mut Optimizer, u64) -> Result<Tensor>,
) -> Result<()> {
    let Reporting { names, validation } = report;
    let log_path = dir.join("metrics.jsonl");
    let clock = trim_log(&log_path, start)?;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::Invalid(format!("{}: {e}", log_path.display())))?;
    let began = Instant::now();
    let end = opts.until.map_or(opts.steps, |u| u.min(opts.steps));
    for step in start..end {
        opt.cfg.lr = learning_rate(opts, step);
        let terms = pollster::block_on(record(opt, step)?.read(gpu))?;
        if let Some(bad) = terms.iter().find(|v| !v.is_finite()) {
            // The loss of step `step` + 1 is computed from the weights after `step` updates: a
            // checkpoint from `step` holds the very weights that gave it.
            let last = (step - step % opts.checkpoint_every).max(start);
            let advice = if last < step {
                "is the last good one; run again with a lower --lr to continue from it"
            } else {
                "holds the weights that gave this loss, so continuing from it gives the same; \
                 start again in a new directory with a lower --lr"
            };
            return Err(Error::Invalid(format!(
                "step {}: the loss is {bad}; stopped. The checkpoint in {} (from step {last}) {advice}",
                step + 1,
                dir.display(),
            )));
        }
        let p = Progress {
            step: step + 1,
            terms: names.iter().copied().zip(terms.iter().copied()).collect(),
            lr: opt.cfg.lr,
        };
        let line = serde_json::json!({
            "step": p.step,
            "lr": p.lr,
            "losses": p.terms.iter().map(|(n, v)| (n.to_string(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
            "seconds": clock + began.elapsed().as_secs_f64(),
        });
        writeln!(log, "{line}")
            .map_err(|e| Error::Invalid(format!("{}: {e}", log_path.display())))?;
        let done = (step + 1 - start) as f64;
        let rate = done / began.elapsed().as_secs_f64();
        // Whole seconds, so that 59.6 s reads 1m00s rather than 0m60s.
        let eta = ((opts.steps - step - 1) as f64 / rate).round() as u64;
        let losses: Vec<String> = p.terms.iter().map(|(n, v)| format!("{n} {v:.4}")).collect();
        eprint!(
            "\rstep {}/{} | {} | lr {:.2e} | {rate:.2} steps/s | ETA {}m{:02}s   ",
            p.step,
            opts.steps,
            losses.join(" | "),
            p.lr,
            eta / 60,
            eta % 60
        );
        if opts.eval_every > 0 && (step + 1) % opts.eval_every == 0 {
            if let Some((eval, shown)) =
                pollster::block_on(validation.validate(gpu, c, opts.eval_n))?
            {
                let line = serde_json::json!({"step": step + 1, "eval": eval});
                writeln!(log, "{line}")
                    .map_err(|e| Error::Invalid(format!("{}: {e}", log_path.display())))?;
                eprintln!("\nstep {}: {shown}", step + 1);
            }
        }
        if (step + 1) % opts.checkpoint_every == 0 || step + 1 == end {
            pollster::block_on(checkpoint(gpu, c, opt, head, step + 1, dir))?;
        }
    }
    eprintln!();
    Ok(())
}

/// Runs a training loop for the captioner checkpointed in `dir`: resumes from the checkpoint there
/// if there is one, otherwise starts from `fresh()`. `record(captioner, optimiser, head, step)`
/// records and submits one step and returns its loss terms, named and validated as `report` says
/// (see `run_loop`). With `shape_loss` = Some(targets) the run trains a shape head (see `shape_loss`) beside
/// the captioner.
fn run_captioner(
    gpu: &Gpu,
    dir: &Path,
    opts: &RunOptions,
    shape_loss: Option<ShapeTargets>,
    report: &Reporting,
    fresh: impl FnOnce() -> Result<Captioner>,
    mut record: impl FnMut(&Captioner, &mut Optimizer, Option<&ShapeLoss>, u64) -> Result<Tensor>,
) -> Result<Captioner> {
    use crate::ops::optim::AdamW;
    opts.check()?;
    let resuming = resumes(dir);
    let c = if resuming {
        Captioner::load(gpu, dir)?
    } else {
        fresh()?
    };
    let mut opt = Optimizer::new(
        gpu,
        &c.model.layout,
        AdamW {
            lr: opts.lr,
            ..AdamW::default()
        },
        opts.max_norm,
    )?;
    let mut head = shape_loss
        .map(|t| ShapeLoss::new(gpu, &c.model.cfg.encoder, t, 1))
        .transpose()?;
    // Only now, with every option checked, so that a refused run leaves no directory behind.
    std::fs::create_dir_all(dir).map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))?;
    let start = if resuming {
        restore(gpu, &c, &mut opt, head.as_mut(), dir)?
    } else {
        0
    };
    eprintln!(
        "{} {} parameters in {} at step {start} of {}, on {}",
        if resuming { "resuming" } else { "training" },
        c.model.layout.param_count(),
        dir.display(),
        opts.steps,
        gpu.describe()
    );
    let head = head.as_ref();
    run_loop(
        gpu,
        &c,
        &mut opt,
        head,
        opts,
        dir,
        start,
        report,
        |opt, step| record(&c, opt, head, step),
    )?;
    Ok(c)
}

/// Trains a captioner on the scene stream with cross-entropy, into `dir` (see `run_captioner`);
/// with `shape_loss` = Some(targets), plus their weight W times the shape head's loss (see
/// `shape_loss`).
pub fn train_captioner(
    gpu: &Gpu,
    dir: &Path,
    opts: &RunOptions,
    shape_loss: Option<ShapeTargets>,
    fresh: impl FnOnce() -> Result<Captioner>,
) -> Result<Captioner> {
    let names: &[&'static str] = match shape_loss {
        Some(_) => &["ce", "shape", "total"],
        None => &["ce"],
    };
    run_captioner(
        gpu,
        dir,
        opts,
        shape_loss,
        &Reporting {
            names,
            validation: &Source::Scenes,
        },
        fresh,
        |c, opt, head, step| {
            let (b, scenes) = batch::scene_batch(
                gpu,
                &c.model.cfg,
                &c.preprocess,
                Split::Train,
                step,
                opts.batch,
            )?;
            let mut s = gpu.step();
            // The shape head with this batch's labels, when the run has one.
            let shapes = match head {
                Some(h) => {
                    let l = h.labels(&scenes);
                    Some((h, s.upload_u32(&[l.len()], &l)?))
                }
                None => None,
            };
            let mut shape_loss = None;
            let ce = c.model.train_step(
                &mut s,
                opt,
                &b.teacher_patches,
                &b.ids,
                &b.labels,
                |s, states| {
                    let Some((h, labels)) = &shapes else {
                        return Ok(None);
                    };
                    let (loss, dstates) = h.record(s, states, labels)?;
                    shape_loss = Some(loss);
                    Ok(Some(dstates))
                },
            )?;
            let loss = match (shapes, shape_loss) {
                (Some((h, _)), Some(shape)) => {
                    h.update(&mut s, &opt.cfg, opt.t)?;
                    h.terms(&mut s, &ce, &shape)?
                }
                _ => ce,
            };
            s.submit()?;
            Ok(loss)
        },
    )
}

/// Distils a student from `teacher` on `source` with the loss `cfg`, into `dir` (see
/// `run_captioner`). The teacher and the student must share the image size and vocabulary. At
/// each checkpoint `alignment.json` gets the alignment weights of the step (mean over its batch).
pub fn distill_captioner(
    gpu: &Gpu,
    teacher: &Captioner,
    dir: &Path,
    opts: &RunOptions,
    cfg: &crate::distill::DistillConfig,
    source: &Source,
    fresh: impl FnOnce() -> Result<Captioner>,
) -> Result<Captioner> {
    let end = opts.until.map_or(opts.steps, |u| u.min(opts.steps));
    let scene_words = crate::data::captions::tokenizer().len();
    let vocab = teacher.model.cfg.decoder.vocab_size;
    if matches!(source, Source::Scenes) && vocab != scene_words {
        return Err(Error::Invalid(format!(
            "generated scenes are captioned in the scene vocabulary ({scene_words} words) and this \
             teacher's has {vocab} tokens: distil it on your own images (--images DIR)"
        )));
    }
    // The student's config, to refuse a batch that cannot fit before anything starts.
    let resuming = resumes(dir);
    let student = if resuming { None } else { Some(fresh()?) };
    let student_cfg = match &student {
        Some(c) => c.model.cfg.clone(),
        None => {
            let path = dir.join("config.json");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            crate::model::Config::from_json(&text)?
        }
    };
    let len = source.positions(&student_cfg);
    let need = crate::distill::memory::check(
        (&teacher.model.cfg, teacher.model.precision()),
        &student_cfg,
        cfg,
        opts.batch,
        len,
        gpu.max_binding(),
        gpu.available_memory(),
    )?;
    eprintln!(
        "a step of batch {} × {len} positions needs about {:.0} MB of device memory",
        opts.batch,
        need.total() as f64 / 1e6
    );
    run_captioner(
        gpu,
        dir,
        opts,
        None,
        &Reporting {
            names: &crate::distill::step::term::NAMES,
            validation: source,
        },
        || student.ok_or_else(|| Error::Invalid("the student was already made".into())),
        |c, opt, _, step| {
            let b = source.batch(gpu, c, step, opts.batch)?;
            let mut s = gpu.step();
            let out = crate::distill::distill_step(&mut s, &teacher.model, &c.model, opt, &b, cfg)?;
            s.submit()?;
            if !out.weights.is_empty()
                && ((step + 1) % opts.checkpoint_every == 0 || step + 1 == end)
            {
                write_alignment(gpu, &out.weights, step + 1, dir)?;
            }
            Ok(out.terms)
        },
    )
}

/// `alignment.json`: per paired layer, the alignment weights [H_t][H_s] averaged over the batch.
fn write_alignment(
    gpu: &Gpu,
    pairs: &[crate::distill::step::PairWeights],
    step: u64,
    dir: &Path,
) -> Result<()> {
    let out = pairs
        .iter()
        .map(|p| pollster::block_on(p.to_json(gpu)))
        .collect::<Result<Vec<_>>>()?;
    let path = dir.join("alignment.json");
    std::fs::write(
        &path,
        serde_json::json!({"step": step, "pairs": out}).to_string(),
    )
    .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}
