"""Reference sort- and pooling-based segmentation losses of the registry (SPEC 10.3, notes S2-S3):
literal restatements of the original algorithms, in the dtype given (float64 in the tests),
gradients by autograd. The test oracle of ``fused_losses.registry.lovasz`` and ``.boundary``.

* Lovasz-Softmax and Lovasz hinge: Berman et al.'s code as in mmseg ``lovasz_loss.py`` @13bd768
  (Alg. 1): ignored pixels removed by boolean indexing, a Python loop over the classes, one sort
  per class, ``lovasz_grad`` as the difference of the Jaccard losses of the sorted prefixes. Where
  mmseg fails (no valid pixel, no present class) the value is 0 with a zero gradient (SPEC S2).
* Boundary F1 loss (Bokhovkin & Burnaev): yiskw713/boundary_loss_for_remote_sensing
  ``boundary_loss.py``, per image, with SPEC 10.3's ignore rule (t = 1 at ignored pixels in the
  first pool, b_t = 0 there before the second pool, ignored pixels out of every sum), applied to
  the prediction alike (p = 1 and b_p = 0 there, docs/spec.md 12.2 rule 1: an ignored pixel's
  input takes no part in the value).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["boundary_loss", "lovasz_grad", "lovasz_hinge_loss", "lovasz_softmax_loss"]


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss at labels [P] sorted by decreasing
    error (Berman, Alg. 1): ``J_i = 1 - I_i/U_i`` of the first i+1 entries, ``g = diff(J)``."""
    p = len(gt_sorted)
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if p > 1:  # cover the 1-pixel case
        jaccard[1:p] = jaccard[1:p] - jaccard[0:-1]
    return jaccard


def _flatten_probs(probs, labels, ignore_index):
    """probs [n,C,*], labels [n,*] -> the valid rows [P,C], [P]."""
    c = probs.shape[1]
    probs = probs.movedim(1, -1).reshape(-1, c)
    labels = labels.reshape(-1)
    if ignore_index is None:
        return probs, labels
    valid = labels != ignore_index
    return probs[valid], labels[valid]


def _lovasz_softmax_flat(probs, labels, classes, class_weight):
    if probs.numel() == 0:  # only void pixels: 0, zero gradient
        return probs.sum() * 0.0
    c = probs.shape[1]
    losses = []
    class_to_sum = list(range(c)) if classes in ("all", "present") else classes
    for k in class_to_sum:
        fg = (labels == k).to(probs.dtype)
        if classes == "present" and fg.sum() == 0:
            continue
        errors = (fg - probs[:, k]).abs()
        errors_sorted, perm = torch.sort(errors, 0, descending=True)
        fg_sorted = fg[perm]
        loss = torch.dot(errors_sorted, lovasz_grad(fg_sorted))
        if class_weight is not None:
            loss = loss * class_weight[k]
        losses.append(loss)
    if not losses:  # no present class: 0 (mmseg would fail on an empty stack)
        return probs.sum() * 0.0
    return torch.stack(losses).mean()


def lovasz_softmax_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    classes: str | Sequence[int] = "present",
    per_image: bool = False,
    class_weight: Sequence[float] | torch.Tensor | None = None,
    ignore_index: int | None = 255,
) -> torch.Tensor:
    """Lovasz-Softmax (mmseg ``lovasz_softmax``): p = softmax(x) over dim 1; for each class c of
    ``classes`` ("present" among the valid pixels, "all", or a list), the errors ``abs(t_c - p_c)``
    of the valid pixels sorted descending, ``l_c = <errors, lovasz_grad(sorted t_c)>``; the plain
    mean of ``w_c l_c``. x [N,C,*], y [N,*] -> 0-dim (whole batch) or [N] (``per_image``)."""
    probs = torch.softmax(x, dim=1)
    if per_image:
        return torch.stack(
            [
                _lovasz_softmax_flat(
                    *_flatten_probs(probs[i : i + 1], y[i : i + 1], ignore_index),
                    classes,
                    class_weight,
                )
                for i in range(x.shape[0])
            ]
        )
    return _lovasz_softmax_flat(*_flatten_probs(probs, y, ignore_index), classes, class_weight)


def _lovasz_hinge_flat(logits, labels):
    if len(labels) == 0:  # only void pixels: 0, zero gradient
        return logits.sum() * 0.0
    signs = 2.0 * labels.to(logits.dtype) - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, perm = torch.sort(errors, dim=0, descending=True)
    gt_sorted = labels[perm].to(logits.dtype)
    return torch.dot(F.relu(errors_sorted), lovasz_grad(gt_sorted))


