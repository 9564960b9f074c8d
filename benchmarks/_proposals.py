"""A storage variant the overhead and memory benchmarks measure beside the study code, as a patch.

- ``sqlite_wal``: SQLite connections in WAL mode with ``synchronous=NORMAL``. ``search.tracking``
  already puts a SQLite MLflow store in WAL mode, where with SQLite's default ``synchronous=FULL``
  each commit syncs the log; with ``NORMAL`` a commit does not sync (the WAL is synced at
  checkpoints), and an Optuna store on SQLite (``--storage sqlite``) gets WAL mode too. Optuna's
  default store, the journal file ``journal:mlruns/optuna.journal``, is untouched (it fsyncs each
  append itself). Trade-offs: after a power loss (not a process crash) the last few committed
  transactions can be lost; WAL needs a local filesystem, as SQLite's locking already does; WAL
  mode is a property of the database file, so later readers of it use WAL too. The switch is an
  SQLAlchemy ``Engine`` ``connect`` listener, i.e. process-wide while installed, so it is
  installed only for the duration of the block and, given ``paths``, applies only to connections
  to those database files (the study's own stores).

``PATCHES`` names the variants a benchmark can apply around a study. ``check_pareto_tags`` checks
a finished study's tags against its final front (every study the overhead and memory benchmarks
run, the unpatched code included).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, contextmanager

from sqlalchemy import event
from sqlalchemy.engine import Engine

from search.tracking import TRIAL


def _database_file(dbapi_conn: sqlite3.Connection) -> str:
    """The file of a SQLite connection's main database ('' for an in-memory one)."""
    for _seq, name, file in dbapi_conn.execute("PRAGMA database_list"):
        if name == "main":
            return file or ""
    return ""


@contextmanager
def sqlite_wal(paths: Iterable[str | os.PathLike] | None = None):
    """SQLite connections opened inside the block run in WAL mode with synchronous=NORMAL.

    Args:
        paths: only connections to these database files (None: every SQLite connection).
    """
    wanted = None if paths is None else {os.path.realpath(p) for p in paths}

    def on_connect(dbapi_conn, _record) -> None:
        if not isinstance(dbapi_conn, sqlite3.Connection):
            return
        if wanted is not None and os.path.realpath(_database_file(dbapi_conn) or ":memory:") not in wanted:
            return
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    event.listen(Engine, "connect", on_connect)
    try:
        yield
    finally:
        event.remove(Engine, "connect", on_connect)


def sqlite_files(cfg) -> list[str]:
    """The SQLite database files of an experiment's stores (Optuna and MLflow), if any."""
    return [url[len("sqlite:///"):] for url in (cfg.storage_url, cfg.tracking.uri or "")
            if url.startswith("sqlite:///")]


# name -> a factory (given the experiment) of the context manager that applies the variant
PATCHES: dict[str, Callable[..., AbstractContextManager]] = {
    "sqlite wal": lambda cfg: sqlite_wal(sqlite_files(cfg)),
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
