"""CASS soft-target loss from the boxes (docs/spec.md 10), forward and forward+backward: 100 and 10
box slots per image on a 20x20 feature map (stride 32, patch 4; ``BENCH_SIZE=40x40`` for the larger
map), B = 8 and 64 on CUDA."""

import pytest

from .harness import params, run_benchmark


@pytest.mark.parametrize(("mode", "batch", "variant"), params("cass_loss"))
def test_cass_loss(benchmark, mode, batch, variant):
    run_benchmark(benchmark, "cass_loss", mode, batch, variant)


@pytest.mark.parametrize(("mode", "batch", "variant"), params("cass_loss_n10"))
def test_cass_loss_n10(benchmark, mode, batch, variant):
    run_benchmark(benchmark, "cass_loss_n10", mode, batch, variant)
