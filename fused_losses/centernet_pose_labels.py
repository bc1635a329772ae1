"""CenterNet's multi-pose training targets (``datasets/sample/multi_pose.py``, docs/centernet.md
"Multi-pose"), torch backend: the per-box outputs vectorised over [B, N, J]; the maps (``hm``,
``hm_hp``, ``dense_hps``, ``dense_hps_mask``) in one pass over the N box slots, each step
vectorised over the batch, the joints and the cells, in CenterNet's object order (the dense
keypoint map of box k reads ``hm`` before box k's Gaussian enters it, and a box without a labelled
joint writes 0.9999 at its centre first). No host synchronisation.

Gaussians: ``draw_umich_gaussian`` (radius r, sigma (2r + 1) / 6, float64, rounded into the map)
and, with ``mse_loss``, ``draw_msra_gaussian`` (sigma ``hm_gauss``, window corners truncated
towards zero as CenterNet's ``int()``); ``draw_dense_reg`` compares the float64 umich Gaussian
with the map.
"""

from __future__ import annotations

import torch

from .backend import check_backend, compute_dtype, resolve_backend
from .centernet_labels import box_geometry, check_box_inputs
from .labels import div_exact
from .validation import (
    check_bool,
    check_number,
    check_positive_int,
    check_real,
    check_shape,
    check_tensor,
)

POSE_TARGET_KEYS = (
    "hm", "wh", "reg", "ind", "reg_mask", "hps", "hps_mask", "hm_hp", "hp_offset", "hp_ind",
    "hp_mask",
)  # fmt: skip
DENSE_KEYS = ("dense_hps", "dense_hps_mask")
NO_JOINT_PEAK = 0.9999  # multi_pose.py: hm at the centre of a box without a labelled joint
# hm_gauss (the msra sigma, in map cells): from 1e-6, 2 sigma^2 >= 2e-12 is a normal float32 (a
# smaller sigma rounds 2 sigma^2 to 0 and the centre's exponent to 0 / 0 = NaN), up to 1e4 (a
# wider Gaussian is flat over any practical map).
HM_GAUSS_RANGE = (1e-6, 1e4)


def check_hm_gauss(value: object) -> float:
    """``hm_gauss`` as a float in ``HM_GAUSS_RANGE`` (a TypeError / ValueError naming it)."""
    v = check_number("hm_gauss", value)
    lo, hi = HM_GAUSS_RANGE
    if not lo <= v <= hi:
        raise ValueError(f"hm_gauss: expected a number in [1e-6, 1e4], got {value!r}")
    return v


def _umich(cx, cy, r, rows, cols):
    """(float64 Gaussian, window) [..., H, W] of ``draw_umich_gaussian`` at the integer centres
    (cx, cy) [...] with radii r [...] (r < 0: no window)."""
    dx = (cols - cx[..., None])[..., None, :]  # [..., 1, W]
    dy = (rows - cy[..., None])[..., :, None]  # [..., H, 1]
    r = r[..., None, None]
    win = (dx.abs() <= r) & (dy.abs() <= r)
    sigma = (2 * r + 1).double() / 6
    d2 = (dx * dx + dy * dy).double()
    return torch.exp(-d2 / (2 * sigma * sigma)), win


