"""The registry's segmentation family (docs/spec.md 12.7; SPEC 10.3): the fused Dice losses, OHEM,
SurfaceLoss, HDLoss and the exact distance transform, on both backends (the triton one through
the interpreter on CPU), against the literal float64 reference (and SciPy for the transform)."""

from __future__ import annotations

import pytest
import torch
from conftest import TOLERANCES, assert_grad_close, assert_scalar_close, build_loss, device_call
from fused_losses.reference.registry import segmentation as R

from fused_losses.registry.utils import distance_transform, squared_distance_transform

CW = [1.0, 2.0, 0.5, 3.0, 1.5]
C = len(CW)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def logits(shape, seed=0, dtype=torch.float64):
    return (torch.randn(shape, generator=_gen(seed), dtype=torch.float64) * 2).to(dtype)


def labels(shape, high=C, seed=1, ignore=255):
    y = torch.randint(0, high, shape, generator=_gen(seed))
    if ignore is not None:
        y.view(-1)[:: max(y.numel() // 5, 1)] = ignore
    return y


def _upstream(shape, seed=5):
    return torch.rand(shape, generator=_gen(seed), dtype=torch.float64) + 0.5


def check_parity(loss, ref_fn, x, target, tol=1e-10):
    """l ("none") and the gradient of a random weighting of it equal the reference's."""
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    a = loss(xa, target, reduction_override="none")
    b = ref_fn(xb, target)
    assert a.shape == b.shape
    assert torch.allclose(a, b, rtol=tol, atol=tol), (a, b)
    g = _upstream(a.shape)
    (ga,) = torch.autograd.grad((a * g).sum(), xa)
    (gb,) = torch.autograd.grad((b * g).sum(), xb)
    assert_grad_close(ga, gb, tol)


# --------------------------------------------------------------------------------------- Dice

DICE = {
    "default": ({}, {}),
    "naive": ({"naive_dice": True}, {"naive_dice": True}),
    "sigmoid": ({"use_sigmoid": True}, {"use_sigmoid": True}),
    "exponent,eps": ({"exponent": 1.5, "eps": 0.3}, {"exponent": 1.5, "smooth": 0.3}),
    "ignore class 2": ({"ignore_index": 2}, {"ignore_index": 2}),
    "class_weight": ({"class_weight": CW}, {"class_weight": CW}),
}


@pytest.mark.parametrize("case", list(DICE))
@pytest.mark.parametrize("shape", [(3, C, 6, 7), (7, C), (2, C, 3, 4, 5)])
def test_dice_matches_reference(backend, case, shape):
    opts, ref_opts = DICE[case]
    loss = build_loss({"type": "DiceLoss", "backend": backend, **opts})
    ig = opts.get("ignore_index", 255)
    y = labels((shape[0], *shape[2:]), ignore=ig if ig == 255 else None)
    check_parity(loss, lambda x, t: R.dice_loss(x, t, **ref_opts), logits(shape), y)


def test_dice_dense_target_and_probabilities(backend):
    x = logits((2, C, 5, 6))
    one_hot = torch.nn.functional.one_hot(labels((2, 5, 6), ignore=None), C).permute(0, 3, 1, 2)
    loss = build_loss({"type": "DiceLoss", "backend": backend})
    check_parity(loss, R.dice_loss, x, one_hot.double())
    check_parity(loss, R.dice_loss, x, one_hot.bool())
    # activate=False: the probabilities are given
    probs = build_loss({"type": "DiceLoss", "activate": False, "backend": backend})
    p = torch.softmax(x, 1)
    check_parity(probs, lambda q, t: R.dice_loss(q, t, activate=False), p, labels((2, 5, 6)))


def test_dice_reductions_and_weights(backend):
    x, y = logits((4, C, 3, 5)), labels((4, 3, 5))
    ref = R.dice_loss(x, y)
    loss = build_loss({"type": "DiceLoss", "backend": backend, "loss_weight": 0.5})
    assert_scalar_close(loss(x, y), 0.5 * ref.mean(), 1e-12)
    assert_scalar_close(loss(x, y, reduction_override="sum"), 0.5 * ref.sum(), 1e-12)
    w = torch.tensor([1.0, 0.0, 2.0, 0.5], dtype=torch.float64)
    assert_scalar_close(loss(x, y, weight=w), 0.5 * (ref * w).mean(), 1e-12)
    eps = float(torch.finfo(torch.float32).eps)
    assert_scalar_close(loss(x, y, avg_factor=3.0), 0.5 * ref.sum() / (3 + eps), 1e-12)


def test_dice_all_ignored_absent_classes_and_one_pixel(backend):
    loss = build_loss({"type": "DiceLoss", "backend": backend, "reduction": "none"})
    x = logits((3, C, 4, 4)).requires_grad_()
    y = torch.full((3, 4, 4), 255)
    y[1] = 0  # one class present, the others absent
    y[2, 0, 0] = 3  # one valid pixel
    out = loss(x, y)
    ref = R.dice_loss(x.detach(), y)
    assert torch.isfinite(out).all() and torch.allclose(out, ref, rtol=1e-10, atol=1e-12)
    assert torch.allclose(out[0], torch.tensor(0.0, dtype=torch.float64))  # smooth / smooth
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[0].abs().max() == 0


def test_binary_dice(backend):
    loss = build_loss({"type": "BinaryDiceLoss", "backend": backend})
    y = torch.randint(0, 2, (3, 5, 6), generator=_gen(3))
    y[1, :2] = 255
    check_parity(loss, R.binary_dice_loss, logits((3, 1, 5, 6)), y)  # [N,1,*] with [N,*]
    check_parity(loss, R.binary_dice_loss, logits((3, 5, 6)), y.double())  # same shape
    check_parity(loss, R.binary_dice_loss, logits((3, 1, 5, 6)), y[:, None])
    expo = build_loss({"type": "BinaryDiceLoss", "exponent": 1, "smooth": 0.1, "backend": backend})
    check_parity(expo, lambda x, t: R.binary_dice_loss(x, t, exponent=1, smooth=0.1),
                 logits((3, 5, 6)), y)  # fmt: skip


def test_generalized_dice(backend):
    loss = build_loss({"type": "GeneralizedDiceLoss", "backend": backend})
    y = labels((3, 6, 7))
    y[1] = torch.where(y[1] == 3, 0, y[1])  # an absent class: w = the largest finite w
    y[2] = 255  # no valid pixel: w = 0, l = 1 - s/s = 0
    check_parity(loss, R.generalized_dice_loss, logits((3, C, 6, 7)), y)
    out = loss(logits((3, C, 6, 7)), y, reduction_override="none")
    assert out[2] == 0
    sig = build_loss({"type": "GeneralizedDiceLoss", "use_sigmoid": True, "backend": backend})
    check_parity(sig, lambda x, t: R.generalized_dice_loss(x, t, use_sigmoid=True),
                 logits((3, C, 6, 7)), labels((3, 6, 7)))  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dice_low_precision(backend, dtype):
    x = logits((2, C, 8, 9), dtype=dtype)
    y = labels((2, 8, 9))
    xa = x.clone().requires_grad_()
    out = build_loss({"type": "DiceLoss", "backend": backend})(xa, y)
    out.backward()
    xr = x.double().requires_grad_()
    ref = R.dice_loss(xr, y).mean()
    ref.backward()
    assert out.dtype == torch.float32 and xa.grad.dtype == dtype  # the loss in float32
    tol_l, tol_g = TOLERANCES[dtype]
    assert_scalar_close(out, ref, tol_l)
    assert_grad_close(xa.grad, xr.grad, tol_g)


def test_dice_many_classes(backend):
    loss = build_loss({"type": "DiceLoss", "backend": backend})
    y = labels((2, 3, 4), high=150)
    check_parity(loss, R.dice_loss, logits((2, 150, 3, 4)), y)


def test_dice_empty_batch(backend):
    x = logits((0, C, 4, 4)).requires_grad_()
    out = build_loss({"type": "DiceLoss", "backend": backend})(x, labels((0, 4, 4)))
    assert out == 0
    out.backward()
    assert x.grad.shape == x.shape


def test_dice_double_backward(backend):
    x = logits((2, C, 3, 3)).requires_grad_()
    loss = build_loss({"type": "DiceLoss", "backend": backend})
    if backend == "triton":
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.grad(loss(x, labels((2, 3, 3))), x, create_graph=True)
        return
    (g,) = torch.autograd.grad(loss(x, labels((2, 3, 3))), x, create_graph=True)
    g.pow(2).sum().backward()  # the torch backend is plain autograd: exact
    xr = x.detach().clone().requires_grad_()
    (gr,) = torch.autograd.grad(R.dice_loss(xr, labels((2, 3, 3))).mean(), xr, create_graph=True)
    gr.pow(2).sum().backward()
    assert_grad_close(x.grad, xr.grad, 1e-10)


# --------------------------------------------------------------------------------------- OHEM


@pytest.mark.parametrize("min_kept", [0, 1, 7, 100000])
@pytest.mark.parametrize("thresh", [0.7, 0.05])
def test_ohem_cross_entropy(backend, min_kept, thresh):
    x, y = logits((2, C, 6, 7)), labels((2, 6, 7))
    loss = build_loss({"type": "OHEMCrossEntropyLoss", "thres": thresh, "min_kept": min_kept,
                       "class_weight": CW, "backend": backend})  # fmt: skip

    def ref(red):
        return lambda a, t: R.ohem_cross_entropy_loss(
            a, t, thresh=thresh, min_kept=min_kept, class_weight=CW, reduction=red
        )

    check_parity(loss, ref("none"), x, y)
    for red in ("mean", "sum"):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        a, b = loss(xa, y, reduction_override=red), ref(red)(xb, y)
        assert_scalar_close(a, b, 1e-10)
        a.backward()
        b.backward()
        assert_grad_close(xa.grad, xb.grad, 1e-10)


def test_ohem_all_ignored_and_aliases(backend):
    x = logits((2, C, 3, 3)).requires_grad_()
    y = torch.full((2, 3, 3), 7)
    loss = build_loss({"type": "OHEMCrossEntropyLoss", "ignore_label": 7, "backend": backend})
    out = loss(x, y)
    out.backward()
    assert out == 0 and x.grad.abs().max() == 0
    with pytest.raises(ValueError, match="thres"):
        build_loss({"type": "OHEMCrossEntropyLoss", "thres": 0.5, "thresh": 0.5})
    with pytest.raises(ValueError, match="min_kept"):
        build_loss({"type": "OHEMCrossEntropyLoss", "min_kept": -1})


def test_ohem_binary(backend):
    x = logits((3, 5, 6))
    y = torch.randint(0, 2, (3, 5, 6), generator=_gen(4))
    y[0, 0] = 255
    for mk in (0, 10, 100000):
        loss = build_loss({"type": "OHEMBinaryLoss", "min_kept": mk, "backend": backend})
        check_parity(loss, lambda a, t, k=mk: R.ohem_binary_loss(a, t, min_kept=k,
                     reduction="none"), x, y)  # fmt: skip
        assert_scalar_close(loss(x, y), R.ohem_binary_loss(x, y, min_kept=mk), 1e-10)
    one = build_loss({"type": "OHEMBinaryLoss", "min_kept": 10, "backend": backend})
    out = one(x[:, None], y, reduction_override="none")
    assert out.shape == (3, 1, 5, 6)


def test_ohem_weight(backend):
    x, y = logits((2, C, 4, 4)), labels((2, 4, 4))
    w = torch.rand(2, 4, 4, generator=_gen(8), dtype=torch.float64)
    loss = build_loss({"type": "OHEMCrossEntropyLoss", "min_kept": 5, "backend": backend})
    none = R.ohem_cross_entropy_loss(x, y, min_kept=5, reduction="none")
    kept = (none != 0).sum()
    assert_scalar_close(loss(x, y, weight=w), (none * w).sum() / kept, 1e-10)


# ------------------------------------------------------------------------------ surface, HD


def test_surface_loss(backend):
    x = logits((2, C, 4, 5))
    phi = torch.randn(2, C, 4, 5, generator=_gen(6), dtype=torch.float64) * 3
    loss = build_loss({"type": "SurfaceLoss", "backend": backend})
    check_parity(loss, R.surface_loss, x, phi)
    for red, fn in (("mean", torch.mean), ("sum", torch.sum)):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        a = loss(xa, phi, reduction_override=red)
        b = fn(R.surface_loss(xb, phi))
        assert_scalar_close(a, b, 1e-12)
        a.backward()
        b.backward()
        assert_grad_close(xa.grad, xb.grad, 1e-10)
    # a zero weight hides a NaN distance
    w = torch.ones(2, 4, 5, dtype=torch.float64)
    w[0, 0, 0] = 0
    bad = phi.clone()
    bad[0, :, 0, 0] = float("nan")
    out = loss(x, bad, weight=w)
    ref = (R.surface_loss(x, torch.nan_to_num(bad)) * w[:, None]).mean()
    assert_scalar_close(out, ref, 1e-12)


@pytest.mark.parametrize("alpha", [2.0, 1.0])
def test_hd_loss(backend, alpha):
    x = logits((2, 3, 8, 9))
    y = labels((2, 8, 9), high=3)
    loss = build_loss({"type": "HDLoss", "alpha": alpha, "backend": backend})
    check_parity(loss, lambda a, t: R.hd_loss(a, t, alpha=alpha), x, y)
    valid = (y != 255).sum() * 2
    assert_scalar_close(loss(x, y), R.hd_loss(x, y, alpha=alpha).sum() / valid, 1e-6)


# ------------------------------------------------------------------------- distance transform


@pytest.mark.parametrize("shape", [(3, 9, 11), (2, 1, 7), (1, 13, 1), (2, 16, 5)])
def test_distance_transform_equals_scipy(backend, shape):
    ndimage = pytest.importorskip("scipy.ndimage")
    m = torch.rand(shape, generator=_gen(11)) > 0.35
    m[0] = True  # a full mask: 0 everywhere (spec; SciPy has no pixel to measure to)
    out = device_call(backend, distance_transform, m, backend=backend)
    assert out.dtype == torch.float32 and out.shape == m.shape
    for i in range(1, shape[0]):
        ref = torch.from_numpy(ndimage.distance_transform_edt(m[i].numpy())).float()
        assert torch.equal(out[i], ref)
    assert torch.equal(out[0], torch.zeros(shape[1:]))
    assert torch.equal(out, R.distance_transform(m).float())
    d2 = device_call(backend, squared_distance_transform, m, backend=backend)
    assert torch.equal(d2.double().sqrt().float(), out)


def test_distance_transform_empty_and_bad_input(backend):
    def dt(mask):
        return device_call(backend, distance_transform, mask, backend)

    assert torch.equal(dt(torch.zeros(2, 4, 5, dtype=torch.bool)), torch.zeros(2, 4, 5))
    assert dt(torch.zeros(0, 4, 5, dtype=torch.bool)).shape == (0, 4, 5)
    with pytest.raises(TypeError, match="mask"):
        dt(torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="mask"):
        dt(torch.zeros(4, 5, dtype=torch.bool))


# ------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("cfg", "error", "name"),
    [
        ({"type": "DiceLoss", "exponent": 0.5}, ValueError, "exponent"),
        ({"type": "DiceLoss", "smooth": -1.0}, ValueError, "smooth"),
        ({"type": "DiceLoss", "eps": 1.0, "smooth": 1.0}, ValueError, "eps"),
        ({"type": "DiceLoss", "naive_dice": 1}, TypeError, "naive_dice"),
        ({"type": "GeneralizedDiceLoss", "ignore_index": 2.5}, TypeError, "ignore_index"),
        ({"type": "HDLoss", "alpha": 0}, ValueError, "alpha"),
        ({"type": "OHEMBinaryLoss", "thresh": float("nan")}, ValueError, "thresh"),
    ],
)
def test_bad_options_are_named(cfg, error, name):
    with pytest.raises(error, match=name):
        build_loss(cfg)


def test_bad_inputs_are_named(backend):
    dice = build_loss({"type": "DiceLoss", "backend": backend})
    x = logits((2, C, 4, 4))
    with pytest.raises(ValueError, match=r"target: expected shape \[2, 4, 4\]"):
        dice(x, labels((2, 4, 5)))
    with pytest.raises(TypeError, match="pred"):
        dice(x.long(), labels((2, 4, 4)))
    with pytest.raises(ValueError, match="class_weight"):
        build_loss({"type": "DiceLoss", "class_weight": [1.0, 2.0], "backend": backend})(
            x, labels((2, 4, 4))
        )
    with pytest.raises(ValueError, match="target"):
        build_loss({"type": "BinaryDiceLoss", "backend": backend})(x[:, :1], labels((2, 4, 5)))
    with pytest.raises(ValueError, match="pred"):
        build_loss({"type": "HDLoss", "backend": backend})(x[..., 0], labels((2, 4)))
    with pytest.raises(ValueError, match="target"):
        build_loss({"type": "SurfaceLoss", "backend": backend})(x, x[:, :2])


# -------------------------------------------------------------------------- configs, compile

SEG_YAML = """
loss:
  - type: CrossEntropyLoss
    loss_weight: 1.0
    ignore_index: 255
  - type: DiceLoss
    loss_weight: 1.0
    ignore_index: 255
"""
OHEM_YAML = """
loss:
  type: OHEMCrossEntropyLoss
  thresh: 0.7
  min_kept: 100000
  ignore_index: 255
  loss_weight: 1.0
"""


def test_seed_segmentation_and_ohem_configs(backend):
    yaml = pytest.importorskip("yaml")
    x, y = logits((2, C, 5, 6)), labels((2, 5, 6))
    seg = build_loss([{**c, "backend": backend} for c in yaml.safe_load(SEG_YAML)["loss"]])
    ce = torch.nn.functional.cross_entropy(x, y, ignore_index=255)
    assert_scalar_close(seg(x, y), ce + R.dice_loss(x, y).mean(), 1e-7)
    ohem = build_loss({**yaml.safe_load(OHEM_YAML)["loss"], "backend": backend})
    assert_scalar_close(ohem(x, y), R.ohem_cross_entropy_loss(x, y), 1e-10)


def test_compile_fullgraph(backend):
    x, y = logits((2, C, 4, 5), dtype=torch.float32), labels((2, 4, 5))
    dice = build_loss({"type": "DiceLoss", "backend": backend})
    ohem = build_loss({"type": "OHEMCrossEntropyLoss", "min_kept": 6, "backend": backend})

    def step(a):
        return dice(a, y) + ohem(a, y)

    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    eager = step(xa)
    eager.backward()
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(xb)
    compiled.backward()
    assert torch.allclose(compiled, eager, rtol=1e-6)
    assert torch.allclose(xb.grad, xa.grad, rtol=1e-5, atol=1e-7)


# ------------------------------------------------- audit fixes: signed powers, masking, edges


@pytest.mark.parametrize("exponent", [2.0, 3.0, 1.0])
def test_dice_without_activation_takes_torch_pow_of_negative_inputs(backend, exponent):
    # activate=False: p = x itself, negative values included; x^e is torch.pow's (the signed
    # power for an integer e): the triton kernel gave NaN (a power of a non-negative base)
    x, y = logits((2, C, 4, 4), seed=12), labels((2, 4, 4))
    assert (x < 0).any()
    loss = build_loss({"type": "DiceLoss", "activate": False, "exponent": exponent,
                       "backend": backend})  # fmt: skip
    check_parity(loss, lambda a, t: R.dice_loss(a, t, activate=False, exponent=exponent), x, y)
    # float32 within the spec's tolerance
    x32 = x.float().requires_grad_()
    xr = x.float().double().requires_grad_()
    got = loss(x32, y)
    ref = R.dice_loss(xr, y, activate=False, exponent=exponent).mean()
    assert_scalar_close(got, ref, 1e-5)
    got.backward()
    ref.backward()
    assert_grad_close(x32.grad, xr.grad, 1e-5)


def test_dice_without_activation_fractional_power_of_negative_is_nan(backend):
    # a fractional power of a negative p is NaN, as torch.pow and the reference give; the
    # ignored pixels' p never reaches the gradient
    x, y = logits((2, C, 4, 4), seed=12), labels((2, 4, 4))
    loss = build_loss({"type": "DiceLoss", "activate": False, "exponent": 1.5,
                       "backend": backend})  # fmt: skip
    assert torch.isnan(loss(x, y)) and torch.isnan(R.dice_loss(x, y, activate=False,
                                                                exponent=1.5).mean())  # fmt: skip
    # non-negative valid pixels and a negative value at an ignored pixel: finite, exact
    p = torch.softmax(x, 1)
    p[:, :, 0, 0] = -0.5
    y2 = y.clone()
    y2[:, 0, 0] = 255
    check_parity(loss, lambda a, t: R.dice_loss(a, t, activate=False, exponent=1.5), p, y2)


def test_surface_zero_weight_hides_a_nan_logit(backend):
    # a pixel of weight 0 with NaN logits: its logits are replaced before the softmax, so the
    # value and the gradient are those of any finite logits there (spec 12.2 rule 1)
    x = logits((2, C, 4, 5), seed=13)
    phi = torch.randn(2, C, 4, 5, generator=_gen(14), dtype=torch.float64) * 3
    w = torch.rand(2, 4, 5, generator=_gen(15), dtype=torch.float64) + 0.5
    w[0, 1, 2] = 0
    bad = x.clone()
    bad[0, :, 1, 2] = float("nan")
    loss = build_loss({"type": "SurfaceLoss", "backend": backend})
    for red in ("mean", "sum", "none"):
        xa, xr = bad.clone().requires_grad_(), x.clone().requires_grad_()
        got = loss(xa, phi, weight=w, reduction_override=red)
        elem = R.surface_loss(xr, phi) * w[:, None]
        ref = {"mean": elem.mean(), "sum": elem.sum(), "none": elem}[red]
        assert got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-12, atol=1e-12)
        (got * _upstream(got.shape)).sum().backward()
        (ref * _upstream(ref.shape)).sum().backward()
        assert torch.isfinite(xa.grad).all() and xa.grad[0, :, 1, 2].abs().max() == 0
        assert_grad_close(xa.grad, xr.grad, 1e-10)


