"""Masked smooth-L1 regression loss (docs/spec.md 3.3.2 and 4).

s(b,i,j) = sum_c smoothL1(pred[b,c,i,j] - target[b,c,i,j])
smoothL1(d) = 0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta
L = sum(s * m) / (sum(m) + eps)          (m [B,1,H,W]: the denominator counts pixels)
dL/dpred = smoothL1'(d) m / (sum(m) + eps), smoothL1'(d) = d / beta if |d| < beta else sign(d)

A pixel of m = 0 is not evaluated (spec 3.3.2): its prediction is replaced by the target (d = 0)
and its gradient is selected to 0, so whatever the prediction holds there (NaN, inf) it adds
exactly 0 to the value and to the gradient; a non-finite target there still makes the loss NaN.
"""

from __future__ import annotations

import dataclasses
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
    check_broadcastable,
    check_floating,
    check_number,
    check_real,
    check_same_device,
    check_shape,
    check_tensor,
)


def smooth_l1_terms(
    d: torch.Tensor, beta: float, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Elementwise (smoothL1(d), smoothL1'(d) or None) through c = clamp(d, -beta, beta):
    smoothL1(d) = c (d - c / 2) / beta and smoothL1'(d) = c / beta (the linear branch, sign(d), at
    |d| = beta); beta = 0 is the L1 loss."""
    if beta <= 0:
        return d.abs(), (torch.sign(d) if need_grad else None)
    c = d.clamp(-beta, beta)
    s = c * (d - 0.5 * c) / beta
    return s, (c / beta if need_grad else None)


@dataclasses.dataclass(frozen=True)
class SmoothL1Options(LossOptions):
    """Options of :func:`masked_smooth_l1_loss`: the quadratic zone ``beta`` (0: the L1 loss),
    ``eps`` of the denominator and the ``backend``."""

    beta: float = 1.0
    eps: float = 1e-7

    def validate(self) -> None:
        for name in ("beta", "eps"):
            self._set(name, check_number(name, getattr(self, name), nonneg=True))


def masked_smooth_l1_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    options: SmoothL1Options | None = None,
    **overrides: Any,
) -> torch.Tensor:
    """sum(m * sum_c smoothL1(pred - target)) / (sum(m) + eps).

    Options (:class:`SmoothL1Options`, as keywords or ``options=``): ``beta=1.0, eps=1e-7,
    backend="auto", reduce_across_ranks=False, process_group=None`` (the last two: docs/spec.md 9).

    pred [B,C,H,W]; target broadcastable to pred (e.g. [B,C,1,1] for one value per image); mask
    [B,1,H,W] (any real dtype). Gradient flows into ``pred``. Returns a 0-dim float32 tensor
    (float64 for float64 pred).
    """
    check_tensor("pred", pred)
    check_floating("pred", pred)
    check_shape("pred", pred, [None, None, None, None], "[B, C, H, W]")
    b, _, h, w = pred.shape
    check_tensor("target", target)
    check_real("target", target)
    check_broadcastable("target", target, pred)
    check_tensor("mask", mask)
    check_real("mask", mask)
    check_shape("mask", mask, [b, 1, h, w], f"[{b}, 1, {h}, {w}]")
    check_same_device({"pred": pred, "target": target, "mask": mask})
    opts = SmoothL1Options.build(options, overrides)
    group = active_group(opts)
    return finish(smooth_l1_share(pred, target, mask, opts, group), group)


def smooth_l1_share(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, opts: SmoothL1Options, group: Any
) -> torch.Tensor:
    """This rank's share of :func:`masked_smooth_l1_loss` (inputs checked): its numerator over the
    denominator summed over ``group`` (the whole loss when ``group`` is None)."""
    sync = denominator_sync(group)
    if resolve_backend(opts.backend, pred.device) == "triton":
        from .triton_gap import masked_smooth_l1_loss_triton

        return masked_smooth_l1_loss_triton(pred, target, mask, opts, sync)
    beta, eps = opts.beta, opts.eps
    (need,) = needs_grad(pred)

    def value_and_grad(x: torch.Tensor, t: torch.Tensor, m: torch.Tensor):
        cdt = compute_dtype(x.dtype)
        mc = m.to(cdt)
        live = mc != 0  # [B,1,H,W]: the pixels evaluated (spec 3.3.2)
        tc = t.to(cdt)
        xc = torch.where(live, x.to(cdt), tc)  # an unsupervised prediction is not read: d = 0
        # The value through PyTorch's native smooth-L1 (one pass); channels summed before the
        # mask, as the mask is per pixel.
        s = F.smooth_l1_loss(xc, tc.expand_as(xc), reduction="none", beta=beta)
        msum = mc.sum()
        denom = (sync(msum) if sync is not None else msum) + eps
        loss = (s.sum(dim=1, keepdim=True) * mc).sum() / denom
        grad = None
        if need:  # smoothL1'(d) m / (sum(m) + eps), PyTorch's native derivative in one pass
            scale = (mc / denom).expand_as(xc)
            if torch.tensor(beta, dtype=cdt).item() > 0:  # (a Python float: no device sync)
                grad = torch.ops.aten.smooth_l1_loss_backward(scale, xc, tc.expand_as(xc), 0, beta)
            else:  # the L1 loss
                grad = (xc - tc).sign_().mul_(scale)
            grad = torch.where(live, grad, 0.0)  # exactly 0 (not 0 * inf with eps = 0)
        return loss, loss.new_zeros(0), (grad, None, None)

    loss, _ = PrecomputedGradient.apply("masked_smooth_l1_loss", value_and_grad, pred, target, mask)
    return loss


class MaskedSmoothL1Loss(LossModule):
    """Module form of :func:`masked_smooth_l1_loss`: ``MaskedSmoothL1Loss(**options)`` (the fields
    of :class:`SmoothL1Options`), ``forward(pred, target, mask)``."""

    Options = SmoothL1Options

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_smooth_l1_loss(pred, target, mask, options=self.options)
