"""The registry's fused dense losses (docs/spec.md 12.4): the classification family and QFL/VFL,
on both backends (the triton one through the interpreter on CPU), against the literal float64
reference of ``fused_losses.reference.registry`` with SPEC 9.2's reduction rules."""

from __future__ import annotations

import pytest
import torch
from conftest import TOLERANCES, assert_grad_close, assert_scalar_close, build_loss
from fused_losses.reference.registry import classification as RC
from fused_losses.reference.registry import detection as RD
from fused_losses.reference.registry import utils as RU

CW = [1.0, 2.0, 0.5, 3.0, 1.5]
EPS32 = float(torch.finfo(torch.float32).eps)  # added to every "mean" denominator
C = len(CW)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def logits(shape, seed=0, dtype=torch.float64):
    return (torch.randn(shape, generator=_gen(seed), dtype=torch.float64) * 2).to(dtype)


def labels(shape, high, seed=1, ignore=True):
    y = torch.randint(0, high, shape, generator=_gen(seed))
    if ignore:
        y.view(-1)[:: max(y.numel() // 3, 1)] = -100
    return y


def probs(shape, seed=2):
    return torch.softmax(torch.randn(shape, generator=_gen(seed), dtype=torch.float64), 1)


def multi_hot(shape, seed=3):
    return (torch.rand(shape, generator=_gen(seed)) > 0.6).double()


def soft(shape, seed=4):
    return torch.rand(shape, generator=_gen(seed), dtype=torch.float64)


# name -> (config, reference, target maker(x shape), pred maker or None)
CASES = {
    "CE": ({"type": "CrossEntropyLoss"}, RC.cross_entropy,
           lambda s: labels((s[0], *s[2:]), s[1])),
    "CE[smooth,cw]": (
        {"type": "CrossEntropyLoss", "label_smoothing": 0.2, "class_weight": CW},
        lambda x, y: RC.cross_entropy(x, y, label_smoothing=0.2, class_weight=CW),
        lambda s: labels((s[0], *s[2:]), s[1])),
    "CE[no ignore]": ({"type": "CrossEntropyLoss", "ignore_index": None},
                      lambda x, y: RC.cross_entropy(x, y, ignore_index=None),
                      lambda s: labels((s[0], *s[2:]), s[1], ignore=False)),
    "LabelSmooth": ({"type": "LabelSmoothLoss", "smoothing": 0.3, "class_weight": CW},
                    lambda x, y: RC.label_smooth_loss(x, y, smoothing=0.3, class_weight=CW),
                    lambda s: labels((s[0], *s[2:]), s[1])),
    "SoftCE": ({"type": "SoftCrossEntropyLoss", "class_weight": CW},
               lambda x, y: RC.soft_cross_entropy(x, y, class_weight=CW), probs),
    "BCE[dense,pw]": (
        {"type": "BinaryCrossEntropyLoss", "pos_weight": [1.0, 2.0, 3.0, 0.5, 1.0]},
        lambda x, y: RC.binary_cross_entropy(x, y, pos_weight=[1.0, 2.0, 3.0, 0.5, 1.0]),
        lambda s: torch.where(torch.rand(s, generator=_gen(7)) < 0.1, -100.0, multi_hot(s))),
    "BCE[index,cw]": ({"type": "BinaryCrossEntropyLoss", "class_weight": CW, "pos_weight": 2.0},
                      lambda x, y: RC.binary_cross_entropy(x, y, class_weight=CW, pos_weight=2.0),
                      lambda s: labels((s[0], *s[2:]), s[1])),
    "BCE[probs]": ({"type": "BinaryCrossEntropyLoss", "with_logits": False},
                   lambda x, y: RC.binary_cross_entropy(x, y, with_logits=False), soft),
    "CE[use_sigmoid]": ({"type": "CrossEntropyLoss", "use_sigmoid": True, "class_weight": CW},
                        lambda x, y: RC.binary_cross_entropy(x, y, pos_weight=CW), multi_hot),
    "Focal[sigmoid,index]": (
        {"type": "FocalLoss", "class_weight": CW, "alpha": [0.1, 0.2, 0.3, 0.4, 0.5]},
        lambda x, y: RC.focal_loss(x, y, class_weight=CW, alpha=[0.1, 0.2, 0.3, 0.4, 0.5]),
        lambda s: labels((s[0], *s[2:]), s[1] + 1)),
    "Focal[sigmoid,soft]": ({"type": "FocalLoss", "gamma": 1.5},
                            lambda x, y: RC.focal_loss(x, y, gamma=1.5), soft),
    "Focal[softmax,index]": (
        {"type": "FocalLoss", "use_sigmoid": False, "gamma": 0.5, "class_weight": CW},
        lambda x, y: RC.focal_loss(x, y, use_sigmoid=False, gamma=0.5, class_weight=CW),
        lambda s: labels((s[0], *s[2:]), s[1])),
    "Focal[softmax,soft]": ({"type": "FocalLoss", "use_sigmoid": False, "alpha": CW},
                            lambda x, y: RC.focal_loss(x, y, use_sigmoid=False, alpha=CW), probs),
    "MultiLabelFocal": ({"type": "MultiLabelFocalLoss", "class_weight": CW, "gamma": 3.0},
                        lambda x, y: RC.multi_label_focal_loss(x, y, class_weight=CW, gamma=3.0),
                        soft),
    "ASL": ({"type": "AsymmetricLoss"}, RC.asymmetric_loss, multi_hot),
    "ASL[grad focal,soft]": (
        {"type": "AsymmetricLossOptimized", "disable_torch_grad_focal_loss": False, "clip": 0.1},
        lambda x, y: RC.asymmetric_loss(x, y, disable_torch_grad_focal=False, clip=0.1), soft),
    "QFL[labels,scores]": (
        {"type": "QualityFocalLoss"}, None,
        lambda s: (labels((s[0], *s[2:]), s[1] + 1, ignore=False),
                   soft((s[0], *s[2:])))),
    "QFL[dense]": ({"type": "QualityFocalLoss", "beta": 1.5},
                   lambda x, q: RD.quality_focal_loss(x, q, beta=1.5),
                   lambda s: soft(s) * multi_hot(s)),
    "VFL": ({"type": "VarifocalLoss"}, RD.varifocal_loss, lambda s: soft(s) * multi_hot(s)),
    "VFL[no iou weight]": ({"type": "VariFocalLoss", "iou_weighted": False, "gamma": 1.0},
                           lambda x, q: RD.varifocal_loss(x, q, iou_weighted=False, gamma=1.0),
                           lambda s: soft(s) * multi_hot(s)),
}  # fmt: skip
SHAPES = {"NC": (7, C), "NCHW": (2, C, 3, 4)}


def _lv(out):
    """(l, None, v): the reference's (l, v) as reduce_with_validity's arguments."""
    return out[0], None, out[1]


def reference(case, x, target):
    fn = CASES[case][1]
    if case == "QFL[labels,scores]":
        return RD.quality_focal_loss(x, target), None
    out = fn(x, target)
    return out if isinstance(out, tuple) else (out, None)


CALLS = {
    "mean": {},
    "none": {"reduction_override": "none"},
    "sum": {"reduction_override": "sum"},
    "avg_factor": {"avg_factor": 4.0},
    "weight": {"weight": "sample"},
}


def _weight(lshape, x_shape, seed=9):
    """A weight without the class axis for [N,C,*] losses (mmdet's [N]), else of l's shape;
    a third of it zero."""
    shape = (x_shape[0], *x_shape[2:]) if len(lshape) == len(x_shape) else lshape
    w = torch.rand(shape, generator=_gen(seed), dtype=torch.float64)
    w.view(-1)[::3] = 0
    return w


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_reference(case, shape, call, backend):
    cfg, _, make_target = CASES[case]
    xs = SHAPES[shape]
    x0 = logits(xs)
    if "probs" in case:
        x0 = torch.sigmoid(x0)
    target = make_target(xs)
    xr = x0.clone().requires_grad_()
    elem, valid = reference(case, xr, target)
    kw = dict(CALLS[call])
    if kw.get("weight") == "sample":
        kw["weight"] = _weight(elem.shape, xs)
    loss = build_loss({**cfg, "backend": backend, "loss_weight": 0.5})
    if "avg_factor" in kw and loss.reduction == "sum":  # ASL's default
        kw["reduction_override"] = "mean"
    ref = 0.5 * RU.reduce_with_validity(
        elem, kw.get("weight"), valid, kw.get("reduction_override", loss.reduction),
        kw.get("avg_factor"),
    )  # fmt: skip
    x = x0.clone().requires_grad_()
    got = loss(x, target, **kw)
    assert got.shape == ref.shape and got.dtype == torch.float64
    g = torch.randn(ref.shape, generator=_gen(5), dtype=torch.float64)
    (g_got,) = torch.autograd.grad(got, x, g)
    (g_ref,) = torch.autograd.grad(ref, xr, g)
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-12), (got, ref)
    assert_grad_close(g_got, g_ref, 1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["CE[smooth,cw]", "Focal[sigmoid,index]", "ASL", "QFL[dense]",
                                  "Focal[softmax,index]"])  # fmt: skip
def test_low_precision(case, dtype, backend):
    cfg, _, make_target = CASES[case]
    xs = (3, C, 4, 5)
    x64 = logits(xs)
    target = make_target(xs)
    xr = x64.clone().requires_grad_()
    elem, valid = reference(case, xr, target)
    loss = build_loss({**cfg, "backend": backend})
    ref = RU.reduce_with_validity(elem, None, valid, loss.reduction)
    x = x64.to(dtype).requires_grad_()
    got = loss(x, target)
    assert got.dtype == torch.float32
    (g,) = torch.autograd.grad(got, x)
    assert g.dtype == dtype
    # the reference at the rounded logits
    xq = x64.to(dtype).double().requires_grad_()
    eq, vq = reference(case, xq, target)
    refq = RU.reduce_with_validity(eq, None, vq, loss.reduction)
    (g_ref,) = torch.autograd.grad(refq, xq)
    loss_tol, grad_tol = TOLERANCES[dtype]
    assert_scalar_close(got, refq, max(loss_tol, 1e-5))
    assert_grad_close(g.double(), g_ref, grad_tol)
    assert torch.isfinite(ref)


@pytest.mark.parametrize("c", [3, 80, 1500])
def test_many_classes_and_chunks(c, backend):
    """Classes beyond one chunk (64 on maps, 1024 on [N, C]): the online log-sum-exp."""
    shape = (2, c, 2, 3) if c <= 80 else (3, c)
    x0 = logits(shape, seed=11) * 3
    y = labels((shape[0], *shape[2:]), c, seed=12)
    for cfg, ref_fn in [
        ({"type": "CrossEntropyLoss", "label_smoothing": 0.1},
         lambda a: RC.cross_entropy(a, y, label_smoothing=0.1)),
        ({"type": "FocalLoss"}, lambda a: RC.focal_loss(a, y)),
    ]:  # fmt: skip
        x = x0.clone().requires_grad_()
        got = build_loss({**cfg, "backend": backend})(x, y)
        xr = x0.clone().requires_grad_()
        elem, v = ref_fn(xr)
        ref = RU.reduce_with_validity(elem, None, v)
        assert_scalar_close(got, ref, 1e-10)
        assert_grad_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(ref, xr)[0], 1e-9)


