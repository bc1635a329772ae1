"""The registry's fused dense losses as benchmark ops (docs/spec.md 12.4, issue "A config-driven
loss registry", item 6): ``LIBRARY`` calls the registry loss on a backend, ``EAGER`` is what a
PyTorch user writes today (``F.cross_entropy``, the torchvision-style sigmoid focal loss, the
literal GFL/VFL formulas, the textbook GIoU/CIoU of the box losses, docs/spec.md 12.5), which
``bench.cases`` also compiles for the ``compile`` variant.

Each op takes ``(logits, target)`` (the box losses: ``(pred, target)`` boxes [N, 4]) and returns
the 0-dim "mean" loss (QFL: mean over positions); the distance transform takes a mask [N, H, W]
and its baseline is SciPy on the CPU.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from fused_losses.reference.registry import detection as _ref_det

from fused_losses.registry import build_loss
from fused_losses.registry.utils import distance_transform

CE_SMOOTHING = 0.1
KD_T = 4.0
IGNORE = 255
_LOSSES: dict[tuple, torch.nn.Module] = {}


def _loss(cfg: dict, backend: str) -> torch.nn.Module:
    key = (tuple(sorted(cfg.items())), backend)
    if key not in _LOSSES:
        _LOSSES[key] = build_loss({**cfg, "backend": backend})
    return _LOSSES[key]


def _ce(x, y, backend):
    cfg = {"type": "CrossEntropyLoss", "ignore_index": IGNORE, "label_smoothing": CE_SMOOTHING}
    return _loss(cfg, backend)(x, y)


def _focal(x, t, backend):
    return _loss({"type": "MultiLabelFocalLoss"}, backend)(x, t)


def _qfl(x, target, backend):
    return _loss({"type": "QualityFocalLoss"}, backend)(x, target)


def _vfl(x, q, backend):
    return _loss({"type": "VariFocalLoss"}, backend)(x, q)


def _kd(s, t, backend):
    return _loss({"type": "KnowledgeDistillationLoss", "temperature": KD_T}, backend)(s, t)


def _dice(x, y, backend):
    return _loss({"type": "DiceLoss", "ignore_index": IGNORE}, backend)(x, y)


def _ohem(x, y, backend):
    return _loss({"type": "OHEMCrossEntropyLoss", "ignore_index": IGNORE}, backend)(x, y)


def _lovasz(x, y, backend):
    return _loss({"type": "LovaszLoss", "ignore_index": IGNORE}, backend)(x, y)


def _distance_transform(mask, backend):
    return distance_transform(mask, backend)


def _giou(pred, target, backend):
    return _loss({"type": "GIoULoss"}, backend)(pred, target)


def _ciou(pred, target, backend):
    return _loss({"type": "CIoULoss"}, backend)(pred, target)


LIBRARY = SimpleNamespace(
    registry_ce_seg=_ce, registry_ce_seg_bf16=_ce, registry_ce_logits=_ce,
    registry_sigmoid_focal=_focal, registry_qfl=_qfl, registry_vfl=_vfl, registry_kd=_kd,
    registry_dice=_dice, registry_ohem_ce=_ohem, registry_lovasz=_lovasz,
    registry_distance_transform=_distance_transform, registry_giou=_giou, registry_ciou=_ciou,
)  # fmt: skip


def eager_ce(x, y):
    return F.cross_entropy(x, y, ignore_index=IGNORE, label_smoothing=CE_SMOOTHING)


def eager_sigmoid_focal(x, t, alpha: float = 0.25, gamma: float = 2.0):
    """``torchvision.ops.sigmoid_focal_loss(..., reduction="mean")``, restated."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    return ((alpha * t + (1 - alpha) * (1 - t)) * loss).mean()


def eager_qfl(x, target):
    return _ref_det.quality_focal_loss(x, target).mean()


def eager_vfl(x, q):
    return _ref_det.varifocal_loss(x, q).mean()


