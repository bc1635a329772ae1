"""Segmentation losses of the registry (docs/spec.md 12.7; SPEC 10.3). Logits ``x [N, C, *]``,
index targets ``y [N, *]`` with ``ignore_index`` 255 (v = y != ignore_index), sums over the
pixels of one image; s = smooth.

    DiceLoss             D_nc = (2 sum v p t + s) / (sum v (p^e + t^e) + s),
                         l_n = sum_{c in K} w_c (1 - D_nc) / |K|  (K: classes != ignore_index) -> [N]
    BinaryDiceLoss       the same with p = sig(x), one channel                                 -> [N]
    GeneralizedDiceLoss  w_c = 1 / (sum v t_c)^2 (infinite -> the image's largest finite w, 0 if
                         none), l_n = 1 - (2 sum_c w_c sum v p t + s) / (sum_c w_c sum v (p + t) + s)
                         (w and s scaled alike so that w never overflows)
    OHEMCrossEntropyLoss CE on the kept pixels: q = p_y (no gradient), tau = max(thresh, q_(k)),
                         k = min(max(min_kept, 1), |V| - 1); kept = V and q < tau; mean over kept
                         (V: valid, weight != 0, q not NaN)
    OHEMBinaryLoss       the same with q = sig(x) (y = 1) or 1 - sig(x), BCE                   -> x's
    SurfaceLoss          p_c phi_c (Kervadec et al.), phi given                              -> [N,C,*]
    HDLoss               (p_c - t_c)^2 (d_t^alpha + d_s^alpha), c >= 1, on valid pixels  -> [N,C-1,H,W]

The Dice family is fused (``kernels/dice.py``): one pass computes p on the fly and the per-image,
per-class sums (S1, S2, S3) = (sum v p t, sum v p^e, sum v t^e) [N, 3, C]; the loss is a small
function of them; the backward is one pass over the logits. No softmax map and no one-hot exist.
The torch backend computes the same sums with tensor ops (autograd). OHEM runs the fused CE/BCE
twice (the probabilities without gradient, then the loss on the kept pixels) with the threshold
from a device sort: nothing leaves the device. SurfaceLoss's sums are the Dice kernel's S1 with
phi as the target.

Invalid pixels and inputs of weight 0 add exactly 0 to the value and to every gradient, even
when the logit there is NaN/inf (docs/spec.md 12.2 rule 1): an ignored pixel's logits are replaced
by 0 before the activation (the kernel selects it out and writes a zero gradient), an image (HD: a
pixel) of weight 0 has its logits replaced by 0 before the formula (``_mask_inputs``), and OHEM
leaves a pixel of weight 0, or of NaN q, out of the selection.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..backend import compute_dtype, resolve_backend
from ..validation import check_bool, check_number, shape_str
from .base_loss import BaseLoss, check_avg_factor, check_weight
from .builder import LOSSES
from .classification import check_class_weight, check_ignore_index
from .dense import (
    SG_BCE,
    SM_CE,
    T_DENSE,
    T_INDEX,
    DenseSpec,
    as_rows,
    check_dense_target,
    check_index_target,
    check_logits,
    dense_loss,
    index_rows,
    reduce_sums,
)
from .utils import expand_weight, squared_distance_transform, weight_keep

ACT_SOFTMAX, ACT_SIGMOID, ACT_NONE = 0, 1, 2  # kernels/dice.py


# ------------------------------------------------------------------------ the Dice family's sums


def _dice_sums_torch(x3: Tensor, t: Tensor, *, act: int, target: int, exponent: float,
                     ignore_index: int | None) -> Tensor:  # fmt: skip
    """(S1, S2, S3) [N, 3, C] with tensor ops (the torch backend; autograd gives the gradient)."""
    n, c, s = x3.shape
    cdt = compute_dtype(x3.dtype)
    zero = torch.zeros((), dtype=cdt, device=x3.device)
    if target == T_INDEX:
        y = t.long()
        v = (y >= 0) & (y < c)
        if ignore_index is not None:
            v = v & (y != ignore_index)
        x_keep = v[:, None]
    else:
        raw = t.expand(n, c, s)
        v = (
            raw != ignore_index
            if ignore_index is not None
            else torch.ones_like(raw, dtype=torch.bool)
        )
        x_keep = v.any(1, keepdim=True) if act == ACT_SOFTMAX else v
    # an invalid pixel's logits are replaced by 0 before the activation: a NaN/inf there adds
    # exactly 0 to the sums and to the gradient (docs/spec.md 12.2 rule 1)
    x = torch.where(x_keep, x3.to(cdt), zero)
    if act == ACT_SOFTMAX:
        p = torch.softmax(x, dim=1)
    elif act == ACT_SIGMOID:
        p = torch.sigmoid(x)
    else:
        p = x
    if target == T_INDEX:
        ys = torch.where(v, y, 0)
        p_y = torch.where(v, p.gather(1, ys[:, None])[:, 0], zero)
        s1 = torch.zeros(n, c, dtype=cdt, device=x.device).scatter_add(1, ys, p_y)
        # masked before the power: an ignored pixel's p (x itself without activation) may be a
        # negative base of a fractional exponent, whose NaN must not reach the gradient
        s2 = torch.where(v[:, None], p, zero).pow(exponent).sum(2)
        s3 = torch.zeros(n, c, dtype=cdt, device=x.device).scatter_add(1, ys, v.to(cdt))
    else:
        tt = torch.where(v, raw.to(cdt), zero)
        s1 = torch.where(v, p * tt, zero).sum(2)
        s2 = torch.where(v, p, zero).pow(exponent).sum(2)
        s3 = torch.where(v, tt.pow(exponent), zero).sum(2)
    return torch.stack([s1, s2, s3], dim=1)


def dice_sums(x3: Tensor, t: Tensor, backend: str, **opts: Any) -> Tensor:
    """(sum v p t, sum v p^e, sum v t^e) [N, 3, C] per image and class, differentiable in x3
    [N, C, S]; t index labels [N, S] or a dense [N, C, S] (opts: act, target, exponent,
    ignore_index)."""
    if resolve_backend(backend, x3.device) == "triton":
        from ..triton_dice import dice_sums_triton

        return dice_sums_triton(x3, t, opts)
    return _dice_sums_torch(x3, t, **opts)


def _check_smooth(options: dict[str, Any]) -> None:
    options["smooth"] = check_number("smooth", options["smooth"], nonneg=True)


def _check_exponent(options: dict[str, Any]) -> None:
    e = check_number("exponent", options["exponent"])
    if e < 1:
        raise ValueError(f"exponent: expected a number >= 1 (the gradient has p^(e-1)), got {e!r}")
    options["exponent"] = float(e)


def mask_zero_weight_images(pred: Any, target: Any, weight: Any, per_image: bool = True):
    """(pred, target) of a loss with one value per image (l [N]; ``per_image`` False: a 0-dim l)
    with the images of weight 0 replaced by zeros, a floating target's too, before the formula
    (docs/spec.md 12.2 rule 1): a NaN/inf there then adds exactly 0 to the value and to every
    gradient. Inputs the checks refuse are returned as they are (the checks name them)."""
    if not (isinstance(pred, Tensor) and isinstance(weight, Tensor)) or pred.dim() < 1:
        return pred, target
    try:
        keep = weight_keep(weight, (pred.shape[0],) if per_image else (), pred)
    except ValueError:
        return pred, target  # the rules name it
    if keep.device != pred.device:
        return pred, target

    def masked(t: Tensor) -> Tensor:
        view = keep.reshape(keep.shape + (1,) * (t.dim() - keep.dim()))
        return torch.where(view, t, torch.zeros((), dtype=t.dtype, device=t.device))

    pred = masked(pred)
    if (
        isinstance(target, Tensor)
        and target.is_floating_point()
        and target.dim() >= 1
        and target.device == pred.device
        and (not per_image or target.shape[0] == pred.shape[0])
    ):
        target = masked(target)
    return pred, target


class _DiceBase(BaseLoss):
    """Logits x [N, C, *] and index labels y [N, *] (or a dense target of x's shape) -> the sums.
    An image of weight 0 has its logits (and a dense target) replaced by 0 before the formula;
    an invalid pixel's logits are replaced by 0 before the activation (docs/spec.md 12.2 rule 1:
    a NaN/inf there adds exactly 0 to the value and to every gradient)."""

    CALL_OPTIONS: ClassVar[tuple[str, ...]] = ("ignore_index",)
    ALIASES: ClassVar[dict[str, str]] = {"eps": "smooth"}

    def _mask_inputs(self, pred: Any, target: Any, weight: Any) -> tuple[Any, Any]:
        return mask_zero_weight_images(pred, target, weight)

    def _sums(self, pred: Any, target: Any, act: int, exponent: float, ignore_index):
        x = check_logits(pred)
        if isinstance(target, Tensor) and target.dim() == x.dim() - 1:
            y = check_index_target(target, x)
            t, kind = index_rows(y), T_INDEX
        else:
            y = check_dense_target(target, x)
            t, kind = _dense_rows(y, x), T_DENSE
            ignore_index = None  # a dense (one-hot) target has no ignored pixels
        if x.shape[1] > 1024 and resolve_backend(self.backend, x.device) == "triton":
            raise ValueError(f"pred: at most 1024 classes on the triton backend, got "
                             f"{shape_str(x)}")  # fmt: skip
        sums = dice_sums(as_rows(x), t, self.backend, act=act, target=kind,
                         exponent=exponent, ignore_index=ignore_index)  # fmt: skip
        return x, sums


def _dense_rows(t: Tensor, like: Tensor) -> Tensor:
    t = t.detach()
    if not t.is_floating_point():
        t = t.to(like.dtype)
    return t.reshape(like.shape[0], like.shape[1], math.prod(like.shape[2:]))


@LOSSES.register_module()
class DiceLoss(_DiceBase):
    """l_n = sum_{c in K} w_c (1 - D_nc) / |K|, D_nc = (2 sum v p t + s) / (sum v (p^e + t^e) + s)
    (mmseg 0.x per-image, per-class Dice); x [N,C,*], y [N,*] or a one-hot of x's shape -> [N].
    ``naive_dice``: e = 1; ``use_sigmoid``: p = sig(x) per channel; ``activate`` False: p = x;
    K = the classes other than ignore_index."""

    OPTIONS: ClassVar[dict[str, Any]] = {
        "smooth": 1.0, "exponent": 2.0, "ignore_index": 255, "naive_dice": False,
        "use_sigmoid": False, "activate": True, "class_weight": None,
    }  # fmt: skip

    @classmethod
    def check_options(cls, options):
        _check_smooth(options)
        _check_exponent(options)
        options["ignore_index"] = check_ignore_index(options["ignore_index"])
        check_bool("naive_dice", options["naive_dice"])
        check_bool("use_sigmoid", options["use_sigmoid"])
        check_bool("activate", options["activate"])
        check_class_weight(options)

    def _forward(self, pred, target, *, smooth, exponent, ignore_index, naive_dice, use_sigmoid,
                 activate, class_weight):  # fmt: skip
        act = ACT_NONE if not activate else ACT_SIGMOID if use_sigmoid else ACT_SOFTMAX
        e = 1.0 if naive_dice else exponent
        x, sums = self._sums(pred, target, act, e, ignore_index)
        s1, s2, s3 = sums.unbind(1)
        d = (2 * s1 + smooth) / (s2 + s3 + smooth)
        c = x.shape[1]
        k = torch.ones(c, dtype=d.dtype, device=d.device)
        if ignore_index is not None and 0 <= ignore_index < c:
            k[ignore_index] = 0
        if class_weight is not None:
            w = torch.as_tensor(class_weight, dtype=d.dtype).to(d.device)
            if w.shape != (c,):
                raise ValueError(f"class_weight: expected {c} values (one per class), got "
                                 f"{w.numel()}")  # fmt: skip
            k = k * w
        kept = max(c - (1 if ignore_index is not None and 0 <= ignore_index < c else 0), 1)
        return ((1 - d) * k).sum(1) / kept, None


@LOSSES.register_module()
class BinaryDiceLoss(_DiceBase):
    """1 - (2 sum v p t + s) / (sum v (p^e + t^e) + s), p = sig(x), one channel; x [N,*] or
    [N,1,*], y of x's shape or [N,*] (0/1, ignore_index ignored) -> [N]."""

    OPTIONS: ClassVar[dict[str, Any]] = {"smooth": 1.0, "exponent": 2.0, "ignore_index": 255}

    @classmethod
    def check_options(cls, options):
        _check_smooth(options)
        _check_exponent(options)
        options["ignore_index"] = check_ignore_index(options["ignore_index"])

    def _forward(self, pred, target, *, smooth, exponent, ignore_index):
        x, y = binary_pair(pred, target)
        x3 = x.reshape(x.shape[0], 1, math.prod(x.shape[1:]))  # N = 0 too
        t3 = y.detach().reshape(x3.shape)
        if not t3.is_floating_point():
            t3 = t3.to(x.dtype)
        sums = dice_sums(x3, t3, self.backend, act=ACT_SIGMOID, target=T_DENSE,
                         exponent=exponent, ignore_index=ignore_index)  # fmt: skip
        s1, s2, s3 = sums[:, :, 0].unbind(1)
        return 1 - (2 * s1 + smooth) / (s2 + s3 + smooth), None


