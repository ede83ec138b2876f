// Attention-map distillation losses (docs/method.md), forward and backward.
//
// AMAD variants 1 (MSE), 2 (KL) and 3 (token-level KL). A "segment" is the set of valid cells the
// maps are flattened over: the whole q×k map (variants 1, 2) or one query row (variant 3); a
// "unit" is one segment of one example. Everything is per unit, then summed per example.
//
// Notation per unit: t_i, s_j the teacher/student maps over the valid cells; nt_i = |t_i|_2,
// ns_j = |s_j|_2; w_ij = t_i·s_j / (nt_i ns_j) (cosine); a_ij = softmax_j(w_ij / tau).
// Gradients w.r.t. s come in closed form from a few scalars per (i, j):
//   dA_ij = dL/da_ij;  dW_ij = dL/dw_ij = (1/tau) a_ij (dA_ij - sum_j' a_ij' dA_ij')  (0 if detached)
// and the cosine path reaches s_j through the L2 normalisation:
//   d s_j += (h_j - s^_j (s^_j · h_j)) / ns_j,  h_j = sum_i dW_ij t^_i,  s^_j · h_j = sum_i dW_ij w_ij.
//
// Why so many small kernels: the work is split into chunks of CHUNK cells, one invocation per
// (unit, chunk), with the per-unit statistics summed between passes. Besides spreading the work
// over the whole GPU, this keeps every invocation's loops short: lavapipe stops an invocation's
// loops after 65,535 iterations in all (an encoder map is 65×65 cells × heads²), silently.
//   align_stats   (unit, chunk): dot products, norms, sums         -> scratch partials
//   align_sum     (unit, value): partials summed over chunks        -> scratch sums
//   align_weights (unit): w, a; for MSE also the loss and dW        -> state
//   align_kl      (unit, chunk): KL loss and dA partials            -> scratch partials
//   align_kl_dw   (unit): the KL loss and dW                        -> state
//   align_grad    (unit, chunk): d loss / d student at every cell   -> grad
//   align_reduce  (example, value): alignment weights and loss      -> weights, loss
//
// Launcher: src/ops/amad.rs. Reference: src/reference/amad.rs (loss).
// Tests: tests/amad.rs, tests/amad_torch.rs.

