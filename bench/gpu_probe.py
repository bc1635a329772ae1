"""Measurements of the GPU check: copy bandwidth, benchmark report, kernel counts, peak memory.

GPU check
---------
``bash bench/gpu_check.sh [OUT_DIR]`` is the one-command check of a CUDA machine (an H100 that has
torch and triton but no internet): environment, ``bench.compile_check``, the test suite on CUDA, a
smoke run of the pytest benchmarks and this probe, each under a time limit, in under 10 minutes.
It writes a handful of files into OUT_DIR (argument 1, else ``$OUT``, else
``bench/results/gpu-<date>``) and prints a short summary last; see the script's header.

This module is the script's measuring part (its steps 5-7), runnable alone:

    python -m bench.gpu_probe --out DIR                 # CUDA: the full probe, about 3 minutes
    python -m bench.gpu_probe --out DIR --device cpu    # dry run of every code path, tiny sizes

It writes ``DIR/probe.md`` and ``DIR/probe.json`` (rewritten after every section and every
benchmark chunk, so a run cut short keeps what it measured) and prints the summary lines last.
Sections, cheapest first; the time-budgeted report runs last:

1. copy bandwidth: ``dst.copy_(src)`` of a 1 GiB float32 tensor on the device, bytes moved = 2 x
   1 GiB, median of ``--copy-repeats`` runs timed with CUDA events (CPU: wall clock, 64 MiB);
2. launches per call: ``torch.profiler`` (CUDA activity) around one forward (autograd on) and one
   forward+backward of ``fused_losses.GapDetectionLoss()`` (B=64, 64x128, padding mask) and of
   ``fused_losses.CenterNetLoss()`` from raw boxes (B=64); every device event is counted (kernels,
   memsets, memcpys) and named; "fills" are memsets and kernels named fill/zero; on CPU the
   outermost aten ops are counted instead (a dry run of the code path, not kernels);
3. peak memory of the gap loss forward+backward at B=64 and B=1024 (``Case.peak_memory``): above the
   inputs, and above inputs + gradients as a fraction of the gradient bytes (target < 10%);
4. ``bench.report`` (``measure`` and ``render``) for every op and variant (eager reference,
   ``torch.compile`` of it, the torch and triton backends), gap ops at B = 8, 64, 256, 1024 and
   CenterNet ops at their default batches, full losses first, until ``--budget-s`` is spent (the
   rest is listed as not run); every timed case also gets its achieved bandwidth
   ``floor_bytes / median`` as a fraction of the section-1 copy bandwidth.

Exit status: 0 every section ran, 1 a section or case failed, 2 no CUDA device (and no
``--device cpu``), 3 stopped by a signal (``timeout``).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import re
import signal
import statistics
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable

import torch

import fused_losses

from . import report
from .cases import (
    CENTERNET_OPS,
    CUDA_BATCHES,
    DOWN_RATIO,
    GAP_OPS,
    OPS,
    STRIDE,
    VARIANTS,
    centernet_shape,
    copy_bandwidth,
    default_batches,
    make_case,
    modes_for,
    skip_reason,
    sync,
)

MIB = 2**20
# The full losses first: the report stops at --budget-s and these numbers matter most.
PRIORITY = ("gap_detection_loss", "centernet_loss")
FILL_RE = re.compile(r"memset|fill|zero", re.IGNORECASE)
EXTRA_TARGET = 0.10  # peak above inputs + gradients, as a fraction of the gradient bytes


class Stopped(BaseException):
    """Raised by the SIGTERM/SIGINT handler so that the outputs are written before exiting (a
    BaseException: the per-case ``except Exception`` of ``bench.report.measure`` lets it through)."""


def is_cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def free(device: str) -> None:
    gc.collect()
    if is_cuda(device):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------- 1. copy bandwidth


def copy_bandwidth_median(device: str, mib: int, repeats: int) -> dict:
    """Achieved bandwidth of ``dst.copy_(src)`` of ``mib`` MiB (read + write: 2 x mib moved)."""
    n = mib * MIB // 4
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    for _ in range(3):  # warm-up (clocks, first-touch)
        dst.copy_(src)
    sync(device)
    times = []
    for _ in range(repeats):
        if is_cuda(device):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    del src, dst
    free(device)
    med = statistics.median(times)
    moved = 2 * n * 4
    timer = "CUDA events" if is_cuda(device) else "wall clock"
    return {
        "bytes_per_s": moved / med,
        "median_s": med,
        "min_s": min(times),
        "bytes_moved": moved,
        "repeats": repeats,
        "method": f"dst.copy_(src) of {mib} MiB float32, 2 x {mib} MiB moved, "
        f"median of {repeats} ({timer}), measured by bench.gpu_probe in this run",
    }


# ------------------------------------------------------------------------ 2. launches per call


def profile_events(fn: Callable[[], object], device: str) -> dict:
    """Device events (CUDA: kernels, memsets, memcpys) of one call of ``fn``, by name.

    On CPU there are no device events: the outermost aten ops (no aten op above them) are counted
    instead, a dry run of the code path."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = is_cuda(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    names: Counter = Counter()
    for e in prof.events():
        if cuda:
            if e.device_type != DeviceType.CPU:
                names[e.name] += 1
        elif e.name.startswith("aten::") and not _aten_ancestor(e):
            names[e.name] += 1
    fills = sum(c for n, c in names.items() if FILL_RE.search(n))
    memcpy = sum(c for n, c in names.items() if n.lower().startswith("memcpy"))
    return {
        "counted": "device events (kernels, memsets, memcpys)"
        if cuda
        else "outermost aten ops on the host (CPU dry run: not kernels)",
        "count": sum(names.values()),
        "fills_memsets": fills,
        "memcpy": memcpy,
        "names": dict(names.most_common()),
    }


