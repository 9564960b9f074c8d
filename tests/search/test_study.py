"""End-to-end studies on generated data, with real SQLite storages and a real MLflow store."""

import json
import sqlite3

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from search.export import evaluate_exported, export_best, load_weights
from search.pareto import non_dominated, to_losses
from search.results import hypervolume_by_trial, trial_attrs
from search.storage import load_study
from search.study import open_or_create_study, run_search
from space import NetSpec, build_model, complexity, load_spec
from space.errors import SpecError

pytestmark = pytest.mark.slow


def brute_force_front(study, directions):
    """Trial numbers of the front, from the raw trials: trained, feasible, first trial of each network."""
    done, seen = [], set()
    for t in study.trials:
        if t.state.name == "COMPLETE" and t.user_attrs["outcome"] == "trained" \
                and all(v <= 0 for v in t.constraints.values()) and trial_attrs(t)["spec_hash"] not in seen:
            seen.add(trial_attrs(t)["spec_hash"])
            done.append(t)
    keep = non_dominated([to_losses(t.values, directions) for t in done])
    return {done[i].number for i in keep}


def test_study_logs_runs_tags_and_exports(tiny, tmp_path):
    cfg = tiny()
    summary = run_search(cfg, quiet=True)
    study = summary.study
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert sum(t.user_attrs["outcome"] == "trained" for t in complete) == 4 == summary.counts["trained"]

    client = MlflowClient(cfg.tracking.uri)
    parent = client.get_run(summary.parent_id)
    assert parent.info.status == "FINISHED"
    with sqlite3.connect(cfg.tracking.uri[len("sqlite:///"):]) as db:  # one sync per commit, not several
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    artifacts = {a.path for a in client.list_artifacts(summary.parent_id)}
    assert {"pareto.json", "pareto.csv", "experiment.json"} <= artifacts
    assert any(a.endswith(".png") for a in artifacts)
    hv = sorted((m.step, m.value) for m in client.get_metric_history(summary.parent_id, "hypervolume"))
    ref = study.user_attrs["hv_reference"]
    unit = study.user_attrs["latency_reference_ms"]  # CPU latency is interleaved: its unit, measured once
    assert unit > 0
    every = hypervolume_by_trial(summary.rows, ref)  # the value after each trial, at its number
    assert [s for s, _ in every] == [t.number for t in complete]
    # logged at the first trial and wherever it changed (with the front), nowhere else
    want = [(s, v) for i, (s, v) in enumerate(every) if i == 0 or v > every[i - 1][1] * (1 + 1e-12)]
    assert [s for s, _ in hv] == [s for s, _ in want] and len(want) > 1
    assert [v for _, v in hv] == pytest.approx([v for _, v in want], rel=1e-12) and 0 < hv[-1][1] <= 1
    assert all(a[1] < b[1] for a, b in zip(hv, hv[1:], strict=False))

    runs = summary.tracker.trial_runs(summary.parent_id)
    assert len(runs) == len(complete)
    by_trial = {int(r.data.tags["resnext_nas.trial"]): r for r in runs}
    for r in runs:  # every trained network was timed in the study's unit
        if r.data.tags.get("outcome") == "trained":
            assert r.data.tags["latency.interleaved"] == "True" and float(r.data.tags["latency.reference_ms"]) == unit
    front = brute_force_front(study, cfg.directions)
    for number, run in by_trial.items():
        assert run.info.status == "FINISHED"
        assert run.data.tags["pareto"] == ("true" if number in front else "false")
        t = study.trials[number]
        assert run.data.metrics["params"] == trial_attrs(t)["params"]
        assert run.data.params["num_stages"] == str(len(trial_attrs(t)["spec"]["stages"]))
        if "reused_from" not in t.user_attrs:
            assert 0.0 <= run.data.metrics["val_accuracy"] <= 1.0
            assert run.data.metrics["latency_ms"] > 0
            hist = client.get_metric_history(run.info.run_id, "val_accuracy")
            assert sorted(m.step for m in hist) == [0, 1]  # final (step 0) + one epoch
        assert NetSpec.from_dict(json.loads(run.data.tags["spec"])).to_dict() == trial_attrs(t)["spec"]  # rebuildable

    out = tmp_path / "best.yaml"
    doc = export_best(cfg, "max-accuracy", out)
    spec = load_spec(out)
    logged = by_trial[doc["provenance"]["trial"]].data.metrics["params"]
    assert sum(p.numel() for p in build_model(spec).parameters()) == logged == complexity(spec).params
    best = max(study.best_trials, key=lambda t: t.values[0])
    assert doc["metrics"]["val_accuracy"] == pytest.approx(best.values[0])

    # Retraining the export with its trial's seed reproduces the trial; weights round-trip safely.
    report = evaluate_exported(cfg, out, weights_out=tmp_path / "w.safetensors")
    assert report["val_accuracy"] == doc["metrics"]["val_accuracy"] == report["search_val_accuracy"]
    assert doc["provenance"]["threads"] == report["threads"] == torch.get_num_threads()
    assert 0.0 <= report["test_accuracy"] <= 1.0 and report["test_images"] > 0
    model = load_weights(tmp_path / "w.safetensors")
    assert sum(p.numel() for p in model.parameters()) == logged

    # An edited file is caught on load.
    raw = yaml.safe_load(out.read_text())
    raw["spec"]["stem_ch"] += 1
    out.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match="parameters"):
        load_spec(out)


