//! Tokenizers as Hugging Face writes them, checked against `tokenizers` itself: GPT-2's real
//! 50257-token byte-level BPE vocabulary (tests/fixtures/hub_tiny/tokenizer.json) on 3,013
//! varied strings (unicode, emoji, digits, runs of spaces, newlines, the special token's text)
//! and 1,500 id sequences (goldens: tests/fixtures/make_tokenizer_golden.py).

mod common;
use amad::model::Tokenizer;
use common::{merges_lines, HUB_TINY};
use serde_json::{json, Value};

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/tokenizer_golden.json"
);

fn gpt2_json() -> String {
    std::fs::read_to_string(format!("{HUB_TINY}/tokenizer.json")).unwrap()
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(GOLDEN).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Every golden: (encodings that differ, decodings that differ), with the first few shown.
fn check_goldens(tok: &Tokenizer) {
    let g = golden();
    let mut bad = vec![];
    let encode = g["encode"].as_array().unwrap();
    for e in encode {
        let text = e["text"].as_str().unwrap();
        let got = tok.encode(text);
        if got != ids(&e["ids"]) {
            bad.push(format!("encode {text:?}: got {got:?}, want {}", e["ids"]));
        }
    }
    let decode = g["decode"].as_array().unwrap();
    for d in decode {
        let got = tok.decode(&ids(&d["ids"]));
        if got != d["text"].as_str().unwrap() {
            bad.push(format!(
                "decode {}: got {got:?}, want {}",
                d["ids"], d["text"]
            ));
        }
    }
    assert!(encode.len() > 3000 && decode.len() >= 1500);
    assert!(
        bad.is_empty(),
        "{} of {} goldens differ, first: {:#?}",
        bad.len(),
        encode.len() + decode.len(),
        &bad[..bad.len().min(8)]
    );
}

#[test]
fn gpt2_byte_level_bpe_matches_tokenizers_on_every_golden() {
    let tok = Tokenizer::from_json(&gpt2_json()).unwrap();
    assert_eq!(tok.len(), 50257);
    assert_eq!(tok.id("<|endoftext|>"), Some(50256));
    assert_eq!(
        tok.encode("a man riding a wave on top of a surfboard ."),
        [64, 582, 10311, 257, 6769, 319, 1353, 286, 257, 9053, 3526, 764]
    );
    check_goldens(&tok);
}

/// The Hub's older files write merges as "a b" strings, newer ones as pairs; vocab.json and
/// merges.txt stand in when there is no tokenizer.json. All three read as the same tokenizer.
#[test]
fn vocab_and_merges_files_and_string_merges_read_as_the_same_tokenizer() {
    let v: Value = serde_json::from_str(&gpt2_json()).unwrap();
    let merges = merges_lines(&v);
    let mut old = v.clone();
    old["model"]["merges"] = json!(merges);
    check_goldens(&Tokenizer::from_json(&old.to_string()).unwrap());

    let vocab = v["model"]["vocab"].to_string();
    let merges_txt = format!("#version: 0.2\n{}\n", merges.join("\n"));
    let tok =
        Tokenizer::from_vocab_merges(&vocab, &merges_txt, &["<|endoftext|>".to_string()]).unwrap();
    check_goldens(&tok);
    // What it writes as tokenizer.json reads back as the same tokenizer.
    let back = Tokenizer::from_json(&tok.to_json()).unwrap();
    assert_eq!(
        back.encode("Two cats 🐈 on a sofa."),
        tok.encode("Two cats 🐈 on a sofa.")
    );
}

#[test]
fn ids_the_config_names_are_special_when_decoding() {
    let mut tok = Tokenizer::from_json(&gpt2_json()).unwrap();
    let cat = tok.encode(" a cat");
    assert_eq!(tok.decode(&cat), "a cat");
    let with_bang = [cat.clone(), vec![0]].concat(); // id 0 is "!"
    assert_eq!(tok.decode(&with_bang), "a cat!");
    tok.mark_special(&[0]);
    assert_eq!(tok.decode(&with_bang), "a cat");
}

#[test]
fn word_level_vocabularies_split_as_tokenizers_whitespace_does() {
    let tok = Tokenizer::new(&["red", "circle", "left", "of"]);
    let unk = tok.id("<unk>").unwrap();
    // \w+|[^\w\s]+ after lower-casing: punctuation runs are words of their own (unknown here).
    assert_eq!(
        tok.encode("Red circle, left-of!"),
        [
            tok.id("red").unwrap(),
            tok.id("circle").unwrap(),
            unk,
            tok.id("left").unwrap(),
            unk,
            tok.id("of").unwrap(),
            unk
        ]
    );
    assert_eq!(
        tok.decode(&tok.encode("Red circle, left-of!")),
        "red circle left of"
    );
    assert_eq!(Tokenizer::from_json(&tok.to_json()).unwrap(), tok);
}

#[test]
fn what_amad_does_not_implement_is_refused_by_name() {
    let base: Value = serde_json::from_str(&gpt2_json()).unwrap();
    // (what the error names, where in the file, the value put there)
    let cases = [
        ("Unigram", "/model/type", json!("Unigram")),
        ("NFKC", "/normalizer", json!({"type": "NFKC"})),
        ("dropout", "/model/dropout", json!(0.1)),
        (
            "continuing_subword_prefix",
            "/model/continuing_subword_prefix",
            json!("##"),
        ),
        ("Metaspace", "/pre_tokenizer", json!({"type": "Metaspace"})),
        ("WordPiece", "/decoder", json!({"type": "WordPiece"})),
        ("single_word", "/added_tokens/0/single_word", json!(true)),
        (
            "not in the vocabulary",
            "/model/merges/0",
            json!(["zzzz", "qqqq"]),
        ),
    ];
    for (needle, at, value) in cases {
        let mut v = base.clone();
        *v.pointer_mut(at).unwrap() = value;
        let err = Tokenizer::from_json(&v.to_string())
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(err.starts_with("tokenizer.json: "), "{err}");
    }
    let err = Tokenizer::from_json("{").unwrap_err().to_string();
    assert!(err.starts_with("tokenizer.json: not valid JSON"), "{err}");
}

/// The page shows a caption token by token (each with its cross-attention): the pieces, joined,
/// are the caption.
#[test]
fn token_pieces_join_into_the_caption() {
    let gpt2 = Tokenizer::from_json(&gpt2_json()).unwrap();
    let ids = gpt2.encode("a man riding a wave on top of a surfboard .");
    let pieces = gpt2.pieces(&ids);
    assert_eq!(pieces[..3], ["a", " man", " riding"]);
    assert_eq!(pieces.concat(), gpt2.decode(&ids));
    let words = Tokenizer::new(&["red", "circle"]);
    let ids = words.encode("red circle");
    assert_eq!(words.pieces(&ids), ["red", " circle"]);
    assert_eq!(words.pieces(&ids).concat(), words.decode(&ids));
}
