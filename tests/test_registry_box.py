"""The registry's IoU-family box losses on both backends (docs/spec.md 12.5): the triton backend
(``kernels/box.py``, one kernel writing l and dl/dpred) and the torch backend against the float64
reference (``reference/registry/detection.py``) at spec 6's tolerances, and the triton backend
against the torch backend where the reference has no say (subgradients at ties, the NaN pattern of
non-finite coordinates, the 0/0-as-0 choices of SIoU). Small box counts: the triton kernels run
under Triton's interpreter on CPU."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import BACKENDS, assert_grad_close, assert_scalar_close, build_loss
from fused_losses.kernels.launch import launch_count, reset_launch_count
from fused_losses.reference.registry import detection as RD
from fused_losses.reference.registry import utils as RU

# NaN and inf coordinates make numpy (the interpreter) warn
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")

# every loss x option (IoULoss's modes, SIoULoss's theta)
CASES = [
    ("IoULoss", {"mode": "linear"}), ("IoULoss", {"mode": "square"}), ("IoULoss", {"mode": "log"}),
    ("GIoULoss", {}), ("DIoULoss", {}), ("CIoULoss", {}), ("EIoULoss", {}), ("SIoULoss", {}),
    ("SIoULoss", {"theta": 1.5}),
]  # fmt: skip
CASE_IDS = [name + "".join(f"[{v}]" for v in opts.values()) for name, opts in CASES]
REFS = {
    "IoULoss": RD.iou_loss, "GIoULoss": RD.giou_loss, "DIoULoss": RD.diou_loss,
    "CIoULoss": RD.ciou_loss, "EIoULoss": RD.eiou_loss, "SIoULoss": RD.siou_loss,
}  # fmt: skip
# spec 6 (float64 tight: both backends compute in float64 with the options unrounded)
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-2),
    torch.bfloat16: (1e-3, 1e-2),
}
DEGENERATE = {  # (tests/test_registry.py's)
    "zero_area": ([[5.0, 5.0, 5.0, 5.0]], [[5.0, 5.0, 5.0, 5.0]]),
    "identical": ([[1.0, 2.0, 8.0, 9.0]], [[1.0, 2.0, 8.0, 9.0]]),
    "coincident_centres": ([[0.0, 0.0, 10.0, 4.0]], [[3.0, -3.0, 7.0, 7.0]]),
    "disjoint": ([[0.0, 0.0, 1.0, 1.0]], [[50.0, 50.0, 60.0, 70.0]]),
    "line": ([[0.0, 0.0, 10.0, 0.0]], [[0.0, 0.0, 10.0, 3.0]]),
}


def _xywh(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([(b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]], -1)


def random_boxes(shape, seed: int, fmt: str = "xyxy", dtype=torch.float64):
    """Matched pairs [*shape, 4] (float64 values rounded to ``dtype``): overlapping, disjoint
    and well-fitting ones."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(*shape, 2, generator=g, dtype=torch.float64) * 50
    wh = 2 + torch.rand(*shape, 2, generator=g, dtype=torch.float64) * 30
    t = torch.cat([xy, xy + wh], -1)
    p = t + torch.randn(*shape, 4, generator=g, dtype=torch.float64) * 6
    p = torch.cat([torch.minimum(p[..., :2], p[..., 2:] - 0.5), p[..., 2:]], -1)
    if fmt == "xywh":
        p, t = _xywh(p), _xywh(t)
    return p.to(dtype), t.to(dtype)


def _loss(name, opts, backend, fmt="xyxy", **extra):
    return build_loss({"type": name, "backend": backend, "bbox_format": fmt, **opts, **extra})


def _upstream(shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + seed)
    return torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 0.5


def run(name, opts, backend, p, t, fmt="xyxy", r=None, **extra):
    """(l ("none"), dl/dpred of sum(l r)) on ``backend``."""
    x = p.detach().clone().requires_grad_()
    out = _loss(name, opts, backend, fmt, **extra)(x, t, reduction_override="none")
    r = torch.ones(out.shape, dtype=torch.float64) if r is None else r
    (g,) = torch.autograd.grad((out * r.to(out.dtype)).sum(), x)
    return out.detach(), g


