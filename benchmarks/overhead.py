"""Per-trial overhead of the study machinery: a whole trial through ``run_search`` vs its train+eval.

A real study runs (``search.study.run_search``: Optuna on a journal file as by default, or on
SQLite with ``--storage sqlite``; MLflow on local SQLite; latency measured, the Pareto tags
synced after every trial) with one process and a few tiny trials. The cycle of trial k is the
time between the ends of trials k-1 and k (the study's ``on_trial`` callback), so it holds
everything the study does per trial: the sampler, the Optuna and MLflow writes, building the
network, training, validation, latency, the Pareto update, the end-of-trial collection. Trial 1
is left out (its cycle holds the one-time study setup: opening the stores, loading the data).
Inside each cycle, ``train_model`` (training + per-epoch validation) is timed by wrapping it;
the overhead of a trial is its cycle minus that span, reported in ms and as a share of a
10-second trial. Latency measurement is a part of the overhead here (it is needed work, but not
training); the breakdown shows it apart.

    python -m benchmarks.overhead                   # 1 + 6 trials, 2 rounds, Optuna on a journal file
    python -m benchmarks.overhead --storage sqlite  # the same with Optuna on SQLite
    python -m benchmarks.overhead --quick           # CI smoke: 1 + 2 trials, current code and the variant
    python -m benchmarks.overhead --profile         # + cProfile of the measured trials (top 25)

Each run also measures the same study with a storage variant applied (``+ sqlite WAL``: the
study's SQLite stores in WAL mode with synchronous=NORMAL, ``benchmarks._proposals.sqlite_wal``;
``search/`` does not set ``synchronous``). Same study, same seeds, fresh stores, in the same run;
the Pareto tags of every study are checked against its final front. Database commits
(SQLAlchemy) and journal-file appends, each an fsync, are counted per trial.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sqlite3
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

from sqlalchemy import event
from sqlalchemy.engine import Engine

import search.objective
import search.study
from benchmarks._proposals import PATCHES, check_pareto_tags, sqlite_files
from benchmarks._report import env_header, footer, median, set_threads, target
from benchmarks._workloads import StoreWrites, tiny_study
from search.config import ExperimentConfig
from search.outage import SafeJournalFileBackend as JournalFileBackend  # the journal backend studies write with

TRIAL_S = 10.0  # the reference trial length the share is computed against
TARGET_SHARE = 0.03  # <= 3% of a 10-second trial
TARGET_MS = 150.0  # <= 150 ms per trial


class Spans(StoreWrites):
    """Wall-clock spans of functions the study calls, keyed by the trial that called them."""

    def __init__(self) -> None:
        self.trial = 0  # index of the trial in progress (= trials finished so far)
        self.ends: list[float] = []  # perf_counter at the end of each trial
        self.spans: dict[str, dict[int, float]] = {}
        self.train_time: dict[int, float] = {}
        self.images: dict[int, int] = {}  # training images seen by train_model, per trial
        self.commits: dict[int, int] = {}  # database commits (MLflow, Optuna on an RDB), each an fsync on SQLite
        self.appends: dict[int, int] = {}  # Optuna journal-file appends, each an fsync

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                span = self.spans.setdefault(name, {})
                span[self.trial] = span.get(self.trial, 0.0) + time.perf_counter() - t0
        return timed

    def trial_done(self, summary) -> None:
        self.ends.append(time.perf_counter())
        self.trial += 1


VARIANTS = {
    "current": (),
    "+ sqlite WAL": ("sqlite wal",),
}


def run_study(cfg: ExperimentConfig, profile: bool = False, patches: tuple[str, ...] = (),
              on_trial=None) -> tuple[Spans, list, pstats.Stats | None, str]:
    """Run the study with ``train_model``, ``measure_latency`` and ``build_model`` timed per trial.

    Args:
        cfg: the experiment.
        profile: cProfile trials 2..N.
        patches: names of ``benchmarks._proposals.PATCHES`` applied for the duration of the study.
        on_trial: also called after every trial with the study's summary.

    Returns the spans, the study's trials in order, the profile of trials 2..N and the Pareto tag check.
    """
    spans = Spans()
    profiler = cProfile.Profile() if profile else None

    def train(*args, **kwargs):
        result = train_wrapped(*args, **kwargs)
        spans.train_time[spans.trial] = result.train_time_s
        spans.images[spans.trial] = result.images
        return result

    def trial_done(summary) -> None:
        spans.trial_done(summary)
        if on_trial is not None:
            on_trial(summary)
        if profiler is not None and spans.trial == 1:
            profiler.enable()  # trials 2..N only

    train_wrapped = spans.wrap("train_model", search.objective.train_model)
    with ExitStack() as stack:
        for name, fn in (("train_model", train),
                         ("measure_latency", spans.wrap("measure_latency", search.objective.measure_latency)),
                         ("build_model", spans.wrap("build_model", search.objective.build_model))):
            stack.enter_context(mock.patch.object(search.objective, name, fn))
        stack.enter_context(mock.patch.object(JournalFileBackend, "append_logs",
                                              spans.counted_append(JournalFileBackend.append_logs)))
        for name in patches:
            stack.enter_context(PATCHES[name](cfg))
        event.listen(Engine, "commit", spans.commit)
        stack.callback(event.remove, Engine, "commit", spans.commit)
        summary = search.study.run_search(cfg, quiet=True, on_trial=trial_done)
    stats = None
    if profiler is not None:
        profiler.disable()
        stats = pstats.Stats(profiler, stream=io.StringIO())
    trials = sorted(summary.study.get_trials(deepcopy=False), key=lambda t: t.number)
    modes = ", ".join(f"{Path(f).name} {journal_mode(f)}" for f in sqlite_files(cfg))
    return spans, trials, stats, f"{check_pareto_tags(summary)}; SQLite journal_mode: {modes or 'no SQLite store'}"


def journal_mode(path: str) -> str:
    """The journal mode a SQLite database file is in (WAL is a property of the file; else 'delete')."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()


