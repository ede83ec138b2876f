//! The JSON files beside the weights: config.json, preprocessor_config.json,
//! generation_config.json and a sharded checkpoint's index, each parsed from the same input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(cfg) = amad::model::Config::from_json(&text) {
        // What the checkpoint's layout would be (sizes only; nothing is allocated per parameter).
        let _ = cfg.encoder.tokens();
        let _ = amad::model::StudentShape::default_for(&cfg);
    }
    let _ = amad::model::preprocessor::from_json(&text, 16);
    let _ = amad::model::generate::Generation::from_configs(Some(&text), "{}");
    let _ = amad::model::generate::Generation::from_configs(None, &text);
    let _ = amad::model::formats::shard_names(&text, "fuzz.index.json");
});
