//! Launcher for `shaders/matmul.wgsl`: batched strided matrix multiply with optional bias.

use super::elementwise::Activation;
use super::reduce::{sum_rows_into, Dest};
use crate::error::{shape_err, Result};
use crate::gpu::{Access, DType, Gpu, Kernel, Rows, Step, Tensor};

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

/// The kernels for products of a few rows (m <= FEW_ROWS: one token at a time), [m - 1]
/// [b_along_n][store]: the shader's ROWS is a constant per pipeline.
macro_rules! few_rows {
    ($entry:literal, $bindings:expr; $($rows:literal),*) => {
        [$([
            few_rows!(@one $entry, $bindings, $rows, "_bk", 0.0),
            few_rows!(@one $entry, $bindings, $rows, "_bn", 1.0),
        ]),*]
    };
    (@one $entry:literal, $bindings:expr, $rows:literal, $orient:literal, $bn:literal) => {
        [
            few_rows!(@store $entry, $bindings, $rows, $orient, "", $bn, 0.0, 0.0),
            few_rows!(@store $entry, $bindings, $rows, $orient, "_bias", $bn, 1.0, 0.0),
            few_rows!(@store $entry, $bindings, $rows, $orient, "_acc", $bn, 0.0, 1.0),
            few_rows!(@store $entry, $bindings, $rows, $orient, "_bias_acc", $bn, 1.0, 1.0),
        ]
    };
    (@store $entry:literal, $bindings:expr, $rows:literal, $orient:literal, $store:literal,
     $bn:literal, $bias:literal, $acc:literal) => {
        Kernel::specialised(
            concat!($entry, $rows, $orient, $store),
            "matmul",
            $entry,
            $bindings,
            &[
                ("ROWS", $rows),
                ("B_ALONG_N", $bn),
                ("BIAS", $bias),
                ("ACCUMULATE", $acc),
            ],
        )
    };
}

/// `matmul_rows`: B from storage buffers.
pub static MATMUL_ROWS: [[[Kernel; 4]; 2]; 4] =
    few_rows!("matmul_rows", &[R, R, R, W, R, R]; 1.0, 2.0, 3.0, 4.0);

/// `matmul_rows_image`: B from an image held for it (see `Gemm::record_few_rows`).
pub static MATMUL_ROWS_IMAGE: [[[Kernel; 4]; 2]; 4] =
    few_rows!("matmul_rows_image", &[R, R, R, W, R, I]; 1.0, 2.0, 3.0, 4.0);

/// The most rows `matmul_rows` takes (the shader's FEW_ROWS), and the fewest columns: narrower
/// products (the losses' head-by-head ones) keep the tiled kernels.
pub const FEW_ROWS: usize = 4;
const FEW_ROWS_MIN_N: usize = 64;
/// Rows of B per chunk of K in `matmul_rows` (see `Gemm::record_few_rows`).
const FEW_ROWS_CHUNK: usize = 64;

/// The vec4 kernel with each workgroup's tile staged in workgroup memory (`Gpu::shared_matmul`:
/// GPUs, opt-in until measured on one), likewise.
pub static MATMUL_SHARED: [[[Kernel; 4]; 2]; 2] =
    oriented!("matmul", "matmul_shared", &[R, R, R, W, R, R]);

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

/// The same sums stored element by element, for a C whose rows are not aligned vec4s.
pub static MATMUL_SUBGROUP_CELLS: [[[Kernel; 4]; 2]; 2] = oriented!(
    "matmul_subgroup",
    "matmul_subgroup_cells",
    SUBGROUP_BINDINGS
);

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
        &MATMUL_SHARED,
        &MATMUL_IMAGE,
        &MATMUL_SUBGROUP,
        &MATMUL_SUBGROUP_CELLS,
        &MATMUL_SUBGROUP_GELU,
    ];
    MATMUL
        .iter()
        .chain(MATMUL_ROWS.iter().flatten().flatten())
        .chain(MATMUL_ROWS_IMAGE.iter().flatten().flatten())
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
/// The subgroup kernel's tile is this many rows by 8 columns per lane of a subgroup.
const SUBGROUP_TILE_ROWS: usize = 32;

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

    /// This view's numbers, for planning.
    fn strides(&self) -> Strides {
        Strides {
            off: self.off,
            rs: self.rs,
            cs: self.cs,
            bs: self.bs,
            numel: self.t.numel(),
            byte_offset: self.t.offset(),
            elem: self.t.dtype().size(),
        }
    }
}

/// A view without its tensor: where it lies (see [`View`]) and what it lies in (the tensor's
/// element count and its byte offset in its buffer). All a plan needs to know of an operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strides {
    pub off: usize,
    pub rs: usize,
    pub cs: usize,
    pub bs: [usize; 2],
    pub numel: usize,
    pub byte_offset: u64,
    /// Bytes per element (f16 weights: 2).
    pub elem: u64,
}