def test_non_contiguous_logits(backend):
    x0 = logits((2, 4, 6, C)).permute(0, 3, 1, 2)  # [N,C,H,W] with the class axis innermost
    y = labels((2, 4, 6), C)
    x = x0.clone().requires_grad_()
    got = build_loss({"type": "CrossEntropyLoss", "backend": backend})(x, y)
    xr = x0.contiguous().requires_grad_()
    ref = RU.reduce_with_validity(*_lv(RC.cross_entropy(xr, y)))
    assert_scalar_close(got, ref, 1e-12)
    assert_grad_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(ref, xr)[0], 1e-10)


@pytest.mark.parametrize("name", ["CrossEntropyLoss", "FocalLoss", "BinaryCrossEntropyLoss"])
def test_all_ignored_is_zero_not_nan(name, backend):
    x = logits((2, C, 3)).requires_grad_()
    y = torch.full((2, 3), 255)
    loss = build_loss({"type": name, "ignore_index": 255, "backend": backend})
    out = loss(x, y)
    (g,) = torch.autograd.grad(out, x)
    assert out.item() == 0.0 and torch.count_nonzero(g) == 0
    assert loss(x, y, reduction_override="none").abs().sum() == 0


def test_ignore_index_per_call_and_empty_batch(backend):
    x0 = logits((4, C))
    y = torch.tensor([0, 1, 2, 3])
    loss = build_loss({"type": "CrossEntropyLoss", "backend": backend})
    got = loss(x0, y, ignore_index=2)
    ref = RU.reduce_with_validity(*_lv(RC.cross_entropy(x0, y, ignore_index=2)))
    assert_scalar_close(got, ref, 1e-12)
    assert_scalar_close(loss(x0, y, ignore_index=None),
                        torch.nn.functional.cross_entropy(x0, y), 1e-12)  # fmt: skip
    empty = logits((0, C)).requires_grad_()
    out = loss(empty, torch.zeros(0, dtype=torch.long))
    assert out.item() == 0.0
    out.backward()
    assert empty.grad.shape == (0, C)


def test_zero_weight_hides_non_finite_logits(backend):
    x = logits((3, C)).clone()
    x[1, 2] = float("nan")
    x.requires_grad_()
    w = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    y = torch.tensor([0, 1, 4])
    out = build_loss({"type": "CrossEntropyLoss", "backend": backend})(x, y, weight=w)
    (g,) = torch.autograd.grad(out, x)
    assert torch.isfinite(out) and torch.isfinite(g).all() and (g[1] == 0).all()


def test_matches_torch_and_torchvision():
    x = logits((6, C, 5)).float()
    y = torch.randint(0, C, (6, 5), generator=_gen(3))
    y[0, 0] = -100
    for backend in ("torch", "triton"):
        ce = build_loss({"type": "CrossEntropyLoss", "label_smoothing": 0.1, "backend": backend})
        ref = torch.nn.functional.cross_entropy(x, y, label_smoothing=0.1)
        assert_scalar_close(ce(x, y), ref, 1e-5)
        t = soft((6, C, 5)).float()
        fl = build_loss({"type": "MultiLabelFocalLoss", "backend": backend})
        from fused_losses.registry.utils import sigmoid_focal_loss

        assert_scalar_close(fl(x, t), sigmoid_focal_loss(x, t, reduction="mean"), 1e-5)


def test_double_backward_refused(backend):
    x = logits((3, C)).requires_grad_()
    out = build_loss({"type": "CrossEntropyLoss", "backend": backend})(x, torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out, x, create_graph=True)


def test_traces_fullgraph(backend):
    loss = build_loss({"type": "FocalLoss", "backend": backend})
    x = logits((4, C, 3)).float().requires_grad_()
    y = labels((4, 3), C + 1)
    torch._dynamo.reset()
    fn = torch.compile(lambda a, b: loss(a, b, avg_factor=torch.tensor(2.0)), fullgraph=True,
                       backend="eager")  # fmt: skip
    got = fn(x, y)
    ref = loss(x, y, avg_factor=2.0)
    assert_scalar_close(got, ref, 1e-6)
    assert_grad_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(ref, x)[0], 1e-6)


