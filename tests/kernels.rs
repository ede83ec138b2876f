//! Every non-matmul kernel against its CPU reference, forward and backward; every reference
//! backward against central finite differences in f64.

mod common;
use amad::ops::elementwise::{activation, activation_bwd, add, axpy, bias_add, Activation};
use amad::ops::{attention, embedding, image, layernorm, loss, optim, reduce, softmax};
use amad::reference as r;
use amad::rng::Rng;
use amad::Tensor;
use common::*;

// Finite differences use eps = 1e-6 in f64: truncation error ~eps² and rounding ~1e-16/eps,
// both far below 1e-7, so 1e-6 relative (plus 1e-8 absolute) separates a right gradient from a
// wrong one by orders of magnitude.
const FD_EPS: f64 = 1e-6;
const FD_ATOL: f64 = 1e-8;
const FD_RTOL: f64 = 1e-6;

#[test]
fn add_bias_add_axpy() {
    let mut rng = Rng::new(1);
    let (x, y, b) = (rng.vec(3 * 70, 1.0), rng.vec(3 * 70, 1.0), rng.vec(70, 1.0));
    let (tx, ty, tb) = (
        upload(&[3, 70], &x),
        upload(&[3, 70], &y),
        upload(&[70], &b),
    );
    let acc = upload(&[3, 70], &y);
    let got = run(|s| {
        let sum = add(s, &tx, &ty)?;
        let biased = bias_add(s, &tx, &tb)?;
        axpy(s, &acc, &tx, -2.0)?;
        Ok(vec![sum, biased, acc.clone()])
    });
    // One f32 rounding of inputs in [-3, 3]: 1e-6 absolute.
    let want_sum: Vec<f64> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    let want_axpy: Vec<f64> = x.iter().zip(&y).map(|(a, b)| b - 2.0 * a).collect();
    assert_close("add", &got[0], &want_sum, 1e-6, 0.0);
    assert_close("bias_add", &got[1], &r::bias_add(&x, &b), 1e-6, 0.0);
    assert_close("axpy", &got[2], &want_axpy, 1e-6, 0.0);
}

#[test]
fn gelu_both_forms_forward_and_backward() {
    let mut rng = Rng::new(2);
    // Include the tails, where erf saturates and tanh could overflow.
    let mut x = rng.vec(1019, 4.0);
    x.extend([-20.0, -9.0, 0.0, 9.0, 20.0]);
    let dy = rng.vec(x.len(), 1.0);
    let images = own_device(true);
    let buffers = own_device(false);
    for (kind, f, df) in [
        (
            Activation::GeluErf,
            r::gelu_erf as fn(f64) -> f64,
            r::gelu_erf_grad as fn(f64) -> f64,
        ),
        (Activation::GeluTanh, r::gelu_tanh, r::gelu_tanh_grad),
    ] {
        let want: Vec<f64> = x.iter().map(|&v| f(v)).collect();
        let want_dx: Vec<f64> = x.iter().zip(&dy).map(|(&v, g)| g * df(v)).collect();
        // Elementwise, so differentiate element by element: a finite difference of the whole
        // Σ dy·f(x) would bury 1e-8 of rounding noise from its 1,005 terms in each quotient.
        let fd: Vec<f64> = x
            .iter()
            .zip(&dy)
            .map(|(&v, g)| g * (f(v + FD_EPS) - f(v - FD_EPS)) / (2.0 * FD_EPS))
            .collect();
        assert_close64(
            &format!("{kind:?} grad vs finite differences"),
            &want_dx,
            &fd,
            FD_ATOL,
            FD_RTOL,
        );
        // Rows of 1,024 or 128 floats fit images (on a device that reads them), rows of 32 do
        // not; both paths must give the same bits.
        for (shape, fits) in [
            (vec![1024], true),
            (vec![8, 128], true),
            (vec![32, 32], false),
        ] {
            let mut results = vec![];
            for (g, on) in [(&images, true), (&buffers, false)] {
                let what = format!("{kind:?} {shape:?} images={on}");
                let (tx, tdy) = (upload_on(g, &shape, &x), upload_on(g, &shape, &dy));
                let mut got = vec![];
                let ran = kernels_run(g, || {
                    got = run_on(g, |s| {
                        Ok(vec![
                            activation(s, &tx, kind)?,
                            activation_bwd(s, &tx, &tdy, kind)?,
                        ])
                    })
                });
                let form = if kind == Activation::GeluErf {
                    "gelu_erf"
                } else {
                    "gelu_tanh"
                };
                let want_ran: Vec<String> = if on && fits {
                    vec!["gelu_bwd_image".into(), "gelu_fwd_image".into()]
                } else {
                    vec![format!("{form}_bwd"), format!("{form}_fwd")]
                };
                assert_eq!(ran, want_ran, "{what}");
                // erf by A&S 7.1.26 (error 1.5e-7) times |x| <= 20, plus f32 rounding: 4e-6.
                assert_close(&format!("{what} forward"), &got[0], &want, 4e-6, 1e-6);
                assert_close(&format!("{what} backward"), &got[1], &want_dx, 4e-6, 1e-5);
                results.push(got);
            }
            assert!(
                results[0] == results[1],
                "{kind:?} {shape:?}: the paths differ"
            );
        }
    }
}

