"""Shared fixtures and comparison helpers for the fused-losses tests.

Without CUDA, Triton's interpreter is switched on before anything imports triton, so the triton
backend's kernels run on CPU tensors (``TRITON_INTERPRET=1``). A value already in the environment
wins (``TRITON_INTERPRET=0`` turns the interpreter off).

Every parity test compares a backend against the float64 reference (``fused_losses.reference``)
evaluated on the same inputs; the tolerances are those of the numerical contract (spec section 6).
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import itertools

import pytest

BACKENDS = ["torch", "triton"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_GPU = DEVICE == "cuda"

# Spec section 6: loss relative error and gradient relative L2 error.
TOLERANCES = {
    torch.float64: (1e-5, 1e-5),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-2),
    torch.bfloat16: (1e-3, 1e-2),
}


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


# ------------------------------------------------------- registry losses on the triton device

# The registry's tests build their data on the CPU. On a GPU machine the triton backend needs CUDA
# tensors, so ``build_loss`` below wraps a loss that resolves to triton in ``OnDevice``: the tensor
# arguments (and the tensor options of the config) move to ``DEVICE``, the compiled kernels run
# there, and the result comes back to the CPU (``.to`` is differentiable: the gradient reaches
# the CPU leaves). Without CUDA nothing is wrapped and the interpreter runs the kernels.
# FUSED_LOSSES_TEST_GPU_LIKE=1 rehearses this on a CPU machine: a triton call outside a wrapped
# loss then fails as it would on a GPU (the interpreter still runs the wrapped ones).
GPU_LIKE = ON_GPU or os.environ.get("FUSED_LOSSES_TEST_GPU_LIKE") == "1"
_INSIDE_DEVICE_CALL = [0]


def _move(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_move(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _move(v, device) for k, v in value.items()}
    return value


class OnDevice(torch.nn.Module):
    """``loss`` called on ``DEVICE`` with CPU arguments; its attributes are the loss's."""

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, *args, **kwargs):
        _INSIDE_DEVICE_CALL[0] += 1
        try:
            out = self.loss(*_move(args, DEVICE), **_move(kwargs, DEVICE))
        finally:
            _INSIDE_DEVICE_CALL[0] -= 1
        return _move(out, "cpu")

    def __getitem__(self, key):  # a MultiLoss's member
        return OnDevice(self.loss[key])

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_modules"]["loss"], name)


def _asks_triton(cfg) -> bool:
    if isinstance(cfg, dict):
        return cfg.get("backend") == "triton" or any(map(_asks_triton, cfg.values()))
    if isinstance(cfg, (list, tuple)):
        return any(map(_asks_triton, cfg))
    return False


def build_loss(cfg, *args, **kwargs):
    """``fused_losses.registry.build_loss``; on a GPU machine a config that asks for the triton
    backend anywhere is built on ``DEVICE`` and its losses (a dict's values) wrapped in
    ``OnDevice``."""
    from fused_losses.backend import triton_available
    from fused_losses.registry import build_loss as build

    if not GPU_LIKE or not _asks_triton(cfg) or not triton_available():
        return build(cfg, *args, **kwargs)
    built = build(_move(cfg, DEVICE), *args, **kwargs)
    return OnDevice(built)


def device_call(backend: str, fn, /, *args, **kwargs):
    """``fn(*args, **kwargs)``, on ``DEVICE`` (and back) when ``backend`` is triton on a GPU
    machine (as ``OnDevice``)."""
    if not GPU_LIKE or backend != "triton":
        return fn(*args, **kwargs)
    _INSIDE_DEVICE_CALL[0] += 1
    try:
        return _move(fn(*_move(args, DEVICE), **_move(kwargs, DEVICE)), "cpu")
    finally:
        _INSIDE_DEVICE_CALL[0] -= 1


if GPU_LIKE and not ON_GPU:  # the rehearsal: triton outside OnDevice fails as on a GPU

    def _rehearse() -> None:
        import fused_losses.backend as fb

        resolve = fb.resolve_backend

        def strict(backend, device):
            out = resolve(backend, device)
            if out == "triton" and backend == "triton" and not _INSIDE_DEVICE_CALL[0]:
                raise ValueError(f"backend='triton' needs CUDA tensors, got tensors on {device}")
            return out

        fb.resolve_backend = strict
        import sys

        for mod in list(sys.modules.values()):  # the modules that imported it by name
            if getattr(mod, "resolve_backend", None) is resolve and mod is not fb:
                mod.resolve_backend = strict

    _rehearse()


# ------------------------------------------------------------------ the compile check, overlapped