# ----------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("cfg", "args", "match"),
    [
        ({"type": "CrossEntropyLoss"}, ((4, C), (4, 2)), "target"),
        ({"type": "CrossEntropyLoss"}, ((4, C), "float"), "integer class indices"),
        ({"type": "CrossEntropyLoss", "class_weight": [1.0, 2.0]}, ((4, C), (4,)), "class_weight"),
        ({"type": "FocalLoss", "alpha": [0.1, 0.2]}, ((4, C), (4,)), "alpha"),
        ({"type": "SoftCrossEntropyLoss"}, ((4, C), (4, C + 1)), "target"),
        ({"type": "LabelSmoothLoss", "num_classes": 3}, ((4, C), (4,)), "num_classes"),
        ({"type": "BinaryFocalLoss"}, ((4, 2, 3), (4, 3)), "target"),
        ({"type": "CrossEntropyLoss"}, ((4,), (4,)), "pred"),
    ],
)  # fmt: skip
def test_bad_input_is_named(cfg, args, match):
    xs, ys = args
    x = logits(xs)
    y = logits(xs).abs() if ys == "float" else torch.zeros(ys, dtype=torch.long)
    if cfg["type"] == "SoftCrossEntropyLoss":
        y = y.double()
    with pytest.raises((ValueError, TypeError), match=match):
        build_loss(cfg)(x, y)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"type": "CrossEntropyLoss", "use_mask": True}, "use_mask"),
        ({"type": "CrossEntropyLoss", "label_smoothing": 1.5}, "label_smoothing"),
        ({"type": "CrossEntropyLoss", "use_sigmoid": True, "label_smoothing": 0.1},
         "label_smoothing"),
        ({"type": "FocalLoss", "gamma": -1}, "gamma"),
        ({"type": "AsymmetricLoss", "disable_torch_grad_focal": True,
          "disable_torch_grad_focal_loss": True}, "disable_torch_grad_focal"),
        ({"type": "QualityFocalLoss", "use_sigmoid": False}, "use_sigmoid"),
        ({"type": "MultiLabelFocalLoss", "ignore_index": 3}, "ignore_index"),
        ({"type": "CrossEntropyLoss", "class_weight": 2.0}, "class_weight"),
    ],
)  # fmt: skip
def test_bad_options_are_named(cfg, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build_loss(cfg)


@pytest.mark.parametrize("shape_kind", ["full", "no_class_axis", "broadcast_class", "scalar"])
def test_weight_shapes(shape_kind, backend):
    """A weight of l's shape, of that shape without the class axis, or broadcastable."""
    xs = (3, C, 4)
    x0 = logits(xs)
    y = multi_hot(xs)
    w = {
        "full": torch.rand(xs, generator=_gen(1), dtype=torch.float64),
        "no_class_axis": torch.rand(3, 4, generator=_gen(2), dtype=torch.float64),
        "broadcast_class": torch.rand(1, C, 1, generator=_gen(3), dtype=torch.float64),
        "scalar": torch.tensor(0.7, dtype=torch.float64),
    }[shape_kind]
    x = x0.clone().requires_grad_()
    got = build_loss({"type": "BinaryCrossEntropyLoss", "backend": backend})(x, y, weight=w)
    xr = x0.clone().requires_grad_()
    elem, v = RC.binary_cross_entropy(xr, y)
    ref = RU.reduce_with_validity(elem, w, v)
    assert_scalar_close(got, ref, 1e-12)
    assert_grad_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(ref, xr)[0], 1e-10)
    with pytest.raises(ValueError, match="weight"):
        build_loss({"type": "BinaryCrossEntropyLoss"})(x0, y, weight=torch.ones(2, 3))


def test_masked_classes_minus_inf(backend):
    """-inf logits (masked classes), also filling a whole first class chunk (8 on maps): finite,
    as F.cross_entropy."""
    x0 = logits((2, 12, 3, 4))
    x0[:, :8] = float("-inf")
    y = 8 + torch.randint(0, 4, (2, 3, 4), generator=_gen(1))
    x = x0.clone().requires_grad_()
    got = build_loss({"type": "CrossEntropyLoss", "backend": backend})(x, y)
    xr = x0.clone().requires_grad_()
    ref = torch.nn.functional.cross_entropy(xr, y, reduction="sum") / (y.numel() + EPS32)
    assert_scalar_close(got, ref, 1e-12)
    (g,) = torch.autograd.grad(got, x)
    assert_grad_close(g, torch.autograd.grad(ref, xr)[0], 1e-10)
    focal = build_loss({"type": "FocalLoss", "use_sigmoid": False, "backend": backend})
    elem, v = RC.focal_loss(x0, y, use_sigmoid=False)
    # (both take log(1 - p_y) without cancellation: log1p(-p_y), log(-expm1(log p_y)))
    assert_scalar_close(focal(x0, y), RU.reduce_with_validity(elem, None, v), 1e-12)


@pytest.mark.parametrize(
    "cfg",
    [
        {"type": "MultiLabelFocalLoss", "gamma": 0.0},
        {"type": "MultiLabelFocalLoss", "gamma": 0.3},
        {"type": "AsymmetricLoss", "gamma_pos": 0.0, "gamma_neg": 0.5,
         "disable_torch_grad_focal": False},
        {"type": "QualityFocalLoss", "beta": 0.0},
        {"type": "FocalLoss", "use_sigmoid": False, "gamma": 0.2},
    ],
)  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_saturated_logits_have_finite_gradients(cfg, dtype, backend):
    """Logits of +-100 (float32) and +-740 (float64: sig(-x) subnormal): no 0 * inf."""
    big = 740.0 if dtype == torch.float64 else 100.0
    x = torch.tensor([[big, -big, 3.0], [-big, big, -2.0]], dtype=dtype)
    if cfg["type"] == "FocalLoss":
        y = torch.tensor([0, 1])
    else:
        y = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]], dtype=dtype)
    x.requires_grad_()
    out = build_loss({**cfg, "backend": backend})(x, y)
    (g,) = torch.autograd.grad(out, x)
    assert torch.isfinite(out) and torch.isfinite(g).all(), (out, g)


@pytest.mark.parametrize("name", ["CrossEntropyLoss", "FocalLoss"])
def test_empty_maps(name, backend):
    x = logits((0, 3, 4, 4)).requires_grad_()
    loss = build_loss({"type": name, "backend": backend})
    out = loss(x, torch.zeros(0, 4, 4, dtype=torch.long))
    out.backward()
    assert out.item() == 0.0 and x.grad.shape == x.shape
    assert loss(x, torch.zeros(0, 4, 4, dtype=torch.long), reduction_override="none").numel() == 0


# ------------------------------------------------------------------------- knowledge distillation

from fused_losses.reference.registry import distillation as RK  # noqa: E402


@pytest.mark.parametrize("call", ["batchmean", "mean", "none", "sum", "weight"])
@pytest.mark.parametrize("shape", [(6, C), (2, C, 3, 4), (2, 20, 3, 4)])
def test_knowledge_distillation_matches_the_reference(shape, call, backend):
    s0, t = logits(shape, seed=21), logits(shape, seed=22)
    t[0, 0] = float("-inf")  # a class the teacher rules out (Q = 0: a 0 term)
    kw = {"weight": _weight(shape[:1] + shape[2:], shape)} if call == "weight" else {}
    if call not in ("batchmean", "weight"):
        kw["reduction_override"] = call
    loss = build_loss({"type": "KDLoss", "tau": 2.0, "backend": backend})
    s = s0.clone().requires_grad_()
    got = loss(s, t, **kw)
    sr = s0.clone().requires_grad_()
    elem = RK.knowledge_distillation_loss(sr, t, temperature=2.0)
    ref = RU.reduce_with_validity(elem, kw.get("weight"), None,
                                  kw.get("reduction_override", "batchmean"))  # fmt: skip
    g = torch.randn(ref.shape, generator=_gen(5), dtype=torch.float64)
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-12), (got, ref)
    assert_grad_close(torch.autograd.grad(got, s, g)[0], torch.autograd.grad(ref, sr, g)[0], 1e-9)


def test_knowledge_distillation_options():
    loss = build_loss({"type": "KnowledgeDistillationLoss"})
    assert loss.reduction == "batchmean" and loss.options["temperature"] == 4.0
    with pytest.raises(ValueError, match="tau"):
        build_loss({"type": "KDLoss", "tau": 2.0, "temperature": 3.0})
    with pytest.raises(ValueError, match="temperature"):
        build_loss({"type": "KDLoss", "temperature": 0.0})
    with pytest.raises(ValueError, match="target"):
        loss(logits((2, C)), logits((2, C + 1)))


# ------------------------------------------------------------- KD: every temperature (float32)


def _kd_reference(s, t, temp):
    """The "batchmean" of the float64 reference (accurate for T <= 100)."""
    return RU.reduce_with_validity(RK.knowledge_distillation_loss(s, t, temperature=temp), None,
                                   None, "batchmean")  # fmt: skip


def _kd_cumulants(s, t, temp, dim=1):
    """T^2 KL(Q||P) summed over ``dim`` for a large T, in closed form: T^2 log E_Q[exp(-Dc/T)]
    = k2/2 - k3/(6T) + k4/(24T^2) + O(T^-3) (the cumulants k of Dc = D - E_Q[D], D = t - s,
    under Q = softmax(t/T)), in float64; differentiable in s. T -> inf: Var_uniform(t - s)/2."""
    s, t = s.double(), t.double()
    q = torch.softmax(t / temp, dim)
    d = t - s
    dc = d - (q * d).sum(dim, keepdim=True)
    k2 = (q * dc**2).sum(dim)
    k3 = (q * dc**3).sum(dim)
    k4 = (q * dc**4).sum(dim) - 3 * k2**2
    return k2 / 2 - k3 / (6 * temp) + k4 / (24 * temp * temp)