/// ReLU, which a config may name instead of a GELU: buffer kernels on every device, the slope 0
/// at 0 as torch's, and the finite differences of the reference away from the kink.
#[test]
fn relu_forward_and_backward() {
    let mut rng = Rng::new(21);
    let mut x = rng.vec(1021, 3.0);
    x.extend([-2.0, 0.0, 1e-30, -1e-30]);
    let dy = rng.vec(x.len(), 1.0);
    let want: Vec<f64> = x.iter().map(|&v| r::relu(v)).collect();
    let want_dx: Vec<f64> = x
        .iter()
        .zip(&dy)
        .map(|(&v, g)| g * r::relu_grad(v))
        .collect();
    for (&v, (&g, &d)) in x.iter().zip(dy.iter().zip(&want_dx)) {
        if v.abs() > 10.0 * FD_EPS {
            let fd = g * (r::relu(v + FD_EPS) - r::relu(v - FD_EPS)) / (2.0 * FD_EPS);
            assert!(
                (fd - d).abs() <= FD_ATOL + FD_RTOL * d.abs(),
                "{v}: {d} against {fd}"
            );
        }
    }
    let g = own_device(true);
    let (tx, tdy) = (
        upload_on(&g, &[x.len()], &x),
        upload_on(&g, &[x.len()], &dy),
    );
    let mut got = vec![];
    let ran = kernels_run(&g, || {
        got = run_on(&g, |s| {
            Ok(vec![
                activation(s, &tx, Activation::Relu)?,
                activation_bwd(s, &tx, &tdy, Activation::Relu)?,
            ])
        })
    });
    assert_eq!(ran, ["relu_bwd", "relu_fwd"]);
    // A maximum and a select: exact up to the f32 rounding of the uploads.
    assert_close("relu forward", &got[0], &want, 0.0, 6e-8);
    assert_close("relu backward", &got[1], &want_dx, 0.0, 6e-8);
}

#[test]
fn layernorm_forward_and_backward() {
    let mut rng = Rng::new(3);
    let (rows, cols, eps) = (37, 48, 1e-5);
    // A large common offset checks the two-pass variance.
    let x: Vec<f64> = rng.vec(rows * cols, 2.0).iter().map(|v| v + 30.0).collect();
    let (gamma, beta, dy) = (
        rng.vec(cols, 1.0),
        rng.vec(cols, 1.0),
        rng.vec(rows * cols, 1.0),
    );
    let (dx, dg, db) = r::layernorm_bwd(&x, &gamma, &dy, eps);
    let lx = |x: &[f64], g: &[f64], b: &[f64]| dot(&dy, &r::layernorm(x, g, b, eps).0);
    assert_close64(
        "dx vs FD",
        &dx,
        &finite_diff(&x, FD_EPS, |x| lx(x, &gamma, &beta)),
        1e-6,
        FD_RTOL,
    );
    assert_close64(
        "dgamma vs FD",
        &dg,
        &finite_diff(&gamma, FD_EPS, |g| lx(&x, g, &beta)),
        FD_ATOL,
        FD_RTOL,
    );
    assert_close64(
        "dbeta vs FD",
        &db,
        &finite_diff(&beta, FD_EPS, |b| lx(&x, &gamma, b)),
        FD_ATOL,
        FD_RTOL,
    );
    check_layernorm_gpu(gpu(), &x, &gamma, &beta, &dy, None, rows, cols, eps);
    // Over 2·64 rows the parameter gradients are summed in two passes (chunks of rows, then the
    // chunks): 300 rows, the GPU against the reference only.
    let rows = 300;
    let x = rng.vec(rows * cols, 2.0);
    let dy = rng.vec(rows * cols, 1.0);
    check_layernorm_gpu(gpu(), &x, &gamma, &beta, &dy, None, rows, cols, eps);
}

/// On a CPU adapter LayerNorm reads x, gamma, beta and dy from images where rows of `cols` fit
/// one (a multiple of 64 floats): each case runs on a device with image operands on and on one
/// with them off, against the reference, with and without a residual gradient to add dx into;
/// each must take the kernels its device and width call for, and both paths give the same bits.
#[test]
fn layernorm_image_and_buffer_kernels() {
    let images = own_device(true);
    let buffers = own_device(false);
    let mut rng = Rng::new(33);
    for (cols, fits) in [(64, true), (128, true), (48, false)] {
        for (rows, residual) in [(37, false), (300, true), (5, true)] {
            let x: Vec<f64> = rng.vec(rows * cols, 2.0).iter().map(|v| v + 3.0).collect();
            let (gamma, beta) = (rng.vec(cols, 1.0), rng.vec(cols, 1.0));
            let (dy, res) = (rng.vec(rows * cols, 1.0), rng.vec(rows * cols, 1.0));
            let res = residual.then_some(&res[..]);
            let mut results = vec![];
            for (g, on) in [(&images, true), (&buffers, false)] {
                let mut got = vec![];
                let ran = kernels_run(g, || {
                    got = check_layernorm_gpu(g, &x, &gamma, &beta, &dy, res, rows, cols, 1e-5)
                });
                let what = format!("{rows} x {cols} images={on}");
                for k in ["layernorm_fwd", "layernorm_bwd_x", "layernorm_bwd_params"] {
                    let want = if on && fits {
                        format!("{k}_image")
                    } else {
                        k.to_string()
                    };
                    assert!(ran.contains(&want.as_str()), "{what}: ran {ran:?}");
                }
                results.push(got);
            }
            assert!(
                results[0] == results[1],
                "{rows} x {cols}: the paths differ"
            );
        }
    }
}

/// LayerNorm forward and backward on `g` against the reference; the parameter gradients are
/// added to what dgamma and dbeta held (ones here), dx to `residual` when given. Returns y, dx,
/// dgamma, dbeta.
#[allow(clippy::too_many_arguments)]
fn check_layernorm_gpu(
    g: &amad::Gpu,
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    dy: &[f64],
    residual: Option<&[f64]>,
    rows: usize,
    cols: usize,
    eps: f64,
) -> Vec<Vec<f32>> {
    let (y, _) = r::layernorm(x, gamma, beta, eps);
    let (mut dx, dg, db) = r::layernorm_bwd(x, gamma, dy, eps);
    if let Some(res) = residual {
        dx.iter_mut().zip(res).for_each(|(d, r)| *d += r);
    }
    let (tx, tg, tb, tdy) = (
        upload_on(g, &[rows, cols], x),
        upload_on(g, &[cols], gamma),
        upload_on(g, &[cols], beta),
        upload_on(g, &[rows, cols], dy),
    );
    let tres = residual.map(|r| upload_on(g, &[rows, cols], r));
    let ones = vec![1.0; cols];
    let got = run_on(g, |s| {
        let (y, stats) = layernorm::layernorm(s, &tx, &tg, &tb, eps as f32)?;
        let (dg, db) = (upload_on(g, &[cols], &ones), upload_on(g, &[cols], &ones));
        let dx = layernorm::layernorm_bwd(s, &tx, &tg, &stats, &tdy, &dg, &db, tres)?;
        Ok(vec![y, dx, dg, db])
    });
    let plus_one = |v: Vec<f64>| v.iter().map(|x| x + 1.0).collect::<Vec<_>>();
    // Normalised values are O(1) but x may carry an offset of 30 in f32 (resolution 2e-6, times
    // rstd ~ 0.9): 2e-5 absolute; parameter gradients sum up to 300 rows: 1e-4 · rows / 37.
    let sum_tol = 1e-4 * (rows as f64 / 37.0).max(1.0);
    assert_close(
        &format!("layernorm y ({rows} rows)"),
        &got[0],
        &y,
        2e-5,
        1e-5,
    );
    assert_close(
        &format!("layernorm dx ({rows} rows)"),
        &got[1],
        &dx,
        2e-5,
        1e-4,
    );
    assert_close(
        &format!("layernorm dgamma ({rows} rows)"),
        &got[2],
        &plus_one(dg),
        sum_tol,
        1e-5,
    );
    assert_close(
        &format!("layernorm dbeta ({rows} rows)"),
        &got[3],
        &plus_one(db),
        sum_tol,
        1e-5,
    );
    got
}

