//! Model configuration, read from and written to Hugging Face's VisionEncoderDecoder config.json
//! (a ViT encoder config and a GPT-2 decoder config), so checkpoints move between amad and
//! transformers unchanged.

use crate::error::{Error, Result};
use crate::ops::elementwise::Activation;
use serde_json::{json, Value};

/// The ViT encoder (transformers' ViTConfig; qkv_bias true).
#[derive(Clone, Debug, PartialEq)]
pub struct Vit {
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub layer_norm_eps: f32,
    /// The MLP's activation (hidden_act; "gelu", the exact GELU, in ViT itself).
    pub hidden_act: Activation,
}

/// The GPT-2 decoder with cross-attention (transformers' GPT2Config; activation "gelu_new").
#[derive(Clone, Debug, PartialEq)]
pub struct Gpt2 {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_inner: usize,
    pub layer_norm_epsilon: f32,
    /// The MLP's activation (activation_function; "gelu_new", the tanh GELU, in GPT-2 itself).
    pub activation_function: Activation,
    /// Attention scores further divided by the layer's index + 1 (false in GPT-2 itself).
    pub scale_attn_by_inverse_layer_idx: bool,
}

/// An image captioner: ViT encoder + GPT-2 decoder, with the special token ids.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub encoder: Vit,
    pub decoder: Gpt2,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
    pub pad_token_id: u32,
    pub decoder_start_token_id: u32,
}

/// A student's size: (layers, width, heads) of its encoder and of its decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StudentShape {
    pub encoder: (usize, usize, usize),
    pub decoder: (usize, usize, usize),
}

impl StudentShape {
    /// The default student of `teacher`: a quarter of its width and heads, a third of its encoder
    /// layers and a sixth of its decoder layers, but never below 2 layers, 64 wide and 2 heads
    /// where the teacher itself has more. A ViT-B/16 + GPT-2 teacher (12 × 768 × 12 per side)
    /// gets 4 × 192 × 3 + 2 × 192 × 3, about 13 M parameters, three quarters of them the
    /// 50,257-token embedding: small enough to train in a browser, with a quarter of the
    /// teacher's heads, the setting AMAD is for. The bundled teacher (4 × 128 × 8) gets 2 × 64 × 2.
    pub fn default_for(teacher: &Config) -> StudentShape {
        let side = |(layers, width, heads): (usize, usize, usize), layer_share: usize| {
            let heads_s = (heads / 4).max(heads.min(2)).max(1);
            let width_s = (width / 4).max(width.min(64));
            // The width must split into the heads: fewer heads until it does.
            let heads_s = (1..=heads_s)
                .rev()
                .find(|h| width_s.is_multiple_of(*h))
                .unwrap_or(1);
            (
                (layers / layer_share).max(layers.min(2)).max(1),
                width_s,
                heads_s,
            )
        };
        let (e, d) = (&teacher.encoder, &teacher.decoder);
        StudentShape {
            encoder: side(
                (e.num_hidden_layers, e.hidden_size, e.num_attention_heads),
                3,
            ),
            decoder: side((d.n_layer, d.n_embd, d.n_head), 6),
        }
    }

    /// This shape with the layers, widths and heads given as (encoder, decoder), where given.
    pub fn overridden(
        mut self,
        layers: Option<(usize, usize)>,
        width: Option<(usize, usize)>,
        heads: Option<(usize, usize)>,
    ) -> StudentShape {
        if let Some((e, d)) = layers {
            (self.encoder.0, self.decoder.0) = (e, d);
        }
        if let Some((e, d)) = width {
            (self.encoder.1, self.decoder.1) = (e, d);
        }
        if let Some((e, d)) = heads {
            (self.encoder.2, self.decoder.2) = (e, d);
        }
        self
    }

    /// An error naming a side without a layer or a head, or with a width its heads do not divide.
    pub fn check(&self) -> Result<()> {
        for (name, (layers, width, heads)) in [("encoder", self.encoder), ("decoder", self.decoder)]
        {
            if layers == 0 || heads == 0 || width == 0 || !width.is_multiple_of(heads) {
                return Err(Error::Invalid(format!(
                    "the student's {name} needs at least one layer and head, and a width divisible by its heads (got {layers} layers, width {width}, {heads} heads)"
                )));
            }
        }
        Ok(())
    }
}

