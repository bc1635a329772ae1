"""Markdown report of the fused-losses benchmarks.

    python -m bench.report [--device cuda] [--batches 8,64,256,1024] [--ops ...] [--variants ...]
    python -m bench.report --json results.json   # from `pytest bench/ --benchmark-json=results.json`

Without ``--json`` it times every case itself with the same constructors as the pytest benchmarks
(``bench.cases.make_case``): per round ``setup()`` (gradients to None, untimed) then ``step()`` (one
forward under no_grad, or forward+backward, ending with a device synchronisation), and reports the
median. Columns are explained in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import time

import torch

from .cases import (
    OPS,
    VARIANTS,
    copy_bandwidth,
    default_batches,
    default_device,
    make_case,
    modes_for,
    skip_reason,
)

MIB = 2**20


def time_case(case, target_s: float, min_rounds: int, max_rounds: int) -> float:
    """Median seconds of ``step()`` over calibrated rounds, after one warm-up."""
    case.setup()
    case.step()  # warm-up (compiles)
    case.setup()
    t0 = time.perf_counter()
    case.step()
    dt = time.perf_counter() - t0
    rounds = int(min(max(target_s / max(dt, 1e-9), min_rounds), max_rounds))
    times = []
    for _ in range(rounds):
        case.setup()
        t0 = time.perf_counter()
        case.step()
        times.append(time.perf_counter() - t0)
    case.setup()
    return statistics.median(times)


def measure(args) -> tuple[list[dict], dict]:
    device = args.device
    records = []
    bw = copy_bandwidth(device)
    for op in args.ops:
        for mode in modes_for(op):
            for batch in args.batches or default_batches(device, op):
                for variant in args.variants:
                    if skip_reason(variant, device, op):
                        continue
                    rec = {"op": op, "mode": mode, "batch": batch, "variant": variant}
                    case = make_case(op, mode, batch, variant, device=device, size=args.size)
                    rec.update(case.info())
                    try:
                        rec["median"] = time_case(
                            case, args.target_s, args.min_rounds, args.max_rounds
                        )
                        rec.update(case.peak_memory())
                    except NotImplementedError as e:
                        rec["error"] = f"not implemented: {e}"
                    except Exception as e:  # keep going: one broken variant must not hide the rest
                        rec["error"] = f"{type(e).__name__}: {e}"
                    records.append(rec)
                    print(
                        f"{op} {mode} B={batch} {variant}: {rec.get('median', rec.get('error'))}",
                        file=sys.stderr,
                    )
                    del case
                    gc.collect()
                    if torch.device(device).type == "cuda":
                        torch.cuda.empty_cache()
    meta = {"device": device, "copy_bandwidth": bw, "torch": torch.__version__}
    meta["size"] = sizes(records)
    if torch.device(device).type == "cuda":
        meta["device_name"] = torch.cuda.get_device_name()
    else:
        meta["device_name"] = f"CPU, {torch.get_num_threads()} threads"
    return records, meta


def sizes(records: list[dict]) -> str:
    """The map sizes of the records, with classes and box slots where given (CenterNet)."""
    out = {}
    for r in records:
        s = r.get("size", "?")
        if "classes" in r:
            s += f" ({r['classes']} classes, {r['boxes']} box slots)"
        out.setdefault(s)
    return ", ".join(out) or "?"


def load_json(path: str, device: str) -> tuple[list[dict], dict]:
    with open(path) as f:
        data = json.load(f)
    records = []
    for b in data.get("benchmarks", []):
        rec = dict(b.get("extra_info", {}))
        if "op" not in rec:
            continue
        rec["median"] = b["stats"]["median"]
        records.append(rec)
    info = data.get("machine_info", {})
    bw = info.get("copy_bandwidth")
    dev = info.get("bench_device") or (records[0]["device"] if records else device)
    meta = {"device": dev, "torch": info.get("torch_version", "?")}
    meta["size"] = sizes(records)
    meta["device_name"] = info.get("cuda_device_name") or info.get("cpu", {}).get("brand_raw", dev)
    if bw is None:  # run with --benchmark-disable, or an older dump: measure here and say so
        bw = copy_bandwidth(dev)
        meta["bw_note"] = "copy bandwidth measured by the report, not during the pytest run"
    meta["copy_bandwidth"] = bw
    return records, meta


def fmt_time(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def fmt_ratio(num: float | None, den: float | None) -> str:
    return f"{num / den:.2f}x" if num and den else "—"


def fmt_mib(b: int | None) -> str:
    return "—" if b is None else f"{b / MIB:.2f}"


def render(records: list[dict], meta: dict) -> str:
    bw = meta["copy_bandwidth"]
    lines = [
        f"Device: {meta['device_name']} ({meta['device']}), torch {meta['torch']}, "
        f"copy bandwidth {bw / 1e9:.1f} GB/s ({meta.get('bw_method', 'clone: read + write')})"
        + (f" [{meta['bw_note']}]" if meta.get("bw_note") else ""),
        "",
    ]
    by_key = {(r["op"], r["mode"], r["batch"], r["variant"]): r for r in records}
    order = {op: i for i, op in enumerate(OPS)}
    ops = sorted({r["op"] for r in records}, key=lambda o: order.get(o, len(order)))
    for op in ops:
        lines += [
            f"### {op}",
            "",
            "| mode | B | variant | median | vs eager | vs compile | floor MiB "
            "| % of copy BW | peak above inputs MiB | extra above inputs+grads |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        keys = sorted(
            {(m, b) for (o, m, b, _) in by_key if o == op},
            key=lambda k: (modes_for(op).index(k[0]) if k[0] in modes_for(op) else 9, k[1]),
        )
        for mode, batch in keys:
            eager = by_key.get((op, mode, batch, "eager"), {}).get("median")
            comp = by_key.get((op, mode, batch, "compile"), {}).get("median")
            for variant in VARIANTS:
                r = by_key.get((op, mode, batch, variant))
                if r is None:
                    continue
                t = r.get("median")
                if t is None:
                    err = r.get("error", "no result")
                    lines.append(f"| {mode} | {batch} | {variant} | {err[:60]} |||||||")
                    continue
                frac = f"{100 * r['floor_bytes'] / t / bw:.1f}%"
                extra = r.get("peak_extra")
                grad = r.get("grad_bytes") or 0
                if extra is None:
                    extra_s = "—"
                elif grad:
                    extra_s = f"{extra / MIB:.2f} MiB ({100 * extra / grad:.0f}% of grads)"
                else:
                    extra_s = f"{extra / MIB:.2f} MiB"
                lines.append(
                    f"| {mode} | {batch} | {variant} | {fmt_time(t)} | {fmt_ratio(eager, t)} "
                    f"| {fmt_ratio(comp, t)} | {fmt_mib(r['floor_bytes'])} | {frac} "
                    f"| {fmt_mib(r.get('peak_above_inputs'))} | {extra_s} |"
                )
        lines.append("")
    return "\n".join(lines)


def parse_ops_and_variants(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``args.ops`` / ``args.variants`` from comma lists to lists, each name checked."""
    args.ops = [o for o in args.ops.split(",") if o]
    args.variants = [v for v in args.variants.split(",") if v]
    for o in args.ops:
        if o not in OPS:
            parser.error(f"--ops: unknown op {o!r}; expected some of {list(OPS)}")
    for v in args.variants:
        if v not in VARIANTS:
            parser.error(f"--variants: unknown variant {v!r}; expected some of {list(VARIANTS)}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n")[0])
    p.add_argument("--json", help="pytest-benchmark JSON to report instead of timing here")
    p.add_argument("--device", default=default_device())
    p.add_argument("--batches", help="comma-separated batch sizes (default by device and op)")
    p.add_argument("--size", default=None, help="Hf x Wf, e.g. 64x128 (default by op)")
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated ops")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants")
    p.add_argument("--target-s", type=float, default=0.5, help="timed seconds per case")
    p.add_argument("--min-rounds", type=int, default=5)
    p.add_argument("--max-rounds", type=int, default=1000)
    p.add_argument("--threads", type=int, help="torch.set_num_threads on CPU (default: torch's)")
    p.add_argument("--out", help="also write the markdown to this file")
    args = p.parse_args(argv)
    parse_ops_and_variants(p, args)
    # None: each op's default (bench.cases.default_batches / default_size).
    args.batches = tuple(int(b) for b in args.batches.split(",")) if args.batches else None
    args.size = tuple(int(x) for x in args.size.lower().split("x")) if args.size else None

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.json:
        records, meta = load_json(args.json, args.device)
    else:
        records, meta = measure(args)
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    text = f"Generated {stamp}; maps {meta['size']}, float32.\n\n" + render(records, meta)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
