"""The registry's distillation family beyond KD (SPEC 10.4): DKD, DIST, the Feature losses,
AttentionLoss, MGD, RKD distance and angle, CRD and PKT, built from configs, against the literal
float64 reference of ``fused_losses.reference.registry.distillation`` (values and gradients, every
reduction, sample weights), plus options, aliases, named errors and edge cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_grad_close, build_loss
from fused_losses.reference.registry import distillation as RK
from fused_losses.reference.registry import utils as RU

import fused_losses.registry.distillation  # noqa: F401  (registers the family)
from fused_losses.registry import LOSSES

D = torch.float64
RTOL, ATOL, GTOL = 1e-10, 1e-13, 1e-10


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(shape, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=_gen(seed), dtype=D) * scale


def unit_rows(shape, seed: int) -> torch.Tensor:
    """Memory rows of CRD: L2-normalised along the last axis."""
    return F.normalize(randn(shape, seed), dim=-1)


def positive_weight(shape, seed: int = 9) -> torch.Tensor:
    w = torch.rand(shape, generator=_gen(seed), dtype=D) + 0.25
    w.view(-1)[0] = 0.0  # one element of zero weight
    return w


def assert_close(got: torch.Tensor, ref: torch.Tensor, what: str = "loss") -> None:
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(got).all(), f"{what}: not finite"
    assert torch.allclose(got, ref, rtol=RTOL, atol=ATOL), f"{what}: {got} vs {ref}"


def check_grads(got, ref, lib_leaves, ref_leaves, names, seed: int = 5) -> None:
    """The gradients of sum(g * out) w.r.t. the leaves, g random of the output's shape."""
    g = randn(ref.shape, seed) if ref.dim() else torch.tensor(1.7, dtype=D)
    lib = torch.autograd.grad(got, lib_leaves, g, allow_unused=True)
    refs = torch.autograd.grad(ref, ref_leaves, g, allow_unused=True)
    for a, b, name in zip(lib, refs, names):
        assert b is not None and b.norm() > 0, f"grad {name}: the reference gradient is 0"
        assert_grad_close(a, b, GTOL, f"grad {name}")


# ---------------------------------------------------------------- parameter-free rows: parity

N, C = 6, 5
LABELS = torch.tensor([0, 4, 2, 2, 1, 3])
BANK_T, BANK_S = unit_rows((4, 8, 16), 31), unit_rows((4, 8, 16), 32)

# name -> (config, reference(s, t) -> l, s shape, t shape, call options, l has a validity mask)
CASES = {
    "DKD": ({"type": "DKDLoss", "tau": 2.0, "alpha": 0.7, "beta": 3.0},
            lambda s, t: RK.dkd_loss(s, t, LABELS, temperature=2.0, alpha=0.7, beta=3.0),
            (N, C), (N, C), {"labels": LABELS}, True),
    "DKD[defaults]": ({"type": "DecoupledKDLoss"}, lambda s, t: RK.dkd_loss(s, t, LABELS),
                      (N, C), (N, C), {"labels": LABELS}, True),
    "DIST": ({"type": "DISTLoss", "tau": 2.0, "inter_loss_weight": 0.5, "gamma": 2.0},
             lambda s, t: RK.dist_loss(s, t, temperature=2.0, beta=0.5, gamma=2.0),
             (N, C), (N, C), {}, False),
    "DIST[defaults]": ({"type": "DISTLoss"}, RK.dist_loss, (N, C), (N, C), {}, False),
    "AT": ({"type": "AttentionLoss"}, RK.attention_loss, (2, 3, 6, 5), (2, 4, 6, 5), {}, False),
    "AT[pool both,p3]": ({"type": "ATLoss", "p": 3, "normalize": False},
                         lambda s, t, **kw: RK.attention_loss(s, t, p=3.0, normalize=False, **kw),
                         (2, 3, 8, 5), (2, 4, 5, 7), {}, False),
    "AT[pool student]": ({"type": "AttentionLoss"}, RK.attention_loss,
                         (2, 3, 9, 9), (2, 2, 4, 4), {}, False),
    "RKD": ({"type": "RKDDistanceLoss"}, RK.rkd_distance_loss, (N, 3, 2), (N, 4), {}, False),
    "RKD[squared]": ({"type": "DistanceWiseRKD", "squared": True, "eps": 1e-8},
                     lambda s, t: RK.rkd_distance_loss(s, t, squared=True, eps=1e-8),
                     (N, 7), (N, 7), {}, False),
    "RKDAngle": ({"type": "RKDAngleLoss"}, RK.rkd_angle_loss, (5, 4), (5, 3, 2), {}, False),
    "CRD": ({"type": "CRDLoss", "neg_num": 7, "sample_n": 500, "tau": 0.5},
            lambda s, t: RK.crd_loss(s, t, BANK_T, BANK_S, n_data=500, temperature=0.5),
            (4, 16), (4, 16), {"bank_t": BANK_T, "bank_s": BANK_S}, False),
    "PKT": ({"type": "PKTLoss"}, RK.pkt_loss, (N, 8), (N, 3), {}, False),
}  # fmt: skip