impl Vit {
    pub fn patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
    /// Image tokens: the patches plus CLS.
    pub fn tokens(&self) -> usize {
        self.patches() + 1
    }
    pub fn patch_dim(&self) -> usize {
        self.num_channels * self.patch_size * self.patch_size
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

impl Gpt2 {
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
}

fn field<'a>(v: &'a Value, part: &str, key: &str) -> Result<&'a Value> {
    v.get(key)
        .ok_or_else(|| Error::Invalid(format!("config.json: {part} has no \"{key}\"")))
}

fn usize_of(v: &Value, part: &str, key: &str) -> Result<usize> {
    field(v, part, key)?
        .as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "config.json: {part}.{key} is not a non-negative integer"
            ))
        })
}

fn f32_of(v: &Value, part: &str, key: &str, default: f32) -> Result<f32> {
    match v.get(key) {
        None => Ok(default),
        Some(x) => x
            .as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| Error::Invalid(format!("config.json: {part}.{key} is not a number"))),
    }
}

fn expect_str(v: &Value, part: &str, key: &str, want: &str, default: &str) -> Result<()> {
    let got = v.get(key).and_then(Value::as_str).unwrap_or(default);
    if got != want {
        return Err(Error::Invalid(format!(
            "config.json: {part}.{key} is \"{got}\"; amad implements \"{want}\" only"
        )));
    }
    Ok(())
}

/// The name transformers' configs give an activation.
fn activation_name(a: Activation) -> &'static str {
    match a {
        Activation::GeluErf => "gelu",
        Activation::GeluTanh => "gelu_new",
        Activation::Relu => "relu",
    }
}

fn token_id(v: &Value, key: &str, default: u32) -> u32 {
    v.get(key)
        .and_then(Value::as_u64)
        .map_or(default, |x| x as u32)
}

impl Config {
    /// The default teacher: 64×64 images, patch 8 (65 image tokens),
    /// ViT 4 layers × 128 wide × 8 heads, GPT-2 4 layers × 128 wide × 8 heads, MLPs 4× wide.
    pub fn teacher(vocab_size: usize, max_len: usize) -> Config {
        Self::sized(vocab_size, max_len, (4, 128, 8), (4, 128, 8))
    }

    /// The default student: ViT 2/64/2 + GPT-2 2/64/2.
    pub fn student(vocab_size: usize, max_len: usize) -> Config {
        Self::sized(vocab_size, max_len, (2, 64, 2), (2, 64, 2))
    }

    /// A student of `teacher` with `shape`: the teacher's vocabulary and special tokens, caption
    /// length, image geometry (so their maps over the image pair cell for cell), activations,
    /// LayerNorm epsilons and MLP widths relative to the model's (4× in ViT-B and GPT-2).
    pub fn student_of(teacher: &Config, shape: &StudentShape) -> Config {
        let mut s = Config::sized(
            teacher.decoder.vocab_size,
            teacher.decoder.n_positions,
            shape.encoder,
            shape.decoder,
        );
        let (e, te) = (&mut s.encoder, &teacher.encoder);
        e.intermediate_size = e.hidden_size * te.intermediate_size / te.hidden_size;
        e.image_size = te.image_size;
        e.patch_size = te.patch_size;
        e.num_channels = te.num_channels;
        e.layer_norm_eps = te.layer_norm_eps;
        e.hidden_act = te.hidden_act;
        let (d, td) = (&mut s.decoder, &teacher.decoder);
        d.n_inner = d.n_embd * td.n_inner / td.n_embd;
        d.layer_norm_epsilon = td.layer_norm_epsilon;
        d.activation_function = td.activation_function;
        d.scale_attn_by_inverse_layer_idx = td.scale_attn_by_inverse_layer_idx;
        s.bos_token_id = teacher.bos_token_id;
        s.eos_token_id = teacher.eos_token_id;
        s.pad_token_id = teacher.pad_token_id;
        s.decoder_start_token_id = teacher.decoder_start_token_id;
        s
    }

    /// A captioner for 64×64 images with (layers, width, heads) for encoder and decoder.
    pub fn sized(
        vocab_size: usize,
        max_len: usize,
        enc: (usize, usize, usize),
        dec: (usize, usize, usize),
    ) -> Config {
        Config {
            encoder: Vit {
                image_size: 64,
                patch_size: 8,
                num_channels: 3,
                hidden_size: enc.1,
                num_hidden_layers: enc.0,
                num_attention_heads: enc.2,
                intermediate_size: 4 * enc.1,
                layer_norm_eps: 1e-12,
                hidden_act: Activation::GeluErf,
            },
            decoder: Gpt2 {
                vocab_size,
                n_positions: max_len,
                n_embd: dec.1,
                n_layer: dec.0,
                n_head: dec.2,
                n_inner: 4 * dec.1,
                layer_norm_epsilon: 1e-5,
                activation_function: Activation::GeluTanh,
                scale_attn_by_inverse_layer_idx: false,
            },
            bos_token_id: 1,
            eos_token_id: 2,
            pad_token_id: 0,
            decoder_start_token_id: 1,
        }
    }

