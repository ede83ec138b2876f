//! Training batches from the scene stream: rendered images as normalised patches, and one
//! reference caption per image as decoder inputs and targets.

use crate::data::captions::references;
use crate::data::scenes::{Scene, Split, SIZE};
use crate::distill::Batch;
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::model::{Config, Tokenizer};
use crate::ops::image::{normalize_patchify, preprocess, Preprocess};
use crate::ops::loss::IGNORE;
use crate::rng::Rng;

/// Normalised patches [B, N, C·P·P] of rendered scenes. For a model of 64×64 images (the resize is
/// the identity) the scenes are stacked vertically into one [B·64, 64, 3] image, which gives
/// exactly each image's patches in order, since patches never straddle two images; for any other
/// size each scene goes through the whole preprocessing, resize included.
pub fn scene_patches(gpu: &Gpu, scenes: &[Scene], pre: &Preprocess) -> Result<Tensor> {
    let mut step = gpu.step();
    let patches = if pre.size == (SIZE, SIZE) {
        // Scenes are already the model's size: one upload, one patchify for the whole batch.
        let pixels: Vec<f32> = scenes
            .iter()
            .flat_map(|s| s.render())
            .map(|v| v as f32)
            .collect();
        let stacked = step.upload(&[scenes.len() * SIZE, SIZE, 3], &pixels)?;
        let p = normalize_patchify(&mut step, &stacked, pre)?;
        let s = p.shape().to_vec();
        p.reshape(&[scenes.len(), s[0] / scenes.len(), s[1]])?
    } else {
        // A model of another input size gets each scene resized as any image is.
        let mut parts = vec![];
        for scene in scenes {
            let rgba: Vec<u32> = scene
                .render()
                .chunks(3)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], 255]))
                .collect();
            let pixels = step.upload_u32(&[SIZE, SIZE], &rgba)?;
            parts.push(preprocess(&mut step, &pixels, pre)?);
        }
        let s = parts
            .first()
            .ok_or_else(|| crate::Error::Invalid("no scenes to patchify".into()))?
            .shape()
            .to_vec();
        let all = step.empty(&[parts.len(), s[0], s[1]])?;
        for (i, p) in parts.iter().enumerate() {
            step.copy_into(p, &all, i * p.numel())?;
        }
        all
    };
    step.submit()?;
    Ok(patches)
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

/// The user's own images with the teacher's captions as targets (`amad distill --images`): the
/// teacher captions each image once, and batches draw from them.
pub struct ImageTargets {
    /// File names, in order.
    pub names: Vec<String>,
    /// Normalised patches of each image, [N·C·P·P] on the CPU (small: 65×192 floats at 64×64).
    pub patches: Vec<Vec<f32>>,
    /// The teacher's caption of each image.
    pub captions: Vec<String>,
    /// Patches per image and values per patch.
    pub patch_shape: [usize; 2],
}

impl ImageTargets {
    /// Decodes and captions `files` (name, bytes) with `teacher`. Unreadable files are skipped and
    /// returned as error messages, so one bad file never stops the run; no usable image is an error.
    pub async fn caption(
        gpu: &Gpu,
        teacher: &crate::model::captioner::Captioner,
        files: &[(String, Vec<u8>)],
    ) -> Result<(ImageTargets, Vec<String>)> {
        let mut t = ImageTargets {
            names: vec![],
            patches: vec![],
            captions: vec![],
            patch_shape: [0, 0],
        };
        let mut skipped = vec![];
        for (name, bytes) in files {
            let pixels = match crate::data::image::decode(bytes, name) {
                Ok(p) => p,
                Err(e) => {
                    skipped.push(e.to_string());
                    continue;
                }
            };
            let patches = teacher.patches(gpu, &pixels)?;
            let ids = teacher
                .model
                .generate(gpu, &patches, crate::model::generate::Generation::default())
                .await?;
            let s = patches.shape();
            t.patch_shape = [s[1], s[2]];
            t.patches.push(patches.read(gpu).await?);
            t.captions.push(teacher.tokenizer.decode(&ids[0]));
            t.names.push(name.clone());
        }
        if t.names.is_empty() {
            return Err(crate::Error::Invalid(format!(
                "none of the {} files is an image amad can read (PNG, JPEG, WebP or GIF)",
                files.len()
            )));
        }
        Ok((t, skipped))
    }

    /// Batch `step`: `batch` images drawn with replacement (by the step, so a resumed run sees the
    /// same batches), each with the teacher's caption as decoder input and target.
    pub fn batch(
        &self,
        gpu: &Gpu,
        cfg: &Config,
        tok: &Tokenizer,
        step: u64,
        batch: usize,
    ) -> Result<Batch> {
        let len = cfg.decoder.n_positions;
        let mut rng = Rng::new(step.wrapping_mul(0x9e37_79b9) ^ 0x1a9e5);
        let (mut ids, mut labels, mut patches) = (vec![], vec![], vec![]);
        for _ in 0..batch {
            let i = rng.below(self.names.len());
            let (a, b) = caption_ids(cfg, tok, &self.captions[i], len);
            ids.extend(a);
            labels.extend(b);
            patches.extend_from_slice(&self.patches[i]);
        }
        let [n, d] = self.patch_shape;
        let patches = Tensor::from_slice(gpu, &[batch, n, d], &patches)?;
        let valid = labels.iter().map(|&l| l != IGNORE).collect();
        Ok(Batch {
            teacher_patches: patches.clone(),
            student_patches: patches,
            ids: Tensor::from_u32(gpu, &[batch, len], &ids)?,
            labels: Tensor::from_u32(gpu, &[batch * len], &labels)?,
            valid,
        })
    }
}
