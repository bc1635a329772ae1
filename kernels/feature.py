"""Feature-imitation losses of the registry's distillation family (docs/spec.md 12.6; SPEC 10.4):
one row kernel over ``a [N, C, S]`` (the student's aligned features f(s)) and ``t`` (the
teacher's), rows r = (n, s), the channels walked in chunks (``kernels/classification.py``'s row
layout: a 2-D grid on maps).

With ``NORM`` both are first L2-normalised over the channels as ``F.normalize`` (eps 1e-12):
A = a / na, na = max(||a||, 1e-12) (T likewise; A = a, T = t without ``NORM``), d = A - T:

* ``F_MSE``  l = d^2 per element;   dl/dA = 2 d
* ``F_L1``   l = abs(d) per element; dl/dA = sign(d)
* ``F_COS``  l = 1 - cos per row, cos = sum A T / (max(||A||, 1e-8) max(||T||, 1e-8))
             (``F.cosine_similarity``); dcos/dA = T / (mA mT) - [||A|| > 1e-8] cos A / ||A||^2
* ``F_ATT``  l = mean_c abs(a_c)^p per row (attention maps, no target, no ``NORM``);
             dl/da = p abs(a)^(p-1) sign(a) / C

The normalisation's chain rule, for u = dL/dA: dL/da = (u - A sum_k A_k u_k) / na where
||a|| > 1e-12, u / na where the norm is clamped. Modes as the classification kernels: ``M_SUMS``
per-program partial sums of l (fixed-order reduction by the launcher), ``M_NONE`` l (elementwise
[N, C, S] or per row [N, S], contiguous), ``M_GRAD`` dL/da from the upstream gradient (a scalar or
l's shape), recomputed from a and t: a row's channels are walked once for the norms (``NORM``,
cosine), once more for sum A u (``NORM``, elementwise losses, gradient), once for the output.
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
    a_ptr, t_ptr, out_ptr, go_ptr, ga_ptr, R, S, C,
    san, sac, sas, stn, stc, sts, sgn, sgc, sgs, p_exp,
    LOSS: tl.constexpr, NORM: tl.constexpr, MODE: tl.constexpr, GO_SCALAR: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, SPATIAL: tl.constexpr,
):  # fmt: skip
    """The feature losses over BLOCK_R rows x all channels (module docstring)."""
    cdt: tl.constexpr = out_ptr.dtype.element_ty if MODE != 2 else go_ptr.dtype.element_ty
    r, n, s, rmask, pid = _row_index(R, S, BLOCK_R, SPATIAL)
    cols = tl.arange(0, BLOCK_C)
    pe = option_value(p_exp, cdt)
    per_row: tl.constexpr = LOSS >= 2
    if MODE == 2:
        if GO_SCALAR:
            g_row = tl.load(go_ptr + tl.zeros([BLOCK_R], tl.int64)).to(cdt)
        elif per_row:
            g_row = tl.load(go_ptr + r, mask=rmask, other=0).to(cdt)
    saa = tl.zeros([BLOCK_R], cdt)
    stt = tl.zeros([BLOCK_R], cdt)
    sat = tl.zeros([BLOCK_R], cdt)
    if NORM or LOSS == 2:
        for c0 in range(0, C, BLOCK_C):
            c = (c0 + cols).to(tl.int64)
            m2 = rmask[:, None] & (c < C)[None, :]
            a = _tile(a_ptr, n, c, s, san, sac, sas, m2, cdt)
            t = _tile(t_ptr, n, c, s, stn, stc, sts, m2, cdt)
            saa += tl.sum(a * a, axis=1)
            stt += tl.sum(t * t, axis=1)
            sat += tl.sum(a * t, axis=1)
    root_a = tl.sqrt(saa)
    na = tl.full([BLOCK_R], 1.0, cdt)
    nt = tl.full([BLOCK_R], 1.0, cdt)
    if NORM:
        na = tl.where(root_a > 1e-12, root_a, 1e-12)
        root_t = tl.sqrt(stt)
        nt = tl.where(root_t > 1e-12, root_t, 1e-12)
    unclamped = root_a > 1e-12
    cos = tl.zeros([BLOCK_R], cdt)
    if LOSS == 2:
        norm_a = root_a / na
        norm_t = tl.sqrt(stt) / nt
        ma = tl.where(norm_a > 1e-8, norm_a, 1e-8)
        mt = tl.where(norm_t > 1e-8, norm_t, 1e-8)
        cos = sat / (na * nt) / (ma * mt)
        inv_aa = tl.where(norm_a > 1e-8, 1.0 / (ma * ma), 0.0)
    if MODE == 2:
        if GO_SCALAR or per_row:
            g_fac = g_row
        else:
            g_fac = tl.full([BLOCK_R], 1.0, cdt)
    sau = tl.zeros([BLOCK_R], cdt)  # sum_k A_k u_k
    if MODE == 2 and NORM and LOSS < 2:
        for c0 in range(0, C, BLOCK_C):
            c = (c0 + cols).to(tl.int64)
            m2 = rmask[:, None] & (c < C)[None, :]
            aa = _tile(a_ptr, n, c, s, san, sac, sas, m2, cdt) / na[:, None]
            d = aa - _tile(t_ptr, n, c, s, stn, stc, sts, m2, cdt) / nt[:, None]
            u = _upstream(d, go_ptr, g_fac, n, c, s, C, S, m2, cdt, LOSS, GO_SCALAR)
            sau += tl.sum(aa * u, axis=1)
    if MODE == 2 and NORM and LOSS == 2:
        sau = -g_fac * tl.where(norm_a > 1e-8, 0.0, cos)  # closed form (module docstring)
    acc = tl.zeros([BLOCK_R], cdt)
    if LOSS != 2 or MODE == 2:
        for c0 in range(0, C, BLOCK_C):
            c = (c0 + cols).to(tl.int64)
            cmask = c < C
            m2 = rmask[:, None] & cmask[None, :]
            a = _tile(a_ptr, n, c, s, san, sac, sas, m2, cdt)
            if LOSS == 3:
                ab = tl.abs(a)
                if MODE == 2:
                    sg = tl.where(a > 0, 1.0, tl.where(a < 0, -1.0, 0.0))
                    u = g_fac[:, None] * pe * pow_nonneg(ab, pe - 1.0) * sg / C
                else:
                    acc += tl.sum(tl.where(m2, pow_nonneg(ab, pe), 0.0), axis=1)
            else:
                aa = a / na[:, None]
                tt = _tile(t_ptr, n, c, s, stn, stc, sts, m2, cdt) / nt[:, None]
                if LOSS == 2:
                    u = -g_fac[:, None] * (tt / (ma * mt)[:, None] - (cos * inv_aa)[:, None] * aa)
                else:
                    d = aa - tt
                    if MODE == 2:
                        u = _upstream(d, go_ptr, g_fac, n, c, s, C, S, m2, cdt, LOSS, GO_SCALAR)
                    else:
                        l = d * d if LOSS == 0 else tl.abs(d)
                        if MODE == 0:
                            acc += tl.sum(tl.where(m2, l, 0.0), axis=1)
                        else:
                            tl.store(out_ptr + (n * C * S + s)[:, None] + c[None, :] * S, l,
                                     mask=m2)  # fmt: skip
                if MODE == 2 and NORM:
                    u = tl.where(unclamped[:, None], u - aa * sau[:, None], u) / na[:, None]
            if MODE == 2:
                offs = n[:, None] * sgn + c[None, :] * sgc + s[:, None] * sgs
                tl.store(ga_ptr + offs, u.to(ga_ptr.dtype.element_ty), mask=m2)
    if LOSS == 2:
        acc = 1.0 - cos
    elif LOSS == 3:
        acc = acc / C
    if MODE == 0:
        tl.store(out_ptr + pid, tl.sum(tl.where(rmask, acc, 0.0), axis=0))
    elif MODE == 1:
        if per_row:
            tl.store(out_ptr + r, acc, mask=rmask)


# -------------------------------------------------------------------------------- launchers


def _launch(mode, a, t, out, go, ga, loss: int, normalize: bool, p: float) -> None:
    n, c, s = a.shape
    grid, block_r, block_c, spatial = _grid(a, "sigmoid")
    cdt = out.dtype if out is not None else go.dtype
    ts = (t.stride(0), t.stride(1), t.stride(2)) if t is not None else (0, 0, 0)
    gs = ga.stride() if ga is not None else (0, 0, 0)
    launch(
        _feature_kernel, grid, a, t if t is not None else a, out if out is not None else go,
        go if go is not None else out, ga if ga is not None else a, n * s, s, c,
        *a.stride(), *ts, *gs, option_arg(float(p), cdt),
        LOSS=loss, NORM=normalize, MODE=mode, GO_SCALAR=go is not None and go.dim() == 0,
        BLOCK_R=block_r, BLOCK_C=block_c, SPATIAL=spatial, num_warps=4,
    )  # fmt: skip


def feature_sum(a, t, cdt: torch.dtype, *, loss: int, normalize: bool, p: float) -> torch.Tensor:
    """The sum of l (0-dim, ``cdt``) over a, t [N, C, S]."""
    if a.numel() == 0:
        return torch.zeros((), dtype=cdt, device=a.device)
    grid = _grid(a, "sigmoid")[0]
    part = torch.empty(grid[0] * (grid[1] if len(grid) > 1 else 1), dtype=cdt, device=a.device)
    _launch(M_SUMS, a, t, part, None, None, loss, normalize, p)
    return part.sum()


def feature_none(a, t, cdt: torch.dtype, *, loss: int, normalize: bool, p: float) -> torch.Tensor:
    """l: [N, C, S] (MSE, L1) or [N, S] (cosine, attention), contiguous, in ``cdt``."""
    n, c, s = a.shape
    out = torch.empty((n, s) if loss >= F_COS else (n, c, s), dtype=cdt, device=a.device)
    if a.numel() == 0:
        return out
    _launch(M_NONE, a, t, out, None, None, loss, normalize, p)
    return out


def feature_grad(go, a, t, *, loss: int, normalize: bool, p: float) -> torch.Tensor:
    """dL/da for the upstream gradient ``go``: 0-dim (of the sum) or l's shape."""
    ga = torch.empty_like(a)
    if a.numel() == 0:
        return ga
    go = go if go.dim() == 0 else go.contiguous()
    _launch(M_GRAD, a, t, None, go, ga, loss, normalize, p)
    return ga
