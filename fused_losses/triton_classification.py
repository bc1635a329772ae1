"""The triton backend of the registry's fused dense losses (docs/spec.md 12.4): autograd glue over
``kernels/classification.py``.

Two ops, each a ``kernel_ops.KernelFn`` (a plain ``autograd.Function`` eagerly, opaque custom ops
under ``torch.compile``): ``dense_sums`` -> (sum of l w v, sum of v) and ``dense_none`` -> l w v.
Their backward recomputes the softmax/sigmoid terms from the logits (one pass writing the
gradient): nothing of the logits' size is kept between forward and backward. The op names are
internal: ``registry.dense.dense_loss`` passes their differentiable output through a node whose
backward refuses a double backward first, naming the public loss (``"FocalLoss (triton backend):
double backward ..."``, spec 8).
"""

from __future__ import annotations

from torch import Tensor

from .backend import compute_dtype
from .kernel_ops import KernelFn, register, run
from .kernels import classification as _cls


def _sums_fwd(x3, t, q, sw, cw, cp, **opts):
    return _cls.dense_sums(x3, t, q, sw, cw, cp, compute_dtype(x3.dtype), **opts)


def _sums_fake(x3, *_tensors, **_opts):
    cdt = compute_dtype(x3.dtype)
    return x3.new_empty((), dtype=cdt), x3.new_empty((), dtype=cdt)


def _none_fwd(x3, t, q, sw, cw, cp, **opts):
    return (_cls.dense_none(x3, t, q, sw, cw, cp, compute_dtype(x3.dtype), **opts),)


def _none_fake(x3, *_tensors, **opts):
    n, c, s = x3.shape
    shape = (n, s) if opts["family"] == "softmax" or opts["per_row"] else (n, c, s)
    return (x3.new_empty(shape, dtype=compute_dtype(x3.dtype)),)


def _backward(grad, _saved, x3, t, q, sw, cw, cp, **opts) -> Tensor:
    return _cls.dense_grad(grad.to(compute_dtype(x3.dtype)), x3, t, q, sw, cw, cp, **opts)


register("dense_sums", KernelFn(forward=_sums_fwd, fake=_sums_fake, backward=_backward))
register("dense_none", KernelFn(forward=_none_fwd, fake=_none_fake, backward=_backward))


def _opts(spec: dict) -> dict:
    out = dict(spec)
    out["per_row"] = spec["family"] == "softmax" or spec["per_row"]
    return out


def dense_sums_triton(x3, t, q, sw, cw, cp, spec: dict) -> tuple[Tensor, Tensor]:
    s, count = run("dense_sums", (x3, t, q, sw, cw, cp), _opts(spec))
    return s, count


def dense_none_triton(x3, t, q, sw, cw, cp, spec: dict) -> Tensor:
    return run("dense_none", (x3, t, q, sw, cw, cp), _opts(spec))[0]
