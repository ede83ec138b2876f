//! Bad input gives a `Result` error with a message, never a panic and never a wgpu validation
//! error: mismatched shapes, zero-sized tensors, buffers over the device's limits.

mod common;
use amad::ops::{attention, elementwise, embedding, layernorm, loss, matmul::matmul, softmax};
use amad::{Error, Tensor};
use common::*;

fn expect_err<T: std::fmt::Debug>(r: amad::Result<T>, needle: &str) {
    match r {
        Ok(v) => panic!("expected an error mentioning {needle:?}, got Ok({v:?})"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(needle),
                "error {msg:?} does not mention {needle:?}"
            );
        }
    }
}

/// The losses' backward reads the log-sum-exps its forward saved: values of another length (a
/// bare [sum, count]) are refused, where they would have been read past their end.
#[test]
fn loss_backward_refuses_values_its_forward_did_not_save() {
    let g = gpu();
    let logits = upload(&[3, 5], &[0.0; 15]);
    let targets = upload_u32(&[3], &[0, 1, 2]);
    let sums = upload(&[2], &[1.0, 3.0]);
    let mut s = g.step();
    expect_err(
        loss::cross_entropy_bwd(&mut s, &logits, &targets, &sums, 1.0),
        "forward's saved values [5]",
    );
    expect_err(
        loss::kl_div_bwd(&mut s, &logits, &logits, &targets, &sums, 1.0, 1.0),
        "forward's saved values [8]",
    );
}

#[test]
fn mismatched_shapes_are_errors() {
    let g = gpu();
    let a = upload(&[3, 4], &[0.0; 12]);
    let b = upload(&[5, 6], &[0.0; 30]);
    let v = upload(&[7], &[0.0; 7]);
    let mut s = g.step();
    expect_err(
        matmul(&mut s, &a, &b, false, false, None),
        "inner dimensions differ",
    );
    expect_err(matmul(&mut s, &a, &v, false, false, None), "at least 2-D");
    expect_err(elementwise::add(&mut s, &a, &b), "shapes differ");
    expect_err(elementwise::bias_add(&mut s, &a, &v), "bias has 7 elements");
    expect_err(
        amad::ops::reduce::sum_columns(&mut s, &a, &v),
        "only 4 columns",
    );
    expect_err(
        layernorm::layernorm(&mut s, &a, &v, &v, 1e-5),
        "gamma has 7 elements",
    );
    expect_err(
        softmax::masked_softmax(&mut s, &a, 1.0, softmax::Masks::default()),
        "[batch, heads, q, k]",
    );
    let q = upload(&[2, 3, 8], &[0.0; 48]);
    let dims = attention::Dims::new(2, 3, 3, 3, 3);
    let whole = attention::Seq::whole(&q);
    expect_err(
        attention::attention(&mut s, dims, whole, whole, whole, softmax::Masks::default()),
        "are not 3 tokens × 9",
    );

    let ids_f32 = upload(&[3], &[0.0; 3]);
    expect_err(
        embedding::embedding(&mut s, &ids_f32, &a),
        "ids must be a u32 tensor",
    );
    let targets = upload_u32(&[2], &[0, 1]);
    expect_err(
        loss::cross_entropy(&mut s, &a, &targets),
        "targets must be u32 [3]",
    );
    expect_err(
        loss::kl_div(&mut s, &a, &a, &upload_u32(&[3], &[0, 1, 2]), 0.0),
        "temperature must be positive",
    );
    expect_err(s.upload(&[2, 2], &[1.0; 3]), "needs 4 elements");
    // Nothing invalid reached wgpu: the step still submits cleanly.
    s.submit()
        .expect("a step whose recordings all failed validation still submits");
    g.check().expect("no GPU error was recorded");
}

#[test]
fn zero_sized_tensors_are_errors() {
    let g = gpu();
    expect_err(Tensor::from_slice(g, &[0, 3], &[]), "zero-sized dimension");
    let mut s = g.step();
    expect_err(s.empty(&[4, 0]), "zero-sized dimension");
    expect_err(s.zeros(&[0]), "zero-sized dimension");
}

