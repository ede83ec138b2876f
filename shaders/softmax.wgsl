// Row softmax, optionally as the attention softmax: scaled scores, a causal mask and a key-padding
// mask, written as probabilities that the caller keeps (distillation reads the attention maps).
// One invocation per row: rows are short (keys of one attention row, 16-65 wide here).
//
// Rows are laid out [batch, heads, q, k]; row r covers query (r % q) of batch r / (heads * q).
// Masked cells get probability exactly 0. A row whose keys are all masked (only possible for a
// padded query over padded keys) is all zeros, never NaN.
//
// Launcher: src/ops/softmax.rs.
// Reference: src/reference/mod.rs (masked_softmax, softmax, softmax_bwd).
// Tests: tests/softmax.rs.

struct Params {
    rows: u32,
    cols: u32,      // k
    q: u32,         // queries per (batch, head)
    heads: u32,
    scale: f32,     // multiplies the scores before the softmax
    flags: u32,     // 1 = causal (key > query masked), 2 = key-padding mask bound
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// forward
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read> key_mask: array<f32>;    // [batch, k], 1 = valid key
@group(0) @binding(3) var<storage, read_write> probs: array<f32>;

fn masked(r: u32, key: u32) -> bool {
    let query = r % p.q;
    if ((p.flags & 1u) != 0u && key > query) {
        return true;
    }
    if ((p.flags & 2u) != 0u) {
        let b = r / (p.heads * p.q);
        return key_mask[b * p.cols + key] == 0.0;
    }
    return false;
}

@compute @workgroup_size(256)
fn softmax_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = thread_index(wid, nwg, lid);
    if (r >= p.rows) {
        return;
    }
    let o = r * p.cols;
    var mx = -3.4e38;
    for (var c = 0u; c < p.cols; c++) {
        if (!masked(r, c)) {
            mx = max(mx, p.scale * scores[o + c]);
        }
    }
    var sum = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        var e = 0.0;
        if (!masked(r, c)) {
            e = exp(p.scale * scores[o + c] - mx);
        }
        probs[o + c] = e;
        sum += e;
    }
    var inv = 0.0;
    if (sum > 0.0) {
        inv = 1.0 / sum;
    }
    for (var c = 0u; c < p.cols; c++) {
        probs[o + c] *= inv;
    }
}

// backward: d scores = scale * y * (dy - sum(y * dy))
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(256)
fn softmax_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = thread_index(wid, nwg, lid);
    if (r >= p.rows) {
        return;
    }
    let o = r * p.cols;
    var dot = 0.0;
    for (var c = 0u; c < p.cols; c++) {
        dot += y[o + c] * dy[o + c];
    }
    for (var c = 0u; c < p.cols; c++) {
        dx[o + c] = p.scale * y[o + c] * (dy[o + c] - dot);
    }
}
