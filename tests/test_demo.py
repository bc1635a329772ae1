"""The demo (``python -m fused_losses.demo``): a tiny end-to-end run, its output files, the
one-line errors for a device or backend that cannot run here, and the PNG writer."""

from __future__ import annotations

import json
import re
import struct
import zlib

import numpy as np
import pytest
import torch

import fused_losses.backend
from fused_losses.demo import main
from fused_losses.demo.figures import PNG_SIGNATURE, encode_png, loss_curve_svg
from fused_losses.demo.train import check_backend, resolve_device

TINY = ["--steps", "2", "--batch-size", "2", "--eval-images", "4", "--backend", "torch"]


@pytest.fixture(autouse=True)
def _keep_threads():
    """main() sets torch's thread count: give the other tests theirs back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == PNG_SIGNATURE
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF, tag
        chunks.append((tag, body))
        pos += 12 + length
    return chunks


def _decode_png(data: bytes) -> np.ndarray:
    """RGB8 pixels of a PNG whose scanlines all use filter 0 (None) or 2 (Up)."""
    chunks = _png_chunks(data)
    assert chunks[0][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, interlace) == (8, 2, 0)
    raw = zlib.decompress(b"".join(body for tag, body in chunks if tag == b"IDAT"))
    rows = np.frombuffer(raw, np.uint8).reshape(h, 1 + 3 * w)
    out = np.zeros((h, 3 * w), np.uint8)
    for y in range(h):
        assert rows[y, 0] in (0, 2)
        out[y] = rows[y, 1:] + (out[y - 1] if rows[y, 0] == 2 and y > 0 else 0)
    return out.reshape(h, w, 3)


def test_png_writer_round_trip():
    rgb = np.array(
        [[[0, 0, 0], [255, 0, 0], [0, 255, 0]], [[1, 2, 3], [250, 128, 7], [255, 255, 255]]],
        np.uint8,
    )
    data = encode_png(rgb)
    w, h = struct.unpack(">II", data[16:24])
    assert (w, h) == (3, 2)
    np.testing.assert_array_equal(_decode_png(data), rgb)
    # the literal bytes: filter byte 2 ("Up") per scanline, the second row minus the first mod 256
    raw = zlib.decompress(_png_chunks(data)[1][1])
    assert raw == bytes([2, 0, 0, 0, 255, 0, 0, 0, 255, 0, 2, 1, 2, 3, 251, 128, 7, 255, 0, 255])
    with pytest.raises(ValueError):
        encode_png(rgb.astype(np.float32))


def test_loss_curve_points():
    history = np.array([[1.0, 0.1], [0.5, 0.0], [0.25, float("nan")], [0.2, 0.01]])
    svg = loss_curve_svg(history, ["total", "part"])
    for name in ("total", "part"):
        pts = re.search(rf'<polyline id="{name}" points="([^"]*)"', svg).group(1).split()
        assert len(pts) == 4
    assert "step" in svg and "loss (log scale)" in svg


def test_demo_tiny_run(tmp_path, capsys):
    out = tmp_path / "figs"
    err = main([*TINY, "--out", str(out)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"mean gap error: [\d.]+ px \(random guess: [\d.]+ px\)", lines[-2])
    assert "2 CPU threads" in lines[-3]
    assert lines[-1].startswith("wrote ") and str(out / "predictions.png") in lines[-1]

    data = (out / "predictions.png").read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    img = _decode_png(data)
    assert img.shape == (h, w, 3)
    assert h > 256 and w > 2 * 512  # 4 held-out images: 2 rows of (image | heatmap) pairs
    # the marks: pure-ish green (truth) and red (prediction) pixels
    assert ((img[..., 1] > 200) & (img[..., 0] < 80) & (img[..., 2] < 100)).any()
    assert ((img[..., 0] > 220) & (img[..., 1] < 50) & (img[..., 2] < 50)).any()

    svg = (out / "loss_curve.svg").read_text()
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    total = re.search(r'<polyline id="total" points="([^"]*)"', svg).group(1).split()
    assert len(total) == 2  # one point per step
    assert svg.count("<polyline id=") == 6  # the total and the five components

    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "steps",
        "batch_size",
        "seed",
        "threads",
        "train_seconds",
        "mean_error_px",
        "random_guess_error_px",
        "hit_rate_8px",
    ):
        assert key in metrics, key
    assert (metrics["steps"], metrics["batch_size"], metrics["threads"]) == (2, 2, 2)
    assert metrics["mean_error_px"] == err
    assert 0 <= metrics["hit_rate_8px"] <= 1


def _one_line_exit(argv: list[str], tmp_path) -> str:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--out", str(tmp_path)])
    message = info.value.code
    assert isinstance(message, str) and message and "\n" not in message
    assert not any(tmp_path.iterdir())  # stopped before training
    return message


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available: --device cuda runs")
@pytest.mark.parametrize("device", ["cuda", "gpu", "cuda:0"])
def test_device_cuda_without_cuda(device, tmp_path):
    message = _one_line_exit(["--device", device, *TINY], tmp_path)
    assert "CUDA is not available" in message and "--device cpu" in message


def test_unknown_device(tmp_path):
    message = _one_line_exit(["--device", "tpu", *TINY], tmp_path)
    assert "cpu" in message and "cuda" in message


def test_backend_triton_on_cpu_without_interpreter(monkeypatch, tmp_path):
    monkeypatch.setattr(fused_losses.backend, "interpreter_on", lambda: False)
    with pytest.raises(SystemExit) as info:
        check_backend("triton", torch.device("cpu"))
    message = str(info.value)
    assert "\n" not in message
    assert "--backend torch" in message and "TRITON_INTERPRET=1" in message
    # through main, before any training (the demo's default device is the CPU)
    argv = [a for a in TINY if a not in ("--backend", "torch")] + ["--backend", "triton"]
    message = _one_line_exit(argv, tmp_path)
    assert "--backend torch" in message
    # auto falls back to the torch backend on the CPU
    assert check_backend("auto", torch.device("cpu")) == "torch"


def test_resolve_device_aliases():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("CPU") == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("gpu") == torch.device("cuda")
