//! The attention core (shaders/attention.wgsl, src/ops/attention.rs) forward and backward, with
//! its masks and fused layouts, on the buffer and the image kernels, against src/reference; the
//! reference backward against central finite differences in f64.

mod common;
use amad::ops::{attention, softmax};
use amad::reference as r;
use amad::rng::Rng;
use amad::Tensor;
use common::*;

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
    let subgroups = subgroup_matmul_kernel(&images) == "matmul_subgroup";
    let mut rng = Rng::new(55);
    // (causal, padded, dims, pad of the fused layout, whether the sequences fit images)
    for (causal, padded, (b, h, tq, tk, d), pad, fits) in [
        (true, false, (2, 4, 13, 13, 16), 0, true),
        (false, false, (2, 8, 9, 9, 8), 0, true),
        (false, true, (2, 2, 5, 17, 32), 0, true),
        (false, true, (2, 2, 11, 70, 32), 64, true),
        // At least 32 query rows: the subgroup scores kernel where the device has subgroups,
        // with tiles cut by Tq and Tk.
        (false, true, (2, 4, 37, 45, 16), 64, true),
        (true, false, (1, 4, 40, 40, 16), 0, true),
        // Heads of 64 and 96 columns take the subgroup kernel for O = P V and dQ = dS K too
        // (96: a second tile of columns, half past the head).
        (true, false, (2, 2, 33, 33, 64), 64, true),
        (false, true, (1, 2, 37, 45, 96), 0, true),
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
                    "scores" if on && fits && tq >= 32 && subgroups => {
                        "attention_scores_subgroup".into()
                    }
                    "apply" | "dscores" | "scores" => format!("attention_{k}{suffix}"),
                    _ => format!("attention_{k}"),
                })
                .collect();
            // W Z (not transposed) with at least 32 rows of heads at least 64 wide: O = P V and
            // dQ = dS K.
            if on && fits && tq >= 32 && d >= 64 && subgroups {
                want.push("attention_apply_subgroup".into());
            }
            // Rows of Tk cells padded to a multiple of 4 are unpadded for reading, four cells
            // at a time where the maps hold a multiple of 4.
            if tk % 4 != 0 {
                let by_4 = (b * h * tq * tk) % 4 == 0;
                want.push(
                    if by_4 {
                        "attention_unpad4"
                    } else {
                        "attention_unpad"
                    }
                    .into(),
                );
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

/// A generated token's attention (one query row) takes the row kernels on a CPU adapter: scores
/// and O = P V (and dQ = dS K, also one row) without the blocked kernels' idle rows. They add the
/// same terms in the same order as the blocked kernels, so the results are the same bits as on a
/// device without images (whose buffer kernels the image kernels match), and match the reference.
#[test]
fn attention_one_query_row_kernels() {
    let images = own_device(true);
    let buffers = own_device(false);
    let mut rng = Rng::new(56);
    // (padded, dims, pad of the fused layout): a GPT-2 cross-attention over 197 image tokens with
    // 4 beams, a self-attention over a short cache, keys past one 8-key block.
    for (padded, (b, h, tq, tk, d), pad) in [
        (false, (4, 12, 1, 197, 64), 0),
        (false, (1, 4, 1, 6, 16), 64),
        (true, (2, 2, 1, 13, 32), 0),
    ] {
        let a = r::AttnDims { b, h, tq, tk, d };
        let (x, mask) = attention_inputs(&mut rng, a, 3);
        let [q, k, v, dout] = &x;
        let m = r::Masks {
            causal: false,
            key_mask: padded.then_some(&mask[..]),
        };
        let (out, probs) = r::attention(q, k, v, a, m);
        let (dq, dk, dv) = r::attention_bwd(q, k, v, dout, None, a, m);
        let mut results = vec![];
        for g in [&images, &buffers] {
            let what = format!("{:?} one row", (b, h, tq, tk, d, pad));
            let ran = kernels_run(g, || {
                results.push(attention_on(
                    g,
                    &what,
                    a,
                    m,
                    Some(pad),
                    [q, k, v, dout],
                    None,
                    [&out, &probs, &dq, &dk, &dv],
                ))
            });
            let rows = ran.iter().filter(|k| k.contains("_row_image")).count();
            let want = if std::ptr::eq(g, &images) { 2 } else { 0 };
            assert_eq!(rows, want, "{what}: {ran:?}");
        }
        assert!(
            results[0] == results[1],
            "{:?}: the paths differ",
            (b, h, tq, tk, d)
        );
    }
}

/// `attention_out`, a generated token's attention where the maps are not kept: on a CPU adapter
/// one dispatch (`attention_row_image`) for the scores, the softmax and O = P V, giving the bits
/// of the three row kernels (`attention`'s output) and of the buffer kernels on a device without
/// images, close to the reference. Rows of more than 1,024 keys take the three kernels.
#[test]
fn attention_out_at_one_query_row_is_one_dispatch() {
    let images = own_device(true);
    let buffers = own_device(false);
    let mut rng = Rng::new(57);
    // (b, h, tk, d, V beside K): GPT-2's cross-attention over 197 image tokens with 4 beams, a
    // short self-attention cache, a head wider than a workgroup's 64 columns, V in a tensor of
    // its own, keys past 1,024.
    for (b, h, tk, d, beside) in [
        (4, 12, 197, 64, true),
        (1, 4, 6, 16, true),
        (2, 2, 13, 128, true),
        (2, 2, 70, 32, false),
        (1, 2, 1030, 32, true),
    ] {
        let a = r::AttnDims { b, h, tq: 1, tk, d };
        let (x, _) = attention_inputs(&mut rng, a, 0);
        let [q, k, v, _] = &x;
        let no_masks = r::Masks {
            causal: false,
            key_mask: None,
        };
        let (want, _) = r::attention(q, k, v, a, no_masks);
        let w = h * d;
        // K and V side by side, as the decoder's caches hold them (V is read from there, or from
        // a tensor of its own, at another stride).
        let kv: Vec<f64> = (0..b * tk)
            .flat_map(|t| k[t * w..(t + 1) * w].iter().chain(&v[t * w..(t + 1) * w]))
            .copied()
            .collect();
        let what = format!("{:?}", (b, h, tk, d, beside));
        let mut outs = vec![];
        for g in [&images, &buffers] {
            let (tq, tkv, tv) = (
                upload_on(g, &[b, 1, w], q),
                upload_on(g, &[b, tk, 2 * w], &kv),
                upload_on(g, &[b, tk, w], v),
            );
            let dims = attention::Dims::new(b, h, 1, tk, d);
            let seqs = (
                attention::Seq::whole(&tq),
                attention::Seq::part(&tkv, 0, 2),
                if beside {
                    attention::Seq::part(&tkv, 1, 2)
                } else {
                    attention::Seq::whole(&tv)
                },
            );
            let mut one = vec![];
            let ran = kernels_run(g, || {
                one = run_on(g, |s| {
                    Ok(vec![attention::attention_out(
                        s, dims, seqs.0, seqs.1, seqs.2,
                    )?])
                });
            });
            let fused = std::ptr::eq(g, &images) && tk <= 1024;
            assert_eq!(ran == ["attention_row_image"], fused, "{what}: {ran:?}");
            let three = run_on(g, |s| {
                let masks = softmax::Masks::default();
                Ok(vec![
                    attention::attention(s, dims, seqs.0, seqs.1, seqs.2, masks)?.0,
                ])
            });
            assert!(one == three, "{what}: attention_out differs from attention");
            assert_close(&format!("{what} out"), &one[0], &want, 2e-5, 1e-4);
            outs.push(one.remove(0));
        }
        assert!(outs[0] == outs[1], "{what}: images and buffers differ");
    }
}
