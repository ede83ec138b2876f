//! A student initialised from its teacher where their widths allow (`amad distill
//! --init-from-teacher`): on a side (encoder or decoder) whose width and MLP width equal the
//! teacher's, each student layer starts as the teacher layer it is paired with (`layer_pairs`,
//! the same map the attention losses use), and the embeddings and final LayerNorm start as the
//! teacher's. Head counts may differ: a layer's weights do not depend on how its width splits
//! into heads. Everything else keeps its random initialisation.
//!
//! It is off by default: the default student is a quarter of the teacher's width, where no
//! teacher tensor fits, and a student as wide as its teacher keeps most of its size.

use super::step::{layer_pairs, LayerMap};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::{Config, Model, Weights};

/// Which sides of a student of `cfg` can start from `teacher`: (encoder, decoder).
pub fn sides(teacher: &Config, cfg: &Config) -> (bool, bool) {
    let (te, se) = (&teacher.encoder, &cfg.encoder);
    let (td, sd) = (&teacher.decoder, &cfg.decoder);
    (
        te.hidden_size == se.hidden_size && te.intermediate_size == se.intermediate_size,
        td.n_embd == sd.n_embd && td.n_inner == sd.n_inner,
    )
}

/// The teacher's name for the student's tensor `name`, on the sides that copy (layer j of a side
/// becomes its paired teacher layer); None for a tensor that keeps its random initialisation.
fn teacher_name(
    name: &str,
    (enc, dec): (bool, bool),
    enc_map: &[(usize, usize)],
    dec_map: &[(usize, usize)],
) -> Option<String> {
    for (on, prefix, map) in [
        (enc, "encoder.encoder.layer.", enc_map),
        (dec, "decoder.transformer.h.", dec_map),
    ] {
        if let Some(rest) = name.strip_prefix(prefix) {
            let (layer, tail) = rest.split_once('.')?;
            let j: usize = layer.parse().ok()?;
            let t = map.iter().find(|p| p.0 == j)?.1;
            return on.then(|| format!("{prefix}{t}.{tail}"));
        }
    }
    let side = if name.starts_with("encoder.") {
        enc
    } else if name.starts_with("decoder.") {
        dec
    } else {
        // enc_to_dec_proj joins the two sides.
        enc && dec
    };
    side.then(|| name.to_string())
}

/// An error where no side of a student of `cfg` is as wide as `teacher`'s, so that nothing could
/// start from it (checked before a run does any work).
pub fn check(teacher: &Config, cfg: &Config) -> Result<()> {
    if sides(teacher, cfg) == (false, false) {
        return Err(Error::Invalid(format!(
            "the student cannot start from the teacher: its widths (encoder {}, decoder {}) differ \
             from the teacher's ({}, {}) on both sides; give a side the teacher's width (e.g. \
             --student-width {}) or leave out --init-from-teacher",
            cfg.encoder.hidden_size,
            cfg.decoder.n_embd,
            teacher.encoder.hidden_size,
            teacher.decoder.n_embd,
            teacher.encoder.hidden_size,
        )));
    }
    Ok(())
}

/// An error unless `student` (the checkpoint in `dir`) can be distilled from `teacher`: the same
/// vocabulary and special tokens, the same image geometry, and positions for the teacher's
/// captions.
pub fn check_student_of(teacher: &Config, student: &Config, dir: &std::path::Path) -> Result<()> {
    let (te, se, td, sd) = (
        &teacher.encoder,
        &student.encoder,
        &teacher.decoder,
        &student.decoder,
    );
    let differ = [
        ("vocab_size", td.vocab_size, sd.vocab_size),
        ("n_positions", td.n_positions, sd.n_positions),
        ("image_size", te.image_size, se.image_size),
        ("patch_size", te.patch_size, se.patch_size),
        ("num_channels", te.num_channels, se.num_channels),
        (
            "decoder_start_token_id",
            teacher.decoder_start_token_id as usize,
            student.decoder_start_token_id as usize,
        ),
        (
            "eos_token_id",
            teacher.eos_token_id as usize,
            student.eos_token_id as usize,
        ),
        (
            "pad_token_id",
            teacher.pad_token_id as usize,
            student.pad_token_id as usize,
        ),
    ]
    .into_iter()
    .filter(|(_, t, s)| t != s)
    .map(|(name, t, s)| format!("{name} {s} (the teacher's: {t})"))
    .collect::<Vec<_>>();
    if differ.is_empty() {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "{}: not a student of this teacher: {}",
        dir.display(),
        differ.join(", ")
    )))
}

/// A student of `cfg` (seed `seed` for what is not copied) with every tensor the teacher can give
/// copied from it; also returns how many tensors were copied. An error where neither side's
/// widths match.
pub async fn from_teacher(
    gpu: &Gpu,
    teacher: &Model,
    cfg: Config,
    seed: u64,
) -> Result<(Model, usize)> {
    check(&teacher.cfg, &cfg)?;
    let on = sides(&teacher.cfg, &cfg);
    let fresh = Model::new(gpu, cfg, seed)?;
    let enc_map = layer_pairs(
        teacher.cfg.encoder.num_hidden_layers,
        fresh.cfg.encoder.num_hidden_layers,
        LayerMap::Spread,
    );
    let dec_map = layer_pairs(
        teacher.cfg.decoder.n_layer,
        fresh.cfg.decoder.n_layer,
        LayerMap::Spread,
    );
    let taught = teacher.weights.values(gpu).await?;
    let by_name: std::collections::HashMap<&str, usize> = teacher
        .layout
        .specs
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut values = fresh.weights.values(gpu).await?;
    let mut copied = 0;
    for (spec, v) in fresh.layout.specs.iter().zip(values.iter_mut()) {
        let Some(i) = teacher_name(&spec.name, on, &enc_map, &dec_map)
            .and_then(|n| by_name.get(n.as_str()).copied())
        else {
            continue;
        };
        if teacher.layout.specs[i].shape == spec.shape {
            v.clone_from(&taught[i]);
            copied += 1;
        }
    }
    let weights = Weights::from_values(gpu, &fresh.layout, &values)?;
    Ok((Model { weights, ..fresh }, copied))
}
