"""The loss registry (docs/spec.md 12): building from configs, BaseLoss's weighting and
reduction rules, and the detection family against the literal float64 reference."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_grad_close, assert_scalar_close, build_loss

import fused_losses as fl
from fused_losses.registry import LOSSES, BaseLoss, MultiLoss, build_multi_loss
from fused_losses.registry import utils as U

EPS32 = float(torch.finfo(torch.float32).eps)


def boxes(n: int, seed: int = 0, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Matched xyxy boxes [n,4]: random overlapping pairs."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 50
    wh = 5 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 30
    shift = torch.randn(n, 4, generator=g, dtype=torch.float64) * 4
    target = torch.cat([xy, xy + wh], -1)
    return (target + shift).to(dtype), target.to(dtype)


# ------------------------------------------------------------------------------------ building


def test_single_list_and_named_configs():
    one = build_loss({"type": "SmoothL1Loss", "beta": 0.5, "loss_weight": 2.0})
    assert isinstance(one, BaseLoss) and one.options["beta"] == 0.5 and one.loss_weight == 2.0
    multi = build_loss(
        [{"type": "L1Loss"}, {"type": "L1Loss", "weight": 0.5}, {"type": "GIoULoss"}]
    )
    assert isinstance(multi, MultiLoss)
    assert list(multi.keys()) == ["loss_l1", "loss_l1_1", "loss_giou"]
    named = build_loss({"cls": {"type": "L1Loss"}, "bbox": {"type": "CIoULoss", "loss_weight": 2}})
    assert list(named.keys()) == ["cls", "bbox"] and named["bbox"].loss_name == "bbox"
    p, t = boxes(6)
    total, parts = multi(p, t, return_components=True)
    expect = (p - t).abs().mean() * 1.5 + build_loss({"type": "GIoULoss"})(p, t)
    assert_scalar_close(total, expect, 1e-12)
    assert set(parts) == {"loss_l1", "loss_l1_1", "loss_giou"}
    assert all(not v.requires_grad for v in parts.values())
    assert isinstance(build_multi_loss([{"type": "L1Loss"}]), MultiLoss)


def test_config_is_not_modified_and_type_may_be_a_class():
    cfg = {"type": "IoULoss", "mode": "linear", "weight": 3.0}
    before = copy.deepcopy(cfg)
    build_loss(cfg)
    assert cfg == before
    assert isinstance(build_loss({"type": fl.registry.detection.L1Loss}), BaseLoss)


def test_every_registered_name_builds():
    names = list(LOSSES)
    assert {"IoULoss", "GIoULoss", "DIoULoss", "CIoULoss", "EIoULoss", "SmoothL1Loss", "L1Loss",
            "BalancedL1Loss", "DistributionFocalLoss"} <= set(names)  # fmt: skip
    required = {"MGDLoss": {"teacher_channels": 4}, "CRDLoss": {"n_data": 100}}
    for name in names:
        loss = build_loss({"type": name, **required.get(name, {})})
        assert loss.loss_name.startswith("loss_") and name in LOSSES


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"type": "NoSuchLoss"}, "NoSuchLoss.*registered: .*GIoULoss"),
        ({"type": "L1Loss", "beta": 1.0}, "beta: not an option of L1Loss"),
        ({"type": "GIoULoss", "bbox_fromat": "xyxy"}, "did you mean 'bbox_format'"),
        ({"type": "L1Loss", "weight": 1.0, "loss_weight": 2.0}, "weight"),
        ({"type": "L1Loss", "weight": [1.0]}, "weight"),
        ({"type": "IoULoss", "mode": "cube"}, "mode"),
        ({"type": "GIoULoss", "bbox_format": "xywhr"}, "bbox_format"),
        ({"type": "L1Loss", "reduction": "avg"}, "reduction"),
        ({"type": "L1Loss", "reduction": "sum", "avg_factor": 3}, "avg_factor"),
        ({"type": "L1Loss", "loss_weight": float("nan")}, "loss_weight"),
        ({"type": "SmoothL1Loss", "beta": -1.0}, "beta"),
        ({"type": "DistributionFocalLoss", "reg_max": 0}, "reg_max"),
        ({"loss_type": "L1Loss"}, "type"),
    ],
)
def test_bad_configs_are_named(cfg, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build_loss(cfg)


def test_register_module():
    from fused_losses.registry import Registry

    reg = Registry("test")

    @reg.register_module()
    class MyLoss(BaseLoss):
        def _forward(self, pred, target):
            return (pred - target) ** 2, None

    assert "MyLoss" in reg and list(reg) == ["MyLoss"]
    with pytest.raises(ValueError, match="already registered"):
        reg.register_module(module=MyLoss)
    reg.register_module(name="Other", force=True, module=MyLoss)
    loss = reg.build({"type": "MyLoss"})
    assert loss.loss_name == "loss_my"
    assert_scalar_close(loss(torch.ones(3), torch.zeros(3)), 1.0, 0)
    with pytest.raises(TypeError, match="module"):
        reg.register_module(module=int)


# ----------------------------------------------------------------------------- reduction rules


def test_reductions_and_avg_factor():
    p, t = boxes(5)
    d = (p - t).abs()
    loss = build_loss({"type": "L1Loss"})
    assert_scalar_close(loss(p, t), d.mean(), 1e-12)
    assert_scalar_close(loss(p, t, reduction_override="sum"), d.sum(), 1e-12)
    assert torch.equal(loss(p, t, reduction_override="none"), d)
    assert_scalar_close(loss(p, t, avg_factor=7), d.sum() / (7 + EPS32), 1e-12)
    assert_scalar_close(loss(p, t, avg_factor=torch.tensor(7.0)), d.sum() / (7 + EPS32), 1e-12)
    assert_scalar_close(loss(p, t, reduction_override="batchmean"), d.sum() / 5, 1e-12)
    with pytest.raises(ValueError, match="avg_factor"):
        loss(p, t, avg_factor=2, reduction_override="sum")
    configured = build_loss({"type": "L1Loss", "avg_factor": 4.0, "loss_weight": 0.5})
    assert_scalar_close(configured(p, t), 0.5 * d.sum() / (4 + EPS32), 1e-12)


@pytest.mark.parametrize(
    "cfg", [{"type": "L1Loss"}, {"type": "FocalLoss"}, {"type": "KDLoss"},
            {"type": "FeatureMSELoss"}, {"type": "OHEMCrossEntropyLoss"}, {"type": "SurfaceLoss"}],
    ids=lambda c: c["type"],
)  # fmt: skip
def test_a_bad_reduction_override_is_named(cfg):
    """A bad ``reduction_override`` was reported as "reduction: ..." (the build option's name),
    or not at all by the losses with their own forward; it names the call's argument now, before
    the inputs are looked at."""
    loss = build_loss(cfg)
    x = torch.randn(2, 3, 4)
    for bad in ("avg", "Mean", 1, ["sum"]):
        with pytest.raises(ValueError, match=r"^reduction_override: expected None or one of"):
            loss(x, x, reduction_override=bad)


@pytest.mark.parametrize("name", ["GIoULoss", "DistributionFocalLoss"])
def test_batchmean_of_one_unbatched_sample_is_its_loss(name):
    """One box [4] (one DFL row [R+1]) has a 0-dim l: "batchmean" divided it by pred.shape[0]
    (4 coordinates, R+1 bins) instead of by the one sample."""
    if name == "GIoULoss":
        p, t = (b[0] for b in boxes(1))
        ref = RD.giou_loss(p, t)
    else:
        g = torch.Generator().manual_seed(2)
        p = torch.randn(17, generator=g, dtype=torch.float64)
        t = torch.tensor(3.3, dtype=torch.float64)
        ref = RD.distribution_focal_loss(p, t, reg_max=16)
    got = build_loss({"type": name})(p, t, reduction_override="batchmean")
    assert ref.dim() == 0
    assert_scalar_close(got, RU.reduce_with_validity(ref, None, None, "batchmean"), 1e-12)
    assert_scalar_close(got, ref, 1e-12)


def test_weights_of_each_accepted_shape():
    p, t = boxes(5)
    d = (p - t).abs()
    w = torch.rand(5, 4, dtype=torch.float64)
    l1 = build_loss({"type": "L1Loss"})
    assert_scalar_close(l1(p, t, weight=w), (d * w).mean(), 1e-12)
    assert_scalar_close(l1(p, t, weight=w[:, :1]), (d * w[:, :1]).mean(), 1e-12)  # broadcast
    assert_scalar_close(l1(p, t, weight=w[:, 0]), (d * w[:, :1]).mean(), 1e-12)  # no class axis
    giou = build_loss({"type": "GIoULoss"})
    per_box = giou(p, t, reduction_override="none")
    assert_scalar_close(giou(p, t, weight=w), (per_box * w.mean(-1)).mean(), 1e-12)  # [N,4]
    assert_scalar_close(giou(p, t, weight=w[:, 0]), (per_box * w[:, 0]).mean(), 1e-12)
    with pytest.raises(ValueError, match="weight"):
        l1(p, t, weight=torch.ones(3))


def test_zero_weight_hides_a_non_finite_element():
    p, t = boxes(4)
    p = p.clone()
    p[1] = float("inf")  # a padded box
    p.requires_grad_()
    w = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    for name in ("L1Loss", "SmoothL1Loss", "BalancedL1Loss", *BOX_LOSSES):
        loss = build_loss({"type": name})(p, t, weight=w)
        (g,) = torch.autograd.grad(loss, p)
        assert torch.isfinite(loss) and torch.isfinite(g).all(), name
        assert (g[1] == 0).all(), name


def test_call_options_are_checked():
    p, t = boxes(3)
    with pytest.raises(ValueError, match="beta: not an option of a SmoothL1Loss call"):
        build_loss({"type": "SmoothL1Loss"})(p, t, beta=2.0)


def test_utils():
    labels = torch.tensor([[0, 2, 255], [3, 1, 1]])
    one = U.convert_to_one_hot(labels, 3, ignore_index=255)
    assert one.shape == (2, 3, 3)
    assert one[0, :, 2].sum() == 0 and one[1, :, 0].sum() == 0  # ignored, out of range
    assert one[1, 1, 1] == 1
    w = U.get_class_weight(labels, "inverse", 4, ignore_index=255)
    counts = torch.tensor([1.0, 2.0, 1.0, 1.0])
    inv = 1 / counts
    assert torch.allclose(w, inv / inv.mean())
    med = U.get_class_weight(labels, "median_freq", 5, ignore_index=255)
    f = counts / counts.sum()
    assert med[4] == 0 and torch.allclose(med[:4], f.median() / f)
    x = torch.randn(6, 3, dtype=torch.float64)
    y = (torch.rand(6, 3) > 0.5).double()
    p = torch.sigmoid(x)
    ce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    pt = p * y + (1 - p) * (1 - y)
    expect = (0.25 * y + 0.75 * (1 - y)) * ce * (1 - pt) ** 2
    assert torch.allclose(U.sigmoid_focal_loss(x, y), expect)
    assert_scalar_close(U.weight_reduce_loss(expect, avg_factor=3.0), expect.sum() / (3 + EPS32),
                        1e-12)  # fmt: skip


# ------------------------------------------------------------------------------- degenerate boxes


DEGENERATE = {
    "zero_area": ([[5.0, 5.0, 5.0, 5.0]], [[5.0, 5.0, 5.0, 5.0]]),
    "identical": ([[1.0, 2.0, 8.0, 9.0]], [[1.0, 2.0, 8.0, 9.0]]),
    "coincident_centres": ([[0.0, 0.0, 10.0, 4.0]], [[3.0, -3.0, 7.0, 7.0]]),
    "disjoint": ([[0.0, 0.0, 1.0, 1.0]], [[50.0, 50.0, 60.0, 70.0]]),
    "line": ([[0.0, 0.0, 10.0, 0.0]], [[0.0, 0.0, 10.0, 3.0]]),
}
BOX_LOSSES = ["IoULoss", "GIoULoss", "DIoULoss", "CIoULoss", "EIoULoss", "SIoULoss"]


@pytest.mark.parametrize("name", BOX_LOSSES)
@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_boxes_are_finite(name, case):
    p, t = (torch.tensor(x, dtype=torch.float32) for x in DEGENERATE[case])
    p.requires_grad_()
    loss = build_loss({"type": name})(p, t)
    (g,) = torch.autograd.grad(loss, p)
    assert torch.isfinite(loss) and torch.isfinite(g).all()


@pytest.mark.parametrize("name", [*BOX_LOSSES, "SmoothL1Loss", "BalancedL1Loss"])
def test_traces_fullgraph(name):
    loss = build_loss({"type": name})
    p, t = boxes(8, dtype=torch.float32)
    w = torch.rand(8)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b, c: loss(a, b, weight=c, avg_factor=3.0),
                             fullgraph=True, backend="eager")  # fmt: skip
    assert torch.allclose(compiled(p, t, w), loss(p, t, weight=w, avg_factor=3.0))


# ------------------------------------------------------------------- parity with the reference


from fused_losses.reference.registry import detection as RD  # noqa: E402
from fused_losses.reference.registry import utils as RU  # noqa: E402

DETECTION_CASES = {
    "IoULoss": (RD.iou_loss, {}),
    "IoULoss[linear]": (RD.iou_loss, {"mode": "linear"}),
    "IoULoss[square,xywh]": (RD.iou_loss, {"mode": "square", "bbox_format": "xywh"}),
    "GIoULoss": (RD.giou_loss, {}),
    "DIoULoss": (RD.diou_loss, {}),
    "CIoULoss": (RD.ciou_loss, {}),
    "CIoULoss[xywh]": (RD.ciou_loss, {"bbox_format": "xywh"}),
    "EIoULoss": (RD.eiou_loss, {}),
    "SIoULoss": (RD.siou_loss, {}),
    "SIoULoss[theta2,xywh]": (RD.siou_loss, {"theta": 2.0, "bbox_format": "xywh"}),
    "SmoothL1Loss": (RD.smooth_l1_loss, {"beta": 0.7}),
    "SmoothL1Loss[beta0]": (RD.smooth_l1_loss, {"beta": 0.0}),
    "L1Loss": (RD.l1_loss, {}),
    "BalancedL1Loss": (RD.balanced_l1_loss, {"alpha": 0.4, "gamma": 1.2, "beta": 2.0}),
}
REDUCTION_CASES = [
    dict(),
    dict(reduction_override="sum"),
    dict(reduction_override="none"),
    dict(avg_factor=5.0),
    dict(weight="per_box"),
    dict(weight="per_coord", avg_factor=torch.tensor(3.0, dtype=torch.float64)),
]


@pytest.mark.parametrize("call", REDUCTION_CASES, ids=lambda c: ",".join(c) or "mean")
@pytest.mark.parametrize("case", list(DETECTION_CASES))
def test_detection_matches_the_reference(case, call):
    fn, opts = DETECTION_CASES[case]
    name = case.split("[")[0]
    p, t = boxes(9, seed=3)
    if "xywh" in case:  # (cx, cy, w, h)
        p = torch.cat([(p[:, :2] + p[:, 2:]) / 2, (p[:, 2:] - p[:, :2]).abs()], -1)
        t = torch.cat([(t[:, :2] + t[:, 2:]) / 2, (t[:, 2:] - t[:, :2]).abs()], -1)
    g = torch.Generator().manual_seed(4)
    call = dict(call)
    if call.get("weight") == "per_box":
        call["weight"] = torch.rand(9, generator=g, dtype=torch.float64) * (torch.arange(9) % 3 > 0)
    elif call.get("weight") == "per_coord":
        call["weight"] = torch.rand(9, 4, generator=g, dtype=torch.float64)
    box = name not in ("SmoothL1Loss", "L1Loss", "BalancedL1Loss")
    loss = build_loss({"type": name, **opts, "loss_weight": 1.5})
    x = p.clone().requires_grad_()
    got = loss(x, t, **call)
    (g_got,) = torch.autograd.grad(got.sum(), x)
    xr = p.clone().requires_grad_()
    elem = fn(xr, t, **opts)
    w = call.get("weight")
    if w is not None and box:
        w = RD.box_weight(w, elem)
    ref = 1.5 * RU.reduce_with_validity(
        elem, w, None, call.get("reduction_override", "mean"), call.get("avg_factor")
    )
    (g_ref,) = torch.autograd.grad(ref.sum(), xr)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-12)
    assert_grad_close(g_got, g_ref, 1e-10)


def test_distribution_focal_loss_matches_the_reference():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 4, 17, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(6, 4, generator=g, dtype=torch.float64) * 16
    y[0, 0], y[0, 1], y[0, 2] = 0.0, 16.0, 3.0  # the ends and an integer
    got = build_loss({"type": "DistributionFocalLoss"})(x, y, avg_factor=4.0)
    ref = RU.reduce_with_validity(RD.distribution_focal_loss(x, y, reg_max=16), avg_factor=4.0)
    assert_scalar_close(got, ref, 1e-12)
    (g1,) = torch.autograd.grad(got, x)
    (g2,) = torch.autograd.grad(ref, x)
    assert_grad_close(g1, g2, 1e-10)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_distribution_focal_loss_zero_weight_hides_a_non_finite_target(bad):
    """A NaN target raised "index -9223372036854775808 is out of bounds" (floor(NaN).long())
    even at weight 0, and an inf target at weight 0 gave NaN gradients (spec 12.2 rule 1)."""
    g = torch.Generator().manual_seed(6)
    x0 = torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0.0, 1.5, 3.99, 4.0, 2.2, 0.3], dtype=torch.float64)
    w = torch.tensor([1.0, 0.0, 1.0, 0.5, 1.0, 1.0], dtype=torch.float64)
    y_bad = y.clone()
    y_bad[1] = bad
    loss = build_loss({"type": "DistributionFocalLoss", "reg_max": 4})
    x = x0.clone().requires_grad_()
    got = loss(x, y_bad, weight=w)
    (g_got,) = torch.autograd.grad(got, x)
    xr = x0.clone().requires_grad_()
    ref = RU.reduce_with_validity(RD.distribution_focal_loss(xr, y, reg_max=4), w)
    (g_ref,) = torch.autograd.grad(ref, xr)
    assert_scalar_close(got, ref, 1e-12)
    assert_grad_close(g_got, g_ref, 1e-10)
    assert (g_got[1] == 0).all()
    none = loss(x0, y_bad, weight=w, reduction_override="none")
    assert none[1] == 0 and torch.isfinite(none).all()
    # float32 and a weight without the last axis broadcast: the same
    got32 = loss(x0.float(), y_bad.float(), weight=w.float())
    assert_scalar_close(got32, ref, 1e-5)


def test_distribution_focal_loss_nan_target_gives_nan_not_an_index_error():
    """A NaN target of nonzero weight: a NaN loss (its bins gathered at 0; no out-of-range
    index, so no device-side assert on CUDA), the reference likewise."""
    x = torch.randn(3, 5, dtype=torch.float64)
    y = torch.tensor([1.0, float("nan"), 2.0], dtype=torch.float64)
    loss = build_loss({"type": "DistributionFocalLoss", "reg_max": 4})
    out = loss(x, y, reduction_override="none")
    ref = RD.distribution_focal_loss(x, y, reg_max=4)
    assert torch.isnan(out[1]) and torch.isnan(ref[1])
    assert torch.allclose(out[[0, 2]], ref[[0, 2]], rtol=1e-12)
    assert torch.isnan(loss(x, y))
    with pytest.raises(TypeError, match="target"):
        loss(x, y.to(torch.complex128))


def test_avg_factor_is_checked():
    """avg_factor (spec 12.2): None, a real number or a one-element real tensor, in a call and in
    the config; a [2] tensor gave a [2]-shaped "loss", "3" and True were accepted."""
    p, t = boxes(5)
    d = (p - t).abs()
    l1 = build_loss({"type": "L1Loss"})
    for bad, err in [(torch.tensor([2.0, 3.0]), ValueError), ("3", TypeError), (True, TypeError),
                     ("abc", TypeError), (float("nan"), ValueError), (2**2000, ValueError),
                     (torch.tensor(True), TypeError), (torch.tensor([1j]), TypeError),
                     ([7.0], TypeError)]:  # fmt: skip
        with pytest.raises(err, match="avg_factor"):
            l1(p, t, avg_factor=bad)
        with pytest.raises(err, match="avg_factor"):
            build_loss({"type": "L1Loss", "avg_factor": bad})
        with pytest.raises(err, match="avg_factor"):
            l1(p, t, avg_factor=bad, reduction_override="none")
    for good in (7, 7.0, torch.tensor(7.0), torch.tensor([7.0]), torch.tensor([[7]])):
        out = l1(p, t, avg_factor=good)
        assert out.shape == ()
        assert_scalar_close(out, d.sum() / (7 + EPS32), 1e-12)
        assert_scalar_close(build_loss({"type": "L1Loss", "avg_factor": good})(p, t),
                            d.sum() / (7 + EPS32), 1e-12)  # fmt: skip
    # a tensor avg_factor under torch.compile: no host sync, no graph break
    torch._dynamo.reset()
    fn = torch.compile(lambda a, b, av: l1(a, b, avg_factor=av), fullgraph=True, backend="eager")
    for av in (torch.tensor(7.0), torch.tensor([3.0]), 5.0, 6.0):
        assert_scalar_close(fn(p, t, av), l1(p, t, avg_factor=av), 1e-12)


def test_utils_match_the_reference():
    g = torch.Generator().manual_seed(6)
    labels = torch.randint(0, 6, (4, 50), generator=g)
    labels[0, :5] = 255
    labels[labels == 4] = 3  # class 4 absent
    for method in ("inverse", "sqrt_inverse", "effective_num", "median_freq"):
        got = U.get_class_weight(labels, method, 6, ignore_index=255)
        ref = RU.get_class_weight(labels, method, 6, ignore_index=255)
        assert torch.allclose(got, ref, rtol=1e-6), method
    assert torch.equal(U.convert_to_one_hot(labels, 6, 255), RU.convert_to_one_hot(labels, 6, 255))
    a, b = boxes(5, seed=7)
    for aligned in (True, False):
        for fn in ("compute_iou", "compute_giou"):
            got = getattr(U, fn)(a, b, aligned=aligned)
            ref = getattr(RU, fn)(a, b, aligned=aligned)
            assert torch.allclose(got, ref, rtol=1e-12), (fn, aligned)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.rand(5, 3, generator=g, dtype=torch.float64)
    for alpha in (0.25, -1.0):
        got = U.sigmoid_focal_loss(x, y, alpha=alpha, reduction="mean", avg_factor=2.0)
        ref = RU.sigmoid_focal_loss(x, y, alpha=alpha, reduction="mean", avg_factor=2.0)
        assert_scalar_close(got, ref, 1e-12)
    assert float(U.reduce_loss(torch.zeros(0), "mean")) == 0.0


# ------------------------------------------------------------------ the project's own losses


def test_project_losses_are_registered():
    from fused_losses.registry.project import MODULES

    for module in MODULES:
        assert module.__name__ in LOSSES
    for name in ("GapDetectionLoss", "CenterNetLoss", "CASSLoss", "RoRDLoss"):
        loss = build_loss({"type": name, "loss_weight": 2.0})
        assert isinstance(loss.loss, getattr(fl, name))
    loss = build_loss({"type": "MaskedSmoothL1Loss", "beta": 0.5, "weight": 3.0})
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(2, 2, 4, 4, generator=g), torch.randn(2, 2, 4, 4, generator=g)
    m = (torch.rand(2, 1, 4, 4, generator=g) > 0.5).float()
    expect = 3.0 * fl.masked_smooth_l1_loss(p, t, m, beta=0.5)
    assert_scalar_close(loss(p, t, m), expect, 1e-6)
    with pytest.raises(ValueError, match="reduction"):
        build_loss({"type": "GapDetectionLoss", "reduction": "sum"})
    with pytest.raises(ValueError, match="sigma_x"):
        build_loss({"type": "GapDetectionLoss", "sigma_x": 2.0})


# ------------------------------------------------------------------------------- YAML configs

# The config examples of seeds/003 (verbatim) whose losses exist; each builds from the YAML and runs.
SEED_CLASSIFICATION = """
loss:
  type: CrossEntropyLoss
  loss_weight: 1.0
  label_smoothing: 0.1
  class_weight: [1.0, 2.0, 1.5]  # 可选
"""
SEED_FOCAL = """
loss:
  type: FocalLoss
  alpha: 0.25
  gamma: 2.0
  loss_weight: 1.0
"""
SEED_DETECTION = """
loss:
  cls_loss:
    type: QualityFocalLoss
    beta: 2.0
    loss_weight: 1.0
  bbox_loss:
    type: CIoULoss
    loss_weight: 2.0
"""
LIST_CONFIG = """
loss:
  - type: CrossEntropyLoss
    weight: 1.0
    ignore_index: 255
  - type: LabelSmoothLoss
    weight: 0.5
    ignore_index: 255
"""


def test_seed_yaml_configs_build_and_run():
    import yaml  # a test dependency (the package never parses YAML)
    from fused_losses.reference.registry import classification as RC

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (4, 5, 5), generator=g)
    ce = build_loss(yaml.safe_load(SEED_CLASSIFICATION)["loss"])
    elem, v = RC.cross_entropy(x, y, label_smoothing=0.1, class_weight=[1.0, 2.0, 1.5])
    assert_scalar_close(ce(x, y), RU.reduce_with_validity(elem, None, v), 1e-12)

    focal = build_loss(yaml.safe_load(SEED_FOCAL)["loss"])
    elem, v = RC.focal_loss(x, y, alpha=0.25, gamma=2.0)
    assert_scalar_close(focal(x, y), RU.reduce_with_validity(elem, None, v), 1e-12)

    named = build_loss(yaml.safe_load(SEED_DETECTION)["loss"])
    assert isinstance(named, MultiLoss) and list(named) == ["cls_loss", "bbox_loss"]
    scores = torch.rand(4, 5, generator=g, dtype=torch.float64)
    cls_logits, labels = torch.randn(4, 3, 5, generator=g, dtype=torch.float64), y[:, 0]
    q = named["cls_loss"](cls_logits, (labels, scores), avg_factor=3.0)
    expect = RD.quality_focal_loss(cls_logits, (labels, scores)).sum() / (3.0 + EPS32)
    assert_scalar_close(q, expect, 1e-12)
    p, t = boxes(5)
    assert_scalar_close(named["bbox_loss"](p, t), 2.0 * RD.ciou_loss(p, t).mean(), 1e-12)

    multi = build_loss(yaml.safe_load(LIST_CONFIG)["loss"])
    y255 = torch.where(torch.rand(4, 5, 5, generator=g) < 0.2, 255, y)
    total, parts = multi(x, y255, return_components=True)
    l1, v1 = RC.cross_entropy(x, y255, ignore_index=255)
    l2, v2 = RC.label_smooth_loss(x, y255, ignore_index=255)
    expect = RU.reduce_with_validity(l1, None, v1) + 0.5 * RU.reduce_with_validity(l2, None, v2)
    assert_scalar_close(total, expect, 1e-12)
    assert set(parts) == {"loss_crossentropy", "loss_labelsmooth"}


@pytest.mark.parametrize(
    "cfg",
    [{"type": "OHEMCrossEntropyLoss"}, {"type": "SurfaceLoss"}, {"type": "FeatureMSELoss"}],
    ids=lambda c: c["type"],
)
def test_avg_factor_is_checked_by_the_own_forwards(cfg, backend):
    """The losses with their own forward (OHEM, Surface, the fused feature losses) check a call's
    avg_factor like BaseLoss: a [2] tensor gave a [2]-shaped "loss"."""
    loss = build_loss({**cfg, "backend": backend})
    x = torch.randn(2, 3, 4, 4)
    target = {
        "OHEMCrossEntropyLoss": torch.randint(0, 3, (2, 4, 4)),
        "SurfaceLoss": torch.randn(2, 3, 4, 4),
        "FeatureMSELoss": torch.randn(2, 3, 4, 4),
    }[cfg["type"]]
    for bad, err in [(torch.tensor([2.0, 3.0]), ValueError), ("3", TypeError)]:
        with pytest.raises(err, match="avg_factor"):
            loss(x, target, avg_factor=bad)
    assert loss(x, target, avg_factor=torch.tensor([4.0])).shape == ()


@pytest.mark.parametrize(
    ("cfg", "pred_shape", "target"),
    [
        ({"type": "L1Loss"}, (2, 4), lambda: torch.randn(2, 4)),
        ({"type": "GIoULoss"}, (2, 4), lambda: boxes(2)[1]),
        ({"type": "CrossEntropyLoss"}, (2, 3), lambda: torch.tensor([0, 2])),
        ({"type": "OHEMCrossEntropyLoss"}, (2, 3, 4, 4), lambda: torch.randint(0, 3, (2, 4, 4))),
        ({"type": "SurfaceLoss"}, (2, 3, 4, 4), lambda: torch.randn(2, 3, 4, 4)),
        ({"type": "FeatureMSELoss"}, (2, 3, 4, 4), lambda: torch.randn(2, 3, 4, 4)),
    ],
    ids=lambda c: c["type"] if isinstance(c, dict) else "",
)
def test_a_bad_sample_weight_is_named(cfg, pred_shape, target, backend):
    """A call's weight (spec 12.2): a list, a complex tensor or one on another device is a
    TypeError/ValueError naming ``weight`` before any work (a list gave an AttributeError, a
    complex weight was cast to real with a warning, a meta one failed inside torch)."""
    loss = build_loss({**cfg, "backend": backend})
    p = boxes(2)[0] if cfg["type"] == "GIoULoss" else torch.randn(pred_shape)
    t = target()
    w = torch.ones(())  # broadcastable to every l
    bad_weights = [([1.0, 1.0], TypeError), (w.to(torch.complex64), TypeError)]
    if backend == "torch":  # (the GPU check moves a triton call's tensors to CUDA)
        bad_weights.append((w.to("meta"), ValueError))
    for bad, err in bad_weights:
        with pytest.raises(err, match=r"^weight"):
            loss(p, t, weight=bad)
    assert torch.isfinite(loss(p, t, weight=w.to(torch.bool)))  # a bool mask is a weight


def test_a_loss_weight_beyond_float_range_is_named():
    # 10**400 is a finite int that no float holds: a ValueError, not Python's OverflowError
    for key in ("loss_weight", "weight"):
        with pytest.raises(ValueError, match=rf"^{key}|^loss_weight"):
            build_loss({"type": "L1Loss", key: 10**400})


# ----------------------------------------------------- detection: masking, accuracy, scale, checks

BOX_REFS = {
    "IoULoss": RD.iou_loss,
    "GIoULoss": RD.giou_loss,
    "DIoULoss": RD.diou_loss,
    "CIoULoss": RD.ciou_loss,
    "EIoULoss": RD.eiou_loss,
    "SIoULoss": RD.siou_loss,
}
ELEMENTWISE_REFS = {
    "L1Loss": RD.l1_loss,
    "SmoothL1Loss": RD.smooth_l1_loss,
    "BalancedL1Loss": RD.balanced_l1_loss,
}


def _against_reference(name, opts, p, t, call, ref_fn, tol):
    """The loss (float32 or float64 p, t) and its gradient against the float64 reference with the
    reference reduction (``call``: weight, reduction_override)."""
    loss = build_loss({"type": name, **opts})
    x = p.clone().requires_grad_()
    got = loss(x, t, **call)
    (g_got,) = torch.autograd.grad(got.sum(), x)
    xr = p.double().clone().requires_grad_()
    elem = ref_fn(xr, t.double(), **opts)
    w = call.get("weight")
    if w is not None and name in BOX_REFS:
        w = RD.box_weight(w.double(), elem)
    ref = RU.reduce_with_validity(elem, w, None, call.get("reduction_override", "mean"))
    (g_ref,) = torch.autograd.grad(ref.sum(), xr)
    assert got.shape == ref.shape
    err = ((got.double() - ref).norm() / ref.norm()).item()
    assert err <= tol, (name, opts, err)
    assert_grad_close(g_got, g_ref, tol)
    return g_got


def _grid_boxes(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(*shape, 2, generator=g, dtype=torch.float64) * 10
    wh = 1 + torch.rand(*shape, 2, generator=g, dtype=torch.float64) * 10
    t = torch.cat([xy, xy + wh], -1)
    return (t + torch.randn(*shape, 4, generator=g, dtype=torch.float64)).to(dtype), t.to(dtype)


@pytest.mark.parametrize("name", BOX_LOSSES)
def test_box_zero_weight_masking_follows_the_weight_rule(name):
    """A weight of l's shape without dim 1 ([N] for boxes [N,K,4], spec 12.2 rule 1) weights
    rows; the masking of zero-weight boxes broadcast it from the right (columns) when N == K:
    boxes of weight 1 were replaced by the unit box (loss ~1e-6, gradient 0), 0.4 off in "mean".
    When N != K the mask was skipped and an image of padded (infinite) boxes of weight 0 gave
    NaN gradients."""
    ref_fn = BOX_REFS[name]
    p, t = _grid_boxes((3, 3), seed=11)
    w = torch.tensor([1.0, 0.0, 1.0])
    for red in ("none", "mean"):
        _against_reference(name, {}, p, t, {"weight": w, "reduction_override": red}, ref_fn, 1e-5)
    # N != K: an image of padded boxes, weight 0
    p2, t2 = _grid_boxes((2, 3), seed=12)
    t_bad, p_bad = t2.clone(), p2.clone()
    t_bad[1], p_bad[1] = float("inf"), float("nan")
    loss = build_loss({"type": name})
    x = p_bad.clone().requires_grad_()
    out = loss(x, t_bad, weight=torch.tensor([1.0, 0.0]))
    (g,) = torch.autograd.grad(out, x)
    xr = p2.double().clone().requires_grad_()
    ref = RU.reduce_with_validity(ref_fn(xr, t2.double()), torch.tensor([1.0, 0.0]).double())
    (g_ref,) = torch.autograd.grad(ref, xr)
    assert_scalar_close(out, ref, 1e-5)
    assert_grad_close(g, g_ref, 1e-5)
    assert (g[1] == 0).all()
    # the weight as the reduction takes it: a float64 weight that float32 rounds to 0 masks, an
    # integer [..., 4] weight is averaged (it raised "mean(): could not infer output dtype")
    w64 = torch.tensor([[1.0, 1e-300, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    pi = p.clone()
    pi[0, 1] = float("inf")
    x = pi.clone().requires_grad_()
    (g,) = torch.autograd.grad(loss(x, t, weight=w64), x)
    assert torch.isfinite(g).all() and (g[0, 1] == 0).all()
    wi = torch.ones(3, 3, 4, dtype=torch.int64)
    wi[1] = 0
    _against_reference(name, {}, p, t, {"weight": wi}, ref_fn, 1e-5)
    # a weight that does not expand is named (the mask is never skipped silently)
    with pytest.raises(ValueError, match=r"^weight"):
        loss(p, t, weight=torch.ones(2))


@pytest.mark.parametrize("name", list(ELEMENTWISE_REFS))
def test_elementwise_zero_weight_masking_follows_the_weight_rule(name):
    """A [2,1] weight of [2,2,4] inputs broadcasts (a weight per dim-1 index, spec 12.2 rule 1);
    the masking took it as per sample (dim 1 inserted) and zeroed the inputs of elements of
    weight 1: L1's "none" [1, 0] was 0 instead of |p - t|, "mean" 0.38 off."""
    ref_fn = ELEMENTWISE_REFS[name]
    g = torch.Generator().manual_seed(13)
    p, t = torch.randn(2, 2, 4, generator=g), torch.randn(2, 2, 4, generator=g)
    w = torch.tensor([[1.0], [0.0]])
    for red in ("none", "mean"):
        _against_reference(name, {}, p, t, {"weight": w, "reduction_override": red}, ref_fn, 1e-5)
    # a zero-weight non-finite element stays hidden under the same rule
    pb = p.clone()
    pb[1, 1] = float("inf")
    x = pb.clone().requires_grad_()
    (gr,) = torch.autograd.grad(build_loss({"type": name})(x, t, weight=w), x)
    assert torch.isfinite(gr).all() and (gr[1, 1] == 0).all()
    with pytest.raises(ValueError, match=r"^weight"):
        build_loss({"type": name})(p, t, weight=torch.ones(3))


@pytest.mark.parametrize(
    ("alpha", "gamma", "beta"),
    [(0.5, 1.5, 1.0), (5.0, 0.1, 1.0), (0.5, 1e-3, 1.0), (1.0, 1e-6, 1.0), (0.5, 40.0, 1.0),
     (0.4, 1.2, 2.0), (0.5, 1.5, 0.11), (1e-3, 0.08, 3.0)],
)  # fmt: skip
@pytest.mark.parametrize("scale", [1e-2, 1.0])
def test_balanced_l1_is_accurate_in_float32(alpha, gamma, beta, scale):
    """(alpha/b)(b d + 1) ln(b d/beta + 1) - alpha d cancels for small b d: at (0.5, 1e-3) the
    float32 mean was 4.9e-3 off, at (1, 1e-6) negative (-2.7e-3, reference 2.8e-7)."""
    g = torch.Generator().manual_seed(14)
    p = torch.rand(16, 4, generator=g) * 2 * beta * scale
    t = torch.rand(16, 4, generator=g) * 2 * beta * scale
    opts = {"alpha": alpha, "gamma": gamma, "beta": beta}
    _against_reference("BalancedL1Loss", opts, p, t, {}, RD.balanced_l1_loss, 1e-5)


def test_balanced_l1_options_have_a_range():
    """gamma/alpha beyond exp's range raised a Python OverflowError at call time (alpha=1e-3),
    gamma=1e-20 a ZeroDivisionError (b = e^(1e-20) - 1 = 0); now a ValueError at build time."""
    p, t = boxes(4)
    for cfg, name in [({"alpha": 1e-3}, "gamma"), ({"gamma": 1e-20}, "gamma"),
                      ({"gamma": 1e-10}, "gamma"), ({"alpha": 1e16}, "alpha"),
                      ({"beta": 1e-16}, "beta"), ({"beta": 0.0}, "beta")]:  # fmt: skip
        with pytest.raises(ValueError, match=rf"^{name}: expected .*\["):
            build_loss({"type": "BalancedL1Loss", **cfg})
    edge = build_loss({"type": "BalancedL1Loss", "alpha": 0.5, "gamma": 40.0})  # ratio 80
    assert torch.isfinite(edge(p, t))


def _well_fitting(fmt, n=64, dev=1e-3, seed=15):
    """Targets of 50-150 px, predictions within ``dev`` px (float32)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 500
    wh = torch.rand(n, 2, generator=g) * 100 + 50
    t = torch.cat([xy + wh / 2, wh], -1) if fmt == "xywh" else torch.cat([xy, xy + wh], -1)
    return t + torch.randn(n, 4, generator=g) * dev, t


BOX_ACCURACY_CASES = [
    ("IoULoss", {}), ("IoULoss", {"mode": "linear"}), ("IoULoss", {"mode": "square"}),
    ("GIoULoss", {}), ("DIoULoss", {}), ("CIoULoss", {}), ("EIoULoss", {}), ("SIoULoss", {}),
    ("SIoULoss", {"theta": 1.0}),
]  # fmt: skip


@pytest.mark.parametrize("fmt", ["xyxy", "xywh"])
@pytest.mark.parametrize(("name", "opts"), BOX_ACCURACY_CASES, ids=lambda c: str(c))
def test_box_losses_are_accurate_for_well_fitting_boxes(name, opts, fmt):
    """1 - IoU was formed by subtracting a float32 IoU near 1 from 1: 1.7e-4 off for boxes within
    1e-3 px of 100-px targets, 7 % for identical boxes (the loss is then eps / U)."""
    opts = {**opts, "bbox_format": fmt}
    p, t = _well_fitting(fmt)
    _against_reference(name, opts, p, t, {}, BOX_REFS[name], 1e-5)
    same = t[:8].clone()
    _against_reference(name, opts, same, same, {}, BOX_REFS[name], 1e-5)


@pytest.mark.parametrize("scale", [1e20, 1e37, 3e38])
@pytest.mark.parametrize(("name", "opts"), BOX_ACCURACY_CASES, ids=lambda c: str(c))
def test_box_losses_at_any_finite_scale(name, opts, scale):
    """Areas overflowed float32 from about 1e19: GIoU gave NaN, IoU 13.8 (reference 1.75), CIoU
    1.0011 (reference 0.9270); from 1e37 every loss was NaN or wrong."""
    unit = torch.tensor([[0.0, 0.0, 0.2, 0.3], [-0.5, -0.6, 0.3, 0.1], [0.0, 0.0, 0.1, 0.1]])
    tgt = torch.tensor([[0.1, 0.1, 0.4, 0.35], [-0.4, -0.5, 0.2, 0.3], [0.5, 0.5, 0.9, 0.8]])
    p, t = (unit.double() * scale).float(), (tgt.double() * scale).float()
    _against_reference(name, opts, p, t, {}, BOX_REFS[name], 1e-5)


def test_compute_iou_giou_at_scale_and_accuracy():
    p, t = _well_fitting("xyxy")
    for fn in ("compute_iou", "compute_giou"):
        got, ref = getattr(U, fn)(p, t), getattr(RU, fn)(p.double(), t.double())
        assert got.dtype == torch.float32
        assert torch.allclose(got.double(), ref, rtol=1e-6, atol=0)
    a = torch.tensor([[0.0, 0.0, 2e19, 3e19]])
    b = torch.tensor([[1e19, 1e19, 4e19, 3.5e19]])
    for fn in ("compute_iou", "compute_giou"):
        got, ref = getattr(U, fn)(a, b), getattr(RU, fn)(a.double(), b.double())
        assert torch.allclose(got.double(), ref, rtol=1e-6, atol=1e-7), fn  # (was NaN, 0)
    half = U.compute_iou(torch.tensor([[0.0, 0, 300, 300]]).half(),
                         torch.tensor([[100.0, 100, 400, 400]]).half())  # fmt: skip
    assert half.dtype == torch.float32  # computed in float32 (a half area overflows at 256 px)
    assert torch.allclose(half.double(), torch.tensor([200.0**2 / (2 * 300**2 - 200**2)]).double())


@pytest.mark.parametrize("fn", ["compute_iou", "compute_giou"])
def test_compute_iou_giou_check_their_arguments(fn):
    """Any bbox_format but "xyxy" was taken as "xywh" ("XYXY", "cxcywh", None), and [N,5] boxes,
    integer boxes or mismatched shapes were accepted."""
    f = getattr(U, fn)
    a, b = torch.tensor([[0.0, 0.0, 2.0, 2.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    for bad in ("XYXY", "cxcywh", None, "xyxy "):
        with pytest.raises(ValueError, match=r"^bbox_format"):
            f(a, b, bbox_format=bad)
    cases = [
        ((torch.ones(2, 5), torch.ones(2, 5)), {}, ValueError, "box1"),
        ((a, torch.ones(2, 4)), {}, ValueError, "box2"),
        ((a.long(), b), {}, TypeError, "box1"),
        ((a, b.to(torch.complex64)), {}, TypeError, "box2"),
        ((a.tolist(), b), {}, TypeError, "box1"),
        ((a[0], b), {"aligned": False}, ValueError, "box1"),
        ((a, b.to("meta")), {}, ValueError, "box2"),
        ((a, b), {"eps": -1.0}, ValueError, "eps"),
        ((a, b), {"aligned": 1}, (TypeError, ValueError), "aligned"),
    ]
    for args, kw, err, name in cases:
        with pytest.raises(err, match=rf"^{name}"):
            f(*args, **kw)
    assert f(a, b, aligned=False).shape == (1, 1)
    assert torch.allclose(f(a, b, bbox_format="xywh").double(),
                          getattr(RU, fn)(a.double(), b.double(), bbox_format="xywh"))  # fmt: skip


@pytest.mark.parametrize(
    "name", [*BOX_LOSSES, "L1Loss", "SmoothL1Loss", "BalancedL1Loss", "DistributionFocalLoss"]
)
def test_detection_targets_are_checked(name):
    """A target on another device failed inside torch (RuntimeError), a complex target was cast
    to real with a warning (its imaginary part dropped): now a ValueError / TypeError naming
    ``target`` before any work."""
    loss = build_loss({"type": name, **({"reg_max": 4} if name == "DistributionFocalLoss" else {})})
    if name == "DistributionFocalLoss":
        p, t = torch.randn(3, 5), torch.rand(3) * 4
    else:
        p, t = boxes(3, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"^target: expected a tensor on cpu"):
        loss(p, t.to("meta"))
    with pytest.raises(TypeError, match=r"^target: expected a real tensor"):
        loss(p, t.to(torch.complex64) + 5j)
    with pytest.raises(TypeError, match=r"^target"):
        loss(p, t.tolist())


def test_quality_focal_scores_device_is_checked():
    """QFL checked the labels' device but not the scores': NotImplementedError from torch."""
    loss = build_loss({"type": "QualityFocalLoss", "backend": "torch"})
    x, labels = torch.randn(3, 5), torch.tensor([0, 2, 5])
    with pytest.raises(ValueError, match=r"^target\[1\] \(scores\): expected a tensor on cpu"):
        loss(x, (labels, torch.rand(3, device="meta")))


def test_builder_names_its_bad_arguments():
    """The builder's own arguments (spec 12.1): a non-str type, loss_name or registered name,
    an empty config and a MultiLoss key that no ModuleDict takes are named errors (they were
    an unhashable-type TypeError, ModuleDict's KeyError, or an int 0 "loss" from [])."""
    from fused_losses.registry import Registry

    for cfg, err, match in [
        ({"type": ["L1Loss"]}, TypeError, "^type"),
        ({"type": "L1Loss", "loss_name": 3}, TypeError, "^loss_name"),
        ({"type": "L1Loss", "loss_name": "loss.l1"}, ValueError, "^loss_name"),
        ({"type": "L1Loss", "loss_name": ""}, ValueError, "^loss_name"),
        ([], ValueError, "^cfg"),
        ({"a.b": {"type": "L1Loss"}}, ValueError, "^'a.b'"),
        ({"type": "L1Loss", "weight": "2"}, TypeError, "^weight"),
    ]:
        with pytest.raises(err, match=match):
            build_loss(cfg)
    with pytest.raises(TypeError, match=r"^name"):
        Registry("x").register_module(name=3)(type(build_loss({"type": "L1Loss"})))


def test_numpy_scalars_are_numbers():
    # np.float32 / np.int64 options are numbers like Python's (np.float64 already was)
    import numpy as np

    p, t = boxes(3)
    ref = build_loss({"type": "L1Loss", "loss_weight": 2.0})(p, t)
    for w in (np.float32(2.0), np.int64(2), np.float64(2.0)):
        assert build_loss({"type": "L1Loss", "loss_weight": w})(p, t) == ref
        assert build_loss({"type": "L1Loss", "weight": w})(p, t) == ref
    with pytest.raises(TypeError, match=r"^loss_weight"):
        build_loss({"type": "L1Loss", "loss_weight": np.bool_(True)})
    # the other families' options go through the same checks (spec 3.5)
    import fused_losses as fl

    pose = fl.CenterNetPoseLoss(wh_weight=np.float32(0.5), down_ratio=np.int64(4))
    assert pose.options.wh_weight == 0.5 and pose.options.down_ratio == 4


@pytest.mark.parametrize(
    ("cfg", "x", "target"),
    [
        ({"type": "L1Loss"}, lambda: torch.randn(3, 4), lambda: torch.randn(3, 4)),
        ({"type": "KDLoss"}, lambda: torch.randn(3, 5), lambda: torch.randn(3, 5)),
        ({"type": "DiceLoss"}, lambda: torch.randn(2, 3, 4, 4),
         lambda: torch.randint(0, 3, (2, 4, 4))),
        ({"type": "CrossEntropyLoss"}, lambda: torch.randn(3, 5), lambda: torch.tensor([0, 4, 2])),
    ],
    ids=lambda c: c["type"] if isinstance(c, dict) else "",
)  # fmt: skip
def test_avg_factor_with_batchmean_is_an_error_and_weights_are_constants(cfg, x, target, backend):
    """ "batchmean" divides by N: an avg_factor there was silently ignored (KD's default
    reduction); it is a ValueError, as with "sum". A sample weight is a constant: no gradient
    reaches it (it did for the BaseLoss path, not for the fused losses)."""
    p, t = x(), target()
    with pytest.raises(ValueError, match=r"^avg_factor"):
        build_loss({**cfg, "backend": backend})(p, t, avg_factor=2.0,
                                                reduction_override="batchmean")  # fmt: skip
    with pytest.raises(ValueError, match=r"^avg_factor"):
        build_loss({**cfg, "reduction": "batchmean", "avg_factor": 2.0})
    loss = build_loss({**cfg, "backend": backend})
    w = torch.rand(p.shape[0], generator=torch.Generator().manual_seed(3)).requires_grad_()
    p.requires_grad_()
    loss(p, t, weight=w).backward()
    assert w.grad is None and p.grad is not None and torch.isfinite(p.grad).all()


def test_ohem_double_backward_names_the_loss(backend):
    # spec 8: "<op> (<backend> backend): double backward" names the public loss (it named
    # fused_losses.registry.dense.dense_loss)
    loss = build_loss({"type": "OHEMCrossEntropyLoss", "backend": backend})
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    y = torch.randint(0, 3, (2, 4, 4))
    out = loss(x, y)
    with pytest.raises(RuntimeError, match=rf"^OHEMCrossEntropyLoss \({backend} backend\)"):
        torch.autograd.grad(out, x, create_graph=True)


def test_utils_name_their_bad_arguments():
    """The public utilities (spec 12.3) check their arguments like the losses: num_classes 0 gave
    an IndexError or a RuntimeError, float labels were truncated, a string avg_factor was
    accepted and a NaN one gave a NaN "mean"."""
    y = torch.tensor([0, 2, 1])
    for fn in (lambda **k: U.get_class_weight(method="inverse", **k), U.convert_to_one_hot):
        with pytest.raises(ValueError, match=r"^num_classes"):
            fn(labels=y, num_classes=0)
        with pytest.raises(TypeError, match=r"^labels"):
            fn(labels=y.float(), num_classes=3)
        with pytest.raises(TypeError, match=r"^labels"):
            fn(labels=[0, 1], num_classes=3)
    with pytest.raises(ValueError, match=r"^labels"):
        U.convert_to_one_hot(torch.tensor(1), 3)
    loss = torch.rand(4)
    for bad, err in (("5", TypeError), (float("nan"), ValueError), (torch.ones(2), ValueError)):
        with pytest.raises(err, match=r"^avg_factor"):
            U.weight_reduce_loss(loss, avg_factor=bad)
    got = U.weight_reduce_loss(loss, avg_factor=torch.tensor(2.0))
    assert_scalar_close(got, loss.sum() / (2 + EPS32), 1e-6)


@pytest.mark.parametrize("name", ["DiceLoss", "BoundaryLoss", "HDLoss", "DKDLoss", "GIoULoss"])
def test_a_weight_that_rounds_to_zero_masks_like_the_reduction(name, backend):
    """Rule 1 (spec 12.2) with a float64 weight of 1e-50 on float32 inputs: the reduction casts
    it to 0 (the loss's dtype), so the inputs are masked too (the masks compared the uncast
    weight: a NaN input there gave NaN gradients)."""
    nan = float("nan")
    if name == "DKDLoss":
        x, t = torch.randn(3, 4), torch.randn(3, 4)
        x[1] = nan
        w = torch.tensor([1.0, 1e-50, 1.0], dtype=torch.float64)
        call = {"labels": torch.tensor([0, 1, 2])}
    elif name == "GIoULoss":
        x, t = boxes(3, dtype=torch.float32)
        x[1] = nan
        w = torch.tensor([1.0, 1e-50, 1.0], dtype=torch.float64)
        call = {}
    else:
        x, t = torch.randn(2, 3, 6, 6), torch.randint(0, 3, (2, 6, 6))
        x[1] = nan
        w = torch.tensor([1.0, 1e-50], dtype=torch.float64)
        if name == "HDLoss":
            w = w.view(2, 1, 1, 1).expand(2, 2, 6, 6)
        call = {}
    x.requires_grad_()
    out = build_loss({"type": name, "backend": backend})(x, t, weight=w, **call)
    (g,) = torch.autograd.grad(out, x)
    assert torch.isfinite(out) and torch.isfinite(g).all()
