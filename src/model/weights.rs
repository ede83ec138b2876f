//! The parameters: their Hugging Face names and shapes (the layout), the GPU tensors, and
//! safetensors I/O. Weights keep transformers' own layouts (nn.Linear [out, in] in the ViT,
//! Conv1D [in, out] in GPT-2), so checkpoints need no conversion either way; the matmul reads
//! whichever orientation through strides.

use super::config::Config;
use super::formats::Tensors;
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Step, Tensor};
use crate::ops::optim::NORM_SEGMENT;
use crate::rng::Rng;

/// How a parameter starts (as transformers initialises these models).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Normal(f32),
    Zeros,
    Ones,
}

/// How a model holds its parameters on the device: their element type, and for a model that only
/// runs forward (captioning, a distillation's teacher) the layout its products read fastest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Every parameter in f32, in transformers' layouts: what training needs, and the default.
    #[default]
    F32,
    /// Every parameter in f32, the ViT's linear maps held [in, out] (`Layout::vit_linear_weights`;
    /// transformers holds them [out, in]), transposed once on loading. Their products then read B
    /// along its rows, which the subgroup matmul does fastest on lavapipe (ARCHITECTURE.md): the
    /// same sums in the same order, so the same bits as `F32`. For a model that only runs forward.
    F32Forward,
    /// The weights of the linear maps and the token embedding (`Layout::half_weights`) in f16,
    /// everything else (biases, LayerNorms, position embeddings) in f32: half the memory of a
    /// ViT-B + GPT-2 model saved, and half the bytes its products read. Each weight is rounded to the nearest f16 on
    /// loading and widened exactly as a product reads it, so the model computes in f32 on those
    /// rounded weights. For a model that only runs forward: captioning, a distillation's teacher;
    /// the ViT's linear maps are held [in, out] as in `F32Forward`.
    HalfWeights,
}

impl Precision {
    /// How a model that only runs forward is held: `HalfWeights` where `half` (a flag or box that
    /// asks for half-precision weights), else `F32Forward`.
    pub fn forward(half: bool) -> Precision {
        match half {
            true => Precision::HalfWeights,
            false => Precision::F32Forward,
        }
    }

    /// Whether a model held so only runs forward (it cannot be trained or saved as it is held).
    pub fn forward_only(self) -> bool {
        self != Precision::F32
    }
}

#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
    /// The checkpoint's names for equal blocks of rows of this tensor, when it stacks several of
    /// them (the ViT's query, key and value, so that one product computes all three); empty when
    /// the checkpoint holds it whole under `name`.
    pub parts: Vec<String>,
}

impl Spec {
    /// How the checkpoint holds this tensor: (name, shape, elements of the tensor) per part.
    pub fn saved(&self) -> Vec<(String, Vec<usize>, std::ops::Range<usize>)> {
        let n: usize = self.shape.iter().product();
        if self.parts.is_empty() {
            return vec![(self.name.clone(), self.shape.clone(), 0..n)];
        }
        let k = self.parts.len();
        let mut shape = self.shape.clone();
        shape[0] /= k;
        let each = n / k;
        self.parts
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), shape.clone(), i * each..(i + 1) * each))
            .collect()
    }
}

/// Indices of one ViT layer's parameters.
#[derive(Clone, Debug)]
pub struct EncLayer {
    pub ln1: (usize, usize),
    /// query, key and value stacked: weight [3 · width, width], bias [3 · width].
    pub qkv: (usize, usize),
    pub out: (usize, usize),
    pub ln2: (usize, usize),
    pub fc1: (usize, usize),
    pub fc2: (usize, usize),
}

/// Indices of one GPT-2 layer's parameters.
#[derive(Clone, Debug)]
pub struct DecLayer {
    pub ln1: (usize, usize),
    pub qkv: (usize, usize),
    pub attn_proj: (usize, usize),
    pub ln_cross: (usize, usize),
    pub cross_q: (usize, usize),
    pub cross_kv: (usize, usize),
    pub cross_proj: (usize, usize),
    pub ln2: (usize, usize),
    pub fc: (usize, usize),
    pub proj: (usize, usize),
}

