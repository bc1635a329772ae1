"""Reference detection losses of the registry (SPEC 10.2): the elementwise loss ``l`` of each row
(no reduction: :func:`..utils.reduce_with_validity` applies SPEC 9.2's rules).

Boxes ``pred``, ``target`` [...,4] are matched pairs (broadcast), "xyxy" (x1, y1, x2, y2) or
"xywh" (cx, cy, w, h; mmyolo's meaning) -> l [...]. With I the intersection, U = A_p + A_g - I,
IoU = I / (U + eps), the enclosing box (cw, ch), A_c = cw ch, c2 = cw^2 + ch^2 + eps, rho2 the
squared distance of the centres and (w_p, h_p), (w_g, h_g) the sizes (all from
:func:`..utils.box_pair`). No IoU-family value is clamped. A box loss's sample weight [...,4] is
averaged over the last axis (mmdet): :func:`box_weight`.

Choices where SPEC 10.2 is silent or ambiguous:

- SIoU is mmyolo's ``bbox_overlaps(iou_mode="siou")`` term by term, eps placement included: eps is
  added to the centre offsets (sx, sy) = centre_g - centre_p + eps (used in the angle and in the
  distance cost), and to both heights in the shape cost (mmyolo's ``h1 = y2 - y1 + eps``), not to the
  widths and not to (cw, ch). Consequence (mmyolo's too): when both boxes have zero width (or both
  zero height at the same y) the shape (or distance) cost is 0/0 and ``l`` is NaN; the registry's
  masking of zero-weight elements (SPEC 9.2 rule 1) is what keeps padded boxes out.
  The angle cost is written sin(2 asin(m/s)) as the row; mmyolo's cos(2 asin(m/s) - pi/2) is the
  same value.
- SmoothL1 with beta = 0 is written as d (the quadratic branch would divide by 0).
- QualityFocalLoss: labels outside [0, C) (C = background) give q = 0 for every class (mmdet's
  ``pos = (label >= 0) & (label < C)``: every other label is a negative), a row that counts; the
  scores take x's dtype. DFL: y is not clamped (mmdet clamps it to R - 0.01 upstream); lo and hi
  are; a NaN y gives a NaN l (its bins are gathered at 0, never at an out-of-range index).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .utils import bce_with_logits, box_pair, convert_to_one_hot

__all__ = [
    "balanced_l1_loss",
    "box_weight",
    "ciou_loss",
    "diou_loss",
    "distribution_focal_loss",
    "eiou_loss",
    "giou_loss",
    "iou_loss",
    "l1_loss",
    "quality_focal_loss",
    "siou_loss",
    "smooth_l1_loss",
    "varifocal_loss",
]


def box_weight(weight: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """A box loss's weight: [...,4] averaged over the last axis (mmdet), [...] as is."""
    if weight.dim() == loss.dim() + 1 and weight.shape[-1] == 4:
        return weight.mean(dim=-1)
    return weight


# ---- the IoU family ----


def iou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    mode: str = "log",
    eps: float = 1e-6,
    bbox_format: str = "xyxy",
) -> torch.Tensor:
    """i = max(IoU, eps): "linear" 1 - i, "square" 1 - i^2, "log" -log i (mmdet)."""
    b = box_pair(pred, target, bbox_format=bbox_format, eps=eps)
    i = torch.clamp(b.iou, min=eps)
    if mode == "linear":
        return 1 - i
    if mode == "square":
        return 1 - i**2
    if mode == "log":
        return -torch.log(i)
    raise ValueError(f"mode must be linear, square or log, got {mode!r}")


def giou_loss(
    pred: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-6, bbox_format: str = "xyxy"
) -> torch.Tensor:
    """1 - IoU + (A_c - U) / (A_c + eps), A_c = cw ch (U without eps)."""
    b = box_pair(pred, target, bbox_format=bbox_format, eps=eps)
    area_c = b.cw * b.ch
    return 1 - b.iou + (area_c - b.union) / (area_c + eps)


def diou_loss(
    pred: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-6, bbox_format: str = "xyxy"
) -> torch.Tensor:
    """1 - IoU + rho2 / c2, c2 = cw^2 + ch^2 + eps."""
    b = box_pair(pred, target, bbox_format=bbox_format, eps=eps)
    c2 = b.cw**2 + b.ch**2 + eps
    return 1 - b.iou + b.rho2 / c2


