"""Reference segmentation losses of the registry (SPEC 10.3), literal: loops over images and
classes with explicit one-hot targets and boolean selection, in the dtype given (float64 in the
tests), gradients by autograd. ``x`` logits [N, C, *], ``y`` index labels [N, *]."""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

__all__ = [
    "binary_dice_loss",
    "dice_loss",
    "distance_transform",
    "generalized_dice_loss",
    "hd_loss",
    "ohem_binary_loss",
    "ohem_cross_entropy_loss",
    "surface_loss",
]


def _probs(x, use_sigmoid=False, activate=True):
    if not activate:
        return x
    return torch.sigmoid(x) if use_sigmoid else torch.softmax(x, dim=1)


def dice_loss(x, y, *, smooth=1.0, exponent=2.0, ignore_index=255, naive_dice=False,
              use_sigmoid=False, activate=True, class_weight=None):  # fmt: skip
    """l_n = sum_{c in K} w_c (1 - D_nc) / |K| -> [N]; y index labels or a one-hot of x's shape."""
    p = _probs(x, use_sigmoid, activate)
    n, c = x.shape[:2]
    e = 1.0 if naive_dice else exponent
    out = []
    for i in range(n):
        pi = p[i].reshape(c, -1)
        if y.dim() == x.dim():
            t = y[i].reshape(c, -1).to(x.dtype)
            valid = torch.ones(pi.shape[1], dtype=torch.bool)
        else:
            yi = y[i].reshape(-1)
            valid = (yi != ignore_index) & (yi >= 0) & (yi < c)
            t = torch.stack([(yi == k).to(x.dtype) for k in range(c)])
        total = 0
        classes = [k for k in range(c) if k != ignore_index]
        for k in classes:
            pk, tk = pi[k][valid], t[k][valid]
            d = (2 * (pk * tk).sum() + smooth) / ((pk**e).sum() + (tk**e).sum() + smooth)
            w = 1.0 if class_weight is None else class_weight[k]
            total = total + w * (1 - d)
        out.append(total / len(classes))
    return torch.stack(out)


def binary_dice_loss(x, y, *, smooth=1.0, exponent=2.0, ignore_index=255):
    """1 - D_n with p = sig(x); x [N,*] or [N,1,*], y x's shape or [N,*] -> [N]."""
    n = x.shape[0]
    p = torch.sigmoid(x).reshape(n, -1)
    t = y.reshape(n, -1)
    out = []
    for i in range(n):
        keep = t[i] != ignore_index
        pi, ti = p[i][keep], t[i][keep].to(x.dtype)
        d = (2 * (pi * ti).sum() + smooth) / ((pi**exponent).sum() + (ti**exponent).sum() + smooth)
        out.append(1 - d)
    return torch.stack(out)


def generalized_dice_loss(x, y, *, smooth=1e-5, ignore_index=255, use_sigmoid=False):
    """MONAI's generalized Dice per image: w_c = 1/(sum t_c)^2, infinite -> max finite w."""
    p = _probs(x, use_sigmoid)
    n, c = x.shape[:2]
    out = []
    for i in range(n):
        pi = p[i].reshape(c, -1)
        if y.dim() == x.dim():
            t = y[i].reshape(c, -1).to(x.dtype)
        else:
            yi = y[i].reshape(-1)
            keep = (yi != ignore_index) & (yi >= 0) & (yi < c)
            pi = pi[:, keep]
            t = torch.stack([(yi[keep] == k).to(x.dtype) for k in range(c)])
        ground = t.sum(1)
        w = 1 / ground**2
        finite = [float(v) for v in w if math.isfinite(float(v))]
        fill = max(finite) if finite else 0.0
        w = torch.where(torch.isinf(w), torch.tensor(fill, dtype=x.dtype), w)
        num = 2 * (w * (pi * t).sum(1)).sum() + smooth
        den = (w * (pi.sum(1) + t.sum(1))).sum() + smooth
        out.append(1 - num / den)
    return torch.stack(out)


