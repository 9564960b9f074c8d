"""Report: how long `resnext-nas report` takes on a 1,000-trial study (target: 10 s).

A synthetic study is written into a temporary journal file (the default storage's kind) with
``optuna.trial.create_trial`` + ``study.add_trials``: the scale benchmark's space (406,875
networks, 2-4 stages), the objectives accuracy / params / latency, a parameter budget that about
a quarter of the proposals exceed, and every user attribute a real trial carries (outcome, spec,
spec name and hash, params, MACs, metrics, learning curve, seed, threads, worker). Accuracy
grows with the log parameter count times a factor drawn from the network's hash; latency grows
with MACs; training time with MACs times epochs. About 5% of the proposals repeat a network
(reused), 1% run out of memory and 1% fail (FAIL, with a failure kind and reason). Writing the
study is setup, not timed.

Timed: the real command, ``resnext-nas report EXP.yaml --out ...`` in a fresh process (imports,
journal replay, EDFs, bootstrap, PED-ANOVA, the page with plotly.js embedded), repeated; and
the same steps in this process, split into open / collect / page, so a regression shows where.
The baseline in the same run is ``resnext-nas pareto`` on the same study: opening the study and
computing the front, which the report must do too.

    python -m benchmarks.report              # 1,000 trials, 3 repeats
    python -m benchmarks.report --quick      # CI smoke: 150 trials, 1 repeat
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from benchmarks._report import env_header, fmt_seconds, footer, median, set_threads, target
from search.config import ExperimentConfig, experiment_from_dict
from search.results import OUT_OF_MEMORY, OVER_BUDGET, REUSED, TRAINED, hv_reference
from search.storage import create_study
from space import complexity

TRIALS, QUICK_TRIALS = 1000, 150
TARGET_S = 10.0  # `resnext-nas report` on a 1,000-trial study, process start included
EPOCHS = 5  # epochs of each synthetic learning curve
LARGEST_LATENCY_MS = 2.0
SPACE = {"num_stages": [2, 3, 4], "stem_ch": [8, 12, 16, 24, 32, 48, 64], "bottleneck_ch": [8, 12, 16, 24, 32],
         "channel_mult": 2, "cardinality": [1, 2, 4, 8, 16], "base_width": [4, 8, 16], "depth": {"low": 1, "high": 5}}


def report_raw(tmp: Path, max_params: float | None = 2.0e6, name: str = "report_bench") -> dict:
    """The experiment (as its YAML mapping) of the synthetic study, its stores under ``tmp``."""
    return {
        "data": {"dataset": "synthetic", "val_fraction": 0.25},
        "space": SPACE,
        "objectives": ["val_accuracy", "params", "latency_ms"],
        "constraints": {"max_params": max_params},
        "search": {"n_trials": 10, "seed": 0, "sampler": "random", "storage": f"journal:{tmp}/optuna.journal",
                   "study_name": name},
        "train": {"epochs": EPOCHS, "batch_size": 32, "device": "cpu"},
        "latency": {"repeats": 20, "warmup": 5, "threads": 1},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "artifacts": str(tmp / "artifacts")},
    }


def unit(spec_hash: str, salt: str) -> float:
    """A deterministic number in [0, 1] drawn from a network's hash."""
    return int(hashlib.sha256(f"{salt}:{spec_hash}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


class Draw:
    """A stand-in for an Optuna trial that draws each parameter uniformly and records its distribution."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.params, self.distributions = rng, {}, {}

    def suggest_categorical(self, name, choices):
        self.distributions[name] = CategoricalDistribution(list(choices))
        self.params[name] = self.rng.choice(list(choices))
        return self.params[name]

    def suggest_int(self, name, low, high, step=1):
        self.distributions[name] = IntDistribution(low, high, step=step)
        self.params[name] = self.rng.randrange(low, high + 1, step)
        return self.params[name]


def synthetic_trials(cfg: ExperimentConfig, n: int, seed: int = 0) -> list:
    """``n`` frozen trials of the space with realistic user attributes and outcomes (see the module doc)."""
    rng = random.Random(seed)
    lo, hi = cfg.space.complexity_range()
    log_lo, log_span = math.log(lo.params), math.log(hi.params / lo.params)
    max_macs = hi.macs
    bound = cfg.constraints.max_params
    trained: list[tuple[int, dict, tuple]] = []  # (trial number, create_trial arguments, values)
    trials = []
    for number in range(n):
        roll = rng.random()
        if roll < 0.05 and trained:  # a network the study already trained, drawn again: its result is reused
            twin, kwargs, values = rng.choice(trained)
            attrs = {k: v for k, v in kwargs["user_attrs"].items() if k not in ("curve", "epochs_done")}
            trials.append(create_trial(values=values, params=kwargs["params"], constraints=kwargs["constraints"],
                                       distributions=kwargs["distributions"],
                                       user_attrs={**attrs, "outcome": REUSED, "reused_from": twin}))
            continue
        draw = Draw(rng)
        spec = cfg.space.suggest(draw)
        cx = complexity(spec)
        attrs = {"spec": spec.to_dict(), "spec_name": spec.name, "spec_hash": spec.hash, "params": cx.params,
                 "macs": cx.macs, "worker": {"host": "bench-host", "pid": 1000, "start": 1}}
        constraints = {"max_params": cx.params - bound} if bound is not None else {}
        placeholder = (0.0, float(cx.params), math.inf)
        common = {"params": draw.params, "distributions": draw.distributions}
        if bound is not None and cx.params > bound:
            trials.append(create_trial(values=placeholder, user_attrs={**attrs, "outcome": OVER_BUDGET},
                                       constraints=constraints, **common))
            continue
        if roll > 0.99:
            trials.append(create_trial(state=TrialState.FAIL, user_attrs={
                **attrs, "failure": "nan_loss", "fail_reason": "FloatingPointError: the training loss became NaN "
                "at epoch 2"}, **common))
            continue
        if roll > 0.98:
            trials.append(create_trial(values=placeholder, user_attrs={
                **attrs, "outcome": OUT_OF_MEMORY, "device": "cpu:bench", "fail_reason": "OutOfMemoryError: "
                "CUDA out of memory. Tried to allocate 2.00 GiB"}, constraints={**constraints, "out_of_memory": 1.0},
                **common))
            continue
        x = (math.log(cx.params) - log_lo) / log_span
        acc = 0.25 + 0.7 * math.sqrt(max(x, 0.0)) * (0.75 + 0.25 * unit(spec.hash, "accuracy"))
        lat = 0.02 + LARGEST_LATENCY_MS * cx.macs / max_macs * (0.6 + 0.4 * unit(spec.hash, "latency"))
        per_epoch = 0.5 + 30.0 * cx.macs / max_macs
        curve = [acc * (1 - 0.5 ** (e + 1)) / (1 - 0.5 ** EPOCHS) for e in range(EPOCHS)]
        metrics = {"params": cx.params, "macs": cx.macs, "val_accuracy": acc, "train_time_s": per_epoch * EPOCHS,
                   "train_loss": 1.5 - acc, "epochs": EPOCHS, "latency_ms": lat, "latency_p10_ms": 0.95 * lat,
                   "latency_p90_ms": 1.05 * lat, "latency_cv": 0.02}
        kwargs = {**common, "constraints": constraints, "user_attrs": {
            **attrs, "seed": 1000 + number, "threads": 1, "metrics": metrics, "outcome": TRAINED,
            "epochs_done": EPOCHS, "curve": {"val_accuracy": curve, "train_loss": [1.5 - c for c in curve],
                                             "elapsed_s": [per_epoch * (e + 1) for e in range(EPOCHS)]}}}
        values = (acc, float(cx.params), lat)
        trained.append((number, kwargs, values))
        trials.append(create_trial(values=values, **kwargs))
    return trials


def synthetic_study(tmp: Path, n: int, *, seed: int = 0, max_params: float | None = 2.0e6,
                    name: str = "report_bench") -> tuple[ExperimentConfig, Path]:
    """Write a synthetic ``n``-trial study under ``tmp``; returns its experiment and the experiment's YAML file."""
    tmp.mkdir(parents=True, exist_ok=True)
    raw = report_raw(tmp, max_params, name)
    exp = tmp / f"{name}.yaml"
    exp.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = experiment_from_dict(raw, name=name)
    study = create_study(cfg, None, {"hv_reference": hv_reference(cfg, LARGEST_LATENCY_MS)})
    study.add_trials(synthetic_trials(cfg, n, seed))
    return cfg, exp


def cli(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time and result of ``resnext-nas ARGS`` in a fresh process."""
    exe = shutil.which("resnext-nas") or str(Path(sys.executable).with_name("resnext-nas"))
    cmd = [exe] if Path(exe).exists() else [sys.executable, "-m", "search.cli"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd + list(args), capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - t0, done


def in_process(cfg: ExperimentConfig, exp: Path, out: Path) -> dict[str, float]:
    """The report's steps in this process: open the study, collect, each analysis (``search.analysis``), the page."""
    from search.analysis import collect, design_space, hv_series, importance
    from search.report import study_report
    from search.storage import load_study

    t0 = time.perf_counter()
    study = load_study(cfg)
    t1 = time.perf_counter()
    data = collect(study, cfg, str(exp))
    t2 = time.perf_counter()
    design_space(data.trained)
    t3 = time.perf_counter()
    hv_series(data)
    t4 = time.perf_counter()
    importance(data)
    t5 = time.perf_counter()
    text = study_report(data)
    out.write_text(text)
    t6 = time.perf_counter()
    return {"open": t1 - t0, "collect": t2 - t1, "design space": t3 - t2, "hypervolume": t4 - t3,
            "importance": t5 - t4, "whole page": t6 - t5}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"CI smoke: {QUICK_TRIALS} trials, 1 repeat")
    parser.add_argument("--trials", type=int, default=None, help=f"trials in the synthetic study ({TRIALS:,})")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each command (3; 1 --quick)")
    args = parser.parse_args(argv)
    n = args.trials or (QUICK_TRIALS if args.quick else TRIALS)
    repeats = args.repeats or (1 if args.quick else 3)
    set_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(env_header("cpu"))
    tmp = Path(tempfile.mkdtemp(prefix="report_bench_"))
    try:
        t0 = time.perf_counter()
        cfg, exp = synthetic_study(tmp, n)
        setup = time.perf_counter() - t0
        out = tmp / "report.html"
        print(f"study:       {n:,} synthetic trials written in {setup:.1f} s (journal {tmp / 'optuna.journal'}, "
              f"{(tmp / 'optuna.journal').stat().st_size / 1e6:.1f} MB)")
        store = ["--storage", cfg.storage_url]
        report_times, pareto_times = [], []
        for _ in range(repeats):  # interleaved: background load spreads over both
            s, done = cli("pareto", str(exp), *store)
            if done.returncode != 0:
                raise RuntimeError(f"resnext-nas pareto failed: {done.stderr[-2000:]}")
            pareto_times.append(s)
            s, done = cli("report", str(exp), *store, "--out", str(out))
            if done.returncode != 0:
                raise RuntimeError(f"resnext-nas report failed: {done.stderr[-2000:]}")
            report_times.append(s)
        size = out.stat().st_size
        parts = in_process(cfg, exp, tmp / "report_in_process.html")
        print(f"\nrepeats {repeats}, median wall time of the command in a fresh process (imports included):")
        print(f"  resnext-nas pareto  {fmt_seconds(median(pareto_times)):>10}   (baseline: open the study, the front)")
        print(f"  resnext-nas report  {fmt_seconds(median(report_times)):>10}   ({size / 1e6:.1f} MB of HTML, "
              f"plotly.js embedded)")
        print("in this process (imports done): " + ", ".join(f"{k} {fmt_seconds(v)}" for k, v in parts.items()))
        ratio = median(report_times) / median(pareto_times)
        print(f"ratio       report / pareto: {ratio:,.2f}x")
        m = median(report_times)
        if n >= TRIALS:
            print(target(f"report on {n:,} trials <= {TARGET_S:.0f} s", m <= TARGET_S, f"{m:.2f} s"))
        else:
            scaled = TARGET_S * n / TRIALS
            print(target(f"report on {n:,} trials (quick; the target is for {TRIALS:,})", m <= TARGET_S,
                         f"{m:.2f} s; pro rata {scaled:.1f} s"))
        print(footer())
        return {"report_s": report_times, "pareto_s": pareto_times, "parts": parts, "bytes": size}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
