//! Launchers for `shaders/loss.wgsl`: cross-entropy with an ignore index, and the KL divergence
//! between temperature-softened teacher and student logits. Each loss is the mean over counted
//! rows; the forward also returns [sum, count], which its backward reads (no readback needed).

use super::reduce::{sum_segments, SumInto};
use super::u32_of;
use crate::error::{shape_err, Result};
use crate::gpu::{Access::Read as R, Access::ReadWrite as W, DType, Kernel, Step, Tensor};

pub const CE_FWD: Kernel = Kernel::new("loss", "cross_entropy_fwd", &[R, R, W]);
pub const CE_BWD: Kernel = Kernel::new("loss", "cross_entropy_bwd", &[R, R, R, W]);
pub const KL_FWD: Kernel = Kernel::new("loss", "kl_fwd", &[R, R, R, W]);
pub const KL_BWD: Kernel = Kernel::new("loss", "kl_bwd", &[R, R, R, R, W]);
pub const MEAN: Kernel = Kernel::new("loss", "loss_mean", &[R, W]);

/// Target id that marks a position as not counted (padding).
pub const IGNORE: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    vocab: u32,
    ignore: u32,
    _pad: u32,
    inv_t: f32,
    grad: f32,
    _pad1: [u32; 2],
}

fn params(
    op: &'static str,
    logits: &Tensor,
    targets: &Tensor,
    inv_t: f32,
    grad: f32,
) -> Result<Params> {
    let s = logits.shape();
    if s.len() != 2 {
        return shape_err(op, format!("logits must be [rows, vocab], got {s:?}"));
    }
    if targets.dtype() != DType::U32 || targets.numel() != s[0] {
        return shape_err(
            op,
            format!(
                "targets must be u32 [{}], got {:?} {:?}",
                s[0],
                targets.dtype(),
                targets.shape()
            ),
        );
    }
    Ok(Params {
        rows: u32_of(op, "rows", s[0])?,
        vocab: u32_of(op, "vocab", s[1])?,
        ignore: IGNORE,
        _pad: 0,
        inv_t,
        grad,
        _pad1: [0; 2],
    })
}

/// Mean loss and [sum, count] from per-row values [2, rows].
fn finish(step: &mut Step, rowvals: &Tensor) -> Result<(Tensor, Tensor)> {
    let totals = step.empty(&[2])?;
    sum_segments(step, rowvals, 2, SumInto::new(&totals))?;
    let loss = step.empty(&[1])?;
    step.dispatch(
        &MEAN,
        &<Params as bytemuck::Zeroable>::zeroed(),
        &[&totals, &loss],
        (1, 1, 1),
    )?;
    Ok((loss, totals))
}

/// Mean cross-entropy of logits [N, V] against targets [N] (u32; [`IGNORE`] rows not counted).
/// Returns (loss [1], totals [2] = [sum, count]).
pub fn cross_entropy(
    step: &mut Step,
    logits: &Tensor,
    targets: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let p = params("cross_entropy", logits, targets, 1.0, 0.0)?;
    let rowvals = step.empty(&[2, p.rows as usize])?;
    step.dispatch_linear(&CE_FWD, &p, &[logits, targets, &rowvals], p.rows as u64)?;
    finish(step, &rowvals)
}

/// d loss / d logits, scaled by `grad` (the upstream gradient, e.g. the loss weight).
pub fn cross_entropy_bwd(
    step: &mut Step,
    logits: &Tensor,
    targets: &Tensor,
    totals: &Tensor,
    grad: f32,
) -> Result<Tensor> {
    let p = params("cross_entropy_bwd", logits, targets, 1.0, grad)?;
    let d = step.empty(logits.shape())?;
    step.dispatch_linear(&CE_BWD, &p, &[logits, targets, totals, &d], p.rows as u64)?;
    Ok(d)
}

/// Mean over counted rows of KL(softmax(teacher/T) ‖ softmax(student/T)). Rows whose target is
/// [`IGNORE`] are not counted. Returns (loss [1], totals [2]). The T² factor is the caller's.
pub fn kl_div(
    step: &mut Step,
    teacher: &Tensor,
    student: &Tensor,
    targets: &Tensor,
    temperature: f32,
) -> Result<(Tensor, Tensor)> {
    if teacher.shape() != student.shape() {
        return shape_err(
            "kl_div",
            format!(
                "teacher {:?} and student {:?} logits differ",
                teacher.shape(),
                student.shape()
            ),
        );
    }
    if temperature.is_nan() || temperature <= 0.0 {
        return shape_err(
            "kl_div",
            format!("temperature must be positive, got {temperature}"),
        );
    }
    let p = params("kl_div", student, targets, 1.0 / temperature, 0.0)?;
    let rowvals = step.empty(&[2, p.rows as usize])?;
    step.dispatch_linear(
        &KL_FWD,
        &p,
        &[student, targets, teacher, &rowvals],
        p.rows as u64,
    )?;
    finish(step, &rowvals)
}

/// d KL / d student logits, scaled by `grad`.
pub fn kl_div_bwd(
    step: &mut Step,
    teacher: &Tensor,
    student: &Tensor,
    targets: &Tensor,
    totals: &Tensor,
    temperature: f32,
    grad: f32,
) -> Result<Tensor> {
    let p = params("kl_div_bwd", student, targets, 1.0 / temperature, grad)?;
    let d = step.empty(student.shape())?;
    step.dispatch_linear(
        &KL_BWD,
        &p,
        &[student, targets, teacher, totals, &d],
        p.rows as u64,
    )?;
    Ok(d)
}
