"""Distillation losses of the registry (docs/spec.md 12.6; SPEC 10.4). ``pred`` = the student's
tensor s, ``target`` = the teacher's t (detached, except CRD's teacher embedding, see ``CRDLoss``);
P = softmax(s/T), Q = softmax(t/T) over dim 1.

    KnowledgeDistillationLoss  T^2 KL(Q||P)                                 s, t [N,C,*] -> [N,*]
    DKDLoss            alpha TCKD + beta NCKD, call option labels [N]        s, t [N,C] -> [N]
    DISTLoss           T^2 (beta inter + gamma intra), Pearson terms         s, t [N,C] -> 0-dim
    FeatureMSELoss     (f(s) - t)^2, f a learnable 1x1 align  s [N,Cs,*], t [N,Ct,*] -> [N,Ct,*]
    FeatureL1Loss      abs(f(s) - t)                                         -> [N,Ct,*]
    FeatureCosineLoss  1 - cos(f(s), t) over the channels                    -> [N,*]
    AttentionLoss      (a(s) - a(t))^2, a(F) = mean_c abs(F_c)^p   [N,C,H,W] pairs -> [N,H*W]
    MGDLoss            alpha sum (G(f(s) M) - t)^2 / N, M a random mask      -> 0-dim
    RKDDistanceLoss    smoothL1 of the mean-normalised distance matrices     [N,*] -> [N,N]
    RKDAngleLoss       smoothL1 of the angle tensors                         [N,*] -> [N,N,N]
    CRDLoss            CRD's NCE, call options bank_t, bank_s                [N,D] -> [N]
    PKTLoss            K_t log((K_t + eps)/(K_s + eps)), cosine kernels      [N,D] -> [N,N]

KnowledgeDistillationLoss is fused: one pass computes both log-sum-exps online and the partial
sums (no softmax map in memory); backward writes dL/ds = T (P - Q) in one pass. Its default
reduction is "batchmean" (sum / N, mmrazor); "mean" for every other row. A 0-dim l (DIST, MGD)
is returned as is by "none", "mean" and "sum" ("batchmean" divides it by N, BaseLoss's rule) and
takes no sample weight.

FeatureMSE/L1/Cosine are fused on the triton backend without a sample weight
(``kernels/feature.py``: one row kernel over f(s) and t, the normalisation in-kernel; backward
recomputes), and AttentionLoss's maps mean_c abs(F_c)^p come from the same kernel. The other rows,
and these with a sample weight or on the torch backend, are plain PyTorch (autograd), traceable
and free of host syncs (masks, counts and CRD's normaliser stay on the device). float64 inputs
are computed in float64, every other floating dtype in float32 (the learnable layers of the
Feature losses and of MGD run in their parameters' dtype, autocast aside).

At the edges: every norm (normalize, the cosines, AttentionLoss's maps, PKT, RKD's angles, CRD) is
max-scaled (``l2_normalize``), so float32 features of 1e20 or 1e-30 give the float64 values; DKD's
TCKD and NCKD are sums of non-negative terms (``tempered_kl_terms``) and DIST's deviations from
the uniform distribution are formed without cancellation, accurate at any temperature in their
ranges; a Feature loss's input of weight 0 is replaced before the formula (``_mask_inputs``), as
are DKD's and CRD's samples of weight 0 (CRD's Z is the mean over the others); a NaN or +inf
logit makes DKD's sample NaN; the feature losses and DIST refuse C = 0; an empty batch (and MGD's
empty map) gives 0. The norms and RKD's distances have finite derivatives of every order (double
backward exact on these plain-autograd rows).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backend import resolve_backend
from ..validation import (
    check_bool,
    check_floating,
    check_integer,
    check_number,
    check_real,
    check_tensor,
    shape_str,
)
from .base_loss import BaseLoss, check_avg_factor
from .builder import LOSSES
from .dense import (
    SM_KD,
    T_DENSE,
    DenseSpec,
    FusedLoss,
    as_rows,
    check_dense_target,
    check_logits,
    dense_as_rows,
    reduce_sums,
)
from .utils import weight_keep

F_MSE, F_L1, F_COS, F_ATT = 0, 1, 2, 3  # kernels/feature.py


def feature_triton(a: Tensor, t: Tensor | None, mode: str, opts: dict) -> Tensor:
    """The fused feature op (``triton_feature``), imported on first use."""
    from ..triton_feature import feature_triton as run

    return run(a, t, mode, opts)


@LOSSES.register_module(name=["KnowledgeDistillationLoss", "KDLoss"])
class KnowledgeDistillationLoss(FusedLoss):
    """T^2 KL(softmax(t/T) || softmax(s/T)) (Hinton); s, t [N,C,*] -> [N,*]; ``tau`` is an alias of
    ``temperature``, in [1e-30, 1e30] (as DKD's: accurate in float32 over the whole range, the
    T -> inf limit beyond 1e6; below 1e-30 ordinary logits overflow s/T, above 1e30 the tempered
    gaps leave float32's normal range); reduction "batchmean" by default. Logits must keep s/T
    and t/T finite (abs(s) below about 3e38 T): beyond, the value is NaN."""

    OPTIONS: ClassVar[dict[str, Any]] = {"temperature": 4.0}
    ALIASES: ClassVar[dict[str, str]] = {"tau": "temperature"}
    DEFAULT_REDUCTION: ClassVar[str] = "batchmean"

    @classmethod
    def check_options(cls, options):
        options["temperature"] = _check_temperature(options["temperature"], 1e30)

    def _plan(self, pred, target, options):
        s = check_logits(pred)
        t = check_dense_target(target, s)
        if not t.is_floating_point():
            raise TypeError(f"target: expected the teacher's floating-point logits, got {t.dtype}")
        spec = DenseSpec("softmax", SM_KD, T_DENSE, True, a0=options["temperature"])
        l_shape = (s.shape[0], *s.shape[2:])
        return as_rows(s), dense_as_rows(t, s), None, None, None, spec, l_shape, False


# ------------------------------------------------------------------------- plain PyTorch rows


def _cdt(x: Tensor) -> torch.dtype:
    """The compute dtype: float64 stays, everything else runs in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_float_tensor(name: str, x: Any) -> Tensor:
    check_tensor(name, x)
    check_floating(name, x)
    return x


def _check_dims(name: str, x: Tensor, dims: int | tuple[int, ...], pretty: str) -> None:
    ok = x.dim() == dims if isinstance(dims, int) else x.dim() in dims
    if not ok:
        raise ValueError(f"{name}: expected shape {pretty}, got {shape_str(x)}")


def _check_device(name: str, x: Tensor, like: Tensor, like_name: str = "pred") -> None:
    if x.device != like.device:
        raise ValueError(
            f"{name}: expected a tensor on {like.device} (like {like_name}), got one on {x.device}"
        )


def _check_teacher(t: Any, s: Tensor, same_shape: bool = True) -> Tensor:
    """The teacher's tensor: floating, on s's device, of s's shape (``same_shape``) or of its
    batch size."""
    _check_float_tensor("target", t)
    if same_shape and t.shape != s.shape:
        raise ValueError(f"target: expected pred's shape {shape_str(s)}, got {shape_str(t)}")
    if not same_shape and (t.dim() == 0 or t.shape[0] != s.shape[0]):
        raise ValueError(
            f"target: expected the batch size N = {s.shape[0]} of pred {shape_str(s)} (shape "
            f"[{s.shape[0]}, ...]), got {shape_str(t)}"
        )
    _check_device("target", t, s)
    return t


def _check_channels(name: str, value: Any, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        expected = "a positive int or None" if allow_none else "a positive int"
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return value


def _check_positive_int_option(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def _check_module_input(module: torch.nn.Module, x: Tensor, name: str = "pred") -> None:
    """x on the device of the loss's parameters and of their dtype (autocast aside)."""
    p = next(module.parameters(), None)
    if p is None:
        return
    if x.device != p.device:
        raise ValueError(
            f"{name}: expected a tensor on {p.device}, the device of the loss's learnable layers "
            f"(move the loss with .to()), got one on {x.device}"
        )
    if x.dtype != p.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"{name}: expected dtype {p.dtype}, the dtype of the loss's learnable layers (convert "
            f"the loss with .to(dtype)), got {x.dtype}"
        )


def _unit_scale(x: Tensor, dim: int) -> Tensor:
    """m = max abs(x) over ``dim`` (kept), detached, 1 where it is 0: the scale of ``l2_normalize``
    (any constant m gives the same function, so holding it constant keeps the gradient exact)."""
    m = x.detach().abs().amax(dim, keepdim=True)
    return torch.where(m > 0, m, torch.ones((), dtype=m.dtype, device=m.device))


def _norm(y: Tensor, dim: int) -> Tensor:
    """||y|| over ``dim`` (kept), 0 for a zero vector, with finite derivatives of every order
    (``vector_norm``'s double backward is NaN at 0): sqrt of the sum of squares where it is
    positive, a constant 0 elsewhere."""
    s2 = (y * y).sum(dim, keepdim=True)
    pos = s2 > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, s2, torch.ones_like(s2))), 0.0)


