"""The fused gap-detection loss (docs/spec.md 3): forward and backward in 3 Triton launches.

Launches (no memset, no host sync, no data-dependent shapes; CUDA-graph capturable):

1. ``_gap_forward_kernel``, grid (cdiv(Hf*Wf, BLOCK), B): a program owns BLOCK cells of one image.
   It generates the labels in registers from the image's coordinates (Gaussians Y_gap, Y_piece,
   offset targets, the padding weight W from the mask's stride x stride blocks or analytically from
   valid_box) and writes 8 partial sums per program, every entry (no memset), into
   ``partials [P, 8]``:
       sum f_gap W, sum f_piece W, sum W, sum s_gap m_gap, sum m_gap, sum s_piece m_piece,
       sum m_piece, sum (1 - c) m_gap
   with f the focal term, s = smoothL1(du - tu) + smoothL1(dv - tv), c the cosine of the angle
   error and m = (Y > reg_threshold) W.
2. ``_gap_finalize_kernel``, one program: reduces the partials in a fixed order (deterministic, no
   atomics), evaluates the hard negatives (bilinear samples of heatmap_gap, as probabilities, at the
   gap centre and the K confusers; validity; margin ranking) and writes ``total`` and
   ``aux = [5 components, 5 gradient scales, coef [B, 1+K]]``:
       aux[5] = w_heatmap / (sum W + eps)            aux[6] = w_offset / (sum m_gap + eps)
       aux[7] = w_offset / (sum m_piece + eps)       aux[8] = w_angle / (sum m_gap + eps)
       aux[9] = w_hard_negative / max(#valid, 1)     aux[10:] = hard-negative sample coefficients
3. ``_gap_backward_kernel``, same grid as 1: recomputes the per-cell derivatives from the inputs,
   scales them by aux and by the upstream gradient (read from its pointer: no sync), adds the
   hard-negative bilinear gradient into heatmap_gap's (each cell loops over its image's 1+K
   samples: no atomics) and writes each requested gradient once, in its input's dtype.

Arithmetic runs in float32 (float64 when a prediction is float64); the loss comes back in that dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import compute_dtype, f64_bits, launch, mask_view, next_pow2
from .primitives import (
    as_dtype,
    cell_weight,
    coord_grid,
    cosine_terms,
    focal_terms,
    gaussian,
    hard_negative_block,
    hard_negative_grad,
    keep_float64,
    label_center,
    offset_target,
    option,
    smooth_l1_terms,
)
from .reduce import elementwise_block

NUM_PARTIALS = 8
AUX_HEAD = 10  # 5 components + 5 gradient scales, then coef [B, 1+K]
FINALIZE_BLOCK_P = 128  # partial rows per pass of the finalize kernel (tests lower it)

# Padding modes of ``cell_weight``.
NO_PADDING, PADDING_MASK, VALID_BOX = 0, 1, 2


@triton.jit
def _gap_cell_terms(
    hg_ptr,
    hp_ptr,
    off_ptr,
    ang_ptr,
    gc_ptr,
    pc_ptr,
    ga_ptr,
    pad_ptr,
    b,
    cells,
    on,
    Wf,
    s_hg_b,
    s_hg_h,
    s_hg_w,
    s_hp_b,
    s_hp_h,
    s_hp_w,
    s_off_b,
    s_off_c,
    s_off_h,
    s_off_w,
    s_ang_b,
    s_ang_c,
    s_ang_h,
    s_ang_w,
    s_gc_b,
    s_gc_c,
    s_pc_b,
    s_pc_c,
    s_ga_b,
    s_pad_b,
    s_pad_h,
    s_pad_w,
    sigma,
    alpha,
    beta,
    pos_threshold,
    reg_threshold,
    eps,
    STRIDE: tl.constexpr,
    CELL: tl.constexpr,
    FROM_LOGITS: tl.constexpr,
    PADDING: tl.constexpr,
    cdt: tl.constexpr,
):
    """Every per-cell quantity of the loss at ``cells`` (flat indices) of image ``b``.

    Cells with ``on`` false get W = 0 and m = 0 (and finite values everywhere else). The float
    options arrive as float64 bit patterns (``launch.f64_bits``).
    """
    sigma = option(sigma, cdt)
    alpha = option(alpha, cdt)
    beta = option(beta, cdt)
    pos_threshold = option(pos_threshold, cdt)
    reg_threshold = option(reg_threshold, cdt)
    eps = option(eps, cdt)
    i = cells // Wf
    j = cells % Wf
    ii = i.to(cdt)
    jj = j.to(cdt)
    b64 = b.to(tl.int64)
    i64 = i.to(tl.int64)
    j64 = j.to(tl.int64)

    # Per-image targets, loaded once per program.
    # Grid coordinates in the coordinates' own precision (float64 stays float64), so floor(u) and
    # the offset targets are exact before they are cast to the compute dtype.
    ug = coord_grid(tl.load(gc_ptr + b64 * s_gc_b), STRIDE, cdt)
    vg = coord_grid(tl.load(gc_ptr + b64 * s_gc_b + s_gc_c), STRIDE, cdt)
    up = coord_grid(tl.load(pc_ptr + b64 * s_pc_b), STRIDE, cdt)
    vp = coord_grid(tl.load(pc_ptr + b64 * s_pc_b + s_pc_c), STRIDE, cdt)
    cug = label_center(ug, CELL).to(cdt)
    cvg = label_center(vg, CELL).to(cdt)
    cup = label_center(up, CELL).to(cdt)
    cvp = label_center(vp, CELL).to(cdt)
    # sin/cos in the compute dtype, or float64 for a float64 angle (one scalar per program).
    theta = keep_float64(tl.load(ga_ptr + b64 * s_ga_b), cdt)
    sin_t = tl.sin(theta).to(cdt)
    cos_t = tl.cos(theta).to(cdt)
    sig = as_dtype(sigma, cdt)
    reg_t = as_dtype(reg_threshold, cdt)

    # Labels, in registers.
    y_gap = gaussian(ii, jj, cug, cvg, sig, sig)
    y_piece = gaussian(ii, jj, cup, cvp, sig, sig)
    w = cell_weight(pad_ptr, b, i, j, s_pad_b, s_pad_h, s_pad_w, on, STRIDE, PADDING, cdt)
    w = tl.where(on, w, 0.0)
    m_gap = tl.where(y_gap > reg_t, w, 0.0)
    m_piece = tl.where(y_piece > reg_t, w, 0.0)

    # Focal terms of both heatmaps.
    x_gap = tl.load(hg_ptr + b64 * s_hg_b + i64 * s_hg_h + j64 * s_hg_w, mask=on, other=0.5)
    x_piece = tl.load(hp_ptr + b64 * s_hp_b + i64 * s_hp_h + j64 * s_hp_w, mask=on, other=0.5)
    f_gap, df_gap, _, p_gap, q_gap = focal_terms(
        x_gap.to(cdt), y_gap, alpha, beta, pos_threshold, eps, FROM_LOGITS
    )
    f_piece, df_piece, _, _, _ = focal_terms(
        x_piece.to(cdt), y_piece, alpha, beta, pos_threshold, eps, FROM_LOGITS
    )

    # Offsets: the same target at every supervised cell of the image.
    o = off_ptr + b64 * s_off_b + i64 * s_off_h + j64 * s_off_w
    d0 = tl.load(o, mask=on, other=0).to(cdt) - offset_target(ug).to(cdt)
    d1 = tl.load(o + s_off_c, mask=on, other=0).to(cdt) - offset_target(vg).to(cdt)
    d2 = tl.load(o + 2 * s_off_c, mask=on, other=0).to(cdt) - offset_target(up).to(cdt)
    d3 = tl.load(o + 3 * s_off_c, mask=on, other=0).to(cdt) - offset_target(vp).to(cdt)
    s0, ds0 = smooth_l1_terms(d0, 1.0)
    s1, ds1 = smooth_l1_terms(d1, 1.0)
    s2, ds2 = smooth_l1_terms(d2, 1.0)
    s3, ds3 = smooth_l1_terms(d3, 1.0)

    # Angle.
    a = ang_ptr + b64 * s_ang_b + i64 * s_ang_h + j64 * s_ang_w
    a0 = tl.load(a, mask=on, other=1).to(cdt)
    a1 = tl.load(a + s_ang_c, mask=on, other=1).to(cdt)
    one_minus_c, dc0, dc1 = cosine_terms(a0, a1, sin_t, cos_t)

    return (
        ii,
        jj,
        w,
        m_gap,
        m_piece,
        f_gap,
        df_gap,
        p_gap,
        q_gap,
        f_piece,
        df_piece,
        s0 + s1,
        ds0,
        ds1,
        s2 + s3,
        ds2,
        ds3,
        one_minus_c,
        dc0,
        dc1,
    )


_CELL_OPTIONS = ["sigma", "alpha", "beta", "pos_threshold", "reg_threshold", "eps"]


@triton.jit(do_not_specialize=_CELL_OPTIONS)
def _gap_forward_kernel(
    hg_ptr,
    hp_ptr,
    off_ptr,
    ang_ptr,
    gc_ptr,
    pc_ptr,
    ga_ptr,
    pad_ptr,
    part_ptr,
    HW,
    Wf,
    s_hg_b,
    s_hg_h,
    s_hg_w,
    s_hp_b,
    s_hp_h,
    s_hp_w,
    s_off_b,
    s_off_c,
    s_off_h,
    s_off_w,
    s_ang_b,
    s_ang_c,
    s_ang_h,
    s_ang_w,
    s_gc_b,
    s_gc_c,
    s_pc_b,
    s_pc_c,
    s_ga_b,
    s_pad_b,
    s_pad_h,
    s_pad_w,
    sigma,
    alpha,
    beta,
    pos_threshold,
    reg_threshold,
    eps,
    STRIDE: tl.constexpr,
    CELL: tl.constexpr,
    FROM_LOGITS: tl.constexpr,
    PADDING: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Partial sums of one block of cells of one image (see the module docstring)."""
    cdt: tl.constexpr = part_ptr.dtype.element_ty
    pid = tl.program_id(0)
    b = tl.program_id(1)
    cells = pid * BLOCK + tl.arange(0, BLOCK)
    on = cells < HW
    (
        _,
        _,
        w,
        m_gap,
        m_piece,
        f_gap,
        _,
        _,
        _,
        f_piece,
        _,
        s_gap,
        _,
        _,
        s_piece,
        _,
        _,
        one_minus_c,
        _,
        _,
    ) = _gap_cell_terms(
        hg_ptr,
        hp_ptr,
        off_ptr,
        ang_ptr,
        gc_ptr,
        pc_ptr,
        ga_ptr,
        pad_ptr,
        b,
        cells,
        on,
        Wf,
        s_hg_b,
        s_hg_h,
        s_hg_w,
        s_hp_b,
        s_hp_h,
        s_hp_w,
        s_off_b,
        s_off_c,
        s_off_h,
        s_off_w,
        s_ang_b,
        s_ang_c,
        s_ang_h,
        s_ang_w,
        s_gc_b,
        s_gc_c,
        s_pc_b,
        s_pc_c,
        s_ga_b,
        s_pad_b,
        s_pad_h,
        s_pad_w,
        sigma,
        alpha,
        beta,
        pos_threshold,
        reg_threshold,
        eps,
        STRIDE,
        CELL,
        FROM_LOGITS,
        PADDING,
        cdt,
    )
    out = part_ptr + (b.to(tl.int64) * tl.num_programs(0) + pid) * 8
    tl.store(out + 0, tl.sum(tl.where(on, f_gap * w, 0.0), axis=0))
    tl.store(out + 1, tl.sum(tl.where(on, f_piece * w, 0.0), axis=0))
    tl.store(out + 2, tl.sum(w, axis=0))
    tl.store(out + 3, tl.sum(tl.where(on, s_gap * m_gap, 0.0), axis=0))
    tl.store(out + 4, tl.sum(m_gap, axis=0))
    tl.store(out + 5, tl.sum(tl.where(on, s_piece * m_piece, 0.0), axis=0))
    tl.store(out + 6, tl.sum(m_piece, axis=0))
    tl.store(out + 7, tl.sum(tl.where(on, one_minus_c * m_gap, 0.0), axis=0))