def ciou_loss(
    pred: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-6, bbox_format: str = "xyxy"
) -> torch.Tensor:
    """1 - IoU + rho2 / c2 + a v, v = (4/pi^2)(atan(w_g/(h_g + eps)) - atan(w_p/(h_p + eps)))^2,
    a = v / (1 - IoU + v + eps) without gradient (torchvision; no IoU > 0.5 gate)."""
    b = box_pair(pred, target, bbox_format=bbox_format, eps=eps)
    c2 = b.cw**2 + b.ch**2 + eps
    v = (4 / math.pi**2) * (torch.atan(b.wg / (b.hg + eps)) - torch.atan(b.wp / (b.hp + eps))) ** 2
    a = (v / (1 - b.iou + v + eps)).detach()
    return 1 - b.iou + b.rho2 / c2 + a * v


def eiou_loss(
    pred: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-6, bbox_format: str = "xyxy"
) -> torch.Tensor:
    """1 - IoU + rho2 / c2 + (w_p - w_g)^2 / (cw^2 + eps) + (h_p - h_g)^2 / (ch^2 + eps)
    (Efficient-IoU, Zhang et al.)."""
    b = box_pair(pred, target, bbox_format=bbox_format, eps=eps)
    c2 = b.cw**2 + b.ch**2 + eps
    return (
        1
        - b.iou
        + b.rho2 / c2
        + (b.wp - b.wg) ** 2 / (b.cw**2 + eps)
        + (b.hp - b.hg) ** 2 / (b.ch**2 + eps)
    )


def siou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    theta: float = 4,
    eps: float = 1e-6,
    bbox_format: str = "xyxy",
) -> torch.Tensor:
    """1 - IoU + (D + O) / 2 (Gevorgyan), mmyolo's ``bbox_overlaps(iou_mode="siou")``:

    (sx, sy) = centre_g - centre_p + eps, s = sqrt(sx^2 + sy^2),
    A = sin(2 asin(min(|sx|, |sy|) / s)) (angle cost),
    D = sum_{t=x,y} 1 - exp(-(2 - A)(s_t / c_t)^2), (c_x, c_y) = (cw, ch),
    O = sum_{t=w,h} (1 - exp(-|t_p - t_g| / max(t_p, t_g)))^theta, the heights + eps (mmyolo).
    """
    b = box_pair(pred, target, bbox_format=bbox_format, eps=eps)
    sx = b.dx + eps
    sy = b.dy + eps
    s = torch.sqrt(sx**2 + sy**2)
    angle = torch.sin(2 * torch.asin(torch.minimum(sx.abs(), sy.abs()) / s))
    gamma = 2 - angle
    distance = (1 - torch.exp(-gamma * (sx / b.cw) ** 2)) + (
        1 - torch.exp(-gamma * (sy / b.ch) ** 2)
    )
    hp, hg = b.hp + eps, b.hg + eps
    omega_w = (b.wp - b.wg).abs() / torch.maximum(b.wp, b.wg)
    omega_h = (hp - hg).abs() / torch.maximum(hp, hg)
    shape = (1 - torch.exp(-omega_w)) ** theta + (1 - torch.exp(-omega_h)) ** theta
    return 1 - b.iou + (distance + shape) / 2


