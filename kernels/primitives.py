"""Shared ``@triton.jit`` device functions: every piece of loss math is written once, here.

The fused gap-detection kernels (``gap_detection.py``) and the component kernels (``focal.py``,
``regression.py``, ``labels.py``, ``hard_negative.py``) all call these. Arithmetic runs in the
dtype of the tensors passed in (float32, or float64 for float64 problems); scalar options arrive as
kernel scalars and are brought to that dtype with :func:`as_dtype`.

Conventions (docs/spec.md 3.2-3.3): grid coordinates ``u = x / stride``, ``v = y / stride``; cell
(i, j) sits at grid point (j, i).
"""

from __future__ import annotations

import triton
import triton.language as tl

NORM_EPS: tl.constexpr = tl.constexpr(1e-12)  # F.normalize's default (cosine term); a constexpr:
# @triton.jit code may read no other kind of global (the compiler rejects it, the interpreter not)


@triton.jit
def as_dtype(a, cdt: tl.constexpr):
    """A kernel scalar (or Python number under the interpreter) as a 0-d value of dtype ``cdt``."""
    return a + tl.zeros([], cdt)


@triton.jit
def option(bits, cdt: tl.constexpr):
    """A float option passed as its float64 bit pattern (``launch.f64_bits``) as a 0-d value of
    dtype ``cdt``: exact in float64, correctly rounded in float32."""
    # tl.cast, not bits.to: torch.compile's mutation analysis passes scalars as Python ints.
    return tl.cast(bits, tl.int64).to(tl.float64, bitcast=True).to(cdt)


@triton.jit
def option_value(v, cdt: tl.constexpr):
    """A float option passed by ``launch.option_arg`` for arithmetic in ``cdt``: the float64 bit
    pattern when ``cdt`` is float64, else a float32 (the kernels of ``triton_op``s: Inductor
    cannot pass a bit pattern, see option_arg)."""
    if cdt == tl.float64:
        return tl.cast(v, tl.int64).to(tl.float64, bitcast=True)
    else:
        return tl.cast(v, tl.float32).to(cdt)


@triton.jit
def div_exact(a, b):
    """a / b correctly rounded (Triton's float32 ``/`` may be approximate; float64's is exact).

    Used for coordinates, where ``floor(x / stride)`` must agree with PyTorch at cell borders.
    """
    if a.dtype == tl.float32:
        return tl.div_rn(a, b)
    else:
        return a / b


@triton.jit
def pow_nonneg(x, a):
    """x ** a for x >= 0 with torch's values at 0: 0 ** 0 = 1, 0 ** a = 0 (a > 0), inf (a < 0);
    NaN for x < 0 (like torch for a fractional a) and for a NaN x (but NaN ** 0 = 1, as torch)."""
    safe = tl.where(x > 0, x, 1.0)
    r = tl.exp(a * tl.log(safe))
    at_zero = tl.where(a == 0, 1.0, tl.where(a > 0, 0.0, float("inf")))
    r = tl.where(x > 0, r, at_zero)
    r = tl.where(x != x, tl.where(a == 0, 1.0, float("nan")), r)
    return tl.where(x < 0, float("nan"), r)


@triton.jit
def log1p(t):
    """log(1 + t) for t >= -1, to the working precision for every t (no cancellation near 0).

    |t| < 1/4: 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), s = t / (2 + t), |s| <= 1/7, summed to
    below half an ulp (float32: 4 terms, float64: 9); plain arithmetic, so the result does not
    depend on how ``tl.log`` is lowered (the GPU's float32 log is accurate to ~2^-22 absolute,
    which is no relative accuracy near log(1) = 0). Elsewhere log(1 + t), |log(1 + t)| > 0.22.
    """
    small = tl.abs(t) < 0.25
    s = t / (2.0 + tl.where(small, t, 0.0))
    s2 = s * s
    if t.dtype == tl.float64:
        poly = 1.0 / 15.0 + s2 * (1.0 / 17.0)
        poly = 1.0 / 11.0 + s2 * (1.0 / 13.0 + s2 * poly)
        poly = 1.0 / 7.0 + s2 * (1.0 / 9.0 + s2 * poly)
        poly = 1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * poly)
    else:
        poly = 1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0))
    series = 2.0 * s * (1.0 + s2 * poly)
    return tl.where(small, series, tl.log(1.0 + t))


