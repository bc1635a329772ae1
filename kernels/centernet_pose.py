"""Triton kernel of CenterNet's multi-pose targets (docs/centernet.md "Multi-pose"): every target
of a batch in one launch.

Grid ``(B * tiles,)``: the program of (image b, tile of BLOCK cells) owns that tile of every map
of image b (``hm`` [K], ``hm_hp`` [J], ``dense_hps`` [2J], ``dense_hps_mask`` [2J]). It zeroes
them, then walks the N boxes in CenterNet's object order (``datasets/sample/multi_pose.py``), so
that the order-dependent steps come out as CenterNet's:

    box k kept (ctdet's geometry, ``_box_geometry``):
      no labelled joint -> hm[cls, centre] = 0.9999 (before anything else of box k)
      joint j labelled and inside the map after / down_ratio:
        dense_hp: on the cells of the umich window (radius r) of the centre where the float64
                  Gaussian >= hm[cls] (hm before box k's Gaussian), dense_hps[2j:2j+2] =
                  (pt - ct_int) - (cell - ct_int); dense_hps_mask[2j], [2j+1] max-merge the
                  Gaussian of the centre
        hm_hp[j] max-merges the Gaussian of int(pt)
      hm[cls] max-merges the Gaussian of the centre

Gaussians: ``draw_umich_gaussian`` (radius r, sigma (2r + 1) / 6, float64, rounded into the map),
or with MSE ``draw_msra_gaussian`` (sigma ``hm_gauss``; window corners truncated towards zero; the
exponent in the map's dtype, correctly rounded, and the exp in float64). A box or joint whose
window misses the tile is skipped with a scalar branch. The maps are read and written in place by
their owner (no atomics). The programs of tile 0 also write image b's per-box and per-joint
outputs (``wh reg ind reg_mask hps hps_mask hp_offset hp_ind hp_mask``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .centernet import _box_geometry, _radius_consts
from .launch import compute_dtype, f64_bits, interpreting, launch, mask_view, next_pow2
from .primitives import option

NO_JOINT_PEAK: tl.constexpr = tl.constexpr(0.9999)


@triton.jit
def _umich(col, row, cx, cy, r):
    """(float64 Gaussian, window) of draw_umich_gaussian at the integer centre (cx, cy)."""
    dx = col - cx
    dy = row - cy
    win = (tl.abs(dx) <= r) & (tl.abs(dy) <= r)
    sigma = (2 * r + 1).to(tl.float64) / 6.0
    g = tl.exp(-(dx * dx + dy * dy).to(tl.float64) / (2.0 * sigma * sigma))
    return g, win


@triton.jit
def _msra(col, row, cx, cy, sigma, Hm, Wm, cdt: tl.constexpr):
    """(float64 Gaussian, window) of draw_msra_gaussian at the integer centre (cx, cy)."""
    tmp = 3.0 * sigma  # float64
    half = tl.floor((2.0 * tmp + 1.0) / 2.0)
    ul_x = (cx.to(tl.float64) - tmp).to(tl.int32)  # int(): towards zero
    ul_y = (cy.to(tl.float64) - tmp).to(tl.int32)
    br_x = (cx.to(tl.float64) + tmp + 1.0).to(tl.int32)
    br_y = (cy.to(tl.float64) + tmp + 1.0).to(tl.int32)
    drawn = (ul_x < Wm) & (ul_y < Hm) & (br_x >= 0) & (br_y >= 0)
    win = (col >= tl.maximum(ul_x, 0)) & (col < tl.minimum(br_x, Wm))
    win = win & (row >= tl.maximum(ul_y, 0)) & (row < tl.minimum(br_y, Hm)) & drawn
    gx = (col - ul_x).to(cdt) - half.to(cdt)
    gy = (row - ul_y).to(cdt) - half.to(cdt)
    two_s2 = (2.0 * (sigma * sigma)).to(cdt)  # numpy: 2 * sigma ** 2
    num = -(gx * gx + gy * gy)
    if cdt == tl.float32:
        e = tl.math.div_rn(num, two_s2 + tl.zeros_like(num))
    else:
        e = num / two_s2
    return tl.exp(e.to(tl.float64)), win


@triton.jit
def _stamp(col, row, cx, cy, r, sigma, Hm, Wm, MSE: tl.constexpr, cdt: tl.constexpr):
    if MSE:
        g, win = _msra(col, row, cx, cy, sigma, Hm, Wm, cdt)
    else:
        g, win = _umich(col, row, cx, cy, r)
    return tl.where(win, g, 0.0).to(cdt)


@triton.jit
def _max_nan(a, b):
    """max(a, b) with a NaN of either kept, as ``torch.maximum`` (``tl.maximum`` may drop it)."""
    return tl.where((a > b) | (a != a), a, b)


@triton.jit
def _hits(cy, reach, row_lo, row_hi):
    """Whether rows [cy - reach, cy + reach] meet the tile's rows [row_lo, row_hi]."""
    return (cy - reach <= row_hi) & (cy + reach >= row_lo)


