#!/usr/bin/env bash
# One-command GPU check of fused-losses, for a CUDA machine (H100) that already has torch and
# triton and no internet. Finishes in under 10 minutes (GPU_CHECK_BUDGET_S, default 560 s).
#
#   bash bench/gpu_check.sh [OUT_DIR]     # OUT_DIR: argument 1, else $OUT, else bench/results/gpu-<date>
#
# Steps (numbered as in the issue; run in the order listed; every one under `timeout`, and a failing
# step does not stop the later ones):
#   1    environment    nvidia-smi, python/torch/triton/CUDA versions, GPU, which test tools exist
#   -    install        makes `import fused_losses` load this checkout: nothing if it already does,
#                       else `pip install --no-index --no-deps --no-build-isolation -e .` (offline),
#                       else a sitecustomize import hook on PYTHONPATH (no install at all)
#   5-7  probe          python -m bench.gpu_probe: 1 GiB copy_ bandwidth, bench.report (B=8..1024,
#                       vs eager, vs torch.compile, % of copy bandwidth), kernel counts per call,
#                       peak memory; first, while the machine is otherwise idle
#   2    compile_check  python -m bench.compile_check --markdown, in the background beside step 3
#                       (CPU only: ptxas of every kernel for sm_80/sm_90)
#   3    tests          pytest tests -m "not gpu" -q (-n 4 when pytest-xdist is there), then
#                       -m gpu -v (TRITON_INTERPRET=0): the whole suite once, GPU-only tests by name
#   4    bench smoke    BENCH_BATCHES=8 pytest bench/ --benchmark-disable -q (after the probe, whose
#                       torch.compile caches it reuses)
# Missing pytest / hypothesis / pytest-benchmark are reported; what can run without them runs
# (test files importing hypothesis are left out with --ignore; no pytest-benchmark: no step 4).
#
# Files in OUT_DIR (kept few for the device tool): summary.txt (printed last), gpu_check.log (every
# step's output), compile_check.md, probe.md, probe.json.
# Environment: GPU_CHECK_BUDGET_S (seconds, default 560); GPU_CHECK_PYTEST_ARGS (extra args for
# step 3, e.g. "-k focal"); GPU_CHECK_XDIST (pytest-xdist workers for step 3, default 4, 0: none);
# GPU_CHECK_SKIP (comma-separated: probe, compile_check, tests, smoke); GPU_CHECK_ALLOW_CPU=1 (no
# CUDA: a CPU dry run, tests through Triton's interpreter, probe --device cpu); PYTHON (default:
# python3 or python, the first that imports torch).
# Exit status: 0 when no step failed or timed out, 1 otherwise.

set -u -o pipefail

# ------------------------------------------------------------------------------------- setup
OUTDIR=${1:-${OUT:-}}
if [[ -n $OUTDIR ]]; then # relative to the caller's directory
    mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd) || exit 1
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$(pwd)
if [[ -z $OUTDIR ]]; then
    OUTDIR=$ROOT/bench/results/gpu-$(date +%Y%m%d-%H%M%S)
    mkdir -p "$OUTDIR" || exit 1
fi
LOG=$OUTDIR/gpu_check.log
SUMMARY=$OUTDIR/summary.txt
: >"$LOG"
TMP=$(mktemp -d)
BUDGET=${GPU_CHECK_BUDGET_S:-560}
START=$SECONDS
STARTED=$(date '+%Y-%m-%d %H:%M:%S %Z')
PY=${PYTHON:-}
if [[ -z $PY ]]; then # the first of python3, python that has torch
    PY=python3
    for c in python3 python; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c "import torch" >/dev/null 2>&1; then
            PY=$c
            break
        fi
    done
fi
export PYTHONUNBUFFERED=1
CC_PID=
STEPS=()
NOTES=()
FAILED=0