/// Column sums added into the first columns of `out`: one pass up to 2·64 rows, then passes over
/// chunks of 64 rows (two passes at 129 and 300 rows, three at 9,000). Each runs on a device with
/// image operands on and on one with them off: rows of a multiple of 64 floats, summed four
/// columns at a time, are read from an image there, and both paths give the same bits.
#[test]
fn column_sums_in_passes() {
    let images = own_device(true);
    let buffers = own_device(false);
    let mut rng = Rng::new(14);
    // (row length, columns summed, whether the rows fit an image)
    for (cols, summed, fits) in [
        (7, 5, false),
        (128, 128, true),
        (64, 60, true),
        (64, 62, false),
    ] {
        for rows in [1, 128, 129, 300, 9000] {
            let x = rng.vec(rows * cols, 1.0);
            let init = rng.vec(summed, 1.0);
            let sums = r::sum_columns(&x, cols);
            let want: Vec<f64> = init.iter().zip(&sums).map(|(a, b)| a + b).collect();
            let mut results = vec![];
            for (g, on) in [(&images, true), (&buffers, false)] {
                let (tx, tout) = (
                    upload_on(g, &[rows, cols], &x),
                    upload_on(g, &[summed], &init),
                );
                let mut got = vec![];
                let ran = kernels_run(g, || {
                    got = run_on(g, |s| {
                        reduce::sum_columns(s, &tx, &tout)?;
                        Ok(vec![tout.clone()])
                    })
                });
                // Images where the device and the rows call for them (a later pass sums the
                // [chunks, summed] partials, by either kernel).
                let image = on && fits;
                assert_eq!(
                    ran.contains(&"sum_columns_image"),
                    image,
                    "{rows} x {cols} images={on}: ran {ran:?}"
                );
                // f32 sums of up to 9,000 values in [-1, 1]: 4e-6 per term.
                assert_close(
                    &format!("column sums of {rows} x {cols} images={on}"),
                    &got[0],
                    &want,
                    4e-6 * rows as f64,
                    1e-5,
                );
                results.push(got);
            }
            assert!(
                results[0] == results[1],
                "{rows} x {cols}: the paths differ"
            );
        }
    }
}

#[test]
fn row_softmax_forward_and_backward() {
    let mut rng = Rng::new(4);
    let (rows, cols) = (19, 33);
    let x = rng.vec(rows * cols, 5.0);
    let dy = rng.vec(rows * cols, 1.0);
    let y = r::softmax(&x, cols);
    let dx = r::softmax_bwd(&y, &dy, cols, 1.0);
    let fd = finite_diff(&x, FD_EPS, |x| dot(&dy, &r::softmax(x, cols)));
    assert_close64("softmax dx vs FD", &dx, &fd, FD_ATOL, FD_RTOL);
    let (tx, tdy) = (upload(&[rows, cols], &x), upload(&[rows, cols], &dy));
    let got = run(|s| {
        let y = softmax::softmax(s, &tx)?;
        let dx = softmax::softmax_bwd(s, &y, &tdy, 1.0)?;
        Ok(vec![y, dx])
    });
    // Probabilities in [0, 1], exp in f32: 1e-6 absolute.
    assert_close("softmax y", &got[0], &y, 1e-6, 1e-5);
    assert_close("softmax dx", &got[1], &dx, 2e-6, 1e-5);
}

/// Attention forward and backward, with the masks, against the reference; the reference backward
/// against finite differences (on a smaller problem).
#[test]
fn attention_forward_and_backward_with_masks() {
    let mut rng = Rng::new(5);
    for (causal, padded, (b, h, tq, tk, d)) in [
        (false, false, (2, 3, 5, 7, 4)),
        (true, false, (2, 2, 6, 6, 8)),
        (false, true, (2, 2, 4, 9, 3)),
        (true, true, (1, 4, 13, 13, 16)),
        // Past one 8 × 8 block in every direction, a head width off the blocks' multiple.
        (false, true, (2, 2, 17, 21, 12)),
    ] {
        let a = r::AttnDims { b, h, tq, tk, d };
        // Batch 0 keeps all keys; batch 1 loses its last two.
        let (x, mask) = attention_inputs(&mut rng, a, 2);
        let [q, k, v, dout] = &x;
        let m = r::Masks {
            causal,
            key_mask: padded.then_some(&mask[..]),
        };
        let (out, probs) = r::attention(q, k, v, a, m);
        // Every other case has a gradient arriving at P too (a distillation loss on the maps).
        let extra = (b == 2).then(|| rng.vec(b * h * tq * tk, 1.0));
        let extra = extra.as_deref();
        let (dq, dk, dv) = r::attention_bwd(q, k, v, dout, extra, a, m);
        let lq = |q: &[f64], k: &[f64], v: &[f64]| {
            let (o, p) = r::attention(q, k, v, a, m);
            dot(dout, &o) + extra.map_or(0.0, |e| dot(e, &p))
        };
        assert_close64(
            "attention dq vs FD",
            &dq,
            &finite_diff(q, FD_EPS, |x| lq(x, k, v)),
            FD_ATOL,
            FD_RTOL,
        );
        assert_close64(
            "attention dk vs FD",
            &dk,
            &finite_diff(k, FD_EPS, |x| lq(q, x, v)),
            FD_ATOL,
            FD_RTOL,
        );
        assert_close64(
            "attention dv vs FD",
            &dv,
            &finite_diff(v, FD_EPS, |x| lq(q, k, x)),
            FD_ATOL,
            FD_RTOL,
        );
        attention_on(
            gpu(),
            &format!("causal={causal} padded={padded} extra={}", extra.is_some()),
            a,
            m,
            None,
            [q, k, v, dout],
            extra,
            [&out, &probs, &dq, &dk, &dv],
        );
    }
}

