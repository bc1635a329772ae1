"""Dense classification losses of the registry (docs/spec.md 12.4): one row kernel for the softmax
family and one for the sigmoid family, each a single pass over the logits.

The logits are viewed as ``x [N, C, S]`` (S = the product of the spatial sizes, 1 for [N, C]
logits) with their own strides; a "row" is one position r = (n, s), R = N S rows. A program owns
``BLOCK_R`` rows (on maps: contiguous positions of one image, a 2-D grid) and walks the classes in
chunks of ``BLOCK_C``. Targets are index labels
``y [R]`` (contiguous), index labels with scores ``(y, q) [R]`` (QFL) or a dense tensor of x's
shape (own strides; a class stride 0 broadcasts an [N, S] target over C = 1).

Every kernel runs in one of three ``MODE`` s:

* ``M_SUMS``  per-program partials ``[P, 2]`` = (sum of l w v, sum of v), summed in a fixed order
  by the launcher (deterministic, no atomics); nothing of x's size is written;
* ``M_NONE``  the elementwise ``l w v`` (l's shape, contiguous, in the compute dtype);
* ``M_GRAD``  dL/dx = dl/dx w v g, g the upstream gradient: one scalar (``GO_SCALAR``, the
  gradient of the sum) or l's shape. The gradient launch recomputes the softmax/sigmoid terms
  from x; the softmax family walks a row's classes twice there (log-sum-exp, then gradient),
  the second walk re-reading the tile the first has just read (from cache when it stays there).
  Forward + backward: x read 2 to 3 times and the gradient written once, against about 6
  tensors of x's size read or written by eager PyTorch. ``SM_KD`` walks the classes once more
  in every mode (its cancellation-free terms need E_Q[t - s] from a first walk).

w is the sample weight (``HAS_SW``, broadcast by strides), v the validity (labels equal to
``ignore_index`` or outside their range, [0, C) softmax, [0, C] sigmoid; dense targets equal to
``ignore_index``, compared in the wider of the target's and ignore_index's integer types (a
value the target's dtype cannot hold equals none of its elements); for ``SM_FOCAL_DENSE`` a row
whose target equals it in any class; QFL's labels are all valid, those outside [0, C) the
background). An element with w = 0 or v = 0 contributes exactly 0, even where l is not finite
(``tl.where``).

Softmax family (l per row), p = softmax(x), lse = log sum_c exp(x_c), one online pass for lse:

* ``SM_CE``    l = (1-e) w_y (lse - x_y) + (e/C)(W lse - sum_c w_c x_c),  W = sum_c w_c;
               dl/dx_j = (1-e) w_y (p_j - t_j) + (e/C)(W p_j - w_j)
* ``SM_SOFT``  a_c = w_c t_c:  l = A lse - sum_c a_c x_c,  dl/dx_j = A p_j - a_j,  A = sum_c a_c
* ``SM_FOCAL`` (index) P = p_y, o = 1 - P = -expm1(log P):  l = -alpha_y w_y o^g log P;
               dl/dx_j = K (p_j - t_j),  K = alpha_y w_y (o^g - g P log P o^(g-1))
* ``SM_FOCAL_DENSE`` b_c = t_c w_c alpha_c:  l = -sum_c b_c o_c^g log p_c;
               dl/dx_j = h_j - p_j H,  h_c = b_c (g o_c^(g-1) p_c log p_c - o_c^g),  H = sum_c h_c;
               with ``HAS_IGNORE`` a row whose t_c equals ignore_index for some c is invalid
* ``SM_KD``    temperature T (a0), z = x/T, u = t/T (teacher logits), P = softmax(z),
               Q = softmax(u): l = T^2 KL(Q||P), dl/dx_j = T (P_j - Q_j), without the
               cancellation of T^2 (E_Q[u - z] - lse(u) + lse(z)) at a large T. The first walk
               computes lse(u) and m = E_Q[D], D = t - x (online); a second walk lse(z) (so the
               textbook K = m/T - lse(u) + lse(z)) and, with Dc = D - m, d = Dc/T and
               phi(d) = expm1(-d) + d >= 0 (KL = log1p(S) exactly):
               S = sum_c Q_c phi(d_c), V = sum_c T^2 Q_c phi(d_c), each term Q Dc^2 g(d) by the
               series g(d) = phi(d)/d^2 for |d| < 1 (no T^2 formed), Q (exp(-d) - 1 + d) times
               T^2 for -40 <= d <= -1 or d >= 1, exp(e) - Q + Q d from e = log(Q exp(-d)) below
               -40 or where Q = 0 (the student's mass there). l = V log1p(S)/S and
               dl/dx_j = (T Q_j expm1(-d_j) - Q_j V/T) / (1 + S), T Q expm1(-d) =
               -Q Dc (1 - d g(d)) in the series, where K <= 1; where K > 1 (nothing cancels) or
               the former is not finite (a student -inf where Q > 0: KL = +inf), l = T (T K) and
               T (P_j - Q_j). (registry/dense.py ``_tempered_kl`` is the torch twin.)

Sigmoid family (l per element; QFL sums it over the classes of a row), s = sig(x), s' = sig(-x)
= 1 - s, B(x, t) = -t log s - (1 - t) log s' (``logsigmoid``), w_c the class weight:

* ``SG_BCE``   l = -pw t log s - (1-t) log s',  dl/dx = -pw t s' + (1-t) s
* ``SG_BCE_PROB`` x a probability: l = -pw t max(log x, -100) - (1-t) max(log(1-x), -100)
* ``SG_FOCAL`` u = 1 - p_t = s (1-t) + s' t,  a = alpha t + (1-alpha)(1-t):  l = a B u^g;
               dl/dx = a ((s - t) u^g + B g u^(g-1) s s' (1 - 2t))
* ``SG_ASL``   q_m = max(s - clip, 0), base = -(t log max(s, eps) + (1-t) log max(1-q_m, eps)),
               1 - pt = t s' + (1-t) q_m, F = (1-pt)^(g+ t + g- (1-t)):  l = base F
               (F detached when ``FLAG``; clamps pass the gradient where torch.clamp does)
* ``SG_VFL``   F = (q if FLAG else 1) for q > 0, alpha s^g else:  l = B(x, q) F,
               dl/dx = (s - q) F + B [q <= 0] alpha g s^g s' (the second term 0 where q > 0 or
               alpha g s^g s' = 0, also where B is infinite)
* ``SG_QFL``   d = s - q (as (1 - q) - s' for q > 1/2: no cancellation at q ~ 1):  l = B(x, q) |d|^beta,
               dl/dx = d |d|^beta + B beta |d|^(beta-1) sign(d) s s'

Every focal power (sigmoid focal u^g, softmax focal (1-p)^g, VFL s^g, ASL (1-pt)^g, QFL |d|^beta)
is ``pow_from_log``: exp(g log u), log u taken without rounding u to 1 first (``log_one_minus``:
log1p(-(1-u)) where u > 1/2, 1 - u a sum of terms >= 0: p_t = (1-t) s' + t s, ASL's
pt = t s + (1-t)(1-q_m) with 1 - q_m = s' + clip, 1 - |d| = s' + q or (1-q) + s, the softmax p
from log p; logsigmoid at the targets 0 and 1), so that a saturated logit (1 - u below float32's
ulp) keeps its u^g for every exponent in [0, 1e30] (pow(u, g) gave 1^g = 1); 1 at g = 0 and 0 at
u = 0 for g > 0 (``pow_nonneg``'s values). No negative power of a vanishing base is formed:
B g u^(g-1) is computed as g (B/u) u^g (B/u -> 1 as u -> 0; 0 at u = 0), likewise ASL's
base/(1-pt) and the softmax focal log(p)/o (-> -1), and a product g s s' u^g that is 0 stays 0
(no 0 * inf where B is infinite), as VFL's B alpha g s^g s' and QFL's B beta |d|^(beta-1) s s';
so saturated and infinite logits give finite gradients wherever the reference's are, for every
exponent in [0, 1e30]. The log-sum-exp keeps a safe maximum while a row's classes so far are
all -inf, and the label-smoothing term exists only for e != 0 (a -inf logit is a masked class).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import interpreting, launch, option_arg
from .primitives import expm1, log1p, logsigmoid, option_value, pow_from_log, sigmoid

SM_CE, SM_SOFT, SM_FOCAL, SM_FOCAL_DENSE, SM_KD = 0, 1, 2, 3, 4
SG_BCE, SG_BCE_PROB, SG_FOCAL, SG_ASL, SG_VFL, SG_QFL = 0, 1, 2, 3, 4, 5
T_INDEX, T_DENSE, T_SCORE = 0, 1, 2
M_SUMS, M_NONE, M_GRAD = 0, 1, 2
FLOAT_OPTIONS = ("a0", "a1", "a2", "a3")


@triton.jit
def clamp_min(a, lo):
    """max(a, lo) that keeps a NaN (``tl.maximum`` drops it)."""
    return tl.where(a < lo, lo, a)


@triton.jit
def _kd_series(x):
    """g(x) = (exp(-x) - 1 + x) / x^2 = sum_k (-x)^k / (k+2)!, k = 0..17 (registry/dense.py
    ``KD_SERIES``): below float64's half ulp for |x| <= 1."""
    r = -8.22063524662433e-18
    r = r * x + 1.5619206968586225e-16
    r = r * x - 2.8114572543455206e-15
    r = r * x + 4.779477332387385e-14
    r = r * x - 7.647163731819816e-13
    r = r * x + 1.1470745597729725e-11
    r = r * x - 1.6059043836821613e-10
    r = r * x + 2.08767569878681e-09
    r = r * x - 2.505210838544172e-08
    r = r * x + 2.755731922398589e-07
    r = r * x - 2.7557319223985893e-06
    r = r * x + 2.48015873015873e-05
    r = r * x - 0.0001984126984126984
    r = r * x + 0.001388888888888889
    r = r * x - 0.008333333333333333
    r = r * x + 0.041666666666666664
    r = r * x - 0.16666666666666666
    return r * x + 0.5


