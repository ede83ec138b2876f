//! What a distillation step holds in device memory, estimated before a run starts, so that a
//! batch that cannot fit is refused with a message that says which batch would. The figures count
//! f32 buffers as the step records them (docs/method.md's step; `Model::forward_maps` for the
//! teacher): the live set, not the allocator's pool, which keeps a buffer of every size it made,
//! nor a CPU adapter's copies of operands as images. `amad bench distill` prints the estimate
//! beside what the step allocated: at nlpconnect's shape and batch 16, 1,952 MB estimated against
//! 2,031 MB of buffers, and on lavapipe 365 MB of images besides (docs/perf-notes.md).

use super::step::{layer_pairs, DistillConfig};
use crate::error::{Error, Result};
use crate::model::{Config, Layout, Precision};

/// One buffer (or group of buffers) of a step, in bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Need {
    pub what: &'static str,
    pub bytes: u64,
}

/// The memory of a distillation step at one batch size.
#[derive(Clone, Debug, PartialEq)]
pub struct Estimate {
    pub batch: usize,
    /// Everything live at the step's peak, itemised.
    pub items: Vec<Need>,
    /// The largest single buffer, which must fit one storage binding.
    pub largest: Need,
}

impl Estimate {
    pub fn total(&self) -> u64 {
        self.items.iter().map(|n| n.bytes).sum()
    }
}

const F32: u64 = 4;

fn param_count(cfg: &Config) -> u64 {
    Layout::new(cfg).param_count() as u64
}

/// The step's memory for `batch` captions of `len` positions, the teacher's weights held as its
/// precision says.
pub fn estimate(
    (teacher, precision): (&Config, Precision),
    student: &Config,
    cfg: &DistillConfig,
    batch: usize,
    len: usize,
) -> Estimate {
    let (b, l) = (batch as u64, len as u64);
    let t = teacher.encoder.tokens() as u64;
    let pad = |k: u64| k.next_multiple_of(4);
    let vocab = teacher.decoder.vocab_size as u64;
    let (te, td) = (&teacher.encoder, &teacher.decoder);
    let (se, sd) = (&student.encoder, &student.decoder);
    // One encoder block's activations: x, LayerNorms, qkv, attention output, residuals, the MLP's
    // hidden layer before and after its activation, and the maps.
    let enc_block = |width: u64, inner: u64, heads: u64| {
        b * t * (8 * width + 2 * inner) * F32 + b * heads * t * pad(t) * F32
    };
    let dec_block = |width: u64, inner: u64, heads: u64| {
        b * l * (12 * width + 2 * inner) * F32
            + b * t * 2 * width * F32
            + b * heads * l * (pad(l) + pad(t)) * F32
    };
    let student_maps = |heads: u64| {
        let per_layer = |on: bool, q: u64, k: u64| if on { b * heads * q * k * F32 } else { 0 };
        let k = &cfg.kinds;
        per_layer(k.encoder, t, t) + per_layer(k.decoder_self, l, l) + per_layer(k.cross, l, t)
    };
    // The teacher keeps only its paired layers' maps (one per paired student layer).
    let paired = |teacher_layers: usize, student_layers: usize| {
        layer_pairs(teacher_layers, student_layers, cfg.layer_map).len() as u64
    };
    let ht = te.num_attention_heads as u64;
    let hdt = td.n_head as u64;
    let teacher_maps = if cfg.attention.is_some() {
        let k = &cfg.kinds;
        let enc = paired(te.num_hidden_layers, se.num_hidden_layers);
        let dec = paired(td.n_layer, sd.n_layer);
        (k.encoder as u64) * enc * b * ht * t * pad(t) * F32
            + (k.decoder_self as u64) * dec * b * hdt * l * pad(l) * F32
            + (k.cross as u64) * dec * b * hdt * l * pad(t) * F32
    } else {
        0
    };
    let logits = b * l * vocab * F32;
    // The backward reads the logits' gradient through a copy at a pitch of whole vec4s where its
    // rows are not (see `linear_bwd`): a buffer of its own, a little wider.
    let pitch = crate::model::linear::dy_pitch(vocab as usize) as u64;
    let padded = if pitch == vocab {
        0
    } else {
        b * l * pitch * F32
    };
    let student_acts = se.num_hidden_layers as u64
        * enc_block(
            se.hidden_size as u64,
            se.intermediate_size as u64,
            se.num_attention_heads as u64,
        )
        + sd.n_layer as u64 * dec_block(sd.n_embd as u64, sd.n_inner as u64, sd.n_head as u64);
    let teacher_block = enc_block(te.hidden_size as u64, te.intermediate_size as u64, ht)
        .max(dec_block(td.n_embd as u64, td.n_inner as u64, hdt));
    let items = vec![
        Need {
            what: "the teacher's weights",
            bytes: Layout::new(teacher).bytes(precision),
        },
        Need {
            what: "the student's weights, gradients and AdamW moments",
            bytes: param_count(student) * 4 * F32,
        },
        Need {
            what: "the teacher's logits and its paired layers' attention maps",
            bytes: logits + teacher_maps,
        },
        Need {
            what: "one teacher block's activations",
            bytes: teacher_block,
        },
        Need {
            what: "the student's activations",
            bytes: student_acts + logits,
        },
        Need {
            what: "the losses' gradients (logits, and the attention maps compared)",
            bytes: 2 * logits
                + padded
                + if cfg.attention.is_some() {
                    2 * student_maps(se.num_attention_heads.max(sd.n_head) as u64)
                } else {
                    0
                },
        },
    ];
    // The largest single buffer: a logits tensor, an encoder map or an MLP hidden layer.
    let largest = [
        (
            "the logits [batch × positions × vocabulary, rows padded to whole vec4s]",
            logits.max(padded),
        ),
        (
            "the teacher's encoder attention maps [batch × heads × tokens × tokens]",
            b * ht * t * pad(t) * F32,
        ),
        (
            "the teacher's encoder MLP [batch × tokens × intermediate]",
            b * t * te.intermediate_size as u64 * F32,
        ),
    ]
    .into_iter()
    .max_by_key(|x| x.1)
    .map(|(what, bytes)| Need { what, bytes })
    .expect("three candidates");
    Estimate {
        batch,
        items,
        largest,
    }
}

