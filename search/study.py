"""Running a study: the trial loop of one worker, and the orchestration of a whole search.

``run_search`` (``resnext-nas search``) checks everything a study needs (budget, device, data,
storage, recipe, tracking store) before it records anything, then makes the study, the MLflow
experiment and the parent run once, and runs trials in this process or in worker processes
(``search.worker``) that share the study through its storage. ``join_study``
(``resnext-nas worker``) adds workers from another machine.

``search.n_trials`` counts networks trained to completion: a reused or over-budget proposal,
or one that ran out of memory, is free. A study whose space has no new network left stops.
The modules below this one: ``storage`` (study, recipe, sampler), ``objective`` (one trial),
``recovery`` (lost trials), ``results`` (rows, front, hypervolume, artifacts).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable

import optuna
import torch
from optuna.trial import TrialState

from search import worker
from search.config import ExperimentConfig
from search.data import Splits, check_data, load_splits
from search.devices import resolve_device, unfreeze
from search.errors import RedactLogs, StorageUnavailable, redact, redact_tree
from search.latency import LATENCY_REFERENCE, check_backend, interleaves, reference_latency_ms
from search.objective import Objective, largest_latency_ms
from search.outage import gave_up, patience_of, sync_runs
from search.progress import Progress
from search.recovery import interruptible, lost_while_running, on_stale, reap_lost_trials
from search.report import log_report
from search.results import (
    STATIC,
    TRAINED,
    Ledger,
    Summary,
    describe_counts,
    hv_reference,
    log_study_artifacts,
    outcome_counts,
    study_hypervolume,
    study_spent,
    summarize,
    trial_attrs,
)
from search.storage import create_study, find_study, load_study, make_sampler, sampler_seed
from search.tracking import Tracker, quiet_mlflow
from space.errors import SpecError

POLL_S = 1.0  # how often a worker with nothing to start looks again (and checks for lost trials)
FREE_STREAK = 200  # proposals in a row that train nothing after which a worker stops looking


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


def quiet_libraries() -> None:
    """Optuna at WARNING with passwords redacted, MLflow's migration chatter off."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for handler in logging.getLogger("optuna").handlers:
        if not any(isinstance(f, RedactLogs) for f in handler.filters):
            handler.addFilter(RedactLogs())
    quiet_mlflow()


# -- one worker's loop ----------------------------------------------------------------------------

def space_exhausted(ledger: Ledger, size: int) -> str | None:
    """Why no new network can be trained, or None: every one of the space's ``size`` networks has been seen."""
    if len(ledger.seen) < size:
        return None
    return (f"every one of the space's {size:,} networks has been tried (trained, over budget or out of "
            "memory): no new network is left to train; widen the space or raise the budget to go on")


class _FreeStreak:
    """Counts this worker's proposals in a row that trained nothing (reused, over budget)."""

    def __init__(self) -> None:
        self.streak = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        free = ((trial.state == TrialState.COMPLETE and trial.user_attrs.get("outcome") != TRAINED)
                or (trial.state == TrialState.PRUNED and "reused_from" in (trial.user_attrs.get("pruned") or {})))
        self.streak = self.streak + 1 if free else 0

    def message(self) -> str | None:
        if self.streak < FREE_STREAK:
            return None
        return (f"the sampler's last {self.streak} proposals were networks already tried or over budget: "
                "the space seems to have no new network within the budget; widen it or raise the budget")


def _run_id(ledger: Ledger, trial: optuna.trial.FrozenTrial, number: int) -> str | None:
    """The MLflow run of trial ``number`` (the trial just finished, or one of the ledger's rows)."""
    attrs = trial_attrs(trial) if number == trial.number else ledger.rows[number].attrs
    return attrs.get("mlflow_run_id")


