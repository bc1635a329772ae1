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
A double backward raises a RuntimeError naming the public loss (``dense_loss``'s ``op``, the
registry class for ``FusedLoss``) on both backends: ``"FocalLoss (torch backend): double
backward ..."`` (spec 8).

``kl_div_tempered(s, t, T, dim)`` is the torch twin of the KD kind as a plain differentiable
function (T^2 KL(softmax(t/T) || softmax(s/T)) per row without cancellation, for every T): the
KL terms of other distillation losses (DKD) can use it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..backend import compute_dtype, refuse_double_backward, resolve_backend
from ..validation import shape_str
from .base_loss import BaseLoss, check_avg_factor, check_weight
from .utils import EPS, expand_weight

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


def _log_one_minus(p: Tensor, o: Tensor) -> Tensor:
    """log(o), o = 1 - p, from both (each accurate) without rounding o to 1: log1p(-p) where
    p < 1/2, else log(o); -inf at o = 0, NaN for o < 0 or NaN (kernels/classification.py
    ``log_one_minus``)."""
    small = p < 0.5
    lg = torch.log1p(-torch.where(small, p, 0.0))
    pos = o > 0
    lo = torch.log(torch.where(pos & ~small, o, 1.0))
    lo = torch.where(pos, lo, torch.where(o == 0, -math.inf, math.nan))
    return torch.where(small, lg, lo)


def _pow_from_log(lu: Tensor, g: float | Tensor) -> Tensor:
    """u^g as exp(g log u) from lu = log u (kernels/classification.py ``pow_from_log``): exact
    in g for every g in [0, 1e30]; 1 at g = 0, 0 at u = 0 (lu = -inf) for g > 0."""
    if isinstance(g, Tensor):
        return torch.where(g == 0, 1.0, torch.exp(g * lu))
    if g == 0:
        return torch.ones_like(lu)
    return torch.exp(g * lu)


def _ratio(num: Tensor, den: Tensor, at_zero: float) -> Tensor:
    """num / den where den > 0, else ``at_zero`` (the kernels' B/u-type ratios)."""
    pos = den > 0
    return torch.where(pos, num / torch.where(pos, den, torch.ones_like(den)), at_zero)


def _expm1_neg(logp: Tensor) -> Tensor:
    return -torch.expm1(logp)


def _equals_ignore(t: Tensor, ignore_index: int) -> Tensor:
    """t == ignore_index for a dense target, an integer one compared in int64 (as the kernels
    compare in the wider type): a value its dtype cannot hold equals none of its elements (a
    uint8 156 is not -100; ``t == -100`` would wrap -100 to 156)."""
    if not t.is_floating_point():
        t = t.long()
    return t == ignore_index


def _per_class(v: Tensor | None, scalar: float, x: Tensor) -> Tensor | float:
    return scalar if v is None else v.to(x.dtype).view(1, -1, 1)


def _logsumexp(x: Tensor, dim: int) -> Tensor:
    """log sum exp(x) over ``dim`` as the kernels compute it: m + log sum exp(x - m), m the
    maximum (0 for a row of -inf logits, whose result is -inf): a +inf logit gives NaN, as in
    the kernels and the reference (``torch.logsumexp`` gives +inf)."""
    m = x.amax(dim, keepdim=True)
    m = torch.where(m == -math.inf, torch.zeros((), dtype=x.dtype, device=x.device), m)
    return (m + torch.log(torch.exp(x - m).sum(dim, keepdim=True))).squeeze(dim)


# ------------------------------------------------------------- the tempered KL (KD, DKD)

# g(x) = (exp(-x) - 1 + x) / x^2 = sum_k (-x)^k / (k+2)!, k = 0..17: below float64's half ulp
# for |x| <= 1 (kernels/classification.py ``_kd_series`` holds the same coefficients)
KD_SERIES = tuple((-1) ** k / math.factorial(k + 2) for k in range(18))
KD_SERIES_MAX = 1.0  # |d| below: the series
KD_LOG_MIN = -40.0  # d below (or q = 0): the term from its logarithm e
KD_BIG = 1.0  # KL above: the textbook formula (nothing cancels)


