//! Launchers for `shaders/reduce.wgsl`: sum and mean (with their backward), column sums.

use super::{groups, u32_of};
use crate::error::{shape_err, Result};
use crate::gpu::{Access::Read as R, Access::ReadWrite as W, Kernel, Step, Tensor};

pub const SUM_SEGMENTS: Kernel = Kernel::new("reduce", "sum_segments", &[R, W]);
pub const SUM_COLUMNS: Kernel = Kernel::new("reduce", "sum_columns", &[R, W]);
pub const BROADCAST_SCALAR: Kernel = Kernel::new("reduce", "broadcast_scalar", &[R, W]);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default)]
struct Params {
    segments: u32,
    len: u32,
    cols: u32,
    flags: u32,
    scale: f32,
    out_off: u32,
    _pad: [u32; 2],
}

/// Sums `segments` contiguous runs of `x` into out[out_off ..]: scaled, optionally of squares,
/// optionally accumulated.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sum_segments(
    step: &mut Step,
    x: &Tensor,
    segments: usize,
    scale: f32,
    squares: bool,
    out: &Tensor,
    out_off: usize,
    accumulate: bool,
) -> Result<()> {
    if segments == 0 || !x.numel().is_multiple_of(segments) || out_off + segments > out.numel() {
        return shape_err(
            "sum",
            format!(
                "cannot sum {:?} in {segments} segments into {:?} at {out_off}",
                x.shape(),
                out.shape()
            ),
        );
    }
    let p = Params {
        segments: u32_of("sum", "segments", segments)?,
        len: u32_of("sum", "length", x.numel() / segments)?,
        flags: squares as u32 | (accumulate as u32) << 1,
        scale,
        out_off: out_off as u32,
        ..Default::default()
    };
    step.dispatch_linear(&SUM_SEGMENTS, &p, &[x, out], segments as u64)
}

/// The sum of all elements, as a [1] tensor.
pub fn sum(step: &mut Step, x: &Tensor) -> Result<Tensor> {
    let out = step.empty(&[1])?;
    sum_segments(step, x, 1, 1.0, false, &out, 0, false)?;
    Ok(out)
}

/// The mean of all elements, as a [1] tensor.
pub fn mean(step: &mut Step, x: &Tensor) -> Result<Tensor> {
    let out = step.empty(&[1])?;
    sum_segments(step, x, 1, 1.0 / x.numel() as f32, false, &out, 0, false)?;
    Ok(out)
}

/// Backward of [`sum`] (scale 1) or [`mean`] (scale 1/n): every element gets scale · g[0].
pub fn broadcast_scalar(
    step: &mut Step,
    g: &Tensor,
    shape: &[usize],
    scale: f32,
) -> Result<Tensor> {
    if g.numel() != 1 {
        return shape_err(
            "broadcast_scalar",
            format!(
                "the upstream gradient must be a scalar, got {:?}",
                g.shape()
            ),
        );
    }
    let out = step.empty(shape)?;
    let p = Params {
        len: u32_of("broadcast", "elements", out.numel())?,
        scale,
        ..Default::default()
    };
    step.dispatch_linear(&BROADCAST_SCALAR, &p, &[g, &out], groups(out.numel(), 256))?;
    Ok(out)
}

/// out[c] += Σ_r x[r, c] over all leading dimensions, for the first out.numel() columns: the
/// gradient of a broadcast bias (all columns) or of a vector added to the first columns only.
pub fn sum_columns(step: &mut Step, x: &Tensor, out: &Tensor) -> Result<()> {
    let cols = *x.shape().last().unwrap_or(&0);
    if out.numel() > cols {
        return shape_err(
            "sum_columns",
            format!(
                "out has {} elements, x {:?} only {cols} columns",
                out.numel(),
                x.shape()
            ),
        );
    }
    let p = Params {
        segments: out.numel() as u32,
        len: u32_of("sum_columns", "rows", x.numel() / cols)?,
        cols: cols as u32,
        scale: 1.0,
        ..Default::default()
    };
    step.dispatch_linear(&SUM_COLUMNS, &p, &[x, out], groups(out.numel(), 256))
}
