"""Reference component losses: masked focal, masked smooth-L1, masked cosine, hard negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_focal_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    alpha: float = 1.5,
    beta: float = 4.0,
    pos_threshold: float = 0.9,
    normalize: str = "weight",
    from_logits: bool = False,
    eps: float = 1e-7,
    positive: torch.Tensor | None = None,
) -> torch.Tensor:
    """Penalty-reduced focal loss with a per-pixel weight.

    pos = Y >= pos_threshold (or the boolean ``positive`` when given: a smoothed target's cells);
    f = -log(P + eps) (1 - P)^alpha on pos, -log(1 - P + eps) P^alpha (1 - Y)^beta elsewhere;
    with from_logits, P = sigmoid(x) and the logs are logsigmoid(x), logsigmoid(-x).
    normalize: "weight" -> sum(f W) / (sum(W) + eps); "num_pos" -> sum(f W) / n with
    n = sum(pos W), or 1 when n == 0; "sum" -> sum(f W); "mean" -> sum(f W) / max(numel(f), 1).
    A cell of W = 0 is not evaluated (docs/spec.md 3.3.1): its prediction is replaced by 0.5 before
    the formula, so whatever it holds (NaN, inf) it adds exactly 0 to the value and gets a zero
    gradient; its target still enters f (times W = 0).
    """
    y = target.to(pred.dtype)
    w = None if weight is None else weight.to(pred.dtype).expand_as(pred)
    if w is not None:
        pred = torch.where(w != 0, pred, 0.5)
    if from_logits:
        p = torch.sigmoid(pred)
        log_p = F.logsigmoid(pred)
        log_1mp = F.logsigmoid(-pred)
    else:
        p = pred
        log_p = torch.log(p + eps)
        log_1mp = torch.log(1 - p + eps)
    pos = y >= pos_threshold if positive is None else positive
    pos_term = -log_p * (1 - p) ** alpha
    neg_term = -log_1mp * p**alpha * (1 - y) ** beta
    f = torch.where(pos, pos_term, neg_term)
    w = torch.ones_like(f) if w is None else w
    total = (f * w).sum()
    if normalize == "weight":
        return total / (w.sum() + eps)
    if normalize == "num_pos":
        n = (pos.to(pred.dtype) * w).sum()
        return torch.where(n > 0, total / torch.where(n > 0, n, torch.ones_like(n)), total)
    if normalize == "sum":
        return total
    if normalize == "mean":
        return total / max(f.numel(), 1)  # an empty batch: 0, like "sum"
    raise ValueError(f"normalize must be weight, num_pos, sum or mean, got {normalize!r}")


def masked_smooth_l1_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 1.0,
    eps: float = 1e-7,
) -> torch.Tensor:
    """sum_{b,i,j} m * sum_c smoothL1(pred - target) / (sum(m) + eps); pred [B,C,H,W], m [B,1,H,W].

    smoothL1(d) = 0.5 d^2 / beta if |d| < beta else |d| - 0.5 beta. A pixel of m = 0 is not
    evaluated (docs/spec.md 3.3.2): its prediction is replaced by the target before the formula
    (d = 0), so whatever it holds (NaN, inf) it adds exactly 0 and gets a zero gradient; a
    non-finite target there still gives NaN (times m = 0).
    """
    target = target.to(pred.dtype).expand_as(pred)
    m = mask.to(pred.dtype)
    pred = torch.where(m != 0, pred, target)
    s = F.smooth_l1_loss(pred, target, reduction="none", beta=beta).sum(dim=1, keepdim=True)
    return (s * m).sum() / (m.sum() + eps)


def masked_cosine_loss(
    pred: torch.Tensor,
    target_angle: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps: float = 1e-7,
) -> torch.Tensor:
    """(ps, pc) = normalize(pred); c = ps sin(t) + pc cos(t); sum((1 - c) m) / (sum(m) + eps).

    pred [B,2,H,W] holds (sin, cos) at any non-zero scale; target_angle [B] in radians. A pixel of
    m = 0 is not evaluated (docs/spec.md 3.3.3): its prediction is replaced by (0, 1) before the
    formula, so whatever it holds (NaN, inf) it adds exactly 0 and gets a zero gradient; a
    non-finite target angle still gives NaN (times m = 0).
    """
    m = mask.to(pred.dtype)
    pred = torch.where(m != 0, pred, pred.new_tensor([0.0, 1.0]).view(1, 2, 1, 1))
    unit = F.normalize(pred, dim=1)
    t = target_angle.to(pred.dtype).view(-1, 1, 1)
    c = unit[:, 0] * torch.sin(t) + unit[:, 1] * torch.cos(t)
    m = m[:, 0]
    return ((1 - c) * m).sum() / (m.sum() + eps)


def bilinear_sample(
    heatmap: torch.Tensor, points: torch.Tensor, *, stride: int = 4
) -> torch.Tensor:
    """Bilinear samples [B, K] of heatmap [B,1,H,W] at points [B, K, 2] (x, y input pixels).

    Exactly F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=True) at grid point
    (u, v) = (x, y) / stride, that is gx = 2u / (W - 1) - 1, gy = 2v / (H - 1) - 1.
    """
    h, w = heatmap.shape[-2:]
    uv = points.to(heatmap.dtype) / stride
    gx = 2 * uv[..., 0] / (w - 1) - 1
    gy = 2 * uv[..., 1] / (h - 1) - 1
    grid = torch.stack([gx, gy], dim=-1)[:, :, None, :]  # [B, K, 1, 2]
    out = F.grid_sample(heatmap, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[:, 0, :, 0]


def hard_negative_margin_loss(
    heatmap: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    negative_mask: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    *,
    margin: float = 0.25,
    stride: int = 4,
) -> torch.Tensor:
    """mean over valid (b, k) of relu(margin - s(b, positive) + s(b, negative_k)); 0 if none valid.

    heatmap [B,1,H,W] (probabilities), positive [B,2], negatives [B,K,2], negative_mask [B,K] bool,
    weight [B,1,H,W]. Negative k of image b is valid if negative_mask[b, k], its cell
    (floor(v), floor(u)) lies on the grid, and weight at that cell is > 0.
    """
    b, _, h, w = heatmap.shape
    k = negatives.shape[1]
    s_pos = bilinear_sample(heatmap, positive[:, None, :], stride=stride)  # [B, 1]
    s_neg = bilinear_sample(heatmap, negatives, stride=stride)  # [B, K]
    cell = torch.floor(negatives.to(heatmap.dtype) / stride)
    cu, cv = cell[..., 0], cell[..., 1]
    valid = (cu >= 0) & (cu < w) & (cv >= 0) & (cv < h)
    if negative_mask is not None:
        valid = valid & negative_mask.bool()
    if weight is not None:
        wgt = weight.to(heatmap.dtype).expand(b, 1, h, w)[:, 0]
        ci = cv.clamp(0, h - 1).long()
        cj = cu.clamp(0, w - 1).long()
        w_at = wgt[torch.arange(b, device=heatmap.device)[:, None].expand(b, k), ci, cj]
        valid = valid & (w_at > 0)
    terms = torch.relu(margin - s_pos + s_neg) * valid.to(heatmap.dtype)
    count = valid.to(heatmap.dtype).sum()
    return torch.where(count > 0, terms.sum() / count.clamp_min(1), terms.sum() * 0)
