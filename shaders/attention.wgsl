// The attention core: P = softmax(scale · Q Kᵀ + masks), O = P V, and its backward, for the short
// sequences of captioning (tens of tokens), as small products per (batch, head):
//   attention_scores   map  = alpha · X Yᵀ          (S = scale · Q Kᵀ)
//   attention_softmax  P    = masked row softmax of S, in place
//   attention_row_dots D    = rowsum(P ⊙ dP) = dO·O per row (plus rowsum(P ⊙ extra) with an extra dP)
//   attention_dscores  dS   = scale · P ⊙ (dP − D), dP = dO Vᵀ (+ extra) computed in the block
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
// [B, H, Tq, row] tensors, each row Tk cells padded with zeros to `row`, a multiple of 4: every row
// starts on a vec4, and the kernels load and store the maps as vec4s, which on lavapipe cost about
// what one scalar does (each is a loop over the lanes of a register). Masked cells get probability
// exactly 0; a row with every key masked is all zeros. A gradient arriving at P (`extra`) is an
// unpadded [B, H, Tq, Tk] tensor, as the distillation losses give it.
//
// On CPU adapters the products read their sequences from images instead (attention_scores_image,
// attention_dscores_image, attention_apply_image, below; see src/gpu/image.rs), adding the same
// terms in the same order.
//
// Launcher: src/ops/attention.rs.
// Reference: src/reference/mod.rs (attention, attention_bwd, masked_softmax).
// Tests: tests/attention.rs.

struct Params {
    batch: u32,
    heads: u32,
    tq: u32,
    tk: u32,
    hd: u32,
    alpha: f32,      // the scores' factor; the softmax scale in dscores
    transposed: u32, // apply: 1 = multiply by the map's transpose (out has Tk rows, Z has Tq)
    x_off: u32,      // scores: X (Tq rows); apply: Z
    x_stride: u32,
    y_off: u32,      // scores: Y (Tk rows)
    y_stride: u32,
    o_off: u32,      // apply: the output
    o_stride: u32,
    row: u32,        // the maps' padded row length
    z_off: u32,      // row_image: V (its stride is Y's)
    _pad2: u32,
}

// Which masks the softmax applies and whether dscores adds a gradient arriving at P, fixed per
// pipeline (see Kernel::specialised in src/gpu/pipelines.rs: lavapipe would load the key mask, or
// the extra gradient, for every cell whether or not a run-time flag asked for it).
override CAUSAL: bool = false;
override KEY_MASK: bool = false;
override EXTRA_DP: bool = false;

@group(0) @binding(0) var<uniform> p: Params;

// Which (batch · head, block row, block column) an invocation owns, for a grid of
// rows × cols blocks per (batch, head), with bh's batch b and head h; `valid` is false for spare
// invocations.
struct Block {
    valid: bool,
    bh: u32,
    b: u32,
    h: u32,
    r0: u32,
    c0: u32,
}

fn locate_block(index: u32, rows: u32, cols: u32) -> Block {
    return locate_wide_block(index, rows, cols, 8u);
}

// locate_block for blocks of 8 rows × `width` columns.
fn locate_wide_block(index: u32, rows: u32, cols: u32, width: u32) -> Block {
    return locate_sized_block(index, rows, cols, 8u, width);
}

