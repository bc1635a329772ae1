"""Property-based fuzz tests of the families added after ``tests/test_fuzz.py``: CASS (spec 10),
RoRD (spec 11), CenterNet multi-pose (docs/centernet.md "Multi-pose") and the loss registry
(spec 12; the detection losses, the IoU family's triton kernel included: ``test_registry_detection``,
with its KNOWN exclusions of library bugs at the top of its section and in its predicates).

The property is ``test_fuzz``'s (its module docstring; its helpers are imported from it): each
call either raises a ValueError or TypeError whose message starts with the name of an argument or
option (spec 3.5) -- required for the invalid inputs an example injects --, or returns the float64
reference's value (``fused_losses.reference``) and the gradient of every differentiable input
within spec 6, finite wherever the reference is; the triton backend (Triton's interpreter on the
CPU) behaves like the torch backend. Examples at a discontinuity of the formulas (a near-tie of
RoRD's nearest candidate, a hinge, an L1 difference, a sample point or a threshold within rounding
of its decision) are rejected with ``assume``; exact hits are kept. Where the terms of a result
have both signs the tolerance is relative to the size of the parts (``loss_floor``/``grad_floor``).
"""

from __future__ import annotations

import math
import os
import random
from typing import Any

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from conftest import DEVICE, build_loss, upstream_scalar
from fused_losses.reference import cass as RCASS
from fused_losses.reference import centernet_pose as RPOSE
from fused_losses.reference import rord as RRORD
from fused_losses.reference.registry import classification as RGC
from fused_losses.reference.registry import detection as RGD
from fused_losses.reference.registry import distillation as RGK
from fused_losses.reference.registry import segmentation as RGS
from fused_losses.reference.registry import segmentation_sort_pool as RGL
from fused_losses.reference.registry import utils as RGU
from hypothesis import assume
from hypothesis import strategies as st
from test_fuzz import (
    BACKENDS,
    BAD_BACKEND,
    BAD_BOOL,
    BAD_CHOICE,
    BAD_NONNEG,
    BAD_NUMBER,
    BF16,
    F16,
    F32,
    F64,
    Arg,
    Bounds,
    Case,
    batch_size,
    chance,
    check_label_tensor,
    fuzz_run,
    gen,
    layouts,
    near,
    pred_arg,
    pred_dtypes,
    seeds,
    sprinkle,
    tolerance,
    uniform,
    verify_loss,
    verify_tensor_op,
)

import fused_losses as fl

# The interpreter evaluates log(0) and 0 * inf on purpose (masked lanes, inputs at their edges).
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")

# Examples per test: (torch backend, triton backend). A triton example runs the interpreter and
# the torch backend (to compare them): ~0.1-0.4 s on the CPU.
EXAMPLES = {
    "cass_soft_target": (80, 25),
    "soft_focal_loss": (80, 25),
    "cass_loss": (80, 25),
    "rord_detection_loss": (60, 20),
    "rord_descriptor_loss": (60, 20),
    "centernet_pose_loss": (50, 18),
    "registry_classification": (120, 40),
    "registry_segmentation": (80, 25),
    "registry_distillation": (80, 25),
    "registry_detection": (60, 26),  # the sum of DET_EXAMPLES
}

BAD_RANGE = [*BAD_NONNEG, 2e30]  # an option in [0, 1e30]
UNKNOWN = "bogus_option"  # an unknown keyword: a TypeError starting with its name (spec 3.5)


def unknown_option(draw, opts: dict, names: tuple[str, ...], percent: int = 4):
    """In about ``percent`` % of the examples, an unknown option keyword."""
    if chance(draw, percent):
        opts[UNKNOWN] = 1.0
        return (UNKNOWN,)
    return None


# ----------------------------------------------------------------------------------------------
# CASS (spec 10): cass_soft_target, soft_focal_loss, cass_loss.

CASS_TARGET_OPTIONS = {
    "stride": [*BAD_NUMBER, 0.0, 9e-7, 1.1e6, -32.0],
    "patch_size": [0, -1, 2.0, True, "4", None],
    "expansion_ratio": BAD_RANGE,
    "min_size": BAD_RANGE,
    "small_target_threshold": BAD_RANGE,
    "decay": BAD_CHOICE,
    "merge": BAD_CHOICE,
    "anisotropic": BAD_BOOL,
    "base_sigma": [0.0, 9e-7, 1.1e6, -1.0, float("nan"), float("inf"), True, "0.5"],
    "small_target_gain": [0.0, -1.0, float("nan"), float("inf"), 3e12],
    "backend": BAD_BACKEND,
}
CASS_LOSS_OPTIONS = {
    "alpha": BAD_RANGE,
    "beta": BAD_RANGE,
    "eps": BAD_RANGE,
    "reduction": [*BAD_CHOICE, "none", "batchmean"],
    "backend": BAD_BACKEND,
}
CASS_NAMES = (
    "scores",
    "logits",
    "target",
    "boxes",
    "box_mask",
    "feat_size",
    "loss",
    *CASS_TARGET_OPTIONS,
    *CASS_LOSS_OPTIONS,
    "reduce_across_ranks",
    "options",
)


def cass_target_options(draw) -> dict[str, Any]:
    """Every target option at and inside its range (base_sigma * small_target_gain in [1e-6,
    1e6])."""
    sigma = draw(st.sampled_from([0.5, 0.5, 1e-6, 1e6, 0.05, 3.0]) | st.floats(0.1, 4.0))
    gain_hi = min(1e6 / sigma, 1e6)
    gain = draw(st.sampled_from([1.5, 1.0, 1e-6 / sigma, gain_hi]) | st.floats(1e-3, 8.0))
    gain = min(max(gain, 1e-6 / sigma), gain_hi)
    return {
        "stride": draw(st.sampled_from([32.0, 32.0, 8.0, 1.0, 4.0, 3.5, 1e-6, 1e6])),
        "patch_size": draw(st.sampled_from([4, 4, 1, 2, 3, 5, 64])),
        "expansion_ratio": draw(st.sampled_from([0.3, 0.3, 0.0, 1.0, 1e30]) | st.floats(0, 3)),
        "min_size": draw(st.sampled_from([1.0, 1.0, 0.0, 0.5, 4.0, 1e30]) | st.floats(0, 6)),
        "decay": draw(st.sampled_from(["gaussian", "linear"])),
        "anisotropic": draw(st.booleans()),
        "base_sigma": sigma,
        "small_target_gain": gain,
        "small_target_threshold": draw(st.sampled_from([4.0, 4.0, 0.0, 1e30]) | st.floats(0, 9)),
        "merge": draw(st.sampled_from(["max", "max", "sum"])),
    }


