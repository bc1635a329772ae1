"""Classification losses of the registry (docs/spec.md 12.4), fused: each runs the dense softmax or
sigmoid kernels of ``kernels/classification.py`` (or their pure-PyTorch twin, the torch backend)
on logits ``x [N, C, *]`` ([N, C] or a dense map), with no softmax, log-softmax, one-hot or
elementwise loss in memory for "mean"/"sum", and the non-ignored count kept on the device.

    CrossEntropyLoss        (1-e) w_y (-log p_y) + (e/C) sum_c w_c (-log p_c)         -> [N,*]
    LabelSmoothLoss         the same with e = smoothing
    SoftCrossEntropyLoss    -sum_c w_c y_c log p_c                                   -> [N,*]
    BinaryCrossEntropyLoss  w_c (-pw_c y log sig(x) - (1-y) log(1-sig(x)))           -> [N,C,*]
    FocalLoss               sigmoid: BCE(x_c, t_c) a_t (1-p_t)^gamma w_c              -> [N,C,*]
                            softmax: -alpha_y (1-p_y)^gamma log p_y w_y               -> [N,*]
    BinaryFocalLoss         the sigmoid focal term on one logit                      -> x's shape
    MultiLabelFocalLoss     the sigmoid focal term per class, w_c                    -> [N,C,*]
    AsymmetricLoss          ASL (timm), reduction "sum" by default                   -> [N,C,*]

Targets are constants (detached, as in mmdet/mmseg). Index labels equal to ``ignore_index`` or
outside their range ([0, C) softmax, [0, C] sigmoid: C is the background) contribute 0 on both
backends and are not counted by "mean" (with ``ignore_index=None``, "mean" divides by numel).
A dense target is invalid where it equals ``ignore_index`` (per element; softmax FocalLoss, whose
l is per position: a position whose target equals it in any class), an integer target compared
in int64 (a value its dtype cannot hold, uint8 156 for -100, equals nothing). The focal powers
((1-p_t)^gamma, ASL's (1-pt)^g) are exp(g log u) with log u unrounded: exact for every exponent in
[0, 1e30] at saturated logits. A double backward raises a RuntimeError naming the class
("FocalLoss (triton backend): double backward ...").
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..validation import check_bool, check_exponent, check_number, shape_str
from .base_loss import check_ignore_index
from .builder import LOSSES
from .dense import (
    SG_ASL,
    SG_BCE,
    SG_BCE_PROB,
    SG_FOCAL,
    SM_CE,
    SM_FOCAL,
    SM_FOCAL_DENSE,
    SM_SOFT,
    T_DENSE,
    T_INDEX,
    DenseSpec,
    FusedLoss,
    as_rows,
    check_dense_target,
    check_index_target,
    check_logits,
    dense_as_rows,
    index_rows,
)


def check_vector_or_number(name: str, value: Any, allow_none: bool = True):
    """None, a finite number, or a sequence / 1-D tensor of finite numbers (one per class)."""
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name}: expected a number or one number per class, got None")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return check_number(name, value)
    if isinstance(value, Tensor):
        if value.dim() != 1 or not value.is_floating_point():
            raise ValueError(f"{name}: expected a 1-D floating tensor, got {shape_str(value)} "
                             f"{value.dtype}")  # fmt: skip
        return value
    if isinstance(value, (list, tuple)):
        return [check_number(f"{name}[{i}]", v) for i, v in enumerate(value)]
    raise TypeError(f"{name}: expected a number, a list of numbers or a 1-D tensor, got "
                    f"{type(value).__name__}")  # fmt: skip


def check_class_weight(options: dict[str, Any]) -> None:
    value = options.get("class_weight")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise TypeError("class_weight: expected one number per class (a list or a 1-D tensor)")
    options["class_weight"] = check_vector_or_number("class_weight", value)


class _SoftmaxIndexLoss(FusedLoss):
    """CE-type losses on index labels: x [N,C,*], y [N,*] -> l [N,*]."""

    CALL_OPTIONS: ClassVar[tuple[str, ...]] = ("ignore_index",)

    def _ce_plan(self, pred, target, options, smoothing: float):
        x = check_logits(pred)
        y = check_index_target(target, x)
        ig = check_ignore_index(options["ignore_index"])
        c = x.shape[1]
        spec = DenseSpec("softmax", SM_CE, T_INDEX, True, ig is not None,
                         ig if ig is not None else 0, a0=smoothing)  # fmt: skip
        cw = self._vector("class_weight", options["class_weight"], c, x)
        l_shape = (x.shape[0], *x.shape[2:])
        y2 = index_rows(y)
        return as_rows(x), y2, None, cw, None, spec, l_shape, ig is not None


@LOSSES.register_module()
class BinaryCrossEntropyLoss(FusedLoss):
    """w_c (-pw_c y log sig(x) - (1-y) log(1-sig(x))) (torch ``pos_weight``); ``with_logits``
    False: x is a probability and each log is clamped at -100. x [N,C,*]; y of x's shape (0/1 or
    soft) or index labels [N,*] (one-hot; C = 1: y itself) -> [N,C,*]."""

    OPTIONS: ClassVar[dict[str, Any]] = {
        "pos_weight": None, "with_logits": True, "class_weight": None, "ignore_index": -100,
    }  # fmt: skip
    CALL_OPTIONS: ClassVar[tuple[str, ...]] = ("ignore_index",)

    @classmethod
    def check_options(cls, options):
        options["pos_weight"] = check_vector_or_number("pos_weight", options["pos_weight"])
        check_bool("with_logits", options["with_logits"])
        check_class_weight(options)
        options["ignore_index"] = check_ignore_index(options["ignore_index"])

    def _plan(self, pred, target, options):
        return self._bce_plan(pred, target, options, options["pos_weight"],
                              options["class_weight"])  # fmt: skip

    def _bce_plan(self, pred, target, options, pos_weight, class_weight):
        x = check_logits(pred)
        ig = check_ignore_index(options["ignore_index"])
        c = x.shape[1]
        index = isinstance(target, Tensor) and target.dim() == x.dim() - 1
        if index:
            y = check_index_target(target, x)
        else:
            y = check_dense_target(target, x)
        pw = pos_weight if isinstance(pos_weight, (int, float)) else 1.0
        kind = SG_BCE if options["with_logits"] else SG_BCE_PROB
        if index and c > 1:
            spec = DenseSpec("sigmoid", kind, T_INDEX, False, ig is not None,
                             ig if ig is not None else 0, a0=pw)  # fmt: skip
            t = index_rows(y)
        else:  # dense targets; C = 1 index labels are the binary target itself
            spec = DenseSpec("sigmoid", kind, T_DENSE, False, ig is not None,
                             ig if ig is not None else 0, a0=pw)  # fmt: skip
            t = dense_as_rows(y.unsqueeze(1) if index else y, x)
        cp = self._vector("pos_weight", pos_weight, c, x)
        cw = self._vector("class_weight", class_weight, c, x)
        return as_rows(x), t, None, cw, cp, spec, tuple(x.shape), ig is not None


@LOSSES.register_module()
class CrossEntropyLoss(_SoftmaxIndexLoss, BinaryCrossEntropyLoss):
    """torch ``cross_entropy`` elementwise: (1-e) w_y (-log p_y) + (e/C) sum_c w_c (-log p_c),
    x [N,C,*], y [N,*] -> [N,*]. ``use_sigmoid=True`` (OpenMMLab) is the sigmoid form
    (``BinaryCrossEntropyLoss``), a ``class_weight`` then being torch's ``pos_weight`` (mmdet,
    mmseg)."""

    OPTIONS: ClassVar[dict[str, Any]] = {
        "class_weight": None, "ignore_index": -100, "label_smoothing": 0.0,
        "avg_non_ignore": True, "use_sigmoid": False, "use_mask": False,
    }  # fmt: skip

    @classmethod
    def check_options(cls, options):
        check_class_weight(options)
        options["ignore_index"] = check_ignore_index(options["ignore_index"])
        e = check_number("label_smoothing", options["label_smoothing"])
        if not 0 <= e <= 1:
            raise ValueError(f"label_smoothing: expected a number in [0, 1], got {e!r}")
        options["label_smoothing"] = e
        check_bool("avg_non_ignore", options["avg_non_ignore"])
        check_bool("use_sigmoid", options["use_sigmoid"])
        if check_bool("use_mask", options["use_mask"]):
            raise ValueError("use_mask: the mask cross-entropy (mmdet) is not offered; got True")
        if options["use_sigmoid"] and e != 0:
            raise ValueError("label_smoothing: not offered with use_sigmoid=True")

    def _plan(self, pred, target, options):
        if options["use_sigmoid"]:
            bce = {**options, "with_logits": True}
            return self._bce_plan(pred, target, bce, options["class_weight"], None)
        return self._ce_plan(pred, target, options, options["label_smoothing"])


@LOSSES.register_module()
class LabelSmoothLoss(_SoftmaxIndexLoss):
    """CrossEntropyLoss with the smoothed target (1-e) t + e/C, e = ``smoothing``."""

    OPTIONS: ClassVar[dict[str, Any]] = {
        "smoothing": 0.1, "num_classes": None, "class_weight": None, "ignore_index": -100,
    }  # fmt: skip

    @classmethod
    def check_options(cls, options):
        e = check_number("smoothing", options["smoothing"])
        if not 0 <= e <= 1:
            raise ValueError(f"smoothing: expected a number in [0, 1], got {e!r}")
        options["smoothing"] = e
        n = options["num_classes"]
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"num_classes: expected a positive int or None, got {n!r}")
        check_class_weight(options)
        options["ignore_index"] = check_ignore_index(options["ignore_index"])

    def _plan(self, pred, target, options):
        n = options["num_classes"]
        x = check_logits(pred)
        if n is not None and n != x.shape[1]:
            raise ValueError(f"num_classes: {n} but pred has C = {x.shape[1]} classes "
                             f"({shape_str(x)})")  # fmt: skip
        return self._ce_plan(x, target, options, options["smoothing"])


@LOSSES.register_module()
class SoftCrossEntropyLoss(FusedLoss):
    """-sum_c w_c y_c log p_c; x, y [N,C,*] (y probabilities) -> [N,*]."""

    OPTIONS: ClassVar[dict[str, Any]] = {"class_weight": None}

    @classmethod
    def check_options(cls, options):
        check_class_weight(options)

    def _plan(self, pred, target, options):
        x = check_logits(pred)
        y = check_dense_target(target, x)
        spec = DenseSpec("softmax", SM_SOFT, T_DENSE, True)
        cw = self._vector("class_weight", options["class_weight"], x.shape[1], x)
        l_shape = (x.shape[0], *x.shape[2:])
        return as_rows(x), dense_as_rows(y, x), None, cw, None, spec, l_shape, False


def _check_focal(options, per_class_alpha: bool = True) -> None:
    if per_class_alpha:
        options["alpha"] = check_vector_or_number("alpha", options["alpha"], allow_none=False)
    else:
        options["alpha"] = check_number("alpha", options["alpha"])
    options["gamma"] = check_exponent("gamma", options["gamma"])


@LOSSES.register_module()
class FocalLoss(FusedLoss):
    """``use_sigmoid`` (default): BCE(x_c, t_c) a_t (1-p_t)^gamma w_c -> [N,C,*], y [N,*] in
    [0, C] (C = background) or a one-hot/soft target of x's shape (an element equal to
    ``ignore_index`` invalid); softmax: -alpha_y (1-p_y)^gamma log p_y w_y -> [N,*] (a target of
    x's shape: -sum_c t_c w_c alpha_c (1-p_c)^gamma log p_c, a position whose target equals
    ``ignore_index`` in any class invalid: 0, not counted by "mean"). alpha: a float or one per
    class; gamma in [0, 1e30], the power (1-p)^gamma formed as exp(gamma log(1-p)) with an
    unrounded log(1-p) (exact for saturated logits)."""

    OPTIONS: ClassVar[dict[str, Any]] = {
        "alpha": 0.25, "gamma": 2.0, "use_sigmoid": True, "class_weight": None,
        "ignore_index": -100,
    }  # fmt: skip
    CALL_OPTIONS: ClassVar[tuple[str, ...]] = ("ignore_index",)

    @classmethod
    def check_options(cls, options):
        _check_focal(options)
        check_bool("use_sigmoid", options["use_sigmoid"])
        check_class_weight(options)
        options["ignore_index"] = check_ignore_index(options["ignore_index"])

    def _plan(self, pred, target, options):
        x = check_logits(pred)
        ig = check_ignore_index(options["ignore_index"])
        index = isinstance(target, Tensor) and target.dim() == x.dim() - 1
        y = check_index_target(target, x) if index else check_dense_target(target, x)
        alpha, gamma = options["alpha"], options["gamma"]
        a0 = alpha if isinstance(alpha, float) else 0.0
        c = x.shape[1]
        cp = self._vector("alpha", alpha, c, x)
        cw = self._vector("class_weight", options["class_weight"], c, x)
        n, rest = x.shape[0], tuple(x.shape[2:])
        has_ig = ig is not None
        igv = ig if has_ig else 0
        if options["use_sigmoid"]:
            spec = DenseSpec("sigmoid", SG_FOCAL, T_INDEX if index else T_DENSE, False, has_ig,
                             igv, a0=a0, a1=gamma)  # fmt: skip
            t = index_rows(y) if index else dense_as_rows(y, x)
            return as_rows(x), t, None, cw, cp, spec, tuple(x.shape), has_ig
        if index:
            spec = DenseSpec("softmax", SM_FOCAL, T_INDEX, True, has_ig, igv, a0=a0, a1=gamma)
            return (as_rows(x), index_rows(y), None, cw, cp, spec, (n, *rest),
                    has_ig)  # fmt: skip
        # a dense target: a position whose target equals ignore_index in any class is invalid
        spec = DenseSpec("softmax", SM_FOCAL_DENSE, T_DENSE, True, has_ig, igv, a0=a0, a1=gamma)
        return as_rows(x), dense_as_rows(y, x), None, cw, cp, spec, (n, *rest), has_ig


@LOSSES.register_module()
class BinaryFocalLoss(FusedLoss):
    """The sigmoid focal term on one logit: x [N,*] or [N,1,*]; y of x's shape (soft allowed) or
    [N,*] for x [N,1,*] -> x's shape."""

    OPTIONS: ClassVar[dict[str, Any]] = {"alpha": 0.25, "gamma": 2.0, "ignore_index": -100}
    CALL_OPTIONS: ClassVar[tuple[str, ...]] = ("ignore_index",)

    @classmethod
    def check_options(cls, options):
        _check_focal(options, per_class_alpha=False)
        options["ignore_index"] = check_ignore_index(options["ignore_index"])

    def _plan(self, pred, target, options):
        x = check_logits(pred, min_dim=1)
        if not isinstance(target, Tensor):
            raise TypeError(f"target: expected a torch.Tensor, got {type(target).__name__}")
        one_logit = x.dim() >= 2 and x.shape[1] == 1
        if target.shape != x.shape and not (
            one_logit and tuple(target.shape) == (x.shape[0], *x.shape[2:])
        ):
            raise ValueError(f"target: expected pred's shape {shape_str(x)}"
                             + (" or that shape without dim 1" if one_logit else "")
                             + f", got {shape_str(target)}")  # fmt: skip
        if target.is_complex():
            raise TypeError(f"target: expected a real tensor, got dtype {target.dtype}")
        if target.device != x.device:
            raise ValueError(f"target: expected a tensor on {x.device}, got one on {target.device}")
        ig = check_ignore_index(options["ignore_index"])
        n = x.shape[0]
        x3 = x.reshape(n, 1, math.prod(x.shape[1:]))
        t = target.detach()
        t3 = (t.to(x.dtype) if t.dtype == torch.bool else t).reshape(n, 1, math.prod(x.shape[1:]))
        spec = DenseSpec("sigmoid", SG_FOCAL, T_DENSE, False, ig is not None,
                         ig if ig is not None else 0, a0=options["alpha"],
                         a1=options["gamma"])  # fmt: skip
        return x3, t3, None, None, None, spec, tuple(x.shape), ig is not None