def _optimize(cfg: ExperimentConfig, study: optuna.Study, tracker: Tracker, parent_id: str | None,
              splits: Splits, device: torch.device, *, quiet: bool, label: str = "",
              on_trial: Callable | None = None, owner: bool = False) -> tuple[_FailureLimit, str | None]:
    """This process's trial loop, until the study has ``search.n_trials`` trained networks.

    A worker starts a trial only while trained + running ones fall short of the target; at the
    end it waits for the others' last trials and takes over any that is lost. Returns the
    failure counter (``tripped`` when ``search.max_consecutive_failures`` stopped this worker)
    and why the loop stopped early when the space ran out of new networks.
    """
    n = cfg.search.n_trials
    existing = len(study.get_trials(deepcopy=False))
    if owner and existing == 0:
        seed = cfg.search.seed  # a fresh study run in one process: exactly reproducible
    else:  # a resumed study or one more worker: new draws, not a replay of the first ones
        me = "" if owner else f":{worker.host()}:{os.getpid()}"
        seed = sampler_seed(cfg.search.seed, f"{existing}{me}")
    study.sampler = make_sampler(cfg, seed)

    stream = worker.labelled(sys.stderr, label) if label else None
    if (patience := patience_of(study)) is not None:
        patience.label = label
    budget = cfg.search.budget_epochs
    progress = Progress(n, quiet=quiet, stream=stream, budget_epochs=budget)
    ledger = Ledger(cfg.objectives, cfg.directions).update(study)
    objective = Objective(cfg, splits, device, tracker, parent_id, progress, ledger,
                          study.user_attrs.get(LATENCY_REFERENCE))
    limit, free = _FailureLimit(cfg.search.max_consecutive_failures), _FreeStreak()
    ref, size = study.user_attrs["hv_reference"], cfg.space.size()
    tagged = {r.number for r in ledger.front}
    hv = None  # the hypervolume this worker logged last
    tracker.sync_pareto_tags(parent_id, tagged)  # once; then only the changes

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal tagged, hv
        summary = ledger.update(study).summary(study, parent_id, tracker)
        front = {r.number for r in summary.front}
        changes = {n: "true" for n in front - tagged} | {n: "false" for n in tagged - front}
        if trial.number not in front:
            changes[trial.number] = "false"
        if changes.get(trial.number) == objective.pareto_tags.pop(trial.number, None):
            del changes[trial.number]  # its run ended with the right tag (other workers' trials did not change it)
        tracker.set_pareto_tags({rid: v for n, v in changes.items() if (rid := _run_id(ledger, trial, n)) is not None})
        if front != tagged or hv is None:  # the hypervolume changes only with the front: logged when it does
            value = study_hypervolume(summary.front, ref)
            if value != hv:
                # by trial, and by training epochs spent (the compute curve), in one batch
                tracker.log(parent_id, metrics={"hypervolume": value}, step=trial.number,
                            points=[("hypervolume_by_epochs", value, round(ledger.epochs))])
                hv = value
        tagged = front
        progress.pareto(len(summary.front), summary.counts, ledger.epochs)
        if on_trial:
            on_trial(summary)

    t0 = time.monotonic()
    progress.start(ledger.counts[TRAINED])
    stopped = None
    try:
        while not limit.tripped:
            if reap_lost_trials(study, tracker, ledger.update(study).unfinished):
                ledger.update(study)  # the lost trials are failed now
            trained, running = ledger.counts[TRAINED], ledger.running
            if trained >= n:
                break
            if budget is not None and ledger.epochs >= budget:
                stopped = f"the training budget is spent: {ledger.epochs:g} of {budget:g} epochs"
                print(f"{f'[{label}] ' if label else ''}stopping: {stopped}", file=sys.stderr)
                break
            if cfg.search.timeout_s is not None and time.monotonic() - t0 >= cfg.search.timeout_s:
                break
            if isinstance(study.sampler, optuna.samplers.GridSampler) and study.sampler.is_exhausted(study):
                break  # every network of the grid has been tried
            stopped = space_exhausted(ledger, size) or free.message()
            if stopped:
                print(f"{f'[{label}] ' if label else ''}stopping: {stopped}", file=sys.stderr)
                break
            if trained + running >= n:  # the last trials run elsewhere: wait, take over if one is lost
                time.sleep(POLL_S)
                continue
            objective.trial_id = None  # set as its trial starts: an error before that is no lost trial
            try:
                study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False,
                               callbacks=[limit, free, after_trial])
            except Exception:
                if (down := gave_up(study)) is not None:  # Optuna may have raised something else on the way
                    raise down from None
                if (lost := lost_while_running(study, objective.trial_id, tracker)) is None:
                    raise
                print(f"{f'[{label}] ' if label else ''}trial {lost.number} of this worker was declared lost by "
                      "another process (missed heartbeats) while it ran; its result is dropped", file=sys.stderr)
            if tracker.missed and tracker.reachable():  # the tracking store is back: log what it missed
                sync_runs(study, cfg, tracker, parent_id)
    finally:
        progress.close()
        unfreeze()  # release_memory may have frozen the survivors of each trial
    return limit, stopped


# -- workers --------------------------------------------------------------------------------------

def _open_worker_study(cfg: ExperimentConfig, storage_url: str | None) -> tuple[optuna.Study, Tracker, str | None]:
    """Attach to an existing study and the MLflow experiment and parent run made by ``search``."""
    tracker = Tracker(cfg.tracking, cfg.name)
    study = load_study(cfg, storage_url, on_stale=on_stale(tracker))
    tracker.setup()
    parent_id = study.user_attrs.get("mlflow_parent_run_id") if tracker.enabled else None
    return study, tracker, parent_id


