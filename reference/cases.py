"""Random gap-detection problems, shared by the tests and the benchmarks.

``gap_case`` draws a reproducible problem of any size: predictions in the ranges the loss expects,
centres and confusers on (and sometimes off) the grid, and optional letterbox padding. Everything is
created in float64 on the CPU; ``GapCase.to`` converts predictions and coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

PREDICTIONS = ("heatmap_gap", "heatmap_piece", "offset", "angle")


@dataclass
class GapCase:
    heatmap_gap: torch.Tensor
    heatmap_piece: torch.Tensor
    offset: torch.Tensor
    angle: torch.Tensor
    gap_center: torch.Tensor
    piece_center: torch.Tensor
    gap_angle: torch.Tensor
    confusers: torch.Tensor | None
    confuser_mask: torch.Tensor | None
    padding_mask: torch.Tensor | None
    valid_box: torch.Tensor | None

    def args(self) -> tuple:
        """The positional arguments of ``gap_detection_loss`` (without return_components)."""
        return tuple(getattr(self, f.name) for f in fields(self))

    def predictions(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, n) for n in PREDICTIONS)

    def to(
        self,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        *,
        requires_grad: bool = False,
    ) -> GapCase:
        """A copy with floating tensors cast to ``dtype`` (predictions leaf tensors with grad)."""
        out = {}
        for f in fields(self):
            x = getattr(self, f.name)
            if x is not None:
                x = x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
                if f.name in PREDICTIONS:
                    x = x.detach().clone().requires_grad_(requires_grad)
            out[f.name] = x
        return replace(self, **out)


def gap_case(
    batch: int = 2,
    size: tuple[int, int] = (16, 32),
    *,
    confusers: int = 2,
    padding: str | None = None,
    from_logits: bool = False,
    stride: int = 4,
    seed: int = 0,
) -> GapCase:
    """A random problem. ``padding``: None, "mask" (a bool letterbox mask) or "box" (valid_box).

    Probabilities lie in [0.01, 0.99] (logits N(0, 3^2) with ``from_logits``), offsets in
    [-0.5, 0.5], angle vectors N(0, 1). The first confuser of image 0, when there is one, sits one
    cell from the gap so that its margin term is active.
    """
    g = torch.Generator().manual_seed(seed)
    hf, wf = size
    f64 = torch.float64

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=f64)

    if from_logits:
        hg = 3 * torch.randn(batch, 1, hf, wf, generator=g, dtype=f64)
        hp = 3 * torch.randn(batch, 1, hf, wf, generator=g, dtype=f64)
    else:
        hg = 0.01 + 0.98 * rand(batch, 1, hf, wf)
        hp = 0.01 + 0.98 * rand(batch, 1, hf, wf)
    offset = rand(batch, 4, hf, wf) - 0.5
    angle = torch.randn(batch, 2, hf, wf, generator=g, dtype=f64)
    extent = torch.tensor([wf * stride, hf * stride], dtype=f64)
    # Centres mostly inside the image, a few beyond its edges (their Gaussians are clipped).
    gap_center = (rand(batch, 2) * 1.1 - 0.05) * extent
    piece_center = (rand(batch, 2) * 1.1 - 0.05) * extent
    gap_angle = (rand(batch) - 0.5) * 6
    conf = (rand(batch, confusers, 2) * 1.2 - 0.1) * extent
    if confusers > 0:
        conf[0, 0] = gap_center[0] + torch.tensor([stride * 1.3, stride * 0.4], dtype=f64)
    conf_mask = rand(batch, confusers) > 0.25
    padding_mask = valid_box = None
    if padding == "mask":
        h, w = hf * stride, wf * stride
        padding_mask = torch.zeros(batch, 1, h, w, dtype=torch.bool)
        for b in range(batch):
            top = int(rand(1).item() * h * 0.3)
            left = int(rand(1).item() * w * 0.3)
            bottom = h - int(rand(1).item() * h * 0.3)
            right = w - int(rand(1).item() * w * 0.3)
            padding_mask[b] = True
            padding_mask[b, :, top:bottom, left:right] = False
    elif padding == "box":
        x0y0 = rand(batch, 2) * extent * 0.3
        x1y1 = extent - rand(batch, 2) * extent * 0.3
        valid_box = torch.cat([x0y0, x1y1], dim=1)
    elif padding is not None:
        raise ValueError(f"padding: expected None, 'mask' or 'box', got {padding!r}")
    return GapCase(
        hg,
        hp,
        offset,
        angle,
        gap_center,
        piece_center,
        gap_angle,
        conf,
        conf_mask,
        padding_mask,
        valid_box,
    )
