"""The registry's sort- and pooling-based segmentation losses (SPEC 10.3, S2-S3): LovaszLoss,
LovaszHingeLoss and BoundaryLoss against the literal float64 reference
(``fused_losses.reference.registry.segmentation_sort_pool``: Berman's per-class loop with boolean
removal of the ignored pixels; yiskw713's boundary F1 with the spec's ignore rule), their options,
reductions, bad input, float32, and ``torch.compile(fullgraph=True)``."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import DEVICE, assert_grad_close, assert_scalar_close, build_loss
from fused_losses.reference.registry import segmentation_sort_pool as RS

import fused_losses.registry.boundary
import fused_losses.registry.lovasz  # noqa: F401  (registers the Lovasz losses)
from fused_losses.registry import LOSSES
from fused_losses.registry.lovasz import lovasz_grad

EPS32 = float(torch.finfo(torch.float32).eps)  # added to every "mean" denominator
C = 4
CW = [1.0, 2.5, 0.5, 3.0]
TOL = 1e-10  # float64 vs the float64 reference


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def logits(shape, seed=0, dtype=torch.float64):
    """Continuous random logits (no ties in the sorted errors)."""
    return (torch.randn(shape, generator=_gen(seed), dtype=torch.float64) * 2).to(dtype)


def labels(shape, high=C, seed=1, ignore=0.2):
    """Random labels in [0, high) with a fraction ``ignore`` set to 255."""
    y = torch.randint(0, high, shape, generator=_gen(seed))
    drop = torch.rand(shape, generator=_gen(seed + 100)) < ignore
    return torch.where(drop, 255, y)


def compare(loss, ref_fn, x, y, tol=TOL, **call):
    """Value ("none") and gradient under random upstream weights against ``ref_fn``; returns the
    value."""
    xa = x.detach().clone().requires_grad_()
    xb = x.detach().clone().requires_grad_()
    got = loss(xa, y, reduction_override="none", **call)
    ref = ref_fn(xb)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, rtol=tol, atol=1e-14)
    up = torch.rand(ref.shape, generator=_gen(7), dtype=ref.dtype) + 0.5
    (got * up).sum().backward()
    (ref * up).sum().backward()
    assert_grad_close(xa.grad, xb.grad, tol, "grad x")
    return got


# ------------------------------------------------------------------------------- Lovasz-Softmax


BACKENDS = ["torch", "triton"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("classes", ["present", "all", [0, 2], [3, 1, 1]])
@pytest.mark.parametrize("cw", [None, CW, "tensor"])
def test_lovasz_softmax_matches_reference(backend, per_image, classes, cw):
    x = logits((3, C, 5, 7), seed=3)
    y = labels((3, 5, 7), C - 1, seed=4)  # class 3 absent
    y[1] = torch.where(y[1] == 0, 255, y[1])  # class 0 absent from image 1
    y[2] = 255  # image 2: nothing valid
    class_weight = torch.tensor(CW, dtype=torch.float64) if cw == "tensor" else cw
    cfg = {"type": "LovaszLoss", "per_image": per_image, "classes": classes,
           "class_weight": class_weight, "backend": backend}  # fmt: skip
    loss = build_loss(cfg)
    ref_fn = lambda a: RS.lovasz_softmax_loss(
        a, y, classes=classes, per_image=per_image, class_weight=class_weight
    )
    got = compare(loss, ref_fn, x, y)
    assert got.shape == ((3,) if per_image else ())
    assert got.abs().sum() > 1e-2
    if per_image:
        assert got[2] == 0  # no valid pixel


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("classes", ["present", "all", [1]])
def test_lovasz_softmax_all_ignored_is_zero_with_zero_gradient(backend, per_image, classes):
    x = logits((2, C, 3, 3)).requires_grad_()
    y = torch.full((2, 3, 3), 255)
    cfg = {"type": "LovaszLoss", "per_image": per_image, "classes": classes, "backend": backend}
    out = build_loss(cfg)(x, y)
    assert out.dim() == 0 and out.item() == 0.0
    (g,) = torch.autograd.grad(out, x)
    assert torch.isfinite(g).all() and g.abs().max() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_lovasz_softmax_shapes_one_pixel_and_vectors(backend):
    for shape in [(5, C), (1, C, 1, 1), (2, C, 6), (2, C, 2, 3, 2)]:  # [N,C,*]
        x = logits(shape, seed=len(shape))
        y = labels((shape[0], *shape[2:]), seed=len(shape), ignore=0.1 if shape[0] > 1 else 0)
        for per_image in (False, True):
            loss = build_loss({"type": "LovaszLoss", "per_image": per_image, "backend": backend})
            fn = lambda a, pi=per_image, y=y: RS.lovasz_softmax_loss(a, y, per_image=pi)
            got = compare(loss, fn, x, y)
            assert got.shape == ((shape[0],) if per_image else ())
    # one valid pixel of class c: the only present class, l = 1 - p_c
    x = logits((1, C, 1, 1))
    p = torch.softmax(x, 1)[0, :, 0, 0]
    assert_scalar_close(
        build_loss({"type": "LovaszLoss", "backend": backend})(x, torch.tensor([[[2]]])),
        1 - p[2],
        1e-12,
    )


def test_lovasz_softmax_perfect_prediction_is_near_zero():
    y = labels((2, 6, 6), ignore=0.1)
    x = 40.0 * torch.nn.functional.one_hot(y.clamp(max=C - 1), C).movedim(-1, 1).double()
    out = build_loss({"type": "LovaszLoss", "classes": "all"})(x, y)
    assert 0 <= out.item() < 1e-12
    out_bad = build_loss({"type": "LovaszLoss"})(-x, y)
    assert out_bad.item() > 0.9


def test_lovasz_grad_closed_form():
    """Berman's differences of Jaccard losses, in closed form (no cancellation in float32)."""
    g = _gen(5)
    for m, frac in [(1, 0.5), (7, 0.0), (7, 1.0), (50, 0.3), (200_000, 0.02)]:
        fg = torch.rand(3, m, generator=g) < frac
        ref = torch.stack([RS.lovasz_grad(r.double()) for r in fg])
        got64 = lovasz_grad(fg, torch.float64)
        # (Berman's float64 differences themselves lose ~1e-6 relative at m = 2e5)
        torch.testing.assert_close(got64, ref, rtol=1e-5 if m > 1000 else 1e-12, atol=1e-15)
        got32 = lovasz_grad(fg, torch.float32).double()
        nz = got64 != 0
        assert torch.equal(got32 != 0, nz)
        rel32 = ((got32 - got64).abs()[nz] / got64[nz]).max().item()
        assert rel32 < 1e-6, (m, rel32)  # elementwise, even at large m
        if m > 1000:  # Berman's differences in float32: off by orders of magnitude
            berman32 = torch.stack([RS.lovasz_grad(r.float()) for r in fg]).double()
            assert ((berman32 - got64).abs()[nz] / got64[nz]).max().item() > 1.0