def binary_pair(pred: Any, target: Any) -> tuple[Tensor, Tensor]:
    """(x, y) of a one-logit loss: x [N,*] or [N,1,*]; y of x's shape, or [N,*] for x [N,1,*]."""
    x = check_logits(pred, min_dim=1)
    if not isinstance(target, Tensor):
        raise TypeError(f"target: expected a torch.Tensor, got {type(target).__name__}")
    if target.is_complex():
        raise TypeError(f"target: expected a real tensor, got dtype {target.dtype}")
    ok = target.shape == x.shape or (
        x.dim() >= 2 and x.shape[1] == 1 and target.shape == (x.shape[0], *x.shape[2:])
    )
    if not ok:
        raise ValueError(f"target: expected pred's shape {shape_str(x)} (or it without the "
                         f"channel axis of size 1), got {shape_str(target)}")  # fmt: skip
    if target.device != x.device:
        raise ValueError(f"target: expected a tensor on {x.device}, got one on {target.device}")
    return x, target


@LOSSES.register_module()
class GeneralizedDiceLoss(_DiceBase):
    """Sudre et al. (MONAI): w_c = 1/(sum v t_c)^2 (infinite -> the image's largest finite w, 0
    if none), l_n = 1 - (2 sum_c w_c sum v p t + s) / (sum_c w_c sum v (p + t) + s); x [N,C,*],
    y [N,*] or a one-hot of x's shape -> [N]."""

    OPTIONS: ClassVar[dict[str, Any]] = {"smooth": 1e-5, "ignore_index": 255, "use_sigmoid": False}

    @classmethod
    def check_options(cls, options):
        _check_smooth(options)
        options["ignore_index"] = check_ignore_index(options["ignore_index"])
        check_bool("use_sigmoid", options["use_sigmoid"])

    def _forward(self, pred, target, *, smooth, ignore_index, use_sigmoid):
        act = ACT_SIGMOID if use_sigmoid else ACT_SOFTMAX
        _, sums = self._sums(pred, target, act, 1.0, ignore_index)
        s1, s2, s3 = sums.unbind(1)
        w, scale = generalized_dice_weights(s3.detach())
        sm = smooth * scale
        return 1 - (2 * (w * s1).sum(1) + sm) / ((w * (s2 + s3)).sum(1) + sm), None