def l2_normalize(x: Tensor, dim: int = 1, eps: float = 1e-12) -> Tensor:
    """``x / max(||x||, eps)`` over ``dim`` (``F.normalize``) at any scale: with m = max abs(x)
    over ``dim`` (held constant), ``(x/m) / ||x/m||`` where ``||x/m|| > eps/m``, ``x / eps``
    where the norm is clamped. No square over- or underflows (a float32 feature of 1e20 or 1e-30
    gives F.normalize's float64 value), and the clamped branch divides x itself, so that its
    gradient ``g / eps`` never passes through a subnormal ``(g / (eps/m))`` (features of 1e-30
    under the cosine's eps 1e-8). Finite derivatives of every order, also at a zero vector
    (double backward exact). Same shape as x."""
    if x.shape[dim] == 0:
        return x
    m = _unit_scale(x, dim)
    y = x / m
    r = _norm(y, dim)
    big = r > eps / m
    unit = y / torch.where(big, r, torch.ones_like(r))
    return torch.where(big, unit, torch.where(big, 0.0, x) / eps)


def cosine_similarity(a: Tensor, b: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """``sum(a / max(||a||, eps) * b / max(||b||, eps))`` over ``dim`` (``F.cosine_similarity``)
    through ``l2_normalize``: scale-invariant in float32 (no norm overflows or underflows)."""
    return (l2_normalize(a, dim, eps) * l2_normalize(b, dim, eps)).sum(dim)


def _check_temperature(value: Any, hi: float) -> float:
    """A temperature in [1e-30, hi] (a ValueError naming it and the range otherwise)."""
    t = check_number("temperature", value)
    if not 1e-30 <= t <= hi:
        raise ValueError(f"temperature: expected a number in [1e-30, {hi:g}], got {value!r}")
    return t


def _check_has_channels(name: str, x: Tensor, pretty: str) -> None:
    """C >= 1 (dim 1): a norm, cosine or channel mean of no channel is not defined."""
    if x.dim() >= 2 and x.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one channel (shape {pretty} with C >= 1), "
                         f"got {shape_str(x)}")  # fmt: skip


def _smooth_l1(a: Tensor, b: Tensor) -> Tensor:
    """Elementwise smooth L1 with beta = 1: 0.5 d^2 if d < 1 else d - 0.5, d = |a - b|."""
    return F.smooth_l1_loss(a, b, reduction="none", beta=1.0)


class _DistillLoss(BaseLoss):
    """A plain-PyTorch distillation row: call options that are tensors default to None in
    ``OPTIONS`` and are refused at construction (they belong to a call)."""

    @classmethod
    def _refuse_call_tensors(cls, options: dict[str, Any]) -> None:
        for name in cls.CALL_OPTIONS:
            if options.get(name) is not None:
                raise ValueError(
                    f"{name}: a call option of {cls.registry_name or cls.__name__} (pass it to "
                    f"the loss's call), not a constructor option"
                )


# h(w) / w^2 = sum_j (j + 1) w^j / (j + 2)!, h(w) = w e^w - e^w + 1: 20 terms are below float64's
# half ulp for |w| < 1
_H_SERIES = tuple((j + 1) / math.factorial(j + 2) for j in range(20))


