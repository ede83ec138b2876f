//! Caption generation as transformers' `generate` does it, greedy and beam search, token for
//! token. The encoder runs once per image and each decoder layer's cross-attention keys and
//! values are computed once from its states; self-attention keys and values are cached, so each
//! new token costs one position through the decoder, never the whole prefix again. Beam search
//! follows transformers' (5.x) vectorised algorithm: 2·beams candidates per step, finished
//! hypotheses scored with the length penalty, and its early-stopping heuristic.

use super::linear::Layout::InOut;
use super::Model;
use crate::error::{shape_err, Error, Result};
use crate::gpu::{Gpu, Step, Tensor};
use crate::ops::attention::{attention_out, Seq};
use crate::ops::elementwise::add;
use crate::ops::embedding::embedding;
use crate::ops::layernorm::layernorm;
use serde_json::Value;

/// transformers' `early_stopping`: stop a beam search when `beams` hypotheses have finished
/// (`True`), when the heuristic says no running beam can beat them (`False`, the default), or only
/// when no beam can improve even at the maximum length (`"never"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EarlyStopping {
    False,
    True,
    Never,
}

/// How to decode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Generation {
    /// Tokens to generate at most (the decoder's n_positions also bounds the sequence).
    pub max_new_tokens: usize,
    /// 1 = greedy.
    pub beams: usize,
    /// Finished beams score sum(log p) / length^length_penalty.
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
    /// No n-gram of this size occurs twice (0: off).
    pub no_repeat_ngram_size: usize,
    /// <eos> is not generated before this many tokens.
    pub min_new_tokens: usize,
}

impl Default for Generation {
    /// transformers' defaults, with the 15 new tokens (max_length 16) the captioners' model cards use.
    fn default() -> Self {
        Generation {
            max_new_tokens: 15,
            beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::False,
            no_repeat_ngram_size: 0,
            min_new_tokens: 0,
        }
    }
}

impl Generation {
    /// The defaults a checkpoint sets: generation_config.json where there is one, else the
    /// generation fields of config.json, else transformers' own defaults (max_length 20).
    /// max_length counts the decoder's start token, as transformers counts it.
    pub fn from_configs(generation_config: Option<&str>, config: &str) -> Result<Generation> {
        let (file, text) = match generation_config {
            Some(t) => ("generation_config.json", t),
            None => ("config.json", config),
        };
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("{file}: not valid JSON ({e})")))?;
        let bad = |k: &str| Error::Invalid(format!("{file}: {k} is not a valid value"));
        let count = |k: &str| -> Result<Option<usize>> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x.as_u64().map(|x| Some(x as usize)).ok_or_else(|| bad(k)),
            }
        };
        let max_new_tokens = match count("max_new_tokens")? {
            Some(n) => n,
            None => count("max_length")?.unwrap_or(20).saturating_sub(1),
        };
        let min_new_tokens = match count("min_new_tokens")? {
            Some(n) => n,
            None => count("min_length")?.unwrap_or(0).saturating_sub(1),
        };
        let early_stopping = match v.get("early_stopping") {
            None | Some(Value::Null) | Some(Value::Bool(false)) => EarlyStopping::False,
            Some(Value::Bool(true)) => EarlyStopping::True,
            Some(Value::String(s)) if s == "never" => EarlyStopping::Never,
            Some(_) => return Err(bad("early_stopping")),
        };
        let length_penalty = match v.get("length_penalty") {
            None | Some(Value::Null) => 1.0,
            Some(x) => x.as_f64().ok_or_else(|| bad("length_penalty"))? as f32,
        };
        let g = Generation {
            max_new_tokens,
            beams: count("num_beams")?.unwrap_or(1),
            length_penalty,
            early_stopping,
            no_repeat_ngram_size: count("no_repeat_ngram_size")?.unwrap_or(0),
            min_new_tokens,
        };
        if g.beams == 0 || g.max_new_tokens == 0 {
            return Err(Error::Invalid(format!(
                "{file}: num_beams and the maximum length must allow one new token at least"
            )));
        }
        Ok(g)
    }
}

