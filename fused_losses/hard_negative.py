"""Hard-negative margin ranking on bilinear heatmap samples (docs/spec.md 3.3.4 and 4).

s(b, x, y) = bilinear sample of heatmap[b] at grid point (u, v) = (x, y) / stride
           = sum over the 4 corners (i, j) of max(0, 1 - |u - j|) max(0, 1 - |v - i|) P[b, i, j]
             (corners off the grid count as 0: grid_sample, align_corners=True, zeros padding)
L = mean over valid (b, k) of relu(margin - s(b, positive_b) + s(b, negative_bk)), 0 if none
dL/ds_neg = [margin - s_pos + s_neg > 0] / count,   dL/ds_pos = -sum_k dL/ds_neg
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
from .labels import div_exact, grid_coords
from .options import LossModule, LossOptions
from .validation import (
    check_floating,
    check_mask_dtype,
    check_number,
    check_positive_int,
    check_real,
    check_same_device,
    check_shape,
    check_tensor,
)


def bilinear_corners(uv: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices [..., 4] (clamped onto the grid) and weights [..., 4] (0 off the grid; a NaN
    point is off the grid)."""
    h, w = size
    u, v = uv[..., 0], uv[..., 1]
    x0, y0 = torch.floor(u), torch.floor(v)
    fx, fy = u - x0, v - y0
    xs = torch.stack([x0, x0 + 1, x0, x0 + 1], dim=-1)
    ys = torch.stack([y0, y0, y0 + 1, y0 + 1], dim=-1)
    wts = torch.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], dim=-1)
    inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
    idx = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).nan_to_num(0.0).long()
    return idx, torch.where(inside, wts, torch.zeros_like(wts))


