"""The CenterNet family against its literal reference (reference/centernet.py, CenterNet's code).

Losses: both backends against the reference evaluated in float64 on the same values, with a random
upstream gradient, at the tolerances of spec section 6. Targets: the same integers (ind, reg_mask)
and the same floats (hm, wh, reg) as the per-box loop of ctdet.py. The triton backend runs through
Triton's interpreter on CPU tensors when there is no GPU; the cases are kept small for it.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from conftest import (
    DEVICE,
    TOLERANCES,
    assert_grad_close,
    assert_scalar_close,
    upstream_scalar,
)
from fused_losses.reference import centernet as R

import fused_losses.centernet as fc
import fused_losses.centernet_labels as ft
from fused_losses.backend import interpreter_on

F32, F64 = torch.float32, torch.float64


def _skip_unavailable(backend: str) -> None:
    if backend == "triton" and DEVICE == "cpu" and not interpreter_on():
        pytest.skip("triton backend needs CUDA or TRITON_INTERPRET=1")


def make_boxes(
    batch: int,
    n: int,
    size: tuple[int, int],
    *,
    num_classes: int,
    down_ratio: int = 4,
    seed: int = 0,
    max_side: float = 40.0,
    dtype: torch.dtype = F32,
):
    """Random boxes in input pixels: mostly on the map, some crossing or beyond its border, some
    thinner than a cell, a repeated box (duplicate ind), some masked; labels may be out of range."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    img = torch.tensor([w * down_ratio, h * down_ratio], dtype=F64)
    ctr = torch.rand(batch, n, 2, generator=g, dtype=F64) * img * 1.2 - 0.1 * img
    side = torch.rand(batch, n, 2, generator=g, dtype=F64) * max_side + 0.3
    boxes = torch.cat([ctr - side / 2, ctr + side / 2], dim=-1)
    if n >= 3:
        boxes[:, 1] = boxes[:, 0]  # same centre: duplicate ind, max-merged Gaussians
        boxes[0, 2] = torch.tensor([-50.0, -40.0, -10.0, -5.0])  # clipped to nothing
    labels = torch.randint(0, num_classes, (batch, n), generator=g)
    if n >= 4:
        labels[-1, 3] = num_classes  # out of range: dropped
    box_mask = torch.rand(batch, n, generator=g) > 0.2
    return boxes.to(dtype), labels, box_mask


def check_targets(got: dict, ref: dict) -> None:
    assert set(got) == set(ft.TARGET_KEYS)
    for key in ("ind", "reg_mask"):
        assert got[key].dtype == ref[key].dtype, key
        assert torch.equal(got[key].cpu(), ref[key]), key
    for key in ("hm", "wh", "reg"):
        assert got[key].dtype == ref[key].dtype, key
        assert got[key].shape == ref[key].shape, key
        torch.testing.assert_close(got[key].cpu(), ref[key], rtol=1e-6, atol=1e-7, msg=key)


# ----------------------------------------------------------------------------------------------
# Targets.


def test_gaussian_radius_matches_centernet_exactly():
    sides = torch.arange(1, 160, dtype=F64)
    hh, ww = torch.meshgrid(sides, sides, indexing="ij")
    got = ft.gaussian_radius_tensor(hh, ww)
    ref = torch.tensor(
        [[R.gaussian_radius((int(a), int(b))) for b in sides] for a in sides], dtype=F64
    )
    assert torch.equal(got, ref)


@pytest.mark.parametrize(
    "case",
    [
        dict(batch=2, n=7, size=(12, 20), num_classes=3, seed=0),
        dict(batch=1, n=5, size=(9, 7), num_classes=2, seed=1, max_side=120.0),  # big radii
        dict(batch=2, n=4, size=(16, 16), num_classes=1, seed=2, dtype=F64),
        dict(batch=1, n=6, size=(10, 13), num_classes=2, seed=3, down_ratio=3, max_side=3.0),
    ],
    ids=["basic", "big-boxes", "float64", "down3-tiny"],
)
def test_targets_match_ctdet(backend, case):
    _skip_unavailable(backend)
    down_ratio = case.get("down_ratio", 4)
    boxes, labels, box_mask = make_boxes(**case)
    kw = dict(num_classes=case["num_classes"], output_size=case["size"], down_ratio=down_ratio)
    ref = R.centernet_targets(boxes, labels, box_mask, **kw)
    got = ft.centernet_targets(
        boxes.to(DEVICE), labels.to(DEVICE), box_mask.to(DEVICE), **kw, backend=backend
    )
    check_targets(got, ref)
    assert ref["reg_mask"].any() and not ref["reg_mask"].all()


def test_targets_radius_at_an_integer(backend):
    """(ceil h, ceil w) = (15, 70) and (30, 140): gaussian_radius = 7.000000000000007 and
    14.000000000000014, where a sqrt off by one ulp (torch's CPU kernel) or an FMA contraction
    (a GPU compiler) gives int(radius) = 6 and 13."""
    _skip_unavailable(backend)
    boxes = torch.tensor([[[0.0, 0.0, 278.5, 57.5], [4.0, 8.0, 564.0, 127.5]]])
    labels = torch.zeros(1, 2, dtype=torch.long)
    kw = dict(num_classes=1, output_size=(40, 150))
    ref = R.centernet_targets(boxes, labels, None, **kw)
    got = ft.centernet_targets(boxes.to(DEVICE), labels.to(DEVICE), None, **kw, backend=backend)
    check_targets(got, ref)
    assert int(R.gaussian_radius((15, 70))) == 7 and int(R.gaussian_radius((30, 140))) == 14