@pytest.mark.parametrize("temp", [0.05, 1.0, 4.0, 20.0, 100.0])
@pytest.mark.parametrize("shape", [(8, 10), (2, 20, 3, 4), (3, 1500)])
def test_knowledge_distillation_float32_at_every_temperature(temp, shape, backend):
    """float32 within spec 6's 1e-5 of the float64 reference, value and gradient: T^2 KL is not
    formed as a difference of log-sum-exps (cancelling from T ~ 20: 4.6e-5 at T = 20, 3.7e-4 at
    T = 100 before). Several class chunks on the map and on [3, 1500] (the second walk)."""
    g = _gen(31)
    s0 = torch.randn(shape, generator=g)
    t = torch.randn(shape, generator=g)
    s = s0.clone().requires_grad_()
    got = build_loss({"type": "KDLoss", "temperature": temp, "backend": backend})(s, t)
    sr = s0.double().requires_grad_()
    ref = _kd_reference(sr, t.double(), temp)
    assert_scalar_close(got, ref, 1e-5)
    assert_grad_close(torch.autograd.grad(got, s)[0], torch.autograd.grad(ref, sr)[0], 1e-5)


@pytest.mark.parametrize("temp", [1e6, 1e30])
@pytest.mark.parametrize("shape", [(4, 3), (2, 20, 3, 4)])
def test_knowledge_distillation_huge_temperature_has_its_limit(temp, shape, backend):
    """T = 1e6 gave 19869.8 (torch) and -59604.6 (triton) for s, t = 3 randn(4, 3) (reference
    3.10), T = 1e30 NaN (T^2 overflowed, inf * 0): now the closed form, finite gradients."""
    g = _gen(32)
    s0 = torch.randn(shape, generator=g) * 3
    t = torch.randn(shape, generator=g) * 3
    s = s0.clone().requires_grad_()
    loss = build_loss({"type": "KDLoss", "temperature": temp, "backend": backend})
    got = loss(s, t)
    (g_got,) = torch.autograd.grad(got, s)
    sr = s0.double().requires_grad_()
    ref = _kd_cumulants(sr, t, temp).sum() / shape[0]
    (g_ref,) = torch.autograd.grad(ref, sr)
    assert_scalar_close(got, ref, 1e-5)
    assert_grad_close(g_got, g_ref, 1e-5)
    # the limit itself: half the population variance of t - s over the classes
    limit = (t - s0).double().var(1, unbiased=False).sum() / 2 / shape[0]
    assert_scalar_close(got, limit, 1e-4 if temp < 1e10 else 1e-6)


def test_knowledge_distillation_masked_teacher_classes_at_large_temperatures(backend):
    """A teacher -inf (Q = 0) at T = 1e3: the student's mass there still counts (the term from
    its logarithm), no 0 * inf; [2, 12] with two masked classes per row."""
    g = _gen(33)
    s0 = torch.randn(2, 12, generator=g)
    t = torch.randn(2, 12, generator=g)
    t[:, 3] = t[:, 7] = float("-inf")
    for temp in (1.0, 30.0, 1e3):
        s = s0.clone().requires_grad_()
        got = build_loss({"type": "KDLoss", "temperature": temp, "backend": backend})(s, t)
        sr = s0.double().requires_grad_()
        # the float64 reference is exact enough here (KL does not vanish: Q has no mass there)
        ref = _kd_reference(sr, t.double(), temp)
        assert_scalar_close(got, ref, 1e-5)
        assert_grad_close(torch.autograd.grad(got, s)[0], torch.autograd.grad(ref, sr)[0], 1e-5)


def test_kl_div_tempered_helper():
    """``registry.dense.kl_div_tempered``: T^2 KL per row, robust, differentiable in both inputs
    (autograd, double backward included): DKD's KL terms can use it."""
    from fused_losses.registry.dense import kl_div_tempered

    g = _gen(34)
    s0 = torch.randn(6, 9, generator=g) * 2
    t0 = torch.randn(6, 9, generator=g) * 2
    for temp in (0.5, 4.0, 50.0, 1e6, 1e30):
        s = s0.clone().requires_grad_()
        t = t0.clone().requires_grad_()
        got = kl_div_tempered(s, t, temp)
        assert got.shape == (6,) and got.dtype == torch.float32
        sr = s0.double().requires_grad_()
        tr = t0.double().requires_grad_()
        if temp <= 100:  # the textbook formula in float64 (the reference detaches t)
            log_q = torch.log_softmax(tr / temp, 1)
            ref = temp**2 * (log_q.exp() * (log_q - torch.log_softmax(sr / temp, 1))).sum(1)
        else:
            ref = _kd_cumulants(sr, tr, temp)
        assert torch.allclose(got.double(), ref, rtol=1e-5, atol=0), (temp, got, ref)
        w = torch.rand(6, generator=g)
        gs, gt = torch.autograd.grad((got * w).sum(), (s, t))
        gs_ref, gt_ref = torch.autograd.grad((ref * w.double()).sum(), (sr, tr))
        assert_grad_close(gs, gs_ref, 1e-5)
        assert_grad_close(gt, gt_ref, 1e-5)
    # float64 in, float64 out, and the map layout (dim 1 of [N, C, H, W])
    s64 = logits((2, C, 3, 4), seed=35).requires_grad_()
    t64 = logits((2, C, 3, 4), seed=36)
    got = kl_div_tempered(s64, t64, 2.0)
    ref = RK.knowledge_distillation_loss(s64, t64, temperature=2.0)
    assert got.dtype == torch.float64 and torch.allclose(got, ref, rtol=1e-10, atol=1e-12)
    # double backward through plain tensor ops
    (gs,) = torch.autograd.grad(got.sum(), s64, create_graph=True)
    (gg,) = torch.autograd.grad((gs**2).sum(), s64)
    (gs_r,) = torch.autograd.grad(ref.sum(), s64, create_graph=True)
    (gg_r,) = torch.autograd.grad((gs_r**2).sum(), s64)
    assert_grad_close(gg, gg_r, 1e-8)
    with pytest.raises(ValueError, match="temperature"):
        kl_div_tempered(s0, t0, 0.0)
    with pytest.raises(ValueError, match="teacher_logits"):
        kl_div_tempered(s0, t0[:, :3], 1.0)


# ----------------------------------------------------------------------- audit regressions


DENSE = {
    "CrossEntropyLoss": ({"type": "CrossEntropyLoss"}, "index"),
    "LabelSmoothLoss": ({"type": "LabelSmoothLoss"}, "index"),
    "SoftCrossEntropyLoss": ({"type": "SoftCrossEntropyLoss"}, "dense"),
    "BCE[index]": ({"type": "BinaryCrossEntropyLoss"}, "index"),
    "BCE[dense]": ({"type": "BinaryCrossEntropyLoss"}, "dense"),
    "Focal[sigmoid]": ({"type": "FocalLoss"}, "index"),
    "Focal[softmax]": ({"type": "FocalLoss", "use_sigmoid": False}, "index"),
    "Focal[dense]": ({"type": "FocalLoss"}, "dense"),
    "BinaryFocalLoss": ({"type": "BinaryFocalLoss"}, "dense"),
    "MultiLabelFocalLoss": ({"type": "MultiLabelFocalLoss"}, "dense"),
    "AsymmetricLoss": ({"type": "AsymmetricLoss"}, "dense"),
    "QFL[labels]": ({"type": "QualityFocalLoss"}, "scores"),
    "QFL[dense]": ({"type": "QualityFocalLoss"}, "dense"),
    "VFL": ({"type": "VariFocalLoss"}, "dense"),
    "KD": ({"type": "KDLoss"}, "dense"),
}


def _target(kind, shape, dtype=torch.float32):
    rest = (shape[0], *shape[2:])
    if kind == "index":
        return torch.zeros(rest, dtype=torch.long)
    if kind == "scores":
        return torch.zeros(rest, dtype=torch.long), torch.rand(rest, generator=_gen(1))
    return torch.rand(shape, generator=_gen(2)).to(dtype)


