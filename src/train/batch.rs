//! Training batches from the scene stream: rendered images as normalised patches, and one
//! reference caption per image as decoder inputs and targets.

use crate::data::captions::references;
use crate::data::scenes::{Scene, Split, SIZE};
use crate::distill::Batch;
use crate::error::Result;
use crate::gpu::{Gpu, Tensor};
use crate::model::weights::Precision;
use crate::model::{Config, Tokenizer};
use crate::ops::image::{normalize_patchify, preprocess, Preprocess};
use crate::ops::loss::IGNORE;
use crate::rng::Rng;
use std::collections::HashMap;

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

/// The user's own images with the teacher's captions as targets (`amad distill --images`, the
/// page's photo folder): each image decoded and preprocessed once, captioned by the teacher once.
#[derive(Default)]
pub struct ImageTargets {
    /// File names, in order.
    pub names: Vec<String>,
    /// Each image's key in the caption cache (see `image_key`).
    pub keys: Vec<String>,
    /// Normalised patches of each image, [N·C·P·P] on the CPU (600 KB at ViT-B/16's 224×224).
    pub patches: Vec<Vec<f32>>,
    /// The teacher's caption of each image.
    pub captions: Vec<String>,
    /// Patches per image and values per patch.
    pub patch_shape: [usize; 2],
    /// Decoder positions per training caption: the start token and the longest caption's tokens
    /// (with its end token), at most the decoder's n_positions.
    pub len: usize,
}

/// The share of the user's images held out for validation unless a run says otherwise (the CLI's
/// --val-fraction, the page's field).
pub const VAL_FRACTION: f64 = 0.1;

/// Images the teacher captions in one generation batch.
const CAPTION_BATCH: usize = 8;

/// 64-bit FNV-1a: its offset basis, and one step over a value.
const FNV_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
fn fnv_step(h: u64, x: u64) -> u64 {
    (h ^ x).wrapping_mul(0x0000_0100_0000_01b3)
}

/// An image's key in the caption cache: a 64-bit FNV-1a hash of its bytes, so that a renamed or
/// changed file is never matched to another image's caption.
pub fn image_key(bytes: &[u8]) -> String {
    format!(
        "{:016x}",
        bytes.iter().fold(FNV_BASIS, |h, &b| fnv_step(h, b as u64))
    )
}

/// The bytes of a teacher's files hashed in blocks of this many, each on its own.
const KEY_BLOCK: usize = 1 << 20;

/// FNV-1a over `bytes` taken as little-endian 64-bit words (the last one zero-padded), then over
/// their count: one changed word always changes it. Words rather than bytes because a full-size
/// teacher's files are a gigabyte (nlpconnect's 957 MB of safetensors: 0.14 s here, against 1.05
/// byte by byte); blocks hashed on their own, so that numpy hashes them side by side (amad_torch's
/// `teacher_key`, which gives the same keys).
fn words_hash(bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    let h = (&mut chunks).fold(FNV_BASIS, |h, c| {
        fnv_step(h, u64::from_le_bytes(c.try_into().expect("8 bytes")))
    });
    let rest = chunks.remainder();
    let h = if rest.is_empty() {
        h
    } else {
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        fnv_step(h, u64::from_le_bytes(last))
    };
    fnv_step(h, bytes.len() as u64)
}

/// A teacher's key in the caption cache: a hash of its checkpoint's files (by name: the name, the
/// hash of each 1 MiB block, the length) and of the precision its weights are held in, since
/// captions from half-precision weights may differ. Captions are reused only from the teacher with
/// the same key: another teacher, a changed file or another precision captions again.
pub fn teacher_key(files: &HashMap<String, Vec<u8>>, precision: Precision) -> String {
    let mut names: Vec<&String> = files.keys().collect();
    names.sort();
    let h = names.into_iter().fold(FNV_BASIS, |h, n| {
        let h = fnv_step(h, words_hash(n.as_bytes()));
        let h = files[n]
            .chunks(KEY_BLOCK)
            .fold(h, |h, block| fnv_step(h, words_hash(block)));
        fnv_step(h, files[n].len() as u64)
    });
    let tag: &[u8] = match precision {
        // The same values and the same sums, so the same captions, whatever their layout.
        Precision::F32 | Precision::F32Forward => b"f32",
        Precision::HalfWeights => b"half weights",
    };
    format!("{:016x}", fnv_step(h, words_hash(tag)))
}

