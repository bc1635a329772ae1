"""The fused dense losses of the registry (docs/spec.md 12.4): the softmax and sigmoid families of
``kernels/classification.py``, their pure-PyTorch fused backend, and ``FusedLoss``, the
``BaseLoss`` that reduces through them without materialising the elementwise loss.

A loss is described by a ``DenseSpec`` (family, loss kind, target kind, options). Its logits are
viewed as ``x3 [N, C, S]``; targets as index labels ``[N, S]`` (with scores ``[N, S]`` for QFL)
or a dense tensor ``[N, C, S]`` (class stride 0 for an [N, S] target of a one-logit loss).

* ``dense_sums`` -> (sum of l w v, sum of v): the "mean"/"sum"/"batchmean" reductions, one pass
  over x forward and one backward (the gradient is recomputed from x, scaled by the upstream
  gradient loaded from the device);
* ``dense_none`` -> l w v in l's shape, with a correct backward.

The torch backend computes the same formulas with tensor ops and analytic gradients (kept from the
forward); the triton backend runs the kernels through ``kernel_ops`` (traceable with
``torch.compile(fullgraph=True)``). The sum of v (the "mean" denominator) stays on the device.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..backend import PrecomputedGradient, compute_dtype, refuse_double_backward, resolve_backend
from ..validation import shape_str
from .base_loss import BaseLoss
from .utils import EPS, REDUCTIONS, expand_weight

# kinds (the kernels' constants, repeated here so that the torch backend imports no Triton)
SM_CE, SM_SOFT, SM_FOCAL, SM_FOCAL_DENSE, SM_KD = 0, 1, 2, 3, 4
SG_BCE, SG_BCE_PROB, SG_FOCAL, SG_ASL, SG_VFL, SG_QFL = 0, 1, 2, 3, 4, 5
T_INDEX, T_DENSE, T_SCORE = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class DenseSpec:
    """One fused loss: ``family`` "softmax" (l per row) or "sigmoid" (l per element, or per row
    when ``per_row``: QFL); ``loss``/``target`` the kinds above; ``a0..a3`` its float options
    (kernels/classification.py); ``flag`` ASL's detach or VFL's iou_weighted."""

    family: str
    loss: int
    target: int
    per_row: bool
    has_ignore: bool = False
    ignore_index: int = -100
    a0: float = 0.0
    a1: float = 0.0
    a2: float = 0.0
    a3: float = 0.0
    flag: bool = False

    def kernel_options(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------ torch backend


def _pow(x: Tensor, a: float) -> Tensor:
    return torch.pow(x, a)


def _ratio(num: Tensor, den: Tensor, at_zero: float) -> Tensor:
    """num / den where den > 0, else ``at_zero`` (the kernels' B/u-type ratios)."""
    pos = den > 0
    return torch.where(pos, num / torch.where(pos, den, torch.ones_like(den)), at_zero)


def _expm1_neg(logp: Tensor) -> Tensor:
    return -torch.expm1(logp)


def _per_class(v: Tensor | None, scalar: float, x: Tensor) -> Tensor | float:
    return scalar if v is None else v.to(x.dtype).view(1, -1, 1)


def _softmax_torch(x: Tensor, t, cw, cp, spec: DenseSpec) -> tuple[Tensor, Tensor, Tensor]:
    """(l [N,S], dl/dx [N,C,S], v [N,S]) of the softmax family."""
    n, c, s = x.shape
    if spec.loss == SM_KD:  # T^2 KL(Q||P), P = softmax(x/T), Q = softmax(t/T); T (P - Q)
        temp = spec.a0
        log_p = torch.log_softmax(x / temp, dim=1)
        log_q = torch.log_softmax(t.to(x.dtype) / temp, dim=1)
        q = torch.exp(log_q)
        kl = torch.where(q > 0, q * (log_q - log_p), 0.0).sum(1)
        v = torch.ones(n, s, dtype=torch.bool, device=x.device)
        return temp * temp * kl, temp * (torch.exp(log_p) - q), v
    lse = torch.logsumexp(x, dim=1)
    logp = x - lse[:, None]
    p = torch.exp(logp)
    if cw is not None:
        wc = cw.to(x.dtype).view(1, -1, 1)
    else:
        wc = torch.ones(1, c, 1, dtype=x.dtype, device=x.device)
    e = spec.a0
    gam = spec.a1
    if spec.target == T_INDEX:
        y = t.long()
        v = (y >= 0) & (y < c)
        if spec.has_ignore:
            v = v & (y != spec.ignore_index)
        ys = torch.where(v, y, 0)
        hit = torch.zeros_like(x).scatter_(1, ys[:, None], 1.0)
        wy = wc.expand(n, c, s).gather(1, ys[:, None])[:, 0]
        logp_y = logp.gather(1, ys[:, None])[:, 0]
        if spec.loss == SM_CE:
            lv = (1 - e) * wy * -logp_y
            d = (1 - e) * wy[:, None] * (p - hit)
            if e != 0:  # (a -inf logit, a masked class, would give 0 * inf)
                lv = lv + e / c * (wc * -logp).sum(1)
                d = d + e / c * (wc.sum() * p - wc)
        else:  # SM_FOCAL
            al = _per_class(cp, spec.a0, x)
            ay = al.expand(n, c, s).gather(1, ys[:, None])[:, 0] if isinstance(al, Tensor) else al
            o = _expm1_neg(logp_y)
            p_y = torch.exp(logp_y)
            lv = -ay * wy * _pow(o, gam) * logp_y
            k = ay * wy * _pow(o, gam) * (1 - gam * p_y * _ratio(logp_y, o, -1.0))
            d = k[:, None] * (p - hit)
        return lv, d, v
    t = t.to(x.dtype)
    v = torch.ones(n, s, dtype=torch.bool, device=x.device)
    if spec.loss == SM_SOFT:
        a = wc * t
        big_a = a.sum(1)
        return big_a * lse - (a * x).sum(1), big_a[:, None] * p - a, v
    al = _per_class(cp, spec.a0, x)
    b = t * wc * al
    o = _expm1_neg(logp)
    og = _pow(o, gam)
    nz = b != 0
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    lv = torch.where(nz, -b * og * logp, zero).sum(1)
    h = torch.where(nz, b * og * (gam * p * _ratio(logp, o, -1.0) - 1), zero)
    return lv, h - p * h.sum(1, keepdim=True), v


def _sigmoid_terms_torch(x: Tensor, t: Tensor, cp, spec: DenseSpec) -> tuple[Tensor, Tensor]:
    """(l, dl/dx) elementwise, the formulas of ``kernels.classification._sigmoid_terms``."""
    s, sn = torch.sigmoid(x), torch.sigmoid(-x)
    ls, lsn = torch.nn.functional.logsigmoid(x), torch.nn.functional.logsigmoid(-x)
    bce = -(t * ls + (1 - t) * lsn)
    a1, a2, a3 = spec.a1, spec.a2, spec.a3
    if spec.loss == SG_BCE:
        return -(cp * t * ls + (1 - t) * lsn), -cp * t * sn + (1 - t) * s
    if spec.loss == SG_BCE_PROB:
        lq, l1q = torch.log(x), torch.log(1 - x)
        lq = torch.where(lq < -100, -100.0, lq)
        l1q = torch.where(l1q < -100, -100.0, l1q)
        one = torch.ones_like(x)
        iq = torch.where(lq > -100, 1 / torch.where(x == 0, one, x), 0.0)
        i1q = torch.where(l1q > -100, 1 / torch.where(x == 1, one, 1 - x), 0.0)
        return -(cp * t * lq + (1 - t) * l1q), -cp * t * iq + (1 - t) * i1q
    if spec.loss == SG_FOCAL:
        u = s * (1 - t) + sn * t
        a = cp * t + (1 - cp) * (1 - t)
        m = _pow(u, a1)
        lv = a * bce * m
        return lv, a * ((s - t) * m + a1 * _ratio(bce, u, 0.0) * m * s * sn * (1 - 2 * t))
    if spec.loss == SG_ASL:
        gn = cp
        above = s - a2 >= 0
        qm = torch.where(s - a2 < 0, 0.0, s - a2)
        one_qm = torch.where(above, sn + a2, 1.0)
        lp = torch.log(torch.where(s < a3, a3, s))
        ln = torch.log(torch.where(one_qm < a3, a3, one_qm))
        base = -(t * lp + (1 - t) * ln)
        dqm = torch.where(above, s * sn, 0.0)
        dneg = torch.where(one_qm >= a3, dqm / one_qm, 0.0)
        dbase = -(t * torch.where(s >= a3, sn, 0.0) - (1 - t) * dneg)
        if not (gn > 0 or a1 > 0):
            return base, dbase
        g = a1 * t + gn * (1 - t)
        b = t * sn + (1 - t) * qm
        f = torch.pow(b, g)
        d = dbase * f
        if not spec.flag:
            db = -t * s * sn + (1 - t) * dqm
            d = d + g * _ratio(base, b, 0.0) * f * db  # base g b^(g-1) db
        return base * f, d
    if spec.loss == SG_VFL:
        sg = _pow(s, a1)
        pos = t > 0
        f = torch.where(pos, t if spec.flag else torch.ones_like(t), cp * sg)
        return bce * f, (s - t) * f + bce * torch.where(pos, 0.0, cp * a1 * sg * sn)
    dd = s - t  # SG_QFL, cp = beta
    ad = dd.abs()
    m = _pow(ad, cp)
    sign = torch.where(dd > 0, 1.0, -1.0)
    m1 = _ratio(m, ad, 0.0) if cp > 0 else torch.zeros_like(ad)  # |d|^(beta-1)
    return bce * m, dd * m + bce * cp * m1 * sign * s * sn


def _sigmoid_torch(x: Tensor, t, q, cw, cp, spec: DenseSpec) -> tuple[Tensor, Tensor, Tensor]:
    """(l [N,C,S], dl/dx [N,C,S], v [N,C,S]) of the sigmoid family (class weight applied)."""
    c = x.shape[1]
    if spec.target == T_DENSE:
        v = torch.ones(x.shape, dtype=torch.bool, device=x.device)
        if spec.has_ignore:
            v = (t != spec.ignore_index).expand(x.shape)
        tt = torch.where(v, t.to(x.dtype), 0.0)
    else:
        y = t.long()
        rv = (y >= 0) & (y <= c)
        if spec.has_ignore:
            rv = rv & (y != spec.ignore_index)
        hit = torch.arange(c, device=x.device).view(1, -1, 1) == y[:, None]
        v = rv[:, None].expand(x.shape)
        val = q.to(x.dtype)[:, None] if spec.target == T_SCORE else 1.0
        tt = torch.where(hit, val, 0.0).to(x.dtype)
    cpv = _per_class(cp, spec.a0, x)
    lv, d = _sigmoid_terms_torch(x, tt, cpv, spec)
    if cw is not None:
        wc = cw.to(x.dtype).view(1, -1, 1)
        lv, d = lv * wc, d * wc
    return lv, d, v


def _torch_terms(x3, t, q, sw, cw, cp, spec: DenseSpec):
    """(l w masked in l's shape, dl/dx w masked [N,C,S], v in l's shape) in the compute dtype."""
    cdt = compute_dtype(x3.dtype)
    x = x3.to(cdt)
    zero = torch.zeros((), dtype=cdt, device=x.device)
    if spec.family == "softmax":
        lv, d, v = _softmax_torch(x, t, cw, cp, spec)
        keep = v
        if sw is not None:
            w = sw.to(cdt)[:, 0]
            keep = keep & (w != 0)
            lv, d = lv * w, d * w[:, None]
        return torch.where(keep, lv, zero), torch.where(keep[:, None], d, zero), v
    lv, d, v = _sigmoid_torch(x, t, q, cw, cp, spec)
    keep = v
    if sw is not None:
        w = sw.to(cdt)
        keep = keep & (w != 0)
        lv, d = lv * w, d * w
    lk = torch.where(keep, lv, zero)
    if spec.per_row:
        return lk.sum(1), torch.where(keep, d, zero), v[:, 0]
    return lk, torch.where(keep, d, zero), v


class _TorchDenseNone(torch.autograd.Function):
    """The torch backend's "none": l w v with its gradient kept from the forward."""

    @staticmethod
    def forward(ctx, fn, x3):  # type: ignore[override]
        out, grad, per_row = fn(x3)
        ctx.save_for_backward(grad)
        ctx.per_row, ctx.dtype = per_row, x3.dtype
        return out

    @staticmethod
    def backward(ctx, go):  # type: ignore[override]
        refuse_double_backward("fused_losses registry (torch backend)")
        (grad,) = ctx.saved_tensors
        g = go.unsqueeze(1) if ctx.per_row else go
        return None, (grad * g).to(ctx.dtype)


def dense_loss(x3, t, q, sw, cw, cp, spec: DenseSpec, mode: str, backend: str):
    """mode "sum": (sum of l w v, sum of v), 0-dim each; "none": l w v ([N,S] or [N,C,S])."""
    per_row = spec.family == "softmax" or spec.per_row
    if resolve_backend(backend, x3.device) == "triton":
        from ..triton_classification import dense_none_triton, dense_sums_triton

        fn = dense_sums_triton if mode == "sum" else dense_none_triton
        return fn(x3, t, q, sw, cw, cp, spec.kernel_options())

    if mode == "sum":

        def value_and_grad(x):
            lv, d, v = _torch_terms(x, t, q, sw, cw, cp, spec)
            return lv.sum(), v.sum().to(lv.dtype), (d.to(x.dtype),)

        return PrecomputedGradient.apply(value_and_grad, x3)

    def fn(x):
        lv, d, _ = _torch_terms(x, t, q, sw, cw, cp, spec)
        return lv, d, per_row

    return _TorchDenseNone.apply(fn, x3)


# ---------------------------------------------------------------------------------- FusedLoss


def reduce_sums(
    s: Tensor, count: Tensor | None, numel: int, reduction: str, avg_factor, batch: int
) -> Tensor:
    """The "mean"/"sum"/"batchmean" rules of ``apply_weight_and_reduce`` from the sums:
    ``count`` is the sum of v (None: no validity mask, or avg_non_ignore off)."""
    if reduction == "sum":
        if avg_factor is not None:
            raise ValueError('avg_factor: can not be used with reduction="sum"')
        return s
    if reduction == "batchmean":
        return s / max(batch, 1)
    if avg_factor is not None:
        if isinstance(avg_factor, Tensor):
            a = avg_factor.to(device=s.device, dtype=s.dtype)
        else:  # built on the device: no blocking host-to-device copy
            a = torch.full((), float(avg_factor), dtype=s.dtype, device=s.device)
        return s / (a + EPS)
    if count is not None:
        return s / (count + EPS)
    return s / max(numel, 1)


class FusedLoss(BaseLoss):
    """A ``BaseLoss`` computed by the fused dense ops: ``_plan(pred, target, options)`` returns
    (x3, t, q, cw, cp, spec, l_shape, has_valid); "none" returns l w v in ``l_shape``, the other
    reductions never materialise it."""

    VECTOR_OPTIONS: ClassVar[tuple[str, ...]] = ("class_weight",)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._vectors: dict[tuple, Tensor] = {}

    def _vector(self, name: str, value, c: int, like: Tensor) -> Tensor | None:
        """A per-class option ([C]) as a tensor on ``like``'s device, cached (no copy per call);
        None for None or a scalar."""
        if value is None or isinstance(value, (int, float)):
            return None
        if isinstance(value, Tensor):
            vec = value.detach().to(device=like.device, dtype=compute_dtype(like.dtype))
        else:
            key = (name, like.device, compute_dtype(like.dtype))
            vec = self._vectors.get(key)
            if vec is None:
                vec = torch.tensor(
                    [float(u) for u in value], dtype=compute_dtype(like.dtype), device=like.device
                )
                self._vectors[key] = vec
        if vec.dim() != 1 or vec.numel() != c:
            raise ValueError(f"{name}: expected {c} values (one per class), got {vec.numel()}")
        return vec

    def _plan(self, pred: Tensor, target: Any, options: dict[str, Any]):
        raise NotImplementedError

    def forward(
        self,
        pred: Tensor,
        target: Any,
        weight: Tensor | None = None,
        avg_factor: float | Tensor | None = None,
        reduction_override: str | None = None,
        **call_options: Any,
    ) -> Tensor:
        reduction = reduction_override if reduction_override is not None else self.reduction
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction: expected one of {list(REDUCTIONS)}, got {reduction!r}")
        options = self._call_options(call_options)
        x3, t, q, cw, cp, spec, l_shape, has_valid = self._plan(pred, target, options)
        sw = None
        if weight is not None:
            if not isinstance(weight, Tensor):
                raise TypeError(f"weight: expected a torch.Tensor, got {type(weight).__name__}")
            if weight.device != pred.device:
                raise ValueError(f"weight: expected a tensor on {pred.device}, got {weight.device}")
            w = weight.detach()
            if not w.is_floating_point():
                w = w.to(compute_dtype(pred.dtype))
            w = expand_weight(w, l_shape)
            n, c, s = x3.shape
            per_row = spec.family == "softmax" or spec.per_row
            sw = w.reshape(n, 1, s) if per_row else w.reshape(n, c, s)
        if reduction == "none":
            out = dense_loss(x3, t, q, sw, cw, cp, spec, "none", self.backend)
            out = out.reshape(l_shape)
        else:
            if reduction == "sum" and avg_factor is not None:
                raise ValueError('avg_factor: can not be used with reduction="sum"')
            s, count = dense_loss(x3, t, q, sw, cw, cp, spec, "sum", self.backend)
            use_count = has_valid and options.get("avg_non_ignore", True)
            avg = avg_factor if avg_factor is not None else self.avg_factor
            out = reduce_sums(
                s, count if use_count else None, math.prod(l_shape), reduction, avg,
                pred.shape[0] if pred.dim() else 1,
            )  # fmt: skip
        return out * self.loss_weight if self.loss_weight != 1.0 else out


def check_logits(pred: Any, name: str = "pred", min_dim: int = 2) -> Tensor:
    if not isinstance(pred, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(pred).__name__}")
    if not pred.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {pred.dtype}")
    if pred.dim() < min_dim:
        raise ValueError(f"{name}: expected shape [N, C, *], got {shape_str(pred)}")
    return pred


def check_index_target(target: Any, pred: Tensor, name: str = "target") -> Tensor:
    """Index labels [N, *] for logits [N, C, *]."""
    if not isinstance(target, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer class indices, got dtype {target.dtype}")
    want = (pred.shape[0], *pred.shape[2:])
    if tuple(target.shape) != want:
        raise ValueError(
            f"{name}: expected shape [{', '.join(map(str, want))}] (pred's without the class "
            f"axis), got {shape_str(target)}"
        )
    if target.device != pred.device:
        raise ValueError(f"{name}: expected a tensor on {pred.device}, got one on {target.device}")
    return target


def check_dense_target(target: Any, pred: Tensor, name: str = "target") -> Tensor:
    """A dense target of pred's shape (soft or multi-hot)."""
    if not isinstance(target, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(target).__name__}")
    if target.is_complex():
        raise TypeError(f"{name}: expected a real tensor, got dtype {target.dtype}")
    if target.shape != pred.shape:
        raise ValueError(
            f"{name}: expected pred's shape {shape_str(pred)}, got {shape_str(target)}"
        )
    if target.device != pred.device:
        raise ValueError(f"{name}: expected a tensor on {pred.device}, got one on {target.device}")
    return target


def as_rows(pred: Tensor) -> Tensor:
    """pred [N, C, *] as x3 [N, C, S] (a view where the strides allow)."""
    return pred.reshape(pred.shape[0], pred.shape[1], math.prod(pred.shape[2:]))


def dense_as_rows(target: Tensor, pred: Tensor) -> Tensor:
    t = target.detach()
    if t.dtype == torch.bool:
        t = t.to(pred.dtype)
    return t.reshape(pred.shape[0], pred.shape[1], math.prod(pred.shape[2:]))


def index_rows(labels: Tensor) -> Tensor:
    """Index labels (or scores) [N, *] as contiguous [N, S]."""
    return labels.reshape(labels.shape[0], math.prod(labels.shape[1:])).contiguous()