def test_lovasz_ignore_index_option_and_call_override():
    x = logits((2, C, 4, 4))
    y = labels((2, 4, 4), ignore=0.3)
    base = build_loss({"type": "LovaszLoss", "per_image": True})
    expect = RS.lovasz_softmax_loss(x, y, per_image=True)
    y2 = torch.where(y == 255, -1, y)
    torch.testing.assert_close(base(x, y2, ignore_index=-1, reduction_override="none"), expect)
    other = build_loss({"type": "LovaszLoss", "per_image": True, "ignore_index": -1})
    torch.testing.assert_close(other(x, y2, reduction_override="none"), expect)
    # ignore_index None: every label counts (255 is then a valid pixel of no class)
    none = build_loss({"type": "LovaszLoss", "ignore_index": None})
    assert_scalar_close(none(x, y), RS.lovasz_softmax_loss(x, y, ignore_index=None), 1e-12)
    assert abs(none(x, y).item() - base(x, y).item()) > 1e-3
    with pytest.raises(ValueError, match="per_image: not an option of a LovaszLoss call"):
        base(x, y, per_image=False)


def test_lovasz_reductions_and_sample_weights():
    x = logits((4, C, 3, 5))
    y = labels((4, 3, 5))
    y[3] = 255
    ref = RS.lovasz_softmax_loss(x, y, per_image=True)
    loss = build_loss({"type": "LovaszLoss", "per_image": True, "loss_weight": 2.0})
    assert_scalar_close(loss(x, y), 2 * ref.mean(), 1e-12)  # mean over N, image 3 included as 0
    assert_scalar_close(loss(x, y, reduction_override="sum"), 2 * ref.sum(), 1e-12)
    w = torch.tensor([0.5, 2.0, 0.0, 1.0], dtype=torch.float64)
    assert_scalar_close(loss(x, y, weight=w), 2 * (w * ref).sum() / 4, 1e-12)
    assert_scalar_close(loss(x, y, avg_factor=3.0), 2 * ref.sum() / (3 + EPS32), 1e-12)
    batch = build_loss({"type": "LovaszLoss"})
    assert_scalar_close(batch(x, y), RS.lovasz_softmax_loss(x, y), 1e-12)
    with pytest.raises(ValueError, match="weight"):
        batch(x, y, weight=w)  # a 0-dim loss takes no per-image weight


