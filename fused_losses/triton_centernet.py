"""The triton backend's autograd glue for the CenterNet family (kernels in
``kernels/centernet.py``): one entry point per op, inputs already validated.

* ``transpose_and_gather_feat_triton``: a gather kernel forward, a deterministic row scatter
  backward.
* ``reg_l1_loss_triton``: one gather-and-reduce kernel (per-program partials, a fixed-order final
  reduction) that also writes the masked signs; backward scatters them.
* ``centernet_hm_loss_triton``: CenterNet's focal term against the targets of raw boxes, the
  target heatmap rebuilt in registers (never written); for float32/float64 ``hm`` the forward
  writes the final gradient too, which the first backward scales in place.
* ``centernet_targets_triton``: the ctdet targets in one launch (no gradient).
"""

from __future__ import annotations

import torch

from .backend import refuse_double_backward
from .centernet import CENTERNET_FOCAL, REG_EPS
from .centernet_labels import MIN_OVERLAP
from .kernels import centernet as _centernet
from .kernels.reduce import scale_gradients_, stores_gradients

# The focal options the heatmap kernel reads (CenterNet's _neg_loss).
_FOCAL = {k: getattr(CENTERNET_FOCAL, k) for k in ("alpha", "beta", "pos_threshold", "eps")}


class _GatherTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feat, ind):  # type: ignore[override]
        ctx.save_for_backward(ind)
        ctx.feat_meta = (feat.shape, feat.dtype)
        return _centernet.gather_feat_launch(feat, ind)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        refuse_double_backward("transpose_and_gather_feat (triton backend)")
        (ind,) = ctx.saved_tensors
        shape, dtype = ctx.feat_meta
        if not ctx.needs_input_grad[0]:
            return None, None
        return _centernet.scatter_rows_launch(grad_out, ind, shape, dtype), None


class _RegL1Triton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, output, mask, ind, target, weighted, need):  # type: ignore[override]
        loss, denom, gm = _centernet.reg_l1_launch(
            output, mask, ind, target, weighted, need, eps=REG_EPS
        )
        ctx.meta = (output.shape, output.dtype)
        ctx.save_for_backward(gm, ind, denom)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        refuse_double_backward("reg_l1_loss (triton backend)")
        gm, ind, denom = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return (None,) * 6
        shape, dtype = ctx.meta
        grad = _centernet.scatter_rows_launch(gm, ind, shape, dtype, scale=grad_loss, denom=denom)
        return grad, None, None, None, None, None


class _HeatmapFromBoxesTriton(torch.autograd.Function):
    """CenterNet's focal term of ``hm`` against the targets of raw boxes, the targets never
    materialised (kernels/centernet.py, ``centernet_hm_loss_launch``). For float32/float64 ``hm``
    the forward also writes the final gradient; the first backward scales it in place by the
    upstream gradient (nothing moves when that is 1), any later one (retained graph) and every
    float16/bfloat16 one recompute it. Returns (loss, wh, reg, ind, reg_mask)."""

    @staticmethod
    def forward(ctx, hm, boxes, labels, box_mask, down_ratio, need):  # type: ignore[override]
        grad = None
        if need and stores_gradients(hm):
            grad = torch.empty(hm.shape, dtype=hm.dtype, device=hm.device)
        loss, aux, small = _centernet.centernet_hm_loss_launch(
            hm, boxes, labels, box_mask, down_ratio, _FOCAL, grad, min_overlap=MIN_OVERLAP
        )
        ctx.save_for_backward(hm, boxes, labels, box_mask, aux)
        ctx.down_ratio = down_ratio
        ctx.grad = grad
        outs = (small["wh"], small["reg"], small["ind"], small["reg_mask"])
        ctx.mark_non_differentiable(*outs)
        return (loss, *outs)

    @staticmethod
    def backward(ctx, grad_loss, *_unused):  # type: ignore[override]
        none = (None,) * 5
        if grad_loss is None or not ctx.needs_input_grad[0]:
            return (None, *none)
        refuse_double_backward("centernet_loss (triton backend)")
        if ctx.grad is not None:
            grad, ctx.grad = ctx.grad, None
            scale_gradients_(grad_loss, grad)
            return (grad, *none)
        hm, boxes, labels, box_mask, aux = ctx.saved_tensors
        grad = _centernet.centernet_hm_grad_launch(
            grad_loss, aux, hm, boxes, labels, box_mask, ctx.down_ratio, _FOCAL, MIN_OVERLAP
        )
        return (grad, *none)


def transpose_and_gather_feat_triton(feat: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
    return _GatherTriton.apply(feat, ind)


def reg_l1_loss_triton(output, mask, ind, target, weighted: bool, need: bool) -> torch.Tensor:
    return _RegL1Triton.apply(output, mask, ind, target, weighted, need)


def centernet_hm_loss_triton(hm, boxes, labels, box_mask, down_ratio: int, need: bool):
    """(focal loss, wh, reg, ind, reg_mask) from raw boxes."""
    return _HeatmapFromBoxesTriton.apply(hm, boxes, labels, box_mask, down_ratio, need)


def centernet_targets_triton(boxes, labels, box_mask, num_classes, size, down_ratio):
    return _centernet.centernet_targets_launch(
        boxes, labels, box_mask, num_classes, size, down_ratio, min_overlap=MIN_OVERLAP
    )
