"""Reference weighting and reduction rules of the loss registry (SPEC 9.2 rules 1-2) and its
utilities (SPEC 9.3): one-hot labels, class weights, the focal weight, torchvision's sigmoid focal
loss, and the IoU / GIoU of boxes (the formulas of SPEC 10.2).

Literal: the weights and the validity mask are broadcast to the loss's shape, a masked element is
replaced by an exact 0 with ``torch.where`` (so a non-finite ``l`` there never reaches the sum),
every denominator is written out, gradients by autograd.

Choices where the spec is silent:

- ``"batchmean"`` divides by ``batch`` (default ``loss.shape[0]``; 1 for a 0-dim ``l``, one unbatched
  sample), and by 1 for an empty batch
  (0, like ``"mean"`` of an empty loss, rather than 0/0).
- ``reduce_loss`` is rule 2 with no weight, mask or avg_factor: ``"mean"`` of an empty loss is 0
  (mmdet's ``loss.mean()`` would give NaN).
- ``get_class_weight``'s ``median_freq`` takes the median of an even number of present classes as
  the mean of the two middle values (``torch.quantile(f, 0.5)``, numpy's median), not
  ``torch.median``'s lower middle value.
- The IoU of ``compute_iou(aligned=False)`` keeps SPEC 10.2's ``I / (U + eps)`` (torchvision's
  ``box_iou`` has no eps).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

EPS = float(torch.finfo(torch.float32).eps)  # 1.1920929e-07, every "mean" denominator
REDUCTIONS = ("none", "mean", "sum", "batchmean")


def as_loss_shape(weight: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """``weight`` (or a validity mask) as ``loss``'s shape (SPEC 9.2 rule 1): the same shape; the
    shape without the class axis, dim 1 inserted (mmdet's [N] weight of an [N,C] loss); else
    broadcast."""
    if weight.shape == loss.shape:
        return weight
    if loss.dim() >= 2 and tuple(weight.shape) == (loss.shape[0], *loss.shape[2:]):
        return weight.unsqueeze(1).expand(loss.shape)
    return weight.expand(loss.shape)


def reduce_with_validity(
    loss: torch.Tensor,
    weight: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | torch.Tensor | None = None,
    avg_non_ignore: bool = True,
    batch: int | None = None,
) -> torch.Tensor:
    """SPEC 9.2 rules 1-2 on the elementwise loss ``l`` with weight ``w`` and validity ``v``.

    keep = (w != 0) & v;  lwv = l w where keep, exactly 0 elsewhere;  s = sum(lwv);
    "none" -> lwv;  "sum" -> s (an avg_factor: ValueError);
    "mean" -> s / (avg_factor + eps) if avg_factor is given,
              s / (sum(v) + eps) if v is given and avg_non_ignore (v counted at l's shape),
              s / numel(l) otherwise (0 for an empty l);
    "batchmean" -> s / batch;  eps = float32's machine epsilon, added in l's dtype.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if reduction == "sum" and avg_factor is not None:
        raise ValueError('avg_factor can not be used with reduction="sum"')
    zero = torch.zeros((), dtype=loss.dtype, device=loss.device)
    keep = torch.ones(loss.shape, dtype=torch.bool, device=loss.device)
    lw = loss
    if weight is not None:
        w = as_loss_shape(weight.to(loss.dtype), loss)
        keep = keep & (w != 0)
        lw = loss * w
    if valid is not None:
        v = as_loss_shape(valid.bool(), loss)
        keep = keep & v
    lwv = torch.where(keep, lw, zero)
    if reduction == "none":
        return lwv
    s = lwv.sum()
    if reduction == "sum":
        return s
    if reduction == "batchmean":
        n = (loss.shape[0] if loss.dim() else 1) if batch is None else batch
        return s / max(n, 1)
    if avg_factor is not None:
        return s / (torch.as_tensor(avg_factor, dtype=loss.dtype, device=loss.device) + EPS)
    if valid is not None and avg_non_ignore:
        return s / (v.to(loss.dtype).sum() + EPS)
    return s / max(loss.numel(), 1)


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """ "none" -> l, "sum" -> sum(l), "mean" -> sum(l) / numel(l) (0 when empty), "batchmean" ->
    sum(l) / l.shape[0]."""
    return reduce_with_validity(loss, None, None, reduction, None)


def weight_reduce_loss(
    loss: torch.Tensor,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    avg_factor: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """mmseg 1.x's ``weight_reduce_loss``: SPEC 9.2 rule 2 without a validity mask;
    "mean" with an avg_factor is sum(l w) / (avg_factor + eps)."""
    return reduce_with_validity(loss, weight, None, reduction, avg_factor)


def weighted_loss(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """An elementwise ``fn(pred, target, **kw)`` gains ``weight=None, reduction="mean",
    avg_factor=None`` (mmdet's decorator)."""

    @functools.wraps(fn)
    def wrapper(pred, target, weight=None, reduction="mean", avg_factor=None, **kwargs):
        return weight_reduce_loss(fn(pred, target, **kwargs), weight, reduction, avg_factor)

    return wrapper


def on_dim1(values: float | list[float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A number (0-dim) or C values (shape [1,C,1,...]) in ``like``'s dtype, on its class axis."""
    t = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        return t
    return t.reshape(1, -1, *([1] * (like.dim() - 2)))


def convert_to_one_hot(
    labels: torch.Tensor,
    num_classes: int,
    ignore_index: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """t [N,C,*] of labels [N,*]: t[n,c] = 1 if labels[n] == c and labels[n] != ignore_index,
    else 0 (so ignored and out-of-range labels, ``num_classes`` included, give a zero row)."""
    y = labels.unsqueeze(1)  # [N,1,*]
    classes = torch.arange(num_classes, device=labels.device)
    classes = classes.reshape(1, num_classes, *([1] * (labels.dim() - 1)))  # [1,C,1,...]
    t = y == classes
    if ignore_index is not None:
        t = t & (y != ignore_index)
    return t.to(dtype)


def get_class_weight(
    labels: torch.Tensor,
    method: str,
    num_classes: int,
    ignore_index: int | None = None,
    beta: float = 0.9999,
) -> torch.Tensor:
    """[C] float32 class weights from n_c = #{labels == c, labels != ignore_index}:

    "inverse" 1/n_c, "sqrt_inverse" 1/sqrt(n_c), "effective_num" (1 - beta)/(1 - beta^n_c), each
    divided by its mean over the present classes (n_c > 0); "median_freq" median(f)/f_c with
    f_c = n_c / sum(n), the median over the present classes, unscaled. Absent classes get 0.
    """
    one_hot = convert_to_one_hot(labels.reshape(1, -1), num_classes, ignore_index, torch.float64)
    n = one_hot.sum(dim=2)[0]  # [C]
    present = n > 0
    if not bool(present.any()):
        return torch.zeros(num_classes, dtype=torch.float32, device=labels.device)
    n_p = n[present]
    if method == "inverse":
        w_p = 1 / n_p
        w_p = w_p / w_p.mean()
    elif method == "sqrt_inverse":
        w_p = 1 / torch.sqrt(n_p)
        w_p = w_p / w_p.mean()
    elif method == "effective_num":
        w_p = (1 - beta) / (1 - beta**n_p)
        w_p = w_p / w_p.mean()
    elif method == "median_freq":
        f_p = n_p / n.sum()
        w_p = torch.quantile(f_p, 0.5) / f_p
    else:
        raise ValueError(f"unknown class-weight method {method!r}")
    w = torch.zeros(num_classes, dtype=torch.float64, device=labels.device)
    w[present] = w_p
    return w.float()


def focal_weight(p: torch.Tensor, gamma: float) -> torch.Tensor:
    """(1 - p)^gamma, p the probability of the true class."""
    return (1 - p) ** gamma


def bce_with_logits(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """BCE(x, y) = -y log sig(x) - (1 - y) log(1 - sig(x)), the logs as logsigmoid(x), logsigmoid(-x)."""
    return -y * F.logsigmoid(x) - (1 - y) * F.logsigmoid(-x)


def sigmoid_focal_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    weight: torch.Tensor | None = None,
    avg_factor: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """torchvision's ``sigmoid_focal_loss`` with mmdet's weight/avg_factor (weight_reduce_loss):

    p = sig(x), p_t = p t + (1 - p)(1 - t), l = BCE(x, t) (1 - p_t)^gamma, times
    a_t = alpha t + (1 - alpha)(1 - t) when alpha >= 0 (alpha < 0: no alpha).
    """
    t = target.to(pred.dtype)
    p = torch.sigmoid(pred)
    p_t = p * t + (1 - p) * (1 - t)
    loss = bce_with_logits(pred, t) * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


# ---- boxes (SPEC 10.2) ----


def to_xyxy(boxes: torch.Tensor, bbox_format: str = "xyxy") -> torch.Tensor:
    """[...,4] as (x1, y1, x2, y2): "xyxy" as is; "xywh" (cx, cy, w, h) -> (cx - w/2, cy - h/2,
    cx + w/2, cy + h/2) (mmyolo's meaning)."""
    if bbox_format == "xyxy":
        return boxes
    if bbox_format != "xywh":
        raise ValueError(f"bbox_format must be 'xyxy' or 'xywh', got {bbox_format!r}")
    c, wh = boxes[..., :2], boxes[..., 2:]
    return torch.cat([c - wh / 2, c + wh / 2], dim=-1)


class BoxPair(NamedTuple):
    """The quantities of SPEC 10.2 for matched boxes p (pred) and g (target)."""

    inter: torch.Tensor  # I
    union: torch.Tensor  # U = A_p + A_g - I
    iou: torch.Tensor  # I / (U + eps)
    cw: torch.Tensor  # enclosing box width
    ch: torch.Tensor  # enclosing box height
    dx: torch.Tensor  # centre_g - centre_p, x
    dy: torch.Tensor  # centre_g - centre_p, y
    rho2: torch.Tensor  # dx^2 + dy^2
    wp: torch.Tensor
    hp: torch.Tensor
    wg: torch.Tensor
    hg: torch.Tensor


def box_pair(
    pred: torch.Tensor, target: torch.Tensor, *, bbox_format: str = "xyxy", eps: float = 1e-6
) -> BoxPair:
    """:class:`BoxPair` of boxes [...,4] (broadcast against each other)."""
    p = to_xyxy(pred, bbox_format)
    g = to_xyxy(target, bbox_format)
    px1, py1, px2, py2 = p[..., 0], p[..., 1], p[..., 2], p[..., 3]
    gx1, gy1, gx2, gy2 = g[..., 0], g[..., 1], g[..., 2], g[..., 3]
    wp, hp = px2 - px1, py2 - py1
    wg, hg = gx2 - gx1, gy2 - gy1
    iw = torch.clamp(torch.minimum(px2, gx2) - torch.maximum(px1, gx1), min=0)
    ih = torch.clamp(torch.minimum(py2, gy2) - torch.maximum(py1, gy1), min=0)
    inter = iw * ih
    union = wp * hp + wg * hg - inter
    iou = inter / (union + eps)
    cw = torch.maximum(px2, gx2) - torch.minimum(px1, gx1)
    ch = torch.maximum(py2, gy2) - torch.minimum(py1, gy1)
    dx = (gx1 + gx2) / 2 - (px1 + px2) / 2
    dy = (gy1 + gy2) / 2 - (py1 + py2) / 2
    rho2 = dx**2 + dy**2
    return BoxPair(inter, union, iou, cw, ch, dx, dy, rho2, wp, hp, wg, hg)


def compute_iou(
    box1: torch.Tensor,
    box2: torch.Tensor,
    *,
    aligned: bool = True,
    bbox_format: str = "xyxy",
    eps: float = 1e-6,
) -> torch.Tensor:
    """IoU = I / (U + eps): elementwise over broadcast [...,4] pairs (``aligned``, mmdet's
    ``is_aligned``), or [N,M] for box1 [N,4] x box2 [M,4] (torchvision's ``box_iou``)."""
    if not aligned:
        box1, box2 = box1[:, None, :], box2[None, :, :]
    return box_pair(box1, box2, bbox_format=bbox_format, eps=eps).iou


def compute_giou(
    box1: torch.Tensor,
    box2: torch.Tensor,
    *,
    aligned: bool = True,
    bbox_format: str = "xyxy",
    eps: float = 1e-6,
) -> torch.Tensor:
    """GIoU = IoU - (A_c - U) / (A_c + eps), A_c = cw ch; aligned pairs or [N,M] as
    :func:`compute_iou` (torchvision's ``generalized_box_iou``)."""
    if not aligned:
        box1, box2 = box1[:, None, :], box2[None, :, :]
    b = box_pair(box1, box2, bbox_format=bbox_format, eps=eps)
    area_c = b.cw * b.ch
    return b.iou - (area_c - b.union) / (area_c + eps)
