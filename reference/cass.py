"""Reference CASS soft-target loss (docs/spec.md 10): the soft box mask on the patch grid of a
detector feature map, and the soft focal (or MSE) loss of a patch-importance head against it.

Literal: each box at each patch centre (broadcast over [B, N, Hp, Wp], the per-box stack that
DSET builds), the box arithmetic in float64 for float64 boxes and in float32 for every other
dtype (integer and half-precision boxes too, docs/spec.md 10.1; so that a patch centre lying
exactly on a region edge is decided as the fused backends decide it), the loss in the scores'
dtype, gradients by autograd. 1 - P is sigmoid(-s) (10.3): a log or a difference that involves a
P near 1 is formed from it (log(P + eps) = log1p(eps - (1 - P)), P - Y = (1 - Y) - (1 - P)), so
that the float64 values stay exact to float64 precision for confident logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def patch_grid(feat_size: tuple[int, int], patch_size: int) -> tuple[int, int, int, int]:
    """(Ph, Pw, Hp, Wp): cells per patch (``min(patch_size, h or w)``) and the patch counts."""
    h, w = feat_size
    ph, pw = min(patch_size, h), min(patch_size, w)
    return ph, pw, math.ceil(h / ph), math.ceil(w / pw)


def box_patch_mask(
    box: torch.Tensor,
    px: torch.Tensor,
    py: torch.Tensor,
    feat_size: tuple[int, int],
    *,
    stride: float,
    expansion_ratio: float,
    min_size: float,
    decay: str,
    anisotropic: bool,
    base_sigma: float,
    small_target_gain: float,
    small_target_threshold: float,
) -> torch.Tensor:
    """M_n at the patch centres (px, py) (feature cells, the boxes' dtype) of the boxes
    ``box[..., 4]`` (x1, y1, x2, y2) in pixels; the box and the centres broadcast (boxes
    [B,N,1,1,4] against centres [Hp,Wp] give M [B,N,Hp,Wp]). M = 0 for a box with a coordinate,
    centre or band (X1..Y2 after the min_size enlargement, cx, cy, ew, eh) that is not finite."""
    h, w = feat_size
    x1, y1, x2, y2 = (box[..., i] / stride for i in range(4))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    thin_x = x2 - x1 < min_size  # enlarged to min_size about the centre
    x1, x2 = torch.where(thin_x, cx - min_size / 2, x1), torch.where(thin_x, cx + min_size / 2, x2)
    thin_y = y2 - y1 < min_size
    y1, y2 = torch.where(thin_y, cy - min_size / 2, y1), torch.where(thin_y, cy + min_size / 2, y2)
    bw, bh = x2 - x1, y2 - y1
    ew, eh = expansion_ratio * bw, expansion_ratio * bh
    zero = torch.zeros((), dtype=box.dtype)
    core = (
        (torch.maximum(x1, zero) <= px)
        & (px <= torch.minimum(x2, zero + w))
        & (torch.maximum(y1, zero) <= py)
        & (py <= torch.minimum(y2, zero + h))
    )
    dil = (
        (torch.maximum(x1 - ew, zero) <= px)
        & (px <= torch.minimum(x2 + ew, zero + w))
        & (torch.maximum(y1 - eh, zero) <= py)
        & (py <= torch.minimum(y2 + eh, zero + h))
    )
    ctx = dil & ~core
    dx = torch.clamp((px - cx).abs() - bw / 2, min=0)
    dy = torch.clamp((py - cy).abs() - bh / 2, min=0)
    small = torch.sqrt(bw * bh) < small_target_threshold
    sig_small, sig = base_sigma * small_target_gain, base_sigma
    two_sig2 = torch.where(  # 2 sig^2, the adaptive sigma of small boxes
        small,
        torch.tensor(2 * sig_small**2, dtype=box.dtype),
        torch.tensor(2 * sig**2, dtype=box.dtype),
    )
    if anisotropic:
        nx = dx / torch.clamp(ew, min=1)
        ny = dy / torch.clamp(eh, min=1)
        rho = torch.maximum(nx, ny)
        g = torch.exp(-(nx**2) / two_sig2) * torch.exp(-(ny**2) / two_sig2)
    else:
        rho = torch.sqrt(dx**2 + dy**2) / torch.clamp(torch.sqrt(ew**2 + eh**2), min=1)
        g = torch.exp(-(rho**2) / two_sig2)
    if decay == "gaussian":
        d = torch.where(rho < 1, g, zero)
    elif decay == "linear":
        d = torch.clamp(1 - rho, min=0)
    else:
        raise ValueError(f"decay must be gaussian or linear, got {decay!r}")
    m = torch.where(core, zero + 1, torch.where(ctx, d, zero))
    # a box whose arithmetic is not finite (a NaN or infinite coordinate, or an overflow of its
    # centre or band in the boxes' dtype) is in no region
    visible = torch.ones_like(x1, dtype=torch.bool)
    for t in (x1, y1, x2, y2, cx, cy, ew, eh):
        visible = visible & torch.isfinite(t)
    return torch.where(visible, m, zero)


def cass_soft_target(
    boxes: torch.Tensor,
    feat_size: tuple[int, int],
    *,
    box_mask: torch.Tensor | None = None,
    stride: float = 32,
    patch_size: int = 4,
    expansion_ratio: float = 0.3,
    min_size: float = 1.0,
    decay: str = "gaussian",
    anisotropic: bool = True,
    base_sigma: float = 0.5,
    small_target_gain: float = 1.5,
    small_target_threshold: float = 4.0,
    merge: str = "max",
) -> torch.Tensor:
    """Y [B,1,Hp,Wp] in the box dtype (float64 for float64 boxes, else float32, the boxes cast
    to it first): per image, over the boxes with ``box_mask`` set,
    ``max_n M_n`` (``merge="max"``) or ``min(1, sum_n M_n)`` (``"sum"``); patch (k, l) evaluated
    at its centre ((l + 1/2) Pw, (k + 1/2) Ph). Builds the per-box stack M [B,N,Hp,Wp] (as DSET
    does per image), which the fused backends never hold."""
    bdt = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    boxes = boxes.detach().to(bdt)
    b, n = boxes.shape[:2]
    ph, pw, hp, wp = patch_grid(feat_size, patch_size)
    dev = boxes.device
    mask = torch.ones(b, n, dtype=torch.bool, device=dev) if box_mask is None else box_mask.bool()
    py = ((torch.arange(hp, dtype=boxes.dtype, device=dev) + 0.5) * ph)[:, None].expand(hp, wp)
    px = ((torch.arange(wp, dtype=boxes.dtype, device=dev) + 0.5) * pw)[None, :].expand(hp, wp)
    m = box_patch_mask(
        boxes[:, :, None, None, :],
        px,
        py,
        feat_size,
        stride=stride,
        expansion_ratio=expansion_ratio,
        min_size=min_size,
        decay=decay,
        anisotropic=anisotropic,
        base_sigma=base_sigma,
        small_target_gain=small_target_gain,
        small_target_threshold=small_target_threshold,
    )  # [B, N, Hp, Wp]
    m = torch.where(mask[:, :, None, None], m, torch.zeros((), dtype=m.dtype, device=dev))
    if merge == "max":
        y = m.amax(dim=1) if n else torch.zeros(b, hp, wp, dtype=boxes.dtype, device=dev)
    elif merge == "sum":
        y = m.sum(dim=1).clamp(max=1)
    else:
        raise ValueError(f"merge must be max or sum, got {merge!r}")
    return y[:, None]


def soft_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 2.0,
    beta: float = 4.0,
    eps: float = 1e-8,
    reduction: str = "mean",
) -> torch.Tensor:
    """f = -Y (1-P)^alpha log(P + eps) - (1-Y) P^beta log(1-P + eps), P = sigmoid(s), 1 - P as
    sigmoid(-s); eps = 0: the exact logs logsigmoid(s), logsigmoid(-s). The powers are
    exp(alpha logsigmoid(-s)) and exp(beta logsigmoid(s)) (x^0 = 1). Mean over every element
    (an empty input: 0) or sum."""
    y = target.to(logits.dtype)
    p, q = torch.sigmoid(logits), torch.sigmoid(-logits)
    if eps == 0:
        log_p, log_q = F.logsigmoid(logits), F.logsigmoid(-logits)
    else:
        log_p, log_q = _log_plus(p, q, eps), _log_plus(q, p, eps)
    # the powers from the exact logs (spec 10.3.1): q**alpha of a q that underflows to 0 would be
    # 0 for alpha = 1e-40 (the value is 1) and give a NaN gradient; x^0 = 1
    q_a = torch.exp(alpha * F.logsigmoid(-logits)) if alpha != 0 else torch.ones_like(q)
    p_b = torch.exp(beta * F.logsigmoid(logits)) if beta != 0 else torch.ones_like(p)
    f = -y * q_a * log_p - (1 - y) * p_b * log_q
    return _reduce(f, reduction)


def _log_plus(p: torch.Tensor, q: torch.Tensor, eps: float) -> torch.Tensor:
    """log(p + eps) of p = 1 - q: as log(1 + (eps - q)) where p >= 1/2 (p + eps = 1 + eps - q
    exactly; the p rounded near 1 would lose q's digits), else log(p + eps). Each branch sees a
    harmless input where it is not taken (its -inf would make autograd's gradient NaN)."""
    hi = p >= 0.5
    one = torch.ones((), dtype=p.dtype, device=p.device)
    return torch.where(
        hi, torch.log1p(torch.where(hi, eps - q, 0 * one)), torch.log(torch.where(hi, one, p + eps))
    )


def soft_mse_loss(logits: torch.Tensor, target: torch.Tensor, *, reduction: str = "mean"):
    """f = (sigmoid(s) - Y)^2 (the pre-audit CASS loss); P - Y as (1 - Y) - sigmoid(-s) where
    P >= 1/2 (the same number, without the P rounded near 1)."""
    y = target.to(logits.dtype)
    p, q = torch.sigmoid(logits), torch.sigmoid(-logits)
    f = torch.where(p >= 0.5, (1 - y) - q, p - y) ** 2
    return _reduce(f, reduction)


def _reduce(f: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return f.sum()
    if reduction == "mean":
        return f.sum() / max(f.numel(), 1)
    raise ValueError(f"reduction must be mean or sum, got {reduction!r}")


def cass_loss(
    scores: torch.Tensor,
    boxes: torch.Tensor,
    box_mask: torch.Tensor | None = None,
    *,
    feat_size: tuple[int, int],
    loss: str = "focal",
    alpha: float = 2.0,
    beta: float = 4.0,
    eps: float = 1e-8,
    reduction: str = "mean",
    **target_options,
) -> torch.Tensor:
    """The soft focal (or MSE) loss of the patch scores [B, Hp*Wp] or [B,1,Hp,Wp] against
    :func:`cass_soft_target` of the boxes (``target_options``: its keywords, stride to merge);
    the mean runs over all B Hp Wp patches."""
    y = cass_soft_target(boxes, feat_size, box_mask=box_mask, **target_options)
    y = y.to(scores.device).reshape(scores.shape)
    if loss == "focal":
        return soft_focal_loss(scores, y, alpha=alpha, beta=beta, eps=eps, reduction=reduction)
    if loss == "mse":
        return soft_mse_loss(scores, y, reduction=reduction)
    raise ValueError(f"loss must be focal or mse, got {loss!r}")
