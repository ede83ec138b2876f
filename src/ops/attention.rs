//! The attention core: P = softmax(scale · Q Kᵀ + masks), O = P V, with P kept as an output (the
//! distillation losses read it), and its backward: launchers for `shaders/attention.wgsl`.
//!
//! Q, K and V are [`Seq`] views: columns `off .. off + H·D` of a [batch, tokens, stride] buffer.
//! So they are read straight from the projections, fused (GPT-2's c_attn: Q, K, V side by side)
//! or not (ViT's query/key/value), and the head split and merge are strides, never copies. The
//! backward writes dQ, dK, dV into views of the same kind.

use super::softmax::Masks;
use super::{groups, u32_of};
use crate::error::{shape_err, Result};
use crate::gpu::{Access::Read as R, Access::ReadWrite as W, Kernel, Step, Tensor};

pub const FWD: Kernel = Kernel::new("attention", "attention_fwd", &[R, R, R, R, W, W]);
pub const BWD_Q: Kernel = Kernel::new("attention", "attention_bwd_q", &[R, R, R, R, R, W, W]);
pub const BWD_KV: Kernel = Kernel::new("attention", "attention_bwd_kv", &[R, R, W]);

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

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default)]
struct Params {
    batch: u32,
    heads: u32,
    tq: u32,
    tk: u32,
    hd: u32,
    flags: u32,
    scale: f32,
    _pad: u32,
    q: [u32; 2],
    k: [u32; 2],
    v: [u32; 2],
    o: [u32; 2],
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

    fn params(&self, flags: u32, views: [&Seq; 4]) -> Result<Params> {
        let u = |x| u32_of("attention", "size", x);
        let pair = |s: &Seq| -> Result<[u32; 2]> { Ok([u(s.off)?, u(s.stride)?]) };
        Ok(Params {
            batch: u(self.batch)?,
            heads: u(self.heads)?,
            tq: u(self.q_len)?,
            tk: u(self.k_len)?,
            hd: u(self.head_dim)?,
            flags,
            scale: self.scale(),
            _pad: 0,
            q: pair(views[0])?,
            k: pair(views[1])?,
            v: pair(views[2])?,
            o: pair(views[3])?,
        })
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
    if let Some(m) = masks.key_mask {
        if m.shape() != [d.batch, d.k_len] {
            return shape_err(
                "attention",
                format!(
                    "key mask must be [batch, k] = [{}, {}], got {:?}",
                    d.batch,
                    d.k_len,
                    m.shape()
                ),
            );
        }
    }
    if masks.causal && d.q_len > d.k_len {
        return shape_err(
            "attention",
            format!(
                "a causal mask needs q <= k, got q = {}, k = {}",
                d.q_len, d.k_len
            ),
        );
    }
    let probs = step.empty(&[d.batch, d.heads, d.q_len, d.k_len])?;
    let out = step.empty(&[d.batch, d.q_len, d.width()])?;
    let flags = masks.causal as u32 | (masks.key_mask.is_some() as u32) << 1;
    let p = d.params(flags, [&q, &k, &v, &Seq::whole(&out)])?;
    let mask = masks.key_mask.unwrap_or(q.t);
    let rows = d.batch * d.heads * d.q_len;
    step.dispatch_linear(
        &FWD,
        &p,
        &[q.t, k.t, v.t, mask, &probs, &out],
        groups(rows, 64),
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
    let (tq, tk) = (d.q_len, d.k_len);
    if probs.shape() != [d.batch, d.heads, tq, tk] {
        return shape_err(
            "attention_bwd",
            format!("probs {:?} do not match {d:?}", probs.shape()),
        );
    }
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
    }
    let dout_seq = Seq::whole(dout);
    if dout_seq.off != 0 || dout_seq.stride != d.width() {
        return shape_err(
            "attention_bwd",
            format!("dout {:?} must be [B, Tq, H·D]", dout.shape()),
        );
    }
    for (what, s, len) in [
        ("q", &q, tq),
        ("k", &k, tk),
        ("v", &v, tk),
        ("dout", &dout_seq, tq),
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
    // dS = scale · P ⊙ (dP − rowsum(P ⊙ dP)) with dP = dO Vᵀ (+ extra), and dQ = dS K.
    let dscores = step.empty(probs.shape())?;
    let flags = (grads.dprobs.is_some() as u32) << 2;
    let p = d.params(flags, [&q, &k, &v, &grads.dq])?;
    let extra = grads.dprobs.unwrap_or(probs);
    let rows = d.batch * d.heads * tq;
    step.dispatch_linear(
        &BWD_Q,
        &p,
        &[probs, dout, v.t, k.t, extra, &dscores, grads.dq.t],
        groups(rows, 64),
    )?;
    // dK = dSᵀ Q and dV = Pᵀ dO, one invocation per key, one gradient per dispatch.
    let cols = d.batch * d.heads * tk;
    let pk = d.params(0, [&q, &k, &v, &grads.dk])?;
    step.dispatch_linear(&BWD_KV, &pk, &[&dscores, q.t, grads.dk.t], groups(cols, 64))?;
    let pv = d.params(0, [&dout_seq, &k, &v, &grads.dv])?;
    step.dispatch_linear(&BWD_KV, &pv, &[probs, dout, grads.dv.t], groups(cols, 64))?;
    Ok(())
}
