// ---- matmul_subgroup: matmul_image with each texel fetched once per subgroup ----
//
// Appended to matmul.wgsl (its parameters, bindings and block helpers); a family of its own because
// it needs subgroup operations, which not every device has. Used on CPU adapters whose subgroups
// hold at least 8 invocations (lavapipe: 8, one per lane of an AVX2 register).
//
// Why: a texel fetch is lavapipe's costliest step in the matmul (about 60 cycles for the 8 lanes of
// a register, measured with a probe at 512³), and in matmul_image the 8 invocations of a register
// all fetch the same A texels. Here a workgroup is one subgroup of LANES invocations (8, or 16 where
// lavapipe's registers are 512 bits) that owns a 32 x 8·LANES tile of C, and each lane fetches
// different texels: per step of 4 along K, lane l fetches 32 / LANES texels of A (rows of the tile,
// 4 elements of K each) and 8 of B (its own columns).
// subgroupBroadcast with a constant lane, an extract and a splat on lavapipe, hands every lane the
// A rows it needs. Each lane owns all 32 rows and two groups of 4 columns of the tile, sixteen
// 4 x 4 blocks (two Blocks of matmul_vec4): 12 fetches and 128 broadcasts per 1,024 multiply-adds,
// against 24 fetches per 512 in matmul_image. A tile of 32 x 32 (one group of columns, 8 fetches
// per 512) ran 10-16% slower in `amad bench kernels` (best of 3 rounds per build, alternating:
// 73.5 against 81.4 GFLOP/s at 512³, 63.4 against 72.5 at 2048³), and one of 32 x 128 slower
// still (59.5 and 65.3): the accumulators live in memory either way (256 here, more than a CPU
// has registers), and past two groups the fetches saved no longer repay the extra traffic.
// Each block is updated as in matmul_vec4 (block = mad(a, b, block) per step of 4 along K; K's remainder
// through the scalar bindings), so every element of C is the same sum in the same order and the
// three kernels give the same bits.
//
// Columns: lane l owns columns 4l .. 4l+3 and 4·LANES+4l .. 4·LANES+4l+3 of the tile, and stores each row of them with one vec4
// store into C (bound as vec4s: the launcher runs this entry point only where C's rows are
// contiguous and 16-byte aligned, and matmul_subgroup_cells, below, elsewhere). On lavapipe a vec4 store costs about a third of four scalar ones: each is a
// loop over the 8 lanes, and the vec4's loop moves 16 bytes per lane (a probe: 0.87 ns per element
// stored as vec4s, 1.6-2.8 as scalars). With B_ALONG_N a fetch holds those 4 columns at one step
// of K; otherwise it holds 4 elements of K of one column. Rows past M and columns past N fetch
// whatever the image holds there (or zero) and are never stored; each lane's sums use only its own
// columns' values.
//
// Launcher: src/ops/matmul.rs. Reference: src/reference/mod.rs (matmul).
// Tests: tests/matmul.rs.

// Invocations in a subgroup, and in this kernel's workgroup (fixed per device: src/ops/matmul.rs).
// At 16 (lavapipe with LP_NATIVE_VECTOR_WIDTH=512, where amad sets it: src/gpu/mod.rs) each
// instruction does twice the work of one at 8 for about the same cost; the tile doubles in width.
override LANES: u32 = 8u;

// C as vec4s (C's own binding, which this kernel does not use otherwise).
@group(0) @binding(4) var<storage, read_write> c4: array<vec4<f32>>;

// What the store does besides (EPILOGUE, fixed per pipeline): 0 nothing; 1 (2) also stores the
// exact (tanh) GELU of each value into aux4, a tensor laid out as C (an MLP's hidden layer and its
// activation in one pass); 3 (4) multiplies each value by the exact (tanh) GELU's slope at aux4's
// value before storing it (the gradient through the activation, where dact is never stored). The
// same functions as elementwise.wgsl's kernels, applied to the same values, so the results are the
// same bits as the product followed by those kernels, without their pass over the tensor.
override EPILOGUE: u32 = 0u;
@group(0) @binding(5) var<storage, read_write> aux4: array<vec4<f32>>;
@group(0) @binding(6) var sg_a_image: texture_storage_2d<rgba32float, read>;
// B's image, sg_b_image at binding 7, is declared in matmul.wgsl's half-precision section.

