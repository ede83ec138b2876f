//! Typed launchers, one module per shader family. Each checks shapes and limits and returns a
//! `Result` before anything reaches wgpu, then records its dispatches into a [`Step`].
//!
//! [`Step`]: crate::gpu::Step

pub mod amad;
pub mod attention;
pub mod elementwise;
pub mod embedding;
pub mod image;
pub mod layernorm;
pub mod loss;
pub mod matmul;
pub mod optim;
pub mod reduce;
pub mod softmax;

/// Every shader family: (name, WGSL source without the common prelude).
pub const SHADERS: &[(&str, &str)] = &[
    ("matmul", include_str!("../../shaders/matmul.wgsl")),
    (
        "elementwise",
        include_str!("../../shaders/elementwise.wgsl"),
    ),
    ("layernorm", include_str!("../../shaders/layernorm.wgsl")),
    ("softmax", include_str!("../../shaders/softmax.wgsl")),
    ("embedding", include_str!("../../shaders/embedding.wgsl")),
    ("loss", include_str!("../../shaders/loss.wgsl")),
    ("reduce", include_str!("../../shaders/reduce.wgsl")),
    ("optim", include_str!("../../shaders/optim.wgsl")),
    ("image", include_str!("../../shaders/image.wgsl")),
    ("amad", include_str!("../../shaders/amad.wgsl")),
    ("attention", include_str!("../../shaders/attention.wgsl")),
    (
        "matmul_subgroup",
        include_str!("../../shaders/matmul_subgroup.wgsl"),
    ),
    (
        "attention_subgroup",
        include_str!("../../shaders/attention_subgroup.wgsl"),
    ),
];

/// Families whose source begins with another family's (WGSL has no includes): each adds kernels
/// to its base's parameters, bindings and helpers, in a module of its own because they need
/// subgroup operations, which not every device has.
pub const EXTENDS: &[(&str, &str)] = &[
    ("matmul_subgroup", "matmul"),
    ("attention_subgroup", "attention"),
];

/// Prepended to every family: shared helpers (WGSL has no includes).
pub const PRELUDE: &str = include_str!("../../shaders/common.wgsl");

/// Added after the base of every family that extends one (those that use subgroup operations).
const SUBGROUP_HELPERS: &str = include_str!("../../shaders/subgroup.wgsl");

/// Families that read half-precision weights: (family, the family it is made from, the section it
/// puts in place of its base's "half-precision section", which holds the f32 storage of what it
/// reads in f16). The matmul's twins read B in f16, the embedding's its table.
pub const HALF: &[(&str, &str, &str)] = &[
    ("matmul_f16b", "matmul", MATMUL_HALF),
    ("matmul_subgroup_f16b", "matmul_subgroup", MATMUL_HALF),
    ("embedding_f16t", "embedding", EMBEDDING_HALF),
];

const MATMUL_HALF: &str = include_str!("../../shaders/matmul_f16b.wgsl");
const EMBEDDING_HALF: &str = include_str!("../../shaders/embedding_f16t.wgsl");

/// `src` with its half-precision section (from its "---- half-precision section" line through its
/// "---- end of the half-precision section ----" line) replaced by `section`.
fn with_half(src: &str, section: &str) -> String {
    const START: &str = "// ---- half-precision section";
    const END: &str = "// ---- end of the half-precision section ----";
    let (Some(a), Some(b)) = (src.find(START), src.find(END)) else {
        panic!("no half-precision section to replace");
    };
    format!("{}{section}{}", &src[..a], &src[b + END.len()..])
}

/// The family that reads in f16 what `family` reads in f32.
pub fn half_twin(family: &str) -> &'static str {
    HALF.iter()
        .find(|(_, base, _)| *base == family)
        .map(|(half, _, _)| *half)
        .unwrap_or_else(|| panic!("{family} has no twin that reads f16"))
}

/// Full WGSL source of a shader family, prelude and any family it extends included.
pub fn shader_source(family: &str) -> String {
    if let Some((_, base, section)) = HALF.iter().find(|(f, _, _)| *f == family) {
        return with_half(&shader_source(base), section);
    }
    let own = |family: &str| {
        SHADERS
            .iter()
            .find(|(n, _)| *n == family)
            .map(|(_, s)| *s)
            .unwrap_or_else(|| panic!("unknown shader family {family}"))
    };
    match EXTENDS.iter().find(|(f, _)| *f == family) {
        Some((_, base)) => format!(
            "{PRELUDE}\n{}\n{SUBGROUP_HELPERS}\n{}",
            own(base),
            own(family)
        ),
        None => format!("{PRELUDE}\n{}", own(family)),
    }
}

/// Every kernel launched by amad, for the validation tests.
pub fn kernels() -> Vec<&'static crate::gpu::Kernel> {
    matmul::kernels()
        .chain(OTHER_KERNELS.iter().copied())
        .collect()
}