@pytest.mark.parametrize("name", [k for k in DENSE if k != "BinaryFocalLoss"])
def test_no_classes_is_named(name, backend):
    """C = 0 logits: the triton backend returned uninitialised memory (torch an index error)."""
    cfg, kind = DENSE[name]
    x = torch.randn(3, 0)
    loss = build_loss({**cfg, "backend": backend})
    for red in ("none", "mean"):
        with pytest.raises(ValueError, match=r"pred: expected C >= 1"):
            loss(x, _target(kind, x.shape), reduction_override=red)


@pytest.mark.parametrize("name", list(DENSE))
def test_complex_targets_are_named(name, backend):
    """A complex target (BinaryFocalLoss: a KeyError inside the triton launch, the imaginary
    part silently dropped by torch) is a TypeError naming target, on every dense loss."""
    cfg, kind = DENSE[name]
    x = torch.randn(4, 3, 2)
    t = _target(kind, x.shape)
    if kind == "scores":
        t = (t[0], t[1].to(torch.complex64))
    elif kind == "index":
        t = t.to(torch.complex64)
    else:
        t = t.to(torch.complex64)
    with pytest.raises(TypeError, match="target"):
        build_loss({**cfg, "backend": backend})(x, t)


@pytest.mark.parametrize("value", [2**64, 2**70, -(2**63) - 1])
def test_ignore_index_outside_int64_is_named(value, backend):
    """OverflowError before (Python's, or the triton launch's); int64's ends are accepted."""
    x = logits((4, C)).float()
    y = torch.tensor([0, 1, 2, 3])
    for name in ("CrossEntropyLoss", "FocalLoss", "BinaryCrossEntropyLoss"):
        with pytest.raises(ValueError, match=r"ignore_index: .*int64"):
            build_loss({"type": name, "ignore_index": value, "backend": backend})
        with pytest.raises(ValueError, match=r"ignore_index: .*int64"):
            build_loss({"type": name, "backend": backend})(x, y, ignore_index=value)
    xm, ym = logits((2, 3, 4, 4)).float(), torch.randint(0, 3, (2, 4, 4), generator=_gen(3))
    with pytest.raises(ValueError, match=r"ignore_index: .*int64"):
        build_loss({"type": "DiceLoss", "backend": backend})(xm, ym, ignore_index=value)
    with pytest.raises(ValueError, match=r"ignore_index: .*int64"):
        build_loss({"type": "DiceLoss", "ignore_index": value})
    for ok in (2**63 - 1, -(2**63)):
        loss = build_loss({"type": "CrossEntropyLoss", "ignore_index": ok, "backend": backend})
        ref = RU.reduce_with_validity(*_lv(RC.cross_entropy(x.double(), y, ignore_index=ok)))
        assert_scalar_close(loss(x, y), ref, 1e-5)


@pytest.mark.parametrize(
    ("cfg", "key", "values", "kind"),
    [
        ({"type": "CrossEntropyLoss"}, "label_smoothing", (0.1, 0.2, 0.3), "index"),
        ({"type": "KDLoss"}, "temperature", (2.0, 3.0, 5.0), "dense"),
        ({"type": "FocalLoss"}, "gamma", (2.0, 1.5, 0.5), "index"),
    ],
)  # fmt: skip
def test_compiled_step_follows_an_option_that_changes(cfg, key, values, kind, backend):
    """One compiled step called with losses whose float option differs: Dynamo recompiles with
    a symbolic float, which the triton backend's kernel_ops sorted and encoded ("sort with
    non-constant keys"). Each value must give its own eager result (none baked as the first)."""
    x0 = logits((2, 3, 4, 4), seed=41).float()
    y = torch.randint(0, 3, (2, 4, 4), generator=_gen(42)) if kind == "index" else \
        logits((2, 3, 4, 4), seed=43).float()  # fmt: skip
    torch._dynamo.reset()
    step = torch.compile(lambda loss, a, b: loss(a, b), fullgraph=True, backend="eager")
    seen = []
    for v in values:
        loss = build_loss({**cfg, key: v, "backend": backend})
        a, b = x0.clone().requires_grad_(), x0.clone().requires_grad_()
        got, ref = step(loss, a, y), loss(b, y)
        (g_got,), (g_ref,) = torch.autograd.grad(got, a), torch.autograd.grad(ref, b)
        assert torch.allclose(got, ref, rtol=1e-6, atol=0), (v, got, ref)
        assert torch.allclose(g_got, g_ref, rtol=1e-6, atol=1e-8), v
        seen.append(got.item())
    assert len(set(seen)) == len(values), seen  # each value its own result
    # a call's int option (ignore_index) that changes between calls, likewise
    if kind == "index":
        loss = build_loss({**cfg, "backend": backend})
        step2 = torch.compile(lambda a, b, ig: loss(a, b, ignore_index=ig), fullgraph=True,
                              backend="eager")  # fmt: skip
        for ig in (0, 1, 2):
            assert torch.allclose(step2(x0, y, ig), loss(x0, y, ignore_index=ig), rtol=1e-6)


def test_avg_factor_is_checked(backend):
    """avg_factor: a [2] tensor gave a [2]-shaped "loss"; "3" and True were taken; now a number
    or a one-element real tensor (0-dim result), in a call and in the config."""
    x = logits((4, C)).float()
    y = torch.tensor([0, 1, 2, 3])
    loss = build_loss({"type": "CrossEntropyLoss", "backend": backend})
    total = RC.cross_entropy(x.double(), y)[0].sum()
    for bad, err in [(torch.tensor([2.0, 3.0]), ValueError), ("3", TypeError),
                     (True, TypeError), ("abc", TypeError), (float("nan"), ValueError),
                     (torch.tensor(True), TypeError), (torch.tensor([1j]), TypeError),
                     (float("inf"), ValueError), ([2.0], TypeError)]:  # fmt: skip
        with pytest.raises(err, match="avg_factor"):
            loss(x, y, avg_factor=bad)
        with pytest.raises(err, match="avg_factor"):
            build_loss({"type": "CrossEntropyLoss", "avg_factor": bad, "backend": backend})
    for good in (3, 3.0, torch.tensor(3.0), torch.tensor([3.0]), torch.tensor([[3]])):
        out = loss(x, y, avg_factor=good)
        assert out.shape == () and out.dtype == torch.float32
        assert_scalar_close(out, total / (3 + EPS32), 1e-5)
        configured = build_loss({"type": "CrossEntropyLoss", "avg_factor": good,
                                 "backend": backend})  # fmt: skip
        assert_scalar_close(configured(x, y), total / (3 + EPS32), 1e-5)


def _sigmoid_rows_ref(x, t, valid, gamma=None, alpha=0.25):
    """Closed form (float64): BCE(x, t) per element (sigmoid focal when gamma is given), rows
    where ``valid`` only, "mean" over C per valid row."""
    x = x.double()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none")
    if gamma is not None:
        p = torch.sigmoid(x)
        p_t = p * t + (1 - p) * (1 - t)
        bce = bce * (alpha * t + (1 - alpha) * (1 - t)) * (1 - p_t) ** gamma
    return bce[valid].sum() / (int(valid.sum()) * x.shape[1] + EPS32)


