"""The triton backend of the Lovasz losses (docs/spec.md 12.7): autograd glue over
``kernels/lovasz.py``.

One op, ``lovasz_rows`` (a ``kernel_ops.KernelFn``: a plain ``autograd.Function`` eagerly, opaque
custom ops under ``torch.compile``): logits x3 [N, C, S] and labels y [N, S] -> (l [B, C], the
per-row values; G [B, C], the foreground counts; W [B, C, M], each pixel's weight g, kept for the
backward only when a gradient is wanted). The backward is one pass over the logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backend import compute_dtype
from .kernel_ops import KernelFn, register, run
from .kernels import lovasz as _lovasz

KIND_SOFTMAX, KIND_HINGE = _lovasz.KIND_SOFTMAX, _lovasz.KIND_HINGE


def _fwd(x3, y, **opts):
    return _lovasz.lovasz_forward(x3, y, compute_dtype(x3.dtype), **opts)


def _fake(x3, _y, *, per_image, store_w, **_opts):
    n, c, s = x3.shape
    rows, m = (n, s) if per_image else (1, n * s)
    cdt = compute_dtype(x3.dtype)
    return (
        x3.new_empty((rows, c), dtype=cdt),
        x3.new_empty((rows, c), dtype=torch.int64),
        x3.new_empty((rows, c, m) if store_w else (0,), dtype=cdt),
    )


def _backward(grad, saved, x3, y, *, store_w, **opts) -> Tensor:
    if not store_w:
        raise RuntimeError("lovasz_rows (triton backend): no weights were kept for a backward")
    return _lovasz.lovasz_grad(grad, saved[1], x3, y, **opts)


register("lovasz_rows", KernelFn(forward=_fwd, fake=_fake, backward=_backward))


def lovasz_rows_triton(
    x3: Tensor, y: Tensor, *, kind: int, per_image: bool, ignore_index: int | None
) -> tuple[Tensor, Tensor]:
    """(l [B, C], differentiable in x3; G [B, C]) for logits x3 [N, C, S] and labels y [N, S]."""
    store_w = x3.requires_grad and torch.is_grad_enabled()
    opts = {"kind": kind, "per_image": per_image, "ignore_index": ignore_index, "store_w": store_w}
    out = run("lovasz_rows", (x3, y.contiguous()), opts)
    return out[0], out[1]