def reference(name, opts, p, t, fmt="xyxy", r=None, eps=1e-6):
    x = p.detach().double().clone().requires_grad_()
    out = REFS[name](x, t.double(), bbox_format=fmt, eps=eps, **opts)
    r = torch.ones(out.shape, dtype=torch.float64) if r is None else r
    (g,) = torch.autograd.grad((out * r).sum(), x)
    return out.detach(), g


def assert_values_close(got, ref, tol, what="l"):
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    got = got.double()
    assert torch.isfinite(got).all(), f"{what}: not finite"
    err = ((got - ref).norm() / ref.norm()).item() if ref.norm() > 0 else got.norm().item()
    assert err <= tol, f"{what}: rel L2 err {err:.3g} > {tol}"


def assert_same_pattern(got, expect, tol, what):
    """Non-finite (and, for values, NaN) exactly where ``expect`` is; the finite entries close
    (relative L2 over them)."""
    assert got.shape == expect.shape and got.dtype == expect.dtype, what
    fin = torch.isfinite(expect)
    assert torch.equal(torch.isfinite(got), fin), (
        f"{what}: finite at {torch.isfinite(got)}, expected {fin}"
    )
    assert torch.equal(torch.isnan(got), torch.isnan(expect)), f"{what}: NaN pattern"
    assert torch.equal(got[~fin & ~torch.isnan(expect)], expect[~fin & ~torch.isnan(expect)]), what
    a, b = got[fin].double(), expect[fin].double()
    den = b.norm().item()
    err = (a - b).norm().item() / den if den > 0 else a.norm().item()
    assert err <= tol, f"{what}: rel L2 err {err:.3g} on the finite entries"