def test_out_of_range_labels_are_invalid_everywhere(backend):
    """Labels outside [0, C] (sigmoid: C the background) or [0, C) (softmax) contribute 0 and
    are not counted, on both backends and in the reference (which counted a zero one-hot row:
    BCE [0, 3, 5, -1] with C = 3 gave 0.6562 against 0.3805)."""
    x = logits((4, 3), seed=44).float()
    y = torch.tensor([0, 3, 5, -1])
    onehot = torch.tensor([[1.0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]], dtype=torch.float64)
    valid = torch.tensor([True, True, False, False])
    for cfg, ref_fn, closed in [
        ({"type": "BinaryCrossEntropyLoss"}, RC.binary_cross_entropy,
         _sigmoid_rows_ref(x, onehot, valid)),
        ({"type": "FocalLoss"}, RC.focal_loss, _sigmoid_rows_ref(x, onehot, valid, gamma=2.0)),
    ]:  # fmt: skip
        xs = x.clone().requires_grad_()
        got = build_loss({**cfg, "backend": backend})(xs, y)
        xr = x.double().requires_grad_()
        ref = RU.reduce_with_validity(*_lv(ref_fn(xr, y)))
        assert_scalar_close(ref, closed, 1e-12)
        assert_scalar_close(got, ref, 1e-5)
        (g,) = torch.autograd.grad(got, xs)
        assert_grad_close(g, torch.autograd.grad(ref, xr)[0], 1e-5)
        assert (g[2:] == 0).all()
    # softmax: [0, C) (label 3 = C is out of range too)
    ys = torch.tensor([0, 3, 2, -1])
    for cfg, ref_fn in [
        ({"type": "CrossEntropyLoss"}, RC.cross_entropy),
        ({"type": "LabelSmoothLoss"}, RC.label_smooth_loss),
        ({"type": "FocalLoss", "use_sigmoid": False}, RC.focal_loss),
    ]:  # fmt: skip
        loss = build_loss({**cfg, "backend": backend})
        kw = {"use_sigmoid": False} if cfg["type"] == "FocalLoss" else {}
        elem, v = ref_fn(x.double(), ys, **kw)
        assert v.tolist() == [True, False, True, False] and elem[1] == 0 and elem[3] == 0
        assert_scalar_close(loss(x, ys), RU.reduce_with_validity(elem, None, v), 1e-5)
        assert torch.equal(loss(x, ys, reduction_override="none")[[1, 3]], torch.zeros(2))
    # ignore_index=None: no mask ("mean" over numel), an out-of-range label still gives 0
    loss = build_loss({"type": "CrossEntropyLoss", "ignore_index": None, "backend": backend})
    elem, v = RC.cross_entropy(x.double(), ys, ignore_index=None)
    assert v is None and elem[1] == 0
    assert_scalar_close(loss(x, ys), elem.sum() / 4, 1e-5)


def test_quality_focal_labels_outside_the_classes_are_the_background(backend):
    """QFL (labels, scores): every label outside [0, C) is the background (mmdet: q = 0 for
    every class, a counted row), on both backends (which gave such a row 0) and the reference."""
    x = logits((5, 3), seed=45).float()
    labels = torch.tensor([0, 3, 5, -1, 2])
    scores = torch.rand(5, generator=_gen(46))
    xs = x.clone().requires_grad_()
    got = build_loss({"type": "QualityFocalLoss", "backend": backend})(xs, (labels, scores))
    xr = x.double().requires_grad_()
    ref = RD.quality_focal_loss(xr, (labels, scores)).mean()
    # closed form of a background row: sum_c BCE(x_c, 0) sig(x_c)^2
    bg = (torch.nn.functional.softplus(x.double()) * torch.sigmoid(x.double()) ** 2).sum(1)
    none = build_loss({"type": "QualityFocalLoss", "backend": backend})(
        x, (labels, scores), reduction_override="none"
    )
    assert torch.allclose(none[1:4].double(), bg[1:4], rtol=1e-5)
    assert_scalar_close(got, ref, 1e-5)
    assert_grad_close(torch.autograd.grad(got, xs)[0], torch.autograd.grad(ref, xr)[0], 1e-5)


def test_quality_focal_scores_near_one_keep_their_precision(backend):
    """QFL with q = 1 (or 1 - 2^-20) at confident logits: d = sig(x) - q was formed after
    rounding sig(x) to 1 in float32, so the loss (|d| ~ 2e-9) and its gradient came out 0 or
    wrong by up to 100%; d is now (1 - q) - sig(-x)."""
    x = torch.tensor([[20.0, -3.0], [17.0, 9.0], [12.0, 2.0]])
    q = torch.tensor([[1.0, 0.0], [1.0 - 2.0**-20, 0.0], [1.0, 0.25]])
    for beta in (2.0, 0.5):
        loss = build_loss({"type": "QualityFocalLoss", "beta": beta, "backend": backend})
        xs = x.clone().requires_grad_()
        got = loss(xs, q, reduction_override="none")
        xr = x.double().requires_grad_()
        ref = RD.quality_focal_loss(xr, q.double(), beta=beta)
        assert ref[0] > 0 and torch.allclose(got.double(), ref, rtol=1e-5, atol=0), (beta, got)
        g = torch.autograd.grad(got.sum(), xs)[0]
        g_ref = torch.autograd.grad(ref.sum(), xr)[0]
        assert torch.allclose(g.double(), g_ref, rtol=1e-5, atol=0), (beta, g, g_ref)


def test_plus_inf_logit_gives_nan_on_both_backends(backend):
    """A +inf logit: NaN (softmax undefined), as the triton backend and the reference; the torch
    backend gave +inf (torch.logsumexp)."""
    x = logits((3, 4), seed=47).float()
    x[0, 1] = float("inf")
    y = torch.tensor([0, 1, 2])
    out = build_loss({"type": "CrossEntropyLoss", "backend": backend})(
        x, y, reduction_override="none"
    )
    ref = RC.cross_entropy(x.double(), y)[0]
    assert torch.isnan(ref[0]) and torch.isnan(out[0])
    assert torch.allclose(out[1:].double(), ref[1:], rtol=1e-5)
    assert torch.isnan(build_loss({"type": "CrossEntropyLoss", "backend": backend})(x, y))


# ------------------------------------------------ sweep regressions: focal exponents, ignore_index

import math  # noqa: E402
import warnings  # noqa: E402

F = torch.nn.functional
FOCAL_GAMMAS = [1e3, 1e8, 1e12, 1e30]


def _near_log(gamma, shape, seed):
    """Magnitudes log(gamma) + {-3 .. 4}: 1 - sig(|x|) ~ 1/gamma, where u^gamma is neither 0 nor
    1 and 1 - u lies far below float32's ulp (pow(u, gamma) saw 1^gamma = 1)."""
    g = _gen(seed)
    offs = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    return math.log(gamma) + offs[torch.randint(0, len(offs), shape, generator=g)]


def _saturated_logits(gamma, shape, seed=50):
    """float32 logits of either sign at those magnitudes, a quarter of them ordinary."""
    g = _gen(seed + 1)
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).double()
    x = sign * _near_log(gamma, shape, seed)
    ordinary = torch.rand(shape, generator=g) < 0.25
    return torch.where(
        ordinary, torch.randn(shape, generator=g, dtype=torch.float64) * 2, x
    ).float()


def _softmax_saturated_logits(gamma, shape, seed=52):
    """Rows of ordinary logits with about half the classes at -(log(gamma) + {-3 .. 4}): p_c ~
    1/gamma there, so (1 - p_c)^gamma is neither 0 nor 1."""
    g = _gen(seed + 1)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    low = torch.rand(shape, generator=g) < 0.5
    return torch.where(low, -_near_log(gamma, shape, seed), x).float()


def _soft_extremes(shape, seed=54):
    """Targets in {0, 1, 1e-9, 1 - 2^-24, 0.5}: near 0 and 1 the power is still not trivial."""
    vals = torch.tensor([0.0, 1.0, 1e-9, 1.0 - 2.0**-24, 0.5, 0.0, 1.0])
    return vals[torch.randint(0, len(vals), shape, generator=_gen(seed))]


def _literal_vfl(x, q, gamma, alpha=0.75):
    """VFL with ``sigmoid(x) ** gamma`` as written (mmdet): float64 has its digits for moderate
    logits and exponents, where the reference's log-space form must agree with it."""
    bce = -q * F.logsigmoid(x) - (1 - q) * F.logsigmoid(-x)
    return bce * torch.where(q > 0, q, alpha * torch.sigmoid(x) ** gamma)


def _literal_qfl(x, q, beta):
    bce = -q * F.logsigmoid(x) - (1 - q) * F.logsigmoid(-x)
    return (bce * (q - torch.sigmoid(x)).abs() ** beta).sum(1)


