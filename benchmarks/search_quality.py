"""Search quality: how much of the true Pareto front each strategy finds for a given compute.

A small space is tabulated once (``build``): every network within the experiment's budget is
trained with one fixed seed, its validation accuracy recorded after every epoch, its latency
measured; the table (``benchmarks/data/<name>-table.json``) keeps the recipe that made it. The
strategies are then replayed against the table at equal compute (training epochs): the study's
own samplers (``search.storage.make_sampler``), its own search space (``SearchSpace.suggest``),
its budget rules (over-budget and repeated proposals are free; 200 free proposals in a row end a
run), and for the pruner the study's own rules (``search.asha``): a trial reaching a rung writes its
accuracy there and goes on only in the top ``1/eta``. A replay is deterministic given its seed.

For every strategy, ``--seeds`` seeds: the hypervolume of the feasible front found so far, as a
ratio to the table's true front (accuracy and the cost objectives min-max normalised over the
table, reference 1.1), at several budgets, with bootstrap 95% intervals of the mean; the
difference to random search with its interval (significant when the interval excludes 0); the
epochs needed to reach 90% and 95% of the true hypervolume. ``noise`` measures the accuracy
noise between seeds against the spread of the space, which says whether the table can rank.

    python -m benchmarks.search_quality                 # replay (about a minute or two per strategy set)
    python -m benchmarks.search_quality --quick         # CI smoke: 3 seeds, 2 strategies, small budgets
    python -m benchmarks.search_quality build           # re-make the table (~10 min on one core); resumes a partial one
    python -m benchmarks.search_quality build --experiment experiments/fashionmnist.yaml \
        --set data.val_fraction=0.05 --table benchmarks/data/fashionmnist-table.json --jobs 2   # hours on 2 cores
    python -m benchmarks.search_quality noise           # seed noise vs the space's spread
    python -m benchmarks.search_quality real            # run_search itself, with and without the pruner
    python -m benchmarks.search_quality tune            # TPE's settings against random search
    python -m benchmarks.search_quality probes          # complete short runs as the rung, against random
    python -m benchmarks.search_quality probes --table benchmarks/data/fashionmnist-table.json \
        --probe-tables benchmarks/data/fashionmnist-probe1.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import optuna

from benchmarks._report import env_header, footer, set_threads, target
from search.asha import RUNGS_ATTR, decide, rung_epochs, rung_key, rung_losses
from search.config import load_experiment
from search.objective import constrain
from search.pareto import hypervolume, non_dominated, to_losses
from search.results import STATIC
from search.storage import make_sampler, recipe

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
EXPERIMENT = ROOT / "experiments" / "quickstart.yaml"
# the recipe of the shipped table: the quickstart with a larger validation split (see `noise`)
OVERRIDES = ("data.val_fraction=0.4",)
TABLE = DATA / "quickstart-table.json"
FREE_STREAK = 200  # free proposals in a row that end a replay, as in a study
STRATEGIES = {  # name -> (sampler, pruner)
    "random": ("random", False),
    "tpe": ("tpe", False),
    "nsga2": ("nsga2", False),
    "costaware": ("costaware", False),
    "random+asha": ("random", True),
    "tpe+asha": ("tpe", True),
}


def experiment(overrides=OVERRIDES, device: str = "cpu", path: Path = EXPERIMENT):
    return load_experiment(path, list(overrides) + [f"train.device={device}", "train.threads=1"])


# -- the table ----------------------------------------------------------------------------------

_WORKER: dict = {}


def _init_worker(overrides, device: str, reference_ms: float | None, path: Path = EXPERIMENT) -> None:
    import torch

    from search.data import load_splits

    set_threads(1)
    cfg = experiment(overrides, device, path)
    dev = torch.device(device)
    _WORKER.update(cfg=cfg, device=dev, splits=load_splits(cfg.data, dev), reference_ms=reference_ms)


def _tabulate(spec, seed: int = 0) -> dict:
    """One row: costs for every network; curve and latency for one within the budget (``seed``'s training)."""

    from search.latency import measure_latency
    from search.objective import build_and_train
    from space import complexity

    cfg, device = _WORKER["cfg"], _WORKER["device"]
    cx = complexity(spec)
    row = {"hash": spec.hash, "name": spec.name, "params": cx.params, "macs": cx.macs}
    if cfg.constraints.max_params is None or cx.params <= cfg.constraints.max_params:
        model, result = build_and_train(spec, _WORKER["splits"], cfg.train, device, seed)
        row.update(curve=[round(h.val_accuracy, 6) for h in result.history],
                   train_time_s=round(result.train_time_s, 3))
        if seed == 0:  # latency does not depend on the weights: measured once per network
            row["latency_ms"] = measure_latency(
                model, spec.in_ch, spec.input_size, cfg.latency, device, bf16=cfg.train.bf16,
                channels_last=cfg.train.nhwc(device), reference_ms=_WORKER["reference_ms"]).ms
    return row


def noise_picks(rows: list[dict], n: int) -> list[str]:
    """``n`` trained networks spread evenly over the ranks of their final accuracy (hashes)."""
    trained = sorted((r for r in rows if "curve" in r), key=lambda r: r["curve"][-1])
    return [trained[round(i * (len(trained) - 1) / max(1, n - 1))]["hash"] for i in range(min(n, len(trained)))]


def build(out: Path, overrides=OVERRIDES, jobs: int = 1, device: str = "cpu", noise_nets: int = 8,
          noise_seeds: int = 3, path: Path = EXPERIMENT) -> dict:
    """Train every network of the experiment's space within its budget once (seed 0); write the table.

    Then ``noise_nets`` of them, spread over the accuracy ranks, are trained again with seeds
    ``1 .. noise_seeds - 1`` (``row["seeds"]``: the final accuracy of each seed), so the table
    carries its own seed noise.

    The file is rewritten with ``"partial": true`` after every trained network until the last
    one, and a build started again on a partial table of the same recipe resumes: it trains only
    the networks (and seeds) that are missing. The networks are trained in a seeded random order,
    so a partial table is a random sample of the space.
    """
    import random
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    import torch

    from search.latency import interleaves, reference_latency_ms

    cfg = experiment(overrides, device, path)
    made = recipe(cfg)
    old = json.loads(out.read_text()) if out.exists() else None
    if old is not None and old.get("recipe") != made:
        raise SystemExit(f"{out} holds a table of another recipe; pass another --table to build this one")
    if old is not None and not old.get("partial"):
        print(f"table:       {out} is complete ({len(old['rows'])} networks); delete it to build it again")
        return old
    if old is None:  # one latency unit for the whole table, as a study measures it once when it is made
        unit = reference_latency_ms(cfg.latency) if interleaves(cfg.latency, cfg.latency.resolve(
            torch.device(device))) else None
        old = {"experiment": str(path.resolve().relative_to(ROOT)), "overrides": list(overrides), "recipe": made,
               "seed": 0, "made": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "env": env_header(device).splitlines(), "latency_reference_ms": unit, "rows": [],
               "build_s": 0.0}
    table = {**old, "partial": True}
    rows = {r["hash"]: r for r in table["rows"]}
    by_hash = {s.hash: s for s in cfg.space.enumerate()}
    specs = [s for h, s in by_hash.items() if h not in rows]
    random.Random(0).shuffle(specs)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0, spent, total = time.perf_counter(), table.get("build_s", 0.0), len(rows) + len(specs)

    def save(partial: bool) -> None:
        table.update(rows=list(rows.values()), partial=partial, build_s=round(spent + time.perf_counter() - t0, 1))
        out.write_text(json.dumps(table, indent=0))

    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(overrides, device, table["latency_reference_ms"], path)) as pool:
        for job in as_completed([pool.submit(_tabulate, s) for s in specs]):
            row = job.result()
            rows[row["hash"]] = row
            if "curve" in row:
                save(partial=True)
                print(f"  {len(rows)}/{total} networks, {time.perf_counter() - t0:.0f} s", flush=True)
        extra = {pool.submit(_tabulate, by_hash[h], seed): (h, seed)
                 for h in noise_picks(list(rows.values()), noise_nets) for seed in range(1, noise_seeds)
                 if str(seed) not in rows[h].get("seeds", {})}
        for job in as_completed(extra):
            h, seed = extra[job]
            rows[h].setdefault("seeds", {"0": rows[h]["curve"][-1]})[str(seed)] = job.result()["curve"][-1]
            save(partial=True)
    save(partial=False)
    n_trained = sum("curve" in r for r in rows.values())
    print(f"table:       {out} ({len(rows)} networks, {n_trained} trained, {jobs} processes on {device}) in "
          f"{table['build_s']:.0f} s of building")
    return table


