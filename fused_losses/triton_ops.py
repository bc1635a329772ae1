"""The triton backend's autograd glue: one entry point per public op (inputs already validated).

Placeholder until the kernels land: every entry raises NotImplementedError.
"""

from __future__ import annotations

import torch


def _pending(op: str):
    raise NotImplementedError(
        f"{op}: the triton backend is not implemented yet; use backend='torch'"
    )


def gap_detection_loss_triton(opts: dict, inputs: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    _pending("gap_detection_loss")


def masked_focal_loss_triton(pred, target, weight, **opts) -> torch.Tensor:
    _pending("masked_focal_loss")


def masked_smooth_l1_loss_triton(pred, target, mask, *, beta, eps) -> torch.Tensor:
    _pending("masked_smooth_l1_loss")


def masked_cosine_loss_triton(pred, target_angle, mask, *, eps) -> torch.Tensor:
    _pending("masked_cosine_loss")


def hard_negative_margin_loss_triton(
    heatmap, positive, negatives, negative_mask, weight, *, margin, stride
):
    _pending("hard_negative_margin_loss")


def padding_weight_triton(padding_mask, valid_box, size, stride, dtype) -> torch.Tensor:
    _pending("padding_weight")


def gaussian_heatmap_triton(
    centers, size, sigma, stride, center, mask, merge, dtype
) -> torch.Tensor:
    _pending("gaussian_heatmap")
