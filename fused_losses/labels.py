"""Label generation: Gaussian heatmaps, offset targets and padding weights (docs/spec.md 3.2, 4).

The torch backend never materialises more than it must: a Gaussian label is separable,
``Y = gy[i] * gx[j]``, and the padding weight of a ``valid_box`` is separable too,
``W = cy[i] * cx[j]`` with ``cx[j] = |[j s, (j+1) s) ∩ [x0, x1)| / s``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .backend import BACKENDS, check_backend, resolve_backend
from .validation import (
    check_choice,
    check_label_smoothing,
    check_padding,
    check_positive_int,
    check_real,
    check_same_device,
    check_shape,
    check_sigma,
    check_size,
    check_tensor,
    shape_str,
)

CENTERS = ("cell", "exact")
MERGES = ("max", "sum")


def label_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any coordinate input is float64, else float32."""
    return (
        torch.float64
        if any(t is not None and t.dtype == torch.float64 for t in tensors)
        else torch.float32
    )


def div_exact(x: torch.Tensor, d: int | float) -> torch.Tensor:
    """``x / d`` correctly rounded on every device. On CUDA, PyTorch divides by a Python number
    as a multiplication by its reciprocal (``x / 3`` can then differ from the CPU by an ulp, and
    ``floor`` of a cell coordinate by a whole cell); a 0-dim device tensor divisor divides."""
    if x.device.type == "cpu":
        return x / d
    return x / torch.full((), d, dtype=x.dtype, device=x.device)


def grid_coords(centers: torch.Tensor, stride: int, dtype: torch.dtype) -> torch.Tensor:
    """(u, v) = (x, y) / stride in the coordinates' own precision: float64 when ``centers`` is
    float64 (floor(u) and the offset target must not see a float64 coordinate rounded to float32
    when the loss computes in float32), else ``dtype``. Cast derived values to ``dtype``."""
    return div_exact(centers.to(torch.float64 if centers.dtype == torch.float64 else dtype), stride)


