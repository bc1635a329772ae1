"""Train a small slider-captcha gap detector with ``fused_losses.GapDetectionLoss``.

Run it as ``python -m fused_losses.demo`` (``--help`` lists the options). The library's first
customer in miniature: synthetic captchas (:mod:`.data`), a small stride-4 CNN (:mod:`.model`), the
training loop and the held-out evaluation (:mod:`.train`), and the figures it writes to ``--out``
(:mod:`.figures`).
"""

from .train import main

__all__ = ["main"]
