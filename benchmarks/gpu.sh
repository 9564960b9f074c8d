#!/usr/bin/env bash
# The GPU benchmarks on one GPU in under 8 minutes, each section under its own time limit (one
# hang cannot eat the others), the whole output kept.
#
#   benchmarks/gpu.sh              # every section on CUDA (CPU smoke sizes where there is no CUDA)
#   benchmarks/gpu.sh --quick      # smoke sizes
#   GPU_SECTIONS="grid study" benchmarks/gpu.sh    # some sections only
#
# Sections (limit in seconds):
#   grid     benchmarks.gpu: images/s by cardinality x dtype x memory format x cudnn.benchmark,
#            the rule table, the memory-format probe (170; the grid stops itself at 120)
#   trainer  benchmarks.trainer --timeline: the trial trainer vs a bare loop, and the GPU
#            timeline of one trainer call (idle gaps = host stalls) (90)
#   study    benchmarks.gpu_study: the cifar10 recipe end to end, 11 one-epoch trials on 45k
#            CIFAR-shaped images with the real stores, a CUDA out-of-memory trial (150)
#   workers  `resnext-nas search` with 2 worker processes pinned to the GPU (CUDA_VISIBLE_DEVICES),
#            then `resnext-nas pareto` (90)
#   compile  benchmarks.gpu --only compile: torch.compile's cost vs its gain per trial, default
#            mode (120; max-autotune modes tune for minutes per network)
#   tables   benchmarks.search_quality build, two search-quality tables at once (not in the default
#            list): the quickstart space with a cosine schedule, 8 epochs, on the host's CPU cores
#            (all but 5, 1 thread each), and 16 epochs on the GPU (4 processes); written to
#            $OUT/tables/, every 24 networks, so a time limit still leaves a partial table (420)
#
# Output goes to the terminal and to $OUT/gpu-benchmark-<time>.txt ($OUT defaults to /tmp); the
# trainer's Chrome trace to $OUT/trainer-trace.json.gz. PYTHON overrides the interpreter (default:
# the repository's .venv, else python3).
set -uo pipefail  # no -e: every section runs; the exit status is the first failing section's
cd "$(dirname "$0")/.." || exit 1
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
OUT="${OUT:-/tmp}"
LOG="$OUT/gpu-benchmark-$(date +%Y%m%d-%H%M%S).txt"
mkdir -p "$OUT"
SECTIONS="${GPU_SECTIONS:-grid trainer study workers compile}"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
QUICK=""
case " $* " in *" --quick "*) QUICK=--quick ;; esac
status=0

section() {  # section NAME LIMIT_S COMMAND...
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  case " $SECTIONS " in *" $name "*) ;; *) return 0 ;; esac
  echo
  echo "######## $name (limit ${limit}s): $*"
  timeout -k 10 "$limit" "$@"
  rc=$?
  echo "######## $name: exit $rc after $((SECONDS - t0)) s$([ $rc = 124 ] && echo ' (TIME LIMIT)')"
  [ $rc = 0 ] || [ $status != 0 ] || status=$rc
}

{
  echo "# benchmarks/gpu.sh $*  ($(date -u +%Y-%m-%dT%H:%M:%SZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  else
    echo "nvidia-smi: not found (no NVIDIA driver): the benchmarks run their CPU smoke modes"
  fi
  section grid 170 "$PY" -m benchmarks.gpu --only grid --budget 120 "$@"
  section trainer 90 "$PY" -m benchmarks.trainer --timeline --no-allocator $QUICK
  section study 150 "$PY" -m benchmarks.gpu_study "$@"
  section workers 90 bash -c "
    '$PY' -c 'import sys; from search.cli import main; sys.exit(main())' search experiments/quickstart.yaml \
      --set train.device=auto --set search.n_trials=8 --set search.storage=journal:$TMP/optuna.journal \
      --set tracking.uri=sqlite:///$TMP/mlflow.db --set tracking.artifacts=$TMP/artifacts \
      --export-dir $TMP/exports --workers 2 &&
    '$PY' -c 'import sys; from search.cli import main; sys.exit(main())' pareto experiments/quickstart.yaml \
      --set train.device=auto --set search.storage=journal:$TMP/optuna.journal --set tracking.uri=sqlite:///$TMP/mlflow.db"
  section compile 120 "$PY" -m benchmarks.gpu --only compile --compile-modes default --budget 90 "$@"
  mkdir -p "$OUT/tables"
  section tables 420 bash -c "
    '$PY' -m benchmarks.search_quality build --jobs \$((\$(nproc) > 6 ? \$(nproc) - 5 : 1)) --set data.val_fraction=0.4 \
      --set train.schedule=cosine --table '$OUT/tables/cosine8-cpu.json' > '$OUT/tables/cosine8-cpu.log' 2>&1 &
    '$PY' -m benchmarks.search_quality build --jobs 4 --device cuda --set data.val_fraction=0.4 \
      --set train.schedule=cosine --set train.epochs=16 --table '$OUT/tables/cosine16-cuda.json' \
      > '$OUT/tables/cosine16-cuda.log' 2>&1 &
    wait; for f in '$OUT'/tables/*.log; do tail -n 3 \$f; done"
  echo
  echo "gpu.sh: exit $status"
  exit "$status"
} 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
echo "log: $LOG"
exit "$status"
