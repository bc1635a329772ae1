"""Launch-configuration sweep of the fused gap loss on a GPU: kernel time per variant.

    python -m bench.tune_gap [--batches 64 1024] [--out DIR]

For each (main-pass BLOCK, num_warps) and finalize BLOCK_P it patches
``kernels.gap_detection.main_block`` / ``FINALIZE_BLOCK_P``, checks the loss and gradients against
the default configuration (same inputs, relative error <= 1e-6) and times one forward+backward of
``fused_losses.gap_detection_loss`` (float32, 64x128, padding mask) by its summed kernel durations
(``bench.gpu_probe.kernel_time``), with the per-kernel split. Prints a table; with ``--out`` also
writes ``tune_gap.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch
from fused_losses.kernels import gap_detection as gd

from .cases import make_case
from .gpu_probe import kernel_time

MAIN = ((128, 4), (256, 4), (256, 8), (512, 4), (512, 8), (1024, 8))
BLOCK_P = (128, 512, 2048)


def _short(name: str) -> str:
    return name.replace("_gap_", "").replace("_kernel", "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 1024])
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("tune_gap: needs CUDA", file=sys.stderr)
        return 2
    default_main, default_p = gd.main_block, gd.FINALIZE_BLOCK_P
    rows = []
    for b in args.batches:
        case = make_case("gap_detection_loss", "forward+backward", b, "triton", device="cuda")

        def step(case=case):
            case.setup()
            case.run().backward()

        def result(case=case):
            case.setup()
            loss = case.run()
            loss.backward()
            return [loss.detach().clone()] + [x.grad.clone() for x in case.leaves]

        ref = result()
        for (block, warps), bp in itertools.product(MAIN, BLOCK_P):
            gd.main_block = lambda n, block=block, warps=warps: (
                min(gd.triton.next_power_of_2(max(n, 1)), block),
                warps,
            )
            gd.FINALIZE_BLOCK_P = bp
            row = {"batch": b, "block": block, "warps": warps, "block_p": bp}
            try:
                got = result()
                err = max(
                    float((g - r).norm() / r.norm().clamp_min(1e-30)) for g, r in zip(got, ref)
                )
                row["max_rel_err"] = err
                for _ in range(3):
                    step()
                row["kernel_s"], per = kernel_time(step, "cuda", steps=10)
                row["per_kernel_us"] = {_short(n): round(t * 1e6, 1) for n, t in per.items()}
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"[:200]
            finally:
                gd.main_block, gd.FINALIZE_BLOCK_P = default_main, default_p
            rows.append(row)
            print(json.dumps(row), flush=True)
        del case
        torch.cuda.empty_cache()
    print("\n| B | BLOCK | warps | BLOCK_P | kernels us | max rel err | split (us) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        if "error" in r:
            print(f"| {r['batch']} | {r['block']} | {r['warps']} | {r['block_p']} | {r['error']} |")
            continue
        split = ", ".join(f"{k} {v}" for k, v in r["per_kernel_us"].items())
        print(
            f"| {r['batch']} | {r['block']} | {r['warps']} | {r['block_p']} "
            f"| {r['kernel_s'] * 1e6:.1f} | {r['max_rel_err']:.1e} | {split} |"
        )
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "tune_gap.json"), "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