class Table:
    """The tabulated space: trained rows by network hash, and the true front's hypervolume."""

    def __init__(self, data: dict, objectives: list[str], directions: list[str]) -> None:
        self.rows = {r["hash"]: r for r in data["rows"]}
        self.objectives, self.directions = objectives, directions
        trained = [r for r in data["rows"] if "curve" in r]
        self.epochs = len(trained[0]["curve"])
        raw = np.array([to_losses(self.values(r), directions) for r in trained])
        self.lo, self.hi = raw.min(axis=0), raw.max(axis=0)
        self.ref = [1.1] * len(objectives)
        self.true_hv = hypervolume(self.normalise(raw[non_dominated(raw.tolist())]), self.ref)
        self.true_front = len(non_dominated(raw.tolist()))
        self.trained = len(trained)

    def values(self, row: dict, epochs: int | None = None) -> tuple[float, ...]:
        acc = row["curve"][(epochs or self.epochs) - 1]
        known = {"val_accuracy": acc, "params": row["params"], "macs": row["macs"], "latency_ms": row["latency_ms"]}
        return tuple(known[o] for o in self.objectives)

    def normalise(self, losses) -> list[list[float]]:
        return ((np.asarray(losses, float) - self.lo) / np.where(self.hi > self.lo, self.hi - self.lo, 1)).tolist()

    def ratio(self, losses: list) -> float:
        if not losses:
            return 0.0
        front = [losses[i] for i in non_dominated(losses)]
        return hypervolume(self.normalise(front), self.ref) / self.true_hv


