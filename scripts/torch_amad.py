"""The AMAD-KL attention loss in PyTorch, as the benchmark scripts time it beside amad (the same
map-level loss as amad's `amad-kl`; docs/method.md)."""
import torch


def amad_kl(t, s, mask=None):
    """Map-level AMAD-KL, [B,H,q,k] maps, mask [B,q,k]: summed over teacher heads, mean over batch."""
    if mask is not None:
        t, s = t * mask[:, None], s * mask[:, None]
    t, s = t.flatten(2), s.flatten(2)
    w = torch.nn.functional.normalize(t, dim=2) @ torch.nn.functional.normalize(s, dim=2).transpose(1, 2)
    a = torch.softmax(w, dim=2)
    tt = t / t.sum(2, keepdim=True)
    m = a @ (s / s.sum(2, keepdim=True))
    return (torch.xlogy(tt, tt) - torch.xlogy(tt, m)).sum((1, 2)).mean()
