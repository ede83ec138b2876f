// Batched, strided matrix multiply: C = alpha * op(A) op(B) (+ bias) (+ C if accumulating).
//
// Every operand is addressed through strides, so a transposed operand is just swapped strides and a
// head-split [B, T, H, D] activation is a batch of matrices: backward passes and attention need no
// materialised transposes or permutes.
//
// Tiling: a workgroup of 16 x 4 invocations computes a 16-row x 64-column tile; each invocation
// holds a 4 x 4 block of accumulators in registers: rows 4*ly .. 4*ly+3 and columns lx + 16*j.
// Neighbouring invocations (along x) read neighbouring columns of B, so loads of B coalesce on GPUs
// and become vector loads on CPU rasterisers (lavapipe runs 8 invocations per SIMD register);
// invocations that share a row read the same A element (a broadcast). No workgroup memory and no
// barriers: caches supply the reuse, and barriers are very slow on lavapipe.
//
// Launcher: src/ops/matmul.rs. Reference: src/reference/mod.rs (matmul).
// Tests: tests/matmul.rs.

struct Params {
    m: u32, n: u32, k: u32, batch2: u32,
    batch: u32, tiles_m: u32, tiles_n: u32, alpha: f32,
    a_off: u32, a_rs: u32, a_cs: u32, a_bs1: u32,       // A(m, k) = a_off + m*a_rs + k*a_cs + batch offsets
    a_bs2: u32, b_off: u32, b_rs: u32, b_cs: u32,       // B(k, n) = b_off + k*b_rs + n*b_cs + batch offsets
    b_bs1: u32, b_bs2: u32, c_off: u32, c_rs: u32,      // C(m, n) = c_off + m*c_rs + n*c_cs + batch offsets
    c_cs: u32, c_bs1: u32, c_bs2: u32,
    group_tiles: u32,                                   // tiles per workgroup (matmul_subgroup)
}

// How the products reach C, fixed per pipeline (src/ops/matmul.rs builds one for each): BIAS adds
// bias[n], ACCUMULATE adds what C held. Constants rather than flags in Params because lavapipe runs
// both sides of every branch, masked, and a load in a masked branch still loops over the 8 lanes of
// a register: tested per element of C, the two flags cost two such loops per element even when
// unset, about a third of a 2080 x 128 x 128 product. The bias is read once per column instead.
override BIAS: bool = false;
override ACCUMULATE: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;
@group(0) @binding(5) var<storage, read> a4: array<vec4<f32>>;

// ---- half-precision section: B's storage in f32 (src/ops/mod.rs puts shaders/matmul_f16b.wgsl
// here instead for the families that read f16 weights) ----
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(6) var<storage, read> b4: array<vec4<f32>>;

// Element i of B's binding.
fn b_at(i: u32) -> f32 {
    return b[i];
}

// Elements 4i .. 4i+3 of B's binding.
fn b4_at(i: u32) -> vec4<f32> {
    return b4[i];
}

// B's image (see matmul_image): binding 6, or 7 in the subgroup kernels, whose binding 6 is A's
// (sg_b_image is declared here though only matmul_subgroup.wgsl reads it, so that one section
// holds every form in which B is stored).
@group(0) @binding(6) var b_image: texture_storage_2d<rgba32float, read>;
@group(0) @binding(7) var sg_b_image: texture_storage_2d<rgba32float, read>;
// ---- end of the half-precision section ----

// Texel (x, y) of B's image, widened to f32 whatever its format.
fn b_texel(x: u32, y: u32) -> vec4<f32> {
    return textureLoad(b_image, vec2<i32>(i32(x), i32(y)));
}

// Texel (x, y) of the subgroup kernels' B image.
fn sg_b_texel(x: u32, y: u32) -> vec4<f32> {
    return textureLoad(sg_b_image, vec2<i32>(i32(x), i32(y)));
}

// Where workgroup g's tile of C lies: its batch matrix (b1, b2) and its first row and column.
// Tiles are numbered batch-major, then row-major; `valid` is false for the spare workgroups of a
// 2-D dispatch grid.
struct Tile {
    valid: bool,
    b1: u32,
    b2: u32,
    row: u32,
    col: u32,
}

fn locate_tile(g: u32, tile_rows: u32, tile_cols: u32) -> Tile {
    let tiles = p.tiles_m * p.tiles_n;
    let bi = g / tiles;
    let t = g % tiles;
    return Tile(g < tiles * p.batch, bi / p.batch2, bi % p.batch2, (t / p.tiles_n) * tile_rows, (t % p.tiles_n) * tile_cols);
}

