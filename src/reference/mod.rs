//! Plain CPU references for every GPU op, forward and backward, in f64: written for clarity, not
//! speed. Tests compare the GPU against these and check each backward here against central
//! finite differences of its forward.

pub mod amad;
pub mod captioner;
pub mod image;

/// Batched C = op(A) op(B) (+ bias). A is [batch, M, K] ([batch, K, M] if `ta`); B is
/// [batch, K, N] ([batch, N, K] if `tb`), or one matrix shared by every batch when `b_shared`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    a: &[f64],
    b: &[f64],
    bias: Option<&[f64]>,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    b_shared: bool,
) -> Vec<f64> {
    let mut c = vec![0.0; batch * m * n];
    for bi in 0..batch {
        let ao = bi * m * k;
        let bo = if b_shared { 0 } else { bi * k * n };
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for kk in 0..k {
                    let av = if ta {
                        a[ao + kk * m + i]
                    } else {
                        a[ao + i * k + kk]
                    };
                    let bv = if tb {
                        b[bo + j * k + kk]
                    } else {
                        b[bo + kk * n + j]
                    };
                    s += av * bv;
                }
                c[bi * m * n + i * n + j] = s + bias.map_or(0.0, |b| b[j]);
            }
        }
    }
    c
}

/// out[r, c] = x[r, c] + bias[c]
pub fn bias_add(x: &[f64], bias: &[f64]) -> Vec<f64> {
    x.iter()
        .enumerate()
        .map(|(i, v)| v + bias[i % bias.len()])
        .collect()
}

/// The rows of a [rows, cols] matrix at a pitch of `pitch`, zeros after each row's cols.
pub fn pad_rows(x: &[f64], cols: usize, pitch: usize) -> Vec<f64> {
    x.chunks(cols)
        .flat_map(|row| {
            row.iter()
                .copied()
                .chain(std::iter::repeat_n(0.0, pitch - cols))
        })
        .collect()
}

/// Column sums of a [rows, cols] matrix (the bias gradient).
pub fn sum_columns(x: &[f64], cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; cols];
    for (i, v) in x.iter().enumerate() {
        out[i % cols] += v;
    }
    out
}

/// erf to near f64 precision: Taylor series below 2, 1 − erfc above.
pub fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 2.0 {
        let mut term = a;
        let mut sum = a;
        for n in 1..200 {
            term *= -a * a / n as f64;
            let t = term / (2 * n + 1) as f64;
            sum += t;
            if t.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        1.0 - erfc(a)
    };
    r.copysign(x)
}

/// erfc with small relative error in the tail (where 1 − erf would cancel): the continued
/// fraction erfc(a) = e^(−a²)/√π · 1/(a + ½/(a + 1/(a + 3⁄2/(a + …)))) for a ≥ 2 (relative error
/// under 1e-15 with 200 terms), 1 − erf below.
pub fn erfc(x: f64) -> f64 {
    if x < 2.0 {
        return 1.0 - erf(x);
    }
    let mut f = x;
    for n in (1..200).rev() {
        f = x + (n as f64 / 2.0) / f;
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() / f
}

/// Φ(x), the standard normal CDF, accurate in the lower tail.
fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// Exact GELU: x Φ(x).
pub fn gelu_erf(x: f64) -> f64 {
    x * normal_cdf(x)
}

pub fn gelu_erf_grad(x: f64) -> f64 {
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    normal_cdf(x) + x * pdf
}

const SQRT_2_OVER_PI: f64 = 0.7978845608028654;

/// GPT-2's tanh GELU.
pub fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

pub fn gelu_tanh_grad(x: f64) -> f64 {
    let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
    let th = u.tanh();
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
    0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du
}

pub fn relu(x: f64) -> f64 {
    x.max(0.0)
}

/// ReLU's slope, 0 at 0 (as torch's).
pub fn relu_grad(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else {
        0.0
    }
}

/// LayerNorm over rows of width `cols`; returns y and per-row (mean, rstd).
pub fn layernorm(x: &[f64], gamma: &[f64], beta: &[f64], eps: f64) -> (Vec<f64>, Vec<(f64, f64)>) {
    let cols = gamma.len();
    let mut y = vec![0.0; x.len()];
    let mut stats = vec![];
    for (r, row) in x.chunks(cols).enumerate() {
        let mean = row.iter().sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cols as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        for c in 0..cols {
            y[r * cols + c] = (row[c] - mean) * rstd * gamma[c] + beta[c];
        }
        stats.push((mean, rstd));
    }
    (y, stats)
}

/// Backward of [`layernorm`]: (dx, dgamma, dbeta).
pub fn layernorm_bwd(
    x: &[f64],
    gamma: &[f64],
    dy: &[f64],
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let cols = gamma.len();
    let (_, stats) = layernorm(x, gamma, &vec![0.0; cols], eps);
    let mut dx = vec![0.0; x.len()];
    let mut dg = vec![0.0; cols];
    let mut db = vec![0.0; cols];
    for (r, &(mean, rstd)) in stats.iter().enumerate() {
        let o = r * cols;
        let xhat: Vec<f64> = (0..cols).map(|c| (x[o + c] - mean) * rstd).collect();
        let g: Vec<f64> = (0..cols).map(|c| dy[o + c] * gamma[c]).collect();
        let mg = g.iter().sum::<f64>() / cols as f64;
        let mgx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / cols as f64;
        for c in 0..cols {
            dx[o + c] = rstd * (g[c] - mg - xhat[c] * mgx);
            dg[c] += dy[o + c] * xhat[c];
            db[c] += dy[o + c];
        }
    }
    (dx, dg, db)
}

/// Masks of the attention softmax (see `ops::softmax::Masks`).
#[derive(Clone, Copy, Default)]
pub struct Masks<'a> {
    pub causal: bool,
    /// [batch, k]: 1 valid, 0 padding.
    pub key_mask: Option<&'a [f64]>,
}