def tempered_kl_terms(log_p: Tensor, log_q: Tensor, d: Tensor, temperature: float
                      ) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(T^2 KL(Q||P) [N], L [N]) over dim 1 of two distributions given by their logarithms
    log P, log Q [N, K] (-inf: no mass) and by d [N, K], known without cancellation (the
    tempered logit gap (t - s)/T, or a gap computed by a previous call), with
    log Q - log P = d - L, L = log sum_c P_c exp(d_c) (d matters only where both have mass).

    KL = sum_c P_c h(w_c), w = d - L = log(Q_c / P_c), h(w) = w e^w - e^w + 1 >= 0 (as
    sum_c P_c (e^w - 1) = 0): a sum of non-negative terms, each formed without cancellation, so
    that T^2 KL is accurate in float32 at any temperature (at T = 1e6 the textbook
    T^2 sum_c Q_c (log Q_c - log P_c) is a difference of two logarithms that agree to 12
    digits). Per class: P (T w)^2 sum_j (j+1) w^j/(j+2)! for abs(w) < 1, T^2 (Q (w - 1) + P)
    beyond (Q from log Q), T^2 P where Q = 0, +inf where P = 0 < Q (torch ``kl_div``'s values);
    T^2 is applied as two factors T (no overflow of T^2 alone). L comes from m = max d and
    E = sum_c P_c expm1(d_c - m) (terms of one sign): m + log1p(E), or m + logsumexp(log P +
    d - m) when that sum is below 1/2 (no underflow at a small T). Plain differentiable tensor
    ops whose untaken branches stay finite (autograd exact, double backward included). Only -inf
    means no mass: a NaN log P or log Q makes its row NaN."""
    zero = torch.zeros((), dtype=d.dtype, device=d.device)
    ninf = torch.full((), -math.inf, dtype=d.dtype, device=d.device)
    pv, qv = log_p != -math.inf, log_q != -math.inf  # NaN: not "no mass" (it propagates)
    both = pv & qv
    ds = torch.where(both, d, zero)
    m = torch.where(both, ds, ninf).amax(1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, zero)
    x = torch.where(both, ds - m, ninf)  # <= 0
    p = torch.exp(log_p)
    e_sum = (p * torch.expm1(x)).sum(1, keepdim=True)  # in [-1, 0]
    lse = torch.logsumexp(log_p + x, 1, keepdim=True)  # log(1 + e_sum), from positive terms
    near = lse > -math.log(2.0)
    lam = torch.where(near, torch.log1p(torch.where(near, e_sum, zero)),
                      torch.where(torch.isfinite(lse), lse, zero))  # fmt: skip
    w = torch.where(both, (ds - m) - lam, zero)
    small = both & (w.abs() < 1)
    ws = torch.where(small, w, zero)
    g = torch.full_like(ws, _H_SERIES[-1])
    for coef in reversed(_H_SERIES[:-1]):
        g = g * ws + coef
    tw = temperature * ws
    term_small = p * tw * tw * g
    wl = torch.where(both & ~small, w, zero)
    q_l = torch.exp(torch.where(both, log_q, ninf))  # as given: exp(log P + w) would carry
    # log P's absolute error (large at a small T) into Q
    p_l = torch.where(both, p, zero)
    term_large = (q_l * (wl - 1) + p_l) * temperature * temperature
    term_no_q = p * temperature * temperature
    inf = torch.full((), math.inf, dtype=d.dtype, device=d.device)
    term = torch.where(small, term_small, torch.where(
        both, term_large, torch.where(pv, term_no_q, torch.where(qv, inf, zero))))  # fmt: skip
    big_l = torch.where(lse > -math.inf, m + lam, ninf)
    return term.sum(1), big_l.squeeze(1)


@LOSSES.register_module(name=["DKDLoss", "DecoupledKDLoss"])
class DKDLoss(_DistillLoss):
    """Decoupled KD (Zhao et al.; mdistiller ``DKD``): ``l = alpha TCKD + beta NCKD`` with
    ``TCKD = T^2 KL((Q_y, 1-Q_y) || (P_y, 1-P_y))`` and ``NCKD = T^2 KL(Q' || P')``, P', Q' the
    softmaxes of s/T, t/T over the classes c != y (exact exclusion, equal to mdistiller's
    ``-1000 gt_mask``). s, t [N,C] (C >= 2), call option ``labels`` [N] (integer) -> l [N].
    Options: temperature 4.0 (alias ``tau``), alpha 1.0, beta 8.0. A label outside [0, C) (an
    ignore value such as -100) makes its sample contribute 0, not counted by "mean". A teacher
    with no probability off y (logits -inf there) has NCKD = 0 (Q' undefined; its KD weight
    1 - Q_y is 0). Both terms come from ``tempered_kl_terms`` (no cancellation: float32 within
    1e-5 of float64 from T = 1e-3 to 100, and T^2 KL -> its T -> inf limit, half the variance of
    the logit gap, at T = 1e6 .. 1e30); temperature in [1e-30, 1e30].

    Non-finite inputs: -inf is "no mass" (above); a NaN or +inf logit in s or t makes its sample's
    l NaN and its gradient row NaN (as KDLoss and the literal formula: softmax of +inf is NaN),
    never a finite value. A sample of weight 0 or with a label outside [0, C) has its s and t
    replaced by 0 before the formula (docs/spec.md 12.2 rule 1): its l and its gradient are
    exactly 0, whatever its inputs hold."""

    OPTIONS: ClassVar[dict[str, Any]] = {
        "temperature": 4.0, "alpha": 1.0, "beta": 8.0, "labels": None,
    }  # fmt: skip
    ALIASES: ClassVar[dict[str, str]] = {"tau": "temperature"}
    CALL_OPTIONS: ClassVar[tuple[str, ...]] = ("labels",)

    @classmethod
    def check_options(cls, options):
        cls._refuse_call_tensors(options)
        # exact at any scale (``tempered_kl_terms``); the range keeps T, T^2 KL's factors and
        # s/T inside float32 (T near float32's maximum would make the gradient overflow)
        options["temperature"] = _check_temperature(options["temperature"], 1e30)
        options["alpha"] = check_number("alpha", options["alpha"])
        options["beta"] = check_number("beta", options["beta"])

    def _mask_inputs(self, pred: Any, target: Any, weight: Tensor | None) -> tuple[Any, Any]:
        """The samples of weight 0 have s and t replaced by 0 (docs/spec.md 12.2 rule 1): a NaN
        or inf there contributes exactly 0 to the value and the gradient. Inputs or a weight of
        another shape are left for the checks and the rules to name."""
        if not (isinstance(pred, Tensor) and isinstance(target, Tensor)):
            return pred, target
        if not isinstance(weight, Tensor) or pred.dim() != 2 or target.shape != pred.shape:
            return pred, target
        try:
            keep = weight_keep(weight, (pred.shape[0],), pred)
        except ValueError:
            return pred, target
        if keep.device != pred.device or target.device != pred.device:
            return pred, target
        zero = torch.zeros((), dtype=pred.dtype, device=pred.device)
        keep = keep[:, None]
        return torch.where(keep, pred, zero), torch.where(keep, target, zero.to(target.dtype))

    def _forward(self, pred, target, *, temperature, alpha, beta, labels):
        s = _check_float_tensor("pred", pred)
        _check_dims("pred", s, 2, "[N, C] (C >= 2)")
        if s.shape[1] < 2:
            raise ValueError(f"pred: expected shape [N, C] with C >= 2 classes, got {shape_str(s)}")
        t = _check_teacher(target, s)
        if labels is None:
            raise ValueError("labels: required, the class index of each sample [N] (a call option)")
        check_tensor("labels", labels)
        check_integer("labels", labels)
        if tuple(labels.shape) != (s.shape[0],):
            raise ValueError(f"labels: expected shape [{s.shape[0]}], got {shape_str(labels)}")
        _check_device("labels", labels, s)
        cdt = _cdt(s)
        n_cls = s.shape[1]
        s_c, t_c = s.to(cdt), t.detach().to(cdt)
        zero = torch.zeros((), dtype=cdt, device=s.device)
        neg_inf = torch.full((), -math.inf, dtype=cdt, device=s.device)
        y = labels.long()
        valid = (y >= 0) & (y < n_cls)

        # a sample with an invalid label (l = 0, rule 1) or with a NaN / +inf logit (l NaN) is
        # computed from zeros (finite, no NaN in its own gradient), then the latter is poisoned
        def usable(x: Tensor) -> Tensor:
            return (torch.isfinite(x) | (x == -math.inf)).all(1)

        bad = valid & ~(usable(s_c) & usable(t_c))
        clean = (valid & ~bad)[:, None]
        s_raw = s_c
        s_c, t_c = torch.where(clean, s_c, zero), torch.where(clean, t_c, zero)
        y = torch.where(valid, y, 0)
        z, u = s_c / temperature, t_c / temperature
        gt = torch.arange(n_cls, device=s.device) == y[:, None]  # [N, C]
        d = (t_c - s_c) / temperature  # log Q - log P up to a constant, without cancellation
        lse_s, lse_t = torch.logsumexp(z, 1), torch.logsumexp(u, 1)
        z_o, u_o = torch.where(gt, neg_inf, z), torch.where(gt, neg_inf, u)
        lse_s_o, lse_t_o = torch.logsumexp(z_o, 1), torch.logsumexp(u_o, 1)  # over c != y
        # NCKD on the softmaxes over the classes != y. No teacher mass off y (lse = -inf): Q' is
        # undefined and NCKD is 0 (its KD weight 1 - Q_y is 0; mdistiller's -1000 trick would
        # put Q' on y there instead); such a row's teacher is replaced by 0 before the formula
        mass = torch.isfinite(lse_t_o)
        u_o = torch.where(mass[:, None], u_o, torch.where(gt, neg_inf, zero))
        lse_t_o_safe = torch.where(mass, lse_t_o, torch.logsumexp(u_o, 1))
        nckd, gap_o = tempered_kl_terms(z_o - lse_s_o[:, None], u_o - lse_t_o_safe[:, None],
                                        torch.where(gt | ~mass[:, None], zero, d),
                                        temperature)  # fmt: skip
        nckd = torch.where(mass, nckd, zero)
        # TCKD on the binary (P_y, 1 - P_y): log(1 - P_y) = lse_{c != y} - lse_all; its gaps are
        # d_y and gap_o = lse_{c != y}(u) - lse_{c != y}(z) (exact, from the NCKD call)
        log_p_bin = torch.stack([torch.where(gt, z, zero).sum(1) - lse_s, lse_s_o - lse_s], 1)
        log_q_bin = torch.stack([torch.where(gt, u, zero).sum(1) - lse_t, lse_t_o - lse_t], 1)
        d_bin = torch.stack([torch.where(gt, d, zero).sum(1), torch.where(mass, gap_o, zero)], 1)
        tckd, _ = tempered_kl_terms(log_p_bin, log_q_bin, d_bin, temperature)
        # NaN / +inf input: l NaN and its gradient row NaN (s_raw * NaN; 0 on the other rows)
        poison = torch.where(bad, math.nan, 0.0).to(cdt)[:, None]
        nan_term = (torch.where(bad[:, None], s_raw, zero) * poison).sum(1)
        return alpha * tckd + beta * nckd + nan_term, valid


@LOSSES.register_module(name=["DISTLoss"])
class DISTLoss(_DistillLoss):
    """DIST (Huang et al.; mmrazor ``DISTLoss``): with P = softmax(s/T), Q = softmax(t/T) and
    ``r(a, b) = cosine_similarity(a - mean a, b - mean b, eps=1e-8)`` (Pearson),
    ``l = T^2 (beta (1 - mean_n r(P_n, Q_n)) + gamma (1 - mean_c r(P_:c, Q_:c)))``: inter-class
    relation over the rows, intra-class over the columns. s, t [N,C] -> 0-dim. Options:
    temperature 1.0 (alias ``tau``; in [1e-30, 1e15]: the value grows as T^2), beta 1.0 (alias
    ``inter_loss_weight``, mmrazor), gamma 1.0 (alias ``intra_loss_weight``). The deviations
    P - mean P come from ``_softmax_parts`` (no cancellation where P is nearly uniform, at a
    large T). An empty batch gives 0; C = 0 (no class) is a ValueError naming pred."""

    OPTIONS: ClassVar[dict[str, Any]] = {"temperature": 1.0, "beta": 1.0, "gamma": 1.0}
    ALIASES: ClassVar[dict[str, str]] = {
        "tau": "temperature", "inter_loss_weight": "beta", "intra_loss_weight": "gamma",
    }  # fmt: skip

    @classmethod
    def check_options(cls, options):
        # the value is T^2 times a number in [0, 2 (beta + gamma)]: beyond 1e15 it leaves
        # float32's range for any reasonable weight
        options["temperature"] = _check_temperature(options["temperature"], 1e15)
        options["beta"] = check_number("beta", options["beta"])
        options["gamma"] = check_number("gamma", options["gamma"])

    def _forward(self, pred, target, *, temperature, beta, gamma):
        s = _check_float_tensor("pred", pred)
        _check_dims("pred", s, 2, "[N, C]")
        _check_has_channels("pred", s, "[N, C]")
        t = _check_teacher(target, s)
        cdt = _cdt(s)
        if s.shape[0] == 0:
            return s.to(cdt).sum(), None
        # Pearson sees the deviations from the mean; at a large T, P = 1/C + O(1/T) and the
        # rounded softmax would lose them: rows use D = P - 1/C formed without cancellation,
        # each column whichever of P and D carries the smaller rounding error
        p, p_dev, p_err = _softmax_parts(s.to(cdt) / temperature)
        q, q_dev, q_err = _softmax_parts(t.detach().to(cdt) / temperature)

        def centred(x: Tensor, dim: int) -> Tensor:
            return x - x.mean(dim, keepdim=True)

        inter = 1 - cosine_similarity(centred(p_dev, 1), centred(q_dev, 1), 1, 1e-8).mean()
        cols_p = torch.where(p_err.sum(0) > p.sum(0), centred(p, 0), centred(p_dev, 0))
        cols_q = torch.where(q_err.sum(0) > q.sum(0), centred(q, 0), centred(q_dev, 0))
        intra = 1 - cosine_similarity(cols_p, cols_q, 0, 1e-8).mean()
        return (beta * inter + gamma * intra) * temperature * temperature, None


def _softmax_parts(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(P, D, E) of x [N, C] over dim 1: P = softmax(x); D = P - 1/C without cancellation, with
    a = x - max x, (expm1(a) - mean_c expm1(a)) / sum_c exp(a) (accurate where P is nearly
    uniform, where P - 1/C would keep only P's rounding); E bounds D's rounding error in units
    of eps, as P does P's."""
    a = x - x.amax(1, keepdim=True)
    ex = torch.exp(a)
    total = ex.sum(1, keepdim=True)
    e = torch.expm1(a)
    e_mean = e.mean(1, keepdim=True)
    return ex / total, (e - e_mean) / total, (e.abs() + e_mean.abs()).detach() / total.detach()


class _FeatureLoss(_DistillLoss):
    """Feature imitation: f(s) against t, f the learnable 1x1 conv ``align`` (Cs -> Ct) when
    ``student_channels`` and ``teacher_channels`` are both given and differ, else the identity.
    ``align`` is an ``nn.Conv2d(Cs, Ct, 1)``, applied as a convolution to [N,Cs,H,W] and as the
    same per-position linear map (its [Ct,Cs] weight and bias, ``nn.Linear``'s computation and
    initialisation) to [N,Cs] and the other ranks. ``normalize``: f(s) and t are L2-normalised
    over the channels (``F.normalize``, eps 1e-12) before they are compared."""

    OPTIONS: ClassVar[dict[str, Any]] = {
        "normalize": False, "student_channels": None, "teacher_channels": None,
    }  # fmt: skip

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        cs, ct = self.options["student_channels"], self.options["teacher_channels"]
        self.align: torch.nn.Conv2d | None = None
        if cs is not None and ct is not None and cs != ct:
            self.align = torch.nn.Conv2d(cs, ct, kernel_size=1)

    @classmethod
    def check_options(cls, options):
        check_bool("normalize", options["normalize"])
        _check_channels("student_channels", options["student_channels"])
        _check_channels("teacher_channels", options["teacher_channels"])

    LOSS_KIND: ClassVar[int] = F_MSE

    def _mask_inputs(self, pred: Any, target: Any, weight: Tensor | None) -> tuple[Any, Any]:
        """Inputs of weight 0 replaced by 0 before the formula (docs/spec.md 12.2 rule 1), so a
        non-finite one contributes exactly 0 to the value and to every gradient: the elements of
        weight 0 of t and (without ``align``) of s for the plain elementwise losses; the
        positions whose weight is 0 in every channel, all channels of s and t, where channels
        are coupled (``normalize``, the cosine, ``align``'s mixing of s)."""
        if not (isinstance(pred, Tensor) and isinstance(target, Tensor)):
            return pred, target
        if not isinstance(weight, Tensor) or pred.dim() < 2 or target.dim() != pred.dim():
            return pred, target  # the checks name it
        if pred.shape[0] != target.shape[0] or pred.shape[2:] != target.shape[2:]:
            return pred, target
        cos = self.LOSS_KIND == F_COS
        l_shape = (target.shape[0], *target.shape[2:]) if cos else tuple(target.shape)
        try:
            keep = weight_keep(weight, l_shape, pred)
        except ValueError:
            return pred, target  # the rules name it
        if keep.device != pred.device or target.device != pred.device:
            return pred, target
        pos = keep.unsqueeze(1) if cos else keep.any(1, keepdim=True)
        keep_t = pos if cos or self.options["normalize"] else keep
        keep_s = pos if self.align is not None else keep_t
        zero = torch.zeros((), dtype=pred.dtype, device=pred.device)
        return torch.where(keep_s, pred, zero), torch.where(keep_t, target, zero.to(target.dtype))

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None,
                **call_options):  # fmt: skip
        """The fused path (``kernels/feature.py``) on the triton backend without a sample
        weight; ``BaseLoss.forward`` (tensor ops) otherwise."""
        device = pred.device if isinstance(pred, Tensor) else torch.device("cpu")
        if weight is not None or resolve_backend(self.backend, device) != "triton":
            return super().forward(pred, target, weight, avg_factor, reduction_override,
                                   **call_options)  # fmt: skip
        reduction = self._reduction(reduction_override)
        self._call_options(call_options)
        f, t = self._aligned(pred, target, normalize=False)
        kind = self.LOSS_KIND
        opts = {"loss": kind, "normalize": self.options["normalize"], "p": 1.0}
        l_shape = tuple(f.shape) if kind != F_COS else (f.shape[0], *f.shape[2:])
        if reduction == "none":
            out = feature_triton(as_rows(f), as_rows(t), "none", opts).reshape(l_shape)
        else:
            total = feature_triton(as_rows(f), as_rows(t), "sum", opts)
            avg = check_avg_factor(avg_factor) if avg_factor is not None else self.avg_factor
            out = reduce_sums(total, None, math.prod(l_shape), reduction, avg, f.shape[0])
        return out * self.loss_weight if self.loss_weight != 1.0 else out

    def _aligned(
        self, pred: Any, target: Any, normalize: bool | None = None
    ) -> tuple[Tensor, Tensor]:
        """(f(s), t) in the compute dtype, L2-normalised when ``normalize`` (default: the
        option); t detached."""
        s = _check_float_tensor("pred", pred)
        _check_dims("pred", s, tuple(range(2, 64)), "[N, Cs, *]")
        t = _check_float_tensor("target", target)
        _check_has_channels("pred", s, "[N, Cs, *]")
        _check_has_channels("target", t, "[N, Ct, *]")
        cs, ct = self.options["student_channels"], self.options["teacher_channels"]
        if cs is not None and s.shape[1] != cs:
            raise ValueError(f"pred: expected student_channels = {cs} channels (shape [N, {cs}, "
                             f"*]), got {shape_str(s)}")  # fmt: skip
        if ct is not None and (t.dim() < 2 or t.shape[1] != ct):
            raise ValueError(f"target: expected teacher_channels = {ct} channels (shape [N, {ct}, "
                             f"*]), got {shape_str(t)}")  # fmt: skip
        want_c = ct if self.align is not None else s.shape[1]
        want = (s.shape[0], want_c, *s.shape[2:])
        if tuple(t.shape) != want:
            what = "f(pred)'s" if self.align is not None else "pred's"
            raise ValueError(f"target: expected {what} shape [{', '.join(map(str, want))}], got "
                             f"{shape_str(t)}")  # fmt: skip
        _check_device("target", t, s)
        f = s
        if self.align is not None:
            _check_module_input(self, s)
            w, b = self.align.weight, self.align.bias
            if s.dim() == 4:
                f = F.conv2d(s, w, b)
            else:
                f = F.linear(s.movedim(1, -1), w[:, :, 0, 0], b).movedim(-1, 1)
        cdt = _cdt(f)
        f, t = f.to(cdt), t.detach().to(cdt)
        if self.options["normalize"] if normalize is None else normalize:
            f, t = l2_normalize(f, 1, 1e-12), l2_normalize(t, 1, 1e-12)
        return f, t


