//! Launchers for `shaders/embedding.wgsl`.

use super::{groups, u32_of};
use crate::error::{shape_err, Result};
use crate::gpu::{Access::Read as R, Access::ReadWrite as W, DType, Kernel, Step, Tensor};

pub const FWD: Kernel = Kernel::new("embedding", "embedding_fwd", &[R, R, W]);
pub const BWD: Kernel = Kernel::new("embedding", "embedding_bwd", &[R, R, W]);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    tokens: u32,
    dim: u32,
    vocab: u32,
    _pad: u32,
}

fn params(ids: &Tensor, table: &Tensor) -> Result<Params> {
    if ids.dtype() != DType::U32 {
        return shape_err("embedding", "ids must be a u32 tensor");
    }
    if table.shape().len() != 2 {
        return shape_err(
            "embedding",
            format!("table must be [vocab, dim], got {:?}", table.shape()),
        );
    }
    Ok(Params {
        tokens: u32_of("embedding", "tokens", ids.numel())?,
        dim: table.shape()[1] as u32,
        vocab: table.shape()[0] as u32,
        _pad: 0,
    })
}

/// out[.., :] = table[ids[..], :]; ids outside the vocabulary give zero rows.
pub fn embedding(step: &mut Step, ids: &Tensor, table: &Tensor) -> Result<Tensor> {
    let p = params(ids, table)?;
    let mut shape = ids.shape().to_vec();
    shape.push(p.dim as usize);
    let out = step.empty(&shape)?;
    step.dispatch_linear(
        &FWD,
        &p,
        &[ids, table, &out],
        groups(ids.numel() * p.dim as usize, 256),
    )?;
    Ok(out)
}

/// dtable[ids[t]] += dout[t] for every token t (deterministic, no atomics).
pub fn embedding_bwd(step: &mut Step, ids: &Tensor, dout: &Tensor, dtable: &Tensor) -> Result<()> {
    let p = params(ids, dtable)?;
    if dout.numel() != ids.numel() * p.dim as usize {
        return shape_err(
            "embedding_bwd",
            format!(
                "dout {:?} does not match ids {:?} and dim {}",
                dout.shape(),
                ids.shape(),
                p.dim
            ),
        );
    }
    step.dispatch_linear(&BWD, &p, &[ids, dout, dtable], groups(dout.numel(), 256))
}
