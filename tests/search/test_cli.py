"""The command line, in process: what users type, what they read."""

import pytest
import yaml

from search.cli import main
from space import load_spec

from .conftest import tiny_raw


def test_space_command_describes_the_quickstart(capsys):
    assert main(["space", "experiments/quickstart.yaml", "--samples", "3"]) == 0
    out = capsys.readouterr().out
    assert "distinct networks" in out and "params:" in out
    assert len([line for line in out.splitlines() if line.startswith("resnext")]) == 3


def test_build_command_checks_a_preset(capsys):
    assert main(["build", "--preset", "resnext50_32x4d", "--check"]) == 0
    out = capsys.readouterr().out
    assert "25,028,904 params" in out and "matches" in out


def test_bad_experiment_exits_2_with_the_reason(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epohcs: 3\n")
    assert main(["space", str(bad)]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err


def test_pareto_before_any_study_is_a_clear_error(tmp_path, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(tiny_raw(tmp_path)))
    assert main(["pareto", str(exp)]) == 2
    assert "run `resnext-nas search` first" in capsys.readouterr().err


@pytest.mark.slow
def test_search_pareto_export_from_the_command_line(tmp_path, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(tiny_raw(tmp_path)))
    assert main(["search", str(exp), "--quiet", "--set", "search.n_trials=3",
                 "--export-dir", str(tmp_path / "exports")]) == 0
    out = capsys.readouterr().out
    assert "study 'exp': 3 trained, " in out and "Pareto front: " in out
    assert (tmp_path / "exports" / "exp_knee.yaml").is_file()

    assert main(["pareto", str(exp), "--set", "search.n_trials=3"]) == 0
    assert "study 'exp': 3 trained, " in capsys.readouterr().out

    out_file = tmp_path / "best.yaml"
    assert main(["export", str(exp), "--set", "search.n_trials=3", "--pick", "min-params",
                 "--out", str(out_file)]) == 0
    spec = load_spec(out_file)
    assert f"{spec.name} from trial" in capsys.readouterr().out
