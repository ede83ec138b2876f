//! Matmul on the GPU against the CPU reference: random shapes, every transpose combination, both
//! kernels (scalar and vec4), awkward sizes, batches, strided views, and its backward.

mod common;
use amad::ops::matmul::{matmul, Gemm, View};
use amad::reference as r;
use amad::rng::Rng;
use common::*;

/// f32 accumulation of k products of values in [-1, 1]: the rounding error is at most about
/// k·2⁻²⁴ per sum and typically √k times that; 4e-6·k leaves margin without hiding a wrong term
/// (a wrong or missing product is off by ~0.1 or more).
fn tol(k: usize) -> f64 {
    4e-6 * k as f64
}

#[allow(clippy::too_many_arguments)]
fn check(
    g: &amad::Gpu,
    seed: u64,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    b_shared: bool,
    bias: bool,
) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let a = rng.vec(batch * m * k, 1.0);
    let nb = if b_shared { k * n } else { batch * k * n };
    let b = rng.vec(nb, 1.0);
    let bv = rng.vec(n, 1.0);
    let want = r::matmul(
        &a,
        &b,
        bias.then_some(&bv[..]),
        batch,
        m,
        n,
        k,
        ta,
        tb,
        b_shared,
    );
    let a_shape = if ta {
        vec![batch, k, m]
    } else {
        vec![batch, m, k]
    };
    let mut b_shape = if tb { vec![n, k] } else { vec![k, n] };
    if !b_shared {
        b_shape.insert(0, batch);
    }
    let (ta_, tb_, bt) = (
        upload_on(g, &a_shape, &a),
        upload_on(g, &b_shape, &b),
        upload_on(g, &[n], &bv),
    );
    let got = run_on(g, |s| {
        Ok(vec![matmul(s, &ta_, &tb_, ta, tb, bias.then_some(&bt))?])
    });
    assert_close(
        &format!(
            "matmul b={batch} m={m} n={n} k={k} ta={ta} tb={tb} shared={b_shared} bias={bias}"
        ),
        &got[0],
        &want,
        tol(k),
        1e-5,
    );
    got.into_iter().next().unwrap()
}

#[test]
fn random_shapes_all_transposes() {
    let mut rng = Rng::new(7);
    for case in 0..40u64 {
        let (m, n, k) = (1 + rng.below(130), 1 + rng.below(130), 1 + rng.below(70));
        // Every fourth case uses multiples of 4 so the vec4 kernel runs too.
        let (m, n, k) = if case % 4 == 0 {
            (m.div_ceil(4) * 4, n.div_ceil(4) * 4, k.div_ceil(4) * 4)
        } else {
            (m, n, k)
        };
        let batch = 1 + rng.below(3);
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            check(
                gpu(),
                case,
                batch,
                m,
                n,
                k,
                ta,
                tb,
                case % 3 == 0,
                case % 2 == 0,
            );
        }
    }
}

/// Runs `f` on each of three devices (subgroup, image and buffer kernels), checks that each ran
/// its kernel (the only one, or among others where `only` is false), and that all three give the
/// same bits.
fn same_on_all(
    what: &str,
    devices: [(&amad::Gpu, &str); 3],
    only: bool,
    f: impl Fn(&amad::Gpu) -> Vec<f32>,
) {
    let mut outs = vec![];
    for (g, want) in devices {
        let mut got = vec![];
        let ran = kernels_run(g, || got = f(g));
        if only {
            assert_eq!(ran, [want], "{what}");
        } else {
            assert!(ran.contains(&want), "{what}: ran {ran:?}");
        }
        outs.push(got);
    }
    same_bits(
        &format!("{what}, subgroup vs buffer kernel"),
        &outs[0],
        &outs[2],
    );
    same_bits(
        &format!("{what}, image vs buffer kernel"),
        &outs[1],
        &outs[2],
    );
}

