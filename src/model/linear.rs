//! Linear maps in both of transformers' weight layouts, forward and backward, over the last
//! dimension of any [.., in] activation. The backward accumulates into the gradient tensors, so
//! parameters used twice (the tied token embedding) sum their gradients.

use crate::error::{shape_err, Result};
use crate::gpu::{Step, Tensor};
use crate::ops::elementwise::{activation, activation_bwd, pad_rows, Activation};
use crate::ops::matmul::{Epilogue, Gemm, View};
use crate::ops::reduce::sum_columns;

/// How a weight matrix is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// torch.nn.Linear: [out, in] (the ViT, enc_to_dec_proj, the tied LM head).
    OutIn,
    /// GPT-2's Conv1D: [in, out].
    InOut,
}

fn dims(op: &'static str, x: &Tensor, w: &Tensor, layout: Layout) -> Result<(usize, usize, usize)> {
    let ws = w.shape();
    let (out, inp) = match (layout, ws.len()) {
        (Layout::OutIn, 2) => (ws[0], ws[1]),
        (Layout::InOut, 2) => (ws[1], ws[0]),
        // The patch embedding's convolution weight [out, C, P, P] is a linear map of patches.
        (Layout::OutIn, _) if !ws.is_empty() => (ws[0], w.numel() / ws[0]),
        _ => return shape_err(op, format!("weight {ws:?} is not a matrix")),
    };
    let cols = *x.shape().last().unwrap_or(&0);
    if cols != inp {
        return shape_err(
            op,
            format!(
                "input {:?} is {cols} wide, the weight {ws:?} takes {inp}",
                x.shape()
            ),
        );
    }
    Ok((x.numel() / inp, inp, out))
}

/// W read as the k × n right operand of x·W: element (i, o).
fn weight_view<'a>(w: &'a Tensor, layout: Layout, inp: usize, out: usize) -> View<'a> {
    match layout {
        Layout::OutIn => View {
            t: w,
            off: 0,
            rs: 1,
            cs: inp,
            bs: [0, 0],
        },
        Layout::InOut => View {
            t: w,
            off: 0,
            rs: out,
            cs: 1,
            bs: [0, 0],
        },
    }
}

/// `v` read transposed: element (i, j) is its element (j, i).
fn transposed(v: View<'_>) -> View<'_> {
    View {
        rs: v.cs,
        cs: v.rs,
        ..v
    }
}

fn plain(t: &Tensor, cols: usize) -> View<'_> {
    View {
        t,
        off: 0,
        rs: cols,
        cs: 1,
        bs: [0, 0],
    }
}

/// y = x·W (+ b), y [.., out].
pub fn linear(
    step: &mut Step,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    layout: Layout,
) -> Result<Tensor> {
    linear_plus(step, x, w, b, layout, None)
}

/// y = x·Wᵀ for W [out, in] held as row blocks, (first row, block) in row order (see
/// `Weights::row_blocks`): each block's product fills its columns of y, [.., out].
pub fn linear_row_blocks(
    step: &mut Step,
    x: &Tensor,
    blocks: &[(usize, Tensor)],
) -> Result<Tensor> {
    let [(_, first), rest @ ..] = blocks else {
        return shape_err("linear", "a weight of no rows");
    };
    if rest.is_empty() {
        return linear(step, x, first, None, Layout::OutIn);
    }
    let (last_row, last) = &blocks[blocks.len() - 1];
    let out = last_row + last.shape()[0];
    let (rows, inp, _) = dims("linear", x, first, Layout::OutIn)?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap() = out;
    let y = step.empty(&shape)?;
    for (row, w) in blocks {
        let (_, _, n) = dims("linear", x, w, Layout::OutIn)?;
        Gemm {
            m: rows,
            n,
            k: inp,
            batch: [1, 1],
            a: plain(x, inp),
            b: weight_view(w, Layout::OutIn, inp, n),
            c: View {
                off: *row,
                ..plain(&y, out)
            },
            bias: None,
            alpha: 1.0,
            accumulate: false,
        }
        .record(step)?;
    }
    Ok(y)
}

/// y = residual + x·W (+ b), a residual connection: y starts as a copy of `residual` and the
/// product adds into it, where an add after the product would load both and store again.
pub fn linear_residual(
    step: &mut Step,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    layout: Layout,
    residual: &Tensor,
) -> Result<Tensor> {
    linear_plus(step, x, w, b, layout, Some(residual))
}

