"""CenterNet (ctdet) family: the full loss from raw boxes, its focal and L1 terms, and targets."""

import pytest

from .harness import params, run_benchmark


@pytest.mark.parametrize(("mode", "batch", "variant"), params("centernet_loss"))
def test_centernet_loss(benchmark, mode, batch, variant):
    run_benchmark(benchmark, "centernet_loss", mode, batch, variant)


@pytest.mark.parametrize(("mode", "batch", "variant"), params("centernet_focal_loss"))
def test_centernet_focal_loss(benchmark, mode, batch, variant):
    run_benchmark(benchmark, "centernet_focal_loss", mode, batch, variant)


@pytest.mark.parametrize(("mode", "batch", "variant"), params("reg_l1_loss"))
def test_reg_l1_loss(benchmark, mode, batch, variant):
    run_benchmark(benchmark, "reg_l1_loss", mode, batch, variant)


@pytest.mark.parametrize(("mode", "batch", "variant"), params("centernet_targets"))
def test_centernet_targets(benchmark, mode, batch, variant):
    run_benchmark(benchmark, "centernet_targets", mode, batch, variant)
