"""The RoRD losses (docs/spec.md 11): rord_detection_loss, rord_descriptor_loss, rord_loss /
RoRDLoss and homography_warp against the literal float64 reference (``F.grid_sample`` and an
explicit [B,N,K] distance matrix), on both backends (triton through the interpreter on CPU).

Descriptors are Gaussian and few (C = 4, K <= 40): the nearest candidate is then separated from
the second nearest by far more than float32 rounding (checked by ``assert_clear_argmin``), so j*
is the reference's on every backend and dtype.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    DEVICE,
    ON_GPU,
    TOLERANCES,
    assert_grad_close,
    assert_scalar_close,
    build_loss,
)
from fused_losses.kernels.launch import launch_count, reset_launch_count
from fused_losses.reference import rord as R

import fused_losses as fl

S = 8.0  # stride
SIZE = (6, 7)  # Hf, Wf
NAMES = ("det_original", "det_rotated", "desc_original", "desc_rotated")
SMALL = dict(num_samples=16, num_candidates=40)  # 16 anchors, 40 candidates


def maps(b=2, c=4, size=SIZE, seed=0, logits=False, dtype=torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hf, wf = size
    det = torch.rand(2, b, 1, hf, wf, generator=g, dtype=torch.float64) * 0.96 + 0.02
    if logits:
        det = torch.logit(det)
    desc = torch.randn(2, b, c, hf, wf, generator=g, dtype=torch.float64)
    return [x.to(dtype) for x in (*det.unbind(0), *desc.unbind(0))]


def rotation(k: int, size=SIZE, mirror: bool = False) -> torch.Tensor:
    """[2,3] pixel H: rotation by k * 90 degrees about the image centre (exact integers), then
    an optional horizontal mirror; only square maps keep the image for odd k (else a shift)."""
    hf, wf = size
    w, h = wf * S, hf * S
    c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][k % 4]
    rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    to_c = torch.tensor([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]], dtype=torch.float64)
    back = torch.tensor([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1]], dtype=torch.float64)
    m = back @ rot @ to_c
    if mirror:
        m = torch.tensor([[-1, 0, w], [0, 1, 0], [0, 0, 1]], dtype=torch.float64) @ m
    return m[:2]


def small_rotation(angle=0.2, shift=(5.0, -3.0), size=SIZE) -> torch.Tensor:
    hf, wf = size
    cx, cy = wf * S / 2, hf * S / 2
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor(
        [[c, -s, cx - c * cx + s * cy + shift[0]], [s, c, cy - s * cx - c * cy + shift[1]]],
        dtype=torch.float64,
    )


def perspective(size=SIZE) -> torch.Tensor:
    m = torch.eye(3, dtype=torch.float64)
    m[:2] = small_rotation(0.15, (2.0, 1.0), size)
    m[2, :2] = torch.tensor([4e-4, -6e-4])
    return m


def run_fused(backend, inputs, H, extra=None, **opts):
    xs = [x.detach().clone().to(DEVICE).requires_grad_() for x in inputs]
    extra = {
        k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in (extra or {}).items()
    }
    total, comps = fl.rord_loss(
        *xs, H.to(DEVICE), **extra, return_components=True, backend=backend, **opts
    )
    total.backward()
    return total, comps, [x.grad for x in xs]


def run_reference(inputs, H, extra=None, **opts):
    xs = [x.detach().to(torch.float64).requires_grad_() for x in inputs]
    total, comps = R.rord_loss(*xs, H.to(torch.float64), **(extra or {}), **opts)
    grads = torch.autograd.grad(total, xs, allow_unused=True)
    grads = [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, xs)]
    return total, {k: v.detach() for k, v in comps.items()}, grads


def assert_clear_argmin(inputs, H, extra=None, **opts) -> None:
    """The nearest eligible candidate is unambiguous: its distance is below the second one's by
    more than 1e-4 relative (float64 reference geometry; float32 moves it by ~1e-6)."""
    d_o, d_r = (x.detach().to(torch.float64) for x in inputs[2:])
    b, _, hf, wf = d_o.shape
    extra = extra or {}
    anchors = extra.get("anchors")
    pa = (
        R.grid_points(anchors.to(torch.float64), S)
        if anchors is not None
        else R.default_anchors(opts.get("num_samples", 200), hf, wf, torch.float64)
    )
    pa = pa.expand(b, -1, -1) if pa.dim() == 3 else pa[None].expand(b, -1, -1)
    neg = extra.get("negatives")
    if neg is not None:
        pc = R.grid_points(neg.to(torch.float64), S)
    else:
        pc = R.r2_candidates(opts.get("num_candidates", 400), hf, wf, torch.float64)
    pc = pc.expand(b, -1, -1) if pc.dim() == 3 else pc[None].expand(b, -1, -1)
    if pc.shape[1] < 2:
        return
    a = R.sample(d_o, pa)
    n = R.sample(d_r, pc)
    dist = torch.cdist(a, n)
    two = dist.topk(2, dim=-1, largest=False).values
    gap = (two[..., 1] - two[..., 0]) / two[..., 1]
    assert gap.min() > 1e-4, f"near-tie in the test data: relative gap {gap.min():.2e}"


def check(backend, inputs, H, extra=None, dtype=torch.float32, **opts) -> None:
    assert_clear_argmin(inputs, H, extra, **opts)
    tol_loss, tol_grad = TOLERANCES[dtype]
    inputs = [x.to(dtype) for x in inputs]
    total, comps, grads = run_fused(backend, inputs, H, extra, **opts)
    ref_total, ref_comps, ref_grads = run_reference(inputs, H, extra, **opts)
    assert_scalar_close(total, ref_total, tol_loss)
    assert total.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    for k in ("det_bce", "det_smooth_l1", "det", "desc"):
        assert_scalar_close(comps[k], ref_comps[k], tol_loss, k)
    for name, g, ref, x in zip(NAMES, grads, ref_grads, inputs):
        assert g is None or g.dtype == x.dtype, name
        assert_grad_close(g, ref, tol_grad, name)


# ------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("mirror", [False, True])
def test_multiples_of_90_degrees(backend, k, mirror):
    """Square maps: H permutes the cells exactly (every sample sits on a cell centre)."""
    size = (6, 6)
    H = rotation(k, size, mirror)
    check(backend, maps(size=size, seed=k), H, **SMALL)
    if mirror and k == 1:
        check(backend, maps(size=size, seed=9), torch.cat([H, H.new_tensor([[0, 0, 1]])]), **SMALL)


def test_exact_rotation_is_a_cell_permutation():
    """homography_warp of a 90-degree H is torch.rot90 (exactly, in float32) on both the
    literal reference and the library's warp."""
    x = torch.randn(2, 3, 6, 6)
    for k in range(4):
        out = fl.homography_warp(x, rotation(k, (6, 6)), stride=S)
        assert torch.equal(out, torch.rot90(x, k, dims=(-2, -1)))
    mirrored = fl.homography_warp(x, rotation(0, (6, 6), mirror=True), stride=S)
    assert torch.equal(mirrored, torch.flip(x, dims=(-1,)))
    ref = R.homography_warp(x.double(), rotation(1, (6, 6)).double(), stride=S)
    assert torch.allclose(ref, torch.rot90(x.double(), 1, dims=(-2, -1)), atol=1e-14)