def _aten_ancestor(e) -> bool:
    p = e.cpu_parent
    while p is not None:
        if p.name.startswith("aten::"):
            return True
        p = p.cpu_parent
    return False


def launches(args) -> dict:
    """Events of one forward and one forward+backward of the two full criteria."""
    out = {}
    for name, profile_one in (("GapDetectionLoss", _gap_launches), ("CenterNetLoss", _cn_launches)):
        out[name] = profile_one(args.device, args.profile_batch)
        free(args.device)
    return out


def _fused_variant(device: str) -> str:
    return "triton" if is_cuda(device) else "torch"  # what backend="auto" picks


def _gap_launches(device: str, b: int) -> dict:
    case = make_case(
        "gap_detection_loss", "forward+backward", b, _fused_variant(device), device=device
    )
    crit = fused_losses.GapDetectionLoss(stride=STRIDE)
    # Positional: predictions, centres, angle, confusers, confuser_mask, padding_mask, valid_box.
    args = case.extra["args"]
    problem = f"B={b}, {case.size[0]}x{case.size[1]} float32, padding mask, backend auto"
    return _profile_criterion(lambda: crit(*args), case, problem)


def _cn_launches(device: str, b: int) -> dict:
    case = make_case("centernet_loss", "forward+backward", b, _fused_variant(device), device=device)
    hm, wh, reg, boxes, labels, box_mask = (
        case.inputs
    )  # the order of bench.cases's centernet_loss case
    crit = fused_losses.CenterNetLoss(down_ratio=DOWN_RATIO)
    problem = (
        f"B={b}, {case.extra['classes']} classes, {case.size[0]}x{case.size[1]}, "
        f"{case.extra['boxes']} box slots, from raw boxes, backend auto"
    )
    return _profile_criterion(
        lambda: crit(hm, wh, reg, boxes=boxes, labels=labels, box_mask=box_mask), case, problem
    )


def _profile_criterion(forward: Callable[[], torch.Tensor], case, problem: str) -> dict:
    def fwd_bwd() -> None:
        case.setup()  # gradients to None: backward writes them instead of accumulating
        forward().backward()

    for _ in range(3):  # warm-up: Triton compiles and caches every kernel
        fwd_bwd()
    sync(case.device)
    case.setup()
    res = {"problem": problem, "forward": profile_events(forward, case.device)}
    res["forward+backward"] = profile_events(fwd_bwd, case.device)
    case.setup()
    return res