def describe(data: dict, table: Table) -> None:
    """What a table says about its space before any replay: the spread of the final accuracy, the
    seed noise it carries (``build``'s extra seeds), how well each epoch ranks the final accuracy."""
    from scipy.stats import spearmanr

    trained = [r for r in data["rows"] if "curve" in r]
    final = np.array([r["curve"][-1] for r in trained])
    spread = (final.max() - np.median(final)) * 100
    print(f"accuracy:    final {final.min():.3f}-{final.max():.3f} (median {np.median(final):.3f}) over "
          f"{len(trained)} networks; the better half's spread (best - median) {spread:.2f} points")
    noisy = [list(r["seeds"].values()) for r in trained if "seeds" in r]
    if noisy:
        sd = float(np.mean([np.std(v, ddof=1) for v in noisy]))
        print(f"noise:       seed sd {sd * 100:.2f} points (mean over {len(noisy)} networks x {len(noisy[0])} seeds, "
              f"spread over the accuracy ranks)")
    rho = [spearmanr([r["curve"][k] for r in trained], final)[0] for k in range(table.epochs - 1)]
    if rho:
        print("ranking:     Spearman correlation with the final accuracy of the accuracy after epoch "
              + ", ".join(f"{k + 1}: {x:.2f}" for k, x in enumerate(rho)))


# -- one replay ---------------------------------------------------------------------------------

