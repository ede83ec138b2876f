//! The attention-distillation losses on the GPU against the f64 reference: losses, alignment
//! weights, and gradients against central finite differences of the reference, over head counts
//! H_s < H_t, H_s = H_t and H_s = 1, padded rows and keys, causal zeros, τ ≠ 1 and detached
//! weights; and the properties the method promises.

mod common;
use amad::ops::amad::{align, Options, Variant};
use amad::reference::amad as r;
use amad::rng::Rng;
use common::*;

const ALL: [Variant; 5] = [
    Variant::Mse,
    Variant::Kl,
    Variant::TokenKl,
    Variant::OneToOneKl,
    Variant::OneToOneMse,
];

/// Random attention maps [b, h, q, k]: rows softmaxed, with causal zeros when asked.
fn maps(rng: &mut Rng, b: usize, h: usize, q: usize, k: usize, causal: bool) -> Vec<f64> {
    let mut out = vec![];
    for _ in 0..b * h {
        for l in 0..q {
            let e: Vec<f64> = (0..k)
                .map(|c| {
                    if causal && c > l {
                        0.0
                    } else {
                        (2.0 * rng.uniform()).exp()
                    }
                })
                .collect();
            let z: f64 = e.iter().sum();
            out.extend(e.iter().map(|v| v / z));
        }
    }
    out
}

/// Example 1 loses its last query row and its last key (when there are two examples).
fn padding_mask(b: usize, q: usize, k: usize) -> Vec<f64> {
    (0..b * q * k)
        .map(|i| {
            if i / (q * k) == 1 && ((i / k) % q == q - 1 || i % k == k - 1) {
                0.0
            } else {
                1.0
            }
        })
        .collect()
}

fn reference_maps<'a>(
    teacher: &'a [f64],
    student: &'a [f64],
    weights_from: Option<&'a [f64]>,
    mask: Option<&'a [f64]>,
    (batch, ht, hs, q, k): (usize, usize, usize, usize, usize),
) -> r::Maps<'a> {
    r::Maps {
        teacher,
        student,
        weights_from,
        mask,
        batch,
        ht,
        hs,
        q,
        k,
    }
}

struct Case {
    b: usize,
    ht: usize,
    hs: usize,
    q: usize,
    k: usize,
    causal: bool,
    padded: bool,
    tau: f64,
    detach: bool,
}

fn check(case: &Case, variant: Variant, seed: u64) {
    let Case {
        b,
        ht,
        hs,
        q,
        k,
        causal,
        padded,
        tau,
        detach,
    } = *case;
    let what = format!(
        "{variant:?} Ht={ht} Hs={hs} causal={causal} padded={padded} tau={tau} detach={detach}"
    );
    let mut rng = Rng::new(seed);
    let (t, s) = (
        maps(&mut rng, b, ht, q, k, causal),
        maps(&mut rng, b, hs, q, k, causal),
    );
    let mask = padding_mask(b, q, k);
    let mk = padded.then_some(&mask[..]);
    let dims = (b, ht, hs, q, k);
    let (want, want_w) = r::loss(&reference_maps(&t, &s, None, mk, dims), variant, tau);
    let frozen = detach.then_some(&s[..]);
    let fd = finite_diff(&s, 1e-6, |x| {
        0.5 * r::loss(&reference_maps(&t, x, frozen, mk, dims), variant, tau).0
    });
    let (gt, gs, gm) = (
        upload(&[b, ht, q, k], &t),
        upload(&[b, hs, q, k], &s),
        upload(&[b, q, k], &mask),
    );
    let opts = Options {
        variant,
        tau: tau as f32,
        detach_weights: detach,
    };
    let got = run(|st| {
        let a = align(st, &gt, &gs, padded.then_some(&gm), opts, 0.5)?;
        Ok(vec![a.loss, a.grad, a.weights])
    });
    // Bounds ~10× the worst f32 differences measured over these cases (loss 6e-7 relative,
    // weights 2.3e-7, gradients 1.2e-6 on values up to 15); a wrong term is off by 1e-2 or more.
    assert_close(&format!("{what}: loss"), &got[0], &[want], 1e-6, 5e-6);
    assert_close(&format!("{what}: weights"), &got[2], &want_w, 2e-6, 0.0);
    assert_close(
        &format!("{what}: gradient (upstream 0.5) vs FD of the reference"),
        &got[1],
        &fd,
        1e-5,
        1e-5,
    );
}