@LOSSES.register_module()
class MultiLabelFocalLoss(FusedLoss):
    """The sigmoid focal term per class, w_c; x, y [N,C,*] (multi-hot or soft) -> [N,C,*]."""

    OPTIONS: ClassVar[dict[str, Any]] = {"alpha": 0.25, "gamma": 2.0, "class_weight": None}

    @classmethod
    def check_options(cls, options):
        _check_focal(options, per_class_alpha=False)
        check_class_weight(options)

    def _plan(self, pred, target, options):
        x = check_logits(pred)
        y = check_dense_target(target, x)
        spec = DenseSpec("sigmoid", SG_FOCAL, T_DENSE, False, a0=options["alpha"],
                         a1=options["gamma"])  # fmt: skip
        cw = self._vector("class_weight", options["class_weight"], x.shape[1], x)
        return as_rows(x), dense_as_rows(y, x), None, cw, None, spec, tuple(x.shape), False


@LOSSES.register_module()
class AsymmetricLoss(FusedLoss):
    """ASL (timm): -(y log max(q, eps) + (1-y) log max(1-q_m, eps)) (1-pt)^g, q = sig(x),
    q_m = max(q - clip, 0), pt = q y + (1-q_m)(1-y), g = g+ y + g- (1-y); x, y [N,C,*] ->
    [N,C,*]; the focusing weight detached when ``disable_torch_grad_focal``; reduction "sum"."""

    OPTIONS: ClassVar[dict[str, Any]] = {
        "gamma_neg": 4.0, "gamma_pos": 1.0, "clip": 0.05, "eps": 1e-8,
        "disable_torch_grad_focal": True,
    }  # fmt: skip
    ALIASES: ClassVar[dict[str, str]] = {
        "disable_torch_grad_focal_loss": "disable_torch_grad_focal"
    }
    DEFAULT_REDUCTION: ClassVar[str] = "sum"

    @classmethod
    def check_options(cls, options):
        options["gamma_neg"] = check_exponent("gamma_neg", options["gamma_neg"])
        options["gamma_pos"] = check_exponent("gamma_pos", options["gamma_pos"])
        clip = options["clip"]
        options["clip"] = 0.0 if clip is None else check_number("clip", clip, nonneg=True)
        options["eps"] = check_number("eps", options["eps"], positive=True)
        check_bool("disable_torch_grad_focal", options["disable_torch_grad_focal"])

    def _plan(self, pred, target, options):
        x = check_logits(pred)
        y = check_dense_target(target, x)
        spec = DenseSpec("sigmoid", SG_ASL, T_DENSE, False, a0=options["gamma_neg"],
                         a1=options["gamma_pos"], a2=options["clip"], a3=options["eps"],
                         flag=options["disable_torch_grad_focal"])  # fmt: skip
        return as_rows(x), dense_as_rows(y, x), None, None, None, spec, tuple(x.shape), False


@LOSSES.register_module()
class AsymmetricLossOptimized(AsymmetricLoss):
    """Alias of ``AsymmetricLoss`` (ASL's in-place variant; the kernel already is one)."""
