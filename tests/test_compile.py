"""Every Triton kernel compiles for real GPUs (sm_80, sm_90) within its register budget.

The rest of the suite runs the kernels through Triton's interpreter on CPU, which accepts code the
compiler rejects (a ``@triton.jit`` function reading a plain module global, say). This test runs
``python -m bench.compile_check`` in a child process with the interpreter off: it records the
launches the public ops really issue (float32, float16, bfloat16 and float64), compiles each
specialisation through Triton's compiler API (ptxas ships in the triton wheel: no GPU needed) and
fails on a compile error, a spill or more than 128 registers per thread (float64: must compile).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import COMPILE_CHECK_KEY, CompileCheck

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compile_report(request) -> subprocess.CompletedProcess:
    """The check's run: started by conftest when the tests were collected (it overlaps the rest
    of the suite, and these tests run last), or here."""
    check = request.config.stash.get(COMPILE_CHECK_KEY, None) or CompileCheck()
    return check.result(timeout=1200)


def test_every_kernel_compiles_within_budget(compile_report):
    out = compile_report.stdout + compile_report.stderr
    assert compile_report.returncode == 0, out[-6000:]
    assert "0 over budget or failing" in out, out[-6000:]


def test_every_kernel_is_checked(compile_report):
    """Each ``@triton.jit`` kernel of ``kernels/`` (launched by some public op) appears in the
    table for both architectures: a new kernel cannot skip the check."""
    import re

    source = "\n".join(p.read_text() for p in (ROOT / "kernels").glob("*.py"))
    kernels = set(re.findall(r"^def (_\w+_kernel)\(", source, flags=re.M))
    assert kernels, "no kernels found"
    table = compile_report.stdout
    for name in sorted(kernels):
        for arch in ("80", "90"):
            assert re.search(rf"^{name}\*?\s+\S+\s+{arch}\s", table, flags=re.M), (
                f"{name} not compiled for sm_{arch}"
            )


def test_check_catches_a_kernel_that_does_not_compile(tmp_path):
    """The check itself: a kernel that reads a plain global (interpreter: fine) is reported."""
    code = f"""
import sys, triton, triton.language as tl
sys.path.insert(0, {str(ROOT)!r})
import bench.compile_check as cc
import torch

SCALE = 2.0

@triton.jit
def _bad_kernel(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * SCALE, mask=offs < n)

x = torch.zeros(16)
launch = cc.Launch(_bad_kernel, (x, 16), {{"BLOCK": 16, "num_warps": 4}}, "test", "float32")
reports = cc.compile_all([launch], archs=(90,))
print(cc.summarize(reports))
"""
    script = tmp_path / "bad.py"
    script.write_text(code)
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    res = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "does not compile" in res.stdout and "SCALE" in res.stdout, res.stdout


def test_torch_compile_sees_what_each_kernel_writes():
    """torch.compile analyses every kernel a ``triton_op`` launches (scalars passed as Python
    constants). A kernel it cannot analyse makes it assume every input is written, and copy them
    all: e.g. ``bits.to(...)`` on a scalar argument did that to every gap kernel."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    run = subprocess.run(
        [sys.executable, "-m", "bench.compile_check", "--mutations", "--dtype", "float32"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert "ok   _gap_main_kernel: writes g_ang_ptr, g_hg_ptr, g_hp_ptr, g_off_ptr, part_ptr" in out
    assert "ok   _scale_kernel: writes g_ptr" in out