def _focal_case(case, gamma):
    """(config, float32 logits, target, reference(x64) -> (l, v)) of one F4 case."""
    shape = (6, C, 4)
    rest = (shape[0], *shape[2:])
    x = _saturated_logits(gamma, shape)
    if case == "Focal[sigmoid,index]":
        y = labels(rest, C + 1, seed=56, ignore=False)
        cfg, t = {"type": "FocalLoss"}, y
        ref = lambda a: RC.focal_loss(a, y, gamma=gamma)
    elif case == "MultiLabelFocal[soft]":
        t = _soft_extremes(shape)
        cfg = {"type": "MultiLabelFocalLoss"}
        ref = lambda a: (RC.multi_label_focal_loss(a, t, gamma=gamma), None)
    elif case == "BinaryFocal":
        t = _soft_extremes(rest, seed=57)
        cfg, x = {"type": "BinaryFocalLoss"}, _saturated_logits(gamma, rest)
        ref = lambda a: RC.binary_focal_loss(a, t, gamma=gamma)
    elif case == "Focal[softmax,index]":
        t = labels(rest, C, seed=58, ignore=False)
        cfg = {"type": "FocalLoss", "use_sigmoid": False, "alpha": 0.5}
        x = _softmax_saturated_logits(gamma, shape)
        ref = lambda a: RC.focal_loss(a, t, use_sigmoid=False, gamma=gamma, alpha=0.5)
    elif case == "Focal[softmax,dense]":
        t = probs(shape, seed=59)
        cfg = {"type": "FocalLoss", "use_sigmoid": False, "alpha": CW}
        x = _softmax_saturated_logits(gamma, shape)
        ref = lambda a: RC.focal_loss(a, t, use_sigmoid=False, gamma=gamma, alpha=CW)
    elif case.startswith("ASL"):
        t = multi_hot(shape, seed=60)
        # eps below every sig(x) here: its clamp is not what is tested
        kw = {"clip": 0.0, "eps": 1e-37, "disable_torch_grad_focal": case == "ASL[detached]"}
        cfg = {"type": "AsymmetricLoss", "gamma_pos": gamma, **kw}
        ref = lambda a: (RC.asymmetric_loss(a, t, gamma_neg=gamma, gamma_pos=gamma, **kw), None)
    elif case == "QFL[dense]":
        t = multi_hot(shape, seed=61) * torch.where(soft(shape, seed=62) < 0.5, 1.0, 0.4)
        cfg = {"type": "QualityFocalLoss", "beta": gamma}
        ref = lambda a: (RD.quality_focal_loss(a, t, beta=gamma), None)
    else:
        assert case == "VFL"
        t = torch.where(multi_hot(shape, seed=63) > 0, soft(shape, seed=64) + 0.1, 0.0)
        cfg = {"type": "VariFocalLoss"}
        ref = lambda a: (RD.varifocal_loss(a, t, gamma=gamma), None)
    if "beta" not in cfg:
        cfg[{"AsymmetricLoss": "gamma_neg"}.get(cfg["type"], "gamma")] = gamma
    return cfg, x, t, ref


FOCAL_CASES = ["Focal[sigmoid,index]", "MultiLabelFocal[soft]", "BinaryFocal",
               "Focal[softmax,index]", "Focal[softmax,dense]", "ASL[focal grad]", "ASL[detached]",
               "QFL[dense]", "VFL"]  # fmt: skip


@pytest.mark.parametrize("gamma", FOCAL_GAMMAS)
@pytest.mark.parametrize("case", FOCAL_CASES)
def test_focal_exponents_up_to_1e30_at_saturated_logits(case, gamma, backend):
    """Spec 8: a focal exponent anywhere in [0, 1e30]. u^gamma was pow(u, gamma) of a float32 u
    that had rounded to 1 (u = sig(30) = 1 - 9e-14): FocalLoss gave 7.5 against 6.83 at
    gamma = 1e12 and a gradient of -7e17 against 0 at 1e30 (both backends); now exp(gamma log u)
    with an unrounded log u (QFL beta = 1e3 and ASL gammas = 1e3 were already 3e-5 off). float32
    against the float64 reference (which forms the powers the same exact way), value ("sum" and
    "none") and gradient within 1e-5."""
    cfg, x0, target, ref_fn = _focal_case(case, gamma)
    loss = build_loss({**cfg, "backend": backend})
    x = x0.clone().requires_grad_()
    got = loss(x, target, reduction_override="sum")
    (g_got,) = torch.autograd.grad(got, x)
    xr = x0.double().requires_grad_()
    elem, valid = ref_fn(xr)
    ref = RU.reduce_with_validity(elem, None, valid, "sum")
    (g_ref,) = torch.autograd.grad(ref, xr)
    assert ref != 0 and torch.isfinite(ref)
    assert_scalar_close(got, ref, 1e-5)
    assert_grad_close(g_got, g_ref, 1e-5)
    none = loss(x0, target, reduction_override="none").double()
    ref_none = RU.reduce_with_validity(elem.detach(), None, valid, "none")
    assert torch.allclose(none, ref_none, rtol=1e-5, atol=1e-6 * ref_none.abs().max()), case


def test_vfl_qfl_references_match_the_literal_formulas_where_float64_has_the_digits():
    """The reference's log-space VFL/QFL powers (exact where ``** gamma`` of a rounded sig(x)
    is not) equal the literal mmdet formulas at moderate exponents (value and gradient)."""
    for gamma in (2.0, 1e8):
        for case in ("QFL[dense]", "VFL"):
            _, x0, q, ref = _focal_case(case, gamma)
            xa = x0.double().requires_grad_()
            xb = x0.double().requires_grad_()
            lit = _literal_vfl if case == "VFL" else _literal_qfl
            b = lit(xb, q.double(), gamma).sum()
            a = ref(xa)[0].sum()
            assert_scalar_close(a, b, 1e-7)
            assert_grad_close(torch.autograd.grad(a, xa)[0], torch.autograd.grad(b, xb)[0], 1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_focal_exponent_ends_keep_their_values(dtype, backend):
    """gamma = 0 is exactly the alpha-weighted BCE (u^0 = 1, also at u = 0); gamma > 0 at u = 0
    (u = sig(-1000) = 0) gives 0; u = 1 - 1e-87 (x = 200 with t = 0) gives u^1e30 = 1, the
    exact value; the gradients are finite and the reference's."""
    x0 = torch.tensor([[40.0, -40.0, 0.3, 200.0, -200.0], [-200.0, 3.0, -0.7, 1000.0, 1000.0]],
                      dtype=dtype)  # fmt: skip
    t = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 1.0]], dtype=dtype)
    for gamma in (0.0, 2.0, 1e30):
        loss = build_loss({"type": "MultiLabelFocalLoss", "gamma": gamma, "backend": backend})
        x = x0.clone().requires_grad_()
        got = loss(x, t, reduction_override="none")
        xr = x0.double().requires_grad_()
        ref = RC.multi_label_focal_loss(xr, t.double(), gamma=gamma)
        assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-30), (gamma, got, ref)
        if gamma > 0:
            assert got[1, 4] == 0  # u = sig(-1000) = 0
        if gamma == 0:
            bce = F.binary_cross_entropy_with_logits(x0.double(), t.double(), reduction="none")
            assert torch.allclose(got.double(), bce * (0.25 * t + 0.75 * (1 - t)), rtol=1e-6)
        (g,) = torch.autograd.grad(got.sum(), x)
        (g_ref,) = torch.autograd.grad(ref.sum(), xr)
        assert torch.isfinite(g).all()
        assert_grad_close(g, g_ref, 1e-5)


@pytest.mark.parametrize("iou_weighted", [True, False])
def test_varifocal_infinite_logit_has_the_reference_gradient(iou_weighted, backend):
    """x = -inf with q > 0 (and +inf with q > 0): B is infinite, and B * where(q > 0, 0, ...)
    gave inf * 0 = NaN (both backends; the reference -0.36). The loss stays inf as the
    reference's; every gradient the reference has finite is finite and equal."""
    x0 = torch.tensor([[float("-inf"), 0.3, float("inf"), -2.0]])
    q = torch.tensor([[0.6, 0.0, 0.7, 0.0]])
    loss = build_loss({"type": "VariFocalLoss", "iou_weighted": iou_weighted, "backend": backend})
    x = x0.clone().requires_grad_()
    got = loss(x, q, reduction_override="none")
    (g,) = torch.autograd.grad(got.sum(), x)
    xr = x0.double().requires_grad_()
    ref = RD.varifocal_loss(xr, q.double(), iou_weighted=iou_weighted)
    (g_ref,) = torch.autograd.grad(ref.sum(), xr)
    assert torch.equal(torch.isinf(got), torch.isinf(ref))
    fin = torch.isfinite(ref)
    assert torch.allclose(got[fin].double(), ref[fin], rtol=1e-6)
    ok = torch.isfinite(g_ref)
    assert ok.sum() >= 3 and torch.isfinite(g[ok]).all()
    assert torch.allclose(g[ok].double(), g_ref[ok], rtol=1e-6, atol=1e-7), (g, g_ref)