@triton.jit(
    do_not_specialize=["margin", "w_heatmap", "w_offset", "w_angle", "w_hard_negative", "eps"]
)
def _gap_finalize_kernel(
    part_ptr,
    P,
    hg_ptr,
    gc_ptr,
    conf_ptr,
    cmask_ptr,
    pad_ptr,
    total_ptr,
    aux_ptr,
    B,
    K,
    Hf,
    Wf,
    s_hg_b,
    s_hg_h,
    s_hg_w,
    s_gc_b,
    s_gc_c,
    s_cf_b,
    s_cf_k,
    s_cf_c,
    s_cm_b,
    s_cm_k,
    s_pad_b,
    s_pad_h,
    s_pad_w,
    margin,
    w_heatmap,
    w_offset,
    w_angle,
    w_hard_negative,
    eps,
    STRIDE: tl.constexpr,
    FROM_LOGITS: tl.constexpr,
    PADDING: tl.constexpr,
    HAS_CMASK: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One program: reduce the partials, the hard negatives, the components, total and scales."""
    cdt: tl.constexpr = part_ptr.dtype.element_ty
    margin = option(margin, cdt)
    rows = tl.arange(0, BLOCK_P)
    cols = tl.arange(0, 8)
    acc = tl.zeros([BLOCK_P, 8], cdt)
    for r0 in range(0, P, BLOCK_P):
        r = (r0 + rows).to(tl.int64)
        tile = tl.load(part_ptr + r[:, None] * 8 + cols[None, :], mask=(r < P)[:, None], other=0)
        acc += tile
    sums = tl.sum(acc, axis=0)
    sum_fw_gap = tl.sum(tl.where(cols == 0, sums, 0.0), axis=0)
    sum_fw_piece = tl.sum(tl.where(cols == 1, sums, 0.0), axis=0)
    sum_w = tl.sum(tl.where(cols == 2, sums, 0.0), axis=0)
    sum_sm_gap = tl.sum(tl.where(cols == 3, sums, 0.0), axis=0)
    sum_m_gap = tl.sum(tl.where(cols == 4, sums, 0.0), axis=0)
    sum_sm_piece = tl.sum(tl.where(cols == 5, sums, 0.0), axis=0)
    sum_m_piece = tl.sum(tl.where(cols == 6, sums, 0.0), axis=0)
    sum_cm = tl.sum(tl.where(cols == 7, sums, 0.0), axis=0)

    hinge_sum, count = hard_negative_block(
        hg_ptr,
        s_hg_b,
        s_hg_h,
        s_hg_w,
        gc_ptr,
        s_gc_b,
        s_gc_c,
        conf_ptr,
        s_cf_b,
        s_cf_k,
        s_cf_c,
        cmask_ptr,
        s_cm_b,
        s_cm_k,
        pad_ptr,
        s_pad_b,
        s_pad_h,
        s_pad_w,
        aux_ptr + 10,
        B,
        K,
        Hf,
        Wf,
        margin,
        STRIDE,
        PADDING,
        HAS_CMASK,
        FROM_LOGITS,
        BLOCK_B,
        BLOCK_K,
        cdt,
    )

    e = option(eps, cdt)
    heat_den = sum_w + e
    gap_den = sum_m_gap + e
    piece_den = sum_m_piece + e
    hn_den = tl.maximum(count, 1.0)
    l_heat_gap = sum_fw_gap / heat_den
    l_heat_piece = sum_fw_piece / heat_den
    l_offset = sum_sm_gap / gap_den + sum_sm_piece / piece_den
    l_angle = sum_cm / gap_den
    l_hard = hinge_sum / hn_den
    wh = option(w_heatmap, cdt)
    wo = option(w_offset, cdt)
    wa = option(w_angle, cdt)
    wn = option(w_hard_negative, cdt)
    total = wh * (l_heat_gap + l_heat_piece) + wo * l_offset + wa * l_angle + wn * l_hard
    tl.store(total_ptr, total)
    tl.store(aux_ptr + 0, l_heat_gap)
    tl.store(aux_ptr + 1, l_heat_piece)
    tl.store(aux_ptr + 2, l_offset)
    tl.store(aux_ptr + 3, l_angle)
    tl.store(aux_ptr + 4, l_hard)
    tl.store(aux_ptr + 5, wh / heat_den)
    tl.store(aux_ptr + 6, wo / gap_den)
    tl.store(aux_ptr + 7, wo / piece_den)
    tl.store(aux_ptr + 8, wa / gap_den)
    tl.store(aux_ptr + 9, wn / hn_den)


@triton.jit(do_not_specialize=_CELL_OPTIONS)
def _gap_backward_kernel(
    go_ptr,
    aux_ptr,
    hg_ptr,
    hp_ptr,
    off_ptr,
    ang_ptr,
    gc_ptr,
    pc_ptr,
    ga_ptr,
    pad_ptr,
    conf_ptr,
    g_hg_ptr,
    g_hp_ptr,
    g_off_ptr,
    g_ang_ptr,
    HW,
    Wf,
    K,
    s_hg_b,
    s_hg_h,
    s_hg_w,
    s_hp_b,
    s_hp_h,
    s_hp_w,
    s_off_b,
    s_off_c,
    s_off_h,
    s_off_w,
    s_ang_b,
    s_ang_c,
    s_ang_h,
    s_ang_w,
    s_gc_b,
    s_gc_c,
    s_pc_b,
    s_pc_c,
    s_ga_b,
    s_pad_b,
    s_pad_h,
    s_pad_w,
    s_cf_b,
    s_cf_k,
    s_cf_c,
    sigma,
    alpha,
    beta,
    pos_threshold,
    reg_threshold,
    eps,
    STRIDE: tl.constexpr,
    CELL: tl.constexpr,
    FROM_LOGITS: tl.constexpr,
    PADDING: tl.constexpr,
    NEED_HG: tl.constexpr,
    NEED_HP: tl.constexpr,
    NEED_OFF: tl.constexpr,
    NEED_ANG: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Gradients of the 4 predictions for one block of cells of one image (contiguous outputs)."""
    cdt: tl.constexpr = aux_ptr.dtype.element_ty
    pid = tl.program_id(0)
    b = tl.program_id(1)
    cells = pid * BLOCK + tl.arange(0, BLOCK)
    on = cells < HW
    (
        ii,
        jj,
        w,
        m_gap,
        m_piece,
        _,
        df_gap,
        p_gap,
        q_gap,
        _,
        df_piece,
        _,
        ds0,
        ds1,
        _,
        ds2,
        ds3,
        _,
        dc0,
        dc1,
    ) = _gap_cell_terms(
        hg_ptr,
        hp_ptr,
        off_ptr,
        ang_ptr,
        gc_ptr,
        pc_ptr,
        ga_ptr,
        pad_ptr,
        b,
        cells,
        on,
        Wf,
        s_hg_b,
        s_hg_h,
        s_hg_w,
        s_hp_b,
        s_hp_h,
        s_hp_w,
        s_off_b,
        s_off_c,
        s_off_h,
        s_off_w,
        s_ang_b,
        s_ang_c,
        s_ang_h,
        s_ang_w,
        s_gc_b,
        s_gc_c,
        s_pc_b,
        s_pc_c,
        s_ga_b,
        s_pad_b,
        s_pad_h,
        s_pad_w,
        sigma,
        alpha,
        beta,
        pos_threshold,
        reg_threshold,
        eps,
        STRIDE,
        CELL,
        FROM_LOGITS,
        PADDING,
        cdt,
    )
    go = tl.load(go_ptr).to(cdt)
    b64 = b.to(tl.int64)
    if NEED_HG or NEED_HP:
        heat_scale = tl.load(aux_ptr + 5) * go
    if NEED_HG:
        g = df_gap * w * heat_scale
        hn = hard_negative_grad(
            gc_ptr,
            s_gc_b,
            s_gc_c,
            conf_ptr,
            s_cf_b,
            s_cf_k,
            s_cf_c,
            aux_ptr + 10,
            b,
            ii,
            jj,
            K,
            STRIDE,
        )
        hn = hn * (tl.load(aux_ptr + 9) * go)
        if FROM_LOGITS:
            hn = hn * (p_gap * q_gap)
        g += hn
        tl.store(g_hg_ptr + b64 * HW + cells, g.to(g_hg_ptr.dtype.element_ty), mask=on)
    if NEED_HP:
        g = df_piece * w * heat_scale
        tl.store(g_hp_ptr + b64 * HW + cells, g.to(g_hp_ptr.dtype.element_ty), mask=on)
    if NEED_OFF:
        sg = m_gap * (tl.load(aux_ptr + 6) * go)
        sp = m_piece * (tl.load(aux_ptr + 7) * go)
        base = g_off_ptr + b64 * 4 * HW + cells
        ety = g_off_ptr.dtype.element_ty
        tl.store(base, (ds0 * sg).to(ety), mask=on)
        tl.store(base + HW, (ds1 * sg).to(ety), mask=on)
        tl.store(base + 2 * HW, (ds2 * sp).to(ety), mask=on)
        tl.store(base + 3 * HW, (ds3 * sp).to(ety), mask=on)
    if NEED_ANG:
        sa = m_gap * (tl.load(aux_ptr + 8) * go)
        base = g_ang_ptr + b64 * 2 * HW + cells
        ety = g_ang_ptr.dtype.element_ty
        tl.store(base, (dc0 * sa).to(ety), mask=on)
        tl.store(base + HW, (dc1 * sa).to(ety), mask=on)


# ----------------------------------------------------------------------------------- launchers


def padding_args(
    padding_mask: torch.Tensor | None, valid_box: torch.Tensor | None, dummy: torch.Tensor
) -> tuple[torch.Tensor, int, int, int, int]:
    """(tensor, stride_b, stride_h, stride_w, mode) for ``cell_weight`` (views only, no copy)."""
    if padding_mask is not None:
        pm = mask_view(padding_mask)
        if pm.dim() == 4:
            return pm, pm.stride(0), pm.stride(2), pm.stride(3), PADDING_MASK
        return pm, pm.stride(0), pm.stride(1), pm.stride(2), PADDING_MASK
    if valid_box is not None:
        return valid_box, valid_box.stride(0), 0, valid_box.stride(1), VALID_BOX
    return dummy, 0, 0, 0, NO_PADDING


def _confuser_args(confusers, confuser_mask, dummy):
    if confusers is None or confusers.shape[1] == 0:
        return dummy, 0, 0, 0, 0, dummy, 0, 0, False
    k = confusers.shape[1]
    cf = confusers
    if confuser_mask is None:
        return cf, cf.stride(0), cf.stride(1), cf.stride(2), k, dummy, 0, 0, False
    cm = mask_view(confuser_mask)
    return cf, cf.stride(0), cf.stride(1), cf.stride(2), k, cm, cm.stride(0), cm.stride(1), True


def _cell_args(hg, hp, off, ang, gc, pc, ga, pad_strides):
    return (
        hg.stride(0),
        hg.stride(2),
        hg.stride(3),
        hp.stride(0),
        hp.stride(2),
        hp.stride(3),
        off.stride(0),
        off.stride(1),
        off.stride(2),
        off.stride(3),
        ang.stride(0),
        ang.stride(1),
        ang.stride(2),
        ang.stride(3),
        gc.stride(0),
        gc.stride(1),
        pc.stride(0),
        pc.stride(1),
        ga.stride(0),
        *pad_strides,
    )


def gap_detection_forward(
    heatmap_gap: torch.Tensor,
    heatmap_piece: torch.Tensor,
    offset: torch.Tensor,
    angle: torch.Tensor,
    gap_center: torch.Tensor,
    piece_center: torch.Tensor,
    gap_angle: torch.Tensor,
    confusers: torch.Tensor | None,
    confuser_mask: torch.Tensor | None,
    padding_mask: torch.Tensor | None,
    valid_box: torch.Tensor | None,
    *,
    stride: int,
    sigma: float,
    cell: bool,
    alpha: float,
    beta: float,
    pos_threshold: float,
    reg_threshold: float,
    margin: float,
    w_heatmap: float,
    w_offset: float,
    w_angle: float,
    w_hard_negative: float,
    from_logits: bool,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launches 1 and 2: returns (total 0-dim, aux [10 + B (1+K)]) in the compute dtype."""
    hg, hp, off, ang = heatmap_gap, heatmap_piece, offset, angle
    b, _, hf, wf = hg.shape
    hw = hf * wf
    cdt = compute_dtype(hg, hp, off, ang)
    dev = hg.device
    block, warps = elementwise_block(hw)
    nblk = triton.cdiv(hw, block)
    partials = torch.empty(b * nblk, NUM_PARTIALS, dtype=cdt, device=dev)
    pad, s_pad_b, s_pad_h, s_pad_w, mode = padding_args(padding_mask, valid_box, hg)
    cf, s_cf_b, s_cf_k, s_cf_c, k, cm, s_cm_b, s_cm_k, has_cm = _confuser_args(
        confusers, confuser_mask, hg
    )
    cell_args = _cell_args(
        hg, hp, off, ang, gap_center, piece_center, gap_angle, (s_pad_b, s_pad_h, s_pad_w)
    )
    launch(
        _gap_forward_kernel,
        (nblk, b),
        hg,
        hp,
        off,
        ang,
        gap_center,
        piece_center,
        gap_angle,
        pad,
        partials,
        hw,
        wf,
        *cell_args,
        f64_bits(sigma),
        f64_bits(alpha),
        f64_bits(beta),
        f64_bits(pos_threshold),
        f64_bits(reg_threshold),
        f64_bits(eps),
        STRIDE=stride,
        CELL=bool(cell),
        FROM_LOGITS=bool(from_logits),
        PADDING=mode,
        BLOCK=block,
        num_warps=warps,
    )
    total = torch.empty((), dtype=cdt, device=dev)
    aux = torch.empty(AUX_HEAD + b * (k + 1), dtype=cdt, device=dev)
    block_k = min(next_pow2(k), 32)
    block_b = max(1, min(next_pow2(b), 512 // block_k))
    launch(
        _gap_finalize_kernel,
        (1,),
        partials,
        partials.shape[0],
        hg,
        gap_center,
        cf,
        cm,
        pad,
        total,
        aux,
        b,
        k,
        hf,
        wf,
        hg.stride(0),
        hg.stride(2),
        hg.stride(3),
        gap_center.stride(0),
        gap_center.stride(1),
        s_cf_b,
        s_cf_k,
        s_cf_c,
        s_cm_b,
        s_cm_k,
        s_pad_b,
        s_pad_h,
        s_pad_w,
        f64_bits(margin),
        f64_bits(w_heatmap),
        f64_bits(w_offset),
        f64_bits(w_angle),
        f64_bits(w_hard_negative),
        f64_bits(eps),
        STRIDE=stride,
        FROM_LOGITS=bool(from_logits),
        PADDING=mode,
        HAS_CMASK=has_cm,
        BLOCK_P=FINALIZE_BLOCK_P,
        BLOCK_B=block_b,
        BLOCK_K=block_k,
        num_warps=4,
    )
    return total, aux


def gap_detection_backward(
    grad_total: torch.Tensor,
    aux: torch.Tensor,
    heatmap_gap: torch.Tensor,
    heatmap_piece: torch.Tensor,
    offset: torch.Tensor,
    angle: torch.Tensor,
    gap_center: torch.Tensor,
    piece_center: torch.Tensor,
    gap_angle: torch.Tensor,
    confusers: torch.Tensor | None,
    padding_mask: torch.Tensor | None,
    valid_box: torch.Tensor | None,
    need: tuple[bool, bool, bool, bool],
    *,
    stride: int,
    sigma: float,
    cell: bool,
    alpha: float,
    beta: float,
    pos_threshold: float,
    reg_threshold: float,
    from_logits: bool,
    eps: float,
) -> tuple[torch.Tensor | None, ...]:
    """Launch 3: the gradients of the 4 predictions (None where ``need`` is False), contiguous, in
    each prediction's dtype. ``grad_total`` is the upstream gradient (0-dim, read in the kernel)."""
    hg, hp, off, ang = heatmap_gap, heatmap_piece, offset, angle
    b, _, hf, wf = hg.shape
    hw = hf * wf
    block, warps = elementwise_block(hw)
    nblk = triton.cdiv(hw, block)
    grads = tuple(
        torch.empty(x.shape, dtype=x.dtype, device=x.device) if n else None
        for x, n in zip((hg, hp, off, ang), need)
    )
    pad, s_pad_b, s_pad_h, s_pad_w, mode = padding_args(padding_mask, valid_box, hg)
    cf, s_cf_b, s_cf_k, s_cf_c, k, _, _, _, _ = _confuser_args(confusers, None, hg)
    cell_args = _cell_args(
        hg, hp, off, ang, gap_center, piece_center, gap_angle, (s_pad_b, s_pad_h, s_pad_w)
    )
    launch(
        _gap_backward_kernel,
        (nblk, b),
        grad_total,
        aux,
        hg,
        hp,
        off,
        ang,
        gap_center,
        piece_center,
        gap_angle,
        pad,
        cf,
        *(g if g is not None else aux for g in grads),
        hw,
        wf,
        k,
        *cell_args,
        s_cf_b,
        s_cf_k,
        s_cf_c,
        f64_bits(sigma),
        f64_bits(alpha),
        f64_bits(beta),
        f64_bits(pos_threshold),
        f64_bits(reg_threshold),
        f64_bits(eps),
        STRIDE=stride,
        CELL=bool(cell),
        FROM_LOGITS=bool(from_logits),
        PADDING=mode,
        NEED_HG=bool(need[0]),
        NEED_HP=bool(need[1]),
        NEED_OFF=bool(need[2]),
        NEED_ANG=bool(need[3]),
        BLOCK=block,
        num_warps=warps,
    )
    return grads
