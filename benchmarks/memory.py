"""Peak memory over many trials in one process: does anything grow from trial to trial?

A real study (``search.study.run_search``, Optuna on a journal file as by default or on SQLite
with ``--storage sqlite``, MLflow on local SQLite, latency on) runs
``trials`` tiny trials in one fresh process; after every trial the process's resident set
(RSS: ``psutil`` when installed, else ``/proc/self/statm``) and, on CUDA, the allocated and
peak CUDA memory are read. Trials 1..9 warm up (imports done lazily, allocator pools, caches);
the trend is judged from trial 10 on: growth = RSS(last) - RSS(10) and the least-squares slope
over trials 10..last. Target: no growth trend, decided as RSS(last) - RSS(10) < 30 MB
(the slope x 1,000 trials is printed too, to see what a long study would add).

The per-trial overhead (the trial's cycle minus its ``train_model`` call, as in
``benchmarks.overhead``) is printed at the same checkpoints: work that grows with the number of
trials already in the study (e.g. reading every trial back) shows there.

The study code freezes the survivors of every trial's full collection (``gc.freeze()`` in
``release_memory``) and syncs the Pareto tags incrementally; this checks that neither makes
memory creep and that the per-trial overhead does not grow with the trial count. The full run
also repeats the study with the ``+ sqlite WAL`` variant of ``benchmarks._proposals`` (the study's
SQLite stores in WAL mode with synchronous=NORMAL) applied, in its own fresh process.

    python -m benchmarks.memory            # 52 trials, current code + the variant, fresh processes
    python -m benchmarks.memory --quick    # CI smoke: 6 trials in this process, current code only
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from multiprocessing import get_context
from pathlib import Path
from unittest import mock

import torch

import search.objective
import search.study
from benchmarks._proposals import PATCHES, check_pareto_tags
from benchmarks._report import env_header, footer, set_threads, target
from benchmarks._workloads import tiny_study

PROPOSED = tuple(PATCHES)  # every change of benchmarks._proposals
TARGET_MB = 30.0  # RSS(last) - RSS(10)
CHECKPOINTS = (5, 10, 25, 50)


def rss_mb() -> float:
    """Resident set size of this process in MiB (psutil if installed, else /proc/self/statm)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_source() -> str:
    try:
        import psutil  # noqa: F401

        return "psutil"
    except ImportError:
        return "/proc/self/statm"


def run(trials: int, device: str, epochs: float, threads: int, proposed: bool, storage: str = "journal") -> dict:
    """Run one study of ``trials`` trials; returns RSS / CUDA memory / cycle per trial."""
    set_threads(threads)
    rss, cuda_alloc, cuda_peak, ends, trained = [], [], [], [], []
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    trial_calls = {"train": 0, "train_s": 0.0}
    train_s = []

    def on_trial(summary) -> None:
        ends.append(time.perf_counter())
        rss.append(rss_mb())
        trained.append(trial_calls["train"])
        train_s.append(trial_calls["train_s"])
        trial_calls["train_s"] = 0.0
        if cuda:
            cuda_alloc.append(torch.cuda.memory_allocated() / 2**20)
            cuda_peak.append(torch.cuda.max_memory_allocated() / 2**20)
            torch.cuda.reset_peak_memory_stats()

    real_train = search.objective.train_model

    def counted(*args, **kwargs):
        trial_calls["train"] += 1
        t = time.perf_counter()
        try:
            return real_train(*args, **kwargs)
        finally:
            trial_calls["train_s"] += time.perf_counter() - t

    rss0 = rss_mb()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp, ExitStack() as stack:
        cfg = tiny_study(Path(tmp), trials, device=device, epochs=epochs, storage=storage)
        stack.enter_context(mock.patch.object(search.objective, "train_model", counted))
        if proposed:
            for name in PROPOSED:
                stack.enter_context(PATCHES[name](cfg))
        t0 = time.perf_counter()
        summary = search.study.run_search(cfg, quiet=True, on_trial=on_trial)
        tags = check_pareto_tags(summary)
    cycles = [ends[0] - t0] + [b - a for a, b in zip(ends, ends[1:], strict=False)]
    overheads = [c - t for c, t in zip(cycles, train_s, strict=True)]
    return {"rss": rss, "rss0": rss0, "cuda_alloc": cuda_alloc, "cuda_peak": cuda_peak, "cycles": cycles,
            "overheads": overheads,
            "trained": trained[-1] if trained else 0, "space": cfg.space.size(), "tags": tags}


