// Prepended to every shader family (see src/ops/mod.rs).
//
// Reference: src/reference/mod.rs (gelu_erf, gelu_tanh and their gradients).
// Tests: tests/elementwise.rs, tests/matmul.rs.

// Linear workgroup index. Launchers split counts over 65,535 into (x, y) with x = the
// per-dimension limit, so wid.x + wid.y * nwg.x enumerates them; kernels bound-check the result.
fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// Linear invocation index for 1-D kernels with 256 invocations per workgroup.
fn thread_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return group_index(wid, nwg) * 256u + lid;
}

// ---- GELU, both forms, and their slopes: elementwise.wgsl's kernels and the matmul's fused store ----

// erf(z) by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, below f32 resolution of GELU's output).
fn erf_approx(z: f32) -> f32 {
    let s = sign(z);
    let a = abs(z);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return s * (1.0 - poly * exp(-a * a));
}

const INV_SQRT2: f32 = 0.7071067811865476;
const INV_SQRT_2PI: f32 = 0.3989422804014327;
const SQRT_2_OVER_PI: f32 = 0.7978845608028654;

// Exact GELU (ViT): x * Phi(x).
fn gelu_erf(v: f32) -> f32 {
    return 0.5 * v * (1.0 + erf_approx(v * INV_SQRT2));
}

// Its slope: Phi(x) + x * phi(x).
fn gelu_erf_slope(v: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf_approx(v * INV_SQRT2));
    let pdf = INV_SQRT_2PI * exp(-0.5 * v * v);
    return cdf + v * pdf;
}

// tanh(u) that stays finite for large |u| (WGSL's tanh may overflow through exp on some drivers).
fn tanh_stable(u: f32) -> f32 {
    let e = exp(-2.0 * abs(u));
    return sign(u) * (1.0 - e) / (1.0 + e);
}

// The argument of tanh in GPT-2's GELU: sqrt(2/pi) (x + 0.044715 x^3).
fn gelu_tanh_arg(v: f32) -> f32 {
    return SQRT_2_OVER_PI * (v + 0.044715 * v * v * v);
}

// GPT-2's GELU: 0.5 x (1 + tanh(gelu_tanh_arg(x))).
fn gelu_tanh(v: f32) -> f32 {
    return 0.5 * v * (1.0 + tanh_stable(gelu_tanh_arg(v)));
}

fn gelu_tanh_slope(v: f32) -> f32 {
    let th = tanh_stable(gelu_tanh_arg(v));
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v);
    return 0.5 * (1.0 + th) + 0.5 * v * (1.0 - th * th) * du;
}

// Four elements at a time, `tanh` choosing GPT-2's form (a constant at every call).
fn gelu4(v: vec4<f32>, tanh: bool) -> vec4<f32> {
    if (tanh) {
        return vec4<f32>(gelu_tanh(v.x), gelu_tanh(v.y), gelu_tanh(v.z), gelu_tanh(v.w));
    }
    return vec4<f32>(gelu_erf(v.x), gelu_erf(v.y), gelu_erf(v.z), gelu_erf(v.w));
}

fn gelu_slope4(v: vec4<f32>, tanh: bool) -> vec4<f32> {
    if (tanh) {
        return vec4<f32>(gelu_tanh_slope(v.x), gelu_tanh_slope(v.y), gelu_tanh_slope(v.z),
            gelu_tanh_slope(v.w));
    }
    return vec4<f32>(gelu_erf_slope(v.x), gelu_erf_slope(v.y), gelu_erf_slope(v.z),
        gelu_erf_slope(v.w));
}

// Element i of a tensor of f16 elements held two to a 32-bit word, given the word that holds it
// (i / 2): the even element in the low half, as unpack2x16float reads it (little-endian), widened
// to f32 exactly. For the families that read half-precision weights.
fn half_at(word: u32, i: u32) -> f32 {
    let pair = unpack2x16float(word);
    return select(pair.x, pair.y, (i & 1u) == 1u);
}