def replay(table: Table, cfg, sampler: str, pruner: bool, seed: int, budget: float, *, eta: int = 3,
           min_epochs: int = 1, sampler_cfg: dict | None = None) -> tuple[list, optuna.Study]:
    """One search against the table until ``budget`` epochs are spent.

    Returns the history ``[(epochs spent, hypervolume ratio, networks trained to the end), ...]``
    after every trial that spent compute, and the study.
    """
    search = dataclasses.replace(cfg.search, sampler=sampler if isinstance(sampler, str) else "random",
                                 n_trials=max(1, round(budget / table.epochs)), **(sampler_cfg or {}))
    scfg = dataclasses.replace(cfg, search=search)
    made = sampler(seed) if callable(sampler) else make_sampler(scfg, seed)
    study = optuna.create_study(directions=cfg.directions, sampler=made)
    rungs = rung_epochs(min_epochs, eta, table.epochs) if pruner else []
    spent, found, done, free, seen = 0.0, [], 0, 0, {}
    history = [(0.0, 0.0, 0)]
    while spent < budget and free < FREE_STREAK:
        trial = study.ask()
        spec = cfg.space.suggest(trial)
        row = table.rows[spec.hash]
        for key, metric in STATIC.items():
            bound = getattr(cfg.constraints, key)
            if bound is not None:
                constrain(trial, key, row[metric] - bound)
        placeholder = tuple({"val_accuracy": 0.0, "latency_ms": math.inf}.get(o, row.get(o, 0)) for o in cfg.objectives)
        if "curve" not in row:  # over budget: never built
            study.tell(trial, placeholder)
            free += 1
            continue
        if spec.hash in seen:  # the same network again: its result (or its stop) is reused, free
            state = seen[spec.hash]
            study.tell(trial, table.values(row)) if state == "complete" else study.tell(
                trial, state=optuna.trial.TrialState.PRUNED)
            free += 1
            continue
        free = 0
        stopped_at = None
        for r in rungs:
            values = table.values(row, r)
            trial.set_user_attr(RUNGS_ATTR, {**(trial.user_attrs.get(RUNGS_ATTR) or {}), rung_key(r): values})
            others = rung_losses(study.get_trials(deepcopy=False), r, cfg.directions, exclude=trial.number)
            if not decide(to_losses(values, cfg.directions), others, eta)[0]:
                stopped_at = r
                break
        if stopped_at is not None:
            spent += stopped_at
            seen[spec.hash] = "pruned"
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            spent += table.epochs
            seen[spec.hash] = "complete"
            values = table.values(row)
            study.tell(trial, values)
            found.append(list(to_losses(values, cfg.directions)))
            done += 1
        history.append((spent, table.ratio(found), done))
    return history, study


def at(history: list[tuple[float, float, int]], epochs: float) -> float:
    """The hypervolume ratio reached within ``epochs``."""
    return max((h for s, h, _ in history if s <= epochs), default=0.0)


def epochs_to(history: list[tuple[float, float, int]], share: float) -> float:
    """The epochs spent when the ratio first reached ``share`` (inf if never)."""
    return next((s for s, h, _ in history if h >= share), math.inf)