@pytest.mark.parametrize(
    ("cfg", "x_shape", "y_shape", "none_shape"),
    [
        ({"type": "OHEMCrossEntropyLoss"}, (0, C, 4, 4), (0, 4, 4), (0, 4, 4)),
        ({"type": "OHEMCrossEntropyLoss", "min_kept": 3}, (2, C, 0, 4), (2, 0, 4), (2, 0, 4)),
        ({"type": "OHEMBinaryLoss"}, (0, 4, 4), (0, 4, 4), (0, 4, 4)),
        ({"type": "OHEMBinaryLoss"}, (2, 1, 0, 4), (2, 0, 4), (2, 1, 0, 4)),
        ({"type": "BinaryDiceLoss"}, (0, 4, 4), (0, 4, 4), (0,)),
        ({"type": "DiceLoss"}, (0, C, 4, 4), (0, 4, 4), (0,)),
    ],
)
def test_empty_inputs_give_zero(backend, cfg, x_shape, y_shape, none_shape):
    # N = 0 or an empty map: 0 ("mean", "sum"), the "none" shape, a zero gradient (the device
    # sort of OHEM had no k-th element to gather)
    loss = build_loss({**cfg, "backend": backend})
    for red in ("mean", "sum", "none"):
        x = torch.zeros(x_shape, dtype=torch.float64, requires_grad=True)
        out = loss(x, torch.zeros(y_shape, dtype=torch.long), reduction_override=red)
        assert tuple(out.shape) == (none_shape if red == "none" else ())
        assert torch.all(out == 0)
        out.sum().backward()
        assert x.grad.shape == x.shape and torch.all(x.grad == 0)


