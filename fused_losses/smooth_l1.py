"""Masked smooth-L1 regression loss (docs/spec.md 3.3.2 and 4).

s(b,i,j) = sum_c smoothL1(pred[b,c,i,j] - target[b,c,i,j])
smoothL1(d) = 0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta
L = sum(s * m) / (sum(m) + eps)          (m [B,1,H,W]: the denominator counts pixels)
dL/dpred = smoothL1'(d) m / (sum(m) + eps), smoothL1'(d) = d / beta if |d| < beta else sign(d)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backend import (
    BACKENDS,
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
    check_shape,
    check_tensor,
    shape_str,
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


def check_smooth_l1_options(*, beta: float, eps: float, backend: str) -> tuple[float, float, str]:
    """Validate the options of :func:`masked_smooth_l1_loss`: (beta, eps, backend)."""
    check_choice("backend", backend, BACKENDS)
    return check_number("beta", beta, nonneg=True), check_number("eps", eps, nonneg=True), backend


def masked_smooth_l1_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 1.0,
    eps: float = 1e-7,
    backend: str = "auto",
) -> torch.Tensor:
    """sum(m * sum_c smoothL1(pred - target)) / (sum(m) + eps).

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
    try:
        ok = torch.broadcast_shapes(target.shape, pred.shape) == pred.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"target: expected a shape broadcastable to {shape_str(pred)}, got {shape_str(target)}"
        )
    check_tensor("mask", mask)
    check_real("mask", mask)
    check_shape("mask", mask, [b, 1, h, w], f"[{b}, 1, {h}, {w}]")
    check_same_device({"pred": pred, "target": target, "mask": mask})
    beta, eps, backend = check_smooth_l1_options(beta=beta, eps=eps, backend=backend)
    if resolve_backend(backend, pred.device) == "triton":
        from .triton_ops import masked_smooth_l1_loss_triton

        return masked_smooth_l1_loss_triton(pred, target, mask, beta=beta, eps=eps)
    (need,) = needs_grad(pred)

    def value_and_grad(x: torch.Tensor, t: torch.Tensor, m: torch.Tensor):
        cdt = compute_dtype(x.dtype)
        mc = m.to(cdt)
        xc, tc = x.to(cdt), t.to(cdt)
        # The value through PyTorch's native smooth-L1 (one pass); channels summed before the
        # mask, as the mask is per pixel.
        s = F.smooth_l1_loss(xc, tc.expand_as(xc), reduction="none", beta=beta)
        denom = mc.sum() + eps
        loss = (s.sum(dim=1, keepdim=True) * mc).sum() / denom
        grad = None
        if need:  # smoothL1'(d) m / (sum(m) + eps), PyTorch's native derivative in one pass
            scale = (mc / denom).expand_as(xc)
            if beta > 0:
                grad = torch.ops.aten.smooth_l1_loss_backward(scale, xc, tc.expand_as(xc), 0, beta)
            else:  # the L1 loss
                grad = (xc - tc).sign_().mul_(scale)
        return loss, loss.new_zeros(0), (grad, None, None)

    loss, _ = PrecomputedGradient.apply(value_and_grad, pred, target, mask)
    return loss


class MaskedSmoothL1Loss(torch.nn.Module):
    """Module form of :func:`masked_smooth_l1_loss`; ``forward(pred, target, mask)``."""

    def __init__(self, beta: float = 1.0, eps: float = 1e-7, backend: str = "auto") -> None:
        super().__init__()
        self.beta, self.eps, self.backend = check_smooth_l1_options(
            beta=beta, eps=eps, backend=backend
        )

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_smooth_l1_loss(
            pred, target, mask, beta=self.beta, eps=self.eps, backend=self.backend
        )
