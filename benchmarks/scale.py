"""Scale: one real study of 10,000 trials with an instant objective; does the bookkeeping grow with n?

The whole study machinery runs for real (``search.study.run_search``, one process): Optuna on a
journal file (the default storage's kind), MLflow on SQLite, every trial's MLflow run, the reuse
lookup, the Pareto front and tags after every trial, the hypervolume logged where the front changed it,
the progress display quiet, and the collector freezing each trial's survivors as
``resnext-nas search`` sets it up (``search.devices.tune_process``; ``--untuned`` leaves the
collector alone, as a library caller of ``run_search`` gets it). Only the work of a trial is
faked, instantly and deterministically: ``search.objective.build_and_train`` returns a tiny
untrained model and a ``TrainResult`` whose accuracy grows with the network's (log) parameter
count times a factor drawn from its hash, ``search.objective.build_model`` (the network a trial
times before training) returns that stub too, and ``search.objective.measure_latency`` returns a
``Latency`` proportional to the network's MACs times another such factor, so the 3-objective
front (accuracy, params, latency) is non-trivial and changes as the study goes on.

The per-trial bookkeeping cost of trial k is the time between the ends of trials k-1 and k (the
study's ``on_trial`` callback) minus the time spent inside the fakes; trial 0 holds the
one-time setup and is left out. Its median in windows of trials (0-100, 1000-1100, ... and the last
100 for 10,000 trials) shows whether it grows with the study; the parts of the study it is spent in
(Pareto summary, Pareto tags, reuse lookup, the loop's checks, MLflow writes, the collector) are
timed by wrapping them and shown per window. Then ``resnext-nas pareto`` runs as a subprocess on
the finished study (the real CLI, the experiment written as YAML next to the stores).

The sampler is ``random``: TPE's own per-trial cost grows with the number of trials, so at 10,000
trials it would measure TPE, not this bookkeeping (``--sampler tpe`` measures it anyway).
``search.n_trials`` counts trained networks; reused ones (the same network drawn again) are free
and are reported. No budget constraint, so no trial is over budget.

    python -m benchmarks.scale                 # 10,000 trained networks (tens of minutes on 2 cores)
    python -m benchmarks.scale --quick         # CI smoke: 300 trials
    python -m benchmarks.scale --trials 2000 --profile   # + cProfile of the second half of the trials
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import hashlib
import importlib
import io
import math
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import numpy as np
import optuna
import torch
import yaml
from sqlalchemy import event
from sqlalchemy.engine import Engine

import search.devices
import search.objective
import search.study
from benchmarks._proposals import check_pareto_tags
from benchmarks._report import env_header, footer, median, set_threads, target
from benchmarks._workloads import StoreWrites
from search.config import ExperimentConfig, load_experiment
from search.latency import Latency
from search.outage import SafeJournalFileBackend as JournalFileBackend  # the journal backend studies write with
from search.results import REUSED, TRAINED, finished_rows, front_table, outcome_counts, pareto_rows
from search.storage import load_study
from search.train import EpochRecord, TrainResult
from space import NetSpec, complexity

TRIALS, QUICK_TRIALS = 10_000, 300
TARGET_TRIAL_MS = 50.0  # per-trial bookkeeping at the study's last trials (trial 10,000)
TARGET_PARETO_S = 5.0  # `resnext-nas pareto` on the finished study, process start included
LARGEST_LATENCY_MS = 2.0  # fake latency of the space's largest network (the others scale with MACs)

# 406,875 distinct networks: 10,000 uniform draws are ~95% distinct (the rest are reused, free)
SPACE = {"num_stages": [2, 3, 4], "stem_ch": [8, 12, 16, 24, 32, 48, 64], "bottleneck_ch": [8, 12, 16, 24, 32],
         "channel_mult": 2, "cardinality": [1, 2, 4, 8, 16], "base_width": [4, 8, 16], "depth": {"low": 1, "high": 5}}

# the parts of the study timed per trial: label -> the functions, by dotted name (names of other
# versions of the study loop are listed too, so the benchmark also times older code). A name the
# code does not have is skipped and listed; a timed function called inside another counts for the
# outer one only.
PARTS = {
    # the study's rows, front and counts: recomputed after every trial, or kept up to date (Ledger)
    "summary": ["search.study.summarize", "search.results.Ledger.update", "search.results.Ledger.summary"],
    "tags": ["search.tracking.Tracker.sync_pareto_tags", "search.tracking.Tracker.set_pareto_tags"],
    "hv": ["search.study.study_hypervolume"],  # the front's hypervolume (its logging counts under mlflow)
    "twin": ["search.objective.Objective._twin", "search.results.Ledger.twin"],  # has the study trained this net?
    "checks": ["search.study._counts", "search.study.space_exhausted", "search.study.reap_lost_trials"],
    "mlflow": [f"search.tracking.Tracker.{m}" for m in ("start_trial", "log", "log_text", "end")],
    "gc": ["search.objective.release_memory"],  # the collection after every trial
}


def resolve(dotted: str) -> tuple[object, str] | None:
    """(owner, attribute) of a dotted name such as ``search.results.Ledger.update``, or None if absent."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:-1]:
            owner = getattr(owner, name, None)
        return (owner, parts[-1]) if owner is not None and hasattr(owner, parts[-1]) else None
    return None


