//! Launchers for `shaders/layernorm.wgsl`.

use super::reduce::{sum_rows_into, COLUMN_CHUNK};
use super::{groups, u32_of};
use crate::error::{shape_err, Result};
use crate::gpu::{Access::Read as R, Access::ReadWrite as W, Kernel, Step, Tensor};

pub const FWD: Kernel = Kernel::new("layernorm", "layernorm_fwd", &[R, R, R, W, W]);
pub const BWD_X: Kernel = Kernel::new("layernorm", "layernorm_bwd_x", &[R, R, R, R, W]);
pub const BWD_PARAMS: Kernel = Kernel::new("layernorm", "layernorm_bwd_params", &[R, W, R, R, W]);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default)]
struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    chunk: u32,
}

fn dims(x: &Tensor, gamma: &Tensor) -> Result<(usize, usize)> {
    let cols = *x.shape().last().unwrap_or(&0);
    if gamma.numel() != cols {
        return shape_err(
            "layernorm",
            format!(
                "gamma has {} elements, rows of x {:?} are {cols} wide",
                gamma.numel(),
                x.shape()
            ),
        );
    }
    Ok((x.numel() / cols, cols))
}

/// y = LayerNorm(x) over the last dimension. Returns y and the per-row (mean, rstd) the backward
/// needs, as [rows, 2].
pub fn layernorm(
    step: &mut Step,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    let (rows, cols) = dims(x, gamma)?;
    if beta.numel() != cols {
        return shape_err(
            "layernorm",
            format!("beta has {} elements, expected {cols}", beta.numel()),
        );
    }
    let y = step.empty(x.shape())?;
    let stats = step.empty(&[rows, 2])?;
    let p = Params {
        rows: u32_of("layernorm", "rows", rows)?,
        cols: cols as u32,
        eps,
        ..Default::default()
    };
    step.dispatch_linear(&FWD, &p, &[x, gamma, beta, &y, &stats], groups(rows, 256))?;
    Ok((y, stats))
}

/// Backward of [`layernorm`]: returns dx and adds the parameter gradients into dgamma, dbeta.
pub fn layernorm_bwd(
    step: &mut Step,
    x: &Tensor,
    gamma: &Tensor,
    stats: &Tensor,
    dy: &Tensor,
    dgamma: &Tensor,
    dbeta: &Tensor,
) -> Result<Tensor> {
    let (rows, cols) = dims(x, gamma)?;
    if dy.shape() != x.shape()
        || stats.numel() != rows * 2
        || dgamma.numel() != cols
        || dbeta.numel() != cols
    {
        return shape_err(
            "layernorm_bwd",
            format!(
                "x {:?}, dy {:?}, stats {:?}, dgamma {:?}, dbeta {:?} do not agree",
                x.shape(),
                dy.shape(),
                stats.shape(),
                dgamma.shape(),
                dbeta.shape()
            ),
        );
    }
    let dx = step.empty(x.shape())?;
    let p = Params {
        rows: u32_of("layernorm_bwd", "rows", rows)?,
        cols: cols as u32,
        chunk: COLUMN_CHUNK as u32,
        ..Default::default()
    };
    step.dispatch_linear(&BWD_X, &p, &[x, gamma, dy, stats, &dx], groups(rows, 256))?;
    // The parameter gradients are column sums: partial sums over chunks of rows (for a GPU's
    // parallelism, see COLUMN_CHUNK), which sum_rows_into adds into dgamma and dbeta.
    let chunks = rows.div_ceil(COLUMN_CHUNK);
    let (pg, pb) = (step.empty(&[chunks, cols])?, step.empty(&[chunks, cols])?);
    step.dispatch_linear(
        &BWD_PARAMS,
        &p,
        &[x, &pg, dy, stats, &pb],
        groups(chunks * cols, 256),
    )?;
    sum_rows_into(step, &pg, chunks, cols, cols, dgamma, 0, true)?;
    sum_rows_into(step, &pb, chunks, cols, cols, dbeta, 0, true)?;
    Ok(dx)
}