@triton.jit
def sqrt_exact(x):
    """sqrt(x) correctly rounded (float32 ``tl.sqrt`` may be approximate on the GPU)."""
    if x.dtype == tl.float32:
        return tl.sqrt_rn(x)
    else:
        return tl.sqrt(x)


@triton.jit
def finite(x):
    """x is finite (False for NaN and +-inf)."""
    return tl.abs(x) < float("inf")


@triton.jit
def expm1(z):
    """exp(z) - 1 to the working precision near 0 (Kahan: (u - 1) z / log(u), u = exp(z), with
    u - 1 exact and log(u) = log1p(u - 1)); NaN stays NaN, -inf gives -1."""
    u = tl.exp(z)
    um1 = u - 1.0
    near = (tl.abs(z) < 0.5) & (um1 != 0.0)
    safe = tl.where(near, um1, 1.0)  # (elsewhere no log1p(-1) = log(0), not even untaken)
    r = tl.where(near, safe * z / log1p(safe), um1)
    return tl.where(um1 == 0.0, z, r)


@triton.jit
def pow_from_log(lu, g):
    """u^g from lu = log u: exp(g lu), exact in g for every g in [0, 1e30] when lu is (a u that
    rounds to 1 still has its log). ``pow_nonneg``'s values at the ends: 1 at g = 0 (0^0 = 1,
    NaN^0 = 1), 0 at u = 0 (lu = -inf) for g > 0, inf for g < 0; a negative u (lu NaN) gives NaN
    for g != 0 and 1 at g = 0, as torch.pow."""
    return tl.where(g == 0.0, 1.0, tl.exp(g * lu))


@triton.jit
def log_prob(p, eps):
    """log(p + eps) for a probability p and eps >= 0, accurate near p = 1 as well:
    log1p((p - 1) + eps) for p >= 1/2 (p - 1 is exact there), else log(p + eps)."""
    return tl.where(p >= 0.5, log1p((p - 1.0) + eps), tl.log(p + eps))


@triton.jit
def log_prob_pair(p, q, eps):
    """log(p + eps) for a probability p given with its complement q = 1 - p, each accurate (p =
    sigmoid(s), q = sigmoid(-s) of a logit s), and eps >= 0: log1p(eps - q) for p >= 1/2 (from q,
    not from a p rounded near 1, which loses q's digits: at s = 12, 1e-2 relative in float32),
    else log(p + eps)."""
    return tl.where(p >= 0.5, log1p(eps - q), tl.log(p + eps))


@triton.jit
def softmax_cols(x, cmask):
    """softmax over axis 1 of a [R, C] tile whose columns outside ``cmask`` [C] are padding (a
    row of -inf logits gives NaN, as torch.softmax)."""
    xm = tl.where(cmask[None, :], x, float("-inf"))
    mx = tl.max(xm, axis=1)
    mx = tl.where(mx == float("-inf"), 0.0, mx)
    ex = tl.exp(xm - mx[:, None])
    return ex / tl.sum(ex, axis=1)[:, None]


@triton.jit
def sigmoid(x):
    """1 / (1 + exp(-x)), from e = exp(-|x|) <= 1 (no overflow; accurate tails on both sides)."""
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def logsigmoid(x):
    """log(sigmoid(x)) = min(x, 0) - log(1 + exp(-|x|)), exact for large |x| (as F.logsigmoid)."""
    return tl.minimum(x, 0.0) - log1p(tl.exp(-tl.abs(x)))


