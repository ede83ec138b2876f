//! The GPT-2 decoder with cross-attention, forward and backward: token and position embeddings,
//! pre-LN blocks of causal self-attention, cross-attention over the encoder states and a
//! tanh-GELU MLP, final LayerNorm, and the LM head tied to the token embedding.

use super::linear::{
    linear_bwd, linear_bwd_params, linear_row_blocks, Dx, Grad, Layout::InOut, Layout::OutIn,
};
use super::mlp::{Mlp, MlpActs};
use super::weights::DecLayer;
use super::{cross_attention_bwd, self_attention_bwd, LayerMaps, Model, Weights};
use crate::error::{shape_err, Result};
use crate::gpu::{DType, Step, Tensor};
use crate::ops::attention::{attention, Dims, Probs, Saved, Seq};
use crate::ops::elementwise::add;
use crate::ops::embedding::{embedding, embedding_bwd, embedding_rows};
use crate::ops::layernorm::layernorm;
use crate::ops::softmax::Masks;

/// What one block keeps for its backward.
pub struct BlockActs {
    x: Tensor,
    ln1: (Tensor, Tensor),
    qkv: Tensor,
    /// Causal self-attention probabilities [B, H, L, L] (rows padded, see `Probs`).
    pub self_probs: Probs,
    self_out: Tensor,
    x_mid1: Tensor,
    ln_cross: (Tensor, Tensor),
    cross_q: Tensor,
    cross_kv: Tensor,
    /// Cross-attention probabilities [B, H, L, T] (rows padded, see `Probs`).
    pub cross_probs: Probs,
    cross_out: Tensor,
    x_mid2: Tensor,
    mlp: MlpActs,
}

/// What the cross-attention sublayer computes: its LayerNorm (output, statistics), queries, maps,
/// attention output and the sublayer's output y.
pub(super) struct CrossActs {
    ln: (Tensor, Tensor),
    q: Tensor,
    probs: Probs,
    out: Tensor,
    pub(super) y: Tensor,
}

/// What the decoder keeps for its backward.
pub struct DecoderActs {
    ids: Tensor,
    positions: Tensor,
    pub blocks: Vec<BlockActs>,
    x_final: Tensor,
    ln_stats: Tensor,
    hidden: Tensor,
    /// [B, L, vocab]
    pub logits: Tensor,
}

impl Model {
    pub(super) fn dec_mlp(&self, layer: &DecLayer) -> Mlp {
        Mlp {
            ln: layer.ln2,
            fc: layer.fc,
            proj: layer.proj,
            layout: InOut,
            activation: self.cfg.decoder.activation_function,
            eps: self.cfg.decoder.layer_norm_epsilon,
        }
    }

    /// Layer `layer`'s attention sizes for `q_len` queries over `k_len` keys: GPT-2's
    /// scale_attn_by_inverse_layer_idx divides its scores further by the layer's index + 1.
    pub(super) fn dec_dims(&self, batch: usize, q_len: usize, k_len: usize, layer: usize) -> Dims {
        let d = &self.cfg.decoder;
        let mut dims = Dims::new(batch, d.n_head, q_len, k_len, d.head_dim());
        if d.scale_attn_by_inverse_layer_idx {
            dims.scale /= (layer + 1) as f32;
        }
        dims
    }

    fn self_dims(&self, batch: usize, len: usize, layer: usize) -> Dims {
        self.dec_dims(batch, len, len, layer)
    }

    fn cross_dims(&self, batch: usize, len: usize, layer: usize) -> Dims {
        self.dec_dims(batch, len, self.cfg.encoder.tokens(), layer)
    }

    /// The cross-attention sublayer: y = x + proj(attention(q(LayerNorm(x)), keys and values)),
    /// `kv` [B, T, 2·D] the image's keys and values (computed from the encoder states once per
    /// forward, or once per caption when generating).
    pub(super) fn cross_sublayer(
        &self,
        step: &mut Step,
        layer: &DecLayer,
        dims: Dims,
        x: &Tensor,
        kv: &Tensor,
    ) -> Result<CrossActs> {
        let (ln, q) = self.cross_queries(step, layer, x)?;
        let (kq, vq) = (Seq::part(kv, 0, 2), Seq::part(kv, 1, 2));
        let (out, probs) = attention(step, dims, Seq::whole(&q), kq, vq, Masks::default())?;
        let y = self.lin_residual(InOut, step, &out, layer.cross_proj, x)?;
        Ok(CrossActs {
            ln,
            q,
            probs,
            out,
            y,
        })
    }

    /// The cross-attention's queries from x: LayerNorm(x) with its per-row stats, and q.
    pub(super) fn cross_queries(
        &self,
        step: &mut Step,
        layer: &DecLayer,
        x: &Tensor,
    ) -> Result<((Tensor, Tensor), Tensor)> {
        let (ln_w, ln_b) = (self.w(layer.ln_cross.0), self.w(layer.ln_cross.1));
        let ln = layernorm(step, x, ln_w, ln_b, self.cfg.decoder.layer_norm_epsilon)?;
        let q = self.lin(InOut, step, &ln.0, layer.cross_q)?;
        Ok((ln, q))
    }

