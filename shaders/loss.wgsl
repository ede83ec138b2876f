// Losses over a vocabulary, one invocation per row (token position):
// cross-entropy with an ignore index (fused log-softmax) and the KL divergence between
// temperature-softened teacher and student distributions.
// Forward entries write per-row values into rowvals [2, rows]: (loss, 1) for a counted row and
// (0, 0) for an ignored one; reduce.wgsl sums both halves, and loss_mean divides.

struct Params {
    rows: u32,
    vocab: u32,
    ignore: u32,    // target id that marks a row as not counted
    _pad: u32,
    inv_t: f32,     // 1 / temperature (KL)
    grad: f32,      // upstream gradient of the mean loss (backward)
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;   // [rows, vocab] (student, for KL)
@group(0) @binding(2) var<storage, read> targets: array<u32>;  // [rows]

fn logsumexp(o: u32, s: f32) -> f32 {
    var mx = -3.4e38;
    for (var c = 0u; c < p.vocab; c++) {
        mx = max(mx, s * logits[o + c]);
    }
    var sum = 0.0;
    for (var c = 0u; c < p.vocab; c++) {
        sum += exp(s * logits[o + c] - mx);
    }
    return mx + log(sum);
}

// cross-entropy forward
@group(0) @binding(3) var<storage, read_write> rowvals: array<f32>;

@compute @workgroup_size(256)
fn cross_entropy_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = thread_index(wid, nwg, lid);
    if (r >= p.rows) {
        return;
    }
    let tgt = targets[r];
    if (tgt == p.ignore || tgt >= p.vocab) {
        rowvals[r] = 0.0;
        rowvals[p.rows + r] = 0.0;
        return;
    }
    let o = r * p.vocab;
    rowvals[r] = logsumexp(o, 1.0) - logits[o + tgt];
    rowvals[p.rows + r] = 1.0;
}

// cross-entropy backward: dlogits = grad * (softmax - onehot) / count
@group(0) @binding(3) var<storage, read> totals: array<f32>;   // [sum of losses, count]
@group(0) @binding(4) var<storage, read_write> dlogits: array<f32>;

@compute @workgroup_size(256)
fn cross_entropy_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = thread_index(wid, nwg, lid);
    if (r >= p.rows) {
        return;
    }
    let o = r * p.vocab;
    let tgt = targets[r];
    if (tgt == p.ignore || tgt >= p.vocab) {
        for (var c = 0u; c < p.vocab; c++) {
            dlogits[o + c] = 0.0;
        }
        return;
    }
    let k = p.grad / max(totals[1], 1.0);
    let lse = logsumexp(o, 1.0);
    for (var c = 0u; c < p.vocab; c++) {
        var g = exp(logits[o + c] - lse);
        if (c == tgt) {
            g -= 1.0;
        }
        dlogits[o + c] = k * g;
    }
}

// KL(softmax(teacher / T) || softmax(student / T)) per counted row. The T^2 factor of
// Hinton's distillation loss is applied by the caller, where the loss weights live.
@group(0) @binding(3) var<storage, read> teacher: array<f32>;   // [rows, vocab]
@group(0) @binding(4) var<storage, read_write> kl_rowvals: array<f32>;

fn teacher_lse(o: u32) -> f32 {
    var mx = -3.4e38;
    for (var c = 0u; c < p.vocab; c++) {
        mx = max(mx, p.inv_t * teacher[o + c]);
    }
    var sum = 0.0;
    for (var c = 0u; c < p.vocab; c++) {
        sum += exp(p.inv_t * teacher[o + c] - mx);
    }
    return mx + log(sum);
}

@compute @workgroup_size(256)
fn kl_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = thread_index(wid, nwg, lid);
    if (r >= p.rows) {
        return;
    }
    if (targets[r] == p.ignore) {
        kl_rowvals[r] = 0.0;
        kl_rowvals[p.rows + r] = 0.0;
        return;
    }
    let o = r * p.vocab;
    let lt = teacher_lse(o);
    let ls = logsumexp(o, p.inv_t);
    var kl = 0.0;
    for (var c = 0u; c < p.vocab; c++) {
        let log_pt = p.inv_t * teacher[o + c] - lt;
        let log_ps = p.inv_t * logits[o + c] - ls;
        kl += exp(log_pt) * (log_pt - log_ps);
    }
    kl_rowvals[r] = kl;
    kl_rowvals[p.rows + r] = 1.0;
}

// KL backward w.r.t. the student logits: grad * (p_s - p_t) / (T * count)
@group(0) @binding(4) var<storage, read> kl_totals: array<f32>;
@group(0) @binding(5) var<storage, read_write> dstudent: array<f32>;

@compute @workgroup_size(256)
fn kl_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = thread_index(wid, nwg, lid);
    if (r >= p.rows) {
        return;
    }
    let o = r * p.vocab;
    if (targets[r] == p.ignore) {
        for (var c = 0u; c < p.vocab; c++) {
            dstudent[o + c] = 0.0;
        }
        return;
    }
    let k = p.grad * p.inv_t / max(kl_totals[1], 1.0);
    let lt = teacher_lse(o);
    let ls = logsumexp(o, p.inv_t);
    for (var c = 0u; c < p.vocab; c++) {
        dstudent[o + c] = k * (exp(p.inv_t * logits[o + c] - ls) - exp(p.inv_t * teacher[o + c] - lt));
    }
}

// mean = sum / max(count, 1), from the reduced [sum, count].
@group(0) @binding(1) var<storage, read> sum_count: array<f32>;
@group(0) @binding(2) var<storage, read_write> mean: array<f32>;

@compute @workgroup_size(1)
fn loss_mean() {
    mean[0] = sum_count[0] / max(sum_count[1], 1.0);
}
