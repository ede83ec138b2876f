//! Launcher for `shaders/amad.wgsl`: the attention-distillation losses with their gradients.

use super::reduce::sum_segments;
use super::{groups, u32_of};
use crate::error::{shape_err, Result};
use crate::gpu::{Access::Read as R, Access::ReadWrite as W, Kernel, Step, Tensor};
pub use crate::reference::amad::Variant;

pub const ALIGN: Kernel = Kernel::new("amad", "amad_align", &[R, R, R, W, W, W]);
pub const ONE_TO_ONE: Kernel = Kernel::new("amad", "one_to_one", &[R, R, R, W, W, W]);

/// Heads per map the kernel supports (its per-example statistics live in registers).
pub const MAX_HEADS: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    ht: u32,
    hs: u32,
    q: u32,
    k: u32,
    flags: u32,
    inv_tau: f32,
    grad_scale: f32,
}

/// How to align: the loss, the temperature of the alignment softmax, and whether gradients flow
/// through the alignment weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    pub variant: Variant,
    pub tau: f32,
    pub detach_weights: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            variant: Variant::Kl,
            tau: 1.0,
            detach_weights: false,
        }
    }
}

/// The result: loss [1] (summed over teacher heads, mean over the batch), the gradient of
/// `upstream · loss` w.r.t. the student maps [B, Hs, q, k], and the alignment weights [B, Ht, Hs].
pub struct Alignment {
    pub loss: Tensor,
    pub grad: Tensor,
    pub weights: Tensor,
}

/// Aligns student maps [B, Hs, q, k] to teacher maps [B, Ht, q, k] (rows already softmaxed;
/// `mask` [B, q, k] marks valid cells with 1).
pub fn align(
    step: &mut Step,
    teacher: &Tensor,
    student: &Tensor,
    mask: Option<&Tensor>,
    opts: Options,
    upstream: f32,
) -> Result<Alignment> {
    const OP: &str = "align";
    let (st, ss) = (teacher.shape(), student.shape());
    if st.len() != 4 || ss.len() != 4 || st[0] != ss[0] || st[2..] != ss[2..] {
        return shape_err(
            OP,
            format!("need teacher [B, Ht, q, k] and student [B, Hs, q, k], got {st:?} and {ss:?}"),
        );
    }
    let (b, ht, hs, q, k) = (st[0], st[1], ss[1], st[2], st[3]);
    if ht > MAX_HEADS || hs > MAX_HEADS {
        return shape_err(
            OP,
            format!("{ht} teacher and {hs} student heads; at most {MAX_HEADS} each are supported"),
        );
    }
    if let Some(m) = mask {
        if m.shape() != [b, q, k] {
            return shape_err(
                OP,
                format!(
                    "mask must be [B, q, k] = [{b}, {q}, {k}], got {:?}",
                    m.shape()
                ),
            );
        }
    }
    if !(opts.tau > 0.0 && opts.tau.is_finite()) {
        return shape_err(
            OP,
            format!("tau must be positive and finite, got {}", opts.tau),
        );
    }
    let (kernel, mode) = match opts.variant {
        Variant::Mse => (&ALIGN, 1),
        Variant::Kl => (&ALIGN, 0),
        Variant::TokenKl => (&ALIGN, 2),
        Variant::OneToOneMse => (&ONE_TO_ONE, 1),
        Variant::OneToOneKl => (&ONE_TO_ONE, 0),
    };
    let p = Params {
        batch: u32_of(OP, "batch", b)?,
        ht: ht as u32,
        hs: hs as u32,
        q: u32_of(OP, "q", q)?,
        k: u32_of(OP, "k", k)?,
        flags: mode | (opts.detach_weights as u32) << 2 | (mask.is_some() as u32) << 3,
        inv_tau: 1.0 / opts.tau,
        grad_scale: upstream / b as f32,
    };
    let per_example = step.empty(&[b])?;
    let grad = step.empty(ss)?;
    let weights = step.empty(&[b, ht, hs])?;
    let mask = mask.unwrap_or(teacher);
    step.dispatch_linear(
        kernel,
        &p,
        &[teacher, student, mask, &per_example, &grad, &weights],
        groups(b, 64),
    )?;
    let loss = step.empty(&[1])?;
    sum_segments(
        step,
        &per_example,
        1,
        1.0 / b as f32,
        false,
        &loss,
        0,
        false,
    )?;
    Ok(Alignment {
        loss,
        grad,
        weights,
    })
}
