"""The demo's figures, written with the standard library and numpy only (no matplotlib).

* ``loss_curve.svg``: the training loss per step, the weighted total and the unweighted components,
  as SVG polylines on a log-scale y axis (:func:`loss_curve_svg`).
* ``predictions.png``: held-out images with the true gap centre (green crosshair) and the
  predicted one (red ring), each next to the predicted gap heatmap (sigmoid of the logits, upsampled to the
  image size, "hot" colour map) with the same marks (:func:`predictions_grid`).

PNGs are encoded by :func:`encode_png` (RGB8, zlib + struct).
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from collections.abc import Sequence
from html import escape
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

TRUTH_RGB = (40, 220, 60)  # green crosshair: the true gap centre
PRED_RGB = (235, 30, 30)  # red ring: the predicted gap centre


# --------------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------------


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG file bytes of an RGB8 image ``rgb`` ([H,W,3] uint8).

    Every scanline uses filter type 2 ("Up": the byte-wise difference to the row above, mod 256),
    which compresses the smooth demo images about a third better than no filter.
    """
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"encode_png: expected an [H,W,3] uint8 array, got {a.shape} {a.dtype}")
    h, w, _ = a.shape
    rows = a.reshape(h, 3 * w)
    raw = np.empty((h, 1 + 3 * w), np.uint8)
    raw[:, 0] = 2
    raw[:, 1:] = rows
    raw[1:, 1:] -= rows[:-1]  # uint8 arithmetic wraps: (row - row_above) mod 256
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, truecolour, no interlace
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + _png_chunk(b"IEND", b"")
    )


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write the RGB8 image ``rgb`` ([H,W,3] uint8) to ``path`` as a PNG."""
    Path(path).write_bytes(encode_png(rgb))


# --------------------------------------------------------------------------------------------------
# Loss curve (SVG)
# --------------------------------------------------------------------------------------------------

SERIES_COLOURS = ("#000000", "#d62728", "#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b")


def _x_ticks(n: int) -> list[int]:
    """About 5 round step numbers in [1, n]."""
    if n <= 1:
        return [1]
    raw = n / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    ticks = [int(t) for t in np.arange(step, n + 1, step)]
    return [1, *ticks] if ticks[:1] != [1] else ticks


def _svg_id(name: str) -> str:
    """An XML id for a series name."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "series"


