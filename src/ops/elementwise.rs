//! Launchers for `shaders/elementwise.wgsl`: add, bias add, scaled accumulate, padded rows, GELU.

use super::{groups, u32_of};
use crate::error::{shape_err, Result};
use crate::gpu::{Access::Image as I, Access::Read as R, Access::ReadWrite as W};
use crate::gpu::{Kernel, Step, Tensor};

pub const ADD: Kernel = Kernel::new("elementwise", "add", &[R, R, W]);
pub const BIAS_ADD: Kernel = Kernel::new("elementwise", "bias_add", &[R, R, W]);
pub const AXPY: Kernel = Kernel::new("elementwise", "axpy", &[R, R, W]);
pub const PAD_ROWS: Kernel = Kernel::new("elementwise", "pad_rows", &[R, R, W]);
pub const GELU_ERF_FWD: Kernel = Kernel::new("elementwise", "gelu_erf_fwd", &[R, R, W]);
pub const GELU_ERF_BWD: Kernel = Kernel::new("elementwise", "gelu_erf_bwd", &[R, R, W]);
pub const GELU_TANH_FWD: Kernel = Kernel::new("elementwise", "gelu_tanh_fwd", &[R, R, W]);
pub const GELU_TANH_BWD: Kernel = Kernel::new("elementwise", "gelu_tanh_bwd", &[R, R, W]);
pub const RELU_FWD: Kernel = Kernel::new("elementwise", "relu_fwd", &[R, R, W]);
pub const RELU_BWD: Kernel = Kernel::new("elementwise", "relu_bwd", &[R, R, W]);

/// GELU reading x (and dy) from images (`Gpu::image_operands`): [forward, backward] of one form.
const fn gelu_images(names: [&'static str; 2], tanh: bool) -> [Kernel; 2] {
    let constants: &'static [(&'static str, f64)] = if tanh {
        &[("TANH", 1.0)]
    } else {
        &[("TANH", 0.0)]
    };
    [
        Kernel::specialised(
            names[0],
            "elementwise",
            "gelu_fwd_image",
            &[R, R, W, I],
            constants,
        ),
        Kernel::specialised(
            names[1],
            "elementwise",
            "gelu_bwd_image",
            &[R, R, W, I, I],
            constants,
        ),
    ]
}
pub const GELU_ERF_IMAGE: [Kernel; 2] =
    gelu_images(["gelu_erf_fwd_image", "gelu_erf_bwd_image"], false);
pub const GELU_TANH_IMAGE: [Kernel; 2] =
    gelu_images(["gelu_tanh_fwd_image", "gelu_tanh_bwd_image"], true);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    cols: u32,
    alpha: f32,
    pitch: u32,
}

fn params(op: &'static str, n: usize, cols: usize, alpha: f32) -> Result<Params> {
    Ok(Params {
        n: u32_of(op, "elements", n)?,
        cols: u32_of(op, "cols", cols)?,
        alpha,
        pitch: 0,
    })
}

fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return shape_err(
            op,
            format!("shapes differ: {:?} and {:?}", a.shape(), b.shape()),
        );
    }
    Ok(())
}

/// out = x + y (the residual add; its backward passes the gradient to both inputs unchanged).
pub fn add(step: &mut Step, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    same_shape("add", x, y)?;
    let out = step.empty(x.shape())?;
    let n = x.numel();
    step.dispatch_linear(
        &ADD,
        &params("add", n, 1, 1.0)?,
        &[x, y, &out],
        groups(n, 256),
    )?;
    Ok(out)
}

/// x [.., cols] as [rows, pitch]: each row followed by zeros up to `pitch` (at least cols), so that
/// products can read rows of an odd length (the logits over GPT-2's 50,257 words) as whole vec4s.
pub fn pad_rows(step: &mut Step, x: &Tensor, pitch: usize) -> Result<Tensor> {
    let cols = *x.shape().last().unwrap_or(&0);
    if cols == 0 || pitch < cols {
        return shape_err(
            "pad_rows",
            format!("rows of {:?} do not fit a pitch of {pitch}", x.shape()),
        );
    }
    let rows = x.numel() / cols;
    let out = step.empty(&[rows, pitch])?;
    let n = rows * pitch;
    let p = Params {
        pitch: u32_of("pad_rows", "pitch", pitch)?,
        ..params("pad_rows", n, cols, 1.0)?
    };
    step.dispatch_linear(&PAD_ROWS, &p, &[x, x, &out], groups(n, 256))?;
    Ok(out)
}

