"""GapDetectionLoss / gap_detection_loss against the float64 reference (spec section 3 and 6).

Every comparison evaluates the reference in float64 on the same inputs as the candidate (the
candidate's inputs upcast to float64), with a random upstream gradient ``(loss * r).backward()``.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch
from conftest import (
    BACKENDS,
    DEVICE,
    TOLERANCES,
    assert_grad_close,
    assert_scalar_close,
    pairwise,
    upstream_scalar,
)
from fused_losses.reference.cases import PREDICTIONS, GapCase, gap_case

import fused_losses as fl
from fused_losses import reference as R

COMPONENTS = ("heatmap_gap", "heatmap_piece", "offset", "angle", "hard_negative")
DTYPES = {"f32": torch.float32, "f64": torch.float64, "f16": torch.float16, "bf16": torch.bfloat16}
WEIGHTS = ("w_heatmap", "w_offset", "w_angle", "w_hard_negative")


def run_gap(
    case: GapCase,
    *,
    backend: str,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str = DEVICE,
    requires_grad: tuple[bool, ...] = (True, True, True, True),
    transform=None,
    module: bool = False,
    **opts,
):
    """Run candidate and reference; check total, components and the four gradients.

    ``transform(preds, args)`` may replace the candidate's prediction tensors (e.g. by
    non-contiguous views of the leaves) and the other arguments. Returns
    ``(total, comps, ref_total, ref_comps, leaves, ref_leaves)``.
    """
    loss_tol, grad_tol = TOLERANCES[dtype]
    cand = case.to(dtype, device=device)
    leaves = [
        p.detach().clone().requires_grad_(rg) for p, rg in zip(cand.predictions(), requires_grad)
    ]
    preds, rest = list(leaves), list(cand.args()[4:])
    if transform is not None:
        preds, rest = transform(preds, rest)
    # The reference sees exactly the candidate's values, upcast to float64.
    ref = cand.to(torch.float64, device="cpu")
    ref_leaves = [p.detach().clone().requires_grad_(True) for p in ref.predictions()]
    grad_enabled = torch.is_grad_enabled()
    with torch.enable_grad():
        ref_total, ref_comps = R.gap_detection_loss(*ref_leaves, *ref.args()[4:], True, **opts)
        r = upstream_scalar(seed)
        (ref_total * r).backward()

    if module:
        crit = fl.GapDetectionLoss(**opts, backend=backend)
        total, comps = crit(*preds, *rest, return_components=True)
    else:
        total, comps = fl.gap_detection_loss(*preds, *rest, True, **opts, backend=backend)
    assert total.dim() == 0
    if dtype in (torch.float32, torch.float64):
        assert total.dtype == dtype
    else:
        assert total.dtype in (torch.float32, dtype)
    assert_scalar_close(total, ref_total, loss_tol, "total")
    assert set(comps) == set(COMPONENTS)
    for name in COMPONENTS:
        c = comps[name]
        assert isinstance(c, torch.Tensor) and c.dim() == 0, name
        assert not c.requires_grad and c.grad_fn is None, name
        assert_scalar_close(c, ref_comps[name], loss_tol, name)
    if not grad_enabled or not any(requires_grad):
        assert not total.requires_grad and total.grad_fn is None
        return total, comps, ref_total, ref_comps, leaves, ref_leaves
    (total * r).backward()
    for name, leaf, ref_leaf, rg in zip(PREDICTIONS, leaves, ref_leaves, requires_grad):
        if rg:
            assert leaf.grad is not None, name
            assert leaf.grad.dtype == dtype, name
            assert_grad_close(leaf.grad, ref_leaf.grad, grad_tol, f"grad {name}")
        else:
            assert leaf.grad is None, name
    return total, comps, ref_total, ref_comps, leaves, ref_leaves


# --------------------------------------------------------------------------- the full matrix

BATCHES = [1, 3]
KS = [0, 1, 3]
PADDINGS = [None, "mask", "box"]
CENTERS = ["cell", "exact"]
LOGITS = [False, True]

FULL_SMALL = list(itertools.product(BATCHES, KS, PADDINGS, CENTERS, LOGITS, ["f32", "f64"]))


def matrix_id(batch, k, padding, center, logits, dt) -> str:
    return f"B{batch}-K{k}-{padding or 'nopad'}-{center}-{'logits' if logits else 'probs'}-{dt}"


@pytest.mark.parametrize(
    "batch,k,padding,center,from_logits,dt",
    FULL_SMALL,
    ids=[matrix_id(*p) for p in FULL_SMALL],
)
def test_gap_matrix_torch_17x33(batch, k, padding, center, from_logits, dt):
    seed = FULL_SMALL.index((batch, k, padding, center, from_logits, dt))
    case = gap_case(
        batch, (17, 33), confusers=k, padding=padding, from_logits=from_logits, seed=seed
    )
    run_gap(
        case,
        backend="torch",
        dtype=DTYPES[dt],
        seed=seed,
        center=center,
        from_logits=from_logits,
    )


LARGE_ROWS = pairwise(
    {
        "batch": BATCHES,
        "k": KS,
        "padding": PADDINGS,
        "center": CENTERS,
        "from_logits": LOGITS,
        "dt": ["f32", "f64"],
    }
)
TRITON_ROWS = pairwise(
    {
        "size": [(17, 33), (16, 32)],
        "batch": BATCHES,
        "k": KS,
        "padding": PADDINGS,
        "center": CENTERS,
        "from_logits": LOGITS,
        "dt": ["f32", "f64"],
    }
)
COVERING = [
    pytest.param(
        "torch",
        (64, 128),
        row,
        id="torch-64x128-" + matrix_id(*(row[k] for k in list(row))),
    )
    for row in LARGE_ROWS
] + [
    pytest.param(
        "triton",
        row["size"],
        {k: v for k, v in row.items() if k != "size"},
        id=f"triton-{row['size'][0]}x{row['size'][1]}-"
        + matrix_id(*(row[k] for k in list(row) if k != "size")),
    )
    for row in TRITON_ROWS
]


@pytest.mark.parametrize("backend,size,row", COVERING)
def test_gap_matrix_covering(backend, size, row):
    """Pairwise cover of the matrix for 64x128 (torch) and for the triton backend (small maps)."""
    seed = 1000 + size[0] + 7 * KS.index(row["k"]) + 31 * PADDINGS.index(row["padding"])
    case = gap_case(
        row["batch"],
        size,
        confusers=row["k"],
        padding=row["padding"],
        from_logits=row["from_logits"],
        seed=seed,
    )
    run_gap(
        case,
        backend=backend,
        dtype=DTYPES[row["dt"]],
        seed=seed,
        center=row["center"],
        from_logits=row["from_logits"],
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "dt,from_logits,padding",
    [("f16", True, "mask"), ("bf16", True, "box"), ("f16", False, None), ("bf16", False, "box")],
)
def test_gap_half_precision(backend, dt, from_logits, padding):
    """fp16/bf16 inputs: loss rel err <= 1e-3, gradients <= 1e-2, in the input dtype (spec 6)."""
    case = gap_case(2, (16, 32), confusers=3, padding=padding, from_logits=from_logits, seed=77)
    run_gap(case, backend=backend, dtype=DTYPES[dt], seed=5, from_logits=from_logits)


# --------------------------------------------------------------------------- components, module


def test_components_weighted_sum_and_module_agree(backend):
    case = gap_case(3, (17, 33), confusers=3, padding="box", seed=3)
    opts = dict(w_heatmap=0.7, w_offset=1.9, w_angle=0.45, w_hard_negative=2.5, margin=0.4)
    total, comps, *_ = run_gap(case, backend=backend, seed=3, **opts)
    weighted = (
        opts["w_heatmap"] * (comps["heatmap_gap"] + comps["heatmap_piece"])
        + opts["w_offset"] * comps["offset"]
        + opts["w_angle"] * comps["angle"]
        + opts["w_hard_negative"] * comps["hard_negative"]
    )
    assert_scalar_close(total, weighted, 1e-6, "total vs weighted components")
    for name in COMPONENTS:  # every term is active in this case
        assert float(comps[name]) > 0, name

    # Module and functional agree, value and gradients.
    m_total, m_comps, *_ = run_gap(case, backend=backend, seed=3, module=True, **opts)
    assert_scalar_close(m_total, total, 1e-6, "module vs functional")
    for name in COMPONENTS:
        assert_scalar_close(m_comps[name], comps[name], 1e-6, name)
    # Without return_components only the total comes back.
    c = case.to(torch.float32, DEVICE)
    out = fl.GapDetectionLoss(**opts, backend=backend)(*c.args())
    assert isinstance(out, torch.Tensor) and out.dim() == 0
    assert_scalar_close(out, total, 1e-6, "plain module call")


def test_module_repr_and_defaults():
    crit = fl.GapDetectionLoss(backend="torch")
    text = repr(crit)
    assert "stride=4" in text and "sigma=1.5" in text and "center='cell'" in text
    case = gap_case(2, (16, 32), confusers=2, seed=1)
    c = case.to(torch.float64)
    # Defaults of the module equal the reference's defaults.
    assert_scalar_close(crit(*c.args()), R.gap_detection_loss(*c.args()), 1e-10)
    assert list(crit.parameters()) == []


NON_DEFAULT = [
    pytest.param(dict(w_heatmap=0.3, w_offset=2.0, w_angle=1.0, w_hard_negative=3.0), id="weights"),
    pytest.param(dict(alpha=2.0, beta=2.0), id="alpha2-beta2"),
    pytest.param(dict(alpha=1.0, beta=0.0), id="alpha1-beta0"),
    pytest.param(dict(pos_threshold=0.5, reg_threshold=0.3), id="thresholds-low"),
    pytest.param(dict(pos_threshold=0.95, reg_threshold=0.85, center="exact"), id="thresholds-hi"),
    pytest.param(dict(margin=0.8), id="margin-large"),
    pytest.param(dict(margin=-0.05), id="margin-negative"),
    pytest.param(dict(sigma=0.8), id="sigma-small"),
    pytest.param(dict(sigma=3.0, center="exact"), id="sigma-large-exact"),
    pytest.param(dict(stride=2), id="stride2"),
    pytest.param(dict(stride=8, from_logits=True), id="stride8-logits"),
    pytest.param(dict(eps=1e-3), id="eps"),
    pytest.param(dict(eps=1e-3, from_logits=True, w_angle=0.0), id="eps-logits-wangle0"),
    pytest.param(dict(label_smoothing=0.025), id="label-smoothing"),
    pytest.param(dict(label_smoothing=0.5, from_logits=True), id="label-smoothing-half-logits"),
]


@pytest.mark.parametrize("opts", NON_DEFAULT)
def test_non_default_options(backend, opts):
    stride = opts.get("stride", 4)
    for padding, seed in (("mask", 11), ("box", 12)):
        case = gap_case(
            2,
            (16, 32),
            confusers=3,
            padding=padding,
            stride=stride,
            from_logits=opts.get("from_logits", False),
            seed=seed,
        )
        # The module with the box padding, the functional form with the mask (and both for torch).
        if backend == "torch" or padding == "mask":
            run_gap(case, backend=backend, seed=seed, **opts)
        if backend == "torch" or padding == "box":
            run_gap(case, backend=backend, seed=seed, module=True, **opts)


def test_label_smoothing_keeps_positives_and_regression_masks_on_y(backend):
    """With e = 0.5 every smoothed target is 1/2, so a loss that took its positives or its
    regression masks from Y_s would have no positive cell and no offset/angle term: the offset and
    angle components equal those without smoothing, and the heatmap terms change."""
    case = gap_case(2, (16, 32), confusers=2, seed=5)
    args = case.to(torch.float32, DEVICE).args()
    _, plain = fl.gap_detection_loss(*args, backend=backend, return_components=True)
    _, smooth = fl.gap_detection_loss(
        *args, label_smoothing=0.5, backend=backend, return_components=True
    )
    for name in ("offset", "angle", "hard_negative"):
        assert smooth[name].item() == pytest.approx(plain[name].item(), rel=1e-6), name
        assert smooth[name].item() > 0, name
    assert smooth["heatmap_gap"].item() != pytest.approx(plain["heatmap_gap"].item(), rel=1e-3)
    _, ref = R.gap_detection_loss(
        *case.to(torch.float64).args(), label_smoothing=0.5, return_components=True
    )
    for name, value in ref.items():
        assert smooth[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-7), name


def per_image_reference(case: GapCase, **opts) -> torch.Tensor:
    """Each image's loss: the float64 reference on that image alone."""
    args = case.to(torch.float64).args()
    return torch.stack(
        [
            R.gap_detection_loss(
                *(x[b : b + 1] if isinstance(x, torch.Tensor) else x for x in args), **opts
            )
            for b in range(args[0].shape[0])
        ]
    )


