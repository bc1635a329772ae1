"""Reference CenterNet losses and ctdet targets: a literal port of CenterNet's own code.

Read next to CenterNet (Zhou et al., "Objects as Points", github.com/xingyizhou/CenterNet):
``models/losses.py`` (``_neg_loss``, ``RegL1Loss``, ``RegWeightedL1Loss``), ``models/utils.py``
(``_sigmoid``, ``_gather_feat``, ``_tranpose_and_gather_feat``), ``utils/image.py``
(``gaussian_radius``, ``gaussian2D``, ``draw_umich_gaussian``) and ``datasets/sample/ctdet.py`` (the
per-box loop that builds ``hm``, ``wh``, ``reg``, ``ind``, ``reg_mask``). numpy is replaced by torch
and Python's ``math``; loops stay loops. The library's runtime never imports this module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_FLOAT64_EPS = 2.220446049250313e-16  # np.finfo(np.float64).eps


def clamped_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """CenterNet's ``_sigmoid``: ``clamp(sigmoid(x), 1e-4, 1 - 1e-4)`` (not in place here)."""
    return torch.clamp(x.sigmoid(), min=1e-4, max=1 - 1e-4)


def centernet_focal_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """CenterNet's ``_neg_loss`` (CornerNet's modified focal loss), line for line."""
    pos_inds = gt.eq(1).to(pred.dtype)
    neg_inds = gt.lt(1).to(pred.dtype)

    neg_weights = torch.pow(1 - gt.to(pred.dtype), 4)

    loss = 0

    pos_loss = torch.log(pred) * torch.pow(1 - pred, 2) * pos_inds
    neg_loss = torch.log(1 - pred) * torch.pow(pred, 2) * neg_weights * neg_inds

    num_pos = pos_inds.sum()
    pos_loss = pos_loss.sum()
    neg_loss = neg_loss.sum()

    if num_pos == 0:
        loss = loss - neg_loss
    else:
        loss = loss - (pos_loss + neg_loss) / num_pos
    return loss


