//! Tokenizers as Hugging Face `tokenizers` writes them: tokenizer.json with a WordLevel model
//! (amad's own word vocabularies) or a byte-level BPE model (GPT-2's), or GPT-2's vocab.json and
//! merges.txt when there is no tokenizer.json. Encoding and decoding follow `tokenizers` step by
//! step: added tokens are split out of the raw text first, the rest is normalised, pre-tokenised
//! and run through the model; decoding drops special tokens and runs the decoder. Special tokens
//! are the added tokens marked special plus the ids the model's config names, never fixed
//! positions.

use super::bpe::ByteLevelBpe;
use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};

/// The special tokens of amad's own word vocabularies, in the ids `Tokenizer::new` gives them.
pub const PAD: &str = "<pad>";
pub const BOS: &str = "<bos>";
pub const EOS: &str = "<eos>";
pub const UNK: &str = "<unk>";
pub const SPECIALS: [&str; 4] = [PAD, BOS, EOS, UNK];

/// tokenizers' Whitespace pre-tokenizer.
const WHITESPACE_PATTERN: &str = r"\w+|[^\w\s]+";

/// A token added on top of the model's vocabulary (tokenizer.json's added_tokens).
#[derive(Clone, Debug, PartialEq)]
struct Added {
    id: u32,
    content: String,
    special: bool,
    lstrip: bool,
    rstrip: bool,
}

#[derive(Clone, Debug)]
enum Kind {
    /// Whole words; `split` is the pre-tokenizer (Whitespace or WhitespaceSplit).
    WordLevel {
        split: Option<fancy_regex::Regex>,
        unk: Option<u32>,
    },
    ByteLevel(Box<ByteLevelBpe>),
}

#[derive(Clone, Debug)]
pub struct Tokenizer {
    kind: Kind,
    lowercase: bool,
    /// id → token, over the model's vocabulary and the added tokens.
    tokens: Vec<String>,
    /// The model's vocabulary (added tokens are matched separately, as `tokenizers` does).
    vocab: HashMap<String, u32>,
    added: Vec<Added>,
    /// Ids dropped when decoding: special added tokens and the ids marked by `mark_special`.
    special: HashSet<u32>,
    /// The tokenizer.json it was read from, written back unchanged.
    json: String,
}

impl PartialEq for Tokenizer {
    fn eq(&self, other: &Self) -> bool {
        self.json == other.json && self.special == other.special
    }
}

fn bad(m: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("tokenizer.json: {m}"))
}

/// Python's str.isspace, which the caption pipeline's strip() uses: Unicode White_Space plus the
/// four information separators U+001C..U+001F.
fn python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

impl Tokenizer {
    /// A word vocabulary: the special tokens (ids 0-3), then `words` lower-cased in order
    /// (duplicates and specials skipped); Lowercase normaliser and Whitespace pre-tokenizer.
    pub fn new<S: AsRef<str>>(words: &[S]) -> Tokenizer {
        let mut all: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
        for w in words {
            let w = w.as_ref().to_lowercase();
            if !all.contains(&w) {
                all.push(w);
            }
        }
        let added: Vec<Value> = SPECIALS
            .iter()
            .enumerate()
            .map(|(i, s)| json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
            .collect();
        let vocab: serde_json::Map<String, Value> = all
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
        let text = serde_json::to_string_pretty(&v).expect("a JSON value serialises");
        Self::from_json(&text).expect("a word vocabulary of distinct words is valid")
    }

    /// The vocabulary's size: one past the largest id of a token or an added token.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The id of a token of the vocabulary or an added token.
    pub fn id(&self, token: &str) -> Option<u32> {
        self.added
            .iter()
            .find(|a| a.content == token)
            .map(|a| a.id)
            .or_else(|| self.vocab.get(token).copied())
    }

    /// Also drops `ids` when decoding (the model config's start, end, padding ids).
    pub fn mark_special(&mut self, ids: &[u32]) {
        self.special.extend(ids);
    }

    /// Ids of `text`, as `tokenizers` encodes it without a post-processor (no special tokens
    /// are added; the decoder's start token is the caller's).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = vec![];
        let mut rest = text;
        while !rest.is_empty() {
            let (before, token, after) = self.next_added(rest);
            self.encode_plain(before, &mut out);
            match token {
                Some(id) => out.push(id),
                None => break,
            }
            rest = after;
        }
        out
    }