@triton.jit
def not_(a):
    """Logical not of a boolean tile."""
    return a == 0


@triton.jit
def log_one_minus(p, o):
    """log(o), o = 1 - p, from both (each accurate: p and o = -expm1(log p), or the two sides of a
    sigmoid) without rounding o to 1: log1p(-p) where p < 1/2, else log(o); -inf at o = 0, NaN
    for o < 0 or NaN (no log of a number <= 0 is evaluated, not even in an untaken branch: the
    interpreter would warn)."""
    small = p < 0.5
    lg = log1p(-tl.where(small, p, 0.0))
    pos = o > 0.0
    lo = tl.log(tl.where(pos & not_(small), o, 1.0))
    lo = tl.where(pos, lo, tl.where(o == 0.0, float("-inf"), float("nan")))
    return tl.where(small, lg, lo)


@triton.jit
def _kd_terms(xs, t, m2, temp, inv_t, lse_u, mbar):
    """The per-class terms of a KD tile (module docstring, ``SM_KD``): student logits xs and
    teacher logits t [BLOCK_R, BLOCK_C] (raw), lse_u = lse(t/T) and mbar = E_Q[t - s] per row.
    Returns (q, sq, vq, tq): q = Q, sq = q phi(d) (a term of S), vq = T^2 q phi(d) (a term of
    V) and tq = T q expm1(-d); 0 off m2. (Rows of a large KL take the textbook formula, and what
    these give there, inf or NaN, is not used.)"""
    log_q = t * inv_t - lse_u[:, None]
    q = tl.where(m2, tl.exp(log_q), 0.0)
    pos = q > 0.0
    dc = tl.where(pos, (t - xs) - mbar[:, None], 0.0)
    d = dc * inv_t
    # e = log(q exp(-d)); where q = 0 (a teacher -inf, or an underflow) the student's mass there
    e_off = xs * inv_t + mbar[:, None] * inv_t - lse_u[:, None]
    e = tl.where(pos, log_q - d, tl.where(m2, e_off, float("-inf")))
    series = pos & (tl.abs(d) < 1.0)
    from_log = (d < -40.0) | (q == 0.0)
    far_mid = (not_(series)) & (not_(from_log))
    ds = tl.where(series, d, 0.0)
    g = _kd_series(ds)
    dcs = tl.where(series, dc, 0.0)
    dn = tl.where(far_mid, d, 0.0)
    ex = tl.exp(-dn)
    ee = tl.exp(tl.where(from_log, e, float("-inf")))
    far = tl.where(from_log, ee - q + q * d, q * (ex - 1.0 + dn))
    sq = tl.where(series, q * ds * ds * g, far)
    vfar = tl.where(far != 0.0, temp * (temp * far), 0.0)  # (no inf * 0 at T = inf)
    vq = tl.where(series, q * dcs * dcs * g, vfar)
    tq = tl.where(series, -q * dcs * (1.0 - ds * g), tl.where(from_log, temp * (ee - q),
                                                             temp * q * (ex - 1.0)))  # fmt: skip
    return q, sq, vq, tq


