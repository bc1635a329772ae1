"""The triton backend's autograd glue: one entry point per public op (inputs already validated).

The kernels and their launchers live in ``kernels/`` (``fused_losses.kernels``); this module turns
them into differentiable ops.

* The fused gap-detection loss is a pair of ``torch.library.triton_op`` custom ops,
  ``fused_losses::gap_detection_fwd`` (2 launches: partial sums, then one finalize program) and
  ``fused_losses::gap_detection_bwd`` (1 launch), tied together with ``register_autograd``. The
  kernels are launched through ``torch.library.wrap_triton``, so ``torch.compile(fullgraph=True)``
  traces straight through the loss. The same ops run eagerly on CPU tensors under Triton's
  interpreter (``TRITON_INTERPRET=1``).
* The component ops use plain ``torch.autograd.Function``s over their kernels (forward: partial
  sums + one finalize program; backward: one elementwise kernel).

Arithmetic runs in float32 inside (float64 when a prediction is float64); gradients come back in
each input's dtype, the loss as float32 (float64 for float64 inputs).
"""

from typing import Optional

import torch
from torch import Tensor

from .kernels import focal as _focal
from .kernels import hard_negative as _hard_negative
from .kernels import labels as _labels
from .kernels import regression as _regression
from .kernels.gap_detection import gap_detection_backward, gap_detection_forward

# --------------------------------------------------------------------- fused gap-detection loss


