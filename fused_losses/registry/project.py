"""The project's own fused losses in the registry (docs/spec.md 12.1): gap detection, CenterNet
(ctdet, multi-pose), CASS, RoRD and their component losses, each under its class name.

A registered entry is a ``BaseLoss`` wrapping the loss module: its options are the module's
(``GapDetectionLoss``'s ``w_focal``, ...), checked by the module's options class; calls take the
module's own arguments and the result (the total, when a tuple with components is returned) is
scaled by ``loss_weight``. These losses normalise themselves (their spec sections): a call's
``weight`` (unless the module's own call takes one: ``MaskedFocalLoss``,
``HardNegativeMarginLoss``), ``avg_factor`` or ``reduction_override`` (other than None or the built
reduction), and a configured ``avg_factor``, are refused with a ValueError naming them (not a
silent no-op, nor Python's "unexpected keyword argument"). ``reduction`` is "mean", except for the
losses whose module has a ``reduction`` option of its own (``CASSLoss``, ``SoftFocalLoss``: "mean"
or "sum"), which the entry passes on.
"""

from __future__ import annotations

import dataclasses
import inspect
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

# BaseLoss's own (backend) or passed on by ModuleLoss itself (reduction): not in OPTIONS
_NOT_OPTIONS = ("backend", "reduction")
# a BaseLoss call's arguments that these losses do not offer (unless their module's call has an
# argument of that name)
_CALL_ARGS = ("weight", "avg_factor", "reduction_override")


class ModuleLoss(BaseLoss):
    """A registry entry for a ``LossModule`` (``MODULE``)."""

    MODULE: ClassVar[type[LossModule]]
    REDUCTIONS: ClassVar[tuple[str, ...]] = ("mean",)  # the module's own reduction option
    REFUSED: ClassVar[tuple[str, ...]] = _CALL_ARGS  # call arguments refused

    def __init__(self, **kwargs: Any) -> None:
        name = type(self).__name__
        reduction = kwargs.get("reduction")
        if reduction is not None and reduction not in self.REDUCTIONS:
            if self.REDUCTIONS == ("mean",):
                raise ValueError(f"reduction: {name} normalises itself; expected 'mean', got "
                                 f"{reduction!r}")  # fmt: skip
            raise ValueError(f"reduction: expected one of {list(self.REDUCTIONS)} ({name}'s "
                             f"own), got {reduction!r}")  # fmt: skip
        if kwargs.get("avg_factor") is not None:
            raise ValueError(f"avg_factor: not offered by {name} (it normalises itself)")
        super().__init__(**kwargs)
        extra = {"reduction": self.reduction} if len(self.REDUCTIONS) > 1 else {}
        self.loss = self.MODULE(backend=self.backend, **self.options, **extra)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # the module's own arguments
        for key in self.REFUSED:
            value = kwargs.pop(key, None)
            if value is None or (key == "reduction_override" and value == self.reduction):
                continue  # not given, or the built reduction itself
            hint = ""
            if key == "reduction_override" and len(self.REDUCTIONS) > 1:
                hint = f"; build it with reduction={value!r} instead"
            raise ValueError(
                f"{key}: not offered by {type(self).__name__} (it normalises itself{hint}), got "
                f"{_describe(value)}"
            )
        out = self.loss(*args, **kwargs)
        if self.loss_weight == 1.0:
            return out
        if isinstance(out, tuple):
            return (out[0] * self.loss_weight, *out[1:])
        return out * self.loss_weight


def _describe(value: Any) -> str:
    """A call argument as an error message shows it (a tensor by its shape)."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return repr(value)


def _entry(module: type[LossModule]) -> type[ModuleLoss]:
    fields = dataclasses.fields(module.Options)
    options = {f.name: f.default for f in fields if f.name not in _NOT_OPTIONS}
    reductions = (
        ("mean", "sum") if "reduction" in module.Options.__dataclass_fields__ else ("mean",)
    )
    own = inspect.signature(module.forward).parameters
    refused = tuple(k for k in _CALL_ARGS if k not in own)
    doc = f"The registry entry of :class:`fused_losses.{module.__name__}` (its options, its call)."
    attrs = {"MODULE": module, "OPTIONS": options, "REDUCTIONS": reductions, "REFUSED": refused,
             "__doc__": doc, "__module__": __name__}  # fmt: skip
    cls = type(module.__name__, (ModuleLoss,), attrs)
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
