"""Detection losses of the registry (docs/spec.md 12.5): the IoU family, SmoothL1/L1/BalancedL1
and the distribution focal loss, in plain PyTorch (they trace under
``torch.compile(fullgraph=True)`` with no graph break and no host sync).

Boxes ``pred``, ``target`` [...,4] are matched pairs, "xyxy" (x1, y1, x2, y2) or "xywh" (cx, cy,
w, h); ``weight`` [...] or [...,4] (averaged over the last axis). With I the intersection,
U = A_p + A_g - I, IoU = I / (U + eps), the enclosing box (cw, ch), A_c = cw ch,
c2 = cw^2 + ch^2 + eps and rho2 the squared distance of the centres:

    IoU   i = max(IoU, eps): "linear" 1 - i, "square" 1 - i^2, "log" -log i
    GIoU  1 - IoU + (A_c - U) / (A_c + eps)
    DIoU  1 - IoU + rho2 / c2
    CIoU  1 - IoU + rho2 / c2 + a v, v = 4/pi^2 (atan(w_g/(h_g+eps)) - atan(w_p/(h_p+eps)))^2,
          a = v / (1 - IoU + v + eps) (no gradient)
    EIoU  1 - IoU + rho2 / c2 + (w_p - w_g)^2 / (cw^2 + eps) + (h_p - h_g)^2 / (ch^2 + eps)
    SIoU  1 - IoU + (D + O) / 2 (mmyolo; see ``SIoULoss``)

QualityFocalLoss and VariFocalLoss are fused dense losses (``registry.dense``, the sigmoid kernel).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..validation import (
    check_bool,
    check_choice,
    check_exponent,
    check_floating,
    check_number,
    check_tensor,
    shape_str,
)
from .base_loss import BaseLoss
from .builder import LOSSES
from .dense import (
    SG_QFL,
    SG_VFL,
    T_DENSE,
    T_SCORE,
    DenseSpec,
    FusedLoss,
    as_rows,
    check_dense_target,
    check_index_target,
    check_logits,
    dense_as_rows,
    index_rows,
)
from .utils import BOX_FORMATS, BoxTerms, box_terms, expand_weight


def _check_pair(pred: Any, target: Any, last: int | None = None) -> None:
    check_tensor("pred", pred)
    check_floating("pred", pred)
    check_tensor("target", target)
    if last is not None and (pred.dim() == 0 or pred.shape[-1] != last):
        raise ValueError(f"pred: expected shape [..., {last}], got {shape_str(pred)}")
    if target.shape != pred.shape:
        raise ValueError(f"target: expected the shape of pred {shape_str(pred)}, got "
                         f"{shape_str(target)}")  # fmt: skip


class _BoxLoss(BaseLoss):
    """A loss of matched boxes [...,4] -> [...]; weight [...] or [...,4] (averaged)."""

    OPTIONS: ClassVar[dict[str, Any]] = {"eps": 1e-6, "bbox_format": "xyxy"}

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        options["eps"] = check_number("eps", options["eps"], nonneg=True)
        check_choice("bbox_format", options["bbox_format"], BOX_FORMATS)

    def _weight(self, weight: Tensor, loss: Tensor) -> Tensor:
        if weight.dim() == loss.dim() + 1 and weight.shape[-1] == 4:
            return weight.mean(-1)
        return weight

    def _mask_inputs(self, pred, target, weight):
        if not (isinstance(pred, Tensor) and isinstance(target, Tensor)) or pred.dim() == 0:
            return pred, target
        w = self._weight(weight, pred[..., 0])
        try:
            keep = (w != 0).expand(pred.shape[:-1])[..., None]
        except RuntimeError:
            return pred, target  # a bad weight: the rules name it
        # the box (0, 0, 1, 1) (a unit box in either format), built on the device
        unit = (torch.arange(4, device=pred.device) >= 2).to(pred.dtype)
        return torch.where(keep, pred, unit), torch.where(keep, target, unit.to(target.dtype))

    def _forward(self, pred, target, **options):
        _check_pair(pred, target, 4)
        cdt = torch.float64 if pred.dtype == torch.float64 else torch.float32
        t = box_terms(pred.to(cdt), target.detach().to(cdt), options["bbox_format"],
                      options["eps"])  # fmt: skip
        return self._box_loss(t, **options), None

    def _box_loss(self, t: BoxTerms, **options) -> Tensor:
        raise NotImplementedError


@LOSSES.register_module()
class IoULoss(_BoxLoss):
    """i = max(IoU, eps): "linear" 1 - i, "square" 1 - i^2, "log" -log i."""

    OPTIONS: ClassVar[dict[str, Any]] = {**_BoxLoss.OPTIONS, "mode": "log"}

    @classmethod
    def check_options(cls, options):
        super().check_options(options)
        check_choice("mode", options["mode"], ("linear", "square", "log"))

    def _box_loss(self, t, *, eps, mode, **_):
        i = t.iou.clamp(min=eps)
        if mode == "linear":
            return 1 - i
        return 1 - i * i if mode == "square" else -torch.log(i)


@LOSSES.register_module()
class GIoULoss(_BoxLoss):
    """1 - IoU + (A_c - U) / (A_c + eps)."""

    def _box_loss(self, t, *, eps, **_):
        area_c = t.enclose_w * t.enclose_h
        return 1 - t.iou + (area_c - t.union) / (area_c + eps)


def _distance_penalty(t: BoxTerms, eps: float) -> Tensor:
    return t.rho2 / (t.enclose_w**2 + t.enclose_h**2 + eps)


@LOSSES.register_module()
class DIoULoss(_BoxLoss):
    """1 - IoU + rho2 / c2."""

    def _box_loss(self, t, *, eps, **_):
        return 1 - t.iou + _distance_penalty(t, eps)


@LOSSES.register_module()
class CIoULoss(_BoxLoss):
    """1 - IoU + rho2 / c2 + a v (a without gradient)."""

    def _box_loss(self, t, *, eps, **_):
        (wp, hp), (wg, hg) = t.size_p, t.size_g
        v = (4 / math.pi**2) * (torch.atan(wg / (hg + eps)) - torch.atan(wp / (hp + eps))) ** 2
        with torch.no_grad():
            a = v / (1 - t.iou + v + eps)
        return 1 - t.iou + _distance_penalty(t, eps) + a * v


@LOSSES.register_module()
class EIoULoss(_BoxLoss):
    """1 - IoU + rho2 / c2 + (w_p - w_g)^2 / (cw^2 + eps) + (h_p - h_g)^2 / (ch^2 + eps)."""

    def _box_loss(self, t, *, eps, **_):
        (wp, hp), (wg, hg) = t.size_p, t.size_g
        return (1 - t.iou + _distance_penalty(t, eps) + (wp - wg) ** 2 / (t.enclose_w**2 + eps)
                + (hp - hg) ** 2 / (t.enclose_h**2 + eps))  # fmt: skip


def _safe_ratio(a: Tensor, b: Tensor) -> Tensor:
    """a / b where b > 0, else 0 (finite value and gradient at b = 0)."""
    pos = b > 0
    return torch.where(pos, a / torch.where(pos, b, torch.ones_like(b)), torch.zeros_like(a))


@LOSSES.register_module()
class SIoULoss(_BoxLoss):
    """1 - IoU + (D + O) / 2 (Gevorgyan), mmyolo's ``bbox_overlaps(iou_mode="siou")``:
    (sx, sy) = centre_g - centre_p + eps, s = |(sx, sy)|, A = sin(2 asin(min(|sx|, |sy|) / s)),
    D = sum_{x,y} 1 - exp(-(2 - A)(s_t / c_t)^2), O = sum_{w,h} (1 - exp(-|t_p - t_g| /
    max(t_p, t_g)))^theta (heights + eps). Where mmyolo divides 0 by 0 (zero-size enclosing box,
    two boxes of zero width or height) the ratio is taken as 0, its limit: finite values and
    gradients for degenerate pairs, mmyolo's value everywhere else."""

    OPTIONS: ClassVar[dict[str, Any]] = {**_BoxLoss.OPTIONS, "theta": 4.0}

    @classmethod
    def check_options(cls, options):
        super().check_options(options)
        options["theta"] = check_number("theta", options["theta"], positive=True)

    def _box_loss(self, t, *, eps, theta, **_):
        sx, sy = t.centre_offset[0] + eps, t.centre_offset[1] + eps
        s2 = sx * sx + sy * sy
        s = torch.sqrt(torch.where(s2 > 0, s2, torch.ones_like(s2)))
        sin_a = torch.clamp(_safe_ratio(torch.minimum(sx.abs(), sy.abs()), s), max=1.0)
        angle = torch.sin(2 * torch.asin(sin_a))
        gamma = 2 - angle
        dist = (1 - torch.exp(-gamma * _safe_ratio(sx, t.enclose_w) ** 2)) + (
            1 - torch.exp(-gamma * _safe_ratio(sy, t.enclose_h) ** 2)
        )
        (wp, hp), (wg, hg) = t.size_p, t.size_g
        hp, hg = hp + eps, hg + eps
        om_w = _safe_ratio((wp - wg).abs(), torch.maximum(wp, wg))
        om_h = _safe_ratio((hp - hg).abs(), torch.maximum(hp, hg))
        shape = (1 - torch.exp(-om_w)) ** theta + (1 - torch.exp(-om_h)) ** theta
        return 1 - t.iou + (dist + shape) / 2


