//! Launchers for `shaders/reduce.wgsl`: sum and mean (with their backward), column sums.

use super::{groups, u32_of};
use crate::error::{shape_err, Result};
use crate::gpu::{Access::Image as I, Access::Read as R, Access::ReadWrite as W};
use crate::gpu::{Kernel, Step, Tensor};

pub const SUM_SEGMENTS: Kernel = Kernel::new("reduce", "sum_segments", &[R, W]);
/// Column sums that set or add to (the shader's ACCUMULATE constant, see
/// `Kernel::specialised`) their outputs: [accumulate].
pub const SUM_COLUMNS: [Kernel; 2] = super::set_or_add(
    ["sum_columns", "sum_columns_acc"],
    "reduce",
    "sum_columns",
    &[R, W],
);
/// SUM_COLUMNS reading x from an image (`Gpu::image_operands`).
pub const SUM_COLUMNS_IMAGE: [Kernel; 2] = super::set_or_add(
    ["sum_columns_image", "sum_columns_image_acc"],
    "reduce",
    "sum_columns_image",
    &[R, W, I],
);
pub const BROADCAST_SCALAR: Kernel = Kernel::new("reduce", "broadcast_scalar", &[R, W]);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, Default)]
struct Params {
    segments: u32,
    len: u32,
    cols: u32,
    flags: u32,
    scale: f32,
    out_off: u32,
    chunk: u32,
    _pad: u32,
}

/// Rows per invocation in the first pass of a long column sum. One invocation per column looping
/// over every row left a real GPU all but idle (128 invocations summing 16,640 rows each for a
/// bias gradient at batch 256); chunks give it rows/64 × columns invocations, and a second pass
/// sums the chunks. On lavapipe the passes cost about what one did: the loads are the same.
pub(crate) const COLUMN_CHUNK: usize = 64;

/// Where a reduction writes: `out` from element `at`, added to what is there where `accumulate`.
#[derive(Clone, Copy)]
pub(crate) struct Dest<'a> {
    pub out: &'a Tensor,
    pub at: usize,
    pub accumulate: bool,
}

