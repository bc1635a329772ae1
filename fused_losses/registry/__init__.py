"""The config-driven loss registry (docs/spec.md 12): ``build_loss``, ``build_multi_loss``,
``LOSSES``, ``BaseLoss`` and the loss families (OpenMMLab conventions: mmdet 3.x, mmseg 1.x).

Families so far: classification (``registry.classification``, fused), detection
(``registry.detection``) and the knowledge distillation loss (``registry.distillation``, fused);
the project's own losses (gap detection, CenterNet, CASS, RoRD) are registered under their class
names (``registry.project``). The segmentation family and the rest of the distillation family are
being added (see the README's roadmap).
"""

from . import classification, detection, distillation, project, segmentation, utils
from .base_loss import BaseLoss
from .builder import LOSSES, MultiLoss, Registry, build_loss, build_multi_loss

__all__ = [
    "LOSSES",
    "BaseLoss",
    "MultiLoss",
    "Registry",
    "build_loss",
    "build_multi_loss",
    "classification",
    "detection",
    "distillation",
    "project",
    "segmentation",
    "utils",
]
