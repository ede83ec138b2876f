//! Gradient-norm clipping and AdamW (shaders/optim.wgsl, src/ops/optim.rs) against
//! src/reference.

mod common;
use amad::ops::optim;
use amad::reference as r;
use amad::rng::Rng;
use common::*;

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