#[test]
fn buffers_over_the_device_limit_name_the_limit() {
    let g = gpu();
    let too_many = (g.max_binding() / 4 + 1) as usize;
    let mut s = g.step();
    match s.empty(&[too_many]) {
        Err(Error::TooLarge { limit_name, .. }) => {
            assert_eq!(limit_name, "max_storage_buffer_binding_size")
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    expect_err(s.empty(&[usize::MAX / 2, 4]), "overflows");
}

#[test]
fn an_output_bound_twice_is_an_error_not_a_validation_failure() {
    let g = gpu();
    let x = upload(&[8], &[1.0; 8]);
    let mut s = g.step();
    // axpy(acc, x) with acc and x the same buffer would bind one buffer as read and read_write.
    expect_err(elementwise::axpy(&mut s, &x, &x, 1.0), "also bound");
    s.submit().unwrap();
    g.check().unwrap();
}

#[test]
fn reshape_checks_the_element_count() {
    let x = upload(&[2, 6], &[0.0; 12]);
    assert_eq!(x.reshape(&[3, 4]).unwrap().shape(), &[3, 4]);
    expect_err(x.reshape(&[5, 2]), "cannot view");
}

/// Loss settings out of range are refused before a run starts, by name: a zero temperature used
/// to pass the start and fail at step 0 (in the page, after the finished student was replaced).
#[test]
fn a_student_too_large_for_the_page_is_refused_before_it_is_built() {
    use amad::model::{Config, StudentShape};
    use amad::train::page::check_student_size;
    let teacher = Config::teacher(amad::data::captions::tokenizer().len(), 16);
    let student = |shape: StudentShape| Config::student_of(&teacher, &shape);
    check_student_size(&student(StudentShape::default_for(&teacher))).unwrap();
    // One layer of width 4096 with 2 heads: the size that once ran the page out of memory.
    let wide = StudentShape::default_for(&teacher).overridden(
        Some((1, 1)),
        Some((4096, 4096)),
        Some((2, 2)),
    );
    expect_err(
        check_student_size(&student(wide)),
        "a student of 471.2 M parameters is too large for the page",
    );
    expect_err(
        check_student_size(&student(wide)),
        "Up to 115 M parameters fit",
    );
}

#[test]
fn distillation_settings_out_of_range_are_refused_by_name() {
    use amad::distill::DistillConfig;
    let d = DistillConfig::default();
    let refused = |c: DistillConfig, tau: f32| {
        c.with_method("amad-kl", tau, false)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    for (c, tau, word) in [
        (
            DistillConfig {
                temperature: 0.0,
                ..d
            },
            1.0,
            "temperature",
        ),
        (d, 0.0, "tau"),
        (DistillConfig { gamma: -1.0, ..d }, 1.0, "gamma"),
        (
            DistillConfig {
                alpha: f32::NAN,
                ..d
            },
            1.0,
            "alpha",
        ),
        (
            DistillConfig {
                beta: f32::INFINITY,
                ..d
            },
            1.0,
            "beta",
        ),
    ] {
        let err = refused(c, tau);
        assert!(err.contains(word), "{word}: {err:?}");
    }
    assert!(d.with_method("amad-kl", 0.5, true).is_ok());
}

/// A PNG chunk: length, type, data and its CRC-32.
fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let crc = kind.iter().chain(data).fold(!0u32, |mut c, &b| {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
        c
    });
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend(kind);
    out.extend(data);
    out.extend((!crc).to_be_bytes());
    out
}

/// Limits come before allocation: a 60-byte PNG whose header claims 60,000 × 60,000 pixels (10.8 GB
/// decoded) and a safetensors header that claims a 4 TB tensor are refused with a message, without
/// allocating what they claim.
#[test]
fn files_that_claim_huge_sizes_are_refused_before_allocating() {
    let mut ihdr = 60_000u32.to_be_bytes().to_vec();
    ihdr.extend(60_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    // A zlib stream of one byte: image data far short of what the header claims.
    png.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01],
    ));
    png.extend(png_chunk(b"IEND", &[]));
    let err = amad::data::image::decode(&png, "bomb.png")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bomb.png") && err.contains("too large to decode"),
        "{err}"
    );
    // An empty file is refused as no image, by name.
    let err = amad::data::image::decode(&[], "empty.png")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("empty.png") && err.contains("not an image"),
        "{err}"
    );
    let header =
        br#"{"t":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,4000000000000]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend(header);
    st.extend([0u8; 16]);
    let err = amad::model::formats::safetensors(&st, "huge.safetensors")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("huge.safetensors"), "{err}");
}
