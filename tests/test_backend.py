"""Backend dispatch (spec 5): backend="auto" | "torch" | "triton", FUSED_LOSSES_BACKEND, the
interpreter switch TRITON_INTERPRET."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import ON_GPU, assert_scalar_close
from fused_losses.kernels.launch import interpreting
from fused_losses.reference.cases import gap_case

import fused_losses as fl
import fused_losses.triton_ops as triton_ops
from fused_losses.backend import resolve_backend

CPU = torch.device("cpu")
needs_cpu = pytest.mark.skipif(ON_GPU, reason="dispatch of CPU tensors; on a GPU box see CUDA test")
# Triton picks interpreted or compiled kernels when they are defined: on a GPU machine they are
# compiled, and TRITON_INTERPRET=1 set later cannot make the triton backend take CPU tensors.
KERNELS_INTERPRETED = interpreting()
needs_interpreter = pytest.mark.skipif(
    not KERNELS_INTERPRETED, reason="kernels compiled in this process (no Triton interpreter)"
)


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("FUSED_LOSSES_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return monkeypatch


def small_inputs():
    """One small problem per public op: (op name, triton entry point, call(backend))."""
    case = gap_case(1, (4, 5), confusers=2, padding="box", seed=0).to(torch.float32)
    pred = torch.rand(1, 1, 4, 5)
    target = torch.rand(1, 1, 4, 5)
    mask = torch.ones(1, 1, 4, 5)
    off = torch.rand(1, 4, 4, 5) - 0.5
    ang = torch.randn(1, 2, 4, 5)
    centers = torch.tensor([[[6.0, 5.0]]])
    box = torch.tensor([[1.0, 2.0, 15.0, 12.0]])
    return [
        ("gap_detection_loss", "gap_detection_loss_triton",
         lambda be: fl.gap_detection_loss(*case.args(), backend=be)),
        ("masked_focal_loss", "masked_focal_loss_triton",
         lambda be: fl.masked_focal_loss(pred, target, mask, backend=be)),
        ("masked_smooth_l1_loss", "masked_smooth_l1_loss_triton",
         lambda be: fl.masked_smooth_l1_loss(off, off.flip(1), mask, backend=be)),
        ("masked_cosine_loss", "masked_cosine_loss_triton",
         lambda be: fl.masked_cosine_loss(ang, torch.tensor([0.4]), mask, backend=be)),
        ("hard_negative_margin_loss", "hard_negative_margin_loss_triton",
         lambda be: fl.hard_negative_margin_loss(
             pred, case.gap_center, case.confusers, backend=be)),
        ("padding_weight", "padding_weight_triton",
         lambda be: fl.padding_weight(valid_box=box, size=(4, 5), backend=be)),
        ("gaussian_heatmap", "gaussian_heatmap_triton",
         lambda be: fl.gaussian_heatmap(centers, (4, 5), backend=be)),
    ]  # fmt: skip


OPS = small_inputs()
OP_IDS = [op[0] for op in OPS]


class Spy:
    """Wraps a triton entry point, counting calls (and calling through when asked)."""

    def __init__(self, monkeypatch, name: str, call_through: bool):
        self.calls = 0
        original = getattr(triton_ops, name)

        def spy(*args, **kwargs):
            self.calls += 1
            if call_through:
                return original(*args, **kwargs)
            raise _Dispatched

        monkeypatch.setattr(triton_ops, name, spy)


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


@pytest.mark.parametrize("op,entry,call", OPS, ids=OP_IDS)
@needs_cpu
def test_auto_on_cpu_picks_torch_without_interpreter(clean_env, op, entry, call):
    spy = Spy(clean_env, entry, call_through=False)
    auto = call("auto")
    assert spy.calls == 0
    explicit = call("torch")
    assert torch.equal(auto, explicit)
    clean_env.setenv("TRITON_INTERPRET", "0")
    call("auto")
    assert spy.calls == 0


@needs_interpreter
@pytest.mark.parametrize("op,entry,call", OPS, ids=OP_IDS)
def test_auto_picks_kernels_under_interpreter(clean_env, op, entry, call):
    clean_env.setenv("TRITON_INTERPRET", "1")
    spy = Spy(clean_env, entry, call_through=False)
    with pytest.raises(_Dispatched):
        call("auto")
    with pytest.raises(_Dispatched):
        call("triton")
    assert spy.calls == 2
    call("torch")
    assert spy.calls == 2


@needs_interpreter
@pytest.mark.parametrize("op,entry,call", OPS, ids=OP_IDS)
def test_env_var_overrides_auto(clean_env, op, entry, call):
    clean_env.setenv("TRITON_INTERPRET", "1")
    spy = Spy(clean_env, entry, call_through=False)
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


@pytest.mark.parametrize("op,entry,call", OPS, ids=OP_IDS)
def test_unknown_backend_values_raise(clean_env, op, entry, call):
    with pytest.raises(ValueError, match=r"backend.*'tpu'"):
        call("tpu")
    clean_env.setenv("FUSED_LOSSES_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"FUSED_LOSSES_BACKEND.*'fast'"):
        call("auto")
    call("torch")


@needs_cpu
@pytest.mark.parametrize("op,entry,call", OPS, ids=OP_IDS)
def test_explicit_kernels_on_cpu_without_interpreter(clean_env, op, entry, call):
    clean_env.setenv("TRITON_INTERPRET", "0")
    spy = Spy(clean_env, entry, call_through=False)
    with pytest.raises(ValueError, match=r"triton.*(CUDA|TRITON_INTERPRET)"):
        call("triton")
    assert spy.calls == 0


@needs_interpreter
def test_auto_under_interpreter_matches_explicit_backends(clean_env):
    """auto (interpreter on) runs the same kernels as backend="triton", close to torch."""
    clean_env.setenv("TRITON_INTERPRET", "1")
    spy = Spy(clean_env, "gap_detection_loss_triton", call_through=True)
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
    spy = Spy(clean_env, "gap_detection_loss_triton", call_through=False)
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