const TM: u32 = 4u;
const TN: u32 = 4u;
const WX: u32 = 16u;
const WY: u32 = 4u;

@compute @workgroup_size(16, 4, 1)
fn matmul(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let tile = locate_tile(group_index(wid, nwg), WY * TM, WX * TN);
    if (!tile.valid) {
        return;
    }
    let row0 = tile.row + lid.y * TM;
    let col0 = tile.col + lid.x;
    let b1 = tile.b1;
    let b2 = tile.b2;

    // Out-of-range rows and columns read the last valid one (no branches in the inner loop) and are
    // discarded at the store.
    let abase = p.a_off + b1 * p.a_bs1 + b2 * p.a_bs2;
    let last_m = p.m - 1u;
    var a0 = abase + min(row0, last_m) * p.a_rs;
    var a1 = abase + min(row0 + 1u, last_m) * p.a_rs;
    var a2 = abase + min(row0 + 2u, last_m) * p.a_rs;
    var a3 = abase + min(row0 + 3u, last_m) * p.a_rs;
    let bbase = p.b_off + b1 * p.b_bs1 + b2 * p.b_bs2;
    let last_n = p.n - 1u;
    var b0 = bbase + min(col0, last_n) * p.b_cs;
    var b1_ = bbase + min(col0 + WX, last_n) * p.b_cs;
    var b2_ = bbase + min(col0 + 2u * WX, last_n) * p.b_cs;
    var b3 = bbase + min(col0 + 3u * WX, last_n) * p.b_cs;
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    for (var kk = 0u; kk < p.k; kk++) {
        let bv = vec4<f32>(b_at(b0), b_at(b1_), b_at(b2_), b_at(b3));
        acc0 = fma(vec4<f32>(a[a0]), bv, acc0);
        acc1 = fma(vec4<f32>(a[a1]), bv, acc1);
        acc2 = fma(vec4<f32>(a[a2]), bv, acc2);
        acc3 = fma(vec4<f32>(a[a3]), bv, acc3);
        a0 += p.a_cs;
        a1 += p.a_cs;
        a2 += p.a_cs;
        a3 += p.a_cs;
        b0 += p.b_rs;
        b1_ += p.b_rs;
        b2_ += p.b_rs;
        b3 += p.b_rs;
    }
    let c0 = c_matrix(b1, b2);
    let bv = column_bias(col0, WX);
    store_row(c0, row0, col0, acc0, WX, bv);
    store_row(c0, row0 + 1u, col0, acc1, WX, bv);
    store_row(c0, row0 + 2u, col0, acc2, WX, bv);
    store_row(c0, row0 + 3u, col0, acc3, WX, bv);
}

// bias[col0 + j*step] for j < 4, or zero without BIAS. Columns past N read the last column's
// (they are never stored).
fn column_bias(col0: u32, step: u32) -> vec4<f32> {
    if (!BIAS) {
        return vec4<f32>();
    }
    let last = p.n - 1u;
    return vec4<f32>(bias[min(col0, last)], bias[min(col0 + step, last)],
        bias[min(col0 + 2u * step, last)], bias[min(col0 + 3u * step, last)]);
}

// Stores alpha * v[j] (+ bv[j]) (+ C's value) at column col0 + j*step of row r, skipping what lies
// outside C. Written out per column: a vector indexed in a loop would move to memory.
fn store_row(c0: u32, r: u32, col0: u32, v: vec4<f32>, step: u32, bv: vec4<f32>) {
    let row = c0 + r * p.c_rs;
    let inside = r < p.m;
    store_one(row, inside, col0, v.x, bv.x);
    store_one(row, inside, col0 + step, v.y, bv.y);
    store_one(row, inside, col0 + 2u * step, v.z, bv.z);
    store_one(row, inside, col0 + 3u * step, v.w, bv.w);
}

fn store_one(row: u32, inside: bool, col: u32, v: f32, b: f32) {
    if (inside && col < p.n) {
        var x = p.alpha * v;
        if (BIAS) {
            x += b;
        }
        let ci = row + col * p.c_cs;
        if (ACCUMULATE) {
            x += c[ci];
        }
        c[ci] = x;
    }
}

