"""How many store writes a trial makes, counted (not timed) with the benchmarks' own counters.

MLflow's SQLite store commits once per call and once per kind of item in a batch (params,
metrics, tags); each commit is a sync. A trial's run is created (2 commits), gets its whole
record in one batch as it ends (4) and is ended (1): 7. On top of that only what the front
changed: the parent's hypervolume (a batch of metrics: 2) and the ``pareto`` tags of the trials
that left the front (1 each). Before, a trial made 13 (a batch per part, the spec.yaml artifact,
the hypervolume after every trial, its own tag after it ended).
"""

import pytest
from mlflow.tracking import MlflowClient

from benchmarks._workloads import tiny_study
from benchmarks.overhead import run_study
from search.results import finished_rows, pareto_rows
from search.storage import load_study

pytestmark = pytest.mark.slow

RUN = 7  # commits of a trial's own run


def test_a_trial_commits_its_run_and_only_what_the_front_changed(tmp_path):
    cfg = tiny_study(tmp_path, 8, sampler="random", latency=False, epochs=0.25)
    spans, trials, _, tags = run_study(cfg)
    assert tags.startswith("pareto tags: all"), tags  # every run's tag agrees with the final front
    study = load_study(cfg)
    hv_steps = {m.step for m in MlflowClient(cfg.tracking.uri).get_metric_history(
        study.user_attrs["mlflow_parent_run_id"], "hypervolume")}
    rows = finished_rows(study, cfg.objectives)
    fronts = [{r.number for r in pareto_rows([r for r in rows if r.number <= k], cfg.directions)}
              for k in range(len(trials))]
    quiet = 0
    for k in range(1, len(trials)):  # trial 0 holds the study's setup
        left = len(fronts[k - 1] - fronts[k])
        bound = RUN + 2 * (k in hv_steps) + left
        assert spans.commits[k] <= bound, (k, spans.commits[k], bound)
        quiet += k not in hv_steps and not left
    assert quiet > 0  # some trials changed nothing but their own run: 7 commits at most


def test_a_trained_trial_writes_each_journal_record_once(tmp_path):
    """Optuna's journal takes one record (an fsync) per user attribute: the grouped attributes
    (``network``, ``training``) keep a trained trial at one record per attribute it ends with."""
    cfg = tiny_study(tmp_path, 4, sampler="random", latency=True, epochs=1)
    spans, _, _, _ = run_study(cfg)
    trained = [t for t in load_study(cfg).trials[1:] if t.user_attrs.get("outcome") == "trained"]
    assert trained
    for t in trained:
        # created, finished, its sampled parameters, and each attribute once (one epoch: epochs_done once)
        assert spans.appends[t.number] == 2 + len(t.params) + len(t.user_attrs) + len(t.system_attrs), t.user_attrs
        assert set(t.user_attrs) == {"worker", "network", "training", "epochs_done", "metrics", "curve", "outcome",
                                     "memory_after_mb"}
