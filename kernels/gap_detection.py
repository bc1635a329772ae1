"""The fused gap-detection loss (docs/spec.md 3), bandwidth first: one pass over the maps gives the
loss partial sums and the final gradients together.

Everything the per-cell gradients need besides the predictions is known before the main pass: the
normalisers (sum W, sum m_gap, sum m_piece, the number of valid confusers) depend only on
coordinates and padding, and the hard-negative relu gates only on 1+K bilinear samples per image.
So the forward computes them first, cheaply, and then reads each prediction once, writing the loss
partials and (when gradients are wanted) the gradients in the same pass.

Launches (no memset, no host sync, no data-dependent shapes; CUDA-graph capturable):

1. ``_gap_weights_kernel``, grid (cdiv(Hf*Wf, BLOCK), B): per block of cells, the labels (Gaussians
   from the coordinates, in registers) and the padding weight W; writes ``norm [P, 4]`` = (sum W,
   sum m_gap, sum m_piece, 0) with m = (Y > reg_threshold) W. With a padding mask it reads the
   mask once and writes W at grid resolution for the main pass: for a bool mask the number of
   padding pixels per cell as uint8 (exact, 1 byte per cell, while stride^2 <= 255), otherwise W
   in the compute dtype. valid_box and no padding need no map (W is analytic).
2. ``_gap_normalize_kernel``, one program: reduces ``norm`` in a fixed order and evaluates the hard
   negatives (bilinear samples at the gap centre and the K confusers; validity; margin ranking);
   writes into ``aux``: the hard-negative component, the 5 gradient scales, the denominators, the
   unit upstream gradient and the per-sample hard-negative coefficients (layout below).
3. ``_gap_main_kernel``, grid as 1: recomputes the labels, reads the predictions and W once,
   writes ``part [P, 8]`` (sum f_gap W, sum f_piece W, sum s_gap m_gap, sum s_piece m_piece,
   sum (1 - c) m_gap) and, for each prediction that needs one, its final gradient (scaled by
   ``aux`` and by the upstream gradient read from a pointer).
4. ``_gap_total_kernel``, one program: reduces ``part`` in a fixed order into the components and
   the total.

Backward: when the forward already wrote the gradients (float32/float64 predictions, eager),
``reduce.scale_gradients_`` multiplies them in place by the upstream gradient, read on the device: each
program returns at once when it is 1 (the usual ``loss.backward()``), so no bytes move. Otherwise
(float16/bfloat16 predictions, whose unscaled gradients would lose range; under torch.compile; a
second backward through a retained graph) launch 3 runs again with the real upstream gradient and
writes the gradients only.

Bytes per launch at B=1024, 64x128 maps (8192 cells), K=4, stride 4, bool padding mask (16 B/cell),
float32 predictions (8 channels, 32 B/cell) and gradients (32 B/cell); MB = 1e6 bytes:

======================================  ==========  ===========  ==============================
launch                                  reads (MB)  writes (MB)  what
======================================  ==========  ===========  ==============================
1 weights                                    134.2          8.9  mask; uint8 count map, partials
2 normalize (1 program)                        0.7          0.1  partials, 1+K samples/image
3 main (loss partials + gradients)           276.8        269.5  predictions + count map
4 total (1 program)                            1.0          0.0  partials
backward, upstream gradient == 1               0.3          0.0  one 4-byte read per program
--------------------------------------  ----------  -----------  ------------------------------
forward + backward                           413.0        278.5  691.5 MB
floor: predictions and mask read once,       402.7        268.4  671.1 MB: 97.0% of the floor
gradients written once
======================================  ==========  ===========  ==============================

With an upstream gradient other than 1 the in-place scaling reads and writes the gradients once
more (+537 MB: 55% of the floor). At B=8 the forward costs 4 launches and the backward 1 (the
previous design: 2 + 1) for 5.4 MB instead of 8.4 MB: at that size launch latency, not bytes,
sets the time, so the extra launches cost a few microseconds there and save nothing measurable.

``aux`` layout (compute dtype): [0:5] components (heatmap_gap, heatmap_piece, offset, angle,
hard_negative); [5:10] gradient scales w_heatmap / (sum W + eps), w_offset / (sum m_gap + eps),
w_offset / (sum m_piece + eps), w_angle / (sum m_gap + eps), w_hard_negative / max(#valid, 1);
[10] 1.0 (the upstream gradient of the forward's gradients); [11:14] the denominators
sum W + eps, sum m_gap + eps, sum m_piece + eps; [14:16] the hinge sum and the number of valid
confusers; [16:16+13B] a row per image (label centres,
offset targets, sin and cos of the target angle; with ``per_image``, the image's hinge sum, valid
confuser count and total); then coef [B, 1+K] (``hard_negative_block``) and the sample
coordinates [B, 1+K, 2].

Arithmetic runs in float32 (float64 when a prediction is float64); the loss comes back in that dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .labels import NO_PADDING, PADDING_MASK, VALID_BOX, padding_args
from .launch import compute_dtype, interpreting, launch, mask_view, next_pow2, option_arg
from .primitives import (
    cell_weight,
    coord_grid,
    cosine_terms,
    focal_terms,
    gaussian,
    hard_negative_block,
    keep_float64,
    label_center,
    offset_target,
    option_value,
    padding_block_sum,
    sigmoid,
    smooth_l1_terms,
    tent,
)

# aux layout (module docstring); constexprs, since @triton.jit code reads them.
AUX_HEAD: tl.constexpr = tl.constexpr(16)
IMG_COLS: tl.constexpr = tl.constexpr(13)  # per-image table columns
IMG_HARD: tl.constexpr = tl.constexpr(10)  # its hinge sum, valid count (11) and total (12)
NORM_COLS: tl.constexpr = tl.constexpr(4)  # columns of launch 1's partials
LOSS_COLS: tl.constexpr = tl.constexpr(8)  # columns of launch 3's partials
AUX_UNIT = 10  # aux[AUX_UNIT] = 1.0: the upstream gradient the forward's gradients are scaled by
# Partial rows per pass of the one-program kernels (tests lower it): 2048 halves the finalize time
# of 128 at B=1024 on an H100 (bench.tune_gap: 110 -> 41 us).
FINALIZE_BLOCK_P = 2048
# Padding-weight sources of the main pass (``cell_weight`` modes): besides NO_PADDING / VALID_BOX,
WEIGHT_MAP, COUNT_MAP = 3, 4  # the map launch 1 wrote (W itself, or padding pixels per cell)


class GapKernelOptions(NamedTuple):
    """The options the kernels read: ``fused_losses.GapLossOptions`` flattened once, at the kernel
    boundary (``center`` becomes ``cell``; the backend is not needed here). Each kernel reads the
    float options it names in its ``*_OPTIONS`` list, in that order."""

    stride: int
    sigma: float
    cell: bool
    alpha: float
    beta: float
    pos_threshold: float
    reg_threshold: float
    margin: float
    w_heatmap: float
    w_offset: float
    w_angle: float
    w_hard_negative: float
    from_logits: bool
    eps: float
    label_smoothing: float
    per_image: bool  # not a loss option: also each image's total (launches 2 and 4)


# The float options of each kernel, in the order of its parameters (also not specialised on).
_WEIGHTS_OPTIONS = ["sigma", "reg_threshold"]
_NORMALIZE_OPTIONS = ["margin", "w_heatmap", "w_offset", "w_angle", "w_hard_negative", "eps"]
_CELL_OPTIONS = [
    "sigma",
    "alpha",
    "beta",
    "pos_threshold",
    "reg_threshold",
    "eps",
    "label_smoothing",
]
_TOTAL_OPTIONS = ["w_heatmap", "w_offset", "w_angle", "w_hard_negative", "eps"]


def _option_args(opts: GapKernelOptions, names: list[str], cdt: torch.dtype) -> tuple:
    """The kernel arguments of the options ``names`` (``launch.option_arg``)."""
    return tuple(option_arg(getattr(opts, n), cdt) for n in names)


def main_block(n: int) -> tuple[int, int]:
    """(BLOCK, num_warps) of the passes over the maps: two cells per thread keep the main pass
    (labels, four heads, gradients) within the register budget (``python -m
    bench.compile_check``); 256 cells on 4 warps was the fastest of ``python -m bench.tune_gap``
    on an H100 (B=1024: main pass 326 us, against 480 us for 256 on 8 warps). The interpreter
    prefers wide blocks."""
    if interpreting():
        return min(triton.next_power_of_2(max(n, 1)), 4096), 4
    return min(triton.next_power_of_2(max(n, 1)), 256), 4


@triton.jit
def _cell_labels(
    gc_ptr, pc_ptr, b, ii, jj, sigma, STRIDE: tl.constexpr, CELL: tl.constexpr,
    cdt: tl.constexpr,
):  # fmt: skip
    """(Y_gap, Y_piece, u_gap, v_gap, u_piece, v_piece) at cells (ii, jj) of image b (centres
    contiguous [B, 2]); the grid coordinates stay in their own precision (float64 unrounded)."""
    b64 = b.to(tl.int64)
    ug = coord_grid(tl.load(gc_ptr + 2 * b64), STRIDE, cdt)
    vg = coord_grid(tl.load(gc_ptr + 2 * b64 + 1), STRIDE, cdt)
    up = coord_grid(tl.load(pc_ptr + 2 * b64), STRIDE, cdt)
    vp = coord_grid(tl.load(pc_ptr + 2 * b64 + 1), STRIDE, cdt)
    y_gap = gaussian(
        ii, jj, label_center(ug, CELL).to(cdt), label_center(vg, CELL).to(cdt), sigma, sigma
    )
    y_piece = gaussian(
        ii, jj, label_center(up, CELL).to(cdt), label_center(vp, CELL).to(cdt), sigma, sigma
    )
    return y_gap, y_piece, ug, vg, up, vp


@triton.jit(do_not_specialize=_WEIGHTS_OPTIONS)
def _gap_weights_kernel(
    gc_ptr, pc_ptr, pad_ptr, map_ptr, norm_ptr, HW, Wf, s_pad_b, s_pad_h, s_pad_w, sigma,
    reg_threshold, STRIDE: tl.constexpr, CELL: tl.constexpr,
    PADDING: tl.constexpr, COUNT: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Launch 1: normaliser partials of one block of cells, and W at grid resolution (mask mode)."""
    cdt: tl.constexpr = norm_ptr.dtype.element_ty
    pid = tl.program_id(0)
    b = tl.program_id(1)
    cells = pid * BLOCK + tl.arange(0, BLOCK)
    on = cells < HW
    i = cells // Wf
    j = cells % Wf
    y_gap, y_piece, _, _, _, _ = _cell_labels(
        gc_ptr, pc_ptr, b, i.to(cdt), j.to(cdt), option_value(sigma, cdt), STRIDE, CELL, cdt
    )
    if PADDING == 1:
        acc = padding_block_sum(pad_ptr, b, i, j, s_pad_b, s_pad_h, s_pad_w, on, STRIDE, cdt)
        w = 1.0 - acc / (STRIDE * STRIDE)
        dst = map_ptr + b.to(tl.int64) * HW + cells
        if COUNT:
            tl.store(dst, acc.to(map_ptr.dtype.element_ty), mask=on)
        else:
            tl.store(dst, w.to(map_ptr.dtype.element_ty), mask=on)
    else:
        w = cell_weight(pad_ptr, b, i, j, s_pad_b, s_pad_h, s_pad_w, on, STRIDE, PADDING, cdt)
    w = tl.where(on, w, 0.0)
    reg_t = option_value(reg_threshold, cdt)
    out = norm_ptr + (b.to(tl.int64) * tl.num_programs(0) + pid) * 4
    tl.store(out + 0, tl.sum(w, axis=0))
    tl.store(out + 1, tl.sum(tl.where(y_gap > reg_t, w, 0.0), axis=0))
    tl.store(out + 2, tl.sum(tl.where(y_piece > reg_t, w, 0.0), axis=0))
    tl.store(out + 3, tl.sum(tl.zeros_like(w), axis=0))