// locate_block for blocks of `height` rows × `width` columns.
fn locate_sized_block(index: u32, rows: u32, cols: u32, height: u32, width: u32) -> Block {
    let bc = (cols + width - 1u) / width;
    let per = ((rows + height - 1u) / height) * bc;
    let bh = index / per;
    let k = index % per;
    return Block(bh < p.batch * p.heads, bh, bh / p.heads, bh % p.heads, (k / bc) * height, (k % bc) * width);
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

// The four 4 × 4 quarters of an 8 × 8 block of X Yᵀ: a00 rows r0 .. r0+3 × columns c0 .. c0+3,
// a01 the next four columns, a10 the next four rows (m[j][i] = cell (r0 + i, c0 + j)).
struct Quad {
    a00: mat4x4<f32>,
    a01: mat4x4<f32>,
    a10: mat4x4<f32>,
    a11: mat4x4<f32>,
}

// The map block an invocation of scores or dscores owns.
fn map_block(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> Block {
    return locate_block(group_index(wid, nwg) * 64u + lid, p.tq, p.tk);
}

// Σ_d X(r0 + i, d) Y(c0 + j, d) over the head's d for block blk's rows r0 .. and columns c0 ..,
// from the buffers.
fn products(blk: Block) -> Quad {
    let b = blk.b;
    let h = blk.h;
    let r0 = blk.r0;
    let c0 = blk.c0;
    var xa: array<u32, 8>;
    var ya: array<u32, 8>;
    for (var r = 0u; r < 8u; r++) {
        xa[r] = token(p.x_off, p.x_stride, p.tq, b, r0 + r, h);
        ya[r] = token(p.y_off, p.y_stride, p.tk, b, c0 + r, h);
    }
    var q = Quad();
    for (var d = 0u; d < p.hd; d++) {
        let x0 = vec4<f32>(sx[xa[0] + d], sx[xa[1] + d], sx[xa[2] + d], sx[xa[3] + d]);
        let x1 = vec4<f32>(sx[xa[4] + d], sx[xa[5] + d], sx[xa[6] + d], sx[xa[7] + d]);
        let y0 = vec4<f32>(sy[ya[0] + d], sy[ya[1] + d], sy[ya[2] + d], sy[ya[3] + d]);
        let y1 = vec4<f32>(sy[ya[4] + d], sy[ya[5] + d], sy[ya[6] + d], sy[ya[7] + d]);
        q.a00 += outer(x0, y0);
        q.a01 += outer(x0, y1);
        q.a10 += outer(x1, y0);
        q.a11 += outer(x1, y1);
    }
    return q;
}

@compute @workgroup_size(64)
fn attention_scores(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let blk = map_block(wid, nwg, lid);
    if (!blk.valid) {
        return;
    }
    store_scores(blk, products(blk));
}

fn store_scores(blk: Block, q: Quad) {
    let base = blk.bh * p.tq * p.row;
    store_map(base, blk.r0, blk.c0, q.a00);
    store_map(base, blk.r0, blk.c0 + 4u, q.a01);
    store_map(base, blk.r0 + 4u, blk.c0, q.a10);
    store_map(base, blk.r0 + 4u, blk.c0 + 4u, q.a11);
}

// Stores alpha · m (m[j][i] = cell (r0 + i, c0 + j)) into the map, skipping cells past its edge.
// The map as vec4s (smap's binding; rows are whole vec4s).
@group(0) @binding(3) var<storage, read_write> smap4: array<vec4<f32>>;

fn store_map(base: u32, r0: u32, c0: u32, m: mat4x4<f32>) {
    let rows = transpose(m);
    store_map_row(base, r0, c0, rows[0]);
    store_map_row(base, r0 + 1u, c0, rows[1]);
    store_map_row(base, r0 + 2u, c0, rows[2]);
    store_map_row(base, r0 + 3u, c0, rows[3]);
}

// Cells (r, c0 .. c0+3) of the map, c0 a multiple of 4: inside its padded row or past it together.
fn store_map_row(base: u32, r: u32, c0: u32, v: vec4<f32>) {
    if (r < p.tq && c0 < p.row) {
        smap4[(base + r * p.row + c0) / 4u] = p.alpha * v;
    }
}

// ---- scores_image: attention_scores with X and Y read from images of their sequences ----
//
// Used where texel fetches are cheaper than storage loads (lavapipe, see src/gpu/image.rs): one
// fetch brings four elements of a head's row for the 8 invocations of a SIMD register, where the
// buffer kernel loads them one invocation and one element at a time. A sequence's image holds
// its whole rows: token (b, t) is image row b·len + t, and texel (off + h·hd + d) / 4 holds its
// elements d .. d+3 of head h (the launcher checks that off and hd are multiples of 4).

@group(0) @binding(4) var seq_x: texture_storage_2d<rgba32float, read>;
@group(0) @binding(5) var seq_y: texture_storage_2d<rgba32float, read>;

// Four elements (texel tx) of tokens r .. r+3 (image rows), as a matrix's columns.
fn seq_texels(image: texture_storage_2d<rgba32float, read>, tx: u32, r: vec4<u32>) -> mat4x4<f32> {
    return mat4x4<f32>(
        textureLoad(image, vec2<i32>(i32(tx), i32(r.x))),
        textureLoad(image, vec2<i32>(i32(tx), i32(r.y))),
        textureLoad(image, vec2<i32>(i32(tx), i32(r.z))),
        textureLoad(image, vec2<i32>(i32(tx), i32(r.w))),
    );
}

// Image rows of tokens t0 .. t0+3 of batch b in a sequence of `len`, clamped to the last token.
fn seq_rows(b: u32, len: u32, t0: u32) -> vec4<u32> {
    let base = b * len;
    let last = len - 1u;
    return base + vec4<u32>(min(t0, last), min(t0 + 1u, last), min(t0 + 2u, last), min(t0 + 3u, last));
}

// products() with X and Y read from their images.
fn products_image(xi: texture_storage_2d<rgba32float, read>, yi: texture_storage_2d<rgba32float, read>, blk: Block) -> Quad {
    let b = blk.b;
    let h = blk.h;
    let r0 = blk.r0;
    let c0 = blk.c0;
    let xr0 = seq_rows(b, p.tq, r0);
    let xr1 = seq_rows(b, p.tq, r0 + 4u);
    let yr0 = seq_rows(b, p.tk, c0);
    let yr1 = seq_rows(b, p.tk, c0 + 4u);
    let xt = (p.x_off + h * p.hd) / 4u;
    let yt = (p.y_off + h * p.hd) / 4u;
    var q = Quad();
    // Row dd of x0 (a column of the texels) holds X(r0 .. r0+3, 4dt + dd): the terms are added
    // one d at a time, in products' order, so both give the same bits.
    for (var dt = 0u; dt < p.hd / 4u; dt++) {
        let x0 = transpose(seq_texels(xi, xt + dt, xr0));
        let x1 = transpose(seq_texels(xi, xt + dt, xr1));
        let y0 = transpose(seq_texels(yi, yt + dt, yr0));
        let y1 = transpose(seq_texels(yi, yt + dt, yr1));
        for (var dd = 0u; dd < 4u; dd++) {
            q.a00 += outer(x0[dd], y0[dd]);
            q.a01 += outer(x0[dd], y1[dd]);
            q.a10 += outer(x1[dd], y0[dd]);
            q.a11 += outer(x1[dd], y1[dd]);
        }
    }
    return q;
}

@compute @workgroup_size(64)
fn attention_scores_image(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let blk = map_block(wid, nwg, lid);
    if (!blk.valid) {
        return;
    }
    store_scores(blk, products_image(seq_x, seq_y, blk));
}

// ---- scores_row_image: attention_scores_image for one query row (a generated token) ----
//
// In a block of 8 × 8 the rows past Tq repeat the last one, so at one query row 7 of every 8
// multiply-adds and of the X fetches are idle. Here an invocation owns 1 × 8 cells: per step of 4
// along d, one fetch of X and 8 of Y (every key's texel, which any kernel must fetch once). Each
// cell adds the same products in the same order as in attention_scores_image, so both give the
// same bits.
@compute @workgroup_size(64)
fn attention_scores_row_image(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let blk = locate_wide_block(group_index(wid, nwg) * 64u + lid, 1u, p.tk, 8u);
    if (!blk.valid) {
        return;
    }
    let s = row_products(blk.b, blk.h, blk.c0);
    let base = blk.bh * p.tq * p.row;
    store_map_row(base, 0u, blk.c0, s[0]);
    store_map_row(base, 0u, blk.c0 + 4u, s[1]);
}

// Σ_d X(0, d) Y(c0 + j, d) of (batch b, head h)'s one query row, keys c0 .. c0+7 (columns 0 and
// 1: four keys each).
fn row_products(b: u32, h: u32, c0: u32) -> mat2x4<f32> {
    let xr = i32(b * p.tq);
    let yr0 = seq_rows(b, p.tk, c0);
    let yr1 = seq_rows(b, p.tk, c0 + 4u);
    let xt = (p.x_off + h * p.hd) / 4u;
    let yt = (p.y_off + h * p.hd) / 4u;
    var s0 = vec4<f32>();
    var s1 = vec4<f32>();
    for (var dt = 0u; dt < p.hd / 4u; dt++) {
        let x = textureLoad(seq_x, vec2<i32>(i32(xt + dt), xr));
        // Row dd: Y(c0 .. c0+3, 4dt + dd), as in products_image.
        let y0 = transpose(seq_texels(seq_y, yt + dt, yr0));
        let y1 = transpose(seq_texels(seq_y, yt + dt, yr1));
        for (var dd = 0u; dd < 4u; dd++) {
            s0 += x[dd] * y0[dd];
            s1 += x[dd] * y1[dd];
        }
    }
    return mat2x4<f32>(s0, s1);
}

// ---- softmax: one invocation per row of the map, in place ----
@group(0) @binding(1) var<storage, read> key_mask: array<f32>;   // [B, Tk], 1 = valid
@group(0) @binding(2) var<storage, read_write> pmap4: array<vec4<f32>>;

// Whether cell (query, key) is masked: past the row's Tk keys (padding), or by the masks.
fn masked(b: u32, query: u32, key: u32) -> bool {
    return key >= p.tk || (CAUSAL && key > query) || (KEY_MASK && key_mask[b * p.tk + min(key, p.tk - 1u)] == 0.0);
}

// The running maximum and sum of exponentials over the scores seen so far (the sum rescaled
// whenever the maximum grows), with score s of key `key` added unless masked.
struct Running {
    mx: f32,
    sum: f32,
}

fn running_add(r: Running, b: u32, i: u32, key: u32, s: f32) -> Running {
    if (masked(b, i, key)) {
        return r;
    }
    if (s > r.mx) {
        return Running(s, r.sum * exp(r.mx - s) + 1.0);
    }
    return Running(r.mx, r.sum + exp(s - r.mx));
}

fn probability(b: u32, i: u32, key: u32, s: f32, mx: f32, inv: f32) -> f32 {
    if (masked(b, i, key)) {
        return 0.0;
    }
    return exp(s - mx) * inv;
}

@compute @workgroup_size(64)
fn attention_softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wid, nwg) * 64u + lid;
    if (row >= p.batch * p.heads * p.tq) {
        return;
    }
    let i = row % p.tq;
    let b = row / (p.tq * p.heads);
    let base = row * p.row / 4u;
    let n4 = p.row / 4u;
    // One pass for the maximum and the sum, one to write the probabilities (the padding's too, as
    // zeros): each score is loaded twice and stored once, four to a vec4.
    var r = Running(-3.4e38, 0.0);
    for (var t = 0u; t < n4; t++) {
        let v = pmap4[base + t];
        let k = 4u * t;
        r = running_add(r, b, i, k, v.x);
        r = running_add(r, b, i, k + 1u, v.y);
        r = running_add(r, b, i, k + 2u, v.z);
        r = running_add(r, b, i, k + 3u, v.w);
    }
    var inv = 0.0;
    if (r.sum > 0.0) {
        inv = 1.0 / r.sum;
    }
    for (var t = 0u; t < n4; t++) {
        let v = pmap4[base + t];
        let k = 4u * t;
        pmap4[base + t] = vec4<f32>(probability(b, i, k, v.x, r.mx, inv),
            probability(b, i, k + 1u, v.y, r.mx, inv), probability(b, i, k + 2u, v.z, r.mx, inv),
            probability(b, i, k + 3u, v.w, r.mx, inv));
    }
}