# shellcheck disable=SC2317  # (called by the EXIT trap)
cleanup() {
    if [[ -n $CC_PID ]] && kill -0 "$CC_PID" 2>/dev/null; then
        kill "$CC_PID" 2>/dev/null # the `timeout` process: it passes the signal on
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

say() { echo "[gpu_check $((SECONDS - START))s] $*" | tee -a "$LOG"; }

HAVE_TIMEOUT=1
if ! command -v timeout >/dev/null 2>&1; then
    HAVE_TIMEOUT=0
    NOTES+=("no 'timeout' command: steps run without time limits")
fi

# with_limit SECONDS CMD...: CMD under `timeout`: $TIMEOUT_SIGNAL (default TERM) at the limit,
# KILL 15 s later. pytest gets INT: it then still prints its counts and failures.
with_limit() {
    local lim=$1
    shift
    if ((HAVE_TIMEOUT)); then
        timeout -s "${TIMEOUT_SIGNAL:-TERM}" -k 15 "$lim" "$@"
    else
        "$@"
    fi
}

# limit CAP RESERVE: seconds for a step, at most CAP, leaving RESERVE seconds of the budget
limit() {
    local left=$((BUDGET - (SECONDS - START) - $2))
    ((left > $1)) && left=$1
    ((left < 10)) && left=10
    echo "$left"
}

# run NAME LIMIT CMD...: output into the log and $TMP/NAME.out; sets RC and DT
run() {
    local name=$1 lim=$2 t0=$SECONDS desc
    shift 2
    printf -v desc '%q ' "$@"
    say "$name: $desc(limit ${lim}s)"
    echo "===== $name: $desc" >>"$LOG"
    with_limit "$lim" "$@" 2>&1 | tee "$TMP/$name.out" >>"$LOG"
    RC=${PIPESTATUS[0]}
    DT=$((SECONDS - t0))
    echo "===== $name: exit status $RC after ${DT}s" >>"$LOG"
}

# record NAME RC SECONDS DETAIL: one line of the summary (RC "skip" for a step not run)
record() {
    local st
    case $2 in
    0) st=ok ;;
    skip) st=SKIPPED ;;
    5) st=NO-TESTS ;; # pytest: nothing collected or all deselected (not counted as a failure)
    124 | 137) st=TIMEOUT FAILED=1 ;;
    *) st="FAIL($2)" FAILED=1 ;;
    esac
    STEPS+=("$(printf '%-9s %-22s %4ss  %s' "$st" "$1" "$3" "$4")")
    say "$1: $st after ${3}s${4:+ - $4}"
    write_summary
}

# The last pytest result line of a file, without its ===== border.
pytest_counts() {
    local line
    line=$(grep -E '(passed|failed|error|skipped|deselected|no tests ran).* in [0-9.]+s' "$1" |
        tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
    echo "${line:-no pytest result line (see gpu_check.log)}"
}

write_summary() {
    {
        echo "== fused-losses GPU check, started $STARTED: ${ENV_LINE:-environment unknown}"
        echo "   output: $OUTDIR (summary.txt, gpu_check.log, compile_check.md, probe.md, probe.json)"
        local n_ok=0 n_bad=0 n_skip=0 s
        for s in "${STEPS[@]}"; do
            echo "$s"
            case $s in
            ok*) n_ok=$((n_ok + 1)) ;;
            SKIPPED* | NO-TESTS*) n_skip=$((n_skip + 1)) ;;
            *) n_bad=$((n_bad + 1)) ;;
            esac
        done
        for s in "${NOTES[@]}"; do echo "note: $s"; done
        if [[ -s $OUTDIR/probe.json ]]; then
            echo "key numbers (bench.gpu_probe; details in probe.md):"
            "$PY" -c 'import json, sys
d = json.load(open(sys.argv[1]))
print("\n".join("  " + s for s in d.get("summary", [])))' "$OUTDIR/probe.json" 2>/dev/null ||
                echo "  (probe.json unreadable)"
        fi
        echo "steps: $n_ok ok, $n_bad failed or timed out, $n_skip skipped or without tests; $((SECONDS - START))s of ${BUDGET}s budget"
    } >"$SUMMARY"
}

# --------------------------------------------------------------------------- 1. environment
T0=$SECONDS
{
    echo "===== environment"
    date
    uname -a
    echo "checkout: $ROOT"
    git -C "$ROOT" rev-parse HEAD 2>/dev/null && git -C "$ROOT" status --short 2>/dev/null | head -n 30
    echo "sources sha256: $(find fused_losses kernels reference bench tests -name '*.py' 2>/dev/null | sort | xargs cat | sha256sum | cut -c1-16)"
    if command -v nvidia-smi >/dev/null 2>&1; then
        with_limit 20 nvidia-smi
        with_limit 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv
    else
        echo "nvidia-smi: not found"
    fi
} >>"$LOG" 2>&1
run env 60 "$PY" - <<'EOF'
import importlib, platform, sys
print("python", sys.version.replace("\n", " "), sys.executable)
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
try:
    import triton
    tv = triton.__version__
