// The attention core: P = softmax(scale · Q Kᵀ + masks), O = P V, and its backward, for the short
// sequences of captioning (tens of tokens). One invocation per query row (forward, dQ) or per key
// (dK, dV): neighbouring invocations are neighbouring rows of one (batch, head), so the K and V
// (or Q and dO) values they read are the same for all of them (cheap on lavapipe, broadcast from
// cache on GPUs), and no work is spent on tiles larger than a 65 × 65 map.
//
// Q, K, V, O, dQ, dK, dV are strided views: element (b, t, h, d) of a sequence sits at
// off + (b·len + t)·stride + h·head_dim + d, so fused projections need no copies.
// Masked cells get probability exactly 0; a row with every key masked is all zeros.

struct Params {
    batch: u32,
    heads: u32,
    tq: u32,
    tk: u32,
    hd: u32,
    flags: u32,      // 1 = causal, 2 = key mask bound, 4 = extra dP bound (backward)
    scale: f32,
    _pad: u32,
    q_off: u32,
    q_stride: u32,
    k_off: u32,
    k_stride: u32,
    v_off: u32,
    v_stride: u32,
    o_off: u32,      // the output (forward) or the gradient written (backward)
    o_stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

fn q_at(b: u32, t: u32, h: u32) -> u32 {
    return p.q_off + (b * p.tq + t) * p.q_stride + h * p.hd;
}
fn k_at(b: u32, t: u32, h: u32) -> u32 {
    return p.k_off + (b * p.tk + t) * p.k_stride + h * p.hd;
}
fn v_at(b: u32, t: u32, h: u32) -> u32 {
    return p.v_off + (b * p.tk + t) * p.v_stride + h * p.hd;
}

// ---- forward: one invocation per (b, h, query) ----
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> key_mask: array<f32>;   // [B, Tk], 1 = valid
@group(0) @binding(5) var<storage, read_write> probs: array<f32>; // [B, H, Tq, Tk]
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

fn masked(b: u32, query: u32, key: u32) -> bool {
    return ((p.flags & 1u) != 0u && key > query) || ((p.flags & 2u) != 0u && key_mask[b * p.tk + key] == 0.0);
}

@compute @workgroup_size(64)
fn attention_fwd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wid, nwg) * 64u + lid;
    if (row >= p.batch * p.heads * p.tq) {
        return;
    }
    let i = row % p.tq;
    let h = (row / p.tq) % p.heads;
    let b = row / (p.tq * p.heads);
    let prow = row * p.tk;
    let qb = q_at(b, i, h);
    // Scores, four keys at a time: each q value loaded once per four keys.
    var mx = -3.4e38;
    for (var key0 = 0u; key0 < p.tk; key0 += 4u) {
        let kb = vec4<u32>(
            k_at(b, min(key0, p.tk - 1u), h),
            k_at(b, min(key0 + 1u, p.tk - 1u), h),
            k_at(b, min(key0 + 2u, p.tk - 1u), h),
            k_at(b, min(key0 + 3u, p.tk - 1u), h),
        );
        var acc = vec4<f32>();
        for (var d = 0u; d < p.hd; d++) {
            acc += q[qb + d] * vec4<f32>(k[kb.x + d], k[kb.y + d], k[kb.z + d], k[kb.w + d]);
        }
        for (var c = 0u; c < 4u; c++) {
            let key = key0 + c;
            if (key < p.tk) {
                let s = p.scale * acc[c];
                probs[prow + key] = s;
                if (!masked(b, i, key)) {
                    mx = max(mx, s);
                }
            }
        }
    }
    var sum = 0.0;
    for (var key = 0u; key < p.tk; key++) {
        var e = 0.0;
        if (!masked(b, i, key)) {
            e = exp(probs[prow + key] - mx);
        }
        probs[prow + key] = e;
        sum += e;
    }
    var inv = 0.0;
    if (sum > 0.0) {
        inv = 1.0 / sum;
    }
    for (var key = 0u; key < p.tk; key++) {
        probs[prow + key] *= inv;
    }
    // O = P V, four head dimensions at a time: each probability loaded once per four.
    let ob = p.o_off + (b * p.tq + i) * p.o_stride + h * p.hd;
    for (var d0 = 0u; d0 < p.hd; d0 += 4u) {
        let dd = min(vec4<u32>(d0, d0 + 1u, d0 + 2u, d0 + 3u), vec4<u32>(p.hd - 1u));
        var acc = vec4<f32>();
        for (var key = 0u; key < p.tk; key++) {
            let vb = v_at(b, key, h);
            acc += probs[prow + key] * vec4<f32>(v[vb + dd.x], v[vb + dd.y], v[vb + dd.z], v[vb + dd.w]);
        }
        for (var c = 0u; c < 4u; c++) {
            if (d0 + c < p.hd) {
                out[ob + d0 + c] = acc[c];
            }
        }
    }
}

