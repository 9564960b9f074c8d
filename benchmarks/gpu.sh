#!/usr/bin/env bash
# The GPU benchmark (benchmarks/gpu.py) on one GPU, under 8 minutes, with its output kept.
#
#   benchmarks/gpu.sh              # full run on CUDA (a CPU smoke run where there is no CUDA)
#   benchmarks/gpu.sh --quick      # smoke sizes
#
# Output goes to the terminal and to $OUT/gpu-benchmark-<time>.txt ($OUT defaults to /tmp).
# PYTHON overrides the interpreter (default: the repository's .venv, else python3);
# GPU_BENCH_TIMEOUT the hard limit in seconds (default 480 = 8 minutes).
set -uo pipefail  # no -e: the benchmark's exit status is taken from the pipeline below
cd "$(dirname "$0")/.." || exit 1
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
LOG="${OUT:-/tmp}/gpu-benchmark-$(date +%Y%m%d-%H%M%S).txt"
mkdir -p "$(dirname "$LOG")"
{
  echo "# benchmarks/gpu.sh $*  ($(date -u +%Y-%m-%dT%H:%M:%SZ), git $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  else
    echo "nvidia-smi: not found (no NVIDIA driver): the benchmark runs its CPU smoke mode"
  fi
  timeout "${GPU_BENCH_TIMEOUT:-480}" "$PY" -m benchmarks.gpu "$@"
} 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}
echo "log: $LOG"
exit "$status"