def slope(ys: list[float], first: int) -> float:
    """Least-squares slope of ``ys[first-1:]`` against the trial number (per trial)."""
    pts = list(enumerate(ys, 1))[first - 1:]
    if len(pts) < 2:
        return 0.0
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den if den else 0.0


def summarise(name: str, r: dict) -> dict:
    rss, n = r["rss"], len(r["rss"])
    marks = [c for c in CHECKPOINTS if c <= n] + ([n] if n not in CHECKPOINTS else [])
    print(f"\n== {name}: {n} trials ({r['trained']} trained, the rest reused an identical network), "
          f"RSS before the study {r['rss0']:.0f} MB")
    print(f"{'trial':>6} {'RSS MB':>9} {'cycle ms':>9} {'overhead ms':>12}"
          + (f" {'CUDA alloc MB':>14} {'CUDA peak MB':>13}" if r["cuda_alloc"] else ""))
    for k in marks:
        line = f"{k:>6} {rss[k - 1]:>9.1f} {r['cycles'][k - 1] * 1e3:>9.0f} {r['overheads'][k - 1] * 1e3:>12.0f}"
        if r["cuda_alloc"]:
            line += f" {r['cuda_alloc'][k - 1]:>14.1f} {r['cuda_peak'][k - 1]:>13.1f}"
        print(line)
    first = 10 if n >= 12 else 1
    growth = rss[-1] - rss[first - 1]
    s = slope(rss, first)
    print(f"growth      RSS({n}) - RSS({first}) = {growth:+.1f} MB; slope over trials {first}..{n} "
          f"{s * 1e3:+.1f} KB/trial (x 1,000 trials: {s * 1e3:+.0f} MB); peak RSS {max(rss):.0f} MB")
    ov_first, ov_last = r["overheads"][first - 1:first + 4], r["overheads"][-5:]
    print(f"ratio       {name}: RSS({n}) / RSS({first}): {rss[-1] / rss[first - 1]:.3f}x; mean overhead of the last 5 "
          f"trials / of trials {first}..{first + 4}: {sum(ov_last) / sum(ov_first):.2f}x "
          f"({sum(ov_first) / len(ov_first) * 1e3:.0f} -> {sum(ov_last) / len(ov_last) * 1e3:.0f} ms)")
    print(r["tags"])
    return {"growth": growth, "slope_kb": s * 1e3, "n": n, "first": first}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: 6 trials in this process")
    parser.add_argument("--trials", type=int, default=None, help="trials per study (52)")
    parser.add_argument("--device", default="cpu", help="train.device of the study (cpu | cuda | auto)")
    parser.add_argument("--epochs", type=float, default=0.25, help="train.epochs of every trial")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--storage", choices=("journal", "sqlite"), default="journal",
                        help="Optuna storage kind: journal file (the default config's) or SQLite")
    parser.add_argument("--current-only", action="store_true", help="skip the study with the proposed change")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    trials = args.trials or (6 if args.quick else 52)
    variants = {"current": False}
    if not (args.quick or args.current_only):
        variants["+ sqlite WAL"] = True

    from search.devices import resolve_device

    print("benchmark: memory over many trials of one study in one process (run_search)")
    print(env_header(resolve_device(args.device)))
    optuna_store = "a journal file" if args.storage == "journal" else "SQLite"
    print(f"study:       {trials} trials, {args.epochs:g} epoch(s) each, synthetic data, latency on, Optuna on "
          f"{optuna_store} + MLflow on SQLite in a temp dir; RSS from {rss_source()} after every trial")
    print("repeats:     one study per variant" + ("" if args.quick else ", each in a fresh process")
          + f"; decision: RSS(last) - RSS(10) < {TARGET_MB:g} MB")
    t0 = time.perf_counter()
    results = {}
    for name, proposed in variants.items():
        job = (trials, args.device, args.epochs, args.threads, proposed, args.storage)
        if args.quick:
            r = run(*job)
        else:
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                r = pool.submit(run, *job).result()
        results[name] = summarise(name, r)
    print()
    for name, s in results.items():
        print(target(f"no RSS growth trend, {name} (RSS({s['n']}) - RSS({s['first']}) < {TARGET_MB:g} MB)",
                     s["growth"] < TARGET_MB, f"{s['growth']:+.1f} MB"))
    print(f"elapsed:     {time.perf_counter() - t0:.1f} s")
    print(footer())
    return results


if __name__ == "__main__":
    main()