@triton.jit
def focal_terms(x, y, alpha, beta, pos_threshold, eps, smoothing, FROM_LOGITS: tl.constexpr):
    """Penalty-reduced focal loss, elementwise: returns (f, df/dx, pos, p, 1 - p).

    pos = Y >= pos_threshold; with label ``smoothing`` e, the Y of the negative weight
    (1 - Y)^beta below is Y (1 - 2 e) + e (exactly Y at e = 0), pos stays on Y
    f = -log(P + eps) (1 - P)^alpha on pos, -log(1 - P + eps) P^alpha (1 - Y)^beta elsewhere
    df/dP = -(1-P)^alpha / (P+eps) + alpha (1-P)^(alpha-1) log(P+eps)                 on pos
    df/dP = (1-Y)^beta [P^alpha / (1-P+eps) - alpha P^(alpha-1) log(1-P+eps)]         elsewhere
    With FROM_LOGITS, P = sigmoid(x), 1 - P = sigmoid(-x) (no cancellation), exact logs
    log P = logsigmoid(x), log(1 - P) = logsigmoid(-x), no eps, and the derivative is in x:
    df/dx = (1-P)^alpha [alpha P log P - (1-P)]           on pos
    df/dx = (1-Y)^beta P^alpha [P - alpha (1-P) log(1-P)]  elsewhere
    """
    pos = y >= pos_threshold
    neg_w = pow_nonneg(1.0 - (y * (1.0 - 2.0 * smoothing) + smoothing), beta)
    if FROM_LOGITS:
        p = sigmoid(x)
        q = sigmoid(-x)
        log_p = logsigmoid(x)
        log_q = logsigmoid(-x)
    else:
        p = x
        q = 1.0 - x
        log_p = log_prob(p, eps)
        # log(1 - p + eps): 1 - p is exact for p >= 1/2; below, eps - p keeps p's digits.
        log_q = tl.where(p > 0.5, tl.log(q + eps), log1p(eps - p))
    q_a = pow_nonneg(q, alpha)
    p_a = pow_nonneg(p, alpha)
    f = tl.where(pos, -log_p * q_a, -log_q * p_a * neg_w)
    if FROM_LOGITS:
        d_pos = q_a * (alpha * p * log_p - q)
        d_neg = neg_w * p_a * (p - alpha * q * log_q)
    else:
        # d(x^alpha)/dx = alpha x^(alpha-1), 0 for alpha = 0 (as torch's pow backward: no 0 * inf
        # at q = 0 or p = 0).
        d_pos = -q_a / (p + eps) + tl.where(
            alpha == 0, 0.0, alpha * pow_nonneg(q, alpha - 1.0) * log_p
        )
        d_neg = neg_w * (
            p_a / (q + eps) - tl.where(alpha == 0, 0.0, alpha * pow_nonneg(p, alpha - 1.0) * log_q)
        )
    return f, tl.where(pos, d_pos, d_neg), pos, p, q


@triton.jit
def smooth_l1_terms(d, beta):
    """(smoothL1(d), smoothL1'(d)): 0.5 d^2 / beta and d / beta if |d| < beta, else |d| - 0.5 beta
    and sign(d) (the linear branch at |d| = beta; beta = 0 is the L1 loss). A NaN d: the loss is
    NaN, and so is the derivative for beta > 0 (the torch backend's clamp(d, -beta, beta) / beta
    and torch's smooth_l1_loss keep it); for beta = 0 it is 0, as torch.sign(NaN) (the torch
    backend's L1 branch and l1_loss)."""
    a = tl.abs(d)
    quad = a < beta
    safe_beta = tl.where(beta > 0, beta, 1.0)
    s = tl.where(quad, 0.5 * d * d / safe_beta, a - 0.5 * beta)
    sign = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))
    lin = tl.where(d != d, tl.where(beta > 0, d, 0.0), sign)
    return s, tl.where(quad, d / safe_beta, lin)


@triton.jit
def cosine_terms(a0, a1, sin_t, cos_t):
    """(1 - c, d(1-c)/da0, d(1-c)/da1) with c = (a0 sin t + a1 cos t) / max(||a||, 1e-12), for a
    head at any scale (||a|| without squaring a: no float32 overflow).

    dc/da = (e - c a / n) / n, e = (sin t, cos t), n = max(||a||, 1e-12); = e / n where ||a|| < 1e-12
    (as torch's clamp_min).
    """
    # ||a|| = m sqrt((a0/m)^2 + (a1/m)^2), m = max |a_i|: no overflow of a0^2 at any scale.
    m = tl.maximum(tl.abs(a0), tl.abs(a1))
    s = tl.where(m > 0, m, 1.0)
    r0 = a0 / s
    r1 = a1 / s
    norm = s * tl.sqrt(r0 * r0 + r1 * r1)
    n = tl.maximum(norm, NORM_EPS)
    c = (a0 * sin_t + a1 * cos_t) / n
    small = norm < NORM_EPS
    g0 = tl.where(small, sin_t / n, (sin_t - c * a0 / n) / n)
    g1 = tl.where(small, cos_t / n, (cos_t - c * a1 / n) / n)
    return 1.0 - c, -g0, -g1


@triton.jit
def grid_coord(x, STRIDE: tl.constexpr):
    """u = x / stride, correctly rounded."""
    return div_exact(x, STRIDE)


@triton.jit
def keep_float64(x, cdt: tl.constexpr):
    """``x`` unchanged when it is float64, else cast to ``cdt`` (per-image scalars such as the
    target angle: float64 math only where the input carries float64 precision)."""
    if x.dtype == tl.float64:
        return x
    else:
        return x.to(cdt)


