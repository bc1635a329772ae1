"""Data-parallel normalisers (docs/spec.md 9, ``reduce_across_ranks``): two processes on CPU.

Two gloo ranks (``torch.multiprocessing.spawn``) each take half of a batch, run a tiny model
wrapped in DistributedDataParallel through a loss with ``reduce_across_ranks=True`` and take one
backward. DDP averages the gradients; they, and the loss each rank returns, must equal one
process on the whole batch. Every loss with a data-dependent normaliser runs on both backends
(triton through the interpreter), balanced and unbalanced (rank 1's images without positives, with
an empty regression mask, fully padded, without boxes), in float64 so that the comparison is
tight. A control run without the option shows the mismatch the option removes.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fused_losses.reference import centernet_pose as RP

import fused_losses as fl

WORLD = 2
B, H, W = 4, 8, 8  # 2 images per rank
STRIDE = 4
K = 3  # confusers / negatives per image
M = 5  # CenterNet objects per image
TOL = 1e-9  # float64 throughout: only the order of the sums differs


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _base(seed: int) -> dict[str, torch.Tensor]:
    g = _gen(seed)
    return {"feats": torch.randn(B, 3, H, W, generator=g, dtype=torch.float64)}


def _pixels(g: torch.Generator, *shape: int) -> torch.Tensor:
    """Points (x, y) in input pixels, inside the image."""
    return torch.rand(*shape, 2, generator=g, dtype=torch.float64) * (W * STRIDE - 1)


def _focal_batch(seed: int, unbalanced: bool) -> dict:
    g = _gen(seed)
    target = torch.rand(B, 1, H, W, generator=g, dtype=torch.float64) * 0.8
    target[:, :, 2, 3] = 1.0
    target[0, :, 5, 5] = 0.95
    weight = (torch.rand(B, 1, H, W, generator=g) > 0.3).double()
    if unbalanced:  # rank 1: no positive, no weight
        target[2:] = target[2:].clamp_max(0.5)
        weight[2:] = 0
    return {**_base(seed), "target": target, "weight": weight}


def _mask_batch(seed: int, unbalanced: bool) -> dict:
    g = _gen(seed)
    mask = (torch.rand(B, 1, H, W, generator=g) > 0.5).double()
    if unbalanced:
        mask[2:] = 0
    return {
        **_base(seed),
        "target": torch.randn(B, 2, H, W, generator=g, dtype=torch.float64),
        "angle": torch.rand(B, generator=g, dtype=torch.float64) * 6,
        "mask": mask,
    }


def _hard_negative_batch(seed: int, unbalanced: bool) -> dict:
    g = _gen(seed)
    neg_mask = torch.rand(B, K, generator=g) > 0.3
    if unbalanced:
        neg_mask[2:] = False
    return {
        **_base(seed),
        "positive": _pixels(g, B),
        "negatives": _pixels(g, B, K),
        "negative_mask": neg_mask,
    }


def _gap_batch(seed: int, unbalanced: bool) -> dict:
    g = _gen(seed)
    padding = torch.zeros(B, 1, H * STRIDE, W * STRIDE, dtype=torch.bool)
    padding[:, :, :, W * STRIDE - 6 :] = True
    if unbalanced:
        padding[2:] = True  # rank 1: every pixel is padding
    return {
        **_base(seed),
        "gap_center": _pixels(g, B),
        "piece_center": _pixels(g, B),
        "gap_angle": torch.rand(B, generator=g, dtype=torch.float64),
        "confusers": _pixels(g, B, K),
        "confuser_mask": torch.rand(B, K, generator=g) > 0.2,
        "padding_mask": padding,
    }


def _centernet_batch(seed: int, unbalanced: bool) -> dict:
    g = _gen(seed)
    xy = torch.rand(B, M, 2, generator=g, dtype=torch.float64) * (W * STRIDE - 12)
    size = 3 + torch.rand(B, M, 2, generator=g, dtype=torch.float64) * 8
    boxes = torch.cat([xy, xy + size], dim=-1)
    labels = torch.randint(0, 2, (B, M), generator=g)
    box_mask = torch.rand(B, M, generator=g) > 0.3
    box_mask[:, 0] = True
    if unbalanced:
        box_mask[2:] = False  # rank 1: no objects
    targets = fl.centernet_targets(
        boxes, labels, box_mask, num_classes=2, output_size=(H, W), down_ratio=STRIDE,
        backend="torch",
    )  # fmt: skip
    return {
        **_base(seed),
        "boxes": boxes,
        "labels": labels,
        "box_mask": box_mask,
        "channel_weight": 0.5 + torch.rand(B, M, 2, generator=g, dtype=torch.float64),
        **{f"t_{k}": v for k, v in targets.items()},
    }


def _rord_batch(seed: int, unbalanced: bool) -> dict:
    g = _gen(seed)
    t = torch.rand(B, generator=g, dtype=torch.float64) * 0.4
    shift = torch.full((B,), 3.0, dtype=torch.float64)
    if unbalanced:
        shift[2:] = 1e4  # rank 1: everything warped outside (no counted cell, no valid anchor)
    rows = [torch.cos(t), -torch.sin(t), shift, torch.sin(t), torch.cos(t), -shift / 3]
    hom = torch.stack(rows, -1).view(B, 2, 3)
    return {**_base(seed), "H": hom, "anchors": _pixels(g, B, 5), "negatives": _pixels(g, B, 6)}


def _cass_batch(seed: int, unbalanced: bool) -> dict:
    g = _gen(seed)
    xy = torch.rand(B, M, 2, generator=g, dtype=torch.float64) * (W * STRIDE - 8)
    boxes = torch.cat([xy, xy + 1 + torch.rand(B, M, 2, generator=g) * 12], dim=-1)
    box_mask = torch.rand(B, M, generator=g) > 0.3
    if unbalanced:
        box_mask[2:] = False  # rank 1: no boxes
    soft = torch.rand(B, 1, H, W, generator=g, dtype=torch.float64)
    return {**_base(seed), "boxes": boxes, "box_mask": box_mask, "soft": soft}


def _pose_batch(seed: int, unbalanced: bool) -> dict:
    g = _gen(seed)
    base = _centernet_batch(seed, unbalanced)
    boxes = base["boxes"]
    kp = boxes[..., None, :2] + torch.rand(B, M, 3, 2, generator=g, dtype=torch.float64) * (
        boxes[..., None, 2:] - boxes[..., None, :2]
    )
    kp = torch.cat([kp, torch.ones(B, M, 3, 1, dtype=torch.float64)], -1)
    t = RP.centernet_pose_targets(
        boxes, kp, base["labels"], base["box_mask"], num_classes=2, num_joints=3,
        output_size=(H, W), down_ratio=STRIDE,
    )  # fmt: skip
    return {**base, **{f"p_{k}": v for k, v in t.items()}}


def _pose_heads(o: torch.Tensor) -> dict:
    """Multi-pose heads from a 14-channel output (K=2, J=3)."""
    return {"hm": fl.clamped_sigmoid(o[:, :2]), "wh": o[:, 2:4], "reg": o[:, 4:6],
            "hps": o[:, 6:12], "hm_hp": fl.clamped_sigmoid(o[:, 11:14]), "hp_offset": o[:, 4:6]}  # fmt: skip


def _targets(batch: dict) -> dict:
    return {k[2:]: v for k, v in batch.items() if k.startswith("t_")}


# name: (batch maker, output channels, loss(out, batch, **options))
CASES = {
    "focal_weight": (_focal_batch, 1, lambda o, b, **kw: fl.masked_focal_loss(
        torch.sigmoid(o), b["target"], b["weight"], **kw)),
    "focal_num_pos": (_focal_batch, 1, lambda o, b, **kw: fl.masked_focal_loss(
        torch.sigmoid(o), b["target"], b["weight"], normalize="num_pos", **kw)),
    "focal_mean_logits": (_focal_batch, 1, lambda o, b, **kw: fl.masked_focal_loss(
        o, b["target"], normalize="mean", from_logits=True, **kw)),
    "focal_sum": (_focal_batch, 1, lambda o, b, **kw: fl.masked_focal_loss(
        torch.sigmoid(o), b["target"], normalize="sum", **kw)),
    "smooth_l1": (_mask_batch, 2, lambda o, b, **kw: fl.masked_smooth_l1_loss(
        o, b["target"], b["mask"], **kw)),
    "cosine": (_mask_batch, 2, lambda o, b, **kw: fl.masked_cosine_loss(
        o, b["angle"], b["mask"], **kw)),
    "hard_negative": (_hard_negative_batch, 1, lambda o, b, **kw: fl.hard_negative_margin_loss(
        torch.sigmoid(o), b["positive"], b["negatives"], b["negative_mask"], **kw)),
    "gap_detection": (_gap_batch, 8, lambda o, b, **kw: fl.gap_detection_loss(
        torch.sigmoid(o[:, 0:1]), torch.sigmoid(o[:, 1:2]), o[:, 2:6], o[:, 6:8],
        b["gap_center"], b["piece_center"], b["gap_angle"], b["confusers"], b["confuser_mask"],
        b["padding_mask"], return_components=True, **kw)),
    "centernet_focal": (_centernet_batch, 2, lambda o, b, **kw: fl.centernet_focal_loss(
        fl.clamped_sigmoid(o), b["t_hm"], **kw)),
    "reg_l1": (_centernet_batch, 2, lambda o, b, **kw: fl.reg_l1_loss(
        o, b["t_reg_mask"], b["t_ind"], b["t_wh"], **kw)),
    "reg_smooth_l1": (_centernet_batch, 2, lambda o, b, **kw: fl.reg_smooth_l1_loss(
        o, b["t_reg_mask"], b["t_ind"], b["t_wh"], **kw)),
    "reg_weighted_l1": (_centernet_batch, 2, lambda o, b, **kw: fl.reg_weighted_l1_loss(
        o, b["t_reg_mask"][..., None] * b["channel_weight"], b["t_ind"], b["t_wh"], **kw)),
    "cass_mean": (_cass_batch, 1, lambda o, b, **kw: fl.cass_loss(
        o[:, :, ::2, ::2], b["boxes"], b["box_mask"], feat_size=(H, W), stride=STRIDE,
        patch_size=2, **kw)),
    "cass_sum_mse": (_cass_batch, 1, lambda o, b, **kw: fl.cass_loss(
        o[:, :, ::2, ::2].flatten(1), b["boxes"], b["box_mask"], feat_size=(H, W), stride=STRIDE,
        patch_size=2, loss="mse", reduction="sum", **kw)),
    "soft_focal": (_cass_batch, 1, lambda o, b, **kw: fl.soft_focal_loss(o, b["soft"], **kw)),
    "rord": (_rord_batch, 10, lambda o, b, **kw: fl.rord_loss(
        torch.sigmoid(o[:, 0:1]), torch.sigmoid(o[:, 1:2]), o[:, 2:6], o[:, 6:10], b["H"],
        b["anchors"], b["negatives"], stride=STRIDE, outside="ignore", detach_negative=False,
        return_components=True, **kw)),
    "centernet_pose": (_pose_batch, 14, lambda o, b, **kw: fl.centernet_pose_loss(
        _pose_heads(o), {k[2:]: v for k, v in b.items() if k.startswith("p_")},
        return_components=True, **kw)),
    "centernet_targets": (_centernet_batch, 6, lambda o, b, **kw: fl.centernet_loss(
        fl.clamped_sigmoid(o[:, :2]), o[:, 2:4], o[:, 4:6], _targets(b), return_components=True,
        **kw)),
    "centernet_boxes": (_centernet_batch, 6, lambda o, b, **kw: fl.centernet_loss(
        fl.clamped_sigmoid(o[:, :2]), o[:, 2:4], o[:, 4:6], boxes=b["boxes"], labels=b["labels"],
        box_mask=b["box_mask"], down_ratio=STRIDE, **kw)),
}  # fmt: skip


def _model(channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, channels, 1).double()


def _step(model, case: str, batch: dict, backend: str, reduce: bool):
    """(loss, components or None, gradients of the model's parameters) of one step."""
    _, _, loss_fn = CASES[case]
    out = loss_fn(model(batch["feats"]), batch, backend=backend, reduce_across_ranks=reduce)
    loss, comps = (out[0], out[1]) if isinstance(out, tuple) else (out, None)
    loss.backward()
    comps = torch.stack(list(comps.values())).detach() if comps is not None else None
    return loss.detach(), comps, [p.grad.detach().clone() for p in model.parameters()]


def _run_cases(rank: int, runs: list, seed: int) -> list:
    results = []
    for case, backend, unbalanced, reduce in runs:
        make, channels, _ = CASES[case]
        full = make(seed, unbalanced)
        half = {k: v[rank * B // WORLD : (rank + 1) * B // WORLD] for k, v in full.items()}
        model = torch.nn.parallel.DistributedDataParallel(_model(channels))
        results.append(_step(model, case, half, backend, reduce))
    return results


def _worker(rank: int, store: str, out_dir: str, runs: list, seed: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        torch.save(_run_cases(rank, runs, seed), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _spawn(runs: list, seed: int = 0) -> list[list]:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(
            _worker, args=(os.path.join(tmp, "store"), tmp, runs, seed), nprocs=WORLD, join=True
        )
        return [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(WORLD)]


def _backends() -> list[str]:
    triton = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
    return ["torch", "triton"] if triton and fl.backend.triton_available() else ["torch"]


RUNS = [
    (case, backend, unbalanced, True)
    for case in CASES
    for backend in _backends()
    for unbalanced in (False, True)
]
# The gloo ranks hold CPU tensors; with the compiled kernels (a GPU machine, interpreter off) the
# triton backend needs CUDA tensors, so its runs are CI's (the interpreter) and skip there.
CPU_ONLY_RANKS = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
SPAWNED = [run for run in RUNS if not (CPU_ONLY_RANKS and run[1] == "triton")]
_RANKS_SKIP = pytest.mark.skip(
    reason="gloo ranks with CPU tensors; the compiled triton backend needs CUDA tensors (this "
    "run is checked under Triton's interpreter on CPU)"
)
RUN_PARAMS = [
    pytest.param(run, marks=() if run in SPAWNED else _RANKS_SKIP,
                 id=f"{run[0]}-{run[1]}-{'unbal' if run[2] else 'bal'}")
    for run in RUNS
]  # fmt: skip


@pytest.fixture(scope="module")
def ddp_results() -> dict:
    """Every run of SPAWNED (and the control runs without the option) on 2 gloo ranks, once."""
    controls = [("focal_weight", "torch", True, False), ("gap_detection", "torch", True, False)]
    ranks = _spawn(SPAWNED + controls)
    return {run: [ranks[r][i] for r in range(WORLD)] for i, run in enumerate(SPAWNED + controls)}


def _single(case: str, backend: str, unbalanced: bool):
    make, channels, _ = CASES[case]
    return _step(_model(channels), case, make(0, unbalanced), backend, True)


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("run", RUN_PARAMS)
def test_ddp_step_equals_one_process(ddp_results, run):
    case, backend, unbalanced, _ = run
    loss, comps, grads = _single(case, backend, unbalanced)
    assert torch.isfinite(loss)
    for rank, (r_loss, r_comps, r_grads) in enumerate(ddp_results[run]):
        assert abs(r_loss - loss) <= TOL * max(abs(loss), 1), (
            f"rank {rank}: loss {r_loss} != {loss}"
        )
        if comps is not None:
            assert _close(r_comps, comps) <= TOL, f"rank {rank}: components {r_comps} != {comps}"
        for i, (g, ref) in enumerate(zip(r_grads, grads)):
            assert _close(g, ref) <= TOL, f"rank {rank}: gradient {i} differs ({_close(g, ref)})"


@pytest.mark.parametrize("case", ["focal_weight", "gap_detection"])
def test_without_the_option_ddp_differs(ddp_results, case):
    """The control: each rank normalising by its own denominators gives another loss and other
    averaged gradients on the unbalanced batch (what the option fixes)."""
    loss, _, grads = _single(case, "torch", True)
    ranks = ddp_results[(case, "torch", True, False)]
    assert max(abs(r_loss - loss) for r_loss, _, _ in ranks) > 1e-3 * abs(loss)
    r_grads = ranks[0][2]  # DDP's averaged gradients (the same on both ranks)
    assert max(_close(g, ref) for g, ref in zip(r_grads, grads)) > 1e-3


def test_option_is_a_no_op_without_a_process_group():
    batch = _focal_batch(0, False)
    x = torch.sigmoid(_model(1)(batch["feats"]))
    on = fl.masked_focal_loss(x, batch["target"], batch["weight"], reduce_across_ranks=True)
    off = fl.masked_focal_loss(x, batch["target"], batch["weight"])
    assert not dist.is_initialized()
    assert torch.equal(on, off)


def test_bad_options():
    with pytest.raises(TypeError, match="reduce_across_ranks"):
        fl.GapDetectionLoss(reduce_across_ranks=1)
    with pytest.raises(TypeError, match="process_group"):
        fl.MaskedFocalLoss(process_group="world")
    with pytest.raises(TypeError, match="reduce_across_ranks"):
        fl.reg_l1_loss(
            torch.zeros(1, 2, 4, 4), torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.long),
            torch.zeros(1, 1, 2), reduce_across_ranks="yes",
        )  # fmt: skip


def test_every_loss_module_has_the_option():
    for name in fl.__all__:
        obj = getattr(fl, name)
        if isinstance(obj, type) and issubclass(obj, fl.LossModule) and obj is not fl.LossModule:
            opts = obj(reduce_across_ranks=True).options
            assert opts.reduce_across_ranks is True and opts.process_group is None, name


def test_ddp_world_size_factor_documented():
    """The docstring states the factor users get wrong."""
    doc = fl.distributed.__doc__
    assert "R * dN_r / D" in doc and "world size" in doc