    /// (decoder start, end of sequence, padding) token ids.
    pub fn special_ids(&self) -> (u32, u32, u32) {
        (
            self.decoder_start_token_id,
            self.eos_token_id,
            self.pad_token_id,
        )
    }

    /// Checks that the sizes fit together.
    pub fn validate(&self) -> Result<()> {
        let (e, d) = (&self.encoder, &self.decoder);
        let bad = |m: String| Err(Error::Invalid(format!("config: {m}")));
        if e.patch_size == 0 || e.image_size % e.patch_size != 0 {
            return bad(format!(
                "image_size {} is not a multiple of patch_size {}",
                e.image_size, e.patch_size
            ));
        }
        if e.num_attention_heads == 0 || e.hidden_size % e.num_attention_heads != 0 {
            return bad(format!(
                "encoder hidden_size {} is not divisible into {} heads",
                e.hidden_size, e.num_attention_heads
            ));
        }
        if d.n_head == 0 || d.n_embd % d.n_head != 0 {
            return bad(format!(
                "decoder n_embd {} is not divisible into {} heads",
                d.n_embd, d.n_head
            ));
        }
        let sizes = [
            e.num_channels,
            e.hidden_size,
            e.num_hidden_layers,
            e.intermediate_size,
            d.vocab_size,
            d.n_positions,
            d.n_layer,
            d.n_inner,
        ];
        if sizes.contains(&0) {
            return bad(format!("a size is zero: {self:?}"));
        }
        for (name, id) in [
            ("bos", self.bos_token_id),
            ("eos", self.eos_token_id),
            ("pad", self.pad_token_id),
            ("decoder_start", self.decoder_start_token_id),
        ] {
            if id as usize >= d.vocab_size {
                return bad(format!(
                    "{name}_token_id {id} is outside the vocabulary of {}",
                    d.vocab_size
                ));
            }
        }
        Ok(())
    }