/// The subgroup kernel, the image kernel (operands copied into textures) and the vec4 buffer
/// kernel, each on a device of its own, against the reference and against each other bit for bit
/// (they add the same terms in the same order): every orientation, batches with B shared or not,
/// bias, edge tiles, and K remainders (K mod 4, possible when neither operand is contiguous along
/// K). Each product must take the path its device asks for, where its operands fit an image, and a
/// repeated product takes its images from the pool.
#[test]
fn subgroup_image_and_buffer_kernels_at_image_pitches() {
    let subgroup = own_device(true);
    let images = own_device(true);
    images.set_subgroup_matmul(false);
    let buffers = own_device(false);
    let sub_kernel = subgroup_matmul_kernel(&subgroup);
    // Where C's rows are not whole aligned vec4s, the subgroup kernel's entry point that stores
    // element by element.
    let sub_cells = match sub_kernel {
        "matmul_subgroup" => "matmul_subgroup_cells",
        other => other,
    };
    // (m, n, k): leading dimensions that are multiples of 64, so operands fit images; M and N
    // that leave part of a 32 x 64 or 64 x 64 tile (N = 72 and 100 leave lanes with no columns in
    // the second group of the subgroup kernel's tile, or only some); and 2 x 20 x 5 tiles of
    // 32 x 64, which the subgroup kernel takes 3 to a workgroup, the last workgroup finding only 2;
    // N = 70, whose rows of C are not whole vec4s (an LM head's logits) and whose last lane with
    // columns holds two of them: it fits images where B is stored [n, k].
    let shapes = [
        (64, 64, 64),
        (68, 128, 128),
        (128, 72, 192),
        (132, 64, 64),
        (192, 100, 64),
        (640, 320, 64),
        (128, 70, 128),
    ];
    let mut case = 0;
    for (m, n, k) in shapes {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            // A transposed is stored [k, m] (pitch m), B transposed [n, k] (pitch k): only
            // pitches that are multiples of 64 (256 bytes) can be copied into an image.
            let fits = if ta { m % 64 == 0 } else { k % 64 == 0 }
                && if tb { k % 64 == 0 } else { n % 64 == 0 };
            // Pitches that are not whole vec4s (B stored [k, 70]) leave only the scalar kernel.
            let on_buffers = if (if tb { k } else { n }) % 4 == 0 {
                "matmul_vec4"
            } else {
                "matmul"
            };
            case += 1;
            let (shared, bias) = (case % 2 == 0, case % 3 == 0);
            // The subgroup kernel stores C's rows as vec4s where N is a multiple of 4.
            let on_subgroup = match (fits, n % 4 == 0) {
                (true, true) => sub_kernel,
                (true, false) => sub_cells,
                (false, _) => on_buffers,
            };
            let devices = [
                (&subgroup, on_subgroup),
                (&images, if fits { "matmul_image" } else { on_buffers }),
                (&buffers, on_buffers),
            ];
            let what = format!("case {case}: m={m} n={n} k={k} ta={ta} tb={tb}");
            same_on_all(&what, devices, true, |g| {
                check(g, case, 2, m, n, k, ta, tb, shared, bias)
            });
            let before = subgroup.stats().images_created;
            check(&subgroup, case, 2, m, n, k, ta, tb, shared, bias);
            assert_eq!(
                subgroup.stats().images_created,
                before,
                "pooled images reused"
            );
        }
    }
    // A weight gradient's shape, whose K is split into chunks: the split is decided on the same
    // 64 x 64 tiles whichever kernel runs (16 tiles here, so 8 chunks), so the sums are the same.
    let devices = [
        (&subgroup, sub_kernel),
        (&images, "matmul_image"),
        (&buffers, "matmul_vec4"),
    ];
    // CPU adapters do not split by default (Gpu::split_k); here all three must, as GPUs do.
    for g in [&subgroup, &images, &buffers] {
        g.set_split_k(true);
    }
    same_on_all("split K", devices, false, |g| {
        check(g, 50, 1, 128, 512, 2080, true, false, false, false)
    });
    for g in [&subgroup, &images, &buffers] {
        g.set_split_k(false);
    }
    // K remainders: A stored [k, m] and B [k, n], both contiguous along m and n.
    for k in [1, 5, 7, 70] {
        same_on_all(&format!("k = {k}"), devices, true, |g| {
            check(g, 40 + k as u64, 1, 64, 128, k, true, false, false, true)
        });
    }
    // Storing: alpha, bias and accumulating into C at an offset (a multiple of 4, so the
    // subgroup kernel stores its rows as vec4s; at 2 it stores them element by element).
    for (off, on_subgroup) in [(64, sub_kernel), (2, sub_cells)] {
        let devices = [
            (&subgroup, on_subgroup),
            (&images, "matmul_image"),
            (&buffers, "matmul_vec4"),
        ];
        same_on_all(&format!("accumulate at {off}"), devices, true, |g| {
            accumulate_at(g, off)
        });
    }
    assert_eq!(buffers.stats().images_created, 0);
}

/// C[off..] += 0.5 · A B + bias for A [68, 128], B [128, 128], against the reference.
fn accumulate_at(g: &amad::Gpu, off: usize) -> Vec<f32> {
    let (m, n, k) = (68, 128, 128);
    let mut rng = Rng::new(60 + off as u64);
    let (a, b, bias, c0) = (
        rng.vec(m * k, 1.0),
        rng.vec(k * n, 1.0),
        rng.vec(n, 1.0),
        rng.vec(off + m * n, 1.0),
    );
    let (ta, tb, tbias, tc) = (
        upload_on(g, &[m, k], &a),
        upload_on(g, &[k, n], &b),
        upload_on(g, &[n], &bias),
        upload_on(g, &[off + m * n], &c0),
    );
    let got = run_on(g, |s| {
        Gemm {
            m,
            n,
            k,
            batch: [1, 1],
            a: View::matrix(&ta, m, k, false),
            b: View::matrix(&tb, k, n, false),
            c: View {
                off,
                ..View::matrix(&tc, m, n, false)
            },
            bias: Some(&tbias),
            alpha: 0.5,
            accumulate: true,
        }
        .record(s)?;
        Ok(vec![tc.clone()])
    });
    let prod = r::matmul(&a, &b, None, 1, m, n, k, false, false, false);
    let mut want = c0.clone();
    for (i, (w, p)) in want[off..].iter_mut().zip(&prod).enumerate() {
        *w += 0.5 * p + bias[i % n];
    }
    assert_close(
        &format!("accumulate at {off}"),
        &got[0],
        &want,
        tol(k),
        1e-5,
    );
    got[0].clone()
}

