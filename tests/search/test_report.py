"""The study report (`resnext-nas report`): one offline HTML file whose numbers match the study."""

import dataclasses
import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from benchmarks.report import synthetic_study
from search import analysis, report
from search.cli import main
from search.config import experiment_from_dict, load_experiment
from search.pareto import pick
from search.results import finished_rows, front_table, hypervolume_by_trial, pareto_rows, trained_rows
from search.storage import load_study
from tests.search.conftest import tiny_raw

SECTIONS = ("front", "hypervolume", "design-space", "importance", "curves", "outcomes", "recipe")


def page_data(text: str) -> dict:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    assert m, "no report-data blob"
    return json.loads(m.group(1))


def assert_offline(text: str) -> None:
    assert "<script src" not in text.replace(" ", "").lower().replace("<scriptsrc", "<script src")
    assert not re.search(r"""<(script|link|img|iframe)[^>]*\s(src|href)\s*=\s*["']?(https?:)?//""", text, re.I)
    assert "Plotly.newPlot" in text and "plotly.js" in text.lower()  # the library itself is in the page


@pytest.fixture(scope="module")
def real_study(tmp_path_factory):
    """A tiny real study (5 networks trained on synthetic data, CPU), its experiment file and its report."""
    from search.study import run_search

    tmp = tmp_path_factory.mktemp("report")
    raw = tiny_raw(tmp, search={"n_trials": 5}, tracking={"enabled": False})
    exp = tmp / "tiny.yaml"
    exp.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = experiment_from_dict(raw, name="tiny")
    run_search(cfg, quiet=True)
    out_dir = tmp / "out"
    assert main(["report", str(exp), "--out", str(out_dir / "study.html")]) == 0
    return cfg, exp, out_dir


@pytest.mark.slow
def test_report_of_a_real_study_is_one_offline_file_with_every_section(real_study):
    cfg, exp, out_dir = real_study
    assert [p.name for p in out_dir.iterdir()] == ["study.html"]  # one file, nothing beside it
    text = (out_dir / "study.html").read_text()
    assert_offline(text)
    for anchor in SECTIONS:
        assert f'id="{anchor}"' in text, f"no section {anchor}"

    study = load_study(cfg)
    rows = finished_rows(study, cfg.objectives)
    front = pareto_rows(rows, cfg.directions)
    assert front
    table = front_table(front, cfg.objectives)
    knee = pick(table, "knee", dict(zip(cfg.objectives, cfg.directions, strict=True)))
    data = page_data(text)
    assert data["knee"] == knee["trial"]
    assert f"knee · trial {knee['trial']}" in text
    assert f"resnext-nas export {exp} --pick knee" in text
    for r in front:
        assert r.attrs["spec_name"] in text and r.attrs["spec_hash"] in text
    assert sorted(f["trial"] for f in data["front"]) == sorted(r.number for r in front)

    # the EDF is the fraction of trained networks with an error at most e, computed directly
    errors = sorted(1 - r.values["val_accuracy"] for r in trained_rows(rows))
    ds = data["design_space"]
    assert ds["n"] == len(errors)
    assert ds["all"]["errors"] == pytest.approx(errors)
    assert ds["all"]["cum"] == pytest.approx([(i + 1) / len(errors) for i in range(len(errors))])
    # hypervolume: the study's own series on its fixed reference point
    expected = hypervolume_by_trial(rows, study.user_attrs["hv_reference"])
    assert data["hypervolume"]["trial"] == [n for n, _ in expected]
    assert data["hypervolume"]["hv"] == pytest.approx([v for _, v in expected])
    assert data["hypervolume"]["epochs"][-1] == pytest.approx(
        sum(r.attrs["metrics"]["epochs"] for r in rows if r.outcome == "trained"))
    # 8 networks are too few for PED-ANOVA: said so, not a crash or a meaningless chart
    assert data["importance"] is None and "too few trained networks for PED-ANOVA" in text
    # learning curves of the front, and the recipe
    for r in front:
        assert f"trial {r.number}: epoch" in text
    assert "data.dataset" in text and "version: optuna" in text
    # the strategy note: no static budget here, so every network of the space is within it
    st = data["strategy"]
    assert (st["sampler"], st["in_budget"], st["trained"]) == ("random", cfg.space.size(), len(trained_rows(rows)))
    assert "consider sampler costaware over random" in text


def test_early_ranking_is_the_rank_correlation_of_an_epoch_with_the_last():
    from search.results import Row

    def row(curve):
        return Row(0, {}, True, {}, {"curve": {"val_accuracy": curve}})

    rows = [row([0.1 * i, 0.5 + 0.01 * ((-1) ** i) * i, 0.2 + 0.01 * i]) for i in range(10)]
    rho = analysis.early_ranking(rows)
    assert set(rho) == {1, 2} and rho[1] == pytest.approx(1.0)  # epoch 1 in the final order
    assert abs(rho[2]) < 0.5  # epoch 2 alternates around the middle
    assert analysis.early_ranking(rows[:7]) == {}  # too few networks to say


