// Reductions: sums of contiguous segments (one workgroup each, a tree in workgroup memory),
// column sums (bias gradients), and the broadcast that is the backward of a sum or a mean.

struct Params {
    segments: u32,  // sum_segments: segments; sum_columns: columns summed (the first ones)
    len: u32,       // segment length (sum_segments) or rows (sum_columns)
    cols: u32,      // sum_columns: row length
    flags: u32,     // sum_segments: 1 = sum of squares, 2 = accumulate into out
    scale: f32,     // multiplies every result (1/len makes a mean)
    out_off: u32,   // sum_segments: first output slot
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
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

// out[c] += scale * sum_r x[r, c] for the first `segments` columns: the gradient of a bias
// broadcast over rows (all columns), or of a vector added to the first columns only.
@compute @workgroup_size(256)
fn sum_columns(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = thread_index(wid, nwg, lid);
    if (c >= p.segments) {
        return;
    }
    var acc = 0.0;
    for (var r = 0u; r < p.len; r++) {
        acc += x[r * p.cols + c];
    }
    out[c] += p.scale * acc;
}

// out[i] = scale * x[0] for i < len: backward of sum (scale 1) and mean (scale 1/n).
@compute @workgroup_size(256)
fn broadcast_scalar(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i < p.len) {
        out[i] = p.scale * x[0];
    }
}
