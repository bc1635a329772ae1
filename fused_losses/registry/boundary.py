"""The boundary F1 loss of the registry (SPEC 10.3, note S3): Bokhovkin & Burnaev's boundary loss
for remote sensing segmentation (yiskw713/boundary_loss_for_remote_sensing), in plain PyTorch with
max pooling (stride 1, same padding, padded with -inf), gradients by autograd:

    p = softmax(x) over dim 1, t = one-hot(y) (t_c = 1 for every c at ignored pixels)
    b(m)  = maxpool_theta0(1 - m) - (1 - m)         boundary map, m = p or t
    (p_c = 1 for every c at ignored pixels as well, logits replaced by 0 there)
    b_t, b_p = 0 at ignored pixels, then b+(m) = maxpool_theta(b(m))   extended boundary map
    P_nc  = sum_v b_p b+_t / (sum_v b_p + 1e-7)       precision
    R_nc  = sum_v b+_p b_t / (sum_v b_t + 1e-7)       recall
    l_n   = mean_c (1 - 2 P_nc R_nc / (P_nc + R_nc + 1e-7))

over the valid pixels v of image n (``sum_v``). x [N,C,H,W], y [N,H,W] -> l [N].

The ignore rule keeps void regions from creating boundaries: a pixel of class c next to an
ignored one is not on c's boundary (1 - t = 0 at both), and ignored pixels are neither boundary
nor counted. The prediction is treated alike (p = 1 for every class at an ignored pixel in the
first pool, b_p = 0 there before the second), and an ignored pixel's logits are replaced by 0
before the softmax: its input takes no part in the value, and a NaN/inf there adds exactly 0 to
the value and the gradient (docs/spec.md 12.2 rule 1; yiskw713 has no ignore rule, and pooling
the void's predictions would let them create or extend boundaries). An image of weight 0 has its
logits replaced by 0 before the formula. A class with no
ground-truth boundary in an image (absent, or filling it) has R = 0, so 1 - BF1 = 1 with a zero
gradient (yiskw713); an image with no valid pixel gives 1 for the same reason (an empty map,
H = 0 or W = 0, included). Labels other than ``ignore_index`` outside [0, C) are valid pixels of
no class. float16/bfloat16 inputs are computed in float32.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backend import compute_dtype
from ..validation import check_positive_int, shape_str
from .base_loss import BaseLoss
from .builder import LOSSES
from .classification import check_ignore_index
from .dense import check_index_target, check_logits
from .segmentation import mask_zero_weight_images

__all__ = ["BoundaryLoss", "boundary_f1_loss"]

EPS = 1e-7  # yiskw713's


def _pool(m: Tensor, k: int) -> Tensor:
    return F.max_pool2d(m, kernel_size=k, stride=1, padding=(k - 1) // 2)


def boundary_f1_loss(
    x: Tensor, y: Tensor, *, theta0: int = 3, theta: int = 5, ignore_index: int | None = 255
) -> Tensor:
    """l [N] of logits x [N,C,H,W] and labels y [N,H,W] (checked by the caller; module
    docstring)."""
    c = x.shape[1]
    dt = compute_dtype(x.dtype)
    if x.shape[2] == 0 or x.shape[3] == 0:
        # an empty map (max pooling refuses it): every sum is empty, P = R = 0, so each image
        # gives 1 - BF1 = 1 (an image with no valid pixel), with a zero gradient
        return x.to(dt).sum((1, 2, 3)) * 0 + 1
    if ignore_index is None:
        valid = torch.ones_like(y, dtype=torch.bool)
    else:
        valid = y != ignore_index
    keep = valid[:, None]  # [N,1,H,W]
    zero = torch.zeros((), dtype=dt, device=x.device)
    # an ignored pixel's logits are replaced by 0 (a NaN/inf there reaches nothing)
    p = torch.softmax(torch.where(keep, x.to(dt), zero), dim=1)
    v = keep.to(dt)
    cls = torch.arange(c, device=x.device).view(1, c, 1, 1)
    not_t = ((y[:, None] != cls) & keep).to(dt)  # 1 - t, with t = 1 at ignored pixels
    b_t = (_pool(not_t, theta0) - not_t) * v
    bx_t = _pool(b_t, theta)
    not_p = torch.where(keep, 1 - p, zero)  # 1 - p, with p = 1 at ignored pixels (as t)
    b_p = torch.where(keep, _pool(not_p, theta0) - not_p, zero)  # b_p = 0 there (as b_t)
    bx_p = _pool(b_p, theta)
    prec = (b_p * bx_t).sum((2, 3)) / (b_p.sum((2, 3)) + EPS)
    rec = (bx_p * b_t).sum((2, 3)) / (b_t.sum((2, 3)) + EPS)
    bf1 = 2 * prec * rec / (prec + rec + EPS)
    return (1 - bf1).mean(1)


def check_odd_kernel(name: str, value: Any) -> int:
    """An odd positive int (a same-padded, stride-1 pooling window)."""
    check_positive_int(name, value)
    if value % 2 == 0:
        raise ValueError(f"{name}: expected an odd positive int, got {value!r}")
    return value


@LOSSES.register_module(name=["BoundaryLoss"])
class BoundaryLoss(BaseLoss):
    """Boundary F1 loss (Bokhovkin & Burnaev): x [N,C,H,W] logits, y [N,H,W] labels -> [N].
    Options: theta0 3 (boundary width), theta 5 (tolerance of the matching), both odd;
    ignore_index 255 (also per call)."""

    OPTIONS: ClassVar[dict[str, Any]] = {"theta0": 3, "theta": 5, "ignore_index": 255}
    CALL_OPTIONS: ClassVar[tuple[str, ...]] = ("ignore_index",)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        check_odd_kernel("theta0", options["theta0"])
        check_odd_kernel("theta", options["theta"])
        options["ignore_index"] = check_ignore_index(options["ignore_index"])

    def _mask_inputs(self, pred: Any, target: Any, weight: Any) -> tuple[Any, Any]:
        """An image of weight 0 has its logits replaced by 0 (docs/spec.md 12.2 rule 1)."""
        return mask_zero_weight_images(pred, target, weight)

    def _forward(self, pred: Tensor, target: Any, **options: Any) -> tuple[Tensor, None]:
        x = check_logits(pred)
        if x.dim() != 4:
            raise ValueError(f"pred: expected shape [N, C, H, W], got {shape_str(x)}")
        y = check_index_target(target, x)
        ig = check_ignore_index(options["ignore_index"])
        loss = boundary_f1_loss(
            x, y, theta0=options["theta0"], theta=options["theta"], ignore_index=ig
        )
        return loss, None