def generalized_dice_weights(mass: Tensor) -> tuple[Tensor, Tensor]:
    """(w' [N, C], r [N]) with w' = r w: the class weights w_c = 1/m_c^2 of the generalized
    Dice of the class masses m = sum v t [N, C], scaled by r = min(m_min, 1)^2 (m_min the image's
    smallest non-zero abs(m)) so that no weight overflows: w'_c = (min(m_min, 1)/abs(m_c))^2 <= 1;
    an absent class (m_c = 0: w infinite) gets the image's largest finite w (w' of m_min); an
    image with no non-zero mass gets w' = 0 (r = 1). The loss is a ratio of sums weighted by w,
    unchanged when w and the smoothing term are both multiplied by r (the caller's s r, never
    larger than s). Without the scaling, 1/m^2 overflows float32 for a mass below about 1e-19
    (a soft target) and the loss was NaN. A NaN mass gives NaN, as in the reference."""
    mag = mass.abs()
    absent = mag == 0
    m_min = torch.where(absent, math.inf, mag).amin(1, keepdim=True)
    none = m_min == math.inf  # no non-zero mass (or only infinite ones, whose w is 0)
    q = torch.where(none, 1.0, m_min.clamp(max=1.0))
    w = (q / torch.where(absent, torch.where(none, 1.0, m_min), mag)) ** 2
    w = torch.where(none, 0.0, w)
    return w, (q * q)[:, 0]