COMPILE_CHECK_FIXTURE = "compile_report"  # tests/test_compile.py
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CompileCheck:
    """``python -m bench.compile_check`` (several minutes of one core) in a child process, its
    output in temporary files (a pipe nobody reads would block it)."""

    def __init__(self) -> None:
        import subprocess
        import sys
        import tempfile

        self.out = tempfile.TemporaryFile(mode="w+")
        self.err = tempfile.TemporaryFile(mode="w+")
        env = {**os.environ, "TRITON_INTERPRET": "0"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.compile_check"], cwd=ROOT, env=env,
            stdout=self.out, stderr=self.err, text=True,
        )  # fmt: skip

    def result(self, timeout: float):
        """The finished run as a ``subprocess.CompletedProcess``."""
        import subprocess

        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.out.seek(0)
        self.err.seek(0)
        return subprocess.CompletedProcess(
            self.proc.args, self.proc.returncode, self.out.read(), self.err.read()
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def pytest_collection_modifyitems(session, config, items) -> None:
    """The tests that read the compile check run last, and the check starts as soon as they are
    collected: it runs on a second core while the rest of the suite runs. Not in a pytest-xdist
    worker (each worker collects every test; the one that gets them starts the check itself)."""
    late = [item for item in items if COMPILE_CHECK_FIXTURE in getattr(item, "fixturenames", ())]
    if not late or config.getoption("collectonly"):
        return
    ids = {id(item) for item in late}
    items[:] = [item for item in items if id(item) not in ids] + late
    if not hasattr(config, "workerinput"):
        config.stash[COMPILE_CHECK_KEY] = CompileCheck()


def pytest_sessionfinish(session, exitstatus) -> None:
    check = session.config.stash.get(COMPILE_CHECK_KEY, None)
    if check is not None:
        check.stop()


COMPILE_CHECK_KEY = pytest.StashKey[CompileCheck]()


@pytest.fixture
def device() -> str:
    return DEVICE


def to_float(x) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def rel_err(value, ref) -> float:
    """|value - ref| / |ref| for scalars (absolute error when ref is 0)."""
    value = to_float(value)
    ref = to_float(ref)
    den = abs(ref)
    return abs(value - ref) / den if den > 0 else abs(value - ref)


def assert_scalar_close(value, ref, tol: float, what: str = "loss") -> None:
    value_f = to_float(value)
    assert value_f == value_f and abs(value_f) != float("inf"), f"{what}: not finite ({value_f})"
    err = rel_err(value, ref)
    assert err <= tol, f"{what}: got {value_f!r}, reference {to_float(ref)!r}, rel err {err:.3g}"


def assert_grad_close(grad, ref, tol: float, what: str = "grad") -> None:
    """||g - g_ref|| / ||g_ref|| <= tol (||g|| <= 1e-12 when the reference gradient is 0)."""
    assert ref is not None
    ref = ref.detach().to("cpu", torch.float64)
    if grad is None:
        grad = torch.zeros_like(ref)
    grad = grad.detach().to("cpu", torch.float64)
    assert grad.shape == ref.shape, f"{what}: shape {tuple(grad.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(grad).all(), f"{what}: not finite"
    den = ref.norm().item()
    diff = (grad - ref).norm().item()
    if den == 0:
        assert diff <= 1e-12, f"{what}: reference gradient is 0, got norm {diff:.3g}"
    else:
        assert diff / den <= tol, f"{what}: rel L2 err {diff / den:.3g} > {tol}"


def upstream_scalar(seed: int) -> float:
    """A random upstream gradient r for (loss * r).backward(), away from 0 and from 1."""
    g = torch.Generator().manual_seed(10_000 + seed)
    r = float(torch.empty(()).uniform_(0.3, 2.5, generator=g))
    sign = -1.0 if torch.rand((), generator=g) < 0.3 else 1.0
    return sign * (r if abs(r - 1) > 0.05 else r + 0.2)


def pairwise(factors: dict[str, list]) -> list[dict]:
    """A deterministic covering array: every pair of values of every two factors appears in a row."""
    names = list(factors)
    sizes = [len(factors[n]) for n in names]
    uncovered = {
        (i, a, j, b)
        for i, j in itertools.combinations(range(len(names)), 2)
        for a in range(sizes[i])
        for b in range(sizes[j])
    }
    rows: list[dict] = []
    while uncovered:
        i, a, j, b = min(uncovered)
        row = {i: a, j: b}
        for k in range(len(names)):
            if k in row:
                continue

            gains = [
                sum(
                    ((min(k, m), v if k < m else a, max(k, m), a if k < m else v)) in uncovered
                    for m, a in row.items()
                )
                for v in range(sizes[k])
            ]
            row[k] = max(range(sizes[k]), key=lambda v: (gains[v], -v))
        for p, q in itertools.combinations(sorted(row), 2):
            uncovered.discard((p, row[p], q, row[q]))
        rows.append({names[k]: factors[names[k]][row[k]] for k in range(len(names))})
    return rows


def check_parity(
    op,
    ref_op,
    tensors: dict,
    *,
    grad: tuple[str, ...],
    backend: str,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device: str = DEVICE,
    **opts,
):
    """Compare ``op(**tensors, **opts, backend=backend)`` with ``ref_op`` in float64.

    Floating tensors are cast to ``dtype`` (the candidate's inputs); the reference gets the same
    values upcast to float64. ``grad`` names the inputs whose gradients are compared, under a
    random upstream gradient. Returns (loss, ref_loss, candidate leaves, reference leaves).
    """
    loss_tol, grad_tol = TOLERANCES[dtype]
    cand = {
        k: (v.to(dtype) if v is not None and v.is_floating_point() else v)
        for k, v in tensors.items()
    }
    cand = {k: (v.to(device) if v is not None else v) for k, v in cand.items()}
    ref = {
        k: (v.detach().to("cpu", torch.float64) if v is not None and v.is_floating_point() else v)
        for k, v in cand.items()
    }
    ref = {k: (v.cpu() if v is not None else v) for k, v in ref.items()}
    for k in grad:
        cand[k] = cand[k].detach().clone().requires_grad_(True)
        ref[k] = ref[k].detach().clone().requires_grad_(True)
    r = upstream_scalar(seed)
    ref_loss = ref_op(**ref, **opts)
    (ref_loss * r).backward()
    loss = op(**cand, **opts, backend=backend)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0
    if dtype in (torch.float32, torch.float64):
        assert loss.dtype == dtype
    assert_scalar_close(loss, ref_loss, loss_tol)
    if grad:
        assert loss.requires_grad
        (loss * r).backward()
    for k in grad:
        assert cand[k].grad is not None, k
        assert cand[k].grad.dtype == dtype, k
        assert_grad_close(cand[k].grad, ref[k].grad, grad_tol, f"grad {k}")
    return loss, ref_loss, cand, ref
