"""Backend dispatch (spec 5): backend="auto" | "torch" | "triton", FUSED_LOSSES_BACKEND, the
interpreter switch TRITON_INTERPRET."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

import pytest
import torch
from conftest import ON_GPU, assert_scalar_close
from fused_losses.kernels.launch import interpreting
from fused_losses.reference import centernet_pose as RP
from fused_losses.reference.cases import gap_case

import fused_losses as fl
import fused_losses.triton_cass as triton_cass
import fused_losses.triton_centernet as triton_centernet
import fused_losses.triton_gap as triton_gap
import fused_losses.triton_rord as triton_rord
from fused_losses.backend import resolve_backend
from fused_losses.options import LossModule, LossOptions

CPU = torch.device("cpu")
needs_cpu = pytest.mark.skipif(ON_GPU, reason="dispatch of CPU tensors; on a GPU box see CUDA test")
# Triton picks interpreted or compiled kernels when they are defined: on a GPU machine they are
# compiled, and TRITON_INTERPRET=1 set later cannot make the triton backend take CPU tensors.
KERNELS_INTERPRETED = interpreting()
needs_interpreter = pytest.mark.skipif(
    not KERNELS_INTERPRETED, reason="kernels compiled in this process (no Triton interpreter)"
)
# Public callables of fused_losses.__all__ without a backend (so without a dispatch row).
NO_BACKEND = {
    "clamped_sigmoid": "CenterNet's clamp(sigmoid(x)): plain torch, no backend option",
    "homography_warp": "RoRD's explicit warp (the losses never build it): plain torch",
    "build_loss": "the registry's builder: the losses it builds take backend=",
    "build_multi_loss": "the registry's builder: the losses it builds take backend=",
}
# The registry's base class: its losses are built from configs (tests/test_registry.py).
NOT_OPS = ("BaseLoss",)


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("FUSED_LOSSES_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return monkeypatch


class Dispatch(NamedTuple):
    """One row of the dispatch table: ``op`` (the test id: a public name of fused_losses, with
    ``-<variant>`` when one op is called more than one way), the triton ``glue`` module and its
    ``entry`` point that the triton backend must reach first, and ``call(backend)``."""

    op: str
    glue: ModuleType
    entry: str
    call: Callable[[str], object]

    @property
    def public_name(self) -> str:
        return self.op.split("-")[0]


def small_inputs() -> list[Dispatch]:
    """One small problem per public op and per module (its ``backend=`` option)."""
    case = gap_case(1, (4, 5), confusers=2, padding="box", seed=0).to(torch.float32)
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(1, 1, 4, 5, generator=g)
    target = torch.rand(1, 1, 4, 5, generator=g)
    mask = torch.ones(1, 1, 4, 5)
    off = torch.rand(1, 4, 4, 5, generator=g) - 0.5
    ang = torch.randn(1, 2, 4, 5, generator=g)
    angle = torch.tensor([0.4])
    centers = torch.tensor([[[6.0, 5.0]]])
    box = torch.tensor([[1.0, 2.0, 15.0, 12.0]])
    gap, cn, cass = triton_gap, triton_centernet, triton_cass
    # CASS: a 3x4 patch grid (feature map 10x14, patch 4, stride 32), two boxes in pixels.
    cass_boxes = torch.tensor([[[40.0, 30.0, 200.0, 150.0], [300.0, 200.0, 330.0, 260.0]]])
    scores = torch.randn(1, 12, generator=g)
    # RoRD: 4x5 maps (stride 8), C = 3, a small rotation with a shift.
    rd = triton_rord
    det_o, det_r = torch.rand(2, 1, 1, 4, 5, generator=g).unbind(0)
    desc_o, desc_r = torch.randn(2, 1, 3, 4, 5, generator=g).unbind(0)
    hom = torch.tensor([[0.96, -0.28, 9.0], [0.28, 0.96, -3.0]])

    # CenterNet: 3 classes on a 4x5 map (input image 16x20 pixels, down_ratio 4), two boxes.
    size, k = (4, 5), 3
    hm = fl.clamped_sigmoid(torch.randn(1, k, *size, generator=g))
    wh = torch.rand(1, 2, *size, generator=g) * 4
    reg = torch.rand(1, 2, *size, generator=g)
    boxes = torch.tensor([[[1.0, 2.0, 13.0, 10.0], [4.0, 1.0, 18.0, 14.0]]])
    labels = torch.tensor([[0, 2]])
    box_mask = torch.tensor([[True, True]])
    raw = dict(boxes=boxes, labels=labels, box_mask=box_mask)
    t = fl.centernet_targets(
        boxes, labels, box_mask, num_classes=k, output_size=size, backend="torch"
    )
    ind, reg_mask = t["ind"], t["reg_mask"]
    wmask = reg_mask[..., None].expand(1, 2, 2).to(torch.float32)
    # Multi-pose: one person with 2 joints on the 4x5 map (targets of the reference).
    pose_t = RP.centernet_pose_targets(
        torch.tensor([[[1.0, 2.0, 13.0, 10.0]]]), torch.tensor([[[[4.0, 5.0, 2.0], [9.0, 7.0, 1.0]]]]),
        num_joints=2, output_size=size,
    )  # fmt: skip
    pose_heads = {"hm": hm[:, :1], "wh": wh, "reg": reg, "hps": torch.cat([wh, reg], 1),
                  "hm_hp": hm[:, :2], "hp_offset": reg}  # fmt: skip
    rows = [
        ("gap_detection_loss", gap, "gap_detection_loss_triton",
         lambda be: fl.gap_detection_loss(*case.args(), backend=be)),
        ("GapDetectionLoss", gap, "gap_detection_loss_triton",
         lambda be: fl.GapDetectionLoss(backend=be)(*case.args())),
        ("masked_focal_loss", gap, "masked_focal_loss_triton",
         lambda be: fl.masked_focal_loss(pred, target, mask, backend=be)),
        ("MaskedFocalLoss", gap, "masked_focal_loss_triton",
         lambda be: fl.MaskedFocalLoss(backend=be)(pred, target, mask)),
        ("masked_smooth_l1_loss", gap, "masked_smooth_l1_loss_triton",
         lambda be: fl.masked_smooth_l1_loss(off, off.flip(1), mask, backend=be)),
        ("MaskedSmoothL1Loss", gap, "masked_smooth_l1_loss_triton",
         lambda be: fl.MaskedSmoothL1Loss(backend=be)(off, off.flip(1), mask)),
        ("masked_cosine_loss", gap, "masked_cosine_loss_triton",
         lambda be: fl.masked_cosine_loss(ang, angle, mask, backend=be)),
        ("MaskedCosineLoss", gap, "masked_cosine_loss_triton",
         lambda be: fl.MaskedCosineLoss(backend=be)(ang, angle, mask)),
        ("hard_negative_margin_loss", gap, "hard_negative_margin_loss_triton",
         lambda be: fl.hard_negative_margin_loss(
             pred, case.gap_center, case.confusers, backend=be)),
        ("HardNegativeMarginLoss", gap, "hard_negative_margin_loss_triton",
         lambda be: fl.HardNegativeMarginLoss(backend=be)(
             pred, case.gap_center, case.confusers)),
        ("padding_weight", gap, "padding_weight_triton",
         lambda be: fl.padding_weight(valid_box=box, size=(4, 5), backend=be)),
        ("gaussian_heatmap", gap, "gaussian_heatmap_triton",
         lambda be: fl.gaussian_heatmap(centers, (4, 5), backend=be)),
        ("boundary_label", gap, "boundary_label_triton",
         lambda be: fl.boundary_label(torch.ones(1, 16, 20).tril(), backend=be)),
        # CenterNet family. The focal term is the masked focal loss (triton_gap's glue).
        ("centernet_focal_loss", gap, "masked_focal_loss_triton",
         lambda be: fl.centernet_focal_loss(hm, t["hm"], backend=be)),
        ("CenterNetFocalLoss", gap, "masked_focal_loss_triton",
         lambda be: fl.CenterNetFocalLoss(backend=be)(hm, t["hm"])),
        ("transpose_and_gather_feat", cn, "transpose_and_gather_feat_triton",
         lambda be: fl.transpose_and_gather_feat(wh, ind, backend=be)),
        ("reg_l1_loss", cn, "reg_l1_loss_triton",
         lambda be: fl.reg_l1_loss(wh, reg_mask, ind, t["wh"], backend=be)),
        ("RegL1Loss", cn, "reg_l1_loss_triton",
         lambda be: fl.RegL1Loss(backend=be)(wh, reg_mask, ind, t["wh"])),
        ("reg_weighted_l1_loss", cn, "reg_l1_loss_triton",
         lambda be: fl.reg_weighted_l1_loss(reg, wmask, ind, t["reg"], backend=be)),
        ("reg_smooth_l1_loss", cn, "reg_l1_loss_triton",
         lambda be: fl.reg_smooth_l1_loss(wh, reg_mask, ind, t["wh"], backend=be)),
        ("RegLoss", cn, "reg_l1_loss_triton",
         lambda be: fl.RegLoss(backend=be)(wh, reg_mask, ind, t["wh"])),
        ("RegWeightedL1Loss", cn, "reg_l1_loss_triton",
         lambda be: fl.RegWeightedL1Loss(backend=be)(reg, wmask, ind, t["reg"])),
        ("centernet_targets", cn, "centernet_targets_triton",
         lambda be: fl.centernet_targets(
             boxes, labels, box_mask, num_classes=k, output_size=size, backend=be)),
        # With a target dict: the focal term (triton_gap, its own row above) runs first, then
        # the regressions.
        ("centernet_loss-targets", cn, "reg_l1_loss_triton",
         lambda be: fl.centernet_loss(hm, wh, reg, t, backend=be)),
        ("CenterNetLoss-targets", cn, "reg_l1_loss_triton",
         lambda be: fl.CenterNetLoss(backend=be)(hm, wh, reg, t)),
        # From raw boxes: one kernel builds the targets and the focal term.
        ("centernet_loss-boxes", cn, "centernet_hm_loss_triton",
         lambda be: fl.centernet_loss(hm, wh, reg, **raw, backend=be)),
        ("CenterNetLoss-boxes", cn, "centernet_hm_loss_triton",
         lambda be: fl.CenterNetLoss(backend=be)(hm, wh, reg, **raw)),
        # Multi-pose: the focal term (triton_gap's glue) runs first.
        ("centernet_pose_loss", gap, "masked_focal_loss_triton",
         lambda be: fl.centernet_pose_loss(pose_heads, pose_t, backend=be)),
        ("centernet_pose_targets", cn, "centernet_pose_targets_triton",
         lambda be: fl.centernet_pose_targets(
             torch.tensor([[[1.0, 2.0, 13.0, 10.0]]]),
             torch.tensor([[[[4.0, 5.0, 2.0], [9.0, 7.0, 1.0]]]]), num_joints=2,
             output_size=size, dense_hp=True, backend=be)),
        ("CenterNetPoseLoss", gap, "masked_focal_loss_triton",
         lambda be: fl.CenterNetPoseLoss(backend=be)(pose_heads, pose_t)),
        ("cass_loss", cass, "cass_loss_triton",
         lambda be: fl.cass_loss(scores, cass_boxes, feat_size=(10, 14), backend=be)),
        ("CASSLoss", cass, "cass_loss_triton",
         lambda be: fl.CASSLoss(backend=be)(scores, cass_boxes, feat_size=(10, 14))),
        ("cass_soft_target", cass, "cass_soft_target_triton",
         lambda be: fl.cass_soft_target(cass_boxes, (10, 14), backend=be)),
        ("soft_focal_loss", cass, "soft_focal_loss_triton",
         lambda be: fl.soft_focal_loss(scores, scores.sigmoid(), backend=be)),
        ("SoftFocalLoss", cass, "soft_focal_loss_triton",
         lambda be: fl.SoftFocalLoss(backend=be)(scores, scores.sigmoid())),
        ("rord_detection_loss", rd, "detection_loss_triton",
         lambda be: fl.rord_detection_loss(det_o, det_r, hom, backend=be)),
        ("RoRDDetectionLoss", rd, "detection_loss_triton",
         lambda be: fl.RoRDDetectionLoss(backend=be)(det_o, det_r, hom)),
        ("rord_descriptor_loss", rd, "descriptor_loss_triton",
         lambda be: fl.rord_descriptor_loss(desc_o, desc_r, hom, num_samples=9, backend=be)),
        ("RoRDDescriptorLoss", rd, "descriptor_loss_triton",
         lambda be: fl.RoRDDescriptorLoss(num_samples=9, backend=be)(desc_o, desc_r, hom)),
        ("rord_loss", rd, "detection_loss_triton",
         lambda be: fl.rord_loss(det_o, det_r, desc_o, desc_r, hom, num_samples=9, backend=be)),
        ("RoRDLoss", rd, "descriptor_loss_triton",
         lambda be: fl.RoRDLoss(num_samples=9, backend=be)(det_o, det_r, desc_o, desc_r, hom)),
    ]  # fmt: skip
    return [Dispatch(*row) for row in rows]


OPS = small_inputs()
OP_IDS = [op.op for op in OPS]
OP_PARAMS = "op,glue,entry,call"


def public_ops() -> set[str]:
    """The names of fused_losses.__all__ that are ops: every public callable (functions, the
    LossModule subclasses, anything else callable) but the options classes (LossOptions and its
    subclasses) and the LossModule base class itself, which are not ops."""
    out = set()
    for name in fl.__all__:
        obj = getattr(fl, name)
        if obj is LossModule or (isinstance(obj, type) and issubclass(obj, LossOptions)):
            continue
        if name in NOT_OPS:
            continue
        if callable(obj):
            out.add(name)
    return out


def test_dispatch_table_covers_every_public_op():
    """A public op without a row here has no dispatch test: add one (docs/adding_a_loss.md 7)."""
    ops = public_ops()
    assert set(NO_BACKEND) <= ops, "stale NO_BACKEND entry"
    covered = {row.public_name for row in OPS}
    assert covered <= ops, f"rows for names that are not public ops: {sorted(covered - ops)}"
    missing = ops - covered - set(NO_BACKEND)
    assert not missing, (
        f"public ops without a dispatch row in tests/test_backend.py: {sorted(missing)}"
    )
    modules = {n for n in ops if isinstance(getattr(fl, n), type)}
    assert all(issubclass(getattr(fl, n), LossModule) for n in modules), modules
    assert len(set(OP_IDS)) == len(OP_IDS), "duplicate op ids"


@pytest.mark.parametrize(OP_PARAMS, OPS, ids=OP_IDS)
def test_dispatch_entry_points_exist(op, glue, entry, call):
    glues = (
        "fused_losses.triton_gap", "fused_losses.triton_centernet", "fused_losses.triton_cass",
        "fused_losses.triton_rord",
    )  # fmt: skip
    assert glue.__name__ in glues
    assert callable(getattr(glue, entry, None)), f"{glue.__name__}.{entry} is missing"


def assert_same(a, b) -> None:
    """Bitwise equal results: a tensor, or a dict of tensors (centernet_targets)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    else:
        assert torch.equal(a, b)