impl Strides {
    /// The rows of this view's tensor that hold it, as an image (see `matmul_image` in the
    /// shader), if every batch starts on a row of it. The view is contiguous along its columns
    /// (`along_cols`) or its rows; that axis runs along the image's texels, and the other axis's
    /// stride is the image's row pitch. Where the contiguous axis is K (`along_k`), the kernels
    /// fetch whole texels only (K's remainder runs through the scalar bindings), so a last partial
    /// texel is left out. Along M or N a last partial texel is fetched whole: its spare elements,
    /// from the row's padding, feed only rows or columns of C that are never stored, so the pitch
    /// must hold them (the logits' gradient, 50,257 wide at a pitch of 50,304, is read so).
    fn image_rows(
        &self,
        rows: usize,
        cols: usize,
        batch: [usize; 2],
        along_cols: bool,
        along_k: bool,
    ) -> Option<Rows> {
        let (pitch, extent) = if along_cols {
            (self.rs, cols)
        } else {
            (self.cs, rows)
        };
        let width = if along_k {
            extent / 4
        } else {
            extent.div_ceil(4)
        };
        if pitch == 0
            || width == 0
            || (!extent.is_multiple_of(4) && 4 * width > pitch)
            || !self.bs[0].is_multiple_of(pitch)
            || !self.bs[1].is_multiple_of(pitch)
        {
            return None;
        }
        Some(Rows {
            off: self.off,
            pitch,
            width,
            height: (self.max_index(rows, cols, batch) - self.off) / pitch + 1,
        })
    }

    /// [`Strides::image_rows`] of this view as A (m × k), contiguous along k or m.
    fn a_image_rows(&self, m: usize, k: usize, batch: [usize; 2], along_k: bool) -> Option<Rows> {
        self.image_rows(m, k, batch, along_k, along_k)
    }

    /// [`Strides::image_rows`] of this view as B (k × n), contiguous along n or k.
    fn b_image_rows(&self, k: usize, n: usize, batch: [usize; 2], along_n: bool) -> Option<Rows> {
        self.image_rows(k, n, batch, along_n, !along_n)
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

    /// What a plan needs to know of it.
    fn wanted(&self) -> EpilogueWanted {
        let (Epilogue::Gelu { kind, .. } | Epilogue::GeluSlope { kind, .. }) = self;
        let backward = matches!(self, Epilogue::GeluSlope { .. });
        EpilogueWanted {
            // The shader's EPILOGUE - 1; ReLU has none (the caller's separate pass runs it).
            index: match kind {
                Activation::GeluErf => Some(2 * backward as usize),
                Activation::GeluTanh => Some(1 + 2 * backward as usize),
                Activation::Relu => None,
            },
            with_bias: !backward,
            numel: self.tensor().numel(),
        }
    }
}

/// An epilogue as a plan sees it: which one (the shader's EPILOGUE - 1, `None` where the kernel
/// has none), whether it goes with a bias (the forward GELU does, its gradient does not), and the
/// size of its tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpilogueWanted {
    pub index: Option<usize>,
    pub with_bias: bool,
    pub numel: usize,
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

/// What a plan needs to know of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Split a long K over more workgroups (`Gpu::split_k`: GPUs).
    pub split_k: bool,
    /// Read operands from images (`Gpu::image_operands`: CPU adapters).
    pub image_operands: bool,
    /// The subgroup kernel (`Gpu::subgroup_matmul`), with the invocations of the device's
    /// subgroups (`Gpu::subgroup_lanes`): its workgroup, and an eighth of its tile's width.
    pub subgroup: Option<u32>,
    /// Workgroup-memory tiles in place of the vec4 kernel (`Gpu::shared_matmul`).
    pub shared: bool,
    /// max_texture_dimension_2d: the largest image of operand rows.
    pub max_texture: usize,
}

impl Caps {
    pub fn of(gpu: &Gpu) -> Caps {
        Caps {
            split_k: gpu.split_k(),
            image_operands: gpu.image_operands(),
            subgroup: gpu.subgroup_matmul().then(|| gpu.subgroup_lanes()),
            shared: gpu.shared_matmul(),
            max_texture: gpu.limits.max_texture_dimension_2d as usize,
        }
    }
}

/// A product's shape and layout without its tensors: what `plan` decides from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: [usize; 2],
    pub a: Strides,
    pub b: Strides,
    pub c: Strides,
    pub bias: bool,
    pub accumulate: bool,
}

/// How a product runs, decided from its [`Dims`] and the device's [`Caps`] before anything is
/// recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// K is over MAX_K: products over chunks of it, accumulated into C.
    LongK,
    /// A few rows on `matmul_rows`, reading B along n (GPT-2's Conv1D weights) or along k.
    FewRows { b_along_n: bool },
    /// Split-K: `splits` partial products over chunks of K, summed (see SPLIT_BELOW_TILES).
    SplitK { splits: usize },
    /// B runs along k, so its columns are its image's rows, and it has more than an image holds
    /// (an LM head's 50,257): products over parts of `cols` columns, each on the image kernels.
    ColumnParts { cols: usize },
    /// One dispatch of a tiled kernel.
    Tiled(Tiled),
}