def work(cfg: ExperimentConfig, *, storage_url: str | None = None, quiet: bool = False, label: str = "",
         on_trial: Callable[[Summary], None] | None = None) -> Summary:
    """Run trials of an existing study in this process until it has ``search.n_trials`` trained networks.

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
        StorageUnavailable: the study storage was unreachable past ``search.storage_patience_s``
            or could not be written.
    """
    quiet_libraries()
    device = resolve_device(cfg.train.device)
    splits = load_splits(cfg.data, device)
    study, tracker, parent_id = _open_worker_study(cfg, storage_url)
    with interruptible():
        limit, _ = _optimize(cfg, study, tracker, parent_id, splits, device, quiet=quiet, label=label,
                             on_trial=on_trial)
    summary = summarize(study, cfg, tracker, parent_id)
    if limit.tripped and summary.counts[TRAINED] < cfg.search.n_trials:
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
        if e.code == worker.EXIT_STORAGE:
            return  # the storage is gone: its trials are failed by the next run
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
    down = [e for e in exits if e.code == worker.EXIT_STORAGE]
    if down:
        raise StorageUnavailable(
            f"{len(down)} of {len(exits)} workers stopped because the study storage {redact(url)} could not be "
            f"reached (for search.storage_patience_s = {cfg.search.storage_patience_s:g} s) or written (their lines "
            "above say why); what was recorded is kept: rerun the same command once it is back to resume")
    reap_lost_trials(study, tracker)
    trained = outcome_counts(study)[TRAINED]
    if trained >= cfg.search.n_trials:
        return None
    aborted = [e for e in exits if e.code == worker.EXIT_ABORTED]
    if aborted:
        return (f"{len(aborted)} of {len(exits)} workers stopped after {cfg.search.max_consecutive_failures} "
                f"failed trials in a row (last: {_last_failure(study)}); completed trials are kept: fix the "
                "cause and rerun the same command to resume")
    broken = [e for e in exits if e.code != 0]
    if broken:
        return (f"{trained} of {cfg.search.n_trials} networks trained when the workers ended ("
                + ", ".join(f"w{e.slot.index} {e.how}" for e in broken)
                + "); completed trials are kept: rerun the same command to resume")
    return None  # search.timeout_s, or the space ran out of new networks


# -- a whole search --------------------------------------------------------------------------------

def _prepare(cfg: ExperimentConfig, url: str, slots: list[worker.Slot]):
    """Every check a study needs, in the order a user would fix them; records nothing.

    Returns (device, splits or None, tracker, the existing study or None). Raises SpecError.
    """
    check_budget(cfg)
    device = resolve_device(cfg.train.device)
    check_backend(cfg.latency, cfg.latency.resolve(device))
    if len(slots) == 1:
        splits = load_splits(cfg.data, device)
    else:  # the workers load their own copy; this only checks the data (files, split, memory)
        check_data(cfg.data, device)
        splits = None
    tracker = Tracker(cfg.tracking, cfg.name)
    study = find_study(cfg, url, on_stale=on_stale(tracker))  # the storage answers; a study there has this recipe
    tracker.check()
    return device, splits, tracker, study


def new_study(cfg: ExperimentConfig, storage_url: str | None = None, *, tracker: Tracker | None = None,
              device: torch.device | None = None) -> optuna.Study:
    """Make the experiment's study with its hypervolume reference (measured here when it needs latency)."""
    device = device or resolve_device(cfg.train.device)
    unit = reference_latency_ms(cfg.latency) if interleaves(cfg.latency, cfg.latency.resolve(device)) else None
    needs_latency = "latency_ms" in cfg.objectives and cfg.constraints.max_latency_ms is None
    lat = largest_latency_ms(cfg, device, unit) if needs_latency else None
    return create_study(cfg, storage_url, {"hv_reference": hv_reference(cfg, lat),
                                           **({LATENCY_REFERENCE: unit} if unit else {})},
                        on_stale=on_stale(tracker) if tracker is not None else None)


def open_or_create_study(cfg: ExperimentConfig, storage_url: str | None = None) -> optuna.Study:
    """The experiment's study, made when the storage has none (tests use it to enqueue trials first)."""
    return find_study(cfg, storage_url) or new_study(cfg, storage_url)


