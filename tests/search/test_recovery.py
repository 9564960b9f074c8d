"""Crash recovery with real processes and real signals.

A worker killed with SIGKILL mid-trial, a worker on "another machine" that stops sending
heartbeats, SIGTERM to a search (then resumed), Ctrl-C to a terminal running several workers:
each time the trial is failed and not counted, its MLflow run ends KILLED or FAILED (never left
RUNNING) and the study still reaches its number of completed trials.
"""

import os
import signal
import subprocess
import sys
import uuid

import optuna
import pytest

from search import worker
from search.config import load_experiment
from search.recovery import lost_while_running, reap_lost_trials
from search.results import NETWORK, Ledger, finished_rows, pareto_rows
from search.storage import create_study, load_study
from search.tracking import Tracker

from .procs import (
    Proc,
    experiment,
    just_started,
    mlflow_runs,
    rdb_url,
    search,
    states,
    trained,
    training,
    trials,
    wait_for,
)

LONG_TRIALS = {"epochs": 1000, "seconds": 2.0}  # every trial trains for two seconds


def front(path, storage=None) -> set[int]:
    cfg = load_experiment(path)
    study = load_study(cfg, storage)
    return {r.number for r in pareto_rows(finished_rows(study, cfg.objectives), cfg.directions)}


def no_run_left_running(path) -> None:
    _, runs, parents = mlflow_runs(path)
    assert not [n for n, r in runs.items() if r.info.status == "RUNNING"]
    assert not [p for p in parents if p.info.status == "RUNNING"]


@pytest.mark.slow
def test_sigkill_of_a_local_worker_fails_its_trial_and_the_others_finish_the_study(tmp_path):
    path = experiment(tmp_path, search={"n_trials": 3}, train=LONG_TRIALS)
    proc = search(path, "--workers", "2")
    victim = wait_for(lambda: just_started(path), 60, "a trial that just began training", (proc,), every=0.1)[0]
    killed_pid = victim.user_attrs["worker"]["pid"]
    assert killed_pid != proc.pid  # a worker process, not the supervisor
    os.kill(killed_pid, signal.SIGKILL)
    assert proc.wait() == 0, proc.output()

    ts = trials(path)
    lost = ts[victim.number]
    assert lost.state.name == "FAIL"
    assert lost.user_attrs["failure"] == "lost"
    assert f"pid {killed_pid} died mid-trial" in lost.user_attrs["fail_reason"]
    assert set(states(ts)) == {"COMPLETE", "FAIL"} and states(ts)["FAIL"] == 1  # the lost trial is not counted:
    assert trained(ts) >= 3  # the target was reached without it
    survivor = [t for t in ts if t.user_attrs["worker"]["pid"] != killed_pid]
    assert all(t.state.name == "COMPLETE" for t in survivor)  # the other worker was not disturbed
    assert max(t.number for t in survivor) > victim.number  # and went on after the kill
    assert f"worker pid {killed_pid} killed by SIGKILL; its trial {victim.number} is marked failed" in proc.output()

    _, runs, parents = mlflow_runs(path)
    assert runs[victim.number].info.status == "KILLED"
    assert runs[victim.number].data.tags["state"] == "lost"
    assert {r.info.status for n, r in runs.items() if n != victim.number} == {"FINISHED"}
    assert [p.info.status for p in parents] == ["FINISHED"]