@LOSSES.register_module(name=["FeatureMSELoss"])
class FeatureMSELoss(_FeatureLoss):
    """``l = (f(s) - t)^2``; s [N,Cs,*], t [N,Ct,*] -> [N,Ct,*] (``_FeatureLoss``: f, normalize).
    Options: normalize False, student_channels None, teacher_channels None."""

    def _forward(self, pred, target, **options):
        f, t = self._aligned(pred, target)
        return (f - t) ** 2, None


@LOSSES.register_module(name=["FeatureL1Loss"])
class FeatureL1Loss(_FeatureLoss):
    """``l = abs(f(s) - t)``; s [N,Cs,*], t [N,Ct,*] -> [N,Ct,*]."""

    LOSS_KIND: ClassVar[int] = F_L1

    def _forward(self, pred, target, **options):
        f, t = self._aligned(pred, target)
        return (f - t).abs(), None


@LOSSES.register_module(name=["FeatureCosineLoss"])
class FeatureCosineLoss(_FeatureLoss):
    """``l = 1 - cosine_similarity(f(s), t)`` over the channels (eps 1e-8); s [N,Cs,*],
    t [N,Ct,*] -> [N,*]."""

    LOSS_KIND: ClassVar[int] = F_COS

    def _forward(self, pred, target, **options):
        f, t = self._aligned(pred, target)
        return 1 - cosine_similarity(f, t, 1, 1e-8), None