# ---------------------------------------------------------------------------------- Lovasz hinge


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("shape", [(3, 6, 5), (3, 1, 6, 5), (4, 9), (6,)])
def test_lovasz_hinge_matches_reference(backend, per_image, shape):
    x = logits(shape, seed=11)
    yshape = (shape[0], *shape[2:]) if len(shape) == 4 else shape
    y = labels(yshape, 2, seed=12, ignore=0.25)
    if len(shape) > 1:
        y[1] = 255  # one image with nothing valid
    loss = build_loss({"type": "LovaszHingeLoss", "per_image": per_image, "backend": backend})
    got = compare(loss, lambda a: RS.lovasz_hinge_loss(a, y, per_image=per_image), x, y)
    assert got.shape == ((shape[0],) if per_image else ())
    assert got.abs().sum() > 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_lovasz_hinge_all_ignored_bool_target_and_margin(backend):
    x = logits((2, 1, 3, 3)).requires_grad_()
    loss = build_loss({"type": "LovaszHingeLoss", "backend": backend})
    out = loss(x, torch.full((2, 3, 3), 255))
    assert out.item() == 0.0
    (g,) = torch.autograd.grad(out, x)
    assert torch.isfinite(g).all() and g.abs().max() == 0
    # bool targets are the same as 0/1; margins >= 1 on every pixel give exactly 0
    yb = torch.rand(2, 3, 3, generator=_gen(2)) < 0.5
    assert_scalar_close(loss(x, yb), loss(x, yb.long()), 0)
    assert loss(torch.where(yb, 2.0, -2.0).double(), yb).item() == 0.0
    assert loss(torch.where(yb, -2.0, 2.0).double(), yb).item() > 1.0


# ------------------------------------------------------------------- Lovasz: the triton backend


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_triton_rows_of_several_blocks_match_reference(per_image):
    """Rows longer than one block of sorted positions (8192 under the interpreter, 1024 compiled):
    each block starts from the foreground counted in the blocks before it."""
    x = logits((2, 3, 72, 64), seed=21)  # 9216 pixels an image
    y = labels((2, 72, 64), 3, seed=22, ignore=0.1)
    loss = build_loss({"type": "LovaszLoss", "per_image": per_image, "backend": "triton"})
    ref_fn = lambda a: RS.lovasz_softmax_loss(a, y, per_image=per_image)
    compare(loss, ref_fn, x, y)
    xh = logits((2, 1, 72, 64), seed=23)
    yh = labels((2, 72, 64), 2, seed=24, ignore=0.1)
    hinge = build_loss({"type": "LovaszHingeLoss", "per_image": per_image, "backend": "triton"})
    compare(hinge, lambda a: RS.lovasz_hinge_loss(a, yh, per_image=per_image), xh, yh)


def test_lovasz_triton_launches_and_keeps_weights_only_for_a_gradient():
    from fused_losses.kernels.launch import launch_count, reset_launch_count

    from fused_losses.kernel_ops import run
    from fused_losses.triton_lovasz import KIND_SOFTMAX, lovasz_rows_triton

    x = logits((2, C, 5, 6), seed=25, dtype=torch.float32).to(DEVICE)
    y = labels((2, 5, 6), seed=26).reshape(2, 30).to(DEVICE)
    x3 = x.reshape(2, C, 30)
    kw = {"kind": KIND_SOFTMAX, "per_image": True, "ignore_index": 255}
    reset_launch_count()
    values, count = lovasz_rows_triton(x3, y, **kw)  # keys, counts, terms (and one sort)
    assert launch_count() == 3 and values.shape == (2, C) and count.dtype == torch.int64
    assert torch.equal(count, (y[:, None, :] == torch.arange(C, device=DEVICE)[:, None]).sum(-1))
    # without a gradient the forward keeps nothing of the logits' size
    opts = {**kw, "store_w": False}
    assert run("lovasz_rows", (x3, y), opts)[2].numel() == 0
    xg = x3.clone().requires_grad_()
    reset_launch_count()
    out, _ = lovasz_rows_triton(xg, y, **kw)
    out.sum().backward()
    assert launch_count() == 4 and torch.isfinite(xg.grad).all()
    # what autograd keeps beyond the inputs: W, 4 bytes per class and pixel in float32
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    xg = x3.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lovasz_rows_triton(xg, y, **kw)
    kept.pop(xg.untyped_storage().data_ptr())
    kept.pop(y.untyped_storage().data_ptr())
    assert sum(kept.values()) <= 4 * x3.numel() + 8 * 2 * C


