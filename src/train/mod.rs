//! The training workflow shared by `amad train-teacher` and `amad distill`: batches from the
//! scene stream, a learning-rate schedule, a progress line, a JSONL metrics log, checkpoints
//! every N steps that a restarted run resumes from, and a stop with a message on a non-finite loss
//! (the last checkpoint, written before it, stays good).

pub mod batch;
pub mod page;
pub mod shape_loss;

pub use shape_loss::{ShapeLoss, ShapeTargets};

use crate::data::captions::references;
use crate::data::scenes::{Scene, Split};
use crate::error::{Error, Result};
use crate::eval::{metrics, truth};
use crate::gpu::Gpu;
use crate::model::captioner::Captioner;
use crate::model::generate::Generation;
use crate::model::{Optimizer, Precision, Weights};

/// Options of a training run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The run's length: the learning-rate schedule spans it.
    pub steps: u64,
    /// Stop after this many steps (`None`: at `steps`), to continue later from the checkpoint.
    pub until: Option<u64>,
    pub batch: usize,
    pub lr: f32,
    pub warmup: u64,
    /// Where the cosine decay ends, as a fraction of `lr` (0 to 1; the default runs use 0.1).
    pub decay_to: f32,
    pub checkpoint_every: u64,
    pub max_norm: f32,
    /// Evaluate on the validation split every this many steps (0: never), on `eval_n` scenes.
    pub eval_every: u64,
    pub eval_n: usize,
}

impl RunOptions {
    /// `amad train-teacher`'s defaults: 2,500 steps of batch 32 at a peak learning rate of 2e-3,
    /// the recipe of the bundled teacher (docs/bundled-models.md).
    pub const TRAIN_TEACHER: RunOptions = RunOptions {
        steps: 2500,
        until: None,
        batch: 32,
        lr: 2e-3,
        warmup: 100,
        decay_to: 0.1,
        checkpoint_every: 100,
        max_norm: 1.0,
        eval_every: 0,
        eval_n: 50,
    };

    /// `amad distill`'s defaults: 2,400 steps at 1e-3, the rest as train-teacher's.
    pub const DISTILL: RunOptions = RunOptions {
        steps: 2400,
        lr: 1e-3,
        ..Self::TRAIN_TEACHER
    };

    /// The page's defaults for a distillation. A browser tab trains while its user watches, so
    /// its runs are shorter (300 steps of batch 8) at a higher peak (2e-3), checkpoint and
    /// validate more often, and validate on fewer scenes. The warmup is a tenth of the steps, at
    /// most `warmup` (`page_warmup`).
    pub const PAGE: RunOptions = RunOptions {
        steps: 300,
        batch: 8,
        lr: 2e-3,
        warmup: 20,
        checkpoint_every: 25,
        eval_every: 50,
        eval_n: 20,
        ..Self::DISTILL
    };

    /// The page's warmup for a run of `steps`: a tenth of it, between 1 and `PAGE.warmup`.
    pub fn page_warmup(steps: u64) -> u64 {
        (steps / 10).clamp(1, Self::PAGE.warmup)
    }

    /// An error naming what is out of range: steps, batch, checkpoint interval and learning rate
    /// must be positive, the decay's end a fraction of the peak.
    pub fn check(&self) -> Result<()> {
        if self.steps == 0
            || self.batch == 0
            || self.checkpoint_every == 0
            || self.lr.is_nan()
            || self.lr <= 0.0
        {
            return Err(Error::Invalid(
                "steps, batch, checkpoint interval and learning rate must be positive".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.decay_to) {
            return Err(Error::Invalid(format!(
                "--decay-to must be between 0 and 1 (the fraction of the peak learning rate the decay ends at), got {}",
                self.decay_to
            )));
        }
        Ok(())
    }
}

/// Linear warmup, then cosine decay to `decay_to` times the peak.
pub fn learning_rate(o: &RunOptions, step: u64) -> f32 {
    if step < o.warmup {
        return o.lr * (step + 1) as f32 / o.warmup as f32;
    }
    let t = (step - o.warmup) as f32 / (o.steps - o.warmup).max(1) as f32;
    let f = o.decay_to;
    o.lr * (f + (1.0 - f) * 0.5 * (1.0 + (std::f32::consts::PI * t.min(1.0)).cos()))
}

#[cfg(not(target_arch = "wasm32"))]
mod native;
#[cfg(not(target_arch = "wasm32"))]
pub use native::*;

/// The optimiser's moments and step count as safetensors bytes (`m.<name>`, `v.<name>`, metadata
/// `step`): what a resumed run needs beside the weights; with the shape head of
/// `--shape-loss` when there is one (`shape_head.*`).
pub async fn optimizer_state(
    gpu: &Gpu,
    c: &Captioner,
    (m, v): (&Weights, &Weights),
    step: u64,
    head: Option<&ShapeLoss>,
) -> Result<Vec<u8>> {
    use crate::model::weights::{f32_safetensors, named_values};
    let meta = std::collections::HashMap::from([("step".to_string(), step.to_string())]);
    let mut tensors = named_values(gpu, &c.model.layout, &[("m.", m), ("v.", v)]).await?;
    if let Some(h) = head {
        tensors.extend(h.named_values(gpu).await?);
    }
    f32_safetensors(&tensors, Some(meta))
}

/// Restores the optimiser state (and the shape head, when `head` is given) from
/// `optimizer_state`'s bytes (`source` names them in errors); returns the steps done.
pub fn restore_state(
    gpu: &Gpu,
    c: &Captioner,
    opt: &mut Optimizer,
    head: Option<&mut ShapeLoss>,
    bytes: &[u8],
    source: &str,
) -> Result<u64> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::Invalid(format!("{source}: {e}")))?;
    let step: u64 = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("step"))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Invalid(format!("{source}: no step count")))?;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::Invalid(format!("{source}: {e}")))?;
    let layout = &c.model.layout;
    let named = crate::model::formats::safetensors(bytes, source)?;
    let m = Weights::from_named(gpu, layout, &named, ("m.", source), Precision::F32)?;
    let v = Weights::from_named(gpu, layout, &named, ("v.", source), Precision::F32)?;
    let saved_head = st.names().iter().any(|n| n.starts_with(shape_loss::PREFIX));
    match head {
        Some(h) if saved_head => h.restore(gpu, &st, source)?,
        Some(_) => {
            return Err(Error::Invalid(format!(
                "{source}: this run was started without the shape loss; resume it with --shape-loss 0, or start in a new directory"
            )))
        }
        None if saved_head => {
            return Err(Error::Invalid(format!(
                "{source}: this run was started with the shape loss; resume it with a positive --shape-loss"
            )))
        }
        None => {}
    }
    opt.restore(m, v, step as u32);
    Ok(step)
}

