"""Run every benchmark in sequence, each in its own process, and list how each ended.

Each runs as ``python -m benchmarks.<name>`` in a fresh interpreter (allocator settings, CUDA
state and memory measured by one cannot leak into the next); ``--quick`` is passed through.

    python -m benchmarks.run_all             # full runs (make bench), ~10 minutes on a 2-core CPU
    python -m benchmarks.run_all --quick     # CI smoke of every benchmark, ~1-2 minutes
    python -m benchmarks.run_all --only trainer,latency
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks._report import footer, load_average

# in the order they run; each takes --quick
BENCHMARKS = ("complexity", "pareto", "trainer", "overhead", "latency", "datapath", "memory", "gpu", "scale", "report",
              "ui_footprint")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(BENCHMARKS)}")
    print(f"run_all:     {', '.join(names)}{' (--quick)' if args.quick else ''}; load {load_average()}", flush=True)
    ended = {}
    t0 = time.perf_counter()
    for name in names:
        cmd = [sys.executable, "-m", f"benchmarks.{name}"] + (["--quick"] if args.quick else [])
        print(f"\n{'=' * 100}\n$ {' '.join(cmd[1:])}\n", flush=True)
        start = time.perf_counter()
        code = subprocess.call(cmd)
        ended[name] = (code, time.perf_counter() - start)
    print(f"\n{'=' * 100}\nrun_all summary ({time.perf_counter() - t0:.0f} s):")
    for name, (code, seconds) in ended.items():
        print(f"  {name:<12} {'ok' if code == 0 else f'FAILED (exit {code})':<18} {seconds:>6.1f} s")
    print(footer())
    return 0 if all(code == 0 for code, _ in ended.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