impl Generation {
    /// generation_config.json for these settings and `cfg`'s special tokens, as transformers
    /// reads it (max_length and min_length count the decoder's start token).
    pub fn to_json(&self, cfg: &super::Config) -> String {
        let mut v = serde_json::json!({
            "max_length": self.max_new_tokens + 1,
            "num_beams": self.beams,
            "length_penalty": self.length_penalty,
            "early_stopping": match self.early_stopping {
                EarlyStopping::False => Value::Bool(false),
                EarlyStopping::True => Value::Bool(true),
                EarlyStopping::Never => Value::String("never".into()),
            },
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
            "decoder_start_token_id": cfg.decoder_start_token_id,
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": cfg.eos_token_id,
            "pad_token_id": cfg.pad_token_id,
        });
        if self.min_new_tokens > 0 {
            v["min_length"] = (self.min_new_tokens + 1).into();
        }
        serde_json::to_string_pretty(&v).expect("a JSON value serialises")
    }

    /// These settings with the beams and the new-token limit a user gave (`--beam`,
    /// `--max-tokens`), where given.
    pub fn overridden(self, beams: Option<usize>, max_new_tokens: Option<usize>) -> Generation {
        Generation {
            beams: beams.unwrap_or(self.beams),
            max_new_tokens: max_new_tokens.unwrap_or(self.max_new_tokens),
            ..self
        }
    }
}

/// log_softmax of one row, in f32 as torch computes it (max subtracted, log of the sum of exps).
fn log_softmax(row: &[f32]) -> Vec<f32> {
    let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = row.iter().map(|v| (v - mx).exp()).sum::<f32>().ln();
    row.iter().map(|v| v - mx - lse).collect()
}

/// transformers' NoRepeatNGramLogitsProcessor and MinNewTokens: bans, in `scores`, the tokens
/// that would repeat an n-gram of `seq` (the start token included, as transformers counts it),
/// and <eos> while too few tokens have been generated.
fn process(scores: &mut [f32], seq: &[u32], g: &Generation, eos: u32) {
    let n = g.no_repeat_ngram_size;
    if n > 0 && seq.len() + 1 >= n {
        let prefix = &seq[seq.len() + 1 - n..];
        for w in seq.windows(n) {
            if &w[..n - 1] == prefix {
                scores[w[n - 1] as usize] = f32::NEG_INFINITY;
            }
        }
    }
    if seq.len() - 1 < g.min_new_tokens {
        scores[eos as usize] = f32::NEG_INFINITY;
    }
}

/// The decoder's state between tokens: per layer, self-attention keys and values of the tokens
/// so far [N, t, 2·D] and cross-attention keys and values of the image [N, T, 2·D].
struct Cache {
    self_kv: Vec<Tensor>,
    cross_kv: Vec<Tensor>,
    len: usize,
}

impl Model {
    /// The cache before the first token: cross-attention keys and values from encoder states
    /// [N, T, D], once for the whole generation.
    fn start_cache(&self, step: &mut Step, states: &Tensor) -> Result<Cache> {
        let cross_kv = self
            .layout
            .dec
            .iter()
            .map(|layer| self.lin(InOut, step, states, layer.cross_kv))
            .collect::<Result<_>>()?;
        Ok(Cache {
            self_kv: vec![],
            cross_kv,
            len: 0,
        })
    }

