//! One distillation step (docs/method.md, "The total loss"): teacher forward, student forward,
//!   L = α·CE(student, reference) + β·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + γ·L_attn,
//! student backward and AdamW, all recorded into one submission. L_attn is the mean, over the
//! paired layers of each enabled attention kind, of the alignment loss of their maps.

use crate::error::{shape_err, Error, Result};
use crate::gpu::{Step, Tensor};
use crate::model::{Forward, KeepMaps, MapGrads, Model, Optimizer, Weights};
use crate::ops::amad::{align, Options, Variant};
use crate::ops::attention::Probs;
use crate::ops::elementwise::axpy;
use crate::ops::loss::{cross_entropy, cross_entropy_bwd, kl_div, kl_div_bwd};
use crate::ops::reduce::add_sum_into;

/// Which attention maps are distilled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kinds {
    pub encoder: bool,
    pub decoder_self: bool,
    pub cross: bool,
}

impl Default for Kinds {
    fn default() -> Self {
        Kinds {
            encoder: true,
            decoder_self: true,
            cross: true,
        }
    }
}

/// How student layers find their teacher layer when depths differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerMap {
    /// Student layer j (0-based, of L_s) learns from teacher layer round((j+1)·L_t/L_s) − 1.
    Spread,
    /// Only the last layers are paired.
    LastOnly,
}

/// The (student layer, teacher layer) pairs.
pub fn layer_pairs(
    teacher_layers: usize,
    student_layers: usize,
    map: LayerMap,
) -> Vec<(usize, usize)> {
    if teacher_layers == 0 || student_layers == 0 {
        return vec![];
    }
    match map {
        LayerMap::LastOnly => vec![(student_layers - 1, teacher_layers - 1)],
        LayerMap::Spread => (0..student_layers)
            .map(|j| {
                let t = ((j + 1) as f64 * teacher_layers as f64 / student_layers as f64).round()
                    as usize;
                (j, t.clamp(1, teacher_layers) - 1)
            })
            .collect(),
    }
}

/// Everything a distillation step needs to know; defaults as in docs/method.md.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistillConfig {
    pub alpha: f32,
    pub beta: f32,
    pub gamma: f32,
    /// Temperature T of output distillation.
    pub temperature: f32,
    /// The attention loss (`None`: no attention term).
    pub attention: Option<Options>,
    pub kinds: Kinds,
    pub layer_map: LayerMap,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig {
            alpha: 1.0,
            beta: 1.0,
            gamma: 1.0,
            temperature: 2.0,
            attention: Some(Options {
                variant: Variant::Kl,
                tau: DEFAULT_TAU,
                detach_weights: false,
            }),
            kinds: Kinds::default(),
            layer_map: LayerMap::Spread,
        }
    }
}

/// The names of the methods, as the CLI and the page spell them.
pub const METHODS: &str = "ce, kd, one-to-one, amad-mse, amad-kl or amad-token";

/// The method a run uses unless told otherwise.
pub const DEFAULT_METHOD: &str = "amad-kl";

/// The seed of a student's initialisation unless told otherwise.
pub const DEFAULT_SEED: u64 = 2;

/// The alignment's temperature τ unless told otherwise: the softmax over plain cosine similarities.
pub const DEFAULT_TAU: f32 = 1.0;

impl DistillConfig {
    /// This configuration with the loss of `method` (see `METHODS`): `ce` trains on the reference
    /// captions alone (β = 0, no attention term), `kd` adds output distillation, the others add
    /// an attention term with temperature `tau` and, when `detach_weights`, alignment weights that
    /// pass no gradient.
    pub fn with_method(mut self, method: &str, tau: f32, detach_weights: bool) -> Result<Self> {
        let attention = |variant| {
            Some(Options {
                variant,
                tau,
                detach_weights,
            })
        };
        self.attention = match method {
            "ce" => {
                self.beta = 0.0;
                None
            }
            "kd" => None,
            "one-to-one" => attention(Variant::OneToOneKl),
            "amad-mse" => attention(Variant::Mse),
            "amad-kl" => attention(Variant::Kl),
            "amad-token" => attention(Variant::TokenKl),
            other => {
                return Err(Error::Invalid(format!(
                    "unknown method {other:?}; choose {METHODS}"
                )))
            }
        };
        self.check()?;
        Ok(self)
    }