# ------------------------------------------------------------------------------------- OHEM


MIN_KEPT_MAX = 2**63 - 1  # min_kept is compared with an int64 count on the device


def _check_ohem(options: dict[str, Any]) -> None:
    options["thresh"] = check_number("thresh", options["thresh"])
    k = options["min_kept"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"min_kept: expected a non-negative int, got {k!r}")
    if k > MIN_KEPT_MAX:
        raise ValueError(f"min_kept: expected an int in [0, 2**63 - 1], got {k!r}")
    options["ignore_index"] = check_ignore_index(options["ignore_index"])
    check_class_weight(options)


def ohem_keep(q: Tensor, v: Tensor, thresh: float, min_kept: int) -> Tensor:
    """kept = v and q < max(thresh, q_(k)), q_(k) the k-th smallest valid q (0-based),
    k = min(max(min_kept, 1), |V| - 1): a device sort (invalid entries +inf), no host sync. A NaN
    q (a NaN logit, or +inf in a softmax row) is invalid, as an ignored pixel: the threshold is
    that of the other pixels and it is never kept. An empty q (N = 0 or an empty map: a static
    shape) keeps nothing."""
    if q.numel() == 0:
        return v & False
    v = v & ~torch.isnan(q)
    flat = torch.where(v, q, torch.full((), float("inf"), dtype=q.dtype, device=q.device))
    ordered = torch.sort(flat.reshape(-1)).values
    nv = v.sum()
    k = torch.clamp(torch.clamp(nv - 1, max=max(min_kept, 1)), min=0)
    qk = ordered.gather(0, k.reshape(1)).reshape(())
    tau = torch.clamp(qk, min=thresh)
    return v & (q < tau)