def boot(values, rng: np.random.Generator, n: int = 2000) -> tuple[float, float, float]:
    """Mean and bootstrap 95% interval of the mean."""
    v = np.asarray(values, float)
    means = rng.choice(v, (n, len(v))).mean(axis=1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="replay",
                        choices=("replay", "build", "noise", "real", "tune", "probes"))
    parser.add_argument("--quick", action="store_true", help="CI smoke: 3 seeds, 2 strategies, small budgets")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per strategy (10)")
    parser.add_argument("--budgets", default="10,20,30,50",
                        help="compute budgets in full-trial equivalents (x train.epochs epochs)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated, from: "
                        + ", ".join(STRATEGIES))
    parser.add_argument("--table", type=Path, default=TABLE)
    parser.add_argument("--experiment", type=Path, default=EXPERIMENT,
                        help="build/noise: the experiment file whose recipe the table trains (quickstart)")
    parser.add_argument("--jobs", type=int, default=1, help="build: training processes (1 thread each)")
    parser.add_argument("--device", default="cpu", help="build: where the networks train (cpu | cuda)")
    parser.add_argument("--probe-tables", type=Path, nargs="+", default=list(PROBES),
                        help="probes: tables of the --table's recipe with fewer train.epochs (complete short runs)")
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--min-epochs", type=int, default=1)
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                        help="build/noise: the recipe's overrides of the quickstart (default: "
                             + " ".join(OVERRIDES) + ")")
    args = parser.parse_args(argv)
    set_threads(1)
    overrides = OVERRIDES if args.set is None else tuple(args.set)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.command == "build":
        return build(args.table, overrides, args.jobs, args.device, path=args.experiment)
    if args.command == "noise":
        return noise(overrides)
    data = json.loads(args.table.read_text())
    cfg = experiment(data.get("overrides", OVERRIDES), path=ROOT / data.get("experiment", EXPERIMENT))
    if data.get("partial"):
        parser.error(f"{args.table} is a partial table (its build was cut short at {len(data['rows'])} networks): "
                     "rebuild it with `build`")
    table = Table(data, list(cfg.objectives), cfg.directions)
    if args.command == "tune":
        print(env_header("cpu"))
        result = tune(table, cfg, args.seeds or 10, [n * table.epochs for n in (10, 20, 30, 50)],
                      np.random.default_rng(0))
        print(footer())
        return result
    if args.command == "probes":
        print(env_header("cpu"))
        result = probes(table, cfg, args.seeds or 10, [n * table.epochs for n in (10, 20, 30, 50, 100)],
                        np.random.default_rng(0), args.probe_tables)
        print(footer())
        return result
    if args.command == "real":
        print(env_header("cpu"))
        result = real(table, seeds=args.seeds or 3)
        print(footer())
        return result
    names = ["random", "tpe+asha"] if args.quick else args.strategies.split(",")
    seeds = args.seeds or (3 if args.quick else 10)
    full = [5, 10] if args.quick else [int(b) for b in args.budgets.split(",")]  # in full-trial equivalents
    budgets = [n * table.epochs for n in full]
    rng = np.random.default_rng(0)

    print("benchmark: search quality, strategies replayed against a tabulated space at equal compute")
    print(env_header("cpu"))
    print(f"table:       {args.table.relative_to(ROOT) if args.table.is_relative_to(ROOT) else args.table}: "
          f"{len(table.rows)} networks of {data['experiment']} {' '.join(data['overrides'])}, {table.trained} "
          f"within max_params (trained {table.epochs} epochs, seed {data['seed']}, made {data['made']}); "
          f"true front {table.true_front} networks")
    print(f"objectives:  {', '.join(cfg.objectives)}; hypervolume on losses min-max normalised over the table, "
          f"reference 1.1, as a ratio to the true front's")
    print(f"pruner:      rungs at {rung_epochs(args.min_epochs, args.eta, table.epochs)} epochs (min_epochs "
          f"{args.min_epochs}, eta {args.eta}) of {table.epochs}")
    print(f"repeats:     {seeds} seeds per strategy; 95% intervals: bootstrap of the mean over seeds")
    describe(data, table)
    t0 = time.perf_counter()
    runs = {name: [replay(table, cfg, *STRATEGIES[name], seed, budgets[-1], eta=args.eta,
                          min_epochs=args.min_epochs)[0] for seed in range(seeds)] for name in names}
    print(f"replays:     {len(names) * seeds} in {time.perf_counter() - t0:.1f} s")

    print(f"\nhypervolume ratio (mean [95% interval]) by compute, in epochs (= full trials x {table.epochs})")
    print(f"{'strategy':<13}" + "".join(f"{f'{b:g} ep ({n})':>24}" for b, n in zip(budgets, full, strict=True)))
    result = {}
    for name in names:
        cells = []
        for b in budgets:
            m, lo, hi = boot([at(h, b) for h in runs[name]], rng)
            result[(name, b)] = m
            cells.append(f"{m:.3f} [{lo:.3f},{hi:.3f}]")
        print(f"{name:<13}" + "".join(f"{c:>24}" for c in cells))
    if "random" in runs:
        print("\ndifference to random (mean [95% interval]; * = significant)")
        for name in (n for n in names if n != "random"):
            cells = []
            for b in budgets:
                d = [at(h, b) - at(r, b) for h, r in zip(runs[name], runs["random"], strict=True)]
                m, lo, hi = boot(d, rng)
                result[(name, "diff", b)] = (m, lo, hi)
                cells.append(f"{m:+.3f} [{lo:+.3f},{hi:+.3f}]{'*' if lo > 0 or hi < 0 else ' '}")
            print(f"{name:<13}" + "".join(f"{c:>24}" for c in cells))
    print("\nepochs to reach a share of the true front's hypervolume (median over seeds; reached by)")
    for name in names:
        parts = []
        for share in (0.90, 0.95):
            e = [epochs_to(h, share) for h in runs[name]]
            ok = [x for x in e if math.isfinite(x)]
            result[(name, share)] = float(np.median(e)) if len(ok) * 2 > len(e) else math.inf
            parts.append(f"{share:.0%}: {result[(name, share)]:>6g} ep ({len(ok)}/{len(e)} seeds)")
        print(f"{name:<13} " + "   ".join(parts))
    if "tpe" in runs and "tpe+asha" in runs:
        full_tpe, asha = result[("tpe", 0.95)], result[("tpe+asha", 0.95)]
        share = asha / full_tpe if math.isfinite(full_tpe) and full_tpe else math.inf
        print(target("pruner: 95% of the true hypervolume at <= 35% of the epochs full-fidelity TPE needs",
                     share <= 0.35, f"{share:.0%}" if math.isfinite(share) else "not reached in the budget"))
    if "random" in runs:
        below = [(n, b) for n in names if n != "random" for b in budgets if result[(n, "diff", b)][2] < 0]
        print(target("no strategy significantly below random at any budget", not below,
                     ", ".join(f"{n} at {b:g} ep" for n, b in below) or "none below"))
        default, b50 = cfg.search.sampler, 50 * table.epochs
        if default in runs and default != "random" and b50 in budgets:
            m, lo, hi = result[(default, "diff", b50)]
            print(target(f"default sampler ({default}) above random by a significant margin at 50 trained networks",
                         lo > 0, f"{m:+.3f} [{lo:+.3f},{hi:+.3f}]"))
        if "tpe+asha" in runs:
            m, lo, hi = result[("tpe+asha", "diff", budgets[-1])]
            print(f"ratio       tpe+asha / random hypervolume at {budgets[-1]:g} epochs: "
                  f"{result[('tpe+asha', budgets[-1])] / result[('random', budgets[-1])]:.3f}x")
    print(footer())
    return result


