"""Hard-negative margin loss on bilinear samples of the gap heatmap."""

import pytest

from .harness import params, run_benchmark


@pytest.mark.parametrize(("mode", "batch", "variant"), params("hard_negative_margin_loss"))
def test_hard_negative_margin_loss(benchmark, mode, batch, variant):
    run_benchmark(benchmark, "hard_negative_margin_loss", mode, batch, variant)
