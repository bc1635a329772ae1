"""Triton kernels of the CenterNet family: gathered L1 regression, its scatter, ctdet targets.

Launchers (no autograd; the glue is in ``fused_losses/centernet.py``):

* :func:`gather_feat_launch` ``feat [B,C,H,W], ind [B,M] -> [B,M,C]``: one strided gather, no NHWC
  copy of ``feat``.
* :func:`reg_l1_launch`: RegL1Loss / RegWeightedL1Loss forward in 2 launches. Grid
  ``(B, cdiv(M, BLOCK_M))``: each program gathers its slice of ``pred`` straight from ``output``
  (any strides), writes the partials ``(sum |pred m - target m|, sum m)`` of its slice and, when a
  gradient is needed, the per-entry derivative ``sign(d) m`` [B,M,C]; ``reduce.ratio_finalize`` sums
  the partials in a fixed order (no float atomics) and divides by ``sum m + 1e-4``. A mask [B,M] is
  read with channel stride 0, which counts it once per channel, like CenterNet's ``expand_as``.
* :func:`scatter_rows_launch`: the backward, ``grad[b, c, p] = scale * sum_{m: ind[b,m] = p}
  g[b, m, c]``. Duplicate indices must accumulate and the result must not depend on scheduling, so
  the kernel is owner-computes: grid ``(B, cdiv(H*W, BLOCK_HW), cdiv(C, BLOCK_C))``, each program
  owns a tile of output cells and loops over the image's M entries in order, adding an entry only
  when its index falls in the tile (a scalar branch, so the vector work is proportional to the hits).
  Every cell is written exactly once (zeros included): no atomics, no zero-fill, no sort.
* :func:`centernet_targets_launch`: ``hm``, ``wh``, ``reg``, ``ind``, ``reg_mask`` of a whole batch in
  one launch. Grid ``(B * num_classes, cdiv(H*W, BLOCK))``: the program of (image b, class c, tile)
  loops over the image's N boxes, skips (scalar branches) those of another class, masked or empty,
  or whose window misses the tile, and max-merges the Gaussian of the others in registers; the
  tile is stored once. The program of (b, class 0, tile 0) also writes the per-box outputs of
  image b. Box geometry follows ctdet.py in the boxes' precision (float32, float64 for float64
  boxes); the radius (``gaussian_radius``, min_overlap 0.7) and the Gaussian values in float64, as
  CenterNet's numpy code does, then rounded into ``hm``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import compute_dtype, f64_bits, interpreting, launch, mask_view, next_pow2
from .primitives import as_dtype, focal_terms, option, smooth_l1_terms
from .reduce import DEN_EPS, NUM_PARTIALS, ratio_finalize

_CONSTS: dict[tuple[torch.device, float], torch.Tensor] = {}


def _radius_consts(device: torch.device, min_overlap: float) -> torch.Tensor:
    """float64 constants of gaussian_radius(det_size, min_overlap), as Python evaluates them
    (kernel float arguments would be rounded to float32). Built once per device and overlap; the
    copy is stream-ordered (no host sync)."""
    t = _CONSTS.get((device, min_overlap))
    if t is None:
        ov = min_overlap
        vals = [1 - ov, 1 + ov, 4 * (4 * ov), -2 * ov, ov - 1]
        t = torch.tensor(vals, dtype=torch.float64).to(device)
        _CONSTS[(device, min_overlap)] = t
    return t


# ----------------------------------------------------------------------------------------------
# Gathered L1 regression and its scatter.


@triton.jit
def _gather_feat_kernel(
    feat_ptr,
    s_fb,
    s_fc,
    s_fh,
    s_fw,
    ind_ptr,
    s_ib,
    s_im,
    out_ptr,
    M,
    C,
    W,
    HW,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """out[b, m, c] = feat[b, c, ind // W, ind % W] (0 for an index outside [0, H*W))."""
    b = tl.program_id(0).to(tl.int64)
    ms = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    on_m = ms < M
    idx = tl.load(ind_ptr + b * s_ib + ms * s_im, mask=on_m, other=0).to(tl.int64)
    ok = on_m & (idx >= 0) & (idx < HW)
    row, col = idx // W, idx % W
    on = ok[:, None] & (cs < C)[None, :]
    src = feat_ptr + b * s_fb + cs[None, :] * s_fc + (row * s_fh + col * s_fw)[:, None]
    v = tl.load(src, mask=on, other=0)
    dst = out_ptr + (b * M + ms)[:, None] * C + cs[None, :]
    tl.store(dst, v, mask=on_m[:, None] & (cs < C)[None, :])


@triton.jit
def _reg_l1_forward_kernel(
    out_ptr,
    s_ob,
    s_oc,
    s_oh,
    s_ow,
    mask_ptr,
    s_mb,
    s_mm,
    s_mc,
    ind_ptr,
    s_ib,
    s_im,
    tgt_ptr,
    s_tb,
    s_tm,
    s_tc,
    part_ptr,
    g_ptr,
    M,
    C,
    W,
    HW,
    NEED_GRAD: tl.constexpr,
    SMOOTH: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """partials[pid] = (sum |p m - t m|, sum m, 0, 0) over the program's [BLOCK_M, C] slice;
    g[b, m, c] = sign((p - t) m) m (the derivative before the 1 / D scale). SMOOTH (CenterNet's
    RegLoss): smoothL1 with beta 1 instead of |.|, its derivative clamp(d, -1, 1) m instead of
    the sign, and the mask [B,M] counted once per object (channel 0 only), not per channel."""
    cdt: tl.constexpr = part_ptr.dtype.element_ty
    b = tl.program_id(0).to(tl.int64)
    pm = tl.program_id(1)
    pid = b * tl.num_programs(1) + pm
    ms = pm * BLOCK_M + tl.arange(0, BLOCK_M)
    on_m = ms < M
    idx = tl.load(ind_ptr + b * s_ib + ms * s_im, mask=on_m, other=0).to(tl.int64)
    ok = on_m & (idx >= 0) & (idx < HW)
    row, col = idx // W, idx % W
    pix = (row * s_oh + col * s_ow)[:, None]
    acc_l = tl.zeros([BLOCK_M, BLOCK_C], cdt)
    acc_m = tl.zeros([BLOCK_M, BLOCK_C], cdt)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        on = on_m[:, None] & (cs < C)[None, :]
        p = tl.load(out_ptr + b * s_ob + cs[None, :] * s_oc + pix, mask=on & ok[:, None], other=0)
        t = tl.load(tgt_ptr + b * s_tb + ms[:, None] * s_tm + cs[None, :] * s_tc, mask=on, other=0)
        mk = tl.load(
            mask_ptr + b * s_mb + ms[:, None] * s_mm + cs[None, :] * s_mc, mask=on, other=0
        )
        mk = mk.to(cdt)
        # (p - t) m, not p m - t m: the compiler may contract the latter into an fma, whose
        # sign at p == t is the rounding error of t m (the subgradient there must be 0).
        d = (p.to(cdt) - t.to(cdt)) * mk
        if SMOOTH:
            sl1, dsl1 = smooth_l1_terms(d, 1.0)
            acc_l += sl1
            acc_m += tl.where((cs == 0)[None, :], mk, 0.0)
        else:
            acc_l += tl.abs(d)
            acc_m += mk
        if NEED_GRAD:
            if SMOOTH:
                g = dsl1 * mk
            else:
                g = tl.where(d > 0, mk, tl.where(d < 0, -mk, 0.0))
            tl.store(g_ptr + (b * M + ms)[:, None] * C + cs[None, :], g, mask=on)
    out = part_ptr + pid * 4
    tl.store(out, tl.sum(tl.sum(acc_l, axis=1), axis=0))
    tl.store(out + 1, tl.sum(tl.sum(acc_m, axis=1), axis=0))
    tl.store(out + 2, tl.zeros([], cdt))
    tl.store(out + 3, tl.zeros([], cdt))


@triton.jit
def _scatter_rows_kernel(
    g_ptr,
    s_gb,
    s_gm,
    s_gc,
    ind_ptr,
    s_ib,
    s_im,
    go_ptr,
    aux_ptr,
    grad_ptr,
    M,
    C,
    HW,
    HAS_SCALE: tl.constexpr,
    ACC_F64: tl.constexpr,
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """grad[b, c, p] = scale * sum over m in order of g[b, m, c] [ind[b, m] == p]."""
    b = tl.program_id(0).to(tl.int64)
    lo = tl.program_id(1).to(tl.int64) * BLOCK_HW
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    on_c = cs < C
    ps = lo + tl.arange(0, BLOCK_HW)
    if ACC_F64:
        acc = tl.zeros([BLOCK_C, BLOCK_HW], tl.float64)
    else:
        acc = tl.zeros([BLOCK_C, BLOCK_HW], tl.float32)
    for m in range(M):
        idx = tl.load(ind_ptr + b * s_ib + m * s_im).to(tl.int64)
        if (idx >= lo) & (idx < lo + BLOCK_HW):
            g = tl.load(g_ptr + b * s_gb + m * s_gm + cs * s_gc, mask=on_c, other=0)
            acc += tl.where(ps[None, :] == idx, g.to(acc.dtype)[:, None], 0.0)
    if HAS_SCALE:
        scale = tl.load(go_ptr).to(acc.dtype) * tl.load(aux_ptr).to(acc.dtype)
        acc = acc * scale
    dst = grad_ptr + (b * C + cs)[:, None] * HW + ps[None, :]
    tl.store(dst, acc, mask=on_c[:, None] & (ps < HW)[None, :])


def _c_block(c: int) -> int:
    return min(next_pow2(c), 16)


def gather_feat_launch(feat: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
    """feat [B,C,H,W], ind [B,M] -> [B,M,C] contiguous, feat's dtype (1 launch)."""
    b, c, h, w = feat.shape
    m = ind.shape[1]
    out = torch.empty(b, m, c, dtype=feat.dtype, device=feat.device)
    if out.numel() == 0:
        return out
    block_c = _c_block(c)
    block_m = max(16, min(next_pow2(m), 4096 // block_c))
    grid = (b, triton.cdiv(m, block_m), triton.cdiv(c, block_c))
    launch(
        _gather_feat_kernel,
        grid,
        feat,
        *feat.stride(),
        ind,
        *ind.stride(),
        out,
        m,
        c,
        w,
        h * w,
        BLOCK_M=block_m,
        BLOCK_C=block_c,
    )
    return out


def reg_l1_launch(
    output: torch.Tensor,
    mask: torch.Tensor,
    ind: torch.Tensor,
    target: torch.Tensor,
    weighted: bool,
    need_grad: bool,
    eps: float,
    sync=None,
    smooth: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss 0-dim, aux [1] = 1 / (sum m + eps), g [B,M,C] or an empty tensor) in 2 launches
    (CenterNet: eps = 1e-4; ``sync``: see ``reduce.ratio_finalize``; ``smooth``: RegLoss, the
    smooth-L1 loss over the number of objects)."""
    b, c, h, w = output.shape
    m = ind.shape[1]
    cdt = compute_dtype(output)
    mask = mask_view(mask)
    s_mb, s_mm = mask.stride()[:2]
    s_mc = mask.stride(2) if weighted else 0  # [B,M] mask: once per channel
    block_c = _c_block(c)
    block_m = max(16, min(next_pow2(m), 2048 // block_c))
    n_m = max(triton.cdiv(m, block_m), 1)
    partials = torch.empty(b * n_m, NUM_PARTIALS, dtype=cdt, device=output.device)
    g = torch.empty((b, m, c) if need_grad else (0,), dtype=cdt, device=output.device)
    if b > 0:
        launch(
            _reg_l1_forward_kernel,
            (b, n_m),
            output,
            *output.stride(),
            mask,
            s_mb,
            s_mm,
            s_mc,
            ind,
            *ind.stride(),
            target,
            *target.stride(),
            partials,
            g,
            m,
            c,
            w,
            h * w,
            NEED_GRAD=bool(need_grad),
            SMOOTH=bool(smooth),
            BLOCK_M=block_m,
            BLOCK_C=block_c,
        )
    loss, aux = ratio_finalize(partials, DEN_EPS, eps, 0, sync)
    return loss, aux, g


def scatter_rows_launch(
    g: torch.Tensor,
    ind: torch.Tensor,
    shape: torch.Size,
    dtype: torch.dtype,
    *,
    scale: torch.Tensor | None = None,
    denom: torch.Tensor | None = None,
) -> torch.Tensor:
    """grad [B,C,H,W] (contiguous, ``dtype``) with grad[b, c, y*W + x] = scale * denom[0] *
    sum_{m: ind[b,m] = y*W + x} g[b, m, c] (1 launch; ``denom`` is the 1 / D of the forward)."""
    b, c, h, w = shape
    m = ind.shape[1]
    grad = torch.empty(shape, dtype=dtype, device=g.device)
    if grad.numel() == 0:
        return grad
    block_c = _c_block(c)
    block_hw = max(16, min(next_pow2(h * w), 4096 // block_c))
    grid = (b, triton.cdiv(h * w, block_hw), triton.cdiv(c, block_c))
    has_scale = scale is not None
    launch(
        _scatter_rows_kernel,
        grid,
        g,
        *g.stride(),
        ind,
        *ind.stride(),
        scale if has_scale else g,
        denom if has_scale else g,
        grad,
        m,
        c,
        h * w,
        HAS_SCALE=has_scale,
        ACC_F64=g.dtype == torch.float64,
        BLOCK_HW=block_hw,
        BLOCK_C=block_c,
    )
    return grad


# ----------------------------------------------------------------------------------------------
# ctdet targets.


@triton.jit
def _box_geometry(x1, y1, x2, y2, down_ratio, Hm, Wm, k_ptr, cdt: tl.constexpr):
    """ctdet.py's per-box quantities (boxes already in ``cdt``; scalars or blocks):
    (keep h > 0 and w > 0, centre (cx, cy), integer centre (cxi, cyi), w, h, radius). A box with
    a NaN coordinate is dropped, as by the torch backend (whose clip keeps the NaN: tl.maximum
    and tl.minimum would drop it instead)."""
    not_nan = (x1 == x1) & (y1 == y1) & (x2 == x2) & (y2 == y2)
    dr = as_dtype(down_ratio, cdt)
    if cdt == tl.float32:
        x1, y1 = tl.math.div_rn(x1, dr), tl.math.div_rn(y1, dr)
        x2, y2 = tl.math.div_rn(x2, dr), tl.math.div_rn(y2, dr)
    else:
        x1, y1, x2, y2 = x1 / dr, y1 / dr, x2 / dr, y2 / dr
    zero = tl.zeros([], cdt)
    wmax, hmax = as_dtype(Wm - 1, cdt), as_dtype(Hm - 1, cdt)
    x1 = tl.minimum(tl.maximum(x1, zero), wmax)  # np.clip(v, 0, W - 1)
    x2 = tl.minimum(tl.maximum(x2, zero), wmax)
    y1 = tl.minimum(tl.maximum(y1, zero), hmax)
    y2 = tl.minimum(tl.maximum(y2, zero), hmax)
    h = y2 - y1
    w = x2 - x1
    keep = (h > 0) & (w > 0) & not_nan
    cx = (x1 + x2) * 0.5
    cy = (y1 + y2) * 0.5
    cxi = cx.to(tl.int32)  # ct.astype(np.int32): truncation, ct >= 0
    cyi = cy.to(tl.int32)
    # math.ceil of h and w (exact in the box dtype), then CenterNet's gaussian_radius in float64.
    hi = h.to(tl.int32)
    wi = w.to(tl.int32)
    hc = (hi + (hi.to(cdt) < h).to(tl.int32)).to(tl.float64)
    wc = (wi + (wi.to(cdt) < w).to(tl.int32)).to(tl.float64)
    hc = tl.where(keep, hc, 1.0)
    wc = tl.where(keep, wc, 1.0)
    om = tl.load(k_ptr)  # 1 - min_overlap
    op = tl.load(k_ptr + 1)  # 1 + min_overlap
    a3x4 = tl.load(k_ptr + 2)  # 4 * a3
    b3f = tl.load(k_ptr + 3)  # -2 * min_overlap
    ovm1 = tl.load(k_ptr + 4)  # min_overlap - 1
    b1 = hc + wc
    c1 = wc * hc * om / op
    r1 = (b1 + tl.sqrt(b1 * b1 - 4.0 * c1)) * 0.5
    b2 = 2.0 * (hc + wc)
    c2 = om * wc * hc
    r2 = (b2 + tl.sqrt(b2 * b2 - 16.0 * c2)) * 0.5
    b3 = b3f * (hc + wc)
    c3 = ovm1 * wc * hc
    r3 = (b3 + tl.sqrt(b3 * b3 - a3x4 * c3)) * 0.5
    r = tl.minimum(tl.minimum(r1, r2), r3)
    radius = tl.maximum(r.to(tl.int32), 0)  # max(0, int(radius))
    return keep, cx, cy, cxi, cyi, w, h, radius


@triton.jit
def _class_heatmap(
    box_ptr, s_bb, s_bn, s_bk, lab_ptr, s_lb, s_ln, msk_ptr, s_mb, s_mn, k_ptr, N, C, Hm, Wm,
    down_ratio, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr, cdt: tl.constexpr,
):  # fmt: skip
    """ctdet's hm on this program's tile, grid (B * C, cdiv(H*W, BLOCK)): (b, c, tile, cells,
    on, Gaussian max) for image b, class c.

    Loops over the image's N boxes, skips (scalar branches) those of another class, masked or
    empty, or whose window misses the tile, and max-merges the others' Gaussians in registers."""
    pid = tl.program_id(0)
    tile = tl.program_id(1)
    b = (pid // C).to(tl.int64)
    c = pid % C
    HW = Hm * Wm
    lo = tile * BLOCK
    ps = lo + tl.arange(0, BLOCK)
    on = ps < HW
    row = ps // Wm
    col = ps % Wm
    row_lo = lo // Wm
    row_hi = tl.minimum(lo + BLOCK - 1, HW - 1) // Wm
    bp = box_ptr + b * s_bb
    acc = tl.zeros([BLOCK], cdt)
    for n in range(N):
        lab = tl.load(lab_ptr + b * s_lb + n * s_ln)
        live = lab == c
        if HAS_MASK:
            live = live & (tl.load(msk_ptr + b * s_mb + n * s_mn) != 0)
        if live:
            keep, _cx, _cy, cxi, cyi, _w, _h, r = _box_geometry(
                tl.load(bp + n * s_bn).to(cdt),
                tl.load(bp + n * s_bn + s_bk).to(cdt),
                tl.load(bp + n * s_bn + 2 * s_bk).to(cdt),
                tl.load(bp + n * s_bn + 3 * s_bk).to(cdt),
                down_ratio,
                Hm,
                Wm,
                k_ptr,
                cdt,
            )
            if keep & (cyi - r <= row_hi) & (cyi + r >= row_lo):
                dx = col - cxi
                dy = row - cyi
                win = (tl.abs(dx) <= r) & (tl.abs(dy) <= r)
                # gaussian2D: exp(-(x^2 + y^2) / (2 sigma^2)), sigma = diameter / 6, in float64.
                # Its "h < eps * max -> 0" never fires: the exponent is below 36 r^2/(2r+1)^2 < 9.
                sigma = (2 * r + 1).to(tl.float64) / 6.0
                two_ss = 2.0 * sigma * sigma
                g = tl.exp(-(dx * dx + dy * dy).to(tl.float64) / two_ss)
                acc = tl.maximum(acc, tl.where(win, g, 0.0).to(cdt))
    return b, c, tile, ps, on, acc


@triton.jit
def _box_outputs(
    box_ptr, s_bb, s_bn, s_bk, lab_ptr, s_lb, s_ln, msk_ptr, s_mb, s_mn, k_ptr, wh_ptr, reg_ptr,
    ind_ptr, rm_ptr, b, N, C, Hm, Wm, down_ratio, HAS_MASK: tl.constexpr, BLOCK_N: tl.constexpr,
    cdt: tl.constexpr,
):  # fmt: skip
    """The per-box targets of image b: wh, reg, ind (cy * W + cx), reg_mask (kept boxes)."""
    bp = box_ptr + b * s_bb
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        on_n = ns < N
        lab = tl.load(lab_ptr + b * s_lb + ns * s_ln, mask=on_n, other=-1)
        live = on_n & (lab >= 0) & (lab < C)
        if HAS_MASK:
            live = live & (tl.load(msk_ptr + b * s_mb + ns * s_mn, mask=on_n, other=0) != 0)
        keep, cx, cy, cxi, cyi, w, h, _r = _box_geometry(
            tl.load(bp + ns * s_bn, mask=on_n, other=0).to(cdt),
            tl.load(bp + ns * s_bn + s_bk, mask=on_n, other=0).to(cdt),
            tl.load(bp + ns * s_bn + 2 * s_bk, mask=on_n, other=0).to(cdt),
            tl.load(bp + ns * s_bn + 3 * s_bk, mask=on_n, other=0).to(cdt),
            down_ratio,
            Hm,
            Wm,
            k_ptr,
            cdt,
        )
        keep = keep & live
        o = b * N + ns
        tl.store(wh_ptr + o * 2, tl.where(keep, w, 0.0), mask=on_n)
        tl.store(wh_ptr + o * 2 + 1, tl.where(keep, h, 0.0), mask=on_n)
        tl.store(reg_ptr + o * 2, tl.where(keep, cx - cxi.to(cdt), 0.0), mask=on_n)
        tl.store(reg_ptr + o * 2 + 1, tl.where(keep, cy - cyi.to(cdt), 0.0), mask=on_n)
        flat = cyi.to(tl.int64) * Wm + cxi.to(tl.int64)
        tl.store(ind_ptr + o, tl.where(keep, flat, 0), mask=on_n)
        tl.store(rm_ptr + o, keep.to(tl.uint8), mask=on_n)


@triton.jit
def _targets_kernel(
    box_ptr, s_bb, s_bn, s_bk, lab_ptr, s_lb, s_ln, msk_ptr, s_mb, s_mn, k_ptr, hm_ptr, wh_ptr,
    reg_ptr, ind_ptr, rm_ptr, N, C, Hm, Wm, down_ratio, HAS_MASK: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """All ctdet targets; the program of (b, class 0, tile 0) also writes image b's per-box ones."""
    cdt: tl.constexpr = hm_ptr.dtype.element_ty
    b, c, tile, ps, on, acc = _class_heatmap(
        box_ptr, s_bb, s_bn, s_bk, lab_ptr, s_lb, s_ln, msk_ptr, s_mb, s_mn, k_ptr, N, C, Hm, Wm,
        down_ratio, HAS_MASK, BLOCK, cdt,
    )  # fmt: skip
    tl.store(hm_ptr + (b * C + c) * (Hm * Wm) + ps, acc, mask=on)
    if (c == 0) & (tile == 0):
        _box_outputs(
            box_ptr, s_bb, s_bn, s_bk, lab_ptr, s_lb, s_ln, msk_ptr, s_mb, s_mn, k_ptr, wh_ptr,
            reg_ptr, ind_ptr, rm_ptr, b, N, C, Hm, Wm, down_ratio, HAS_MASK, BLOCK_N, cdt,
        )  # fmt: skip


def centernet_targets_launch(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    box_mask: torch.Tensor | None,
    num_classes: int,
    size: tuple[int, int],
    down_ratio: int,
    min_overlap: float,
) -> dict[str, torch.Tensor]:
    """hm [B,K,H,W], wh [B,N,2], reg [B,N,2], ind [B,N] int64, reg_mask [B,N] uint8 (1 launch);
    Gaussian radii as CenterNet's gaussian_radius(det_size, min_overlap)."""
    b, n = boxes.shape[:2]
    h, w = size
    dev = boxes.device
    cdt = compute_dtype(boxes)
    hm = torch.empty(b, num_classes, h, w, dtype=cdt, device=dev)
    wh = torch.empty(b, n, 2, dtype=cdt, device=dev)
    reg = torch.empty(b, n, 2, dtype=cdt, device=dev)
    ind = torch.empty(b, n, dtype=torch.int64, device=dev)
    reg_mask = torch.empty(b, n, dtype=torch.uint8, device=dev)
    out = {"hm": hm, "wh": wh, "reg": reg, "ind": ind, "reg_mask": reg_mask}
    if b == 0:
        return out
    msk = mask_view(box_mask) if box_mask is not None else labels
    interp = interpreting()
    block = min(next_pow2(h * w), 4096 if interp else 1024)
    launch(
        _targets_kernel,
        (b * num_classes, triton.cdiv(h * w, block)),
        boxes,
        *boxes.stride(),
        labels,
        *labels.stride(),
        msk,
        *msk.stride(),
        _radius_consts(dev, min_overlap),
        hm,
        wh,
        reg,
        ind,
        reg_mask,
        n,
        num_classes,
        h,
        w,
        int(down_ratio),
        HAS_MASK=box_mask is not None,
        BLOCK=block,
        BLOCK_N=min(next_pow2(n), 256),
        num_warps=4,
        enable_fp_fusion=False,  # no FMA contraction: gaussian_radius must round like Python
    )
    return out


# ----------------------------------------------------------------------------------------------
# The heatmap term of CenterNetLoss from raw boxes, bandwidth first.
#
# CenterNet's focal term only needs, besides the predictions, the Gaussian targets (a function of
# the boxes, cheap to rebuild in registers) and the number of positives (the distinct (class,
# centre) pairs of the kept boxes: a function of the boxes alone). So instead of writing hm
# [B,K,H,W] and reading it back in the loss's forward and again in its backward, the boxes
# kernel counts the positives, and one pass over the predictions rebuilds the targets tile by
# tile, evaluates the loss partials and writes the final gradient (scaled by 1 / num_pos, known
# by then). Bytes per heatmap element, float32: before 4 (targets written) + 8 (forward reads)
# + 12 (backward: 2 reads, 1 write) = 24; now 4 + 4 (predictions read, gradient written): the
# floor. With an upstream gradient other than 1, ``reduce.scale_gradients_`` adds 8.
#
# Launches: _boxes_kernel (grid B: per-box targets, positives per image), _hm_norm_kernel (one
# program: 1 / num_pos), _hm_focal_kernel (grid B*K x tiles), _hm_total_kernel (one program).


@triton.jit
def _boxes_kernel(
    box_ptr, s_bb, s_bn, s_bk, lab_ptr, s_lb, s_ln, msk_ptr, s_mb, s_mn, k_ptr, wh_ptr, reg_ptr,
    ind_ptr, rm_ptr, npos_ptr, N, C, Hm, Wm, down_ratio, HAS_MASK: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Image b's per-box targets, and npos[b] = its kept boxes whose (class, centre) no earlier
    kept box has: the cells where hm == 1."""
    cdt: tl.constexpr = wh_ptr.dtype.element_ty
    b = tl.program_id(0).to(tl.int64)
    _box_outputs(
        box_ptr, s_bb, s_bn, s_bk, lab_ptr, s_lb, s_ln, msk_ptr, s_mb, s_mn, k_ptr, wh_ptr,
        reg_ptr, ind_ptr, rm_ptr, b, N, C, Hm, Wm, down_ratio, HAS_MASK, BLOCK_N, cdt,
    )  # fmt: skip
    tl.debug_barrier()  # the reads below see this program's writes above
    count = tl.zeros([BLOCK_N], tl.int32)
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        on_n = ns < N
        kept = tl.load(rm_ptr + b * N + ns, mask=on_n, other=0) != 0
        ind = tl.load(ind_ptr + b * N + ns, mask=on_n, other=0)
        lab = tl.load(lab_ptr + b * s_lb + ns * s_ln, mask=on_n, other=0)
        dup = tl.zeros([BLOCK_N], tl.int32)
        for m in range(0, n0 + BLOCK_N):
            same = (tl.load(ind_ptr + b * N + m, mask=m < N, other=-1) == ind) & (
                tl.load(lab_ptr + b * s_lb + m * s_ln, mask=m < N, other=0) == lab
            )
            kept_m = tl.load(rm_ptr + b * N + m, mask=m < N, other=0) != 0
            dup = dup | ((m < ns) & kept_m & same).to(tl.int32)
        count += (kept & (dup == 0)).to(tl.int32)
    tl.store(npos_ptr + b, tl.sum(count, axis=0))


@triton.jit
def _hm_norm_kernel(npos_ptr, B, aux_ptr, BLOCK_B: tl.constexpr):
    """aux = (1 / D, 1.0, D) with D = the batch's positives, or 1 when there is none (CenterNet:
    the negative term alone). Fixed-order sum."""
    cdt: tl.constexpr = aux_ptr.dtype.element_ty
    acc = tl.zeros([BLOCK_B], tl.int64)
    for b0 in range(0, B, BLOCK_B):
        bb = b0 + tl.arange(0, BLOCK_B)
        acc += tl.load(npos_ptr + bb, mask=bb < B, other=0).to(tl.int64)
    n = tl.sum(acc, axis=0).to(cdt)
    d = tl.where(n > 0, n, 1.0)
    tl.store(aux_ptr, 1.0 / d)
    tl.store(aux_ptr + 1, tl.full([], 1.0, cdt))
    tl.store(aux_ptr + 2, d)


@triton.jit(do_not_specialize=["alpha", "beta", "pos_threshold", "eps"])
def _hm_focal_kernel(
    box_ptr, s_bb, s_bn, s_bk, lab_ptr, s_lb, s_ln, msk_ptr, s_mb, s_mn, k_ptr, x_ptr, s_xb,
    s_xc, s_xh, s_xw, aux_ptr, go_ptr, part_ptr, g_ptr, N, C, Hm, Wm, down_ratio, alpha, beta,
    pos_threshold, eps, HAS_MASK: tl.constexpr, BOX64: tl.constexpr, WRITE_LOSS: tl.constexpr,
    NEED: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One tile of class c of image b: the ctdet target in registers (``_class_heatmap``), the
    focal term's partial sum and/or its final gradient df/dx / D * upstream."""
    cdt: tl.constexpr = aux_ptr.dtype.element_ty
    tdt: tl.constexpr = tl.float64 if BOX64 else tl.float32  # the targets' dtype
    b, c, tile, ps, on, y = _class_heatmap(
        box_ptr, s_bb, s_bn, s_bk, lab_ptr, s_lb, s_ln, msk_ptr, s_mb, s_mn, k_ptr, N, C, Hm, Wm,
        down_ratio, HAS_MASK, BLOCK, tdt,
    )  # fmt: skip
    row = (ps // Wm).to(tl.int64)
    col = (ps % Wm).to(tl.int64)
    x = tl.load(x_ptr + b * s_xb + c * s_xc + row * s_xh + col * s_xw, mask=on, other=0.5)
    f, df, _, _, _ = focal_terms(
        x.to(cdt), y.to(cdt), option(alpha, cdt), option(beta, cdt), option(pos_threshold, cdt),
        option(eps, cdt), 0.0, False,
    )  # fmt: skip
    if WRITE_LOSS:
        part = part_ptr + tl.program_id(0) * tl.num_programs(1) + tile
        tl.store(part, tl.sum(tl.where(on, f, 0.0), axis=0))
    if NEED:
        g = df * (tl.load(aux_ptr) * tl.load(go_ptr).to(cdt))
        tl.store(g_ptr + (b * C + c) * (Hm * Wm) + ps, g.to(g_ptr.dtype.element_ty), mask=on)


@triton.jit
def _hm_total_kernel(part_ptr, P, aux_ptr, loss_ptr, BLOCK_P: tl.constexpr):
    """loss = (fixed-order sum of the partials) / D."""
    cdt: tl.constexpr = aux_ptr.dtype.element_ty
    acc = tl.zeros([BLOCK_P], cdt)
    for r0 in range(0, P, BLOCK_P):
        r = r0 + tl.arange(0, BLOCK_P)
        acc += tl.load(part_ptr + r, mask=r < P, other=0)
    tl.store(loss_ptr, tl.sum(acc, axis=0) / tl.load(aux_ptr + 2))


HM_BLOCK = 512  # cells per program of the heatmap pass (4096 under the interpreter; tests lower it)
BOXES_BLOCK_N = 128  # boxes per step of the boxes kernel (tests lower it)


def _hm_block(hw: int) -> int:
    return min(next_pow2(hw), 4096 if interpreting() and HM_BLOCK == 512 else HM_BLOCK)


def _box_args(boxes, labels, box_mask, min_overlap):
    msk = mask_view(box_mask) if box_mask is not None else labels
    return (boxes, *boxes.stride(), labels, *labels.stride(), msk, *msk.stride(),
            _radius_consts(boxes.device, min_overlap))  # fmt: skip


def _hm_launch(hm, boxes, labels, box_mask, down_ratio, aux, go, part, grad, focal, min_overlap):
    b, c, h, w = hm.shape
    block = _hm_block(h * w)
    launch(
        _hm_focal_kernel,
        (b * c, triton.cdiv(h * w, block)),
        *_box_args(boxes, labels, box_mask, min_overlap), hm, *hm.stride(), aux, go,
        part if part is not None else aux, grad if grad is not None else aux,
        boxes.shape[1], c, h, w, int(down_ratio),
        *(f64_bits(focal[k]) for k in ("alpha", "beta", "pos_threshold", "eps")),
        HAS_MASK=box_mask is not None, BOX64=boxes.dtype == torch.float64,
        WRITE_LOSS=part is not None, NEED=grad is not None, BLOCK=block, num_warps=8,
        enable_fp_fusion=False,  # gaussian_radius must round like Python (as the targets kernel)
    )  # fmt: skip


def centernet_hm_loss_launch(
    hm: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    box_mask: torch.Tensor | None,
    down_ratio: int,
    focal: dict,
    grad: torch.Tensor | None = None,
    *,
    min_overlap: float,
    sync=None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """CenterNet's focal term of ``hm`` [B,K,H,W] against the ctdet targets of ``boxes``, without
    materialising the target heatmap: (loss 0-dim, aux [3], per-box targets wh, reg, ind,
    reg_mask). Writes the final gradient (upstream 1) into ``grad`` when given. 4 launches.
    ``sync`` (data parallel; ``sums -> the sums over every rank``): the positives are counted over
    every rank (one all-reduce of one number) before the heatmap pass."""
    b, c, h, w = hm.shape
    n = boxes.shape[1]
    dev = hm.device
    tdt = compute_dtype(boxes)
    cdt = compute_dtype(hm)
    small = {
        "wh": torch.empty(b, n, 2, dtype=tdt, device=dev),
        "reg": torch.empty(b, n, 2, dtype=tdt, device=dev),
        "ind": torch.empty(b, n, dtype=torch.int64, device=dev),
        "reg_mask": torch.empty(b, n, dtype=torch.uint8, device=dev),
    }
    npos = torch.empty(b, dtype=torch.int32, device=dev)
    launch(
        _boxes_kernel,
        (b,),
        *_box_args(boxes, labels, box_mask, min_overlap), small["wh"], small["reg"], small["ind"],
        small["reg_mask"], npos, n, c, h, w, int(down_ratio),
        HAS_MASK=box_mask is not None, BLOCK_N=min(next_pow2(n), BOXES_BLOCK_N), num_warps=4,
        enable_fp_fusion=False,
    )  # fmt: skip
    aux = torch.empty(3, dtype=cdt, device=dev)
    if sync is not None:
        npos, b_norm = sync(npos.sum(0, keepdim=True).to(torch.int32)), 1
    else:
        b_norm = b
    launch(
        _hm_norm_kernel, (1,), npos, b_norm, aux, BLOCK_B=min(next_pow2(b_norm), 1024), num_warps=4
    )
    part = torch.empty(b * c * triton.cdiv(h * w, _hm_block(h * w)), dtype=cdt, device=dev)
    _hm_launch(
        hm, boxes, labels, box_mask, down_ratio, aux, aux[1:], part, grad, focal, min_overlap
    )
    loss = torch.empty((), dtype=cdt, device=dev)
    launch(_hm_total_kernel, (1,), part, part.numel(), aux, loss, BLOCK_P=1024, num_warps=4)
    return loss, aux, small


def centernet_hm_grad_launch(
    grad_loss: torch.Tensor,
    aux: torch.Tensor,
    hm: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    box_mask: torch.Tensor | None,
    down_ratio: int,
    focal: dict,
    min_overlap: float,
) -> torch.Tensor:
    """The gradient of :func:`centernet_hm_loss_launch`'s loss, recomputed with the upstream
    gradient (1 launch; contiguous, in hm's dtype)."""
    grad = torch.empty(hm.shape, dtype=hm.dtype, device=hm.device)
    _hm_launch(
        hm, boxes, labels, box_mask, down_ratio, aux, grad_loss, None, grad, focal, min_overlap
    )
    return grad