# ---------------------------------------------------------------- parity with the reference


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("fmt", ["xyxy", "xywh"])
@pytest.mark.parametrize(("name", "opts"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_the_reference(backend, name, opts, fmt, dtype):
    """Per-box value and gradient (under a random upstream gradient per box) against the float64
    reference, [N,4] random pairs (overlapping, disjoint, well fitting)."""
    p, t = random_boxes((12,), seed=1, fmt=fmt, dtype=dtype)
    r = _upstream((12,), 1)
    tol_l, tol_g = TOL[dtype]
    val, g = run(name, opts, backend, p, t, fmt, r)
    assert val.dtype == dtype and g.dtype == dtype
    l_ref, g_ref = reference(name, opts, p, t, fmt, r)
    assert_values_close(val, l_ref, tol_l)
    assert_grad_close(g, g_ref, tol_g)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("name", "opts"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_matches_the_reference(backend, name, opts, dtype):
    """float16/bfloat16 boxes: float32 arithmetic, the loss in float32, the gradient in the
    boxes' dtype (spec 6: 1e-3 / 1e-2), the "mean" scalar and "xywh" too."""
    p, t = random_boxes((10,), seed=2, dtype=dtype)
    tol_l, tol_g = TOL[dtype]
    for fmt in ("xyxy", "xywh"):
        pf, tf = (
            (_xywh(p.double()).to(dtype), _xywh(t.double()).to(dtype)) if fmt == "xywh" else (p, t)
        )
        x = pf.clone().requires_grad_()
        out = _loss(name, opts, backend, fmt)(x, tf)
        assert out.dtype == torch.float32
        out.backward()
        assert x.grad.dtype == dtype
        xr = pf.double().requires_grad_()
        ref = REFS[name](xr, tf.double(), bbox_format=fmt, **opts).mean()
        ref.backward()
        assert_scalar_close(out, ref, tol_l)
        assert_grad_close(x.grad, xr.grad, tol_g)


@pytest.mark.parametrize(("name", "opts"), CASES, ids=CASE_IDS)
def test_shapes_weights_reductions_and_layouts(name, opts):
    """[B,K,4] boxes, a [B,K] weight with zeros, avg_factor and "sum", non-contiguous pred and
    target (a strided view and a transposed layout), against the reference reduced by
    ``reduce_with_validity``; float64 on the triton backend."""
    p, t = random_boxes((2, 3), seed=3)
    big = torch.zeros(2, 3, 9, dtype=torch.float64)
    big[..., 0:8:2] = p  # pred[..., j] at column 2 j: a strided view
    big.requires_grad_()
    tv = t.transpose(0, 1).contiguous().transpose(0, 1)  # [2,3,4] with permuted strides
    assert not big[..., 0:8:2].is_contiguous() and not tv.is_contiguous()
    w = torch.tensor([[1.0, 0.0, 0.5], [2.0, 1.0, 0.0]], dtype=torch.float64)
    loss = _loss(name, opts, "triton", loss_weight=1.5)
    for call in ({"weight": w, "avg_factor": 4.0}, {"weight": w[..., None].expand(2, 3, 4)},
                 {"reduction_override": "sum"}):  # fmt: skip
        out = loss(big[..., 0:8:2], tv, **call)
        (g_big,) = torch.autograd.grad(out, big)
        g = g_big[..., 0:8:2]
        assert (g_big[..., 1::2] == 0).all()
        xr = p.clone().requires_grad_()
        elem = REFS[name](xr, t, **opts)
        wr = call.get("weight")
        wr = RD.box_weight(wr, elem) if wr is not None else None
        ref = 1.5 * RU.reduce_with_validity(elem, wr, None, call.get("reduction_override", "mean"),
                                            call.get("avg_factor"))  # fmt: skip
        (g_ref,) = torch.autograd.grad(ref, xr)
        assert_scalar_close(out, ref, 1e-10)
        assert_grad_close(g, g_ref, 1e-10)


@pytest.mark.parametrize("shape", [(0, 4), (2, 0, 4)])
@pytest.mark.parametrize(("name", "opts"), [CASES[0], CASES[5], CASES[7]], ids=lambda c: str(c))
def test_empty_is_defined_without_a_launch(name, opts, shape):
    """M = 0 boxes: "none" is an empty l of pred's shape without the last axis, "mean" 0 with a
    zero gradient of pred's shape; no kernel is launched."""
    loss = _loss(name, opts, "triton")
    x = torch.zeros(shape, requires_grad=True)
    reset_launch_count()
    none = loss(x, torch.zeros(shape), reduction_override="none")
    mean = loss(x, torch.zeros(shape))
    assert none.shape == shape[:-1] and none.dtype == torch.float32
    assert mean.item() == 0.0
    mean.backward()
    assert x.grad.shape == shape and (x.grad == 0).all()
    assert launch_count() == 0


def test_one_launch_forward_and_a_target_without_gradient():
    p, t = random_boxes((5,), seed=4, dtype=torch.float32)
    x = p.clone().requires_grad_()
    tg = t.clone().requires_grad_()  # detached by the loss, as on the torch backend
    reset_launch_count()
    out = _loss("CIoULoss", {}, "triton")(x, tg)
    assert launch_count() == 1
    out.backward()
    assert tg.grad is None and x.grad is not None
    # a call without grad stores nothing and gives the same value
    with torch.no_grad():
        again = _loss("CIoULoss", {}, "triton")(x, t)
    assert torch.equal(again, out.detach())


def test_a_subclass_with_its_own_formula_runs_on_torch():
    """A _BoxLoss subclass that writes its own ``_box_loss`` without a ``KIND`` is not a kernel
    loss: it runs its formula (torch) whatever the backend; one that keeps its parent's formula
    keeps its parent's kernel."""
    from fused_losses.registry.detection import GIoULoss

    class OwnFormula(GIoULoss):
        def _box_loss(self, t, **_):
            return t.one_minus_iou * 2

    class SameFormula(GIoULoss):
        pass

    p, t = random_boxes((4,), seed=10)
    reset_launch_count()
    own = build_loss({"type": OwnFormula, "backend": "triton"})(p, t, reduction_override="none")
    assert launch_count() == 0
    assert_values_close(own, 2 * (1 - RU.compute_iou(p, t)), 1e-12)
    same = build_loss({"type": SameFormula, "backend": "triton"})(p, t, reduction_override="none")
    assert launch_count() == 1
    assert_values_close(same, RD.giou_loss(p, t), 1e-12)


def test_integer_and_bool_targets():
    """A real non-floating target (integer or bool boxes) is read in the compute dtype."""
    p, t = random_boxes((6,), seed=5, dtype=torch.float32)
    ti = t.round().to(torch.int64)
    tb = torch.tensor([[0, 0, 1, 1]] * 6, dtype=torch.bool)
    for target in (ti, tb):
        for name, opts in (CASES[3], CASES[7]):
            l_tr, g_tr = run(name, opts, "triton", p, target)
            l_to, g_to = run(name, opts, "torch", p, target)
            assert_values_close(l_tr, l_to.double(), 1e-6)
            assert_grad_close(g_tr, g_to, 1e-6)


# ------------------------------------------------------------------ degenerate boxes and ties


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(("name", "opts"), CASES, ids=CASE_IDS)
def test_degenerate_pairs(name, opts, dtype):
    """Identical, zero-area, disjoint, coincident centres, a line: finite values and gradients,
    the torch backend's (its 0/0-as-0 choices: SIoU) and the reference's where it is finite."""
    p = torch.tensor([v[0][0] for v in DEGENERATE.values()], dtype=dtype)
    t = torch.tensor([v[1][0] for v in DEGENERATE.values()], dtype=dtype)
    tol = TOL[dtype][0]
    for fmt in ("xyxy", "xywh"):
        pf, tf = (_xywh(p), _xywh(t)) if fmt == "xywh" else (p, t)
        val, g = run(name, opts, "triton", pf, tf, fmt)
        assert torch.isfinite(val).all() and torch.isfinite(g).all()
        l_to, g_to = run(name, opts, "torch", pf, tf, fmt)
        assert_values_close(val, l_to.double(), tol)
        assert_grad_close(g, g_to, tol)
        l_ref, _ = reference(name, opts, pf, tf, fmt)
        ok = torch.isfinite(l_ref)
        if name != "SIoULoss":
            assert ok.all()
        assert_values_close(val[ok], l_ref[ok], tol)
        # per pair, the gradient of that row at spec 6's 1e-5 (the literal float64 reference
        # itself cancels at identical boxes: 1 - I / (U + eps) with l = eps / U)
        for i in torch.nonzero(ok)[:, 0].tolist():
            _, g_ref = reference(name, opts, pf[i : i + 1], tf[i : i + 1], fmt)
            if torch.isfinite(g_ref).all():
                assert_grad_close(g[i : i + 1], g_ref, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("fmt", ["xyxy", "xywh"])
@pytest.mark.parametrize(("name", "opts"), CASES, ids=CASE_IDS)
def test_random_ties_take_the_torch_backends_subgradient(name, opts, fmt, dtype):
    """Integer boxes on a 4x4 grid: shared edges, equal sizes, coincident centres, touching and
    nested boxes. The triton gradient is the torch backend's (autograd's subgradients: 1/2 at a
    max/min tie, the clamp's at 0, sgn(0) = 0), and both are the reference's value."""
    g = torch.Generator().manual_seed(6)
    lo = torch.randint(0, 3, (24, 2, 2), generator=g).double()
    size = torch.randint(1, 3, (24, 2, 2), generator=g).double()
    boxes = torch.cat([lo, lo + size], -1)  # [24, (p, t), 4]
    p, t = boxes[:, 0].to(dtype), boxes[:, 1].to(dtype)
    if fmt == "xywh":
        p, t = _xywh(p), _xywh(t)
    r = _upstream((24,), 6)
    val, gr = run(name, opts, "triton", p, t, fmt, r)
    l_to, g_to = run(name, opts, "torch", p, t, fmt, r)
    tight = 1e-12 if dtype == torch.float64 else 1e-6
    assert_values_close(val, l_to.double(), tight)
    assert_grad_close(gr, g_to, tight)
    l_ref, _ = reference(name, opts, p, t, fmt, r)
    assert_values_close(val, l_ref, TOL[dtype][0])


# ---------------------------------------------------------------------------- any finite scale


SCALE_UNIT = [[0.0, 0.0, 0.2, 0.3], [-0.5, -0.6, 0.3, 0.1], [0.0, 0.0, 0.1, 0.1],
              [0.1, 0.1, 0.4, 0.35]]  # fmt: skip
SCALE_TGT = [[0.1, 0.1, 0.4, 0.35], [-0.4, -0.5, 0.2, 0.3], [0.5, 0.5, 0.9, 0.8],
             [0.1, 0.1, 0.4, 0.35]]  # fmt: skip


@pytest.mark.parametrize(
    ("dtype", "scale"),
    [(torch.float32, 1e19), (torch.float32, 1e30), (torch.float64, 1e300), (torch.float64, 1e-30)],
    ids=lambda v: str(v),
)
@pytest.mark.parametrize(("name", "opts"), CASES, ids=CASE_IDS)
def test_huge_and_tiny_coordinates(name, opts, dtype, scale):
    """The power-of-two rescaling: coordinates of 1e19 and 1e30 in float32 (areas beyond its
    range), 1e300 and 1e-30 in float64, against the reference and the torch backend. At 1e300
    the reference's own areas overflow float64: it is evaluated on the coordinates times 2^-664
    (about 1e100, an exact scaling; eps is as negligible there as at 1e300: l is homogeneous of
    degree 0 but for eps, dl/dpred of degree -1)."""
    p = (torch.tensor(SCALE_UNIT, dtype=torch.float64) * scale).to(dtype)
    t = (torch.tensor(SCALE_TGT, dtype=torch.float64) * scale).to(dtype)
    tol_l, tol_g = TOL[dtype]
    val, g = run(name, opts, "triton", p, t)
    down = 2.0**-664 if scale > 1e200 else 1.0
    l_ref, g_ref = reference(name, opts, p.double() * down, t.double() * down)
    g_ref = g_ref * down
    assert_values_close(val, l_ref, tol_l)
    assert_grad_close(g, g_ref, tol_g)
    l_to, g_to = run(name, opts, "torch", p, t)
    assert_values_close(val, l_to.double(), tol_l)
    assert_grad_close(g, g_to, tol_g)


@pytest.mark.parametrize(("name", "opts"), CASES, ids=CASE_IDS)
def test_tiny_coordinates_in_float32(name, opts):
    """Coordinates of 1e-30 in float32: areas (1e-60) flush below float32's range, so both
    backends see 0 / (0 + eps) where the float64 reference sees 1e-60 / (1e-60 + eps): the
    values agree with the reference (eps dominates), the gradients with the torch backend."""
    p = (torch.tensor(SCALE_UNIT, dtype=torch.float64) * 1e-30).float()
    t = (torch.tensor(SCALE_TGT, dtype=torch.float64) * 1e-30).float()
    val, g = run(name, opts, "triton", p, t)
    l_ref, _ = reference(name, opts, p, t)
    assert_values_close(val, l_ref, 1e-5)
    l_to, g_to = run(name, opts, "torch", p, t)
    assert_same_pattern(val, l_to, 1e-6, "l")
    assert_same_pattern(g, g_to, 1e-5, "grad")


# ------------------------------------------------------------------------ non-finite coordinates


def _non_finite_rows():
    """A NaN, +inf and -inf in each coordinate of pred, then of target, of one overlapping pair;
    all-infinite and all-NaN preds; one finite pair."""
    base_p, base_t = [1.0, 2.0, 8.0, 9.0], [0.5, 2.5, 7.0, 10.0]
    rows_p, rows_t = [], []
    for side in (0, 1):
        for j in range(4):
            for v in (math.nan, math.inf, -math.inf):
                row = [list(base_p), list(base_t)]
                row[side][j] = v
                rows_p.append(row[0])
                rows_t.append(row[1])
    for p in ([math.inf] * 4, [math.nan] * 4, [-math.inf, -math.inf, math.inf, math.inf], base_p):
        rows_p.append(p)
        rows_t.append(base_t)
    return rows_p, rows_t


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize(("name", "opts"), CASES, ids=CASE_IDS)
def test_non_finite_coordinates_give_the_torch_backends_pattern(name, opts, dtype):
    """A pair with a NaN or infinite coordinate (in pred or target) takes the literal formulas:
    its value is the torch backend's (NaN where it is NaN; IoULoss finite), its gradient
    non-finite exactly where the torch backend's is and equal elsewhere; the other pairs are
    unaffected. Both formats, eps 1e-6 and 0. Under an upstream gradient of 1: the triton
    backend scales its stored gradient by the upstream one, the torch backend carries it through
    the chain, where a factor near float's range can overflow (inf - inf: NaN) only for some
    upstream values."""
    rows_p, rows_t = _non_finite_rows()
    p, t = torch.tensor(rows_p, dtype=dtype), torch.tensor(rows_t, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for fmt in ("xyxy", "xywh"):
        for eps in (1e-6, 0.0):
            val, g = run(name, opts, "triton", p, t, fmt, eps=eps)
            l_to, g_to = run(name, opts, "torch", p, t, fmt, eps=eps)
            assert_same_pattern(val, l_to, tol, f"l [{fmt}, eps={eps}]")
            assert_same_pattern(g, g_to, tol, f"grad [{fmt}, eps={eps}]")
            assert torch.isfinite(val[-1]) and torch.isfinite(g[-1]).all()


def test_siou_theta_below_one_is_nan_where_the_sizes_agree_on_both_backends():
    """SIoU's shape cost (1 - e^-omega)^theta with theta < 1 has an infinite derivative at
    omega = 0 (w_p = w_g or h_p = h_g), and |w_p - w_g|'s sgn(0) = 0 makes it inf * 0: the
    reference's gradient is NaN there; both backends give the reference's value and NaN
    pattern, and its gradient elsewhere."""
    p = torch.tensor([[0.0, 0.0, 4.0, 3.0], [0.0, 0.0, 4.0, 3.0], [1.0, 1.0, 5.0, 6.0]],
                     dtype=torch.float64)  # fmt: skip
    t = torch.tensor([[1.0, 0.0, 5.0, 5.0], [0.5, 0.5, 3.0, 3.5], [0.0, 0.0, 3.0, 4.0]],
                     dtype=torch.float64)  # fmt: skip
    opts = {"theta": 0.5}
    l_ref, g_ref = reference("SIoULoss", opts, p, t)
    assert torch.isnan(g_ref[0, 0]) and torch.isnan(g_ref[1, 1]) and torch.isfinite(g_ref[2]).all()
    for backend in BACKENDS:
        val, g = run("SIoULoss", opts, backend, p, t)
        assert_values_close(val, l_ref, 1e-12)
        assert_same_pattern(g, g_ref, 1e-12, f"grad [{backend}]")


@pytest.mark.parametrize(("name", "opts"), CASES, ids=CASE_IDS)
def test_zero_weight_hides_a_padded_box(name, opts):
    """A padded box (pred NaN, target inf) of weight 0 contributes exactly 0: finite value and
    gradient, the reference's on the other boxes (spec 12.2 rule 1)."""
    p, t = random_boxes((4,), seed=7, dtype=torch.float32)
    pb, tb = p.clone(), t.clone()
    pb[2], tb[2] = math.nan, math.inf
    w = torch.tensor([1.0, 0.5, 0.0, 2.0])
    x = pb.clone().requires_grad_()
    out = _loss(name, opts, "triton")(x, tb, weight=w)
    (g,) = torch.autograd.grad(out, x)
    assert torch.isfinite(out) and torch.isfinite(g).all() and (g[2] == 0).all()
    xr = p.double().requires_grad_()
    ref = RU.reduce_with_validity(REFS[name](xr, t.double(), **opts), w.double())
    (g_ref,) = torch.autograd.grad(ref, xr)
    assert_scalar_close(out, ref, 1e-5)
    assert_grad_close(g, g_ref, 1e-5)


# ---------------------------------------------------------------- double backward, torch.compile


@pytest.mark.parametrize("name", list(REFS))
def test_double_backward_is_refused_naming_the_loss(name):
    p, t = random_boxes((3,), seed=8, dtype=torch.float32)
    x = p.clone().requires_grad_()
    out = _loss(name, {}, "triton")(x, t)
    (g,) = torch.autograd.grad(out, x, retain_graph=True)  # first order works
    assert torch.isfinite(g).all()
    with pytest.raises(RuntimeError, match=rf"^{name} \(triton backend\): double backward"):
        torch.autograd.grad(out, x, create_graph=True)


@pytest.mark.parametrize(
    ("name", "opts", "fmt"), [("GIoULoss", {}, "xyxy"), ("SIoULoss", {"theta": 2.0}, "xywh")]
)
def test_compiles_fullgraph_with_the_eager_result(name, opts, fmt):
    """torch.compile(fullgraph=True) of a call on the triton backend (the kernel as an opaque
    custom op) gives the eager value and gradient."""
    p, t = random_boxes((6,), seed=9, fmt=fmt, dtype=torch.float32)
    w = torch.rand(6, generator=torch.Generator().manual_seed(9))
    loss = _loss(name, opts, "triton", fmt)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b, c: loss(a, b, weight=c, avg_factor=3.0),
                             fullgraph=True, backend="eager")  # fmt: skip
    x = p.clone().requires_grad_()
    out = compiled(x, t, w)
    out.backward()
    xe = p.clone().requires_grad_()
    eager = loss(xe, t, weight=w, avg_factor=3.0)
    eager.backward()
    assert torch.equal(out, eager)
    assert torch.equal(x.grad, xe.grad)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["SIoULoss", "EIoULoss"])
def test_size_difference_of_boxes_far_apart(backend, name):
    """w_p - w_g ("xyxy") was always (x2_p - x2_g) - (x1_p - x1_g), which loses the sizes when
    the boxes lie far apart compared with them: SIoU's shape cost |w_p - w_g| / max(w_p, w_g) came
    out 4e-4 off in float32 (dl/dx1 -0.0187008 for -0.0187085) and, in float64, l = 1.6575 for
    2.2896 (a point at (1.5e19, 2.3e19) against [0, 0, 1, 1]). It is now the sizes' difference
    there (the corner differences where they are no larger than the sizes)."""
    cases = [
        (torch.float32, [[10000.123, 20.25, 10001.873, 21.5]],
         [[0.1234567, 0.7654321, 1.0987654, 1.6]]),
        (torch.float64, [[1.5e19, 2.3e19, 1.5e19, 2.3e19]], [[0.0, 0.0, 1.0, 1.0]]),
        (torch.float32, [[1.0, 2.0, 9.0, 8.5], [3.0, 1.0, 3.5, 7.0]],
         [[1.25, 2.0, 9.0, 8.0], [3.0, 1.0, 3.5, 7.25]]),  # boxes that fit: the corner form
    ]  # fmt: skip
    for dtype, p, t in cases:
        p, t = torch.tensor(p, dtype=dtype), torch.tensor(t, dtype=dtype)
        x = p.clone().requires_grad_()
        got = build_loss({"type": name, "backend": backend})(x, t, reduction_override="sum")
        (g,) = torch.autograd.grad(got, x)
        xr = p.double().requires_grad_()
        ref = RD.siou_loss(xr, t.double()) if name == "SIoULoss" else RD.eiou_loss(xr, t.double())
        (g_ref,) = torch.autograd.grad(ref.sum(), xr)
        assert_scalar_close(got, ref.sum(), 1e-5 if dtype == torch.float32 else 1e-12)
        assert_grad_close(g, g_ref, 1e-5 if dtype == torch.float32 else 1e-12)
