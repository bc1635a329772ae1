"""masked_smooth_l1_loss and masked_cosine_loss against the float64 reference (spec 3.3.2-3, 4)."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch
from conftest import (
    DEVICE,
    TOLERANCES,
    assert_grad_close,
    assert_scalar_close,
    check_parity,
    upstream_scalar,
)
from fused_losses.reference.cases import gap_case
from hypothesis import given, settings
from hypothesis import strategies as st

import fused_losses as fl
from fused_losses import reference as R

SIZES = {"torch": [(3, 17, 33), (2, 64, 128)], "triton": [(3, 17, 33), (2, 16, 32)]}


def make_mask(b, h, w, kind, g):
    if kind == "bool":
        return torch.rand(b, 1, h, w, generator=g) > 0.6
    if kind == "binary-float":
        return (torch.rand(b, 1, h, w, generator=g, dtype=torch.float64) > 0.6).double()
    return torch.rand(b, 1, h, w, generator=g, dtype=torch.float64)  # soft weights


# --------------------------------------------------------------------------- smooth L1


def smooth_l1_inputs(b, h, w, *, c=4, target_kind, mask_kind, seed):
    g = torch.Generator().manual_seed(seed)
    pred = 1.5 * torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    shapes = {
        "full": (b, c, h, w),
        "per-image": (b, c, 1, 1),
        "shared": (1, c, 1, 1),
        "3d": (c, 1, 1),
    }
    target = 0.5 * torch.randn(*shapes[target_kind], generator=g, dtype=torch.float64)
    return dict(pred=pred, target=target, mask=make_mask(b, h, w, mask_kind, g))


SL1_CASES = list(
    itertools.product(
        ["full", "per-image", "shared", "3d"],
        ["bool", "binary-float", "soft"],
        [1.0, 0.5, 2.0, 0.0],
        [torch.float32, torch.float64],
    )
)


# The interpreter is slow: triton runs a covering subset (every target kind, mask kind, beta and
# dtype), the torch backend the full product.
TRITON_SL1 = {("full", "bool"), ("per-image", "soft"), ("shared", "binary-float"), ("3d", "bool")}
SL1_PARAMS = [
    pytest.param(
        backend, *case, id=f"{backend}-{case[0]}-{case[1]}-beta{case[2]}-{str(case[3])[6:]}"
    )
    for backend in ("torch", "triton")
    for case in SL1_CASES
    if backend == "torch" or case[:2] in TRITON_SL1
]


@pytest.mark.parametrize("backend,target_kind,mask_kind,beta,dt", SL1_PARAMS)
def test_smooth_l1(backend, target_kind, mask_kind, beta, dt):
    seed = SL1_CASES.index((target_kind, mask_kind, beta, dt))
    sizes = SIZES[backend] if backend == "triton" or beta == 1.0 else SIZES[backend][:1]
    for size in sizes:
        t = smooth_l1_inputs(*size, target_kind=target_kind, mask_kind=mask_kind, seed=seed)
        check_parity(
            fl.masked_smooth_l1_loss,
            R.masked_smooth_l1_loss,
            t,
            grad=("pred",),
            backend=backend,
            dtype=dt,
            seed=seed,
            beta=beta,
        )


@pytest.mark.parametrize("beta", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
def test_smooth_l1_kink_takes_linear_branch(backend, beta, dt):
    """|d| = beta exactly: value |d| - beta/2 = beta/2, derivative sign(d) (spec 3.3: linear branch)."""
    b, c, h, w = 2, 2, 3, 4
    target = torch.full((b, c, h, w), 0.25, dtype=torch.float64)
    sign = torch.ones(b, c, h, w, dtype=torch.float64)
    sign[:, 1] = -1
    pred = target + sign * beta  # exact in binary
    mask = torch.ones(b, 1, h, w, dtype=torch.float64)
    loss, _, cand, _ = check_parity(
        fl.masked_smooth_l1_loss,
        R.masked_smooth_l1_loss,
        dict(pred=pred, target=target, mask=mask),
        grad=("pred",),
        backend=backend,
        dtype=dt,
        beta=beta,
        eps=0.0,
    )
    # Per pixel, two channels at beta/2 each: the loss is beta.
    assert_scalar_close(loss, beta, 1e-6, "loss at the kink")
    # d loss / d pred = sign(d) / sum(m), times the upstream gradient check_parity used.
    expected = sign / (b * h * w) * upstream_scalar(0)
    assert_grad_close(cand["pred"].grad, expected, 1e-6, "gradient at the kink")


def test_smooth_l1_beta_zero_is_l1(backend):
    """beta = 0: plain L1, derivative sign(d), 0 at d = 0 (as torch autograd of |d|)."""
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    target = pred.clone()
    target[:, :, :, 3:] += 0.75  # half the pixels exactly d = 0
    mask = torch.ones(2, 1, 5, 6, dtype=torch.float64)
    loss, _, cand, _ = check_parity(
        fl.masked_smooth_l1_loss,
        R.masked_smooth_l1_loss,
        dict(pred=pred, target=target, mask=mask),
        grad=("pred",),
        backend=backend,
        dtype=torch.float64,
        beta=0.0,
    )
    assert torch.count_nonzero(cand["pred"].grad[..., :3]) == 0
    want = (pred - target).abs().sum() / (mask.sum() + 1e-7)
    assert_scalar_close(loss, want, 1e-12)


def test_smooth_l1_mask_all_zero(backend):
    t = smooth_l1_inputs(2, 17, 33, target_kind="per-image", mask_kind="bool", seed=4)
    t["mask"] = torch.zeros_like(t["mask"])
    loss, _, cand, _ = check_parity(
        fl.masked_smooth_l1_loss, R.masked_smooth_l1_loss, t, grad=("pred",), backend=backend
    )
    assert float(loss.detach()) == 0.0
    assert torch.count_nonzero(cand["pred"].grad) == 0


def test_smooth_l1_denominator_counts_pixels_not_channels(backend):
    """m [B,1,H,W]: with C channels all at loss s, L = C * s (the denominator is sum(m))."""
    pred = torch.full((2, 4, 3, 5), 0.5)
    target = torch.zeros(2, 4, 3, 5)
    mask = torch.ones(2, 1, 3, 5)
    loss = fl.masked_smooth_l1_loss(
        pred.to(DEVICE), target.to(DEVICE), mask.to(DEVICE), eps=0.0, backend=backend
    )
    assert_scalar_close(loss, 4 * 0.5 * 0.25, 1e-6)


def test_smooth_l1_module_non_contiguous_half(backend):
    t = smooth_l1_inputs(3, 17, 33, target_kind="per-image", mask_kind="soft", seed=5)
    crit = fl.MaskedSmoothL1Loss(beta=0.5, backend=backend)
    args = [v.float().to(DEVICE) for v in t.values()]
    a = crit(*args)
    b = fl.masked_smooth_l1_loss(*args, beta=0.5, backend=backend)
    assert_scalar_close(a, b, 1e-7, "module vs functional")
    views = [x.transpose(-1, -2).contiguous().transpose(-1, -2) for x in args]
    assert not views[0].is_contiguous()
    assert_scalar_close(crit(*views), a, 1e-6, "non-contiguous")
    for dt in (torch.float16, torch.bfloat16):
        check_parity(
            fl.masked_smooth_l1_loss,
            R.masked_smooth_l1_loss,
            t,
            grad=("pred",),
            backend=backend,
            dtype=dt,
            beta=0.5,
        )


def test_smooth_l1_bad_input():
    p = torch.zeros(2, 4, 5, 6)
    m = torch.ones(2, 1, 5, 6)
    with pytest.raises(ValueError, match=r"pred.*\[2, 4, 5\]"):
        fl.masked_smooth_l1_loss(p[..., 0], p[..., 0], m)
    with pytest.raises(TypeError, match="pred"):
        fl.masked_smooth_l1_loss(p.long(), p, m)
    with pytest.raises(ValueError, match=r"target.*\[2, 4, 5, 6\].*\[2, 3, 1, 1\]"):
        fl.masked_smooth_l1_loss(p, torch.zeros(2, 3, 1, 1), m)
    with pytest.raises(ValueError, match=r"target.*\[2, 4, 5, 7\]"):
        fl.masked_smooth_l1_loss(p, torch.zeros(2, 4, 5, 7), m)
    with pytest.raises(ValueError, match=r"mask.*\[2, 1, 5, 6\].*\[2, 4, 5, 6\]"):
        fl.masked_smooth_l1_loss(p, p, torch.ones(2, 4, 5, 6))
    with pytest.raises(ValueError, match=r"mask.*\[3, 1, 5, 6\]"):
        fl.masked_smooth_l1_loss(p, p, torch.ones(3, 1, 5, 6))
    with pytest.raises(ValueError, match="beta"):
        fl.masked_smooth_l1_loss(p, p, m, beta=-1.0)
    with pytest.raises(ValueError, match="backend"):
        fl.masked_smooth_l1_loss(p, p, m, backend="x")
    with pytest.raises(ValueError, match=r"mask.*meta"):
        fl.masked_smooth_l1_loss(p, p, m.to("meta"))


# --------------------------------------------------------------------------- cosine


def cosine_inputs(b, h, w, *, mask_kind, seed):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(b, 2, h, w, generator=g, dtype=torch.float64)
    angle = (torch.rand(b, generator=g, dtype=torch.float64) - 0.5) * 2 * math.pi * 1.5
    return dict(pred=pred, target_angle=angle, mask=make_mask(b, h, w, mask_kind, g))


COS_CASES = list(
    itertools.product(["bool", "binary-float", "soft"], [torch.float32, torch.float64])
)


@pytest.mark.parametrize("mask_kind,dt", COS_CASES, ids=[f"{m}-{str(d)[6:]}" for m, d in COS_CASES])
def test_cosine(backend, mask_kind, dt):
    seed = COS_CASES.index((mask_kind, dt))
    for size in SIZES[backend]:
        t = cosine_inputs(*size, mask_kind=mask_kind, seed=seed)
        check_parity(
            fl.masked_cosine_loss,
            R.masked_cosine_loss,
            t,
            grad=("pred",),
            backend=backend,
            dtype=dt,
            seed=seed,
        )


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    scale=st.floats(1e-3, 1e3),
    rotation=st.floats(-math.pi, math.pi),
)
def test_cosine_invariant_to_scale_and_rotation(seed, scale, rotation):
    """Scaling the predicted vectors leaves the loss unchanged (gradient scales by 1/k); rotating
    the predicted angle and the target angle together leaves it unchanged too."""
    t = cosine_inputs(2, 5, 7, mask_kind="soft", seed=seed)
    pred = t["pred"].clone().requires_grad_(True)
    base = fl.masked_cosine_loss(pred, t["target_angle"], t["mask"], backend="torch")
    base.backward()
    scaled_pred = (t["pred"] * scale).requires_grad_(True)
    scaled = fl.masked_cosine_loss(scaled_pred, t["target_angle"], t["mask"], backend="torch")
    scaled.backward()
    assert_scalar_close(scaled, base, 1e-10, "scaled")
    assert_grad_close(scaled_pred.grad * scale, pred.grad, 1e-9, "scaled grad")
    # Rotation: pred holds (sin phi, cos phi) * n; rotate phi and the target by the same angle.
    s, c = t["pred"][:, 0], t["pred"][:, 1]
    cr, sr = math.cos(rotation), math.sin(rotation)
    rotated = torch.stack([s * cr + c * sr, c * cr - s * sr], dim=1)
    rot = fl.masked_cosine_loss(rotated, t["target_angle"] + rotation, t["mask"], backend="torch")
    assert_scalar_close(rot, base, 1e-9, "rotated")
    ref = R.masked_cosine_loss(t["pred"] * scale, t["target_angle"], t["mask"])
    assert_scalar_close(scaled, ref, 1e-10, "reference")


def test_cosine_closed_form(backend):
    """Aligned vectors give 0, opposite ones give 2 sum(m) / (sum(m) + eps), at any scale."""
    b, h, w = 2, 4, 5
    angle = torch.tensor([0.3, -2.0], dtype=torch.float64)
    unit = torch.stack([angle.sin(), angle.cos()], dim=1)[:, :, None, None].expand(b, 2, h, w)
    scale = torch.linspace(0.1, 7, h * w, dtype=torch.float64).view(1, 1, h, w)
    mask = torch.ones(b, 1, h, w, dtype=torch.float64)
    aligned = fl.masked_cosine_loss(
        (unit * scale).to(DEVICE), angle.to(DEVICE), mask.to(DEVICE), backend=backend
    )
    assert abs(float(aligned)) < 1e-12
    opposite = fl.masked_cosine_loss(
        (-unit * scale).to(DEVICE), angle.to(DEVICE), mask.to(DEVICE), backend=backend
    )
    assert_scalar_close(opposite, 2 * 40 / (40 + 1e-7), 1e-12)


def test_cosine_zero_vectors_on_masked_pixels(backend):
    """A zero vector (F.normalize leaves it 0) where m = 0 keeps everything finite."""
    t = cosine_inputs(2, 17, 33, mask_kind="bool", seed=6)
    t["pred"] = t["pred"] * t["mask"].double()  # zero wherever the mask is 0
    loss, _, cand, _ = check_parity(
        fl.masked_cosine_loss, R.masked_cosine_loss, t, grad=("pred",), backend=backend
    )
    assert torch.count_nonzero(cand["pred"].grad * (~t["mask"]).to(DEVICE)) == 0
    # Mask all zero: loss and gradient 0.
    t["mask"] = torch.zeros_like(t["mask"])
    loss, _, cand, _ = check_parity(
        fl.masked_cosine_loss, R.masked_cosine_loss, t, grad=("pred",), backend=backend
    )
    assert float(loss.detach()) == 0.0
    assert torch.count_nonzero(cand["pred"].grad) == 0


def test_cosine_module_non_contiguous_half(backend):
    t = cosine_inputs(3, 17, 33, mask_kind="soft", seed=7)
    args = [v.float().to(DEVICE) for v in t.values()]
    crit = fl.MaskedCosineLoss(backend=backend)
    a = crit(*args)
    assert_scalar_close(a, fl.masked_cosine_loss(*args, backend=backend), 1e-7, "module")
    big = torch.cat([args[0][:, :1], args[0]], dim=1)[:, 1:]  # channels of a bigger tensor
    assert not big.is_contiguous()
    angle = torch.stack([args[1], args[1]], dim=1)[:, 0]
    assert not angle.is_contiguous()
    assert_scalar_close(crit(big, angle, args[2]), a, 1e-6, "non-contiguous")
    for dt in (torch.float16, torch.bfloat16):
        check_parity(
            fl.masked_cosine_loss,
            R.masked_cosine_loss,
            t,
            grad=("pred",),
            backend=backend,
            dtype=dt,
        )


def test_cosine_no_grad(backend):
    t = cosine_inputs(2, 5, 6, mask_kind="bool", seed=8)
    pred = t["pred"].to(DEVICE).requires_grad_(True)
    with torch.no_grad():
        loss = fl.masked_cosine_loss(
            pred, t["target_angle"].to(DEVICE), t["mask"].to(DEVICE), backend=backend
        )
    assert not loss.requires_grad
    assert_scalar_close(loss, R.masked_cosine_loss(t["pred"], t["target_angle"], t["mask"]), 1e-10)


def test_cosine_bad_input():
    p = torch.zeros(2, 2, 5, 6)
    a = torch.zeros(2)
    m = torch.ones(2, 1, 5, 6)
    with pytest.raises(ValueError, match=r"pred.*\[B, 2, H, W\].*\[2, 3, 5, 6\]"):
        fl.masked_cosine_loss(torch.zeros(2, 3, 5, 6), a, m)
    with pytest.raises(TypeError, match="pred"):
        fl.masked_cosine_loss(p.int(), a, m)
    with pytest.raises(ValueError, match=r"target_angle.*\[2\].*\[2, 1\]"):
        fl.masked_cosine_loss(p, a[:, None], m)
    with pytest.raises(ValueError, match=r"target_angle.*\[3\]"):
        fl.masked_cosine_loss(p, torch.zeros(3), m)
    with pytest.raises(ValueError, match=r"mask.*\[2, 1, 5, 6\].*\[2, 1, 6, 5\]"):
        fl.masked_cosine_loss(p, a, m.transpose(2, 3))
    with pytest.raises(ValueError, match="eps"):
        fl.masked_cosine_loss(p, a, m, eps=-1.0)
    with pytest.raises(ValueError, match="backend"):
        fl.masked_cosine_loss(p, a, m, backend="x")
    with pytest.raises(ValueError, match=r"target_angle.*meta"):
        fl.masked_cosine_loss(p, a.to("meta"), m)


@pytest.mark.parametrize("scale", [1e20, 1e30, 1e-3])
def test_cosine_float32_head_at_extreme_scale(backend, scale):
    """A float32 angle head at any scale (its square overflows float32 beyond ~1.8e19): loss and
    gradient of masked_cosine_loss and of the full gap loss match the float64 reference."""
    t = cosine_inputs(2, 5, 7, mask_kind="soft", seed=3)
    pred32 = (t["pred"] * scale).float()
    pred = pred32.to(DEVICE).requires_grad_(True)
    loss = fl.masked_cosine_loss(
        pred, t["target_angle"].float().to(DEVICE), t["mask"].float().to(DEVICE), backend=backend
    )
    (g,) = torch.autograd.grad(loss, pred)
    ref_pred = pred32.double().requires_grad_(True)
    ref = R.masked_cosine_loss(
        ref_pred, t["target_angle"].float().double(), t["mask"].float().double()
    )
    (ref_g,) = torch.autograd.grad(ref, ref_pred)
    assert_scalar_close(loss, ref, 1e-5, "loss")
    assert_grad_close(g, ref_g, 1e-5, "grad")

    case = gap_case(2, (8, 12), confusers=1, seed=4)
    case = replace(case, angle=case.angle * scale)
    c = case.to(torch.float32, DEVICE, requires_grad=True)
    total, comps = fl.gap_detection_loss(*c.args(), return_components=True, backend=backend)
    (ga,) = torch.autograd.grad(total, c.angle)
    r = case.to(torch.float32).to(torch.float64, requires_grad=True)
    ref_total, ref_comps = R.gap_detection_loss(*r.args(), return_components=True)
    (ref_ga,) = torch.autograd.grad(ref_total, r.angle)
    assert_scalar_close(comps["angle"], ref_comps["angle"], 1e-5, "angle component")
    assert_grad_close(ga, ref_ga, 1e-5, "angle grad")


# ------------------------------------------------ unevaluated pixels (spec 3.3.1-3.3.3, 8)

NON_FINITE = [float("nan"), float("inf"), float("-inf")]


def check_unevaluated_predictions(op, ref_op, tensors, off, value, *, backend, dtype, **opts):
    """``tensors["pred"]`` holds ``value`` (NaN, +-inf) at the entries ``off`` (a bool map of its
    shape: where its mask / weight is 0) and nothing else changes: the loss equals the float64
    reference on the same inputs with the finite values there, the gradient is exactly 0 there,
    finite elsewhere and the reference's (spec 3.3: such an element is not evaluated). The
    reference obeys the same rule. Returns the clean float64 inputs."""
    loss_tol, grad_tol = TOLERANCES[dtype]
    cast = {
        k: (v.to(dtype) if v is not None and v.is_floating_point() else v)
        for k, v in tensors.items()
    }
    clean = {
        k: (v.to(torch.float64) if v is not None and v.is_floating_point() else v)
        for k, v in cast.items()
    }
    r = upstream_scalar(1)
    ref_pred = clean["pred"].clone().requires_grad_(True)
    ref_loss = ref_op(**{**clean, "pred": ref_pred}, **opts)
    (ref_loss * r).backward()
    assert torch.isfinite(ref_loss), "the test needs a finite reference"

    bad = cast["pred"].clone()
    bad[off] = value
    assert bool(off.any()) and bool((~off).any())
    cand = {k: (v.to(DEVICE) if v is not None else v) for k, v in cast.items()}
    pred = bad.clone().to(DEVICE).requires_grad_(True)
    loss = op(**{**cand, "pred": pred}, **opts, backend=backend)
    (loss * r).backward()
    assert_scalar_close(loss, ref_loss, loss_tol)
    g = pred.grad.cpu()
    assert torch.isfinite(g).all(), "gradient not finite"
    assert torch.count_nonzero(g[off]) == 0, "gradient not 0 where the element is not evaluated"
    assert_grad_close(g, ref_pred.grad, grad_tol)

    # The reference itself: the same value, an exactly 0 gradient there.
    ref_bad = bad.to(torch.float64, copy=True).requires_grad_(True)
    again = ref_op(**{**clean, "pred": ref_bad}, **opts)
    (again * r).backward()
    assert_scalar_close(again, ref_loss, 1e-12, "reference with non-finite unevaluated entries")
    assert torch.count_nonzero(ref_bad.grad[off]) == 0
    return clean


def nan_where_evaluated(op, tensors, live, *, backend, **opts):
    """A NaN prediction at one evaluated entry (``live``): the loss is NaN (spec 8)."""
    bad = tensors["pred"].float().clone()
    bad[live.nonzero()[0].unbind()] = float("nan")
    args = {k: (v.to(DEVICE) if v is not None else v) for k, v in tensors.items()}
    args["pred"] = bad.to(DEVICE)
    assert torch.isnan(op(**args, **opts, backend=backend))


def mask_with_zeros(b, h, w, seed):
    """A soft mask in (0, 1) with exact zeros on about half the pixels."""
    g = torch.Generator().manual_seed(seed)
    soft = 0.05 + 0.95 * torch.rand(b, 1, h, w, generator=g, dtype=torch.float64)
    return soft * (torch.rand(b, 1, h, w, generator=g) > 0.5)


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("beta", [1.0, 0.0])
@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
def test_smooth_l1_non_finite_prediction_where_mask_is_zero(backend, value, beta, dt):
    """Spec 3.3.2: a NaN or infinite prediction where m = 0 adds 0 and gets a 0 gradient (the old
    code multiplied it by m: NaN * 0); a NaN where m != 0 still makes the loss NaN."""
    t = smooth_l1_inputs(2, 5, 7, target_kind="full", mask_kind="soft", seed=11)
    t["mask"] = mask_with_zeros(2, 5, 7, seed=12)
    off = (t["mask"] == 0).expand_as(t["pred"])
    check_unevaluated_predictions(
        fl.masked_smooth_l1_loss, R.masked_smooth_l1_loss, t, off, value,
        backend=backend, dtype=dt, beta=beta,
    )  # fmt: skip
    nan_where_evaluated(fl.masked_smooth_l1_loss, t, ~off, backend=backend, beta=beta)


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
def test_cosine_non_finite_prediction_where_mask_is_zero(backend, value, dt):
    """Spec 3.3.3: a NaN or infinite angle vector (one channel or both) where m = 0 adds 0 and gets
    a 0 gradient; a NaN where m != 0 still makes the loss NaN."""
    t = cosine_inputs(2, 5, 7, mask_kind="soft", seed=13)
    t["mask"] = mask_with_zeros(2, 5, 7, seed=14)
    off = (t["mask"] == 0).expand_as(t["pred"]).clone()
    off[0, 0] = False  # image 0: only the cos channel is non-finite
    check_unevaluated_predictions(
        fl.masked_cosine_loss, R.masked_cosine_loss, t, off, value, backend=backend, dtype=dt
    )
    nan_where_evaluated(
        fl.masked_cosine_loss, t, (t["mask"] != 0).expand_as(t["pred"]), backend=backend
    )
