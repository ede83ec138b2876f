// ---- half-precision section: B's storage in f16, two elements to a 32-bit word (a model's
// weights loaded in half precision: `Precision::HalfWeights`, DType::F16) ----
//
// src/ops/mod.rs puts this section in place of matmul.wgsl's f32 one to make the families
// matmul_f16b and matmul_subgroup_f16b: the same kernels, each element of B widened to f32 as it
// is read (exactly: every f16 is an f32), so a product over f16 weights gives the same bits as the
// f32 kernels over those weights widened. Element i lies in word i / 2 (common.wgsl's half_at).
// The image kernels read B from an rgba16float image, and this binding only for K's remainder.
@group(0) @binding(2) var<storage, read> b: array<u32>;
@group(0) @binding(6) var<storage, read> b4: array<vec2<u32>>;

// Element i of B's binding.
fn b_at(i: u32) -> f32 {
    return half_at(b[i / 2u], i);
}

// Elements 4i .. 4i+3 of B's binding.
fn b4_at(i: u32) -> vec4<f32> {
    let w = b4[i];
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}

// B's image: rgba16float, copied from the f16 tensor as it is (`Step::image`); matmul.wgsl's
// readers widen each texel to f32 as they load it.
@group(0) @binding(6) var b_image: texture_storage_2d<rgba16float, read>;
@group(0) @binding(7) var sg_b_image: texture_storage_2d<rgba16float, read>;
// ---- end of the half-precision section ----
