//! A complete captioner: the model, its vocabulary, its image preprocessing and its generation
//! settings, saved as one checkpoint directory (config.json, model.safetensors,
//! preprocessor_config.json, tokenizer.json: what transformers and tokenizers read) and loaded
//! from one as amad writes it or as the Hugging Face Hub holds it (other weight formats, GPT-2's
//! vocab.json and merges.txt, generation_config.json).

use super::formats::shard_names;
use super::generate::Generation;
use super::{preprocessor, Model, Precision, Tokenizer, WeightFiles};
use crate::data::image::Pixels;
use crate::error::{shape_err, Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::ops::image::{preprocess, Preprocess};
use std::collections::HashMap;

pub struct Captioner {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub preprocess: Preprocess,
    /// How the checkpoint asks to be decoded (generation_config.json, else config.json).
    pub generation: Generation,
}

/// A checkpoint's files, as text and bytes (from disk, a download or the browser).
pub struct CheckpointFiles<'a> {
    pub config: &'a str,
    pub weights: WeightFiles<'a>,
    pub preprocessor: &'a str,
    pub tokenizer: TokenizerFiles<'a>,
    /// generation_config.json, where the checkpoint has one.
    pub generation: Option<&'a str>,
}

/// The vocabulary: tokenizer.json, or GPT-2's vocab.json and merges.txt where a repository has
/// no tokenizer.json (with special_tokens_map.json when it has one).
pub enum TokenizerFiles<'a> {
    Json(&'a str),
    VocabMerges {
        vocab: &'a str,
        merges: &'a str,
        special_tokens_map: Option<&'a str>,
    },
}

impl TokenizerFiles<'_> {
    fn read(&self, source: &str) -> Result<Tokenizer> {
        let located = |err: Error, file: &str| match err {
            Error::Invalid(m) if m.starts_with(file) => Error::Invalid(format!("{source}/{m}")),
            Error::Invalid(m) => Error::Invalid(format!("{source}/{file}: {m}")),
            other => other,
        };
        match self {
            TokenizerFiles::Json(text) => {
                Tokenizer::from_json(text).map_err(|e| located(e, "tokenizer.json"))
            }
            TokenizerFiles::VocabMerges {
                vocab,
                merges,
                special_tokens_map,
            } => {
                let specials = match special_tokens_map {
                    Some(text) => {
                        special_tokens(text).map_err(|e| located(e, "special_tokens_map.json"))?
                    }
                    None => vec![],
                };
                Tokenizer::from_vocab_merges(vocab, merges, &specials)
                    .map_err(|e| located(e, "vocab.json"))
            }
        }
    }
}

const SAFETENSORS: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";
const TORCH_BIN: &str = "pytorch_model.bin";

/// The checkpoint's weights file, by preference: safetensors (one file, then sharded), then
/// torch's pickle archive. The page fetches from the Hub in the same order.
fn weights_file(has: impl Fn(&str) -> bool) -> Option<&'static str> {
    [SAFETENSORS, INDEX, TORCH_BIN].into_iter().find(|n| has(n))
}

/// The files a checkpoint may have besides config, preprocessor and weights: amad reads those
/// present (the vocabulary in either form, the generation defaults).
#[cfg(not(target_arch = "wasm32"))]
const OPTIONAL_FILES: [&str; 5] = [
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "generation_config.json",
];