    /// One token per row through the decoder: `ids` [N] at position `cache.len`, row n
    /// continuing the cached row `from[n]` (beam search reorders rows; cross-attention rows
    /// never move, beams of one image sharing its states). Returns logits [N, vocab] and the
    /// cache with this token appended.
    fn decode_next(
        &self,
        step: &mut Step,
        cache: &Cache,
        from: &[usize],
        ids: &[u32],
    ) -> Result<(Tensor, Cache)> {
        let (l, cfg) = (&self.layout, &self.cfg.decoder);
        let (n, t, d) = (ids.len(), cache.len, cfg.n_embd);
        if t >= cfg.n_positions {
            return shape_err(
                "generate",
                format!("position {t} is past the decoder's {}", cfg.n_positions),
            );
        }
        let eps = cfg.layer_norm_epsilon;
        let id_t = step.upload_u32(&[n, 1], ids)?;
        let pos_t = step.upload_u32(&[n, 1], &vec![t as u32; n])?;
        let tokens = self.embed_tokens(step, &id_t)?;
        let placed = embedding(step, &pos_t, self.w(l.wpe))?;
        let mut x = add(step, &tokens, &placed)?;
        let mut self_kv = Vec::with_capacity(l.dec.len());
        for (i, layer) in l.dec.iter().enumerate() {
            let (a, _) = layernorm(step, &x, self.w(layer.ln1.0), self.w(layer.ln1.1), eps)?;
            let qkv = self.lin(InOut, step, &a, layer.qkv)?;
            // Row r of the new cache: row from[r] of the old one, then this token's key and value.
            let kv = step.empty(&[n, t + 1, 2 * d])?;
            for (r, &f) in from.iter().enumerate() {
                if t > 0 {
                    let old = &cache.self_kv[i];
                    step.copy_range(old, f * t * 2 * d, t * 2 * d, &kv, r * (t + 1) * 2 * d)?;
                }
                step.copy_range(&qkv, r * 3 * d + d, 2 * d, &kv, (r * (t + 1) + t) * 2 * d)?;
            }
            // The maps are not kept: attention_out takes one dispatch where it can.
            let self_out = attention_out(
                step,
                self.dec_dims(n, 1, t + 1, i),
                Seq::part(&qkv, 0, 3),
                Seq::part(&kv, 0, 2),
                Seq::part(&kv, 1, 2),
            )?;
            self_kv.push(kv);
            let x_mid1 = self.lin_residual(InOut, step, &self_out, layer.attn_proj, &x)?;
            // The cross-attention sublayer (`cross_sublayer`) without its maps.
            let cross = &cache.cross_kv[i];
            let (_, q) = self.cross_queries(step, layer, &x_mid1)?;
            let cross_out = attention_out(
                step,
                self.dec_dims(n, 1, cross.shape()[1], i),
                Seq::whole(&q),
                Seq::part(cross, 0, 2),
                Seq::part(cross, 1, 2),
            )?;
            let x_mid2 = self.lin_residual(InOut, step, &cross_out, layer.cross_proj, &x_mid1)?;
            x = self.mlp(step, &x_mid2, &self.dec_mlp(layer))?.0;
        }
        let (hidden, _) = layernorm(step, &x, self.w(l.ln_f.0), self.w(l.ln_f.1), eps)?;
        let logits = self.lm_head(step, &hidden)?;
        let next = Cache {
            self_kv,
            cross_kv: cache.cross_kv.clone(),
            len: t + 1,
        };
        Ok((logits.reshape(&[n, cfg.vocab_size])?, next))
    }

    /// Runs one decoding step and reads back its logits, one row per input row.
    async fn next_logits(
        &self,
        gpu: &Gpu,
        cache: &Cache,
        from: &[usize],
        ids: &[u32],
    ) -> Result<(Vec<Vec<f32>>, Cache)> {
        let mut step = gpu.step();
        let (logits, next) = self.decode_next(&mut step, cache, from, ids)?;
        step.submit()?;
        let v = logits.read(gpu).await?;
        let vocab = self.cfg.decoder.vocab_size;
        Ok((v.chunks(vocab).map(<[f32]>::to_vec).collect(), next))
    }

    /// Token ids of a caption per image (without the start token, ending before <eos>), from
    /// patches [B, N, C·P·P].
    pub async fn generate(
        &self,
        gpu: &Gpu,
        patches: &Tensor,
        opts: Generation,
    ) -> Result<Vec<Vec<u32>>> {
        if opts.beams == 0 || opts.max_new_tokens == 0 {
            return shape_err("generate", "beams and max_new_tokens must be at least 1");
        }
        let batch = patches.shape().first().copied().unwrap_or(0);
        let rows = batch * opts.beams;
        // Every token reads all of the decoder's weights: where that is faster from images, each
        // is copied into one at its first use and kept until the caption is done.
        let held = gpu.hold_images(&self.weights.blocks);
        let mut step = gpu.step();
        let states = self.encode_maps(&mut step, patches, &[])?.0;
        // Beams share their image's states: gather rows b → b·beams + k with the embedding lookup.
        let states = if opts.beams > 1 {
            let s = states.shape().to_vec();
            let table = states.reshape(&[s[0], s[1] * s[2]])?;
            let index: Vec<u32> = (0..rows).map(|r| (r / opts.beams) as u32).collect();
            let ids = step.upload_u32(&[rows], &index)?;
            embedding(&mut step, &ids, &table)?.reshape(&[rows, s[1], s[2]])?
        } else {
            states
        };
        let cache = self.start_cache(&mut step, &states)?;
        step.submit()?;
        for kv in &cache.cross_kv {
            held.also(kv);
        }
        // The sequence, start token included, may fill the decoder's positions.
        let max_new = opts
            .max_new_tokens
            .min(self.cfg.decoder.n_positions.saturating_sub(1))
            .max(1);
        let opts = Generation {
            max_new_tokens: max_new,
            ..opts
        };
        if opts.beams == 1 {
            self.greedy(gpu, cache, batch, &opts).await
        } else {
            self.beam_search(gpu, cache, batch, &opts).await
        }
    }