// ---- row_dots and dscores: the softmax's backward without storing dP ----
//
// dS = scale · P ⊙ (dP − D) with D_i = Σ_j P_ij dP_ij. Since O_i = Σ_j P_ij V_j and
// dP_ij = dO_i · V_j, D_i = dO_i · O_i: a dot product per row of the outputs (plus Σ_j P_ij extra_ij
// when a gradient arrives at P itself). So dscores computes dP in its block as scores computes S
// (X = dO, Y = V) and stores only dS: per cell one load of P and one store, where storing dP and
// then reading it and P twice each per row cost a store and four loads more (on lavapipe each a
// loop over the lanes of a register).
@group(0) @binding(4) var<storage, read> saved_probs: array<f32>;  // P [B, H, Tq, Tk]
@group(0) @binding(5) var<storage, read> extra_dp: array<f32>;     // [B, H, Tq, Tk] (EXTRA_DP only)
@group(0) @binding(6) var<storage, read> row_dot: array<f32>;      // D [B, H, Tq]
@group(0) @binding(7) var dout_image: texture_storage_2d<rgba32float, read>;
@group(0) @binding(8) var v_image: texture_storage_2d<rgba32float, read>;

// row_dots' own bindings: dO (x) and O (o) as sequences, D out.
@group(0) @binding(1) var<storage, read> rd_dout: array<f32>;
@group(0) @binding(2) var<storage, read> rd_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> rd_dots: array<f32>;

