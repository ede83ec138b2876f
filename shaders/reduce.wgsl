// Reductions: sums of contiguous segments (one workgroup each, a tree in workgroup memory),
// column sums (bias gradients), and the broadcast that is the backward of a sum or a mean.
//
// Launcher: src/ops/reduce.rs. Reference: src/reference/mod.rs (sum_columns).
// Tests: tests/reduce.rs.

struct Params {
    segments: u32,  // sum_segments: segments; sum_columns: columns summed (the first ones)
    len: u32,       // segment length (sum_segments) or rows (sum_columns)
    cols: u32,      // sum_columns: row length
    flags: u32,     // sum_segments: 1 = sum of squares, 2 = accumulate into out
    scale: f32,     // multiplies every result (1/len makes a mean)
    out_off: u32,   // first output slot
    chunk: u32,     // sum_columns: rows per invocation
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// sum_columns: add to the outputs rather than set them; fixed per pipeline, because lavapipe runs
// both sides of a branch and would load every output as well as store it twice.
override ACCUMULATE: bool = false;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

var<workgroup> partial: array<f32, 256>;

// out[out_off + s] (+)= scale * sum_i x[s * len + i] (or of squares).
@compute @workgroup_size(256)
fn sum_segments(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let s = group_index(wid, nwg);
    // `s` is uniform across the workgroup, so every invocation reaches the barriers or none does.
    if (s >= p.segments) {
        return;
    }
    let o = s * p.len;
    var acc = 0.0;
    for (var i = lid; i < p.len; i += 256u) {
        let v = x[o + i];
        if ((p.flags & 1u) != 0u) {
            acc += v * v;
        } else {
            acc += v;
        }
    }
    partial[lid] = acc;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (lid < w) {
            partial[lid] += partial[lid + w];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        var v = p.scale * partial[0];
        if ((p.flags & 2u) != 0u) {
            v += out[p.out_off + s];
        }
        out[p.out_off + s] = v;
    }
}

// Column sums in chunks of rows: invocation (k, c) sets (flag 2: adds to) out[out_off + k·segments + c]
// the sum over rows k·chunk .. (k+1)·chunk of x[r, c], for the first `segments` columns of rows
// `cols` long. One chunk of all rows is a whole column sum; several make the first pass of a long
// one (see sum_columns in src/ops/reduce.rs), so that a GPU runs rows/chunk × columns invocations
// rather than one per column looping over every row.
@compute @workgroup_size(256)
fn sum_columns(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    let k = i / p.segments;
    let c = i - k * p.segments;
    let r0 = k * p.chunk;
    if (r0 >= p.len) {
        return;
    }
    let r1 = min(r0 + p.chunk, p.len);
    var acc = 0.0;
    for (var r = r0; r < r1; r++) {
        acc += x[r * p.cols + c];
    }
    let o = p.out_off + k * p.segments + c;
    if (ACCUMULATE) {
        out[o] += p.scale * acc;
    } else {
        out[o] = p.scale * acc;
    }
}

// sum_columns with x read from an image of its rows (see src/gpu/image.rs): invocation (k, t)
// sums texel t (columns 4t .. 4t+3) over rows k·chunk .. (k+1)·chunk, one fetch per row where the
// buffer kernel loads each column's element on its own. Each column's terms are added in the
// same order as there, so both give the same bits.
@group(0) @binding(3) var x_image: texture_storage_2d<rgba32float, read>;

@compute @workgroup_size(256)
fn sum_columns_image(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    let texels = p.segments / 4u;
    let k = i / texels;
    let t = i - k * texels;
    let r0 = k * p.chunk;
    if (r0 >= p.len) {
        return;
    }
    let r1 = min(r0 + p.chunk, p.len);
    var acc = vec4<f32>();
    for (var r = r0; r < r1; r++) {
        acc += textureLoad(x_image, vec2<i32>(i32(t), i32(r)));
    }
    let o = p.out_off + k * p.segments + 4u * t;
    var v = p.scale * acc;
    if (ACCUMULATE) {
        v += vec4<f32>(out[o], out[o + 1u], out[o + 2u], out[o + 3u]);
    }
    out[o] = v.x;
    out[o + 1u] = v.y;
    out[o + 2u] = v.z;
    out[o + 3u] = v.w;
}

// out[i] = scale * x[0] for i < len: backward of sum (scale 1) and mean (scale 1/n).
@compute @workgroup_size(256)
fn broadcast_scalar(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i < p.len) {
        out[i] = p.scale * x[0];
    }
}
