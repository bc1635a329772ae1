"""masked_focal_loss / MaskedFocalLoss against the float64 reference (spec 3.3.1 and 4)."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import DEVICE, assert_grad_close, assert_scalar_close, check_parity, pairwise
from hypothesis import given, settings
from hypothesis import strategies as st
from test_regression import check_unevaluated_predictions, nan_where_evaluated

import fused_losses as fl
from fused_losses import reference as R

NORMALIZE = ["weight", "num_pos", "sum", "mean"]
WEIGHTS = ["none", "full", "per-image", "per-pixel-shared"]


def focal_inputs(b, h, w, *, from_logits, weight, seed, n_pos=3):
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    if from_logits:
        pred = 3 * torch.randn(b, 1, h, w, generator=g, dtype=f64)
    else:
        pred = 0.01 + 0.98 * torch.rand(b, 1, h, w, generator=g, dtype=f64)
    # A Gaussian-like target: a few exact 1s, values near and under the threshold elsewhere.
    target = torch.rand(b, 1, h, w, generator=g, dtype=f64) ** 3
    flat = target.view(-1)
    idx = torch.randperm(flat.numel(), generator=g)[:n_pos]
    flat[idx] = 1.0
    if weight == "none":
        wt = None
    elif weight == "full":
        wt = torch.rand(b, 1, h, w, generator=g, dtype=f64)
        wt[0, 0, :2] = 0
    elif weight == "per-image":
        wt = torch.rand(b, 1, 1, 1, generator=g, dtype=f64)
    else:
        wt = torch.rand(1, 1, h, w, generator=g, dtype=f64)
    return dict(pred=pred, target=target, weight=wt)


def run_focal(backend, size, *, normalize, from_logits, weight, dt, seed, **opts):
    tensors = focal_inputs(*size, from_logits=from_logits, weight=weight, seed=seed)
    return check_parity(
        fl.masked_focal_loss,
        R.masked_focal_loss,
        tensors,
        grad=("pred",),
        backend=backend,
        dtype=dt,
        seed=seed,
        normalize=normalize,
        from_logits=from_logits,
        **opts,
    )


FULL = list(itertools.product(NORMALIZE, [False, True], WEIGHTS, [torch.float32, torch.float64]))


def focal_id(normalize, from_logits, weight, dt):
    return f"{normalize}-{'logits' if from_logits else 'probs'}-w_{weight}-{str(dt)[6:]}"


@pytest.mark.parametrize("normalize,from_logits,weight,dt", FULL, ids=[focal_id(*p) for p in FULL])
def test_focal_torch(normalize, from_logits, weight, dt):
    seed = FULL.index((normalize, from_logits, weight, dt))
    for size in ((3, 17, 33), (2, 64, 128)):
        run_focal(
            "torch",
            size,
            normalize=normalize,
            from_logits=from_logits,
            weight=weight,
            dt=dt,
            seed=seed,
        )


ROWS = pairwise(
    {
        "normalize": NORMALIZE,
        "weight": WEIGHTS,
        "from_logits": [False, True],
        "dt": [torch.float32, torch.float64],
    }
)


@pytest.mark.parametrize(
    "row",
    ROWS,
    ids=[
        "triton-" + focal_id(r["normalize"], r["from_logits"], r["weight"], r["dt"]) for r in ROWS
    ],
)
def test_focal_triton(row):
    run_focal("triton", (3, 17, 33), seed=len(row["normalize"]), **row)


@pytest.mark.parametrize("weight", ["per-image", "per-pixel-shared"])
@pytest.mark.parametrize("normalize", NORMALIZE)
def test_broadcast_weight_equals_expanded_weight(backend, weight, normalize):
    """A broadcast weight means the same as the weight expanded to pred's shape."""
    t = focal_inputs(3, 16, 32, from_logits=False, weight=weight, seed=4)
    expanded = t["weight"].expand_as(t["pred"]).contiguous()
    a = fl.masked_focal_loss(
        t["pred"].to(DEVICE), t["target"].to(DEVICE), t["weight"].to(DEVICE),
        normalize=normalize, backend=backend,
    )  # fmt: skip
    b = fl.masked_focal_loss(
        t["pred"].to(DEVICE), t["target"].to(DEVICE), expanded.to(DEVICE),
        normalize=normalize, backend=backend,
    )  # fmt: skip
    assert_scalar_close(a, b, 1e-12, "broadcast vs expanded weight")