def test_targets_empty_cases(backend):
    _skip_unavailable(backend)
    size, k = (8, 10), 2
    kw = dict(num_classes=k, output_size=size)
    boxes, labels, box_mask = make_boxes(2, 3, size, num_classes=k, seed=4)
    cases = {
        "all masked": (boxes, labels, torch.zeros_like(box_mask)),
        "all off the map": (boxes - 1000.0, labels, None),
        "degenerate": (torch.full_like(boxes, 7.0), labels, box_mask),
        "no boxes": (boxes[:, :0], labels[:, :0], box_mask[:, :0]),
    }
    for name, (bx, lb, bm) in cases.items():
        ref = R.centernet_targets(bx, lb, bm, **kw)
        assert not ref["reg_mask"].any(), name
        dev = None if bm is None else bm.to(DEVICE)
        got = ft.centernet_targets(bx.to(DEVICE), lb.to(DEVICE), dev, **kw, backend=backend)
        check_targets(got, ref)


def test_targets_one_launch_and_int32_labels():
    pytest.importorskip("triton")
    if DEVICE == "cpu" and not interpreter_on():
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    from fused_losses.kernels.launch import launch_count, reset_launch_count

    boxes, labels, box_mask = make_boxes(1, 4, (8, 8), num_classes=2, seed=5)
    kw = dict(num_classes=2, output_size=(8, 8))
    ref = R.centernet_targets(boxes, labels, box_mask, **kw)
    reset_launch_count()
    got = ft.centernet_targets(
        boxes.to(DEVICE),
        labels.int().to(DEVICE),
        box_mask.to(torch.uint8).to(DEVICE),
        **kw,
        backend="triton",
    )
    assert launch_count() == 1
    check_targets(got, ref)


# ----------------------------------------------------------------------------------------------
# Losses.


def _focal_inputs(seed: int, *, positives: bool, shape=(2, 3, 6, 7)):
    g = torch.Generator().manual_seed(seed)
    pred = R.clamped_sigmoid(torch.randn(shape, generator=g, dtype=F64) * 3)
    gt = torch.rand(shape, generator=g, dtype=F64) ** 3
    gt[gt > 0.9] = 0.9
    if positives:
        gt[0, 1, 2, 3] = 1.0
        gt[1, 0, 5, 6] = 1.0
        gt[1, 2, 0, 0] = 1.0
    return pred, gt


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("positives", [True, False], ids=["pos", "no-pos"])
def test_focal_matches_neg_loss(backend, dtype, positives):
    _skip_unavailable(backend)
    loss_tol, grad_tol = TOLERANCES[dtype]
    pred, gt = _focal_inputs(1, positives=positives)
    x = pred.to(dtype).to(DEVICE).requires_grad_()
    r = upstream_scalar(3)
    loss = fc.CenterNetFocalLoss(backend=backend)(x, gt.to(dtype).to(DEVICE))
    (loss * r).backward()
    xr = x.detach().cpu().to(F64).requires_grad_()
    ref = R.centernet_focal_loss(xr, gt.to(dtype).to(F64))
    (ref * r).backward()
    assert loss.dim() == 0 and loss.dtype == dtype
    assert_scalar_close(loss, ref, loss_tol)
    assert_grad_close(x.grad, xr.grad, grad_tol)


