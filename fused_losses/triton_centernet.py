"""The triton backend's autograd glue for the CenterNet family (kernels in
``kernels/centernet.py``): one entry point per op, inputs already validated.

* ``transpose_and_gather_feat_triton``: a gather kernel forward, a deterministic row scatter
  backward (like the regression and the targets, a ``kernel_ops.KernelFn``: a plain
  ``autograd.Function`` eagerly, opaque custom ops under torch.compile).
* ``reg_l1_loss_triton``: one gather-and-reduce kernel (per-program partials, a fixed-order final
  reduction) that also writes the masked signs; backward scatters them. Registered under the
  public name of each variant (``reg_l1_loss``, ``reg_weighted_l1_loss``, ``reg_smooth_l1_loss``),
  which the double-backward error names.
* ``centernet_hm_loss_triton``: CenterNet's focal term against the targets of raw boxes, the
  target heatmap rebuilt in registers (never written); for float32/float64 ``hm`` the forward
  writes the final gradient too, which the first backward scales in place.
* ``centernet_targets_triton``: the ctdet targets in one launch (no gradient).
"""

from __future__ import annotations

import torch

from .backend import compute_dtype, refuse_double_backward
from .centernet import CENTERNET_FOCAL, REG_EPS
from .centernet_labels import MIN_OVERLAP, TARGET_KEYS
from .centernet_pose_labels import DENSE_KEYS, POSE_TARGET_KEYS
from .kernel_ops import KernelFn, kernel_op, register, run, scalar_and_aux
from .kernels import centernet as _centernet
from .kernels import centernet_pose as _pose
from .kernels.reduce import scale_gradients_, stores_gradients

# The focal options the heatmap kernel reads (CenterNet's _neg_loss).
_FOCAL = {k: getattr(CENTERNET_FOCAL, k) for k in ("alpha", "beta", "pos_threshold", "eps")}


def _gather_backward(grad, _saved, feat, ind):
    return _centernet.scatter_rows_launch(grad, ind, feat.shape, feat.dtype)


def _gather_fake(feat, ind):
    return (feat.new_empty((feat.shape[0], ind.shape[1], feat.shape[1])),)


def _reg_l1_forward(output, mask, ind, target, *, weighted, need, smooth=False, sync=None):
    return _centernet.reg_l1_launch(
        output, mask, ind, target, weighted, need, REG_EPS, sync, smooth=smooth
    )


def _reg_l1_backward(grad, saved, output, _mask, ind, _target, **_opts):
    denom, gm = saved
    return _centernet.scatter_rows_launch(
        gm, ind, output.shape, output.dtype, scale=grad, denom=denom
    )


def _reg_l1_fake(output, mask, ind, target, *, weighted, need, smooth=False):
    loss, denom = scalar_and_aux(output, 1)
    b, c = output.shape[:2]
    return loss, denom, output.new_empty((b, ind.shape[1], c) if need else (0,), dtype=loss.dtype)


def _hm_forward(hm, boxes, labels, box_mask, *, down_ratio):
    loss, aux, small = _centernet.centernet_hm_loss_launch(
        hm, boxes, labels, box_mask, down_ratio, _FOCAL, None, min_overlap=MIN_OVERLAP
    )
    return (loss, aux, *(small[k] for k in _SMALL))


def _hm_backward(grad, saved, hm, boxes, labels, box_mask, *, down_ratio):
    return _centernet.centernet_hm_grad_launch(
        grad, saved[0], hm, boxes, labels, box_mask, down_ratio, _FOCAL, MIN_OVERLAP
    )


def _hm_fake(hm, boxes, labels, box_mask, *, down_ratio):
    loss, aux = scalar_and_aux(hm, 3)
    b, n = boxes.shape[:2]
    tdt = compute_dtype(boxes.dtype)
    pair = boxes.new_empty((b, n, 2), dtype=tdt)
    return (loss, aux, pair, pair.clone(), labels.new_empty((b, n), dtype=torch.int64),
            labels.new_empty((b, n), dtype=torch.uint8))  # fmt: skip


def _targets_forward(boxes, labels, box_mask, *, num_classes, size, down_ratio):
    out = _centernet.centernet_targets_launch(
        boxes, labels, box_mask, num_classes, tuple(size), down_ratio, min_overlap=MIN_OVERLAP
    )
    return tuple(out[k] for k in TARGET_KEYS)


def _targets_fake(boxes, labels, box_mask, *, num_classes, size, down_ratio):
    b, n = boxes.shape[:2]
    cdt = compute_dtype(boxes.dtype)
    pair = boxes.new_empty((b, n, 2), dtype=cdt)
    return (boxes.new_empty((b, num_classes, *size), dtype=cdt), pair, pair.clone(),
            labels.new_empty((b, n), dtype=torch.int64),
            labels.new_empty((b, n), dtype=torch.uint8))  # fmt: skip


def _pose_forward(boxes, keypoints, labels, box_mask, **o):
    out = _pose.pose_targets_launch(
        boxes, keypoints, labels, box_mask, o["num_classes"], tuple(o["size"]), o["down_ratio"],
        o["dense_hp"], o["mse_loss"], o["hm_gauss"], MIN_OVERLAP,
    )  # fmt: skip
    return tuple(out[k] for k in _pose_keys(o["dense_hp"]))


def _pose_keys(dense_hp: bool) -> tuple[str, ...]:
    return POSE_TARGET_KEYS + (DENSE_KEYS if dense_hp else ())