    /// Splits at the first added token (longest at a position): (text before, its id, text
    /// after); with lstrip/rstrip the whitespace beside it goes with it.
    fn next_added<'a>(&self, text: &'a str) -> (&'a str, Option<u32>, &'a str) {
        for (at, _) in text.char_indices() {
            let hit = self
                .added
                .iter()
                .filter(|a| !a.content.is_empty() && text[at..].starts_with(&a.content))
                .max_by_key(|a| a.content.len());
            if let Some(a) = hit {
                let mut start = at;
                if a.lstrip {
                    start = text[..at].trim_end().len();
                }
                let mut end = at + a.content.len();
                if a.rstrip {
                    end = text.len() - text[end..].trim_start().len();
                }
                return (&text[..start], Some(a.id), &text[end..]);
            }
        }
        (text, None, "")
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let lowered;
        let text = if self.lowercase {
            lowered = text.to_lowercase();
            &lowered
        } else {
            text
        };
        match &self.kind {
            Kind::ByteLevel(bpe) => bpe.encode(&self.vocab, text, out),
            Kind::WordLevel { split, unk } => {
                let word = |w: &str| self.vocab.get(w).copied().or(*unk);
                match split {
                    Some(re) => out.extend(
                        re.find_iter(text)
                            .filter_map(|m| m.ok())
                            .filter_map(|m| word(m.as_str())),
                    ),
                    None => out.extend(text.split_whitespace().filter_map(word)),
                }
            }
        }
    }

    /// The text of `ids` as the captioning pipeline gives it: special tokens skipped, the
    /// decoder run (byte-level: bytes joined and read as UTF-8, invalid sequences replaced;
    /// word-level: tokens joined by spaces), then stripped. Ids outside the vocabulary are
    /// skipped, as `tokenizers` skips them.
    pub fn decode(&self, ids: &[u32]) -> String {
        let kept = ids
            .iter()
            .filter(|id| !self.special.contains(id))
            .filter_map(|&id| self.tokens.get(id as usize))
            .filter(|t| !t.is_empty());
        let text = match &self.kind {
            Kind::ByteLevel(bpe) => {
                let mut bytes = vec![];
                for t in kept {
                    bpe.token_bytes(t, &mut bytes);
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Kind::WordLevel { .. } => kept.map(String::as_str).collect::<Vec<_>>().join(" "),
        };
        text.trim_matches(python_space).to_string()
    }

    /// Each token's piece of the caption, so that the pieces joined read as `decode` gives it
    /// (before its strip): byte-level tokens as their bytes (a character split across tokens
    /// shows as U+FFFD in each piece), words with the space before them; special tokens are empty.
    pub fn pieces(&self, ids: &[u32]) -> Vec<String> {
        let mut first = true;
        ids.iter()
            .map(|&id| {
                let Some(t) = self
                    .tokens
                    .get(id as usize)
                    .filter(|_| !self.special.contains(&id))
                else {
                    return String::new();
                };
                match &self.kind {
                    Kind::ByteLevel(bpe) => {
                        let mut bytes = vec![];
                        bpe.token_bytes(t, &mut bytes);
                        String::from_utf8_lossy(&bytes).into_owned()
                    }
                    Kind::WordLevel { .. } if first => {
                        first = false;
                        t.clone()
                    }
                    Kind::WordLevel { .. } => format!(" {t}"),
                }
            })
            .collect()
    }

    /// Parses tokenizer.json. What amad does not implement (another model type, normaliser,
    /// pre-tokenizer or decoder, BPE dropout, subword prefixes) is refused by name.
    pub fn from_json(text: &str) -> Result<Tokenizer> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON ({e})")))?;
        let model = v.get("model").ok_or_else(|| bad("no \"model\""))?;
        let model_type = model.get("type").and_then(Value::as_str).unwrap_or("");
        let vocab_json = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("model.vocab is not an object"))?;
        let mut vocab = HashMap::with_capacity(vocab_json.len());
        for (w, id) in vocab_json {
            let id = id
                .as_u64()
                .filter(|&i| i < u32::MAX as u64)
                .ok_or_else(|| bad(format!("{w:?} has id {id}, not a token id")))?;
            vocab.insert(w.clone(), id as u32);
        }
        let added = parse_added(&v)?;
        let lowercase = parse_normalizer(v.get("normalizer"))?;
        let unk_name = model.get("unk_token").and_then(Value::as_str);
        let pre = v.get("pre_tokenizer").unwrap_or(&Value::Null);
        let pre_type = pre.get("type").and_then(Value::as_str);
        let kind = match model_type {
            "WordLevel" => {
                let split = match pre_type {
                    Some("Whitespace") => Some(
                        fancy_regex::Regex::new(WHITESPACE_PATTERN)
                            .expect("the Whitespace pattern compiles"),
                    ),
                    Some("WhitespaceSplit") => None,
                    other => {
                        return Err(bad(format!(
                            "pre_tokenizer {other:?}: amad reads WordLevel vocabularies with a \
                             Whitespace or WhitespaceSplit pre-tokenizer"
                        )))
                    }
                };
                let unk = match unk_name {
                    Some(u) => Some(*vocab.get(u).ok_or_else(|| {
                        bad(format!("model.unk_token {u:?} is not in the vocabulary"))
                    })?),
                    None => None,
                };
                Kind::WordLevel { split, unk }
            }
            "BPE" => Kind::ByteLevel(Box::new(parse_bpe(model, pre, &v, &vocab)?)),
            other => {
                return Err(bad(format!(
                    "model type {other:?}: amad reads WordLevel and byte-level BPE tokenizers"
                )))
            }
        };
        let size = vocab
            .values()
            .chain(added.iter().map(|a| &a.id))
            .max()
            .map_or(0, |&m| m as usize + 1);
        let mut tokens = vec![String::new(); size];
        for (w, &id) in &vocab {
            if !tokens[id as usize].is_empty() {
                return Err(bad(format!("id {id} is given twice")));
            }
            tokens[id as usize] = w.clone();
        }
        for a in &added {
            tokens[a.id as usize] = a.content.clone();
        }
        if model_type == "WordLevel" {
            if let Some(hole) = tokens.iter().position(String::is_empty) {
                return Err(bad(format!("no token has id {hole}")));
            }
        }
        let special = added.iter().filter(|a| a.special).map(|a| a.id).collect();
        Ok(Tokenizer {
            kind,
            lowercase,
            tokens,
            vocab,
            added,
            special,
            json: text.to_string(),
        })
    }

    /// GPT-2's vocab.json and merges.txt (what the Hub has beside, or instead of,
    /// tokenizer.json), as transformers' GPT2TokenizerFast builds them: byte-level BPE, no
    /// prefix space, `specials` (special_tokens_map.json's tokens) added as special tokens.
    pub fn from_vocab_merges(
        vocab_json: &str,
        merges_txt: &str,
        specials: &[String],
    ) -> Result<Tokenizer> {
        let vocab: serde_json::Map<String, Value> =
            serde_json::from_str(vocab_json).map_err(|e| {
                Error::Invalid(format!("vocab.json: not a JSON object of token ids ({e})"))
            })?;
        let merges: Vec<Value> = merges_txt
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .map(|l| match l.split_once(' ') {
                Some((a, b)) if !b.contains(' ') => Ok(json!([a, b])),
                _ => Err(Error::Invalid(format!(
                    "merges.txt: {l:?} is not two tokens separated by one space"
                ))),
            })
            .collect::<Result<_>>()?;
        let mut added = vec![];
        for s in specials {
            let id = vocab.get(s).ok_or_else(|| {
                Error::Invalid(format!("special token {s:?} is not in vocab.json"))
            })?;
            if !added.iter().any(|a: &Value| a["content"] == json!(s)) {
                added.push(json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": true, "special": true}));
            }
        }
        let v = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": false, "vocab": vocab, "merges": merges},
        });
        Self::from_json(&serde_json::to_string(&v).expect("a JSON value serialises"))
            .map_err(|e| Error::Invalid(format!("vocab.json + merges.txt: {e}")))
    }

    /// tokenizer.json: the text it was read from, or that `new` made.
    pub fn to_json(&self) -> String {
        self.json.clone()
    }
}

