//! BLEU-1..4, ROUGE-L and CIDEr-D as the COCO caption toolkit (pycocoevalcap) computes them,
//! quirks included, so the numbers are comparable with published ones. tests/metrics.rs checks
//! them against pycocoevalcap on a committed example set.

use std::collections::{BTreeMap, HashMap, HashSet};

/// Tokens of a caption as PTBTokenizer leaves them after pycocoevalcap drops punctuation:
/// lower-cased, split on whitespace, with the punctuation marks . , ? ! : ; removed. (PTB's
/// handling of contractions, quotes and brackets is not reproduced; generated captions have none.)
pub fn tokenize(caption: &str) -> Vec<String> {
    caption
        .to_lowercase()
        .replace(['.', ',', '?', '!', ':', ';'], " ")
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Ordered maps, so that sums over n-grams run in the same order in every process: a HashMap's
/// order changes from run to run, and with it the last bits of CIDEr-D.
type Ngrams = BTreeMap<Vec<String>, usize>;

/// tf-idf weights of one sentence per n-gram order, their norms, and its length (in bigrams).
type Weighted = ([BTreeMap<Vec<String>, f64>; 4], [f64; 4], f64);

/// Counts of every n-gram, n = 1..=4.
fn ngrams(words: &[String]) -> Ngrams {
    let mut out = Ngrams::new();
    for n in 1..=4 {
        for w in words.windows(n) {
            *out.entry(w.to_vec()).or_default() += 1;
        }
    }
    out
}

/// Corpus scores and per-image ones.
#[derive(Clone, Debug, PartialEq)]
pub struct Scores {
    /// Corpus-level BLEU-1..4.
    pub bleu: [f64; 4],
    /// Mean ROUGE-L.
    pub rouge_l: f64,
    /// Mean CIDEr-D.
    pub cider_d: f64,
    pub per_image_bleu4: Vec<f64>,
    pub per_image_rouge_l: Vec<f64>,
    pub per_image_cider_d: Vec<f64>,
}

/// Scores `candidates[i]` against `references[i]` (each image at least one reference).
pub fn score(candidates: &[String], references: &[Vec<String>]) -> Scores {
    assert_eq!(
        candidates.len(),
        references.len(),
        "one candidate per image"
    );
    let cands: Vec<Vec<String>> = candidates.iter().map(|c| tokenize(c)).collect();
    let refs: Vec<Vec<Vec<String>>> = references
        .iter()
        .map(|rs| rs.iter().map(|r| tokenize(r)).collect())
        .collect();
    let (bleu, per_image_bleu4) = bleu(&cands, &refs);
    let per_image_rouge_l: Vec<f64> = cands
        .iter()
        .zip(&refs)
        .map(|(c, rs)| rouge_l(c, rs))
        .collect();
    let per_image_cider_d = cider_d(&cands, &refs);
    let mean = |v: &[f64]| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    Scores {
        bleu,
        rouge_l: mean(&per_image_rouge_l),
        cider_d: mean(&per_image_cider_d),
        per_image_bleu4,
        per_image_rouge_l,
        per_image_cider_d,
    }
}

/// BleuScorer with option "closest": clipped n-gram matches summed over the corpus, a brevity
/// penalty from the reference length closest to each candidate's (the shorter on ties), and the
/// toolkit's guards (tiny = 1e-15, small = 1e-9).
fn bleu(cands: &[Vec<String>], refs: &[Vec<Vec<String>>]) -> ([f64; 4], Vec<f64>) {
    let (tiny, small) = (1e-15, 1e-9);
    let (mut testlen, mut reflen) = (0.0, 0.0);
    let (mut guess, mut correct) = ([0.0f64; 4], [0.0f64; 4]);
    let mut per_image = vec![];
    for (c, rs) in cands.iter().zip(refs) {
        let mut maxcounts = Ngrams::new();
        for r in rs {
            for (g, n) in ngrams(r) {
                let e = maxcounts.entry(g).or_default();
                *e = (*e).max(n);
            }
        }
        let tl = c.len();
        let rl = rs
            .iter()
            .map(|r| r.len())
            .min_by_key(|&l| (l.abs_diff(tl), l))
            .unwrap_or(0);
        // Candidate n-grams of each order (the "guess").
        let g: [f64; 4] = std::array::from_fn(|k| tl.saturating_sub(k) as f64);
        let mut m = [0.0; 4];
        for (gram, n) in ngrams(c) {
            m[gram.len() - 1] += n.min(maxcounts.get(&gram).copied().unwrap_or(0)) as f64;
        }
        let mut b = 1.0;
        let mut sentence = [0.0; 4];
        for k in 0..4 {
            b *= (m[k] + tiny) / (g[k] + small);
            sentence[k] = f64::powf(b, 1.0 / (k + 1) as f64);
        }
        let ratio = (tl as f64 + tiny) / (rl as f64 + small);
        if ratio < 1.0 {
            for s in &mut sentence {
                *s *= (1.0 - 1.0 / ratio).exp();
            }
        }
        per_image.push(sentence[3]);
        testlen += tl as f64;
        reflen += rl as f64;
        for k in 0..4 {
            guess[k] += g[k];
            correct[k] += m[k];
        }
    }
    let mut out = [0.0; 4];
    let mut b = 1.0;
    for k in 0..4 {
        b *= (correct[k] + tiny) / (guess[k] + small);
        out[k] = f64::powf(b, 1.0 / (k + 1) as f64);
    }
    let ratio = (testlen + tiny) / (reflen + small);
    if ratio < 1.0 {
        for s in &mut out {
            *s *= (1.0 - 1.0 / ratio).exp();
        }
    }
    (out, per_image)
}

fn lcs(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0; b.len() + 1];
    for x in a {
        let mut cur = vec![0; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        prev = cur;
    }
    prev[b.len()]
}

/// ROUGE-L with β = 1.2 from the best precision and best recall over the references. As the
/// toolkit splits on single spaces, an empty caption counts as one (empty) token.
fn rouge_l(cand: &[String], refs: &[Vec<String>]) -> f64 {
    let len = |t: &[String]| t.len().max(1) as f64;
    let (mut p, mut r) = (0.0f64, 0.0f64);
    for rf in refs {
        let l = lcs(rf, cand) as f64;
        p = p.max(l / len(cand));
        r = r.max(l / len(rf));
    }
    let beta2 = 1.2f64 * 1.2;
    if p != 0.0 && r != 0.0 {
        (1.0 + beta2) * p * r / (r + beta2 * p)
    } else {
        0.0
    }
}

/// CIDEr-D: tf-idf n-gram vectors (n = 1..4; document frequencies over each image's reference
/// set), clipped cosine similarity, a Gaussian length penalty (σ = 6), averaged over n and over
/// the references, times 10. As in the toolkit, the "length" in the penalty counts bigrams.
fn cider_d(cands: &[Vec<String>], refs: &[Vec<Vec<String>>]) -> Vec<f64> {
    let mut df: HashMap<Vec<String>, f64> = HashMap::new();
    for rs in refs {
        let grams: HashSet<Vec<String>> = rs.iter().flat_map(|r| ngrams(r).into_keys()).collect();
        for g in grams {
            *df.entry(g).or_default() += 1.0;
        }
    }
    let log_n = (refs.len() as f64).ln();
    let vec = |words: &[String]| -> Weighted {
        let mut v: [BTreeMap<Vec<String>, f64>; 4] = Default::default();
        let mut norm = [0.0; 4];
        let mut length = 0.0;
        for (g, tf) in ngrams(words) {
            let n = g.len() - 1;
            let w = tf as f64 * (log_n - df.get(&g).copied().unwrap_or(0.0).max(1.0).ln());
            norm[n] += w * w;
            if n == 1 {
                length += tf as f64;
            }
            v[n].insert(g, w);
        }
        (v, norm.map(f64::sqrt), length)
    };
    let sigma = 6.0f64;
    cands
        .iter()
        .zip(refs)
        .map(|(c, rs)| {
            let (vc, nc, lc) = vec(c);
            let mut total = [0.0f64; 4];
            for r in rs {
                let (vr, nr, lr) = vec(r);
                let delta = lc - lr;
                for n in 0..4 {
                    let mut val: f64 = vc[n]
                        .iter()
                        .map(|(g, &w)| {
                            w.min(vr[n].get(g).copied().unwrap_or(0.0))
                                * vr[n].get(g).copied().unwrap_or(0.0)
                        })
                        .sum();
                    if nc[n] != 0.0 && nr[n] != 0.0 {
                        val /= nc[n] * nr[n];
                    }
                    total[n] += val * (-(delta * delta) / (2.0 * sigma * sigma)).exp();
                }
            }
            total.iter().sum::<f64>() / 4.0 / rs.len() as f64 * 10.0
        })
        .collect()
}
