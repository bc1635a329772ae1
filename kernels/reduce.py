"""One-program finalize shared by the component losses: ratio of reduced partial sums.

The forward kernels of the component losses (``focal.py``, ``regression.py``) write per-program
partial sums ``partials [P, 4]`` = (numerator, denominator sum, positive-weight sum, unused) and
this kernel reduces them in a fixed order (deterministic, no atomics) and writes

    loss = num / D,   aux[0] = 1 / D   (the gradient scale of the backward kernel)

with D by ``DEN_MODE``: 0 ``den + eps``; 1 (CenterNet ``num_pos``) ``pos`` if ``pos > 0`` else 1;
2 (``sum``) 1; 3 (``mean``) ``numel``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import f64_bits, interpreting, launch
from .primitives import as_dtype, option

DEN_EPS, DEN_POS, DEN_ONE, DEN_NUMEL = 0, 1, 2, 3
NUM_PARTIALS = 4
FINALIZE_BLOCK_P = 128  # partial rows per pass of the finalize kernel (tests lower it)


@triton.jit
def partial_sums(part_ptr, P, BLOCK_P: tl.constexpr):
    """(the column sums [4] of partials [P, 4], the column indices [4]), in a fixed order."""
    cdt: tl.constexpr = part_ptr.dtype.element_ty
    rows = tl.arange(0, BLOCK_P)
    cols = tl.arange(0, 4)
    acc = tl.zeros([BLOCK_P, 4], cdt)
    for r0 in range(0, P, BLOCK_P):
        r = (r0 + rows).to(tl.int64)
        acc += tl.load(part_ptr + r[:, None] * 4 + cols[None, :], mask=(r < P)[:, None], other=0)
    return tl.sum(acc, axis=0), cols


@triton.jit(do_not_specialize=["eps"])
def _ratio_finalize_kernel(
    part_ptr, P, loss_ptr, aux_ptr, eps, numel, DEN_MODE: tl.constexpr, BLOCK_P: tl.constexpr
):
    cdt: tl.constexpr = part_ptr.dtype.element_ty
    sums, cols = partial_sums(part_ptr, P, BLOCK_P)
    num = tl.sum(tl.where(cols == 0, sums, 0.0), axis=0)
    den = tl.sum(tl.where(cols == 1, sums, 0.0), axis=0)
    pos = tl.sum(tl.where(cols == 2, sums, 0.0), axis=0)
    if DEN_MODE == 0:
        d = den + option(eps, cdt)
    elif DEN_MODE == 1:
        d = tl.where(pos > 0, pos, 1.0)
    elif DEN_MODE == 2:
        d = tl.full([], 1.0, cdt)
    else:
        d = as_dtype(numel, cdt)
    tl.store(loss_ptr, num / d)
    tl.store(aux_ptr, 1.0 / d)


def ratio_finalize(
    partials: torch.Tensor, den_mode: int, eps: float, numel: int, sync=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss 0-dim, aux [1] = 1 / D) from ``partials [P, 4]`` (one launch).

    ``sync`` (data parallel; ``sums -> the sums over every rank``): the denominators are first
    summed over the ranks (the partials' column sums, with the element count in column 3, one
    all-reduce of 4 numbers), the numerator stays this rank's; then the same finalize runs on
    that one row."""
    if sync is not None:
        local = partials.sum(0, keepdim=True)
        local[:, 3] = numel
        row = sync(local)
        row[:, 0] = local[:, 0]
        if den_mode == DEN_NUMEL:  # max(global count, 1), as a "den + eps" with eps 0
            row[:, 1] = row[:, 3].clamp_min(1)
            den_mode, eps = DEN_EPS, 0.0
        partials = row
    loss = torch.empty((), dtype=partials.dtype, device=partials.device)
    aux = torch.empty(1, dtype=partials.dtype, device=partials.device)
    launch(
        _ratio_finalize_kernel,
        (1,),
        partials,
        partials.shape[0],
        loss,
        aux,
        f64_bits(eps),
        int(numel),
        DEN_MODE=den_mode,
        BLOCK_P=FINALIZE_BLOCK_P,
        num_warps=4,
    )
    return loss, aux


@triton.jit
def _scale_kernel(go_ptr, g_ptr, N, BLOCK: tl.constexpr):
    """g *= upstream gradient, in place, each program striding over the buffer; when the upstream
    gradient is 1 (the usual ``loss.backward()``) a program reads it and nothing else."""
    go = tl.load(go_ptr)
    if go != 1.0:
        step = tl.num_programs(0).to(tl.int64) * BLOCK
        for start in range(tl.program_id(0).to(tl.int64) * BLOCK, N, step):
            offs = start + tl.arange(0, BLOCK)
            on = offs < N
            g = tl.load(g_ptr + offs, mask=on, other=0)
            tl.store(g_ptr + offs, (g * go.to(g.dtype)).to(g_ptr.dtype.element_ty), mask=on)


SCALE_BLOCK = 1024
SCALE_PROGRAMS = 1024  # a capped grid: ~3 us on an H100 when nothing moves (65536 programs: 40 us)


def scale_gradients_(grad_output: torch.Tensor, buf: torch.Tensor) -> None:
    """``buf *= grad_output`` in place (``buf`` contiguous; one launch, nothing moves when
    grad_output is 1): the backward of a loss whose forward already wrote its gradients."""
    n = buf.numel()
    if n:
        grid = (min(triton.cdiv(n, SCALE_BLOCK), SCALE_PROGRAMS),)
        launch(_scale_kernel, grid, grad_output, buf, n, BLOCK=SCALE_BLOCK, num_warps=4)


def stores_gradients(*tensors: torch.Tensor) -> bool:
    """Whether a forward may write final gradients for ``tensors`` (those that need one): eager
    (not while torch.compile traces) and one shared float32/float64 dtype. float16/bfloat16
    gradients are computed in backward instead, where the upstream gradient (a loss scale, say)
    is known: unscaled they would underflow."""
    if not tensors or torch.compiler.is_compiling():
        return False
    dtypes = {x.dtype for x in tensors}
    return len(dtypes) == 1 and dtypes <= {torch.float32, torch.float64}


def elementwise_block(n: int) -> tuple[int, int]:
    """(BLOCK, num_warps) of the elementwise kernels over ``n`` items per program row."""
    if interpreting():  # fewer, wider programs: the interpreter pays per program and op
        return min(triton.next_power_of_2(max(n, 1)), 4096), 4
    return min(triton.next_power_of_2(max(n, 1)), 512), 8
