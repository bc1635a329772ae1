"""Reference gap-detection loss, composed literally from the reference labels and terms."""

from __future__ import annotations

import torch

from .labels import gaussian_heatmap, offset_target, padding_weight
from .losses import (
    hard_negative_margin_loss,
    masked_cosine_loss,
    masked_focal_loss,
    masked_smooth_l1_loss,
)


def gap_detection_loss(
    heatmap_gap: torch.Tensor,
    heatmap_piece: torch.Tensor,
    offset: torch.Tensor,
    angle: torch.Tensor,
    gap_center: torch.Tensor,
    piece_center: torch.Tensor,
    gap_angle: torch.Tensor,
    confusers: torch.Tensor | None = None,
    confuser_mask: torch.Tensor | None = None,
    padding_mask: torch.Tensor | None = None,
    valid_box: torch.Tensor | None = None,
    return_components: bool = False,
    *,
    stride: int = 4,
    sigma: float = 1.5,
    center: str = "cell",
    alpha: float = 1.5,
    beta: float = 4.0,
    pos_threshold: float = 0.9,
    reg_threshold: float = 0.7,
    margin: float = 0.25,
    w_heatmap: float = 1.0,
    w_offset: float = 1.0,
    w_angle: float = 0.2,
    w_hard_negative: float = 1.0,
    from_logits: bool = False,
    eps: float = 1e-7,
    label_smoothing: float = 0.0,
):
    """Total = w_heatmap (L_heat_gap + L_heat_piece) + w_offset L_offset + w_angle L_angle
    + w_hard_negative L_hard_negative (docs/spec.md section 3.3).

    The composed terms do not evaluate a cell of W = 0 (focal) or m = 0 (offset, angle): its
    prediction is replaced by a harmless value (``losses.masked_*``), so whatever it holds adds 0
    and gets a 0 gradient. The hard negatives read the gap heatmap at their samples, padded or not
    (spec 3.3.4; with from_logits, autograd's sigmoid backward gives 0 * sigmoid'(x) at a cell no
    sample reads, NaN for a NaN logit, where the backends give 0: spec 8)."""
    dt = heatmap_gap.dtype
    b, _, hf, wf = heatmap_gap.shape
    lab = dict(sigma=sigma, stride=stride, center=center, dtype=dt)
    y_gap = gaussian_heatmap(gap_center[:, None, :], (hf, wf), **lab)
    y_piece = gaussian_heatmap(piece_center[:, None, :], (hf, wf), **lab)
    if valid_box is not None:
        valid_box = valid_box.to(dt)
    w = padding_weight(padding_mask, valid_box, size=(hf, wf), stride=stride, dtype=dt)
    w = w.to(heatmap_gap.device).expand(b, 1, hf, wf)
    focal = dict(
        alpha=alpha, beta=beta, pos_threshold=pos_threshold, from_logits=from_logits, eps=eps
    )
    # Label smoothing: the focal target is Y (1 - 2 e) + e; positives stay Y >= pos_threshold.
    ys_gap = gaussian_heatmap(
        gap_center[:, None, :], (hf, wf), label_smoothing=label_smoothing, **lab
    )
    ys_piece = gaussian_heatmap(
        piece_center[:, None, :], (hf, wf), label_smoothing=label_smoothing, **lab
    )
    l_heat_gap = masked_focal_loss(heatmap_gap, ys_gap, w, positive=y_gap >= pos_threshold, **focal)
    l_heat_piece = masked_focal_loss(
        heatmap_piece, ys_piece, w, positive=y_piece >= pos_threshold, **focal
    )
    m_gap = (y_gap > reg_threshold).to(dt) * w
    m_piece = (y_piece > reg_threshold).to(dt) * w
    t_gap = offset_target(gap_center.to(dt), stride=stride).view(b, 2, 1, 1)
    t_piece = offset_target(piece_center.to(dt), stride=stride).view(b, 2, 1, 1)
    l_offset = masked_smooth_l1_loss(offset[:, 0:2], t_gap, m_gap, eps=eps) + masked_smooth_l1_loss(
        offset[:, 2:4], t_piece, m_piece, eps=eps
    )
    l_angle = masked_cosine_loss(angle, gap_angle, m_gap, eps=eps)
    if confusers is None:
        confusers = gap_center.new_zeros(b, 0, 2)
    probs = torch.sigmoid(heatmap_gap) if from_logits else heatmap_gap
    l_hard = hard_negative_margin_loss(
        probs, gap_center, confusers, confuser_mask, w, margin=margin, stride=stride
    )
    total = (
        w_heatmap * (l_heat_gap + l_heat_piece)
        + w_offset * l_offset
        + w_angle * l_angle
        + w_hard_negative * l_hard
    )
    if not return_components:
        return total
    components = {
        "heatmap_gap": l_heat_gap.detach(),
        "heatmap_piece": l_heat_piece.detach(),
        "offset": l_offset.detach(),
        "angle": l_angle.detach(),
        "hard_negative": l_hard.detach(),
    }
    return total, components
