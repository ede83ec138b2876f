//! The zip reader alone: central directory, local headers, stored entries.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = amad::model::formats::zip::entries(data, "fuzz.zip");
});