class _OHEMBase(BaseLoss):
    """Shared reduction: l on the kept pixels, "mean" over their count (0 if none). The
    candidates are the valid pixels of non-zero sample weight whose q is not NaN: a pixel of
    weight 0 (or an ignored one) takes no part in the selection, so its logits, NaN/inf
    included, change neither the threshold, nor the kept count, nor any gradient."""

    OPTIONS: ClassVar[dict[str, Any]] = {
        "thresh": 0.7, "min_kept": 100000, "ignore_index": 255, "class_weight": None,
    }  # fmt: skip
    ALIASES: ClassVar[dict[str, str]] = {"thres": "thresh", "ignore_label": "ignore_index"}
    CALL_OPTIONS: ClassVar[tuple[str, ...]] = ("ignore_index",)

    @classmethod
    def check_options(cls, options):
        _check_ohem(options)

    def _plan(self, pred, target, options):
        """(x3, t, spec, cw, q, v, l_shape): q the probability of the true class (no grad)."""
        raise NotImplementedError

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None,
                **call_options):  # fmt: skip
        reduction = self._reduction(reduction_override)
        options = self._call_options(call_options)
        x3, t, spec, cw, q, v, l_shape = self._plan(pred, target, options)
        cdt = compute_dtype(pred.dtype)
        w = None
        if check_weight(weight, pred) is not None:
            w = weight.detach()
            w = expand_weight(w.to(cdt) if not w.is_floating_point() else w, l_shape)
            w = w.reshape(v.shape).to(cdt)
            v = v & (w != 0)  # weight 0: not a candidate (its logits change nothing)
        kept = ohem_keep(q, v, options["thresh"], options["min_kept"])
        per_row = spec.family == "softmax"
        sw = kept.to(cdt) if w is None else torch.where(kept, w, 0.0)
        n, c, s = x3.shape
        sw3 = sw.reshape(n, 1, s) if per_row else sw.reshape(n, c, s)
        op = type(self).__name__  # the double-backward error's name (spec 8)
        if reduction == "none":
            out = dense_loss(x3, t, None, sw3, cw, None, spec, "none", self.backend, op).reshape(
                l_shape
            )
        else:
            total, _ = dense_loss(x3, t, None, sw3, cw, None, spec, "sum", self.backend, op)
            avg = check_avg_factor(avg_factor) if avg_factor is not None else self.avg_factor
            if reduction == "mean" and avg is None:
                out = total / kept.sum().clamp(min=1).to(total.dtype)
            else:
                out = reduce_sums(total, None, math.prod(l_shape), reduction, avg, n)
        return out * self.loss_weight if self.loss_weight != 1.0 else out


