"""Trials that did not end by themselves: a worker that died, a machine that went silent, Ctrl-C.

A trial records which process runs it (``search.worker.identity``); a trial whose process died
is failed by the next worker that looks (``reap_lost_trials``: the pid on this host, heartbeats
on RDB storages), its MLflow run ended, and another worker takes over. SIGINT/SIGTERM become one
KeyboardInterrupt (``interruptible``), so the running trial is recorded as failed before exiting.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from search import worker
from search.results import trial_attrs
from search.storage import LOST_AFTER
from search.tracking import Tracker


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



def _end_lost_run(tracker: Tracker | None, study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str,
                  status: str) -> None:
    if tracker is None or not tracker.enabled:
        return
    run_id = trial_attrs(trial).get("mlflow_run_id") or tracker.find_trial_run(study.study_name, trial.number)
    tracker.log(run_id, tags={"state": "lost", "failure": "lost", "fail_reason": reason})
    tracker.end(run_id, status)


def lost_while_running(study: optuna.Study, trial_id: int | None,
                       tracker: Tracker | None) -> optuna.trial.FrozenTrial | None:
    """The trial this worker ran last, if another process failed it while it ran (declared lost); else None.

    Optuna's ``study.optimize`` then raises as it records the trial (``UpdateFinishedTrialError``,
    ``ValueError`` or ``AssertionError``, depending on where it finds the trial finished): the
    worker drops the result and goes on. The trial's MLflow run, which the worker ended as its
    own, is ended again as lost, as the process that failed it did. A trial the worker failed
    itself records its own ``failure`` kind and is not taken for a lost one.
    """
    if trial_id is None:
        return None
    t = study._storage.get_trial(trial_id)
    if t.state != TrialState.FAIL or t.user_attrs.get("failure", "lost") != "lost":
        return None
    _end_lost_run(tracker, study, t, t.user_attrs.get("fail_reason", "lost: missed heartbeats"), "FAILED")
    return t


def reap_lost_trials(study: optuna.Study, tracker: Tracker | None = None,
                     unfinished: list[optuna.trial.FrozenTrial] | None = None) -> list[int]:
    """Fail the running trials whose worker is gone, end their MLflow runs; returns their numbers.

    A trial is lost when its worker process (recorded on the trial) no longer runs on this host,
    or, on RDB storages, when it missed ``LOST_AFTER`` heartbeats (a worker on another machine).
    Several workers may look at once: the one whose FAIL lands first ends the MLflow run.

    Args:
        study: the study.
        tracker: ends the lost trials' MLflow runs (KILLED for a dead process, FAILED for
            missed heartbeats).
        unfinished: the study's unfinished trials if the caller knows them (a ``Ledger``'s, just
            updated: only trials from its low-water mark on, so the cost does not grow with the
            study); else every running trial of the study is looked at.
    """
    here = worker.host()
    lost: dict[int, tuple[optuna.trial.FrozenTrial, str, str]] = {}
    if unfinished is None:
        unfinished = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in unfinished:
        if t.state != TrialState.RUNNING:
            continue
        who = t.user_attrs.get("worker")
        if isinstance(who, dict) and who.get("host") == here and not worker.process_alive(who):
            lost[t._trial_id] = (t, f"lost: worker {here} pid {who.get('pid')} died mid-trial", "KILLED")
    # Optuna's public ``fail_stale_trials`` fails stale trials first and reports after, when a
    # finished trial's attributes can no longer be written: the reason would be lost, so the
    # stale trials are listed and failed here, each with its reason recorded first.
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


def on_stale(tracker: Tracker) -> Callable:
    """Optuna's own heartbeat check failed a trial: end its MLflow run too."""
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        _end_lost_run(tracker, study, trial, "lost: missed heartbeats", "FAILED")
    return callback