/// The distinct tokens special_tokens_map.json names (each a string or {"content": ...}).
fn special_tokens(text: &str) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Error::Invalid(format!("special_tokens_map.json: not valid JSON ({e})")))?;
    let mut out: Vec<String> = vec![];
    let one = |x: &serde_json::Value| {
        x.as_str()
            .or_else(|| x.get("content").and_then(|c| c.as_str()))
            .map(str::to_string)
    };
    for x in v.as_object().into_iter().flat_map(|o| o.values()) {
        let names: Vec<String> = match x.as_array() {
            Some(list) => list.iter().filter_map(one).collect(),
            None => one(x).into_iter().collect(),
        };
        for n in names {
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    Ok(out)
}

impl Captioner {
    /// A checkpoint from its files, its weights held as `precision` says.
    pub fn from_files(
        gpu: &Gpu,
        files: &CheckpointFiles,
        source: &str,
        precision: Precision,
    ) -> Result<Captioner> {
        let model = Model::from_files(gpu, files.config, &files.weights, source, precision)?;
        let e = &model.cfg.encoder;
        let preprocess = preprocessor::from_json(files.preprocessor, e.patch_size)
            .map_err(|err| Error::Invalid(format!("{source}/{err}")))?;
        if preprocess.size != (e.image_size, e.image_size) {
            return Err(Error::Invalid(format!(
                "{source}/preprocessor_config.json resizes to {:?}, but the model takes {}×{} images",
                preprocess.size, e.image_size, e.image_size
            )));
        }
        let mut tokenizer = files.tokenizer.read(source)?;
        if tokenizer.len() != model.cfg.decoder.vocab_size {
            return Err(Error::Invalid(format!(
                "{source}: the tokenizer has {} tokens but the model's vocabulary has {}",
                tokenizer.len(),
                model.cfg.decoder.vocab_size
            )));
        }
        let c = &model.cfg;
        tokenizer.mark_special(&[
            c.bos_token_id,
            c.eos_token_id,
            c.pad_token_id,
            c.decoder_start_token_id,
        ]);
        let generation = Generation::from_configs(files.generation, files.config)
            .map_err(|err| Error::Invalid(format!("{source}/{err}")))?;
        Ok(Captioner {
            model,
            tokenizer,
            preprocess,
            generation,
        })
    }

    /// A checkpoint from its files by name (as a directory, a download or the browser holds
    /// them): config.json, preprocessor_config.json, generation_config.json where there is one,
    /// the weights (the first format `weights_file` finds; with sharded safetensors, the shards
    /// the index names) and the vocabulary (tokenizer.json, else vocab.json and merges.txt).
    /// `source` names the checkpoint in errors; `precision` says how its weights are held.
    pub fn from_file_map(
        gpu: &Gpu,
        files: &HashMap<String, Vec<u8>>,
        source: &str,
        precision: Precision,
    ) -> Result<Captioner> {
        let has = |name: &str| files.contains_key(name);
        let bytes = |name: &str| {
            files.get(name).map(Vec::as_slice).ok_or_else(|| {
                Error::Invalid(format!("{source}: {name} is missing from the checkpoint"))
            })
        };
        let text = |name: &str| {
            std::str::from_utf8(bytes(name)?)
                .map_err(|_| Error::Invalid(format!("{source}/{name}: not UTF-8 text")))
        };
        let shards;
        let weights = match weights_file(has) {
            Some(SAFETENSORS) => WeightFiles::Safetensors(bytes(SAFETENSORS)?),
            Some(INDEX) => {
                let index = text(INDEX)?;
                shards = shard_names(index, &format!("{source}/{INDEX}"))?
                    .into_iter()
                    .map(|n| Ok((n.clone(), bytes(&n)?.to_vec())))
                    .collect::<Result<Vec<_>>>()?;
                WeightFiles::Sharded {
                    index,
                    shards: &shards,
                }
            }
            Some(_) => WeightFiles::TorchBin(bytes(TORCH_BIN)?),
            None => {
                return Err(Error::Invalid(format!(
                    "{source}: no weights: expected {SAFETENSORS}, {INDEX} or {TORCH_BIN}"
                )))
            }
        };
        let tokenizer = if has("tokenizer.json") || !has("vocab.json") {
            TokenizerFiles::Json(text("tokenizer.json")?)
        } else {
            TokenizerFiles::VocabMerges {
                vocab: text("vocab.json")?,
                merges: text("merges.txt")?,
                special_tokens_map: has("special_tokens_map.json")
                    .then(|| text("special_tokens_map.json"))
                    .transpose()?,
            }
        };
        let files = CheckpointFiles {
            config: text("config.json")?,
            weights,
            preprocessor: text("preprocessor_config.json")?,
            tokenizer,
            generation: has("generation_config.json")
                .then(|| text("generation_config.json"))
                .transpose()?,
        };
        Self::from_files(gpu, &files, source, precision)
    }

    /// Loads a checkpoint directory as amad writes it or as the Hugging Face Hub holds it,
    /// reading only the files `from_file_map` uses, every parameter in f32.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(gpu: &Gpu, dir: &std::path::Path) -> Result<Captioner> {
        Self::load_as(gpu, dir, Precision::F32)
    }

    /// [`Captioner::load`], the weights held as `precision` says.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_as(gpu: &Gpu, dir: &std::path::Path, precision: Precision) -> Result<Captioner> {
        let files = Self::read_files(dir)?;
        Self::from_file_map(gpu, &files, &dir.display().to_string(), precision)
    }

    /// The files of the checkpoint directory `dir` that `from_file_map` uses, by name: its
    /// configs, tokenizer files and one weight format (the shards of a sharded one).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_files(dir: &std::path::Path) -> Result<HashMap<String, Vec<u8>>> {
        let has = |name: &str| dir.join(name).is_file();
        let mut names: Vec<String> = OPTIONAL_FILES
            .iter()
            .chain(&["config.json", "preprocessor_config.json"])
            .filter(|n| has(n))
            .map(|n| n.to_string())
            .collect();
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
        };
        let mut files = HashMap::new();
        match weights_file(has) {
            Some(INDEX) => {
                let index = read(INDEX)?;
                let text = String::from_utf8_lossy(&index).into_owned();
                names.extend(shard_names(&text, &dir.join(INDEX).display().to_string())?);
                files.insert(INDEX.to_string(), index);
            }
            Some(w) => names.push(w.to_string()),
            None => {}
        }
        for n in names {
            let b = read(&n)?;
            files.insert(n, b);
        }
        Ok(files)
    }

    /// Writes the five files into `dir`: config.json, model.safetensors,
    /// preprocessor_config.json, tokenizer.json and generation_config.json.
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn save(&self, gpu: &Gpu, dir: &std::path::Path) -> Result<()> {
        self.model.save(gpu, dir).await?;
        let write = |name: &str, text: String| {
            std::fs::write(dir.join(name), text)
                .map_err(|e| Error::Invalid(format!("{}: {e}", dir.join(name).display())))
        };
        write(
            "preprocessor_config.json",
            preprocessor::to_json(&self.preprocess),
        )?;
        write("tokenizer.json", self.tokenizer.to_json())?;
        write(
            "generation_config.json",
            self.generation.to_json(&self.model.cfg),
        )
    }

    /// Normalised patches [1, N, C·P·P] of one image.
    pub fn patches(&self, gpu: &Gpu, image: &Pixels) -> Result<Tensor> {
        self.batch_patches(gpu, std::slice::from_ref(image))
    }

    /// Normalised patches [B, N, C·P·P] of B images, preprocessed in one step.
    pub fn batch_patches(&self, gpu: &Gpu, images: &[Pixels]) -> Result<Tensor> {
        let mut step = gpu.step();
        let mut each = Vec::with_capacity(images.len());
        for image in images {
            let rgba = step.upload_u32(&[image.height, image.width], &image.rgba)?;
            each.push(preprocess(&mut step, &rgba, &self.preprocess)?);
        }
        let [first, ..] = &each[..] else {
            return shape_err("patches", "no images");
        };
        let s = first.shape().to_vec();
        let patches = if let [one] = &each[..] {
            one.clone()
        } else {
            let all = step.empty(&[each.len() * s[0], s[1]])?;
            for (i, p) in each.iter().enumerate() {
                step.copy_range(p, 0, p.numel(), &all, i * p.numel())?;
            }
            all
        };
        step.submit()?;
        patches.reshape(&[images.len(), s[0], s[1]])
    }

    /// Where each generated token looked: for caption `ids` of the image `patches` [1, N, C·P·P],
    /// per token the cross-attention over the N image patches (CLS left out) at the position that
    /// produced it, the mean over layers and heads; as many rows as tokens (at most n_positions).
    /// The maps come from one teacher-forced pass over [start, ids..] that keeps nothing else.
    pub async fn word_attention(
        &self,
        gpu: &Gpu,
        patches: &Tensor,
        ids: &[u32],
    ) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.model.cfg;
        let mut input = vec![cfg.decoder_start_token_id];
        input.extend(ids);
        input.truncate(cfg.decoder.n_positions);
        let layers = cfg.decoder.n_layer;
        let keep = super::KeepMaps {
            cross: vec![true; layers],
            ..Default::default()
        };
        let mut step = gpu.step();
        let id_tensor = step.upload_u32(&[1, input.len()], &input)?;
        let fwd = self
            .model
            .forward_maps(&mut step, patches, &id_tensor, &keep)?;
        let maps = fwd
            .cross
            .iter()
            .flatten()
            .map(|p| p.maps(&mut step))
            .collect::<Result<Vec<_>>>()?;
        step.submit()?;
        let (tokens, len) = (cfg.encoder.tokens(), input.len());
        let mut heat = vec![vec![0f32; tokens - 1]; ids.len().min(len)];
        for m in maps {
            let heads = m.shape()[1];
            let v = m.read(gpu).await?;
            for (w, row) in heat.iter_mut().enumerate() {
                for h in 0..heads {
                    let base = (h * len + w) * tokens;
                    // Token 0 is the CLS token: no place in the image.
                    for (p, x) in row.iter_mut().enumerate() {
                        *x += v[base + 1 + p] / (heads * layers) as f32;
                    }
                }
            }
        }
        Ok(heat)
    }

    /// The caption of one image.
    pub async fn caption(
        &self,
        gpu: &Gpu,
        image: &Pixels,
        generation: Generation,
    ) -> Result<String> {
        let mut one = self
            .captions(gpu, std::slice::from_ref(image), generation)
            .await?;
        Ok(one.remove(0))
    }

    /// The captions of several images, generated together: each token's products read every
    /// weight once for all of them. Each caption is the one the image gets alone (every kernel
    /// sums a row's terms in the same order whatever the rows beside it).
    pub async fn captions(
        &self,
        gpu: &Gpu,
        images: &[Pixels],
        generation: Generation,
    ) -> Result<Vec<String>> {
        let patches = self.batch_patches(gpu, images)?;
        let ids = self.model.generate(gpu, &patches, generation).await?;
        Ok(ids.iter().map(|ids| self.tokenizer.decode(ids)).collect())
    }
}