def _inputs(case: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    _, _, s_shape, t_shape, _, _ = CASES[case]
    return randn(s_shape, seed, 2.0), randn(t_shape, seed + 1, 2.0)


@pytest.mark.parametrize("call", ["none", "mean", "sum", "weight"])
@pytest.mark.parametrize("case", list(CASES))
def test_parameter_free_rows_match_the_reference(case, call, backend):
    cfg, ref_fn, _, _, call_opts, has_valid = CASES[case]
    s0, t0 = _inputs(case)
    loss = build_loss({**cfg, "backend": backend})  # AttentionLoss: fused on triton
    # CRD: the teacher embedding is the caller's head output and keeps its gradient
    teacher_grad = case == "CRD"
    s, t = s0.clone().requires_grad_(), t0.clone().requires_grad_(teacher_grad)
    sr, tr = s0.clone().requires_grad_(), t0.clone().requires_grad_(teacher_grad)
    elem = ref_fn(sr, tr)
    if call == "weight" and elem.dim() == 0:
        pytest.skip("a 0-dim loss takes no sample weight (test_zero_dim_losses)")
    kw = {}
    weight = None
    if call == "weight":
        weight = positive_weight(elem.shape)
        kw["weight"] = weight
        if case.startswith("AT"):  # the maps couple the positions: weight 0 masks (spec 12.6)
            elem = ref_fn(sr, tr, keep=weight != 0)
        if case == "CRD":  # a sample of weight 0 is left out of the first call's Z (spec 12.6)
            elem = RK.crd_loss(sr, tr, BANK_T, BANK_S, n_data=500, temperature=0.5,
                               keep=weight != 0)  # fmt: skip
    else:
        kw["reduction_override"] = call
    valid = torch.ones(elem.shape, dtype=torch.bool) if has_valid else None
    reduction = "mean" if call == "weight" else call
    ref = RU.reduce_with_validity(elem, weight, valid, reduction)
    got = loss(s, t, **kw, **call_opts)
    assert got.dtype == D
    assert_close(got, ref)
    leaves, ref_leaves, names = [s], [sr], ["pred"]
    if teacher_grad:
        leaves, ref_leaves, names = [s, t], [sr, tr], ["pred", "target"]
    check_grads(got, ref, leaves, ref_leaves, names)


@pytest.mark.parametrize("case", list(CASES))
def test_the_teacher_gets_no_gradient(case):
    cfg, _, _, _, call_opts, _ = CASES[case]
    s0, t0 = _inputs(case, seed=3)
    s, t = s0.clone().requires_grad_(), t0.clone().requires_grad_()
    build_loss(cfg)(s, t, **call_opts).backward()
    assert s.grad is not None and s.grad.norm() > 0
    if case == "CRD":  # the teacher head's output trains through side(t, bank_s)
        assert t.grad is not None and t.grad.norm() > 0
    else:
        assert t.grad is None


@pytest.mark.parametrize("case", list(CASES))
def test_float32_is_close_to_float64(case):
    cfg, _, _, _, call_opts, _ = CASES[case]
    s, t = _inputs(case, seed=11)
    opts32 = {k: v.float() for k, v in call_opts.items() if v.is_floating_point()}
    opts32 = {**call_opts, **opts32}
    got32 = build_loss(cfg)(s.float(), t.float(), **opts32)
    got64 = build_loss(cfg)(s, t, **call_opts)
    assert got32.dtype == torch.float32 and torch.isfinite(got32)
    assert torch.allclose(got32.double(), got64, rtol=1e-4, atol=1e-6), (got32, got64)


@pytest.mark.parametrize(
    ("cfg", "s", "call"),
    [
        ({"type": "DKDLoss"}, randn((N, C), 1), {"labels": LABELS}),
        ({"type": "DISTLoss", "tau": 3.0}, randn((N, C), 2), {}),
        ({"type": "AttentionLoss"}, randn((2, 3, 4, 4), 3), {}),
        ({"type": "RKDDistanceLoss"}, randn((N, 4), 4), {}),
        ({"type": "RKDAngleLoss"}, randn((N, 4), 5), {}),
        ({"type": "PKTLoss"}, randn((N, 4), 6), {}),
        ({"type": "FeatureMSELoss"}, randn((2, 3, 4, 4), 7), {}),
        ({"type": "FeatureL1Loss"}, randn((2, 3, 4, 4), 8), {}),
        ({"type": "FeatureCosineLoss"}, randn((2, 3, 4, 4), 9), {}),
    ],
)
def test_identical_student_and_teacher_give_zero(cfg, s, call):
    out = build_loss(cfg)(s, s.clone(), reduction_override="sum", **call)
    assert abs(float(out)) < 1e-12, out
    # and a different teacher gives a positive loss
    assert float(build_loss(cfg)(s, s.flip(0) * 1.5 + 0.3, reduction_override="sum", **call)) > 0


def test_zero_dim_losses():
    s, t = randn((N, C), 1), randn((N, C), 2)
    loss = build_loss({"type": "DISTLoss"})
    values = [loss(s, t, reduction_override=r) for r in ("none", "mean", "sum")]
    assert all(v.dim() == 0 and float(v) == float(values[0]) for v in values)
    # "batchmean" is BaseLoss's sum / N, also of a 0-dim l
    assert_close(loss(s, t, reduction_override="batchmean"), values[0] / N)
    with pytest.raises(ValueError, match="weight"):
        loss(s, t, weight=torch.ones(N, dtype=D))
    assert float(loss(s[:0], t[:0])) == 0.0  # an empty batch


# ---------------------------------------------------------------------------------------- DKD


def test_dkd_ignores_labels_out_of_range():
    s0, t = randn((N, C), 21, 2.0), randn((N, C), 22, 2.0)
    labels = LABELS.clone()
    labels[[1, 4]] = torch.tensor([-100, C])
    keep = torch.tensor([0, 2, 3, 5])
    loss = build_loss({"type": "DKDLoss"})
    s = s0.clone().requires_grad_()
    l_none = loss(s, t, labels=labels, reduction_override="none")
    assert torch.all(l_none[[1, 4]] == 0)
    ref_elem = RK.dkd_loss(s0[keep], t[keep], LABELS[keep])
    assert_close(l_none[keep], ref_elem)
    got = loss(s, t, labels=labels)
    ref = RU.reduce_with_validity(ref_elem, None, torch.ones(4, dtype=torch.bool), "mean")
    assert_close(got, ref)  # the mean over the 4 valid samples
    got.backward()
    assert torch.isfinite(s.grad).all() and torch.all(s.grad[[1, 4]] == 0)


def test_dkd_a_teacher_ruling_classes_out_is_finite():
    s0, t = randn((N, C), 23, 2.0), randn((N, C), 24, 2.0)
    t[0, 1] = float("-inf")  # Q_c = 0 for one class != y
    t[1, LABELS[1]] = float("-inf")  # Q_y = 0
    t[2] = float("-inf")
    t[2, LABELS[2]] = 0.0  # all the teacher's mass on y: 1 - Q_y = 0, NCKD's softmax
    s = s0.clone().requires_grad_()
    got = build_loss({"type": "DKDLoss"})(s, t, labels=LABELS, reduction_override="none")
    got.sum().backward()
    assert torch.isfinite(got).all() and torch.isfinite(s.grad).all()
    for n in (0, 1, 2):
        ref = RK.dkd_loss(s0[n : n + 1], t[n : n + 1], LABELS[n : n + 1])
        assert_close(got[n : n + 1].detach(), ref)


def test_dkd_decomposes_kd():
    # with alpha = 1 and beta = 1 - Q_y per sample DKD is KD (Zhao et al., eq. 3): check the
    # decomposition KD = TCKD + (1 - Q_y) NCKD through the two single-term configurations
    s, t = randn((N, C), 25, 2.0), randn((N, C), 26, 2.0)
    tckd = build_loss({"type": "DKDLoss", "alpha": 1.0, "beta": 0.0})
    nckd = build_loss({"type": "DKDLoss", "alpha": 0.0, "beta": 1.0})
    kd = build_loss({"type": "KDLoss", "backend": "torch"})
    q_y = torch.softmax(t / 4.0, 1).gather(1, LABELS[:, None])[:, 0]
    total = tckd(s, t, labels=LABELS, reduction_override="none") + (1 - q_y) * nckd(
        s, t, labels=LABELS, reduction_override="none"
    )
    assert_close(total, kd(s, t, reduction_override="none"))


# ------------------------------------------------------------------------------ Feature losses

FEATURES = {
    "FeatureMSELoss": RK.feature_mse_loss,
    "FeatureL1Loss": RK.feature_l1_loss,
    "FeatureCosineLoss": RK.feature_cosine_loss,
}


@pytest.mark.parametrize("call", ["none", "mean", "sum", "weight"])
@pytest.mark.parametrize("shape", [(3, 4), (2, 4, 3, 5), (2, 4, 6)])
@pytest.mark.parametrize("align", [True, False])
@pytest.mark.parametrize("name", list(FEATURES))
def test_feature_losses_match_the_reference(name, align, shape, call, backend):
    normalize = shape == (2, 4, 3, 5) or call == "sum"
    ct = 3 if align else shape[1]
    cfg = {"type": name, "normalize": normalize, "backend": backend}  # fused on triton
    if align:
        cfg.update(student_channels=shape[1], teacher_channels=ct)
    loss = build_loss(cfg).double()
    assert (loss.align is not None) == align
    s0, t = randn(shape, 41), randn((shape[0], ct, *shape[2:]), 42)
    s, sr = s0.clone().requires_grad_(), s0.clone().requires_grad_()
    leaves, ref_leaves, names, kw = [s], [sr], ["pred"], {}
    if align:
        w = loss.align.weight.detach().clone().requires_grad_()
        b = loss.align.bias.detach().clone().requires_grad_()
        kw = {"weight": w, "bias": b}
        leaves += [loss.align.weight, loss.align.bias]
        ref_leaves += [w, b]
        names += ["align.weight", "align.bias"]
    elem = FEATURES[name](sr, t, normalize=normalize, **kw)
    expect_shape = (shape[0], *shape[2:]) if name == "FeatureCosineLoss" else t.shape
    assert tuple(elem.shape) == tuple(expect_shape)
    weight = positive_weight(elem.shape) if call == "weight" else None
    got = loss(s, t, weight=weight, reduction_override=None if weight is not None else call)
    ref = RU.reduce_with_validity(elem, weight, None, "mean" if weight is not None else call)
    assert_close(got, ref)
    check_grads(got, ref, leaves, ref_leaves, names)


def test_feature_align_is_created_only_for_differing_channels():
    assert build_loss({"type": "FeatureMSELoss"}).align is None
    assert build_loss({"type": "FeatureMSELoss", "student_channels": 4}).align is None
    same = build_loss({"type": "FeatureL1Loss", "student_channels": 4, "teacher_channels": 4})
    assert same.align is None and not list(same.parameters())
    diff = build_loss({"type": "FeatureCosineLoss", "student_channels": 4, "teacher_channels": 6})
    assert isinstance(diff.align, torch.nn.Conv2d) and diff.align.weight.shape == (6, 4, 1, 1)
    assert {n for n, _ in diff.named_parameters()} == {"align.weight", "align.bias"}
    # a student of the right channel count with the identity: channels must match
    with pytest.raises(ValueError, match="pred"):
        same(randn((2, 3, 2, 2)), randn((2, 3, 2, 2)))


# ------------------------------------------------------------------------------------------ MGD


def _mgd_reference(loss, s, t, mask, alpha):
    """The reference MGD with copies of the module's parameters as leaves."""
    params = {n: p.detach().clone().requires_grad_() for n, p in loss.named_parameters()}
    gen = (params["generation.0.weight"], params["generation.0.bias"],
           params["generation.2.weight"], params["generation.2.bias"])  # fmt: skip
    ref = RK.mgd_loss(s, t, mask, gen, align_weight=params.get("align.weight"),
                      align_bias=params.get("align.bias"), alpha_mgd=alpha)  # fmt: skip
    return ref, params


@pytest.mark.parametrize("cs", [3, 2])
def test_mgd_with_a_given_mask_matches_the_reference(cs):
    alpha = 0.3
    loss = build_loss({"type": "MGDLoss", "teacher_channels": 3, "student_channels": cs,
                       "alpha_mgd": alpha}).double()  # fmt: skip
    assert (loss.align is not None) == (cs != 3)
    s0, t = randn((2, cs, 5, 4), 51), randn((2, 3, 5, 4), 52)
    mask = (torch.rand((2, 1, 5, 4), generator=_gen(53)) >= 0.65).to(D)
    s, sr = s0.clone().requires_grad_(), s0.clone().requires_grad_()
    got = loss(s, t, mask=mask)
    assert got.dim() == 0
    assert torch.equal(loss(s, t, mask=mask), got)  # deterministic
    ref, params = _mgd_reference(loss, sr, t, mask, alpha)
    assert_close(got, ref)
    for r in ("none", "sum"):
        assert torch.equal(loss(s, t, mask=mask, reduction_override=r), got)
    names = list(params)
    lib_params = dict(loss.named_parameters())
    check_grads(got, ref, [s, *(lib_params[n] for n in names)], [sr, *params.values()],
                ["pred", *names])  # fmt: skip
    # a bool mask is the same mask
    assert torch.equal(loss(s, t, mask=mask.bool()), got)


def test_mgd_draws_its_mask_with_the_generator():
    lam = 0.4
    loss = build_loss({"type": "MGDLoss", "teacher_channels": 3, "lambda_mgd": lam}).double()
    s, t = randn((2, 3, 6, 5), 54), randn((2, 3, 6, 5), 55)
    a = loss(s, t, generator=_gen(7))
    b = loss(s, t, generator=_gen(7))
    c = loss(s, t, generator=_gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # M = 0 where u < lambda_mgd, u = torch.rand([N,1,H,W]) from the same generator
    u = torch.rand((2, 1, 6, 5), generator=_gen(7), dtype=D)
    ref, _ = _mgd_reference(loss, s, t, (u >= lam).to(D), 7e-5)
    assert_close(a, ref.detach())
    # lambda 0 masks nothing, lambda 1 masks everything
    ones = torch.ones((2, 1, 6, 5), dtype=D)
    for lam_, m in ((0.0, ones), (1.0, ones * 0)):
        other = build_loss({"type": "MGDLoss", "teacher_channels": 3, "lambda_mgd": lam_}).double()
        other.load_state_dict(loss.state_dict())
        assert_close(other(s, t), other(s, t, mask=m))
    # no generator: the global one, a finite loss
    assert torch.isfinite(loss(s, t))


def test_mgd_options_and_errors():
    loss = build_loss({"type": "MGDLoss", "teacher_channels": 4})
    assert loss.options["alpha_mgd"] == 7e-5 and loss.options["lambda_mgd"] == 0.65
    assert loss.options["student_channels"] == 4 and loss.align is None
    assert loss.generation[0].weight.shape == (4, 4, 3, 3)
    with pytest.raises(ValueError, match="teacher_channels"):
        build_loss({"type": "MGDLoss"})
    with pytest.raises(ValueError, match="lambda_mgd"):
        build_loss({"type": "MGDLoss", "teacher_channels": 4, "lambda_mgd": 1.5})
    with pytest.raises(ValueError, match="student_channels"):
        build_loss({"type": "MGDLoss", "teacher_channels": 4, "student_channels": 0})
    with pytest.raises(ValueError, match="mask"):
        build_loss({"type": "MGDLoss", "teacher_channels": 4, "mask": torch.ones(1, 1, 1, 1)})
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="mask"):
        loss(s, t, mask=torch.ones(2, 4, 3, 3))
    with pytest.raises(ValueError, match="mask, generator"):
        loss(s, t, mask=torch.ones(2, 1, 3, 3), generator=_gen(0))
    with pytest.raises(TypeError, match="generator"):
        loss(s, t, generator=0)
    with pytest.raises(ValueError, match="pred"):
        loss(torch.randn(2, 3, 3, 3), t)
    with pytest.raises(ValueError, match="target"):
        loss(s, torch.randn(2, 4, 3, 2))
    with pytest.raises(TypeError, match="pred"):  # a float32 loss and float64 inputs
        loss(s.double(), t.double())
    with pytest.raises(ValueError, match="labels"):
        loss(s, t, labels=torch.zeros(2))


# --------------------------------------------------------------------------------- RKD edges


@pytest.mark.parametrize("name", ["RKDDistanceLoss", "RKDAngleLoss"])
def test_rkd_of_one_sample_is_zero_and_finite(name):
    s = randn((1, 5), 61).requires_grad_()
    out = build_loss({"type": name})(s, randn((1, 3), 62))
    out.backward()
    assert float(out.detach()) == 0.0 and torch.isfinite(s.grad).all() and s.grad.abs().max() == 0


def test_rkd_distance_with_repeated_rows_is_finite():
    s0 = randn((4, 3), 63)
    s0[2] = s0[1]  # two equal embeddings: a distance clamped at sqrt(eps)
    s = s0.clone().requires_grad_()
    t = randn((4, 3), 64)
    got = build_loss({"type": "RKDDistanceLoss"})(s, t)
    sr = s0.clone().requires_grad_()
    ref = RK.rkd_distance_loss(sr, t).mean()
    assert_close(got, ref)
    check_grads(got, ref, [s], [sr], ["pred"])


def test_rkd_scale_invariance():
    # d / mu and the angles do not change when the student is scaled and shifted
    s, t = randn((N, 4), 65), randn((N, 4), 66)
    for name in ("RKDDistanceLoss", "RKDAngleLoss"):
        loss = build_loss({"type": name})
        assert_close(loss(s * 3.0 + 1.0, t), loss(s, t))


# ---------------------------------------------------------------------------------------- CRD


def _crd_inputs(seed: int, n: int = 4, k: int = 7, d: int = 16):
    return (randn((n, d), seed), randn((n, d), seed + 1), unit_rows((n, k + 1, d), seed + 2),
            unit_rows((n, k + 1, d), seed + 3))  # fmt: skip


def test_crd_normaliser_is_set_on_the_first_call_then_frozen():
    loss = build_loss({"type": "CRDLoss", "neg_num": 7, "n_data": 300})
    assert float(loss.z_s) == -1.0 and float(loss.z_t) == -1.0  # unset
    assert {"z_s", "z_t"} <= set(loss.state_dict())
    s, t, bt, bs = _crd_inputs(70)
    first = loss(s, t, bank_t=bt, bank_s=bs, reduction_override="none")
    z_s = RK.crd_normalizer(s, bt, temperature=0.07, n_data=300)
    z_t = RK.crd_normalizer(t, bs, temperature=0.07, n_data=300)
    assert loss.z_s.dtype == D and loss.z_s.device == s.device
    assert_close(loss.z_s, z_s, "z_s")
    assert_close(loss.z_t, z_t, "z_t")
    assert_close(first, RK.crd_loss(s, t, bt, bs, n_data=300))
    # a second call with other inputs keeps Z
    s2, t2, bt2, bs2 = _crd_inputs(80)
    s2r = s2.clone().requires_grad_()
    s2 = s2.clone().requires_grad_()
    second = loss(s2, t2, bank_t=bt2, bank_s=bs2)
    assert_close(loss.z_s, z_s, "z_s")
    assert_close(loss.z_t, z_t, "z_t")
    ref = RK.crd_loss(s2r, t2, bt2, bs2, n_data=300, z_s=z_s, z_t=z_t).mean()
    assert_close(second, ref)
    check_grads(second, ref, [s2], [s2r], ["pred"])
    fresh = RK.crd_loss(s2, t2, bt2, bs2, n_data=300).mean()  # what an unfrozen Z would give
    assert not torch.allclose(second, fresh, rtol=1e-6)
    # the state dict carries Z
    other = build_loss({"type": "CRDLoss", "neg_num": 7, "n_data": 300})
    other.load_state_dict(loss.state_dict())
    assert_close(other(s2, t2, bank_t=bt2, bank_s=bs2), second)
    # float32 inputs use the same (float64-held) Z
    frozen = loss.z_s.clone()
    got32 = loss(s2.float(), t2.float(), bank_t=bt2.float(), bank_s=bs2.float())
    assert loss.z_s.dtype == D and torch.equal(loss.z_s, frozen)
    assert got32.dtype == torch.float32 and torch.allclose(got32.double(), second, rtol=1e-5)


def test_crd_an_empty_first_batch_leaves_the_normaliser_unset():
    loss = build_loss({"type": "CRDLoss", "neg_num": 7, "n_data": 300})
    s, t, bt, bs = _crd_inputs(90)
    out = loss(s[:0], t[:0], bank_t=bt[:0], bank_s=bs[:0])
    assert float(out) == 0.0 and float(loss.z_s) == -1.0
    loss(s, t, bank_t=bt, bank_s=bs)
    assert_close(loss.z_s, RK.crd_normalizer(s, bt, temperature=0.07, n_data=300), "z_s")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_crd_normaliser_lives_on_the_inputs_device():
    loss = build_loss({"type": "CRDLoss", "neg_num": 7, "n_data": 300})
    s, t, bt, bs = (x.cuda() for x in _crd_inputs(95))
    loss(s, t, bank_t=bt, bank_s=bs)
    assert loss.z_s.device == s.device and loss.z_t.device == s.device
    ref = RK.crd_normalizer(s.cpu(), bt.cpu(), temperature=0.07, n_data=300)
    assert_close(loss.z_s.cpu(), ref, "z_s")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_random_mask_and_normaliser_stay_on_the_device_without_a_sync():
    dev = torch.device("cuda")
    mgd = build_loss({"type": "MGDLoss", "teacher_channels": 4}).double().to(dev)
    crd = build_loss({"type": "CRDLoss", "neg_num": 7, "n_data": 300}).to(dev)
    s, t = randn((2, 4, 6, 5), 97).to(dev), randn((2, 4, 6, 5), 98).to(dev)
    cs, ct, bt, bs = (x.to(dev) for x in _crd_inputs(99))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        a = mgd(s, t, generator=torch.Generator(device=dev).manual_seed(3))
        b = mgd(s, t, generator=torch.Generator(device=dev).manual_seed(3))
        c = crd(cs, ct, bank_t=bt, bank_s=bs)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(a, b) and a.device == dev and c.device == dev
    assert crd.z_s.device == dev and float(crd.z_s) > 0


def test_crd_errors():
    s, t, bt, bs = _crd_inputs(96)
    loss = build_loss({"type": "CRDLoss", "neg_num": 7, "n_data": 300})
    assert loss.options["temperature"] == 0.07 and loss.options["eps"] == 1e-7
    assert build_loss({"type": "CRDLoss", "n_data": 10}).options["neg_num"] == 16384
    with pytest.raises(ValueError, match="bank_t"):
        loss(s, t, bank_s=bs)
    with pytest.raises(ValueError, match="bank_s"):
        loss(s, t, bank_t=bt)
    with pytest.raises(ValueError, match="neg_num"):
        build_loss({"type": "CRDLoss", "n_data": 300})(s, t, bank_t=bt, bank_s=bs)
    with pytest.raises(ValueError, match="bank_t"):
        loss(s, t, bank_t=bt[..., :8], bank_s=bs)
    with pytest.raises(TypeError, match="bank_s"):
        loss(s, t, bank_t=bt, bank_s=bs.long())
    with pytest.raises(ValueError, match="target"):
        loss(s, t[:, :8], bank_t=bt, bank_s=bs)
    with pytest.raises(ValueError, match="n_data"):
        build_loss({"type": "CRDLoss"})
    with pytest.raises(ValueError, match="n_data"):
        build_loss({"type": "CRDLoss", "n_data": 0})
    with pytest.raises(ValueError, match="neg_num"):
        build_loss({"type": "CRDLoss", "n_data": 10, "neg_num": 0})
    with pytest.raises(ValueError, match="temperature"):
        build_loss({"type": "CRDLoss", "n_data": 10, "tau": 0.0})
    with pytest.raises(ValueError, match="sample_n"):
        build_loss({"type": "CRDLoss", "n_data": 10, "sample_n": 10})


# ------------------------------------------------------------------------- options and errors


def test_registered_names_defaults_and_aliases():
    for name, alias in [("DKDLoss", "DecoupledKDLoss"), ("AttentionLoss", "ATLoss"),
                        ("RKDDistanceLoss", "DistanceWiseRKD"),
                        ("RKDAngleLoss", "AngleWiseRKD")]:  # fmt: skip
        assert LOSSES.get(name) is LOSSES.get(alias)
    for name in ("DISTLoss", "FeatureMSELoss", "FeatureL1Loss", "FeatureCosineLoss", "PKTLoss"):
        assert name in LOSSES
    dkd = build_loss({"type": "DKDLoss"})
    assert dkd.reduction == "mean" and dkd.loss_name == "loss_dkd"
    assert {k: dkd.options[k] for k in ("temperature", "alpha", "beta")} == {
        "temperature": 4.0, "alpha": 1.0, "beta": 8.0}  # fmt: skip
    dist = build_loss({"type": "DISTLoss", "intra_loss_weight": 3.0})
    assert dist.options == {"temperature": 1.0, "beta": 1.0, "gamma": 3.0}
    at = build_loss({"type": "ATLoss"})
    assert at.options == {"p": 2.0, "normalize": True} and at.loss_name == "loss_attention"
    assert build_loss({"type": "RKDDistanceLoss"}).options == {"eps": 1e-12, "squared": False}
    assert build_loss({"type": "RKDAngleLoss"}).options == {"eps": 1e-12}
    assert build_loss({"type": "PKTLoss"}).options == {"eps": 1e-7}
    assert build_loss({"type": "FeatureMSELoss"}).options == {
        "normalize": False, "student_channels": None, "teacher_channels": None}  # fmt: skip
    # loss_weight scales the result
    s, t = randn((N, 4), 1), randn((N, 4), 2)
    one = build_loss({"type": "RKDAngleLoss"})(s, t)
    assert_close(build_loss({"type": "RKDAngleLoss", "loss_weight": 50})(s, t), one * 50)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"type": "DKDLoss", "temperature": 0.0}, "temperature"),
        ({"type": "DKDLoss", "tau": -1.0}, "tau|temperature"),
        ({"type": "DKDLoss", "tau": 2.0, "temperature": 3.0}, "tau"),
        ({"type": "DKDLoss", "alpha": "1"}, "alpha"),
        ({"type": "DKDLoss", "labels": torch.zeros(2, dtype=torch.long)}, "labels"),
        ({"type": "DISTLoss", "temperature": 0}, "temperature"),
        ({"type": "DISTLoss", "gamma": float("nan")}, "gamma"),
        ({"type": "FeatureMSELoss", "normalize": 1}, "normalize"),
        ({"type": "FeatureL1Loss", "teacher_channels": 2.5}, "teacher_channels"),
        ({"type": "AttentionLoss", "p": 0.5}, "p"),
        ({"type": "AttentionLoss", "normalize": None}, "normalize"),
        ({"type": "RKDDistanceLoss", "eps": 0.0}, "eps"),
        ({"type": "RKDDistanceLoss", "squared": 1}, "squared"),
        ({"type": "RKDAngleLoss", "eps": -1.0}, "eps"),
        ({"type": "PKTLoss", "eps": 0.0}, "eps"),
        ({"type": "PKTLoss", "margin": 1.0}, "margin"),
    ],
)
def test_bad_options_are_named(cfg, match):
    with pytest.raises((ValueError, TypeError), match=match):
        build_loss(cfg)


