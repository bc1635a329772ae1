"""CASS soft-target loss (docs/spec.md 10): the soft box mask built per tile in registers, the
soft focal (or MSE) loss and its gradient in one pass.

Target (10.2), per image b and patch (k, l) with centre (px, py) = ((l + 1/2) Pw, (k + 1/2) Ph) in
feature cells, over the boxes n with box_mask set, X = x / stride:

    min_size enlargement about (cx, cy); bw, bh; ew = r bw, eh = r bh
    core  = [max(X1,0) <= px <= min(X2,w)] [max(Y1,0) <= py <= min(Y2,h)]
    dil   = the same with X1-ew, X2+ew, Y1-eh, Y2+eh;   ctx = dil and not core
    dx = max(|px-cx| - bw/2, 0), dy likewise;  2 sig^2 by sqrt(bw bh) < small_target_threshold
    anisotropic: nx = dx / max(ew,1), ny = dy / max(eh,1), rho = max(nx,ny),
                 G = exp(-nx^2 / 2sig^2) exp(-ny^2 / 2sig^2)
    circular:    rho = sqrt(dx^2+dy^2) / max(sqrt(ew^2+eh^2), 1), G = exp(-rho^2 / 2sig^2)
    D = G [rho < 1] (gaussian) or max(0, 1 - rho) (linear);   M_n = 1 on core, D on ctx, else 0
    Y = max_n M_n, or min(1, sum_n M_n)

Every factor but G's product and rho splits into a function of the column (x) and one of the row
(y): a box costs two 1-D vectors over the tile's columns and rows and one 2-D combine, and a box
whose dilated box misses the tile is skipped. Box arithmetic runs in the boxes' dtype (float32 or
float64), divisions and square roots correctly rounded, so that a patch centre exactly on a region
edge is decided as PyTorch decides it.

Loss (10.3) with P = sigmoid(s), Q = 1 - P = sigmoid(-s) (``soft_focal_terms``), the powers
Q^a = exp(a logsigmoid(-s)) and P^b = exp(b logsigmoid(s)) (accurate for any exponent, also where
P or Q rounds to 1):

    focal: f = -Y Q^a log(P + eps) - (1 - Y) P^b log(Q + eps)     (eps = 0: exact logsigmoid)
           df/ds = Y (a Q^a P log(P+eps) - Q^(a+1) P / (P+eps))
                 + (1 - Y) (P^(b+1) Q / (Q+eps) - b P^b Q log(Q+eps))
    mse:   f = (P - Y)^2,   df/ds = 2 (P - Y) P Q

Every log and difference is formed from the logit, never from a P (or Q) rounded near 1:
log(P + eps) = log1p(eps - Q) for P >= 1/2 (``primitives.log_prob_pair``), log(Q + eps) likewise,
and P - Y = (1 - Y) - Q for P >= 1/2, so that confident logits (|s| up to 30 and beyond, a batch
of empty images) keep float32's relative accuracy.

``LOG_MODE`` picks how log(P + eps) is evaluated: ``LOG_PLAIN`` (eps >= ``TINY_EPS``: 2^-100 in
float32, 2^-1000 in float64), ``LOG_EXACT`` (eps = 0: logsigmoid), ``LOG_TINY`` (0 < eps <
``TINY_EPS``, where eps may round or flush to 0 and a P below the normal range, flushed to 0, is
not negligible against eps: log(P + eps) = logaddexp(logsigmoid(s), log eps) and P / (P + eps) =
exp(logsigmoid(s) - log(P + eps)); the ``eps`` argument then carries log eps).

A box is in no region when X1, Y1, X2, Y2 (after the min_size enlargement), its centre or its
expansion (ew, eh) is not finite in the box dtype (a NaN or infinite coordinate, or a box so large
that its arithmetic overflows): ``tl.maximum``/``tl.minimum`` would drop the NaN that torch keeps.
The circular rho is evaluated on (dx, dy, ew, eh) divided by a power of two s >= 1 near
max(ew, eh) (exact: the same bits as unscaled wherever that does not overflow), so that a band
wider than 2^64 cells gives no inf / inf.

Launches: forward 2 (``_cass_kernel``: per-program partial sums of f and df/ds stored per patch;
``reduce.ratio_finalize``: the fixed-order sum over B Hp Wp or 1); backward 1 (``_grad_scale_kernel``:
df/ds * (1 / D) * upstream, in the scores' dtype). Nothing of size [B, N, Hp, Wp], no mask at cell
resolution, no Y inside the loss (``cass_target`` writes it on its own, with ``TARGET_ONLY``).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .launch import compute_dtype, f64_bits, launch, mask_view, next_pow2
from .primitives import (
    div_exact,
    finite,
    log1p,
    log_prob_pair,
    logsigmoid,
    option,
    pow_from_log,
    sigmoid,
    sqrt_exact,
)
from .reduce import DEN_NUMEL, DEN_ONE, NUM_PARTIALS, elementwise_block, ratio_finalize

REDUCTIONS = {"mean": DEN_NUMEL, "sum": DEN_ONE}
TILE = 256  # patches per program (a power of two)
LOG_PLAIN, LOG_EXACT, LOG_TINY = 0, 1, 2  # LOG_MODE: how log(P + eps) is evaluated
# eps below which log(P + eps) is evaluated in log space (fused_losses.cass.TINY_EPS)
TINY_EPS = {torch.float32: 2.0**-100, torch.float64: 2.0**-1000}


@triton.jit
def logaddexp(a, b):
    """log(exp(a) + exp(b)) without overflow (b finite)."""
    m = tl.where(a > b, a, b)
    return m + log1p(tl.exp(-tl.abs(a - b)))


@triton.jit
def soft_focal_terms(s, y, alpha, beta, eps, MSE: tl.constexpr, LOG_MODE: tl.constexpr):
    """(f, df/ds) of the soft focal loss (or the MSE loss) at logits s and targets y (module
    docstring); a, b, eps >= 0 (log eps with ``LOG_TINY``), arithmetic in s's dtype."""
    p = sigmoid(s)
    q = sigmoid(-s)
    if MSE:
        # P - Y as (1 - Y) - Q where P >= 1/2 (no P rounded near 1)
        d = tl.where(p >= 0.5, (1.0 - y) - q, p - y)
        f = d * d
        df = 2.0 * d * p * q
    else:
        ls_p = logsigmoid(s)
        ls_q = logsigmoid(-s)
        if LOG_MODE == 1:  # LOG_EXACT
            log_p = ls_p
            log_q = ls_q
            p_ratio = tl.full(s.shape, 1.0, s.dtype)
            q_ratio = tl.full(s.shape, 1.0, s.dtype)
        elif LOG_MODE == 2:  # LOG_TINY: eps holds log eps
            log_p = logaddexp(ls_p, eps)
            log_q = logaddexp(ls_q, eps)
            p_ratio = tl.exp(ls_p - log_p)
            q_ratio = tl.exp(ls_q - log_q)
        else:
            log_p = log_prob_pair(p, q, eps)
            log_q = log_prob_pair(q, p, eps)
            p_ratio = p / (p + eps)
            q_ratio = q / (q + eps)
        q_a = pow_from_log(ls_q, alpha)
        p_b = pow_from_log(ls_p, beta)
        f = -y * q_a * log_p - (1.0 - y) * p_b * log_q
        df = y * (alpha * q_a * p * log_p - q_a * q * p_ratio) + (1.0 - y) * (
            p_b * p * q_ratio - beta * p_b * q * log_q
        )
    return f, df