@pytest.mark.parametrize(
    "padding,k,opts",
    [
        ("mask", 3, {}),
        ("box", 0, {"from_logits": True}),
        (None, 2, {"w_heatmap": 0.5, "w_hard_negative": 2.0, "label_smoothing": 0.025}),
    ],
)
@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
def test_per_image_losses_are_each_images_own_loss(backend, padding, k, opts, dt):
    """return_per_image: a detached [B] tensor, each image's total with its terms normalised
    within that image = the reference loss of that image alone; the total and its gradients are
    those of the call without it; the outputs come as (total, components, per_image)."""
    from_logits = opts.get("from_logits", False)
    case = gap_case(4, (12, 20), confusers=k, padding=padding, from_logits=from_logits, seed=7)
    c = case.to(dt, DEVICE, requires_grad=True)
    total, comps, per = fl.gap_detection_loss(
        *c.args(), return_components=True, return_per_image=True, backend=backend, **opts
    )
    assert per.shape == (4,) and per.dtype == dt and not per.requires_grad
    ref = per_image_reference(case.to(dt), **opts)
    tol = 1e-5 if dt == torch.float32 else 1e-10
    assert torch.allclose(per.double().cpu(), ref, rtol=tol, atol=tol), (per, ref)
    assert set(comps) == set(COMPONENTS)
    plain = fl.gap_detection_loss(*c.args(), backend=backend, **opts)
    assert total.item() == plain.item()
    g = torch.autograd.grad(total, c.predictions())
    g_plain = torch.autograd.grad(plain, c.predictions())
    assert all(torch.equal(a, b) for a, b in zip(g, g_plain))
    module = fl.GapDetectionLoss(backend=backend, **opts)
    total_m, per_m = module(*c.args(), return_per_image=True)
    assert torch.equal(per_m, per) and total_m.item() == total.item()