def _tpe(**kw):
    def make(seed: int) -> optuna.samplers.BaseSampler:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, **kw)
    return make


# TPE settings against random search (``tune``); "study's tpe" is search.storage.make_sampler's
SAMPLER_VARIANTS = {
    "random": "random",
    "study's tpe": "tpe",
    "tpe univariate": _tpe(n_startup_trials=10),
    "tpe multivariate": _tpe(n_startup_trials=10, multivariate=True),
    "tpe startup 25": _tpe(n_startup_trials=25, multivariate=True, group=True),
    "nsga2": "nsga2",
}


def diff_table(runs: dict, budgets: list[float], rng, label: str, width: int, extra=None, extra_head: str = "") -> dict:
    """Print, per strategy and budget, the mean ratio and the difference to random search (paired by
    seed, bootstrap 95% interval; * = significant), plus ``extra(histories)`` per row; return them."""
    print(f"{label:<{width}}" + "".join(f"{f'{b:g} ep':>26}" for b in budgets) + extra_head)
    out = {}
    for name, hs in runs.items():
        cells = []
        for b in budgets:
            m = float(np.mean([at(h, b) for h in hs]))
            d, lo, hi = boot([at(h, b) - at(r, b) for h, r in zip(hs, runs["random"], strict=True)], rng)
            out[(name, b)] = (m, d, lo, hi)
            cells.append(f"{m:.3f} {d:+.3f} [{lo:+.3f},{hi:+.3f}]{'*' if lo > 0 or hi < 0 else ' '}")
        print(f"{name:<{width}}" + "".join(f"{c:>26}" for c in cells) + (extra(hs) if extra else ""))
    return out


def tune(table: Table, cfg, seeds: int, budgets: list[float], rng) -> dict:
    """TPE's settings (startup trials, multivariate, group) replayed against random search."""
    runs = {name: [replay(table, cfg, sampler, False, seed, budgets[-1])[0] for seed in range(seeds)]
            for name, sampler in SAMPLER_VARIANTS.items()}
    print(f"\nsampler settings, {seeds} seeds: hypervolume ratio by compute, difference to random [95% interval]")
    return diff_table(runs, budgets, rng, "sampler", 18)