@LOSSES.register_module()
class OHEMCrossEntropyLoss(_OHEMBase):
    """CE (w_y) on the kept pixels (PIDNet / mmseg ``OhemCrossEntropy``): q = p_y without
    gradient, kept = valid and q < max(thresh, q_(k)); x [N,C,*], y [N,*] -> [N,*], "mean" over
    the kept pixels (0 if none)."""

    def _plan(self, pred, target, options):
        x = check_logits(pred)
        y = check_index_target(target, x)
        ig = options["ignore_index"]
        c = x.shape[1]
        x3, y2 = as_rows(x), index_rows(y)
        spec = DenseSpec("softmax", SM_CE, T_INDEX, True, ig is not None,
                         ig if ig is not None else 0)  # fmt: skip
        with torch.no_grad():
            nll = dense_loss(
                x3.detach(),
                y2,
                None,
                None,
                None,
                None,
                spec,
                "none",
                self.backend,
                type(self).__name__,
            )
        v = (y2 >= 0) & (y2 < c)
        if ig is not None:
            v = v & (y2 != ig)
        q = torch.exp(-nll)
        cw = _class_vector(options["class_weight"], c, x)
        return x3, y2, spec, cw, q, v, (x.shape[0], *x.shape[2:])


@LOSSES.register_module()
class OHEMBinaryLoss(_OHEMBase):
    """BCE on the kept elements: q = sig(x) where y = 1, 1 - sig(x) else (no gradient); x [N,*]
    or [N,1,*], y {0,1} of x's shape or [N,*] -> x's shape. ``class_weight``: one value."""

    def _plan(self, pred, target, options):
        x, y = binary_pair(pred, target)
        ig = options["ignore_index"]
        n = x.shape[0]
        x3 = x.reshape(n, 1, math.prod(x.shape[1:]))  # N = 0 too
        t = y.detach().reshape(x3.shape)
        t = t if t.is_floating_point() else t.to(x.dtype)
        spec = DenseSpec("sigmoid", SG_BCE, T_DENSE, False, ig is not None,
                         ig if ig is not None else 0, a0=1.0)  # fmt: skip
        v = t[:, 0] != ig if ig is not None else torch.ones_like(t[:, 0], dtype=torch.bool)
        with torch.no_grad():
            xd = x3[:, 0].detach().to(compute_dtype(x.dtype))
            q = torch.where(t[:, 0] == 1, torch.sigmoid(xd), torch.sigmoid(-xd))
        cw = _class_vector(options["class_weight"], 1, x)
        return x3, t, spec, cw, q, v, tuple(x.shape)


def _class_vector(value, c: int, like: Tensor) -> Tensor | None:
    if value is None:
        return None
    vec = torch.as_tensor(value, dtype=compute_dtype(like.dtype)).to(like.device)
    if vec.shape != (c,):
        raise ValueError(f"class_weight: expected {c} values (one per class), got {vec.numel()}")
    return vec


# ---------------------------------------------------------------------------- surface and HD


@LOSSES.register_module()
class SurfaceLoss(BaseLoss):
    """p_c phi_c (Kervadec et al., ``mean(p phi)``), p = softmax(x), phi the signed distance to
    class c's ground truth (negative inside), given; x, phi [N,C,*] -> [N,C,*]. Pixels are
    ignored through ``weight``: a pixel of weight 0 in every class has its logits replaced by 0
    before the softmax and phi w = 0, so a non-finite x or phi there contributes exactly 0.
    "mean"/"sum" run the fused Dice sums (phi w as the target)."""

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None,
                **call_options):  # fmt: skip
        reduction = self._reduction(reduction_override)
        self._call_options(call_options)
        x = check_logits(pred)
        phi = check_dense_target(target, x, name="target")
        if not phi.is_floating_point():
            raise TypeError(f"target: expected a floating-point distance map, got {phi.dtype}")
        cdt = compute_dtype(x.dtype)
        phi = phi.detach().to(cdt)
        if check_weight(weight, x) is not None:
            w = expand_weight(weight.detach().to(cdt), x.shape)
            phi = torch.where(w != 0, phi * w, 0.0)
            # a pixel of weight 0 in every class contributes exactly 0 to the value and to the
            # gradient: its logits are replaced by 0 before the softmax (a NaN logit there
            # would otherwise reach the other classes and the gradient, NaN * 0)
            keep = (w != 0).any(1, keepdim=True)
            x = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
        if reduction == "none":
            out = torch.softmax(x.to(cdt), dim=1) * phi
        else:
            sums = dice_sums(as_rows(x), as_rows(phi), self.backend, act=ACT_SOFTMAX,
                             target=T_DENSE, exponent=1.0, ignore_index=None)  # fmt: skip
            avg = check_avg_factor(avg_factor) if avg_factor is not None else self.avg_factor
            out = reduce_sums(sums[:, 0].sum(), None, x.numel(), reduction, avg, x.shape[0])
        return out * self.loss_weight if self.loss_weight != 1.0 else out