// One invocation per row (batch, head, query) of the maps.
@compute @workgroup_size(64)
fn attention_row_dots(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wid, nwg) * 64u + lid;
    if (row >= p.batch * p.heads * p.tq) {
        return;
    }
    let i = row % p.tq;
    let bh = row / p.tq;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let xo = p.x_off + (b * p.tq + i) * p.x_stride + h * p.hd;
    let oo = p.o_off + (b * p.tq + i) * p.o_stride + h * p.hd;
    var dot = 0.0;
    for (var d = 0u; d < p.hd; d++) {
        dot += rd_dout[xo + d] * rd_out[oo + d];
    }
    if (EXTRA_DP) {
        let pbase = row * p.row;
        let ebase = row * p.tk;
        for (var j = 0u; j < p.tk; j++) {
            dot += saved_probs[pbase + j] * extra_dp[ebase + j];
        }
    }
    rd_dots[row] = dot;
}

@compute @workgroup_size(64)
fn attention_dscores(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let blk = map_block(wid, nwg, lid);
    if (!blk.valid) {
        return;
    }
    store_dscores(blk, products(blk));
}

@compute @workgroup_size(64)
fn attention_dscores_image(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let blk = map_block(wid, nwg, lid);
    if (!blk.valid) {
        return;
    }
    store_dscores(blk, products_image(dout_image, v_image, blk));
}