# ----------------------------------------------------------------- 2b. device time and loop time

DEVICE_TIME_CASES = (
    ("gap_detection_loss", 64),
    ("gap_detection_loss", 1024),
    ("centernet_loss", 64),
)


def kernel_time(step: Callable[[], None], device: str, steps: int = 5) -> tuple[float, dict]:
    """Device time of one ``step`` (seconds): the summed durations of its device events
    (kernels, memsets, memcpys) under torch.profiler, averaged over ``steps`` steps, and the
    per-event-name share. It leaves out host time and launch gaps: the kernels' own speed."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        sync(device)
    per: Counter = Counter()
    for e in prof.events():
        if e.device_type != DeviceType.CPU:
            per[e.name] += e.time_range.elapsed_us() * 1e-6 / steps
    return sum(per.values()), {n: t for n, t in per.most_common()}


def loop_time(step: Callable[[], None], device: str, n: int = 50) -> float:
    """Seconds per step of ``n`` steps issued back to back, one sync at the end: what a training
    loop sees, max(host time, device time) per step."""
    for _ in range(3):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return (time.perf_counter() - t0) / n


def device_times(args, rows: list[dict] | None = None) -> list[dict]:
    """Loop time of the full losses, forward+backward, per variant (eager reference and the
    fused backend; torch.compile's times are in the report), then their kernel times.

    All loop times are taken before the first profiler session of the section: a CUDA profiler
    session can leave launches slower for the rest of the process (run this section before the
    ``launches`` one). ``rows`` (appended to as it goes) keeps what was measured if the section
    is cut short."""
    rows = [] if rows is None else rows
    cuda = is_cuda(args.device)
    fused = "triton" if cuda else "torch"
    cases = DEVICE_TIME_CASES if cuda else (("gap_detection_loss", 2),)  # CPU: a dry run
    steps = {}
    for op, b in cases:
        for variant in ("eager", fused):
            case = make_case(op, "forward+backward", b, variant, device=args.device)

            def step(case=case) -> None:
                case.setup()
                case.run().backward()

            row = {"op": op, "batch": b, "variant": variant, "floor_bytes": case.floor_bytes}
            rows.append(row)
            try:
                for _ in range(3):  # compile kernels, warm caches
                    step()
                row["loop_s"] = loop_time(step, args.device, 50 if cuda else 3)
                steps[len(rows) - 1] = (case, step)
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"
    if cuda:
        for i, (_case, step) in steps.items():
            try:
                rows[i]["kernel_s"], names = kernel_time(step, args.device)
                if rows[i]["variant"] == "triton":
                    rows[i]["per_kernel_s"] = names
            except Exception as e:
                rows[i]["error"] = f"{type(e).__name__}: {e}"
    steps.clear()
    free(args.device)
    return rows


# ----------------------------------------------------------------------------- 3. peak memory


def peak_memory(args) -> list[dict]:
    device = args.device
    variant = _fused_variant(device)
    rows = []
    for b in args.memory_batches:
        case = make_case("gap_detection_loss", "forward+backward", b, variant, device=device)
        case.setup()
        case.step()  # warm-up (compiles) so that the measured step is a steady-state one
        info = case.peak_memory()
        row = {
            "op": case.op,
            "mode": case.mode,
            "batch": b,
            "variant": variant,
            "size": f"{case.size[0]}x{case.size[1]}",
            "input_bytes": case.input_bytes,
            "grad_bytes": case.grad_bytes,
            **info,
        }
        extra = info["peak_extra"]
        row["extra_frac_of_grads"] = extra / case.grad_bytes if extra is not None else None
        row["ok"] = None if extra is None else extra / case.grad_bytes < EXTRA_TARGET
        rows.append(row)
        del case
        free(device)
    return rows


# ----------------------------------------------------------------------------------- 4. report


def report_plan(args) -> list[tuple[str, int]]:
    """(op, batch) chunks in the order they run: the full losses at every batch first, then the
    component ops, largest batch first."""
    order = sorted(args.ops, key=lambda o: PRIORITY.index(o) if o in PRIORITY else 9)
    first = [(op, b) for op in order if op in PRIORITY for b in batches_for(args, op)]
    rest = [op for op in order if op not in PRIORITY]
    batches = sorted({b for op in rest for b in batches_for(args, op)}, reverse=True)
    return first + [(op, b) for b in batches for op in rest if b in batches_for(args, op)]


def batches_for(args, op: str) -> tuple[int, ...]:
    """--batches for the gap ops, --centernet-batches for CenterNet's, the family's own default
    batches for the others (CASS: 8, 64)."""
    if op in CENTERNET_OPS:
        return args.centernet_batches
    return args.batches if op in GAP_OPS else default_batches(args.device, op)


def n_cases(args, op: str) -> int:
    return len(modes_for(op)) * sum(1 for v in args.variants if not skip_reason(v, args.device, op))


def add_bandwidth(records: list[dict], bw: float) -> None:
    for r in records:
        t = r.get("median")
        if t:
            r["achieved_bytes_per_s"] = r["floor_bytes"] / t
            r["frac_of_copy"] = r["achieved_bytes_per_s"] / bw


# ---------------------------------------------------------------------------------- the probe


class Probe:
    def __init__(self, args) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.pending: list[tuple[str, int]] = []  # report chunks not measured yet
        self.data: dict = {
            "status": "running",
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": args.device,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "args": {k: v for k, v in vars(args).items() if k != "out"},
            "errors": [],
            "report": {"records": [], "not_run": [], "chunk_errors": []},
        }
        try:
            import triton

            self.data["triton"] = triton.__version__
        except Exception as e:  # the torch backend still runs without triton
            self.data["triton"] = f"not importable: {type(e).__name__}: {e}"
        if is_cuda(args.device):
            self.data["device_name"] = torch.cuda.get_device_name()
            self.data["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        else:
            self.data["device_name"] = f"CPU, {torch.get_num_threads()} threads"

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def section(self, name: str, fn: Callable[[], object]) -> None:
        t0 = time.monotonic()
        print(f"[gpu_probe] {name} ...", file=sys.stderr, flush=True)
        try:
            self.data[name] = fn()
        except Stopped:
            raise
        except Exception as e:
            traceback.print_exc()
            self.data["errors"].append(f"{name}: {type(e).__name__}: {e}")
            free_quietly(self.args.device)
        self.data.setdefault("section_seconds", {})[name] = round(time.monotonic() - t0, 2)
        self.write()

    def run_report(self) -> None:
        args, rep = self.args, self.data["report"]
        bw = self.data.get("copy_bandwidth", {}).get("bytes_per_s")
        deadline = self.t0 + args.budget_s
        self.pending = report_plan(args)
        while self.pending:
            op, batch = self.pending[0]
            if time.monotonic() > deadline:
                break
            ns = argparse.Namespace(
                device=args.device,
                ops=[op],
                batches=(batch,),
                variants=args.variants,
                size=args.size,
                target_s=args.target_s,
                min_rounds=args.min_rounds,
                max_rounds=args.max_rounds,
            )
            try:
                records, meta = report.measure(ns)
            except Exception as e:  # make_case failed: the whole chunk
                traceback.print_exc()
                rep["chunk_errors"].append(f"{op} B={batch}: {type(e).__name__}: {e}")
                free_quietly(args.device)
            else:
                if bw:
                    add_bandwidth(records, bw)
                rep["records"].extend(records)
                rep["clone_bandwidth"] = meta["copy_bandwidth"]
            self.pending.pop(0)
            self.write()
        self.not_run("time budget")
        if rep["not_run"]:
            print(
                f"[gpu_probe] time budget ({args.budget_s:.0f} s) spent: not run "
                + ", ".join(rep["not_run"]),
                file=sys.stderr,
            )

    def not_run(self, why: str) -> None:
        """Lists the report chunks not measured (``why``: time budget, or the signal)."""
        self.data["report"]["not_run"] += [
            f"{op} B={b} ({n_cases(self.args, op)} cases, {why})" for op, b in self.pending
        ]
        self.pending = []

    def failed(self) -> bool:
        rep = self.data["report"]
        return bool(
            self.data["errors"] or rep["chunk_errors"] or any("error" in r for r in rep["records"])
        )

    def write(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        self.data["summary"] = summary_lines(self.data)
        out = self.args.out
        os.makedirs(out, exist_ok=True)
        for name, text in (
            ("probe.json", json.dumps(self.data, indent=1, default=str)),
            ("probe.md", render_markdown(self.data)),
        ):
            tmp = os.path.join(out, name + ".tmp")
            with open(tmp, "w") as f:
                f.write(text + "\n")
            os.replace(tmp, os.path.join(out, name))


def free_quietly(device: str) -> None:
    try:
        free(device)
    except Exception as e:  # a broken CUDA context: later sections will say so themselves
        print(f"[gpu_probe] cleanup failed: {type(e).__name__}: {e}", file=sys.stderr)


# -------------------------------------------------------------------------------- rendering


def gbs(b: float | None) -> str:
    return "—" if b is None else f"{b / 1e9:.1f} GB/s"


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def find(records: list[dict], op: str, mode: str, batch: int, variant: str) -> dict | None:
    for r in records:
        if (r["op"], r["mode"], r["batch"], r["variant"]) == (op, mode, batch, variant):
            return r
    return None


def key_rows(data: dict) -> list[dict]:
    """Per (op, mode): the fused variant (triton on CUDA, torch on CPU) at the op's largest timed
    batch, with its ratios to the eager and compiled references."""
    records = data["report"]["records"]
    fused = "triton" if is_cuda(data["device"]) else "torch"
    rows = []
    for op in OPS:
        for mode in modes_for(op):
            timed = [
                r
                for r in records
                if r["op"] == op and r["mode"] == mode and r["variant"] == fused and r.get("median")
            ]
            if not timed:
                continue
            r = max(timed, key=lambda r: r["batch"])
            eager = find(records, op, mode, r["batch"], "eager") or {}
            comp = find(records, op, mode, r["batch"], "compile") or {}
            rows.append(
                {
                    **r,
                    "vs_eager": eager.get("median", 0) / r["median"]
                    if eager.get("median")
                    else None,
                    "vs_compile": comp.get("median", 0) / r["median"]
                    if comp.get("median")
                    else None,
                }
            )
    return rows


def ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}x"


def summary_lines(data: dict) -> list[str]:
    lines = []
    bw = data.get("copy_bandwidth")
    if bw:
        lines.append(f"copy bandwidth {gbs(bw['bytes_per_s'])} ({bw['method']})")
    key = {(r["op"], r["mode"]): r for r in key_rows(data)}
    for op, mode in (
        ("gap_detection_loss", "forward+backward"),
        ("gap_detection_loss", "forward"),
        ("centernet_loss", "forward+backward"),
    ):
        r = key.get((op, mode))
        if r:
            lines.append(
                f"{op} {mode} B={r['batch']} {r['variant']}: {report.fmt_time(r['median'])}, "
                f"{gbs(r.get('achieved_bytes_per_s'))} = {pct(r.get('frac_of_copy'))} of copy; "
                f"{ratio(r['vs_eager'])} vs eager, {ratio(r['vs_compile'])} vs compile"
            )
    bw_s = (bw or {}).get("bytes_per_s")
    dt = data.get("device_time") or []
    for r in dt:
        if r["variant"] != "triton" or "error" in r:
            continue
        eager = next((x for x in dt if x["op"] == r["op"] and x["batch"] == r["batch"]
                      and x["variant"] == "eager" and "loop_s" in x), None)  # fmt: skip
        comp = next((x for x in dt if x["op"] == r["op"] and x["batch"] == r["batch"]
                     and x["variant"] == "compile" and "loop_s" in x), None)  # fmt: skip
        if "loop_s" not in r:
            continue
        line = f"{r['op']} fwd+bwd B={r['batch']} triton: loop {report.fmt_time(r['loop_s'])}/step"
        if eager:
            line += f" ({eager['loop_s'] / r['loop_s']:.1f}x eager"
            line += f", {comp['loop_s'] / r['loop_s']:.2f}x compile)" if comp else ")"
        if r.get("kernel_s"):
            line += f"; kernels {report.fmt_time(r['kernel_s'])}"
            if bw_s:
                frac = r["floor_bytes"] / r["kernel_s"] / bw_s
                line += f" = {frac:.1%} of copy bandwidth"
            if comp and comp.get("kernel_s"):
                line += f" ({comp['kernel_s'] / r['kernel_s']:.2f}x compile's kernels)"
        lines.append(line)
    for r in dt:
        if "error" in r:
            lines.append(f"ERROR device_time {r['op']} B={r['batch']} {r['variant']}: {r['error']}")
    for name, res in (data.get("launches") or {}).items():
        f, fb = res["forward"], res["forward+backward"]
        what = "device events" if is_cuda(data["device"]) else "host aten ops (CPU dry run)"
        lines.append(
            f"{name} ({res['problem'].split(',')[0]}) {what}: forward {f['count']}, "
            f"forward+backward {fb['count']} ({fb['fills_memsets']} fills/memsets, "
            f"{fb['memcpy']} memcpys)"
        )
    for m in data.get("memory") or []:
        if m["peak_extra"] is None:
            lines.append(f"peak memory B={m['batch']}: n/a on {data['device']}")
            continue
        lines.append(
            f"peak memory gap fwd+bwd B={m['batch']}: {m['peak_above_inputs'] / MIB:.2f} MiB above "
            f"inputs, extra {m['peak_extra'] / MIB:.2f} MiB = {pct(m['extra_frac_of_grads'])} of "
            f"grads (target < {EXTRA_TARGET:.0%}: {'ok' if m['ok'] else 'OVER'})"
        )
    rep = data["report"]
    n_err = sum(1 for r in rep["records"] if "error" in r) + len(rep["chunk_errors"])
    lines.append(
        f"report: {sum(1 for r in rep['records'] if r.get('median'))} cases timed, "
        f"{n_err} errors, {len(rep['not_run'])} (op, batch) chunks not run"
    )
    for e in data["errors"]:
        lines.append(f"ERROR {e}")
    return lines


def render_markdown(data: dict) -> str:
    out = [
        "# GPU probe (bench/gpu_probe.py)",
        "",
        f"Started {data['started']}, {data['elapsed_s']} s, status **{data['status']}**. "
        f"Device {data['device_name']} ({data['device']}), torch {data['torch']} "
        f"(CUDA {data['cuda']}), triton {data['triton']}.",
        "",
        "## Summary",
        "",
        *[f"- {line}" for line in data["summary"]],
        "",
    ]
    bw = data.get("copy_bandwidth")
    rep = data["report"]
    rows = key_rows(data)
    if rows:
        out += [
            "## Key numbers (fused variant, largest timed batch)",
            "",
            "Achieved = floor bytes (inputs read once + label maps and gradients written once) / "
            "median time; as a fraction of the copy bandwidth above.",
            "",
            "| op | mode | B | variant | median | achieved | % of copy | vs eager | vs compile |",
            "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        out += [
            f"| {r['op']} | {r['mode']} | {r['batch']} | {r['variant']} "
            f"| {report.fmt_time(r['median'])} | {gbs(r.get('achieved_bytes_per_s'))} "
            f"| {pct(r.get('frac_of_copy'))} | {ratio(r['vs_eager'])} | {ratio(r['vs_compile'])} |"
            for r in rows
        ]
        out.append("")
    dt = data.get("device_time") or []
    if dt:
        out += [
            "## Device time and loop time, forward+backward",
            "",
            "loop: seconds per step of 50 steps issued back to back with one sync at the end "
            "(max of host and device time: what a training loop sees). kernels: summed device "
            "event durations per step (torch.profiler, mean of 5 steps): the kernels' own "
            "speed; % of copy = floor bytes / kernel time / copy bandwidth.",
            "",
            "| op | B | variant | loop | kernels | % of copy | floor MiB |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
        ]
        bw_s = (data.get("copy_bandwidth") or {}).get("bytes_per_s")
        for r in dt:
            if "error" in r or "loop_s" not in r:
                why = r.get("error", "not measured")[:80]
                out.append(f"| {r['op']} | {r['batch']} | {r['variant']} | {why} ||||")
                continue
            k = r.get("kernel_s")
            frac = pct(r["floor_bytes"] / k / bw_s) if k and bw_s else "n/a"
            out.append(
                f"| {r['op']} | {r['batch']} | {r['variant']} | {report.fmt_time(r['loop_s'])} "
                f"| {report.fmt_time(k) if k else 'n/a'} | {frac} "
                f"| {report.fmt_mib(r['floor_bytes'])} |"
            )
        out.append("")
        for r in dt:
            if r.get("per_kernel_s"):
                out += [f"Kernels of {r['op']} B={r['batch']} triton, per step:", ""]
                out += [
                    f"- `{n[:100]}`: {report.fmt_time(t)}" for n, t in r["per_kernel_s"].items()
                ]
                out.append("")
    launches_ = data.get("launches") or {}
    if launches_:
        out += ["## Launches per call (torch.profiler)", ""]
        for name, res in launches_.items():
            out += [f"### {name}: {res['problem']}", ""]
            for mode in ("forward", "forward+backward"):
                ev = res[mode]
                out += [
                    f"{mode}: **{ev['count']}** {ev['counted']}; {ev['fills_memsets']} "
                    f"fills/memsets, {ev['memcpy']} memcpys.",
                    "",
                    "| count | name |",
                    "| ---: | --- |",
                    *[
                        f"| {c} | `{n[:140]}{'…' if len(n) > 140 else ''}` |"
                        for n, c in ev["names"].items()
                    ],
                    "",
                ]
    if data.get("memory"):
        out += [
            "## Peak memory, gap_detection_loss forward+backward",
            "",
            "Peak allocated during one step above what was allocated before it (inputs), and the "
            f"part above inputs + gradients as a fraction of the gradient bytes (target < "
            f"{EXTRA_TARGET:.0%}).",
            "",
            "| B | variant | inputs MiB | grads MiB | peak above inputs MiB | extra MiB "
            "| extra / grads |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for m in data["memory"]:
            out.append(
                f"| {m['batch']} | {m['variant']} | {report.fmt_mib(m['input_bytes'])} "
                f"| {report.fmt_mib(m['grad_bytes'])} | {report.fmt_mib(m['peak_above_inputs'])} "
                f"| {report.fmt_mib(m['peak_extra'])} | {pct(m['extra_frac_of_grads'])} |"
            )
        out.append("")
    out += ["## Benchmark report (bench.report.render)", ""]
    if rep["not_run"]:
        out += ["Not run: " + ", ".join(rep["not_run"]) + ".", ""]
    for e in rep["chunk_errors"]:
        out += [f"- chunk error: {e}"]
    if rep["records"] and bw:
        meta = {
            "device": data["device"],
            "device_name": data["device_name"],
            "torch": data["torch"],
            "copy_bandwidth": bw["bytes_per_s"],
            "bw_method": bw["method"],
        }
        if rep.get("clone_bandwidth"):
            meta["bw_note"] = (
                f"bench.cases.copy_bandwidth (clone, best of 10), as bench.report uses: "
                f"{gbs(rep['clone_bandwidth'])}"
            )
        out += [
            f"Maps {report.sizes(rep['records'])}, float32.",
            "",
            report.render(rep["records"], meta),
        ]
    else:
        out.append("(no report records)")
    return "\n".join(out)


# ------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(
        prog="python -m bench.gpu_probe", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", default=".", help="folder for probe.md and probe.json")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (dry run)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=200.0,
        help="stop starting report chunks this many seconds after the start (default 200)",
    )
    p.add_argument("--batches", help="gap-op batches (default 8,64,256,1024; cpu: 2)")
    p.add_argument("--centernet-batches", help="CenterNet-op batches (default by device)")
    p.add_argument("--size", help="map size of every op, e.g. 64x128 (default by op)")
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated ops for the report")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--target-s", type=float, default=0.1, help="timed seconds per case")
    p.add_argument("--min-rounds", type=int, default=3)
    p.add_argument("--max-rounds", type=int, default=1000)
    p.add_argument("--copy-mib", type=int, help="copy size (default 1024; cpu: 64)")
    p.add_argument("--copy-repeats", type=int, default=20)
    p.add_argument(
        "--profile-batch", type=int, help="batch of the profiled calls (default 64; cpu: 2)"
    )
    p.add_argument(
        "--memory-batches", help="gap-loss peak-memory batches (default 64,1024; cpu: 2)"
    )
    p.add_argument(
        "--skip",
        default="",
        help="comma-separated sections to skip: copy_bandwidth,launches,device_time,memory,report",
    )
    args = p.parse_args(argv)

    cuda = is_cuda(args.device)

    def ints(s: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(int(x) for x in s.split(",") if x) if s else default

    args.batches = ints(args.batches, CUDA_BATCHES if cuda else (2,))
    args.centernet_batches = ints(args.centernet_batches, centernet_shape(args.device).batches)
    args.memory_batches = ints(args.memory_batches, (64, 1024) if cuda else (2,))
    args.profile_batch = args.profile_batch or (64 if cuda else 2)
    args.copy_mib = args.copy_mib or (1024 if cuda else 64)
    args.size = tuple(int(x) for x in args.size.lower().split("x")) if args.size else None
    args.skip = {s for s in args.skip.split(",") if s}
    report.parse_ops_and_variants(p, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if is_cuda(args.device) and not torch.cuda.is_available():
        print(
            f"gpu_probe: CUDA is not available (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda}); nothing measured. Use --device cpu for a dry run.",
            file=sys.stderr,
        )
        return 2

    def stop(signum, frame):
        raise Stopped(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    probe = Probe(args)
    code = 0
    try:
        dev = args.device
        if "copy_bandwidth" not in args.skip:
            probe.section(
                "copy_bandwidth",
                lambda: copy_bandwidth_median(dev, args.copy_mib, args.copy_repeats),
            )
        if "device_time" not in args.skip:
            rows: list[dict] = []
            probe.data["device_time"] = rows  # written as it fills, if the section is cut short
            probe.section("device_time", lambda: device_times(args, rows))
        if "launches" not in args.skip:
            probe.section("launches", lambda: launches(args))
        if "memory" not in args.skip:
            probe.section("memory", lambda: peak_memory(args))
        if "report" not in args.skip:
            if "copy_bandwidth" not in probe.data:  # the fractions need one
                probe.data["copy_bandwidth"] = {
                    "bytes_per_s": copy_bandwidth(dev),
                    "method": "bench.cases.copy_bandwidth (clone, best of 10)",
                }
            t0 = time.monotonic()
            probe.run_report()
            probe.data.setdefault("section_seconds", {})["report"] = round(time.monotonic() - t0, 2)
        probe.data["status"] = "done"
        code = 1 if probe.failed() else 0
    except Stopped as e:
        probe.data["status"] = f"stopped by {e} after {probe.elapsed():.0f} s"
        probe.not_run(f"stopped by {e}")
        code = 3
    finally:
        if probe.data["status"] == "running":  # an unexpected exception: say so in the files
            probe.data["status"] = "crashed"
        probe.write()
    print(
        f"\n[gpu_probe] {probe.data['status']} in {probe.elapsed():.0f} s; wrote "
        f"{os.path.join(args.out, 'probe.md')} and probe.json"
    )
    print("\n".join(probe.data["summary"]))
    return code


if __name__ == "__main__":
    sys.exit(main())
