"""Search studies: the trial objective, the Optuna study around it, and its bookkeeping.

This module and ``search.cli`` are the only ones that import optuna. A trial goes:
suggest a NetSpec -> analytic params/MACs -> static constraints (a network over budget is
never built) -> reuse the result of an identical network if the study has one -> build,
train briefly, measure latency -> return the objective values; each step is mirrored into the
trial's MLflow run, which always ends FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import signal
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import TrialState

from search.config import ExperimentConfig, redact
from search.data import Splits, load_splits
from search.latency import measure_latency
from search.pareto import hypervolume, non_dominated, to_losses
from search.progress import Progress
from search.tracking import Tracker, quiet_mlflow
from search.train import resolve_device, seed_everything, train_model
from space import NetSpec, build_model, complexity
from space.errors import SpecError

STATIC = {"max_params": "params", "max_macs": "macs"}  # constraints known before building


def trial_seed(study_seed: int, number: int) -> int:
    """Per-trial seed derived from the study seed and trial number (stable across runs)."""
    return int(hashlib.sha256(f"{study_seed}:{number}".encode()).hexdigest()[:8], 16)


def fingerprint(cfg: ExperimentConfig) -> str:
    """What makes two runs of a study comparable: the space, objectives, constraints and data."""
    blob = json.dumps({
        "space": cfg.space.to_dict(), "objectives": list(cfg.objectives),
        "constraints": vars(cfg.constraints), "dataset": cfg.data.dataset,
    }, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def check_budget(cfg: ExperimentConfig) -> None:
    """Refuse a study whose static budget no network of the space can meet."""
    lo, hi = cfg.space.complexity_range()
    for key, metric in STATIC.items():
        bound = getattr(cfg.constraints, key)
        if bound is not None and getattr(lo, metric) > bound:
            raise SpecError(
                f"constraints.{key} = {bound:,.0f} but the smallest network of the space has "
                f"{getattr(lo, metric):,} {metric} (largest: {getattr(hi, metric):,}); raise the "
                f"budget or shrink the space (fewer/smaller stages, channels, cardinality)"
            )


def _experimental(fn, *args, **kwargs):
    """Call an Optuna constructor whose options we use on purpose while still experimental."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return fn(*args, **kwargs)


def open_storage(url: str):
    """An Optuna storage for ``url``: RDB (sqlite/postgresql/mysql, with heartbeats) or journal.

    ``journal:PATH`` selects Optuna's journal file backend. RDB storages record a heartbeat
    every 30 s, so a trial whose worker died is marked FAIL within two minutes.
    """
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend
            return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):]))
        if url.startswith("sqlite:///"):
            from pathlib import Path
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return _experimental(optuna.storages.RDBStorage, url, heartbeat_interval=30, grace_period=120)
    except Exception as e:
        raise SpecError(f"cannot open the study storage {redact(url)}: "
                        f"{redact(str(e).splitlines()[0])}; check the URL, the server and its "
                        "driver (postgresql needs psycopg2: pip install 'resnext-nas[postgres]')") from None


def make_sampler(cfg: ExperimentConfig) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded. Constraints reach TPE and NSGA-II via ``set_constraint``."""
    s, n = cfg.search, cfg.search.n_trials
    if s.sampler == "tpe":
        return _experimental(optuna.samplers.TPESampler, seed=s.seed, n_startup_trials=min(10, max(3, n // 3)),
                             multivariate=True, group=True, constant_liar=True)
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed, population_size=max(4, min(50, n // 4)))
    if s.sampler == "grid":
        return optuna.samplers.GridSampler(cfg.space.grid(), seed=s.seed)
    return optuna.samplers.RandomSampler(seed=s.seed)


def open_study(cfg: ExperimentConfig, storage_url: str | None = None, create: bool = True) -> optuna.Study:
    """Create or resume the experiment's study; refuse one made with another space/objectives."""
    url = storage_url or cfg.storage_url
    storage = open_storage(url)
    name = cfg.study_name
    try:
        if create:
            study = optuna.create_study(storage=storage, study_name=name, directions=cfg.directions,
                                        sampler=make_sampler(cfg), load_if_exists=True)
        else:
            study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(cfg))
    except KeyError:
        raise SpecError(f"no study '{name}' in {redact(url)}; run `resnext-nas search` first") from None
    fp = fingerprint(cfg)
    recorded = study.user_attrs.get("fingerprint")
    if recorded is None and create:
        study.set_user_attr("fingerprint", fp)
        study.set_user_attr("objectives", list(cfg.objectives))
        study.set_user_attr("space", cfg.space.to_dict())
    elif recorded is not None and recorded != fp:
        raise SpecError(
            f"study '{name}' in {redact(url)} was made with a different space, objectives, "
            f"constraints or dataset (recorded objectives: {study.user_attrs.get('objectives')}); "
            "set search.study_name to a new name (e.g. --set search.study_name=NAME) or delete the old study"
        )
    return study