CONFIGS = {
    "default": {},
    "ignore": dict(outside="ignore"),
    "logits": dict(from_logits=True),
    "normalized": dict(h_coords="normalized"),
    "squared": dict(distance="squared_l2", margin=30.0),
    "detach_target": dict(detach_target=True),
    "negative_grad": dict(detach_negative=False),
    "safe_radius": dict(safe_radius=12.0),
    "weights": dict(w_det=0.7, w_desc=1.9, w_bce=0.4, w_smooth_l1=2.5, margin=2.5),
    "ignore_logits_radius": dict(outside="ignore", from_logits=True, safe_radius=20.0),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_options(backend, name):
    opts = {**SMALL, **CONFIGS[name]}
    H = small_rotation()
    if name == "normalized":  # H in F.affine_grid's units
        H = torch.tensor([[0.9, -0.2, 0.1], [0.25, 0.95, -0.05]], dtype=torch.float64)
    check(backend, maps(logits=opts.get("from_logits", False), seed=1), H, **opts)


@pytest.mark.parametrize("h_kind", ["perspective", "batched", "unbatched_3x3"])
def test_homographies(backend, h_kind):
    if h_kind == "perspective":
        H = perspective()[None].expand(2, 3, 3)
    elif h_kind == "batched":
        H = torch.stack([small_rotation(0.3), rotation(2)])
    else:
        H = perspective()
    check(backend, maps(seed=2), H, **SMALL)


@pytest.mark.parametrize("points", ["anchors", "anchors_batched", "negatives", "negatives_batched",
                                    "generator"])  # fmt: skip
def test_given_points(backend, points):
    g = torch.Generator().manual_seed(5)
    hf, wf = SIZE
    size = torch.tensor([wf * S, hf * S], dtype=torch.float64)
    extra: dict = {}
    if points.startswith("anchors"):
        shape = (2, 9, 2) if points.endswith("batched") else (9, 2)
        extra["anchors"] = torch.rand(*shape, generator=g, dtype=torch.float64) * size
    elif points.startswith("negatives"):
        shape = (2, 30, 2) if points.endswith("batched") else (30, 2)
        extra["negatives"] = torch.rand(*shape, generator=g, dtype=torch.float64) * size
    opts = dict(SMALL)
    if points == "generator":
        inputs = maps(seed=3)
        got = fl.rord_loss(
            *[x.to(DEVICE) for x in inputs], small_rotation().to(DEVICE),
            generator=torch.Generator(DEVICE).manual_seed(7), backend=backend, **opts,
        )  # fmt: skip
        ref, _ = R.rord_loss(
            *[x.double() for x in inputs], small_rotation(),
            generator=torch.Generator().manual_seed(7), **opts,
        )  # fmt: skip
        assert_scalar_close(got, ref, 1e-5)
        return
    check(backend, maps(seed=3), small_rotation(), extra, **opts)


def test_default_candidates_are_the_r2_sequence(backend):
    """No negatives and no generator: the R2 points, the same as passing them in pixels."""
    hf, wf = SIZE
    j = torch.arange(1, 41, dtype=torch.float64)
    u = torch.frac(0.5 + j * 0.7548776662466927) * (wf - 1)
    v = torch.frac(0.5 + j * 0.5698402909980532) * (hf - 1)
    pixels = (torch.stack([u, v], -1) + 0.5) * S
    inputs = [x.to(DEVICE) for x in maps(seed=4)]
    H = small_rotation().to(DEVICE)
    default = fl.rord_descriptor_loss(inputs[2], inputs[3], H, backend=backend, **SMALL)
    given = fl.rord_descriptor_loss(
        inputs[2], inputs[3], H, negatives=pixels.to(DEVICE), backend=backend, **SMALL
    )
    assert_scalar_close(default, given, 1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(backend, dtype):
    check(backend, maps(seed=6), small_rotation(), dtype=dtype, **SMALL)


def test_mixed_float32_float64_maps_compute_in_float64(backend):
    inputs = maps(seed=21)
    inputs = [inputs[0], inputs[1].double(), inputs[2], inputs[3].double()]
    total, _, grads = run_fused(backend, inputs, small_rotation(), **SMALL)
    ref_total, _, ref_grads = run_reference(inputs, small_rotation(), **SMALL)
    assert total.dtype == torch.float64
    assert_scalar_close(total, ref_total, 1e-5)
    for name, g, ref, x in zip(NAMES, grads, ref_grads, inputs):
        assert g.dtype == x.dtype, name
        assert_grad_close(g, ref, 1e-5, name)


def test_saturated_logits_keep_their_gradient(backend):
    """from_logits with logits of 18 to 30: sigmoid'(x) = sigmoid(x) sigmoid(-x), not p (1 - p)
    (which is 0 in float32)."""
    inputs = maps(seed=22, logits=True)
    inputs[1] = 18 + 12 * torch.rand(inputs[1].shape, generator=torch.Generator().manual_seed(1))
    check(backend, inputs, small_rotation(), from_logits=True, **SMALL)


def test_parts_match_the_total(backend):
    inputs = [x.to(DEVICE) for x in maps(seed=7)]
    H = small_rotation().to(DEVICE)
    total, comps = fl.RoRDLoss(w_det=0.5, backend=backend, **SMALL)(
        *inputs, H, return_components=True
    )
    det, det_comps = fl.RoRDDetectionLoss(backend=backend)(inputs[0], inputs[1], H, True)
    desc = fl.RoRDDescriptorLoss(backend=backend, **SMALL)(inputs[2], inputs[3], H)
    assert_scalar_close(total, 0.5 * det + desc, 1e-6)
    assert_scalar_close(comps["desc"], desc, 1e-6)
    for k, v in det_comps.items():
        assert_scalar_close(comps[k], v, 1e-6, k)
    assert not any(v.requires_grad for v in comps.values())


# -------------------------------------------------------------------------------- edge cases


EDGES = {
    "all_outside": dict(H=lambda: small_rotation(0.0, (10000.0, 0.0))),
    "singular": dict(H=lambda: torch.zeros(3, 3, dtype=torch.float64)),
    "w_negative": dict(H=lambda: torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))),
    # W = 1 - x / 28 px: the right half of the map is behind the camera (W <= 0), and preimages
    # near the horizon are unbounded (the gather scans the whole map there)
    "horizon": dict(
        H=lambda: torch.tensor(
            [[1.0, 0.1, 2.0], [0.05, 1.0, 1.0], [-1 / 28, 0, 1]], dtype=torch.float64
        )
    ),
    "no_candidates": dict(extra=lambda: {"negatives": torch.zeros(0, 2)}),
    "no_anchors": dict(extra=lambda: {"anchors": torch.zeros(0, 2)}),
    "one_cell": dict(size=(1, 1)),
    "one_row": dict(size=(1, 5)),
    "one_channel_one_image": dict(b=1, c=1),
}


