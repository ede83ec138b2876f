// The attention core: P = softmax(scale · Q Kᵀ + masks), O = P V, and its backward, for the short
// sequences of captioning (tens of tokens), as small products per (batch, head):
//   attention_scores   map  = alpha · X Yᵀ          (S = scale · Q Kᵀ; dP = dO Vᵀ)
//   attention_softmax  P    = masked row softmax of S, in place
//   attention_dscores  dS   = scale · P ⊙ (dP − rowsum(P ⊙ dP)), in place (dP plus any extra)
//   attention_apply    out  = W Z or Wᵀ Z            (O = P V; dQ = dS K; dK = dSᵀ Q; dV = Pᵀ dO)
//
// Why this shape: lavapipe turns every storage load and store into a loop over its 8 SIMD lanes,
// so a kernel's speed there is set by how many multiply-adds each loaded value feeds. The product
// kernels give each invocation an 8 × 8 block of its output and load 8 + 8 values per 64
// multiply-adds (the first version, one invocation per query row, loaded 5 values per 4 and ran
// at 2 GFLOP/s). On GPUs the same blocks are the usual register tiling. Rows and columns past the
// edge read the last valid one (no branches in the inner loops) and are never stored.
//
// Sequences are strided views: element (b, t, h, d) of a sequence of `len` tokens sits at
// off + (b·len + t)·stride + h·hd + d, so fused projections need no copies. Maps are whole
// [B, H, Tq, Tk] tensors. Masked cells get probability exactly 0; a row with every key masked is
// all zeros.