    /// The token embeddings of `ids`, from the table whole or in row blocks (see `Weights`).
    pub(super) fn embed_tokens(&self, step: &mut Step, ids: &Tensor) -> Result<Tensor> {
        embedding_rows(step, ids, &self.weights.row_blocks[self.layout.wte])
    }

    /// The LM head, which is the token embedding (tied): logits = h · wteᵀ.
    pub(super) fn lm_head(&self, step: &mut Step, hidden: &Tensor) -> Result<Tensor> {
        linear_row_blocks(step, hidden, &self.weights.row_blocks[self.layout.wte])
    }

    /// Token and position embeddings of ids [B, L] (u32): the position ids and the first
    /// block's input.
    fn dec_embed(&self, step: &mut Step, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (l, cfg) = (&self.layout, &self.cfg.decoder);
        let s = ids.shape();
        if ids.dtype() != DType::U32 || s.len() != 2 || s[1] > cfg.n_positions {
            return shape_err(
                "decode",
                format!(
                    "ids must be u32 [batch, length ≤ {}], got {:?} {s:?}",
                    cfg.n_positions,
                    ids.dtype()
                ),
            );
        }
        let (batch, len) = (s[0], s[1]);
        let positions: Vec<u32> = (0..batch * len).map(|i| (i % len) as u32).collect();
        let positions = step.upload_u32(&[batch, len], &positions)?;
        let tokens = self.embed_tokens(step, ids)?;
        let placed = embedding(step, &positions, self.w(l.wpe))?;
        let x = add(step, &tokens, &placed)?;
        Ok((positions, x))
    }

    /// Block `i`: causal self-attention, cross-attention over `states`, MLP, each pre-LN with a
    /// residual; returns its output and what its backward keeps.
    fn dec_block(
        &self,
        step: &mut Step,
        i: usize,
        x: Tensor,
        states: &Tensor,
    ) -> Result<(Tensor, BlockActs)> {
        let layer = &self.layout.dec[i];
        let (batch, len) = (x.shape()[0], x.shape()[1]);
        let eps = self.cfg.decoder.layer_norm_epsilon;
        let (sd, xd) = (
            self.self_dims(batch, len, i),
            self.cross_dims(batch, len, i),
        );
        let (a, s1) = layernorm(step, &x, self.w(layer.ln1.0), self.w(layer.ln1.1), eps)?;
        let qkv = self.lin(InOut, step, &a, layer.qkv)?;
        let causal = Masks {
            causal: true,
            key_mask: None,
        };
        let (self_out, self_probs) = attention(
            step,
            sd,
            Seq::part(&qkv, 0, 3),
            Seq::part(&qkv, 1, 3),
            Seq::part(&qkv, 2, 3),
            causal,
        )?;
        let x_mid1 = self.lin_residual(InOut, step, &self_out, layer.attn_proj, &x)?;
        let cross_kv = self.lin(InOut, step, states, layer.cross_kv)?;
        let cross = self.cross_sublayer(step, layer, xd, &x_mid1, &cross_kv)?;
        let (x_out, mlp) = self.mlp(step, &cross.y, &self.dec_mlp(layer))?;
        let acts = BlockActs {
            x,
            ln1: (a, s1),
            qkv,
            self_probs,
            self_out,
            x_mid1,
            ln_cross: cross.ln,
            cross_q: cross.q,
            cross_kv,
            cross_probs: cross.probs,
            cross_out: cross.out,
            x_mid2: cross.y,
            mlp,
        };
        Ok((x_out, acts))
    }

    /// The final LayerNorm (output, statistics) and the logits.
    fn dec_head(&self, step: &mut Step, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let l = &self.layout;
        let eps = self.cfg.decoder.layer_norm_epsilon;
        let (hidden, ln_stats) = layernorm(step, x, self.w(l.ln_f.0), self.w(l.ln_f.1), eps)?;
        let logits = self.lm_head(step, &hidden)?;
        Ok((hidden, ln_stats, logits))
    }

    /// Token ids [B, L] (u32) attending to encoder states [B, T, D] → logits and activations.
    pub fn decode(&self, step: &mut Step, states: &Tensor, ids: &Tensor) -> Result<DecoderActs> {
        let (positions, mut x) = self.dec_embed(step, ids)?;
        let mut blocks = Vec::with_capacity(self.layout.dec.len());
        for i in 0..self.layout.dec.len() {
            let (x_out, acts) = self.dec_block(step, i, x, states)?;
            blocks.push(acts);
            x = x_out;
        }
        let (hidden, ln_stats, logits) = self.dec_head(step, &x)?;
        Ok(DecoderActs {
            ids: ids.clone(),
            positions,
            blocks,
            x_final: x,
            ln_stats,
            hidden,
            logits,
        })
    }