# ------------------------------------- sweep fixes: NaN/inf inputs, zero weights, GDL, min_kept

NAN, INF = float("nan"), float("inf")


def _grad_of(loss, x, *args, reduction="mean", **kw):
    """(value, dvalue/dx under a random upstream weighting)."""
    xa = x.clone().requires_grad_()
    out = loss(xa, *args, reduction_override=reduction, **kw)
    (g,) = torch.autograd.grad((out * _upstream(out.shape)).sum(), xa)
    return out, g


@pytest.mark.parametrize("min_kept", [100000, 7, 0])
def test_ohem_nan_or_inf_logit_is_dropped_like_an_ignored_pixel(backend, min_kept):
    # a NaN q (a NaN logit, or +inf in the softmax row) is invalid for the selection, as an
    # ignored pixel; with min_kept >= |V| - 1, k landed on it: the threshold was NaN, nothing was
    # kept and the loss 0 with a zero gradient (the reference dropped it: finite)
    x, y = logits((2, C, 4, 5), seed=40), labels((2, 4, 5), seed=41, ignore=None)
    bad = x.clone()
    bad[0, 1, 2, 2] = NAN
    bad[1, 3, 0, 4] = INF
    bad[1, 0, 3, 1] = -INF  # a -inf logit is a finite q: still a candidate
    y_drop = y.clone()
    y_drop[0, 2, 2] = 255
    y_drop[1, 0, 4] = 255
    fine = torch.where(torch.isfinite(bad), bad, 0.0)
    fine[1, 0, 3, 1] = -INF
    loss = build_loss({"type": "OHEMCrossEntropyLoss", "min_kept": min_kept, "backend": backend})
    for red in ("mean", "none", "sum"):
        got, g = _grad_of(loss, bad, y, reduction=red)
        ref_bad = R.ohem_cross_entropy_loss(bad, y, min_kept=min_kept, reduction=red)
        xr = fine.clone().requires_grad_()
        ref = R.ohem_cross_entropy_loss(xr, y_drop, min_kept=min_kept, reduction=red)
        (gr,) = torch.autograd.grad((ref * _upstream(ref.shape)).sum(), xr)
        assert torch.isfinite(got).all() and got.shape == ref.shape
        assert torch.allclose(got, ref, rtol=1e-10, atol=1e-12), (red, got, ref)
        assert torch.allclose(ref_bad, ref, rtol=1e-12, atol=1e-12)  # the reference agrees
        if red == "mean":
            assert got > 0.1
        assert torch.isfinite(g).all() and g[0, :, 2, 2].abs().max() == 0
        assert_grad_close(g, gr, 1e-10)
    # OHEMBinaryLoss: a NaN logit (+inf is a finite q there)
    xb, yb = logits((2, 8), seed=42), torch.randint(0, 2, (2, 8), generator=_gen(43))
    xb[0, 3] = NAN
    yd = yb.clone()
    yd[0, 3] = 255
    binary = build_loss({"type": "OHEMBinaryLoss", "min_kept": min_kept, "backend": backend})
    got, g = _grad_of(binary, xb, yb)
    xr = torch.nan_to_num(xb).requires_grad_()
    ref = R.ohem_binary_loss(xr, yd, min_kept=min_kept)
    (gr,) = torch.autograd.grad(ref * _upstream(()), xr)
    assert_scalar_close(got, ref, 1e-10)
    assert_scalar_close(R.ohem_binary_loss(xb, yb, min_kept=min_kept), ref, 1e-12)
    assert_grad_close(g, gr, 1e-10)