struct Params {
    batch: u32,
    heads: u32,
    tq: u32,
    tk: u32,
    hd: u32,
    flags: u32,      // softmax: 1 = causal, 2 = key mask bound; dscores: 4 = extra dP bound
    alpha: f32,      // the scores' factor; the softmax scale in dscores
    transposed: u32, // apply: 1 = multiply by the map's transpose (out has Tk rows, Z has Tq)
    x_off: u32,      // scores: X (Tq rows); apply: Z
    x_stride: u32,
    y_off: u32,      // scores: Y (Tk rows)
    y_stride: u32,
    o_off: u32,      // apply: the output
    o_stride: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Which (batch · head, block row, block column) an invocation owns, for a grid of
// rows × cols blocks per (batch, head); `valid` is false for spare invocations.
struct Block {
    valid: bool,
    bh: u32,
    r0: u32,
    c0: u32,
}

fn locate_block(index: u32, rows: u32, cols: u32) -> Block {
    let per = ((rows + 7u) / 8u) * ((cols + 7u) / 8u);
    let bh = index / per;
    let k = index % per;
    let bc = (cols + 7u) / 8u;
    return Block(bh < p.batch * p.heads, bh, (k / bc) * 8u, (k % bc) * 8u);
}

// Start of token t of (batch b, head h) in a sequence of `len` tokens at (off, stride), with t
// clamped to the last token.
fn token(off: u32, stride: u32, len: u32, b: u32, t: u32, h: u32) -> u32 {
    return off + (b * len + min(t, len - 1u)) * stride + h * p.hd;
}

// Math matrix (row i, column j) = u_i v_j.
fn outer(u: vec4<f32>, v: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(u * v.x, u * v.y, u * v.z, u * v.w);
}

// ---- scores: map(i, j) = alpha · Σ_d X(i, d) Y(j, d); one 8 × 8 block per invocation ----
@group(0) @binding(1) var<storage, read> sx: array<f32>;
@group(0) @binding(2) var<storage, read> sy: array<f32>;
@group(0) @binding(3) var<storage, read_write> smap: array<f32>;

@compute @workgroup_size(64)
fn attention_scores(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let blk = locate_block(group_index(wid, nwg) * 64u + lid, p.tq, p.tk);
    if (!blk.valid) {
        return;
    }
    let b = blk.bh / p.heads;
    let h = blk.bh % p.heads;
    var xa: array<u32, 8>;
    var ya: array<u32, 8>;
    for (var r = 0u; r < 8u; r++) {
        xa[r] = token(p.x_off, p.x_stride, p.tq, b, blk.r0 + r, h);
        ya[r] = token(p.y_off, p.y_stride, p.tk, b, blk.c0 + r, h);
    }
    var a00 = mat4x4<f32>();
    var a01 = mat4x4<f32>();
    var a10 = mat4x4<f32>();
    var a11 = mat4x4<f32>();
    for (var d = 0u; d < p.hd; d++) {
        let x0 = vec4<f32>(sx[xa[0] + d], sx[xa[1] + d], sx[xa[2] + d], sx[xa[3] + d]);
        let x1 = vec4<f32>(sx[xa[4] + d], sx[xa[5] + d], sx[xa[6] + d], sx[xa[7] + d]);
        let y0 = vec4<f32>(sy[ya[0] + d], sy[ya[1] + d], sy[ya[2] + d], sy[ya[3] + d]);
        let y1 = vec4<f32>(sy[ya[4] + d], sy[ya[5] + d], sy[ya[6] + d], sy[ya[7] + d]);
        a00 += outer(x0, y0);
        a01 += outer(x0, y1);
        a10 += outer(x1, y0);
        a11 += outer(x1, y1);
    }
    let base = blk.bh * p.tq * p.tk;
    store_map(base, blk.r0, blk.c0, a00);
    store_map(base, blk.r0, blk.c0 + 4u, a01);
    store_map(base, blk.r0 + 4u, blk.c0, a10);
    store_map(base, blk.r0 + 4u, blk.c0 + 4u, a11);
}

// Stores alpha · m (m[j][i] = cell (r0 + i, c0 + j)) into the map, skipping cells past its edge.
fn store_map(base: u32, r0: u32, c0: u32, m: mat4x4<f32>) {
    for (var j = 0u; j < 4u; j++) {
        let c = c0 + j;
        if (c < p.tk) {
            for (var i = 0u; i < 4u; i++) {
                if (r0 + i < p.tq) {
                    smap[base + (r0 + i) * p.tk + c] = p.alpha * m[j][i];
                }
            }
        }
    }
}

// ---- softmax: one invocation per row of the map, in place ----
@group(0) @binding(1) var<storage, read> key_mask: array<f32>;   // [B, Tk], 1 = valid
@group(0) @binding(2) var<storage, read_write> pmap: array<f32>;

fn masked(b: u32, query: u32, key: u32) -> bool {
    return ((p.flags & 1u) != 0u && key > query) || ((p.flags & 2u) != 0u && key_mask[b * p.tk + key] == 0.0);
}

@compute @workgroup_size(64)
fn attention_softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wid, nwg) * 64u + lid;
    if (row >= p.batch * p.heads * p.tq) {
        return;
    }
    let i = row % p.tq;
    let b = row / (p.tq * p.heads);
    let base = row * p.tk;
    // One pass for the maximum and the sum (the sum rescaled whenever the maximum grows), one to
    // write the probabilities: each score is loaded twice and stored once.
    var mx = -3.4e38;
    var sum = 0.0;
    for (var j = 0u; j < p.tk; j++) {
        if (!masked(b, i, j)) {
            let s = pmap[base + j];
            if (s > mx) {
                sum = sum * exp(mx - s) + 1.0;
                mx = s;
            } else {
                sum += exp(s - mx);
            }
        }
    }
    var inv = 0.0;
    if (sum > 0.0) {
        inv = 1.0 / sum;
    }
    for (var j = 0u; j < p.tk; j++) {
        var e = 0.0;
        if (!masked(b, i, j)) {
            e = exp(pmap[base + j] - mx) * inv;
        }
        pmap[base + j] = e;
    }
}

// ---- dscores: one invocation per row; dP (+ extra) in, dS out, in place ----
@group(0) @binding(1) var<storage, read> saved_probs: array<f32>;  // P [B, H, Tq, Tk]
@group(0) @binding(2) var<storage, read> extra_dp: array<f32>;     // [B, H, Tq, Tk] or unbound
@group(0) @binding(3) var<storage, read_write> dmap: array<f32>;

