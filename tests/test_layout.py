"""The layering of docs/adding_a_loss.md: kernels/ imports neither the runtime nor the oracle, the
runtime never imports the oracle, and the torch backend runs without importing Triton."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Every module name a file imports (relative imports resolved against its package)."""
    package = {"kernels": "fused_losses.kernels", "fused_losses": "fused_losses"}.get(
        path.parent.name, path.parent.name
    )
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.update(f"{module}.{a.name}" for a in node.names)
            names.add(module)
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "kernels").glob("*.py")), ids=lambda p: p.name)
def test_kernels_import_neither_runtime_nor_reference(path):
    bad = {
        n
        for n in _imports(path)
        if n.startswith(("fused_losses.reference", "reference"))
        or (n.startswith("fused_losses") and not n.startswith("fused_losses.kernels"))
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize(
    "path", sorted((ROOT / "fused_losses").rglob("*.py")), ids=lambda p: p.name
)
def test_runtime_never_imports_the_reference(path):
    bad = {n for n in _imports(path) if "reference" in n.split(".")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_torch_backend_runs_without_importing_triton():
    code = (
        "import sys, torch, fused_losses as fl\n"
        "x = torch.rand(1, 2, 4, 4, requires_grad=True)\n"
        "fl.masked_focal_loss(x[:, :1].sigmoid(), torch.rand(1, 1, 4, 4)).backward()\n"
        "fl.centernet_loss(x[:, :1].sigmoid(), x, x, boxes=torch.rand(1, 2, 4) * 16,\n"
        "                  labels=torch.zeros(1, 2, dtype=torch.long)).backward()\n"
        "print(sorted(m for m in sys.modules if m == 'triton' or '.kernels' in m))\n"
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FUSED_LOSSES_BACKEND")
    }
    env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]", out.stdout