def test_ohem_pixel_of_weight_zero_takes_no_part(backend):
    # a pixel of sample weight 0 is no candidate of the selection: its logits, NaN/inf
    # included, change neither the threshold, the kept count nor any gradient (rule 1)
    x, y = logits((2, C, 4, 5), seed=44), labels((2, 4, 5), seed=45)
    w = torch.rand(2, 4, 5, generator=_gen(46), dtype=torch.float64) + 0.5
    w[0, 1, 1] = w[1, 2, 3] = w[1, 0, 0] = 0
    bad = x.clone()
    bad[0, 2, 1, 1] = NAN
    bad[1, :, 2, 3] = INF
    y_drop = torch.where(w == 0, 255, y)
    for mk in (100000, 6):
        loss = build_loss({"type": "OHEMCrossEntropyLoss", "min_kept": mk, "backend": backend})
        none = R.ohem_cross_entropy_loss(x, y_drop, min_kept=mk, reduction="none")
        kept = (none != 0).sum()
        want = (none * w).sum() / kept
        got, g = _grad_of(loss, bad, y, weight=w)
        assert_scalar_close(got, want, 1e-10)
        assert torch.isfinite(g).all() and g[0, :, 1, 1].abs().max() == 0
        # the same finite value whatever the logits at the pixels of weight 0
        same, g2 = _grad_of(loss, x, y, weight=w)
        assert_scalar_close(same, want, 1e-10)
        assert_grad_close(g, g2, 1e-12)
        xr = x.clone().requires_grad_()
        ref = (R.ohem_cross_entropy_loss(xr, y_drop, min_kept=mk, reduction="none") * w).sum()
        (gr,) = torch.autograd.grad(ref / kept * _upstream(()), xr)
        assert_grad_close(g, gr, 1e-10)


