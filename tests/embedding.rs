//! Embeddings (shaders/embedding.wgsl, src/ops/embedding.rs): lookups, row blocks, both
//! backwards, and the ViT's patch tokens, against src/reference; the reference backwards against
//! central finite differences in f64.

mod common;
use amad::ops::embedding;
use amad::reference as r;
use amad::rng::Rng;
use common::*;

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
