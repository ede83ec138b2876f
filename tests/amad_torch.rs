//! `amad loss` against PyTorch: tests/fixtures/make_amad_golden.py implemented the five losses in
//! torch from docs/method.md (autograd gradients, f64) for three cases (H_s < H_t with padding,
//! H_s = H_t with causal zeros, H_s = 1) and eight configurations (τ, detached weights). This runs
//! the same maps through the file path the command line uses.

mod common;
use amad::distill::maps_file::{loss_file, parse_variant};
use amad::ops::amad::Options;
use common::*;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/amad_golden.safetensors"
);

fn values(st: &SafeTensors, name: &str) -> Vec<f64> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("golden has no {name}"));
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
        .collect()
}

#[test]
fn every_configuration_matches_pytorch() {
    let bytes = std::fs::read(GOLDEN).unwrap();
    let g = SafeTensors::deserialize(&bytes).unwrap();
    let configs = [
        ("mse", "mse", 1.0, false),
        ("kl", "kl", 1.0, false),
        ("token-kl", "token-kl", 1.0, false),
        ("kl.tau0.1", "kl", 0.1, false),
        ("mse.detached", "mse", 1.0, true),
        ("token-kl.tau0.5.detached", "token-kl", 0.5, true),
        ("one-to-one-kl", "one-to-one-kl", 1.0, false),
        ("one-to-one-mse", "one-to-one-mse", 1.0, false),
    ];
    for case in ["padded", "causal", "single"] {
        // The command's input file: the golden's maps under the names `amad loss` reads.
        let inputs: Vec<(&str, TensorView)> = ["teacher", "student", "mask"]
            .iter()
            .map(|n| {
                let t = g.tensor(&format!("{case}.{n}")).unwrap();
                (
                    *n,
                    TensorView::new(Dtype::F32, t.shape().to_vec(), t.data()).unwrap(),
                )
            })
            .collect();
        let input = safetensors::serialize(inputs, None).unwrap();
        for (name, variant, tau, detach) in configs {
            let opts = Options {
                variant: parse_variant(variant).unwrap(),
                tau,
                detach_weights: detach,
            };
            let out =
                pollster::block_on(loss_file(gpu(), &input, "maps.safetensors", opts)).unwrap();
            let out = SafeTensors::deserialize(&out).unwrap();
            let what = format!("{case} {name}");
            let f = |n: &str| {
                values(&out, n)
                    .iter()
                    .map(|&v| v as f32)
                    .collect::<Vec<f32>>()
            };
            // torch computed in f64; amad in f32 over ≤ 42 cells and ≤ 8 heads: 1e-5 relative on
            // the loss, 1e-6 on the weights, 1e-5 on gradients (O(1), up to ~20 where 1/m is large).
            assert_close(
                &format!("{what}: loss"),
                &f("loss"),
                &values(&g, &format!("{case}.{name}.loss")),
                1e-6,
                1e-5,
            );
            assert_close(
                &format!("{what}: weights"),
                &f("weights"),
                &values(&g, &format!("{case}.{name}.weights")),
                1e-6,
                0.0,
            );
            assert_close(
                &format!("{what}: gradient"),
                &f("grad_student"),
                &values(&g, &format!("{case}.{name}.grad_student")),
                1e-5,
                1e-5,
            );
        }
    }
}

#[test]
fn bad_files_are_errors() {
    let err = |bytes: &[u8]| {
        pollster::block_on(loss_file(
            gpu(),
            bytes,
            "maps.safetensors",
            Options::default(),
        ))
        .expect_err("an error")
        .to_string()
    };
    assert!(err(b"not a safetensors file")
        .contains("maps.safetensors: not a readable safetensors file"));
    let data = vec![0u8; 16];
    let only_teacher = safetensors::serialize(
        [(
            "teacher",
            TensorView::new(Dtype::F32, vec![1, 1, 2, 2], &data).unwrap(),
        )],
        None,
    )
    .unwrap();
    assert!(err(&only_teacher).contains("no tensor named student"));
    let wrong_rank = safetensors::serialize(
        [
            (
                "teacher",
                TensorView::new(Dtype::F32, vec![1, 1, 2, 2], &data).unwrap(),
            ),
            (
                "student",
                TensorView::new(Dtype::F32, vec![4, 1], &data).unwrap(),
            ),
        ],
        None,
    )
    .unwrap();
    assert!(err(&wrong_rank).contains("student has shape [4, 1]"));
}