class _ElementwiseLoss(BaseLoss):
    """pred, target of one shape -> that shape."""

    def _mask_inputs(self, pred, target, weight):
        if not (isinstance(pred, Tensor) and isinstance(target, Tensor)):
            return pred, target
        try:
            keep = weight != 0
            keep = keep.unsqueeze(1) if keep.dim() == pred.dim() - 1 else keep
            keep = keep.expand(pred.shape)
        except RuntimeError:
            return pred, target  # a bad weight: the rules name it
        zero = torch.zeros((), dtype=pred.dtype, device=pred.device)
        return torch.where(keep, pred, zero), torch.where(keep, target, zero.to(target.dtype))

    def _forward(self, pred, target, **options):
        _check_pair(pred, target)
        cdt = torch.float64 if pred.dtype == torch.float64 else torch.float32
        d = (pred.to(cdt) - target.detach().to(cdt)).abs()
        return self._of_distance(d, **options), None


@LOSSES.register_module()
class SmoothL1Loss(_ElementwiseLoss):
    """d = |pred - target|: 0.5 d^2 / beta if d < beta, else d - 0.5 beta (beta 0: L1)."""

    OPTIONS: ClassVar[dict[str, Any]] = {"beta": 1.0}

    @classmethod
    def check_options(cls, options):
        options["beta"] = check_number("beta", options["beta"], nonneg=True)

    def _of_distance(self, d, *, beta):
        if beta == 0:
            return d
        small = torch.where(d < beta, d, 0)  # (each branch finite where it is not taken)
        return torch.where(d < beta, 0.5 * small * small / beta, d - 0.5 * beta)


