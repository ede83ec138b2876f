//! The auxiliary shape loss of `amad train-teacher --shape-loss W`: its per-patch labels, its
//! loss and gradient against a CPU reference, and the path of that gradient into the encoder
//! (`Model::backward`) against central finite differences.

mod common;
use amad::data::scenes::{Background, Colour, Scene, Shape, Size};
use amad::model::{Config, MapGrads, Model, Weights};
use amad::ops::loss::IGNORE;
use amad::train::shape_loss::CLASSES;
use amad::train::{ShapeLoss, ShapeTargets};
use common::*;

fn scene(objects: &[(Shape, Size, f32, f32)]) -> Scene {
    Scene {
        objects: objects
            .iter()
            .map(|&(shape, size, x, y)| obj(shape, Colour::Red, size, x, y))
            .collect(),
        background: Background::Flat(128),
    }
}

#[test]
fn each_patch_is_labelled_with_the_shape_that_covers_it() {
    // A large square (half side 0.85 · 11 = 9.35 px) centred at (32, 32) covers 22.65..41.35 on
    // both axes; a small circle (radius 6) centred at (12, 52) covers the whole cell 8..16 × 48..56.
    let s = scene(&[
        (Shape::Square, Size::Large, 32.0, 32.0),
        (Shape::Circle, Size::Small, 12.0, 52.0),
    ]);
    let cells = s.cell_shapes(8);
    assert_eq!(cells.len(), 64);
    let at = |row: usize, col: usize| cells[row * 8 + col];
    let (circle, square, none) = (0, 1, CLASSES as u32 - 1);
    for (r, c) in [(3, 3), (3, 4), (4, 3), (4, 4)] {
        assert_eq!(at(r, c), square, "cell ({r}, {c}) lies inside the square");
    }
    // 1.35 px of the cell's 8 on each axis: 4 of its 64 sample points, under an eighth.
    assert_eq!(at(2, 2), none, "a corner barely touched is none");
    // 1.35 px of 8 on one axis, all of it on the other: 16 of 64 points.
    assert_eq!(at(3, 2), square, "a side strip of a sixth is labelled");
    assert_eq!(
        at(6, 1),
        circle,
        "row 6 (y 48..56), column 1 (x 8..16) is inside the circle"
    );
    for (r, c) in [(0, 0), (0, 7), (7, 7), (1, 5)] {
        assert_eq!(at(r, c), none, "cell ({r}, {c}) is empty");
    }
    // Row by row: the transposed position of the circle's cell is empty.
    assert_eq!(at(1, 6), none);
}

#[test]
fn with_sub_cells_each_patch_gets_the_labels_of_its_quarters_row_by_row() {
    // The large square of the test above covers 22.65..41.35 px on both axes. With 2 × 2
    // sub-cells of 4 px, sampled at pixel centres, patch (2, 3) (y 16..24, x 24..32) has its
    // top quarters (y 16..20) empty and its bottom ones (y 20..24: the rows at 23.5, 4 of 16
    // samples) inside the square; the coarse label of that patch is the square's.
    let s = scene(&[(Shape::Square, Size::Large, 32.0, 32.0)]);
    let cfg = Config::sized(40, 8, (1, 16, 2), (1, 16, 2));
    let targets = |cells| ShapeTargets { weight: 1.0, cells };
    let fine = ShapeLoss::new(gpu(), &cfg.encoder, targets(2), 7).unwrap();
    let coarse = ShapeLoss::new(gpu(), &cfg.encoder, targets(1), 7).unwrap();
    let one = std::slice::from_ref(&s);
    let (f, c) = (fine.labels(one), coarse.labels(one));
    assert_eq!((f.len(), c.len()), (65 * 4, 65));
    let (square, none) = (1, CLASSES as u32 - 1);
    let patch = |row: usize, col: usize| &f[(1 + row * 8 + col) * 4..][..4];
    assert_eq!(c[1 + 2 * 8 + 3], square);
    assert_eq!(patch(2, 3), [none, none, square, square]);
    assert_eq!(patch(3, 3), [square; 4], "inside the square");
    assert_eq!(patch(0, 0), [none; 4]);
    // Every patch's four are the sub-cells of the 16 × 16 division, in the patch's rows.
    let cells = s.cell_shapes(16);
    for row in 0..8 {
        for col in 0..8 {
            let want: Vec<u32> = [(0, 0), (0, 1), (1, 0), (1, 1)]
                .iter()
                .map(|&(sy, sx)| cells[(2 * row + sy) * 16 + 2 * col + sx])
                .collect();
            assert_eq!(patch(row, col), want, "patch ({row}, {col})");
        }
    }
    for bad in [0, 3] {
        let err = ShapeLoss::new(gpu(), &cfg.encoder, targets(bad), 7)
            .err()
            .unwrap();
        assert!(err.to_string().contains("--shape-cells"), "{err}");
    }
}

#[test]
fn the_shape_loss_and_its_gradient_match_a_cpu_reference() {
    matches_the_reference(1);
}

#[test]
fn the_sub_cell_shape_loss_and_its_gradient_match_a_cpu_reference() {
    matches_the_reference(2);
}

