//! The whole captioner on the CPU, in f64, written out as transformers' ViT and GPT-2 compute it:
//! the reference the GPU model is checked against at sizes where no transformers golden can be
//! committed (a full-size model made in a test). Plain loops, ordered only so that the inner loop
//! runs along contiguous memory, which keeps a 239 M parameter forward to seconds.

use super::{gelu_erf, gelu_tanh, relu};
use crate::model::weights::Layout;
use crate::model::Config;
use crate::ops::elementwise::Activation;

/// The parameters in layout order (as `Weights::from_values` takes them).
pub struct Params<'a> {
    pub layout: &'a Layout,
    pub values: &'a [Vec<f32>],
}

impl Params<'_> {
    fn get(&self, i: usize) -> &[f32] {
        &self.values[i]
    }
}

/// y [rows, out] = x [rows, inp] · W (+ b); W is [inp, out] (`in_out`, GPT-2's Conv1D) or
/// [out, inp] (nn.Linear).
fn linear(
    x: &[f64],
    rows: usize,
    w: &[f32],
    b: Option<&[f32]>,
    inp: usize,
    in_out: bool,
) -> Vec<f64> {
    let out = w.len() / inp;
    // As [inp, out], so the inner loop below runs along a row of W.
    let wt: Vec<f64> = if in_out {
        w.iter().map(|&v| v as f64).collect()
    } else {
        let mut t = vec![0.0; w.len()];
        for o in 0..out {
            for i in 0..inp {
                t[i * out + o] = w[o * inp + i] as f64;
            }
        }
        t
    };
    let mut y = vec![0.0; rows * out];
    for r in 0..rows {
        let yr = &mut y[r * out..(r + 1) * out];
        if let Some(b) = b {
            yr.iter_mut().zip(b).for_each(|(y, &b)| *y = b as f64);
        }
        for i in 0..inp {
            let a = x[r * inp + i];
            let wr = &wt[i * out..(i + 1) * out];
            yr.iter_mut().zip(wr).for_each(|(y, &w)| *y += a * w);
        }
    }
    y
}

fn layernorm(x: &[f64], g: &[f32], b: &[f32], eps: f32) -> Vec<f64> {
    let d = g.len();
    x.chunks(d)
        .flat_map(|row| {
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (var + eps as f64).sqrt();
            row.iter()
                .zip(g.iter().zip(b))
                .map(move |(v, (&g, &b))| (v - mean) * inv * g as f64 + b as f64)
        })
        .collect()
}

