"""Label kernels (docs/spec.md 3.2, 4): Gaussian heatmaps and padding weights, one launch each.

* ``gaussian_heatmap``: Y[b,0,i,j] = merge_n mask[b,n] exp(-(i - cv_n)^2 / (2 sy_n^2)
  - (j - cu_n)^2 / (2 sx_n^2)) (``primitives.gaussian``), merge max or sum, (cu, cv) = floor(u, v)
  for center="cell", (u, v) for "exact"; sigma a float or a tensor broadcast to [B,N,2] through
  strides (no copy). Grid (cdiv(Hf*Wf, BLOCK), B), a loop over the N centres.
* ``padding_weight``: W = ``primitives.cell_weight`` from a full-resolution padding mask (any dtype)
  or analytically from valid_box.
* ``boundary_label``: E = dilate_k(M) - erode_k(M), M = (AvgPool_stride(mask) > 0.5), without
  writing M (``_boundary_kernel``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import f64_bits, launch, mask_view
from .primitives import as_dtype, cell_weight, gaussian, grid_coord, label_center, option
from .reduce import elementwise_block

# boundary_label: output rows and columns per program (each program re-reads KS - 1 rows of M,
# so 32 rows cost at most 6% more mask reads at KS = 3 while keeping B * H / 32 programs).
BOUNDARY_ROWS = 32
BOUNDARY_BLOCK = 128


@triton.jit(do_not_specialize=["sigma"])
def _gaussian_heatmap_kernel(
    c_ptr, sig_ptr, m_ptr, out_ptr, N, HW, W, s_c_b, s_c_n, s_c_c, s_s_b, s_s_n, s_s_c, s_m_b,
    s_m_n, sigma, smoothing, STRIDE: tl.constexpr, CELL: tl.constexpr,
    SIGMA_TENSOR: tl.constexpr, HAS_MASK: tl.constexpr, MERGE_MAX: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Y of ``fused_losses.gaussian_heatmap`` for one block of cells of one image, smoothed to
    Y (1 - 2 e) + e (e = ``smoothing``; exact Y at e = 0)."""
    cdt: tl.constexpr = out_ptr.dtype.element_ty
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cells = pid * BLOCK + tl.arange(0, BLOCK)
    on = cells < HW
    ii = (cells // W).to(cdt)
    jj = (cells % W).to(cdt)
    acc = tl.zeros([BLOCK], cdt)
    sig = option(sigma, cdt)
    for n in range(0, N):
        c = c_ptr + b * s_c_b + n * s_c_n
        cu = label_center(grid_coord(tl.load(c).to(cdt), STRIDE), CELL)
        cv = label_center(grid_coord(tl.load(c + s_c_c).to(cdt), STRIDE), CELL)
        if SIGMA_TENSOR:
            s = sig_ptr + b * s_s_b + n * s_s_n
            sx = tl.load(s).to(cdt)
            sy = tl.load(s + s_s_c).to(cdt)
        else:
            sx = sig
            sy = sig
        y = gaussian(ii, jj, cu, cv, sx, sy)
        if HAS_MASK:
            y = y * tl.load(m_ptr + b * s_m_b + n * s_m_n).to(cdt)
        if MERGE_MAX:
            acc = tl.maximum(acc, y)
        else:
            acc += y
    e = option(smoothing, cdt)
    tl.store(out_ptr + b * HW + cells, acc * (1.0 - 2.0 * e) + e, mask=on)


@triton.jit
def _padding_weight_kernel(
    pad_ptr,
    out_ptr,
    HW,
    W,
    s_b,
    s_h,
    s_w,
    STRIDE: tl.constexpr,
    MODE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    cdt: tl.constexpr = out_ptr.dtype.element_ty
    pid = tl.program_id(0)
    b = tl.program_id(1)
    cells = pid * BLOCK + tl.arange(0, BLOCK)
    on = cells < HW
    w = cell_weight(pad_ptr, b, cells // W, cells % W, s_b, s_h, s_w, on, STRIDE, MODE, cdt)
    tl.store(out_ptr + b.to(tl.int64) * HW + cells, w, mask=on)


def gaussian_heatmap(
    centers, size, sigma, stride, center, mask, merge, smoothing, dtype
) -> torch.Tensor:
    """[B,1,Hf,Wf] in ``dtype`` (1 launch)."""
    b, n = centers.shape[:2]
    hf, wf = size
    out = torch.empty(b, 1, hf, wf, dtype=dtype, device=centers.device)
    if isinstance(sigma, torch.Tensor):
        sig = sigma if sigma.dim() != 2 else sigma[..., None]
        sig = sig.expand(b, n, 2)
        sig_args = (sig, *sig.stride(), f64_bits(1.0))
    else:
        sig_args = (centers, 0, 0, 0, f64_bits(sigma))
    m = mask_view(mask)
    block, warps = elementwise_block(hf * wf)
    if b > 0:
        launch(
            _gaussian_heatmap_kernel,
            (max(triton.cdiv(hf * wf, block), 1), b),
            centers,
            sig_args[0],
            m if m is not None else centers,
            out,
            n,
            hf * wf,
            wf,
            centers.stride(0),
            centers.stride(1),
            centers.stride(2),
            *sig_args[1:4],
            m.stride(0) if m is not None else 0,
            m.stride(1) if m is not None else 0,
            sig_args[4],
            f64_bits(smoothing),
            STRIDE=stride,
            CELL=center == "cell",
            SIGMA_TENSOR=isinstance(sigma, torch.Tensor),
            HAS_MASK=m is not None,
            MERGE_MAX=merge == "max",
            BLOCK=block,
            num_warps=warps,
        )
    return out


# Padding modes of ``primitives.cell_weight`` for the user's padding arguments.
NO_PADDING, PADDING_MASK, VALID_BOX = 0, 1, 2


def padding_args(
    padding_mask: torch.Tensor | None, valid_box: torch.Tensor | None, dummy: torch.Tensor
) -> tuple[torch.Tensor, int, int, int, int]:
    """(tensor, stride_b, stride_h, stride_w, mode) for ``cell_weight`` (views only, no copy)."""
    if padding_mask is not None:
        pm = mask_view(padding_mask)
        if pm.dim() == 4:
            return pm, pm.stride(0), pm.stride(2), pm.stride(3), PADDING_MASK
        return pm, pm.stride(0), pm.stride(1), pm.stride(2), PADDING_MASK
    if valid_box is not None:
        return valid_box, valid_box.stride(0), 0, valid_box.stride(1), VALID_BOX
    return dummy, 0, 0, 0, NO_PADDING


def padding_weight(padding_mask, valid_box, size, stride, dtype) -> torch.Tensor:
    """W [B,1,Hf,Wf] in ``dtype`` (1 launch); one of padding_mask / valid_box is given."""
    src = padding_mask if padding_mask is not None else valid_box
    b = src.shape[0]
    hf, wf = size
    out = torch.empty(b, 1, hf, wf, dtype=dtype, device=src.device)
    pad, s_b, s_h, s_w, mode = padding_args(padding_mask, valid_box, src)
    block, warps = elementwise_block(hf * wf)
    if b > 0:
        launch(
            _padding_weight_kernel,
            (max(triton.cdiv(hf * wf, block), 1), b),
            pad,
            out,
            hf * wf,
            wf,
            s_b,
            s_h,
            s_w,
            STRIDE=stride,
            MODE=mode,
            BLOCK=block,
            num_warps=warps,
        )
    return out


@triton.jit
def _boundary_row(base, row, cols, H, W, s_h, s_w, STRIDE: tl.constexpr, KS: tl.constexpr, cdt):
    """For output cells (row, cols): how many of the KS cells (row, cols - KS // 2 ...
    cols + KS // 2) of M are object and how many background ([BLOCK] int32 each; 0 off the map).
    M(i, j) = (sum of the STRIDE x STRIDE block of mask pixels at (i, j) > STRIDE^2 / 2)."""
    half = as_dtype(0.5 * STRIDE * STRIDE, cdt)
    fg = tl.zeros(cols.shape, tl.int32)
    bg = tl.zeros(cols.shape, tl.int32)
    rows = tl.zeros(cols.shape, tl.int32) + row
    row_on = (rows >= 0) & (rows < H)
    for dx in range(0, KS):
        nj = cols + (dx - KS // 2)
        inside = row_on & (nj >= 0) & (nj < W)
        acc = tl.zeros(cols.shape, cdt)
        for py in range(0, STRIDE):
            line = base + tl.cast(row * STRIDE + py, tl.int64) * s_h  # (row: an int, interpreted)
            for px in range(0, STRIDE):
                ptr = line + (nj * STRIDE + px).to(tl.int64) * s_w
                acc += tl.load(ptr, mask=inside, other=0).to(cdt)
        is_fg = acc > half  # (a NaN block is background, as in the reference)
        fg += (inside & is_fg).to(tl.int32)
        bg += (inside & ~is_fg).to(tl.int32)
    return fg, bg


@triton.jit
def _boundary_kernel(
    m_ptr, out_ptr, H, W, s_b, s_h, s_w, STRIDE: tl.constexpr, KS: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """The boundary label of ROWS output rows x BLOCK columns of one image, in one pass:
    E(i, j) = dilate(M) - erode(M) over the KS x KS window clipped to the map = 1 where the window
    holds both an object and a background cell of M (``_boundary_row``).

    The program walks down its rows with a running count of object and background cells over the
    window's KS rows: each row of M enters once (its mask pixels read from memory once; the
    KS - 1 neighbouring columns again, from cache) and leaves once (recomputed, from cache), so
    the mask is read about once (plus KS - 1 halo rows per ROWS rows); M is never written. Sums
    in float32 (float64 masks in float64), exact for 0/1 masks."""
    cdt: tl.constexpr = tl.float64 if m_ptr.dtype.element_ty == tl.float64 else tl.float32
    R: tl.constexpr = KS // 2
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    i0 = tl.program_id(1) * ROWS
    b = tl.program_id(2).to(tl.int64)
    base = m_ptr + b * s_b
    fg_n = tl.zeros([BLOCK], tl.int32)
    bg_n = tl.zeros([BLOCK], tl.int32)
    for r in range(i0 - R, i0 + R):  # the window of row i0, but its last row
        fg, bg = _boundary_row(base, r, cols, H, W, s_h, s_w, STRIDE, KS, cdt)
        fg_n += fg
        bg_n += bg
    for i in range(i0, tl.minimum(i0 + ROWS, H)):
        fg, bg = _boundary_row(base, i + R, cols, H, W, s_h, s_w, STRIDE, KS, cdt)
        fg_n += fg
        bg_n += bg
        edge = (fg_n > 0) & (bg_n > 0)
        dst = out_ptr + (b * H + i) * W + cols
        tl.store(dst, edge.to(out_ptr.dtype.element_ty), mask=cols < W)
        fg, bg = _boundary_row(base, i - R, cols, H, W, s_h, s_w, STRIDE, KS, cdt)
        fg_n -= fg
        bg_n -= bg


def boundary_label(mask, stride: int, kernel_size: int, dtype: torch.dtype) -> torch.Tensor:
    """[B,1,H // stride,W // stride] in ``dtype`` from a [B,1,H,W] or [B,H,W] mask (1 launch)."""
    m = mask_view(mask)
    b, h, w = m.shape[0], m.shape[-2] // stride, m.shape[-1] // stride
    out = torch.empty(b, 1, h, w, dtype=dtype, device=mask.device)
    block = min(triton.next_power_of_2(max(w, 1)), BOUNDARY_BLOCK)
    if b > 0 and h * w > 0:
        launch(
            _boundary_kernel,
            (triton.cdiv(w, block), triton.cdiv(h, BOUNDARY_ROWS), b),
            m, out, h, w, m.stride(0), m.stride(-2), m.stride(-1),
            STRIDE=stride, KS=kernel_size, ROWS=BOUNDARY_ROWS, BLOCK=block,
            num_warps=4 if block >= 128 else 1,
        )  # fmt: skip
    return out
