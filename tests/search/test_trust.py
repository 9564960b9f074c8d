"""What a study says is true: one recipe per study, nothing recorded by a refused start, budgets that bind.

Real studies on generated data with real journal/SQLite storages and a real MLflow store.
"""

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from search.cli import main
from search.config import load_experiment
from search.results import trial_attrs
from search.storage import RESUMABLE, create_study, find_study, load_study, recipe
from search.study import run_search
from space import complexity
from space.errors import SpecError

from .conftest import tiny_raw

# one change per part of the recipe: each makes trials incomparable with the study's
RECIPE_CHANGES = [
    ({"train": {"epochs": 2}}, "train.epochs: 1.0 (study) vs 2.0 (now)"),
    ({"train": {"lr": 0.01}}, "train.lr: 0.05 (study) vs 0.01 (now)"),
    ({"train": {"schedule": "cosine"}}, "train.schedule: 'onecycle' (study) vs 'cosine' (now)"),
    ({"data": {"val_fraction": 0.3}}, "data.val_fraction: 0.25 (study) vs 0.3 (now)"),
    ({"data": {"train_subset": 100}}, "data.train_subset: None (study) vs 100 (now)"),
    ({"data": {"augment": False}}, "data.augment: True (study) vs False (now)"),
    ({"data": {"seed": 3}}, "data.seed: 0 (study) vs 3 (now)"),
    ({"latency": {"repeats": 9}}, "latency.repeats: 3 (study) vs 9 (now)"),
    ({"latency": {"batch_size": 8}}, "latency.batch_size: 1 (study) vs 8 (now)"),
    ({"latency": {"interleave": False}}, "latency.interleave: True (study) vs False (now)"),
    ({"search": {"seed": 1}}, "search.seed: 0 (study) vs 1 (now)"),
    ({"constraints": {"max_params": 1e6}}, "constraints.max_params: None (study) vs 1000000.0 (now)"),
    ({"objectives": ["val_accuracy", "params"]}, "objectives: ['val_accuracy', 'params', 'latency_ms'] (study)"),
]


def _raw(tmp_path, change):
    raw = tiny_raw(tmp_path, search={"n_trials": 1, "storage": f"journal:{tmp_path}/optuna.journal"})
    for section, values in change.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    return raw


@pytest.fixture(scope="module")
def one_trial_study(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("recipe")
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(_raw(tmp_path, {})))
    assert main(["search", str(exp), "--quiet", "--export-dir", str(tmp_path / "exports")]) == 0
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("change, differs", RECIPE_CHANGES)
def test_a_resume_with_another_recipe_is_refused_and_records_nothing(one_trial_study, change, differs, capsys):
    tmp_path = one_trial_study
    exp = tmp_path / "changed.yaml"
    exp.write_text(yaml.safe_dump(_raw(tmp_path, change)))
    before = len(load_study(load_experiment(tmp_path / "exp.yaml")).trials)
    journal = (tmp_path / "optuna.journal").read_bytes()
    runs = len(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_runs(["1"]))

    code = main(["search", str(exp), "--quiet", "--set", "search.study_name=exp", "--set", "search.n_trials=3"])
    err = capsys.readouterr().err
    assert code == 2
    assert "was run with another recipe" in err and differs in err
    assert "--set search.study_name=NEW" in err and "search.n_trials" in err  # the way out, and what may change
    assert (tmp_path / "optuna.journal").read_bytes() == journal  # not a byte written
    assert len(load_study(load_experiment(tmp_path / "exp.yaml")).trials) == before
    assert len(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_runs(["1"])) == runs


def test_what_may_change_on_resume_leaves_the_recipe_alone(tmp_path):
    base = load_experiment_from(tmp_path, {})
    for change in ({"search": {"n_trials": 50, "sampler": "nsga2", "timeout_s": 9.0, "max_consecutive_failures": 1,
                               "heartbeat_s": 5, "storage": "sqlite:///x.db"}},
                   {"train": {"threads": 1}},
                   {"tracking": {"enabled": False, "uri": "http://elsewhere:5000"}},
                   {"data": {"root": "/elsewhere", "download": False}}):
        assert recipe(load_experiment_from(tmp_path, change)) == recipe(base), change
    assert {"search.n_trials", "search.sampler", "train.threads", "--workers", "tracking.*"} <= set(RESUMABLE)
    # the device enters as its type only
    assert recipe(base)["train.device_type"] == "cpu"


def test_channels_last_enters_the_recipe_as_what_it_means_on_the_device_type(tmp_path):
    """``auto`` is not a format: on the CPU it is NCHW, so a CPU study made with the old default
    (false) keeps its fingerprint; true is another recipe."""
    auto = recipe(load_experiment_from(tmp_path, {"train": {"channels_last": "auto"}}))
    assert auto == recipe(load_experiment_from(tmp_path, {"train": {"channels_last": False}}))
    assert auto["train.channels_last"] is False and auto["train.device_type"] == "cpu"
    nhwc = recipe(load_experiment_from(tmp_path, {"train": {"channels_last": True}}))
    assert nhwc["train.channels_last"] is True and nhwc != auto


