"""The triton backend of the CASS family (docs/spec.md 10): autograd glue over ``kernels/cass.py``.

Each op is a ``kernel_ops.KernelFn``: a plain ``autograd.Function`` eagerly, opaque custom ops under
``torch.compile`` (``fullgraph=True`` traces). The forward writes df/ds per patch (or element)
with the partial sums, so backward is one launch scaling it by 1 / D and the upstream gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kernel_ops import KernelFn, register, run
from .kernels import cass as _cass
from .options import COMMON_OPTIONS


def _options(options, sync=None, **extra) -> dict:
    """The options object flattened for the launchers (no backend or data-parallel fields)."""
    opts = {k: v for k, v in options.as_dict().items() if k not in COMMON_OPTIONS}
    if sync is not None:
        opts["sync"] = sync
    return {**opts, **extra}


def _need_grad(x: Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def _backward(grad, saved, x, *_tensors, **_opts) -> Tensor:
    aux, stored = saved
    if stored.numel() != x.numel():  # the forward ran without grad: nothing was stored
        raise RuntimeError("CASS loss: backward through a forward that ran without grad")
    return _cass.scaled_gradient(grad, aux, stored, x)


def _cass_fwd(scores, boxes, box_mask, *, feat_size, **opts):
    return _cass.cass_forward(scores, boxes, box_mask, tuple(feat_size), **opts)


def _cass_fake(scores, boxes, box_mask, *, feat_size, need_grad, **opts):
    _, _, hp, wp = _cass.patch_grid(feat_size, opts["patch_size"])
    cdt = _cass.compute_dtype(scores)
    grad_shape = (scores.shape[0], hp, wp) if need_grad else (0,)
    return (
        scores.new_empty((), dtype=cdt),
        scores.new_empty(1, dtype=cdt),
        scores.new_empty(grad_shape, dtype=cdt),
    )


def _focal_fake(logits, target, *, need_grad, **_opts):
    cdt = _cass.compute_dtype(logits)
    return (
        logits.new_empty((), dtype=cdt),
        logits.new_empty(1, dtype=cdt),
        logits.new_empty(logits.numel() if need_grad else 0, dtype=cdt),
    )


def _target_fwd(boxes, box_mask, *, feat_size, **opts):
    return (_cass.cass_target(boxes, box_mask, tuple(feat_size), **opts),)


def _target_fake(boxes, box_mask, *, feat_size, **opts):
    _, _, hp, wp = _cass.patch_grid(feat_size, opts["patch_size"])
    return (boxes.new_empty(boxes.shape[0], 1, hp, wp, dtype=_cass.box_dtype(boxes)),)


register("cass_loss", KernelFn(forward=_cass_fwd, fake=_cass_fake, backward=_backward))
register(
    "soft_focal_loss",
    KernelFn(forward=_cass.soft_focal_forward, fake=_focal_fake, backward=_backward),
)
register("cass_soft_target", KernelFn(forward=_target_fwd, fake=_target_fake))


def cass_loss_triton(scores, boxes, box_mask, feat_size, options, sync=None) -> Tensor:
    opts = _options(options, sync, feat_size=list(feat_size), need_grad=_need_grad(scores))
    # the boxes (and mask) get no gradient: detached, so that the loss requires grad exactly
    # when the scores do (as on the torch backend)
    box_mask = box_mask.detach() if box_mask is not None else None
    return run("cass_loss", (scores, boxes.detach(), box_mask), opts)[0]


def soft_focal_loss_triton(logits, target, options, sync=None) -> Tensor:
    opts = _options(options, sync, need_grad=_need_grad(logits))
    return run("soft_focal_loss", (logits, target), opts)[0]


def cass_soft_target_triton(boxes, box_mask, feat_size, options) -> Tensor:
    opts = _options(options, feat_size=list(feat_size))
    return run("cass_soft_target", (boxes, box_mask), opts)[0]
