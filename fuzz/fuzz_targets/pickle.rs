//! The restricted unpickler alone, on the pickle stream a .bin archive holds (data.pkl).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = amad::model::formats::pickle::state_dict(data, "fuzz.pkl");
});
