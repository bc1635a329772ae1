"""Literal pure-PyTorch implementations of the fused-losses math (the test oracle).

Every function here is written to be read next to ``docs/spec.md``: one line of code per line of
math, autograd for the gradients, no fusion and no speed tricks. Tests and benchmarks evaluate it in
float64 and compare the fused backends against it. The library's runtime never imports this package.
"""

from . import cass, centernet, centernet_pose, rord
from .gap_detection import gap_detection_loss
from .labels import (
    boundary_label,
    gaussian_heatmap,
    offset_target,
    padding_weight,
    valid_box_padding_mask,
)
from .losses import (
    bilinear_sample,
    hard_negative_margin_loss,
    masked_cosine_loss,
    masked_focal_loss,
    masked_smooth_l1_loss,
)

__all__ = [
    "bilinear_sample",
    "boundary_label",
    "cass",
    "centernet",
    "centernet_pose",
    "gap_detection_loss",
    "gaussian_heatmap",
    "hard_negative_margin_loss",
    "masked_cosine_loss",
    "masked_focal_loss",
    "masked_smooth_l1_loss",
    "offset_target",
    "padding_weight",
    "rord",
    "valid_box_padding_mask",
]