@dataclass
class Row:
    """One finished trial as the Pareto code and the tables see it."""

    number: int
    values: dict[str, float]
    feasible: bool
    spec: dict
    attrs: dict

    @classmethod
    def from_trial(cls, t: optuna.trial.FrozenTrial, objectives: tuple[str, ...]) -> Row:
        return cls(t.number, dict(zip(objectives, t.values, strict=True)),
                   all(v <= 0 for v in t.constraints.values()), t.user_attrs.get("spec", {}), t.user_attrs)


def finished_rows(study: optuna.Study, objectives: tuple[str, ...]) -> list[Row]:
    return [Row.from_trial(t, objectives) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]


def pareto_rows(rows: list[Row], directions: list[str]) -> list[Row]:
    """Non-dominated rows among the feasible ones (identical networks all kept)."""
    feasible = [r for r in rows if r.feasible]
    keep = non_dominated([to_losses(list(r.values.values()), directions) for r in feasible])
    return [feasible[i] for i in keep]


class Objective:
    """The function Optuna calls for each trial.

    Args:
        cfg: the experiment.
        splits: train/val tensors already on ``device``.
        device: where trials train.
        tracker: MLflow writer (may be disabled).
        parent_id: the study's MLflow run id.
        progress: progress display.
    """

    def __init__(self, cfg: ExperimentConfig, splits: Splits, device: torch.device, tracker: Tracker,
                 parent_id: str | None, progress: Progress) -> None:
        self.cfg, self.splits, self.device = cfg, splits, device
        self.tracker, self.parent_id, self.progress = tracker, parent_id, progress
        lat_dev = cfg.latency.device
        self.latency_device = device if lat_dev == "train" else resolve_device(lat_dev)

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        cfg = self.cfg
        spec = cfg.space.suggest(trial)
        cx = complexity(spec)
        for key, value in (("spec", spec.to_dict()), ("spec_name", spec.name), ("spec_hash", spec.hash),
                           ("params", cx.params), ("macs", cx.macs)):
            trial.set_user_attr(key, value)
        run_id = self.tracker.start_trial(self.parent_id, cfg.study_name, trial.number,
                                          {"spec_name": spec.name, "spec_hash": spec.hash})
        if run_id:
            trial.set_user_attr("mlflow_run_id", run_id)
        self.progress.trial_started(trial.number, spec.name)
        status = "FAILED"
        try:
            values, metrics, series, tags = self._evaluate(trial, spec, cx)
            status = "FINISHED"
            self.tracker.log(run_id, params=run_params(spec, cfg), metrics=metrics, series=series,
                             tags={"state": tags.pop("state", "complete"), **tags})
            self.tracker.log_text(run_id, spec.to_yaml(), "spec.yaml")
            return values
        except (KeyboardInterrupt, SystemExit):
            status = "KILLED"
            trial.set_user_attr("fail_reason", "interrupted")
            self.tracker.log(run_id, tags={"state": "killed", "fail_reason": "interrupted"})
            raise
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
            trial.set_user_attr("fail_reason", reason[:2000])
            self.tracker.log(run_id, params=run_params(spec, cfg),
                             tags={"state": "failed", "fail_reason": reason[:5000]})
            self.tracker.log_text(run_id, traceback.format_exc(), "traceback.txt")
            raise
        finally:
            self.tracker.end(run_id, status)
            self.progress.trial_finished(trial.number, status)
            release_memory()

    def _evaluate(self, trial: optuna.Trial, spec: NetSpec, cx):
        """Returns (objective values, final metrics, per-epoch series, tags)."""
        cfg = self.cfg
        known = {"params": cx.params, "macs": cx.macs}
        violated = False
        for key, metric in STATIC.items():
            bound = getattr(cfg.constraints, key)
            if bound is not None:
                trial.set_constraint(key, known[metric] - bound)
                violated |= known[metric] > bound
        if violated:  # never built: the sampler still learns the region is infeasible
            placeholder = {"val_accuracy": 0.0, "latency_ms": math.inf, **known}
            trial.set_user_attr("skipped", "over the static budget")
            return (tuple(placeholder[o] for o in cfg.objectives), known, {},
                    {"state": "infeasible", "skipped": "over the static budget"})

        twin = self._twin(trial, spec.hash)
        if twin is not None:  # an identical network was already trained: reuse, do not retrain
            trial.set_user_attr("reused_from", twin.number)
            trial.set_user_attr("seed", twin.user_attrs.get("seed"))
            for key, value in twin.constraints.items():
                trial.set_constraint(key, value)
            metrics = {k: v for k, v in twin.user_attrs.get("metrics", {}).items()}
            trial.set_user_attr("metrics", metrics)
            return tuple(twin.values), metrics, {}, {"reused_from": twin.number}

        seed = trial_seed(cfg.search.seed, trial.number)
        model, result = build_and_train(spec, self.splits, cfg.train, self.device, seed, self.progress.epoch)
        metrics = {**known, "val_accuracy": result.val_accuracy, "train_time_s": result.train_time_s,
                   "train_loss": result.history[-1].train_loss, "epochs": len(result.history)}
        tags = {"seed": seed}
        if cfg.latency.enabled:
            lat = measure_latency(model, spec.in_ch, spec.input_size, cfg.latency, self.latency_device,
                                  bf16=cfg.train.bf16, channels_last=cfg.train.channels_last)
            metrics.update(latency_ms=lat.median_ms, latency_p10_ms=lat.p10_ms,
                           latency_p90_ms=lat.p90_ms, latency_cv=lat.cv)
            tags.update({f"latency.{k}": v for k, v in lat.protocol.items()})
            if cfg.constraints.max_latency_ms is not None:
                trial.set_constraint("max_latency_ms", lat.median_ms - cfg.constraints.max_latency_ms)
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("seed", seed)
        series = {"val_accuracy": [r.val_accuracy for r in result.history],
                  "train_loss": [r.train_loss for r in result.history]}
        return tuple(metrics[o] for o in cfg.objectives), metrics, series, tags

    def _twin(self, trial: optuna.Trial, spec_hash: str):
        """The first completed, trained trial with the same network, if any."""
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.user_attrs.get("spec_hash") == spec_hash and "reused_from" not in t.user_attrs \
                    and "skipped" not in t.user_attrs:
                return t
        return None