def test_per_image_losses_empty_batch_and_bad_flag(backend):
    case = gap_case(2, (8, 12), confusers=2, seed=3).to(torch.float32, DEVICE)
    empty = [x[:0] if isinstance(x, torch.Tensor) else x for x in case.args()]
    total, per = fl.gap_detection_loss(*empty, return_per_image=True, backend=backend)
    assert total.item() == 0 and per.shape == (0,)
    with pytest.raises(TypeError, match=r"^return_per_image"):
        fl.gap_detection_loss(*case.args(), return_per_image="yes", backend=backend)


# --------------------------------------------------------------------------- edge cases (3.4)


def assert_finite_grads(leaves):
    for leaf in leaves:
        if leaf.grad is not None:
            assert torch.isfinite(leaf.grad).all()


def test_fully_padded_one_image(backend):
    case = gap_case(3, (17, 33), confusers=3, padding="mask", seed=21)
    pm = case.padding_mask.clone()
    pm[1] = True
    # Put a confuser of the padded image next to its gap: it must be ignored (W = 0 there).
    conf = case.confusers.clone()
    conf[1, 0] = case.gap_center[1] + 3.0
    mask = torch.ones_like(case.confuser_mask)
    c = replace(case, padding_mask=pm, confusers=conf, confuser_mask=mask)
    *_, leaves, _ = run_gap(c, backend=backend, seed=21)
    assert_finite_grads(leaves)
    # Nothing of image 1 contributes to any gradient.
    for leaf in leaves:
        assert torch.count_nonzero(leaf.grad[1]) == 0


@pytest.mark.parametrize("how", ["mask", "box-empty", "box-outside"])
def test_fully_padded_all_images(backend, how):
    case = gap_case(2, (17, 33), confusers=3, padding="box", seed=22)
    if how == "mask":
        c = replace(case, valid_box=None, padding_mask=torch.ones(2, 68, 132, dtype=torch.bool))
    elif how == "box-empty":
        box = case.valid_box.clone()
        box[:, 2] = box[:, 0]  # zero width
        c = replace(case, valid_box=box)
    else:
        box = torch.tensor([[-50.0, -50.0, -10.0, -10.0], [200.0, 0.0, 300.0, 68.0]])
        c = replace(case, valid_box=box.double())
    total, comps, *_, leaves, _ = run_gap(c, backend=backend, seed=22)
    assert float(total.detach()) == 0.0
    for name in COMPONENTS:
        assert float(comps[name]) == 0.0, name
    for leaf in leaves:
        assert torch.count_nonzero(leaf.grad) == 0


def test_centres_outside_grid(backend):
    case = gap_case(3, (17, 33), confusers=2, padding="mask", seed=23)
    gc = case.gap_center.clone()
    pc = case.piece_center.clone()
    gc[0] = torch.tensor([-40.0, -40.0])  # far outside: no label mass above any threshold
    pc[0] = torch.tensor([132.0 + 60.0, 68.0 + 50.0])
    gc[1] = torch.tensor([-2.0, 30.0])  # u = -0.5: cell -1, its Gaussian clipped at column 0
    pc[1] = torch.tensor([140.0, 71.0])  # just beyond the bottom-right corner
    gc[2] = torch.tensor([131.9, 67.9])  # inside, on the last cell
    c = replace(case, gap_center=gc, piece_center=pc)
    run_gap(c, backend=backend, seed=23)
    run_gap(c, backend=backend, seed=24, center="exact")
    # Every centre outside: the offset and angle terms have nothing to supervise.
    far = torch.tensor([[-40.0, -40.0]]).double().expand(3, 2)
    c2 = replace(case, gap_center=far.clone(), piece_center=far.clone() + 1000)
    _, comps, *_, leaves, _ = run_gap(c2, backend=backend, seed=25)
    assert float(comps["offset"]) == 0.0 and float(comps["angle"]) == 0.0
    assert torch.count_nonzero(leaves[2].grad) == 0 and torch.count_nonzero(leaves[3].grad) == 0


def test_no_pixel_above_thresholds(backend):
    case = gap_case(2, (17, 33), confusers=3, padding="box", seed=26)
    opts = dict(pos_threshold=1.01, reg_threshold=1.0)
    _, comps, *_, leaves, _ = run_gap(case, backend=backend, seed=26, **opts)
    assert float(comps["offset"]) == 0.0 and float(comps["angle"]) == 0.0
    assert float(comps["heatmap_gap"]) > 0  # every pixel is a (penalty-reduced) negative
    assert torch.count_nonzero(leaves[2].grad) == 0 and torch.count_nonzero(leaves[3].grad) == 0
    # reg_threshold above 1 too, in logits mode.
    case = gap_case(2, (17, 33), confusers=3, padding="mask", from_logits=True, seed=27)
    _, comps, *_ = run_gap(
        case, backend=backend, seed=27, from_logits=True, pos_threshold=1.5, reg_threshold=1.2
    )
    assert float(comps["offset"]) == 0.0 and float(comps["angle"]) == 0.0


