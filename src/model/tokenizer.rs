//! A word-level vocabulary, read and written as Hugging Face tokenizers' tokenizer.json
//! (WordLevel model, whitespace pre-tokenizer, lowercase normaliser), so it travels with the
//! checkpoint and loads in `tokenizers`.

use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::collections::HashMap;

/// Special tokens, in the ids every amad vocabulary gives them.
pub const PAD: &str = "<pad>";
pub const BOS: &str = "<bos>";
pub const EOS: &str = "<eos>";
pub const UNK: &str = "<unk>";
pub const SPECIALS: [&str; 4] = [PAD, BOS, EOS, UNK];

#[derive(Clone, Debug, PartialEq)]
pub struct Tokenizer {
    words: Vec<String>,
    index: HashMap<String, u32>,
}

impl Tokenizer {
    /// The special tokens (ids 0-3), then `words` in order (duplicates and specials skipped).
    pub fn new<S: AsRef<str>>(words: &[S]) -> Tokenizer {
        let mut all: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
        for w in words {
            let w = w.as_ref().to_lowercase();
            if !all.contains(&w) {
                all.push(w);
            }
        }
        Self::from_words(all)
    }

    fn from_words(words: Vec<String>) -> Tokenizer {
        let index = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i as u32))
            .collect();
        Tokenizer { words, index }
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn id(&self, word: &str) -> Option<u32> {
        self.index.get(word).copied()
    }

    /// Lower-cased, split on whitespace and punctuation; unknown words map to `<unk>`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let unk = self.id(UNK).unwrap_or(0);
        text.to_lowercase()
            .split(|c: char| c.is_whitespace() || (c.is_ascii_punctuation() && c != '\''))
            .filter(|w| !w.is_empty())
            .map(|w| self.id(w).unwrap_or(unk))
            .collect()
    }

    /// Words joined by single spaces; stops at `<eos>`, skips the other special tokens.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut out: Vec<&str> = vec![];
        for &id in ids {
            let Some(w) = self.words.get(id as usize) else {
                continue;
            };
            if w == EOS {
                break;
            }
            if !SPECIALS.contains(&w.as_str()) {
                out.push(w);
            }
        }
        out.join(" ")
    }

    /// Parses tokenizer.json (a WordLevel model).
    pub fn from_json(text: &str) -> Result<Tokenizer> {
        let bad = |m: &str| Error::Invalid(format!("tokenizer.json: {m}"));
        let v: Value =
            serde_json::from_str(text).map_err(|e| bad(&format!("not valid JSON ({e})")))?;
        let model = v.get("model").ok_or_else(|| bad("no \"model\""))?;
        if model.get("type").and_then(Value::as_str) != Some("WordLevel") {
            return Err(bad("amad reads WordLevel vocabularies only"));
        }
        let vocab = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("model.vocab is not an object"))?;
        let mut words = vec![String::new(); vocab.len()];
        for (w, id) in vocab {
            let id = id
                .as_u64()
                .filter(|&i| (i as usize) < vocab.len())
                .ok_or_else(|| bad(&format!("{w:?} has id {id}, outside 0..{}", vocab.len())))?;
            if !words[id as usize].is_empty() {
                return Err(bad(&format!("id {id} is given twice")));
            }
            words[id as usize] = w.clone();
        }
        for (i, s) in SPECIALS.iter().enumerate() {
            if words.get(i).map(String::as_str) != Some(s) {
                return Err(bad(&format!("id {i} must be {s}")));
            }
        }
        Ok(Self::from_words(words))
    }

    pub fn to_json(&self) -> String {
        let added: Vec<Value> = SPECIALS
            .iter()
            .enumerate()
            .map(|(i, s)| json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
            .collect();
        let vocab: serde_json::Map<String, Value> = self
            .words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), json!(i)))
            .collect();
        let v = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Lowercase"},
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK},
        });
        serde_json::to_string_pretty(&v).expect("a JSON value serialises")
    }
}
