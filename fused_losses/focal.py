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

An element of W = 0 is not evaluated (spec 3.3.1): its prediction is replaced by 0.5 and its
gradient is selected to 0, so whatever the prediction holds there (NaN, inf) it adds exactly 0 to
the value and to the gradient; its target still enters f (times W = 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .backend import (
    PrecomputedGradient,
    compute_dtype,
    needs_grad,
    resolve_backend,
)
from .distributed import active_group, denominator_sync, finish
from .options import LossModule, LossOptions
from .validation import (
    check_bool,
    check_broadcastable,
    check_choice,
    check_exponent,
    check_floating,
    check_number,
    check_real,
    check_same_device,
    check_tensor,
    shape_str,
)

NORMALIZE = ("weight", "num_pos", "sum", "mean")


def _pow_pair(base: torch.Tensor, a: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(base^a, d(base^a)/dbase = a base^(a - 1)) with one pow when a >= 1; the derivative is 0 for
    a = 0 (as torch's pow backward: no 0 * inf at base = 0)."""
    if a == 0:
        return torch.ones_like(base), torch.zeros_like(base)
    if a >= 1:
        lower = base ** (a - 1)
        return lower * base, a * lower
    return base**a, a * base ** (a - 1)


def log_prob(p: torch.Tensor, eps: float) -> torch.Tensor:
    """log(p + eps), accurate near p = 1 too: log1p((p - 1) + eps) for p >= 1/2, where p - 1 is
    exact (each branch sees a safe input, so that autograd through the other stays finite)."""
    hi = p >= 0.5
    near_one = torch.log1p(torch.where(hi, p - 1, 0.0) + eps)
    return torch.where(hi, near_one, torch.log(torch.where(hi, 0.5, p) + eps))


def log_one_minus_prob(p: torch.Tensor, eps: float) -> torch.Tensor:
    """log(1 - p + eps), accurate near p = 0 too: log1p(eps - p) for p <= 1/2 (a float32
    1 - p + eps would round p's digits away), log((1 - p) + eps) above, where 1 - p is exact."""
    hi = p > 0.5
    near_zero = torch.log1p(eps - torch.where(hi, 0.0, p))
    return torch.where(hi, torch.log((1 - torch.where(hi, p, 0.0)) + eps), near_zero)


def focal_neg_terms(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    alpha: float,
    beta: float,
    from_logits: bool,
    eps: float,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Elementwise (f, df/dx or None) of the negative branch, -log(1 - P) P^alpha (1 - Y)^beta."""
    if from_logits:
        p, log_q = torch.sigmoid(x), F.logsigmoid(-x)
    else:
        p, log_q = x, log_one_minus_prob(x, eps)
    neg_w = (1 - y) ** beta
    if not need_grad:
        return -log_q * p**alpha * neg_w, None
    p_a, dp_a = _pow_pair(p, alpha)
    f = -log_q * p_a * neg_w
    if from_logits:
        return f, neg_w * p_a * (p - alpha * (1 - p) * log_q)
    return f, neg_w * (p_a / (1 - p + eps) - dp_a * log_q)


def focal_pos_terms(
    x: torch.Tensor, *, alpha: float, from_logits: bool, eps: float, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Elementwise (f, df/dx or None) of the positive branch, -log(P) (1 - P)^alpha."""
    if from_logits:  # 1 - P as sigmoid(-x): no cancellation for large x
        p, q, log_p = torch.sigmoid(x), torch.sigmoid(-x), F.logsigmoid(x)
    else:
        p, log_p = x, log_prob(x, eps)
        q = 1 - p
    q_a, dq_a = _pow_pair(q, alpha)
    f = -log_p * q_a
    if not need_grad:
        return f, None
    if from_logits:
        return f, q_a * (alpha * p * log_p - q)
    return f, -q_a / (p + eps) + dq_a * log_p


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
    common = dict(alpha=alpha, from_logits=from_logits, eps=eps, need_grad=need_grad)
    f_neg, d_neg = focal_neg_terms(x, y, beta=beta, **common)
    f_pos, d_pos = focal_pos_terms(x, **common)
    f = torch.where(pos, f_pos, f_neg)
    return f, (None if d_neg is None else torch.where(pos, d_pos, d_neg)), pos


def focal_normalizer(
    normalize: str,
    pos: torch.Tensor,
    weight: torch.Tensor | None,
    numel: int,
    eps: float,
    sync: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor | float:
    """The denominator of each ``normalize`` mode (see ``masked_focal_loss``); ``sync`` (data
    parallel, ``fused_losses.distributed``) sums the raw count over the ranks first."""
    if normalize == "sum":
        return 1.0
    if sync is None:
        if normalize == "weight":
            return (weight.sum() if weight is not None else float(numel)) + eps
        if normalize == "num_pos":
            n = (pos * weight).sum() if weight is not None else pos.sum().to(torch.float32)
            return torch.where(n > 0, n, torch.ones_like(n))
        return float(max(numel, 1))  # "mean"; an empty batch: 0, like "sum"
    cdt = weight.dtype if weight is not None else torch.float64
    if normalize == "weight" and weight is not None:
        raw = weight.sum()
    elif normalize == "num_pos":
        raw = (pos * weight).sum() if weight is not None else pos.sum().to(cdt)
    else:  # "weight" without a weight, "mean": the element count
        raw = pos.new_full((), numel, dtype=cdt)
    raw = sync(raw)
    if normalize == "weight":
        return raw + eps
    if normalize == "num_pos":
        return torch.where(raw > 0, raw, torch.ones_like(raw))
    return raw.clamp_min(1)


@dataclasses.dataclass(frozen=True)
class FocalOptions(LossOptions):
    """Options of :func:`masked_focal_loss`: the focusing exponents ``alpha`` and ``beta``, the
    positive threshold on the target, the ``normalize`` mode, ``from_logits``, ``eps`` inside the
    logs and the ``backend``."""

    alpha: float = 1.5
    beta: float = 4.0
    pos_threshold: float = 0.9
    normalize: str = "weight"
    from_logits: bool = False
    eps: float = 1e-7

    def validate(self) -> None:
        check_choice("normalize", self.normalize, NORMALIZE)
        check_bool("from_logits", self.from_logits)
        for name in ("alpha", "beta"):
            self._set(name, check_exponent(name, getattr(self, name)))
        self._set("eps", check_number("eps", self.eps, nonneg=True))
        self._set("pos_threshold", check_number("pos_threshold", self.pos_threshold))


def masked_focal_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    options: FocalOptions | None = None,
    **overrides: Any,
) -> torch.Tensor:
    """sum(f * W) / D with f the focal term above; pred and target [B,1,H,W] (any equal shapes).

    Options (:class:`FocalOptions`, as keywords or ``options=``): ``alpha=1.5, beta=4.0,
    pos_threshold=0.9, normalize="weight", from_logits=False, eps=1e-7, backend="auto",
    reduce_across_ranks=False, process_group=None`` (the last two: docs/spec.md 9).

    weight broadcasts to pred (default 1). D by ``normalize``: "weight" sum(W) + eps; "num_pos"
    sum(pos * W) (the number of positives without W), or 1 when that is 0 (CenterNet); "sum" 1;
    "mean" max(numel(pred), 1). Gradient flows into ``pred`` only. Returns a 0-dim float32 tensor
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
        check_broadcastable("weight", weight, pred)
    check_same_device({"pred": pred, "target": target, "weight": weight})
    opts = FocalOptions.build(options, overrides)
    group = active_group(opts)
    return finish(focal_share(pred, target, weight, opts, group), group)


def focal_share(
    pred: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    opts: FocalOptions,
    group: Any | None,
) -> torch.Tensor:
    """This rank's share of :func:`masked_focal_loss` (inputs checked): its numerator over the
    denominator summed over ``group`` (the whole loss when ``group`` is None)."""
    sync = denominator_sync(group)
    if resolve_backend(opts.backend, pred.device) == "triton":
        from .triton_gap import masked_focal_loss_triton

        return masked_focal_loss_triton(pred, target, weight, opts, sync)
    normalize = opts.normalize
    terms = dict(alpha=opts.alpha, beta=opts.beta, pos_threshold=opts.pos_threshold)
    terms.update(from_logits=opts.from_logits, eps=opts.eps)

    (need,) = needs_grad(pred)

    def value_and_grad(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None):
        cdt = compute_dtype(x.dtype)
        xc, yc = x.to(cdt), y.to(cdt)
        wc = None if w is None else w.to(cdt).expand_as(xc)
        if wc is not None:  # an element of W = 0 is not evaluated: its prediction is not read
            xc = torch.where(wc != 0, xc, 0.5)
        f, df, pos = focal_terms(xc, yc, **terms, need_grad=need)
        if wc is not None:
            f = f * wc
        denom = focal_normalizer(normalize, pos, wc, f.numel(), opts.eps, sync)
        if isinstance(denom, torch.Tensor):
            denom = denom.to(cdt)
        loss = f.sum() / denom
        grad = None
        if df is not None:
            grad = (df * wc if wc is not None else df) / denom
            if wc is not None:  # exactly 0 where W = 0 (not 0 * inf with eps = 0)
                grad = torch.where(wc != 0, grad, 0.0)
        return loss, loss.new_zeros(0), (grad, None, None)

    loss, _ = PrecomputedGradient.apply(value_and_grad, pred, target, weight)
    return loss


class MaskedFocalLoss(LossModule):
    """Module form of :func:`masked_focal_loss`: ``MaskedFocalLoss(**options)`` (the fields of
    :class:`FocalOptions`), ``forward(pred, target, weight=None)``."""

    Options = FocalOptions

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        return masked_focal_loss(pred, target, weight, options=self.options)
