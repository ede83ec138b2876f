//! `amad loss`: attention maps in, loss, gradient and alignment weights out, as safetensors, so
//! the GPU implementation can be checked against any other.
//!
//! Input: `teacher` [B, H_t, q, k] and `student` [B, H_s, q, k] (f32, rows softmaxed), optional
//! `mask` [B, q, k] (f32 0/1, valid cells). Output: `loss` (scalar: summed over teacher heads,
//! mean over the batch), `grad_student` [B, H_s, q, k] (d loss / d student), `weights`
//! [B, H_t, H_s].

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::ops::amad::{align, Options, Variant};
use safetensors::{Dtype, SafeTensors};

/// The variant names the command line accepts.
pub fn parse_variant(name: &str) -> Result<Variant> {
    Ok(match name {
        "mse" => Variant::Mse,
        "kl" => Variant::Kl,
        "token-kl" => Variant::TokenKl,
        "one-to-one-kl" => Variant::OneToOneKl,
        "one-to-one-mse" => Variant::OneToOneMse,
        other => {
            return Err(Error::Invalid(format!(
            "unknown variant {other:?}; choose mse, kl, token-kl, one-to-one-kl or one-to-one-mse"
        )))
        }
    })
}

/// The f32 tensor `name` of `rank` non-zero dimensions in `st` (`None`: absent); `file` names
/// the file in errors.
pub(crate) fn f32_tensor(
    gpu: &Gpu,
    st: &SafeTensors,
    file: &str,
    name: &str,
    rank: usize,
) -> Result<Option<Tensor>> {
    let Ok(view) = st.tensor(name) else {
        return Ok(None);
    };
    if view.dtype() != Dtype::F32 {
        return Err(Error::Invalid(format!(
            "{file}: {name} is {:?}; expected f32",
            view.dtype()
        )));
    }
    if view.shape().len() != rank || view.shape().contains(&0) {
        return Err(Error::Invalid(format!(
            "{file}: {name} has shape {:?}; expected {rank} non-zero dimensions",
            view.shape()
        )));
    }
    let data: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Some(Tensor::from_slice(gpu, view.shape(), &data)?))
}

/// Computes the loss of the maps in `input` (safetensors bytes; `file` names it in errors) and
/// returns the output file's bytes.
pub async fn loss_file(gpu: &Gpu, input: &[u8], file: &str, opts: Options) -> Result<Vec<u8>> {
    let st = SafeTensors::deserialize(input)
        .map_err(|e| Error::Invalid(format!("{file}: not a readable safetensors file ({e})")))?;
    let missing = |n: &str| {
        Error::Invalid(format!(
            "{file}: no tensor named {n} (expected teacher [B,Ht,q,k] and student [B,Hs,q,k])"
        ))
    };
    let teacher = f32_tensor(gpu, &st, file, "teacher", 4)?.ok_or_else(|| missing("teacher"))?;
    let student = f32_tensor(gpu, &st, file, "student", 4)?.ok_or_else(|| missing("student"))?;
    let mask = f32_tensor(gpu, &st, file, "mask", 3)?;
    let mut step = gpu.step();
    let a = align(&mut step, &teacher, &student, mask.as_ref(), opts, 1.0)
        .map_err(|e| Error::Invalid(format!("{file}: {e}")))?;
    step.submit()?;
    let loss = a.loss.read(gpu).await?;
    let grad = a.grad.read(gpu).await?;
    let weights = a.weights.read(gpu).await?;
    crate::model::weights::f32_safetensors(
        &[
            ("loss".into(), vec![], loss),
            ("grad_student".into(), a.grad.shape().to_vec(), grad),
            ("weights".into(), a.weights.shape().to_vec(), weights),
        ],
        None,
    )
    .map_err(|e| Error::Invalid(format!("writing the result: {e}")))
}
