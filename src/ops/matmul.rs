//! Launcher for `shaders/matmul.wgsl`: batched strided matrix multiply with optional bias.

use super::elementwise::Activation;
use super::reduce::sum_rows_into;
use crate::error::{shape_err, Result};
use crate::gpu::{Access, Gpu, Kernel, Rows, Step, Tensor};

use Access::{Image as I, Read as R, ReadWrite as W};

/// The four pipelines of one kernel and orientation, one per way of storing C (the shader's BIAS
/// and ACCUMULATE constants), indexed by [`Gemm::store`]: plain, bias, accumulate, both.
macro_rules! stores {
    ($family:literal, $entry:literal, $bindings:expr, $orient:literal, $ak:literal, $bn:literal) => {
        [
            stores!(@one $family, $entry, $bindings, $orient, "", $ak, $bn, 0.0, 0.0),
            stores!(@one $family, $entry, $bindings, $orient, "_bias", $ak, $bn, 1.0, 0.0),
            stores!(@one $family, $entry, $bindings, $orient, "_acc", $ak, $bn, 0.0, 1.0),
            stores!(@one $family, $entry, $bindings, $orient, "_bias_acc", $ak, $bn, 1.0, 1.0),
        ]
    };
    (@one $family:literal, $entry:literal, $bindings:expr, $orient:literal, $store:literal,
     $ak:literal, $bn:literal, $bias:literal, $acc:literal) => {
        Kernel::specialised(
            concat!($entry, $orient, $store),
            $family,
            $entry,
            $bindings,
            &[
                ("A_ALONG_K", $ak),
                ("B_ALONG_N", $bn),
                ("BIAS", $bias),
                ("ACCUMULATE", $acc),
            ],
        )
    };
}

/// A blocked kernel's pipelines for each orientation of its A and B blocks (the shader's A_ALONG_K
/// and B_ALONG_N), [a_along_k][b_along_n], each with its four ways of storing C.
macro_rules! oriented {
    ($family:literal, $entry:literal, $bindings:expr) => {
        [
            [
                stores!($family, $entry, $bindings, "_am_bk", 0.0, 0.0),
                stores!($family, $entry, $bindings, "_am_bn", 0.0, 1.0),
            ],
            [
                stores!($family, $entry, $bindings, "_ak_bk", 1.0, 0.0),
                stores!($family, $entry, $bindings, "_ak_bn", 1.0, 1.0),
            ],
        ]
    };
}

/// The subgroup kernel's four GELU epilogues for one orientation (see MATMUL_SUBGROUP_GELU).
macro_rules! gelu_epilogues {
    ($orient:literal, $ak:literal, $bn:literal) => {
        [
            gelu_epilogues!(@one $orient, "_gelu_erf", $ak, $bn, 1.0, 1.0),
            gelu_epilogues!(@one $orient, "_gelu_tanh", $ak, $bn, 1.0, 2.0),
            gelu_epilogues!(@one $orient, "_gelu_erf_bwd", $ak, $bn, 0.0, 3.0),
            gelu_epilogues!(@one $orient, "_gelu_tanh_bwd", $ak, $bn, 0.0, 4.0),
        ]
    };
    (@one $orient:literal, $epi_name:literal, $ak:literal, $bn:literal, $bias:literal, $epi:literal) => {
        Kernel::specialised(
            concat!("matmul_subgroup", $orient, $epi_name),
            "matmul_subgroup",
            "matmul_subgroup",
            SUBGROUP_BINDINGS,
            &[
                ("A_ALONG_K", $ak),
                ("B_ALONG_N", $bn),
                ("BIAS", $bias),
                ("ACCUMULATE", 0.0),
                ("EPILOGUE", $epi),
            ],
        )
    };
}

/// The general kernel: any strides, scalar loads (the orientation constants unused).
pub static MATMUL: [Kernel; 4] = stores!("matmul", "matmul", &[R, R, R, W], "", 1.0, 1.0);

/// The fast path, used when the operands are 16-byte aligned: [a_along_k][b_along_n][store].
pub static MATMUL_VEC4: [[[Kernel; 4]; 2]; 2] =
    oriented!("matmul", "matmul_vec4", &[R, R, R, W, R, R]);

