//! Launcher for `shaders/amad.wgsl`: the attention-distillation losses with their gradients.

use super::reduce::{sum_segments, SumInto};
use super::{groups, u32_of};
use crate::error::{shape_err, Result};
use crate::gpu::{Access::Read as R, Access::ReadWrite as W, Kernel, Step, Tensor};
pub use crate::reference::amad::Variant;

/// Every kernel of the family binds the same buffers: teacher, student, mask, loss, grad,
/// weights, scratch, state (see the shader's header for the passes).
const BINDINGS: &[crate::gpu::Access] = &[R, R, R, W, W, W, W, W];
pub const ALIGN_STATS: Kernel = Kernel::new("amad", "align_stats", BINDINGS);
pub const ALIGN_SUM: Kernel = Kernel::new("amad", "align_sum", BINDINGS);
pub const ALIGN_WEIGHTS: Kernel = Kernel::new("amad", "align_weights", BINDINGS);
pub const ALIGN_KL: Kernel = Kernel::new("amad", "align_kl", BINDINGS);
pub const ALIGN_KL_DW: Kernel = Kernel::new("amad", "align_kl_dw", BINDINGS);
pub const ALIGN_GRAD: Kernel = Kernel::new("amad", "align_grad", BINDINGS);
pub const ALIGN_REDUCE: Kernel = Kernel::new("amad", "align_reduce", BINDINGS);
pub const ONE_TO_ONE_COUNT: Kernel = Kernel::new("amad", "one_to_one_count", BINDINGS);
pub const ONE_TO_ONE: Kernel = Kernel::new("amad", "one_to_one", BINDINGS);
pub const ONE_TO_ONE_FINISH: Kernel = Kernel::new("amad", "one_to_one_finish", BINDINGS);

/// Cells per invocation (the shader's CHUNK).
const CHUNK: usize = 64;

/// Heads per map the kernel supports (its per-example statistics live in registers).
pub const MAX_HEADS: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    ht: u32,
    hs: u32,
    q: u32,
    k: u32,
    flags: u32,
    inv_tau: f32,
    grad_scale: f32,
    segs: u32,
    seg_len: u32,
    chunks: u32,
    width: u32,
    sums_at: u32,
    units: u32,
    pad: [u32; 2],
}

/// How to align: the loss, the temperature of the alignment softmax, and whether gradients flow
/// through the alignment weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    pub variant: Variant,
    pub tau: f32,
    pub detach_weights: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            variant: Variant::Kl,
            tau: 1.0,
            detach_weights: false,
        }
    }
}

/// The result: loss [1] (summed over teacher heads, mean over the batch), the gradient of
/// `upstream · loss` w.r.t. the student maps [B, Hs, q, k], and the alignment weights [B, Ht, Hs].
pub struct Alignment {
    pub loss: Tensor,
    pub grad: Tensor,
    pub weights: Tensor,
}