struct Params {
    batch: u32,
    ht: u32,
    hs: u32,
    q: u32,
    k: u32,
    flags: u32,       // 1 = MSE (else KL), 2 = token level, 4 = detach weights, 8 = mask bound
    inv_tau: f32,
    grad_scale: f32,  // d(total loss)/d(per-example loss): upstream / batch
    segs: u32,        // segments per example
    seg_len: u32,     // cells per segment
    chunks: u32,      // chunks per segment
    width: u32,       // values per partial (align_sum)
    sums_at: u32,     // where the sums start in scratch (after the partials)
    units: u32,       // batch · segs
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> teacher: array<f32>;        // [B, Ht, q, k]
@group(0) @binding(2) var<storage, read> student: array<f32>;        // [B, Hs, q, k]
@group(0) @binding(3) var<storage, read> mask: array<f32>;           // [B, q, k], 1 = valid
@group(0) @binding(4) var<storage, read_write> loss: array<f32>;     // [B]
@group(0) @binding(5) var<storage, read_write> grad: array<f32>;     // [B, Hs, q, k]
@group(0) @binding(6) var<storage, read_write> weights: array<f32>;  // [B, Ht, Hs]
@group(0) @binding(7) var<storage, read_write> scratch: array<f32>;  // partials, then sums
@group(0) @binding(8) var<storage, read_write> state: array<f32>;    // per unit, see st_* below

const MAX_H: u32 = 16u;
// The head counts of the maps, as pipeline constants for the per-cell passes (align_stats, align_kl,
// align_grad: src/ops/amad.rs builds one pipeline per pair it meets; the other passes read p.ht and
// p.hs). With constant trip counts the compiler unrolls the loops over heads, so the per-invocation
// arrays (the statistics, the unit's weights, a cell's values) are indexed by constants and live
// in registers. Indexed at run time they lived in per-invocation memory, which lavapipe reads and
// writes lane by lane: in the full-size distillation profile (12 teacher and 3 student heads) the
// three passes took 1,130 ms a step that way and 527 specialised, and building them from scratch
// (Mesa's shader cache off) took about 35 s once against 8 s for each pair of counts. The
// defaults are the largest counts (MAX_H).
override HT: u32 = 16u;
override HS: u32 = 16u;
const CHUNK: u32 = 64u;
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

fn safe_div(x: f32, y: f32) -> f32 {
    if (y == 0.0) {
        return 0.0;
    }
    return x / y;
}

fn is_mse() -> bool {
    return (p.flags & 1u) != 0u;
}

// Layout of the first statistics (align_stats), per unit: ct [ht][hs] = t_i·s_j, gs [hs][hs] =
// s_j·s_j', nt2 [ht] = |t_i|², lt [ht] = |t_i|_1, ls [hs] = |s_j|_1, and the valid-cell count.
fn s1_gs() -> u32 { return p.ht * p.hs; }
fn s1_nt2() -> u32 { return s1_gs() + p.hs * p.hs; }
fn s1_lt() -> u32 { return s1_nt2() + p.ht; }
fn s1_ls() -> u32 { return s1_lt() + p.ht; }
fn s1_n() -> u32 { return s1_ls() + p.hs; }

// Layout of the unit state: w, a, dw [ht][hs], nt, lt [ht], ns, ls, cos_proj, mix_proj [hs],
// the unit's loss, and whether it has a valid cell.
fn st_size() -> u32 { return 3u * p.ht * p.hs + 2u * p.ht + 4u * p.hs + 2u; }
fn st_w(u: u32) -> u32 { return u * st_size(); }
fn st_a(u: u32) -> u32 { return st_w(u) + p.ht * p.hs; }
fn st_dw(u: u32) -> u32 { return st_a(u) + p.ht * p.hs; }
fn st_nt(u: u32) -> u32 { return st_dw(u) + p.ht * p.hs; }
fn st_lt(u: u32) -> u32 { return st_nt(u) + p.ht; }
fn st_ns(u: u32) -> u32 { return st_lt(u) + p.ht; }
fn st_ls(u: u32) -> u32 { return st_ns(u) + p.hs; }
fn st_cos(u: u32) -> u32 { return st_ls(u) + p.hs; }
fn st_mix(u: u32) -> u32 { return st_cos(u) + p.hs; }
fn st_loss(u: u32) -> u32 { return st_mix(u) + p.hs; }
fn st_live(u: u32) -> u32 { return st_loss(u) + 1u; }

// The (unit, chunk) of an invocation, or false past the end.
struct Piece {
    ok: bool,
    b: u32,
    u: u32,
    ch: u32,
    first: u32,   // first cell (index within the example's q·k map)
    end: u32,     // one past the last
}

fn piece(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> Piece {
    let x = thread_index(wid, nwg, lid);
    var r: Piece;
    r.ok = x < p.units * p.chunks;
    r.u = x / max(p.chunks, 1u);
    r.ch = x % max(p.chunks, 1u);
    r.b = r.u / p.segs;
    let base = (r.u % p.segs) * p.seg_len;
    r.first = base + r.ch * CHUNK;
    r.end = base + min((r.ch + 1u) * CHUNK, p.seg_len);
    return r;
}

@compute @workgroup_size(256)
fn align_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let pc = piece(wid, nwg, lid);
    if (!pc.ok) {
        return;
    }
    var ct: array<f32, 256>;
    var gs: array<f32, 256>;
    var nt2: array<f32, 16>;
    var lt: array<f32, 16>;
    var ls: array<f32, 16>;
    var n = 0u;
    for (var cell = pc.first; cell < pc.end; cell++) {
        if (!valid(pc.b, cell)) {
            continue;
        }
        n++;
        // Each student value loaded once per cell (see Unit).
        var s: array<f32, 16>;
        for (var j = 0u; j < HS; j++) {
            s[j] = sv(pc.b, j, cell);
            ls[j] += s[j];
        }
        for (var j = 0u; j < HS; j++) {
            for (var j2 = 0u; j2 < HS; j2++) {
                gs[j * HS + j2] += s[j] * s[j2];
            }
        }
        for (var i = 0u; i < HT; i++) {
            let t = tv(pc.b, i, cell);
            nt2[i] += t * t;
            lt[i] += t;
            for (var j = 0u; j < HS; j++) {
                ct[i * HS + j] += t * s[j];
            }
        }
    }
    let o = (pc.u * p.chunks + pc.ch) * p.width;
    for (var x = 0u; x < HT * HS; x++) {
        scratch[o + x] = ct[x];
    }
    for (var x = 0u; x < HS * HS; x++) {
        scratch[o + s1_gs() + x] = gs[x];
    }
    for (var i = 0u; i < HT; i++) {
        scratch[o + s1_nt2() + i] = nt2[i];
        scratch[o + s1_lt() + i] = lt[i];
    }
    for (var j = 0u; j < HS; j++) {
        scratch[o + s1_ls() + j] = ls[j];
    }
    scratch[o + s1_n()] = f32(n);
}

@compute @workgroup_size(256)
fn align_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let x = thread_index(wid, nwg, lid);
    if (x >= p.units * p.width) {
        return;
    }
    let u = x / p.width;
    let v = x % p.width;
    var acc = 0.0;
    for (var ch = 0u; ch < p.chunks; ch++) {
        acc += scratch[(u * p.chunks + ch) * p.width + v];
    }
    scratch[p.sums_at + x] = acc;
}

