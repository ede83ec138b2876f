//! GPT-2's vocab.json and merges.txt with special tokens, the input split at NUL bytes (the
//! special tokens one per line).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let (vocab, merges) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let specials: Vec<String> = parts
        .next()
        .unwrap_or("")
        .lines()
        .map(String::from)
        .collect();
    if let Ok(tok) = amad::model::Tokenizer::from_vocab_merges(vocab, merges, &specials) {
        let ids = tok.encode("a photo of a cat, 3 dogs and a Déjà vu 🙂");
        let _ = tok.decode(&ids);
    }
});