/// The tiled kernels, with the orientation in which each reads its A and B blocks (A along k,
/// B along n) and, for those that read images, where the images' rows lie in A and B.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tiled {
    /// Any strides, scalar loads.
    Scalar,
    /// vec4 loads from storage buffers.
    Vec4 { a_along_k: bool, b_along_n: bool },
    /// The vec4 kernel with the tile staged in workgroup memory (GPUs, `Gpu::shared_matmul`).
    Shared { a_along_k: bool, b_along_n: bool },
    /// vec4 blocks from images of A's and B's rows (CPU adapters).
    Image {
        a_along_k: bool,
        b_along_n: bool,
        rows: [Rows; 2],
    },
    /// The image kernel with each texel fetched once per subgroup, C's rows stored as vec4s where
    /// `c_vec4` (see [`Dims::c_rows_vec4`]), else element by element.
    Subgroup {
        a_along_k: bool,
        b_along_n: bool,
        rows: [Rows; 2],
        c_vec4: bool,
        lanes: u32,
    },
}

impl Tiled {
    /// Output tile of one workgroup (rows, columns).
    fn tile(&self) -> (usize, usize) {
        match self {
            Tiled::Scalar => SCALAR_TILE,
            Tiled::Vec4 { .. } | Tiled::Shared { .. } | Tiled::Image { .. } => VEC4_TILE,
            Tiled::Subgroup { lanes, .. } => (SUBGROUP_TILE_ROWS, 8 * *lanes as usize),
        }
    }

    /// The pipeline for this kernel, storing C as `store` says (see `stores!`) or with epilogue
    /// `epilogue` (the shader's EPILOGUE - 1; the subgroup kernel only).
    fn kernel(&self, store: usize, epilogue: Option<usize>) -> &'static Kernel {
        match (*self, epilogue) {
            (Tiled::Scalar, _) => &MATMUL[store],
            (
                Tiled::Vec4 {
                    a_along_k,
                    b_along_n,
                },
                _,
            ) => &MATMUL_VEC4[a_along_k as usize][b_along_n as usize][store],
            (
                Tiled::Shared {
                    a_along_k,
                    b_along_n,
                },
                _,
            ) => &MATMUL_SHARED[a_along_k as usize][b_along_n as usize][store],
            (
                Tiled::Image {
                    a_along_k,
                    b_along_n,
                    ..
                },
                _,
            ) => &MATMUL_IMAGE[a_along_k as usize][b_along_n as usize][store],
            (
                Tiled::Subgroup {
                    a_along_k,
                    b_along_n,
                    c_vec4: true,
                    ..
                },
                None,
            ) => &MATMUL_SUBGROUP[a_along_k as usize][b_along_n as usize][store],
            (
                Tiled::Subgroup {
                    a_along_k,
                    b_along_n,
                    c_vec4: false,
                    ..
                },
                None,
            ) => &MATMUL_SUBGROUP_CELLS[a_along_k as usize][b_along_n as usize][store],
            (
                Tiled::Subgroup {
                    a_along_k,
                    b_along_n,
                    ..
                },
                Some(e),
            ) => &MATMUL_SUBGROUP_GELU[a_along_k as usize][b_along_n as usize][e],
        }
    }
}

