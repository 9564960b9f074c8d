"""What a study has found: its trials as rows, the Pareto front, the hypervolume, the parent run's artifacts.

Every completed trial has an ``outcome``: ``trained`` (a network trained to completion: the only
kind ``search.n_trials`` counts and the only kind on the front), ``reused`` (a network the
study had already trained: its result is copied, nothing runs), ``over_budget`` (over a
static budget: never built) or ``out_of_memory`` (did not fit on the device: infeasible).
Failed trials are Optuna's FAIL state.

The hypervolume is measured against a reference point fixed when the study starts
(``hv_reference``) and recorded on the study, so a value never changes once logged and
values of one study are comparable across trials, resumes and reports.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from search.config import ExperimentConfig
from search.pareto import dominates, hypervolume, hypervolume_history, non_dominated, to_losses

if TYPE_CHECKING:  # only a type here: reading a study's results needs no mlflow (~0.9 s of imports)
    from search.tracking import Tracker

TRAINED, REUSED, OVER_BUDGET, OUT_OF_MEMORY = "trained", "reused", "over_budget", "out_of_memory"
OUTCOMES = (TRAINED, REUSED, OVER_BUDGET, OUT_OF_MEMORY)
PRUNED = "pruned"  # stopped at a rung of the pruner (Optuna state PRUNED; never on the front)
STATIC = {"max_params": "params", "max_macs": "macs"}  # constraints known before building
# Grouped user attributes: each is one journal record where its keys alone would be several (Optuna
# writes one record per attribute). ``trial_attrs`` spreads them out; older studies stored the keys
# one by one, and read the same.
NETWORK = "network"  # spec, spec_name, spec_hash, params, macs, mlflow_run_id: set as a trial starts
TRAINING = "training"  # seed, threads: set as its training begins
REF_MARGIN = 1.1  # the reference point lies this far beyond the largest cost the study can see
LATENCY_HEADROOM = 2.0  # ... and latency, measured (noisy), this much beyond the largest network's


def trial_attrs(t: optuna.trial.FrozenTrial) -> dict:
    """A trial's user attributes with the grouped ones (``NETWORK``, ``TRAINING``) spread out."""
    attrs = t.user_attrs
    if NETWORK not in attrs and TRAINING not in attrs:
        return attrs
    return {**attrs, **attrs.get(NETWORK, {}), **attrs.get(TRAINING, {})}


@dataclass
class Row:
    """One completed trial as the Pareto code and the tables see it."""

    number: int
    values: dict[str, float]
    feasible: bool
    spec: dict
    attrs: dict
    constraints: dict[str, float] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        return self.attrs.get("outcome", TRAINED)

    @classmethod
    def from_trial(cls, t: optuna.trial.FrozenTrial, objectives: tuple[str, ...]) -> Row:
        constraints, attrs = t.constraints, trial_attrs(t)
        return cls(t.number, dict(zip(objectives, t.values, strict=True)), all(v <= 0 for v in constraints.values()),
                   attrs.get("spec", {}), attrs, constraints)


