//! The attention core: P = softmax(scale · Q Kᵀ + masks), O = P V, with P kept as an output (the
//! distillation losses read it). Composed from the strided matmul and the masked softmax.
//!
//! Q, K and V are [`Seq`] views: columns `off .. off + H·D` of a [batch, tokens, stride] buffer.
//! So they are read straight from the projections, fused (GPT-2's c_attn: Q, K, V side by side)
//! or not (ViT's query/key/value), and the head split and merge are strides, never copies. The
//! backward writes dQ, dK, dV into views of the same kind.

use super::elementwise::axpy;
use super::matmul::{Gemm, View};
use super::softmax::{masked_softmax, softmax_bwd, Masks};
use crate::error::{shape_err, Result};
use crate::gpu::{Step, Tensor};

/// Columns `off .. off + width` of every token of a [batch, len, stride] buffer.
#[derive(Clone, Copy, Debug)]
pub struct Seq<'a> {
    pub t: &'a Tensor,
    pub off: usize,
    pub stride: usize,
}

impl<'a> Seq<'a> {
    /// All columns of a [batch, len, width] tensor.
    pub fn whole(t: &'a Tensor) -> Seq<'a> {
        Seq {
            t,
            off: 0,
            stride: *t.shape().last().unwrap_or(&0),
        }
    }

    /// The `i`-th of `n` equal column blocks of a [batch, len, n·width] tensor (a fused projection).
    pub fn part(t: &'a Tensor, i: usize, n: usize) -> Seq<'a> {
        let stride = *t.shape().last().unwrap_or(&0);
        Seq {
            t,
            off: i * stride / n,
            stride,
        }
    }
}

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub q_len: usize,
    pub k_len: usize,
    pub head_dim: usize,
}

impl Dims {
    pub fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Checks that `s` holds `len` tokens of width H·D for every batch element.
    fn check(&self, what: &str, s: &Seq, len: usize) -> Result<()> {
        let shape = s.t.shape();
        let ok = shape.len() == 3
            && shape[0] == self.batch
            && shape[1] == len
            && shape[2] == s.stride
            && s.off + self.width() <= s.stride;
        if !ok {
            return shape_err(
                "attention",
                format!(
                    "{what}: columns {}..{} of {shape:?} are not {len} tokens × {} for batch {}",
                    s.off,
                    s.off + self.width(),
                    self.width(),
                    self.batch
                ),
            );
        }
        Ok(())
    }

    /// Row (token, head-dim) view of a sequence, batched over (batch, head).
    fn tokens<'a>(&self, s: &Seq<'a>, len: usize, transposed: bool) -> View<'a> {
        let (rs, cs) = if transposed {
            (1, s.stride)
        } else {
            (s.stride, 1)
        };
        View {
            t: s.t,
            off: s.off,
            rs,
            cs,
            bs: [len * s.stride, self.head_dim],
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

    fn gemm(
        &self,
        step: &mut Step,
        mnk: (usize, usize, usize),
        a: View,
        b: View,
        c: View,
    ) -> Result<()> {
        let (m, n, k) = mnk;
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
    d: Dims,
    q: Seq,
    k: Seq,
    v: Seq,
    masks: Masks,
) -> Result<(Tensor, Tensor)> {
    if d.heads == 0 || d.head_dim == 0 {
        return shape_err("attention", format!("{d:?} has no heads"));
    }
    d.check("q", &q, d.q_len)?;
    d.check("k", &k, d.k_len)?;
    d.check("v", &v, d.k_len)?;
    let scores = step.empty(&[d.batch, d.heads, d.q_len, d.k_len])?;
    let (tq, tk, hd) = (d.q_len, d.k_len, d.head_dim);
    d.gemm(
        step,
        (tq, tk, hd),
        d.tokens(&q, tq, false),
        d.tokens(&k, tk, true),
        d.map(&scores, false),
    )?;
    let probs = masked_softmax(step, &scores, d.scale(), masks)?;
    drop(scores);
    let out = step.empty(&[d.batch, tq, d.width()])?;
    d.gemm(
        step,
        (tq, hd, tk),
        d.map(&probs, false),
        d.tokens(&v, tk, false),
        d.tokens(&Seq::whole(&out), tq, false),
    )?;
    Ok((out, probs))
}

/// The gradients of [`attention`]'s inputs, written into `grads` = (dQ, dK, dV) views.
pub struct Grads<'a> {
    pub dq: Seq<'a>,
    pub dk: Seq<'a>,
    pub dv: Seq<'a>,
    /// A gradient arriving at the probabilities themselves (a distillation loss on the maps),
    /// [B, H, Tq, Tk], added to the one coming back through O = P V.
    pub dprobs: Option<&'a Tensor>,
}

/// Backward: from dO [B, Tq, H·D] and the saved P, writes dQ, dK, dV.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    step: &mut Step,
    d: Dims,
    q: Seq,
    k: Seq,
    v: Seq,
    probs: &Tensor,
    dout: &Tensor,
    grads: Grads,
) -> Result<()> {
    let (tq, tk, hd) = (d.q_len, d.k_len, d.head_dim);
    if probs.shape() != [d.batch, d.heads, tq, tk] {
        return shape_err(
            "attention_bwd",
            format!("probs {:?} do not match {d:?}", probs.shape()),
        );
    }
    let dout = Seq::whole(dout);
    for (what, s, len) in [
        ("q", &q, tq),
        ("k", &k, tk),
        ("v", &v, tk),
        ("dout", &dout, tq),
    ] {
        d.check(what, s, len)?;
    }
    for (what, s, len) in [
        ("dq", &grads.dq, tq),
        ("dk", &grads.dk, tk),
        ("dv", &grads.dv, tk),
    ] {
        d.check(what, s, len)?;
    }
    // dP = dO Vᵀ;  dV = Pᵀ dO
    let dprobs = step.empty(probs.shape())?;
    d.gemm(
        step,
        (tq, tk, hd),
        d.tokens(&dout, tq, false),
        d.tokens(&v, tk, true),
        d.map(&dprobs, false),
    )?;
    if let Some(extra) = grads.dprobs {
        if extra.shape() != probs.shape() {
            return shape_err(
                "attention_bwd",
                format!(
                    "dprobs {:?} do not match probs {:?}",
                    extra.shape(),
                    probs.shape()
                ),
            );
        }
        axpy(step, &dprobs, extra, 1.0)?;
    }
    d.gemm(
        step,
        (tk, hd, tq),
        d.map(probs, true),
        d.tokens(&dout, tq, false),
        d.tokens(&grads.dv, tk, false),
    )?;
    // dS = scale · P ⊙ (dP − rowsum(P ⊙ dP))
    let dscores = softmax_bwd(step, probs, &dprobs, d.scale())?;
    drop(dprobs);
    // dQ = dS K;  dK = dSᵀ Q
    d.gemm(
        step,
        (tq, hd, tk),
        d.map(&dscores, false),
        d.tokens(&k, tk, false),
        d.tokens(&grads.dq, tq, false),
    )?;
    d.gemm(
        step,
        (tk, hd, tq),
        d.map(&dscores, true),
        d.tokens(&q, tq, false),
        d.tokens(&grads.dk, tk, false),
    )?;
    Ok(())
}