@pytest.mark.parametrize(
    "variant", ["none", "k0", "all-masked", "all-outside", "all-on-padding", "mixed"]
)
def test_confusers_without_valid_ones(backend, variant):
    case = gap_case(2, (17, 33), confusers=3, padding="mask", seed=28)
    pm = case.padding_mask.clone()
    pm[:, :, :, :16] = True  # the left 4 columns of cells are padding
    conf = case.confusers.clone()
    cmask = torch.ones_like(case.confuser_mask)
    if variant == "none":
        c = replace(case, padding_mask=pm, confusers=None, confuser_mask=None)
    elif variant == "k0":
        c = replace(
            case,
            padding_mask=pm,
            confusers=conf[:, :0],
            confuser_mask=cmask[:, :0],
        )
    elif variant == "all-masked":
        c = replace(case, padding_mask=pm, confuser_mask=torch.zeros_like(cmask))
    elif variant == "all-outside":
        conf[0] = torch.tensor([[-4.5, 10.0], [10.0, -0.01], [132.0, 10.0]])
        conf[1] = torch.tensor([[10.0, 68.0], [500.0, 500.0], [-100.0, 30.0]])
        c = replace(case, padding_mask=pm, confusers=conf, confuser_mask=cmask)
    elif variant == "all-on-padding":
        conf[:, :, 0] = torch.tensor([0.0, 7.5, 15.99])
        conf[:, :, 1] = 30.0
        c = replace(case, padding_mask=pm, confusers=conf, confuser_mask=cmask)
    else:  # one masked, one outside, one on padding
        conf[:, 1] = torch.tensor([-8.0, 20.0])
        conf[:, 2] = torch.tensor([4.0, 20.0])
        cmask[:, 0] = False
        c = replace(case, padding_mask=pm, confusers=conf, confuser_mask=cmask)
    _, comps, *_ = run_gap(c, backend=backend, seed=28)
    assert float(comps["hard_negative"]) == 0.0


def test_confuser_on_partially_padded_cell_counts(backend):
    """W > 0 (a fraction of the cell is image) keeps a confuser valid; W = 0 drops it."""
    case = gap_case(1, (16, 32), confusers=1, seed=29)
    gc = torch.tensor([[60.0, 30.0]]).double()
    box = torch.tensor([[0.0, 0.0, 65.0, 64.0]]).double()  # cell column 16 is 1/4 image
    conf = torch.tensor([[[65.5, 30.0]]]).double()
    hg = torch.full_like(case.heatmap_gap, 0.5)
    c = replace(
        case, heatmap_gap=hg, gap_center=gc, valid_box=box, confusers=conf, confuser_mask=None
    )
    _, comps, *_ = run_gap(c, backend=backend, seed=29, margin=0.3)
    assert abs(float(comps["hard_negative"]) - 0.3) < 1e-6
    c = replace(c, valid_box=torch.tensor([[0.0, 0.0, 64.0, 64.0]]).double())
    _, comps, *_ = run_gap(c, backend=backend, seed=29, margin=0.3)
    assert float(comps["hard_negative"]) == 0.0


@pytest.mark.parametrize("size", [(2, 2), (3, 5), (5, 7), (17, 33)])
def test_batch_one_and_odd_sizes(backend, size):
    for padding, seed in ((None, 30), ("mask", 31), ("box", 32)):
        case = gap_case(1, size, confusers=2, padding=padding, seed=seed)
        run_gap(case, backend=backend, seed=seed)
        run_gap(case, backend=backend, seed=seed, center="exact", dtype=torch.float64)


def make_non_contiguous(preds, rest):
    hg, hp, off, ang = preds
    w = hg.shape[-1]
    big = torch.cat([torch.zeros_like(hg), hg, torch.zeros_like(hg)], dim=1)
    hg_v = big[:, 1:2]  # a channel sliced from a bigger tensor
    hp_v = hp.transpose(2, 3).contiguous().transpose(2, 3)  # column-major view
    off_v = torch.nn.functional.pad(off, (0, 3))[..., :w]  # padded rows
    ang_v = ang.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last
    gc, pc, ga, conf, cmask, pm, vb = rest
    gc_v = torch.stack([gc[:, 0], gc[:, 0], gc[:, 1]], dim=1)[:, ::2]
    pc_v = pc.t().contiguous().t()
    ga_v = torch.stack([ga, ga], dim=1)[:, 0]
    conf_v = conf.transpose(1, 2).contiguous().transpose(1, 2)
    cmask_v = cmask.t().contiguous().t()
    pm_v = None if pm is None else pm.transpose(2, 3).contiguous().transpose(2, 3)
    vb_v = None if vb is None else vb.t().contiguous().t()
    views = [hg_v, hp_v, off_v, ang_v, gc_v, pc_v, ga_v, conf_v, cmask_v, pm_v, vb_v]
    for v in views:
        assert v is None or not v.is_contiguous()
    return views[:4], views[4:]


@pytest.mark.parametrize("padding", ["mask", "box"])
def test_non_contiguous_inputs(backend, padding):
    case = gap_case(3, (17, 33), confusers=3, padding=padding, seed=33)
    run_gap(case, backend=backend, seed=33, transform=make_non_contiguous)
    run_gap(case, backend=backend, seed=34, transform=make_non_contiguous, from_logits=True)


@pytest.mark.parametrize(
    "requires_grad",
    [(False, False, True, False), (True, False, False, True), (False, True, True, True)],
    ids=["offset-only", "gap-and-angle", "all-but-gap"],
)
def test_some_predictions_without_grad(backend, requires_grad):
    case = gap_case(2, (17, 33), confusers=3, padding="mask", seed=35)
    run_gap(case, backend=backend, seed=35, requires_grad=requires_grad)


def test_no_prediction_requires_grad(backend):
    case = gap_case(2, (17, 33), confusers=3, padding="box", seed=36)
    total, *_ = run_gap(case, backend=backend, seed=36, requires_grad=(False,) * 4)
    assert not total.requires_grad and total.grad_fn is None
    with torch.no_grad():
        total2, *_ = run_gap(case, backend=backend, seed=36)
    assert not total2.requires_grad
    assert_scalar_close(total2, total, 1e-6, "no_grad vs no requires_grad")


@pytest.mark.parametrize("rank", [3, 4])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8, torch.float32])
def test_padding_mask_ranks_and_dtypes(backend, rank, mask_dtype):
    case = gap_case(2, (17, 33), confusers=3, padding="mask", seed=37)
    pm = case.padding_mask.to(mask_dtype)
    if rank == 3:
        pm = pm[:, 0]
    c = replace(case, padding_mask=pm)
    total, *_ = run_gap(c, backend=backend, seed=37)
    base, *_ = run_gap(case, backend=backend, seed=37)
    assert_scalar_close(total, base, 1e-6, "vs bool [B,1,H,W]")


