"""The triton backend of the RoRD losses (docs/spec.md 11): autograd glue over ``kernels/rord.py``.

Each part is a ``kernel_ops.KernelFn`` with two differentiable maps (a plain ``autograd.Function``
eagerly, opaque custom ops under ``torch.compile``): the detection loss recomputes its gradients
in backward (one launch per map: dL/dP_o per original cell, dL/dP_r gathered per rotated cell);
the descriptor loss keeps its O(B (N + K) C) samples, j* and the triplet coefficients from the
forward and scatters the gradients in backward (keys, one device sort, the ordered sums).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .kernel_ops import KernelFn, register, run
from .kernels import rord as _rord


def _need(*tensors: Tensor) -> list[bool]:
    return [torch.is_grad_enabled() and t.requires_grad for t in tensors]


def _det_fake(det_o, det_r, G, **_opts):
    cdt = _rord.compute_dtype(det_o, det_r)
    return det_o.new_empty((), dtype=cdt), det_o.new_empty(4, dtype=cdt)


def _det_fwd(det_o, det_r, G, *, sync=None, **opts):
    return _rord.detection_forward(det_o, det_r, G, sync, **opts)


def _det_bwd(grad, extras, det_o, det_r, G, **opts):
    return _rord.detection_backward(grad, extras[0], det_o, det_r, G, **opts)


def _desc_fake(desc_o, desc_r, G, anchors, cands, **_opts):
    cdt = _rord.compute_dtype(desc_o, desc_r)
    b, c = desc_o.shape[:2]
    n, k = anchors.shape[1], cands.shape[1]

    def new(*shape, dtype=cdt):
        return desc_o.new_empty(shape, dtype=dtype)

    return (
        new(), new(1), new(b, c, n), new(b, c, n), new(b, c, k), new(b, n, 4), new(b, n, 4),
        new(b, k, 4), new(b, n, dtype=torch.int32), new(b, n, 2),
    )  # fmt: skip


def _desc_fwd(desc_o, desc_r, G, anchors, cands, *, sync=None, **opts):
    return _rord.descriptor_forward(desc_o, desc_r, G, anchors, cands, sync, **opts)


def _desc_bwd(grad, extras, desc_o, desc_r, *_tensors, **opts):
    return _rord.descriptor_backward(grad, extras, desc_o, desc_r, **opts)


register("rord_detection", KernelFn(_det_fwd, _det_fake, _det_bwd, differentiable=2))
register("rord_descriptor", KernelFn(_desc_fwd, _desc_fake, _desc_bwd, differentiable=2))


def _g(G: Tensor, *maps: Tensor) -> Tensor:
    """G [B,3,3] float64 as the kernels read it: [B,9] in the maps' compute dtype."""
    return G.to(_rord.compute_dtype(*maps)).reshape(-1, 9).contiguous()


def detection_loss_triton(det_o, det_r, G, options, sync=None) -> tuple[Tensor, Tensor]:
    """(L_det, components [det_bce, det_smooth_l1, det]) of the fused detection loss."""
    need = _need(det_o, det_r)
    need[1] = need[1] and not options.detach_target
    opts = {
        "w_bce": options.w_bce, "w_smooth_l1": options.w_smooth_l1,
        "from_logits": options.from_logits, "outside": options.outside, "need_grad": need,
    }  # fmt: skip
    if sync is not None:
        opts["sync"] = sync
    if options.detach_target:
        det_r = det_r.detach()
    loss, aux = run("rord_detection", (det_o, det_r, _g(G, det_o, det_r)), opts)
    return loss, aux[:3]


def descriptor_loss_triton(desc_o, desc_r, G, anchors, cands, options, sync=None) -> Tensor:
    """L_desc of the fused descriptor loss (anchors, cands: grid points [1 or B, M, 2])."""
    opts = {
        "outside": options.outside, "margin": options.margin, "distance": options.distance,
        "safe_radius": options.safe_radius, "stride": options.stride,
        "detach_negative": options.detach_negative, "need_grad": _need(desc_o, desc_r),
    }  # fmt: skip
    if sync is not None:
        opts["sync"] = sync
    cdt = _rord.compute_dtype(desc_o, desc_r)
    b = desc_o.shape[0]
    tensors = (
        desc_o, desc_r, _g(G, desc_o, desc_r), anchors.to(cdt).expand(b, -1, -1).contiguous(),
        cands.to(cdt).expand(b, -1, -1).contiguous(),
    )  # fmt: skip
    return run("rord_descriptor", tensors, opts)[0]
