"""CenterNet's ctdet training targets (``datasets/sample/ctdet.py``), for a whole batch on the
boxes' device: ``hm``, ``wh``, ``reg``, ``ind``, ``reg_mask`` (docs/centernet.md).

The torch backend evaluates the published per-box arithmetic vectorised over [B, N] (the same
float64 operations, correctly rounded square roots); the triton backend runs one kernel for the
batch (``kernels/centernet.py``). Neither synchronises with the device.
"""

from __future__ import annotations

import torch

from .backend import check_backend, compute_dtype, resolve_backend
from .labels import div_exact
from .validation import (
    INT_LIMIT,
    check_integer,
    check_positive_int,
    check_real,
    check_same_device,
    check_shape,
    check_tensor,
)

MIN_OVERLAP = 0.7  # gaussian_radius(det_size, min_overlap=0.7)
TARGET_KEYS = ("hm", "wh", "reg", "ind", "reg_mask")
# Target generation evaluates the Gaussians of at most this many (box, cell) pairs at once.
_TARGET_CHUNK = 1 << 22


# output_size: H and W in [1, 65536] (SPEC 8), and H * W <= 2^30: the kernels index a map plane
# with int32 (cell and tile offsets up to H * W plus a block).
AREA_LIMIT = 2**30


def check_output_size(size: tuple[int, int], given: object) -> None:
    """(H, W) with H, W <= 65536 and H * W <= 2^30 (``given``: the value the user passed)."""
    h, w = size
    if h > INT_LIMIT or w > INT_LIMIT or h * w > AREA_LIMIT:
        raise ValueError(
            f"output_size: expected (H, W) with H and W in [1, {INT_LIMIT}] and H * W <= 2^30, "
            f"got {given!r}"
        )


def check_box_inputs(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    box_mask: torch.Tensor | None,
    num_classes: int,
    output_size: tuple[int, int],
    down_ratio: int,
) -> tuple[int, int]:
    """boxes [B,N,4] real, labels [B,N] integer, box_mask [B,N] or None; returns (H, W)."""
    check_positive_int("num_classes", num_classes)
    if (
        not isinstance(output_size, (tuple, list, torch.Size))
        or len(output_size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in output_size)
    ):
        raise ValueError(f"output_size: expected (H, W) of two positive ints, got {output_size!r}")
    check_output_size((int(output_size[0]), int(output_size[1])), output_size)
    check_positive_int("down_ratio", down_ratio)
    check_tensor("boxes", boxes)
    check_real("boxes", boxes)
    check_shape("boxes", boxes, [None, None, 4], "[B, N, 4] (x1, y1, x2, y2)")
    b, n = boxes.shape[:2]
    check_tensor("labels", labels)
    check_integer("labels", labels)
    check_shape("labels", labels, [b, n], f"[{b}, {n}]")
    if box_mask is not None:
        check_tensor("box_mask", box_mask)
        check_real("box_mask", box_mask)
        check_shape("box_mask", box_mask, [b, n], f"[{b}, {n}]")
    check_same_device({"boxes": boxes, "labels": labels, "box_mask": box_mask})
    return int(output_size[0]), int(output_size[1])


def _sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float64 sqrt. torch's CPU kernel may be off by an ulp (vectorised SLEEF),
    which matters here: r3 = (b3 + sqrt(.)) / 2 cancels, and int(r3) can change. numpy's sqrt
    (the hardware instruction) is exact, and so is CUDA's; a CPU tensor shares memory with numpy.
    """
    if x.device.type == "cpu":
        import numpy as np

        return torch.from_numpy(np.sqrt(x.contiguous().numpy()))
    return torch.sqrt(x)


def gaussian_radius_tensor(height: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """CenterNet's ``gaussian_radius((height, width), 0.7)`` elementwise, float64 in and out.

    The same operations in the same order as the published Python, and correctly rounded square
    roots like ``math.sqrt``, so the same float64 result.
    """
    ov = MIN_OVERLAP
    b1 = height + width
    c1 = width * height * (1 - ov) / (1 + ov)
    r1 = (b1 + _sqrt_rn(b1 * b1 - (4 * 1) * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - ov) * width * height
    r2 = (b2 + _sqrt_rn(b2 * b2 - (4 * 4) * c2)) / 2
    a3 = 4 * ov
    b3 = -2 * ov * (height + width)
    c3 = (ov - 1) * width * height
    r3 = (b3 + _sqrt_rn(b3 * b3 - (4 * a3) * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def box_geometry(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    box_mask: torch.Tensor | None,
    num_classes: int,
    size: tuple[int, int],
    down_ratio: int,
    cdt: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Per-box quantities of ctdet.py, vectorised over [B, N] (torch backend)."""
    h_map, w_map = size
    bx = div_exact(boxes.to(cdt), down_ratio)
    x1 = bx[..., 0].clamp(0, w_map - 1)
    y1 = bx[..., 1].clamp(0, h_map - 1)
    x2 = bx[..., 2].clamp(0, w_map - 1)
    y2 = bx[..., 3].clamp(0, h_map - 1)
    h, w = y2 - y1, x2 - x1
    valid = (h > 0) & (w > 0) & (labels >= 0) & (labels < num_classes)
    if box_mask is not None:
        valid = valid & (box_mask != 0)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    cxi, cyi = cx.to(torch.int32).long(), cy.to(torch.int32).long()
    one = torch.ones((), dtype=torch.float64, device=boxes.device)
    hc = torch.where(valid, torch.ceil(h).double(), one)
    wc = torch.where(valid, torch.ceil(w).double(), one)
    radius = gaussian_radius_tensor(hc, wc).trunc().clamp_min(0).long()
    return dict(valid=valid, cx=cx, cy=cy, cxi=cxi, cyi=cyi, w=w, h=h, radius=radius)