def _ohem_mean(loss, q, valid, thresh, min_kept, reduction):
    # a NaN q (a NaN logit; +inf in a softmax row) is invalid, as an ignored pixel: out of the
    # sort and never kept (Python's max(thresh, nan) would otherwise pick thresh when k lands
    # on it)
    valid = valid & ~torch.isnan(q)
    qv = q[valid]
    kept = torch.zeros_like(valid)
    if qv.numel() > 0:
        ordered = torch.sort(qv).values
        k = min(max(min_kept, 1), qv.numel() - 1)
        tau = max(thresh, float(ordered[k]))
        kept = valid & (q < tau)
    lk = torch.where(kept, loss, torch.zeros((), dtype=loss.dtype))
    if reduction == "none":
        return lk
    if reduction == "sum":
        return lk.sum()
    count = int(kept.sum())
    return lk.sum() / count if count else lk.sum() * 0


def ohem_cross_entropy_loss(x, y, *, thresh=0.7, min_kept=100000, ignore_index=255,
                            class_weight=None, reduction="mean"):  # fmt: skip
    """mmseg/PIDNet OHEM: CE on the pixels whose p_y is under max(thresh, the k-th smallest)."""
    c = x.shape[1]
    valid = (y != ignore_index) & (y >= 0) & (y < c)
    ys = torch.where(valid, y, 0)
    w = None if class_weight is None else torch.as_tensor(class_weight, dtype=x.dtype)
    loss = F.cross_entropy(x, ys, weight=w, reduction="none")
    with torch.no_grad():
        q = torch.softmax(x, 1).gather(1, ys.unsqueeze(1)).squeeze(1)
    return _ohem_mean(loss, q, valid, thresh, min_kept, reduction)


def ohem_binary_loss(x, y, *, thresh=0.7, min_kept=100000, ignore_index=255, reduction="mean"):
    """OHEM with q = sig(x) (y = 1) or 1 - sig(x), BCE; y of x's shape."""
    valid = y != ignore_index
    t = torch.where(valid, y, 0).to(x.dtype)
    loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    with torch.no_grad():
        q = torch.where(t == 1, torch.sigmoid(x), 1 - torch.sigmoid(x))
    return _ohem_mean(loss, q, valid, thresh, min_kept, reduction)


def surface_loss(x, phi):
    """Kervadec et al.: softmax(x) * phi -> [N,C,*]."""
    return torch.softmax(x, dim=1) * phi


def distance_transform(mask):
    """Brute force: for each pixel inside, the distance to the nearest pixel outside (float64);
    0 outside, 0 everywhere for an image with no pixel outside."""
    n, h, w = mask.shape
    out = torch.zeros(n, h, w, dtype=torch.float64)
    for i in range(n):
        outside = [(a, b) for a, b in itertools.product(range(h), range(w)) if not mask[i, a, b]]
        if not outside:
            continue
        pts = torch.tensor(outside, dtype=torch.float64)
        for a, b in itertools.product(range(h), range(w)):
            if mask[i, a, b]:
                out[i, a, b] = (
                    ((pts - torch.tensor([a, b], dtype=torch.float64)) ** 2).sum(1).min().sqrt()
                )
    return out


def hd_loss(x, y, *, alpha=2.0, ignore_index=255):
    """(p_c - t_c)^2 (d_t^alpha + d_s^alpha), c >= 1, 0 on ignored pixels -> [N,C-1,H,W]."""
    c = x.shape[1]
    p = torch.softmax(x, 1)
    valid = (y != ignore_index) & (y >= 0) & (y < c)
    pred = x.detach().argmax(1)
    out = []
    for k in range(1, c):
        t = (y == k) & valid
        s = (pred == k) & valid
        dt, ds = distance_transform(t).to(x.dtype), distance_transform(s).to(x.dtype)
        lk = (p[:, k] - t.to(x.dtype)) ** 2 * (dt**alpha + ds**alpha)
        out.append(torch.where(valid, lk, torch.zeros((), dtype=x.dtype)))
    return torch.stack(out, 1)
