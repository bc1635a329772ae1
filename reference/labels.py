"""Reference label generation: Gaussian heatmaps, offset targets and padding weights.

Conventions (``docs/spec.md`` section 3.2): grid coordinates are ``u = x / stride``, ``v = y / stride``;
cell (i, j) sits at grid coordinate (j, i).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_heatmap(
    centers: torch.Tensor,
    size: tuple[int, int],
    *,
    sigma: float | torch.Tensor = 1.5,
    stride: int = 4,
    center: str = "cell",
    mask: torch.Tensor | None = None,
    merge: str = "max",
    dtype: torch.dtype | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Y[b, 0, i, j] = merge_n exp(-(i - cv_n)^2 / (2 sy_n^2) - (j - cu_n)^2 / (2 sx_n^2)).

    centers [B, N, 2] as (x, y) input pixels; sigma a float, [B, N] or [B, N, 2] (sx, sy) in grid
    units; (cu, cv) = floor(u, v) for center="cell", (u, v) for center="exact". Returns [B, 1, Hf, Wf],
    smoothed to Y (1 - 2 e) + e for label_smoothing e.
    """
    hf, wf = size
    dtype = dtype or (centers.dtype if centers.is_floating_point() else torch.float32)
    centers = centers.to(dtype)
    b, n, _ = centers.shape
    uv = centers / stride
    if center == "cell":
        uv = torch.floor(uv)
    sig = torch.as_tensor(sigma, dtype=dtype, device=centers.device)
    if sig.dim() == 0:
        sig = sig.expand(b, n, 2)
    elif sig.dim() == 2:
        sig = sig[..., None].expand(b, n, 2)
    rows = torch.arange(hf, dtype=dtype, device=centers.device).view(1, 1, hf, 1)
    cols = torch.arange(wf, dtype=dtype, device=centers.device).view(1, 1, 1, wf)
    cu = uv[..., 0].view(b, n, 1, 1)
    cv = uv[..., 1].view(b, n, 1, 1)
    sx = sig[..., 0].reshape(b, n, 1, 1)
    sy = sig[..., 1].reshape(b, n, 1, 1)
    y = torch.exp(-((rows - cv) ** 2) / (2 * sy**2) - (cols - cu) ** 2 / (2 * sx**2))  # [B,N,Hf,Wf]
    if mask is not None:
        y = y * mask.to(dtype).view(b, n, 1, 1)
    if merge == "max":
        out = y.amax(dim=1, keepdim=True) if n > 0 else y.new_zeros(b, 1, hf, wf)
    else:
        out = y.sum(dim=1, keepdim=True)
    return out * (1 - 2 * label_smoothing) + label_smoothing if label_smoothing else out


def offset_target(centers: torch.Tensor, *, stride: int = 4) -> torch.Tensor:
    """(u - floor(u) - 0.5, v - floor(v) - 0.5) for centers [..., 2] in input pixels."""
    uv = centers / stride
    return uv - torch.floor(uv) - 0.5


def valid_box_padding_mask(valid_box: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The full-resolution padding mask [B, 1, H, W] that ``valid_box`` [B, 4] stands for.

    Pixel p covers [p, p + 1); its image fraction along x is clamp(min(p+1, x1) - max(p, x0), 0, 1),
    likewise along y, and its padding value is 1 - fx * fy.
    """
    h, w = size
    box = valid_box
    px = torch.arange(w, dtype=box.dtype, device=box.device).view(1, w)
    py = torch.arange(h, dtype=box.dtype, device=box.device).view(1, h)
    fx = (torch.minimum(px + 1, box[:, 2:3]) - torch.maximum(px, box[:, 0:1])).clamp(0, 1)
    fy = (torch.minimum(py + 1, box[:, 3:4]) - torch.maximum(py, box[:, 1:2])).clamp(0, 1)
    return (1 - fy[:, None, :, None] * fx[:, None, None, :]).to(box.dtype)


def padding_weight(
    padding_mask: torch.Tensor | None = None,
    valid_box: torch.Tensor | None = None,
    *,
    size: tuple[int, int],
    stride: int = 4,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """W = 1 - AvgPool(kernel=stride, stride=stride)(padding_mask) -> [B, 1, Hf, Wf].

    ``size`` is (Hf, Wf). ``valid_box`` stands for the mask of ``valid_box_padding_mask``. With
    neither given, W is ones of shape [1, 1, Hf, Wf].
    """
    hf, wf = size
    if valid_box is not None:
        dtype = valid_box.dtype if valid_box.is_floating_point() else dtype
        padding_mask = valid_box_padding_mask(valid_box.to(dtype), (hf * stride, wf * stride))
    if padding_mask is None:
        return torch.ones(1, 1, hf, wf, dtype=dtype)
    if padding_mask.dim() == 3:
        padding_mask = padding_mask[:, None]
    m = padding_mask.to(dtype)
    return 1 - F.avg_pool2d(m, kernel_size=stride, stride=stride)


def boundary_label(
    mask: torch.Tensor, *, stride: int = 4, kernel_size: int = 3, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The object boundary at 1/stride (the design document's order, which keeps thin edges):
    M = (AvgPool_{stride, stride}(mask) > 0.5), then the morphological gradient
    dilate_k(M) - erode_k(M) with a k x k window (k = kernel_size, odd), clipped to the map.

    mask [B,1,H,W] or [B,H,W] of any real dtype -> [B,1,H // stride, W // stride] of 0 and 1.
    """
    m = mask if mask.dim() == 4 else mask[:, None]
    m = F.avg_pool2d(m.to(torch.float64), stride, stride) > 0.5
    m = m.to(torch.float64)
    pad = kernel_size // 2
    dilated = F.max_pool2d(m, kernel_size, 1, pad)  # max_pool2d pads with -inf: outside ignored
    eroded = -F.max_pool2d(-m, kernel_size, 1, pad)
    return (dilated - eroded).to(dtype or torch.float32)
