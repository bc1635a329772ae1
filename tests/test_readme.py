"""Every ```python block of README.md and docs/*.md runs as written on a CPU-only machine.

Each block is one test case, named by file and line, and runs in a fresh namespace. The blocks run
in one subprocess (importing torch, and the torch._dynamo that an optimizer's first step imports,
costs seconds per interpreter), with CUDA hidden and ``TRITON_INTERPRET`` / ``FUSED_LOSSES_BACKEND``
unset: ``tests/conftest.py`` switches Triton's interpreter on for this process when there is no GPU,
and the examples must see what a user sees (``backend="auto"`` picks the torch backend on CPU).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE_OPEN = re.compile(r"^\s*```\s*(?:python3?|py)\s*$")
FENCE_CLOSE = re.compile(r"^\s*```\s*$")
TIMEOUT_S = 300

# Runs in the subprocess: reads [[name, code], ...] from the file argv[1] and, after every block,
# rewrites argv[2] with the results so far (a crash of the interpreter keeps the earlier ones).
RUNNER = textwrap.dedent(
    """
    import json, sys, time, traceback
    blocks = json.load(open(sys.argv[1]))
    results = {}
    for name, code in blocks:
        t0 = time.perf_counter()
        try:
            exec(compile(code, name, "exec"), {"__name__": "__main__"})
            error = ""
        except BaseException:
            error = traceback.format_exc()
        results[name] = {"ok": not error, "error": error, "seconds": time.perf_counter() - t0}
        with open(sys.argv[2], "w") as f:
            json.dump(results, f)
    """
)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """(line of the first code line, dedented code) of every ```python fence in ``path``."""
    blocks = []
    lines = path.read_text(encoding="utf-8").splitlines()
    start = None
    for number, line in enumerate(lines, start=1):
        if start is None:
            if FENCE_OPEN.match(line):
                start = number + 1
        elif FENCE_CLOSE.match(line):
            blocks.append((start, textwrap.dedent("\n".join(lines[start - 1 : number - 1]))))
            start = None
    assert start is None, f"{path.name}: unclosed ```python fence opened before line {start}"
    return blocks


def block_name(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT).as_posix()}:{line}"


ALL_BLOCKS = [(path, line, code) for path in DOC_FILES for line, code in python_blocks(path)]


def user_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("TRITON_INTERPRET", "FUSED_LOSSES_BACKEND"):
        env.pop(var, None)
    env["CUDA_VISIBLE_DEVICES"] = ""  # CPU only, as on a machine without a GPU
    return env


@cache
def all_results() -> dict[str, dict]:
    """Runs every block in one fresh interpreter; returns the results by block name."""
    blocks = [[block_name(path, line), code] for path, line, code in ALL_BLOCKS]
    with tempfile.TemporaryDirectory() as tmp:
        blocks_file, results_file = Path(tmp, "blocks.json"), Path(tmp, "results.json")
        blocks_file.write_text(json.dumps(blocks), encoding="utf-8")
        try:
            proc = subprocess.run(
                [sys.executable, "-c", RUNNER, str(blocks_file), str(results_file)],
                cwd=tmp,  # as a user would: not the repository root
                env=user_env(),
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
            )
            how = f"exit status {proc.returncode}"
            output = proc.stdout[-4000:] + proc.stderr[-4000:]
        except subprocess.TimeoutExpired as exc:
            how, output = f"timeout after {TIMEOUT_S} s", str(exc.stderr or "")[-4000:]
        results = {}
        if results_file.exists():
            results = json.loads(results_file.read_text(encoding="utf-8"))
    error = f"the interpreter stopped in this block or before it ({how}):\n{output}"
    missing = {"ok": False, "error": error, "seconds": 0.0}
    return {name: results.get(name, missing) for name, _ in blocks}


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_blocks_are_found(path):
    """Extraction finds every ```python fence (and the README has at least one)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    fences = sum(line.strip() in ("```python", "```python3", "```py") for line in lines)
    found = [code for p, _, code in ALL_BLOCKS if p == path]
    assert len(found) == fences
    if fences:
        assert len(found) >= 1 and all(code.strip() for code in found)
    if path.name == "README.md":
        assert len(found) >= 1, "README.md has no ```python block: extraction is broken"


@pytest.mark.parametrize(
    "name", [block_name(path, line) for path, line, _ in ALL_BLOCKS] or ["no-blocks"]
)
def test_block_runs(name):
    assert name != "no-blocks", "no ```python block found in README.md or docs/*.md"
    result = all_results()[name]
    assert result["ok"], f"{name} fails as written:\n{result['error']}"