    async fn greedy(
        &self,
        gpu: &Gpu,
        mut cache: Cache,
        batch: usize,
        g: &Generation,
    ) -> Result<Vec<Vec<u32>>> {
        let (start, eos, pad) = self.cfg.special_ids();
        let mut seqs = vec![vec![start]; batch];
        let mut done = vec![false; batch];
        let identity: Vec<usize> = (0..batch).collect();
        for _ in 0..g.max_new_tokens {
            let last: Vec<u32> = seqs.iter().map(|s| s[s.len() - 1]).collect();
            let (logits, next) = self.next_logits(gpu, &cache, &identity, &last).await?;
            cache = next;
            for (b, mut row) in logits.into_iter().enumerate() {
                let token = if done[b] {
                    pad
                } else {
                    process(&mut row, &seqs[b], g, eos);
                    // The first of equal maxima, as torch.argmax picks.
                    row.iter()
                        .enumerate()
                        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                            if v > best.1 {
                                (i, v)
                            } else {
                                best
                            }
                        })
                        .0 as u32
                };
                done[b] |= token == eos;
                seqs[b].push(token);
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        Ok(seqs
            .into_iter()
            .map(|s| s[1..].iter().copied().take_while(|&t| t != eos).collect())
            .collect())
    }

    async fn beam_search(
        &self,
        gpu: &Gpu,
        mut cache: Cache,
        batch: usize,
        g: &Generation,
    ) -> Result<Vec<Vec<u32>>> {
        let (start, eos, _) = self.cfg.special_ids();
        let k = g.beams;
        let mut searches: Vec<BeamSearch> = (0..batch).map(|_| BeamSearch::new(k, start)).collect();
        // Cache rows in step with the running beams: row b·k + j is beam j of image b.
        let mut from: Vec<usize> = (0..batch * k).collect();
        for cur in 1..=g.max_new_tokens {
            let last: Vec<u32> = searches
                .iter()
                .flat_map(|s| s.running.iter().map(|h| h.tokens[h.tokens.len() - 1]))
                .collect();
            let (logits, next) = self.next_logits(gpu, &cache, &from, &last).await?;
            cache = next;
            let mut any_open = false;
            for (b, s) in searches.iter_mut().enumerate() {
                let rows = &logits[b * k..(b + 1) * k];
                let origins = s.step(rows, g, eos, cur, cur == g.max_new_tokens);
                for (j, o) in origins.into_iter().enumerate() {
                    from[b * k + j] = b * k + o;
                }
                any_open |= s.open;
            }
            if !any_open {
                break;
            }
        }
        Ok(searches.into_iter().map(|s| s.best(eos)).collect())
    }
}

#[derive(Clone, Debug)]
struct Hypothesis {
    /// The start token and the tokens so far.
    tokens: Vec<u32>,
    score: f32,
}

/// The beam search of one image, step by step as transformers' `_beam_search` runs it.
struct BeamSearch {
    running: Vec<Hypothesis>,
    /// The best finished hypotheses, best first (score -1e9 marks an empty slot).
    finished: Vec<(Hypothesis, bool)>,
    /// transformers' is_early_stop_heuristic_unsatisfied: improvement is still possible.
    open: bool,
}

/// transformers' stand-in for -inf in beam scores.
const NEG: f32 = -1.0e9;

impl BeamSearch {
    fn new(k: usize, start: u32) -> BeamSearch {
        let h = |score| Hypothesis {
            tokens: vec![start],
            score,
        };
        BeamSearch {
            running: (0..k).map(|j| h(if j == 0 { 0.0 } else { NEG })).collect(),
            finished: (0..k).map(|_| (h(NEG), false)).collect(),
            open: true,
        }
    }

