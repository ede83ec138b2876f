"""The attention-distillation losses, as amad defines them (docs/method.md), in plain autograd.

Maps are post-softmax attention maps: teacher [B, Ht, q, k], student [B, Hs, q, k]. A mask
[B, q, k] is 1 for a cell that counts and 0 for the cells of padded query rows and padded keys,
which are left out of every sum. Each loss sums over teacher heads (and over query rows for the
token-level variant) and takes the mean over the batch.

Cells are masked by multiplying them by zero, which leaves the cosines, the L1 and L2 norms and the
KL terms exactly as if the cells were not there. A KL term is t·(log t − log m) only where t > 0
(0 log 0 = 0): there the gradient is −t/m, and elsewhere none, also where m = 0 (a causally masked
cell, or a padded one), which autograd through `xlogy` would turn into 0/0.
"""
import torch

VARIANTS = ("mse", "kl", "token-kl")


def _kl_terms(t, m):
    """Σ over the last two axes of t·(log t − log m), over the cells where t > 0."""
    pos = t > 0
    one = torch.ones_like(t)
    t_safe, m_safe = torch.where(pos, t, one), torch.where(pos, m, one)
    return torch.where(pos, t * (t_safe.log() - m_safe.log()), torch.zeros_like(t)).sum((-2, -1))


def _unit(x, p):
    """x scaled to unit Lp norm along its last axis; an all-zero vector stays zero."""
    norm = x.norm(p=p, dim=-1, keepdim=True) if p == 2 else x.sum(-1, keepdim=True)
    return x / norm.clamp_min(torch.finfo(x.dtype).tiny)


def _aligned(t, s, variant, tau, detach_weights):
    """One loss per segment: t [..., Ht, n] and s [..., Hs, n] are the segment's cells per head.
    Returns the loss summed over teacher heads [...] and the alignment weights [..., Ht, Hs]."""
    tn, sn = _unit(t, 2), _unit(s, 2)
    a = torch.softmax(tn @ sn.transpose(-1, -2) / tau, dim=-1)  # Eq. 2: over the student heads
    used = a.detach() if detach_weights else a
    if variant == "mse":  # Eqs. 4-6
        return ((tn - used @ sn) ** 2).sum((-2, -1)), a
    return _kl_terms(_unit(t, 1), used @ _unit(s, 1)), a  # Eq. 9


def _check(teacher_maps, student_maps, mask):
    if teacher_maps.dim() != 4 or student_maps.dim() != 4:
        raise ValueError(f"maps must be [B, H, q, k], got {tuple(teacher_maps.shape)} and {tuple(student_maps.shape)}")
    b, _, q, k = teacher_maps.shape
    if student_maps.shape[0] != b or student_maps.shape[2:] != (q, k):
        raise ValueError(f"teacher maps {tuple(teacher_maps.shape)} and student maps {tuple(student_maps.shape)} differ in B, q or k")
    if mask is None:
        return teacher_maps.new_ones(b, q, k)
    if tuple(mask.shape) != (b, q, k):
        raise ValueError(f"mask must be [B, q, k] = {(b, q, k)}, got {tuple(mask.shape)}")
    return mask.to(teacher_maps.dtype)


