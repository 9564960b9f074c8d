"""Confirming the front: seeds, statistics, the robust rule, resuming, and what MLflow shows."""

import itertools
import math
import random
import statistics

import pytest
import yaml

import search.objective
from search.cli import main
from search.confirm import CONFIRMED, confirm_front, confirm_seed, mean_sd, robust_flags, select
from search.objective import trial_seed
from search.pareto import dominates, non_dominated, pick, to_losses
from search.results import Row, finished_rows, front_table, pareto_rows
from search.storage import load_study
from search.study import run_search
from search.tracking import PARENT, Tracker

from .conftest import tiny_raw

MAX_ACC_MIN_PARAMS = {"val_accuracy": "maximize", "params": "minimize"}


def test_confirm_seeds_are_stable_distinct_and_not_the_trial_seed():
    seeds = {confirm_seed(s, n, r) for s, n, r in itertools.product((0, 1), range(20), (1, 2, 3))}
    assert len(seeds) == 2 * 20 * 3
    assert confirm_seed(0, 5, 1) == confirm_seed(0, 5, 1)
    assert not seeds & {trial_seed(s, n) for s in (0, 1) for n in range(20)}


def test_mean_sd_is_the_sample_sd_and_zero_for_one_value():
    assert mean_sd([0.5]) == (0.5, 0.0)
    mean, sd = mean_sd([0.2, 0.4, 0.9])
    assert mean == pytest.approx(0.5)
    assert sd == pytest.approx(math.sqrt(((0.3 ** 2) + (0.1 ** 2) + (0.4 ** 2)) / 2))


def test_robust_rule_on_constructed_points():
    # dyadic numbers, so the boundary case is exact: a's worst case is 0.75 - 0.0625 = 0.6875
    points = {
        "a": {"val_accuracy": (0.75, 0.0625), "params": (1000, 0)},
        "b": {"val_accuracy": (0.5, 0.0625), "params": (1000, 0)},    # best 0.5625 < 0.6875: beaten by a
        "c": {"val_accuracy": (0.625, 0.0625), "params": (1000, 0)},  # best 0.6875 = a's worst: kept
        "d": {"val_accuracy": (0.25, 0.0), "params": (500, 0)},       # cheaper: nothing can beat it
        "e": {"val_accuracy": (0.25, 0.0), "params": (600, 0)},       # d as accurate and cheaper, no noise
    }
    flags = robust_flags(points, MAX_ACC_MIN_PARAMS)
    assert flags == {"a": True, "b": False, "c": True, "d": True, "e": False}
    points["c"]["val_accuracy"] = (0.625, 0.03125)  # best 0.65625 < 0.6875: now beaten beyond the noise
    assert robust_flags(points, MAX_ACC_MIN_PARAMS)["c"] is False
    points["a"]["params"] = (1001, 0)  # ... unless a costs more
    assert robust_flags(points, MAX_ACC_MIN_PARAMS)["c"] is True


def test_noisy_latency_counts_both_ways():
    def flags(sd):
        return robust_flags({"fast": {"val_accuracy": (0.8, 0.0), "latency_ms": (1.0, sd)},
                             "slow": {"val_accuracy": (0.8, 0.0), "latency_ms": (1.5, sd)}},
                            {"val_accuracy": "maximize", "latency_ms": "minimize"})
    assert flags(0.1) == {"fast": True, "slow": False}  # 1.1 < 1.4: slower beyond the noise
    assert flags(0.3) == {"fast": True, "slow": True}   # 1.3 > 1.2: the noise explains it


def test_without_noise_robust_is_plain_non_domination():
    rng = random.Random(0)
    for _ in range(50):
        pts = {str(i): {"val_accuracy": (rng.choice([0.5, 0.6, 0.7]), 0.0), "params": (rng.choice([1, 2, 3]), 0.0)}
               for i in range(8)}
        flags = robust_flags(pts, MAX_ACC_MIN_PARAMS)
        keep = non_dominated([to_losses([p["val_accuracy"][0], p["params"][0]], ["maximize", "minimize"])
                              for p in pts.values()])
        assert {k for k, v in flags.items() if v} == {str(i) for i in keep}