fn linear_plus(
    step: &mut Step,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    layout: Layout,
    residual: Option<&Tensor>,
) -> Result<Tensor> {
    let (rows, inp, out) = dims("linear", x, w, layout)?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap() = out;
    let y = step.empty(&shape)?;
    if let Some(r) = residual {
        if r.shape() != shape {
            return shape_err(
                "linear",
                format!(
                    "residual {:?} does not match the output {shape:?}",
                    r.shape()
                ),
            );
        }
        step.copy_into(r, &y, 0)?;
    }
    forward_gemm(x, w, b, layout, &y, (rows, inp, out), residual.is_some()).record(step)?;
    Ok(y)
}

/// The product y (+)= x·W (+ b), for x of `rows` × `inp` and W of `inp` × `out`.
fn forward_gemm<'a>(
    x: &'a Tensor,
    w: &'a Tensor,
    b: Option<&'a Tensor>,
    layout: Layout,
    y: &'a Tensor,
    (rows, inp, out): (usize, usize, usize),
    accumulate: bool,
) -> Gemm<'a> {
    Gemm {
        m: rows,
        n: out,
        k: inp,
        batch: [1, 1],
        a: plain(x, inp),
        b: weight_view(w, layout, inp, out),
        c: plain(y, out),
        bias: b,
        alpha: 1.0,
        accumulate,
    }
}

/// (hidden, act) = (x·W + b, GELU(hidden)), an MLP's first layer: one pass where the matmul applies
/// the GELU as it stores (see `Gemm::record_with`), else the product and then the GELU kernel.
/// Either way the same bits.
pub fn linear_activation(
    step: &mut Step,
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    layout: Layout,
    kind: Activation,
) -> Result<(Tensor, Tensor)> {
    let dims = dims("linear", x, w, layout)?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().unwrap() = dims.2;
    let hidden = step.empty(&shape)?;
    let act = step.empty(&shape)?;
    let gemm = forward_gemm(x, w, Some(b), layout, &hidden, dims, false);
    if gemm.record_with(step, Some(Epilogue::Gelu { act: &act, kind }))? {
        return Ok((hidden, act));
    }
    gemm.record(step)?;
    let act = activation(step, &hidden, kind)?;
    Ok((hidden, act))
}

/// A linear layer's weight, laid out as `layout`, and the gradients its backward adds into.
#[derive(Clone, Copy)]
pub struct Grad<'a> {
    pub w: &'a Tensor,
    pub layout: Layout,
    pub dw: &'a Tensor,
    /// The bias's gradient, for a layer with a bias.
    pub db: Option<&'a Tensor>,
}

/// The dx that [`linear_bwd`] returns.
#[derive(Clone, Copy)]
pub enum Dx<'a> {
    /// The gradient of the layer's input.
    New,
    /// The gradient one step further back: through x = GELU(hidden), so dhidden = dx ⊙
    /// GELU'(hidden) (in the product's store where the matmul can).
    ThroughActivation {
        hidden: &'a Tensor,
        kind: Activation,
    },
}

/// Backward of [`linear`]: adds dW (and db) into the gradients of `p` and returns dx as `dx` says.
pub fn linear_bwd(step: &mut Step, x: &Tensor, p: Grad, dy: &Tensor, dx: Dx) -> Result<Tensor> {
    let (dims, rows) = param_grads(step, x, p, dy)?;
    let out_dx = step.empty(x.shape())?;
    let gemm = dx_gemm(p, rows.view(), &out_dx, dims, false);
    match dx {
        Dx::New => gemm.record(step)?,
        Dx::ThroughActivation { hidden, kind } => {
            if hidden.shape() != x.shape() {
                return shape_err(
                    "linear_bwd",
                    format!(
                        "hidden {:?} does not match x {:?}",
                        hidden.shape(),
                        x.shape()
                    ),
                );
            }
            if gemm.record_with(step, Some(Epilogue::GeluSlope { hidden, kind }))? {
                return Ok(out_dx);
            }
            gemm.record(step)?;
            return activation_bwd(step, hidden, &out_dx, kind);
        }
    }
    Ok(out_dx)
}

