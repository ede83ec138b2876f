//! The pre-LN MLP sublayer both stacks share: y = x + proj(activation(fc(LayerNorm(x)))), forward and
//! backward. The ViT uses nn.Linear weights and exact GELU, GPT-2 Conv1D weights and tanh GELU.

use super::linear::{linear_activation, linear_bwd, Dx, Layout};
use super::{Model, Weights};
use crate::error::Result;
use crate::gpu::{Step, Tensor};
use crate::ops::elementwise::Activation;
use crate::ops::layernorm::layernorm;

/// Which parameters and forms a sublayer uses.
pub struct Mlp {
    pub ln: (usize, usize),
    pub fc: (usize, usize),
    pub proj: (usize, usize),
    pub layout: Layout,
    pub activation: Activation,
    pub eps: f32,
}

/// What the sublayer keeps for its backward (its input is kept by the caller).
pub struct MlpActs {
    normed: Tensor,
    stats: Tensor,
    hidden: Tensor,
    act: Tensor,
}

impl Model {
    pub(super) fn mlp(&self, step: &mut Step, x: &Tensor, p: &Mlp) -> Result<(Tensor, MlpActs)> {
        let (normed, stats) = layernorm(step, x, self.w(p.ln.0), self.w(p.ln.1), p.eps)?;
        let (w, b) = p.fc;
        let (hidden, act) =
            linear_activation(step, &normed, self.w(w), self.w(b), p.layout, p.activation)?;
        let y = self.lin_residual(p.layout, step, &act, p.proj, x)?;
        Ok((
            y,
            MlpActs {
                normed,
                stats,
                hidden,
                act,
            },
        ))
    }

    /// From dy, adds the sublayer's parameter gradients into `g` and returns dx (through the
    /// branch and the residual): dy's tensor, with the branch's gradient added into it.
    pub(super) fn mlp_bwd(
        &self,
        step: &mut Step,
        x: &Tensor,
        p: &Mlp,
        a: &MlpActs,
        dy: Tensor,
        g: &Weights,
    ) -> Result<Tensor> {
        // y = x + proj(activation(fc(ln(x)))): proj's backward returns the gradient through the
        // activation, at fc's output.
        let through = Dx::ThroughActivation {
            hidden: &a.hidden,
            kind: p.activation,
        };
        let proj = self.grad(p.layout, p.proj, g);
        let dhidden = linear_bwd(step, &a.act, proj, &dy, through)?;
        let dnormed = self.lin_bwd(p.layout, step, &a.normed, p.fc, &dhidden, g)?;
        self.ln_bwd(step, p.ln, (x, &a.stats), &dnormed, g, Some(dy))
    }
}