@LOSSES.register_module()
class L1Loss(_ElementwiseLoss):
    """|pred - target|."""

    def _of_distance(self, d):
        return d


@LOSSES.register_module()
class BalancedL1Loss(_ElementwiseLoss):
    """Libra R-CNN: d < beta: (alpha/b)(b d + 1) ln(b d / beta + 1) - alpha d, else gamma d +
    gamma / b - alpha beta, b = e^(gamma/alpha) - 1."""

    OPTIONS: ClassVar[dict[str, Any]] = {"alpha": 0.5, "gamma": 1.5, "beta": 1.0}

    @classmethod
    def check_options(cls, options):
        options["alpha"] = check_number("alpha", options["alpha"], positive=True)
        options["gamma"] = check_number("gamma", options["gamma"], positive=True)
        options["beta"] = check_number("beta", options["beta"], positive=True)

    def _of_distance(self, d, *, alpha, gamma, beta):
        b = math.exp(gamma / alpha) - 1
        ds = torch.where(d < beta, d, 0)  # (each branch finite where it is not taken)
        small = alpha / b * (b * ds + 1) * torch.log(b * ds / beta + 1) - alpha * ds
        return torch.where(d < beta, small, gamma * d + gamma / b - alpha * beta)


@LOSSES.register_module()
class DistributionFocalLoss(BaseLoss):
    """GFL's DFL: lo = clamp(floor(y), 0, R-1), hi = lo + 1: (hi - y) CE(x, lo) + (y - lo)
    CE(x, hi), softmax over the last axis; x [...,R+1], y [...] in [0, R] -> [...]. An element of
    weight 0 has its logits and target replaced by 0 (a NaN or inf target there stays hidden); a
    NaN target of nonzero weight gives a NaN loss."""

    OPTIONS: ClassVar[dict[str, Any]] = {"reg_max": 16}

    @classmethod
    def check_options(cls, options):
        r = options["reg_max"]
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"reg_max: expected an int >= 1, got {r!r}")

    def _mask_inputs(self, pred, target, weight):
        """A zero weight hides a non-finite element (spec 12.2 rule 1): its logits and target are
        replaced by 0 (finite value and gradients) before the formula."""
        tensors = all(isinstance(a, Tensor) for a in (pred, target, weight))
        if not tensors or pred.dim() == 0 or not pred.is_floating_point():
            return pred, target  # _forward or the rules name it
        if target.is_complex() or tuple(target.shape) != tuple(pred.shape[:-1]):
            return pred, target
        try:
            keep = expand_weight(weight, target.shape) != 0
            zero = torch.zeros((), dtype=pred.dtype, device=pred.device)
            return (torch.where(keep[..., None], pred, zero),
                    torch.where(keep, target, zero.to(target.dtype)))  # fmt: skip
        except (ValueError, RuntimeError):
            return pred, target  # a bad weight: the rules name it

    def _forward(self, pred, target, *, reg_max):
        check_tensor("pred", pred)
        check_floating("pred", pred)
        check_tensor("target", target)
        if target.is_complex():
            raise TypeError(f"target: expected a real tensor, got dtype {target.dtype}")
        if pred.dim() == 0 or pred.shape[-1] != reg_max + 1:
            raise ValueError(f"pred: expected shape [..., {reg_max + 1}] (reg_max + 1 bins), got "
                             f"{shape_str(pred)}")  # fmt: skip
        if tuple(target.shape) != tuple(pred.shape[:-1]):
            raise ValueError(f"target: expected shape {list(pred.shape[:-1])}, got "
                             f"{shape_str(target)}")  # fmt: skip
        cdt = torch.float64 if pred.dtype == torch.float64 else torch.float32
        y = target.detach().to(cdt)
        logp = torch.log_softmax(pred.to(cdt), dim=-1)
        lo = torch.floor(y).clamp(0, reg_max - 1)
        hi = lo + 1
        # a NaN target gives a NaN loss: its bins are gathered at 0 (no out-of-range index, no
        # device-side assert), its weights (hi - y, y - lo) are NaN
        ilo = torch.where(torch.isnan(lo), 0.0, lo).long()
        ce_lo = -logp.gather(-1, ilo[..., None])[..., 0]
        ce_hi = -logp.gather(-1, (ilo + 1)[..., None])[..., 0]
        return (hi - y) * ce_lo + (y - lo) * ce_hi, None