@pytest.mark.parametrize("from_logits", [False, True])
def test_num_pos_without_positives_divides_by_one(backend, from_logits):
    t = focal_inputs(2, 17, 33, from_logits=from_logits, weight="full", seed=5)
    t["target"] = t["target"].clamp(max=0.85)  # no pixel reaches pos_threshold = 0.9
    for weight in (t["weight"], None):
        tt = {**t, "weight": weight}
        loss, *_ = check_parity(
            fl.masked_focal_loss,
            R.masked_focal_loss,
            tt,
            grad=("pred",),
            backend=backend,
            normalize="num_pos",
            from_logits=from_logits,
        )
        total, *_ = check_parity(
            fl.masked_focal_loss,
            R.masked_focal_loss,
            tt,
            grad=("pred",),
            backend=backend,
            normalize="sum",
            from_logits=from_logits,
        )
        assert_scalar_close(loss, total, 1e-6, "num_pos with no positives == sum")
    # Positives only where the weight is 0: sum(pos * W) = 0, divide by 1 as well.
    t = focal_inputs(2, 17, 33, from_logits=from_logits, weight="full", seed=6)
    t["target"] = t["target"].clamp(max=0.85)
    t["target"][0, 0, 0, :5] = 1.0  # weight row 0 of image 0 is 0
    check_parity(
        fl.masked_focal_loss,
        R.masked_focal_loss,
        t,
        grad=("pred",),
        backend=backend,
        normalize="num_pos",
        from_logits=from_logits,
    )


def _focal_with_exact_0_and_1(seed):
    """Inputs with P exactly 0 and exactly 1 on both positive and negative cells."""
    t = focal_inputs(2, 5, 7, from_logits=False, weight="none", seed=seed)
    t["target"] = t["target"].clamp(max=0.85)
    t["target"][0, 0, 0, :4] = 1.0
    t["pred"][0, 0, 0, :4] = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    t["pred"][1, 0, 2, :4] = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    return t


def test_alpha_zero_with_probabilities_exactly_0_and_1(backend):
    """alpha = 0: d((1-P)^0)/dP = 0 at P = 1 and d(P^0)/dP = 0 at P = 0 (torch's pow backward),
    not 0 * inf = NaN; the gradient is finite and matches the reference."""
    t = _focal_with_exact_0_and_1(seed=9)
    check_parity(
        fl.masked_focal_loss, R.masked_focal_loss, t, grad=("pred",), backend=backend, alpha=0.0
    )


def test_fractional_alpha_at_0_and_1_matches_reference_finiteness(backend):
    """0 < alpha < 1: the reference's own gradient is infinite at P = 1 on a positive and P = 0 on
    a negative (and NaN on the branch torch.where does not take). Where the reference is finite we
    must be finite and close; where it is +-inf we give the same infinity; its NaNs (an artefact of
    autograd through torch.where) are not compared."""
    t = _focal_with_exact_0_and_1(seed=9)
    pred = t["pred"].clone().requires_grad_(True)
    R.masked_focal_loss(pred, t["target"], alpha=0.5).backward()
    x = t["pred"].float().to(DEVICE).requires_grad_(True)
    loss = fl.masked_focal_loss(x, t["target"].float().to(DEVICE), alpha=0.5, backend=backend)
    loss.backward()
    ours, ref = x.grad.cpu().double(), pred.grad
    ref_finite, ref_inf = torch.isfinite(ref), torch.isinf(ref)
    assert ref_inf.any()
    assert torch.isfinite(ours[ref_finite]).all()
    assert torch.equal(ours[ref_inf], ref[ref_inf])
    assert_grad_close(ours[ref_finite], ref[ref_finite], 1e-5)


