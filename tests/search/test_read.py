"""Reading a study: `pareto`, `report` and `export` take the study's recorded recipe.

A study run with `--set` overrides is read by its experiment file without them, or by its name
alone (`--study NAME`, no file); a file that describes another design space is refused.
One real study (trained on synthetic data, on a journal file), read there and from a SQLite copy.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna
import pytest
import yaml

from search.cli import main
from search.config import load_experiment
from search.results import finished_rows, front_table, pareto_rows
from search.storage import experiment_of, open_storage, read_study, recipe
from tests.search.conftest import tiny_raw

ROOT = Path(__file__).resolve().parents[2]


def page_data(path) -> dict:
    text = path.read_text()
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A 2-network study run with `--set train.epochs=1 --set train.lr=0.1` (the file says 2 epochs, lr 0.05)."""
    tmp = tmp_path_factory.mktemp("read")
    raw = tiny_raw(tmp, search={"n_trials": 2, "storage": f"journal:{tmp}/optuna.journal"},
                   train={"epochs": 2, "lr": 0.05}, tracking={"enabled": False})
    exp = tmp / "exp.yaml"
    exp.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["search", str(exp), "--quiet", "--set", "train.epochs=1", "--set", "train.lr=0.1",
                 "--export-dir", str(tmp / "exports")]) == 0
    return tmp, exp


@pytest.fixture(scope="module", params=["journal", "sqlite"])
def overridden(request, searched):
    """The study on a journal file as it ran, or copied whole (trials and recorded recipe) into SQLite."""
    tmp, exp = searched
    url = f"journal:{tmp}/optuna.journal"
    if request.param == "sqlite":
        sqlite = f"sqlite:///{tmp}/optuna.db"
        if not (tmp / "optuna.db").exists():
            optuna.copy_study(from_study_name="exp", from_storage=open_storage(url), to_storage=open_storage(sqlite))
        raw = yaml.safe_load(exp.read_text())
        raw["search"]["storage"] = sqlite
        exp = tmp / "sqlite" / "exp.yaml"
        exp.parent.mkdir(exist_ok=True)
        exp.write_text(yaml.safe_dump(raw, sort_keys=False))
        url = sqlite
    return tmp, exp, url


def store_bytes(tmp) -> dict:
    return {p.name: p.read_bytes() for p in tmp.iterdir() if p.name.startswith("optuna.")}


@pytest.mark.slow
def test_pareto_reads_the_study_without_its_overrides(overridden, capsys):
    tmp, exp, url = overridden
    capsys.readouterr()
    assert main(["pareto", str(exp)]) == 0
    by_file = capsys.readouterr().out
    study, cfg = read_study("exp", url)
    assert cfg.train.epochs == 1.0 and cfg.train.lr == 0.1  # the study's recipe, not the file's
    table = front_table(pareto_rows(finished_rows(study, cfg.objectives), cfg.directions), cfg.objectives)
    assert f"{len(table)} networks on the feasible Pareto front" in by_file and table
    for row in table:
        assert row["name"] in by_file
    # by its name alone: no file at all
    assert main(["pareto", "--study", "exp", "--storage", url]) == 0
    assert capsys.readouterr().out == by_file


@pytest.mark.slow
def test_report_reads_the_study_by_file_or_by_name(overridden, capsys):
    tmp, exp, url = overridden
    assert main(["report", str(exp), "--out", str(tmp / "by_file.html")]) == 0
    data = page_data(tmp / "by_file.html")
    assert data["experiment"] == str(exp)
    study, _ = read_study("exp", url)
    assert data["knee"] is not None and study.user_attrs["recipe"]["train.epochs"] == 1.0
    assert main(["report", "--study", "exp", "--storage", url, "--out", str(tmp / "by_name.html")]) == 0
    named = page_data(tmp / "by_name.html")
    assert named["experiment"] is None and named["storage"] == url
    assert (named["front"], named["hypervolume"], named["design_space"]) == \
           (data["front"], data["hypervolume"], data["design_space"])
    text = (tmp / "by_name.html").read_text()
    assert f"study <code>exp</code> in <code>{url}</code>" in text
    # the export command the page gives works as written
    hint = re.search(r"<code>(resnext-nas export --study exp --storage \S+) --pick knee --out knee.yaml</code>", text)
    assert hint and hint.group(1).split()[-1] == url


@pytest.mark.slow
def test_export_reads_the_study_by_file_or_by_name(overridden):
    tmp, exp, url = overridden
    assert main(["export", str(exp), "--out", str(tmp / "a.yaml")]) == 0
    assert main(["export", "--study", "exp", "--storage", url, "--out", str(tmp / "b.yaml")]) == 0
    a, b = (yaml.safe_load((tmp / n).read_text()) for n in ("a.yaml", "b.yaml"))
    study, _ = read_study("exp", url)
    assert a["hash"] == b["hash"] and a["provenance"]["trial"] == b["provenance"]["trial"]
    assert a["provenance"]["recipe_fingerprint"] == study.user_attrs["fingerprint"] == \
           b["provenance"]["recipe_fingerprint"]
    assert a["preprocessing"] == b["preprocessing"] and a["metrics"] == b["metrics"]
    # the knee the search itself exported
    assert a["hash"] == yaml.safe_load((tmp / "exports" / "exp_knee.yaml").read_text())["hash"]


@pytest.mark.slow
def test_another_space_or_study_is_refused_and_nothing_is_recorded(overridden, capsys):
    tmp, exp, url = overridden
    before = store_bytes(tmp)
    other = tmp / "other.yaml"
    raw = yaml.safe_load(exp.read_text())
    raw["space"]["cardinality"] = [1, 4]
    raw["search"]["study_name"] = "exp"
    other.write_text(yaml.safe_dump(raw))
    for args in (["pareto", str(other)], ["report", str(other), "--out", str(tmp / "x.html")],
                 ["export", str(other), "--out", str(tmp / "x.yaml")]):
        capsys.readouterr()
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert "another design space than study 'exp'" in err and "space.cardinality" in err, err
        assert "resum" not in err and len(err.strip().splitlines()) == 1
    assert main(["pareto", "--study", "nope", "--storage", url]) == 2
    assert "no study 'nope'" in (err := capsys.readouterr().err) and "studies there: exp" in err
    assert main(["pareto", str(exp), "--study", "nope"]) == 2
    assert "names study 'exp' but --study names 'nope'" in capsys.readouterr().err
    assert main(["pareto", "--study", "exp", "--set", "train.epochs=3"]) == 2
    assert main(["pareto"]) == 2 and "--study NAME" in capsys.readouterr().err
    assert main(["pareto", "--study", "exp", "--storage", f"sqlite:///{tmp}/none.db"]) == 2
    assert "no such SQLite file" in capsys.readouterr().err and not (tmp / "none.db").exists()
    assert not (tmp / "x.html").exists() and not (tmp / "x.yaml").exists()
    assert store_bytes(tmp) == before


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_the_recorded_recipe_rebuilds_the_experiment(path):
    cfg = load_experiment(path)
    rec = recipe(cfg, {"train.device_type": "cuda", "latency.device_type": "cuda"} if cfg.train.device == "auto"
                 else None)
    back = experiment_of(rec, cfg.study_name, "journal:x.journal")
    assert recipe(back, rec) == rec
    assert (back.study_name, back.storage_url, back.source) == (cfg.study_name, "journal:x.journal", None)
