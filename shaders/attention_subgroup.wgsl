// The attention products with a workgroup of one subgroup per tile, as matmul_subgroup.
//
// Launcher: src/ops/attention.rs. Reference: src/reference/mod.rs (attention).
// Tests: tests/attention.rs.
//
// Appended to attention.wgsl (its parameters, bindings and helpers) and subgroup.wgsl; a family of
// its own because it needs subgroup operations. Used on devices whose image matmul is the subgroup
// kernel (`Gpu::subgroup_matmul`), for maps of at least 32 query rows (an encoder's: 197 × 197
// for a ViT-B/16).
//
// ---- attention_scores_subgroup: attention_scores_image with each texel fetched once per subgroup ----
//
// Why: in attention_scores_image each invocation owns an 8 × 8 block and fetches 4 texels of X
// and 4 of Y per step of 4 along d, 8 fetches per 256 multiply-adds, and the 8 lanes of a
// register fetch the same X texels. As in matmul_subgroup, here a workgroup is one subgroup of
// 8 invocations owning a 32 × 32 tile of the map: per step of 4 along d, lane l fetches X's texels
// for rows 8q + l (q = 0..3), which subgroupBroadcast hands to every lane, and Y's for its own 4
// columns: 8 fetches per 512 multiply-adds. A tile of 32 columns leaves less of a 197-key row idle
// than 64 (224 cells computed against 256).
//
// Each cell is the same sum in the same order as in attention_scores (one d at a time, the
// `outer` products added in turn), so the kernels give the same bits; rows and columns past the
// edge read the last token and are never stored. The store is store_map's, a vec4 per row of a
// lane's 4 columns, so the map's padding gets what the other kernels give it (the softmax then
// zeroes it).

@compute @workgroup_size(8, 1, 1)
fn attention_scores_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    // The workgroup's tile: 32 rows by 32 columns of one (batch, head)'s map. The whole workgroup
    // is one subgroup, so this exit is uniform across it.
    let tile = locate_sized_block(group_index(wid, nwg), p.tq, p.tk, 32u, 32u);
    if (!tile.valid) {
        return;
    }
    let bh = tile.bh;
    let r0 = tile.r0;
    let c0 = tile.c0 + 4u * lane;
    let b = tile.b;
    let h = tile.h;
    let xt = (p.x_off + h * p.hd) / 4u;
    let yt = (p.y_off + h * p.hd) / 4u;
    // Image rows: X's that this lane fetches (rows r0 + 8q + lane), Y's of its own columns.
    let last = p.tq - 1u;
    let xrow = b * p.tq + min(vec4<u32>(r0 + lane, r0 + 8u + lane, r0 + 16u + lane, r0 + 24u + lane), vec4<u32>(last));
    let yr = seq_rows(b, p.tk, c0);
    // Block i: rows r0 + 4i .. r0 + 4i + 3 of this lane's columns (m[j][i'] = cell (row i', col j)).
    var acc: array<mat4x4<f32>, 8>;
    for (var dt = 0u; dt < p.hd / 4u; dt++) {
        // y[dd] = Y(c0 .. c0+3, 4dt + dd); a[q] = X(r0 + 8q + lane, 4dt .. 4dt+3).
        let y = transpose(seq_texels(seq_y, yt + dt, yr));
        let a = seq_texels(seq_x, xt + dt, xrow);
        // x[dd] of block i = X(r0 + 4i .. +3, 4dt + dd): rows 4i .. 4i+3 are lanes 0-3 (i even)
        // or 4-7 (i odd) of a[i / 2].
        add_terms(&acc, 0u, transpose(lanes_0_3(a[0])), y);
        add_terms(&acc, 1u, transpose(lanes_4_7(a[0])), y);
        add_terms(&acc, 2u, transpose(lanes_0_3(a[1])), y);
        add_terms(&acc, 3u, transpose(lanes_4_7(a[1])), y);
        add_terms(&acc, 4u, transpose(lanes_0_3(a[2])), y);
        add_terms(&acc, 5u, transpose(lanes_4_7(a[2])), y);
        add_terms(&acc, 6u, transpose(lanes_0_3(a[3])), y);
        add_terms(&acc, 7u, transpose(lanes_4_7(a[3])), y);
    }
    let base = bh * p.tq * p.row;
    store_map(base, r0, c0, acc[0]);
    store_map(base, r0 + 4u, c0, acc[1]);
    store_map(base, r0 + 8u, c0, acc[2]);
    store_map(base, r0 + 12u, c0, acc[3]);
    store_map(base, r0 + 16u, c0, acc[4]);
    store_map(base, r0 + 20u, c0, acc[5]);
    store_map(base, r0 + 24u, c0, acc[6]);
    store_map(base, r0 + 28u, c0, acc[7]);
}

