//! A complete captioner: the model, its vocabulary and its image preprocessing, saved and loaded
//! as one checkpoint directory (config.json, model.safetensors, preprocessor_config.json,
//! tokenizer.json: what transformers and tokenizers read).

use super::generate::Generation;
use super::{preprocessor, Model, Tokenizer};
use crate::data::image::Pixels;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::ops::image::{preprocess, Preprocess};

pub struct Captioner {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub preprocess: Preprocess,
}

/// The four files of a checkpoint, as text and bytes (from disk, a download or the browser).
pub struct CheckpointFiles<'a> {
    pub config: &'a str,
    pub weights: &'a [u8],
    pub preprocessor: &'a str,
    pub tokenizer: &'a str,
}

impl Captioner {
    pub fn from_files(gpu: &Gpu, files: &CheckpointFiles, source: &str) -> Result<Captioner> {
        let model = Model::from_bytes(gpu, files.config, files.weights, source)?;
        let e = &model.cfg.encoder;
        let preprocess = preprocessor::from_json(files.preprocessor, e.patch_size)
            .map_err(|err| Error::Invalid(format!("{source}/{err}")))?;
        if preprocess.size != (e.image_size, e.image_size) {
            return Err(Error::Invalid(format!(
                "{source}/preprocessor_config.json resizes to {:?}, but the model takes {}×{} images",
                preprocess.size, e.image_size, e.image_size
            )));
        }
        let tokenizer = Tokenizer::from_json(files.tokenizer)
            .map_err(|err| Error::Invalid(format!("{source}/{err}")))?;
        if tokenizer.len() != model.cfg.decoder.vocab_size {
            return Err(Error::Invalid(format!(
                "{source}: tokenizer.json has {} tokens but the model's vocabulary has {}",
                tokenizer.len(),
                model.cfg.decoder.vocab_size
            )));
        }
        Ok(Captioner {
            model,
            tokenizer,
            preprocess,
        })
    }

    /// Loads a checkpoint directory.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(gpu: &Gpu, dir: &std::path::Path) -> Result<Captioner> {
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .map_err(|e| Error::Invalid(format!("{}: {e}", dir.join(name).display())))
        };
        let text = |name: &str| {
            String::from_utf8(read(name)?).map_err(|_| {
                Error::Invalid(format!("{}: not UTF-8 text", dir.join(name).display()))
            })
        };
        let files = CheckpointFiles {
            config: &text("config.json")?,
            weights: &read("model.safetensors")?,
            preprocessor: &text("preprocessor_config.json")?,
            tokenizer: &text("tokenizer.json")?,
        };
        Self::from_files(gpu, &files, &dir.display().to_string())
    }

    /// Writes the four files into `dir`.
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
        write("tokenizer.json", self.tokenizer.to_json())
    }

    /// Normalised patches [1, N, C·P·P] of one image.
    pub fn patches(&self, gpu: &Gpu, image: &Pixels) -> Result<Tensor> {
        let mut step = gpu.step();
        let rgba = step.upload_u32(&[image.height, image.width], &image.rgba)?;
        let patches = preprocess(&mut step, &rgba, &self.preprocess)?;
        step.submit()?;
        let s = patches.shape().to_vec();
        patches.reshape(&[1, s[0], s[1]])
    }

    /// The caption of one image.
    pub async fn caption(
        &self,
        gpu: &Gpu,
        image: &Pixels,
        generation: Generation,
    ) -> Result<String> {
        let patches = self.patches(gpu, image)?;
        let ids = self.model.generate(gpu, &patches, generation).await?;
        Ok(self.tokenizer.decode(&ids[0]))
    }
}