@pytest.mark.slow
def test_a_worker_that_stops_sending_heartbeats_is_declared_lost(tmp_path):
    """A worker on another machine (its pid cannot be checked from here) dies: heartbeats tell."""
    url = rdb_url(tmp_path)
    path = experiment(tmp_path, storage=url, search={"n_trials": 5, "study_name": f"hb-{uuid.uuid4().hex[:8]}"},
                      train=LONG_TRIALS)
    owner = search(path, log="owner.log")
    wait_for(lambda: trials(path), 60, "the study", (owner,))
    remote = Proc(["worker", str(path), "--quiet"], tmp_path, "remote.log", env={"RESNEXT_NAS_HOST": "elsewhere"})

    def remote_training():
        return [t for t in just_started(path) if t.user_attrs["worker"]["host"] == "elsewhere"]
    victim = wait_for(remote_training, 60, "a trial of the remote worker in training", (owner, remote), every=0.1)[0]
    remote.popen.send_signal(signal.SIGKILL)
    remote.wait()
    assert owner.wait() == 0, owner.output()

    ts = trials(path)
    lost = ts[victim.number]
    assert lost.state.name == "FAIL"
    assert lost.user_attrs["failure"] == "lost"
    assert "no heartbeat for 4 s from worker elsewhere" in lost.user_attrs["fail_reason"]
    assert set(states(ts)) == {"COMPLETE", "FAIL"} and states(ts)["FAIL"] == 1 and trained(ts) >= 5
    _, runs, _ = mlflow_runs(path)
    assert runs[victim.number].info.status == "FAILED"
    assert runs[victim.number].data.tags["state"] == "lost"
    no_run_left_running(path)


@pytest.mark.slow
def test_sigterm_fails_the_running_trial_and_the_same_command_resumes(tmp_path):
    path = experiment(tmp_path, search={"n_trials": 2}, train=LONG_TRIALS)
    proc = search(path)
    victim = wait_for(lambda: [t for t in just_started(path) if t.number >= 1], 60, "trial 1 in training", (proc,),
                      every=0.1)[0]
    done_before = {t.number: t.values for t in trials(path) if t.state.name == "COMPLETE"}
    front_before = front(path)
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.wait() == 130
    assert "interrupted: finished trials are kept; rerun the same command to resume" in proc.output()

    ts = trials(path)
    assert ts[victim.number].state.name == "FAIL"
    assert ts[victim.number].user_attrs["fail_reason"] == "interrupted (SIGTERM)"
    assert {t.number: t.values for t in ts if t.state.name == "COMPLETE"} == done_before
    assert front(path) == front_before  # the interrupted trial left no trace on the front
    _, runs, parents = mlflow_runs(path)
    assert runs[victim.number].info.status == "KILLED"
    assert runs[victim.number].data.tags["state"] == "killed"
    assert [p.info.status for p in parents] == ["KILLED"]
    parent_id = parents[0].info.run_id

    again = search(path, log="resume.log")
    assert again.wait() == 0, again.output()
    ts = trials(path)
    assert [t.number for t in ts] == list(range(len(ts)))
    assert trained(ts) == 2 and states(ts)["FAIL"] == 1
    assert min(t.number for t in ts if t.number not in done_before and t.number != victim.number) > victim.number
    assert {n: ts[n].values for n in done_before} == done_before  # finished trials kept as they were
    final = front(path)
    assert victim.number not in final
    # the front is that of the completed trials: the earlier front changed only through new trials
    assert final - front_before <= {t.number for t in ts if t.number > victim.number}
    _, runs, parents = mlflow_runs(path)
    assert [(p.info.run_id, p.info.status) for p in parents] == [(parent_id, "FINISHED")]
    assert runs[victim.number].info.status == "KILLED"
    no_run_left_running(path)


@pytest.mark.slow
def test_ctrl_c_stops_every_local_worker_and_records_their_trials(tmp_path):
    path = experiment(tmp_path, search={"n_trials": 6}, train={"epochs": 1000, "seconds": 3.0})
    proc = search(path, "--workers", "2", new_session=True)  # its own process group, as in a terminal
    busy = wait_for(lambda: (lambda ts: ts if len(ts) == 2 else None)(training(path)), 60, "both workers training",
                    (proc,))
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: every process of the group gets SIGINT
    assert proc.wait() == 130, proc.output()

    ts = trials(path)
    assert set(states(ts)) <= {"COMPLETE", "FAIL"}  # nothing left RUNNING
    interrupted = [t for t in ts if t.state.name == "FAIL"]
    assert interrupted and {t.number for t in interrupted} <= {t.number for t in busy}
    _, runs, parents = mlflow_runs(path)
    for t in interrupted:
        # SIGINT from the "terminal", or the supervisor's SIGTERM if that one happens to land first
        assert t.user_attrs["fail_reason"] in ("interrupted (SIGINT)", "interrupted (SIGTERM)")
        assert runs[t.number].info.status == "KILLED"
    assert [p.info.status for p in parents] == ["KILLED"]
    no_run_left_running(path)