// ---- matmul_vec4: the fast path, used when the launcher finds 16-byte-aligned operands ----
//
// Each invocation owns a 16 x 8 block of C as eight 4 x 4 blocks, and walks k in steps of 4,
// loading 4 x 4 blocks of A (four) and of B (two) with four vec4 loads each: 24 vec4 loads per
// 512 FMAs. A workgroup of 8 x 4 invocations covers a 64 x 64 tile of C.
// Why this shape: lavapipe runs 8 invocations per SIMD register and turns a load whose address
// differs between them into a gather, while the 8 invocations of a row (same lid.y) load the same
// A block, which is cheap. So the block is tall: 4 A blocks shared by the row, 2 B blocks per
// invocation. Measured on lavapipe (2 cores, 512³): 8 x 8 blocks gave 15-19 GFLOP/s, 16 x 8 gives
// 20-25, 32 x 8 about 26 but needs 256 accumulators per invocation, beyond what GPUs keep in
// registers. On GPUs, 128 accumulators and shared A loads per warp are the usual register
// blocking, and neighbouring invocations read neighbouring vec4s of B, so loads coalesce.
// A block is read along whichever of its axes is contiguous in memory (overrides A_ALONG_K and
// B_ALONG_N); a vec4 is four registers on GPUs and four SIMD registers on lavapipe, so the
// transposes cost nothing. Rows and columns past the edge read neighbouring memory (bounded by
// WGSL's robust buffer access) and are never stored; K's remainder (K mod 4) runs through the
// scalar bindings.

override A_ALONG_K: bool = true;   // A(m, k..k+3) contiguous; otherwise A(m..m+3, k)
override B_ALONG_N: bool = true;   // B(k, n..n+3) contiguous; otherwise B(k..k+3, n)

@compute @workgroup_size(8, 4, 1)
fn matmul_vec4(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let o = block_origin(wid, nwg, lid);
    if (!o.valid) {
        return;
    }
    let r4 = 4u * p.a_rs;
    var acc: Block;
    let k4 = p.k & ~3u;
    for (var k = 0u; k < k4; k += 4u) {
        block_fma(&acc, load_a(o.a, k), load_a(o.a + r4, k), load_a(o.a + 2u * r4, k),
            load_a(o.a + 3u * r4, k), load_b(o.b, k), load_b(o.b + 4u * p.b_cs, k));
    }
    block_finish(&acc, o, k4);
}

// The 16 x 8 block of C that an invocation of matmul_vec4 or matmul_image owns, as eight 4 x 4
// blocks: block 2i + j holds rows 4i .. 4i+3 and columns 4j .. 4j+3 of it.
alias Block = array<mat4x4<f32>, 8>;

// Where an invocation's block lies: C's row and column, A's element at its first row (k = 0) and
// B's at its first column, and its batch matrix (b1, b2); `valid` as in Tile.
struct Origin {
    valid: bool,
    row: u32,
    col: u32,
    a: u32,
    b: u32,
    b1: u32,
    b2: u32,
}

