//! `amad train-teacher --shape-loss W`: an auxiliary loss for training a captioner from scratch.
//!
//! Why: trained on captions alone, the teacher learns colours, sizes and counts long before
//! shapes (its commonest error is a wrong shape word), because the caption loss reaches the
//! encoder's shape features only through one word per object. A linear head on the encoder's
//! patch states, trained to name the shape that covers each patch (or none), gives the encoder a
//! dense and direct signal. Its cross-entropy, times W, joins the caption loss, and its gradient
//! enters the encoder's backward beside the decoder's (`Model::backward`).
//!
//! With `--shape-cells Q` the head labels each patch's Q × Q sub-cells, Q² times as many outputs:
//! finer targets that ask the encoder where in its patch an outline runs, not only which shape
//! covers most of it. Q = 2, the default, took the teacher's test truth from 0.790 (whole patches)
//! to 0.900 at the same cost per step, both trained for 4,000 steps (docs/teacher.md).
//!
//! The head exists only while training: checkpoints hold the captioner alone, in the Hugging Face
//! layout. The head and its AdamW moments are saved in the optimiser state beside it
//! (`shape_head.*`), so a resumed run goes on exactly where it stopped.

use crate::data::scenes::{Scene, SHAPES, SIZE};
use crate::distill::maps_file::f32_tensor;
use crate::error::{shape_err, Error, Result};
use crate::gpu::{Gpu, Step, Tensor};
use crate::model::config::Vit;
use crate::model::linear::{linear, linear_bwd, Dx, Grad, Layout};
use crate::model::weights::Named;
use crate::ops::loss::{cross_entropy, cross_entropy_bwd, IGNORE};
use crate::ops::optim::{adamw, clip_grad_norm, AdamW, Slot};
use crate::ops::reduce::add_sum_into;
use crate::rng::Rng;
use safetensors::SafeTensors;

/// The head's classes: the shapes, then "none".
pub const CLASSES: usize = SHAPES.len() + 1;

/// The head's tensors in the optimiser state are named PREFIX + NAMES.
pub const PREFIX: &str = "shape_head.";

/// The head's tensors, in the order of `ShapeLoss::tensors`.
const NAMES: [&str; 6] = ["weight", "bias", "m.weight", "m.bias", "v.weight", "v.bias"];

/// What `--shape-loss W --shape-cells Q` asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShapeTargets {
    /// The loss's weight beside the caption loss (W).
    pub weight: f32,
    /// Sub-cells per side of each patch (Q, dividing the patch size; 1: one label per patch).
    pub cells: usize,
}

/// The per-patch shape head: weight [hidden, CLASSES·Q²] and bias [CLASSES·Q²], with their
/// gradients and AdamW moments.
pub struct ShapeLoss {
    /// The loss's weight beside the caption loss (W).
    pub weight: f32,
    /// Patches per side of the encoder's grid.
    grid: usize,
    /// Sub-cells per side of a patch (Q).
    cells: usize,
    params: [Tensor; 2],
    grads: [Tensor; 2],
    m: [Tensor; 2],
    v: [Tensor; 2],
}

impl ShapeLoss {
    /// A fresh head over the states of encoder `e` (weights drawn with std 0.02 from `seed`).
    /// Its patches must tile the scenes' SIZE × SIZE pixels one to one, since the labels are
    /// per scene cell.
    pub fn new(gpu: &Gpu, e: &Vit, targets: ShapeTargets, seed: u64) -> Result<ShapeLoss> {
        let ShapeTargets { weight, cells } = targets;
        if !(weight.is_finite() && weight > 0.0) {
            return Err(Error::Invalid(format!(
                "--shape-loss: the weight must be positive, got {weight}"
            )));
        }
        if e.image_size != SIZE {
            return Err(Error::Invalid(format!(
                "--shape-loss needs a model of {SIZE}×{SIZE} images, the scenes' size; this one takes {}×{}",
                e.image_size, e.image_size
            )));
        }
        if cells == 0 || !e.patch_size.is_multiple_of(cells) {
            return Err(Error::Invalid(format!(
                "--shape-cells must divide the patch size, {}, got {cells}",
                e.patch_size
            )));
        }
        let hidden = e.hidden_size;
        let outputs = CLASSES * cells * cells;
        let mut rng = Rng::new(seed ^ 0x5ba9e);
        let w: Vec<f32> = (0..hidden * outputs)
            .map(|_| 0.02 * rng.normal() as f32)
            .collect();
        let zeros =
            |shape: &[usize]| Tensor::from_slice(gpu, shape, &vec![0.0; shape.iter().product()]);
        let pair =
            || -> Result<[Tensor; 2]> { Ok([zeros(&[hidden, outputs])?, zeros(&[outputs])?]) };
        Ok(ShapeLoss {
            weight,
            grid: SIZE / e.patch_size,
            cells,
            params: [
                Tensor::from_slice(gpu, &[hidden, outputs], &w)?,
                zeros(&[outputs])?,
            ],
            grads: pair()?,
            m: pair()?,
            v: pair()?,
        })
    }

