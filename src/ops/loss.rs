//! Launchers for `shaders/loss.wgsl`: cross-entropy with an ignore index, and the KL divergence
//! between temperature-softened teacher and student logits. Each loss is the mean over counted
//! rows; the forward also returns [sum, count], which its backward reads (no readback needed).

use super::reduce::{sum_segments, SumInto};
use super::{groups, u32_of};
use crate::error::{shape_err, Result};
use crate::gpu::{Access::Read as R, Access::ReadWrite as W, DType, Kernel, Step, Tensor};

pub const CE_FWD: Kernel = Kernel::new("loss", "cross_entropy_fwd", &[R, R, W, W]);
pub const CE_BWD: Kernel = Kernel::new("loss", "cross_entropy_bwd", &[R, R, R, W]);
pub const KL_FWD: Kernel = Kernel::new("loss", "kl_fwd", &[R, R, R, W, W]);
pub const KL_BWD: Kernel = Kernel::new("loss", "kl_bwd", &[R, R, R, R, W]);
pub const MEAN: Kernel = Kernel::new("loss", "loss_mean", &[R, W]);
/// The same four, one invocation per row (see the shader), for vocabularies up to
/// ROW_KERNEL_MAX_VOCAB.
pub const CE_FWD_ROWS: Kernel = Kernel::new("loss", "cross_entropy_fwd_rows", &[R, R, W, W]);
pub const CE_BWD_ROWS: Kernel = Kernel::new("loss", "cross_entropy_bwd_rows", &[R, R, R, W]);
pub const KL_FWD_ROWS: Kernel = Kernel::new("loss", "kl_fwd_rows", &[R, R, R, W, W]);
pub const KL_BWD_ROWS: Kernel = Kernel::new("loss", "kl_bwd_rows", &[R, R, R, R, W]);

/// The largest vocabulary the one-invocation-per-row kernels take: at most five passes over a
/// row (KL: the teacher's and the student's maximum and sum, then the divergence) stay far under
/// lavapipe's 65,535 loop iterations per invocation, and a workgroup per row pays for its
/// barriers only on long rows.
const ROW_KERNEL_MAX_VOCAB: u32 = 4096;

/// Dispatches `wide` (a workgroup per row) or `rows` (an invocation per row) as the vocabulary
/// of `p` says.
fn dispatch_by_vocab(
    step: &mut Step,
    (wide, rows): (&'static Kernel, &'static Kernel),
    p: &Params,
    tensors: &[&Tensor],
) -> Result<()> {
    if p.vocab <= ROW_KERNEL_MAX_VOCAB {
        step.dispatch_linear(rows, p, tensors, groups(p.rows as usize, 256))
    } else {
        step.dispatch_linear(wide, p, tensors, p.rows as u64)
    }
}

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

/// Checks that `saved` is what the forward returned for these rows (`len` values).
fn saved_for(op: &'static str, saved: &Tensor, len: usize) -> Result<()> {
    if saved.shape() != [len] {
        return shape_err(
            op,
            format!(
                "expects the forward's saved values [{len}] for these rows, got {:?}",
                saved.shape()
            ),
        );
    }
    Ok(())
}

/// The mean loss, with [sum, count] summed from per-row values [2, rows] into the first two
/// elements of `saved` (whose other elements the forward filled for the backward).
fn finish(step: &mut Step, rowvals: &Tensor, saved: Tensor) -> Result<(Tensor, Tensor)> {
    sum_segments(step, rowvals, 2, SumInto::new(&saved))?;
    let loss = step.empty(&[1])?;
    step.dispatch(
        &MEAN,
        &<Params as bytemuck::Zeroable>::zeroed(),
        &[&saved, &loss],
        (1, 1, 1),
    )?;
    Ok((loss, saved))
}

/// Mean cross-entropy of logits [N, V] against targets [N] (u32; [`IGNORE`] rows not counted).
/// Returns (loss [1], saved [2 + N]): [sum, count], then each counted row's log-sum-exp, which
/// the backward reads.
pub fn cross_entropy(
    step: &mut Step,
    logits: &Tensor,
    targets: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let p = params("cross_entropy", logits, targets, 1.0, 0.0)?;
    let rowvals = step.empty(&[2, p.rows as usize])?;
    let saved = step.empty(&[2 + p.rows as usize])?;
    dispatch_by_vocab(
        step,
        (&CE_FWD, &CE_FWD_ROWS),
        &p,
        &[logits, targets, &rowvals, &saved],
    )?;
    finish(step, &rowvals, saved)
}

/// d loss / d logits, scaled by `grad` (the upstream gradient, e.g. the loss weight); `saved` is
/// what [`cross_entropy`] returned with the loss.
pub fn cross_entropy_bwd(
    step: &mut Step,
    logits: &Tensor,
    targets: &Tensor,
    saved: &Tensor,
    grad: f32,
) -> Result<Tensor> {
    let p = params("cross_entropy_bwd", logits, targets, 1.0, grad)?;
    saved_for("cross_entropy_bwd", saved, 2 + p.rows as usize)?;
    let d = step.empty(logits.shape())?;
    dispatch_by_vocab(
        step,
        (&CE_BWD, &CE_BWD_ROWS),
        &p,
        &[logits, targets, saved, &d],
    )?;
    Ok(d)
}

/// Mean over counted rows of KL(softmax(teacher/T) ‖ softmax(student/T)). Rows whose target is
/// [`IGNORE`] are not counted. Returns (loss [1], saved [2 + 2N]: [sum, count], then the teacher's
/// and the student's log-sum-exp of each counted row, which the backward reads). The T² factor
/// is the caller's.
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
    let saved = step.empty(&[2 + 2 * p.rows as usize])?;
    let tensors = [student, targets, teacher, &rowvals, &saved];
    dispatch_by_vocab(step, (&KL_FWD, &KL_FWD_ROWS), &p, &tensors)?;
    finish(step, &rowvals, saved)
}

/// d KL / d student logits, scaled by `grad`; `saved` is what [`kl_div`] returned with the loss.
pub fn kl_div_bwd(
    step: &mut Step,
    teacher: &Tensor,
    student: &Tensor,
    targets: &Tensor,
    saved: &Tensor,
    temperature: f32,
    grad: f32,
) -> Result<Tensor> {
    let p = params("kl_div_bwd", student, targets, 1.0 / temperature, grad)?;
    saved_for("kl_div_bwd", saved, 2 + 2 * p.rows as usize)?;
    let d = step.empty(student.shape())?;
    let tensors = [student, targets, teacher, saved, &d];
    dispatch_by_vocab(step, (&KL_BWD, &KL_BWD_ROWS), &p, &tensors)?;
    Ok(d)
}