@pytest.mark.parametrize("outside", ["zeros", "ignore"])
@pytest.mark.parametrize("name", list(EDGES))
def test_edge_cases(backend, name, outside):
    case = EDGES[name]
    size = case.get("size", SIZE)
    H = case.get("H", small_rotation)()
    extra = case.get("extra", dict)()
    inputs = maps(b=case.get("b", 2), c=case.get("c", 4), size=size, seed=8)
    opts = dict(SMALL, outside=outside)
    total, comps, grads = run_fused(backend, inputs, H, extra, **opts)
    ref_total, ref_comps, ref_grads = run_reference(inputs, H, extra, **opts)
    assert_scalar_close(total, ref_total, 1e-5)
    assert_scalar_close(comps["desc"], ref_comps["desc"], 1e-5, "desc")
    for name_, g, ref in zip(NAMES, grads, ref_grads):
        assert_grad_close(g, ref, 1e-5, name_)
    if name in ("all_outside", "singular", "w_negative") and outside == "ignore":
        assert float(total) == 0.0
    if name in ("no_candidates", "no_anchors"):
        assert float(comps["desc"]) == 0.0


NAN, INF = float("nan"), float("inf")
NON_FINITE = {
    "H_nan": (torch.tensor([[1.0, 0, NAN], [0, 1, 0]], dtype=torch.float64), {}),
    "H_inf": (torch.tensor([[1.0, 0, INF], [0, 1, 0]], dtype=torch.float64), {}),
    "anchors": (None, {"anchors": torch.tensor([[10.0, 12.0], [NAN, 3.0], [20.0, INF]])}),
    "negative_nan_only": (
        None,
        {"negatives": torch.tensor([[10.0, 12.0], [NAN, 30.0], [30.0, 9.0]])},
    ),
    "negatives": (
        None,
        {"negatives": torch.tensor([[10.0, 12.0], [NAN, 3.0], [20.0, INF], [30.0, 30.0]])},
    ),
}


@pytest.mark.parametrize("extra_opts", [{}, {"safe_radius": 4.0}, {"outside": "ignore"}],
                         ids=["zeros", "radius", "ignore"])  # fmt: skip
@pytest.mark.parametrize("name", list(NON_FINITE))
def test_non_finite_coordinates(backend, name, extra_opts):
    """A point that is not finite (H, anchors, negatives) samples 0 and is outside (docs/spec.md
    11.2): as the reference, and every value and gradient finite."""
    H, extra = NON_FINITE[name]
    H = small_rotation() if H is None else H
    inputs = maps(seed=20)
    opts = {**SMALL, **extra_opts}
    total, _comps, grads = run_fused(backend, inputs, H, extra, **opts)
    ref_total, _, ref_grads = run_reference(inputs, H, extra, **opts)
    assert_scalar_close(total, ref_total, 1e-5)
    for name_, g, ref in zip(NAMES, grads, ref_grads):
        assert_grad_close(g, ref, 1e-5, name_)


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_probabilities_at_zero_and_one(backend, value):
    """P_o of exactly 0 or 1: the logs clamp at -100 and the gradients stay finite."""
    inputs = maps(seed=10)
    inputs[0] = inputs[0].clone()
    inputs[0][:, :, :2] = value
    check(backend, inputs, small_rotation(), **SMALL)


def test_non_contiguous_maps(backend):
    inputs = [
        x.transpose(-1, -2).contiguous().transpose(-1, -2) for x in maps(size=(7, 6), seed=11)
    ]
    inputs = [x[..., ::1, :] for x in inputs]
    wide = [torch.cat([x, x], dim=1)[:, ::2] for x in inputs]  # channel stride 2
    assert not wide[2].is_contiguous()
    check(backend, wide, small_rotation(size=(7, 6)), **SMALL)


def test_no_grad(backend):
    inputs = [x.to(DEVICE) for x in maps(seed=12)]
    with torch.no_grad():
        loss = fl.rord_loss(*inputs, small_rotation().to(DEVICE), backend=backend, **SMALL)
    ref, _ = R.rord_loss(*[x.double().cpu() for x in inputs], small_rotation(), **SMALL)
    assert_scalar_close(loss, ref, 1e-5)


def test_only_some_maps_need_grad(backend):
    inputs = [x.to(DEVICE) for x in maps(seed=13)]
    inputs[1].requires_grad_()
    inputs[2].requires_grad_()
    loss = fl.rord_loss(*inputs, small_rotation().to(DEVICE), backend=backend, **SMALL)
    loss.backward()
    assert inputs[1].grad is not None and inputs[2].grad is not None
    assert inputs[0].grad is None and inputs[3].grad is None


def test_deterministic(backend):
    inputs = maps(seed=14)
    opts = dict(SMALL, detach_negative=False)
    first = run_fused(backend, inputs, small_rotation(), **opts)
    second = run_fused(backend, inputs, small_rotation(), **opts)
    assert torch.equal(first[0], second[0])
    for a, b in zip(first[2], second[2]):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------- bad input