/// Backward of [`linear`] for its parameters alone: adds dW (and db) into the gradients of `p`,
/// and dx into `add_dx_to` where given (another path's gradient of the same input: the product
/// adds it in its store); where not, the input is data and needs none.
pub fn linear_bwd_params(
    step: &mut Step,
    x: &Tensor,
    p: Grad,
    dy: &Tensor,
    add_dx_to: Option<&Tensor>,
) -> Result<()> {
    let (dims, rows) = param_grads(step, x, p, dy)?;
    let Some(t) = add_dx_to else {
        return Ok(());
    };
    if t.shape() != x.shape() {
        return shape_err(
            "linear_bwd",
            format!("dx {:?} does not match x {:?}", t.shape(), x.shape()),
        );
    }
    dx_gemm(p, rows.view(), t, dims, true).record(step)
}

/// dY's rows as the backward's products read them: dY itself, or where its rows are not whole
/// vec4s (the logits over GPT-2's 50,257 words) a copy at a pitch of whole 256-byte rows, which
/// puts both products on the vec4 and image kernels instead of the scalar one (on lavapipe that
/// kernel ran a full-size student's LM-head backward at 2 GFLOP/s, over a tenth of the step).
struct DyRows {
    t: Tensor,
    pitch: usize,
}

/// The pitch at which the backward reads dY's rows of `out` values: `out` where that is whole
/// vec4s, else the next whole 256-byte row (the memory estimate counts the copy this makes).
pub fn dy_pitch(out: usize) -> usize {
    if out.is_multiple_of(4) {
        out
    } else {
        out.next_multiple_of(64)
    }
}

impl DyRows {
    fn of(step: &mut Step, dy: &Tensor, out: usize) -> Result<DyRows> {
        let pitch = dy_pitch(out);
        let t = if pitch == out {
            dy.clone()
        } else {
            pad_rows(step, dy, pitch)?
        };
        Ok(DyRows { t, pitch })
    }

    fn view(&self) -> View<'_> {
        plain(&self.t, self.pitch)
    }
}

/// Adds dW (and db) into the gradients of `p`; returns the layer's (rows, in, out) and dY's rows
/// as the products read them.
fn param_grads(
    step: &mut Step,
    x: &Tensor,
    p: Grad,
    dy: &Tensor,
) -> Result<((usize, usize, usize), DyRows)> {
    let (rows, inp, out) = dims("linear_bwd", x, p.w, p.layout)?;
    if dy.numel() != rows * out || p.dw.numel() != p.w.numel() {
        return shape_err(
            "linear_bwd",
            format!(
                "dy {:?} or dw {:?} do not match x {:?}, w {:?}",
                dy.shape(),
                p.dw.shape(),
                x.shape(),
                p.w.shape()
            ),
        );
    }
    let dy_rows = DyRows::of(step, dy, out)?;
    // dW: [out, in] += dYᵀ X, or [in, out] += Xᵀ dY.
    let (m, n, a, b) = match p.layout {
        Layout::OutIn => (out, inp, transposed(dy_rows.view()), plain(x, inp)),
        Layout::InOut => (inp, out, transposed(plain(x, inp)), dy_rows.view()),
    };
    Gemm {
        m,
        n,
        k: rows,
        batch: [1, 1],
        a,
        b,
        c: plain(p.dw, n),
        bias: None,
        alpha: 1.0,
        accumulate: true,
    }
    .record(step)?;
    if let Some(db) = p.db {
        sum_columns(step, &dy.reshape(&[rows, out])?, db)?;
    }
    Ok(((rows, inp, out), dy_rows))
}

/// dX = dY Wᵀ into `dx` (added to it when `accumulate`), dY's rows read through `dy`.
fn dx_gemm<'a>(
    p: Grad<'a>,
    dy: View<'a>,
    dx: &'a Tensor,
    (rows, inp, out): (usize, usize, usize),
    accumulate: bool,
) -> Gemm<'a> {
    Gemm {
        m: rows,
        n: inp,
        k: out,
        batch: [1, 1],
        a: dy,
        // The weight read as an out × in operand.
        b: transposed(weight_view(p.w, p.layout, inp, out)),
        c: plain(dx, inp),
        bias: None,
        alpha: 1.0,
        accumulate,
    }
}