@compute @workgroup_size(LANES, 1, 1)
fn matmul_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    // Tiles g·group_tiles .. in turn (see subgroup_group_tiles in src/ops/matmul.rs). The whole
    // workgroup is one subgroup, so the loop and its exit are uniform across it.
    let first = group_index(wid, nwg) * p.group_tiles;
    for (var t = first; t < first + p.group_tiles; t++) {
        let tile = locate_tile(t, 32u, 8u * LANES);
        if (!tile.valid) {
            return;
        }
        var acc: Block;
        var acd: Block;
        subgroup_tile(tile, lane, &acc, &acd);
        let col = tile.col + 4u * lane;
        let c0 = c_matrix(tile.b1, tile.b2);
        store_tile_columns(c0, tile.row, col, &acc);
        store_tile_columns(c0, tile.row, col + 4u * LANES, &acd);
    }
}

// matmul_subgroup for a C whose rows are not whole aligned vec4s (an LM head's logits, 50,257 to a
// row): the same sums, each element stored on its own through C's scalar binding, as matmul_image
// stores them. A pass of its own because naga refuses an entry point that uses both of binding 4's
// views. Its scalar stores cost more per element than vec4 ones, but a product that gets here has
// K multiply-adds per element stored (768 for GPT-2's LM head), and it ran at half the speed on
// the image kernel, whose 8 lanes fetch A's texels separately.
@compute @workgroup_size(LANES, 1, 1)
fn matmul_subgroup_cells(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let first = group_index(wid, nwg) * p.group_tiles;
    for (var t = first; t < first + p.group_tiles; t++) {
        let tile = locate_tile(t, 32u, 8u * LANES);
        if (!tile.valid) {
            return;
        }
        var acc: Block;
        var acd: Block;
        subgroup_tile(tile, lane, &acc, &acd);
        let col = tile.col + 4u * lane;
        let c0 = c_matrix(tile.b1, tile.b2);
        store_tile_cells(c0, tile.row, col, &acc);
        store_tile_cells(c0, tile.row, col + 4u * LANES, &acd);
    }
}

// The sums of one 32 x 8·LANES tile of C: this lane's columns col .. col+3 into acc, the same 4·LANES
// further on into acd (both zero on entry).
fn subgroup_tile(tile: Tile, lane: u32, acc: ptr<function, Block>, acd: ptr<function, Block>) {
    let ay = (tile.b1 * p.a_bs1 + tile.b2 * p.a_bs2) / select(p.a_cs, p.a_rs, A_ALONG_K);
    let by = (tile.b1 * p.b_bs1 + tile.b2 * p.b_bs2) / select(p.b_cs, p.b_rs, B_ALONG_N);
    let col = tile.col + 4u * lane;
    let k4 = p.k & ~3u;
    for (var k = 0u; k < k4; k += 4u) {
        let bm = lane_b(by, col, k);
        let bn = lane_b(by, col + 4u * LANES, k);
        // This lane's 32 / LANES texels of A (see lane_a), the last two fetched only at 8 lanes.
        var a: array<vec4<f32>, 4>;
        a[0] = lane_a(ay, tile.row, lane, 0u, k);
        a[1] = lane_a(ay, tile.row, lane, 1u, k);
        if (LANES == 8u) {
            a[2] = lane_a(ay, tile.row, lane, 2u, k);
            a[3] = lane_a(ay, tile.row, lane, 3u, k);
        }
        mad_both(a_block(a, 0u), bm, bn, 0u, acc, acd);
        mad_both(a_block(a, 1u), bm, bn, 1u, acc, acd);
        mad_both(a_block(a, 2u), bm, bn, 2u, acc, acd);
        mad_both(a_block(a, 3u), bm, bn, 3u, acc, acd);
        mad_both(a_block(a, 4u), bm, bn, 4u, acc, acd);
        mad_both(a_block(a, 5u), bm, bn, 5u, acc, acd);
        mad_both(a_block(a, 6u), bm, bn, 6u, acc, acd);
        mad_both(a_block(a, 7u), bm, bn, 7u, acc, acd);
    }
    let a0 = a_row(tile, tile.row);
    let b0 = b_column(tile, col);
    finish_columns(a0, b0, k4, acc);
    finish_columns(a0, b0 + 4u * LANES * p.b_cs, k4, acd);
}