def test_gap_loss_alpha_zero_with_probability_exactly_1(backend):
    """The fused gap-detection loss, alpha = 0, P = 1 at the gap's positive cell and P = 0 on a
    negative cell: finite gradients matching the reference."""
    g = torch.Generator().manual_seed(11)
    hg = torch.rand(1, 1, 6, 7, generator=g) * 0.9 + 0.05
    hp = torch.rand(1, 1, 6, 7, generator=g) * 0.9 + 0.05
    hg[0, 0, 2, 2], hg[0, 0, 4, 5], hp[0, 0, 0, 0] = 1.0, 0.0, 0.0
    preds = [
        hg,
        hp,
        torch.rand(1, 4, 6, 7, generator=g) - 0.5,
        torch.randn(1, 2, 6, 7, generator=g),
    ]
    rest = (torch.tensor([[10.0, 10.0]]), torch.tensor([[18.0, 14.0]]), torch.zeros(1))
    ref = [p.double().requires_grad_(True) for p in preds]
    ref_total = R.gap_detection_loss(*ref, *(x.double() for x in rest), alpha=0.0)
    ref_total.backward()
    cand = [p.to(DEVICE).requires_grad_(True) for p in preds]
    total = fl.gap_detection_loss(*cand, *(x.to(DEVICE) for x in rest), alpha=0.0, backend=backend)
    total.backward()
    assert_scalar_close(total, ref_total, 1e-5)
    for c, r in zip(cand, ref):
        assert_grad_close(c.grad, r.grad, 1e-5)


def test_num_pos_counts_positives(backend):
    """With W absent, "num_pos" divides the sum by the number of Y >= pos_threshold."""
    t = focal_inputs(2, 17, 33, from_logits=False, weight="none", seed=7, n_pos=4)
    n = int((t["target"] >= 0.9).sum())
    assert n >= 4
    args = (t["pred"].to(DEVICE), t["target"].to(DEVICE))
    a = fl.masked_focal_loss(*args, normalize="num_pos", backend=backend)
    s = fl.masked_focal_loss(*args, normalize="sum", backend=backend)
    m = fl.masked_focal_loss(*args, normalize="mean", backend=backend)
    assert_scalar_close(a * n, s, 1e-6, "num_pos * n == sum")
    assert_scalar_close(m * t["pred"].numel(), s, 1e-6, "mean * numel == sum")


@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
def test_target_on_the_threshold_is_positive(backend, dt):
    """pos = Y >= pos_threshold: a target exactly on the threshold is a positive. (0.75 is exact
    in binary, so float32 and float64 agree on which targets sit on it.)"""
    t = focal_inputs(2, 17, 33, from_logits=False, weight="full", seed=13)
    t["target"] = t["target"].clamp(max=0.7)
    t["target"][1, 0, 4, 5:9] = 0.75
    on, *_ = check_parity(
        fl.masked_focal_loss,
        R.masked_focal_loss,
        t,
        grad=("pred",),
        backend=backend,
        dtype=dt,
        pos_threshold=0.75,
        normalize="num_pos",
    )
    off, *_ = check_parity(
        fl.masked_focal_loss,
        R.masked_focal_loss,
        t,
        grad=("pred",),
        backend=backend,
        dtype=dt,
        pos_threshold=0.76,
        normalize="num_pos",
    )
    assert abs(float(on.detach()) - float(off.detach())) > 1e-3


@pytest.mark.parametrize(
    "opts",
    [
        dict(alpha=2.0, beta=4.0),
        dict(alpha=0.0, beta=0.0),
        dict(alpha=1.0, beta=2.5, pos_threshold=0.5),
        dict(pos_threshold=1.01),
        dict(eps=1e-3),
        dict(eps=0.0),
    ],
    ids=["alpha2", "alpha0-beta0", "alpha1-thr0.5", "no-positives", "eps1e-3", "eps0"],
)
@pytest.mark.parametrize("from_logits", [False, True])
def test_focal_options(backend, opts, from_logits):
    run_focal(
        backend,
        (2, 17, 33),
        normalize="weight",
        from_logits=from_logits,
        weight="full",
        dt=torch.float32,
        seed=8,
        **opts,
    )


