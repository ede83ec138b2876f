//! Launchers for `shaders/optim.wgsl`: global gradient-norm clipping and AdamW.

use super::reduce::{sum_segments, Dest, SumInto};
use super::{groups, u32_of};
use crate::error::{shape_err, Result};
use crate::gpu::{Access::Read as R, Access::ReadWrite as W, Kernel, Step, Tensor};

pub const ADAMW: Kernel = Kernel::new("optim", "adamw", &[R, R, W, W, W]);
pub const ADAMW_VEC4: Kernel = Kernel::new("optim", "adamw_vec4", &[R, R, W, W, W]);
pub const CLIP_SCALE: Kernel = Kernel::new("optim", "clip_scale", &[R, W]);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default)]
struct Params {
    n: u32,
    first: u32,
    _pad: [u32; 2],
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    c1: f32,
    c2: f32,
    max_norm: f32,
}

/// AdamW hyper-parameters (torch.optim.AdamW's defaults but for the learning rate).
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// One parameter with its gradient and moment buffers (all the same shape).
pub struct Slot<'a> {
    pub param: &'a Tensor,
    pub grad: &'a Tensor,
    pub m: &'a Tensor,
    pub v: &'a Tensor,
}

/// Gradients are summed in segments of this many elements where their length allows (the blocks
/// of a model's gradients always do: see `model::Weights`), so a GPU runs a workgroup per segment
/// rather than one per tensor.
pub const NORM_SEGMENT: usize = 4096;

/// The global L2 norm of all gradients and the factor that clips it to `max_norm`:
/// returns [norm, scale] on the GPU (scale = 1 when the norm is already within bounds; pass
/// `f32::INFINITY` to measure without clipping).
pub fn clip_grad_norm(step: &mut Step, grads: &[&Tensor], max_norm: f32) -> Result<Tensor> {
    if grads.is_empty() {
        return shape_err("clip_grad_norm", "no gradients");
    }
    let segments: Vec<usize> = grads
        .iter()
        .map(|g| match g.numel() % NORM_SEGMENT {
            0 => g.numel() / NORM_SEGMENT,
            _ => 1,
        })
        .collect();
    let total: usize = segments.iter().sum();
    let sumsq = step.empty(&[total])?;
    let mut at = 0;
    for (g, &n) in grads.iter().zip(&segments) {
        let squares = SumInto {
            to: Dest {
                at,
                ..Dest::new(&sumsq)
            },
            scale: 1.0,
            squares: true,
        };
        sum_segments(step, g, n, squares)?;
        at += n;
    }
    let out = step.empty(&[2])?;
    let p = Params {
        n: u32_of("clip_grad_norm", "segments", total)?,
        max_norm,
        ..Default::default()
    };
    step.dispatch(&CLIP_SCALE, &p, &[&sumsq, &out], (1, 1, 1))?;
    Ok(out)
}

/// One AdamW update at step `t` (1-based) of every slot, gradients scaled by `clip[1]`
/// (from [`clip_grad_norm`]).
pub fn adamw(step: &mut Step, slots: &[Slot], cfg: &AdamW, t: u32, clip: &Tensor) -> Result<()> {
    if t == 0 {
        return shape_err("adamw", "the step count t is 1-based");
    }
    if clip.numel() != 2 {
        return shape_err(
            "adamw",
            format!("clip must be [norm, scale], got {:?}", clip.shape()),
        );
    }
    for s in slots {
        let shape = s.param.shape();
        if s.grad.shape() != shape || s.m.shape() != shape || s.v.shape() != shape {
            return shape_err(
                "adamw",
                format!(
                    "param {shape:?}, grad {:?}, m {:?}, v {:?} differ",
                    s.grad.shape(),
                    s.m.shape(),
                    s.v.shape()
                ),
            );
        }
        let n = s.param.numel();
        let p = Params {
            n: u32_of("adamw", "elements", n)?,
            lr: cfg.lr,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
            c1: 1.0 / (1.0 - cfg.beta1.powi(t as i32)),
            c2: 1.0 / (1.0 - cfg.beta2.powi(t as i32)),
            ..Default::default()
        };
        // Whole vec4s first, then the 0-3 elements left over.
        let tensors = [s.grad, clip, s.param, s.m, s.v];
        if n >= 4 {
            step.dispatch_linear(&ADAMW_VEC4, &p, &tensors, groups(n / 4, 256))?;
        }
        if !n.is_multiple_of(4) {
            let first = n / 4 * 4;
            let tail = Params {
                first: first as u32,
                ..p
            };
            step.dispatch_linear(&ADAMW, &tail, &tensors, groups(n - first, 256))?;
        }
    }
    Ok(())
}