def _flatten_binary(logits, labels, ignore_index):
    logits = logits.reshape(-1)
    labels = labels.reshape(-1)
    if ignore_index is None:
        return logits, labels
    valid = labels != ignore_index
    return logits[valid], labels[valid]


def lovasz_hinge_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    per_image: bool = False,
    ignore_index: int | None = 255,
) -> torch.Tensor:
    """Lovasz hinge (mmseg ``lovasz_hinge``): errors ``1 - x (2y - 1)`` of the valid pixels sorted
    descending, ``<relu(errors), lovasz_grad(sorted y)>``. x [N,*] or [N,1,*], y [N,*] in {0,1}
    -> 0-dim or [N] (``per_image``)."""
    if x.dim() == y.dim() + 1:
        x = x.squeeze(1)
    if per_image:
        return torch.stack(
            [
                _lovasz_hinge_flat(*_flatten_binary(x[i], y[i], ignore_index))
                for i in range(x.shape[0])
            ]
        )
    return _lovasz_hinge_flat(*_flatten_binary(x, y, ignore_index))


def boundary_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    theta0: int = 3,
    theta: int = 5,
    ignore_index: int | None = 255,
) -> torch.Tensor:
    """Boundary F1 loss (Bokhovkin & Burnaev; yiskw713's code, per image):
    ``b(m) = maxpool_theta0(1-m) - (1-m)``, ``b+ = maxpool_theta(b)``,
    ``P = sum b_p b+_t / (sum b_p + 1e-7)``, ``R = sum b+_p b_t / (sum b_t + 1e-7)``,
    ``l_n = mean_c(1 - 2PR/(P + R + 1e-7))``; ignored pixels: t = p = 1 (every class) in the
    first pool (their logits replaced by 0), b_t = b_p = 0 before the second, out of every sum:
    their input takes no part. x [N,C,H,W], y [N,H,W] -> [N]."""
    n, c, _, _ = x.shape
    if ignore_index is None:
        valid = torch.ones_like(y, dtype=torch.bool)
    else:
        valid = y != ignore_index
    # an ignored pixel's logits take no part (docs/spec.md 12.2 rule 1): replaced by 0 (so a
    # NaN there stays out of the softmax), and its p is 1 for every class, like t
    x = torch.where(valid[:, None], x, torch.zeros_like(x))
    pred = torch.softmax(x, dim=1)
    pred = torch.where(valid[:, None], pred, torch.ones_like(pred))
    one_hot_gt = torch.stack([(y == k) for k in range(c)], dim=1).to(x.dtype)
    one_hot_gt = torch.where(valid[:, None], one_hot_gt, torch.ones_like(one_hot_gt))
    v = valid[:, None].to(x.dtype)
    # boundary maps
    gt_b = F.max_pool2d(1 - one_hot_gt, kernel_size=theta0, stride=1, padding=(theta0 - 1) // 2)
    gt_b = gt_b - (1 - one_hot_gt)
    gt_b = gt_b * v  # b_t = 0 at ignored pixels before the second pool
    pred_b = F.max_pool2d(1 - pred, kernel_size=theta0, stride=1, padding=(theta0 - 1) // 2)
    pred_b = pred_b - (1 - pred)
    pred_b = pred_b * v  # b_p = 0 at ignored pixels before the second pool, as b_t
    # extended boundary maps
    gt_b_ext = F.max_pool2d(gt_b, kernel_size=theta, stride=1, padding=(theta - 1) // 2)
    pred_b_ext = F.max_pool2d(pred_b, kernel_size=theta, stride=1, padding=(theta - 1) // 2)
    # reshape
    gt_b = gt_b.reshape(n, c, -1)
    pred_b = pred_b.reshape(n, c, -1)
    gt_b_ext = gt_b_ext.reshape(n, c, -1)
    pred_b_ext = pred_b_ext.reshape(n, c, -1)
    v = v.reshape(n, 1, -1)
    # precision, recall over the valid pixels
    P = torch.sum(pred_b * gt_b_ext * v, dim=2) / (torch.sum(pred_b * v, dim=2) + 1e-7)
    R = torch.sum(pred_b_ext * gt_b * v, dim=2) / (torch.sum(gt_b * v, dim=2) + 1e-7)
    BF1 = 2 * P * R / (P + R + 1e-7)
    return torch.mean(1 - BF1, dim=1)