// ---- backward, per query: dS = scale · P ⊙ (dP − rowsum(P ⊙ dP)), dP = dO Vᵀ (+ extra); dQ = dS K
@group(0) @binding(1) var<storage, read> saved_probs: array<f32>;  // P [B, H, Tq, Tk]
@group(0) @binding(2) var<storage, read> dout: array<f32>;         // dO, laid out like O
@group(0) @binding(3) var<storage, read> v_in: array<f32>;
@group(0) @binding(4) var<storage, read> k_in: array<f32>;
@group(0) @binding(5) var<storage, read> extra_dp: array<f32>;     // [B, H, Tq, Tk] or unbound
@group(0) @binding(6) var<storage, read_write> dscores: array<f32>;// dS [B, H, Tq, Tk]
@group(0) @binding(7) var<storage, read_write> dq: array<f32>;

// dO is read with the forward output's layout: (b, t, h, d) at (b·Tq + t)·stride_o + h·hd + d,
// where the backward's o_off/o_stride describe dQ; dO is always a whole [B, Tq, H·hd] tensor.
fn do_at(b: u32, t: u32, h: u32) -> u32 {
    return (b * p.tq + t) * p.heads * p.hd + h * p.hd;
}

@compute @workgroup_size(64)
fn attention_bwd_q(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wid, nwg) * 64u + lid;
    if (row >= p.batch * p.heads * p.tq) {
        return;
    }
    let i = row % p.tq;
    let h = (row / p.tq) % p.heads;
    let b = row / (p.tq * p.heads);
    let prow = row * p.tk;
    let ob = do_at(b, i, h);
    var dot = 0.0;
    for (var key0 = 0u; key0 < p.tk; key0 += 4u) {
        let vb = vec4<u32>(
            v_at(b, min(key0, p.tk - 1u), h),
            v_at(b, min(key0 + 1u, p.tk - 1u), h),
            v_at(b, min(key0 + 2u, p.tk - 1u), h),
            v_at(b, min(key0 + 3u, p.tk - 1u), h),
        );
        var acc = vec4<f32>();
        for (var d = 0u; d < p.hd; d++) {
            acc += dout[ob + d] * vec4<f32>(v_in[vb.x + d], v_in[vb.y + d], v_in[vb.z + d], v_in[vb.w + d]);
        }
        for (var c = 0u; c < 4u; c++) {
            let key = key0 + c;
            if (key < p.tk) {
                var dp = acc[c];
                if ((p.flags & 4u) != 0u) {
                    dp += extra_dp[prow + key];
                }
                dscores[prow + key] = dp;
                dot += saved_probs[prow + key] * dp;
            }
        }
    }
    for (var key = 0u; key < p.tk; key++) {
        dscores[prow + key] = p.scale * saved_probs[prow + key] * (dscores[prow + key] - dot);
    }
    let qb = p.o_off + (b * p.tq + i) * p.o_stride + h * p.hd;
    for (var d0 = 0u; d0 < p.hd; d0 += 4u) {
        let dd = min(vec4<u32>(d0, d0 + 1u, d0 + 2u, d0 + 3u), vec4<u32>(p.hd - 1u));
        var acc = vec4<f32>();
        for (var key = 0u; key < p.tk; key++) {
            let kb = k_at(b, key, h);
            acc += dscores[prow + key] * vec4<f32>(k_in[kb + dd.x], k_in[kb + dd.y], k_in[kb + dd.z], k_in[kb + dd.w]);
        }
        for (var c = 0u; c < 4u; c++) {
            if (d0 + c < p.hd) {
                dq[qb + d0 + c] = acc[c];
            }
        }
    }
}

// ---- backward, per key: dK = dSᵀ Q (weights = dS, rows = Q) or dV = Pᵀ dO (weights = P, rows = dO).
// Each writes one gradient, so a fused dK/dV buffer is never bound twice as writable.
@group(0) @binding(1) var<storage, read> weights_in: array<f32>;   // dS or P [B, H, Tq, Tk]
@group(0) @binding(2) var<storage, read> rows_in: array<f32>;      // Q (q_off, q_stride) or dO
@group(0) @binding(3) var<storage, read_write> dkv: array<f32>;    // written at o_off/o_stride, Tk rows

@compute @workgroup_size(64)
fn attention_bwd_kv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col = group_index(wid, nwg) * 64u + lid;
    if (col >= p.batch * p.heads * p.tk) {
        return;
    }
    let j = col % p.tk;
    let bh = col / p.tk;
    let h = bh % p.heads;
    let b = bh / p.heads;
    let ob = p.o_off + (b * p.tk + j) * p.o_stride + h * p.hd;
    for (var d0 = 0u; d0 < p.hd; d0 += 4u) {
        let dd = min(vec4<u32>(d0, d0 + 1u, d0 + 2u, d0 + 3u), vec4<u32>(p.hd - 1u));
        var acc = vec4<f32>();
        for (var i = 0u; i < p.tq; i++) {
            let rb = q_at(b, i, h);
            let w = weights_in[(bh * p.tq + i) * p.tk + j];
            acc += w * vec4<f32>(rows_in[rb + dd.x], rows_in[rb + dd.y], rows_in[rb + dd.z], rows_in[rb + dd.w]);
        }
        for (var c = 0u; c < 4u; c++) {
            if (d0 + c < p.hd) {
                dkv[ob + d0 + c] = acc[c];
            }
        }
    }
}