def gather_feat(feat: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
    """CenterNet's ``_gather_feat``: feat [B, K, C], ind [B, M] -> [B, M, C]."""
    dim = feat.size(2)
    ind = ind.long().unsqueeze(2).expand(ind.size(0), ind.size(1), dim)
    return feat.gather(1, ind)


def transpose_and_gather_feat(feat: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
    """CenterNet's ``_tranpose_and_gather_feat``: feat [B, C, H, W], ind [B, M] -> [B, M, C]."""
    feat = feat.permute(0, 2, 3, 1).contiguous()
    feat = feat.view(feat.size(0), -1, feat.size(3))
    return gather_feat(feat, ind)


def reg_l1_loss(
    output: torch.Tensor, mask: torch.Tensor, ind: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """CenterNet's ``RegL1Loss.forward``; mask [B, M] broadcast over the C channels."""
    pred = transpose_and_gather_feat(output, ind)
    mask = mask.unsqueeze(2).expand_as(pred).to(pred.dtype)
    target = target.to(pred.dtype)
    loss = F.l1_loss(pred * mask, target * mask, reduction="sum")
    loss = loss / (mask.sum() + 1e-4)
    return loss


def reg_weighted_l1_loss(
    output: torch.Tensor, mask: torch.Tensor, ind: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """CenterNet's ``RegWeightedL1Loss.forward``; mask [B, M, C]."""
    pred = transpose_and_gather_feat(output, ind)
    mask = mask.to(pred.dtype)
    target = target.to(pred.dtype)
    loss = F.l1_loss(pred * mask, target * mask, reduction="sum")
    loss = loss / (mask.sum() + 1e-4)
    return loss


def reg_smooth_l1_loss(
    output: torch.Tensor, mask: torch.Tensor, ind: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """CenterNet's ``RegLoss`` (``_reg_loss``): smooth-L1 (beta 1) of the masked gathered
    predictions, summed, over ``mask.sum() + 1e-4`` taken before the [B,M] mask is expanded over
    the channels (the number of objects)."""
    pred = transpose_and_gather_feat(output, ind)
    num = mask.to(pred.dtype).sum()
    m = mask.unsqueeze(2).expand_as(target).to(pred.dtype)
    loss = F.smooth_l1_loss(pred * m, target.to(pred.dtype) * m, reduction="sum")
    return loss / (num + 1e-4)


def gaussian_radius(det_size: tuple[int, int], min_overlap: float = 0.7) -> float:
    """CenterNet's ``gaussian_radius``, as published (the three roots r1, r2, r3 and their min)."""
    height, width = det_size

    a1 = 1
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    sq1 = math.sqrt(b1**2 - 4 * a1 * c1)
    r1 = (b1 + sq1) / 2

    a2 = 4
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    sq2 = math.sqrt(b2**2 - 4 * a2 * c2)
    r2 = (b2 + sq2) / 2

    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    sq3 = math.sqrt(b3**2 - 4 * a3 * c3)
    r3 = (b3 + sq3) / 2
    return min(r1, r2, r3)


def gaussian2D(shape: tuple[int, int], sigma: float = 1) -> torch.Tensor:
    """CenterNet's ``gaussian2D`` (float64, like numpy's ogrid of floats)."""
    m, n = [(ss - 1.0) / 2.0 for ss in shape]
    y = torch.arange(-m, m + 1, dtype=torch.float64)[:, None]
    x = torch.arange(-n, n + 1, dtype=torch.float64)[None, :]

    h = torch.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < _FLOAT64_EPS * h.max()] = 0
    return h


def draw_umich_gaussian(
    heatmap: torch.Tensor, center: tuple[int, int], radius: int, k: float = 1
) -> torch.Tensor:
    """CenterNet's ``draw_umich_gaussian``: max-merge a Gaussian into ``heatmap`` [H, W] in place."""
    diameter = 2 * radius + 1
    gaussian = gaussian2D((diameter, diameter), sigma=diameter / 6)

    x, y = int(center[0]), int(center[1])

    height, width = heatmap.shape[0:2]

    left, right = min(x, radius), min(width - x, radius + 1)
    top, bottom = min(y, radius), min(height - y, radius + 1)

    masked_heatmap = heatmap[y - top : y + bottom, x - left : x + right]
    masked_gaussian = gaussian[radius - top : radius + bottom, radius - left : radius + right]
    if min(masked_gaussian.shape) > 0 and min(masked_heatmap.shape) > 0:
        # np.maximum(masked_heatmap, masked_gaussian * k, out=masked_heatmap): the float64
        # Gaussian is rounded to the heatmap's dtype on the way in.
        torch.maximum(masked_heatmap, (masked_gaussian * k).to(heatmap.dtype), out=masked_heatmap)
    return heatmap


def centernet_targets(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    box_mask: torch.Tensor | None,
    *,
    num_classes: int,
    output_size: tuple[int, int],
    down_ratio: int = 4,
) -> dict[str, torch.Tensor]:
    """CenterNet's ctdet sample targets, one image and one box at a time.

    boxes [B, N, 4] (x1, y1, x2, y2) input pixels, labels [B, N], box_mask [B, N] (None: all).
    The affine transform of ctdet.py is replaced by a division by ``down_ratio``. A box whose
    label is outside [0, num_classes) is skipped like a masked one (CenterNet would fail).
    Arithmetic in float32 like ctdet.py's float32 arrays (float64 for float64 boxes); the
    radius in float64 (Python floats) and the Gaussian in float64, rounded into ``hm``.
    """
    dtype = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    output_h, output_w = output_size
    batch, max_objs = boxes.shape[:2]
    hm = torch.zeros(batch, num_classes, output_h, output_w, dtype=dtype)
    wh = torch.zeros(batch, max_objs, 2, dtype=dtype)
    reg = torch.zeros(batch, max_objs, 2, dtype=dtype)
    ind = torch.zeros(batch, max_objs, dtype=torch.int64)
    reg_mask = torch.zeros(batch, max_objs, dtype=torch.uint8)
    boxes = boxes.detach().cpu().to(dtype)
    labels = labels.detach().cpu()
    for i in range(batch):
        for k in range(max_objs):
            if box_mask is not None and not bool(box_mask[i, k]):
                continue
            cls_id = int(labels[i, k])
            if not 0 <= cls_id < num_classes:
                continue
            bbox = boxes[i, k].clone() / down_ratio
            bbox[[0, 2]] = torch.clip(bbox[[0, 2]], 0, output_w - 1)
            bbox[[1, 3]] = torch.clip(bbox[[1, 3]], 0, output_h - 1)
            h, w = bbox[3] - bbox[1], bbox[2] - bbox[0]
            if h > 0 and w > 0:
                radius = gaussian_radius((math.ceil(float(h)), math.ceil(float(w))))
                radius = max(0, int(radius))
                ct = torch.stack([(bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2])
                ct_int = ct.to(torch.int32)
                draw_umich_gaussian(hm[i, cls_id], ct_int.tolist(), radius)
                wh[i, k] = torch.stack([1.0 * w, 1.0 * h])
                ind[i, k] = int(ct_int[1]) * output_w + int(ct_int[0])
                reg[i, k] = ct - ct_int
                reg_mask[i, k] = 1
    return {"hm": hm, "wh": wh, "reg": reg, "ind": ind, "reg_mask": reg_mask}


def centernet_loss(
    hm: torch.Tensor | list[torch.Tensor],
    wh: torch.Tensor | list[torch.Tensor],
    reg: torch.Tensor | list[torch.Tensor],
    targets: dict[str, torch.Tensor],
    *,
    hm_weight: float = 1.0,
    wh_weight: float = 0.1,
    off_weight: float = 1.0,
    reg_loss: str = "l1",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CenterNet's ``CtdetLoss`` (L1 or smooth-L1 ``reg_loss``): total and its three terms.

    ``hm`` is the clamped-sigmoid heatmap [B, K, H, W]; ``wh``, ``reg`` the head outputs [B, 2, H, W];
    or each a list with one per stack, every term then averaged over the stacks.
    """
    hms, whs, regs = ([x] if torch.is_tensor(x) else list(x) for x in (hm, wh, reg))
    crit_reg = reg_l1_loss if reg_loss == "l1" else reg_smooth_l1_loss
    hm_loss = wh_loss = off_loss = 0
    for h_s, w_s, r_s in zip(hms, whs, regs):
        hm_loss = hm_loss + centernet_focal_loss(h_s, targets["hm"]) / len(hms)
        wh_loss = wh_loss + crit_reg(w_s, targets["reg_mask"], targets["ind"], targets["wh"]) / len(
            hms
        )
        off_loss = off_loss + crit_reg(
            r_s, targets["reg_mask"], targets["ind"], targets["reg"]
        ) / len(hms)
    loss = hm_weight * hm_loss + wh_weight * wh_loss + off_weight * off_loss
    return loss, {"hm": hm_loss, "wh": wh_loss, "off": off_loss}