#[test]
fn awkward_sizes() {
    for (m, n, k) in [
        (1, 1, 1),
        (1, 7, 1),
        (5, 1, 3),
        (63, 65, 17),
        (64, 64, 64),
        (65, 67, 129),
        (4, 4, 5),
        (8, 12, 6),
    ] {
        for (ta, tb) in [(false, false), (true, true), (true, false), (false, true)] {
            check(gpu(), 1000 + m as u64, 2, m, n, k, ta, tb, false, true);
        }
    }
}

#[test]
fn vec4_path_with_k_remainder_and_edges() {
    // Aligned leading dimensions but K = 4q + r and M, N not multiples of the 64 x 64 tile.
    for k in [4, 5, 6, 7, 8, 33] {
        check(gpu(), k as u64, 1, 68, 72, k, false, false, false, false);
        check(gpu(), k as u64, 1, 68, 72, k, true, true, false, false);
    }
}

/// K past lavapipe's loop cap of 65,535 iterations per invocation (the scalar kernel loops K times,
/// the vec4 one K/4): the launcher splits K and accumulates, so no product is dropped silently.
#[test]
fn k_longer_than_the_loop_cap() {
    check(gpu(), 21, 1, 3, 5, 70_001, false, false, false, true);
    check(gpu(), 22, 1, 4, 8, 300_000, false, false, false, false);
}

/// Few output tiles and a long K (a weight gradient's shape): the launcher runs chunks of K as one
/// batched product and sums them. Whole chunks only (K = 2,080 in 8 chunks) and a last partial
/// chunk (K = 1,000: 3 chunks of 332, then 4). Only Aᵀ·B splits, where every chunk starts on a
/// stored row of both operands (see Gemm::k_splits); every transpose gives the right product.
#[test]
fn split_k_for_few_tiles_and_long_k() {
    let g = &own_device(true);
    for split_k in [true, false] {
        g.set_split_k(split_k);
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let ran = kernels_run(g, || {
                check(g, 31, 1, 64, 128, 2080, ta, tb, false, false);
                check(g, 32, 1, 20, 35, 1000, ta, tb, false, false);
            });
            let split = ran.iter().any(|k| k.starts_with("sum_columns"));
            let what = format!("split_k={split_k} Aᵀ={ta} Bᵀ={tb}: ran {ran:?}");
            assert_eq!(split, split_k && ta && !tb, "{what}");
        }
    }
}

/// Split-K into a C that is a view at an offset, accumulated into, with alpha.
#[test]
fn split_k_accumulates_into_an_offset_view() {
    let g = &own_device(true);
    g.set_split_k(true);
    let (m, n, k, off) = (12, 20, 777, 3);
    let mut rng = Rng::new(12);
    let (a, b, c0) = (
        rng.vec(k * m, 1.0),
        rng.vec(k * n, 1.0),
        rng.vec(off + m * n, 1.0),
    );
    let (ta, tb, tc) = (
        upload_on(g, &[k, m], &a),
        upload_on(g, &[k, n], &b),
        upload_on(g, &[off + m * n], &c0),
    );
    let mut got = vec![];
    let ran = kernels_run(g, || {
        got = run_on(g, |s| {
            Gemm {
                m,
                n,
                k,
                batch: [1, 1],
                a: View::matrix(&ta, k, m, true),
                b: View::matrix(&tb, k, n, false),
                c: View {
                    off,
                    ..View::matrix(&tc, m, n, false)
                },
                bias: None,
                alpha: 0.5,
                accumulate: true,
            }
            .record(s)?;
            Ok(vec![tc.clone()])
        })
    });
    assert!(
        ran.iter().any(|k| k.starts_with("sum_columns")),
        "split: ran {ran:?}"
    );
    let prod = r::matmul(&a, &b, None, 1, m, n, k, true, false, false);
    let mut want = c0.clone();
    for (w, p) in want[off..].iter_mut().zip(&prod) {
        *w += 0.5 * p;
    }
    assert_close("split-K into an offset view", &got[0], &want, tol(k), 1e-5);
}

#[test]
fn more_workgroups_than_one_dispatch_dimension_allows() {
    // 70,000 batched 1x1 products: 70,000 workgroups, over the 65,535 per-dimension limit.
    check(gpu(), 3, 70_000, 1, 1, 3, false, false, false, false);
}

