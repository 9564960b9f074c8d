"""The pruner in a real study: trials stopped at rungs end PRUNED with their records, the budget in epochs binds."""

import math

import optuna
import pytest
from mlflow.tracking import MlflowClient

from search.results import PRUNED, epochs_spent, spent
from search.study import run_search
from space.errors import SpecError


@pytest.fixture(scope="module")
def pruned_study(tmp_path_factory):
    from search.config import experiment_from_dict

    from .conftest import tiny_raw

    tmp = tmp_path_factory.mktemp("asha")
    raw = tiny_raw(tmp, search={"n_trials": 50, "budget_epochs": 20, "pruner": "asha", "min_epochs": 1, "eta": 2,
                                "sampler": "random"},
                   train={"epochs": 3})
    cfg = experiment_from_dict(raw, name="asha")
    return cfg, run_search(cfg, quiet=True), tmp


@pytest.mark.slow
def test_stopped_trials_are_pruned_with_their_rung_and_never_on_the_front(pruned_study):
    cfg, summary, tmp = pruned_study
    trials = summary.study.get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    trained = [t for t in trials if t.user_attrs.get("outcome") == "trained"]
    assert pruned and trained
    for t in pruned:
        info = t.user_attrs["pruned"]
        assert t.user_attrs["outcome"] == PRUNED and info["rung"] in (1, 2) and info["place"] >= 1
        if "reused_from" not in info:
            assert str(info["rung"]) in t.user_attrs["rungs"]  # its record at the rung where it stopped
            assert len(t.user_attrs["curve"]["val_accuracy"]) == info["rung"]  # the curve up to the stop
    for t in trained:  # a trained trial passed every rung, each recorded
        assert set(t.user_attrs["rungs"]) == {"1", "2"}
        assert len(t.user_attrs["curve"]["val_accuracy"]) == 3
    assert not any(t.intermediate_values for t in trials)  # curves never in intermediate values
    front = {r.number for r in summary.front}
    assert front and not front & {t.number for t in pruned}
    assert summary.counts[PRUNED] == len(pruned)


@pytest.mark.slow
def test_the_epoch_budget_stops_the_study_and_is_logged(pruned_study):
    cfg, summary, tmp = pruned_study
    trials = summary.study.get_trials(deepcopy=False)
    used = sum(epochs_spent(t) for t in trials)
    assert 20 <= used < 20 + 3  # stops at the first trial that reaches the budget
    assert summary.counts["trained"] < cfg.search.n_trials  # the budget bound, not n_trials
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    parent = summary.parent_id
    history = client.get_metric_history(parent, "hypervolume_by_epochs")  # logged where the front changed
    by_trial = client.get_metric_history(parent, "hypervolume")
    assert len(history) == len(by_trial) and 0 < max(m.step for m in history) <= round(used)
    assert sorted(m.value for m in history) == sorted(m.value for m in by_trial)
    runs = client.search_runs([client.get_experiment_by_name("asha").experiment_id],
                              filter_string="tags.state = 'pruned'")
    assert len(runs) == summary.counts[PRUNED]
    assert all(r.data.tags["rung"] in ("1", "2") and r.info.status == "FINISHED" for r in runs)
    fresh = [r for r in runs if "reused_from" not in r.data.tags]
    assert fresh and all(r.data.metrics["train_time_s"] > 0 for r in fresh)  # a stop's training time counts
    totals = client.get_run(parent).data.metrics  # the study's spend, on its parent run
    assert totals["epochs_spent"] == pytest.approx(used) and totals["train_seconds"] > 0
    from search.analysis import collect, hv_series

    curve = hv_series(collect(summary.study, cfg))  # the report's compute curve counts the stopped trials too
    last_done = max(r.number for r in summary.rows)
    assert curve["epochs"][-1] == pytest.approx(sum(epochs_spent(t) for t in trials if t.number <= last_done))
    assert curve["epochs"][-1] > sum(epochs_spent(t) for t in trials if t.state.name == "COMPLETE")


@pytest.mark.parametrize("change, says", [
    ({"search": {"pruner": "asha", "sampler": "nsga2"}}, "NSGA-II ignores stopped trials"),
    ({"search": {"pruner": "asha"}, "train": {"epochs": 1}}, "no rung to stop a trial at"),
    ({"search": {"pruner": "probes", "sampler": "nsga2"}}, "NSGA-II ignores stopped trials"),
    ({"search": {"pruner": "probes"}, "train": {"epochs": 1}}, "search.pruner probes needs search.min_epochs"),
    ({"search": {"eta": 1}}, "search.eta must be an integer >= 2"),
    ({"search": {"budget_epochs": 0}}, "search.budget_epochs must be > 0"),
])
def test_pruner_settings_that_cannot_work_are_refused(tmp_path, change, says):
    from search.config import experiment_from_dict

    from .conftest import tiny_raw

    with pytest.raises(SpecError, match=says):
        experiment_from_dict(tiny_raw(tmp_path, **change), name="x")