/// Random Q, K, V and dO of an attention case, and a key mask (1 = valid) in which batch 1 loses
/// its last `cut` keys.
fn attention_inputs(rng: &mut Rng, a: r::AttnDims, cut: usize) -> ([Vec<f64>; 4], Vec<f64>) {
    let r::AttnDims { b, h, tq, tk, d } = a;
    let x = [
        rng.vec(b * tq * h * d, 1.0),
        rng.vec(b * tk * h * d, 1.0),
        rng.vec(b * tk * h * d, 1.0),
        rng.vec(b * tq * h * d, 1.0),
    ];
    let mask = (0..b * tk)
        .map(|i| {
            if i / tk == 1 && i % tk >= tk - cut {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    (x, mask)
}

/// Attention forward and backward on `g` against the reference outputs `want` (O, P, dQ, dK, dV)
/// of the inputs `x` (Q, K, V, dO). Q, K and V are whole [B, T, H·D] tensors when `fused` is None;
/// with Some(pad) they lie in the fused layouts of transformers' projections, each token `pad`
/// columns wider: self-attention reads all three from one [B, T, 3·H·D + pad] tensor,
/// cross-attention Q from its own [B, Tq, H·D + pad] and K, V from one [B, Tk, 2·H·D + pad].
#[allow(clippy::too_many_arguments)]
fn attention_on(
    g: &amad::Gpu,
    what: &str,
    a: r::AttnDims,
    m: r::Masks,
    fused: Option<usize>,
    x: [&[f64]; 4],
    extra: Option<&[f64]>,
    want: [&[f64]; 5],
) -> Vec<Vec<f32>> {
    let r::AttnDims { b, h, tq, tk, d } = a;
    let w = h * d;
    let pad = fused.unwrap_or(0);
    // Token rows of `parts` side by side, each row `pad` wider.
    let interleave = |parts: &[&[f64]], len: usize| -> Vec<f64> {
        let mut out = vec![];
        for t in 0..b * len {
            for p in parts {
                out.extend_from_slice(&p[t * w..(t + 1) * w]);
            }
            out.extend(std::iter::repeat_n(0.25, pad));
        }
        out
    };
    // The i-th block of H·D columns of a fused tensor.
    fn seq(t: &Tensor, i: usize, w: usize) -> attention::Seq<'_> {
        attention::Seq {
            t,
            off: i * w,
            stride: t.shape()[2],
        }
    }
    let (tensors, seqs): (Vec<Tensor>, [(usize, usize); 3]) = if fused.is_none() {
        let ts = vec![
            upload_on(g, &[b, tq, w], x[0]),
            upload_on(g, &[b, tk, w], x[1]),
            upload_on(g, &[b, tk, w], x[2]),
        ];
        (ts, [(0, 0), (1, 0), (2, 0)])
    } else if tq == tk {
        let qkv = interleave(&[x[0], x[1], x[2]], tq);
        (
            vec![upload_on(g, &[b, tq, 3 * w + pad], &qkv)],
            [(0, 0), (0, 1), (0, 2)],
        )
    } else {
        let q = interleave(&[x[0]], tq);
        let kv = interleave(&[x[1], x[2]], tk);
        let ts = vec![
            upload_on(g, &[b, tq, w + pad], &q),
            upload_on(g, &[b, tk, 2 * w + pad], &kv),
        ];
        (ts, [(0, 0), (1, 0), (1, 1)])
    };
    let gdo = upload_on(g, &[b, tq, w], x[3]);
    let gextra = extra.map(|e| upload_on(g, &[b, h, tq, tk], e));
    let gmask = m.key_mask.map(|km| upload_on(g, &[b, tk], km));
    let got = run_on(g, |s| {
        let masks = softmax::Masks {
            causal: m.causal,
            key_mask: gmask.as_ref(),
        };
        let dims = attention::Dims::new(b, h, tq, tk, d);
        let [q, k, v] = seqs.map(|(t, i)| seq(&tensors[t], i, w));
        let (o, p) = attention::attention(s, dims, q, k, v, masks)?;
        // Gradients of K and V land in one fused [B, Tk, 2·H·D] buffer, as GPT-2's
        // cross-attention produces them; dQ in its own.
        let dq = s.empty(&[b, tq, w])?;
        let dkv = s.empty(&[b, tk, 2 * w])?;
        let part = attention::Seq::part;
        let grads = attention::Grads {
            dq: attention::Seq::whole(&dq),
            dk: part(&dkv, 0, 2),
            dv: part(&dkv, 1, 2),
            dprobs: gextra.as_ref(),
        };
        let saved = attention::Saved { out: &o, probs: &p };
        attention::attention_bwd(s, dims, q, k, v, saved, &gdo, grads)?;
        let maps = p.maps(s)?;
        Ok(vec![o, maps, dq, dkv, p.padded().clone()])
    });
    // The kept maps pad each row to a multiple of 4 with zeros, and hold the maps before that.
    let row = tk.next_multiple_of(4);
    for (r, cells) in got[4].chunks(row).enumerate() {
        assert_eq!(
            &cells[..tk],
            &got[1][r * tk..(r + 1) * tk],
            "{what}: row {r}"
        );
        assert!(
            cells[tk..].iter().all(|&c| c == 0.0),
            "{what}: row {r} padding {cells:?}"
        );
    }
    // Split the fused gradient back into dK and dV for the comparison.
    let (mut got_dk, mut got_dv) = (vec![], vec![]);
    for row in got[3].chunks(2 * w) {
        got_dk.extend_from_slice(&row[..w]);
        got_dv.extend_from_slice(&row[w..]);
    }
    let what = format!("attention {what}");
    let [out, probs, dq, dk, dv] = want;
    // Sums of up to 16 products of O(1) values through a softmax: 2e-5 absolute.
    assert_close(&format!("{what} out"), &got[0], out, 2e-5, 1e-4);
    assert_close(&format!("{what} probs"), &got[1], probs, 2e-6, 1e-4);
    assert_close(&format!("{what} dq"), &got[2], dq, 2e-5, 1e-4);
    assert_close(&format!("{what} dk"), &got_dk, dk, 2e-5, 1e-4);
    assert_close(&format!("{what} dv"), &got_dv, dv, 2e-5, 1e-4);
    // Masked cells are exactly zero: the distillation losses rely on it.
    for (i, &p) in got[1].iter().enumerate() {
        if probs[i] == 0.0 {
            assert_eq!(p, 0.0, "{what}: masked cell {i} is {p}");
        }
    }
    got
}

/// On a CPU adapter the attention products read Q, K, V and dO from images of their sequences
/// where the rows fit one (pitch a multiple of 64 floats, heads on whole texels): each case runs
/// on a device with image operands on and on one with them off, against the reference, and must
/// take the kernels its device and layout call for.
#[test]
fn attention_image_and_buffer_kernels() {
    let images = own_device(true);
    let buffers = own_device(false);
    let mut rng = Rng::new(55);
    // (causal, padded, dims, pad of the fused layout, whether the sequences fit images)
    for (causal, padded, (b, h, tq, tk, d), pad, fits) in [
        (true, false, (2, 4, 13, 13, 16), 0, true),
        (false, false, (2, 8, 9, 9, 8), 0, true),
        (false, true, (2, 2, 5, 17, 32), 0, true),
        (false, true, (2, 2, 11, 70, 32), 64, true),
        // Heads of 6 columns start mid-texel; rows of 24 floats are not 256 bytes.
        (true, false, (2, 3, 7, 7, 6), 10, false),
        (true, false, (2, 2, 7, 7, 4), 0, false),
    ] {
        let a = r::AttnDims { b, h, tq, tk, d };
        let (x, mask) = attention_inputs(&mut rng, a, 3);
        let [q, k, v, dout] = &x;
        let m = r::Masks {
            causal,
            key_mask: padded.then_some(&mask[..]),
        };
        let (out, probs) = r::attention(q, k, v, a, m);
        // The padded cases also have a gradient arriving at P.
        let extra = padded.then(|| rng.vec(b * h * tq * tk, 1.0));
        let extra = extra.as_deref();
        let (dq, dk, dv) = r::attention_bwd(q, k, v, dout, extra, a, m);
        let mut results = vec![];
        for (g, on) in [(&images, true), (&buffers, false)] {
            let what = format!("{:?} images={on}", (b, h, tq, tk, d, pad));
            let mut ran = kernels_run(g, || {
                results.push(attention_on(
                    g,
                    &what,
                    a,
                    m,
                    Some(pad),
                    [q, k, v, dout],
                    extra,
                    [&out, &probs, &dq, &dk, &dv],
                ))
            });
            ran.sort();
            let suffix = if on && fits { "_image" } else { "" };
            let mut want: Vec<String> = ["apply", "dscores", "row_dots", "scores", "softmax"]
                .iter()
                .map(|k| match *k {
                    "apply" | "dscores" | "scores" => format!("attention_{k}{suffix}"),
                    _ => format!("attention_{k}"),
                })
                .collect();
            // Rows of Tk cells padded to a multiple of 4 are unpadded for reading.
            if tk % 4 != 0 {
                want.push("attention_unpad".into());
            }
            want.sort();
            assert_eq!(ran, want, "{what}");
        }
        // The image kernels add the same terms in the same order: training gives the same bits
        // on either path.
        assert!(
            results[0] == results[1],
            "{:?}: the paths differ",
            (b, h, tq, tk, d)
        );
    }
    assert_eq!(buffers.stats().images_created, 0);
}

#[test]
fn embedding_lookup_and_scatter_add() {
    let (vocab, dim) = (11, 6);
    let mut rng = Rng::new(6);
    let table = rng.vec(vocab * dim, 1.0);
    // Repeated ids (3 three times) and one id past the vocabulary (reads zeros, adds nothing).
    let ids = [3u32, 0, 3, 10, 7, 3, 99, 0];
    let dout = rng.vec(ids.len() * dim, 1.0);
    let want = r::embedding(&ids, &table, dim);
    let want_d = r::embedding_bwd(&ids, &dout, vocab, dim);
    let fd = finite_diff(&table, FD_EPS, |t| dot(&dout, &r::embedding(&ids, t, dim)));
    assert_close64("embedding dtable vs FD", &want_d, &fd, FD_ATOL, FD_RTOL);
    let (tt, tids, tdo) = (
        upload(&[vocab, dim], &table),
        upload_u32(&[ids.len()], &ids),
        upload(&[ids.len(), dim], &dout),
    );
    let got = run(|s| {
        let out = embedding::embedding(s, &tids, &tt)?;
        let d = s.zeros(&[vocab, dim])?;
        embedding::embedding_bwd(s, &tids, &tdo, &d)?;
        Ok(vec![out, d])
    });
    // A copy is exact up to the f32 rounding of the uploaded table (relative 2⁻²⁴); the scatter
    // sums at most 3 values: 1e-6.
    assert_close("embedding", &got[0], &want, 0.0, 6e-8);
    assert_close("embedding grad", &got[1], &want_d, 1e-6, 0.0);
}

/// A table held as row blocks (a table larger than one binding): each block fills the tokens whose
/// ids it holds, and the LM head's product fills each block's columns of the logits. Blocks of
/// 4, 4 and 3 rows of an 11-row table, as `Weights` would lay them out.
#[test]
fn embedding_and_lm_head_from_row_blocks() {
    let (vocab, dim, rows) = (11, 8, 5);
    let mut rng = Rng::new(61);
    let table = rng.vec(vocab * dim, 1.0);
    let ids = [3u32, 0, 10, 7, 4, 8, 99, 3];
    let hidden = rng.vec(rows * dim, 1.0);
    let want = r::embedding(&ids, &table, dim);
    // logits = hidden · tableᵀ
    let want_logits = r::matmul(
        &hidden, &table, None, 1, rows, vocab, dim, false, true, true,
    );
    let tids = upload_u32(&[ids.len()], &ids);
    let th = upload(&[rows, dim], &hidden);
    let blocks: Vec<(usize, amad::Tensor)> = [(0, 4), (4, 4), (8, 3)]
        .iter()
        .map(|&(first, n)| {
            (
                first,
                upload(&[n, dim], &table[first * dim..(first + n) * dim]),
            )
        })
        .collect();
    let got = run(|s| {
        Ok(vec![
            embedding::embedding_rows(s, &tids, &blocks)?,
            amad::model::linear::linear_row_blocks(s, &th, &blocks)?,
        ])
    });
    // Copies are exact up to the f32 rounding of the uploads; sums of 8 products: 1e-6.
    assert_close("embedding from row blocks", &got[0], &want, 0.0, 6e-8);
    assert_close("lm head from row blocks", &got[1], &want_logits, 1e-6, 1e-6);
}

/// A table with fewer rows than half the tokens (GPT-2's positions, a small vocabulary) takes the
/// per-row backward; the gradient adds into what the table's gradient held, and a row no token
/// uses keeps its bits (here -0, which adding 0 would turn into +0).
#[test]
fn embedding_backward_per_row() {
    let (vocab, dim, tokens) = (5, 7, 40);
    let mut rng = Rng::new(16);
    let ids: Vec<u32> = (0..tokens)
        .map(|t| match t % 9 {
            8 => 77,             // past the vocabulary: no gradient
            k => (k % 4) as u32, // rows 0..3; row 4 unused
        })
        .collect();
    let dout = rng.vec(tokens * dim, 1.0);
    let mut init = rng.vec(vocab * dim, 1.0);
    init[4 * dim..].iter_mut().for_each(|v| *v = -0.0);
    let want: Vec<f64> = r::embedding_bwd(&ids, &dout, vocab, dim)
        .iter()
        .zip(&init)
        .map(|(d, i)| d + i)
        .collect();
    // A device of its own: the profile sees only this test's dispatches.
    let g = own_device(false);
    let (tids, tdo, td) = (
        amad::Tensor::from_u32(&g, &[tokens], &ids).unwrap(),
        upload_on(&g, &[tokens, dim], &dout),
        upload_on(&g, &[vocab, dim], &init),
    );
    let mut got = vec![];
    let ran = kernels_run(&g, || {
        got = run_on(&g, |s| {
            embedding::embedding_bwd(s, &tids, &tdo, &td)?;
            Ok(vec![td.clone()])
        })
    });
    assert_eq!(ran, ["embedding_bwd_rows"]);
    // Sums of 10 values in [-1, 1] on top of the initial value: 2e-6.
    assert_close("embedding grad per row", &got[0], &want, 2e-6, 0.0);
    assert!(
        got[0][4 * dim..]
            .iter()
            .all(|v| v.to_bits() == (-0.0f32).to_bits()),
        "the unused row changed: {:?}",
        &got[0][4 * dim..]
    );
}

#[test]
fn vit_tokens_forward_and_backward() {
    let (b, n, d) = (3, 5, 6);
    let mut rng = Rng::new(13);
    let (patches, cls, pos) = (
        rng.vec(b * n * d, 1.0),
        rng.vec(d, 1.0),
        rng.vec((n + 1) * d, 1.0),
    );
    let dy = rng.vec(b * (n + 1) * d, 1.0);
    let want = r::vit_tokens(&patches, &cls, &pos, b, n, d);
    let l = |p: &[f64], c: &[f64], q: &[f64]| dot(&dy, &r::vit_tokens(p, c, q, b, n, d));
    let fd_patch = finite_diff(&patches, FD_EPS, |x| l(x, &cls, &pos));
    let fd_cls = finite_diff(&cls, FD_EPS, |x| l(&patches, x, &pos));
    let fd_pos = finite_diff(&pos, FD_EPS, |x| l(&patches, &cls, x));
    let (tp, tc, tq, tdy) = (
        upload(&[b, n, d], &patches),
        upload(&[1, 1, d], &cls),
        upload(&[1, n + 1, d], &pos),
        upload(&[b, n + 1, d], &dy),
    );
    let got = run(|s| {
        let y = embedding::vit_tokens(s, &tp, &tc, &tq)?;
        let (dc, dq) = (s.zeros(&[1, 1, d])?, s.zeros(&[1, n + 1, d])?);
        let dp = embedding::vit_tokens_bwd(s, &tdy, &dc, &dq)?;
        Ok(vec![y, dp, dc, dq])
    });
    // Sums of two f32 values, or of 3 over the batch: 1e-6.
    assert_close("vit tokens", &got[0], &want, 1e-6, 0.0);
    assert_close("d patches vs FD", &got[1], &fd_patch, 1e-6, 1e-6);
    assert_close("d cls vs FD", &got[2], &fd_cls, 1e-6, 1e-6);
    assert_close("d positions vs FD", &got[3], &fd_pos, 1e-6, 1e-6);
}

#[test]
fn cross_entropy_and_kl_with_ignored_rows() {
    let (rows, vocab, temp) = (7, 13, 2.0);
    let mut rng = Rng::new(8);
    let (zs, zt) = (rng.vec(rows * vocab, 3.0), rng.vec(rows * vocab, 3.0));
    let ign = loss::IGNORE;
    let targets = [4u32, ign, 0, 12, ign, 5, 1];
    let ce = r::cross_entropy(&zs, &targets, vocab, ign);
    let dce = r::cross_entropy_bwd(&zs, &targets, vocab, ign);
    let kl = r::kl_div(&zt, &zs, &targets, vocab, ign, temp);
    let dkl = r::kl_div_bwd(&zt, &zs, &targets, vocab, ign, temp);
    assert_close64(
        "CE grad vs FD",
        &dce,
        &finite_diff(&zs, FD_EPS, |z| r::cross_entropy(z, &targets, vocab, ign)),
        FD_ATOL,
        FD_RTOL,
    );
    assert_close64(
        "KL grad vs FD",
        &dkl,
        &finite_diff(&zs, FD_EPS, |z| {
            r::kl_div(&zt, z, &targets, vocab, ign, temp)
        }),
        FD_ATOL,
        FD_RTOL,
    );
    let (ts, tt, ttg) = (
        upload(&[rows, vocab], &zs),
        upload(&[rows, vocab], &zt),
        upload_u32(&[rows], &targets),
    );
    let got = run(|s| {
        let (l, totals) = loss::cross_entropy(s, &ts, &ttg)?;
        let d = loss::cross_entropy_bwd(s, &ts, &ttg, &totals, 0.5)?;
        let (kl, kt) = loss::kl_div(s, &tt, &ts, &ttg, temp as f32)?;
        let dk = loss::kl_div_bwd(s, &tt, &ts, &ttg, &kt, temp as f32, 1.0)?;
        Ok(vec![l, d, kl, dk, totals])
    });
    // log-sum-exp of 13 logits of magnitude <= 3 in f32: 1e-5 absolute.
    assert_close("CE", &got[0], &[ce], 1e-5, 1e-5);
    let half: Vec<f64> = dce.iter().map(|v| 0.5 * v).collect();
    assert_close("CE grad (upstream 0.5)", &got[1], &half, 1e-6, 1e-5);
    assert_close("KL", &got[2], &[kl], 1e-6, 1e-4);
    assert_close("KL grad", &got[3], &dkl, 1e-6, 1e-4);
    assert_close("CE count", &got[4][1..], &[5.0], 0.0, 0.0);
}

/// GPT-2's 50,257-token vocabulary: lavapipe stops an invocation after 65,535 loop iterations in
/// all, so losses that looped over a whole row in one invocation (max, then sum: two passes) were
/// silently truncated from a vocabulary of 32,768 on (cross-entropy 9.37 for 10.56 here, KL
/// negative); one workgroup per row keeps every invocation to ~200 iterations per pass.
#[test]
fn losses_over_gpt2s_vocabulary() {
    let (rows, vocab, temp) = (3, 50257, 2.0);
    let mut rng = Rng::new(21);
    let (zs, zt) = (rng.vec(rows * vocab, 0.5), rng.vec(rows * vocab, 0.5));
    let ign = loss::IGNORE;
    let targets = [7u32, ign, 50256];
    let ce = r::cross_entropy(&zs, &targets, vocab, ign);
    let dce = r::cross_entropy_bwd(&zs, &targets, vocab, ign);
    let kl = r::kl_div(&zt, &zs, &targets, vocab, ign, temp);
    let dkl = r::kl_div_bwd(&zt, &zs, &targets, vocab, ign, temp);
    let (ts, tt, ttg) = (
        upload(&[rows, vocab], &zs),
        upload(&[rows, vocab], &zt),
        upload_u32(&[rows], &targets),
    );
    let got = run(|s| {
        let (l, totals) = loss::cross_entropy(s, &ts, &ttg)?;
        let d = loss::cross_entropy_bwd(s, &ts, &ttg, &totals, 1.0)?;
        let (kl, kt) = loss::kl_div(s, &tt, &ts, &ttg, temp as f32)?;
        let dk = loss::kl_div_bwd(s, &tt, &ts, &ttg, &kt, temp as f32, 1.0)?;
        Ok(vec![l, d, kl, dk])
    });
    assert!(kl > 0.0 && kl < 0.05, "the reference KL is small: {kl}");
    // CE ≈ ln 50257 ≈ 10.8: f32 rounding of the log-sum-exp, 2e-5 absolute.
    assert_close("CE", &got[0], &[ce], 2e-5, 0.0);
    assert_close("KL", &got[2], &[kl], 2e-6, 0.0);
    // Probabilities near 1/50257 over 2 counted rows: gradients ~1e-5, f32-exact to 1e-10.
    assert_close("CE grad", &got[1], &dce, 1e-10, 1e-4);
    assert_close("KL grad", &got[3], &dkl, 1e-10, 1e-4);
}

#[test]
fn sum_mean_and_their_backward() {
    let mut rng = Rng::new(9);
    // Longer than one workgroup pass (256) and not a multiple of it.
    let x = rng.vec(1000, 1.0);
    let tx = upload(&[10, 100], &x);
    let g = upload(&[1], &[3.0]);
    let got = run(|s| {
        let sum = reduce::sum(s, &tx)?;
        let mean = reduce::mean(s, &tx)?;
        let dsum = reduce::broadcast_scalar(s, &g, &[10, 100], 1.0)?;
        let dmean = reduce::broadcast_scalar(s, &g, &[10, 100], 1.0 / 1000.0)?;
        Ok(vec![sum, mean, dsum, dmean])
    });
    let total: f64 = x.iter().sum();
    // 1000 f32 additions of values in [-1, 1]: 1e-4 absolute.
    assert_close("sum", &got[0], &[total], 1e-4, 0.0);
    assert_close("mean", &got[1], &[total / 1000.0], 1e-7, 0.0);
    // The backward of Σ and of the mean, checked against finite differences of those functions.
    let fd_sum = finite_diff(&x[..20], FD_EPS, |v| 3.0 * v.iter().sum::<f64>());
    let fd_mean = finite_diff(&x[..20], FD_EPS, |v| {
        3.0 * (v.iter().sum::<f64>() + x[20..].iter().sum::<f64>()) / 1000.0
    });
    assert_close("d sum", &got[2][..20], &fd_sum, 1e-6, 0.0);
    assert_close("d mean", &got[3][..20], &fd_mean, 1e-9, 1e-6);
}

#[test]
fn grad_norm_clipping_and_adamw_against_reference() {
    let mut rng = Rng::new(10);
    let (p1, g1) = (rng.vec(300, 1.0), rng.vec(300, 1.0));
    let (p2, g2) = (rng.vec(7, 1.0), rng.vec(7, 2.0));
    let cfg = optim::AdamW {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let max_norm = 1.0;
    let (norm, scale) = r::clip_grad_norm(&[&g1, &g2], max_norm);
    assert!(scale < 1.0, "the test should exercise clipping");
    // Reference: three steps with the same (clipped) gradients.
    let (mut rp1, mut rm1, mut rv1) = (p1.clone(), vec![0.0; 300], vec![0.0; 300]);
    let (mut rp2, mut rm2, mut rv2) = (p2.clone(), vec![0.0; 7], vec![0.0; 7]);
    let c1: Vec<f64> = g1.iter().map(|g| g * scale).collect();
    let c2: Vec<f64> = g2.iter().map(|g| g * scale).collect();
    for t in 1..=3 {
        r::adamw(
            &mut rp1,
            &c1,
            &mut rm1,
            &mut rv1,
            0.01,
            (0.9, 0.999),
            1e-8,
            0.1,
            t,
        );
        r::adamw(
            &mut rp2,
            &c2,
            &mut rm2,
            &mut rv2,
            0.01,
            (0.9, 0.999),
            1e-8,
            0.1,
            t,
        );
    }
    let g = gpu();
    let (tp1, tg1, tp2, tg2) = (
        upload(&[300], &p1),
        upload(&[300], &g1),
        upload(&[7], &p2),
        upload(&[7], &g2),
    );
    let (m1, v1, m2, v2) = (
        upload(&[300], &[0.0; 300]),
        upload(&[300], &[0.0; 300]),
        upload(&[7], &[0.0; 7]),
        upload(&[7], &[0.0; 7]),
    );
    let mut clip_out = vec![];
    for t in 1..=3 {
        let mut s = g.step();
        let clip = optim::clip_grad_norm(&mut s, &[&tg1, &tg2], max_norm as f32).unwrap();
        let slots = [
            optim::Slot {
                param: &tp1,
                grad: &tg1,
                m: &m1,
                v: &v1,
            },
            optim::Slot {
                param: &tp2,
                grad: &tg2,
                m: &m2,
                v: &v2,
            },
        ];
        optim::adamw(&mut s, &slots, &cfg, t, &clip).unwrap();
        s.submit().unwrap();
        clip_out = pollster::block_on(clip.read(g)).unwrap();
    }
    // Sum of 307 squares in f32: 1e-5 relative.
    assert_close("grad norm and scale", &clip_out, &[norm, scale], 0.0, 1e-5);
    // Three AdamW steps of size ~lr: 1e-6 absolute.
    assert_close(
        "adamw params",
        &pollster::block_on(tp1.read(g)).unwrap(),
        &rp1,
        1e-6,
        1e-5,
    );
    assert_close(
        "adamw m",
        &pollster::block_on(m1.read(g)).unwrap(),
        &rm1,
        1e-6,
        1e-5,
    );
    assert_close(
        "adamw v",
        &pollster::block_on(v1.read(g)).unwrap(),
        &rv1,
        1e-7,
        1e-5,
    );
    assert_close(
        "adamw params (second tensor)",
        &pollster::block_on(tp2.read(g)).unwrap(),
        &rp2,
        1e-6,
        1e-5,
    );
    assert_close(
        "adamw m (second tensor)",
        &pollster::block_on(m2.read(g)).unwrap(),
        &rm2,
        1e-6,
        1e-5,
    );
    assert_close(
        "adamw v (second tensor)",
        &pollster::block_on(v2.read(g)).unwrap(),
        &rv2,
        1e-7,
        1e-5,
    );
}

#[test]
fn image_resize_and_patchify() {
    let mut rng = Rng::new(12);
    // Shrinking (antialiased), growing, and a non-square aspect; PIL's bilinear and bicubic.
    let filters = [image::Resample::Bilinear, image::Resample::Bicubic];
    for (resample, (h, w)) in filters
        .iter()
        .flat_map(|&f| [(40, 50), (7, 5), (16, 16), (1, 1)].map(|s| (f, s)))
    {
        let cfg = image::Preprocess {
            size: (16, 16),
            resize: true,
            resample,
            patch: 4,
            rescale: 1.0 / 255.0,
            mean: [0.5, 0.4, 0.3],
            std: [0.5, 0.25, 0.2],
        };
        let rgba: Vec<u32> = (0..h * w).map(|_| rng.next_u64() as u32).collect();
        let pix = r::image::resize(&rgba, h, w, 16, 16, resample);
        let want = r::image::normalize_patchify(
            &pix,
            16,
            16,
            4,
            1.0 / 255.0,
            [0.5, 0.4, 0.3],
            [0.5, 0.25, 0.2],
        );
        let t = upload_u32(&[h, w], &rgba);
        let got = run(|s| {
            let pixels = image::resize(s, &t, 16, 16, resample)?;
            let patches = image::normalize_patchify(s, &pixels, &cfg)?;
            Ok(vec![pixels, patches])
        });
        // Each pass rounds to integers; f32 weights may flip a value sitting at .5 by one level.
        let off: usize = got[0]
            .iter()
            .zip(&pix)
            .filter(|(g, w)| (**g as f64 - **w).abs() > 0.0)
            .count();
        assert!(
            off * 50 <= pix.len(),
            "{resample:?} {h}x{w}: {off} of {} resized values differ",
            pix.len()
        );
        assert_close(
            &format!("{resample:?} {h}x{w} resize"),
            &got[0],
            &pix,
            1.0,
            0.0,
        );
        // One level is 1/255/std <= 0.02 after normalisation.
        assert_close(
            &format!("{resample:?} {h}x{w} patches"),
            &got[1],
            &want,
            0.021,
            0.0,
        );
    }
}
