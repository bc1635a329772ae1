"""fused-losses: fused training losses for detection and keypoint models.

Public API: the gap-detection criterion and its component ops (docs/spec.md), the CenterNet
family (docs/centernet.md) and the CASS soft-target loss (docs/spec.md 10). CUDA tensors run
Triton kernels; CPU tensors run a pure-PyTorch fused implementation with analytic gradients.
"""

from .cass import (
    CASSLoss,
    CASSOptions,
    CASSTargetOptions,
    SoftFocalLoss,
    SoftFocalOptions,
    cass_loss,
    cass_soft_target,
    soft_focal_loss,
)
from .centernet import (
    CenterNetFocalLoss,
    CenterNetLoss,
    CenterNetOptions,
    RegL1Loss,
    RegLoss,
    RegWeightedL1Loss,
    centernet_focal_loss,
    centernet_loss,
    clamped_sigmoid,
    reg_l1_loss,
    reg_smooth_l1_loss,
    reg_weighted_l1_loss,
    transpose_and_gather_feat,
)
from .centernet_labels import centernet_targets
from .centernet_pose import CenterNetPoseLoss, CenterNetPoseOptions, centernet_pose_loss
from .centernet_pose_labels import centernet_pose_targets
from .cosine import CosineOptions, MaskedCosineLoss, masked_cosine_loss
from .focal import FocalOptions, MaskedFocalLoss, masked_focal_loss
from .gap_detection import GapDetectionLoss, GapLossOptions, gap_detection_loss
from .hard_negative import HardNegativeMarginLoss, HardNegativeOptions, hard_negative_margin_loss
from .labels import boundary_label, gaussian_heatmap, padding_weight
from .options import LossModule, LossOptions
from .registry import LOSSES, BaseLoss, build_loss, build_multi_loss
from .rord import (
    RoRDDescriptorLoss,
    RoRDDescriptorOptions,
    RoRDDetectionLoss,
    RoRDDetectionOptions,
    RoRDLoss,
    RoRDOptions,
    homography_warp,
    rord_descriptor_loss,
    rord_detection_loss,
    rord_loss,
)
from .smooth_l1 import MaskedSmoothL1Loss, SmoothL1Options, masked_smooth_l1_loss

__version__ = "0.1.0"

__all__ = [
    "LOSSES",
    "BaseLoss",
    "CASSLoss",
    "CASSOptions",
    "CASSTargetOptions",
    "CenterNetFocalLoss",
    "CenterNetLoss",
    "CenterNetOptions",
    "CenterNetPoseLoss",
    "CenterNetPoseOptions",
    "CosineOptions",
    "FocalOptions",
    "GapDetectionLoss",
    "GapLossOptions",
    "HardNegativeMarginLoss",
    "HardNegativeOptions",
    "LossModule",
    "LossOptions",
    "MaskedCosineLoss",
    "MaskedFocalLoss",
    "MaskedSmoothL1Loss",
    "RegL1Loss",
    "RegLoss",
    "RegWeightedL1Loss",
    "RoRDDescriptorLoss",
    "RoRDDescriptorOptions",
    "RoRDDetectionLoss",
    "RoRDDetectionOptions",
    "RoRDLoss",
    "RoRDOptions",
    "SmoothL1Options",
    "SoftFocalLoss",
    "SoftFocalOptions",
    "boundary_label",
    "build_loss",
    "build_multi_loss",
    "cass_loss",
    "cass_soft_target",
    "centernet_focal_loss",
    "centernet_loss",
    "centernet_pose_loss",
    "centernet_pose_targets",
    "centernet_targets",
    "clamped_sigmoid",
    "gap_detection_loss",
    "gaussian_heatmap",
    "hard_negative_margin_loss",
    "homography_warp",
    "masked_cosine_loss",
    "masked_focal_loss",
    "masked_smooth_l1_loss",
    "padding_weight",
    "reg_l1_loss",
    "reg_smooth_l1_loss",
    "reg_weighted_l1_loss",
    "rord_descriptor_loss",
    "rord_detection_loss",
    "rord_loss",
    "soft_focal_loss",
    "transpose_and_gather_feat",
]
