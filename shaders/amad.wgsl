// Attention-map distillation losses (shared/AMAD.md), forward and backward in one pass per example.
//
// amad_align: AMAD variants 1 (MSE), 2 (KL) and 3 (token-level KL). A "segment" is the set of
// valid cells the maps are flattened over: the whole q×k map (variants 1, 2) or one query row
// (variant 3); everything below is per segment, summed over segments, and written per example.
// one_to_one: the baselines (teacher head i teaches student head i).
//
// One invocation per example: per segment the statistics are H_t×H_s numbers, and the work is a
// few passes over the cells. Heads are capped at 16 each (the launcher checks).
//
// Notation per segment: t_i, s_j the teacher/student maps over the valid cells; nt_i = |t_i|_2,
// ns_j = |s_j|_2; w_ij = t_i·s_j / (nt_i ns_j) (cosine); a_ij = softmax_j(w_ij / tau).
// Gradients w.r.t. s come in closed form from a few scalars per (i, j):
//   dA_ij = dL/da_ij;  dW_ij = dL/dw_ij = (1/tau) a_ij (dA_ij - sum_j' a_ij' dA_ij')  (0 if detached)
// and the cosine path reaches s_j through the L2 normalisation:
//   d s_j += (h_j - s^_j (s^_j · h_j)) / ns_j,  h_j = sum_i dW_ij t^_i,  s^_j · h_j = sum_i dW_ij w_ij.

