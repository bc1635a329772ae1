"""Masked regression losses (docs/spec.md 3.3.2-3.3.3, 4): smooth-L1 and cosine, fwd and bwd.

Both have L = sum(s m) / (sum(m) + eps) over pixels, with m [B,1,H,W]:

* smooth-L1: s = sum_c smoothL1(pred[b,c] - target[b,c]) (``primitives.smooth_l1_terms``), target
  broadcast to pred through strides (no copy); dL/dpred = smoothL1'(d) m / (sum(m) + eps).
* cosine: s = 1 - c, c = <normalize(pred[b]), (sin t_b, cos t_b)> (``primitives.cosine_terms``).

A pixel of m = 0 is not evaluated (docs/spec.md 3.3.2-3.3.3): its prediction is replaced by a
harmless value before the formula (the target for smooth-L1, d = 0; (0, 1) for the cosine) and its
gradient is a select to 0, so whatever the prediction holds there (NaN, inf) it adds exactly 0 to
the value and to the gradient (also where an eps of 0 makes the scale inf); its term is still
multiplied by m = 0, so a non-finite target keeps the loss NaN.

One kernel per loss serves both passes (``BACKWARD`` constexpr). Forward: one program per (block
of pixels, image) writes (sum s m, sum m, 0, 0), then ``reduce.ratio_finalize``; backward: one
launch, the same grid, writes the gradient once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import compute_dtype, f64_bits, launch, mask_view
from .primitives import cosine_terms, keep_float64, option, smooth_l1_terms
from .reduce import DEN_EPS, NUM_PARTIALS, elementwise_block, ratio_finalize


@triton.jit(do_not_specialize=["beta"])
def _smooth_l1_kernel(
    x_ptr, t_ptr, m_ptr, out_ptr, aux_ptr, go_ptr, C, HW, W,
    sx_b, sx_c, sx_h, sx_w, st_b, st_c, st_h, st_w, sm_b, sm_h, sm_w, beta,
    BACKWARD: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One program per (block of pixels, image). Forward: ``out[program] = (sum s m, sum m, 0,
    0)``; backward: ``out = smoothL1'(d) m aux[0] go[0]`` (0 where m = 0), contiguous [B,C,H,W].
    ``aux_ptr`` is in the compute dtype (the forward passes ``out`` for it)."""
    cdt: tl.constexpr = aux_ptr.dtype.element_ty
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cells = pid * BLOCK + tl.arange(0, BLOCK)
    on = cells < HW
    i = (cells // W).to(tl.int64)
    j = (cells % W).to(tl.int64)
    m = tl.load(m_ptr + b * sm_b + i * sm_h + j * sm_w, mask=on, other=0).to(cdt)
    if BACKWARD:
        scale = m * (tl.load(aux_ptr) * tl.load(go_ptr).to(cdt))
    s = tl.zeros([BLOCK], cdt)
    live = m != 0  # the pixels evaluated; elsewhere the prediction is not read
    for c in range(0, C):
        x = tl.load(x_ptr + b * sx_b + c * sx_c + i * sx_h + j * sx_w, mask=on, other=0)
        t = tl.load(t_ptr + b * st_b + c * st_c + i * st_h + j * st_w, mask=on, other=0).to(cdt)
        sc, ds = smooth_l1_terms(tl.where(live, x.to(cdt), t) - t, option(beta, cdt))
        if BACKWARD:
            dst = out_ptr + (b * C + c) * HW + cells
            tl.store(dst, tl.where(live, ds * scale, 0.0).to(out_ptr.dtype.element_ty), mask=on)
        else:
            s += sc
    if not BACKWARD:
        out = out_ptr + (b * tl.num_programs(0) + pid) * 4
        tl.store(out, tl.sum(tl.where(on, s * m, 0.0), axis=0))
        tl.store(out + 1, tl.sum(m, axis=0))
        tl.store(out + 2, tl.zeros([], cdt))
        tl.store(out + 3, tl.zeros([], cdt))


@triton.jit
def _cosine_kernel(
    a_ptr, t_ptr, m_ptr, out_ptr, aux_ptr, go_ptr, HW, W, sa_b, sa_c, sa_h, sa_w, st_b,
    sm_b, sm_h, sm_w, BACKWARD: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One program per (block of pixels, image). Forward: ``out[program] = (sum (1 - c) m,
    sum m, 0, 0)``; backward: ``out = d(1 - c)/da m aux[0] go[0]`` (0 where m = 0), contiguous
    [B,2,H,W]."""
    cdt: tl.constexpr = aux_ptr.dtype.element_ty
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cells = pid * BLOCK + tl.arange(0, BLOCK)
    on = cells < HW
    i = (cells // W).to(tl.int64)
    j = (cells % W).to(tl.int64)
    m = tl.load(m_ptr + b * sm_b + i * sm_h + j * sm_w, mask=on, other=0).to(cdt)
    theta = keep_float64(tl.load(t_ptr + b * st_b), cdt)
    live = m != 0  # the pixels evaluated; elsewhere the prediction is not read: (0, 1)
    a = a_ptr + b * sa_b + i * sa_h + j * sa_w
    a0 = tl.where(live, tl.load(a, mask=on, other=1).to(cdt), 0.0)
    a1 = tl.where(live, tl.load(a + sa_c, mask=on, other=1).to(cdt), 1.0)
    one_minus_c, g0, g1 = cosine_terms(a0, a1, tl.sin(theta).to(cdt), tl.cos(theta).to(cdt))
    if BACKWARD:
        scale = m * (tl.load(aux_ptr) * tl.load(go_ptr).to(cdt))
        dst = out_ptr + b * 2 * HW + cells
        tl.store(dst, tl.where(live, g0 * scale, 0.0).to(out_ptr.dtype.element_ty), mask=on)
        tl.store(dst + HW, tl.where(live, g1 * scale, 0.0).to(out_ptr.dtype.element_ty), mask=on)
    else:
        out = out_ptr + (b * tl.num_programs(0) + pid) * 4
        tl.store(out, tl.sum(tl.where(on, one_minus_c * m, 0.0), axis=0))
        tl.store(out + 1, tl.sum(m, axis=0))
        tl.store(out + 2, tl.zeros([], cdt))
        tl.store(out + 3, tl.zeros([], cdt))


def _launch_per_image(kernel, pred, inputs, out, aux, go, args, backward: bool) -> None:
    """``kernel`` over a grid (blocks of H*W pixels, B): ``inputs`` (pred first), then ``out``,
    ``aux``, ``go``, then ``args`` (sizes, strides, options)."""
    b, _, h, w = pred.shape
    block, warps = elementwise_block(h * w)
    if b > 0:
        grid = (max(triton.cdiv(h * w, block), 1), b)
        launch(kernel, grid, *inputs, out, aux, go, *args, BACKWARD=backward, BLOCK=block,
               num_warps=warps)  # fmt: skip


def _partials(pred: torch.Tensor) -> torch.Tensor:
    """The forward's partial sums, one row per program of :func:`_launch_per_image`."""
    b, _, h, w = pred.shape
    nblk = max(triton.cdiv(h * w, elementwise_block(h * w)[0]), 1)
    return torch.empty(nblk * b, NUM_PARTIALS, dtype=compute_dtype(pred), device=pred.device)


def _smooth_l1_launch(pred, target, mask, out, aux, go, beta, backward: bool) -> None:
    _, c, h, w = pred.shape
    t = mask_view(target).expand(pred.shape)
    m = mask_view(mask)
    args = (c, h * w, w, *pred.stride(), *t.stride(), m.stride(0), m.stride(2), m.stride(3))
    _launch_per_image(
        _smooth_l1_kernel, pred, (pred, t, m), out, aux, go, (*args, f64_bits(beta)), backward
    )


def smooth_l1_forward(pred, target, mask, sync=None, *, beta, eps):
    """(loss, aux) in 2 launches (``sync``: see ``reduce.ratio_finalize``)."""
    partials = _partials(pred)
    _smooth_l1_launch(pred, target, mask, partials, partials, partials, beta, backward=False)
    return ratio_finalize(partials, DEN_EPS, eps, pred.numel(), sync)


def smooth_l1_backward(grad_loss, aux, pred, target, mask, *, beta, eps=None):
    grad = torch.empty(pred.shape, dtype=pred.dtype, device=pred.device)
    _smooth_l1_launch(pred, target, mask, grad, aux, grad_loss, beta, backward=True)
    return grad


def _cosine_launch(pred, target_angle, mask, out, aux, go, backward: bool) -> None:
    _, _, h, w = pred.shape
    m = mask_view(mask)
    args = (h * w, w, *pred.stride(), target_angle.stride(0), m.stride(0), m.stride(2), m.stride(3))
    _launch_per_image(_cosine_kernel, pred, (pred, target_angle, m), out, aux, go, args, backward)


def cosine_forward(pred, target_angle, mask, sync=None, *, eps):
    """(loss, aux) in 2 launches (``sync``: see ``reduce.ratio_finalize``)."""
    partials = _partials(pred)
    _cosine_launch(pred, target_angle, mask, partials, partials, partials, backward=False)
    return ratio_finalize(partials, DEN_EPS, eps, pred.numel(), sync)


def cosine_backward(grad_loss, aux, pred, target_angle, mask, *, eps=None):
    grad = torch.empty(pred.shape, dtype=pred.dtype, device=pred.device)
    _cosine_launch(pred, target_angle, mask, grad, aux, grad_loss, backward=True)
    return grad
