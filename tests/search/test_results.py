"""The loop's incremental ledger says what a full recomputation says, however trials arrive."""

import random

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search.results import Ledger, Row, finished_rows, outcome_counts, pareto_rows, summarize, trial_attrs

OBJECTIVES = ("val_accuracy", "params", "latency_ms")
DIRECTIONS = ["maximize", "minimize", "minimize"]
OUTCOMES = ["trained"] * 6 + ["reused", "over_budget", "out_of_memory"]


def random_trial(rng: random.Random, number: int, hashes: list[str]):
    outcome = rng.choice(OUTCOMES)
    if rng.random() < 0.1:
        return create_trial(state=TrialState.FAIL, user_attrs={"failure": "error"})
    values = [rng.choice([0.5, 0.6, 0.7, 0.8, 0.9]), rng.choice([10, 20, 30, 40]), rng.choice([1.0, 2.0, 3.0])]
    attrs = {"outcome": outcome, "spec_hash": rng.choice(hashes), "mlflow_run_id": f"run{number}",
             "device": "cpu:x"}
    if outcome == "reused":
        attrs["reused_from"] = 0
    if rng.random() < 0.5:  # today's grouped layout; else an older study's, one key per attribute
        attrs["network"] = {"spec_hash": attrs.pop("spec_hash"), "mlflow_run_id": attrs.pop("mlflow_run_id")}
    trial = create_trial(values=values, user_attrs=attrs, params={"x": 0.5},
                         distributions={"x": FloatDistribution(0, 1)},
                         system_attrs={"constraints:max_params": -1.0 if outcome != "over_budget" else 1.0,
                                       **({"constraints:out_of_memory": 1.0} if outcome == "out_of_memory" else {}),
                                       **({"constraints:max_latency_ms": 0.5} if rng.random() < 0.1 else {})})
    return trial


@pytest.mark.parametrize("seed", range(25))
def test_the_ledger_equals_recomputing_after_every_trial(seed):
    rng = random.Random(seed)
    hashes = [f"h{i}" for i in range(rng.choice([3, 8, 40]))]  # few networks: many repeats and ties
    study = optuna.create_study(directions=DIRECTIONS)
    ledger = Ledger(OBJECTIVES, DIRECTIONS)
    for number in range(rng.choice([5, 30, 80])):
        study.add_trial(random_trial(rng, number, hashes))
        if rng.random() < 0.6:  # the loop does not look after every trial (other workers' trials)
            continue
        ledger.update(study)
        rows = finished_rows(study, OBJECTIVES)
        assert sorted(r.number for r in ledger.front) == sorted(r.number for r in pareto_rows(rows, DIRECTIONS))
        assert {k: v for k, v in ledger.counts.items() if k != "running"} == \
            {k: v for k, v in outcome_counts(study).items() if k != "running"}
        assert [r.number for r in ledger.summary(study, None, None).rows] == [r.number for r in rows]
        for h in hashes:
            trained = [r for r in rows if r.outcome == "trained" and r.attrs["spec_hash"] == h]
            twin = ledger.twin(h, "cpu:x")
            if trained:
                assert twin.number == min(r.number for r in trained)
            elif twin is not None:
                assert twin.outcome == "out_of_memory" and twin.attrs["spec_hash"] == h


def test_a_late_lower_numbered_twin_takes_the_network_over():
    """Two workers trained one network; the lower trial number stands for it, whatever arrives first."""
    study = optuna.create_study(directions=DIRECTIONS)
    dist = {"x": FloatDistribution(0, 1)}
    late = create_trial(state=TrialState.RUNNING, params={"x": 0.1}, distributions=dist)
    study.add_trial(late)
    study.add_trial(create_trial(values=[0.9, 10, 1.0], params={"x": 0.2}, distributions=dist,
                                 user_attrs={"outcome": "trained", "spec_hash": "h"}))
    ledger = Ledger(OBJECTIVES, DIRECTIONS).update(study)
    assert [r.number for r in ledger.front] == [1] and [t.number for t in ledger.unfinished] == [0]
    trial_id = study.trials[0]._trial_id
    study._storage.set_trial_user_attr(trial_id, "outcome", "trained")
    study._storage.set_trial_user_attr(trial_id, "spec_hash", "h")
    study._storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.8, 10, 1.0])
    ledger.update(study)
    assert [r.number for r in ledger.front] == [0] == [r.number for r in summarize(study, _Cfg(), None, None).front]
    assert ledger.twin("h", "cpu:x").number == 0
    assert [r.number for r in ledger.summary(study, None, None).rows] == [0, 1]  # in trial order, arrived late


class _Cfg:
    objectives, directions = OBJECTIVES, DIRECTIONS


def test_grouped_attributes_read_as_an_older_studys_flat_ones():
    flat = {"spec": {"stem": "cifar"}, "spec_name": "n", "spec_hash": "h", "params": 10, "macs": 20,
            "mlflow_run_id": "r", "seed": 3, "threads": 1, "outcome": "trained"}
    network = ("spec", "spec_name", "spec_hash", "params", "macs", "mlflow_run_id")
    grouped = {"network": {k: flat[k] for k in network}, "training": {"seed": 3, "threads": 1}, "outcome": "trained"}
    trials = [create_trial(values=[0.9, 10, 1.0], user_attrs=a) for a in (flat, grouped)]
    rows = [Row.from_trial(t, OBJECTIVES) for t in trials]
    assert {k: rows[1].attrs[k] for k in flat} == flat == {k: trial_attrs(trials[1])[k] for k in flat}
    assert rows[0].spec == rows[1].spec == {"stem": "cifar"}
    assert trial_attrs(trials[0]) is trials[0].user_attrs  # an older study's trial: read as it is
