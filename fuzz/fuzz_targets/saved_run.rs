//! The page's saved runs (IndexedDB): the run's options as the page wrote them, the student's
//! config.json, its weights and the optimiser state (both safetensors), the input split at the
//! first three NUL bytes. Everything a resume parses before it touches the GPU.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == 0);
    let mut next = || parts.next().unwrap_or(&[]);
    let (options, config, weights, state) = (next(), next(), next(), next());
    let _ = amad::train::page::parse_options(&String::from_utf8_lossy(options));
    let _ = amad::model::Config::from_json(&String::from_utf8_lossy(config));
    for (bytes, file) in [
        (weights, "model.safetensors"),
        (state, "train_state.safetensors"),
    ] {
        if let Ok(tensors) = amad::model::formats::safetensors(bytes, file) {
            for (name, t) in &tensors {
                let _ = t.to_f32(name, file);
            }
        }
    }
});
