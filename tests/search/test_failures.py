"""A failing trial is contained: its reason is recorded, its memory released, the study goes on.

Real ``resnext-nas search`` processes; faults are provoked for real (an address-space cap that
a too-large network hits, a learning rate that diverges) or injected from outside the code
(tests/search/fault_runner.py).
"""

import pytest
import torch

from search.cli import main
from search.config import load_experiment
from search.objective import failure_kind
from search.study import open_or_create_study
from search.train import NonFiniteLoss

from .procs import Proc, experiment, mlflow_runs, search, states, trials

pytestmark = pytest.mark.slow

BIG, SMALL = 16384, 4  # stem channels: activations of ~0.5 GB per tensor vs a few kB


def test_out_of_memory_is_infeasible_releases_memory_is_not_retried_and_the_study_goes_on(tmp_path):
    path = experiment(tmp_path, space={"num_stages": 1, "stem_ch": [SMALL, BIG], "bottleneck_ch": [4, 8],
                                       "cardinality": 1}, search={"n_trials": 2})
    study = open_or_create_study(load_experiment(path))
    for stem, bottleneck in ((BIG, 4), (SMALL, 4), (BIG, 4), (SMALL, 8)):
        study.enqueue_trial({"stem_ch": stem, "bottleneck_ch": bottleneck})
    # 2.5 GB more address space than the process needs at start: a BIG network allocates about
    # 1 GB of activations, then fails; if that gigabyte were kept, the next trials would fail too.
    proc = Proc(["search", str(path), "--quiet", "--export-dir", str(tmp_path / "exports")], tmp_path,
                "search.log", runner=True, env={"FAULT_AS_HEADROOM_MB": "2500", "MALLOC_ARENA_MAX": "2"})
    assert proc.wait() == 0, proc.output()

    ts = trials(path)
    assert [t.state.name for t in ts] == ["COMPLETE"] * 4
    assert [t.user_attrs["outcome"] for t in ts] == ["out_of_memory", "trained", "out_of_memory", "trained"]
    assert ts[2].user_attrs["reused_from"] == 0 and "epochs_done" not in ts[2].user_attrs  # not tried again
    assert ts[0].user_attrs["device"].startswith("cpu:")
    for t in ts[0], ts[2]:  # infeasible: the sampler learns the region
        assert t.constraints["out_of_memory"] == 1.0
    baseline = min(t.user_attrs["memory_after_mb"]["rss_mb"] for t in ts)
    client, runs, _ = mlflow_runs(path)
    for t in ts:
        # released at the end of every trial, the failed ones included (no creeping growth)
        assert t.user_attrs["memory_after_mb"]["rss_mb"] < baseline + 150, [t.user_attrs["memory_after_mb"]
                                                                           for t in ts]
        run = runs[t.number]
        if t.number == 0:
            assert "can't allocate memory" in t.user_attrs["fail_reason"]
            assert run.info.status == "FINISHED" and run.data.tags["state"] == "infeasible"
            assert run.data.tags["failure"] == "out_of_memory"
            assert "can't allocate memory" in run.data.tags["fail_reason"]
        elif t.number == 2:
            assert run.data.tags["reused_from"] == "0"
        else:
            assert run.info.status == "FINISHED"


def test_nonfinite_loss_fails_at_once_and_repeated_failures_stop_the_study(tmp_path, capsys):
    path = experiment(tmp_path, search={"n_trials": 3, "max_consecutive_failures": 2},
                      train={"lr": 1e6, "epochs": 5})
    proc = search(path)
    assert proc.wait() == 1
    out = proc.output()
    assert "error: stopped after 2 failed trials in a row (last: NonFiniteLoss: training loss is" in out

    ts = trials(path)
    assert states(ts) == {"FAIL": 2}  # stopped: no third trial started
    client, runs, parents = mlflow_runs(path)
    for t in ts:
        assert t.user_attrs["failure"] == "nonfinite_loss"
        assert t.user_attrs["fail_reason"].startswith("NonFiniteLoss: training loss is")
        assert "training" in t.user_attrs and "epochs_done" not in t.user_attrs  # stopped within the first of 5 epochs
        run = runs[t.number]
        assert run.info.status == "FAILED"
        assert run.data.tags["failure"] == "nonfinite_loss"
        text = open(client.download_artifacts(run.info.run_id, "traceback.txt", str(tmp_path))).read()
        assert "NonFiniteLoss: training loss is" in text
    assert [p.info.status for p in parents] == ["FAILED"]
    assert main(["pareto", str(path)]) == 0
    assert "0 trained, 0 reused, 0 over budget, 0 out of memory, 2 failed; 0 networks" in capsys.readouterr().out


def test_any_other_exception_is_recorded_with_its_traceback_and_the_study_continues(tmp_path):
    """Trial 1 raises; trial 2 is declared lost by another process while it trains (it goes on, then is dropped)."""
    path = experiment(tmp_path, search={"n_trials": 3})
    proc = Proc(["search", str(path), "--quiet", "--export-dir", str(tmp_path / "exports")], tmp_path,
                "search.log", runner=True, env={"FAULT_FAIL_TRIALS": "1", "FAULT_LOSE_TRIALS": "2"})
    assert proc.wait() == 0, proc.output()
    assert "trial 2 of this worker was declared lost by another process" in proc.output()
    assert "please report" not in proc.output()

    ts = trials(path)
    assert [t.state.name for t in ts] == ["COMPLETE", "FAIL", "FAIL"] + ["COMPLETE"] * (len(ts) - 3)
    assert sum(t.user_attrs.get("outcome") == "trained" for t in ts) == 3  # failed trials are not counted
    assert ts[1].user_attrs["failure"] == "error"
    assert ts[1].user_attrs["fail_reason"] == "RuntimeError: injected fault in trial 1"
    client, runs, parents = mlflow_runs(path)
    assert runs[1].info.status == "FAILED"
    assert runs[1].data.tags["fail_reason"] == "RuntimeError: injected fault in trial 1"
    text = open(client.download_artifacts(runs[1].info.run_id, "traceback.txt", str(tmp_path))).read()
    assert "Traceback (most recent call last)" in text and "injected fault in trial 1" in text
    assert runs[2].info.status == "FAILED" and runs[2].data.tags["state"] == "lost"
    assert {runs[t.number].info.status for t in ts if t.number not in (1, 2)} == {"FINISHED"}
    assert [p.info.status for p in parents] == ["FINISHED"]


@pytest.mark.parametrize("error, kind", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out_of_memory"),
    (MemoryError(), "out_of_memory"),
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"), "out_of_memory"),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), "out_of_memory"),
    (NonFiniteLoss("training loss is nan at step 3"), "nonfinite_loss"),
    (ValueError("anything else"), "error"),
])
def test_failure_kinds(error, kind):
    """CUDA OOM cannot be provoked on a CPU-only runner: its classification is checked directly."""
    assert failure_kind(error) == kind