fn parse_added(v: &Value) -> Result<Vec<Added>> {
    let mut out = vec![];
    let Some(list) = v.get("added_tokens") else {
        return Ok(out);
    };
    let list = list
        .as_array()
        .ok_or_else(|| bad("added_tokens is not a list"))?;
    for a in list {
        let flag = |k: &str| a.get(k).and_then(Value::as_bool).unwrap_or(false);
        let content = a
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("an added token has no content"))?;
        let id = a
            .get("id")
            .and_then(Value::as_u64)
            .filter(|&i| i < u32::MAX as u64)
            .ok_or_else(|| bad(format!("added token {content:?} has no valid id")))?;
        if flag("single_word") {
            return Err(bad(format!(
                "added token {content:?} has single_word, which amad does not implement"
            )));
        }
        out.push(Added {
            id: id as u32,
            content: content.to_string(),
            special: flag("special"),
            lstrip: flag("lstrip"),
            rstrip: flag("rstrip"),
        });
    }
    Ok(out)
}

/// Whether the normaliser lower-cases; null, Lowercase and Sequences of them are implemented.
fn parse_normalizer(n: Option<&Value>) -> Result<bool> {
    let Some(n) = n.filter(|n| !n.is_null()) else {
        return Ok(false);
    };
    match n.get("type").and_then(Value::as_str) {
        Some("Lowercase") => Ok(true),
        Some("Sequence") => {
            let mut lower = false;
            for m in n
                .get("normalizers")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("normalizer Sequence has no list of normalizers"))?
            {
                lower |= parse_normalizer(Some(m))?;
            }
            Ok(lower)
        }
        other => Err(bad(format!(
            "normalizer {other:?} is not implemented (amad implements Lowercase)"
        ))),
    }
}

