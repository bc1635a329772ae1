"""The config-driven loss registry (docs/spec.md 12): ``build_loss``, ``build_multi_loss``,
``LOSSES``, ``BaseLoss`` and the loss families (OpenMMLab conventions: mmdet 3.x, mmseg 1.x).

Families: classification (``registry.classification``, fused), detection (``registry.detection``),
segmentation (``registry.segmentation``: Dice, OHEM, surface, HD, fused; ``registry.lovasz``,
``registry.boundary``) and distillation (``registry.distillation``); the project's own losses (gap
detection, CenterNet, CASS, RoRD) are registered under their class names (``registry.project``).
"""

from . import (
    boundary,
    classification,
    detection,
    distillation,
    lovasz,
    project,
    segmentation,
    utils,
)
from .base_loss import BaseLoss
from .builder import LOSSES, MultiLoss, Registry, build_loss, build_multi_loss

__all__ = [
    "LOSSES",
    "BaseLoss",
    "MultiLoss",
    "Registry",
    "boundary",
    "build_loss",
    "build_multi_loss",
    "classification",
    "detection",
    "distillation",
    "lovasz",
    "project",
    "segmentation",
    "utils",
]