def _kd_series(x: Tensor) -> Tensor:
    r = torch.full_like(x, KD_SERIES[-1])
    for coef in reversed(KD_SERIES[:-1]):
        r = r * x + coef
    return r


def _tempered_kl(
    s: Tensor, t: Tensor, temp: float, dim: int, with_grad: bool = False
) -> tuple[Tensor, Tensor | None]:
    """(T^2 KL(Q||P) reduced over ``dim``, its gradient in s when ``with_grad``) for P =
    softmax(s/T), Q = softmax(t/T) (s, t of one shape and dtype), without cancellation.

    With D = t - s, Dc = D - E_Q[D] and d = Dc / T: KL = log E_Q[exp(-d)] = log1p(S),
    S = E_Q[phi(d)], phi(x) = expm1(-x) + x >= 0. Per class, q phi(d) is the series
    q d^2 g(d) for |d| < 1 (g above), q (exp(-d) - 1 + d) for -40 <= d <= -1 or d >= 1, and
    exp(e) - q + q d from its logarithm e = log(q exp(-d)) = s/T + E_Q[D]/T - lse(t/T) below
    (and where q = 0: the student's mass there). T^2 KL = V log1p(S)/S, V = E_Q[T^2 phi(d)]
    summed from the terms q Dc^2 g(d) (no T^2 formed: no overflow at a large T, no underflow at
    a small one); gradient T (P - Q) = (T q expm1(-d) - q V/T) / (1 + S), T q expm1(-d) =
    -q Dc (1 - d g(d)) in the series. Where the textbook KL = E_Q[D]/T - lse(t/T) + lse(s/T)
    is above 1 (nothing cancels; the terms exp(e) could overflow), or the above is not finite
    (a student -inf where q > 0: KL = +inf), the textbook T (T KL) and T (P - Q). The kernels'
    ``SM_KD`` computes the same. The value is built from differentiable operations whose
    untaken branches stay finite: autograd through it is exact too (``kl_div_tempered``)."""
    u = t / temp
    z = s / temp
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    lse_u = torch.logsumexp(u, dim, keepdim=True)
    log_q = u - lse_u
    q = torch.exp(log_q)
    pos = q > 0
    diff = torch.where(pos, t - s, zero)
    mbar = (q * diff).sum(dim, keepdim=True)  # E_Q[D]
    log_p = torch.log_softmax(z, dim)
    textbook = temp * (temp * (q * torch.where(pos, log_q - log_p, zero)).sum(dim, keepdim=True))
    kl_tb = mbar / temp - lse_u + torch.logsumexp(z, dim, keepdim=True)
    dc = torch.where(pos, diff - mbar, zero)
    d = dc / temp
    e = torch.where(pos, log_q - d, z + mbar / temp - lse_u)
    series = pos & (d.abs() < KD_SERIES_MAX)
    from_log = ~pos | (d < KD_LOG_MIN)
    mid = ~series & ~from_log
    ds = torch.where(series, d, zero)
    g = _kd_series(ds)
    dcs = torch.where(series, dc, zero)
    dn = torch.where(mid, d, zero)
    # (the rows taken here have every e <= KL <= ~1: the clamp only keeps the others finite)
    ee = torch.exp(torch.where(from_log, e.clamp(max=KD_BIG + 1.0), -math.inf))
    far = torch.where(from_log, ee - q + q * d, q * (torch.exp(-dn) - 1 + dn))
    s_sum = torch.where(series, q * ds * ds * g, far).sum(dim, keepdim=True)
    v_sum = torch.where(series, q * dcs * dcs * g, temp * (temp * far)).sum(dim, keepdim=True)
    s_pos = s_sum > 0
    ratio = torch.where(s_pos, torch.log1p(s_sum) / torch.where(s_pos, s_sum, 1.0), 1.0)
    kl = v_sum * ratio
    small = (kl_tb <= KD_BIG) & torch.isfinite(kl)
    value = torch.where(small, kl, textbook).squeeze(dim)
    if not with_grad:
        return value, None
    tq = torch.where(
        series,
        -q * dcs * (1 - ds * g),
        torch.where(from_log, temp * (ee - q), temp * q * torch.expm1(-dn)),
    )
    grad = torch.where(small, (tq - q * (v_sum / temp)) / (1 + s_sum), temp * (log_p.exp() - q))
    return value, grad


