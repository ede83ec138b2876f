//! Caption generation: greedy and beam search. The encoder runs once per image; each decoding
//! step runs the decoder over the prefix so far (captions are short) and reads back only the
//! last position's logits.

use super::Model;
use crate::error::{shape_err, Result};
use crate::gpu::{Gpu, Tensor};
use crate::ops::embedding::embedding;

/// How to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation {
    /// Tokens to generate at most (the decoder's n_positions also bounds the prefix).
    pub max_new_tokens: usize,
    /// 1 = greedy.
    pub beams: usize,
}

impl Default for Generation {
    fn default() -> Self {
        Generation {
            max_new_tokens: 15,
            beams: 1,
        }
    }
}

fn log_softmax(row: &[f32]) -> Vec<f32> {
    let mx = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = mx + row.iter().map(|v| (v - mx).exp()).sum::<f32>().ln();
    row.iter().map(|v| v - lse).collect()
}

struct Hypothesis {
    tokens: Vec<u32>,
    logprob: f32,
}

impl Hypothesis {
    /// Beam score: mean log-probability per generated token (length penalty 1).
    fn score(&self) -> f32 {
        self.logprob / self.tokens.len().max(1) as f32
    }
}

impl Model {
    /// The last position's logits of `rows` prefixes of equal length, attending to `states`.
    async fn next_logits(
        &self,
        gpu: &Gpu,
        states: &Tensor,
        prefixes: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>> {
        let (n, len, vocab) = (
            prefixes.len(),
            prefixes[0].len(),
            self.cfg.decoder.vocab_size,
        );
        let flat: Vec<u32> = prefixes.concat();
        let mut step = gpu.step();
        let ids = step.upload_u32(&[n, len], &flat)?;
        let acts = self.decode(&mut step, states, &ids)?;
        step.submit()?;
        let logits = acts.logits.read(gpu).await?;
        Ok((0..n)
            .map(|r| logits[(r * len + len - 1) * vocab..(r * len + len) * vocab].to_vec())
            .collect())
    }

    /// Token ids of a caption per image (without the start token, ending before `<eos>`), from
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
        let mut step = gpu.step();
        let states = self.encode(&mut step, patches)?.states;
        // Beams share their image's states: gather rows b → b·beams + k with the embedding lookup.
        let states = if opts.beams > 1 {
            let s = states.shape().to_vec();
            let table = states.reshape(&[s[0], s[1] * s[2]])?;
            let rows: Vec<u32> = (0..batch * opts.beams)
                .map(|r| (r / opts.beams) as u32)
                .collect();
            let ids = step.upload_u32(&[batch * opts.beams], &rows)?;
            embedding(&mut step, &ids, &table)?.reshape(&[batch * opts.beams, s[1], s[2]])?
        } else {
            states
        };
        step.submit()?;
        let max_new = opts
            .max_new_tokens
            .min(self.cfg.decoder.n_positions.saturating_sub(1))
            .max(1);
        if opts.beams == 1 {
            self.greedy(gpu, &states, batch, max_new).await
        } else {
            self.beam_search(gpu, &states, batch, opts.beams, max_new)
                .await
        }
    }

    async fn greedy(
        &self,
        gpu: &Gpu,
        states: &Tensor,
        batch: usize,
        max_new: usize,
    ) -> Result<Vec<Vec<u32>>> {
        let (start, eos, pad) = self.cfg.special_ids();
        let mut prefixes = vec![vec![start]; batch];
        let mut done = vec![false; batch];
        for _ in 0..max_new {
            let logits = self.next_logits(gpu, states, &prefixes).await?;
            for (b, row) in logits.iter().enumerate() {
                let next = if done[b] {
                    pad
                } else {
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
                done[b] |= next == eos;
                prefixes[b].push(next);
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        Ok(prefixes
            .into_iter()
            .map(|p| p[1..].iter().copied().take_while(|&t| t != eos).collect())
            .collect())
    }

    async fn beam_search(
        &self,
        gpu: &Gpu,
        states: &Tensor,
        batch: usize,
        beams: usize,
        max_new: usize,
    ) -> Result<Vec<Vec<u32>>> {
        let (start, eos, pad) = self.cfg.special_ids();
        // Per image: live beams (all `beams` rows always present; dead rows have -inf) and
        // finished hypotheses.
        let mut live: Vec<Vec<Hypothesis>> = (0..batch)
            .map(|_| {
                (0..beams)
                    .map(|k| Hypothesis {
                        tokens: vec![],
                        logprob: if k == 0 { 0.0 } else { f32::NEG_INFINITY },
                    })
                    .collect()
            })
            .collect();
        let mut finished: Vec<Vec<Hypothesis>> = (0..batch).map(|_| vec![]).collect();
        for _ in 0..max_new {
            if finished.iter().all(|f| f.len() >= beams) {
                break;
            }
            let prefixes: Vec<Vec<u32>> = live
                .iter()
                .flatten()
                .map(|h| {
                    std::iter::once(start)
                        .chain(h.tokens.iter().copied())
                        .collect()
                })
                .collect();
            let logits = self.next_logits(gpu, states, &prefixes).await?;
            for b in 0..batch {
                if finished[b].len() >= beams {
                    // Done: its rows still run (every prefix of a batch is one length), as padding.
                    for h in &mut live[b] {
                        h.tokens.push(pad);
                        h.logprob = f32::NEG_INFINITY;
                    }
                    continue;
                }
                let mut candidates: Vec<(f32, usize, u32)> = vec![];
                for k in 0..beams {
                    let h = &live[b][k];
                    if h.logprob == f32::NEG_INFINITY {
                        continue;
                    }
                    for (tok, lp) in log_softmax(&logits[b * beams + k]).into_iter().enumerate() {
                        candidates.push((h.logprob + lp, k, tok as u32));
                    }
                }
                candidates.sort_by(|x, y| y.0.total_cmp(&x.0));
                let mut next = vec![];
                for (lp, k, tok) in candidates {
                    let mut tokens = live[b][k].tokens.clone();
                    if tok == eos {
                        finished[b].push(Hypothesis {
                            tokens,
                            logprob: lp,
                        });
                        if finished[b].len() >= beams {
                            break;
                        }
                    } else {
                        tokens.push(tok);
                        next.push(Hypothesis {
                            tokens,
                            logprob: lp,
                        });
                        if next.len() == beams {
                            break;
                        }
                    }
                }
                while next.len() < beams {
                    next.push(Hypothesis {
                        tokens: vec![pad; live[b][0].tokens.len() + 1],
                        logprob: f32::NEG_INFINITY,
                    });
                }
                live[b] = next;
            }
        }
        Ok(finished
            .into_iter()
            .zip(live)
            .map(|(mut done, alive)| {
                // Unfinished beams compete when too few hypotheses ended in time.
                if done.len() < beams {
                    done.extend(alive.into_iter().filter(|h| h.logprob > f32::NEG_INFINITY));
                }
                done.into_iter()
                    .max_by(|x, y| x.score().total_cmp(&y.score()))
                    .map(|h| h.tokens)
                    .unwrap_or_default()
            })
            .collect())
    }
}
