"""Feature-imitation losses of the registry's distillation family (docs/spec.md 12.6; SPEC 10.4):
one row kernel over ``a [N, C, S]`` (the student's aligned features f(s)) and ``t`` (the
teacher's), rows r = (n, s), the channels walked in chunks (``kernels/classification.py``'s row
layout: a 2-D grid on maps).

Norms at any scale: a row's norm is never formed from raw squares (a float32 feature of 1e20 would
overflow them, one of 1e-30 underflow them). The norm walk keeps the row's running maximum
sa = max_c abs(a_c) (1 while it is 0) and sums of the scaled values a/sa, rescaled when the
maximum grows (as an online softmax): ra = ||a / sa|| lies in [1, sqrt(C)] (0 for a zero row) and
||a|| = sa ra. Likewise st, rt for t, and sat = sum (a/sa)(t/st).

With ``NORM`` both are first L2-normalised over the channels as ``F.normalize`` (eps 1e-12):
A = a / max(||a||, 1e-12) = (a/sa) ka, ka = 1 / max(ra, 1e-12/sa) (T likewise; A = a, T = t
without ``NORM``), d = A - T:

* ``F_MSE``  l = d^2 per element;   dl/dA = 2 d
* ``F_L1``   l = abs(d) per element; dl/dA = sign(d)
* ``F_COS``  l = 1 - cos per row, cos = sum A T / (max(||A||, 1e-8) max(||T||, 1e-8))
             (``F.cosine_similarity``) = sat qa qt, qa = 1 / max(ra, 1e-8/k_a), k_a = ka with
             ``NORM``, sa without (A = (a/sa) k_a); dcos/dA = H / k_a,
             H = (t/st) qt qa - [||A|| > 1e-8] cos (a/sa) / ra^2
* ``F_ATT``  l = mean_c abs(a_c / m)^p per row, m = max_c abs(a_c) (1 if 0), written with m
             (attention maps, no target, no ``NORM``: the caller scales the rows to a common
             maximum, docs/spec.md 12.6); dl/da = p abs(a/m)^(p-1) sign(a) / (C m), m constant

The normalisation's chain rule, for u = dL/dA: dL/da = (u - A sum_k A_k u_k) ka / sa where
||a|| > 1e-12, u ka / sa where the norm is clamped; for the cosine
dL/da = (-g H - [||a|| > 1e-12] (a/sa) ka^2 sum_k A_k u_k) / sa (g the upstream gradient, and
sum_k A_k u_k = -g [||A|| <= 1e-8] cos in closed form), -g H / sa without ``NORM``. The row
scalars are divided by sa before they meet the elements (``qt (qa / sa)``, ``ka / sa``): for
features of 1e-30 under the cosine's clamp qt qa is 1e-44, a float32 subnormal, while
qt (qa / sa) is 1e-14 (spec 12.6: 1e-30 gives the float64 gradient). Modes as the
classification kernels: ``M_SUMS`` per-program partial sums of l (fixed-order reduction by the
launcher), ``M_NONE`` l (elementwise [N, C, S] or per row [N, S], contiguous), ``M_GRAD`` dL/da
from the upstream gradient (a scalar or l's shape), recomputed from a and t: a row's channels are
walked once for the norms (``NORM``, cosine), once more for sum A u (``NORM``, elementwise
losses, gradient), once for the output.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .classification import _grid, _row_index
from .launch import launch, option_arg
from .primitives import option_value, pow_nonneg

F_MSE, F_L1, F_COS, F_ATT = 0, 1, 2, 3
M_SUMS, M_NONE, M_GRAD = 0, 1, 2


@triton.jit
def _tile(ptr, n, c, s, sn, sc, ss, m2, cdt: tl.constexpr):
    x = tl.load(ptr + n[:, None] * sn + c[None, :] * sc + s[:, None] * ss, mask=m2, other=0)
    return x.to(cdt)


@triton.jit
def _nonzero(m):
    """m where positive, else 1: the scale of a row whose maximum is m."""
    return tl.where(m > 0, m, 1.0)


@triton.jit
def _rescale(m_old, m_new):
    """m_old / scale(m_new) (<= 1), 0 while nothing nonzero has been seen (the sums are 0)."""
    return tl.where(m_old > 0, m_old / _nonzero(m_new), 0.0)


@triton.jit
def _upstream(d, go_ptr, g_fac, n, c, s, C, S, m2, cdt: tl.constexpr, LOSS: tl.constexpr,
              GO_SCALAR: tl.constexpr):  # fmt: skip
    """u = dL/dA of the elementwise losses: (2 d or sign(d)) times the upstream gradient."""
    if LOSS == 0:
        u = 2.0 * d
    else:
        u = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))
    if GO_SCALAR:
        u = u * g_fac[:, None]
    else:
        u = u * _tile(go_ptr, n, c, s, C * S, S, 1, m2, cdt)
    return u


@triton.jit(do_not_specialize=["p_exp"])
def _feature_kernel(
    a_ptr, t_ptr, out_ptr, go_ptr, ga_ptr, sc_ptr, R, S, C,
    san, sac, sas, stn, stc, sts, sgn, sgc, sgs, p_exp,
    LOSS: tl.constexpr, NORM: tl.constexpr, MODE: tl.constexpr, GO_SCALAR: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, SPATIAL: tl.constexpr,
):  # fmt: skip
    """The feature losses over BLOCK_R rows x all channels (module docstring)."""
    cdt: tl.constexpr = out_ptr.dtype.element_ty if MODE != 2 else go_ptr.dtype.element_ty
    r, n, s, rmask, pid = _row_index(R, S, BLOCK_R, SPATIAL)
    cols = tl.arange(0, BLOCK_C)
    per_row: tl.constexpr = LOSS >= 2
    g_fac = tl.full([BLOCK_R], 1.0, cdt)
    if MODE == 2:
        if GO_SCALAR:
            g_fac = tl.load(go_ptr + tl.zeros([BLOCK_R], tl.int64)).to(cdt)
        elif per_row:
            g_fac = tl.load(go_ptr + r, mask=rmask, other=0).to(cdt)
    if LOSS == 3:  # attention rows: mean_c abs(a_c / m)^p and m
        pe = option_value(p_exp, cdt)
        if MODE == 2:
            sa = _nonzero(tl.load(sc_ptr + r, mask=rmask, other=1).to(cdt))
            for c0 in range(0, C, BLOCK_C):
                c = (c0 + cols).to(tl.int64)
                m2 = rmask[:, None] & (c < C)[None, :]
                a = _tile(a_ptr, n, c, s, san, sac, sas, m2, cdt)
                sg = tl.where(a > 0, 1.0, tl.where(a < 0, -1.0, 0.0))
                u = pe * pow_nonneg(tl.abs(a) / sa[:, None], pe - 1.0) * sg
                u = u * (g_fac / (sa * C))[:, None]
                offs = n[:, None] * sgn + c[None, :] * sgc + s[:, None] * sgs
                tl.store(ga_ptr + offs, u.to(ga_ptr.dtype.element_ty), mask=m2)
        else:
            mx = tl.zeros([BLOCK_R], cdt)
            acc = tl.zeros([BLOCK_R], cdt)
            for c0 in range(0, C, BLOCK_C):
                c = (c0 + cols).to(tl.int64)
                m2 = rmask[:, None] & (c < C)[None, :]
                ab = tl.abs(_tile(a_ptr, n, c, s, san, sac, sas, m2, cdt))
                m_new = tl.maximum(mx, tl.max(ab, axis=1))
                f = pow_nonneg(_rescale(mx, m_new), pe)
                y = pow_nonneg(ab / _nonzero(m_new)[:, None], pe)
                acc = acc * f + tl.sum(tl.where(m2, y, 0.0), axis=1)
                mx = m_new
            tl.store(out_ptr + r, acc / C, mask=rmask)
            tl.store(sc_ptr + r, mx, mask=rmask)
    else:
        # the norm walk: running maxima, sums of the scaled squares and products
        ma = tl.zeros([BLOCK_R], cdt)
        mt = tl.zeros([BLOCK_R], cdt)
        saa = tl.zeros([BLOCK_R], cdt)
        stt = tl.zeros([BLOCK_R], cdt)
        sat = tl.zeros([BLOCK_R], cdt)
        if NORM or LOSS == 2:
            for c0 in range(0, C, BLOCK_C):
                c = (c0 + cols).to(tl.int64)
                m2 = rmask[:, None] & (c < C)[None, :]
                a = _tile(a_ptr, n, c, s, san, sac, sas, m2, cdt)
                t = _tile(t_ptr, n, c, s, stn, stc, sts, m2, cdt)
                ma_new = tl.maximum(ma, tl.max(tl.abs(a), axis=1))
                mt_new = tl.maximum(mt, tl.max(tl.abs(t), axis=1))
                fa = _rescale(ma, ma_new)
                ft = _rescale(mt, mt_new)
                ya = a / _nonzero(ma_new)[:, None]
                yt = t / _nonzero(mt_new)[:, None]
                saa = saa * (fa * fa) + tl.sum(ya * ya, axis=1)
                stt = stt * (ft * ft) + tl.sum(yt * yt, axis=1)
                sat = sat * (fa * ft) + tl.sum(ya * yt, axis=1)
                ma = ma_new
                mt = mt_new
        sa = _nonzero(ma)
        st = _nonzero(mt)
        ra = tl.sqrt(saa)
        rt = tl.sqrt(stt)
        lim_a = 1e-12 / sa
        lim_t = 1e-12 / st
        ka = 1.0 / tl.where(ra > lim_a, ra, lim_a)  # A = (a/sa) ka under NORM
        kt = 1.0 / tl.where(rt > lim_t, rt, lim_t)
        unclamped = ra > lim_a
        cos = tl.zeros([BLOCK_R], cdt)
        qa = tl.zeros([BLOCK_R], cdt)
        qt = tl.zeros([BLOCK_R], cdt)
        c2 = tl.zeros([BLOCK_R], cdt)
        sau = tl.zeros([BLOCK_R], cdt)  # sum_k A_k u_k
        if LOSS == 2:
            if NORM:
                ca = 1e-8 / ka
                ct = 1e-8 / kt
            else:
                ca = 1e-8 / sa
                ct = 1e-8 / st
            qa = 1.0 / tl.where(ra > ca, ra, ca)
            qt = 1.0 / tl.where(rt > ct, rt, ct)
            cos = sat * qa * qt
            c2 = tl.where(ra > ca, cos / (ra * ra), 0.0)
            if MODE == 2 and NORM:
                sau = -g_fac * tl.where(ra > ca, 0.0, cos)  # closed form (module docstring)
        if MODE == 2 and NORM and LOSS < 2:
            for c0 in range(0, C, BLOCK_C):
                c = (c0 + cols).to(tl.int64)
                m2 = rmask[:, None] & (c < C)[None, :]
                aa = _tile(a_ptr, n, c, s, san, sac, sas, m2, cdt) / sa[:, None] * ka[:, None]
                tt = _tile(t_ptr, n, c, s, stn, stc, sts, m2, cdt) / st[:, None] * kt[:, None]
                u = _upstream(aa - tt, go_ptr, g_fac, n, c, s, C, S, m2, cdt, LOSS, GO_SCALAR)
                sau += tl.sum(aa * u, axis=1)
        acc = tl.zeros([BLOCK_R], cdt)
        if LOSS != 2 or MODE == 2:
            for c0 in range(0, C, BLOCK_C):
                c = (c0 + cols).to(tl.int64)
                cmask = c < C
                m2 = rmask[:, None] & cmask[None, :]
                a = _tile(a_ptr, n, c, s, san, sac, sas, m2, cdt)
                t = _tile(t_ptr, n, c, s, stn, stc, sts, m2, cdt)
                if LOSS == 2:  # MODE 2; the row scalars are divided by sa first: qt qa is
                    # 1e-44 (subnormal) for features of 1e-30, qt (qa / sa) is 1e-14
                    ya = a / sa[:, None]
                    h = (t / st[:, None]) * (qt * (qa / sa))[:, None] - ya * (c2 / sa)[:, None]
                    u = -g_fac[:, None] * h
                    if NORM:
                        u = tl.where(unclamped[:, None],
                                     u - ya * (ka * ka * sau / sa)[:, None], u)  # fmt: skip
                else:
                    if NORM:
                        aa = a / sa[:, None] * ka[:, None]
                        tt = t / st[:, None] * kt[:, None]
                    else:
                        aa = a
                        tt = t
                    d = aa - tt
                    if MODE == 2:
                        u = _upstream(d, go_ptr, g_fac, n, c, s, C, S, m2, cdt, LOSS, GO_SCALAR)
                        if NORM:
                            u = tl.where(unclamped[:, None], u - aa * sau[:, None], u)
                            u = u * (ka / sa)[:, None]  # (u ka: subnormal at 1e-35)
                    else:
                        l = d * d if LOSS == 0 else tl.abs(d)
                        if MODE == 0:
                            acc += tl.sum(tl.where(m2, l, 0.0), axis=1)
                        else:
                            tl.store(out_ptr + (n * C * S + s)[:, None] + c[None, :] * S, l,
                                     mask=m2)  # fmt: skip
                if MODE == 2:
                    offs = n[:, None] * sgn + c[None, :] * sgc + s[:, None] * sgs
                    tl.store(ga_ptr + offs, u.to(ga_ptr.dtype.element_ty), mask=m2)
        if LOSS == 2:
            acc = 1.0 - cos
        if MODE == 0:
            tl.store(out_ptr + pid, tl.sum(tl.where(rmask, acc, 0.0), axis=0))
        elif MODE == 1:
            if per_row:
                tl.store(out_ptr + r, acc, mask=rmask)


# -------------------------------------------------------------------------------- launchers


def _launch(mode, a, t, out, go, ga, sc, loss: int, normalize: bool, p: float) -> None:
    n, c, s = a.shape
    grid, block_r, block_c, spatial = _grid(a, "sigmoid")
    cdt = out.dtype if out is not None else go.dtype
    ts = (t.stride(0), t.stride(1), t.stride(2)) if t is not None else (0, 0, 0)
    gs = ga.stride() if ga is not None else (0, 0, 0)
    launch(
        _feature_kernel, grid, a, t if t is not None else a, out if out is not None else go,
        go if go is not None else out, ga if ga is not None else a, sc if sc is not None else a,
        n * s, s, c, *a.stride(), *ts, *gs, option_arg(float(p), cdt),
        LOSS=loss, NORM=normalize, MODE=mode, GO_SCALAR=go is not None and go.dim() == 0,
        BLOCK_R=block_r, BLOCK_C=block_c, SPATIAL=spatial, num_warps=4,
    )  # fmt: skip


def feature_sum(a, t, cdt: torch.dtype, *, loss: int, normalize: bool, p: float) -> torch.Tensor:
    """The sum of l (0-dim, ``cdt``) over a, t [N, C, S] (``F_MSE``, ``F_L1``, ``F_COS``)."""
    if loss == F_ATT:
        raise ValueError("loss: the attention rows have no summed mode (use feature_none)")
    if a.numel() == 0:
        return torch.zeros((), dtype=cdt, device=a.device)
    grid = _grid(a, "sigmoid")[0]
    part = torch.empty(grid[0] * (grid[1] if len(grid) > 1 else 1), dtype=cdt, device=a.device)
    _launch(M_SUMS, a, t, part, None, None, None, loss, normalize, p)
    return part.sum()


def feature_none(
    a, t, cdt: torch.dtype, *, loss: int, normalize: bool, p: float
) -> tuple[torch.Tensor, ...]:
    """(l,): l [N, C, S] (MSE, L1) or [N, S] (cosine), contiguous, in ``cdt``; for ``F_ATT``
    (l, m): l = mean_c abs(a_c / m)^p and m = max_c abs(a_c), both [N, S] (module docstring)."""
    n, c, s = a.shape
    out = torch.empty((n, s) if loss >= F_COS else (n, c, s), dtype=cdt, device=a.device)
    sc = torch.empty((n, s), dtype=cdt, device=a.device) if loss == F_ATT else None
    if a.numel() == 0:  # no row, or no channel (C = 0: refused by the registry's losses)
        out.zero_()
        return (out,) if sc is None else (out, sc.zero_())
    _launch(M_NONE, a, t, out, None, None, sc, loss, normalize, p)
    return (out,) if sc is None else (out, sc)


def feature_grad(go, a, t, *, loss: int, normalize: bool, p: float,
                 scale: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """dL/da for the upstream gradient ``go``: 0-dim (of the sum) or l's shape; ``scale`` the
    rows' m of ``F_ATT`` (from ``feature_none``)."""
    ga = torch.empty_like(a)
    if a.numel() == 0:
        return ga
    go = go if go.dim() == 0 else go.contiguous()
    sc = scale.contiguous() if scale is not None else None
    _launch(M_GRAD, a, t, None, go, ga, sc, loss, normalize, p)
    return ga
