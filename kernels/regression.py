"""Masked regression losses (docs/spec.md 3.3.2-3.3.3, 4): smooth-L1 and cosine, fwd and bwd.

Both have L = sum(s m) / (sum(m) + eps) over pixels, with m [B,1,H,W]:

* smooth-L1: s = sum_c smoothL1(pred[b,c] - target[b,c]) (``primitives.smooth_l1_terms``), target
  broadcast to pred through strides (no copy); dL/dpred = smoothL1'(d) m / (sum(m) + eps).
* cosine: s = 1 - c, c = <normalize(pred[b]), (sin t_b, cos t_b)> (``primitives.cosine_terms``).

Forward: one program per (block of pixels, image) writes (sum s m, sum m, 0, 0), then
``reduce.ratio_finalize``; backward: one launch, the same grid, writes the gradient once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import compute_dtype, f64_bits, launch, mask_view
from .primitives import cosine_terms, keep_float64, option, smooth_l1_terms
from .reduce import DEN_EPS, NUM_PARTIALS, elementwise_block, ratio_finalize


@triton.jit(do_not_specialize=["beta"])
def _smooth_l1_forward_kernel(
    x_ptr,
    t_ptr,
    m_ptr,
    part_ptr,
    C,
    HW,
    W,
    sx_b,
    sx_c,
    sx_h,
    sx_w,
    st_b,
    st_c,
    st_h,
    st_w,
    sm_b,
    sm_h,
    sm_w,
    beta,
    BLOCK: tl.constexpr,
):
    cdt: tl.constexpr = part_ptr.dtype.element_ty
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cells = pid * BLOCK + tl.arange(0, BLOCK)
    on = cells < HW
    i = (cells // W).to(tl.int64)
    j = (cells % W).to(tl.int64)
    m = tl.load(m_ptr + b * sm_b + i * sm_h + j * sm_w, mask=on, other=0).to(cdt)
    s = tl.zeros([BLOCK], cdt)
    for c in range(0, C):
        x = tl.load(x_ptr + b * sx_b + c * sx_c + i * sx_h + j * sx_w, mask=on, other=0)
        t = tl.load(t_ptr + b * st_b + c * st_c + i * st_h + j * st_w, mask=on, other=0)
        sc, _ = smooth_l1_terms(x.to(cdt) - t.to(cdt), option(beta, cdt))
        s += sc
    out = part_ptr + (b * tl.num_programs(0) + pid) * 4
    tl.store(out, tl.sum(tl.where(on, s * m, 0.0), axis=0))
    tl.store(out + 1, tl.sum(m, axis=0))
    tl.store(out + 2, tl.zeros([], cdt))
    tl.store(out + 3, tl.zeros([], cdt))


@triton.jit(do_not_specialize=["beta"])
def _smooth_l1_backward_kernel(
    go_ptr,
    aux_ptr,
    x_ptr,
    t_ptr,
    m_ptr,
    g_ptr,
    C,
    HW,
    W,
    sx_b,
    sx_c,
    sx_h,
    sx_w,
    st_b,
    st_c,
    st_h,
    st_w,
    sm_b,
    sm_h,
    sm_w,
    beta,
    BLOCK: tl.constexpr,
):
    cdt: tl.constexpr = aux_ptr.dtype.element_ty
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cells = pid * BLOCK + tl.arange(0, BLOCK)
    on = cells < HW
    i = (cells // W).to(tl.int64)
    j = (cells % W).to(tl.int64)
    m = tl.load(m_ptr + b * sm_b + i * sm_h + j * sm_w, mask=on, other=0).to(cdt)
    scale = m * (tl.load(aux_ptr) * tl.load(go_ptr).to(cdt))
    for c in range(0, C):
        x = tl.load(x_ptr + b * sx_b + c * sx_c + i * sx_h + j * sx_w, mask=on, other=0)
        t = tl.load(t_ptr + b * st_b + c * st_c + i * st_h + j * st_w, mask=on, other=0)
        _, ds = smooth_l1_terms(x.to(cdt) - t.to(cdt), option(beta, cdt))
        dst = g_ptr + (b * C + c) * HW + cells
        tl.store(dst, (ds * scale).to(g_ptr.dtype.element_ty), mask=on)


@triton.jit
def _cosine_block(
    a_ptr,
    t_ptr,
    m_ptr,
    HW,
    W,
    sa_b,
    sa_c,
    sa_h,
    sa_w,
    st_b,
    sm_b,
    sm_h,
    sm_w,
    BLOCK: tl.constexpr,
    cdt: tl.constexpr,
):
    """This program's cells of image b: (b, cells, on, m, 1 - c, d(1 - c)/da0, d(1 - c)/da1)."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cells = pid * BLOCK + tl.arange(0, BLOCK)
    on = cells < HW
    i = (cells // W).to(tl.int64)
    j = (cells % W).to(tl.int64)
    m = tl.load(m_ptr + b * sm_b + i * sm_h + j * sm_w, mask=on, other=0).to(cdt)
    theta = keep_float64(tl.load(t_ptr + b * st_b), cdt)
    a = a_ptr + b * sa_b + i * sa_h + j * sa_w
    a0 = tl.load(a, mask=on, other=1).to(cdt)
    a1 = tl.load(a + sa_c, mask=on, other=1).to(cdt)
    one_minus_c, g0, g1 = cosine_terms(a0, a1, tl.sin(theta).to(cdt), tl.cos(theta).to(cdt))
    return b, cells, on, m, one_minus_c, g0, g1


@triton.jit
def _cosine_forward_kernel(
    a_ptr,
    t_ptr,
    m_ptr,
    part_ptr,
    HW,
    W,
    sa_b,
    sa_c,
    sa_h,
    sa_w,
    st_b,
    sm_b,
    sm_h,
    sm_w,
    BLOCK: tl.constexpr,
):
    cdt: tl.constexpr = part_ptr.dtype.element_ty
    pid = tl.program_id(0)
    b, _, on, m, one_minus_c, _, _ = _cosine_block(
        a_ptr, t_ptr, m_ptr, HW, W, sa_b, sa_c, sa_h, sa_w, st_b, sm_b, sm_h, sm_w, BLOCK, cdt
    )
    out = part_ptr + (b * tl.num_programs(0) + pid) * 4
    tl.store(out, tl.sum(tl.where(on, one_minus_c * m, 0.0), axis=0))
    tl.store(out + 1, tl.sum(m, axis=0))
    tl.store(out + 2, tl.zeros([], cdt))
    tl.store(out + 3, tl.zeros([], cdt))


@triton.jit
def _cosine_backward_kernel(
    go_ptr,
    aux_ptr,
    a_ptr,
    t_ptr,
    m_ptr,
    g_ptr,
    HW,
    W,
    sa_b,
    sa_c,
    sa_h,
    sa_w,
    st_b,
    sm_b,
    sm_h,
    sm_w,
    BLOCK: tl.constexpr,
):
    cdt: tl.constexpr = aux_ptr.dtype.element_ty
    b, cells, on, m, _, g0, g1 = _cosine_block(
        a_ptr, t_ptr, m_ptr, HW, W, sa_b, sa_c, sa_h, sa_w, st_b, sm_b, sm_h, sm_w, BLOCK, cdt
    )
    scale = m * (tl.load(aux_ptr) * tl.load(go_ptr).to(cdt))
    dst = g_ptr + b * 2 * HW + cells
    tl.store(dst, (g0 * scale).to(g_ptr.dtype.element_ty), mask=on)
    tl.store(dst + HW, (g1 * scale).to(g_ptr.dtype.element_ty), mask=on)


def _strides4(x: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(x.stride())  # type: ignore[return-value]


def _mask_strides(m: torch.Tensor) -> tuple[int, int, int]:
    return m.stride(0), m.stride(2), m.stride(3)


def smooth_l1_forward(pred, target, mask, *, beta, eps):
    """(loss, aux) in 2 launches."""
    b, c, h, w = pred.shape
    t = mask_view(target).expand(pred.shape)
    m = mask_view(mask)
    block, warps = elementwise_block(h * w)
    nblk = max(triton.cdiv(h * w, block), 1)
    partials = torch.empty(nblk * b, NUM_PARTIALS, dtype=compute_dtype(pred), device=pred.device)
    if b > 0:
        launch(
            _smooth_l1_forward_kernel,
            (nblk, b),
            pred,
            t,
            m,
            partials,
            c,
            h * w,
            w,
            *_strides4(pred),
            *_strides4(t),
            *_mask_strides(m),
            f64_bits(beta),
            BLOCK=block,
            num_warps=warps,
        )
    return ratio_finalize(partials, DEN_EPS, eps, pred.numel())


def smooth_l1_backward(grad_loss, aux, pred, target, mask, *, beta, eps=None):
    b, c, h, w = pred.shape
    t = mask_view(target).expand(pred.shape)
    m = mask_view(mask)
    grad = torch.empty(pred.shape, dtype=pred.dtype, device=pred.device)
    block, warps = elementwise_block(h * w)
    if b > 0:
        launch(
            _smooth_l1_backward_kernel,
            (max(triton.cdiv(h * w, block), 1), b),
            grad_loss,
            aux,
            pred,
            t,
            m,
            grad,
            c,
            h * w,
            w,
            *_strides4(pred),
            *_strides4(t),
            *_mask_strides(m),
            f64_bits(beta),
            BLOCK=block,
            num_warps=warps,
        )
    return grad


def cosine_forward(pred, target_angle, mask, *, eps):
    """(loss, aux) in 2 launches."""
    b, _, h, w = pred.shape
    m = mask_view(mask)
    block, warps = elementwise_block(h * w)
    nblk = max(triton.cdiv(h * w, block), 1)
    partials = torch.empty(nblk * b, NUM_PARTIALS, dtype=compute_dtype(pred), device=pred.device)
    if b > 0:
        launch(
            _cosine_forward_kernel,
            (nblk, b),
            pred,
            target_angle,
            m,
            partials,
            h * w,
            w,
            *_strides4(pred),
            target_angle.stride(0),
            *_mask_strides(m),
            BLOCK=block,
            num_warps=warps,
        )
    return ratio_finalize(partials, DEN_EPS, eps, pred.numel())


def cosine_backward(grad_loss, aux, pred, target_angle, mask, *, eps=None):
    b, _, h, w = pred.shape
    m = mask_view(mask)
    grad = torch.empty(pred.shape, dtype=pred.dtype, device=pred.device)
    block, warps = elementwise_block(h * w)
    if b > 0:
        launch(
            _cosine_backward_kernel,
            (max(triton.cdiv(h * w, block), 1), b),
            grad_loss,
            aux,
            pred,
            target_angle,
            m,
            grad,
            h * w,
            w,
            *_strides4(pred),
            target_angle.stride(0),
            *_mask_strides(m),
            BLOCK=block,
            num_warps=warps,
        )
    return grad
