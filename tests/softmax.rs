//! The row softmax (shaders/softmax.wgsl, src/ops/softmax.rs) forward and backward against
//! src/reference; the reference backward against central finite differences in f64.

mod common;
use amad::ops::softmax;
use amad::reference as r;
use amad::rng::Rng;
use common::*;

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
