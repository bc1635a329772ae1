"""Label generation: Gaussian heatmaps, the padding weight and the boundary label (forward only,
no gradient)."""

import pytest

from .harness import params, run_benchmark


@pytest.mark.parametrize(("mode", "batch", "variant"), params("gaussian_heatmap"))
def test_gaussian_heatmap(benchmark, mode, batch, variant):
    run_benchmark(benchmark, "gaussian_heatmap", mode, batch, variant)


@pytest.mark.parametrize(("mode", "batch", "variant"), params("padding_weight"))
def test_padding_weight(benchmark, mode, batch, variant):
    run_benchmark(benchmark, "padding_weight", mode, batch, variant)


@pytest.mark.parametrize(("mode", "batch", "variant"), params("boundary_label"))
def test_boundary_label(benchmark, mode, batch, variant):
    run_benchmark(benchmark, "boundary_label", mode, batch, variant)
