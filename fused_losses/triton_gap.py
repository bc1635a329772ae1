"""The triton backend's autograd glue: one entry point per public op (inputs already validated).

The kernels and their launchers live in ``kernels/`` (``fused_losses.kernels``); this module turns
them into differentiable ops.

* The fused gap-detection loss is three ``torch.library.triton_op`` custom ops,
  ``fused_losses::gap_detection_fwd`` (4 launches; writes the gradients too when it can),
  ``fused_losses::gap_detection_scale_`` (in-place upstream-gradient scaling, 1 launch) and
  ``fused_losses::gap_detection_bwd`` (recomputed gradients, 1 launch), tied together with
  ``register_autograd``. The
  kernels are launched through ``torch.library.wrap_triton``, so ``torch.compile(fullgraph=True)``
  traces straight through the loss. Eagerly the same implementations run under a plain
  ``autograd.Function`` (``_GapLossEager``): the custom-op dispatcher costs about 1 ms of host
  time per step. The same ops run eagerly on CPU tensors under Triton's
  interpreter (``TRITON_INTERPRET=1``).
* The component ops and the label ops are ``kernel_ops.KernelFn``s over their launchers
  (forward: partial sums + one finalize program; backward: one elementwise kernel): a plain
  ``autograd.Function`` eagerly, opaque custom ops under torch.compile.

Arithmetic runs in float32 inside (float64 when a prediction is float64); gradients come back in
each input's dtype, the loss as float32 (float64 for float64 inputs).
"""

import inspect
import typing
from typing import Optional

import torch
from torch import Tensor

from .backend import refuse_double_backward
from .kernel_ops import KernelFn, register, run, scalar_and_aux
from .kernels import focal as _focal
from .kernels import gap_detection as _gap
from .kernels import hard_negative as _hard_negative
from .kernels import labels as _labels
from .kernels import launch as _launch
from .kernels import reduce as _reduce
from .kernels import regression as _regression
from .options import COMMON_OPTIONS

# --------------------------------------------------------------------- fused gap-detection loss
#
# gap_detection_fwd (4 launches) returns the total, ``aux`` (components, gradient scales,
# hard-negative coefficients), the flat buffer of the gradients it wrote when ``store_grads`` (the
# predictions that need a gradient share float32 or float64, eager), and the weight map of a
# padding mask. Backward then scales the stored gradients in place by the upstream gradient
# (gap_detection_scale_, nothing moves when it is 1); otherwise, and for a second backward through
# a retained graph, gap_detection_bwd recomputes them with the upstream gradient (1 launch).

# The ops' signatures (from which torch.library infers their schemas) are generated from the kernel
# options (``GapKernelOptions``), so that the options are listed once; the implementations take
# their arguments positionally and unpack them here.
_FWD_TENSORS = (
    "heatmap_gap", "heatmap_piece", "offset", "angle", "gap_center", "piece_center", "gap_angle",
    "confusers?", "confuser_mask?", "padding_mask?", "valid_box?",
)  # fmt: skip
_BWD_TENSORS = (
    "grad_total", "aux", "weight_map", "heatmap_gap", "heatmap_piece", "offset", "angle",
    "confusers?", "valid_box?",
)  # fmt: skip
_NEED = ("need_heatmap_gap", "need_heatmap_piece", "need_offset", "need_angle")
_N_INPUTS = 11
_N_OPTIONS = len(_gap.GapKernelOptions._fields)
_N_FWD_ARGS = _N_INPUTS + _N_OPTIONS + 5  # tensors, options, need flags, store_grads


def _op_signature(tensors: tuple[str, ...], flags: tuple[str, ...]) -> inspect.Signature:
    """``(tensors (name? = optional), <each kernel option>, flags) -> 4 tensors``."""
    param = inspect.Parameter
    hints = typing.get_type_hints(_gap.GapKernelOptions)
    params = [
        param(t.rstrip("?"), param.POSITIONAL_OR_KEYWORD,
              annotation=Optional[Tensor] if t.endswith("?") else Tensor)  # noqa: UP045
        for t in tensors
    ] + [
        param(f, param.POSITIONAL_OR_KEYWORD, annotation=hints.get(f, bool))
        for f in (*_gap.GapKernelOptions._fields, *flags)
    ]  # fmt: skip
    return inspect.Signature(params, return_annotation=tuple[Tensor, Tensor, Tensor, Tensor])


def _unpack_fwd(args: tuple) -> tuple[tuple, _gap.GapKernelOptions, tuple[bool, ...], bool]:
    """(the 11 input tensors, options, need flags, store_grads) of the forward op's arguments."""
    n = _N_INPUTS + _N_OPTIONS
    opts = _gap.GapKernelOptions(*args[_N_INPUTS:n])
    return args[:_N_INPUTS], opts, tuple(args[n : n + 4]), args[n + 4]


