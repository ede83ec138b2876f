//! CPU reference of the attention-distillation losses (docs/method.md), written straight from the
//! spec in f64. Its gradients are central finite differences of these functions (tests).

/// Which loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// AMAD variant 1: MSE between L2-normalised maps (Eqs. 4–6).
    Mse,
    /// AMAD variant 2: KL from L1-normalised teacher to the weighted student mixture (Eq. 9).
    Kl,
    /// AMAD variant 3: variant 2 per query row (Eq. 12).
    TokenKl,
    /// Teacher head i teaches student head i: KL per row, averaged over rows (MiniLM).
    OneToOneKl,
    /// Teacher head i teaches student head i: MSE over the map's cells (TinyBERT).
    OneToOneMse,
}

/// Maps [B, H, q, k] flattened; mask [B, q, k] of 0/1 (valid cells) or none.
pub struct Maps<'a> {
    pub teacher: &'a [f64],
    pub student: &'a [f64],
    /// Student maps the alignment weights are computed from, when they differ from `student`:
    /// detached weights are constants, so their gradient check holds them at the unperturbed maps.
    pub weights_from: Option<&'a [f64]>,
    pub mask: Option<&'a [f64]>,
    pub batch: usize,
    pub ht: usize,
    pub hs: usize,
    pub q: usize,
    pub k: usize,
}

/// The loss (summed over teacher heads, mean over the batch) and the alignment weights a_ij per
/// example [B, Ht, Hs] (for the token-level variant, averaged over the valid rows; for
/// one-to-one, 1 on the paired heads).
pub fn loss(m: &Maps, variant: Variant, tau: f64) -> (f64, Vec<f64>) {
    let (qk, mut total) = (m.q * m.k, 0.0);
    let mut weights = vec![0.0; m.batch * m.ht * m.hs];
    for b in 0..m.batch {
        let valid = |cell: usize| m.mask.is_none_or(|mk| mk[b * qk + cell] != 0.0);
        let t = |i: usize, cell: usize| m.teacher[(b * m.ht + i) * qk + cell];
        let s = |j: usize, cell: usize| m.student[(b * m.hs + j) * qk + cell];
        let sw =
            |j: usize, cell: usize| m.weights_from.unwrap_or(m.student)[(b * m.hs + j) * qk + cell];
        let wb = &mut weights[b * m.ht * m.hs..(b + 1) * m.ht * m.hs];
        match variant {
            Variant::Mse | Variant::Kl => {
                let cells: Vec<usize> = (0..qk).filter(|&c| valid(c)).collect();
                total += segment(
                    &cells,
                    &t,
                    &s,
                    &sw,
                    m.ht,
                    m.hs,
                    variant == Variant::Mse,
                    tau,
                    wb,
                    1.0,
                );
            }
            Variant::TokenKl => {
                let rows: Vec<Vec<usize>> = (0..m.q)
                    .map(|l| (l * m.k..(l + 1) * m.k).filter(|&c| valid(c)).collect())
                    .filter(|r: &Vec<usize>| !r.is_empty())
                    .collect();
                let share = 1.0 / rows.len().max(1) as f64;
                for cells in &rows {
                    total += segment(cells, &t, &s, &sw, m.ht, m.hs, false, tau, wb, share);
                }
            }
            Variant::OneToOneKl => {
                let rows: Vec<Vec<usize>> = (0..m.q)
                    .map(|l| (l * m.k..(l + 1) * m.k).filter(|&c| valid(c)).collect())
                    .filter(|r: &Vec<usize>| !r.is_empty())
                    .collect();
                for i in 0..m.ht.min(m.hs) {
                    let kl: f64 = rows
                        .iter()
                        .map(|cells| {
                            cells
                                .iter()
                                .map(|&c| xlogy(t(i, c), t(i, c)) - xlogy(t(i, c), s(i, c)))
                                .sum::<f64>()
                        })
                        .sum();
                    total += kl / rows.len().max(1) as f64;
                    wb[i * m.hs + i] = 1.0;
                }
            }
            Variant::OneToOneMse => {
                let cells: Vec<usize> = (0..qk).filter(|&c| valid(c)).collect();
                for i in 0..m.ht.min(m.hs) {
                    let se: f64 = cells.iter().map(|&c| (t(i, c) - s(i, c)).powi(2)).sum();
                    total += se / cells.len().max(1) as f64;
                    wb[i * m.hs + i] = 1.0;
                }
            }
        }
    }
    (total / m.batch as f64, weights)
}

/// x log y with 0 log y = 0 (a cell the teacher gives no mass costs nothing).
fn xlogy(x: f64, y: f64) -> f64 {
    if x == 0.0 {
        0.0
    } else {
        x * y.ln()
    }
}

/// The AMAD loss of one segment (a whole map, or one query row), summed over teacher heads;
/// adds share·a_ij into `weights`.
#[allow(clippy::too_many_arguments)]
fn segment(
    cells: &[usize],
    t: &dyn Fn(usize, usize) -> f64,
    s: &dyn Fn(usize, usize) -> f64,
    sw: &dyn Fn(usize, usize) -> f64,
    ht: usize,
    hs: usize,
    mse: bool,
    tau: f64,
    weights: &mut [f64],
    share: f64,
) -> f64 {
    let l2 = |f: &dyn Fn(usize) -> f64| cells.iter().map(|&c| f(c) * f(c)).sum::<f64>().sqrt();
    let l1 = |f: &dyn Fn(usize) -> f64| cells.iter().map(|&c| f(c)).sum::<f64>();
    let nt: Vec<f64> = (0..ht).map(|i| l2(&|c| t(i, c))).collect();
    let ns: Vec<f64> = (0..hs).map(|j| l2(&|c| s(j, c))).collect();
    let nsw: Vec<f64> = (0..hs).map(|j| l2(&|c| sw(j, c))).collect();
    let mut loss = 0.0;
    for i in 0..ht {
        if nt[i] == 0.0 {
            continue;
        }
        // Eq. 2: cosine similarity, then a softmax over student heads.
        let w: Vec<f64> = (0..hs)
            .map(|j| cells.iter().map(|&c| t(i, c) * sw(j, c)).sum::<f64>() / (nt[i] * nsw[j]))
            .collect();
        let mx = w.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = w.iter().map(|x| ((x - mx) / tau).exp()).collect();
        let z: f64 = e.iter().sum();
        let a: Vec<f64> = e.iter().map(|x| x / z).collect();
        for j in 0..hs {
            weights[i * hs + j] += share * a[j];
        }
        if mse {
            // Eqs. 4–6: ‖t̂_i − Σ_j a_ij ŝ_j‖².
            loss += cells
                .iter()
                .map(|&c| {
                    (t(i, c) / nt[i] - (0..hs).map(|j| a[j] * s(j, c) / ns[j]).sum::<f64>()).powi(2)
                })
                .sum::<f64>();
        } else {
            // Eq. 9: KL(t̃_i ‖ Σ_j a_ij s̃_j) with L1-normalised maps.
            let lt = l1(&|c| t(i, c));
            let ls: Vec<f64> = (0..hs).map(|j| l1(&|c| s(j, c))).collect();
            loss += cells
                .iter()
                .map(|&c| {
                    let tt = t(i, c) / lt;
                    let m: f64 = (0..hs).map(|j| a[j] * s(j, c) / ls[j]).sum();
                    xlogy(tt, tt) - xlogy(tt, m)
                })
                .sum::<f64>();
        }
    }
    loss
}