// Block i += Σ_dd outer(x[dd], y[dd]), one d at a time as products_image adds them. i is a
// constant once inlined (a block indexed at run time would move to memory).
fn add_terms(acc: ptr<function, array<mat4x4<f32>, 8>>, i: u32, x: mat4x4<f32>, y: mat4x4<f32>) {
    (*acc)[i] += outer(x[0], y[0]);
    (*acc)[i] += outer(x[1], y[1]);
    (*acc)[i] += outer(x[2], y[2]);
    (*acc)[i] += outer(x[3], y[3]);
}

// ---- attention_apply_subgroup: attention_apply_image (O = P V) with a tile per subgroup ----
//
// attention_apply_image gives each invocation 8 rows × 16 columns: per cell of the map, 2 map
// values and 4 texels of Z per 128 multiply-adds, the 8 lanes of a register loading the same map
// cells. Here a workgroup of 8 owns 32 rows × 64 columns of the output (a ViT-B head's whole
// width): per 4 cells of the map, lane l loads the cells of rows 8q + l (q = 0..3, a vec4 each
// from the map's buffer, handed to every lane by subgroupBroadcast) and fetches Z's texels for its
// two groups of 4 columns (l and 8 + l among the tile's 16), 12 loads per 1,024 multiply-adds.
// The terms are added one map cell at a time in attention_apply_image's order (the padding's
// zeros adding nothing), so the kernels give the same bits.