def _bad_inputs():
    s, t = randn((N, C)), randn((N, C), 1)
    f4, f3 = randn((2, 3, 4, 4)), randn((2, 3, 4))
    aligned = {"type": "FeatureMSELoss", "student_channels": 3, "teacher_channels": 5}
    return [
        ({"type": "DKDLoss"}, (s, t), {}, ValueError, "labels"),
        ({"type": "DKDLoss"}, (s, t), {"labels": LABELS[:3]}, ValueError, "labels"),
        ({"type": "DKDLoss"}, (s, t), {"labels": LABELS.double()}, TypeError, "labels"),
        ({"type": "DKDLoss"}, (s, t[:, :4]), {"labels": LABELS}, ValueError, "target"),
        ({"type": "DKDLoss"}, (s[:, :1], t[:, :1]), {"labels": LABELS}, ValueError, "pred"),
        ({"type": "DKDLoss"}, (f4, f4), {"labels": LABELS}, ValueError, "pred"),
        ({"type": "DKDLoss"}, (s.long(), t), {"labels": LABELS}, TypeError, "pred"),
        ({"type": "DKDLoss"}, (s, t), {"mask": LABELS}, ValueError, "mask"),
        ({"type": "DISTLoss"}, (s, t[:4]), {}, ValueError, "target"),
        ({"type": "DISTLoss"}, (s, [1.0]), {}, TypeError, "target"),
        ({"type": "FeatureMSELoss"}, (f4, f4[:, :2]), {}, ValueError, "target"),
        ({"type": "FeatureL1Loss"}, (f4, f4[..., :3]), {}, ValueError, "target"),
        ({"type": "FeatureCosineLoss"}, (randn(3), randn(3)), {}, ValueError, "pred"),
        (aligned, (f4[:, :2], randn((2, 5, 4, 4))), {}, ValueError, "student_channels"),
        (aligned, (f4, f4), {}, ValueError, "teacher_channels"),
        (aligned, (f4, randn((2, 5, 4, 3))), {}, ValueError, "target"),
        (aligned, (f4, randn((2, 5, 4, 4))), {}, TypeError, "pred"),  # a float32 align
        ({"type": "AttentionLoss"}, (f3, f3), {}, ValueError, "pred"),
        ({"type": "AttentionLoss"}, (f4, f4[:1]), {}, ValueError, "target"),
        ({"type": "RKDDistanceLoss"}, (randn(4), randn(4)), {}, ValueError, "pred"),
        ({"type": "RKDDistanceLoss"}, (s, t[:5]), {}, ValueError, "target"),
        ({"type": "RKDAngleLoss"}, (s, randn(N)), {}, ValueError, "target"),
        ({"type": "PKTLoss"}, (s, f3), {}, ValueError, "target"),
        ({"type": "PKTLoss"}, (f3, f3), {}, ValueError, "pred"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_inputs())))