def _normalize_nonneg_rows(a: Tensor, lim: Tensor) -> Tensor:
    """``a / max(||a||, lim)`` over dim 1 of a >= 0 [N, S] (lim [N, 1], constant), written so
    that autograd's gradient has no cancellation when one entry dominates (a large p makes the
    attention map nearly one-hot): for the row's largest entry a_k, ``A_k = (1 + R/a_k^2)^(-1/2)``
    with R = sum_(j != k) a_j^2 (whose derivative is R / ||a||^3, not 1/||a|| - a_k^2/||a||^3);
    the other entries a_i / ||a||, ||a|| = sqrt(a_k^2 + R)."""
    k = a.detach().argmax(1, keepdim=True)
    is_k = torch.zeros_like(a, dtype=torch.bool).scatter_(1, k, True)
    zero = torch.zeros((), dtype=a.dtype, device=a.device)
    one = torch.ones((), dtype=a.dtype, device=a.device)
    top = a.gather(1, k)
    rest = torch.where(is_k, zero, a).square().sum(1, keepdim=True)
    n2 = top * top + rest
    norm = torch.sqrt(torch.where(n2 > 0, n2, one))  # a zero row: 1 (unused, finite gradient)
    top_s = torch.where(top > 0, top, one)
    unit = torch.where(is_k, torch.rsqrt(1 + rest / (top_s * top_s)), a / norm)
    return torch.where((n2 > 0) & (norm > lim), unit, a / torch.where(lim > 0, lim, one))