    /// One step from the running beams' next-token logits; `generated` counts tokens with this
    /// one, `last` says the maximum length is reached. Returns the beam each new running beam
    /// continues.
    fn step(
        &mut self,
        logits: &[Vec<f32>],
        g: &Generation,
        eos: u32,
        generated: usize,
        last: bool,
    ) -> Vec<usize> {
        let k = self.running.len();
        let keep = 2 * k;
        // The top 2k continuations over all beams: accumulated log-probabilities.
        let mut cand: Vec<(f32, usize, u32)> = Vec::with_capacity(k * logits[0].len());
        for (j, row) in logits.iter().enumerate() {
            let mut lp = log_softmax(row);
            process(&mut lp, &self.running[j].tokens, g, eos);
            let base = self.running[j].score;
            cand.extend(lp.iter().enumerate().map(|(t, &x)| (x + base, j, t as u32)));
        }
        // Descending score; ties by flat index (beam·vocab + token), as torch.topk on CPU.
        let by_score = |a: &(f32, usize, u32), b: &(f32, usize, u32)| {
            b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
        };
        if cand.len() > keep {
            cand.select_nth_unstable_by(keep - 1, by_score);
            cand.truncate(keep);
        }
        cand.sort_by(by_score);
        let top = cand;
        let hits: Vec<bool> = top.iter().map(|c| c.2 == eos || last).collect();
        let seqs: Vec<Hypothesis> = top
            .iter()
            .map(|&(score, j, t)| {
                let mut tokens = self.running[j].tokens.clone();
                tokens.push(t);
                Hypothesis { tokens, score }
            })
            .collect();
        // Running beams: the best k continuations that did not stop.
        let mut order: Vec<usize> = (0..top.len()).collect();
        let running_score = |i: usize| top[i].0 + if hits[i] { NEG } else { 0.0 };
        order.sort_by(|&a, &b| {
            running_score(b)
                .total_cmp(&running_score(a))
                .then(a.cmp(&b))
        });
        let origins: Vec<usize> = order[..k].iter().map(|&i| top[i].1).collect();
        let next_running: Vec<Hypothesis> = order[..k]
            .iter()
            .map(|&i| Hypothesis {
                tokens: seqs[i].tokens.clone(),
                score: running_score(i),
            })
            .collect();
        // Finished: among the top k continuations, those that stopped, length-penalised, if
        // they beat the worst kept and improvement is still possible.
        let full = self.finished.iter().all(|f| f.1) && g.early_stopping == EarlyStopping::True;
        let penalty = (generated as f32).powf(g.length_penalty);
        let mut merged: Vec<(Hypothesis, bool)> = self.finished.clone();
        for (i, h) in seqs.into_iter().enumerate() {
            let just = hits[i] && i < k;
            let mut score = top[i].0 / penalty;
            if full {
                score += NEG;
            }
            if !self.open {
                score += NEG;
            }
            if !just {
                score += NEG;
            }
            merged.push((Hypothesis { score, ..h }, just));
        }
        let mut idx: Vec<usize> = (0..merged.len()).collect();
        idx.sort_by(|&a, &b| {
            merged[b]
                .0
                .score
                .total_cmp(&merged[a].0.score)
                .then(a.cmp(&b))
        });
        self.finished = idx[..k].iter().map(|&i| merged[i].clone()).collect();
        self.running = next_running;
        // The early-stopping heuristic, with the length after this step.
        let best_len = if g.early_stopping == EarlyStopping::Never && g.length_penalty > 0.0 {
            g.max_new_tokens
        } else {
            generated
        };
        let best_possible = self.running[0].score / (best_len as f32).powf(g.length_penalty);
        let worst = self
            .finished
            .iter()
            .map(|f| f.0.score)
            .fold(f32::INFINITY, f32::min);
        let beats = self
            .finished
            .iter()
            .any(|f| best_possible > if f.1 { worst } else { NEG });
        self.open &= beats;
        let all_done = self.finished.iter().all(|f| f.1) && g.early_stopping == EarlyStopping::True;
        if all_done || hits.iter().all(|&h| h) {
            self.open = false;
        }
        origins
    }

    /// The best finished hypothesis without its start token, ending before <eos>.
    fn best(self, eos: u32) -> Vec<u32> {
        let h = &self.finished[0].0;
        h.tokens[1..]
            .iter()
            .copied()
            .take_while(|&t| t != eos)
            .collect()
    }
}
