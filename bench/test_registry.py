"""The registry's fused dense losses (docs/spec.md 12.4), forward and forward+backward:
CrossEntropyLoss (ignore 255, label smoothing 0.1) on 8x19x512x1024 maps (float32 and bf16) and on
[65536, 1000] logits, the sigmoid focal loss, QFL and VFL on [65536, 80], dense KD on 8x19x128x256
(CUDA sizes; small on CPU), against ``F.cross_entropy`` / torchvision-style / mmrazor-style eager
and ``torch.compile`` of it; DiceLoss, OHEMCrossEntropyLoss and LovaszLoss on 8x19x512x1024 against mmseg-style
eager code; GIoULoss and CIoULoss (one fused kernel on triton) on 262144 matched boxes against the
textbook formulas in eager PyTorch; the exact distance transform of 8x512x1024 masks against SciPy
on the CPU."""

import pytest

from .harness import params, run_benchmark

OPS = ("registry_ce_seg", "registry_ce_seg_bf16", "registry_ce_logits", "registry_sigmoid_focal",
       "registry_qfl", "registry_vfl", "registry_kd", "registry_dice",
       "registry_ohem_ce", "registry_lovasz", "registry_giou", "registry_ciou")  # fmt: skip


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(("mode", "batch", "variant"), params("registry_ce_seg"))
def test_registry_loss(benchmark, op, mode, batch, variant):
    run_benchmark(benchmark, op, mode, batch, variant)


@pytest.mark.parametrize(("mode", "batch", "variant"), params("registry_distance_transform"))
def test_registry_distance_transform(benchmark, mode, batch, variant):
    run_benchmark(benchmark, "registry_distance_transform", mode, batch, variant)