// From dA (held in the dw slot), dW and the two projections per student head (see the top).
fn finish_dw(u: u32) {
    let hs = p.hs;
    for (var j = 0u; j < hs; j++) {
        state[st_cos(u) + j] = 0.0;
        state[st_mix(u) + j] = 0.0;
    }
    for (var i = 0u; i < p.ht; i++) {
        var dot = 0.0;
        for (var j = 0u; j < hs; j++) {
            dot += state[st_a(u) + i * hs + j] * state[st_dw(u) + i * hs + j];
        }
        for (var j = 0u; j < hs; j++) {
            let a = state[st_a(u) + i * hs + j];
            let da = state[st_dw(u) + i * hs + j];
            var dw = 0.0;
            if ((p.flags & 4u) == 0u && state[st_nt(u) + i] > 0.0) {
                dw = p.inv_tau * a * (da - dot);
            }
            state[st_dw(u) + i * hs + j] = dw;
            state[st_cos(u) + j] += dw * state[st_w(u) + i * hs + j];
            state[st_mix(u) + j] += a * da;
        }
    }
}

@compute @workgroup_size(64)
fn align_weights(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = group_index(wid, nwg) * 64u + lid;
    if (u >= p.units) {
        return;
    }
    let hs = p.hs;
    let s = p.sums_at + u * p.width;
    let live = scratch[s + s1_n()] > 0.0;
    state[st_live(u)] = select(0.0, 1.0, live);
    state[st_loss(u)] = 0.0;
    for (var i = 0u; i < p.ht; i++) {
        state[st_nt(u) + i] = sqrt(scratch[s + s1_nt2() + i]);
        state[st_lt(u) + i] = scratch[s + s1_lt() + i];
    }
    for (var j = 0u; j < hs; j++) {
        state[st_ns(u) + j] = sqrt(scratch[s + s1_gs() + j * hs + j]);
        state[st_ls(u) + j] = scratch[s + s1_ls() + j];
    }
    // Alignment weights (Eq. 2).
    for (var i = 0u; i < p.ht; i++) {
        let nt = state[st_nt(u) + i];
        var mx = -3.4e38;
        for (var j = 0u; j < hs; j++) {
            let w = safe_div(scratch[s + i * hs + j], nt * state[st_ns(u) + j]);
            state[st_w(u) + i * hs + j] = w;
            mx = max(mx, w * p.inv_tau);
        }
        var z = 0.0;
        for (var j = 0u; j < hs; j++) {
            let e = exp(state[st_w(u) + i * hs + j] * p.inv_tau - mx);
            state[st_a(u) + i * hs + j] = e;
            z += e;
        }
        for (var j = 0u; j < hs; j++) {
            state[st_a(u) + i * hs + j] /= z;
            state[st_dw(u) + i * hs + j] = 0.0;
        }
    }
    if (!is_mse() || !live) {
        return;
    }
    // L_i = |t^_i - sum_j a_ij s^_j|^2 = 1 - 2 sum_j a_ij w_ij + sum_jj' a_ij a_ij' G^_jj'
    // dA_ij = -2 r_i · s^_j = -2 (w_ij - sum_j' a_ij' G^_j'j)
    var total = 0.0;
    for (var i = 0u; i < p.ht; i++) {
        if (state[st_nt(u) + i] == 0.0) {
            continue;
        }
        var li = 1.0;
        for (var j = 0u; j < hs; j++) {
            var mix = 0.0;
            for (var j2 = 0u; j2 < hs; j2++) {
                let g = safe_div(scratch[s + s1_gs() + j2 * hs + j], state[st_ns(u) + j2] * state[st_ns(u) + j]);
                mix += state[st_a(u) + i * hs + j2] * g;
            }
            let a = state[st_a(u) + i * hs + j];
            let w = state[st_w(u) + i * hs + j];
            li += a * (mix - 2.0 * w);
            state[st_dw(u) + i * hs + j] = -2.0 * (w - mix);
        }
        total += li;
    }
    state[st_loss(u)] = total;
    finish_dw(u);
}

