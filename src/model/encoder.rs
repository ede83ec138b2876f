//! The ViT encoder, forward and backward: patch embedding, CLS and positions, pre-LN blocks with
//! exact-GELU MLPs, final LayerNorm, and the projection to the decoder's width when they differ.

use super::linear::linear_bwd_params;
use super::mlp::{Mlp, MlpActs};
use super::weights::EncLayer;
use super::{self_attention_bwd, LayerMaps, Model, Weights};
use crate::error::Result;
use crate::gpu::{Step, Tensor};
use crate::ops::attention::{attention, Dims, Probs, Saved, Seq};
use crate::ops::embedding::{vit_tokens, vit_tokens_bwd};
use crate::ops::layernorm::layernorm;
use crate::ops::softmax::Masks;

/// What one block keeps for its backward.
pub struct BlockActs {
    x: Tensor,
    ln1: (Tensor, Tensor),
    /// Queries, keys and values side by side: [B, T, 3 · width].
    qkv: Tensor,
    /// Attention probabilities [B, H, T, T] (rows padded, see `Probs`).
    pub probs: Probs,
    attn: Tensor,
    x_mid: Tensor,
    mlp: MlpActs,
}

/// What the encoder keeps for its backward.
pub struct EncoderActs {
    patches: Tensor,
    pub blocks: Vec<BlockActs>,
    x_final: Tensor,
    ln_stats: Tensor,
    normed: Tensor,
    /// The states the decoder attends to: [B, T, decoder width].
    pub states: Tensor,
}

impl Model {
    fn enc_mlp(&self, layer: &EncLayer) -> Mlp {
        Mlp {
            ln: layer.ln2,
            fc: layer.fc1,
            proj: layer.fc2,
            layout: self.vit_layout(),
            activation: self.cfg.encoder.hidden_act,
            eps: self.cfg.encoder.layer_norm_eps,
        }
    }

    fn enc_dims(&self, batch: usize) -> Dims {
        let e = &self.cfg.encoder;
        Dims::new(
            batch,
            e.num_attention_heads,
            e.tokens(),
            e.tokens(),
            e.head_dim(),
        )
    }

    /// One pre-LN block: x → x + attention(LayerNorm(x)) → + MLP; returns its output and what
    /// its backward keeps.
    pub(super) fn enc_block(
        &self,
        step: &mut Step,
        dims: Dims,
        layer: &EncLayer,
        x: Tensor,
    ) -> Result<(Tensor, BlockActs)> {
        let eps = self.cfg.encoder.layer_norm_eps;
        let (a, s1) = layernorm(step, &x, self.w(layer.ln1.0), self.w(layer.ln1.1), eps)?;
        let qkv = self.lin(self.vit_layout(), step, &a, layer.qkv)?;
        let (attn, probs) = attention(
            step,
            dims,
            Seq::part(&qkv, 0, 3),
            Seq::part(&qkv, 1, 3),
            Seq::part(&qkv, 2, 3),
            Masks::default(),
        )?;
        let x_mid = self.lin_residual(self.vit_layout(), step, &attn, layer.out, &x)?;
        let (x_out, mlp) = self.mlp(step, &x_mid, &self.enc_mlp(layer))?;
        let acts = BlockActs {
            x,
            ln1: (a, s1),
            qkv,
            probs,
            attn,
            x_mid,
            mlp,
        };
        Ok((x_out, acts))
    }

    /// Patch embedding, CLS and positions: the first block's input [B, T, width].
    fn enc_embed(&self, step: &mut Step, patches: &Tensor) -> Result<Tensor> {
        let l = &self.layout;
        let embedded = self.lin(self.vit_layout(), step, patches, l.patch)?;
        vit_tokens(step, &embedded, self.w(l.cls), self.w(l.pos))
    }

    /// The final LayerNorm (output, statistics) and the states the decoder attends to.
    fn enc_final(&self, step: &mut Step, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let l = &self.layout;
        let eps = self.cfg.encoder.layer_norm_eps;
        let (normed, ln_stats) = layernorm(step, x, self.w(l.enc_ln.0), self.w(l.enc_ln.1), eps)?;
        let states = match l.enc_to_dec {
            Some(p) => self.lin(self.vit_layout(), step, &normed, p)?,
            None => normed.clone(),
        };
        Ok((normed, ln_stats, states))
    }