/// The kernel for products of a few rows (`matmul_rows`, m <= FEW_ROWS: one token at a time),
/// [m - 1][b_along_n][store]: the shader's ROWS is a constant per pipeline.
macro_rules! few_rows {
    ($($rows:literal),*) => {
        [$([
            few_rows!(@one $rows, "_bk", 0.0),
            few_rows!(@one $rows, "_bn", 1.0),
        ]),*]
    };
    (@one $rows:literal, $orient:literal, $bn:literal) => {
        [
            few_rows!(@store $rows, $orient, "", $bn, 0.0, 0.0),
            few_rows!(@store $rows, $orient, "_bias", $bn, 1.0, 0.0),
            few_rows!(@store $rows, $orient, "_acc", $bn, 0.0, 1.0),
            few_rows!(@store $rows, $orient, "_bias_acc", $bn, 1.0, 1.0),
        ]
    };
    (@store $rows:literal, $orient:literal, $store:literal, $bn:literal, $bias:literal, $acc:literal) => {
        Kernel::specialised(
            concat!("matmul_rows", $rows, $orient, $store),
            "matmul",
            "matmul_rows",
            &[R, R, R, W, R, R],
            &[
                ("ROWS", $rows),
                ("B_ALONG_N", $bn),
                ("BIAS", $bias),
                ("ACCUMULATE", $acc),
            ],
        )
    };
}
pub static MATMUL_ROWS: [[[Kernel; 4]; 2]; 4] = few_rows!(1.0, 2.0, 3.0, 4.0);

/// The most rows `matmul_rows` takes (the shader's FEW_ROWS), and the fewest columns: narrower
/// products (the losses' head-by-head ones) keep the tiled kernels.
const FEW_ROWS: usize = 4;
const FEW_ROWS_MIN_N: usize = 64;
/// Rows of B per chunk of K in `matmul_rows` (see `Gemm::record_few_rows`).
const FEW_ROWS_CHUNK: usize = 64;

/// The vec4 kernel's blocking with A and B read from images (`Gpu::image_operands`), likewise.
pub static MATMUL_IMAGE: [[[Kernel; 4]; 2]; 2] =
    oriented!("matmul", "matmul_image", &[R, R, R, W, I, I]);

/// The subgroup kernel's bindings: A, B, bias, C, the epilogue's tensor (see [`Epilogue`]), and
/// the images of A and B.
const SUBGROUP_BINDINGS: &[Access] = &[R, R, R, W, W, I, I];

/// The image kernel with each texel fetched once per subgroup (`Gpu::subgroup_matmul`), likewise;
/// it stores C's rows as vec4s (binding 4 seen as vec4s), so it runs only where they are aligned.
pub static MATMUL_SUBGROUP: [[[Kernel; 4]; 2]; 2] =
    oriented!("matmul_subgroup", "matmul_subgroup", SUBGROUP_BINDINGS);

/// The subgroup kernel with a GELU in its store (the shader's EPILOGUE), [a_along_k][b_along_n]
/// [epilogue - 1]: the forward ones (exact, tanh) add a bias, the backward ones (exact, tanh) none.
pub static MATMUL_SUBGROUP_GELU: [[[Kernel; 4]; 2]; 2] = [
    [
        gelu_epilogues!("_am_bk", 0.0, 0.0),
        gelu_epilogues!("_am_bn", 0.0, 1.0),
    ],
    [
        gelu_epilogues!("_ak_bk", 1.0, 0.0),
        gelu_epilogues!("_ak_bn", 1.0, 1.0),
    ],
];

/// Every matmul pipeline, for the validation tests.
pub fn kernels() -> impl Iterator<Item = &'static Kernel> {
    let blocked = [
        &MATMUL_VEC4,
        &MATMUL_IMAGE,
        &MATMUL_SUBGROUP,
        &MATMUL_SUBGROUP_GELU,
    ];
    MATMUL
        .iter()
        .chain(MATMUL_ROWS.iter().flatten().flatten())
        .chain(blocked.into_iter().flatten().flatten().flatten())
}

/// The longest K recorded as one product: the scalar kernel loops K times per invocation, and
/// lavapipe stops loops after 65,535 iterations. A multiple of 4, so vec4 alignment carries over.
const MAX_K: usize = 16384;