/// Scores of a student's captions of held-out images against the teacher's captions of them.
#[derive(Clone, Debug)]
pub struct Agreement {
    pub n: usize,
    pub bleu4: f64,
    pub cider_d: f64,
    pub rouge_l: f64,
}

impl ImageTargets {
    /// Decodes `files` (name, bytes) and captions them with `teacher` as its checkpoint asks
    /// (its generation settings), `CAPTION_BATCH` images at a time. Captions already in `cached`
    /// (by `image_key`) are reused. `progress(done, total)` follows the captioning. Unreadable
    /// files are skipped and returned as messages, so one bad file never stops the run; no usable
    /// image is an error.
    pub async fn caption(
        gpu: &Gpu,
        teacher: &crate::model::captioner::Captioner,
        files: &[(String, Vec<u8>)],
        cached: &HashMap<String, String>,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<(ImageTargets, Vec<String>)> {
        let mut t = ImageTargets::default();
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
            let s = patches.shape();
            t.patch_shape = [s[1], s[2]];
            t.patches.push(patches.read(gpu).await?);
            let key = image_key(bytes);
            t.captions
                .push(cached.get(&key).cloned().unwrap_or_default());
            t.keys.push(key);
            t.names.push(name.clone());
        }
        if t.names.is_empty() {
            return Err(crate::Error::Invalid(format!(
                "none of the {} files is an image amad can read ({})",
                files.len(),
                crate::data::image::READABLE
            )));
        }
        let todo: Vec<usize> = (0..t.names.len())
            .filter(|&i| !cached.contains_key(&t.keys[i]))
            .collect();
        let [n, d] = t.patch_shape;
        for (done, chunk) in todo.chunks(CAPTION_BATCH).enumerate() {
            progress(done * CAPTION_BATCH, todo.len());
            let pixels: Vec<f32> = chunk.iter().flat_map(|&i| t.patches[i].clone()).collect();
            let patches = Tensor::from_slice(gpu, &[chunk.len(), n, d], &pixels)?;
            let ids = teacher
                .model
                .generate(gpu, &patches, teacher.generation)
                .await?;
            for (&i, ids) in chunk.iter().zip(ids) {
                t.captions[i] = teacher.tokenizer.decode(&ids);
            }
        }
        progress(todo.len(), todo.len());
        let cfg = &teacher.model.cfg;
        let longest = t
            .captions
            .iter()
            .map(|c| teacher.tokenizer.encode(c).len() + 1)
            .max()
            .unwrap_or(0);
        t.len = longest.clamp(1, cfg.decoder.n_positions);
        Ok((t, skipped))
    }

    /// Holds out a share `fraction` (0 to under 1) of the images for validation, at least one
    /// when the share is above 0: the images whose keys come first, so the choice depends on the
    /// images alone and an image stays on its side when others join the folder. Returns (the
    /// training images, the held-out ones); too few images for both is an error.
    pub fn split(self, fraction: f64) -> Result<(ImageTargets, ImageTargets)> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(crate::Error::Invalid(format!(
                "the validation share must be at least 0 and below 1, got {fraction}"
            )));
        }
        let n = self.names.len();
        let held = if fraction > 0.0 {
            ((n as f64 * fraction).round() as usize).max(1)
        } else {
            0
        };
        if n <= held {
            return Err(crate::Error::Invalid(format!(
                "{n} readable image{} too few: distilling needs at least one image to train on \
                 besides the {held} held out for validation; add images, or set the validation \
                 share to 0",
                if n == 1 { " is" } else { "s are" }
            )));
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| {
            (&self.keys[a], &self.names[a]).cmp(&(&self.keys[b], &self.names[b]))
        });
        let mut is_held = vec![false; n];
        for &i in &order[..held] {
            is_held[i] = true;
        }
        let part = |want: bool| ImageTargets {
            names: pick(&self.names, &is_held, want),
            keys: pick(&self.keys, &is_held, want),
            patches: pick(&self.patches, &is_held, want),
            captions: pick(&self.captions, &is_held, want),
            patch_shape: self.patch_shape,
            len: self.len,
        };
        Ok((part(false), part(true)))
    }

    /// The student `c`'s captions of these images (as `generation` says, 16 at a time), scored
    /// against the teacher's.
    pub async fn agreement(
        &self,
        gpu: &Gpu,
        c: &crate::model::captioner::Captioner,
        generation: crate::model::generate::Generation,
    ) -> Result<Agreement> {
        let [n, d] = self.patch_shape;
        let mut captions = vec![];
        for start in (0..self.names.len()).step_by(16) {
            let end = (start + 16).min(self.names.len());
            let pixels: Vec<f32> = self.patches[start..end].concat();
            let patches = Tensor::from_slice(gpu, &[end - start, n, d], &pixels)?;
            for ids in c.model.generate(gpu, &patches, generation).await? {
                captions.push(c.tokenizer.decode(&ids));
            }
        }
        let refs: Vec<Vec<String>> = self.captions.iter().map(|c| vec![c.clone()]).collect();
        let s = crate::eval::metrics::score(&captions, &refs);
        Ok(Agreement {
            n: captions.len(),
            bleu4: s.bleu[3],
            cider_d: s.cider_d,
            rouge_l: s.rouge_l,
        })
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
        let mut rng = Rng::new(step.wrapping_mul(0x9e37_79b9) ^ 0x1a9e5);
        let (mut ids, mut labels, mut patches) = (vec![], vec![], vec![]);
        for _ in 0..batch {
            let i = rng.below(self.names.len());
            let (a, b) = caption_ids(cfg, tok, &self.captions[i], self.len);
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
            ids: Tensor::from_u32(gpu, &[batch, self.len], &ids)?,
            labels: Tensor::from_u32(gpu, &[batch * self.len], &labels)?,
            valid,
        })
    }
}