fn store_dscores(blk: Block, q: Quad) {
    // D of the block's rows (clamped to the last row; rows past it are never stored).
    let d0 = row_dots4(blk.bh, blk.r0);
    let d1 = row_dots4(blk.bh, blk.r0 + 4u);
    dscores_cells(blk.bh, blk.r0, blk.c0, q.a00, d0);
    dscores_cells(blk.bh, blk.r0, blk.c0 + 4u, q.a01, d0);
    dscores_cells(blk.bh, blk.r0 + 4u, blk.c0, q.a10, d1);
    dscores_cells(blk.bh, blk.r0 + 4u, blk.c0 + 4u, q.a11, d1);
}

fn row_dots4(bh: u32, r0: u32) -> vec4<f32> {
    let o = bh * p.tq;
    let last = p.tq - 1u;
    return vec4<f32>(row_dot[o + min(r0, last)], row_dot[o + min(r0 + 1u, last)],
        row_dot[o + min(r0 + 2u, last)], row_dot[o + min(r0 + 3u, last)]);
}

// P as vec4s (saved_probs' binding).
@group(0) @binding(4) var<storage, read> saved_probs4: array<vec4<f32>>;

// dS at cells (r0 + i, c0 .. c0+3) from dP's m[j][i] and the rows' D (dots[i]) into the map, four
// cells to a vec4 (c0 is a multiple of 4; the padding's P is 0, so its dS is too).
fn dscores_cells(bh: u32, r0: u32, c0: u32, m: mat4x4<f32>, dots: vec4<f32>) {
    let rows = transpose(m);
    dscores_row(bh, r0, c0, rows[0], dots.x);
    dscores_row(bh, r0 + 1u, c0, rows[1], dots.y);
    dscores_row(bh, r0 + 2u, c0, rows[2], dots.z);
    dscores_row(bh, r0 + 3u, c0, rows[3], dots.w);
}

fn dscores_row(bh: u32, r: u32, c0: u32, dp_row: vec4<f32>, dot: f32) {
    if (r < p.tq && c0 < p.tk) {
        let cell = ((bh * p.tq + r) * p.row + c0) / 4u;
        var dp = dp_row;
        if (EXTRA_DP) {
            // The extra gradient is unpadded: cells past Tk read the last one, times a P of 0.
            let e = (bh * p.tq + r) * p.tk;
            let last = p.tk - 1u;
            dp += vec4<f32>(extra_dp[e + c0], extra_dp[e + min(c0 + 1u, last)],
                extra_dp[e + min(c0 + 2u, last)], extra_dp[e + min(c0 + 3u, last)]);
        }
        smap4[cell] = p.alpha * saved_probs4[cell] * (dp - dot);
    }
}

// ---- apply: out(r, d) = Σ_c W(r, c) Z(c, d), W the map or its transpose; 8 rows × 8 of d ----
@group(0) @binding(1) var<storage, read> aw: array<f32>;
@group(0) @binding(2) var<storage, read> az: array<f32>;
@group(0) @binding(3) var<storage, read_write> aout: array<f32>;

// The map W as apply reads it: `rows` × `inner`, W(r, c) = aw[base + r·rs + c·cs] (the map or its
// transpose).
struct Applied {
    rows: u32,
    inner: u32,
    rs: u32,
    cs: u32,
}

fn applied() -> Applied {
    if (p.transposed != 0u) {
        return Applied(p.tk, p.tq, 1u, p.row);
    }
    return Applied(p.tq, p.tk, p.row, 1u);
}

// Where rows r0 .. r0+7 of (batch · head) bh's W start, clamped to its last row.
fn map_rows(w: Applied, bh: u32, r0: u32) -> array<u32, 8> {
    let wbase = bh * p.tq * p.row;
    var wa: array<u32, 8>;
    for (var r = 0u; r < 8u; r++) {
        wa[r] = wbase + min(r0 + r, w.rows - 1u) * w.rs;
    }
    return wa;
}

@compute @workgroup_size(64)
fn attention_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let w = applied();
    let rows = w.rows;
    let inner = w.inner;
    let cs = w.cs;
    let blk = locate_block(group_index(wid, nwg) * 64u + lid, rows, p.hd);
    if (!blk.valid) {
        return;
    }
    let b = blk.b;
    let h = blk.h;
    let wa = map_rows(w, blk.bh, blk.r0);
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