/// Every parameter of a config, in a fixed order, with the indices the layers use.
#[derive(Clone, Debug)]
pub struct Layout {
    pub specs: Vec<Spec>,
    pub patch: (usize, usize),
    pub cls: usize,
    pub pos: usize,
    pub enc: Vec<EncLayer>,
    pub enc_ln: (usize, usize),
    /// enc_to_dec_proj, present when encoder and decoder widths differ.
    pub enc_to_dec: Option<(usize, usize)>,
    pub wte: usize,
    pub wpe: usize,
    pub dec: Vec<DecLayer>,
    pub ln_f: (usize, usize),
}

/// transformers' initializer_range.
const STD: f32 = 0.02;

struct Builder(Vec<Spec>);

impl Builder {
    fn add(&mut self, name: String, shape: &[usize], init: Init) -> usize {
        self.add_parts(name, shape, init, vec![])
    }
    fn add_parts(
        &mut self,
        name: String,
        shape: &[usize],
        init: Init,
        parts: Vec<String>,
    ) -> usize {
        self.0.push(Spec {
            name,
            shape: shape.to_vec(),
            init,
            parts,
        });
        self.0.len() - 1
    }
    /// Linear maps `names` ([out, in] weights of equal shape) stacked along their outputs, saved
    /// as themselves. Initialised as the separate maps are: their weights drawn one after the
    /// other, in order.
    fn stacked_linear(&mut self, name: &str, names: &[String], w: [usize; 2]) -> (usize, usize) {
        let k = names.len();
        let part = |suffix: &str| names.iter().map(|n| format!("{n}.{suffix}")).collect();
        (
            self.add_parts(
                format!("{name}.weight"),
                &[k * w[0], w[1]],
                Init::Normal(STD),
                part("weight"),
            ),
            self.add_parts(
                format!("{name}.bias"),
                &[k * w[0]],
                Init::Zeros,
                part("bias"),
            ),
        )
    }
    /// weight (normal) and bias (zeros) of a linear map.
    fn linear(&mut self, name: &str, w: &[usize], b: usize) -> (usize, usize) {
        (
            self.add(format!("{name}.weight"), w, Init::Normal(STD)),
            self.add(format!("{name}.bias"), &[b], Init::Zeros),
        )
    }
    fn layernorm(&mut self, name: &str, n: usize) -> (usize, usize) {
        (
            self.add(format!("{name}.weight"), &[n], Init::Ones),
            self.add(format!("{name}.bias"), &[n], Init::Zeros),
        )
    }
}