@triton.jit
def _column_sums(part_ptr, P, NCOL: tl.constexpr, BLOCK_P: tl.constexpr):
    """Column sums of ``part [P, NCOL]`` in a fixed order (deterministic), and the column ids."""
    cdt: tl.constexpr = part_ptr.dtype.element_ty
    rows = tl.arange(0, BLOCK_P)
    cols = tl.arange(0, NCOL)
    acc = tl.zeros([BLOCK_P, NCOL], cdt)
    for r0 in range(0, P, BLOCK_P):
        r = (r0 + rows).to(tl.int64)
        acc += tl.load(part_ptr + r[:, None] * NCOL + cols[None, :], mask=(r < P)[:, None], other=0)
    return tl.sum(acc, axis=0), cols


@triton.jit
def _pick(sums, cols, k):
    return tl.sum(tl.where(cols == k, sums, 0.0), axis=0)


@triton.jit(do_not_specialize=_NORMALIZE_OPTIONS)
def _gap_normalize_kernel(
    norm_ptr, P, hg_ptr, gc_ptr, pc_ptr, ga_ptr, conf_ptr, cmask_ptr, w_ptr, aux_ptr, B, K, Hf,
    Wf, s_hg_b, s_hg_h, s_hg_w, s_w_b, s_w_h, s_w_w, margin, w_heatmap, w_offset, w_angle,
    w_hard_negative, eps, STRIDE: tl.constexpr, CELL: tl.constexpr, FROM_LOGITS: tl.constexpr,
    W_MODE: tl.constexpr, HAS_CMASK: tl.constexpr, PER_IMAGE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Launch 2 (one program): denominators, gradient scales, the hard negatives (confuser
    validity reads W from launch 1's map, or analytically) and the per-image table of the main
    pass (label centres, offset targets, sin/cos of the angle, sample coordinates): scalar work
    whose correctly rounded divisions and sin/cos would otherwise cost the main pass registers.
    The small inputs are contiguous: centres [B, 2], angle [B], confusers [B, K, 2], mask [B, K]."""
    cdt: tl.constexpr = aux_ptr.dtype.element_ty
    sums, cols = _column_sums(norm_ptr, P, NORM_COLS, BLOCK_P)
    e = option_value(eps, cdt)
    heat_den = _pick(sums, cols, 0) + e
    gap_den = _pick(sums, cols, 1) + e
    piece_den = _pick(sums, cols, 2) + e
    coef_ptr = aux_ptr + AUX_HEAD + IMG_COLS * B
    hinge_sum, count = hard_negative_block(
        hg_ptr, s_hg_b, s_hg_h, s_hg_w, gc_ptr, conf_ptr, cmask_ptr, w_ptr, s_w_b, s_w_h, s_w_w,
        coef_ptr, aux_ptr + AUX_HEAD + IMG_HARD, B, K, Hf, Wf, option_value(margin, cdt), STRIDE,
        W_MODE, HAS_CMASK, FROM_LOGITS, IMG_COLS, PER_IMAGE, BLOCK_B, BLOCK_K, cdt,
    )  # fmt: skip
    uv_ptr = coef_ptr + B * (K + 1)
    rows = tl.arange(0, BLOCK_B)
    cols_k = tl.arange(0, BLOCK_K)
    for b0 in range(0, B, BLOCK_B):
        bb = b0 + rows
        on = bb < B
        b64 = bb.to(tl.int64)
        ug = coord_grid(tl.load(gc_ptr + 2 * b64, mask=on, other=0), STRIDE, cdt)
        vg = coord_grid(tl.load(gc_ptr + 2 * b64 + 1, mask=on, other=0), STRIDE, cdt)
        up = coord_grid(tl.load(pc_ptr + 2 * b64, mask=on, other=0), STRIDE, cdt)
        vp = coord_grid(tl.load(pc_ptr + 2 * b64 + 1, mask=on, other=0), STRIDE, cdt)
        theta = keep_float64(tl.load(ga_ptr + b64, mask=on, other=0), cdt)
        row = aux_ptr + AUX_HEAD + IMG_COLS * b64
        tl.store(row + 0, label_center(ug, CELL).to(cdt), mask=on)
        tl.store(row + 1, label_center(vg, CELL).to(cdt), mask=on)
        tl.store(row + 2, label_center(up, CELL).to(cdt), mask=on)
        tl.store(row + 3, label_center(vp, CELL).to(cdt), mask=on)
        tl.store(row + 4, offset_target(ug).to(cdt), mask=on)
        tl.store(row + 5, offset_target(vg).to(cdt), mask=on)
        tl.store(row + 6, offset_target(up).to(cdt), mask=on)
        tl.store(row + 7, offset_target(vp).to(cdt), mask=on)
        tl.store(row + 8, tl.sin(theta).to(cdt), mask=on)
        tl.store(row + 9, tl.cos(theta).to(cdt), mask=on)
        # Sample coordinates (u, v) [B, 1+K, 2]: the gap centre, then the confusers.
        uv = uv_ptr + b64 * (2 * (K + 1))
        tl.store(uv, ug.to(cdt), mask=on)
        tl.store(uv + 1, vg.to(cdt), mask=on)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + cols_k
            on2 = on[:, None] & (k < K)[None, :]
            nb = conf_ptr + 2 * (b64[:, None] * K + k[None, :].to(tl.int64))
            nu = coord_grid(tl.load(nb, mask=on2, other=0), STRIDE, cdt)
            nv = coord_grid(tl.load(nb + 1, mask=on2, other=0), STRIDE, cdt)
            dst = uv[:, None] + 2 * (1 + k[None, :])
            tl.store(dst, nu.to(cdt), mask=on2)
            tl.store(dst + 1, nv.to(cdt), mask=on2)
    hn_den = tl.maximum(count, 1.0)
    wo = option_value(w_offset, cdt)
    tl.store(aux_ptr + 4, hinge_sum / hn_den)
    tl.store(aux_ptr + 5, option_value(w_heatmap, cdt) / heat_den)
    tl.store(aux_ptr + 6, wo / gap_den)
    tl.store(aux_ptr + 7, wo / piece_den)
    tl.store(aux_ptr + 8, option_value(w_angle, cdt) / gap_den)
    tl.store(aux_ptr + 9, option_value(w_hard_negative, cdt) / hn_den)
    tl.store(aux_ptr + 10, tl.full([], 1.0, cdt))
    tl.store(aux_ptr + 11, heat_den)
    tl.store(aux_ptr + 12, gap_den)
    tl.store(aux_ptr + 13, piece_den)
    tl.store(aux_ptr + 14, hinge_sum)
    tl.store(aux_ptr + 15, count)


@triton.jit
def _store_grad(ptr, g, mask):
    """Store a gradient in its input's dtype; a float64 value bound for a narrower dtype goes
    through float32 (one float64 head makes the whole problem float64, and Triton's interpreter
    converts float64 to bfloat16 wrongly)."""
    dt = ptr.dtype.element_ty
    if g.dtype == tl.float64 and dt != tl.float64:
        g = g.to(tl.float32)
    tl.store(ptr, g.to(dt), mask=mask)


@triton.jit
def _samples_grad(coef_ptr, uv_ptr, b, ii, jj, K):
    """sum over the 1+K samples s of image b of coef[b, s] tent(u_s - j) tent(v_s - i): the
    bilinear samples' gradient at cells (ii, jj), without atomics."""
    cdt: tl.constexpr = ii.dtype
    base = b.to(tl.int64) * (K + 1)
    g = tl.zeros(ii.shape, cdt)
    for s in range(0, K + 1):
        c = tl.load(coef_ptr + base + s)
        u = tl.load(uv_ptr + 2 * (base + s))
        v = tl.load(uv_ptr + 2 * (base + s) + 1)
        g += tent(u - jj) * tent(v - ii) * c
    return g


@triton.jit(do_not_specialize=_CELL_OPTIONS)
def _gap_main_kernel(
    hg_ptr, hp_ptr, off_ptr, ang_ptr, w_ptr, aux_ptr, go_ptr, part_ptr,
    g_hg_ptr, g_hp_ptr, g_off_ptr, g_ang_ptr, HW, Wf, K,
    s_hg_b, s_hg_h, s_hg_w, s_hp_b, s_hp_h, s_hp_w, s_off_b, s_off_c, s_off_h, s_off_w,
    s_ang_b, s_ang_c, s_ang_h, s_ang_w, s_w_b, s_w_h, s_w_w,
    sigma, alpha, beta, pos_threshold, reg_threshold, eps, label_smoothing,
    STRIDE: tl.constexpr, FROM_LOGITS: tl.constexpr, W_MODE: tl.constexpr,
    WRITE_LOSS: tl.constexpr, NEED_HG: tl.constexpr, NEED_HP: tl.constexpr,
    NEED_OFF: tl.constexpr, NEED_ANG: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Launch 3: loss partials and/or final gradients of one block of cells of one image.

    Per-image values come from launch 2's table in ``aux``. Heads are handled one after another
    (load, value, gradient, store, reduce) so that only one head's values are live at a time.
    Gradients go to contiguous [B, C, Hf, Wf] outputs.

    A cell of W = 0 (heatmaps) or m = 0 (offsets, angle) is not evaluated (docs/spec.md
    3.3.1-3.3.3): the term reads a harmless value there instead of the prediction (0.5, the offset
    target, (0, 1)) and the gradient is a select to 0, so whatever the prediction holds (NaN, inf)
    the cell adds exactly 0 to the value and to the gradient. The hard negatives are unchanged
    (they read the gap heatmap at their samples, padded or not; a cell no sample reads gets 0 from
    them, also with FROM_LOGITS at a NaN logit).
    """
    cdt: tl.constexpr = aux_ptr.dtype.element_ty
    pid = tl.program_id(0)
    b = tl.program_id(1)
    B = tl.num_programs(1)
    b64 = b.to(tl.int64)
    cells = pid * BLOCK + tl.arange(0, BLOCK)
    on = cells < HW
    i = cells // Wf
    j = cells % Wf
    ii = i.to(cdt)
    jj = j.to(cdt)
    i64 = i.to(tl.int64)
    j64 = j.to(tl.int64)
    alpha = option_value(alpha, cdt)
    beta = option_value(beta, cdt)
    pos_threshold = option_value(pos_threshold, cdt)
    eps = option_value(eps, cdt)
    reg_t = option_value(reg_threshold, cdt)
    sig = option_value(sigma, cdt)
    smooth = option_value(label_smoothing, cdt)
    row = aux_ptr + AUX_HEAD + IMG_COLS * b64
    y_gap = gaussian(ii, jj, tl.load(row + 0), tl.load(row + 1), sig, sig)
    y_piece = gaussian(ii, jj, tl.load(row + 2), tl.load(row + 3), sig, sig)
    w = cell_weight(w_ptr, b, i, j, s_w_b, s_w_h, s_w_w, on, STRIDE, W_MODE, cdt)
    w = tl.where(on, w, 0.0)
    m_gap = tl.where(y_gap > reg_t, w, 0.0)
    m_piece = tl.where(y_piece > reg_t, w, 0.0)
    go = tl.load(go_ptr).to(cdt)
    if WRITE_LOSS:
        out = part_ptr + (b64 * tl.num_programs(0) + pid) * 8

    # Heatmap of the gap: focal term, plus the hard-negative bilinear gradient. The focal term
    # reads 0.5 instead of the prediction where W = 0 (not evaluated: spec 3.3.1); the hard
    # negatives read the prediction itself.
    x = tl.load(hg_ptr + b64 * s_hg_b + i64 * s_hg_h + j64 * s_hg_w, mask=on, other=0.5).to(cdt)
    f, df, _, _, _ = focal_terms(
        tl.where(w != 0, x, 0.5), y_gap, alpha, beta, pos_threshold, eps, smooth, FROM_LOGITS
    )
    if WRITE_LOSS:
        tl.store(out + 0, tl.sum(tl.where(on, f * w, 0.0), axis=0))
    if NEED_HG:
        g = tl.where(w != 0, df * w * (tl.load(aux_ptr + 5) * go), 0.0)
        coef_ptr = aux_ptr + AUX_HEAD + IMG_COLS * B
        hn = _samples_grad(coef_ptr, coef_ptr + B * (K + 1), b, ii, jj, K)
        hn = hn * (tl.load(aux_ptr + 9) * go)
        if FROM_LOGITS:  # sigmoid' at the prediction, only where a sample reads the cell
            hn = tl.where(hn != 0, hn * (sigmoid(x) * sigmoid(-x)), 0.0)
        _store_grad(g_hg_ptr + b64 * HW + cells, g + hn, on)

    # Heatmap of the piece.
    x = tl.load(hp_ptr + b64 * s_hp_b + i64 * s_hp_h + j64 * s_hp_w, mask=on, other=0.5)
    f, df, _, _, _ = focal_terms(
        tl.where(w != 0, x.to(cdt), 0.5), y_piece, alpha, beta, pos_threshold, eps, smooth,
        FROM_LOGITS,
    )  # fmt: skip
    if WRITE_LOSS:
        tl.store(out + 1, tl.sum(tl.where(on, f * w, 0.0), axis=0))
    if NEED_HP:
        g = tl.where(w != 0, df * w * (tl.load(aux_ptr + 5) * go), 0.0)
        _store_grad(g_hp_ptr + b64 * HW + cells, g, on)

    # Offsets: the same target at every supervised cell of the image. Where m = 0 a channel
    # reads its target instead of the prediction (d = 0: not evaluated, spec 3.3.2); a
    # non-finite target (spec 8) still gives NaN times m = 0. Gradients there are selected to 0.
    o = off_ptr + b64 * s_off_b + i64 * s_off_h + j64 * s_off_w
    g_off = g_off_ptr + b64 * 4 * HW + cells
    live = m_gap != 0
    sg = m_gap * (tl.load(aux_ptr + 6) * go)
    t = tl.load(row + 4)
    s0, d0 = smooth_l1_terms(tl.where(live, tl.load(o, mask=on, other=0).to(cdt), t) - t, 1.0)
    if NEED_OFF:
        _store_grad(g_off, tl.where(live, d0 * sg, 0.0), on)
    t = tl.load(row + 5)
    s1, d1 = smooth_l1_terms(
        tl.where(live, tl.load(o + s_off_c, mask=on, other=0).to(cdt), t) - t, 1.0
    )
    if NEED_OFF:
        _store_grad(g_off + HW, tl.where(live, d1 * sg, 0.0), on)
    if WRITE_LOSS:
        tl.store(out + 2, tl.sum(tl.where(on, (s0 + s1) * m_gap, 0.0), axis=0))
    live = m_piece != 0
    sp = m_piece * (tl.load(aux_ptr + 7) * go)
    t = tl.load(row + 6)
    s2, d2 = smooth_l1_terms(
        tl.where(live, tl.load(o + 2 * s_off_c, mask=on, other=0).to(cdt), t) - t, 1.0
    )
    if NEED_OFF:
        _store_grad(g_off + 2 * HW, tl.where(live, d2 * sp, 0.0), on)
    t = tl.load(row + 7)
    s3, d3 = smooth_l1_terms(
        tl.where(live, tl.load(o + 3 * s_off_c, mask=on, other=0).to(cdt), t) - t, 1.0
    )
    if NEED_OFF:
        _store_grad(g_off + 3 * HW, tl.where(live, d3 * sp, 0.0), on)
    if WRITE_LOSS:
        tl.store(out + 3, tl.sum(tl.where(on, (s2 + s3) * m_piece, 0.0), axis=0))

    # Angle: (0, 1) instead of the prediction where m_gap = 0 (not evaluated, spec 3.3.3).
    live = m_gap != 0
    a = ang_ptr + b64 * s_ang_b + i64 * s_ang_h + j64 * s_ang_w
    a0 = tl.where(live, tl.load(a, mask=on, other=1).to(cdt), 0.0)
    a1 = tl.where(live, tl.load(a + s_ang_c, mask=on, other=1).to(cdt), 1.0)
    one_minus_c, dc0, dc1 = cosine_terms(a0, a1, tl.load(row + 8), tl.load(row + 9))
    if WRITE_LOSS:
        tl.store(out + 4, tl.sum(tl.where(on, one_minus_c * m_gap, 0.0), axis=0))
        zero = tl.sum(tl.zeros_like(w), axis=0)
        tl.store(out + 5, zero)
        tl.store(out + 6, zero)
        tl.store(out + 7, zero)
    if NEED_ANG:
        sa = m_gap * (tl.load(aux_ptr + 8) * go)
        g_ang = g_ang_ptr + b64 * 2 * HW + cells
        _store_grad(g_ang, tl.where(live, dc0 * sa, 0.0), on)
        _store_grad(g_ang + HW, tl.where(live, dc1 * sa, 0.0), on)


@triton.jit
def _per_image_totals(
    part_ptr, norm_ptr, aux_ptr, B, NBLK, wh, wo, wa, wn, eps, BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr, cdt: tl.constexpr,
):  # fmt: skip
    """Each image's total, every term normalised within that image, into column IMG_HARD + 2 of
    its table row: the rows b * NBLK ... (b + 1) * NBLK - 1 of launch 1's partials ``norm`` (sum W,
    sum m_gap, sum m_piece) and of launch 3's ``part`` are that image's, summed in a fixed order;
    the hard-negative term is its hinge sum / max(valid count, 1) (launch 2)."""
    rows = tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_N)
    for b0 in range(0, B, BLOCK_B):
        b = b0 + rows
        b_on = b < B
        b64 = b.to(tl.int64)
        s_w = tl.zeros([BLOCK_B], cdt)
        s_mg = tl.zeros([BLOCK_B], cdt)
        s_mp = tl.zeros([BLOCK_B], cdt)
        f_g = tl.zeros([BLOCK_B], cdt)
        f_p = tl.zeros([BLOCK_B], cdt)
        o_g = tl.zeros([BLOCK_B], cdt)
        o_p = tl.zeros([BLOCK_B], cdt)
        a_g = tl.zeros([BLOCK_B], cdt)
        for n0 in range(0, NBLK, BLOCK_N):
            n = n0 + cols
            on = b_on[:, None] & (n < NBLK)[None, :]
            r = b64[:, None] * NBLK + n[None, :]
            nrm = norm_ptr + r * NORM_COLS
            prt = part_ptr + r * LOSS_COLS
            s_w += tl.sum(tl.load(nrm, mask=on, other=0), axis=1)
            s_mg += tl.sum(tl.load(nrm + 1, mask=on, other=0), axis=1)
            s_mp += tl.sum(tl.load(nrm + 2, mask=on, other=0), axis=1)
            f_g += tl.sum(tl.load(prt, mask=on, other=0), axis=1)
            f_p += tl.sum(tl.load(prt + 1, mask=on, other=0), axis=1)
            o_g += tl.sum(tl.load(prt + 2, mask=on, other=0), axis=1)
            o_p += tl.sum(tl.load(prt + 3, mask=on, other=0), axis=1)
            a_g += tl.sum(tl.load(prt + 4, mask=on, other=0), axis=1)
        row = aux_ptr + AUX_HEAD + IMG_COLS * b64 + IMG_HARD
        hinge = tl.load(row, mask=b_on, other=0)
        count = tl.load(row + 1, mask=b_on, other=0)
        gap_den = s_mg + eps
        total = (
            wh * ((f_g + f_p) / (s_w + eps))
            + wo * (o_g / gap_den + o_p / (s_mp + eps))
            + wa * (a_g / gap_den)
            + wn * (hinge / tl.maximum(count, 1.0))
        )
        tl.store(row + 2, total, mask=b_on)


@triton.jit(do_not_specialize=[*_TOTAL_OPTIONS, "B", "NBLK"])
def _gap_total_kernel(
    part_ptr, P, norm_ptr, aux_ptr, total_ptr, B, NBLK, w_heatmap, w_offset, w_angle,
    w_hard_negative, eps, PER_IMAGE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Launch 4 (one program): the components and the total from the main pass's partials; with
    PER_IMAGE, also each image's total (:func:`_per_image_totals`)."""
    cdt: tl.constexpr = aux_ptr.dtype.element_ty
    if PER_IMAGE:
        _per_image_totals(
            part_ptr, norm_ptr, aux_ptr, B, NBLK, option_value(w_heatmap, cdt),
            option_value(w_offset, cdt), option_value(w_angle, cdt),
            option_value(w_hard_negative, cdt), option_value(eps, cdt), BLOCK_B, BLOCK_N, cdt,
        )  # fmt: skip
    sums, cols = _column_sums(part_ptr, P, LOSS_COLS, BLOCK_P)
    heat_den = tl.load(aux_ptr + 11)
    gap_den = tl.load(aux_ptr + 12)
    piece_den = tl.load(aux_ptr + 13)
    l_heat_gap = _pick(sums, cols, 0) / heat_den
    l_heat_piece = _pick(sums, cols, 1) / heat_den
    l_offset = _pick(sums, cols, 2) / gap_den + _pick(sums, cols, 3) / piece_den
    l_angle = _pick(sums, cols, 4) / gap_den
    l_hard = tl.load(aux_ptr + 4)
    total = (
        option_value(w_heatmap, cdt) * (l_heat_gap + l_heat_piece)
        + option_value(w_offset, cdt) * l_offset
        + option_value(w_angle, cdt) * l_angle
        + option_value(w_hard_negative, cdt) * l_hard
    )
    tl.store(total_ptr, total)
    tl.store(aux_ptr + 0, l_heat_gap)
    tl.store(aux_ptr + 1, l_heat_piece)
    tl.store(aux_ptr + 2, l_offset)
    tl.store(aux_ptr + 3, l_angle)


# ----------------------------------------------------------------------------------- launchers


def weight_map_spec(padding_mask: torch.Tensor | None, stride: int, cdt: torch.dtype):
    """dtype of the grid-resolution map launch 1 writes for this padding (None: no map)."""
    if padding_mask is None:
        return None
    if padding_mask.dtype == torch.bool and stride * stride <= 255:
        return torch.uint8
    return cdt


def _confuser_args(confusers, confuser_mask, dummy):
    """(confusers, K, mask, has mask), contiguous (a copy of a few numbers, where one is needed)."""
    if confusers is None or confusers.shape[1] == 0:
        return dummy, 0, dummy, False
    if confuser_mask is None:
        return confusers.contiguous(), confusers.shape[1], dummy, False
    return confusers.contiguous(), confusers.shape[1], mask_view(confuser_mask).contiguous(), True


def grad_outputs(preds: tuple[torch.Tensor, ...], need: tuple[bool, ...], shared: bool = True):
    """Contiguous gradient outputs for the predictions in ``need`` (None for the others), as
    views of one flat buffer (returned too; else None) when ``shared`` and they share a dtype."""
    wanted = [x for x, n in zip(preds, need) if n]
    if not wanted:
        return (None,) * len(preds), None
    if not shared or len({x.dtype for x in wanted}) > 1:
        grads = tuple(torch.empty(x.shape, dtype=x.dtype, device=x.device) if n else None
                      for x, n in zip(preds, need))  # fmt: skip
        return grads, None
    buf = torch.empty(
        sum(x.numel() for x in wanted), dtype=wanted[0].dtype, device=wanted[0].device
    )
    return split_gradients(buf, preds, need), buf


def split_gradients(buf: torch.Tensor, preds: tuple[torch.Tensor, ...], need: tuple[bool, ...]):
    """The per-prediction views of the flat gradient buffer of :func:`grad_outputs` (None where
    ``need`` is False), in prediction order."""
    grads, at = [], 0
    for x, n in zip(preds, need):
        grads.append(buf[at : at + x.numel()].view(x.shape) if n else None)
        at += x.numel() if n else 0
    return tuple(grads)


def _main_launch(preds, k, wsrc, aux, go, part, grads, opts: GapKernelOptions):
    """Launch 3 (forward: ``part`` given; backward recompute: ``part`` None)."""
    hg, hp, off, ang = preds
    w_src, s_w_b, s_w_h, s_w_w, w_mode = wsrc
    b, _, hf, wf = hg.shape
    hw = hf * wf
    block, warps = main_block(hw)
    dummy = aux
    cdt = compute_dtype(*preds)
    launch(
        _gap_main_kernel,
        (triton.cdiv(hw, block), b),
        hg, hp, off, ang, w_src, aux, go,
        part if part is not None else dummy,
        *(g if g is not None else dummy for g in grads),
        hw, wf, k,
        hg.stride(0), hg.stride(2), hg.stride(3), hp.stride(0), hp.stride(2), hp.stride(3),
        *off.stride(), *ang.stride(), s_w_b, s_w_h, s_w_w,
        *_option_args(opts, _CELL_OPTIONS, cdt),
        STRIDE=opts.stride, FROM_LOGITS=bool(opts.from_logits), W_MODE=w_mode,
        WRITE_LOSS=part is not None, NEED_HG=grads[0] is not None, NEED_HP=grads[1] is not None,
        NEED_OFF=grads[2] is not None, NEED_ANG=grads[3] is not None,
        BLOCK=block, num_warps=warps,
    )  # fmt: skip


def _weight_source(weight_map, valid_box, hg):
    """(tensor, s_b, s_h, s_w, mode) of W for the main pass: the map of launch 1, else analytic."""
    if weight_map is not None and weight_map.numel() > 0:
        mode = COUNT_MAP if weight_map.dtype == torch.uint8 else WEIGHT_MAP
        hw = hg.shape[2] * hg.shape[3]
        return weight_map, hw, hg.shape[3], 1, mode
    pad, s_b, s_h, s_w, mode = padding_args(None, valid_box, hg)
    assert mode != PADDING_MASK
    return pad, s_b, s_h, s_w, mode


def gap_detection_forward(
    inputs: tuple[torch.Tensor | None, ...],
    opts: GapKernelOptions,
    grads: tuple[torch.Tensor | None, ...] = (None, None, None, None),
    sync=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Launches 1 to 4 over ``inputs`` (the 11 tensors of ``fused_losses.GapInputs``). Returns
    (total 0-dim, aux [``aux_size(B, K)``], weight map [B*Hf*Wf] or None); writes the final
    gradients (upstream gradient 1) into the given ``grads`` (None: not wanted).

    ``sync`` (data parallel; ``sums -> the sums over every rank``): between launches 2 and 3 the
    denominators (sum W, sum m_gap, sum m_piece, valid confusers: one all-reduce of 4 numbers)
    are summed over the ranks and the gradient scales of ``aux`` recomputed from them
    (:func:`_global_denominators`), so the main pass writes this rank's share of the global
    loss's gradient."""
    heatmap_gap, heatmap_piece, offset, angle = inputs[:4]
    gap_center, piece_center, gap_angle = (x.contiguous() for x in inputs[4:7])  # [B,2], [B]
    confusers, confuser_mask, padding_mask, valid_box = inputs[7:]
    stride = opts.stride
    preds = (heatmap_gap, heatmap_piece, offset, angle)
    hg = heatmap_gap
    b, _, hf, wf = hg.shape
    hw = hf * wf
    cdt = compute_dtype(*preds)
    dev = hg.device
    block, warps = main_block(hw)
    nblk = triton.cdiv(hw, block)
    pad, s_pad_b, s_pad_h, s_pad_w, mode = padding_args(padding_mask, valid_box, hg)
    map_dtype = weight_map_spec(padding_mask, stride, cdt)
    wmap = torch.empty(b * hw, dtype=map_dtype, device=dev) if map_dtype is not None else None
    norm = torch.empty(b * nblk, 4, dtype=cdt, device=dev)
    launch(
        _gap_weights_kernel,
        (nblk, b),
        gap_center, piece_center, pad, wmap if wmap is not None else norm, norm, hw, wf,
        s_pad_b, s_pad_h, s_pad_w, *_option_args(opts, _WEIGHTS_OPTIONS, cdt),
        STRIDE=stride, CELL=bool(opts.cell), PADDING=mode, COUNT=map_dtype == torch.uint8,
        BLOCK=block, num_warps=warps,
    )  # fmt: skip

    cf, k, cm, has_cm = _confuser_args(confusers, confuser_mask, hg)
    aux = torch.empty(aux_size(b, k), dtype=cdt, device=dev)
    block_k = min(next_pow2(k), 32)
    block_b = max(1, min(next_pow2(b), 256 // block_k))
    wsrc = _weight_source(wmap, valid_box, hg)
    launch(
        _gap_normalize_kernel,
        (1,),
        norm, norm.shape[0], hg, gap_center, piece_center, gap_angle, cf, cm, wsrc[0], aux, b, k,
        hf, wf, hg.stride(0), hg.stride(2), hg.stride(3), *wsrc[1:4],
        *_option_args(opts, _NORMALIZE_OPTIONS, cdt),
        STRIDE=stride, CELL=bool(opts.cell), FROM_LOGITS=bool(opts.from_logits), W_MODE=wsrc[4],
        HAS_CMASK=has_cm, PER_IMAGE=bool(opts.per_image),
        BLOCK_P=FINALIZE_BLOCK_P, BLOCK_B=block_b, BLOCK_K=block_k, num_warps=4,
    )  # fmt: skip

    if sync is not None:
        _global_denominators(aux, norm, opts, sync)
    part = torch.empty(b * nblk, 8, dtype=cdt, device=dev)
    _main_launch(preds, k, wsrc, aux, aux[AUX_UNIT:], part, grads, opts)
    total = torch.empty((), dtype=cdt, device=dev)
    launch(
        _gap_total_kernel,
        (1,),
        part, part.shape[0], norm, aux, total, b, nblk, *_option_args(opts, _TOTAL_OPTIONS, cdt),
        PER_IMAGE=bool(opts.per_image), BLOCK_P=FINALIZE_BLOCK_P, BLOCK_B=16,
        BLOCK_N=min(next_pow2(nblk), 32) if opts.per_image else 1, num_warps=4,
    )  # fmt: skip
    return total, aux, wmap


def _global_denominators(aux: torch.Tensor, norm: torch.Tensor, opts: GapKernelOptions, sync):
    """aux[4:14] (hard-negative term, gradient scales, denominators) from the denominators summed
    over every rank: launch 1's column sums and launch 2's valid confuser count; the hinge sum
    stays this rank's."""
    local = torch.cat([norm.sum(0)[:3], aux[15:16]])
    sum_w, m_gap, m_piece, count = sync(local).unbind(0)
    heat_den, gap_den, piece_den = sum_w + opts.eps, m_gap + opts.eps, m_piece + opts.eps
    hn_den = count.clamp_min(1)
    wo = opts.w_offset
    aux[4:14] = torch.stack([
        aux[14] / hn_den, opts.w_heatmap / heat_den, wo / gap_den, wo / piece_den,
        opts.w_angle / gap_den, opts.w_hard_negative / hn_den, aux[10], heat_den, gap_den,
        piece_den,
    ])  # fmt: skip


def gap_detection_backward(
    grad_total: torch.Tensor,
    aux: torch.Tensor,
    weight_map: torch.Tensor | None,
    preds: tuple[torch.Tensor, ...],
    confusers: torch.Tensor | None,
    valid_box: torch.Tensor | None,
    need: tuple[bool, ...],
    opts: GapKernelOptions,
) -> tuple[torch.Tensor | None, ...]:
    """Launch 3 again, gradients only, scaled by ``grad_total`` (0-dim, read in the kernel):
    contiguous, in each prediction's dtype, None where ``need`` is False."""
    grads, _ = grad_outputs(preds, need, shared=False)  # op outputs may not alias
    k = confusers.shape[1] if confusers is not None else 0
    wsrc = _weight_source(weight_map, valid_box, preds[0])
    _main_launch(preds, k, wsrc, aux, grad_total, None, grads, opts)
    return grads


def per_image_totals(aux: torch.Tensor, batch: int) -> torch.Tensor:
    """The [B] per-image totals the forward wrote into ``aux`` (``per_image`` option), a view."""
    table = aux[AUX_HEAD.value : AUX_HEAD.value + IMG_COLS.value * batch]
    return table.view(batch, IMG_COLS.value)[:, IMG_HARD.value + 2]


def aux_size(batch: int, confusers: int) -> int:
    """Entries of ``aux`` (layout in the module docstring)."""
    return AUX_HEAD.value + batch * (IMG_COLS.value + 3 * (confusers + 1))


__all__ = [
    "AUX_HEAD",
    "NO_PADDING",
    "VALID_BOX",
    "GapKernelOptions",
    "gap_detection_backward",
    "gap_detection_forward",
    "grad_outputs",
    "split_gradients",
    "weight_map_spec",
]