def _parent_record(summary):
    client = summary.tracker.client
    hv = {m.step: m.value for m in client.get_metric_history(summary.parent_id, "hypervolume")}
    return hv, client.download_artifacts(summary.parent_id, "experiment.json")


def test_resume_continues_numbering_keeps_trials_and_never_rewrites_the_past(tiny, tmp_path):
    first = run_search(tiny(search={"n_trials": 2}), quiet=True)
    before = {t.number: t.values for t in first.study.trials}
    hv_before, _ = _parent_record(first)
    recorded = open(_parent_record(first)[1]).read()
    # resuming may change how much is run, and how: more trials, another sampler, a time limit
    second = run_search(tiny(search={"n_trials": 4, "sampler": "tpe", "timeout_s": 600}), quiet=True)
    numbers = [t.number for t in second.study.trials]
    assert numbers == list(range(len(numbers))) and second.counts["trained"] == 4
    assert {n: second.study.trials[n].values for n in before} == before
    # the parent run is reused, not duplicated; what it recorded of the first run stays as it was
    assert second.parent_id == first.parent_id
    hv_after, recipe_file = _parent_record(second)
    assert {n: hv_after[n] for n in hv_before} == hv_before  # logged where it changed: the resumed part added some
    assert set(hv_after) <= set(numbers) and max(hv_after) >= len(before)
    assert open(recipe_file).read() == recorded  # experiment.json is the recipe the study was made with


def test_changed_space_with_same_study_name_is_refused(tiny):
    run_search(tiny(search={"n_trials": 1}), quiet=True)
    changed = tiny(space={"cardinality": [1, 4]})
    with pytest.raises(SpecError, match=r"another recipe.*space\.cardinality: \[1, 2\] \(study\) vs \[1, 4\] \(now\)"):
        load_study(changed)


