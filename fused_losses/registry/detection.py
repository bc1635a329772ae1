"""Detection losses of the registry (docs/spec.md 12.5): the IoU family, SmoothL1/L1/BalancedL1
and the distribution focal loss, in plain PyTorch (they trace under
``torch.compile(fullgraph=True)`` with no graph break and no host sync).

Boxes ``pred``, ``target`` [...,4] are matched pairs, "xyxy" (x1, y1, x2, y2) or "xywh" (cx, cy,
w, h); ``weight`` [...] or [...,4] (averaged over the last axis). With I the intersection,
U = A_p + A_g - I, IoU = I / (U + eps), the enclosing box (cw, ch), A_c = cw ch,
c2 = cw^2 + ch^2 + eps and rho2 the squared distance of the centres (``utils.box_terms``: 1 - IoU,
A_c - U and the differences of centres and sizes without cancellation; any finite coordinates):

    IoU   i = max(IoU, eps): "linear" 1 - i, "square" 1 - i^2, "log" -log i
    GIoU  1 - IoU + (A_c - U) / (A_c + eps)
    DIoU  1 - IoU + rho2 / c2
    CIoU  1 - IoU + rho2 / c2 + a v, v = 4/pi^2 (atan(w_g/(h_g+eps)) - atan(w_p/(h_p+eps)))^2,
          a = v / (1 - IoU + v + eps) (no gradient)
    EIoU  1 - IoU + rho2 / c2 + (w_p - w_g)^2 / (cw^2 + eps) + (h_p - h_g)^2 / (ch^2 + eps)
    SIoU  1 - IoU + (D + O) / 2 (mmyolo; see ``SIoULoss``)

Backends: on the torch backend (the default on the CPU) the box losses are the PyTorch
expressions of ``box_terms`` and ``_box_loss``, differentiated by autograd (double backward
exact). On the triton backend (``fused_losses.triton_box``, ``kernels/box.py``) each call is one
elementwise kernel that evaluates the same terms and the hand-written reverse mode of that graph
(autograd's subgradients at ties, its NaN pattern for non-finite coordinates), writing l and
dl/dpred; the backward scales the stored gradient, and a double backward raises a RuntimeError
naming the loss. ``KIND`` (declared beside each ``_box_loss``) names the kernel's loss and
``_kernel_options`` passes its options (IoULoss's ``mode``, SIoULoss's ``theta``); a subclass
with a formula of its own and no ``KIND`` runs on the torch backend.

QualityFocalLoss and VariFocalLoss are fused dense losses (``registry.dense``, the sigmoid kernel).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..backend import resolve_backend
from ..validation import (
    check_bool,
    check_choice,
    check_exponent,
    check_floating,
    check_number,
    check_range,
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
    _NamedTritonOp,
    as_rows,
    check_dense_target,
    check_index_target,
    check_logits,
    dense_as_rows,
    index_rows,
)
from .utils import BOX_FORMATS, BoxTerms, box_terms, expand_weight


def _compute_dtype(pred: Tensor) -> torch.dtype:
    return torch.float64 if pred.dtype == torch.float64 else torch.float32


def _check_target(target: Any, pred: Tensor) -> Tensor:
    """A real tensor (floating, integer or bool) on pred's device: a TypeError (not a tensor,
    complex) or ValueError (another device) naming ``target``."""
    check_tensor("target", target)
    if target.is_complex():
        raise TypeError(f"target: expected a real tensor, got dtype {target.dtype}")
    if target.device != pred.device:
        raise ValueError(f"target: expected a tensor on {pred.device}, got one on {target.device}")
    return target


def _check_pair(pred: Any, target: Any, last: int | None = None) -> None:
    check_tensor("pred", pred)
    check_floating("pred", pred)
    _check_target(target, pred)
    if last is not None and (pred.dim() == 0 or pred.shape[-1] != last):
        raise ValueError(f"pred: expected shape [..., {last}], got {shape_str(pred)}")
    if target.shape != pred.shape:
        raise ValueError(f"target: expected the shape of pred {shape_str(pred)}, got "
                         f"{shape_str(target)}")  # fmt: skip


def _keep(weight: Tensor, shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """The elements the reduction keeps (``apply_weight_and_reduce``: the weight in the loss's
    dtype, expanded by ``expand_weight``, nonzero): the same rule, so that the masking of the
    inputs and the reduction agree; a weight that does not expand is its ValueError."""
    return expand_weight(weight.to(dtype), shape) != 0


def _box_weight(weight: Tensor, ndim: int, dtype: torch.dtype) -> Tensor:
    """A box loss's weight: [...,4] averaged over the last axis (an integer or bool weight in
    ``dtype``), [...] as is."""
    if weight.dim() == ndim + 1 and weight.shape[-1] == 4:
        return (weight if weight.is_floating_point() else weight.to(dtype)).mean(-1)
    return weight


def _batch_of_rows(pred: Tensor) -> int:
    """The "batchmean" divisor of a loss with a trailing axis per sample (box coordinates, DFL
    bins): the leading size of [N, ..., k], 1 for one unbatched sample [k]."""
    return pred.shape[0] if pred.dim() > 1 else 1


class _BoxLoss(BaseLoss):
    """A loss of matched boxes [...,4] -> [...]; weight [...] or [...,4] (averaged)."""

    OPTIONS: ClassVar[dict[str, Any]] = {"eps": 1e-6, "bbox_format": "xyxy"}

    def _batch(self, pred: Tensor) -> int:
        return _batch_of_rows(pred)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        options["eps"] = check_number("eps", options["eps"], nonneg=True)
        check_choice("bbox_format", options["bbox_format"], BOX_FORMATS)

    def _weight(self, weight: Tensor, loss: Tensor) -> Tensor:
        return _box_weight(weight, loss.dim(), loss.dtype)

    def _mask_inputs(self, pred, target, weight):
        """A box of weight 0 (spec 12.2 rule 1; the weight as the reduction takes it: averaged,
        in the loss's dtype, expanded by ``expand_weight``) is replaced by the box (0, 0, 1, 1)
        in pred and target: its loss and gradients are finite (a padded box of infinite
        coordinates included) before the reduction zeroes them."""
        _check_pair(pred, target, 4)
        cdt = _compute_dtype(pred)
        keep = _keep(_box_weight(weight, pred.dim() - 1, cdt), pred.shape[:-1], cdt)[..., None]
        # the box (0, 0, 1, 1) (a unit box in either format), built on the device
        unit = (torch.arange(4, device=pred.device) >= 2).to(pred.dtype)
        return torch.where(keep, pred, unit), torch.where(keep, target, unit.to(target.dtype))

    def _forward(self, pred, target, **options):
        _check_pair(pred, target, 4)
        kind = self._kernel_kind
        if kind is not None and resolve_backend(self.backend, pred.device) == "triton":
            from ..triton_box import box_loss_triton

            op = type(self).__name__  # the double-backward error's name (spec 8)

            def name():
                return op

            loss = box_loss_triton(pred, target, kind=kind, eps=options["eps"],
                                   bbox_format=options["bbox_format"],
                                   **self._kernel_options(options))  # fmt: skip
            return _NamedTritonOp.apply(name, loss), None
        cdt = _compute_dtype(pred)
        t = box_terms(pred.to(cdt), target.detach().to(cdt), options["bbox_format"],
                      options["eps"])  # fmt: skip
        return self._box_loss(t, **options), None

    KIND: ClassVar[str] = ""  # the loss of kernels/box.py (``KINDS``) on the triton backend
    # the KIND of the class whose ``_box_loss`` this class uses: a subclass with a formula of its
    # own and no KIND runs on the torch backend (``__init_subclass__``)
    _kernel_kind: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        owner = next(k for k in cls.__mro__ if "_box_loss" in k.__dict__)
        cls._kernel_kind = owner.__dict__.get("KIND") or None

    def _kernel_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The options of this loss that the triton kernel takes besides eps and bbox_format."""
        return {}

    def _box_loss(self, t: BoxTerms, **options) -> Tensor:
        raise NotImplementedError


@LOSSES.register_module()
class IoULoss(_BoxLoss):
    """i = max(IoU, eps): "linear" 1 - i, "square" 1 - i^2, "log" -log i."""

    OPTIONS: ClassVar[dict[str, Any]] = {**_BoxLoss.OPTIONS, "mode": "log"}
    KIND = "iou"

    @classmethod
    def check_options(cls, options):
        super().check_options(options)
        check_choice("mode", options["mode"], ("linear", "square", "log"))

    def _kernel_options(self, options):
        return {"mode": options["mode"]}

    def _box_loss(self, t, *, eps, mode, **_):
        # i = max(IoU, eps); where IoU >= eps, 1 - i is t.one_minus_iou (no cancellation):
        # 1 - i^2 = (1 - i)(1 + i), -log i = -log1p(-(1 - i)); a NaN IoU stays NaN
        low = t.iou < eps
        omi = t.one_minus_iou
        if mode == "linear":
            return torch.where(low, 1 - eps, omi)
        if mode == "square":
            return torch.where(low, 1 - eps * eps, omi * (1 + t.iou))
        omi = torch.where(low, 0, omi)  # (log1p(-1) = -inf where IoU = 0: no inf * 0 in backward)
        return torch.where(low, -math.log(eps) if eps > 0 else math.inf, -torch.log1p(-omi))


@LOSSES.register_module()
class GIoULoss(_BoxLoss):
    """1 - IoU + (A_c - U) / (A_c + eps)."""

    KIND = "giou"

    def _box_loss(self, t, **_):
        return t.one_minus_iou + t.enclose_gap / (t.enclose_w * t.enclose_h + t.eps_area)


def _distance_penalty(t: BoxTerms) -> Tensor:
    return t.rho2 / (t.enclose_w**2 + t.enclose_h**2 + t.eps_area)


@LOSSES.register_module()
class DIoULoss(_BoxLoss):
    """1 - IoU + rho2 / c2."""

    KIND = "diou"

    def _box_loss(self, t, **_):
        return t.one_minus_iou + _distance_penalty(t)


@LOSSES.register_module()
class CIoULoss(_BoxLoss):
    """1 - IoU + rho2 / c2 + a v (a without gradient)."""

    KIND = "ciou"

    def _box_loss(self, t, *, eps, **_):
        (wp, hp), (wg, hg), e = t.size_p, t.size_g, t.eps_len
        v = (4 / math.pi**2) * (torch.atan(wg / (hg + e)) - torch.atan(wp / (hp + e))) ** 2
        with torch.no_grad():
            a = v / (t.one_minus_iou + v + eps)
        return t.one_minus_iou + _distance_penalty(t) + a * v


@LOSSES.register_module()
class EIoULoss(_BoxLoss):
    """1 - IoU + rho2 / c2 + (w_p - w_g)^2 / (cw^2 + eps) + (h_p - h_g)^2 / (ch^2 + eps)."""

    KIND = "eiou"

    def _box_loss(self, t, **_):
        (dw, dh), e = t.size_diff, t.eps_area
        return (t.one_minus_iou + _distance_penalty(t) + dw**2 / (t.enclose_w**2 + e)
                + dh**2 / (t.enclose_h**2 + e))  # fmt: skip


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
    gradients for degenerate pairs, mmyolo's value everywhere else. 1 - exp(-u) is formed as
    -expm1(-u) (no cancellation for well-fitting boxes)."""

    OPTIONS: ClassVar[dict[str, Any]] = {**_BoxLoss.OPTIONS, "theta": 4.0}
    KIND = "siou"

    @classmethod
    def check_options(cls, options):
        super().check_options(options)
        options["theta"] = check_number("theta", options["theta"], positive=True)

    def _kernel_options(self, options):
        return {"theta": options["theta"]}

    def _box_loss(self, t, *, theta, **_):
        e = t.eps_len
        sx, sy = t.centre_offset[0] + e, t.centre_offset[1] + e
        s2 = sx * sx + sy * sy
        s = torch.sqrt(torch.where(s2 > 0, s2, torch.ones_like(s2)))
        sin_a = torch.clamp(_safe_ratio(torch.minimum(sx.abs(), sy.abs()), s), max=1.0)
        angle = torch.sin(2 * torch.asin(sin_a))
        gamma = 2 - angle
        dist = -torch.expm1(-gamma * _safe_ratio(sx, t.enclose_w) ** 2) - torch.expm1(
            -gamma * _safe_ratio(sy, t.enclose_h) ** 2
        )
        (wp, hp), (wg, hg), (dw, dh) = t.size_p, t.size_g, t.size_diff
        om_w = _safe_ratio(dw.abs(), torch.maximum(wp, wg))
        om_h = _safe_ratio(dh.abs(), torch.maximum(hp + e, hg + e))  # (h_p + e) - (h_g + e) = dh
        shape = (-torch.expm1(-om_w)) ** theta + (-torch.expm1(-om_h)) ** theta
        return t.one_minus_iou + (dist + shape) / 2


class _ElementwiseLoss(BaseLoss):
    """pred, target of one shape -> that shape."""

    def _mask_inputs(self, pred, target, weight):
        """An element of weight 0 (the weight as the reduction takes it, ``expand_weight``) has
        pred and target replaced by 0 (finite value and gradients) before the formula."""
        _check_pair(pred, target)
        keep = _keep(weight, pred.shape, _compute_dtype(pred))
        zero = torch.zeros((), dtype=pred.dtype, device=pred.device)
        return torch.where(keep, pred, zero), torch.where(keep, target, zero.to(target.dtype))

    def _forward(self, pred, target, **options):
        _check_pair(pred, target)
        cdt = _compute_dtype(pred)
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


BALANCED_L1_RANGE = (1e-15, 1e15)  # alpha and beta
BALANCED_L1_RATIO = (1e-6, 80.0)  # gamma / alpha: b = e^(gamma/alpha) - 1 in [1e-6, 5.5e34]
_LOG1P_SPLIT = 0.5  # BalancedL1Loss: y = b d / beta below it, the series form


def _h_series(y: Tensor, terms: int) -> Tensor:
    """h(y) = (y - log1p(y)) / y^2 for 0 <= y <= 1/2, without cancellation: with s = y/(2+y),
    log1p(y) = 2 atanh(s) = 2 s + 2 s^3 P(s^2), P = sum_k s^2k / (2k + 3), so
    h = (1 - 2 y P / (2+y)^2) / (2+y); s^2 <= 1/25, ``terms`` terms of P (6: float32, 12:
    float64) leave a relative error below the dtype's epsilon."""
    s = y / (2 + y)
    s2 = s * s
    p = torch.full_like(y, 1 / (2 * terms + 1))
    for k in range(terms - 2, -1, -1):
        p = 1 / (2 * k + 3) + s2 * p
    return (1 - 2 * y * p / (2 + y) ** 2) / (2 + y)


@LOSSES.register_module()
class BalancedL1Loss(_ElementwiseLoss):
    """Libra R-CNN: d < beta: (alpha/b)(b d + 1) ln(b d / beta + 1) - alpha d, else gamma d +
    gamma / b - alpha beta, b = e^(gamma/alpha) - 1.

    Options (at build time, a ValueError naming the option and the range): alpha and beta in
    [1e-15, 1e15], gamma / alpha in [1e-6, 80] (b from 1e-6 to 5.5e34: finite in float32, and
    the float64 reference is exact to about 1e-10 there). Formed without cancellation, with
    x = b d, y = x / beta, t = d / beta: for y < 1/2 as alpha t ((1 - beta) + x - (1 + x) y h(y)),
    h(y) = (y - log1p(y)) / y^2 by its series (``_h_series``); for y >= 1/2 as
    alpha ((1/b + d) log1p(y) - d); gamma / b = alpha (gamma/alpha) / expm1(gamma/alpha)."""

    OPTIONS: ClassVar[dict[str, Any]] = {"alpha": 0.5, "gamma": 1.5, "beta": 1.0}

    @classmethod
    def check_options(cls, options):
        lo, hi = BALANCED_L1_RANGE
        options["alpha"] = check_range("alpha", options["alpha"], lo, hi)
        options["beta"] = check_range("beta", options["beta"], lo, hi)
        gamma = check_number("gamma", options["gamma"], positive=True)
        ratio = gamma / options["alpha"]
        rlo, rhi = BALANCED_L1_RATIO
        if not rlo <= ratio <= rhi:
            raise ValueError(
                f"gamma: expected gamma / alpha in [{rlo:g}, {rhi:g}] (b = e^(gamma/alpha) - 1), "
                f"got gamma = {options['gamma']!r} with alpha = {options['alpha']!r} (ratio "
                f"{ratio:g})"
            )
        options["gamma"] = gamma

    def _of_distance(self, d, *, alpha, gamma, beta):
        r = gamma / alpha
        b = math.expm1(r)
        small_d = d < beta
        ds = torch.where(small_d, d, 0)  # (each branch finite where it is not taken)
        t = ds / beta  # in [0, 1)
        y = b * t
        series = y < _LOG1P_SPLIT
        ys = torch.where(series, y, 0)
        terms = 12 if d.dtype == torch.float64 else 6
        xs = beta * ys
        small = alpha * t * ((1 - beta) + xs - (1 + xs) * ys * _h_series(ys, terms))
        if b > _LOG1P_SPLIT:  # (else y < b is always in the series form)
            yd = torch.where(series, _LOG1P_SPLIT, y)
            direct = alpha * ((1 / b + ds) * torch.log1p(yd) - ds)
            small = torch.where(series, small, direct)
        large = gamma * d + alpha * (r / b - beta)  # gamma / b - alpha beta
        return torch.where(small_d, small, large)


@LOSSES.register_module()
class DistributionFocalLoss(BaseLoss):
    """GFL's DFL: lo = clamp(floor(y), 0, R-1), hi = lo + 1: (hi - y) CE(x, lo) + (y - lo)
    CE(x, hi), softmax over the last axis; x [...,R+1], y [...] in [0, R] -> [...]. An element of
    weight 0 has its logits and target replaced by 0 (a NaN or inf target there stays hidden); a
    NaN target of nonzero weight gives a NaN loss."""

    OPTIONS: ClassVar[dict[str, Any]] = {"reg_max": 16}

    def _batch(self, pred: Tensor) -> int:
        return _batch_of_rows(pred)

    @classmethod
    def check_options(cls, options):
        r = options["reg_max"]
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"reg_max: expected an int >= 1, got {r!r}")

    @staticmethod
    def _check(pred: Any, target: Any, reg_max: int) -> None:
        check_tensor("pred", pred)
        check_floating("pred", pred)
        _check_target(target, pred)
        if pred.dim() == 0 or pred.shape[-1] != reg_max + 1:
            raise ValueError(f"pred: expected shape [..., {reg_max + 1}] (reg_max + 1 bins), got "
                             f"{shape_str(pred)}")  # fmt: skip
        if tuple(target.shape) != tuple(pred.shape[:-1]):
            raise ValueError(f"target: expected shape {list(pred.shape[:-1])}, got "
                             f"{shape_str(target)}")  # fmt: skip

    def _mask_inputs(self, pred, target, weight):
        """A zero weight hides a non-finite element (spec 12.2 rule 1): its logits and target are
        replaced by 0 (finite value and gradients) before the formula; the weight as the
        reduction takes it (``expand_weight``; one that does not expand is its ValueError)."""
        self._check(pred, target, self.options["reg_max"])
        keep = _keep(weight, target.shape, _compute_dtype(pred))
        zero = torch.zeros((), dtype=pred.dtype, device=pred.device)
        return (torch.where(keep[..., None], pred, zero),
                torch.where(keep, target, zero.to(target.dtype)))  # fmt: skip

    def _forward(self, pred, target, *, reg_max):
        self._check(pred, target, reg_max)
        cdt = _compute_dtype(pred)
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
            if scores.device != x.device:
                raise ValueError(f"target[1] (scores): expected a tensor on {x.device}, got one "
                                 f"on {scores.device}")  # fmt: skip
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