def negative_validity(
    negatives: torch.Tensor,
    negative_mask: torch.Tensor | None,
    weight: torch.Tensor | None,
    size: tuple[int, int],
    stride: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """[B,K] bool: mask set, cell (floor(v), floor(u)) on the grid (so not NaN), and weight there
    > 0."""
    h, w = size
    cell = torch.floor(grid_coords(negatives, stride, dtype))
    cu, cv = cell[..., 0], cell[..., 1]
    valid = (cu >= 0) & (cu < w) & (cv >= 0) & (cv < h)
    if negative_mask is not None:
        valid = valid & negative_mask.bool()
    if weight is not None:
        flat = (cv.clamp(0, h - 1) * w + cu.clamp(0, w - 1)).nan_to_num(0.0).long()
        wb = weight.reshape(weight.shape[0], h * w)
        valid = valid & (torch.gather(wb.expand(flat.shape[0], -1), 1, flat) > 0)
    return valid


def hard_negative_terms(
    probs: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    valid: torch.Tensor,
    margin: float,
    stride: int,
    need_grad: bool,
    count: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(loss, dL/dprobs [B,H*W] or None, per-image loss [B]) for probs [B,H,W] (compute dtype),
    points in pixels; the per-image loss averages over that image's valid negatives. ``count``:
    the number of valid negatives to average over (default: this batch's; data parallel: every
    rank's, ``fused_losses.distributed``)."""
    b, h, w = probs.shape
    k = negatives.shape[1]
    pts = div_exact(torch.cat([positive[:, None, :], negatives], dim=1).to(probs.dtype), stride)
    idx, wts = bilinear_corners(pts, (h, w))
    flat = probs.reshape(b, h * w)
    cols = (k + 1) * 4  # explicit (not -1): B may be 0
    samples = (torch.gather(flat, 1, idx.reshape(b, cols)).view(b, k + 1, 4) * wts).sum(-1)
    hinge = margin - samples[:, :1] + samples[:, 1:]
    validf = valid.to(probs.dtype)
    if count is None:
        count = validf.sum()
    denom = count.clamp_min(1)
    hinged = torch.relu(hinge) * validf
    loss = hinged.sum() / denom
    per_image = hinged.sum(1) / validf.sum(1).clamp_min(1)
    if not need_grad:
        return loss, None, per_image
    coef_neg = (hinge > 0).to(probs.dtype) * validf / denom  # [B,K]
    coef = torch.cat([-coef_neg.sum(1, keepdim=True), coef_neg], dim=1)  # [B,1+K]
    grad = flat.new_zeros(b, h * w)
    grad.scatter_add_(1, idx.reshape(b, cols), (wts * coef[..., None]).reshape(b, cols))
    return loss, grad, per_image


@dataclasses.dataclass(frozen=True)
class HardNegativeOptions(LossOptions):
    """Options of :func:`hard_negative_margin_loss`: the ranking ``margin``, the ``stride`` from
    input pixels to the heatmap grid and the ``backend``."""

    margin: float = 0.25
    stride: int = 4

    def validate(self) -> None:
        self._set("margin", check_number("margin", self.margin))
        self._set("stride", check_positive_int("stride", self.stride))


def hard_negative_margin_loss(
    heatmap: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    negative_mask: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    *,
    options: HardNegativeOptions | None = None,
    **overrides: Any,
) -> torch.Tensor:
    """mean over valid (b, k) of relu(margin - s(b, positive) + s(b, negative_k)).

    Options (:class:`HardNegativeOptions`, as keywords or ``options=``): ``margin=0.25, stride=4,
    backend="auto", reduce_across_ranks=False, process_group=None`` (the last two: docs/spec.md 9).

    heatmap [B,1,H,W] probabilities (H, W >= 2); positive [B,2] and negatives [B,K,2] as (x, y)
    input pixels; negative_mask [B,K] bool (default all); weight [B,1,H,W] (a negative on a cell
    with weight 0 is ignored). Gradient flows into ``heatmap`` through both samples.
    """
    check_tensor("heatmap", heatmap)
    check_floating("heatmap", heatmap)
    check_shape("heatmap", heatmap, [None, 1, None, None], "[B, 1, H, W]")
    b, _, h, w = heatmap.shape
    if h < 2 or w < 2:
        raise ValueError(
            f"heatmap: expected H, W >= 2 for bilinear sampling, got [{b}, 1, {h}, {w}]"
        )
    check_tensor("positive", positive)
    check_real("positive", positive)
    check_shape("positive", positive, [b, 2], f"[{b}, 2]")
    check_tensor("negatives", negatives)
    check_real("negatives", negatives)
    check_shape("negatives", negatives, [b, None, 2], f"[{b}, K, 2]")
    k = negatives.shape[1]
    if negative_mask is not None:
        check_tensor("negative_mask", negative_mask)
        check_mask_dtype("negative_mask", negative_mask)
        check_shape("negative_mask", negative_mask, [b, k], f"[{b}, {k}]")
    if weight is not None:
        check_tensor("weight", weight)
        check_real("weight", weight)
        check_shape("weight", weight, [b, 1, h, w], f"[{b}, 1, {h}, {w}]")
    check_same_device(
        {
            "heatmap": heatmap,
            "positive": positive,
            "negatives": negatives,
            "negative_mask": negative_mask,
            "weight": weight,
        }
    )
    opts = HardNegativeOptions.build(options, overrides)
    group = active_group(opts)
    sync = denominator_sync(group)
    if resolve_backend(opts.backend, heatmap.device) == "triton":
        from .triton_gap import hard_negative_margin_loss_triton

        loss = hard_negative_margin_loss_triton(
            heatmap, positive, negatives, negative_mask, weight, opts, sync
        )
        return finish(loss, group)
    margin, stride = opts.margin, opts.stride
    (need,) = needs_grad(heatmap)

    def value_and_grad(p: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor):
        cdt = compute_dtype(p.dtype)
        valid = negative_validity(neg, negative_mask, weight, (h, w), stride, cdt)
        count = sync(valid.to(cdt).sum()) if sync is not None else None
        loss, grad, _ = hard_negative_terms(
            p.to(cdt)[:, 0], pos, neg, valid, margin, stride, need, count
        )
        return (
            loss,
            loss.new_zeros(0),
            (None if grad is None else grad.view(b, 1, h, w), None, None),
        )

    loss, _ = PrecomputedGradient.apply(
        "hard_negative_margin_loss", value_and_grad, heatmap, positive, negatives
    )
    return finish(loss, group)


class HardNegativeMarginLoss(LossModule):
    """Module form of :func:`hard_negative_margin_loss`: ``HardNegativeMarginLoss(**options)``
    (the fields of :class:`HardNegativeOptions`), ``forward(heatmap, positive, negatives,
    negative_mask=None, weight=None)``."""

    Options = HardNegativeOptions

    def forward(
        self,
        heatmap: torch.Tensor,
        positive: torch.Tensor,
        negatives: torch.Tensor,
        negative_mask: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return hard_negative_margin_loss(
            heatmap, positive, negatives, negative_mask, weight, options=self.options
        )