def test_bad_inputs_are_named(index):
    cfg, args, call, exc, match = _bad_inputs()[index]
    with pytest.raises(exc, match=match):
        build_loss(cfg)(*args, **call)


@pytest.mark.parametrize("case", ["DKD", "RKD", "CRD", "AT[pool both,p3]"])
def test_traces_without_graph_breaks(case):
    cfg, _, _, _, call, _ = CASES[case]
    s, t = _inputs(case, seed=13)
    loss = build_loss(cfg)
    compiled = torch.compile(lambda a, b: loss(a, b, **call), backend="eager", fullgraph=True)
    assert_close(compiled(s, t), build_loss(cfg)(s, t, **call))


def test_mgd_traces_without_graph_breaks():
    # (a torch.Generator argument is not traceable by dynamo; the global generator is)
    loss = build_loss({"type": "MGDLoss", "teacher_channels": 4, "student_channels": 3}).double()
    s, t = randn((2, 3, 4, 4), 14), randn((2, 4, 4, 4), 15)
    compiled = torch.compile(lambda a, b: loss(a, b), backend="eager", fullgraph=True)
    torch.manual_seed(4)
    got = compiled(s, t)
    torch.manual_seed(4)
    assert_close(got, loss(s, t))


DISTILL_YAML = """
loss:
  task_loss:
    type: CrossEntropyLoss
    loss_weight: 1.0
  kd_loss:
    type: KnowledgeDistillationLoss
    temperature: 4.0
    loss_weight: 0.5
  feature_loss:
    type: FeatureMSELoss
    loss_weight: 0.1
    normalize: true
"""


