//! Training batches from the scene stream: rendered images as normalised patches, and one
//! reference caption per image as decoder inputs and targets.

use crate::data::captions::references;
use crate::data::scenes::{Scene, Split, SIZE};
use crate::distill::Batch;
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::model::{Config, Tokenizer};
use crate::ops::image::{normalize_patchify, Preprocess};
use crate::ops::loss::IGNORE;
use crate::rng::Rng;

/// Normalised patches [B, N, C·P·P] of rendered scenes. The images are already the model's size
/// (so the resize is the identity); stacking them vertically into one [B·64, 64, 3] image gives
/// exactly each image's patches in order, since patches never straddle two images.
pub fn scene_patches(gpu: &Gpu, scenes: &[Scene], pre: &Preprocess) -> Result<Tensor> {
    let mut step = gpu.step();
    let pixels: Vec<f32> = scenes
        .iter()
        .flat_map(|s| s.render())
        .map(|v| v as f32)
        .collect();
    let stacked = step.upload(&[scenes.len() * SIZE, SIZE, 3], &pixels)?;
    let patches = normalize_patchify(&mut step, &stacked, pre)?;
    step.submit()?;
    let s = patches.shape().to_vec();
    patches.reshape(&[scenes.len(), s[0] / scenes.len(), s[1]])
}

/// Decoder inputs [start, w1 .. wn] and targets [w1 .. wn, eos], padded to `len` (targets IGNORE).
pub fn caption_ids(
    cfg: &Config,
    tok: &Tokenizer,
    caption: &str,
    len: usize,
) -> (Vec<u32>, Vec<u32>) {
    let mut words = tok.encode(caption);
    words.truncate(len - 1);
    let mut ids = vec![cfg.decoder_start_token_id];
    ids.extend(&words);
    let mut labels = words;
    labels.push(cfg.eos_token_id);
    ids.resize(len, cfg.pad_token_id);
    labels.resize(len, IGNORE);
    (ids, labels)
}

/// Batch `step` of the training stream: scenes step·B .. step·B + B of `split`, each with one of
/// its references (chosen by its index, so a resumed run sees the same batches).
pub fn scene_batch(
    gpu: &Gpu,
    cfg: &Config,
    pre: &Preprocess,
    split: Split,
    step: u64,
    batch: usize,
) -> Result<(Batch, Vec<Scene>)> {
    let tok = tokenizer_for(cfg)?;
    let len = cfg.decoder.n_positions;
    let scenes: Vec<Scene> = (0..batch)
        .map(|i| Scene::generate(split, step * batch as u64 + i as u64))
        .collect();
    let (mut ids, mut labels) = (vec![], vec![]);
    for (i, s) in scenes.iter().enumerate() {
        let refs = references(s);
        let pick = Rng::new(step.wrapping_mul(7919) ^ i as u64).below(refs.len());
        let (a, b) = caption_ids(cfg, &tok, &refs[pick], len);
        ids.extend(a);
        labels.extend(b);
    }
    let patches = scene_patches(gpu, &scenes, pre)?;
    let valid = labels.iter().map(|&l| l != IGNORE).collect();
    let batch = Batch {
        teacher_patches: patches.clone(),
        student_patches: patches,
        ids: Tensor::from_u32(gpu, &[batch, len], &ids)?,
        labels: Tensor::from_u32(gpu, &[batch * len], &labels)?,
        valid,
    };
    Ok((batch, scenes))
}

/// The scene vocabulary, checked against the model's.
fn tokenizer_for(cfg: &Config) -> Result<Tokenizer> {
    let tok = crate::data::captions::tokenizer();
    if tok.len() != cfg.decoder.vocab_size {
        return Err(crate::Error::Invalid(format!(
            "the scene vocabulary has {} tokens but the model's has {}",
            tok.len(),
            cfg.decoder.vocab_size
        )));
    }
    Ok(tok)
}