// Block i of both column groups += m · bm (bn). i is a constant once inlined (an accumulator
// indexed at run time would move to memory).
fn mad_both(m: mat4x4<f32>, bm: mat4x4<f32>, bn: mat4x4<f32>, i: u32, acc: ptr<function, Block>,
    acd: ptr<function, Block>) {
    (*acc)[i] = mad(m, bm, (*acc)[i]);
    (*acd)[i] = mad(m, bn, (*acd)[i]);
}

// K's remainder for one column group (its first column's offset in B at b0) through the scalar
// bindings, as in matmul_vec4's block_finish (written out, for the same reason as mad_both).
fn finish_columns(a0: u32, b0: u32, k4: u32, acc: ptr<function, Block>) {
    let r4 = 4u * p.a_rs;
    let s = p.b_cs;
    for (var k = k4; k < p.k; k++) {
        let o = b0 + k * p.b_rs;
        let bv = vec4<f32>(b_at(o), b_at(o + s), b_at(o + 2u * s), b_at(o + 3u * s));
        (*acc)[0] = mad_outer(a_column(a0, k), bv, (*acc)[0]);
        (*acc)[1] = mad_outer(a_column(a0 + r4, k), bv, (*acc)[1]);
        (*acc)[2] = mad_outer(a_column(a0 + 2u * r4, k), bv, (*acc)[2]);
        (*acc)[3] = mad_outer(a_column(a0 + 3u * r4, k), bv, (*acc)[3]);
        (*acc)[4] = mad_outer(a_column(a0 + 4u * r4, k), bv, (*acc)[4]);
        (*acc)[5] = mad_outer(a_column(a0 + 5u * r4, k), bv, (*acc)[5]);
        (*acc)[6] = mad_outer(a_column(a0 + 6u * r4, k), bv, (*acc)[6]);
        (*acc)[7] = mad_outer(a_column(a0 + 7u * r4, k), bv, (*acc)[7]);
    }
}

// The 32 rows of one column group, from row0, into C as vec4s.
fn store_tile_columns(c0: u32, row0: u32, col: u32, acc: ptr<function, Block>) {
    let bv = column_bias(col, 1u);
    store_rows(c0, row0, col, (*acc)[0], bv);
    store_rows(c0, row0 + 4u, col, (*acc)[1], bv);
    store_rows(c0, row0 + 8u, col, (*acc)[2], bv);
    store_rows(c0, row0 + 12u, col, (*acc)[3], bv);
    store_rows(c0, row0 + 16u, col, (*acc)[4], bv);
    store_rows(c0, row0 + 20u, col, (*acc)[5], bv);
    store_rows(c0, row0 + 24u, col, (*acc)[6], bv);
    store_rows(c0, row0 + 28u, col, (*acc)[7], bv);
}

// The same into C element by element (matmul.wgsl's store_block, the same sums in the same order).
fn store_tile_cells(c0: u32, row0: u32, col: u32, acc: ptr<function, Block>) {
    let bv = column_bias(col, 1u);
    store_block(c0, row0, col, (*acc)[0], 1u, bv);
    store_block(c0, row0 + 4u, col, (*acc)[1], 1u, bv);
    store_block(c0, row0 + 8u, col, (*acc)[2], 1u, bv);
    store_block(c0, row0 + 12u, col, (*acc)[3], 1u, bv);
    store_block(c0, row0 + 16u, col, (*acc)[4], 1u, bv);
    store_block(c0, row0 + 20u, col, (*acc)[5], 1u, bv);
    store_block(c0, row0 + 24u, col, (*acc)[6], 1u, bv);
    store_block(c0, row0 + 28u, col, (*acc)[7], 1u, bv);
}

// Stores block m (m[j][i] = C(row + i, col + j)) as four vec4 rows: store_block's sums in its order
// (alpha · v, then the bias, then C's value), element by element.
fn store_rows(c0: u32, row: u32, col: u32, m: mat4x4<f32>, bv: vec4<f32>) {
    let rows = transpose(m);
    store_vec4(c0, row, col, rows[0], bv);
    store_vec4(c0, row + 1u, col, rows[1], bv);
    store_vec4(c0, row + 2u, col, rows[2], bv);
    store_vec4(c0, row + 3u, col, rows[3], bv);
}