def _reg_inputs(seed, *, weighted, b=2, c=3, h=5, w=6, m=7, mask_dtype=torch.uint8):
    g = torch.Generator().manual_seed(seed)
    output = torch.randn(b, c, h, w, generator=g, dtype=F64)
    ind = torch.randint(0, h * w, (b, m), generator=g)
    if m >= 5:
        ind[0, 1] = ind[0, 2] = ind[0, 4]  # duplicates accumulate
        ind[1, 3] = 0
    shape = (b, m, c) if weighted else (b, m)
    mask = torch.rand(shape, generator=g) > 0.3
    mask = mask.to(mask_dtype)
    target = torch.randn(b, m, c, generator=g, dtype=F64)
    if m > 0:  # one entry exactly on target: l1's subgradient there is 0 (torch's sign(0))
        target[0, 0] = output[0, :, ind[0, 0] // w, ind[0, 0] % w]
    return output, mask, ind, target


def _run_reg(fn, ref_fn, backend, output, mask, ind, target, dtype, seed, transform=None):
    loss_tol, grad_tol = TOLERANCES[dtype]
    leaf = output.to(dtype).to(DEVICE).requires_grad_()
    x = transform(leaf) if transform is not None else leaf
    args = (mask.to(DEVICE), ind.to(DEVICE), target.to(dtype).to(DEVICE))
    loss = fn(x, *args, backend=backend)
    r = upstream_scalar(seed)
    (loss * r).backward()
    xr = leaf.detach().cpu().to(F64).requires_grad_()
    ref = ref_fn(
        transform(xr) if transform is not None else xr, mask, ind, target.to(dtype).to(F64)
    )
    (ref * r).backward()
    assert loss.dim() == 0 and loss.dtype == dtype
    assert_scalar_close(loss, ref, loss_tol)
    assert_grad_close(leaf.grad, xr.grad, grad_tol)
    return loss, leaf.grad


@pytest.mark.parametrize("weighted", [False, True], ids=["RegL1", "RegWeightedL1"])
@pytest.mark.parametrize(
    "variant", ["f32", "f64", "bool-mask", "float-mask", "channels-last", "empty-mask", "M=0"]
)
def test_reg_l1_matches_centernet(backend, weighted, variant):
    _skip_unavailable(backend)
    dtype = F64 if variant == "f64" else F32
    mask_dtype = {"bool-mask": torch.bool, "float-mask": F32}.get(variant, torch.uint8)
    output, mask, ind, target = _reg_inputs(
        7, weighted=weighted, mask_dtype=mask_dtype, m=0 if variant == "M=0" else 7
    )
    if variant == "float-mask":
        mask = mask * torch.rand(mask.shape, generator=torch.Generator().manual_seed(1))
    if variant == "empty-mask":
        mask = torch.zeros_like(mask)
    transform = None
    if variant == "channels-last":
        transform = lambda t: t.contiguous(memory_format=torch.channels_last)[:, :, 1:, :-1]
        ind = ind % ((output.shape[2] - 1) * (output.shape[3] - 1))
    fn = fc.reg_weighted_l1_loss if weighted else fc.reg_l1_loss
    ref_fn = R.reg_weighted_l1_loss if weighted else R.reg_l1_loss
    loss, grad = _run_reg(fn, ref_fn, backend, output, mask, ind, target, dtype, 11, transform)
    if variant in ("empty-mask", "M=0"):
        assert float(loss.detach()) == 0.0 and not grad.any()


@pytest.mark.parametrize("variant", ["f32", "f64", "bool-mask", "float-mask", "empty-mask", "M=0"])
def test_reg_smooth_l1_matches_regloss(backend, variant):
    """CenterNet's RegLoss: smooth-L1 over the number of objects (not object-channels)."""
    _skip_unavailable(backend)
    dtype = F64 if variant == "f64" else F32
    mask_dtype = {"bool-mask": torch.bool, "float-mask": F32}.get(variant, torch.uint8)
    output, mask, ind, target = _reg_inputs(
        8, weighted=False, mask_dtype=mask_dtype, m=0 if variant == "M=0" else 7
    )
    target = target * 3  # both branches of the smooth-L1
    if variant == "float-mask":
        mask = mask * torch.rand(mask.shape, generator=torch.Generator().manual_seed(2))
    if variant == "empty-mask":
        mask = torch.zeros_like(mask)
    loss, grad = _run_reg(
        fc.reg_smooth_l1_loss, R.reg_smooth_l1_loss, backend, output, mask, ind, target, dtype, 12
    )
    if variant in ("empty-mask", "M=0"):
        assert float(loss.detach()) == 0.0 and not grad.any()
    args = (output.to(dtype).to(DEVICE), mask.to(DEVICE), ind.to(DEVICE), target.to(DEVICE))
    assert torch.equal(
        fc.RegLoss(backend=backend)(*args), fc.reg_smooth_l1_loss(*args, backend=backend)
    )


def test_reg_modules_and_no_grad(backend):
    _skip_unavailable(backend)
    output, mask, ind, target = _reg_inputs(2, weighted=False)
    args = (output.float().to(DEVICE), mask.to(DEVICE), ind.to(DEVICE), target.float().to(DEVICE))
    ref = R.reg_l1_loss(output, mask, ind, target.float().double())
    assert_scalar_close(fc.RegL1Loss(backend=backend)(*args), ref, 1e-5)
    with torch.no_grad():
        assert_scalar_close(fc.reg_l1_loss(*args, backend=backend), ref, 1e-5)
    wmask = mask[..., None].expand(*mask.shape, 3)
    assert_scalar_close(
        fc.RegWeightedL1Loss(backend=backend)(args[0], wmask.to(DEVICE), *args[2:]),
        R.reg_weighted_l1_loss(output, wmask, ind, target),
        1e-5,
    )


@pytest.mark.parametrize("dtype", [F32, torch.float16])
def test_transpose_and_gather_feat(backend, dtype):
    _skip_unavailable(backend)
    output, _, ind, _ = _reg_inputs(3, weighted=False)
    leaf = output.to(dtype).to(DEVICE).requires_grad_()
    x = leaf.contiguous(memory_format=torch.channels_last)
    got = fc.transpose_and_gather_feat(x, ind.to(DEVICE), backend=backend)
    ref_leaf = leaf.detach().cpu().to(F64).requires_grad_()
    ref = R.transpose_and_gather_feat(ref_leaf, ind)
    assert got.shape == ref.shape and got.dtype == dtype
    assert torch.equal(got.detach().cpu().to(F64), ref.detach())
    up = torch.randn(ref.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    (got * up.to(dtype).to(DEVICE)).sum().backward()
    (ref * up.to(dtype).to(F64)).sum().backward()
    assert_grad_close(leaf.grad, ref_leaf.grad, TOLERANCES[dtype][1])


def test_reg_l1_triton_launches_and_determinism():
    _skip_unavailable("triton")
    from fused_losses.kernels.launch import launch_count, reset_launch_count

    output, mask, ind, target = _reg_inputs(4, weighted=False)
    grads = []
    for _ in range(2):
        x = output.float().to(DEVICE).requires_grad_()
        reset_launch_count()
        loss = fc.reg_l1_loss(x, mask.to(DEVICE), ind.to(DEVICE), target.float().to(DEVICE),
                              backend="triton")  # fmt: skip
        assert launch_count() == 2  # gather-and-reduce + fixed-order finalize
        loss.backward()
        assert launch_count() == 3  # one deterministic scatter
        grads.append(x.grad)
    assert torch.equal(grads[0], grads[1])


# ----------------------------------------------------------------------------------------------
# The ctdet total.


def _ctdet_problem(seed: int, *, b=2, k=3, size=(10, 12), n=6, masked=False):
    h, w = size
    boxes, labels, box_mask = make_boxes(b, n, size, num_classes=k, seed=seed)
    if masked:
        box_mask = torch.zeros_like(box_mask)
    g = torch.Generator().manual_seed(100 + seed)
    hm = R.clamped_sigmoid(torch.randn(b, k, h, w, generator=g, dtype=F64) * 2 - 2)
    wh = torch.randn(b, 2, h, w, generator=g, dtype=F64) * 4 + 6
    reg = torch.rand(b, 2, h, w, generator=g, dtype=F64)
    return (hm, wh, reg), (boxes, labels, box_mask)


@pytest.mark.parametrize("mode", ["targets", "boxes", "boxes-module", "all-masked"])
def test_centernet_loss_matches_ctdet(backend, mode):
    _skip_unavailable(backend)
    dtype = F32
    loss_tol, grad_tol = TOLERANCES[dtype]
    heads, (boxes, labels, box_mask) = _ctdet_problem(6, masked=mode == "all-masked")
    h, w = heads[0].shape[-2:]
    kw = dict(num_classes=heads[0].shape[1], output_size=(h, w))
    targets = R.centernet_targets(boxes, labels, box_mask, **kw)
    weights = dict(hm_weight=1.3, wh_weight=0.1, off_weight=0.7)

    leaves = [t.to(dtype).to(DEVICE).requires_grad_() for t in heads]
    if mode == "targets":
        batch = {k: v.to(DEVICE) for k, v in targets.items()}
        batch["meta"] = "ignored"  # CenterNet's batch dicts carry more keys
        total, comps = fc.centernet_loss(
            *leaves, batch, **weights, return_components=True, backend=backend
        )
    else:
        raw = dict(boxes=boxes.to(DEVICE), labels=labels.to(DEVICE), box_mask=box_mask.to(DEVICE))
        if mode == "boxes-module":
            crit = fc.CenterNetLoss(**weights, backend=backend)
            total, comps = crit(*leaves, **raw, return_components=True)
        else:
            total, comps = fc.centernet_loss(
                *leaves, **raw, **weights, return_components=True, backend=backend
            )
    r = upstream_scalar(8)
    (total * r).backward()

    ref_leaves = [t.detach().cpu().to(F64).requires_grad_() for t in leaves]
    ref_total, ref_comps = R.centernet_loss(*ref_leaves, targets, **weights)
    (ref_total * r).backward()

    assert total.dim() == 0 and total.dtype == dtype
    assert_scalar_close(total, ref_total, loss_tol, "total")
    assert set(comps) == {"hm", "wh", "off"}
    for name, value in comps.items():
        assert value.dim() == 0 and not value.requires_grad
        assert_scalar_close(value, ref_comps[name], loss_tol, name)
    for name, leaf, ref_leaf in zip(("hm", "wh", "reg"), leaves, ref_leaves):
        assert_grad_close(leaf.grad, ref_leaf.grad, grad_tol, f"grad {name}")
    if mode == "all-masked":
        assert float(comps["wh"]) == 0.0 and float(comps["off"]) == 0.0


@pytest.mark.parametrize("reg_loss", ["l1", "sl1"])
@pytest.mark.parametrize("mode", ["targets", "boxes"])
def test_centernet_loss_stacks_and_reg_loss(backend, reg_loss, mode):
    """A list of S stacks per head: every term averaged over the stacks (CtdetLoss with
    num_stacks = S), the regressions L1 or RegLoss's smooth-L1."""
    _skip_unavailable(backend)
    stacks = [_ctdet_problem(s)[0] for s in (6, 7)]
    _, (boxes, labels, box_mask) = _ctdet_problem(6)
    h, w = stacks[0][0].shape[-2:]
    targets = R.centernet_targets(
        boxes, labels, box_mask, num_classes=stacks[0][0].shape[1], output_size=(h, w)
    )
    leaves = [[t.float().to(DEVICE).requires_grad_() for t in st] for st in stacks]
    heads = [[st[i] for st in leaves] for i in range(3)]  # hm, wh, reg: one tensor per stack
    if mode == "targets":
        kw = dict(targets={k: v.to(DEVICE) for k, v in targets.items()})
    else:
        kw = dict(boxes=boxes.to(DEVICE), labels=labels.to(DEVICE), box_mask=box_mask.to(DEVICE))
    total, comps = fc.centernet_loss(
        *heads, **kw, reg_loss=reg_loss, return_components=True, backend=backend
    )
    total.backward()
    ref_leaves = [[t.detach().double().cpu().requires_grad_() for t in st] for st in leaves]
    ref_heads = [[st[i] for st in ref_leaves] for i in range(3)]
    ref_total, ref_comps = R.centernet_loss(*ref_heads, targets, reg_loss=reg_loss)
    ref_total.backward()
    assert_scalar_close(total, ref_total, 1e-5, "total")
    for name in ("hm", "wh", "off"):
        assert_scalar_close(comps[name], ref_comps[name], 1e-5, name)
    for st, ref_st in zip(leaves, ref_leaves):
        for leaf, ref_leaf in zip(st, ref_st):
            assert_grad_close(leaf.grad, ref_leaf.grad, 1e-5)
    single = fc.centernet_loss(*[x[0] for x in heads], **kw, reg_loss=reg_loss, backend=backend)
    assert not torch.equal(total, single)


def test_centernet_loss_stack_errors():
    (hm, wh, reg), _ = _ctdet_problem(6)
    t = R.centernet_targets(*_ctdet_problem(6)[1], num_classes=3, output_size=(10, 12))
    with pytest.raises(ValueError, match="stacks"):
        fc.centernet_loss([hm, hm], [wh], [reg, reg], t)
    with pytest.raises(ValueError, match="hm"):
        fc.centernet_loss([], [], [], t)
    with pytest.raises(ValueError, match="reg_loss"):
        fc.CenterNetLoss(reg_loss="l2")


def test_clamped_sigmoid():
    x = torch.tensor([-20.0, -1.0, 0.0, 3.0, 20.0])
    torch.testing.assert_close(fc.clamped_sigmoid(x), R.clamped_sigmoid(x))
    assert fc.clamped_sigmoid(x).min() == 1e-4 and fc.clamped_sigmoid(x).max() <= 1 - 1e-4


# ----------------------------------------------------------------------------------------------
# Bad input: ValueError / TypeError naming the argument, before any kernel runs.


def _bad_calls():
    b, c, h, w, m = 2, 2, 5, 6, 4
    out = torch.rand(b, c, h, w)
    mask = torch.ones(b, m)
    ind = torch.zeros(b, m, dtype=torch.long)
    tgt = torch.rand(b, m, c)
    boxes = torch.rand(b, 3, 4) * 20
    labels = torch.zeros(b, 3, dtype=torch.long)
    hm = torch.rand(b, 3, h, w) * 0.5
    targets = {
        "hm": hm,
        "wh": tgt,
        "reg": tgt,
        "ind": ind,
        "reg_mask": mask,
    }
    tk = dict(num_classes=3, output_size=(h, w))
    return [
        ("output", TypeError, lambda: fc.reg_l1_loss(out.long(), mask, ind, tgt)),
        ("output", ValueError, lambda: fc.reg_l1_loss(out[0], mask, ind, tgt)),
        ("ind", TypeError, lambda: fc.reg_l1_loss(out, mask, ind.float(), tgt)),
        ("ind", ValueError, lambda: fc.reg_l1_loss(out, mask, ind[:1], tgt)),
        ("target", ValueError, lambda: fc.reg_l1_loss(out, mask, ind, tgt[..., :1])),
        ("mask", ValueError, lambda: fc.reg_l1_loss(out, mask[..., None], ind, tgt)),
        ("mask", ValueError, lambda: fc.reg_weighted_l1_loss(out, mask, ind, tgt)),
        ("mask", TypeError, lambda: fc.reg_l1_loss(out, mask.tolist(), ind, tgt)),
        ("backend", ValueError, lambda: fc.reg_l1_loss(out, mask, ind, tgt, backend="cuda")),
        ("gt", ValueError, lambda: fc.centernet_focal_loss(hm, hm[:, :1])),
        ("pred", TypeError, lambda: fc.centernet_focal_loss(hm.long(), hm)),
        ("feat", ValueError, lambda: fc.transpose_and_gather_feat(out[0], ind)),
        ("ind", TypeError, lambda: fc.transpose_and_gather_feat(out, ind.bool())),
        ("boxes", ValueError, lambda: ft.centernet_targets(boxes[..., :3], labels, None, **tk)),
        ("labels", TypeError, lambda: ft.centernet_targets(boxes, labels.float(), None, **tk)),
        ("labels", ValueError, lambda: ft.centernet_targets(boxes, labels[:, :2], None, **tk)),
        ("box_mask", ValueError, lambda: ft.centernet_targets(boxes, labels, mask, **tk)),
        (
            "num_classes",
            ValueError,
            lambda: ft.centernet_targets(boxes, labels, None, num_classes=0, output_size=(h, w)),
        ),
        (
            "output_size",
            ValueError,
            lambda: ft.centernet_targets(boxes, labels, None, num_classes=3, output_size=(h,)),
        ),
        (
            "output_size",
            ValueError,
            lambda: ft.centernet_targets(
                boxes, labels, None, num_classes=3, output_size=(70000, 2)
            ),
        ),
        (
            "output_size",
            ValueError,
            lambda: ft.centernet_targets(
                boxes, labels, None, num_classes=3, output_size=(65536, 65536)
            ),
        ),
        (
            "down_ratio",
            ValueError,
            lambda: ft.centernet_targets(boxes, labels, None, **tk, down_ratio=0),
        ),
        ("wh", ValueError, lambda: fc.centernet_loss(hm, out[:, :, :-1], out, targets)),
        ("hm", TypeError, lambda: fc.centernet_loss(hm.long(), out, out, targets)),
        ("targets, boxes", ValueError, lambda: fc.centernet_loss(hm, out, out)),
        (
            "targets, boxes",
            ValueError,
            lambda: fc.centernet_loss(hm, out, out, targets, boxes=boxes, labels=labels),
        ),
        ("targets", TypeError, lambda: fc.centernet_loss(hm, out, out, [targets])),
        ("targets", ValueError, lambda: fc.centernet_loss(hm, out, out, {"hm": hm})),
        (
            "targets['hm']",
            ValueError,
            lambda: fc.centernet_loss(hm, out, out, {**targets, "hm": hm[:, :1]}),
        ),
        (
            "targets['ind']",
            TypeError,
            lambda: fc.centernet_loss(hm, out, out, {**targets, "ind": ind.float()}),
        ),
        (
            "targets['wh']",
            ValueError,
            lambda: fc.centernet_loss(hm, out, out, {**targets, "wh": tgt[:, :1]}),
        ),
        ("labels", ValueError, lambda: fc.centernet_loss(hm, out, out, boxes=boxes)),
        (
            "boxes",
            ValueError,
            lambda: fc.centernet_loss(hm, out, out, boxes=boxes[:1], labels=labels[:1]),
        ),
        ("wh_weight", TypeError, lambda: fc.CenterNetLoss(wh_weight="0.1")),
        ("backend", ValueError, lambda: fc.CenterNetLoss(backend="gpu")),
    ]


@pytest.mark.parametrize("idx", range(len(_bad_calls())))
def test_bad_input_names_the_argument(idx, monkeypatch):
    name, exc, call = _bad_calls()[idx]
    monkeypatch.setenv("FUSED_LOSSES_BACKEND", "triton" if interpreter_on() else "torch")
    try:
        from fused_losses.kernels.launch import launch_count, reset_launch_count
    except ImportError:  # no triton: nothing can launch
        launch_count = reset_launch_count = lambda: 0
    reset_launch_count()
    with pytest.raises(exc) as info:
        call()
    assert str(info.value).startswith(name) or f"{name}:" in str(info.value), str(info.value)
    assert launch_count() == 0


# ----------------------------------------------------------------------------------------------
# The triton heatmap term from raw boxes (targets rebuilt in registers, gradient written in the
# forward): positives counted from the boxes, tiles, dtypes, launches, retained graphs.


def _hm_from_boxes(hm, boxes, labels, box_mask, upstream, dtype):
    """(loss, grad) of the heatmap term through centernet_loss (wh/off weights 0) and the float64
    reference on the same inputs."""
    x = hm.to(dtype).to(DEVICE).requires_grad_()
    z = torch.zeros(hm.shape[0], 2, *hm.shape[2:], dtype=dtype, device=DEVICE)
    raw = dict(boxes=boxes.to(DEVICE), labels=labels.to(DEVICE), box_mask=box_mask.to(DEVICE))
    total = fc.centernet_loss(x, z, z, **raw, wh_weight=0.0, off_weight=0.0, backend="triton")
    (grad,) = torch.autograd.grad(total, x, grad_outputs=torch.tensor(upstream, device=DEVICE))
    xr = x.detach().cpu().to(F64).requires_grad_()
    kw = dict(num_classes=hm.shape[1], output_size=tuple(hm.shape[-2:]))
    ref = R.centernet_focal_loss(xr, R.centernet_targets(boxes, labels, box_mask, **kw)["hm"])
    (ref_grad,) = torch.autograd.grad(ref, xr, grad_outputs=torch.tensor(upstream, dtype=F64))
    return (total, grad), (ref, ref_grad)


@pytest.mark.parametrize("dtype", [F32, torch.float64, torch.float16])
def test_hm_from_boxes_duplicate_centres_and_tiles(monkeypatch, dtype):
    """Two boxes of one class sharing a centre make one positive, the same centre in another
    class another one; 64 cells per program and 4 boxes per step force many tiles and steps."""
    _skip_unavailable("triton")
    import fused_losses.kernels.centernet as KC

    monkeypatch.setattr(KC, "HM_BLOCK", 64)
    monkeypatch.setattr(KC, "BOXES_BLOCK_N", 4)
    boxes, labels, box_mask = make_boxes(2, 9, (10, 12), num_classes=3, seed=21)
    boxes[0, 1] = boxes[0, 0]  # same box twice ...
    labels[0, 1] = labels[0, 0]
    boxes[0, 2] = boxes[0, 0] + torch.tensor([-2.0, -2.0, 2.0, 2.0])  # same centre, larger
    labels[0, 2] = labels[0, 0]
    boxes[0, 3] = boxes[0, 0]  # same centre, another class
    labels[0, 3] = (labels[0, 0] + 1) % 3
    box_mask[0, :4] = True
    g = torch.Generator().manual_seed(22)
    hm = R.clamped_sigmoid(torch.randn(2, 3, 10, 12, generator=g, dtype=F64) * 2 - 2)
    (loss, grad), (ref, ref_grad) = _hm_from_boxes(hm, boxes, labels, box_mask, 0.7, dtype)
    loss_tol, grad_tol = TOLERANCES[dtype]
    assert_scalar_close(loss, ref, loss_tol, "hm loss")
    assert grad.dtype == dtype
    assert_grad_close(grad, ref_grad, grad_tol, "grad hm")


def test_hm_from_boxes_launches_and_retained_graph():
    """Forward: boxes, 1/num_pos, the heatmap pass, its total (+ 2 x 2 for the regressions);
    backward: the in-place scaling (+ 2 scatters). A second backward through the retained graph
    recomputes instead of scaling twice."""
    _skip_unavailable("triton")
    from fused_losses.kernels.launch import launch_count, reset_launch_count

    heads, (boxes, labels, box_mask) = _ctdet_problem(23)
    leaves = [t.float().to(DEVICE).requires_grad_() for t in heads]
    raw = dict(boxes=boxes.to(DEVICE), labels=labels.to(DEVICE), box_mask=box_mask.to(DEVICE))
    reset_launch_count()
    total = fc.centernet_loss(*leaves, **raw, backend="triton")
    assert launch_count() == 4 + 4
    refs = [t.detach().cpu().to(F64).requires_grad_() for t in leaves]
    kw = dict(num_classes=heads[0].shape[1], output_size=tuple(heads[0].shape[-2:]))
    ref_total, _ = R.centernet_loss(*refs, R.centernet_targets(boxes, labels, box_mask, **kw))
    for upstream in (2.0, 0.5):
        up = torch.tensor(upstream, device=DEVICE)
        reset_launch_count()
        grads = torch.autograd.grad(total, leaves, grad_outputs=up, retain_graph=True)
        assert launch_count() == 3
        ref_grads = torch.autograd.grad(
            ref_total, refs, grad_outputs=torch.tensor(upstream, dtype=F64), retain_graph=True
        )
        for name, g, gr in zip(("hm", "wh", "reg"), grads, ref_grads):
            assert_grad_close(g, gr, 1e-5, f"grad {name} (upstream {upstream})")


def test_nan_box_is_dropped(backend):
    """docs/spec.md 8: a box with a NaN coordinate is dropped like a masked-out one, on both
    backends, by the targets and by the loss from raw boxes (the heatmap built in registers)."""
    _skip_unavailable(backend)
    size, k = (8, 10), 2
    kw = dict(num_classes=k, output_size=size)
    boxes, labels, box_mask = make_boxes(2, 3, size, num_classes=k, seed=6)
    box_mask = torch.ones_like(box_mask)
    nan_boxes = boxes.clone()
    nan_boxes[0, 1, 2] = float("nan")
    dropped = box_mask.clone()
    dropped[0, 1] = 0
    ref = R.centernet_targets(boxes, labels, dropped, **kw)
    got = ft.centernet_targets(nan_boxes.to(DEVICE), labels.to(DEVICE), None, **kw, backend=backend)
    check_targets(got, ref)
    g = torch.Generator().manual_seed(8)
    hm = torch.rand(2, k, *size, generator=g, dtype=torch.float64) * 0.9 + 0.05
    wh = torch.randn(2, 2, *size, generator=g, dtype=torch.float64)
    reg = torch.rand(2, 2, *size, generator=g, dtype=torch.float64)
    ref_total, _ = R.centernet_loss(hm, wh, reg, ref)
    total = fc.centernet_loss(
        *(x.float().to(DEVICE) for x in (hm, wh, reg)),
        boxes=nan_boxes.to(DEVICE),
        labels=labels.to(DEVICE),
        backend=backend,
    )
    assert_scalar_close(total, ref_total, 1e-5)


def test_empty_object_lists(backend):
    """docs/spec.md 8: M = 0 gathered indices give a 0 regression loss with a zero gradient, and
    N = 0 boxes a loss whose regression terms are 0 and whose focal term is the reference's
    against an all-zero heatmap; both backends."""
    _skip_unavailable(backend)
    g = torch.Generator().manual_seed(9)
    out = torch.rand(2, 2, 4, 5, generator=g, dtype=torch.float64)
    x = out.float().to(DEVICE).requires_grad_()
    ind = torch.zeros(2, 0, dtype=torch.long, device=DEVICE)
    loss = fc.reg_l1_loss(x, torch.zeros(2, 0, device=DEVICE), ind, x.new_zeros(2, 0, 2),
                          backend=backend)  # fmt: skip
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(x.grad.abs().sum()) == 0.0
    assert fc.transpose_and_gather_feat(x, ind, backend=backend).shape == (2, 0, 2)
    hm = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64) * 0.9 + 0.05
    boxes, labels = torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long)
    ref_t = R.centernet_targets(boxes, labels, None, num_classes=3, output_size=(4, 5))
    ref_total, _ = R.centernet_loss(hm, out, out, ref_t)
    total, comps = fc.centernet_loss(
        hm.float().to(DEVICE), x.detach(), x.detach(), boxes=boxes.to(DEVICE),
        labels=labels.to(DEVICE), backend=backend, return_components=True,
    )  # fmt: skip
    assert float(comps["wh"]) == 0.0 and float(comps["off"]) == 0.0
    assert_scalar_close(total, ref_total, 1e-5)


