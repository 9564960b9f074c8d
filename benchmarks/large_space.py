"""Search quality on a space too large to tabulate: real studies, scored against the union front.

The space: ``experiments/fashionmnist.yaml``'s recipe (Fashion-MNIST at 16 px, 5,000 training
images, 3 epochs) over a space of 2-4 stages, stems of 8-32 channels, 4-16 bottleneck channels,
cardinality 1-8, base width 2-8 and 1-3 blocks per stage: 21,456 networks, 13,015 of them within
the 100k-parameter budget. Objectives: validation accuracy, params and MACs (MACs stand in for
latency, so that a study's score depends on the accuracy it found and not on the load of the
machine while it timed its networks).

Each strategy runs ``--seeds`` real studies (``search.study.run_search``, one worker, one torch
thread, Optuna on a journal file under ``--out``, MLflow off) with the same ``search.budget_epochs``;
a stopped (pruned) trial counts the epochs it trained. The top ``--top`` networks of each final
front (closest to the knee) are then retrained with ``--confirm-seeds`` seeds in all
(``search.confirm.confirm_front``). Every study resumes where it stopped: rerun the command.

Scoring: every network any study trained forms the union; its non-dominated set is the best
front known. A study's score after ``e`` epochs is the hypervolume of its front from the trials
finished within ``e`` epochs, as a share of the union front's (objectives min-max normalised over
the union, reference 1.1). Each strategy is compared with random search seed by seed (paired
difference, bootstrap 95% interval; * = the interval excludes 0). The score is given twice: with
each network's single training as the study saw it, and with every confirmed network at the mean
of its seeds (so seed luck on the front's top is not what gets scored).

    python -m benchmarks.large_space --strategies random,costaware --seeds 5 --jobs 2
    python -m benchmarks.large_space --score-only          # score what --out holds
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import optuna

from benchmarks._report import env_header, footer, set_threads, target
from benchmarks.search_quality import ROOT, diff_table
from search.pareto import hypervolume, non_dominated, to_losses
from search.results import epochs_spent

EXPERIMENT = ROOT / "experiments" / "fashionmnist.yaml"
SPACE = ("space.num_stages=[2,3,4]", "space.stem_ch=[8,16,24,32]", "space.bottleneck_ch=[4,8,12,16]",
         "space.cardinality=[1,2,4,8]", "space.base_width=[2,4,8]", "space.depth.high=3",
         "constraints.max_params=100000", "objectives=[val_accuracy,params,macs]", "latency.enabled=false",
         "tracking.enabled=false", "train.threads=1", "data.val_fraction=0.05")
STRATEGIES = {  # name -> (sampler, pruner)
    "random": ("random", "none"),
    "costaware": ("costaware", "none"),
    "nsga2": ("nsga2", "none"),
    "tpe": ("tpe", "none"),
    "random+probes": ("random", "probes"),
    "costaware+probes": ("costaware", "probes"),
    "random+asha": ("random", "asha"),
}


def experiment(strategy: str, seed: int, out: Path, budget: float, extra=()):
    """The experiment of one study: the space above, ``strategy``'s sampler and pruner, its own journal."""
    from search.config import load_experiment

    sampler, pruner = STRATEGIES[strategy]
    name = f"large-{strategy}-{seed}"
    base = load_experiment(EXPERIMENT, [*SPACE, *extra])
    # n_trials sizes the samplers (NSGA-II's population, the start-up trials) as a study of this budget;
    # the budget binds first for a pruned study, whose stopped trials n_trials does not count
    trials = math.ceil(budget / base.train.epochs)
    return load_experiment(EXPERIMENT, [*SPACE, *extra, f"search.sampler={sampler}", f"search.pruner={pruner}",
                                        f"search.seed={seed}", f"search.study_name={name}",
                                        f"search.storage=journal:{out / name}.journal", f"search.n_trials={trials}",
                                        f"search.budget_epochs={budget:g}"])


def _run(job) -> str:
    """One study to its budget, then its top confirmed (in a process of its own, one thread)."""
    strategy, seed, out, budget, top, confirm_seeds, extra = job
    from search.confirm import confirm_front
    from search.study import run_search

    set_threads(1)
    cfg = experiment(strategy, seed, out, budget, extra)
    t0 = time.perf_counter()
    summary = run_search(cfg, quiet=True, workers=1)
    confirm_front(cfg, seeds=confirm_seeds, top=top, quiet=True)
    return (f"{cfg.study_name}: {summary.counts['trained']} trained, {time.perf_counter() - t0:.0f} s "
            f"(with the confirmation)")


