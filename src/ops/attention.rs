//! The attention core: P = softmax(scale · Q Kᵀ + masks), O = P V, with P kept as an output (the
//! distillation losses read it). Composed from the strided matmul and the masked softmax, reading
//! Q, K, V straight from the projections' [batch, tokens, heads · head_dim] layout: the head split
//! and merge are strides, not copies.

use super::matmul::{Gemm, View};
use super::softmax::{masked_softmax, softmax_bwd, Masks};
use crate::error::{shape_err, Result};
use crate::gpu::{Step, Tensor};

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub q_len: usize,
    pub k_len: usize,
    pub head_dim: usize,
}

impl Dims {
    /// Reads the sizes from q [B, Tq, H·D] and k [B, Tk, H·D], checking v matches k.
    pub fn of(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Dims> {
        let (sq, sk) = (q.shape(), k.shape());
        if sq.len() != 3 || sk.len() != 3 || v.shape() != sk || sq[0] != sk[0] || sq[2] != sk[2] {
            return shape_err(
                "attention",
                format!(
                    "need q [B, Tq, W], k and v [B, Tk, W]; got {sq:?}, {sk:?}, {:?}",
                    v.shape()
                ),
            );
        }
        if heads == 0 || sq[2] % heads != 0 {
            return shape_err(
                "attention",
                format!("width {} is not divisible into {heads} heads", sq[2]),
            );
        }
        Ok(Dims {
            batch: sq[0],
            heads,
            q_len: sq[1],
            k_len: sk[1],
            head_dim: sq[2] / heads,
        })
    }

    pub fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Row (token, head-dim) view of a [B, T, H·D] activation, batched over (batch, head).
    fn tokens<'a>(&self, t: &'a Tensor, len: usize, transposed: bool) -> View<'a> {
        let w = self.width();
        let (rs, cs) = if transposed { (1, w) } else { (w, 1) };
        View {
            t,
            off: 0,
            rs,
            cs,
            bs: [len * w, self.head_dim],
        }
    }

    /// View of a [B, H, Tq, Tk] map, batched over (batch, head).
    fn map<'a>(&self, t: &'a Tensor, transposed: bool) -> View<'a> {
        let (rs, cs) = if transposed {
            (1, self.k_len)
        } else {
            (self.k_len, 1)
        };
        let per_head = self.q_len * self.k_len;
        View {
            t,
            off: 0,
            rs,
            cs,
            bs: [self.heads * per_head, per_head],
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        step: &mut Step,
        m: usize,
        n: usize,
        k: usize,
        a: View,
        b: View,
        c: View,
    ) -> Result<()> {
        Gemm {
            m,
            n,
            k,
            batch: [self.batch, self.heads],
            a,
            b,
            c,
            bias: None,
            alpha: 1.0,
            accumulate: false,
        }
        .record(step)
    }
}

/// Forward: returns (O [B, Tq, H·D], P [B, H, Tq, Tk]).
pub fn attention(
    step: &mut Step,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    masks: Masks,
) -> Result<(Tensor, Tensor)> {
    let d = Dims::of(q, k, v, heads)?;
    let scores = step.empty(&[d.batch, heads, d.q_len, d.k_len])?;
    d.gemm(
        step,
        d.q_len,
        d.k_len,
        d.head_dim,
        d.tokens(q, d.q_len, false),
        d.tokens(k, d.k_len, true),
        d.map(&scores, false),
    )?;
    let probs = masked_softmax(step, &scores, d.scale(), masks)?;
    drop(scores);
    let out = step.empty(q.shape())?;
    d.gemm(
        step,
        d.q_len,
        d.head_dim,
        d.k_len,
        d.map(&probs, false),
        d.tokens(v, d.k_len, false),
        d.tokens(&out, d.q_len, false),
    )?;
    Ok((out, probs))
}

/// Backward: from dO and the saved P, returns (dQ, dK, dV).
pub fn attention_bwd(
    step: &mut Step,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    probs: &Tensor,
    dout: &Tensor,
    heads: usize,
) -> Result<(Tensor, Tensor, Tensor)> {
    let d = Dims::of(q, k, v, heads)?;
    if probs.shape() != [d.batch, heads, d.q_len, d.k_len] || dout.shape() != q.shape() {
        return shape_err(
            "attention_bwd",
            format!(
                "probs {:?} or dout {:?} do not match q {:?}, k {:?}",
                probs.shape(),
                dout.shape(),
                q.shape(),
                k.shape()
            ),
        );
    }
    // dP = dO Vᵀ;  dV = Pᵀ dO
    let dprobs = step.empty(probs.shape())?;
    d.gemm(
        step,
        d.q_len,
        d.k_len,
        d.head_dim,
        d.tokens(dout, d.q_len, false),
        d.tokens(v, d.k_len, true),
        d.map(&dprobs, false),
    )?;
    let dv = step.empty(v.shape())?;
    d.gemm(
        step,
        d.k_len,
        d.head_dim,
        d.q_len,
        d.map(probs, true),
        d.tokens(dout, d.q_len, false),
        d.tokens(&dv, d.k_len, false),
    )?;
    // dS = scale · P ⊙ (dP − rowsum(P ⊙ dP))
    let dscores = softmax_bwd(step, probs, &dprobs, d.scale())?;
    drop(dprobs);
    // dQ = dS K;  dK = dSᵀ Q
    let dq = step.empty(q.shape())?;
    d.gemm(
        step,
        d.q_len,
        d.head_dim,
        d.k_len,
        d.map(&dscores, false),
        d.tokens(k, d.k_len, false),
        d.tokens(&dq, d.q_len, false),
    )?;
    let dk = step.empty(k.shape())?;
    d.gemm(
        step,
        d.k_len,
        d.head_dim,
        d.q_len,
        d.map(&dscores, true),
        d.tokens(q, d.q_len, false),
        d.tokens(&dk, d.k_len, false),
    )?;
    Ok((dq, dk, dv))
}