def finished_rows(study: optuna.Study, objectives: tuple[str, ...]) -> list[Row]:
    """Every completed trial, whatever its outcome, in trial order."""
    return [Row.from_trial(t, objectives) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def trained_rows(rows: list[Row]) -> list[Row]:
    """The feasible trained networks, one row per network: the first trial that trained it, if feasible."""
    seen, out = set(), []
    for r in sorted(rows, key=lambda r: r.number):
        h = r.attrs.get("spec_hash")
        if r.outcome == TRAINED and h not in seen:
            seen.add(h)
            if r.feasible:
                out.append(r)
    return out


def pareto_rows(rows: list[Row], directions: list[str]) -> list[Row]:
    """The feasible Pareto front: non-dominated trained networks, one row per network."""
    candidates = trained_rows(rows)
    keep = non_dominated([to_losses(list(r.values.values()), directions) for r in candidates])
    return [candidates[i] for i in keep]


def front_table(front: list[Row], objectives: tuple[str, ...]) -> list[dict]:
    """The front as table rows (``pareto_rows`` gives one row per network)."""
    return [{"trial": r.number, "name": r.attrs.get("spec_name", ""), **r.values,
             **{k: r.attrs.get(k) for k in ("params", "macs") if k not in r.values}, "hash": r.attrs.get("spec_hash")}
            for r in sorted(front, key=lambda r: r.number)]


def outcome_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by outcome: trained, reused, over_budget, out_of_memory, pruned, failed, running."""
    counts = dict.fromkeys((*OUTCOMES, PRUNED, "failed", "running"), 0)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING,
                                                      TrialState.PRUNED)):
        if t.state == TrialState.COMPLETE:
            counts[t.user_attrs.get("outcome", TRAINED)] += 1
        else:
            counts[{TrialState.FAIL: "failed", TrialState.PRUNED: PRUNED}.get(t.state, "running")] += 1
    return counts


def describe_counts(counts: dict[str, int]) -> str:
    """``12 trained, 3 reused, 4 over budget, 0 out of memory, 1 failed`` (and ``5 pruned`` when any were)."""
    keys = (*OUTCOMES, *((PRUNED,) if counts.get(PRUNED) else ()), "failed")
    return ", ".join(f"{counts[k]} {k.replace('_', ' ')}" for k in keys)


def spent(t: optuna.trial.FrozenTrial) -> tuple[float, float]:
    """``(training epochs, training seconds)`` a finished trial spent: a trained network's (its probe runs
    included), a stopped one's, else 0."""
    if t.state == TrialState.COMPLETE and t.user_attrs.get("outcome", TRAINED) == TRAINED:
        m = t.user_attrs.get("metrics") or {}
        return (float(m.get("epochs") or 0) + float(m.get("probe_epochs") or 0),
                float(m.get("train_time_s") or 0) + float(m.get("probe_time_s") or 0))
    info = t.user_attrs.get("pruned") or {}
    if t.state == TrialState.PRUNED and "reused_from" not in info:
        m = info.get("metrics") or {}
        return float(m.get("epochs", info.get("rung", 0.0))), float(m.get("train_time_s", 0.0))
    return 0.0, 0.0


def study_spent(study: optuna.Study) -> tuple[float, float]:
    """``(training epochs, training seconds)`` spent by a study's finished trials."""
    epochs = seconds = 0.0
    for t in study.get_trials(deepcopy=False):
        e, s = spent(t)
        epochs, seconds = epochs + e, seconds + s
    return epochs, seconds


def epochs_spent(t: optuna.trial.FrozenTrial) -> float:
    """Training epochs a finished trial spent (``spent``'s first half: what ``search.budget_epochs`` counts)."""
    return spent(t)[0]


# -- hypervolume ----------------------------------------------------------------------------------

def hv_reference(cfg: ExperimentConfig, largest_latency_ms: float | None = None) -> dict[str, float]:
    """The hypervolume reference point of a study, in each objective's own unit.

    Accuracy is measured from 0. A cost's reference is ``REF_MARGIN`` times its largest
    possible value: the budget when there is one, else the largest network of the space
    (analytic params/MACs; for latency, ``LATENCY_HEADROOM`` times the measured latency of the
    space's largest network, ``largest_latency_ms``).
    """
    _, hi = cfg.space.complexity_range()
    ref = {}
    for o in cfg.objectives:
        if o == "val_accuracy":
            ref[o] = 0.0
        elif o in ("params", "macs"):
            bound = getattr(cfg.constraints, f"max_{o}")
            ref[o] = REF_MARGIN * min(getattr(hi, o), bound if bound is not None else float("inf"))
        elif cfg.constraints.max_latency_ms is not None:
            ref[o] = REF_MARGIN * cfg.constraints.max_latency_ms
        else:
            if largest_latency_ms is None:
                raise ValueError("latency_ms without max_latency_ms needs the largest network's latency")
            ref[o] = REF_MARGIN * LATENCY_HEADROOM * largest_latency_ms
    return ref


def _point(values: dict[str, float], ref: dict[str, float]) -> list[float]:
    """Normalised losses: -accuracy (reference 0) and cost / reference (reference 1)."""
    return [-values[o] if o == "val_accuracy" else values[o] / ref[o] for o in ref]


