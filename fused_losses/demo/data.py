"""Synthetic slider captchas for the demo, generated batch by batch on the fly.

Vectorised torch ops draw every random number on the CPU from a seeded ``torch.Generator`` (so the
images do not depend on the device they are rendered on). Each image has a textured colour
background (smooth noise, a gradient, stripes and soft blobs), a rotated jigsaw-shaped *gap*
(darkened, with a bright rim), the matching *piece* cut from the background at the gap position and
pasted near the left edge, and 1 to 3 *confusers*: fainter fake gaps of a different shape (circles
or plain rounded squares). The content is letterboxed into a 256x512 canvas; the padding mask
(1 = padding) goes both to the network (4th input channel) and to the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

H, W = 256, 512  # canvas (input) size
STRIDE = 4  # output stride of the network and of the loss labels
MAX_CONFUSERS = 3


@dataclass
class Batch:
    """One batch of synthetic captchas and their targets (all tensors on the same device)."""

    image: torch.Tensor  # [B,3,H,W] in [0,1]
    padding_mask: torch.Tensor  # [B,1,H,W] float, 1 = padding
    valid_box: torch.Tensor  # [B,4] (x0, y0, x1, y1) pixels
    gap_center: torch.Tensor  # [B,2] (x, y) pixels
    piece_center: torch.Tensor  # [B,2]
    gap_angle: torch.Tensor  # [B] radians
    confusers: torch.Tensor  # [B,K,2]
    confuser_mask: torch.Tensor  # [B,K] bool


def _uniform(g: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
    """Uniform samples in [lo, hi) drawn on the CPU from ``g`` (device-independent randomness)."""
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def _rounded_square_sdf(
    px: torch.Tensor, py: torch.Tensor, half: torch.Tensor, r: float
) -> torch.Tensor:
    """Signed distance to a square of half-size ``half`` with corner radius ``r`` (negative inside)."""
    qx = px.abs() - (half - r)
    qy = py.abs() - (half - r)
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    inside = torch.maximum(qx, qy).clamp(max=0)
    return outside + inside - r


def _shape_sdf(
    xs: torch.Tensor,
    ys: torch.Tensor,
    center: torch.Tensor,
    angle: torch.Tensor,
    half: torch.Tensor,
    kind: torch.Tensor,
) -> torch.Tensor:
    """Signed distance field of shapes at pixel coordinates ``xs``, ``ys`` ([B,N,P,P] each).

    center [B,N,2] pixels, angle [B,N] radians, half [B,N] half-size in pixels, kind [B,N] long:
    0 = jigsaw piece (rounded square with knobs on the right and top edges), 1 = plain rounded
    square, 2 = circle.
    """
    dx = xs - center[..., 0, None, None]
    dy = ys - center[..., 1, None, None]
    c = torch.cos(angle)[..., None, None]
    s = torch.sin(angle)[..., None, None]
    # rotate the pixel offsets by -angle into the shape frame
    px = c * dx + s * dy
    py = c * dy - s * dx
    h = half[..., None, None]
    square = _rounded_square_sdf(px, py, h, 5.0)
    knob_r = 0.38 * h
    knob_right = torch.sqrt((px - h) ** 2 + py**2) - knob_r
    knob_top = torch.sqrt(px**2 + (py + h) ** 2) - knob_r
    jigsaw = torch.minimum(square, torch.minimum(knob_right, knob_top))
    circle = torch.sqrt(px**2 + py**2) - 1.1 * h
    k = kind[..., None, None]
    return torch.where(k == 0, jigsaw, torch.where(k == 1, square, circle))


def _background(g: torch.Generator, b: int, device: torch.device) -> torch.Tensor:
    """Textured colour backgrounds [B,3,H,W]: smooth noise, gradient, stripes, blobs and grain.

    Everything but the grain is drawn at 1/4 resolution and upsampled (it is smooth anyway).
    """
    h4, w4 = H // 4, W // 4
    low = _uniform(g, (b, 3, 3, 5), 0.15, 0.85).to(device)
    img = F.interpolate(low, size=(h4, w4), mode="bicubic", align_corners=False)
    mid = _uniform(g, (b, 3, 12, 24), -0.2, 0.2).to(device)
    img = img + F.interpolate(mid, size=(h4, w4), mode="bicubic", align_corners=False)
    ys = torch.arange(h4, device=device, dtype=torch.float32).view(1, 1, h4, 1)
    xs = torch.arange(w4, device=device, dtype=torch.float32).view(1, 1, 1, w4)
    # stripes with a random direction, frequency and colour
    theta = _uniform(g, (b, 1, 1, 1), 0.0, math.pi).to(device)
    freq = _uniform(g, (b, 1, 1, 1), 0.1, 0.5).to(device)
    amp = _uniform(g, (b, 3, 1, 1), -0.1, 0.1).to(device)
    img = img + amp * torch.sin(freq * (xs * torch.cos(theta) + ys * torch.sin(theta)))
    # soft blobs
    nb = 6
    bc = torch.stack([_uniform(g, (b, nb), 0, w4), _uniform(g, (b, nb), 0, h4)], -1).to(device)
    br = _uniform(g, (b, nb, 1, 1), 2.0, 10.0).to(device)
    d2 = (xs - bc[..., 0, None, None]) ** 2 + (ys - bc[..., 1, None, None]) ** 2  # [B,nb,h4,w4]
    col = _uniform(g, (b, nb, 3), -0.35, 0.35).to(device)
    img = img + torch.einsum("bnhw,bnc->bchw", torch.exp(-d2 / (2 * br**2)), col)
    # sensor grain at 1/2 resolution, then everything up to full resolution
    img = F.interpolate(img, size=(H // 2, W // 2), mode="bilinear", align_corners=False)
    img = img + 0.03 * torch.randn((b, 3, H // 2, W // 2), generator=g).to(device)
    img = F.interpolate(img, size=(H, W), mode="bilinear", align_corners=False)
    return img.clamp(0, 1)


PATCH = 64  # side of the square patch each shape is rendered in (shapes span < 64 px)


def _patch_index(
    center: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel grid of the PATCH x PATCH patch around each centre [B,N,2].

    Returns xs, ys [B,N,P,P] (pixel coordinates), the flat canvas index [B,N,P,P] (clamped) and a
    float mask [B,N,P,P] of the pixels that lie on the canvas.
    """
    ar = torch.arange(PATCH, device=center.device, dtype=center.dtype)
    ox = torch.floor(center[..., 0]) - PATCH // 2
    oy = torch.floor(center[..., 1]) - PATCH // 2
    xs = (ox[..., None] + ar)[..., None, :].expand(*ox.shape, PATCH, PATCH)
    ys = (oy[..., None] + ar)[..., :, None].expand(*oy.shape, PATCH, PATCH)
    on = ((xs >= 0) & (xs < W) & (ys >= 0) & (ys < H)).float()
    idx = (ys.clamp(0, H - 1) * W + xs.clamp(0, W - 1)).long()
    return xs, ys, idx, on