def gaussian_factors(
    centers: torch.Tensor,
    size: tuple[int, int],
    sigma: float | torch.Tensor,
    stride: int,
    center: str,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column factors of Y_n = gy[b,n,i] * gx[b,n,j] for centers [B,N,2] (x, y pixels).

    gy = exp(-(i - cv)^2 / (2 sy^2)), gx = exp(-(j - cu)^2 / (2 sx^2)), (cu, cv) = floor(u, v) for
    center="cell" and (u, v) for "exact". Returns ([B,N,Hf], [B,N,Wf]).
    """
    hf, wf = size
    uv = grid_coords(centers, stride, dtype)
    if center == "cell":
        uv = torch.floor(uv)
    uv = uv.to(dtype)
    if isinstance(sigma, torch.Tensor):
        sig = sigma.to(device=centers.device, dtype=dtype)
        if sig.dim() == 3:
            sx, sy = sig[..., 0:1], sig[..., 1:2]  # [B,N,1]
        else:
            sx = sy = sig[..., None] if sig.dim() == 2 else sig
    else:
        sx = sy = float(sigma)  # a Python scalar: no host-to-device copy
    rows = torch.arange(hf, dtype=dtype, device=centers.device)
    cols = torch.arange(wf, dtype=dtype, device=centers.device)
    gy = torch.exp(-((rows - uv[..., 1:2]) ** 2) / (2 * sy**2))
    gx = torch.exp(-((cols - uv[..., 0:1]) ** 2) / (2 * sx**2))
    return gy, gx


def window_radius(sigma: float, threshold: float, size: tuple[int, int]) -> int:
    """A radius R (cells) such that every cell with Y > threshold (or >=) lies within R of the
    centre's cell, for a Gaussian of width ``sigma`` centred anywhere in that cell."""
    if threshold <= 0:
        return max(size)
    r = sigma * math.sqrt(-2 * math.log(threshold)) if threshold < 1 else 0.0  # 1/t overflows
    return math.ceil(r) + 1


def object_windows(
    centers: torch.Tensor, size: tuple[int, int], radius: int, stride: int, dtype: torch.dtype
) -> torch.Tensor:
    """Flat cell indices [B,N,KH*KW] of a KH x KW window around each centre's cell.

    KH = min(2R + 1, Hf), likewise KW; the window is shifted to lie on the grid, so its cells are
    distinct and it covers every cell within R of the centre's cell that is on the grid.
    """
    hf, wf = size
    kh, kw = min(2 * radius + 1, hf), min(2 * radius + 1, wf)
    cell = torch.floor(grid_coords(centers, stride, dtype)).nan_to_num(0.0)  # NaN: any window
    top = (cell[..., 1] - radius).clamp(0, hf - kh).long()
    left = (cell[..., 0] - radius).clamp(0, wf - kw).long()
    rows = top[..., None] + torch.arange(kh, device=centers.device)
    cols = left[..., None] + torch.arange(kw, device=centers.device)
    return (rows[..., :, None] * wf + cols[..., None, :]).flatten(-2)


def box_factors(
    valid_box: torch.Tensor, size: tuple[int, int], stride: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column image fractions ([B,Hf], [B,Wf]) of the cells under ``valid_box`` [B,4]."""
    hf, wf = size
    box = valid_box.to(dtype)
    lo_y = torch.arange(hf, dtype=dtype, device=box.device) * stride
    lo_x = torch.arange(wf, dtype=dtype, device=box.device) * stride
    cy = (torch.minimum(lo_y + stride, box[:, 3:4]) - torch.maximum(lo_y, box[:, 1:2])).clamp(min=0)
    cx = (torch.minimum(lo_x + stride, box[:, 2:3]) - torch.maximum(lo_x, box[:, 0:1])).clamp(min=0)
    return div_exact(cy, stride), div_exact(cx, stride)


def weight_from_padding(
    padding_mask: torch.Tensor | None,
    valid_box: torch.Tensor | None,
    size: tuple[int, int],
    stride: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """W [B,1,Hf,Wf], or None when no padding is given (W = 1 everywhere)."""
    if valid_box is not None:
        cy, cx = box_factors(valid_box, size, stride, dtype)
        return (cy[:, :, None] * cx[:, None, :])[:, None]
    if padding_mask is not None:
        m = padding_mask if padding_mask.dim() == 4 else padding_mask[:, None]
        return 1 - F.avg_pool2d(m.to(dtype), kernel_size=stride, stride=stride)
    return None


def padding_weight(
    padding_mask: torch.Tensor | None = None,
    valid_box: torch.Tensor | None = None,
    *,
    size: tuple[int, int],
    stride: int = 4,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-cell image weight W = 1 - AvgPool(kernel=stride, stride=stride)(padding_mask).

    padding_mask [B,1,H,W] or [B,H,W] (1 = padding; bool, integer or float), or valid_box [B,4]
    (x0, y0, x1, y1) pixels, whose W is the fraction of each cell inside the box, computed without a
    full-resolution mask. ``size`` = (Hf, Wf), H = Hf * stride. Returns W [B,1,Hf,Wf] (float32, or
    float64 for float64 inputs); ones [1,1,Hf,Wf] when neither is given.
    """
    stride = check_positive_int("stride", stride)
    hf, wf = check_size("size", size)
    check_choice("backend", backend, BACKENDS)
    check_padding(padding_mask, valid_box, None, (hf, wf), stride)
    src = padding_mask if padding_mask is not None else valid_box
    dtype = label_dtype(src)
    if src is None:
        return torch.ones(1, 1, hf, wf, dtype=dtype)
    if resolve_backend(backend, src.device) == "triton":
        from .triton_gap import padding_weight_triton

        return padding_weight_triton(padding_mask, valid_box, (hf, wf), stride, dtype)
    return weight_from_padding(padding_mask, valid_box, (hf, wf), stride, dtype)


def boundary_label(
    mask: torch.Tensor,
    *,
    stride: int = 4,
    kernel_size: int = 3,
    dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> torch.Tensor:
    """The object boundary at 1/stride, in the design document's order (which keeps thin edges):
    M = (AvgPool(kernel=stride, stride=stride)(mask) > 0.5), then the morphological gradient
    E = dilate_k(M) - erode_k(M) over a k x k window (k = ``kernel_size``, odd) clipped to the map.

    mask [B,1,H,W] or [B,H,W] (bool, integer or float; 1 = object), H, W >= stride. Returns
    [B,1,H // stride,W // stride] of 0 and 1 in ``dtype`` (pixels past the last whole block are
    ignored, as by AvgPool2d). The triton backend is one launch that never writes M.
    """
    check_tensor("mask", mask)
    check_real("mask", mask)
    if mask.dim() not in (3, 4) or (mask.dim() == 4 and mask.shape[1] != 1):
        raise ValueError(f"mask: expected [B, 1, H, W] or [B, H, W], got {shape_str(mask)}")
    stride = check_positive_int("stride", stride)
    kernel_size = check_positive_int("kernel_size", kernel_size, limit=255)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size: expected an odd int, got {kernel_size}")
    if not isinstance(dtype, torch.dtype) or dtype.is_complex:
        raise TypeError(f"dtype: expected a real torch.dtype, got {dtype!r}")
    h, w = mask.shape[-2:]
    if h < stride or w < stride:
        raise ValueError(
            f"mask: expected H and W of at least stride = {stride}, got {shape_str(mask)}"
        )
    if resolve_backend(check_backend(backend), mask.device) == "triton":
        from .triton_gap import boundary_label_triton

        return boundary_label_triton(mask, stride, kernel_size, dtype)
    b, hf, wf = mask.shape[0], h // stride, w // stride
    cdt = torch.float64 if mask.dtype == torch.float64 else torch.float32
    m = mask.reshape(b, h, w)[:, : hf * stride, : wf * stride].to(cdt)
    fg = (m.reshape(b, 1, hf, stride, wf, stride).sum(dim=(3, 5)) > 0.5 * stride * stride).to(cdt)
    pad = kernel_size // 2
    dilated = F.max_pool2d(fg, kernel_size, 1, pad)  # padded with -inf: outside the map ignored
    eroded = -F.max_pool2d(-fg, kernel_size, 1, pad)
    return (dilated - eroded).to(dtype)


def gaussian_heatmap(
    centers: torch.Tensor,
    size: tuple[int, int],
    *,
    sigma: float | torch.Tensor = 1.5,
    stride: int = 4,
    center: str = "cell",
    mask: torch.Tensor | None = None,
    merge: str = "max",
    label_smoothing: float = 0.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Y[b,0,i,j] = merge_n exp(-(i - cv_n)^2 / (2 sy_n^2) - (j - cu_n)^2 / (2 sx_n^2)).

    centers [B,N,2] (x, y) input pixels, (u, v) = (x, y) / stride; (cu, cv) = floor(u, v) for
    center="cell" (the centre's cell gets 1), (u, v) for "exact". sigma: float, [B,N] or [B,N,2]
    (sx, sy) in grid units. mask [B,N] marks existing centres; merge "max" or "sum";
    ``label_smoothing`` e returns Y (1 - 2 e) + e (e in [0, 0.5]).
    Returns [B,1,Hf,Wf] (float32, float64 for float64 centres).
    """
    check_tensor("centers", centers)
    check_real("centers", centers)
    check_shape("centers", centers, [None, None, 2], "[B, N, 2]")
    b, n = centers.shape[:2]
    hf, wf = check_size("size", size)
    stride = check_positive_int("stride", stride)
    check_choice("center", center, CENTERS)
    check_choice("merge", merge, MERGES)
    e = check_label_smoothing("label_smoothing", label_smoothing)
    named: dict[str, torch.Tensor | None] = {"centers": centers}
    if isinstance(sigma, torch.Tensor):
        check_real("sigma", sigma)
        if sigma.dim() == 3:
            check_shape("sigma", sigma, [b, n, 2], f"a float, [{b}, {n}] or [{b}, {n}, 2]")
        elif sigma.dim() != 0:
            check_shape("sigma", sigma, [b, n], f"a float, [{b}, {n}] or [{b}, {n}, 2]")
        named["sigma"] = sigma
    else:
        sigma = check_sigma("sigma", sigma)
    if mask is not None:
        check_tensor("mask", mask)
        check_real("mask", mask)
        check_shape("mask", mask, [b, n], f"[{b}, {n}]")
        named["mask"] = mask
    check_same_device(named)
    dtype = label_dtype(centers)
    if resolve_backend(backend, centers.device) == "triton":
        from .triton_gap import gaussian_heatmap_triton

        args = (centers, (hf, wf), sigma, stride, center, mask, merge, e, dtype)
        return gaussian_heatmap_triton(*args)
    if n == 0:
        return torch.full((b, 1, hf, wf), e, dtype=dtype, device=centers.device)
    gy, gx = gaussian_factors(centers, (hf, wf), sigma, stride, center, dtype)
    y = gy[..., :, None] * gx[..., None, :]
    if mask is not None:
        y = y * mask.to(dtype)[..., None, None]
    y = y.amax(dim=1, keepdim=True) if merge == "max" else y.sum(dim=1, keepdim=True)
    return y * (1 - 2 * e) + e if e else y


def offset_target(centers: torch.Tensor, stride: int, dtype: torch.dtype) -> torch.Tensor:
    """(u - floor(u) - 0.5, v - floor(v) - 0.5) for centers [..., 2] (x, y pixels)."""
    uv = grid_coords(centers, stride, dtype)
    return (uv - torch.floor(uv) - 0.5).to(dtype)