@triton.jit
def _kd_rows(x_ptr, t_ptr, n, s, rmask, C, sxn, sxc, sxs, stn, stc, sts, temp, inv_t, lse_u,
             mbar, cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    """KD's second walk of a row's classes: (S, V, m, se), S = sum q phi(d), V = sum T^2 q phi(d)
    (``_kd_terms``), and the student's online log-sum-exp, lse(x/T) = m + log(se)."""
    cdt = lse_u.dtype
    s_sum = tl.zeros([BLOCK_R], cdt)
    v_sum = tl.zeros([BLOCK_R], cdt)
    m = tl.full([BLOCK_R], float("-inf"), cdt)
    se = tl.zeros([BLOCK_R], cdt)
    for c0 in range(0, C, BLOCK_C):
        c = (c0 + cols).to(tl.int64)
        cmask = c < C
        m2 = rmask[:, None] & cmask[None, :]
        xs = tl.load(x_ptr + n[:, None] * sxn + c[None, :] * sxc + s[:, None] * sxs, mask=m2,
                     other=0).to(cdt)  # fmt: skip
        t = tl.load(t_ptr + n[:, None] * stn + c[None, :] * stc + s[:, None] * sts, mask=m2,
                    other=0).to(cdt)  # fmt: skip
        _q, sq, vq, _tq = _kd_terms(xs, t, m2, temp, inv_t, lse_u, mbar)
        s_sum += tl.sum(sq, axis=1)
        v_sum += tl.sum(vq, axis=1)
        xm = tl.where(m2, xs * inv_t, float("-inf"))
        m_new = tl.maximum(m, tl.max(xm, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        se = se * tl.exp(m - m_safe) + tl.sum(tl.exp(xm - m_safe[:, None]), axis=1)
        m = m_new
    return s_sum, v_sum, m, se


@triton.jit
def _row_index(R, S, BLOCK_R: tl.constexpr, SPATIAL: tl.constexpr):
    """(r, n, s, row mask, linear program id) of this program's rows. ``SPATIAL`` (maps): a 2-D
    grid (position blocks, images), so that s is a provably contiguous block (coalesced loads
    along the map); else rows are the flattened positions (S = 1: r = n)."""
    if SPATIAL:
        pos = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = pos < S
        s = pos.to(tl.int64)
        n = tl.zeros([BLOCK_R], tl.int64) + tl.program_id(1)
        pid = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
        return n * S + s, n, s, rmask, pid
    else:
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        rmask = rows < R
        r = rows.to(tl.int64)
        n = r // S
        return r, n, r - n * S, rmask, tl.program_id(0)


@triton.jit
def _sigmoid_terms(x, t, cp, a1, a2, a3, LOSS: tl.constexpr, FLAG: tl.constexpr):
    """(l, dl/dx) of one sigmoid-family element (module docstring); cp is pos_weight (BCE),
    alpha (focal, VFL), gamma_neg (ASL) or beta (QFL)."""
    s = sigmoid(x)
    sn = sigmoid(-x)
    ls = logsigmoid(x)
    lsn = logsigmoid(-x)
    bce = -(t * ls + (1.0 - t) * lsn)
    if LOSS == 0:  # SG_BCE
        l = -(cp * t * ls + (1.0 - t) * lsn)
        d = -cp * t * sn + (1.0 - t) * s
    elif LOSS == 1:  # SG_BCE_PROB
        lq = clamp_min(tl.log(x), -100.0)
        l1q = clamp_min(tl.log(1.0 - x), -100.0)
        l = -(cp * t * lq + (1.0 - t) * l1q)
        iq = tl.where(lq > -100.0, 1.0 / tl.where(x == 0.0, 1.0, x), 0.0)
        i1q = tl.where(l1q > -100.0, 1.0 / tl.where(x == 1.0, 1.0, 1.0 - x), 0.0)
        d = -cp * t * iq + (1.0 - t) * i1q
    elif LOSS == 2:  # SG_FOCAL, cp = alpha, a1 = gamma
        u = s * (1.0 - t) + sn * t
        # log u: logsigmoid at t = 0 / 1, else from u and p_t = 1 - u (both sums of terms >= 0)
        lu = log_one_minus((1.0 - t) * sn + t * s, u)
        lu = tl.where(t == 0.0, ls, tl.where(t == 1.0, lsn, lu))
        a = cp * t + (1.0 - cp) * (1.0 - t)
        m = pow_from_log(lu, a1)
        ratio = tl.where(u > 0.0, bce / tl.where(u > 0.0, u, 1.0), 0.0)  # B / u -> 1 as u -> 0
        l = a * bce * m
        fm = a1 * (s * sn) * m  # g u^g s s' (finite for every g <= 1e30)
        d = a * ((s - t) * m + fm * tl.where(fm == 0.0, 0.0, ratio) * (1.0 - 2.0 * t))
    elif LOSS == 3:  # SG_ASL, cp = gamma_neg, a1 = gamma_pos, a2 = clip, a3 = eps
        qm = clamp_min(s - a2, 0.0)
        one_qm = tl.where(s - a2 >= 0.0, sn + a2, 1.0)
        lp = tl.log(clamp_min(s, a3))
        ln = tl.log(clamp_min(one_qm, a3))
        base = -(t * lp + (1.0 - t) * ln)
        dqm = tl.where(s - a2 >= 0.0, s * sn, 0.0)  # d q_m / dx
        dneg = tl.where(one_qm >= a3, dqm / one_qm, 0.0)
        dbase = -(t * tl.where(s >= a3, sn, 0.0) - (1.0 - t) * dneg)
        g = a1 * t + cp * (1.0 - t)
        b = t * sn + (1.0 - t) * qm  # 1 - pt
        lb = log_one_minus(t * s + (1.0 - t) * one_qm, b)  # pt = 1 - b, a sum of terms >= 0
        lb = tl.where(t == 1.0, lsn, lb)
        zero = tl.zeros_like(x)
        focus = ((cp + zero) > 0.0) | ((a1 + zero) > 0.0)
        f = tl.where(focus, pow_from_log(lb, g), 1.0)
        l = base * f
        d = dbase * f
        if not FLAG:
            db = -t * s * sn + (1.0 - t) * dqm
            ratio = tl.where(focus & (b > 0.0), base / tl.where(b > 0.0, b, 1.0), 0.0)
            d += g * ratio * f * db  # base g b^(g-1) db, as g (base / b) b^g db
    elif LOSS == 4:  # SG_VFL, t = q, cp = alpha, a1 = gamma
        sg = pow_from_log(ls, a1)  # s^g
        pos = t > 0.0
        if FLAG:
            f = tl.where(pos, t, cp * sg)
        else:
            f = tl.where(pos, 1.0, cp * sg)
        l = bce * f
        vt = cp * (a1 * sn) * sg  # d(alpha s^g)/dx; B times it where q <= 0 (no inf * 0)
        d = (s - t) * f + vt * tl.where(pos | (vt == 0.0), 0.0, bce)
    else:  # SG_QFL, t = q, cp = beta
        dd = tl.where(t > 0.5, (1.0 - t) - sn, s - t)  # (1 - q exact: no cancellation at q ~ 1)
        ad = tl.abs(dd)
        # log |d| from 1 - |d| = s' + q (d > 0) or (1 - q) + s; logsigmoid(x) at q = 0
        lad = log_one_minus(tl.where(dd > 0.0, sn + t, (1.0 - t) + s), ad)
        lad = tl.where(t == 0.0, ls, lad)
        m = pow_from_log(lad, cp)
        pos_d = (ad > 0.0) & (cp + tl.zeros_like(ad) > 0.0)
        m1 = tl.where(pos_d, tl.exp((cp - 1.0) * tl.where(pos_d, lad, 0.0)), 0.0)  # |d|^(b-1)
        sign = tl.where(dd > 0.0, 1.0, -1.0)
        l = bce * m
        qt = cp * (s * sn) * m1
        d = dd * m + qt * tl.where(qt == 0.0, 0.0, bce) * sign
    return l, d


@triton.jit(do_not_specialize=["a0", "a1", "a2", "a3", "ignore_index"])
def _sigmoid_kernel(
    x_ptr, t_ptr, q_ptr, sw_ptr, cw_ptr, cp_ptr, out_ptr, go_ptr, gx_ptr,
    R, S, C,
    sxn, sxc, sxs, stn, stc, sts, swn, swc, sws, sgn, sgc, sgs,
    a0, a1, a2, a3, ignore_index,
    LOSS: tl.constexpr, TARGET: tl.constexpr, FLAG: tl.constexpr, HAS_IGNORE: tl.constexpr,
    HAS_SW: tl.constexpr, HAS_CW: tl.constexpr, HAS_CP: tl.constexpr, PER_ROW: tl.constexpr,
    MODE: tl.constexpr, GO_SCALAR: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    SPATIAL: tl.constexpr,
):  # fmt: skip
    """Sigmoid-family losses over BLOCK_R rows x all classes (module docstring)."""
    cdt: tl.constexpr = out_ptr.dtype.element_ty if MODE != 2 else go_ptr.dtype.element_ty
    r, n, s, rmask, pid = _row_index(R, S, BLOCK_R, SPATIAL)
    cols = tl.arange(0, BLOCK_C)
    p0 = option_value(a0, cdt)
    p1 = option_value(a1, cdt)
    p2 = option_value(a2, cdt)
    p3 = option_value(a3, cdt)
    if TARGET != 1:
        y = tl.load(t_ptr + r, mask=rmask, other=0).to(tl.int64)
        if TARGET == 2:  # QFL: every label outside [0, C) is the background (a zero row)
            rvalid = rmask
        else:
            rvalid = rmask & (y >= 0) & (y <= C)  # label C: the background (a zero row)
        if HAS_IGNORE:
            rvalid = rvalid & (y != ignore_index)
        if TARGET == 2:
            score = tl.load(q_ptr + r, mask=rmask, other=0).to(cdt)
    if MODE == 2:
        if GO_SCALAR:
            g_row = tl.load(go_ptr + tl.zeros([BLOCK_R], tl.int64)).to(cdt)
        elif PER_ROW:
            g_row = tl.load(go_ptr + r, mask=rmask, other=0).to(cdt)
    acc = tl.zeros([BLOCK_R], cdt)
    cnt = tl.zeros([BLOCK_R], cdt)
    for c0 in range(0, C, BLOCK_C):
        c = (c0 + cols).to(tl.int64)
        cmask = c < C
        m2 = rmask[:, None] & cmask[None, :]
        x = tl.load(
            x_ptr + n[:, None] * sxn + c[None, :] * sxc + s[:, None] * sxs, mask=m2, other=0
        )
        x = x.to(cdt)
        if TARGET == 1:
            traw = tl.load(
                t_ptr + n[:, None] * stn + c[None, :] * stc + s[:, None] * sts, mask=m2, other=0
            )
            v = m2
            if HAS_IGNORE:
                v = v & (traw != ignore_index)
            t = tl.where(v, traw.to(cdt), 0.0)
        else:
            v = rvalid[:, None] & cmask[None, :]
            hit = y[:, None] == c[None, :]
            if TARGET == 2:
                t = tl.where(hit, score[:, None] + tl.zeros([BLOCK_R, BLOCK_C], cdt), 0.0)
            else:
                t = tl.where(hit, 1.0, 0.0).to(cdt)
        if HAS_CP:
            cp = tl.load(cp_ptr + c, mask=cmask, other=0).to(cdt)[None, :]
        else:
            cp = p0
        l, d = _sigmoid_terms(x, t, cp, p1, p2, p3, LOSS, FLAG)
        if HAS_CW:
            wc = tl.load(cw_ptr + c, mask=cmask, other=0).to(cdt)[None, :]
            l = l * wc
            d = d * wc
        keep = v
        if HAS_SW:
            w = tl.load(
                sw_ptr + n[:, None] * swn + c[None, :] * swc + s[:, None] * sws, mask=m2, other=0
            )
            w = w.to(cdt)
            keep = keep & (w != 0.0)
            l = l * w
            d = d * w
        lk = tl.where(keep, l, 0.0)
        if MODE == 0:
            acc += tl.sum(lk, axis=1)
            cnt += tl.sum(v.to(cdt), axis=1)
        elif MODE == 1:
            if PER_ROW:
                acc += tl.sum(lk, axis=1)
            else:
                tl.store(out_ptr + (n * C * S + s)[:, None] + c[None, :] * S, lk, mask=m2)
        else:
            if GO_SCALAR or PER_ROW:
                g = g_row[:, None]
            else:
                g = tl.load(go_ptr + (n * C * S + s)[:, None] + c[None, :] * S, mask=m2, other=0)
                g = g.to(cdt)
            gx = tl.where(keep, d * g, 0.0)
            gx_offs = n[:, None] * sgn + c[None, :] * sgc + s[:, None] * sgs
            tl.store(gx_ptr + gx_offs, gx.to(gx_ptr.dtype.element_ty), mask=m2)
    if MODE == 0:
        tl.store(out_ptr + pid * 2, tl.sum(acc, axis=0))
        tl.store(out_ptr + pid * 2 + 1, tl.sum(cnt, axis=0))
    elif MODE == 1:
        if PER_ROW:
            tl.store(out_ptr + r, acc, mask=rmask)


@triton.jit(do_not_specialize=["a0", "a1", "a2", "a3", "ignore_index"])
def _softmax_kernel(
    x_ptr, t_ptr, q_ptr, sw_ptr, cw_ptr, cp_ptr, out_ptr, go_ptr, gx_ptr,
    R, S, C,
    sxn, sxc, sxs, stn, stc, sts, swn, swc, sws, sgn, sgc, sgs,
    a0, a1, a2, a3, ignore_index,
    LOSS: tl.constexpr, TARGET: tl.constexpr, FLAG: tl.constexpr, HAS_IGNORE: tl.constexpr,
    HAS_SW: tl.constexpr, HAS_CW: tl.constexpr, HAS_CP: tl.constexpr, PER_ROW: tl.constexpr,
    MODE: tl.constexpr, GO_SCALAR: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    SPATIAL: tl.constexpr,
):  # fmt: skip
    """Softmax-family losses, one row per position (module docstring): pass 1 computes lse
    online with the row sums it needs; a second walk of the classes computes the gradient (and
    the dense focal sums)."""
    cdt: tl.constexpr = out_ptr.dtype.element_ty if MODE != 2 else go_ptr.dtype.element_ty
    r, n, s, rmask, pid = _row_index(R, S, BLOCK_R, SPATIAL)
    cols = tl.arange(0, BLOCK_C)
    e = option_value(a0, cdt)  # label smoothing (CE); alpha (focal) when not per class
    gam = option_value(a1, cdt)
    rvalid = rmask
    if TARGET == 0:
        y = tl.load(t_ptr + r, mask=rmask, other=0).to(tl.int64)
        rvalid = rvalid & (y >= 0) & (y < C)
        if HAS_IGNORE:
            rvalid = rvalid & (y != ignore_index)
    m = tl.full([BLOCK_R], float("-inf"), cdt)
    se = tl.zeros([BLOCK_R], cdt)
    xy = tl.zeros([BLOCK_R], cdt)  # x_y (index)
    wy = tl.zeros([BLOCK_R], cdt)  # w_y (index)
    ay = tl.zeros([BLOCK_R], cdt)  # alpha_y (index focal)
    big_a = tl.zeros([BLOCK_R], cdt)  # W (CE) or A (soft)
    ax = tl.zeros([BLOCK_R], cdt)  # sum_c w_c x_c (CE) or sum_c a_c x_c (soft)
    if LOSS == 4:
        inv_t = 1.0 / e  # KD: a0 = T (only here: e = 0 elsewhere is no temperature)
    m_u = tl.full([BLOCK_R], float("-inf"), cdt)  # KD: the teacher's running max, sum, and
    se_u = tl.zeros([BLOCK_R], cdt)  # sum_c exp(u_c - m_u) (t_c - s_c)
    kd = tl.zeros([BLOCK_R], cdt)
    for c0 in range(0, C, BLOCK_C):
        c = (c0 + cols).to(tl.int64)
        cmask = c < C
        m2 = rmask[:, None] & cmask[None, :]
        x = tl.load(
            x_ptr + n[:, None] * sxn + c[None, :] * sxc + s[:, None] * sxs, mask=m2, other=0
        )
        x = x.to(cdt)
        if LOSS == 4:
            xs = x  # the student's raw logits (lse(x/T): in the second walk)
        else:
            xm = tl.where(cmask[None, :], x, float("-inf"))
            m_new = tl.maximum(m, tl.max(xm, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no -inf - (-inf) (all -inf)
            se = se * tl.exp(m - m_safe) + tl.sum(tl.exp(xm - m_safe[:, None]), axis=1)
            m = m_new
        if HAS_CW:
            wc = tl.load(cw_ptr + c, mask=cmask, other=0).to(cdt)[None, :]
        else:
            wc = tl.where(cmask, 1.0, 0.0).to(cdt)[None, :]
        if TARGET == 0:
            hit = (y[:, None] == c[None, :]) & cmask[None, :]
            xy += tl.sum(tl.where(hit, x, 0.0), axis=1)
            wy += tl.sum(tl.where(hit, wc, 0.0), axis=1)
            if LOSS == 0:
                big_a += tl.sum(wc + tl.zeros([BLOCK_R, BLOCK_C], cdt), axis=1)
                ax += tl.sum(tl.where(m2, wc * x, 0.0), axis=1)
            if LOSS == 2:
                if HAS_CP:
                    al = tl.load(cp_ptr + c, mask=cmask, other=0).to(cdt)[None, :]
                    ay += tl.sum(tl.where(hit, al, 0.0), axis=1)
        elif LOSS == 1:
            t = tl.load(
                t_ptr + n[:, None] * stn + c[None, :] * stc + s[:, None] * sts, mask=m2, other=0
            )
            a = tl.where(m2, wc * t.to(cdt), 0.0)
            big_a += tl.sum(a, axis=1)
            ax += tl.sum(a * x, axis=1)
        elif LOSS == 4:
            t = tl.load(
                t_ptr + n[:, None] * stn + c[None, :] * stc + s[:, None] * sts, mask=m2, other=0
            )
            tr = t.to(cdt)
            um = tl.where(cmask[None, :], tr * inv_t, float("-inf"))
            mu_new = tl.maximum(m_u, tl.max(um, axis=1))
            mu_safe = tl.where(mu_new == float("-inf"), 0.0, mu_new)
            eu = tl.exp(um - mu_safe[:, None])
            scale = tl.exp(m_u - mu_safe)
            se_u = se_u * scale + tl.sum(eu, axis=1)
            kd = kd * scale + tl.sum(tl.where(eu > 0.0, eu * (tr - xs), 0.0), axis=1)
            m_u = mu_new
    if LOSS == 4:  # (KD's walk has no lse(x) and nothing of the teacher elsewhere: no log(0))
        lse_u = m_u + tl.log(se_u)
    else:
        lse = m + tl.log(se)
    if LOSS == 2:
        if not HAS_CP:
            ay = e + tl.zeros([BLOCK_R], cdt)
        logp_y = xy - lse
        p_y = tl.exp(logp_y)
        o_y = -expm1(logp_y)
        r_y = tl.where(o_y > 0.0, logp_y / tl.where(o_y > 0.0, o_y, 1.0), -1.0)  # -> -1
        og_y = pow_from_log(log_one_minus(p_y, o_y), gam)  # (1 - p_y)^g, exact as p_y -> 0
        focal_k = ay * wy * og_y * (1.0 - gam * p_y * r_y)
    if LOSS == 0:
        smooth = tl.where(e != 0.0, e / C * (big_a * lse - ax), 0.0)  # (-inf logits: no 0 * inf)
        l = (1.0 - e) * wy * (lse - xy) + smooth
    elif LOSS == 1:
        l = big_a * lse - ax
    elif LOSS == 2:
        l = -ay * wy * og_y * logp_y
    elif LOSS == 4:  # T^2 KL without cancellation (module docstring); a second walk
        mbar = kd / se_u  # E_Q[t - s]
        s_kd, v_kd, m, se = _kd_rows(x_ptr, t_ptr, n, s, rmask, C, sxn, sxc, sxs, stn, stc, sts,
                                     e, inv_t, lse_u, mbar, cols, BLOCK_R, BLOCK_C)  # fmt: skip
        lse = m + tl.log(tl.where(rmask, se, 1.0))  # lse(x/T) (rows past R: no log(0))
        kl_tb = mbar * inv_t - lse_u + lse  # KL, the textbook way: where KL > 1
        ratio = tl.where(s_kd > 0.0, log1p(s_kd) / tl.where(s_kd > 0.0, s_kd, 1.0), 1.0)
        kl = v_kd * ratio
        small = (kl_tb <= 1.0) & (kl == kl) & (tl.abs(kl) < float("inf"))
        l = tl.where(small, kl, e * (e * kl_tb))
        inv_1s = 1.0 / (1.0 + s_kd)  # (the gradient's per-row factor)
    else:
        # dense-target focal: the per-class sums need lse; H for the gradient; a row whose
        # target holds ignore_index in any class is invalid
        l = tl.zeros([BLOCK_R], cdt)
        big_h = tl.zeros([BLOCK_R], cdt)
        n_ignored = tl.zeros([BLOCK_R], tl.int32)
        for c0 in range(0, C, BLOCK_C):
            c = (c0 + cols).to(tl.int64)
            cmask = c < C
            m2 = rmask[:, None] & cmask[None, :]
            x = tl.load(
                x_ptr + n[:, None] * sxn + c[None, :] * sxc + s[:, None] * sxs, mask=m2, other=0
            )
            # (lanes past C or R: a finite log p, not -lse, which overflows g p log(p)/o)
            logp = tl.where(m2, x.to(cdt) - lse[:, None], -1.0)
            p = tl.exp(logp)
            o = -expm1(logp)
            t = tl.load(
                t_ptr + n[:, None] * stn + c[None, :] * stc + s[:, None] * sts, mask=m2, other=0
            )
            if HAS_IGNORE:
                n_ignored += tl.sum(tl.where(m2 & (t == ignore_index), 1, 0), axis=1)
            b = t.to(cdt)
            if HAS_CW:
                b = b * tl.load(cw_ptr + c, mask=cmask, other=0).to(cdt)[None, :]
            if HAS_CP:
                b = b * tl.load(cp_ptr + c, mask=cmask, other=0).to(cdt)[None, :]
            else:
                b = b * e
            b = tl.where(m2, b, 0.0)
            og = pow_from_log(log_one_minus(p, o), gam)
            l += tl.sum(tl.where(b != 0.0, -b * og * logp, 0.0), axis=1)
            lr = tl.where(o > 0.0, logp / tl.where(o > 0.0, o, 1.0), -1.0)
            big_h += tl.sum(tl.where(b != 0.0, b * og * (gam * p * lr - 1.0), 0.0), axis=1)
        if HAS_IGNORE:
            rvalid = rvalid & (n_ignored == 0)
    keep = rvalid
    if HAS_SW:
        w = tl.load(sw_ptr + n * swn + s * sws, mask=rmask, other=0).to(cdt)
        keep = keep & (w != 0.0)
        l = l * w
    if MODE == 0:
        tl.store(out_ptr + pid * 2, tl.sum(tl.where(keep, l, 0.0), axis=0))
        tl.store(out_ptr + pid * 2 + 1, tl.sum(rvalid.to(cdt), axis=0))
    elif MODE == 1:
        tl.store(out_ptr + r, tl.where(keep, l, 0.0), mask=rmask)
    else:
        if GO_SCALAR:
            g = tl.load(go_ptr + tl.zeros([BLOCK_R], tl.int64)).to(cdt)
        else:
            g = tl.load(go_ptr + r, mask=rmask, other=0).to(cdt)
        if HAS_SW:
            g = g * w
        for c0 in range(0, C, BLOCK_C):
            c = (c0 + cols).to(tl.int64)
            cmask = c < C
            m2 = rmask[:, None] & cmask[None, :]
            x = tl.load(
                x_ptr + n[:, None] * sxn + c[None, :] * sxc + s[:, None] * sxs, mask=m2, other=0
            )
            if LOSS == 4:
                xs = x.to(cdt)
                x = xs * inv_t
            if LOSS != 3:  # (the dense focal kind forms p from its guarded log p below)
                p = tl.exp(x.to(cdt) - lse[:, None])
            if HAS_CW:
                wc = tl.load(cw_ptr + c, mask=cmask, other=0).to(cdt)[None, :]
            else:
                wc = tl.where(cmask, 1.0, 0.0).to(cdt)[None, :]
            if LOSS == 0:
                hit = tl.where(y[:, None] == c[None, :], 1.0, 0.0).to(cdt)
                d = (1.0 - e) * wy[:, None] * (p - hit) + e / C * (big_a[:, None] * p - wc)
            elif LOSS == 1:
                t = tl.load(
                    t_ptr + n[:, None] * stn + c[None, :] * stc + s[:, None] * sts, mask=m2, other=0
                )
                d = big_a[:, None] * p - wc * t.to(cdt)
            elif LOSS == 2:
                hit = tl.where(y[:, None] == c[None, :], 1.0, 0.0).to(cdt)
                d = focal_k[:, None] * (p - hit)
            elif LOSS == 4:  # T (P - Q) without cancellation (module docstring)
                t = tl.load(
                    t_ptr + n[:, None] * stn + c[None, :] * stc + s[:, None] * sts, mask=m2, other=0
                )
                q, _sq, _vq, tq = _kd_terms(xs, t.to(cdt), m2, e, inv_t, lse_u, mbar)
                d_small = (tq - q * (v_kd * inv_t)[:, None]) * inv_1s[:, None]
                d = tl.where(small[:, None], d_small, e * (p - q))
            else:
                logp = tl.where(m2, x.to(cdt) - lse[:, None], -1.0)  # (as in the first walk)
                p = tl.exp(logp)
                o = -expm1(logp)
                t = tl.load(
                    t_ptr + n[:, None] * stn + c[None, :] * stc + s[:, None] * sts, mask=m2, other=0
                )
                b = t.to(cdt) * wc
                if HAS_CP:
                    b = b * tl.load(cp_ptr + c, mask=cmask, other=0).to(cdt)[None, :]
                else:
                    b = b * e
                lr = tl.where(o > 0.0, logp / tl.where(o > 0.0, o, 1.0), -1.0)
                og = pow_from_log(log_one_minus(p, o), gam)
                h = tl.where(b != 0.0, b * og * (gam * p * lr - 1.0), 0.0)
                d = h - p * big_h[:, None]
            gx = tl.where(keep[:, None], d * g[:, None], 0.0)
            gx_offs = n[:, None] * sgn + c[None, :] * sgc + s[:, None] * sgs
            tl.store(gx_ptr + gx_offs, gx.to(gx_ptr.dtype.element_ty), mask=m2)


# -------------------------------------------------------------------------------- launchers


def blocks(c: int, s: int, sxc: int, family: str = "softmax") -> tuple[int, int]:
    """(BLOCK_R, BLOCK_C). Maps (rows contiguous): classes in chunks of 8 and 128 positions
    (64 for the sigmoid family) a program, 512 contiguous bytes per class; [N, C] logits
    (contiguous along C): chunks of up to 1024 classes, 1024-element tiles (512 sigmoid). About 8
    elements per thread of 4 warps: within 128 registers. Under the interpreter, which pays per
    program, tiles of 8192."""
    rows_contiguous = s > 1 and sxc != 1
    tile = 8192 if interpreting() else 1024 if family == "softmax" else 512
    cap = 8 if rows_contiguous else 1024
    block_c = min(triton.next_power_of_2(max(c, 1)), cap)
    return max(tile // block_c, 1), block_c


def _tile_kind(opts: dict) -> str:
    """ "softmax" (1024-element tiles) or "sigmoid" (512): the sigmoid family and the dense-target
    softmax focal loss (three class walks) and KD (two softmaxes) keep more values live."""
    heavy = opts["family"] == "sigmoid" or opts["loss"] in (SM_FOCAL_DENSE, SM_KD)
    return "sigmoid" if heavy else "softmax"


def _grid(x3: torch.Tensor, family: str) -> tuple[tuple[int, ...], int, int, bool]:
    """(grid, BLOCK_R, BLOCK_C, SPATIAL): a 2-D grid (position blocks, images) on maps."""
    n, c, s = x3.shape
    block_r, block_c = blocks(c, s, x3.stride(1), family)
    if s > 1 and n <= 65535:
        return (triton.cdiv(s, block_r), max(n, 1)), block_r, block_c, True
    return (triton.cdiv(max(n * s, 1), block_r),), block_r, block_c, False


def _strides(a: torch.Tensor) -> tuple[int, int, int]:
    """[N, C, S] strides with a size-1 class axis broadcast (stride 0)."""
    return a.stride(0), a.stride(1) if a.shape[1] > 1 else 0, a.stride(2)


def _launch(kernel, mode, x3, t, q, sw, cw, cp, out, go, gx, opts: dict) -> None:
    n, c, s = x3.shape
    r = n * s
    grid, block_r, block_c, spatial = _grid(x3, _tile_kind(opts))
    cdt = out.dtype if out is not None else go.dtype
    dummy = x3
    ts = _strides(t) if (t is not None and opts["target"] == T_DENSE) else (0, 0, 0)
    ws = _strides(sw) if sw is not None else (0, 0, 0)
    gs = gx.stride() if gx is not None else (0, 0, 0)
    floats = [option_arg(float(opts.get(k, 0.0)), cdt) for k in FLOAT_OPTIONS]
    launch(
        kernel, grid,
        x3, t if t is not None else dummy, q if q is not None else dummy,
        sw if sw is not None else dummy, cw if cw is not None else dummy,
        cp if cp is not None else dummy, out if out is not None else go,
        go if go is not None else out, gx if gx is not None else dummy,
        r, s, c, *x3.stride(), *ts, *ws, *gs, *floats, int(opts.get("ignore_index", 0)),
        LOSS=opts["loss"], TARGET=opts["target"], FLAG=bool(opts.get("flag", False)),
        HAS_IGNORE=bool(opts.get("has_ignore", False)), HAS_SW=sw is not None,
        HAS_CW=cw is not None, HAS_CP=cp is not None, PER_ROW=bool(opts["per_row"]),
        MODE=mode, GO_SCALAR=go is not None and go.dim() == 0, BLOCK_R=block_r, BLOCK_C=block_c,
        SPATIAL=spatial, num_warps=4,
    )  # fmt: skip


def _kernel(opts: dict):
    return _softmax_kernel if opts["family"] == "softmax" else _sigmoid_kernel


def dense_sums(x3, t, q, sw, cw, cp, cdt: torch.dtype, **opts) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of l w v, sum of v) as two 0-dim tensors in ``cdt``; x3 [N, C, S]."""
    if x3.numel() == 0:
        zero = torch.zeros((), dtype=cdt, device=x3.device)
        return zero, zero.clone()
    grid = _grid(x3, _tile_kind(opts))[0]
    p = grid[0] * (grid[1] if len(grid) > 1 else 1)
    part = torch.empty(p, 2, dtype=cdt, device=x3.device)
    _launch(_kernel(opts), M_SUMS, x3, t, q, sw, cw, cp, part, None, None, opts)
    # fixed-order device reductions of the partials (two outputs that alias nothing)
    return part[:, 0].sum(), part[:, 1].sum()


def dense_none(x3, t, q, sw, cw, cp, cdt: torch.dtype, **opts) -> torch.Tensor:
    """The elementwise l w v: [N, S] (per-row losses) or [N, C, S], contiguous, in ``cdt``."""
    n, c, s = x3.shape
    shape = (n, s) if opts["per_row"] else (n, c, s)
    out = torch.empty(shape, dtype=cdt, device=x3.device)
    if x3.numel() == 0:
        return out
    _launch(_kernel(opts), M_NONE, x3, t, q, sw, cw, cp, out, None, None, opts)
    return out


def dense_grad(go, x3, t, q, sw, cw, cp, **opts) -> torch.Tensor:
    """dL/dx3 for the upstream gradient ``go``: 0-dim (of the sum) or l's shape (of "none")."""
    gx = torch.empty_like(x3)
    if x3.numel() == 0:
        return gx
    go = go if go.dim() == 0 else go.contiguous()
    _launch(_kernel(opts), M_GRAD, x3, t, q, sw, cw, cp, None, go, gx, opts)
    return gx
