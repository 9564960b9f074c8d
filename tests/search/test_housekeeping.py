"""Listing a storage's studies; deleting one study with its MLflow runs and nothing else."""

import pytest
from optuna.trial import TrialState

from search.cli import main
from search.confirm import confirm_front
from search.housekeeping import list_studies, study_names
from search.storage import load_study
from search.study import run_search
from search.tracking import STUDY, Tracker
from space.errors import SpecError


def test_a_storage_that_does_not_exist_has_no_studies_and_stays_absent(tmp_path, capsys):
    journal = tmp_path / "none" / "optuna.journal"
    assert list_studies(f"journal:{journal}") == []
    assert main(["studies", "--storage", f"journal:{journal}"]) == 0
    assert "no studies in" in capsys.readouterr().out
    assert main(["delete", "x", "--storage", f"journal:{journal}", "--yes"]) == 2
    assert "no study 'x'" in capsys.readouterr().err
    assert not journal.exists()


def _by_hand(study):
    """Counts read straight from the trials, not through search.results."""
    counts = {"trained": 0, "reused": 0, "over_budget": 0, "out_of_memory": 0, "failed": 0, "running": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            counts[t.user_attrs["outcome"]] += 1
        elif t.state == TrialState.FAIL:
            counts["failed"] += 1
        elif t.state == TrialState.RUNNING:
            counts["running"] += 1
    return counts


def _active_runs(tracker, name):
    return tracker.client.search_runs([tracker.experiment_id], f"tags.`{STUDY}` = '{name}'", max_results=1000)


@pytest.mark.slow
def test_studies_lists_counts_and_delete_removes_exactly_one_study(tiny, tmp_path, monkeypatch, capsys):
    journal = f"journal:{tmp_path}/optuna.journal"  # the default kind of storage
    # two studies of one experiment file (so one MLflow experiment), in one storage; b has a budget that binds
    a = tiny(name="exp", search={"study_name": "a", "n_trials": 2, "storage": journal})
    b = tiny(name="exp", search={"study_name": "b", "n_trials": 3, "storage": journal, "seed": 1},
             constraints={"max_params": 1000})
    run_search(a, quiet=True)
    run_search(b, quiet=True)
    confirm_front(a, seeds=2, top=1, quiet=True)  # a's runs include a retraining run

    infos = {i.name: i for i in list_studies(journal)}
    assert set(infos) == {"a", "b"}
    for cfg in (a, b):
        study = load_study(cfg)
        info = infos[cfg.study_name]
        assert {k: info.counts[k] for k in _by_hand(study)} == _by_hand(study)
        trained = [t for t in study.trials if t.user_attrs.get("outcome") == "trained"
                   and all(v <= 0 for v in t.constraints.values())]
        assert info.best["val_accuracy"] == max(t.values[0] for t in trained)
        assert info.best["params"] == min(t.values[1] for t in trained)
        assert info.last_activity == max(t.datetime_complete for t in study.trials)
    assert infos["a"].confirmed == 1 and infos["b"].confirmed == 0
    assert infos["b"].counts["over_budget"] > 0
    assert infos["b"].counts["over_budget"] == sum(t.user_attrs.get("outcome") == "over_budget"
                                                  for t in load_study(b).trials)

    assert main(["studies", "--storage", journal]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"2 studies in {journal}")
    for name, info in infos.items():
        cells = next(line for line in out.splitlines() if line.startswith(f"{name} ")).split()
        assert cells[1:9] == [str(info.counts[k]) for k in ("trained", "reused", "over_budget", "out_of_memory",
                                                              "failed", "running")] + [str(info.front),
                                                                                       str(info.confirmed)]

    tracker = Tracker(a.tracking, a.name)
    tracker.setup()
    a_runs, b_runs = _active_runs(tracker, "a"), _active_runs(tracker, "b")
    assert len(a_runs) == 1 + len(load_study(a).trials) + 1  # parent, trials, one retraining
    b_trials = [(t.number, t.state, t.values) for t in load_study(b).trials]
    uri = a.tracking.uri

    # an unknown study: exit 2, nothing deleted
    assert main(["delete", "c", "--storage", journal, "--tracking-uri", uri, "--yes"]) == 2
    assert "no study 'c'" in capsys.readouterr().err and study_names(journal) == ["a", "b"]
    # not confirmed (the wrong name typed, or no input at all): nothing deleted
    monkeypatch.setattr("builtins.input", lambda prompt: "b")
    assert main(["delete", "a", "--storage", journal, "--tracking-uri", uri]) == 1
    monkeypatch.setattr("builtins.input", lambda prompt: (_ for _ in ()).throw(EOFError))
    assert main(["delete", "a", "--storage", journal, "--tracking-uri", uri]) == 1
    assert "nothing deleted" in capsys.readouterr().err
    assert study_names(journal) == ["a", "b"] and len(_active_runs(tracker, "a")) == len(a_runs)

    # typed right: a's study and every one of its runs go; b and its runs stay; the experiment stays
    monkeypatch.setattr("builtins.input", lambda prompt: "a")
    assert main(["delete", "a", "--storage", journal, "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert f"deleted study 'a' ({len(a_runs) - 2} trials) and {len(a_runs)} MLflow runs" in out
    assert "experiment 'exp' kept" in out
    assert study_names(journal) == ["b"]
    with pytest.raises(SpecError, match="no study 'a'"):
        load_study(a)
    assert _active_runs(tracker, "a") == []
    assert {tracker.client.get_run(r.info.run_id).info.lifecycle_stage for r in a_runs} == {"deleted"}
    assert [(t.number, t.state, t.values) for t in load_study(b).trials] == b_trials
    assert sorted(r.info.run_id for r in _active_runs(tracker, "b")) == sorted(r.info.run_id for r in b_runs)
    assert tracker.client.get_experiment_by_name("exp").lifecycle_stage == "active"
    assert f"({len(b_runs)} runs of other studies left" in out