def run_search(cfg: ExperimentConfig, *, storage_url: str | None = None, quiet: bool = False,
               on_trial: Callable[[Summary], None] | None = None, workers: int | None = 1) -> Summary:
    """Run (or resume) the experiment's study until ``search.n_trials`` networks are trained.

    Everything is checked first (budget, device, data, storage, the recorded recipe, the
    tracking store); only then are the study, the MLflow experiment and the study's parent
    run made, once, before any worker starts.

    Args:
        cfg: the experiment.
        storage_url: Optuna storage URL overriding ``search.storage``.
        quiet: print nothing but errors (for CI).
        on_trial: called after every trial with the current summary (one worker only).
        workers: worker processes; 1 runs the trials in this process; None = one per GPU
            (pinned) on a GPU machine, else 1.

    Raises:
        SpecError: a check failed; nothing was recorded.
        StudyAborted: repeated trial failures, or every worker died, before ``n_trials``.
        KeyboardInterrupt: Ctrl-C or SIGTERM; the running trials end FAIL (MLflow: KILLED).
        StorageUnavailable: the study storage was unreachable past ``search.storage_patience_s``
            or could not be written; the next run fails the trials it left running.
    """
    quiet_libraries()
    url = storage_url or cfg.storage_url
    slots = worker.plan(workers, cfg.train.device, cfg.train.threads)
    device, splits, tracker, study = _prepare(cfg, url, slots)
    study = study or new_study(cfg, url, tracker=tracker, device=device)
    tracker.setup()
    parent_id = tracker.study_run(
        cfg.study_name,
        params={"objectives": ",".join(cfg.objectives), "dataset": cfg.data.dataset, "seed": cfg.search.seed,
                "space_size": cfg.space.size(), "fingerprint": study.user_attrs["fingerprint"],
                **{f"constraints.{k}": v for k, v in vars(cfg.constraints).items()},
                **{f"hv_reference.{k}": v for k, v in study.user_attrs["hv_reference"].items()}},
        tags={"storage": redact(url), "sampler": cfg.search.sampler, "n_trials": cfg.search.n_trials},
        created={"experiment.json": json.dumps(redact_tree(cfg.raw), indent=2, default=str)})
    if parent_id and study.user_attrs.get("mlflow_parent_run_id") != parent_id:
        study.set_user_attr("mlflow_parent_run_id", parent_id)

    status, short, down = "FINISHED", None, False
    with interruptible():
        try:
            reap_lost_trials(study, tracker)
            if len(slots) == 1:
                limit, _ = _optimize(cfg, study, tracker, parent_id, splits, device, quiet=quiet,
                                     on_trial=on_trial, owner=True)
                short = limit.message() if limit.tripped else None
            else:
                short = _run_workers(cfg, study, tracker, url, slots, quiet)
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except StorageUnavailable:
            status, down = "FAILED", True
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            if down:  # nothing more can be read or written there: the next run fails what was left running
                tracker.end(parent_id, status)
            else:
                reap_lost_trials(study, tracker)
                summary = summarize(study, cfg, tracker, parent_id)
                if short is not None and summary.counts[TRAINED] < cfg.search.n_trials:
                    status = "FAILED"
                if status != "KILLED":  # the runs a tracking outage kept from the store
                    tracker.retry_now()
                    sync_runs(study, cfg, tracker, parent_id)
                tracker.end_orphan_runs(parent_id, {t.number: t.state.name for t in study.get_trials(deepcopy=False)})
                log_study_artifacts(summary, cfg)
                if status != "KILLED":  # Ctrl-C wants out now; the report can be made later (resnext-nas report)
                    log_report(summary, cfg)
                tracker.end(parent_id, status)
    if status == "FAILED":
        raise StudyAborted(short)
    return summary


def end_study_run(study: optuna.Study, cfg: ExperimentConfig, tracker: Tracker, parent_id: str) -> bool:
    """``resnext-nas sync``: end the study's MLflow run if the study ended while the store was away.

    Such a run is still RUNNING, without the front, plots and report the study's end writes.
    When no trial of the study is running (a search still at it ends its run itself), they are
    written now and the run is ended FINISHED. Returns whether it was.
    """
    if tracker.status(parent_id) != "RUNNING":
        return False
    summary = summarize(study, cfg, tracker, parent_id)
    if summary.counts["running"]:
        return False
    log_study_artifacts(summary, cfg)
    log_report(summary, cfg)
    tracker.end(parent_id, "FINISHED")
    return True


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
    slots = worker.plan(workers, cfg.train.device, cfg.train.threads)
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
    log_report(summary, cfg)
    return summary


def end_note(summary: Summary, cfg: ExperimentConfig) -> str:
    """One line for the end of a search: what was trained, reused, skipped and failed."""
    trained = summary.counts[TRAINED]
    short = "" if trained >= cfg.search.n_trials else f" (short of search.n_trials = {cfg.search.n_trials})"
    epochs, seconds = study_spent(summary.study)
    budget = f" of search.budget_epochs = {cfg.search.budget_epochs:g}" if cfg.search.budget_epochs else ""
    return (f"study '{cfg.study_name}': {describe_counts(summary.counts)}{short}; {epochs:g} training epochs{budget}, "
            f"{seconds:.0f} s of training")