@triton.jit
def _joint(kp_ptr, s_kb, s_kn, s_kj, b, k, j, ctx, cty, Hm, Wm, down_ratio, cdt: tl.constexpr):
    """Joint j of box k: (labelled and inside the map, x, y in map cells, int(x), int(y))."""
    p = kp_ptr + b * s_kb + k * s_kn + j * s_kj
    dr = down_ratio + tl.zeros([], cdt)
    x = tl.load(p).to(cdt)
    y = tl.load(p + 1).to(cdt)
    v = tl.load(p + 2).to(cdt)
    if cdt == tl.float32:
        x = tl.math.div_rn(x, dr)
        y = tl.math.div_rn(y, dr)
    else:
        x = x / dr
        y = y / dr
    ok = (v > 0) & (x >= 0) & (x < Wm) & (y >= 0) & (y < Hm)
    return ok, x, y, x.to(tl.int32), y.to(tl.int32)


@triton.jit
def _pose_box(
    bp, s_bn, s_bk, lab_ptr, s_lb, s_ln, msk_ptr, s_mb, s_mn, k_ptr, b, k, C, Hm, Wm,
    down_ratio, HAS_MASK: tl.constexpr, cdt: tl.constexpr,
):  # fmt: skip
    """Box k of image b: (kept: ctdet's geometry, a label in [0, C) and box_mask; its label;
    ``_box_geometry``'s centre, integer centre, size and radius)."""
    lab = tl.load(lab_ptr + b * s_lb + k * s_ln)
    live = (lab >= 0) & (lab < C)
    if HAS_MASK:
        live = live & (tl.load(msk_ptr + b * s_mb + k * s_mn) != 0)
    keep, cx, cy, cxi, cyi, w, h, r = _box_geometry(
        tl.load(bp + k * s_bn).to(cdt), tl.load(bp + k * s_bn + s_bk).to(cdt),
        tl.load(bp + k * s_bn + 2 * s_bk).to(cdt), tl.load(bp + k * s_bn + 3 * s_bk).to(cdt),
        down_ratio, Hm, Wm, k_ptr, cdt,
    )  # fmt: skip
    return keep & live, lab, cx, cy, cxi, cyi, w, h, r


@triton.jit
def _merge_mask(dmask_ptr, b, j, J, HW, ps, on, gm):
    """dense_hps_mask[2j] and [2j + 1] max-merge the Gaussian gm (owner of the tile; a NaN
    propagates, as in the torch backend)."""
    for a in range(2):
        mp = dmask_ptr + (b * 2 * J + 2 * j + a) * HW + ps
        tl.store(mp, _max_nan(tl.load(mp, mask=on), gm), mask=on)


