"""IoU-family box losses of the registry (docs/spec.md 12.5), fused: one elementwise kernel per
call (``_box_loss_kernel``, its docstring holds the math) reads matched boxes pred, target [M,4]
and writes the per-box loss l [M] and dl/dpred [M,4] in the compute dtype (the target gets no
gradient); the backward is one elementwise product of that gradient with the upstream gradient of
l (``scaled_gradient``). The kernel evaluates ``registry.utils.box_terms`` + the loss's
``_box_loss`` (the torch backend) and the reverse mode of that graph written out by hand, node by
node as autograd evaluates it, so that ties, zeros and non-finite coordinates give autograd's
subgradients and its NaN pattern. One compiled variant per loss kind (``KIND``, IoULoss's
``MODE``), format and dtype.

A device helper here that ``primitives`` lacks: ``_atan`` (two range reductions and an odd
series), with the constexpr series length of ``ATAN_SERIES`` (expm1 is ``primitives.expm1``).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .launch import compute_dtype, interpreting, launch, mask_view, option_arg
from .primitives import div_exact, expm1, finite, log1p, option_value, pow_nonneg, sqrt_exact

KINDS = {"iou": 0, "giou": 1, "diou": 2, "ciou": 3, "eiou": 4, "siou": 5}
IOU_MODES = {"linear": 0, "square": 1, "log": 2}
BLOCK = 128  # boxes per program (one per thread at 4 warps)
INTERPRETER_BLOCK = 1024  # fewer programs under Triton's interpreter (numpy per program)
# (atan, expm1) series lengths per compute dtype: below half an ulp on their reduced ranges
ATAN_SERIES = {torch.float32: 7, torch.float64: 14}  # atan series terms by dtype

_SQRT3: tl.constexpr = tl.constexpr(math.sqrt(3.0))
_TAN_PI_12: tl.constexpr = tl.constexpr(2.0 - math.sqrt(3.0))
_PI_2: tl.constexpr = tl.constexpr(math.pi / 2)
_PI_6: tl.constexpr = tl.constexpr(math.pi / 6)
_FOUR_OVER_PI2: tl.constexpr = tl.constexpr(4 / math.pi**2)


# ------------------------------------------------------------------------------ device helpers


@triton.jit
def _max(a, b):
    """torch.maximum: NaN where either is NaN."""
    return tl.where((a > b) | (a != a), a, b)


@triton.jit
def _min(a, b):
    """torch.minimum: NaN where either is NaN."""
    return tl.where((a < b) | (a != a), a, b)


@triton.jit
def _max_grad(a, b, g):
    """The gradient torch.maximum(a, b) gives a: g/2 at a tie, 0 where a < b, else g."""
    return tl.where(a == b, g * 0.5, tl.where(a < b, 0.0, g))


@triton.jit
def _min_grad(a, b, g):
    """The gradient torch.minimum(a, b) gives a: g/2 at a tie, 0 where a > b, else g."""
    return tl.where(a == b, g * 0.5, tl.where(a > b, 0.0, g))


@triton.jit
def _sgn(x):
    """torch.sign (0 at 0 and at NaN)."""
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))


@triton.jit
def _relu(d):
    """``utils._relu``: (d + |d|) / 2 for d >= 0 (and NaN), else 0."""
    return tl.where(d < 0, 0.0, (d + tl.abs(d)) * 0.5)


@triton.jit
def _relu_grad(d, g):
    """Its gradient: 0 where d < 0, else g/2 + (g/2) sgn(d) (g/2 at d = 0)."""
    h = g * 0.5
    return tl.where(d < 0, 0.0, h + h * _sgn(d))


@triton.jit
def _clamp0(x):
    """clamp(x, min=0) (NaN stays NaN)."""
    return tl.where(x < 0, 0.0, x)


@triton.jit
def _div(a, b):
    """a / b correctly rounded, for block tensors of one shape."""
    return div_exact(a, b)


@triton.jit
def _div_grad(a, b, g):
    """(g / b, -g (a / b) / b): the gradients of a / b (torch's div backward)."""
    return _div(g, b), -g * _div(_div(a, b), b)


@triton.jit
def _safe_ratio(a, b):
    """a / b where b > 0, else 0 (``detection._safe_ratio``)."""
    pos = b > 0
    return tl.where(pos, _div(a, tl.where(pos, b, 1.0)), 0.0)


@triton.jit
def _safe_ratio_grad(a, b, g):
    """The gradients of ``_safe_ratio(a, b)`` for a and b (0 where b <= 0)."""
    pos = b > 0
    bb = tl.where(pos, b, 1.0)
    gq = tl.where(pos, g, 0.0)
    ga, gb = _div_grad(a, bb, gq)
    return ga, tl.where(pos, gb, 0.0)


@triton.jit
def _atan(x, TERMS: tl.constexpr):
    """atan(x), to the working precision (``TERMS`` terms of the odd series after two range
    reductions; NaN stays NaN, +-inf gives +-pi/2)."""
    a = tl.abs(x)
    big = a > 1.0
    t = tl.where(big, _div(tl.zeros_like(a) + 1.0, tl.where(big, a, 1.0)), a)
    mid = t > _TAN_PI_12
    u = tl.where(mid, _div(t * _SQRT3 - 1.0, t + _SQRT3), t)
    nu2 = -(u * u)
    p = tl.zeros_like(u) + 1.0 / (2 * TERMS - 1)
    for k in tl.static_range(TERMS - 2, -1, -1):
        p = 1.0 / (2 * k + 1) + nu2 * p
    r = u * p
    r = tl.where(mid, r + _PI_6, r)
    r = tl.where(big, -r + _PI_2, r)
    return tl.where(x < 0, -r, r)


@triton.jit
def _pow2_scale(m, cdt: tl.constexpr):
    """2^-k for m >= 0: the smallest k >= 0 with m 2^-k < 2^60, from m's exponent bits
    (``utils._power_of_two_scale``; m = inf gives the largest k)."""
    if cdt == tl.float64:
        biased = (m.to(tl.int64, bitcast=True) >> 52) & 0x7FF
        k = tl.maximum(biased - (1022 + 60), 0)
        return ((1023 - k) << 52).to(tl.float64, bitcast=True)
    else:
        biased = (m.to(tl.int32, bitcast=True) >> 23) & 0xFF
        k = tl.maximum(biased - (126 + 60), 0)
        return ((127 - k) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _corners(c0, c1, s0, s1, XYWH: tl.constexpr):
    """(x1, y1, x2, y2) of a box given as (x1, y1, x2, y2) or (cx, cy, w, h) (``to_xyxy``)."""
    if XYWH:
        hw = s0 * 0.5
        hh = s1 * 0.5
        return c0 - hw, c1 - hh, c0 + hw, c1 + hh
    else:
        return c0, c1, s0, s1


# ------------------------------------------------------------------------------------- kernel


@triton.jit(do_not_specialize=["eps", "eps_floor", "c_low", "theta"])
def _box_loss_kernel(
    p_ptr, t_ptr, l_ptr, g_ptr, M, eps, eps_floor, c_low, theta,
    KIND: tl.constexpr, MODE: tl.constexpr, XYWH: tl.constexpr, STORE_GRAD: tl.constexpr,
    ATAN_TERMS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """BLOCK boxes of pred, target [M,4] (contiguous): ``l[i]``, the loss of ``KIND`` (0 IoU with
    ``MODE`` 0 linear / 1 square / 2 log, 1 GIoU, 2 DIoU, 3 CIoU, 4 EIoU, 5 SIoU), and with
    STORE_GRAD ``g[i, :]`` = dl/dpred, in the compute dtype of ``l``. Options
    (``launch.option_arg``): eps, eps_floor = min(eps, tiny), c_low (IoULoss's value where
    iou < eps: 1 - eps, 1 - eps^2, -log eps, rounded from float64 as torch rounds the scalar),
    theta (SIoU); ATAN_TERMS the atan series length.

    Scale (per pair, exact): m = max |coordinate| of the 8 (inf for a pair with a NaN or infinite
    coordinate, fin = all finite), s = 2^-k the largest power with m s < 2^60, k >= 0, read from
    m's exponent bits (no log, no pow; inf gives 2^-69 in float32, 2^-965 in float64, as NaN and
    inf do in torch); P = pred s, G = target s, el = max(eps s, eps_floor) (a length),
    ea = max(eps s s, eps_floor) (an area). At the end dl/dpred = s dl/dP.

    Literal terms (p, g the corners of P, G; "xywh": (c - wh/2, c + wh/2)):

        wp = p2 - p0, hp = p3 - p1, wg, hg likewise
        ir_x = min(p2, g2) - max(p0, g0), ir_y likewise; iw, ih = clamp(ir, min=0)
        I = iw ih, U = (wp hp + wg hg) - I, iou = I / (U + ea)
        cw = max(p2, g2) - min(p0, g0), ch likewise

    Exact forms (computed from zeros where not fin, as the torch backend does, then selected):

        d = P - G; "xyxy": d_lo = d01, d_hi = d23, centre cE = (d_lo + d_hi)/2,
                           size dE = d_hi - d_lo
                   "xywh": cE = d01, dE = d23, d_lo = cE - dE/2, d_hi = cE + dE/2
        m_t = ir_t >= 0 (t = x, y);  relu(x) = x < 0 ? 0 : (x + |x|)/2
        ep_t = m_t ? relu(d_hi) + relu(-d_lo) : size_p
        eg_t = m_t ? relu(-d_hi) + relu(d_lo) : size_g
        umi = (hp ep_x + iw ep_y) + (hg eg_x + iw eg_y)  (U - I), num = umi + ea,
        den = (iw ih + umi) + ea;  omi = fin ? num / den : 1 - iou  (1 - IoU)
        gap = fin & m_x & m_y ? ep_x eg_y + eg_x ep_y : cw ch - U  (A_c - U)
        c = fin ? cE : ((p_lo + p_hi) - g_lo - g_hi)/2  (centre_p - centre_g)
        (dw, dh) = near ? dE : size_p - size_g (near: fin, and for "xyxy" max(|d_lo|, |d_hi|)
                   <= max(|size_p|, |size_g|) per axis);  rho2 = cx cx + cy cy

    Losses (c2 = (cw cw + ch ch) + ea):

        IoU   low = iou < eps: linear low ? c_low : omi; square low ? c_low : omi (1 + iou);
              log low ? c_low : -log1p(z), z = -(low ? 0 : omi)
        GIoU  omi + gap / (cw ch + ea)
        DIoU  omi + rho2 / c2
        CIoU  (omi + rho2 / c2) + a v, v = (atan(wg/(hg + el)) - atan(wp/(hp + el)))^2 4/pi^2,
              a = v / ((omi + v) + eps) (no gradient)
        EIoU  ((omi + rho2 / c2) + dw^2 / (cw^2 + ea)) + dh^2 / (ch^2 + ea)
        SIoU  omi + ((-e1 - e2) + O) / 2 with (sx, sy) = -c + el, s2 = sx^2 + sy^2,
              s = sqrt(s2 > 0 ? s2 : 1), r0 = sr(min(|sx|, |sy|), s), r = min(r0, 1),
              A = sin(2 asin r) = 2 r sqrt(1 - r^2) (r <= 1/sqrt 2), gamma = 2 - A,
              e1 = expm1(-gamma sr(sx, cw)^2), e2 = expm1(-gamma sr(sy, ch)^2),
              O = f_w^theta + f_h^theta, f_w = -expm1(-sr(|dw|, max(wp, wg))),
              f_h = -expm1(-sr(|dh|, max(hp + el, hg + el))); sr(a, b) = b > 0 ? a / b : 0;
              u^theta = exp(theta log u) with torch's values at u = 0 (``pow_nonneg``)

    Backward: G_x = dl/dx, reverse mode through the same nodes, with autograd's rules: a / b
    gives G/b to a and -G ((a/b)/b) to b; a b gives G b and G a; x^2 gives G (2 x); sqrt(x)
    gives G / (2 sqrt(x)); atan(x) gives G / (x x + 1); expm1(x) gives G (expm1(x) + 1);
    u^theta gives G theta u^(theta-1) (0^(theta-1) = 0, 1 or inf, as torch's pow); sin(2 asin r)
    gives G 2 (1 - 2 r^2) / sqrt(1 - r^2); |x| gives G sgn(x) (sgn(0) = sgn(NaN) = 0);
    max(a, b) gives a G where a > b (or a is NaN), G/2 at a tie, 0 where a < b (min: mirrored);
    clamp(x, min=0) passes G where x >= 0; clamp(x, max=1) where x <= 1; relu(x) gives
    (G/2 + (G/2) sgn(x)) where x >= 0 (G/2 at 0); where(cond, a, b) gives G to the taken branch,
    exactly 0 to the other; sr(a, b) gives 0 to both where b <= 0. Per loss:

        IoU   linear G_omi = !low; square G_omi = !low (1 + iou), G_iou = !low omi;
              log G_omi = low ? 0 : !low / (1 + z)
        GIoU  G_omi = 1, G_gap = 1/den_c, G_den_c = -(gap/den_c)/den_c, G_cw = G_den_c ch, ...
        DIoU  G_rho2 = 1/c2, G_c2 = -(rho2/c2)/c2, G_cw = G_c2 (2 cw), G_cx = G_rho2 cx + G_rho2 cx
        CIoU  + G_v = a, G_datan = a 4/pi^2 (2 datan), G_rp = -G_datan / (rp rp + 1),
              rp = wp/(hp + el) -> G_wp, G_hp
        EIoU  + G_dw = (1/(cw^2 + ea)) (2 dw), G_cw += -((dw^2/dn)/dn) (2 cw), h likewise
        SIoU  G_f = 1/2 theta f^(theta-1), G_om = G_f (expm1(-om) + 1) -> sr -> |dw| and
              max(wp, wg) (h likewise); G_e = -1/2, G_w = G_e (e + 1) with w = (-gamma) q:
              G_(-gamma) = sum G_w q, G_q = G_w (-gamma), q = sr^2 -> sr -> (sx, cw), (sy, ch);
              G_A = G_(-gamma); G_r = G_A 2 (1 - 2 r^2)/sqrt(1 - r^2) -> clamp -> sr -> min,
              s; s -> s2 -> sx, sy; G_c = -G_s

    then back through box_terms: omi, gap, c, (dw, dh) split by ``fin`` (and ``m_x & m_y``) into
    their exact and literal parts; the exact parts through num/den, umi, ep/eg (the relus where
    m_t, the sizes where not), cE/dE to d, selected by fin (zeros elsewhere); the literal parts
    with every direct use (iou, cw, ch, wp, hp) through iou = I/(U + ea), U, I = iw ih, the clamp,
    ir, the max/min of the corners, wp = p2 - p0 ..., and the corner centres; "xywh" corners give
    G_c = G_lo + G_hi, G_wh = (G_hi - G_lo)/2. A node is differentiated only when the loss uses
    it (IoU never differentiates cw ch - U), so a zero gradient meets an infinite factor (0 inf =
    NaN) exactly where autograd's does: the gradient of a non-finite pair is non-finite exactly
    where the torch backend's is. Arithmetic in the compute dtype, divisions and square roots
    correctly rounded, no FMA (the launch disables fp fusion): PyTorch's separate ops' rounding.
    atan: |x| > 1 -> pi/2 - atan(1/x), x > 2 - sqrt(3) -> pi/6 + atan((sqrt(3) x - 1)/(x +
    sqrt(3))), then ATAN_TERMS terms of the odd series (|x| <= 0.268); expm1: Kahan's
    (u - 1) z / log1p(u - 1), u = exp(z), near 0 (``primitives.expm1``).
    """
    cdt: tl.constexpr = l_ptr.dtype.element_ty
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    on = idx < M
    pp = p_ptr + 4 * idx
    tp = t_ptr + 4 * idx
    a0 = tl.load(pp, mask=on, other=0).to(cdt)
    a1 = tl.load(pp + 1, mask=on, other=0).to(cdt)
    a2 = tl.load(pp + 2, mask=on, other=0).to(cdt)
    a3 = tl.load(pp + 3, mask=on, other=0).to(cdt)
    b0 = tl.load(tp, mask=on, other=0).to(cdt)
    b1 = tl.load(tp + 1, mask=on, other=0).to(cdt)
    b2 = tl.load(tp + 2, mask=on, other=0).to(cdt)
    b3 = tl.load(tp + 3, mask=on, other=0).to(cdt)
    e = option_value(eps, cdt)
    floor = option_value(eps_floor, cdt)

    # ---- the scale (exact): a non-finite pair takes the largest k, as inf and NaN do in torch
    fin = finite(a0) & finite(a1) & finite(a2) & finite(a3)
    fin = fin & finite(b0) & finite(b1) & finite(b2) & finite(b3)
    m = tl.maximum(tl.maximum(tl.abs(a0), tl.abs(a1)), tl.maximum(tl.abs(a2), tl.abs(a3)))
    m = tl.maximum(m, tl.maximum(tl.maximum(tl.abs(b0), tl.abs(b1)),
                                 tl.maximum(tl.abs(b2), tl.abs(b3))))  # fmt: skip
    inv = _pow2_scale(tl.where(fin, m, float("inf")), cdt)
    el = e * inv
    el = tl.where(el < floor, floor, el)
    ea = e * inv * inv
    ea = tl.where(ea < floor, floor, ea)
    a0 = a0 * inv
    a1 = a1 * inv
    a2 = a2 * inv
    a3 = a3 * inv
    b0 = b0 * inv
    b1 = b1 * inv
    b2 = b2 * inv
    b3 = b3 * inv

    # ---- the literal terms
    p0, p1, p2, p3 = _corners(a0, a1, a2, a3, XYWH)
    g0, g1, g2, g3 = _corners(b0, b1, b2, b3, XYWH)
    wp = p2 - p0
    hp = p3 - p1
    wg = g2 - g0
    hg = g3 - g1
    irx = _min(p2, g2) - _max(p0, g0)
    iry = _min(p3, g3) - _max(p1, g1)
    iw = _clamp0(irx)
    ih = _clamp0(iry)
    inter = iw * ih
    union = wp * hp + wg * hg - inter
    ue = union + ea
    iou = _div(inter, ue)
    cw = _max(p2, g2) - _min(p0, g0)
    ch = _max(p3, g3) - _min(p1, g1)

    # ---- the exact forms, on zeros for a non-finite pair
    if XYWH:
        cxe = tl.where(fin, a0 - b0, 0.0)
        cye = tl.where(fin, a1 - b1, 0.0)
        dwe = tl.where(fin, a2 - b2, 0.0)
        dhe = tl.where(fin, a3 - b3, 0.0)
        dlx = cxe - dwe * 0.5
        dly = cye - dhe * 0.5
        dhx = cxe + dwe * 0.5
        dhy = cye + dhe * 0.5
    else:
        dlx = tl.where(fin, a0 - b0, 0.0)
        dly = tl.where(fin, a1 - b1, 0.0)
        dhx = tl.where(fin, a2 - b2, 0.0)
        dhy = tl.where(fin, a3 - b3, 0.0)
        cxe = (dlx + dhx) * 0.5
        cye = (dly + dhy) * 0.5
        dwe = dhx - dlx
        dhe = dhy - dly
    # w_p - w_g from the corner differences where they are no larger than the sizes, else from
    # the sizes (boxes far apart); "xywh": the given sizes' difference
    if XYWH:
        nearx = fin
        neary = fin
    else:
        nearx = fin & (_max(tl.abs(dlx), tl.abs(dhx)) <= _max(tl.abs(wp), tl.abs(wg)))
        neary = fin & (_max(tl.abs(dly), tl.abs(dhy)) <= _max(tl.abs(hp), tl.abs(hg)))
    spx = tl.where(fin, wp, 0.0)
    spy = tl.where(fin, hp, 0.0)
    sgx = tl.where(fin, wg, 0.0)
    sgy = tl.where(fin, hg, 0.0)
    iwx = tl.where(fin, iw, 0.0)
    iwy = tl.where(fin, ih, 0.0)
    mx = irx >= 0
    my = iry >= 0
    epx = tl.where(mx, _relu(dhx) + _relu(-dlx), spx)
    egx = tl.where(mx, _relu(-dhx) + _relu(dlx), sgx)
    epy = tl.where(my, _relu(dhy) + _relu(-dly), spy)
    egy = tl.where(my, _relu(-dhy) + _relu(dly), sgy)
    umi = (spy * epx + iwx * epy) + (sgy * egx + iwx * egy)
    uex = iwx * iwy + umi
    num = umi + ea
    den = uex + ea
    omi = tl.where(fin, _div(num, den), 1.0 - iou)
    meet = fin & mx & my
    cx = tl.where(fin, cxe, ((p0 + p2) - g0 - g2) * 0.5)  # centre_p - centre_g
    cy = tl.where(fin, cye, ((p1 + p3) - g1 - g3) * 0.5)
    dw = tl.where(nearx, dwe, wp - wg)
    dh = tl.where(neary, dhe, hp - hg)

    # ---- the loss and its gradient in the terms
    zero = tl.zeros_like(a0)
    G_omi = zero + 1.0
    G_iou = zero
    G_gap = zero
    G_cw = zero
    G_ch = zero
    G_cx = zero
    G_cy = zero
    G_wp = zero
    G_hp = zero
    G_dw = zero
    G_dh = zero
    if KIND == 0:  # IoU
        low = iou < e
        c = option_value(c_low, cdt)
        live = tl.where(low, 0.0, zero + 1.0)
        if MODE == 0:
            loss = tl.where(low, c, omi)
            G_omi = live
        elif MODE == 1:
            loss = tl.where(low, c, omi * (1.0 + iou))
            G_omi = live * (1.0 + iou)
            G_iou = live * omi
        else:
            z = -tl.where(low, 0.0, omi)
            loss = tl.where(low, c, -log1p(z))
            G_omi = tl.where(low, 0.0, -_div(-live, 1.0 + z))
    elif KIND == 1:  # GIoU
        gap = tl.where(meet, epx * egy + egx * epy, cw * ch - union)
        den_c = cw * ch + ea
        loss = omi + _div(gap, den_c)
        G_gap, g_den = _div_grad(gap, den_c, zero + 1.0)
        G_cw = g_den * ch
        G_ch = g_den * cw
    elif KIND == 5:  # SIoU
        sx = -cx + el
        sy = -cy + el
        s2 = sx * sx + sy * sy
        pos2 = s2 > 0
        s = sqrt_exact(tl.where(pos2, s2, 1.0))
        ax = tl.abs(sx)
        ay = tl.abs(sy)
        r0 = _safe_ratio(_min(ax, ay), s)
        sa = tl.where(r0 > 1.0, 1.0, r0)
        cos_a = sqrt_exact(1.0 - sa * sa)
        gamma = 2.0 - 2.0 * sa * cos_a
        r1 = _safe_ratio(sx, cw)
        r2 = _safe_ratio(sy, ch)
        ng = -gamma
        q1 = r1 * r1
        q2 = r2 * r2
        e1 = expm1(ng * q1)
        e2 = expm1(ng * q2)
        mw = _max(wp, wg)
        hpe = hp + el
        hge = hg + el
        mh = _max(hpe, hge)
        om_w = _safe_ratio(tl.abs(dw), mw)
        om_h = _safe_ratio(tl.abs(dh), mh)
        z1 = expm1(-om_w)
        z2 = expm1(-om_h)
        th = option_value(theta, cdt)
        shape = pow_nonneg(-z1, th) + pow_nonneg(-z2, th)
        loss = omi + ((-e1 - e2) + shape) * 0.5
        # backward: the shape cost
        g_fw = 0.5 * (th * pow_nonneg(-z1, th - 1.0))
        g_fh = 0.5 * (th * pow_nonneg(-z2, th - 1.0))
        g_ow = -(-g_fw * (z1 + 1.0))
        g_oh = -(-g_fh * (z2 + 1.0))
        g_adw, g_mw = _safe_ratio_grad(tl.abs(dw), mw, g_ow)
        g_adh, g_mh = _safe_ratio_grad(tl.abs(dh), mh, g_oh)
        G_dw = g_adw * _sgn(dw)
        G_dh = g_adh * _sgn(dh)
        G_wp = _max_grad(wp, wg, g_mw)
        G_hp = _max_grad(hpe, hge, g_mh)
        # the distance cost
        g_w1 = -0.5 * (e1 + 1.0)
        g_w2 = -0.5 * (e2 + 1.0)
        g_ng = g_w1 * q1 + g_w2 * q2
        g_r1 = (g_w1 * ng) * (2.0 * r1)
        g_r2 = (g_w2 * ng) * (2.0 * r2)
        g_sx, G_cw = _safe_ratio_grad(sx, cw, g_r1)
        g_sy, G_ch = _safe_ratio_grad(sy, ch, g_r2)
        # the angle cost: d sin(2 asin r) / dr = 2 cos(2 asin r) / sqrt(1 - r^2)
        g_angle = g_ng  # (gamma = 2 - angle, ng = -gamma)
        g_sa = g_angle * (((1.0 - 2.0 * (sa * sa)) * 2.0) * _div(zero + 1.0, cos_a))
        g_r0 = tl.where(r0 <= 1.0, g_sa, 0.0)
        g_mn, g_s = _safe_ratio_grad(_min(ax, ay), s, g_r0)
        g_sx += _min_grad(ax, ay, g_mn) * _sgn(sx)
        g_sy += _min_grad(ay, ax, g_mn) * _sgn(sy)
        g_s2 = tl.where(pos2, _div(g_s, 2.0 * s), 0.0)
        g_sx += g_s2 * sx + g_s2 * sx
        g_sy += g_s2 * sy + g_s2 * sy
        G_cx = -g_sx
        G_cy = -g_sy
    else:  # DIoU, CIoU, EIoU: omi + rho2 / c2 (+ ...)
        rho2 = cx * cx + cy * cy
        c2 = (cw * cw + ch * ch) + ea
        loss = omi + _div(rho2, c2)
        g_rho2, g_c2 = _div_grad(rho2, c2, zero + 1.0)
        G_cw = g_c2 * (2.0 * cw)
        G_ch = g_c2 * (2.0 * ch)
        G_cx = g_rho2 * cx + g_rho2 * cx
        G_cy = g_rho2 * cy + g_rho2 * cy
        if KIND == 3:  # CIoU
            hpe = hp + el
            rp = _div(wp, hpe)
            d_at = _atan(_div(wg, hg + el), ATAN_TERMS) - _atan(rp, ATAN_TERMS)
            v = (d_at * d_at) * _FOUR_OVER_PI2
            alpha = _div(v, (omi + v) + e)
            loss = loss + alpha * v
            g_dat = (alpha * _FOUR_OVER_PI2) * (2.0 * d_at)
            g_rp = _div(-g_dat, rp * rp + 1.0)
            g_wp, g_hpe = _div_grad(wp, hpe, g_rp)
            G_wp = g_wp
            G_hp = g_hpe
        elif KIND == 4:  # EIoU
            dnw = cw * cw + ea
            dnh = ch * ch + ea
            loss = (loss + _div(dw * dw, dnw)) + _div(dh * dh, dnh)
            g_sw, g_dnw = _div_grad(dw * dw, dnw, zero + 1.0)
            g_sh, g_dnh = _div_grad(dh * dh, dnh, zero + 1.0)
            G_dw = g_sw * (2.0 * dw)
            G_dh = g_sh * (2.0 * dh)
            G_cw += g_dnw * (2.0 * cw)
            G_ch += g_dnh * (2.0 * ch)
    tl.store(l_ptr + idx, loss, mask=on)

    if STORE_GRAD:
        # ---- back through box_terms: the torch.where splits of each term
        gO_e = tl.where(fin, G_omi, 0.0)
        gO_l = tl.where(fin, 0.0, G_omi)
        gX_e = tl.where(fin, G_cx, 0.0)
        gY_e = tl.where(fin, G_cy, 0.0)
        gW_e = tl.where(nearx, G_dw, 0.0)
        gH_e = tl.where(neary, G_dh, 0.0)
        # exact 1 - IoU = num / den, num = U - I + ea, den = iw ih + (U - I) + ea
        g_num, g_den = _div_grad(num, den, gO_e)
        g_umi = g_num + g_den
        g_iwx = g_den * iwy
        g_iwy = g_den * iwx
        g_spy = g_umi * epx
        g_epx = g_umi * spy
        g_iwx += g_umi * epy
        g_epy = g_umi * iwx
        g_egx = g_umi * sgy
        g_iwx += g_umi * egy
        g_egy = g_umi * iwx
        if KIND == 1:  # exact A_c - U
            gG_e = tl.where(meet, G_gap, 0.0)
            g_epx += gG_e * egy
            g_egy += gG_e * epx
            g_egx += gG_e * epy
            g_epy += gG_e * egx
        # ex_p, ex_g: the relus where the intervals meet, the sizes elsewhere
        g_dhx = tl.where(mx, _relu_grad(dhx, g_epx) - _relu_grad(-dhx, g_egx), 0.0)
        g_dlx = tl.where(mx, _relu_grad(dlx, g_egx) - _relu_grad(-dlx, g_epx), 0.0)
        g_dhy = tl.where(my, _relu_grad(dhy, g_epy) - _relu_grad(-dhy, g_egy), 0.0)
        g_dly = tl.where(my, _relu_grad(dly, g_egy) - _relu_grad(-dly, g_epy), 0.0)
        g_spx = tl.where(mx, 0.0, g_epx)
        g_spy += tl.where(my, 0.0, g_epy)
        # centre offset and size difference (exact), back to d = P - G
        if XYWH:
            g_cxe = (gX_e + g_dlx) + g_dhx
            g_cye = (gY_e + g_dly) + g_dhy
            g_dwe = gW_e + (g_dhx - g_dlx) * 0.5
            g_dhe = gH_e + (g_dhy - g_dly) * 0.5
            gd0 = tl.where(fin, g_cxe, 0.0)
            gd1 = tl.where(fin, g_cye, 0.0)
            gd2 = tl.where(fin, g_dwe, 0.0)
            gd3 = tl.where(fin, g_dhe, 0.0)
        else:
            gd0 = tl.where(fin, (g_dlx + gX_e * 0.5) - gW_e, 0.0)
            gd1 = tl.where(fin, (g_dly + gY_e * 0.5) - gH_e, 0.0)
            gd2 = tl.where(fin, (g_dhx + gX_e * 0.5) + gW_e, 0.0)
            gd3 = tl.where(fin, (g_dhy + gY_e * 0.5) + gH_e, 0.0)

        # ---- the literal terms
        g_iou = G_iou - gO_l  # (1 - iou)
        g_union = zero
        if KIND == 1:  # the literal A_c - U = cw ch - U
            gG_l = tl.where(meet, 0.0, G_gap)
            G_cw += gG_l * ch
            G_ch += gG_l * cw
            g_union = -gG_l
        g_inter, g_ue = _div_grad(inter, ue, g_iou)
        g_union += g_ue
        g_wp = G_wp + g_union * hp + tl.where(fin, g_spx, 0.0) + tl.where(nearx, 0.0, G_dw)
        g_hp = G_hp + g_union * wp + tl.where(fin, g_spy, 0.0) + tl.where(neary, 0.0, G_dh)
        g_inter -= g_union
        g_iw = g_inter * ih + tl.where(fin, g_iwx, 0.0)
        g_ih = g_inter * iw + tl.where(fin, g_iwy, 0.0)
        g_irx = tl.where(irx >= 0, g_iw, 0.0)
        g_iry = tl.where(iry >= 0, g_ih, 0.0)
        gcx_l = tl.where(fin, 0.0, G_cx) * 0.5  # the corner centres
        gcy_l = tl.where(fin, 0.0, G_cy) * 0.5
        gp0 = (_max_grad(p0, g0, -g_irx) + _min_grad(p0, g0, -G_cw)) - g_wp + gcx_l
        gp2 = (_min_grad(p2, g2, g_irx) + _max_grad(p2, g2, G_cw)) + g_wp + gcx_l
        gp1 = (_max_grad(p1, g1, -g_iry) + _min_grad(p1, g1, -G_ch)) - g_hp + gcy_l
        gp3 = (_min_grad(p3, g3, g_iry) + _max_grad(p3, g3, G_ch)) + g_hp + gcy_l
        if XYWH:
            gP0 = (gp0 + gp2) + gd0
            gP1 = (gp1 + gp3) + gd1
            gP2 = (gp2 - gp0) * 0.5 + gd2
            gP3 = (gp3 - gp1) * 0.5 + gd3
        else:
            gP0 = gp0 + gd0
            gP1 = gp1 + gd1
            gP2 = gp2 + gd2
            gP3 = gp3 + gd3
        gq = g_ptr + 4 * idx
        tl.store(gq, gP0 * inv, mask=on)
        tl.store(gq + 1, gP1 * inv, mask=on)
        tl.store(gq + 2, gP2 * inv, mask=on)
        tl.store(gq + 3, gP3 * inv, mask=on)


# ----------------------------------------------------------------------------------- launchers


def low_value(mode: str, eps: float) -> float:
    """IoULoss's value where iou < eps (a Python float, rounded to the compute dtype in the
    kernel, as torch rounds the scalar): 1 - eps, 1 - eps^2, -log eps (inf for eps = 0)."""
    if mode == "linear":
        return 1.0 - eps
    if mode == "square":
        return 1.0 - eps * eps
    return -math.log(eps) if eps > 0 else math.inf


def box_loss(
    pred: torch.Tensor, target: torch.Tensor, *, kind: str, mode: str = "log", eps: float,
    theta: float = 4.0, bbox_format: str = "xyxy", need_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(l [...], dl/dpred [M,4] or [0]) of matched boxes pred, target [...,4] (M = their number),
    in the compute dtype (float32; float64 for float64 pred). One launch (none when M = 0)."""
    cdt = compute_dtype(pred)
    p = pred.detach().reshape(-1, 4).contiguous()
    t = mask_view(target.detach()).reshape(-1, 4).contiguous()
    n = p.shape[0]
    loss = torch.empty(n, dtype=cdt, device=pred.device)
    grad = torch.empty((n, 4) if need_grad else (0,), dtype=cdt, device=pred.device)
    if n:
        block = INTERPRETER_BLOCK if interpreting() else BLOCK
        floor = min(eps, float(torch.finfo(cdt).tiny))
        launch(
            _box_loss_kernel, (triton.cdiv(n, block),), p, t, loss, grad if need_grad else loss,
            n, option_arg(eps, cdt), option_arg(floor, cdt), option_arg(low_value(mode, eps), cdt),
            option_arg(theta, cdt),
            KIND=KINDS[kind], MODE=IOU_MODES[mode], XYWH=bbox_format == "xywh",
            STORE_GRAD=need_grad, ATAN_TERMS=ATAN_SERIES[cdt],
            BLOCK=block, num_warps=4,
            enable_fp_fusion=False,  # no FMA contraction: rounding as PyTorch's separate ops
        )  # fmt: skip
    return loss.view(pred.shape[:-1]), grad


def scaled_gradient(grad_loss: torch.Tensor, stored: torch.Tensor, pred: torch.Tensor):
    """dl/dpred times the upstream gradient of l (one elementwise torch op), pred's shape and
    dtype."""
    g = stored * grad_loss.reshape(-1, 1).to(stored.dtype)
    return g.to(pred.dtype).view(pred.shape)
