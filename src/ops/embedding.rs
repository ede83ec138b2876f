//! Launchers for `shaders/embedding.wgsl`.

use super::{groups, u32_of};
use crate::error::{shape_err, Result};
use crate::gpu::{Access::Read as R, Access::ReadWrite as W, DType, Kernel, Step, Tensor};

pub const FWD: Kernel = Kernel::new("embedding", "embedding_fwd", &[R, R, W]);
pub const FWD_ROWS: Kernel = Kernel::new("embedding", "embedding_fwd_rows", &[R, R, W]);
pub const BWD: Kernel = Kernel::new("embedding", "embedding_bwd", &[R, R, W]);
pub const BWD_ROWS: Kernel = Kernel::new("embedding", "embedding_bwd_rows", &[R, R, W]);
pub const VIT_TOKENS_FWD: Kernel = Kernel::new("embedding", "vit_tokens_fwd", &[R, R, R, W]);
pub const VIT_TOKENS_BWD: Kernel = Kernel::new("embedding", "vit_tokens_bwd", &[R, W]);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    tokens: u32,
    dim: u32,
    vocab: u32,
    first: u32,
}

/// A lookup `kernel` as it reads `table`: from the family that reads f16 where the table is held so
/// (a token embedding loaded with half-precision weights).
fn for_table(kernel: &'static Kernel, table: &Tensor) -> &'static Kernel {
    match table.dtype() {
        DType::F16 => kernel.in_family(super::half_twin(kernel.family), &[1]),
        _ => kernel,
    }
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
        first: 0,
    })
}

/// out[.., :] = table[ids[..], :]; ids outside the vocabulary give zero rows.
pub fn embedding(step: &mut Step, ids: &Tensor, table: &Tensor) -> Result<Tensor> {
    let p = params(ids, table)?;
    let mut shape = ids.shape().to_vec();
    shape.push(p.dim as usize);
    let out = step.empty(&shape)?;
    step.dispatch_linear(
        for_table(&FWD, table),
        &p,
        &[ids, table, &out],
        groups(ids.numel() * p.dim as usize, 256),
    )?;
    Ok(out)
}

/// [`embedding`] from a table held as row blocks, (first row, block) in row order (see
/// `Weights::row_blocks`): each block writes the tokens whose ids it holds.
pub fn embedding_rows(step: &mut Step, ids: &Tensor, blocks: &[(usize, Tensor)]) -> Result<Tensor> {
    let [(_, first), rest @ ..] = blocks else {
        return shape_err("embedding", "a table of no rows");
    };
    if rest.is_empty() {
        return embedding(step, ids, first);
    }
    let mut shape = ids.shape().to_vec();
    shape.push(first.shape().get(1).copied().unwrap_or(0));
    let out = step.zeros(&shape)?;
    for (row, table) in blocks {
        let p = Params {
            first: u32_of("embedding", "row", *row)?,
            ..params(ids, table)?
        };
        if p.dim as usize != shape[shape.len() - 1] {
            return shape_err("embedding", "row blocks of different widths");
        }
        let n = groups(out.numel(), 256);
        step.dispatch_linear(for_table(&FWD_ROWS, table), &p, &[ids, table, &out], n)?;
    }
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
    // The cheaper of the two orders (see the shader): per token, scanning the tokens before it,
    // or per table row, scanning all tokens.
    let rows = p.vocab as usize;
    if rows < ids.numel() / 2 {
        let n = groups(rows * p.dim as usize, 256);
        step.dispatch_linear(&BWD_ROWS, &p, &[ids, dout, dtable], n)
    } else {
        step.dispatch_linear(&BWD, &p, &[ids, dout, dtable], groups(dout.numel(), 256))
    }
}

fn vit_params(op: &'static str, batch: usize, tokens: usize, dim: usize) -> Result<Params> {
    Ok(Params {
        tokens: u32_of(op, "rows", batch * tokens)?,
        dim: u32_of(op, "dim", dim)?,
        vocab: u32_of(op, "tokens", tokens)?,
        first: 0,
    })
}

/// ViT's token sequence: [CLS; patch embeddings] + position embeddings.
/// patches [B, N, D], cls [.., D] (D elements), pos [.., N + 1, D] → [B, N + 1, D].
pub fn vit_tokens(step: &mut Step, patches: &Tensor, cls: &Tensor, pos: &Tensor) -> Result<Tensor> {
    let s = patches.shape();
    if s.len() != 3 || cls.numel() != s[2] || pos.numel() != (s[1] + 1) * s[2] {
        return shape_err(
            "vit_tokens",
            format!(
                "patches {s:?}, cls {:?} and positions {:?} do not fit together",
                cls.shape(),
                pos.shape()
            ),
        );
    }
    let (b, n, d) = (s[0], s[1], s[2]);
    let p = vit_params("vit_tokens", b, n + 1, d)?;
    let out = step.empty(&[b, n + 1, d])?;
    step.dispatch_linear(
        &VIT_TOKENS_FWD,
        &p,
        &[patches, cls, pos, &out],
        groups(out.numel(), 256),
    )?;
    Ok(out)
}

/// Backward of [`vit_tokens`]: returns d patches and adds the CLS and position gradients
/// (column sums over the batch) into `dcls`, `dpos`.
pub fn vit_tokens_bwd(
    step: &mut Step,
    dtokens: &Tensor,
    dcls: &Tensor,
    dpos: &Tensor,
) -> Result<Tensor> {
    let s = dtokens.shape();
    if s.len() != 3 || s[1] < 2 || dcls.numel() != s[2] || dpos.numel() != s[1] * s[2] {
        return shape_err(
            "vit_tokens_bwd",
            format!(
                "dtokens {s:?}, dcls {:?} and dpos {:?} do not fit together",
                dcls.shape(),
                dpos.shape()
            ),
        );
    }
    let (b, t, d) = (s[0], s[1], s[2]);
    let p = vit_params("vit_tokens_bwd", b, t, d)?;
    let dpatch = step.empty(&[b, t - 1, d])?;
    step.dispatch_linear(
        &VIT_TOKENS_BWD,
        &p,
        &[dtokens, &dpatch],
        groups(dpatch.numel(), 256),
    )?;
    // Position t's gradient sums over the batch; CLS's is position 0's: the first d columns.
    let per_image = dtokens.reshape(&[b, t * d])?;
    super::reduce::sum_columns(step, &per_image, dpos)?;
    super::reduce::sum_columns(step, &per_image, dcls)?;
    Ok(dpatch)
}
