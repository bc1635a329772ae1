"""The triton backend of the feature-imitation losses (docs/spec.md 12.6): autograd glue over
``kernels/feature.py``. Two ``kernel_ops.KernelFn`` s: ``feature_sum`` (a, t) -> sum of l and
``feature_none`` -> l (for the attention rows also their maxima m, a non-differentiable extra
that the backward reads); their backward recomputes the terms from a and t in one launch."""

from __future__ import annotations

from torch import Tensor

from .backend import compute_dtype
from .kernel_ops import KernelFn, register, run
from .kernels import feature as _feature


def _sum_fwd(a, t, **opts):
    return (_feature.feature_sum(a, t, compute_dtype(a.dtype), **opts),)


def _sum_fake(a, _t, **_opts):
    return (a.new_empty((), dtype=compute_dtype(a.dtype)),)


def _none_fwd(a, t, **opts):
    return _feature.feature_none(a, t, compute_dtype(a.dtype), **opts)


def _none_fake(a, _t, **opts):
    n, c, s = a.shape
    cdt = compute_dtype(a.dtype)
    if opts["loss"] == _feature.F_ATT:
        return (a.new_empty((n, s), dtype=cdt), a.new_empty((n, s), dtype=cdt))
    shape = (n, s) if opts["loss"] >= _feature.F_COS else (n, c, s)
    return (a.new_empty(shape, dtype=cdt),)


def _backward(grad, saved, a, t, **opts) -> Tensor:
    scale = saved[0] if saved else None  # the attention rows' maxima
    return _feature.feature_grad(grad.to(compute_dtype(a.dtype)), a, t, scale=scale, **opts)


register("feature_sum", KernelFn(forward=_sum_fwd, fake=_sum_fake, backward=_backward))
register("feature_none", KernelFn(forward=_none_fwd, fake=_none_fake, backward=_backward))


def feature_triton(a: Tensor, t: Tensor | None, mode: str, opts: dict) -> Tensor:
    """mode "sum": the 0-dim sum of l; "none": l. Differentiable in a."""
    name = "feature_sum" if mode == "sum" else "feature_none"
    return run(name, (a, t), opts)[0]


def attention_rows_triton(a: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """(l, m) [N, S] of a [N, C, S]: m = max_c abs(a_c), l = mean_c abs(a_c / m)^p (m read as 1
    where it is 0), differentiable in a with m held constant (``kernels/feature.py``)."""
    out = run("feature_none", (a, None), {"loss": _feature.F_ATT, "normalize": False, "p": p})
    return out[0], out[1]