@pytest.mark.parametrize("call", ["mean", "none", "sum", "weight", "ignore_per_call"])
def test_softmax_focal_dense_target_honours_ignore_index(call, backend):
    """Spec 12.4: a dense target of a loss with ignore_index is invalid where it equals it. The
    softmax FocalLoss used a -100 entry as a weight (row loss -12.08; the sigmoid one masked it):
    now a position whose target equals ignore_index in any class contributes 0 (value and
    gradient) and is not counted by "mean", on both backends and in the reference."""
    x0 = logits((4, C, 3), seed=65)
    t = probs((4, C, 3), seed=66)
    t[0, 2, 1] = -100.0
    t[2, :, 0] = -100.0  # a whole ignored position
    t[3, 4, 2] = -100.0
    invalid = torch.zeros(4, 3, dtype=torch.bool)
    invalid[0, 1] = invalid[2, 0] = invalid[3, 2] = True
    cfg = {"type": "FocalLoss", "use_sigmoid": False, "alpha": CW, "gamma": 1.5}
    kw = {}
    if call == "ignore_per_call":  # configured None, the call's -100
        cfg["ignore_index"] = None
        kw["ignore_index"] = -100
    elif call == "weight":
        kw["weight"] = _weight((4, 3), (4, C, 3))
    elif call != "mean":
        kw["reduction_override"] = call
    loss = build_loss({**cfg, "backend": backend})
    x = x0.clone().requires_grad_()
    got = loss(x, t, **kw)
    xr = x0.clone().requires_grad_()
    elem, v = RC.focal_loss(xr, t, use_sigmoid=False, alpha=CW, gamma=1.5)
    assert torch.equal(v, ~invalid) and (elem[invalid] == 0).all()
    ref = RU.reduce_with_validity(elem, kw.get("weight"), v, kw.get("reduction_override", "mean"))
    assert torch.allclose(got, ref, rtol=1e-10, atol=1e-12), (got, ref)
    gw = torch.randn(ref.shape, generator=_gen(67), dtype=torch.float64)
    (g,) = torch.autograd.grad(got, x, gw)
    assert_grad_close(g, torch.autograd.grad(ref, xr, gw)[0], 1e-9)
    assert (g.permute(0, 2, 1)[invalid] == 0).all()
    if call == "mean":  # counted: the 9 valid positions
        assert_scalar_close(got, elem.sum() / (9 + EPS32), 1e-12)
    # ignore_index=None: no mask, the entries are weights (kornia), "mean" over numel
    none_loss = build_loss({**cfg, "ignore_index": None, "backend": backend})
    e2, v2 = RC.focal_loss(x0, t, use_sigmoid=False, alpha=CW, gamma=1.5, ignore_index=None)
    assert v2 is None
    assert_scalar_close(none_loss(x0, t), e2.sum() / 12, 1e-10)


@pytest.mark.parametrize(
    ("cfg", "dtype", "ignore_index", "values", "kept"),
    [
        ({"type": "BinaryCrossEntropyLoss"}, torch.uint8, -100, [1, 156, 0], [1, 1, 1]),
        ({"type": "BinaryCrossEntropyLoss"}, torch.int8, 255, [1, -1, 0], [1, 1, 1]),
        ({"type": "BinaryCrossEntropyLoss"}, torch.int16, -100, [1, -100, 0], [1, 0, 1]),
        ({"type": "FocalLoss"}, torch.uint8, 256, [1, 0, 1], [1, 1, 1]),
        ({"type": "BinaryFocalLoss"}, torch.int8, 257, [1, 0, 1], [1, 1, 1]),
        ({"type": "FocalLoss", "use_sigmoid": False}, torch.uint8, 256, [1, 0, 1], [1, 1, 1]),
    ],
)  # fmt: skip
def test_integer_dense_targets_compare_ignore_index_in_int64(
    cfg, dtype, ignore_index, values, kept, backend
):
    """A dense integer target whose dtype cannot hold ignore_index: the torch backend compared in
    the target's dtype (uint8 156 == -100 after wrapping: ignored) and the triton one in a wider
    type (kept). Now int64 everywhere, the reference too: a value the dtype cannot hold equals
    no element (uint8 with 256 and int8 with 257: binary targets that wrapped to 0 and 1)."""
    x0 = logits((2, 3, 2), seed=68).float()
    t = torch.tensor(values, dtype=dtype).view(1, 3, 1).expand(2, 3, 2).contiguous()
    t[1, 0, 1] = 0
    x_in, t_in = (x0[:, 0], t[:, 0]) if cfg["type"] == "BinaryFocalLoss" else (x0, t)
    loss = build_loss({**cfg, "ignore_index": ignore_index, "backend": backend})
    got = loss(x_in, t_in, reduction_override="none")
    fn = {"BinaryCrossEntropyLoss": RC.binary_cross_entropy, "BinaryFocalLoss":
          RC.binary_focal_loss}.get(cfg["type"], RC.focal_loss)  # fmt: skip
    kw = {"use_sigmoid": False} if cfg.get("use_sigmoid") is False else {}
    elem, v = fn(x_in.double(), t_in, ignore_index=ignore_index, **kw)
    assert torch.allclose(got.double(), RU.reduce_with_validity(elem, None, v, "none"), rtol=1e-5)
    assert [int(k) != ignore_index for k in values] == [bool(k) for k in kept]
    expect = t_in.long() != ignore_index  # in int64: nothing wraps
    expect = expect.all(1) if cfg.get("use_sigmoid") is False else expect  # (softmax: per position)
    assert torch.equal(v, expect)
    assert_scalar_close(loss(x_in, t_in), RU.reduce_with_validity(elem, None, v), 1e-5)


REGISTRY_NAMES = {"KD": "KnowledgeDistillationLoss", "VFL": "VariFocalLoss",
                  "QFL[labels]": "QualityFocalLoss", "QFL[dense]": "QualityFocalLoss"}  # fmt: skip


@pytest.mark.parametrize("red", ["mean", "none"])
@pytest.mark.parametrize("name", list(DENSE))
def test_double_backward_names_the_loss(name, red, backend):
    """Spec 8: "<op> (<backend> backend): double backward" naming the public loss (the registry
    class); the torch backend named "fused_losses registry" ("none") and the triton one its
    internal ops dense_sums / dense_none."""
    cfg, kind = DENSE[name]
    op = REGISTRY_NAMES.get(name, cfg["type"])
    x = torch.randn(4, 3, 2, generator=_gen(69)).requires_grad_()
    t = _target(kind, x.shape)
    if name == "BinaryFocalLoss":
        t = t[:, 0]
        x = x[:, 0].detach().requires_grad_()
    out = build_loss({**cfg, "backend": backend})(x, t, reduction_override=red)
    (g,) = torch.autograd.grad(out.sum(), x, retain_graph=True)
    assert torch.isfinite(g).all()
    with pytest.raises(RuntimeError, match=rf"^{op} \({backend} backend\): double backward"):
        torch.autograd.grad(out.sum(), x, create_graph=True)


def test_softmax_kernels_warn_nothing_under_the_interpreter():
    """Every softmax-family call under the interpreter warned "divide by zero" (1 / label
    smoothing 0 for KD's inverse temperature) and "divide by zero encountered in log" (the
    teacher's log-sum-exp outside KD, KD's student log-sum-exp of rows past R)."""
    from fused_losses.kernels.launch import interpreting

    if not interpreting():
        pytest.skip("numpy warnings of Triton's interpreter")
    x0 = logits((5, C, 3), seed=70).float()
    y = labels((5, 3), C, seed=71)
    dense = probs((5, C, 3), seed=72).float()
    for cfg, t in [({"type": "CrossEntropyLoss"}, y), ({"type": "LabelSmoothLoss"}, y),
                   ({"type": "SoftCrossEntropyLoss"}, dense),
                   ({"type": "FocalLoss", "use_sigmoid": False}, y),
                   ({"type": "FocalLoss", "use_sigmoid": False}, dense),
                   ({"type": "KDLoss"}, logits((5, C, 3), seed=73).float())]:  # fmt: skip
        for red in ("mean", "none"):
            x = x0.clone().requires_grad_()
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                out = build_loss({**cfg, "backend": "triton"})(x, t, reduction_override=red)
                torch.autograd.grad(out.sum(), x)
