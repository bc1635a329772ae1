"""Masked smooth-L1 (offsets) and masked cosine (angle) losses."""

import pytest

from .harness import params, run_benchmark


@pytest.mark.parametrize(("mode", "batch", "variant"), params("masked_smooth_l1_loss"))
def test_masked_smooth_l1_loss(benchmark, mode, batch, variant):
    run_benchmark(benchmark, "masked_smooth_l1_loss", mode, batch, variant)


@pytest.mark.parametrize(("mode", "batch", "variant"), params("masked_cosine_loss"))
def test_masked_cosine_loss(benchmark, mode, batch, variant):
    run_benchmark(benchmark, "masked_cosine_loss", mode, batch, variant)