def _bad_calls():
    det = torch.rand(2, 1, 6, 7)
    desc = torch.randn(2, 4, 6, 7)
    H = small_rotation().float()
    ok = (det, det, desc, desc, H)

    def call(*args, **kw):
        return lambda: fl.rord_loss(*args, **kw)

    return [
        ("det_original", call(torch.rand(2, 2, 6, 7), det, desc, desc, H)),
        ("det_rotated", call(det, torch.rand(2, 1, 6, 6), desc, desc, H)),
        ("det_original", call(torch.ones(2, 1, 6, 7, dtype=torch.long), det, desc, desc, H)),
        ("desc_original", call(det, det, torch.randn(2, 4, 6, 6), desc, H)),
        ("desc_original", call(det, det, torch.randn(3, 4, 6, 7), desc, H)),
        ("desc_rotated", call(det, det, desc, torch.randn(2, 5, 6, 7), H)),
        ("desc_original", call(det, det, torch.randn(2, 6, 7), desc, H)),
        ("H", call(det, det, desc, desc, torch.eye(3)[None].expand(3, 3, 3))),
        ("H", call(det, det, desc, desc, torch.eye(4))),
        ("anchors", call(*ok, anchors=torch.zeros(3, 5, 2))),
        ("anchors", call(*ok, anchors=torch.zeros(5, 3))),
        ("negatives", call(*ok, negatives=torch.zeros(2, 5))),
        ("negatives", call(*ok, negatives=torch.zeros(2, 5, 2, 1))),
        ("generator", call(*ok, negatives=torch.zeros(5, 2), generator=torch.Generator())),
        ("generator", call(*ok, generator=object())),
        ("stride", call(*ok, stride=0)),
        ("stride", call(*ok, stride=float("inf"))),
        ("margin", call(*ok, margin=float("nan"))),
        ("w_det", call(*ok, w_det=float("inf"))),
        ("w_bce", call(*ok, w_bce="1")),
        ("num_samples", call(*ok, num_samples=0)),
        ("num_candidates", call(*ok, num_candidates=-1)),
        ("safe_radius", call(*ok, safe_radius=-1.0)),
        ("h_coords", call(*ok, h_coords="pixels")),
        ("outside", call(*ok, outside="clamp")),
        ("distance", call(*ok, distance="l1")),
        ("from_logits", call(*ok, from_logits=1)),
        ("H", call(det, det, desc, desc, torch.zeros(2, 3, dtype=torch.complex64))),
        ("det_original", call(det[..., :0], det[..., :0], desc[..., :0], desc[..., :0], H)),
        ("w_bce", call(*ok, w_bce=1e300)),
        ("w_smooth_l1", call(*ok, w_smooth_l1=-1e13)),
        ("w_det", call(*ok, w_det=1e13)),
        ("w_desc", call(*ok, w_desc=1e39)),
        ("margin", call(*ok, margin=1e300)),
        ("safe_radius", call(*ok, safe_radius=-float("inf"))),
    ]


@pytest.mark.parametrize(
    ("arg", "fn"), _bad_calls(), ids=[f"{i}-{a}" for i, (a, _) in enumerate(_bad_calls())]
)
def test_bad_input_is_named(arg, fn):
    with pytest.raises((ValueError, TypeError), match=arg):
        fn()


def test_generator_on_another_device():
    """A CPU generator for maps on another device (meta here: the check reads metadata only)."""
    desc = torch.randn(1, 2, 4, 4, device="meta")
    with pytest.raises(ValueError, match="generator: expected a generator on meta"):
        fl.rord_descriptor_loss(
            desc, desc, torch.eye(3, device="meta"), generator=torch.Generator()
        )


@pytest.mark.parametrize("shape", [(2, 4, 0, 5), (2, 4, 5, 0)])
def test_empty_map_is_refused(backend, shape):
    """Hf = 0 or Wf = 0: a ValueError naming the map, the expected and the received shape (no
    index error, no loss of 1)."""
    z = torch.zeros(shape, device=DEVICE)
    eye = torch.eye(3, device=DEVICE)
    got = r"\[" + ", ".join(map(str, shape)) + r"\]"
    with pytest.raises(
        ValueError, match=rf"desc_original: expected shape .*Hf, Wf >= 1, got {got}"
    ):
        fl.rord_descriptor_loss(z, z, eye, backend=backend)
    d = z[:, :1]
    with pytest.raises(ValueError, match=r"det_original: expected shape .*Hf, Wf >= 1"):
        fl.rord_detection_loss(d, d, eye, backend=backend)
    with pytest.raises(ValueError, match=r"det_original: expected shape .*Hf, Wf >= 1"):
        fl.rord_loss(d, d, z, z, eye, backend=backend)
    with pytest.raises(ValueError, match=r"x: expected shape .*Hf, Wf >= 1"):
        fl.homography_warp(z, eye)


def test_option_ranges_are_named():
    with pytest.raises(
        ValueError, match=r"w_bce: expected a number in \[-1e\+12, 1e\+12\], got 1e\+300"
    ):
        fl.RoRDLoss(w_bce=1e300)
    with pytest.raises(ValueError, match=r"margin: expected a number in \[-1e\+12, 1e\+12\]"):
        fl.RoRDDescriptorLoss(margin=1e300)


# ------------------------------------------------------------ extreme but valid inputs and options


@pytest.mark.parametrize("scale", [1e20, 1e-20])
def test_homography_scale_does_not_matter(backend, scale):
    """c H (c > 0) is H: the reference's loss and gradients for H * 1e20 and H * 1e-20 (G is
    divided by a power of two near its largest entry; the triton gather's adjugate overflowed
    float32 at 1e20 and gave no gradient into det_rotated)."""
    H = perspective()
    check(backend, maps(seed=21), H * scale, **SMALL)


def test_largest_weights_stay_finite(backend):
    """Weights and margin at the top of their range (1e12), P_o at 0 and 1 (the 1e-12 clamp of
    the BCE gradient): the reference's loss and gradients, finite in float32."""
    inputs = maps(seed=22)
    inputs[0] = inputs[0].clone()
    inputs[0][:, :, 0] = 0.0
    inputs[0][:, :, 1] = 1.0
    opts = dict(SMALL, w_det=1e12, w_bce=1e12, w_smooth_l1=-1e12, w_desc=1e12, margin=1e12)
    check(backend, inputs, small_rotation(), **opts)


