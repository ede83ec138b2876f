// AdamW (decoupled weight decay, bias-corrected moments) and global gradient-norm clipping.
//
// Launcher: src/ops/optim.rs. Reference: src/reference/mod.rs (clip_grad_norm, adamw).
// Tests: tests/optim.rs.

struct Params {
    n: u32,
    first: u32,     // adamw: the first element updated (adamw_vec4 updates those before it)
    _pad1: u32,
    _pad2: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    c1: f32,        // 1 / (1 - beta1^t)
    c2: f32,        // 1 / (1 - beta2^t)
    max_norm: f32,  // clip_scale
}

@group(0) @binding(0) var<uniform> p: Params;

// adamw
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read> clip: array<f32>;      // [norm, scale] from clip_scale
@group(0) @binding(3) var<storage, read_write> param: array<f32>;
@group(0) @binding(4) var<storage, read_write> m: array<f32>;
@group(0) @binding(5) var<storage, read_write> v: array<f32>;

// As torch.optim.AdamW: p -= lr * wd * p; then p -= lr * m_hat / (sqrt(v_hat) + eps). The scalar
// kernel updates elements first .. n: the few that adamw_vec4 leaves when n is not a multiple of 4.
@compute @workgroup_size(256)
fn adamw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = p.first + thread_index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let g = grad[i] * clip[1];
    let mi = p.beta1 * m[i] + (1.0 - p.beta1) * g;
    let vi = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    let w = param[i] * (1.0 - p.lr * p.weight_decay);
    param[i] = w - p.lr * (mi * p.c1) / (sqrt(vi * p.c2) + p.eps);
}

// adamw on elements 4q .. 4q+3 for q < n / 4: the same operations per element, on vec4s, because
// lavapipe loads and stores a vec4 for about the cost of one scalar (each is a loop over the lanes
// of a register; see shaders/matmul_subgroup.wgsl).
@group(0) @binding(1) var<storage, read> grad4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> param4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> m4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> v4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn adamw_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let q = thread_index(wid, nwg, lid);
    if (q >= p.n / 4u) {
        return;
    }
    let g = grad4[q] * clip[1];
    let mi = p.beta1 * m4[q] + (1.0 - p.beta1) * g;
    let vi = p.beta2 * v4[q] + (1.0 - p.beta2) * g * g;
    m4[q] = mi;
    v4[q] = vi;
    let w = param4[q] * (1.0 - p.lr * p.weight_decay);
    param4[q] = w - p.lr * (mi * p.c1) / (sqrt(vi * p.c2) + p.eps);
}

// clip_scale: from per-tensor sums of squares, the global norm and the factor that brings it down
// to max_norm (1 when already below; as torch.nn.utils.clip_grad_norm_, with its 1e-6).
@group(0) @binding(1) var<storage, read> sumsq: array<f32>;
@group(0) @binding(2) var<storage, read_write> norm_scale: array<f32>;

@compute @workgroup_size(1)
fn clip_scale() {
    var total = 0.0;
    for (var i = 0u; i < p.n; i++) {
        total += sumsq[i];
    }
    let norm = sqrt(total);
    norm_scale[0] = norm;
    norm_scale[1] = min(1.0, p.max_norm / (norm + 1e-6));
}