@triton.jit
def coord_grid(x, STRIDE: tl.constexpr, cdt: tl.constexpr):
    """u = x / stride for a loaded coordinate ``x``: in float64 when ``x`` is float64 (so that
    floor(u) and the offset target see the coordinate unrounded even when the loss computes in
    float32; cast the results with ``.to(cdt)``), else in ``cdt``."""
    if x.dtype == tl.float64:
        return grid_coord(x, STRIDE)
    else:
        return grid_coord(x.to(cdt), STRIDE)


@triton.jit
def label_center(u, CELL: tl.constexpr):
    """The Gaussian's centre on the grid: floor(u) for center="cell", u for "exact"."""
    if CELL:
        return tl.floor(u)
    else:
        return u


@triton.jit
def offset_target(u):
    """Sub-cell offset target u - floor(u) - 0.5."""
    return u - tl.floor(u) - 0.5


@triton.jit
def gaussian(ii, jj, cu, cv, sx, sy):
    """exp(-(i - cv)^2 / (2 sy^2) - (j - cu)^2 / (2 sx^2)) at cell (ii, jj) (grid units)."""
    di = ii - cv
    dj = jj - cu
    return tl.exp(-(di * di) / (2.0 * sy * sy) - (dj * dj) / (2.0 * sx * sx))


@triton.jit
def tent(t):
    """Bilinear (tent) weight max(0, 1 - |t|) of a sample at distance t from a grid point."""
    return tl.maximum(1.0 - tl.abs(t), 0.0)


@triton.jit
def padding_block_sum(ptr, b, ci, cj, s_b, s_h, s_w, on, STRIDE: tl.constexpr, cdt: tl.constexpr):
    """Sum of the full-resolution padding mask over the stride x stride pixel block of cell (ci, cj)
    of image b (mask [B,(1,)H,W], any dtype, strides s_b, s_h, s_w), in dtype ``cdt``."""
    acc = tl.zeros(ci.shape, cdt)
    base = ptr + b.to(tl.int64) * s_b
    row0 = ci.to(tl.int64) * STRIDE
    col0 = cj.to(tl.int64) * STRIDE
    for t in range(0, STRIDE * STRIDE):
        dy = t // STRIDE
        dx = t % STRIDE
        v = tl.load(base + (row0 + dy) * s_h + (col0 + dx) * s_w, mask=on, other=0)
        acc += v.to(cdt)
    return acc


@triton.jit
def cell_weight(
    ptr, b, ci, cj, s_b, s_h, s_w, on, STRIDE: tl.constexpr, MODE: tl.constexpr, cdt: tl.constexpr
):
    """Image weight W of cell (ci, cj) of image b, in dtype ``cdt`` (1 where ``on`` is false).

    MODE 0: no padding, W = 1.
    MODE 1: full-resolution padding mask [B,(1,)H,W] (any dtype, 1 = padding; strides s_b, s_h,
            s_w): W = 1 - mean of the cell's stride x stride block (AvgPool, kernel = stride).
    MODE 2: valid_box [B,4] (x0, y0, x1, y1) pixels (strides s_b, s_w): W = cy * cx with
            cy = max(min(ci s + s, y1) - max(ci s, y0), 0) / s (the same along x), no full-res mask.
    MODE 3: a weight map at grid resolution [B,1,Hf,Wf] (strides s_b, s_h, s_w): W = map[b,ci,cj].
    MODE 4: a map at grid resolution of the padding pixels per cell (``padding_block_sum`` of a
            bool mask, stored as integers): W = 1 - map[b,ci,cj] / stride^2, bit for bit MODE 1.
    """
    one = tl.full(ci.shape, 1.0, cdt)
    if MODE == 0:
        w = one
    elif MODE == 1:
        acc = padding_block_sum(ptr, b, ci, cj, s_b, s_h, s_w, on, STRIDE, cdt)
        w = 1.0 - acc / (STRIDE * STRIDE)
    elif MODE == 2:
        base = ptr + (b.to(tl.int64) * s_b + tl.zeros(ci.shape, tl.int64))
        x0 = tl.load(base, mask=on, other=0).to(cdt)
        y0 = tl.load(base + s_w, mask=on, other=0).to(cdt)
        x1 = tl.load(base + 2 * s_w, mask=on, other=0).to(cdt)
        y1 = tl.load(base + 3 * s_w, mask=on, other=0).to(cdt)
        lo_y = ci.to(cdt) * STRIDE
        lo_x = cj.to(cdt) * STRIDE
        cy = tl.maximum(tl.minimum(lo_y + STRIDE, y1) - tl.maximum(lo_y, y0), 0.0) / STRIDE
        cx = tl.maximum(tl.minimum(lo_x + STRIDE, x1) - tl.maximum(lo_x, x0), 0.0) / STRIDE
        w = cy * cx
    elif MODE == 3:
        off = b.to(tl.int64) * s_b + ci.to(tl.int64) * s_h + cj.to(tl.int64) * s_w
        w = tl.load(ptr + off, mask=on, other=0).to(cdt)
    else:
        off = b.to(tl.int64) * s_b + ci.to(tl.int64) * s_h + cj.to(tl.int64) * s_w
        w = 1.0 - tl.load(ptr + off, mask=on, other=0).to(cdt) / (STRIDE * STRIDE)
    return tl.where(on, w, one)


