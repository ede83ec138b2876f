//! `amad data export`: scenes of a split as PNG files, with captions.jsonl (file name, reference
//! captions, scene graph) and the vocabulary as tokenizer.json.

use super::captions::{references, tokenizer};
use super::scenes::{Background, Scene, Split, SIZE};
use crate::error::{Error, Result};
use serde_json::json;
use std::io::Write;
use std::path::Path;

/// The scene graph as JSON.
pub fn scene_json(scene: &Scene) -> serde_json::Value {
    let background = match scene.background {
        Background::Flat(g) => json!({"kind": "flat", "grey": g}),
        Background::Gradient {
            from,
            to,
            horizontal,
        } => json!({"kind": "gradient", "from": from, "to": to, "horizontal": horizontal}),
        Background::Noise { level, .. } => json!({"kind": "noise", "grey": level}),
    };
    let objects: Vec<_> = scene
        .objects
        .iter()
        .map(|o| json!({"shape": o.shape.word(), "colour": o.colour.word(), "size": o.size.word(), "x": o.x, "y": o.y}))
        .collect();
    json!({"background": background, "objects": objects})
}

/// Writes scenes `0..n` of `split` into `dir`.
pub fn export(split: Split, n: usize, dir: &Path) -> Result<()> {
    let io = |p: &Path, e: std::io::Error| Error::Invalid(format!("{}: {e}", p.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let jsonl = dir.join("captions.jsonl");
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(&jsonl).map_err(|e| io(&jsonl, e))?);
    for i in 0..n {
        let scene = Scene::generate(split, i as u64);
        let file = format!("{}_{i:05}.png", split.name());
        let path = dir.join(&file);
        image::RgbImage::from_raw(SIZE as u32, SIZE as u32, scene.render())
            .expect("a rendered scene is SIZE × SIZE × 3")
            .save(&path)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        let line =
            json!({"file": file, "references": references(&scene), "scene": scene_json(&scene)});
        writeln!(out, "{line}").map_err(|e| io(&jsonl, e))?;
    }
    out.flush().map_err(|e| io(&jsonl, e))?;
    let tok = dir.join("tokenizer.json");
    std::fs::write(&tok, tokenizer().to_json()).map_err(|e| io(&tok, e))
}
