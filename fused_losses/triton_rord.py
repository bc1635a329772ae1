"""The triton backend of the RoRD losses (docs/spec.md 11): autograd glue over ``kernels/rord.py``.

Each part is a ``kernel_ops.KernelFn`` with two differentiable maps (a plain ``autograd.Function``
eagerly, opaque custom ops under ``torch.compile``): the detection loss recomputes its gradients
in backward (one launch per map: dL/dP_o per original cell, dL/dP_r gathered per rotated cell);
the descriptor loss keeps its O(B (N + K) C) samples, j* and the triplet coefficients from the
forward and scatters the gradients in backward (keys, one device sort, the ordered sums).

Each part is registered under its public op's name (``rord_detection_loss``,
``rord_descriptor_loss``), and both again under ``rord_loss`` (the ``part`` option picks one),
so that a double-backward error names the op the user called (docs/spec.md 8).
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


def _desc_fake(desc_o, desc_r, G, anchors, cands, *_radius, **_opts):
    cdt = _rord.compute_dtype(desc_o, desc_r)
    b, c = desc_o.shape[:2]
    n, k = anchors.shape[1], cands.shape[1]

    def new(*shape, dtype=cdt):
        return desc_o.new_empty(shape, dtype=dtype)

    return (
        new(), new(1), new(b, c, n), new(b, c, n), new(b, c, k), new(b, n, 4), new(b, n, 4),
        new(b, k, 4), new(b, n, dtype=torch.int32), new(b, n, 2),
    )  # fmt: skip


def _desc_fwd(desc_o, desc_r, G, anchors, cands, q_px=None, c_px=None, *, sync=None, **opts):
    return _rord.descriptor_forward(desc_o, desc_r, G, anchors, cands, q_px, c_px, sync, **opts)


def _desc_bwd(grad, extras, desc_o, desc_r, *_tensors, **opts):
    return _rord.descriptor_backward(grad, extras, desc_o, desc_r, **opts)


_PARTS = {
    "detection": KernelFn(_det_fwd, _det_fake, _det_bwd, differentiable=2),
    "descriptor": KernelFn(_desc_fwd, _desc_fake, _desc_bwd, differentiable=2),
}


def _by_part(attr: str):
    """The ``attr`` function of the part named by the ``part`` option (``rord_loss``)."""

    def call(*args, part: str, **opts):
        return getattr(_PARTS[part], attr)(*args, **opts)

    return call


register("rord_detection_loss", _PARTS["detection"])
register("rord_descriptor_loss", _PARTS["descriptor"])
register(
    "rord_loss",
    KernelFn(_by_part("forward"), _by_part("fake"), _by_part("backward"), differentiable=2),
)


def _op(op: str, part: str, opts: dict) -> str:
    """The registered name to run a part under: its own op, or ``rord_loss`` with ``part``."""
    if op == "rord_loss":
        opts["part"] = part
        return op
    return f"rord_{part}_loss"


def _g(G: Tensor, *maps: Tensor) -> Tensor:
    """G [B,3,3] float64 as the kernels read it: [B,9] in the maps' compute dtype."""
    return G.to(_rord.compute_dtype(*maps)).reshape(-1, 9).contiguous()


def detection_loss_triton(
    det_o, det_r, G, options, sync=None, *, op: str = "rord_detection_loss"
) -> tuple[Tensor, Tensor]:
    """(L_det, components [det_bce, det_smooth_l1, det]) of the fused detection loss; ``op``:
    the public op (``rord_detection_loss`` or ``rord_loss``) a double-backward error names."""
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
    loss, aux = run(_op(op, "detection", opts), (det_o, det_r, _g(G, det_o, det_r)), opts)
    return loss, aux[:3]


def descriptor_loss_triton(
    desc_o, desc_r, G, anchors, cands, options, sync=None, radius=None, *,
    op: str = "rord_descriptor_loss",
) -> Tensor:  # fmt: skip
    """L_desc of the fused descriptor loss (anchors, cands: grid points [1 or B, M, 2];
    ``radius``: None or (q_k [B,N,2], candidates [1 or B, K, 2]) in pixels for the
    ``safe_radius`` test; ``op``: the public op a double-backward error names)."""
    opts = {
        "outside": options.outside, "margin": options.margin, "distance": options.distance,
        "safe_radius": options.safe_radius,
        "detach_negative": options.detach_negative, "need_grad": _need(desc_o, desc_r),
    }  # fmt: skip
    if sync is not None:
        opts["sync"] = sync
    cdt = _rord.compute_dtype(desc_o, desc_r)
    b = desc_o.shape[0]
    q_px = c_px = None
    if radius is not None:
        q_px = radius[0].to(cdt).contiguous()
        c_px = radius[1].to(cdt).expand(b, -1, -1).contiguous()
    tensors = (
        desc_o, desc_r, _g(G, desc_o, desc_r), anchors.to(cdt).expand(b, -1, -1).contiguous(),
        cands.to(cdt).expand(b, -1, -1).contiguous(), q_px, c_px,
    )  # fmt: skip
    return run(_op(op, "descriptor", opts), tensors, opts)[0]
