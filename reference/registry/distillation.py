"""Reference distillation losses of the registry (SPEC 10.4): the elementwise loss ``l`` of each
row, literal, in the dtype given (float64 in the tests), gradients by autograd.

``pred`` = student ``s``, ``target`` = teacher ``t`` (detached); P = softmax(s/T),
Q = softmax(t/T) over dim 1; KL(Q||P) = sum_c Q_c (log Q_c - log P_c) (torch ``kl_div(log P, Q)``,
whose terms with Q_c = 0 are 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["knowledge_distillation_loss"]


def knowledge_distillation_loss(
    s: torch.Tensor, t: torch.Tensor, *, temperature: float = 4.0
) -> torch.Tensor:
    """l = T^2 KL(Q||P) (Hinton); s, t [N,C,*] -> l [N,*] (the class axis summed). The registry's
    default reduction is "batchmean" (mmrazor: sum / N, also for dense maps)."""
    log_p = F.log_softmax(s / temperature, dim=1)
    q = F.softmax(t.detach() / temperature, dim=1)
    kl = F.kl_div(log_p, q, reduction="none").sum(dim=1)
    return temperature**2 * kl