@triton.jit
def bilinear_sample(
    hm_ptr, b, u, v, s_b, s_h, s_w, H, W, on, SIGMOID: tl.constexpr, cdt: tl.constexpr
):
    """Bilinear sample of map[b] at grid point (u, v), as F.grid_sample(align_corners=True,
    padding_mode="zeros"): sum over the 4 corners (yc, xc) of tent(u - xc) tent(v - yc) map[yc, xc],
    corners off the grid counting 0. With SIGMOID the map holds logits and is sampled as sigmoid.
    """
    x0 = tl.floor(u)
    y0 = tl.floor(v)
    acc = tl.zeros(u.shape, cdt)
    base = hm_ptr + b.to(tl.int64) * s_b
    for dy in tl.static_range(2):
        for dx in tl.static_range(2):
            xc = x0 + dx
            yc = y0 + dy
            inside = on & (xc >= 0) & (xc <= W - 1) & (yc >= 0) & (yc <= H - 1)
            xi = tl.where(inside, xc, 0.0).to(tl.int64)
            yi = tl.where(inside, yc, 0.0).to(tl.int64)
            val = tl.load(base + yi * s_h + xi * s_w, mask=inside, other=0).to(cdt)
            if SIGMOID:
                val = sigmoid(val)
            acc += tl.where(inside, tent(u - xc) * tent(v - yc) * val, 0.0)
    return acc