#[test]
fn strided_views_and_accumulate() {
    // C (+)= alpha · A Bᵀ over a [2, 3]-batch of heads read from a [B=2, T=5, H=3·D=4] layout.
    let (b, t, h, d) = (2, 5, 3, 4);
    let mut rng = Rng::new(11);
    let q = rng.vec(b * t * h * d, 1.0);
    let kk = rng.vec(b * t * h * d, 1.0);
    let c0 = rng.vec(b * h * t * t, 1.0);
    let (tq, tk, tc) = (
        upload(&[b, t, h * d], &q),
        upload(&[b, t, h * d], &kk),
        upload(&[b, h, t, t], &c0),
    );
    let got = run(|s| {
        Gemm {
            m: t,
            n: t,
            k: d,
            batch: [b, h],
            a: View {
                t: &tq,
                off: 0,
                rs: h * d,
                cs: 1,
                bs: [t * h * d, d],
            },
            b: View {
                t: &tk,
                off: 0,
                rs: 1,
                cs: h * d,
                bs: [t * h * d, d],
            },
            c: View {
                t: &tc,
                off: 0,
                rs: t,
                cs: 1,
                bs: [h * t * t, t * t],
            },
            bias: None,
            alpha: 0.5,
            accumulate: true,
        }
        .record(s)?;
        Ok(vec![tc.clone()])
    });
    let mut want = c0.clone();
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..t {
                for j in 0..t {
                    let dot: f64 = (0..d)
                        .map(|x| {
                            q[(bi * t + i) * h * d + hi * d + x]
                                * kk[(bi * t + j) * h * d + hi * d + x]
                        })
                        .sum();
                    want[((bi * h + hi) * t + i) * t + j] += 0.5 * dot;
                }
            }
        }
    }
    assert_close("strided gemm", &got[0], &want, tol(d), 1e-5);
}

#[test]
fn backward_matches_reference_and_finite_differences() {
    // Y = X W + b; L = Σ G ⊙ Y. dX = G Wᵀ, dW = Xᵀ G, db = colsum G, all computed with the
    // transposed-operand matmuls the model's backward uses.
    let (m, k, n) = (9, 6, 5);
    let mut rng = Rng::new(5);
    let (x, w, bias, g) = (
        rng.vec(m * k, 1.0),
        rng.vec(k * n, 1.0),
        rng.vec(n, 1.0),
        rng.vec(m * n, 1.0),
    );
    let dx_ref = r::matmul(&g, &w, None, 1, m, k, n, false, true, false);
    let dw_ref = r::matmul(&x, &g, None, 1, k, n, m, true, false, false);
    let db_ref = r::sum_columns(&g, n);
    let loss = |x: &[f64], w: &[f64], b: &[f64]| {
        dot(
            &g,
            &r::matmul(x, w, Some(b), 1, m, n, k, false, false, false),
        )
    };
    assert_close64(
        "dX vs finite differences",
        &dx_ref,
        &finite_diff(&x, 1e-6, |x| loss(x, &w, &bias)),
        1e-7,
        1e-7,
    );
    assert_close64(
        "dW vs finite differences",
        &dw_ref,
        &finite_diff(&w, 1e-6, |w| loss(&x, w, &bias)),
        1e-7,
        1e-7,
    );
    assert_close64(
        "db vs finite differences",
        &db_ref,
        &finite_diff(&bias, 1e-6, |b| loss(&x, &w, b)),
        1e-7,
        1e-7,
    );
    let (tx, tw, tg) = (
        upload(&[m, k], &x),
        upload(&[k, n], &w),
        upload(&[m, n], &g),
    );
    let got = run(|s| {
        let dx = matmul(s, &tg, &tw, false, true, None)?;
        let dw = matmul(s, &tx, &tg, true, false, None)?;
        let db = s.zeros(&[n])?;
        amad::ops::reduce::sum_columns(s, &tg, &db)?;
        Ok(vec![dx, dw, db])
    });
    assert_close("dX", &got[0], &dx_ref, tol(n), 1e-5);
    assert_close("dW", &got[1], &dw_ref, tol(m), 1e-5);
    assert_close("db", &got[2], &db_ref, tol(m), 1e-5);
}

