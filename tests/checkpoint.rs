//! Bad checkpoints give an error naming the file and the tensor, never a panic.

mod common;
use amad::model::Model;
use common::*;
use std::path::{Path, PathBuf};

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny");

/// A copy of the tiny checkpoint in a fresh directory, with `edit` applied to its files.
fn broken(tag: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("amad-bad-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(Path::new(TINY).join(f), dir.join(f)).unwrap();
    }
    edit(&dir);
    dir
}

fn load_err(dir: &Path) -> String {
    let result = Model::load(gpu(), dir);
    std::fs::remove_dir_all(dir).ok();
    match result {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "{msg:?} does not mention {p:?}");
    }
}

#[test]
fn truncated_weights() {
    let dir = broken("truncated", |d| {
        let f = d.join("model.safetensors");
        let bytes = std::fs::read(&f).unwrap();
        std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    });
    assert_mentions(&load_err(&dir), &["model.safetensors", "truncated"]);
}

#[test]
fn missing_tensor() {
    let dir = broken("missing", |d| {
        let f = d.join("model.safetensors");
        let bytes = std::fs::read(&f).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let kept: Vec<_> = st
            .tensors()
            .into_iter()
            .filter(|(n, _)| n != "decoder.transformer.ln_f.bias")
            .collect();
        std::fs::write(&f, safetensors::serialize(kept, None).unwrap()).unwrap();
    });
    assert_mentions(
        &load_err(&dir),
        &[
            "model.safetensors",
            "decoder.transformer.ln_f.bias",
            "missing",
        ],
    );
}

#[test]
fn shape_disagreeing_with_the_config() {
    let dir = broken("shape", |d| {
        let f = d.join("config.json");
        let text = std::fs::read_to_string(&f)
            .unwrap()
            .replace("\"n_inner\": 32", "\"n_inner\": 40");
        std::fs::write(&f, text).unwrap();
    });
    assert_mentions(
        &load_err(&dir),
        &[
            "model.safetensors",
            "decoder.transformer.h.0.mlp.c_fc.weight",
            "[16, 32]",
            "[16, 40]",
        ],
    );
}

#[test]
fn not_a_config() {
    let dir = broken("config", |d| {
        std::fs::write(d.join("config.json"), "{ not json").unwrap()
    });
    assert_mentions(&load_err(&dir), &["config.json", "not valid JSON"]);
    let dir = broken("missing-dir", |d| {
        std::fs::remove_file(d.join("model.safetensors")).unwrap()
    });
    assert_mentions(&load_err(&dir), &["model.safetensors"]);
}

#[test]
fn the_config_json_round_trips() {
    let text = std::fs::read_to_string(Path::new(TINY).join("config.json")).unwrap();
    let cfg = amad::model::Config::from_json(&text).unwrap();
    assert_eq!(amad::model::Config::from_json(&cfg.to_json()).unwrap(), cfg);
    assert_eq!(cfg.encoder.hidden_size, 24);
    assert_eq!(cfg.decoder.n_inner, 32);
}