def _targets_torch(boxes, labels, box_mask, num_classes, size, down_ratio):
    cdt = compute_dtype(boxes.dtype)
    dev = boxes.device
    h_map, w_map = size
    bsz, n = boxes.shape[:2]
    geo = box_geometry(boxes, labels, box_mask, num_classes, size, down_ratio, cdt)
    valid, radius = geo["valid"], geo["radius"]
    zero = torch.zeros((), dtype=cdt, device=dev)
    wh = torch.where(valid[..., None], torch.stack([geo["w"], geo["h"]], -1), zero)
    reg = torch.stack([geo["cx"] - geo["cxi"].to(cdt), geo["cy"] - geo["cyi"].to(cdt)], -1)
    reg = torch.where(valid[..., None], reg, zero)
    ind = torch.where(valid, geo["cyi"] * w_map + geo["cxi"], 0)
    reg_mask = valid.to(torch.uint8)

    # hm: max over boxes of the (separable) Gaussian windows, merged per class with amax. The
    # Gaussian of a box is exp(-(dx^2 + dy^2) / (2 sigma^2)), sigma = (2r + 1) / 6, on the cells
    # with |dx|, |dy| <= r (float64, rounded into hm as ctdet.py does). CenterNet's "values under
    # eps * max set to 0" never fires: the exponent is at most 36 r^2 / (2r + 1)^2 < 9.
    sig = (2 * radius + 1).double() / 6
    two_ss = 2 * sig * sig
    rows = torch.arange(h_map, device=dev)
    cols = torch.arange(w_map, device=dev)
    dy = rows - geo["cyi"][..., None]  # [B, N, H]
    dx = cols - geo["cxi"][..., None]  # [B, N, W]
    r = torch.where(valid, radius, -1)[..., None]  # invalid boxes: an empty window
    gy = torch.where(dy.abs() <= r, torch.exp(-(dy * dy).double() / two_ss[..., None]), 0.0)
    gx = torch.where(dx.abs() <= r, torch.exp(-(dx * dx).double() / two_ss[..., None]), 0.0)
    cls = torch.where(valid, labels, 0).long()
    hm = torch.zeros(bsz, num_classes, h_map * w_map, dtype=cdt, device=dev)
    chunk = max(1, _TARGET_CHUNK // max(1, bsz * h_map * w_map))
    for s in range(0, n, chunk):  # one chunk unless B * N * H * W is large
        g = (gy[:, s : s + chunk, :, None] * gx[:, s : s + chunk, None, :]).to(cdt)
        k = g.shape[1]
        g = g.view(bsz, k, h_map * w_map)
        idx = cls[:, s : s + chunk, None].expand(bsz, k, h_map * w_map)
        hm.scatter_reduce_(1, idx, g, reduce="amax", include_self=True)
    hm = hm.view(bsz, num_classes, h_map, w_map)
    return {"hm": hm, "wh": wh, "reg": reg, "ind": ind, "reg_mask": reg_mask}


@torch.no_grad()
def centernet_targets(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    box_mask: torch.Tensor | None = None,
    *,
    num_classes: int,
    output_size: tuple[int, int],
    down_ratio: int = 4,
    backend: str = "auto",
) -> dict[str, torch.Tensor]:
    """CenterNet's ctdet training targets for a whole batch, on the boxes' device.

    boxes [B,N,4] (x1, y1, x2, y2) input pixels, labels [B,N] class ids, box_mask [B,N] (None: all
    boxes exist). Each box is divided by ``down_ratio``, clipped to [0, W-1] x [0, H-1] and kept
    when its height and width are > 0 (and its label lies in [0, num_classes)); its Gaussian
    (radius ``max(0, int(gaussian_radius((ceil h, ceil w), 0.7)))``, sigma = (2r+1)/6) is
    max-merged into ``hm`` at the integer centre. Returns ``hm`` [B,num_classes,H,W], ``wh`` [B,N,2]
    = (w, h), ``reg`` [B,N,2] = centre - integer centre, ``ind`` [B,N] int64 = cy * W + cx and
    ``reg_mask`` [B,N] uint8; zeros for dropped boxes. Float outputs are float32 (float64 for
    float64 boxes). No gradient, no host sync.
    """
    size = check_box_inputs(boxes, labels, box_mask, num_classes, output_size, down_ratio)
    backend = check_backend(backend)
    return build_targets(boxes, labels, box_mask, num_classes, size, down_ratio, backend)


def build_targets(
    boxes: torch.Tensor,
    labels: torch.Tensor,
    box_mask: torch.Tensor | None,
    num_classes: int,
    size: tuple[int, int],
    down_ratio: int,
    backend: str,
) -> dict[str, torch.Tensor]:
    """:func:`centernet_targets` on inputs already checked."""
    if resolve_backend(backend, boxes.device) == "triton":
        from .triton_centernet import centernet_targets_triton

        return centernet_targets_triton(boxes, labels, box_mask, num_classes, size, down_ratio)
    return _targets_torch(boxes, labels, box_mask, num_classes, size, down_ratio)
