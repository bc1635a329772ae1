"""Kernel launchers as differentiable ops, eager and under ``torch.compile(fullgraph=True)``.

A :class:`KernelFn` registered under a name is run by :func:`run`: eagerly through a plain
``autograd.Function`` (``_KernelFunction``: no custom-op dispatcher cost), under torch.compile
through two opaque ``torch.library`` custom ops that Dynamo records without tracing into the
launchers (it cannot trace a Triton launch made from Python glue: under the interpreter it would
trace the interpreter; compiled, the launcher reads raw pointers):

* ``fused_losses::kernel_fwd(name, tensors, opts, ints, floats) -> outputs``:
  ``KERNELS[name].forward``;
* ``fused_losses::kernel_bwd(name, grad, saved, tensors, opts, ints, floats) -> grad of
  tensors[0]``.

Each registered :class:`KernelFn` gives its forward (``forward(*tensors, **opts)`` -> a tuple
whose first entry is the differentiable output and the rest non-differentiable tensors, which the
caller gets too and backward receives as ``saved``), its backward and a fake (output metadata for
tracing). The options travel as a JSON string, built once per trace (a constant to the
compiler), except the numbers (int and float values, not bools, and lists of ints such as a map size), which
travel as the ops' ``ints`` and ``floats`` lists: a number that changes between calls (a loss built with another
``label_smoothing``, a call's ``ignore_index``) becomes symbolic when Dynamo recompiles, and a
symbolic value can be neither sorted, nor encoded, nor silently baked into the string; in the
lists it reaches the launcher as its value at run time. The gap-detection loss has its own
``triton_op``s instead (``triton_gap.py``), which torch.compile traces into, and CenterNet's
heatmap loss from boxes its own eager Function (it stores its gradient in the forward).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .backend import compute_dtype, refuse_double_backward


@dataclass(frozen=True)
class KernelFn:
    """forward(*tensors, **opts) -> (output, *extras); backward(grad, extras, *tensors, **opts)
    -> gradient of tensors[0] (None: not differentiable); fake(*tensors, **opts) -> empty
    tensors shaped like forward's outputs.

    With ``differentiable = n > 1`` the first n tensors are differentiable: backward returns a
    tuple of n gradients, None for a tensor that needs none, and the options must hold
    ``need_grad``, a list of n bools (the custom ops' fakes read it to shape the gradients)."""

    forward: Callable[..., tuple[Tensor, ...]]
    fake: Callable[..., tuple[Tensor, ...]]
    backward: Callable[..., Tensor | tuple[Tensor | None, ...]] | None = None
    differentiable: int = 1


KERNELS: dict[str, KernelFn] = {}


def register(name: str, fn: KernelFn) -> None:
    """Make ``fn`` callable as ``kernel_op(name, ...)``."""
    KERNELS[name] = fn


@torch._dynamo.assume_constant_result
def _encode(items: tuple) -> str:
    return json.dumps(dict(items), sort_keys=True)


def _is_int(value: object) -> bool:
    """An int (not a bool) that an int64 holds (a larger one stays in the string)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return -(2**63) <= value < 2**63


def _is_int_list(value: object) -> bool:
    """A non-empty list or tuple of ints (a map size: symbolic when the shape changes)."""
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(map(_is_int, value))


def _split(opts: dict) -> tuple[tuple, list, list]:
    """(the constant items, sorted by key, with the keys of the numbers; the int values, then the
    entries of the int lists; the float values) of the options. Only the keys are compared
    (constants to Dynamo), never the values, which may be symbolic."""
    keys = sorted(opts)
    int_keys = [k for k in keys if _is_int(opts[k])]
    float_keys = [k for k in keys if isinstance(opts[k], float)]
    list_keys = [k for k in keys if _is_int_list(opts[k])]
    numbers = set(int_keys) | set(float_keys) | set(list_keys)
    items = tuple((k, opts[k]) for k in keys if k not in numbers)
    lists = tuple((k, len(opts[k])) for k in list_keys)
    items += ((_INTS, tuple(int_keys)), (_INT_LISTS, lists), (_FLOATS, tuple(float_keys)))
    ints = [opts[k] for k in int_keys] + [v for k in list_keys for v in opts[k]]
    return items, ints, [opts[k] for k in float_keys]


def run(name: str, tensors: tuple[Tensor | None, ...], opts: dict) -> tuple[Tensor, ...]:
    """``KERNELS[name].forward(*tensors, **opts)``, differentiable in ``tensors[0]`` when the
    kernel has a backward."""
    if torch.compiler.is_compiling():
        return kernel_op(name, tensors, opts)
    if KERNELS[name].backward is None:
        return KERNELS[name].forward(*tensors, **opts)
    return _KernelFunction.apply(name, opts, *tensors)


def kernel_op(name: str, tensors: tuple[Tensor | None, ...], opts: dict) -> tuple[Tensor, ...]:
    """``KERNELS[name]`` through the custom ops (the path torch.compile records). A None tensor
    travels as an empty placeholder, its position in the options (autograd does not follow an
    op whose tensor-list input holds a None)."""
    like = next(t for t in tensors if t is not None)
    absent = [i for i, t in enumerate(tensors) if t is None]
    filled = [t if t is not None else like.new_empty(0) for t in tensors]
    items, ints, floats = _split({**opts, _ABSENT: absent})
    return tuple(_kernel_fwd(name, filled, _encode(items), ints, floats))


_ABSENT = "__absent__"  # option key: positions of the tensors that are None
_INTS = "__ints__"  # option keys of the values in ``ints``, in order
_INT_LISTS = "__int_lists__"  # (key, length) of the int lists, after them in ``ints``
_FLOATS = "__floats__"  # and of those in ``floats``


def _decode(
    tensors: list[Tensor], opts: str, ints: list[int], floats: list[float]
) -> tuple[list[Tensor | None], dict]:
    """(the tensors with None restored, the launcher options) of the ops' arguments."""
    kwargs = json.loads(opts)
    int_keys = kwargs.pop(_INTS, ())
    kwargs.update(zip(int_keys, ints))
    at = len(int_keys)
    for key, length in kwargs.pop(_INT_LISTS, ()):
        kwargs[key], at = list(ints[at : at + length]), at + length
    kwargs.update(zip(kwargs.pop(_FLOATS, ()), floats))
    absent = set(kwargs.pop(_ABSENT, ()))
    return [None if i in absent else t for i, t in enumerate(tensors)], kwargs


class _KernelFunction(torch.autograd.Function):
    """The eager twin of the custom ops: the same forward and backward, no dispatcher."""

    @staticmethod
    def forward(ctx, name, opts, *tensors):  # type: ignore[override]
        ctx.set_materialize_grads(False)
        out = KERNELS[name].forward(*tensors, **opts)
        ctx.name, ctx.opts, ctx.n, ctx.n_extras = name, opts, len(tensors), len(out) - 1
        ctx.mark_non_differentiable(*out[1:])
        ctx.save_for_backward(*out[1:], *tensors)
        return tuple(out)

    @staticmethod
    def backward(ctx, grad, *_unused):  # type: ignore[override]
        k = KERNELS[ctx.name].differentiable
        if grad is None or not any(ctx.needs_input_grad[2 : 2 + k]):
            return (None,) * (2 + ctx.n)
        refuse_double_backward(f"{ctx.name} (triton backend)")
        saved = ctx.saved_tensors
        extras, tensors = saved[: ctx.n_extras], saved[ctx.n_extras :]
        g = KERNELS[ctx.name].backward(grad, extras, *tensors, **ctx.opts)
        grads = tuple(g) if k > 1 else (g,)
        return (None, None, *grads) + (None,) * (ctx.n - k)


@torch.library.custom_op("fused_losses::kernel_fwd", mutates_args=())
def _kernel_fwd(
    name: str, tensors: list[Tensor], opts: str, ints: list[int], floats: list[float]
) -> list[Tensor]:
    args, kwargs = _decode(tensors, opts, ints, floats)
    return list(KERNELS[name].forward(*args, **kwargs))


@_kernel_fwd.register_fake
def _(name: str, tensors: list[Tensor], opts: str, ints, floats) -> list[Tensor]:
    args, kwargs = _decode(tensors, opts, ints, floats)
    return list(KERNELS[name].fake(*args, **kwargs))


@torch.library.custom_op("fused_losses::kernel_bwd", mutates_args=())
def _kernel_bwd(
    name: str,
    grad: Tensor,
    saved: list[Tensor],
    tensors: list[Tensor],
    opts: str,
    ints: list[int],
    floats: list[float],
) -> list[Tensor]:
    fn = KERNELS[name]
    assert fn.backward is not None
    args, kwargs = _decode(tensors, opts, ints, floats)
    g = fn.backward(grad, tuple(saved), *args, **kwargs)
    if fn.differentiable == 1:
        return [g]
    # a gradient that is not needed travels as an empty placeholder (the fake's shape)
    return [x if x is not None else t.new_empty(0) for x, t in zip(g, tensors)]


@_kernel_bwd.register_fake
def _(name, grad, saved, tensors, opts, ints, floats) -> list[Tensor]:
    k = KERNELS[name].differentiable
    need = json.loads(opts).get("need_grad", [True]) if k > 1 else [True]
    return [t.new_empty(t.shape if n else (0,)) for t, n in zip(tensors[:k], need)]


def _setup_context(ctx, inputs, output) -> None:
    name, tensors, opts, ints, floats = inputs
    ctx.name, ctx.opts, ctx.n = name, opts, len(tensors)
    ctx.numbers = (ints, floats)
    ctx.n_extras = len(output) - 1
    ctx.save_for_backward(*output[1:], *tensors)


def _backward(ctx, grads):
    # the gradients of ints and floats: None for a list of numbers, [] for an empty one (torch's
    # rule for a custom op's non-tensor list arguments)
    numbers = tuple(None if x else [] for x in ctx.numbers)
    none = (None, [None] * ctx.n, None, *numbers)
    grad = grads[0]
    if grad is None or KERNELS[ctx.name].backward is None:
        return none
    refuse_double_backward(f"{ctx.name} (triton backend)")
    saved = ctx.saved_tensors
    extras, tensors = list(saved[: ctx.n_extras]), list(saved[ctx.n_extras :])
    grads = _kernel_bwd(ctx.name, grad, extras, tensors, ctx.opts, *ctx.numbers)
    k = len(grads)
    if k > 1:  # placeholders of the gradients that were not needed
        need = json.loads(ctx.opts).get("need_grad")
        grads = [g if n else None for g, n in zip(grads, need)]
    return None, list(grads) + [None] * (ctx.n - k), None, *numbers


_kernel_fwd.register_autograd(_backward, setup_context=_setup_context)


def scalar_and_aux(x: Tensor, aux_numel: int) -> tuple[Tensor, Tensor]:
    """Fake (loss 0-dim, aux [aux_numel]) in ``x``'s compute dtype."""
    cdt = compute_dtype(x.dtype)
    return x.new_empty((), dtype=cdt), x.new_empty(aux_numel, dtype=cdt)
