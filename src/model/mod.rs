//! The captioner: a ViT encoder and a GPT-2 decoder with cross-attention, in Hugging Face's
//! VisionEncoderDecoder layout. Teacher and student are two configs of the same code.
//!
//! Forward and backward are written out layer by layer (encoder.rs, decoder.rs); every
//! activation the backward needs is kept in the returned structs, on the GPU.

pub mod bpe;
pub mod captioner;
pub mod config;
pub mod decoder;
pub mod encoder;
pub mod formats;
pub mod generate;
pub mod linear;
pub mod mlp;
pub mod preprocessor;
pub mod tokenizer;
pub mod weights;

pub use config::{Config, StudentShape};
pub use formats::WeightFiles;
pub use tokenizer::Tokenizer;
pub use weights::{Layout, Precision, Weights};

use crate::error::{shape_err, Error, Result};
use crate::gpu::{Gpu, Step, Tensor};
use crate::ops::attention::{attention_bwd, Dims, Grads, Probs, Saved, Seq};
use crate::ops::layernorm::layernorm_bwd;
use crate::ops::loss::{cross_entropy, cross_entropy_bwd};
use crate::ops::optim::{adamw, clip_grad_norm, AdamW, Slot};

/// A model: its config, parameter layout and weights on one device.
pub struct Model {
    pub cfg: Config,
    pub layout: Layout,
    pub weights: Weights,
}

/// The forward pass of a batch: logits, every attention map, and what the backward needs.
pub struct Forward {
    pub encoder: encoder::EncoderActs,
    pub decoder: decoder::DecoderActs,
}

impl Forward {
    /// [B, L, vocab]
    pub fn logits(&self) -> &Tensor {
        &self.decoder.logits
    }
    /// Encoder self-attention per layer, as kept (see `Probs::maps` for [B, H, T, T]).
    pub fn encoder_attentions(&self) -> Vec<&Probs> {
        self.encoder.blocks.iter().map(|b| &b.probs).collect()
    }
    /// Decoder causal self-attention per layer, as kept ([B, H, L, L]).
    pub fn decoder_attentions(&self) -> Vec<&Probs> {
        self.decoder.blocks.iter().map(|b| &b.self_probs).collect()
    }
    /// Decoder cross-attention per layer, as kept ([B, H, L, T]).
    pub fn cross_attentions(&self) -> Vec<&Probs> {
        self.decoder.blocks.iter().map(|b| &b.cross_probs).collect()
    }
}

/// Which layers' attention maps a `forward_maps` keeps, per attention kind (missing: none).
#[derive(Clone, Debug, Default)]
pub struct KeepMaps {
    pub encoder: Vec<bool>,
    pub decoder_self: Vec<bool>,
    pub cross: Vec<bool>,
}

/// Per layer, its attention maps where they were kept.
pub type LayerMaps = Vec<Option<Probs>>;

/// What `forward_maps` keeps: the logits [B, L, vocab] and, per layer, the maps asked for.
pub struct MapsForward {
    pub logits: Tensor,
    pub encoder: LayerMaps,
    pub decoder_self: LayerMaps,
    pub cross: LayerMaps,
}

/// Gradients arriving at the attention maps from a distillation loss, per layer (`None`: none),
/// for the encoder's self-attention, the decoder's self-attention and its cross-attention.
#[derive(Default)]
pub struct MapGrads {
    pub encoder: Vec<Option<Tensor>>,
    pub decoder_self: Vec<Option<Tensor>>,
    pub cross: Vec<Option<Tensor>>,
}

/// Optimiser state: gradients and AdamW moments, one tensor per parameter.
pub struct Optimizer {
    pub grads: Weights,
    m: Weights,
    v: Weights,
    pub cfg: AdamW,
    /// Global gradient-norm bound (`f32::INFINITY`: measure, never clip).
    pub max_norm: f32,
    /// Steps taken.
    pub t: u32,
}

impl Optimizer {
    pub fn new(gpu: &Gpu, layout: &Layout, cfg: AdamW, max_norm: f32) -> Result<Optimizer> {
        Ok(Optimizer {
            grads: Weights::zeros(gpu, layout)?,
            m: Weights::zeros(gpu, layout)?,
            v: Weights::zeros(gpu, layout)?,
            cfg,
            max_norm,
            t: 0,
        })
    }

    /// The AdamW moments (for checkpoints).
    pub fn moments(&self) -> (&Weights, &Weights) {
        (&self.m, &self.v)
    }