    /// The logits and the self- and cross-attention maps of the layers `keep` marks (self,
    /// cross), and nothing else (see `encode_maps`).
    pub(super) fn decode_maps(
        &self,
        step: &mut Step,
        states: &Tensor,
        ids: &Tensor,
        keep: (&[bool], &[bool]),
    ) -> Result<(Tensor, LayerMaps, LayerMaps)> {
        let (_, mut x) = self.dec_embed(step, ids)?;
        let (mut self_maps, mut cross_maps) = (vec![], vec![]);
        let kept = |k: &[bool], i: usize| k.get(i).copied().unwrap_or(false);
        for i in 0..self.layout.dec.len() {
            let (x_out, acts) = self.dec_block(step, i, x, states)?;
            self_maps.push(kept(keep.0, i).then_some(acts.self_probs));
            cross_maps.push(kept(keep.1, i).then_some(acts.cross_probs));
            x = x_out;
        }
        Ok((self.dec_head(step, &x)?.2, self_maps, cross_maps))
    }

    /// Backward from d logits; adds every decoder parameter's gradient into `g` and returns
    /// d states (summed over the layers' cross-attentions).
    pub fn decode_bwd(
        &self,
        step: &mut Step,
        states: &Tensor,
        acts: &DecoderActs,
        dlogits: &Tensor,
        dmaps: (&[Option<Tensor>], &[Option<Tensor>]),
        g: &Weights,
    ) -> Result<Tensor> {
        let l = &self.layout;
        let s = acts.ids.shape();
        // The LM head is the token embedding, tied and without a bias.
        let head = Grad {
            w: self.w(l.wte),
            layout: OutIn,
            dw: &g.tensors[l.wte],
            db: None,
        };
        let dhidden = linear_bwd(step, &acts.hidden, head, dlogits, Dx::New)?;
        let stats = (&acts.x_final, &acts.ln_stats);
        let mut dx = self.ln_bwd(step, l.ln_f, stats, &dhidden, g, None)?;
        let dstates = step.zeros(states.shape())?;
        for (i, (layer, a)) in l.dec.iter().zip(&acts.blocks).enumerate().rev() {
            let dprobs = (
                dmaps.0.get(i).and_then(Option::as_ref),
                dmaps.1.get(i).and_then(Option::as_ref),
            );
            let (sd, xd) = (
                self.self_dims(s[0], s[1], i),
                self.cross_dims(s[0], s[1], i),
            );
            let states = (states, &dstates);
            dx = self.dec_block_bwd(step, (layer, a), (sd, xd), states, (dx, dprobs), g)?;
        }
        embedding_bwd(step, &acts.ids, &dx, &g.tensors[l.wte])?;
        embedding_bwd(step, &acts.positions, &dx, &g.tensors[l.wpe])?;
        Ok(dstates)
    }

    /// Backward of one block, from the gradients arriving at its output and at its self- and
    /// cross-attention maps (a distillation loss on them): the forward in reverse. Adds the
    /// encoder states' gradient into `dstates`; returns the input's gradient.
    fn dec_block_bwd(
        &self,
        step: &mut Step,
        (layer, a): (&DecLayer, &BlockActs),
        (sd, xd): (Dims, Dims),
        (states, dstates): (&Tensor, &Tensor),
        (dx, (dself_maps, dcross_maps)): (Tensor, (Option<&Tensor>, Option<&Tensor>)),
        g: &Weights,
    ) -> Result<Tensor> {
        // x_out = x_mid2 + proj(activation(fc(ln2(x_mid2))))
        let dx_mid2 = self.mlp_bwd(step, &a.x_mid2, &self.dec_mlp(layer), &a.mlp, dx, g)?;
        // x_mid2 = x_mid1 + cross_proj(attention(q(ln_cross x_mid1), kv(states)))
        let dcross = self.lin_bwd(InOut, step, &a.cross_out, layer.cross_proj, &dx_mid2, g)?;
        let saved = Saved {
            out: &a.cross_out,
            probs: &a.cross_probs,
        };
        let qkv = (&a.cross_q, &a.cross_kv);
        let (dcq, dckv) = cross_attention_bwd(step, xd, qkv, saved, &dcross, dcross_maps)?;
        let kv = self.grad(InOut, layer.cross_kv, g);
        linear_bwd_params(step, states, kv, &dckv, Some(dstates))?;
        let dln_cross = self.lin_bwd(InOut, step, &a.ln_cross.0, layer.cross_q, &dcq, g)?;
        let saved_ln = (&a.x_mid1, &a.ln_cross.1);
        let dx_mid1 = self.ln_bwd(step, layer.ln_cross, saved_ln, &dln_cross, g, Some(dx_mid2))?;
        // x_mid1 = x + attn_proj(causal attention(qkv(ln1 x)))
        let dself = self.lin_bwd(InOut, step, &a.self_out, layer.attn_proj, &dx_mid1, g)?;
        let saved = Saved {
            out: &a.self_out,
            probs: &a.self_probs,
        };
        let dqkv = self_attention_bwd(step, sd, &a.qkv, saved, &dself, dself_maps)?;
        let dln1 = self.lin_bwd(InOut, step, &a.ln1.0, layer.qkv, &dqkv, g)?;
        self.ln_bwd(step, layer.ln1, (&a.x, &a.ln1.1), &dln1, g, Some(dx_mid1))
    }
}