/// An MLP's GELU done in the matmul's store (`linear_activation`, and `linear_bwd` through the GELU):
/// on a device with the subgroup kernel it runs in the product's store, elsewhere as the product
/// and then the GELU kernel; both give the same bits and match the reference. Forward: hidden =
/// x·W1 + b, act = GELU(hidden); backward of the next layer y = act·W2 through the GELU:
/// dhidden = (dy·W2ᵀ) ⊙ GELU'(hidden). Both forms, both weight layouts.
#[test]
fn gelu_in_the_store_matches_the_gelu_kernel() {
    use amad::model::linear::{linear_activation, linear_bwd, Dx, Grad, Layout};
    use amad::ops::elementwise::Activation;
    let subgroup = own_device(true);
    let buffers = own_device(false);
    let sub_kernel = subgroup_matmul_kernel(&subgroup);
    let (rows, inp, hid) = (68, 128, 256);
    // A linear map's weight in `layout`, and the same map as an in × out matrix.
    let weight = |rng: &mut Rng, layout: Layout, i: usize, o: usize| {
        let w = rng.vec(i * o, 0.2);
        let io = match layout {
            Layout::InOut => w.clone(),
            Layout::OutIn => (0..i * o).map(|e| w[(e % o) * i + e / o]).collect(),
        };
        let shape = match layout {
            Layout::OutIn => [o, i],
            Layout::InOut => [i, o],
        };
        (w, io, shape)
    };
    for kind in [Activation::GeluErf, Activation::GeluTanh, Activation::Relu] {
        type Scalar = fn(f64) -> f64;
        let (f, slope): (Scalar, Scalar) = match kind {
            Activation::GeluErf => (r::gelu_erf, r::gelu_erf_grad),
            Activation::GeluTanh => (r::gelu_tanh, r::gelu_tanh_grad),
            Activation::Relu => (r::relu, r::relu_grad),
        };
        for layout in [Layout::OutIn, Layout::InOut] {
            let mut rng = Rng::new(70 + (kind == Activation::GeluTanh) as u64);
            let (x, b, dy) = (
                rng.vec(rows * inp, 1.0),
                rng.vec(hid, 1.0),
                rng.vec(rows * inp, 1.0),
            );
            let (w1, w1_io, w1_shape) = weight(&mut rng, layout, inp, hid);
            let (w2, w2_io, w2_shape) = weight(&mut rng, layout, hid, inp);
            let hidden = r::matmul(&x, &w1_io, Some(&b), 1, rows, hid, inp, false, false, false);
            let act: Vec<f64> = hidden.iter().map(|&h| f(h)).collect();
            let dact = r::matmul(&dy, &w2_io, None, 1, rows, hid, inp, false, true, false);
            let dhidden: Vec<f64> = dact
                .iter()
                .zip(&hidden)
                .map(|(d, &h)| d * slope(h))
                .collect();
            let mut outs = vec![];
            for (g, product) in [(&subgroup, sub_kernel), (&buffers, "matmul_vec4")] {
                let fused = product == "matmul_subgroup";
                let what = format!("{kind:?} {layout:?} on {product}");
                let (tx, tw1, tb, tw2, tdy) = (
                    upload_on(g, &[rows, inp], &x),
                    upload_on(g, &w1_shape, &w1),
                    upload_on(g, &[hid], &b),
                    upload_on(g, &w2_shape, &w2),
                    upload_on(g, &[rows, inp], &dy),
                );
                let (tdw, tdb) = (
                    upload_on(g, &w2_shape, &vec![0.0; hid * inp]),
                    upload_on(g, &[inp], &vec![0.0; inp]),
                );
                let mut got = vec![];
                let ran = kernels_run(g, || {
                    got = run_on(g, |s| {
                        let (h, a) = linear_activation(s, &tx, &tw1, &tb, layout, kind)?;
                        let through = Dx::ThroughActivation { hidden: &h, kind };
                        let p = Grad {
                            w: &tw2,
                            layout,
                            dw: &tdw,
                            db: Some(&tdb),
                        };
                        let dh = linear_bwd(s, &a, p, &tdy, through)?;
                        Ok(vec![h, a, dh])
                    })
                });
                assert!(ran.contains(&product), "{what}: ran {ran:?}");
                // Where the store applies the GELU, no activation kernel runs; ReLU always has its
                // own kernels.
                let passes = ran
                    .iter()
                    .filter(|k| k.starts_with("gelu") || k.starts_with("relu"))
                    .count();
                let fused = fused && kind != Activation::Relu;
                assert_eq!(passes, if fused { 0 } else { 2 }, "{what}: ran {ran:?}");
                assert_close(&format!("{what}: hidden"), &got[0], &hidden, tol(inp), 1e-5);
                assert_close(&format!("{what}: act"), &got[1], &act, tol(inp), 1e-5);
                assert_close(
                    &format!("{what}: dhidden"),
                    &got[2],
                    &dhidden,
                    tol(inp),
                    1e-4,
                );
                outs.push(got);
            }
            same_bits(
                &format!("{kind:?} {layout:?} hidden"),
                &outs[0][0],
                &outs[1][0],
            );
            same_bits(
                &format!("{kind:?} {layout:?} act"),
                &outs[0][1],
                &outs[1][1],
            );
            same_bits(
                &format!("{kind:?} {layout:?} dhidden"),
                &outs[0][2],
                &outs[1][2],
            );
        }
    }
}