/// Aligns student maps [B, Hs, q, k] to teacher maps [B, Ht, q, k] (rows already softmaxed;
/// `mask` [B, q, k] marks valid cells with 1).
pub fn align(
    step: &mut Step,
    teacher: &Tensor,
    student: &Tensor,
    mask: Option<&Tensor>,
    opts: Options,
    upstream: f32,
) -> Result<Alignment> {
    const OP: &str = "align";
    let (st, ss) = (teacher.shape(), student.shape());
    if st.len() != 4 || ss.len() != 4 || st[0] != ss[0] || st[2..] != ss[2..] {
        return shape_err(
            OP,
            format!("need teacher [B, Ht, q, k] and student [B, Hs, q, k], got {st:?} and {ss:?}"),
        );
    }
    let (b, ht, hs, q, k) = (st[0], st[1], ss[1], st[2], st[3]);
    if ht > MAX_HEADS || hs > MAX_HEADS {
        return shape_err(
            OP,
            format!("{ht} teacher and {hs} student heads; at most {MAX_HEADS} each are supported"),
        );
    }
    if let Some(m) = mask {
        if m.shape() != [b, q, k] {
            return shape_err(
                OP,
                format!(
                    "mask must be [B, q, k] = [{b}, {q}, {k}], got {:?}",
                    m.shape()
                ),
            );
        }
    }
    if !(opts.tau > 0.0 && opts.tau.is_finite()) {
        return shape_err(
            OP,
            format!("tau must be positive and finite, got {}", opts.tau),
        );
    }
    let (one_to_one, mode) = match opts.variant {
        Variant::Mse => (false, 1),
        Variant::Kl => (false, 0),
        Variant::TokenKl => (false, 2),
        Variant::OneToOneMse => (true, 1),
        Variant::OneToOneKl => (true, 0),
    };
    // Units (segments of examples) and their chunks of CHUNK cells.
    let (segs, seg_len) = if mode == 2 { (q, k) } else { (1, q * k) };
    let chunks = seg_len.div_ceil(CHUNK);
    let units = b * segs;
    // Scratch: partials [units, chunks, width] then their sums [units, width], for the wider of
    // the two partial layouts (statistics; KL loss and dA).
    let width = (ht * hs + hs * hs + 2 * ht + hs + 1).max(1 + ht * hs);
    let state_size = 3 * ht * hs + 2 * ht + 4 * hs + 2;
    let mut p = Params {
        batch: u32_of(OP, "batch", b)?,
        ht: ht as u32,
        hs: hs as u32,
        q: u32_of(OP, "q", q)?,
        k: u32_of(OP, "k", k)?,
        flags: mode | (opts.detach_weights as u32) << 2 | (mask.is_some() as u32) << 3,
        inv_tau: 1.0 / opts.tau,
        grad_scale: upstream / b as f32,
        segs: u32_of(OP, "segments", segs)?,
        seg_len: u32_of(OP, "segment length", seg_len)?,
        chunks: u32_of(OP, "chunks", chunks)?,
        width: 0,
        sums_at: u32_of(OP, "scratch", units * chunks * width)?,
        units: u32_of(OP, "units", units)?,
        pad: [0; 2],
    };
    let per_example = step.empty(&[b])?;
    let grad = step.empty(ss)?;
    let weights = step.empty(&[b, ht, hs])?;
    let scratch = step.empty(&[units * (chunks + 1) * width])?;
    let state = step.empty(&[units * state_size])?;
    let mask = mask.unwrap_or(teacher);
    let bufs = [
        teacher,
        student,
        mask,
        &per_example,
        &grad,
        &weights,
        &scratch,
        &state,
    ];
    let pieces = groups(units * chunks, 256);
    if one_to_one {
        step.dispatch_linear(&ONE_TO_ONE_COUNT, &p, &bufs, groups(b, 64))?;
        step.dispatch_linear(&ONE_TO_ONE, &p, &bufs, pieces)?;
        step.dispatch_linear(&ONE_TO_ONE_FINISH, &p, &bufs, groups(b, 64))?;
    } else {
        // The per-cell passes, built for these head counts (the shader's HT and HS).
        let heads = [("HT", ht as u32), ("HS", hs as u32)];
        let stats_width = ht * hs + hs * hs + 2 * ht + hs + 1;
        p.width = stats_width as u32;
        step.dispatch_linear(ALIGN_STATS.with(&heads), &p, &bufs, pieces)?;
        step.dispatch_linear(&ALIGN_SUM, &p, &bufs, groups(units * stats_width, 256))?;
        step.dispatch_linear(&ALIGN_WEIGHTS, &p, &bufs, groups(units, 64))?;
        if mode != 1 {
            let kl_width = 1 + ht * hs;
            p.width = kl_width as u32;
            step.dispatch_linear(ALIGN_KL.with(&heads), &p, &bufs, pieces)?;
            step.dispatch_linear(&ALIGN_SUM, &p, &bufs, groups(units * kl_width, 256))?;
            step.dispatch_linear(&ALIGN_KL_DW, &p, &bufs, groups(units, 64))?;
        }
        step.dispatch_linear(ALIGN_GRAD.with(&heads), &p, &bufs, pieces)?;
        step.dispatch_linear(&ALIGN_REDUCE, &p, &bufs, groups(b * (ht * hs + 1), 256))?;
    }
    let loss = step.empty(&[1])?;
    let mean = SumInto {
        scale: 1.0 / b as f32,
        ..SumInto::new(&loss)
    };
    sum_segments(step, &per_example, 1, mean)?;
    Ok(Alignment {
        loss,
        grad,
        weights,
    })
}