def _pose_fake(boxes, keypoints, labels, box_mask, **o):
    b, n = boxes.shape[:2]
    nj, k, (h, w) = keypoints.shape[2], o["num_classes"], o["size"]
    f = dict(dtype=compute_dtype(boxes.dtype))
    i64, u8 = dict(dtype=torch.int64), dict(dtype=torch.uint8)
    shapes = [((b, k, h, w), f), ((b, n, 2), f), ((b, n, 2), f), ((b, n), i64), ((b, n), u8),
              ((b, n, 2 * nj), f), ((b, n, 2 * nj), u8), ((b, nj, h, w), f),
              ((b, n * nj, 2), f), ((b, n * nj), i64), ((b, n * nj), i64)]  # fmt: skip
    if o["dense_hp"]:
        shapes += [((b, 2 * nj, h, w), f)] * 2
    return tuple(boxes.new_empty(s, **d) for s, d in shapes)


_SMALL = ("wh", "reg", "ind", "reg_mask")
register("transpose_and_gather_feat", KernelFn(
    forward=lambda feat, ind: (_centernet.gather_feat_launch(feat, ind),),
    backward=_gather_backward, fake=_gather_fake,
))  # fmt: skip
# One kernel op under the public name of each variant (the double-backward error names it).
_REG = KernelFn(_reg_l1_forward, _reg_l1_fake, _reg_l1_backward)
register("reg_l1_loss", _REG)
register("reg_weighted_l1_loss", _REG)
register("reg_smooth_l1_loss", _REG)
register("centernet_hm_loss", KernelFn(_hm_forward, _hm_fake, _hm_backward))
register("centernet_targets", KernelFn(_targets_forward, _targets_fake))
register("centernet_pose_targets", KernelFn(_pose_forward, _pose_fake))


class _HeatmapFromBoxesTriton(torch.autograd.Function):
    """CenterNet's focal term of ``hm`` against the targets of raw boxes, the targets never
    materialised (kernels/centernet.py, ``centernet_hm_loss_launch``). For float32/float64 ``hm``
    the forward also writes the final gradient; the first backward scales it in place by the
    upstream gradient (nothing moves when that is 1), any later one (retained graph) and every
    float16/bfloat16 one recompute it. Returns (loss, wh, reg, ind, reg_mask)."""

    @staticmethod
    def forward(ctx, hm, boxes, labels, box_mask, down_ratio, need, sync):  # type: ignore[override]
        grad = None
        if need and stores_gradients(hm):
            grad = torch.empty(hm.shape, dtype=hm.dtype, device=hm.device)
        loss, aux, small = _centernet.centernet_hm_loss_launch(
            hm, boxes, labels, box_mask, down_ratio, _FOCAL, grad, min_overlap=MIN_OVERLAP,
            sync=sync,
        )  # fmt: skip
        ctx.save_for_backward(hm, boxes, labels, box_mask, aux)
        ctx.down_ratio = down_ratio
        ctx.grad = grad
        outs = (small["wh"], small["reg"], small["ind"], small["reg_mask"])
        ctx.mark_non_differentiable(*outs)
        return (loss, *outs)

    @staticmethod
    def backward(ctx, grad_loss, *_unused):  # type: ignore[override]
        none = (None,) * 6
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
    return run("transpose_and_gather_feat", (feat, ind), {})[0]


# ``sync``: data parallel, the denominators summed over the ranks (``fused_losses.distributed``;
# eager only).
def reg_l1_loss_triton(
    output, mask, ind, target, weighted: bool, need: bool, sync=None, smooth: bool = False
) -> torch.Tensor:
    opts: dict = dict(weighted=weighted, need=need)
    if smooth:  # RegLoss (smooth-L1 over the object count)
        opts["smooth"] = True
    if sync is not None:
        opts["sync"] = sync
    op = "reg_smooth_l1_loss" if smooth else "reg_weighted_l1_loss" if weighted else "reg_l1_loss"
    return run(op, (output, mask, ind, target), opts)[0]


def centernet_hm_loss_triton(hm, boxes, labels, box_mask, down_ratio: int, need: bool, sync=None):
    """(focal loss, wh, reg, ind, reg_mask) from raw boxes."""
    if torch.compiler.is_compiling():
        loss, _aux, *small = kernel_op(
            "centernet_hm_loss", (hm, boxes, labels, box_mask), dict(down_ratio=down_ratio)
        )
        return (loss, *small)
    return _HeatmapFromBoxesTriton.apply(hm, boxes, labels, box_mask, down_ratio, need, sync)


def centernet_targets_triton(boxes, labels, box_mask, num_classes, size, down_ratio):
    opts = dict(num_classes=num_classes, size=list(size), down_ratio=down_ratio)
    return dict(zip(TARGET_KEYS, run("centernet_targets", (boxes, labels, box_mask), opts)))


def centernet_pose_targets_triton(
    boxes, keypoints, labels, box_mask, num_classes, size, down_ratio, dense_hp, mse_loss,
    hm_gauss,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """The multi-pose targets in one launch (a dict of CenterNet's keys)."""
    opts = dict(num_classes=num_classes, size=list(size), down_ratio=int(down_ratio),
                dense_hp=bool(dense_hp), mse_loss=bool(mse_loss), hm_gauss=hm_gauss)  # fmt: skip
    out = run("centernet_pose_targets", (boxes, keypoints, labels, box_mask), opts)
    return dict(zip(_pose_keys(dense_hp), out))