#[test]
fn every_variant_against_the_reference_and_finite_differences() {
    let cases = [
        Case {
            b: 2,
            ht: 4,
            hs: 2,
            q: 4,
            k: 5,
            causal: false,
            padded: false,
            tau: 1.0,
            detach: false,
        },
        Case {
            b: 2,
            ht: 3,
            hs: 3,
            q: 5,
            k: 5,
            causal: true,
            padded: false,
            tau: 1.0,
            detach: false,
        },
        Case {
            b: 2,
            ht: 3,
            hs: 1,
            q: 3,
            k: 6,
            causal: false,
            padded: true,
            tau: 1.0,
            detach: false,
        },
        Case {
            b: 2,
            ht: 4,
            hs: 2,
            q: 4,
            k: 4,
            causal: false,
            padded: true,
            tau: 0.1,
            detach: false,
        },
        Case {
            b: 2,
            ht: 4,
            hs: 3,
            q: 4,
            k: 5,
            causal: true,
            padded: true,
            tau: 0.5,
            detach: true,
        },
    ];
    for (n, case) in cases.iter().enumerate() {
        for (m, variant) in ALL.iter().enumerate() {
            check(case, *variant, (n * 10 + m) as u64);
        }
    }
}

fn gpu_loss(
    t: &[f64],
    s: &[f64],
    shape: (usize, usize, usize, usize, usize),
    variant: Variant,
) -> (f32, Vec<f32>) {
    let (b, ht, hs, q, k) = shape;
    let (gt, gs) = (upload(&[b, ht, q, k], t), upload(&[b, hs, q, k], s));
    let got = run(|st| {
        let a = align(
            st,
            &gt,
            &gs,
            None,
            Options {
                variant,
                tau: 1.0,
                detach_weights: false,
            },
            1.0,
        )?;
        Ok(vec![a.loss, a.grad])
    });
    (got[0][0], got[1].clone())
}

#[test]
fn amad_is_invariant_to_permuting_student_heads() {
    let (b, ht, hs, q, k) = (2, 4, 3, 5, 5);
    let mut rng = Rng::new(21);
    let (t, s) = (
        maps(&mut rng, b, ht, q, k, false),
        maps(&mut rng, b, hs, q, k, false),
    );
    let qk = q * k;
    let perm = [2, 0, 1];
    let permuted: Vec<f64> = (0..b * hs * qk)
        .map(|x| {
            let (bi, j, c) = (x / (hs * qk), (x / qk) % hs, x % qk);
            s[(bi * hs + perm[j]) * qk + c]
        })
        .collect();
    for variant in [Variant::Mse, Variant::Kl, Variant::TokenKl] {
        let (l0, g0) = gpu_loss(&t, &s, (b, ht, hs, q, k), variant);
        let (l1, g1) = gpu_loss(&t, &permuted, (b, ht, hs, q, k), variant);
        assert!(
            (l0 - l1).abs() <= 1e-5 * l0.abs().max(1.0),
            "{variant:?}: {l0} vs {l1} after permuting student heads"
        );
        // The gradient permutes with the heads.
        for (x, &a) in g1.iter().enumerate() {
            let (bi, j, c) = (x / (hs * qk), (x / qk) % hs, x % qk);
            let e = g0[(bi * hs + perm[j]) * qk + c];
            assert!(
                (a - e).abs() <= 1e-5,
                "{variant:?}: gradient at {x}: {a} vs {e}"
            );
        }
    }
}

#[test]
fn student_maps_equal_to_the_teachers_cost_less_than_unrelated_maps() {
    let (b, h, q, k) = (2, 3, 4, 6);
    let mut rng = Rng::new(22);
    let t = maps(&mut rng, b, h, q, k, false);
    let unrelated = maps(&mut rng, b, h, q, k, false);
    for variant in ALL {
        let (same, _) = gpu_loss(&t, &t, (b, h, h, q, k), variant);
        let (other, _) = gpu_loss(&t, &unrelated, (b, h, h, q, k), variant);
        assert!(
            same < other,
            "{variant:?}: identical maps cost {same}, unrelated maps {other}"
        );
    }
}

