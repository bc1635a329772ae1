"""fused-losses: fused training losses for detection and keypoint models.

Public API (docs/spec.md): the gap-detection criterion and its component ops. CUDA tensors run
Triton kernels; CPU tensors run a pure-PyTorch fused implementation with analytic gradients.
"""

from .cosine import MaskedCosineLoss, masked_cosine_loss
from .focal import MaskedFocalLoss, masked_focal_loss
from .gap_detection import GapDetectionLoss, gap_detection_loss
from .hard_negative import HardNegativeMarginLoss, hard_negative_margin_loss
from .labels import gaussian_heatmap, padding_weight
from .smooth_l1 import MaskedSmoothL1Loss, masked_smooth_l1_loss

__version__ = "0.1.0"

__all__ = [
    "GapDetectionLoss",
    "HardNegativeMarginLoss",
    "MaskedCosineLoss",
    "MaskedFocalLoss",
    "MaskedSmoothL1Loss",
    "gap_detection_loss",
    "gaussian_heatmap",
    "hard_negative_margin_loss",
    "masked_cosine_loss",
    "masked_focal_loss",
    "masked_smooth_l1_loss",
    "padding_weight",
]
