"""Hard-negative margin ranking loss (docs/spec.md 3.3.4, 4): forward and backward kernels.

Forward, one program (``primitives.hard_negative_block``): bilinear samples of the heatmap at the
positive and the K negatives of every image, validity (mask, cell on the grid, weight > 0),
L = mean over valid of relu(margin - s_pos + s_neg) (0 if none), and the per-sample coefficients
coef [B, 1+K]. Writes loss and aux = [1 / max(count, 1), coef...].
Backward, grid (cdiv(H*W, BLOCK), B) (``primitives.hard_negative_grad``): every cell sums the tent
weights of its image's 1+K samples times their coefficients: no atomics, every cell written once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import compute_dtype, f64_bits, launch, mask_view, next_pow2
from .primitives import as_dtype, hard_negative_block, hard_negative_grad, option
from .reduce import elementwise_block

W_NONE, W_MAP = 0, 3  # cell_weight modes: no weight, a [B,1,H,W] weight map


@triton.jit(do_not_specialize=["margin"])
def _hard_negative_forward_kernel(
    hm_ptr, pos_ptr, neg_ptr, nmask_ptr, w_ptr, loss_ptr, aux_ptr, B, K, H, W, s_hm_b, s_hm_h,
    s_hm_w, s_w_b, s_w_h, s_w_w, margin, STRIDE: tl.constexpr, W_MODE: tl.constexpr,
    HAS_NMASK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """The heatmap and the weight map strided; positive, negatives and their mask contiguous."""
    cdt: tl.constexpr = aux_ptr.dtype.element_ty
    hinge_sum, count = hard_negative_block(
        hm_ptr, s_hm_b, s_hm_h, s_hm_w, pos_ptr, neg_ptr, nmask_ptr, w_ptr, s_w_b, s_w_h, s_w_w,
        aux_ptr + 1, aux_ptr, B, K, H, W, option(margin, cdt), STRIDE, W_MODE, HAS_NMASK, False, 1,
        False, BLOCK_B, BLOCK_K, cdt,
    )  # fmt: skip
    den = tl.maximum(count, as_dtype(1.0, cdt))
    tl.store(loss_ptr, hinge_sum / den)
    tl.store(aux_ptr, 1.0 / den)
    tail = aux_ptr + 1 + B * (K + 1)
    tl.store(tail, hinge_sum)
    tl.store(tail + 1, count)


@triton.jit
def _hard_negative_backward_kernel(
    go_ptr, aux_ptr, pos_ptr, neg_ptr, g_ptr, HW, W, K, STRIDE: tl.constexpr, BLOCK: tl.constexpr
):
    cdt: tl.constexpr = aux_ptr.dtype.element_ty
    pid = tl.program_id(0)
    b = tl.program_id(1)
    cells = pid * BLOCK + tl.arange(0, BLOCK)
    on = cells < HW
    ii = (cells // W).to(cdt)
    jj = (cells % W).to(cdt)
    g = hard_negative_grad(pos_ptr, neg_ptr, aux_ptr + 1, b, ii, jj, K, STRIDE)
    g = g * (tl.load(aux_ptr) * tl.load(go_ptr).to(cdt))
    tl.store(g_ptr + b.to(tl.int64) * HW + cells, g.to(g_ptr.dtype.element_ty), mask=on)


def _points(positive: torch.Tensor, negatives: torch.Tensor, dummy: torch.Tensor):
    """The positive [B, 2] and negatives [B, K, 2] contiguous (a copy of a few numbers at most)."""
    return positive.contiguous(), negatives.contiguous() if negatives.shape[1] > 0 else dummy


def hard_negative_forward(
    heatmap, positive, negatives, negative_mask, weight, sync=None, *, margin, stride
):
    """(loss, aux = [1 / max(count, 1), coef [B, 1+K], hinge sum, count]) in 1 launch.

    ``sync`` (data parallel; ``sums -> the sums over every rank``): the loss is this rank's hinge
    sum over max(valid count of every rank, 1) (one all-reduce of one number, after the launch;
    the coefficients are unscaled, so only aux[0] changes)."""
    b, _, h, w = heatmap.shape
    k = negatives.shape[1]
    cdt = compute_dtype(heatmap)
    loss = torch.empty((), dtype=cdt, device=heatmap.device)
    aux = torch.empty(aux_size(b, k), dtype=cdt, device=heatmap.device)
    pos, neg = _points(positive, negatives, heatmap)
    nm = mask_view(negative_mask).contiguous() if negative_mask is not None and k > 0 else None
    wt = mask_view(weight)
    s_w = (wt.stride(0), wt.stride(2), wt.stride(3)) if wt is not None else (0, 0, 0)
    block_k = min(next_pow2(k), 32)
    block_b = max(1, min(next_pow2(b), 512 // block_k))
    launch(
        _hard_negative_forward_kernel,
        (1,),
        heatmap, pos, neg, nm if nm is not None else heatmap, wt if wt is not None else heatmap,
        loss, aux, b, k, h, w, heatmap.stride(0), heatmap.stride(2), heatmap.stride(3), *s_w,
        f64_bits(margin),
        STRIDE=stride, W_MODE=W_MAP if wt is not None else W_NONE, HAS_NMASK=nm is not None,
        BLOCK_B=block_b, BLOCK_K=block_k, num_warps=4,
    )  # fmt: skip
    if sync is not None:
        den = sync(aux[-1:]).clamp_min(1)
        loss = aux[-2] / den[0]
        aux[:1] = 1.0 / den
    return loss, aux


def aux_size(batch: int, negatives: int) -> int:
    """Entries of the forward's ``aux``: 1 / D, coef [B, 1+K], hinge sum, count."""
    return 3 + batch * (negatives + 1)


def hard_negative_backward(grad_loss, aux, heatmap, positive, negatives, *, stride):
    """d loss / d heatmap (1 launch), contiguous, in the heatmap's dtype."""
    b, _, h, w = heatmap.shape
    k = negatives.shape[1]
    grad = torch.empty(heatmap.shape, dtype=heatmap.dtype, device=heatmap.device)
    pos, neg = _points(positive, negatives, heatmap)
    block, warps = elementwise_block(h * w)
    if b > 0:
        launch(
            _hard_negative_backward_kernel,
            (max(triton.cdiv(h * w, block), 1), b),
            grad_loss, aux, pos, neg, grad, h * w, w, k,
            STRIDE=stride, BLOCK=block, num_warps=warps,
        )  # fmt: skip
    return grad