def test_epochs_spent_counts_training_only():
    study = optuna.create_study(directions=["maximize"])
    for attrs, state in (({"outcome": "trained", "metrics": {"epochs": 3.0, "train_time_s": 1.5}}, "COMPLETE"),
                         ({"outcome": "reused", "metrics": {"epochs": 3.0}}, "COMPLETE"),
                         ({"outcome": "pruned", "pruned": {"rung": 2, "metrics": {"train_time_s": 0.5}}}, "PRUNED"),
                         ({"outcome": "pruned", "pruned": {"rung": 2, "reused_from": 2}}, "PRUNED"),
                         ({"outcome": "trained", "metrics": {"epochs": 3.0, "train_time_s": 1.5, "probe_epochs": 1.0,
                                                             "probe_time_s": 0.5}}, "COMPLETE"),
                         ({"outcome": "pruned", "pruned": {"rung": 1, "metrics": {"epochs": 1.0, "train_time_s": 0.5}}},
                          "PRUNED")):
        t = study.ask()
        for k, v in attrs.items():
            t.set_user_attr(k, v)
        study.tell(t, [0.5]) if state == "COMPLETE" else study.tell(t, state=optuna.trial.TrialState.PRUNED)
    assert [epochs_spent(t) for t in study.get_trials()] == [3.0, 0.0, 2.0, 0.0, 4.0, 1.0]
    assert [spent(t)[1] for t in study.get_trials()] == [1.5, 0.0, 0.5, 0.0, 2.0, 0.5]
    assert not math.isnan(sum(epochs_spent(t) for t in study.get_trials()))


@pytest.mark.slow
def test_a_resumed_study_ranks_against_the_rung_records_it_already_has(pruned_study):
    import dataclasses

    cfg, summary, tmp = pruned_study
    before = summary.study.get_trials(deepcopy=False)
    at_rung_1 = sum("1" in (t.user_attrs.get("rungs") or {}) for t in before)
    more = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, budget_epochs=30))
    resumed = run_search(more, quiet=True)
    new = [t for t in resumed.study.get_trials(deepcopy=False) if t.number >= len(before)]
    stopped = [t for t in new if t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["pruned"]["rung"] == 1
               and "reused_from" not in t.user_attrs["pruned"]]
    used = sum(epochs_spent(t) for t in resumed.study.get_trials(deepcopy=False))
    assert new and used > sum(epochs_spent(t) for t in before)  # the raised budget bought more training
    # every decision after the resume saw the first run's records at that rung
    assert all(t.user_attrs["pruned"]["of"] > at_rung_1 for t in stopped)


@pytest.mark.slow
def test_probes_train_a_complete_short_run_first_and_only_the_best_probes_in_full(tmp_path):
    """pruner probes: every trained or stopped trial first trained a complete 1-epoch run (the same
    result as training that network for 1 epoch with the trial's seed), ranked among the study's
    probes; the probes' epochs count towards the budget."""
    import dataclasses

    import torch

    from search.config import experiment_from_dict
    from search.data import load_splits
    from search.objective import build_and_train, trial_seed

    from .conftest import tiny_raw

    raw = tiny_raw(tmp_path, search={"n_trials": 50, "budget_epochs": 14, "pruner": "probes", "min_epochs": 1,
                                     "eta": 2, "sampler": "random"}, train={"epochs": 3})
    cfg = experiment_from_dict(raw, name="probes")
    summary = run_search(cfg, quiet=True, workers=1)
    trials = summary.study.get_trials(deepcopy=False)
    fresh = [t for t in trials if "probes" in t.user_attrs]
    stopped = [t for t in fresh if t.state == optuna.trial.TrialState.PRUNED]
    trained = [t for t in fresh if t.user_attrs.get("outcome") == "trained"]
    assert stopped and trained
    for t in stopped:  # rungs at 1 and 2 epochs: stopped after a probe, nothing of the full run trained
        rung = t.user_attrs["pruned"]["rung"]
        assert sorted(t.user_attrs["probes"]) == ["1", "2"][:rung]
        assert epochs_spent(t) == {1: 1.0, 2: 3.0}[rung]  # every probe it trained counts
        assert t.user_attrs["curve"]["val_accuracy"] == []
    for t in trained:  # both probes, then the full run, all counted
        assert sorted(t.user_attrs["probes"]) == ["1", "2"] and t.user_attrs["metrics"]["probe_epochs"] == 3.0
        assert len(t.user_attrs["curve"]["val_accuracy"]) == 3 and epochs_spent(t) == pytest.approx(6.0)
    used = sum(epochs_spent(t) for t in trials)
    assert 14 <= used < 14 + 6
    # the recorded probe is a complete 1-epoch run of that network with the trial's seed
    t = trained[0]
    splits = load_splits(cfg.data, torch.device("cpu"))
    _, short = build_and_train(cfg.space.from_params(t.params), splits, dataclasses.replace(cfg.train, epochs=1),
                               torch.device("cpu"), trial_seed(cfg.search.seed, t.number))
    assert t.user_attrs["probes"]["1"][0] == pytest.approx(short.val_accuracy)
    # each decision ranked the probe among the probes recorded before it
    assert all(t.user_attrs["pruned"]["of"] >= 2 for t in stopped)
