"""Changes proposed to modules the benchmarks do not own, as patches the benchmarks can apply.

``search/study.py`` and ``search/tracking.py`` belong to other module owners, so the changes the
overhead and memory benchmarks argue for live here, in the exact form proposed, and are patched
in (``unittest.mock.patch.object``) only while a benchmark measures them next to the current code:

- ``release_memory_frozen`` for ``search.study.release_memory``: after the per-trial full
  ``gc.collect()``, ``gc.freeze()`` the survivors, so the next trial's collection walks only the
  objects created since (torch, MLflow, SQLAlchemy and Optuna keep ~700,000 long-lived objects;
  walking them all takes ~350 ms per trial on a 2-core EPYC). ``run_search`` calls
  ``gc.unfreeze()`` when the study ends (its ``finally:``), so a process that runs several
  studies (the tests) gets its objects back into normal collection.
- ``sync_pareto_tags_incremental`` for ``search.tracking.Tracker.sync_pareto_tags``: read back
  only the runs whose ``pareto`` tag can change (tagged ``true``, or not tagged yet) instead of
  every run of the study with all its params and metrics after every trial. A trial that left the
  front never returns to it (completed trials' values never change), so ``false`` is final. The
  current code's per-trial cost grows with the number of trials (~1 ms per earlier trial here).
- ``sqlite_wal`` (for ``search/study.py`` or ``search/tracking.py``, before the stores open):
  SQLite connections in WAL mode with ``synchronous=NORMAL``. A trial makes ~48 commits to the
  two SQLite stores and each is an fsync in SQLite's default rollback-journal mode, so a busy
  disk multiplies the per-trial overhead; in WAL mode with NORMAL sync a commit does not fsync
  (the WAL is synced at checkpoints). Trade-off: after a power loss (not a process crash) the
  last few committed transactions can be lost; WAL needs a local filesystem, as SQLite's
  locking already does. Multi-machine studies use a server database and are unaffected.
"""

from __future__ import annotations

import gc
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager
from unittest import mock

import torch
from sqlalchemy import event
from sqlalchemy.engine import Engine

import search.study
import search.tracking
from search.tracking import PARENT, TRIAL


def release_memory_frozen() -> None:
    """Proposed ``search.study.release_memory``: collect, then freeze what survived."""
    gc.collect()
    gc.freeze()  # survivors are long-lived (modules, stores, caches): later collections skip them
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync_pareto_tags_incremental(self, parent_id: str | None, on_front: set[int]) -> None:
    """Proposed ``Tracker.sync_pareto_tags``: only runs tagged ``true`` or not tagged yet are read."""
    if parent_id is None:
        return

    def sync():
        base = f"tags.`{PARENT}` = '{parent_id}'"
        runs = [run for where in ("tags.pareto = 'true'", "tags.pareto IS NULL")
                for run in self.client.search_runs([self.experiment_id], f"{base} and {where}", max_results=50_000)]
        for run in runs:
            number = run.data.tags.get(TRIAL)
            if number is None or run.info.status == "RUNNING":  # a trial still running is tagged when it ends
                continue
            want = "true" if int(number) in on_front else "false"
            if run.data.tags.get("pareto") != want:
                self.client.set_tag(run.info.run_id, "pareto", want)
    self._safe("updating pareto tags", sync)


def sqlite_wal_on_connect(dbapi_conn, _record) -> None:
    """Proposed listener on SQLAlchemy's ``Engine`` ``connect`` event: WAL + synchronous=NORMAL."""
    if isinstance(dbapi_conn, sqlite3.Connection):
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")


@contextmanager
def sqlite_wal():
    """Every SQLite connection opened inside the block runs in WAL mode with synchronous=NORMAL."""
    event.listen(Engine, "connect", sqlite_wal_on_connect)
    try:
        yield
    finally:
        event.remove(Engine, "connect", sqlite_wal_on_connect)


# name -> a factory of the context manager that applies the proposed change
PATCHES: dict[str, Callable[[], AbstractContextManager]] = {
    "gc.freeze": lambda: mock.patch.object(search.study, "release_memory", release_memory_frozen),
    "incremental pareto tags": lambda: mock.patch.object(search.tracking.Tracker, "sync_pareto_tags",
                                                         sync_pareto_tags_incremental),
    "sqlite wal": sqlite_wal,
}


def check_pareto_tags(summary) -> str:
    """Compare every trial run's ``pareto`` tag with the study's final front; a one-line verdict."""
    tracker = summary.tracker
    if not tracker.enabled or summary.parent_id is None:
        return "pareto tags: tracking off, not checked"
    front = {r.number for r in summary.front}
    wrong = []
    runs = tracker.trial_runs(summary.parent_id)
    for run in runs:
        number = run.data.tags.get(TRIAL)
        if number is not None and run.data.tags.get("pareto") != ("true" if int(number) in front else "false"):
            wrong.append(int(number))
    if wrong:
        return f"pareto tags: {len(wrong)} of {len(runs)} runs disagree with the front (trials {sorted(wrong)[:10]})"
    return f"pareto tags: all {len(runs)} trial runs agree with the final front ({len(front)} trials on it)"