@LOSSES.register_module()
class HDLoss(BaseLoss):
    """Karimi & Salcudean's HD-DT loss: (p_c - t_c)^2 (d_t^alpha + d_s^alpha) for c >= 1 on the
    valid pixels, d the in-mask Euclidean distance transform (``utils.distance_transform``, exact,
    on the device, no gradient) of t_c and of the argmax prediction's class-c mask (ignored
    pixels outside every mask); x [N,C,H,W], y [N,H,W] -> [N,C-1,H,W]; "mean" over the valid
    elements. An invalid pixel, or one whose elements all have weight 0, has its logits replaced
    by 0 before the formula (so a NaN/inf there adds exactly 0 to the value and the gradient)."""

    OPTIONS: ClassVar[dict[str, Any]] = {"alpha": 2.0, "ignore_index": 255}
    CALL_OPTIONS: ClassVar[tuple[str, ...]] = ("ignore_index",)

    @classmethod
    def check_options(cls, options):
        options["alpha"] = check_number("alpha", options["alpha"], positive=True)
        options["ignore_index"] = check_ignore_index(options["ignore_index"])

    def _mask_inputs(self, pred: Any, target: Any, weight: Any) -> tuple[Any, Any]:
        """A pixel whose elements (n, c >= 1) all have weight 0 gets logits 0 before the formula
        (docs/spec.md 12.2 rule 1: a NaN/inf there adds exactly 0 to the value and to every
        gradient); its argmax is then class 0, outside every predicted mask."""
        if not (isinstance(pred, Tensor) and isinstance(weight, Tensor)) or pred.dim() != 4:
            return pred, target
        n, c, h, w = pred.shape
        if c < 2:
            return pred, target  # the checks name it
        try:
            keep = weight_keep(weight, (n, c - 1, h, w), pred)
        except ValueError:
            return pred, target  # the rules name it
        if keep.device != pred.device:
            return pred, target
        zero = torch.zeros((), dtype=pred.dtype, device=pred.device)
        return torch.where(keep.any(1, keepdim=True), pred, zero), target

    def _forward(self, pred, target, *, alpha, ignore_index):
        x = check_logits(pred)
        if x.dim() != 4:
            raise ValueError(f"pred: expected shape [N, C, H, W], got {shape_str(x)}")
        if x.shape[1] < 2:
            raise ValueError(f"pred: expected at least 2 classes (class 0 is skipped), got "
                             f"{shape_str(x)}")  # fmt: skip
        y = check_index_target(target, x).long()
        n, c, h, w = x.shape
        v = (y >= 0) & (y < c)
        if ignore_index is not None:
            v = v & (y != ignore_index)
        cdt = compute_dtype(x.dtype)
        # an invalid pixel's logits are replaced by 0 (rule 1: a NaN/inf there adds exactly 0)
        x = torch.where(v[:, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
        p = torch.softmax(x.to(cdt), dim=1)[:, 1:]
        cls = torch.arange(1, c, device=x.device).view(1, -1, 1, 1)
        t_mask = (y[:, None] == cls) & v[:, None]
        s_mask = (x.detach().argmax(1)[:, None] == cls) & v[:, None]
        masks = torch.cat([t_mask, s_mask], 0).reshape(2 * n * (c - 1), h, w)
        d2 = squared_distance_transform(masks, self.backend).to(cdt).reshape(2, n, c - 1, h, w)
        dist = d2[0].pow(alpha / 2) + d2[1].pow(alpha / 2)  # d^alpha from the exact d^2
        t = t_mask.to(cdt)
        return (p - t) ** 2 * dist, v[:, None].expand(n, c - 1, h, w)
