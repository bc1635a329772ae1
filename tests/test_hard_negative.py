"""hard_negative_margin_loss / HardNegativeMarginLoss against the float64 reference (3.3.4, 4)."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import (
    DEVICE,
    assert_grad_close,
    assert_scalar_close,
    check_parity,
    upstream_scalar,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import fused_losses as fl
from fused_losses import reference as R


def hn_inputs(b, h, w, k, *, stride=4, masked, weighted, seed):
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    heatmap = 0.01 + 0.98 * torch.rand(b, 1, h, w, generator=g, dtype=f64)
    extent = torch.tensor([w * stride, h * stride], dtype=f64)
    positive = (torch.rand(b, 2, generator=g, dtype=f64) * 1.1 - 0.05) * extent
    negatives = (torch.rand(b, k, 2, generator=g, dtype=f64) * 1.3 - 0.15) * extent
    if k > 0:  # one negative near the positive so that its hinge is active
        negatives[:, 0] = positive + stride * 0.7
    mask = torch.rand(b, k, generator=g) > 0.25 if masked else None
    weight = None
    if weighted:
        weight = torch.rand(b, 1, h, w, generator=g, dtype=f64)
        weight[:, :, :, : w // 4] = 0  # a padded band on the left
    return dict(
        heatmap=heatmap, positive=positive, negatives=negatives, negative_mask=mask, weight=weight
    )


CASES = list(
    itertools.product(
        [0, 1, 6], [False, True], [False, True], [0.25, 0.7], [torch.float32, torch.float64]
    )
)
PARAMS = [
    pytest.param(
        backend,
        (17, 33) if backend == "triton" or i % 2 else (64, 128),
        *case,
        id=f"{backend}-K{case[0]}-{'mask' if case[1] else 'nomask'}-"
        f"{'weight' if case[2] else 'noweight'}-m{case[3]}-{str(case[4])[6:]}",
    )
    for backend in ("torch", "triton")
    for i, case in enumerate(CASES)
    # triton: every K, mask, weight, margin and dtype, through a covering subset
    if backend == "torch" or i % 3 == 0 or (case[0] == 6 and case[1] and case[2])
]


@pytest.mark.parametrize("backend,size,k,masked,weighted,margin,dt", PARAMS)
def test_hard_negative(backend, size, k, masked, weighted, margin, dt):
    seed = CASES.index((k, masked, weighted, margin, dt))
    for b in (1, 3):
        t = hn_inputs(b, *size, k, masked=masked, weighted=weighted, seed=seed)
        check_parity(
            fl.hard_negative_margin_loss,
            R.hard_negative_margin_loss,
            t,
            grad=("heatmap",),
            backend=backend,
            dtype=dt,
            seed=seed,
            margin=margin,
        )


@pytest.mark.parametrize("stride", [1, 2, 8])
def test_hard_negative_strides(backend, stride):
    t = hn_inputs(2, 16, 32, 5, stride=stride, masked=True, weighted=True, seed=stride)
    check_parity(
        fl.hard_negative_margin_loss,
        R.hard_negative_margin_loss,
        t,
        grad=("heatmap",),
        backend=backend,
        stride=stride,
    )


def corner_case():
    """Binary-exact heatmap values, points exactly on cell corners (samples are exact)."""
    h, w = 6, 8
    heatmap = torch.full((2, 1, h, w), 0.125, dtype=torch.float64)
    heatmap[:, 0, 2, 3] = 0.75  # under the positive
    heatmap[:, 0, 4, 6] = 0.5
    heatmap[:, 0, 1, 1] = 0.625
    positive = torch.tensor([[12.0, 8.0], [12.0, 8.0]], dtype=torch.float64)  # (u, v) = (3, 2)
    negatives = torch.tensor(
        [
            [[24.0, 16.0], [4.0, 4.0], [28.0, 20.0]],  # hinge 0 exactly, active, on last corner
            [[24.0, 16.0], [24.0, 16.0], [0.0, 0.0]],
        ],
        dtype=torch.float64,
    )
    return dict(heatmap=heatmap, positive=positive, negatives=negatives)


def test_margin_kink_has_zero_gradient(backend):
    """hinge = margin - s_pos + s_neg exactly 0: relu'(0) = 0, as torch autograd gives."""
    t = corner_case()
    only_kink = {**t, "negatives": t["negatives"][:, :1]}  # (6, 4): 0.25 - 0.75 + 0.5 = 0
    for dt in (torch.float32, torch.float64):
        loss, _, cand, _ = check_parity(
            fl.hard_negative_margin_loss,
            R.hard_negative_margin_loss,
            only_kink,
            grad=("heatmap",),
            backend=backend,
            dtype=dt,
            margin=0.25,
        )
        assert float(loss.detach()) == 0.0
        assert torch.count_nonzero(cand["heatmap"].grad) == 0
    # margin = 0 and a flat heatmap: every hinge is exactly 0.
    flat = {**t, "heatmap": torch.full_like(t["heatmap"], 0.375)}
    loss, _, cand, _ = check_parity(
        fl.hard_negative_margin_loss,
        R.hard_negative_margin_loss,
        flat,
        grad=("heatmap",),
        backend=backend,
        margin=0.0,
    )
    assert float(loss.detach()) == 0.0
    assert torch.count_nonzero(cand["heatmap"].grad) == 0


