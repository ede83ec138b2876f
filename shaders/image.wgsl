// Image preprocessing as ViTImageProcessor does it, bit for bit with its PIL backend: resize with
// PIL's bilinear or bicubic filter (widened by the scale factor when shrinking, i.e. antialiased)
// in PIL's fixed-point arithmetic (coefficients with 22 fractional bits rounded half away from
// zero, integer sums, round half up, 8-bit clip after each pass), in PIL's pass order (vertical first when the
// height shrinks more than twice as much as the width, as Pillow 13 does); then rescale,
// normalise with a per-channel mean and std, and cut into patch vectors ordered (channel, row,
// column) to match the patch-embedding convolution's weight layout.
// Input pixels are RGBA8 packed in a u32 (r in the low byte); alpha is ignored here (the loader
// flattens it onto a background first).
//
// Launcher: src/ops/image.rs. Reference: src/reference/image.rs (resize, normalize_patchify).
// Tests: tests/preprocess.rs.

struct Params {
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    patch_size: u32,
    resample: u32,      // 0: bilinear (PIL's resample 2), 1: bicubic (resample 3)
    _pad1: u32,
    rescale: f32,
    mean: vec4<f32>,
    stddev: vec4<f32>,
}

@group(0) @binding(0) var<uniform> p: Params;

// PIL's filters: bilinear (a triangle, support 1) and bicubic (Keys' cubic with a = -0.5, support
// 2), each widened to `scale` times its support when shrinking.
fn filter_tap(x: f32) -> f32 {
    let t = abs(x);
    if (p.resample == 0u) {
        return max(0.0, 1.0 - t);
    }
    let a = -0.5;
    if (t < 1.0) {
        return ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0;
    }
    if (t < 2.0) {
        return (((t - 5.0) * t + 8.0) * t - 4.0) * a;
    }
    return 0.0;
}

fn filter_support() -> f32 {
    return select(2.0, 1.0, p.resample == 0u);
}

// The taps of output sample o along an axis of `len` inputs resized to `out_len`.
struct Window {
    lo: u32,
    hi: u32,
    center: f32,
    inv_support: f32,
    total: f32,     // sum of the filter over the window (the normaliser)
}

fn window(o: u32, len: u32, out_len: u32) -> Window {
    let scale = f32(len) / f32(out_len);
    let fscale = max(scale, 1.0);
    let support = filter_support() * fscale;
    let center = (f32(o) + 0.5) * scale;
    let lo = u32(max(floor(center - support + 0.5), 0.0));
    let hi = u32(min(floor(center + support + 0.5), f32(len)));
    var total = 0.0;
    for (var i = lo; i < hi; i++) {
        total += filter_tap((f32(i) - center + 0.5) / fscale);
    }
    return Window(lo, hi, center, 1.0 / fscale, total);
}

// Tap i's coefficient in PIL's fixed point: weight/total scaled by 2^22, rounded half away from
// zero (bicubic taps can be negative).
fn coefficient(w: Window, i: u32) -> i32 {
    let v = filter_tap((f32(i) - w.center + 0.5) * w.inv_support) / w.total * 4194304.0;
    return i32(trunc(v + select(0.5, -0.5, v < 0.0)));
}

// Sum of coefficient·value plus half a unit, shifted back and clipped to 8 bits, as PIL does.
fn to_u8(acc: i32) -> f32 {
    return f32(clamp(acc >> 22u, 0, 255));
}

// unpack: rgba [in_h, in_w] -> values [in_h, in_w, 3] (0..255)
@group(0) @binding(1) var<storage, read> rgba: array<u32>;
@group(0) @binding(2) var<storage, read_write> unpacked: array<f32>;

@compute @workgroup_size(256)
fn unpack_rgb(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i >= p.in_h * p.in_w * 3u) {
        return;
    }
    unpacked[i] = f32((rgba[i / 3u] >> (8u * (i % 3u))) & 255u);
}

// One resampling pass over [in_h, in_w, 3] values into [out_h, out_w, 3]: along x (resize_h:
// out_h = in_h) or along y (resize_v: out_w = in_w). Which goes first is the launcher's choice.
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(256)
fn resize_h(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i >= p.in_h * p.out_w * 3u) {
        return;
    }
    let ch = i % 3u;
    let ox = (i / 3u) % p.out_w;
    let y = i / (3u * p.out_w);
    let w = window(ox, p.in_w, p.out_w);
    var acc = 1 << 21u;
    for (var x = w.lo; x < w.hi; x++) {
        acc += coefficient(w, x) * i32(src[(y * p.in_w + x) * 3u + ch]);
    }
    dst[i] = to_u8(acc);
}

@compute @workgroup_size(256)
fn resize_v(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = thread_index(wid, nwg, lid);
    if (i >= p.out_h * p.in_w * 3u) {
        return;
    }
    let ch = i % 3u;
    let x = (i / 3u) % p.in_w;
    let oy = i / (3u * p.in_w);
    let w = window(oy, p.in_h, p.out_h);
    var acc = 1 << 21u;
    for (var y = w.lo; y < w.hi; y++) {
        acc += coefficient(w, y) * i32(src[(y * p.in_w + x) * 3u + ch]);
    }
    dst[i] = to_u8(acc);
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