def _gap_fwd_impl(
    heatmap_gap: Tensor,
    heatmap_piece: Tensor,
    offset: Tensor,
    angle: Tensor,
    gap_center: Tensor,
    piece_center: Tensor,
    gap_angle: Tensor,
    confusers: Optional[Tensor],  # noqa: UP045 - torch.library parses these annotations
    confuser_mask: Optional[Tensor],  # noqa: UP045
    padding_mask: Optional[Tensor],  # noqa: UP045
    valid_box: Optional[Tensor],  # noqa: UP045
    stride: int,
    sigma: float,
    cell: bool,
    alpha: float,
    beta: float,
    pos_threshold: float,
    reg_threshold: float,
    margin: float,
    w_heatmap: float,
    w_offset: float,
    w_angle: float,
    w_hard_negative: float,
    from_logits: bool,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """(total 0-dim, aux [10 + B (1+K)]): see kernels/gap_detection.py."""
    return gap_detection_forward(
        heatmap_gap,
        heatmap_piece,
        offset,
        angle,
        gap_center,
        piece_center,
        gap_angle,
        confusers,
        confuser_mask,
        padding_mask,
        valid_box,
        stride=stride,
        sigma=sigma,
        cell=cell,
        alpha=alpha,
        beta=beta,
        pos_threshold=pos_threshold,
        reg_threshold=reg_threshold,
        margin=margin,
        w_heatmap=w_heatmap,
        w_offset=w_offset,
        w_angle=w_angle,
        w_hard_negative=w_hard_negative,
        from_logits=from_logits,
        eps=eps,
    )


def _gap_bwd_impl(
    grad_total: Tensor,
    aux: Tensor,
    heatmap_gap: Tensor,
    heatmap_piece: Tensor,
    offset: Tensor,
    angle: Tensor,
    gap_center: Tensor,
    piece_center: Tensor,
    gap_angle: Tensor,
    confusers: Optional[Tensor],  # noqa: UP045
    padding_mask: Optional[Tensor],  # noqa: UP045
    valid_box: Optional[Tensor],  # noqa: UP045
    need_heatmap_gap: bool,
    need_heatmap_piece: bool,
    need_offset: bool,
    need_angle: bool,
    stride: int,
    sigma: float,
    cell: bool,
    alpha: float,
    beta: float,
    pos_threshold: float,
    reg_threshold: float,
    from_logits: bool,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the 4 predictions; an empty tensor for each one not requested."""
    grads = gap_detection_backward(
        grad_total,
        aux,
        heatmap_gap,
        heatmap_piece,
        offset,
        angle,
        gap_center,
        piece_center,
        gap_angle,
        confusers,
        padding_mask,
        valid_box,
        (need_heatmap_gap, need_heatmap_piece, need_offset, need_angle),
        stride=stride,
        sigma=sigma,
        cell=cell,
        alpha=alpha,
        beta=beta,
        pos_threshold=pos_threshold,
        reg_threshold=reg_threshold,
        from_logits=from_logits,
        eps=eps,
    )
    g0, g1, g2, g3 = (g if g is not None else aux.new_empty(0) for g in grads)
    return g0, g1, g2, g3


_N_FWD_ARGS = 25  # tensors (11) + options (14) of gap_detection_fwd


def _bwd_options(opts: tuple) -> tuple:
    (stride, sigma, cell, alpha, beta, pos_t, reg_t, _m, _wh, _wo, _wa, _wn, from_logits, eps) = (
        opts
    )
    return stride, sigma, cell, alpha, beta, pos_t, reg_t, from_logits, eps


def _setup_context(ctx, inputs, output) -> None:
    hg, hp, off, ang, gc, pc, ga, conf, _cmask, pmask, vbox = inputs[:11]
    _, aux = output
    ctx.mark_non_differentiable(aux)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(hg, hp, off, ang, gc, pc, ga, conf, pmask, vbox, aux)
    ctx.bwd_opts = _bwd_options(tuple(inputs[11:]))


def _backward(ctx, grad_total, _grad_aux):
    none = (None,) * _N_FWD_ARGS
    need = tuple(bool(n) for n in ctx.needs_input_grad[:4])
    if grad_total is None or not any(need):
        return none
    hg, hp, off, ang, gc, pc, ga, conf, pmask, vbox, aux = ctx.saved_tensors
    grads = _gap_bwd(
        grad_total, aux, hg, hp, off, ang, gc, pc, ga, conf, pmask, vbox, *need, *ctx.bwd_opts
    )
    return tuple(g if n else None for g, n in zip(grads, need)) + none[4:]


def _gap_fwd_fake(
    heatmap_gap,
    heatmap_piece,
    offset,
    angle,
    gap_center,
    piece_center,
    gap_angle,
    confusers,
    *_args,
):
    """Output metadata of gap_detection_fwd (the interpreter's opaque op needs it for tracing)."""
    preds = (heatmap_gap, heatmap_piece, offset, angle)
    cdt = torch.float64 if any(x.dtype == torch.float64 for x in preds) else torch.float32
    k = confusers.shape[1] if confusers is not None else 0
    b = heatmap_gap.shape[0]
    return heatmap_gap.new_empty((), dtype=cdt), heatmap_gap.new_empty(10 + b * (k + 1), dtype=cdt)


def _gap_bwd_fake(
    grad_total,
    aux,
    heatmap_gap,
    heatmap_piece,
    offset,
    angle,
    gap_center,
    piece_center,
    gap_angle,
    confusers,
    padding_mask,
    valid_box,
    *rest,
):
    preds = (heatmap_gap, heatmap_piece, offset, angle)
    g0, g1, g2, g3 = (x.new_empty(x.shape) if n else aux.new_empty(0) for x, n in zip(preds, rest))
    return g0, g1, g2, g3


def _register_gap_ops():
    """``triton_op``s (traced through by torch.compile) on GPUs; under Triton's interpreter, whose
    kernels ``wrap_triton`` cannot trace, opaque ``custom_op``s with explicit fake kernels (the
    same launchers run eagerly inside)."""
    import os

    fwd_name, bwd_name = "fused_losses::gap_detection_fwd", "fused_losses::gap_detection_bwd"
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        from torch.library import custom_op

        fwd = custom_op(fwd_name, mutates_args=())(_gap_fwd_impl)
        bwd = custom_op(bwd_name, mutates_args=())(_gap_bwd_impl)
        fwd.register_fake(_gap_fwd_fake)
        bwd.register_fake(_gap_bwd_fake)
    else:
        from torch.library import triton_op

        fwd = triton_op(fwd_name, mutates_args=())(_gap_fwd_impl)
        bwd = triton_op(bwd_name, mutates_args=())(_gap_bwd_impl)
    fwd.register_autograd(_backward, setup_context=_setup_context)
    return fwd, bwd


_gap_fwd, _gap_bwd = _register_gap_ops()


def gap_detection_loss_triton(opts: dict, inputs: tuple) -> tuple[Tensor, Tensor]:
    """(total, components [5]) of the fused loss: 2 launches forward, 1 backward."""
    total, aux = _gap_fwd(
        *inputs,
        opts["stride"],
        opts["sigma"],
        opts["center"] == "cell",
        opts["alpha"],
        opts["beta"],
        opts["pos_threshold"],
        opts["reg_threshold"],
        opts["margin"],
        opts["w_heatmap"],
        opts["w_offset"],
        opts["w_angle"],
        opts["w_hard_negative"],
        opts["from_logits"],
        opts["eps"],
    )
    return total, aux[:5]


# ------------------------------------------------------------------------------ component ops
#
# Each loss: forward = partial sums + one finalize program (2 launches; the hard negatives, 1),
# backward = one elementwise launch. ``aux`` (the gradient scale, coefficients) is all that is kept
# besides the inputs.


class _KernelLoss(torch.autograd.Function):
    """Loss over ``forward_fn(*tensors, **opts) -> (loss, aux)`` with gradient (for tensors[0])
    ``backward_fn(grad_loss, aux, *tensors, **opts)``."""

    @staticmethod
    def forward(ctx, forward_fn, backward_fn, opts, *tensors):  # type: ignore[override]
        loss, aux = forward_fn(*tensors, **opts)
        ctx.backward_fn, ctx.opts, ctx.n = backward_fn, opts, len(tensors)
        ctx.save_for_backward(aux, *tensors)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        aux, *tensors = ctx.saved_tensors
        grad = None
        if ctx.needs_input_grad[3]:
            grad = ctx.backward_fn(grad_loss, aux, *tensors, **ctx.opts)
        return (None, None, None, grad) + (None,) * (ctx.n - 1)


def masked_focal_loss_triton(pred, target, weight, **opts) -> torch.Tensor:
    return _KernelLoss.apply(
        _focal.focal_forward, _focal.focal_backward, opts, pred, target, weight
    )


def masked_smooth_l1_loss_triton(pred, target, mask, *, beta, eps) -> torch.Tensor:
    return _KernelLoss.apply(
        _regression.smooth_l1_forward,
        _regression.smooth_l1_backward,
        {"beta": beta, "eps": eps},
        pred,
        target,
        mask,
    )


def masked_cosine_loss_triton(pred, target_angle, mask, *, eps) -> torch.Tensor:
    return _KernelLoss.apply(
        _regression.cosine_forward,
        _regression.cosine_backward,
        {"eps": eps},
        pred,
        target_angle,
        mask,
    )


def _hn_forward(heatmap, positive, negatives, negative_mask, weight, *, margin, stride):
    return _hard_negative.hard_negative_forward(
        heatmap, positive, negatives, negative_mask, weight, margin=margin, stride=stride
    )


def _hn_backward(grad_loss, aux, heatmap, positive, negatives, _mask, _weight, *, margin, stride):
    return _hard_negative.hard_negative_backward(
        grad_loss, aux, heatmap, positive, negatives, stride=stride
    )


def hard_negative_margin_loss_triton(
    heatmap, positive, negatives, negative_mask, weight, *, margin, stride
):
    return _KernelLoss.apply(
        _hn_forward,
        _hn_backward,
        {"margin": margin, "stride": stride},
        heatmap,
        positive,
        negatives,
        negative_mask,
        weight,
    )


def padding_weight_triton(padding_mask, valid_box, size, stride, dtype) -> torch.Tensor:
    return _labels.padding_weight(padding_mask, valid_box, size, stride, dtype)


def gaussian_heatmap_triton(
    centers, size, sigma, stride, center, mask, merge, dtype
) -> torch.Tensor:
    return _labels.gaussian_heatmap(centers, size, sigma, stride, center, mask, merge, dtype)
