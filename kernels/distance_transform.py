"""The exact Euclidean distance transform of binary masks (docs/spec.md 12.7; SPEC 10.3), in two
separable min-plus passes (Felzenszwalb & Huttenlocher's decomposition, each pass evaluated
exhaustively, which is exact and branch-free):

    f0(y, x) = 0 outside the mask, INF inside
    g(y, x)  = min_y' f0(y', x) + (y - y')^2        (along each column)
    D2(y, x) = min_x' g(y, x') + (x - x')^2         (along each row)

D2 is the squared distance to the nearest pixel outside the mask, an integer, computed in int32
(exact while H^2 + W^2 < 2^31); INF (2^31 - 1) stays INF through the passes and marks an image
with no pixel outside the mask. One kernel runs both passes on different strides: rows b = (n, o)
of length L, ``out[b, i] = min_j f[b, j] + (i - j)^2``. A program owns BLOCK_B rows x BLOCK_I
outputs and walks j (for the column pass the BLOCK_B rows are consecutive x: coalesced loads).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import interpreting, launch

INF = 2**31 - 1


@triton.jit(do_not_specialize=["B", "L", "O"])
def _min_plus_kernel(
    f_ptr, out_ptr, B, L, O, sfn, sfo, sfl, son, soo, sol,
    BLOCK_B: tl.constexpr, BLOCK_I: tl.constexpr,
):  # fmt: skip
    """out[b, i] = min_j f[b, j] + (i - j)^2 (int32; INF + anything = INF), b = n O + o."""
    big = 2147483647
    b = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    bmask = b < B
    nn = b // O
    oo = b - nn * O
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    imask = i < L
    base = nn * sfn + oo * sfo
    acc = tl.full([BLOCK_B, BLOCK_I], big, tl.int32)
    for j in range(0, L):
        fj = tl.load(f_ptr + base + j * sfl, mask=bmask, other=big)
        d = i - j
        cand = tl.where(fj[:, None] == big, big, fj[:, None] + (d * d)[None, :])
        acc = tl.minimum(acc, cand)
    offs = (nn * son + oo * soo)[:, None] + i.to(tl.int64)[None, :] * sol
    tl.store(out_ptr + offs, acc, mask=bmask[:, None] & imask[None, :])


def _pass(f: torch.Tensor, out: torch.Tensor, axis: int) -> None:
    """One min-plus pass of f [N, H, W] along ``axis`` (1: columns, 2: rows) into out."""
    n, h, w = f.shape
    length, other = (h, w) if axis == 1 else (w, h)
    sl, so = (f.stride(1), f.stride(2)) if axis == 1 else (f.stride(2), f.stride(1))
    tl_, to_ = (out.stride(1), out.stride(2)) if axis == 1 else (out.stride(2), out.stride(1))
    block_b, block_i = (64, 128) if interpreting() else (32, 32)
    rows = n * other
    grid = (triton.cdiv(rows, block_b), triton.cdiv(length, block_i))
    launch(
        _min_plus_kernel, grid, f, out, rows, length, other, f.stride(0), so, sl,
        out.stride(0), to_, tl_, BLOCK_B=block_b, BLOCK_I=block_i, num_warps=4,
    )  # fmt: skip


def squared_distance(mask: torch.Tensor) -> torch.Tensor:
    """D2 [N, H, W] int32 of a bool mask [N, H, W]: the squared distance of each pixel to the
    nearest pixel outside the mask (0 outside; INF where the image has no pixel outside)."""
    f0 = torch.where(mask, INF, 0).to(torch.int32)
    if mask.numel() == 0:
        return f0
    g = torch.empty_like(f0)
    _pass(f0, g, axis=1)
    d2 = torch.empty_like(f0)
    _pass(g, d2, axis=2)
    return d2