@pytest.mark.parametrize("cfg", [{"type": "LovaszLoss"}, {"type": "LovaszHingeLoss"}])
def test_lovasz_nan_logit_is_nan_on_both_backends(cfg):
    hinge = cfg["type"] == "LovaszHingeLoss"
    x = logits((2, 1 if hinge else C, 3, 3), seed=27)
    x[0, 0, 1, 1] = float("nan")
    y = labels((2, 3, 3), 2 if hinge else C, seed=28, ignore=0.0)
    ref = (RS.lovasz_hinge_loss if hinge else RS.lovasz_softmax_loss)(x, y)
    assert torch.isnan(ref)
    for backend in BACKENDS:
        assert torch.isnan(build_loss({**cfg, "backend": backend})(x, y))


def test_lovasz_triton_double_backward_refused_and_class_limit_named():
    x = logits((2, C, 3, 3)).requires_grad_()
    out = build_loss({"type": "LovaszLoss", "backend": "triton"})(x, labels((2, 3, 3)))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out, x, create_graph=True)
    wide = torch.zeros(1, 1025, 1, 2)
    with pytest.raises(ValueError, match="pred: at most 1024 classes"):
        build_loss({"type": "LovaszLoss", "backend": "triton"})(wide, torch.zeros(1, 1, 2).long())


# -------------------------------------------------------------------------------- BoundaryLoss


@pytest.mark.parametrize(("theta0", "theta"), [(3, 5), (1, 3), (5, 1), (3, 3), (7, 9)])
def test_boundary_matches_reference(theta0, theta):
    x = logits((3, C, 11, 9), seed=21)
    y = labels((3, 11, 9), C - 1, seed=22, ignore=0.0)  # class 3 absent
    y[0, 2:6, 3:7] = 255  # an ignored block
    y[1, :, :2] = 255
    y[2] = torch.where(labels((11, 9), seed=23, ignore=0.3) == 255, 255, y[2])  # scattered
    loss = build_loss({"type": "BoundaryLoss", "theta0": theta0, "theta": theta})
    fn = lambda a: RS.boundary_loss(a, y, theta0=theta0, theta=theta)
    got = compare(loss, fn, x, y)
    assert got.shape == (3,) and ((got > 0) & (got <= 1)).all()


def test_boundary_edge_cases_match_reference():
    loss = build_loss({"type": "BoundaryLoss"})
    cases = [
        (logits((2, 3, 1, 1)), torch.tensor([[[1]], [[255]]])),  # one pixel
        (logits((2, 3, 4, 3)), torch.full((2, 4, 3), 255)),  # nothing valid: 1, zero gradient
        (logits((1, 2, 6, 6)), labels((1, 6, 6), 2, ignore=0.0)),
        (logits((2, 3, 5, 5)), torch.where(labels((2, 5, 5), 4) == 3, 7, labels((2, 5, 5), 4))),
    ]
    for x, y in cases:
        compare(loss, lambda a, y=y: RS.boundary_loss(a, y), x, y)
    x = logits((2, 3, 4, 3)).requires_grad_()
    out = loss(x, torch.full((2, 4, 3), 255), reduction_override="none")
    assert torch.equal(out, torch.ones(2, dtype=torch.float64))
    assert torch.autograd.grad(out.sum(), x)[0].abs().max() == 0


def _scene():
    """Labels [1,12,12]: class 0 left, class 1 right, a class-2 blob; a near-perfect prediction."""
    y = torch.zeros(1, 12, 12, dtype=torch.long)
    y[:, :, 6:] = 1
    y[:, 8:11, 8:11] = 2
    x = 30.0 * torch.nn.functional.one_hot(y, 3).movedim(-1, 1).double()
    return x + 0.1 * logits(x.shape, seed=31), y


def test_boundary_ignored_region_makes_no_fake_boundary():
    x, y = _scene()
    loss = build_loss({"type": "BoundaryLoss", "reduction": "none"})
    full = loss(x, y)
    hole = y.clone()
    hole[:, 2:5, 1:4] = 255  # a void square inside class 0, predicted as class 0
    # the void square is not a boundary of class 0 (or of any class): as if it were labelled 0
    torch.testing.assert_close(loss(x, hole), full, rtol=1e-9, atol=1e-12)
    # a real object there (class 2, predicted as class 0) does change the loss
    obj = y.clone()
    obj[:, 2:5, 1:4] = 2
    assert (loss(x, obj) - full).abs().item() > 0.05
    # which label marks the void does not matter
    relabelled = torch.where(hole == 255, 9, hole)
    assert torch.equal(loss(x, relabelled, ignore_index=9), loss(x, hole))
    # a void square on the class boundary removes that stretch of boundary from both sides only
    edge = y.clone()
    edge[:, 0:4, 4:8] = 255
    compare(loss, lambda a: RS.boundary_loss(a, edge), x, edge)