/// The kernels other than matmul's, whose pipelines come in larger tables.
const OTHER_KERNELS: &[&crate::gpu::Kernel] = &[
    &elementwise::ADD,
    &elementwise::BIAS_ADD,
    &elementwise::AXPY,
    &elementwise::PAD_ROWS,
    &elementwise::GELU_ERF_FWD,
    &elementwise::GELU_ERF_BWD,
    &elementwise::GELU_TANH_FWD,
    &elementwise::GELU_TANH_BWD,
    &elementwise::RELU_FWD,
    &elementwise::RELU_BWD,
    &elementwise::GELU_ERF_IMAGE[0],
    &elementwise::GELU_ERF_IMAGE[1],
    &elementwise::GELU_TANH_IMAGE[0],
    &elementwise::GELU_TANH_IMAGE[1],
    &layernorm::FWD,
    &layernorm::BWD_X[0],
    &layernorm::BWD_X[1],
    &layernorm::BWD_PARAMS,
    &layernorm::FWD_IMAGE,
    &layernorm::BWD_X_IMAGE[0],
    &layernorm::BWD_X_IMAGE[1],
    &layernorm::BWD_PARAMS_IMAGE,
    &softmax::FWD,
    &softmax::BWD,
    &embedding::FWD,
    &embedding::FWD_ROWS,
    &embedding::BWD,
    &embedding::BWD_ROWS,
    &embedding::VIT_TOKENS_FWD,
    &embedding::VIT_TOKENS_BWD,
    &loss::CE_FWD,
    &loss::CE_BWD,
    &loss::CE_FWD_ROWS,
    &loss::CE_BWD_ROWS,
    &loss::KL_FWD_ROWS,
    &loss::KL_BWD_ROWS,
    &loss::KL_FWD,
    &loss::KL_BWD,
    &loss::MEAN,
    &reduce::SUM_SEGMENTS,
    &reduce::SUM_COLUMNS[0],
    &reduce::SUM_COLUMNS[1],
    &reduce::SUM_COLUMNS_IMAGE[0],
    &reduce::SUM_COLUMNS_IMAGE[1],
    &reduce::BROADCAST_SCALAR,
    &optim::ADAMW,
    &optim::ADAMW_VEC4,
    &optim::CLIP_SCALE,
    &image::UNPACK,
    &image::RESIZE_H,
    &image::RESIZE_V,
    &image::PATCHIFY,
    &amad::ALIGN_STATS,
    &amad::ALIGN_SUM,
    &amad::ALIGN_WEIGHTS,
    &amad::ALIGN_KL,
    &amad::ALIGN_KL_DW,
    &amad::ALIGN_GRAD,
    &amad::ALIGN_REDUCE,
    &amad::ONE_TO_ONE_COUNT,
    &attention::SCORES,
    &attention::SOFTMAX[0],
    &attention::SOFTMAX[1],
    &attention::SOFTMAX[2],
    &attention::SOFTMAX[3],
    &attention::ROW_DOTS[0],
    &attention::ROW_DOTS[1],
    &attention::DSCORES[0],
    &attention::DSCORES[1],
    &attention::DSCORES_IMAGE[0],
    &attention::DSCORES_IMAGE[1],
    &attention::APPLY,
    &attention::SCORES_IMAGE,
    &attention::SCORES_SUBGROUP,
    &attention::APPLY_SUBGROUP,
    &attention::APPLY_IMAGE[0],
    &attention::APPLY_IMAGE[1],
    &attention::SCORES_ROW_IMAGE,
    &attention::APPLY_ROW_IMAGE,
    &attention::ROW_IMAGE,
    &attention::UNPAD,
    &attention::UNPAD4,
    &amad::ONE_TO_ONE,
    &amad::ONE_TO_ONE_FINISH,
];

/// The two pipelines of a kernel that sets its output or adds to it (the shader's ACCUMULATE
/// constant, see `Kernel::specialised`), [set, add], under `names`.
const fn set_or_add(
    names: [&'static str; 2],
    family: &'static str,
    entry: &'static str,
    bindings: &'static [crate::gpu::Access],
) -> [crate::gpu::Kernel; 2] {
    use crate::gpu::Kernel;
    [
        Kernel::specialised(names[0], family, entry, bindings, &[("ACCUMULATE", 0.0)]),
        Kernel::specialised(names[1], family, entry, bindings, &[("ACCUMULATE", 1.0)]),
    ]
}

/// Workgroups needed to cover `n` items at `per` items per workgroup.
pub(crate) fn groups(n: usize, per: usize) -> u64 {
    (n as u64).div_ceil(per as u64)
}

/// Converts a size to the u32 the shaders index with, or says which dimension is too big.
pub(crate) fn u32_of(op: &'static str, what: &str, v: usize) -> crate::Result<u32> {
    u32::try_from(v).map_err(|_| crate::Error::Shape {
        op,
        msg: format!("{what} = {v} exceeds u32"),
    })
}