def test_seed_distillation_config(backend):
    """The seed's distillation example, built from YAML, against the float64 references."""
    yaml = pytest.importorskip("yaml")
    cfg = yaml.safe_load(DISTILL_YAML)["loss"]
    crit = build_loss({k: {**v, "backend": backend} for k, v in cfg.items()})
    s, t, y = randn((6, 5), 1), randn((6, 5), 2), LABELS
    fs, ft = randn((6, 8, 3, 3), 3), randn((6, 8, 3, 3), 4)
    got = crit["task_loss"](s, y) + crit["kd_loss"](s, t) + crit["feature_loss"](fs, ft)
    kd = RK.knowledge_distillation_loss(s, t, temperature=4.0).sum() / 6
    feat = RK.feature_mse_loss(fs, ft, normalize=True).mean()
    ce = F.cross_entropy(s, y, reduction="sum") / (6 + float(torch.finfo(torch.float32).eps))
    expect = ce + 0.5 * kd + 0.1 * feat  # CE "mean": the non-ignored count + eps (spec 12.2)
    assert torch.allclose(got, expect, rtol=1e-10, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(FEATURES))
def test_fused_feature_losses_in_low_precision(name, dtype, backend):
    s0, t = randn((2, 16, 4, 5), 11), randn((2, 16, 4, 5), 12)
    loss = build_loss({"type": name, "normalize": True, "backend": backend})
    s = s0.to(dtype).requires_grad_()
    got = loss(s, t.to(dtype))
    got.backward()
    sr = s0.to(dtype).double().requires_grad_()
    ref = FEATURES[name](sr, t.to(dtype).double(), normalize=True).mean()
    ref.backward()
    assert got.dtype == torch.float32 and s.grad.dtype == dtype
    assert abs(float(got) - float(ref)) <= 1e-5 * abs(float(ref)) + 1e-7
    assert_grad_close(s.grad, sr.grad, 1e-5 if dtype == torch.float32 else 1e-2)


# ------------------------------------------------- audit fixes: masking, scale, edges, extremes


def _grad_of(loss_fn, x):
    x = x.clone().requires_grad_()
    out = loss_fn(x)
    (g,) = torch.autograd.grad(out.sum(), x)
    return out.detach(), g


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("name", list(FEATURES))
def test_feature_zero_weight_hides_non_finite_inputs(name, normalize, backend):
    # spec 12.2 rule 1: a position of weight 0 (every channel) whose teacher is NaN or whose
    # student is inf contributes exactly 0 to the value and to the gradient
    s0, t0 = randn((2, 3, 4, 4), 61), randn((2, 3, 4, 4), 62)
    cos = name == "FeatureCosineLoss"
    w_pos = torch.ones(2, 4, 4, dtype=D)
    w_pos[0, 1, 2] = 0.0
    weight = w_pos if cos else w_pos[:, None].expand(2, 3, 4, 4)
    # the reference: the same formula on finite inputs (any finite value there gives the same)
    clean_s, clean_t = s0, t0
    loss = build_loss({"type": name, "normalize": normalize, "backend": backend})
    for bad_s, bad_t in ((s0, float("nan")), (float("inf"), t0)):
        s, t = s0.clone(), t0.clone()
        if isinstance(bad_t, float):
            t[0, :, 1, 2] = bad_t
        else:
            s[0, :, 1, 2] = bad_s
        for red in ("mean", "sum", "none"):
            got, g = _grad_of(
                lambda x, t=t, red=red: loss(x, t, weight=weight, reduction_override=red), s
            )
            ref, rg = _grad_of(
                lambda x, red=red: RU.reduce_with_validity(
                    FEATURES[name](x, clean_t, normalize=normalize), weight, None, red
                ),
                clean_s,
            )
            assert_close(got, ref)
            assert torch.isfinite(g).all() and g[0, :, 1, 2].abs().max() == 0
            assert_grad_close(g, rg, GTOL)


def test_feature_zero_weight_of_single_elements_hides_non_finite_inputs(backend):
    # the plain elementwise losses mask element by element (no coupling between channels)
    s0, t0 = randn((2, 3, 4), 63), randn((2, 3, 4), 64)
    weight = torch.ones(2, 3, 4, dtype=D)
    weight[1, 2, 3] = 0.0
    t = t0.clone()
    t[1, 2, 3] = float("nan")
    clean = t0
    for name in ("FeatureMSELoss", "FeatureL1Loss"):
        loss = build_loss({"type": name, "backend": backend})
        got, g = _grad_of(lambda x, loss=loss: loss(x, t, weight=weight), s0)
        ref, rg = _grad_of(
            lambda x, f=FEATURES[name]: RU.reduce_with_validity(f(x, clean), weight, None, "mean"),
            s0,
        )
        assert_close(got, ref)
        assert_grad_close(g, rg, GTOL)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize(("s_shape", "t_shape"), [((2, 3, 4, 6), (2, 5, 4, 6)),
                                                  ((2, 3, 8, 12), (2, 2, 4, 6))])  # fmt: skip
def test_attention_zero_weight_hides_non_finite_inputs(s_shape, t_shape, normalize, backend):
    # spec 12.2 rule 1 for maps that couple the positions: a position of weight 0 is left out of
    # the norms, and a NaN teacher or an inf student there (before the pooling: the student is
    # pooled 2x2 in the second case) adds exactly 0 to the value and the gradient
    s0, t0 = randn(s_shape, 71), randn(t_shape, 72)
    weight = torch.rand((2, 24), generator=_gen(73), dtype=D) + 0.5
    weight[0, 9] = 0.0  # position (1, 3) of the [4, 6] maps
    weight[1, :4] = 0.0
    keep = weight != 0
    loss = build_loss({"type": "AttentionLoss", "normalize": normalize, "backend": backend})
    fs = s_shape[2] // 4  # the student cells pooled into one position
    for bad in ("t", "s"):
        s, t = s0.clone(), t0.clone()
        if bad == "t":
            t[0, :, 1, 3] = float("nan")
        else:
            s[0, 1, fs * 1, fs * 3] = float("inf")
        for red in ("mean", "sum", "none"):
            got, g = _grad_of(
                lambda x, t=t, red=red: loss(x, t, weight=weight, reduction_override=red), s
            )
            ref, rg = _grad_of(
                lambda x, red=red: RU.reduce_with_validity(
                    RK.attention_loss(x, t0, normalize=normalize, keep=keep), weight, None, red
                ),
                s0,
            )
            assert_close(got, ref)
            assert torch.isfinite(g).all()
            assert g[0, :, fs : 2 * fs, 3 * fs : 4 * fs].abs().max() == 0
            assert_grad_close(g, rg, GTOL)
    # the masked positions are out of the norms: not the unmasked maps times the weight
    plain = RU.reduce_with_validity(RK.attention_loss(s0, t0, normalize=normalize), weight,
                                    None, "sum")  # fmt: skip
    masked = loss(s0, t0, weight=weight, reduction_override="sum")
    assert not torch.allclose(masked, plain, rtol=1e-6) or not normalize


NORM_CASES = [("FeatureCosineLoss", False), ("FeatureCosineLoss", True),
              ("FeatureMSELoss", True), ("FeatureL1Loss", True)]  # fmt: skip


@pytest.mark.parametrize("scale", [1e20, 1e-20, 1e-30, 1e-35])
@pytest.mark.parametrize(("name", "normalize"), NORM_CASES)
def test_feature_norms_at_any_scale(name, normalize, scale, backend):
    # float32 features of 1e20 (squares overflow) or 1e-20 .. 1e-35 (squares underflow): the
    # norms are max-scaled, so float32 meets the float64 reference (which has the range) to 1e-5
    # (the teacher at scale 1 here; both tiny: test_feature_losses_with_both_inputs_tiny)
    s, t = randn((2, 5, 3, 4), 65), randn((2, 5, 3, 4), 66)
    loss = build_loss({"type": name, "normalize": normalize, "backend": backend})
    for red in ("mean", "none"):
        got, g = _grad_of(
            lambda x, red=red: loss(x, t.float(), reduction_override=red), (s * scale).float()
        )
        ref, rg = _grad_of(
            lambda x, red=red: RU.reduce_with_validity(
                FEATURES[name](x, t.float().double(), normalize=normalize), None, None, red
            ),
            (s * scale).float().double(),
        )
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-7), (got, ref)
        assert_grad_close(g, rg, 1e-5)


@pytest.mark.parametrize("scale", [1e-28, 1e-30, 1e-35])
@pytest.mark.parametrize(("name", "normalize"), NORM_CASES)
def test_feature_losses_with_both_inputs_tiny(name, normalize, scale, backend):
    # spec 12.6 "1e-30 gives the float64 values": with s and t both tiny the cosine's clamped
    # norms made the gradient pass through float32 subnormals (qt qa = 1e-44): relative error
    # 3e-2 at 1e-30, the gradient flushed to 0 at 1e-35 (torch and triton)
    s, t = randn((2, 5, 3, 4), 117), randn((2, 5, 3, 4), 118)
    t32 = (t * scale).float()
    loss = build_loss({"type": name, "normalize": normalize, "backend": backend})
    for red in ("sum", "none"):
        got, g = _grad_of(lambda x, red=red: loss(x, t32, reduction_override=red),
                          (s * scale).float())  # fmt: skip
        ref, rg = _grad_of(
            lambda x, red=red: RU.reduce_with_validity(
                FEATURES[name](x, t32.double(), normalize=normalize), None, None, red
            ),
            (s * scale).float().double(),
        )
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-7), (got, ref)
        assert rg.norm() > 0
        assert_grad_close(g, rg, 1e-5)