/// Softmax of scale·x over rows of [batch, heads, q, k], masked cells exactly 0, a fully masked
/// row all 0.
pub fn masked_softmax(
    x: &[f64],
    heads: usize,
    q: usize,
    k: usize,
    scale: f64,
    m: Masks,
) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for (r, row) in x.chunks(k).enumerate() {
        let query = r % q;
        let b = r / (heads * q);
        let valid =
            |c: usize| !(m.causal && c > query) && m.key_mask.is_none_or(|km| km[b * k + c] != 0.0);
        let mx = (0..k)
            .filter(|&c| valid(c))
            .map(|c| scale * row[c])
            .fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = (0..k)
            .map(|c| {
                if valid(c) {
                    (scale * row[c] - mx).exp()
                } else {
                    0.0
                }
            })
            .collect();
        let s: f64 = e.iter().sum();
        for c in 0..k {
            y[r * k + c] = if s > 0.0 { e[c] / s } else { 0.0 };
        }
    }
    y
}

/// Row softmax over the last dimension.
pub fn softmax(x: &[f64], cols: usize) -> Vec<f64> {
    masked_softmax(x, 1, 1, cols, 1.0, Masks::default())
}

/// Backward of a scaled softmax from its output: scale · y (dy − Σ y dy).
pub fn softmax_bwd(y: &[f64], dy: &[f64], cols: usize, scale: f64) -> Vec<f64> {
    let mut dx = vec![0.0; y.len()];
    for r in 0..y.len() / cols {
        let o = r * cols;
        let dot: f64 = (0..cols).map(|c| y[o + c] * dy[o + c]).sum();
        for c in 0..cols {
            dx[o + c] = scale * y[o + c] * (dy[o + c] - dot);
        }
    }
    dx
}

/// Moves between the [B, T, H·D] layout of projections and the [B, H, T, D] layout of heads:
/// `to_heads` splits, otherwise merges.
fn permute_heads(x: &[f64], b: usize, t: usize, h: usize, d: usize, to_heads: bool) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for bi in 0..b {
        for ti in 0..t {
            for hi in 0..h {
                for di in 0..d {
                    let tokens = (bi * t + ti) * h * d + hi * d + di;
                    let heads = ((bi * h + hi) * t + ti) * d + di;
                    if to_heads {
                        out[heads] = x[tokens];
                    } else {
                        out[tokens] = x[heads];
                    }
                }
            }
        }
    }
    out
}

fn split_heads(x: &[f64], b: usize, t: usize, h: usize, d: usize) -> Vec<f64> {
    permute_heads(x, b, t, h, d, true)
}

fn merge_heads(x: &[f64], b: usize, t: usize, h: usize, d: usize) -> Vec<f64> {
    permute_heads(x, b, t, h, d, false)
}

