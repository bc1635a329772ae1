"""The full gap-detection loss (labels, padding weight, every term), forward and forward+backward."""

import pytest

from .harness import params, run_benchmark


@pytest.mark.parametrize(("mode", "batch", "variant"), params("gap_detection_loss"))
def test_gap_detection_loss(benchmark, mode, batch, variant):
    run_benchmark(benchmark, "gap_detection_loss", mode, batch, variant)


@pytest.mark.parametrize(("mode", "batch", "variant"), params("gap_detection_loss_per_image"))
def test_gap_detection_loss_per_image(benchmark, mode, batch, variant):
    run_benchmark(benchmark, "gap_detection_loss_per_image", mode, batch, variant)