/// Products of 1 to 4 rows (one token at a time) take `matmul_rows`, with B along n (Conv1D
/// weights) or along k (nn.Linear weights, the LM head), with and without a bias, K not a
/// multiple of its 4-step unrolled twice, and N not a multiple of 4 where B runs along k.
#[test]
fn few_row_products_take_the_rows_kernel() {
    let g = own_device(false);
    for m in 1..=4 {
        for (n, k, tb) in [
            (96, 72, false),
            (130, 64, true),
            (64, 4, false),
            (257, 132, true),
        ] {
            for bias in [false, true] {
                let ran = kernels_run(&g, || {
                    check(&g, (m * n + k) as u64, 1, m, n, k, false, tb, true, bias);
                });
                // Chunks of K are summed by the column-sum kernel.
                assert!(
                    ran.iter()
                        .all(|k| k.starts_with("matmul_rows") || k.starts_with("sum_")),
                    "m={m} n={n} k={k} tb={tb}: {ran:?}"
                );
                assert!(ran.iter().any(|k| k.starts_with("matmul_rows")), "{ran:?}");
            }
        }
    }
}

/// What one of the LM head's row blocks does: B [n, k] read along k, the product added into
/// columns `off ..` of a wider C [m, wide] (an offset, strided view), on `g`, with B held
/// (`Gpu::hold_images`) where `hold`.
struct IntoWideView {
    got: Vec<f32>,
    want: Vec<f64>,
    ran: Vec<&'static str>,
    /// Images held once the product was recorded.
    held: usize,
}

fn into_wide_view(g: &amad::Gpu, (m, n, k): (usize, usize, usize), hold: bool) -> IntoWideView {
    let (wide, off) = (n + 56, 12);
    let mut rng = Rng::new(5);
    let (a, b, c0) = (
        rng.vec(m * k, 1.0),
        rng.vec(n * k, 1.0),
        rng.vec(m * wide, 1.0),
    );
    let (ta, tb, tc) = (
        upload_on(g, &[m, k], &a),
        upload_on(g, &[n, k], &b),
        upload_on(g, &[m, wide], &c0),
    );
    let guard = hold.then(|| g.hold_images(std::slice::from_ref(&tb)));
    let mut got = vec![];
    let ran = kernels_run(g, || {
        got = run_on(g, |s| {
            Gemm {
                m,
                n,
                k,
                batch: [1, 1],
                a: View::matrix(&ta, m, k, false),
                b: View::matrix(&tb, n, k, true),
                c: View {
                    t: &tc,
                    off,
                    rs: wide,
                    cs: 1,
                    bs: [m * wide, 0],
                },
                bias: None,
                alpha: 1.0,
                accumulate: true,
            }
            .record(s)?;
            Ok(vec![tc.clone()])
        });
    });
    let held = g.stats().images_held;
    drop(guard);
    let prod = r::matmul(&a, &b, None, 1, m, n, k, false, true, true);
    let mut want = c0;
    for i in 0..m {
        for j in 0..n {
            want[i * wide + off + j] += prod[i * n + j];
        }
    }
    IntoWideView {
        got: got.remove(0),
        want,
        ran,
        held,
    }
}

/// The LM head over row blocks writes each block's columns of a wider C: an offset, strided view,
/// here also accumulating into what C held.
#[test]
fn few_row_products_into_a_strided_view() {
    let (m, n, k) = (2, 68, 16);
    let v = into_wide_view(&own_device(true), (m, n, k), false);
    assert!(v.ran.contains(&"matmul_rows"), "{:?}", v.ran);
    assert_close("rows kernel into a view", &v.got, &v.want, tol(k), 1e-5);
}

/// B along n over chunks of K, with a bias (added once) and accumulating into C: the residual
/// connections of GPT-2's blocks, one token at a time.
#[test]
fn few_row_products_over_chunks_of_k_accumulate_with_a_bias() {
    let (m, n, k) = (3, 80, 256);
    let mut rng = Rng::new(9);
    let (a, b, bias, c0) = (
        rng.vec(m * k, 1.0),
        rng.vec(k * n, 1.0),
        rng.vec(n, 1.0),
        rng.vec(m * n, 1.0),
    );
    let (ta, tb, tbias, tc) = (
        upload(&[m, k], &a),
        upload(&[k, n], &b),
        upload(&[n], &bias),
        upload(&[m, n], &c0),
    );
    let got = run(|s| {
        Gemm {
            m,
            n,
            k,
            batch: [1, 1],
            a: View::matrix(&ta, m, k, false),
            b: View::matrix(&tb, k, n, false),
            c: View::matrix(&tc, m, n, false),
            bias: Some(&tbias),
            alpha: 1.0,
            accumulate: true,
        }
        .record(s)?;
        Ok(vec![tc.clone()])
    });
    let prod = r::matmul(&a, &b, Some(&bias), 1, m, n, k, false, false, true);
    let want: Vec<f64> = prod.iter().zip(&c0).map(|(p, c)| p + c).collect();
    assert_close("rows kernel over chunks of K", &got[0], &want, tol(k), 1e-5);
}