@pytest.mark.parametrize(("p", "scale"), [(2.0, 1e20), (2.0, 1e-20), (1.5, 1e20), (50.0, 1.0),
                                          (50.0, 1e20), (3.0, 1e-10)])  # fmt: skip
def test_attention_at_any_scale_and_large_p(p, scale, backend):
    # float32 features of 1e20 or 1e-20, and p = 50 (whose powers of ordinary features overflow
    # the norm's squares): the float64 reference on the same input where float64 holds
    # abs(F)^p; beyond (1e20^50), that of the unscaled problem (a(F) is homogeneous of degree
    # p, so normalize(a) is scale-invariant where its norm is not clamped; the gradient scales
    # by 1/scale)
    s, t = randn((2, 3, 4, 5), 67), randn((2, 4, 4, 5), 68)
    loss = build_loss({"type": "AttentionLoss", "p": p, "backend": backend})
    x32 = (s * scale).float()
    got, g = _grad_of(lambda x: loss(x, t.float()), x32)
    unscaled = p * abs(math.log10(scale)) > 200
    ref, rg = _grad_of(lambda x: RK.attention_loss(x, t.float().double(), p=p).mean(),
                       x32.double() / scale if unscaled else x32.double())  # fmt: skip
    assert torch.isfinite(got) and abs(float(got) - float(ref)) <= 1e-5 * abs(float(ref))
    assert_grad_close(g.double() * (scale if unscaled else 1.0), rg, 1e-5)


def test_attention_large_p_on_the_audit_input(backend):
    # the audit's input (zeros, p = 50): the value was 0.0625 for 0.125; here the maps are
    # one-hot to 1e-13, so the gradient (norm 3e-12) is below float32's resolution of its
    # terms and only its finiteness is asserted
    g32 = torch.Generator().manual_seed(7)
    s = torch.randn(2, 3, 4, 4, generator=g32)
    t = torch.randn(2, 4, 4, 4, generator=g32)
    s[0, :, 0, 0] = 0
    s[1, 0, 1, 1] = 0
    loss = build_loss({"type": "AttentionLoss", "p": 50, "backend": backend})
    got, g = _grad_of(lambda x: loss(x, t), s)
    ref = RK.attention_loss(s.double(), t.double(), p=50.0).mean()
    assert abs(float(got) - float(ref)) <= 1e-5 * float(ref) and torch.isfinite(g).all()


@pytest.mark.parametrize(
    ("name", "scale"),
    [("PKTLoss", 1e30), ("PKTLoss", 1e-30), ("RKDAngleLoss", 1e30), ("CRDLoss", 1e30)],
)
def test_norms_of_the_embedding_losses_at_any_scale(name, scale, backend):
    # PKT's e / (||e|| + eps), RKD's and CRD's F.normalize: the norms are max-scaled
    cfg = {"type": name, "backend": backend}
    s, t = randn((5, 6), 69), randn((5, 4), 70)
    call = {}
    if name == "PKTLoss":
        ref_fn = RK.pkt_loss
    elif name == "RKDAngleLoss":
        ref_fn = RK.rkd_angle_loss
    else:  # CRD: the student side normalises f; t and the banks at their own scale
        bank_t, bank_s = unit_rows((5, 4, 6), 71).float(), unit_rows((5, 4, 6), 72).float()
        t = randn((5, 6), 73)
        cfg.update(neg_num=3, n_data=50, tau=0.5)
        call = {"bank_t": bank_t, "bank_s": bank_s}

        def ref_fn(a, b):
            return RK.crd_loss(a, b, bank_t.double(), bank_s.double(), n_data=50, temperature=0.5)

    loss = build_loss(cfg)
    got, g = _grad_of(lambda x: loss(x, t.float(), **call), (s * scale).float())
    ref, rg = _grad_of(lambda x: ref_fn(x, t.float().double()).mean(), (s * scale).float().double())
    assert torch.isfinite(got) and abs(float(got) - float(ref)) <= 1e-5 * abs(float(ref))
    assert_grad_close(g, rg, 1e-5)


@pytest.mark.parametrize(
    ("cfg", "s", "t", "name"),
    [
        ({"type": "FeatureMSELoss"}, (2, 0, 4, 4), (2, 0, 4, 4), "pred"),
        ({"type": "FeatureL1Loss", "normalize": True}, (2, 0, 3), (2, 0, 3), "pred"),
        ({"type": "FeatureCosineLoss"}, (2, 0, 4, 4), (2, 0, 4, 4), "pred"),
        ({"type": "FeatureCosineLoss", "normalize": True}, (3, 0), (3, 0), "pred"),
        ({"type": "AttentionLoss"}, (2, 0, 4, 4), (2, 3, 4, 4), "pred"),
        ({"type": "AttentionLoss"}, (2, 3, 4, 4), (2, 0, 4, 4), "target"),
    ],
)
def test_feature_losses_refuse_zero_channels(cfg, s, t, name, backend):
    loss = build_loss({**cfg, "backend": backend})
    with pytest.raises(ValueError, match=rf"^{name}: .*C >= 1"):
        loss(torch.zeros(s, dtype=D), torch.zeros(t, dtype=D))


@pytest.mark.parametrize(
    ("cfg", "s", "t", "none_shape"),
    [
        ({"type": "AttentionLoss"}, (0, 3, 4, 4), (0, 2, 4, 4), (0, 16)),
        ({"type": "AttentionLoss", "p": 3, "normalize": False}, (0, 3, 4, 4), (0, 2, 5, 4),
         (0, 16)),
        ({"type": "AttentionLoss"}, (2, 3, 0, 4), (2, 2, 0, 4), (2, 0)),
        ({"type": "RKDDistanceLoss"}, (0, 3, 2), (0, 4), (0, 0)),
        ({"type": "RKDAngleLoss"}, (0, 5), (0, 3, 2), (0, 0, 0)),
        ({"type": "PKTLoss"}, (0, 5), (0, 3), (0, 0)),
    ],
)  # fmt: skip
def test_empty_batches_give_zero(cfg, s, t, none_shape, backend):
    loss = build_loss({**cfg, "backend": backend})
    for red in ("mean", "sum", "none"):
        x = torch.zeros(s, dtype=D, requires_grad=True)
        out = loss(x, torch.zeros(t, dtype=D), reduction_override=red)
        assert tuple(out.shape) == (none_shape if red == "none" else ())
        assert torch.all(out == 0)
        out.sum().backward()
        assert x.grad is not None and x.grad.shape == x.shape and torch.all(x.grad == 0)


def _dkd_limit(s, t, labels, alpha=1.0, beta=8.0):
    """The T -> inf limit of DKD (closed form): P, Q -> uniform, T^2 KL -> half the variance of
    the logit gap; NCKD: over the C - 1 classes != y; TCKD: (1/C)(1 - 1/C)(gap_y - mean_o)^2/2."""
    out = []
    c = s.shape[1]
    for n in range(s.shape[0]):
        gap = (t[n] - s[n]).double()
        y = int(labels[n])
        other = torch.cat([gap[:y], gap[y + 1 :]])
        nckd = 0.5 * ((other - other.mean()) ** 2).mean()
        tckd = 0.5 * (1 / c) * (1 - 1 / c) * (gap[y] - other.mean()) ** 2
        out.append(alpha * tckd + beta * nckd)
    return torch.stack(out)


def _dkd_stable_reference(s, t, labels, temperature, alpha=1.0, beta=8.0):
    """DKD in float64 from log-softmaxes (the literal reference's softmax-then-log is -inf at a
    small T): TCKD and NCKD as sums of Q (log Q - log P)."""
    gt = F.one_hot(labels, s.shape[1]).bool()
    z, u = s / temperature, t / temperature
    neg = torch.full((), float("-inf"), dtype=s.dtype)
    lp_o = torch.log_softmax(torch.where(gt, neg, z), 1)
    lq_o = torch.log_softmax(torch.where(gt, neg, u), 1)
    nckd = torch.where(gt, 0.0, lq_o.exp() * (lq_o - lp_o)).sum(1)
    lp, lq = torch.log_softmax(z, 1), torch.log_softmax(u, 1)
    lp_n = torch.logsumexp(torch.where(gt, neg, z), 1) - torch.logsumexp(z, 1)
    lq_n = torch.logsumexp(torch.where(gt, neg, u), 1) - torch.logsumexp(u, 1)
    tckd = lq[gt].exp() * (lq[gt] - lp[gt]) + lq_n.exp() * (lq_n - lp_n)
    return temperature**2 * (alpha * tckd + beta * nckd)


@pytest.mark.parametrize("temperature", [0.5, 4.0, 30.0, 100.0])
def test_dkd_float32_meets_the_reference_at_moderate_temperatures(temperature):
    s, t = randn((N, C), 74, 2.0), randn((N, C), 75, 2.0)
    loss = build_loss({"type": "DKDLoss", "temperature": temperature})
    got, g = _grad_of(lambda x: loss(x, t.float(), labels=LABELS, reduction_override="none"),
                      s.float())  # fmt: skip
    ref, rg = _grad_of(
        lambda x: RK.dkd_loss(x, t.float().double(), LABELS, temperature=temperature),
        s.float().double(),
    )
    assert torch.allclose(got.double(), ref, rtol=1e-5, atol=0), (got, ref)
    assert_grad_close(g, rg, 1e-5)