def _ref_point(ref: dict[str, float]) -> list[float]:
    return [0.0 if o == "val_accuracy" else 1.0 for o in ref]


def study_hypervolume(front: list[Row], ref: dict[str, float]) -> float:
    """Hypervolume of ``front`` against ``ref`` in normalised units (1 = every point ideal)."""
    return hypervolume([_point(r.values, ref) for r in front], _ref_point(ref))


def hypervolume_by_trial(rows: list[Row], ref: dict[str, float]) -> list[tuple[int, float]]:
    """(trial number, hypervolume of the front once that trial had finished), in trial order."""
    rows = sorted(rows, key=lambda r: r.number)
    counted = {id(r) for r in trained_rows(rows)}
    origin = _ref_point(ref)
    points = [_point(r.values, ref) if id(r) in counted else origin for r in rows]  # origin adds nothing
    return list(zip((r.number for r in rows), hypervolume_history(points, origin), strict=True))


# -- the study as a whole ---------------------------------------------------------------------------

@dataclass
class Summary:
    """A study's state: its completed rows, its front and its counts by outcome."""

    study: optuna.Study
    front: list[Row]
    rows: list[Row]
    parent_id: str | None
    tracker: Tracker
    counts: dict[str, int] = field(default_factory=dict)


def summarize(study: optuna.Study, cfg: ExperimentConfig, tracker: Tracker, parent_id: str | None) -> Summary:
    rows = finished_rows(study, cfg.objectives)
    return Summary(study, pareto_rows(rows, cfg.directions), rows, parent_id, tracker, outcome_counts(study))