def _check_use_sigmoid(options: dict[str, Any]) -> None:
    if not check_bool("use_sigmoid", options["use_sigmoid"]):
        raise ValueError("use_sigmoid: only the sigmoid form is offered; got False")


@LOSSES.register_module()
class QualityFocalLoss(FusedLoss):
    """GFL's QFL, fused: sum_c BCE(x_c, q_c) |q_c - sig(x_c)|^beta, x [N,C,*] -> [N,*]; target
    (labels [N,*] in [0, C] (C = background), scores [N,*]) -> q = the score at the label's
    class, 0 elsewhere (any label outside [0, C) is the background, mmdet's rule: q = 0 for
    every class, a loss counted by "mean"); or q [N,C,*]."""

    OPTIONS: ClassVar[dict[str, Any]] = {"beta": 2.0, "use_sigmoid": True}

    @classmethod
    def check_options(cls, options):
        options["beta"] = check_exponent("beta", options["beta"])
        _check_use_sigmoid(options)

    def _plan(self, pred, target, options):
        x = check_logits(pred)
        n, rest = x.shape[0], tuple(x.shape[2:])
        if isinstance(target, (tuple, list)):
            if len(target) != 2:
                raise ValueError(f"target: expected (labels, scores), got {len(target)} tensors")
            labels = check_index_target(target[0], x, "target[0] (labels)")
            scores = check_tensor("target[1] (scores)", target[1])
            check_floating("target[1] (scores)", scores)
            if scores.shape != labels.shape:
                raise ValueError(f"target[1] (scores): expected the labels' shape "
                                 f"{shape_str(labels)}, got {shape_str(scores)}")  # fmt: skip
            spec = DenseSpec("sigmoid", SG_QFL, T_SCORE, True, a0=options["beta"])
            y = index_rows(labels)
            q = index_rows(scores.detach())
            return as_rows(x), y, q, None, None, spec, (n, *rest), False
        q = check_dense_target(target, x)
        spec = DenseSpec("sigmoid", SG_QFL, T_DENSE, True, a0=options["beta"])
        return as_rows(x), dense_as_rows(q, x), None, None, None, spec, (n, *rest), False


@LOSSES.register_module(name=["VariFocalLoss", "VarifocalLoss"])
class VariFocalLoss(FusedLoss):
    """VFL (mmdet), fused: BCE(x, q) (q if q > 0 else alpha sig(x)^gamma) (``iou_weighted``
    False: 1 instead of q); x, q [N,C,*] (q: the IoU at the gt class, 0 elsewhere) -> [N,C,*]."""

    OPTIONS: ClassVar[dict[str, Any]] = {
        "alpha": 0.75, "gamma": 2.0, "iou_weighted": True, "use_sigmoid": True,
    }  # fmt: skip

    @classmethod
    def check_options(cls, options):
        options["alpha"] = check_number("alpha", options["alpha"])
        options["gamma"] = check_exponent("gamma", options["gamma"])
        check_bool("iou_weighted", options["iou_weighted"])
        _check_use_sigmoid(options)

    def _plan(self, pred, target, options):
        x = check_logits(pred)
        q = check_dense_target(target, x)
        spec = DenseSpec("sigmoid", SG_VFL, T_DENSE, False, a0=options["alpha"],
                         a1=options["gamma"], flag=options["iou_weighted"])  # fmt: skip
        return as_rows(x), dense_as_rows(q, x), None, None, None, spec, tuple(x.shape), False
