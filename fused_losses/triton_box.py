"""The triton backend of the registry's IoU-family box losses (docs/spec.md 12.5): autograd glue
over ``kernels/box.py``.

One op, ``box_loss``, a ``kernel_ops.KernelFn`` (a plain ``autograd.Function`` eagerly, opaque
custom ops under ``torch.compile``): its forward is one launch writing the per-box loss l [...]
and dl/dpred [M, 4] (an extra, in the compute dtype), and its backward one elementwise product of
that gradient with the upstream gradient of l, in pred's dtype. The target gets no gradient
(detached, as on the torch backend). The op name is internal: ``registry.detection`` passes l
through a node whose backward refuses a double backward first, naming the public loss
(``"GIoULoss (triton backend): double backward ..."``, spec 8).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backend import compute_dtype
from .kernel_ops import KernelFn, register, run
from .kernels import box as _box


def _forward(pred, target, **opts) -> tuple[Tensor, Tensor]:
    return _box.box_loss(pred, target, **opts)


def _fake(pred, target, *, need_grad, **_opts) -> tuple[Tensor, Tensor]:
    cdt = compute_dtype(pred.dtype)
    n = pred.numel() // 4
    return (
        pred.new_empty(pred.shape[:-1], dtype=cdt),
        pred.new_empty((n, 4) if need_grad else (0,), dtype=cdt),
    )


def _backward(grad, saved, pred, *_tensors, **_opts) -> Tensor:
    (stored,) = saved
    if stored.numel() != pred.numel():  # the forward ran without grad: nothing was stored
        raise RuntimeError("box loss: backward through a forward that ran without grad")
    return _box.scaled_gradient(grad, stored, pred)


register("box_loss", KernelFn(forward=_forward, fake=_fake, backward=_backward))


def box_loss_triton(
    pred: Tensor, target: Tensor, *, kind: str, eps: float, bbox_format: str, mode: str = "log",
    theta: float = 4.0,
) -> Tensor:  # fmt: skip
    """l [...] of matched boxes pred, target [...,4] (``kind``: one of ``kernels.box.KINDS``;
    ``mode``: IoULoss's, ``theta``: SIoULoss's), in the compute dtype, differentiable in pred."""
    need_grad = torch.is_grad_enabled() and pred.requires_grad
    opts = dict(kind=kind, mode=mode, eps=float(eps), theta=float(theta),
                bbox_format=bbox_format, need_grad=need_grad)  # fmt: skip
    return run("box_loss", (pred, target.detach()), opts)[0]