/// What a training loop reports: the names of its loss terms (the last is the total) and where it
/// validates.
pub struct Reporting<'a> {
    pub names: &'a [&'static str],
    pub validation: &'a Source,
}

/// Where a distillation run's batches come from.
pub enum Source {
    /// The generated scene stream, one reference caption per scene.
    Scenes,
    /// The user's own images, the teacher's captions as targets: the images trained on and
    /// those held out for validation (possibly none).
    Images {
        train: Box<batch::ImageTargets>,
        held_out: Box<batch::ImageTargets>,
    },
}

impl Source {
    /// Training batch `step` for the captioner `c`.
    pub fn batch(
        &self,
        gpu: &Gpu,
        c: &Captioner,
        step: u64,
        size: usize,
    ) -> Result<crate::distill::Batch> {
        match self {
            Source::Scenes => {
                Ok(
                    batch::scene_batch(gpu, &c.model.cfg, &c.preprocess, Split::Train, step, size)?
                        .0,
                )
            }
            Source::Images { train, .. } => {
                train.batch(gpu, &c.model.cfg, &c.tokenizer, step, size)
            }
        }
    }

    /// Decoder positions of a training caption for a student of `cfg`.
    pub fn positions(&self, cfg: &crate::model::Config) -> usize {
        match self {
            Source::Scenes => cfg.decoder.n_positions,
            Source::Images { train, .. } => train.len,
        }
    }

    /// Validates the captioner `c` (greedy captions): on scenes 0..n of the validation split
    /// against their references, or on the held-out images against the teacher's captions (all
    /// of them; `n` is for scenes). Returns the metrics log's "eval" object and a line to show;
    /// None where there is nothing to validate on (no image held out).
    pub async fn validate(
        &self,
        gpu: &Gpu,
        c: &Captioner,
        n: usize,
    ) -> Result<Option<(serde_json::Value, String)>> {
        match self {
            Source::Scenes => {
                let e = evaluate(gpu, c, Split::Validation, n, Generation::default()).await?;
                Ok(Some((
                    serde_json::json!({"split": "validation", "n": e.n, "bleu4": e.bleu4, "cider_d": e.cider_d, "rouge_l": e.rouge_l, "truth": e.truth}),
                    format!(
                        "validation ({} scenes): BLEU-4 {:.4}  CIDEr-D {:.4}  ROUGE-L {:.4}  truth {:.4}",
                        e.n, e.bleu4, e.cider_d, e.rouge_l, e.truth
                    ),
                )))
            }
            Source::Images { held_out, .. } if held_out.names.is_empty() => Ok(None),
            Source::Images { held_out, .. } => {
                let g = Generation {
                    max_new_tokens: held_out.len,
                    ..Generation::default()
                };
                let a = held_out.agreement(gpu, c, g).await?;
                Ok(Some((
                    serde_json::json!({"split": "held-out images", "n": a.n, "bleu4": a.bleu4, "cider_d": a.cider_d, "rouge_l": a.rouge_l}),
                    format!(
                        "agreement with the teacher ({} held-out image{}): BLEU-4 {:.4}  CIDEr-D {:.4}  ROUGE-L {:.4}",
                        a.n,
                        if a.n == 1 { "" } else { "s" },
                        a.bleu4,
                        a.cider_d,
                        a.rouge_l
                    ),
                )))
            }
        }
    }
}

/// Scores of generated captions on scenes 0..n of a split.
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub n: usize,
    pub bleu4: f64,
    pub cider_d: f64,
    pub rouge_l: f64,
    pub truth: f64,
}

/// Captions (greedy or beam search, as `generation` says) for scenes 0..n of `split`, scored
/// against their references and their graphs.
pub async fn evaluate(
    gpu: &Gpu,
    c: &Captioner,
    split: Split,
    n: usize,
    generation: Generation,
) -> Result<Evaluation> {
    let mut captions = vec![];
    let mut scenes = vec![];
    for start in (0..n).step_by(64) {
        let chunk: Vec<Scene> = (start..(start + 64).min(n))
            .map(|i| Scene::generate(split, i as u64))
            .collect();
        let patches = batch::scene_patches(gpu, &chunk, &c.preprocess)?;
        for ids in c.model.generate(gpu, &patches, generation).await? {
            captions.push(c.tokenizer.decode(&ids));
        }
        scenes.extend(chunk);
    }
    let refs: Vec<Vec<String>> = scenes.iter().map(references).collect();
    let s = metrics::score(&captions, &refs);
    Ok(Evaluation {
        n,
        bleu4: s.bleu[3],
        cider_d: s.cider_d,
        rouge_l: s.rouge_l,
        truth: truth::truth(&captions, &scenes),
    })
}