// ---- apply_image: attention_apply with Z read from an image of its sequence ----
//
// As attention_scores_image: Z's texels come from the image (binding 4, seq_x); the map's elements
// come from the buffer as vec4s (aw4), four cells of a row in one load; the output is stored as
// vec4s (aout4; the launcher checks its alignment). Each invocation takes a wider block than
// attention_apply's, 8 rows × 16 columns. The orientation is a pipeline constant (TRANSPOSED;
// lavapipe would run both loops behind a run-time flag), and the terms are added in
// attention_apply's order (the padding's zeros add nothing), so both give the same bits.
override TRANSPOSED: bool = false;
@group(0) @binding(1) var<storage, read> aw4: array<vec4<f32>>;

// The block's 8 × 16 sums.
struct Acc {
    a00: mat4x4<f32>,
    a01: mat4x4<f32>,
    a02: mat4x4<f32>,
    a03: mat4x4<f32>,
    a10: mat4x4<f32>,
    a11: mat4x4<f32>,
    a12: mat4x4<f32>,
    a13: mat4x4<f32>,
}

// acc + the block's rows' W(r, c) (w0: rows 0-3, w1: rows 4-7) times Z's row zr, texels t.
fn apply_term(acc: Acc, w0: vec4<f32>, w1: vec4<f32>, t: vec4<i32>, zr: i32) -> Acc {
    let z0 = textureLoad(seq_x, vec2<i32>(t.x, zr));
    let z1 = textureLoad(seq_x, vec2<i32>(t.y, zr));
    let z2 = textureLoad(seq_x, vec2<i32>(t.z, zr));
    let z3 = textureLoad(seq_x, vec2<i32>(t.w, zr));
    return Acc(acc.a00 + outer(w0, z0), acc.a01 + outer(w0, z1), acc.a02 + outer(w0, z2),
        acc.a03 + outer(w0, z3), acc.a10 + outer(w1, z0), acc.a11 + outer(w1, z1),
        acc.a12 + outer(w1, z2), acc.a13 + outer(w1, z3));
}

@compute @workgroup_size(64)
fn attention_apply_image(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var rows = p.tq;
    var inner = p.tk;
    if (TRANSPOSED) {
        rows = p.tk;
        inner = p.tq;
    }
    let blk = locate_wide_block(group_index(wid, nwg) * 64u + lid, rows, p.hd, 16u);
    if (!blk.valid) {
        return;
    }
    let b = blk.b;
    let h = blk.h;
    // Texels of Z's columns c0 .. c0 + 15 of the head, clamped to its last texel.
    let tz = (p.x_off + h * p.hd) / 4u;
    let tl = p.hd / 4u - 1u;
    let q = blk.c0 / 4u;
    let t = vec4<i32>(vec4<u32>(tz) + min(vec4<u32>(q, q + 1u, q + 2u, q + 3u), vec4<u32>(tl)));
    let zrow = b * inner;
    let last_z = zrow + inner - 1u;
    // The map's rows, in vec4s.
    let mbase = blk.bh * p.tq * p.row / 4u;
    let n4 = p.row / 4u;
    var acc = Acc();
    if (TRANSPOSED) {
        // W(r, c) = P(c, r): cells r0 .. r0+7 of map row c, two vec4s (clamped to the row's last;
        // rows past Tk are never stored).
        let v0 = min(blk.r0 / 4u, n4 - 1u);
        let v1 = min(blk.r0 / 4u + 1u, n4 - 1u);
        for (var c = 0u; c < inner; c++) {
            let rb = mbase + c * n4;
            acc = apply_term(acc, aw4[rb + v0], aw4[rb + v1], t, i32(zrow + c));
        }
    } else {
        // W(r, c) = P(r, c): four cells of each of the block's 8 rows (clamped to the last row)
        // per load, taken one column at a time; the padding's zeros times Z's last row add 0.
        var ra: array<u32, 8>;
        for (var r = 0u; r < 8u; r++) {
            ra[r] = mbase + min(blk.r0 + r, rows - 1u) * n4;
        }
        for (var c4 = 0u; c4 < (inner + 3u) / 4u; c4++) {
            let m0 = mat4x4<f32>(aw4[ra[0] + c4], aw4[ra[1] + c4], aw4[ra[2] + c4], aw4[ra[3] + c4]);
            let m1 = mat4x4<f32>(aw4[ra[4] + c4], aw4[ra[5] + c4], aw4[ra[6] + c4], aw4[ra[7] + c4]);
            // Row j of the transposes: column 4·c4 + j of the block's rows.
            let w0 = transpose(m0);
            let w1 = transpose(m1);
            let z = zrow + 4u * c4;
            acc = apply_term(acc, w0[0], w1[0], t, i32(z));
            acc = apply_term(acc, w0[1], w1[1], t, i32(min(z + 1u, last_z)));
            acc = apply_term(acc, w0[2], w1[2], t, i32(min(z + 2u, last_z)));
            acc = apply_term(acc, w0[3], w1[3], t, i32(min(z + 3u, last_z)));
        }
    }
    store_out4(b, h, rows, blk.r0, blk.c0, acc.a00);
    store_out4(b, h, rows, blk.r0, blk.c0 + 4u, acc.a01);
    store_out4(b, h, rows, blk.r0, blk.c0 + 8u, acc.a02);
    store_out4(b, h, rows, blk.r0, blk.c0 + 12u, acc.a03);
    store_out4(b, h, rows, blk.r0 + 4u, blk.c0, acc.a10);
    store_out4(b, h, rows, blk.r0 + 4u, blk.c0 + 4u, acc.a11);
    store_out4(b, h, rows, blk.r0 + 4u, blk.c0 + 8u, acc.a12);
    store_out4(b, h, rows, blk.r0 + 4u, blk.c0 + 12u, acc.a13);
}