@pytest.mark.parametrize("h_kind", ["rotation", "horizon"])
def test_infinite_safe_radius(backend, h_kind):
    """safe_radius = inf is accepted (docs/spec.md 11.5 rejects only < 0): every candidate at a
    finite Chebyshev distance is excluded; an anchor whose q_k has w <= 0 keeps them all."""
    H = small_rotation() if h_kind == "rotation" else EDGES["horizon"]["H"]()
    check(backend, maps(seed=23), H, safe_radius=float("inf"), **SMALL)


# ------------------------------------------------------- non-finite maps, zero-weight corners


def test_reference_sample_is_grid_sample():
    """The reference's written-out bilinear sample is F.grid_sample's on finite maps (values and
    gradients), at points inside, on the grid, on the border and off the map."""
    g = torch.Generator().manual_seed(24)
    f = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    uv = torch.rand(2, 40, 2, generator=g, dtype=torch.float64) * torch.tensor([8.0, 7.0]) - 1
    uv[:, :6] = torch.tensor(
        [[0.0, 0.0], [5.0, 4.0], [2.0, 3.0], [-0.5, 1.0], [5.5, 2.0], [3.0, -1.2]]
    )
    a = f.clone().requires_grad_()
    b = f.clone().requires_grad_()
    sa, sb = R.sample(a, uv), R.grid_sample_points(b, uv)
    torch.testing.assert_close(sa, sb, rtol=0, atol=1e-12)
    w = torch.randn(sa.shape, generator=g, dtype=torch.float64)
    (sa * w).sum().backward()
    (sb * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)


def test_zero_weight_corner_of_a_non_finite_cell_adds_nothing():
    """homography_warp (torch) with H = I: every sample lies on its cell, its other 3 corners have
    weight 0, so a NaN or infinite cell appears at its own cell only, and every gradient is 1."""
    x = torch.rand(1, 2, 3, 4, generator=torch.Generator().manual_seed(25))
    x[0, 0, 1, 1] = float("nan")
    x[0, 1, 0, 2] = float("inf")
    ref = R.homography_warp(x.double(), torch.eye(3, dtype=torch.float64))
    xg = x.clone().requires_grad_()
    out = fl.homography_warp(xg, torch.eye(3))
    assert torch.equal(out.isnan(), x.isnan()) and torch.equal(out.isinf(), x.isinf())
    assert torch.equal(out.isnan(), ref.isnan())
    torch.testing.assert_close(out.double(), ref, equal_nan=True)
    out.sum().backward()
    assert torch.equal(xg.grad, torch.ones_like(x))


def test_descriptor_with_an_infinite_cell_at_zero_weight(backend):
    """An inf descriptor cell that the anchors only touch with weight 0: the reference's finite
    loss and gradients (the torch backend gave 0 * inf = NaN, then a loss of 0)."""
    g = torch.Generator().manual_seed(0)
    d_o = torch.randn(1, 2, 3, 3, generator=g)
    d_o[0, :, 1, 1] = float("inf")
    d_r = torch.randn(1, 2, 3, 3, generator=g)
    kw = dict(
        anchors=torch.tensor([[4.0, 4.0]]), negatives=torch.tensor([[20.0, 20.0], [4.0, 12.0]])
    )
    xs = [d_o.clone().to(DEVICE).requires_grad_(), d_r.clone().to(DEVICE).requires_grad_()]
    loss = fl.rord_descriptor_loss(*xs, torch.eye(3, device=DEVICE), backend=backend,
                                   **{k: v.to(DEVICE) for k, v in kw.items()})  # fmt: skip
    loss.backward()
    rs = [d_o.double().requires_grad_(), d_r.double().requires_grad_()]
    ref = R.rord_descriptor_loss(*rs, torch.eye(3, dtype=torch.float64),
                                 **{k: v.double() for k, v in kw.items()})  # fmt: skip
    ref.backward()
    assert ref.item() > 0.5
    assert_scalar_close(loss, ref, 1e-5)
    for x, r in zip(xs, rs):
        assert_grad_close(x.grad, r.grad, 1e-5)


def _det_run(backend, po, pr, H, from_logits):
    xs = [po.clone().to(DEVICE).requires_grad_(), pr.clone().to(DEVICE).requires_grad_()]
    if backend == "reference":
        xs = [po.double().requires_grad_(), pr.double().requires_grad_()]
        loss = R.rord_detection_loss(*xs, H, from_logits=from_logits)[0]
    else:
        loss = fl.rord_detection_loss(*xs, H.to(DEVICE), from_logits=from_logits, backend=backend)
    loss.backward()
    return loss.detach().cpu(), [x.grad.detach().cpu().double() for x in xs]


@pytest.mark.parametrize("h_kind", ["identity", "rotation"])
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize(
    ("which", "value"),
    [
        (0, float("nan")),
        (1, float("nan")),
        (0, float("inf")),
        (1, float("inf")),
        (1, -float("inf")),
    ],
    ids=["o-nan", "r-nan", "o-inf", "r-inf", "r--inf"],
)
def test_non_finite_detection_maps_give_one_nan_pattern(which, value, from_logits, h_kind):
    """A NaN or infinite cell of a detection map: the loss and every gradient entry NaN, infinite
    or finite alike on both backends (NaN kept by the clamps, zero-weight corners skipped), and
    as the reference where it is defined (from logits; F.binary_cross_entropy refuses a
    probability outside [0, 1])."""
    if not fl.backend.interpreter_on() and not ON_GPU:
        pytest.skip("needs the triton backend (TRITON_INTERPRET=1 or a GPU)")
    g = torch.Generator().manual_seed(26)
    p = [torch.rand(1, 1, 6, 7, generator=g) * 0.9 + 0.05 for _ in range(2)]
    if from_logits:
        p = [torch.logit(x) for x in p]
    p[which][0, 0, 2, 3] = value
    H = torch.eye(3, dtype=torch.float64) if h_kind == "identity" else perspective()
    runs = {be: _det_run(be, *p, H, from_logits) for be in ("torch", "triton")}
    if from_logits:
        runs["reference"] = _det_run("reference", *p, H, from_logits)
    (l0, g0), *others = runs.values()
    for li, gi in others:
        torch.testing.assert_close(li.double(), l0.double(), rtol=1e-5, atol=0, equal_nan=True)
        for a, b in zip(gi, g0):
            assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.isinf(), b.isinf())
            fin = torch.isfinite(a)
            torch.testing.assert_close(a[fin], b[fin], rtol=1e-4, atol=1e-6)


