"""Reference CenterNet multi-pose targets and loss: a literal port of CenterNet's own code.

Read next to CenterNet (Zhou et al., "Objects as Points", github.com/xingyizhou/CenterNet @4c50fd3):
``datasets/sample/multi_pose.py`` (the per-object, per-joint loop that builds the pose targets),
``utils/image.py`` (``draw_msra_gaussian``, ``draw_dense_reg``; ``draw_umich_gaussian`` and the
rest of the ctdet pieces live in :mod:`reference.centernet`), ``trains/multi_pose.py``
(``MultiPoseLoss``) and ``models/losses.py`` (``RegLoss`` = ``_reg_loss``). docs/centernet.md
("Multi-pose") and docs/spec.md section 8 are the contract; where it departs from CenterNet it
wins: the affine transform is a division by ``down_ratio``, there is no flipping or other
augmentation, boxes are (x1, y1, x2, y2) and keypoints (x, y, v) in input pixels. numpy is replaced by torch and Python's ``math``; loops stay loops. The
library's runtime never imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .centernet import (
    centernet_focal_loss,
    draw_umich_gaussian,
    gaussian2D,
    gaussian_radius,
    reg_l1_loss,
    reg_smooth_l1_loss,
    reg_weighted_l1_loss,
)

__all__ = [
    "centernet_pose_loss",
    "centernet_pose_targets",
    "draw_dense_reg",
    "draw_msra_gaussian",
    "multi_pose_loss",
]


def draw_msra_gaussian(
    heatmap: torch.Tensor, center: Sequence[float], sigma: float
) -> torch.Tensor:
    """CenterNet's ``draw_msra_gaussian``: max-merge a Gaussian into ``heatmap`` [H, W] in place.

    The peak is at ``int(c + 0.5)``; the window reaches ``3 sigma`` cells each side, and its
    corners are ``int()``-truncated (towards zero), so a non-integer ``sigma`` near the top or left
    border shifts the peak by a cell, as in CenterNet. A window entirely off the map draws nothing.
    ``g`` is numpy's float32 expression (``x = arange(size, float32)``) with its exponent computed in
    the map's precision in numpy's order and the ``exp`` in float64, rounded into the map's dtype
    (numpy's own float32 ``exp`` is within about an ulp of that).
    """
    tmp_size = sigma * 3
    mu_x = int(center[0] + 0.5)
    mu_y = int(center[1] + 0.5)
    # CenterNet names these ``w, h`` (rows, columns); the tests below are the same.
    height, width = heatmap.shape[0], heatmap.shape[1]
    ul = [int(mu_x - tmp_size), int(mu_y - tmp_size)]
    br = [int(mu_x + tmp_size + 1), int(mu_y + tmp_size + 1)]
    if ul[0] >= width or ul[1] >= height or br[0] < 0 or br[1] < 0:
        return heatmap
    size = 2 * tmp_size + 1
    cdt = torch.float64 if heatmap.dtype == torch.float64 else torch.float32
    x = torch.arange(0, size, 1, dtype=cdt)
    y = x[:, None]
    x0 = y0 = size // 2
    two_sigma2 = torch.tensor(2 * sigma**2, dtype=cdt)
    exponent = -((x - x0) ** 2 + (y - y0) ** 2) / two_sigma2
    g = torch.exp(exponent.to(torch.float64))
    g_x = max(0, -ul[0]), min(br[0], width) - ul[0]
    g_y = max(0, -ul[1]), min(br[1], height) - ul[1]
    img_x = max(0, ul[0]), min(br[0], width)
    img_y = max(0, ul[1]), min(br[1], height)
    masked_heatmap = heatmap[img_y[0] : img_y[1], img_x[0] : img_x[1]]
    masked_g = g[g_y[0] : g_y[1], g_x[0] : g_x[1]]
    torch.maximum(masked_heatmap, masked_g.to(heatmap.dtype), out=masked_heatmap)
    return heatmap


def draw_dense_reg(
    regmap: torch.Tensor,
    heatmap: torch.Tensor,
    center: Sequence[int],
    value: torch.Tensor | Sequence[float],
    radius: int,
    is_offset: bool = False,
) -> torch.Tensor:
    """CenterNet's ``draw_dense_reg``: write ``value`` into ``regmap`` [dim, H, W] in place.

    On the window of ``radius`` cells around ``center`` (clipped to the map), the cells where the
    float64 umich Gaussian of that radius is ``>=`` ``heatmap`` [H, W] (compared in float64, as
    numpy compares a float64 Gaussian with a float32 map) get ``value`` [dim]; with ``is_offset``
    and ``dim == 2`` the cell's offset from ``center`` is subtracted: ``value - (dx, dy)``, one
    rounding in the map's float dtype (float32 for float32 maps, like CenterNet's arrays). The
    other cells keep their value.
    """
    diameter = 2 * radius + 1
    gaussian = gaussian2D((diameter, diameter), sigma=diameter / 6)
    value = torch.as_tensor(value).to(regmap.dtype).reshape(-1, 1, 1)
    dim = value.shape[0]
    # CenterNet's scratch array is (2 * diameter + 1) wide; only its first diameter cells are read.
    reg = torch.ones(dim, diameter * 2 + 1, diameter * 2 + 1, dtype=regmap.dtype) * value
    if is_offset and dim == 2:
        delta = (torch.arange(diameter * 2 + 1) - radius).to(regmap.dtype)
        reg[0] = reg[0] - delta.reshape(1, -1)
        reg[1] = reg[1] - delta.reshape(-1, 1)

    x, y = int(center[0]), int(center[1])

    height, width = heatmap.shape[0:2]

    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)

    masked_heatmap = heatmap[y - top : y + bottom, x - left : x + right]
    masked_regmap = regmap[:, y - top : y + bottom, x - left : x + right]
    masked_gaussian = gaussian[radius - top : radius + bottom, radius - left : radius + right]
    masked_reg = reg[:, radius - top : radius + bottom, radius - left : radius + right]
    if min(masked_gaussian.shape) > 0 and min(masked_heatmap.shape) > 0:
        idx = (masked_gaussian >= masked_heatmap.to(torch.float64)).reshape(
            1, masked_gaussian.shape[0], masked_gaussian.shape[1]
        )
        # (1 - idx) * old + idx * new: a select, exact.
        masked_regmap.copy_(torch.where(idx, masked_reg, masked_regmap))
    return regmap


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
) -> dict[str, torch.Tensor]:
    """CenterNet's multi-pose sample targets (docs/centernet.md "Multi-pose targets"), one image,
    one box, one joint at a time.

    boxes [B, N, 4] (x1, y1, x2, y2) and keypoints [B, N, J, 3] (x, y, v) in input pixels, labels
    [B, N] (None: every box is class 0), box_mask [B, N] (None: all boxes). Returns ``hm`` [B, K, H, W],
    ``wh``, ``reg`` [B, N, 2], ``ind`` [B, N] int64, ``reg_mask`` [B, N] uint8, ``hps``
    [B, N, 2J], ``hps_mask`` [B, N, 2J] uint8, ``hm_hp`` [B, J, H, W], ``hp_offset`` [B, N*J, 2],
    ``hp_ind`` [B, N*J] int64, ``hp_mask`` [B, N*J] int64, and with ``dense_hp`` also
    ``dense_hps`` and ``dense_hps_mask`` [B, 2J, H, W] (CenterNet then drops ``hps``/``hps_mask``;
    here they are kept, the loss ignores them). Float outputs are float32 (float64 for float64
    boxes); arithmetic as in :func:`reference.centernet.centernet_targets`.
    """
    if mse_loss and hm_gauss is None:
        raise ValueError("mse_loss needs hm_gauss (CenterNet reads opt.hm_gauss, never defined)")
    if keypoints.dim() != 4 or keypoints.shape[2] != num_joints or keypoints.shape[3] != 3:
        raise ValueError(
            f"keypoints: expected [B, N, {num_joints}, 3], got {tuple(keypoints.shape)}"
        )
    dtype = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    output_h, output_w = output_size
    batch, max_objs = boxes.shape[:2]
    hm = torch.zeros(batch, num_classes, output_h, output_w, dtype=dtype)
    hm_hp = torch.zeros(batch, num_joints, output_h, output_w, dtype=dtype)
    dense_kps = torch.zeros(batch, num_joints * 2, output_h, output_w, dtype=dtype)
    dense_kps_mask = torch.zeros(batch, num_joints * 2, output_h, output_w, dtype=dtype)
    wh = torch.zeros(batch, max_objs, 2, dtype=dtype)
    kps = torch.zeros(batch, max_objs, num_joints * 2, dtype=dtype)
    reg = torch.zeros(batch, max_objs, 2, dtype=dtype)
    ind = torch.zeros(batch, max_objs, dtype=torch.int64)
    reg_mask = torch.zeros(batch, max_objs, dtype=torch.uint8)
    kps_mask = torch.zeros(batch, max_objs, num_joints * 2, dtype=torch.uint8)
    hp_offset = torch.zeros(batch, max_objs * num_joints, 2, dtype=dtype)
    hp_ind = torch.zeros(batch, max_objs * num_joints, dtype=torch.int64)
    hp_mask = torch.zeros(batch, max_objs * num_joints, dtype=torch.int64)

    if mse_loss:
        # draw_gaussian(map, c, radius) with radius = hm_gauss: the msra sigma.
        def draw_gaussian(heatmap, center, radius):
            return draw_msra_gaussian(heatmap, center, hm_gauss)
    else:
        draw_gaussian = draw_umich_gaussian

    boxes = boxes.detach().cpu().to(dtype)
    keypoints = keypoints.detach().cpu().to(dtype)
    labels = None if labels is None else labels.detach().cpu()
    for i in range(batch):
        for k in range(max_objs):
            if box_mask is not None and not bool(box_mask[i, k]):
                continue
            cls_id = 0 if labels is None else int(labels[i, k])
            if not 0 <= cls_id < num_classes:
                continue
            bbox = boxes[i, k].clone() / down_ratio
            pts = keypoints[i, k].clone()
            bbox[[0, 2]] = torch.clip(bbox[[0, 2]], 0, output_w - 1)
            bbox[[1, 3]] = torch.clip(bbox[[1, 3]], 0, output_h - 1)
            h, w = bbox[3] - bbox[1], bbox[2] - bbox[0]
            if h > 0 and w > 0:
                radius = gaussian_radius((math.ceil(float(h)), math.ceil(float(w))))
                # mse_loss: CenterNet sets radius = hm_gauss; draw_dense_reg needs an integer
                # (a non-integer hm_gauss crashes CenterNet there): rounded down
                # (docs/centernet.md "Multi-pose targets").
                radius = math.floor(hm_gauss) if mse_loss else max(0, int(radius))
                ct = torch.stack([(bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2])
                ct_int = ct.to(torch.int32)
                wh[i, k] = torch.stack([1.0 * w, 1.0 * h])
                ind[i, k] = int(ct_int[1]) * output_w + int(ct_int[0])
                reg[i, k] = ct - ct_int
                reg_mask[i, k] = 1
                num_kpts = pts[:, 2].sum()
                if num_kpts == 0:
                    hm[i, cls_id, int(ct_int[1]), int(ct_int[0])] = 0.9999
                    reg_mask[i, k] = 0

                hp_radius = radius  # the same gaussian_radius of the same box
                for j in range(num_joints):
                    if pts[j, 2] > 0:
                        pts[j, :2] = pts[j, :2] / down_ratio
                        if 0 <= pts[j, 0] < output_w and 0 <= pts[j, 1] < output_h:
                            kps[i, k, j * 2 : j * 2 + 2] = pts[j, :2] - ct_int
                            kps_mask[i, k, j * 2 : j * 2 + 2] = 1
                            pt_int = pts[j, :2].to(torch.int32)
                            hp_offset[i, k * num_joints + j] = pts[j, :2] - pt_int
                            hp_ind[i, k * num_joints + j] = int(pt_int[1]) * output_w + int(
                                pt_int[0]
                            )
                            hp_mask[i, k * num_joints + j] = 1
                            if dense_hp:
                                # CenterNet: "must be before draw center hm gaussian".
                                draw_dense_reg(
                                    dense_kps[i, j * 2 : j * 2 + 2],
                                    hm[i, cls_id],
                                    ct_int.tolist(),
                                    pts[j, :2] - ct_int,
                                    radius,
                                    is_offset=True,
                                )
                                # CenterNet draws one [J, H, W] mask and duplicates it to 2J.
                                draw_gaussian(dense_kps_mask[i, j * 2], ct_int.tolist(), radius)
                                draw_gaussian(dense_kps_mask[i, j * 2 + 1], ct_int.tolist(), radius)
                            draw_gaussian(hm_hp[i, j], pt_int.tolist(), hp_radius)
                draw_gaussian(hm[i, cls_id], ct_int.tolist(), radius)
    ret = {
        "hm": hm,
        "wh": wh,
        "reg": reg,
        "ind": ind,
        "reg_mask": reg_mask,
        "hps": kps,
        "hps_mask": kps_mask,
        "hm_hp": hm_hp,
        "hp_offset": hp_offset,
        "hp_ind": hp_ind,
        "hp_mask": hp_mask,
    }
    if dense_hp:
        ret.update({"dense_hps": dense_kps, "dense_hps_mask": dense_kps_mask})
    return ret


def multi_pose_loss(
    outputs: dict[str, torch.Tensor] | Sequence[dict[str, torch.Tensor]],
    targets: dict[str, torch.Tensor],
    *,
    hm_weight: float = 1.0,
    wh_weight: float = 0.1,
    off_weight: float = 1.0,
    hp_weight: float = 1.0,
    hm_hp_weight: float = 1.0,
    hm_hp: bool = True,
    reg_offset: bool = True,
    reg_hp_offset: bool = True,
    dense_hp: bool = False,
    mse_loss: bool = False,
    reg_loss: str = "l1",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CenterNet's ``MultiPoseLoss`` (docs/centernet.md "Multi-pose"): total and its six terms.

    ``outputs``: one dict of heads or a list of them (one per stack). ``hm`` [B, K, H, W] and, unless
    ``mse_loss``, ``hm_hp`` [B, J, H, W] are clamped-sigmoid probabilities (CenterNet applies
    ``_sigmoid`` inside the loss; here the caller has); with ``mse_loss`` ``hm_hp`` is raw. ``wh``,
    ``reg``, ``hp_offset`` [B, 2, H, W], ``hps`` [B, 2J, H, W]. ``targets``: the keys of
    :func:`centernet_pose_targets`. Each term is summed as ``term / S`` over the S stacks; a term
    that does not run is a 0-dim zero and its head may be absent.
    """
    if isinstance(outputs, dict):
        outputs = [outputs]
    num_stacks = len(outputs)
    if reg_loss == "l1":
        crit_reg = reg_l1_loss
    elif reg_loss == "sl1":
        crit_reg = reg_smooth_l1_loss
    else:
        raise ValueError(f"reg_loss must be 'l1' or 'sl1', got {reg_loss!r}")
    # opts.py: reg_hp_offset = (not not_reg_hp_offset) and hm_hp.
    reg_hp_offset = reg_hp_offset and hm_hp

    ref = outputs[0]["hm"]
    zero = torch.zeros((), dtype=ref.dtype, device=ref.device)
    hm_loss, wh_loss, off_loss = zero, zero, zero
    hp_loss, hm_hp_loss, hp_offset_loss = zero, zero, zero
    for s in range(num_stacks):
        output = outputs[s]

        # The hm term is the focal loss in every mode: CenterNet's self.crit = FocalLoss(); only
        # crit_hm_hp switches to MSELoss with mse_loss (docs/centernet.md "Multi-pose", the
        # table of terms).
        hm_loss = hm_loss + centernet_focal_loss(output["hm"], targets["hm"]) / num_stacks
        if dense_hp:
            dense_mask = targets["dense_hps_mask"].to(output["hps"].dtype)
            mask_weight = dense_mask.sum() + 1e-4
            dense_hps = targets["dense_hps"].to(output["hps"].dtype)
            hp_loss = (
                hp_loss
                + (
                    F.l1_loss(output["hps"] * dense_mask, dense_hps * dense_mask, reduction="sum")
                    / mask_weight
                )
                / num_stacks
            )
        else:
            hp_loss = (
                hp_loss
                + reg_weighted_l1_loss(
                    output["hps"], targets["hps_mask"], targets["ind"], targets["hps"]
                )
                / num_stacks
            )
        if wh_weight > 0:
            wh_loss = (
                wh_loss
                + crit_reg(output["wh"], targets["reg_mask"], targets["ind"], targets["wh"])
                / num_stacks
            )
        if reg_offset and off_weight > 0:
            off_loss = (
                off_loss
                + crit_reg(output["reg"], targets["reg_mask"], targets["ind"], targets["reg"])
                / num_stacks
            )
        if reg_hp_offset and off_weight > 0:
            hp_offset_loss = (
                hp_offset_loss
                + crit_reg(
                    output["hp_offset"],
                    targets["hp_mask"],
                    targets["hp_ind"],
                    targets["hp_offset"],
                )
                / num_stacks
            )
        if hm_hp and hm_hp_weight > 0:
            if mse_loss:
                term = F.mse_loss(output["hm_hp"], targets["hm_hp"].to(output["hm_hp"].dtype))
            else:
                term = centernet_focal_loss(output["hm_hp"], targets["hm_hp"])
            hm_hp_loss = hm_hp_loss + term / num_stacks
    loss = (
        hm_weight * hm_loss
        + wh_weight * wh_loss
        + off_weight * off_loss
        + hp_weight * hp_loss
        + hm_hp_weight * hm_hp_loss
        + off_weight * hp_offset_loss
    )
    parts = {
        "hm": hm_loss,
        "wh": wh_loss,
        "off": off_loss,
        "hp": hp_loss,
        "hm_hp": hm_hp_loss,
        "hp_offset": hp_offset_loss,
    }
    return loss, parts


def centernet_pose_loss(outputs, targets: dict[str, torch.Tensor], **options) -> torch.Tensor:
    """The total of :func:`multi_pose_loss` alone (the library function's name and return)."""
    return multi_pose_loss(outputs, targets, **options)[0]