def test_the_strategy_estimates_the_networks_within_the_budget():
    """The quickstart space's networks within the budget counted (264 of 384), and a larger space's estimated."""
    from search.config import load_experiment
    from space import complexity

    cfg = load_experiment("experiments/quickstart.yaml")
    exact = sum(complexity(s).params <= cfg.constraints.max_params for s in cfg.space.enumerate())
    st = analysis.strategy(cfg, [])
    assert (st["space"], st["in_budget"], st["exact"]) == (384, exact, True)
    assert st["share"] == 0 and st["early_ranking"] == {}
    assert "costaware is the sampler to keep" in st["advice"]
    everything = analysis.strategy(dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, n_trials=300)), [])
    assert "the sampler hardly matters" in everything["advice"]
    big = load_experiment("experiments/quickstart.yaml",
                          ["space.depth.high=4", "space.cardinality=[1,2,4,8,16]", "space.stem_ch=[8,16,24,32]"])
    assert big.space.num_combinations() > analysis.EXACT_SPACE
    estimate = analysis.strategy(big, [])
    exact = sum(complexity(s).params <= big.constraints.max_params for s in big.space.enumerate())
    assert not estimate["exact"] and abs(estimate["in_budget"] - exact) <= 0.1 * exact


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A synthetic 300-trial study (no training): enough networks for importance and good ranges."""
    tmp = tmp_path_factory.mktemp("synthetic")
    cfg, exp = synthetic_study(tmp, 300, seed=1)
    study = load_study(cfg)
    data = analysis.collect(study, cfg, str(exp))
    return cfg, exp, data, report.study_report(data, {"env": "test"})


def test_the_page_renders_the_analysis_numbers(synthetic):
    _, _, data, text = synthetic
    blob = page_data(text)
    assert blob["design_space"] == json.loads(json.dumps(analysis.design_space(data.trained)))
    assert blob["hypervolume"] == json.loads(json.dumps(analysis.hv_series(data)))
    assert blob["importance"] == json.loads(json.dumps(analysis.importance(data)[0]))
    assert blob["knee"] == data.knee.number
    assert sorted(f["trial"] for f in blob["front"]) == sorted(r.number for r in data.front)


def test_design_space_numbers_match_a_direct_computation(synthetic):
    _, _, data, _ = synthetic
    ds = analysis.design_space(data.trained)
    trained = data.trained
    errors = np.array([1 - r.values["val_accuracy"] for r in trained])
    groups = np.array([r.spec["stages"][0]["groups"] for r in trained])
    assert ds["dims"]["cardinality"], "no EDF per cardinality"
    for value, curve in ds["dims"]["cardinality"].items():
        sel = np.sort(errors[groups == int(value)])
        assert curve["errors"] == pytest.approx(sel.tolist())
        # F(e) at each network's error = fraction of that value's networks with an error <= e
        assert curve["cum"] == pytest.approx([(sel <= e).mean() for e in sel])
        assert curve["min"] == pytest.approx(sel.min())
    # the normalised EDF gives every non-empty complexity bin the same total weight
    params = np.array([r.attrs["params"] for r in trained], dtype=float)
    w = analysis.complexity_weights(params, params.min(), params.max())
    edges = np.linspace(np.log10(params.min()), np.log10(params.max()), analysis.COMPLEXITY_BINS + 1)
    ids = np.clip(np.searchsorted(edges, np.log10(params), side="right") - 1, 0, analysis.COMPLEXITY_BINS - 1)
    per_bin = [w[ids == b].sum() for b in np.unique(ids)]
    assert per_bin == pytest.approx([1 / len(per_bin)] * len(per_bin))
    assert ds["all"]["cum_norm"][-1] == pytest.approx(1.0)
    assert ds["all"]["cum_norm"] != pytest.approx(ds["all"]["cum"])  # the reweighting changes the curve


def test_good_ranges_contain_the_best_networks_value(synthetic):
    _, _, data, _ = synthetic
    ds = analysis.design_space(data.trained)
    best = min(data.trained, key=lambda r: 1 - r.values["val_accuracy"])
    assert ds["best"]["trial"] == best.number
    dims = analysis.dimensions(best.spec)
    checked = 0
    for name, g in ds["good"].items():
        if name in dims:
            assert g["lo"] <= dims[name] <= g["hi"], (name, g, dims[name])
            checked += 1
    assert checked >= 5
    # a narrow range is possible: the bootstrap is not just the whole range of every dimension
    errors, values = analysis.design_matrix(data.trained)
    ranges = analysis.good_ranges(errors, values, n_boot=500, seed=3)
    assert ranges.keys() == values.keys()
    assert any(r["hi"] - r["lo"] < np.nanmax(values[k]) - np.nanmin(values[k]) for k, r in ranges.items())


def test_importance_outcomes_and_failures(synthetic):
    _, _, data, text = synthetic
    scores, note = analysis.importance(data)
    assert "PED-ANOVA on" in note
    assert scores and sum(scores.values()) == pytest.approx(1.0, abs=1e-6)
    assert "channel_mult" not in scores  # fixed in this space: it cannot matter
    assert "cardinality" in scores
    for outcome in ("trained", "over_budget", "reused"):
        count = data.counts[outcome]
        assert count > 0
        assert f"<td>{outcome.replace('_', ' ')}</td><td>{count}</td>" in text
    assert any(f["kind"] == "nan_loss" and f["count"] > 0 for f in data.failures)
    assert "FloatingPointError: the training loss became NaN" in text
    assert "OutOfMemoryError" in text
    # infeasible proposals are drawn (muted) with the front
    assert re.search(r"infeasible / never trained \(\d+\)", text)


def test_projected_front_is_the_front_of_two_objectives(synthetic):
    _, _, data, _ = synthetic
    proj = analysis.projected_front(data, "params", "val_accuracy")
    assert 0 < len(proj) <= len(data.front)
    assert [r.values["params"] for r in proj] == sorted(r.values["params"] for r in proj)
    for r in data.front:  # a front network is off the staircase iff one on it is at least as good on both
        beaten = any(p.values["params"] <= r.values["params"] and p.values["val_accuracy"] >= r.values["val_accuracy"]
                     and p is not r for p in proj)
        assert (r in proj) != beaten


def test_compare_two_studies(tmp_path):
    cfg_a, exp_a = synthetic_study(tmp_path / "a", 120, seed=2, max_params=2.0e6, name="small_budget")
    cfg_b, exp_b = synthetic_study(tmp_path / "b", 120, seed=3, max_params=4.0e6, name="large_budget")
    out = tmp_path / "compare.html"
    assert main(["report", str(exp_a), str(exp_b), "--out", str(out)]) == 0
    text = out.read_text()
    assert_offline(text)
    data = page_data(text)
    assert data["studies"] == ["small_budget", "large_budget"]
    ref_a = load_study(cfg_a).user_attrs["hv_reference"]
    ref_b = load_study(cfg_b).user_attrs["hv_reference"]
    assert ref_a["params"] != ref_b["params"]  # the references differ: the report must say which it uses
    common = data["common_reference"]
    assert common["params"] == max(ref_a["params"], ref_b["params"]) and common["val_accuracy"] == 0
    rows_a = finished_rows(load_study(cfg_a), cfg_a.objectives)
    assert data["hypervolume"]["small_budget"]["hv"] == pytest.approx(
        [v for _, v in hypervolume_by_trial(rows_a, common)])
    assert data["recipe_differences"] == {"constraints.max_params": [2.0e6, 4.0e6]}
    assert "constraints.max_params" in text and "reference points differ" in text
    assert text.count('"legendgroup":"small_budget"') >= 1


def test_report_errors_are_one_line(tmp_path, capsys):
    raw = tiny_raw(tmp_path, tracking={"enabled": False})
    exp = tmp_path / "none.yaml"
    exp.write_text(yaml.safe_dump(raw))
    assert main(["report", str(exp), "--out", str(tmp_path / "x.html")]) == 2
    assert "run `resnext-nas search` first" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()
    assert main(["report", str(exp), str(exp), "--storage", "a", "--storage", "b", "--storage", "c"]) == 2


def test_log_report_logs_the_page_and_never_raises(synthetic, capsys):
    _, exp, data, _ = synthetic
    cfg = load_experiment(exp)  # as a command reads it: the report names this file
    logged = []
    tracker = SimpleNamespace(log_text=lambda run, text, name: logged.append((run, name, text)))
    summary = SimpleNamespace(study=data.study, parent_id="run1", tracker=tracker)
    report.log_report(summary, cfg)
    assert logged and logged[0][:2] == ("run1", "report.html") and len(logged[0][2]) > 1e6
    text = logged[0][2]
    assert f"experiment <code>{exp}</code>" in text and f"resnext-nas export {exp} --pick knee" in text
    assert "EXP.yaml" not in text and page_data(text)["experiment"] == str(exp)
    report.log_report(SimpleNamespace(study=data.study, parent_id=None, tracker=tracker), cfg)
    assert len(logged) == 1  # no parent run: nothing
    broken = SimpleNamespace(study=None, parent_id="run1", tracker=tracker)
    report.log_report(broken, cfg)  # a report that cannot be made warns and returns
    assert "the study report was not made" in capsys.readouterr().err
    assert len(logged) == 1


def test_edf_and_weights_units():
    e, f = analysis.edf(np.array([0.3, 0.1, 0.2, 0.2]))
    assert e == [0.1, 0.2, 0.2, 0.3] and f == pytest.approx([0.25, 0.5, 0.75, 1.0])
    e, f = analysis.edf(np.array([0.3, 0.1]), np.array([3.0, 1.0]))
    assert f == pytest.approx([0.25, 1.0])
    w = analysis.complexity_weights(np.array([1e3, 1e3, 1e3, 1e6]), 1e3, 1e6, bins=3)
    assert w.tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 6, 1 / 2])
    assert math.isclose(w.sum(), 1.0)