def test_robust_matches_a_brute_force_reading_of_the_rule():
    rng = random.Random(1)
    dirs = MAX_ACC_MIN_PARAMS
    for _ in range(50):
        pts = {str(i): {"val_accuracy": (rng.uniform(0.5, 0.9), rng.uniform(0, 0.05)),
                        "params": (rng.choice([1, 2, 3, 4]), 0.0)} for i in range(6)}
        flags = robust_flags(pts, dirs)
        for a, pa in pts.items():
            beaten = any(
                pb["val_accuracy"][0] - pb["val_accuracy"][1] >= pa["val_accuracy"][0] + pa["val_accuracy"][1]
                and pb["params"][0] <= pa["params"][0]
                and (pb["val_accuracy"][0] - pb["val_accuracy"][1] > pa["val_accuracy"][0] + pa["val_accuracy"][1]
                     or pb["params"][0] < pa["params"][0])
                for b, pb in pts.items() if b != a)
            assert flags[a] is not beaten


def _row(number, acc, params):
    return Row(number, {"val_accuracy": acc, "params": params}, True, {}, {})


def test_top_k_takes_the_points_closest_to_the_knee_in_scaled_objectives():
    front = [_row(0, 0.50, 100), _row(1, 0.70, 300), _row(2, 0.75, 500), _row(3, 0.90, 2000), _row(4, 0.60, 150)]
    objectives, dirs = ("val_accuracy", "params"), ["maximize", "minimize"]
    knee_row = pick(front_table(front, objectives), "knee", dict(zip(objectives, dirs, strict=True)))
    chosen = select(front, objectives, dirs, 3)
    assert chosen[0].number == knee_row["trial"]
    scaled = {r.number: ((0.90 - r.values["val_accuracy"]) / 0.4, (r.values["params"] - 100) / 1900) for r in front}
    by_distance = sorted(front, key=lambda r: math.dist(scaled[r.number], scaled[knee_row["trial"]]))
    assert [r.number for r in chosen] == [r.number for r in by_distance[:3]]
    assert [r.number for r in select(front, objectives, dirs, None)] == [0, 1, 2, 3, 4]
    assert [r.number for r in select(front, objectives, dirs, 9)] == [0, 1, 2, 3, 4]


def test_confirm_refuses_bad_arguments_and_a_missing_study(tiny):
    from space.errors import SpecError

    cfg = tiny()
    with pytest.raises(SpecError, match="--seeds"):
        confirm_front(cfg, seeds=0)
    with pytest.raises(SpecError, match="--top"):
        confirm_front(cfg, top=0)
    with pytest.raises(SpecError, match="run `resnext-nas search` first"):
        confirm_front(cfg)