def test_float_padding_mask_soft_values(backend):
    """A float mask may hold fractions (e.g. an anti-aliased border): W is its average."""
    case = gap_case(2, (17, 33), confusers=3, padding="mask", seed=38)
    g = torch.Generator().manual_seed(38)
    soft = case.padding_mask.double() * torch.rand(case.padding_mask.shape, generator=g).double()
    run_gap(replace(case, padding_mask=soft), backend=backend, seed=38)


# --------------------------------------------------------------------------- valid_box


def box_to_mask(box: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The bool padding mask of an integer-edged box."""
    b = box.shape[0]
    m = torch.ones(b, 1, h, w, dtype=torch.bool)
    for i in range(b):
        x0, y0, x1, y1 = (int(v) for v in box[i])
        m[i, :, max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = False
    return m


def test_valid_box_equals_integer_padding_mask(backend):
    case = gap_case(3, (17, 33), confusers=3, seed=39)
    box = torch.tensor([[5, 3, 120, 60], [0, 0, 132, 68], [-8, 10, 77, 200]], dtype=torch.float64)
    with_box = replace(case, valid_box=box)
    with_mask = replace(case, padding_mask=box_to_mask(box, 68, 132))
    t_box, c_box, *_, l_box, _ = run_gap(with_box, backend=backend, seed=39)
    t_mask, c_mask, *_, l_mask, _ = run_gap(with_mask, backend=backend, seed=39)
    assert_scalar_close(t_box, t_mask, 1e-6, "box vs mask")
    for name in COMPONENTS:
        assert_scalar_close(c_box[name], c_mask[name], 1e-6, name)
    for a, b in zip(l_box, l_mask):
        assert_grad_close(a.grad, b.grad, 1e-6)
    # An integer box means the same.
    t_int, *_ = run_gap(replace(case, valid_box=box.long()), backend=backend, seed=39)
    assert_scalar_close(t_int, t_box, 1e-6, "int64 box")


def test_float32_predictions_with_float64_coordinates(backend):
    """Targets often arrive in float64: the coordinates' dtype does not change the result."""

    def to_f64(preds, rest):
        return preds, [x.double() if x is not None and x.is_floating_point() else x for x in rest]

    case = gap_case(3, (17, 33), confusers=3, padding="box", seed=42)
    total, *_ = run_gap(case, backend=backend, seed=42, transform=to_f64)
    assert total.dtype == torch.float32


def test_float64_coordinates_are_not_rounded_to_float32(backend):
    """float64 coordinates one ulp-ish below a cell border: floor(x / stride), the label centre, the
    offset target and a confuser's validity use the coordinate as given (float32 would round
    7.99999999 up to 8 and 31.999999999 up to 32, moving the centre and the confuser one cell)."""
    g = torch.Generator().manual_seed(7)
    b, h, w = 1, 8, 8
    preds = [
        torch.rand(b, 1, h, w, generator=g) * 0.9 + 0.05,
        torch.rand(b, 1, h, w, generator=g) * 0.9 + 0.05,
        torch.rand(b, 4, h, w, generator=g) - 0.5,
        torch.randn(b, 2, h, w, generator=g),
    ]
    gc = torch.tensor([[7.99999999, 12.0]], dtype=torch.float64)
    pc = torch.tensor([[20.0, 11.999999999]], dtype=torch.float64)
    ga = torch.tensor([0.3], dtype=torch.float64)
    conf = torch.tensor([[[31.999999999, 5.0], [3.0, 31.9999999999]]], dtype=torch.float64)
    assert float(gc[0, 0].float()) == 8.0 and float(conf[0, 0, 0].float()) == 32.0
    rest = (gc, pc, ga, conf)
    r = upstream_scalar(43)
    ref_leaves = [p.double().requires_grad_(True) for p in preds]
    opts = dict(margin=2.0)  # every valid confuser's hinge is active: the count shows
    ref_total, ref_comps = R.gap_detection_loss(*ref_leaves, *rest, return_components=True, **opts)
    (ref_total * r).backward()
    leaves = [p.to(DEVICE).requires_grad_(True) for p in preds]
    total, comps = fl.gap_detection_loss(
        *leaves, *(x.to(DEVICE) for x in rest), return_components=True, backend=backend, **opts
    )
    assert total.dtype == torch.float32
    for name in COMPONENTS:
        assert_scalar_close(comps[name], ref_comps[name], 1e-5, name)
    assert_scalar_close(total, ref_total, 1e-5, "total")
    (total * r).backward()
    for name, leaf, ref_leaf in zip(PREDICTIONS, leaves, ref_leaves):
        assert_grad_close(leaf.grad, ref_leaf.grad, 1e-5, f"grad {name}")


def test_fractional_valid_box_equals_materialised_mask(backend):
    case = gap_case(3, (17, 33), confusers=3, padding="box", seed=40)
    box = torch.tensor(
        [[5.3, 3.75, 120.5, 60.01], [0.2, -1.5, 131.9, 67.5], [13.0, 2.5, 13.0, 68.0]],
        dtype=torch.float64,
    )
    mask = R.valid_box_padding_mask(box, (68, 132))
    t_box, *_, l_box, _ = run_gap(replace(case, valid_box=box), backend=backend, seed=40)
    t_mask, *_, l_mask, _ = run_gap(
        replace(case, valid_box=None, padding_mask=mask), backend=backend, seed=40
    )
    assert_scalar_close(t_box, t_mask, 1e-5, "box vs materialised mask")
    for a, b in zip(l_box, l_mask):
        assert_grad_close(a.grad, b.grad, 1e-5)


# --------------------------------------------------------------------------- gradcheck


def hinge_values(case: GapCase, stride: int = 4) -> torch.Tensor:
    s_pos = R.bilinear_sample(case.heatmap_gap, case.gap_center[:, None], stride=stride)
    s_neg = R.bilinear_sample(case.heatmap_gap, case.confusers, stride=stride)
    return 0.25 - s_pos + s_neg


@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("padding", [None, "box"])
def test_gradcheck_reference_and_torch_backend(from_logits, padding):
    case = gap_case(1, (5, 6), confusers=2, padding=padding, from_logits=from_logits, seed=41)
    # Put the gap and the confusers inside the map, with hinges away from relu's kink.
    gc = torch.tensor([[9.0, 7.0]]).double()
    conf = torch.tensor([[[14.0, 6.0], [5.0, 13.0]]]).double()
    case = replace(case, gap_center=gc, piece_center=gc + 5.0, confusers=conf, confuser_mask=None)
    probs = torch.sigmoid(case.heatmap_gap) if from_logits else case.heatmap_gap
    assert hinge_values(replace(case, heatmap_gap=probs)).abs().min() > 1e-3
    c = case.to(torch.float64)
    rest = c.args()[4:]
    opts = dict(from_logits=from_logits, center="exact", reg_threshold=0.5, w_angle=0.7)

    def ref_fn(*preds):
        return R.gap_detection_loss(*preds, *rest, **opts)

    def torch_fn(*preds):
        return fl.gap_detection_loss(*preds, *rest, **opts, backend="torch")

    inputs = tuple(p.detach().clone().requires_grad_(True) for p in c.predictions())
    # Every term is active, so gradcheck exercises all of them.
    _, comps = R.gap_detection_loss(*inputs, *rest, True, **opts)
    assert all(float(v) > 0 for v in comps.values())
    # fast_mode: the analytic gradient against a numerical directional derivative along a random
    # direction (a full Jacobian takes ~1000 forward calls here).
    for fn in (ref_fn, torch_fn):
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)
    # A full gradcheck of the fused op's analytic gradients on the smallest map.
    small = tuple(p[..., :3, :3].detach().clone().requires_grad_(True) for p in inputs)
    rest_small = (rest[0] / 3, rest[1] / 3, rest[2], rest[3] / 3, None, None, None)
    _, comps = R.gap_detection_loss(*small, *rest_small, True, **opts)
    assert all(float(v) > 0 for v in comps.values())
    small_probs = torch.sigmoid(small[0]) if from_logits else small[0]
    hinge = (
        0.25
        - R.bilinear_sample(small_probs, rest_small[0][:, None])
        + R.bilinear_sample(small_probs, rest_small[3])
    )
    assert hinge.abs().min() > 1e-3

    def torch_small(*preds):
        return fl.gap_detection_loss(*preds, *rest_small, **opts, backend="torch")

    assert torch.autograd.gradcheck(torch_small, small, eps=1e-6, atol=1e-7, rtol=1e-5)


