//! The losses over a vocabulary (shaders/loss.wgsl, src/ops/loss.rs): cross-entropy and KL with
//! ignored rows, at GPT-2's vocabulary too, against src/reference; the reference backwards
//! against central finite differences in f64.

mod common;
use amad::ops::loss;
use amad::reference as r;
use amad::rng::Rng;
use common::*;

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
    assert_close("CE count", &got[4][1..2], &[5.0], 0.0, 0.0);
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
