// LayerNorm over the last dimension: y = (x - mean) * rstd * gamma + beta.
// One invocation per row (rows are short: 64-512 wide): no barriers, which lavapipe executes
// slowly, and on GPUs the thousands of rows of a batch keep the device busy.
// Each entry point numbers its own bindings (globals sharing a number belong to different entries).
//
// Launcher: src/ops/layernorm.rs. Reference: src/reference/mod.rs (layernorm, layernorm_bwd).
// Tests: tests/layernorm.rs.

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    chunk: u32,  // layernorm_bwd_params: rows per invocation
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// layernorm_bwd_x: add into dx (the residual's gradient already there) rather than set it; fixed
// per pipeline, because lavapipe runs both sides of a branch, loading dx and storing it twice.
override ACCUMULATE: bool = false;

// forward
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;   // [rows, 2]: mean, rstd

@compute @workgroup_size(256)
fn layernorm_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = thread_index(wid, nwg, lid);
    if (r >= p.rows) {
        return;
    }
    let o = r * p.cols;
    var mean = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        mean += x[o + c];
    }
    mean /= f32(p.cols);
    // Two-pass variance: no cancellation for rows with a large mean.
    var var_ = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        let d = x[o + c] - mean;
        var_ += d * d;
    }
    let rstd = inverseSqrt(var_ / f32(p.cols) + p.eps);
    for (var c = 0u; c < p.cols; c++) {
        y[o + c] = (x[o + c] - mean) * rstd * gamma[c] + beta[c];
    }
    stats[2u * r] = mean;
    stats[2u * r + 1u] = rstd;
}

// backward: x (1) and gamma (2) as in the forward, then:
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read> saved: array<f32>;        // the forward's stats
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * gamma.
@compute @workgroup_size(256)
fn layernorm_bwd_x(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = thread_index(wid, nwg, lid);
    if (r >= p.rows) {
        return;
    }
    let o = r * p.cols;
    let mean = saved[2u * r];
    let rstd = saved[2u * r + 1u];
    var mg = 0.0;
    var mgx = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        let g = dy[o + c] * gamma[c];
        mg += g;
        mgx += g * (x[o + c] - mean) * rstd;
    }
    mg /= f32(p.cols);
    mgx /= f32(p.cols);
    for (var c = 0u; c < p.cols; c++) {
        let xhat = (x[o + c] - mean) * rstd;
        let v = rstd * (dy[o + c] * gamma[c] - mg - xhat * mgx);
        if (ACCUMULATE) {
            dx[o + c] += v;
        } else {
            dx[o + c] = v;
        }
    }
}

// parameter gradients: x (1), dy (3), saved (4) as above, then:
@group(0) @binding(2) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(5) var<storage, read_write> dbeta: array<f32>;

// The first pass of the parameter gradients' column sums (reduce.wgsl's sum_columns adds up the
// chunks): invocation (k, c) sets dgamma[k·cols + c] = Σ_r dy·xhat and dbeta[k·cols + c] = Σ_r dy
// over the rows of chunk k (`chunk` rows).
@compute @workgroup_size(256)
fn layernorm_bwd_params(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    let k = i / p.cols;
    let c = i - k * p.cols;
    let r0 = k * p.chunk;
    if (r0 >= p.rows) {
        return;
    }
    let r1 = min(r0 + p.chunk, p.rows);
    var dg = 0.0;
    var db = 0.0;
    for (var r = r0; r < r1; r++) {
        let g = dy[r * p.cols + c];
        dg += g * (x[r * p.cols + c] - saved[2u * r]) * saved[2u * r + 1u];
        db += g;
    }
    dgamma[k * p.cols + c] = dg;
    dbeta[k * p.cols + c] = db;
}

// ---- the same three with their row operands read from images (see src/gpu/image.rs) ----
//
// On lavapipe a storage load runs once per invocation and element; a texel fetch brings four
// elements of a row for the 8 invocations of a SIMD register. Images: x's rows (binding 6), gamma
// as one row (7), and beta (forward) or dy's rows (backward) (8). Each sum adds the same terms in
// the same order as the buffer kernels above, so both give the same bits. Outputs are stored as
// vec4s (the same bindings seen as vec4s): lavapipe stores a vec4 for about the cost of a scalar.