    /// Restores moments and the step count saved by a checkpoint.
    pub fn restore(&mut self, m: Weights, v: Weights, t: u32) {
        self.m = m;
        self.v = v;
        self.t = t;
    }

    /// Zeroes the gradients (in recording order).
    pub fn zero_grad(&self, step: &mut Step) {
        self.grads.clear(step);
    }

    /// Clips the gradients' global norm and applies one AdamW update; returns [norm, scale].
    pub fn update(&mut self, step: &mut Step, weights: &Weights) -> Result<Tensor> {
        self.t += 1;
        // Whole blocks at a time: parameters, gradients and moments share one block layout (the
        // layout's), and AdamW leaves the zero gaps between parts zero.
        let grads: Vec<&Tensor> = self.grads.blocks.iter().collect();
        let clip = clip_grad_norm(step, &grads, self.max_norm)?;
        let slots: Vec<Slot> = (0..weights.blocks.len())
            .map(|i| Slot {
                param: &weights.blocks[i],
                grad: &self.grads.blocks[i],
                m: &self.m.blocks[i],
                v: &self.v.blocks[i],
            })
            .collect();
        adamw(step, &slots, &self.cfg, self.t, &clip)?;
        Ok(clip)
    }
}

impl Model {
    /// A freshly initialised model.
    pub fn new(gpu: &Gpu, cfg: Config, seed: u64) -> Result<Model> {
        cfg.validate()?;
        let layout = Layout::new(&cfg);
        let weights = Weights::init(gpu, &layout, seed)?;
        Ok(Model {
            cfg,
            layout,
            weights,
        })
    }

    /// A model from config.json text and its weight files, held as `precision` says; `source`
    /// names them in errors.
    pub fn from_files(
        gpu: &Gpu,
        config_json: &str,
        weights: &WeightFiles,
        source: &str,
        precision: Precision,
    ) -> Result<Model> {
        let cfg = Config::from_json(config_json)
            .map_err(|e| Error::Invalid(format!("{source}/config.json: {e}")))?;
        let layout = Layout::new(&cfg);
        let file = format!("{source}/{}", weights.name());
        let tensors = weights.tensors(&file)?;
        let weights = Weights::from_checkpoint(gpu, &layout, &tensors, &file, precision)?;
        Ok(Model {
            cfg,
            layout,
            weights,
        })
    }

