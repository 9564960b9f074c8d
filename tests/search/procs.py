"""Helpers for the tests that run real ``resnext-nas`` processes against real stores.

Every process writes its output to a file under the test's tmp_path (read back on failure);
the Optuna storage and the MLflow store are read from the test process, as a user would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from search.storage import open_storage

from .conftest import tiny_raw

PG_ENV = "RESNEXT_NAS_TEST_POSTGRES"
RUNNER = Path(__file__).with_name("fault_runner.py")


def postgres_url() -> str:
    """The PostgreSQL server of this test run, or a loud skip when there is none.

    ``.ci/run`` starts a throw-away server and sets ``RESNEXT_NAS_TEST_POSTGRES``; without it
    the PostgreSQL tests are skipped with a warning (they never pass silently).
    """
    url = os.environ.get(PG_ENV)
    if not url:
        msg = (f"NO POSTGRESQL SERVER: {PG_ENV} is not set, so the PostgreSQL tests did NOT run; "
               ".ci/run starts one (Debian package postgresql)")
        warnings.warn(msg, pytest.PytestWarning, stacklevel=2)
        pytest.skip(msg)
    storage = open_storage(url)  # Optuna's tables, made once before any process races to make them
    storage.engine.dispose()
    return url


def rdb_url(tmp_path: Path) -> str:
    """PostgreSQL when the run has one, else SQLite (also an RDB storage with heartbeats), loudly."""
    if os.environ.get(PG_ENV):
        return postgres_url()
    warnings.warn(f"NO POSTGRESQL SERVER: {PG_ENV} is not set; this heartbeat test runs on SQLite instead",
                  pytest.PytestWarning, stacklevel=2)
    url = f"sqlite:///{tmp_path}/optuna.db"
    open_storage(url).engine.dispose()
    return url


def experiment(tmp_path: Path, storage: str | None = None, name: str = "exp", **sections) -> Path:
    """A tiny experiment file (see conftest.tiny_raw) with its stores under tmp_path."""
    raw = tiny_raw(tmp_path, **sections)
    raw["search"]["storage"] = storage or f"journal:{tmp_path}/optuna.journal"
    raw["search"].setdefault("heartbeat_s", 1)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def settings(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


class Proc:
    """A running command with its output in a log file."""

    def __init__(self, args: list[str], cwd: Path, log: str, env: dict | None = None, runner: bool = False,
                 new_session: bool = False) -> None:
        self.log = cwd / log
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
        cmd = [sys.executable, str(RUNNER)] if runner else [sys.executable, "-m", "search.cli"]
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen(cmd + args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                          env=full_env, start_new_session=new_session)
        self.pid = self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout} s; output:\n{self.output()}") from None

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.popen.kill()
            self.popen.wait()


def search(path: Path, *args: str, log: str = "search.log", **kw) -> Proc:
    return Proc(["search", str(path), "--quiet", "--export-dir", str(path.parent / "exports"), *args],
                path.parent, log, **kw)


def wait_for(predicate, timeout: float, what: str, procs: tuple[Proc, ...] = (), every: float = 0.2):
    """Poll ``predicate`` until it returns something truthy; fail with the processes' output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for p in procs:
            if p.popen.poll() is not None:
                raise AssertionError(f"{what}: process exited ({p.popen.returncode}) first:\n{p.output()}")
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout} s\n" + "\n".join(p.output() for p in procs))


def process_tree(pid: int) -> dict[int, str]:
    """``pid`` and its descendants (Linux /proc): pid -> command line."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1]) if entry.name.isdigit() else None
        except OSError:
            continue
        if ppid is not None:
            kids.setdefault(ppid, []).append(int(entry.name))
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        try:
            out[p] = (Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
        todo += kids.get(p, [])
    return out


def trials(path: Path, storage: str | None = None) -> list[optuna.trial.FrozenTrial]:
    """The study's trials as they are in its storage now ([] before the study exists)."""
    s = settings(path)
    storage = open_storage(storage or s["search"]["storage"])
    try:
        return optuna.load_study(study_name=s["search"].get("study_name") or path.stem,
                                 storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []
    finally:
        if hasattr(storage, "engine"):
            storage.engine.dispose()


def training(path: Path, storage: str | None = None) -> list[optuna.trial.FrozenTrial]:
    """Running trials whose training has begun."""
    return [t for t in trials(path, storage) if t.state.name == "RUNNING" and "training" in t.user_attrs]


def just_started(path: Path, within_s: float = 0.6, storage: str | None = None) -> list[optuna.trial.FrozenTrial]:
    """Trials in training that started less than ``within_s`` ago: a signal sent now lands mid-trial."""
    now = datetime.now()
    return [t for t in training(path, storage) if (now - t.datetime_start).total_seconds() < within_s]


def trained(ts) -> int:
    """How many trials trained their network to completion (what search.n_trials counts)."""
    return sum(t.state.name == "COMPLETE" and t.user_attrs.get("outcome") == "trained" for t in ts)


def states(ts) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in ts:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def mlflow_runs(path: Path) -> tuple[MlflowClient, dict[int, object], list]:
    """(client, trial number -> trial run, study parent runs) of the experiment's MLflow store."""
    s = settings(path)
    client = MlflowClient(s["tracking"]["uri"])
    exp = client.get_experiment_by_name(path.stem)
    runs = client.search_runs([exp.experiment_id], max_results=10_000)
    trial_runs = {int(r.data.tags["resnext_nas.trial"]): r for r in runs
                  if r.data.tags.get("resnext_nas.role") == "trial"}
    parents = [r for r in runs if r.data.tags.get("resnext_nas.role") == "study"]
    return client, trial_runs, parents