# --------------------------------------------------------------------------- bad input (3.5)

B, HF, WF = 2, 17, 33


def good_args(k: int = 3, padding: str | None = "mask") -> dict:
    c = gap_case(B, (HF, WF), confusers=k, padding=padding, seed=50).to(torch.float32)
    names = [
        "heatmap_gap",
        "heatmap_piece",
        "offset",
        "angle",
        "gap_center",
        "piece_center",
        "gap_angle",
        "confusers",
        "confuser_mask",
        "padding_mask",
        "valid_box",
    ]
    return dict(zip(names, c.args()))


def zeros(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


BAD_TENSORS = [
    # (id, argument name, replacement, exception, pattern)
    ("hg-rank3", "heatmap_gap", zeros(B, HF, WF), ValueError, r"heatmap_gap.*\[2, 17, 33\]"),
    ("hg-channels", "heatmap_gap", zeros(B, 2, HF, WF), ValueError, r"heatmap_gap.*\[B, 1, Hf, Wf\].*\[2, 2, 17, 33\]"),
    ("hg-1row", "heatmap_gap", zeros(B, 1, 1, WF), ValueError, r"heatmap_gap.*\[2, 1, 1, 33\]"),
    ("hp-width", "heatmap_piece", zeros(B, 1, HF, WF + 1), ValueError, r"heatmap_piece.*\[2, 1, 17, 33\].*\[2, 1, 17, 34\]"),
    ("hp-batch", "heatmap_piece", zeros(B + 1, 1, HF, WF), ValueError, r"heatmap_piece.*\[3, 1, 17, 33\]"),
    ("offset-channels", "offset", zeros(B, 2, HF, WF), ValueError, r"offset.*\[2, 4, 17, 33\].*\[2, 2, 17, 33\]"),
    ("offset-rank", "offset", zeros(4, HF, WF), ValueError, r"offset.*\[4, 17, 33\]"),
    ("angle-channels", "angle", zeros(B, 3, HF, WF), ValueError, r"angle.*\[2, 2, 17, 33\].*\[2, 3, 17, 33\]"),
    ("angle-height", "angle", zeros(B, 2, HF + 1, WF), ValueError, r"angle.*\[2, 2, 18, 33\]"),
    ("gc-cols", "gap_center", zeros(B, 3), ValueError, r"gap_center.*\[2, 2\].*\[2, 3\]"),
    ("gc-rank", "gap_center", zeros(2 * B), ValueError, r"gap_center.*\[4\]"),
    ("pc-batch", "piece_center", zeros(B + 1, 2), ValueError, r"piece_center.*\[2, 2\].*\[3, 2\]"),
    ("ga-shape", "gap_angle", zeros(B, 1), ValueError, r"gap_angle.*\[2\].*\[2, 1\]"),
    ("ga-batch", "gap_angle", zeros(B + 1), ValueError, r"gap_angle.*\[3\]"),
    ("conf-rank", "confusers", zeros(B, 6), ValueError, r"confusers.*\[2, 6\]"),
    ("conf-last", "confusers", zeros(B, 3, 3), ValueError, r"confusers.*\[2, K, 2\].*\[2, 3, 3\]"),
    ("conf-batch", "confusers", zeros(B + 1, 3, 2), ValueError, r"confusers.*\[3, 3, 2\]"),
    ("cmask-k", "confuser_mask", zeros(B, 4, dtype=torch.bool), ValueError, r"confuser_mask.*\[2, 3\].*\[2, 4\]"),
    ("cmask-float", "confuser_mask", zeros(B, 3), TypeError, r"confuser_mask.*float32"),
    ("pm-size", "padding_mask", zeros(B, 1, HF * 4 - 1, WF * 4, dtype=torch.bool), ValueError, r"padding_mask.*\[2, 1, 67, 132\]"),
    ("pm-channels", "padding_mask", zeros(B, 2, HF * 4, WF * 4, dtype=torch.bool), ValueError, r"padding_mask.*\[2, 2, 68, 132\]"),
    ("pm-rank3-size", "padding_mask", zeros(B, HF * 4, WF * 4 + 4, dtype=torch.bool), ValueError, r"padding_mask.*\[2, 68, 136\]"),
    ("pm-rank2", "padding_mask", zeros(HF * 4, WF * 4, dtype=torch.bool), ValueError, r"padding_mask.*\[68, 132\]"),
    ("pm-batch", "padding_mask", zeros(B + 1, 1, HF * 4, WF * 4, dtype=torch.bool), ValueError, r"padding_mask.*\[3, 1, 68, 132\]"),
    ("hg-int", "heatmap_gap", torch.zeros(B, 1, HF, WF, dtype=torch.int64), TypeError, r"heatmap_gap.*int64"),
    ("hp-uint8", "heatmap_piece", torch.zeros(B, 1, HF, WF, dtype=torch.uint8), TypeError, r"heatmap_piece"),
    ("offset-int", "offset", torch.zeros(B, 4, HF, WF, dtype=torch.int32), TypeError, r"offset.*int32"),
    ("angle-bool", "angle", torch.zeros(B, 2, HF, WF, dtype=torch.bool), TypeError, r"angle"),
    ("offset-list", "offset", [[0.0]], TypeError, r"offset"),
    ("gc-complex", "gap_center", torch.zeros(B, 2, dtype=torch.complex64), TypeError, r"gap_center"),
]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "name,value,exc,pattern",
    [pytest.param(*row[1:], id=row[0]) for row in BAD_TENSORS],
)
def test_bad_tensor_raises_naming_it(backend, name, value, exc, pattern):
    args = good_args()
    args[name] = value
    with pytest.raises(exc, match=pattern):
        fl.gap_detection_loss(**args, backend=backend)
    with pytest.raises(exc, match=pattern):
        fl.GapDetectionLoss(backend=backend)(**args)


