"""amad_torch: Attention Map Alignment Distillation in PyTorch, with the definitions of amad's
WGSL implementation (docs/method.md) and tested against it."""
from .losses import VARIANTS, AMADLoss, KDLoss, OneToOneLoss, amad_loss, kd_loss, one_to_one_loss

__all__ = ["VARIANTS", "AMADLoss", "KDLoss", "OneToOneLoss", "amad_loss", "kd_loss", "one_to_one_loss"]