/// Multi-head attention of q [tq, H·hd] over k, v [tk, H·hd] (row strides `qs`, `ks` and
/// offsets within them), causal when asked; returns [tq, H·hd].
#[allow(clippy::too_many_arguments)]
fn attention(
    q: (&[f64], usize, usize),
    k: (&[f64], usize, usize),
    v: (&[f64], usize, usize),
    tq: usize,
    tk: usize,
    heads: usize,
    hd: usize,
    causal: bool,
) -> Vec<f64> {
    let mut out = vec![0.0; tq * heads * hd];
    let scale = 1.0 / (hd as f64).sqrt();
    for h in 0..heads {
        for i in 0..tq {
            let qi = &q.0[i * q.1 + q.2 + h * hd..][..hd];
            let keys = if causal { tk - tq + i + 1 } else { tk };
            let s: Vec<f64> = (0..keys)
                .map(|j| {
                    let kj = &k.0[j * k.1 + k.2 + h * hd..][..hd];
                    scale * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>()
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            let o = &mut out[i * heads * hd + h * hd..][..hd];
            for (j, p) in e.iter().enumerate() {
                let vj = &v.0[j * v.1 + v.2 + h * hd..][..hd];
                o.iter_mut().zip(vj).for_each(|(o, v)| *o += p / z * v);
            }
        }
    }
    out
}

fn activate(a: Activation, x: f64) -> f64 {
    match a {
        Activation::GeluErf => gelu_erf(x),
        Activation::GeluTanh => gelu_tanh(x),
        Activation::Relu => relu(x),
    }
}

fn add(x: &mut [f64], y: &[f64]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// Encoder states [T, D_dec] of one image's patches [N, C·P·P] (after enc_to_dec_proj, where
/// the widths differ).
pub fn encode(cfg: &Config, p: &Params, patches: &[f64]) -> Vec<f64> {
    let (e, l) = (&cfg.encoder, p.layout);
    let (n, d) = (e.patches(), e.hidden_size);
    let emb = linear(
        patches,
        n,
        p.get(l.patch.0),
        Some(p.get(l.patch.1)),
        e.patch_dim(),
        false,
    );
    let mut x: Vec<f64> = p.get(l.cls).iter().map(|&v| v as f64).collect();
    x.extend(emb);
    add(
        &mut x,
        &p.get(l.pos).iter().map(|&v| v as f64).collect::<Vec<_>>(),
    );
    let t = n + 1;
    for layer in &l.enc {
        let h = layernorm(&x, p.get(layer.ln1.0), p.get(layer.ln1.1), e.layer_norm_eps);
        let qkv = linear(
            &h,
            t,
            p.get(layer.qkv.0),
            Some(p.get(layer.qkv.1)),
            d,
            false,
        );
        let a = attention(
            (&qkv, 3 * d, 0),
            (&qkv, 3 * d, d),
            (&qkv, 3 * d, 2 * d),
            t,
            t,
            e.num_attention_heads,
            e.head_dim(),
            false,
        );
        add(
            &mut x,
            &linear(
                &a,
                t,
                p.get(layer.out.0),
                Some(p.get(layer.out.1)),
                d,
                false,
            ),
        );
        let h = layernorm(&x, p.get(layer.ln2.0), p.get(layer.ln2.1), e.layer_norm_eps);
        let mut m = linear(
            &h,
            t,
            p.get(layer.fc1.0),
            Some(p.get(layer.fc1.1)),
            d,
            false,
        );
        m.iter_mut().for_each(|v| *v = activate(e.hidden_act, *v));
        let inner = e.intermediate_size;
        add(
            &mut x,
            &linear(
                &m,
                t,
                p.get(layer.fc2.0),
                Some(p.get(layer.fc2.1)),
                inner,
                false,
            ),
        );
    }
    let states = layernorm(&x, p.get(l.enc_ln.0), p.get(l.enc_ln.1), e.layer_norm_eps);
    match l.enc_to_dec {
        Some((w, b)) => linear(&states, t, p.get(w), Some(p.get(b)), d, false),
        None => states,
    }
}

/// The logits [vocab] that follow the token prefix `ids` (start token first) given the encoder's
/// states.
pub fn next_logits(cfg: &Config, p: &Params, states: &[f64], ids: &[u32]) -> Vec<f64> {
    let (c, l) = (&cfg.decoder, p.layout);
    let (len, d, t) = (ids.len(), c.n_embd, cfg.encoder.tokens());
    let (wte, wpe) = (p.get(l.wte), p.get(l.wpe));
    let mut x: Vec<f64> = ids
        .iter()
        .enumerate()
        .flat_map(|(i, &id)| (0..d).map(move |j| (id as usize, i, j)))
        .map(|(id, i, j)| wte[id * d + j] as f64 + wpe[i * d + j] as f64)
        .collect();
    let eps = c.layer_norm_epsilon;
    for layer in &l.dec {
        let h = layernorm(&x, p.get(layer.ln1.0), p.get(layer.ln1.1), eps);
        let qkv = linear(
            &h,
            len,
            p.get(layer.qkv.0),
            Some(p.get(layer.qkv.1)),
            d,
            true,
        );
        let (s3, s2) = (3 * d, 2 * d);
        let a = attention(
            (&qkv, s3, 0),
            (&qkv, s3, d),
            (&qkv, s3, s2),
            len,
            len,
            c.n_head,
            c.head_dim(),
            true,
        );
        let proj = linear(
            &a,
            len,
            p.get(layer.attn_proj.0),
            Some(p.get(layer.attn_proj.1)),
            d,
            true,
        );
        add(&mut x, &proj);
        let h = layernorm(&x, p.get(layer.ln_cross.0), p.get(layer.ln_cross.1), eps);
        let q = linear(
            &h,
            len,
            p.get(layer.cross_q.0),
            Some(p.get(layer.cross_q.1)),
            d,
            true,
        );
        let kv = linear(
            states,
            t,
            p.get(layer.cross_kv.0),
            Some(p.get(layer.cross_kv.1)),
            d,
            true,
        );
        let a = attention(
            (&q, d, 0),
            (&kv, s2, 0),
            (&kv, s2, d),
            len,
            t,
            c.n_head,
            c.head_dim(),
            false,
        );
        let proj = linear(
            &a,
            len,
            p.get(layer.cross_proj.0),
            Some(p.get(layer.cross_proj.1)),
            d,
            true,
        );
        add(&mut x, &proj);
        let h = layernorm(&x, p.get(layer.ln2.0), p.get(layer.ln2.1), eps);
        let mut m = linear(&h, len, p.get(layer.fc.0), Some(p.get(layer.fc.1)), d, true);
        m.iter_mut()
            .for_each(|v| *v = activate(c.activation_function, *v));
        add(
            &mut x,
            &linear(
                &m,
                len,
                p.get(layer.proj.0),
                Some(p.get(layer.proj.1)),
                c.n_inner,
                true,
            ),
        );
    }
    let last = &x[(len - 1) * d..];
    let h = layernorm(last, p.get(l.ln_f.0), p.get(l.ln_f.1), eps);
    // The LM head is the token embedding, [vocab, D]: a row per logit.
    wte.chunks(d)
        .map(|row| row.iter().zip(&h).map(|(&w, h)| w as f64 * h).sum())
        .collect()
}