def test_bad_valid_box_and_both_paddings():
    args = good_args(padding="box")
    for bad, pattern in (
        (zeros(B, 3), r"valid_box.*\[2, 3\]"),
        (zeros(B + 1, 4), r"valid_box.*\[3, 4\]"),
        (zeros(4), r"valid_box.*\[4\]"),
    ):
        with pytest.raises(ValueError, match=pattern):
            fl.gap_detection_loss(**{**args, "valid_box": bad}, backend="torch")
    both = {**args, "padding_mask": torch.zeros(B, 1, HF * 4, WF * 4, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"padding_mask.*valid_box|valid_box.*padding_mask"):
        fl.gap_detection_loss(**both, backend="torch")


def test_confuser_mask_without_confusers():
    args = {**good_args(), "confusers": None}
    with pytest.raises(ValueError, match="confuser_mask"):
        fl.gap_detection_loss(**args, backend="torch")


@pytest.mark.parametrize(
    "name",
    ["heatmap_piece", "offset", "angle", "gap_center", "gap_angle", "confusers", "confuser_mask", "padding_mask"],
)  # fmt: skip
def test_tensor_on_another_device(name):
    """A second device is simulated with "meta" tensors: the error names the argument."""
    args = good_args()
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=rf"{name}.*meta"):
        fl.gap_detection_loss(**args, backend="torch")
    args = good_args(padding="box")
    args["valid_box"] = args["valid_box"].to("meta")
    with pytest.raises(ValueError, match=r"valid_box.*meta"):
        fl.gap_detection_loss(**args, backend="torch")


BAD_OPTIONS = [
    ("label_smoothing", 0.6, ValueError),
    ("label_smoothing", -0.01, ValueError),
    ("center", "middle", ValueError),
    ("center", None, ValueError),
    ("backend", "cuda", ValueError),
    ("backend", "Torch", ValueError),
    ("stride", -2, ValueError),
    ("stride", 0, ValueError),
    ("stride", 2.5, ValueError),
    ("sigma", 0.0, ValueError),
    ("sigma", -1.5, ValueError),
    ("alpha", -1.0, ValueError),
    ("eps", -1e-7, ValueError),
    ("from_logits", "yes", TypeError),
    ("w_angle", "0.2", TypeError),
    ("margin", None, TypeError),
    ("pos_threshold", float("nan"), ValueError),
    ("reg_threshold", float("inf"), ValueError),
    ("margin", float("-inf"), ValueError),
    ("w_angle", float("nan"), ValueError),
    ("w_heatmap", float("inf"), ValueError),
    ("eps", float("inf"), ValueError),
    ("eps", float("nan"), ValueError),
    ("beta", float("inf"), ValueError),
    ("alpha", 1e39, ValueError),  # inf in float32: 1^inf = NaN gradients
    ("sigma", float("inf"), ValueError),
]


@pytest.mark.parametrize(
    "name,value,exc", BAD_OPTIONS, ids=[f"{n}={v!r}" for n, v, _ in BAD_OPTIONS]
)
def test_unknown_option_value(name, value, exc):
    with pytest.raises(exc, match=name):
        fl.GapDetectionLoss(**{name: value})
    with pytest.raises(exc, match=name):
        fl.gap_detection_loss(**good_args(), **{name: value})


def test_errors_raised_before_any_computation(monkeypatch):
    """Bad input fails in validation: neither backend's computation is reached."""
    import fused_losses.gap_detection as gd
    import fused_losses.triton_gap as to

    def boom(*a, **k):
        raise AssertionError("computation reached")

    monkeypatch.setattr(gd, "torch_value_and_grad", boom)
    monkeypatch.setattr(to, "gap_detection_loss_triton", boom)
    for backend in ("auto", "torch", "triton"):
        args = good_args()
        args["offset"] = zeros(B, 3, HF, WF)
        with pytest.raises(ValueError, match="offset"):
            fl.gap_detection_loss(**args, backend=backend)
        args = good_args()
        args["angle"] = args["angle"].to("meta")
        with pytest.raises(ValueError, match="angle"):
            fl.gap_detection_loss(**args, backend=backend)
    # With the interpreter off, backend="triton" cannot run on CPU tensors, yet a bad shape is
    # still reported as the shape error.
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        args = good_args()
        args["gap_center"] = zeros(B, 3)
        with pytest.raises(ValueError, match="gap_center"):
            fl.gap_detection_loss(**args, backend="triton")
        with pytest.raises(ValueError, match="backend"):
            fl.gap_detection_loss(**good_args(), backend="triton")


@pytest.mark.parametrize("padding", [None, "mask", "box"])
def test_empty_batch(backend, padding):
    """B = 0: loss 0 on both backends (as the reference), gradients of shape [0, ...]."""
    c = gap_case(2, (8, 12), confusers=2, padding=padding, seed=41)
    args = [a[:0] if isinstance(a, torch.Tensor) else a for a in c.args()]
    preds = [a.float().to(DEVICE).requires_grad_() for a in args[:4]]
    rest = [a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args[4:]]
    loss = fl.gap_detection_loss(*preds, *rest, backend=backend)
    assert float(R.gap_detection_loss(*args)) == 0.0
    assert float(loss) == 0.0
    grads = torch.autograd.grad(loss, preds)
    assert [g.shape for g in grads] == [p.shape for p in preds]


