//! LayerNorm (shaders/layernorm.wgsl, src/ops/layernorm.rs) forward and backward against
//! src/reference, on the buffer and the image kernels; the reference backward against central
//! finite differences in f64.

mod common;
use amad::ops::layernorm;
use amad::reference as r;
use amad::rng::Rng;
use common::*;

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