def test_probabilities_outside_the_unit_interval_give_nan(backend):
    """from_logits=False with values outside [0, 1]: log of a negative number is NaN, kept by the
    clamp at -100 on both backends (triton's max dropped it and returned a finite loss)."""
    g = torch.Generator().manual_seed(27)
    lo, lr = (torch.randn(1, 1, 6, 7, generator=g) * 3 for _ in range(2))
    loss = fl.rord_detection_loss(lo.to(DEVICE), lr.to(DEVICE), torch.eye(3, device=DEVICE),
                                  backend=backend)  # fmt: skip
    assert torch.isnan(loss)


@pytest.mark.parametrize("case", ["nan", "overflow"])
def test_broken_descriptors_never_give_a_silent_zero(backend, case):
    """NaN descriptors (the reference: NaN) and float32 descriptors beyond the valid range (1e20:
    every squared distance overflows): a NaN or inf loss, not "no candidate" and 0."""
    g = torch.Generator().manual_seed(28)
    d_o, d_r = (torch.randn(1, 4, 5, 6, generator=g) for _ in range(2))
    if case == "nan":
        d_r[:] = float("nan")
    else:
        d_o, d_r = d_o * 1e20, d_r * 1e20
    kw = dict(anchors=torch.tensor([[4.0, 4.0], [12.0, 20.0]]),
              negatives=torch.tensor([[20.0, 20.0], [4.0, 12.0], [30.0, 9.0]]))  # fmt: skip
    for distance in ("l2", "squared_l2"):
        loss = fl.rord_descriptor_loss(d_o.to(DEVICE), d_r.to(DEVICE), torch.eye(3, device=DEVICE),
                                       distance=distance, backend=backend,
                                       **{k: v.to(DEVICE) for k, v in kw.items()})  # fmt: skip
        assert not torch.isfinite(loss), distance
        if case == "nan":
            ref = R.rord_descriptor_loss(d_o.double(), d_r.double(),
                                         torch.eye(3, dtype=torch.float64), distance=distance,
                                         **{k: v.double() for k, v in kw.items()})  # fmt: skip
            assert torch.isnan(ref) and torch.isnan(loss)


# --------------------------------------------------------------------------- launches, memory


def test_launch_count():
    """Triton backend: detection 2 launches forward (pass, finalize) and 1 per map backward;
    descriptor 5 forward (3 samplings, mining, finalize) and 2 backward (keys, scatter)."""
    if not fl.backend.interpreter_on() and not ON_GPU:
        pytest.skip("needs the triton backend (TRITON_INTERPRET=1 or a GPU)")
    xs = [x.to(DEVICE).requires_grad_() for x in maps(seed=15)]
    H = small_rotation().to(DEVICE)
    reset_launch_count()
    det = fl.rord_detection_loss(xs[0], xs[1], H, backend="triton")
    assert launch_count() == 2
    reset_launch_count()
    det.backward()
    assert launch_count() == 2
    reset_launch_count()
    desc = fl.rord_descriptor_loss(xs[2], xs[3], H, backend="triton", **SMALL)
    assert launch_count() == 5
    reset_launch_count()
    desc.backward()
    assert launch_count() == 2


def test_nothing_of_size_n_times_k_is_built():
    """Triton backend: no tensor created during forward and backward has B N K elements or
    more (the distance matrix), whatever K is; the candidate samples grow as B C K."""
    if not fl.backend.interpreter_on() and not ON_GPU:
        pytest.skip("needs the triton backend (TRITON_INTERPRET=1 or a GPU)")
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (torch.ops.aten.set_.source_Storage, torch.ops.aten.copy_.default):
                return out  # the interpreter's byte views of the kernels' arguments
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.numel = max(self.numel, t.numel())
            return out

    b, c, n = 2, 4, 64
    for k in (64, 512):
        xs = [x.to(DEVICE).requires_grad_() for x in maps(b=b, c=c, size=(8, 8), seed=16)]
        mode = Largest()
        with mode:
            loss = fl.rord_descriptor_loss(
                xs[2], xs[3], small_rotation(size=(8, 8)).to(DEVICE), num_samples=n,
                num_candidates=k, detach_negative=False, backend="triton",
            )  # fmt: skip
            loss.backward()
        assert mode.numel <= max(b * c * k, b * c * 64, 3 * b * n * 4), (k, mode.numel)
        assert mode.numel < b * n * k


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="peak CUDA memory needs a GPU")
def test_peak_memory_does_not_grow_with_n_times_k():
    b, c, hf, wf = 2, 128, 32, 32
    peaks = []
    for k in (400, 4000):
        xs = [x.cuda().requires_grad_() for x in maps(b=b, c=c, size=(hf, wf), seed=17)]
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fl.rord_loss(*xs, small_rotation(size=(hf, wf)).cuda(), num_candidates=k).backward()
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
    # 3600 more candidates: their samples (B C K floats) and records, not B N K distances
    assert peaks[1] - peaks[0] < 2 * b * (c + 8) * 3600 * 4 + (1 << 20), peaks


# ------------------------------------------------------------- safe_radius at an exact tie


def _tie_case(stride: float, anchor: tuple[float, float], shift: tuple[float, float],
              radius: float, axis: int, dtype):  # fmt: skip
    """Maps zero but for a bump of 5 at cell (8, 8); one anchor, H an exact shift; candidate 0
    exactly ``radius`` pixels (Chebyshev) from q = H(anchor), candidate 1 on the bump. Candidate 0
    eligible (a tie counts: >=): the triplet loss is relu(~0 - ~0 + 1) = 1; dropped: 0."""
    d = torch.zeros(1, 2, 10, 10, dtype=dtype)
    d[0, :, 8, 8] = 5.0
    H = torch.tensor([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]], dtype=torch.float64)
    anchors = torch.tensor([anchor], dtype=torch.float64)
    q = [anchor[0] + shift[0], anchor[1] + shift[1]]
    q[axis] += radius
    negatives = torch.tensor([q, [8.5 * stride, 8.5 * stride]], dtype=torch.float64)
    return d, H, anchors, negatives