def test_logits_stable_for_large_logits(backend):
    """from_logits: exact logs, finite for |x| = 40 in float32 where log(sigmoid(x) + eps) is not
    exact."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 1, 17, 33, generator=g, dtype=torch.float64) * 40
    y = torch.rand(2, 1, 17, 33, generator=g, dtype=torch.float64) ** 4
    y[:, :, 3, 3] = 1.0
    x[:, :, 3, 3] = -40.0  # a confident miss on a positive
    for dt in (torch.float32, torch.float64):
        check_parity(
            fl.masked_focal_loss,
            R.masked_focal_loss,
            dict(pred=x, target=y, weight=None),
            grad=("pred",),
            backend=backend,
            dtype=dt,
            from_logits=True,
        )


@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16])
def test_focal_half_precision(backend, dt):
    for from_logits in (True, False):
        run_focal(
            backend,
            (2, 17, 33),
            normalize="weight",
            from_logits=from_logits,
            weight="full",
            dt=dt,
            seed=10,
        )


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), normalize=st.sampled_from(NORMALIZE))
def test_logits_equal_probabilities_without_eps(seed, normalize):
    """from_logits=True on x equals probabilities sigmoid(x) with eps=0 (moderate logits)."""
    t = focal_inputs(2, 6, 7, from_logits=True, weight="full", seed=seed)
    x = t["pred"].clamp(-8, 8)
    a = fl.masked_focal_loss(
        x, t["target"], t["weight"], from_logits=True, eps=0.0, normalize=normalize, backend="torch"
    )
    b = fl.masked_focal_loss(
        torch.sigmoid(x), t["target"], t["weight"], eps=0.0, normalize=normalize, backend="torch"
    )
    assert_scalar_close(a, b, 1e-9, "logits vs probabilities")


def test_focal_module_and_no_grad(backend):
    t = focal_inputs(2, 17, 33, from_logits=True, weight="per-image", seed=11)
    args = [v.to(DEVICE) for v in t.values()]
    crit = fl.MaskedFocalLoss(alpha=2.0, normalize="num_pos", from_logits=True, backend=backend)
    a = crit(*args)
    b = fl.masked_focal_loss(
        *args, alpha=2.0, normalize="num_pos", from_logits=True, backend=backend
    )
    assert_scalar_close(a, b, 1e-12, "module vs functional")
    assert not a.requires_grad
    pred = args[0].clone().requires_grad_(True)
    with torch.no_grad():
        c = crit(pred, *args[1:])
    assert not c.requires_grad
    assert_scalar_close(c, a, 1e-12, "no_grad")


def test_focal_non_contiguous(backend):
    t = focal_inputs(3, 17, 33, from_logits=False, weight="full", seed=12)
    views = {k: v.transpose(2, 3).contiguous().transpose(2, 3) for k, v in t.items()}
    assert not any(v.is_contiguous() for v in views.values())
    run = check_parity(
        fl.masked_focal_loss, R.masked_focal_loss, t, grad=("pred",), backend=backend, seed=12
    )
    loss_views = fl.masked_focal_loss(*(v.to(DEVICE) for v in views.values()), backend=backend)
    assert_scalar_close(loss_views, run[0], 1e-6, "non-contiguous")


NAN, INF = float("nan"), float("inf")
BAD_COMPONENT_OPTIONS = [
    ("focal", {"alpha": NAN}, ValueError, "alpha"),
    ("focal", {"beta": INF}, ValueError, "beta"),
    ("focal", {"pos_threshold": NAN}, ValueError, "pos_threshold"),
    ("focal", {"eps": INF}, ValueError, "eps"),
    ("focal", {"from_logits": "False"}, TypeError, "from_logits"),
    ("focal", {"from_logits": 1}, TypeError, "from_logits"),
    ("focal", {"alpha": -1.0}, ValueError, "alpha"),
    ("focal", {"backend": "fused"}, ValueError, "backend"),
    ("smooth_l1", {"beta": NAN}, ValueError, "beta"),
    ("smooth_l1", {"beta": -1.0}, ValueError, "beta"),
    ("smooth_l1", {"eps": INF}, ValueError, "eps"),
    ("smooth_l1", {"backend": "fused"}, ValueError, "backend"),
    ("cosine", {"eps": NAN}, ValueError, "eps"),
    ("cosine", {"eps": -1.0}, ValueError, "eps"),
    ("cosine", {"backend": "fused"}, ValueError, "backend"),
    ("hard_negative", {"margin": INF}, ValueError, "margin"),
    ("hard_negative", {"margin": NAN}, ValueError, "margin"),
    ("hard_negative", {"stride": 0}, ValueError, "stride"),
    ("hard_negative", {"backend": "fused"}, ValueError, "backend"),
]


def _component_call(op, **opts):
    g = torch.Generator().manual_seed(0)
    p = torch.rand(2, 1, 5, 6, generator=g)
    m = torch.ones(2, 1, 5, 6)
    if op == "focal":
        return fl.masked_focal_loss(p, torch.rand(2, 1, 5, 6, generator=g), **opts)
    if op == "smooth_l1":
        return fl.masked_smooth_l1_loss(torch.rand(2, 2, 5, 6), torch.zeros(2, 2, 1, 1), m, **opts)
    if op == "cosine":
        return fl.masked_cosine_loss(torch.randn(2, 2, 5, 6), torch.zeros(2), m, **opts)
    return fl.hard_negative_margin_loss(p, torch.ones(2, 2), torch.ones(2, 3, 2), **opts)


COMPONENT_MODULES = {
    "focal": "MaskedFocalLoss",
    "smooth_l1": "MaskedSmoothL1Loss",
    "cosine": "MaskedCosineLoss",
    "hard_negative": "HardNegativeMarginLoss",
}


@pytest.mark.parametrize(
    "op,opts,exc,name",
    BAD_COMPONENT_OPTIONS,
    ids=[f"{op}-{k}={v!r}" for op, o, _, _ in BAD_COMPONENT_OPTIONS for k, v in o.items()],
)
def test_component_bad_options_raise_in_function_and_module_constructor(op, opts, exc, name):
    """Non-finite numbers, a non-bool from_logits ("False" is truthy) and unknown choices raise,
    naming the argument; the modules check their options when constructed, not at the first call."""
    with pytest.raises(exc, match=name):
        _component_call(op, **opts)
    with pytest.raises(exc, match=name):
        getattr(fl, COMPONENT_MODULES[op])(**opts)


def test_focal_bad_input():
    p = torch.rand(2, 1, 5, 6)
    y = torch.rand(2, 1, 5, 6)
    with pytest.raises(TypeError, match="pred"):
        fl.masked_focal_loss(p.to(torch.int64), y)
    with pytest.raises(ValueError, match=r"target.*\[2, 1, 5, 6\].*\[2, 1, 6, 5\]"):
        fl.masked_focal_loss(p, y.transpose(2, 3))
    with pytest.raises(ValueError, match=r"weight.*\[2, 1, 5, 7\]"):
        fl.masked_focal_loss(p, y, torch.ones(2, 1, 5, 7))
    with pytest.raises(ValueError, match=r"weight.*\[3, 1, 1, 1\]"):
        fl.masked_focal_loss(p, y, torch.ones(3, 1, 1, 1))
    with pytest.raises(ValueError, match="normalize"):
        fl.masked_focal_loss(p, y, normalize="batch")
    with pytest.raises(ValueError, match="normalize"):
        fl.MaskedFocalLoss(normalize="pos")
    with pytest.raises(ValueError, match="alpha"):
        fl.masked_focal_loss(p, y, alpha=-1.0)
    with pytest.raises(ValueError, match="backend"):
        fl.masked_focal_loss(p, y, backend="fused")
    with pytest.raises(ValueError, match=r"target.*meta"):
        fl.masked_focal_loss(p, y.to("meta"))
    with pytest.raises(ValueError, match=r"weight.*meta"):
        fl.masked_focal_loss(p, y, torch.ones(2, 1, 5, 6, device="meta"))


@pytest.mark.parametrize("normalize", ["weight", "num_pos", "sum", "mean"])
def test_empty_batch_is_zero_on_both_backends(backend, normalize):
    """B = 0: every normalisation gives 0 (mean over nothing included, not NaN) and an empty
    gradient, as the reference."""
    pred = torch.rand(0, 1, 4, 4, device=DEVICE, requires_grad=True)
    target = torch.rand(0, 1, 4, 4, device=DEVICE)
    loss = fl.masked_focal_loss(pred, target, normalize=normalize, backend=backend)
    ref = R.masked_focal_loss(pred.detach().cpu().double(), target.cpu().double(),
                                      normalize=normalize)  # fmt: skip
    assert float(ref) == 0.0 and float(loss) == 0.0
    (g,) = torch.autograd.grad(loss, pred)
    assert g.shape == pred.shape


def test_unknown_option_keyword_leads_with_its_name():
    """A misspelt option, to every loss's functional and module form, is a TypeError that starts
    with the keyword, lists the options and suggests the closest one (spec 3.5)."""
    p = torch.rand(1, 1, 3, 4)
    calls = {
        "functional": lambda: fl.masked_focal_loss(p, p, alhpa=2.0),
        "module": lambda: fl.MaskedFocalLoss(alhpa=2.0),
        "options object": lambda: fl.MaskedFocalLoss(fl.FocalOptions(), alhpa=2.0),
    }
    for form, call in calls.items():
        with pytest.raises(TypeError, match=r"^alhpa: .*alpha, beta.*did you mean 'alpha'") as e:
            call()
        assert "FocalOptions" in str(e.value), form
    modules = [m for m in vars(fl).values() if isinstance(m, type) and issubclass(m, fl.LossModule)]
    assert len(modules) >= 8
    for module in modules:
        with pytest.raises(TypeError, match=r"^not_an_option: not an option of "):
            module(not_an_option=1)
        # the options class built directly: the dataclass's own "__init__() got an unexpected
        # keyword argument" did not lead with the keyword
        with pytest.raises(
            TypeError, match=rf"^not_an_option: not an option of {module.Options.__name__}"
        ):
            module.Options(not_an_option=1)


@pytest.mark.parametrize(
    "alpha,beta,threshold", [(1e-300, 4.0, 0.9), (2.0, 1e-300, 2.0), (1e-300, 1e-300, 2.0)]
)
def test_exponents_below_float32_range_act_as_the_exact_exponent(backend, alpha, beta, threshold):
    """A positive alpha or beta too small for float32 (flushed to 0 it would make 0^a = 1): with
    probabilities exactly 0 and 1 and targets exactly 1 (positive, or negative with a threshold
    above 1), float32 matches the float64 reference."""
    p = torch.tensor([[[[0.0, 1.0, 0.5, 0.25]]]], device=DEVICE)
    t = torch.tensor([[[[1.0, 1.0, 0.0, 1.0]]]], device=DEVICE)
    opts = dict(alpha=alpha, beta=beta, eps=1e-3, pos_threshold=threshold)
    ref = R.masked_focal_loss(p.double().cpu(), t.double().cpu(), **opts)
    loss = fl.masked_focal_loss(p, t, backend=backend, **opts)
    assert_scalar_close(loss, ref, 1e-6, f"alpha={alpha}, beta={beta}")


@pytest.mark.parametrize("name", ["alpha", "beta"])
def test_exponent_beyond_float32_is_refused(name):
    """An exponent that is inf in float32 made 1^inf = NaN gradients on both backends: refused
    with the range (spec 8), before any work; 1e30 is still accepted."""
    x = torch.full((1, 1, 2, 2), 0.5)
    y = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match=rf"{name}: expected a number in \[0, 1e\+30\]"):
        fl.masked_focal_loss(x, y, **{name: 1e39})
    assert torch.isfinite(fl.masked_focal_loss(x, y, **{name: 1e30}))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("normalize", ["weight", "num_pos"])
@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
def test_non_finite_prediction_where_weight_is_zero(backend, value, from_logits, normalize, dt):
    """Spec 3.3.1: an element of W = 0 is not evaluated: a NaN or infinite prediction there adds 0
    and gets a 0 gradient (the old code multiplied f by W: NaN * 0); a NaN where W != 0 still makes
    the loss NaN (spec 8). Also with a weight that broadcasts (one zero per image row)."""
    t = focal_inputs(2, 5, 7, from_logits=from_logits, weight="full", seed=21)
    g = torch.Generator().manual_seed(22)
    t["weight"] = t["weight"] * (torch.rand(2, 1, 5, 7, generator=g) > 0.5)
    t["weight"][1, 0, 0] = 0  # a row of zeros
    off = t["weight"] == 0
    opts = dict(from_logits=from_logits, normalize=normalize)
    check_unevaluated_predictions(
        fl.masked_focal_loss, R.masked_focal_loss, t, off, value, backend=backend, dtype=dt, **opts
    )
    nan_where_evaluated(fl.masked_focal_loss, t, ~off, backend=backend, **opts)
    # A weight broadcast over the batch ([1, 1, H, W], stride 0): the same rule.
    shared = dict(t, weight=t["weight"][1:])
    off = (shared["weight"] == 0).expand_as(t["pred"])
    check_unevaluated_predictions(
        fl.masked_focal_loss, R.masked_focal_loss, shared, off, value, backend=backend, dtype=dt,
        **opts,
    )  # fmt: skip
