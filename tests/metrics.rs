//! The caption metrics against pycocoevalcap (tests/fixtures/make_metrics_golden.py made the
//! goldens: exact references, one-word changes, shuffled words, truncations, other images'
//! captions, capitals and punctuation, commas, a degenerate caption).

use amad::eval::metrics::{score, tokenize};

#[test]
fn metrics_match_pycocoevalcap() {
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/metrics_golden.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let images = g["images"].as_array().unwrap();
    let cands: Vec<String> = images
        .iter()
        .map(|im| im["candidate"].as_str().unwrap().to_string())
        .collect();
    let refs: Vec<Vec<String>> = images
        .iter()
        .map(|im| {
            im["references"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    // The tokenizer agrees with PTBTokenizer on every candidate.
    for (c, t) in cands
        .iter()
        .zip(g["tokenized_candidates"].as_array().unwrap())
    {
        assert_eq!(
            tokenize(c).join(" "),
            t.as_str().unwrap(),
            "tokenizing {c:?}"
        );
    }
    let s = score(&cands, &refs);
    // Both compute in f64 with the same formulas; only summation order differs: 1e-12.
    let close = |what: &str, got: f64, want: &serde_json::Value| {
        let want = want.as_f64().unwrap();
        assert!(
            (got - want).abs() <= 1e-12 * want.abs().max(1.0),
            "{what}: {got} vs pycocoevalcap {want}"
        );
    };
    for k in 0..4 {
        close(
            &format!("BLEU-{}", k + 1),
            s.bleu[k],
            &g["corpus"][format!("Bleu_{}", k + 1)],
        );
    }
    close("ROUGE-L", s.rouge_l, &g["corpus"]["ROUGE_L"]);
    close("CIDEr-D", s.cider_d, &g["corpus"]["CIDEr"]);
    for (i, im) in images.iter().enumerate() {
        let id = im["id"].as_str().unwrap();
        close(
            &format!("{id} BLEU-4"),
            s.per_image_bleu4[i],
            &g["per_image"]["Bleu_4"][i],
        );
        close(
            &format!("{id} ROUGE-L"),
            s.per_image_rouge_l[i],
            &g["per_image"]["ROUGE_L"][i],
        );
        close(
            &format!("{id} CIDEr-D"),
            s.per_image_cider_d[i],
            &g["per_image"]["CIDEr"][i],
        );
    }
}

#[test]
fn perfect_and_empty_captions() {
    let refs = vec![vec!["a small red circle".to_string(), "a red circle".to_string()]; 3];
    let exact = score(
        &[
            "a small red circle".into(),
            "a red circle".into(),
            "a small red circle".into(),
        ],
        &refs,
    );
    assert!(
        (exact.bleu[0] - 1.0).abs() < 1e-9 && (exact.rouge_l - 1.0).abs() < 1e-9,
        "{exact:?}"
    );
    let empty = score(&["".into(), "".into(), "".into()], &refs);
    assert!(
        empty.bleu.iter().all(|&b| b < 1e-6) && empty.rouge_l == 0.0 && empty.cider_d == 0.0,
        "{empty:?}"
    );
}
