// Image preprocessing as ViTImageProcessor does it: resize with PIL's bilinear filter (a triangle
// filter widened by the scale factor when shrinking, i.e. antialiased), rounding to 8 bits after
// each pass as PIL does for 8-bit images; then rescale, normalise with a per-channel mean and
// std, and cut into patch vectors ordered (channel, row, column) to match the patch-embedding
// convolution's weight layout.
// Input pixels are RGBA8 packed in a u32 (r in the low byte); alpha is ignored here (the loader
// flattens it onto a background first).

struct Params {
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    patch_size: u32,
    _pad0: u32,
    _pad1: u32,
    rescale: f32,
    mean: vec4<f32>,
    stddev: vec4<f32>,
}

@group(0) @binding(0) var<uniform> p: Params;

// PIL's bilinear filter: support 1, widened to `scale` when shrinking.
fn filter_tap(x: f32) -> f32 {
    return max(0.0, 1.0 - abs(x));
}

// Resampled value at output coordinate o along an axis of `len` input samples shrunk/grown to
// `out_len`; `sample(i)` is read through the callers below (WGSL has no closures).
struct Window {
    lo: u32,
    hi: u32,
    center: f32,
    inv_support: f32,
}

fn window(o: u32, len: u32, out_len: u32) -> Window {
    let scale = f32(len) / f32(out_len);
    let fscale = max(scale, 1.0);
    let support = fscale;   // bilinear support (1) times the filter scale
    let center = (f32(o) + 0.5) * scale;
    let lo = u32(max(floor(center - support + 0.5), 0.0));
    let hi = u32(min(floor(center + support + 0.5), f32(len)));
    return Window(lo, hi, center, 1.0 / fscale);
}

fn to_u8(v: f32) -> f32 {
    return clamp(round(v), 0.0, 255.0);
}

// horizontal pass: rgba [in_h, in_w] -> tmp [in_h, out_w, 3]
@group(0) @binding(1) var<storage, read> rgba: array<u32>;
@group(0) @binding(2) var<storage, read_write> tmp: array<f32>;

@compute @workgroup_size(256)
fn resize_h(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i >= p.in_h * p.out_w) {
        return;
    }
    let y = i / p.out_w;
    let ox = i % p.out_w;
    let w = window(ox, p.in_w, p.out_w);
    var acc = vec3<f32>();
    var wsum = 0.0;
    for (var x = w.lo; x < w.hi; x++) {
        let k = filter_tap((f32(x) - w.center + 0.5) * w.inv_support);
        let px = rgba[y * p.in_w + x];
        acc += k * vec3<f32>(f32(px & 255u), f32((px >> 8u) & 255u), f32((px >> 16u) & 255u));
        wsum += k;
    }
    acc /= wsum;
    let o = i * 3u;
    tmp[o] = to_u8(acc.r);
    tmp[o + 1u] = to_u8(acc.g);
    tmp[o + 2u] = to_u8(acc.b);
}

// vertical pass: tmp [in_h, out_w, 3] -> pixels [out_h, out_w, 3] (0..255)
@group(0) @binding(1) var<storage, read> tmp_in: array<f32>;
@group(0) @binding(2) var<storage, read_write> pixels: array<f32>;

@compute @workgroup_size(256)
fn resize_v(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i >= p.out_h * p.out_w * 3u) {
        return;
    }
    let ch = i % 3u;
    let ox = (i / 3u) % p.out_w;
    let oy = i / (3u * p.out_w);
    let w = window(oy, p.in_h, p.out_h);
    var acc = 0.0;
    var wsum = 0.0;
    for (var y = w.lo; y < w.hi; y++) {
        let k = filter_tap((f32(y) - w.center + 0.5) * w.inv_support);
        acc += k * tmp_in[(y * p.out_w + ox) * 3u + ch];
        wsum += k;
    }
    pixels[i] = to_u8(acc / wsum);
}

// pixels [out_h, out_w, 3] -> patches [(out_h/patch) * (out_w/patch), 3 * patch * patch]
@group(0) @binding(1) var<storage, read> pix: array<f32>;
@group(0) @binding(2) var<storage, read_write> patches: array<f32>;

@compute @workgroup_size(256)
fn normalize_patchify(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    let pp = p.patch_size * p.patch_size;
    let per_row = p.out_w / p.patch_size;
    let n = (p.out_h / p.patch_size) * per_row * 3u * pp;
    if (i >= n) {
        return;
    }
    let patch_index = i / (3u * pp);
    let j = i % (3u * pp);
    let ch = j / pp;
    let dy = (j % pp) / p.patch_size;
    let dx = j % p.patch_size;
    let y = (patch_index / per_row) * p.patch_size + dy;
    let x = (patch_index % per_row) * p.patch_size + dx;
    let v = pix[(y * p.out_w + x) * 3u + ch];
    patches[i] = (v * p.rescale - p.mean[ch]) / p.stddev[ch];
}