def kl_div_tempered(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float, dim: int = 1
) -> Tensor:
    """T^2 KL(softmax(t/T) || softmax(s/T)) over ``dim`` (removed), s = ``student_logits``,
    t = ``teacher_logits`` (same shape; classes where t = -inf have Q = 0 and add nothing but
    their student mass), computed without cancellation (``_tempered_kl``): accurate in float32
    for every temperature, finite where the value is, T^2 KL -> Var_Q(t - s) / 2 as T -> inf.
    Plain differentiable tensor ops (autograd in both inputs, double backward included), in the
    compute dtype of s (float64 stays, the rest float32)."""
    if not isinstance(student_logits, Tensor) or not isinstance(teacher_logits, Tensor):
        raise TypeError("student_logits, teacher_logits: expected torch.Tensors")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"teacher_logits: expected the student's shape {shape_str(student_logits)}, got "
            f"{shape_str(teacher_logits)}"
        )
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature: expected a number, got {type(temperature).__name__}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature: expected a finite positive number, got {temperature!r}")
    cdt = compute_dtype(student_logits.dtype)
    value, _ = _tempered_kl(student_logits.to(cdt), teacher_logits.to(cdt), float(temperature), dim)
    return value


def _softmax_torch(x: Tensor, t, cw, cp, spec: DenseSpec) -> tuple[Tensor, Tensor, Tensor]:
    """(l [N,S], dl/dx [N,C,S], v [N,S]) of the softmax family."""
    n, c, s = x.shape
    if spec.loss == SM_KD:  # T^2 KL(Q||P), P = softmax(x/T), Q = softmax(t/T); T (P - Q)
        value, grad = _tempered_kl(x, t.to(x.dtype), spec.a0, 1, with_grad=True)
        v = torch.ones(n, s, dtype=torch.bool, device=x.device)
        return value, grad, v
    lse = _logsumexp(x, 1)
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
            og = _pow_from_log(_log_one_minus(p_y, o), gam)  # (1 - p_y)^g, exact as p_y -> 0
            lv = -ay * wy * og * logp_y
            k = ay * wy * og * (1 - gam * p_y * _ratio(logp_y, o, -1.0))
            d = k[:, None] * (p - hit)
        return lv, d, v
    t_raw, t = t, t.to(x.dtype)
    v = torch.ones(n, s, dtype=torch.bool, device=x.device)
    if spec.loss == SM_SOFT:
        a = wc * t
        big_a = a.sum(1)
        return big_a * lse - (a * x).sum(1), big_a[:, None] * p - a, v
    if spec.has_ignore:  # a row whose target equals ignore_index in any class is invalid
        v = ~_equals_ignore(t_raw, spec.ignore_index).any(1)
        t = torch.where(v[:, None], t, 0.0)
    al = _per_class(cp, spec.a0, x)
    b = t * wc * al
    o = _expm1_neg(logp)
    og = _pow_from_log(_log_one_minus(p, o), gam)
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
        lu = _log_one_minus((1 - t) * sn + t * s, u)  # log u, p_t = 1 - u (terms >= 0)
        lu = torch.where(t == 0, ls, torch.where(t == 1, lsn, lu))
        a = cp * t + (1 - cp) * (1 - t)
        m = _pow_from_log(lu, a1)
        lv = a * bce * m
        fm = a1 * (s * sn) * m  # g u^g s s': 0 stays 0 (no 0 * inf at an infinite B)
        ft = fm * torch.where(fm == 0, 0.0, _ratio(bce, u, 0.0))
        return lv, a * ((s - t) * m + ft * (1 - 2 * t))
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
        lb = _log_one_minus(t * s + (1 - t) * one_qm, b)  # pt = 1 - b (terms >= 0)
        f = _pow_from_log(torch.where(t == 1, lsn, lb), g)
        d = dbase * f
        if not spec.flag:
            db = -t * s * sn + (1 - t) * dqm
            d = d + g * _ratio(base, b, 0.0) * f * db  # base g b^(g-1) db
        return base * f, d
    if spec.loss == SG_VFL:
        sg = _pow_from_log(ls, a1)  # s^g
        pos = t > 0
        f = torch.where(pos, t if spec.flag else torch.ones_like(t), cp * sg)
        vt = cp * (a1 * sn) * sg  # d(alpha s^g)/dx: B times it where q <= 0, no inf * 0
        return bce * f, (s - t) * f + vt * torch.where(pos | (vt == 0), 0.0, bce)
    dd = torch.where(t > 0.5, (1 - t) - sn, s - t)  # SG_QFL, cp = beta; 1 - q exact for q > 1/2
    ad = dd.abs()
    lad = _log_one_minus(torch.where(dd > 0, sn + t, (1 - t) + s), ad)  # 1 - |d|, terms >= 0
    lad = torch.where(t == 0, ls, lad)
    m = _pow_from_log(lad, cp)
    sign = torch.where(dd > 0, 1.0, -1.0)
    pos_d = ad > 0
    if cp > 0:  # |d|^(beta-1), 0 at d = 0
        m1 = torch.where(pos_d, torch.exp((cp - 1) * torch.where(pos_d, lad, 0.0)), 0.0)
    else:
        m1 = torch.zeros_like(ad)
    qt = cp * (s * sn) * m1
    return bce * m, dd * m + qt * torch.where(qt == 0, 0.0, bce) * sign