fn parse_bpe(
    model: &Value,
    pre: &Value,
    root: &Value,
    vocab: &HashMap<String, u32>,
) -> Result<ByteLevelBpe> {
    if pre.get("type").and_then(Value::as_str) != Some("ByteLevel")
        || pre.get("use_regex").and_then(Value::as_bool) == Some(false)
    {
        return Err(bad(format!(
            "pre_tokenizer {pre}: amad reads BPE tokenizers with GPT-2's ByteLevel pre-tokenizer"
        )));
    }
    let decoder = root.get("decoder").and_then(|d| d.get("type"));
    if decoder.and_then(Value::as_str) != Some("ByteLevel") {
        return Err(bad(format!(
            "decoder {:?}: amad reads BPE tokenizers with a ByteLevel decoder",
            decoder.cloned().unwrap_or(Value::Null)
        )));
    }
    let unset = |k: &str| match model.get(k) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(_) => false,
    };
    for k in [
        "dropout",
        "continuing_subword_prefix",
        "end_of_word_suffix",
        "byte_fallback",
        "ignore_merges",
    ] {
        if !unset(k) {
            return Err(bad(format!(
                "model.{k} = {} is not implemented (GPT-2's BPE leaves it unset)",
                model[k]
            )));
        }
    }
    let merges = model
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("model.merges is not a list"))?
        .iter()
        .map(|m| match m {
            // Older files write "a b", newer ones ["a", "b"].
            Value::String(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string())),
            Value::Array(p) if p.len() == 2 => {
                Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string()))
            }
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("model.merges holds an entry that is not a pair of tokens"))?;
    let prefix = pre
        .get("add_prefix_space")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    ByteLevelBpe::new(vocab, &merges, prefix).map_err(|e| bad(format!("model.{e}")))
}