struct Params {
    batch: u32,
    ht: u32,
    hs: u32,
    q: u32,
    k: u32,
    flags: u32,       // 1 = MSE (else KL), 2 = token level, 4 = detach weights, 8 = mask bound
    inv_tau: f32,
    grad_scale: f32,  // d(total loss)/d(per-example loss): upstream / batch
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> teacher: array<f32>;        // [B, Ht, q, k]
@group(0) @binding(2) var<storage, read> student: array<f32>;        // [B, Hs, q, k]
@group(0) @binding(3) var<storage, read> mask: array<f32>;           // [B, q, k], 1 = valid
@group(0) @binding(4) var<storage, read_write> loss: array<f32>;     // [B]
@group(0) @binding(5) var<storage, read_write> grad: array<f32>;     // [B, Hs, q, k]
@group(0) @binding(6) var<storage, read_write> weights: array<f32>;  // [B, Ht, Hs]

const MAX_H: u32 = 16u;
// Floor for the student mixture m inside log m: a cell the teacher weighs but no student head
// covers would otherwise cost infinity (masked softmax cells are exactly 0 in both maps).
const TINY: f32 = 1e-30;

fn valid(b: u32, cell: u32) -> bool {
    return (p.flags & 8u) == 0u || mask[b * p.q * p.k + cell] != 0.0;
}

fn tv(b: u32, i: u32, cell: u32) -> f32 {
    return teacher[(b * p.ht + i) * p.q * p.k + cell];
}

fn sv(b: u32, j: u32, cell: u32) -> f32 {
    return student[(b * p.hs + j) * p.q * p.k + cell];
}

// Zeroes example b's weights and gradient: cells a kernel skips (masked, padded rows, heads
// without a partner) must read 0.
fn clear_example(b: u32) {
    let qk = p.q * p.k;
    for (var x = 0u; x < p.ht * p.hs; x++) {
        weights[b * p.ht * p.hs + x] = 0.0;
    }
    for (var x = 0u; x < p.hs * qk; x++) {
        grad[b * p.hs * qk + x] = 0.0;
    }
}

fn safe_div(x: f32, y: f32) -> f32 {
    if (y == 0.0) {
        return 0.0;
    }
    return x / y;
}

@compute @workgroup_size(64)
fn amad_align(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = group_index(wid, nwg) * 64u + lid;
    if (b >= p.batch) {
        return;
    }
    let mse = (p.flags & 1u) != 0u;
    let token = (p.flags & 2u) != 0u;
    let detach = (p.flags & 4u) != 0u;
    let qk = p.q * p.k;
    let hs = p.hs;
    clear_example(b);
    var segs = 1u;
    var seg_len = qk;
    if (token) {
        segs = p.q;
        seg_len = p.k;
    }
    // Segments with no valid cell (padded query rows) take no part; the weights of the others are
    // averaged.
    var live = 0u;
    for (var sg = 0u; sg < segs; sg++) {
        var any = false;
        for (var c = 0u; c < seg_len; c++) {
            any = any || valid(b, sg * seg_len + c);
        }
        if (any) {
            live++;
        }
    }
    let share = 1.0 / f32(max(live, 1u));
    var total = 0.0;
    for (var sg = 0u; sg < segs; sg++) {
        let base = sg * seg_len;
        // Pass 1: dot products over the valid cells.
        var ct: array<f32, 256>;   // t_i · s_j  [ht][hs]
        var gs: array<f32, 256>;   // s_j · s_j' [hs][hs]
        var nt: array<f32, 16>;    // |t_i|_2 (squared until below)
        var lt: array<f32, 16>;    // |t_i|_1
        var ls: array<f32, 16>;    // |s_j|_1
        var ns: array<f32, 16>;    // |s_j|_2
        var n_valid = 0u;
        for (var c = 0u; c < seg_len; c++) {
            let cell = base + c;
            if (!valid(b, cell)) {
                continue;
            }
            n_valid++;
            for (var j = 0u; j < hs; j++) {
                let s = sv(b, j, cell);
                ls[j] += s;
                for (var j2 = 0u; j2 < hs; j2++) {
                    gs[j * hs + j2] += s * sv(b, j2, cell);
                }
            }
            for (var i = 0u; i < p.ht; i++) {
                let t = tv(b, i, cell);
                nt[i] += t * t;
                lt[i] += t;
                for (var j = 0u; j < hs; j++) {
                    ct[i * hs + j] += t * sv(b, j, cell);
                }
            }
        }
        if (n_valid == 0u) {
            continue;
        }
        for (var i = 0u; i < p.ht; i++) {
            nt[i] = sqrt(nt[i]);
        }
        for (var j = 0u; j < hs; j++) {
            ns[j] = sqrt(gs[j * hs + j]);
        }
        // Alignment weights (Eq. 2).
        var w: array<f32, 256>;
        var a: array<f32, 256>;
        for (var i = 0u; i < p.ht; i++) {
            var mx = -3.4e38;
            for (var j = 0u; j < hs; j++) {
                w[i * hs + j] = safe_div(ct[i * hs + j], nt[i] * ns[j]);
                mx = max(mx, w[i * hs + j] * p.inv_tau);
            }
            var z = 0.0;
            for (var j = 0u; j < hs; j++) {
                a[i * hs + j] = exp(w[i * hs + j] * p.inv_tau - mx);
                z += a[i * hs + j];
            }
            for (var j = 0u; j < hs; j++) {
                a[i * hs + j] /= z;
                if (nt[i] > 0.0) {
                    weights[(b * p.ht + i) * hs + j] += share * a[i * hs + j];
                }
            }
        }
        // The loss and dA_ij.
        var da: array<f32, 256>;
        if (mse) {
            // L_i = |t^_i - sum_j a_ij s^_j|^2 = 1 - 2 sum_j a_ij w_ij + sum_jj' a_ij a_ij' G^_jj'
            // dA_ij = -2 r_i · s^_j = -2 (w_ij - sum_j' a_ij' G^_j'j)
            for (var i = 0u; i < p.ht; i++) {
                if (nt[i] == 0.0) {
                    continue;
                }
                var li = 1.0;
                for (var j = 0u; j < hs; j++) {
                    var mix = 0.0;
                    for (var j2 = 0u; j2 < hs; j2++) {
                        mix += a[i * hs + j2] * safe_div(gs[j2 * hs + j], ns[j2] * ns[j]);
                    }
                    li += a[i * hs + j] * (mix - 2.0 * w[i * hs + j]);
                    da[i * hs + j] = -2.0 * (w[i * hs + j] - mix);
                }
                total += li;
            }
        } else {
            // Pass 2: L_i = sum_c t~_ic (log t~_ic - log m_ic), m_ic = sum_j a_ij s~_jc;
            // dA_ij = -sum_c t~_ic s~_jc / m_ic.
            for (var c = 0u; c < seg_len; c++) {
                let cell = base + c;
                if (!valid(b, cell)) {
                    continue;
                }
                for (var i = 0u; i < p.ht; i++) {
                    let tt = safe_div(tv(b, i, cell), lt[i]);
                    if (tt <= 0.0) {
                        continue;
                    }
                    var m = 0.0;
                    for (var j = 0u; j < hs; j++) {
                        m += a[i * hs + j] * safe_div(sv(b, j, cell), ls[j]);
                    }
                    m = max(m, TINY);
                    total += tt * (log(tt) - log(m));
                    for (var j = 0u; j < hs; j++) {
                        da[i * hs + j] -= tt * safe_div(sv(b, j, cell), ls[j]) / m;
                    }
                }
            }
        }
        // dW_ij through the softmax over student heads (none when the weights are detached).
        var dw: array<f32, 256>;
        var cos_proj: array<f32, 16>;   // s^_j · h_j = sum_i dW_ij w_ij
        var mix_proj: array<f32, 16>;   // sum_i a_ij dA_ij
        for (var i = 0u; i < p.ht; i++) {
            if (nt[i] == 0.0) {
                continue;
            }
            var dot = 0.0;
            for (var j = 0u; j < hs; j++) {
                dot += a[i * hs + j] * da[i * hs + j];
            }
            for (var j = 0u; j < hs; j++) {
                if (!detach) {
                    dw[i * hs + j] = p.inv_tau * a[i * hs + j] * (da[i * hs + j] - dot);
                }
                cos_proj[j] += dw[i * hs + j] * w[i * hs + j];
                mix_proj[j] += a[i * hs + j] * da[i * hs + j];
            }
        }
        // Pass 3: the gradient of every valid cell of every student head.
        for (var c = 0u; c < seg_len; c++) {
            let cell = base + c;
            if (!valid(b, cell)) {
                continue;
            }
            // The student mixture at this cell, per teacher head: MSE mixes s^, KL mixes s~.
            var mixed: array<f32, 16>;
            for (var i = 0u; i < p.ht; i++) {
                for (var j = 0u; j < hs; j++) {
                    var sn = safe_div(sv(b, j, cell), ls[j]);
                    if (mse) {
                        sn = safe_div(sv(b, j, cell), ns[j]);
                    }
                    mixed[i] += a[i * hs + j] * sn;
                }
            }
            for (var j = 0u; j < hs; j++) {
                let s = sv(b, j, cell);
                var direct = 0.0;   // dL/ds^_jc (MSE) or dL/ds~_jc (KL), weights held fixed
                var cosine = 0.0;   // h_jc = sum_i dW_ij t^_ic
                for (var i = 0u; i < p.ht; i++) {
                    if (nt[i] == 0.0) {
                        continue;
                    }
                    let t = tv(b, i, cell);
                    cosine += dw[i * hs + j] * t / nt[i];
                    if (mse) {
                        direct += -2.0 * a[i * hs + j] * (t / nt[i] - mixed[i]);
                    } else {
                        let tt = safe_div(t, lt[i]);
                        if (tt > 0.0) {
                            direct -= a[i * hs + j] * tt / max(mixed[i], TINY);
                        }
                    }
                }
                var g = 0.0;
                if (mse) {
                    // both paths go through s^ = s / ns: (g - s^ (s^ · g)) / ns
                    let sh = safe_div(s, ns[j]);
                    g = safe_div(direct + cosine - sh * (mix_proj[j] + cos_proj[j]), ns[j]);
                } else {
                    // direct path through s~ = s / |s|_1, cosine path through s^
                    g = safe_div(direct - mix_proj[j], ls[j]);
                    g += safe_div(cosine - safe_div(s, ns[j]) * cos_proj[j], ns[j]);
                }
                grad[(b * hs + j) * qk + cell] = p.grad_scale * g;
            }
        }
    }
    loss[b] = total;
}

// The baselines. KL (MiniLM): sum over paired heads of the mean over valid rows of
// KL(t_i[row] || s_i[row]); MSE (TinyBERT): sum over paired heads of the mean over valid cells of
// (t - s)^2. Surplus teacher heads (i >= Hs) are dropped; surplus student heads get no gradient.
@compute @workgroup_size(64)
fn one_to_one(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = group_index(wid, nwg) * 64u + lid;
    if (b >= p.batch) {
        return;
    }
    let mse = (p.flags & 1u) != 0u;
    let qk = p.q * p.k;
    let hs = p.hs;
    clear_example(b);
    // Normaliser: valid cells (MSE) or rows with a valid cell (KL).
    var count = 0u;
    for (var l = 0u; l < p.q; l++) {
        var cells = 0u;
        for (var c = 0u; c < p.k; c++) {
            if (valid(b, l * p.k + c)) {
                cells++;
            }
        }
        if (mse) {
            count += cells;
        } else if (cells > 0u) {
            count++;
        }
    }
    let inv = 1.0 / f32(max(count, 1u));
    var total = 0.0;
    for (var i = 0u; i < min(p.ht, hs); i++) {
        weights[(b * p.ht + i) * hs + i] = 1.0;
        for (var cell = 0u; cell < qk; cell++) {
            if (!valid(b, cell)) {
                continue;
            }
            let t = tv(b, i, cell);
            let s = sv(b, i, cell);
            var g = 0.0;
            if (mse) {
                total += inv * (t - s) * (t - s);
                g = -2.0 * inv * (t - s);
            } else if (t > 0.0) {
                let sc = max(s, TINY);
                total += inv * t * (log(t) - log(sc));
                g = -inv * t / sc;
            }
            grad[(b * hs + i) * qk + cell] = p.grad_scale * g;
        }
    }
    loss[b] = total;
}