class Spy:
    """Wraps a triton entry point of a glue module, counting calls (and calling through when
    asked)."""

    def __init__(self, monkeypatch, glue: ModuleType, name: str, call_through: bool):
        self.calls = 0
        original = getattr(glue, name)

        def spy(*args, **kwargs):
            self.calls += 1
            if call_through:
                return original(*args, **kwargs)
            raise _Dispatched

        monkeypatch.setattr(glue, name, spy)


class _Dispatched(Exception):
    pass


@needs_interpreter
def test_resolve_backend_rules(clean_env):
    mp = clean_env
    assert resolve_backend("torch", CPU) == "torch"
    assert resolve_backend("auto", CPU) == "torch"
    mp.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("auto", CPU) == "triton"
    assert resolve_backend("triton", CPU) == "triton"
    mp.setenv("TRITON_INTERPRET", "0")
    assert resolve_backend("auto", CPU) == "torch"
    with pytest.raises(ValueError, match=r"backend='triton'.*cpu"):
        resolve_backend("triton", CPU)
    # FUSED_LOSSES_BACKEND replaces the auto default, not an explicit choice.
    mp.setenv("FUSED_LOSSES_BACKEND", "torch")
    mp.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("auto", CPU) == "torch"
    assert resolve_backend("triton", CPU) == "triton"
    mp.setenv("FUSED_LOSSES_BACKEND", "triton")
    assert resolve_backend("auto", CPU) == "triton"
    assert resolve_backend("torch", CPU) == "torch"
    mp.setenv("FUSED_LOSSES_BACKEND", "auto")
    assert resolve_backend("auto", CPU) == "triton"
    mp.setenv("TRITON_INTERPRET", "0")
    assert resolve_backend("auto", CPU) == "torch"
    mp.setenv("FUSED_LOSSES_BACKEND", "triton")
    with pytest.raises(ValueError, match="triton"):
        resolve_backend("auto", CPU)  # asked for triton, cannot run it on CPU tensors
    mp.setenv("FUSED_LOSSES_BACKEND", "cuda")
    with pytest.raises(ValueError, match=r"FUSED_LOSSES_BACKEND.*'cuda'"):
        resolve_backend("auto", CPU)
    assert resolve_backend("torch", CPU) == "torch"  # an explicit choice never reads it
    with pytest.raises(ValueError, match=r"backend.*'gpu'"):
        resolve_backend("gpu", CPU)