    /// An error naming the first setting out of range: the loss weights α, β and γ must be finite
    /// and not negative, the temperatures T and τ positive. Checked before a run starts, so that a
    /// bad setting never reaches its first step.
    pub fn check(&self) -> Result<()> {
        for (name, v) in [
            ("alpha (the caption loss's weight)", self.alpha),
            ("beta (the output distillation's weight)", self.beta),
            ("gamma (the attention loss's weight)", self.gamma),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::Invalid(format!(
                    "{name} must be a number of 0 or more, got {v}"
                )));
            }
        }
        let tau = self.attention.map_or(1.0, |o| o.tau);
        for (name, v) in [
            ("temperature (of output distillation)", self.temperature),
            ("tau (the alignment temperature)", tau),
        ] {
            if !v.is_finite() || v <= 0.0 {
                return Err(Error::Invalid(format!("{name} must be above 0, got {v}")));
            }
        }
        Ok(())
    }
}

/// A batch as both models see it.
pub struct Batch {
    /// Patches for the teacher and for the student (the same tensor when they share preprocessing).
    pub teacher_patches: Tensor,
    pub student_patches: Tensor,
    /// Decoder inputs [B, L] (u32).
    pub ids: Tensor,
    /// Targets [B·L] (u32, `loss::IGNORE` at padding).
    pub labels: Tensor,
    /// Whether each position b·L + l holds a real token (its label is not ignored).
    pub valid: Vec<bool>,
}

/// Which attention kind a pair of maps belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Encoder,
    DecoderSelf,
    Cross,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Encoder => "encoder",
            Kind::DecoderSelf => "decoder-self",
            Kind::Cross => "cross",
        }
    }
}

/// The alignment weights of one paired layer, [B, H_t, H_s] on the GPU.
pub struct PairWeights {
    pub kind: Kind,
    pub student_layer: usize,
    pub teacher_layer: usize,
    pub weights: Tensor,
}

impl PairWeights {
    /// The pair for display: kind, layers, and the alignment weights [H_t][H_s] averaged over
    /// the batch (one readback).
    pub async fn to_json(&self, gpu: &crate::gpu::Gpu) -> Result<serde_json::Value> {
        let s = self.weights.shape().to_vec();
        let v = self.weights.read(gpu).await?;
        let per = s[1] * s[2];
        let mean: Vec<f32> = (0..per)
            .map(|i| v.iter().skip(i).step_by(per).sum::<f32>() / s[0] as f32)
            .collect();
        Ok(serde_json::json!({
            "kind": self.kind.name(),
            "student_layer": self.student_layer,
            "teacher_layer": self.teacher_layer,
            "weights": mean.chunks(s[2]).collect::<Vec<_>>(),
        }))
    }
}

/// The slots of [`StepOut::terms`], and their names in metrics.jsonl.
pub mod term {
    pub const CE: usize = 0;
    pub const KD: usize = 1;
    pub const ATTENTION: usize = 2;
    pub const TOTAL: usize = 3;
    pub const NAMES: [&str; 4] = ["ce", "kd", "attn", "total"];
}

/// What a step reports: its loss terms (see [`term`]) in one tensor (one readback), and the
/// alignment weights of every paired layer.
pub struct StepOut {
    pub terms: Tensor,
    pub weights: Vec<PairWeights>,
}

fn maps(fwd: &Forward, kind: Kind) -> Vec<&Probs> {
    match kind {
        Kind::Encoder => fwd.encoder_attentions(),
        Kind::DecoderSelf => fwd.decoder_attentions(),
        Kind::Cross => fwd.cross_attentions(),
    }
}

