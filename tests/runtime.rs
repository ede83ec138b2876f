//! The runtime's promises: a clear error without an adapter, no allocation and no pipeline
//! building in steady state, errors reported as `Result`s.

use amad::ops::{elementwise, layernorm, matmul::matmul, reduce};
use amad::rng::Rng;
use amad::{Error, Gpu};

#[test]
fn no_adapter_says_what_to_install() {
    match pollster::block_on(Gpu::with_backends(amad::gpu::wgpu::Backends::empty())) {
        Err(e @ Error::NoAdapter(_)) => {
            let msg = e.to_string();
            assert!(msg.contains("mesa-vulkan-drivers"), "{msg}");
        }
        Err(e) => panic!("expected NoAdapter, got {e}"),
        Ok(_) => panic!("an instance with no backends found an adapter"),
    }
}

#[test]
fn second_identical_step_allocates_no_buffer_and_builds_no_pipeline() {
    // Its own device: other tests running in parallel would move a shared device's counters.
    let g = pollster::block_on(Gpu::new()).unwrap();
    let mut rng = Rng::new(1);
    let x = amad::Tensor::from_slice(
        &g,
        &[33, 40],
        &rng.vec(33 * 40, 1.0)
            .iter()
            .map(|&v| v as f32)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let w = amad::Tensor::from_slice(
        &g,
        &[40, 24],
        &rng.vec(40 * 24, 1.0)
            .iter()
            .map(|&v| v as f32)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let gamma = amad::Tensor::from_slice(&g, &[24], &[1.0; 24]).unwrap();
    let beta = amad::Tensor::from_slice(&g, &[24], &[0.0; 24]).unwrap();
    let step = || -> Vec<f32> {
        let mut s = g.step();
        let y = matmul(&mut s, &x, &w, false, false, None).unwrap();
        let h = elementwise::activation(&mut s, &y, elementwise::Activation::GeluTanh).unwrap();
        let (n, _) = layernorm::layernorm(&mut s, &h, &gamma, &beta, 1e-5).unwrap();
        let total = reduce::sum(&mut s, &n).unwrap();
        s.submit().unwrap();
        pollster::block_on(total.read(&g)).unwrap()
    };
    let first = step();
    let after_first = g.stats();
    let second = step();
    assert_eq!(
        g.stats(),
        after_first,
        "the second step allocated tensors or built pipelines"
    );
    assert_eq!(first, second, "same inputs, same result");
    assert!(after_first.pipelines_built >= 4 && after_first.tensor_buffers_created >= 4);
}

/// A buffer freed while its step is still being recorded must not go to another step that could
/// be submitted first: step B would overwrite what step A still reads. (Tests record steps on
/// several threads at once; here two steps are open on one thread, which is deterministic.)
#[test]
fn a_buffer_freed_mid_recording_is_not_handed_to_another_open_step() {
    let g = pollster::block_on(Gpu::new()).unwrap();
    let ones = amad::Tensor::from_slice(&g, &[64], &[1.0; 64]).unwrap();
    // x = 1 + 1 = 2, computed and submitted.
    let mut s = g.step();
    let x = elementwise::add(&mut s, &ones, &ones).unwrap();
    s.submit().unwrap();
    // Step A reads x, then drops its handle before submitting.
    let mut a = g.step();
    let y = elementwise::add(&mut a, &x, &ones).unwrap();
    drop(x);
    // Step B, opened meanwhile, takes a buffer of the same size, zeroes it, and submits first.
    let mut b = g.step();
    let z = b.zeros(&[64]).unwrap();
    b.submit().unwrap();
    a.submit().unwrap();
    assert_eq!(
        pollster::block_on(y.read(&g)).unwrap(),
        vec![3.0; 64],
        "step A read x after step B overwrote it"
    );
    drop(z);
}

/// Parts of one buffer (how a model's parameters are stored): each reads and writes only its own
/// elements, two parts may be written by one dispatch, and a part bound read-only beside a write
/// to another part of its buffer is a clear error (wgpu rejects that mix as a usage conflict).
#[test]
fn parts_of_one_buffer_are_tensors_of_their_own() {
    let g = pollster::block_on(Gpu::new()).unwrap();
    let align = g.limits.min_storage_buffer_offset_alignment as usize / 4;
    let block = amad::Tensor::from_slice(&g, &[4 * align], &vec![0.0; 4 * align]).unwrap();
    let (dgamma, dbeta) = (
        block.part(&g, 0, &[3]).unwrap(),
        block.part(&g, align, &[3]).unwrap(),
    );
    let x = amad::Tensor::from_slice(&g, &[2, 3], &[1.0, 2.0, 4.0, 3.0, 2.0, 0.0]).unwrap();
    let gamma = amad::Tensor::from_slice(&g, &[3], &[1.0; 3]).unwrap();
    let beta = amad::Tensor::from_slice(&g, &[3], &[0.0; 3]).unwrap();
    let dy = amad::Tensor::from_slice(&g, &[2, 3], &[1.0, 1.0, 1.0, 2.0, 0.0, -1.0]).unwrap();
    let mut s = g.step();
    let (_, stats) = layernorm::layernorm(&mut s, &x, &gamma, &beta, 1e-5).unwrap();
    layernorm::layernorm_bwd(&mut s, &x, &gamma, &stats, &dy, &dgamma, &dbeta, None).unwrap();
    let err = elementwise::axpy(&mut s, &dgamma, &dbeta, 1.0).unwrap_err();
    assert!(err.to_string().contains("also bound"), "{err}");
    s.submit().unwrap();
    let all = pollster::block_on(block.read(&g)).unwrap();
    // dbeta = column sums of dy; dgamma = Σ dy·xhat (rows of x normalised to mean 0, variance 1).
    assert_eq!(&all[align..align + 3], &[3.0, 1.0, 0.0]);
    let xhat = |r: [f32; 3]| {
        let m = r.iter().sum::<f32>() / 3.0;
        let sd = (r.iter().map(|v| (v - m) * (v - m)).sum::<f32>() / 3.0 + 1e-5).sqrt();
        r.map(|v| (v - m) / sd)
    };
    let (a, b) = (xhat([1.0, 2.0, 4.0]), xhat([3.0, 2.0, 0.0]));
    for c in 0..3 {
        let want = [1.0, 1.0, 1.0][c] * a[c] + [2.0, 0.0, -1.0][c] * b[c];
        assert!(
            (all[c] - want).abs() < 1e-5,
            "dgamma[{c}] {} vs {want}",
            all[c]
        );
    }
    // Nothing outside the two parts was written.
    let outside = all
        .iter()
        .enumerate()
        .filter(|&(i, _)| !(i < 3 || (align..align + 3).contains(&i)));
    assert!(outside.clone().all(|(_, &v)| v == 0.0));
    let misaligned = block.part(&g, 1, &[3]);
    assert!(misaligned.is_err() || align == 1);
    assert!(block.part(&g, 3 * align, &[align + 1]).is_err());
}

/// While a tensor is held (`Gpu::hold_images`), every kernel that reads it from an image gets the
/// one image made at its first use, across steps; a tensor made after the hold began joins it
/// with `also`; an unheld tensor is copied each time; nothing is held after the guard drops, and
/// on a device that reads no operands from images a hold does nothing.
#[test]
fn held_tensors_are_copied_into_images_once() {
    let device = |images: bool| {
        let g = pollster::block_on(Gpu::new()).unwrap();
        g.set_image_operands(images);
        g
    };
    let g = device(true);
    let filled = |n: usize| amad::Tensor::from_slice(&g, &[n, 64], &vec![0.5; n * 64]).unwrap();
    let (weight, activation) = (filled(4), filled(4));
    let held = g.hold_images(std::slice::from_ref(&weight));
    let later = filled(2);
    held.also(&later);
    let images = |t: &amad::Tensor| {
        let mut step = g.step();
        let image = step.operand_images(&[t], 64).unwrap().unwrap().remove(0);
        step.submit().unwrap();
        image
    };
    let (w1, w2) = (images(&weight), images(&weight));
    assert!(
        std::sync::Arc::ptr_eq(&w1, &w2),
        "a held tensor's image is made once"
    );
    assert!(std::sync::Arc::ptr_eq(&images(&later), &images(&later)));
    assert!(!std::sync::Arc::ptr_eq(
        &images(&activation),
        &images(&activation)
    ));
    assert_eq!(g.stats().images_held, 2);
    drop(held);
    assert_eq!(g.stats().images_held, 0);
    let off = device(false);
    let _held = off.hold_images(std::slice::from_ref(&weight));
    assert_eq!(off.stats().images_held, 0);
}
