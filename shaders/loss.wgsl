// Losses over a vocabulary: cross-entropy with an ignore index (fused log-softmax) and the KL
// divergence between temperature-softened teacher and student distributions. Two forms of each:
// one workgroup per row (token position) for large vocabularies, and one invocation per row
// (`*_rows`) for small ones, chosen by the launcher (ROW_KERNEL_MAX_VOCAB).
// Forward entries write per-row values into rowvals [2, rows]: (loss, 1) for a counted row and
// (0, 0) for an ignored one; reduce.wgsl sums both halves into the first two elements of `saved`,
// and loss_mean divides. They also keep each counted row's log-sum-exp in `saved` after those two
// (cross-entropy: one per row; KL: the teacher's for every row, then the student's), and the
// backward entries read them there instead of recomputing them: on GPT-2's 50,257-word rows the
// recomputation was four of the KL backward's five passes over the logits.
//
// Launcher: src/ops/loss.rs.
// Reference: src/reference/mod.rs (cross_entropy, kl_div and their backwards).
// Tests: tests/loss.rs.

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

// One workgroup per row: its 256 invocations stride over the vocabulary and combine their
// partial maxima and sums in workgroup memory. A row of GPT-2's 50,257 logits then costs each
// invocation about 200 iterations per pass rather than 50,257, which matters twice: real GPUs
// get 256 lanes per row instead of one, and lavapipe stops any invocation after 65,535 loop
// iterations in all (Mesa's gallivm loop limiter), which silently truncated the one-invocation
// version's sums from a vocabulary of 32,768 on. Blocked partial sums also round less than one
// running total over the row.
var<workgroup> red: array<f32, 256>;
var<workgroup> row_target: u32;

fn reduce_max(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (lid < w) {
            red[lid] = max(red[lid], red[lid + w]);
        }
        workgroupBarrier();
    }
    let out = red[0];
    workgroupBarrier();
    return out;
}

fn reduce_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (lid < w) {
            red[lid] += red[lid + w];
        }
        workgroupBarrier();
    }
    let out = red[0];
    workgroupBarrier();
    return out;
}

// The row's target, read once and shared, so that a whole workgroup takes the same branch.
fn shared_target(r: u32, lid: u32) -> u32 {
    if (lid == 0u) {
        row_target = targets[r];
    }
    return workgroupUniformLoad(&row_target);
}

// log Σ_c exp(s · logits[o + c]) over the row at o.
fn logsumexp(o: u32, s: f32, lid: u32) -> f32 {
    var mx = -3.4e38;
    for (var c = lid; c < p.vocab; c += 256u) {
        mx = max(mx, s * logits[o + c]);
    }
    mx = reduce_max(mx, lid);
    var sum = 0.0;
    for (var c = lid; c < p.vocab; c += 256u) {
        sum += exp(s * logits[o + c] - mx);
    }
    return mx + log(reduce_sum(sum, lid));
}

// cross-entropy forward
@group(0) @binding(3) var<storage, read_write> rowvals: array<f32>;
@group(0) @binding(4) var<storage, read_write> ce_saved: array<f32>;   // [sum, count, lse per row]

@compute @workgroup_size(256)
fn cross_entropy_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = group_index(wid, nwg);
    if (r >= p.rows) {
        return;
    }
    let tgt = shared_target(r, lid);
    if (tgt == p.ignore || tgt >= p.vocab) {
        if (lid == 0u) {
            rowvals[r] = 0.0;
            rowvals[p.rows + r] = 0.0;
        }
        return;
    }
    let o = r * p.vocab;
    let lse = logsumexp(o, 1.0, lid);
    if (lid == 0u) {
        rowvals[r] = lse - logits[o + tgt];
        rowvals[p.rows + r] = 1.0;
        ce_saved[2u + r] = lse;
    }
}

// cross-entropy backward: dlogits = grad * (softmax - onehot) / count
@group(0) @binding(3) var<storage, read> fwd_saved: array<f32>;   // the forward's saved values
@group(0) @binding(4) var<storage, read_write> dlogits: array<f32>;