PROBES = (DATA / "onecycle1-cpu.json", DATA / "onecycle3-cpu.json")  # the same recipe, train.epochs 1 and 3


def replay_probe(table: Table, cfg, probe: dict, seed: int, budget: float, eta: int = 3) -> list:
    """Random search where each new network first trains a complete short run (``probe``'s table:
    its own schedule, annealed, not a rung of the long one) and trains in full only if that run
    ranks in the top ``1/eta`` of the probes so far (``search.asha.decide``); the probe's epochs count.
    """
    study = optuna.create_study(directions=cfg.directions, sampler=optuna.samplers.RandomSampler(seed=seed))
    short = len(next(r for r in probe.values() if "curve" in r)["curve"])
    spent, found, free, seen, probed = 0.0, [], 0, set(), []
    history = [(0.0, 0.0, 0)]
    while spent < budget and free < FREE_STREAK:
        trial = study.ask()
        row = table.rows[cfg.space.suggest(trial).hash]
        if "curve" not in row or row["hash"] in seen:  # over budget or seen: free, as in a study
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            free += 1
            continue
        free = 0
        seen.add(row["hash"])
        values = (probe[row["hash"]]["curve"][-1], *table.values(row)[1:])
        loss = to_losses(values, cfg.directions)
        goes_on = decide(loss, list(probed), eta)[0]
        probed.append(loss)
        spent += short
        if goes_on:
            spent += table.epochs
            values = table.values(row)
            found.append(list(to_losses(values, cfg.directions)))
        study.tell(trial, values if goes_on else None, state=None if goes_on else optuna.trial.TrialState.PRUNED)
        history.append((spent, table.ratio(found), len(found)))
    return history


def probes(table: Table, cfg, seeds: int, budgets: list[float], rng, paths=PROBES) -> dict:
    """Short complete runs as the rung (``replay_probe``) against random search, and how well they rank.

    ``paths``: probe tables of the table's recipe with fewer ``train.epochs`` (``build --set train.epochs=1``).
    """
    from scipy.stats import spearmanr

    runs = {"random": [replay(table, cfg, "random", False, seed, budgets[-1])[0] for seed in range(seeds)]}
    final = {h: r["curve"][-1] for h, r in table.rows.items() if "curve" in r}

    def rho(accuracy: dict) -> float:  # rank correlation with the long run's final accuracy
        return spearmanr([accuracy[h] for h in final], list(final.values()))[0]

    for path in paths:
        probe = {r["hash"]: r for r in json.loads(path.read_text())["rows"]}
        epochs = len(next(r for r in probe.values() if "curve" in r)["curve"])
        short = rho({h: probe[h]["curve"][-1] for h in final})
        rung = rho({h: table.rows[h]["curve"][epochs - 1] for h in final})
        print(f"probe:       {path.name}: complete {epochs}-epoch runs; rank correlation with the {table.epochs}-epoch "
              f"accuracy {short:.2f} (a rung at epoch {epochs} of the long run: {rung:.2f})")
        runs[f"probe {epochs} ep"] = [replay_probe(table, cfg, probe, seed, budgets[-1]) for seed in range(seeds)]
    def reached(hs) -> str:
        e95 = [epochs_to(h, 0.95) for h in hs]
        return f"   {np.median(e95):g} ep ({sum(map(math.isfinite, e95))}/{len(e95)})"

    print(f"\n{seeds} seeds: hypervolume ratio by compute, difference to random [95% interval]")
    return diff_table(runs, budgets, rng, "strategy", 14, reached, "   95% reached at (median, seeds)")


