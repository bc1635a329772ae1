"""The registry's fused dense losses (docs/spec.md 12.4): the classification family and QFL/VFL,
on both backends (the triton one through the interpreter on CPU), against the literal float64
reference of ``fused_losses.reference.registry`` with SPEC 9.2's reduction rules."""

from __future__ import annotations

import pytest
import torch
from conftest import TOLERANCES, assert_grad_close, assert_scalar_close
from fused_losses.reference.registry import classification as RC
from fused_losses.reference.registry import detection as RD
from fused_losses.reference.registry import utils as RU

from fused_losses.registry import build_loss

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
    # (the reference's 1 - p_y cancels where ours takes -expm1(log p_y))
    assert_scalar_close(focal(x0, y), RU.reduce_with_validity(elem, None, v), 1e-7)


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