except Exception as e:
    tv = f"not importable ({type(e).__name__}: {e})"
print("triton", tv)
cuda = torch.cuda.is_available()
gpu = "no CUDA device"
if cuda:
    p = torch.cuda.get_device_properties(0)
    gpu = f"{p.name} (sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB)"
    print("device:", gpu, "count", torch.cuda.device_count())
missing = []
for mod, pkg in (("pytest", "pytest"), ("hypothesis", "hypothesis"), ("pytest_benchmark", "pytest-benchmark"), ("xdist", "pytest-xdist")):
    try:
        m = importlib.import_module(mod)
        print(pkg, getattr(m, "__version__", "?"))
    except Exception:
        if pkg == "pytest-xdist":  # optional: only makes step 3 faster
            print("pytest-xdist not installed (optional): the tests run in one process")
            print("ENV_NO_XDIST: 1")
            continue
        missing.append(pkg)
        print(pkg, "MISSING")
print(f"ENV_LINE: {gpu}; python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), triton {tv}")
print("ENV_CUDA:", int(cuda))
print("ENV_MISSING:", " ".join(missing))
EOF
ENV_LINE=$(sed -n 's/^ENV_LINE: //p' "$TMP/env.out")
HAVE_CUDA=$(sed -n 's/^ENV_CUDA: //p' "$TMP/env.out")
MISSING=$(sed -n 's/^ENV_MISSING: *//p' "$TMP/env.out")
[[ $HAVE_CUDA == 1 ]] || HAVE_CUDA=0
XDIST=${GPU_CHECK_XDIST:-4}
grep -q '^ENV_NO_XDIST: 1' "$TMP/env.out" && XDIST=0
ENV_RC=$RC
if [[ -n $MISSING ]]; then
    NOTES+=("MISSING test tools: $MISSING (what needs them is left out; see below)")
    say "MISSING: $MISSING"
fi
DRY=0
if ((!HAVE_CUDA)); then
    if [[ ${GPU_CHECK_ALLOW_CPU:-0} == 1 ]]; then
        DRY=1
        NOTES+=("NO CUDA DEVICE: CPU dry run (GPU_CHECK_ALLOW_CPU=1); nothing here measures a GPU")
    else
        NOTES+=("NO CUDA DEVICE: the GPU steps are skipped (GPU_CHECK_ALLOW_CPU=1 for a CPU dry run)")
        FAILED=1
    fi
fi
record "1 environment" "$ENV_RC" $((SECONDS - T0)) "${ENV_LINE:-see gpu_check.log}"

# ------------------------------------------------------------------ install (this checkout)
cat >"$TMP/import_check.py" <<'EOF'
import os
import sys

root = os.path.realpath(os.getcwd())
sys.path.insert(0, root)  # as for `python -m ...` and pytest, run from the checkout
try:
    import fused_losses
    import fused_losses.kernels
    import fused_losses.reference
except Exception as e:
    sys.exit(f"import fused_losses failed: {type(e).__name__}: {e}")
for m in (fused_losses, fused_losses.kernels, fused_losses.reference):
    f = os.path.realpath(m.__file__)
    if not f.startswith(root + os.sep):
        sys.exit(f"{m.__name__} is imported from {f}, not from this checkout {root}")
print("fused_losses, fused_losses.kernels, fused_losses.reference import from", root)
EOF
T0=$SECONDS
run install-check 60 "$PY" "$TMP/import_check.py"
if ((RC == 0)); then
    HOW="already importable from this checkout"
else
    run install-pip 120 "$PY" -m pip install --no-index --no-deps --no-build-isolation -e .
    run install-check 60 "$PY" "$TMP/import_check.py"
    HOW="pip install --no-index --no-deps --no-build-isolation -e ."
    if ((RC != 0)); then
        # No install possible (no setuptools, an externally managed Python, ...): map the package
        # folders (pyproject's package-dir) with an import hook that every Python process loads.
        mkdir -p "$TMP/shim"
        cat >"$TMP/shim/sitecustomize.py" <<EOF