/// Split-K: a product with fewer output tiles (workgroups) than SPLIT_BELOW_TILES and a long K runs
/// as parallel partial products over chunks of K, summed afterwards. A weight gradient such as
/// 128×512 over 2,080 tokens has 16 tiles, which leaves all but 16 of a GPU's cores idle while each
/// loops over all of K; split, it gets up to SPLIT_TARGET_TILES workgroups, each chunk at least
/// MIN_SPLIT_K long. Only where the device splits at all (`Gpu::split_k`: GPUs).
const SPLIT_BELOW_TILES: usize = 64;
const SPLIT_TARGET_TILES: usize = 256;
const MIN_SPLIT_K: usize = 256;

/// Output tile of one workgroup (rows, columns): see the shader.
const SCALAR_TILE: (usize, usize) = (16, 64);
const VEC4_TILE: (usize, usize) = (64, 64);
const SUBGROUP_TILE: (usize, usize) = (32, 32);

/// A strided view of a batch of matrices in a tensor: element (r, c) of batch (b1, b2) sits at
/// `off + r*rs + c*cs + b1*bs[0] + b2*bs[1]`.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub t: &'a Tensor,
    pub off: usize,
    pub rs: usize,
    pub cs: usize,
    pub bs: [usize; 2],
}

impl<'a> View<'a> {
    /// A contiguous stored [rows, cols] matrix (batch stride `rows*cols`), optionally read
    /// transposed: logical element (i, j) is then stored element (j, i).
    pub fn matrix(t: &'a Tensor, rows: usize, cols: usize, transposed: bool) -> View<'a> {
        let (rs, cs) = if transposed { (1, cols) } else { (cols, 1) };
        View {
            t,
            off: 0,
            rs,
            cs,
            bs: [rows * cols, 0],
        }
    }

    /// The rows of this view's tensor that hold it, as an image (see `matmul_image` in the
    /// shader), if every batch starts on a row of it. The view is contiguous along its columns
    /// (`along_cols`) or its rows; that axis's extent, a multiple of 4, runs along the image's
    /// texels, and the other axis's stride is the image's row pitch.
    fn image_rows(
        &self,
        rows: usize,
        cols: usize,
        batch: [usize; 2],
        along_cols: bool,
    ) -> Option<Rows> {
        let (pitch, extent) = if along_cols {
            (self.rs, cols)
        } else {
            (self.cs, rows)
        };
        if pitch == 0
            || !extent.is_multiple_of(4)
            || !self.bs[0].is_multiple_of(pitch)
            || !self.bs[1].is_multiple_of(pitch)
        {
            return None;
        }
        Some(Rows {
            off: self.off,
            pitch,
            width: extent / 4,
            height: (self.max_index(rows, cols, batch) - self.off) / pitch + 1,
        })
    }

    fn max_index(&self, rows: usize, cols: usize, batch: [usize; 2]) -> usize {
        self.off
            + (rows - 1) * self.rs
            + (cols - 1) * self.cs
            + (batch[0] - 1) * self.bs[0]
            + (batch[1] - 1) * self.bs[1]
    }
}

/// Work the subgroup kernel can do as it stores C (see [`Gemm::record_with`]), on a tensor laid
/// out as C: an MLP's activation, the pass that would follow the product.
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    /// Also stores GELU(C) into `act`.
    Gelu { act: &'a Tensor, kind: Activation },
    /// Multiplies C by GELU's slope at `hidden` before storing it (the gradient through GELU).
    GeluSlope {
        hidden: &'a Tensor,
        kind: Activation,
    },
}

impl<'a> Epilogue<'a> {
    fn tensor(&self) -> &'a Tensor {
        match self {
            Epilogue::Gelu { act, .. } => act,
            Epilogue::GeluSlope { hidden, .. } => hidden,
        }
    }

    /// The shader's EPILOGUE - 1; `None` for ReLU, which has no epilogue (the caller's separate
    /// pass runs it).
    fn index(&self) -> Option<usize> {
        let (Epilogue::Gelu { kind, .. } | Epilogue::GeluSlope { kind, .. }) = self;
        let tanh = match kind {
            Activation::GeluErf => 0,
            Activation::GeluTanh => 1,
            Activation::Relu => return None,
        };
        Some(tanh + 2 * matches!(self, Epilogue::GeluSlope { .. }) as usize)
    }
}