/// With B's tensor held (`Gpu::hold_images`, as generation holds the weights), few-row products
/// read B from an image made once and kept: `matmul_rows_image`, along n and along k, 1 to 4 rows,
/// with a bias. On a device whose images are at most 64 texels a side, 257 columns along k run in
/// five parts (one image each); a bias there, or a K of more than 64 rows along n, keeps
/// `matmul_rows` (as does a row pitch that is not a multiple of 256 bytes, which no image copy
/// takes). The images go when the hold ends.
#[test]
fn few_row_products_from_held_images() {
    let mut g = own_device(true);
    g.limits.max_texture_dimension_2d = 64;
    for m in 1..=4 {
        // (n, k, B transposed (along k), bias, images held: None where matmul_rows runs)
        for (n, k, tb, bias, images) in [
            (128, 64, false, true, Some(1)),
            (128, 64, false, false, Some(1)),
            // Two workgroups of 128 columns, the second half full.
            (192, 64, false, true, Some(1)),
            (64, 72, false, false, None),
            (257, 128, true, false, Some(5)),
            (257, 128, true, true, None),
            (64, 64, true, true, Some(1)),
        ] {
            let what = format!("m={m} n={n} k={k} tb={tb} bias={bias}");
            let mut rng = Rng::new((m * n + k) as u64);
            let (a, b, bv) = (rng.vec(m * k, 1.0), rng.vec(k * n, 1.0), rng.vec(n, 1.0));
            let want = r::matmul(&a, &b, bias.then_some(&bv[..]), 1, m, n, k, false, tb, true);
            let ta = upload_on(&g, &[m, k], &a);
            let t_b = upload_on(&g, &if tb { [n, k] } else { [k, n] }, &b);
            let t_bias = upload_on(&g, &[n], &bv);
            let held = g.hold_images(std::slice::from_ref(&t_b));
            for round in 0..2 {
                let mut got = vec![];
                let ran = kernels_run(&g, || {
                    got = run_on(&g, |s| {
                        Ok(vec![matmul(
                            s,
                            &ta,
                            &t_b,
                            false,
                            tb,
                            bias.then_some(&t_bias),
                        )?])
                    });
                });
                assert_close(&what, &got[0], &want, tol(k), 1e-5);
                let kernel = if images.is_some() {
                    "matmul_rows_image"
                } else {
                    "matmul_rows"
                };
                assert!(ran.contains(&kernel), "{what}: {ran:?}");
                assert!(
                    !ran.contains(&"matmul_rows_image") || images.is_some(),
                    "{what}"
                );
                // Made in the first round, reused in the second.
                assert_eq!(
                    g.stats().images_held,
                    images.unwrap_or(0),
                    "{what}, round {round}"
                );
            }
            drop(held);
            assert_eq!(g.stats().images_held, 0, "{what}");
        }
    }
}

/// The LM head's case: B along k in parts, each writing its columns of a wider C at an offset and
/// accumulating into what C held.
#[test]
fn held_image_products_into_a_strided_view() {
    let mut g = own_device(true);
    g.limits.max_texture_dimension_2d = 32;
    let k = 64;
    let v = into_wide_view(&g, (2, 68, k), true);
    assert_eq!(v.ran, ["matmul_rows_image"]);
    assert_eq!(v.held, 3, "68 columns in parts of 32");
    assert_close("held images into a view", &v.got, &v.want, tol(k), 1e-5);
}