impl<'a> Dest<'a> {
    /// `out` from element 0, overwritten.
    pub fn new(out: &'a Tensor) -> Dest<'a> {
        Dest {
            out,
            at: 0,
            accumulate: false,
        }
    }

    /// `out` from element 0, added to.
    pub fn add_to(out: &'a Tensor) -> Dest<'a> {
        Dest {
            accumulate: true,
            ..Dest::new(out)
        }
    }
}

/// How [`sum_segments`] writes its sums: to `to`, times `scale`, of squares where `squares`.
#[derive(Clone, Copy)]
pub(crate) struct SumInto<'a> {
    pub to: Dest<'a>,
    pub scale: f32,
    pub squares: bool,
}

impl<'a> SumInto<'a> {
    /// Plain sums into `out` from element 0.
    pub fn new(out: &'a Tensor) -> SumInto<'a> {
        SumInto {
            to: Dest::new(out),
            scale: 1.0,
            squares: false,
        }
    }
}

/// Sums `segments` contiguous runs of `x` as `into` says.
pub(crate) fn sum_segments(
    step: &mut Step,
    x: &Tensor,
    segments: usize,
    into: SumInto,
) -> Result<()> {
    let SumInto {
        to: Dest {
            out,
            at,
            accumulate,
        },
        scale,
        squares,
    } = into;
    if segments == 0 || !x.numel().is_multiple_of(segments) || at + segments > out.numel() {
        return shape_err(
            "sum",
            format!(
                "cannot sum {:?} in {segments} segments into {:?} at {at}",
                x.shape(),
                out.shape()
            ),
        );
    }
    let p = Params {
        segments: u32_of("sum", "segments", segments)?,
        len: u32_of("sum", "length", x.numel() / segments)?,
        flags: squares as u32 | (accumulate as u32) << 1,
        scale,
        out_off: at as u32,
        ..Default::default()
    };
    step.dispatch_linear(&SUM_SEGMENTS, &p, &[x, out], segments as u64)
}

/// Adds `scale` times the sum of `x` into element `at` of `out`: a step's loss terms.
pub(crate) fn add_sum_into(
    step: &mut Step,
    x: &Tensor,
    scale: f32,
    out: &Tensor,
    at: usize,
) -> Result<()> {
    let to = Dest {
        at,
        ..Dest::add_to(out)
    };
    let into = SumInto {
        to,
        scale,
        squares: false,
    };
    sum_segments(step, x, 1, into)
}

/// The sum of all elements, as a [1] tensor.
pub fn sum(step: &mut Step, x: &Tensor) -> Result<Tensor> {
    let out = step.empty(&[1])?;
    sum_segments(step, x, 1, SumInto::new(&out))?;
    Ok(out)
}

/// The mean of all elements, as a [1] tensor.
pub fn mean(step: &mut Step, x: &Tensor) -> Result<Tensor> {
    let out = step.empty(&[1])?;
    let mean = SumInto {
        scale: 1.0 / x.numel() as f32,
        ..SumInto::new(&out)
    };
    sum_segments(step, x, 1, mean)?;
    Ok(out)
}

/// Backward of [`sum`] (scale 1) or [`mean`] (scale 1/n): every element gets scale · g[0].
pub fn broadcast_scalar(
    step: &mut Step,
    g: &Tensor,
    shape: &[usize],
    scale: f32,
) -> Result<Tensor> {
    if g.numel() != 1 {
        return shape_err(
            "broadcast_scalar",
            format!(
                "the upstream gradient must be a scalar, got {:?}",
                g.shape()
            ),
        );
    }
    let out = step.empty(shape)?;
    let p = Params {
        len: u32_of("broadcast", "elements", out.numel())?,
        scale,
        ..Default::default()
    };
    step.dispatch_linear(&BROADCAST_SCALAR, &p, &[g, &out], groups(out.numel(), 256))?;
    Ok(out)
}

/// out[c] += Σ_r x[r, c] over all leading dimensions, for the first out.numel() columns: the
/// gradient of a broadcast bias (all columns) or of a vector added to the first columns only.
pub fn sum_columns(step: &mut Step, x: &Tensor, out: &Tensor) -> Result<()> {
    let cols = *x.shape().last().unwrap_or(&0);
    if out.numel() > cols {
        return shape_err(
            "sum_columns",
            format!(
                "out has {} elements, x {:?} only {cols} columns",
                out.numel(),
                x.shape()
            ),
        );
    }
    if out.numel() == 0 {
        return Ok(());
    }
    let rows = x.numel() / cols;
    sum_rows_into(step, x, (rows, cols), out.numel(), Dest::add_to(out))
}

/// to.out[to.at + c] (+= if `to.accumulate`, else =) Σ_r x[r, c] for c < len, x read as
/// [rows, cols]: first in passes of COLUMN_CHUNK-row partial sums while more than two chunks' rows
/// remain.
pub(crate) fn sum_rows_into(
    step: &mut Step,
    x: &Tensor,
    (rows, cols): (usize, usize),
    len: usize,
    to: Dest,
) -> Result<()> {
    if rows > 2 * COLUMN_CHUNK {
        let chunks = rows.div_ceil(COLUMN_CHUNK);
        let partial = step.empty(&[chunks, len])?;
        column_pass(
            step,
            x,
            (rows, cols),
            len,
            COLUMN_CHUNK,
            Dest::new(&partial),
        )?;
        return sum_rows_into(step, &partial, (chunks, len), len, to);
    }
    column_pass(step, x, (rows, cols), len, rows.max(1), to)
}

/// One dispatch of the `sum_columns` kernel: sums over chunks of `chunk` rows, the sum of chunk k
/// going to to.out[to.at + k·len ..].
fn column_pass(
    step: &mut Step,
    x: &Tensor,
    (rows, cols): (usize, usize),
    len: usize,
    chunk: usize,
    to: Dest,
) -> Result<()> {
    let Dest {
        out,
        at: out_off,
        accumulate,
    } = to;
    const OP: &str = "sum_columns";
    let chunks = rows.div_ceil(chunk).max(1);
    if rows * cols > x.numel() || out_off + chunks * len > out.numel() {
        return shape_err(
            OP,
            format!(
                "cannot sum {rows} rows of {len} columns of {:?} into {:?} at {out_off}",
                x.shape(),
                out.shape()
            ),
        );
    }
    let p = Params {
        segments: u32_of(OP, "columns", len)?,
        len: u32_of(OP, "rows", rows)?,
        cols: u32_of(OP, "row length", cols)?,
        flags: 0,
        scale: 1.0,
        out_off: u32_of(OP, "offset", out_off)?,
        chunk: u32_of(OP, "chunk", chunk)?,
        _pad: 0,
    };
    // On devices that read operands from images, x's rows, when they fit one.
    if len.is_multiple_of(4) {
        if let Some(image) = step.operand_images(&[x], cols)? {
            let n = groups(chunks * len / 4, 256);
            let kernel = &SUM_COLUMNS_IMAGE[accumulate as usize];
            return step.dispatch_linear_images(kernel, &p, &[x, out], &[&image[0]], n);
        }
    }
    let kernel = &SUM_COLUMNS[accumulate as usize];
    step.dispatch_linear(kernel, &p, &[x, out], groups(chunks * len, 256))
}
