"""Commands that only read a study never import torch: it alone takes longer to import than they run.

Each check runs a fresh interpreter (this one has imported torch long ago). When torch shows up,
the failure names the chain of imports that reached it, read from ``python -X importtime``.
"""

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from search.config import experiment_from_dict
from search.storage import create_study, find_study
from space.errors import SpecError

from .conftest import tiny_raw

ROOT = Path(__file__).resolve().parents[2]
READ_ONLY = ("import search.analysis, search.cli, search.config, search.pareto, search.results, search.storage, "
             "space")


def run_python(code: str, *flags: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter at the repository root."""
    return subprocess.run([sys.executable, *flags, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def import_chain(importtime: str, target: str) -> list[str]:
    """The chain of imports (top level first) that first imported ``target``, from ``-X importtime`` output.

    The output lists each module after the modules it imported, indented two spaces per level,
    so the importers of a module are the next lines with less indentation.
    """
    names = [line.rpartition("|")[2][1:] for line in importtime.splitlines() if line.startswith("import time:")]
    for i, name in enumerate(names):
        if name.strip() == target:
            chain, depth = [target], len(name) - len(name.lstrip())
            for later in names[i + 1:]:
                if len(later) - len(later.lstrip()) < depth:
                    chain.append(later.strip())
                    depth = len(later) - len(later.lstrip())
            return chain[::-1]
    return []


def assert_no_torch(code: str) -> str:
    """Run ``code``, which prints ``sys.modules`` membership of torch last; return its output."""
    proc = run_python(code + "\nimport sys\nprint('torch imported:', 'torch' in sys.modules)")
    assert proc.returncode == 0, proc.stderr
    if "torch imported: True" in proc.stdout:
        traced = run_python(code, "-X", "importtime")
        raise AssertionError("torch was imported: " + " -> ".join(import_chain(traced.stderr, "torch")))
    assert "torch imported: False" in proc.stdout
    return proc.stdout


def test_import_chain_reads_importtime_output():
    out = ("import time: self [us] | cumulative | imported package\n"
           "import time:       100 |        100 |     torch._C\n"
           "import time:       900 |       1000 |   torch\n"
           "import time:        50 |       1050 | space.blocks\n"
           "import time:        10 |       1060 | space\n")
    assert import_chain(out, "torch") == ["space.blocks", "torch"]
    assert import_chain(out, "numpy") == []


def test_reading_the_experiment_file_does_not_import_torch():
    assert_no_torch(f"{READ_ONLY}\nsearch.config.load_experiment('experiments/quickstart.yaml')")


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_pareto_command_does_not_import_torch(tmp_path, device):
    raw = tiny_raw(tmp_path)
    raw["train"]["device"] = device
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(raw))
    cfg = experiment_from_dict(raw, name="exp")
    study = create_study(cfg, None, {})
    if device == "auto":  # as if it ran on a GPU machine: read here (no GPU), `auto` means what it ran on
        ran = {**study.user_attrs["recipe"], "train.device_type": "cuda", "latency.device_type": "cuda",
               "train.channels_last": True}
        study.set_user_attr("recipe", ran)
        with pytest.raises(SpecError, match="train.device_type: 'cuda' \\(study\\) vs 'cpu' \\(now\\)"):
            find_study(cfg)  # a resume here would train on the CPU: another recipe, refused
        assert find_study(cfg, reading=True) is not None
    for number, values in enumerate([[0.9, 300, 2.0], [0.8, 100, 1.0], [0.7, 200, 3.0]]):  # the last is dominated
        study.add_trial(create_trial(
            values=values, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
            user_attrs={"outcome": "trained", "network": {"spec_name": f"net{number}", "spec_hash": f"h{number}"}},
            system_attrs={"constraints:max_params": -1.0}))
    assert len(optuna.load_study(study_name="exp", storage=cfg.storage_url).trials) == 3

    out = assert_no_torch(f"from search.cli import main\nassert main(['pareto', {str(exp)!r}]) == 0")
    assert "study 'exp': 3 trained" in out and "2 networks on the feasible Pareto front" in out
    assert "net0" in out and "net1" in out and "net2" not in out
