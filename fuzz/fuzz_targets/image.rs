//! Images from users: PNG, JPEG, WebP, GIF and BMP, decoded as captioning decodes them, and the
//! check for a JPEG cut short that warns beside the caption.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = amad::data::image::decode(data, "fuzz.img");
    let _ = amad::data::image::warning(data, "fuzz.img");
});