impl Dims {
    /// The plan for this product, or `None` where `epilogue` is wanted and no plan can do it in
    /// its store: that needs the subgroup kernel writing C's own rows (C contiguous, neither
    /// accumulated into nor split, a bias exactly for the forward GELU, the epilogue's tensor
    /// shaped as C).
    pub fn plan(&self, caps: &Caps, epilogue: Option<EpilogueWanted>) -> Option<Plan> {
        if let Some(e) = epilogue {
            let c_whole = self.c.off == 0
                && self.c.rs == self.n
                && self.batch == [1, 1]
                && e.numel == self.m * self.n
                && self.c.numel == self.m * self.n;
            if self.k > MAX_K
                || self.accumulate
                || !c_whole
                || e.with_bias != self.bias
                || e.index.is_none()
            {
                return None;
            }
        }
        if self.k > MAX_K {
            return Some(Plan::LongK);
        }
        if let Some(b_along_n) = self.few_rows_orientation() {
            // A fused epilogue would send the product to a tiled kernel: the caller's separate
            // pass after matmul_rows costs less than the rows a tile computes for nothing.
            return epilogue.is_none().then_some(Plan::FewRows { b_along_n });
        }
        let orientation = self.vec4_orientation();
        if let Some(splits) = self.k_splits(caps, orientation.is_some()) {
            return epilogue.is_none().then_some(Plan::SplitK { splits });
        }
        if let Some(cols) = self.column_parts(caps, orientation) {
            return epilogue.is_none().then_some(Plan::ColumnParts { cols });
        }
        let tiled = match orientation {
            None => Tiled::Scalar,
            Some((a_along_k, b_along_n)) => {
                match (self.image_rows(caps, a_along_k, b_along_n), caps.subgroup) {
                    (None, _) if caps.shared => Tiled::Shared {
                        a_along_k,
                        b_along_n,
                    },
                    (None, _) => Tiled::Vec4 {
                        a_along_k,
                        b_along_n,
                    },
                    (Some(rows), Some(lanes)) => Tiled::Subgroup {
                        a_along_k,
                        b_along_n,
                        rows,
                        c_vec4: self.c_rows_vec4(),
                        lanes,
                    },
                    (Some(rows), None) => Tiled::Image {
                        a_along_k,
                        b_along_n,
                        rows,
                    },
                }
            }
        };
        if epilogue.is_some() && !matches!(tiled, Tiled::Subgroup { c_vec4: true, .. }) {
            return None;
        }
        Some(Plan::Tiled(tiled))
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
        let aligned = |v: &Strides, other: usize| {
            v.off.is_multiple_of(4)
                && v.bs[0].is_multiple_of(4)
                && v.bs[1].is_multiple_of(4)
                && other.is_multiple_of(4)
        };
        let along = |v: &Strides| {
            if v.cs == 1 && aligned(v, v.rs) {
                Some(true)
            } else if v.rs == 1 && aligned(v, v.cs) {
                Some(false)
            } else {
                None
            }
        };
        Some((along(&self.a)?, along(&self.b)?))
    }