def code_version() -> str:
    """The repository's commit and whether search/ or space/ differ from it (others edit them meanwhile)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "search", "space"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    changed = sorted(line[3:] for line in dirty if line.strip())
    return head + (f" + uncommitted changes to {', '.join(changed)}" if changed else " (search/, space/ clean)")


def scale_raw(tmp: Path, n_trials: int, sampler: str) -> dict:
    """The experiment (as its YAML mapping) of the scale study, its stores under ``tmp``."""
    return {
        "data": {"dataset": "synthetic", "val_fraction": 0.25},
        "space": SPACE,
        "objectives": ["val_accuracy", "params", "latency_ms"],
        "search": {"n_trials": n_trials, "seed": 0, "sampler": sampler, "storage": f"journal:{tmp}/optuna.journal"},
        "train": {"epochs": 1, "batch_size": 32, "device": "cpu"},
        "latency": {"repeats": 20, "warmup": 5, "threads": 1},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "artifacts": str(tmp / "artifacts")},
    }


def unit(spec_hash: str, salt: str) -> float:
    """A deterministic number in [0, 1] drawn from a network's hash."""
    return int(hashlib.sha256(f"{salt}:{spec_hash}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


class Stub(torch.nn.Linear):
    """The tiny untrained model the fake training returns; it carries its spec for the fake latency."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__(1, 1)
        self.spec = spec


@dataclass
class Clock(StoreWrites):
    """Per-trial time spent in the fakes and in the timed parts of the study, by trial index.

    Index k is the k-th trial to end (0-based); work done between the ends of trials k-1 and k
    counts for trial k.
    """

    trial: int = 0
    start: float = 0.0
    depth: int = 0  # timed calls in progress (only the outermost one counts)
    ends: list[float] = field(default_factory=list)
    fronts: list[int] = field(default_factory=list)  # Pareto front size after each trial
    rss: list[float] = field(default_factory=list)  # resident memory after each trial, MiB
    fake: dict[int, float] = field(default_factory=dict)
    parts: dict[str, dict[int, float]] = field(default_factory=dict)
    appends: dict[int, int] = field(default_factory=dict)  # journal appends (each an fsync)
    commits: dict[int, int] = field(default_factory=dict)  # SQLAlchemy commits (MLflow's SQLite)

    def add(self, table: dict[int, float], seconds: float) -> None:
        table[self.trial] = table.get(self.trial, 0.0) + seconds

    def wrap(self, label: str, fn):
        """``fn`` timed into part ``label`` (unless called inside another timed function)."""
        table = self.parts.setdefault(label, {})

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if self.depth:
                return fn(*args, **kwargs)
            self.depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(table, time.perf_counter() - t0)
                self.depth -= 1
        return timed

    def trial_done(self, summary) -> None:
        self.ends.append(time.perf_counter())
        self.fronts.append(len(summary.front))
        self.rss.append(rss_mb())
        self.trial += 1

    def rows(self, lo: int = 1, hi: int | None = None) -> list[dict]:
        """Trials lo..hi-1 (from 1: trial 0 holds the setup): cycle, time in the fakes, bookkeeping
        (cycle - fakes) and each timed part, in s."""
        out = []
        for k in range(max(lo, 1), min(hi or len(self.ends), len(self.ends))):
            cycle = self.ends[k] - self.ends[k - 1]
            fake = self.fake.get(k, 0.0)
            parts = {label: self.parts.get(label, {}).get(k, 0.0) for label in PARTS}
            out.append({"k": k, "cycle": cycle, "fake": fake, "cost": cycle - fake, **parts,
                        "optuna+rest": cycle - fake - sum(parts.values()), "appends": self.appends.get(k, 0),
                        "commits": self.commits.get(k, 0), "front": self.fronts[k], "rss": self.rss[k]})
        return out


def rss_mb() -> float:
    """This process's resident memory in MiB (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


class Fakes:
    """Instant, deterministic stand-ins for ``build_and_train`` and ``measure_latency``.

    Accuracy rises with the log of the parameter count (0.25 for the smallest network of the
    space, up to 0.95 for the largest) times a factor in [0.75, 1] from the network's hash;
    latency is proportional to MACs (``LARGEST_LATENCY_MS`` for the largest network) times a
    factor in [0.6, 1] from another hash, plus 0.02 ms.
    """

    def __init__(self, cfg: ExperimentConfig, clock: Clock) -> None:
        self.clock = clock
        lo, hi = cfg.space.complexity_range()
        self.log_lo, self.log_span = math.log(lo.params), math.log(hi.params / lo.params)
        self.largest = cfg.space.largest()
        self.max_macs = complexity(self.largest).macs

    def build_and_train(self, spec: NetSpec, splits, train_cfg, device, seed, on_epoch=None):
        """(a tiny untrained model, a TrainResult of one epoch); calls ``on_epoch`` as training does."""
        t0 = time.perf_counter()
        x = (math.log(complexity(spec).params) - self.log_lo) / self.log_span
        acc = 0.25 + 0.7 * math.sqrt(max(x, 0.0)) * (0.75 + 0.25 * unit(spec.hash, "accuracy"))
        record = EpochRecord(1, train_loss=1.5 - acc, val_accuracy=acc, elapsed_s=0.001)
        result = TrainResult(acc, [record], train_time_s=0.001, steps=1, images=train_cfg.batch_size)
        model = Stub(spec)
        self.clock.add(self.clock.fake, time.perf_counter() - t0)
        if on_epoch is not None:  # the study's per-epoch bookkeeping is not the fake's: untimed here
            on_epoch(record)
        return model, result

    def build_model(self, spec: NetSpec) -> Stub:
        """The stub in place of the network a trial times before training (the trial's work, not bookkeeping)."""
        t0 = time.perf_counter()
        model = Stub(spec)
        self.clock.add(self.clock.fake, time.perf_counter() - t0)
        return model

    def measure_latency(self, model, in_ch: int, size: int, cfg, device, *, bf16: bool = False,
                        channels_last: bool = False, reference_ms: float | None = None) -> Latency:
        """A Latency from the spec the stub carries (a real model: the hv reference, the largest network)."""
        t0 = time.perf_counter()
        spec = getattr(model, "spec", None) or self.largest
        share = 1.0 if spec.hash == self.largest.hash else 0.6 + 0.4 * unit(spec.hash, "latency")
        ms = 0.02 + LARGEST_LATENCY_MS * complexity(spec).macs / self.max_macs * share
        protocol = {"device": "fake", "device_type": "cpu", "dtype": "float32", "batch_size": cfg.batch_size,
                    "input_shape": [cfg.batch_size, in_ch, size, size], "threads": cfg.threads,
                    "warmup": cfg.warmup, "repeats": cfg.repeats, "torch": torch.__version__,
                    "channels_last": channels_last, "timer": "fake", "statistic": "median"}
        lat = Latency(ms, ms, 0.95 * ms, 1.05 * ms, 0.02, [ms] * cfg.repeats, protocol)
        self.clock.add(self.clock.fake, time.perf_counter() - t0)
        return lat


@dataclass
class Run:
    """What one scale study left: its clock, trials in order, final summary and timings."""

    clock: Clock
    trials: list
    summary: object
    wall_s: float
    finish_s: float  # from the last trial's end to run_search's return (final summary, artifacts, plots)
    profile: pstats.Stats | None = None


def run_study(cfg: ExperimentConfig, *, tuned: bool = True, profile: bool = False,
              progress: Callable[[Clock], None] | None = None) -> Run:
    """Run the study with the fakes in place and every part of ``PARTS`` timed per trial.

    Args:
        cfg: the experiment.
        tuned: freeze each trial's survivors in the collector, as ``resnext-nas search`` does.
        profile: cProfile the second half of the trials.
        progress: called with the clock after every trial (after its end was recorded).
    """
    clock = Clock()
    fakes = Fakes(cfg, clock)
    profiler = cProfile.Profile() if profile else None
    n = cfg.search.n_trials

    def on_trial(summary) -> None:
        clock.trial_done(summary)
        if profiler is not None and clock.trial == n // 2:
            profiler.enable()
        if progress is not None:
            progress(clock)

    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(search.objective, "build_and_train", fakes.build_and_train))
        stack.enter_context(mock.patch.object(search.objective, "measure_latency", fakes.measure_latency))
        stack.enter_context(mock.patch.object(search.objective, "build_model", fakes.build_model))
        # what tune_process sets for the collector, undone afterwards (tests share this process)
        stack.enter_context(mock.patch.object(search.devices, "_freeze_after_trial", tuned))
        for label, names in PARTS.items():
            for owner, name in filter(None, map(resolve, names)):
                stack.enter_context(mock.patch.object(owner, name, clock.wrap(label, getattr(owner, name))))
        stack.enter_context(mock.patch.object(JournalFileBackend, "append_logs",
                                              clock.counted_append(JournalFileBackend.append_logs)))
        event.listen(Engine, "commit", clock.commit)
        stack.callback(event.remove, Engine, "commit", clock.commit)
        clock.start = time.perf_counter()
        try:
            summary = search.study.run_search(cfg, quiet=True, on_trial=on_trial)
        finally:
            if profiler is not None:
                profiler.disable()
        done = time.perf_counter()
    stats = pstats.Stats(profiler, stream=io.StringIO()) if profiler is not None else None
    trials = sorted(summary.study.get_trials(deepcopy=False), key=lambda t: t.number)
    return Run(clock, trials, summary, done - clock.start, done - clock.ends[-1], stats)


# -- analysis ----------------------------------------------------------------------------------------

def per_trial(run: Run) -> list[dict]:
    """Trials 1..N-1 (``Clock.rows``) with each trial's outcome."""
    return [{**r, "outcome": run.trials[r["k"]].user_attrs.get("outcome", "?") if r["k"] < len(run.trials) else "?"}
            for r in run.clock.rows()]


def windows(n: int) -> list[tuple[int, int]]:
    """[start, end) trial windows across a study of n trials: the first, about every tenth and the last.

    From 2,000 trials on, windows of 100 trials at round steps (0-100, 1000-1100, ... for 10,000).
    """
    if n >= 2000:
        width = 100
        step = min(m * 10**k for k in range(2, 9) for m in (1, 2, 5) if n / (m * 10**k) <= 11)
    else:
        width = step = max(10, n // 10)
    starts = sorted({*range(0, n - width + 1, step), max(n - width, 0)})
    return [(s, min(s + width, n)) for s in starts]


def window_table(rows: list[dict], n: int, spans: list[tuple[int, int]] | None = None) -> list[dict]:
    """Medians of every column over each window of trials (``windows(n)`` unless ``spans`` is given)."""
    out = []
    for lo, hi in spans or windows(n):
        sel = [r for r in rows if lo <= r["k"] < hi]
        if not sel:
            continue
        costs = sorted(r["cost"] for r in sel)
        out.append({"lo": lo, "hi": hi, "n": len(sel), "reused": sum(r.get("outcome") == REUSED for r in sel),
                    "front": sel[-1]["front"], "rss": sel[-1]["rss"], "p90": costs[int(0.9 * (len(costs) - 1))],
                    **{key: median([r[key] for r in sel]) for key in ("cost", "cycle", "fake", *PARTS, "optuna+rest",
                                                                         "appends", "commits")}})
    return out


def print_windows(table: list[dict]) -> None:
    parts = [*PARTS, "optuna+rest"]
    print(f"\n{'trials':>11} {'front':>5} {'reused':>6} {'cost':>8} {'p90':>8} {'fake':>6} "
          + " ".join(f"{p:>8}" for p in parts) + f" {'appends':>7} {'commits':>7} {'rss':>7}")
    for w in table:
        print(window_line(w))
    print("(medians per window: cost = cycle between trial ends - time in the fakes; each part alone; "
          "optuna+rest = cost - the parts: sampler, trial writes, suggest, callbacks; rss at the window's end)")


def window_line(w: dict) -> str:
    """One row of the window table."""
    return (f"{w['lo']:>5}-{w['hi']:<5} {w['front']:>5} {w['reused']:>6} {w['cost'] * 1e3:>6.1f}ms "
            f"{w['p90'] * 1e3:>6.1f}ms {w['fake'] * 1e3:>4.1f}ms "
            + " ".join(f"{w[p] * 1e3:>6.1f}ms" for p in [*PARTS, "optuna+rest"])
            + f" {w['appends']:>7.0f} {w['commits']:>7.0f} {w['rss']:>5.0f}MB")


def live_progress(n: int, t0: float) -> Callable[[Clock], None]:
    """A ``run_study`` progress hook: prints each window's row as soon as its last trial has ended."""
    ends = {hi: lo for lo, hi in windows(n)}

    def progress(clock: Clock) -> None:
        lo = ends.get(clock.trial)
        if lo is not None:
            (w,) = window_table(clock.rows(lo, clock.trial), clock.trial, [(lo, clock.trial)])
            print(f"so far {time.perf_counter() - t0:>6.0f} s  {window_line(w)}", flush=True)
    return progress


STUDY_PARTS = ("summary", "tags", "hv", "twin", "checks")  # the parts whose work can grow with the study


def growth(table: list[dict], keys: tuple[str, ...] = ("cost",)) -> float:
    """Slope of the window medians (summed over ``keys``) against trial number, in s per trial.

    Theil-Sen (the median of the slopes between every two windows): a window slowed down by
    other processes (fsyncs waiting on a busy disk) moves it little, unlike a least-squares fit.
    """
    pts = [((w["lo"] + w["hi"]) / 2, sum(w[k] for k in keys)) for w in table]
    slopes = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(pts) for x2, y2 in pts[i + 1:] if x2 != x1]
    return median(slopes) if slopes else 0.0


# -- resnext-nas pareto ---------------------------------------------------------------------------

def pareto_cli(exp: Path, cfg: ExperimentConfig, repeats: int) -> tuple[list[float], str]:
    """Wall times of ``resnext-nas pareto EXP.yaml --storage ... --tracking-uri ...`` and its first line."""
    exe = shutil.which("resnext-nas") or str(Path(sys.executable).with_name("resnext-nas"))
    cmd = [exe] if Path(exe).exists() else [sys.executable, "-m", "search.cli"]
    cmd += ["pareto", str(exp), "--storage", cfg.storage_url, "--tracking-uri", cfg.tracking.uri]
    times, first = [], ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        times.append(time.perf_counter() - t0)
        if done.returncode != 0:  # reported, not raised: the study's numbers above stay printed
            return times, f"FAILED (exit {done.returncode}): {done.stderr.strip()[-500:]}"
        first = done.stdout.splitlines()[0] if done.stdout else ""
    return times, first


def pareto_in_process(cfg: ExperimentConfig) -> dict[str, float]:
    """What ``resnext-nas pareto`` does after its imports, timed here: open the study (journal replay), front."""
    t0 = time.perf_counter()
    study = load_study(cfg)
    t1 = time.perf_counter()
    rows = finished_rows(study, cfg.objectives)
    t2 = time.perf_counter()
    front_table(pareto_rows(rows, cfg.directions), cfg.objectives)
    outcome_counts(study)
    t3 = time.perf_counter()
    return {"open": t1 - t0, "rows": t2 - t1, "front": t3 - t2}


def import_time() -> float:
    """Wall time of a fresh interpreter importing what ``resnext-nas pareto`` imports, doing nothing else."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import search.cli, search.config, search.results, search.storage"],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - t0


def print_profile(stats: pstats.Stats, first: int, last: int) -> None:
    """The top of the profile: by own time, and by cumulative time within search/ and space/."""
    for sort, restrict, title in (("tottime", (20,), "own time, top 20"),
                                  ("cumulative", (r"(search|space)/", 30), "cumulative, search/ and space/, top 30")):
        out = io.StringIO()
        stats.stream = out
        stats.sort_stats(sort).print_stats(*restrict)
        text = out.getvalue()
        body = text[text.find("   ncalls"):] if "   ncalls" in text else text
        print(f"\nprofile of trials {first}..{last} ({title}):")
        print("\n".join(line for line in body.splitlines() if line.strip()))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"CI smoke: {QUICK_TRIALS} trials")
    parser.add_argument("--trials", type=int, default=None, help=f"networks to train ({TRIALS:,})")
    parser.add_argument("--sampler", choices=("random", "tpe", "nsga2"), default="random",
                        help="search.sampler (random: the bookkeeping alone; tpe measures TPE too)")
    parser.add_argument("--untuned", action="store_true",
                        help="leave the collector alone (no gc.freeze after each trial), as a library caller gets")
    parser.add_argument("--profile", action="store_true", help="cProfile the second half of the trials")
    parser.add_argument("--cli-repeats", type=int, default=None, help="runs of `resnext-nas pareto` (3; 1 --quick)")
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="put the stores and the experiment YAML in this new directory and keep them")
    args = parser.parse_args(argv)
    n = args.trials or (QUICK_TRIALS if args.quick else TRIALS)
    repeats = args.cli_repeats or (1 if args.quick else 3)
    set_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t_all = time.perf_counter()

    with ExitStack() as stack:
        if args.keep:
            tmp = Path(args.keep).resolve()
            tmp.mkdir(parents=True, exist_ok=False)
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-scale-")))
        exp = tmp / "scale.yaml"
        exp.write_text(yaml.safe_dump(scale_raw(tmp, n, args.sampler), sort_keys=False))
        cfg = load_experiment(exp)

        print("benchmark: per-trial bookkeeping of one real study as it grows, the trial's work faked")
        print(env_header(torch.device("cpu")))
        import mlflow
        import sqlalchemy

        print(f"code:        {code_version()}")
        missing = [name for names in PARTS.values() for name in names if resolve(name) is None]
        if missing:
            print(f"not in this code (not timed): {', '.join(missing)}")
        print(f"libraries:   optuna {optuna.__version__}, mlflow {mlflow.__version__}, sqlalchemy "
              f"{sqlalchemy.__version__}, numpy {np.__version__}")
        print(f"study:       {n:,} trained networks wanted from a {cfg.space.size():,}-network space; 3 objectives "
              f"(val_accuracy, params, latency_ms); no budget constraint")
        print(f"sampler:     {args.sampler}" + (" (TPE's own per-trial cost grows with the study: at 10,000 trials "
                                                "it would measure TPE, not this bookkeeping; --sampler tpe)"
                                                if args.sampler == "random" else
                                                " (its own per-trial cost is inside the numbers below)"))
        print("stores:      Optuna journal:TMP/optuna.journal, MLflow sqlite:///TMP/mlflow.db + TMP/artifacts, "
              "experiment TMP/scale.yaml" + (f" (TMP = {tmp}, kept)" if args.keep else " (a fresh temp dir)"))
        print("fakes:       build_and_train -> a 1x1 Linear + TrainResult (accuracy from log params x hash), "
              "build_model -> the same 1x1 Linear, measure_latency -> Latency (MACs x hash); instant")
        print(f"collector:   {'left alone (--untuned)' if args.untuned else 'survivors frozen after each trial'}"
              f" ({'library' if args.untuned else 'resnext-nas search'} setting)", flush=True)

        print("\nas the study runs, one row per window (columns: see the table after the study):", flush=True)
        live = live_progress(n, time.perf_counter())
        run = run_study(cfg, tuned=not args.untuned, profile=args.profile, progress=live)
        rows = per_trial(run)
        table = window_table(rows, len(run.clock.ends))
        if args.keep:  # every trial's numbers, for a closer look
            cols = list(rows[0])
            (tmp / "per_trial.csv").write_text("\n".join([",".join(cols)]
                                                         + [",".join(str(r[c]) for c in cols) for r in rows]) + "\n")
        counts = run.summary.counts
        setup = run.clock.ends[0] - run.clock.start
        per = run.wall_s / len(run.trials) * 1e3
        print(f"\nwall time:   {run.wall_s:.1f} s for {len(run.trials):,} trials ({per:.1f} ms per trial): "
              f"setup + trial 0 {setup:.1f} s, trials 1..{len(run.clock.ends) - 1} "
              f"{run.clock.ends[-1] - run.clock.ends[0]:.1f} s, end of study (final summary, artifacts, plots) "
              f"{run.finish_s:.1f} s")
        print(f"trials:      {counts[TRAINED]:,} trained, {counts[REUSED]:,} reused (free), {counts['over_budget']} "
              f"over budget, {counts['failed']} failed; {len(run.summary.front)} networks on the final front")
        print(f"time in the fakes: {sum(run.clock.fake.values()):.1f} s in all "
              f"({median([r['fake'] for r in rows]) * 1e3:.2f} ms median per trial)")
        print(check_pareto_tags(run.summary))
        print_windows(table)
        slope, own = growth(table), growth(table, STUDY_PARTS)
        first, last = table[0], table[-1]
        print(f"\ngrowth:      {slope * 1e6:+.2f} ms per 1,000 trials (Theil-Sen through the window medians); of which "
              f"the study's own parts ({', '.join(STUDY_PARTS)}) {own * 1e6:+.2f} ms")
        print(f"ratio       per-trial bookkeeping, trials {last['lo']}-{last['hi']} / {first['lo']}-{first['hi']}: "
              f"{last['cost'] / first['cost']:.3f}x")
        if run.profile is not None:
            print_profile(run.profile, n // 2, len(run.clock.ends) - 1)

        times, line = pareto_cli(exp, cfg, repeats)
        inner = pareto_in_process(cfg)
        imports = import_time()
        m = re.search(r"(\d+) trained", line)
        agree = m is not None and int(m.group(1)) == counts[TRAINED]
        print(f"\nresnext-nas pareto: {', '.join(f'{t:.2f} s' for t in times)} (median {median(times):.2f} s); "
              f"it printed \"{line[:120]}\"{'' if agree else ' (DISAGREES with the study counts)'}")
        print(f"  of which, in this process: opening the study (journal replay) {inner['open']:.2f} s, rows "
              f"{inner['rows']:.2f} s, front + counts {inner['front']:.2f} s; a fresh interpreter's imports "
              f"{imports:.2f} s")

    print()
    at = last["hi"]
    cost_ms = last["cost"] * 1e3
    label = f"per-trial bookkeeping at trial {at:,} <= {TARGET_TRIAL_MS:g} ms"
    print(target(label, cost_ms <= TARGET_TRIAL_MS, f"{cost_ms:.1f} ms median of trials {last['lo']}-{last['hi']}"))
    if at < TRIALS:
        guess = (last["cost"] + slope * (TRIALS - (last["lo"] + last["hi"]) / 2)) * 1e3
        print(target(f"per-trial bookkeeping at trial {TRIALS:,} <= {TARGET_TRIAL_MS:g} ms (extrapolated)",
                     guess <= TARGET_TRIAL_MS, f"~{guess:.1f} ms, linear from this run's {at:,} trials"))
    print(target(f"resnext-nas pareto on the {len(run.trials):,}-trial study < {TARGET_PARETO_S:g} s",
                 median(times) < TARGET_PARETO_S, f"median {median(times):.2f} s"))
    print(f"elapsed:     {time.perf_counter() - t_all:.1f} s")
    print(footer())
    return {"table": table, "wall_s": run.wall_s, "pareto_s": median(times), "slope": slope, "counts": counts}


if __name__ == "__main__":
    main()