def cass_boxes(g, b: int, n: int, feat, opts: dict, dtype) -> torch.Tensor:
    """Boxes [b,n,4] in pixels: random ones on the map, and degenerate ones -- zero size, inverted,
    off the map, edges on patch borders and patch centres, thinner than a cell --, with
    coordinates that are multiples of 1/8 cell (exact in every dtype) unless float64."""
    h, w = feat
    stride, ps = opts["stride"], opts["patch_size"]
    hi = torch.tensor([w, h, w, h], dtype=F64)
    xy = uniform(g, (b, n, 2), -0.3, 1.1) * hi[:2]
    wh = uniform(g, (b, n, 2), -0.1, 0.8) * hi[:2]
    cells = torch.cat([xy, xy + wh], dim=-1)
    kind = torch.randint(0, 8, (b, n), generator=g)
    ph, pw = min(ps, h), min(ps, w)
    # edges on patch borders (even multiples of half a patch) and patch centres (odd ones)
    lo = torch.floor(uniform(g, (b, n, 2), -1, 2 * max(h // ph, w // pw) + 1))
    span = torch.floor(uniform(g, (b, n, 2), 0, 5))
    half = torch.tensor([pw, ph], dtype=F64) / 2
    border = torch.cat([lo * half, (lo + span) * half], dim=-1)
    zero = cells[..., :2].repeat(1, 1, 2)
    off = cells + torch.tensor([w + 2.0, 0.0, w + 2.0, 0.0])
    inverted = cells[..., [2, 3, 0, 1]]
    thin = torch.cat([cells[..., :2], cells[..., :2] + 0.125], dim=-1)
    cells = torch.where((kind == 1)[..., None], border, cells)
    cells = torch.where((kind == 2)[..., None], zero, cells)
    cells = torch.where((kind == 3)[..., None], off, cells)
    cells = torch.where((kind == 4)[..., None], inverted, cells)
    cells = torch.where((kind == 5)[..., None], thin, cells)
    if dtype != F64:
        cells = torch.floor(cells * 8) / 8
    boxes = cells * stride
    if not dtype.is_floating_point:
        boxes = torch.round(boxes)
    return boxes.to(dtype)


def cass_problem(draw) -> tuple[int, torch.Generator, int, int, tuple[int, int], dict]:
    """(seed, generator, B, N, feat_size, target options) of a CASS example."""
    seed = draw(seeds)
    g = gen(seed)
    b = batch_size(draw)
    n = draw(st.sampled_from([0, 1, 2, 3, 5]))
    feat = (draw(st.sampled_from([1, 1, 2, 4, 5, 8])), draw(st.integers(1, 9)))
    return seed, g, b, n, feat, cass_target_options(draw)


def cass_box_args(draw, g, boxes, b: int, n: int, mask_dtypes: list) -> tuple[str, Any, Any]:
    """(form, boxes, box_mask): the boxes [B,N,4] as a tensor in a drawn layout (with a box_mask
    of one of ``mask_dtypes`` for the "mask" form) or as a list of B tensors [N_b,4]."""
    form = draw(st.sampled_from(["tensor", "tensor", "mask", "list"]))
    if form == "list":
        counts = [int(torch.randint(0, n + 1, (), generator=g)) for _ in range(b)]
        return form, [boxes[i, : counts[i]].clone() for i in range(b)], None
    arg = Arg(boxes, layout=draw(layouts(3)), keep=True)
    if form != "mask":
        return form, arg, None
    mdt = draw(st.sampled_from(mask_dtypes))
    return form, arg, Arg((torch.rand(b, n, generator=g) < 0.6).to(mdt))


@st.composite
def cass_target_cases(draw) -> Case:
    seed, g, b, n, feat, opts = cass_problem(draw)
    dtype = draw(st.sampled_from([F32, F32, F64, F64, torch.int32, F16]))
    if dtype == F16 or not dtype.is_floating_point:
        opts["stride"] = draw(st.sampled_from([32.0, 8.0, 4.0]))  # float16 px stay finite
    boxes = cass_boxes(g, b, n, feat, opts, dtype)
    if dtype.is_floating_point and chance(draw, 20):  # a box with a NaN/inf coordinate: no region
        boxes = sprinkle(g, boxes, [math.nan, math.inf, -math.inf], 0.15)
    tensors: dict[str, Any] = {}
    form, tensors["boxes"], tensors["box_mask"] = cass_box_args(
        draw, g, boxes, b, n, [torch.bool, torch.uint8, torch.int64]
    )
    expect, names = "ok", ()
    if form == "list" and not b:
        expect = "either"
    bad = None
    if chance(draw, 10):
        bad = draw(st.sampled_from(sorted(CASS_TARGET_OPTIONS)))
        opts[bad] = draw(st.sampled_from(CASS_TARGET_OPTIONS[bad]))
        expect, names = "error", (bad,)
    elif chance(draw, 10):
        which = draw(st.sampled_from(["boxes", "box_mask", "feat_size", "bool", "ranks"]))
        if which == "boxes":
            tensors["boxes"], tensors["box_mask"] = Arg(torch.zeros(max(b, 1), n, 3)), None
        elif which == "box_mask":
            tensors["boxes"] = Arg(boxes, keep=True)
            tensors["box_mask"] = Arg(torch.ones(b, n + 1, dtype=torch.bool))
        elif which == "bool":
            tensors["boxes"], tensors["box_mask"] = (
                Arg(torch.zeros(b, n, 4, dtype=torch.bool)),
                None,
            )
            which = "boxes"
        elif which == "ranks":
            opts["reduce_across_ranks"], which = True, "reduce_across_ranks"
        else:
            feat = draw(st.sampled_from([(0, 3), (2,), (2.0, 3), "ab", (3, -1)]))
        expect, names = "error", (which,)
    else:
        names = unknown_option(draw, opts, names) or names
        expect = "error" if names else expect
    case = Case(tensors, opts, expect, names, seed, form=form)
    case.extra["feat"] = feat
    return case


def padded(boxes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A list of [N_b,4] as [B,N,4] and a mask (float64 if any is float64, else float32)."""
    dtype = F64 if any(bx.dtype == F64 for bx in boxes) else F32
    n = max([0] + [bx.shape[0] for bx in boxes])
    out = torch.zeros(len(boxes), n, 4, dtype=dtype)
    mask = torch.zeros(len(boxes), n, dtype=torch.bool)
    for i, bx in enumerate(boxes):
        out[i, : bx.shape[0]] = bx.to(dtype)
        mask[i, : bx.shape[0]] = True
    return out, mask


def target_opts(opts: dict) -> dict:
    return {k: v for k, v in opts.items() if k in CASS_TARGET_OPTIONS and k != "backend"}


def check_cass_soft_target(case: Case, backend: str) -> None:
    feat = case.extra["feat"]

    def call(inputs, opts, bk):
        boxes = inputs["boxes"]
        if isinstance(boxes, list):
            boxes = [bx.to(DEVICE) for bx in boxes]
        kw = {"backend": bk, **opts}  # an invalid backend drawn into opts wins
        return fl.cass_soft_target(boxes, feat, box_mask=inputs["box_mask"], **kw)

    def check(out, ri, opts, bk):
        boxes, mask = ri["boxes"], ri["box_mask"]
        if isinstance(boxes, list):
            boxes, mask = padded(boxes)
        ref = RCASS.cass_soft_target(boxes, feat, box_mask=mask, **target_opts(opts))
        dtype = F64 if boxes.dtype == F64 else F32
        check_label_tensor(out, ref.to(F64), dtype, 1.0, f"{bk} cass_soft_target")

    verify_tensor_op(case, backend, call, check, CASS_NAMES)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cass_soft_target(backend):
    """cass_soft_target: boxes [B,N,4] (with a box_mask of any integer dtype) or a list, of
    float32/float64/float16/int32, degenerate (zero size, inverted, off the map, on patch borders
    and centres, thin, NaN/inf), feat sizes from 1x1, every option at and inside its range: Y
    equals the reference (float32 box arithmetic for non-float64 boxes); bad inputs raise."""
    fuzz_run(cass_target_cases(), backend, EXAMPLES["cass_soft_target"], check_cass_soft_target)


def logits_values(g, shape, extreme: bool) -> torch.Tensor:
    """Logits: Gaussian, some saturated (+-30) and, with ``extreme``, +-1e4 and exactly 0."""
    x = torch.randn(shape, generator=g, dtype=F64) * 4
    specials = [0.0, 30.0, -30.0, 1e4, -1e4] if extreme else [0.0, 30.0, -30.0]
    return sprinkle(g, x, specials, 0.15)


def soft_targets(g, shape, mode: str) -> torch.Tensor:
    """A soft target in [0, 1]: multiples of 1/64 (exact in every dtype), 0/1 or all zero/one."""
    if mode == "zeros":
        return torch.zeros(shape, dtype=F64)
    if mode == "ones":
        return torch.ones(shape, dtype=F64)
    if mode == "binary":
        return (torch.rand(shape, generator=g) < 0.3).to(F64)
    t = torch.floor(torch.rand(shape, generator=g, dtype=F64) ** 2 * 64) / 64
    return sprinkle(g, t, [0.0, 1.0], 0.3)


def soft_focal_parts(s, y, alpha, beta, eps, reduction, loss="focal", upstream=1.0):
    """The size of the parts of the soft focal loss (the sum of abs(positive term) and
    abs(negative term), and of the norms of their gradients): where eps is large enough, the
    logs change sign and the two terms (and the patches) cancel."""
    if loss == "mse":
        return 0.0, 0.0
    s = s.detach().to(F64).reshape(-1).requires_grad_()
    y = y.detach().to(F64).reshape(-1)
    if s.numel() == 0:
        return 0.0, 0.0
    lp, lq = F.logsigmoid(s), F.logsigmoid(-s)
    if eps > 0:
        le = torch.full_like(s, math.log(eps))
        lp, lq = torch.logaddexp(lp, le), torch.logaddexp(lq, le)
    pos = (-y * torch.exp(alpha * F.logsigmoid(-s)) * lp).nan_to_num(0, 0, 0)
    neg = (-(1 - y) * torch.exp(beta * F.logsigmoid(s)) * lq).nan_to_num(0, 0, 0)
    d = s.numel() if reduction == "mean" else 1
    (gp,) = torch.autograd.grad(pos.sum(), s, retain_graph=True)
    (gn,) = torch.autograd.grad(neg.sum(), s)
    value = (pos.abs() + neg.abs()).sum().item() / d
    grad = ((gp.abs() + gn.abs()).nan_to_num(0, 0, 0) * abs(upstream) / d).norm().item()
    return value, grad


def reference_power_underflow(s, y, alpha, beta, loss="focal") -> bool:
    """KNOWN (reference, not the library): reference/cass.py soft_focal_loss forms P^beta and
    (1 - P)^alpha as ``p ** beta`` / ``q ** alpha`` of the float64 sigmoid, which underflows to 0
    beyond |s| ~ 745 (s = +-1e4), so a small exponent gives 0^beta = 0 there (and a NaN
    gradient) where spec 10.3's exp(beta logsigmoid(s)) -- what both backends compute -- is
    exp(-beta |s|), 1 for beta = 1e-40. The oracle cannot judge those examples: rejected."""
    if loss != "focal":
        return False
    s = s.detach().to(F64)
    y = y.detach().to(F64).reshape(s.shape)
    p, q = torch.sigmoid(s), torch.sigmoid(-s)
    neg = (p == 0) & (torch.exp(beta * F.logsigmoid(s)) != 0) & (y != 1)
    pos = (q == 0) & (torch.exp(alpha * F.logsigmoid(-s)) != 0) & (y != 0)
    return bool((neg | pos).any())


def focal_options(draw) -> dict[str, Any]:
    return {
        "alpha": draw(st.sampled_from([2.0, 2.0, 0.0, 1e-40, 1.0, 1e30]) | st.floats(0, 6)),
        "beta": draw(st.sampled_from([4.0, 4.0, 0.0, 1e-40, 1.0, 1e30]) | st.floats(0, 6)),
        "eps": draw(st.sampled_from([1e-8, 1e-8, 0.0, 1e-50, 0.5, 2.0, 1e30]) | st.floats(0, 1)),
        "reduction": draw(st.sampled_from(["mean", "mean", "sum"])),
    }


@st.composite
def soft_focal_cases(draw) -> Case:
    seed = draw(seeds)
    g = gen(seed)
    b = batch_size(draw)
    shape = draw(
        st.sampled_from([(b, 1, 2, 3), (b, 5), (b, 1, 1, 4), (b, 2, 2, 2), (b,), (b, 3, 1)])
    )
    dtype = draw(pred_dtypes)
    x = logits_values(g, shape, extreme=True)
    if dtype in (F16, BF16):
        x = x.clamp(-30, 30)  # +-1e4 is a float16 logit, but its float64 terms are not normal
    t = soft_targets(g, shape, draw(st.sampled_from(["soft", "soft", "binary", "zeros", "ones"])))
    tdt = draw(st.sampled_from([None, None, F32, F64, F16, BF16]))
    tensors = {
        "logits": pred_arg(draw, x, dtype),
        "target": Arg(t, tdt or dtype, draw(layouts(len(shape)))),
    }
    opts = focal_options(draw)
    expect, names = "ok", ()
    if chance(draw, 10):
        bad = draw(st.sampled_from(sorted(CASS_LOSS_OPTIONS)))
        opts[bad] = draw(st.sampled_from(CASS_LOSS_OPTIONS[bad]))
        expect, names = "error", (bad,)
    elif chance(draw, 8):
        which = draw(st.sampled_from(["logits", "target", "grad"]))
        if which == "logits":
            tensors["logits"] = Arg(torch.zeros(shape, dtype=torch.int32))
        elif which == "target":
            tensors["target"] = Arg(torch.zeros(*shape, 2))
        else:  # a target that requires grad is refused (spec 10.1)
            tensors["target"] = Arg(t, F32, grad=True)
            which = "target"
        expect, names = "error", (which,)
    form = draw(st.sampled_from(["functional", "module", "options"]))
    if expect == "ok" and form != "options":  # (an options class is a plain dataclass)
        names = unknown_option(draw, opts, names) or names
        expect = "error" if names else expect
    return Case(tensors, opts, expect, names, seed, form=form)


def soft_focal_call(inputs, opts, backend, form):
    kw = {"backend": backend, **opts}
    args = (inputs["logits"], inputs["target"])
    if form == "module":
        return fl.SoftFocalLoss(**kw)(*args)
    if form == "options":
        return fl.soft_focal_loss(*args, options=fl.SoftFocalOptions(**kw))
    return fl.soft_focal_loss(*args, **kw)


def check_soft_focal_loss(case: Case, backend: str) -> None:
    x = case.tensors["logits"]
    loss_tol, grad_tol = tolerance([x.dtype])
    up = upstream_scalar(case.seed)

    def ref(ri, opts):
        o = {k: opts[k] for k in ("alpha", "beta", "eps", "reduction")}
        return RCASS.soft_focal_loss(ri["logits"], ri["target"], **o)

    def bounds(ri, rcomps):
        o = case.opts
        value, grad = soft_focal_parts(
            ri["logits"], ri["target"], o["alpha"], o["beta"], o["eps"], o["reduction"], upstream=up
        )
        return Bounds(loss_tol, {"logits": grad_tol}, loss_floor=value, grad_floor={"logits": grad})

    def skip_if(ri, rloss, rcomps, rgrads, b):
        o = case.opts
        return reference_power_underflow(ri["logits"], ri["target"], o["alpha"], o["beta"])

    # (targets are multiples of 1/64: exact in every dtype, so no label rounding to reject)
    dtype = F64 if x.dtype == F64 else F32
    verify_loss(case, backend, soft_focal_call, ref, bounds, dtype, CASS_NAMES, skip_if)


@pytest.mark.parametrize("backend", BACKENDS)
def test_soft_focal_loss(backend):
    """soft_focal_loss / SoftFocalLoss: logits (saturated, +-1e4, exactly 0) of any dtype and
    layout against soft, binary, all-zero and all-one targets of any dtype, alpha/beta/eps at
    their edges (0, 1e-40, 1e30), both reductions, empty inputs: the loss and d/dlogits match the
    reference; bad options, integer logits and a target that requires grad raise naming them."""
    fuzz_run(soft_focal_cases(), backend, EXAMPLES["soft_focal_loss"], check_soft_focal_loss)


@st.composite
def cass_loss_cases(draw) -> Case:
    seed, g, b, n, feat, opts = cass_problem(draw)
    opts.update(focal_options(draw), loss=draw(st.sampled_from(["focal", "focal", "mse"])))
    dtype = draw(pred_dtypes)
    # Float64 boxes give a float64 Y, which lower-precision scores round to float32 (an input
    # rounding, not the library's): they go with float64 scores.
    bdt = draw(st.sampled_from([F32, F32, torch.int32, F16] + ([F64, F64] if dtype == F64 else [])))
    if bdt == F16 or not bdt.is_floating_point:
        opts["stride"] = draw(st.sampled_from([32.0, 8.0, 4.0]))
    boxes = cass_boxes(g, b, n, feat, opts, bdt)
    if bdt.is_floating_point and chance(draw, 15):
        boxes = sprinkle(g, boxes, [math.nan, math.inf, -math.inf], 0.15)
    _, _, hp, wp = RCASS.patch_grid(feat, opts["patch_size"])
    shape = (b, hp * wp) if draw(st.booleans()) else (b, 1, hp, wp)
    x = logits_values(g, shape, extreme=dtype not in (F16, BF16))
    tensors: dict[str, Any] = {"scores": pred_arg(draw, x, dtype), "box_mask": None}
    form, tensors["boxes"], tensors["box_mask"] = cass_box_args(
        draw, g, boxes, b, n, [torch.bool, torch.uint8, torch.int32]
    )
    expect, names = "ok", ()
    if chance(draw, 12):
        kinds = {**CASS_TARGET_OPTIONS, **CASS_LOSS_OPTIONS, "loss": BAD_CHOICE}
        bad = draw(st.sampled_from(sorted(kinds)))
        opts[bad] = draw(st.sampled_from(kinds[bad]))
        expect, names = "error", (bad,)
    elif chance(draw, 10):
        which = draw(st.sampled_from(["scores", "int_scores", "boxes", "box_mask", "feat_size"]))
        if which == "scores":  # not the patch grid of feat_size and patch_size
            tensors["scores"] = Arg(torch.zeros(b, hp * wp + 1), grad=True)
        elif which == "int_scores":
            tensors["scores"], which = Arg(torch.zeros(shape, dtype=torch.int64)), "scores"
        elif which == "boxes":  # another batch
            tensors["boxes"], tensors["box_mask"] = Arg(torch.zeros(b + 1, n, 4)), None
        elif which == "box_mask":
            if form == "list":  # a box_mask with a list of boxes
                tensors["box_mask"] = Arg(torch.ones(b, 1, dtype=torch.bool))
            else:
                tensors["box_mask"] = Arg(torch.ones(b, n, dtype=F32))  # floating
        else:
            feat = draw(st.sampled_from([(0, 3), (2,), (2.0, 3), "ab"]))
        expect, names = "error", (which,)
    mod = draw(st.sampled_from(["functional", "module", "options", "registry"]))
    if expect == "ok" and mod in ("functional", "module"):
        names = unknown_option(draw, opts, names) or names
        expect = "error" if names else expect
    case = Case(tensors, opts, expect, names, seed, form=mod)
    case.extra.update(feat=feat, weight=draw(st.sampled_from([1.0, 1.0, 0.5, 2.0])))
    return case


def check_cass_loss(case: Case, backend: str) -> None:
    x = case.tensors["scores"]
    feat, lw = case.extra["feat"], case.extra["weight"]
    loss_tol, grad_tol = tolerance([x.dtype])
    up = upstream_scalar(case.seed)

    def call(inputs, opts, bk, form):
        boxes = inputs["boxes"]
        if isinstance(boxes, list):
            boxes = [bx.to(DEVICE) for bx in boxes]
        args = (inputs["scores"], boxes, inputs["box_mask"])
        kw = {"backend": bk, **opts}
        if form == "module":
            return fl.CASSLoss(**kw)(*args, feat_size=feat)
        if form == "options":
            return fl.cass_loss(*args, feat_size=feat, options=fl.CASSOptions(**kw))
        if form == "registry":  # the registry entry (spec 12.1), scaled by loss_weight
            loss = build_loss({"type": "CASSLoss", "loss_weight": lw, **kw})
            return loss(*args, feat_size=feat)
        return fl.cass_loss(*args, feat_size=feat, **kw)

    def scale(form):
        return lw if form == "registry" else 1.0

    def ref(ri, opts):
        boxes, mask = ri["boxes"], ri["box_mask"]
        if isinstance(boxes, list):
            boxes, mask = padded(boxes)
        o = {k: opts[k] for k in ("loss", "alpha", "beta", "eps", "reduction")}
        out = RCASS.cass_loss(ri["scores"], boxes, mask, feat_size=feat, **o, **target_opts(opts))
        return out * scale(case.form)

    def bounds(ri, rcomps):
        o = case.opts
        boxes, mask = ri["boxes"], ri["box_mask"]
        if isinstance(boxes, list):
            boxes, mask = padded(boxes)
        y = RCASS.cass_soft_target(boxes, feat, box_mask=mask, **target_opts(o))
        s = ri["scores"]
        v, gr = soft_focal_parts(
            s, y.reshape(s.shape), o["alpha"], o["beta"], o["eps"], o["reduction"], o["loss"], up
        )
        k = abs(scale(case.form))
        return Bounds(
            loss_tol, {"scores": grad_tol}, loss_floor=v * k, grad_floor={"scores": gr * k}
        )

    def skip_if(ri, rloss, rcomps, rgrads, b):
        o = case.opts
        boxes, mask = ri["boxes"], ri["box_mask"]
        if isinstance(boxes, list):
            boxes, mask = padded(boxes)
        y = RCASS.cass_soft_target(boxes, feat, box_mask=mask, **target_opts(o))
        return reference_power_underflow(ri["scores"], y, o["alpha"], o["beta"], o["loss"])

    dtype = F64 if x.dtype == F64 else F32
    names = (*CASS_NAMES, "weight", "avg_factor")
    verify_loss(case, backend, call, ref, bounds, dtype, names, skip_if)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cass_loss(backend):
    """cass_loss / CASSLoss / its options object / the registry entry: scores [B,Hp*Wp] or
    [B,1,Hp,Wp] of any dtype and layout (saturated and +-1e4 logits), boxes as [B,N,4] (with a
    box_mask) or a list, degenerate boxes (zero size, inverted, off the map, on patch borders,
    NaN/inf), feat sizes from 1x1 (1xW: one patch row), every target and loss option at and inside
    its range, both reductions, B = 0 and N = 0: the loss and d/dscores match the reference."""
    fuzz_run(cass_loss_cases(), backend, EXAMPLES["cass_loss"], check_cass_loss)


# ----------------------------------------------------------------------------------------------
# RoRD (spec 11): rord_detection_loss and rord_descriptor_loss (their modules, rord_loss).

BAD_WEIGHT = [*BAD_NUMBER, 2e12, -2e12]
RORD_GEOMETRY = {
    "stride": [*BAD_NUMBER, 0.0, 9e-7, 1.1e6, -8.0],
    "h_coords": BAD_CHOICE,
    "outside": BAD_CHOICE,
    "backend": BAD_BACKEND,
}
RORD_DET_OPTIONS = {
    **RORD_GEOMETRY,
    "from_logits": BAD_BOOL,
    "w_bce": BAD_WEIGHT,
    "w_smooth_l1": BAD_WEIGHT,
    "detach_target": BAD_BOOL,
}
RORD_DESC_OPTIONS = {
    **RORD_GEOMETRY,
    "margin": BAD_WEIGHT,
    "distance": BAD_CHOICE,
    "num_samples": [0, -1, 2**24 + 1, 4.0, True, None],
    "num_candidates": [-1, 2**24 + 1, 4.0, True, None],
    "safe_radius": [-1.0, float("nan"), -float("inf"), "1", None],
    "detach_negative": BAD_BOOL,
}
RORD_NAMES = (
    "det_original",
    "det_rotated",
    "desc_original",
    "desc_rotated",
    "H",
    "anchors",
    "negatives",
    "generator",
    "return_components",
    "options",
    *RORD_DET_OPTIONS,
    *RORD_DESC_OPTIONS,
    "w_det",
    "w_desc",
)


def homography(g, kind: str, size, stride: float, b: int, h_coords: str) -> torch.Tensor:
    """H of one ``kind``: the identity, a shift by half cells, a quarter turn about the image
    centre (exact), a small rotation, a perspective map, one scaled by 1e20 or 1e-20 (the same
    homography), a singular one (w = 0 everywhere) and one with w <= 0 on part of the map;
    [2,3], [3,3] or batched."""
    hf, wf = size
    if h_coords == "pixel":
        cx, cy, unit = wf * stride / 2, hf * stride / 2, stride
    else:
        cx, cy, unit = 0.0, 0.0, 2.0 / max(hf, wf)
    m = torch.eye(3, dtype=F64)
    if kind == "shift":
        m[:2, 2] = torch.floor(uniform(g, (2,), -4, 4)) * unit / 2
    elif kind in ("quarter", "small", "perspective", "scaled", "behind"):
        if kind == "quarter":
            c, s = [(0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)][int(torch.randint(0, 3, (), generator=g))]
        else:
            a = float(uniform(g, (), -0.4, 0.4))
            c, s = math.cos(a), math.sin(a)
        rot = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
        to_c = torch.tensor([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], dtype=F64)
        back = torch.tensor([[1, 0, cx], [0, 1, cy], [0, 0, 1]], dtype=F64)
        m = back @ rot @ to_c
        if kind != "quarter":
            m[:2, 2] += uniform(g, (2,), -1, 1) * unit
        if kind in ("perspective", "scaled"):
            m[2, :2] = uniform(g, (2,), -0.3, 0.3) / (unit * max(hf, wf))
        if kind == "scaled":
            m = m * float(
                torch.tensor([1e20, 1e-20, 3.0])[int(torch.randint(0, 3, (), generator=g))]
            )
        if kind == "behind":  # w = 0 on a line between cell centres: negative beyond it
            x0 = (float(torch.randint(0, wf + 1, (), generator=g)) + 0.25) * unit
            m[2] = torch.tensor([-1.0 / x0, 0.0, 1.0], dtype=F64)
    elif kind == "singular":
        m[2] = 0.0
    if b and chance_g(g, 40):
        m = m[None].repeat(b, 1, 1)
    if m[..., 2, :].eq(torch.tensor([0.0, 0.0, 1.0], dtype=F64)).all() and chance_g(g, 50):
        m = m[..., :2, :]
    return m


def chance_g(g, percent: int) -> bool:
    return bool(torch.rand((), generator=g) * 100 < percent)


H_KINDS = ["identity", "shift", "quarter", "small", "small", "perspective", "scaled", "behind",
           "singular"]  # fmt: skip


def near_edge(uv: torch.Tensor, w: torch.Tensor, size) -> bool:
    """A point within rounding of the map's edge (inside test) or of w = 0, not exactly on it."""
    hf, wf = size
    ok = torch.isfinite(uv).all(-1) & (w > 0)
    u, v = uv[..., 0][ok], uv[..., 1][ok]
    return near(u, 0.0) or near(u, wf - 1.0) or near(v, 0.0) or near(v, hf - 1.0)


def near_w_zero(H: torch.Tensor, uv: torch.Tensor, stride, h_coords, size) -> bool:
    """w within rounding of 0 (relative to its terms), not exactly 0."""
    if H.shape[-2] == 2:
        return False
    hf, wf = size
    u, v = uv[..., 0], uv[..., 1]
    if h_coords == "pixel":
        x, y = stride * (u + 0.5), stride * (v + 0.5)
    else:
        x, y = 2 * (u + 0.5) / wf - 1, 2 * (v + 0.5) / hf - 1
    h = H.to(F64)
    h20, h21, h22 = (h[..., 2, j].reshape(-1, 1) if h.dim() == 3 else h[2, j] for j in range(3))
    w = h20 * x + h21 * y + h22
    scale = (h20 * x).abs() + (h21 * y).abs() + h22.abs() if isinstance(h22, torch.Tensor) else 0
    band = 1e-6 * scale
    return bool(((w != 0) & (w.abs() <= band)).any())


def prob_values(g, shape) -> torch.Tensor:
    x = uniform(g, shape, 0.02, 0.98)
    return sprinkle(g, x, [0.0, 1.0, 0.5, 1e-4, 1 - 1e-4], 0.2)


def rord_weight(draw):
    return draw(st.sampled_from([1.0, 1.0, 0.1, 0.0, -0.5, 1e12, -1e12, 1e-12]) | st.floats(-3, 3))


@st.composite
def rord_det_cases(draw) -> Case:
    seed = draw(seeds)
    g = gen(seed)
    b = batch_size(draw)
    size = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    opts = {
        "stride": draw(st.sampled_from([8.0, 8.0, 4.0, 1.0, 3.3, 1e-6, 1e6])),
        "h_coords": draw(st.sampled_from(["pixel", "pixel", "normalized"])),
        "outside": draw(st.sampled_from(["zeros", "ignore"])),
        "from_logits": draw(st.booleans()),
        "w_bce": rord_weight(draw),
        "w_smooth_l1": rord_weight(draw),
        "detach_target": draw(st.booleans()),
    }
    dtype = draw(pred_dtypes)
    shape = (b, 1, *size)
    if opts["from_logits"]:
        vals = [logits_values(g, shape, extreme=dtype not in (F16, BF16)) for _ in range(2)]
    else:
        vals = [prob_values(g, shape) for _ in range(2)]
    tensors: dict[str, Any] = {
        "det_original": pred_arg(draw, vals[0], dtype),
        "det_rotated": pred_arg(draw, vals[1], dtype, grad=not chance(draw, 15)),
    }
    H = homography(g, draw(st.sampled_from(H_KINDS)), size, opts["stride"], b, opts["h_coords"])
    tensors["H"] = Arg(H, draw(st.sampled_from([F64, F64, F32])), keep=False)
    expect, names = ("either" if b == 0 else "ok"), ()
    if chance(draw, 10):
        bad = draw(st.sampled_from(sorted(RORD_DET_OPTIONS)))
        opts[bad] = draw(st.sampled_from(RORD_DET_OPTIONS[bad]))
        expect, names = "error", (bad,)
    elif chance(draw, 10):
        which = draw(st.sampled_from(["det_original", "det_rotated", "H", "H_bool", "rc"]))
        if which == "det_original":
            tensors[which] = Arg(torch.zeros(b, 2, *size), grad=True)
        elif which == "det_rotated":
            tensors[which] = Arg(torch.zeros(b, 1, size[0], size[1] + 1), grad=True)
        elif which == "H":
            tensors["H"] = Arg(torch.zeros(b + 1, 3, 3))
        elif which == "H_bool":
            tensors["H"], which = Arg(torch.zeros(3, 3, dtype=torch.bool)), "H"
        else:
            which = "return_components"
        expect, names = "error", (which,)
    form = draw(st.sampled_from(["functional", "module", "options", "registry"]))
    case = Case(tensors, opts, expect, names, seed, form=form)
    case.extra["rc"] = 1 if names == ("return_components",) else draw(st.booleans())
    return case


def rord_det_call(inputs, opts, backend, form, rc):
    args = (inputs["det_original"], inputs["det_rotated"], inputs["H"])
    kw = {"backend": backend, **opts}
    if form == "module":
        out = fl.RoRDDetectionLoss(**kw)(*args, return_components=rc)
    elif form == "options":
        out = fl.rord_detection_loss(
            *args, return_components=rc, options=fl.RoRDDetectionOptions(**kw)
        )
    elif form == "registry":
        out = build_loss({"type": "RoRDDetectionLoss", **kw})(*args, return_components=rc)
    else:
        out = fl.rord_detection_loss(*args, return_components=rc, **kw)
    return out


def check_rord_detection_loss(case: Case, backend: str) -> None:
    opts = case.opts
    size = case.tensors["det_original"].shape[2:]
    if case.expect != "error":
        _, ri = case.build(reference=True)
        b = ri["det_original"].shape[0]
        uv = RRORD.cell_centres(*size, F64)[None].expand(max(b, 1), -1, 2)
        q, w = RRORD.transform(
            ri["H"], uv, stride=opts["stride"], h_coords=opts["h_coords"], Hf=size[0], Wf=size[1]
        )
        if opts["outside"] == "ignore":
            assume(not near_edge(q, w, size))
        assume(not near_w_zero(ri["H"], uv, opts["stride"], opts["h_coords"], size))
    dts = [case.tensors[k].dtype for k in ("det_original", "det_rotated")]
    loss_tol, grad_tol = tolerance(dts)
    po_tol = grad_tol
    po = case.tensors["det_original"]
    if isinstance(po, Arg) and po.dtype == F64 and not opts["from_logits"]:
        if bool(((po.value == 0) | (po.value == 1)).any()):
            # Not the library: at P_o = 0 or 1 the reference's F.binary_cross_entropy divides by
            # max(P_o (1 - P_o), EPSILON) with torch's EPSILON = float32(1e-12), 4e-9 relative
            # away from the spec's 1e-12 (which the library uses): the float64 gradient there is
            # only known to the reference to 4e-9.
            po_tol = 1e-8
    rc = case.extra["rc"]

    def call(inputs, o, bk, form):
        return rord_det_call(inputs, o, bk, form, rc)

    def ref_parts(ri, o, w_bce, w_sl1):
        kw = {k: o[k] for k in ("stride", "h_coords", "outside", "from_logits", "detach_target")}
        return RRORD.rord_detection_loss(
            ri["det_original"], ri["det_rotated"], ri["H"], **kw, w_bce=w_bce, w_smooth_l1=w_sl1
        )

    def ref(ri, o):
        loss, comps = ref_parts(ri, o, o["w_bce"], o["w_smooth_l1"])
        return (loss, comps) if rc else loss

    def bounds(ri, rcomps):
        # w_bce and w_smooth_l1 of opposite signs cancel: the parts' sizes are the floors
        up = abs(upstream_scalar(case.seed))
        floor, gfloor = 0.0, {}
        leaves = {
            k: ri[k].detach().clone().requires_grad_() for k in ("det_original", "det_rotated")
        }
        for wb, ws in ((case.opts["w_bce"], 0.0), (0.0, case.opts["w_smooth_l1"])):
            loss, _ = ref_parts({**ri, **leaves}, case.opts, wb, ws)
            floor += abs(float(loss.detach()))
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            for k, gr in zip(leaves, grads):
                if gr is not None:
                    gfloor[k] = gfloor.get(k, 0.0) + up * gr.abs().nan_to_num(0, 0, 0).norm().item()
        comp_floor = {"det": floor}
        tols = {"det_original": po_tol, "det_rotated": grad_tol}
        return Bounds(loss_tol, tols, floor, comp_floor, grad_floor=gfloor)

    def skip_if(ri, rloss, rcomps, rgrads, b):
        # Not the library: below float64 the sample points q are rounded (2^-24 relative), so T
        # is known to about 2^-22 (1 + |q|); the BCE gradient (P_o - T) / (P_o (1 - P_o))
        # amplifies that by 1 / (P_o (1 - P_o)) (1e4 at P_o = 1 - 1e-4). Examples where this
        # input rounding is a sizeable part of the tolerance are rejected (test_fuzz's rule).
        if F64 in dts or opts["from_logits"] or rgrads.get("det_original") is None:
            return False
        p_o = ri["det_original"].detach().to(F64)
        bb, _, hf, wf = p_o.shape
        if bb == 0:
            return False
        uv = RRORD.cell_centres(hf, wf, F64)[None].expand(bb, -1, 2)
        q, _ = RRORD.transform(ri["H"], uv, stride=opts["stride"], h_coords=opts["h_coords"],
                               Hf=hf, Wf=wf)  # fmt: skip
        e_t = 2.0**-22 * (1 + q.abs().nan_to_num(0, 0, 0).clamp(max=1e6).sum(-1))
        amp = 1 / (p_o * (1 - p_o)).clamp(min=1e-12).reshape(bb, -1)
        err = (
            abs(opts["w_bce"] * upstream_scalar(case.seed))
            * (amp * e_t).norm().item()
            / p_o.numel()
        )
        gnorm = rgrads["det_original"].detach().norm().item()
        return err > 0.25 * grad_tol * gnorm

    dtype = F64 if F64 in dts else F32
    names = (*RORD_NAMES, "weight", "avg_factor")
    verify_loss(case, backend, call, ref, bounds, dtype, names, skip_if)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rord_detection_loss(backend):
    """rord_detection_loss / RoRDDetectionLoss / the registry entry: probabilities (exactly 0
    and 1 included) or logits (+-30, +-1e4) of any dtype and layout, maps from 1x1, B = 0, H the
    identity, a shift, a quarter turn, a small rotation, a perspective map, scaled by 1e20 or
    1e-20, singular or with w <= 0 on part of the map, in pixel or normalized units, "zeros" and
    "ignore", weights of either sign up to 1e12, detach_target: the total, its components and
    both maps' gradients match the reference; bad options and shapes raise naming them."""
    fuzz_run(rord_det_cases(), backend, EXAMPLES["rord_detection_loss"], check_rord_detection_loss)


def pixel_points(g, shape, size, stride: float, off: float) -> torch.Tensor:
    """Points (x, y) [..., 2] in pixels, multiples of stride / 8, some up to ``off`` cells off
    the map."""
    hf, wf = size
    hi = torch.tensor([wf, hf], dtype=F64)
    u = uniform(g, (*shape, 2), -off, 1.0) * (hi + 2 * off)
    return torch.floor(u * 8) / 8 * stride


@st.composite
def rord_desc_cases(draw) -> Case:
    seed = draw(seeds)
    g = gen(seed)
    b = batch_size(draw)
    size = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    c = draw(st.integers(1, 4))
    opts = {
        "stride": draw(st.sampled_from([8.0, 8.0, 4.0, 1.0, 3.3])),
        "h_coords": draw(st.sampled_from(["pixel", "pixel", "normalized"])),
        "outside": draw(st.sampled_from(["zeros", "ignore"])),
        "margin": draw(st.sampled_from([1.0, 1.0, 0.0, -0.5, 30.0, 1e12]) | st.floats(-2, 4)),
        "distance": draw(st.sampled_from(["l2", "squared_l2"])),
        "num_samples": draw(st.sampled_from([1, 4, 9, 16, 5])),
        "num_candidates": draw(st.sampled_from([0, 1, 5, 12])),
        "safe_radius": draw(st.sampled_from([0.0, 0.0, 4.0, 12.5, math.inf])),
        "detach_negative": draw(st.booleans()),
    }
    dtype = draw(pred_dtypes)
    shape = (b, c, *size)
    scale = draw(st.sampled_from([1.0, 1.0, 1e-3, 1e3]))
    vals = [torch.randn(shape, generator=g, dtype=F64) * scale for _ in range(2)]
    tensors: dict[str, Any] = {
        "desc_original": pred_arg(draw, vals[0], dtype),
        "desc_rotated": pred_arg(draw, vals[1], dtype, grad=not chance(draw, 15)),
        "anchors": None,
        "negatives": None,
    }
    H = homography(g, draw(st.sampled_from(H_KINDS)), size, opts["stride"], b, opts["h_coords"])
    tensors["H"] = Arg(H, draw(st.sampled_from([F64, F64, F32])))
    if draw(st.booleans()):
        n = draw(st.integers(0, 6))
        pts = pixel_points(
            g, (b, n) if b and draw(st.booleans()) else (n,), size, opts["stride"], 0.5
        )
        tensors["anchors"] = Arg(
            pts, draw(st.sampled_from([F64, F32, torch.int64])) if opts["stride"] >= 8 else F64
        )
    cand = draw(st.sampled_from(["r2", "negatives", "negatives", "generator"]))
    if cand == "generator" and DEVICE != "cpu":
        cand = "r2"  # (a CUDA generator draws other numbers than the reference's CPU one)
    if cand == "negatives":
        k = draw(st.integers(0, 10))
        pts = pixel_points(
            g, (b, k) if b and draw(st.booleans()) else (k,), size, opts["stride"], 0.5
        )
        if k and chance(draw, 25):  # a NaN coordinate: never eligible (spec 11.3.2)
            pts = sprinkle(g, pts, [math.nan], 0.2)
        tensors["negatives"] = Arg(pts, draw(st.sampled_from([F64, F32])))
    expect, names = ("either" if b == 0 else "ok"), ()
    if chance(draw, 10):
        bad = draw(st.sampled_from(sorted(RORD_DESC_OPTIONS)))
        opts[bad] = draw(st.sampled_from(RORD_DESC_OPTIONS[bad]))
        expect, names = "error", (bad,)
    elif chance(draw, 10):
        which = draw(st.sampled_from(["desc_rotated", "anchors", "negatives", "both", "int_map"]))
        if which == "desc_rotated":
            tensors[which] = Arg(torch.zeros(b, c + 1, *size), grad=True)
        elif which == "anchors":
            tensors["anchors"] = Arg(torch.zeros(b + 1, 2, 2))
        elif which == "negatives":
            tensors["negatives"] = Arg(torch.zeros(3, 2, dtype=torch.bool))
        elif which == "both":
            tensors["negatives"], cand = Arg(torch.zeros(2, 2)), "generator"
            which = "negatives"
        else:
            tensors["desc_original"], which = (
                Arg(torch.zeros(shape, dtype=torch.int32)),
                "desc_original",
            )
        expect, names = "error", (which,)
    form = draw(st.sampled_from(["functional", "module", "options", "registry", "rord_loss"]))
    case = Case(tensors, opts, expect, names, seed, form=form)
    case.extra["generator"] = seed if cand == "generator" else None
    return case


def rord_desc_call(inputs, opts, backend, form, gen_seed, reference=False):
    generator = None
    if gen_seed is not None:
        generator = torch.Generator("cpu" if reference else DEVICE).manual_seed(gen_seed)
    args = (inputs["desc_original"], inputs["desc_rotated"], inputs["H"], inputs["anchors"],
            inputs["negatives"], generator)  # fmt: skip
    if reference:
        return RRORD.rord_descriptor_loss(*args, **opts)
    kw = {"backend": backend, **opts}
    if form == "module":
        return fl.RoRDDescriptorLoss(**kw)(*args)
    if form == "options":
        return fl.rord_descriptor_loss(*args, options=fl.RoRDDescriptorOptions(**kw))
    if form == "registry":
        return build_loss({"type": "RoRDDescriptorLoss", **kw})(*args)
    if form == "rord_loss":  # the total with w_det = 0: its descriptor part (det maps of 0.5)
        d = args[0]
        dt = d.dtype if d.is_floating_point() else F32
        det = torch.full((d.shape[0], 1, *d.shape[2:]), 0.5, dtype=dt, device=d.device)
        return fl.rord_loss(det, det, *args, w_det=0.0, **kw)
    return fl.rord_descriptor_loss(*args, **kw)


def desc_geometry(ri: dict, opts: dict, gen_seed):
    """The reference's points: anchors p [B,N,2], their warped q and w, candidates c [B,K,2],
    anchor pixels and candidate pixels (spec 11.2-11.3)."""
    d_o = ri["desc_original"]
    b, _, hf, wf = d_o.shape
    s = opts["stride"]
    if ri["anchors"] is None:
        p = RRORD.default_anchors(opts["num_samples"], hf, wf, F64)
        a_px = s * (p + 0.5)
    else:
        a_px = ri["anchors"].to(F64)
        p = RRORD.grid_points(a_px, s)
    if ri["negatives"] is not None:
        c_px = ri["negatives"].to(F64)
        c = RRORD.grid_points(c_px, s)
    elif gen_seed is not None:
        gg = torch.Generator().manual_seed(gen_seed)
        c = RRORD.random_candidates(b, opts["num_candidates"], hf, wf, gg, "cpu", F64)
        c_px = s * (c + 0.5)
    else:
        c = RRORD.r2_candidates(opts["num_candidates"], hf, wf, F64)
        c_px = s * (c + 0.5)
    bat = lambda t: t.expand(b, *t.shape[-2:]) if t.dim() == 2 else t
    p, a_px, c, c_px = bat(p), bat(a_px), bat(c), bat(c_px)
    q, w = RRORD.transform(ri["H"], p, stride=s, h_coords=opts["h_coords"], Hf=hf, Wf=wf)
    return p, q, w, c, a_px, c_px


def desc_kinks(ri: dict, opts: dict, gen_seed) -> bool:
    """Whether the example sits within float32 rounding of a decision of the descriptor loss:
    two candidates' distances to an anchor (j*), a hinge d_pos - d_neg + margin at 0, a
    Chebyshev distance at safe_radius, a point on the map's edge ("ignore") or w at 0."""
    d_o, d_r = ri["desc_original"].detach().to(F64), ri["desc_rotated"].detach().to(F64)
    b, _, hf, wf = d_o.shape
    size = (hf, wf)
    p, q, w, c, a_px, c_px = desc_geometry(ri, opts, gen_seed)
    if b == 0:
        return False
    if near_w_zero(ri["H"], p, opts["stride"], opts["h_coords"], size):
        return True
    if opts["outside"] == "ignore":
        one_p, one_c = torch.ones_like(p[..., 0]), torch.ones_like(c[..., 0])
        if near_edge(q, w, size) or near_edge(p, one_p, size) or near_edge(c, one_c, size):
            return True
    a = RRORD.sample(d_o, p)
    pos = RRORD.warped_sample(d_r, q, w)
    neg = RRORD.sample(d_r, c)
    if c.shape[1] >= 2 and p.shape[1]:
        dist = torch.cdist(a, neg).sort(dim=-1).values
        gap = dist[..., 1:] - dist[..., :-1]
        if bool(((gap > 0) & (gap <= 1e-4 * dist[..., 1:])).any()):
            return True
    if c.shape[1] and p.shape[1]:
        sq = opts["distance"] == "squared_l2"
        d_pos = F.pairwise_distance(a, pos, eps=1e-6)
        d_neg = (a[:, :, None, :] - neg[:, None, :, :] + 1e-6).norm(dim=-1)
        if sq:
            d_pos, d_neg = d_pos**2, d_neg**2
        hinge = d_pos[..., None] - d_neg + opts["margin"]
        band = 1e-5 * (d_pos[..., None] + d_neg + abs(opts["margin"]))
        if bool(((hinge != 0) & (hinge.abs() <= band)).any()):
            return True
        r = opts["safe_radius"]
        if 0 < r < math.inf:
            q_px, _ = RRORD.radius_positions(
                ri["H"], a_px, stride=opts["stride"], h_coords=opts["h_coords"], Hf=hf, Wf=wf
            )
            cheb = (c_px[:, None, :, :] - q_px[:, :, None, :]).abs().amax(dim=-1)
            if near(cheb[torch.isfinite(cheb)], r):
                return True
    return False


def desc_floors(ri: dict, opts: dict, gen_seed, upstream: float) -> tuple[float, float]:
    """The parts of the hinges (d_pos, d_neg and the margin cancel in d_pos - d_neg + margin):
    their mean size over the anchors (loss) and the size of their gradients."""
    d_o, d_r = ri["desc_original"].detach().to(F64), ri["desc_rotated"].detach().to(F64)
    p, q, w, c, _, _ = desc_geometry(ri, opts, gen_seed)
    if d_o.shape[0] == 0 or p.shape[1] == 0 or c.shape[1] == 0:
        return 0.0, 0.0
    a = RRORD.sample(d_o, p)
    pos = RRORD.warped_sample(d_r, q, w)
    neg = RRORD.sample(d_r, c)
    d_pos = F.pairwise_distance(a, pos, eps=1e-6)
    d_neg = (a[:, :, None, :] - neg[:, None, :, :] + 1e-6).norm(dim=-1).nan_to_num(0, 0, 0).amax(-1)
    n = d_pos.numel()
    if opts["distance"] == "squared_l2":
        parts, g = d_pos**2 + d_neg**2, 2 * (d_pos + d_neg)
    else:
        parts, g = d_pos + d_neg, torch.full_like(d_pos, 2.0)
    value = (parts.sum().item() + n * abs(opts["margin"])) / n
    grad = abs(upstream) * g.norm().item()
    return value, grad


def check_rord_descriptor_loss(case: Case, backend: str) -> None:
    opts = case.opts
    gs = case.extra["generator"]
    if case.expect != "error":
        _, ri = case.build(reference=True)
        assume(not desc_kinks(ri, opts, gs))
    dts = [case.tensors[k].dtype for k in ("desc_original", "desc_rotated")]
    loss_tol, grad_tol = tolerance(dts)
    up = upstream_scalar(case.seed)

    def call(inputs, o, bk, form):
        return rord_desc_call(inputs, o, bk, form, gs)

    def ref(ri, o):
        return rord_desc_call(ri, o, None, None, gs, reference=True)

    def bounds(ri, rcomps):
        v, gr = desc_floors(ri, case.opts, gs, up)
        keys = ("desc_original", "desc_rotated")
        # (a hinge's gradient: one term per valid anchor, each of the size of its parts, over
        # the valid count: divided by the anchors here, so a floor of at most that size)
        n = max(1, ri["desc_original"].shape[0])
        return Bounds(
            loss_tol, dict.fromkeys(keys, grad_tol), v, grad_floor=dict.fromkeys(keys, gr / n)
        )

    dtype = F64 if F64 in dts else F32
    verify_loss(case, backend, call, ref, bounds, dtype, (*RORD_NAMES, "weight", "avg_factor"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_rord_descriptor_loss(backend):
    """rord_descriptor_loss / RoRDDescriptorLoss / the registry entry / rord_loss's descriptor
    term: descriptors of any dtype, layout and scale, C from 1, maps from 1x1, B = 0, default or
    given anchors (N = 0, off the map), candidates from the R2 sequence (K = 0), given negatives
    (NaN coordinates: never eligible) or a generator, every H kind, "zeros"/"ignore", l2 and
    squared_l2, margins of either sign up to 1e12, safe_radius 0 to inf, detach_negative: the
    loss and both maps' gradients match the reference (near-ties of j*, hinges at 0 and points
    on a decision's edge rejected); bad options and shapes raise naming them."""
    fuzz_run(
        rord_desc_cases(), backend, EXAMPLES["rord_descriptor_loss"], check_rord_descriptor_loss
    )


# ----------------------------------------------------------------------------------------------
# CenterNet multi-pose (docs/centernet.md "Multi-pose"): centernet_pose_loss.

POSE_WEIGHTS = ("hm_weight", "wh_weight", "off_weight", "hp_weight", "hm_hp_weight")
POSE_SWITCHES = ("hm_hp", "reg_offset", "reg_hp_offset", "dense_hp", "mse_loss")
POSE_OPTIONS = {
    **{name: [*BAD_NUMBER, 2e30, -2e30] for name in POSE_WEIGHTS},
    **{name: BAD_BOOL for name in POSE_SWITCHES},
    "reg_loss": BAD_CHOICE,
    "down_ratio": [0, -1, 2.0, True, "4", None],
    "hm_gauss": [0.0, 9e-7, 2e4, -1.0, float("nan"), "2"],
    "backend": BAD_BACKEND,
}
POSE_NAMES = (
    "outputs",
    "targets",
    "boxes",
    "keypoints",
    "labels",
    "box_mask",
    "return_components",
    "options",
    *POSE_OPTIONS,
)
POSE_HEADS = {"hm": None, "wh": 2, "reg": 2, "hps": "2J", "hm_hp": "J", "hp_offset": 2}
POSE_TERM_HEAD = {"hm": "hm", "wh": "wh", "off": "reg", "hp": "hps", "hm_hp": "hm_hp",
                  "hp_offset": "hp_offset"}  # fmt: skip


def pose_scene(g, b: int, n: int, j: int, size, down_ratio: int):
    """Boxes [B,N,4] (float32, on, across and off the map, empty, repeated) and keypoints
    [B,N,J,3]: (x, y) around the box (some off the map), v in {0, 1, 2}."""
    from test_fuzz import random_boxes

    boxes = random_boxes(g, b, n, size, down_ratio, F32).to(F64)
    lo, hi = boxes[..., None, :2], boxes[..., None, 2:]
    t = uniform(g, (b, n, j, 2), -0.2, 1.2)
    xy = lo + t * (hi - lo)
    v = torch.randint(0, 3, (b, n, j, 1), generator=g).to(F64)
    return boxes.to(F32), torch.cat([xy, v], dim=-1).to(F32)


@st.composite
def pose_cases(draw) -> Case:
    from test_fuzz import clamped_probs

    seed = draw(seeds)
    g = gen(seed)
    b, n, j = batch_size(draw), draw(st.integers(0, 3)), draw(st.integers(1, 3))
    k, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    opts: dict[str, Any] = {
        name: draw(st.sampled_from([1.0, 1.0, 0.1, 0.0, -0.5, 1e30, 1e-30]) | st.floats(-1, 2))
        for name in POSE_WEIGHTS
    }
    opts.update({s: draw(st.booleans()) for s in POSE_SWITCHES})
    opts["reg_loss"] = draw(st.sampled_from(["l1", "l1", "sl1"]))
    opts["down_ratio"] = draw(st.sampled_from([4, 4, 1, 2, 3]))
    if opts["mse_loss"] or chance(draw, 20):
        opts["hm_gauss"] = draw(st.sampled_from([2.0, 1.0, 1e-6, 1e4, 0.7]) | st.floats(0.5, 4))
    dtype = draw(pred_dtypes)
    stacks = draw(st.sampled_from([1, 1, 2]))
    tensors: dict[str, Any] = {}
    for s in range(stacks):
        for head, ch in POSE_HEADS.items():
            c = {None: k, 2: 2, "2J": 2 * j, "J": j}[ch]
            shape = (b, c, h, w)
            if head == "hm" or (head == "hm_hp" and not opts["mse_loss"]):
                v = clamped_probs(g, shape, dtype)
            else:
                v = torch.randn(shape, generator=g, dtype=F64) * (4 if head == "hps" else 1)
            tensors[f"{s}:{head}"] = pred_arg(draw, v, dtype, grad=not chance(draw, 10))
    boxes, kps = pose_scene(g, b, n, j, (h, w), opts["down_ratio"])
    mask = (torch.rand(b, n, generator=g) < 0.7) if draw(st.booleans()) else None
    labels = torch.randint(0, k, (b, n), generator=g)
    raw = draw(st.booleans())
    if raw:
        tensors.update(boxes=Arg(boxes, keep=True), keypoints=Arg(kps, keep=True))
        tensors.update(labels=Arg(labels), box_mask=Arg(mask) if mask is not None else None)
    else:  # CenterNet's batch dict: the reference's targets (float32, as its data loader's)
        t = RPOSE.centernet_pose_targets(
            boxes, kps, labels, mask, num_classes=k, num_joints=j, output_size=(h, w),
            down_ratio=opts["down_ratio"], dense_hp=opts["dense_hp"], mse_loss=opts["mse_loss"],
            hm_gauss=opts.get("hm_gauss"),
        )  # fmt: skip
        for key, v in t.items():
            tensors[f"t:{key}"] = Arg(v, keep=True)
    expect, names = ("either" if b == 0 else "ok"), ()
    if chance(draw, 10):
        bad = draw(st.sampled_from(sorted(POSE_OPTIONS)))
        opts[bad] = draw(st.sampled_from(POSE_OPTIONS[bad]))
        expect, names = "error", (bad,)
    elif chance(draw, 10):
        which = draw(st.sampled_from(["head", "grad_target", "both", "keypoints", "rc"]))
        if which == "head":  # hps with another channel count
            tensors["0:hps"] = Arg(torch.zeros(b, 2 * j + 1, h, w), grad=True)
            which = "outputs"
        elif which == "grad_target":
            if raw:  # keypoints without boxes
                tensors["boxes"], which = None, "targets"
            else:  # a target that requires grad (spec 8: targets are constants)
                tensors["t:hm"] = Arg(tensors["t:hm"].value, F32, grad=True)
                which = "targets"
        elif which == "keypoints":
            if raw:
                tensors["keypoints"] = Arg(torch.zeros(b, n, j + 1, 3))
            else:  # keypoints with a target dict
                tensors["keypoints"] = Arg(kps, keep=True)
        elif which == "both":  # a target dict and raw boxes
            if raw:
                tensors["t:hm"] = Arg(torch.zeros(b, k, h, w))
            else:
                tensors["boxes2"] = Arg(boxes, keep=True)
            which = "targets"
        else:
            which = "return_components"
        expect, names = "error", (which,)
    form = draw(st.sampled_from(["functional", "module", "options", "registry"]))
    case = Case(tensors, opts, expect, names, seed, form=form)
    case.extra.update(
        stacks=stacks, raw=raw, rc=1 if names == ("return_components",) else draw(st.booleans())
    )
    return case


def pose_outputs(inputs: dict, stacks: int):
    outs = [
        {head: inputs[f"{s}:{head}"] for head in POSE_HEADS if f"{s}:{head}" in inputs}
        for s in range(stacks)
    ]
    return outs[0] if stacks == 1 else outs


def pose_call(inputs, opts, backend, form, case: Case):
    outputs = pose_outputs(inputs, case.extra["stacks"])
    rc = case.extra["rc"]
    targets = {k[2:]: v for k, v in inputs.items() if k.startswith("t:")} or None
    raw = {k: inputs[k] for k in ("boxes", "keypoints", "labels", "box_mask") if k in inputs}
    if "boxes2" in inputs:
        raw["boxes"] = inputs["boxes2"]
    kw = {"backend": backend, **opts}
    if form == "module":
        return fl.CenterNetPoseLoss(**kw)(outputs, targets, return_components=rc, **raw)
    if form == "options":
        o = fl.CenterNetPoseOptions(**kw)
        return fl.centernet_pose_loss(outputs, targets, return_components=rc, options=o, **raw)
    if form == "registry":
        loss = build_loss({"type": "CenterNetPoseLoss", **kw})
        return loss(outputs, targets, return_components=rc, **raw)
    return fl.centernet_pose_loss(outputs, targets, return_components=rc, **kw, **raw)


def pose_ref_targets(ri: dict, opts: dict) -> dict:
    if "boxes" not in ri:
        return {k[2:]: v for k, v in ri.items() if k.startswith("t:")}
    k, h, w = ri["0:hm"].shape[1:]
    return RPOSE.centernet_pose_targets(
        ri["boxes"], ri["keypoints"], ri["labels"], ri["box_mask"], num_classes=k,
        num_joints=ri["keypoints"].shape[2], output_size=(h, w), down_ratio=opts["down_ratio"],
        dense_hp=opts["dense_hp"], mse_loss=opts["mse_loss"], hm_gauss=opts.get("hm_gauss"),
    )  # fmt: skip


def check_centernet_pose_loss(case: Case, backend: str) -> None:
    opts = case.opts
    heads = [a for key, a in case.tensors.items() if ":" in key and not key.startswith("t:")]
    dts = [a.dtype for a in heads if isinstance(a, Arg)]
    loss_tol, grad_tol = tolerance(dts)
    rc = case.extra["rc"]
    sw = {k: opts[k] for k in (*POSE_WEIGHTS, *POSE_SWITCHES, "reg_loss") if k in opts}

    def call(inputs, o, bk, form):
        return pose_call(inputs, o, bk, form, case)

    def ref(ri, o):
        t = {k: v.detach() for k, v in pose_ref_targets(ri, o).items()}
        loss, parts = RPOSE.multi_pose_loss(pose_outputs(ri, case.extra["stacks"]), t, **sw)
        return (loss, parts) if rc else loss

    def bounds(ri, rcomps):
        if rcomps is None:
            t = {k: v.detach() for k, v in pose_ref_targets(ri, opts).items()}
            outs = pose_outputs(ri, case.extra["stacks"])
            _, rcomps = RPOSE.multi_pose_loss(outs, t, **sw)
        w = {"hm": opts["hm_weight"], "wh": opts["wh_weight"], "off": opts["off_weight"],
             "hp": opts["hp_weight"], "hm_hp": opts["hm_hp_weight"],
             "hp_offset": opts["off_weight"]}  # fmt: skip
        parts = [abs(w[k] * float(v.detach())) for k, v in rcomps.items()]
        floor = sum(p for p in parts if math.isfinite(p))
        # each term is computed in float32 (float64 heads: float64): its rounding times a weight
        # of 1e30 or 1e-30 is allowed, as test_fuzz's centernet_bounds
        rounding = sum(2 * abs(float(torch.tensor(p, dtype=F64).float()) - p) for p in parts
                       if math.isfinite(p) and F64 not in dts)  # fmt: skip
        keys = [k for k in case.tensors if ":" in k and not k.startswith("t:")]
        return Bounds(loss_tol, dict.fromkeys(keys, grad_tol), floor, loss_abs=rounding)

    def skip_if(ri, rloss, rcomps, rgrads, b):
        # the gathered L1/smooth-L1 regressions at their kinks (a difference within rounding of
        # 0, or of +-1 for sl1)
        t = pose_ref_targets(ri, opts)
        from test_fuzz import gather

        for s in range(case.extra["stacks"]):
            for head, (m, ind, tgt) in {
                "wh": ("reg_mask", "ind", "wh"), "reg": ("reg_mask", "ind", "reg"),
                "hps": ("hps_mask", "ind", "hps"), "hp_offset": ("hp_mask", "hp_ind", "hp_offset"),
            }.items():  # fmt: skip
                if tgt not in t or m not in t or ri[f"{s}:{head}"].shape[0] == 0:
                    continue
                pred = gather(ri[f"{s}:{head}"].detach().to(F64), t[ind])
                mm = t[m].to(F64)
                mm = mm[..., None] if mm.dim() == pred.dim() - 1 else mm
                d = pred * mm - t[tgt].to(F64) * mm
                if near(d, 0.0) or (opts["reg_loss"] == "sl1" and near(d.abs(), 1.0)):
                    return True
        return False

    dtype = F64 if F64 in dts else F32
    verify_loss(
        case, backend, call, ref, bounds, dtype, (*POSE_NAMES, "weight", "avg_factor"), skip_if
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_centernet_pose_loss(backend):
    """centernet_pose_loss / CenterNetPoseLoss / its options / the registry entry: one or two
    stacks of heads of any dtype and layout (some without grad), CenterNet's batch dict or raw
    boxes and keypoints (joints unlabelled, off the map; N = 0, J = 0, B = 0), every switch
    (hm_hp, reg_offset, reg_hp_offset, dense_hp, mse_loss with hm_gauss from 1e-6 to 1e4),
    reg_loss l1/sl1, term weights from -1 to 1e30 and 1e-30: the total, its six components and
    every head's gradient match CenterNet's MultiPoseLoss; bad options and inputs raise."""
    fuzz_run(pose_cases(), backend, EXAMPLES["centernet_pose_loss"], check_centernet_pose_loss)


# ----------------------------------------------------------------------------------------------
# The registry (spec 12; not the IoU-family box losses): a loss built with conftest.build_loss
# against its float64 reference row (elementwise l and validity v) reduced by
# reference.registry.utils.reduce_with_validity (spec 12.2), times loss_weight.

REG_NAMES = ("pred", "target", "weight", "avg_factor", "reduction_override", "reduction",
             "labels", "ignore_index", "loss_weight", "type", "backend")  # fmt: skip
C_CHOICES = [1, 2, 3, 5]


def index_labels(g, shape, c: int, ignore, mode: str, high: int | None = None) -> torch.Tensor:
    """Index labels in [0, high) (default C) with some ignore_index and out-of-range values, or
    all ignored."""
    high = c if high is None else high
    y = torch.randint(0, high, shape, generator=g)
    if mode == "all_ignored" and ignore is not None:
        return torch.full(shape, ignore, dtype=torch.int64)
    if ignore is not None:
        y = torch.where(torch.rand(shape, generator=g) < 0.2, torch.tensor(ignore), y)
    if mode == "out_of_range":
        y = torch.where(torch.rand(shape, generator=g) < 0.2, torch.tensor(high + 3), y)
    return y


def dense_soft(g, shape) -> torch.Tensor:
    return torch.floor(torch.rand(shape, generator=g, dtype=F64) * 64) / 64


def multi_hot(g, shape) -> torch.Tensor:
    return (torch.rand(shape, generator=g) < 0.4).to(F64)


def class_weights(draw, c: int):
    if draw(st.booleans()):
        return None
    return [draw(st.sampled_from([1.0, 0.5, 2.0, 0.0, 1e-3])) for _ in range(c)]


def reg_logits(g, shape, extreme: str) -> torch.Tensor:
    """Logits with saturated values; "sigmoid": also +-1e4 and +-inf (spec 12.4); "softmax":
    +-1e4 and -inf (a -inf class has no mass; +inf is undefined: NaN)."""
    x = torch.randn(shape, generator=g, dtype=F64) * 3
    specials = {"sigmoid": [30.0, -30.0, 1e4, -1e4, math.inf, -math.inf],
                "softmax": [30.0, -30.0, 1e4, -1e4, -math.inf], "none": [0.0]}[extreme]  # fmt: skip
    return sprinkle(g, x, specials, 0.1)


@st.composite
def cls_cases(draw) -> Case:
    seed = draw(seeds)
    g = gen(seed)
    n = batch_size(draw)
    c = draw(st.sampled_from(C_CHOICES))
    spatial = draw(st.sampled_from([(), (), (2, 3), (1, 4)]))
    xs = (n, c, *spatial)
    ys = (n, *spatial)
    kind = draw(st.sampled_from(["CE", "CE", "Focal_sig_idx", "Focal_sig_dense", "Focal_soft_idx",
                                 "Focal_soft_dense", "BCE_dense", "BCE_idx", "BCE_probs", "ASL",
                                 "QFL_dense", "QFL_pair", "VFL"]))  # fmt: skip
    ymode = draw(st.sampled_from(["normal", "normal", "out_of_range", "all_ignored"]))
    cfg: dict[str, Any] = {}
    extra: dict[str, Any] = {"kind": kind}
    t2 = None
    gamma = draw(st.sampled_from([2.0, 0.0, 0.5, 1e-40, 1e30]) | st.floats(0, 4))
    if kind == "CE":
        ign = draw(st.sampled_from([-100, 255, None, 0]))
        cfg = {"type": "CrossEntropyLoss", "ignore_index": ign,
               "label_smoothing": draw(st.sampled_from([0.0, 0.0, 0.1, 0.5])),
               "class_weight": class_weights(draw, c)}  # fmt: skip
        y = index_labels(g, ys, c, ign, ymode)
        ext = "softmax"
    elif kind.startswith("Focal"):
        sig = "sig" in kind
        ign = draw(st.sampled_from([-100, None, 255]))
        alpha = draw(st.sampled_from([0.25, 0.5, 1.0, "list"]))
        if alpha == "list":
            alpha = [draw(st.sampled_from([0.1, 0.25, 0.9])) for _ in range(c)]
        cfg = {"type": "FocalLoss", "use_sigmoid": sig, "gamma": gamma, "alpha": alpha,
               "class_weight": class_weights(draw, c), "ignore_index": ign}  # fmt: skip
        if kind.endswith("idx"):
            y = index_labels(g, ys, c, ign, ymode, high=c + 1 if sig else c)
        else:
            y = (
                dense_soft(g, xs)
                if sig
                else torch.softmax(torch.randn(xs, generator=g, dtype=F64), 1)
            )
            y = torch.floor(y * 64) / 64
        ext = "sigmoid" if sig else "softmax"
    elif kind.startswith("BCE"):
        ign = draw(st.sampled_from([-100, None]))
        cfg = {"type": "BinaryCrossEntropyLoss", "ignore_index": ign,
               "pos_weight": draw(st.sampled_from([None, 2.0, "list"])),
               "class_weight": class_weights(draw, c)}  # fmt: skip
        if cfg["pos_weight"] == "list":
            cfg["pos_weight"] = [draw(st.sampled_from([0.5, 1.0, 3.0])) for _ in range(c)]
        if kind == "BCE_idx":
            y = index_labels(g, ys, c, ign, ymode, high=c + 1 if c > 1 else 2)
        else:
            y = dense_soft(g, xs)
            if ign is not None:
                y = torch.where(torch.rand(xs, generator=g) < 0.15, float(ign), y)
        if kind == "BCE_probs":
            cfg["with_logits"] = False
        ext = "sigmoid"
    elif kind == "ASL":
        cfg = {"type": draw(st.sampled_from(["AsymmetricLoss", "AsymmetricLossOptimized"])),
               "gamma_neg": draw(st.sampled_from([4.0, 0.0, 2.5])),
               "gamma_pos": draw(st.sampled_from([1.0, 0.0, 0.5])),
               "clip": draw(st.sampled_from([0.05, 0.0, 0.3])),
               "disable_torch_grad_focal_loss": draw(st.booleans())}  # fmt: skip
        y = multi_hot(g, xs) if draw(st.booleans()) else dense_soft(g, xs)
        ext = "sigmoid"
    elif kind.startswith("QFL"):
        cfg = {"type": "QualityFocalLoss", "beta": draw(st.sampled_from([2.0, 1.0, 0.5, 1e-40]))}
        if kind == "QFL_dense":
            y = dense_soft(g, xs) * multi_hot(g, xs)
        else:
            y = torch.randint(-1, c + 2, ys, generator=g)
            t2 = dense_soft(g, ys)
        ext = "sigmoid"
    else:
        cfg = {"type": draw(st.sampled_from(["VariFocalLoss", "VarifocalLoss"])),
               "alpha": draw(st.sampled_from([0.75, 0.25, 1.0])), "gamma": gamma,
               "iou_weighted": draw(st.booleans())}  # fmt: skip
        y = dense_soft(g, xs) * multi_hot(g, xs)
        ext = "sigmoid"
    x = reg_logits(g, xs, ext if draw(st.booleans()) else "none")
    if kind == "BCE_probs":
        x = sprinkle(g, torch.sigmoid(x), [0.0, 1.0], 0.1)
    y_int = not y.is_floating_point()
    ydt = draw(st.sampled_from([torch.int64, torch.int32])) if y_int else None
    tensors = {"target": Arg(y, ydt) if y_int else Arg(y, keep=False)}
    if t2 is not None:
        tensors["target2"] = Arg(t2)
    extra["y_dense_float"] = not y_int
    return registry_case(draw, g, seed, cfg, x, tensors, extra, lshape_kind(kind, xs, ys))


def lshape_kind(kind: str, xs, ys):
    """The elementwise loss's shape: [N,*] (softmax CE/focal index, QFL) or [N,C,*]."""
    if kind in ("CE", "Focal_soft_idx", "Focal_soft_dense") or kind.startswith("QFL"):
        return ys
    return xs


def registry_case(draw, g, seed, cfg, x, tensors, extra, lshape) -> Case:
    """The shared part of a registry example: the prediction (dtype, layout), the reduction and
    its options, the weight (shape, dtype, zeros hiding NaN/inf predictions: spec 12.2 rule 1),
    loss_weight and an invalid input now and then."""
    n = x.shape[0]
    dtype = draw(pred_dtypes)
    opts: dict[str, Any] = {}
    reduction = draw(st.sampled_from([None, None, "none", "mean", "sum", "batchmean"]))
    if reduction is not None:
        opts["reduction_override"] = reduction
    if draw(st.booleans()) and reduction in (None, "mean"):
        opts["avg_factor"] = draw(st.sampled_from([4.0, 0.0, 1e-30, 1e30, 7]))
    lw = draw(st.sampled_from([1.0, 1.0, 0.5, 2.0, 1e-30]))
    cfg = {**cfg, "loss_weight": lw}
    wkind = draw(st.sampled_from(["none", "none", "full", "nodim1", "row", "zeros_nan"]))
    w = None
    if len(lshape) == 0 or (n == 0 and wkind == "row"):
        wkind = "none"
    if wkind in ("full", "zeros_nan"):
        w = sprinkle(g, uniform(g, lshape, 0.0, 2.0), [0.0, 1e-30, 1e30, 1.0], 0.3)
        if wkind == "zeros_nan":
            w = torch.where(torch.rand(lshape, generator=g) < 0.4, 0.0, w.clamp(max=2.0))
    elif wkind == "nodim1" and len(lshape) >= 2 and tuple(lshape) == tuple(x.shape):
        w = uniform(g, (lshape[0], *lshape[2:]), 0.0, 2.0)
        w = torch.where(torch.rand(w.shape, generator=g) < 0.3, 0.0, w)
    elif wkind == "row":  # broadcast over everything but the last dim
        w = uniform(g, (1,) * (len(lshape) - 1) + tuple(lshape[-1:]), 0.5, 1.5)
    hidden = extra.pop("hidden", None)
    if w is not None:
        wdt = draw(st.sampled_from([F32, F64, F32, torch.int64, torch.bool]))
        if not wdt.is_floating_point:
            w = (w > 0.5).to(F64) if wdt == torch.bool else torch.round(w)
        tensors["weight"] = Arg(w, wdt)
        wl = RGU.as_loss_shape(tensors["weight"].value.to(F64), torch.zeros(lshape, dtype=F64))
        zero = wl == 0
        if len(lshape) == x.dim():
            hid = zero
        elif len(lshape) == 1:  # one value per sample: every element of the sample
            hid = zero.reshape(-1, *([1] * (x.dim() - 1))).expand(x.shape)
        else:  # [N,*]: every class of the position
            hid = zero.unsqueeze(1).expand(x.shape)
        if extra.get("coupled") and x.dim() >= 2:
            # the formula couples the channels: only a position of weight 0 in every channel
            # has its inputs replaced (spec 12.6 "Zero weight")
            hid = hid.all(dim=1, keepdim=True).expand(x.shape)
        hidden = hid if hidden is None else hidden | hid
    if (hidden is not None and wkind == "zeros_nan") or (hidden is not None and chance(draw, 30)):
        x = torch.where(hidden & (torch.rand(x.shape, generator=g) < 0.5),
                        sprinkle(g, torch.full_like(x, math.nan), [math.inf, -math.inf], 0.5), x)  # fmt: skip
        layout = draw(st.sampled_from(["contiguous", "sliced"] + (["transposed"] if x.dim() >= 2 else [])
                                      + (["channels_last"] if x.dim() == 4 else [])))  # fmt: skip
        tensors["pred"] = Arg(x, dtype, layout, grad=True)
    else:
        tensors["pred"] = pred_arg(draw, x, dtype)
    extra["hidden"] = hidden
    expect, names = "ok", ()
    if "avg_factor" in opts and reduction is None and cfg["type"] in DEFAULT_REDUCTION:
        expect, names = "error", ("avg_factor",)  # a default reduction "sum" or "batchmean"
    if chance(draw, 8):
        which = draw(st.sampled_from(["avg_sum", "weight", "reduction", "pred", "option"]))
        if which == "avg_sum":
            opts.update(
                reduction_override=draw(st.sampled_from(["sum", "batchmean"])), avg_factor=2.0
            )
            which = "avg_factor"
        elif which == "weight":
            tensors["weight"] = Arg(torch.ones(n + 1, 7))
        elif which == "reduction":
            opts["reduction_override"], which = "bogus", "reduction_override"  # (spec 12.2)
        elif which == "pred":
            tensors["pred"] = Arg(torch.zeros(x.shape, dtype=torch.int64))
        else:
            cfg["bogus_option"], which = 1.0, "bogus_option"
        expect, names = "error", (which,)
    case = Case(tensors, opts, expect, names, seed, form="registry")
    case.extra.update(extra, cfg=cfg, lshape=tuple(lshape))
    return case


def registry_ref_l(case: Case, x: torch.Tensor, ri: dict):
    """(l, v) of the reference row for the example's loss (float64)."""
    cfg, kind = case.extra["cfg"], case.extra["kind"]
    y = ri["target"]
    o = {k: v for k, v in cfg.items() if k not in ("type", "loss_weight", "reduction", "backend")}
    o.pop("disable_torch_grad_focal_loss", None)
    if kind == "CE":
        o.pop("avg_non_ignore", None)
        return RGC.cross_entropy(x, y, **o)
    if kind.startswith("Focal"):
        return RGC.focal_loss(x, y, **o)
    if kind.startswith("BCE"):
        return RGC.binary_cross_entropy(x, y, **o)
    if kind == "ASL":
        dis = cfg.get("disable_torch_grad_focal_loss", True)
        return RGC.asymmetric_loss(x, y, **o, disable_torch_grad_focal=dis), None
    if kind == "QFL_dense":
        return RGD.quality_focal_loss(x, y, **o), None
    if kind == "QFL_pair":
        return RGD.quality_focal_loss(x, (y, ri["target2"]), **o), None
    if kind == "VFL":
        return RGD.varifocal_loss(x, y, **o), None
    if kind == "Dice":
        return RGS.dice_loss(x, y, **o), None
    if kind == "Lovasz":
        return RGL.lovasz_softmax_loss(x, y, **o), None
    if kind == "OHEM":
        red = case.extra["red"]
        return RGS.ohem_cross_entropy_loss(x, y, **o, reduction=red), None
    if kind == "KD":
        o["temperature"] = o.pop("temperature", 4.0)
        return RGK.knowledge_distillation_loss(x, y, **o), None
    if kind == "DKD":
        lab = ri["labels"]
        c = x.shape[1]
        v = (lab >= 0) & (lab < c)
        row = RGK.dkd_loss(x, y, torch.where(v, lab, 0), **o)
        return torch.where(v, row, torch.zeros((), dtype=row.dtype)), v
    if kind.startswith("Feature"):
        fn = {"FeatureMSE": RGK.feature_mse_loss, "FeatureL1": RGK.feature_l1_loss,
              "FeatureCosine": RGK.feature_cosine_loss}[kind]  # fmt: skip
        return fn(x, y, **o), None
    raise AssertionError(kind)


DEFAULT_REDUCTION = {"AsymmetricLoss": "sum", "AsymmetricLossOptimized": "sum", "KDLoss": "batchmean",
                     "KnowledgeDistillationLoss": "batchmean"}  # fmt: skip


def check_registry(case: Case, backend: str) -> None:
    cfg = case.extra["cfg"]
    x = case.tensors["pred"]
    loss_tol, grad_tol = tolerance([x.dtype])
    proj_cache: dict = {}

    def projection(shape):
        """'none': the elementwise result reduced by fixed positive weights (exact in float16)."""
        if shape not in proj_cache:
            gg = gen(case.seed + 1)
            proj_cache[shape] = (torch.randint(2, 7, shape, generator=gg) / 4).to(F64)
        return proj_cache[shape]

    def finish(out):
        if out.dim() == 0:
            return out
        p = projection(tuple(out.shape))
        return (out * p.to(out.dtype).to(out.device)).sum()

    def call(inputs, opts, bk, form):
        loss = build_loss({**cfg, "backend": bk})
        kw = dict(opts)
        if "target2" in inputs:
            target = (inputs["target"], inputs["target2"])
        else:
            target = inputs["target"]
        for k in ("weight", "labels"):
            if inputs.get(k) is not None:
                kw[k] = inputs[k]
        out = loss(inputs["pred"], target, **kw)
        if case.extra.get("shape_check") is None:
            case.extra["shape_check"] = tuple(out.shape)
        return finish(out)

    def ref(ri, opts):
        xr = ri["pred"]
        hidden = case.extra.get("hidden")
        if hidden is not None:  # rule 1: the inputs of a hidden element are replaced
            xr = torch.where(hidden, torch.zeros((), dtype=xr.dtype), xr)
        red = opts.get("reduction_override") or cfg.get("reduction")
        red = red or DEFAULT_REDUCTION.get(cfg["type"], "mean")
        case.extra["red"] = red
        if xr.shape[0] == 0 and case.extra["kind"] in ("Dice", "FeatureCosine"):
            # (the literal per-image loops stack no row: l of an empty batch is empty, 12.7)
            elem, v = xr.sum() * 0 + torch.zeros(case.extra["lshape"], dtype=xr.dtype), None
        else:
            elem, v = registry_ref_l(case, xr, ri)
        if case.extra["kind"] == "OHEM":
            out = elem
        else:
            w = ri.get("weight")
            out = RGU.reduce_with_validity(elem, w, v, red, opts.get("avg_factor"))
        out = out * cfg["loss_weight"]
        return finish(out)

    def bounds(ri, rcomps):
        return Bounds(loss_tol, {"pred": grad_tol}, grad_floor={"pred": feature_grad_floor(ri)})

    def feature_grad_floor(ri) -> float:
        """Normalised features (and the cosine): the Jacobian of x / ||x|| over the channels,
        (I - f f^T) / ||x||, cancels (completely for C = 1, where the reference's gradient is
        float64 rounding noise): the floor is the size of its parts, |dl/df| / ||x||, through
        the reduction's weights."""
        kind = case.extra["kind"]
        if not kind.startswith("Feature") or not case.extra.get("coupled"):
            return 0.0
        xs = ri["pred"].detach().to(F64)
        hidden = case.extra.get("hidden")
        if hidden is not None:
            xs = torch.where(hidden, torch.zeros((), dtype=F64), xs)
        t = ri["target"].detach().to(F64)
        ns = xs.norm(dim=1, keepdim=True).clamp_min(1e-12)
        f = xs / ns
        tt = t / t.norm(dim=1, keepdim=True).clamp_min(1e-12) if cfg["normalize"] else t
        if kind == "FeatureMSE":
            dl = 2 * (f - tt).abs()
        elif kind == "FeatureL1":
            dl = torch.ones_like(f)
        else:
            dl = tt.abs() / tt.norm(dim=1, keepdim=True).clamp_min(1e-12)
        ld = torch.ones(case.extra["lshape"], dtype=F64, requires_grad=True)
        red = case.opts.get("reduction_override") or DEFAULT_REDUCTION.get(cfg["type"], "mean")
        w = ri.get("weight")
        out = RGU.reduce_with_validity(ld, w, None, red, case.opts.get("avg_factor"))
        (gl,) = torch.autograd.grad(finish(out) * cfg["loss_weight"], ld)
        if gl.dim() < dl.dim():
            gl = gl.unsqueeze(1)
        parts = (dl / ns * gl).nan_to_num(0, 0, 0)
        return abs(upstream_scalar(case.seed)) * parts.norm().item()

    dtype = F64 if x.dtype == F64 else F32
    verify_loss(case, backend, call, ref, bounds, dtype, (*REG_NAMES, "bogus_option"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_registry_classification(backend):
    """CrossEntropyLoss (ignore_index, label_smoothing, class_weight), FocalLoss sigmoid and
    softmax with index and dense targets, BinaryCrossEntropyLoss (dense, index, probabilities),
    AsymmetricLoss(Optimized), QualityFocalLoss (dense and (labels, scores)), VariFocalLoss:
    logits of any dtype and layout (+-1e4, +-inf where defined), empty batches, all-ignored and
    out-of-range labels, every reduction, avg_factor, weights of l's shape, without the class
    axis or broadcast (zeros hiding NaN/inf logits), loss_weight: the value (the 'none' result
    reduced by fixed weights) and d/dpred match the reference row reduced by spec 12.2."""
    fuzz_run(cls_cases(), backend, EXAMPLES["registry_classification"], check_registry)


def lovasz_or_ohem_kinks(case: Case, ri: dict) -> bool:
    """Lovasz: two valid pixels' errors of a class within rounding of each other (equal ones
    included: the gradient at an exact tie is a subgradient the backends may pick differently,
    spec 12.7). OHEM: a valid pixel's p_y within rounding of the threshold or of another's."""
    kind = case.extra["kind"]
    x = ri["pred"].detach().to(F64)
    y = ri["target"]
    if x.numel() == 0:
        return False
    c = x.shape[1]
    ign = case.extra["cfg"].get("ignore_index", 255)
    valid = (y != ign) & (y >= 0) & (y < c)
    p = torch.softmax(x, 1)
    if kind == "OHEM":
        q = p.gather(1, torch.where(valid, y, 0).unsqueeze(1)).squeeze(1)[valid]
        thr = case.extra["cfg"].get("thresh", 0.7)
        qs = q.sort().values
        return near(q, thr) or bool(((qs[1:] - qs[:-1]) <= 1e-5 * qs[1:]).any())
    per_image = case.extra["cfg"].get("per_image", False)
    groups = [slice(i, i + 1) for i in range(x.shape[0])] if per_image else [slice(None)]
    for sl in groups:
        for k in range(c):
            e = (p[sl, k] - (y[sl] == k).to(F64)).abs()[valid[sl]].sort().values
            if bool(((e[1:] - e[:-1]) <= 1e-5 * e[1:].abs()).any()):
                return True
    return False


@st.composite
def seg_cases(draw) -> Case:
    seed = draw(seeds)
    g = gen(seed)
    n = batch_size(draw)
    c = draw(st.sampled_from([1, 2, 3, 4]))
    hw = draw(st.sampled_from([(2, 3), (1, 4), (3, 3), (0, 2)]))
    xs, ys = (n, c, *hw), (n, *hw)
    kind = draw(st.sampled_from(["Dice", "Dice", "Lovasz", "OHEM"]))
    ymode = draw(st.sampled_from(["normal", "normal", "out_of_range", "all_ignored"]))
    y = index_labels(g, ys, c, 255, ymode)
    valid = (y != 255) & (y >= 0) & (y < c)
    extra: dict[str, Any] = {"kind": kind}
    if kind == "Dice":
        cfg = {"type": "DiceLoss", "smooth": draw(st.sampled_from([1.0, 1e-5, 0.5])),
               "exponent": draw(st.sampled_from([2.0, 1.0, 3.0])),
               "naive_dice": draw(st.booleans()), "use_sigmoid": draw(st.booleans()),
               "class_weight": class_weights(draw, c), "ignore_index": 255}  # fmt: skip
        lshape = (n,)
        # ignored (and out-of-range) pixels: their logits are replaced (spec 12.7)
        extra["hidden"] = (~valid).unsqueeze(1).expand(xs)
        x = reg_logits(g, xs, "none")
    else:
        cfg = {"type": "LovaszLoss" if kind == "Lovasz" else "OHEMCrossEntropyLoss",
               "class_weight": class_weights(draw, c), "ignore_index": 255}  # fmt: skip
        if kind == "Lovasz":
            cfg["per_image"] = draw(st.booleans())
            cfg["classes"] = draw(st.sampled_from(["present", "all", [0], list(range(c))]))
            lshape = (n,) if cfg["per_image"] else ()
        else:
            cfg["thresh"] = draw(st.sampled_from([0.7, 0.3, 0.99]))
            cfg["min_kept"] = draw(st.sampled_from([0, 1, 3, 100000]))
            lshape = ()  # (the reference reduces itself: no weight)
        x = torch.randn(xs, generator=g, dtype=F64) * 2
    case = registry_case(draw, g, seed, cfg, x, {"target": Arg(y)}, extra, lshape)
    if kind == "OHEM":
        case.opts.pop("avg_factor", None)
    return case


@pytest.mark.parametrize("backend", BACKENDS)
def test_registry_segmentation(backend):
    """DiceLoss (smooth, exponent, naive_dice, use_sigmoid, class_weight; ignored pixels hiding
    NaN/inf logits), LovaszLoss (per_image, classes) and OHEMCrossEntropyLoss (thresh, min_kept):
    empty batches and maps, all-ignored and out-of-range labels, every reduction, avg_factor,
    per-image weights: the value and d/dpred match the reference (Lovasz error ties and OHEM
    threshold near-ties rejected)."""

    def check(case, bk):
        if case.expect != "error" and case.extra["kind"] in ("Lovasz", "OHEM"):
            _, ri = case.build(reference=True)
            assume(not lovasz_or_ohem_kinks(case, ri))
        check_registry(case, bk)

    fuzz_run(seg_cases(), backend, EXAMPLES["registry_segmentation"], check)


@st.composite
def kd_cases(draw) -> Case:
    seed = draw(seeds)
    g = gen(seed)
    n = batch_size(draw)
    kind = draw(st.sampled_from(["KD", "KD", "DKD", "FeatureMSE", "FeatureL1", "FeatureCosine"]))
    c = draw(st.sampled_from([2, 3, 5] if kind == "DKD" else [1, 2, 4]))
    spatial = () if kind == "DKD" else draw(st.sampled_from([(), (2, 3), (1, 1)]))
    xs = (n, c, *spatial)
    extra: dict[str, Any] = {"kind": kind}
    tensors: dict[str, Any] = {}
    # (not 1e-3 or 1e6: there the literal float64 reference loses its digits -- DKD at T = 1e-3
    # gives 0 for a 2.4e-64 loss, checked with mpmath; KD's textbook KL cancels at T = 1e6, spec
    # 12.6 -- and cannot judge the library)
    temp = draw(st.sampled_from([4.0, 1.0, 0.05, 20.0, 100.0]))
    if kind in ("KD", "DKD"):
        ext = "softmax" if chance(draw, 30) else "none"
        x, t = reg_logits(g, xs, ext), reg_logits(g, xs, ext).clamp(max=1e4)
        if kind == "KD":
            cfg = {"type": draw(st.sampled_from(["KDLoss", "KnowledgeDistillationLoss"])),
                   "temperature": temp}  # fmt: skip
            lshape = (n, *spatial)
        else:
            cfg = {"type": "DKDLoss", "temperature": temp,
                   "alpha": draw(st.sampled_from([1.0, 0.0, 2.5])),
                   "beta": draw(st.sampled_from([8.0, 0.0, 1.0]))}  # fmt: skip
            lab = torch.randint(0, c, (n,), generator=g)
            if chance(draw, 30):
                lab = torch.where(torch.rand(n, generator=g) < 0.3, torch.tensor(c + 1), lab)
            tensors["labels"] = Arg(lab)
            lshape = (n,)
    else:
        x, t = torch.randn(xs, generator=g, dtype=F64), torch.randn(xs, generator=g, dtype=F64)
        cfg = {"type": kind + "Loss", "normalize": draw(st.booleans())}
        extra["coupled"] = cfg["normalize"] or kind == "FeatureCosine"
        lshape = (n, *spatial) if kind == "FeatureCosine" else xs
    tdt = draw(st.sampled_from([None, F32, F64]))
    tensors["target"] = Arg(t, tdt) if tdt else Arg(t)
    return registry_case(draw, g, seed, cfg, x, tensors, extra, lshape)


@pytest.mark.parametrize("backend", BACKENDS)
def test_registry_distillation(backend):
    """KDLoss (temperatures 0.05 to 100, -inf logits), DKDLoss (labels out of range, alpha,
    beta), FeatureMSELoss / FeatureL1Loss / FeatureCosineLoss (normalize): [N,C] and dense
    maps, empty batches, every reduction, avg_factor, weights (zeros hiding NaN/inf student
    logits): the value and d/dpred match the reference rows reduced by spec 12.2."""
    fuzz_run(kd_cases(), backend, EXAMPLES["registry_distillation"], check_registry)


# ----------------------------------------------------------------------------------------------
# The registry's detection losses (spec 12.5): the IoU family (on the triton backend one kernel,
# kernels/box.py), SmoothL1Loss, L1Loss, BalancedL1Loss and DistributionFocalLoss, against their
# float64 reference rows reduced by spec 12.2; on the triton backend the per-box values and
# gradients also against the torch backend's (autograd's subgradients at ties, its NaN pattern).

BOX_REFS = {"IoULoss": RGD.iou_loss, "GIoULoss": RGD.giou_loss, "DIoULoss": RGD.diou_loss,
            "CIoULoss": RGD.ciou_loss, "EIoULoss": RGD.eiou_loss, "SIoULoss": RGD.siou_loss}  # fmt: skip
DET_NAMES = (*REG_NAMES, "bbox_format", "mode", "eps", "theta", "beta", "alpha", "gamma",
             "reg_max", "bogus_option")  # fmt: skip
# The pairs of a box example, one kind per pair, "xyxy" on a grid of 1/8 (2^-10 for "fit"): every
# coordinate difference is exact in float32, so a float32 backend sees the reference's offsets.
BOX_KINDS = ("random", "random", "random", "identical", "ties", "fit", "disjoint", "zero_pred",
             "zero_target", "line", "nested", "centres", "inverted", "points")  # fmt: skip
# Power-of-two scales of a whole example (exact): float32 up to 2^100 (areas beyond its range),
# float64 2^+-400 (the reference's areas stay finite).
# KNOWN: float32 boxes below ~2^-50 (areas and products under float32's normal range): both
# backends lose their digits (box_terms only scales down), e.g. IoULoss(mode="log", eps=1e-30)
# of [1,2,9,8] and [1.5,2,9,8.5] times 2^-64 gives 15.537 where the reference gives 15.839.
BOX_SCALES = {F64: [0, 0, 0, 0, -400, -30, 60, 400], F32: [0, 0, 0, 0, -40, 60, 100]}


def pick(draw, values):
    """One of ``values``, uniformly (a plain RNG seeded by hypothesis, as ``chance``: its own
    choices favour the first values heavily, and 25 examples must reach every option)."""
    values = list(values)
    return values[random.Random(draw(seeds)).randrange(len(values))]


def box_pairs(g, n: int, kinds: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, target) [n, 4] "xyxy" float64, pair i of kind ``kinds[i]``: random overlapping,
    identical, integer ties on a 4x4 grid (shared edges, equal sizes, touching, nested), well
    fitting (2^-10 apart), disjoint, a point or a line, nested, coincident centres, an inverted
    pred (x2 < x1, y2 < y1), both the same point."""
    xy = torch.floor(uniform(g, (n, 2), -8, 32) * 8) / 8
    wh = torch.floor(uniform(g, (n, 2), 0.5, 24) * 8) / 8
    t = torch.cat([xy, xy + wh], -1)
    p = t + torch.floor(torch.randn((n, 4), generator=g, dtype=F64) * 32) / 8
    p = torch.cat([torch.minimum(p[:, :2], p[:, 2:]), torch.maximum(p[:, :2], p[:, 2:])], -1)
    lo = torch.randint(0, 3, (n, 2, 2), generator=g).to(F64)
    tie = torch.cat([lo, lo + torch.randint(1, 3, (n, 2, 2), generator=g)], -1)
    half = torch.floor(uniform(g, (n, 2), 0.5, 8) * 8) / 8
    c = (t[:, :2] + t[:, 2:]) / 2
    alt = {
        "identical": (t, t),
        "ties": (tie[:, 0], tie[:, 1]),
        "fit": (t + torch.randint(-3, 4, (n, 4), generator=g) * 2.0**-10, t),
        "disjoint": (t + torch.cat([wh[:, :1] + 1, wh[:, 1:] * 0], -1).repeat(1, 2), t),
        "zero_pred": (p[:, :2].repeat(1, 2), t),
        "zero_target": (p, t[:, :2].repeat(1, 2)),
        "line": (p[:, [0, 1, 2, 1]], t),
        "nested": (t + torch.cat([wh / 4, -wh / 4], -1), t),
        "centres": (torch.cat([c - half, c + half], -1), t),
        "inverted": (p[:, [2, 3, 0, 1]], t),
        "points": (t[:, :2].repeat(1, 2), t[:, :2].repeat(1, 2)),
    }
    for i, k in enumerate(kinds):
        if k in alt:
            p[i], t[i] = alt[k][0][i], alt[k][1][i]
    return p, t


def to_xywh(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([(b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]], -1)


# Examples per loss (torch backend, triton backend): each loss gets its own derandomised run
# (one run over all of them gave some losses no example at all in 25).
DET_EXAMPLES = {"IoULoss": (8, 3), "GIoULoss": (7, 3), "DIoULoss": (7, 3), "CIoULoss": (7, 3),
                "EIoULoss": (7, 3), "SIoULoss": (8, 3), "SmoothL1Loss": (4, 2), "L1Loss": (4, 2),
                "BalancedL1Loss": (4, 2), "DistributionFocalLoss": (4, 2)}  # fmt: skip


def det_weight(draw, g, lshape, box: bool):
    """A weight of l's shape (zeros included), [...,4] for a box loss (averaged: a row of zeros,
    or one whose mean is exactly 0), l's shape without dim 1, or broadcast; and the elements of
    weight 0 (spec 12.2 rule 1). None in about a third of the examples."""
    kinds = ["none", "full", "zeros_nan", "zeros_nan", "row"]
    if box:
        kinds.append("box4")
    if len(lshape) == 2:
        kinds.append("nodim1")
    wkind = pick(draw, (kinds)) if len(lshape) else "none"
    if wkind == "none" or 0 in lshape:
        return None, None, wkind
    zero = torch.rand(lshape, generator=g) < (0.4 if wkind == "zeros_nan" else 0.2)
    # (up to 1e6: float32's range holds l w for BalancedL1Loss's alpha = 1e15 and the torch
    # backend's w / eps for eps = 1e-30)
    w = sprinkle(g, uniform(g, lshape, 0.25, 2.0), [1e-30, 1e6, 1.0], 0.2)
    if wkind == "row":
        w = uniform(g, (1,) * (len(lshape) - 1) + tuple(lshape[-1:]), 0.5, 1.5)
        return Arg(w, pick(draw, ([F32, F64]))), None, wkind
    if wkind == "nodim1":
        zero = torch.rand(lshape[:1], generator=g) < 0.4
        w = torch.where(zero, 0.0, uniform(g, lshape[:1], 0.5, 1.5))
        return Arg(w, F32), zero[:, None].expand(lshape), wkind
    w = torch.where(zero, 0.0, w)
    if wkind == "box4":
        w4 = torch.where(zero[..., None], 0.0, uniform(g, (*lshape, 4), 0.0, 2.0))
        mean0 = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=F64)  # (its mean is exactly 0)
        w4 = torch.where((zero & (torch.rand(lshape, generator=g) < 0.5))[..., None], mean0, w4)
        # (averaged in its own dtype, then the loss's: spec 12.5 "Weights"; keep: the reference
        # averages the float32 values in float32 too)
        return Arg(w4, pick(draw, ([F32, F64])), keep=True), zero, wkind
    wdt = pick(draw, ([F32, F64, F32, torch.int64, torch.bool]))
    if not wdt.is_floating_point:
        w = torch.where(zero, 0.0, torch.ones_like(w))
    return Arg(w, wdt), zero, wkind


@st.composite
def det_cases(draw, loss_type: str) -> Case:
    seed = draw(seeds)
    g = gen(seed)
    box = loss_type in BOX_REFS
    dtype = pick(draw, [F32, F32, F32, F64, F64, F16, BF16])
    n = batch_size(draw, empty=8)
    shape = pick(draw, ([(n,), (n,), (2, n), (n, 1), ()]))  # l's shape ([] : one box)
    cfg: dict[str, Any] = {"type": loss_type}
    extra: dict[str, Any] = {"kind": loss_type, "box": box}
    tensors: dict[str, Any] = {}
    count = math.prod(shape)
    if box:
        fmt = pick(draw, (["xyxy", "xyxy", "xywh"]))
        cfg["bbox_format"] = fmt
        cfg["eps"] = pick(draw, ([1e-6, 1e-6, 1e-6, 0.0, 1e-30, 1.0, 1e10]))
        if loss_type == "IoULoss":
            cfg["mode"] = pick(draw, (["log", "linear", "square"]))
        if loss_type == "SIoULoss":
            cfg["theta"] = pick(draw, ([4.0, 4.0, 1.0, 1.5, 0.5, 1e-6, 100.0, 1e6]))
        kinds = [pick(draw, (BOX_KINDS)) for _ in range(count)]
        if loss_type == "SIoULoss" and cfg["theta"] > 10:
            # KNOWN: SIoU with a large theta and an inverted pred (omega = |w_p - w_g| /
            # max(w_p, w_g) > 1): d(-expm1(-omega))/d omega is formed as expm1(-omega) + 1 (both
            # backends; autograd's expm1 rule), which cancels to 0 in float32 from omega ~ 17:
            # theta 1e6, pred [2,0,0,3], target [0.95,0,1.05,3] gives d/dx1 = -5.0e-5 where
            # the reference's is 3.74e-3; with target [0.9375,0,1.0625,3] the backends disagree:
            # l = 1.4711 (triton), 1.5 (torch: its expm1(-17) is -1.0, 1 ulp off), reference
            # 1.4797: theta amplifies any rounding of 1 - e^-omega near 1.
            kinds = ["random" if k == "inverted" else k for k in kinds]
        # (SIoU's max(w_p, w_g) = 0 with w_p != w_g: KNOWN, see ``siou_known_zero_max``)
        p, t = box_pairs(g, count, kinds)
        scale = pick(draw, (BOX_SCALES.get(dtype, [0])))
        p, t = p * 2.0**scale, t * 2.0**scale
        if fmt == "xywh":
            p, t = to_xywh(p), to_xywh(t)
        p, t = p.reshape(*shape, 4), t.reshape(*shape, 4)
        extra["scale"] = scale
        extra["kinds"] = kinds
        tdt = pick(draw, ([None, None, None, F64, "int", "bool"]))
        if tdt == "int" and scale == 0:
            t = torch.round(t)
            tdt = pick(draw, ([torch.int64, torch.int32]))
        elif tdt == "bool":
            t = (torch.rand(t.shape, generator=g) < 0.5).to(F64)
            t = torch.cat([torch.minimum(t[..., :2], t[..., 2:]), t[..., 2:].clamp(min=1)], -1)
            tdt = torch.bool
        else:
            tdt = dtype if tdt in (None, "int") else tdt
        lshape, x, y = tuple(shape), p, t
    elif loss_type == "DistributionFocalLoss":
        r = pick(draw, ([1, 4, 16]))
        cfg["reg_max"] = r
        lshape = tuple(shape)
        # KNOWN: saturated logits (a margin above ~16) only for float64: in float32 the
        # log-softmax of the dominant bin rounds log(1 + e^-31) to 0 (both backends: plain
        # PyTorch): pred [-30, 1.2575], target 1 gives l = 0 where the reference's is 2.6e-14
        x = torch.randn((*shape, r + 1), generator=g, dtype=F64) * 3
        if dtype == F64:
            x = sprinkle(g, x, [30.0, -30.0, 1e4, -1e4], 0.1)
        y = sprinkle(g, torch.floor(uniform(g, shape, 0, r) * 64) / 64, [0.0, float(r), 1.0], 0.2)
        tdt = pick(draw, ([F32, F64])) if dtype != F64 else F64
    else:
        lshape = (*shape, pick(draw, ([1, 4])))
        y = torch.floor(uniform(g, lshape, -4, 4) * 64) / 64
        x = y + sprinkle(
            g, torch.floor(torch.randn(lshape, generator=g, dtype=F64) * 64) / 64, [0.0], 0.2
        )
        if loss_type == "SmoothL1Loss":
            cfg["beta"] = pick(draw, ([1.0, 1.0, 0.0, 0.5, 2.0**-10, 20.0]))
        elif loss_type == "BalancedL1Loss":
            choices = [
                (0.5, 1.5, 1.0),
                (0.5, 1.5, 1.0),
                (1.0, 1e-6, 1.0),
                (0.125, 10.0, 0.25),
                (1e-15, 8e-14, 1.0),
                (2.0, 1.0, 1e-15),
                (1e15, 1e15, 1e15),
            ]
            a, gm, b = pick(draw, choices)  # (KNOWN: see ``balanced_known_underflow``)
            cfg.update(alpha=a, gamma=gm, beta=b)
        tdt = dtype if dtype != F64 else pick(draw, ([F64, F32]))
    # the reduction, avg_factor, loss_weight
    opts: dict[str, Any] = {}
    reduction = pick(draw, ([None, None, "none", "mean", "sum", "batchmean"]))
    if reduction is not None:
        opts["reduction_override"] = reduction
    if chance(draw, 40) and reduction in (None, "mean"):
        # (not 1e-30 for BalancedL1Loss's alpha = 1e15: its l / avg_factor leaves float32's range)
        big = cfg.get("alpha", 1.0) > 1e3
        opts["avg_factor"] = pick(draw, [4.0, 0.0, 1e30, 7] + ([] if big else [1e-30]))
    cfg["loss_weight"] = pick(draw, ([1.0, 1.0, 0.5, 2.0, 1e-30]))
    # weights; their zeros hide NaN/inf inputs (spec 12.2 rule 1)
    warg, hidden, wkind = det_weight(draw, g, lshape, box)
    if warg is not None:
        tensors["weight"] = warg
    extra["hidden"] = hidden
    # layouts: pred sliced, transposed or expanded from its first row; target likewise (an
    # expanded tensor's rows are its first row's: no NaN/inf hidden in them)
    play = pick(
        draw,
        ["contiguous", "contiguous", "sliced", "expanded"]
        + (["transposed"] if x.dim() >= 2 else []),
    )
    tlayout = pick(draw, (["contiguous", "contiguous", "transposed", "sliced", "expanded"]))
    play = play if play != "expanded" or (x.dim() >= 1 and x.shape[0] > 0) else "contiguous"
    tlayout = (
        tlayout if tlayout != "expanded" or (y.dim() >= 1 and y.shape[0] > 0) else "contiguous"
    )
    if hidden is not None and (wkind == "zeros_nan" or chance(draw, 30)):
        bad = sprinkle(g, torch.full(x.shape, math.nan, dtype=F64), [math.inf, -math.inf], 0.5)
        hx = hidden if x.dim() == hidden.dim() else hidden[..., None].expand(x.shape)
        if play != "expanded":
            x = torch.where(hx & (torch.rand(x.shape, generator=g) < 0.6), bad, x)
        if y.is_floating_point() and tdt != torch.bool and tlayout != "expanded":
            hy = hidden if y.dim() == hidden.dim() else hidden[..., None].expand(y.shape)
            bad_y = sprinkle(g, torch.full(y.shape, -math.inf, dtype=F64), [math.nan], 0.5)
            y = torch.where(hy & (torch.rand(y.shape, generator=g) < 0.3), bad_y, y)
    if box and chance(draw, 10) and x.numel():  # a kept box with a NaN/inf coordinate
        x = sprinkle(g, x, [math.nan, math.inf, -math.inf], 0.1)
    if play == "expanded":
        tensors["pred"] = Arg(x[:1].clone(), dtype, "expanded", grad=True, shape=x.shape)
    else:
        tensors["pred"] = Arg(x, dtype, play, grad=True)
    if tlayout == "expanded":
        tensors["target"] = Arg(y[:1].clone(), tdt, "expanded", shape=y.shape)
    else:
        tensors["target"] = Arg(y, tdt, tlayout)
    expect, names = "ok", ()
    if chance(draw, 6):
        which = pick(draw, (["option", "weight", "reduction", "pred", "target", "avg_sum"]))
        if which == "option":
            if box:
                bad_opts = {"bbox_format": BAD_CHOICE, "eps": BAD_NONNEG}
                if loss_type == "IoULoss":
                    bad_opts["mode"] = BAD_CHOICE
                if loss_type == "SIoULoss":
                    bad_opts["theta"] = [0.0, -1.0, math.nan, math.inf, "4"]
            elif loss_type == "DistributionFocalLoss":
                bad_opts = {"reg_max": [0, -1, 2.0, True, None]}
            elif loss_type == "BalancedL1Loss":
                bad_opts = {"alpha": [0.0, 1e16, math.nan], "gamma": [0.0, 1e3, -1.0],
                            "beta": [1e-16, math.inf, "1"]}  # fmt: skip
            elif loss_type == "SmoothL1Loss":
                bad_opts = {"beta": BAD_NONNEG}
            else:
                bad_opts = {"bogus_option": [1.0]}
            which = pick(draw, (sorted(bad_opts)))
            cfg[which] = pick(draw, (bad_opts[which]))
        elif which == "weight":
            tensors["weight"] = Arg(torch.ones(count + 1, 7))
        elif which == "reduction":
            opts["reduction_override"], which = "bogus", "reduction_override"
        elif which == "pred":
            tensors["pred"] = Arg(torch.zeros(x.shape, dtype=torch.int64))
        elif which == "target":
            tensors["target"] = Arg(torch.zeros(*x.shape[:-1], 3) if box else torch.zeros(3, 3))
        else:
            opts.update(reduction_override=pick(draw, (["sum", "batchmean"])), avg_factor=2.0)
            which = "avg_factor"
        expect, names = "error", (which,)
    case = Case(tensors, opts, expect, names, seed, form="registry")
    case.extra.update(extra, cfg=cfg, lshape=lshape)
    return case


UNIT_BOX = (0.0, 0.0, 1.0, 1.0)  # what the library puts in a box of weight 0 (any finite box)


def det_ref_l(case: Case, ri: dict) -> torch.Tensor:
    """The reference row l (float64) of the example's loss; the inputs of an element of weight 0
    replaced by finite ones (rule 1: its contribution is 0 whatever they are)."""
    cfg, kind = case.extra["cfg"], case.extra["kind"]
    x, y = ri["pred"], ri["target"]
    y = y.to(F64)
    hidden = case.extra.get("hidden")
    o = {k: v for k, v in cfg.items() if k not in ("type", "loss_weight")}
    if case.extra["box"]:
        if hidden is not None:
            unit = torch.tensor(UNIT_BOX, dtype=F64)
            x = torch.where(hidden[..., None], unit, x)
            y = torch.where(hidden[..., None], unit, y)
        return BOX_REFS[kind](x, y, **o)
    if hidden is not None:
        hx = hidden if x.dim() == hidden.dim() else hidden[..., None]
        x = torch.where(hx, torch.zeros((), dtype=F64), x)
        y = torch.where(hidden, torch.zeros((), dtype=F64), y)
    if kind == "DistributionFocalLoss":
        return RGD.distribution_focal_loss(x, y, **o)
    fn = {"SmoothL1Loss": RGD.smooth_l1_loss, "L1Loss": RGD.l1_loss,
          "BalancedL1Loss": RGD.balanced_l1_loss}[kind]  # fmt: skip
    return fn(x, y, **o)


def det_kinks(case: Case, ri: dict) -> bool:
    """An elementwise distance within rounding of its kink (beta; 0 for L1's |d|) without being
    on it: float32 and float64 may take different branches (the reference's float64 d of the
    rounded inputs is exact: the values lie on a grid of 1/64)."""
    kind = case.extra["kind"]
    if case.extra["box"] or kind == "DistributionFocalLoss":
        return False
    d = (ri["pred"].detach() - ri["target"].to(F64)).abs()
    d = d[torch.isfinite(d)]
    beta = case.extra["cfg"].get("beta")
    return (beta is not None and near(d, beta)) or near(d, 0.0)


def box_grad_parts(case: Case, ri: dict) -> torch.Tensor:
    """The size of the parts of dl/dpred per coordinate, which cancel for some pairs (DIoU's
    d rho2 / c2 - rho2 d c2 / c2^2 of a far pair, GIoU's dI / eps and dA_c / eps of boxes far
    below eps, the exact forms' d(U - I) / U at a degenerate pair: float32 keeps the parts'
    digits, not the difference's): |da| / |b| + |a / b^2| |db| for each ratio a / b of the
    formula (reference.registry.utils.box_pair), float64, 0 where b = 0 or not finite."""
    cfg = case.extra["cfg"]
    x, y = ri["pred"].detach().to(F64), ri["target"].to(F64)
    hidden = case.extra.get("hidden")
    if hidden is not None:
        unit = torch.tensor(UNIT_BOX, dtype=F64)
        x, y = torch.where(hidden[..., None], unit, x), torch.where(hidden[..., None], unit, y)
    x = x.clone().requires_grad_()
    e, kind = cfg["eps"], case.extra["kind"]
    with torch.enable_grad():
        b = RGU.box_pair(x, y, bbox_format=cfg["bbox_format"], eps=e)
        ratios = [(b.inter, b.union + e), (b.union, b.union + e)]
        if kind == "GIoULoss":
            ratios.append((b.cw * b.ch - b.union, b.cw * b.ch + e))
        elif kind != "IoULoss":
            ratios.append((b.rho2, b.cw**2 + b.ch**2 + e))
        if kind == "CIoULoss":
            ratios.append((b.wp, b.hp + e))
        elif kind == "EIoULoss":
            ratios += [((b.wp - b.wg) ** 2, b.cw**2 + e), ((b.hp - b.hg) ** 2, b.ch**2 + e)]
        elif kind == "SIoULoss":
            ratios += [(b.dx + e, b.cw), (b.dy + e, b.ch), (b.wp - b.wg, torch.maximum(b.wp, b.wg))]
        parts = torch.zeros_like(x)
        for a, den in ratios:
            ga = torch.autograd.grad(a.sum(), x, retain_graph=True)[0]
            gd = torch.autograd.grad(den.sum(), x, retain_graph=True)[0]
            part = ga.abs() / den.abs()[..., None] + (a / den**2).abs()[..., None] * gd.abs()
            parts = parts + part.nan_to_num(0, 0, 0)
    return parts.detach()


def siou_reference_cancels(case: Case, ri: dict) -> bool:
    """SIoU: the reference's heights + eps, (h_p + eps) - (h_g + eps), round to the same value
    for a pair of different heights (eps far above the coordinates): its shape cost omega_h is 0
    instead of tiny, and u^theta of a tiny u is about 1 for a small theta (the library forms the
    difference from the coordinates: the exact value)."""
    cfg = case.extra["cfg"]
    if cfg["type"] != "SIoULoss" or case.expect == "error":
        return False
    p, t = ri["pred"].detach().to(F64), ri["target"].to(F64)
    if cfg["bbox_format"] == "xywh":
        hp, hg = p[..., 3], t[..., 3]
    else:
        hp, hg = p[..., 3] - p[..., 1], t[..., 3] - t[..., 1]
    e = cfg["eps"]
    return bool(((((hp + e) - (hg + e)) == 0) & (hp != hg)).any())


def siou_known_zero_max(case: Case, ri: dict) -> bool:
    """KNOWN: SIoU's max(w_p, w_g) = 0 with w_p != w_g (an inverted pred against a zero-width
    target; heights + eps likewise) is not a 0/0, but both backends take the ratio |w_p - w_g| /
    max(w_p, w_g) as 0 where the reference's is inf (a shape cost of 1): theta 1, xywh pred
    [9, 9.125, -19.5, -13.25], target [-4.125, 26.625, 0, 0] gives l = 2.4662 (both backends),
    the reference 2.9662. (An expanded pred can pair such boxes; one kind per pair never does.)"""
    cfg = case.extra["cfg"]
    if cfg["type"] != "SIoULoss" or case.expect == "error":
        return False
    p, t = ri["pred"].detach().to(F64), ri["target"].to(F64)
    if cfg["bbox_format"] == "xyxy":
        p, t = to_xywh(p), to_xywh(t)
    e = torch.tensor([0.0, cfg["eps"]], dtype=F64)
    sp, sg = p[..., 2:] + e, t[..., 2:] + e
    bad = ((torch.maximum(sp, sg) == 0) & (sp != sg)).any(-1)
    hidden = case.extra.get("hidden")
    return bool((bad if hidden is None else bad & ~hidden).any())


def ciou_known_overflow(case: Case, ri: dict) -> bool:
    """KNOWN: CIoU of a pred of zero height in float32 (or half) with a tiny eps (w_p / eps above
    ~1.8e19, or eps below ~1e-18): atan's derivative 1 / (1 + r^2) of r = w_p / (h_p + eps)
    overflows and dr/dh_p = -r / (h_p + eps) gives 0 * inf, a NaN gradient on both backends
    where the reference's is finite (pred [0,0,4,0], target [1,1,3,3], eps 1e-20: d/dy1 NaN,
    reference -0.00977); and at coordinates ~1e31 the scaled eps (1e-30 2^-46) is held at
    float32's smallest normal number, so dl/dw_p ~ 1 / (h_p + eps) is off by orders (pred a
    point at 4e31, eps 1e-30: 30 % of the gradient's norm)."""
    cfg = case.extra["cfg"]
    if cfg["type"] != "CIoULoss" or case.expect == "error" or case.tensors["pred"].dtype == F64:
        return False
    p = ri["pred"].detach().to(F64)
    if cfg["bbox_format"] == "xyxy":
        p = to_xywh(p)
    bad = (p[..., 3] == 0) & ((p[..., 2].abs() > 1e18 * cfg["eps"]) | (cfg["eps"] < 1e-18))
    hidden = case.extra.get("hidden")
    return bool((bad if hidden is None else bad & ~hidden).any())


def torch_known_overflow(case: Case, ri: dict) -> bool:
    """KNOWN (torch backend only; the triton backend scales its stored gradient last): at a pair
    of zero-area boxes the torch backend carries the upstream gradient G (weight, loss_weight,
    the caller's) through G / eps_area (eps in the pair's units, eps 4^-k), which overflows
    float32 for a large G and a small scaled eps, and meets a zero: NaN gradients where the
    reference's are 0 (EIoULoss, pred = target = the point (1.3e31, 3.5e31), weight 1e6); short
    of overflow, its rounding residue of G / eps does not cancel (EIoULoss, eps 1e-30, pred
    [1.75,1,21,1], target [1,0,1,1], (l 0.3).backward(): d/dy1 = 3.6e23, reference 0.600); and a
    huge G (avg_factor 1e-30: G = 1e30) overflows inside the chain for any pair (SIoU, eps 1e10,
    identical boxes of 1e-11: (2 r G) with r = sx / cw = 8e20 is inf, times exp(-inf) = 0)."""
    if not case.extra["box"] or case.expect == "error" or case.tensors["pred"].dtype == F64:
        return False
    cfg = case.extra["cfg"]
    p, t = ri["pred"].detach().to(F64), ri["target"].to(F64)
    b = RGU.box_pair(p, t, bbox_format=cfg["bbox_format"], eps=cfg["eps"])
    zero_area = (b.wp * b.hp == 0) & (b.wg * b.hg == 0)
    m = torch.maximum(p.abs().amax(-1), t.abs().amax(-1)).clamp(min=1)
    k = (torch.floor(torch.log2(m)) + 1 - 60).clamp(min=0)
    ea = (cfg["eps"] * 4.0**-k).clamp(min=torch.finfo(F32).tiny)
    w = case.tensors.get("weight")
    wmax = 1.0 if w is None else w.value.to(F64).abs().max().item()
    g = abs(upstream_scalar(case.seed)) * 1.5 * abs(cfg["loss_weight"]) * wmax * 4
    if case.opts.get("avg_factor") is not None:  # ("mean": divided by avg_factor + eps)
        g /= float(case.opts["avg_factor"]) + torch.finfo(F32).eps
    bad = (zero_area & (g / ea > 1e10)) | (g > 1e25)  # (and any pair under a huge G)
    hidden = case.extra.get("hidden")
    return bool((bad if hidden is None else bad & ~hidden).any())


def balanced_known_underflow(case: Case) -> bool:
    """KNOWN: float32 BalancedL1Loss near gamma / alpha = 80 (b = e^80 - 1 = 5.5e34): autograd
    takes the log1p branch's gradient as (upstream alpha (1/b + d)) / (1 + y) times b, whose
    quotient (~ upstream alpha beta / b) underflows float32 to 0 below ~1e-38, dropping a term
    alpha: a relative error 1/80 (both backends: plain PyTorch). alpha = 1e-15, gamma = 8e-14,
    d = 0.5: dl/dd = 7.83e-14, reference 7.93e-14; alpha 0.125, gamma 10, beta 0.25 with
    loss_weight 1e-30 likewise. Excluded where that quotient can fall below float32's range."""
    cfg = case.extra["cfg"]
    if cfg["type"] != "BalancedL1Loss" or case.expect == "error":
        return False
    if case.tensors["pred"].dtype == F64:
        return False
    w = case.tensors.get("weight")
    wmin = 1.0 if w is None else w.value.to(F64).abs().clamp(min=1e-30).min().item()
    up = abs(upstream_scalar(case.seed)) * 0.5 * abs(cfg["loss_weight"]) * wmin  # (0.5: projection)
    b = math.expm1(cfg["gamma"] / cfg["alpha"])
    return up * cfg["alpha"] * cfg["beta"] / b < 1e-30


def pattern_only(case: Case, ri: dict) -> bool:
    """A box of nonzero weight with a NaN or infinite coordinate (the literal formulas' NaN
    pattern, spec 12.5), or an SIoU pair with a zero-size enclosing box along x or y (spec 12.5:
    its ratio is taken as 0 where the reference's sx / 0 = inf gives 1): the library's own
    values, checked against the torch backend (``check_box_pattern``) only."""
    if not case.extra["box"] or case.expect == "error":
        return False
    p, t = ri["pred"].detach().to(F64), ri["target"].to(F64)
    bad = ~(torch.isfinite(p) & torch.isfinite(t)).all(-1)
    if case.extra["kind"] == "SIoULoss":
        fmt = case.extra["cfg"]["bbox_format"]
        b = RGU.box_pair(p, t, bbox_format=fmt, eps=case.extra["cfg"]["eps"])
        bad = bad | (b.cw == 0) | (b.ch == 0)
    hidden = case.extra.get("hidden")
    return bool((bad if hidden is None else bad & ~hidden).any())


def box_loss_none(case: Case, bk: str):
    """(l, dl/dpred) per box on ``bk``: reduction "none", the rule-1 mask as a 0/1 weight."""
    leaves, inputs = case.build(reference=False)
    hidden = case.extra.get("hidden")
    kw = {} if hidden is None else {"weight": (~hidden).to(F32)}
    loss = build_loss({**case.extra["cfg"], "backend": bk, "loss_weight": 1.0})
    out = loss(inputs["pred"], inputs["target"], reduction_override="none", **kw)
    out.sum().backward()
    return out.detach(), leaves["pred"].grad


def check_box_pattern(case: Case) -> None:
    """The triton backend's per-box values and gradients are the torch backend's: NaN exactly
    where its value is NaN, non-finite gradients exactly where its are, the rest equal to rounding
    (at ties too: autograd's subgradients; for non-finite coordinates; SIoU's 0/0-as-0)."""
    (lt, gt), (lo, go) = box_loss_none(case, "triton"), box_loss_none(case, "torch")
    x = case.tensors["pred"]
    tol = {F64: 1e-10, F32: 1e-5}.get(x.dtype, 1e-2)
    _, ri = case.build(reference=True)
    hidden = case.extra.get("hidden")
    floors = {"l": 0.0, "grad": 0.0}
    if hidden is None or not hidden.all():  # (the parts of the kept boxes)
        parts = box_grad_parts(case, ri)
        keep = torch.ones(parts.shape[:-1], dtype=torch.bool) if hidden is None else ~hidden
        floors["grad"] = parts[keep].nan_to_num(0, 0, 0).norm().item()
    for what, a, b in (("l", lt, lo), ("grad", gt, go)):
        assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(torch.isnan(a), torch.isnan(b)), (
            f"{what}: NaN at {torch.isnan(a)}, torch {torch.isnan(b)}"
        )
        fa, fb = torch.isfinite(a), torch.isfinite(b)
        assert torch.equal(fa, fb), f"{what}: finite at {fa}, torch {fb}"
        inf = ~fa & ~torch.isnan(a)
        assert torch.equal(a[inf], b[inf]), f"{what}: {a[inf]} vs torch {b[inf]}"
        a, b = a[fa].to(F64), b[fb].to(F64)
        err, den = (a - b).norm().item(), b.norm().item()
        bound = tol * max(den, floors[what]) + 4 * torch.finfo(F32).tiny
        assert err <= bound, f"{what}: |triton - torch| = {err:.3g}, |torch| = {den:.3g}"


def check_registry_detection(case: Case, backend: str) -> None:
    cfg = case.extra["cfg"]
    x = case.tensors["pred"]
    loss_tol, grad_tol = tolerance([x.dtype])

    def projection(shape):
        """'none': the elementwise result reduced by fixed positive weights."""
        gg = gen(case.seed + 1)
        return (torch.randint(2, 7, shape, generator=gg) / 4).to(F64)

    def finish(out):
        return out if out.dim() == 0 else (out * projection(tuple(out.shape)).to(out.dtype)).sum()

    def call(inputs, opts, bk, form):
        loss = build_loss({**cfg, "backend": bk})
        kw = dict(opts)
        if inputs.get("weight") is not None:
            kw["weight"] = inputs["weight"]
        return finish(loss(inputs["pred"], inputs["target"], **kw))

    def reduced(elem, ri, opts):
        red = opts.get("reduction_override") or "mean"
        w = ri.get("weight")
        if w is not None and case.extra["box"]:
            w = RGD.box_weight(w if w.is_floating_point() else w.to(F64), elem)
        out = RGU.reduce_with_validity(elem, w, None, red, opts.get("avg_factor"))
        return finish(out * cfg["loss_weight"])

    def ref(ri, opts):
        return reduced(det_ref_l(case, ri), ri, opts)

    def bounds(ri, rcomps):
        """The float64 reference's own rounding: its 1 - I/(U + eps), 1 - exp(-u) and the like
        cancel for (near-)identical boxes, l ~ eps64 (|l| + 1) per box (theta times that for
        SIoU's shape cost), through the weights, the reduction and the upstream gradient."""
        with torch.no_grad():
            parts = det_ref_l(case, ri).abs().nan_to_num(0, 0, 0) + 1
            w = ri.get("weight")
            ri_abs = {**ri, "weight": w.to(F64).abs()} if w is not None else ri
            size = reduced(parts, ri_abs, case.opts).abs().item()
        amp = max(1.0, cfg.get("theta", 1.0))
        ltol, gtol = loss_tol, grad_tol
        if cfg["type"] == "BalancedL1Loss" and cfg["gamma"] / cfg["alpha"] < 1e-3:
            # the float64 reference's small branch cancels to eps64 / (b d) relatively (its
            # docstring: 1e-10 at b = 1e-6 and d = 1; the grid's smallest d is 1/64)
            ltol, gtol = max(ltol, 1e-7), max(gtol, 1e-7)
        floor = box_grad_floor(ri) if case.extra["box"] else 0.0
        if case.extra["kind"] == "DistributionFocalLoss":
            # softmax's dl/dx = p - (hi - y, y - lo): parts of size 2 per row that cancel at
            # the target bins of saturated logits (1 - p, p rounded to 1 in float32)
            floor = 2 * row_weights_norm(ri)
        return Bounds(ltol, {"pred": gtol}, loss_abs=64 * 2.0**-52 * amp * size,
                      grad_floor={"pred": floor})  # fmt: skip

    def row_weights_norm(ri) -> float:
        """||d(the reduced value)/dl|| times the upstream gradient."""
        ld = torch.ones(case.extra["lshape"], dtype=F64, requires_grad=True)
        out = reduced(ld, ri, case.opts)
        if not out.requires_grad:
            return 0.0
        (gl,) = torch.autograd.grad(out, ld)
        return abs(upstream_scalar(case.seed)) * gl.norm().item()

    def box_grad_floor(ri) -> float:
        """``box_grad_parts`` through the reduction's weights and the upstream gradient."""
        ld = torch.ones(case.extra["lshape"], dtype=F64, requires_grad=True)
        out = reduced(ld, ri, case.opts)
        if not out.requires_grad:
            return 0.0
        (gl,) = torch.autograd.grad(out, ld)
        parts = box_grad_parts(case, ri) * gl.abs()[..., None]
        return abs(upstream_scalar(case.seed)) * parts.nan_to_num(0, 0, 0).norm().item()

    dtype = F64 if x.dtype == F64 else F32
    verify_loss(case, backend, call, ref, bounds, dtype, DET_NAMES)
    if backend == "triton" and case.extra["box"] and case.expect == "ok":
        check_box_pattern(case)


@pytest.mark.parametrize("backend", BACKENDS)
def test_registry_detection(backend):
    """IoULoss (linear, square, log), GIoULoss, DIoULoss, CIoULoss, EIoULoss, SIoULoss (theta
    1e-6 to 1e6): both formats, eps 0 to 1e10, [N,4], [B,K,4], [N,1,4] and one box [4], empty,
    boxes of every degenerate kind (identical, integer ties, well fitting, disjoint, points,
    lines, nested, coincident centres, inverted), power-of-two scales (float32 to 2^100, float64
    2^+-400), NaN/inf coordinates (kept, or hidden by a zero weight), integer, bool and float64
    targets; SmoothL1Loss, L1Loss, BalancedL1Loss (options at their range's ends) and
    DistributionFocalLoss (reg_max 1 to 16): every reduction, avg_factor, loss_weight, weights of
    l's shape, [...,4] (averaged; a mean of exactly 0), without dim 1 or broadcast, any pred
    dtype and layout: the value and d/dpred match the reference; on the triton backend the
    per-box values and gradients are the torch backend's (ties, NaN pattern)."""

    def check(case, bk):
        if case.expect != "error":
            _, ri = case.build(reference=True)
            assume(not det_kinks(case, ri) and not siou_reference_cancels(case, ri))
            assume(not siou_known_zero_max(case, ri) and not ciou_known_overflow(case, ri))
            assume(not balanced_known_underflow(case))
            assume(not torch_known_overflow(case, ri))
            if pattern_only(case, ri):
                if bk == "triton":
                    check_box_pattern(case)
                else:
                    box_loss_none(case, bk)  # (it returns)
                return
        check_registry_detection(case, bk)

    for loss_type, examples in DET_EXAMPLES.items():
        fuzz_run(det_cases(loss_type), backend, examples, check)