def test_points_on_cell_corners(backend):
    """On a corner the sample is the cell's value and the gradient goes to that cell only."""
    t = corner_case()
    loss, _, cand, _ = check_parity(
        fl.hard_negative_margin_loss,
        R.hard_negative_margin_loss,
        t,
        grad=("heatmap",),
        backend=backend,
        dtype=torch.float64,
        margin=0.25,
    )
    # Image 0: hinges 0, 0.25 - 0.75 + 0.625 = 0.125, 0.25 - 0.75 + 0.125 = -0.375 -> 0.
    # Image 1: 0, 0, 0.25 - 0.75 + 0.125 (cell (0, 0)) -> 0. Mean over 6 valid pairs.
    assert_scalar_close(loss, 0.125 / 6, 1e-12)
    g = cand["heatmap"].grad / upstream_scalar(0)
    expected = torch.zeros_like(g)
    expected[0, 0, 1, 1] = 1 / 6
    expected[0, 0, 2, 3] = -1 / 6
    assert_grad_close(g, expected, 1e-12)


def test_validity_rules(backend):
    """Valid = mask set, cell (floor(v), floor(u)) on the grid, weight there > 0."""
    h, w, s = 6, 8, 4
    heatmap = torch.full((1, 1, h, w), 0.5, dtype=torch.float64)
    positive = torch.tensor([[12.0, 12.0]], dtype=torch.float64)
    # A flat heatmap: every valid negative contributes exactly the margin.
    negatives = torch.tensor(
        [
            [
                [-0.5, 10.0],  # u = -0.125: cell -1, invalid (its sample is not 0)
                [10.0, -0.01],  # v < 0: invalid
                [w * s + 1.0, 10.0],  # u = 8.25: cell 8 = W, invalid
                [10.0, h * s],  # v = 6: cell 6 = H, invalid
                [w * s - 0.5, 10.0],  # u = 7.875: cell 7, valid; sample 0.125 P, hinge < 0
                [10.0, 10.0],  # masked out below
                [2.0, 10.0],  # weight 0 at its cell (0, 2): invalid
                [6.0, 10.0],  # weight 1e-6 at cell (1, 2): valid
                [20.0, 20.0],  # valid
            ]
        ],
        dtype=torch.float64,
    )
    mask = torch.ones(1, 9, dtype=torch.bool)
    mask[0, 5] = False
    weight = torch.ones(1, 1, h, w, dtype=torch.float64)
    weight[0, 0, 2, 0] = 0.0
    weight[0, 0, 2, 1] = 1e-6
    t = dict(
        heatmap=heatmap, positive=positive, negatives=negatives, negative_mask=mask, weight=weight
    )
    loss, *_ = check_parity(
        fl.hard_negative_margin_loss,
        R.hard_negative_margin_loss,
        t,
        grad=("heatmap",),
        backend=backend,
        dtype=torch.float64,
        margin=0.25,
    )
    # Valid: indices 4 (hinge 0.25 - 0.5 + 0.0625 < 0), 7, 8 (hinge 0.25 each): mean = 0.5 / 3.
    assert_scalar_close(loss, (0.0 + 0.25 + 0.25) / 3, 1e-12)


def test_no_valid_negative_gives_zero(backend):
    t = hn_inputs(2, 17, 33, 4, masked=True, weighted=True, seed=11)
    variants = {
        "k0": {**t, "negatives": t["negatives"][:, :0], "negative_mask": t["negative_mask"][:, :0]},
        "all-masked": {**t, "negative_mask": torch.zeros_like(t["negative_mask"])},
        "all-outside": {**t, "negatives": torch.full_like(t["negatives"], -10.0)},
        "all-weight-0": {**t, "weight": torch.zeros_like(t["weight"])},
    }
    for name, v in variants.items():
        loss, _, cand, _ = check_parity(
            fl.hard_negative_margin_loss,
            R.hard_negative_margin_loss,
            v,
            grad=("heatmap",),
            backend=backend,
        )
        assert float(loss.detach()) == 0.0, name
        assert torch.count_nonzero(cand["heatmap"].grad) == 0, name