/// Attention sizes: batch, heads, query length, key length, head width.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub b: usize,
    pub h: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
}

/// Attention forward on [B, T, H·D] inputs: (out [B, Tq, H·D], probs [B, H, Tq, Tk]).
pub fn attention(q: &[f64], k: &[f64], v: &[f64], a: AttnDims, m: Masks) -> (Vec<f64>, Vec<f64>) {
    let (qh, kh, vh) = (
        split_heads(q, a.b, a.tq, a.h, a.d),
        split_heads(k, a.b, a.tk, a.h, a.d),
        split_heads(v, a.b, a.tk, a.h, a.d),
    );
    let bh = a.b * a.h;
    let scores = matmul(&qh, &kh, None, bh, a.tq, a.tk, a.d, false, true, false);
    let probs = masked_softmax(&scores, a.h, a.tq, a.tk, 1.0 / (a.d as f64).sqrt(), m);
    let oh = matmul(&probs, &vh, None, bh, a.tq, a.d, a.tk, false, false, false);
    (merge_heads(&oh, a.b, a.tq, a.h, a.d), probs)
}

/// Attention backward: (dq, dk, dv) in [B, T, H·D], from dO and any gradient `extra` [B, H, Tq, Tk]
/// arriving at the probabilities themselves.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    dout: &[f64],
    extra: Option<&[f64]>,
    a: AttnDims,
    m: Masks,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (_, probs) = attention(q, k, v, a, m);
    let (qh, kh, vh) = (
        split_heads(q, a.b, a.tq, a.h, a.d),
        split_heads(k, a.b, a.tk, a.h, a.d),
        split_heads(v, a.b, a.tk, a.h, a.d),
    );
    let doh = split_heads(dout, a.b, a.tq, a.h, a.d);
    let bh = a.b * a.h;
    let mut dprobs = matmul(&doh, &vh, None, bh, a.tq, a.tk, a.d, false, true, false);
    if let Some(extra) = extra {
        for (d, e) in dprobs.iter_mut().zip(extra) {
            *d += e;
        }
    }
    let dvh = matmul(&probs, &doh, None, bh, a.tk, a.d, a.tq, true, false, false);
    let ds = softmax_bwd(&probs, &dprobs, a.tk, 1.0 / (a.d as f64).sqrt());
    let dqh = matmul(&ds, &kh, None, bh, a.tq, a.d, a.tk, false, false, false);
    let dkh = matmul(&ds, &qh, None, bh, a.tk, a.d, a.tq, true, false, false);
    (
        merge_heads(&dqh, a.b, a.tq, a.h, a.d),
        merge_heads(&dkh, a.b, a.tk, a.h, a.d),
        merge_heads(&dvh, a.b, a.tk, a.h, a.d),
    )
}

/// Embedding lookup; ids outside the table give zero rows.
pub fn embedding(ids: &[u32], table: &[f64], dim: usize) -> Vec<f64> {
    let vocab = table.len() / dim;
    ids.iter()
        .flat_map(|&id| {
            (0..dim).map(move |c| {
                if (id as usize) < vocab {
                    table[id as usize * dim + c]
                } else {
                    0.0
                }
            })
        })
        .collect()
}

/// Embedding backward: the gradient of the table.
pub fn embedding_bwd(ids: &[u32], dout: &[f64], vocab: usize, dim: usize) -> Vec<f64> {
    let mut d = vec![0.0; vocab * dim];
    for (t, &id) in ids.iter().enumerate() {
        if (id as usize) < vocab {
            for c in 0..dim {
                d[id as usize * dim + c] += dout[t * dim + c];
            }
        }
    }
    d
}

fn log_softmax(row: &[f64], s: f64) -> Vec<f64> {
    let mx = row.iter().map(|v| s * v).fold(f64::NEG_INFINITY, f64::max);
    let lse = mx + row.iter().map(|v| (s * v - mx).exp()).sum::<f64>().ln();
    row.iter().map(|v| s * v - lse).collect()
}

/// The rows that count toward a mean loss, and the divisor the losses use: max(count, 1).
fn counted_rows(targets: &[u32], counts: impl Fn(u32) -> bool) -> (Vec<usize>, f64) {
    let rows: Vec<usize> = (0..targets.len()).filter(|&r| counts(targets[r])).collect();
    let n = rows.len().max(1) as f64;
    (rows, n)
}