/// A linear layer's backward where dY's rows are not whole vec4s (the logits over GPT-2's 50,257
/// words): dY is read through a copy at a padded pitch, so with an [out, in] weight (the tied LM
/// head) no product falls to the scalar kernel; dX, dW and db match the reference in both weight
/// layouts, with and without images. (An [in, out] weight of odd out is itself unaligned.)
#[test]
fn linear_backward_over_odd_rows_reads_them_padded() {
    use amad::model::linear::{linear_bwd, Dx, Grad, Layout};
    let (rows, inp, out) = (24, 64, 130);
    let mut rng = Rng::new(12);
    let (x, w, dy) = (
        rng.vec(rows * inp, 1.0),
        rng.vec(inp * out, 1.0),
        rng.vec(rows * out, 1.0),
    );
    // Per layout, the outputs on a device without images, to compare with the image device's.
    let mut on_buffers: Vec<Vec<Vec<f32>>> = vec![];
    for images in [false, true] {
        let g = own_device(images);
        for (li, layout) in [Layout::OutIn, Layout::InOut].into_iter().enumerate() {
            let what = format!("{layout:?}, images {images}");
            // W as stored: [out, in] or [in, out]; the reference reads it as the [in, out] map.
            let (w_shape, w_io) = match layout {
                Layout::OutIn => {
                    let t: Vec<f64> = (0..out * inp)
                        .map(|i| w[(i % inp) * out + i / inp])
                        .collect();
                    ([out, inp], t)
                }
                Layout::InOut => ([inp, out], w.clone()),
            };
            let (tx, tw, tdy) = (
                upload_on(&g, &[rows, inp], &x),
                upload_on(&g, &w_shape, &w_io),
                upload_on(&g, &[rows, out], &dy),
            );
            let (dw, db) = (
                upload_on(&g, &w_shape, &vec![0.0; inp * out]),
                upload_on(&g, &[out], &vec![0.0; out]),
            );
            let mut got = vec![];
            let ran = kernels_run(&g, || {
                got = run_on(&g, |s| {
                    let p = Grad {
                        w: &tw,
                        layout,
                        dw: &dw,
                        db: Some(&db),
                    };
                    Ok(vec![
                        linear_bwd(s, &tx, p, &tdy, Dx::New)?,
                        dw.clone(),
                        db.clone(),
                    ])
                });
            });
            if layout == Layout::OutIn {
                assert!(
                    !ran.contains(&"matmul"),
                    "{what}: the scalar kernel ran: {ran:?}"
                );
                // On images both products read the padded copy from one: dW along its 130 rows
                // (a last partial texel from the padding), dX along K (the remainder through the
                // scalar bindings).
                if images {
                    assert!(
                        !ran.contains(&"matmul_vec4"),
                        "{what}: a product left the images: {ran:?}"
                    );
                }
            }
            assert!(ran.contains(&"pad_rows"), "{what}: {ran:?}");
            // The image kernels give the vec4 kernel's bits.
            if images {
                for (i, name) in ["dX", "dW", "db"].iter().enumerate() {
                    same_bits(&format!("{name}, {what}"), &got[i], &on_buffers[li][i]);
                }
            } else {
                on_buffers.push(got.clone());
            }
            let dx_ref = r::matmul(&dy, &w, None, 1, rows, inp, out, false, true, true);
            let dw_io = r::matmul(&x, &dy, None, 1, inp, out, rows, true, false, true);
            let dw_ref: Vec<f64> = match layout {
                Layout::OutIn => (0..out * inp)
                    .map(|i| dw_io[(i % inp) * out + i / inp])
                    .collect(),
                Layout::InOut => dw_io,
            };
            assert_close(&format!("dX, {what}"), &got[0], &dx_ref, tol(out), 1e-5);
            assert_close(&format!("dW, {what}"), &got[1], &dw_ref, tol(rows), 1e-5);
            assert_close(
                &format!("db, {what}"),
                &got[2],
                &r::sum_columns(&dy, out),
                tol(rows),
                1e-5,
            );
        }
    }
}

/// B along k with more columns than an image has rows (an LM head): on a device that reads images
/// the product runs in column parts on the image kernels, bit for bit what the vec4 kernel gives
/// on buffers, and accumulating into an offset view as the LM head's row blocks do.
#[test]
fn column_parts_give_the_vec4_kernels_bits() {
    let (m, n, k) = (8, 200, 64);
    let mut small = own_device(true);
    small.limits.max_texture_dimension_2d = 64;
    let parts = into_wide_view(&small, (m, n, k), false);
    assert_eq!(parts.ran, [subgroup_matmul_kernel(&small)]);
    let whole = into_wide_view(&own_device(false), (m, n, k), false);
    assert_eq!(whole.ran, ["matmul_vec4"]);
    same_bits("column parts against vec4", &parts.got, &whole.got);
    assert_close("column parts", &parts.got, &parts.want, tol(k), 1e-5);
}

/// The workgroup-memory kernel (`Gpu::shared_matmul`: for GPUs, opt-in) against the vec4 kernel
/// it stands in for, each on a device without images: every orientation, tiles cut by M and N, K
/// over and under a chunk of 16 (with steps of 4 left after the last chunk, and a remainder of
/// 1-3 where the layout allows), a batch, a bias and a B shared by the batch. Against the reference
/// (in `check`) and bit for bit: each element is the same chain of multiply-adds.
#[test]
fn workgroup_tiles_give_the_vec4_kernels_bits() {
    let shared = own_device(false);
    shared.set_shared_matmul(true);
    let vec4 = own_device(false);
    let mut case = 100;
    let all = [(false, false), (true, false), (false, true), (true, true)];
    let cases = [
        ((64, 64, 64), &all[..]),
        ((68, 36, 28), &all[..]),
        ((132, 72, 36), &all[..]),
        ((8, 200, 4), &all[..]),
        // A stored [k, m] and B [k, n]: any K keeps their rows aligned.
        ((68, 36, 39), &all[1..2]),
        ((64, 128, 17), &all[1..2]),
    ];
    for ((m, n, k), orientations) in cases {
        for &(ta, tb) in orientations {
            case += 1;
            let (b_shared, bias) = (case % 2 == 0, case % 3 == 0);
            let what = format!("m={m} n={n} k={k} ta={ta} tb={tb}");
            let mut outs = vec![];
            for (g, kernel) in [(&shared, "matmul_shared"), (&vec4, "matmul_vec4")] {
                let mut got = vec![];
                let ran = kernels_run(g, || {
                    got = check(g, case, 2, m, n, k, ta, tb, b_shared, bias);
                });
                assert_eq!(ran, [kernel], "{what}");
                outs.push(got);
            }
            same_bits(&what, &outs[0], &outs[1]);
        }
    }
}