@pytest.mark.slow
def test_confirm_retrains_with_new_seeds_records_stats_resumes_and_logs(tiny, tmp_path, monkeypatch, capsys):
    cfg = tiny(search={"n_trials": 3})
    run_search(cfg, quiet=True)
    study = load_study(cfg)
    front = pareto_rows(finished_rows(study, cfg.objectives), cfg.directions)
    assert front

    calls = []
    real = search.objective.build_and_train

    def counting(spec, splits, train_cfg, device, seed, *a, **k):
        calls.append((spec.hash, seed))
        return real(spec, splits, train_cfg, device, seed, *a, **k)
    monkeypatch.setattr(search.objective, "build_and_train", counting)

    # the knee only, first: the export's knee, with two more seeds
    knee = pick(front_table(front, cfg.objectives), "knee", dict(zip(cfg.objectives, cfg.directions, strict=True)))
    result = confirm_front(cfg, seeds=3, top=1, quiet=True)
    assert result.chosen == [knee["trial"]] and result.trained == 2 and len(calls) == 2
    assert set(study.user_attrs[CONFIRMED]) == {str(knee["trial"])}

    # the whole front: the knee is not trained again
    result = confirm_front(cfg, seeds=3, quiet=True)
    assert len(calls) == 2 * len(front) and result.trained == 2 * (len(front) - 1)
    confirmed = load_study(cfg).user_attrs[CONFIRMED]
    assert set(confirmed) == {str(r.number) for r in front}
    for r in front:
        e = confirmed[str(r.number)]
        assert e["seeds"][0] == r.attrs["seed"] and len(set(e["seeds"])) == 3
        assert e["val_accuracy"][0] == r.attrs["metrics"]["val_accuracy"]
        assert e["mean"] == pytest.approx(statistics.fmean(e["val_accuracy"]))
        assert e["sd"] == pytest.approx(statistics.stdev(e["val_accuracy"]))
        assert e["latency_ms"][0] == r.attrs["metrics"]["latency_ms"] and len(e["latency_ms"]) == 3
        assert e["latency_ms_mean"] == pytest.approx(statistics.fmean(e["latency_ms"]))
        assert e["on_front"] is True and e["name"] == r.attrs["spec_name"]
    trained_seeds = [seed for _, seed in calls]
    assert sorted(trained_seeds) == sorted(s for e in confirmed.values() for s in e["seeds"][1:])
    owner = {seed: n for n, e in confirmed.items() for seed in e["seeds"][1:]}
    hash_of = {str(r.number): r.attrs["spec_hash"] for r in front}
    assert all(hash_of[owner[seed]] == h for h, seed in calls)  # each seed trained the network it is recorded for

    # the robust flags follow the rule on the recorded numbers
    points = {k: {"val_accuracy": (e["mean"], e["sd"]), "latency_ms": (e["latency_ms_mean"], e["latency_ms_sd"]),
                  "params": (next(r for r in front if str(r.number) == k).values["params"], 0.0)}
              for k, e in confirmed.items()}
    expected = robust_flags(points, dict(zip(cfg.objectives, cfg.directions, strict=True)))
    assert {k: e["robust"] for k, e in confirmed.items()} == expected
    for a, pa in points.items():  # and no robust point is beaten beyond the noise by another
        for b, pb in points.items():
            if a != b and expected[a]:
                worst_b = to_losses([pb["val_accuracy"][0] - pb["val_accuracy"][1], pb["params"][0],
                                     pb["latency_ms"][0] + pb["latency_ms"][1]], ["maximize", "minimize", "minimize"])
                best_a = to_losses([pa["val_accuracy"][0] + pa["val_accuracy"][1], pa["params"][0],
                                    pa["latency_ms"][0] - pa["latency_ms"][1]], ["maximize", "minimize", "minimize"])
                assert not dominates(worst_b, best_a)

    # a rerun from the command line trains nothing and prints the table
    exp = tmp_path / "tiny.yaml"
    exp.write_text(yaml.safe_dump(tiny_raw(tmp_path, search={"n_trials": 3})))
    assert main(["confirm", str(exp), "--seeds", "3", "--quiet"]) == 0
    assert len(calls) == 2 * len(front)
    out = capsys.readouterr().out
    assert "(0 trained now)" in out and "val_accuracy (mean ± sd)" in out
    for r in front:
        e = confirmed[str(r.number)]
        line = next(line for line in out.splitlines() if line.startswith(r.attrs["spec_name"] + " "))
        assert f"{e['mean']:.4f} ± {e['sd']:.4f}" in line and line.split()[-1] == ("yes" if e["robust"] else "no")
    assert load_study(cfg).user_attrs[CONFIRMED] == confirmed

    # MLflow: one run per retraining nested under its trial's run; the trial's run has the summary
    tracker = Tracker(cfg.tracking, cfg.name)
    tracker.setup()
    retrain = tracker.client.search_runs([tracker.experiment_id], "tags.`resnext_nas.role` = 'confirm'")
    assert len(retrain) == len(calls) and {r.info.status for r in retrain} == {"FINISHED"}
    by_run = {r.attrs["mlflow_run_id"]: r for r in front}
    for run in retrain:
        trial = by_run[run.data.tags[PARENT]]
        assert int(run.data.params["seed"]) in confirmed[str(trial.number)]["seeds"][1:]
        assert run.data.metrics["val_accuracy"] in confirmed[str(trial.number)]["val_accuracy"]
    for run_id, r in by_run.items():
        run = tracker.client.get_run(run_id)
        e = confirmed[str(r.number)]
        assert run.data.metrics["confirmed_val_accuracy_mean"] == pytest.approx(e["mean"])
        assert run.data.metrics["confirmed_val_accuracy_sd"] == pytest.approx(e["sd"])
        assert run.data.tags["confirmed_robust"] == str(e["robust"]).lower()
    # the search's own bookkeeping still sees exactly its trial runs
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert len(tracker.trial_runs(parent)) == len(study.trials)

    # more seeds later: only the new ones are trained
    result = confirm_front(cfg, seeds=4, quiet=True)
    assert result.trained == len(front) and len(calls) == 3 * len(front)
    assert all(len(e["seeds"]) == 4 for e in load_study(cfg).user_attrs[CONFIRMED].values())
