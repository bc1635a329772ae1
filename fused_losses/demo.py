"""Train a small slider-captcha gap detector with ``fused_losses.GapDetectionLoss``.

Run it as ``python -m fused_losses.demo``. This is the library's first customer in miniature:

* **Data.** Synthetic slider captchas are generated on the fly, batch by batch, with vectorised
  torch ops from a seeded generator. Each image has a textured colour background (smooth noise,
  a gradient, stripes and soft blobs), a rotated jigsaw-shaped *gap* (darkened, with a bright rim),
  the matching *piece* cut from the background at the gap position and pasted near the left edge,
  and 1 to 3 *confusers*: fainter fake gaps of a different shape (circles or plain rounded squares).
  The content is letterboxed into a 256x512 canvas; the padding mask (1 = padding) goes both to the
  network (4th input channel) and to the loss.
* **Model.** A small CNN (0.12 M parameters; stride 4, so 64x128 output maps) with a 1/8-resolution
  context branch, a space-to-depth skip from 1/2 resolution for the sub-cell detail, and four
  heads: gap and piece heatmaps (logits, used with ``from_logits=True``), sub-cell offsets
  (``tanh * 0.5``) and the gap angle as (sin, cos). Where the hardware has fast bf16 (CUDA, or a
  CPU with AMX) the network runs under bf16 autocast; the loss always gets fp32 tensors.
* **Loss.** ``fused_losses.GapDetectionLoss``: focal heatmap loss (weighted up, ``--w-heatmap``),
  offset smooth-L1, angle cosine loss and the hard-negative margin of the gap heatmap against the
  confusers and the piece (the other jigsaw shape in the image), all masked by the padding weight.
  Trained with Adam (warm-up, then cosine decay).
* **Evaluation.** On held-out images (fixed seed) the gap centre is decoded as the argmax cell of the
  gap heatmap plus its predicted offset, and the mean Euclidean error in pixels is compared with the
  error of a uniformly random guess inside the image area.

The last line printed is ``mean gap error: <float> px (random guess: <float> px)``.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import fused_losses

H, W = 256, 512  # canvas (input) size
STRIDE = 4  # output stride of the network and of the loss labels
MAX_CONFUSERS = 3


# --------------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """3x3 convolution + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class GapNet(nn.Module):
    """Small stride-4 detector: input [B,4,H,W] (RGB + padding mask), outputs at [H/4, W/4].

    Heads: heatmap_gap and heatmap_piece as *logits* (the loss runs with ``from_logits=True``),
    offset = tanh * 0.5 (du_gap, dv_gap, du_piece, dv_piece), angle = raw (sin, cos) pair.
    """

    def __init__(self, width: int = 32) -> None:
        # about 0.12 M parameters, 0.42 GMAC per image forward
        super().__init__()
        c = width
        self.stem2 = _conv(4, 16, 2)  # 1/2
        self.stem = nn.Sequential(_conv(16, c, 2), _conv(c, c))  # 1/4
        # fine detail for the sub-cell offsets: the 1/2-resolution features, space-to-depth
        self.fine = nn.Conv2d(4 * 16, c, 1)
        self.context = nn.Sequential(
            _conv(c, 2 * c, 2), _conv(2 * c, 2 * c), _conv(2 * c, 2 * c, dilation=2)
        )  # 1/8
        self.lateral = nn.Conv2d(2 * c, c, 1)
        self.fuse = _conv(c, c)
        self.head = nn.Conv2d(c, 8, 1)
        with torch.no_grad():
            self.head.bias.zero_()
            self.head.bias[0:2] = -math.log((1 - 0.05) / 0.05)  # heatmap prior 0.05

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        f2 = self.stem2(x)
        f = self.stem(f2)
        ctx = self.context(f)
        f = f + F.interpolate(self.lateral(ctx), size=f.shape[-2:], mode="nearest")
        f = f + self.fine(F.pixel_unshuffle(f2, 2))
        out = self.head(self.fuse(f))
        return out[:, 0:1], out[:, 1:2], 0.5 * torch.tanh(out[:, 2:6]), out[:, 6:8]


def _net_input(batch: Batch) -> torch.Tensor:
    """Network input: centred RGB plus the padding mask as a 4th channel (channels-last)."""
    x = torch.cat([batch.image - 0.5, batch.padding_mask], 1)
    return x.contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------------------------------
# Decoding and evaluation
# --------------------------------------------------------------------------------------------------