def test_a_study_made_before_a_recipe_key_existed_reads_as_what_older_versions_did(tmp_path):
    """``latency.interleave`` came later: a study without it was measured without it. A resume
    must say so (the message names the key); a command that only reads it needs nothing."""
    cfg = load_experiment_from(tmp_path, {})
    study = create_study(cfg, None, {})
    study.set_user_attr("recipe", {k: v for k, v in study.user_attrs["recipe"].items() if k != "latency.interleave"})
    with pytest.raises(SpecError, match=r"latency\.interleave: False \(study\) vs True \(now\)"):
        find_study(cfg)
    assert find_study(load_experiment_from(tmp_path, {"latency": {"interleave": False}})) is not None
    assert find_study(cfg, reading=True) is not None


def load_experiment_from(tmp_path, change):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(_raw(tmp_path, change)))
    return load_experiment(path)


def _nothing_recorded(tmp_path, exp, capsys):
    assert not (tmp_path / "optuna.journal").exists() or find_study(load_experiment(exp)) is None
    if (tmp_path / "mlflow.db").exists():
        assert MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_experiment_by_name("exp") is None
    assert main(["pareto", str(exp)]) == 2
    assert "no study 'exp'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_start_refused_for_its_device_records_nothing(tmp_path, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(_raw(tmp_path, {"train": {"device": "cuda"}})))
    assert main(["search", str(exp), "--quiet"]) == 2
    assert "this machine has no CUDA GPU" in capsys.readouterr().err
    _nothing_recorded(tmp_path, exp, capsys)


def test_a_start_refused_for_missing_data_records_nothing(tmp_path, capsys):
    raw = _raw(tmp_path, {"data": {"dataset": "cifar10", "root": str(tmp_path / "nodata"), "download": False}})
    raw["space"] = {**raw["space"], "num_stages": 1}
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(raw))
    assert main(["search", str(exp), "--quiet"]) == 2
    assert "data.dataset 'cifar10': not found" in capsys.readouterr().err
    _nothing_recorded(tmp_path, exp, capsys)


def test_a_start_refused_for_its_tracking_store_records_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(_raw(tmp_path, {"tracking": {"uri": "http://127.0.0.1:9"}})))
    assert main(["search", str(exp), "--quiet"]) == 2
    assert "cannot reach the MLflow tracking store" in capsys.readouterr().err
    assert not (tmp_path / "optuna.journal").exists()


@pytest.mark.slow
def test_evaluate_reproduces_the_trial_with_its_recorded_seed_and_threads(tmp_path, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(_raw(tmp_path, {"search": {"n_trials": 2}, "train": {"threads": 1}})))
    assert main(["search", str(exp), "--quiet", "--pick", "max-accuracy", "--export-dir", str(tmp_path)]) == 0
    doc = yaml.safe_load((tmp_path / "exp_max-accuracy.yaml").read_text())
    study = load_study(load_experiment(exp))
    assert trial_attrs(study.trials[doc["provenance"]["trial"]])["threads"] == doc["provenance"]["threads"] == 1
    assert doc["provenance"]["recipe_fingerprint"] == study.user_attrs["fingerprint"]
    torch.set_num_threads(2)  # evaluate must set the recorded count itself
    capsys.readouterr()
    assert main(["evaluate", str(exp), str(tmp_path / "exp_max-accuracy.yaml")]) == 0
    out = capsys.readouterr().out
    acc = f"{doc['metrics']['val_accuracy']:.4f}"
    assert f"1 threads): val accuracy {acc} (in the search: {acc})" in out
    # another recipe than the search's is refused: its accuracy would mean something else
    assert main(["evaluate", str(exp), str(tmp_path / "exp_max-accuracy.yaml"), "--set", "train.lr=0.2"]) == 2


def test_the_quickstart_budget_binds():
    """The demo shows what the product does: some proposals are over budget and skipped."""
    cfg = load_experiment("experiments/quickstart.yaml")
    specs = cfg.space.enumerate()
    over = sum(complexity(s).params > cfg.constraints.max_params for s in specs)
    assert 0.1 * len(specs) <= over <= 0.5 * len(specs), (over, len(specs))


def test_a_changed_recipe_is_refused_from_the_library_too(one_trial_study):
    changed = load_experiment_from_path(one_trial_study, {"train": {"epochs": 3}})
    with pytest.raises(SpecError, match=r"train\.epochs: 1\.0 \(study\) vs 3\.0 \(now\)"):
        run_search(changed, quiet=True)


def load_experiment_from_path(tmp_path, change):
    path = tmp_path / "exp_lib.yaml"
    path.write_text(yaml.safe_dump(_raw(tmp_path, change)))
    return load_experiment(path, ["search.study_name=exp"])