/// A general matmul: C[b](m, n) = alpha * Σ_k A[b](m, k) B[b](k, n) (+ bias[n]) (+ C if accumulate).
#[derive(Clone, Copy)]
pub struct Gemm<'a> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: [usize; 2],
    pub a: View<'a>,
    pub b: View<'a>,
    pub c: View<'a>,
    pub bias: Option<&'a Tensor>,
    pub alpha: f32,
    pub accumulate: bool,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch2: u32,
    batch: u32,
    tiles_m: u32,
    tiles_n: u32,
    alpha: f32,
    a: [u32; 5],
    b: [u32; 5],
    c: [u32; 5],
    group_tiles: u32,
}

/// Tiles per workgroup of the subgroup kernel. Lavapipe spends a few microseconds starting each
/// workgroup (a probe of the bare kernel at 2080 x 512 x 4: 2.3-3.5 ms with 13 tiles per workgroup
/// against 5-7 with one), which a workgroup of 8 invocations and a K of 128 does not repay, so each
/// takes several tiles in turn: enough that about TARGET_GROUPS workgroups remain to share among
/// the CPU's threads, at most MAX_GROUP_TILES, and few enough that an invocation's loops stay under
/// lavapipe's cap of 65,535 iterations in all (see MAX_K).
fn subgroup_group_tiles(tiles: u64, k: usize) -> u64 {
    const TARGET_GROUPS: u64 = 64;
    const MAX_GROUP_TILES: u64 = 16;
    let per_tile = (k / 4 + k % 4 + 1) as u64;
    (tiles / TARGET_GROUPS).clamp(1, MAX_GROUP_TILES.min(60_000 / per_tile).max(1))
}

fn pack(op: &'static str, v: &View) -> Result<[u32; 5]> {
    let u = |x| crate::ops::u32_of(op, "stride", x);
    Ok([u(v.off)?, u(v.rs)?, u(v.cs)?, u(v.bs[0])?, u(v.bs[1])?])
}