def test_boundary_reductions_and_sample_weights():
    x = logits((4, 3, 6, 6), seed=41)
    y = labels((4, 6, 6), 3, seed=42)
    ref = RS.boundary_loss(x, y)
    loss = build_loss({"type": "BoundaryLoss", "loss_weight": 0.5})
    assert_scalar_close(loss(x, y), 0.5 * ref.mean(), 1e-12)  # yiskw713: mean over N and C
    assert_scalar_close(loss(x, y, reduction_override="sum"), 0.5 * ref.sum(), 1e-12)
    w = torch.tensor([1.0, 0.0, 2.0, 0.5], dtype=torch.float64)
    assert_scalar_close(loss(x, y, weight=w), 0.5 * (w * ref).sum() / 4, 1e-12)
    assert_scalar_close(loss(x, y, weight=w, avg_factor=2.0), 0.5 * (w * ref).sum() / (2 + EPS32),
                        1e-12)  # fmt: skip
    with pytest.raises(ValueError, match="weight"):
        loss(x, y, weight=torch.ones(3, dtype=torch.float64))


# ------------------------------------------------------------------------------------- float32


@pytest.mark.parametrize(
    ("cfg", "make"),
    [
        ({"type": "LovaszLoss", "per_image": True, "class_weight": CW},
         lambda: (logits((2, C, 48, 40), 51), labels((2, 48, 40), seed=52))),
        ({"type": "LovaszLoss", "classes": "all"},
         lambda: (logits((2, C, 48, 40), 53), labels((2, 48, 40), seed=54))),
        ({"type": "LovaszHingeLoss"},
         lambda: (logits((2, 1, 48, 40), 55), labels((2, 48, 40), 2, seed=56))),
        ({"type": "BoundaryLoss"},
         lambda: (logits((2, C, 24, 20), 57), labels((2, 24, 20), seed=58))),
    ],
)  # fmt: skip
@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_and_half_close_to_float64(backend, cfg, make):
    x, y = make()
    loss = build_loss({**cfg, "backend": backend})
    x64 = x.clone().requires_grad_()
    ref = loss(x64, y)
    (g64,) = torch.autograd.grad(ref, x64)
    for dtype, tol in [(torch.float32, 1e-5), (torch.float16, 2e-2)]:
        xl = x.to(dtype).requires_grad_()
        out = loss(xl, y)
        assert out.dtype == torch.float32 and torch.isfinite(out)
        (g,) = torch.autograd.grad(out, xl)
        assert g.dtype == dtype and torch.isfinite(g).all()
        # the value is continuous; the subgradient moves with near-ties that rounding reorders
        assert_scalar_close(out, ref, tol)
        if dtype == torch.float32:
            assert_grad_close(g, g64, 1e-3)


# ------------------------------------------------------------------------------------- compile


def _compiled_matches_eager(loss, x, y, backend):
    torch._dynamo.reset()
    fn = torch.compile(lambda a, b: loss(a, b), fullgraph=True, backend=backend)
    xa = x.detach().clone().requires_grad_()
    xb = x.detach().clone().requires_grad_()
    got = fn(xa, y)
    ref = loss(xb, y)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
    got.sum().backward()
    ref.sum().backward()
    assert_grad_close(xa.grad, xb.grad, 1e-5)


def test_compile_fullgraph_inductor():
    """LovaszLoss and LovaszHingeLoss forward + backward through inductor (CPU): no boolean
    indexing, no data-dependent shape, no host sync (a graph break would fail fullgraph)."""
    start = time.perf_counter()
    cfg = {"type": "LovaszLoss", "per_image": True, "classes": [0, 2], "class_weight": CW[:3]}
    y = labels((2, 4, 5), 3, seed=61)
    _compiled_matches_eager(build_loss(cfg), logits((2, 3, 4, 5), 62, torch.float32), y, "inductor")
    yb = labels((2, 4, 5), 2, seed=63)
    x = logits((2, 1, 4, 5), 64, torch.float32)
    _compiled_matches_eager(build_loss({"type": "LovaszHingeLoss"}), x, yb, "inductor")
    assert time.perf_counter() - start < 120  # ~20 s on 2 CPU cores