// ---- apply_row_image: attention_apply_image (W Z, not transposed) for one query row ----
//
// As scores_row_image: at one row, 7 of every 8 rows of apply_image's block are idle. Here an
// invocation owns 4 columns of the row: per key one fetch of Z's texel (Z is read once in all)
// and, per four keys, one vec4 of the map; more invocations than 16 columns each would give, so
// that a single token's few heads still spread over the CPU's threads. The terms are added in
// apply_image's order, so both give the same bits.
@compute @workgroup_size(64)
fn attention_apply_row_image(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let blk = locate_wide_block(group_index(wid, nwg) * 64u + lid, 1u, p.hd, 4u);
    if (!blk.valid) {
        return;
    }
    let b = blk.b;
    let h = blk.h;
    let tx = i32((p.x_off + h * p.hd + blk.c0) / 4u);
    let zrow = b * p.tk;
    let last_z = zrow + p.tk - 1u;
    let mrow = blk.bh * p.tq * p.row / 4u;
    var acc = vec4<f32>();
    for (var c4 = 0u; c4 < (p.tk + 3u) / 4u; c4++) {
        let w = aw4[mrow + c4];
        let z = zrow + 4u * c4;
        acc += w.x * textureLoad(seq_x, vec2<i32>(tx, i32(z)));
        acc += w.y * textureLoad(seq_x, vec2<i32>(tx, i32(min(z + 1u, last_z))));
        acc += w.z * textureLoad(seq_x, vec2<i32>(tx, i32(min(z + 2u, last_z))));
        acc += w.w * textureLoad(seq_x, vec2<i32>(tx, i32(min(z + 3u, last_z))));
    }
    store_row4(b, h, 1u, 0u, blk.c0, acc);
}

// The output sequence as vec4s (aout's binding; the launcher checks that its offset and stride
// are multiples of 4): lavapipe stores a vec4 for about the cost of one scalar.
@group(0) @binding(3) var<storage, read_write> aout4: array<vec4<f32>>;

// ---- row_image: a generated token's attention, scores_row_image, softmax and apply_row_image
// in one dispatch ----
//
// One workgroup per (batch, head). Generating a token runs attention twice per decoder layer, and
// on lavapipe each dispatch costs about 30 µs of its own, more than this work. The three kernels'
// terms are added in their order, so all three paths give the same bits (tests/attention.rs):
// invocation lid computes keys 8·lid .. +7, then every 128th block, as scores_row_image does; the
// scaled scores wait in workgroup memory; every invocation runs the softmax's running maximum and
// sum over the whole row (the same values in each; no second barrier); and invocation lid applies
// the probabilities to columns 4·lid .. +3 of V, as apply_row_image. Q, K and V come from images
// (seq_x, seq_y, seq_v; V's columns start at z_off). Rows of more than ROW_KEYS keys take the
// three kernels.
const ROW_KEYS = 1024u;
const ROW_INVOCATIONS = 16u;
var<workgroup> row_scores: array<vec4<f32>, 256>;   // ROW_KEYS / 4
@group(0) @binding(6) var seq_v: texture_storage_2d<rgba32float, read>;