"""gpu_check.sh: fused_losses.kernels -> kernels/, fused_losses.reference -> reference/."""
import importlib.util
import sys

_DIRS = {"fused_losses.kernels": "$ROOT/kernels", "fused_losses.reference": "$ROOT/reference"}


class _FusedLossesDirs:
    @staticmethod
    def find_spec(name, path=None, target=None):
        d = _DIRS.get(name)
        if d is None:
            return None
        return importlib.util.spec_from_file_location(
            name, d + "/__init__.py", submodule_search_locations=[d]
        )


sys.meta_path.insert(0, _FusedLossesDirs)
EOF
        export PYTHONPATH="$TMP/shim:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
        run install-check 60 "$PY" "$TMP/import_check.py"
        HOW="import hook on PYTHONPATH (pip install failed)"
    fi
fi
record "- install" "$RC" $((SECONDS - T0)) "$HOW"

# Every later step runs the compiled kernels (TRITON_INTERPRET=0), except a CPU dry run.
if ((HAVE_CUDA)); then
    export TRITON_INTERPRET=0 BENCH_DEVICE=cuda
    SMOKE_BATCHES=8
else
    export BENCH_DEVICE=cpu
    SMOKE_BATCHES=2
fi
RUN_GPU=$((HAVE_CUDA || DRY))
have() { [[ " $MISSING " != *" $1 "* ]]; }
# GPU_CHECK_SKIP=probe,compile_check,tests,smoke: steps not to run (recorded as skipped)
skip_step() { [[ ",${GPU_CHECK_SKIP:-}," == *",$1,"* ]]; }

# ------------------------------------------------------------- 5-7. probe (machine idle)
if skip_step probe; then
    record "5-7 probe" skip 0 "GPU_CHECK_SKIP"
elif ((RUN_GPU)); then
    # Leave about 4 minutes for the tests and the smoke run; the probe's report stops starting
    # new cases 40 s before its limit and writes what it has.
    PROBE_LIMIT=$(limit 220 260)
    PROBE_ARGS=(--out "$OUTDIR" --budget-s $((PROBE_LIMIT - 40)))
    ((DRY)) && PROBE_ARGS+=(--device cpu)
    run probe "$PROBE_LIMIT" "$PY" -m bench.gpu_probe "${PROBE_ARGS[@]}"
    STATUS=$(sed -n 's/^\[gpu_probe\] \(.*\) in [0-9]* s; wrote.*/\1/p' "$TMP/probe.out" | tail -n 1)
    record "5-7 probe" "$RC" "$DT" "${STATUS:-no status line}; probe.md"
else
    record "5-7 probe" skip 0 "no CUDA device"
fi

# ------------------------------------------------- 2. compile_check (background, CPU only)
CC_T0=$SECONDS
if ! skip_step compile_check; then
    CC_LIMIT=$(limit 300 15)
    say "compile_check: python -m bench.compile_check --markdown in the background (limit ${CC_LIMIT}s)"
    (
        # exec: $CC_PID is then `timeout` itself (or python), which cleanup can stop
        export TRITON_INTERPRET=0
        ((HAVE_TIMEOUT)) && exec timeout -k 15 "$CC_LIMIT" "$PY" -m bench.compile_check --markdown
        exec "$PY" -m bench.compile_check --markdown
    ) >"$OUTDIR/compile_check.md" 2>"$TMP/compile_check.err" &
    CC_PID=$!
fi

