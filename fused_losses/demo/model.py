"""The demo's gap detector: a small stride-4 CNN, its input and the decoding of its outputs.

GapNet has about 0.12 M parameters (stride 4, so 64x128 output maps for a 256x512 input), a
1/8-resolution context branch, a space-to-depth skip from 1/2 resolution for the sub-cell detail,
and four heads: gap and piece heatmaps (logits, used with ``from_logits=True``), sub-cell offsets
(``tanh * 0.5``) and the gap angle as (sin, cos).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .data import STRIDE, Batch


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
        """(heatmap_gap logits, heatmap_piece logits, offset, angle), each at [H/4, W/4]."""
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