def loss_curve_svg(
    history: np.ndarray | torch.Tensor,
    names: Sequence[str],
    *,
    width: int = 760,
    height: int = 420,
    title: str = "training loss per step",
) -> str:
    """An SVG line chart of the losses ``history`` ([steps, series]) named ``names``.

    One ``<polyline id="<name>">`` per series (the name with runs of other characters than letters,
    digits and ``_`` replaced by ``_``) with one point per step, step on the x axis (from 1) and the
    loss on a log10 y axis (values at or below 1e-6, and non-finite values, are drawn at the
    bottom of the axis). The first series is drawn thicker: the demo passes the total first.
    """
    h = torch.as_tensor(history, dtype=torch.float64).cpu().numpy()
    if h.ndim != 2 or h.shape[1] != len(names):
        raise ValueError(f"history: expected [steps, {len(names)}], got {tuple(h.shape)}")
    n = h.shape[0]
    finite = h[np.isfinite(h) & (h > 1e-6)]
    lo = math.floor(math.log10(finite.min())) if finite.size else -3
    hi = math.ceil(math.log10(finite.max())) if finite.size else 0
    hi = max(hi, lo + 1)
    left, right, top, bottom = 70, 150, 36, 64
    pw, ph = width - left - right, height - top - bottom

    def sx(step: float) -> float:
        return left + pw * ((step - 1) / max(1, n - 1))

    def sy(v: float) -> float:
        lv = math.log10(v) if math.isfinite(v) and v > 1e-6 else lo
        return top + ph * (1 - (min(max(lv, lo), hi) - lo) / (hi - lo))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left + pw / 2:.1f}" y="22" text-anchor="middle" font-size="15">'
        f"{escape(title)}</text>",
    ]
    # grid, ticks and tick labels
    for e in range(lo, hi + 1):
        y = sy(10.0**e)
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#dddddd"/>'
        )
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">1e{e}</text>')
    for t in _x_ticks(n):
        x = sx(t)
        y0 = top + ph
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y0 + 5}" stroke="black"/>')
        out.append(f'<text x="{x:.1f}" y="{y0 + 18}" text-anchor="middle">{t}</text>')
    # axes and their labels
    out.append(
        f'<polyline points="{left},{top} {left},{top + ph} {left + pw},{top + ph}" '
        'fill="none" stroke="black"/>'
    )
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{top + ph + 36}" text-anchor="middle">step</text>'
    )
    out.append(
        f'<text x="18" y="{top + ph / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 18 {top + ph / 2:.1f})">loss (log scale)</text>'
    )
    # the series, the first (the total) on top, and the legend
    for k in reversed(range(len(names))):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        pts = " ".join(f"{sx(i + 1):.1f},{sy(float(v)):.1f}" for i, v in enumerate(h[:, k]))
        out.append(
            f'<polyline id="{_svg_id(names[k])}" points="{pts}" fill="none" stroke="{colour}" '
            f'stroke-width="{2.2 if k == 0 else 1.2}" stroke-linejoin="round"/>'
        )
    for k, name in enumerate(names):
        colour = SERIES_COLOURS[k % len(SERIES_COLOURS)]
        y = top + 10 + 18 * k
        x = left + pw + 14
        out.append(
            f'<line x1="{x}" y1="{y}" x2="{x + 22}" y2="{y}" stroke="{colour}" '
            f'stroke-width="{2.2 if k == 0 else 1.2}"/>'
        )
        out.append(f'<text x="{x + 28}" y="{y + 4}">{escape(name)}</text>')
    if not (np.isfinite(h) & (h > 1e-6)).all():
        out.append(
            f'<text x="{left + pw}" y="{height - 8}" text-anchor="end" font-size="10" '
            'fill="#666666">values of 0 (or below 1e-6) are drawn on the x axis</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_loss_curve(
    path: str | Path,
    history: np.ndarray | torch.Tensor,
    names: Sequence[str],
    title: str = "training loss per step",
) -> None:
    """Write :func:`loss_curve_svg` of ``history`` ([steps, series]) to ``path``."""
    Path(path).write_text(loss_curve_svg(history, names, title=title), encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# Predictions (PNG)
# --------------------------------------------------------------------------------------------------


def _hot(v: np.ndarray) -> np.ndarray:
    """The "hot" colour map: [..] in [0,1] -> [..,3] in [0,1] (black, red, yellow, white)."""
    return np.clip(np.stack([3 * v, 3 * v - 1, 3 * v - 2], -1), 0, 1)


def _mark(img: np.ndarray, x: float, y: float, kind: str, rgb: tuple[int, int, int]) -> None:
    """Draw a crosshair (``kind="crosshair"``) or a ring (``"ring"``) centred at pixel (x, y).

    Both leave the pixels within 3 px of the centre alone, so that the spot under a mark (and under
    a prediction that lands on the truth) stays visible. Each mark gets a one-pixel dark outline so
    that it stands out on any background; marks that fall partly outside the image are clipped.
    """
    h, w, _ = img.shape
    r = 14
    x0, x1 = max(0, math.floor(x) - r), min(w, math.floor(x) + r + 2)
    y0, y1 = max(0, math.floor(y) - r), min(h, math.floor(y) + r + 2)
    if x0 >= x1 or y0 >= y1:
        return
    dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dx, dy = dx - x, dy - y

    def shape(grow: float) -> np.ndarray:
        if kind == "crosshair":  # arms from 4 to 12 px, 2 px wide
            ax, ay = np.abs(dx), np.abs(dy)
            arm = (4 - grow <= np.maximum(ax, ay)) & (np.maximum(ax, ay) <= 12 + grow)
            return arm & (np.minimum(ax, ay) <= 1.0 + grow)
        return np.abs(np.hypot(dx, dy) - 8.0) <= 1.2 + grow  # ring of radius 8

    window = img[y0:y1, x0:x1]
    window[shape(1.0)] = (0, 0, 0)
    window[shape(0.0)] = rgb


def predictions_grid(
    images: torch.Tensor,
    gap_logits: torch.Tensor,
    truth: torch.Tensor,
    pred: torch.Tensor,
    *,
    columns: int = 2,
    gap: int = 8,
) -> np.ndarray:
    """An RGB8 figure ([H,W,3] uint8) of held-out predictions.

    ``images`` [N,3,H,W] in [0,1], ``gap_logits`` [N,1,Hf,Wf] (the gap heatmap logits), ``truth``
    and ``pred`` [N,2] (x, y) pixels. Each example is the image and, to its right, the heatmap
    ``sigmoid(gap_logits)`` upsampled to the image size; both carry the true centre (green
    crosshair) and the predicted centre (red ring). Examples fill ``columns`` pairs per row.
    """
    n, _, h, w = images.shape
    if n == 0:
        raise ValueError("predictions_grid: no images")
    imgs = images.detach().float().cpu().clamp(0, 1).permute(0, 2, 3, 1).numpy()
    heat = torch.sigmoid(gap_logits.detach().float().cpu())
    heat = F.interpolate(heat, size=(h, w), mode="bilinear", align_corners=False)[:, 0].numpy()
    heat_rgb = _hot(heat)
    truth_np = truth.detach().float().cpu().numpy()
    pred_np = pred.detach().float().cpu().numpy()
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    tile_w = 2 * w + gap // 2
    out = np.full((rows * (h + gap) + gap, cols * (tile_w + gap) + gap, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y = gap + r * (h + gap)
        x = gap + c * (tile_w + gap)
        for k, panel in enumerate((imgs[i], heat_rgb[i])):
            tile = np.round(panel * 255).astype(np.uint8)
            _mark(tile, *truth_np[i], "crosshair", TRUTH_RGB)
            _mark(tile, *pred_np[i], "ring", PRED_RGB)
            xk = x + k * (w + gap // 2)
            out[y : y + h, xk : xk + w] = tile
    return out


def write_predictions(
    path: str | Path,
    images: torch.Tensor,
    gap_logits: torch.Tensor,
    truth: torch.Tensor,
    pred: torch.Tensor,
) -> None:
    """Write :func:`predictions_grid` of the given examples to ``path`` as a PNG."""
    write_png(path, predictions_grid(images, gap_logits, truth, pred))