/// out[.., c] = x[.., c] + bias[c]. Backward: dx = dy, dbias = column sums of dy
/// ([`super::reduce::sum_columns`]).
pub fn bias_add(step: &mut Step, x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let cols = *x.shape().last().unwrap_or(&0);
    if bias.numel() != cols {
        return shape_err(
            "bias_add",
            format!(
                "bias has {} elements, x {:?} rows are {cols} wide",
                bias.numel(),
                x.shape()
            ),
        );
    }
    let out = step.empty(x.shape())?;
    let n = x.numel();
    step.dispatch_linear(
        &BIAS_ADD,
        &params("bias_add", n, cols, 1.0)?,
        &[x, bias, &out],
        groups(n, 256),
    )?;
    Ok(out)
}

/// acc += alpha * x, in place (gradient accumulation).
pub fn axpy(step: &mut Step, acc: &Tensor, x: &Tensor, alpha: f32) -> Result<()> {
    same_shape("axpy", acc, x)?;
    let n = x.numel();
    step.dispatch_linear(
        &AXPY,
        &params("axpy", n, 1, alpha)?,
        &[x, x, acc],
        groups(n, 256),
    )
}

/// The MLPs' activation: the exact GELU (ViT's "gelu"), GPT-2's tanh approximation ("gelu_new",
/// "gelu_pytorch_tanh"), or ReLU, which a config may name for either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

impl Activation {
    /// The activation a config names (ViT's hidden_act, GPT-2's activation_function).
    pub fn from_name(name: &str) -> Option<Activation> {
        match name {
            "gelu" => Some(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" => Some(Activation::GeluTanh),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }
}

/// The GELU kernels reading from images, [forward, backward]; ReLU, whose cost is its loads and
/// stores only, keeps its buffer kernels.
fn image_kernels(kind: Activation) -> Option<&'static [Kernel; 2]> {
    match kind {
        Activation::GeluErf => Some(&GELU_ERF_IMAGE),
        Activation::GeluTanh => Some(&GELU_TANH_IMAGE),
        Activation::Relu => None,
    }
}

/// y = activation(x).
pub fn activation(step: &mut Step, x: &Tensor, kind: Activation) -> Result<Tensor> {
    let k = match kind {
        Activation::GeluErf => &GELU_ERF_FWD,
        Activation::GeluTanh => &GELU_TANH_FWD,
        Activation::Relu => &RELU_FWD,
    };
    let out = step.empty(x.shape())?;
    let n = x.numel();
    let cols = *x.shape().last().unwrap_or(&1);
    let p = params("gelu", n, cols, 1.0)?;
    let images = match image_kernels(kind) {
        Some(_) => step.operand_images(&[x], cols)?,
        None => None,
    };
    if let (Some(im), Some(ks)) = (images, image_kernels(kind)) {
        let k = &ks[0];
        step.dispatch_linear_images(k, &p, &[x, x, &out], &[&im[0]], groups(n / 4, 256))?;
    } else {
        step.dispatch_linear(k, &p, &[x, x, &out], groups(n, 256))?;
    }
    Ok(out)
}

/// dx = dy * activation'(x).
pub fn activation_bwd(
    step: &mut Step,
    x: &Tensor,
    dy: &Tensor,
    kind: Activation,
) -> Result<Tensor> {
    same_shape("gelu_bwd", x, dy)?;
    let k = match kind {
        Activation::GeluErf => &GELU_ERF_BWD,
        Activation::GeluTanh => &GELU_TANH_BWD,
        Activation::Relu => &RELU_BWD,
    };
    let out = step.empty(x.shape())?;
    let n = x.numel();
    let cols = *x.shape().last().unwrap_or(&1);
    let p = params("gelu_bwd", n, cols, 1.0)?;
    let images = match image_kernels(kind) {
        Some(_) => step.operand_images(&[x, dy], cols)?,
        None => None,
    };
    if let (Some(im), Some(ks)) = (images, image_kernels(kind)) {
        let k = &ks[1];
        let n4 = groups(n / 4, 256);
        step.dispatch_linear_images(k, &p, &[x, dy, &out], &[&im[0], &im[1]], n4)?;
    } else {
        step.dispatch_linear(k, &p, &[x, dy, &out], groups(n, 256))?;
    }
    Ok(out)
}