@compute @workgroup_size(256)
fn cross_entropy_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = group_index(wid, nwg);
    if (r >= p.rows) {
        return;
    }
    let o = r * p.vocab;
    let tgt = shared_target(r, lid);
    if (tgt == p.ignore || tgt >= p.vocab) {
        for (var c = lid; c < p.vocab; c += 256u) {
            dlogits[o + c] = 0.0;
        }
        return;
    }
    let k = p.grad / max(fwd_saved[1], 1.0);
    let lse = fwd_saved[2u + r];
    for (var c = lid; c < p.vocab; c += 256u) {
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
@group(0) @binding(5) var<storage, read_write> kl_saved: array<f32>;   // [sum, count, lt, ls per row]

fn teacher_lse(o: u32, lid: u32) -> f32 {
    var mx = -3.4e38;
    for (var c = lid; c < p.vocab; c += 256u) {
        mx = max(mx, p.inv_t * teacher[o + c]);
    }
    mx = reduce_max(mx, lid);
    var sum = 0.0;
    for (var c = lid; c < p.vocab; c += 256u) {
        sum += exp(p.inv_t * teacher[o + c] - mx);
    }
    return mx + log(reduce_sum(sum, lid));
}

@compute @workgroup_size(256)
fn kl_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = group_index(wid, nwg);
    if (r >= p.rows) {
        return;
    }
    if (shared_target(r, lid) == p.ignore) {
        if (lid == 0u) {
            kl_rowvals[r] = 0.0;
            kl_rowvals[p.rows + r] = 0.0;
        }
        return;
    }
    let o = r * p.vocab;
    let lt = teacher_lse(o, lid);
    let ls = logsumexp(o, p.inv_t, lid);
    if (lid == 0u) {
        kl_saved[2u + r] = lt;
        kl_saved[2u + p.rows + r] = ls;
    }
    var kl = 0.0;
    for (var c = lid; c < p.vocab; c += 256u) {
        let log_pt = p.inv_t * teacher[o + c] - lt;
        let log_ps = p.inv_t * logits[o + c] - ls;
        kl += exp(log_pt) * (log_pt - log_ps);
    }
    kl = reduce_sum(kl, lid);
    if (lid == 0u) {
        kl_rowvals[r] = kl;
        kl_rowvals[p.rows + r] = 1.0;
    }
}

// KL backward w.r.t. the student logits: grad * (p_s - p_t) / (T * count)
@group(0) @binding(4) var<storage, read> kl_fwd_saved: array<f32>;   // the forward's saved values
@group(0) @binding(5) var<storage, read_write> dstudent: array<f32>;

@compute @workgroup_size(256)
fn kl_bwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = group_index(wid, nwg);
    if (r >= p.rows) {
        return;
    }
    let o = r * p.vocab;
    if (shared_target(r, lid) == p.ignore) {
        for (var c = lid; c < p.vocab; c += 256u) {
            dstudent[o + c] = 0.0;
        }
        return;
    }
    let k = p.grad * p.inv_t / max(kl_fwd_saved[1], 1.0);
    let lt = kl_fwd_saved[2u + r];
    let ls = kl_fwd_saved[2u + p.rows + r];
    for (var c = lid; c < p.vocab; c += 256u) {
        dstudent[o + c] = k * (exp(p.inv_t * logits[o + c] - ls) - exp(p.inv_t * teacher[o + c] - lt));
    }
}

// ---- One invocation per row, for small vocabularies ----
// A row of the bundled models' 64 words leaves 192 of a row's workgroup of 256 idle and costs
// 16 barriers per reduction, which lavapipe executes slowly: the bundled distillation step spent
// about 90 ms of 630 in the four workgroup kernels, and a few ms in these (`amad bench profile`).
// The launcher keeps these to vocabularies whose three passes stay far under lavapipe's cap of
// 65,535 loop iterations per invocation.

fn row_logsumexp(o: u32, s: f32) -> f32 {
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

fn row_teacher_lse(o: u32) -> f32 {
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
fn cross_entropy_fwd_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
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
    let lse = row_logsumexp(o, 1.0);
    rowvals[r] = lse - logits[o + tgt];
    rowvals[p.rows + r] = 1.0;
    ce_saved[2u + r] = lse;
}

@compute @workgroup_size(256)
fn cross_entropy_bwd_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
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
    let k = p.grad / max(fwd_saved[1], 1.0);
    let lse = fwd_saved[2u + r];
    for (var c = 0u; c < p.vocab; c++) {
        var g = exp(logits[o + c] - lse);
        if (c == tgt) {
            g -= 1.0;
        }
        dlogits[o + c] = k * g;
    }
}

@compute @workgroup_size(256)
fn kl_fwd_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
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
    let lt = row_teacher_lse(o);
    let ls = row_logsumexp(o, p.inv_t);
    kl_saved[2u + r] = lt;
    kl_saved[2u + p.rows + r] = ls;
    var kl = 0.0;
    for (var c = 0u; c < p.vocab; c++) {
        let log_pt = p.inv_t * teacher[o + c] - lt;
        let log_ps = p.inv_t * logits[o + c] - ls;
        kl += exp(log_pt) * (log_pt - log_ps);
    }
    kl_rowvals[r] = kl;
    kl_rowvals[p.rows + r] = 1.0;
}

@compute @workgroup_size(256)
fn kl_bwd_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
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
    let k = p.grad * p.inv_t / max(kl_fwd_saved[1], 1.0);
    let lt = kl_fwd_saved[2u + r];
    let ls = kl_fwd_saved[2u + p.rows + r];
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