fn row(x: &[f64], r: usize, vocab: usize) -> &[f64] {
    &x[r * vocab..(r + 1) * vocab]
}

/// Mean cross-entropy over rows whose target is not `ignore` (or out of range).
pub fn cross_entropy(logits: &[f64], targets: &[u32], vocab: usize, ignore: u32) -> f64 {
    let (rows, n) = counted_rows(targets, |t| t != ignore && (t as usize) < vocab);
    let sum: f64 = rows
        .iter()
        .map(|&r| -log_softmax(row(logits, r, vocab), 1.0)[targets[r] as usize])
        .sum();
    sum / n
}

pub fn cross_entropy_bwd(logits: &[f64], targets: &[u32], vocab: usize, ignore: u32) -> Vec<f64> {
    let (rows, n) = counted_rows(targets, |t| t != ignore && (t as usize) < vocab);
    let mut d = vec![0.0; logits.len()];
    for r in rows {
        let ls = log_softmax(row(logits, r, vocab), 1.0);
        for c in 0..vocab {
            let onehot = if c == targets[r] as usize { 1.0 } else { 0.0 };
            d[r * vocab + c] = (ls[c].exp() - onehot) / n;
        }
    }
    d
}

/// Mean over counted rows of KL(softmax(t/T) ‖ softmax(s/T)).
pub fn kl_div(
    teacher: &[f64],
    student: &[f64],
    targets: &[u32],
    vocab: usize,
    ignore: u32,
    temp: f64,
) -> f64 {
    let (rows, n) = counted_rows(targets, |t| t != ignore);
    let sum: f64 = rows
        .iter()
        .map(|&r| {
            let lt = log_softmax(row(teacher, r, vocab), 1.0 / temp);
            let ls = log_softmax(row(student, r, vocab), 1.0 / temp);
            (0..vocab)
                .map(|c| lt[c].exp() * (lt[c] - ls[c]))
                .sum::<f64>()
        })
        .sum();
    sum / n
}

pub fn kl_div_bwd(
    teacher: &[f64],
    student: &[f64],
    targets: &[u32],
    vocab: usize,
    ignore: u32,
    temp: f64,
) -> Vec<f64> {
    let (rows, n) = counted_rows(targets, |t| t != ignore);
    let mut d = vec![0.0; student.len()];
    for r in rows {
        let lt = log_softmax(row(teacher, r, vocab), 1.0 / temp);
        let ls = log_softmax(row(student, r, vocab), 1.0 / temp);
        for c in 0..vocab {
            d[r * vocab + c] = (ls[c].exp() - lt[c].exp()) / (temp * n);
        }
    }
    d
}

/// Global gradient norm and the clip factor (as torch.nn.utils.clip_grad_norm_).
pub fn clip_grad_norm(grads: &[&[f64]], max_norm: f64) -> (f64, f64) {
    let norm = grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|v| v * v)
        .sum::<f64>()
        .sqrt();
    (norm, f64::min(1.0, max_norm / (norm + 1e-6)))
}

/// One AdamW step at 1-based step t (as torch.optim.AdamW), updating param, m, v in place.
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    param: &mut [f64],
    grad: &[f64],
    m: &mut [f64],
    v: &mut [f64],
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    wd: f64,
    t: i32,
) {
    let (b1, b2) = betas;
    for i in 0..param.len() {
        m[i] = b1 * m[i] + (1.0 - b1) * grad[i];
        v[i] = b2 * v[i] + (1.0 - b2) * grad[i] * grad[i];
        param[i] *= 1.0 - lr * wd;
        let mh = m[i] / (1.0 - b1.powi(t));
        let vh = v[i] / (1.0 - b2.powi(t));
        param[i] -= lr * mh / (vh.sqrt() + eps);
    }
}

/// ViT's tokens: [CLS; patches] + positions, for patches [B, N, D] → [B, N + 1, D].
pub fn vit_tokens(
    patches: &[f64],
    cls: &[f64],
    pos: &[f64],
    b: usize,
    n: usize,
    d: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; b * (n + 1) * d];
    for bi in 0..b {
        for t in 0..=n {
            for c in 0..d {
                let v = if t == 0 {
                    cls[c]
                } else {
                    patches[(bi * n + t - 1) * d + c]
                };
                out[(bi * (n + 1) + t) * d + c] = v + pos[t * d + c];
            }
        }
    }
    out
}