@compute @workgroup_size(8, 1, 1)
fn attention_apply_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    // The workgroup's tile: 32 rows by 64 columns of one (batch, head)'s output.
    let tile = locate_sized_block(group_index(wid, nwg), p.tq, p.hd, 32u, 64u);
    if (!tile.valid) {
        return;
    }
    let bh = tile.bh;
    let r0 = tile.r0;
    let c0 = tile.c0 + 4u * lane;
    let b = tile.b;
    let h = tile.h;
    // Z's texels of this lane's columns c0 .. c0+3 and c0+32 .. c0+35, clamped to the head's last.
    let tz = (p.x_off + h * p.hd) / 4u;
    let tl = p.hd / 4u - 1u;
    let tx = vec2<i32>(i32(tz + min(c0 / 4u, tl)), i32(tz + min(c0 / 4u + 8u, tl)));
    let zrow = b * p.tk;
    let last_z = zrow + p.tk - 1u;
    // The map rows this lane loads (rows r0 + 8q + lane, clamped to the last), in vec4s.
    let n4 = p.row / 4u;
    let last = p.tq - 1u;
    let ra = bh * p.tq * n4 + min(vec4<u32>(r0 + lane, r0 + 8u + lane, r0 + 16u + lane, r0 + 24u + lane), vec4<u32>(last)) * n4;
    var acc: array<mat4x4<f32>, 8>;
    var acd: array<mat4x4<f32>, 8>;
    for (var c4 = 0u; c4 < (p.tk + 3u) / 4u; c4++) {
        // a[q] = P(r0 + 8q + lane, 4·c4 .. 4·c4 + 3); zm[jj] (zn[jj]) = Z(4·c4 + jj, this lane's
        // first (second) four columns).
        let a = mat4x4<f32>(aw4[ra.x + c4], aw4[ra.y + c4], aw4[ra.z + c4], aw4[ra.w + c4]);
        let z = zrow + 4u * c4;
        let zr = vec4<i32>(vec4<u32>(z, min(z + 1u, last_z), min(z + 2u, last_z), min(z + 3u, last_z)));
        let zm = mat4x4<f32>(textureLoad(seq_x, vec2<i32>(tx.x, zr.x)), textureLoad(seq_x, vec2<i32>(tx.x, zr.y)),
            textureLoad(seq_x, vec2<i32>(tx.x, zr.z)), textureLoad(seq_x, vec2<i32>(tx.x, zr.w)));
        let zn = mat4x4<f32>(textureLoad(seq_x, vec2<i32>(tx.y, zr.x)), textureLoad(seq_x, vec2<i32>(tx.y, zr.y)),
            textureLoad(seq_x, vec2<i32>(tx.y, zr.z)), textureLoad(seq_x, vec2<i32>(tx.y, zr.w)));
        // Block i's rows 4i .. 4i+3 are lanes 0-3 (i even) or 4-7 (i odd) of a[i / 2]; row jj of
        // the transpose holds their cells 4·c4 + jj.
        apply_cells(&acc, &acd, 0u, transpose(lanes_0_3(a[0])), zm, zn);
        apply_cells(&acc, &acd, 1u, transpose(lanes_4_7(a[0])), zm, zn);
        apply_cells(&acc, &acd, 2u, transpose(lanes_0_3(a[1])), zm, zn);
        apply_cells(&acc, &acd, 3u, transpose(lanes_4_7(a[1])), zm, zn);
        apply_cells(&acc, &acd, 4u, transpose(lanes_0_3(a[2])), zm, zn);
        apply_cells(&acc, &acd, 5u, transpose(lanes_4_7(a[2])), zm, zn);
        apply_cells(&acc, &acd, 6u, transpose(lanes_0_3(a[3])), zm, zn);
        apply_cells(&acc, &acd, 7u, transpose(lanes_4_7(a[3])), zm, zn);
    }
    store_out4(b, h, p.tq, r0, c0, acc[0]);
    store_out4(b, h, p.tq, r0 + 4u, c0, acc[1]);
    store_out4(b, h, p.tq, r0 + 8u, c0, acc[2]);
    store_out4(b, h, p.tq, r0 + 12u, c0, acc[3]);
    store_out4(b, h, p.tq, r0 + 16u, c0, acc[4]);
    store_out4(b, h, p.tq, r0 + 20u, c0, acc[5]);
    store_out4(b, h, p.tq, r0 + 24u, c0, acc[6]);
    store_out4(b, h, p.tq, r0 + 28u, c0, acc[7]);
    store_out4(b, h, p.tq, r0, c0 + 32u, acd[0]);
    store_out4(b, h, p.tq, r0 + 4u, c0 + 32u, acd[1]);
    store_out4(b, h, p.tq, r0 + 8u, c0 + 32u, acd[2]);
    store_out4(b, h, p.tq, r0 + 12u, c0 + 32u, acd[3]);
    store_out4(b, h, p.tq, r0 + 16u, c0 + 32u, acd[4]);
    store_out4(b, h, p.tq, r0 + 20u, c0 + 32u, acd[5]);
    store_out4(b, h, p.tq, r0 + 24u, c0 + 32u, acd[6]);
    store_out4(b, h, p.tq, r0 + 28u, c0 + 32u, acd[7]);
}

// Block i of both column groups += the four map cells' terms, one cell at a time (w[jj]: the
// block's rows at cell jj; zm[jj], zn[jj]: Z's row for that cell). i is a constant once inlined.
fn apply_cells(acc: ptr<function, array<mat4x4<f32>, 8>>, acd: ptr<function, array<mat4x4<f32>, 8>>,
    i: u32, w: mat4x4<f32>, zm: mat4x4<f32>, zn: mat4x4<f32>) {
    (*acc)[i] += outer(w[0], zm[0]);
    (*acd)[i] += outer(w[0], zn[0]);
    (*acc)[i] += outer(w[1], zm[1]);
    (*acd)[i] += outer(w[1], zn[1]);
    (*acc)[i] += outer(w[2], zm[2]);
    (*acd)[i] += outer(w[2], zn[2]);
    (*acc)[i] += outer(w[3], zm[3]);
    (*acd)[i] += outer(w[3], zn[3]);
}