// A unit's state as the per-cell passes read it, loaded once per invocation. On lavapipe a storage
// load is a loop over the 8 lanes with a bounds check each, and these passes read the unit's
// weights at every cell of every (teacher, student) pair: loaded per cell, they cost more than the
// maps themselves. Filled in place through a pointer: returned by value, the copy of all its
// arrays (sized for MAX_H heads) made LLVM take 22 s to compile align_grad for 12 and 3 heads on
// lavapipe, against 3 s in place.
struct Unit {
    a: array<f32, 256>,    // a_ij [ht][hs]
    dw: array<f32, 256>,   // dW_ij [ht][hs]
    nt: array<f32, 16>,
    lt: array<f32, 16>,
    ns: array<f32, 16>,
    ls: array<f32, 16>,
    cos: array<f32, 16>,
    mix: array<f32, 16>,
}

fn load_unit(u: u32, r: ptr<function, Unit>) {
    for (var x = 0u; x < HT * HS; x++) {
        (*r).a[x] = state[st_a(u) + x];
        (*r).dw[x] = state[st_dw(u) + x];
    }
    for (var i = 0u; i < HT; i++) {
        (*r).nt[i] = state[st_nt(u) + i];
        (*r).lt[i] = state[st_lt(u) + i];
    }
    for (var j = 0u; j < HS; j++) {
        (*r).ns[j] = state[st_ns(u) + j];
        (*r).ls[j] = state[st_ls(u) + j];
        (*r).cos[j] = state[st_cos(u) + j];
        (*r).mix[j] = state[st_mix(u) + j];
    }
}