# ---- elementwise regression ----


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d = |pred - target|; any shape -> the same shape."""
    return (pred - target.to(pred.dtype)).abs()


def smooth_l1_loss(pred: torch.Tensor, target: torch.Tensor, *, beta: float = 1.0) -> torch.Tensor:
    """d = |pred - target|: 0.5 d^2 / beta if d < beta, else d - 0.5 beta; beta = 0 is d (L1)."""
    d = (pred - target.to(pred.dtype)).abs()
    if beta == 0:
        return d
    return torch.where(d < beta, 0.5 * d**2 / beta, d - 0.5 * beta)


def balanced_l1_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 0.5,
    gamma: float = 1.5,
    beta: float = 1.0,
) -> torch.Tensor:
    """Libra R-CNN, d = |pred - target|, b = e^(gamma/alpha) - 1:
    d < beta: (alpha/b)(b d + 1) ln(b d / beta + 1) - alpha d; else gamma d + gamma/b - alpha beta.

    b as ``expm1`` and ln(1 + u) as ``log1p`` (the same formula; in float64 the small branch then
    loses about eps64 / (b d) relatively to the cancellation of its two terms: 1e-10 at the
    registry's smallest b, 1e-6, and d = 1; ``exp - 1`` and ``log(1 + u)`` lost far more, and
    b = 0 for gamma / alpha below 1e-16)."""
    d = (pred - target.to(pred.dtype)).abs()
    b = math.expm1(gamma / alpha)
    small = (alpha / b) * (b * d + 1) * torch.log1p(b * d / beta) - alpha * d
    large = gamma * d + gamma / b - alpha * beta
    return torch.where(d < beta, small, large)


# ---- GFL / VFL classification ----


def quality_focal_loss(
    x: torch.Tensor,
    target: tuple[torch.Tensor, torch.Tensor] | torch.Tensor,
    *,
    beta: float = 2.0,
) -> torch.Tensor:
    """l = sum_c BCE(x_c, q_c) |q_c - sig(x_c)|^beta (GFL); x [N,C,*] -> l [N,*].

    target: (labels [N,*] in [0, C] (C = background), scores [N,*]) -> q = the score at the
    label's class, 0 elsewhere; or q [N,C,*] directly.
    """
    if isinstance(target, (tuple, list)):
        labels, scores = target
        t = convert_to_one_hot(labels, x.shape[1], dtype=x.dtype)  # [N,C,*]
        q = t * scores.to(x.dtype).unsqueeze(1)
    else:
        q = target.to(x.dtype)
    return (bce_with_logits(x, q) * _abs_diff_pow(x, q, beta)).sum(dim=1)


def _abs_diff_pow(x: torch.Tensor, q: torch.Tensor, beta: float) -> torch.Tensor:
    """|q - sig(x)|^beta as exp(beta log|q - sig(x)|), the log taken without rounding sig(x) to
    0 or 1 (``** beta`` of the rounded value is 1 in float64 too from |x| ~ 37, and wrong for a
    large beta long before): logsigmoid(x) at q = 0, logsigmoid(-x) at q = 1, log|q - sig(x)|
    for a soft q; beta = 0 gives 1 (0^0 = 1)."""
    if beta == 0:
        return torch.ones_like(x)
    soft = (q > 0) & (q < 1)
    d_soft = torch.where(soft, (q - torch.sigmoid(x)).abs(), 1.0)  # (elsewhere: no 0 * inf)
    log_d = torch.where(q == 0, F.logsigmoid(x), F.logsigmoid(-x))
    log_d = torch.where(soft, torch.log(d_soft), log_d)
    return torch.exp(beta * log_d)


def distribution_focal_loss(x: torch.Tensor, y: torch.Tensor, *, reg_max: int = 16) -> torch.Tensor:
    """DFL (GFL): lo = clamp(floor(y), 0, R - 1), hi = lo + 1,
    l = (hi - y) CE(x, lo) + (y - lo) CE(x, hi), CE(x, k) = -log softmax(x)_k over the last axis;
    x [..., R+1], y [...] in [0, R] -> l [...]."""
    y = y.to(x.dtype)
    lo = torch.clamp(torch.floor(y), 0, reg_max - 1)
    hi = lo + 1
    log_p = F.log_softmax(x, dim=-1)
    ilo = torch.where(torch.isnan(lo), 0.0, lo).long()  # a NaN y: NaN weights, bins gathered at 0
    ce_lo = -log_p.gather(-1, ilo.unsqueeze(-1)).squeeze(-1)
    ce_hi = -log_p.gather(-1, (ilo + 1).unsqueeze(-1)).squeeze(-1)
    return (hi - y) * ce_lo + (y - lo) * ce_hi


def varifocal_loss(
    x: torch.Tensor,
    q: torch.Tensor,
    *,
    alpha: float = 0.75,
    gamma: float = 2.0,
    iou_weighted: bool = True,
) -> torch.Tensor:
    """l = BCE(x, q) (q if q > 0 else alpha sig(x)^gamma) (VFL, mmdet); ``iou_weighted=False``: 1
    instead of q; x, q [N,C,*] -> [N,C,*]."""
    q = q.to(x.dtype)
    pos = q if iou_weighted else torch.ones_like(q)
    # sig(x)^gamma = exp(gamma logsigmoid(x)): exact where sig(x) rounds to 1 (gamma up to 1e30)
    neg = alpha * (torch.exp(gamma * F.logsigmoid(x)) if gamma != 0 else torch.ones_like(x))
    return bce_with_logits(x, q) * torch.where(q > 0, pos, neg)