#[test]
fn one_to_one_ignores_surplus_teacher_heads() {
    let (b, ht, hs, q, k) = (2, 4, 2, 4, 4);
    let mut rng = Rng::new(23);
    let (t, s) = (
        maps(&mut rng, b, ht, q, k, false),
        maps(&mut rng, b, hs, q, k, false),
    );
    // Replace teacher heads 2 and 3 (no student partner) with other maps.
    let other = maps(&mut rng, b, ht, q, k, false);
    let qk = q * k;
    let changed: Vec<f64> = (0..t.len())
        .map(|x| if (x / qk) % ht >= hs { other[x] } else { t[x] })
        .collect();
    for variant in [Variant::OneToOneKl, Variant::OneToOneMse] {
        let (l0, g0) = gpu_loss(&t, &s, (b, ht, hs, q, k), variant);
        let (l1, g1) = gpu_loss(&changed, &s, (b, ht, hs, q, k), variant);
        assert_eq!(
            l0, l1,
            "{variant:?}: surplus teacher heads changed the loss"
        );
        assert_eq!(
            g0, g1,
            "{variant:?}: surplus teacher heads changed the gradient"
        );
    }
    // AMAD, by contrast, listens to every teacher head.
    let (l0, _) = gpu_loss(&t, &s, (b, ht, hs, q, k), Variant::Kl);
    let (l1, _) = gpu_loss(&changed, &s, (b, ht, hs, q, k), Variant::Kl);
    assert_ne!(l0, l1, "AMAD ignored teacher heads 2 and 3");
}

#[test]
fn bad_shapes_are_errors() {
    let g = gpu();
    let t = upload(&[2, 3, 4, 4], &[0.1; 96]);
    let s = upload(&[2, 2, 4, 5], &[0.1; 80]);
    let many = upload(&[1, 17, 1, 1], &[1.0; 17]);
    let mut st = g.step();
    assert!(
        align(&mut st, &t, &s, None, Options::default(), 1.0).is_err(),
        "mismatched map sizes"
    );
    let one = upload(&[1, 1, 1, 1], &[1.0]);
    let err = align(&mut st, &many, &one, None, Options::default(), 1.0)
        .err()
        .expect("17 heads")
        .to_string();
    assert!(err.contains("at most 16"), "{err}");
    let bad_tau = Options {
        tau: 0.0,
        ..Options::default()
    };
    assert!(
        align(&mut st, &t, &t, None, bad_tau, 1.0).is_err(),
        "tau = 0"
    );
}

/// Maps the size of the models' encoder maps (65 × 65 cells, 8 teacher heads), where one
/// invocation per example would run past lavapipe's cap on loop iterations and silently stop:
/// loss and weights against the reference, and the gradient along a random direction against a
/// central difference of the reference.
#[test]
fn maps_as_large_as_the_models_match_the_reference() {
    let (b, ht, hs, q, k) = (2, 8, 2, 65, 65);
    for (n, variant) in ALL.iter().enumerate() {
        let mut rng = Rng::new(100 + n as u64);
        let (t, s) = (
            maps(&mut rng, b, ht, q, k, false),
            maps(&mut rng, b, hs, q, k, false),
        );
        let mask = padding_mask(b, q, k);
        let dims = (b, ht, hs, q, k);
        let (want, want_w) = r::loss(
            &reference_maps(&t, &s, None, Some(&mask), dims),
            *variant,
            1.0,
        );
        let dir: Vec<f64> = (0..s.len()).map(|_| rng.uniform() - 0.5).collect();
        let eps = 1e-6;
        let at = |sign: f64| {
            let x: Vec<f64> = s
                .iter()
                .zip(&dir)
                .map(|(v, d)| v + sign * eps * d)
                .collect();
            r::loss(
                &reference_maps(&t, &x, None, Some(&mask), dims),
                *variant,
                1.0,
            )
            .0
        };
        let want_dd = (at(1.0) - at(-1.0)) / (2.0 * eps);
        let got = run(|st| {
            let a = align(
                st,
                &upload(&[b, ht, q, k], &t),
                &upload(&[b, hs, q, k], &s),
                Some(&upload(&[b, q, k], &mask)),
                Options {
                    variant: *variant,
                    ..Options::default()
                },
                1.0,
            )?;
            Ok(vec![a.loss, a.grad, a.weights])
        });
        let what = format!("{variant:?} at 65×65, 8 → 2 heads");
        assert_close(&format!("{what}: loss"), &got[0], &[want], 1e-5, 1e-5);
        assert_close(&format!("{what}: weights"), &got[2], &want_w, 1e-5, 0.0);
        let dd: f64 = got[1].iter().zip(&dir).map(|(g, d)| *g as f64 * d).sum();
        assert_close(
            &format!("{what}: directional derivative"),
            &[dd as f32],
            &[want_dd],
            1e-3,
            1e-4,
        );
    }
}