# ----------------------------------------------------------------------------------------------
# Targets are constants; NaN differences in smooth-L1; double-backward names; stack errors.


def test_targets_that_require_grad_are_refused(backend):
    """docs/spec.md 8: a CenterNet target (gt, target, a float mask, a target dict's tensors)
    that requires grad is a ValueError naming it, before any kernel runs: the fused ops gave it
    no gradient without a word. Under torch.no_grad it is taken (nothing is differentiated)."""
    _skip_unavailable(backend)
    from fused_losses.kernels.launch import launch_count, reset_launch_count

    (hm, wh, reg), (boxes, labels, box_mask) = _ctdet_problem(7)
    t = R.centernet_targets(boxes, labels, box_mask, num_classes=3, output_size=(10, 12))
    hm, wh, reg = (x.float().to(DEVICE) for x in (hm, wh, reg))
    t = {k: v.to(DEVICE) for k, v in t.items()}
    t["reg_mask"] = t["reg_mask"].float()
    mask_c = t["reg_mask"][..., None].expand(*t["wh"].shape).contiguous()

    def soft(x):  # e.g. a teacher's output
        return x.to(torch.float32, copy=True).requires_grad_()

    b = dict(backend=backend)
    cases = [
        ("gt", lambda: fc.centernet_focal_loss(hm, soft(t["hm"]), **b)),
        ("gt", lambda: fc.CenterNetFocalLoss(**b)(hm, soft(t["hm"]))),
        ("target", lambda: fc.reg_l1_loss(wh, t["reg_mask"], t["ind"], soft(t["wh"]), **b)),
        ("mask", lambda: fc.reg_l1_loss(wh, soft(t["reg_mask"]), t["ind"], t["wh"], **b)),
        ("target", lambda: fc.reg_weighted_l1_loss(wh, mask_c, t["ind"], soft(t["wh"]), **b)),
        ("mask", lambda: fc.reg_weighted_l1_loss(wh, soft(mask_c), t["ind"], t["wh"], **b)),
        ("target", lambda: fc.reg_smooth_l1_loss(wh, t["reg_mask"], t["ind"], soft(t["wh"]), **b)),
        ("mask", lambda: fc.RegLoss(**b)(wh, soft(t["reg_mask"]), t["ind"], t["wh"])),
        ("target", lambda: fc.RegL1Loss(**b)(wh, t["reg_mask"], t["ind"], soft(t["wh"]))),
    ]
    for key in ("hm", "wh", "reg", "reg_mask"):
        cases.append((f"targets['{key}']", lambda key=key: fc.centernet_loss(
            hm, wh, reg, dict(t, **{key: soft(t[key])}), **b)))  # fmt: skip
    reset_launch_count()
    for name, call in cases:
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"{name}: expected a tensor that does not require grad"), message
        assert message.endswith("got one that requires grad: detach it"), message
    assert launch_count() == 0
    with torch.no_grad():
        got = fc.centernet_loss(hm, wh, reg, {k: soft(v) for k, v in t.items() if k != "ind"}
                                | {"ind": t["ind"]}, **b)  # fmt: skip
    assert torch.equal(got, fc.centernet_loss(hm, wh, reg, t, **b))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's inf * 0