def test_mean_is_over_valid_pairs_of_the_whole_batch(backend):
    heatmap = torch.full((2, 1, 4, 4), 0.5)
    positive = torch.tensor([[4.0, 4.0], [4.0, 4.0]])
    negatives = torch.tensor([[[8.0, 8.0], [0.0, 0.0]], [[8.0, 4.0], [4.0, 8.0]]])
    mask = torch.tensor([[True, False], [True, True]])
    loss = fl.hard_negative_margin_loss(
        heatmap.to(DEVICE), positive.to(DEVICE), negatives.to(DEVICE), mask.to(DEVICE),
        margin=0.3, backend=backend,
    )  # fmt: skip
    assert_scalar_close(loss, 0.3, 1e-6)  # three valid pairs, each hinge 0.3
    heatmap[1, 0, 1, 2] = 0.9  # image 1's first negative (u, v) = (2, 1) rises by 0.4
    loss = fl.hard_negative_margin_loss(
        heatmap.to(DEVICE), positive.to(DEVICE), negatives.to(DEVICE), mask.to(DEVICE),
        margin=0.3, backend=backend,
    )  # fmt: skip
    assert_scalar_close(loss, (0.3 + 0.7 + 0.3) / 3, 1e-6)


def test_hard_negative_module_non_contiguous_no_grad(backend):
    t = hn_inputs(3, 17, 33, 5, masked=True, weighted=True, seed=12)
    args = [v.float().to(DEVICE) if v.is_floating_point() else v.to(DEVICE) for v in t.values()]
    crit = fl.HardNegativeMarginLoss(margin=0.4, backend=backend)
    a = crit(*args)
    b = fl.hard_negative_margin_loss(*args, margin=0.4, backend=backend)
    assert_scalar_close(a, b, 1e-7, "module vs functional")
    views = [
        args[0].transpose(2, 3).contiguous().transpose(2, 3),
        args[1].t().contiguous().t(),
        args[2].transpose(1, 2).contiguous().transpose(1, 2),
        args[3].t().contiguous().t(),
        args[4].transpose(2, 3).contiguous().transpose(2, 3),
    ]
    assert not any(v.is_contiguous() for v in views)
    assert_scalar_close(crit(*views), a, 1e-6, "non-contiguous")
    heat = args[0].clone().requires_grad_(True)
    with torch.no_grad():
        c = crit(heat, *args[1:])
    assert not c.requires_grad
    assert_scalar_close(c, a, 1e-7, "no_grad")
    for dt in (torch.float16, torch.bfloat16):
        check_parity(
            fl.hard_negative_margin_loss,
            R.hard_negative_margin_loss,
            t,
            grad=("heatmap",),
            backend=backend,
            dtype=dt,
            margin=0.4,
        )


coord = st.floats(-10, 80, allow_nan=False)


@settings(max_examples=50, deadline=None)
@given(
    positive=st.tuples(coord, coord),
    negatives=st.lists(st.tuples(coord, coord), min_size=0, max_size=5),
    seed=st.integers(0, 1000),
    margin=st.floats(-0.2, 1.0),
)
def test_hard_negative_random_points(positive, negatives, seed, margin):
    g = torch.Generator().manual_seed(seed)
    heatmap = torch.rand(1, 1, 12, 17, generator=g, dtype=torch.float64)
    pos = torch.tensor([positive], dtype=torch.float64)
    neg = torch.tensor([negatives], dtype=torch.float64).view(1, len(negatives), 2)
    s_pos = R.bilinear_sample(heatmap, pos[:, None])
    s_neg = R.bilinear_sample(heatmap, neg)
    hinge = margin - s_pos + s_neg
    if hinge.numel() and hinge.abs().min() < 1e-9:
        return  # too close to relu's kink for a float64 comparison of gradients
    if any(abs(positive[0] - x) + abs(positive[1] - y) < 1e-6 for x, y in negatives):
        # A negative on the positive: their bilinear gradients cancel to a residue of the
        # distance (e.g. 1e-12 next to terms of 1), and float64 rounding of the terms is then a
        # large part of it (seen on CUDA, where the scatter order differs).
        return
    check_parity(
        fl.hard_negative_margin_loss,
        R.hard_negative_margin_loss,
        dict(heatmap=heatmap, positive=pos, negatives=neg),
        grad=("heatmap",),
        backend="torch",
        dtype=torch.float64,
        margin=margin,
    )


