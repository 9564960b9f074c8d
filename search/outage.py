"""Riding out a study storage that goes away: retries with a patience, and a journal that stays readable.

Every Optuna storage resnext-nas opens is one of the classes here (``open_storage`` makes
them): Optuna's own RDB and journal storages, each public call of which goes through
``Patience.call``. A call that fails because the storage cannot be reached (a PostgreSQL
restart or failover, a dropped connection, SQLite busy) is retried with exponential backoff and
jitter, one line at a time on stderr (``storage unreachable (reason), retrying in Ns; waited M s
of P``), until the storage answers or ``search.storage_patience_s`` has passed since it stopped
answering; then ``StorageUnavailable`` is raised (exit status 3) and every later call of the
process raises it at once, so the command stops instead of waiting again.

What keeps a study whole through an outage:

- Pooled connections are checked before use (``pool_pre_ping``), so a restarted server's dead
  connections are replaced instead of failing the first call after it.
- A running trial's heartbeats and progress attributes are best effort (``best_effort``):
  training goes on while the storage is away, and the trial is recorded when it is back.
- Heartbeats missed during an outage are not a lost worker: for one grace period after a
  process last saw the storage fail, it declares no trial lost by heartbeat
  (``_get_stale_trial_ids``), so every worker gets to record its heartbeat, and its trial,
  first.
- A journal write that fails (a full disk, a read-only filesystem) is undone before the error
  is raised: the journal never keeps half a line, so the next run reads it and resumes.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend
from optuna.storages.journal._file import get_lock_file
from optuna.trial import TrialState

from search.errors import StorageUnavailable, error_line, redact

BACKOFF_S = (0.5, 5.0)  # first wait and longest wait between two tries of an unreachable storage
SAY_EVERY_S = 10.0  # at most one "storage unreachable" line this often while a call waits

_local = threading.local()


@contextlib.contextmanager
def best_effort():
    """Storage calls made inside this block are tried once: an unreachable storage skips them.

    For what the study can do without (a trial's progress attributes): training goes on
    through an outage instead of waiting for it.
    """
    before = getattr(_local, "best_effort", False)
    _local.best_effort = True
    try:
        yield
    finally:
        _local.best_effort = before


def unreachable(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) says the storage could not be reached, not that a call was wrong.

    SQLAlchemy's ``OperationalError`` and ``InterfaceError`` (connection refused or reset, server
    shutting down or starting up, database locked) and any DBAPI error that invalidated its
    connection; Optuna wraps them in ``StorageInternalError``.
    """
    from sqlalchemy import exc

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, exc.OperationalError | exc.InterfaceError):
            return True
        if isinstance(e, exc.DBAPIError) and e.connection_invalidated:
            return True
        e = e.__cause__ or e.__context__
    return False


def _reason(e: BaseException) -> str:
    """The root cause's first line: ``connection refused`` rather than Optuna's wrapper text."""
    while (e.__cause__ or e.__context__) is not None and not str(getattr(e, "orig", "") or ""):
        e = e.__cause__ or e.__context__
    orig = getattr(e, "orig", None)
    text = error_line(orig if orig is not None else e)
    return text[:200]