@LOSSES.register_module(name=["AttentionLoss", "ATLoss"])
class AttentionLoss(_DistillLoss):
    """Attention transfer (Zagoruyko & Komodakis; mdistiller ``AT``): ``a(F) = mean_c abs(F_c)^p``
    per sample, flattened to [N,H*W] and L2-normalised over the positions when ``normalize``
    (``F.normalize``, eps 1e-12); ``l = (a(s) - a(t))^2``. s [N,Cs,H,W], t [N,Ct,H',W'] ->
    [N,h*w], (h, w) = (min(H, H'), min(W, W')): a map larger along an axis is first adaptive-
    average-pooled to (h, w) (mdistiller pools the larger map to the smaller). Options: p 2
    (a number >= 1: below 1, abs(x)^p has an infinite derivative at 0), normalize True. With
    ``normalize`` the maps are formed from F / max abs(F) of the sample (``_attention``): exact,
    and free of overflow for any scale and p (p = 50 overflowed the norm of ordinary features).
    A position of weight 0 has s and t replaced by 0 after the pooling (its maps are 0: it is
    left out of the norms, and a non-finite input there adds nothing). C >= 1 for both (a
    ValueError naming pred or target); N = 0 gives 0."""

    OPTIONS: ClassVar[dict[str, Any]] = {"p": 2.0, "normalize": True}

    @classmethod
    def check_options(cls, options):
        p = check_number("p", options["p"])
        if p < 1:
            raise ValueError(f"p: expected a number >= 1, got {options['p']!r}")
        options["p"] = p
        check_bool("normalize", options["normalize"])

    def _mask_inputs(self, pred: Any, target: Any, weight: Tensor | None) -> tuple[Any, Any]:
        """The weight travels with the target to ``_forward``: the maps couple the positions
        (the normalisation), so a position of weight 0 is masked after the pooling, in the
        [N, h*w] positions of l (docs/spec.md 12.2 rule 1)."""
        return pred, _WeightedTarget(target, weight)

    def _forward(self, pred, target, *, p, normalize):
        weight = None
        if isinstance(target, _WeightedTarget):
            target, weight = target.target, target.weight
        s = _check_float_tensor("pred", pred)
        _check_dims("pred", s, 4, "[N, Cs, H, W]")
        t = _check_float_tensor("target", target)
        if t.dim() != 4 or t.shape[0] != s.shape[0]:
            raise ValueError(f"target: expected shape [{s.shape[0]}, Ct, H', W'] (pred's batch "
                             f"size), got {shape_str(t)}")  # fmt: skip
        _check_has_channels("pred", s, "[N, Cs, H, W]")
        _check_has_channels("target", t, "[N, Ct, H', W']")
        _check_device("target", t, s)
        cdt = _cdt(s)
        size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
        s, t = s.to(cdt), t.detach().to(cdt)
        if tuple(s.shape[2:]) != size:
            s = F.adaptive_avg_pool2d(s, size)
        if tuple(t.shape[2:]) != size:
            t = F.adaptive_avg_pool2d(t, size)
        if isinstance(weight, Tensor) and weight.device == s.device:
            s, t = self._mask_positions(s, t, weight)
        fused = resolve_backend(self.backend, s.device) == "triton"
        return (self._attention(s, p, normalize, fused)
                - self._attention(t, p, normalize, fused)) ** 2, None  # fmt: skip

    @staticmethod
    def _mask_positions(s: Tensor, t: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        """The pooled s and t with every channel of a position of weight 0 replaced by 0: its
        maps are 0 (it adds nothing to the norms over the positions, l = 0 there) and a
        non-finite input there contributes exactly 0 to the value and the gradients. A weight
        of another shape is left for the rules to name."""
        n, h, w = s.shape[0], s.shape[2], s.shape[3]
        try:
            keep = weight_keep(weight, (n, h * w), s)
        except ValueError:
            return s, t
        keep = keep.reshape(n, 1, h, w)
        zero = torch.zeros((), dtype=s.dtype, device=s.device)
        return torch.where(keep, s, zero), torch.where(keep, t, zero)

    @staticmethod
    def _attention(x: Tensor, p: float, normalize: bool, fused: bool) -> Tensor:
        """a(x) [N, h*w] of x [N, C, h, w] (C >= 1). With ``normalize`` the map is formed from
        x / M, M = max abs(x) of the sample (held constant: a is homogeneous of degree p, so
        normalize(a(x)) = a(x/M) / max(||a(x/M)||, 1e-12 / M^p) exactly), so that neither
        abs(x)^p nor the squares of the norm overflow or underflow (p = 50, features of 1e20).
        Triton: the kernel's rows (mean_c abs(x_c/m)^p, m = max_c abs(x_c)) scaled by (m/M)^p."""
        n, hw = x.shape[0], x.shape[2] * x.shape[3]
        if x.numel() == 0:  # N = 0 or an empty map
            return x.sum(1).reshape(n, hw)
        if fused:
            from ..triton_feature import attention_rows_triton

            rows, m = attention_rows_triton(as_rows(x), p)  # [N, S] each
            if not normalize:
                return rows * m.pow(p)  # mean_c abs(x_c)^p (rows >= 1/C where m > 0)
            big = m.amax(1, keepdim=True)
            a = rows * (m / torch.where(big > 0, big, 1.0)).pow(p)
        else:
            if not normalize:
                return (x * x if p == 2 else x.abs().pow(p)).mean(1).reshape(n, hw)
            big = x.detach().abs().amax((1, 2, 3)).reshape(n, 1)
            y = x / torch.where(big > 0, big, 1.0).view(n, 1, 1, 1)
            a = (y * y if p == 2 else y.abs().pow(p)).mean(1).reshape(n, hw)
        # F.normalize(M^p a, eps 1e-12) = a / max(||a||, 1e-12 M^-p); M = 0: a = 0, limit inf
        # (in float64 where the device has it: an exponent error of p log M would be amplified)
        ldt = torch.float32 if big.device.type == "mps" else torch.float64
        lim = torch.exp(math.log(1e-12) - p * torch.log(big.to(ldt))).to(big.dtype)
        return _normalize_nonneg_rows(a, lim)


class _WeightedTarget:
    """A target with the call's sample weight, from ``AttentionLoss._mask_inputs`` to its
    ``_forward`` (private: a user's target is never one)."""

    __slots__ = ("target", "weight")

    def __init__(self, target: Any, weight: Tensor | None) -> None:
        self.target, self.weight = target, weight


@LOSSES.register_module(name=["MGDLoss"])
class MGDLoss(_DistillLoss):
    """Masked generative distillation (Yang et al.; mmrazor ``MGDLoss`` + ``MGDConnector``):
    ``l = alpha_mgd sum (G(f(s) M) - t)^2 / N`` -> 0-dim; s [N,Cs,H,W], t [N,Ct,H,W].

    f = ``align``, a learnable 1x1 conv Cs -> Ct when student_channels != teacher_channels (else
    the identity); G = ``generation``, conv3x3-ReLU-conv3x3 on Ct channels (padding 1), learnable;
    M [N,1,H,W] is 0 where ``u < lambda_mgd``, u ~ U(0, 1) drawn on s's device with
    ``torch.rand`` (no host sync), i.e. each position is masked with probability lambda_mgd.
    Call options: ``mask`` (a given [N,1,H,W] 0/1 tensor M: deterministic) or ``generator`` (the
    ``torch.Generator`` of u, on s's device). Options: alpha_mgd 7e-5, lambda_mgd 0.65,
    teacher_channels (required), student_channels (None: teacher_channels). An empty batch or
    an empty map (H = 0 or W = 0: no position, a sum of nothing) gives 0, with a zero
    gradient."""

    OPTIONS: ClassVar[dict[str, Any]] = {
        "alpha_mgd": 7e-5, "lambda_mgd": 0.65, "teacher_channels": None,
        "student_channels": None, "mask": None, "generator": None,
    }  # fmt: skip
    CALL_OPTIONS: ClassVar[tuple[str, ...]] = ("mask", "generator")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        cs, ct = self.options["student_channels"], self.options["teacher_channels"]
        self.align: torch.nn.Conv2d | None = None
        if cs != ct:
            self.align = torch.nn.Conv2d(cs, ct, kernel_size=1)
        self.generation = torch.nn.Sequential(
            torch.nn.Conv2d(ct, ct, kernel_size=3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(ct, ct, kernel_size=3, padding=1),
        )

    @classmethod
    def check_options(cls, options):
        cls._refuse_call_tensors(options)
        options["alpha_mgd"] = check_number("alpha_mgd", options["alpha_mgd"])
        lam = check_number("lambda_mgd", options["lambda_mgd"])
        if not 0 <= lam <= 1:
            raise ValueError(
                f"lambda_mgd: expected a number in [0, 1], got {options['lambda_mgd']!r}"
            )
        options["lambda_mgd"] = lam
        if options["teacher_channels"] is None:
            raise ValueError("teacher_channels: required (the teacher's channel count Ct)")
        ct = _check_channels("teacher_channels", options["teacher_channels"], allow_none=False)
        cs = _check_channels("student_channels", options["student_channels"])
        options["student_channels"] = ct if cs is None else cs

    def _forward(self, pred, target, *, alpha_mgd, lambda_mgd, teacher_channels,
                 student_channels, mask, generator):  # fmt: skip
        s = _check_float_tensor("pred", pred)
        cs, ct = student_channels, teacher_channels
        if s.dim() != 4 or s.shape[1] != cs:
            raise ValueError(f"pred: expected shape [N, student_channels = {cs}, H, W], got "
                             f"{shape_str(s)}")  # fmt: skip
        n, _, h, w = s.shape
        t = _check_float_tensor("target", target)
        if tuple(t.shape) != (n, ct, h, w):
            raise ValueError(f"target: expected shape [{n}, teacher_channels = {ct}, {h}, {w}] "
                             f"(pred's N, H, W), got {shape_str(t)}")  # fmt: skip
        _check_device("target", t, s)
        _check_module_input(self, s)
        if mask is not None and generator is not None:
            raise ValueError("mask, generator: give at most one of them (a given mask draws "
                             "nothing), got both")  # fmt: skip
        if mask is not None:
            check_tensor("mask", mask)
            check_real("mask", mask)
            if tuple(mask.shape) != (n, 1, h, w):
                raise ValueError(f"mask: expected shape [{n}, 1, {h}, {w}], got {shape_str(mask)}")
            _check_device("mask", mask, s)
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise TypeError(f"generator: expected a torch.Generator, got "
                                f"{type(generator).__name__}")  # fmt: skip
            if torch.device(generator.device).type != s.device.type:
                raise ValueError(f"generator: expected a generator on {s.device} (like pred), "
                                 f"got one on {generator.device}")  # fmt: skip
        if h == 0 or w == 0:  # no position (a 3x3 conv refuses an empty map): the sum is 0
            return s.to(_cdt(s)).sum(), None
        f = self.align(s) if self.align is not None else s
        if mask is None:
            udt = s.dtype if s.dtype in (torch.float32, torch.float64) else torch.float32
            u = torch.rand((n, 1, h, w), generator=generator, device=s.device, dtype=udt)
            m = (u >= lambda_mgd).to(f.dtype)
        else:
            m = mask.to(f.dtype)
        new = self.generation(f * m)
        cdt = _cdt(new)
        diff = new.to(cdt) - t.detach().to(cdt)
        return alpha_mgd * (diff * diff).sum() / max(n, 1), None


_DIFF_CHUNK = 1 << 24  # elements of one [rows, N, D] block of differences in the backward


class _SquaredDistances(torch.autograd.Function):
    """[N,N] |e_i - e_j|^2 of the rows of e [N,D]: ``cdist`` without the matrix product (no
    cancellation for close rows, O(N^2) memory). Backward: dL/de_i = 2 sum_j (G_ij + G_ji)
    (e_i - e_j), formed from the differences in blocks of rows (at most ``_DIFF_CHUNK`` elements
    at a time, never the whole [N, N, D]) with differentiable tensor ops on e, so that a second
    backward is exact (``cdist``'s own backward has no derivative)."""

    @staticmethod
    def forward(ctx, e: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(e)
        return torch.cdist(e, e, compute_mode="donot_use_mm_for_euclid_dist").square()

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        (e,) = ctx.saved_tensors
        n, dim = e.shape
        gs = g + g.transpose(0, 1)
        rows = max(1, _DIFF_CHUNK // max(n * dim, 1))
        parts = [
            2 * (gs[i : i + rows, :, None] * (e[i : i + rows, None, :] - e[None, :, :])).sum(1)
            for i in range(0, n, rows)
        ]
        return torch.cat(parts) if parts else torch.zeros_like(e)


def _rkd_distances(e: Tensor, eps: float, squared: bool) -> Tensor:
    """[N,N] d_ij = sqrt(max(norm(e_i - e_j)^2, eps)) (no sqrt if squared), diagonal 0, divided
    by mu, the mean of the d > 0 (mu = 1 when none is: N = 1). The squared distances come from
    ``_SquaredDistances`` (no cancellation for close rows, O(N^2) memory, double backward
    exact)."""
    d2 = _SquaredDistances.apply(e)
    d = d2.clamp(min=eps)
    if not squared:
        d = d.sqrt()
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    d = torch.where(eye, torch.zeros((), dtype=d.dtype, device=d.device), d)
    pos = d > 0
    count = pos.sum().to(d.dtype)
    mean = torch.where(pos, d, 0).sum() / count.clamp(min=1)
    mu = torch.where(count > 0, mean, torch.ones((), dtype=d.dtype, device=d.device))
    return d / mu


def _flatten_pair(pred: Any, target: Any) -> tuple[Tensor, Tensor]:
    s = _check_float_tensor("pred", pred)
    _check_dims("pred", s, tuple(range(2, 64)), "[N, *] (flattened to [N, D])")
    t = _check_teacher(target, s, same_shape=False)
    _check_dims("target", t, tuple(range(2, 64)), f"[{s.shape[0]}, *]")
    cdt = _cdt(s)
    ds, dt = math.prod(s.shape[1:]), math.prod(t.shape[1:])  # explicit: N = 0 too
    return s.reshape(s.shape[0], ds).to(cdt), t.detach().reshape(t.shape[0], dt).to(cdt)


@LOSSES.register_module(name=["RKDDistanceLoss", "DistanceWiseRKD"])
class RKDDistanceLoss(_DistillLoss):
    """RKD distance term (Park et al.; mmrazor ``DistanceWiseRKD``): ``l = smoothL1(d_s/mu_s,
    d_t/mu_t)`` over all N^2 pairs (beta 1), ``d_ij = sqrt(max(norm(e_i - e_j)^2, eps))`` (no sqrt
    if ``squared``), diagonal 0, mu = the mean of the d > 0 (with gradient on the student side).
    s [N,*], t [N,*] (flattened to [N,D], D may differ) -> [N,N]. eps > 0, so every off-diagonal
    d is positive; with none (N = 1) mu = 1 and the loss is 0. Plain autograd on the written-out
    differences: double backward exact. Options: eps 1e-12 (positive), squared False (the paper
    weights it 25: ``loss_weight``)."""

    OPTIONS: ClassVar[dict[str, Any]] = {"eps": 1e-12, "squared": False}

    @classmethod
    def check_options(cls, options):
        options["eps"] = check_number("eps", options["eps"], positive=True)
        check_bool("squared", options["squared"])

    def _forward(self, pred, target, *, eps, squared):
        s, t = _flatten_pair(pred, target)
        d_s = _rkd_distances(s, eps, squared)
        d_t = _rkd_distances(t, eps, squared)
        return _smooth_l1(d_s, d_t), None


@LOSSES.register_module(name=["RKDAngleLoss", "AngleWiseRKD"])
class RKDAngleLoss(_DistillLoss):
    """RKD angle term (Park et al.; mmrazor ``AngleWiseRKD``): ``l_ijk = smoothL1(A_s, A_t)``
    over all N^3 triples, ``A_ijk = <n(e_j - e_i), n(e_k - e_i)>``, n = ``F.normalize`` (eps;
    n(0) = 0, so the triples with j = i or k = i are 0: a constant, not a normalised zero
    vector). s, t [N,*] (flattened) -> [N,N,N]. Plain autograd: double backward exact.
    Options: eps 1e-12 (the paper weights it 50: ``loss_weight``)."""

    OPTIONS: ClassVar[dict[str, Any]] = {"eps": 1e-12}

    @classmethod
    def check_options(cls, options):
        options["eps"] = check_number("eps", options["eps"], positive=True)

    def _forward(self, pred, target, *, eps):
        s, t = _flatten_pair(pred, target)

        def angles(e: Tensor) -> Tensor:
            # [i, j] = n(e_j - e_i); the diagonal's zero vectors are not normalised: a constant
            # 0 (their normalisation had a NaN double backward), a unit vector stands in
            eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)[:, :, None]
            diff = torch.where(eye, 1.0, e.unsqueeze(0) - e.unsqueeze(1))
            nd = torch.where(eye, 0.0, l2_normalize(diff, 2, eps))
            return torch.bmm(nd, nd.transpose(1, 2))

        return _smooth_l1(angles(s), angles(t)), None


@LOSSES.register_module(name=["CRDLoss"])
class CRDLoss(_DistillLoss):
    """Contrastive representation distillation's NCE (Tian et al.; mmrazor ``CRDLoss``, from
    RepDistiller). Per side, with f an embedding [N,D] and its bank [N,K+1,D] (row 0: the other
    model's memory entry of the same sample, rows 1..K negatives), ``h = exp(<bank,
    normalize(f)>/T) / Z`` and c = K / n_data:
    ``side = -(log(h_0 / (h_0 + c + eps)) + sum_k log(c / (h_k + c + eps)))``;
    ``l = side(s, bank_t) + side(t, bank_s)`` -> [N].

    Z, one per side (buffers ``z_s``, ``z_t``, -1 while unset), is set on the first call with a
    sample of nonzero weight to ``mean(exp(<bank, normalize(f)>/T)) n_data`` over the samples of
    nonzero weight (no gradient) on the inputs' device, without a host sync, then frozen (kept in
    the state dict). The buffers are float64 (float32 on MPS) whatever the module's dtype casts
    (``.half()``, ``.to(dtype)`` keep their value and dtype: Z, about 1e7 and more, overflows
    float16) and follow the inputs' device (moved, their value kept); Z is used in the compute
    dtype (float32, float64 for float64 inputs). A sample of weight 0 has its s, t, bank_t and
    bank_s rows replaced by 0 before the formula (docs/spec.md 12.2 rule 1): its l and gradients
    are exactly 0, and it is left out of Z (a call whose samples all have weight 0 leaves Z
    unset, as an empty batch does). The banks are memory rows and get no gradient; the teacher
    embedding ``t`` is NOT detached: it is the output of the caller's trainable teacher head (CRD
    trains ``embed_t`` through side(t, bank_s)); detach the teacher's features before that
    head. The memory (momentum update, sampling) and the heads are the
    caller's. Call options ``bank_t``, ``bank_s`` (required). Options: temperature 0.07 (alias
    ``tau``), neg_num 16384 (= K), n_data (required; alias ``sample_n``, mmrazor), eps 1e-7."""

    OPTIONS: ClassVar[dict[str, Any]] = {
        "temperature": 0.07, "neg_num": 16384, "n_data": None, "eps": 1e-7,
        "bank_t": None, "bank_s": None,
    }  # fmt: skip
    ALIASES: ClassVar[dict[str, str]] = {"tau": "temperature", "sample_n": "n_data"}
    CALL_OPTIONS: ClassVar[tuple[str, ...]] = ("bank_t", "bank_s")

    z_s: Tensor
    z_t: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.register_buffer("z_s", torch.tensor(-1.0, dtype=torch.float64))
        self.register_buffer("z_t", torch.tensor(-1.0, dtype=torch.float64))

    @staticmethod
    def _z_dtype(device: torch.device) -> torch.dtype:
        return torch.float32 if device.type == "mps" else torch.float64

    def _apply(self, fn, recurse=True):  # (nn.Module's signature)
        """``nn.Module._apply`` (``.to``, ``.half()``, ``.cuda()`` ...) with the Z buffers kept
        float64 (float32 on MPS): a dtype cast leaves their value, a device move moves it."""
        before = {name: getattr(self, name) for name in ("z_s", "z_t")}
        out = super()._apply(fn, recurse)
        for name, old in before.items():
            new = getattr(self, name)
            if new.dtype != self._z_dtype(new.device):
                setattr(self, name, old.to(device=new.device, dtype=self._z_dtype(new.device)))
        return out

    @classmethod
    def check_options(cls, options):
        cls._refuse_call_tensors(options)
        options["temperature"] = check_number("temperature", options["temperature"], positive=True)
        _check_positive_int_option("neg_num", options["neg_num"])
        if options["n_data"] is None:
            raise ValueError("n_data: required (the number of samples in the memory bank)")
        _check_positive_int_option("n_data", options["n_data"])
        options["eps"] = check_number("eps", options["eps"], nonneg=True)

    def _mask_inputs(self, pred: Any, target: Any, weight: Tensor | None) -> tuple[Any, Any]:
        """The weight travels with the target to ``_forward``, which masks the rows of weight 0
        of s, t and both banks and leaves them out of Z (docs/spec.md 12.2 rule 1)."""
        return pred, _WeightedTarget(target, weight)

    def _side(self, f: Tensor, bank: Tensor, buffer: str, keep: Tensor | None, temperature: float,
              neg_num: int, n_data: int, eps: float) -> Tensor:  # fmt: skip
        z_buf = getattr(self, buffer)
        if z_buf.device != f.device:  # follow the inputs (the value kept; float64 where it can)
            z_buf = z_buf.to(device=f.device, dtype=self._z_dtype(f.device))
            setattr(self, buffer, z_buf)
        nf = l2_normalize(f, 1, 1e-12)
        e = torch.exp(
            torch.bmm(bank.detach().to(f.dtype), nf.unsqueeze(2)).squeeze(2) / temperature
        )
        with torch.no_grad():
            z_old = z_buf.to(f.dtype)
            if keep is None:
                total, rows = e.sum(), torch.full((), e.shape[0], device=e.device)
            else:  # the rows of weight 0 (finite: their inputs are 0) are left out
                total, rows = torch.where(keep[:, None], e, 0.0).sum(), keep.sum()
            has = rows > 0
            z_new = total / (rows.to(e.dtype) * e.shape[1]).clamp(min=1) * n_data
            z_new = torch.where(has, z_new, 1.0)  # no sample: a harmless 1 (unused, not stored)
            z = torch.where(z_old > 0, z_old, z_new)
            fresh = torch.where(has & torch.isfinite(z_new) & (z_new > 0), z_new, -1.0)
            z_buf.copy_(torch.where(z_buf > 0, z_buf, fresh.to(z_buf.dtype)))
        h = e / z
        c = neg_num / n_data
        h0, hk = h[:, 0], h[:, 1:]
        return -(torch.log(h0 / (h0 + c + eps)) + torch.log(c / (hk + c + eps)).sum(1))

    def _check_bank(self, name: str, bank: Any, f: Tensor, f_name: str, neg_num: int) -> Tensor:
        if bank is None:
            raise ValueError(f"{name}: required, the memory rows [N, neg_num + 1, D] (a call "
                             f"option)")  # fmt: skip
        _check_float_tensor(name, bank)
        want = (f.shape[0], neg_num + 1, f.shape[1])
        if tuple(bank.shape) != want:
            raise ValueError(f"{name}: expected shape [{want[0]}, neg_num + 1 = {want[1]}, "
                             f"{want[2]}] ({f_name}'s N and D), got {shape_str(bank)}")  # fmt: skip
        _check_device(name, bank, f)
        return bank

    def _forward(self, pred, target, *, temperature, neg_num, n_data, eps, bank_t, bank_s):
        weight = None
        if isinstance(target, _WeightedTarget):
            target, weight = target.target, target.weight
        s = _check_float_tensor("pred", pred)
        _check_dims("pred", s, 2, "[N, D]")
        t = _check_teacher(target, s)
        bank_t = self._check_bank("bank_t", bank_t, s, "pred", neg_num)
        bank_s = self._check_bank("bank_s", bank_s, t, "target", neg_num)
        cdt = _cdt(s)
        s, t = s.to(cdt), t.to(cdt)
        keep = None
        if isinstance(weight, Tensor):  # (checked, on s's device); l is [N]
            keep = weight_keep(weight, (s.shape[0],), s)  # before Z is touched
            k2, k3 = keep[:, None], keep[:, None, None]
            s, t = torch.where(k2, s, 0.0), torch.where(k2, t, 0.0)
            bank_t, bank_s = torch.where(k3, bank_t, 0.0), torch.where(k3, bank_s, 0.0)
        opts = (temperature, neg_num, n_data, eps)
        return (self._side(s, bank_t, "z_s", keep, *opts)
                + self._side(t, bank_s, "z_t", keep, *opts)), None  # fmt: skip


@LOSSES.register_module(name=["PKTLoss"])
class PKTLoss(_DistillLoss):
    """Probabilistic knowledge transfer (Passalis & Tefas; mdistiller ``PKT``), in mdistiller's
    order: ``e_i / (norm(e_i) + eps)``, ``K = (E E^T + 1) / 2``, each row divided by its sum, for
    s and t; ``l = K_t log((K_t + eps) / (K_s + eps))``. s [N,D], t [N,D'] -> [N,N] ("mean": over
    N^2, as mdistiller). Options: eps 1e-7 (positive: it keeps a zero row and a zero kernel
    entry finite). norm(e_i) is max-scaled (no overflow at 1e30, no underflow at 1e-30)."""

    OPTIONS: ClassVar[dict[str, Any]] = {"eps": 1e-7}

    @classmethod
    def check_options(cls, options):
        options["eps"] = check_number("eps", options["eps"], positive=True)

    def _forward(self, pred, target, *, eps):
        s = _check_float_tensor("pred", pred)
        _check_dims("pred", s, 2, "[N, D]")
        t = _check_teacher(target, s, same_shape=False)
        _check_dims("target", t, 2, f"[{s.shape[0]}, D']")
        cdt = _cdt(s)

        def kernel(e: Tensor) -> Tensor:
            if e.shape[1] > 0:  # ||e|| = m ||e/m||, m = max abs(e): no square over/underflows
                m = _unit_scale(e, 1)
                e = e / (m * torch.linalg.vector_norm(e / m, dim=1, keepdim=True) + eps)
            k = (e @ e.T + 1) / 2
            return k / k.sum(1, keepdim=True)

        k_s, k_t = kernel(s.to(cdt)), kernel(t.detach().to(cdt))
        return k_t * torch.log((k_t + eps) / (k_s + eps)), None