def eager_kd(s, t):
    """mmrazor's ``KLDivergence``: T^2 kl_div(log_softmax(s/T), softmax(t/T)), "batchmean"."""
    log_p = F.log_softmax(s / KD_T, dim=1)
    q = F.softmax(t.detach() / KD_T, dim=1)
    return KD_T**2 * F.kl_div(log_p, q, reduction="sum") / s.shape[0]


def eager_dice(x, y, smooth: float = 1.0):
    """mmseg 0.x's Dice as users write it: softmax, a one-hot of the labels, per-image and
    per-class sums of p t and p^2 + t^2 over the valid pixels."""
    c = x.shape[1]
    p = F.softmax(x, dim=1)
    v = (y != IGNORE).unsqueeze(1).to(p.dtype)
    t = F.one_hot(torch.where(y == IGNORE, 0, y), c).permute(0, 3, 1, 2).to(p.dtype)
    num = 2 * (p * t * v).flatten(2).sum(2) + smooth
    den = ((p * p + t * t) * v).flatten(2).sum(2) + smooth
    return (1 - num / den).mean()


def eager_ohem(x, y, thresh: float = 0.7, min_kept: int = 100000):
    """PIDNet's / mmseg's OHEM cross-entropy as published: per-pixel CE, the probabilities of
    the true class of the valid pixels sorted (boolean indexing), the threshold on the host."""
    losses = F.cross_entropy(x, y, ignore_index=IGNORE, reduction="none").reshape(-1)
    valid = y.reshape(-1) != IGNORE
    p = F.softmax(x, dim=1).gather(1, torch.where(y == IGNORE, 0, y).unsqueeze(1)).reshape(-1)
    q, order = p[valid].sort()
    threshold = max(float(q[min(min_kept, q.numel() - 1)]), thresh)
    return losses[valid][order][q < threshold].mean()


def eager_lovasz(x, y):
    """mmseg's ``lovasz_softmax`` (flat, classes "present") as published: the valid pixels
    selected by boolean indexing, then per class a host check for presence, a sort of the errors,
    and Berman's gradient as differences of cumulative Jaccard losses."""
    c = x.shape[1]
    p = F.softmax(x, dim=1).movedim(1, -1).reshape(-1, c)
    lab = y.reshape(-1)
    valid = lab != IGNORE
    p, lab = p[valid], lab[valid]
    losses = []
    for k in range(c):
        fg = (lab == k).to(p.dtype)
        if fg.sum() == 0:
            continue
        err, perm = torch.sort((fg - p[:, k]).abs(), descending=True)
        fg_sorted = fg[perm]
        total = fg_sorted.sum()
        jaccard = 1 - (total - fg_sorted.cumsum(0)) / (total + (1 - fg_sorted).cumsum(0))
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(torch.dot(err, jaccard))
    return torch.stack(losses).mean()


def eager_distance_transform(mask):
    """``scipy.ndimage.distance_transform_edt`` per image, on the CPU (SciPy's own code)."""
    from scipy import ndimage

    cpu = mask.cpu().numpy()
    out = [torch.from_numpy(ndimage.distance_transform_edt(m)).float() for m in cpu]
    return torch.stack(out).to(mask.device)


def eager_giou(pred, target):
    """GIoU as users write it (mmdet's ``giou_loss``, torchvision's ``generalized_box_iou_loss``):
    areas, intersection and enclosing box from the corners, ``1 - IoU + (A_c - U) / A_c``."""
    return _ref_det.giou_loss(pred, target).mean()


def eager_ciou(pred, target):
    """CIoU as users write it (torchvision's ``complete_box_iou_loss`` with mmdet's eps)."""
    return _ref_det.ciou_loss(pred, target).mean()


EAGER = SimpleNamespace(
    registry_ce_seg=eager_ce, registry_ce_seg_bf16=eager_ce, registry_ce_logits=eager_ce,
    registry_sigmoid_focal=eager_sigmoid_focal, registry_qfl=eager_qfl, registry_vfl=eager_vfl,
    registry_kd=eager_kd, registry_dice=eager_dice, registry_ohem_ce=eager_ohem,
    registry_lovasz=eager_lovasz, registry_distance_transform=eager_distance_transform,
    registry_giou=eager_giou, registry_ciou=eager_ciou,
)  # fmt: skip
