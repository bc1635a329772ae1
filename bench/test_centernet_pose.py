"""CenterNet's multi-pose loss from raw boxes and keypoints (targets built inside the call), forward
and forward+backward: B = 32, 128x128 maps, 17 joints, up to 32 people on CUDA (the eager reference
builds its targets with CenterNet's per-person loop; ``compile`` compiles its loss part)."""

import pytest

from .harness import params, run_benchmark


@pytest.mark.parametrize(("mode", "batch", "variant"), params("centernet_pose_loss"))
def test_centernet_pose_loss(benchmark, mode, batch, variant):
    run_benchmark(benchmark, "centernet_pose_loss", mode, batch, variant)