def trained(study: optuna.Study) -> list[dict]:
    """The study's finished trials in order: epochs spent by then, and each trained network's values."""
    rows, spent = [], 0.0
    confirmed = study.user_attrs.get("confirmed") or {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if not t.state.is_finished():
            continue
        spent += epochs_spent(t)
        row = {"epochs": spent, "number": t.number}
        if t.user_attrs.get("outcome") == "trained":
            m = t.user_attrs["metrics"]
            row.update(hash=t.user_attrs["network"]["spec_hash"],
                       acc=m["val_accuracy"], params=m["params"], macs=m["macs"],
                       confirmed=(confirmed.get(str(t.number)) or {}).get("mean"))
        rows.append(row)
    return rows


def score(studies: dict[str, list[list[dict]]], budgets: list[float], use_confirmed: bool, rng) -> dict:
    """Per strategy and budget, the share of the union front's hypervolume (``diff_table``'s layout)."""
    directions = ["maximize", "minimize", "minimize"]

    def losses(r: dict) -> list[float]:
        acc = r["confirmed"] if use_confirmed and r["confirmed"] is not None else r["acc"]
        return list(to_losses((acc, r["params"], r["macs"]), directions))

    every = [losses(r) for runs in studies.values() for rows in runs for r in rows if "acc" in r]
    pts = np.asarray(every)
    lo, hi = pts.min(axis=0), pts.max(axis=0)

    def hv(points: list[list[float]]) -> float:
        if not points:
            return 0.0
        norm = (np.asarray(points) - lo) / np.where(hi > lo, hi - lo, 1)
        return hypervolume(norm[non_dominated(norm.tolist())].tolist(), [1.1] * 3)

    union = hv(every)
    histories = {}
    for name, runs in studies.items():
        histories[name] = []
        for rows in runs:
            found, share, history = [], 0.0, [(0.0, 0.0, 0)]
            for r in rows:
                if "acc" in r:  # the front changes only with a trained network: stopped or skipped trials add epochs
                    found.append(losses(r))
                    share = hv(found) / union
                history.append((r["epochs"], share, len(found)))
            histories[name].append(history)
    return diff_table(histories, budgets, rng, "strategy", max(16, *(len(s) + 1 for s in histories)))


def load(out: Path, strategies: list[str], seeds: int) -> dict[str, list[list[dict]]]:
    """Every finished study under ``out``: strategy -> one row list per seed (seeds with every strategy done)."""
    from search.storage import open_storage

    studies: dict[str, list[list[dict]]] = {s: [] for s in strategies}
    for seed in range(seeds):
        runs = {}
        for s in strategies:
            path = out / f"large-{s}-{seed}.journal"
            if not path.exists():
                break
            study = optuna.load_study(study_name=f"large-{s}-{seed}", storage=open_storage(f"journal:{path}"))
            runs[s] = trained(study)
        if len(runs) == len(strategies):
            for s, rows in runs.items():
                studies[s].append(rows)
    return studies


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="random,costaware", help=f"from {', '.join(STRATEGIES)}")
    parser.add_argument("--seeds", type=int, default=5, help="studies per strategy (study seeds 0..n-1)")
    parser.add_argument("--budget", type=float, default=90, help="search.budget_epochs of every study")
    parser.add_argument("--top", type=int, default=3, help="front networks per study confirmed (closest to the knee)")
    parser.add_argument("--confirm-seeds", type=int, default=3, help="seeds per confirmed network, its own included")
    parser.add_argument("--jobs", type=int, default=2, help="studies at once (one process, one thread each)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "data" / "large-space")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="further overrides of every study (a cheaper recipe; a new --out for it)")
    parser.add_argument("--score-only", action="store_true", help="score the studies already under --out")
    args = parser.parse_args(argv)
    strategies = args.strategies.split(",")
    if "random" not in strategies:
        parser.error("--strategies must include random (the baseline of every difference)")
    for s in strategies:
        if s not in STRATEGIES:
            parser.error(f"unknown strategy '{s}'; use some of {', '.join(STRATEGIES)}")
    print("benchmark: search quality on a space too large to tabulate (real studies, union front)")
    print(env_header("cpu"))
    cfg = experiment("random", 0, args.out, args.budget, args.set)
    print(f"space:       {cfg.space.size():,} networks ({EXPERIMENT.name} + {' '.join(SPACE[:7])} "
          f"{' '.join(args.set)})")
    print(f"studies:     {', '.join(strategies)} x {args.seeds} seeds, budget_epochs {args.budget:g} "
          f"({args.budget / cfg.train.epochs:g} full trainings) each; top {args.top} confirmed with "
          f"{args.confirm_seeds} seeds; {args.jobs} at once")
    if not args.score_only:
        args.out.mkdir(parents=True, exist_ok=True)
        jobs = [(s, seed, args.out, args.budget, args.top, args.confirm_seeds, tuple(args.set))
                for seed in range(args.seeds) for s in strategies]
        t0 = time.perf_counter()
        with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
            for line in pool.imap_unordered(_run, jobs):
                print(f"  {line} ({(time.perf_counter() - t0) / 60:.1f} min in)", flush=True)
    studies = load(args.out, strategies, args.seeds)
    n = len(studies["random"])
    nets = {r["hash"] for runs in studies.values() for rows in runs for r in rows if "acc" in r}
    print(f"union:       {len(nets)} distinct networks trained by {n * len(strategies)} studies ({n} seeds each)")
    budgets = [b for b in (args.budget / 3, args.budget * 2 / 3, args.budget) if b > 0]
    rng = np.random.default_rng(0)
    result = {}
    for use_confirmed in (False, True):
        print("\nshare of the union front's hypervolume by epochs spent, difference to random [95% interval]"
              + (" -- confirmed networks at their seed mean" if use_confirmed else " -- single trainings"))
        result[use_confirmed] = score(studies, budgets, use_confirmed, rng)
    if "costaware" in strategies and n:
        m, d, lo, hi = result[True][("costaware", args.budget)]
        print(target(f"costaware above random at {args.budget:g} epochs (confirmed, {n} seeds)", lo > 0,
                     f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"))
    print(footer())
    return result


if __name__ == "__main__":
    main()