@pytest.mark.parametrize(OP_PARAMS, OPS, ids=OP_IDS)
@needs_cpu
def test_auto_on_cpu_picks_torch_without_interpreter(clean_env, op, glue, entry, call):
    spy = Spy(clean_env, glue, entry, call_through=False)
    auto = call("auto")
    assert spy.calls == 0
    explicit = call("torch")
    assert_same(auto, explicit)
    clean_env.setenv("TRITON_INTERPRET", "0")
    call("auto")
    assert spy.calls == 0


@needs_interpreter
@pytest.mark.parametrize(OP_PARAMS, OPS, ids=OP_IDS)
def test_auto_picks_kernels_under_interpreter(clean_env, op, glue, entry, call):
    clean_env.setenv("TRITON_INTERPRET", "1")
    spy = Spy(clean_env, glue, entry, call_through=False)
    with pytest.raises(_Dispatched):
        call("auto")
    with pytest.raises(_Dispatched):
        call("triton")
    assert spy.calls == 2
    call("torch")
    assert spy.calls == 2


@needs_interpreter
@pytest.mark.parametrize(OP_PARAMS, OPS, ids=OP_IDS)
def test_env_var_overrides_auto(clean_env, op, glue, entry, call):
    clean_env.setenv("TRITON_INTERPRET", "1")
    spy = Spy(clean_env, glue, entry, call_through=False)
    clean_env.setenv("FUSED_LOSSES_BACKEND", "torch")
    call("auto")
    assert spy.calls == 0
    clean_env.setenv("TRITON_INTERPRET", "0")
    clean_env.setenv("FUSED_LOSSES_BACKEND", "triton")
    call("torch")  # explicit beats the variable
    assert spy.calls == 0
    clean_env.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(_Dispatched):
        call("auto")
    assert spy.calls == 1