@pytest.mark.parametrize("temperature", [1e-3, 1e-2, 0.1])
def test_dkd_float32_at_small_temperatures(temperature):
    s, t = randn((N, C), 76, 2.0), randn((N, C), 77, 2.0)
    loss = build_loss({"type": "DKDLoss", "temperature": temperature})
    got, g = _grad_of(lambda x: loss(x, t.float(), labels=LABELS, reduction_override="none"),
                      s.float())  # fmt: skip
    ref, rg = _grad_of(lambda x: _dkd_stable_reference(x, t.float().double(), LABELS, temperature),
                       s.float().double())  # fmt: skip
    # (a sample whose teacher and student agree has a loss of e^-190: 0 in float32)
    assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    assert abs(float(got.sum()) - float(ref.sum())) <= 1e-5 * float(ref.sum())
    assert_grad_close(g, rg, 1e-5)


@pytest.mark.parametrize("temperature", [1e6, 1e12, 1e20, 1e30])
def test_dkd_at_huge_temperatures_approaches_its_limit(temperature):
    # T^2 KL as a difference of logs gave 232474 for 21.74 at T = 1e6 in float32; the limit
    # is approached as 1/T (5.8e-7 relative at T = 1e6 for these inputs)
    s, t = randn((N, C), 78, 2.0), randn((N, C), 79, 2.0)
    loss = build_loss({"type": "DKDLoss", "temperature": temperature})
    got, g = _grad_of(lambda x: loss(x, t.float(), labels=LABELS, reduction_override="none"),
                      s.float())  # fmt: skip
    limit = _dkd_limit(s.float(), t.float(), LABELS)
    assert torch.allclose(got.double(), limit, rtol=1e-5, atol=0), (got, limit)
    assert torch.isfinite(g).all() and g.abs().max() > 0


def test_dkd_and_dist_temperature_ranges():
    for bad in (1e-31, 1e31):
        with pytest.raises(ValueError, match=r"temperature: .*\[1e-30, 1e\+30\]"):
            build_loss({"type": "DKDLoss", "tau": bad})
    for bad in (1e-31, 1e16):
        with pytest.raises(ValueError, match=r"temperature: .*\[1e-30, 1e\+15\]"):
            build_loss({"type": "DISTLoss", "temperature": bad})


@pytest.mark.parametrize("temperature", [0.1, 1.0, 100.0, 1e4, 1e6, 1e8])
def test_dist_float32_meets_the_reference_at_any_temperature(temperature):
    # at T = 1e6 the rounded softmax kept only 1/C: the value was off by 2.6e-3
    s, t = randn((N, C), 80, 2.0), randn((N, C), 81, 2.0)
    loss = build_loss({"type": "DISTLoss", "temperature": temperature})
    got, g = _grad_of(lambda x: loss(x, t.float()), s.float())
    ref, rg = _grad_of(lambda x: RK.dist_loss(x, t.float().double(), temperature=temperature),
                       s.float().double())  # fmt: skip
    assert abs(float(got) - float(ref)) <= 1e-5 * abs(float(ref)), (got, ref)
    assert_grad_close(g, rg, 1e-5)


# ----------------------------------------------- sweep fixes (registry_dist_seg F2-F5, F7, F9-F13)