def test_reg_smooth_l1_gradient_of_a_nan_difference_is_nan(backend):
    """RegLoss's smooth-L1 derivative of a NaN difference is NaN, as in the reference and the
    torch backend (clamp keeps NaN); triton's kernels/primitives.smooth_l1_terms gave 0. Here an
    inf head cell read by a masked slot (CenterNet's zero-padded ind): d = (inf - t) * 0. The L1
    losses keep torch.sign's 0 there, as their reference does."""
    _skip_unavailable(backend)
    out = torch.randn(2, 2, 4, 5, generator=torch.Generator().manual_seed(3), dtype=F64)
    out[0, 0, 0, 0] = float("inf")
    out[1, 1, 2, 3] = float("nan")
    ind = torch.tensor([[7, 0, 0], [13, 4, 13]])
    mask = torch.tensor([[1, 0, 0], [0, 1, 1]], dtype=torch.uint8)  # [1, 0] reads the inf masked
    target = torch.rand(2, 3, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    mask_c = mask[..., None].expand(2, 3, 2)
    for fn, ref_fn, m in (
        (fc.reg_smooth_l1_loss, R.reg_smooth_l1_loss, mask),
        (fc.reg_l1_loss, R.reg_l1_loss, mask),
        (fc.reg_weighted_l1_loss, R.reg_weighted_l1_loss, mask_c),
    ):
        xr = out.clone().requires_grad_()
        ref_fn(xr, m, ind, target).backward()
        leaf = out.float().to(DEVICE).requires_grad_()
        loss = fn(leaf, m.to(DEVICE), ind.to(DEVICE), target.float().to(DEVICE), backend=backend)
        loss.backward()
        assert loss.isnan()
        assert xr.grad.isnan().any() == (fn is fc.reg_smooth_l1_loss), fn.__name__
        torch.testing.assert_close(
            leaf.grad.cpu().double(), xr.grad, rtol=1e-5, atol=1e-6, equal_nan=True,
            msg=lambda text, fn=fn: f"{fn.__name__}: {text}",
        )  # fmt: skip


@pytest.mark.parametrize("op", ["reg_l1_loss", "reg_weighted_l1_loss", "reg_smooth_l1_loss"])
def test_double_backward_names_the_regression_op(op, backend):
    """spec 8: "<op> (<backend> backend): double backward" with the op's public name on both
    backends (triton named all three "reg_l1_loss")."""
    _skip_unavailable(backend)
    out = torch.randn(1, 2, 4, 4, device=DEVICE, requires_grad=True)
    ind = torch.tensor([[5, 9]], device=DEVICE)
    mask = torch.ones((1, 2, 2) if op == "reg_weighted_l1_loss" else (1, 2), device=DEVICE)
    target = torch.zeros(1, 2, 2, device=DEVICE)
    loss = getattr(fc, op)(out, mask, ind, target, backend=backend)
    with pytest.raises(RuntimeError, match=rf"^{op} \({backend} backend\): double backward"):
        torch.autograd.grad(loss, out, create_graph=True)


def test_centernet_loss_names_a_wrong_stack_hm(backend):
    """A stack's hm of another shape is named hm[s] (the target dict was blamed: "targets['hm']:
    expected shape ... (as hm)")."""
    (hm, wh, reg), (boxes, labels, box_mask) = _ctdet_problem(8)
    t = R.centernet_targets(boxes, labels, box_mask, num_classes=3, output_size=(10, 12))
    hm, wh, reg = (x.float() for x in (hm, wh, reg))
    pattern = r"^hm\[1\]: expected shape \[2, 3, 10, 12\] \(as hm\[0\]\), got \[2, 3, 10, 6\]"
    with pytest.raises(ValueError, match=pattern):
        fc.centernet_loss([hm, hm[..., :6]], [wh, wh], [reg, reg], t, backend=backend)
