//! pytorch_model.bin: the zip archive, the restricted unpickler and the storages it points at,
//! every tensor widened to f32.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = amad::model::formats::torch_bin(data, "fuzz.bin") {
        for (name, t) in &tensors {
            let _ = t.to_f32(name, "fuzz.bin");
        }
    }
});