@pytest.mark.parametrize("where", ["teacher", "student"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("at_label", [False, True])
def test_dkd_nan_or_plus_inf_input_gives_nan_value_and_gradient(where, value, at_label):
    # a NaN or +inf logit made the value finite (T^2 = 16, read as "no mass") with a NaN gradient
    # row, or +inf for the student; now the sample's l is NaN with a NaN gradient row (as KDLoss
    # and the literal formula, whose softmax of +inf is NaN), the other samples untouched
    s0, t0 = randn((N, C), 101, 2.0), randn((N, C), 102, 2.0)
    col = int(LABELS[0]) if at_label else (int(LABELS[0]) + 1) % C
    (t0 if where == "teacher" else s0)[0, col] = value
    s = s0.clone().requires_grad_()
    got = build_loss({"type": "DKDLoss"})(s, t0, labels=LABELS, reduction_override="none")
    (g,) = torch.autograd.grad(got.sum(), s)
    ref = RK.dkd_loss(s0, t0, LABELS)  # the oracle: NaN there too (its _kl keeps NaN)
    assert torch.isnan(ref[0]) and torch.isnan(got[0]) and torch.isnan(g[0]).all()
    assert_close(got[1:].detach(), ref[1:])
    assert torch.isfinite(g[1:]).all()
    sr = s0[1:].clone().requires_grad_()
    assert_grad_close(g[1:], torch.autograd.grad(RK.dkd_loss(sr, t0[1:], LABELS[1:]).sum(), sr)[0],
                      GTOL)  # fmt: skip


def test_dkd_reference_kl_propagates_nan():
    # the reference's _kl skipped a NaN probability (float(nan) > 0 is False): 0, no oracle
    p = [torch.tensor(0.3, dtype=D), torch.tensor(0.7, dtype=D)]
    assert torch.isnan(RK._kl([torch.tensor(math.nan, dtype=D), torch.tensor(0.5, dtype=D)], p))
    assert float(RK._kl([torch.tensor(0.0, dtype=D), torch.tensor(1.0, dtype=D)], p)) == float(
        -torch.log(p[1])
    )  # a zero q_i is still a 0 term


def test_tempered_kl_terms_propagate_nan():
    from fused_losses.registry.distillation import tempered_kl_terms

    log_p = torch.log_softmax(randn((2, 4), 103), 1)
    log_q = torch.log_softmax(randn((2, 4), 104), 1)
    log_q[0, 1] = math.nan  # was read as "no mass" (pv, qv = log > -inf): a finite T^2 P term
    log_q[1, 2] = -math.inf  # no mass: fine
    kl, _ = tempered_kl_terms(log_p, log_q, log_q - log_p, 2.0)
    assert torch.isnan(kl[0]) and torch.isfinite(kl[1])


def test_dkd_zero_weight_and_invalid_label_hide_non_finite_inputs():
    # spec 12.2 rule 1: a sample of weight 0, or with a label outside [0, C), contributes exactly
    # 0 to the value and to every gradient; DKD had no masking (3 NaN gradient entries)
    s0, t0 = randn((N, C), 105, 2.0), randn((N, C), 106, 2.0)
    labels = LABELS.clone()
    s0[0, 1], t0[0, 2] = math.inf, math.nan  # weight 0
    s0[1, 0], t0[1, 3] = math.nan, math.inf  # invalid label
    labels[1] = -100
    weight = torch.ones(N, dtype=D)
    weight[0] = 0.0
    keep = torch.tensor([2, 3, 4, 5])
    loss = build_loss({"type": "DKDLoss"})
    for red in ("none", "mean", "sum"):
        s = s0.clone().requires_grad_()
        got = loss(s, t0, labels=labels, weight=weight, reduction_override=red)
        (g,) = torch.autograd.grad(got.sum(), s)
        sr = s0[keep].clone().requires_grad_()
        elem = RK.dkd_loss(sr, t0[keep], labels[keep])
        # rows 0 and 1 stand in as 0 (the reference can not take a label of -100); "mean"
        # counts the 5 valid samples, the weight-0 one included
        full = torch.cat([torch.zeros(2, dtype=D), elem])
        valid = labels >= 0
        ref = RU.reduce_with_validity(full, weight, valid, red)
        if red == "none":
            assert torch.all(got[:2] == 0)
        assert_close(got.detach(), ref.detach())
        assert torch.isfinite(g).all() and torch.all(g[:2] == 0)
        (gr,) = torch.autograd.grad(ref.sum(), sr)
        assert_grad_close(g[keep], gr, GTOL)


def _double_grad(loss_fn, x0):
    """d/dx of sum((dL/dx)^2), through create_graph."""
    x = x0.clone().requires_grad_()
    (g,) = torch.autograd.grad(loss_fn(x), x, create_graph=True)
    (gg,) = torch.autograd.grad((g * g).sum(), x)
    return gg


@pytest.mark.parametrize(
    ("name", "ref_fn", "cfg"),
    [("RKDAngleLoss", RK.rkd_angle_loss, {}),
     ("RKDDistanceLoss", RK.rkd_distance_loss, {}),
     ("RKDDistanceLoss", lambda s, t: RK.rkd_distance_loss(s, t, squared=True), {"squared": True})],
)  # fmt: skip
def test_rkd_double_backward_is_exact(name, ref_fn, cfg, backend):
    # spec 8: exact or a clear RuntimeError. The angle's normalised zero diagonal vectors had a NaN
    # double backward (all entries, silently); cdist has no double backward (NotImplementedError)
    s0, t = randn((5, 3, 2), 107), randn((5, 4), 108)
    loss = build_loss({"type": name, **cfg, "backend": backend})
    gg = _double_grad(lambda x: loss(x, t), s0)
    gg_ref = _double_grad(lambda x: ref_fn(x, t).mean(), s0)
    assert gg_ref.norm() > 0
    assert_grad_close(gg, gg_ref, 1e-9)


def test_rkd_double_backward_with_repeated_rows_is_finite():
    # equal embeddings: the distance is clamped at sqrt(eps) (the reference agrees); the angle's
    # zero difference vector is F.normalize's clamped branch (the reference is NaN there)
    s0, t = randn((4, 3), 109), randn((4, 3), 110)
    s0[2] = s0[1]
    gg = _double_grad(lambda x: build_loss({"type": "RKDDistanceLoss"})(x, t), s0)
    assert_grad_close(gg, _double_grad(lambda x: RK.rkd_distance_loss(x, t).mean(), s0), 1e-9)
    gg = _double_grad(lambda x: build_loss({"type": "RKDAngleLoss"})(x, t), s0)
    assert torch.isfinite(gg).all()


def test_crd_normaliser_survives_module_dtype_casts():
    # Z (about 2e7 here) became inf in a float16 buffer after .half(): every later call was inf
    s, t, bt, bs = _crd_inputs(111, k=5, d=8)
    cfg = {"type": "CRDLoss", "neg_num": 5, "n_data": 50000}
    ref32 = build_loss(cfg)
    first32 = ref32(s.float(), t.float(), bank_t=bt.float(), bank_s=bs.float())
    z_ref = RK.crd_normalizer(s.float().double(), bt.float().double(), temperature=0.07,
                              n_data=50000)  # fmt: skip
    assert float(z_ref) > 65504  # beyond float16
    half = build_loss(cfg).half()
    args = (s.half(), t.half())
    kw = {"bank_t": bt.half(), "bank_s": bs.half()}
    assert half.z_s.dtype == D and float(half.z_s) == -1.0
    one, two = half(*args, **kw), half(*args, **kw)
    assert half.z_s.dtype == D and torch.isfinite(half.z_s) and float(half.z_s) > 65504
    assert torch.isfinite(one) and torch.equal(one, two)
    # a set Z keeps its value through .half(), .to(float16) of a parent, and .float()
    z = ref32.z_s.clone()
    holder = torch.nn.ModuleDict({"crd": ref32})
    for cast in (lambda m: m.half(), lambda m: m.to(torch.float16), lambda m: m.float(),
                 lambda m: m.to(torch.bfloat16)):  # fmt: skip
        cast(holder)
        assert ref32.z_s.dtype == D and torch.equal(ref32.z_s, z)
    assert torch.allclose(ref32.z_s, z_ref, rtol=1e-6)
    second32 = ref32(s.float(), t.float(), bank_t=bt.float(), bank_s=bs.float())
    assert torch.equal(first32, second32)
    assert torch.allclose(one.float(), first32, rtol=2e-3)


def test_crd_zero_weight_samples_are_left_out_of_the_normaliser():
    # spec 12.2 rule 1: the first call's Z was the mean over every sample, weight 0 included: a
    # NaN there made the loss NaN (and left Z unset); a finite one changed the others' losses
    s0, t0, bt0, bs0 = _crd_inputs(112)
    weight = torch.tensor([0.0, 1.0, 0.5, 2.0], dtype=D)
    keep = weight != 0
    s_bad, t_bad, bt_bad = s0.clone(), t0.clone(), bt0.clone()
    s_bad[0, 0], t_bad[0, 3], bt_bad[0, 2, 1] = math.nan, math.inf, math.nan
    results = []
    for s_in, t_in, bt_in in ((s0, t0, bt0), (s_bad, t_bad, bt_bad)):
        loss = build_loss({"type": "CRDLoss", "neg_num": 7, "n_data": 300})
        s, t = s_in.clone().requires_grad_(), t_in.clone().requires_grad_()
        got = loss(s, t, bank_t=bt_in, bank_s=bs0, weight=weight, reduction_override="none")
        gs, gt = torch.autograd.grad(got.sum(), (s, t))
        assert torch.isfinite(got).all() and float(got[0].detach()) == 0.0
        assert torch.isfinite(gs).all() and torch.all(gs[0] == 0) and torch.all(gt[0] == 0)
        z_s = RK.crd_normalizer(s0, bt0, temperature=0.07, n_data=300, keep=keep)
        assert_close(loss.z_s, z_s, "z_s")
        sr, tr = s0.clone().requires_grad_(), t0.clone().requires_grad_()
        ref = RK.crd_loss(sr, tr, bt0, bs0, n_data=300, keep=keep) * weight
        assert_close(got.detach(), ref.detach())
        gsr, gtr = torch.autograd.grad(ref.sum(), (sr, tr))
        assert_grad_close(gs, gsr, GTOL)
        assert_grad_close(gt, gtr, GTOL)
        results.append(got.detach())
    assert torch.equal(results[0], results[1])  # the weight-0 sample's inputs do not matter
    # every sample of weight 0: Z stays unset (as an empty batch), value and gradient 0
    loss = build_loss({"type": "CRDLoss", "neg_num": 7, "n_data": 300})
    s = s_bad.clone().requires_grad_()
    out = loss(s, t_bad, bank_t=bt_bad, bank_s=bs0, weight=torch.zeros(4, dtype=D))
    out.backward()
    assert float(out) == 0.0 and float(loss.z_s) == -1.0 and torch.all(s.grad == 0)
    with pytest.raises(ValueError, match=r"^weight: "):
        build_loss({"type": "CRDLoss", "neg_num": 7, "n_data": 300})(
            s0, t0, bank_t=bt0, bank_s=bs0, weight=torch.ones(3, dtype=D)
        )


def test_kd_temperature_range(backend):
    # any positive T was accepted: T = 1e-40 gave NaN (s/T overflows float32); the range is
    # DKD's, [1e-30, 1e30], named at build time; the ends are accurate in float32
    for bad in (1e-31, 1e-40, 1e31, 0.0, -1.0):
        with pytest.raises(ValueError, match=r"^temperature: .*\[1e-30, 1e\+30\]"):
            build_loss({"type": "KDLoss", "temperature": bad})
    with pytest.raises(ValueError, match=r"^temperature: .*\[1e-30, 1e\+30\]"):
        build_loss({"type": "KnowledgeDistillationLoss", "tau": 1e-38})
    s0, t = randn((4, 6), 113).float(), randn((4, 6), 114).float()
    for temp in (1e-30, 1e-20):
        s = s0.clone().requires_grad_()
        got = build_loss({"type": "KDLoss", "temperature": temp, "backend": backend,
                          "reduction": "none"})(s, t)  # fmt: skip
        (g,) = torch.autograd.grad(got.sum(), s)
        sr = s0.double().requires_grad_()
        ref = RK.knowledge_distillation_loss(sr, t.double(), temperature=temp)
        assert torch.allclose(got.double(), ref, rtol=1e-5, atol=0), (got, ref)
        assert_grad_close(g, torch.autograd.grad(ref.sum(), sr)[0], 1e-5)


def test_dist_refuses_zero_classes():
    # was an IndexError from amax deep inside torch
    for shape in ((3, 0), (0, 0)):
        with pytest.raises(ValueError, match=r"^pred: .*C >= 1"):
            build_loss({"type": "DISTLoss"})(
                torch.zeros(shape, dtype=D), torch.zeros(shape, dtype=D)
            )


@pytest.mark.parametrize("hw", [(0, 4), (4, 0), (0, 0)])
@pytest.mark.parametrize("cs", [3, 2])
def test_mgd_empty_map_gives_zero(hw, cs):
    # was a conv RuntimeError ("Kernel size can't be greater than actual input size"); an empty
    # map has no position: the sum is 0, like an empty batch
    loss = build_loss({"type": "MGDLoss", "teacher_channels": 3, "student_channels": cs}).double()
    s = torch.zeros((2, cs, *hw), dtype=D, requires_grad=True)
    t = torch.zeros((2, 3, *hw), dtype=D)
    for red in ("mean", "sum", "none"):
        out = loss(s, t, reduction_override=red)
        assert out.shape == () and float(out) == 0.0 and out.dtype == D
    out.backward()
    assert s.grad is not None and s.grad.shape == s.shape
    out = loss(s, t, mask=torch.ones((2, 1, *hw), dtype=D))
    assert float(out) == 0.0


def test_kd_reference_class_masked_in_both_models(backend):
    # a class at -inf for the student and the teacher: Q = P = 0 there, the term is 0 (spec
    # 12.6). The reference used torch kl_div, whose 0 * (-inf) term is NaN; the library was right
    s0, t = randn((3, 5), 115), randn((3, 5), 116)
    s0[:, 2] = t[:, 2] = -math.inf
    keep = [0, 1, 3, 4]
    ref = RK.knowledge_distillation_loss(s0, t, temperature=2.0)
    sr = s0[:, keep].clone().requires_grad_()
    without = RK.knowledge_distillation_loss(sr, t[:, keep], temperature=2.0)
    assert_close(ref, without.detach())
    s = s0.clone().requires_grad_()
    got = build_loss({"type": "KDLoss", "tau": 2.0, "backend": backend,
                      "reduction": "none"})(s, t)  # fmt: skip
    assert_close(got.detach(), without.detach())
    (g,) = torch.autograd.grad(got.sum(), s)
    (gr,) = torch.autograd.grad(without.sum(), sr)
    assert torch.all(g[:, 2] == 0)
    assert_grad_close(g[:, keep], gr, 1e-9)
    # a NaN teacher is still NaN in the reference (not read as a 0 term)
    t_nan = t.clone()
    t_nan[0, 0] = math.nan
    assert torch.isnan(RK.knowledge_distillation_loss(s0, t_nan, temperature=2.0)[0])