def _sigmoid_torch(x: Tensor, t, q, cw, cp, spec: DenseSpec) -> tuple[Tensor, Tensor, Tensor]:
    """(l [N,C,S], dl/dx [N,C,S], v [N,C,S]) of the sigmoid family (class weight applied)."""
    c = x.shape[1]
    if spec.target == T_DENSE:
        v = torch.ones(x.shape, dtype=torch.bool, device=x.device)
        if spec.has_ignore:
            v = (~_equals_ignore(t, spec.ignore_index)).expand(x.shape)
        tt = torch.where(v, t.to(x.dtype), 0.0)
    else:
        y = t.long()
        if spec.target == T_SCORE:  # QFL: every label outside [0, C) is the background
            rv = torch.ones(y.shape, dtype=torch.bool, device=x.device)
        else:
            rv = (y >= 0) & (y <= c)  # label C: the background (a zero row)
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
    """The torch backend's "none": l w v with its gradient kept from the forward. ``fn(x3)`` ->
    (l w v, gradient, per_row, op), op the name a double backward's error gives (spec 8; it
    travels in ``fn``'s result: torch.compile takes no str argument to an autograd.Function)."""

    @staticmethod
    def forward(ctx, fn, x3):  # type: ignore[override]
        out, grad, per_row, op = fn(x3)
        ctx.save_for_backward(grad)
        ctx.op, ctx.per_row, ctx.dtype = op, per_row, x3.dtype
        return out

    @staticmethod
    def backward(ctx, go):  # type: ignore[override]
        refuse_double_backward(f"{ctx.op} (torch backend)")
        (grad,) = ctx.saved_tensors
        g = go.unsqueeze(1) if ctx.per_row else go
        return None, (grad * g).to(ctx.dtype)


class _TorchDenseSums(torch.autograd.Function):
    """The torch backend's sums: ``fn(x3)`` -> (sum of l w v, sum of v, its gradient, op), the
    gradient scaled by the upstream one in backward (``PrecomputedGradient``, with the op's name
    carried by ``fn``'s result)."""

    @staticmethod
    def forward(ctx, fn, x3):  # type: ignore[override]
        total, count, grad, op = fn(x3)
        ctx.save_for_backward(grad)
        ctx.op, ctx.dtype = op, x3.dtype
        ctx.mark_non_differentiable(count)
        return total, count

    @staticmethod
    def backward(ctx, go, _gcount):  # type: ignore[override]
        refuse_double_backward(f"{ctx.op} (torch backend)")
        (grad,) = ctx.saved_tensors
        return None, (grad * go).to(ctx.dtype)


