"""Backend choice and the autograd wrapper shared by the pure-PyTorch fused ops.

``backend="auto"`` picks ``triton`` for CUDA tensors (and for CPU tensors when Triton's interpreter is
on, ``TRITON_INTERPRET=1``) and ``torch`` otherwise; the environment variable
``FUSED_LOSSES_BACKEND`` replaces the ``auto`` default.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

BACKENDS = ("auto", "torch", "triton")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreter_on() -> bool:
    """Whether the triton backend may run on CPU tensors: ``TRITON_INTERPRET=1`` and the kernels
    really are interpreted (Triton decides when they are defined, so on a machine whose kernels
    were compiled, setting the variable later does not make CPU tensors runnable)."""
    if os.environ.get("TRITON_INTERPRET", "0") != "1" or not triton_available():
        return False
    from .kernels.launch import interpreting

    return interpreting()


def check_backend(backend: object) -> str:
    """``backend`` if it names a backend (a ValueError listing them otherwise)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {list(BACKENDS)}, got {backend!r}")
    return backend  # type: ignore[return-value]


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend ("torch" or "triton") for tensors on ``device``."""
    check_backend(backend)
    if backend == "auto":
        backend = os.environ.get("FUSED_LOSSES_BACKEND", "auto") or "auto"
        if backend not in BACKENDS:
            raise ValueError(
                f"FUSED_LOSSES_BACKEND: expected one of {list(BACKENDS)}, got {backend!r}"
            )
    if backend == "auto":
        use_triton = (device.type == "cuda" or interpreter_on()) and triton_available()
        return "triton" if use_triton else "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package, which is not installed")
        if device.type != "cuda" and not interpreter_on():
            raise ValueError(
                f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1), got tensors on {device}"
            )
    return backend


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32, float16 and bfloat16 are computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def needs_grad(*tensors: torch.Tensor | None) -> tuple[bool, ...]:
    enabled = torch.is_grad_enabled()
    return tuple(enabled and t is not None and t.requires_grad for t in tensors)


def refuse_double_backward(op: str) -> None:
    """Raise in a backward that runs with grad mode on (``create_graph=True``): the fused ops'
    gradients are computed analytically and are not themselves differentiable, and returning
    them as constants would silently drop the second-order term (e.g. of a gradient penalty)."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{op}: double backward (create_graph=True) is not supported: its gradient is "
            "computed analytically and is not differentiable. For a gradient penalty use the "
            "literal formulas in fused_losses.reference."
        )


def _op_name(value_and_grad: Callable) -> str:
    """The name a double-backward error gives a ``PrecomputedGradient`` whose caller named no op:
    the module and the function that built ``value_and_grad`` (e.g.
    ``fused_losses.smooth_l1.smooth_l1_share``)."""
    module = getattr(value_and_grad, "__module__", None) or "fused_losses"
    qualname = getattr(value_and_grad, "__qualname__", "") or ""
    outer = qualname.split(".<locals>")[0]
    return f"{module}.{outer}" if outer else module


class PrecomputedGradient(torch.autograd.Function):
    """Autograd node for a loss whose gradients were computed analytically in the forward pass.

    ``PrecomputedGradient.apply(op, value_and_grad, *inputs)``: ``op`` (optional, a str) is the
    public op's name, given by the double-backward error (without it, the function that built
    ``value_and_grad``). ``value_and_grad(*inputs)`` returns ``(loss, extras, grads)``: the 0-dim
    loss, a tensor of non-differentiable extras (e.g. loss components) and one gradient (or None)
    per input, each the derivative of the loss for an upstream gradient of 1. Backward scales them
    by the upstream gradient; nothing else is kept.
    """

    @staticmethod
    def forward(ctx, value_and_grad: Callable | str, *inputs: torch.Tensor):  # type: ignore[override]
        ctx.named = isinstance(value_and_grad, str)
        if ctx.named:
            ctx.op = value_and_grad
            value_and_grad, inputs = inputs[0], inputs[1:]
        else:
            ctx.op = _op_name(value_and_grad)
        loss, extras, grads = value_and_grad(*inputs)
        ctx.has_grad = [g is not None for g in grads]
        ctx.dtypes = [x.dtype if isinstance(x, torch.Tensor) else None for x in inputs]
        ctx.save_for_backward(*[g for g in grads if g is not None])
        ctx.mark_non_differentiable(extras)
        return loss, extras

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_extras: torch.Tensor):  # type: ignore[override]
        refuse_double_backward(f"{ctx.op} (torch backend)")
        saved = iter(ctx.saved_tensors)
        out: list[torch.Tensor | None] = [None, None] if ctx.named else [None]
        for has, dtype in zip(ctx.has_grad, ctx.dtypes):
            out.append((next(saved) * grad_loss).to(dtype) if has else None)
        return tuple(out)