fn store_vec4(c0: u32, r: u32, col: u32, v: vec4<f32>, bv: vec4<f32>) {
    if (r < p.m && col < p.n) {
        var x = p.alpha * v;
        if (BIAS) {
            x += bv;
        }
        let ci = (c0 + r * p.c_rs + col) / 4u;
        if (ACCUMULATE) {
            x += c4[ci];
        }
        if (EPILOGUE == 3u || EPILOGUE == 4u) {
            x *= gelu_slope4(aux4[ci], EPILOGUE == 4u);
        }
        c4[ci] = x;
        if (EPILOGUE == 1u || EPILOGUE == 2u) {
            aux4[ci] = gelu4(x, EPILOGUE == 2u);
        }
    }
}

// This lane's texel q of A for the step at k (see matmul_image for the images' layout). Each lane
// fetches 32 / LANES of the 32 texels of a step: with A_ALONG_K a texel is 4 elements of K of one
// row, and lane l's are rows l, LANES + l, ...; otherwise a texel is 4 rows at one k, and lane l's
// are rows 4(l mod 8) .. +3 at k + J(l / 8) + q, J = 32 / LANES of them.
fn lane_a(y0: u32, row0: u32, lane: u32, q: u32, k: u32) -> vec4<f32> {
    if (A_ALONG_K) {
        return textureLoad(sg_a_image, vec2<i32>(i32(k / 4u), i32(y0 + row0 + LANES * q + lane)));
    }
    let kq = k + (32u / LANES) * (lane / 8u) + q;
    return textureLoad(sg_a_image, vec2<i32>(i32(row0 / 4u + lane % 8u), i32(y0 + kq)));
}

// Math matrix (row kk, column j) = B(k + kk, this lane's column j).
fn lane_b(y0: u32, col: u32, k: u32) -> mat4x4<f32> {
    if (B_ALONG_N) {
        // Texel col/4 of image row k + kk holds B(k + kk, col .. col+3): a row of the matrix.
        let y = y0 + k;
        return transpose(mat4x4<f32>(sg_b_texel(col / 4u, y), sg_b_texel(col / 4u, y + 1u),
            sg_b_texel(col / 4u, y + 2u), sg_b_texel(col / 4u, y + 3u)));
    }
    // Image row = B's column; texel k/4 holds B(k .. k+3, column): a column of the matrix.
    let x = k / 4u;
    return mat4x4<f32>(
        sg_b_texel(x, y0 + col),
        sg_b_texel(x, y0 + col + 1u),
        sg_b_texel(x, y0 + col + 2u),
        sg_b_texel(x, y0 + col + 3u),
    );
}

// Block i of the tile's A for the step (rows 4i .. 4i+3, k .. k+3) as a math matrix, from the lanes
// that fetched it (see lane_a). The lanes must be constant expressions, hence the switches (each
// folds once the caller's constant argument is inlined and LANES is fixed).
fn a_block(a: array<vec4<f32>, 4>, i: u32) -> mat4x4<f32> {
    if (A_ALONG_K) {
        // Rows 4i .. 4i+3 are lanes 4i mod LANES .. +3 of texel 4i / LANES, each a row.
        if (LANES == 8u) {
            switch (i) {
                case 0u: { return transpose(lanes_0_3(a[0])); }
                case 1u: { return transpose(lanes_4_7(a[0])); }
                case 2u: { return transpose(lanes_0_3(a[1])); }
                case 3u: { return transpose(lanes_4_7(a[1])); }
                case 4u: { return transpose(lanes_0_3(a[2])); }
                case 5u: { return transpose(lanes_4_7(a[2])); }
                case 6u: { return transpose(lanes_0_3(a[3])); }
                default: { return transpose(lanes_4_7(a[3])); }
            }
        }
        switch (i) {
            case 0u: { return transpose(lanes_0_3(a[0])); }
            case 1u: { return transpose(lanes_4_7(a[0])); }
            case 2u: { return transpose(lanes_8_11(a[0])); }
            case 3u: { return transpose(lanes_12_15(a[0])); }
            case 4u: { return transpose(lanes_0_3(a[1])); }
            case 5u: { return transpose(lanes_4_7(a[1])); }
            case 6u: { return transpose(lanes_8_11(a[1])); }
            default: { return transpose(lanes_12_15(a[1])); }
        }
    }
    // Column kk (A(rows 4i .. 4i+3, k + kk)) is texel kk mod J of lane i + 8(kk / J).
    switch (i) {
        case 0u: { return lane_columns(a, 0u); }
        case 1u: { return lane_columns(a, 1u); }
        case 2u: { return lane_columns(a, 2u); }
        case 3u: { return lane_columns(a, 3u); }
        case 4u: { return lane_columns(a, 4u); }
        case 5u: { return lane_columns(a, 5u); }
        case 6u: { return lane_columns(a, 6u); }
        default: { return lane_columns(a, 7u); }
    }
}