@group(0) @binding(6) var x_image: texture_storage_2d<rgba32float, read>;
@group(0) @binding(7) var gamma_image: texture_storage_2d<rgba32float, read>;
@group(0) @binding(8) var third_image: texture_storage_2d<rgba32float, read>;   // beta (forward) or dy (backward)

@group(0) @binding(4) var<storage, read_write> y4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> dx4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dgamma4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> dbeta4: array<vec4<f32>>;

fn texel(image: texture_storage_2d<rgba32float, read>, t: u32, r: u32) -> vec4<f32> {
    return textureLoad(image, vec2<i32>(i32(t), i32(r)));
}

@compute @workgroup_size(256)
fn layernorm_fwd_image(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = thread_index(wid, nwg, lid);
    if (r >= p.rows) {
        return;
    }
    let n4 = p.cols / 4u;
    var mean = 0.0;
    for (var t = 0u; t < n4; t++) {
        let v = texel(x_image, t, r);
        mean += v.x;
        mean += v.y;
        mean += v.z;
        mean += v.w;
    }
    mean /= f32(p.cols);
    var var_ = 0.0;
    for (var t = 0u; t < n4; t++) {
        let d = texel(x_image, t, r) - mean;
        var_ += d.x * d.x;
        var_ += d.y * d.y;
        var_ += d.z * d.z;
        var_ += d.w * d.w;
    }
    let rstd = inverseSqrt(var_ / f32(p.cols) + p.eps);
    let o = r * n4;
    for (var t = 0u; t < n4; t++) {
        y4[o + t] = (texel(x_image, t, r) - mean) * rstd * texel(gamma_image, t, 0u) + texel(third_image, t, 0u);
    }
    stats[2u * r] = mean;
    stats[2u * r + 1u] = rstd;
}

@compute @workgroup_size(256)
fn layernorm_bwd_x_image(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = thread_index(wid, nwg, lid);
    if (r >= p.rows) {
        return;
    }
    let n4 = p.cols / 4u;
    let mean = saved[2u * r];
    let rstd = saved[2u * r + 1u];
    var mg = 0.0;
    var mgx = 0.0;
    for (var t = 0u; t < n4; t++) {
        let g = texel(third_image, t, r) * texel(gamma_image, t, 0u);
        let gx = g * (texel(x_image, t, r) - mean) * rstd;
        mg += g.x;
        mgx += gx.x;
        mg += g.y;
        mgx += gx.y;
        mg += g.z;
        mgx += gx.z;
        mg += g.w;
        mgx += gx.w;
    }
    mg /= f32(p.cols);
    mgx /= f32(p.cols);
    let o = r * n4;
    for (var t = 0u; t < n4; t++) {
        let xhat = (texel(x_image, t, r) - mean) * rstd;
        let v = rstd * (texel(third_image, t, r) * texel(gamma_image, t, 0u) - mg - xhat * mgx);
        if (ACCUMULATE) {
            dx4[o + t] = dx4[o + t] + v;
        } else {
            dx4[o + t] = v;
        }
    }
}

// Invocation (k, t) sums columns 4t .. 4t+3 over the rows of chunk k.
@compute @workgroup_size(256)
fn layernorm_bwd_params_image(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    let n4 = p.cols / 4u;
    let k = i / n4;
    let t = i - k * n4;
    let r0 = k * p.chunk;
    if (r0 >= p.rows) {
        return;
    }
    let r1 = min(r0 + p.chunk, p.rows);
    var dg = vec4<f32>();
    var db = vec4<f32>();
    for (var r = r0; r < r1; r++) {
        let g = texel(third_image, t, r);
        dg += g * (texel(x_image, t, r) - saved[2u * r]) * saved[2u * r + 1u];
        db += g;
    }
    dgamma4[k * n4 + t] = dg;
    dbeta4[k * n4 + t] = db;
}