/// The head with `cells` × `cells` sub-cells per patch, on random states of two scenes, against
/// the mean cross-entropy over labelled sub-cells of states · W + b and its gradient times the
/// weight 3, computed here in f64.
fn matches_the_reference(cells: usize) {
    let cfg = Config::sized(40, 8, (1, 16, 2), (1, 16, 2));
    let targets = ShapeTargets { weight: 3.0, cells };
    let head = ShapeLoss::new(gpu(), &cfg.encoder, targets, 7).unwrap();
    let scenes = vec![
        scene(&[(Shape::Star, Size::Large, 20.0, 40.0)]),
        scene(&[
            (Shape::Triangle, Size::Small, 10.0, 10.0),
            (Shape::Diamond, Size::Large, 44.0, 30.0),
        ]),
    ];
    let labels = head.labels(&scenes);
    let (b, t, h, q2) = (2, 65, 16, cells * cells);
    assert_eq!(labels.len(), b * t * q2);
    assert!(
        labels[..q2]
            .iter()
            .chain(&labels[t * q2..(t + 1) * q2])
            .all(|&l| l == IGNORE),
        "the CLS tokens have no labels"
    );
    let mut rng = amad::rng::Rng::new(5);
    let states: Vec<f64> = (0..b * t * h).map(|_| rng.normal()).collect();
    let outs = run(|s| {
        let st = upload(&[b, t, h], &states);
        let lab = s.upload_u32(&[labels.len()], &labels)?;
        let (loss, dstates) = head.record(s, &st, &lab)?;
        Ok(vec![loss, dstates])
    });
    let named = pollster::block_on(head.named_values(gpu())).unwrap();
    let (w, bias) = (&named[0].2, &named[1].2);
    let outputs = CLASSES * q2;
    assert_eq!(named[0].1, vec![h, outputs]);
    let counted = labels.iter().filter(|&&l| l != IGNORE).count() as f64;
    let (mut loss, mut grad) = (0.0, vec![0.0; b * t * h]);
    for (row, &label) in labels.iter().enumerate() {
        if label == IGNORE {
            continue;
        }
        // Sub-cell `sub` of token `token`: outputs sub·CLASSES .. of the token's state.
        let (token, sub) = (row / q2, row % q2);
        let x = &states[token * h..(token + 1) * h];
        let col = |c: usize| sub * CLASSES + c;
        let z: Vec<f64> = (0..CLASSES)
            .map(|c| {
                bias[col(c)] as f64
                    + (0..h)
                        .map(|i| x[i] * w[i * outputs + col(c)] as f64)
                        .sum::<f64>()
            })
            .collect();
        let max = z.iter().cloned().fold(f64::MIN, f64::max);
        let sum: f64 = z.iter().map(|v| (v - max).exp()).sum();
        loss += (max + sum.ln() - z[label as usize]) / counted;
        for c in 0..CLASSES {
            let p = (z[c] - max).exp() / sum - if c == label as usize { 1.0 } else { 0.0 };
            for i in 0..h {
                grad[token * h + i] += 3.0 * p * w[i * outputs + col(c)] as f64 / counted;
            }
        }
    }
    assert_close("shape loss", &outs[0], &[loss], 1e-5, 1e-5);
    assert_close("d loss / d states", &outs[1], &grad, 1e-6, 1e-4);
}

/// Encoder states of a tiny model with the given weights, for patches `patches`.
fn states(m: &Model, patches: &amad::Tensor, ids: &amad::Tensor) -> Vec<f32> {
    run(|s| Ok(vec![m.forward(s, patches, ids)?.encoder.states])).remove(0)
}

#[test]
fn a_gradient_on_the_encoder_states_reaches_the_encoder_weights() {
    // f(θ) = Σ states(θ) ⊙ R: backward(d logits = 0, extra = R) must give df/dθ.
    let cfg = Config::sized(40, 8, (1, 16, 2), (1, 16, 2));
    let m = Model::new(gpu(), cfg.clone(), 11).unwrap();
    let e = &cfg.encoder;
    let (b, t, h) = (2, e.tokens(), e.hidden_size);
    let mut rng = amad::rng::Rng::new(3);
    let px: Vec<f64> = (0..b * e.patches() * e.patch_dim())
        .map(|_| rng.normal())
        .collect();
    let r: Vec<f64> = (0..b * t * h).map(|_| rng.normal()).collect();
    let patches = upload(&[b, e.patches(), e.patch_dim()], &px);
    let ids = upload_u32(&[b, 8], &[0; 16]);
    let grads = Weights::zeros(gpu(), &m.layout).unwrap();
    run(|s| {
        let fwd = m.forward(s, &patches, &ids)?;
        let dlogits = s.zeros(fwd.logits().shape())?;
        let extra = upload(&[b, t, h], &r);
        m.backward(
            s,
            &fwd,
            &dlogits,
            &MapGrads::default(),
            Some(&extra),
            &grads,
        )?;
        Ok(vec![])
    });
    let values: Vec<Vec<f32>> = m
        .weights
        .tensors
        .iter()
        .map(|w| pollster::block_on(w.read(gpu())).unwrap())
        .collect();
    let f = |values: &[Vec<f32>]| {
        let moved = Model {
            cfg: cfg.clone(),
            layout: m.layout.clone(),
            weights: Weights::from_values(gpu(), &m.layout, values).unwrap(),
        };
        let s = states(&moved, &patches, &ids);
        s.iter().zip(&r).map(|(&a, &b)| a as f64 * b).sum::<f64>()
    };
    // The patch embedding, the first layer's query, key and value and its MLP, and the final
    // LayerNorm.
    let l = &m.layout;
    let picks = [l.patch.0, l.enc[0].qkv.0, l.enc[0].fc2.0, l.enc_ln.0, l.pos];
    let mut checked = 0;
    for &p in &picks {
        let g = pollster::block_on(grads.tensors[p].read(gpu())).unwrap();
        for k in [0, g.len() / 3, g.len() - 1] {
            let eps = 1e-2;
            let mut plus = values.clone();
            plus[p][k] += eps;
            let mut minus = values.clone();
            minus[p][k] -= eps;
            let fd = (f(&plus) - f(&minus)) / (2.0 * eps as f64);
            assert_close(
                &format!("{} [{k}]", l.specs[p].name),
                &[g[k]],
                &[fd],
                2e-3,
                2e-2,
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 15);
}
