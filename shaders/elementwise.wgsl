// Elementwise kernels: add, scaled accumulate, bias add, padded rows, and GELU (both forms) forward/backward
// (GELU's functions are in common.wgsl: the matmul applies them too, in its store).
// One invocation per element, 256 per workgroup.
//
// Launcher: src/ops/elementwise.rs.
// Reference: src/reference/mod.rs (bias_add, pad_rows, gelu_erf, gelu_tanh, relu and their gradients).
// Tests: tests/elementwise.rs.

struct Params {
    n: u32,       // elements
    cols: u32,    // row length, for bias_add
    alpha: f32,   // scale for axpy
    pitch: u32,   // padded row length, for pad_rows
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

// out[r, c] = x[r, c] for c < cols, 0 up to the row's pitch: x's rows at a pitch of whole vec4s
// (y unused but bound).
@compute @workgroup_size(256)
fn pad_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i < p.n) {
        let c = i % p.pitch;
        let v = x[(i / p.pitch) * p.cols + min(c, p.cols - 1u)];
        out[i] = select(0.0, v, c < p.cols);
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

// ReLU, which a config may name instead of a GELU; its slope at 0 is 0, as torch's.
@compute @workgroup_size(256)
fn relu_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i < p.n) {
        out[i] = max(x[i], 0.0);
    }
}

@compute @workgroup_size(256)
fn relu_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i < p.n) {
        out[i] = select(0.0, y[i], x[i] > 0.0);
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
    out4[q] = gelu4(texel_of(x_image, q), TANH);
}

@compute @workgroup_size(256)
fn gelu_bwd_image(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let q = thread_index(wid, nwg, lid);
    if (q >= p.n / 4u) {
        return;
    }
    out4[q] = texel_of(y_image, q) * gelu_slope4(texel_of(x_image, q), TANH);
}