@triton.jit(do_not_specialize=["hm_gauss"])
def _pose_targets_kernel(
    box_ptr, s_bb, s_bn, s_bk, kp_ptr, s_kb, s_kn, s_kj, lab_ptr, s_lb, s_ln, msk_ptr, s_mb, s_mn,
    k_ptr, hm_ptr, hmhp_ptr, dense_ptr, dmask_ptr, wh_ptr, reg_ptr, ind_ptr, rm_ptr, hps_ptr,
    hpsm_ptr, hpo_ptr, hpi_ptr, hpm_ptr, N, C, J, Hm, Wm, down_ratio, n_tiles, hm_gauss,
    HAS_MASK: tl.constexpr, DENSE: tl.constexpr, MSE: tl.constexpr, BLOCK: tl.constexpr,
    BLOCK_J: tl.constexpr,
):  # fmt: skip
    """Every multi-pose target of image b on this program's tile (module docstring)."""
    cdt: tl.constexpr = hm_ptr.dtype.element_ty
    pid = tl.program_id(0)
    b = (pid // n_tiles).to(tl.int64)
    tile = pid % n_tiles
    HW = Hm * Wm
    ps = tile * BLOCK + tl.arange(0, BLOCK)
    on = ps < HW
    row = ps // Wm
    col = ps % Wm
    row_lo = (tile * BLOCK) // Wm
    row_hi = tl.minimum(tile * BLOCK + BLOCK - 1, HW - 1) // Wm
    zeros = tl.zeros([BLOCK], cdt)
    for c in range(C):
        tl.store(hm_ptr + (b * C + c) * HW + ps, zeros, mask=on)
    for j in range(J):
        tl.store(hmhp_ptr + (b * J + j) * HW + ps, zeros, mask=on)
        if DENSE:
            for a in range(2):
                tl.store(dense_ptr + (b * 2 * J + 2 * j + a) * HW + ps, zeros, mask=on)
                tl.store(dmask_ptr + (b * 2 * J + 2 * j + a) * HW + ps, zeros, mask=on)
    sigma = option(hm_gauss, tl.float64)
    reach_msra = (3.0 * sigma).to(tl.int32) + 1  # rows a msra window can reach from its centre
    bp = box_ptr + b * s_bb
    for k in range(N):
        keep, lab, _cx, _cy, cxi, cyi, _w, _h, r = _pose_box(
            bp, s_bn, s_bk, lab_ptr, s_lb, s_ln, msk_ptr, s_mb, s_mn, k_ptr, b, k, C, Hm, Wm,
            down_ratio, HAS_MASK, cdt,
        )  # fmt: skip
        if keep:
            if MSE:
                r = sigma.to(tl.int32)  # draw_dense_reg's radius: floor(hm_gauss)
                reach = reach_msra
            else:
                reach = r
            plane = hm_ptr + (b * C + lab) * HW + ps
            vsum = tl.zeros([], cdt)
            for j in range(J):
                vsum += tl.load(kp_ptr + b * s_kb + k * s_kn + j * s_kj + 2).to(cdt)
            centre = cyi * Wm + cxi
            if (vsum == 0) & (centre >= tile * BLOCK) & (centre < tile * BLOCK + BLOCK):
                tl.store(plane, tl.full([BLOCK], NO_JOINT_PEAK, cdt), mask=ps == centre)
            if DENSE:
                if _hits(cyi, r, row_lo, row_hi):
                    g64, win = _umich(col, row, cxi, cyi, r)
                    cond = win & (g64 >= tl.load(plane, mask=on, other=0).to(tl.float64)) & on
                    for j in range(J):
                        ok, x, y, _xi, _yi = _joint(
                            kp_ptr, s_kb, s_kn, s_kj, b, k, j, cxi, cyi, Hm, Wm, down_ratio, cdt
                        )
                        if ok:
                            px = dense_ptr + (b * 2 * J + 2 * j) * HW + ps
                            vx = (x - cxi.to(cdt)) - (col - cxi).to(cdt)
                            vy = (y - cyi.to(cdt)) - (row - cyi).to(cdt)
                            tl.store(px, tl.where(cond, vx, tl.load(px, mask=on)), mask=on)
                            tl.store(
                                px + HW, tl.where(cond, vy, tl.load(px + HW, mask=on)), mask=on
                            )
                    # (a second pass over the joints for the mask: fewer values live at once)
                    gm = _stamp(col, row, cxi, cyi, r, sigma, Hm, Wm, MSE, cdt)
                    for j in range(J):
                        ok, _x, _y, _xi, _yi = _joint(
                            kp_ptr, s_kb, s_kn, s_kj, b, k, j, cxi, cyi, Hm, Wm, down_ratio, cdt
                        )
                        if ok:
                            _merge_mask(dmask_ptr, b, j, J, HW, ps, on, gm)
                elif MSE:  # the msra mask window reaches further than the umich one
                    if _hits(cyi, reach, row_lo, row_hi):
                        gm = _stamp(col, row, cxi, cyi, r, sigma, Hm, Wm, MSE, cdt)
                        for j in range(J):
                            ok, _x, _y, _xi, _yi = _joint(
                                kp_ptr, s_kb, s_kn, s_kj, b, k, j, cxi, cyi, Hm, Wm, down_ratio,
                                cdt,
                            )  # fmt: skip
                            if ok:
                                _merge_mask(dmask_ptr, b, j, J, HW, ps, on, gm)
            for j in range(J):
                ok, _x, _y, xi, yi = _joint(
                    kp_ptr, s_kb, s_kn, s_kj, b, k, j, cxi, cyi, Hm, Wm, down_ratio, cdt
                )
                if ok & _hits(yi, reach, row_lo, row_hi):
                    g = _stamp(col, row, xi, yi, r, sigma, Hm, Wm, MSE, cdt)
                    hp = hmhp_ptr + (b * J + j) * HW + ps
                    tl.store(hp, _max_nan(tl.load(hp, mask=on), g), mask=on)
            if _hits(cyi, reach, row_lo, row_hi):
                g = _stamp(col, row, cxi, cyi, r, sigma, Hm, Wm, MSE, cdt)
                tl.store(plane, _max_nan(tl.load(plane, mask=on), g), mask=on)
    if tile == 0:
        _pose_box_outputs(
            bp, s_bn, s_bk, kp_ptr, s_kb, s_kn, s_kj, lab_ptr, s_lb, s_ln, msk_ptr, s_mb, s_mn,
            k_ptr, wh_ptr, reg_ptr, ind_ptr, rm_ptr, hps_ptr, hpsm_ptr, hpo_ptr, hpi_ptr, hpm_ptr,
            b, N, C, J, Hm, Wm, down_ratio, HAS_MASK, BLOCK_J, cdt,
        )  # fmt: skip


@triton.jit
def _pose_box_outputs(
    bp, s_bn, s_bk, kp_ptr, s_kb, s_kn, s_kj, lab_ptr, s_lb, s_ln, msk_ptr, s_mb, s_mn, k_ptr,
    wh_ptr, reg_ptr, ind_ptr, rm_ptr, hps_ptr, hpsm_ptr, hpo_ptr, hpi_ptr, hpm_ptr, b, N, C, J,
    Hm, Wm, down_ratio, HAS_MASK: tl.constexpr, BLOCK_J: tl.constexpr, cdt: tl.constexpr,
):  # fmt: skip
    """Image b's per-box (wh, reg, ind, reg_mask) and per-joint (hps, hps_mask, hp_offset,
    hp_ind, hp_mask) outputs, zeros for dropped boxes and joints."""
    js = tl.arange(0, BLOCK_J)
    on_j = js < J
    dr = down_ratio + tl.zeros([BLOCK_J], cdt)
    for k in range(N):
        keep, _lab, cx, cy, cxi, cyi, w, h, _r = _pose_box(
            bp, s_bn, s_bk, lab_ptr, s_lb, s_ln, msk_ptr, s_mb, s_mn, k_ptr, b, k, C, Hm, Wm,
            down_ratio, HAS_MASK, cdt,
        )  # fmt: skip
        kp = kp_ptr + b * s_kb + k * s_kn + js * s_kj
        x = tl.load(kp, mask=on_j, other=0).to(cdt)
        y = tl.load(kp + 1, mask=on_j, other=0).to(cdt)
        v = tl.load(kp + 2, mask=on_j, other=0).to(cdt)
        if cdt == tl.float32:
            x = tl.math.div_rn(x, dr)
            y = tl.math.div_rn(y, dr)
        else:
            x = x / dr
            y = y / dr
        keep_j = (keep.to(tl.int32) + tl.zeros([BLOCK_J], tl.int32)) != 0  # (the interpreter
        # cannot broadcast a scalar bool into a bool block)
        ok = keep_j & on_j & (v > 0) & (x >= 0) & (x < Wm) & (y >= 0) & (y < Hm)
        o = b * N + k
        tl.store(wh_ptr + o * 2, tl.where(keep, w, 0.0))
        tl.store(wh_ptr + o * 2 + 1, tl.where(keep, h, 0.0))
        tl.store(reg_ptr + o * 2, tl.where(keep, cx - cxi.to(cdt), 0.0))
        tl.store(reg_ptr + o * 2 + 1, tl.where(keep, cy - cyi.to(cdt), 0.0))
        tl.store(ind_ptr + o, tl.where(keep, cyi.to(tl.int64) * Wm + cxi.to(tl.int64), 0))
        labelled = tl.sum(tl.where(on_j, v, 0.0), axis=0) != 0
        tl.store(rm_ptr + o, (keep & labelled).to(tl.uint8))
        hp = hps_ptr + o * 2 * J + 2 * js
        tl.store(hp, tl.where(ok, x - cxi.to(cdt), 0.0), mask=on_j)
        tl.store(hp + 1, tl.where(ok, y - cyi.to(cdt), 0.0), mask=on_j)
        hm_ = hpsm_ptr + o * 2 * J + 2 * js
        tl.store(hm_, ok.to(tl.uint8), mask=on_j)
        tl.store(hm_ + 1, ok.to(tl.uint8), mask=on_j)
        xi = x.to(tl.int32)
        yi = y.to(tl.int32)
        q = o * J + js
        tl.store(hpo_ptr + q * 2, tl.where(ok, x - xi.to(cdt), 0.0), mask=on_j)
        tl.store(hpo_ptr + q * 2 + 1, tl.where(ok, y - yi.to(cdt), 0.0), mask=on_j)
        tl.store(hpi_ptr + q, tl.where(ok, yi.to(tl.int64) * Wm + xi.to(tl.int64), 0), mask=on_j)
        tl.store(hpm_ptr + q, ok.to(tl.int64), mask=on_j)


def pose_targets_launch(
    boxes: torch.Tensor,
    keypoints: torch.Tensor,
    labels: torch.Tensor,
    box_mask: torch.Tensor | None,
    num_classes: int,
    size: tuple[int, int],
    down_ratio: int,
    dense_hp: bool,
    mse_loss: bool,
    hm_gauss: float | None,
    min_overlap: float,
) -> dict[str, torch.Tensor]:
    """Every multi-pose target of a batch (1 launch); float maps in the boxes' compute dtype."""
    b, n = boxes.shape[:2]
    nj = keypoints.shape[2]
    h, w = size
    dev = boxes.device
    cdt = compute_dtype(boxes)
    keypoints = keypoints.contiguous()  # (x, y, v) read at unit stride
    f = dict(dtype=cdt, device=dev)
    out = {
        "hm": torch.empty(b, num_classes, h, w, **f),
        "wh": torch.empty(b, n, 2, **f),
        "reg": torch.empty(b, n, 2, **f),
        "ind": torch.empty(b, n, dtype=torch.int64, device=dev),
        "reg_mask": torch.empty(b, n, dtype=torch.uint8, device=dev),
        "hps": torch.empty(b, n, 2 * nj, **f),
        "hps_mask": torch.empty(b, n, 2 * nj, dtype=torch.uint8, device=dev),
        "hm_hp": torch.empty(b, nj, h, w, **f),
        "hp_offset": torch.empty(b, n * nj, 2, **f),
        "hp_ind": torch.empty(b, n * nj, dtype=torch.int64, device=dev),
        "hp_mask": torch.empty(b, n * nj, dtype=torch.int64, device=dev),
    }
    dense = torch.empty(b, 2 * nj, h, w, **f) if dense_hp else out["hm"]
    dmask = torch.empty(b, 2 * nj, h, w, **f) if dense_hp else out["hm"]
    if dense_hp:
        out["dense_hps"], out["dense_hps_mask"] = dense, dmask
    if b == 0:
        return out
    msk = mask_view(box_mask) if box_mask is not None else labels
    block = min(next_pow2(h * w), 4096 if interpreting() else 128)
    n_tiles = triton.cdiv(h * w, block)
    launch(
        _pose_targets_kernel, (b * n_tiles,),
        boxes, *boxes.stride(), keypoints, *keypoints.stride()[:3], labels, *labels.stride(),
        msk, *msk.stride(), _radius_consts(dev, min_overlap), out["hm"], out["hm_hp"], dense,
        dmask, out["wh"], out["reg"], out["ind"], out["reg_mask"], out["hps"], out["hps_mask"],
        out["hp_offset"], out["hp_ind"], out["hp_mask"], n, num_classes, nj, h, w,
        int(down_ratio), n_tiles, f64_bits(hm_gauss if hm_gauss is not None else 1.0),
        HAS_MASK=box_mask is not None, DENSE=bool(dense_hp), MSE=bool(mse_loss), BLOCK=block,
        BLOCK_J=next_pow2(nj), num_warps=4,
        enable_fp_fusion=False,  # no FMA contraction: gaussian_radius must round like Python
    )  # fmt: skip
    return out
