//! The attention core: P = softmax(scale · Q Kᵀ + masks), O = P V, with P kept as an output (the
//! distillation losses read it), and its backward: launchers for `shaders/attention.wgsl`.
//!
//! Q, K and V are [`Seq`] views: columns `off .. off + H·D` of a [batch, tokens, stride] buffer.
//! So they are read straight from the projections, fused (GPT-2's c_attn: Q, K, V side by side)
//! or not (ViT's query/key/value), and the head split and merge are strides, never copies. The
//! backward writes dQ, dK, dV into views of the same kind. P is kept as [`Probs`]: rows padded to
//! whole vec4s, as the kernels read and write them; [`Probs::maps`] gives the plain maps.

use super::softmax::Masks;
use super::{groups, u32_of};
use crate::error::{shape_err, Result};
use crate::gpu::{Access::Image as I, Access::Read as R, Access::ReadWrite as W};
use crate::gpu::{Image, Kernel, Step, Tensor};
use std::sync::Arc;

pub const SCORES: Kernel = Kernel::new("attention", "attention_scores", &[R, R, W]);
/// The masked softmax, one pipeline per mask (the shader's CAUSAL and KEY_MASK constants; see
/// `Kernel::specialised`), indexed by causal | key_mask << 1.
pub const SOFTMAX: [Kernel; 4] = [
    softmax("attention_softmax", &[("CAUSAL", 0.0), ("KEY_MASK", 0.0)]),
    softmax(
        "attention_softmax_causal",
        &[("CAUSAL", 1.0), ("KEY_MASK", 0.0)],
    ),
    softmax(
        "attention_softmax_keys",
        &[("CAUSAL", 0.0), ("KEY_MASK", 1.0)],
    ),
    softmax(
        "attention_softmax_causal_keys",
        &[("CAUSAL", 1.0), ("KEY_MASK", 1.0)],
    ),
];