@triton.jit
def pow2_floor(x):
    """2^floor(log2 x) for a finite x >= 1 (the exponent bits of x)."""
    if x.dtype == tl.float32:
        return (x.to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)
    else:
        bits = x.to(tl.int64, bitcast=True) & 0x7FF0000000000000
        return bits.to(tl.float64, bitcast=True)


@triton.jit
def as_box(v, bdt: tl.constexpr):
    """An int kernel argument as a value of the boxes' dtype."""
    return v + tl.zeros([], bdt)


@triton.jit
def _axis_factors(pc, lo, hi, c, half, e, extent):
    """Per patch centre pc along one axis (the box's [lo, hi], centre c, half width, expansion
    e, map extent): (core, dil, distance to the box)."""
    core = (tl.maximum(lo, 0.0) <= pc) & (pc <= tl.minimum(hi, extent))
    dil = (tl.maximum(lo - e, 0.0) <= pc) & (pc <= tl.minimum(hi + e, extent))
    dist = tl.maximum(tl.abs(pc - c) - half, 0.0)
    return core, dil, dist


@triton.jit(
    do_not_specialize=[
        "stride", "ratio", "min_size", "two_sig2", "two_sig2_small", "threshold", "alpha", "beta",
        "eps",
    ]
)  # fmt: skip
def _cass_kernel(
    s_ptr, box_ptr, bm_ptr, part_ptr, g_ptr, y_ptr,
    N, h, w, Hp, Wp, PH, PW, n_tiles_w, n_tiles, ss_b, ss_h, ss_w,
    stride, ratio, min_size, two_sig2, two_sig2_small, threshold, alpha, beta, eps,
    ANISO: tl.constexpr, LINEAR: tl.constexpr, MERGE_SUM: tl.constexpr, MSE: tl.constexpr,
    LOG_MODE: tl.constexpr, HAS_MASK: tl.constexpr, TARGET_ONLY: tl.constexpr,
    STORE_GRAD: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):  # fmt: skip
    """One program per (image, tile of BLOCK_H x BLOCK_W patches). Builds Y for the tile from the
    boxes [B,N,4] (``bm`` [B,N] which exist), then either writes it to ``y`` ([B,Hp,Wp],
    TARGET_ONLY) or reads the scores (strides ss_*), writes ``part[pid] = (sum f, 0, 0, 0)`` and,
    with STORE_GRAD, df/ds to ``g`` ([B,Hp,Wp] in the compute dtype of ``part``)."""
    bdt: tl.constexpr = box_ptr.dtype.element_ty
    pid = tl.program_id(0)
    b = pid // n_tiles
    t = pid % n_tiles
    k = (t // n_tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H)
    l = (t % n_tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W)
    py = (k.to(bdt) + 0.5) * PH
    px = (l.to(bdt) + 0.5) * PW
    py_lo = tl.min(py, axis=0)
    py_hi = tl.max(py, axis=0)
    px_lo = tl.min(px, axis=0)
    px_hi = tl.max(px, axis=0)
    stride_b = option(stride, bdt)
    r = option(ratio, bdt)
    half_min = option(min_size, bdt) * 0.5
    wf = as_box(w, bdt)
    hf = as_box(h, bdt)
    y = tl.zeros([BLOCK_H, BLOCK_W], bdt)
    for n in range(N):
        row = (b * N + n).to(tl.int64)
        keep = tl.full([], 1, tl.int1)
        if HAS_MASK:
            keep = tl.load(bm_ptr + row) != 0
        x1 = div_exact(tl.load(box_ptr + row * 4).to(bdt), stride_b)
        y1 = div_exact(tl.load(box_ptr + row * 4 + 1).to(bdt), stride_b)
        x2 = div_exact(tl.load(box_ptr + row * 4 + 2).to(bdt), stride_b)
        y2 = div_exact(tl.load(box_ptr + row * 4 + 3).to(bdt), stride_b)
        cx = (x1 + x2) * 0.5
        cy = (y1 + y2) * 0.5
        thin_x = x2 - x1 < half_min * 2.0
        x1 = tl.where(thin_x, cx - half_min, x1)
        x2 = tl.where(thin_x, cx + half_min, x2)
        thin_y = y2 - y1 < half_min * 2.0
        y1 = tl.where(thin_y, cy - half_min, y1)
        y2 = tl.where(thin_y, cy + half_min, y2)
        bw = x2 - x1
        bh = y2 - y1
        ew = r * bw
        eh = r * bh
        # a box whose arithmetic is not finite (a NaN or infinite coordinate, or an overflow) is
        # in no region (module docstring), and a box whose dilated box misses the tile is skipped
        keep = keep & finite(x1) & finite(y1) & finite(x2) & finite(y2)
        keep = keep & finite(cx) & finite(cy) & finite(ew) & finite(eh)
        hit_x = (tl.maximum(x1 - ew, 0.0) <= px_hi) & (px_lo <= tl.minimum(x2 + ew, wf))
        hit_y = (tl.maximum(y1 - eh, 0.0) <= py_hi) & (py_lo <= tl.minimum(y2 + eh, hf))
        if keep & hit_x & hit_y:
            core_x, dil_x, dx = _axis_factors(px, x1, x2, cx, bw * 0.5, ew, wf)
            core_y, dil_y, dy = _axis_factors(py, y1, y2, cy, bh * 0.5, eh, hf)
            small = sqrt_exact(bw * bh) < option(threshold, bdt)
            t2 = tl.where(small, option(two_sig2_small, bdt), option(two_sig2, bdt))
            if ANISO:
                nx = div_exact(dx, tl.maximum(ew, 1.0) + tl.zeros_like(dx))
                ny = div_exact(dy, tl.maximum(eh, 1.0) + tl.zeros_like(dy))
                rho = tl.maximum(ny[:, None], nx[None, :])
                gx = tl.exp(-(nx * nx) / t2)
                gy = tl.exp(-(ny * ny) / t2)
                g = gy[:, None] * gx[None, :]
            else:
                # everything divided by the power of two sc (exact): no overflow of the squares
                sc = pow2_floor(tl.maximum(tl.maximum(ew, eh), 1.0))
                dxs = div_exact(dx, sc + tl.zeros_like(dx))
                dys = div_exact(dy, sc + tl.zeros_like(dy))
                ews = div_exact(ew, sc)
                ehs = div_exact(eh, sc)
                d2 = dys[:, None] * dys[:, None] + dxs[None, :] * dxs[None, :]
                norm = tl.maximum(
                    sqrt_exact(ews * ews + ehs * ehs), div_exact(tl.full([], 1.0, bdt), sc)
                )
                rho = div_exact(sqrt_exact(d2), norm + tl.zeros_like(d2))
                g = tl.exp(-(rho * rho) / t2)
            if LINEAR:
                dec = tl.maximum(1.0 - rho, 0.0)
            else:
                dec = tl.where(rho < 1.0, g, 0.0)
            core = core_y[:, None] & core_x[None, :]
            dil = dil_y[:, None] & dil_x[None, :]
            m = tl.where(core, 1.0, tl.where(dil, dec, 0.0))
            if MERGE_SUM:
                y += m
            else:
                y = tl.maximum(y, m)
    if MERGE_SUM:
        y = tl.minimum(y, 1.0)
    on = (k < Hp)[:, None] & (l < Wp)[None, :]
    flat = b.to(tl.int64) * Hp * Wp + (k * Wp)[:, None] + l[None, :]
    if TARGET_ONLY:
        tl.store(y_ptr + flat, y.to(y_ptr.dtype.element_ty), mask=on)
    else:
        cdt: tl.constexpr = part_ptr.dtype.element_ty
        offs = b.to(tl.int64) * ss_b + (k.to(tl.int64) * ss_h)[:, None]
        offs += (l.to(tl.int64) * ss_w)[None, :]
        s = tl.load(s_ptr + offs, mask=on, other=0).to(cdt)
        f, df = soft_focal_terms(
            s, y.to(cdt), option(alpha, cdt), option(beta, cdt), option(eps, cdt), MSE, LOG_MODE
        )
        out = part_ptr + pid * 4
        tl.store(out, tl.sum(tl.sum(tl.where(on, f, 0.0), axis=1), axis=0))
        tl.store(out + 1, tl.zeros([], cdt))
        tl.store(out + 2, tl.zeros([], cdt))
        tl.store(out + 3, tl.zeros([], cdt))
        if STORE_GRAD:
            tl.store(g_ptr + flat, df, mask=on)


@triton.jit(do_not_specialize=["alpha", "beta", "eps"])
def _soft_focal_kernel(
    s_ptr, y_ptr, part_ptr, g_ptr, numel, alpha, beta, eps,
    MSE: tl.constexpr, LOG_MODE: tl.constexpr, STORE_GRAD: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """BLOCK elements of the flat logits and targets: ``part[pid] = (sum f, 0, 0, 0)`` and, with
    STORE_GRAD, df/ds to ``g`` (flat, in the compute dtype of ``part``)."""
    cdt: tl.constexpr = part_ptr.dtype.element_ty
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    on = idx < numel
    s = tl.load(s_ptr + idx, mask=on, other=0).to(cdt)
    y = tl.load(y_ptr + idx, mask=on, other=0).to(cdt)
    f, df = soft_focal_terms(
        s, y, option(alpha, cdt), option(beta, cdt), option(eps, cdt), MSE, LOG_MODE
    )
    out = part_ptr + tl.program_id(0) * 4
    tl.store(out, tl.sum(tl.where(on, f, 0.0), axis=0))
    tl.store(out + 1, tl.zeros([], cdt))
    tl.store(out + 2, tl.zeros([], cdt))
    tl.store(out + 3, tl.zeros([], cdt))
    if STORE_GRAD:
        tl.store(g_ptr + idx, df, mask=on)


@triton.jit
def _grad_scale_kernel(g_ptr, aux_ptr, go_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    """out = g * aux[0] * go[0] in out's dtype (the stored df/ds times 1/D and the upstream)."""
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    on = idx < numel
    g = tl.load(g_ptr + idx, mask=on, other=0)
    scale = tl.load(aux_ptr) * tl.load(go_ptr).to(g.dtype)
    tl.store(out_ptr + idx, (g * scale).to(out_ptr.dtype.element_ty), mask=on)


# ----------------------------------------------------------------------------------- launchers


def patch_grid(feat_size, patch_size: int) -> tuple[int, int, int, int]:
    """(Ph, Pw, Hp, Wp): cells per patch and patch counts (docs/spec.md 10.2)."""
    h, w = feat_size
    ph, pw = min(patch_size, h), min(patch_size, w)
    return ph, pw, -(-h // ph), -(-w // pw)


def box_dtype(boxes: torch.Tensor) -> torch.dtype:
    """The dtype of the box arithmetic: float64 for float64 boxes, else float32."""
    return torch.float64 if boxes.dtype == torch.float64 else torch.float32


def log_mode(eps: float, cdt: torch.dtype) -> tuple[int, float]:
    """(LOG_MODE, the value the kernels receive as ``eps``) for arithmetic in ``cdt``: eps = 0 is
    exact; 0 < eps < ``TINY_EPS`` is ``LOG_TINY``, passed as log eps (eps may round or flush to
    0, and P below the normal range, flushed, is no longer negligible against eps)."""
    if eps == 0:
        return LOG_EXACT, 0.0
    if eps < TINY_EPS[cdt]:
        return LOG_TINY, math.log(eps)
    return LOG_PLAIN, eps


def _tiles(hp: int, wp: int) -> tuple[int, int]:
    block_w = min(next_pow2(wp), TILE)
    return min(next_pow2(hp), max(TILE // block_w, 1)), block_w


def _target_args(boxes, box_mask, feat_size, opts: dict) -> tuple:
    """The box and option arguments shared by every ``_cass_kernel`` launch."""
    boxes = boxes.detach().to(box_dtype(boxes)).contiguous()
    mask = mask_view(box_mask.detach()).contiguous() if box_mask is not None else boxes
    base, gain = opts["base_sigma"], opts["small_target_gain"]
    floats = (
        opts["stride"], opts["expansion_ratio"], opts["min_size"], 2.0 * base**2,
        2.0 * (base * gain) ** 2, opts["small_target_threshold"],
    )  # fmt: skip
    consts = dict(
        ANISO=bool(opts["anisotropic"]),
        LINEAR=opts["decay"] == "linear",
        MERGE_SUM=opts["merge"] == "sum",
        HAS_MASK=box_mask is not None,
    )
    return boxes, mask, [f64_bits(v) for v in floats], consts


def _launch(scores, boxes, box_mask, feat_size, opts, part, grad, y, store_grad) -> None:
    b, n = boxes.shape[0], boxes.shape[1]
    h, w = feat_size
    ph, pw, hp, wp = patch_grid(feat_size, opts["patch_size"])
    block_h, block_w = _tiles(hp, wp)
    tiles_w = triton.cdiv(wp, block_w)
    n_tiles = triton.cdiv(hp, block_h) * tiles_w
    boxes, mask, floats, consts = _target_args(boxes, box_mask, feat_size, opts)
    if scores is not None:
        s = scores.reshape(b, hp, wp) if scores.dim() == 2 else scores[:, 0]
        strides = s.stride()
    else:
        s, strides = boxes, (0, 0, 0)
    mode, eps = log_mode(opts.get("eps", 1.0), part.dtype)
    loss_opts = [f64_bits(opts.get(k, 0.0)) for k in ("alpha", "beta")] + [f64_bits(eps)]
    if b * n_tiles == 0:
        return
    launch(
        _cass_kernel, (b * n_tiles,),
        s, boxes, mask, part, grad, y,
        n, h, w, hp, wp, ph, pw, tiles_w, n_tiles, *strides, *floats, *loss_opts,
        **consts, MSE=opts.get("loss") == "mse", LOG_MODE=mode,
        TARGET_ONLY=y is not None, STORE_GRAD=store_grad, BLOCK_H=block_h, BLOCK_W=block_w,
        num_warps=4,
        enable_fp_fusion=False,  # no FMA: region edges (x2 + r bw) must round like PyTorch
    )  # fmt: skip


def cass_target(boxes, box_mask, feat_size, **opts) -> torch.Tensor:
    """Y [B,1,Hp,Wp] (float32; float64 for float64 boxes), one launch."""
    b = boxes.shape[0]
    _, _, hp, wp = patch_grid(feat_size, opts["patch_size"])
    y = torch.empty(b, 1, hp, wp, dtype=box_dtype(boxes), device=boxes.device)
    _launch(None, boxes, box_mask, feat_size, opts, y, y, y, False)
    return y


def n_programs(batch: int, feat_size, patch_size: int) -> int:
    _, _, hp, wp = patch_grid(feat_size, patch_size)
    block_h, block_w = _tiles(hp, wp)
    return batch * triton.cdiv(hp, block_h) * triton.cdiv(wp, block_w)


def cass_forward(
    scores, boxes, box_mask, feat_size, sync=None, *, need_grad=True, **opts
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, aux [1] = 1/D, df/ds [B,Hp,Wp] or empty) in 2 launches. ``sync``: data parallel
    (``reduce.ratio_finalize``)."""
    b = scores.shape[0]
    _, _, hp, wp = patch_grid(feat_size, opts["patch_size"])
    cdt = compute_dtype(scores)
    # every program writes its whole row: no fill launch
    part = torch.empty(n_programs(b, feat_size, opts["patch_size"]), NUM_PARTIALS, dtype=cdt,
                       device=scores.device)  # fmt: skip
    grad = torch.empty((b, hp, wp) if need_grad else 0, dtype=cdt, device=scores.device)
    _launch(scores, boxes, box_mask, feat_size, opts, part, grad if need_grad else part, None,
            need_grad)  # fmt: skip
    numel = b * hp * wp
    loss, aux = ratio_finalize(
        part, REDUCTIONS[opts["reduction"]], 0.0, numel if sync is not None else max(numel, 1), sync
    )
    return loss, aux, grad


def soft_focal_forward(
    logits, target, sync=None, *, need_grad=True, **opts
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, aux [1] = 1/D, df/ds flat or empty) of the soft focal loss, 2 launches."""
    s = logits.reshape(-1).contiguous()  # (reshape keeps a 1-D strided view: indexed flat)
    y = target.reshape(-1).contiguous()
    n = s.numel()
    block, warps = elementwise_block(n)
    nprog = max(triton.cdiv(n, block), 1)
    cdt = compute_dtype(logits)
    alloc = torch.empty if n else torch.zeros  # no launch for an empty input: one zero row
    part = alloc(nprog, NUM_PARTIALS, dtype=cdt, device=logits.device)
    grad = torch.empty(n if need_grad else 0, dtype=cdt, device=logits.device)
    if n:
        mode, eps = log_mode(opts["eps"], cdt)
        launch(
            _soft_focal_kernel, (nprog,), s, mask_view(y), part, grad if need_grad else part, n,
            f64_bits(opts["alpha"]), f64_bits(opts["beta"]), f64_bits(eps),
            MSE=False, LOG_MODE=mode, STORE_GRAD=need_grad, BLOCK=block,
            num_warps=warps,
        )  # fmt: skip
    loss, aux = ratio_finalize(
        part, REDUCTIONS[opts["reduction"]], 0.0, n if sync is not None else max(n, 1), sync
    )
    return loss, aux, grad


def scaled_gradient(grad_loss, aux, stored, like: torch.Tensor) -> torch.Tensor:
    """d loss / d input = stored df/ds * aux[0] * upstream, shaped and typed like ``like``
    (1 launch)."""
    out = torch.empty(like.shape, dtype=like.dtype, device=like.device)
    n = out.numel()
    if n:
        block = 1024
        launch(_grad_scale_kernel, (triton.cdiv(n, block),), stored, aux, grad_loss, out, n,
               BLOCK=block, num_warps=4)  # fmt: skip
    return out
