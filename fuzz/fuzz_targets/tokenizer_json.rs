//! tokenizer.json: parsed; a tokenizer that parses then encodes the input's own text and decodes
//! ids drawn from its bytes, as captioning and training do.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(tok) = amad::model::Tokenizer::from_json(&text) {
        let head: String = text.chars().take(256).collect();
        let ids = tok.encode(&head);
        let _ = tok.decode(&ids);
        let raw: Vec<u32> = data
            .chunks(2)
            .map(|c| c[0] as u32 * 256 + *c.get(1).unwrap_or(&0) as u32)
            .collect();
        let _ = tok.decode(&raw);
        let _ = tok.pieces(&raw);
    }
});