impl Gemm<'_> {
    /// Which of a kernel's pipelines stores C for this product (see `stores!`).
    fn store(&self) -> usize {
        self.bias.is_some() as usize | (self.accumulate as usize) << 1
    }

    /// Whether `matmul_rows` takes this product, and which way it reads B (along n): a few rows
    /// of one matrix, A contiguous along k, B contiguous along n or k, every vec4 it loads
    /// 16-byte aligned.
    fn few_rows_orientation(&self) -> Option<bool> {
        let (a, b) = (&self.a, &self.b);
        let fits = self.m <= FEW_ROWS
            && self.n >= FEW_ROWS_MIN_N
            && self.batch == [1, 1]
            && self.k.is_multiple_of(4)
            && a.cs == 1
            && a.rs.is_multiple_of(4)
            && a.off.is_multiple_of(4);
        if !fits || !b.off.is_multiple_of(4) {
            return None;
        }
        if b.cs == 1 && b.rs.is_multiple_of(4) && self.n.is_multiple_of(4) {
            Some(true)
        } else if b.rs == 1 && b.cs.is_multiple_of(4) {
            Some(false)
        } else {
            None
        }
    }

    /// Which way the vec4 kernel can read A and B blocks, if it can: every vec4 it loads must be
    /// 16-byte aligned, so the contiguous axis has stride 1 and every other stride and offset is a
    /// multiple of 4. Returns (A read along k, B read along n).
    fn vec4_orientation(&self) -> Option<(bool, bool)> {
        let aligned = |v: &View, other: usize| {
            v.off.is_multiple_of(4)
                && v.bs[0].is_multiple_of(4)
                && v.bs[1].is_multiple_of(4)
                && other.is_multiple_of(4)
        };
        let ak = if self.a.cs == 1 && aligned(&self.a, self.a.rs) {
            true
        } else if self.a.rs == 1 && aligned(&self.a, self.a.cs) {
            false
        } else {
            return None;
        };
        let bn = if self.b.cs == 1 && aligned(&self.b, self.b.rs) {
            true
        } else if self.b.rs == 1 && aligned(&self.b, self.b.cs) {
            false
        } else {
            return None;
        };
        Some((ak, bn))
    }

    /// Whether C's rows can be stored as vec4s, as the subgroup kernel stores them: contiguous,
    /// whole vec4s long, and 16-byte aligned.
    fn c_rows_vec4(&self) -> bool {
        let c = &self.c;
        c.cs == 1
            && self.n.is_multiple_of(4)
            && [c.off, c.rs, c.bs[0], c.bs[1]]
                .iter()
                .all(|x| x.is_multiple_of(4))
    }

    /// How many K chunks to split this product into (see SPLIT_BELOW_TILES), if any: only single
    /// products without bias whose C rows are contiguous, so that the chunks' sum is a column sum,
    /// and whose A is stored K-major and B N-major (a weight gradient, Xᵀ·dY), so that every chunk
    /// starts on a stored row of both: a chunk starting mid-row has no image of its own rows, and
    /// on CPU adapters would leave the image kernels for storage buffers (at 512 x 128 x 512, a
    /// product of the teacher's backward, 6-7 ms against about 1.5 unsplit). Tiles are counted as
    /// the scalar kernel's, or for a `blocked` product as the vec4 and image kernels' 64 x 64,
    /// also when the subgroup kernel runs it: the decision must not depend on which blocked kernel
    /// runs, so that all three add the same terms in the same order.
    fn k_splits(&self, gpu: &Gpu, blocked: bool) -> Option<usize> {
        if !gpu.split_k() {
            return None;
        }
        let (tm, tn) = if blocked { VEC4_TILE } else { SCALAR_TILE };
        let tiles = self.m.div_ceil(tm) * self.n.div_ceil(tn);
        let contiguous_c = self.c.rs == self.n && self.c.cs == 1;
        let chunks_start_rows = self.a.rs == 1 && self.b.cs == 1;
        if self.batch != [1, 1]
            || self.bias.is_some()
            || !contiguous_c
            || !chunks_start_rows
            || tiles >= SPLIT_BELOW_TILES
        {
            return None;
        }
        let splits = (SPLIT_TARGET_TILES / tiles).min(self.k / MIN_SPLIT_K);
        (splits >= 2).then_some(splits)
    }

    /// A product of a few rows on `matmul_rows`. Where B runs along n (GPT-2's Conv1D weights,
    /// [k, n]) and K is long, K is cut into chunks of FEW_ROWS_CHUNK rows of B, each workgroup
    /// reading one chunk's contiguous block, their partial products summed into C afterwards. A
    /// GPU needs the chunks' workgroups: without them a 768-column product is 3 workgroups. On
    /// lavapipe a 1 × 768 × 3072 product repeated on the same B went from 7.8 to 2.8 ms, but a
    /// caption, whose products each read new weights from memory, did not get faster
    /// (docs/benchmarks-caption.md: about 6 times transformers' time per token before and after).
    fn record_few_rows(&self, step: &mut Step, b_along_n: bool) -> Result<()> {
        let chunks = self.k / FEW_ROWS_CHUNK;
        let contiguous_c = self.c.rs == self.n && self.c.cs == 1;
        if b_along_n && chunks >= 2 && contiguous_c && self.k.is_multiple_of(FEW_ROWS_CHUNK) {
            let (m, n) = (self.m, self.n);
            let partial = step.empty(&[chunks, m, n])?;
            let part = |first: usize, count: usize, bias| Gemm {
                k: FEW_ROWS_CHUNK,
                batch: [count, 1],
                a: View {
                    off: self.a.off + first * FEW_ROWS_CHUNK,
                    bs: [FEW_ROWS_CHUNK, 0],
                    ..self.a
                },
                b: View {
                    off: self.b.off + first * FEW_ROWS_CHUNK * self.b.rs,
                    bs: [FEW_ROWS_CHUNK * self.b.rs, 0],
                    ..self.b
                },
                c: View {
                    off: first * m * n,
                    bs: [m * n, 0],
                    ..View::matrix(&partial, m, n, false)
                },
                bias,
                accumulate: false,
                ..*self
            };
            // The bias joins the first chunk only.
            match self.bias {
                Some(b) => {
                    part(0, 1, Some(b)).dispatch_few_rows(step, true)?;
                    part(1, chunks - 1, None).dispatch_few_rows(step, true)?;
                }
                None => part(0, chunks, None).dispatch_few_rows(step, true)?,
            }
            return sum_rows_into(
                step,
                &partial,
                chunks,
                m * n,
                m * n,
                self.c.t,
                self.c.off,
                self.accumulate,
            );
        }
        self.dispatch_few_rows(step, b_along_n)
    }

    /// One `matmul_rows` dispatch: batch entries are chunks of K (see `record_few_rows`).
    fn dispatch_few_rows(&self, step: &mut Step, b_along_n: bool) -> Result<()> {
        const OP: &str = "matmul";
        let u = |x| crate::ops::u32_of(OP, "size", x);
        let col_groups = self.n.div_ceil(4 * 64);
        let params = Params {
            m: u(self.m)?,
            n: u(self.n)?,
            k: u(self.k)?,
            batch2: 1,
            batch: u(self.batch[0])?,
            tiles_m: 1,
            tiles_n: u(col_groups)?,
            alpha: self.alpha,
            a: pack(OP, &self.a)?,
            b: pack(OP, &self.b)?,
            c: pack(OP, &self.c)?,
            group_tiles: 1,
        };
        let bias = self.bias.unwrap_or(self.b.t);
        let tensors = [self.a.t, self.b.t, bias, self.c.t, self.a.t, self.b.t];
        let kernel = &MATMUL_ROWS[self.m - 1][b_along_n as usize][self.store()];
        step.dispatch_linear(
            kernel,
            &params,
            &tensors,
            (col_groups * self.batch[0]) as u64,
        )
    }

    /// Split-K: the chunks of K as one batched product into a [splits, m, n] scratch tensor, their
    /// sum into C (added if accumulating), then the last part of K that is not a whole chunk.
    fn record_split(&self, step: &mut Step, splits: usize) -> Result<()> {
        let chunk = self.k / splits / 4 * 4; // a multiple of 4 keeps the vec4 alignment of A and B
        let splits = self.k / chunk;
        let (m, n) = (self.m, self.n);
        let partial = step.empty(&[splits, m, n])?;
        Gemm {
            k: chunk,
            batch: [splits, 1],
            a: View {
                bs: [chunk * self.a.cs, 0],
                ..self.a
            },
            b: View {
                bs: [chunk * self.b.rs, 0],
                ..self.b
            },
            c: View::matrix(&partial, m, n, false),
            accumulate: false,
            ..*self
        }
        .record(step)?;
        sum_rows_into(
            step,
            &partial,
            splits,
            m * n,
            m * n,
            self.c.t,
            self.c.off,
            self.accumulate,
        )?;
        let done = splits * chunk;
        if done < self.k {
            let mut rest = Gemm {
                k: self.k - done,
                accumulate: true,
                ..*self
            };
            rest.a.off += done * self.a.cs;
            rest.b.off += done * self.b.rs;
            rest.record(step)?;
        }
        Ok(())
    }

    /// Where A's and B's rows lie for images of them, when the device reads operands from images
    /// and both fit one (see [`View::image_rows`] and [`Rows::check`]); `None` sends the product
    /// to the buffer kernels.
    fn image_rows(&self, gpu: &Gpu, ak: bool, bn: bool) -> Option<[Rows; 2]> {
        if !gpu.image_operands() {
            return None;
        }
        let ra = self.a.image_rows(self.m, self.k, self.batch, ak)?;
        let rb = self.b.image_rows(self.k, self.n, self.batch, bn)?;
        // Both must fit before either is copied (Step::image checks each again, as it must for
        // any caller).
        (ra.check(gpu, self.a.t).is_ok() && rb.check(gpu, self.b.t).is_ok()).then_some([ra, rb])
    }

    /// Records the matmul into `step`.
    pub fn record(&self, step: &mut Step) -> Result<()> {
        self.record_with(step, None).map(drop)
    }

    /// Records the matmul with `epilogue` done in its store, where the subgroup kernel runs the
    /// product into C's own rows (C contiguous, neither accumulated into nor split, a bias exactly
    /// for the forward GELU) and the epilogue's tensor is shaped as C. Returns whether it did so;
    /// if not, it records nothing, and the caller runs the product and the GELU kernel.
    pub fn record_with(&self, step: &mut Step, epilogue: Option<Epilogue>) -> Result<bool> {
        const OP: &str = "matmul";
        let [b1, b2] = self.batch;
        if self.m == 0 || self.n == 0 || self.k == 0 || b1 == 0 || b2 == 0 {
            return shape_err(
                OP,
                format!(
                    "zero-sized matmul m={} n={} k={} batch={:?}",
                    self.m, self.n, self.k, self.batch
                ),
            );
        }
        for (name, v, r, c) in [
            ("A", &self.a, self.m, self.k),
            ("B", &self.b, self.k, self.n),
            ("C", &self.c, self.m, self.n),
        ] {
            let need = v.max_index(r, c, self.batch) + 1;
            if need > v.t.numel() {
                return shape_err(
                    OP,
                    format!(
                        "{name} view needs {need} elements but its tensor {:?} has {}",
                        v.t.shape(),
                        v.t.numel()
                    ),
                );
            }
        }
        if let Some(bias) = self.bias {
            if bias.numel() != self.n {
                return shape_err(
                    OP,
                    format!(
                        "bias has {} elements, expected n = {}",
                        bias.numel(),
                        self.n
                    ),
                );
            }
        }
        if self.c.t.overlaps(self.a.t) || self.c.t.overlaps(self.b.t) {
            return shape_err(OP, "the output may not alias an input");
        }
        if let Some(e) = epilogue {
            let c_whole = self.c.off == 0
                && self.c.rs == self.n
                && self.batch == [1, 1]
                && e.tensor().numel() == self.m * self.n
                && self.c.t.numel() == self.m * self.n;
            let bias_fits = matches!(e, Epilogue::Gelu { .. }) == self.bias.is_some();
            if self.k > MAX_K || self.accumulate || !c_whole || !bias_fits || e.index().is_none() {
                return Ok(false);
            }
        }
        if self.k > MAX_K {
            // lavapipe silently stops an invocation's loops after 65,535 iterations in all (see
            // ARCHITECTURE.md), so a long K runs as several products accumulated into C.
            for k0 in (0..self.k).step_by(MAX_K) {
                let mut part = Gemm {
                    k: MAX_K.min(self.k - k0),
                    bias: if k0 == 0 { self.bias } else { None },
                    accumulate: self.accumulate || k0 > 0,
                    ..*self
                };
                part.a.off += k0 * self.a.cs;
                part.b.off += k0 * self.b.rs;
                part.record(step)?;
            }
            return Ok(true);
        }
        if let Some(bn) = self.few_rows_orientation() {
            // A fused epilogue would send the product to a tiled kernel: the caller's separate
            // pass after matmul_rows costs less than the rows a tile computes for nothing.
            if epilogue.is_some() {
                return Ok(false);
            }
            self.record_few_rows(step, bn)?;
            return Ok(true);
        }
        let orientation = self.vec4_orientation();
        if let Some(splits) = self.k_splits(step.gpu(), orientation.is_some()) {
            if epilogue.is_some() {
                return Ok(false);
            }
            self.record_split(step, splits)?;
            return Ok(true);
        }
        // The image kernels where both operands fit images; of them, the subgroup kernel where
        // the device has it.
        let imaged =
            orientation.and_then(|(ak, bn)| Some((ak, bn, self.image_rows(step.gpu(), ak, bn)?)));
        let subgroup = imaged.is_some() && step.gpu().subgroup_matmul() && self.c_rows_vec4();
        if epilogue.is_some() && !subgroup {
            return Ok(false);
        }
        let (tm, tn) = if subgroup {
            SUBGROUP_TILE
        } else if orientation.is_some() {
            VEC4_TILE
        } else {
            SCALAR_TILE
        };
        let tiles_m = self.m.div_ceil(tm);
        let tiles_n = self.n.div_ceil(tn);
        let tiles = (tiles_m * tiles_n) as u64 * (b1 * b2) as u64;
        let group_tiles = if subgroup {
            subgroup_group_tiles(tiles, self.k)
        } else {
            1
        };
        let total = tiles.div_ceil(group_tiles);
        let u = |x| crate::ops::u32_of(OP, "size", x);
        let params = Params {
            m: u(self.m)?,
            n: u(self.n)?,
            k: u(self.k)?,
            batch2: u(b2)?,
            batch: u(b1 * b2)?,
            tiles_m: u(tiles_m)?,
            tiles_n: u(tiles_n)?,
            alpha: self.alpha,
            a: pack(OP, &self.a)?,
            b: pack(OP, &self.b)?,
            c: pack(OP, &self.c)?,
            group_tiles: group_tiles as u32,
        };
        let store = self.store();
        let bias = self.bias.unwrap_or(self.b.t);
        let tensors = [self.a.t, self.b.t, bias, self.c.t];
        if let Some((ak, bn, [ra, rb])) = imaged {
            let ia = step.image(self.a.t, &ra)?;
            let ib = step.image(self.b.t, &rb)?;
            let (ak, bn) = (ak as usize, bn as usize);
            if subgroup {
                // Without an epilogue, a spare vec4 stands in for its tensor.
                let spare;
                let (kernel, aux) = match epilogue {
                    Some(e) => {
                        let i = e.index().expect("checked above: ReLU has no epilogue");
                        (&MATMUL_SUBGROUP_GELU[ak][bn][i], e.tensor())
                    }
                    None => {
                        spare = step.empty(&[4])?;
                        (&MATMUL_SUBGROUP[ak][bn][store], &spare)
                    }
                };
                let tensors = [self.a.t, self.b.t, bias, self.c.t, aux];
                step.dispatch_linear_images(kernel, &params, &tensors, &[&ia, &ib], total)?;
            } else {
                let kernel = &MATMUL_IMAGE[ak][bn][store];
                step.dispatch_linear_images(kernel, &params, &tensors, &[&ia, &ib], total)?;
            }
            return Ok(true);
        }
        match orientation {
            Some((ak, bn)) => step.dispatch_linear(
                &MATMUL_VEC4[ak as usize][bn as usize][store],
                &params,
                &[self.a.t, self.b.t, bias, self.c.t, self.a.t, self.b.t],
                total,
            ),
            None => step.dispatch_linear(&MATMUL[store], &params, &tensors, total),
        }?;
        Ok(true)
    }
}