    /// The width of the parts of [`Plan::ColumnParts`], where it applies: on a device that reads
    /// operands from images, a single product without a bias (a bias would need parts of its
    /// own) whose B runs along k with more columns than an image has rows, where a part of the
    /// widest whole number of tiles that fits would be read from images. The parts add the same
    /// terms in the same order as the vec4 kernel that would run the whole, so the bits are the
    /// same.
    fn column_parts(&self, caps: &Caps, orientation: Option<(bool, bool)>) -> Option<usize> {
        let (ak, bn) = orientation?;
        let cols = caps.max_texture / VEC4_TILE.1 * VEC4_TILE.1;
        if !caps.image_operands
            || bn
            || self.bias
            || self.batch != [1, 1]
            || self.n <= caps.max_texture
            || cols == 0
        {
            return None;
        }
        Dims { n: cols, ..*self }
            .image_rows(caps, ak, bn)
            .map(|_| cols)
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
    fn k_splits(&self, caps: &Caps, blocked: bool) -> Option<usize> {
        if !caps.split_k {
            return None;
        }
        let (tm, tn) = if blocked { VEC4_TILE } else { SCALAR_TILE };
        let tiles = self.m.div_ceil(tm) * self.n.div_ceil(tn);
        let contiguous_c = self.c.rs == self.n && self.c.cs == 1;
        let chunks_start_rows = self.a.rs == 1 && self.b.cs == 1;
        if self.batch != [1, 1]
            || self.bias
            || !contiguous_c
            || !chunks_start_rows
            || tiles >= SPLIT_BELOW_TILES
        {
            return None;
        }
        let splits = (SPLIT_TARGET_TILES / tiles).min(self.k / MIN_SPLIT_K);
        (splits >= 2).then_some(splits)
    }

    /// Where A's and B's rows lie for images of them, when the device reads operands from images
    /// and both fit one (see [`Strides::image_rows`] and [`Rows::fits`]); `None` sends the
    /// product to the buffer kernels.
    fn image_rows(&self, caps: &Caps, ak: bool, bn: bool) -> Option<[Rows; 2]> {
        if !caps.image_operands {
            return None;
        }
        let ra = self.a.a_image_rows(self.m, self.k, self.batch, ak)?;
        let rb = self.b.b_image_rows(self.k, self.n, self.batch, bn)?;
        // Both must fit before either is copied (Step::image checks each again, as it must for
        // any caller).
        let fits = |r: &Rows, v: &Strides| r.fits(caps.max_texture, v.byte_offset, v.numel, v.elem);
        (fits(&ra, &self.a).is_ok() && fits(&rb, &self.b).is_ok()).then_some([ra, rb])
    }
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
    /// `kernel` as this product runs it: where B holds half-precision weights, the same kernel
    /// from the family that reads them (its bindings of B then take the f16 tensor and its
    /// rgba16float image; the bias binding's stand-in, where there is no bias, is A for the same
    /// reason).
    fn for_b(&self, kernel: &'static Kernel) -> &'static Kernel {
        if self.b.t.dtype() != DType::F16 {
            return kernel;
        }
        let family = crate::ops::half_twin(kernel.family);
        // Binding 2 is B's scalar view; binding 6, where a buffer, its vec4 view; and B's image,
        // where the kernel reads one, is its last image.
        let mut halves = vec![1];
        if kernel.bindings.get(5) == Some(&Access::Read) {
            halves.push(5);
        }
        halves.extend(kernel.bindings.iter().rposition(|a| *a == Access::Image));
        kernel.in_family(family, &halves)
    }

    /// Which of a kernel's pipelines stores C for this product (see `stores!`).
    fn store(&self) -> usize {
        self.bias.is_some() as usize | (self.accumulate as usize) << 1
    }

    /// C as the destination of a sum over partial products.
    fn c_dest(&self) -> Dest<'_> {
        Dest {
            out: self.c.t,
            at: self.c.off,
            accumulate: self.accumulate,
        }
    }

    /// This product's numbers, for `Dims::plan`.
    pub fn dims(&self) -> Dims {
        Dims {
            m: self.m,
            n: self.n,
            k: self.k,
            batch: self.batch,
            a: self.a.strides(),
            b: self.b.strides(),
            c: self.c.strides(),
            bias: self.bias.is_some(),
            accumulate: self.accumulate,
        }
    }

    /// Shape errors, before anything is planned: zero sizes, views past their tensors, a bias
    /// that is not n long, an output that aliases an input.
    fn check(&self) -> Result<()> {
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
            let need = v.strides().max_index(r, c, self.batch) + 1;
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
        Ok(())
    }

    /// Records the matmul into `step`.
    pub fn record(&self, step: &mut Step) -> Result<()> {
        self.record_with(step, None).map(drop)
    }

    /// Records the matmul with `epilogue` done in its store where a plan can do that (see
    /// [`Dims::plan`]). Returns whether it recorded; if not, it records nothing, and the caller
    /// runs the product and the GELU kernel.
    pub fn record_with(&self, step: &mut Step, epilogue: Option<Epilogue>) -> Result<bool> {
        self.check()?;
        let caps = Caps::of(step.gpu());
        let Some(plan) = self.dims().plan(&caps, epilogue.map(|e| e.wanted())) else {
            return Ok(false);
        };
        match plan {
            Plan::LongK => self.record_long_k(step)?,
            Plan::FewRows { b_along_n } => self.record_few_rows(step, b_along_n)?,
            Plan::SplitK { splits } => self.record_split(step, splits)?,
            Plan::ColumnParts { cols } => self.record_column_parts(step, cols)?,
            Plan::Tiled(t) => self.dispatch_tiled(step, t, epilogue)?,
        }
        Ok(true)
    }

    /// The product as parts of `cols` columns of B and C (see [`Plan::ColumnParts`]).
    fn record_column_parts(&self, step: &mut Step, cols: usize) -> Result<()> {
        for first in (0..self.n).step_by(cols) {
            self.columns(first, cols.min(self.n - first)).record(step)?;
        }
        Ok(())
    }

    /// This product restricted to `n` columns of B and C from column `first`.
    fn columns(&self, first: usize, n: usize) -> Gemm<'_> {
        Gemm {
            n,
            b: View {
                off: self.b.off + first * self.b.cs,
                ..self.b
            },
            c: View {
                off: self.c.off + first * self.c.cs,
                ..self.c
            },
            ..*self
        }
    }

    /// The shader's parameter block for this product, laid out in (tiles_m, tiles_n) tiles per
    /// batch matrix, `group_tiles` tiles per workgroup.
    fn params(&self, (tiles_m, tiles_n): (usize, usize), group_tiles: u64) -> Result<Params> {
        const OP: &str = "matmul";
        let u = |x| crate::ops::u32_of(OP, "size", x);
        let [b1, b2] = self.batch;
        Ok(Params {
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
        })
    }

    /// lavapipe silently stops an invocation's loops after 65,535 iterations in all (see
    /// ARCHITECTURE.md), so a K over MAX_K runs as several products accumulated into C.
    fn record_long_k(&self, step: &mut Step) -> Result<()> {
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
        Ok(())
    }