impl Layout {
    pub fn new(cfg: &Config) -> Layout {
        let (e, d) = (&cfg.encoder, &cfg.decoder);
        let (de, dd) = (e.hidden_size, d.n_embd);
        let mut b = Builder(vec![]);
        let patch = b.linear(
            "encoder.embeddings.patch_embeddings.projection",
            &[de, e.num_channels, e.patch_size, e.patch_size],
            de,
        );
        let cls = b.add(
            "encoder.embeddings.cls_token".into(),
            &[1, 1, de],
            Init::Normal(STD),
        );
        let pos = b.add(
            "encoder.embeddings.position_embeddings".into(),
            &[1, e.tokens(), de],
            Init::Normal(STD),
        );
        let enc = (0..e.num_hidden_layers)
            .map(|i| {
                let p = format!("encoder.encoder.layer.{i}");
                EncLayer {
                    ln1: b.layernorm(&format!("{p}.layernorm_before"), de),
                    qkv: b.stacked_linear(
                        &format!("{p}.attention.attention.qkv"),
                        &["query", "key", "value"].map(|n| format!("{p}.attention.attention.{n}")),
                        [de, de],
                    ),
                    out: b.linear(&format!("{p}.attention.output.dense"), &[de, de], de),
                    ln2: b.layernorm(&format!("{p}.layernorm_after"), de),
                    fc1: b.linear(
                        &format!("{p}.intermediate.dense"),
                        &[e.intermediate_size, de],
                        e.intermediate_size,
                    ),
                    fc2: b.linear(&format!("{p}.output.dense"), &[de, e.intermediate_size], de),
                }
            })
            .collect();
        let enc_ln = b.layernorm("encoder.layernorm", de);
        let enc_to_dec = (de != dd).then(|| b.linear("enc_to_dec_proj", &[dd, de], dd));
        let wte = b.add(
            "decoder.transformer.wte.weight".into(),
            &[d.vocab_size, dd],
            Init::Normal(STD),
        );
        let wpe = b.add(
            "decoder.transformer.wpe.weight".into(),
            &[d.n_positions, dd],
            Init::Normal(STD),
        );
        let dec = (0..d.n_layer)
            .map(|i| {
                let p = format!("decoder.transformer.h.{i}");
                DecLayer {
                    ln1: b.layernorm(&format!("{p}.ln_1"), dd),
                    qkv: b.linear(&format!("{p}.attn.c_attn"), &[dd, 3 * dd], 3 * dd),
                    attn_proj: b.linear(&format!("{p}.attn.c_proj"), &[dd, dd], dd),
                    ln_cross: b.layernorm(&format!("{p}.ln_cross_attn"), dd),
                    cross_q: b.linear(&format!("{p}.crossattention.q_attn"), &[dd, dd], dd),
                    cross_kv: b.linear(
                        &format!("{p}.crossattention.c_attn"),
                        &[dd, 2 * dd],
                        2 * dd,
                    ),
                    cross_proj: b.linear(&format!("{p}.crossattention.c_proj"), &[dd, dd], dd),
                    ln2: b.layernorm(&format!("{p}.ln_2"), dd),
                    fc: b.linear(&format!("{p}.mlp.c_fc"), &[dd, d.n_inner], d.n_inner),
                    proj: b.linear(&format!("{p}.mlp.c_proj"), &[d.n_inner, dd], dd),
                }
            })
            .collect();
        let ln_f = b.layernorm("decoder.transformer.ln_f", dd);
        Layout {
            specs: b.0,
            patch,
            cls,
            pos,
            enc,
            enc_ln,
            enc_to_dec,
            wte,
            wpe,
            dec,
            ln_f,
        }
    }

    /// The parameters `Precision::HalfWeights` holds in f16: each linear map's weight, the patch
    /// projection's and the token embedding (read by the lookup and as the tied LM head), the
    /// large matrices that products and lookups read. The rest (biases, LayerNorms, position
    /// embeddings, the class token: under 1% of a ViT-B + GPT-2) stays f32 for the kernels that
    /// add them.
    pub fn half_weights(&self) -> Vec<usize> {
        let mut w = self.vit_linear_weights();
        w.push(self.wte);
        for l in &self.dec {
            w.extend([
                l.qkv.0,
                l.attn_proj.0,
                l.cross_q.0,
                l.cross_kv.0,
                l.cross_proj.0,
                l.fc.0,
                l.proj.0,
            ]);
        }
        w
    }

    /// The weights of the ViT's linear maps (the patch projection's, each block's, and the
    /// projection to the decoder's width), which transformers holds [out, in] and a model that
    /// only runs forward holds [in, out] (see `Precision::F32Forward`).
    pub fn vit_linear_weights(&self) -> Vec<usize> {
        let mut w = vec![self.patch.0];
        for l in &self.enc {
            w.extend([l.qkv.0, l.out.0, l.fc1.0, l.fc2.0]);
        }
        w.extend(self.enc_to_dec.map(|p| p.0));
        w
    }

    /// The bytes of the parameters held as `precision` says.
    pub fn bytes(&self, precision: Precision) -> u64 {
        let halves = match precision {
            Precision::F32 | Precision::F32Forward => 0,
            Precision::HalfWeights => self
                .half_weights()
                .iter()
                .map(|&i| self.specs[i].shape.iter().product::<usize>())
                .sum(),
        };
        4 * self.param_count() as u64 - 2 * halves as u64
    }