/// C = op(A) op(B) (+ bias) for contiguous tensors. A is [.., M, K] ([.., K, M] if `ta`), B is
/// [.., K, N] ([.., N, K] if `tb`) with the same leading batch dims as A, or 2-D (shared by every
/// batch). Returns C as [.., M, N].
pub fn matmul(
    step: &mut Step,
    a: &Tensor,
    b: &Tensor,
    ta: bool,
    tb: bool,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    const OP: &str = "matmul";
    let (sa, sb) = (a.shape(), b.shape());
    if sa.len() < 2 || sb.len() < 2 {
        return shape_err(
            OP,
            format!("operands must be at least 2-D, got {sa:?} and {sb:?}"),
        );
    }
    let (ra, ca) = (sa[sa.len() - 2], sa[sa.len() - 1]);
    let (rb, cb) = (sb[sb.len() - 2], sb[sb.len() - 1]);
    let (m, k) = if ta { (ca, ra) } else { (ra, ca) };
    let (kb, n) = if tb { (cb, rb) } else { (rb, cb) };
    if k != kb {
        return shape_err(
            OP,
            format!(
                "inner dimensions differ: A {sa:?}{} · B {sb:?}{}",
                if ta { "ᵀ" } else { "" },
                if tb { "ᵀ" } else { "" }
            ),
        );
    }
    let batch_dims = &sa[..sa.len() - 2];
    let batch: usize = batch_dims.iter().product();
    let b_shared = sb.len() == 2;
    if !b_shared && &sb[..sb.len() - 2] != batch_dims {
        return shape_err(OP, format!("batch dimensions differ: A {sa:?}, B {sb:?}"));
    }
    let mut out_shape = batch_dims.to_vec();
    out_shape.extend([m, n]);
    let c = step.empty(&out_shape)?;
    let mut bv = View::matrix(b, rb, cb, tb);
    if b_shared {
        bv.bs = [0, 0];
    }
    Gemm {
        m,
        n,
        k,
        batch: [batch, 1],
        a: View::matrix(a, ra, ca, ta),
        b: bv,
        c: View::matrix(&c, m, n, false),
        bias,
        alpha: 1.0,
        accumulate: false,
    }
    .record(step)?;
    Ok(c)
}