/// Valid-cell masks for decoder maps: self [B, L, L] (query and key real), cross [B, L, T].
fn decoder_masks(
    step: &mut Step,
    valid: &[bool],
    batch: usize,
    len: usize,
    image_tokens: usize,
) -> Result<(Tensor, Tensor)> {
    let v = |b: usize, l: usize| valid[b * len + l] as u32 as f32;
    let mut selfm = Vec::with_capacity(batch * len * len);
    let mut cross = Vec::with_capacity(batch * len * image_tokens);
    for b in 0..batch {
        for l in 0..len {
            selfm.extend((0..len).map(|m| v(b, l) * v(b, m)));
            cross.extend(std::iter::repeat_n(v(b, l), image_tokens));
        }
    }
    Ok((
        step.upload(&[batch, len, len], &selfm)?,
        step.upload(&[batch, len, image_tokens], &cross)?,
    ))
}

/// The paired layers (student, teacher) of every attention kind the loss reads, in the order
/// their terms are recorded (none without an attention term).
fn attention_jobs(
    teacher: &Model,
    student: &Model,
    cfg: &DistillConfig,
) -> Vec<(Kind, (usize, usize))> {
    if cfg.attention.is_none() {
        return vec![];
    }
    let (te, se) = (&teacher.cfg.encoder, &student.cfg.encoder);
    let (td, sd) = (&teacher.cfg.decoder, &student.cfg.decoder);
    let enc_pairs = layer_pairs(te.num_hidden_layers, se.num_hidden_layers, cfg.layer_map);
    let dec_pairs = layer_pairs(td.n_layer, sd.n_layer, cfg.layer_map);
    let mut jobs = vec![];
    for (on, kind, pairs) in [
        (cfg.kinds.encoder, Kind::Encoder, &enc_pairs),
        (cfg.kinds.decoder_self, Kind::DecoderSelf, &dec_pairs),
        (cfg.kinds.cross, Kind::Cross, &dec_pairs),
    ] {
        if on {
            jobs.extend(pairs.iter().map(|&p| (kind, p)));
        }
    }
    jobs
}