class Patience:
    """How one process waits for its study storage: shared by its threads, one clock per outage.

    Args:
        name: the storage as users see it (password hidden).
        patience_s: how long an unreachable storage is waited for.
        say: where the one-line notices go (stderr).
    """

    def __init__(self, name: str, patience_s: float, say: Callable[[str], None] | None = None) -> None:
        self.name, self.patience_s = name, float(patience_s)
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.label = ""  # prefix of this process's lines (``w0``)
        self.down_since: float | None = None  # monotonic time of the first failure of the current outage
        self.last_failure = -float("inf")  # monotonic time of the last failure seen
        self.gave_up: StorageUnavailable | None = None
        self._said = -float("inf")
        self._lock = threading.Lock()

    def _line(self, text: str) -> None:
        self.say(f"[{self.label}] {text}" if self.label else text)

    def _failed(self, e: BaseException) -> float:
        """Note a failure; returns how long this outage has lasted."""
        now = time.monotonic()
        with self._lock:
            self.last_failure = now
            if self.down_since is None:
                self.down_since = now
                self._said = -float("inf")
            return now - self.down_since

    def _answered(self) -> None:
        if self.down_since is None:
            return
        with self._lock:
            if self.down_since is None:
                return
            waited = time.monotonic() - self.down_since
            self.down_since = None
        self._line(f"storage {self.name} reachable again after {waited:.0f} s; the study goes on")

    def give_up(self, reason: str) -> StorageUnavailable:
        """The error that stops the command; every later call raises it at once."""
        if self.gave_up is None:
            self.gave_up = StorageUnavailable(
                f"the study storage {self.name} has been unreachable for {self.patience_s:g} s "
                f"(search.storage_patience_s; last error: {reason}); what was recorded is kept: rerun the same "
                "command once it is back to resume")
        return self.gave_up

    def call(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)``, retried while the storage cannot be reached (see the module)."""
        if self.gave_up is not None:
            if getattr(_local, "best_effort", False):
                return None
            raise self.gave_up
        if getattr(_local, "depth", 0):  # a storage method calling another: the outer call retries
            return fn(*args, **kwargs)
        tries = 0
        while True:
            _local.depth = getattr(_local, "depth", 0) + 1
            try:
                result = fn(*args, **kwargs)
            except UpdateFinishedTrialError:
                if tries and fn.__name__ == "set_trial_state_values" and self._landed(args, kwargs):
                    return True  # the write before the connection dropped had been committed
                raise
            except Exception as e:
                if not unreachable(e):
                    raise
                waited = self._failed(e)
                if getattr(_local, "best_effort", False):
                    if waited == 0.0 or time.monotonic() - self._said >= SAY_EVERY_S * 3:
                        self._said = time.monotonic()
                        self._line(f"storage unreachable ({_reason(e)}); training goes on, waited {waited:.0f} s "
                                   f"of {self.patience_s:g}")
                    return None
                if waited >= self.patience_s:
                    raise self.give_up(_reason(e)) from None
                tries += 1
                delay = min(BACKOFF_S[1], BACKOFF_S[0] * 2 ** (tries - 1)) * random.uniform(0.5, 1.0)
                delay = min(delay, max(0.05, self.patience_s - waited))
                if time.monotonic() - self._said >= SAY_EVERY_S:
                    self._said = time.monotonic()
                    self._line(f"storage unreachable ({_reason(e)}), retrying in {delay:.1f} s; waited "
                               f"{waited:.0f} s of {self.patience_s:g}")
                time.sleep(delay)
                continue
            finally:
                _local.depth -= 1
            self._answered()
            return result

    def _landed(self, args: tuple, kwargs: dict) -> bool:
        storage, trial_id = args[0], args[1]
        state = kwargs.get("state", args[2] if len(args) > 2 else None)
        with contextlib.suppress(Exception):
            return storage.get_trial(trial_id).state == state and state != TrialState.RUNNING
        return False

    def quiet(self, grace_s: float) -> bool:
        """Whether an outage ended too recently to tell a silent worker from one that could not write."""
        return time.monotonic() - self.last_failure < grace_s + 2 * BACKOFF_S[1]


# the calls of every storage that go through the patience: BaseStorage's and BaseHeartbeat's, and
# the RDB storage's private ones that Optuna's _CachedStorage (the study's view of it) calls directly
_CALLS = sorted({name for base in (BaseStorage, BaseHeartbeat) for name, f in vars(base).items()
                 if callable(f) and not name.startswith("__")
                 and name not in ("get_heartbeat_interval", "get_heartbeat_stale_trial_callback",
                                  "get_failed_trial_callback", "remove_session")}
                | {"_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials"})


def _patient(cls):
    """Route every storage call of ``cls`` (a subclass of an Optuna storage) through ``self.patience``."""
    for name in _CALLS:
        method = getattr(cls, name, None)
        if method is None or name in vars(cls):  # the class's own: it calls the patience itself
            continue

        def make(method):
            @functools.wraps(method)
            def call(self, *args, **kwargs):
                return self.patience.call(method, self, *args, **kwargs)
            return call
        setattr(cls, name, make(method))
    return cls


@_patient
class PatientRDBStorage(RDBStorage):
    """Optuna's RDB storage that waits for an unreachable server (see the module).

    Args:
        url: the database URL.
        patience: how this process waits.
        wait_to_open: whether opening it waits for an unreachable server too (it answered before).
        kwargs: ``RDBStorage``'s.
    """

    def __init__(self, url: str, patience: Patience, wait_to_open: bool = False, **kwargs) -> None:
        self.patience = patience
        engine_kwargs = {"pool_pre_ping": True, **(kwargs.pop("engine_kwargs", None) or {})}
        if wait_to_open:
            patience.call(RDBStorage.__init__, self, url, engine_kwargs=engine_kwargs, **kwargs)
        else:
            super().__init__(url, engine_kwargs=engine_kwargs, **kwargs)

    def record_heartbeat(self, trial_id: int) -> None:
        with best_effort():  # a missed heartbeat must not stop the training
            self.patience.call(RDBStorage.record_heartbeat, self, trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        if self.patience.quiet(self.grace_period or 0):
            return []  # every worker missed its heartbeats while the storage was away
        return self.patience.call(RDBStorage._get_stale_trial_ids, self, study_id)


class JournalWriteError(OSError):
    """A journal write that failed and was undone (the file is as it was before it)."""


class SafeJournalFileBackend(JournalFileBackend):
    """Optuna's journal file, each append all or nothing: a failed write is cut back off the file."""

    def append_logs(self, logs: list[dict]) -> None:
        data = ("\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n").encode("utf-8")
        with get_lock_file(self._lock):
            fd = os.open(self._file_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                start = os.fstat(fd).st_size
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                    raise
            finally:
                os.close(fd)


@_patient
class PatientJournalStorage(JournalStorage):
    """Optuna's journal storage on ``SafeJournalFileBackend``: a write that cannot land stops the command.

    A full disk or a read-only file is no outage to wait for: the first failed write raises
    ``StorageUnavailable`` naming the file and the cause, and the process writes nothing more.
    """

    def __init__(self, path: str, patience: Patience) -> None:
        self.patience, self.path = patience, path
        super().__init__(SafeJournalFileBackend(path))

    def _write_log(self, op_code: int, extra_fields: dict) -> None:
        try:
            super()._write_log(op_code, extra_fields)
        except OSError as e:
            cause = os.strerror(e.errno) if e.errno else error_line(e)
            hint = {errno.ENOSPC: "free some space there", errno.EDQUOT: "free some space there",
                    errno.EROFS: "make it writable", errno.EACCES: "make it writable"}.get(e.errno, "fix it")
            self.patience.gave_up = StorageUnavailable(
                f"cannot write the study journal {self.path}: {cause}; the journal is left as it was before "
                f"this write: {hint} (or move search.storage) and rerun the same command to resume")
            raise self.patience.gave_up from None


def patience_of(study: optuna.Study) -> Patience | None:
    """The ``Patience`` of a study's storage (None for a storage opened elsewhere)."""
    storage = getattr(study, "_storage", None)
    storage = getattr(storage, "_backend", storage)
    return getattr(storage, "patience", None)


def gave_up(study: optuna.Study) -> StorageUnavailable | None:
    """Why the study's storage was given up in this process, or None."""
    patience = patience_of(study)
    return patience.gave_up if patience is not None else None


def open_patient(url: str, patience_s: float, name: str | None = None, wait_to_open: bool = False,
                 **rdb_kwargs) -> BaseStorage:
    """The storage for ``url`` (``journal:PATH`` or an RDB URL with its driver), waiting ``patience_s``.

    Args:
        url: the storage URL.
        patience_s: ``search.storage_patience_s``.
        name: the storage in messages (default: ``url``, password hidden).
        wait_to_open: an RDB server that cannot be reached is waited for when opening it too.
        rdb_kwargs: ``RDBStorage``'s (heartbeats).
    """
    patience = Patience(redact(name or url), patience_s)
    if url.startswith("journal:"):
        return PatientJournalStorage(url[len("journal:"):], patience)
    return PatientRDBStorage(url, patience, wait_to_open, **rdb_kwargs)


# -- a tracking store that went away: its runs, written again from the Optuna record -------------

_STATE = {"trained": "complete", "reused": "reused", "over_budget": "infeasible", "out_of_memory": "infeasible",
          "pruned": "pruned"}


def trial_record(t: optuna.trial.FrozenTrial, cfg, on_front: bool) -> tuple[str, dict]:
    """(status, record) of a finished trial's MLflow run, rebuilt from its Optuna record.

    What the trial's own run would have got (``search.objective``): its network and training
    settings as params, its metrics and learning curve, its outcome and Pareto tags. The tag
    ``restored`` says the run was written from the Optuna record.

    Args:
        t: a finished trial.
        cfg: the experiment.
        on_front: whether it is on the study's feasible Pareto front.
    """
    from search.objective import run_params
    from search.results import NETWORK, trial_attrs
    from space import NetSpec

    attrs = trial_attrs(t)
    net = t.user_attrs.get(NETWORK, {})
    who = attrs.get("worker") or {}
    tags = {"restored": "optuna", "worker": f"{who.get('host', '?')}:{who.get('pid', '?')}"}
    if net.get("spec"):
        tags.update(spec_name=net["spec_name"], spec_hash=net["spec_hash"],
                    spec=json.dumps(net["spec"], separators=(",", ":")))
    params: dict = {}
    if net.get("spec"):
        params = run_params(NetSpec.from_dict(net["spec"]), cfg)
        if "threads" in attrs:
            params["train.threads"] = attrs["threads"]
    metrics = dict(attrs.get("metrics") or (attrs.get("pruned") or {}).get("metrics") or {})
    metrics.update({f"memory.{k}": v for k, v in (attrs.get("memory_after_mb") or {}).items()})
    curve = attrs.get("curve") or {}
    series = {k: v for k, v in curve.items() if k != "elapsed_s"}
    outcome = attrs.get("outcome")
    for key in ("outcome", "reused_from", "seed", "failure", "fail_reason"):
        if attrs.get(key) is not None:
            tags[key] = str(attrs[key])[:5000]
    if t.state == TrialState.FAIL:
        tags["state"] = "lost" if attrs.get("failure") == "lost" else "failed"
        status = "KILLED" if str(attrs.get("fail_reason", "")).startswith("interrupted") else "FAILED"
    else:
        tags["state"] = "pruned" if t.state == TrialState.PRUNED else _STATE.get(outcome, "complete")
        status = "FINISHED"
    tags["pareto"] = "true" if on_front else "false"
    return status, {"params": params, "metrics": metrics, "series": series, "tags": tags}


def sync_runs(study: optuna.Study, cfg, tracker, parent_id: str | None) -> dict[str, int] | None:
    """Make a study's MLflow runs match its Optuna record; returns what was written, None if the store is away.

    Every finished trial gets a run with its record: one the tracking store never got is created,
    one left RUNNING (its end was not written) is completed and ended. The ``pareto`` tags are
    then set from the study's front, so the dashboard shows what ``resnext-nas pareto`` does.
    Runs that already ended are left as they are; running trials are left to their workers.

    Args:
        study: the study (its Optuna storage is the record).
        cfg: the experiment.
        tracker: the study's tracker (its experiment looked up).
        parent_id: the study's parent run.
    """
    from search.results import finished_rows, pareto_rows, trial_attrs

    if not tracker.enabled or parent_id is None:
        return {}
    tracker.missed = False
    runs = tracker.runs_by_trial(parent_id)
    if runs is None:
        return None
    trials = study.get_trials(deepcopy=False)
    front = {r.number for r in pareto_rows(finished_rows(study, cfg.objectives), cfg.directions)}
    done = {"created": 0, "ended": 0}
    for t in trials:
        if not t.state.is_finished():
            continue
        mine = runs.get(t.number, [])
        linked = trial_attrs(t).get("mlflow_run_id")
        if any(status != "RUNNING" for _, status in mine):
            continue  # its run has its record
        run_id = next((rid for rid, _ in mine if rid == linked), mine[0][0] if mine else None)
        status, record = trial_record(t, cfg, t.number in front)
        if tracker.restore_run(parent_id, study.study_name, t.number, run_id, status, record) is None:
            return None
        done["ended" if run_id else "created"] += 1
    tracker.sync_pareto_tags(parent_id, front)
    return None if tracker.missed else done
