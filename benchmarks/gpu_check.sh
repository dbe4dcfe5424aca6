#!/usr/bin/env bash
# The CUDA solver's check on a GPU machine, in one go (about 8 minutes at most).
#
#   benchmarks/gpu_check.sh [OUTDIR]        (also: make gpu-check; OUTDIR defaults to $OUT, else gpu-check-out)
#
# For a bare machine with torch, nvcc, ninja, scipy, pytest and hypothesis but no
# network (without cmake, scikit-build-core and nanobind wheels in .whl/ it cannot build). From the repository root, it
#   1. installs the build tools (scikit-build-core, nanobind, cmake) and lap, pycocotools
#      and torch-linear-assignment from the wheels in .whl/ (make gpu-wheels downloads
#      them; any that is missing is skipped and said), builds the package's wheel with its
#      own build (`pip wheel`, HYBRIDMATCH_CUDA=1 for this GPU's architecture), and puts
#      its compiled solvers beside this checkout's sources for the steps below (removed
#      at the end);
#   2. runs every test marked cuda and the whole solver property table
#      (tests/test_solvers.py, the cuda backend included), and
#   3. compute-sanitizer's memcheck and racecheck on benchmarks/gpu_sanitize.py,
#      these four side by side;
#   4. runs the GPU section of benchmarks/solvers.py (batch 16, float32) and the
#      end-to-end matching of benchmarks/gpu_matching.py;
#   5. writes everything under OUTDIR (at most 8 files: summary.md, summary.json,
#      solvers.json, matching.json, build.log, tests.log, sanitizer.log, bench.log) and
#      prints a short summary.
# Without a GPU every CUDA part is skipped or rehearsed on the CPU (the benchmarks'
# dry runs, the sanitizer workload on the native backend), so that a GPU run can fail
# only for GPU reasons. Exit status: 0 when every step that ran passed.
#
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET_S (default 470: wall-clock
# seconds for the whole script; each step's time limit is cut to what is left).
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
OUTDIR=${1:-${OUT:-gpu-check-out}}
mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-470}
START=$(date +%s)
WORK=$(mktemp -d /tmp/hm-gpu-check.XXXXXX)
STEPS=$WORK/steps.tsv
: >"$STEPS"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
export PYTHONPATH="$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"

log() { printf '[gpu-check %4ds] %s\n' "$(($(date +%s) - START))" "$*"; }

# step NAME CAP_S LOGFILE COMMAND...: run with a time limit of min(CAP_S, what is left),
# append to LOGFILE, record "NAME rc seconds" (rc 124: out of time; -1: not run).
step() {
  local name=$1 cap=$2 logfile=$3
  shift 3
  local left=$((BUDGET - ($(date +%s) - START) - 10))
  local limit=$((cap < left ? cap : left))
  if ((limit < 15)); then
    log "$name: not run (no time left)"
    printf '%s\t-1\t0\n' "$name" >>"$STEPS"
    return 0
  fi
  log "$name (limit ${limit}s)"
  local t0 rc
  t0=$(date +%s)
  {
    echo "===== $name: $*"
    timeout --kill-after=10 "$limit" "$@"
  } >>"$logfile" 2>&1
  rc=$?
  printf '%s\t%d\t%d\n' "$name" "$rc" "$(($(date +%s) - t0))" >>"$STEPS"
  log "$name: exit $rc after $(($(date +%s) - t0))s"
  return 0
}

GPU=0
if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then GPU=1; fi
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
{
  echo "date: $(date -u +%FT%TZ)"
  echo "repo: $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
  echo "python: $("$PY" -c 'import sys; print(sys.version.split()[0], sys.executable)')"
  "$PY" -c 'import torch; print("torch:", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'
  echo "nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo missing)"
  echo "compute-sanitizer: ${SANITIZER:-missing}"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv,noheader 2>/dev/null || true
} >"$OUTDIR/build.log" 2>&1
cat "$OUTDIR/build.log"