    /// Loads a checkpoint directory (config.json + model.safetensors).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load(gpu: &Gpu, dir: &std::path::Path) -> Result<Model> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
        };
        let config = String::from_utf8(read("config.json")?).map_err(|_| {
            Error::Invalid(format!("{}/config.json is not UTF-8 text", dir.display()))
        })?;
        Self::from_files(
            gpu,
            &config,
            &WeightFiles::Safetensors(&read("model.safetensors")?),
            &dir.display().to_string(),
            Precision::F32,
        )
    }

    /// Writes config.json and model.safetensors into `dir` (created if needed).
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn save(&self, gpu: &Gpu, dir: &std::path::Path) -> Result<()> {
        let bytes = self.weights.to_safetensors(gpu, &self.layout).await?;
        let write = |name: &str, data: &[u8]| {
            let path = dir.join(name);
            std::fs::write(&path, data)
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Invalid(format!("{}: {e}", dir.display())))?;
        write("config.json", self.cfg.to_json().as_bytes())?;
        write("model.safetensors", &bytes)
    }

    /// How this model holds its parameters.
    pub fn precision(&self) -> Precision {
        match (self.weights.has_halves(), self.weights.vit_in_out()) {
            (true, _) => Precision::HalfWeights,
            (false, true) => Precision::F32Forward,
            (false, false) => Precision::F32,
        }
    }

    /// How the ViT's linear maps hold their weights: transformers' [out, in], or [in, out] in a
    /// model held to run forward only (see `Precision::F32Forward`).
    fn vit_layout(&self) -> linear::Layout {
        match self.weights.vit_in_out() {
            true => linear::Layout::InOut,
            false => linear::Layout::OutIn,
        }
    }

    pub(crate) fn w(&self, i: usize) -> &Tensor {
        &self.weights.tensors[i]
    }

    /// A linear layer by parameter indices (weight, bias).
    fn lin(
        &self,
        layout: linear::Layout,
        step: &mut Step,
        x: &Tensor,
        (w, b): (usize, usize),
    ) -> Result<Tensor> {
        linear::linear(step, x, self.w(w), Some(self.w(b)), layout)
    }

    /// `residual` + the linear layer (weight, bias).
    fn lin_residual(
        &self,
        layout: linear::Layout,
        step: &mut Step,
        x: &Tensor,
        (w, b): (usize, usize),
        residual: &Tensor,
    ) -> Result<Tensor> {
        linear::linear_residual(step, x, self.w(w), Some(self.w(b)), layout, residual)
    }

    /// The linear layer (weight, bias) and the gradients its backward adds into, in `g`.
    fn grad<'a>(
        &'a self,
        layout: linear::Layout,
        (w, b): (usize, usize),
        g: &'a Weights,
    ) -> linear::Grad<'a> {
        linear::Grad {
            w: self.w(w),
            layout,
            dw: &g.tensors[w],
            db: Some(&g.tensors[b]),
        }
    }

    /// Backward of the linear layer (weight, bias): adds into their gradients in `g`, returns dx.
    fn lin_bwd(
        &self,
        layout: linear::Layout,
        step: &mut Step,
        x: &Tensor,
        wb: (usize, usize),
        dy: &Tensor,
        g: &Weights,
    ) -> Result<Tensor> {
        linear::linear_bwd(step, x, self.grad(layout, wb, g), dy, linear::Dx::New)
    }

    /// Backward of LayerNorm (gamma, beta) of `x` with its saved `stats`: adds into their
    /// gradients in `g`, returns dx (added into `residual` where given).
    fn ln_bwd(
        &self,
        step: &mut Step,
        (gamma, beta): (usize, usize),
        (x, stats): (&Tensor, &Tensor),
        dy: &Tensor,
        g: &Weights,
        residual: Option<Tensor>,
    ) -> Result<Tensor> {
        layernorm_bwd(
            step,
            x,
            self.w(gamma),
            stats,
            dy,
            &g.tensors[gamma],
            &g.tensors[beta],
            residual,
        )
    }

    /// Checks that patches [B, N, C·P·P] and ids [B, ..] fit this model and each other.
    fn check_inputs(&self, patches: &Tensor, ids: &Tensor) -> Result<()> {
        let e = &self.cfg.encoder;
        if patches.shape().len() != 3 || patches.shape()[1..] != [e.patches(), e.patch_dim()] {
            return shape_err(
                "forward",
                format!(
                    "patches must be [batch, {}, {}], got {:?}",
                    e.patches(),
                    e.patch_dim(),
                    patches.shape()
                ),
            );
        }
        if ids.shape().first() != patches.shape().first() {
            return shape_err(
                "forward",
                format!(
                    "{} images but {} captions",
                    patches.shape()[0],
                    ids.shape().first().unwrap_or(&0)
                ),
            );
        }
        Ok(())
    }

    /// Forward of a batch: patches [B, N, C·P·P] and decoder input ids [B, L] (u32).
    pub fn forward(&self, step: &mut Step, patches: &Tensor, ids: &Tensor) -> Result<Forward> {
        self.check_inputs(patches, ids)?;
        let encoder = self.encode(step, patches)?;
        let decoder = self.decode(step, &encoder.states, ids)?;
        Ok(Forward { encoder, decoder })
    }

    /// A forward that keeps only the logits and the attention maps `keep` asks for: what a
    /// teacher needs in a distillation step. Nothing else outlives its block, so the memory a
    /// teacher needs is its kept maps and one block's activations, not the whole forward's.
    pub fn forward_maps(
        &self,
        step: &mut Step,
        patches: &Tensor,
        ids: &Tensor,
        keep: &KeepMaps,
    ) -> Result<MapsForward> {
        self.check_inputs(patches, ids)?;
        let (states, encoder) = self.encode_maps(step, patches, &keep.encoder)?;
        let (logits, decoder_self, cross) =
            self.decode_maps(step, &states, ids, (&keep.decoder_self, &keep.cross))?;
        Ok(MapsForward {
            logits,
            encoder,
            decoder_self,
            cross,
        })
    }

    /// Backward from d logits (and from the attention maps, when a distillation loss reads them)
    /// through decoder and encoder, adding into `grads`. `dstates_extra`: a further gradient on
    /// the encoder's output states, from a loss that reads them besides the decoder (added before
    /// the encoder's backward).
    pub fn backward(
        &self,
        step: &mut Step,
        fwd: &Forward,
        dlogits: &Tensor,
        dmaps: &MapGrads,
        dstates_extra: Option<&Tensor>,
        grads: &Weights,
    ) -> Result<()> {
        self.check_trainable()?;
        let dstates = self.decode_bwd(
            step,
            &fwd.encoder.states,
            &fwd.decoder,
            dlogits,
            (&dmaps.decoder_self, &dmaps.cross),
            grads,
        )?;
        if let Some(extra) = dstates_extra {
            crate::ops::elementwise::axpy(step, &dstates, extra, 1.0)?;
        }
        self.encode_bwd(step, &fwd.encoder, &dstates, &dmaps.encoder, grads)
    }

    /// Refuses to train a model held in a form that serves captioning only, saying why.
    pub fn check_trainable(&self) -> Result<()> {
        if self.weights.is_row_split() {
            return Err(Error::Invalid(format!(
                "this model's token embedding ({} rows) is larger than one storage binding of \
                 this device, so amad holds it in row blocks, which serve captioning only; \
                 training it needs a device with larger storage bindings",
                self.cfg.decoder.vocab_size
            )));
        }
        if self.weights.has_halves() {
            return Err(Error::Invalid(
                "this model was loaded with half-precision weights, which serve captioning and \
                 a distillation's teacher only; load it in f32 to train it"
                    .into(),
            ));
        }
        if self.weights.vit_in_out() {
            return Err(Error::Invalid(
                "this model was loaded to run forward only (captioning, a distillation's \
                 teacher), its ViT's weights laid out for that; load it for training to train it"
                    .into(),
            ));
        }
        Ok(())
    }

    /// One training step on cross-entropy against `labels` [B·L] (u32, `loss::IGNORE` where not
    /// counted), recorded into `step`: forward, loss, backward, clipping, AdamW. Returns the loss
    /// [1] (on the GPU; read it after submitting). `encoder_loss(step, states)` may record a
    /// further loss on the encoder's output states and return its gradient with respect to them,
    /// which joins the decoder's in the encoder's backward (`|_, _| Ok(None)`: no further loss).
    pub fn train_step(
        &self,
        step: &mut Step,
        opt: &mut Optimizer,
        patches: &Tensor,
        ids: &Tensor,
        labels: &Tensor,
        encoder_loss: impl FnOnce(&mut Step, &Tensor) -> Result<Option<Tensor>>,
    ) -> Result<Tensor> {
        opt.zero_grad(step);
        let fwd = self.forward(step, patches, ids)?;
        let vocab = self.cfg.decoder.vocab_size;
        let logits = fwd.logits().reshape(&[labels.numel(), vocab])?;
        let (loss, totals) = cross_entropy(step, &logits, labels)?;
        let dlogits = cross_entropy_bwd(step, &logits, labels, &totals, 1.0)?;
        let extra = encoder_loss(step, &fwd.encoder.states)?;
        self.backward(
            step,
            &fwd,
            &dlogits,
            &MapGrads::default(),
            extra.as_ref(),
            &opt.grads,
        )?;
        opt.update(step, &self.weights)?;
        Ok(loss)
    }
}