TIES = [  # stride, anchor pixels, shift (pixels), radius, axis: all exact binary fractions
    (3.3, (17.5, 17.5), (0.0, 0.0), 5.0, 0),  # the sweep's reproducer (library: 4.999...)
    (3.3, (4.25, 9.0), (1.0, -2.5), 7.0, 1),
    (7.3, (12.125, 20.5), (3.0, 0.0), 11.0, 0),
    (7.3, (3.0, 5.5), (-1.5, 2.0), 9.5, 1),
    (0.37, (0.5, 0.75), (0.0, 0.125), 1.5, 0),
    (0.37, (1.125, 0.25), (0.25, 0.0), 0.625, 1),
    (5.5, (9.0, 14.25), (2.0, 2.0), 13.0, 0),
    (2.9, (6.5, 3.75), (0.5, 1.0), 4.25, 1),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", TIES, ids=[f"s{t[0]}-r{t[3]}" for t in TIES])
def test_safe_radius_exact_tie_is_eligible(case, dtype, backend):
    """docs/spec.md 11.3.2: a candidate whose Chebyshev distance in pixels is exactly
    safe_radius is eligible, on both backends and in the reference. The library compared grid
    units times the stride (17.5 px and 22.5 px at stride 3.3: 4.999999999999998, dropped), the
    reference pixels rebuilt from grid points (right here by luck, wrong in ~8% of such ties)."""
    stride, anchor, shift, radius, axis = case
    d, H, anchors, negatives = _tie_case(stride, anchor, shift, radius, axis, dtype)
    kw = dict(stride=stride, safe_radius=radius, margin=1.0)
    ref = R.rord_descriptor_loss(d.double(), d.double(), H, anchors, negatives, **kw)
    assert abs(float(ref) - 1.0) < 1e-9
    dev = [x.to(DEVICE) for x in (d, H, anchors, negatives)]
    got = fl.rord_descriptor_loss(dev[0], dev[0], *dev[1:], backend=backend, **kw)
    assert abs(float(got) - 1.0) < 1e-6
    # just beyond the radius: the candidate is dropped (the bump's candidate gives 0)
    far = dict(kw, safe_radius=radius * (1 + 1e-6))
    assert float(R.rord_descriptor_loss(d.double(), d.double(), H, anchors, negatives, **far)) == 0
    assert float(fl.rord_descriptor_loss(dev[0], dev[0], *dev[1:], backend=backend, **far)) == 0


@pytest.mark.parametrize("h_kind", ["rotation", "perspective", "normalized"])
def test_safe_radius_decisions_match_the_reference_in_float64(h_kind, backend):
    """The library and the reference compute the pixel positions of the safe_radius test with the
    same float64 arithmetic (docs/spec.md 11.3.2), so that every decision, ties included, is the
    reference's: safe_radius set to the computed distance of one anchor-candidate pair."""
    H = {"rotation": small_rotation(), "perspective": perspective(),
         "normalized": torch.tensor([[0.9, -0.2, 0.1], [0.2, 0.9, -0.05]])}[h_kind]  # fmt: skip
    h_coords = "normalized" if h_kind == "normalized" else "pixel"
    g = torch.Generator().manual_seed(41)
    anchors = torch.rand(5, 2, generator=g, dtype=torch.float64) * 40
    negatives = torch.rand(30, 2, generator=g, dtype=torch.float64) * 48
    q, _w = R.radius_positions(H.double(), anchors[None], stride=S, h_coords=h_coords, Hf=6, Wf=7)
    cheb = (negatives[None, None] - q[:, :, None]).abs().amax(-1)[0]  # [N, K]
    inputs = maps(seed=42, dtype=torch.float64)
    for radius in (float(cheb[0, 3]), float(cheb[2, 17]), float(cheb[4].median())):
        kw = dict(stride=S, h_coords=h_coords, safe_radius=radius)
        ref = R.rord_descriptor_loss(inputs[2], inputs[3], H.double(), anchors, negatives, **kw)
        got = fl.rord_descriptor_loss(
            inputs[2].to(DEVICE), inputs[3].to(DEVICE), H.double().to(DEVICE),
            anchors.to(DEVICE), negatives.to(DEVICE), backend=backend, **kw,
        )  # fmt: skip
        assert_scalar_close(got, ref, 1e-12)


# ------------------------------------------------------- NaN candidates, q_k with w <= 0


def test_nan_candidate_is_never_eligible_also_when_q_has_no_positive_w(backend):
    """docs/spec.md 11.3.2: a candidate with a NaN coordinate is never eligible; the reference
    made it eligible when q_k has w <= 0 (its Chebyshev distance replaced by +inf)."""
    d_o = torch.zeros(1, 2, 6, 7, dtype=torch.float64)
    d_r = torch.full((1, 2, 6, 7), 3.0, dtype=torch.float64)
    H = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))  # w <= 0 everywhere
    neg = torch.tensor([[20.0, 20.0], [float("nan"), 12.0]], dtype=torch.float64)
    for radius in (0.0, 4.0):
        kw = dict(stride=8.0, num_samples=4, safe_radius=radius)
        ref = R.rord_descriptor_loss(d_o, d_r, H, None, neg, **kw)
        # the only eligible candidate samples 3 in both channels: d_neg = 3 sqrt(2) > margin
        assert float(ref) == 0.0
        dev = [x.to(DEVICE) for x in (d_o, d_r, H)]
        got = fl.rord_descriptor_loss(*dev, None, neg.to(DEVICE), backend=backend, **kw)
        assert float(got) == 0.0


# ----------------------------------------------------------------------------- requires_grad


def test_loss_requires_grad_only_through_maps_that_get_a_gradient(backend):
    """loss.requires_grad iff a map that receives a gradient requires grad: with detach_target
    det_rotated gets none (the torch backend's loss required grad, the triton one's not)."""
    det_o, det_r, desc_o, desc_r = maps(seed=43)
    det_r = det_r.to(DEVICE).requires_grad_()
    det_o, desc_o, desc_r = det_o.to(DEVICE), desc_o.to(DEVICE), desc_r.to(DEVICE)
    H = small_rotation().to(DEVICE)
    kw = dict(backend=backend, detach_target=True)
    assert not fl.rord_detection_loss(det_o, det_r, H, **kw).requires_grad
    assert not fl.rord_loss(det_o, det_r, desc_o, desc_r, H, **SMALL, **kw).requires_grad
    assert fl.rord_detection_loss(det_o, det_r, H, backend=backend).requires_grad
    desc_r.requires_grad_()
    loss = fl.rord_loss(det_o, det_r, desc_o, desc_r, H, **SMALL, **kw)
    assert loss.requires_grad
    loss.backward()
    assert det_r.grad is None and desc_r.grad is not None