def test_static_budget_never_builds_is_infeasible_and_is_free(tiny, monkeypatch):
    import search.objective

    built = []
    real_build = search.objective.build_model
    monkeypatch.setattr(search.objective, "build_model", lambda spec: built.append(spec.hash) or real_build(spec))
    cfg = tiny(space={"stem_ch": [4, 64]}, constraints={"max_params": 3000}, search={"n_trials": 4})
    summary = run_search(cfg, quiet=True)
    skipped = [t for t in summary.study.trials if t.user_attrs["outcome"] == "over_budget"]
    assert skipped, "the budget must bind in this test"
    for t in skipped:
        assert trial_attrs(t)["params"] > 3000
        assert t.constraints["max_params"] > 0
        assert "metrics" not in t.user_attrs and "seed" not in trial_attrs(t)  # never trained
        assert trial_attrs(t)["spec_hash"] not in built[1:]  # never built for a trial
    trained = [t for t in summary.study.trials if t.user_attrs["outcome"] == "trained"]
    assert len(trained) == 4 == summary.counts["trained"]  # n_trials counts trained networks only
    assert summary.counts["over_budget"] == len(skipped)
    assert len(summary.study.trials) == len(trained) + len(skipped) + summary.counts["reused"]
    # built: the space's largest network once, untrained, to time it for the hypervolume reference; then
    # the trained networks only
    assert built[0] == cfg.space.largest().hash
    # costs first: a trained network is built twice, untrained for its latency, then for training
    assert sorted(built[1:]) == sorted(2 * [trial_attrs(t)["spec_hash"] for t in trained])
    assert all(trial_attrs(t)["params"] <= 3000 for t in summary.study.best_trials)


def test_impossible_budget_refuses_to_start(tiny):
    cfg = tiny(constraints={"max_params": 10})
    with pytest.raises(SpecError, match="smallest network of the space"):
        run_search(cfg, quiet=True)


def test_identical_network_is_reused_free_and_tagged_once(tiny):
    # a two-network space; the first network is proposed three times
    cfg = tiny(space={"num_stages": 1, "stem_ch": 4, "bottleneck_ch": 4, "cardinality": [1, 2]},
               search={"n_trials": 2})
    study = open_or_create_study(cfg)
    for groups in (1, 1, 1, 2):
        study.enqueue_trial({"cardinality": groups})
    summary = run_search(cfg, quiet=True)
    trials = summary.study.trials
    assert [t.user_attrs.get("reused_from") for t in trials] == [None, 0, 0, None]
    assert [t.user_attrs["outcome"] for t in trials] == ["trained", "reused", "reused", "trained"]
    assert summary.counts["trained"] == 2 and summary.counts["reused"] == 2  # reuses are free
    assert trials[1].values == trials[0].values
    runs = {r.data.tags["resnext_nas.trial"]: r for r in summary.tracker.trial_runs(summary.parent_id)}
    assert runs["1"].data.tags["reused_from"] == "0"
    # pareto tags: once per network, on the trial that trained it, equal to the front table
    tagged = {int(n) for n, r in runs.items() if r.data.tags["pareto"] == "true"}
    assert tagged == {r.number for r in summary.front} <= {0, 3}


def test_a_space_with_no_new_network_left_stops(tiny, capsys):
    cfg = tiny(space={"num_stages": 1, "stem_ch": 4, "bottleneck_ch": 4, "cardinality": 1}, search={"n_trials": 3})
    summary = run_search(cfg, quiet=True)
    assert summary.counts["trained"] == 1 and len(summary.study.trials) == 1
    assert "every one of the space's 1 networks has been tried" in capsys.readouterr().err
    assert summary.tracker.client.get_run(summary.parent_id).info.status == "FINISHED"


def test_tracking_store_lost_mid_study_does_not_stop_it(tiny, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")

    def lose_store(summary):  # after the first trial, the store goes away (nothing listens there)
        summary.tracker.client = MlflowClient("http://127.0.0.1:9")

    summary = run_search(tiny(search={"n_trials": 3}), quiet=True, on_trial=lose_store)
    assert len([t for t in summary.study.trials if t.state.name == "COMPLETE"]) == 3
    assert "[tracking]" in capsys.readouterr().err


def test_unreachable_tracking_store_at_start_is_a_clear_error(tiny, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = tiny(tracking={"uri": "http://127.0.0.1:9"})
    with pytest.raises(SpecError, match="cannot reach the MLflow tracking store"):
        run_search(cfg, quiet=True)
