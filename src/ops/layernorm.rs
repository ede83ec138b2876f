//! Launchers for `shaders/layernorm.wgsl`.

use super::reduce::{sum_rows_into, Dest, COLUMN_CHUNK};
use super::{groups, u32_of};
use crate::error::{shape_err, Result};
use crate::gpu::{Access::Image as I, Access::Read as R, Access::ReadWrite as W};
use crate::gpu::{Image, Kernel, Step, Tensor};
use std::sync::Arc;

pub const FWD: Kernel = Kernel::new("layernorm", "layernorm_fwd", &[R, R, R, W, W]);
/// dx set, or added to the residual's gradient already there (the ACCUMULATE constant, see
/// `Kernel::specialised`): [accumulate].
pub const BWD_X: [Kernel; 2] = super::set_or_add(
    ["layernorm_bwd_x", "layernorm_bwd_x_acc"],
    "layernorm",
    "layernorm_bwd_x",
    &[R, R, R, R, W],
);
pub const BWD_PARAMS: Kernel = Kernel::new("layernorm", "layernorm_bwd_params", &[R, W, R, R, W]);
/// The three with x, gamma and beta or dy read from images (`Gpu::image_operands`).
pub const FWD_IMAGE: Kernel = Kernel::new(
    "layernorm",
    "layernorm_fwd_image",
    &[R, R, R, W, W, I, I, I],
);
pub const BWD_X_IMAGE: [Kernel; 2] = super::set_or_add(
    ["layernorm_bwd_x_image", "layernorm_bwd_x_image_acc"],
    "layernorm",
    "layernorm_bwd_x_image",
    &[R, R, R, R, W, I, I, I],
);
pub const BWD_PARAMS_IMAGE: Kernel = Kernel::new(
    "layernorm",
    "layernorm_bwd_params_image",
    &[R, W, R, R, W, I, I, I],
);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default)]
struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    chunk: u32,
    _pad: [u32; 4],
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

/// Images of x's rows, of gamma and of `third`'s rows (beta, or dy), for the image kernels.
fn images(
    step: &mut Step,
    x: &Tensor,
    gamma: &Tensor,
    third: &Tensor,
) -> Result<Option<[Arc<Image>; 3]>> {
    let images = step.operand_images(&[x, gamma, third], gamma.numel())?;
    Ok(images.and_then(|v| v.try_into().ok()))
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
    let tensors = [x, gamma, beta, &y, &stats];
    match images(step, x, gamma, beta)? {
        Some([a, b, c]) => {
            step.dispatch_linear_images(&FWD_IMAGE, &p, &tensors, &[&a, &b, &c], groups(rows, 256))?
        }
        None => step.dispatch_linear(&FWD, &p, &tensors, groups(rows, 256))?,
    }
    Ok((y, stats))
}

/// Backward of [`layernorm`]: returns dx and adds the parameter gradients into dgamma, dbeta.
/// With `residual` (the gradient reaching x by another path, such as a residual connection), dx
/// is added into it and it is returned.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd(
    step: &mut Step,
    x: &Tensor,
    gamma: &Tensor,
    stats: &Tensor,
    dy: &Tensor,
    dgamma: &Tensor,
    dbeta: &Tensor,
    residual: Option<Tensor>,
) -> Result<Tensor> {
    let (rows, cols) = dims(x, gamma)?;
    if dy.shape() != x.shape()
        || stats.numel() != rows * 2
        || dgamma.numel() != cols
        || dbeta.numel() != cols
        || residual.as_ref().is_some_and(|r| r.shape() != x.shape())
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
    let p = Params {
        rows: u32_of("layernorm_bwd", "rows", rows)?,
        cols: cols as u32,
        chunk: COLUMN_CHUNK as u32,
        ..Default::default()
    };
    let accumulate = residual.is_some() as usize;
    let dx = match residual {
        Some(r) => r,
        None => step.empty(x.shape())?,
    };
    // The parameter gradients are column sums: partial sums over chunks of rows (for a GPU's
    // parallelism, see COLUMN_CHUNK), which sum_rows_into adds into dgamma and dbeta.
    let chunks = rows.div_ceil(COLUMN_CHUNK);
    let (pg, pb) = (step.empty(&[chunks, cols])?, step.empty(&[chunks, cols])?);
    let (bwd_x, bwd_params) = ([x, gamma, dy, stats, &dx], [x, &pg, dy, stats, &pb]);
    match images(step, x, gamma, dy)? {
        Some([a, b, c]) => {
            let im: [&Image; 3] = [&a, &b, &c];
            let kernel = &BWD_X_IMAGE[accumulate];
            step.dispatch_linear_images(kernel, &p, &bwd_x, &im, groups(rows, 256))?;
            let n = groups(chunks * cols / 4, 256);
            step.dispatch_linear_images(&BWD_PARAMS_IMAGE, &p, &bwd_params, &im, n)?;
        }
        None => {
            let kernel = &BWD_X[accumulate];
            step.dispatch_linear(kernel, &p, &bwd_x, groups(rows, 256))?;
            let n = groups(chunks * cols, 256);
            step.dispatch_linear(&BWD_PARAMS, &p, &bwd_params, n)?;
        }
    }
    for (partial, out) in [(&pg, dgamma), (&pb, dbeta)] {
        sum_rows_into(step, partial, (chunks, cols), cols, Dest::add_to(out))?;
    }
    Ok(dx)
}
