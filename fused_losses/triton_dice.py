"""The triton backend of the Dice family's overlap sums (docs/spec.md 12.7): autograd glue over
``kernels/dice.py``.

One op, ``dice_sums`` (a ``kernel_ops.KernelFn``: a plain ``autograd.Function`` eagerly, opaque
custom ops under ``torch.compile``): x3 [N, C, S] -> (S1, S2, S3) [N, 3, C]. Its backward runs one
pass over the logits that recomputes the probabilities and writes dL/dx; nothing of the logits'
size is kept between forward and backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backend import compute_dtype
from .kernel_ops import KernelFn, register, run
from .kernels import dice as _dice


def _fwd(x3, t, **opts):
    return (_dice.dice_sums(x3, t, compute_dtype(x3.dtype), **opts),)


def _fake(x3, _t, **_opts):
    n, c, _ = x3.shape
    return (x3.new_empty((n, 3, c), dtype=compute_dtype(x3.dtype)),)


def _backward(grad, _saved, x3, t, **opts) -> Tensor:
    return _dice.dice_grad(grad.to(compute_dtype(x3.dtype)), x3, t, **opts)


register("dice_sums", KernelFn(forward=_fwd, fake=_fake, backward=_backward))


def dice_sums_triton(x3: Tensor, t: Tensor, opts: dict) -> Tensor:
    """(S1, S2, S3) [N, 3, C], differentiable in x3."""
    return run("dice_sums", (x3, t), opts)[0]


# the exact distance transform of the segmentation family (kernels/distance_transform.py)
def _dt_fwd(mask):
    from .kernels.distance_transform import squared_distance

    return (squared_distance(mask),)


def _dt_fake(mask):
    return (mask.new_empty(mask.shape, dtype=torch.int32),)


DISTANCE_OP = "distance_transform"
register(DISTANCE_OP, KernelFn(forward=_dt_fwd, fake=_dt_fake))