def test_ohem_min_kept_range_is_named_at_build_time(backend):
    # an int beyond int64 was accepted and failed in the call with an OverflowError
    for cfg in ({"type": "OHEMCrossEntropyLoss"}, {"type": "OHEMBinaryLoss"}):
        with pytest.raises(ValueError, match=r"^min_kept: expected an int in \[0, 2\*\*63 - 1\]"):
            build_loss({**cfg, "min_kept": 2**70, "backend": backend})
        with pytest.raises(ValueError, match="min_kept"):
            build_loss({**cfg, "min_kept": 2**63, "backend": backend})
    x, y = logits((2, C, 3, 4), seed=47), labels((2, 3, 4), seed=48)
    big = build_loss({"type": "OHEMCrossEntropyLoss", "min_kept": 2**63 - 1, "backend": backend})
    assert_scalar_close(big(x, y), R.ohem_cross_entropy_loss(x, y, min_kept=2**63 - 1), 1e-10)


def _poison(x, where, value):
    bad = x.clone()
    bad[where] = value
    return bad


DICE_FAMILY = [
    ({"type": "DiceLoss"}, R.dice_loss),
    ({"type": "DiceLoss", "use_sigmoid": True, "exponent": 1.5},
     lambda a, t: R.dice_loss(a, t, use_sigmoid=True, exponent=1.5)),
    ({"type": "GeneralizedDiceLoss"}, R.generalized_dice_loss),
    ({"type": "BinaryDiceLoss"}, R.binary_dice_loss),
]  # fmt: skip