// Lane i's texels (and at 16 lanes lane i+8's) as the columns of block i. The lane must be a
// constant expression, hence the switches (see a_block).
fn lane_columns(a: array<vec4<f32>, 4>, i: u32) -> mat4x4<f32> {
    if (LANES == 8u) {
        switch (i) {
            case 0u: { return mat4x4<f32>(subgroupBroadcast(a[0], 0u), subgroupBroadcast(a[1], 0u), subgroupBroadcast(a[2], 0u), subgroupBroadcast(a[3], 0u)); }
            case 1u: { return mat4x4<f32>(subgroupBroadcast(a[0], 1u), subgroupBroadcast(a[1], 1u), subgroupBroadcast(a[2], 1u), subgroupBroadcast(a[3], 1u)); }
            case 2u: { return mat4x4<f32>(subgroupBroadcast(a[0], 2u), subgroupBroadcast(a[1], 2u), subgroupBroadcast(a[2], 2u), subgroupBroadcast(a[3], 2u)); }
            case 3u: { return mat4x4<f32>(subgroupBroadcast(a[0], 3u), subgroupBroadcast(a[1], 3u), subgroupBroadcast(a[2], 3u), subgroupBroadcast(a[3], 3u)); }
            case 4u: { return mat4x4<f32>(subgroupBroadcast(a[0], 4u), subgroupBroadcast(a[1], 4u), subgroupBroadcast(a[2], 4u), subgroupBroadcast(a[3], 4u)); }
            case 5u: { return mat4x4<f32>(subgroupBroadcast(a[0], 5u), subgroupBroadcast(a[1], 5u), subgroupBroadcast(a[2], 5u), subgroupBroadcast(a[3], 5u)); }
            case 6u: { return mat4x4<f32>(subgroupBroadcast(a[0], 6u), subgroupBroadcast(a[1], 6u), subgroupBroadcast(a[2], 6u), subgroupBroadcast(a[3], 6u)); }
            default: { return mat4x4<f32>(subgroupBroadcast(a[0], 7u), subgroupBroadcast(a[1], 7u), subgroupBroadcast(a[2], 7u), subgroupBroadcast(a[3], 7u)); }
        }
    }
    switch (i) {
        case 0u: { return mat4x4<f32>(subgroupBroadcast(a[0], 0u), subgroupBroadcast(a[1], 0u), subgroupBroadcast(a[0], 8u), subgroupBroadcast(a[1], 8u)); }
        case 1u: { return mat4x4<f32>(subgroupBroadcast(a[0], 1u), subgroupBroadcast(a[1], 1u), subgroupBroadcast(a[0], 9u), subgroupBroadcast(a[1], 9u)); }
        case 2u: { return mat4x4<f32>(subgroupBroadcast(a[0], 2u), subgroupBroadcast(a[1], 2u), subgroupBroadcast(a[0], 10u), subgroupBroadcast(a[1], 10u)); }
        case 3u: { return mat4x4<f32>(subgroupBroadcast(a[0], 3u), subgroupBroadcast(a[1], 3u), subgroupBroadcast(a[0], 11u), subgroupBroadcast(a[1], 11u)); }
        case 4u: { return mat4x4<f32>(subgroupBroadcast(a[0], 4u), subgroupBroadcast(a[1], 4u), subgroupBroadcast(a[0], 12u), subgroupBroadcast(a[1], 12u)); }
        case 5u: { return mat4x4<f32>(subgroupBroadcast(a[0], 5u), subgroupBroadcast(a[1], 5u), subgroupBroadcast(a[0], 13u), subgroupBroadcast(a[1], 13u)); }
        case 6u: { return mat4x4<f32>(subgroupBroadcast(a[0], 6u), subgroupBroadcast(a[1], 6u), subgroupBroadcast(a[0], 14u), subgroupBroadcast(a[1], 14u)); }
        default: { return mat4x4<f32>(subgroupBroadcast(a[0], 7u), subgroupBroadcast(a[1], 7u), subgroupBroadcast(a[0], 15u), subgroupBroadcast(a[1], 15u)); }
    }
}
