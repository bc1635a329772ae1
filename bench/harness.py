"""pytest-benchmark glue: the parametrisation of every benchmark and the timed run of one case."""

from __future__ import annotations

import os
import time

import pytest
import torch

from .cases import default_batches, default_device, make_case, modes_for, skip_reason, sync

DEVICE = default_device()
VARIANTS = ("eager", "compile", "torch", "triton")
# Each timed case runs about TARGET_S seconds, between MIN_ROUNDS and MAX_ROUNDS rounds.
TARGET_S = float(os.environ.get("BENCH_TARGET_S", "0.5"))
MIN_ROUNDS, MAX_ROUNDS = 5, 1000


def params(op: str) -> list:
    """(mode, batch, variant) parameters of ``op``; variants not run on this device are skipped."""
    out = []
    for mode in modes_for(op):
        for batch in default_batches(DEVICE, op):
            for variant in VARIANTS:
                reason = skip_reason(variant, DEVICE, op)
                marks = [pytest.mark.skip(reason=reason)] if reason else []
                out.append(
                    pytest.param(mode, batch, variant, id=f"{mode}-B{batch}-{variant}", marks=marks)
                )
    return out


def calibrate(case) -> int:
    case.setup()
    t0 = time.perf_counter()
    case.step()
    dt = time.perf_counter() - t0
    return int(min(max(TARGET_S / max(dt, 1e-9), MIN_ROUNDS), MAX_ROUNDS))


def run_benchmark(benchmark, op: str, mode: str, batch: int, variant: str) -> None:
    """Time ``setup(); step()`` rounds of one case; ``setup`` (grads to None) is not timed.

    ``step`` synchronises the device, so the wall clock is the device time of one iteration.
    Peak memory (CUDA) and the bandwidth floor go into ``benchmark.extra_info`` for the report.
    """
    case = make_case(op, mode, batch, variant, device=DEVICE)
    benchmark.group = f"{op} {mode} B={batch}"
    benchmark.extra_info.update(case.info())
    disabled = getattr(benchmark, "disabled", False)
    try:
        rounds, warmup = 1, 0
        if not disabled:
            case.setup()
            case.step()  # warm-up: compiles and autotunes outside the timed rounds
            rounds, warmup = calibrate(case), 1
            benchmark.extra_info.update(case.peak_memory())
        benchmark.pedantic(
            case.step, setup=case.setup, rounds=rounds, iterations=1, warmup_rounds=warmup
        )
    except NotImplementedError as e:
        if variant != "triton":
            raise
        pytest.skip(f"triton backend not implemented yet: {e}")
    finally:
        case.setup()
        sync(DEVICE)
        if torch.device(DEVICE).type == "cuda":
            torch.cuda.empty_cache()