/// Backward of a self-attention whose query, key and value are the thirds of one projection
/// `qkv` [B, T, 3·H·D], from dO: returns dqkv, laid out as `qkv`.
fn self_attention_bwd(
    step: &mut Step,
    dims: Dims,
    qkv: &Tensor,
    saved: Saved,
    dout: &Tensor,
    dprobs: Option<&Tensor>,
) -> Result<Tensor> {
    let dqkv = step.empty(qkv.shape())?;
    let thirds = |t| (Seq::part(t, 0, 3), Seq::part(t, 1, 3), Seq::part(t, 2, 3));
    let ((q, k, v), (dq, dk, dv)) = (thirds(qkv), thirds(&dqkv));
    let grads = Grads { dq, dk, dv, dprobs };
    attention_bwd(step, dims, q, k, v, saved, dout, grads)?;
    Ok(dqkv)
}

/// Backward of a cross-attention whose query is `q` [B, Tq, H·D] and whose key and value are the
/// halves of `kv` [B, Tk, 2·H·D], from dO: returns (dq, dkv), laid out as `q` and `kv`.
fn cross_attention_bwd(
    step: &mut Step,
    dims: Dims,
    (q, kv): (&Tensor, &Tensor),
    saved: Saved,
    dout: &Tensor,
    dprobs: Option<&Tensor>,
) -> Result<(Tensor, Tensor)> {
    let dq = step.empty(q.shape())?;
    let dkv = step.empty(kv.shape())?;
    let halves = |t| (Seq::part(t, 0, 2), Seq::part(t, 1, 2));
    let ((k, v), (dk, dv)) = (halves(kv), halves(&dkv));
    let grads = Grads {
        dq: Seq::whole(&dq),
        dk,
        dv,
        dprobs,
    };
    attention_bwd(step, dims, Seq::whole(q), k, v, saved, dout, grads)?;
    Ok((dq, dkv))
}