    /// Parses a VisionEncoderDecoder config.json.
    pub fn from_json(text: &str) -> Result<Config> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("config.json is not valid JSON: {e}")))?;
        expect_str(&v, "config", "model_type", "vision-encoder-decoder", "")?;
        let e = field(&v, "config", "encoder")?;
        let d = field(&v, "config", "decoder")?;
        expect_str(e, "encoder", "model_type", "vit", "")?;
        expect_str(d, "decoder", "model_type", "gpt2", "")?;
        // gelu_pytorch_tanh is gelu_new's formula, computed by a fused kernel in PyTorch.
        let activation = |part: &str, v: &Value, key: &str, default: &str| {
            let name = v.get(key).and_then(Value::as_str).unwrap_or(default);
            Activation::from_name(name).ok_or_else(|| {
                Error::Invalid(format!(
                    "config.json: {part}.{key} is \"{name}\"; amad implements \"gelu\", \"gelu_new\" \
                     (and its equal \"gelu_pytorch_tanh\") and \"relu\""
                ))
            })
        };
        let hidden_act = activation("encoder", e, "hidden_act", "gelu")?;
        let activation_function = activation("decoder", d, "activation_function", "gelu_new")?;
        if d.get("add_cross_attention").and_then(Value::as_bool) != Some(true) {
            return Err(Error::Invalid(
                "config.json: decoder.add_cross_attention must be true".into(),
            ));
        }
        // Fields that change the computation and that amad does not implement: each is refused by
        // name when set away from GPT-2's and ViT's defaults. reorder_and_upcast_attn only
        // upcasts half-precision attention to f32, which amad computes in anyway.
        for (part, v, key, default) in [
            ("encoder", e, "qkv_bias", true),
            ("decoder", d, "scale_attn_weights", true),
            ("decoder", d, "tie_word_embeddings", true),
        ] {
            if let Some(x) = v.get(key).filter(|x| !x.is_null()) {
                if x.as_bool() != Some(default) {
                    return Err(Error::Invalid(format!(
                        "config.json: {part}.{key} is {x}; amad implements {default} only"
                    )));
                }
            }
        }
        let n_embd = usize_of(d, "decoder", "n_embd")?;
        let n_inner = match d.get("n_inner") {
            None | Some(Value::Null) => 4 * n_embd,
            Some(_) => usize_of(d, "decoder", "n_inner")?,
        };
        let cfg = Config {
            encoder: Vit {
                image_size: usize_of(e, "encoder", "image_size")?,
                patch_size: usize_of(e, "encoder", "patch_size")?,
                num_channels: usize_of(e, "encoder", "num_channels")?,
                hidden_size: usize_of(e, "encoder", "hidden_size")?,
                num_hidden_layers: usize_of(e, "encoder", "num_hidden_layers")?,
                num_attention_heads: usize_of(e, "encoder", "num_attention_heads")?,
                intermediate_size: usize_of(e, "encoder", "intermediate_size")?,
                layer_norm_eps: f32_of(e, "encoder", "layer_norm_eps", 1e-12)?,
                hidden_act,
            },
            decoder: Gpt2 {
                vocab_size: usize_of(d, "decoder", "vocab_size")?,
                n_positions: usize_of(d, "decoder", "n_positions")?,
                n_embd,
                n_layer: usize_of(d, "decoder", "n_layer")?,
                n_head: usize_of(d, "decoder", "n_head")?,
                n_inner,
                layer_norm_epsilon: f32_of(d, "decoder", "layer_norm_epsilon", 1e-5)?,
                activation_function,
                scale_attn_by_inverse_layer_idx: match d.get("scale_attn_by_inverse_layer_idx") {
                    None | Some(Value::Null) => false,
                    Some(x) => x.as_bool().ok_or_else(|| {
                        Error::Invalid(format!(
                            "config.json: decoder.scale_attn_by_inverse_layer_idx is {x}, not true or false"
                        ))
                    })?,
                },
            },
            bos_token_id: token_id(d, "bos_token_id", 1),
            eos_token_id: token_id(&v, "eos_token_id", token_id(d, "eos_token_id", 2)),
            pad_token_id: token_id(&v, "pad_token_id", token_id(d, "pad_token_id", 0)),
            decoder_start_token_id: token_id(
                &v,
                "decoder_start_token_id",
                token_id(d, "bos_token_id", 1),
            ),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config.json transformers reads back into the same VisionEncoderDecoderModel.
    pub fn to_json(&self) -> String {
        let (e, d) = (&self.encoder, &self.decoder);
        let v = json!({
            "model_type": "vision-encoder-decoder",
            "architectures": ["VisionEncoderDecoderModel"],
            "is_encoder_decoder": true,
            "tie_word_embeddings": true,
            "decoder_start_token_id": self.decoder_start_token_id,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
            "encoder": {
                "model_type": "vit",
                "image_size": e.image_size,
                "patch_size": e.patch_size,
                "num_channels": e.num_channels,
                "hidden_size": e.hidden_size,
                "num_hidden_layers": e.num_hidden_layers,
                "num_attention_heads": e.num_attention_heads,
                "intermediate_size": e.intermediate_size,
                "hidden_act": activation_name(e.hidden_act),
                "layer_norm_eps": e.layer_norm_eps,
                "qkv_bias": true,
                "hidden_dropout_prob": 0.0,
                "attention_probs_dropout_prob": 0.0,
            },
            "decoder": {
                "model_type": "gpt2",
                "vocab_size": d.vocab_size,
                "n_positions": d.n_positions,
                "n_embd": d.n_embd,
                "n_layer": d.n_layer,
                "n_head": d.n_head,
                "n_inner": d.n_inner,
                "activation_function": activation_name(d.activation_function),
                "layer_norm_epsilon": d.layer_norm_epsilon,
                "add_cross_attention": true,
                "is_decoder": true,
                "tie_word_embeddings": true,
                "bos_token_id": self.bos_token_id,
                "eos_token_id": self.eos_token_id,
                "pad_token_id": self.pad_token_id,
                "decoder_start_token_id": self.decoder_start_token_id,
                "resid_pdrop": 0.0,
                "embd_pdrop": 0.0,
                "attn_pdrop": 0.0,
            },
        });
        let mut v = v;
        if d.scale_attn_by_inverse_layer_idx {
            v["decoder"]["scale_attn_by_inverse_layer_idx"] = json!(true);
        }
        serde_json::to_string_pretty(&v).expect("a JSON value serialises")
    }
}
