"""Masked cosine angle loss (docs/spec.md 3.3.3 and 4).

n = max(||(a0, a1)||, 1e-12)      (as F.normalize)
c = (a0 sin t + a1 cos t) / n
L = sum((1 - c) m) / (sum(m) + eps)
dc/da = (e - c a / n) / n with e = (sin t, cos t)   (= e / 1e-12 where ||a|| < 1e-12)

A pixel of m = 0 is not evaluated (spec 3.3.3): its prediction is replaced by (0, 1) and its
gradient is selected to 0, so whatever the prediction holds there (NaN, inf) it adds exactly 0 to
the value and to the gradient; a non-finite target angle still makes the loss NaN.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .backend import (
    PrecomputedGradient,
    compute_dtype,
    needs_grad,
    resolve_backend,
)
from .distributed import active_group, denominator_sync, finish
from .options import LossModule, LossOptions
from .validation import (
    check_floating,
    check_number,
    check_real,
    check_same_device,
    check_shape,
    check_tensor,
)

NORM_EPS = 1e-12  # F.normalize's default


def cosine_terms(
    a: torch.Tensor, sin_t: torch.Tensor, cos_t: torch.Tensor, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(1 - c [B,1,H,W], d(1 - c)/da [B,2,H,W] or None) for a [B,2,H,W], sin_t/cos_t [B,1,1,1]."""
    a0, a1 = a[:, 0:1], a[:, 1:2]
    norm = torch.hypot(a0, a1)  # no overflow of a0^2 for a head at any scale
    n = norm.clamp_min(NORM_EPS)
    c = (a0 * sin_t + a1 * cos_t) / n
    if not need_grad:
        return 1 - c, None
    small = norm < NORM_EPS
    g0 = torch.where(small, sin_t / n, (sin_t - c * a0 / n) / n)
    g1 = torch.where(small, cos_t / n, (cos_t - c * a1 / n) / n)
    return 1 - c, -torch.cat([g0, g1], dim=1)


@dataclasses.dataclass(frozen=True)
class CosineOptions(LossOptions):
    """Options of :func:`masked_cosine_loss`: ``eps`` of the denominator and the ``backend``."""

    eps: float = 1e-7

    def validate(self) -> None:
        self._set("eps", check_number("eps", self.eps, nonneg=True))


def masked_cosine_loss(
    pred: torch.Tensor,
    target_angle: torch.Tensor,
    mask: torch.Tensor,
    *,
    options: CosineOptions | None = None,
    **overrides: Any,
) -> torch.Tensor:
    """sum((1 - cos(angle(pred) - t)) m) / (sum(m) + eps).

    Options (:class:`CosineOptions`, as keywords or ``options=``): ``eps=1e-7, backend="auto",
    reduce_across_ranks=False, process_group=None`` (the last two: docs/spec.md 9).

    pred [B,2,H,W] holds (sin, cos) at any non-zero scale (normalised inside); target_angle [B]
    radians; mask [B,1,H,W]. Gradient flows into ``pred``. Returns a 0-dim float32 tensor (float64
    for float64 pred).
    """
    check_tensor("pred", pred)
    check_floating("pred", pred)
    check_shape("pred", pred, [None, 2, None, None], "[B, 2, H, W]")
    b, _, h, w = pred.shape
    check_tensor("target_angle", target_angle)
    check_real("target_angle", target_angle)
    check_shape("target_angle", target_angle, [b], f"[{b}]")
    check_tensor("mask", mask)
    check_real("mask", mask)
    check_shape("mask", mask, [b, 1, h, w], f"[{b}, 1, {h}, {w}]")
    check_same_device({"pred": pred, "target_angle": target_angle, "mask": mask})
    opts = CosineOptions.build(options, overrides)
    group = active_group(opts)
    return finish(cosine_share(pred, target_angle, mask, opts, group), group)


def cosine_share(
    pred: torch.Tensor,
    target_angle: torch.Tensor,
    mask: torch.Tensor,
    opts: CosineOptions,
    group: Any,
) -> torch.Tensor:
    """This rank's share of :func:`masked_cosine_loss` (inputs checked): its numerator over the
    denominator summed over ``group`` (the whole loss when ``group`` is None)."""
    sync = denominator_sync(group)
    if resolve_backend(opts.backend, pred.device) == "triton":
        from .triton_gap import masked_cosine_loss_triton

        return masked_cosine_loss_triton(pred, target_angle, mask, opts, sync)
    eps = opts.eps
    (need,) = needs_grad(pred)

    def value_and_grad(a: torch.Tensor, t: torch.Tensor, m: torch.Tensor):
        cdt = compute_dtype(a.dtype)
        tc = t.to(cdt).view(-1, 1, 1, 1)
        mc = m.to(cdt)
        live = mc != 0  # [B,1,H,W]: the pixels evaluated (spec 3.3.3)
        unit = torch.arange(2, dtype=cdt, device=a.device).view(1, 2, 1, 1)  # (0, 1)
        ac = torch.where(live, a.to(cdt), unit)  # an unsupervised prediction is not read
        one_minus_c, grad = cosine_terms(ac, torch.sin(tc), torch.cos(tc), need)
        msum = mc.sum()
        denom = (sync(msum) if sync is not None else msum) + eps
        loss = (one_minus_c * mc).sum() / denom
        if grad is not None:  # exactly 0 where m = 0 (not 0 * inf with eps = 0)
            grad = torch.where(live, grad * (mc / denom), 0.0)
        return loss, loss.new_zeros(0), (grad, None, None)

    loss, _ = PrecomputedGradient.apply(
        "masked_cosine_loss", value_and_grad, pred, target_angle, mask
    )
    return loss


class MaskedCosineLoss(LossModule):
    """Module form of :func:`masked_cosine_loss`: ``MaskedCosineLoss(**options)`` (the fields of
    :class:`CosineOptions`), ``forward(pred, target_angle, mask)``."""

    Options = CosineOptions

    def forward(
        self, pred: torch.Tensor, target_angle: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        return masked_cosine_loss(pred, target_angle, mask, options=self.options)
