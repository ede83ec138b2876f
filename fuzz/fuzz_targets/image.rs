//! Images from users: PNG, JPEG, WebP and GIF, decoded as captioning decodes them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = amad::data::image::decode(data, "fuzz.img");
});