def _msra(cx, cy, sigma: float, rows, cols, h: int, w: int, cdt: torch.dtype):
    """(float64 Gaussian, window) [..., H, W] of ``draw_msra_gaussian`` at integer centres: the
    exponent in the map's precision in numpy's order, the exp in float64 (as the reference)."""
    tmp = sigma * 3
    size = 2 * tmp + 1
    half = float(size // 2)
    mu_x, mu_y = cx.double(), cy.double()  # int(c + 0.5) of an integer centre
    ul_x, ul_y = torch.trunc(mu_x - tmp), torch.trunc(mu_y - tmp)
    br_x, br_y = torch.trunc(mu_x + tmp + 1), torch.trunc(mu_y + tmp + 1)
    drawn = ~((ul_x >= w) | (ul_y >= h) | (br_x < 0) | (br_y < 0))
    c = cols.double()
    r_ = rows.double()
    in_x = (c >= ul_x[..., None].clamp_min(0)) & (c < br_x[..., None].clamp(max=w))
    in_y = (r_ >= ul_y[..., None].clamp_min(0)) & (r_ < br_y[..., None].clamp(max=h))
    gx = ((c - ul_x[..., None]).to(cdt) - half) ** 2  # (x - x0)^2 at the window index x
    gy = ((r_ - ul_y[..., None]).to(cdt) - half) ** 2
    two_sigma2 = torch.full((), 2 * sigma**2, dtype=cdt, device=cols.device)  # (no H2D copy)
    exponent = -(gx[..., None, :] + gy[..., :, None]) / two_sigma2
    win = in_x[..., None, :] & in_y[..., :, None] & drawn[..., None, None]
    return torch.exp(exponent.double()), win


def pose_targets_torch(
    boxes: torch.Tensor,
    keypoints: torch.Tensor,
    labels: torch.Tensor | None,
    box_mask: torch.Tensor | None,
    num_classes: int,
    size: tuple[int, int],
    down_ratio: int,
    dense_hp: bool,
    mse_loss: bool,
    hm_gauss: float | None,
) -> dict[str, torch.Tensor]:
    """The multi-pose targets (docs/centernet.md), inputs already checked."""
    cdt = compute_dtype(boxes.dtype)
    dev = boxes.device
    h_map, w_map = size
    b, n = boxes.shape[:2]
    nj = keypoints.shape[2]
    if labels is None:
        labels = torch.zeros(b, n, dtype=torch.int64, device=dev)
    geo = box_geometry(boxes, labels, box_mask, num_classes, size, down_ratio, cdt)
    valid, cxi, cyi = geo["valid"], geo["cxi"], geo["cyi"]
    zero = torch.zeros((), dtype=cdt, device=dev)
    wh = torch.where(valid[..., None], torch.stack([geo["w"], geo["h"]], -1), zero)
    reg = torch.stack([geo["cx"] - cxi.to(cdt), geo["cy"] - cyi.to(cdt)], -1)
    reg = torch.where(valid[..., None], reg, zero)
    ind = torch.where(valid, cyi * w_map + cxi, 0)

    kp = keypoints.to(cdt)
    vis = kp[..., 2]
    no_joint = valid & (vis.sum(-1) == 0)
    reg_mask = (valid & ~no_joint).to(torch.uint8)
    pts = div_exact(kp[..., :2], down_ratio)  # [B, N, J, 2]
    px, py = pts[..., 0], pts[..., 1]
    jv = valid[..., None] & (vis > 0) & (px >= 0) & (px < w_map) & (py >= 0) & (py < h_map)
    ct = torch.stack([cxi, cyi], -1).to(cdt)[:, :, None, :]  # [B, N, 1, 2]
    rel = pts - ct  # hps: the joint relative to the integer centre
    hps = torch.where(jv[..., None], rel, zero).reshape(b, n, 2 * nj)
    hps_mask = jv[..., None].expand(b, n, nj, 2).reshape(b, n, 2 * nj).to(torch.uint8)
    pt_int = pts.to(torch.int32).long()
    hp_offset = torch.where(jv[..., None], pts - pt_int.to(cdt), zero).reshape(b, n * nj, 2)
    hp_ind = torch.where(jv, pt_int[..., 1] * w_map + pt_int[..., 0], 0).reshape(b, n * nj)
    hp_mask = jv.long().reshape(b, n * nj)

    radius = torch.full_like(geo["radius"], int(hm_gauss)) if mse_loss else geo["radius"]
    rows = torch.arange(h_map, device=dev)
    cols = torch.arange(w_map, device=dev)

    def stamp(cx, cy, r):
        if mse_loss:
            return _msra(cx, cy, float(hm_gauss), rows, cols, h_map, w_map, cdt)
        return _umich(cx, cy, r, rows, cols)

    hm = torch.zeros(b, num_classes, h_map, w_map, dtype=cdt, device=dev)
    hm_hp = torch.zeros(b, nj, h_map, w_map, dtype=cdt, device=dev)
    if dense_hp:
        dense = torch.zeros(b, nj, 2, h_map, w_map, dtype=cdt, device=dev)
        dense_mask = torch.zeros(b, nj, h_map, w_map, dtype=cdt, device=dev)
    cls_all = torch.where(valid, labels.long(), 0)
    bidx = torch.arange(b, device=dev)
    for k in range(n):  # CenterNet's object order (each step vectorised over B, J, H, W)
        ok, cls = valid[:, k], cls_all[:, k]
        cx, cy, r = cxi[:, k], cyi[:, k], torch.where(ok, radius[:, k], -1)
        # a box without a labelled joint: 0.9999 at its centre, before anything else
        nj_k = no_joint[:, k]
        peak = hm[bidx, cls, cy.clamp(0, h_map - 1), cx.clamp(0, w_map - 1)]
        hm[bidx, cls, cy.clamp(0, h_map - 1), cx.clamp(0, w_map - 1)] = torch.where(
            nj_k, NO_JOINT_PEAK, peak
        )
        jv_k = jv[:, k]  # [B, J]
        if dense_hp:
            g64, win = _umich(cx, cy, r, rows, cols)  # draw_dense_reg's Gaussian, radius r
            cond = win & (g64 >= hm[bidx, cls].double())  # [B, H, W]
            write = cond[:, None] & jv_k[..., None, None]  # [B, J, H, W]
            # (pt - ct_int) - (cell - ct_int), per axis: x against the columns, y the rows
            cell_offsets = (cols[None, :] - cx[:, None, None], rows[:, None] - cy[:, None, None])
            for axis, offs in enumerate(cell_offsets):
                value = rel[:, k, :, axis, None, None] - offs[:, None].to(cdt)  # [B, J, H, W]
                dense[:, :, axis] = torch.where(write, value, dense[:, :, axis])
            gm, wm = stamp(cx, cy, r)
            gm = torch.where(wm, gm, 0.0).to(cdt)[:, None]
            dense_mask = torch.where(
                jv_k[..., None, None], torch.maximum(dense_mask, gm), dense_mask
            )
        gj, wj = stamp(pt_int[:, k, :, 0], pt_int[:, k, :, 1], r[:, None].expand(b, nj))
        gj = torch.where(wj & jv_k[..., None, None], gj, 0.0).to(cdt)
        hm_hp = torch.maximum(hm_hp, gj)
        gb, wb = stamp(cx, cy, r)
        gb = torch.where(wb & ok[:, None, None], gb, 0.0).to(cdt)
        hm[bidx, cls] = torch.maximum(hm[bidx, cls], gb)
    out = {
        "hm": hm, "wh": wh, "reg": reg, "ind": ind, "reg_mask": reg_mask, "hps": hps,
        "hps_mask": hps_mask, "hm_hp": hm_hp, "hp_offset": hp_offset, "hp_ind": hp_ind,
        "hp_mask": hp_mask,
    }  # fmt: skip
    if dense_hp:
        out["dense_hps"] = dense.reshape(b, 2 * nj, h_map, w_map)
        out["dense_hps_mask"] = dense_mask.repeat_interleave(2, dim=1)
    return out


def check_pose_target_inputs(
    boxes, keypoints, labels, box_mask, num_classes, num_joints, output_size, down_ratio,
    dense_hp, mse_loss, hm_gauss,
) -> tuple[torch.Tensor, tuple[int, int], float | None]:  # fmt: skip
    """(labels, (H, W), hm_gauss) after the checks of :func:`centernet_pose_targets`."""
    check_tensor("boxes", boxes)
    check_shape("boxes", boxes, [None, None, 4], "[B, N, 4] (x1, y1, x2, y2)")
    b, n = boxes.shape[:2]
    if labels is None:
        labels = torch.zeros(b, n, dtype=torch.int64, device=boxes.device)
    size = check_box_inputs(boxes, labels, box_mask, num_classes, output_size, down_ratio)
    check_positive_int("num_joints", num_joints)
    check_tensor("keypoints", keypoints)
    check_real("keypoints", keypoints)
    check_shape("keypoints", keypoints, [b, n, num_joints, 3], f"[{b}, {n}, {num_joints}, 3]")
    if keypoints.device != boxes.device:
        raise ValueError(
            f"keypoints: expected a tensor on {boxes.device} (like boxes), got {keypoints.device}"
        )
    check_bool("dense_hp", dense_hp)
    check_bool("mse_loss", mse_loss)
    if hm_gauss is not None:
        hm_gauss = check_hm_gauss(hm_gauss)
    elif mse_loss:
        raise ValueError("hm_gauss: required with mse_loss=True (the msra Gaussians' sigma)")
    return labels, size, hm_gauss


@torch.no_grad()
def centernet_pose_targets(
    boxes: torch.Tensor,
    keypoints: torch.Tensor,
    labels: torch.Tensor | None = None,
    box_mask: torch.Tensor | None = None,
    *,
    num_classes: int = 1,
    num_joints: int = 17,
    output_size: tuple[int, int],
    down_ratio: int = 4,
    dense_hp: bool = False,
    mse_loss: bool = False,
    hm_gauss: float | None = None,
    backend: str = "auto",
) -> dict[str, torch.Tensor]:
    """CenterNet's multi-pose training targets for a whole batch, on the boxes' device.

    boxes [B,N,4] (x1, y1, x2, y2) and keypoints [B,N,J,3] (x, y, v; v > 0 labelled) in input
    pixels, labels [B,N] (None: class 0), box_mask [B,N] (None: all boxes). Returns CenterNet's
    batch keys: ctdet's ``hm`` [B,K,H,W], ``wh``, ``reg`` [B,N,2], ``ind`` [B,N] int64,
    ``reg_mask`` [B,N] uint8 (0 for a box without a labelled joint), and ``hps`` [B,N,2J],
    ``hps_mask`` [B,N,2J] uint8, ``hm_hp`` [B,J,H,W], ``hp_offset`` [B,N*J,2], ``hp_ind``
    [B,N*J] int64, ``hp_mask`` [B,N*J] int64; with ``dense_hp`` also ``dense_hps`` and
    ``dense_hps_mask`` [B,2J,H,W]. ``mse_loss`` draws msra Gaussians of sigma ``hm_gauss``
    (required then; a number in [1e-6, 1e4] map cells). ``output_size`` (H, W): ints in
    [1, 65536] with H * W <= 2^30. Float outputs float32 (float64 for float64 boxes); identical
    to CenterNet's ``multi_pose.py`` (division by ``down_ratio`` for its affine transform) for
    float32 inputs.
    The triton backend is one launch; no host sync, no gradient.
    """
    labels, size, hm_gauss = check_pose_target_inputs(
        boxes, keypoints, labels, box_mask, num_classes, num_joints, output_size, down_ratio,
        dense_hp, mse_loss, hm_gauss,
    )  # fmt: skip
    args = (boxes, keypoints, labels, box_mask, num_classes, size, down_ratio, dense_hp, mse_loss,
            hm_gauss)  # fmt: skip
    if resolve_backend(check_backend(backend), boxes.device) == "triton":
        from .triton_centernet import centernet_pose_targets_triton

        return centernet_pose_targets_triton(*args)
    return pose_targets_torch(*args)
