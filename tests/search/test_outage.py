"""A study rides out its storage and its tracking server going away: real processes, real servers.

PostgreSQL outages are made by a TCP proxy the test owns (``benchmarks.outage.CuttingProxy``):
it cuts every connection of the study and refuses new ones for the outage, as a restart or a
failover does, without stopping the server other tests share. The tracking server is a real
``mlflow server`` killed and started again; the full disk is a small tmpfs (root only).
"""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import warnings

import optuna
import pytest
from sqlalchemy.exc import OperationalError

from benchmarks.outage import CuttingProxy
from search.config import load_experiment
from search.errors import StorageUnavailable
from search.outage import Patience, unreachable
from search.results import finished_rows, pareto_rows
from search.storage import load_study, open_storage
from space.errors import SpecError

from .procs import experiment, mlflow_runs, postgres_url, process_tree, search, states, trained, trials, wait_for

OUTAGE_S = 4.0  # each outage's length (a managed server's failover is 20-60 s; the mechanics are the same)
TRIALS = {"epochs": 1000, "seconds": 1.0}  # every trial trains for one second


def front(path, storage=None) -> set[int]:
    cfg = load_experiment(path)
    study = load_study(cfg, storage)
    return {r.number for r in pareto_rows(finished_rows(study, cfg.objectives), cfg.directions)}


def runs_match_the_record(path, storage=None) -> None:
    """Every trial has one ended MLflow run with its Optuna values and the right pareto tag."""
    ts = trials(path, storage)
    _, runs, parents = mlflow_runs(path)
    assert sorted(runs) == [t.number for t in ts]
    assert not [n for n, r in runs.items() if r.info.status == "RUNNING"]
    for t in ts:
        if t.state.name == "COMPLETE" and t.user_attrs.get("outcome") == "trained":
            assert runs[t.number].info.status == "FINISHED"
            assert runs[t.number].data.metrics["val_accuracy"] == pytest.approx(t.values[0])
    on = front(path, storage)
    assert {n for n, r in runs.items() if r.data.tags.get("pareto") == "true"} == on
    assert [p.info.status for p in parents] == ["FINISHED"]


def pg_experiment(tmp_path, proxy, **search):
    # heartbeats every 3 s: a trial is declared lost after 12 s without one, well past an outage of
    # OUTAGE_S; a process that made no storage call during a shorter grace could not tell them apart
    return experiment(tmp_path, storage=proxy.url_through, train=TRIALS,
                      search={"study_name": f"outage-{uuid.uuid4().hex[:8]}", "heartbeat_s": 3, **search})


@pytest.fixture
def proxy():
    p = CuttingProxy(postgres_url())
    yield p
    p.cut()


def test_a_connection_error_is_an_outage_and_a_bad_call_is_not():
    from sqlalchemy.exc import DataError

    refused = OperationalError("SELECT 1", {}, Exception("connection refused"))
    wrapped = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
    wrapped.__cause__ = refused
    assert unreachable(refused) and unreachable(wrapped)
    assert not unreachable(DataError("INSERT", {}, Exception("value too long")))
    assert not unreachable(ValueError("x"))

    patience = Patience("postgresql://u:***@h/db", 0.3, say=lambda line: None)
    calls = []

    def down():
        calls.append(time.monotonic())
        raise wrapped
    with pytest.raises(StorageUnavailable, match=r"postgresql://u:\*\*\*@h/db has been unreachable for 0.3 s"):
        patience.call(down)
    assert len(calls) >= 2  # retried before giving up
    with pytest.raises(StorageUnavailable):  # then every call stops at once, without waiting again
        patience.call(lambda: 1)


@pytest.mark.slow
def test_two_workers_ride_out_two_postgresql_outages(tmp_path, proxy):
    path = pg_experiment(tmp_path, proxy, n_trials=4)
    proc = search(path, "--workers", "2")
    # the first outage as the workers start (they open the storage in it), the second mid-study
    for what, ready, length in (
            ("workers started", lambda: any("search.worker_process" in c for c in process_tree(proc.pid).values()),
             2 * OUTAGE_S),  # a worker imports for a few seconds before it opens the storage
            ("1 trained", lambda: trained(trials(path, postgres_url())) >= 1, OUTAGE_S)):
        wait_for(ready, 90, what, (proc,), every=0.05)
        proxy.cut()
        time.sleep(length)
        proxy.restore()
    assert proc.wait(180) == 0, proc.output()
    out = proc.output()
    assert "storage unreachable (" in out and "reachable again after" in out
    assert "please report it" not in out, out

    ts = trials(path, postgres_url())
    # nothing left RUNNING, no training lost: a trial lost in an outage would be FAIL and its network
    # trained again by the next trial (two workers may still draw one network at the same moment)
    assert set(states(ts)) == {"COMPLETE"}
    assert 4 <= trained(ts) <= 5  # the target (+1 when both workers finish at the same moment)
    runs_match_the_record(path, postgres_url())


