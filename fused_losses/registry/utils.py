"""Reduction and weighting rules of the loss registry (docs/spec.md 12.2-12.3, mmdet 3.x / mmseg 1.x
conventions) and the small utilities of its losses.

``apply_weight_and_reduce`` is the one implementation of the rules every ``BaseLoss`` follows:

    weights:   w of l's shape, of l's shape without the class axis (dim 1 inserted), or broadcast
    masking:   an element with w = 0 or an invalid label contributes exactly 0 (even a NaN l)
    reduction: "none" l w v;  "sum" s = sum(l w v);  "mean" s / (avg_factor + eps), or
               s / (sum v + eps) with a validity mask (avg_non_ignore), or s / numel(l);
               "batchmean" s / batch;  eps = float32's machine epsilon, in the loss's dtype
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ..validation import shape_str

REDUCTIONS = ("none", "mean", "sum", "batchmean")
EPS = float(torch.finfo(torch.float32).eps)  # added to every "mean" denominator


def expand_weight(weight: Tensor, loss: Tensor | torch.Size | tuple[int, ...]) -> Tensor:
    """``weight`` as l's shape (``loss`` or its shape): the same shape, l's shape without dim 1
    (inserted), or broadcastable (a ValueError naming ``weight`` otherwise)."""
    shape = torch.Size(loss.shape if isinstance(loss, Tensor) else loss)
    if weight.shape == shape:
        return weight
    if weight.dim() == len(shape) - 1 and len(shape) >= 2:
        if tuple(weight.shape) == (shape[0], *shape[2:]):
            return weight.unsqueeze(1).expand(shape)
    try:
        return weight.expand(shape)
    except RuntimeError:
        raise ValueError(
            f"weight: expected the loss's shape [{', '.join(map(str, shape))}], that shape "
            f"without dim 1, or a shape broadcastable to it, got {shape_str(weight)}"
        ) from None


def _denominator(avg_factor, like: Tensor) -> Tensor:
    if isinstance(avg_factor, Tensor):
        return avg_factor.to(device=like.device, dtype=like.dtype) + EPS
    return torch.full((), float(avg_factor), dtype=like.dtype, device=like.device) + EPS


def apply_weight_and_reduce(
    loss: Tensor,
    weight: Tensor | None = None,
    valid: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
    avg_non_ignore: bool = True,
    batch: int | None = None,
) -> Tensor:
    """The weighting and reduction rules (module docstring) of an elementwise loss."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {list(REDUCTIONS)}, got {reduction!r}")
    keep = None
    if weight is not None:
        weight = expand_weight(weight.to(loss.dtype), loss)
        keep = weight != 0
        loss = loss * weight
    if valid is not None:
        valid = expand_weight(valid, loss).bool()
        keep = valid if keep is None else keep & valid
    if keep is not None:
        loss = torch.where(keep, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    if reduction == "none":
        return loss
    if reduction == "sum":
        if avg_factor is not None:
            raise ValueError('avg_factor: can not be used with reduction="sum"')
        return loss.sum()
    total = loss.sum()
    if reduction == "batchmean":
        return total / max(batch if batch is not None else loss.shape[0], 1)
    if avg_factor is not None:
        return total / _denominator(avg_factor, total)
    if valid is not None and avg_non_ignore:
        return total / (valid.sum().to(total.dtype) + EPS)
    return total / max(loss.numel(), 1)


def reduce_loss(loss: Tensor, reduction: str) -> Tensor:
    """ "none" (as is), "mean" or "sum" of an elementwise loss."""
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction: expected one of ['none', 'mean', 'sum'], got {reduction!r}")
    if reduction == "none":
        return loss
    return loss.sum() / max(loss.numel(), 1) if reduction == "mean" else loss.sum()


def weight_reduce_loss(
    loss: Tensor,
    weight: Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """mmseg 1.x's ``weight_reduce_loss``: the rules without a validity mask (eps included)."""
    return apply_weight_and_reduce(loss, weight, None, reduction, avg_factor)


def weighted_loss(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Decorator: an elementwise ``fn(pred, target, **kw)`` gains ``weight=None,
    reduction="mean", avg_factor=None`` (mmdet's ``weighted_loss``)."""

    @functools.wraps(fn)
    def wrapper(pred, target, weight=None, reduction="mean", avg_factor=None, **kwargs):
        return weight_reduce_loss(fn(pred, target, **kwargs), weight, reduction, avg_factor)

    return wrapper


def convert_to_one_hot(
    labels: Tensor, num_classes: int, ignore_index: int | None = None, dtype=torch.float32
) -> Tensor:
    """[N,C,*] one-hot of labels [N,*] (class axis at dim 1); ignored and out-of-range labels
    (``num_classes`` included) give all zeros."""
    ok = (labels >= 0) & (labels < num_classes)
    if ignore_index is not None:
        ok = ok & (labels != ignore_index)
    safe = torch.where(ok, labels, 0).long()
    one = torch.nn.functional.one_hot(safe, num_classes).movedim(-1, 1).to(dtype)
    return one * ok.unsqueeze(1).to(dtype)


def get_class_weight(
    labels: Tensor,
    method: str,
    num_classes: int,
    ignore_index: int | None = None,
    beta: float = 0.9999,
) -> Tensor:
    """[C] float32 class weights from the counts n_c of the non-ignored labels: "inverse" 1/n_c,
    "sqrt_inverse" 1/sqrt(n_c), "effective_num" (1-beta)/(1-beta^n_c), each scaled to mean 1 over
    the present classes; "median_freq" median(f)/f_c (f_c = n_c/sum n, median over the present
    classes), unscaled. Absent classes get 0."""
    methods = ("inverse", "sqrt_inverse", "effective_num", "median_freq")
    if method not in methods:
        raise ValueError(f"method: expected one of {list(methods)}, got {method!r}")
    flat = labels.reshape(-1).long()
    ok = (flat >= 0) & (flat < num_classes)
    if ignore_index is not None:
        ok = ok & (flat != ignore_index)
    counts = torch.zeros(num_classes, dtype=torch.float64, device=labels.device)
    counts.index_add_(0, torch.where(ok, flat, 0), ok.to(torch.float64))
    present = counts > 0
    safe = torch.where(present, counts, 1)
    if method == "median_freq":
        f = safe / counts.sum().clamp_min(1)
        med = torch.nanquantile(torch.where(present, f, torch.nan), 0.5)  # numpy's median
        w = med / f
    else:
        if method == "inverse":
            w = 1 / safe
        elif method == "sqrt_inverse":
            w = 1 / torch.sqrt(safe)
        else:
            w = (1 - beta) / (1 - beta**safe)
        w = w / (torch.where(present, w, 0).sum() / present.sum().clamp_min(1))
    return torch.where(present, w, 0).float()


def focal_weight(p: Tensor, gamma: float) -> Tensor:
    """(1 - p)^gamma, p the probability of the true class."""
    return (1 - p) ** gamma


def sigmoid_focal_loss(
    pred: Tensor,
    target: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """``torchvision.ops.sigmoid_focal_loss`` (alpha < 0 disables alpha) with mmdet's ``weight``
    and ``avg_factor``: BCE(x, t) (1 - p_t)^gamma a_t."""
    p = torch.sigmoid(pred)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(pred, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


# ------------------------------------------------------------------------------------- boxes

BOX_FORMATS = ("xyxy", "xywh")


class BoxTerms(NamedTuple):
    """The quantities of a pair of boxes that the IoU-family losses combine."""

    iou: Tensor
    union: Tensor
    enclose_w: Tensor
    enclose_h: Tensor
    rho2: Tensor
    size_p: tuple[Tensor, Tensor]
    size_g: tuple[Tensor, Tensor]
    centre_offset: tuple[Tensor, Tensor]  # centre_g - centre_p (x, y)


def to_xyxy(boxes: Tensor, bbox_format: str) -> Tensor:
    if bbox_format == "xyxy":
        return boxes
    c, wh = boxes[..., :2], boxes[..., 2:]
    return torch.cat([c - wh / 2, c + wh / 2], dim=-1)


def box_terms(pred: Tensor, target: Tensor, bbox_format: str, eps: float) -> BoxTerms:
    """:class:`BoxTerms` of matched boxes [...,4] (broadcast)."""
    p, g = to_xyxy(pred, bbox_format), to_xyxy(target, bbox_format)
    wp, hp = p[..., 2] - p[..., 0], p[..., 3] - p[..., 1]
    wg, hg = g[..., 2] - g[..., 0], g[..., 3] - g[..., 1]
    iw = (torch.minimum(p[..., 2], g[..., 2]) - torch.maximum(p[..., 0], g[..., 0])).clamp(min=0)
    ih = (torch.minimum(p[..., 3], g[..., 3]) - torch.maximum(p[..., 1], g[..., 1])).clamp(min=0)
    inter = iw * ih
    union = wp * hp + wg * hg - inter
    cw = torch.maximum(p[..., 2], g[..., 2]) - torch.minimum(p[..., 0], g[..., 0])
    ch = torch.maximum(p[..., 3], g[..., 3]) - torch.minimum(p[..., 1], g[..., 1])
    dx = (p[..., 0] + p[..., 2] - g[..., 0] - g[..., 2]) / 2
    dy = (p[..., 1] + p[..., 3] - g[..., 1] - g[..., 3]) / 2
    return BoxTerms(
        inter / (union + eps), union, cw, ch, dx * dx + dy * dy, (wp, hp), (wg, hg), (-dx, -dy)
    )


def compute_iou(
    box1: Tensor, box2: Tensor, *, aligned: bool = True, bbox_format: str = "xyxy",
    eps: float = 1e-6,
) -> Tensor:  # fmt: skip
    """IoU of matched boxes [...,4] (``aligned``) or [N,M] for [N,4] x [M,4]."""
    if not aligned:
        box1, box2 = box1[:, None], box2[None]
    return box_terms(box1, box2, bbox_format, eps).iou


def compute_giou(
    box1: Tensor, box2: Tensor, *, aligned: bool = True, bbox_format: str = "xyxy",
    eps: float = 1e-6,
) -> Tensor:  # fmt: skip
    """GIoU = IoU - (A_c - U) / (A_c + eps) of matched boxes or all pairs."""
    if not aligned:
        box1, box2 = box1[:, None], box2[None]
    t = box_terms(box1, box2, bbox_format, eps)
    area_c = t.enclose_w * t.enclose_h
    return t.iou - (area_c - t.union) / (area_c + eps)


# ------------------------------------------------------------------------- distance transform

_DT_INF = 2**31 - 1  # kernels/distance_transform.INF


def _squared_distance_torch(mask: Tensor) -> Tensor:
    """The two min-plus passes of kernels/distance_transform.py with tensor ops: along columns
    by nearest-outside index scans (exact), along rows exhaustively in chunks of rows. int64."""
    n, h, w = mask.shape
    big = 1 << 40
    idx = torch.arange(h, device=mask.device).view(1, h, 1)
    outside = ~mask
    above = torch.cummax(torch.where(outside, idx, -big), dim=1).values
    below = torch.flip(
        torch.cummin(torch.flip(torch.where(outside, idx, big), (1,)), dim=1).values, (1,)
    )
    d = torch.minimum(idx - above, below - idx)
    g = torch.where(d < h, d * d, big).reshape(n * h, w)
    j = torch.arange(w, device=mask.device)
    d2 = (j.view(-1, 1) - j.view(1, -1)) ** 2  # [i, j]
    out = torch.empty_like(g)
    step = max(1, (1 << 22) // max(w * w, 1))
    for r0 in range(0, n * h, step):
        out[r0 : r0 + step] = (g[r0 : r0 + step, None, :] + d2[None]).amin(2)
    return torch.where(out >= big, _DT_INF, out).reshape(n, h, w)


def squared_distance_transform(mask: Tensor, backend: str = "auto") -> Tensor:
    """The squared Euclidean distance transform of ``mask`` [N, H, W] (bool), exact integers
    (int32 on the triton backend, int64 on the torch backend); 0 outside the mask and 0
    everywhere for an image with no pixel outside it. See ``distance_transform``."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask: expected a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask: expected a bool tensor, got dtype {mask.dtype}")
    if mask.dim() != 3:
        raise ValueError(f"mask: expected shape [N, H, W], got {shape_str(mask)}")
    h, w = mask.shape[1:]
    if h * h + w * w >= _DT_INF:
        raise ValueError(f"mask: H^2 + W^2 must stay below 2^31 (int32 squared distances), got "
                         f"{shape_str(mask)}")  # fmt: skip
    from ..backend import resolve_backend

    if resolve_backend(backend, mask.device) == "triton":
        from ..kernel_ops import run
        from ..triton_dice import DISTANCE_OP

        d2 = run(DISTANCE_OP, (mask.contiguous(),), {})[0]
    else:
        d2 = _squared_distance_torch(mask)
    return torch.where(d2 == _DT_INF, 0, d2)


def distance_transform(mask: Tensor, backend: str = "auto") -> Tensor:
    """The exact Euclidean distance transform of ``mask`` [N, H, W] (bool) -> [N, H, W] float32:
    each pixel inside the mask gets the distance to the nearest pixel outside it, 0 outside,
    ``scipy.ndimage.distance_transform_edt`` per image; 0 everywhere for an empty or a full mask.
    On the device, no host sync: two separable min-plus passes (Felzenszwalb & Huttenlocher) on
    integer squared distances (kernels/distance_transform.py; the torch backend: the same passes
    with tensor ops), then a square root in float64 rounded to float32 (SciPy's values). Not
    differentiable (a function of a mask)."""
    d2 = squared_distance_transform(mask, backend)
    return torch.sqrt(d2.to(torch.float64)).to(torch.float32)