def _on_device(args: list) -> list:
    """float32 copies of the floating tensors of ``args``, on DEVICE."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor):
            a = a.float() if a.is_floating_point() else a
            a = a.to(DEVICE)
        out.append(a)
    return out


@pytest.mark.parametrize("field", ["gap_center", "piece_center", "gap_angle", "confusers"])
def test_non_finite_coordinates(backend, field):
    """docs/spec.md 8: a NaN centre or angle makes the total and the terms built on it NaN, the
    same on both backends, without an index error (an infinite centre makes the total NaN too);
    a NaN confuser is ignored, exactly as if it were masked out (float64 reference)."""
    c = gap_case(2, (6, 8), confusers=2, padding="box", seed=43)
    args = list(c.args())
    idx = {"gap_center": 4, "piece_center": 5, "gap_angle": 6, "confusers": 7}[field]
    bad = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    bad[idx].view(-1)[0] = float("nan")
    total, comps = fl.gap_detection_loss(*_on_device(bad), backend=backend, return_components=True)
    if field == "confusers":
        mask = torch.ones(2, 2, dtype=torch.bool)
        mask[0, 0] = False
        ref_args = list(args)
        ref_args[8] = mask
        assert_scalar_close(total, R.gap_detection_loss(*ref_args), 1e-5)
        return
    assert torch.isnan(total)
    nan_terms = {
        "gap_center": {"heatmap_gap", "offset"},
        "piece_center": {"heatmap_piece", "offset"},
        "gap_angle": {"angle"},
    }[field]
    assert {k for k, v in comps.items() if torch.isnan(v)} == nan_terms
    if field != "gap_angle":
        bad[idx].view(-1)[0] = float("inf")
        assert torch.isnan(fl.gap_detection_loss(*_on_device(bad), backend=backend))


# ------------------------------------------- unevaluated cells (spec 3.3.1-3.3.3, 8)


def unevaluated_cells(case: GapCase, stride: int = 4, sigma: float = 1.5, reg_threshold=0.7):
    """Bool maps of the cells each prediction's terms do not evaluate (float64 reference labels):
    heatmaps where W = 0 and no hard-negative sample (the gap centre, every confuser) is within
    two cells; offsets (gap, piece channels) and the angle where m = (Y > reg_threshold) W = 0."""
    b, _, hf, wf = case.heatmap_gap.shape
    f64 = torch.float64
    w = R.padding_weight(case.padding_mask, case.valid_box, size=(hf, wf), stride=stride, dtype=f64)
    w = w.expand(b, 1, hf, wf)
    lab = dict(sigma=sigma, stride=stride, dtype=f64)
    m_gap = (R.gaussian_heatmap(case.gap_center[:, None], (hf, wf), **lab) > reg_threshold) * w
    m_piece = (R.gaussian_heatmap(case.piece_center[:, None], (hf, wf), **lab) > reg_threshold) * w
    points = torch.cat([case.gap_center[:, None], case.confusers], dim=1) / stride  # [B, 1+K, 2]
    ii = torch.arange(hf, dtype=f64).view(1, 1, hf, 1)
    jj = torch.arange(wf, dtype=f64).view(1, 1, 1, wf)
    u, v = points[..., 0, None, None], points[..., 1, None, None]
    near = ((jj - u).abs() < 2) & ((ii - v).abs() < 2)  # [B, 1+K, Hf, Wf]
    heat = (w == 0) & ~near.any(1, keepdim=True)
    offset = torch.cat([m_gap == 0] * 2 + [m_piece == 0] * 2, dim=1)
    return {
        "heatmap_gap": heat,
        "heatmap_piece": heat,
        "offset": offset,
        "angle": torch.cat([m_gap == 0] * 2, dim=1),
    }


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("padding", ["mask", "box"])
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
def test_non_finite_prediction_at_unevaluated_cells(backend, value, padding, from_logits, dt):
    """Spec 3.3.1-3.3.3: a NaN or +inf prediction at a padded heatmap cell (W = 0; no hard-negative
    sample near it) or at an unsupervised offset / angle cell (m = 0; window cells of the torch
    backend included) adds 0 and gets a 0 gradient: the total and the components equal the float64
    reference on the same inputs with the finite values there, and every gradient is finite and
    the reference's. (The old triton backend multiplied by m: NaN * 0 = NaN; the old torch backend
    did for the heatmaps and the window cells.)"""
    case = gap_case(2, (16, 32), confusers=2, padding=padding, from_logits=from_logits, seed=53)
    off = unevaluated_cells(case)
    for name in PREDICTIONS:
        assert off[name].any() and (~off[name]).any(), name
    clean = case.to(dt).to(torch.float64, requires_grad=True)
    r = upstream_scalar(53)
    ref_total, ref_comps = R.gap_detection_loss(*clean.args(), True, from_logits=from_logits)
    (ref_total * r).backward()
    assert torch.isfinite(ref_total)

    preds = []
    for name in PREDICTIONS:
        x = getattr(case, name).to(dt, copy=True)
        x[off[name]] = value
        preds.append(x.to(DEVICE).requires_grad_(True))
    rest = [a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in case.to(dt).args()[4:]]
    total, comps = fl.gap_detection_loss(
        *preds, *rest, True, from_logits=from_logits, backend=backend
    )
    assert total.dtype == dt
    (total * r).backward()
    assert_scalar_close(total, ref_total, 1e-5, "total")
    for name in COMPONENTS:
        assert_scalar_close(comps[name], ref_comps[name], 1e-5, name)
    for name, x in zip(PREDICTIONS, preds):
        g = x.grad.cpu()
        assert torch.isfinite(g).all(), name
        assert torch.count_nonzero(g[off[name]]) == 0, name
        assert_grad_close(g, getattr(clean, name).grad, 1e-5, f"grad {name}")


@pytest.mark.parametrize("name", PREDICTIONS)
def test_nan_prediction_at_an_evaluated_cell_is_nan(backend, name):
    """Spec 8: a NaN prediction where its term evaluates the cell (W != 0 for a heatmap, m != 0 for
    the offsets and the angle) makes the total NaN: the loss says the input is broken."""
    case = gap_case(2, (16, 32), confusers=2, padding="box", seed=53)
    live = ~unevaluated_cells(case)[name]
    if name.startswith("heatmap"):
        live = R.padding_weight(None, case.valid_box, size=(16, 32), dtype=torch.float64) != 0
    args = [a.float().to(DEVICE) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in case.args()]  # fmt: skip
    i = PREDICTIONS.index(name)
    args[i] = args[i].clone()
    args[i][live.nonzero()[-1].unbind()] = float("nan")
    total, comps = fl.gap_detection_loss(*args, True, backend=backend)
    assert torch.isnan(total)
    assert torch.isnan(comps[name])
