"""Several workers on one study: local worker processes on the journal file, and workers of
several "machines" sharing a real PostgreSQL study (``resnext-nas worker``)."""

import subprocess
import sys
import uuid

import pytest

from search import worker
from search.cli import main

from .procs import Proc, experiment, mlflow_runs, postgres_url, search, states, trained, trials, wait_for


@pytest.mark.slow
def test_local_workers_share_one_journal_study(tmp_path):
    path = experiment(tmp_path, search={"n_trials": 4}, train={"epochs": 1000, "seconds": 0.5})
    proc = search(path, "--workers", "2")
    assert proc.wait() == 0, proc.output()

    ts = trials(path)
    # the target, plus at most one trial per extra worker when two finish at the same moment
    assert {s for s in states(ts)} == {"COMPLETE"}
    assert 4 <= trained(ts) <= 5  # reused proposals are free
    assert [t.number for t in ts] == list(range(len(ts)))
    pids = {t.user_attrs["worker"]["pid"] for t in ts}
    assert len(pids) == 2 and proc.pid not in pids  # two worker processes, the supervisor ran none
    assert {t.user_attrs["worker"]["threads"] for t in ts} == {max(1, worker.cpu_cores() // 2)}

    _, runs, parents = mlflow_runs(path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # made once, by the supervisor
    assert sorted(runs) == list(range(len(ts)))
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parents[0].info.run_id}


@pytest.mark.slow
def test_search_and_a_joining_worker_share_a_postgresql_study(tmp_path):
    url = postgres_url()
    # 2.5 s per trial: the joining worker (a new interpreter: seconds of imports on a busy machine) must
    # arrive while the study still has trials to give; proposals are never repeats (the default sampler)
    path = experiment(tmp_path, storage=url, search={"n_trials": 6, "study_name": f"pg-{uuid.uuid4().hex[:8]}"},
                      train={"epochs": 1000, "seconds": 2.5})
    owner = search(path, log="owner.log")
    wait_for(lambda: trials(path), 60, "the study", (owner,))
    joined = Proc(["worker", str(path), "--quiet"], tmp_path, "worker.log")
    assert owner.wait() == 0, owner.output()
    assert joined.wait() == 0, joined.output()
    assert "trained, " in joined.output()

    ts = trials(path)
    assert {s for s in states(ts)} == {"COMPLETE"} and 6 <= trained(ts) <= 7
    by = {t.user_attrs["worker"]["pid"] for t in ts}
    assert by == {owner.pid, joined.pid}  # both machines ran trials of the one study
    _, runs, parents = mlflow_runs(path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(runs) == list(range(len(ts))) and {r.info.status for r in runs.values()} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parents[0].info.run_id}


def test_worker_before_any_study_is_a_clear_error(tmp_path, capsys):
    assert main(["worker", str(experiment(tmp_path))]) == 2
    assert "run `resnext-nas search` first" in capsys.readouterr().err


def test_plan_splits_cores_and_pins_gpus(monkeypatch):
    monkeypatch.setattr(worker, "cpu_cores", lambda: 16)
    monkeypatch.setattr(worker, "visible_gpus", lambda: [])
    assert worker.plan(None, "auto") == [worker.Slot(0, 16)]
    assert [s.threads for s in worker.plan(3, "cpu")] == [5, 5, 5]
    assert [s.threads for s in worker.plan(32, "cpu")] == [1] * 32

    monkeypatch.setattr(worker, "visible_gpus", lambda: ["2", "5"])  # CUDA_VISIBLE_DEVICES=2,5
    assert [(s.gpu, s.threads) for s in worker.plan(None, "auto")] == [("2", 8), ("5", 8)]
    assert [s.gpu for s in worker.plan(3, "cuda")] == ["2", "5", "2"]
    assert [s.gpu for s in worker.plan(2, "cuda:1")] == [None, None]  # an explicit device is not re-pinned
    assert [s.gpu for s in worker.plan(2, "cpu")] == [None, None]
    assert worker.plan(1, "auto") == [worker.Slot(0, 16)]


def test_process_alive_tells_dead_zombie_and_reused_pids():
    me = worker.identity()
    assert worker.process_alive(me)
    assert not worker.process_alive({**me, "start": me["start"] + 1})  # same pid, another process
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    ident = {"host": worker.host(), "pid": child.pid, "start": None}
    wait_for(lambda: not worker.process_alive(ident), 10, "the exited child seen as dead (zombie)")
    child.wait()
    assert not worker.process_alive(ident)
    assert worker.process_alive({"host": "x", "pid": None})  # nothing to judge by: never guess "dead"