fn block_origin(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> Origin {
    let tile = locate_tile(group_index(wid, nwg), 64u, 64u);
    let row = tile.row + lid.y * 16u;
    let col = tile.col + lid.x * 8u;
    return Origin(tile.valid, row, col, a_row(tile, row), b_column(tile, col), tile.b1, tile.b2);
}

// A's element at (row, k = 0) and B's at (k = 0, col) of a tile's batch matrix.
fn a_row(tile: Tile, row: u32) -> u32 {
    return p.a_off + tile.b1 * p.a_bs1 + tile.b2 * p.a_bs2 + row * p.a_rs;
}

fn b_column(tile: Tile, col: u32) -> u32 {
    return p.b_off + tile.b1 * p.b_bs1 + tile.b2 * p.b_bs2 + col * p.b_cs;
}

// C's element (0, 0) of batch matrix (b1, b2).
fn c_matrix(b1: u32, b2: u32) -> u32 {
    return p.c_off + b1 * p.c_bs1 + b2 * p.c_bs2;
}

// One step of 4 along K: block 2i + j += a_i · b_j, for A's four row blocks and B's two column
// blocks as math matrices (A's: row i, column kk; B's: row kk, column j).
fn block_fma(acc: ptr<function, Block>, a0: mat4x4<f32>, a1: mat4x4<f32>, a2: mat4x4<f32>,
    a3: mat4x4<f32>, b0: mat4x4<f32>, b1: mat4x4<f32>) {
    (*acc)[0] = mad(a0, b0, (*acc)[0]);
    (*acc)[1] = mad(a0, b1, (*acc)[1]);
    (*acc)[2] = mad(a1, b0, (*acc)[2]);
    (*acc)[3] = mad(a1, b1, (*acc)[3]);
    (*acc)[4] = mad(a2, b0, (*acc)[4]);
    (*acc)[5] = mad(a2, b1, (*acc)[5]);
    (*acc)[6] = mad(a3, b0, (*acc)[6]);
    (*acc)[7] = mad(a3, b1, (*acc)[7]);
}

// acc + a · b as multiply-adds (fma) in a fixed order: acc + a(·,0) b(0,·), then + a(·,1) b(1,·),
// and so on. Written out rather than as `acc += a * b`, because how a compiler contracts a matrix
// product's multiplies and adds depends on the code around it (lavapipe's differed between a
// kernel that loads A and one that receives it from another lane). An fma is one operation
// wherever it appears, so every kernel built on this adds the same terms to the same bits; a GPU
// fuses it (one rounding per term), lavapipe computes it as a multiply and an add.
fn mad(a: mat4x4<f32>, b: mat4x4<f32>, acc: mat4x4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(column_mad(a, b[0], acc[0]), column_mad(a, b[1], acc[1]),
        column_mad(a, b[2], acc[2]), column_mad(a, b[3], acc[3]));
}

// c + a · v: column c of acc plus a times column v of b.
fn column_mad(a: mat4x4<f32>, v: vec4<f32>, c: vec4<f32>) -> vec4<f32> {
    return fma(a[3], vec4<f32>(v.w), fma(a[2], vec4<f32>(v.z), fma(a[1], vec4<f32>(v.y),
        fma(a[0], vec4<f32>(v.x), c))));
}

// K's remainder (k4 .. K) through the scalar bindings, then the block's store into C.
fn block_finish(acc: ptr<function, Block>, o: Origin, k4: u32) {
    let r4 = 4u * p.a_rs;
    for (var k = k4; k < p.k; k++) {
        let bv0 = b_row(o.b, k);
        let bv1 = b_row(o.b + 4u * p.b_cs, k);
        let av0 = a_column(o.a, k);
        let av1 = a_column(o.a + r4, k);
        let av2 = a_column(o.a + 2u * r4, k);
        let av3 = a_column(o.a + 3u * r4, k);
        (*acc)[0] = mad_outer(av0, bv0, (*acc)[0]);
        (*acc)[1] = mad_outer(av0, bv1, (*acc)[1]);
        (*acc)[2] = mad_outer(av1, bv0, (*acc)[2]);
        (*acc)[3] = mad_outer(av1, bv1, (*acc)[3]);
        (*acc)[4] = mad_outer(av2, bv0, (*acc)[4]);
        (*acc)[5] = mad_outer(av2, bv1, (*acc)[5]);
        (*acc)[6] = mad_outer(av3, bv0, (*acc)[6]);
        (*acc)[7] = mad_outer(av3, bv1, (*acc)[7]);
    }
    let c0 = c_matrix(o.b1, o.b2);
    let bv0 = column_bias(o.col, 1u);
    let bv1 = column_bias(o.col + 4u, 1u);
    store_block(c0, o.row, o.col, (*acc)[0], 1u, bv0);
    store_block(c0, o.row, o.col + 4u, (*acc)[1], 1u, bv1);
    store_block(c0, o.row + 4u, o.col, (*acc)[2], 1u, bv0);
    store_block(c0, o.row + 4u, o.col + 4u, (*acc)[3], 1u, bv1);
    store_block(c0, o.row + 8u, o.col, (*acc)[4], 1u, bv0);
    store_block(c0, o.row + 8u, o.col + 4u, (*acc)[5], 1u, bv1);
    store_block(c0, o.row + 12u, o.col, (*acc)[6], 1u, bv0);
    store_block(c0, o.row + 12u, o.col + 4u, (*acc)[7], 1u, bv1);
}

// Math matrix (row i, column kk) = A(row i of the block at base, k + kk).
fn load_a(base: u32, k: u32) -> mat4x4<f32> {
    if (A_ALONG_K) {
        let o = (base + k) / 4u;
        let s = p.a_rs / 4u;
        return transpose(mat4x4<f32>(a4[o], a4[o + s], a4[o + 2u * s], a4[o + 3u * s]));
    }
    let o = (base + k * p.a_cs) / 4u;
    let s = p.a_cs / 4u;
    return mat4x4<f32>(a4[o], a4[o + s], a4[o + 2u * s], a4[o + 3u * s]);
}

// Math matrix (row kk, column j) = B(k + kk, column j of the block at base).
fn load_b(base: u32, k: u32) -> mat4x4<f32> {
    if (B_ALONG_N) {
        let o = (base + k * p.b_rs) / 4u;
        let s = p.b_rs / 4u;
        return transpose(mat4x4<f32>(b4_at(o), b4_at(o + s), b4_at(o + 2u * s), b4_at(o + 3u * s)));
    }
    let o = (base + k) / 4u;
    let s = p.b_cs / 4u;
    return mat4x4<f32>(b4_at(o), b4_at(o + s), b4_at(o + 2u * s), b4_at(o + 3u * s));
}

// A(rows 0..3 of the block at base, k), through the scalar binding.
fn a_column(base: u32, k: u32) -> vec4<f32> {
    let o = base + k * p.a_cs;
    return vec4<f32>(a[o], a[o + p.a_rs], a[o + 2u * p.a_rs], a[o + 3u * p.a_rs]);
}

// B(k, columns 0..3 of the block at base), through the scalar binding.
fn b_row(base: u32, k: u32) -> vec4<f32> {
    let o = base + k * p.b_rs;
    return vec4<f32>(b_at(o), b_at(o + p.b_cs), b_at(o + 2u * p.b_cs), b_at(o + 3u * p.b_cs));
}

// acc + u vᵀ (element (i, j) plus u_i v_j), fused as in mad.
fn mad_outer(u: vec4<f32>, v: vec4<f32>, acc: mat4x4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(fma(u, vec4<f32>(v.x), acc[0]), fma(u, vec4<f32>(v.y), acc[1]),
        fma(u, vec4<f32>(v.z), acc[2]), fma(u, vec4<f32>(v.w), acc[3]));
}

// Stores a 4 x 4 block of C: math matrix (row i, column j) at (row + i, col + j*step), with the
// columns' bias bv (see store_row).
fn store_block(c0: u32, row: u32, col: u32, m: mat4x4<f32>, step: u32, bv: vec4<f32>) {
    let rows = transpose(m);
    store_row(c0, row, col, rows[0], step, bv);
    store_row(c0, row + 1u, col, rows[1], step, bv);
    store_row(c0, row + 2u, col, rows[2], step, bv);
    store_row(c0, row + 3u, col, rows[3], step, bv);
}

// ---- matmul_shared: matmul_vec4 with the tile's A and B staged in workgroup memory (GPUs) ----
//
// In matmul_vec4 each element of A's tile is loaded by the 8 invocations that share its rows and
// each of B's by the 4 that share its columns, from the device's caches. Here the workgroup loads
// its 64 x 64 tile's A and B once per chunk of 16 along K into workgroup memory, each invocation
// loading two 4 x 4 matrices of each, and every invocation then reads its blocks from there. The
// usual GPU tiling; on lavapipe workgroup memory and barriers are slow (ARCHITECTURE.md), so it is
// for GPUs and opt-in until measured on one (`Gpu::shared_matmul`). The same 16 x 8 blocks per
// invocation, each element the same fma chain in the same order (block_fma per step of 4, then
// the steps left after the last whole chunk, then block_finish's remainder), so its results are
// the same bits as matmul_vec4's.

// A's tile as 16 row blocks x 4 steps of K (matrix 4 * rq + kq: rows 4rq .., K 4kq ..), B's as
// 4 steps of K x 16 column blocks (matrix 16 * kq + cq).
var<workgroup> shared_a: array<mat4x4<f32>, 64>;
var<workgroup> shared_b: array<mat4x4<f32>, 64>;

@compute @workgroup_size(8, 4, 1)
fn matmul_shared(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    // The whole workgroup shares a tile, so this exit is uniform, as the barriers need.
    let tile = locate_tile(group_index(wid, nwg), 64u, 64u);
    if (!tile.valid) {
        return;
    }
    let o = block_origin(wid, nwg, lid);
    let ta = a_row(tile, tile.row);
    let tb = b_column(tile, tile.col);
    let r4 = 4u * p.a_rs;
    let c4 = 4u * p.b_cs;
    var acc: Block;
    let k16 = p.k & ~15u;
    for (var k = 0u; k < k16; k += 16u) {
        for (var e = 0u; e < 2u; e++) {
            let q = 2u * li + e;
            shared_a[q] = load_a(ta + (q / 4u) * r4, k + 4u * (q % 4u));
            shared_b[q] = load_b(tb + (q % 16u) * c4, k + 4u * (q / 16u));
        }
        workgroupBarrier();
        for (var kq = 0u; kq < 4u; kq++) {
            let ra = 16u * lid.y + kq;
            let cb = 16u * kq + 2u * lid.x;
            block_fma(&acc, shared_a[ra], shared_a[ra + 4u], shared_a[ra + 8u], shared_a[ra + 12u],
                shared_b[cb], shared_b[cb + 1u]);
        }
        workgroupBarrier();
    }
    let k4 = p.k & ~3u;
    for (var k = k16; k < k4; k += 4u) {
        block_fma(&acc, load_a(o.a, k), load_a(o.a + r4, k), load_a(o.a + 2u * r4, k),
            load_a(o.a + 3u * r4, k), load_b(o.b, k), load_b(o.b + c4, k));
    }
    block_finish(&acc, o, k4);
}

// ---- matmul_image: matmul_vec4 with A and B read from images (see src/gpu/image.rs) ----
//
// Used where texel fetches are cheaper than storage loads: on lavapipe a storage load runs once
// per invocation and component behind a branch, a texel fetch is one gather for the 8 invocations
// of a SIMD register. Same blocking as matmul_vec4 (a 16 x 8 block of C per invocation, a 64 x 64
// tile per workgroup). An operand's image holds the rows of its stored matrix from the view's
// offset on: row y at offset + y * pitch, where the pitch is the stride of the axis that is not
// contiguous, and texel x holds elements 4x .. 4x + 3 along the contiguous one. Batch b starts at
// image row (b1 * bs1 + b2 * bs2) / pitch (the launcher checks that this divides). K's remainder
// (K mod 4) runs through the scalar bindings, as in matmul_vec4.

@group(0) @binding(5) var a_image: texture_storage_2d<rgba32float, read>;

@compute @workgroup_size(8, 4, 1)
fn matmul_image(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let o = block_origin(wid, nwg, lid);
    if (!o.valid) {
        return;
    }
    let ay = (o.b1 * p.a_bs1 + o.b2 * p.a_bs2) / select(p.a_cs, p.a_rs, A_ALONG_K);
    let by = (o.b1 * p.b_bs1 + o.b2 * p.b_bs2) / select(p.b_cs, p.b_rs, B_ALONG_N);
    var acc: Block;
    let k4 = p.k & ~3u;
    for (var k = 0u; k < k4; k += 4u) {
        block_fma(&acc, image_a(ay, o.row, k), image_a(ay, o.row + 4u, k),
            image_a(ay, o.row + 8u, k), image_a(ay, o.row + 12u, k), image_b(by, o.col, k),
            image_b(by, o.col + 4u, k));
    }
    block_finish(&acc, o, k4);
}

// Texels (x, y .. y+3) of an image: four texels down one column, as a matrix's columns.
fn texels(image: texture_storage_2d<rgba32float, read>, x: u32, y: u32) -> mat4x4<f32> {
    return mat4x4<f32>(
        textureLoad(image, vec2<i32>(i32(x), i32(y))),
        textureLoad(image, vec2<i32>(i32(x), i32(y + 1u))),
        textureLoad(image, vec2<i32>(i32(x), i32(y + 2u))),
        textureLoad(image, vec2<i32>(i32(x), i32(y + 3u))),
    );
}

// Texels (x, y .. y+3) of B's image, as texels() reads them.
fn b_texels(x: u32, y: u32) -> mat4x4<f32> {
    return mat4x4<f32>(b_texel(x, y), b_texel(x, y + 1u), b_texel(x, y + 2u), b_texel(x, y + 3u));
}

// Math matrix (row i, column kk) = A(row + i, k + kk), A's batch starting at image row y0.
fn image_a(y0: u32, row: u32, k: u32) -> mat4x4<f32> {
    if (A_ALONG_K) {
        // Image row = A's row; texel k/4 holds A(row, k..k+3), a row of the math matrix.
        return transpose(texels(a_image, k / 4u, y0 + row));
    }
    // Image row = k; texel row/4 holds A(row..row+3, k), a column of the math matrix.
    return texels(a_image, row / 4u, y0 + k);
}

// Math matrix (row kk, column j) = B(k + kk, col + j), B's batch starting at image row y0.
fn image_b(y0: u32, col: u32, k: u32) -> mat4x4<f32> {
    if (B_ALONG_N) {
        // Image row = k; texel col/4 holds B(k, col..col+3), a row of the math matrix.
        return transpose(b_texels(col / 4u, y0 + k));
    }
    // Image row = B's column; texel k/4 holds B(k..k+3, col), a column of the math matrix.
    return b_texels(k / 4u, y0 + col);
}

// ---- matmul_rows: products of a few rows (m <= 4), as generating one token at a time makes ----
//
// The tiled kernels give each invocation 4 or 16 rows of C and each workgroup 16 to 64, so a
// product of one row computes (and loads B for) rows that do not exist. Such a product costs the
// reading of B, each element used m times: here each invocation owns 4 columns of C for all m rows
// and walks K in steps of 4 with vec4 loads, so each element of B is loaded once. B_ALONG_N (as
// above): B(k, n) contiguous along n (GPT-2's Conv1D weights), 4 rows of 4 columns per step;
// otherwise along k (nn.Linear weights, the tied LM head): 4 columns of 4 rows, each reduced with a
// dot product. (A_ALONG_K is not read: A is always contiguous along k here.) ROWS = m is a
// constant per pipeline, and every accumulator a named variable: a loop over a runtime m, or an
// array indexed in one, keeps the accumulators in memory on lavapipe (measured 20 times slower).
override ROWS: u32 = 1u;

// One step of 4 along K for one row: `av` = A(r, k..k+3), b0..b3 = B's 4 x 4 block (rows k..k+3
// when B runs along n, columns when along k).
fn rows_step(acc: vec4<f32>, av: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>) -> vec4<f32> {
    if (B_ALONG_N) {
        return fma(vec4<f32>(av.w), b3, fma(vec4<f32>(av.z), b2, fma(vec4<f32>(av.y), b1, fma(vec4<f32>(av.x), b0, acc))));
    }
    return acc + vec4<f32>(dot(av, b0), dot(av, b1), dot(av, b2), dot(av, b3));
}

@compute @workgroup_size(64)
fn matmul_rows(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // Workgroups are numbered chunk-major: tiles_n of them cover the columns of one chunk of K
    // (the batch index b1; see `Gemm::record_few_rows`).
    let g = group_index(wid, nwg);
    let chunk = g / p.tiles_n;
    let col = 4u * ((g % p.tiles_n) * 64u + lid);
    if (col >= p.n || chunk >= p.batch) {
        return;
    }
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    let last = p.n - 1u;
    let a0 = (p.a_off + chunk * p.a_bs1) / 4u;
    let ars = p.a_rs / 4u;
    let b_off = p.b_off + chunk * p.b_bs1;
    for (var k = 0u; k < p.k; k += 4u) {
        var b0: vec4<f32>;
        var b1: vec4<f32>;
        var b2: vec4<f32>;
        var b3: vec4<f32>;
        if (B_ALONG_N) {
            let at = (b_off + k * p.b_rs + col) / 4u;
            let rs = p.b_rs / 4u;
            b0 = b4_at(at);
            b1 = b4_at(at + rs);
            b2 = b4_at(at + 2u * rs);
            b3 = b4_at(at + 3u * rs);
        } else {
            // Columns past n read the last one; they are not stored.
            let at = (b_off + k) / 4u;
            let cs = p.b_cs / 4u;
            b0 = b4_at(at + col * cs);
            b1 = b4_at(at + min(col + 1u, last) * cs);
            b2 = b4_at(at + min(col + 2u, last) * cs);
            b3 = b4_at(at + min(col + 3u, last) * cs);
        }
        let ak = a0 + k / 4u;
        acc0 = rows_step(acc0, a4[ak], b0, b1, b2, b3);
        if (ROWS > 1u) {
            acc1 = rows_step(acc1, a4[ak + ars], b0, b1, b2, b3);
        }
        if (ROWS > 2u) {
            acc2 = rows_step(acc2, a4[ak + 2u * ars], b0, b1, b2, b3);
        }
        if (ROWS > 3u) {
            acc3 = rows_step(acc3, a4[ak + 3u * ars], b0, b1, b2, b3);
        }
    }
    let bv = column_bias(col, 1u);
    let c0 = p.c_off + chunk * p.c_bs1;
    store_row(c0, 0u, col, acc0, 1u, bv);
    if (ROWS > 1u) {
        store_row(c0, 1u, col, acc1, 1u, bv);
    }
    if (ROWS > 2u) {
        store_row(c0, 2u, col, acc2, 1u, bv);
    }
    if (ROWS > 3u) {
        store_row(c0, 3u, col, acc3, 1u, bv);
    }
}

// ---- matmul_rows_image: matmul_rows with B read from an image it keeps (CPU adapters) ----
//
// Generating a token reads every weight of the decoder once, a few rows of A against all of B, so
// the product runs at the speed B is loaded. On lavapipe a storage load loops over the 8 lanes of
// a register (see matmul_image) while a texel fetch gathers 4 floats for all 8 at once; a probe at
// 1 x 32768 x 768 read B at 2 GB/s from a buffer and 13 GB/s from an image, where PyTorch's mv
// reads at 13 (docs/perf-notes.md). The image is made once per weight and kept while the weights
// stay fixed (`Gpu::hold_images`), since copying B into an image costs more than reading it.
// Each invocation owns 8 columns of C for all ROWS rows (two vec4s per row: 4 x 4 blocks of B
// fetched as two texel columns per step of 4 along K); the sums are matmul_rows' (`rows_step`),
// added in the same order. Image rows: K when B runs along n, else B's columns (n).
// Workgroups of 16 (128 columns each): half as many workgroups as with 8, and lavapipe's cost per
// workgroup is what the difference measured. The LM head's half (1 x 25129 x 768) took 3.5-3.9 ms
// against 5.6-5.7, at 256-bit registers as at 512; 32 was no faster than 16.
const ROWS_IMAGE_INVOCATIONS = 16u;
@compute @workgroup_size(ROWS_IMAGE_INVOCATIONS)
fn matmul_rows_image(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let col = 8u * (group_index(wid, nwg) * ROWS_IMAGE_INVOCATIONS + lid);
    if (col >= p.n) {
        return;
    }
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    var acc4 = vec4<f32>();
    var acc5 = vec4<f32>();
    var acc6 = vec4<f32>();
    var acc7 = vec4<f32>();
    let a0 = p.a_off / 4u;
    let ars = p.a_rs / 4u;
    // Columns past n read the last column's texels; they are not stored.
    let last = p.n - 1u;
    for (var k = 0u; k < p.k; k += 4u) {
        var lo: mat4x4<f32>;
        var hi: mat4x4<f32>;
        if (B_ALONG_N) {
            // Rows k..k+3, texels of columns col..col+3 and col+4..col+7.
            lo = b_texels(col / 4u, k);
            hi = b_texels(min(col + 4u, last) / 4u, k);
        } else {
            // Texel k/4 of image rows col..col+7: B(k..k+3, col + j).
            let x = k / 4u;
            lo = mat4x4<f32>(
                b_texel(x, col),
                b_texel(x, min(col + 1u, last)),
                b_texel(x, min(col + 2u, last)),
                b_texel(x, min(col + 3u, last)),
            );
            hi = mat4x4<f32>(
                b_texel(x, min(col + 4u, last)),
                b_texel(x, min(col + 5u, last)),
                b_texel(x, min(col + 6u, last)),
                b_texel(x, min(col + 7u, last)),
            );
        }
        let ak = a0 + k / 4u;
        let av0 = a4[ak];
        acc0 = rows_step(acc0, av0, lo[0], lo[1], lo[2], lo[3]);
        acc1 = rows_step(acc1, av0, hi[0], hi[1], hi[2], hi[3]);
        if (ROWS > 1u) {
            let av = a4[ak + ars];
            acc2 = rows_step(acc2, av, lo[0], lo[1], lo[2], lo[3]);
            acc3 = rows_step(acc3, av, hi[0], hi[1], hi[2], hi[3]);
        }
        if (ROWS > 2u) {
            let av = a4[ak + 2u * ars];
            acc4 = rows_step(acc4, av, lo[0], lo[1], lo[2], lo[3]);
            acc5 = rows_step(acc5, av, hi[0], hi[1], hi[2], hi[3]);
        }
        if (ROWS > 3u) {
            let av = a4[ak + 3u * ars];
            acc6 = rows_step(acc6, av, lo[0], lo[1], lo[2], lo[3]);
            acc7 = rows_step(acc7, av, hi[0], hi[1], hi[2], hi[3]);
        }
    }
    let b_lo = column_bias(col, 1u);
    let b_hi = column_bias(col + 4u, 1u);
    store_row(p.c_off, 0u, col, acc0, 1u, b_lo);
    store_row(p.c_off, 0u, col + 4u, acc1, 1u, b_hi);
    if (ROWS > 1u) {
        store_row(p.c_off, 1u, col, acc2, 1u, b_lo);
        store_row(p.c_off, 1u, col + 4u, acc3, 1u, b_hi);
    }
    if (ROWS > 2u) {
        store_row(p.c_off, 2u, col, acc4, 1u, b_lo);
        store_row(p.c_off, 2u, col + 4u, acc5, 1u, b_hi);
    }
    if (ROWS > 3u) {
        store_row(p.c_off, 3u, col, acc6, 1u, b_lo);
        store_row(p.c_off, 3u, col + 4u, acc7, 1u, b_hi);
    }
}