def build_and_train(spec: NetSpec, splits: Splits, train_cfg, device: torch.device, seed: int,
                    on_epoch: Callable | None = None):
    """Seed, build and train one network: the same seed gives the same weights and result.

    Returns:
        (model, TrainResult).
    """
    seed_everything(seed, device)  # before building, so the initial weights follow the seed too
    model = build_model(spec)
    return model, train_model(model, splits, train_cfg, device=device, seed=seed, on_epoch=on_epoch)


def run_params(spec: NetSpec, cfg: ExperimentConfig) -> dict:
    """MLflow params of a trial: the NetSpec fields (per-stage ones joined) and training settings."""
    params = {k: v for k, v in spec.to_dict().items() if k != "stages"}
    params["num_stages"] = len(spec.stages)
    for field in ("depth", "bottleneck_ch", "stride", "groups", "base_width"):
        params[field] = ",".join(str(getattr(s, field)) for s in spec.stages)
    params.update({f"train.{k}": v for k, v in vars(cfg.train).items()})
    params["dataset"] = cfg.data.dataset
    return params


def release_memory() -> None:
    """Drop what a finished trial left behind so memory does not creep over many trials."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class Summary:
    study: optuna.Study
    front: list[Row]
    rows: list[Row]
    parent_id: str | None
    tracker: Tracker


class _FailureLimit:
    """Stop the study after ``limit`` failed trials in a row (this worker's view)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.streak, self.last = limit, 0, ""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.FAIL:
            self.streak += 1
            self.last = trial.user_attrs.get("fail_reason", "")
            if self.streak >= self.limit:
                study.stop()
        else:
            self.streak = 0


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_search(cfg: ExperimentConfig, *, storage_url: str | None = None, quiet: bool = False,
               on_trial: Callable[[Summary], None] | None = None) -> Summary:
    """Run (or resume) the experiment's study until ``search.n_trials`` trials completed.

    Args:
        cfg: the experiment.
        storage_url: Optuna storage URL overriding ``search.storage``.
        quiet: print nothing but errors (for CI).
        on_trial: called after every trial with the current summary.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    quiet_mlflow()
    check_budget(cfg)
    device = resolve_device(cfg.train.device)
    study = open_study(cfg, storage_url)
    tracker = Tracker(cfg.tracking, cfg.name)
    tracker.setup()
    url = storage_url or cfg.storage_url
    parent_id = tracker.study_run(cfg.study_name, params={
        "storage": redact(url), "sampler": cfg.search.sampler, "n_trials": cfg.search.n_trials,
        "seed": cfg.search.seed, "objectives": ",".join(cfg.objectives), "dataset": cfg.data.dataset,
        "space_size": cfg.space.size(), **{f"constraints.{k}": v for k, v in vars(cfg.constraints).items()},
    }, tags={"fingerprint": fingerprint(cfg)})
    tracker.log_text(parent_id, json.dumps(cfg.raw, indent=2, default=str), "experiment.json")
    study.set_user_attr("mlflow_parent_run_id", parent_id)

    splits = load_splits(cfg.data, device)
    progress = Progress(cfg.search.n_trials, quiet=quiet)
    objective = Objective(cfg, splits, device, tracker, parent_id, progress)
    limit = _FailureLimit(cfg.search.max_consecutive_failures)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        summary = summarize(study, cfg, tracker, parent_id)
        tracker.sync_pareto_tags(parent_id, {r.number for r in summary.front})
        progress.pareto(len(summary.front), sum(1 for r in summary.rows))
        if on_trial:
            on_trial(summary)

    done = len(finished_rows(study, cfg.objectives))
    remaining = cfg.search.n_trials - done
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    status = "FINISHED"
    try:
        if remaining > 0:
            progress.start(done)
            study.optimize(
                objective, timeout=cfg.search.timeout_s, catch=(Exception,), gc_after_trial=False,
                callbacks=[optuna.study.MaxTrialsCallback(cfg.search.n_trials, states=(TrialState.COMPLETE,)),
                           limit, after_trial],
            )
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        progress.close()
        summary = summarize(study, cfg, tracker, parent_id)
        log_study_artifacts(summary, cfg)
        tracker.end(parent_id, status)
    if limit.streak >= limit.limit:
        raise StudyAborted(
            f"stopped after {limit.streak} failed trials in a row (last: {limit.last}); completed trials "
            f"are kept: fix the cause and rerun the same command to resume"
        )
    return summary


class StudyAborted(RuntimeError):
    """Too many consecutive trial failures."""


def summarize(study: optuna.Study, cfg: ExperimentConfig, tracker: Tracker, parent_id: str | None) -> Summary:
    rows = finished_rows(study, cfg.objectives)
    return Summary(study, pareto_rows(rows, cfg.directions), rows, parent_id, tracker)


def hypervolume_history(rows: list[Row], cfg: ExperimentConfig) -> list[float]:
    """Hypervolume of the feasible front after each completed trial, in trial order.

    Objectives are scaled so each contributes on a comparable scale: accuracy as 1 - acc
    (reference 1), params/MACs/latency divided by the largest feasible value seen (reference 1.1).
    """
    feasible = [r for r in sorted(rows, key=lambda r: r.number) if r.feasible]
    if not feasible:
        return []
    scale = {o: max(r.values[o] for r in feasible) or 1.0 for o in cfg.objectives}
    ref = [1.0 if o == "val_accuracy" else 1.1 for o in cfg.objectives]

    def point(r: Row):
        return [1 - r.values[o] if o == "val_accuracy" else r.values[o] / scale[o] for o in cfg.objectives]

    points, history = [], []
    for r in feasible:
        points.append(point(r))
        history.append(hypervolume(points, ref))
    return history


def front_table(front: list[Row], objectives: tuple[str, ...]) -> list[dict]:
    """The front as table rows, one per distinct network (the first trial that trained it)."""
    seen, table = set(), []
    for r in sorted(front, key=lambda r: r.number):
        h = r.attrs.get("spec_hash")
        if h in seen:
            continue
        seen.add(h)
        table.append({"trial": r.number, "name": r.attrs.get("spec_name", ""), **r.values,
                      **{k: r.attrs.get(k) for k in ("params", "macs") if k not in r.values},
                      "hash": h})
    return table


def log_study_artifacts(summary: Summary, cfg: ExperimentConfig) -> None:
    """Pareto table (CSV + JSON), plots and hypervolume history on the parent run."""
    tracker, parent = summary.tracker, summary.parent_id
    if parent is None:
        return
    table = front_table(summary.front, cfg.objectives)
    tracker.log_text(parent, json.dumps(table, indent=2), "pareto.json")
    if table:
        cols = list(table[0])
        tracker.log_text(parent, "\n".join([",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in table]),
                         "pareto.csv")
    hv = hypervolume_history(summary.rows, cfg)
    tracker.log(parent, series={"hypervolume": hv},
                metrics={"trials_completed": len(summary.rows), "pareto_size": len(table)})
    from search.plots import pareto_figures
    for name, fig in pareto_figures(summary.rows, summary.front, cfg.objectives).items():
        tracker.log_figure(parent, fig, name)
