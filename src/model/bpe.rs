//! Byte-level BPE, as GPT-2 defines it and Hugging Face `tokenizers` runs it: text is split by
//! GPT-2's pattern, each piece's UTF-8 bytes are mapped to printable characters (one per byte),
//! and merges are applied lowest rank first, leftmost first on ties.

use crate::error::{Error, Result};
use std::collections::HashMap;

/// GPT-2's split pattern (tokenizers' ByteLevel pre-tokenizer). The negative lookahead keeps the
/// last space of a run of spaces for the word after it.
const PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// GPT-2's reversible map from bytes to printable characters: printable Latin-1 bytes map to
/// themselves, the other 68 to U+0100 onwards, in byte order.
fn byte_chars() -> [char; 256] {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        out[b as usize] = if printable(b) {
            char::from_u32(b)
        } else {
            next += 1;
            char::from_u32(next - 1)
        }
        .expect("code points below 512 are characters");
    }
    out
}

#[derive(Clone, Debug)]
pub struct ByteLevelBpe {
    /// pair of token ids → (rank, merged id)
    merges: HashMap<(u32, u32), (u32, u32)>,
    byte_char: [char; 256],
    char_byte: HashMap<char, u8>,
    split: fancy_regex::Regex,
    add_prefix_space: bool,
}

impl ByteLevelBpe {
    /// `merges`: pairs of tokens in rank order; both tokens and their concatenation must be in
    /// `vocab`.
    pub fn new(
        vocab: &HashMap<String, u32>,
        merges: &[(String, String)],
        add_prefix_space: bool,
    ) -> Result<ByteLevelBpe> {
        let id = |t: &str, rank: usize| {
            vocab.get(t).copied().ok_or_else(|| {
                Error::Invalid(format!(
                    "merge {rank} uses or makes {t:?}, which is not in the vocabulary"
                ))
            })
        };
        let mut table = HashMap::with_capacity(merges.len());
        for (rank, (a, b)) in merges.iter().enumerate() {
            let merged = id(&format!("{a}{b}"), rank)?;
            table
                .entry((id(a, rank)?, id(b, rank)?))
                .or_insert((rank as u32, merged));
        }
        let byte_char = byte_chars();
        Ok(ByteLevelBpe {
            merges: table,
            char_byte: byte_char
                .iter()
                .enumerate()
                .map(|(b, &c)| (c, b as u8))
                .collect(),
            byte_char,
            split: fancy_regex::Regex::new(PATTERN).expect("GPT-2's pattern compiles"),
            add_prefix_space,
        })
    }

    /// Ids of `text` (no added tokens in it: the caller splits those out first).
    pub fn encode(&self, vocab: &HashMap<String, u32>, text: &str, out: &mut Vec<u32>) {
        let owned;
        let text = if self.add_prefix_space && !text.starts_with(' ') && !text.is_empty() {
            owned = format!(" {text}");
            &owned
        } else {
            text
        };
        for piece in self.split.find_iter(text) {
            // The pattern matches every character (its last branch is \s+, the others cover the
            // rest), and fancy-regex fails only on backtracking limits this pattern cannot reach.
            let Ok(piece) = piece else { continue };
            let mut word: Vec<u32> = piece
                .as_str()
                .bytes()
                .filter_map(|b| vocab.get(self.byte_char[b as usize].encode_utf8(&mut [0; 4])))
                .copied()
                .collect();
            self.merge(&mut word);
            out.extend(word);
        }
    }

    /// Applies merges in place: repeatedly the adjacent pair of lowest rank (leftmost on ties),
    /// the order `tokenizers` applies them in.
    fn merge(&self, word: &mut Vec<u32>) {
        loop {
            let best = word
                .windows(2)
                .enumerate()
                .filter_map(|(i, p)| self.merges.get(&(p[0], p[1])).map(|&(r, m)| (r, i, m)))
                .min();
            let Some((_, i, merged)) = best else { return };
            word[i] = merged;
            word.remove(i + 1);
        }
    }

    /// The bytes a token stands for; a token with a character outside the byte map (an added
    /// token) stands for its own UTF-8, as `tokenizers`' ByteLevel decoder reads it.
    pub fn token_bytes(&self, token: &str, out: &mut Vec<u8>) {
        let mapped: Option<Vec<u8>> = token
            .chars()
            .map(|c| self.char_byte.get(&c).copied())
            .collect();
        match mapped {
            Some(bytes) => out.extend(bytes),
            None => out.extend(token.as_bytes()),
        }
    }
}
