"""The Lovasz losses around one device sort (docs/spec.md 12.7; SPEC 10.3): the errors are
written once as sort keys, ``torch.sort`` orders every class's row, and one pass over the sorted
rows gives each class's value and, for the backward, each pixel's weight ``g``; no [C, M] tensor
of probabilities, labels, prefix counts or union sizes is ever stored.

Logits ``x [N, C, S]`` (own strides; S the product of the spatial sizes) and labels ``y [N, S]``
(contiguous, any integer dtype). A pixel is valid when ``y != ignore_index``; for class c it is
foreground when valid and ``y = c`` (``KIND`` 0, Lovasz-Softmax) or ``y = 1`` (``KIND`` 1, hinge,
C = 1). Rows: with ``PER_IMAGE`` one row per image and class (B = N, M = S), else one per class
over the whole batch (B = 1, M = N S); pixel q = n S + s is position m = q mod M of row
(b = q div M, c).

1. ``_lovasz_keys_kernel`` (one tile of pixels of one image, all classes): the sort key
   ``k = e`` at a valid pixel, -1 (softmax) or -inf (hinge) at an ignored one (sorted last, its
   error selected out: a NaN/inf logit there reaches neither the value nor, step 5, the
   gradient, which is exactly 0 at an ignored pixel), with the errors

       softmax: p = softmax_c(x),  e_c = abs(t_c - p_c);     hinge: e = 1 - x (2 t - 1).

2. ``torch.sort`` of the keys [B, C, M] along M, descending -> sorted keys, permutation pi.
3. ``_lovasz_counts_kernel`` (one block of ``BLOCK`` sorted positions of one row): the number
   of foreground pixels in the block, F_blk; the launcher's cumsum gives each block's offset and
   each row's total G.
4. ``_lovasz_terms_kernel`` (the same blocks): with F_i the inclusive prefix count of foreground
   up to sorted position i and U_i = G + (i + 1) - F_i (the union, >= 1), Berman's Alg. 1
   gradient in closed form (no cancellation),

       g_i = 1 / U_i                              at a foreground pixel,
       g_i = I_(i-1) / (U_i U_(i-1))              at a background one, I_(i-1) = G - F_i,
       g_i = 1 where U_(i-1) = 0                  (the first pixel of a row with no foreground),

   the block's partial sum of ``max(k_i, 0) g_i`` (NaN kept), and, when a gradient is wanted,
   ``W[b, c, pi_i] = g_i`` (every position of a row written once: no atomics).
5. ``_lovasz_grad_kernel`` (tiles as in 1): from ``R = dL/dl [B, C]`` (l the per-row values)

       softmax: dL/dp_c = v R_c W_c sign(p_c - t_c),   dL/dx_j = p_j (dL/dp_j - sum_c p_c dL/dp_c)
       hinge:   dL/dx = -v R W [e > 0] (2 t - 1)

   (sign(0) = 0 and [e > 0]: the subgradients of ``abs`` and ``relu`` that autograd takes).

Partial sums are reduced in a fixed order by the launcher (deterministic). Arithmetic in the
compute dtype (float32; float64 for float64 logits); the keys are sorted in that dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import class_tiles, interpreting, launch
from .primitives import softmax_cols

KIND_SOFTMAX, KIND_HINGE = 0, 1
MAX_CLASSES = 1024


@triton.jit
def _pixel_terms(x_ptr, y_ptr, n, pos, rmask, cols, C, S, sxn, sxc, sxs, ignore_index,
                 cdt: tl.constexpr, KIND: tl.constexpr, HAS_IGNORE: tl.constexpr):  # fmt: skip
    """(p (softmax) or x (hinge), t, v, e) of a [BLOCK_R, BLOCK_C] tile of image n."""
    cmask = cols < C
    m2 = rmask[:, None] & cmask[None, :]
    c = cols.to(tl.int64)
    x = tl.load(x_ptr + n * sxn + c[None, :] * sxc + pos[:, None] * sxs, mask=m2, other=0)
    x = x.to(cdt)
    y = tl.load(y_ptr + n * S + pos, mask=rmask, other=0).to(tl.int64)
    v = rmask
    if HAS_IGNORE:
        v = v & (y != ignore_index)
    if KIND == 0:
        p = softmax_cols(x, cmask)
        t = tl.where(v[:, None] & (y[:, None] == c[None, :]), 1.0, 0.0).to(cdt)
        e = tl.abs(t - p)
    else:
        p = x
        t = tl.where(v[:, None] & (y[:, None] == 1), 1.0, 0.0).to(cdt)
        e = 1.0 - x * (2.0 * t - 1.0)
    return p, t, v, e


@triton.jit
def _row_offsets(n, pos, C, S, M, cols):
    """Offsets [BLOCK_R, BLOCK_C] of pixels (n, pos) in the [B, C, M] row layout."""
    q = n * S + pos
    b = q // M
    return (b[:, None] * C + cols.to(tl.int64)[None, :]) * M + (q - b * M)[:, None]


@triton.jit(do_not_specialize=["ignore_index", "ITERS"])
def _lovasz_keys_kernel(
    x_ptr, y_ptr, key_ptr, S, C, M, ITERS, sxn, sxc, sxs, ignore_index,
    KIND: tl.constexpr, HAS_IGNORE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Sort keys [B, C, M] of one image's pixel span (module docstring, step 1)."""
    cdt: tl.constexpr = key_ptr.dtype.element_ty
    n = tl.program_id(0).to(tl.int64)
    span = tl.program_id(1)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    low = -1.0 if KIND == 0 else float("-inf")
    for it in range(0, ITERS):
        pos = ((span * ITERS + it) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
        rmask = pos < S
        _p, _t, v, e = _pixel_terms(
            x_ptr, y_ptr, n, pos, rmask, cols, C, S, sxn, sxc, sxs, ignore_index, cdt, KIND,
            HAS_IGNORE,
        )  # fmt: skip
        key = tl.where(v[:, None], e, low)
        offs = _row_offsets(n, pos, C, S, M, cols)
        tl.store(key_ptr + offs, key.to(cdt), mask=rmask[:, None] & cmask[None, :])


@triton.jit
def _sorted_block(perm_ptr, y_ptr, NBLK, C, M, ignore_index, KIND: tl.constexpr,
                  HAS_IGNORE: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    """(program id, row = b C + c, sorted positions i [BLOCK], i < M, pi_i, t at i as int32) of
    this program's block of sorted positions."""
    pid = tl.program_id(0).to(tl.int64)
    row = pid // NBLK
    i = (pid - row * NBLK) * BLOCK + tl.arange(0, BLOCK)
    imask = i < M
    b = row // C
    pi = tl.load(perm_ptr + row * M + i, mask=imask, other=0)
    y = tl.load(y_ptr + b * M + pi, mask=imask, other=0).to(tl.int64)
    cls = row - b * C if KIND == 0 else 1
    fg = imask & (y == cls)
    if HAS_IGNORE:
        fg = fg & (y != ignore_index)
    return pid, row, i, imask, pi, fg.to(tl.int32)


@triton.jit(do_not_specialize=["ignore_index"])
def _lovasz_counts_kernel(
    perm_ptr, y_ptr, count_ptr, C, M, NBLK, ignore_index,
    KIND: tl.constexpr, HAS_IGNORE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """F_blk [B C, NBLK]: foreground pixels per block of sorted positions (step 3)."""
    pid, _row, _i, _imask, _pi, fg = _sorted_block(perm_ptr, y_ptr, NBLK, C, M, ignore_index,
                                                   KIND, HAS_IGNORE, BLOCK)  # fmt: skip
    tl.store(count_ptr + pid, tl.sum(fg, axis=0))


@triton.jit(do_not_specialize=["ignore_index"])
def _lovasz_terms_kernel(
    key_ptr, perm_ptr, y_ptr, start_ptr, total_ptr, part_ptr, w_ptr, C, M, NBLK, ignore_index,
    KIND: tl.constexpr, HAS_IGNORE: tl.constexpr, STORE_W: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Partial sums [B C, NBLK] of max(k, 0) g and, with ``STORE_W``, W = g at pi (step 4)."""
    cdt: tl.constexpr = part_ptr.dtype.element_ty
    pid, row, i, imask, pi, fg = _sorted_block(perm_ptr, y_ptr, NBLK, C, M, ignore_index, KIND,
                                               HAS_IGNORE, BLOCK)  # fmt: skip
    k = tl.load(key_ptr + row * M + i, mask=imask, other=0).to(cdt)
    # prefix counts and ranks are exact integers (M < 2^31); the ratios are formed in cdt
    cf = tl.load(start_ptr + pid) + tl.cumsum(fg, axis=0)
    total = tl.load(total_ptr + row)
    union = (total + (i + 1) - cf).to(cdt)
    union_prev = union - (1 - fg).to(cdt)
    left_prev = (total - cf + fg).to(cdt)
    first_empty = union_prev == 0
    bg = left_prev / (union * tl.where(first_empty, 1.0, union_prev))
    g = tl.where(fg != 0, 1.0 / union, tl.where(first_empty, 1.0, bg))
    term = tl.where(imask, tl.where(k < 0, 0.0, k) * g, 0.0)  # NaN keys stay NaN
    tl.store(part_ptr + pid, tl.sum(term, axis=0))
    if STORE_W:
        tl.store(w_ptr + row * M + pi, g.to(w_ptr.dtype.element_ty), mask=imask)


@triton.jit(do_not_specialize=["ignore_index", "ITERS"])
def _lovasz_grad_kernel(
    x_ptr, y_ptr, w_ptr, r_ptr, gx_ptr, S, C, M, ITERS, sxn, sxc, sxs, sgxn, sgxc, sgxs,
    ignore_index, KIND: tl.constexpr, HAS_IGNORE: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):  # fmt: skip
    """dL/dx of one image's pixel span from R = dL/dl [B, C] and W [B, C, M] (step 5)."""
    cdt: tl.constexpr = w_ptr.dtype.element_ty
    n = tl.program_id(0).to(tl.int64)
    span = tl.program_id(1)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    for it in range(0, ITERS):
        pos = ((span * ITERS + it) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
        rmask = pos < S
        m2 = rmask[:, None] & cmask[None, :]
        p, t, v, e = _pixel_terms(
            x_ptr, y_ptr, n, pos, rmask, cols, C, S, sxn, sxc, sxs, ignore_index, cdt, KIND,
            HAS_IGNORE,
        )  # fmt: skip
        offs = _row_offsets(n, pos, C, S, M, cols)
        w = tl.load(w_ptr + offs, mask=m2, other=0).to(cdt)
        b = (n * S + pos) // M
        r = tl.load(r_ptr + b[:, None] * C + cols[None, :], mask=m2, other=0).to(cdt)
        keep = v[:, None] & cmask[None, :]
        if KIND == 0:
            d = p - t
            sign = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))
            gp = tl.where(keep, r * w * sign, 0.0)
            dot = tl.sum(p * gp, axis=1)
            # an ignored pixel: exactly 0 (its p, NaN for a NaN/inf logit, is unused)
            gx = tl.where(v[:, None], p * (gp - dot[:, None]), 0.0)
        else:
            gx = tl.where(keep & (e > 0), -r * w * (2.0 * t - 1.0), 0.0)
        g_offs = n * sgxn + cols.to(tl.int64)[None, :] * sgxc + pos[:, None] * sgxs
        tl.store(gx_ptr + g_offs, gx.to(gx_ptr.dtype.element_ty), mask=m2)


# -------------------------------------------------------------------------------- launchers


def _tiles(x3: torch.Tensor) -> tuple[int, int, int, int]:
    """(BLOCK_R, BLOCK_C, ITERS, P) of the pixel kernels: ``launch.class_tiles``."""
    return class_tiles(*x3.shape, MAX_CLASSES)


def _rows(x3: torch.Tensor, per_image: bool) -> tuple[int, int]:
    """(B, M): rows per class and positions per row."""
    n, _, s = x3.shape
    return (n, s) if per_image else (1, n * s)


def lovasz_forward(x3: torch.Tensor, y: torch.Tensor, cdt: torch.dtype, *, kind: int,
                   per_image: bool, ignore_index: int | None,
                   store_w: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(l [B, C] in ``cdt``: the per-row values; G [B, C] int64: foreground pixels per row;
    W [B, C, M] (empty without ``store_w``): the sorted-position weights g at each pixel) for
    logits x3 [N, C, S] and labels y [N, S] (contiguous)."""
    n, c, s = x3.shape
    rows, m = _rows(x3, per_image)
    dev = x3.device
    w = torch.empty((rows, c, m) if store_w else (0,), dtype=cdt, device=dev)
    if rows * c * m == 0:
        zeros = torch.zeros(rows, c, dtype=cdt, device=dev)
        return zeros, torch.zeros(rows, c, dtype=torch.int64, device=dev), w
    if m >= 2**31 - 1:
        raise ValueError(f"pred: at most 2^31 - 2 pixels per row on the triton backend, got {m}")
    has_ig = ignore_index is not None
    ig = int(ignore_index) if has_ig else 0
    block_r, block_c, iters, p = _tiles(x3)
    key = torch.empty(rows, c, m, dtype=cdt, device=dev)
    launch(
        _lovasz_keys_kernel, (n, p), x3, y, key, s, c, m, iters, *x3.stride(), ig,
        KIND=kind, HAS_IGNORE=has_ig, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4,
    )  # fmt: skip
    key, perm = torch.sort(key, dim=-1, descending=True)
    block = 8192 if interpreting() else 1024
    nblk = triton.cdiv(m, block)
    grid = (rows * c * nblk,)
    counts = torch.empty(rows, c, nblk, dtype=torch.int32, device=dev)
    launch(
        _lovasz_counts_kernel, grid, perm, y, counts, c, m, nblk, ig,
        KIND=kind, HAS_IGNORE=has_ig, BLOCK=block, num_warps=4,
    )  # fmt: skip
    ends = counts.cumsum(-1, dtype=torch.int32)  # fixed order; counts < 2^31
    total = ends[..., -1].contiguous()
    start = (ends - counts).contiguous()
    part = torch.empty(rows, c, nblk, dtype=cdt, device=dev)
    launch(
        _lovasz_terms_kernel, grid, key, perm, y, start, total, part, w, c, m, nblk, ig,
        KIND=kind, HAS_IGNORE=has_ig, STORE_W=store_w, BLOCK=block, num_warps=4,
    )  # fmt: skip
    return part.sum(-1), total.to(torch.int64), w


def lovasz_grad(r: torch.Tensor, w: torch.Tensor, x3: torch.Tensor, y: torch.Tensor, *, kind: int,
                per_image: bool, ignore_index: int | None) -> torch.Tensor:  # fmt: skip
    """dL/dx3 [N, C, S] from R = dL/dl [B, C] and the forward's W [B, C, M]."""
    n, c, s = x3.shape
    gx = torch.empty_like(x3)
    if x3.numel() == 0:
        return gx
    _, m = _rows(x3, per_image)
    block_r, block_c, iters, p = _tiles(x3)
    has_ig = ignore_index is not None
    launch(
        _lovasz_grad_kernel, (n, p), x3, y, w, r.to(w.dtype).contiguous(), gx, s, c, m, iters,
        *x3.stride(), *gx.stride(), int(ignore_index) if has_ig else 0,
        KIND=kind, HAS_IGNORE=has_ig, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4,
    )  # fmt: skip
    return gx