def make_batch(g: torch.Generator, b: int, device: torch.device) -> Batch:
    """Generate ``b`` synthetic slider captchas on ``device`` (randomness from the CPU generator)."""
    # letterbox: the content occupies a random box inside the canvas, the rest is padding
    cw = torch.floor(_uniform(g, (b,), 400, W + 1))
    ch = torch.floor(_uniform(g, (b,), 200, H + 1))
    x0 = torch.floor(_uniform(g, (b,), 0, 1) * (W - cw + 1))
    y0 = torch.floor(_uniform(g, (b,), 0, 1) * (H - ch + 1))
    valid_box = torch.stack([x0, y0, x0 + cw, y0 + ch], -1)

    # gap and confusers share the x range right of the piece, one per slot so they do not overlap
    n_slots = 1 + MAX_CONFUSERS
    lo = x0 + 100
    slot_w = (x0 + cw - 30 - lo) / n_slots
    slots = torch.argsort(torch.rand((b, n_slots), generator=g), dim=1)  # slot of each object
    jitter = _uniform(g, (b, n_slots), 0.35, 0.65)
    obj_x = lo[:, None] + slot_w[:, None] * (slots + jitter)
    obj_y = y0[:, None] + 32 + _uniform(g, (b, n_slots), 0, 1) * (ch[:, None] - 64)
    obj_c = torch.stack([obj_x, obj_y], -1)  # [B,1+K,2]; object 0 is the gap
    n_conf = torch.randint(1, MAX_CONFUSERS + 1, (b,), generator=g)
    confuser_mask = torch.arange(MAX_CONFUSERS)[None] < n_conf[:, None]
    gap_c = obj_c[:, 0]
    gap_angle = _uniform(g, (b,), -0.3, 0.3)
    half = _uniform(g, (b,), 16.0, 20.0)  # jigsaw half-size: ~40-50 px with the knobs
    # the piece sits at the gap's height near the left edge, an integer number of pixels away
    shift = torch.round(gap_c[:, 0] - x0 - _uniform(g, (b,), 25, 60))
    piece_c = torch.stack([gap_c[:, 0] - shift, gap_c[:, 1]], -1)

    # shading of the gap and the confusers: a darkened inside and a bright rim
    k = MAX_CONFUSERS
    angles = torch.cat([gap_angle[:, None], _uniform(g, (b, k), -0.3, 0.3)], 1)
    halves = torch.cat([half[:, None], _uniform(g, (b, k), 14.0, 20.0)], 1)
    kinds = torch.cat(
        [torch.zeros(b, 1, dtype=torch.long), torch.randint(1, 3, (b, k), generator=g)], 1
    )
    present = torch.cat([torch.ones(b, 1, dtype=torch.bool), confuser_mask], 1).float()
    depth = torch.cat([_uniform(g, (b, 1), 0.45, 0.65), _uniform(g, (b, k), 0.15, 0.35)], 1)
    rim = torch.cat([_uniform(g, (b, 1), 0.25, 0.45), _uniform(g, (b, k), 0.05, 0.2)], 1)
    piece_rim = _uniform(g, (b, 1), 0.3, 0.5)

    bg = _background(g, b, device)
    dev = dict(device=device)
    xs, ys, idx, on = _patch_index(obj_c.to(**dev))
    sdf = _shape_sdf(xs, ys, obj_c.to(**dev), angles.to(**dev), halves.to(**dev), kinds.to(**dev))
    w = (on * present.to(**dev)[..., None, None]).flatten(2)  # [B,1+K,P*P]
    dark = depth.to(**dev)[..., None] * torch.sigmoid(-sdf / 0.7).flatten(2) * w
    bright = rim.to(**dev)[..., None] * torch.exp(-((sdf / 1.3) ** 2)).flatten(2) * w
    fields = torch.zeros(b, 2, H * W, **dev)
    fields.scatter_add_(
        2, idx.flatten(1)[:, None].expand(b, 2, -1), torch.stack([dark, bright], 1).flatten(2)
    )

    # the piece: the (unshaded) background under the gap, pasted unrotated at the piece position
    pxs, pys, pidx, pon = _patch_index(piece_c[:, None].to(**dev))
    psdf = _shape_sdf(
        pxs,
        pys,
        piece_c[:, None].to(**dev),
        torch.zeros(b, 1, **dev),
        half[:, None].to(**dev),
        torch.zeros(b, 1, dtype=torch.long, **dev),
    )
    pidx = pidx.flatten(1)  # [B,P*P]
    gidx = (pidx + shift.to(**dev).long()[:, None]).clamp(0, H * W - 1)  # same pixels under the gap
    bg_flat = bg.flatten(2)
    cut = torch.gather(bg_flat, 2, gidx[:, None].expand(b, 3, -1))
    m = torch.sigmoid(-psdf / 0.7).flatten(1) * pon.flatten(1)  # [B,P*P]
    edge = piece_rim.to(**dev) * torch.exp(-((psdf / 1.3) ** 2)).flatten(1) * pon.flatten(1)

    img = bg_flat * (1 - fields[:, 0:1]) + fields[:, 1:2]
    pidx3 = pidx[:, None].expand(b, 3, -1)
    under = torch.gather(img, 2, pidx3)
    img = img.scatter(2, pidx3, under * (1 - m[:, None]) + cut * m[:, None] + edge[:, None])
    img = img.view(b, 3, H, W)

    # letterbox padding with a random grey level
    vb = valid_box.to(**dev)
    cy = torch.arange(H, **dev, dtype=torch.float32)
    cx = torch.arange(W, **dev, dtype=torch.float32)
    row_in = ((cy >= vb[:, 1:2]) & (cy < vb[:, 3:4])).float()  # [B,H]
    col_in = ((cx >= vb[:, 0:1]) & (cx < vb[:, 2:3])).float()  # [B,W]
    pad = 1 - row_in[:, None, :, None] * col_in[:, None, None, :]
    grey = _uniform(g, (b, 1, 1, 1), 0.0, 0.6).to(**dev)
    img = img.clamp(0, 1) * (1 - pad) + grey * pad

    return Batch(
        image=img,
        padding_mask=pad,
        valid_box=vb,
        gap_center=gap_c.to(**dev),
        piece_center=piece_c.to(**dev),
        gap_angle=gap_angle.to(**dev),
        confusers=obj_c[:, 1:].to(**dev),
        confuser_mask=confuser_mask.to(**dev),
    )