@pytest.mark.parametrize(OP_PARAMS, OPS, ids=OP_IDS)
def test_unknown_backend_values_raise(clean_env, op, glue, entry, call):
    with pytest.raises(ValueError, match=r"backend.*'tpu'"):
        call("tpu")
    clean_env.setenv("FUSED_LOSSES_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"FUSED_LOSSES_BACKEND.*'fast'"):
        call("auto")
    call("torch")


@needs_cpu
@pytest.mark.parametrize(OP_PARAMS, OPS, ids=OP_IDS)
def test_explicit_kernels_on_cpu_without_interpreter(clean_env, op, glue, entry, call):
    clean_env.setenv("TRITON_INTERPRET", "0")
    spy = Spy(clean_env, glue, entry, call_through=False)
    with pytest.raises(ValueError, match=r"triton.*(CUDA|TRITON_INTERPRET)"):
        call("triton")
    assert spy.calls == 0


@needs_interpreter
def test_auto_under_interpreter_matches_explicit_backends(clean_env):
    """auto (interpreter on) runs the same kernels as backend="triton", close to torch."""
    clean_env.setenv("TRITON_INTERPRET", "1")
    spy = Spy(clean_env, triton_gap, "gap_detection_loss_triton", call_through=True)
    case = gap_case(1, (4, 5), confusers=2, padding="mask", seed=1)
    auto = fl.gap_detection_loss(*case.args(), backend="auto")
    explicit = fl.gap_detection_loss(*case.args(), backend="triton")
    assert spy.calls == 2
    assert torch.equal(auto, explicit)
    assert_scalar_close(auto, fl.gap_detection_loss(*case.args(), backend="torch"), 1e-5)


@needs_interpreter
def test_module_backend_option(clean_env):
    with pytest.raises(ValueError, match=r"backend.*'numpy'"):
        fl.GapDetectionLoss(backend="numpy")
    clean_env.setenv("TRITON_INTERPRET", "1")
    spy = Spy(clean_env, triton_gap, "gap_detection_loss_triton", call_through=False)
    case = gap_case(1, (4, 5), confusers=2, seed=2).to(torch.float32)
    fl.GapDetectionLoss(backend="torch")(*case.args())
    assert spy.calls == 0
    with pytest.raises(_Dispatched):
        fl.GapDetectionLoss()(*case.args())
    assert spy.calls == 1


def test_interpreter_variable_set_late_changes_nothing():
    """Kernels compiled at import (TRITON_INTERPRET=0, as on a GPU machine): setting the variable
    to 1 later does not route CPU tensors to kernels that cannot take them. Auto stays on torch,
    an explicit triton is refused (a fresh process: this one's kernels may be interpreted)."""
    code = (
        "import os, torch\n"
        "from fused_losses.backend import resolve_backend\n"
        "from fused_losses.kernels.launch import interpreting\n"
        "assert not interpreting()\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "assert resolve_backend('auto', torch.device('cpu')) == 'torch'\n"
        "try:\n"
        "    resolve_backend('triton', torch.device('cpu'))\n"
        "except ValueError as e:\n"
        "    assert 'cpu' in str(e)\n"
        "else:\n"
        "    raise AssertionError('backend=triton accepted CPU tensors')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "FUSED_LOSSES_BACKEND"}
    env["TRITON_INTERPRET"] = "0"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