@compute @workgroup_size(64)
fn attention_dscores(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wid, nwg) * 64u + lid;
    if (row >= p.batch * p.heads * p.tq) {
        return;
    }
    let base = row * p.tk;
    var dot = 0.0;
    for (var j = 0u; j < p.tk; j++) {
        var dp = dmap[base + j];
        if ((p.flags & 4u) != 0u) {
            dp += extra_dp[base + j];
            dmap[base + j] = dp;
        }
        dot += saved_probs[base + j] * dp;
    }
    for (var j = 0u; j < p.tk; j++) {
        dmap[base + j] = p.alpha * saved_probs[base + j] * (dmap[base + j] - dot);
    }
}

// ---- apply: out(r, d) = Σ_c W(r, c) Z(c, d), W the map or its transpose; 8 rows × 8 of d ----
@group(0) @binding(1) var<storage, read> aw: array<f32>;
@group(0) @binding(2) var<storage, read> az: array<f32>;
@group(0) @binding(3) var<storage, read_write> aout: array<f32>;

@compute @workgroup_size(64)
fn attention_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var rows = p.tq;
    var inner = p.tk;
    var rs = p.tk;   // W(r, c) = aw[base + r·rs + c·cs]
    var cs = 1u;
    if (p.transposed != 0u) {
        rows = p.tk;
        inner = p.tq;
        rs = 1u;
        cs = p.tk;
    }
    let blk = locate_block(group_index(wid, nwg) * 64u + lid, rows, p.hd);
    if (!blk.valid) {
        return;
    }
    let b = blk.bh / p.heads;
    let h = blk.bh % p.heads;
    let wbase = blk.bh * p.tq * p.tk;
    var wa: array<u32, 8>;
    for (var r = 0u; r < 8u; r++) {
        wa[r] = wbase + min(blk.r0 + r, rows - 1u) * rs;
    }
    // Columns d0 .. d0 + 7 of Z, clamped to the head's last one.
    let dz = blk.c0;
    let dl = p.hd - 1u;
    let d0 = vec4<u32>(min(dz, dl), min(dz + 1u, dl), min(dz + 2u, dl), min(dz + 3u, dl));
    let d1 = vec4<u32>(min(dz + 4u, dl), min(dz + 5u, dl), min(dz + 6u, dl), min(dz + 7u, dl));
    var a00 = mat4x4<f32>();
    var a01 = mat4x4<f32>();
    var a10 = mat4x4<f32>();
    var a11 = mat4x4<f32>();
    for (var c = 0u; c < inner; c++) {
        let wo = c * cs;
        let w0 = vec4<f32>(aw[wa[0] + wo], aw[wa[1] + wo], aw[wa[2] + wo], aw[wa[3] + wo]);
        let w1 = vec4<f32>(aw[wa[4] + wo], aw[wa[5] + wo], aw[wa[6] + wo], aw[wa[7] + wo]);
        let zb = token(p.x_off, p.x_stride, inner, b, c, h);
        let z0 = vec4<f32>(az[zb + d0.x], az[zb + d0.y], az[zb + d0.z], az[zb + d0.w]);
        let z1 = vec4<f32>(az[zb + d1.x], az[zb + d1.y], az[zb + d1.z], az[zb + d1.w]);
        a00 += outer(w0, z0);
        a01 += outer(w0, z1);
        a10 += outer(w1, z0);
        a11 += outer(w1, z1);
    }
    store_out(b, h, rows, blk.r0, dz, a00);
    store_out(b, h, rows, blk.r0, dz + 4u, a01);
    store_out(b, h, rows, blk.r0 + 4u, dz, a10);
    store_out(b, h, rows, blk.r0 + 4u, dz + 4u, a11);
}

// Stores m (m[j][i] = out(r0 + i, d0 + j)) into the output sequence, skipping what lies past it.
fn store_out(b: u32, h: u32, rows: u32, r0: u32, d0: u32, m: mat4x4<f32>) {
    for (var i = 0u; i < 4u; i++) {
        let r = r0 + i;
        if (r < rows) {
            let ob = p.o_off + (b * rows + r) * p.o_stride + h * p.hd;
            for (var j = 0u; j < 4u; j++) {
                if (d0 + j < p.hd) {
                    aout[ob + d0 + j] = m[j][i];
                }
            }
        }
    }
}