    pub fn param_count(&self) -> usize {
        self.specs
            .iter()
            .map(|s| s.shape.iter().product::<usize>())
            .sum()
    }
}

/// Tensors saved by transformers that amad does not use: ViTModel's pooler (captioning reads the
/// token states), GPT-2's lm_head, which is the token embedding (tied; checked equal), and the
/// causal-mask buffers old GPT-2 checkpoints carry (amad masks in the kernel).
fn ignorable(name: &str) -> bool {
    name.starts_with("encoder.pooler.")
        || name == LM_HEAD
        || [
            ".attn.bias",
            ".attn.masked_bias",
            ".crossattention.bias",
            ".crossattention.masked_bias",
        ]
        .iter()
        .any(|s| name.starts_with("decoder.transformer.h.") && name.ends_with(s))
}

const LM_HEAD: &str = "decoder.lm_head.weight";
const WTE: &str = "decoder.transformer.wte.weight";

/// One GPU tensor per spec of a layout, in the layout's order, each a part of one of a few large
/// buffers (`blocks`): one dispatch then zeroes, clips or updates a whole block where one per
/// parameter was needed (154 in the teacher, each a dispatch's overhead on a real GPU), and one
/// readback saves it. A tensor larger than one storage binding (GPT-2's 50257-row token embedding
/// under WebGPU's default 128 MiB) is held as blocks of whole rows (`row_blocks`).
#[derive(Clone)]
pub struct Weights {
    /// Each parameter; for one held in row blocks, its first block (see `row_blocks`).
    pub tensors: Vec<Tensor>,
    /// Each parameter as (first row, tensor of rows) in row order: one entry for a whole tensor.
    pub row_blocks: Vec<Vec<(usize, Tensor)>>,
    /// The buffers holding the parameters, each seen whole; the gaps between parts stay zero.
    pub blocks: Vec<Tensor>,
    /// Where each parameter's row blocks live: (block, first element, elements).
    places: Vec<Vec<(usize, usize, usize)>>,
    /// The parameters held transposed, [in, out] (`Precision::F32Forward`, `HalfWeights`).
    in_out: Vec<usize>,
}

/// `values` of an [rows, cols] matrix as [cols, rows].
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; values.len()];
    for (r, row) in values.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
    }
    t
}

/// Refuses to hold `values` of tensor `name` in f16 where one lies beyond f16's range (its largest
/// finite value is 65504): rounded, it would become infinite.
fn check_half_range(name: &str, values: &[f32]) -> Result<()> {
    match values.iter().find(|x| x.is_finite() && x.abs() >= 65520.0) {
        Some(x) => Err(Error::Invalid(format!(
            "{name} holds {x}, beyond half precision's range (65504); load this model in f32"
        ))),
        None => Ok(()),
    }
}

/// The row blocks a tensor of `shape` is held in when no binding may exceed `cap` elements:
/// (first row, rows), a multiple of 4 rows each but the last (so that products over them keep
/// 16-byte alignment), or the whole tensor when it fits.
fn row_split(shape: &[usize], cap: usize) -> Vec<(usize, usize)> {
    let n: usize = shape.iter().product();
    let rows = shape.first().copied().unwrap_or(1);
    if n <= cap || shape.len() < 2 {
        return vec![(0, rows)];
    }
    let per = (cap / (n / rows)) / 4 * 4;
    let per = per.max(1);
    (0..rows)
        .step_by(per)
        .map(|r| (r, per.min(rows - r)))
        .collect()
}