@compute @workgroup_size(ROW_INVOCATIONS)
fn attention_row_image(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bh = group_index(wid, nwg);
    if (bh >= p.batch * p.heads) {
        return;
    }
    let b = bh / p.heads;
    let h = bh % p.heads;
    for (var c0 = 8u * lid; c0 < p.tk; c0 += 8u * ROW_INVOCATIONS) {
        let s = row_products(b, h, c0);
        row_scores[c0 / 4u] = p.alpha * s[0];
        if (c0 + 4u < p.row) {
            row_scores[c0 / 4u + 1u] = p.alpha * s[1];
        }
    }
    workgroupBarrier();
    // attention_softmax's running maximum and sum, keys past Tk left out.
    let n4 = p.row / 4u;
    var mx = -3.4e38;
    var sum = 0.0;
    for (var t = 0u; t < n4; t++) {
        let v = row_scores[t];
        for (var j = 0u; j < 4u; j++) {
            let s = v[j];
            if (4u * t + j < p.tk) {
                if (s > mx) {
                    sum = sum * exp(mx - s) + 1.0;
                    mx = s;
                } else {
                    sum += exp(s - mx);
                }
            }
        }
    }
    var inv = 0.0;
    if (sum > 0.0) {
        inv = 1.0 / sum;
    }
    let zt = (p.z_off + h * p.hd) / 4u;
    let zrow = b * p.tk;
    let last_z = zrow + p.tk - 1u;
    for (var c = 4u * lid; c < p.hd; c += 4u * ROW_INVOCATIONS) {
        let tx = i32(zt + c / 4u);
        var acc = vec4<f32>();
        for (var c4 = 0u; c4 < n4; c4++) {
            let v = row_scores[c4];
            let k = 4u * c4;
            var w = vec4<f32>();
            for (var j = 0u; j < 4u; j++) {
                if (k + j < p.tk) {
                    w[j] = exp(v[j] - mx) * inv;
                }
            }
            let z = zrow + k;
            acc += w.x * textureLoad(seq_v, vec2<i32>(tx, i32(z)));
            acc += w.y * textureLoad(seq_v, vec2<i32>(tx, i32(min(z + 1u, last_z))));
            acc += w.z * textureLoad(seq_v, vec2<i32>(tx, i32(min(z + 2u, last_z))));
            acc += w.w * textureLoad(seq_v, vec2<i32>(tx, i32(min(z + 3u, last_z))));
        }
        store_row4(b, h, 1u, 0u, c, acc);
    }
}

// store_out with each row's four elements d0 .. d0+3 stored as one vec4 (the head's width is a
// multiple of 4, so they lie within it or past it together).
// Written out per row: a matrix indexed in a loop would move to memory.
fn store_out4(b: u32, h: u32, rows: u32, r0: u32, d0: u32, m: mat4x4<f32>) {
    let v = transpose(m);
    store_row4(b, h, rows, r0, d0, v[0]);
    store_row4(b, h, rows, r0 + 1u, d0, v[1]);
    store_row4(b, h, rows, r0 + 2u, d0, v[2]);
    store_row4(b, h, rows, r0 + 3u, d0, v[3]);
}

fn store_row4(b: u32, h: u32, rows: u32, r: u32, d0: u32, v: vec4<f32>) {
    if (r < rows && d0 < p.hd) {
        aout4[(p.o_off + (b * rows + r) * p.o_stride + h * p.hd + d0) / 4u] = v;
    }
}

// ---- unpad: the maps without their rows' padding, [B, H, Tq, Tk], for the distillation losses
// and other readers; one invocation per cell ----
@group(0) @binding(1) var<storage, read> padded: array<f32>;
@group(0) @binding(2) var<storage, read_write> unpadded: array<f32>;

@compute @workgroup_size(256)
fn attention_unpad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i >= p.batch * p.heads * p.tq * p.tk) {
        return;
    }
    unpadded[i] = padded_cell(i);
}

// The same, four cells per invocation into a vec4 (the launcher's choice where the map's cell
// count is a multiple of 4): on lavapipe a store is a loop over the 8 lanes of a register whether
// it moves a scalar or a vec4, and the stores were most of this pass's cost.
@group(0) @binding(2) var<storage, read_write> unpadded4: array<vec4<f32>>;

@compute @workgroup_size(256)
fn attention_unpad4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let v = thread_index(wid, nwg, lid);
    if (v >= p.batch * p.heads * p.tq * p.tk / 4u) {
        return;
    }
    unpadded4[v] = vec4<f32>(padded_cell(4u * v), padded_cell(4u * v + 1u), padded_cell(4u * v + 2u),
        padded_cell(4u * v + 3u));
}

// Cell i of the unpadded maps, from its padded row.
fn padded_cell(i: u32) -> f32 {
    let r = i / p.tk;
    return padded[r * p.row + i - r * p.tk];
}
