"""The project's own fused losses in the registry (docs/spec.md 12.1): gap detection, CenterNet
(ctdet, multi-pose), CASS, RoRD and their component losses, each under its class name.

A registered entry is a ``BaseLoss`` wrapping the loss module: its options are the module's
(``GapDetectionLoss``'s ``w_focal``, ...), checked by the module's options class; calls take the
module's own arguments and the result (the total, when a tuple with components is returned) is
scaled by ``loss_weight``. These losses normalise themselves (their spec sections), so
``reduction`` is "mean" only, and a sample ``weight`` or ``avg_factor`` is not offered.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from .. import (
    cass,
    centernet,
    centernet_pose,
    cosine,
    focal,
    gap_detection,
    hard_negative,
    rord,
    smooth_l1,
)
from ..options import LossModule
from .base_loss import BaseLoss
from .builder import LOSSES

_NOT_OPTIONS = ("backend",)


class ModuleLoss(BaseLoss):
    """A registry entry for a ``LossModule`` (``MODULE``)."""

    MODULE: ClassVar[type[LossModule]]

    def __init__(self, **kwargs: Any) -> None:
        reduction = kwargs.get("reduction")
        if reduction not in (None, "mean"):
            raise ValueError(f"reduction: {type(self).__name__} normalises itself; expected "
                             f"'mean', got {reduction!r}")  # fmt: skip
        if kwargs.get("avg_factor") is not None:
            raise ValueError(f"avg_factor: not offered by {type(self).__name__}")
        super().__init__(**kwargs)
        self.loss = self.MODULE(backend=self.backend, **self.options)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # the module's own arguments
        out = self.loss(*args, **kwargs)
        if self.loss_weight == 1.0:
            return out
        if isinstance(out, tuple):
            return (out[0] * self.loss_weight, *out[1:])
        return out * self.loss_weight


def _entry(module: type[LossModule]) -> type[ModuleLoss]:
    fields = dataclasses.fields(module.Options)
    options = {f.name: f.default for f in fields if f.name not in _NOT_OPTIONS}
    doc = f"The registry entry of :class:`fused_losses.{module.__name__}` (its options, its call)."
    cls = type(module.__name__, (ModuleLoss,), {"MODULE": module, "OPTIONS": options,
                                                "__doc__": doc, "__module__": __name__})  # fmt: skip
    return LOSSES.register_module()(cls)


MODULES: tuple[type[LossModule], ...] = (
    gap_detection.GapDetectionLoss,
    centernet.CenterNetLoss,
    centernet.CenterNetFocalLoss,
    centernet.RegL1Loss,
    centernet.RegWeightedL1Loss,
    centernet.RegLoss,
    centernet_pose.CenterNetPoseLoss,
    cass.CASSLoss,
    cass.SoftFocalLoss,
    rord.RoRDLoss,
    rord.RoRDDetectionLoss,
    rord.RoRDDescriptorLoss,
    focal.MaskedFocalLoss,
    smooth_l1.MaskedSmoothL1Loss,
    cosine.MaskedCosineLoss,
    hard_negative.HardNegativeMarginLoss,
)
ENTRIES = {m.__name__: _entry(m) for m in MODULES}
assert all(isinstance(m, type) and issubclass(m, torch.nn.Module) for m in MODULES)