# ------------------------------------------------------------------------------- 3. tests
IGNORES=()
if ! have hypothesis; then
    for f in tests/*.py; do
        if grep -qE '^\s*(from|import) hypothesis' "$f"; then IGNORES+=("--ignore=$f"); fi
    done
    NOTES+=("hypothesis missing: left out ${IGNORES[*]#--ignore=} (files importing it)")
fi
read -ra EXTRA <<<"${GPU_CHECK_PYTEST_ARGS:-}"
if skip_step tests; then
    record "3 tests (not gpu)" skip 0 "GPU_CHECK_SKIP"
    record "3 tests (gpu, -v)" skip 0 "GPU_CHECK_SKIP"
elif ! have pytest; then
    record "3 tests (not gpu)" skip 0 "pytest missing"
    record "3 tests (gpu, -v)" skip 0 "pytest missing"
elif ((!RUN_GPU)); then
    record "3 tests (not gpu)" skip 0 "no CUDA device"
    record "3 tests (gpu, -v)" skip 0 "no CUDA device"
else
    PARALLEL=()
    ((XDIST > 0)) && PARALLEL=(-n "$XDIST")
    # The two compile-budget tests of tests/test_compile.py are step 2 again: not run twice (nor
    # once per worker); its torch.compile analysis test runs here (on the torch of this machine).
    TIMEOUT_SIGNAL=INT run tests "$(limit 240 110)" "$PY" -m pytest tests -q -m "not gpu" -rfE --tb=short \
        --deselect tests/test_compile.py::test_every_kernel_compiles_within_budget \
        --deselect tests/test_compile.py::test_every_kernel_is_checked \
        --durations=15 "${PARALLEL[@]}" "${IGNORES[@]}" "${EXTRA[@]}"
    record "3 tests (not gpu)" "$RC" "$DT" "$(pytest_counts "$TMP/tests.out")"
    while read -r line; do NOTES+=("tests: $line"); done < <(grep -E '^(FAILED|ERROR) ' "$TMP/tests.out" | head -n 8)
    TIMEOUT_SIGNAL=INT run tests-gpu "$(limit 100 50)" "$PY" -m pytest tests -m gpu -v -rfE "${IGNORES[@]}" "${EXTRA[@]}"
    record "3 tests (gpu, -v)" "$RC" "$DT" "$(pytest_counts "$TMP/tests-gpu.out")"
    while read -r line; do NOTES+=("gpu tests: $line"); done < <(grep -E '^(FAILED|ERROR) ' "$TMP/tests-gpu.out" | head -n 8)
fi

# -------------------------------------------------------------------------- 4. bench smoke
if skip_step smoke; then
    record "4 bench smoke" skip 0 "GPU_CHECK_SKIP"
elif ! have pytest || ! have pytest-benchmark; then
    record "4 bench smoke" skip 0 "needs pytest and pytest-benchmark"
elif ((!RUN_GPU)); then
    record "4 bench smoke" skip 0 "no CUDA device"
else
    TIMEOUT_SIGNAL=INT run bench-smoke "$(limit 120 10)" env BENCH_BATCHES=$SMOKE_BATCHES \
        "$PY" -m pytest bench/ --benchmark-disable -q -rfE
    record "4 bench smoke" "$RC" "$DT" "B=$SMOKE_BATCHES: $(pytest_counts "$TMP/bench-smoke.out")"
    while read -r line; do NOTES+=("bench smoke: $line"); done < <(grep -E '^(FAILED|ERROR) ' "$TMP/bench-smoke.out" | head -n 8)
fi

# ----------------------------------------------------------------- 2. compile_check, joined
if [[ -z $CC_PID ]]; then
    record "2 compile_check" skip 0 "GPU_CHECK_SKIP"
else
    say "compile_check: waiting for it"
    wait "$CC_PID"
    CC_RC=$?
    CC_PID=
    {
        echo "===== compile_check: python -m bench.compile_check --markdown (stdout: compile_check.md)"
        cat "$OUTDIR/compile_check.md" "$TMP/compile_check.err"
        echo "===== compile_check: exit status $CC_RC after $((SECONDS - CC_T0))s (including waiting)"
    } >>"$LOG"
    CC_LINE=$(grep -E 'compiled specialisations' "$OUTDIR/compile_check.md" | tail -n 1)
    while read -r line; do NOTES+=("compile_check: $line"); done < <(
        sed -n '/compiled specialisations/,$p' "$OUTDIR/compile_check.md" | sed -n '2,9p' | sed 's/^ *//'
    )
    record "2 compile_check" "$CC_RC" $((SECONDS - CC_T0)) "${CC_LINE:-no result line (see gpu_check.log)}"
fi

# ------------------------------------------------------------------------------- summary
write_summary
echo "===== summary" >>"$LOG"
cat "$SUMMARY" >>"$LOG"
# The device tool brings back files of at most 16 MiB: keep the log's head and tail.
if (($(wc -c <"$LOG") > 15 * 1024 * 1024)); then
    { head -c 5M "$LOG" && echo && echo "[... log cut to 15 MiB by gpu_check.sh ...]" && tail -c 10M "$LOG"; } >"$TMP/log" && mv "$TMP/log" "$LOG"
fi
echo
cat "$SUMMARY"
exit "$FAILED"
