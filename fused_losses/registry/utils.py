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

from ..validation import (
    check_bool,
    check_integer,
    check_number,
    check_positive_int,
    check_tensor,
    shape_str,
)

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


def weight_keep(weight: Tensor, shape: torch.Size | tuple[int, ...], like: Tensor) -> Tensor:
    """The elements that ``apply_weight_and_reduce`` keeps: the weight (detached) in the loss's
    dtype (the compute dtype of ``like``: float64 for float64, else float32), expanded by
    ``expand_weight`` (its ValueError otherwise), nonzero. Masking a loss's inputs (docs/spec.md
    12.2 rule 1) with it agrees with the reduction also for a weight that rounds to 0 there (a
    float64 1e-300 in float32)."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return expand_weight(weight.detach().to(dtype), shape) != 0


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
        weight = expand_weight(weight.detach().to(loss.dtype), loss)  # a constant (12.2)
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
    if reduction == "batchmean" and avg_factor is not None:
        raise ValueError('avg_factor: can not be used with reduction="batchmean"')
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
    """mmseg 1.x's ``weight_reduce_loss``: the rules without a validity mask (eps included);
    ``avg_factor`` is checked as BaseLoss checks it (a finite real number or a one-element real
    tensor)."""
    from .base_loss import check_avg_factor  # (base_loss imports this module)

    return apply_weight_and_reduce(loss, weight, None, reduction, check_avg_factor(avg_factor))


def _check_labels(labels: object, num_classes: object, min_dim: int = 0) -> int:
    """Integer labels (a TypeError naming ``labels`` otherwise: float labels were truncated) and
    ``num_classes`` a positive int (a ValueError naming it: 0 gave an IndexError)."""
    check_tensor("labels", labels)
    check_integer("labels", labels)
    if labels.dim() < min_dim:
        raise ValueError(
            f"labels: expected at least {min_dim} dims ([N, *]), got {shape_str(labels)}"
        )
    return check_positive_int("num_classes", num_classes, 2**31 - 1)


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
    num_classes = _check_labels(labels, num_classes, min_dim=1)
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
    num_classes = _check_labels(labels, num_classes)
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
_BOX_RANGE_BITS = 60  # box_terms works on coordinates below 2^60 (rescaled beyond)


class BoxTerms(NamedTuple):
    """The quantities of a pair of boxes that the IoU-family losses combine. Lengths and areas
    are in units of ``2^k`` per pair (``k >= 0``; ``k = 0``, the given units, unless a
    coordinate reaches 2^60): ratios of them, and ``iou``, ``one_minus_iou``, are unit-free;
    ``eps_len`` and ``eps_area`` are eps in those units (eps / 2^k, eps / 4^k)."""

    iou: Tensor  # I / (U + eps)
    one_minus_iou: Tensor  # 1 - IoU = (U - I + eps) / (U + eps), U - I without cancellation
    union: Tensor  # U = A_p + A_g - I
    enclose_gap: Tensor  # A_c - U (without cancellation where the boxes overlap)
    enclose_w: Tensor
    enclose_h: Tensor
    rho2: Tensor  # squared distance of the centres
    size_p: tuple[Tensor, Tensor]
    size_g: tuple[Tensor, Tensor]
    size_diff: tuple[Tensor, Tensor]  # (w_p - w_g, h_p - h_g), from coordinate differences
    centre_offset: tuple[Tensor, Tensor]  # centre_g - centre_p (x, y)
    eps_len: Tensor
    eps_area: Tensor


def check_bbox_format(bbox_format: object) -> str:
    """``bbox_format`` as one of ``BOX_FORMATS`` (a ValueError naming it otherwise)."""
    if not isinstance(bbox_format, str) or bbox_format not in BOX_FORMATS:
        raise ValueError(f"bbox_format: expected one of {list(BOX_FORMATS)}, got {bbox_format!r}")
    return bbox_format


def to_xyxy(boxes: Tensor, bbox_format: str) -> Tensor:
    """[...,4] as (x1, y1, x2, y2): "xyxy" as is; "xywh" (cx, cy, w, h) -> (cx - w/2, cy - h/2,
    cx + w/2, cy + h/2); any other format is a ValueError naming ``bbox_format``."""
    if check_bbox_format(bbox_format) == "xyxy":
        return boxes
    c, wh = boxes[..., :2], boxes[..., 2:]
    return torch.cat([c - wh / 2, c + wh / 2], dim=-1)


def _power_of_two_scale(m: Tensor) -> Tensor:
    """2^-k for m >= 0 (float32 or float64): the smallest k >= 0 with m 2^-k < 2^60, read from
    m's exponent bits (exact: no log, no pow); inf and NaN give the largest k (2^-69 in
    float32, 2^-965 in float64), which leaves them inf and NaN."""
    if m.dtype == torch.float64:
        ints, mant, bias, emask = torch.int64, 52, 1023, 0x7FF
    else:
        ints, mant, bias, emask = torch.int32, 23, 127, 0xFF
    biased = (m.view(ints) >> mant) & emask  # m in [2^(biased - bias), 2^(biased - bias + 1))
    k = (biased - (bias - 1 + _BOX_RANGE_BITS)).clamp(min=0)
    return ((bias - k) << mant).view(m.dtype)


def _relu(d: Tensor) -> Tensor:
    """max(d, 0) with the gradient 1/2 at d = 0 (that of torch.minimum/maximum at a tie, which
    it replaces: max(a, b) - b = relu(a - b)); 0 at d = -inf, NaN at NaN."""
    return torch.where(d < 0, 0, (d + d.abs()) / 2)


def box_terms(pred: Tensor, target: Tensor, bbox_format: str, eps: float) -> BoxTerms:
    """:class:`BoxTerms` of matched boxes [...,4] (broadcast against each other), float32 or
    float64 (docs/spec.md 12.5).

    Scale: each pair is divided by a power of two 2^k, k >= 0 the smallest with every coordinate
    below 2^60 (k = 0, an exact no-op, when they all are), and eps by 2^k (a length) or 4^k (an
    area). The formulas are homogeneous, so the values are those of the given coordinates, and
    areas, squared lengths and their sums stay finite in float32 for every finite coordinate.
    An eps that the division takes below the dtype's smallest normal number is held there
    (min(eps, tiny)), so that a 0/0 stays 0/eps.

    No cancellation: 1 - IoU is (U - I + eps) / (U + eps) with U - I = (A_p - I) + (A_g - I),
    A - I = h (w - iw) + iw (h - ih), where w - iw and h - ih (the part of a box outside the
    intersection, along x and y) come from differences of coordinates, not of areas, so that
    well-fitting boxes keep float32's relative precision; A_c - U of overlapping boxes is
    a_p b_g + a_g b_p (a, b those parts along x and y); the centre offset is a difference of
    coordinates too, and so is w_p - w_g where the corner differences are no larger than the sizes
    ("xyxy"; of the sizes for boxes far apart; "xywh": of the given centres and sizes).

    A pair with a non-finite coordinate takes the literal formulas (1 - I / (U + eps), A_c - U,
    the centres and sizes of its corners): the reference's values, and the reference's
    gradients (the exact forms are evaluated on zeros there, so their unused branch adds
    nothing, not 0 * inf).
    """
    check_bbox_format(bbox_format)
    m = torch.maximum(pred.abs().amax(-1), target.abs().amax(-1))
    fin = torch.isfinite(m)
    inv = _power_of_two_scale(m)
    tiny = torch.finfo(m.dtype).tiny
    eps_len = (eps * inv).clamp(min=min(eps, tiny))
    eps_area = (eps * inv * inv).clamp(min=min(eps, tiny))
    pred, target = pred * inv[..., None], target * inv[..., None]
    p, g = to_xyxy(pred, bbox_format), to_xyxy(target, bbox_format)
    # the literal terms
    size_p, size_g = p[..., 2:] - p[..., :2], g[..., 2:] - g[..., :2]
    (wp, hp), (wg, hg) = size_p.unbind(-1), size_g.unbind(-1)
    lo, hi = torch.maximum(p[..., :2], g[..., :2]), torch.minimum(p[..., 2:], g[..., 2:])
    i_raw = hi - lo  # (iw, ih) before the clamp at 0
    iwh = i_raw.clamp(min=0)
    iw, ih = iwh.unbind(-1)
    inter = iw * ih
    union = wp * hp + wg * hg - inter
    iou = inter / (union + eps_area)
    cw = torch.maximum(p[..., 2], g[..., 2]) - torch.minimum(p[..., 0], g[..., 0])
    ch = torch.maximum(p[..., 3], g[..., 3]) - torch.minimum(p[..., 1], g[..., 1])
    # the exact forms, from coordinate differences (zeros for a non-finite pair)
    f1, f2 = fin[..., None], fin[..., None, None]
    if bbox_format == "xyxy":
        d = torch.where(f1, pred - target, 0).unflatten(-1, (2, 2))  # [..., (lo, hi), (x, y)]
        d_lo, d_hi = d[..., 0, :], d[..., 1, :]
        centre, size_diff = (d_lo + d_hi) / 2, d_hi - d_lo
    else:
        dc = torch.where(f1, pred - target, 0)
        centre, size_diff = dc[..., :2], dc[..., 2:]
        d_lo, d_hi = centre - size_diff / 2, centre + size_diff / 2
    sizes = torch.where(f2, torch.stack([size_p, size_g], -2), 0)  # [..., (p, g), (x, y)]
    iws = torch.where(f1, iwh, 0)
    meet = i_raw >= 0  # the intervals meet (or touch) along x, y
    ex_p = torch.where(meet, _relu(d_hi) + _relu(-d_lo), sizes[..., 0, :])
    ex_g = torch.where(meet, _relu(-d_hi) + _relu(d_lo), sizes[..., 1, :])
    u_minus_i = (sizes[..., 0, 1] * ex_p[..., 0] + iws[..., 0] * ex_p[..., 1]) + (
        sizes[..., 1, 1] * ex_g[..., 0] + iws[..., 0] * ex_g[..., 1]
    )
    union_exact = iws[..., 0] * iws[..., 1] + u_minus_i
    one_minus_iou = torch.where(fin, (u_minus_i + eps_area) / (union_exact + eps_area), 1 - iou)
    gap = torch.where(
        fin & meet[..., 0] & meet[..., 1],
        ex_p[..., 0] * ex_g[..., 1] + ex_g[..., 0] * ex_p[..., 1],
        cw * ch - union,
    )
    c_lit = (p[..., :2] + p[..., 2:] - g[..., :2] - g[..., 2:]) / 2
    centre = torch.where(f1, centre, c_lit)  # centre_p - centre_g
    # w_p - w_g from the corner differences where they are no larger than the sizes (boxes that
    # fit: no cancellation), else from the sizes (boxes far apart: d_hi - d_lo would lose them)
    near = f1
    if bbox_format == "xyxy":
        near = near & (
            torch.maximum(d_lo.abs(), d_hi.abs()) <= torch.maximum(size_p.abs(), size_g.abs())
        )
    size_diff = torch.where(near, size_diff, size_p - size_g)
    cx, cy = centre.unbind(-1)
    return BoxTerms(
        iou, one_minus_iou, union, gap, cw, ch, cx * cx + cy * cy, (wp, hp), (wg, hg),
        tuple(size_diff.unbind(-1)), (-cx, -cy), eps_len, eps_area,
    )  # fmt: skip


def _check_boxes(box1: object, box2: object, aligned: object, bbox_format: object, eps: object):
    """The checks of :func:`compute_iou` / :func:`compute_giou`; the boxes in float32 (float64
    when either is float64)."""
    for name, b in (("box1", box1), ("box2", box2)):
        if not isinstance(b, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(b).__name__}")
        if not b.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got dtype {b.dtype}")
    check_bool("aligned", aligned)
    check_bbox_format(bbox_format)
    eps = check_number("eps", eps, nonneg=True)
    if aligned:
        if box1.dim() == 0 or box1.shape[-1] != 4:
            raise ValueError(f"box1: expected shape [..., 4], got {shape_str(box1)}")
        if box2.shape != box1.shape:
            raise ValueError(f"box2: expected the shape of box1 {shape_str(box1)}, got "
                             f"{shape_str(box2)}")  # fmt: skip
    else:
        for name, b, n in (("box1", box1, "N"), ("box2", box2, "M")):
            if b.dim() != 2 or b.shape[1] != 4:
                raise ValueError(f"{name}: expected shape [{n}, 4] (aligned=False), got "
                                 f"{shape_str(b)}")  # fmt: skip
    if box2.device != box1.device:
        raise ValueError(f"box2: expected a tensor on {box1.device} (like box1), got one on "
                         f"{box2.device}")  # fmt: skip
    cdt = torch.float64 if torch.float64 in (box1.dtype, box2.dtype) else torch.float32
    box1, box2 = box1.to(cdt), box2.to(cdt)
    if not aligned:
        box1, box2 = box1[:, None], box2[None]
    return box1, box2, eps


def compute_iou(
    box1: Tensor, box2: Tensor, *, aligned: bool = True, bbox_format: str = "xyxy",
    eps: float = 1e-6,
) -> Tensor:  # fmt: skip
    """IoU = I / (U + eps) of matched boxes box1, box2 [...,4] of one shape (``aligned``) or of
    all pairs, [N,M] for [N,4] x [M,4]. Floating boxes on one device; computed and returned in
    float32 (float64 when either is float64); a bad argument is a TypeError/ValueError naming
    it (``bbox_format``: "xyxy" or "xywh")."""
    box1, box2, eps = _check_boxes(box1, box2, aligned, bbox_format, eps)
    return box_terms(box1, box2, bbox_format, eps).iou


def compute_giou(
    box1: Tensor, box2: Tensor, *, aligned: bool = True, bbox_format: str = "xyxy",
    eps: float = 1e-6,
) -> Tensor:  # fmt: skip
    """GIoU = IoU - (A_c - U) / (A_c + eps) of matched boxes or all pairs (as
    :func:`compute_iou`: the same checks and dtypes)."""
    box1, box2, eps = _check_boxes(box1, box2, aligned, bbox_format, eps)
    t = box_terms(box1, box2, bbox_format, eps)
    return t.iou - t.enclose_gap / (t.enclose_w * t.enclose_h + t.eps_area)


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