def _gap_fwd_impl(*args, sync=None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(total 0-dim, aux, gradient buffer or empty, weight map or empty): see
    kernels/gap_detection.py (``sync``: data parallel, eager only)."""
    inputs, opts, need, store_grads = _unpack_fwd(args)
    preds = inputs[:4]
    grads, buf = _gap.grad_outputs(preds, need) if store_grads else ((None,) * 4, None)
    total, aux, wmap = _gap.gap_detection_forward(inputs, opts, grads=grads, sync=sync)
    return (
        total,
        aux,
        buf if buf is not None else aux.new_empty(0),
        wmap if wmap is not None else aux.new_empty(0),
    )


def _gap_bwd_impl(*args) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the 4 predictions, recomputed; an empty tensor for each one not requested."""
    grad_total, aux, weight_map, hg, hp, off, ang, conf, vbox = args[:9]
    opts = _gap.GapKernelOptions(*args[9 : 9 + _N_OPTIONS])
    need = tuple(args[9 + _N_OPTIONS :])
    grads = _gap.gap_detection_backward(
        grad_total, aux, weight_map, (hg, hp, off, ang), conf, vbox, need, opts
    )
    g0, g1, g2, g3 = (g if g is not None else aux.new_empty(0) for g in grads)
    return g0, g1, g2, g3


def _gap_scale_impl(grad_total: Tensor, grads: Tensor) -> None:
    """grads *= grad_total in place (the forward's stored gradients)."""
    _reduce.scale_gradients_(grad_total, grads)


def _setup_context(ctx, inputs, output) -> None:
    tensors, opts, _need, _store = _unpack_fwd(inputs)
    hg, hp, off, ang, _gc, _pc, _ga, conf, _cmask, _pmask, vbox = tensors
    _, aux, buf, wmap = output
    ctx.mark_non_differentiable(aux, buf, wmap)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(hg, hp, off, ang, conf, vbox, aux, wmap)
    # The stored gradients are not saved tensors: they are scaled in place by the first backward
    # (a retained graph's later backwards recompute instead).
    ctx.stored = buf if buf.numel() > 0 else None
    ctx.opts = opts
    ctx.first = getattr(ctx, "first", 0)  # position of heatmap_gap among the Function's inputs


def _backward(ctx, grad_total, *_unused):
    return _gap_backward(ctx, grad_total, _gap_scale, _gap_bwd)


def _gap_backward(ctx, grad_total, scale, recompute):
    """Gradients of the forward's inputs (None for all but the 4 predictions): the stored ones
    scaled in place by ``grad_total``, or recomputed. ``scale``/``recompute``: the custom ops
    (torch.compile's path) or their implementations (eager)."""
    none = (None,) * _N_FWD_ARGS
    need = tuple(bool(n) for n in ctx.needs_input_grad[ctx.first : ctx.first + 4])
    if grad_total is None or not any(need):
        return none
    refuse_double_backward("gap_detection_loss (triton backend)")
    hg, hp, off, ang, conf, vbox, aux, wmap = ctx.saved_tensors
    preds = (hg, hp, off, ang)
    if ctx.stored is not None:
        buf, ctx.stored = ctx.stored, None
        scale(grad_total, buf)
        return _gap.split_gradients(buf, preds, need) + none[4:]
    grads = recompute(grad_total, aux, wmap, *preds, conf, vbox, *ctx.opts, *need)
    return tuple(g if n else None for g, n in zip(grads, need)) + none[4:]


class _GapLossEager(torch.autograd.Function):
    """The same forward and backward as the ``gap_detection_fwd`` op, without the custom-op
    dispatcher: eagerly that costs about 1 ms of host time per step (torch's schema handling is
    quadratic in the 30 arguments), more than the kernels themselves up to B of about 1000.
    torch.compile traces the op instead (:func:`gap_detection_loss_triton`)."""

    @staticmethod
    def forward(ctx, sync, *inputs):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        output = _gap_fwd_impl(*inputs, sync=sync)
        ctx.first = 1
        _setup_context(ctx, inputs, output)
        return output[0], output[1]

    @staticmethod
    def backward(ctx, grad_total, _grad_aux):  # type: ignore[override]
        return (None, *_gap_backward(ctx, grad_total, _gap_scale_impl, _gap_bwd_impl))


def _gap_fwd_fake(*args):
    """Output metadata of gap_detection_fwd (the interpreter's opaque op needs it for tracing)."""
    inputs, opts, need, store = _unpack_fwd(args)
    preds = inputs[:4]
    heatmap_gap, confusers, padding_mask = inputs[0], inputs[7], inputs[9]
    cdt = torch.float64 if any(x.dtype == torch.float64 for x in preds) else torch.float32
    k = confusers.shape[1] if confusers is not None else 0
    b, _, hf, wf = heatmap_gap.shape
    n_buf = sum(x.numel() for x, n in zip(preds, need) if n) if store else 0
    buf_dtype = next((x.dtype for x, n in zip(preds, need) if n), cdt)
    map_dtype = _gap.weight_map_spec(padding_mask, opts.stride, cdt)
    return (
        heatmap_gap.new_empty((), dtype=cdt),
        heatmap_gap.new_empty(_gap.aux_size(b, k), dtype=cdt),
        heatmap_gap.new_empty(n_buf, dtype=buf_dtype if n_buf else cdt),
        heatmap_gap.new_empty(b * hf * wf if map_dtype else 0, dtype=map_dtype or cdt),
    )


def _gap_bwd_fake(*args):
    aux, preds, need = args[1], args[3:7], args[9 + _N_OPTIONS :]
    g0, g1, g2, g3 = (x.new_empty(x.shape) if n else aux.new_empty(0) for x, n in zip(preds, need))
    return g0, g1, g2, g3


def _register_gap_ops():
    """``triton_op``s (traced through by torch.compile) on GPUs; under Triton's interpreter, whose
    kernels ``wrap_triton`` cannot trace, opaque ``custom_op``s with explicit fake kernels (the
    same launchers run eagerly inside)."""
    names = ("fused_losses::gap_detection_fwd", "fused_losses::gap_detection_bwd")
    scale_name = "fused_losses::gap_detection_scale_"
    if _launch.interpreting():
        from torch.library import custom_op as make_op
    else:
        from torch.library import triton_op as make_op
    _gap_fwd_impl.__signature__ = _op_signature(_FWD_TENSORS, (*_NEED, "store_grads"))
    _gap_bwd_impl.__signature__ = _op_signature(_BWD_TENSORS, _NEED)
    fwd = make_op(names[0], mutates_args=())(_gap_fwd_impl)
    bwd = make_op(names[1], mutates_args=())(_gap_bwd_impl)
    scale = make_op(scale_name, mutates_args=("grads",))(_gap_scale_impl)
    if _launch.interpreting():
        fwd.register_fake(_gap_fwd_fake)
        bwd.register_fake(_gap_bwd_fake)
    fwd.register_autograd(_backward, setup_context=_setup_context)
    return fwd, bwd, scale


_gap_fwd, _gap_bwd, _gap_scale = _register_gap_ops()


def gap_detection_loss_triton(
    options, inputs: tuple, per_image: bool = False, sync=None
) -> tuple[Tensor, Tensor]:
    """(total, components [5] followed by the B per-image totals with ``per_image``) of the
    fused loss for a ``GapLossOptions`` and the 11 input tensors: 4 launches forward, 1
    backward."""
    preds = inputs[:4]
    need = tuple(torch.is_grad_enabled() and x.requires_grad for x in preds)
    opts = options.as_dict()
    kernel_opts = _gap.GapKernelOptions(
        **{f: opts[f] for f in _gap.GapKernelOptions._fields if f not in ("cell", "per_image")},
        cell=options.center == "cell",
        per_image=per_image,
    )
    args = (
        *inputs,
        *kernel_opts,
        *need,
        _reduce.stores_gradients(*(x for x, n in zip(preds, need) if n)),
    )
    if torch.compiler.is_compiling():
        total, aux, _buf, _wmap = _gap_fwd(*args)
    else:
        total, aux = _GapLossEager.apply(sync, *args)
    if per_image:
        return total, torch.cat([aux[:5], _gap.per_image_totals(aux, inputs[0].shape[0])])
    return total, aux[:5]


# ------------------------------------------------------------------------------ component ops
#
# Each loss: forward = partial sums + one finalize program (2 launches; the hard negatives, 1),
# backward = one elementwise launch. ``aux`` (the gradient scale, coefficients) is all that is kept
# besides the inputs.


def _kernel_options(options, sync=None) -> dict:
    """A loss's options object flattened for its launchers: every field but the common ones
    (backend, data-parallel options), and ``sync`` when there is one (eager only: an active
    process group is refused under torch.compile, ``distributed.active_group``)."""
    opts = options.as_dict()
    for name in COMMON_OPTIONS:
        del opts[name]
    if sync is not None:
        opts["sync"] = sync
    return opts


def _loss_fn(forward, backward, aux_numel=lambda *tensors: 1) -> KernelFn:
    """A KernelFn over launchers ``forward(*tensors, **opts) -> (loss, aux)`` and
    ``backward(grad, aux, *tensors, **opts) -> grad of tensors[0]``."""
    return KernelFn(
        forward=forward,
        backward=lambda grad, saved, *tensors, sync=None, **opts: backward(
            grad, saved[0], *tensors, **opts
        ),
        fake=lambda *tensors, **opts: scalar_and_aux(tensors[0], aux_numel(*tensors)),
    )


def _hn_backward(grad_loss, aux, heatmap, positive, negatives, _mask, _weight, *, margin, stride):
    return _hard_negative.hard_negative_backward(
        grad_loss, aux, heatmap, positive, negatives, stride=stride
    )


def _hn_aux_numel(heatmap, positive, negatives, *_):
    return _hard_negative.aux_size(heatmap.shape[0], negatives.shape[1])


def _padding_weight(padding_mask, valid_box, *, size, stride, dtype):
    return (_labels.padding_weight(padding_mask, valid_box, size, stride, getattr(torch, dtype)),)


def _gaussian_heatmap(
    centers, sigma_map, mask, *, size, sigma, stride, center, merge, label_smoothing, dtype
):
    sigma = sigma_map if sigma_map is not None else sigma
    dt = getattr(torch, dtype)
    args = (centers, size, sigma, stride, center, mask, merge, label_smoothing, dt)
    return (_labels.gaussian_heatmap(*args),)


def _boundary_label(mask, *, stride, kernel_size, dtype):
    return (_labels.boundary_label(mask, stride, kernel_size, getattr(torch, dtype)),)


def _boundary_fake(mask, *, stride, kernel_size, dtype):
    size = (mask.shape[-2] // stride, mask.shape[-1] // stride)
    return (mask.new_empty((mask.shape[0], 1, *size), dtype=getattr(torch, dtype)),)


def _label_fake(*tensors, size, dtype, **_):
    x = next(t for t in tensors if t is not None)  # centers, or the padding mask / valid box
    return (x.new_empty((x.shape[0], 1, *size), dtype=getattr(torch, dtype)),)


# Each loss: forward = partial sums + one finalize program (2 launches; the hard negatives, 1),
# backward = one elementwise launch. ``aux`` (the gradient scale, coefficients) is all that is kept
# besides the inputs.
register("masked_focal_loss", _loss_fn(_focal.focal_forward, _focal.focal_backward))
register(
    "masked_smooth_l1_loss",
    _loss_fn(_regression.smooth_l1_forward, _regression.smooth_l1_backward),
)
register("masked_cosine_loss", _loss_fn(_regression.cosine_forward, _regression.cosine_backward))
register(
    "hard_negative_margin_loss",
    _loss_fn(_hard_negative.hard_negative_forward, _hn_backward, _hn_aux_numel),
)
register("padding_weight", KernelFn(forward=_padding_weight, fake=_label_fake))
register("boundary_label", KernelFn(forward=_boundary_label, fake=_boundary_fake))
register(
    "gaussian_heatmap",
    KernelFn(forward=_gaussian_heatmap, fake=lambda c, _s, _m, **o: _label_fake(c, **o)),
)


# ``sync``: data parallel, the denominators summed over the ranks (``fused_losses.distributed``).
def masked_focal_loss_triton(pred, target, weight, options, sync=None) -> Tensor:
    return run("masked_focal_loss", (pred, target, weight), _kernel_options(options, sync))[0]


def masked_smooth_l1_loss_triton(pred, target, mask, options, sync=None) -> Tensor:
    return run("masked_smooth_l1_loss", (pred, target, mask), _kernel_options(options, sync))[0]


def masked_cosine_loss_triton(pred, target_angle, mask, options, sync=None) -> Tensor:
    tensors = (pred, target_angle, mask)
    return run("masked_cosine_loss", tensors, _kernel_options(options, sync))[0]


def hard_negative_margin_loss_triton(
    heatmap, positive, negatives, negative_mask, weight, options, sync=None
):
    tensors = (heatmap, positive, negatives, negative_mask, weight)
    return run("hard_negative_margin_loss", tensors, _kernel_options(options, sync))[0]


def padding_weight_triton(padding_mask, valid_box, size, stride, dtype) -> Tensor:
    opts = dict(size=list(size), stride=stride, dtype=str(dtype).removeprefix("torch."))
    return run("padding_weight", (padding_mask, valid_box), opts)[0]


def boundary_label_triton(mask, stride, kernel_size, dtype) -> Tensor:
    opts = dict(stride=stride, kernel_size=kernel_size, dtype=str(dtype).removeprefix("torch."))
    return run("boundary_label", (mask,), opts)[0]


def gaussian_heatmap_triton(
    centers, size, sigma, stride, center, mask, merge, label_smoothing, dtype
) -> Tensor:
    sigma_map = sigma if isinstance(sigma, Tensor) else None
    opts = dict(
        size=list(size),
        sigma=None if sigma_map is not None else sigma,
        stride=stride,
        center=center,
        merge=merge,
        label_smoothing=label_smoothing,
        dtype=str(dtype).removeprefix("torch."),
    )
    return run("gaussian_heatmap", (centers, sigma_map, mask), opts)[0]