# ---------------------------------------------------------------- argument types and names


@pytest.mark.parametrize("arg", ["H", "anchors", "negatives"])
def test_bool_coordinates_are_refused(arg):
    """H, anchors and negatives are coordinates: a bool tensor (read as 0/1 before) is a
    TypeError naming the argument, before any kernel."""
    desc = torch.randn(2, 4, 6, 7)
    det = torch.rand(2, 1, 6, 7)
    kw = {"H": small_rotation().float(), "anchors": None, "negatives": None}
    kw[arg] = torch.ones(3, 3, dtype=torch.bool) if arg == "H" else torch.ones(5, 2).bool()
    match = rf"^{arg}: expected a floating or integer tensor.*, got dtype torch.bool"
    with pytest.raises(TypeError, match=match):
        fl.rord_descriptor_loss(desc, desc, kw["H"], kw["anchors"], kw["negatives"])
    with pytest.raises(TypeError, match=match):
        fl.rord_loss(det, det, desc, desc, kw["H"], kw["anchors"], kw["negatives"])
    if arg == "H":
        with pytest.raises(TypeError, match=match):
            fl.rord_detection_loss(det, det, kw["H"])
        with pytest.raises(TypeError, match=match):
            fl.homography_warp(desc, kw["H"])


@pytest.mark.parametrize("value", [1, "yes", None])
def test_return_components_must_be_a_bool(value):
    det, desc, H = torch.rand(2, 1, 6, 7), torch.randn(2, 4, 6, 7), small_rotation()
    match = r"^return_components: expected a bool"
    with pytest.raises(TypeError, match=match):
        fl.rord_detection_loss(det, det, H, return_components=value)
    with pytest.raises(TypeError, match=match):
        fl.rord_loss(det, det, desc, desc, H, return_components=value)
    with pytest.raises(TypeError, match=match):
        fl.RoRDLoss()(det, det, desc, desc, H, return_components=value)


@pytest.mark.parametrize(("key", "hint"), [("outside", "RoRD losses"), ("strid", "'stride'"),
                                           ("backend", "")])  # fmt: skip
def test_homography_warp_unknown_keyword_is_named(key, hint):
    """As every other op: a TypeError starting with the keyword's name (it was Python's
    "homography_warp() got an unexpected keyword argument")."""
    with pytest.raises(TypeError, match=rf"^{key}: not an option of homography_warp; .*{hint}"):
        fl.homography_warp(torch.randn(1, 2, 3, 4), small_rotation(), **{key: "zeros"})


def _double_backward_cases(backend):
    det, _, desc, _ = maps(seed=44)
    H = small_rotation().to(DEVICE)

    def leaf(x):
        return x.to(DEVICE).requires_grad_()

    def rord(which):
        d, e = (leaf(det), desc.to(DEVICE)) if which == "det" else (det.to(DEVICE), leaf(desc))
        x = d if which == "det" else e
        return fl.rord_loss(d, d.flip(-1), e, e.flip(-1), H, **SMALL, backend=backend), x

    def detection():
        d = leaf(det)
        return fl.rord_detection_loss(d, d.flip(-1), H, backend=backend), d

    def descriptor():
        e = leaf(desc)
        loss = fl.rord_descriptor_loss(e, e.flip(-1), H, **SMALL, safe_radius=4.0,
                                       backend=backend)  # fmt: skip
        return loss, e

    return [("rord_loss", lambda: rord("det")), ("rord_loss", lambda: rord("desc")),
            ("rord_detection_loss", detection), ("rord_descriptor_loss", descriptor)]  # fmt: skip


def test_double_backward_names_the_public_op(backend):
    """docs/spec.md 8: "<op> (<backend> backend): double backward" with the op the user called
    (the triton backend named its kernels, rord_detection / rord_descriptor, and rord_loss's
    parts named themselves on both backends)."""
    for op, make in _double_backward_cases(backend):
        loss, x = make()
        (g,) = torch.autograd.grad(loss, x, retain_graph=True)
        assert torch.isfinite(g).all()
        with pytest.raises(RuntimeError, match=rf"^{op} \({backend} backend\): double backward"):
            torch.autograd.grad(loss, x, create_graph=True)


# ------------------------------------------------------------------------- registry (12.1)

REGISTRY_CALLS = {
    "RoRDLoss": lambda det, desc, H: (det, det.flip(-1), desc, desc.flip(-1), H),
    "RoRDDetectionLoss": lambda det, desc, H: (det, det.flip(-1), H),
    "RoRDDescriptorLoss": lambda det, desc, H: (desc, desc.flip(-1), H),
}


@pytest.mark.parametrize("name", list(REGISTRY_CALLS))
def test_registry_entry_refuses_weight_avg_factor_and_reduction_override(name, backend):
    """docs/spec.md 12.1: the RoRD entries normalise themselves: a call's weight, avg_factor or
    reduction_override is a ValueError naming it (it was Python's "unexpected keyword argument"),
    as a configured reduction other than "mean" or an avg_factor."""
    det, _, desc, _ = maps(seed=45)
    args = REGISTRY_CALLS[name](det, desc, small_rotation())
    opts = {} if name == "RoRDDetectionLoss" else dict(SMALL)
    loss = build_loss({"type": name, "backend": backend, **opts})
    for key, value in (("weight", torch.ones(2)), ("avg_factor", 3.0),
                       ("reduction_override", "sum")):  # fmt: skip
        with pytest.raises(ValueError, match=rf"^{key}: not offered by {name} \(it normalises"):
            loss(*args, **{key: value})
    expect = loss(*args)
    assert torch.equal(loss(*args, weight=None, avg_factor=None, reduction_override="mean"), expect)
    with pytest.raises(ValueError, match=rf"^reduction: {name} normalises itself"):
        build_loss({"type": name, "reduction": "sum"})
    with pytest.raises(ValueError, match=rf"^avg_factor: not offered by {name}"):
        build_loss({"type": name, "avg_factor": 2.0})
