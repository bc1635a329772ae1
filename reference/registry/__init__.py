"""Literal pure-PyTorch twins of the loss registry (SPEC 9.2-9.3, 10.1-10.2): ``utils`` (weighting,
reduction and the shared utilities), ``classification``, ``detection`` and ``distillation`` (one
elementwise loss per row). The test oracle of ``fused_losses.registry``; the library never imports it.
"""

from . import classification, detection, distillation, utils

__all__ = ["classification", "detection", "distillation", "utils"]