# 1. Install and build.
if ls .whl/*.whl >/dev/null 2>&1; then
  # One wheel at a time: one that does not fit this Python (the wheels are for the GPU
  # machine's 3.12) is said and skipped, the others still install. On the GPU machine
  # a wheel that fails makes the step fail.
  step wheels 60 "$OUTDIR/build.log" bash -c '
    failed=0
    for wheel in .whl/*.whl; do
      "$0" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$1" "$wheel" \
        && echo "installed $wheel" || { echo "NOT installed: $wheel"; failed=$((failed + 1)); }
    done
    [ "$2" = 0 ] || exit $failed' "$PY" "$WORK/site" "$GPU"
else
  log "no .whl folder: lap, pycocotools and torch-linear-assignment come from the machine or are skipped"
fi
# The package's own build: a wheel (the CUDA solver for this GPU only, to save time).
ARCH=
if ((GPU)); then ARCH=$("$PY" -c 'import torch; print("%d%d" % torch.cuda.get_device_capability())'); fi
step build 300 "$OUTDIR/build.log" env HYBRIDMATCH_CUDA="$GPU" HYBRIDMATCH_CUDA_ARCHITECTURES="$ARCH" \
  "$PY" -m pip wheel -v --no-index --no-deps --no-build-isolation -w "$WORK/wheel" -C build-dir="$WORK/build" "$REPO"
# The checkout runs the tests (PYTHONPATH): its sources get the wheel's compiled modules.
trap 'rm -f "$REPO"/hybridmatch/_lsap*.so' EXIT
"$PY" - "$WORK/wheel" "$REPO" "$GPU" >>"$OUTDIR/build.log" 2>&1 <<'EOF'
import importlib
import sys
import zipfile
from pathlib import Path

folder, repo, gpu = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
wheels = sorted(folder.glob("hybridmatch-*.whl"))
if wheels:
    with zipfile.ZipFile(wheels[0]) as wheel:
        modules = [name for name in wheel.namelist() if name.startswith("hybridmatch/_lsap")]
        for name in modules:
            (repo / name).write_bytes(wheel.read(name))
    print(f"wheel {wheels[0].name}: {modules}")
    wanted = ["_lsap", "_lsap_cuda"] if gpu else ["_lsap"]
    missing = [m for m in wanted if not any(name.split("/")[1].startswith(m + ".") for name in modules)]
    print(f"compiled solvers missing from the wheel: {missing or 'none'}")
else:
    print("no wheel was built")
for name in ("lap", "pycocotools", "torch_linear_assignment", "triton"):
    try:
        module = importlib.import_module(name)
        print(f"{name}: {getattr(module, '__version__', 'importable')}")
    except Exception as error:
        print(f"{name}: not importable ({type(error).__name__}: {error})")
EOF

# 2 and 3 run side by side (correctness only: nothing is timed until step 4), each
# into its own log, gathered into tests.log and sanitizer.log afterwards.
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -rfEs)
step tests-cuda 150 "$WORK/tests-cuda.log" "${PYTEST[@]}" -m cuda tests &
if ((GPU)); then
  step tests-table 180 "$WORK/tests-table.log" "${PYTEST[@]}" tests/test_solvers.py &
else
  # Without a GPU the table has no cuda backend: collecting it is the rehearsal.
  step tests-table 60 "$WORK/tests-table.log" "${PYTEST[@]}" --collect-only tests/test_solvers.py &
fi
# compute-sanitizer. No caching allocator: each tensor its own allocation, so memcheck
# sees an access past a tensor's end.
if ((GPU)) && [[ -n $SANITIZER ]]; then
  for tool in memcheck racecheck; do
    step "sanitizer-$tool" 150 "$WORK/sanitizer-$tool.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      "$SANITIZER" --tool "$tool" --error-exitcode 9 "$PY" benchmarks/gpu_sanitize.py &
  done
else
  log "sanitizer: no GPU or no compute-sanitizer: the workload alone, on the native backend"
  step sanitizer-workload 60 "$WORK/sanitizer-workload.log" "$PY" benchmarks/gpu_sanitize.py --device cpu &
fi
wait
cat "$WORK"/tests-*.log >"$OUTDIR/tests.log" 2>/dev/null
cat "$WORK"/sanitizer-*.log >"$OUTDIR/sanitizer.log" 2>/dev/null

# 4. Benchmarks.
SHAPES=(300x30 900x30 1500x30x6 1500x100x6 3000x100x6)
if ((GPU)); then
  step bench-solvers 150 "$OUTDIR/bench.log" "$PY" benchmarks/solvers.py --gpu-only --batch 16 --repeat 10 \
    --method-budget 8 --shapes "${SHAPES[@]}" --json "$OUTDIR/solvers.json"
  step bench-matching 120 "$OUTDIR/bench.log" "$PY" benchmarks/gpu_matching.py --batches 2 16 --objects 7 30 100 \
    --repeat 10 --method-budget 6 --json "$OUTDIR/matching.json"
else
  step bench-solvers 120 "$OUTDIR/bench.log" "$PY" benchmarks/solvers.py --gpu-only --gpu-dry-run --quick \
    --shapes 300x30 1500x30x6 --json "$OUTDIR/solvers.json"
  step bench-matching 120 "$OUTDIR/bench.log" "$PY" benchmarks/gpu_matching.py --device cpu --quick \
    --json "$OUTDIR/matching.json"
fi

# 5. Summary.
"$PY" benchmarks/gpu_report.py "$OUTDIR" "$STEPS" --gpu "$GPU"
status=$?
rm -rf "$WORK"
exit $status