@triton.jit
def hard_negative_block(
    hm_ptr, s_hm_b, s_hm_h, s_hm_w, pos_ptr, neg_ptr, nmask_ptr, w_ptr, s_w_b, s_w_h, s_w_w,
    coef_ptr, img_ptr, B, K, H, W, margin, STRIDE: tl.constexpr, W_MODE: tl.constexpr,
    HAS_NMASK: tl.constexpr, SIGMOID: tl.constexpr, IMG_STRIDE: tl.constexpr,
    PER_IMAGE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, cdt: tl.constexpr,
):  # fmt: skip
    """Hard-negative margin ranking over the whole batch, in one program.

    s_pos(b), s_k(b) = bilinear samples at the positive and the K negatives (``bilinear_sample``);
    negative k of image b is valid if its mask is set, its cell (floor v, floor u) is on the grid
    and W there (``cell_weight``, mode W_MODE) is > 0; hinge = margin - s_pos + s_k.
    The heatmap [B,1,H,W] and the weight map are strided; the positive [B, 2], the negatives
    [B, K, 2] and their mask [B, K] contiguous (a few numbers: the launchers copy them if needed).
    Returns (sum over valid of relu(hinge), number valid), in a fixed order (deterministic), and
    writes coef [B, 1+K] (row-major at coef_ptr): coef[b, 1+k] = [valid and hinge > 0],
    coef[b, 0] = -sum_k coef[b, 1+k]; dL/dmap = scale * sum_s coef[b, s] tent weights of sample s,
    with scale = 1 / max(count, 1) (applied by the caller). With PER_IMAGE, also each image's
    (sum of relu(hinge), number valid) at img_ptr + b * IMG_STRIDE + (0, 1).
    """
    rows = tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_K)
    marg = as_dtype(margin, cdt)
    acc_loss = tl.zeros([BLOCK_B, BLOCK_K], cdt)
    acc_cnt = tl.zeros([BLOCK_B, BLOCK_K], cdt)
    for b0 in range(0, B, BLOCK_B):
        b = b0 + rows
        b_on = b < B
        b64 = b.to(tl.int64)
        px = tl.load(pos_ptr + 2 * b64, mask=b_on, other=0)
        py = tl.load(pos_ptr + 2 * b64 + 1, mask=b_on, other=0)
        s_pos = bilinear_sample(
            hm_ptr,
            b64,
            coord_grid(px, STRIDE, cdt).to(cdt),
            coord_grid(py, STRIDE, cdt).to(cdt),
            s_hm_b,
            s_hm_h,
            s_hm_w,
            H,
            W,
            b_on,
            SIGMOID,
            cdt,
        )
        n_act = tl.zeros([BLOCK_B], cdt)
        img_loss = tl.zeros([BLOCK_B], cdt)
        img_cnt = tl.zeros([BLOCK_B], cdt)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + cols
            on = b_on[:, None] & (k < K)[None, :]
            b2 = b64[:, None]
            k2 = k[None, :].to(tl.int64)
            nb = neg_ptr + 2 * (b2 * K + k2)
            # The validity cell from the coordinates' own precision (float64 stays float64).
            u = coord_grid(tl.load(nb, mask=on, other=0), STRIDE, cdt)
            v = coord_grid(tl.load(nb + 1, mask=on, other=0), STRIDE, cdt)
            s_neg = bilinear_sample(
                hm_ptr, b2, u.to(cdt), v.to(cdt), s_hm_b, s_hm_h, s_hm_w, H, W, on, SIGMOID, cdt
            )
            cu = tl.floor(u).to(cdt)
            cv = tl.floor(v).to(cdt)
            valid = on & (cu >= 0) & (cu < W) & (cv >= 0) & (cv < H)
            if HAS_NMASK:
                nm = tl.load(nmask_ptr + b2 * K + k2, mask=on, other=0)
                valid = valid & (nm != 0)
            if W_MODE != 0:
                ci = tl.where(valid, cv, 0.0).to(tl.int32)
                cj = tl.where(valid, cu, 0.0).to(tl.int32)
                wc = cell_weight(w_ptr, b2, ci, cj, s_w_b, s_w_h, s_w_w, valid, STRIDE, W_MODE, cdt)
                valid = valid & (wc > 0)
            hinge = marg - s_pos[:, None] + s_neg
            act = valid & (hinge > 0)
            acc_loss += tl.where(act, hinge, 0.0)
            acc_cnt += valid.to(cdt)
            actf = act.to(cdt)
            n_act += tl.sum(actf, axis=1)
            if PER_IMAGE:
                img_loss += tl.sum(tl.where(act, hinge, 0.0), axis=1)
                img_cnt += tl.sum(valid.to(cdt), axis=1)
            tl.store(coef_ptr + b2 * (K + 1) + 1 + k2, actf, mask=on)
        tl.store(coef_ptr + b64 * (K + 1), 0.0 - n_act, mask=b_on)
        if PER_IMAGE:
            tl.store(img_ptr + b64 * IMG_STRIDE, img_loss, mask=b_on)
            tl.store(img_ptr + b64 * IMG_STRIDE + 1, img_cnt, mask=b_on)
    return tl.sum(tl.sum(acc_loss, axis=1), axis=0), tl.sum(tl.sum(acc_cnt, axis=1), axis=0)


@triton.jit
def hard_negative_grad(pos_ptr, neg_ptr, coef_ptr, b, ii, jj, K, STRIDE: tl.constexpr):
    """sum over the 1+K samples s of image b of coef[b, s] * tent(u_s - j) * tent(v_s - i), at the
    cells (ii, jj) (grid-coordinate tensors): the gradient of the samples, without atomics.
    Positive [B, 2] and negatives [B, K, 2] contiguous, as in :func:`hard_negative_block`."""
    cdt: tl.constexpr = ii.dtype
    b64 = b.to(tl.int64)
    row = coef_ptr + b64 * (K + 1)
    px = tl.load(pos_ptr + 2 * b64).to(cdt)
    py = tl.load(pos_ptr + 2 * b64 + 1).to(cdt)
    c0 = tl.load(row).to(cdt)
    g = tent(grid_coord(px, STRIDE) - jj) * tent(grid_coord(py, STRIDE) - ii) * c0
    nb = neg_ptr + 2 * K * b64
    for k in range(0, K):
        nx = tl.load(nb + 2 * k).to(cdt)
        ny = tl.load(nb + 2 * k + 1).to(cdt)
        ck = tl.load(row + 1 + k).to(cdt)
        g += tent(grid_coord(nx, STRIDE) - jj) * tent(grid_coord(ny, STRIDE) - ii) * ck
    return g
