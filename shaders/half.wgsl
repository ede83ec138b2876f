// Half precision: a tensor of f16 elements (two to a word) widened to f32, exactly.
//
// Where a product over half-precision weights reads B from an image (CPU adapters, see
// `Step::image`), the image is made from this f32 copy.
//
// Launcher: src/ops/half.rs. Reference: src/half.rs (f16_to_f32). Tests: tests/half.rs.

struct Params {
    n: u32,     // elements
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> halves: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<vec2<f32>>;

// One invocation per word: out[2w], out[2w + 1] = the word's two halves (a last odd element's
// pair is written whole, into the two-element rounding of its tensor's buffer).
@compute @workgroup_size(256)
fn widen_halves(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let w = thread_index(wid, nwg, lid);
    if (2u * w < p.n) {
        out[w] = unpack2x16float(halves[w]);
    }
}
