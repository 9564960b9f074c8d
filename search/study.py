"""Search studies: the trial objective, the Optuna study around it, and its bookkeeping.

This module and ``search.cli`` are the only ones that import optuna. A trial goes:
suggest a NetSpec -> analytic params/MACs -> static constraints (a network over budget is
never built) -> reuse the result of an identical network if the study has one -> build,
train briefly, measure latency -> return the objective values; each step is mirrored into the
trial's MLflow run, which always ends FINISHED, FAILED or KILLED.

Several processes can work on one study (``--workers N``, ``resnext-nas worker``): each runs
``work``'s loop against the shared storage. A trial records which process runs it; a trial
whose process died is failed by the next worker that looks (``reap_lost_trials``: the pid on
this host, heartbeats on RDB storages), its MLflow run ended, and another worker takes over.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from search import worker
from search.config import ExperimentConfig, error_line, redact, redact_text, redact_tree
from search.data import Splits, load_splits
from search.latency import measure_latency
from search.pareto import hypervolume, non_dominated, to_losses
from search.progress import Progress
from search.tracking import Tracker, quiet_mlflow
from search.train import NonFiniteLoss, resolve_device, seed_everything, train_model
from space import NetSpec, build_model, complexity
from space.errors import SpecError

STATIC = {"max_params": "params", "max_macs": "macs"}  # constraints known before building
LOST_AFTER = 4  # missed heartbeats after which a running trial is declared lost (RDB storages)
POLL_S = 1.0  # how often a worker with nothing to start looks again (and checks for lost trials)
OOM_ERRORS = (MemoryError, torch.cuda.OutOfMemoryError)
OOM_MARKERS = ("out of memory", "can't allocate memory", "ALLOC_FAILED")


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


def _with_driver(url: str) -> str:
    """``postgresql://`` with the PostgreSQL driver that is installed.

    SQLAlchemy 2.1 reads a bare ``postgresql://`` as psycopg 3; the ``postgres`` extra installs
    psycopg2, so use it when it is the one there.
    """
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def open_storage(url: str, heartbeat_s: int = 30, on_stale: Callable | None = None):
    """An Optuna storage for ``url``: journal file or RDB (sqlite/postgresql/mysql).

    Args:
        url: ``journal:PATH`` (Optuna's journal file: several processes of one machine),
            ``postgresql://...`` (several machines) or ``sqlite:///PATH`` (one process).
        heartbeat_s: RDB storages only: a running trial records a heartbeat this often and is
            declared lost after ``LOST_AFTER`` missed ones.
        on_stale: RDB storages only: called with (study, trial) for each trial Optuna itself
            fails for missed heartbeats (``reap_lost_trials`` usually gets there first).
    """
    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return _experimental(optuna.storages.RDBStorage, _with_driver(url), heartbeat_interval=heartbeat_s,
                             grace_period=LOST_AFTER * heartbeat_s, heartbeat_stale_trial_callback=on_stale)
    except Exception as e:
        raise SpecError(f"cannot open the study storage {redact(url)}: "
                        f"{error_line(e)}; check the URL, the server and its "
                        "driver (postgresql needs psycopg2: pip install 'resnext-nas[postgres]')") from None


def make_sampler(cfg: ExperimentConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded (``seed`` overrides ``search.seed``).

    Constraints reach TPE and NSGA-II via ``set_constraint``; TPE's constant liar keeps
    parallel workers from proposing what another worker is already training.
    """
    s, n = cfg.search, cfg.search.n_trials
    seed = s.seed if seed is None else seed
    if s.sampler == "tpe":
        return _experimental(optuna.samplers.TPESampler, seed=seed, n_startup_trials=min(10, max(3, n // 3)),
                             multivariate=True, group=True, constant_liar=True)
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, n // 4)))
    if s.sampler == "grid":
        return optuna.samplers.GridSampler(cfg.space.grid(), seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def sampler_seed(study_seed: int, salt: str) -> int:
    """A sampler seed of its own for a resumed study or one more worker (same seed, same draws)."""
    return int(hashlib.sha256(f"{study_seed}:sampler:{salt}".encode()).hexdigest()[:8], 16)


def open_study(cfg: ExperimentConfig, storage_url: str | None = None, create: bool = True, *,
               on_stale: Callable | None = None) -> optuna.Study:
    """Create or resume the experiment's study; refuse one made with another space/objectives.

    Args:
        cfg: the experiment.
        storage_url: overrides ``search.storage``.
        create: create the study when missing (else: a clear error).
        on_stale: see ``open_storage``.
    """
    url = storage_url or cfg.storage_url
    storage = open_storage(url, cfg.search.heartbeat_s, on_stale)
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
        self.worker = {**worker.identity(), "threads": torch.get_num_threads()}

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        cfg = self.cfg
        trial.set_user_attr("worker", self.worker)  # first: whoever finds this trial orphaned needs it
        spec = cfg.space.suggest(trial)
        cx = complexity(spec)
        for key, value in (("spec", spec.to_dict()), ("spec_name", spec.name), ("spec_hash", spec.hash),
                           ("params", cx.params), ("macs", cx.macs)):
            trial.set_user_attr(key, value)
        run_id = self.tracker.start_trial(self.parent_id, cfg.study_name, trial.number, {
            "spec_name": spec.name, "spec_hash": spec.hash,
            "worker": f"{self.worker['host']}:{self.worker['pid']}"})
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
        except (KeyboardInterrupt, SystemExit) as e:
            status = "KILLED"
            reason = f"interrupted ({e})" if str(e) else "interrupted"
            self.tracker.log(run_id, tags={"state": "killed", "fail_reason": reason})
            trial.set_user_attr("fail_reason", reason)
            raise
        except Exception as e:
            kind = failure_kind(e)
            reason = redact_text(f"{type(e).__name__}: {e}")
            text = redact_text(traceback.format_exc())
            # The traceback's frames hold the trial's model, activations and gradients: let them
            # go now (an out-of-memory trial must not keep its memory until Optuna drops it).
            traceback.clear_frames(e.__traceback__)
            self.tracker.log(run_id, params=run_params(spec, cfg),
                             tags={"state": "failed", "failure": kind, "fail_reason": reason[:5000]})
            self.tracker.log_text(run_id, text, "traceback.txt")
            trial.set_user_attr("failure", kind)
            trial.set_user_attr("fail_reason", reason[:2000])
            raise
        finally:
            release_memory()
            memory = memory_in_use(self.device)
            self.tracker.log(run_id, metrics={f"memory.{k}": v for k, v in memory.items()})
            self.tracker.end(run_id, status)
            self.progress.trial_finished(trial.number, status)
            with contextlib.suppress(Exception):  # the trial may already be finished (declared lost)
                trial.set_user_attr("memory_after_mb", memory)

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
                if key not in STATIC:  # the static ones are set above, from the same spec
                    trial.set_constraint(key, value)
            metrics = dict(twin.user_attrs.get("metrics", {}))
            trial.set_user_attr("metrics", metrics)
            self.progress.note(f"same network as trial {twin.number}: result reused")
            return tuple(twin.values), metrics, {}, {"reused_from": twin.number}

        seed = trial_seed(cfg.search.seed, trial.number)

        def on_epoch(record) -> None:
            self.progress.epoch(record)
            trial.set_user_attr("epochs_done", record.epoch)

        trial.set_user_attr("epochs_done", 0)  # training has begun (watchers and tests read this)
        model, result = build_and_train(spec, self.splits, cfg.train, self.device, seed, on_epoch)
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
    """Drop what a finished trial left behind so memory does not creep over many trials.

    The survivors of the full collection are long-lived (modules, stores, caches: ~700k objects
    with torch, MLflow, SQLAlchemy and Optuna loaded); ``gc.freeze`` keeps later collections from
    walking them again, which cost ~350 ms per trial (benchmarks/overhead). ``_optimize``
    unfreezes when its loop ends.
    """
    gc.collect()
    gc.freeze()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def memory_in_use(device: torch.device) -> dict[str, float]:
    """This process's resident memory (Linux) and, on CUDA, the tensors allocated, in MiB."""
    out = {}
    try:
        with open("/proc/self/statm") as f:
            out["rss_mb"] = round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    if device.type == "cuda":
        out["cuda_mb"] = round(torch.cuda.memory_allocated(device) / 2**20, 1)
    return out


def failure_kind(e: BaseException) -> str:
    """``out_of_memory``, ``nonfinite_loss`` or ``error``: the reason class recorded with a failed trial."""
    if isinstance(e, NonFiniteLoss):
        return "nonfinite_loss"
    if isinstance(e, OOM_ERRORS) or (isinstance(e, RuntimeError) and any(m in str(e) for m in OOM_MARKERS)):
        return "out_of_memory"
    return "error"


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

    @property
    def tripped(self) -> bool:
        return self.streak >= self.limit

    def message(self) -> str:
        return (f"stopped after {self.streak} failed trials in a row (last: {self.last}); completed trials "
                "are kept: fix the cause and rerun the same command to resume")


class StudyAborted(RuntimeError):
    """The study stopped short of ``search.n_trials``: repeated trial failures, or no worker left."""


class _RedactLogs(logging.Filter):
    """Hide URL passwords in the records (and tracebacks) a library logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact_text(record.getMessage()), ()
        if record.exc_info and issubclass(record.exc_info[0], KeyboardInterrupt):
            record.exc_info = None  # an interruption needs no traceback
        if record.exc_info:
            record.exc_text = redact_text("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
            record.exc_info = None
        return True


def quiet_libraries() -> None:
    """Optuna at WARNING with passwords redacted, MLflow's migration chatter off."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, _RedactLogs) for f in handler.filters):
            handler.addFilter(_RedactLogs())
    quiet_mlflow()


@contextlib.contextmanager
def interruptible():
    """SIGINT and SIGTERM raise KeyboardInterrupt once; further ones are ignored meanwhile.

    So Ctrl-C (which a terminal sends to every worker) followed by the supervisor's SIGTERM
    cannot cut short the recording of the interrupted trial.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


# -- crash recovery ---------------------------------------------------------------------------

def _end_lost_run(tracker: Tracker | None, study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str,
                  status: str) -> None:
    if tracker is None or not tracker.enabled:
        return
    run_id = trial.user_attrs.get("mlflow_run_id") or tracker.find_trial_run(study.study_name, trial.number)
    tracker.log(run_id, tags={"state": "lost", "failure": "lost", "fail_reason": reason})
    tracker.end(run_id, status)


def reap_lost_trials(study: optuna.Study, tracker: Tracker | None = None) -> list[int]:
    """Fail the running trials whose worker is gone, end their MLflow runs; returns their numbers.

    A trial is lost when its worker process (recorded on the trial) no longer runs on this host,
    or, on RDB storages, when it missed ``LOST_AFTER`` heartbeats (a worker on another machine).
    Several workers may look at once: the one whose FAIL lands first ends the MLflow run.

    Args:
        study: the study.
        tracker: ends the lost trials' MLflow runs (KILLED for a dead process, FAILED for
            missed heartbeats).
    """
    here = worker.host()
    lost: dict[int, tuple[optuna.trial.FrozenTrial, str, str]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = t.user_attrs.get("worker")
        if isinstance(who, dict) and who.get("host") == here and not worker.process_alive(who):
            lost[t._trial_id] = (t, f"lost: worker {here} pid {who.get('pid')} died mid-trial", "KILLED")
    storage = study._storage
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if interval:
        for trial_id in storage._get_stale_trial_ids(study._study_id):
            if trial_id not in lost:
                t = storage.get_trial(trial_id)
                who = t.user_attrs.get("worker") or {}
                lost[trial_id] = (t, f"lost: no heartbeat for {LOST_AFTER * interval} s from worker "
                                     f"{who.get('host', '?')} pid {who.get('pid', '?')}", "FAILED")
    numbers = []
    for trial_id, (t, reason, status) in lost.items():
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            storage.set_trial_user_attr(trial_id, "failure", "lost")
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another worker failed it first, and ends its run
        _end_lost_run(tracker, study, t, reason, status)
        numbers.append(t.number)
    return numbers


def _on_stale(tracker: Tracker) -> Callable:
    """Optuna's own heartbeat check failed a trial: end its MLflow run too."""
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        _end_lost_run(tracker, study, trial, "lost: missed heartbeats", "FAILED")
    return callback


# -- running trials -----------------------------------------------------------------------------

def _counts(study: optuna.Study) -> tuple[int, int]:
    """(completed trials, running trials that a live worker has claimed)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    return complete, sum(t.state == TrialState.RUNNING and "worker" in t.user_attrs for t in trials)


def _optimize(cfg: ExperimentConfig, study: optuna.Study, tracker: Tracker, parent_id: str | None, *,
              quiet: bool, label: str = "", on_trial: Callable | None = None, owner: bool = False) -> _FailureLimit:
    """This process's trial loop, until the study has ``search.n_trials`` completed trials.

    A worker starts a trial only while completed + running ones fall short of the target; at the
    end it waits for the others' last trials and takes over any that is lost. Returns the
    failure counter (``tripped`` when ``search.max_consecutive_failures`` stopped this worker).
    """
    n = cfg.search.n_trials
    existing = len(study.get_trials(deepcopy=False))
    if owner and existing == 0:
        seed = cfg.search.seed  # a fresh study run in one process: exactly reproducible
    else:  # a resumed study or one more worker: new draws, not a replay of the first ones
        me = "" if owner else f":{worker.host()}:{os.getpid()}"
        seed = sampler_seed(cfg.search.seed, f"{existing}{me}")
    study.sampler = make_sampler(cfg, seed)

    device = resolve_device(cfg.train.device)
    splits = load_splits(cfg.data, device)
    stream = worker.labelled(sys.stderr, label) if label else None
    progress = Progress(n, quiet=quiet, stream=stream)
    objective = Objective(cfg, splits, device, tracker, parent_id, progress)
    limit = _FailureLimit(cfg.search.max_consecutive_failures)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        summary = summarize(study, cfg, tracker, parent_id)
        tracker.sync_pareto_tags(parent_id, {r.number for r in summary.front})
        progress.pareto(len({r.attrs.get("spec_hash") for r in summary.front}), len(summary.rows))  # distinct networks
        if on_trial:
            on_trial(summary)

    t0 = time.monotonic()
    progress.start(_counts(study)[0])
    try:
        while not limit.tripped:
            reap_lost_trials(study, tracker)
            complete, running = _counts(study)
            if complete >= n:
                break
            if cfg.search.timeout_s is not None and time.monotonic() - t0 >= cfg.search.timeout_s:
                break
            if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study):
                break  # every network of the grid has been tried
            if complete + running >= n:  # the last trials run elsewhere: wait, take over if one is lost
                time.sleep(POLL_S)
                continue
            try:
                study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False,
                               callbacks=[limit, after_trial])
            except UpdateFinishedTrialError:  # declared lost (missed heartbeats) while it ran
                print(f"{f'[{label}] ' if label else ''}a trial of this worker was declared lost by another "
                      "(missed heartbeats); its result is dropped", file=sys.stderr)
    finally:
        progress.close()
        gc.unfreeze()  # release_memory froze the survivors of each trial
    return limit


def _open_worker_study(cfg: ExperimentConfig, storage_url: str | None) -> tuple[optuna.Study, Tracker, str | None]:
    """Attach to an existing study and the MLflow experiment and parent run made by ``search``."""
    tracker = Tracker(cfg.tracking, cfg.name)
    study = open_study(cfg, storage_url, create=False, on_stale=_on_stale(tracker))
    tracker.setup()
    parent_id = study.user_attrs.get("mlflow_parent_run_id") if tracker.enabled else None
    return study, tracker, parent_id


def work(cfg: ExperimentConfig, *, storage_url: str | None = None, quiet: bool = False, label: str = "",
         on_trial: Callable[[Summary], None] | None = None) -> Summary:
    """Run trials of an existing study in this process until it has ``search.n_trials`` completed.

    This is one worker: the study, the MLflow experiment and the parent run were made by
    ``resnext-nas search`` (``run_search``); the parent run's status is left to it.

    Args:
        cfg: the experiment (the same file as the study's).
        storage_url: overrides ``search.storage``.
        quiet: no progress lines.
        label: prefix of this worker's progress lines.
        on_trial: called after every trial with the current summary.

    Raises:
        StudyAborted: this worker saw ``search.max_consecutive_failures`` failures in a row.
    """
    quiet_libraries()
    study, tracker, parent_id = _open_worker_study(cfg, storage_url)
    with interruptible():
        limit = _optimize(cfg, study, tracker, parent_id, quiet=quiet, label=label, on_trial=on_trial)
    summary = summarize(study, cfg, tracker, parent_id)
    if limit.tripped and len(summary.rows) < cfg.search.n_trials:
        raise StudyAborted(limit.message())
    return summary


def _last_failure(study: optuna.Study) -> str:
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    return failed[-1].user_attrs.get("fail_reason", "") if failed else ""


def _run_workers(cfg: ExperimentConfig, study: optuna.Study, tracker: Tracker, url: str,
                 slots: list[worker.Slot], quiet: bool) -> str | None:
    """Run one worker process per slot on the study; returns why the study fell short, if it did."""
    if url.startswith("sqlite"):
        print("warning: SQLite is not made for several writing processes (\"database is locked\"); for "
              "--workers use journal:PATH (the default) or postgresql://", file=sys.stderr)
    if not quiet:
        where = ", ".join(f"w{s.index}" + (f" on GPU {s.gpu}" if s.gpu is not None else "") for s in slots)
        print(f"{len(slots)} workers ({where}), {slots[0].threads} CPU thread(s) each, study "
              f"'{cfg.study_name}' in {redact(url)}", file=sys.stderr)

    def on_exit(e: worker.WorkerExit) -> None:
        reap_lost_trials(study, tracker)
        if e.code != 0:  # its lost trials, whichever process marked them
            here = worker.host()
            lost = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                    if t.user_attrs.get("failure") == "lost"
                    and (t.user_attrs.get("worker") or {}).get("pid") == e.pid
                    and (t.user_attrs.get("worker") or {}).get("host") == here]
            print(f"[w{e.slot.index}] worker pid {e.pid} {e.how}"
                  + (f"; its trial{'s' if len(lost) > 1 else ''} {', '.join(map(str, lost))} "
                     f"{'are' if len(lost) > 1 else 'is'} marked failed" if lost else ""), file=sys.stderr)

    payload = {"raw": cfg.raw, "name": cfg.name, "storage": url, "quiet": quiet}
    exits = worker.supervise(slots, payload, on_exit)
    reap_lost_trials(study, tracker)
    complete, _ = _counts(study)
    if complete >= cfg.search.n_trials:
        return None
    aborted = [e for e in exits if e.code == worker.EXIT_ABORTED]
    if aborted:
        return (f"{len(aborted)} of {len(exits)} workers stopped after {cfg.search.max_consecutive_failures} "
                f"failed trials in a row (last: {_last_failure(study)}); completed trials are kept: fix the "
                "cause and rerun the same command to resume")
    broken = [e for e in exits if e.code != 0]
    if broken:
        return (f"{complete} of {cfg.search.n_trials} trials completed when the workers ended ("
                + ", ".join(f"w{e.slot.index} {e.how}" for e in broken)
                + "); completed trials are kept: rerun the same command to resume")
    return None  # search.timeout_s


def run_search(cfg: ExperimentConfig, *, storage_url: str | None = None, quiet: bool = False,
               on_trial: Callable[[Summary], None] | None = None, workers: int | None = 1) -> Summary:
    """Run (or resume) the experiment's study until ``search.n_trials`` trials completed.

    The study, the MLflow experiment and the study's parent run are made here, once, before
    any worker starts.

    Args:
        cfg: the experiment.
        storage_url: Optuna storage URL overriding ``search.storage``.
        quiet: print nothing but errors (for CI).
        on_trial: called after every trial with the current summary (one worker only).
        workers: worker processes; 1 runs the trials in this process; None = one per GPU
            (pinned) on a GPU machine, else 1.

    Raises:
        StudyAborted: repeated trial failures, or every worker died, before ``n_trials``.
        KeyboardInterrupt: Ctrl-C or SIGTERM; the running trials end FAIL (MLflow: KILLED).
    """
    quiet_libraries()
    check_budget(cfg)
    url = storage_url or cfg.storage_url
    slots = worker.plan(workers, cfg.train.device)
    tracker = Tracker(cfg.tracking, cfg.name)
    study = open_study(cfg, url, on_stale=_on_stale(tracker))
    tracker.setup()
    parent_id = tracker.study_run(cfg.study_name, params={
        "storage": redact(url), "sampler": cfg.search.sampler, "n_trials": cfg.search.n_trials,
        "seed": cfg.search.seed, "objectives": ",".join(cfg.objectives), "dataset": cfg.data.dataset,
        "space_size": cfg.space.size(), **{f"constraints.{k}": v for k, v in vars(cfg.constraints).items()},
    }, tags={"fingerprint": fingerprint(cfg)})
    tracker.log_text(parent_id, json.dumps(redact_tree(cfg.raw), indent=2, default=str), "experiment.json")
    study.set_user_attr("mlflow_parent_run_id", parent_id)

    status, short = "FINISHED", None
    with interruptible():
        try:
            reap_lost_trials(study, tracker)
            if len(slots) == 1:
                limit = _optimize(cfg, study, tracker, parent_id, quiet=quiet, on_trial=on_trial, owner=True)
                short = limit.message() if limit.tripped else None
            else:
                short = _run_workers(cfg, study, tracker, url, slots, quiet)
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            reap_lost_trials(study, tracker)
            summary = summarize(study, cfg, tracker, parent_id)
            if short is not None and len(summary.rows) < cfg.search.n_trials:
                status = "FAILED"
            tracker.end_orphan_runs(parent_id, {t.number: t.state.name for t in study.get_trials(deepcopy=False)})
            log_study_artifacts(summary, cfg)
            tracker.end(parent_id, status)
    if status == "FAILED":
        raise StudyAborted(short)
    return summary


def join_study(cfg: ExperimentConfig, *, storage_url: str | None = None, workers: int | None = None,
               quiet: bool = False) -> Summary:
    """``resnext-nas worker``: this machine joins a study started by ``resnext-nas search``.

    Args:
        cfg: the experiment (the same file and overrides as the study's).
        storage_url: the shared storage (``postgresql://...``), overriding ``search.storage``.
        workers: worker processes here; None = one per GPU, else 1.
        quiet: no progress lines.

    The parent run's tables and plots are brought up to date at the end; its status is left to
    the ``search`` process that owns it.
    """
    slots = worker.plan(workers, cfg.train.device)
    if len(slots) == 1:
        summary = work(cfg, storage_url=storage_url, quiet=quiet)
    else:
        quiet_libraries()
        url = storage_url or cfg.storage_url
        study, tracker, parent_id = _open_worker_study(cfg, url)
        with interruptible():
            short = _run_workers(cfg, study, tracker, url, slots, quiet)
        summary = summarize(study, cfg, tracker, parent_id)
        if short is not None:
            raise StudyAborted(short)
    log_study_artifacts(summary, cfg)
    return summary


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
    from search.plots import close, pareto_figures

    figures = pareto_figures(summary.rows, summary.front, cfg.objectives)
    for name, fig in figures.items():
        tracker.log_figure(parent, fig, name)
    close(figures)  # pyplot keeps every figure alive until closed
