"""Masked focal loss on the gap heatmap with its Gaussian target and padding weight."""

import pytest

from .harness import params, run_benchmark


@pytest.mark.parametrize(("mode", "batch", "variant"), params("masked_focal_loss"))
def test_masked_focal_loss(benchmark, mode, batch, variant):
    run_benchmark(benchmark, "masked_focal_loss", mode, batch, variant)