def amad_loss(teacher_maps, student_maps, mask=None, variant="kl", tau=1.0, detach_weights=False):
    """AMAD's attention loss: every teacher head teaches every student head, weighted by the
    softmax over student heads of their maps' cosines (temperature `tau`).

    variant: "mse" (L2-normalised maps, Eqs. 4-6), "kl" (L1-normalised maps, Eq. 9) or "token-kl"
    (the KL per query row, Eq. 12). `detach_weights` passes no gradient through the weights.
    Returns (loss, weights): the weights [B, Ht, Hs] without gradient, for "token-kl" the mean
    over each example's query rows that have a valid cell.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    mask = _check(teacher_maps, student_maps, mask)
    b = teacher_maps.shape[0]
    t, s = teacher_maps * mask[:, None], student_maps * mask[:, None]
    if variant in ("mse", "kl"):
        loss, a = _aligned(t.flatten(2), s.flatten(2), variant, tau, detach_weights)
        return loss.sum() / b, a.detach()
    # Each query row is a segment of its own: [B, q, H, k].
    loss, a = _aligned(t.transpose(1, 2), s.transpose(1, 2), "kl", tau, detach_weights)
    rows = (mask.sum(-1) > 0).to(t.dtype)  # [B, q]: rows with a valid cell
    weights = (a.detach() * rows[..., None, None]).sum(1) / rows.sum(1).clamp_min(1)[:, None, None]
    return (loss * rows).sum() / b, weights


def one_to_one_loss(teacher_maps, student_maps, mask=None, kind="kl"):
    """The one-to-one baseline: teacher head i teaches student head i for i < min(Ht, Hs).

    kind "kl": KL between corresponding attention rows over their valid keys, averaged over the
    valid rows (MiniLM); "mse": the squared difference averaged over the valid cells (TinyBERT).
    Summed over the heads, mean over the batch. Returns (loss, weights): the identity's first
    min(Ht, Hs) rows [B, Ht, Hs].
    """
    mask = _check(teacher_maps, student_maps, mask)
    b, ht = teacher_maps.shape[:2]
    hs = student_maps.shape[1]
    h = min(ht, hs)
    m = mask[:, None]
    t, s = teacher_maps[:, :h] * m, student_maps[:, :h] * m
    if kind == "kl":
        rows = (mask.sum(-1) > 0).to(t.dtype)  # [B, q]
        per_row = _kl_terms(t[..., None, :], s[..., None, :])  # [B, h, q]
        loss = (per_row * rows[:, None]).sum(-1) / rows.sum(-1, keepdim=True).clamp_min(1)
    elif kind == "mse":
        loss = ((t - s) ** 2).sum((-2, -1)) / mask.sum((-2, -1))[:, None].clamp_min(1)
    else:
        raise ValueError(f"unknown kind {kind!r}; choose kl or mse")
    weights = torch.zeros(b, ht, hs, dtype=teacher_maps.dtype, device=teacher_maps.device)
    weights[:, range(h), range(h)] = 1
    return loss.sum() / b, weights


def kd_loss(teacher_logits, student_logits, valid=None, temperature=2.0):
    """Output distillation: KL(softmax(z_t/T) ‖ softmax(z_s/T)) per position, averaged over the
    positions where `valid` (default: all). Logits [..., V]; `valid` [...] (bool). amad's
    distillation total weighs this by β·T², so that its gradient keeps its size as T changes.
    """
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} and student logits {tuple(student_logits.shape)} differ")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    lt = torch.log_softmax(teacher_logits / temperature, dim=-1)
    ls = torch.log_softmax(student_logits / temperature, dim=-1)
    per = (lt.exp() * (lt - ls)).sum(-1)
    if valid is None:
        return per.mean()
    valid = valid.to(per.dtype)
    return (per * valid).sum() / valid.sum().clamp_min(1)


class AMADLoss(torch.nn.Module):
    """`amad_loss` as a module: forward(teacher_maps, student_maps, mask=None) -> (loss, weights)."""

    def __init__(self, variant="kl", tau=1.0, detach_weights=False):
        super().__init__()
        self.variant, self.tau, self.detach_weights = variant, tau, detach_weights

    def forward(self, teacher_maps, student_maps, mask=None):
        return amad_loss(teacher_maps, student_maps, mask, self.variant, self.tau, self.detach_weights)


class OneToOneLoss(torch.nn.Module):
    """`one_to_one_loss` as a module: forward(teacher_maps, student_maps, mask=None) -> (loss, weights)."""

    def __init__(self, kind="kl"):
        super().__init__()
        self.kind = kind

    def forward(self, teacher_maps, student_maps, mask=None):
        return one_to_one_loss(teacher_maps, student_maps, mask, self.kind)


class KDLoss(torch.nn.Module):
    """`kd_loss` as a module: forward(teacher_logits, student_logits, valid=None) -> loss."""

    def __init__(self, temperature=2.0):
        super().__init__()
        self.temperature = temperature

    def forward(self, teacher_logits, student_logits, valid=None):
        return kd_loss(teacher_logits, student_logits, valid, self.temperature)