const fn softmax(name: &'static str, constants: &'static [(&'static str, f64)]) -> Kernel {
    Kernel::specialised(name, "attention", "attention_softmax", &[R, W], constants)
}

/// D = rowsum(P ⊙ dP) from dO and O, [without, with] a gradient arriving at P itself (the
/// EXTRA_DP constant: its rowsum(P ⊙ extra) is added).
pub const ROW_DOTS: [Kernel; 2] = without_and_with_extra(
    ["attention_row_dots", "attention_row_dots_extra"],
    "attention_row_dots",
    &[R, R, W, R, R],
);

/// dS from dO, V, P and D, likewise [without, with] the extra gradient at P.
pub const DSCORES: [Kernel; 2] = without_and_with_extra(
    ["attention_dscores", "attention_dscores_extra"],
    "attention_dscores",
    &[R, R, W, R, R, R],
);

/// DSCORES reading dO and V from images (`Gpu::image_operands`).
pub const DSCORES_IMAGE: [Kernel; 2] = without_and_with_extra(
    ["attention_dscores_image", "attention_dscores_image_extra"],
    "attention_dscores_image",
    &[R, R, W, R, R, R, I, I],
);

const fn without_and_with_extra(
    names: [&'static str; 2],
    entry: &'static str,
    bindings: &'static [crate::gpu::Access],
) -> [Kernel; 2] {
    [
        Kernel::specialised(names[0], "attention", entry, bindings, &[("EXTRA_DP", 0.0)]),
        Kernel::specialised(names[1], "attention", entry, bindings, &[("EXTRA_DP", 1.0)]),
    ]
}

pub const APPLY: Kernel = Kernel::new("attention", "attention_apply", &[R, R, W]);
/// SCORES and APPLY reading their sequences from images (`Gpu::image_operands`).
pub const SCORES_IMAGE: Kernel =
    Kernel::new("attention", "attention_scores_image", &[R, R, W, I, I]);
/// SCORES_IMAGE with each texel fetched once per subgroup (`Gpu::subgroup_matmul`), for maps of
/// at least SUBGROUP_TILE query rows.
pub const SCORES_SUBGROUP: Kernel = Kernel::new(
    "attention_subgroup",
    "attention_scores_subgroup",
    &[R, R, W, I, I],
);
/// APPLY_IMAGE (not transposed) with a tile per subgroup, likewise, for heads at least
/// SUBGROUP_APPLY_COLUMNS wide.
pub const APPLY_SUBGROUP: Kernel = Kernel::new(
    "attention_subgroup",
    "attention_apply_subgroup",
    &[R, R, W, I],
);
/// The subgroup kernels' tiles: 32 query rows by 32 keys (scores) or 64 columns of the head
/// (apply).
const SUBGROUP_TILE: usize = 32;
const SUBGROUP_APPLY_COLUMNS: usize = 64;
/// SCORES_IMAGE and APPLY_IMAGE (not transposed) for one query row, a generated token's: the
/// blocked kernels would compute 7 idle rows of every 8.
pub const SCORES_ROW_IMAGE: Kernel =
    Kernel::new("attention", "attention_scores_row_image", &[R, R, W, I, I]);
pub const APPLY_ROW_IMAGE: Kernel =
    Kernel::new("attention", "attention_apply_row_image", &[R, R, W, I]);
/// SCORES_ROW_IMAGE, the softmax and APPLY_ROW_IMAGE in one dispatch, one workgroup per (batch,
/// head): a generated token's attention where the maps are not kept ([`attention_out`]).
pub const ROW_IMAGE: Kernel = Kernel::new("attention", "attention_row_image", &[R, R, W, I, I, I]);
/// The most keys ROW_IMAGE takes (the shader's ROW_KEYS: its scores wait in workgroup memory).
const ROW_KEYS: usize = 1024;
/// APPLY reading Z from an image and the map as vec4s, [W Z, Wᵀ Z] (the TRANSPOSED constant).
pub const APPLY_IMAGE: [Kernel; 2] = [
    Kernel::specialised(
        "attention_apply_image",
        "attention",
        "attention_apply_image",
        &[R, R, W, I],
        &[("TRANSPOSED", 0.0)],
    ),
    Kernel::specialised(
        "attention_apply_image_transposed",
        "attention",
        "attention_apply_image",
        &[R, R, W, I],
        &[("TRANSPOSED", 1.0)],
    ),
];
/// The maps without their rows' padding (see [`Probs::maps`]).
pub const UNPAD: Kernel = Kernel::new("attention", "attention_unpad", &[R, W]);
/// UNPAD four cells to an invocation, where the maps hold a multiple of 4 cells.
pub const UNPAD4: Kernel = Kernel::new("attention", "attention_unpad4", &[R, W]);

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
    alpha: f32,
    transposed: u32,
    x: [u32; 2],
    y: [u32; 2],
    o: [u32; 2],
    row: u32,
    /// `ROW_IMAGE`: V's first column (its image's texels; see the shader).
    z_off: u32,
    _pad: u32,
}

/// Images of the sequences one attention call reads, each tensor copied once: Q, K and V are
/// usually parts of one fused projection, and the backward reads them and dO in several products.
/// A tensor's image holds all its rows (token (b, t) is image row b·len + t). The call's outputs
/// never alias its inputs, so the images stay current through it.
#[derive(Default)]
struct SeqImages(Vec<(Tensor, Option<Arc<Image>>)>);

impl SeqImages {
    /// The index of `s`'s image, when the device reads operands from images and the sequence's
    /// heads start on whole texels; `None` sends the kernel to its buffer version.
    fn of(&mut self, step: &mut Step, d: &Dims, s: &Seq) -> Result<Option<usize>> {
        if !s.off.is_multiple_of(4) || !d.head_dim.is_multiple_of(4) {
            return Ok(None);
        }
        let held = |t: &Tensor| t.same_buffer(s.t) && t.offset() == s.t.offset();
        let i = match self.0.iter().position(|(t, _)| held(t)) {
            Some(i) => i,
            None => {
                let image = step
                    .operand_images(&[s.t], s.stride)?
                    .and_then(|mut v| v.pop());
                self.0.push((s.t.clone(), image));
                self.0.len() - 1
            }
        };
        Ok(self.0[i].1.is_some().then_some(i))
    }

    fn get(&self, i: usize) -> &Image {
        self.0[i]
            .1
            .as_deref()
            .expect("of() returns the indices of images only")
    }
}

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub q_len: usize,
    pub k_len: usize,
    pub head_dim: usize,
    /// What scores are scaled by: 1/√head_dim, and further divided by the layer's index + 1
    /// under GPT-2's scale_attn_by_inverse_layer_idx.
    pub scale: f32,
}

impl Dims {
    /// Sizes with the usual 1/√head_dim scale.
    pub fn new(batch: usize, heads: usize, q_len: usize, k_len: usize, head_dim: usize) -> Dims {
        Dims {
            batch,
            heads,
            q_len,
            k_len,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
        }
    }

    fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// The maps' row length: Tk padded to whole vec4s.
    fn row(&self) -> usize {
        self.k_len.next_multiple_of(4)
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

    /// Parameters of one kernel: `x`, `y`, `o` are the sequence views it reads and writes (see
    /// the shader), unused ones `None`.
    fn params(&self, alpha: f32, transposed: bool, views: [Option<&Seq>; 3]) -> Result<Params> {
        let u = |x| u32_of("attention", "size", x);
        let pair = |s: Option<&Seq>| -> Result<[u32; 2]> {
            s.map_or(Ok([0, 0]), |s| Ok([u(s.off)?, u(s.stride)?]))
        };
        Ok(Params {
            batch: u(self.batch)?,
            heads: u(self.heads)?,
            tq: u(self.q_len)?,
            tk: u(self.k_len)?,
            hd: u(self.head_dim)?,
            alpha,
            transposed: transposed as u32,
            x: pair(views[0])?,
            y: pair(views[1])?,
            o: pair(views[2])?,
            row: u(self.row())?,
            z_off: 0,
            _pad: 0,
        })
    }

    /// Invocations of a kernel giving each (batch, head) `rows` × `cols` in 8 × 8 blocks.
    fn blocks(&self, rows: usize, cols: usize) -> usize {
        self.batch * self.heads * rows.div_ceil(8) * cols.div_ceil(8)
    }

    /// Invocations of a one-query-row kernel giving each (batch, head) `width` of its `cols`.
    fn row_pieces(&self, cols: usize, width: usize) -> usize {
        self.batch * self.heads * cols.div_ceil(width)
    }

    /// Invocations of a kernel with one per row of the maps.
    fn rows(&self) -> usize {
        self.batch * self.heads * self.q_len
    }
}

/// Attention probabilities as the kernels keep them: [B, H, Tq, row], each row's Tk cells
/// followed by zeros up to `row`, a multiple of 4, so that the kernels move the maps as vec4s.
#[derive(Clone, Debug)]
pub struct Probs {
    t: Tensor,
    k_len: usize,
}

impl Probs {
    /// The padded tensor [B, H, Tq, row].
    pub fn padded(&self) -> &Tensor {
        &self.t
    }

    /// The maps [B, H, Tq, Tk]: the tensor itself where Tk needs no padding, else a copy without
    /// it, recorded into `step`.
    pub fn maps(&self, step: &mut Step) -> Result<Tensor> {
        let s = self.t.shape();
        let (row, tk) = (s[3], self.k_len);
        if row == tk {
            return Ok(self.t.clone());
        }
        let out = step.empty(&[s[0], s[1], s[2], tk])?;
        let u = |x| u32_of("attention", "size", x);
        let p = Params {
            batch: u(s[0])?,
            heads: u(s[1])?,
            tq: u(s[2])?,
            tk: u(tk)?,
            row: u(row)?,
            ..Default::default()
        };
        if out.numel().is_multiple_of(4) {
            step.dispatch_linear(&UNPAD4, &p, &[&self.t, &out], groups(out.numel() / 4, 256))?;
        } else {
            step.dispatch_linear(&UNPAD, &p, &[&self.t, &out], groups(out.numel(), 256))?;
        }
        Ok(out)
    }
}

/// S = scale · Q Kᵀ [B, H, Tq, row] (Tq rows of Q, Tk of K; rows padded as in [`Probs`]).
fn scores(step: &mut Step, d: Dims, x: &Seq, y: &Seq, images: &mut SeqImages) -> Result<Tensor> {
    let map = step.empty(&[d.batch, d.heads, d.q_len, d.row()])?;
    let p = d.params(d.scale, false, [Some(x), Some(y), None])?;
    let n = groups(d.blocks(d.q_len, d.k_len), 64);
    let tensors = [x.t, y.t, &map];
    if let (Some(ix), Some(iy)) = (images.of(step, &d, x)?, images.of(step, &d, y)?) {
        let im = [images.get(ix), images.get(iy)];
        let (kernel, n) = if d.q_len == 1 {
            // 1 × 8 cells per invocation (see the shader).
            (&SCORES_ROW_IMAGE, groups(d.row_pieces(d.k_len, 8), 64))
        } else if d.q_len >= SUBGROUP_TILE && step.gpu().subgroup_matmul() {
            // A workgroup of 8 per tile (see the shader).
            let tiles = d.q_len.div_ceil(SUBGROUP_TILE) * d.k_len.div_ceil(SUBGROUP_TILE);
            (&SCORES_SUBGROUP, (d.batch * d.heads * tiles) as u64)
        } else {
            (&SCORES_IMAGE, n)
        };
        step.dispatch_linear_images(kernel, &p, &tensors, &im, n)?;
    } else {
        step.dispatch_linear(&SCORES, &p, &tensors, n)?;
    }
    Ok(map)
}

/// `out` = W Z for the map W [B, H, Tq, Tk] (kept with padded rows, see [`Probs`]; or Wᵀ Z when
/// `transposed`): O = P V and the backward products.
fn apply(
    step: &mut Step,
    d: Dims,
    map: &Tensor,
    transposed: bool,
    z: &Seq,
    out: &Seq,
    images: &mut SeqImages,
) -> Result<()> {
    let p = d.params(1.0, transposed, [Some(z), None, Some(out)])?;
    let rows = if transposed { d.k_len } else { d.q_len };
    let tensors = [map, z.t, out.t];
    // The image kernel stores the output's rows as vec4s.
    let out_vec4 = out.off.is_multiple_of(4) && out.stride.is_multiple_of(4);
    let iz = if out_vec4 {
        images.of(step, &d, z)?
    } else {
        None
    };
    match iz {
        Some(iz) if rows == 1 && !transposed => {
            // 4 of the row's columns per invocation (see the shader).
            let n = groups(d.row_pieces(d.head_dim, 4), 64);
            step.dispatch_linear_images(&APPLY_ROW_IMAGE, &p, &tensors, &[images.get(iz)], n)
        }
        Some(iz)
            if !transposed
                && rows >= SUBGROUP_TILE
                && d.head_dim >= SUBGROUP_APPLY_COLUMNS
                && step.gpu().subgroup_matmul() =>
        {
            // A workgroup of 8 per tile (see the shader).
            let tiles = rows.div_ceil(SUBGROUP_TILE) * d.head_dim.div_ceil(SUBGROUP_APPLY_COLUMNS);
            let n = (d.batch * d.heads * tiles) as u64;
            step.dispatch_linear_images(&APPLY_SUBGROUP, &p, &tensors, &[images.get(iz)], n)
        }
        Some(iz) => {
            // Blocks of 8 rows × 16 columns (see the shader).
            let n = groups(d.blocks(rows, d.head_dim.div_ceil(16) * 8), 64);
            let kernel = &APPLY_IMAGE[transposed as usize];
            step.dispatch_linear_images(kernel, &p, &tensors, &[images.get(iz)], n)
        }
        None => {
            let n = groups(d.blocks(rows, d.head_dim), 64);
            step.dispatch_linear(&APPLY, &p, &tensors, n)
        }
    }
}

/// Forward: returns (O [B, Tq, H·D], P).
pub fn attention(
    step: &mut Step,
    d: Dims,
    q: Seq,
    k: Seq,
    v: Seq,
    masks: Masks,
) -> Result<(Tensor, Probs)> {
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
    let mut images = SeqImages::default();
    let probs = scores(step, d, &q, &k, &mut images)?;
    let p = d.params(1.0, false, [None; 3])?;
    let mask = masks.key_mask.unwrap_or(q.t);
    let softmax = &SOFTMAX[masks.causal as usize | (masks.key_mask.is_some() as usize) << 1];
    step.dispatch_linear(softmax, &p, &[mask, &probs], groups(d.rows(), 64))?;
    let out = step.empty(&[d.batch, d.q_len, d.width()])?;
    apply(step, d, &probs, false, &v, &Seq::whole(&out), &mut images)?;
    let probs = Probs {
        t: probs,
        k_len: d.k_len,
    };
    Ok((out, probs))
}

/// [`attention`]'s output alone, O [B, Tq, H·D], for callers that do not keep the maps (a
/// generated token's layers): at one query row on a device that reads images, one dispatch
/// ([`ROW_IMAGE`]) instead of three, with the same bits.
pub fn attention_out(step: &mut Step, d: Dims, q: Seq, k: Seq, v: Seq) -> Result<Tensor> {
    if d.q_len == 1 && d.k_len <= ROW_KEYS && d.heads > 0 && d.head_dim > 0 {
        d.check("q", &q, d.q_len)?;
        d.check("k", &k, d.k_len)?;
        d.check("v", &v, d.k_len)?;
        let mut images = SeqImages::default();
        let (iq, ik, iv) = (
            images.of(step, &d, &q)?,
            images.of(step, &d, &k)?,
            images.of(step, &d, &v)?,
        );
        if let (Some(iq), Some(ik), Some(iv)) = (iq, ik, iv) {
            let out = step.empty(&[d.batch, 1, d.width()])?;
            let p = Params {
                z_off: u32_of("attention", "size", v.off)?,
                ..d.params(
                    d.scale,
                    false,
                    [Some(&q), Some(&k), Some(&Seq::whole(&out))],
                )?
            };
            let im = [images.get(iq), images.get(ik), images.get(iv)];
            let tensors = [q.t, k.t, &out];
            step.dispatch_linear_images(&ROW_IMAGE, &p, &tensors, &im, (d.batch * d.heads) as u64)?;
            return Ok(out);
        }
    }
    Ok(attention(step, d, q, k, v, Masks::default())?.0)
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

/// What [`attention`] returned, as its backward needs it: O [B, Tq, H·D] and P [B, H, Tq, Tk].
pub struct Saved<'a> {
    pub out: &'a Tensor,
    pub probs: &'a Probs,
}

/// Backward: from dO [B, Tq, H·D] and the forward's O and P, writes dQ, dK, dV.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    step: &mut Step,
    d: Dims,
    q: Seq,
    k: Seq,
    v: Seq,
    saved: Saved,
    dout: &Tensor,
    grads: Grads,
) -> Result<()> {
    let probs = &saved.probs.t;
    let (tq, tk) = (d.q_len, d.k_len);
    if probs.shape() != [d.batch, d.heads, tq, d.row()] || saved.probs.k_len != tk {
        return shape_err(
            "attention_bwd",
            format!("probs {:?} do not match {d:?}", probs.shape()),
        );
    }
    if let Some(extra) = grads.dprobs {
        if extra.shape() != [d.batch, d.heads, tq, tk] {
            return shape_err(
                "attention_bwd",
                format!(
                    "dprobs {:?} do not match the maps [B, H, Tq, Tk] of {d:?}",
                    extra.shape()
                ),
            );
        }
    }
    let (dout_seq, out_seq) = (Seq::whole(dout), Seq::whole(saved.out));
    for (what, s) in [("dout", &dout_seq), ("out", &out_seq)] {
        if s.stride != d.width() {
            return shape_err(
                "attention_bwd",
                format!("{what} {:?} must be [B, Tq, H·D]", s.t.shape()),
            );
        }
    }
    for (what, s, len) in [
        ("q", &q, tq),
        ("k", &k, tk),
        ("v", &v, tk),
        ("dout", &dout_seq, tq),
        ("out", &out_seq, tq),
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
    // dP = dO Vᵀ (+ extra); D = rowsum(P ⊙ dP) = dO·O (+ rowsum(P ⊙ extra));
    // dS = scale · P ⊙ (dP − D); dQ = dS K; dK = dSᵀ Q; dV = Pᵀ dO.
    let with_extra = grads.dprobs.is_some() as usize;
    let extra = grads.dprobs.unwrap_or(probs);
    let dots = step.empty(&[d.batch, d.heads, tq])?;
    let p = d.params(1.0, false, [Some(&dout_seq), None, Some(&out_seq)])?;
    let tensors = [dout, saved.out, &dots, probs, extra];
    step.dispatch_linear(&ROW_DOTS[with_extra], &p, &tensors, groups(d.rows(), 64))?;
    let mut images = SeqImages::default();
    let dscores = step.empty(probs.shape())?;
    let p = d.params(d.scale, false, [Some(&dout_seq), Some(&v), None])?;
    let tensors = [dout, v.t, &dscores, probs, extra, &dots];
    let n = groups(d.blocks(tq, tk), 64);
    if let (Some(ix), Some(iy)) = (images.of(step, &d, &dout_seq)?, images.of(step, &d, &v)?) {
        let im = [images.get(ix), images.get(iy)];
        step.dispatch_linear_images(&DSCORES_IMAGE[with_extra], &p, &tensors, &im, n)?;
    } else {
        step.dispatch_linear(&DSCORES[with_extra], &p, &tensors, n)?;
    }
    apply(step, d, &dscores, false, &k, &grads.dq, &mut images)?;
    apply(step, d, &dscores, true, &q, &grads.dk, &mut images)?;
    apply(step, d, probs, true, &dout_seq, &grads.dv, &mut images)?;
    Ok(())
}