/// The items of `all` whose flag is `want`.
fn pick<T: Clone>(all: &[T], flags: &[bool], want: bool) -> Vec<T> {
    all.iter()
        .zip(flags)
        .filter(|(_, &f)| f == want)
        .map(|(x, _)| x.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &[u8])]) -> HashMap<String, Vec<u8>> {
        list.iter()
            .map(|(n, b)| (n.to_string(), b.to_vec()))
            .collect()
    }

    #[test]
    fn image_keys_tell_contents_apart() {
        let photo: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let key = image_key(&photo);
        assert_eq!(key.len(), 16);
        assert_eq!(image_key(&photo.clone()), key);
        for at in [0, 7, 8, 500, 999] {
            let mut changed = photo.clone();
            changed[at] ^= 1;
            assert_ne!(image_key(&changed), key, "byte {at}");
        }
        // A byte more or less, a zero one too.
        assert_ne!(image_key(&photo[..999]), key);
        assert_ne!(image_key(&[photo.as_slice(), &[0]].concat()), key);
    }

    #[test]
    fn teacher_keys_follow_files_and_precision() {
        let teacher = files(&[
            ("config.json", b"{\"a\": 1}"),
            ("model.safetensors", &[1; 40]),
        ]);
        let key = teacher_key(&teacher, Precision::F32);
        // The same files however they were gathered.
        let mut again = HashMap::new();
        again.insert("model.safetensors".to_string(), vec![1; 40]);
        again.insert("config.json".to_string(), b"{\"a\": 1}".to_vec());
        assert_eq!(teacher_key(&again, Precision::F32), key);
        // Its weights at half precision, a changed weight, a renamed or an added file: another.
        assert_ne!(teacher_key(&teacher, Precision::HalfWeights), key);
        let mut changed = teacher.clone();
        changed.get_mut("model.safetensors").unwrap()[39] = 2;
        assert_ne!(teacher_key(&changed, Precision::F32), key);
        let renamed = files(&[
            ("config.json", b"{\"a\": 1}"),
            ("pytorch_model.bin", &[1; 40]),
        ]);
        assert_ne!(teacher_key(&renamed, Precision::F32), key);
        let mut more = teacher.clone();
        more.insert("generation_config.json".into(), b"{}".to_vec());
        assert_ne!(teacher_key(&more, Precision::F32), key);
        // A weight changed past the first block; a zero more in a file, within its last word or
        // past it.
        let mut big = teacher.clone();
        big.insert("model.safetensors".into(), vec![1; 3 * KEY_BLOCK + 5]);
        let big_key = teacher_key(&big, Precision::F32);
        big.get_mut("model.safetensors").unwrap()[2 * KEY_BLOCK + 3] = 0;
        assert_ne!(teacher_key(&big, Precision::F32), big_key);
        for zeros in [1, 3, 8] {
            let mut padded = teacher.clone();
            padded
                .get_mut("config.json")
                .unwrap()
                .extend(vec![0; zeros]);
            assert_ne!(teacher_key(&padded, Precision::F32), key, "{zeros} zeros");
        }
        // Bytes moved from one file to the next.
        let moved = files(&[
            ("config.json", b"{\"a\": 1}\x01"),
            ("model.safetensors", &[1; 39]),
        ]);
        assert_ne!(teacher_key(&moved, Precision::F32), key);
    }
}