@pytest.mark.parametrize("case", range(len(DICE_FAMILY)))
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_dice_family_weight_zero_image_and_ignored_pixel_hide_non_finite_logits(backend, case,
                                                                                value):  # fmt: skip
    # spec 12.2 rule 1: an image of weight 0 (its logits replaced by 0) and an ignored pixel
    # (its logits replaced by 0 before the activation) add exactly 0 to the value and to every
    # gradient even when the logit there is NaN/inf; the value and the gradient are the
    # reference's on finite logits there (the gradient was NaN: 0 * NaN in the backward)
    cfg, ref_fn = DICE_FAMILY[case]
    binary = cfg["type"] == "BinaryDiceLoss"
    shape = (3, 1, 4, 5) if binary else (3, C, 4, 5)
    x = logits(shape, seed=50)
    y = (torch.randint(0, 2, (3, 4, 5), generator=_gen(51)) if binary
         else labels((3, 4, 5), seed=51, ignore=None))  # fmt: skip
    y[1, 2, 3] = 255
    bad = _poison(_poison(x, (0, 0, 1, 1), value), (1, 0, 2, 3), value)
    fine = _poison(_poison(x, (0, 0, 1, 1), 0.0), (1, 0, 2, 3), 0.0)
    w = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    loss = build_loss({**cfg, "backend": backend})
    for red in ("mean", "none"):
        got, g = _grad_of(loss, bad, y, reduction=red, weight=w)
        xr = fine.clone().requires_grad_()
        elem = ref_fn(xr, y) * w
        ref = elem.mean() if red == "mean" else elem
        (gr,) = torch.autograd.grad((ref * _upstream(ref.shape)).sum(), xr)
        assert torch.isfinite(got).all() and torch.allclose(got, ref, rtol=1e-10, atol=1e-12)
        assert torch.isfinite(g).all(), "NaN gradient"
        assert g[0].abs().max() == 0 and g[1, :, 2, 3].abs().max() == 0
        assert_grad_close(g, gr, 1e-10)