@pytest.mark.parametrize(
    "cfg",
    [
        {"type": "LovaszLoss"},
        {"type": "LovaszLoss", "classes": "all", "per_image": True},
        {"type": "LovaszHingeLoss", "per_image": True},
        {"type": "BoundaryLoss"},
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_traces(backend, cfg):
    """The other configurations through dynamo + AOT autograd (fast; no codegen); the triton
    backend's Lovasz op is an opaque custom op there."""
    hinge = cfg["type"] == "LovaszHingeLoss"
    x = logits((2, 1 if hinge else 3, 5, 4), 65, torch.float32)
    y = labels((2, 5, 4), 2 if hinge else 3, seed=66)
    _compiled_matches_eager(build_loss({**cfg, "backend": backend}), x, y, "aot_eager")


# ------------------------------------------------------------------------------ configs, errors


def test_registered_with_defaults():
    for name in ("LovaszLoss", "LovaszHingeLoss", "BoundaryLoss"):
        assert name in LOSSES
    lov = build_loss({"type": "LovaszLoss"})
    assert lov.options == {"per_image": False, "classes": "present", "ignore_index": 255,
                           "class_weight": None}  # fmt: skip
    assert lov.reduction == "mean" and lov.loss_name == "loss_lovasz"
    assert build_loss({"type": "LovaszHingeLoss"}).options == {"per_image": False,
                                                               "ignore_index": 255}  # fmt: skip
    bnd = build_loss({"type": "BoundaryLoss"})
    assert bnd.options == {"theta0": 3, "theta": 5, "ignore_index": 255}
    assert bnd.loss_name == "loss_boundary"
    assert build_loss({"type": "LovaszLoss", "classes": (2, 0)}).options["classes"] == (2, 0)
    assert build_loss({"type": "LovaszLoss", "classes": torch.tensor([1])}).options["classes"] == (
        1,
    )


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"type": "LovaszLoss", "classes": "some"}, "classes"),
        ({"type": "LovaszLoss", "classes": []}, "classes"),
        ({"type": "LovaszLoss", "classes": [0, 1.5]}, r"classes\[1\]"),
        ({"type": "LovaszLoss", "classes": [-1]}, r"classes\[0\]"),
        ({"type": "LovaszLoss", "classes": [True]}, r"classes\[0\]"),
        ({"type": "LovaszLoss", "classes": 3}, "classes"),
        ({"type": "LovaszLoss", "classes": torch.tensor([0.5])}, "classes"),
        ({"type": "LovaszLoss", "per_image": "yes"}, "per_image"),
        ({"type": "LovaszLoss", "class_weight": 2.0}, "class_weight"),
        ({"type": "LovaszLoss", "class_weight": [1.0, float("nan")]}, r"class_weight\[1\]"),
        ({"type": "LovaszLoss", "ignore_index": 2.5}, "ignore_index"),
        ({"type": "LovaszLoss", "use_sigmoid": True}, "use_sigmoid: not an option of LovaszLoss"),
        ({"type": "LovaszHingeLoss", "per_image": 1}, "per_image"),
        ({"type": "LovaszHingeLoss", "classes": "all"}, "classes"),
        ({"type": "BoundaryLoss", "theta0": 4}, "theta0"),
        ({"type": "BoundaryLoss", "theta0": 0}, "theta0"),
        ({"type": "BoundaryLoss", "theta": -3}, "theta"),
        ({"type": "BoundaryLoss", "theta": 3.0}, "theta"),
        ({"type": "BoundaryLoss", "theta": True}, "theta"),
        ({"type": "BoundaryLoss", "ignore_index": "255"}, "ignore_index"),
    ],
)  # fmt: skip
def test_bad_options_are_named(cfg, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build_loss(cfg)


X4 = logits((2, C, 3, 3))
Y3 = labels((2, 3, 3))


@pytest.mark.parametrize(
    ("cfg", "x", "y", "error", "match"),
    [
        ({"type": "LovaszLoss"}, X4, Y3[:, :2], ValueError, r"target: expected shape \[2, 3, 3\]"),
        ({"type": "LovaszLoss"}, X4, Y3.double(), TypeError, "target.*integer"),
        ({"type": "LovaszLoss"}, X4.long(), Y3, TypeError, "pred.*floating"),
        ({"type": "LovaszLoss"}, X4[:, 0, 0, 0], Y3[:, 0, 0], ValueError, r"pred.*\[2\]"),
        ({"type": "LovaszLoss"}, X4, Y3.tolist(), TypeError, "target"),
        ({"type": "LovaszLoss", "classes": [1, C]}, X4, Y3, ValueError, f"classes.*0, {C}"),
        ({"type": "LovaszLoss", "class_weight": [1.0] * (C + 1)}, X4, Y3, ValueError,
         f"class_weight: expected {C} values.*got {C + 1}"),
        ({"type": "LovaszHingeLoss"}, X4, Y3, ValueError, r"target: expected shape \[2, 4, 3, 3\]"),
        ({"type": "LovaszHingeLoss"}, X4[:, :1], Y3[:, :2], ValueError,
         r"target.*\[2, 3, 3\].*got \[2, 2, 3\]"),
        ({"type": "LovaszHingeLoss"}, X4[:, 0], Y3.double(), TypeError, "target"),
        ({"type": "BoundaryLoss"}, X4[..., 0], Y3[..., 0], ValueError, r"pred.*\[N, C, H, W\]"),
        ({"type": "BoundaryLoss"}, X4, Y3[:1], ValueError, r"target: expected shape \[2, 3, 3\]"),
        ({"type": "BoundaryLoss"}, X4, Y3.float(), TypeError, "target"),
    ],
)  # fmt: skip
def test_bad_inputs_are_named(cfg, x, y, error, match):
    with pytest.raises(error, match=match):
        build_loss(cfg)(x, y)
    with pytest.raises(TypeError, match="ignore_index"):
        build_loss({"type": cfg["type"]})(X4[:, :1] if "Hinge" in cfg["type"] else X4, Y3,
                                          ignore_index="x")  # fmt: skip


# -------------------------------------------------------------------- audit fixes: empty inputs


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("shape", [(2, C, 0, 4), (2, C, 4, 0), (3, C, 0, 0)])
def test_boundary_of_an_empty_map_is_one_per_image(backend, shape):
    # max pooling refuses an empty map; the formula's value there is that of an image with no
    # valid pixel (every sum empty: P = R = 0, 1 - BF1 = 1), with a zero gradient
    loss = build_loss({"type": "BoundaryLoss", "backend": backend})
    for red, want in (("none", torch.ones(shape[0], dtype=torch.float64)),
                      ("mean", torch.tensor(1.0, dtype=torch.float64)),
                      ("sum", torch.tensor(float(shape[0]), dtype=torch.float64))):  # fmt: skip
        x = logits(shape).requires_grad_()
        out = loss(x, torch.zeros(shape[0], *shape[2:], dtype=torch.long), reduction_override=red)
        assert out.shape == want.shape and torch.equal(out, want)
        out.sum().backward()
        assert x.grad.shape == x.shape
    # the same value as an image whose pixels are all ignored
    full = logits((shape[0], C, 3, 3))
    ignored = torch.full((shape[0], 3, 3), 255)
    assert torch.equal(loss(full, ignored, reduction_override="none"), want.new_ones(shape[0]))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize(
    ("cfg", "x_shape", "none_shape"),
    [
        ({"type": "BoundaryLoss"}, (0, C, 4, 4), (0,)),
        ({"type": "LovaszLoss", "per_image": True}, (0, C, 4, 4), (0,)),
        ({"type": "LovaszLoss"}, (0, C, 4, 4), ()),
        ({"type": "LovaszHingeLoss", "per_image": True}, (0, 4, 4), (0,)),
    ],
)
def test_empty_batches_give_zero(backend, cfg, x_shape, none_shape):
    # (LovaszLoss per_image with N = 0 is [0] under "none"; "mean" reduces it to a 0-dim 0)
    loss = build_loss({**cfg, "backend": backend})
    y_shape = (x_shape[0], *x_shape[2:]) if len(x_shape) == 4 else x_shape
    for red in ("none", "mean", "sum"):
        x = logits(x_shape).requires_grad_()
        out = loss(x, torch.zeros(y_shape, dtype=torch.long), reduction_override=red)
        assert tuple(out.shape) == (none_shape if red == "none" else ())
        assert torch.all(out == 0)
        out.sum().backward()
        assert x.grad.shape == x.shape and torch.all(x.grad == 0)


# -------------------------------------------- sweep fixes: NaN/inf inputs, zero weights, cache

NAN, INF = float("nan"), float("inf")


def _poisoned(x, points, value):
    bad = x.clone()
    for p in points:
        bad[p] = value
    return bad


def _value_and_grad(loss, x, y, **call):
    xa = x.clone().requires_grad_()
    out = loss(xa, y, **call)
    up = torch.rand(out.shape, generator=_gen(9), dtype=out.dtype) + 0.5
    (g,) = torch.autograd.grad((out * up).sum(), xa)
    return out, g, up


@pytest.mark.parametrize("backend", BACKENDS)
def test_lovasz_classes_list_follows_the_call_class_count(backend):
    # the class counts of a ``classes`` list were cached without C: a second call with another
    # C failed ("shape '[1, 4]' is invalid for input of size 3")
    loss = build_loss({"type": "LovaszLoss", "classes": [0, 1], "backend": backend})
    for c in (3, 4, 3, 5):
        x, y = logits((2, c, 4, 4), seed=70 + c), labels((2, 4, 4), c, seed=80 + c)
        want = RS.lovasz_softmax_loss(x, y, classes=[0, 1])
        assert_scalar_close(loss(x, y), want, 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [NAN, INF, -INF])
@pytest.mark.parametrize("cfg", [{"type": "LovaszLoss", "per_image": True},
                                 {"type": "LovaszLoss", "classes": "all"},
                                 {"type": "LovaszHingeLoss", "per_image": True}])  # fmt: skip
def test_lovasz_weight_zero_image_and_ignored_pixel_hide_non_finite_logits(backend, value, cfg):
    # spec 12.2 rule 1: an ignored pixel's logits (and, per image, those of an image of weight
    # 0) are replaced by 0 before the formula; the value and the gradient are the reference's
    # on finite logits there (the gradient was NaN)
    hinge = cfg["type"] == "LovaszHingeLoss"
    per_image = cfg.get("per_image", False)
    x = logits((3, 1 if hinge else C, 4, 5), seed=90)
    y = labels((3, 4, 5), 2 if hinge else C, seed=91, ignore=0.0)
    y[1, 2, 3] = 255
    points = [(1, 0, 2, 3)] + ([(0, 0, 1, 1), (0, 0, 3, 2)] if per_image else [])
    bad, fine = _poisoned(x, points, value), _poisoned(x, points, 0.0)
    if hinge:
        ref_fn = lambda a: RS.lovasz_hinge_loss(a, y, per_image=per_image)
    else:
        ref_fn = lambda a: RS.lovasz_softmax_loss(
            a, y, per_image=per_image, classes=cfg.get("classes", "present")
        )
    loss = build_loss({**cfg, "backend": backend})
    w = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64) if per_image else None
    got, g, up = _value_and_grad(loss, bad, y, weight=w, reduction_override="none")
    xr = fine.clone().requires_grad_()
    ref = ref_fn(xr) * (w if per_image else 1.0)
    (gr,) = torch.autograd.grad((ref * up).sum(), xr)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-14)
    assert torch.isfinite(g).all(), "NaN gradient"
    assert all(g[p].abs() == 0 for p in points)
    assert_grad_close(g, gr, 1e-10)
    if not per_image:  # a 0-dim weight of 0 hides the whole batch
        zero = torch.zeros((), dtype=torch.float64)
        out, g0, _ = _value_and_grad(loss, _poisoned(x, [(0, 1, 1, 1)], value), y, weight=zero)
        assert out == 0 and torch.equal(g0, torch.zeros_like(g0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [NAN, INF, -INF, 3.0])
def test_boundary_ignored_pixel_input_takes_no_part(backend, value):
    # an ignored pixel's logits are replaced by 0 and its p is 1 for every class in the first
    # pool, b_p = 0 there before the second (as t): its input, NaN/inf included, changes
    # neither the value nor the gradient (the value was NaN: p was pooled into its neighbours);
    # the reference follows the same rule
    x = logits((2, C, 7, 6), seed=92)
    y = labels((2, 7, 6), C - 1, seed=93, ignore=0.0)
    y[0, 3, 2] = y[1, 0, 5] = y[1, 4, 1] = 255
    points = [(0, 1, 3, 2), (1, 0, 0, 5), (1, 2, 4, 1), (1, 3, 4, 1)]
    loss = build_loss({"type": "BoundaryLoss", "backend": backend})
    got, g, up = _value_and_grad(loss, _poisoned(x, points, value), y, reduction_override="none")
    xr = x.clone().requires_grad_()
    ref = RS.boundary_loss(xr, y)
    (gr,) = torch.autograd.grad((ref * up).sum(), xr)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-14)
    assert torch.isfinite(g).all() and g[0, :, 3, 2].abs().max() == 0
    assert g[1, :, 0, 5].abs().max() == 0 and g[1, :, 4, 1].abs().max() == 0
    assert_grad_close(g, gr, 1e-10)
    # the reference too is independent of the ignored pixels' logits
    torch.testing.assert_close(RS.boundary_loss(_poisoned(x, points, value), y), ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [NAN, INF])
def test_boundary_weight_zero_image_hides_non_finite_logits(backend, value):
    x = logits((3, C, 5, 6), seed=94)
    y = labels((3, 5, 6), C, seed=95)
    w = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    bad = _poisoned(x, [(1, 2, 2, 2), (1, 0, 4, 5)], value)
    loss = build_loss({"type": "BoundaryLoss", "backend": backend})
    got, g, up = _value_and_grad(loss, bad, y, weight=w)
    fine = x.clone()
    fine[1] = 0
    xr = fine.requires_grad_()
    ref = (RS.boundary_loss(xr, y) * w).mean()
    (gr,) = torch.autograd.grad(ref * up, xr)
    assert_scalar_close(got, ref, 1e-12)
    assert torch.isfinite(g).all() and g[1].abs().max() == 0
    assert_grad_close(g, gr, 1e-10)