    /// A product of a few rows on `matmul_rows`. Where B runs along n (GPT-2's Conv1D weights,
    /// [k, n]) and K is long, K is cut into chunks of FEW_ROWS_CHUNK rows of B, each workgroup
    /// reading one chunk's contiguous block, their partial products summed into C afterwards. A
    /// GPU needs the chunks' workgroups: without them a 768-column product is 3 workgroups. On
    /// lavapipe they make a 1 × 768 × 3072 product on a B already in cache about 3 times faster
    /// (2.8 ms against 7.8), but not a caption, whose products each read new weights from memory.
    fn record_few_rows(&self, step: &mut Step, b_along_n: bool) -> Result<()> {
        if self.record_few_rows_held(step, b_along_n)? {
            return Ok(());
        }
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
            return sum_rows_into(step, &partial, (chunks, m * n), m * n, self.c_dest());
        }
        self.dispatch_few_rows(step, b_along_n)
    }

    /// `matmul_rows_image`, where B lies in a tensor whose images are held (`Gpu::hold_images`:
    /// a decoder's weights while it generates): B is read from an image made on its first use and
    /// kept. Along k, B's columns are the image's rows, so a B of more columns than an image has
    /// rows (the LM head) runs in parts of columns, each with its own image; a bias would need
    /// its own parts too, so such a product keeps `matmul_rows`. Returns whether it recorded.
    fn record_few_rows_held(&self, step: &mut Step, b_along_n: bool) -> Result<bool> {
        let max_rows = step.gpu().limits.max_texture_dimension_2d as usize / 8 * 8;
        let part = if b_along_n { self.n } else { max_rows };
        if part == 0 || (self.n > part && self.bias.is_some()) {
            return Ok(false);
        }
        let mut parts = Vec::new();
        for first in (0..self.n).step_by(part) {
            let g = self.columns(first, part.min(self.n - first));
            let Some(rows) = g.b.strides().b_image_rows(g.k, g.n, [1, 1], b_along_n) else {
                return Ok(false);
            };
            let Some(image) = step.held_image(g.b.t, &rows)? else {
                return Ok(false);
            };
            parts.push((g, image));
        }
        let kernel = self.for_b(&MATMUL_ROWS_IMAGE[self.m - 1][b_along_n as usize][self.store()]);
        for (g, image) in parts {
            let bias = g.bias.unwrap_or(g.a.t);
            let tensors = [g.a.t, g.b.t, bias, g.c.t, g.a.t];
            // 8 columns per invocation, ROWS_IMAGE_INVOCATIONS (16) per workgroup.
            let groups = g.n.div_ceil(8 * 16) as u64;
            let params = g.params((1, 1), 1)?;
            step.dispatch_linear_images(kernel, &params, &tensors, &[&image], groups)?;
        }
        Ok(true)
    }

    /// One `matmul_rows` dispatch: batch entries are chunks of K (see `record_few_rows`).
    fn dispatch_few_rows(&self, step: &mut Step, b_along_n: bool) -> Result<()> {
        let col_groups = self.n.div_ceil(4 * 64);
        let params = self.params((1, col_groups), 1)?;
        let bias = self.bias.unwrap_or(self.a.t);
        let tensors = [self.a.t, self.b.t, bias, self.c.t, self.a.t, self.b.t];
        let kernel = self.for_b(&MATMUL_ROWS[self.m - 1][b_along_n as usize][self.store()]);
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
        sum_rows_into(step, &partial, (splits, m * n), m * n, self.c_dest())?;
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

    /// One dispatch of tiled kernel `t`, with `epilogue` in its store where given (the plan
    /// chose the subgroup kernel for it).
    fn dispatch_tiled(&self, step: &mut Step, t: Tiled, epilogue: Option<Epilogue>) -> Result<()> {
        let [b1, b2] = self.batch;
        let (tm, tn) = t.tile();
        let tiles_m = self.m.div_ceil(tm);
        let tiles_n = self.n.div_ceil(tn);
        let tiles = (tiles_m * tiles_n) as u64 * (b1 * b2) as u64;
        let group_tiles = match t {
            Tiled::Subgroup { .. } => subgroup_group_tiles(tiles, self.k),
            _ => 1,
        };
        let total = tiles.div_ceil(group_tiles);
        let params = self.params((tiles_m, tiles_n), group_tiles)?;
        let kernel = t.kernel(self.store(), epilogue.and_then(|e| e.wanted().index));
        let kernel = match t {
            Tiled::Subgroup { lanes, .. } => kernel.with(&[("LANES", lanes)]),
            _ => kernel,
        };
        let kernel = self.for_b(kernel);
        let bias = self.bias.unwrap_or(self.a.t);
        let (a, b, c) = (self.a.t, self.b.t, self.c.t);
        match t {
            Tiled::Scalar => step.dispatch_linear(kernel, &params, &[a, b, bias, c], total),
            Tiled::Vec4 { .. } | Tiled::Shared { .. } => {
                step.dispatch_linear(kernel, &params, &[a, b, bias, c, a, b], total)
            }
            Tiled::Image { rows: [ra, rb], .. } => {
                let (ia, ib) = (step.image(a, &ra)?, step.image(b, &rb)?);
                step.dispatch_linear_images(kernel, &params, &[a, b, bias, c], &[&ia, &ib], total)
            }
            Tiled::Subgroup { rows: [ra, rb], .. } => {
                let (ia, ib) = (step.image(a, &ra)?, step.image(b, &rb)?);
                // Without an epilogue, a spare vec4 stands in for its tensor.
                let spare;
                let aux = match epilogue {
                    Some(e) => e.tensor(),
                    None => {
                        spare = step.empty(&[4])?;
                        &spare
                    }
                };
                let tensors = [a, b, bias, c, aux];
                step.dispatch_linear_images(kernel, &params, &tensors, &[&ia, &ib], total)
            }
        }
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

/// Plans decided without a GPU, for the shapes of a caption, a training step and a distillation.
#[cfg(test)]
mod tests {
    use super::*;

    /// A contiguous [rows, cols] matrix alone in its tensor, as `View::matrix` lays it out.
    fn matrix(rows: usize, cols: usize, transposed: bool) -> Strides {
        let (rs, cs) = if transposed { (1, cols) } else { (cols, 1) };
        Strides {
            off: 0,
            rs,
            cs,
            bs: [rows * cols, 0],
            numel: rows * cols,
            byte_offset: 0,
            elem: 4,
        }
    }

    /// C = A · B for A [m, k] (stored [k, m] if `ta`) and B [k, n] (stored [n, k] if `tb`).
    fn product(m: usize, n: usize, k: usize, ta: bool, tb: bool) -> Dims {
        Dims {
            m,
            n,
            k,
            batch: [1, 1],
            a: if ta {
                matrix(k, m, true)
            } else {
                matrix(m, k, false)
            },
            b: if tb {
                matrix(n, k, true)
            } else {
                matrix(k, n, false)
            },
            c: matrix(m, n, false),
            bias: false,
            accumulate: false,
        }
    }

    const LAVAPIPE: Caps = Caps {
        split_k: false,
        image_operands: true,
        subgroup: Some(8),
        shared: false,
        max_texture: 16384,
    };
    const GPU: Caps = Caps {
        split_k: true,
        image_operands: false,
        subgroup: None,
        shared: false,
        max_texture: 16384,
    };

    const GELU: EpilogueWanted = EpilogueWanted {
        index: Some(0),
        with_bias: true,
        numel: 64 * 3072,
    };

    #[test]
    fn one_generated_token_takes_the_few_rows_kernel_everywhere() {
        // GPT-2's MLP up-projection for one token: Conv1D weights [768, 3072], read along n.
        for caps in [LAVAPIPE, GPU] {
            let p = product(1, 3072, 768, false, false).plan(&caps, None);
            assert_eq!(p, Some(Plan::FewRows { b_along_n: true }));
        }
        // The ViT's nn.Linear weights [out, in] are read along k.
        let p = product(2, 768, 768, false, true).plan(&GPU, None);
        assert_eq!(p, Some(Plan::FewRows { b_along_n: false }));
        // Too narrow for it (the losses' head-by-head products): tiled.
        let p = product(1, 16, 768, false, false).plan(&GPU, None);
        assert!(matches!(p, Some(Plan::Tiled(_))), "{p:?}");
    }

    #[test]
    fn an_lm_head_wider_than_an_image_runs_in_column_parts_on_image_devices() {
        // A full-size student's LM head: 256 tokens × 192 wide against 50,257 rows of [out, in].
        let head = product(256, 50257, 192, false, true);
        assert_eq!(
            head.plan(&LAVAPIPE, None),
            Some(Plan::ColumnParts { cols: 16384 })
        );
        // A part fits an image (the subgroup kernel storing element by element: C's rows,
        // 50,257 long, are not whole vec4s); GPUs read buffers and need no parts.
        let part = Dims { n: 16384, ..head };
        assert!(matches!(
            part.plan(&LAVAPIPE, None),
            Some(Plan::Tiled(Tiled::Subgroup { c_vec4: false, .. }))
        ));
        let no_subgroups = Caps {
            subgroup: None,
            ..LAVAPIPE
        };
        assert!(matches!(
            part.plan(&no_subgroups, None),
            Some(Plan::Tiled(Tiled::Image { .. }))
        ));
        assert!(matches!(
            head.plan(&GPU, None),
            Some(Plan::Tiled(Tiled::Vec4 { .. }))
        ));
        // A bias would need parts of its own; B along n keeps its columns in the image's rows.
        let biased = Dims { bias: true, ..head };
        assert!(matches!(
            biased.plan(&LAVAPIPE, None),
            Some(Plan::Tiled(Tiled::Vec4 { .. }))
        ));
        let along_n = product(256, 50257, 192, false, false);
        assert!(!matches!(
            along_n.plan(&LAVAPIPE, None),
            Some(Plan::ColumnParts { .. })
        ));
    }

    #[test]
    fn a_long_k_is_chunked_before_anything_else() {
        let p = product(64, 64, MAX_K + 4, false, false).plan(&LAVAPIPE, None);
        assert_eq!(p, Some(Plan::LongK));
        let p = product(64, 64, MAX_K, false, false).plan(&LAVAPIPE, None);
        assert!(
            matches!(p, Some(Plan::Tiled(Tiled::Subgroup { .. }))),
            "{p:?}"
        );
    }

    #[test]
    fn weight_gradients_split_k_on_gpus_only() {
        // Xᵀ·dY over 2,080 tokens: 128 × 512, 16 tiles of 64 × 64.
        let dw = product(128, 512, 2080, true, false);
        let splits = (SPLIT_TARGET_TILES / 16).min(2080 / MIN_SPLIT_K);
        assert_eq!(dw.plan(&GPU, None), Some(Plan::SplitK { splits }));
        assert!(matches!(
            dw.plan(&LAVAPIPE, None),
            Some(Plan::Tiled(Tiled::Subgroup {
                a_along_k: false,
                b_along_n: true,
                ..
            }))
        ));
        // With a bias the chunks' sum would add it once per chunk: not split.
        let biased = Dims { bias: true, ..dw };
        assert!(matches!(
            biased.plan(&GPU, None),
            Some(Plan::Tiled(Tiled::Vec4 { .. }))
        ));
    }

    #[test]
    fn kernels_follow_alignment_and_the_device() {
        let x = product(64, 512, 512, false, true);
        let vec4 = Tiled::Vec4 {
            a_along_k: true,
            b_along_n: false,
        };
        assert_eq!(x.plan(&GPU, None), Some(Plan::Tiled(vec4)));
        // Without subgroups, CPU adapters read images in the image kernel.
        let images = Caps {
            subgroup: None,
            ..LAVAPIPE
        };
        assert!(matches!(
            x.plan(&images, None),
            Some(Plan::Tiled(Tiled::Image { .. }))
        ));
        // GPT-2's 50,257-word LM head reads the embedding [50257, 768] along k, but as an image
        // it would be 50,257 texels high: in column parts (see the test above), or on a device
        // without images the vec4 kernel on buffers. The gradient of that embedding reads the
        // logits' gradient transposed, along rows of odd width: no vec4s (`linear_bwd` reads a
        // padded copy instead).
        let head = product(64, 50257, 768, false, true);
        assert_eq!(head.plan(&GPU, None), Some(Plan::Tiled(vec4)));
        let head_grad = product(50257, 768, 64, true, false);
        assert_eq!(
            head_grad.plan(&LAVAPIPE, None),
            Some(Plan::Tiled(Tiled::Scalar))
        );
        // Rows wider than an image can be: the vec4 kernel on buffers.
        let small = Caps {
            max_texture: 64,
            ..LAVAPIPE
        };
        assert_eq!(x.plan(&small, None), Some(Plan::Tiled(vec4)));
    }

    #[test]
    fn workgroup_tiles_replace_the_vec4_kernel_where_asked() {
        let shared = Caps {
            shared: true,
            ..GPU
        };
        let x = product(64, 512, 512, false, true);
        assert_eq!(
            x.plan(&shared, None),
            Some(Plan::Tiled(Tiled::Shared {
                a_along_k: true,
                b_along_n: false,
            }))
        );
        // Not where the vec4 kernel would not run either, nor in place of images.
        let odd = product(5, 7, 9, false, false);
        assert_eq!(odd.plan(&shared, None), Some(Plan::Tiled(Tiled::Scalar)));
        let on_images = Caps {
            shared: true,
            ..LAVAPIPE
        };
        assert!(matches!(
            x.plan(&on_images, None),
            Some(Plan::Tiled(Tiled::Subgroup { .. }))
        ));
    }

    #[test]
    fn an_epilogue_only_where_the_subgroup_kernel_writes_c_whole() {
        let up = Dims {
            bias: true,
            ..product(64, 3072, 768, false, false)
        };
        assert!(matches!(
            up.plan(&LAVAPIPE, Some(GELU)),
            Some(Plan::Tiled(Tiled::Subgroup { .. }))
        ));
        // Each of these leaves the GELU to the caller's own pass.
        let relu = EpilogueWanted {
            index: None,
            ..GELU
        };
        let unbiased = EpilogueWanted {
            with_bias: false,
            ..GELU
        };
        let accumulating = Dims {
            accumulate: true,
            ..up
        };
        let one_row = Dims {
            m: 1,
            c: matrix(1, 3072, false),
            ..up
        };
        // Rows that are not whole vec4s: the subgroup kernel stores them element by element,
        // without the epilogue's vec4 tensor.
        let odd = Dims {
            bias: true,
            ..product(64, 3070, 768, false, false)
        };
        for (d, e, caps) in [
            (
                odd,
                EpilogueWanted {
                    numel: 64 * 3070,
                    ..GELU
                },
                LAVAPIPE,
            ),
            (up, GELU, GPU),
            (up, relu, LAVAPIPE),
            (up, unbiased, LAVAPIPE),
            (accumulating, GELU, LAVAPIPE),
            (
                one_row,
                EpilogueWanted {
                    numel: 3072,
                    ..GELU
                },
                LAVAPIPE,
            ),
        ] {
            assert_eq!(d.plan(&caps, Some(e)), None, "{d:?} {e:?} {caps:?}");
        }
    }
}
