"""Masked penalty-reduced focal loss (docs/spec.md 3.3.1, 4): forward partials and backward.

``f`` and ``df/dx`` are ``primitives.focal_terms``. One kernel, ``_focal_kernel``, serves both
passes (``BACKWARD`` constexpr). Forward (2 launches): partial sums (sum f W, sum W, sum pos W)
per program, then ``reduce.ratio_finalize`` with the ``normalize`` mode's denominator D; backward
(1 launch): grad = df/dx * W * (1 / D) * upstream.

An element of W = 0 is not evaluated (docs/spec.md 3.3.1): its prediction is replaced by 0.5
before ``focal_terms`` and its gradient is a select to 0, so whatever the prediction holds there
(NaN, inf) it adds exactly 0 to the value and to the gradient; its target still enters f (times
W = 0).

Tensors of rank <= 4 are addressed through 4-d strides (a broadcast weight has stride 0 where it
broadcasts: no copy); larger ranks are flattened (copied when needed).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import compute_dtype, f64_bits, launch, mask_view
from .primitives import focal_terms, option
from .reduce import (
    DEN_EPS,
    DEN_NUMEL,
    DEN_ONE,
    DEN_POS,
    NUM_PARTIALS,
    elementwise_block,
    ratio_finalize,
)

NORMALIZE_MODES = {"weight": DEN_EPS, "num_pos": DEN_POS, "sum": DEN_ONE, "mean": DEN_NUMEL}


@triton.jit
def _offsets4(idx, d1, d2, d3, s0, s1, s2, s3):
    """Memory offsets (int64) of the flat (row-major) indices ``idx`` of a 4-d shape with strides
    s. The divisions run in idx's own width: int32 ones are inline, int64 ones a subroutine call
    that costs registers and spills."""
    i3 = idx % d3
    t = idx // d3
    i2 = t % d2
    t = t // d2
    i1 = t % d1
    i0 = t // d1
    i64 = tl.int64
    return i0.to(i64) * s0 + i1.to(i64) * s1 + i2.to(i64) * s2 + i3.to(i64) * s3


@triton.jit(do_not_specialize=["alpha", "beta", "pos_threshold", "eps"])
def _focal_kernel(
    x_ptr, y_ptr, w_ptr, out_ptr, aux_ptr, go_ptr, N, d1, d2, d3,
    sx0, sx1, sx2, sx3, sy0, sy1, sy2, sy3, sw0, sw1, sw2, sw3,
    alpha, beta, pos_threshold, eps,
    FROM_LOGITS: tl.constexpr, HAS_W: tl.constexpr, WIDE: tl.constexpr,
    BACKWARD: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """BLOCK elements of x, y and W (1 when there is none; 0 off the end), addressed through 4-d
    sizes (1, d1, d2, d3) and strides; x is 0.5 where W = 0. Forward: ``out[pid] = (sum f W,
    sum W, sum pos W, 0)``. Backward: ``out[idx] = df/dx * W * aux[0] * go[0]`` where W != 0, 0
    elsewhere (contiguous, in the output's dtype).
    Flat indices are int32 unless N needs more (WIDE). ``aux_ptr`` is in the compute dtype (the
    forward passes ``out`` for it)."""
    cdt: tl.constexpr = aux_ptr.dtype.element_ty
    if WIDE:
        idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    else:
        idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    on = idx < N
    x = tl.load(x_ptr + _offsets4(idx, d1, d2, d3, sx0, sx1, sx2, sx3), mask=on, other=0.5)
    x = x.to(cdt)
    y = tl.load(y_ptr + _offsets4(idx, d1, d2, d3, sy0, sy1, sy2, sy3), mask=on, other=0)
    if HAS_W:
        w = tl.load(w_ptr + _offsets4(idx, d1, d2, d3, sw0, sw1, sw2, sw3), mask=on, other=0)
        w = w.to(cdt)
        x = tl.where(w != 0, x, 0.5)  # an element of W = 0 is not evaluated
    else:
        w = tl.where(on, 1.0, 0.0).to(cdt)
    f, df, pos, _, _ = focal_terms(
        x, y.to(cdt), option(alpha, cdt), option(beta, cdt), option(pos_threshold, cdt),
        option(eps, cdt), 0.0, FROM_LOGITS,
    )  # fmt: skip
    if BACKWARD:
        g = tl.where(w != 0, df * (tl.load(aux_ptr) * tl.load(go_ptr).to(cdt)) * w, 0.0)
        tl.store(out_ptr + idx, g.to(out_ptr.dtype.element_ty), mask=on)
    else:
        out = out_ptr + tl.program_id(0) * 4
        tl.store(out, tl.sum(tl.where(on, f * w, 0.0), axis=0))
        tl.store(out + 1, tl.sum(w, axis=0))
        tl.store(out + 2, tl.sum(tl.where(pos, w, 0.0), axis=0))
        tl.store(out + 3, tl.zeros([], cdt))


def as4d(shape: torch.Size, *tensors: torch.Tensor | None):
    """(4-d sizes, [(tensor, 4 strides) or None]) addressing each tensor broadcast to ``shape``."""
    out = []
    if len(shape) <= 4:
        size4 = (1,) * (4 - len(shape)) + tuple(shape)
        for t in tensors:
            if t is None:
                out.append(None)
                continue
            e = mask_view(t).expand(shape)
            out.append((e, (0,) * (4 - len(shape)) + tuple(e.stride())))
        return size4, out
    n = 1
    for s in shape:
        n *= s
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        e = mask_view(t).expand(shape).reshape(-1)
        out.append((e, (0, 0, 0, e.stride(0))))
    return (1, 1, 1, n), out


def _focal_launch(pred, target, weight, out, aux, go, opts: dict, backward: bool) -> None:
    """One ``_focal_kernel`` launch over ``pred`` (options: alpha, beta, pos_threshold, eps,
    from_logits)."""
    n = pred.numel()
    size4, ((x, sx), (y, sy), wt) = as4d(pred.shape, pred, target, weight)
    w, sw = wt if wt is not None else (x, (0, 0, 0, 0))
    block, warps = elementwise_block(n)
    launch(
        _focal_kernel,
        (max(triton.cdiv(n, block), 1),),
        x, y, w, out, aux, go, n, *size4[1:], *sx, *sy, *sw,
        *(f64_bits(opts[k]) for k in ("alpha", "beta", "pos_threshold", "eps")),
        FROM_LOGITS=bool(opts["from_logits"]), HAS_W=weight is not None, WIDE=n >= 2**31,
        BACKWARD=backward, BLOCK=block, num_warps=warps,
    )  # fmt: skip


def focal_forward(pred, target, weight, sync=None, **opts) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, aux) in 2 launches; ``aux`` feeds :func:`focal_backward`. ``opts``: alpha, beta,
    pos_threshold, normalize, from_logits, eps; ``sync``: see ``reduce.ratio_finalize``."""
    n = pred.numel()
    nprog = max(triton.cdiv(n, elementwise_block(n)[0]), 1)
    partials = torch.empty(nprog, NUM_PARTIALS, dtype=compute_dtype(pred), device=pred.device)
    _focal_launch(pred, target, weight, partials, partials, partials, opts, backward=False)
    mode = NORMALIZE_MODES[opts["normalize"]]
    return ratio_finalize(partials, mode, opts["eps"], n if sync is not None else max(n, 1), sync)


def focal_backward(grad_loss, aux, pred, target, weight, **opts) -> torch.Tensor:
    """d loss / d pred (1 launch), contiguous, in pred's dtype."""
    grad = torch.empty(pred.shape, dtype=pred.dtype, device=pred.device)
    _focal_launch(pred, target, weight, grad, aux, grad_loss, opts, backward=True)
    return grad