/// Megabytes, for messages.
fn mb(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

/// The estimate at `batch`, or an error that says why it does not fit — its largest buffer over
/// the device's largest binding `max_binding`, or its total over `available` bytes where that is
/// known — and the largest batch that would.
pub fn check(
    teacher: (&Config, Precision),
    student: &Config,
    cfg: &DistillConfig,
    batch: usize,
    len: usize,
    max_binding: u64,
    available: Option<u64>,
) -> Result<Estimate> {
    let fits =
        |e: &Estimate| e.largest.bytes <= max_binding && available.is_none_or(|a| e.total() <= a);
    let e = estimate(teacher, student, cfg, batch, len);
    if fits(&e) {
        return Ok(e);
    }
    let why = if e.largest.bytes > max_binding {
        format!(
            "{} would take {}, over this device's largest storage binding \
             (max_storage_buffer_binding_size) of {}",
            e.largest.what,
            mb(e.largest.bytes),
            mb(max_binding)
        )
    } else {
        format!(
            "it needs about {} in all, over the {} this device has available",
            mb(e.total()),
            mb(available.unwrap_or(0))
        )
    };
    let best = (1..batch)
        .rev()
        .find(|&b| fits(&estimate(teacher, student, cfg, b, len)));
    let advice = match best {
        Some(b) => format!("a batch of {b} or less fits"),
        None => {
            "not even a batch of 1 fits: use a device with more memory, or a smaller student".into()
        }
    };
    Err(Error::Invalid(format!(
        "a distillation batch of {batch} does not fit this device: {why}; {advice}"
    )))
}
