//! The elementwise kernels (shaders/elementwise.wgsl, src/ops/elementwise.rs): add, axpy, bias
//! add, padded rows, GELU (both forms) and ReLU, forward and backward, against src/reference; each reference
//! backward against central finite differences in f64.

mod common;
use amad::ops::elementwise::{
    activation, activation_bwd, add, axpy, bias_add, pad_rows, Activation,
};
use amad::reference as r;
use amad::rng::Rng;
use common::*;

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

/// Rows of an odd length (as the logits over 50,257 words) at a pitch of whole vec4s; a pitch
/// shorter than a row is refused.
#[test]
fn pad_rows_keeps_each_row_and_zeroes_the_rest() {
    let mut rng = Rng::new(4);
    // Values an f32 holds exactly: the copy must keep every bit.
    let x: Vec<f64> = rng
        .vec(3 * 2 * 13, 1.0)
        .iter()
        .map(|&v| v as f32 as f64)
        .collect();
    let tx = upload(&[3, 2, 13], &x);
    let got = run(|s| Ok(vec![pad_rows(s, &tx, 64)?, pad_rows(s, &tx, 13)?]));
    assert_eq!(got[0].len(), 6 * 64);
    assert_close("pad_rows", &got[0], &r::pad_rows(&x, 13, 64), 0.0, 0.0);
    assert_close("pad_rows at its own width", &got[1], &x, 0.0, 0.0);
    let msg = pad_rows(&mut gpu().step(), &tx, 12)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("pitch of 12"), "{msg}");
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