    /// patches [B, N, C·P·P] (normalised, ordered (channel, row, column)) → encoder states.
    pub fn encode(&self, step: &mut Step, patches: &Tensor) -> Result<EncoderActs> {
        let dims = self.enc_dims(patches.shape()[0]);
        let mut x = self.enc_embed(step, patches)?;
        let mut blocks = Vec::with_capacity(self.layout.enc.len());
        for layer in &self.layout.enc {
            let (x_out, acts) = self.enc_block(step, dims, layer, x)?;
            blocks.push(acts);
            x = x_out;
        }
        let (normed, ln_stats, states) = self.enc_final(step, &x)?;
        Ok(EncoderActs {
            patches: patches.clone(),
            blocks,
            x_final: x,
            ln_stats,
            normed,
            states,
        })
    }

    /// The encoder states and the attention maps of the layers `keep` marks, and nothing else: a
    /// forward without a backward (a teacher's) drops each block's activations as it goes, so
    /// later dispatches of the same step reuse their buffers.
    pub(super) fn encode_maps(
        &self,
        step: &mut Step,
        patches: &Tensor,
        keep: &[bool],
    ) -> Result<(Tensor, LayerMaps)> {
        let dims = self.enc_dims(patches.shape()[0]);
        let mut x = self.enc_embed(step, patches)?;
        let mut maps = Vec::with_capacity(self.layout.enc.len());
        for (i, layer) in self.layout.enc.iter().enumerate() {
            let (x_out, acts) = self.enc_block(step, dims, layer, x)?;
            maps.push(keep.get(i).copied().unwrap_or(false).then_some(acts.probs));
            x = x_out;
        }
        Ok((self.enc_final(step, &x)?.2, maps))
    }

    /// Backward from d states; adds every encoder parameter's gradient into `g`.
    pub fn encode_bwd(
        &self,
        step: &mut Step,
        acts: &EncoderActs,
        dstates: &Tensor,
        dmaps: &[Option<Tensor>],
        g: &Weights,
    ) -> Result<()> {
        let l = &self.layout;
        let dims = self.enc_dims(acts.patches.shape()[0]);
        let dnormed = match l.enc_to_dec {
            Some(p) => self.lin_bwd(self.vit_layout(), step, &acts.normed, p, dstates, g)?,
            None => dstates.clone(),
        };
        let stats = (&acts.x_final, &acts.ln_stats);
        let mut dx = self.ln_bwd(step, l.enc_ln, stats, &dnormed, g, None)?;
        for (i, (layer, a)) in l.enc.iter().zip(&acts.blocks).enumerate().rev() {
            let dprobs = dmaps.get(i).and_then(Option::as_ref);
            dx = self.block_bwd(step, layer, a, dims, (dx, dprobs), g)?;
        }
        let dembedded = vit_tokens_bwd(step, &dx, &g.tensors[l.cls], &g.tensors[l.pos])?;
        // The patches are data: their gradient is not needed.
        let patch = self.grad(self.vit_layout(), l.patch, g);
        linear_bwd_params(step, &acts.patches, patch, &dembedded, None)
    }

    /// Backward of one block, from the gradients arriving at its output and at its attention
    /// map (a distillation loss on it): the forward in reverse. Returns the input's gradient.
    fn block_bwd(
        &self,
        step: &mut Step,
        layer: &EncLayer,
        a: &BlockActs,
        dims: Dims,
        (dx, dprobs): (Tensor, Option<&Tensor>),
        g: &Weights,
    ) -> Result<Tensor> {
        // x_out = x_mid + fc2(activation(fc1(ln2(x_mid))))
        let dx_mid = self.mlp_bwd(step, &a.x_mid, &self.enc_mlp(layer), &a.mlp, dx, g)?;
        // x_mid = x + out(attention(qkv(ln1 x))), query, key and value as one product
        let dattn = self.lin_bwd(self.vit_layout(), step, &a.attn, layer.out, &dx_mid, g)?;
        let saved = Saved {
            out: &a.attn,
            probs: &a.probs,
        };
        let dqkv = self_attention_bwd(step, dims, &a.qkv, saved, &dattn, dprobs)?;
        let dln1 = self.lin_bwd(self.vit_layout(), step, &a.ln1.0, layer.qkv, &dqkv, g)?;
        self.ln_bwd(step, layer.ln1, (&a.x, &a.ln1.1), &dln1, g, Some(dx_mid))
    }
}
