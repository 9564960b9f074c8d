from pathlib import Path

import pytest

from search.config import load_experiment
from search.errors import redact
from space.errors import SpecError

EXPERIMENTS = sorted(Path(__file__).parents[2].joinpath("experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_file_is_valid(path):
    """Contract over every shipped recipe: it parses and its budget is reachable."""
    from search.study import check_budget

    cfg = load_experiment(path)
    assert cfg.space.size() > 0
    check_budget(cfg)
    text = path.read_text()
    for section in ("data", "train", "search", "latency", "tracking"):
        for key in cfg.raw.get(section, {}):
            line = next(line for line in text.splitlines() if line.strip().startswith(f"{key}:"))
            assert "#" in line, f"{path.name}: {section}.{key} has no comment with its meaning/unit"


def write(tmp_path, text):
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    p = write(tmp_path, "data:\n  dataset: digits\ntrain:\n  epochs: [1, 2\n")
    with pytest.raises(SpecError, match=r"exp.yaml:\d+:\d+: YAML syntax error"):
        load_experiment(p)


@pytest.mark.parametrize("text, match", [
    ("trian:\n  epochs: 1\n", "unknown key 'trian'.*'train'"),
    ("train:\n  epoch: 1\n", "train: unknown key 'epoch'.*'epochs'"),
    ("search:\n  n_trials: many\n", "search.n_trials must be int"),
    ("search:\n  sampler: bayes\n", "search.sampler"),
    ("objectives: [accuracy]\n", "objectives.*'accuracy'"),
    ("space:\n  cardinality: []\n", "space.cardinality: empty"),
    ("data:\n  dataset: imagenet\n", "imagenet"),
    ("space:\n  num_classes: 3\n", "space.num_classes is 3 but dataset 'digits' gives 10"),
    ("latency:\n  enabled: false\n", "latency.enabled is false"),
    ("constraints:\n  max_params: -1\n", "constraints.max_params must be > 0"),
])
def test_bad_input_gets_a_clear_error(tmp_path, text, match):
    with pytest.raises(SpecError, match=match):
        load_experiment(write(tmp_path, text))


def test_overrides_apply_and_are_validated(tmp_path):
    p = write(tmp_path, "search:\n  n_trials: 3\n")
    cfg = load_experiment(p, ["search.n_trials=7", "train.lr=0.2", "constraints.max_params=1e6"])
    assert cfg.search.n_trials == 7 and cfg.train.lr == 0.2 and cfg.constraints.max_params == 1e6
    with pytest.raises(SpecError, match="did you mean 'lr'"):
        load_experiment(p, ["train.lrr=0.2"])
    with pytest.raises(SpecError, match="section.key=value"):
        load_experiment(p, ["train.lr"])


def test_defaults_fill_fixed_space_fields_from_the_data(tmp_path):
    cfg = load_experiment(write(tmp_path, "data:\n  dataset: synthetic\n"))
    assert (cfg.space.in_ch, cfg.space.num_classes) == (3, 4)
    assert cfg.name == "exp" and cfg.study_name == "exp"


def test_redact_hides_passwords_only():
    assert redact("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert "s3cret" not in redact("http://u:s3cret@host/")
    assert redact("sqlite:///mlruns/optuna.db") == "sqlite:///mlruns/optuna.db"


def test_channels_last_takes_auto_true_or_false_from_yaml_and_overrides():
    exp = Path(__file__).resolve().parents[2] / "experiments" / "quickstart.yaml"
    assert load_experiment(exp).train.channels_last == "auto"
    assert load_experiment(exp, ["train.channels_last=true"]).train.channels_last is True
    assert load_experiment(exp, ["train.channels_last=false"]).train.channels_last is False
    for bad, says in (("3", "must be bool or str, got 3"), ("nhwc", "must be auto, true or false, got 'nhwc'")):
        with pytest.raises(SpecError, match=f"train.channels_last {says}"):
            load_experiment(exp, [f"train.channels_last={bad}"])