def real(table: Table, full: int = 16, seeds: int = 3) -> dict:
    """The real thing, not a replay: ``run_search`` on the table's recipe with and without the pruner.

    Equal compute: ``search.budget_epochs = full * train.epochs`` for both; ``seeds`` study seeds
    each; Optuna on a journal file in a temp dir, MLflow off. Each front is scored both with the
    study's own hypervolume (its fixed reference) and against the table's true front.
    """
    import tempfile

    from search.results import study_hypervolume
    from search.study import run_search

    budget = full * table.epochs
    print(f"\nthe real thing: run_search on the table's recipe, budget_epochs {budget} ({full} full trials), "
          f"{seeds} seeds, with and without the pruner")
    out: dict = {}
    for pruner in ("none", "asha"):
        hvs, ratios, counts, t0 = [], [], [], time.perf_counter()
        for seed in range(seeds):
            with tempfile.TemporaryDirectory(prefix="bench-sq-") as tmp:
                cfg = experiment(OVERRIDES + (f"search.seed={seed}", f"search.pruner={pruner}",
                                              f"search.budget_epochs={budget}", "search.n_trials=1000",
                                              f"search.storage=journal:{tmp}/optuna.journal", "tracking.enabled=false"))
                summary = run_search(cfg, quiet=True)
                hvs.append(study_hypervolume(summary.front, summary.study.user_attrs["hv_reference"]))
                ratios.append(table.ratio([list(to_losses(list(r.values.values()), cfg.directions))
                                           for r in summary.front]))
                counts.append(summary.counts)
        out[pruner] = {"hv": hvs, "ratio": ratios}
        trained = [c["trained"] for c in counts]
        stopped = [c.get("pruned", 0) for c in counts]
        print(f"pruner {pruner:<5} study hypervolume {np.mean(hvs):.4f} +- {np.std(hvs, ddof=1):.4f}, ratio to the "
              f"table's true front {np.mean(ratios):.3f} +- {np.std(ratios, ddof=1):.3f} (seeds: "
              f"{', '.join(f'{r:.3f}' for r in ratios)}); trained {trained}, stopped {stopped} "
              f"({time.perf_counter() - t0:.0f} s)")
    return out


def noise(overrides=OVERRIDES, sample: int = 24, n_nets: int = 6, n_seeds: int = 4) -> dict:
    """Seed noise of the final accuracy against the spread of the space's better half.

    ``sample`` random networks within the budget are trained once (seed 0); the spread is the best
    accuracy minus the median. ``n_nets`` of the better half are retrained with ``n_seeds`` seeds;
    the noise is their mean standard deviation. A table can rank the better half when the noise
    is below a third of the spread.
    """
    import random

    import torch

    from search.data import load_splits
    from search.objective import build_and_train
    from space import complexity

    cfg = experiment(overrides)
    device = torch.device("cpu")
    splits = load_splits(cfg.data, device)
    specs = [s for s in cfg.space.enumerate()
             if cfg.constraints.max_params is None or complexity(s).params <= cfg.constraints.max_params]
    picked = random.Random(0).sample(specs, sample)
    t0 = time.perf_counter()

    def acc(spec, seed: int) -> float:
        return build_and_train(spec, splits, cfg.train, device, seed)[1].val_accuracy

    first = sorted(((acc(s, 0), s) for s in picked), key=lambda a: -a[0])
    accs = [a for a, _ in first]
    spread = accs[0] - float(np.median(accs))
    better = first[: len(first) // 2]
    chosen = [better[i * len(better) // n_nets] for i in range(n_nets)]
    sds = []
    for a0, spec in chosen:
        runs = [a0] + [acc(spec, seed) for seed in range(1, n_seeds)]
        sds.append(float(np.std(runs, ddof=1)))
    sd = float(np.mean(sds))
    n_val = len(splits.val_y)
    print(f"noise:       {' '.join(overrides) or 'the experiment as it is'}: {n_val} validation images; "
          f"{sample} networks, spread of the better half (best - median) {spread * 100:.2f} points; "
          f"seed sd over {n_seeds} seeds of {n_nets} of them: mean {sd * 100:.2f} points "
          f"(each: {', '.join(f'{x * 100:.2f}' for x in sds)}); ratio spread / sd {spread / sd:.1f} "
          f"({time.perf_counter() - t0:.0f} s)")
    print(target("seed noise below a third of the better half's spread", sd < spread / 3,
                 f"{sd * 100:.2f} vs {spread / 3 * 100:.2f} points"))
    return {"spread": spread, "sd": sd, "n_val": n_val}


if __name__ == "__main__":
    main()
