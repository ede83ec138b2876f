//! model.safetensors (and the page's IndexedDB checkpoints and optimiser states, which are
//! safetensors too): parsed, and every tensor widened to f32, as loading does.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = amad::model::formats::safetensors(data, "fuzz.safetensors") {
        for (name, t) in &tensors {
            let _ = t.to_f32(name, "fuzz.safetensors");
        }
    }
});
