//! The reductions (shaders/reduce.wgsl, src/ops/reduce.rs): column sums in passes, sums and means
//! and their backward, against src/reference.

mod common;
use amad::ops::reduce;
use amad::reference as r;
use amad::rng::Rng;
use common::*;

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