def test_dice_weight_zero_image_hides_a_non_finite_dense_target(backend):
    x = logits((2, C, 3, 4), seed=52)
    t = torch.nn.functional.one_hot(labels((2, 3, 4), seed=53, ignore=None), C)
    t = t.permute(0, 3, 1, 2).double()
    bad_t = _poison(t, (0, 1, 1, 1), NAN)
    bad_x = _poison(x, (0, 2, 0, 0), INF)
    w = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for cfg, ref_fn in DICE_FAMILY[:3]:
        loss = build_loss({**cfg, "backend": backend})
        got, g = _grad_of(loss, bad_x, bad_t, weight=w)
        xr = x.clone().requires_grad_()
        ref = (ref_fn(xr, t) * w).mean()
        (gr,) = torch.autograd.grad(ref * _upstream(()), xr)
        assert_scalar_close(got, ref, 1e-10)
        assert g[0].abs().max() == 0
        assert_grad_close(g, gr, 1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mass", [1e-25, 1e-40, 1e-3, 1e20])
def test_generalized_dice_tiny_or_huge_soft_class_mass(backend, dtype, mass):
    # w_c = 1/m_c^2 overflowed float32 for a mass below ~1e-19 and the loss was NaN (only an
    # absent class took the largest finite w); the weights are now scaled by the image's
    # smallest mass: the float64 reference's value on the same target
    x = logits((2, C, 4, 4), seed=54)
    t = torch.zeros(2, C, 4, 4, dtype=torch.float64)
    t[:, 0] = 1
    t[0, 1, 0, 0] = mass
    t[1, 2, 1:3, 1:3] = mass
    t[1, 0, 1:3, 1:3] = 0
    t = t.to(dtype).double()  # the mass as the dtype holds it (1e-40: a float32 subnormal)
    loss = build_loss({"type": "GeneralizedDiceLoss", "backend": backend})
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    xa = x.to(dtype).requires_grad_()
    got = loss(xa, t.to(dtype), reduction_override="none")
    xr = x.to(dtype).double().requires_grad_()
    ref = R.generalized_dice_loss(xr, t)
    assert torch.isfinite(got).all()
    assert torch.allclose(got.double(), ref, rtol=tol, atol=tol), (got, ref)
    up = _upstream(ref.shape)
    (g,) = torch.autograd.grad((got * up.to(got.dtype)).sum(), xa)
    (gr,) = torch.autograd.grad((ref * up).sum(), xr)
    assert torch.isfinite(g).all()
    if dtype == torch.float64 or mass > 1e-30:  # (1e-40: the gradient is a float32 subnormal)
        assert_grad_close(g, gr, tol)


@pytest.mark.parametrize("value", [NAN, INF])
def test_hd_weight_zero_pixel_and_ignored_pixel_hide_non_finite_logits(backend, value):
    # a pixel whose elements all have weight 0, and an ignored pixel, get logits 0 before the
    # formula (the argmax there is class 0, outside every predicted mask)
    x = logits((2, 3, 6, 7), seed=55)
    y = labels((2, 6, 7), high=3, seed=56, ignore=None)
    y[1, 4, 4] = 255
    w = torch.rand(2, 6, 7, generator=_gen(57), dtype=torch.float64) + 0.5
    w[0, 2, 3] = 0
    bad = _poison(_poison(x, (0, 1, 2, 3), value), (1, 2, 4, 4), value)
    fine = _poison(_poison(x, (0, slice(None), 2, 3), 0.0), (1, slice(None), 4, 4), 0.0)
    loss = build_loss({"type": "HDLoss", "backend": backend})
    got, g = _grad_of(loss, bad, y, weight=w, reduction="none")
    xr = fine.clone().requires_grad_()
    ref = R.hd_loss(xr, y) * w[:, None]
    (gr,) = torch.autograd.grad((ref * _upstream(ref.shape)).sum(), xr)
    assert torch.isfinite(got).all() and torch.allclose(got, ref, rtol=1e-10, atol=1e-12)
    assert g[0, :, 2, 3].abs().max() == 0 and g[1, :, 4, 4].abs().max() == 0
    assert_grad_close(g, gr, 1e-10)