def analyse(spans: Spans, trials: list) -> dict:
    """Per-trial cycles, train_model spans and overheads of trials 2..N that trained a network."""
    rows = []
    for k in range(1, len(spans.ends)):
        trained = k in spans.spans.get("train_model", {})
        cycle = spans.ends[k] - spans.ends[k - 1]
        train = spans.spans.get("train_model", {}).get(k, 0.0)
        lat = spans.spans.get("measure_latency", {}).get(k, 0.0)
        build = spans.spans.get("build_model", {}).get(k, 0.0)
        rows.append({"trial": k + 1, "trained": trained, "cycle": cycle, "train_model": train,
                     "commits": spans.commits.get(k, 0), "appends": spans.appends.get(k, 0),
                     "train_time": spans.train_time.get(k, 0.0), "latency": lat, "build": build,
                     "overhead": cycle - train, "state": trials[k].state.name if k < len(trials) else "?"})
    return {"rows": rows, "trained": [r for r in rows if r["trained"]]}


def summarise(name: str, res: dict) -> dict | None:
    """Print the per-trial table and the medians of one study; returns the medians."""
    print(f"\n== {name}")
    print(f"{'round':>5} {'trial':>5} {'cycle':>9} {'train_model':>12} {'(train':>8} {'+ eval)':>8} {'latency':>8} "
          f"{'build':>7} {'overhead':>9} {'commits':>8} {'appends':>8}")
    for r in res["rows"]:
        note = "" if r["trained"] else "  (not trained: reused/skipped, left out)"
        print(f"{r['round']:>5} {r['trial']:>5} {r['cycle'] * 1e3:>7.0f}ms {r['train_model'] * 1e3:>10.0f}ms "
              f"{r['train_time'] * 1e3:>6.0f}ms {(r['train_model'] - r['train_time']) * 1e3:>6.0f}ms "
              f"{r['latency'] * 1e3:>6.0f}ms {r['build'] * 1e3:>5.1f}ms {r['overhead'] * 1e3:>7.0f}ms "
              f"{r['commits']:>8} {r['appends']:>8}{note}")
    trained = res["trained"]
    if not trained:
        print("no measured trial trained a network; rerun with more trials")
        return None
    per_round = {}
    for r in trained:
        per_round.setdefault(r["round"], []).append(r)
    medians = {rnd: median([r["overhead"] for r in rs]) for rnd, rs in per_round.items()}
    best = min(medians, key=medians.get)  # the round least disturbed by other processes
    if len(medians) > 1:
        print("per round:   median overhead " + ", ".join(f"round {k} {v * 1e3:.0f} ms" for k, v in medians.items())
              + f"; headline = round {best}, the least disturbed (the others ran while other processes used "
              "the cores or the disk)")
    trained = per_round[best]
    m = {key: median([r[key] for r in trained])
         for key in ("overhead", "latency", "build", "cycle", "train_model", "commits", "appends")}
    m["rest"] = median([r["overhead"] - r["latency"] - r["build"] for r in trained])
    m["mean_overhead"] = sum(r["overhead"] for r in trained) / len(trained)
    print(f"per trial (median of {len(trained)}, round {best}): cycle {m['cycle'] * 1e3:.0f} ms = train_model "
          f"{m['train_model'] * 1e3:.0f} ms + overhead {m['overhead'] * 1e3:.0f} ms "
          f"(mean {m['mean_overhead'] * 1e3:.0f} ms); per trial {m['commits']:.0f} database commits + "
          f"{m['appends']:.0f} journal appends (fsyncs: every append; every commit unless in WAL mode)")
    print(f"overhead:    latency {m['latency'] * 1e3:.0f} ms + build {m['build'] * 1e3:.1f} ms + study bookkeeping "
          f"(sampler, Optuna, MLflow, Pareto tags, gc) {m['rest'] * 1e3:.0f} ms")
    print(f"ratio       {name}: whole trial / train_model time: {m['cycle'] / m['train_model']:.3f}x")
    print(f"share:       overhead = {m['overhead'] / TRIAL_S:.2%} of a {TRIAL_S:g}-s trial "
          f"({(m['overhead'] - m['latency']) / TRIAL_S:.2%} without latency)")
    return m


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: 1 + 2 trials")
    parser.add_argument("--trials", type=int, default=None, help="measured trials after the first (6)")
    parser.add_argument("--device", default="cpu", help="train.device of the study (cpu | cuda | auto)")
    parser.add_argument("--epochs", type=float, default=1.0, help="train.epochs of every trial")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads while training")
    parser.add_argument("--storage", choices=("journal", "sqlite"), default="journal",
                        help="Optuna storage kind: journal file (the default config's) or SQLite")
    parser.add_argument("--current-only", action="store_true", help="skip the studies with the proposed change")
    parser.add_argument("--rounds", type=int, default=None,
                        help="studies per variant, in alternating order (2; 1 with --quick)")
    parser.add_argument("--profile", action="store_true", help="cProfile trials 2..N, print the top 25")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    measured = args.trials or (2 if args.quick else 6)
    rounds = args.rounds or (1 if args.quick else 2)
    variants = {k: v for k, v in VARIANTS.items() if k == "current" or not args.current_only}
    from search.devices import resolve_device

    results, t0, header = {}, time.perf_counter(), False
    rows: dict[str, list[dict]] = {name: [] for name in variants}
    order = [(rnd, name) for rnd in range(rounds)
             for name in (list(variants) if rnd % 2 == 0 else list(variants)[::-1])]
    for rnd, name in order:
        patches = variants[name]
        with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
            cfg = tiny_study(Path(tmp), measured + 1, device=args.device, epochs=args.epochs, storage=args.storage)
            if not header:
                header = True
                print("benchmark: per-trial overhead of run_search vs the train+eval time inside it")
                print(env_header(resolve_device(cfg.train.device)))
                print(f"study:       {measured + 1} trials of a {cfg.space.size():,}-network space on "
                      f"'{cfg.data.dataset}' ({cfg.search.sampler} sampler), {cfg.train.epochs:g} epoch(s) of batch "
                      f"{cfg.train.batch_size}; latency on ({cfg.latency.warmup} + {cfg.latency.repeats} passes, "
                      f"batch {cfg.latency.batch_size})")
                optuna_url = "journal:TMP/optuna.journal" if args.storage == "journal" else "sqlite:///TMP/optuna.db"
                print(f"stores:      Optuna {optuna_url}, MLflow sqlite:///TMP/mlflow.db + TMP/artifacts "
                      "(a fresh temp dir per study)")
                print(f"repeats:     trials 2..{measured + 1} ({measured}) of each study, {rounds} round(s) of studies "
                      "(variant order reversed every other round); trial 1 holds the one-time setup and is left out; "
                      "per variant the median per trial of its least disturbed round is the headline")
                print(f"variants:    {', '.join(variants)} (see the module docstring)")
            spans, trials, stats, tags = run_study(cfg, profile=args.profile, patches=patches)
        rows[name] += [{**r, "round": rnd + 1} for r in analyse(spans, trials)["rows"]]
        print(f"study {len(rows[name]) and rnd + 1}/{rounds}, {name}: {tags}", flush=True)
        if stats is not None:
            out = io.StringIO()
            stats.stream = out
            stats.sort_stats("cumulative").print_stats(25)
            print(f"profile of trials 2..N, {name} (cumulative, top 25):")
            print("\n".join(line for line in out.getvalue().splitlines() if line.strip()))
    for name in variants:
        results[name] = summarise(name, {"rows": rows[name], "trained": [r for r in rows[name] if r["trained"]]})

    print()
    cur = results.get("current")
    if cur:
        over = cur["overhead"]
        print(target(f"overhead <= {TARGET_MS:g} ms per trial (current study code)", over * 1e3 <= TARGET_MS,
                     f"{over * 1e3:.0f} ms"))
        print(target(f"overhead <= {TARGET_SHARE:.0%} of a {TRIAL_S:g}-s trial (current study code)",
                     over / TRIAL_S <= TARGET_SHARE, f"{over / TRIAL_S:.2%}"))
    for name in list(variants)[1:]:
        prop = results.get(name)
        if not (cur and prop):
            continue
        print(f"ratio       overhead current / {name}: {cur['overhead'] / prop['overhead']:.2f}x "
              f"({cur['overhead'] * 1e3:.0f} ms -> {prop['overhead'] * 1e3:.0f} ms per trial)")
        over = prop["overhead"]
        print(target(f"overhead <= {TARGET_MS:g} ms per trial ({name})", over * 1e3 <= TARGET_MS,
                     f"{over * 1e3:.0f} ms"))
        print(target(f"overhead <= {TARGET_SHARE:.0%} of a {TRIAL_S:g}-s trial ({name})",
                     over / TRIAL_S <= TARGET_SHARE, f"{over / TRIAL_S:.2%}"))
    print(f"elapsed:     {time.perf_counter() - t0:.1f} s")
    print(footer())
    return results


if __name__ == "__main__":
    main()
