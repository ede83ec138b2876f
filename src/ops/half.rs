//! Launcher for `shaders/half.wgsl`: f16 tensors widened to f32.

use super::{groups, u32_of};
use crate::error::{shape_err, Result};
use crate::gpu::{Access::Half as H, Access::ReadWrite as W, DType, Kernel, Step, Tensor};

pub const WIDEN: Kernel = Kernel::new("half", "widen_halves", &[H, W]);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    pad: [u32; 3],
}

/// The f16 tensor `t` as a new f32 tensor of its shape (exact).
pub fn widen(step: &mut Step, t: &Tensor) -> Result<Tensor> {
    if t.dtype() != DType::F16 {
        return shape_err("widen", format!("widens f16 tensors, got {:?}", t.dtype()));
    }
    let out = step.empty(t.shape())?;
    let n = t.numel();
    let p = Params {
        n: u32_of("widen", "elements", n)?,
        pad: [0; 3],
    };
    step.dispatch_linear(&WIDEN, &p, &[t, &out], groups(n.div_ceil(2), 256))?;
    Ok(out)
}