class Ledger:
    """A study's completed trials as rows, its counts, front and known networks, kept up to date incrementally.

    A finished trial never changes, so ``update`` only converts the trials it has not seen and
    inserts the trained ones into the front (a new point either is dominated by the front, or
    joins it and drops what it dominates: the same front as recomputing it). What a worker's
    loop asks after every trial (counts, front, has this network been trained?) then costs in
    proportion to what changed, not to the size of the study. ``summarize`` is the one-off form.

    Args:
        objectives: the study's objectives.
        directions: their directions.
    """

    def __init__(self, objectives: tuple[str, ...], directions: list[str]) -> None:
        self.objectives, self.directions = objectives, directions
        self.rows: dict[int, Row] = {}
        self.ordered: list[Row] = []  # the same rows in trial order
        self.unfinished: list[optuna.trial.FrozenTrial] = []  # running or waiting, at the last update
        self.failed: set[int] = set()
        self.stopped: set[int] = set()  # trials stopped at a rung (PRUNED)
        self.running = 0  # running trials claimed by a worker, at the last update
        self.counts = dict.fromkeys((*OUTCOMES, PRUNED, "failed", "running"), 0)
        self.epochs = 0.0  # training epochs spent by the finished trials (search.budget_epochs)
        self.trained: dict[str, Row] = {}  # spec hash -> the first trial that trained it
        self.pruned: dict[str, optuna.trial.FrozenTrial] = {}  # spec hash -> the first trial stopped at a rung
        self.out_of_memory: dict[tuple[str, str], Row] = {}  # (spec hash, device) -> the first such trial
        self.seen: set[str] = set()  # networks trained, over budget or out of memory (the space's used part)
        self.front: list[Row] = []
        self.low = 0  # every trial numbered below this has finished and been taken in

    def _losses(self, r: Row) -> tuple[float, ...]:
        return to_losses(list(r.values.values()), self.directions)

    def _add(self, r: Row) -> None:
        self.rows[r.number] = r
        if self.ordered and self.ordered[-1].number > r.number:  # rare: finished after a later trial
            bisect.insort(self.ordered, r, key=lambda row: row.number)
        else:
            self.ordered.append(r)
        self.counts[r.outcome] += 1
        h = r.attrs.get("spec_hash")
        if r.outcome in (TRAINED, OVER_BUDGET, OUT_OF_MEMORY):
            self.seen.add(h)
        if r.outcome == OUT_OF_MEMORY and "reused_from" not in r.attrs:
            key = (h, r.attrs.get("device"))
            if key not in self.out_of_memory or self.out_of_memory[key].number > r.number:
                self.out_of_memory[key] = r
        if r.outcome != TRAINED:
            return
        first = self.trained.get(h)
        if first is not None and first.number < r.number:
            return  # trained twice (two workers at once): the first trial stands for the network
        self.trained[h] = r
        if first is not None:  # rare: a lower-numbered twin arrived late; recompute the front
            self.front = pareto_rows(list(self.rows.values()), self.directions)
        elif r.feasible:
            new = self._losses(r)
            if not any(dominates(self._losses(f), new) for f in self.front):
                self.front = [f for f in self.front if not dominates(new, self._losses(f))] + [r]

    def update(self, study: optuna.Study) -> Ledger:
        """Take in the trials finished since the last update (and count the running ones).

        Trials come in number order; every trial below ``self.low`` has finished and been taken in,
        so only the trials from there on are looked at.
        """
        running, trials = 0, study.get_trials(deepcopy=False)
        low, self.unfinished = None, []
        for t in trials[self.low:]:
            if t.state == TrialState.COMPLETE:
                if t.number not in self.rows:
                    self._add(Row.from_trial(t, self.objectives))
                    self.epochs += epochs_spent(t)
            elif t.state == TrialState.FAIL:
                if t.number not in self.failed:
                    self.failed.add(t.number)
                    self.counts["failed"] += 1
            elif t.state == TrialState.PRUNED:
                h = trial_attrs(t).get("spec_hash")
                if t.number not in self.stopped:
                    self.stopped.add(t.number)
                    self.counts[PRUNED] += 1
                    self.epochs += epochs_spent(t)
                    if h not in self.pruned or self.pruned[h].number > t.number:
                        self.pruned[h] = t
            elif not t.state.is_finished():  # running or waiting
                if low is None:
                    low = t.number
                self.unfinished.append(t)
                running += t.state == TrialState.RUNNING and "worker" in t.user_attrs
        self.low = len(trials) if low is None else low
        self.running = self.counts["running"] = running
        return self

    def joins_front(self, spec_hash: str, values: dict[str, float]) -> bool:
        """Would a feasible network newly trained with these objective values join the front as it is now?"""
        new = to_losses(list(values.values()), self.directions)
        return spec_hash not in self.trained and not any(dominates(self._losses(f), new) for f in self.front)

    def twin(self, spec_hash: str, device: str) -> Row | None:
        """The trial that trained this network, or found it out of memory on ``device``; else None."""
        return self.trained.get(spec_hash) or self.out_of_memory.get((spec_hash, device))

    def summary(self, study: optuna.Study, parent_id: str | None, tracker: Tracker) -> Summary:
        return Summary(study, list(self.front), list(self.ordered), parent_id, tracker, dict(self.counts))


def log_study_artifacts(summary: Summary, cfg: ExperimentConfig) -> None:
    """Pareto table (CSV + JSON), plots and the counts by outcome on the parent run; every trial run's tag checked.

    The loop tags only what changed after each trial; this reconciles every run's ``pareto``
    tag with the final front once (a worker that exited cannot untag a trial that left the front).
    """
    tracker, parent = summary.tracker, summary.parent_id
    if parent is None:
        return
    tracker.sync_pareto_tags(parent, {r.number for r in summary.front})
    table = front_table(summary.front, cfg.objectives)
    tracker.log_text(parent, json.dumps(table, indent=2), "pareto.json")
    if table:
        cols = list(table[0])
        tracker.log_text(parent, "\n".join([",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in table]),
                         "pareto.csv")
    epochs, seconds = study_spent(summary.study)
    tracker.log(parent, metrics={**{f"trials_{k}": v for k, v in summary.counts.items() if k != "running"},
                                 "pareto_size": len(table), "epochs_spent": epochs, "train_seconds": seconds})
    from search.plots import close, pareto_figures

    figures = pareto_figures(summary.rows, summary.front, cfg.objectives)
    for name, fig in figures.items():
        tracker.log_figure(parent, fig, name)
    close(figures)  # pyplot keeps every figure alive until closed