// KL: L_i = sum_c t~_ic (log t~_ic - log m_ic), m_ic = sum_j a_ij s~_jc;
// dA_ij = -sum_c t~_ic s~_jc / m_ic. Partials: [loss, dA [ht][hs]].
@compute @workgroup_size(256)
fn align_kl(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let pc = piece(wid, nwg, lid);
    if (!pc.ok) {
        return;
    }
    var un: Unit;
    load_unit(pc.u, &un);
    var total = 0.0;
    var da: array<f32, 256>;
    for (var cell = pc.first; cell < pc.end; cell++) {
        if (!valid(pc.b, cell)) {
            continue;
        }
        var sn: array<f32, 16>;
        for (var j = 0u; j < HS; j++) {
            sn[j] = safe_div(sv(pc.b, j, cell), un.ls[j]);
        }
        for (var i = 0u; i < HT; i++) {
            let tt = safe_div(tv(pc.b, i, cell), un.lt[i]);
            if (tt <= 0.0) {
                continue;
            }
            var m = 0.0;
            for (var j = 0u; j < HS; j++) {
                m += un.a[i * HS + j] * sn[j];
            }
            m = max(m, TINY);
            total += tt * (log(tt) - log(m));
            for (var j = 0u; j < HS; j++) {
                da[i * HS + j] -= tt * sn[j] / m;
            }
        }
    }
    let o = (pc.u * p.chunks + pc.ch) * p.width;
    scratch[o] = total;
    for (var x = 0u; x < HT * HS; x++) {
        scratch[o + 1u + x] = da[x];
    }
}

@compute @workgroup_size(64)
fn align_kl_dw(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = group_index(wid, nwg) * 64u + lid;
    if (u >= p.units) {
        return;
    }
    let s = p.sums_at + u * p.width;
    state[st_loss(u)] = scratch[s];
    for (var x = 0u; x < p.ht * p.hs; x++) {
        state[st_dw(u) + x] = scratch[s + 1u + x];
    }
    finish_dw(u);
}

// The gradient of every cell of every student head (0 at masked cells and in empty units).
@compute @workgroup_size(256)
fn align_grad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let pc = piece(wid, nwg, lid);
    if (!pc.ok) {
        return;
    }
    let mse = is_mse();
    let qk = p.q * p.k;
    let live = state[st_live(pc.u)] > 0.0;
    var un: Unit;
    load_unit(pc.u, &un);
    for (var cell = pc.first; cell < pc.end; cell++) {
        if (!live || !valid(pc.b, cell)) {
            for (var j = 0u; j < HS; j++) {
                grad[(pc.b * HS + j) * qk + cell] = 0.0;
            }
            continue;
        }
        var t: array<f32, 16>;
        for (var i = 0u; i < HT; i++) {
            t[i] = tv(pc.b, i, cell);
        }
        // The student mixture at this cell, per teacher head: MSE mixes s^, KL mixes s~.
        var s: array<f32, 16>;
        var sn: array<f32, 16>;
        for (var j = 0u; j < HS; j++) {
            s[j] = sv(pc.b, j, cell);
            sn[j] = safe_div(s[j], select(un.ls[j], un.ns[j], mse));
        }
        var mixed: array<f32, 16>;
        for (var i = 0u; i < HT; i++) {
            for (var j = 0u; j < HS; j++) {
                mixed[i] += un.a[i * HS + j] * sn[j];
            }
        }
        for (var j = 0u; j < HS; j++) {
            let ns = un.ns[j];
            let ls = un.ls[j];
            var direct = 0.0;   // dL/ds^_jc (MSE) or dL/ds~_jc (KL), weights held fixed
            var cosine = 0.0;   // h_jc = sum_i dW_ij t^_ic
            for (var i = 0u; i < HT; i++) {
                let nt = un.nt[i];
                if (nt == 0.0) {
                    continue;
                }
                let a = un.a[i * HS + j];
                cosine += un.dw[i * HS + j] * t[i] / nt;
                if (mse) {
                    direct += -2.0 * a * (t[i] / nt - mixed[i]);
                } else {
                    let tt = safe_div(t[i], un.lt[i]);
                    if (tt > 0.0) {
                        direct -= a * tt / max(mixed[i], TINY);
                    }
                }
            }
            let cos_proj = un.cos[j];
            let mix_proj = un.mix[j];
            var g = 0.0;
            if (mse) {
                // both paths go through s^ = s / ns: (g - s^ (s^ · g)) / ns
                let sh = safe_div(s[j], ns);
                g = safe_div(direct + cosine - sh * (mix_proj + cos_proj), ns);
            } else {
                // direct path through s~ = s / |s|_1, cosine path through s^
                g = safe_div(direct - mix_proj, ls);
                g += safe_div(cosine - safe_div(s[j], ns) * cos_proj, ns);
            }
            grad[(pc.b * HS + j) * qk + cell] = p.grad_scale * g;
        }
    }
}