@pytest.mark.slow
def test_an_outage_past_the_patience_stops_with_status_3_and_a_rerun_finishes(tmp_path, proxy):
    path = pg_experiment(tmp_path, proxy, n_trials=2, storage_patience_s=3)
    proc = search(path, "--workers", "2")
    wait_for(lambda: [t for t in trials(path, postgres_url()) if "training" in t.user_attrs], 90,
             "a trial in training", (proc,))
    proxy.cut()
    assert proc.wait(60) == 3, proc.output()
    out = proc.output()
    assert "has been unreachable for 3 s" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: ") and "rerun the same command" in last and "please report" not in out
    assert ":***@" in last and postgres_url().split("@")[0].split(":")[-1] not in out  # password hidden

    proxy.restore()
    rerun = search(path, log="rerun.log")  # one process: enough to resume
    assert rerun.wait(120) == 0, rerun.output()
    ts = trials(path, postgres_url())
    assert "RUNNING" not in states(ts) and trained(ts) >= 2
    assert all(t.user_attrs.get("failure") == "lost" for t in ts if t.state.name == "FAIL")
    _, runs, _ = mlflow_runs(path)
    assert not [n for n, r in runs.items() if r.info.status == "RUNNING"]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class TrackingServer:
    """``mlflow server`` on a SQLite store under tmp_path (no job runner)."""

    def __init__(self, tmp_path, n: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"mlflow-server-{n}.log"
        mlflow = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [mlflow, "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination",
                 str(tmp_path / "served"), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=1)
                return
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()
                time.sleep(0.3)
        raise AssertionError("the MLflow server did not start")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()


@pytest.mark.slow
def test_tracking_server_killed_and_restarted_mid_study_ends_with_complete_runs(tmp_path):
    # The study reaches the server at one address (a proxy): the server is killed there, and its
    # successor (started beforehand on the same store: a server takes seconds to start) takes
    # over that address later, as a restarted server does.
    first = TrackingServer(tmp_path, 1)
    second = TrackingServer(tmp_path, 2)
    address = CuttingProxy(first.url)
    try:
        path = experiment(tmp_path, search={"n_trials": 6}, train=TRIALS, tracking={"uri": address.url_through})
        proc = search(path)
        wait_for(lambda: trained(trials(path)) >= 1, 90, "a trained network", (proc,))
        first.kill()
        address.cut()
        wait_for(lambda: trained(trials(path)) >= 3, 90, "networks trained without the server", (proc,))
        address.restore(second.url)
        assert proc.wait(180) == 0, proc.output()
        assert "[tracking]" in proc.output() and "please report" not in proc.output()
        runs_match_the_record(path)
        assert any(r.data.tags.get("restored") == "optuna" for r in mlflow_runs(path)[1].values())

        # a study that ends while the server is away: `resnext-nas sync` writes what it missed
        other = experiment(tmp_path, name="other", search={"n_trials": 2}, train=TRIALS,
                           tracking={"uri": address.url_through})
        proc = search(other, log="other.log")
        wait_for(lambda: trained(trials(other)) >= 1, 90, "a trained network", (proc,))
        address.cut()
        assert proc.wait(180) == 0, proc.output()
        address.restore()
        done = subprocess.run([sys.executable, "-m", "search.cli", "sync", str(other)], capture_output=True,
                              text=True, cwd=tmp_path, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "trial runs created" in done.stdout and "the study's run, left running" in done.stdout
        ts, (client, runs, parents) = trials(other), mlflow_runs(other)
        assert sorted(runs) == [t.number for t in ts] and {r.info.status for r in runs.values()} == {"FINISHED"}
        assert {n for n, r in runs.items() if r.data.tags.get("pareto") == "true"} == front(other)
        assert [p.info.status for p in parents] == ["FINISHED"]  # with what the study's end writes there
        assert {"report.html", "pareto.json"} <= {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    finally:
        address.cut()
        first.kill()
        second.kill()


def can_mount_tmpfs(where) -> bool:
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_journal_on_a_full_disk_stops_with_the_file_named_and_resumes_once_there_is_room(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if not can_mount_tmpfs(disk):
        msg = "NO TMPFS: mounting a small filesystem needs root; the full-disk journal test did NOT run"
        warnings.warn(msg, pytest.PytestWarning, stacklevel=1)
        pytest.skip(msg)
    procs = []
    try:
        journal = disk / "optuna.journal"
        path = experiment(tmp_path, storage=f"journal:{journal}", search={"n_trials": 4}, train=TRIALS)
        proc = search(path)
        procs.append(proc)
        wait_for(lambda: trained(trials(path)) >= 1, 90, "a trained network", (proc,))
        with open(disk / "filler", "wb", buffering=0) as f:  # fill the disk up
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 4096)
        assert proc.wait(120) == 3, proc.output()
        last = proc.output().strip().splitlines()[-1]
        assert f"cannot write the study journal {journal}: No space left on device" in last
        assert "rerun the same command" in last and "please report" not in proc.output()
        done = trials(path)  # the journal is still readable, nothing half written
        assert trained(done) >= 1

        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        ro = search(path, log="readonly.log")
        procs.append(ro)
        assert ro.wait(120) in (2, 3), ro.output()
        assert str(journal) in ro.output().strip().splitlines()[-1] and "Read-only" in ro.output()
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)

        (disk / "filler").unlink()
        rerun = search(path, log="rerun.log")
        procs.append(rerun)
        assert rerun.wait(120) == 0, rerun.output()
        ts = trials(path)
        assert trained(ts) >= 4
        # a trial the full disk caught between its creation and its first attribute (its worker) stays
        # RUNNING, as docs/scaling.md says under Limits; any other was failed as lost by the rerun
        assert not [t for t in ts if t.state.name == "RUNNING" and (t.user_attrs or t.number != done[-1].number)]
        assert [t.number for t in done] == [t.number for t in ts][:len(done)]  # what was recorded is kept
    finally:
        for p in procs:
            p.kill()
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_an_unwritable_journal_directory_is_a_clear_error(tmp_path):
    where = tmp_path / "ro"
    where.mkdir()
    os.chmod(where, 0o555)
    try:
        probe = where / "probe"
        try:
            probe.touch()
            probe.unlink()
            pytest.skip("this user writes into read-only directories (root): the tmpfs test covers it")
        except PermissionError:
            pass

        with pytest.raises(SpecError, match=f"cannot open the study journal {where}/optuna.journal: Permission denied"):
            open_storage(f"journal:{where}/optuna.journal")
    finally:
        os.chmod(where, 0o755)


def test_every_call_of_a_trial_waits_through_a_cut(proxy):
    """Ask, suggest (Optuna's cache calls the RDB storage's private methods), attributes, tell: each waits."""
    storage = open_storage(proxy.url_through, heartbeat_s=1, patience_s=30)
    study = optuna.create_study(storage=storage, study_name=f"cut-{uuid.uuid4().hex[:8]}")
    for step in ("ask", "suggest", "attr", "tell"):
        proxy.cut()
        timer = threading.Timer(1.0, proxy.restore)
        timer.start()
        t0 = time.monotonic()
        if step == "ask":
            trial = study.ask()
        elif step == "suggest":
            trial.suggest_int("x", 1, 4)
        elif step == "attr":
            trial.set_user_attr("metrics", {"val_accuracy": 0.5})
        else:
            study.tell(trial, 1.0)
        assert time.monotonic() - t0 >= 0.9, step  # it waited for the server, then went through
        timer.join()
    done = study.trials[0]
    assert done.state.name == "COMPLETE" and done.params == {"x": trial.params["x"]}
    assert done.user_attrs["metrics"] == {"val_accuracy": 0.5}
    optuna.delete_study(study_name=study.study_name, storage=storage)
    storage.engine.dispose()


def test_opening_waits_once_the_storage_has_answered_and_a_first_refusal_is_said_at_once(proxy):
    """A later step of a command (and a worker its search started) opens a storage that answered it before."""
    open_storage(proxy.url_through).engine.dispose()
    proxy.cut()
    timer = threading.Timer(1.0, proxy.restore)
    timer.start()
    t0 = time.monotonic()
    storage = open_storage(proxy.url_through, patience_s=30)
    assert time.monotonic() - t0 >= 0.9  # it waited for the server, then opened
    assert isinstance(optuna.get_all_study_names(storage), list)
    storage.engine.dispose()
    timer.join()

    never = CuttingProxy(postgres_url())  # a URL this process has not seen answer: most often a wrong one
    never.cut()
    t0 = time.monotonic()
    with pytest.raises(SpecError, match="cannot open the study storage postgresql:.*check the URL"):
        open_storage(never.url_through, patience_s=30)
    assert time.monotonic() - t0 < 5