class _NamedTritonOp(torch.autograd.Function):
    """Identity on the triton ops' differentiable output whose backward refuses a double backward
    naming the public loss (spec 8: ``"<op> (triton backend): double backward"``; the kernel op
    itself would name its internal ``dense_sums`` / ``dense_none``), then passes the gradient.
    ``name()`` gives the name (a callable: torch.compile takes no str argument here)."""

    @staticmethod
    def forward(ctx, name, out):  # type: ignore[override]
        ctx.op = name()
        return out.view_as(out)

    @staticmethod
    def backward(ctx, go):  # type: ignore[override]
        refuse_double_backward(f"{ctx.op} (triton backend)")
        return None, go


DENSE_OP = "fused_losses.registry.dense.dense_loss"  # the name of a caller that gives none


def dense_loss(x3, t, q, sw, cw, cp, spec: DenseSpec, mode: str, backend: str, op: str = DENSE_OP):
    """mode "sum": (sum of l w v, sum of v), 0-dim each; "none": l w v ([N,S] or [N,C,S]).
    ``op``: the public loss's name, which a double backward's RuntimeError gives (spec 8)."""
    per_row = spec.family == "softmax" or spec.per_row
    if resolve_backend(backend, x3.device) == "triton":
        from ..triton_classification import dense_none_triton, dense_sums_triton

        def name():
            return op

        if mode == "sum":
            s, count = dense_sums_triton(x3, t, q, sw, cw, cp, spec.kernel_options())
            return _NamedTritonOp.apply(name, s), count
        out = dense_none_triton(x3, t, q, sw, cw, cp, spec.kernel_options())
        return _NamedTritonOp.apply(name, out)

    if mode == "sum":

        def value_and_grad(x):
            lv, d, v = _torch_terms(x, t, q, sw, cw, cp, spec)
            return lv.sum(), v.sum().to(lv.dtype), d.to(x.dtype), op

        return _TorchDenseSums.apply(value_and_grad, x3)

    def fn(x):
        lv, d, _ = _torch_terms(x, t, q, sw, cw, cp, spec)
        return lv, d, per_row, op

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
        if avg_factor is not None:
            raise ValueError('avg_factor: can not be used with reduction="batchmean"')
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
        reduction = self._reduction(reduction_override)
        options = self._call_options(call_options)
        avg_factor = check_avg_factor(avg_factor)
        x3, t, q, cw, cp, spec, l_shape, has_valid = self._plan(pred, target, options)
        sw = None
        if check_weight(weight, pred) is not None:
            w = weight.detach()
            if not w.is_floating_point():
                w = w.to(compute_dtype(pred.dtype))
            w = expand_weight(w, l_shape)
            n, c, s = x3.shape
            per_row = spec.family == "softmax" or spec.per_row
            sw = w.reshape(n, 1, s) if per_row else w.reshape(n, c, s)
        op = type(self).__name__  # the double-backward error's name (spec 8)
        if reduction == "none":
            out = dense_loss(x3, t, q, sw, cw, cp, spec, "none", self.backend, op)
            out = out.reshape(l_shape)
        else:
            avg = avg_factor if avg_factor is not None else self.avg_factor
            if reduction in ("sum", "batchmean") and avg is not None:  # before any kernel
                raise ValueError(f'avg_factor: can not be used with reduction="{reduction}"')
            s, count = dense_loss(x3, t, q, sw, cw, cp, spec, "sum", self.backend, op)
            use_count = has_valid and options.get("avg_non_ignore", True)
            out = reduce_sums(
                s, count if use_count else None, math.prod(l_shape), reduction, avg,
                pred.shape[0] if pred.dim() else 1,
            )  # fmt: skip
        return out * self.loss_weight if self.loss_weight != 1.0 else out


def check_logits(pred: Any, name: str = "pred", min_dim: int = 2) -> Tensor:
    """Floating logits of at least ``min_dim`` dims; with a class axis (``min_dim`` >= 2), at
    least one class (C = 0 would leave nothing to normalise over, and no kernel output written)."""
    if not isinstance(pred, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(pred).__name__}")
    if not pred.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {pred.dtype}")
    if pred.dim() < min_dim:
        raise ValueError(f"{name}: expected shape [N, C, *], got {shape_str(pred)}")
    if min_dim >= 2 and pred.shape[1] < 1:
        raise ValueError(
            f"{name}: expected C >= 1 classes (shape [N, C, *]), got {shape_str(pred)}"
        )
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