// Per example: the alignment weights averaged over its live segments (teacher heads with an empty
// map get 0), and the loss summed over them. One invocation per (example, weight or loss).
@compute @workgroup_size(256)
fn align_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let per = p.ht * p.hs + 1u;
    let x = thread_index(wid, nwg, lid);
    if (x >= p.batch * per) {
        return;
    }
    let b = x / per;
    let v = x % per;
    var live = 0u;
    var acc = 0.0;
    for (var sg = 0u; sg < p.segs; sg++) {
        let u = b * p.segs + sg;
        if (state[st_live(u)] == 0.0) {
            continue;
        }
        live++;
        if (v == per - 1u) {
            acc += state[st_loss(u)];
        } else if (state[st_nt(u) + v / p.hs] > 0.0) {
            acc += state[st_a(u) + v];
        }
    }
    if (v == per - 1u) {
        loss[b] = acc;
    } else {
        weights[b * p.ht * p.hs + v] = acc / f32(max(live, 1u));
    }
}

// The baselines. KL (MiniLM): sum over paired heads of the mean over valid rows of
// KL(t_i[row] || s_i[row]); MSE (TinyBERT): sum over paired heads of the mean over valid cells of
// (t - s)^2. Surplus teacher heads (i >= Hs) are dropped; surplus student heads get no gradient.
// Units here are examples (segs = 1); pieces are (example, chunk) over the whole map.

// The normaliser per example: 1 / (valid cells (MSE) or rows with a valid cell (KL)).
@compute @workgroup_size(64)
fn one_to_one_count(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = group_index(wid, nwg) * 64u + lid;
    if (b >= p.batch) {
        return;
    }
    var count = 0u;
    for (var l = 0u; l < p.q; l++) {
        var cells = 0u;
        for (var c = 0u; c < p.k; c++) {
            if (valid(b, l * p.k + c)) {
                cells++;
            }
        }
        if (is_mse()) {
            count += cells;
        } else if (cells > 0u) {
            count++;
        }
    }
    state[b] = 1.0 / f32(max(count, 1u));
}

@compute @workgroup_size(256)
fn one_to_one(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let pc = piece(wid, nwg, lid);
    if (!pc.ok) {
        return;
    }
    let qk = p.q * p.k;
    let inv = state[pc.b];
    var total = 0.0;
    for (var j = 0u; j < p.hs; j++) {
        for (var cell = pc.first; cell < pc.end; cell++) {
            var g = 0.0;
            if (j < p.ht && valid(pc.b, cell)) {
                let t = tv(pc.b, j, cell);
                let s = sv(pc.b, j, cell);
                if (is_mse()) {
                    total += inv * (t - s) * (t - s);
                    g = -2.0 * inv * (t - s);
                } else if (t > 0.0) {
                    let sc = max(s, TINY);
                    total += inv * t * (log(t) - log(sc));
                    g = -inv * t / sc;
                }
            }
            grad[(pc.b * p.hs + j) * qk + cell] = p.grad_scale * g;
        }
    }
    scratch[pc.u * p.chunks + pc.ch] = total;
}

@compute @workgroup_size(64)
fn one_to_one_finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = group_index(wid, nwg) * 64u + lid;
    if (b >= p.batch) {
        return;
    }
    var total = 0.0;
    for (var ch = 0u; ch < p.chunks; ch++) {
        total += scratch[b * p.chunks + ch];
    }
    loss[b] = total;
    for (var i = 0u; i < p.ht; i++) {
        for (var j = 0u; j < p.hs; j++) {
            weights[(b * p.ht + i) * p.hs + j] = select(0.0, 1.0, i == j);
        }
    }
}