impl Weights {
    /// Lays the layout's tensors out in blocks (each part aligned as bindings must be, each block
    /// within one binding and a multiple of NORM_SEGMENT long; the f16 weights of `precision` in
    /// blocks of their own) and uploads `data(i)` for tensor i (`None`: zeros).
    fn build(
        gpu: &Gpu,
        layout: &Layout,
        precision: Precision,
        mut data: impl FnMut(usize) -> Result<Option<Vec<f32>>>,
    ) -> Result<Weights> {
        let half = match precision {
            Precision::F32 | Precision::F32Forward => vec![],
            Precision::HalfWeights => layout.half_weights(),
        };
        let in_out = match precision.forward_only() {
            true => layout.vit_linear_weights(),
            false => vec![],
        };
        // The shape parameter i is held in: [in, out] for those held transposed (the patch
        // projection's [out, C, P, P] as [C·P·P, out]).
        let held_shape = |i: usize| {
            let shape = &layout.specs[i].shape;
            match in_out.contains(&i) {
                true => vec![shape[1..].iter().product(), shape[0]],
                false => shape.clone(),
            }
        };
        let dtype_of = |i: usize| {
            if half.contains(&i) {
                DType::F16
            } else {
                DType::F32
            }
        };
        let mut places = vec![];
        let mut shapes = vec![];
        // Per block: its element type and the elements laid out in it so far.
        let mut lens: Vec<(DType, usize)> = vec![];
        for (i, s) in layout.specs.iter().enumerate() {
            let spec_shape = held_shape(i);
            let dtype = dtype_of(i);
            let size = dtype.size() as usize;
            let align = (gpu.limits.min_storage_buffer_offset_alignment as usize / size).max(4);
            let cap = (gpu.max_binding() as usize / size) / NORM_SEGMENT * NORM_SEGMENT;
            let mut held = vec![];
            let mut held_shapes = vec![];
            for (first, rows) in row_split(&spec_shape, cap) {
                let mut shape = spec_shape.clone();
                if !shape.is_empty() {
                    shape[0] = rows;
                }
                Tensor::check_shape_of(gpu, &shape, dtype, &s.name)?;
                let n: usize = shape.iter().product();
                let block = match lens.iter().rposition(|(d, _)| *d == dtype) {
                    Some(b)
                        if lens[b].1 == 0
                            || (lens[b].1 + n).next_multiple_of(NORM_SEGMENT) <= cap =>
                    {
                        b
                    }
                    _ => {
                        lens.push((dtype, 0));
                        lens.len() - 1
                    }
                };
                held.push((block, lens[block].1, n));
                held_shapes.push((first, shape));
                lens[block].1 = (lens[block].1 + n).next_multiple_of(align);
            }
            places.push(held);
            shapes.push(held_shapes);
        }
        let mut host: Vec<Vec<f32>> = lens
            .iter()
            .map(|&(_, n)| vec![0.0; n.next_multiple_of(NORM_SEGMENT)])
            .collect();
        for (i, held) in places.iter().enumerate() {
            if let Some(mut d) = data(i)? {
                if dtype_of(i) == DType::F16 {
                    check_half_range(&layout.specs[i].name, &d)?;
                }
                if in_out.contains(&i) {
                    let out = layout.specs[i].shape[0];
                    d = transpose(&d, out, d.len() / out);
                }
                let mut from = 0;
                for &(b, at, n) in held {
                    host[b][at..at + n].copy_from_slice(&d[from..from + n]);
                    from += n;
                }
            }
        }
        let blocks = host
            .iter()
            .zip(&lens)
            .map(|(h, (dtype, _))| match dtype {
                DType::F16 => {
                    let bits: Vec<u16> = h.iter().map(|&x| crate::half::f32_to_f16(x)).collect();
                    Tensor::from_f16_bits(gpu, &[h.len()], &bits)
                }
                _ => Tensor::from_slice(gpu, &[h.len()], h),
            })
            .collect::<Result<Vec<_>>>()?;
        let row_blocks: Vec<Vec<(usize, Tensor)>> = places
            .iter()
            .zip(&shapes)
            .map(|(held, shapes)| {
                held.iter()
                    .zip(shapes)
                    .map(|(&(b, at, _), (first, shape))| {
                        Ok((*first, blocks[b].part(gpu, at, shape)?))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        Ok(Weights {
            tensors: row_blocks.iter().map(|r| r[0].1.clone()).collect(),
            row_blocks,
            blocks,
            places,
            in_out,
        })
    }

    /// The bytes the parameters take on the device (their blocks, padding included).
    pub fn device_bytes(&self) -> u64 {
        self.blocks.iter().map(Tensor::bytes).sum()
    }

    /// Whether any parameter is held in f16 (`Precision::HalfWeights`).
    pub fn has_halves(&self) -> bool {
        self.blocks.iter().any(|b| b.dtype() == DType::F16)
    }

    /// Whether the ViT's linear maps are held [in, out] (`Precision::F32Forward`, `HalfWeights`).
    pub fn vit_in_out(&self) -> bool {
        !self.in_out.is_empty()
    }

    /// Whether any parameter is held in several row blocks (training needs each whole).
    pub fn is_row_split(&self) -> bool {
        self.row_blocks.iter().any(|r| r.len() > 1)
    }

    /// Fresh weights drawn as transformers initialises them, deterministic from `seed`.
    pub fn init(gpu: &Gpu, layout: &Layout, seed: u64) -> Result<Weights> {
        let mut rng = Rng::new(seed);
        Self::build(gpu, layout, Precision::F32, |i| {
            let s = &layout.specs[i];
            let n: usize = s.shape.iter().product();
            Ok(Some(match s.init {
                Init::Normal(std) => (0..n).map(|_| std * rng.normal() as f32).collect(),
                Init::Zeros => vec![0.0; n],
                Init::Ones => vec![1.0; n],
            }))
        })
    }

    /// Weights holding `values`, one per spec of the layout, in its order.
    pub fn from_values(gpu: &Gpu, layout: &Layout, values: &[Vec<f32>]) -> Result<Weights> {
        Self::from_values_as(gpu, layout, values, Precision::F32)
    }

    /// [`Weights::from_values`], held as `precision` says.
    pub fn from_values_as(
        gpu: &Gpu,
        layout: &Layout,
        values: &[Vec<f32>],
        precision: Precision,
    ) -> Result<Weights> {
        let sizes: Vec<usize> = layout
            .specs
            .iter()
            .map(|s| s.shape.iter().product())
            .collect();
        let given: Vec<usize> = values.iter().map(Vec::len).collect();
        if sizes != given {
            return Err(Error::Shape {
                op: "weights",
                msg: format!("the layout holds tensors of {sizes:?} elements, got {given:?}"),
            });
        }
        Self::build(gpu, layout, precision, |i| Ok(Some(values[i].clone())))
    }

    /// Zero tensors shaped like every parameter (gradients, optimiser moments).
    pub fn zeros(gpu: &Gpu, layout: &Layout) -> Result<Weights> {
        Self::build(gpu, layout, Precision::F32, |_| Ok(None))
    }

    /// Zeroes every tensor (in recording order): one clear per block.
    pub fn clear(&self, step: &mut Step) {
        for b in &self.blocks {
            step.clear(b);
        }
    }

    /// Loads a checkpoint's tensors (any of the formats in `formats`). `file` names the source in
    /// error messages. Every tensor of the layout must be present (the token embedding may come
    /// as the tied lm_head), F32, F16 or BF16, and of the configured shape; nothing else may be
    /// there but what `ignorable` names. They are held as `precision` says.
    pub fn from_checkpoint(
        gpu: &Gpu,
        layout: &Layout,
        tensors: &Tensors,
        file: &str,
        precision: Precision,
    ) -> Result<Weights> {
        let known: std::collections::HashSet<String> = layout
            .specs
            .iter()
            .flat_map(|s| s.saved().into_iter().map(|(name, _, _)| name))
            .collect();
        let mut names: Vec<&String> = tensors.keys().collect();
        names.sort();
        for name in names {
            if !ignorable(name) && !known.contains(name) {
                return Err(Error::Invalid(format!(
                    "{file}: unexpected tensor {name}: the file does not match config.json"
                )));
            }
        }
        if let (Some(wte), Some(head)) = (tensors.get(WTE), tensors.get(LM_HEAD)) {
            if wte.shape != head.shape || wte.data != head.data {
                return Err(Error::Invalid(format!(
                    "{file}: {LM_HEAD} differs from {WTE}; amad implements GPT-2's tied LM head only"
                )));
            }
        }
        Self::from_named(gpu, layout, tensors, ("", file), precision)
    }

    /// The layout's tensors from a checkpoint, each named `prefix` + its name: every one present,
    /// of a float dtype, and of the configured shape, held as `precision` says. `file` names the
    /// source in errors.
    pub fn from_named(
        gpu: &Gpu,
        layout: &Layout,
        tensors: &Tensors,
        (prefix, file): (&str, &str),
        precision: Precision,
    ) -> Result<Weights> {
        Self::build(gpu, layout, precision, |i| {
            let mut data: Vec<f32> = vec![];
            for (name, shape, _) in layout.specs[i].saved() {
                let name = format!("{prefix}{name}");
                let t = tensors
                    .get(&name)
                    .or_else(|| (name == WTE).then(|| tensors.get(LM_HEAD)).flatten())
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "{file}: tensor {name} is missing (expected shape {shape:?})"
                        ))
                    })?;
                if t.shape != shape {
                    return Err(Error::Invalid(format!(
                        "{file}: tensor {name} has shape {:?}, but config.json implies {shape:?}",
                        t.shape,
                    )));
                }
                data.extend(t.to_f32(&name, file)?);
            }
            Ok(Some(data))
        })
    }

