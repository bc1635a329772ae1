"""RoRD losses (docs/spec.md 11), forward and forward+backward: detection + descriptor total,
C = 128, 196 anchors, 400 candidates, maps 64x64 on CUDA (``BENCH_SIZE=128x128`` for the larger),
B = 2 and 8 on CUDA."""

import pytest

from .harness import params, run_benchmark


@pytest.mark.parametrize(("mode", "batch", "variant"), params("rord_loss"))
def test_rord_loss(benchmark, mode, batch, variant):
    run_benchmark(benchmark, "rord_loss", mode, batch, variant)