def test_gradcheck_torch_backend():
    t = hn_inputs(2, 5, 6, 4, masked=True, weighted=True, seed=13)
    hinge = (
        t["heatmap"].new_tensor(0.25)
        - R.bilinear_sample(t["heatmap"], t["positive"][:, None])
        + R.bilinear_sample(t["heatmap"], t["negatives"])
    )
    assert hinge.abs().min() > 1e-3
    rest = (t["positive"], t["negatives"], t["negative_mask"], t["weight"])

    def fn(heatmap):
        return fl.hard_negative_margin_loss(heatmap, *rest, backend="torch")

    x = t["heatmap"].clone().requires_grad_(True)
    assert float(fn(x).detach()) > 0
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_hard_negative_bad_input():
    hm = torch.rand(2, 1, 5, 6)
    pos = torch.zeros(2, 2)
    neg = torch.zeros(2, 3, 2)
    with pytest.raises(ValueError, match=r"heatmap.*\[2, 2, 5, 6\]"):
        fl.hard_negative_margin_loss(torch.rand(2, 2, 5, 6), pos, neg)
    with pytest.raises(ValueError, match=r"heatmap.*\[2, 1, 1, 6\]"):
        fl.hard_negative_margin_loss(torch.rand(2, 1, 1, 6), pos, neg)
    with pytest.raises(TypeError, match="heatmap"):
        fl.hard_negative_margin_loss(hm.long(), pos, neg)
    with pytest.raises(ValueError, match=r"positive.*\[2, 2\].*\[2, 3\]"):
        fl.hard_negative_margin_loss(hm, torch.zeros(2, 3), neg)
    with pytest.raises(ValueError, match=r"positive.*\[3, 2\]"):
        fl.hard_negative_margin_loss(hm, torch.zeros(3, 2), neg)
    with pytest.raises(ValueError, match=r"negatives.*\[2, K, 2\].*\[2, 6\]"):
        fl.hard_negative_margin_loss(hm, pos, torch.zeros(2, 6))
    with pytest.raises(ValueError, match=r"negative_mask.*\[2, 3\].*\[2, 4\]"):
        fl.hard_negative_margin_loss(hm, pos, neg, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="negative_mask"):
        fl.hard_negative_margin_loss(hm, pos, neg, torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"weight.*\[2, 1, 5, 6\].*\[2, 1, 5, 7\]"):
        fl.hard_negative_margin_loss(hm, pos, neg, None, torch.ones(2, 1, 5, 7))
    with pytest.raises(ValueError, match="stride"):
        fl.hard_negative_margin_loss(hm, pos, neg, stride=0)
    with pytest.raises(TypeError, match="margin"):
        fl.hard_negative_margin_loss(hm, pos, neg, margin="0.25")
    with pytest.raises(ValueError, match="backend"):
        fl.hard_negative_margin_loss(hm, pos, neg, backend="x")
    with pytest.raises(ValueError, match=r"negatives.*meta"):
        fl.hard_negative_margin_loss(hm, pos, neg.to("meta"))


def test_non_finite_points(backend):
    """docs/spec.md 8: a NaN negative is ignored like a masked-out one; a NaN positive samples as
    0, like a point off the grid (both against the float64 reference, no index error)."""
    g = torch.Generator().manual_seed(7)
    heat = torch.rand(2, 1, 5, 6, generator=g, dtype=torch.float64) * 0.9 + 0.05
    pos = torch.tensor([[9.0, 7.0], [12.0, 5.0]], dtype=torch.float64)
    neg = torch.tensor([[[10.0, 8.0], [3.0, 3.0]], [[13.0, 6.0], [5.0, 9.0]]], dtype=torch.float64)
    nan_neg = neg.clone()
    nan_neg[0, 0, 1] = float("nan")
    mask = torch.ones(2, 2, dtype=torch.bool)
    mask[0, 0] = False
    got = fl.hard_negative_margin_loss(
        heat.float().to(DEVICE), pos.to(DEVICE), nan_neg.to(DEVICE), backend=backend
    )
    assert_scalar_close(got, R.hard_negative_margin_loss(heat, pos, neg, mask), 1e-5)
    nan_pos = pos.clone()
    nan_pos[1, 0] = float("nan")
    off_grid = pos.clone()
    off_grid[1, 0] = -1000.0
    got = fl.hard_negative_margin_loss(
        heat.float().to(DEVICE), nan_pos.to(DEVICE), neg.to(DEVICE), backend=backend
    )
    assert_scalar_close(got, R.hard_negative_margin_loss(heat, off_grid, neg), 1e-5)