    /// Every parameter's values, in layout order and transformers' layouts (row blocks joined,
    /// transposed ones turned back), read back.
    pub async fn values(&self, gpu: &Gpu) -> Result<Vec<Vec<f32>>> {
        let mut blocks = vec![];
        for b in &self.blocks {
            blocks.push(b.read(gpu).await?);
        }
        Ok(self
            .places
            .iter()
            .enumerate()
            .map(|(i, held)| {
                let v: Vec<f32> = held
                    .iter()
                    .flat_map(|&(b, at, n)| blocks[b][at..at + n].iter().copied())
                    .collect();
                match self.in_out.contains(&i) {
                    true => {
                        let s = self.tensors[i].shape();
                        transpose(&v, s[0], s[1])
                    }
                    false => v,
                }
            })
            .collect())
    }

    /// Reads every tensor back and serialises them as model.safetensors bytes.
    pub async fn to_safetensors(&self, gpu: &Gpu, layout: &Layout) -> Result<Vec<u8>> {
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        f32_safetensors(&named_values(gpu, layout, &[("", self)]).await?, Some(meta))
    }
}

/// A tensor read back for saving: (name, shape, values).
pub type Named = (String, Vec<usize>, Vec<f32>);

/// Reads back several sets of weights of one layout, each tensor named its set's prefix + its
/// name (for `f32_safetensors`).
pub async fn named_values(
    gpu: &Gpu,
    layout: &Layout,
    sets: &[(&str, &Weights)],
) -> Result<Vec<Named>> {
    let mut data = vec![];
    for (prefix, w) in sets {
        for (s, values) in layout.specs.iter().zip(w.values(gpu).await?) {
            for (name, shape, r) in s.saved() {
                data.push((format!("{prefix}{name}"), shape, values[r].to_vec()));
            }
        }
    }
    Ok(data)
}

/// A safetensors file of f32 tensors, given as (name, shape, values).
pub fn f32_safetensors(
    tensors: &[Named],
    meta: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), d)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), d)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Invalid(format!("serialising {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, meta)
        .map_err(|e| Error::Invalid(format!("serialising the tensors: {e}")))
}

#[cfg(test)]
mod tests {
    use super::check_half_range;

    #[test]
    fn values_beyond_half_precision_are_refused_by_name() {
        // 65519.99 rounds to 65504, the largest finite half; 65520 would round to infinity.
        assert!(check_half_range("w", &[0.5, -65504.0, 65519.99]).is_ok());
        let err = check_half_range("decoder.w", &[1.0, -65520.0]).unwrap_err();
        assert!(err.to_string().contains("decoder.w holds -65520"), "{err}");
        // What is already infinite or NaN stays so, as in f32.
        assert!(check_half_range("w", &[f32::INFINITY, f32::NAN]).is_ok());
    }
}