    /// Labels [B·(1 + grid²)·Q²] for a batch of scenes, token by token, Q² per token: IGNORE at
    /// the CLS token, then for each patch the classes of its sub-cells, row by row
    /// (`Scene::cell_shapes` of the grid·Q division).
    pub fn labels(&self, scenes: &[Scene]) -> Vec<u32> {
        let (q, fine) = (self.cells, self.grid * self.cells);
        let mut out = vec![];
        for s in scenes {
            let cells = s.cell_shapes(fine);
            out.extend(std::iter::repeat_n(IGNORE, q * q));
            for py in 0..self.grid {
                for px in 0..self.grid {
                    for sy in 0..q {
                        let row = (py * q + sy) * fine + px * q;
                        out.extend_from_slice(&cells[row..row + q]);
                    }
                }
            }
        }
        out
    }

    /// The loss terms of a step [ce, shape, ce + weight · shape] from the two losses [1].
    pub fn terms(&self, step: &mut Step, ce: &Tensor, shape: &Tensor) -> Result<Tensor> {
        let terms = step.zeros(&[3])?;
        for (x, slot, scale) in [
            (ce, 0, 1.0),
            (shape, 1, 1.0),
            (ce, 2, 1.0),
            (shape, 2, self.weight),
        ] {
            add_sum_into(step, x, scale, &terms, slot)?;
        }
        Ok(terms)
    }

    /// Records the loss on encoder states [B, T, hidden] against `labels` [B·T·Q²] (u32): zeroes
    /// the head's gradients, then adds into them. Returns the loss [1] (unweighted: the mean over
    /// labelled sub-cells) and its gradient, times the weight, with respect to the states.
    pub fn record(
        &self,
        step: &mut Step,
        states: &Tensor,
        labels: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let s = states.shape();
        let hidden = self.params[0].shape()[0];
        let per_token = self.cells * self.cells;
        if s.len() != 3 || s[2] != hidden || labels.numel() != s[0] * s[1] * per_token {
            return shape_err(
                "shape_loss",
                format!(
                    "states {s:?} and {} labels do not fit a head over {hidden} features",
                    labels.numel()
                ),
            );
        }
        for g in &self.grads {
            step.clear(g);
        }
        let rows = states.reshape(&[s[0] * s[1], hidden])?;
        // One row of CLASSES logits per sub-cell: a token's Q² rows lie side by side.
        let logits = self
            .logits(step, &rows)?
            .reshape(&[labels.numel(), CLASSES])?;
        let (loss, totals) = cross_entropy(step, &logits, labels)?;
        let dlogits = cross_entropy_bwd(step, &logits, labels, &totals, self.weight)?
            .reshape(&[s[0] * s[1], CLASSES * per_token])?;
        let head = Grad {
            w: &self.params[0],
            layout: Layout::InOut,
            dw: &self.grads[0],
            db: Some(&self.grads[1]),
        };
        let drows = linear_bwd(step, &rows, head, &dlogits, Dx::New)?;
        Ok((loss, drows.reshape(s)?))
    }

    /// The head's logits [rows, CLASSES·Q²] for state rows [rows, hidden].
    pub fn logits(&self, step: &mut Step, rows: &Tensor) -> Result<Tensor> {
        linear(
            step,
            rows,
            &self.params[0],
            Some(&self.params[1]),
            Layout::InOut,
        )
    }

    /// One AdamW update of the head (step `t`, 1-based), unclipped.
    pub fn update(&self, step: &mut Step, cfg: &AdamW, t: u32) -> Result<()> {
        let clip = clip_grad_norm(step, &[&self.grads[0], &self.grads[1]], f32::INFINITY)?;
        let slots: Vec<Slot> = (0..2)
            .map(|i| Slot {
                param: &self.params[i],
                grad: &self.grads[i],
                m: &self.m[i],
                v: &self.v[i],
            })
            .collect();
        adamw(step, &slots, cfg, t, &clip)
    }

    /// The tensors saved, in the order of NAMES.
    fn tensors(&self) -> [&Tensor; 6] {
        [
            &self.params[0],
            &self.params[1],
            &self.m[0],
            &self.m[1],
            &self.v[0],
            &self.v[1],
        ]
    }

    /// The head and its moments read back, named PREFIX + NAMES, for the optimiser state.
    pub async fn named_values(&self, gpu: &Gpu) -> Result<Vec<Named>> {
        let mut out = vec![];
        for (name, t) in NAMES.iter().zip(self.tensors()) {
            out.push((
                format!("{PREFIX}{name}"),
                t.shape().to_vec(),
                t.read(gpu).await?,
            ));
        }
        Ok(out)
    }

    /// Restores the head and its moments from an optimiser state (`source` names it in errors).
    pub fn restore(&mut self, gpu: &Gpu, st: &SafeTensors, source: &str) -> Result<()> {
        let mut read = vec![];
        for (name, t) in NAMES.iter().zip(self.tensors()) {
            let name = format!("{PREFIX}{name}");
            let got = f32_tensor(gpu, st, source, &name, t.shape().len())?
                .ok_or_else(|| Error::Invalid(format!("{source}: no tensor {name}")))?;
            if got.shape() != t.shape() {
                return Err(Error::Invalid(format!(
                    "{source}: {name} has shape {:?}, but this run's shape head needs {:?}; resume with the --shape-cells the run was started with",
                    got.shape(),
                    t.shape()
                )));
            }
            read.push(got);
        }
        let mut read = read.into_iter();
        let mut next = || read.next().expect("six tensors");
        self.params = [next(), next()];
        self.m = [next(), next()];
        self.v = [next(), next()];
        Ok(())
    }
}
