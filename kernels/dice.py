"""Per-image, per-class overlap sums of the Dice family (docs/spec.md 12.7; SPEC 10.3): the
probabilities are computed on the fly from the logits, never stored, and no one-hot exists.

The logits are viewed as ``x [N, C, S]`` (own strides; S = the product of the spatial sizes). With
``p`` = softmax over the classes (``ACT`` 0), the sigmoid of each channel (1) or x itself (2), a
target ``t`` (index labels ``y [N, S]``: t_c = [y = c]; or a dense tensor of x's shape) and the
validity ``v`` (index: y in [0, C) and y != ignore_index; dense: t != ignore_index when
``HAS_IGNORE``), the forward computes, for every image n and class c,

    S1_nc = sum_s v p t,   S2_nc = sum_s v p^e,   S3_nc = sum_s v t^e

(e the exponent, e >= 1; ``p^e`` and ``t^e`` are ``torch.pow``'s: a negative base, possible with
``ACT`` 2 or a dense target, gives the signed power for an integer e and NaN otherwise). An
invalid position adds exactly 0 to the sums (selected out, never multiplied by 0) and gets a
gradient of exactly 0 (for the softmax: a row with no valid class), so a NaN/inf logit there
changes nothing. Every
loss of the family (Dice, generalized Dice, binary Dice) is a function of these [N, 3, C] sums,
evaluated by the caller with tensor ops. The backward takes
G = dL/dS [N, 3, C] (S3 does not depend on x) and writes, in one pass,

    dL/dp_c = v (G1_c t_c + G2_c e p_c^(e-1))
    softmax:  dL/dx_j = p_j (dL/dp_j - sum_c p_c dL/dp_c);   sigmoid: dL/dp s (1 - s);   identity.

A program owns ``ITERS`` consecutive blocks of ``BLOCK_R`` positions of one image (a 2-D grid:
images x position spans) and all the classes at once (``BLOCK_C`` = C rounded up to a power of
two, at most 1024), so that one load of a tile gives the softmax. The forward writes the
program's per-class partial sums ``[N, P, 3, C]``, reduced in a fixed order by the launcher
(deterministic, no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import class_tiles, launch, option_arg
from .primitives import option_value, pow_nonneg, sigmoid, softmax_cols

ACT_SOFTMAX, ACT_SIGMOID, ACT_NONE = 0, 1, 2
T_INDEX, T_DENSE = 0, 1
MAX_CLASSES = 1024


@triton.jit
def pow_signed(x, a):
    """``torch.pow(x, a)`` for a real x and an exponent a (0-d): ``pow_nonneg`` for x >= 0 (and
    NaN); for x < 0, abs(x)^a times (-1)^a when a is an integer, NaN otherwise."""
    is_int = a == tl.floor(a)
    half = a * 0.5
    # the factor of a negative base, a scalar: (-1)^a for an integer a, NaN otherwise
    neg = tl.where(is_int, tl.where(half != tl.floor(half), -1.0, 1.0), float("nan"))
    return pow_nonneg(tl.abs(x), a) * tl.where(x < 0, neg, 1.0)


@triton.jit
def _probabilities(x_ptr, t_ptr, n, pos, rmask, cols, C, S, sxn, sxc, sxs, stn, stc, sts,
                   ignore_index, cdt: tl.constexpr, ACT: tl.constexpr, TARGET: tl.constexpr,
                   HAS_IGNORE: tl.constexpr):  # fmt: skip
    """(p, s (1 - s) for the sigmoid, t, keep) of one [BLOCK_R, BLOCK_C] tile."""
    cmask = cols < C
    m2 = rmask[:, None] & cmask[None, :]
    c = cols.to(tl.int64)
    x = tl.load(x_ptr + n * sxn + c[None, :] * sxc + pos[:, None] * sxs, mask=m2, other=0)
    x = x.to(cdt)
    ds = tl.zeros_like(x)
    if ACT == 0:
        p = softmax_cols(x, cmask)
    elif ACT == 1:
        p = sigmoid(x)
        ds = p * sigmoid(-x)
    else:
        p = x
    if TARGET == 0:
        y = tl.load(t_ptr + n * S + pos, mask=rmask, other=-1).to(tl.int64)
        rv = rmask & (y >= 0) & (y < C)
        if HAS_IGNORE:
            rv = rv & (y != ignore_index)
        keep = rv[:, None] & cmask[None, :]
        t = tl.where(y[:, None] == c[None, :], 1.0, 0.0).to(cdt)
    else:
        traw = tl.load(t_ptr + n * stn + c[None, :] * stc + pos[:, None] * sts, mask=m2, other=0)
        keep = m2
        if HAS_IGNORE:
            keep = keep & (traw != ignore_index)
        t = tl.where(keep, traw.to(cdt), 0.0)
    return p, ds, t, keep


@triton.jit(do_not_specialize=["expo", "ignore_index", "ITERS"])
def _dice_sums_kernel(
    x_ptr, t_ptr, part_ptr, S, C, ITERS,
    sxn, sxc, sxs, stn, stc, sts, expo, ignore_index,
    ACT: tl.constexpr, TARGET: tl.constexpr, HAS_IGNORE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Per-program partial sums (S1, S2, S3) of one image's position span (module docstring)."""
    cdt: tl.constexpr = part_ptr.dtype.element_ty
    n = tl.program_id(0).to(tl.int64)
    span = tl.program_id(1)
    cols = tl.arange(0, BLOCK_C)
    e = option_value(expo, cdt)
    a1 = tl.zeros([BLOCK_R, BLOCK_C], cdt)
    a2 = tl.zeros([BLOCK_R, BLOCK_C], cdt)
    a3 = tl.zeros([BLOCK_R, BLOCK_C], cdt)
    for it in range(0, ITERS):
        pos = ((span * ITERS + it) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
        rmask = pos < S
        p, _ds, t, keep = _probabilities(
            x_ptr, t_ptr, n, pos, rmask, cols, C, S, sxn, sxc, sxs, stn, stc, sts,
            ignore_index, cdt, ACT, TARGET, HAS_IGNORE,
        )  # fmt: skip
        a1 += tl.where(keep, p * t, 0.0)
        a2 += tl.where(keep, pow_signed(p, e), 0.0)
        if TARGET == 0:
            a3 += tl.where(keep, t, 0.0)  # t in {0, 1}: t^e = t
        else:
            a3 += tl.where(keep, pow_signed(t, e), 0.0)
    base = (n * tl.num_programs(1) + span) * 3 * C
    cmask = cols < C
    tl.store(part_ptr + base + cols, tl.sum(a1, axis=0), mask=cmask)
    tl.store(part_ptr + base + C + cols, tl.sum(a2, axis=0), mask=cmask)
    tl.store(part_ptr + base + 2 * C + cols, tl.sum(a3, axis=0), mask=cmask)


@triton.jit(do_not_specialize=["expo", "ignore_index", "ITERS"])
def _dice_grad_kernel(
    x_ptr, t_ptr, g_ptr, gx_ptr, S, C, ITERS,
    sxn, sxc, sxs, stn, stc, sts, sgn, sgc, sgs, expo, ignore_index,
    ACT: tl.constexpr, TARGET: tl.constexpr, HAS_IGNORE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """dL/dx from G = dL/d(S1, S2, S3) [N, 3, C] (module docstring)."""
    cdt: tl.constexpr = g_ptr.dtype.element_ty
    n = tl.program_id(0).to(tl.int64)
    span = tl.program_id(1)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    e = option_value(expo, cdt)
    g1 = tl.load(g_ptr + n * 3 * C + cols, mask=cmask, other=0).to(cdt)[None, :]
    g2 = tl.load(g_ptr + n * 3 * C + C + cols, mask=cmask, other=0).to(cdt)[None, :]
    c = cols.to(tl.int64)
    for it in range(0, ITERS):
        pos = ((span * ITERS + it) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
        rmask = pos < S
        p, ds, t, keep = _probabilities(
            x_ptr, t_ptr, n, pos, rmask, cols, C, S, sxn, sxc, sxs, stn, stc, sts,
            ignore_index, cdt, ACT, TARGET, HAS_IGNORE,
        )  # fmt: skip
        gp = tl.where(keep, g1 * t + g2 * e * pow_signed(p, e - 1.0), 0.0)
        if ACT == 0:
            dot = tl.sum(tl.where(cmask[None, :], p * gp, 0.0), axis=1)
            gx = p * (gp - dot[:, None])
            # a row with no valid class: exactly 0 (its p, NaN for a NaN/inf logit, is unused)
            gx = tl.where(tl.max(keep.to(tl.int32), axis=1)[:, None] > 0, gx, 0.0)
        elif ACT == 1:
            gx = tl.where(keep, gp * ds, 0.0)
        else:
            gx = gp
        offs = n * sgn + c[None, :] * sgc + pos[:, None] * sgs
        m2 = rmask[:, None] & cmask[None, :]
        tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=m2)


# -------------------------------------------------------------------------------- launchers


def _plan(x3: torch.Tensor) -> tuple[int, int, int, int]:
    """(BLOCK_R, BLOCK_C, ITERS, P): ``launch.class_tiles``."""
    return class_tiles(*x3.shape, MAX_CLASSES)


def _target_args(t: torch.Tensor, target: int) -> tuple[int, int, int]:
    if target == T_INDEX:
        return 0, 0, 0
    return t.stride(0), t.stride(1) if t.shape[1] > 1 else 0, t.stride(2)


def dice_sums(x3, t, cdt: torch.dtype, *, act: int, target: int, exponent: float,
              ignore_index: int | None) -> torch.Tensor:  # fmt: skip
    """(S1, S2, S3) [N, 3, C] in ``cdt`` for logits x3 [N, C, S] and t (index [N, S], contiguous,
    or dense [N, C, S])."""
    n, c, s = x3.shape
    if x3.numel() == 0:
        return torch.zeros(n, 3, c, dtype=cdt, device=x3.device)
    block_r, block_c, iters, p = _plan(x3)
    part = torch.empty(n, p, 3, c, dtype=cdt, device=x3.device)
    launch(
        _dice_sums_kernel, (n, p), x3, t, part, s, c, iters, *x3.stride(),
        *_target_args(t, target), option_arg(float(exponent), cdt),
        int(ignore_index if ignore_index is not None else 0),
        ACT=act, TARGET=target, HAS_IGNORE=ignore_index is not None, BLOCK_R=block_r,
        BLOCK_C=block_c, num_warps=4,
    )  # fmt: skip
    return part.sum(1)  # fixed-order reduction of the partials


def dice_grad(g, x3, t, *, act: int, target: int, exponent: float,
              ignore_index: int | None) -> torch.Tensor:  # fmt: skip
    """dL/dx3 for G = dL/d(S1, S2, S3) [N, 3, C] (contiguous, in the compute dtype)."""
    n, c, s = x3.shape
    gx = torch.empty_like(x3)
    if x3.numel() == 0:
        return gx
    block_r, block_c, iters, p = _plan(x3)
    g = g.contiguous()
    launch(
        _dice_grad_kernel, (n, p), x3, t, g, gx, s, c, iters, *x3.stride(),
        *_target_args(t, target), *gx.stride(), option_arg(float(exponent), g.dtype),
        int(ignore_index if ignore_index is not None else 0),
        ACT=act, TARGET=target, HAS_IGNORE=ignore_index is not None, BLOCK_R=block_r,
        BLOCK_C=block_c, num_warps=4,
    )  # fmt: skip
    return gx