def test_reaping_finds_the_run_of_a_worker_that_died_before_linking_it(tiny, tmp_path):
    """The window between creating a trial's MLflow run and recording its id on the trial."""
    cfg = tiny(search={"storage": f"journal:{tmp_path}/optuna.journal"})
    tracker = Tracker(cfg.tracking, cfg.name)
    study = create_study(cfg, None, {})
    tracker.setup()
    parent = tracker.study_run(cfg.study_name, {}, {})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial = study.ask()
    trial.set_user_attr("worker", {"host": worker.host(), "pid": dead.pid, "start": None})
    orphan = tracker.start_trial(parent, cfg.study_name, trial.number, {})  # its id never reached the trial
    assert reap_lost_trials(study, tracker, []) == []  # only the trials it is given are looked at
    ledger = Ledger(cfg.objectives, cfg.directions).update(study)  # the loop gives its ledger's unfinished ones
    assert reap_lost_trials(study, tracker, ledger.unfinished) == [trial.number]
    assert study.trials[trial.number].state.name == "FAIL"
    assert tracker.client.get_run(orphan).info.status == "KILLED"
    assert reap_lost_trials(study, tracker) == []  # once


def test_only_a_trial_failed_by_another_process_is_taken_for_lost(tiny, tmp_path):
    """What a worker drops when Optuna raises on recording its trial: a lost trial, never its own failure."""
    cfg = tiny(search={"storage": f"journal:{tmp_path}/optuna.journal"})
    tracker = Tracker(cfg.tracking, cfg.name)
    study = create_study(cfg, None, {})
    tracker.setup()
    parent = tracker.study_run(cfg.study_name, {}, {})
    lost, own, running = study.ask(), study.ask(), study.ask()
    run = tracker.start_trial(parent, cfg.study_name, lost.number, {})
    lost.set_user_attr(NETWORK, {"mlflow_run_id": run})  # as the objective links them
    study.tell(lost, state=optuna.trial.TrialState.FAIL)  # a stale-heartbeat check: the state only
    own.set_user_attr("failure", "error")  # the worker's own failure records its kind
    study.tell(own, state=optuna.trial.TrialState.FAIL)
    assert lost_while_running(study, None, tracker) is None  # Optuna raised before a trial started
    assert lost_while_running(study, own._trial_id, tracker) is None
    assert lost_while_running(study, running._trial_id, tracker) is None
    assert lost_while_running(study, lost._trial_id, tracker).number == lost.number
    assert tracker.client.get_run(run).info.status == "FAILED"
    assert tracker.client.get_run(run).data.tags["state"] == "lost"


def test_the_owner_closes_runs_left_running_by_their_finished_trials(tiny):
    cfg = tiny()
    tracker = Tracker(cfg.tracking, cfg.name)
    tracker.setup()
    parent = tracker.study_run(cfg.study_name, {}, {})
    runs = {n: tracker.start_trial(parent, cfg.study_name, n, {}) for n in range(4)}
    tracker.end_orphan_runs(parent, {0: "COMPLETE", 1: "FAIL", 2: "RUNNING"})
    status = {n: tracker.client.get_run(r).info.status for n, r in runs.items()}
    assert status == {0: "FINISHED", 1: "FAILED", 2: "RUNNING", 3: "RUNNING"}  # only finished trials' runs
