//! Launchers for `shaders/softmax.wgsl`: row softmax, and the masked, scaled softmax of attention.

use super::{groups, u32_of};
use crate::error::{shape_err, Result};
use crate::gpu::{Access::Read as R, Access::ReadWrite as W, Kernel, Step, Tensor};

pub const FWD: Kernel = Kernel::new("softmax", "softmax_fwd", &[R, R, W]);
pub const BWD: Kernel = Kernel::new("softmax", "softmax_bwd", &[R, R, W]);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    q: u32,
    heads: u32,
    scale: f32,
    flags: u32,
    _pad: [u32; 2],
}

/// Masks for [`masked_softmax`].
#[derive(Clone, Copy, Default)]
pub struct Masks<'a> {
    /// Key j is masked for query i when j > i.
    pub causal: bool,
    /// [batch, k]: 1 for a valid key, 0 for padding.
    pub key_mask: Option<&'a Tensor>,
}

/// Softmax over the last dimension.
pub fn softmax(step: &mut Step, x: &Tensor) -> Result<Tensor> {
    let cols = *x.shape().last().unwrap_or(&0);
    let rows = x.numel() / cols.max(1);
    run(step, x, rows, cols, 1, 1, 1.0, Masks::default())
}

/// Softmax of `scale * scores` over keys, for scores [batch, heads, q, k], with optional causal
/// and key-padding masks. Masked cells are exactly 0.
pub fn masked_softmax(
    step: &mut Step,
    scores: &Tensor,
    scale: f32,
    masks: Masks,
) -> Result<Tensor> {
    let s = scores.shape();
    if s.len() != 4 {
        return shape_err(
            "masked_softmax",
            format!("scores must be [batch, heads, q, k], got {s:?}"),
        );
    }
    if let Some(m) = masks.key_mask {
        if m.shape() != [s[0], s[3]] {
            return shape_err(
                "masked_softmax",
                format!(
                    "key mask must be [batch, k] = [{}, {}], got {:?}",
                    s[0],
                    s[3],
                    m.shape()
                ),
            );
        }
    }
    if masks.causal && s[2] > s[3] {
        return shape_err(
            "masked_softmax",
            format!("a causal mask needs q <= k, got q = {}, k = {}", s[2], s[3]),
        );
    }
    run(
        step,
        scores,
        s[0] * s[1] * s[2],
        s[3],
        s[2],
        s[1],
        scale,
        masks,
    )
}

#[allow(clippy::too_many_arguments)]
fn run(
    step: &mut Step,
    x: &Tensor,
    rows: usize,
    cols: usize,
    q: usize,
    heads: usize,
    scale: f32,
    m: Masks,
) -> Result<Tensor> {
    let y = step.empty(x.shape())?;
    let p = Params {
        rows: u32_of("softmax", "rows", rows)?,
        cols: u32_of("softmax", "cols", cols)?,
        q: q as u32,
        heads: heads as u32,
        scale,
        flags: m.causal as u32 | (m.key_mask.is_some() as u32) << 1,
        _pad: [0; 2],
    };
    let mask = m.key_mask.unwrap_or(x);
    step.dispatch_linear(&FWD, &p, &[x, mask, &y], groups(rows, 256))?;
    Ok(y)
}

/// Backward of a (scaled) softmax from its output y: dx = scale * y * (dy - Σ y·dy).
/// Masked cells have y = 0 and so get no gradient.
pub fn softmax_bwd(step: &mut Step, y: &Tensor, dy: &Tensor, scale: f32) -> Result<Tensor> {
    if y.shape() != dy.shape() {
        return shape_err(
            "softmax_bwd",
            format!("y {:?} and dy {:?} differ", y.shape(), dy.shape()),
        );
    }
    let cols = *y.shape().last().unwrap_or(&0);
    let rows = y.numel() / cols.max(1);
    let dx = step.empty(y.shape())?;
    let p = Params {
        rows: u32_of("softmax_bwd", "rows", rows)?,
        cols: cols as u32,
        q: 1,
        heads: 1,
        scale,
        flags: 0,
        _pad: [0; 2],
    };
    step.dispatch_linear(&BWD, &p, &[y, dy, &dx], groups(rows, 256))?;
    Ok(dx)
}
