"""Masked penalty-reduced focal loss (docs/spec.md 3.3.1 and 4).

Per element, with P the probability (``P = sigmoid(x)`` when ``from_logits``):

    pos = Y >= pos_threshold
    f = -log(P + eps) (1 - P)^alpha                 on pos
    f = -log(1 - P + eps) P^alpha (1 - Y)^beta      elsewhere

and its analytic derivative, for probabilities

    df/dP = -(1 - P)^alpha / (P + eps) + alpha (1 - P)^(alpha - 1) log(P + eps)              on pos
    df/dP = (1 - Y)^beta [P^alpha / (1 - P + eps) - alpha P^(alpha - 1) log(1 - P + eps)]   elsewhere

and for logits (exact logs: log P = logsigmoid(x), log(1 - P) = logsigmoid(-x))

    df/dx = (1 - P)^alpha [alpha P log P - (1 - P)]                 on pos
    df/dx = (1 - Y)^beta P^alpha [P - alpha (1 - P) log(1 - P)]     elsewhere
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backend import (
    PrecomputedGradient,
    compute_dtype,
    needs_grad,
    resolve_backend,
)
from .validation import (
    check_choice,
    check_floating,
    check_number,
    check_real,
    check_same_device,
    check_tensor,
    shape_str,
)

NORMALIZE = ("weight", "num_pos", "sum", "mean")


def focal_terms(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    pos_threshold: float,
    from_logits: bool,
    eps: float,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Elementwise (f, df/dx or None, pos) of the focal loss; x, y of one shape, compute dtype."""
    pos = y >= pos_threshold
    neg_w = (1 - y) ** beta
    if from_logits:
        p = torch.sigmoid(x)
        log_p = F.logsigmoid(x)
        log_q = F.logsigmoid(-x)
    else:
        p = x
        log_p = torch.log(p + eps)
        log_q = torch.log(1 - p + eps)
    q = 1 - p
    q_a = q**alpha
    p_a = p**alpha
    f = torch.where(pos, -log_p * q_a, -log_q * p_a * neg_w)
    if not need_grad:
        return f, None, pos
    if from_logits:
        d_pos = q_a * (alpha * p * log_p - q)
        d_neg = neg_w * p_a * (p - alpha * q * log_q)
    else:
        d_pos = -q_a / (p + eps) + alpha * q ** (alpha - 1) * log_p
        d_neg = neg_w * (p_a / (q + eps) - alpha * p ** (alpha - 1) * log_q)
    return f, torch.where(pos, d_pos, d_neg), pos


def focal_normalizer(
    normalize: str, pos: torch.Tensor, weight: torch.Tensor | None, numel: int, eps: float
) -> torch.Tensor | float:
    """The denominator of each ``normalize`` mode (see ``masked_focal_loss``)."""
    if normalize == "weight":
        return (weight.sum() if weight is not None else float(numel)) + eps
    if normalize == "num_pos":
        n = (pos * weight).sum() if weight is not None else pos.sum().to(torch.float32)
        return torch.where(n > 0, n, torch.ones_like(n))
    if normalize == "mean":
        return float(numel)
    return 1.0


def masked_focal_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    alpha: float = 1.5,
    beta: float = 4.0,
    pos_threshold: float = 0.9,
    normalize: str = "weight",
    from_logits: bool = False,
    eps: float = 1e-7,
    backend: str = "auto",
) -> torch.Tensor:
    """sum(f * W) / D with f the focal term above; pred and target [B,1,H,W] (any equal shapes).

    weight broadcasts to pred (default 1). D by ``normalize``: "weight" sum(W) + eps; "num_pos"
    sum(pos * W) (the number of positives without W), or 1 when that is 0 (CenterNet); "sum" 1;
    "mean" numel(pred). Gradient flows into ``pred`` only. Returns a 0-dim float32 tensor
    (float64 for float64 pred).
    """
    check_tensor("pred", pred)
    check_floating("pred", pred)
    check_tensor("target", target)
    check_real("target", target)
    if target.shape != pred.shape:
        raise ValueError(
            f"target: expected shape {shape_str(pred)} (as pred), got {shape_str(target)}"
        )
    if weight is not None:
        check_tensor("weight", weight)
        check_real("weight", weight)
        try:
            ok = torch.broadcast_shapes(weight.shape, pred.shape) == pred.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"weight: expected a shape broadcastable to {shape_str(pred)}, got {shape_str(weight)}"
            )
    check_same_device({"pred": pred, "target": target, "weight": weight})
    check_choice("normalize", normalize, NORMALIZE)
    opts = dict(
        alpha=check_number("alpha", alpha, nonneg=True),
        beta=check_number("beta", beta, nonneg=True),
        pos_threshold=check_number("pos_threshold", pos_threshold),
        from_logits=bool(from_logits),
        eps=check_number("eps", eps, nonneg=True),
    )
    if resolve_backend(backend, pred.device) == "triton":
        from .triton_ops import masked_focal_loss_triton

        return masked_focal_loss_triton(pred, target, weight, normalize=normalize, **opts)

    (need,) = needs_grad(pred)

    def value_and_grad(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None):
        cdt = compute_dtype(x.dtype)
        xc, yc = x.to(cdt), y.to(cdt)
        wc = None if w is None else w.to(cdt)
        f, df, pos = focal_terms(xc, yc, **opts, need_grad=need)
        if wc is not None:
            f = f * wc
        denom = focal_normalizer(normalize, pos, wc, f.numel(), opts["eps"])
        loss = f.sum() / denom
        grad = None
        if df is not None:
            grad = (df * wc if wc is not None else df) / denom
        return loss, loss.new_zeros(0), (grad, None, None)

    loss, _ = PrecomputedGradient.apply(value_and_grad, pred, target, weight)
    return loss


class MaskedFocalLoss(torch.nn.Module):
    """Module form of :func:`masked_focal_loss`; ``forward(pred, target, weight=None)``."""

    def __init__(
        self,
        alpha: float = 1.5,
        beta: float = 4.0,
        pos_threshold: float = 0.9,
        normalize: str = "weight",
        from_logits: bool = False,
        eps: float = 1e-7,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_choice("normalize", normalize, NORMALIZE)
        self.opts = dict(
            alpha=alpha,
            beta=beta,
            pos_threshold=pos_threshold,
            normalize=normalize,
            from_logits=from_logits,
            eps=eps,
            backend=backend,
        )

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        return masked_focal_loss(pred, target, weight, **self.opts)