/// Records the distillation loss and its gradient w.r.t. the student's parameters into `grads`
/// (which it zeroes first). Returns the loss terms and alignment weights.
pub fn distill_grads(
    step: &mut Step,
    teacher: &Model,
    student: &Model,
    grads: &Weights,
    batch: &Batch,
    cfg: &DistillConfig,
) -> Result<StepOut> {
    let (te, se) = (&teacher.cfg.encoder, &student.cfg.encoder);
    let (td, sd) = (&teacher.cfg.decoder, &student.cfg.decoder);
    if td.vocab_size != sd.vocab_size {
        return Err(Error::Invalid(format!(
            "teacher and student vocabularies differ: {} and {} tokens",
            td.vocab_size, sd.vocab_size
        )));
    }
    if cfg.attention.is_some()
        && (cfg.kinds.encoder || cfg.kinds.cross)
        && te.tokens() != se.tokens()
    {
        return Err(Error::Invalid(format!(
            "attention maps over the image need the same image tokens: the teacher has {}, the student {}",
            te.tokens(),
            se.tokens()
        )));
    }
    let s = batch.ids.shape();
    if s.len() != 2 || batch.valid.len() != s[0] * s[1] || batch.labels.numel() != s[0] * s[1] {
        return shape_err(
            "distill",
            format!(
                "ids {s:?}, labels {:?} and {} validity flags do not agree",
                batch.labels.shape(),
                batch.valid.len()
            ),
        );
    }
    let (b, len) = (s[0], s[1]);
    let jobs = attention_jobs(teacher, student, cfg);
    grads.clear(step);
    // The teacher keeps only what the losses read: its logits and the maps of its paired layers.
    let mut keep = KeepMaps {
        encoder: vec![false; te.num_hidden_layers],
        decoder_self: vec![false; td.n_layer],
        cross: vec![false; td.n_layer],
    };
    for &(kind, (_, jt)) in &jobs {
        match kind {
            Kind::Encoder => keep.encoder[jt] = true,
            Kind::DecoderSelf => keep.decoder_self[jt] = true,
            Kind::Cross => keep.cross[jt] = true,
        }
    }
    let tf = teacher.forward_maps(step, &batch.teacher_patches, &batch.ids, &keep)?;
    let sf = student.forward(step, &batch.student_patches, &batch.ids)?;
    let rows = [b * len, sd.vocab_size];
    let (zt, zs) = (tf.logits.reshape(&rows)?, sf.logits().reshape(&rows)?);
    let terms = step.zeros(&[term::NAMES.len()])?;
    // Output terms.
    let (ce, ce_totals) = cross_entropy(step, &zs, &batch.labels)?;
    let dlogits = cross_entropy_bwd(step, &zs, &batch.labels, &ce_totals, cfg.alpha)?;
    let t2 = cfg.temperature * cfg.temperature;
    let (kd, kd_totals) = kl_div(step, &zt, &zs, &batch.labels, cfg.temperature)?;
    if cfg.beta != 0.0 {
        let dkd = kl_div_bwd(
            step,
            &zt,
            &zs,
            &batch.labels,
            &kd_totals,
            cfg.temperature,
            cfg.beta * t2,
        )?;
        axpy(step, &dlogits, &dkd, 1.0)?;
    }
    add_sum_into(step, &ce, 1.0, &terms, term::CE)?;
    add_sum_into(step, &kd, 1.0, &terms, term::KD)?;
    add_sum_into(step, &ce, cfg.alpha, &terms, term::TOTAL)?;
    add_sum_into(step, &kd, cfg.beta * t2, &terms, term::TOTAL)?;
    // Attention term.
    let mut dmaps = MapGrads {
        encoder: vec![None; se.num_hidden_layers],
        decoder_self: vec![None; sd.n_layer],
        cross: vec![None; sd.n_layer],
    };
    let mut weights = vec![];
    if let Some(opts) = cfg.attention {
        let (self_mask, cross_mask) = decoder_masks(step, &batch.valid, b, len, se.tokens())?;
        let share = 1.0 / jobs.len().max(1) as f32;
        for &(kind, (js, jt)) in &jobs {
            let teacher_maps = match kind {
                Kind::Encoder => &tf.encoder,
                Kind::DecoderSelf => &tf.decoder_self,
                Kind::Cross => &tf.cross,
            };
            let kept = teacher_maps[jt]
                .as_ref()
                .expect("forward_maps keeps every paired layer's maps");
            // The maps without the padding of their rows, as the losses take them.
            let (tm, sm) = (kept.maps(step)?, maps(&sf, kind)[js].maps(step)?);
            let mask = match kind {
                Kind::Encoder => None,
                Kind::DecoderSelf => Some(&self_mask),
                Kind::Cross => Some(&cross_mask),
            };
            let a = align(step, &tm, &sm, mask, opts, cfg.gamma * share)?;
            add_sum_into(step, &a.loss, share, &terms, term::ATTENTION)?;
            add_sum_into(step, &a.loss, cfg.gamma * share, &terms, term::TOTAL)?;
            let slot = match kind {
                Kind::Encoder => &mut dmaps.encoder[js],
                Kind::DecoderSelf => &mut dmaps.decoder_self[js],
                Kind::Cross => &mut dmaps.cross[js],
            };
            match slot {
                Some(acc) => axpy(step, acc, &a.grad, 1.0)?,
                None => *slot = Some(a.grad),
            }
            weights.push(PairWeights {
                kind,
                student_layer: js,
                teacher_layer: jt,
                weights: a.weights,
            });
        }
    }
    student.backward(step, &sf, &dlogits, &dmaps, None, grads)?;
    Ok(StepOut { terms, weights })
}

/// One distillation step: gradients, then clipping and AdamW on the student.
pub fn distill_step(
    step: &mut Step,
    teacher: &Model,
    student: &Model,
    opt: &mut Optimizer,
    batch: &Batch,
    cfg: &DistillConfig,
) -> Result<StepOut> {
    let out = distill_grads(step, teacher, student, &opt.grads, batch, cfg)?;
    opt.update(step, &student.weights)?;
    Ok(out)
}
