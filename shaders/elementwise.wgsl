// Elementwise kernels: add, scaled accumulate, bias add, and GELU (both forms) forward/backward.
// One invocation per element, 256 per workgroup.

struct Params {
    n: u32,       // elements
    cols: u32,    // row length, for bias_add
    alpha: f32,   // scale for axpy
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// out = x + y
@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i < p.n) {
        out[i] = x[i] + y[i];
    }
}

// out[r, c] = x[r, c] + y[c]   (y is the bias)
@compute @workgroup_size(256)
fn bias_add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i < p.n) {
        out[i] = x[i] + y[i % p.cols];
    }
}

// out = out + alpha * x   (gradient accumulation; y unused but bound)
@compute @workgroup_size(256)
fn axpy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i < p.n) {
        out[i] = out[i] + p.alpha * x[i];
    }
}

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

@compute @workgroup_size(256)
fn gelu_erf_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i < p.n) {
        out[i] = gelu_erf(x[i]);
    }
}

// dx = dy * gelu'(x); x = input, y = upstream gradient.
@compute @workgroup_size(256)
fn gelu_erf_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i < p.n) {
        out[i] = y[i] * gelu_erf_slope(x[i]);
    }
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

@compute @workgroup_size(256)
fn gelu_tanh_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i < p.n) {
        out[i] = gelu_tanh(x[i]);
    }
}

@compute @workgroup_size(256)
fn gelu_tanh_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i < p.n) {
        out[i] = y[i] * gelu_tanh_slope(x[i]);
    }
}

// ---- GELU with x and dy read from images (see src/gpu/image.rs) ----
//
// On lavapipe a storage load runs once per invocation and element; a texel fetch brings four
// elements for the 8 invocations of a SIMD register. One invocation per texel: x's rows are
// image rows `cols` long (binding 4), dy's likewise (5); element i = 4 · invocation + j, and the
// invocation stores its four as one vec4. The same functions per element as above, so both give
// the same bits. TANH picks GPT-2's form.

override TANH: bool = false;

@group(0) @binding(4) var x_image: texture_storage_2d<rgba32float, read>;
@group(0) @binding(5) var y_image: texture_storage_2d<rgba32float, read>;

// Texel q of a tensor whose rows are `cols` long.
fn texel_of(image: texture_storage_2d<rgba32float, read>, q: u32) -> vec4<f32> {
    let w = p.cols / 4u;
    let r = q / w;
    return textureLoad(image, vec2<i32>(i32(q - r * w), i32(r)));
}

// The output as vec4s (out's binding): lavapipe stores a vec4 for about the cost of one scalar.
@group(0) @binding(3) var<storage, read_write> out4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn gelu_fwd_image(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let q = thread_index(wid, nwg, lid);
    if (q >= p.n / 4u) {
        return;
    }
    let v = texel_of(x_image, q);
    if (TANH) {
        out4[q] = vec4<f32>(gelu_tanh(v.x), gelu_tanh(v.y), gelu_tanh(v.z), gelu_tanh(v.w));
    } else {
        out4[q] = vec4<f32>(gelu_erf(v.x), gelu_erf(v.y), gelu_erf(v.z), gelu_erf(v.w));
    }
}

@compute @workgroup_size(256)
fn gelu_bwd_image(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let q = thread_index(wid, nwg, lid);
    if (q >= p.n / 4u) {
        return;
    }
    let v = texel_of(x_image, q);
    let dy = texel_of(y_image, q);
    if (TANH) {
        out4[q] = dy * vec4<f32>(gelu_tanh_slope(v.x), gelu_tanh_slope(v.y), gelu_tanh_slope(v.z),
            gelu_tanh_slope(v.w));
    } else {
        out4[q] = dy * vec4<f32>(gelu_erf_slope(v.x), gelu_erf_slope(v.y), gelu_erf_slope(v.z),
            gelu_erf_slope(v.w));
    }
}