def decode(heatmap: torch.Tensor, offset: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """Gap centres [B,2] (x, y) pixels from the argmax cell of ``heatmap`` plus its offset.

    Cells that are mostly padding are excluded from the argmax.
    """
    b, wf = heatmap.shape[0], heatmap.shape[-1]
    w = 1 - F.avg_pool2d(padding_mask, STRIDE, STRIDE)
    score = heatmap.masked_fill(w < 0.5, float("-inf")).flatten(1)
    idx = score.argmax(1)
    i = torch.div(idx, wf, rounding_mode="floor")
    j = idx % wf
    ar = torch.arange(b, device=heatmap.device)
    du = offset[ar, 0, i, j]
    dv = offset[ar, 1, i, j]
    return torch.stack([STRIDE * (j + 0.5 + du), STRIDE * (i + 0.5 + dv)], -1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    n_images: int,
    seed: int,
    device: torch.device,
    bf16: bool = False,
    batch_size: int = 16,
) -> tuple[float, float, float]:
    """Mean gap-centre error (px), the random-guess error (px), and the fraction within 8 px.

    The held-out images depend only on ``seed``, ``n_images`` and ``batch_size`` (not on training).
    """
    model.eval()
    g = torch.Generator().manual_seed(seed)
    errs, rand_errs = [], []
    done = 0
    while done < n_images:
        b = min(batch_size, n_images - done)
        batch = make_batch(g, b, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            hg, _, off, _ = model(_net_input(batch))
        pred = decode(hg.float(), off.float(), batch.padding_mask)
        errs.append((pred - batch.gap_center).norm(dim=-1).cpu())
        # random guess: uniform points in the valid image area (64 draws per image, averaged)
        box = batch.valid_box.cpu()
        t = torch.rand((b, 64, 2), generator=g)
        guess = box[:, None, :2] + t * (box[:, None, 2:] - box[:, None, :2])
        rand_errs.append((guess - batch.gap_center.cpu()[:, None]).norm(dim=-1).mean(1))
        done += b
    err = torch.cat(errs)
    model.train()
    return err.mean().item(), torch.cat(rand_errs).mean().item(), (err <= 8).float().mean().item()


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def _use_bf16(precision: str, device: torch.device) -> bool:
    """Whether to run the network under bf16 autocast."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # oneDNN runs bf16 convolutions on AMX tiles several times faster than fp32; elsewhere it
    # would be slower, so stay in fp32
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return device.type == "cpu" and amx is not None and bool(amx())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200, help="training steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3, help="peak Adam learning rate")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed for the model and the training data")
    p.add_argument("--eval-images", type=int, default=256)
    p.add_argument("--eval-seed", type=int, default=12345, help="seed of the held-out images")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="network precision; auto = bf16 autocast where the hardware has fast bf16 "
        "(CUDA, or a CPU with AMX), else fp32. The loss always runs in fp32.",
    )
    p.add_argument(
        "--backend", choices=["auto", "torch", "triton"], default="auto", help="loss backend"
    )
    # The focal terms are averaged over all ~8k cells of a map (normalize="weight"), which makes
    # them ~1e-3 next to the offset / angle terms (averaged over the few positive cells); an
    # up-weighting lets the heatmaps drive the shared features.
    p.add_argument(
        "--w-heatmap", type=float, default=20.0, help="weight of the focal heatmap terms"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> float:
    """Train the gap detector, evaluate it, print the final error line and return the mean error."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)

    bf16 = _use_bf16(args.precision, device)
    model = GapNet().to(device, memory_format=torch.channels_last)
    criterion = fused_losses.GapDetectionLoss(
        stride=STRIDE, from_logits=True, w_heatmap=args.w_heatmap, backend=args.backend
    )
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    warmup = max(1, min(50, args.steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warmup)
            * 0.5
            * (1 + math.cos(math.pi * min(1.0, s / max(1, args.steps))))
        ),
    )

    t0 = time.perf_counter()
    bar = tqdm(range(args.steps), desc="train", mininterval=0.5, dynamic_ncols=True)
    for step in bar:
        b = args.batch_size
        batch = make_batch(g, b, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs = model(_net_input(batch))
        hg, hp, off, ang = (o.float() for o in outputs)
        # hard negatives for the gap heatmap: the fake gaps, and the piece (the other jigsaw shape)
        negatives = torch.cat([batch.confusers, batch.piece_center[:, None]], 1)
        negative_mask = torch.cat([batch.confuser_mask, batch.confuser_mask.new_ones(b, 1)], 1)
        loss, comps = criterion(
            hg,
            hp,
            off,
            ang,
            batch.gap_center,
            batch.piece_center,
            batch.gap_angle,
            confusers=negatives,
            confuser_mask=negative_mask,
            padding_mask=batch.padding_mask,
            return_components=True,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 5 == 0 or step == args.steps - 1:  # .item() syncs a GPU: not every step
            bar.set_postfix(
                loss=f"{loss.item():.3f}",
                hg=f"{comps['heatmap_gap'].item():.4f}",
                hp=f"{comps['heatmap_piece'].item():.4f}",
                off=f"{comps['offset'].item():.3f}",
                ang=f"{comps['angle'].item():.3f}",
                hn=f"{comps['hard_negative'].item():.3f}",
                refresh=False,
            )
    bar.close()
    train_s = time.perf_counter() - t0

    err, rand_err, hit = evaluate(model, args.eval_images, args.eval_seed, device, bf16)
    print(
        f"trained {args.steps} steps x {args.batch_size} images in {train_s:.1f} s; "
        f"{args.eval_images} held-out images: {100 * hit:.1f}% within 8 px"
    )
    print(f"mean gap error: {err:.2f} px (random guess: {rand_err:.2f} px)")
    return err


if __name__ == "__main__":
    main()
